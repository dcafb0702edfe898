//! The Parquet archive: what `ingero export --format parquet -o DIR` and
//! `ingero trace --archive DIR` write, for engines built for fleet-wide SQL
//! (Spark, Trino, DuckDB) to read.
//!
//! Layout (Hive partitions, readable from shared storage by many engines
//! at once):
//!
//! ```text
//! DIR/table=events/node=N/date=YYYY-MM-DD/hour=HH/part-....parquet   (and nccl_collectives)
//! DIR/table=sessions/node=N/part-....parquet                       (and sources, ops,
//!                                                                   process_names,
//!                                                                   causal_chains, nccl_comms)
//! ```
//!
//! Invariants, whatever happens to the process or the disk:
//!
//! - A file is written under a hidden temporary name (`.part-....tmp`, which
//!   Spark, Trino and DuckDB pass over), synced, and renamed into place only
//!   when complete: a reader sees whole files or nothing.
//! - Every visible file holds rows no other visible file holds. The live
//!   archive names a window's files after the window's first rowid, so a
//!   window written again after a crash (its end not yet recorded)
//!   replaces its earlier files instead of adding to them; its end is
//!   recorded in the database (`archive_state`) only after its files are
//!   in place.
//! - Each file's key-value metadata (`ingero.*`) says its table, node, row
//!   count, session ids, rowid range and (for events) the first and last
//!   event id.
//! - Memory stays bounded whatever the database size: rows are streamed
//!   from SQLite, buffered at most [`sink::BATCH_ROWS`] per file, and row
//!   groups are flushed at [`sink::ROW_GROUP_ROWS`] rows or when all open
//!   files together pass [`sink::MEMORY_BUDGET`].

pub mod export;
pub mod live;
pub mod sink;
pub mod tables;

use std::path::PathBuf;

pub use export::{ExportOptions, ExportSummary, export};
pub use live::{Archiver, ArchiverOptions, ArchiverReport};

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the database failed (a damaged file, a table of an
    /// unexpected shape): SQLite's error.
    #[error("cannot read the database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A file or directory of the archive cannot be written (disk full,
    /// permissions, a read-only file system); nothing partial is left
    /// visible.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS's or the Parquet writer's message.
        message: String,
    },
    /// The request cannot be carried out as given (the output is a file,
    /// already holds these nodes, rows without a node name); the sentence
    /// says what to do.
    #[error("{0}")]
    Refused(String),
}

impl ArchiveError {
    pub(crate) fn write(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Write {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

/// A Hive partition value: letters, digits, '.', '_' and '-' as they are,
/// anything else as `%XX` (what Hive, Spark and Trino decode).
#[must_use]
pub fn escape_partition(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Nanoseconds in an hour: the hourly partitions' width.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// `date=YYYY-MM-DD/hour=HH` of the UTC hour numbered `hour` (hours since
/// the Unix epoch).
#[must_use]
pub fn hour_partition(hour: i64) -> String {
    let at = crate::timewin::format_instant(hour.saturating_mul(HOUR_NS));
    format!("date={}/hour={}", &at[..10], &at[11..13])
}

/// A random 64-bit name, in hex, for one database's (or one export's)
/// files.
#[must_use]
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No system randomness: the time and pid still differ between runs.
        let mixed = crate::clock::unix_ns().unsigned_abs() ^ (u64::from(std::process::id()) << 40);
        bytes = mixed.to_be_bytes();
    }
    bytes.iter().fold(String::with_capacity(16), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_hive_paths() {
        assert_eq!(escape_partition("gpu-node-01"), "gpu-node-01");
        assert_eq!(escape_partition("a/b=c d"), "a%2Fb%3Dc%20d");
        // 2026-12-02T07:xx UTC.
        let ns = 1_796_196_000_000_000_000_i64;
        assert_eq!(crate::timewin::format_instant(ns), "2026-12-02T07:20:00.000Z");
        assert_eq!(hour_partition(ns.div_euclid(HOUR_NS)), "date=2026-12-02/hour=07");
        let t = new_token();
        assert_eq!(t.len(), 16);
        assert_ne!(t, new_token());
    }
}
