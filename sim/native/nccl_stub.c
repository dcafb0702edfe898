/*
 * libnccl.so.2 stand-in: communicator set-up and ncclAllReduce with the real
 * NCCL signatures, for machines without a GPU.
 *
 * An all-reduce is enqueued on the caller's stream like the real one: a small
 * kernel launch (cuLaunchKernel of an "ncclDevKernel" function), then a host
 * function (cuLaunchHostFunc) that performs a real barrier among all ranks
 * over TCP and then holds the stream for the ring transfer time
 * 2*(n-1)/n * bytes / bandwidth. A rank that reaches the all-reduce late
 * therefore makes every other rank wait in cuStreamSynchronize: the
 * signature of a straggler in data-parallel training.
 *
 * Rendezvous: ncclGetUniqueId encodes MASTER_ADDR:MASTER_PORT (as torchrun
 * sets them); rank 0 listens there and the other ranks connect to it.
 *   INGERO_SIM_NET_GBPS  all-reduce bus bandwidth, GB/s (default 20)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUmod_st *CUmodule;
typedef void (*CUhostFn)(void *user_data);

extern CUresult cuModuleLoadData(CUmodule *module, const void *image);
extern CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name);
extern CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, CUstream stream, void **params, void **extra);
extern CUresult cuLaunchHostFunc(CUstream stream, CUhostFn fn, void *user_data);

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;
typedef enum {
    ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4,
    ncclUint64 = 5, ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9,
} ncclDataType_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

struct ncclComm {
    int rank;
    int nranks;
    int root_fd;    /* non-root: connection to rank 0 */
    int *peer_fds;  /* root: connections to ranks 1..n-1, indexed by rank */
    CUfunction kernel;
    double net_bytes_per_ns;
    /* Set when a peer vanished: later collectives fail instead of hanging. */
    volatile int failed;
};

/* One enqueued all-reduce; freed by the stream worker that executes it. */
struct pending_allreduce {
    struct ncclComm *comm;
    uint64_t bytes;
};
typedef struct ncclComm *ncclComm_t;

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

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) == EINTR) {
    }
}

static int parse_id(const ncclUniqueId *id, struct sockaddr_in *addr) {
    char host[64];
    unsigned port = 0;
    if (sscanf(id->internal, "ingero-sim %63s %u", host, &port) != 2 || port == 0 || port > 65535)
        return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

EXPORT ncclResult_t ncclGetVersion(int *version) {
    if (version == NULL)
        return ncclInvalidArgument;
    *version = 22105;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (id == NULL)
        return ncclInvalidArgument;
    const char *host = getenv("MASTER_ADDR");
    const char *port = getenv("MASTER_PORT");
    if (host == NULL || port == NULL)
        return ncclInvalidUsage;
    memset(id, 0, sizeof(*id));
    snprintf(id->internal, sizeof(id->internal), "ingero-sim %s %s", host, port);
    return ncclSuccess;
}

static void tune_socket(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static ncclResult_t rendezvous_root(struct ncclComm *c, const struct sockaddr_in *addr) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return ncclSystemError;
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (const struct sockaddr *)addr, sizeof(*addr)) != 0 || listen(lfd, c->nranks) != 0) {
        close(lfd);
        return ncclSystemError;
    }
    for (int joined = 1; joined < c->nranks;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            close(lfd);
            return ncclSystemError;
        }
        int32_t peer = -1;
        if (read_all(fd, &peer, sizeof(peer)) != 0 || peer <= 0 || peer >= c->nranks ||
            c->peer_fds[peer] >= 0) {
            close(fd);
            continue;
        }
        tune_socket(fd);
        c->peer_fds[peer] = fd;
        joined++;
    }
    close(lfd);
    return ncclSuccess;
}

static ncclResult_t rendezvous_peer(struct ncclComm *c, const struct sockaddr_in *addr) {
    /* Rank 0 may not be listening yet: retry for up to 60 s. */
    for (int attempt = 0; attempt < 1200; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return ncclSystemError;
        if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0) {
            int32_t me = c->rank;
            if (write_all(fd, &me, sizeof(me)) != 0) {
                close(fd);
                return ncclRemoteError;
            }
            tune_socket(fd);
            c->root_fd = fd;
            return ncclSuccess;
        }
        close(fd);
        sleep_ns(50 * 1000000ull);
    }
    return ncclRemoteError;
}

EXPORT ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
    if (comm == NULL || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    struct sockaddr_in addr;
    if (parse_id(&commId, &addr) != 0)
        return ncclInvalidArgument;
    struct ncclComm *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ncclSystemError;
    c->rank = rank;
    c->nranks = nranks;
    c->root_fd = -1;
    const char *gbps = getenv("INGERO_SIM_NET_GBPS");
    double bw = gbps != NULL ? atof(gbps) : 20.0;
    c->net_bytes_per_ns = bw > 0 ? bw : 20.0;
    CUmodule module;
    if (cuModuleLoadData(&module, "nccl-device-code") != 0 ||
        cuModuleGetFunction(&c->kernel, module, "ncclDevKernel_AllReduce_Sum_f32_RING_LL") != 0) {
        free(c);
        return ncclUnhandledCudaError;
    }
    ncclResult_t r = ncclSuccess;
    if (nranks > 1) {
        if (rank == 0) {
            c->peer_fds = malloc(sizeof(int) * (size_t)nranks);
            if (c->peer_fds == NULL) {
                free(c);
                return ncclSystemError;
            }
            for (int i = 0; i < nranks; i++)
                c->peer_fds[i] = -1;
            r = rendezvous_root(c, &addr);
        } else {
            r = rendezvous_peer(c, &addr);
        }
    }
    if (r != ncclSuccess) {
        free(c->peer_fds);
        free(c);
        return r;
    }
    *comm = c;
    return ncclSuccess;
}

/* Runs on the stream's worker when the all-reduce reaches the head of the
 * stream: every rank reports to rank 0, rank 0 releases them all. */
static void allreduce_on_stream(void *arg) {
    struct pending_allreduce *p = arg;
    struct ncclComm *c = p->comm;
    uint64_t bytes = p->bytes;
    free(p);
    uint8_t token = 1;
    if (c->nranks > 1) {
        if (c->rank == 0) {
            for (int peer = 1; peer < c->nranks; peer++)
                if (read_all(c->peer_fds[peer], &token, 1) != 0) {
                    if (!c->failed)
                        fprintf(stderr, "nccl stub: rank %d left the communicator\n", peer);
                    c->failed = 1;
                }
            for (int peer = 1; peer < c->nranks; peer++)
                write_all(c->peer_fds[peer], &token, 1);
        } else {
            if (write_all(c->root_fd, &token, 1) != 0 || read_all(c->root_fd, &token, 1) != 0) {
                if (!c->failed)
                    fprintf(stderr, "nccl stub: rank 0 left the communicator\n");
                c->failed = 1;
            }
        }
    }
    double ring = c->nranks > 1 ? 2.0 * (c->nranks - 1) / c->nranks : 0.0;
    sleep_ns((uint64_t)(ring * (double)bytes / c->net_bytes_per_ns));
}

static size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    }
    return 0;
}

EXPORT ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                                  ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                  CUstream stream) {
    (void)op;
    if (comm == NULL || sendbuff == NULL || recvbuff == NULL || type_size(datatype) == 0)
        return ncclInvalidArgument;
    if (comm->failed)
        return ncclRemoteError;
    struct pending_allreduce *p = malloc(sizeof(*p));
    if (p == NULL)
        return ncclSystemError;
    p->comm = comm;
    p->bytes = count * type_size(datatype);
    if (cuLaunchKernel(comm->kernel, 1, 1, 1, 256, 1, 1, 0, stream, NULL, NULL) != 0 ||
        cuLaunchHostFunc(stream, allreduce_on_stream, p) != 0) {
        free(p);
        return ncclUnhandledCudaError;
    }
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (comm == NULL || count == NULL)
        return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (comm == NULL || rank == NULL)
        return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (comm == NULL)
        return ncclInvalidArgument;
    if (comm->root_fd >= 0)
        close(comm->root_fd);
    if (comm->peer_fds != NULL) {
        for (int i = 1; i < comm->nranks; i++)
            if (comm->peer_fds[i] >= 0)
                close(comm->peer_fds[i]);
        free(comm->peer_fds);
    }
    free(comm);
    return ncclSuccess;
}

EXPORT const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    }
    return "unknown result code";
}
