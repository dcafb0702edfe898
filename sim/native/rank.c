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
 *   ncclAllReduce of the gradients on the data-parallel communicator (a
 *   real barrier), every --group-every steps (default 10) followed by a
 *   group (ncclGroupStart, ncclAllGather + ncclReduceScatter on the world
 *   communicator, ncclGroupEnd), then cuStreamSynchronize
 *   cuMemcpyDtoH_v2 of the step's outputs (--output-mb; like .cpu()) and
 *   of the loss
 *
 * NCCL is set up the way PyTorch does it: the world communicator with
 * ncclCommInitRankConfig (the id from ncclGetUniqueId, which the stub
 * derives from MASTER_ADDR/MASTER_PORT), then ncclCommSplit(world, color 0,
 * key rank) for the data-parallel group, then a ncclBroadcast of the
 * parameters from rank 0 before the first step; both communicators are
 * destroyed at the end.
 *
 * printing "step S rank R TOTAL_MS COMPUTE_MS WAIT_MS" after each step, where
 * compute runs to the first synchronize and wait is the all-reduce (peers
 * plus transfer), and a JSON summary at the end. A rank that
 * reaches the all-reduce late makes every other rank wait in
 * cuStreamSynchronize, as in real data-parallel training: every rank's total
 * step time is the same, the straggler is the one with the longest compute
 * and the shortest wait. The summary also gives the communicator sizes, the
 * rank in the split communicator and how many NCCL calls were made.
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
 *   --slow-input-us U
 *       a slow input pipeline on the training thread: U us of CPU work at
 *       the start of every step, before the batch is copied in.
 *   --hang-at-step K
 *       at the start of step K the rank prints "stuck before step K" on
 *       stderr and blocks reading a pipe nobody writes (a stuck data
 *       loader): it never reaches that step's all-reduce, and every other
 *       rank blocks in its next cuStreamSynchronize.
 *   --loader-workers W --loader-dir DIR [--loader-decode-us U]
 *       batches come from W worker processes ("pt_data_worker", forked
 *       after the go line, SCHED_IDLE, on the rank's CPU), one pipe each,
 *       taken round-robin. Each worker reads 1 MiB of DIR/rankR-dataset.bin
 *       (written before the ready line) with O_DIRECT and burns U us of CPU
 *       decoding it (default 30000) per batch: slower than the rank
 *       consumes, so the training thread sleeps in read() waiting for data
 *       and its kernel launches come in bursts.
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
#include "rank.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include "nccl_api.h"

const char *PROG = "ingero-sim-rank";

struct rank_options opt = {.steps = 100, .kernels = 32, .kernel_us = 500, .host_us = 1000, .batch_mb = 16,
                           .output_mb = 16, .grad_mb = 32, .ckpt_mb = 256, .ckpt_every = 10, .mem_every = 5,
                           .cpu = -1, .report_every = 1, .group_every = 10, .loader_decode_us = 30000};

int rank_id, world;

void fail(const char *what, long code) {
    fprintf(stderr, "%s: rank %d: %s failed (%ld)\n", PROG, rank_id, what, code);
    exit(3);
}

uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void burn_cpu_us(long us) {
    uint64_t start = now_ns(CLOCK_THREAD_CPUTIME_ID);
    volatile uint64_t x = 0;
    while (now_ns(CLOCK_THREAD_CPUTIME_ID) - start < (uint64_t)us * 1000)
        x++;
}

void pin_to(long cpu) {
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
        else if (!strcmp(a, "--group-every")) opt.group_every = sim_num(PROG, a, v);
        else if (!strcmp(a, "--slow-input-us")) opt.slow_input_us = sim_num(PROG, a, v);
        else if (!strcmp(a, "--hang-at-step")) opt.hang_at = sim_num(PROG, a, v);
        else if (!strcmp(a, "--loader-workers")) opt.loader_workers = sim_num(PROG, a, v);
        else if (!strcmp(a, "--loader-dir")) opt.loader_dir = v;
        else if (!strcmp(a, "--loader-decode-us")) opt.loader_decode_us = sim_num(PROG, a, v);
        else {
            fprintf(stderr, "%s: unknown option %s\n", PROG, a);
            exit(2);
        }
    }
    if (opt.kernels < 1 || opt.steps < 1 || opt.ckpt_every < 1 || opt.ckpt_mb < 1 || opt.mem_every < 1) {
        fprintf(stderr, "%s: --steps, --kernels, --checkpoint-every, --checkpoint-mb and --memory-every must be at least 1\n", PROG);
        exit(2);
    }
    if ((opt.loader_workers > 0) != (opt.loader_dir != NULL) || opt.loader_workers > 64) {
        fprintf(stderr, "%s: --loader-workers (1-64) and --loader-dir go together\n", PROG);
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
    if (opt.loader_workers > 0)
        loader_prepare();
    if (opt.wait && sim_wait_for_go())
        return 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (opt.loader_workers > 0)
        loader_start();

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
    ncclComm_t world_comm, comm;
    ncclResult_t nr;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 1;
    config.commName = "default_pg";
    if ((nr = ncclGetUniqueId(&id)) != 0) fail("ncclGetUniqueId (MASTER_ADDR/MASTER_PORT set?)", nr);
    if ((nr = ncclCommInitRankConfig(&world_comm, world, id, rank_id, &config)) != 0)
        fail(ncclGetErrorString(nr), nr);
    /* The data-parallel group: every rank, ordered by its world rank. */
    if ((nr = ncclCommSplit(world_comm, 0, rank_id, &comm, NULL)) != 0) fail(ncclGetErrorString(nr), nr);
    int dp_size = 0, dp_rank = -1;
    if ((nr = ncclCommCount(comm, &dp_size)) != 0 || (nr = ncclCommUserRank(comm, &dp_rank)) != 0)
        fail(ncclGetErrorString(nr), nr);
    if (dp_size != world || dp_rank != rank_id)
        fail("ncclCommSplit (rank order)", dp_rank);
    /* Pin the training thread only now: the stub driver's stream threads
     * stand for GPU work and must not compete for the trainer's CPU. */
    pin_to(opt.cpu);

    if (opt.ckpt_dir != NULL)
        checkpoint_start();

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
    long n_broadcast = 0, n_allreduce = 0, n_groups = 0;
    /* Parameters from rank 0, as DDP does before the first step. */
    if ((nr = ncclBroadcast((void *)params, (void *)params, param_bytes / 4, ncclFloat32, 0, comm, stream)) != 0)
        fail(ncclGetErrorString(nr), nr);
    n_broadcast++;
    if ((r = cuStreamSynchronize(stream)) != 0)
        fail("cuStreamSynchronize (broadcast)", r);
    size_t shard = 65536; /* floats per rank in the grouped all-gather/reduce-scatter */
    double *ms = calloc((size_t)opt.steps, sizeof(double));
    double *compute = calloc((size_t)opt.steps, sizeof(double));
    double *wait_ms = calloc((size_t)opt.steps, sizeof(double));
    for (long step = 1; step <= opt.steps; step++) {
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        if (step == opt.hang_at)
            hang(step);
        if (opt.loader_workers > 0)
            loader_next(step, host_batch);
        burn_cpu_us(opt.slow_input_us);
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
        if ((nr = ncclAllReduce((void *)grads, (void *)grads, (size_t)opt.grad_mb << 18, ncclFloat32, ncclSum, comm, stream)) != 0)
            fail(ncclGetErrorString(nr), nr);
        n_allreduce++;
        if (opt.group_every > 0 && step % opt.group_every == 0) {
            if ((nr = ncclGroupStart()) != 0 ||
                (nr = ncclAllGather((void *)grads, (void *)params, shard, ncclFloat32, world_comm, stream)) != 0 ||
                (nr = ncclReduceScatter((void *)params, (void *)grads, shard, ncclFloat32, ncclSum, world_comm, stream)) != 0 ||
                (nr = ncclGroupEnd()) != 0)
                fail(ncclGetErrorString(nr), nr);
            n_groups++;
        }
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
    if (opt.loader_workers > 0)
        loader_stop();
    if ((nr = ncclCommDestroy(comm)) != 0 || (nr = ncclCommDestroy(world_comm)) != 0)
        fail(ncclGetErrorString(nr), nr);
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
           "\"compute_median_ms\":%.2f,\"wait_median_ms\":%.2f,\"compute_mean_ms\":%.2f,\"wait_mean_ms\":%.2f,"
           "\"world_size\":%d,\"dp_size\":%d,\"dp_rank\":%d,"
           "\"nccl\":{\"broadcast\":%ld,\"all_reduce\":%ld,\"groups\":%ld}}\n",
           rank_id, getpid(), opt.steps, ms[opt.steps / 2], ms[(opt.steps * 9) / 10], mean,
           compute[opt.steps / 2], wait_ms[opt.steps / 2], compute_mean, wait_mean,
           world, dp_size, dp_rank, n_broadcast, n_allreduce, n_groups);
    return 0;
}
