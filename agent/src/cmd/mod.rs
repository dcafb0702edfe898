//! One module per command: each turns parsed arguments (after the
//! configuration layers) into output and an exit code.

pub mod certs;
pub mod config;
pub mod explain;
pub mod export;
pub mod fleet;
pub mod fleet_explain;
pub mod fleet_export;
pub mod merge;
pub mod query;
pub mod serve;
pub mod trace;
pub mod verdict;

use std::path::{Path, PathBuf};

use crate::{
    api::{
        ApiSettings,
        listen::{ListenOptions, TlsSettings},
    },
    cli::{ApiArgs, WindowArgs},
    config::{FileConfig, defaults, expand_home, read_token, resolve_db, resolve_state_dir},
    error::CliError,
    timewin::{self, Window},
};

/// The database a command reads: the flag, else the configured default.
pub fn database(flag: Option<&Path>, file: &FileConfig) -> Result<PathBuf, CliError> {
    Ok(resolve_db(flag, file)?)
}

/// The window the flags describe, anchored on the database's events.
/// Without `--since`, `--from` or `--to` the database is not probed at all.
pub fn window(conn: &rusqlite::Connection, args: &WindowArgs) -> Result<Option<Window>, CliError> {
    if args.since.is_none() && args.from.is_none() && args.to.is_none() {
        return Ok(None);
    }
    let range =
        timewin::event_range(conn).map_err(|e| CliError::Failed(format!("cannot read the database: {e}")))?;
    timewin::resolve(
        range,
        args.since.map(|d| d.0),
        args.from.as_deref(),
        args.to.as_deref(),
    )
    .map_err(CliError::BadInput)
}

/// The API's listen options and settings (flags over `ingero.yaml`);
/// `None` when no listen address is configured.
pub fn api_options(
    args: &ApiArgs,
    file: &FileConfig,
    node: &str,
    db: &Path,
    default_since: Option<std::time::Duration>,
) -> Result<Option<(ListenOptions, ApiSettings)>, CliError> {
    let Some(addr) = args.listen.or(file.agent.listen) else {
        return Ok(None);
    };
    let expand = |p: &Option<PathBuf>| p.as_deref().map(expand_home);
    let token_file = expand(&args.token_file).or_else(|| expand(&file.agent.token_file));
    let tls = if args.no_tls {
        None
    } else {
        let state_dir = resolve_state_dir(args.state_dir.as_deref(), file)?;
        Some(TlsSettings::new(
            expand(&args.tls_cert).or_else(|| expand(&file.agent.tls_cert)),
            expand(&args.tls_key).or_else(|| expand(&file.agent.tls_key)),
            expand(&args.ca_cert).or_else(|| expand(&file.agent.ca_cert)),
            &state_dir,
            node,
        )?)
    };
    let token = token_file.as_deref().map(read_token).transpose()?;
    let max_queries = args
        .max_queries
        .or(file.agent.max_queries)
        .unwrap_or(defaults::MAX_QUERIES);
    if max_queries == 0 {
        return Err(CliError::BadInput("--max-queries must be at least 1".into()));
    }
    let listen = ListenOptions {
        addr,
        tls,
        token_file,
    };
    crate::api::listen::validate(&listen)?;
    Ok(Some((
        listen,
        ApiSettings {
            node: node.to_owned(),
            db: db.to_path_buf(),
            max_queries,
            query_timeout: args
                .query_timeout
                .or(file.agent.query_timeout)
                .map_or(defaults::API_QUERY_TIMEOUT, |d| d.0),
            max_rows: crate::api::MAX_ROWS,
            token,
            default_since,
            limits: crate::api::ConnLimits {
                max_answer_bytes: usize::try_from(
                    args.max_answer_size
                        .or(file.agent.max_answer_size)
                        .unwrap_or(defaults::MAX_ANSWER_BYTES)
                        .0,
                )
                .unwrap_or(usize::MAX),
                idle_timeout: args
                    .idle_timeout
                    .or(file.agent.idle_timeout)
                    .map_or(defaults::IDLE_TIMEOUT, |d| d.0),
                header_timeout: args
                    .header_timeout
                    .or(file.agent.header_timeout)
                    .map_or(defaults::HEADER_TIMEOUT, |d| d.0),
                max_connections_per_address: args
                    .max_connections_per_address
                    .or(file.agent.max_connections_per_address)
                    .unwrap_or(defaults::MAX_CONNECTIONS_PER_ADDRESS)
                    .max(1),
            },
        },
    )))
}

/// Writes a daemon's ready file (see [`crate::ready`]): `served` is the
/// running API and how it listens, when there is one.
pub(crate) fn announce(
    path: &Path,
    node: &str,
    db: &Path,
    session_id: Option<i64>,
    served: Option<(&crate::api::listen::RunningApi, &ListenOptions)>,
) -> Result<(), CliError> {
    crate::ready::announce(
        path,
        &crate::ready::Ready {
            pid: std::process::id(),
            node,
            db,
            session_id,
            listen: served.map(|(running, _)| running.addr),
            scheme: served.map(|(_, listen)| if listen.tls.is_some() { "https" } else { "http" }),
        },
    )
    .map_err(|e| CliError::Failed(format!("cannot write the ready file {}: {e}", path.display())))
}
