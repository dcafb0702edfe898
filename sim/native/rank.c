/*
 * ingero-sim-rank: one rank of a data-parallel training job, without a GPU.
 *
 * Started the way torchrun starts a worker, with RANK, LOCAL_RANK,
 * WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment. It allocates
 * its model (cuMemAlloc_v2) and then runs training steps:
 *
 *   cuMemcpyHtoD_v2 of the input batch                      --batch-mb
 *   K x (host work, then cuLaunchKernel of U us GPU time)   --kernels, --kernel-us
 *       the step's host work (Python, framework overhead)   --host-us
 *       is split between the launches, as in a real forward/backward pass
 *   a few calls into the real CUDA runtime (no driver here) --cudart PATH
 *   cuStreamSynchronize: the rank's own compute is done
 *   ncclAllReduce of the gradients (a real barrier), cuStreamSynchronize
 *   cuMemcpyDtoH_v2 of the step's outputs (--output-mb; like .cpu()) and
 *   of the loss
 *
 * printing "step S rank R TOTAL_MS COMPUTE_MS WAIT_MS" after each step, where
 * compute runs to the first synchronize and wait is the all-reduce (peers
 * plus transfer), and a JSON summary at the end. A rank that
 * reaches the all-reduce late makes every other rank wait in
 * cuStreamSynchronize, as in real data-parallel training: every rank's total
 * step time is the same, the straggler is the one with the longest compute
 * and the shortest wait.
 *
 * Faults (one rank, any combination):
 *   --checkpoint-dir DIR [--checkpoint-mb C] [--checkpoint-every E]
 *       every E steps: cuMemcpyDtoH_v2 of C MB of state (synchronous
 *       staging), then a writer thread on the same CPU serializes it (CPU
 *       work) and writes it with O_DIRECT in 1 MiB chunks, then fsync, while
 *       training continues; the next checkpoint waits for the previous one.
 *   --memory-pressure-mb M [--memory-every E]
 *       every E steps, a burst: the rank allocates and touches M MB (a
 *       collate building new tensors), and copies its outputs into a
 *       freshly allocated pageable buffer, which page-faults while
 *       cuMemcpyDtoH_v2 writes it (as .cpu() does).
 *   --report-every N  print a step line every N steps (default 1)
 *   --cpu N    pin the training thread (and the threads it starts) to CPU
 *              N; the stub driver's stream threads stay unpinned (CPU hogs
 *              are separate processes: --hog).
 *   --hog      burn CPU as "cpu-hog" at nice -10 (a noisy neighbour that
 *              outranks the trainer) until killed (use with --cpu).
 *
 * Every process asks to be killed with its parent (PR_SET_PDEATHSIG), so a
 * killed launcher leaves nothing behind.
 */
#include "common.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include "cuda_driver.h"

typedef struct ncclComm *ncclComm_t;
typedef struct { char internal[128]; } ncclUniqueId;
extern int ncclGetUniqueId(ncclUniqueId *id);
extern int ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
extern int ncclAllReduce(const void *send, void *recv, size_t count, int datatype, int op,
                         ncclComm_t comm, CUstream stream);
extern int ncclCommDestroy(ncclComm_t comm);
extern const char *ncclGetErrorString(int result);

static const char *PROG = "ingero-sim-rank";

static struct {
    long steps, kernels, kernel_us, host_us, batch_mb, grad_mb, output_mb;
    const char *cudart;
    const char *ckpt_dir;
    long ckpt_mb, ckpt_every;
    long mem_mb, mem_every;
    long cpu;
    long report_every;
    int hog, wait;
} opt = {.steps = 100, .kernels = 32, .kernel_us = 500, .host_us = 1000, .batch_mb = 16, .output_mb = 16,
         .grad_mb = 32, .ckpt_mb = 256, .ckpt_every = 10, .mem_every = 5, .cpu = -1, .report_every = 1};

static int rank_id, world;

static void fail(const char *what, long code) {
    fprintf(stderr, "%s: rank %d: %s failed (%ld)\n", PROG, rank_id, what, code);
    exit(3);
}

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time, not wall time: a preempted thread takes longer. */
static void burn_cpu_us(long us) {
    uint64_t start = now_ns(CLOCK_THREAD_CPUTIME_ID);
    volatile uint64_t x = 0;
    while (now_ns(CLOCK_THREAD_CPUTIME_ID) - start < (uint64_t)us * 1000)
        x++;
}

static void pin_to(long cpu) {
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        fprintf(stderr, "%s: cannot pin to CPU %ld: %s\n", PROG, cpu, strerror(errno));
}

/* ---- the real CUDA runtime, a few calls per step ---- */

typedef int (*set_device_fn)(int);
typedef int (*malloc_fn)(void **, size_t);
typedef int (*memcpy_async_fn)(void *, const void *, size_t, int, void *);
typedef int (*sync_stream_fn)(void *);
static struct {
    set_device_fn set_device;
    malloc_fn malloc;
    memcpy_async_fn memcpy_async;
    sync_stream_fn sync;
} rt;

static void cudart_open(void) {
    if (opt.cudart == NULL)
        return;
    void *h = dlopen(opt.cudart, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "%s: cannot open %s: %s (continuing without runtime calls)\n", PROG, opt.cudart, dlerror());
        return;
    }
    rt.set_device = (set_device_fn)dlsym(h, "cudaSetDevice");
    rt.malloc = (malloc_fn)dlsym(h, "cudaMalloc");
    rt.memcpy_async = (memcpy_async_fn)dlsym(h, "cudaMemcpyAsync");
    rt.sync = (sync_stream_fn)dlsym(h, "cudaStreamSynchronize");
}

static void cudart_step(int local_rank) {
    static char host[4096];
    if (rt.set_device == NULL || rt.malloc == NULL || rt.memcpy_async == NULL || rt.sync == NULL)
        return;
    void *p = NULL;
    rt.set_device(local_rank);
    rt.malloc(&p, 1 << 20);
    rt.memcpy_async((void *)0x1000, host, sizeof(host), 1, NULL);
    rt.sync(NULL);
}

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

static void checkpoint(long step, CUdeviceptr state) {
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

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void parse(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--wait")) { opt.wait = 1; continue; }
        if (!strcmp(a, "--hog")) { opt.hog = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value\n", PROG, a);
            exit(2);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--steps")) opt.steps = sim_num(PROG, a, v);
        else if (!strcmp(a, "--kernels")) opt.kernels = sim_num(PROG, a, v);
        else if (!strcmp(a, "--kernel-us")) opt.kernel_us = sim_num(PROG, a, v);
        else if (!strcmp(a, "--host-us")) opt.host_us = sim_num(PROG, a, v);
        else if (!strcmp(a, "--batch-mb")) opt.batch_mb = sim_num(PROG, a, v);
        else if (!strcmp(a, "--grad-mb")) opt.grad_mb = sim_num(PROG, a, v);
        else if (!strcmp(a, "--output-mb")) opt.output_mb = sim_num(PROG, a, v);
        else if (!strcmp(a, "--cudart")) opt.cudart = v;
        else if (!strcmp(a, "--checkpoint-dir")) opt.ckpt_dir = v;
        else if (!strcmp(a, "--checkpoint-mb")) opt.ckpt_mb = sim_num(PROG, a, v);
        else if (!strcmp(a, "--checkpoint-every")) opt.ckpt_every = sim_num(PROG, a, v);
        else if (!strcmp(a, "--memory-pressure-mb")) opt.mem_mb = sim_num(PROG, a, v);
        else if (!strcmp(a, "--memory-every")) opt.mem_every = sim_num(PROG, a, v);
        else if (!strcmp(a, "--cpu")) opt.cpu = sim_num(PROG, a, v);
        else if (!strcmp(a, "--report-every")) opt.report_every = sim_num(PROG, a, v);
        else {
            fprintf(stderr, "%s: unknown option %s\n", PROG, a);
            exit(2);
        }
    }
    if (opt.kernels < 1 || opt.steps < 1 || opt.ckpt_every < 1 || opt.ckpt_mb < 1 || opt.mem_every < 1) {
        fprintf(stderr, "%s: --steps, --kernels, --checkpoint-every, --checkpoint-mb and --memory-every must be at least 1\n", PROG);
        exit(2);
    }
}

static long env_long(const char *name, int required) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        if (required) {
            fprintf(stderr, "%s: %s is not set (start ranks like torchrun does)\n", PROG, name);
            exit(2);
        }
        return 0;
    }
    return sim_num(PROG, name, v);
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    parse(argc, argv);
    if (opt.hog) {
        pin_to(opt.cpu);
        prctl(PR_SET_NAME, "cpu-hog");
        setpriority(PRIO_PROCESS, 0, -10); /* best effort: needs privileges */
        for (;;)
            burn_cpu_us(1000000);
    }
    rank_id = (int)env_long("RANK", 1);
    world = (int)env_long("WORLD_SIZE", 1);
    int local_rank = (int)env_long("LOCAL_RANK", 0);
    if (world < 1 || rank_id >= world) {
        fprintf(stderr, "%s: RANK %d is not below WORLD_SIZE %d\n", PROG, rank_id, world);
        return 2;
    }
    cudart_open();
    if (opt.wait && sim_wait_for_go())
        return 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    CUcontext ctx;
    CUmodule module;
    CUstream stream;
    CUresult r;
    if ((r = cuInit(0)) != 0) fail("cuInit", r);
    if ((r = cuCtxCreate_v2(&ctx, 0, 0)) != 0) fail("cuCtxCreate_v2", r);
    if ((r = cuModuleLoadData(&module, "model")) != 0) fail("cuModuleLoadData", r);
    CUfunction *kernels = calloc((size_t)opt.kernels, sizeof(*kernels));
    for (long k = 0; k < opt.kernels; k++) {
        char name[64];
        snprintf(name, sizeof(name), "%s_layer%ld", k < opt.kernels / 2 ? "fwd_gemm" : "bwd_gemm", k);
        if ((r = cuModuleGetFunction(&kernels[k], module, name)) != 0) fail("cuModuleGetFunction", r);
    }
    if ((r = cuStreamCreate(&stream, 0)) != 0) fail("cuStreamCreate", r);
    CUdeviceptr params, grads, batch, state;
    size_t param_bytes = (size_t)(opt.grad_mb > opt.output_mb ? opt.grad_mb : opt.output_mb) << 20;
    if ((r = cuMemAlloc_v2(&params, param_bytes)) != 0) fail("cuMemAlloc_v2 (params)", r);
    if ((r = cuMemAlloc_v2(&grads, (size_t)opt.grad_mb << 20)) != 0) fail("cuMemAlloc_v2 (grads)", r);
    if ((r = cuMemAlloc_v2(&batch, (size_t)opt.batch_mb << 20)) != 0) fail("cuMemAlloc_v2 (batch)", r);
    if ((r = cuMemAlloc_v2(&state, (size_t)opt.ckpt_mb << 20)) != 0) fail("cuMemAlloc_v2 (optimizer state)", r);

    ncclUniqueId id;
    ncclComm_t comm;
    int nr;
    if ((nr = ncclGetUniqueId(&id)) != 0) fail("ncclGetUniqueId (MASTER_ADDR/MASTER_PORT set?)", nr);
    if ((nr = ncclCommInitRank(&comm, world, id, rank_id)) != 0) fail(ncclGetErrorString(nr), nr);
    /* Pin the training thread only now: the stub driver's stream threads
     * stand for GPU work and must not compete for the trainer's CPU. */
    pin_to(opt.cpu);

    pthread_t helper;
    if (opt.ckpt_dir != NULL) {
        ckpt.staging = malloc((size_t)opt.ckpt_mb << 20);
        if (ckpt.staging == NULL) fail("malloc (checkpoint staging)", 0);
        memset(ckpt.staging, 0x5a, (size_t)opt.ckpt_mb << 20);
        if (pthread_create(&helper, NULL, checkpoint_writer, NULL) != 0) fail("pthread_create", errno);
    }

    const char *npb = getenv("INGERO_SIM_NS_PER_BLOCK");
    long ns_per_block = npb != NULL && atol(npb) > 0 ? atol(npb) : 1000;
    unsigned blocks = (unsigned)(opt.kernel_us * 1000 / ns_per_block);
    size_t batch_bytes = (size_t)opt.batch_mb << 20;
    char *host_batch = malloc(batch_bytes);
    if (host_batch == NULL) fail("malloc (batch)", 0);
    memset(host_batch, 1, batch_bytes);
    size_t output_bytes = (size_t)opt.output_mb << 20;
    char *host_outputs = malloc(output_bytes);
    if (host_outputs == NULL) fail("malloc (outputs)", 0);
    memset(host_outputs, 0, output_bytes);
    float loss = 0;
    double *ms = calloc((size_t)opt.steps, sizeof(double));
    double *compute = calloc((size_t)opt.steps, sizeof(double));
    double *wait_ms = calloc((size_t)opt.steps, sizeof(double));
    for (long step = 1; step <= opt.steps; step++) {
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        if ((r = cuMemcpyHtoD_v2(batch, host_batch, batch_bytes)) != 0)
            fail("cuMemcpyHtoD_v2", r);
        int burst = opt.mem_mb > 0 && step % opt.mem_every == 0;
        char *churn = NULL;
        if (burst) {
            /* New host memory, touched page by page. */
            size_t bytes = (size_t)opt.mem_mb << 20;
            churn = malloc(bytes);
            if (churn == NULL) fail("malloc (memory pressure)", 0);
            for (size_t off = 0; off < bytes; off += 4096)
                churn[off] = (char)step;
        }
        for (long k = 0; k < opt.kernels; k++) {
            burn_cpu_us(opt.host_us / opt.kernels);
            if ((r = cuLaunchKernel(kernels[k], blocks > 0 ? blocks : 1, 1, 1, 256, 1, 1, 0, stream, NULL, NULL)) != 0)
                fail("cuLaunchKernel", r);
        }
        cudart_step(local_rank);
        if (opt.ckpt_dir != NULL && step % opt.ckpt_every == 0)
            checkpoint(step, state);
        if ((r = cuStreamSynchronize(stream)) != 0)
            fail("cuStreamSynchronize (compute)", r);
        uint64_t t_reduce = now_ns(CLOCK_MONOTONIC);
        if ((nr = ncclAllReduce((void *)grads, (void *)grads, (size_t)opt.grad_mb << 18, 7, 0, comm, stream)) != 0)
            fail(ncclGetErrorString(nr), nr);
        if ((r = cuStreamSynchronize(stream)) != 0)
            fail("cuStreamSynchronize (all-reduce)", r);
        uint64_t t_synced = now_ns(CLOCK_MONOTONIC);
        compute[step - 1] = (double)(t_reduce - t0) / 1e6;
        wait_ms[step - 1] = (double)(t_synced - t_reduce) / 1e6;
        /* outputs.cpu(): a fresh pageable buffer during a burst. */
        char *dst = burst ? malloc(output_bytes) : host_outputs;
        if (dst == NULL) fail("malloc (outputs)", 0);
        if ((r = cuMemcpyDtoH_v2(dst, params, output_bytes)) != 0)
            fail("cuMemcpyDtoH_v2 (outputs)", r);
        if (burst) {
            free(dst);
            free(churn);
        }
        if ((r = cuMemcpyDtoH_v2(&loss, params, sizeof(loss))) != 0)
            fail("cuMemcpyDtoH_v2 (loss)", r);
        ms[step - 1] = (double)(now_ns(CLOCK_MONOTONIC) - t0) / 1e6;
        if (opt.report_every > 0 && step % opt.report_every == 0)
            printf("step %ld rank %d %.2f %.2f %.2f\n", step, rank_id, ms[step - 1], compute[step - 1], wait_ms[step - 1]);
    }
    ncclCommDestroy(comm);
    double mean = 0, compute_mean = 0, wait_mean = 0;
    for (long i = 0; i < opt.steps; i++) {
        mean += ms[i] / (double)opt.steps;
        compute_mean += compute[i] / (double)opt.steps;
        wait_mean += wait_ms[i] / (double)opt.steps;
    }
    qsort(ms, (size_t)opt.steps, sizeof(double), cmp_double);
    qsort(compute, (size_t)opt.steps, sizeof(double), cmp_double);
    qsort(wait_ms, (size_t)opt.steps, sizeof(double), cmp_double);
    printf("{\"rank\":%d,\"pid\":%d,\"steps\":%ld,\"median_ms\":%.2f,\"p90_ms\":%.2f,\"mean_ms\":%.2f,"
           "\"compute_median_ms\":%.2f,\"wait_median_ms\":%.2f,\"compute_mean_ms\":%.2f,\"wait_mean_ms\":%.2f}\n",
           rank_id, getpid(), opt.steps, ms[opt.steps / 2], ms[(opt.steps * 9) / 10], mean,
           compute[opt.steps / 2], wait_ms[opt.steps / 2], compute_mean, wait_mean);
    return 0;
}
