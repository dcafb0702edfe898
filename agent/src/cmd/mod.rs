//! One module per command: each turns parsed arguments (after the
//! configuration layers) into output and an exit code.

pub mod explain;
pub mod export;
pub mod merge;
pub mod query;
pub mod trace;

use std::path::{Path, PathBuf};

use crate::{
    cli::WindowArgs,
    config::{self, FileConfig},
    error::CliError,
    timewin::{self, Window},
};

/// The database a command reads: the flag, else the configured default.
pub fn database(flag: Option<&Path>, file: &FileConfig) -> Result<PathBuf, CliError> {
    Ok(config::resolve_db(flag, file)?)
}

/// The window the flags describe, anchored on the database's events.
pub fn window(conn: &rusqlite::Connection, args: &WindowArgs) -> Result<Option<Window>, CliError> {
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
