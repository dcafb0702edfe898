/*
 * The faults ingero-sim-rank can inject into itself (see rank.c for the
 * options): a checkpoint writer thread (O_DIRECT writes + fsync on the
 * trainer's CPU), data loader worker processes feeding it over pipes
 * (O_DIRECT reads + CPU decoding, slower than the trainer consumes), and a
 * hang (a data loader that never delivers).
 */
#include "rank.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

/* ---- checkpoint writer: O_DIRECT writes + fsync on the trainer's CPU ---- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long requested, done;
    char *staging;
} ckpt = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *checkpoint_writer(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "ckpt-writer");
    pin_to(opt.cpu);
    size_t chunk = 1 << 20, total = (size_t)opt.ckpt_mb << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, chunk) != 0)
        fail("posix_memalign", 0);
    for (;;) {
        pthread_mutex_lock(&ckpt.mu);
        while (ckpt.done == ckpt.requested)
            pthread_cond_wait(&ckpt.cv, &ckpt.mu);
        long n = ckpt.requested;
        pthread_mutex_unlock(&ckpt.mu);
        char path[4096];
        snprintf(path, sizeof(path), "%s/rank%d-ckpt%ld.bin", opt.ckpt_dir, rank_id, n % 2);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
        if (fd < 0)
            fail("open checkpoint (O_DIRECT)", errno);
        for (size_t off = 0; off < total; off += chunk) {
            /* Serialization: a checksum pass over the chunk (CPU work). */
            uint64_t sum = 0;
            for (size_t i = 0; i < chunk; i += 64)
                sum = sum * 31 + (unsigned char)ckpt.staging[(off + i) % total];
            memcpy(buf, ckpt.staging + off, chunk);
            ((uint64_t *)buf)[0] = sum;
            burn_cpu_us(1500);
            if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk)
                fail("checkpoint write", errno);
        }
        if (fsync(fd) != 0)
            fail("checkpoint fsync", errno);
        close(fd);
        pthread_mutex_lock(&ckpt.mu);
        ckpt.done = n;
        pthread_cond_broadcast(&ckpt.cv);
        pthread_mutex_unlock(&ckpt.mu);
    }
    return NULL;
}

void checkpoint(long step, CUdeviceptr state) {
    pthread_mutex_lock(&ckpt.mu);
    while (ckpt.done != ckpt.requested) /* one checkpoint in flight */
        pthread_cond_wait(&ckpt.cv, &ckpt.mu);
    pthread_mutex_unlock(&ckpt.mu);
    /* Stage the state on the host (synchronous), then hand it over. */
    CUresult r = cuMemcpyDtoH_v2(ckpt.staging, state, (size_t)opt.ckpt_mb << 20);
    if (r != 0)
        fail("cuMemcpyDtoH_v2 (checkpoint)", r);
    pthread_mutex_lock(&ckpt.mu);
    ckpt.requested = step;
    pthread_cond_broadcast(&ckpt.cv);
    pthread_mutex_unlock(&ckpt.mu);
}

/* ---- data loader workers: O_DIRECT reads + CPU decoding, over pipes ---- */

#define DATASET_BYTES ((size_t)32 << 20)
#define READ_CHUNK ((size_t)1 << 20)
#define BATCH_BYTES ((size_t)128 << 10)

static struct {
    char path[4096];
    int *fds;     /* read end of each worker's pipe */
    pid_t *pids;
} loader;

/* Before the ready line: the dataset the workers will read. */
void loader_prepare(void) {
    snprintf(loader.path, sizeof(loader.path), "%s/rank%d-dataset.bin", opt.loader_dir, rank_id);
    int fd = open(loader.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fail("open dataset", errno);
    char *chunk = malloc(READ_CHUNK);
    if (chunk == NULL)
        fail("malloc (dataset)", 0);
    for (size_t off = 0; off < DATASET_BYTES; off += READ_CHUNK) {
        for (size_t i = 0; i < READ_CHUNK; i += 8)
            *(uint64_t *)(chunk + i) = (off + i) * 0x9e3779b97f4a7c15ull;
        if (write(fd, chunk, READ_CHUNK) != (ssize_t)READ_CHUNK)
            fail("write dataset", errno);
    }
    if (fsync(fd) != 0)
        fail("fsync dataset", errno);
    close(fd);
    free(chunk);
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void loader_worker(long index, int out) {
    char name[16];
    snprintf(name, sizeof(name), "pt_data_worker");
    prctl(PR_SET_NAME, name);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    pin_to(opt.cpu);
    /* Below the trainer: stands for a worker on a core of its own, which
     * never preempts the training thread. */
    struct sched_param idle = {.sched_priority = 0};
    sched_setscheduler(0, SCHED_IDLE, &idle);
    int fd = open(loader.path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL) {
        fprintf(stderr, "%s: rank %d: no O_DIRECT on %s, reading through the page cache\n", PROG, rank_id, opt.loader_dir);
        fd = open(loader.path, O_RDONLY | O_CLOEXEC);
    }
    void *buf = NULL;
    char *batch = malloc(BATCH_BYTES);
    if (fd < 0 || posix_memalign(&buf, 4096, READ_CHUNK) != 0 || batch == NULL)
        _exit(1);
    size_t chunks = DATASET_BYTES / READ_CHUNK;
    for (uint64_t k = (uint64_t)index;; k += (uint64_t)opt.loader_workers) {
        off_t off = (off_t)((k % chunks) * READ_CHUNK);
        if (pread(fd, buf, READ_CHUNK, off) != (ssize_t)READ_CHUNK)
            _exit(1);
        /* Decoding: a pass over the chunk, then the rest of the CPU cost. */
        uint64_t sum = 0;
        for (size_t i = 0; i < READ_CHUNK; i += 64)
            sum = sum * 31 + ((const unsigned char *)buf)[i];
        burn_cpu_us(opt.loader_decode_us);
        memcpy(batch, buf, BATCH_BYTES);
        ((uint64_t *)batch)[0] = k;
        ((uint64_t *)batch)[1] = sum;
        if (write_all(out, batch, BATCH_BYTES) != 0)
            _exit(0); /* the trainer is gone */
    }
}

/* After the go line, so a tracer following the rank's forks sees them. */
void loader_start(void) {
    loader.fds = calloc((size_t)opt.loader_workers, sizeof(int));
    loader.pids = calloc((size_t)opt.loader_workers, sizeof(pid_t));
    if (loader.fds == NULL || loader.pids == NULL)
        fail("calloc (loader)", 0);
    fflush(NULL);
    for (long i = 0; i < opt.loader_workers; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0)
            fail("pipe2", errno);
        pid_t pid = fork();
        if (pid < 0)
            fail("fork (loader worker)", errno);
        if (pid == 0) {
            close(p[0]);
            for (long j = 0; j < i; j++)
                close(loader.fds[j]);
            loader_worker(i, p[1]);
        }
        close(p[1]);
        loader.fds[i] = p[0];
        loader.pids[i] = pid;
    }
}

void loader_next(long step, char *dst) {
    if (read_all(loader.fds[(step - 1) % opt.loader_workers], dst, BATCH_BYTES) != 0)
        fail("read (data loader pipe)", errno);
}

void loader_stop(void) {
    for (long i = 0; loader.pids != NULL && i < opt.loader_workers; i++) {
        close(loader.fds[i]);
        kill(loader.pids[i], SIGKILL);
        waitpid(loader.pids[i], NULL, 0);
    }
}

/* A data loader that never delivers: blocks forever, asleep. */
void hang(long step) {
    fprintf(stderr, "%s: rank %d: stuck before step %ld (waiting for a batch that never comes)\n", PROG, rank_id, step);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        fail("pipe2", errno);
    char c;
    for (;;)
        if (read(p[0], &c, 1) >= 0 || errno != EINTR)
            pause();
}

void checkpoint_start(void) {
    ckpt.staging = malloc((size_t)opt.ckpt_mb << 20);
    if (ckpt.staging == NULL)
        fail("malloc (checkpoint staging)", 0);
    memset(ckpt.staging, 0x5a, (size_t)opt.ckpt_mb << 20);
    pthread_t writer;
    if (pthread_create(&writer, NULL, checkpoint_writer, NULL) != 0)
        fail("pthread_create", errno);
}
