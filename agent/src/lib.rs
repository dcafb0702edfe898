//! ingero: an eBPF tracer for distributed GPU training.
//!
//! The `ingero` binary is a thin shell over this library: [`cli`] parses,
//! [`run`] resolves configuration and dispatches, and [`error::CliError`]
//! maps every failure to one sentence and an exit code.

#![warn(missing_docs)]

pub mod analysis;
pub mod api;
pub mod archive;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod error;
pub mod export;
pub mod fleet_nccl;
pub mod host;
pub mod logging;
pub mod mcp;
pub mod merge;
pub mod metrics;
pub mod otlp;
pub mod readonly;
pub mod ready;
pub mod store;
pub mod table;
pub mod text;
pub mod timewin;
pub mod tls;
pub mod trace;
pub mod units;

use std::process::ExitCode;

use cli::{Cli, Command};
use config::FileConfig;
use error::CliError;

/// The async runtime of a command: two workers (the agent is a guest on a
/// training node; it must not take every core). Its threads are named
/// `ingero-rt`, so the analysis can tell the agent's own preemptions of the
/// traced threads ([`analysis::attribution::AGENT_TASK_NAMES`]).
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ingero-rt")
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    tls::install_provider();
    let file = FileConfig::load(cli.config.as_deref())?;
    let config_path = cli.config.clone();
    if cli.command.only_prints(&file) {
        end_quietly_on_a_closed_pipe();
    }
    match cli.command {
        Command::Trace(args) => cmd::trace::run(&args, &file),
        Command::Query(args) => cmd::query::run(&args, &file),
        Command::Explain(args) => cmd::explain::run(&args, &file),
        Command::Merge(args) => cmd::merge::run(&args),
        Command::Export(args) => cmd::export::run(&args, &file),
        Command::Serve(args) => cmd::serve::run(&args, &file),
        Command::Certs(command) => cmd::certs::run(&command, &file),
        Command::Mcp(args) => mcp::run(&args, &file),
        Command::Config(args) => cmd::config::run(&args, config_path.as_deref()),
        Command::Check(args) => {
            let report = check::run();
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", check::render(&report));
            }
            Ok(if report.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// A command that only prints (`ingero query ... | head`) ends as soon as
/// its reader goes away, quietly, as other Unix tools do (killed by
/// `SIGPIPE`; the shell reports 141), instead of failing the next write.
/// The tracer, the servers and the exports keep Rust's default (the signal
/// ignored, a failed write seen as an error): they have state to close.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring a signal's default disposition before any thread
    // that could write to the pipe is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
