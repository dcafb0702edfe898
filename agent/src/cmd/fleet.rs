//! What the fleet forms of `query`, `explain` and `export` share (`--nodes`
//! or `--fleet`): the fleet from the configuration with a runtime to run
//! it on, the warnings on stderr, the per-node JSON, and the exit code: 0
//! when every node answered, 3 when some did, 4 when none did (2 when none
//! answered and the ones reached refused the request itself, e.g. bad SQL).

use std::{future::Future, process::ExitCode};

use ingero_api::Since;
use ingero_fleet::{NodeAnswer, Outcome, refusal, warnings};
use serde_json::{Value, json};

use crate::{
    cli::FleetArgs,
    config::{
        FileConfig,
        fleet::{self, FleetSetup},
    },
    error::CliError,
};

/// A fleet and the runtime its requests run on.
#[derive(Debug)]
pub struct FleetRun {
    /// The agents to ask and the clock-skew warning threshold.
    pub setup: FleetSetup,
    runtime: tokio::runtime::Runtime,
}

/// The fleet the flags name, with a runtime; `None` when the command
/// should read a local database (`db`: the command's `-d`, if any).
pub fn connect(
    args: &FleetArgs,
    file: &FileConfig,
    db: Option<&std::path::Path>,
) -> Result<Option<FleetRun>, CliError> {
    let Some(setup) = fleet::resolve(args, file, fleet::Local::from_flag(db))? else {
        return Ok(None);
    };
    Ok(Some(FleetRun {
        setup,
        runtime: crate::runtime()?,
    }))
}

/// Fleet commands take `--since` only: the other window flags are
/// anchored on one database's clock.
pub fn check_window(window: &crate::cli::WindowArgs) -> Result<Option<Since>, CliError> {
    if window.from.is_some() || window.to.is_some() {
        return Err(CliError::BadInput(
            "with --nodes, give the window as --since DURATION (each agent counts back from its newest event)".into(),
        ));
    }
    Ok(window.since.map(|d| Since::Last(d.0)))
}

impl FleetRun {
    /// Runs a fleet request to completion on this run's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Nodes that did not answer and clocks off past the threshold, on
    /// stderr. `corrected`: whether the output's times are on our clock.
    pub fn warn<T>(&self, answers: &[NodeAnswer<T>], corrected: bool) {
        for line in warnings(answers, self.setup.skew_threshold, corrected) {
            // Agents' messages are theirs: no control character gets through.
            crate::say!("ingero: warning: {}", crate::text::sanitize(&line, 2000));
        }
    }
}

/// The exit code of a fan-out: 0 all answered, 3 some, an error if none.
pub fn finish<T>(answers: &[NodeAnswer<T>]) -> Result<ExitCode, CliError> {
    match Outcome::of(answers) {
        Outcome::AllAnswered => Ok(ExitCode::SUCCESS),
        Outcome::Partial => Ok(ExitCode::from(3)),
        // Nodes that were reached but refused the request (bad SQL, a bad
        // window): the input is at fault, not the fleet.
        Outcome::NoneAnswered => Err(match refusal(answers) {
            Some(message) => CliError::BadInput(format!("the nodes refused the request: {message}")),
            None => CliError::NoNodeAnswered(answers.len()),
        }),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ingero_fleet::FleetError;

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
