//! `cargo xtask bench <what>`: benchmarks that print their figures as
//! ratios against a baseline measured in the same run.
//!
//! - `trace`: per-call cost of a traced CUDA call against an empty probe
//!   and no probe; sustained events/s into SQLite with zero drops.
//! - `overhead`: what tracing costs where users feel it: training step
//!   time, context switches and block I/O of untraced processes, per-call
//!   cost (runtime, driver, NCCL), the agent's CPU and memory.
//! - `analysis`: explain, export and merge throughput on a generated
//!   1M-event database, against a raw scan and SQLite's own copy.
//! - `fleet`: fan-out latency to 4, 16 and 64 agents against one agent;
//!   clock-offset error against offsets injected with faketime.
//! - `diagnosis`: right node and cause over a matrix of injected faults on
//!   the simulated 4-node job (fleet and merged explain), with a confusion
//!   table.
//! - `archive`: Parquet archive writing throughput against the SQLite
//!   ingest rate of the same rows, file size per million events against
//!   SQLite's, and the ingest rate while archiving every second.

use crate::exec::{cargo, exec, root};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Probe overhead and sustained ingest of `ingero trace` (needs root)
    Trace,
    /// Step time, machine-wide, per-call and footprint overhead (needs root)
    Overhead,
    /// Explain, export and merge throughput on a 1M-event database
    Analysis,
    /// Fan-out latency to 4/16/64 agents and clock-offset error
    Fleet,
    /// Right node and cause over a matrix of injected faults (needs root)
    Diagnosis,
    /// Parquet archive throughput and size against SQLite's
    Archive,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    which: Which,
    /// overhead: only these sections (comma-separated: step, switch, io, call, footprint)
    #[arg(long)]
    only: Option<String>,
    /// overhead: rounds of each alternating comparison
    #[arg(long)]
    rounds: Option<u32>,
    /// overhead: duration of the sustained footprint run, in seconds (the issue asks 600)
    #[arg(long)]
    footprint_secs: Option<u32>,
    /// overhead: ranks of the simulated job
    #[arg(long)]
    ranks: Option<u32>,
    /// overhead: another `ingero` binary the switch/io rounds measure too (before/after a change)
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bench = match opts.which {
        Which::Trace => "trace",
        Which::Overhead => "overhead",
        Which::Analysis => "analysis",
        Which::Fleet => "fleet",
        Which::Diagnosis => "diagnosis",
        Which::Archive => "archive",
    };
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["bench", "-p", "ingero", "--bench", bench]);
    let settings = [
        ("INGERO_OVERHEAD_ONLY", opts.only.clone()),
        ("INGERO_OVERHEAD_ROUNDS", opts.rounds.map(|n| n.to_string())),
        ("INGERO_OVERHEAD_SECS", opts.footprint_secs.map(|n| n.to_string())),
        ("INGERO_OVERHEAD_RANKS", opts.ranks.map(|n| n.to_string())),
        (
            "INGERO_BENCH_BASELINE",
            opts.baseline.as_ref().map(|p| p.display().to_string()),
        ),
    ];
    for (name, value) in settings {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    exec(&mut cmd)
}
