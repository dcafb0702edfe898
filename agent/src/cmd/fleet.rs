//! What the fleet forms of `query`, `explain` and `export` share (`--nodes`
//! or `--fleet`): the fan-out client from flags over `ingero.yaml`, the
//! warnings (one line per node that did not answer, one per clock off by
//! more than the threshold), the per-node JSON, and the exit code: 0 when
//! every node answered, 3 when some did, 4 when none did (2 when none
//! answered and the ones reached refused the request itself, e.g. bad SQL).

use std::{collections::HashMap, future::Future, path::PathBuf, process::ExitCode, time::Duration};

use ingero_fleet::{ClientTls, Fleet, FleetError, FleetOptions, NodeAnswer, Outcome, skew::format_offset};
use serde_json::{Value, json};

use crate::{
    cli::FleetArgs,
    config::{self, FileConfig},
    error::CliError,
};

/// Per-agent timeout when neither the flag nor the file sets one.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// Clock-skew warning threshold when neither the flag nor the file sets one.
const DEFAULT_SKEW_THRESHOLD: Duration = Duration::from_millis(10);
/// Clock exchanges per agent.
const CLOCK_SAMPLES: usize = 5;

/// The agents to ask and when to warn about their clocks.
#[derive(Debug, Clone)]
pub struct FleetSetup {
    pub fleet: Fleet,
    pub skew_threshold: Duration,
}

/// A fleet and the runtime its requests run on (for the commands).
#[derive(Debug)]
pub struct FleetRun {
    pub fleet: Fleet,
    pub skew_threshold: Duration,
    runtime: tokio::runtime::Runtime,
}

/// The fleet the flags name, with a runtime; `None` when the command
/// should read a local database.
pub fn connect(args: &FleetArgs, file: &FileConfig) -> Result<Option<FleetRun>, CliError> {
    let Some(FleetSetup {
        fleet,
        skew_threshold,
    }) = setup(args, file)?
    else {
        return Ok(None);
    };
    let runtime = crate::cmd::runtime()?;
    Ok(Some(FleetRun {
        fleet,
        skew_threshold,
        runtime,
    }))
}

/// The fleet the flags (or `--fleet` and the file) name; `None` when no
/// node list is given.
pub fn setup(args: &FleetArgs, file: &FileConfig) -> Result<Option<FleetSetup>, CliError> {
    let nodes = if !args.nodes.is_empty() {
        args.nodes
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    } else if args.fleet {
        if file.fleet.nodes.is_empty() {
            return Err(CliError::BadInput(
                "--fleet needs fleet.nodes in ingero.yaml (or give --nodes host:port,...)".into(),
            ));
        }
        file.fleet.nodes.clone()
    } else {
        return Ok(None);
    };
    let pick = |flag: &Option<PathBuf>, conf: &Option<PathBuf>| {
        flag.as_deref().or(conf.as_deref()).map(config::expand_home)
    };
    let token = match pick(&args.token_file, &file.fleet.token_file) {
        Some(path) => Some(
            String::from_utf8(crate::api::listen::read_token(&path)?)
                .map_err(|_| CliError::BadInput(format!("{}: the token is not UTF-8", path.display())))?,
        ),
        None => None,
    };
    let tls = ClientTls {
        ca_cert: pick(&args.ca_cert, &file.fleet.tls.ca_cert),
        client_cert: pick(&args.client_cert, &file.fleet.tls.client_cert),
        client_key: pick(&args.client_key, &file.fleet.tls.client_key),
        no_tls: args.no_tls,
        token,
    };
    let timeout = args
        .node_timeout
        .or(file.fleet.timeout)
        .map_or(DEFAULT_NODE_TIMEOUT, |d| d.0);
    let options = FleetOptions {
        concurrency: args.concurrency,
        timeout,
        deadline: args.deadline.0.max(timeout),
        clock_samples: CLOCK_SAMPLES,
    };
    let fleet = Fleet::new(&nodes, &tls, options).map_err(|e| CliError::BadInput(e.to_string()))?;
    Ok(Some(FleetSetup {
        fleet,
        skew_threshold: args
            .clock_skew_threshold
            .or(file.fleet.clock_skew_threshold)
            .map_or(DEFAULT_SKEW_THRESHOLD, |d| d.0),
    }))
}

/// One line per node that did not answer and per clock off by more than
/// `threshold`. `corrected`: whether the output's times are corrected by
/// the offsets.
pub fn warnings<T>(answers: &[NodeAnswer<T>], threshold: Duration, corrected: bool) -> Vec<String> {
    let mut lines: Vec<String> = answers
        .iter()
        .filter_map(|a| Some(format!("{}: no answer: {}", a.label(), a.result.as_ref().err()?)))
        .collect();
    let threshold = i64::try_from(threshold.as_nanos()).unwrap_or(i64::MAX);
    for a in answers.iter().filter(|a| a.result.is_ok()) {
        if let Some(c) = a.clock.filter(|c| c.offset_ns.abs() > threshold) {
            lines.push(format!(
                "{}'s clock is {} {} ours (±{}); {}",
                a.name(),
                format_offset(c.offset_ns).trim_start_matches(['+', '-']),
                if c.offset_ns > 0 { "ahead of" } else { "behind" },
                format_offset(c.error_ns).trim_start_matches('+'),
                if corrected {
                    "its times are corrected by it"
                } else {
                    "its timestamps are on its own clock"
                }
            ));
        }
    }
    lines
}

/// Fleet commands take `--since` only: the other window flags are
/// anchored on one database's clock.
pub fn check_window(window: &crate::cli::WindowArgs) -> Result<Option<String>, CliError> {
    if window.from.is_some() || window.to.is_some() {
        return Err(CliError::BadInput(
            "with --nodes, give the window as --since DURATION (each agent counts back from its newest event)".into(),
        ));
    }
    Ok(window.since.map(|d| format!("{}ms", d.0.as_millis())))
}

impl FleetRun {
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// [`warnings`] on stderr.
    pub fn warn<T>(&self, answers: &[NodeAnswer<T>], corrected: bool) {
        for line in warnings(answers, self.skew_threshold, corrected) {
            eprintln!("ingero: warning: {line}");
        }
    }
}

/// The exit code of a fan-out: 0 all answered, 3 some, an error if none.
pub fn finish<T>(answers: &[NodeAnswer<T>]) -> Result<ExitCode, CliError> {
    match Outcome::of(answers) {
        Outcome::AllAnswered => Ok(ExitCode::SUCCESS),
        Outcome::Partial => Ok(ExitCode::from(3)),
        Outcome::NoneAnswered => {
            // Nodes that were reached but refused the request (bad SQL, a
            // bad window): the input is at fault, not the fleet.
            let refused = answers.iter().find_map(|a| match &a.result {
                Err(FleetError::Http {
                    status: 400 | 403 | 408,
                    message,
                }) => Some(message.clone()),
                _ => None,
            });
            match refused {
                Some(message) => Err(CliError::BadInput(format!(
                    "the nodes refused the request: {message}"
                ))),
                None => Err(CliError::NoNodeAnswered(answers.len())),
            }
        }
    }
}

/// A node's part of the JSON output: address, node, error, clock, time.
pub fn node_json<T>(a: &NodeAnswer<T>, extra: Value) -> Value {
    let mut v = json!({
        "address": a.address,
        "node": a.node,
        "ok": a.result.is_ok(),
        "error": a.result.as_ref().err().map(|e| json!({ "kind": e.class(), "message": e.to_string() })),
        "clock": a.clock,
        "elapsed_ms": a.elapsed_ms,
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    v
}

/// Each answering node's clock offset (ns to subtract to get our clock).
pub fn offsets<T>(answers: &[NodeAnswer<T>]) -> HashMap<String, i64> {
    answers
        .iter()
        .filter_map(|a| Some((a.node.clone()?, a.clock?.offset_ns)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(result: Result<u32, FleetError>) -> NodeAnswer<u32> {
        NodeAnswer {
            address: "10.0.0.1:8080".into(),
            node: None,
            result,
            clock: None,
            elapsed_ms: 1.0,
        }
    }

    fn code(r: Result<ExitCode, CliError>) -> u8 {
        match r {
            Ok(c) if c == ExitCode::SUCCESS => 0,
            Ok(c) if c == ExitCode::from(3) => 3,
            Ok(_) => 255,
            Err(e) => e.exit_code(),
        }
    }

    #[test]
    fn exit_codes_tell_all_some_and_none_apart() {
        let refused = || Err(FleetError::Refused("Connection refused".into()));
        assert_eq!(code(finish(&[answer(Ok(1)), answer(Ok(2))])), 0);
        assert_eq!(code(finish(&[answer(Ok(1)), answer(refused())])), 3);
        assert_eq!(
            code(finish(&[
                answer(refused()),
                answer(Err(FleetError::Timeout(Duration::from_secs(5))))
            ])),
            4
        );
        // Reached but refused: the request is at fault.
        let denied = Err(FleetError::Http {
            status: 403,
            message: "refused: DELETE from events".into(),
        });
        let err = finish(&[answer(denied), answer(refused())]).expect_err("nobody answered");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("DELETE from events"), "{err}");
    }
}
