//! `cargo xtask bench <what>`: benchmarks that print their figures as
//! ratios against a baseline measured in the same run.
//!
//! - `trace`: per-call cost of a traced CUDA call against an empty probe
//!   and no probe; sustained events/s into SQLite with zero drops.

use crate::exec::{cargo, exec, root};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Probe overhead and sustained ingest of `ingero trace` (needs root)
    Trace,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    which: Which,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bench = match opts.which {
        Which::Trace => "trace",
    };
    exec(
        cargo()
            .current_dir(root())
            .args(["bench", "-p", "ingero", "--bench", bench]),
    )
}
