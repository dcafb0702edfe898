//! The fleet client's settings, resolved along the one path (defaults,
//! `fleet:` in `ingero.yaml`, `INGERO_NODES`, flags) into a ready
//! [`FleetSetup`]: which agents, how to reach them, how long to wait, and
//! when a clock offset is worth a warning. Used by every fleet command and
//! by `ingero mcp`.

use std::{path::PathBuf, time::Duration};

use ingero_fleet::{ClientTls, Fleet, FleetOptions};

use super::{ConfigError, FileConfig, defaults, expand_home, read_token};
use crate::cli::FleetArgs;

/// The agents to ask and when to warn about their clocks.
#[derive(Debug, Clone)]
pub struct FleetSetup {
    /// The clients, one per agent.
    pub fleet: Fleet,
    /// A clock offset past this is a warning.
    pub skew_threshold: Duration,
}

/// The fleet the flags (or `--fleet` and the file) name; `None` when no
/// node list is given (the command reads a local database).
pub fn resolve(args: &FleetArgs, file: &FileConfig) -> Result<Option<FleetSetup>, ConfigError> {
    let nodes = if !args.nodes.is_empty() {
        args.nodes
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    } else if args.fleet {
        if file.fleet.nodes.is_empty() {
            return Err(ConfigError::Usage(
                "--fleet needs fleet.nodes in ingero.yaml (or give --nodes host:port,...)".into(),
            ));
        }
        file.fleet.nodes.clone()
    } else {
        return Ok(None);
    };
    let pick =
        |flag: &Option<PathBuf>, conf: &Option<PathBuf>| flag.as_deref().or(conf.as_deref()).map(expand_home);
    let token = match pick(&args.token_file, &file.fleet.token_file) {
        Some(path) => Some(
            String::from_utf8(read_token(&path)?)
                .map_err(|_| ConfigError::Usage(format!("{}: the token is not UTF-8", path.display())))?,
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
    let options = options(args, file);
    let fleet = Fleet::new(&nodes, &tls, options).map_err(|e| ConfigError::Usage(e.to_string()))?;
    Ok(Some(FleetSetup {
        fleet,
        skew_threshold: args
            .clock_skew_threshold
            .or(file.fleet.clock_skew_threshold)
            .map_or(defaults::CLOCK_SKEW_THRESHOLD, |d| d.0),
    }))
}

/// The fleet options when nothing is configured.
#[must_use]
pub fn default_options() -> FleetOptions {
    FleetOptions {
        concurrency: defaults::CONCURRENCY,
        timeout: defaults::NODE_TIMEOUT,
        deadline: defaults::DEADLINE,
        clock_samples: defaults::CLOCK_SAMPLES,
    }
}

/// Timeouts and concurrency: flag, then file, then default. The deadline
/// is never shorter than one agent's timeout.
#[must_use]
pub fn options(args: &FleetArgs, file: &FileConfig) -> FleetOptions {
    let timeout = args
        .node_timeout
        .or(file.fleet.timeout)
        .map_or(defaults::NODE_TIMEOUT, |d| d.0);
    let deadline = args
        .deadline
        .or(file.fleet.deadline)
        .map_or(defaults::DEADLINE, |d| d.0);
    FleetOptions {
        concurrency: args
            .concurrency
            .or(file.fleet.concurrency)
            .unwrap_or(defaults::CONCURRENCY),
        timeout,
        deadline: deadline.max(timeout),
        clock_samples: defaults::CLOCK_SAMPLES,
    }
}
