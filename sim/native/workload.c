/*
 * ingero-sim-workload: small programs with known call patterns on the stub
 * driver and the host, for the tracer's tests and benchmarks. (The real
 * CUDA runtime has its own program, cudart.c, which must not load the
 * stub.) Each mode makes an exact number of calls and prints one JSON line
 * describing what it did (pids, tids, sizes, return codes), so a test can
 * compare the tracer's database with the truth.
 *
 * With --wait the program prints {"ready":PID} and blocks until a line
 * arrives on stdin, so a tracer can be attached to its pid first.
 *
 * Modes:
 *   driver  [--threads T] [--calls N] [--kernel-us U]
 *           stub libcuda: per thread one cuMemAlloc_v2 of (index+1) MiB, then
 *           N x (cuLaunchKernel of U us of GPU time + cuStreamSynchronize)
 *   rate    [--calls N] [--per-sec R]
 *           N cuCtxSynchronize calls paced at R per second (in bursts of at
 *           most 0.2 ms); prints the elapsed seconds
 *   fork    [--calls N]
 *           a forked child makes N cuMemAlloc_v2 calls of 3 MiB and exits
 *   sleep   [--threads T] [--calls N] [--sleep-us U]
 *           every thread sleeps U us N times (known off-CPU time)
 *   spin    [--threads T] [--ms M]
 *           every thread burns CPU for M ms
 *   io      --file PATH [--mb M] [--chunk-kb C]
 *           O_DIRECT writes of M MiB in C KiB chunks, then fsync
 *   alloc   [--mb M] [--calls N]
 *           N times: allocate M MiB, touch every page, free it
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cuda_driver.h"

struct options {
    const char *mode;
    const char *file;
    long calls;
    long threads;
    long bytes;
    long kernel_us;
    long per_sec;
    long sleep_us;
    long ms;
    long mb;
    long chunk_kb;
    int wait;
};

static struct options opt = {
    .calls = 10, .threads = 1, .bytes = 1 << 20, .kernel_us = 1000, .per_sec = 1000,
    .sleep_us = 2000, .ms = 200, .mb = 16, .chunk_kb = 1024,
};

static void die(const char *what) {
    fprintf(stderr, "ingero-sim-workload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void check(CUresult r, const char *call) {
    if (r != 0) {
        fprintf(stderr, "ingero-sim-workload: %s returned %d\n", call, r);
        exit(3);
    }
}

/* ---- driver: the stub libcuda, several threads ---- */

static CUcontext ctx;
static CUfunction kernel;

static void driver_init(void) {
    check(cuInit(0), "cuInit");
    check(cuCtxCreate_v2(&ctx, 0, 0), "cuCtxCreate_v2");
    CUmodule module;
    check(cuModuleLoadData(&module, "workload"), "cuModuleLoadData");
    check(cuModuleGetFunction(&kernel, module, "workload_kernel"), "cuModuleGetFunction");
}

struct thread_report {
    long index;
    pid_t tid;
    size_t alloc_bytes;
    pthread_t handle;
};

static void *driver_thread(void *arg) {
    struct thread_report *r = arg;
    r->tid = sim_gettid();
    check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    CUstream stream;
    check(cuStreamCreate(&stream, 0), "cuStreamCreate");
    CUdeviceptr p;
    r->alloc_bytes = (size_t)(r->index + 1) << 20;
    check(cuMemAlloc_v2(&p, r->alloc_bytes), "cuMemAlloc_v2");
    /* INGERO_SIM_NS_PER_BLOCK defaults to 1000: one block per microsecond. */
    const char *npb = getenv("INGERO_SIM_NS_PER_BLOCK");
    long ns_per_block = npb != NULL ? atol(npb) : 1000;
    unsigned blocks = (unsigned)(opt.kernel_us * 1000 / (ns_per_block > 0 ? ns_per_block : 1000));
    for (long i = 0; i < opt.calls; i++) {
        check(cuLaunchKernel(kernel, blocks > 0 ? blocks : 1, 1, 1, 256, 1, 1, 0, stream, NULL, NULL),
              "cuLaunchKernel");
        check(cuStreamSynchronize(stream), "cuStreamSynchronize");
    }
    return NULL;
}

static int run_driver(void) {
    driver_init();
    struct thread_report *reports = calloc((size_t)opt.threads, sizeof(*reports));
    for (long t = 0; t < opt.threads; t++) {
        reports[t].index = t;
        if (pthread_create(&reports[t].handle, NULL, driver_thread, &reports[t]) != 0)
            die("pthread_create");
    }
    for (long t = 0; t < opt.threads; t++)
        pthread_join(reports[t].handle, NULL);
    printf("{\"pid\":%d,\"threads\":[", getpid());
    for (long t = 0; t < opt.threads; t++)
        printf("%s{\"tid\":%d,\"alloc_bytes\":%zu}", t ? "," : "", reports[t].tid, reports[t].alloc_bytes);
    printf("]}\n");
    return 0;
}

static int run_rate(void) {
    driver_init();
    uint64_t period = 1000000000ull / (uint64_t)(opt.per_sec > 0 ? opt.per_sec : 1);
    uint64_t start = now_ns();
    for (long i = 0; i < opt.calls; i++) {
        /* Sleep only when well ahead of schedule: a sleep per call could
         * not keep high rates. */
        uint64_t target = start + (uint64_t)i * period;
        if (now_ns() + 200000 < target)
            sleep_until(target);
        check(cuCtxSynchronize(), "cuCtxSynchronize");
    }
    double secs = (double)(now_ns() - start) / 1e9;
    printf("{\"pid\":%d,\"tid\":%d,\"calls\":%ld,\"seconds\":%.3f}\n", getpid(), sim_gettid(), opt.calls, secs);
    return 0;
}

static int run_fork(void) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        driver_init();
        for (long i = 0; i < opt.calls; i++) {
            CUdeviceptr p;
            check(cuMemAlloc_v2(&p, 3u << 20), "cuMemAlloc_v2");
        }
        _exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) < 0)
        die("waitpid");
    printf("{\"pid\":%d,\"child\":%d,\"child_status\":%d}\n", getpid(), child, status);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static void *sleep_thread(void *arg) {
    struct thread_report *r = arg;
    r->tid = sim_gettid();
    for (long i = 0; i < opt.calls; i++) {
        struct timespec ts = {.tv_sec = opt.sleep_us / 1000000, .tv_nsec = (opt.sleep_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    return NULL;
}

static void *spin_thread(void *arg) {
    struct thread_report *r = arg;
    r->tid = sim_gettid();
    uint64_t end = now_ns() + (uint64_t)opt.ms * 1000000ull;
    volatile uint64_t x = 0;
    while (now_ns() < end)
        x++;
    return NULL;
}

static int run_threads(void *(*body)(void *)) {
    struct thread_report *reports = calloc((size_t)opt.threads, sizeof(*reports));
    for (long t = 0; t < opt.threads; t++) {
        reports[t].index = t;
        if (pthread_create(&reports[t].handle, NULL, body, &reports[t]) != 0)
            die("pthread_create");
    }
    for (long t = 0; t < opt.threads; t++)
        pthread_join(reports[t].handle, NULL);
    printf("{\"pid\":%d,\"tids\":[", getpid());
    for (long t = 0; t < opt.threads; t++)
        printf("%s%d", t ? "," : "", reports[t].tid);
    printf("]}\n");
    return 0;
}

static int run_io(void) {
    if (opt.file == NULL) {
        fprintf(stderr, "ingero-sim-workload: io needs --file PATH\n");
        return 2;
    }
    int fd = open(opt.file, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0)
        die("open O_DIRECT");
    size_t chunk = (size_t)opt.chunk_kb << 10;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, chunk) != 0)
        die("posix_memalign");
    memset(buf, 0xab, chunk);
    size_t total = (size_t)opt.mb << 20, written = 0;
    long writes = 0;
    while (written < total) {
        ssize_t n = pwrite(fd, buf, chunk, (off_t)written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("pwrite");
        written += (size_t)n;
        writes++;
    }
    if (fsync(fd) != 0)
        die("fsync");
    close(fd);
    printf("{\"pid\":%d,\"tid\":%d,\"bytes\":%zu,\"writes\":%ld}\n", getpid(), sim_gettid(), written, writes);
    return 0;
}

static int run_alloc(void) {
    size_t bytes = (size_t)opt.mb << 20;
    for (long i = 0; i < opt.calls; i++) {
        char *p = malloc(bytes);
        if (p == NULL)
            die("malloc");
        for (size_t off = 0; off < bytes; off += 4096)
            p[off] = (char)off;
        free(p);
    }
    printf("{\"pid\":%d,\"tid\":%d,\"bytes\":%zu}\n", getpid(), sim_gettid(), bytes * (size_t)opt.calls);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ingero-sim-workload driver|rate|fork|sleep|spin|io|alloc [options]\n");
        return 2;
    }
    opt.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--wait")) { opt.wait = 1; continue; }
        if (v == NULL) {
            fprintf(stderr, "ingero-sim-workload: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--file")) opt.file = v;
        else if (!strcmp(a, "--calls")) opt.calls = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--threads")) opt.threads = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--bytes")) opt.bytes = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--kernel-us")) opt.kernel_us = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--per-sec")) opt.per_sec = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--sleep-us")) opt.sleep_us = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--ms")) opt.ms = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--mb")) opt.mb = sim_num("ingero-sim-workload", a, v);
        else if (!strcmp(a, "--chunk-kb")) opt.chunk_kb = sim_num("ingero-sim-workload", a, v);
        else {
            fprintf(stderr, "ingero-sim-workload: unknown option %s\n", a);
            return 2;
        }
    }
    if (opt.threads < 1)
        opt.threads = 1;
    if (opt.wait && sim_wait_for_go())
        return 0; /* the test went away before starting us */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(opt.mode, "driver")) return run_driver();
    if (!strcmp(opt.mode, "rate")) return run_rate();
    if (!strcmp(opt.mode, "fork")) return run_fork();
    if (!strcmp(opt.mode, "sleep")) return run_threads(sleep_thread);
    if (!strcmp(opt.mode, "spin")) return run_threads(spin_thread);
    if (!strcmp(opt.mode, "io")) return run_io();
    if (!strcmp(opt.mode, "alloc")) return run_alloc();
    fprintf(stderr, "ingero-sim-workload: unknown mode %s\n", opt.mode);
    return 2;
}
