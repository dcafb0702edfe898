//! `cargo xtask bench overhead`: what tracing costs where a user feels it,
//! each figure a ratio against a baseline measured in the same run, the
//! cases alternating round by round, medians reported.
//!
//! - `step`: step time of the simulated multi-rank job (`none` scenario),
//!   untraced against traced by one agent per rank with the default
//!   probes, and with `--stack`; median and p90.
//! - `switch`: a pipe ping-pong between two processes that are *not*
//!   traced (so every switch is filtered out by `sched_switch`), with no
//!   tracer against with `ingero trace` running (tracing a sleeping
//!   process): the machine-wide price of the always-on tracepoint.
//! - `io`: small O_DIRECT writes by an untraced process, likewise.
//! - `call`: per-call cost of a traced call against an empty probe on the
//!   same function (real CUDA runtime, stub driver, real NCCL).
//! - `footprint`: the agent's CPU time per million events and its RSS over
//!   a sustained run at 100k events/s.
//!
//! Environment: `INGERO_OVERHEAD_ONLY` (comma-separated sections, default
//! all), `INGERO_OVERHEAD_ROUNDS` (default 5), `INGERO_OVERHEAD_SECS` (the
//! footprint run, default 60), `INGERO_OVERHEAD_RANKS` (default 2),
//! `INGERO_BENCH_BIN` (another `ingero` binary to measure),
//! `INGERO_BENCH_BASELINE` (a second binary the `switch`/`io` rounds
//! measure too, for before/after figures in the same conditions). The
//! load average is printed with each section: on a shared machine a
//! figure is only as good as the quiet it was measured in. Needs root.

#[path = "common/workload.rs"]
mod workload;

#[path = "overhead/footprint.rs"]
mod footprint;
#[path = "overhead/machine.rs"]
mod machine;
#[path = "overhead/step.rs"]
mod step;

use ingero::trace::libraries::{LibKind, inspect};
use workload::{Run, per_call};

/// Driver and runtime calls per per-call round.
const CALLS: u64 = 200_000;
/// NCCL calls per per-call round (each is slower).
const NCCL_CALLS: u64 = 100_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1, 5 and 15 minute load averages.
fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn section(title: &str) {
    println!("{title} (load average {})", load());
}

/// The three per-call figures, with the agent free to run on the traced
/// program's CPU and with the two kept apart.
fn per_call_section(rounds: usize) -> anyhow::Result<()> {
    section(&format!(
        "per call: traced against an empty probe on the same function, {rounds} rounds, medians"
    ));
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    for pinned in [false, true] {
        workload::set_pinned(pinned);
        if pinned {
            println!(
                "  program pinned to CPU {}, tracer to the other CPU(s): the probes alone",
                cpus - 1
            );
        } else {
            println!("  program and tracer on any CPU: the tracer's own work may share the program's CPU");
        }
        per_call_figures(rounds)?;
    }
    workload::set_pinned(false);
    Ok(())
}

fn per_call_figures(rounds: usize) -> anyhow::Result<()> {
    match ingero_sim::libcudart() {
        Some(path) => {
            let mut lib = inspect(LibKind::Runtime, &path, &path)?;
            let wanted = [
                "cudaMalloc",
                "cudaLaunchKernel",
                "cudaMemcpy",
                "cudaStreamSynchronize",
            ];
            lib.symbols.retain(|(s, _)| wanted.contains(&s.symbol));
            let loops = CALLS / 4;
            let figure = per_call(&lib, rounds, CALLS, &|| Run::runtime(&path, loops))?;
            println!(
                "  runtime: {loops} x (cudaMalloc, cudaLaunchKernel, cudaMemcpy, cudaStreamSynchronize), real libcudart.so.12 without a driver"
            );
            figure.print();
        }
        None => println!("  runtime: skipped (no libcudart.so.12; cargo xtask setup installs it)"),
    }
    let path = ingero_sim::libcuda();
    let mut lib = inspect(LibKind::Driver, &path, &path)?;
    lib.symbols.retain(|(s, _)| s.symbol == "cuCtxSynchronize");
    let figure = per_call(&lib, rounds, CALLS, &|| Run::driver(CALLS, u64::MAX / 2))?;
    println!("  driver: {CALLS} x cuCtxSynchronize, stub libcuda.so.1");
    figure.print();
    match ingero_sim::libnccl_real() {
        Some(path) => {
            let mut lib = inspect(LibKind::Nccl, &path, &path)?;
            lib.symbols.retain(|(s, _)| s.symbol == "ncclAllReduce");
            let figure = per_call(&lib, rounds, NCCL_CALLS, &|| Run::nccl(&path, NCCL_CALLS))?;
            println!("  NCCL: {NCCL_CALLS} x ncclAllReduce, real libnccl.so.2, null communicator");
            figure.print();
        }
        None => println!("  NCCL: skipped (no libnccl.so.2; cargo xtask setup installs it)"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench overhead skipped: loading eBPF programs needs root");
        return Ok(());
    }
    let only = std::env::var("INGERO_OVERHEAD_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|s| s.trim() == name);
    let rounds = env_num("INGERO_OVERHEAD_ROUNDS", 5).max(1) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "overhead benchmark: {cpus} CPUs, kernel {}, {}, load average {} at the start",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        workload::ingero().display(),
        load()
    );
    if wanted("step") {
        let ranks = env_num("INGERO_OVERHEAD_RANKS", 2).clamp(1, 16) as usize;
        step::run(rounds, ranks)?;
    }
    if wanted("switch") || wanted("io") {
        // Short samples: twice the rounds, so a busy spell is outvoted.
        machine::run(2 * rounds, wanted("switch"), wanted("io"))?;
    }
    if wanted("call") {
        per_call_section(rounds)?;
    }
    if wanted("footprint") {
        footprint::run(env_num("INGERO_OVERHEAD_SECS", 60).max(10), 100_000)?;
    }
    println!("load average {} at the end", load());
    Ok(())
}
