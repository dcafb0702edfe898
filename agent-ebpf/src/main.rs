//! eBPF programs of the ingero agent.
//!
//! - `cuda_enter` / `cuda_exit`: one uprobe/uretprobe pair attached to every
//!   probed CUDA runtime and driver function; the attach cookie names the
//!   operation, so the programs know which call they measure.
//! - `nccl_enter` / `nccl_exit`: the same for NCCL (collectives, groups,
//!   communicator set-up), with a per-communicator sequence number.
//! - `sched_switch`: off-CPU time of every thread of a traced process.
//! - `block_rq_issue` / `block_rq_complete`: block request latency.
//! - `task_newtask`, `process_exec`, `process_exit`: process lifecycle;
//!   children of a traced process are traced from birth.
//! - `oom_mark_victim`: OOM kills anywhere on the node.
//! - `mm_page_alloc`: page-allocation counters of traced processes.
//! - `empty_enter` / `empty_exit`: do-nothing probes, the baseline of the
//!   overhead benchmark.
//!
//! Programs stay thin: each macro function calls a `try_*` function and
//! every failure that loses an event is counted in `DROPS`.

#![no_std]
#![no_main]

mod block;
mod cuda;
mod emit;
mod maps;
mod memory;
mod nccl;
mod process;
mod sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never entered.
    loop {}
}

/// The stack helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
