/*
 * libcuda.so.1 stand-in: the CUDA driver API with real signatures, for
 * machines without a GPU.
 *
 * The model is a GPU stream: every stream owns a worker thread that executes
 * its queued work in order. A kernel occupies the stream for a simulated GPU
 * time, a copy for bytes / bandwidth, and a host function (cuLaunchHostFunc)
 * runs on the worker when the work before it is done. Launches return after a
 * small CPU-bound launch cost (so a preempted launching thread shows launch
 * tail latency, as on real hardware); synchronize calls block until the
 * stream (or every stream) has drained.
 *
 * Synchronous copies between host and device also do the CPU work of the
 * real driver for pageable memory: the host buffer is copied through a
 * staging buffer, so a freshly allocated source page-faults inside the
 * call.
 *
 * Simulated GPU time of a kernel is requested through its grid:
 *   gpu_ns = gridDimX * gridDimY * gridDimZ * INGERO_SIM_NS_PER_BLOCK
 * Other knobs (environment, read by cuInit):
 *   INGERO_SIM_NS_PER_BLOCK  GPU time per block, ns         (default 1000)
 *   INGERO_SIM_LAUNCH_NS     CPU time spent per launch, ns  (default 4000)
 *   INGERO_SIM_COPY_GBPS     host<->device bandwidth, GB/s  (default 12)
 *   INGERO_SIM_GPU_MEM_MB    device memory size, MiB        (default 81920)
 *
 * Every exported entry point is compiled to start with `push %rbp` (see the
 * flags in sim/build.rs): that is the instruction the kernel emulates for
 * uprobes instead of single-stepping it, as with the real libcudart.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef void (*CUhostFn)(void *user_data);

typedef struct CUlaunchConfig_st {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
};

enum work_kind { WORK_SLEEP, WORK_HOST_FN };

struct work {
    enum work_kind kind;
    uint64_t ns;
    CUhostFn fn;
    void *arg;
    struct work *next;
};

struct CUstream_st {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct work *head, *tail;
    uint64_t submitted, completed;
    int stopping;
    pthread_t worker;
    struct CUstream_st *next_stream;
};

struct CUctx_st {
    CUdevice device;
};

struct CUmod_st {
    int unused;
};

struct CUfunc_st {
    char name[64];
};

struct allocation {
    CUdeviceptr ptr;
    size_t bytes;
    void *host; /* managed memory is real host memory */
    struct allocation *next;
};

static struct {
    int initialized;
    uint64_t ns_per_block;
    uint64_t launch_ns;
    double copy_bytes_per_ns;
    uint64_t mem_capacity;
    uint64_t mem_used;
    CUdeviceptr next_ptr;
    struct allocation *allocations;
    struct CUstream_st *streams;
    struct CUstream_st null_stream;
    pthread_mutex_t mu;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

static __thread CUcontext current_ctx;

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t env_u64(const char *name, uint64_t fallback) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return fallback;
    char *end = NULL;
    unsigned long long parsed = strtoull(v, &end, 10);
    return (end != NULL && *end == '\0') ? (uint64_t)parsed : fallback;
}

/* Burns CPU time (not wall time): a preempted thread takes longer. */
static void spin_cpu(uint64_t ns) {
    uint64_t start = now_ns(CLOCK_THREAD_CPUTIME_ID);
    while (now_ns(CLOCK_THREAD_CPUTIME_ID) - start < ns) {
    }
}

static void sleep_ns(uint64_t ns) {
    if (ns == 0)
        return;
    uint64_t until = now_ns(CLOCK_MONOTONIC) + ns;
    struct timespec ts = {.tv_sec = (time_t)(until / 1000000000ull),
                          .tv_nsec = (long)(until % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static uint64_t copy_ns(size_t bytes) {
    return (uint64_t)((double)bytes / g.copy_bytes_per_ns);
}

static void *stream_worker(void *arg) {
    struct CUstream_st *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->head == NULL && !s->stopping)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->head == NULL)
            break;
        /* Like a GPU, run queued kernels and copies back to back: take every
         * consecutive timed item at once (one wake-up, not one per kernel). */
        struct work *batch = s->head, *last = s->head;
        uint64_t ns = 0, items = 0;
        if (batch->kind == WORK_SLEEP) {
            while (s->head != NULL && s->head->kind == WORK_SLEEP) {
                last = s->head;
                ns += last->ns;
                items++;
                s->head = last->next;
            }
        } else {
            s->head = batch->next;
            items = 1;
        }
        last->next = NULL;
        if (s->head == NULL)
            s->tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (batch->kind == WORK_SLEEP)
            sleep_ns(ns);
        else
            batch->fn(batch->arg);
        while (batch != NULL) {
            struct work *next = batch->next;
            free(batch);
            batch = next;
        }
        pthread_mutex_lock(&s->mu);
        s->completed += items;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int stream_start(struct CUstream_st *s) {
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->worker, NULL, stream_worker, s) != 0)
        return -1;
    pthread_mutex_lock(&g.mu);
    s->next_stream = g.streams;
    g.streams = s;
    pthread_mutex_unlock(&g.mu);
    return 0;
}

static struct CUstream_st *resolve_stream(CUstream s) {
    return s == NULL ? &g.null_stream : s;
}

static CUresult enqueue(CUstream stream, enum work_kind kind, uint64_t ns, CUhostFn fn, void *arg) {
    struct work *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    w->kind = kind;
    w->ns = ns;
    w->fn = fn;
    w->arg = arg;
    struct CUstream_st *s = resolve_stream(stream);
    pthread_mutex_lock(&s->mu);
    if (s->tail != NULL)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    s->submitted++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return CUDA_SUCCESS;
}

static void drain(struct CUstream_st *s) {
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->submitted;
    while (s->completed < target)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

#define REQUIRE_INIT()                                                                             \
    do {                                                                                           \
        if (!g.initialized)                                                                        \
            return CUDA_ERROR_NOT_INITIALIZED;                                                     \
    } while (0)

EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g.mu);
    int first = !g.initialized;
    if (first) {
        g.ns_per_block = env_u64("INGERO_SIM_NS_PER_BLOCK", 1000);
        g.launch_ns = env_u64("INGERO_SIM_LAUNCH_NS", 4000);
        uint64_t gbps = env_u64("INGERO_SIM_COPY_GBPS", 12);
        g.copy_bytes_per_ns = (double)(gbps == 0 ? 1 : gbps);
        g.mem_capacity = env_u64("INGERO_SIM_GPU_MEM_MB", 81920) << 20;
        g.next_ptr = 0x7f2a00000000ull;
    }
    pthread_mutex_unlock(&g.mu);
    if (first) {
        if (stream_start(&g.null_stream) != 0)
            return CUDA_ERROR_OUT_OF_MEMORY;
        __atomic_store_n(&g.initialized, 1, __ATOMIC_RELEASE);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *version) {
    if (version == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *version = 12040;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    REQUIRE_INIT();
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = 1;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    REQUIRE_INIT();
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice device) {
    REQUIRE_INIT();
    if (name == NULL || len <= 0 || device != 0)
        return CUDA_ERROR_INVALID_VALUE;
    strncpy(name, "Ingero Simulated GPU", (size_t)len - 1);
    name[len - 1] = '\0';
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice device) {
    (void)flags;
    REQUIRE_INIT();
    if (ctx == NULL || device != 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext c = calloc(1, sizeof(*c));
    if (c == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->device = device;
    current_ctx = c;
    *ctx = c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    REQUIRE_INIT();
    current_ctx = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx) {
    REQUIRE_INIT();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *ctx = current_ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    REQUIRE_INIT();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    if (current_ctx == ctx)
        current_ctx = NULL;
    free(ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    REQUIRE_INIT();
    if (module == NULL || image == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *module = calloc(1, sizeof(**module));
    return *module == NULL ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name) {
    REQUIRE_INIT();
    if (fn == NULL || module == NULL || name == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUfunction f = calloc(1, sizeof(*f));
    if (f == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    strncpy(f->name, name, sizeof(f->name) - 1);
    *fn = f;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned int flags) {
    (void)flags;
    REQUIRE_INIT();
    if (stream == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUstream_st *s = malloc(sizeof(*s));
    if (s == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (stream_start(s) != 0) {
        free(s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *stream = s;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
    REQUIRE_INIT();
    if (stream == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    drain(stream);
    pthread_mutex_lock(&g.mu);
    for (struct CUstream_st **p = &g.streams; *p != NULL; p = &(*p)->next_stream) {
        if (*p == stream) {
            *p = stream->next_stream;
            break;
        }
    }
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_lock(&stream->mu);
    stream->stopping = 1;
    pthread_cond_broadcast(&stream->cv);
    pthread_mutex_unlock(&stream->mu);
    pthread_join(stream->worker, NULL);
    free(stream);
    return CUDA_SUCCESS;
}

static CUresult launch(unsigned int gx, unsigned int gy, unsigned int gz, CUstream stream) {
    if (gx == 0 || gy == 0 || gz == 0)
        return CUDA_ERROR_INVALID_VALUE;
    spin_cpu(g.launch_ns);
    uint64_t blocks = (uint64_t)gx * gy * gz;
    return enqueue(stream, WORK_SLEEP, blocks * g.ns_per_block, NULL, NULL);
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                               unsigned int gridDimZ, unsigned int blockDimX,
                               unsigned int blockDimY, unsigned int blockDimZ,
                               unsigned int sharedMemBytes, CUstream hStream, void **kernelParams,
                               void **extra) {
    (void)blockDimX, (void)blockDimY, (void)blockDimZ, (void)sharedMemBytes;
    (void)kernelParams, (void)extra;
    REQUIRE_INIT();
    if (f == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return launch(gridDimX, gridDimY, gridDimZ, hStream);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                                 void **extra) {
    (void)kernelParams, (void)extra;
    REQUIRE_INIT();
    if (config == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (f == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    return launch(config->gridDimX, config->gridDimY, config->gridDimZ, config->hStream);
}

EXPORT CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
    REQUIRE_INIT();
    if (fn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return enqueue(hStream, WORK_HOST_FN, 0, fn, userData);
}

static CUresult allocate(CUdeviceptr *dptr, size_t bytes, int managed) {
    if (dptr == NULL || bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct allocation *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (managed) {
        a->host = malloc(bytes);
        if (a->host == NULL) {
            free(a);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    pthread_mutex_lock(&g.mu);
    if (g.mem_used + bytes > g.mem_capacity) {
        pthread_mutex_unlock(&g.mu);
        free(a->host);
        free(a);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    g.mem_used += bytes;
    a->bytes = bytes;
    if (managed) {
        a->ptr = (CUdeviceptr)(uintptr_t)a->host;
    } else {
        a->ptr = g.next_ptr;
        g.next_ptr += (bytes + 0xfffff) & ~(CUdeviceptr)0xfffff; /* 1 MiB aligned */
    }
    a->next = g.allocations;
    g.allocations = a;
    pthread_mutex_unlock(&g.mu);
    *dptr = a->ptr;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    REQUIRE_INIT();
    return allocate(dptr, bytesize, 0);
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    (void)flags;
    REQUIRE_INIT();
    return allocate(dptr, bytesize, 1);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    (void)hStream;
    REQUIRE_INIT();
    return allocate(dptr, bytesize, 0);
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    REQUIRE_INIT();
    pthread_mutex_lock(&g.mu);
    for (struct allocation **p = &g.allocations; *p != NULL; p = &(*p)->next) {
        if ((*p)->ptr == dptr) {
            struct allocation *a = *p;
            *p = a->next;
            g.mem_used -= a->bytes;
            pthread_mutex_unlock(&g.mu);
            free(a->host);
            free(a);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&g.mu);
    return CUDA_ERROR_INVALID_VALUE;
}

/* Synchronous copies follow legacy default-stream semantics: they wait for
 * the null stream, then take bytes / bandwidth of wall time. Copies from or
 * to host memory move the host bytes through a staging buffer first. */
enum host_side { NO_HOST, HOST_SOURCE, HOST_DESTINATION };

static CUresult copy_sync(size_t bytes, void *host, enum host_side side) {
    static __thread char staging[1 << 20];
    drain(&g.null_stream);
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    for (size_t off = 0; host != NULL && off < bytes; off += sizeof(staging)) {
        size_t n = bytes - off < sizeof(staging) ? bytes - off : sizeof(staging);
        if (side == HOST_SOURCE)
            memcpy(staging, (const char *)host + off, n);
        else if (side == HOST_DESTINATION)
            memcpy((char *)host + off, staging, n);
    }
    uint64_t spent = now_ns(CLOCK_MONOTONIC) - start, total = copy_ns(bytes);
    sleep_ns(total > spent ? total - spent : 0);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount) {
    REQUIRE_INIT();
    if (dst == 0 || src == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return copy_sync(ByteCount, NULL, NO_HOST);
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    REQUIRE_INIT();
    if (dstDevice == 0 || srcHost == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return copy_sync(ByteCount, (void *)srcHost, HOST_SOURCE);
}

EXPORT CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    REQUIRE_INIT();
    if (dstHost == NULL || srcDevice == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return copy_sync(ByteCount, dstHost, HOST_DESTINATION);
}

EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount,
                              CUstream hStream) {
    REQUIRE_INIT();
    if (dst == 0 || src == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return enqueue(hStream, WORK_SLEEP, copy_ns(ByteCount), NULL, NULL);
}

EXPORT CUresult cuStreamSynchronize(CUstream hStream) {
    REQUIRE_INIT();
    drain(resolve_stream(hStream));
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) {
    REQUIRE_INIT();
    /* Streams are only added at the head, so the list read from this
     * snapshot covers every stream that existed at the call. Destroying a
     * stream while another thread synchronizes the context is undefined, as
     * in CUDA. */
    pthread_mutex_lock(&g.mu);
    struct CUstream_st *s = g.streams;
    pthread_mutex_unlock(&g.mu);
    for (; s != NULL; s = s->next_stream)
        drain(s);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char **str) {
    if (str == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *str = "no error"; break;
    case CUDA_ERROR_INVALID_VALUE: *str = "invalid argument"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *str = "out of memory"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *str = "initialization error"; break;
    case CUDA_ERROR_INVALID_DEVICE: *str = "invalid device ordinal"; break;
    case CUDA_ERROR_INVALID_HANDLE: *str = "invalid resource handle"; break;
    default: *str = "unknown error"; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
