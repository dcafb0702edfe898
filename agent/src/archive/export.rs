//! `ingero export --format parquet -o DIR`: a whole database (one node's,
//! a merged cluster's, another tracer's) as the archive layout, for
//! air-gapped copies and for assembling a fleet's archive from databases.
//!
//! Every table is streamed into its own [`Sink`]; the files stay hidden
//! until all of them are complete, then are renamed into place together,
//! so a failure (a full disk, a killed process) leaves no visible file.
//! Hourly tables are read in timestamp order (the timestamp index), so
//! each partition's file holds its hour in order and the open files are
//! those of the current hour. A directory that already holds a node this
//! database holds is refused: the same events would be there twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::Connection;
use serde::Serialize;

use super::{
    ArchiveError, escape_partition, new_token,
    sink::{Pending, Sink, SinkOptions},
    tables::{self, Layout, TableSpec},
};
use crate::{store::schema::table_exists, timewin::Window};

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The archive's root directory (created if missing).
    pub dir: PathBuf,
    /// Only events and NCCL calls in this time range; the small tables
    /// are written whole.
    pub window: Option<Window>,
    /// Node name for rows without one (databases of other tracers).
    pub forced_node: Option<String>,
}

/// One table's share of an export.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSummary {
    /// Rows written.
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// What an export wrote (printed, or as JSON with `--json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportSummary {
    /// The archive's root directory.
    pub dir: PathBuf,
    /// The nodes written.
    pub nodes: Vec<String>,
    /// Per table.
    pub tables: BTreeMap<String, TableSummary>,
    /// Files written in all.
    pub files: u64,
    /// Bytes written in all.
    pub bytes: u64,
    /// Rows left out because a value does not fit its column (text in an
    /// integer column, a NULL where the contract has none).
    pub skipped: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Nodes that already have files under `dir` (any table).
fn nodes_present(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for table in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for node in std::fs::read_dir(table.path()).into_iter().flatten().flatten() {
            let name = node.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("node=")
                && holds_parquet(&node.path())
            {
                out.insert(n.to_owned());
            }
        }
    }
    out
}

/// Whether a directory holds a visible Parquet file, at any depth.
fn holds_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            holds_parquet(&p)
        } else {
            !name.starts_with('.') && name.ends_with(".parquet")
        }
    })
}

/// The nodes a database says it holds without a scan: its sessions and
/// id counters (rows of other nodes are caught after the scan).
pub(crate) fn declared_nodes(conn: &Connection, forced: Option<&str>) -> rusqlite::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (table, col) in [("sessions", "node"), ("id_counters", "node")] {
        if table_exists(conn, table)? && crate::store::schema::has_column(conn, table, col)? {
            let mut stmt = conn.prepare(&format!(
                "SELECT DISTINCT {col} FROM {table} WHERE typeof({col}) = 'text' AND {col} <> ''"
            ))?;
            for n in stmt.query_map([], |r| r.get::<_, String>(0))? {
                out.insert(n?);
            }
        }
    }
    if let Some(f) = forced {
        out.insert(f.to_owned());
    }
    Ok(out)
}

fn refuse_present(
    dir: &Path,
    present: &BTreeSet<String>,
    nodes: &BTreeSet<String>,
) -> Result<(), ArchiveError> {
    let clash: Vec<&str> = nodes
        .iter()
        .filter(|n| present.contains(&escape_partition(n)))
        .map(String::as_str)
        .collect();
    if clash.is_empty() {
        return Ok(());
    }
    Err(ArchiveError::Refused(format!(
        "{} already holds an archive of node(s) {}: export into a new directory, or remove their node=... folders first (the same events would be there twice)",
        dir.display(),
        clash.join(", ")
    )))
}

/// Writes the database as an archive under `opts.dir`; `progress` gets a
/// line every few seconds of a long export.
pub fn export(
    conn: &Connection,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ExportSummary, ArchiveError> {
    let started = Instant::now();
    if opts.dir.exists() && !opts.dir.is_dir() {
        return Err(ArchiveError::Refused(format!(
            "{} is a file: give -o a directory (new or holding an archive of other nodes)",
            opts.dir.display()
        )));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| ArchiveError::write(&opts.dir, e))?;
    let forced = opts.forced_node.as_deref();
    if !crate::store::schema::has_column(conn, "events", "node")? && forced.is_none() {
        return Err(ArchiveError::Refused(
            "this database has no node column (another tracer's): pass --force-node NAME to name its node"
                .into(),
        ));
    }
    let present = nodes_present(&opts.dir);
    refuse_present(&opts.dir, &present, &declared_nodes(conn, forced)?)?;

    let token = new_token();
    let window_label = opts.window.map_or_else(
        || "export".to_owned(),
        |w| {
            format!(
                "export {} .. {}",
                crate::timewin::format_instant(w.from),
                crate::timewin::format_instant(w.to)
            )
        },
    );
    let sink_opts = SinkOptions {
        dir: opts.dir.clone(),
        stem: format!("part-{token}"),
        token: token.clone(),
        window: window_label,
    };
    let mut summary = ExportSummary {
        dir: opts.dir.clone(),
        ..ExportSummary::default()
    };
    let mut pending = Pending::default();
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    for spec in tables::TABLES.iter().filter(|t| !t.per_node_copy) {
        let filter = match (spec.layout, opts.window) {
            (Layout::Hourly, Some(w)) => format!("WHERE timestamp BETWEEN {} AND {}", w.from, w.to),
            _ => String::new(),
        };
        let order = if spec.layout == Layout::Hourly {
            "ORDER BY timestamp"
        } else {
            "ORDER BY rowid"
        };
        let Some(sql) = spec.select(conn, forced, &filter, order)? else {
            continue;
        };
        let total = if spec.name == "events" {
            conn.query_row(&format!("SELECT count(*) FROM events {filter}"), [], |r| {
                r.get::<_, i64>(0)
            })?
        } else {
            0
        };
        let mut sink = Sink::new(*spec, sink_opts.clone());
        let mut last_report = Instant::now();
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            sink.push(r, None)?;
            if total > 0 && last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                let done = sink.rows();
                progress(&format!(
                    "exported {done} of {total} events ({:.0}%)",
                    done as f64 * 100.0 / total as f64
                ));
            }
        }
        drop(rows);
        drop(stmt);
        let (files, report) = sink.finish()?;
        add(&mut summary, spec, &report);
        nodes.extend(report.files.iter().map(|w| w.node.clone()));
        pending.extend(files);
    }
    // The catalogs: one copy under every node written.
    for spec in tables::TABLES.iter().filter(|t| t.per_node_copy) {
        let Some(sql) = spec.select(conn, forced, "", "ORDER BY rowid")? else {
            continue;
        };
        let mut sink = Sink::new(*spec, sink_opts.clone());
        let mut stmt = conn.prepare(&sql)?;
        for node in &nodes {
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                sink.push(r, Some(node))?;
            }
        }
        drop(stmt);
        let (files, report) = sink.finish()?;
        add(&mut summary, spec, &report);
        pending.extend(files);
    }
    // Rows of nodes the database did not declare: checked again now.
    refuse_present(&opts.dir, &present, &nodes)?;
    pending.commit()?;
    summary.nodes = nodes.into_iter().collect();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn add(summary: &mut ExportSummary, spec: &TableSpec, report: &super::sink::SinkReport) {
    let t = summary.tables.entry(spec.name.to_owned()).or_default();
    let bytes: u64 = report.files.iter().map(|w| w.bytes).sum();
    t.rows += report.rows;
    t.files += report.files.len() as u64;
    t.bytes += bytes;
    summary.files += report.files.len() as u64;
    summary.bytes += bytes;
    summary.skipped += report.skipped;
}
