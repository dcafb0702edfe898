/*
 * libnccl.so.2 stand-in, for machines without a GPU: the NCCL 2.28 host API
 * (see nccl_api.h) with the real signatures, argument checks and return
 * codes, and real synchronisation between ranks over loopback TCP. This
 * file holds the communicators; nccl_coll.c the collectives and groups,
 * nccl_net.c the transport (each file's header says more).
 *
 * Behaviour:
 *   - ncclGetUniqueId encodes where rank 0 listens: NCCL_COMM_ID
 *     ("host:port") if set, else MASTER_ADDR/MASTER_PORT (as torchrun sets
 *     them), else loopback and a free port (then only usable within this
 *     process, e.g. by threads or a group of inits).
 *   - ncclCommInitRank/ncclCommInitRankConfig block until all nranks ranks
 *     joined (a bootstrap through rank 0, then a full mesh). Inside
 *     ncclGroupStart/End they run at ncclGroupEnd, concurrently, and *comm
 *     is set then. A non-blocking config (blocking = 0) is accepted and
 *     initialised before returning ncclSuccess (never ncclInProgress).
 *   - ncclCommInitAll makes ndev communicators of one process with no
 *     network: their collectives take the kernel and the transfer time but
 *     complete locally, without waiting for each other.
 *   - ncclCommSplit is collective over the parent: an all-gather of (color,
 *     key, listener) on the parent's control channel, then each colour
 *     builds its own mesh; ranks are ordered by (key, parent rank);
 *     NCCL_SPLIT_NOCOLOR gives *newcomm = NULL. Runs immediately even inside
 *     a group. Splitting a ncclCommInitAll communicator is not supported
 *     (ncclInvalidUsage).
 *   - ncclCommDestroy waits for the communicator's enqueued operations to
 *     complete (so it blocks behind a peer that never arrives, as the real
 *     one does); ncclCommAbort does not: it shuts the sockets down, which
 *     releases operations stuck waiting on a peer, and peers see the rank
 *     leave. ncclCommDestroy(NULL) and ncclCommAbort(NULL) succeed, as in
 *     NCCL.
 *   - A peer that disconnects marks the communicator failed: later calls on
 *     it return ncclRemoteError, as does ncclCommGetAsyncError.
 *
 * Environment: INGERO_SIM_NET_GBPS, the bus bandwidth in GB/s (default 20).
 *
 * Every export starts with `push %rbp` (flags in sim/build.rs), like the
 * real library's entry points, so uprobes on them take the kernel's
 * emulated fast path; as in NCCL, each ncclX is a weak symbol with a pncclX
 * alias at the same address.
 */
#include "nccl_internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const KERNEL_NAMES[OP_KINDS] = {
    [OP_ALLREDUCE] = "ncclDevKernel_AllReduce_Sum_f32_RING_LL",
    [OP_ALLGATHER] = "ncclDevKernel_AllGather_RING_LL",
    [OP_REDUCESCATTER] = "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL",
    [OP_BROADCAST] = "ncclDevKernel_Broadcast_RING_LL",
    [OP_REDUCE] = "ncclDevKernel_Reduce_Sum_f32_RING_LL",
    [OP_ALLTOALL] = "ncclDevKernel_SendRecv",
    [OP_GATHER] = "ncclDevKernel_SendRecv",
    [OP_SCATTER] = "ncclDevKernel_SendRecv",
    [OP_SEND] = "ncclDevKernel_SendRecv",
    [OP_RECV] = "ncclDevKernel_SendRecv",
};

static pthread_once_t module_once = PTHREAD_ONCE_INIT;
static CUmodule device_code;
static int device_code_ok;

static void load_device_code(void) {
    device_code_ok = cuInit(0) == 0 && cuModuleLoadData(&device_code, "nccl-device-code") == 0;
}

void nccl_warn(const char *fmt, ...) {
    static int enabled = -1;
    if (enabled < 0)
        enabled = getenv("NCCL_DEBUG") != NULL;
    if (!enabled)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nccl stub: WARN ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Does the caller's config (of config->size bytes) contain `field`? */
#define HAS_FIELD(cfg, field) ((cfg)->size >= offsetof(ncclConfig_t, field) + sizeof((cfg)->field))

static ncclResult_t read_config(const ncclConfig_t *cfg, int *blocking, char *name, size_t len) {
    if (cfg->magic != NCCL_API_MAGIC || !HAS_FIELD(cfg, blocking)) {
        nccl_warn("ncclConfig_t argument not initialized via NCCL_CONFIG_INITIALIZER");
        return ncclInvalidArgument;
    }
    if (cfg->version < (unsigned)NCCL_VERSION(2, 17, 0)) {
        nccl_warn("ncclConfig_t version %u is too old", cfg->version);
        return ncclInvalidArgument;
    }
    if (cfg->blocking != NCCL_CONFIG_UNDEF_INT && cfg->blocking != 0 && cfg->blocking != 1) {
        nccl_warn("ncclConfig_t blocking must be 0 or 1, not %d", cfg->blocking);
        return ncclInvalidArgument;
    }
    if (HAS_FIELD(cfg, maxCTAs)) {
        int lo = cfg->minCTAs, hi = cfg->maxCTAs;
        if ((lo != NCCL_CONFIG_UNDEF_INT && lo < 1) || (hi != NCCL_CONFIG_UNDEF_INT && hi < 1) ||
            (lo != NCCL_CONFIG_UNDEF_INT && hi != NCCL_CONFIG_UNDEF_INT && lo > hi)) {
            nccl_warn("ncclConfig_t minCTAs %d / maxCTAs %d are invalid", lo, hi);
            return ncclInvalidArgument;
        }
    }
    *blocking = cfg->blocking == 0 ? 0 : 1;
    if (HAS_FIELD(cfg, commName) && cfg->commName != NULL)
        snprintf(name, len, "%s", cfg->commName);
    return ncclSuccess;
}

ncclResult_t comm_alloc(struct ncclComm **out, int rank, int nranks, const ncclConfig_t *config,
                        const struct ncclComm *parent) {
    int blocking = parent != NULL ? parent->blocking : 1;
    char name[64] = "";
    if (parent != NULL)
        snprintf(name, sizeof(name), "%s", parent->name);
    if (config != NULL) {
        ncclResult_t r = read_config(config, &blocking, name, sizeof(name));
        if (r != ncclSuccess)
            return r;
    }
    pthread_once(&module_once, load_device_code);
    if (!device_code_ok)
        return ncclUnhandledCudaError;
    struct ncclComm *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ncclSystemError;
    c->p2p_seq = calloc((size_t)nranks, sizeof(*c->p2p_seq));
    if (c->p2p_seq == NULL) {
        free(c);
        return ncclSystemError;
    }
    for (int k = 0; k < OP_KINDS; k++) {
        if (cuModuleGetFunction(&c->kernels[k], device_code, KERNEL_NAMES[k]) != 0) {
            free(c->p2p_seq);
            free(c);
            return ncclUnhandledCudaError;
        }
    }
    c->rank = rank;
    c->nranks = nranks;
    c->blocking = blocking;
    memcpy(c->name, name, sizeof(c->name));
    const char *gbps = getenv("INGERO_SIM_NET_GBPS");
    double bw = gbps != NULL ? atof(gbps) : 20.0;
    c->net_bytes_per_ns = bw > 0 ? bw : 20.0;
    pthread_mutex_init(&c->wire, NULL);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->refs = 1;
    c->magic = COMM_ALIVE;
    *out = c;
    return ncclSuccess;
}

void comm_ref(struct ncclComm *c) {
    pthread_mutex_lock(&c->mu);
    c->refs++;
    pthread_mutex_unlock(&c->mu);
}

void comm_unref(struct ncclComm *c) {
    pthread_mutex_lock(&c->mu);
    int last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (!last)
        return;
    net_close(c);
    pthread_mutex_destroy(&c->wire);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->p2p_seq);
    free(c);
}

int comm_usable(const struct ncclComm *c) { return c != NULL && c->magic == COMM_ALIVE; }

void comm_mark_failed(struct ncclComm *c, const char *why) {
    if (!c->failed && !c->aborted)
        fprintf(stderr, "nccl stub: rank %d of %d: %s\n", c->rank, c->nranks, why);
    c->failed = 1;
}

static void comm_free_unused(struct ncclComm *c) {
    c->magic = 0;
    comm_unref(c);
}

ncclResult_t init_rank(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank,
                       const ncclConfig_t *config) {
    struct sockaddr_in root;
    if (net_parse_id(id, &root) != ncclSuccess) {
        nccl_warn("the unique id was not made by ncclGetUniqueId");
        return ncclInvalidArgument;
    }
    struct ncclComm *c;
    ncclResult_t r = comm_alloc(&c, rank, nranks, config, NULL);
    if (r != ncclSuccess)
        return r;
    r = net_bootstrap(c, &root);
    if (r != ncclSuccess) {
        comm_free_unused(c);
        return r;
    }
    *comm = c;
    return ncclSuccess;
}

static ncclResult_t check_init(ncclComm_t *comm, int nranks, int rank) {
    if (comm == NULL || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclGetVersion, int *version) {
    NCCL_FRAME();
    if (version == NULL)
        return ncclInvalidArgument;
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclGetUniqueId, ncclUniqueId *uniqueId) {
    NCCL_FRAME();
    if (uniqueId == NULL)
        return ncclInvalidArgument;
    char host[64] = "127.0.0.1", port[16] = "";
    const char *comm_id = getenv("NCCL_COMM_ID");
    const char *colon = comm_id != NULL ? strrchr(comm_id, ':') : NULL;
    if (colon != NULL && colon > comm_id && (size_t)(colon - comm_id) < sizeof(host)) {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - comm_id), comm_id);
        snprintf(port, sizeof(port), "%s", colon + 1);
    } else if (getenv("MASTER_ADDR") != NULL && getenv("MASTER_PORT") != NULL) {
        snprintf(host, sizeof(host), "%s", getenv("MASTER_ADDR"));
        snprintf(port, sizeof(port), "%s", getenv("MASTER_PORT"));
    } else {
        struct in_addr lo = {.s_addr = htonl(INADDR_LOOPBACK)};
        struct sockaddr_in bound;
        int fd;
        if (net_listen(lo, 1, &fd, &bound) != ncclSuccess)
            return ncclSystemError;
        close(fd);
        snprintf(port, sizeof(port), "%u", ntohs(bound.sin_port));
    }
    memset(uniqueId, 0, sizeof(*uniqueId));
    snprintf(uniqueId->internal, sizeof(uniqueId->internal), "ingero-sim %s %s", host, port);
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommInitRankConfig, ncclComm_t *comm, int nranks, ncclUniqueId commId,
         int rank, ncclConfig_t *config) {
    NCCL_FRAME();
    ncclResult_t r = check_init(comm, nranks, rank);
    if (r != ncclSuccess)
        return r;
    if (group_depth() > 0)
        return group_defer_init(comm, nranks, &commId, rank, config);
    return init_rank(comm, nranks, &commId, rank, config);
}

NCCL_API(ncclResult_t, ncclCommInitRank, ncclComm_t *comm, int nranks, ncclUniqueId commId,
         int rank) {
    NCCL_FRAME();
    ncclResult_t r = check_init(comm, nranks, rank);
    if (r != ncclSuccess)
        return r;
    if (group_depth() > 0)
        return group_defer_init(comm, nranks, &commId, rank, NULL);
    return init_rank(comm, nranks, &commId, rank, NULL);
}

NCCL_API(ncclResult_t, ncclCommInitAll, ncclComm_t *comm, int ndev, const int *devlist) {
    NCCL_FRAME();
    if (comm == NULL || ndev < 1)
        return ncclInvalidArgument;
    for (int i = 0; devlist != NULL && i < ndev; i++) {
        if (devlist[i] < 0)
            return ncclInvalidArgument;
        for (int j = 0; j < i; j++)
            if (devlist[j] == devlist[i])
                return ncclInvalidUsage;
    }
    for (int i = 0; i < ndev; i++) {
        struct ncclComm *c;
        ncclResult_t r = comm_alloc(&c, i, ndev, NULL, NULL);
        if (r != ncclSuccess) {
            for (int j = 0; j < i; j++)
                comm_free_unused(comm[j]);
            return r;
        }
        c->local = 1;
        c->device = devlist != NULL ? devlist[i] : i;
        comm[i] = c;
    }
    return ncclSuccess;
}

struct split_record {
    int32_t color, key;
    struct sockaddr_in listener;
};

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

NCCL_API(ncclResult_t, ncclCommSplit, ncclComm_t comm, int color, int key, ncclComm_t *newcomm,
         ncclConfig_t *config) {
    NCCL_FRAME();
    if (!comm_usable(comm) || newcomm == NULL || (color < 0 && color != NCCL_SPLIT_NOCOLOR))
        return ncclInvalidArgument;
    if (comm->local) {
        fprintf(stderr, "nccl stub: ncclCommSplit of a ncclCommInitAll communicator is not supported\n");
        return ncclInvalidUsage;
    }
    if (comm->failed)
        return ncclRemoteError;
    int n = comm->nranks, lfd = -1;
    uint32_t seq = comm->splits++;
    struct split_record mine = {.color = color, .key = key};
    memset(&mine.listener, 0, sizeof(mine.listener));
    if (color != NCCL_SPLIT_NOCOLOR && n > 1) {
        ncclResult_t r = net_listen(comm->ip, CH_COUNT * n, &lfd, &mine.listener);
        if (r != ncclSuccess)
            return r;
    }
    struct split_record *all = calloc((size_t)n, sizeof(*all));
    int *members = calloc((size_t)n, sizeof(*members));
    struct sockaddr_in *addrs = calloc((size_t)n, sizeof(*addrs));
    ncclResult_t r = all != NULL && members != NULL && addrs != NULL ? ncclSuccess : ncclSystemError;
    if (r == ncclSuccess)
        r = net_allgather(comm, &mine, all, sizeof(mine));
    if (r != ncclSuccess || color == NCCL_SPLIT_NOCOLOR) {
        if (lfd >= 0)
            close(lfd);
        free(all);
        free(members);
        free(addrs);
        if (r == ncclSuccess)
            *newcomm = NULL;
        return r;
    }
    /* Members of my colour, ordered by (key, parent rank): insertion sort. */
    int m = 0, me = -1;
    for (int p = 0; p < n; p++) {
        if (all[p].color != color)
            continue;
        int at = m++;
        while (at > 0 && all[members[at - 1]].key > all[p].key) {
            members[at] = members[at - 1];
            at--;
        }
        members[at] = p;
    }
    for (int i = 0; i < m; i++) {
        addrs[i] = all[members[i]].listener;
        if (members[i] == comm->rank)
            me = i;
    }
    struct ncclComm *c = NULL;
    r = comm_alloc(&c, me, m, config, comm);
    if (r == ncclSuccess) {
        c->ip = comm->ip;
        c->tag = mix64(comm->tag ^ mix64(((uint64_t)seq << 32) | (uint32_t)color)) | 1;
        if (m > 1) {
            r = net_mesh(c, lfd, addrs);
            lfd = -1;
        }
        if (r != ncclSuccess) {
            comm_free_unused(c);
            c = NULL;
        }
    }
    if (lfd >= 0)
        close(lfd);
    free(all);
    free(members);
    free(addrs);
    if (r == ncclSuccess)
        *newcomm = c;
    return r;
}

NCCL_API(ncclResult_t, ncclCommDestroy, ncclComm_t comm) {
    NCCL_FRAME();
    if (comm == NULL)
        return ncclSuccess;
    if (!comm_usable(comm))
        return ncclInvalidArgument;
    pthread_mutex_lock(&comm->mu);
    while (comm->pending > 0)
        pthread_cond_wait(&comm->cv, &comm->mu);
    pthread_mutex_unlock(&comm->mu);
    comm->magic = 0;
    comm_unref(comm);
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommAbort, ncclComm_t comm) {
    NCCL_FRAME();
    if (comm == NULL)
        return ncclSuccess;
    if (!comm_usable(comm))
        return ncclInvalidArgument;
    comm->aborted = 1;
    comm->magic = 0;
    net_shutdown(comm);
    comm_unref(comm);
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommGetAsyncError, ncclComm_t comm, ncclResult_t *asyncError) {
    NCCL_FRAME();
    if (!comm_usable(comm) || asyncError == NULL)
        return ncclInvalidArgument;
    *asyncError = comm->failed ? ncclRemoteError : ncclSuccess;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommCount, const ncclComm_t comm, int *count) {
    NCCL_FRAME();
    if (!comm_usable(comm) || count == NULL)
        return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommCuDevice, const ncclComm_t comm, int *device) {
    NCCL_FRAME();
    if (!comm_usable(comm) || device == NULL)
        return ncclInvalidArgument;
    *device = comm->device;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclCommUserRank, const ncclComm_t comm, int *rank) {
    NCCL_FRAME();
    if (!comm_usable(comm) || rank == NULL)
        return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

NCCL_API(const char *, ncclGetErrorString, ncclResult_t result) {
    NCCL_FRAME();
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    case ncclNumResults: break;
    }
    return "unknown result code";
}
