/*
 * ingero-sim-nccl-check: one rank of a job that exercises the stub
 * libnccl.so.2 the way an application would, checking what it observes.
 * Started like a torchrun worker (RANK, WORLD_SIZE = 4, MASTER_ADDR,
 * MASTER_PORT); prints "ok NAME" per check passed, or "FAIL NAME: why" on
 * stderr and exits 1 at the first failure. sim/tests/nccl_stub.rs runs it.
 *
 * Checks, in order (every rank runs the same sequence of collectives):
 *   args       argument errors: NULL comm, bad datatype/op/root/peer, bad
 *              config, unbalanced ncclGroupEnd, bad split colour
 *   init       ncclCommInitRankConfig of the world; count and rank
 *   async      the call returns at once, the barrier is in
 *              cuStreamSynchronize: rank 0 arrives 400 ms late, the others
 *              wait for it there
 *   bandwidth  the transfer time of a large all-reduce follows
 *              2(n-1)/n * bytes / INGERO_SIM_NET_GBPS
 *   all-ops    every collective once, in the same order on every rank
 *   split      colours {0: ranks 0 and 2, 1: rank 1, NOCOLOR: rank 3},
 *              key = -rank (reverses the order); a collective on a split
 *              communicator involves its members only
 *   p2p        a ring of ncclSend/ncclRecv in a group (would deadlock if
 *              run call by call); a late sender delays its receiver only
 *   group      nested groups mixing the world and split communicators
 *   abort      ncclCommAbort releases an operation stuck waiting for peers
 *   local      ncclCommInitAll communicators complete locally (rank 0)
 *   group-init ncclCommInitRank of two ranks from one thread in a group
 *              (rank 0)
 */
#include "common.h"

#include <pthread.h>
#include <time.h>

#include "cuda_driver.h"
#include "nccl_api.h"

static int rank_id, world;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#define CHECK(name, cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s (rank %d): ", name, rank_id);                                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define OK(call, name) CHECK(name, (call) == 0, "%s returned nonzero", #call)

static void passed(const char *name) { printf("ok %s\n", name); }

static CUdeviceptr buf;
static CUstream stream;

static void sync_stream(const char *name) {
    OK(cuStreamSynchronize(stream), name);
}

/* An all-reduce + synchronize: leaves every member released together. */
static void barrier(ncclComm_t comm, const char *name) {
    OK(ncclAllReduce((void *)buf, (void *)buf, 1, ncclFloat32, ncclSum, comm, stream), name);
    sync_stream(name);
}

static void check_args(void) {
    const char *n = "args";
    void *p = (void *)buf;
    CHECK(n, ncclAllReduce(p, p, 1, ncclFloat32, ncclSum, NULL, stream) == ncclInvalidArgument, "NULL comm");
    CHECK(n, ncclGetUniqueId(NULL) == ncclInvalidArgument, "NULL id");
    CHECK(n, ncclCommCount(NULL, &(int){0}) == ncclInvalidArgument, "count of NULL");
    CHECK(n, ncclCommDestroy(NULL) == ncclSuccess && ncclCommAbort(NULL) == ncclSuccess, "NULL destroy/abort");
    CHECK(n, ncclGroupEnd() == ncclInvalidUsage, "unbalanced ncclGroupEnd");
    ncclUniqueId id;
    OK(ncclGetUniqueId(&id), n);
    ncclComm_t c = NULL;
    ncclConfig_t bad = NCCL_CONFIG_INITIALIZER;
    bad.magic = 0;
    CHECK(n, ncclCommInitRankConfig(&c, world, id, rank_id, &bad) == ncclInvalidArgument, "bad config magic");
    bad = (ncclConfig_t)NCCL_CONFIG_INITIALIZER;
    bad.blocking = 7;
    CHECK(n, ncclCommInitRankConfig(&c, world, id, rank_id, &bad) == ncclInvalidArgument, "bad blocking");
    CHECK(n, ncclCommInitRank(&c, world, id, world) == ncclInvalidArgument, "rank out of range");
    CHECK(n, ncclCommInitRank(NULL, world, id, rank_id) == ncclInvalidArgument, "NULL comm pointer");
    CHECK(n, strcmp(ncclGetErrorString(ncclInvalidArgument), "invalid argument (run with NCCL_DEBUG=WARN for details)") == 0, "error string");
    int v = 0;
    CHECK(n, ncclGetVersion(&v) == 0 && v == 22803, "version %d", v);
    passed(n);
}

static void check_args_on(ncclComm_t comm) {
    const char *n = "args";
    void *p = (void *)buf;
    CHECK(n, ncclAllReduce(p, p, 1, (ncclDataType_t)99, ncclSum, comm, stream) == ncclInvalidArgument, "bad type");
    CHECK(n, ncclAllReduce(p, p, 1, ncclFloat32, (ncclRedOp_t)77, comm, stream) == ncclInvalidArgument, "bad op");
    CHECK(n, ncclAllReduce(NULL, p, 1, ncclFloat32, ncclSum, comm, stream) == ncclInvalidArgument, "NULL sendbuff");
    CHECK(n, ncclBroadcast(p, p, 1, ncclFloat32, world, comm, stream) == ncclInvalidArgument, "bad root");
    CHECK(n, ncclSend(p, 1, ncclFloat32, -1, comm, stream) == ncclInvalidArgument, "bad peer");
    CHECK(n, ncclCommSplit(comm, -2, 0, &(ncclComm_t){NULL}, NULL) == ncclInvalidArgument, "bad colour");
    /* An error inside a group drops the group and comes back from GroupEnd. */
    OK(ncclGroupStart(), n);
    OK(ncclAllReduce(p, p, 1, ncclFloat32, ncclSum, comm, stream), n);
    CHECK(n, ncclReduce(p, p, 1, ncclFloat32, ncclSum, -1, comm, stream) == ncclInvalidArgument, "bad root in group");
    CHECK(n, ncclGroupEnd() == ncclInvalidArgument, "group error");
    CHECK(n, ncclAllReduce(p, p, 0, ncclFloat32, ncclSum, comm, stream) == ncclSuccess, "count 0 is a no-op");
    passed("args-comm");
}

static void check_async(ncclComm_t comm) {
    const char *n = "async";
    barrier(comm, n);
    if (rank_id == 0)
        sleep_ms(400);
    double t0 = now_ms();
    OK(ncclAllReduce((void *)buf, (void *)buf, 1024, ncclFloat32, ncclSum, comm, stream), n);
    double t1 = now_ms();
    sync_stream(n);
    double t2 = now_ms();
    CHECK(n, t1 - t0 < 200, "the call took %.0f ms", t1 - t0);
    if (rank_id != 0)
        CHECK(n, t2 - t1 >= 300, "waited %.0f ms in cuStreamSynchronize for the late rank", t2 - t1);
    else
        CHECK(n, t2 - t1 < 300, "the late rank waited %.0f ms", t2 - t1);
    passed(n);
}

static void check_bandwidth(ncclComm_t comm) {
    const char *n = "bandwidth";
    const char *g = getenv("INGERO_SIM_NET_GBPS");
    double gbps = g != NULL && atof(g) > 0 ? atof(g) : 20.0;
    size_t count = 16u << 20; /* 64 MiB of floats */
    double expect_ms = 2.0 * (world - 1) / world * (double)(count * 4) / gbps / 1e6;
    barrier(comm, n);
    double t0 = now_ms();
    OK(ncclAllReduce((void *)buf, (void *)buf, count, ncclFloat32, ncclSum, comm, stream), n);
    sync_stream(n);
    double took = now_ms() - t0;
    CHECK(n, took >= expect_ms * 0.95 && took < expect_ms + 1000, "took %.1f ms, expected %.1f", took, expect_ms);
    passed(n);
}

static void check_all_ops(ncclComm_t comm) {
    const char *n = "all-ops";
    void *p = (void *)buf;
    int root = world - 1;
    OK(ncclAllGather(p, p, 64, ncclBfloat16, comm, stream), n);
    OK(ncclReduceScatter(p, p, 64, ncclFloat16, ncclMax, comm, stream), n);
    OK(ncclBroadcast(p, p, 64, ncclInt8, root, comm, stream), n);
    OK(ncclBcast(p, 64, ncclUint64, 0, comm, stream), n);
    /* recvbuff may be NULL off the root of a reduce/gather, sendbuff off the root of a scatter */
    OK(ncclReduce(p, rank_id == root ? p : NULL, 64, ncclFloat64, ncclMin, root, comm, stream), n);
    OK(ncclAlltoAll(p, p, 64, ncclInt32, comm, stream), n);
    OK(ncclGather(p, rank_id == 0 ? p : NULL, 64, ncclFloat8e4m3, 0, comm, stream), n);
    OK(ncclScatter(rank_id == 1 ? p : NULL, p, 64, ncclUint32, 1, comm, stream), n);
    sync_stream(n);
    passed(n);
}

static ncclComm_t check_split(ncclComm_t comm) {
    const char *n = "split";
    int color = rank_id == 3 ? NCCL_SPLIT_NOCOLOR : rank_id % 2;
    ncclComm_t sub = (ncclComm_t)&sub; /* must be overwritten */
    OK(ncclCommSplit(comm, color, -rank_id, &sub, NULL), n);
    if (color == NCCL_SPLIT_NOCOLOR) {
        CHECK(n, sub == NULL, "NOCOLOR gave a communicator");
        passed(n);
        return NULL;
    }
    int count = 0, r = -1;
    OK(ncclCommCount(sub, &count), n);
    OK(ncclCommUserRank(sub, &r), n);
    int want_count = color == 0 ? 2 : 1, want_rank = rank_id == 0 ? 1 : 0;
    CHECK(n, count == want_count && r == want_rank, "count %d rank %d, expected %d %d", count, r, want_count, want_rank);
    /* Members only: ranks 1 and 3 are busy elsewhere (in check_p2p). */
    for (int i = 0; i < 3; i++)
        barrier(sub, n);
    passed(n);
    return sub;
}

static void check_p2p(ncclComm_t comm) {
    const char *n = "p2p";
    void *p = (void *)buf;
    int next = (rank_id + 1) % world, prev = (rank_id + world - 1) % world;
    OK(ncclGroupStart(), n);
    OK(ncclRecv(p, 256, ncclFloat32, prev, comm, stream), n);
    OK(ncclSend(p, 256, ncclFloat32, next, comm, stream), n);
    OK(ncclSend(p, 256, ncclFloat32, rank_id, comm, stream), n); /* to self */
    OK(ncclRecv(p, 256, ncclFloat32, rank_id, comm, stream), n);
    OK(ncclGroupEnd(), n);
    sync_stream(n);
    /* Pairwise: rank 1 sends 400 ms late; only rank 0 (its receiver) waits. */
    barrier(comm, n);
    if (rank_id == 1) {
        sleep_ms(400);
        OK(ncclSend(p, 256, ncclFloat32, 0, comm, stream), n);
    } else if (rank_id == 0) {
        OK(ncclRecv(p, 256, ncclFloat32, 1, comm, stream), n);
    }
    double t0 = now_ms();
    sync_stream(n);
    double waited = now_ms() - t0;
    if (rank_id == 0)
        CHECK(n, waited >= 300, "the receiver waited only %.0f ms", waited);
    else if (rank_id != 1)
        CHECK(n, waited < 300, "a bystander waited %.0f ms", waited);
    passed(n);
}

static void check_group(ncclComm_t comm, ncclComm_t sub) {
    const char *n = "group";
    void *p = (void *)buf;
    OK(ncclGroupStart(), n);
    if (sub != NULL)
        OK(ncclAllReduce(p, p, 128, ncclFloat32, ncclSum, sub, stream), n);
    OK(ncclGroupStart(), n);
    OK(ncclAllGather(p, p, 128, ncclFloat32, comm, stream), n);
    OK(ncclGroupEnd(), n); /* nested: nothing runs yet */
    OK(ncclReduceScatter(p, p, 128, ncclFloat32, ncclSum, comm, stream), n);
    OK(ncclGroupEnd(), n);
    sync_stream(n);
    passed(n);
}

static void *abort_later(void *arg) {
    sleep_ms(300);
    ncclCommAbort((ncclComm_t)arg);
    return NULL;
}

/* Returns the communicator the peers keep open (until the end barrier,
 * which they pass only once rank 0 is released: destroying it earlier
 * would release rank 0 by closing the sockets, not by the abort). */
static ncclComm_t check_abort(ncclComm_t comm) {
    const char *n = "abort";
    ncclComm_t stuck;
    OK(ncclCommSplit(comm, 0, rank_id, &stuck, NULL), n);
    if (rank_id == 0) {
        /* The peers never join this all-reduce; the abort releases it. */
        OK(ncclAllReduce((void *)buf, (void *)buf, 1, ncclFloat32, ncclSum, stuck, stream), n);
        pthread_t t;
        double t0 = now_ms();
        CHECK(n, pthread_create(&t, NULL, abort_later, stuck) == 0, "pthread_create");
        sync_stream(n);
        double took = now_ms() - t0;
        pthread_join(t, NULL);
        CHECK(n, took >= 250 && took < 5000, "released after %.0f ms", took);
        stuck = NULL;
    }
    passed(n);
    return stuck;
}

static void check_local(void) {
    const char *n = "local";
    ncclComm_t comms[3];
    int devs[3] = {0, 1, 2};
    OK(ncclCommInitAll(comms, 3, devs), n);
    CUstream streams[3];
    OK(ncclGroupStart(), n);
    for (int i = 0; i < 3; i++) {
        int count = 0, r = -1;
        OK(ncclCommCount(comms[i], &count), n);
        OK(ncclCommUserRank(comms[i], &r), n);
        CHECK(n, count == 3 && r == i, "comm %d: count %d rank %d", i, count, r);
        OK(cuStreamCreate(&streams[i], 0), n);
        OK(ncclAllReduce((void *)buf, (void *)buf, 1024, ncclFloat32, ncclSum, comms[i], streams[i]), n);
    }
    OK(ncclGroupEnd(), n);
    for (int i = 0; i < 3; i++)
        OK(cuStreamSynchronize(streams[i]), n);
    CHECK(n, ncclCommSplit(comms[0], 0, 0, &(ncclComm_t){NULL}, NULL) == ncclInvalidUsage, "split of InitAll");
    for (int i = 0; i < 3; i++)
        OK(ncclCommDestroy(comms[i]), n);
    passed(n);
}

static void check_group_init(void) {
    const char *n = "group-init";
    unsetenv("MASTER_ADDR"); /* a fresh loopback id, private to this process */
    unsetenv("MASTER_PORT");
    ncclUniqueId id;
    OK(ncclGetUniqueId(&id), n);
    ncclComm_t a = NULL, b = NULL;
    OK(ncclGroupStart(), n);
    OK(ncclCommInitRank(&a, 2, id, 0), n);
    OK(ncclCommInitRank(&b, 2, id, 1), n);
    CHECK(n, a == NULL && b == NULL, "set before ncclGroupEnd");
    OK(ncclGroupEnd(), n);
    CHECK(n, a != NULL && b != NULL, "not set by ncclGroupEnd");
    CUstream other;
    OK(cuStreamCreate(&other, 0), n);
    OK(ncclGroupStart(), n);
    OK(ncclAllReduce((void *)buf, (void *)buf, 1, ncclFloat32, ncclSum, a, stream), n);
    OK(ncclAllReduce((void *)buf, (void *)buf, 1, ncclFloat32, ncclSum, b, other), n);
    OK(ncclGroupEnd(), n);
    sync_stream(n);
    OK(cuStreamSynchronize(other), n);
    OK(ncclCommDestroy(a), n);
    OK(ncclCommDestroy(b), n);
    passed(n);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *r = getenv("RANK"), *w = getenv("WORLD_SIZE");
    rank_id = r != NULL ? atoi(r) : 0;
    world = w != NULL ? atoi(w) : 1;
    if (world != 4) {
        fprintf(stderr, "ingero-sim-nccl-check: run with WORLD_SIZE=4\n");
        return 2;
    }
    CUcontext ctx;
    OK(cuInit(0), "cuda");
    OK(cuCtxCreate_v2(&ctx, 0, 0), "cuda");
    OK(cuStreamCreate(&stream, 0), "cuda");
    OK(cuMemAlloc_v2(&buf, 256u << 20), "cuda");
    check_args();
    ncclUniqueId id;
    ncclComm_t comm;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.commName = "world";
    OK(ncclGetUniqueId(&id), "init");
    OK(ncclCommInitRankConfig(&comm, world, id, rank_id, &config), "init");
    int count = 0, me = -1;
    OK(ncclCommCount(comm, &count), "init");
    OK(ncclCommUserRank(comm, &me), "init");
    CHECK("init", count == world && me == rank_id, "count %d rank %d", count, me);
    passed("init");
    check_args_on(comm);
    check_async(comm);
    check_bandwidth(comm);
    check_all_ops(comm);
    ncclComm_t sub = check_split(comm);
    check_p2p(comm);
    check_group(comm, sub);
    ncclComm_t stuck = check_abort(comm);
    barrier(comm, "end");
    if (stuck != NULL)
        OK(ncclCommDestroy(stuck), "end");
    if (sub != NULL)
        OK(ncclCommDestroy(sub), "end");
    OK(ncclCommDestroy(comm), "end");
    if (rank_id == 0) {
        check_local();
        check_group_init();
    }
    passed("end");
    return 0;
}
