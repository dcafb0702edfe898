/*
 * ingero-sim-cudart: calls the real CUDA runtime (libcudart.so.12 from the
 * PyPI wheel nvidia-cuda-runtime-cu12, opened with dlopen) a known number
 * of times and prints one JSON line with its pid, tid and the return codes.
 *
 * This program must not load the stub libcuda: without a driver every call
 * returns 35 (cudaErrorInsufficientDriver), which is what tests expect.
 *
 * usage: ingero-sim-cudart --lib PATH [--calls N] [--bytes B] [--all-ops] [--wait]
 *   N times each: cudaMalloc(B), cudaLaunchKernel(grid 4x2x1), cudaMemcpy(B,
 *   host to device), cudaStreamSynchronize(default stream); --all-ops adds
 *   one call of every other probed entry point. The report's "seconds" is
 *   the time the N x 4 calls took (the per-call benchmark divides it).
 */
#include "common.h"

#include <dlfcn.h>
#include <stdint.h>
#include <time.h>

typedef struct { unsigned x, y, z; } dim3;
typedef int (*malloc_fn)(void **, size_t);
typedef int (*free_fn)(void *);
typedef int (*launch_fn)(const void *, dim3, dim3, void **, size_t, void *);
typedef int (*memcpy_fn)(void *, const void *, size_t, int);
typedef int (*memcpy_async_fn)(void *, const void *, size_t, int, void *);
typedef int (*sync_stream_fn)(void *);
typedef int (*sync_fn)(void);
typedef int (*malloc_managed_fn)(void **, size_t, unsigned);
typedef int (*malloc_async_fn)(void **, size_t, void *);
typedef int (*event_sync_fn)(void *);
typedef int (*set_device_fn)(int);

static const char *lib;

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (p == NULL) {
        fprintf(stderr, "ingero-sim-cudart: %s not found in %s\n", name, lib);
        exit(2);
    }
    return p;
}

static void kernel_stub(void) {}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long calls = 10, bytes = 1 << 20;
    int all_ops = 0, wait = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--wait")) { wait = 1; continue; }
        if (!strcmp(a, "--all-ops")) { all_ops = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "ingero-sim-cudart: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--lib")) lib = v;
        else if (!strcmp(a, "--calls")) calls = sim_num("ingero-sim-cudart", a, v);
        else if (!strcmp(a, "--bytes")) bytes = sim_num("ingero-sim-cudart", a, v);
        else {
            fprintf(stderr, "ingero-sim-cudart: unknown option %s\n", a);
            return 2;
        }
    }
    if (lib == NULL) {
        fprintf(stderr, "usage: ingero-sim-cudart --lib PATH [--calls N] [--bytes B] [--all-ops] [--wait]\n");
        return 2;
    }
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "ingero-sim-cudart: dlopen: %s\n", dlerror());
        return 2;
    }
    malloc_fn cuda_malloc = (malloc_fn)sym(h, "cudaMalloc");
    launch_fn cuda_launch = (launch_fn)sym(h, "cudaLaunchKernel");
    memcpy_fn cuda_memcpy = (memcpy_fn)sym(h, "cudaMemcpy");
    sync_stream_fn cuda_sync = (sync_stream_fn)sym(h, "cudaStreamSynchronize");
    if (wait && sim_wait_for_go())
        return 0;
    static char host[1 << 12];
    int rc_malloc = -1, rc_launch = -1, rc_memcpy = -1, rc_sync = -1;
    dim3 grid = {4, 2, 1}, block = {128, 1, 1};
    double started = now_s();
    for (long i = 0; i < calls; i++) {
        void *dev = NULL;
        rc_malloc = cuda_malloc(&dev, (size_t)bytes);
        rc_launch = cuda_launch((const void *)kernel_stub, grid, block, NULL, 0, NULL);
        rc_memcpy = cuda_memcpy((void *)0x1000, host, (size_t)bytes, 1);
        rc_sync = cuda_sync(NULL);
    }
    double seconds = now_s() - started;
    if (all_ops) {
        void *dev = NULL;
        ((set_device_fn)sym(h, "cudaSetDevice"))(0);
        ((free_fn)sym(h, "cudaFree"))(NULL);
        ((memcpy_async_fn)sym(h, "cudaMemcpyAsync"))((void *)0x1000, host, 4096, 2, NULL);
        ((sync_fn)sym(h, "cudaDeviceSynchronize"))();
        ((malloc_managed_fn)sym(h, "cudaMallocManaged"))(&dev, 8192, 1);
        ((malloc_async_fn)sym(h, "cudaMallocAsync"))(&dev, 12288, NULL);
        ((event_sync_fn)sym(h, "cudaEventSynchronize"))(NULL);
        ((launch_fn)sym(h, "cudaLaunchKernel_ptsz"))((const void *)kernel_stub, grid, block, NULL, 0, NULL);
        ((memcpy_async_fn)sym(h, "cudaMemcpyAsync_ptsz"))((void *)0x1000, host, 16384, 1, NULL);
        ((sync_stream_fn)sym(h, "cudaStreamSynchronize_ptsz"))(NULL);
        ((memcpy_fn)sym(h, "cudaMemcpy_ptds"))((void *)0x1000, host, 20480, 1);
        ((malloc_async_fn)sym(h, "cudaMallocAsync_ptsz"))(&dev, 24576, NULL);
    }
    printf("{\"pid\":%d,\"tid\":%d,\"kernel\":%lu,\"seconds\":%.6f,\"rc\":{\"cudaMalloc\":%d,\"cudaLaunchKernel\":%d,"
           "\"cudaMemcpy\":%d,\"cudaStreamSynchronize\":%d}}\n",
           getpid(), sim_gettid(), (unsigned long)(uintptr_t)kernel_stub, seconds, rc_malloc, rc_launch,
           rc_memcpy, rc_sync);
    return 0;
}
