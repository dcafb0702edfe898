/*
 * The stub NCCL's transport: plain TCP, as NCCL's socket transport and
 * bootstrap would use without InfiniBand.
 *
 * Bootstrap (ncclCommInitRank*): the unique id names the root's address
 * (MASTER_ADDR:MASTER_PORT). Every rank first opens a listener of its own
 * on an ephemeral port; ranks 1..n-1 connect to the root and send their
 * rank and listener address; the root answers everybody with the table of
 * all listeners and a random communicator tag, and closes its bootstrap
 * port. Then the mesh: rank i connects CH_COUNT times to every rank j < i
 * (a hello names rank, channel and tag) and accepts the connections of the
 * ranks above it. A split builds its mesh the same way, the listener table
 * coming from an all-gather over the parent's control channel, so split
 * communicators (of any colour) need no port of their own.
 *
 * Sockets write with MSG_NOSIGNAL: a peer that died is an error code, not
 * a SIGPIPE.
 */
#include "nccl_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WIRE_MAGIC 0x494e4752u /* "INGR" */
/* How long a rank waits for its peers to show up during set-up. */
#define SETUP_TIMEOUT_MS (120 * 1000)

struct wire_addr {
    uint32_t ip; /* network order */
    uint16_t port; /* network order */
    uint16_t pad;
};

struct boot_hello {
    uint32_t magic;
    int32_t rank, nranks;
    struct wire_addr listener;
};

struct boot_reply {
    uint32_t magic;
    int32_t status; /* ncclResult_t */
    uint64_t tag;
    /* followed by nranks struct wire_addr */
};

struct mesh_hello {
    uint32_t magic;
    int32_t rank;
    int32_t channel;
    int32_t pad;
    uint64_t tag;
};

void sleep_ns(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int net_send(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int net_recv(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static struct wire_addr to_wire(const struct sockaddr_in *a) {
    struct wire_addr w = {.ip = a->sin_addr.s_addr, .port = a->sin_port, .pad = 0};
    return w;
}

static struct sockaddr_in from_wire(struct wire_addr w) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = w.ip;
    a.sin_port = w.port;
    return a;
}

ncclResult_t net_parse_id(const ncclUniqueId *id, struct sockaddr_in *root) {
    char host[64], port[16];
    if (sscanf(id->internal, "ingero-sim %63s %15s", host, port) != 2)
        return ncclInvalidArgument;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return ncclInvalidArgument;
    memcpy(root, res->ai_addr, sizeof(*root));
    freeaddrinfo(res);
    return root->sin_port != 0 ? ncclSuccess : ncclInvalidArgument;
}

ncclResult_t net_listen(struct in_addr ip, int backlog, int *fd, struct sockaddr_in *bound) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return ncclSystemError;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr = ip;
    socklen_t len = sizeof(a);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(s, backlog) != 0 ||
        getsockname(s, (struct sockaddr *)bound, &len) != 0) {
        close(s);
        return ncclSystemError;
    }
    *fd = s;
    return ncclSuccess;
}

/* accept(2) that gives up at the deadline (CLOCK_MONOTONIC ms). */
static int accept_until(int lfd, uint64_t deadline) {
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd p = {.fd = lfd, .events = POLLIN, .revents = 0};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            tune(fd);
            return fd;
        }
        if (errno != EINTR && errno != ECONNABORTED)
            return -1;
    }
}

/* connect(2), retried while nobody listens yet, up to the deadline. */
static int connect_until(const struct sockaddr_in *to, uint64_t deadline) {
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) == 0) {
            tune(fd);
            return fd;
        }
        int err = errno;
        close(fd);
        if ((err != ECONNREFUSED && err != EINTR && err != ETIMEDOUT && err != EAGAIN) ||
            now_ms() >= deadline)
            return -1;
        sleep_ns(50 * 1000000ull);
    }
}

static uint64_t random_tag(void) {
    uint64_t tag = 0;
    if (getrandom(&tag, sizeof(tag), 0) != (ssize_t)sizeof(tag))
        tag = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&tag;
    return tag | 1;
}

static ncclResult_t bootstrap_root(struct ncclComm *c, const struct sockaddr_in *root,
                                   struct sockaddr_in *addrs) {
    int n = c->nranks;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return ncclSystemError;
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (const struct sockaddr *)root, sizeof(*root)) != 0 || listen(lfd, n) != 0) {
        fprintf(stderr, "nccl stub: cannot listen on the root address %s:%u: %s\n",
                inet_ntoa(root->sin_addr), ntohs(root->sin_port), strerror(errno));
        close(lfd);
        return ncclSystemError;
    }
    int *fds = malloc(sizeof(int) * (size_t)n);
    struct wire_addr *table = calloc((size_t)n, sizeof(*table));
    if (fds == NULL || table == NULL) {
        free(fds);
        free(table);
        close(lfd);
        return ncclSystemError;
    }
    for (int i = 0; i < n; i++)
        fds[i] = -1;
    table[0] = to_wire(&addrs[0]);
    ncclResult_t status = ncclSuccess;
    uint64_t deadline = now_ms() + SETUP_TIMEOUT_MS;
    for (int joined = 1; joined < n;) {
        int fd = accept_until(lfd, deadline);
        if (fd < 0) {
            fprintf(stderr, "nccl stub: only %d of %d ranks joined the root in time\n", joined, n);
            status = ncclRemoteError;
            break;
        }
        struct boot_hello h;
        if (net_recv(fd, &h, sizeof(h)) != 0 || h.magic != WIRE_MAGIC || h.rank <= 0 ||
            h.rank >= n || fds[h.rank] >= 0) {
            close(fd);
            continue;
        }
        if (h.nranks != n) {
            fprintf(stderr, "nccl stub: rank %d says nranks=%d, the root has %d\n", h.rank,
                    h.nranks, n);
            status = ncclInvalidUsage;
        }
        fds[h.rank] = fd;
        table[h.rank] = h.listener;
        joined++;
    }
    close(lfd);
    struct boot_reply reply = {.magic = WIRE_MAGIC, .status = status, .tag = random_tag()};
    for (int r = 1; r < n; r++) {
        if (fds[r] < 0)
            continue;
        if (net_send(fds[r], &reply, sizeof(reply)) != 0 ||
            net_send(fds[r], table, sizeof(*table) * (size_t)n) != 0)
            status = status == ncclSuccess ? ncclRemoteError : status;
        close(fds[r]);
    }
    c->tag = reply.tag;
    for (int r = 1; r < n; r++)
        addrs[r] = from_wire(table[r]);
    free(fds);
    free(table);
    return status;
}

static ncclResult_t bootstrap_peer(struct ncclComm *c, const struct sockaddr_in *root,
                                   struct sockaddr_in *addrs, int *lfd) {
    int n = c->nranks;
    int fd = connect_until(root, now_ms() + SETUP_TIMEOUT_MS);
    if (fd < 0) {
        fprintf(stderr, "nccl stub: rank %d cannot reach the root at %s:%u\n", c->rank,
                inet_ntoa(root->sin_addr), ntohs(root->sin_port));
        return ncclRemoteError;
    }
    struct sockaddr_in local;
    socklen_t len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) {
        close(fd);
        return ncclSystemError;
    }
    c->ip = local.sin_addr;
    ncclResult_t r = net_listen(c->ip, CH_COUNT * n, lfd, &addrs[c->rank]);
    if (r != ncclSuccess) {
        close(fd);
        return r;
    }
    struct boot_hello h = {
        .magic = WIRE_MAGIC, .rank = c->rank, .nranks = n, .listener = to_wire(&addrs[c->rank])};
    struct boot_reply reply;
    struct wire_addr *table = calloc((size_t)n, sizeof(*table));
    if (table == NULL) {
        close(fd);
        return ncclSystemError;
    }
    if (net_send(fd, &h, sizeof(h)) != 0 || net_recv(fd, &reply, sizeof(reply)) != 0 ||
        reply.magic != WIRE_MAGIC || net_recv(fd, table, sizeof(*table) * (size_t)n) != 0) {
        close(fd);
        free(table);
        return ncclRemoteError;
    }
    close(fd);
    c->tag = reply.tag;
    for (int i = 0; i < n; i++)
        if (i != c->rank)
            addrs[i] = from_wire(table[i]);
    free(table);
    return (ncclResult_t)reply.status;
}

ncclResult_t net_bootstrap(struct ncclComm *c, const struct sockaddr_in *root) {
    int n = c->nranks;
    if (n == 1) {
        c->ip = root->sin_addr;
        return ncclSuccess;
    }
    struct sockaddr_in *addrs = calloc((size_t)n, sizeof(*addrs));
    if (addrs == NULL)
        return ncclSystemError;
    int lfd = -1;
    ncclResult_t r;
    if (c->rank == 0) {
        c->ip = root->sin_addr;
        r = net_listen(c->ip, CH_COUNT * n, &lfd, &addrs[0]);
        if (r == ncclSuccess)
            r = bootstrap_root(c, root, addrs);
    } else {
        r = bootstrap_peer(c, root, addrs, &lfd);
    }
    if (r == ncclSuccess)
        r = net_mesh(c, lfd, addrs);
    else if (lfd >= 0)
        close(lfd);
    free(addrs);
    return r;
}

ncclResult_t net_mesh(struct ncclComm *c, int lfd, const struct sockaddr_in *addrs) {
    int n = c->nranks, me = c->rank;
    c->links = malloc(sizeof(int) * (size_t)(CH_COUNT * n));
    if (c->links == NULL) {
        close(lfd);
        return ncclSystemError;
    }
    for (int i = 0; i < CH_COUNT * n; i++)
        c->links[i] = -1;
    uint64_t deadline = now_ms() + SETUP_TIMEOUT_MS;
    ncclResult_t r = ncclSuccess;
    /* Listeners exist before anybody learns their address, so these
     * connects land in the backlog even if the peer is not accepting yet. */
    for (int peer = 0; peer < me && r == ncclSuccess; peer++) {
        for (int ch = 0; ch < CH_COUNT; ch++) {
            int fd = connect_until(&addrs[peer], deadline);
            struct mesh_hello h = {
                .magic = WIRE_MAGIC, .rank = me, .channel = ch, .pad = 0, .tag = c->tag};
            if (fd < 0 || net_send(fd, &h, sizeof(h)) != 0) {
                if (fd >= 0)
                    close(fd);
                fprintf(stderr, "nccl stub: rank %d cannot connect to rank %d\n", me, peer);
                r = ncclRemoteError;
                break;
            }
            c->links[ch * n + peer] = fd;
        }
    }
    for (int expected = (n - 1 - me) * CH_COUNT; expected > 0 && r == ncclSuccess;) {
        int fd = accept_until(lfd, deadline);
        if (fd < 0) {
            fprintf(stderr, "nccl stub: rank %d: peers did not connect in time\n", me);
            r = ncclRemoteError;
            break;
        }
        struct mesh_hello h;
        if (net_recv(fd, &h, sizeof(h)) != 0 || h.magic != WIRE_MAGIC || h.tag != c->tag ||
            h.rank <= me || h.rank >= n || h.channel < 0 || h.channel >= CH_COUNT ||
            c->links[h.channel * n + h.rank] >= 0) {
            close(fd);
            continue;
        }
        c->links[h.channel * n + h.rank] = fd;
        expected--;
    }
    close(lfd);
    return r;
}

ncclResult_t net_allgather(struct ncclComm *c, const void *mine, void *all, size_t size) {
    int n = c->nranks;
    char *out = all;
    memcpy(out + size * (size_t)c->rank, mine, size);
    ncclResult_t r = ncclSuccess;
    for (int peer = 0; peer < n; peer++)
        if (peer != c->rank && net_send(c->links[CH_CTRL * n + peer], mine, size) != 0)
            r = ncclRemoteError;
    for (int peer = 0; peer < n; peer++)
        if (peer != c->rank && net_recv(c->links[CH_CTRL * n + peer], out + size * (size_t)peer, size) != 0)
            r = ncclRemoteError;
    if (r != ncclSuccess)
        comm_mark_failed(c, "a peer left during ncclCommSplit");
    return r;
}

void net_shutdown(struct ncclComm *c) {
    if (c->links == NULL)
        return;
    for (int i = 0; i < CH_COUNT * c->nranks; i++)
        if (c->links[i] >= 0)
            shutdown(c->links[i], SHUT_RDWR);
}

void net_close(struct ncclComm *c) {
    if (c->links == NULL)
        return;
    for (int i = 0; i < CH_COUNT * c->nranks; i++)
        if (c->links[i] >= 0)
            close(c->links[i]);
    free(c->links);
    c->links = NULL;
}
