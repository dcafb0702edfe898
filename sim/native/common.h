/*
 * Helpers shared by the sim programs: option parsing, thread ids, and the
 * --wait handshake (print {"ready":PID}, block until a line on stdin) that
 * lets a tracer attach to a pid before the program starts its calls.
 */
#ifndef INGERO_SIM_COMMON_H
#define INGERO_SIM_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline pid_t sim_gettid(void) { return (pid_t)syscall(SYS_gettid); }

/* A non-negative integer option value, or exit 2 with a message. */
static inline long sim_num(const char *prog, const char *flag, const char *v) {
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0' || n < 0) {
        fprintf(stderr, "%s: %s expects a non-negative integer, got '%s'\n", prog, flag, v);
        exit(2);
    }
    return n;
}

/* Returns 0 to go on, 1 if stdin closed before the go line. */
static inline int sim_wait_for_go(void) {
    printf("{\"ready\":%d}\n", getpid());
    fflush(stdout);
    char line[16];
    return fgets(line, sizeof(line), stdin) == NULL;
}

#endif
