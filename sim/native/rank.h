/*
 * Shared by the two files of ingero-sim-rank: rank.c (set-up, the training
 * loop, the summary) and rank_faults.c (the injected faults: checkpoint
 * writer, data loader workers, hang).
 */
#ifndef INGERO_SIM_RANK_H
#define INGERO_SIM_RANK_H

#include "common.h"

#include <stdint.h>
#include <time.h>

#include "cuda_driver.h"

extern const char *PROG;

struct rank_options {
    long steps, kernels, kernel_us, host_us, batch_mb, grad_mb, output_mb;
    const char *cudart;
    const char *ckpt_dir;
    long ckpt_mb, ckpt_every;
    long mem_mb, mem_every;
    long cpu;
    long report_every;
    long group_every;
    long slow_input_us;
    long hang_at;
    long loader_workers, loader_decode_us;
    const char *loader_dir;
    int hog, wait;
};
extern struct rank_options opt;

extern int rank_id, world;

/* Prints "<what> failed" and exits 3. */
void fail(const char *what, long code) __attribute__((noreturn));
uint64_t now_ns(clockid_t clock);
/* CPU time, not wall time: a preempted thread takes longer. */
void burn_cpu_us(long us);
void pin_to(long cpu);

/* rank_faults.c */
void checkpoint_start(void);
void checkpoint(long step, CUdeviceptr state);
void loader_prepare(void);
void loader_start(void);
void loader_next(long step, char *dst);
void loader_stop(void);
void hang(long step) __attribute__((noreturn));

#endif
