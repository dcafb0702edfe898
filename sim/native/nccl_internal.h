/*
 * Internals of the stub libnccl.so.2, shared by its three files:
 *   nccl_stub.c  communicators: init, split, destroy, abort, queries
 *   nccl_coll.c  collectives, send/recv, groups, execution on the stream
 *   nccl_net.c   the loopback TCP transport: bootstrap, mesh, exchanges
 *
 * Invariants:
 *   - A communicator of n ranks holds, per channel, one connected socket to
 *     every other member (a full mesh, links[ch * n + r]); CH_CTRL is only
 *     used by host-side calls (ncclCommSplit), CH_COLL only by collectives
 *     running on a stream worker, CH_P2P only by send/recv. So a split can
 *     run while collectives are in flight, and collective and point-to-point
 *     traffic never mix on one byte stream.
 *   - Every wire exchange writes first, then reads: a batch writes its ticks
 *     to every peer before blocking on any read, so no set of ranks that all
 *     reach a batch can deadlock, whatever the order of communicators in it.
 *   - refs counts the user's handle plus every enqueued operation; the
 *     sockets are closed and the struct freed when it drops to zero.
 *     pending counts enqueued batches not yet run (ncclCommDestroy waits
 *     for it to reach zero, ncclCommAbort does not).
 *   - Only the nccl* entry points (and their pnccl* aliases) are exported:
 *     the library is built with -fvisibility=hidden.
 */
#ifndef INGERO_SIM_NCCL_INTERNAL_H
#define INGERO_SIM_NCCL_INTERNAL_H

#define _GNU_SOURCE
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>

#include "nccl_api.h"

/* Like NCCL's own NCCL_API: `name` is a weak export and `pname` an alias at
 * the same address. */
#define NCCL_API(ret, name, ...)                                                                   \
    __attribute__((visibility("default"), alias(#name))) ret p##name(__VA_ARGS__);               \
    __attribute__((visibility("default"), weak)) ret name(__VA_ARGS__)

/* First statement of every entry point: asking for the frame address makes
 * gcc set up %rbp even in a leaf function, which -fno-omit-frame-pointer
 * alone does not, so every export starts with `push %rbp`. */
#define NCCL_FRAME() __asm__ volatile("" ::"r"(__builtin_frame_address(0)))

typedef int CUresult;
typedef struct CUfunc_st *CUfunction;
typedef struct CUmod_st *CUmodule;
typedef void (*CUhostFn)(void *user_data);
extern CUresult cuInit(unsigned int flags);
extern CUresult cuModuleLoadData(CUmodule *module, const void *image);
extern CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name);
extern CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, cudaStream_t stream, void **params,
                               void **extra);
extern CUresult cuLaunchHostFunc(cudaStream_t stream, CUhostFn fn, void *user_data);

enum channel { CH_CTRL = 0, CH_COLL = 1, CH_P2P = 2, CH_COUNT = 3 };

enum op_kind {
    OP_ALLREDUCE,
    OP_ALLGATHER,
    OP_REDUCESCATTER,
    OP_BROADCAST,
    OP_REDUCE,
    OP_ALLTOALL,
    OP_GATHER,
    OP_SCATTER,
    OP_SEND,
    OP_RECV,
    OP_KINDS
};

#define COMM_ALIVE 0x6e63636c636f6d6dull /* "ncclcomm" */

struct ncclComm {
    uint64_t magic; /* COMM_ALIVE until destroyed or aborted */
    int rank, nranks;
    int local;  /* from ncclCommInitAll: no network, collectives complete locally */
    int device;
    int blocking;
    uint64_t tag; /* same on every member; checked in every handshake */
    struct in_addr ip; /* this rank's address, where its split listeners bind */
    int *links;        /* CH_COUNT * nranks sockets, -1 for self and closed ones */
    uint32_t coll_seq; /* collectives enqueued (same sequence on every member) */
    uint32_t *p2p_seq; /* send/recv enqueued per peer */
    uint32_t splits;   /* splits made from this communicator */
    double net_bytes_per_ns;
    CUfunction kernels[OP_KINDS];
    char name[64];
    pthread_mutex_t wire; /* one batch at a time on the sockets */
    pthread_mutex_t mu;   /* refs, pending */
    pthread_cond_t cv;
    int refs, pending;
    volatile int failed, aborted;
    volatile int warned;
};

/* nccl_stub.c */
/* Argument errors, printed (like NCCL's WARN lines) only when NCCL_DEBUG is set. */
void nccl_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
ncclResult_t comm_alloc(struct ncclComm **out, int rank, int nranks, const ncclConfig_t *config,
                        const struct ncclComm *parent);
void comm_ref(struct ncclComm *c);
void comm_unref(struct ncclComm *c);
int comm_usable(const struct ncclComm *c);
void comm_mark_failed(struct ncclComm *c, const char *why);
ncclResult_t init_rank(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank,
                       const ncclConfig_t *config);

/* nccl_coll.c */
int group_depth(void);
ncclResult_t group_defer_init(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank,
                              const ncclConfig_t *config);
size_t type_size(ncclDataType_t t);

/* nccl_net.c */
int net_send(int fd, const void *buf, size_t len);
int net_recv(int fd, void *buf, size_t len);
ncclResult_t net_parse_id(const ncclUniqueId *id, struct sockaddr_in *root);
ncclResult_t net_bootstrap(struct ncclComm *c, const struct sockaddr_in *root);
ncclResult_t net_listen(struct in_addr ip, int backlog, int *fd, struct sockaddr_in *bound);
ncclResult_t net_mesh(struct ncclComm *c, int listen_fd, const struct sockaddr_in *addrs);
ncclResult_t net_allgather(struct ncclComm *c, const void *mine, void *all, size_t size);
void net_shutdown(struct ncclComm *c);
void net_close(struct ncclComm *c);
void sleep_ns(uint64_t ns);

#endif
