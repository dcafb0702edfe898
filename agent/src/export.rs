//! `ingero export --format perfetto`: a database as a trace for
//! ui.perfetto.dev, in one of two formats chosen by the output's name
//! ([`TraceFormat::for_path`]):
//!
//! - [`pftrace`]: Perfetto's native protobuf trace (`.pftrace`,
//!   `.perfetto-trace`): nested tracks, a clock domain per node, interned
//!   strings; about a third of the JSON's size;
//! - [`json`]: Chrome Trace Event JSON (anything else, `.json` by custom),
//!   which Perfetto reads as a legacy format and chrome://tracing reads too.
//!
//! Both show the same things (CUDA and driver calls, off-CPU spans, block
//! requests, NCCL collectives joined across ranks, process markers, causal
//! chains, page-allocation and CPU counters), both stream the database row
//! by row, and both fill the same [`ExportReport`]. The helpers here (the
//! node list, thread names, the events filter) are shared so the two agree
//! on what they export.

#![expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "the readers of both formats take the database's conventions by reference, as they did before the type became Copy"
)]

pub mod json;
pub mod pftrace;
mod protobuf;

use std::{collections::HashMap, io::Write, path::Path};

use rusqlite::Connection;

use crate::{
    analysis::dataset::{Conventions, well_typed},
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// What an export wrote, for the summary line (and `--json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    /// The file format written: `json` or `pftrace`.
    pub format: &'static str,
    /// Nodes with events in the window: one process track each.
    pub nodes: usize,
    /// Distinct (node, thread) pairs seen in the events.
    pub threads: usize,
    /// Slices: CUDA and driver calls, off-CPU spans, block I/O requests.
    pub slices: u64,
    /// Instant markers: process lifecycle and OOM events, causal chains.
    pub markers: u64,
    /// Counter samples: page-allocation rates and CPU busy %.
    pub counters: u64,
    /// NCCL collective calls (slices), joined across ranks by flows.
    pub collectives: u64,
}

/// Why an export failed; the output file may be incomplete.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the database failed (a damaged file, a table of an
    /// unexpected shape); SQLite's error.
    #[error("reading the database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Writing the trace file failed (disk full, permissions, a closed pipe).
    #[error("writing the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// The two trace formats `--format perfetto` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// Chrome Trace Event JSON ([`json`]).
    Json,
    /// Perfetto's native protobuf trace ([`pftrace`]).
    Protobuf,
}

impl TraceFormat {
    /// The format for an output file: protobuf when its name ends in
    /// `.pftrace` or `.perfetto-trace` (any case), JSON otherwise.
    pub fn for_path(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".pftrace") || name.ends_with(".perfetto-trace") {
            Self::Protobuf
        } else {
            Self::Json
        }
    }
}

/// Exports `conn` to `out` in `format`. `offsets` gives each node's clock
/// offset (ns ahead of the reference clock; nodes not listed have 0): the
/// JSON shifts the node's times by it, the protobuf trace records it in the
/// node's clock snapshot.
pub fn write(
    format: TraceFormat,
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> Result<ExportReport, ExportError> {
    match format {
        TraceFormat::Json => json::export(conn, out, window, offsets),
        TraceFormat::Protobuf => pftrace::export(conn, out, window, offsets),
    }
}

/// Exports `conn` to `out` as Chrome JSON (see [`json::export`]).
pub fn export(
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> Result<ExportReport, ExportError> {
    json::export(conn, out, window, offsets)
}

/// A node with events in the window.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    /// Its name ('' for a database without a `node` column).
    pub node: String,
    /// The lowest and highest rank of its events, if recorded.
    pub min_rank: Option<i64>,
    pub max_rank: Option<i64>,
    /// Its earliest `timestamp - duration`, on its own clock.
    pub first_start: i64,
}

/// The `WHERE` clause of the events an export reads: well-typed rows, in
/// the window if there is one.
pub(crate) fn events_filter(conv: &Conventions, window: Option<Window>) -> String {
    let typed = well_typed(conv, &["ret_code"]);
    window.map_or(format!("WHERE {typed}"), |w| {
        format!("WHERE timestamp BETWEEN {} AND {} AND {typed}", w.from, w.to)
    })
}

/// The nodes with events passing `filter`, by name (one aggregate query).
pub(crate) fn node_list(
    conn: &Connection,
    conv: &Conventions,
    filter: &str,
) -> rusqlite::Result<Vec<NodeInfo>> {
    let node_col = if conv.has_node { "node" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    let mut stmt = conn.prepare(&format!(
        "SELECT coalesce({node_col}, ''), min({rank_col}), max({rank_col}), min(timestamp - duration)
         FROM events {filter} GROUP BY 1 ORDER BY 1"
    ))?;
    stmt.query_map([], |r| {
        Ok(NodeInfo {
            node: r.get(0)?,
            min_rank: r.get(1)?,
            max_rank: r.get(2)?,
            first_start: r.get(3)?,
        })
    })?
    .collect()
}

/// Process and thread names by (node, pid), from `process_names`.
pub(crate) fn thread_names(
    conn: &Connection,
    conv: &Conventions,
) -> rusqlite::Result<HashMap<(String, u32), String>> {
    if !table_exists(conn, "process_names")? {
        return Ok(HashMap::new());
    }
    let n = if conv.has_node && has_column(conn, "process_names", "node")? {
        "node"
    } else {
        "''"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {n}, pid, name FROM process_names
         WHERE typeof({n}) = 'text' AND typeof(pid) = 'integer' AND typeof(name) = 'text'"
    ))?;
    stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32),
            r.get::<_, String>(2)?,
        ))
    })?
    .collect()
}

/// A node's display name: `gpu-node-01 (rank 0)`, `(ranks 0-7)` for a node
/// running several, `node` for the unnamed node of an old database.
pub(crate) fn node_label(node: &str, min_rank: Option<i64>, max_rank: Option<i64>) -> String {
    let name = if node.is_empty() { "node" } else { node };
    match (min_rank, max_rank) {
        (Some(a), Some(b)) if a != b => format!("{name} (ranks {a}-{b})"),
        (Some(a), _) => format!("{name} (rank {a})"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_name_picks_the_format() {
        for (name, format) in [
            ("trace.pftrace", TraceFormat::Protobuf),
            ("/tmp/run.PFTRACE", TraceFormat::Protobuf),
            ("a.perfetto-trace", TraceFormat::Protobuf),
            ("trace.json", TraceFormat::Json),
            ("trace", TraceFormat::Json),
            ("pftrace", TraceFormat::Json),
            ("trace.pftrace.json", TraceFormat::Json),
        ] {
            assert_eq!(TraceFormat::for_path(Path::new(name)), format, "{name}");
        }
    }

    #[test]
    fn node_labels_name_the_ranks() {
        assert_eq!(
            node_label("gpu-node-01", Some(0), Some(0)),
            "gpu-node-01 (rank 0)"
        );
        assert_eq!(
            node_label("gpu-node-01", Some(0), Some(7)),
            "gpu-node-01 (ranks 0-7)"
        );
        assert_eq!(node_label("", None, None), "node");
    }
}
