//! The fleet client's settings, resolved along the one path (defaults,
//! `fleet:` in `ingero.yaml`, `INGERO_NODES`, flags) into a ready
//! [`FleetSetup`]: which agents, how to reach them, how long to wait, and
//! when a clock offset is worth a warning. Used by every fleet command and
//! by `ingero mcp`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

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
    /// A collective entered by some ranks and not others this long is hung
    /// (`fleet.hang_after`; `explain --hang-after` overrides it).
    pub hang_after: Duration,
}

/// Whether the command was also given a local database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// No `-d`, or one that only `INGERO_DB` set: the fleet may be asked.
    None,
    /// `-d DB` on the command line: it outranks `INGERO_NODES`, and goes
    /// with neither `--nodes` nor `--fleet`.
    Flag,
}

impl Local {
    /// `Flag` when `db` was given and is not just `INGERO_DB`'s value.
    #[must_use]
    pub fn from_flag(db: Option<&Path>) -> Self {
        let from_env = std::env::var_os("INGERO_DB").map(PathBuf::from);
        match db {
            Some(d) if from_env.as_deref() != Some(d) => Self::Flag,
            _ => Self::None,
        }
    }
}

/// Node addresses as given: trimmed, empty entries dropped.
fn addresses<'a>(list: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    list.into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The fleet the flags (or `--fleet` and the file, or `INGERO_NODES`)
/// name; `None` when the command reads a local database. Precedence:
/// `--nodes`/`--fleet`, then `-d`, then `INGERO_NODES`; `-d` together
/// with `--nodes` or `--fleet` is an error.
pub fn resolve(args: &FleetArgs, file: &FileConfig, local: Local) -> Result<Option<FleetSetup>, ConfigError> {
    let explicit = !args.nodes.is_empty() || args.fleet;
    if explicit && local == Local::Flag {
        return Err(ConfigError::Usage(
            "-d names a local database and --nodes/--fleet name agents: give one of them".into(),
        ));
    }
    let from_env = std::env::var("INGERO_NODES").unwrap_or_default();
    let nodes = if !args.nodes.is_empty() {
        addresses(args.nodes.iter().map(String::as_str))
    } else if args.fleet {
        if file.fleet.nodes.is_empty() {
            return Err(ConfigError::Usage(
                "--fleet needs fleet.nodes in ingero.yaml (or give --nodes host:port,...)".into(),
            ));
        }
        addresses(file.fleet.nodes.iter().map(String::as_str))
    } else if local == Local::None && !from_env.trim().is_empty() {
        addresses(from_env.split(','))
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
        hang_after: hang_after(None, file),
    }))
}

/// How long a collective may be entered by some ranks and not others
/// before explain calls it hung: flag, then `fleet.hang_after`, then 30 s.
#[must_use]
pub fn hang_after(flag: Option<crate::units::HumanDuration>, file: &FileConfig) -> Duration {
    flag.or(file.fleet.hang_after)
        .map_or(defaults::HANG_AFTER, |d| d.0)
}

/// The fleet options when nothing is configured.
#[must_use]
pub fn default_options() -> FleetOptions {
    FleetOptions {
        concurrency: defaults::CONCURRENCY,
        timeout: defaults::NODE_TIMEOUT,
        deadline: defaults::DEADLINE,
        clock_samples: defaults::CLOCK_SAMPLES,
        max_answer_bytes: defaults::MAX_ANSWER.0,
    }
}

/// Timeouts and concurrency: flag, then file, then default. The deadline
/// bounds the whole command: one agent's timeout never runs past it.
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
        timeout: timeout.min(deadline),
        deadline,
        clock_samples: defaults::CLOCK_SAMPLES,
        max_answer_bytes: args
            .max_answer
            .or(file.fleet.max_answer_size)
            .unwrap_or(defaults::MAX_ANSWER)
            .0,
    }
}
