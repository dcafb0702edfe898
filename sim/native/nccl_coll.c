/*
 * The stub NCCL's collectives, point-to-point calls and groups.
 *
 * Every call checks its arguments like NCCL (a NULL or destroyed comm, a
 * datatype or reduction out of range, a root or peer outside the
 * communicator: ncclInvalidArgument; a communicator whose peer left:
 * ncclRemoteError), and, stricter than NCCL's default (as with
 * NCCL_CHECK_POINTERS=1), NULL buffers that the rank would read or write.
 * A count of 0 is a no-op. Then the call is enqueued on the caller's
 * stream and returns at once, as real NCCL does: a kernel launch (through
 * the stub driver's cuLaunchKernel) and a host function (cuLaunchHostFunc)
 * that runs when the stream reaches it and
 *   1. synchronises with the peers: a collective is a real barrier among
 *      all members of its communicator (each member sends a tick to every
 *      other and waits for theirs); ncclSend/ncclRecv is a pairwise
 *      exchange with the peer only (the k-th send/recv with a peer meets
 *      the peer's k-th with this rank);
 *   2. holds the stream for the transfer time, NCCL's bus-bandwidth factor
 *      times the operation's bytes / INGERO_SIM_NET_GBPS:
 *        all-reduce 2(n-1)/n; all-gather, reduce-scatter, all-to-all,
 *        gather, scatter (n-1)/n of the gathered/scattered total;
 *        broadcast, reduce, send, recv 1.
 * So a rank that reaches a collective late makes every other member wait
 * in its next cuStreamSynchronize. Communicators of ncclCommInitAll skip
 * step 1 (they complete locally).
 *
 * Groups (ncclGroupStart/End, nestable, per thread): calls are checked when
 * made and queued; at the outermost ncclGroupEnd they become one kernel
 * launch and one host function per stream, which first sends every tick of
 * the group and then waits for every tick, so sends and receives in any
 * order, and collectives on several communicators, cannot deadlock as long
 * as every rank issues the same group. A call that fails its checks inside
 * a group makes ncclGroupEnd return that error and drop the group.
 * ncclCommInitRank* inside a group run at ncclGroupEnd, one thread each.
 */
#include "nccl_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MAGIC 0x7e1c

static const char *const OP_NAMES[OP_KINDS] = {
    [OP_ALLREDUCE] = "AllReduce",   [OP_ALLGATHER] = "AllGather", [OP_REDUCESCATTER] = "ReduceScatter",
    [OP_BROADCAST] = "Broadcast",   [OP_REDUCE] = "Reduce",       [OP_ALLTOALL] = "AlltoAll",
    [OP_GATHER] = "Gather",         [OP_SCATTER] = "Scatter",     [OP_SEND] = "Send",
    [OP_RECV] = "Recv",
};

struct op {
    enum op_kind kind;
    struct ncclComm *comm;
    cudaStream_t stream;
    int peer; /* send/recv */
    uint32_t seq;
    uint64_t ns; /* transfer time */
};

struct tick {
    uint32_t seq;
    uint16_t kind;
    uint16_t magic;
};

struct batch {
    int n;
    struct op ops[];
};

struct deferred_init {
    ncclComm_t *comm;
    int nranks, rank, has_config;
    ncclUniqueId id;
    ncclConfig_t config;
    ncclResult_t result;
    pthread_t thread;
};

static __thread struct {
    int depth;
    ncclResult_t error;
    struct op *ops;
    int nops, cap;
    struct deferred_init *inits;
    int ninits, icap;
} grp;

int group_depth(void) { return grp.depth; }

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    case ncclNumTypes: break;
    }
    return 0;
}

static int is_p2p(enum op_kind k) { return k == OP_SEND || k == OP_RECV; }

static double bus_factor(enum op_kind k, int n) {
    if (n <= 1)
        return 0.0;
    switch (k) {
    case OP_ALLREDUCE: return 2.0 * (n - 1) / n;
    case OP_ALLGATHER: case OP_REDUCESCATTER: case OP_ALLTOALL: case OP_GATHER: case OP_SCATTER:
        return (double)(n - 1) / n;
    case OP_BROADCAST: case OP_REDUCE: case OP_SEND: case OP_RECV: return 1.0;
    case OP_KINDS: break;
    }
    return 0.0;
}

static void op_done(struct op *o) {
    struct ncclComm *c = o->comm;
    pthread_mutex_lock(&c->mu);
    c->pending--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    comm_unref(c);
}

static int networked(const struct ncclComm *c) { return !c->local && c->links != NULL && !c->aborted; }

static void send_ticks(struct op *o) {
    struct ncclComm *c = o->comm;
    struct tick t = {.seq = o->seq, .kind = (uint16_t)o->kind, .magic = TICK_MAGIC};
    int n = c->nranks;
    for (int r = 0; r < n; r++) {
        if (r == c->rank || (is_p2p(o->kind) && r != o->peer))
            continue;
        int fd = c->links[(is_p2p(o->kind) ? CH_P2P : CH_COLL) * n + r];
        if (net_send(fd, &t, sizeof(t)) != 0) {
            char why[64];
            snprintf(why, sizeof(why), "rank %d left the communicator", r);
            comm_mark_failed(c, why);
        }
    }
}

static void recv_ticks(struct op *o) {
    struct ncclComm *c = o->comm;
    int n = c->nranks;
    for (int r = 0; r < n; r++) {
        if (r == c->rank || (is_p2p(o->kind) && r != o->peer))
            continue;
        int fd = c->links[(is_p2p(o->kind) ? CH_P2P : CH_COLL) * n + r];
        struct tick t;
        if (net_recv(fd, &t, sizeof(t)) != 0) {
            char why[64];
            snprintf(why, sizeof(why), "rank %d left the communicator", r);
            comm_mark_failed(c, why);
            continue;
        }
        enum op_kind expect = o->kind == OP_SEND ? OP_RECV : o->kind == OP_RECV ? OP_SEND : o->kind;
        if ((t.magic != TICK_MAGIC || t.seq != o->seq || t.kind != expect) && !c->warned) {
            c->warned = 1;
            fprintf(stderr,
                    "nccl stub: rank %d: %s #%u met %s #%u of rank %d (ranks issue operations in "
                    "different orders)\n",
                    c->rank, OP_NAMES[o->kind], o->seq, t.kind < OP_KINDS ? OP_NAMES[t.kind] : "?",
                    t.seq, r);
        }
    }
}

/* The host function of one batch (one call, or a group's calls on one
 * stream), run by the stream's worker. */
static void run_batch(void *arg) {
    struct batch *b = arg;
    /* The networked communicators of the batch, locked in address order. */
    struct ncclComm **locked = calloc((size_t)b->n, sizeof(*locked));
    int nl = 0;
    for (int i = 0; locked != NULL && i < b->n; i++) {
        struct ncclComm *c = b->ops[i].comm;
        if (!networked(c))
            continue;
        int at = 0;
        while (at < nl && (uintptr_t)locked[at] < (uintptr_t)c)
            at++;
        if (at < nl && locked[at] == c)
            continue;
        memmove(&locked[at + 1], &locked[at], sizeof(*locked) * (size_t)(nl - at));
        locked[at] = c;
        nl++;
    }
    for (int i = 0; i < nl; i++)
        pthread_mutex_lock(&locked[i]->wire);
    for (int i = 0; i < b->n; i++)
        if (networked(b->ops[i].comm))
            send_ticks(&b->ops[i]);
    for (int i = 0; i < b->n; i++)
        if (networked(b->ops[i].comm))
            recv_ticks(&b->ops[i]);
    for (int i = nl - 1; i >= 0; i--)
        pthread_mutex_unlock(&locked[i]->wire);
    free(locked);
    uint64_t ns = 0;
    for (int i = 0; i < b->n; i++)
        ns += b->ops[i].ns;
    if (ns > 0)
        sleep_ns(ns);
    for (int i = 0; i < b->n; i++)
        op_done(&b->ops[i]);
    free(b);
}

/* Enqueues ops[0..n) on their streams: one kernel and one host function
 * per stream, in the order of the calls. */
static ncclResult_t submit(struct op *ops, int n) {
    ncclResult_t result = ncclSuccess;
    char *taken = calloc((size_t)n, 1);
    if (taken == NULL) {
        for (int i = 0; i < n; i++)
            op_done(&ops[i]);
        return ncclSystemError;
    }
    for (int i = 0; i < n; i++) {
        if (taken[i])
            continue;
        int k = 0;
        for (int j = i; j < n; j++)
            k += !taken[j] && ops[j].stream == ops[i].stream;
        struct batch *b = malloc(sizeof(*b) + sizeof(struct op) * (size_t)k);
        if (b != NULL) {
            b->n = 0;
            for (int j = i; j < n; j++) {
                if (!taken[j] && ops[j].stream == ops[i].stream) {
                    b->ops[b->n++] = ops[j];
                    taken[j] = 1;
                }
            }
        }
        struct op *first = &ops[i];
        if (b == NULL ||
            cuLaunchKernel(first->comm->kernels[first->kind], 1, 1, 1, 256, 1, 1, 0, first->stream,
                           NULL, NULL) != 0 ||
            cuLaunchHostFunc(first->stream, run_batch, b) != 0) {
            if (b != NULL) {
                for (int j = 0; j < b->n; j++)
                    op_done(&b->ops[j]);
                free(b);
            } else {
                for (int j = i; j < n; j++)
                    if (!taken[j] && ops[j].stream == first->stream) {
                        op_done(&ops[j]);
                        taken[j] = 1;
                    }
            }
            result = result == ncclSuccess ? (b == NULL ? ncclSystemError : ncclUnhandledCudaError) : result;
        }
    }
    free(taken);
    return result;
}

static ncclResult_t call_error(ncclResult_t r) {
    if (grp.depth > 0 && grp.error == ncclSuccess)
        grp.error = r;
    return r;
}

/* One NCCL operation as called. root/peer/op are -1 when the call has none. */
struct call {
    enum op_kind kind;
    const char *name;
    const void *send;
    const void *recv;
    size_t count;
    ncclDataType_t type;
    int op, root, peer;
};

static ncclResult_t issue(struct call a, struct ncclComm *comm, cudaStream_t stream) {
    if (!comm_usable(comm)) {
        nccl_warn("%s: comm is NULL or destroyed", a.name);
        return call_error(ncclInvalidArgument);
    }
    if (comm->failed)
        return call_error(ncclRemoteError);
    int n = comm->nranks, me = comm->rank;
    size_t size = type_size(a.type);
    if (size == 0) {
        nccl_warn("%s: invalid type %d", a.name, (int)a.type);
        return call_error(ncclInvalidArgument);
    }
    if (a.kind == OP_ALLREDUCE || a.kind == OP_REDUCESCATTER || a.kind == OP_REDUCE) {
        if (a.op < 0 || a.op >= ncclNumOps) {
            nccl_warn("%s: invalid reduction operation %d", a.name, a.op);
            return call_error(ncclInvalidArgument);
        }
    }
    int has_root = a.kind == OP_BROADCAST || a.kind == OP_REDUCE || a.kind == OP_GATHER || a.kind == OP_SCATTER;
    if (has_root && (a.root < 0 || a.root >= n)) {
        nccl_warn("%s: invalid root %d (root should be in the 0..%d range)", a.name, a.root, n - 1);
        return call_error(ncclInvalidArgument);
    }
    if (is_p2p(a.kind) && (a.peer < 0 || a.peer >= n)) {
        nccl_warn("%s: invalid peer %d (peer should be in the 0..%d range)", a.name, a.peer, n - 1);
        return call_error(ncclInvalidArgument);
    }
    if (a.count == 0)
        return ncclSuccess;
    int root = a.root == me;
    int reads = a.kind != OP_RECV && !((a.kind == OP_BROADCAST || a.kind == OP_SCATTER) && !root);
    int writes = a.kind != OP_SEND && !((a.kind == OP_REDUCE || a.kind == OP_GATHER) && !root);
    if ((reads && a.send == NULL) || (writes && a.recv == NULL)) {
        nccl_warn("%s: %s is NULL", a.name, reads && a.send == NULL ? "sendbuff" : "recvbuff");
        return call_error(ncclInvalidArgument);
    }
    uint64_t bytes = (uint64_t)a.count * size;
    if (a.kind == OP_ALLGATHER || a.kind == OP_REDUCESCATTER || a.kind == OP_ALLTOALL ||
        a.kind == OP_GATHER || a.kind == OP_SCATTER)
        bytes *= (uint64_t)n;
    if (is_p2p(a.kind) && a.peer == me)
        bytes = 0;
    double factor = bus_factor(a.kind, n);
    struct op o = {
        .kind = a.kind,
        .comm = comm,
        .stream = stream,
        .peer = a.peer,
        .seq = is_p2p(a.kind) ? __atomic_fetch_add(&comm->p2p_seq[a.peer], 1, __ATOMIC_RELAXED)
                              : __atomic_fetch_add(&comm->coll_seq, 1, __ATOMIC_RELAXED),
        .ns = (uint64_t)((double)bytes * factor / comm->net_bytes_per_ns),
    };
    pthread_mutex_lock(&comm->mu);
    comm->refs++;
    comm->pending++;
    pthread_mutex_unlock(&comm->mu);
    if (grp.depth == 0)
        return submit(&o, 1);
    if (grp.nops == grp.cap) {
        int cap = grp.cap > 0 ? grp.cap * 2 : 16;
        struct op *ops = realloc(grp.ops, sizeof(*ops) * (size_t)cap);
        if (ops == NULL) {
            op_done(&o);
            return call_error(ncclSystemError);
        }
        grp.ops = ops;
        grp.cap = cap;
    }
    grp.ops[grp.nops++] = o;
    return ncclSuccess;
}

ncclResult_t group_defer_init(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank,
                              const ncclConfig_t *config) {
    if (grp.ninits == grp.icap) {
        int cap = grp.icap > 0 ? grp.icap * 2 : 4;
        struct deferred_init *inits = realloc(grp.inits, sizeof(*inits) * (size_t)cap);
        if (inits == NULL)
            return call_error(ncclSystemError);
        grp.inits = inits;
        grp.icap = cap;
    }
    struct deferred_init *d = &grp.inits[grp.ninits++];
    memset(d, 0, sizeof(*d));
    d->comm = comm;
    d->nranks = nranks;
    d->rank = rank;
    d->id = *id;
    if (config != NULL) {
        /* Copied now, as NCCL does: the caller's struct may not outlive the call. */
        size_t len = config->size < sizeof(d->config) ? config->size : sizeof(d->config);
        memcpy(&d->config, config, len);
        d->config.size = len;
        d->has_config = 1;
    }
    return ncclSuccess;
}

static void *deferred_init_thread(void *arg) {
    struct deferred_init *d = arg;
    d->result = init_rank(d->comm, d->nranks, &d->id, d->rank, d->has_config ? &d->config : NULL);
    return NULL;
}

static ncclResult_t run_deferred_inits(void) {
    int n = grp.ninits;
    grp.ninits = 0;
    if (n == 1) {
        deferred_init_thread(&grp.inits[0]);
        return grp.inits[0].result;
    }
    ncclResult_t r = ncclSuccess;
    int started = 0;
    for (; started < n; started++)
        if (pthread_create(&grp.inits[started].thread, NULL, deferred_init_thread, &grp.inits[started]) != 0) {
            r = ncclSystemError;
            break;
        }
    for (int i = 0; i < started; i++) {
        pthread_join(grp.inits[i].thread, NULL);
        if (r == ncclSuccess)
            r = grp.inits[i].result;
    }
    return r;
}

NCCL_API(ncclResult_t, ncclGroupStart, void) {
    NCCL_FRAME();
    grp.depth++;
    return ncclSuccess;
}

NCCL_API(ncclResult_t, ncclGroupEnd, void) {
    NCCL_FRAME();
    if (grp.depth == 0) {
        nccl_warn("ncclGroupEnd: not in a group call");
        return ncclInvalidUsage;
    }
    if (--grp.depth > 0)
        return ncclSuccess;
    ncclResult_t r = grp.error;
    grp.error = ncclSuccess;
    if (r != ncclSuccess) {
        for (int i = 0; i < grp.nops; i++)
            op_done(&grp.ops[i]);
        grp.nops = 0;
        grp.ninits = 0;
        return r;
    }
    if (grp.ninits > 0)
        r = run_deferred_inits();
    if (grp.nops > 0) {
        ncclResult_t s = submit(grp.ops, grp.nops);
        grp.nops = 0;
        if (r == ncclSuccess)
            r = s;
    }
    return r;
}

NCCL_API(ncclResult_t, ncclAllReduce, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_ALLREDUCE, "AllReduce", sendbuff, recvbuff, count, datatype, (int)op, -1, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclAllGather, const void *sendbuff, void *recvbuff, size_t sendcount,
         ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_ALLGATHER, "AllGather", sendbuff, recvbuff, sendcount, datatype, -1, -1, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclReduceScatter, const void *sendbuff, void *recvbuff, size_t recvcount,
         ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_REDUCESCATTER, "ReduceScatter", sendbuff, recvbuff, recvcount, datatype, (int)op, -1, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclBroadcast, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_BROADCAST, "Broadcast", sendbuff, recvbuff, count, datatype, -1, root, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclBcast, void *buff, size_t count, ncclDataType_t datatype, int root,
         ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_BROADCAST, "Bcast", buff, buff, count, datatype, -1, root, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclReduce, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_REDUCE, "Reduce", sendbuff, recvbuff, count, datatype, (int)op, root, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclAlltoAll, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_ALLTOALL, "AlltoAll", sendbuff, recvbuff, count, datatype, -1, -1, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclGather, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_GATHER, "Gather", sendbuff, recvbuff, count, datatype, -1, root, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclScatter, const void *sendbuff, void *recvbuff, size_t count,
         ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_SCATTER, "Scatter", sendbuff, recvbuff, count, datatype, -1, root, -1};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclSend, const void *sendbuff, size_t count, ncclDataType_t datatype,
         int peer, ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_SEND, "Send", sendbuff, NULL, count, datatype, -1, -1, peer};
    return issue(a, comm, stream);
}

NCCL_API(ncclResult_t, ncclRecv, void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
         ncclComm_t comm, cudaStream_t stream) {
    NCCL_FRAME();
    struct call a = {OP_RECV, "Recv", NULL, recvbuff, count, datatype, -1, -1, peer};
    return issue(a, comm, stream);
}
