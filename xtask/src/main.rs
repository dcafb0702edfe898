//! Project tasks: `cargo xtask <command>`.
//!
//! Every command first runs [`setup`] (idempotent, quick when nothing is
//! missing), so each works on a fresh machine of the project's kind; `lint`
//! only checks the toolchain it compiles with and installs nothing else.

mod bench;
mod demo;
mod exec;
mod investigations;
mod lint;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "ingero project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (nightly rust-src, bpf-linker, gcc, tracefs, Python packages)
    Setup,
    /// Build everything and run the whole test suite (privileged tests need root)
    Test(test::Options),
    /// rustfmt check, clippy (-D warnings, pedantic on the host crates) and rustdoc (-D warnings), including the eBPF crate
    Lint,
    /// Build ingero (release) and run it: cargo xtask run -- trace --duration 10s
    Run(run::Options),
    /// Benchmarks, reported as ratios against baselines measured in the same run
    Bench(bench::Options),
    /// A simulated multi-node training job, traced for real, then analysed (needs root)
    Demo(demo::Options),
    /// Regenerate the sample databases in investigations/ (needs root)
    Investigations,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Lint => setup::toolchain()?,
        _ => setup::ensure()?,
    }
    match cli.command {
        Command::Setup => Ok(()),
        Command::Test(opts) => test::run(&opts),
        Command::Lint => lint::run(),
        Command::Run(opts) => run::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Investigations => investigations::run(),
    }
}
