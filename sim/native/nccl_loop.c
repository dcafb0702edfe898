/*
 * ingero-sim-nccl-loop: calls ncclAllReduce of a real libnccl.so.2 in a
 * tight loop, for the per-call cost of the NCCL probes.
 *
 *   ingero-sim-nccl-loop --lib PATH --calls N [--wait]
 *
 * The library is opened with dlopen (the real one, from the
 * nvidia-nccl-cu12 wheel). Without a GPU there is no communicator, so each
 * call passes a null one and returns ncclInvalidArgument (4) after NCCL has
 * checked its arguments: the probes fire on every call with real
 * arguments. With --wait it prints {"ready": PID} and waits for a line on
 * stdin before calling, so a tracer can attach first; it ends with
 * {"seconds": S, "rc": R}.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*all_reduce_fn)(const void *, void *, size_t, int, int, void *, void *);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *lib = NULL;
    long calls = 100000;
    int wait = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lib") == 0 && i + 1 < argc)
            lib = argv[++i];
        else if (strcmp(argv[i], "--calls") == 0 && i + 1 < argc)
            calls = atol(argv[++i]);
        else if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else {
            fprintf(stderr, "usage: %s --lib PATH --calls N [--wait]\n", argv[0]);
            return 2;
        }
    }
    if (lib == NULL) {
        fprintf(stderr, "ingero-sim-nccl-loop: --lib PATH is required\n");
        return 2;
    }
    void *h = dlopen(lib, RTLD_NOW);
    if (h == NULL) {
        fprintf(stderr, "ingero-sim-nccl-loop: %s\n", dlerror());
        return 1;
    }
    all_reduce_fn all_reduce = (all_reduce_fn)dlsym(h, "ncclAllReduce");
    if (all_reduce == NULL) {
        fprintf(stderr, "ingero-sim-nccl-loop: no ncclAllReduce in %s\n", lib);
        return 1;
    }
    if (wait) {
        printf("{\"ready\": %d}\n", (int)getpid());
        fflush(stdout);
        char line[64];
        if (fgets(line, sizeof(line), stdin) == NULL)
            return 1;
    }
    int rc = 0;
    double start = now_s();
    for (long i = 0; i < calls; i++)
        rc = all_reduce((void *)0x1000, (void *)0x2000, 1024, 7, 0, NULL, NULL);
    printf("{\"seconds\": %.6f, \"rc\": %d}\n", now_s() - start, rc);
    return 0;
}
