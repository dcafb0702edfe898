//! `cargo xtask bench <what>`: benchmarks that print their figures as
//! ratios against a baseline measured in the same run.
//!
//! - `trace`: per-call cost of a traced CUDA call against an empty probe
//!   and no probe; sustained events/s into SQLite with zero drops.
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
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bench = match opts.which {
        Which::Trace => "trace",
        Which::Analysis => "analysis",
        Which::Fleet => "fleet",
        Which::Diagnosis => "diagnosis",
        Which::Archive => "archive",
    };
    exec(
        cargo()
            .current_dir(root())
            .args(["bench", "-p", "ingero", "--bench", bench]),
    )
}
