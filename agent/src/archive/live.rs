//! `ingero trace --archive DIR`: the archive written while tracing, by a
//! thread of its own at the lowest CPU and I/O priority, reading the
//! database the writer commits to (WAL readers never block the writer).
//!
//! At start, then every interval, and once more after the writer has
//! committed its last batch at stop, the archiver writes the `events` and
//! `nccl_collectives` rows committed since the last archived rowid, in
//! windows of at most [`MAX_WINDOW_ROWS`] rowids, and rewrites each node's
//! file of the small tables (sessions, process names, chains,
//! communicators, catalogs) in place.
//!
//! Exactly once, across restarts, crashes and full disks: a window's
//! files are named after its first rowid (`part-{token}-w{first}-{k}`,
//! the token naming this database's files), made visible only when all
//! are complete, and the window's end is recorded in `archive_state`
//! (keyed by the archive directory and table) only after that. A crash
//! before the record makes the next run write the same window again
//! under the same names, from the same first rowid: the rename replaces
//! the earlier files with ones holding at least their rows, never adds a
//! second copy. Temporary files of a crashed run are removed at start. A
//! failed pass (a full disk) leaves nothing visible, is reported once,
//! and is retried at the next interval; the tracer is never held up.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{
    ArchiveError, escape_partition, new_token,
    sink::{Pending, Sink, SinkOptions},
    tables::{self, Layout, TableSpec},
};
use crate::store::schema::table_exists;

/// Rowids archived in one window at most: bounds the work a crash makes
/// redo, the read transaction's length (the WAL cannot be reset past an
/// open reader) and each file's size.
pub const MAX_WINDOW_ROWS: i64 = 1 << 20;
/// Rowids read per statement within a window: a read transaction that
/// short never holds the writer's WAL back for long.
const READ_SLICE_ROWS: i64 = 1 << 16;
/// Nice value of the archiver thread: the lowest priority.
const ARCHIVE_NICE: i32 = 19;

/// What the archiver is asked to do.
#[derive(Debug, Clone)]
pub struct ArchiverOptions {
    /// The database the tracer writes.
    pub db: PathBuf,
    /// The archive's root directory (created if missing).
    pub dir: PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// This agent's node (its catalogs are written under it).
    pub node: String,
}

/// What the archiver wrote over its life.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiverReport {
    /// The archive's root directory.
    pub dir: PathBuf,
    /// Events archived.
    pub events: u64,
    /// NCCL calls archived.
    pub collectives: u64,
    /// Windows archived (of events and NCCL calls).
    pub windows: u64,
    /// Files made visible (snapshots of the small tables included).
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Rows left out because a value does not fit its column.
    pub skipped: u64,
    /// Rowids pruned from the database (`--max-db`) before they could be
    /// archived.
    pub pruned_before_archived: u64,
    /// Passes that failed (each retried at the next interval).
    pub failures: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// The archiver thread.
#[derive(Debug)]
pub struct Archiver {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<ArchiverReport>,
    dir: PathBuf,
    interval: Duration,
}

impl Archiver {
    /// The archive directory (canonical).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time between passes.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Prepares the directory and the state (removing temporary files a
    /// crashed run left) and starts the thread, which archives at once and
    /// then every interval.
    pub fn start(opts: &ArchiverOptions) -> Result<Self, ArchiveError> {
        let mut state = State::open(opts)?;
        let dir = state.opts.dir.clone();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("ingero-archive".into())
            .spawn(move || {
                lower_priority();
                state.run(&thread_stop);
                state.report
            })
            .map_err(|e| ArchiveError::Refused(format!("cannot start the archiver thread: {e}")))?;
        Ok(Self {
            stop,
            handle,
            dir,
            interval: opts.interval,
        })
    }

    /// Asks for the last pass (the tail the writer committed at stop) and
    /// waits for it; returns what was archived.
    pub fn finish(self) -> ArchiverReport {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopping) = lock.lock() {
            *stopping = true;
        }
        wake.notify_all();
        self.handle.join().unwrap_or_else(|_| ArchiverReport {
            last_error: Some("the archiver thread panicked".into()),
            failures: 1,
            ..ArchiverReport::default()
        })
    }
}

/// Lowers the calling thread to the lowest CPU priority and the lowest
/// best-effort I/O priority (neither needs privileges).
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority and ioprio_set on
    // our own thread id only change its scheduling.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), ARCHIVE_NICE);
        // IOPRIO_WHO_PROCESS = 1; class best-effort (2) << 13, level 7.
        libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

/// Creates the archive directory if needed and checks that files can be
/// made in it; returns its canonical path. `ingero trace` calls it before
/// tracing starts, so a wrong `--archive` fails at once.
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, ArchiveError> {
    if dir.exists() && !dir.is_dir() {
        return Err(ArchiveError::Refused(format!(
            "the archive directory {} is a file: give --archive a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ArchiveError::write(dir, e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| ArchiveError::write(dir, e))?;
    let probe = dir.join(format!(".ingero-probe-{}.tmp", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| ArchiveError::write(&dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir)
}

/// The archiver's connections and progress.
pub(crate) struct State {
    opts: ArchiverOptions,
    /// The canonical archive directory: the key of `archive_state`.
    dir_key: String,
    token: String,
    read: Connection,
    write: Connection,
    report: ArchiverReport,
}

impl State {
    pub(crate) fn open(opts: &ArchiverOptions) -> Result<Self, ArchiveError> {
        let dir = prepare_dir(&opts.dir)?;
        let write = Connection::open(&opts.db)?;
        write.busy_timeout(Duration::from_secs(5))?;
        write.execute_batch(crate::store::schema::ARCHIVE_STATE)?;
        let dir_key = dir.display().to_string();
        let token = match write
            .query_row(
                "SELECT token FROM archive_state WHERE dir = ?1 ORDER BY updated_at DESC LIMIT 1",
                [&dir_key],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()) => t,
            _ => new_token(),
        };
        // The token is durable before any file bears it: a window redone
        // after a crash must get the same names.
        for spec in tables::TABLES.iter().filter(|t| t.layout == Layout::Hourly) {
            write.execute(
                "INSERT OR IGNORE INTO archive_state(dir, tbl, token, last_rowid, updated_at) VALUES (?1, ?2, ?3, 0, ?4)",
                params![dir_key, spec.name, token, crate::clock::unix_ns()],
            )?;
        }
        let read = crate::store::open_read(&opts.db)?;
        let mut opts = opts.clone();
        opts.dir.clone_from(&dir);
        let state = Self {
            dir_key,
            opts,
            token,
            read,
            write,
            report: ArchiverReport {
                dir,
                ..ArchiverReport::default()
            },
        };
        state.remove_stale_temporaries()?;
        Ok(state)
    }

    /// The nodes whose folders this database writes.
    fn nodes(&self) -> Result<Vec<String>, ArchiveError> {
        let mut nodes = super::export::declared_nodes(&self.read, None)?;
        nodes.insert(self.opts.node.clone());
        Ok(nodes.into_iter().collect())
    }

    /// Removes the temporary files of this database's earlier runs (a
    /// crash or kill mid-pass), in its nodes' folders.
    fn remove_stale_temporaries(&self) -> Result<(), ArchiveError> {
        let prefix = format!(".part-{}-", self.token);
        let nodes = self.nodes()?;
        for table in tables::TABLES {
            for node in &nodes {
                let dir = self
                    .opts
                    .dir
                    .join(format!("table={}", table.name))
                    .join(format!("node={}", escape_partition(node)));
                remove_matching(&dir, &prefix);
            }
        }
        Ok(())
    }

    fn run(&mut self, stop: &(Mutex<bool>, Condvar)) {
        let (lock, wake) = stop;
        let mut next = Instant::now();
        loop {
            let stopping = {
                let Ok(mut stopping) = lock.lock() else { return };
                while !*stopping {
                    let left = next.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match wake.wait_timeout(stopping, left) {
                        Ok((guard, _)) => stopping = guard,
                        Err(_) => return,
                    }
                }
                *stopping
            };
            next = Instant::now() + self.opts.interval;
            if let Err(e) = self.pass() {
                let message = e.to_string();
                if self.report.last_error.as_deref() != Some(message.as_str()) {
                    log::warn!(
                        "archiving to {} failed: {message}; the events stay in the database and are archived at the next try",
                        self.opts.dir.display()
                    );
                }
                self.report.failures += 1;
                self.report.last_error = Some(message);
            } else {
                self.report.last_error = None;
            }
            if stopping {
                return;
            }
        }
    }

    /// One pass: every hourly table caught up, then the snapshots.
    pub(crate) fn pass(&mut self) -> Result<(), ArchiveError> {
        for spec in tables::TABLES.iter().filter(|t| t.layout == Layout::Hourly) {
            while self.window(spec)? {}
        }
        self.snapshots()
    }

    /// The last archived rowid of a table, 0 before the first window.
    fn archived_up_to(&self, table: &str) -> rusqlite::Result<i64> {
        Ok(self
            .write
            .query_row(
                "SELECT last_rowid FROM archive_state WHERE dir = ?1 AND tbl = ?2",
                params![self.dir_key, table],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Archives the next window of `spec`; `false` when caught up.
    fn window(&mut self, spec: &TableSpec) -> Result<bool, ArchiveError> {
        if !table_exists(&self.read, spec.name)? {
            return Ok(false);
        }
        let mut lo = self.archived_up_to(spec.name)?;
        let (min, max): (Option<i64>, Option<i64>) = self.read.query_row(
            &format!("SELECT min(rowid), max(rowid) FROM {}", spec.name),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (Some(min), Some(max)) = (min, max) else {
            return Ok(false);
        };
        if max < lo {
            // The table was emptied and refilled (rowids start again): a
            // new token keeps the new windows' names apart from the old.
            log::warn!(
                "{} of the database restarted its row numbering; archiving it anew under new file names",
                spec.name
            );
            self.token = new_token();
            self.write.execute(
                "UPDATE archive_state SET token = ?1 WHERE dir = ?2",
                params![self.token, self.dir_key],
            )?;
            lo = 0;
        }
        if max == lo {
            return Ok(false);
        }
        if min > lo + 1 {
            let lost = (min - lo - 1) as u64;
            if self.report.pruned_before_archived == 0 {
                log::warn!(
                    "{lost} rows of {} were pruned (--max-db) before they could be archived: archive more often (archive.interval) or raise the cap",
                    spec.name
                );
            }
            self.report.pruned_before_archived += lost;
        }
        let hi = max.min(lo.saturating_add(MAX_WINDOW_ROWS));
        let (pending, rows, skipped) = self.write_window(spec, lo, hi)?;
        self.publish(pending)?;
        self.record(spec.name, hi)?;
        self.report.windows += 1;
        self.report.skipped += skipped;
        if spec.name == "events" {
            self.report.events += rows;
        } else {
            self.report.collectives += rows;
        }
        Ok(hi < max)
    }

    /// Writes the rows of rowids `lo+1 ..= hi` as hidden files.
    pub(crate) fn write_window(
        &self,
        spec: &TableSpec,
        lo: i64,
        hi: i64,
    ) -> Result<(Pending, u64, u64), ArchiveError> {
        let Some(sql) = spec.select(
            &self.read,
            Some(&self.opts.node),
            "WHERE rowid > ?1 AND rowid <= ?2",
            "ORDER BY rowid",
        )?
        else {
            return Ok((Pending::default(), 0, 0));
        };
        let mut sink = Sink::new(
            *spec,
            SinkOptions {
                dir: self.opts.dir.clone(),
                stem: format!("part-{}-w{:012}", self.token, lo + 1),
                token: self.token.clone(),
                window: format!("rowid {} ..= {hi}", lo + 1),
            },
        );
        let mut stmt = self.read.prepare(&sql)?;
        // In slices, each its own short read transaction: the writer's
        // checkpoints can reset the WAL between them.
        let mut from = lo;
        while from < hi {
            let to = hi.min(from.saturating_add(READ_SLICE_ROWS));
            let mut rows = stmt.query(params![from, to])?;
            while let Some(r) = rows.next()? {
                sink.push(r, None)?;
            }
            from = to;
        }
        drop(stmt);
        let (pending, report) = sink.finish()?;
        Ok((pending, report.rows, report.skipped))
    }

    /// Makes files visible and counts them.
    fn publish(&mut self, pending: Pending) -> Result<(), ArchiveError> {
        let files = pending.files().len() as u64;
        let bytes: u64 = pending.files().iter().map(|w| w.bytes).sum();
        pending.commit()?;
        self.report.files += files;
        self.report.bytes += bytes;
        Ok(())
    }

    /// Records that a table is archived up to `hi`.
    pub(crate) fn record(&self, table: &str, hi: i64) -> rusqlite::Result<()> {
        self.write.execute(
            "INSERT INTO archive_state(dir, tbl, token, last_rowid, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(dir, tbl) DO UPDATE SET token = excluded.token, last_rowid = excluded.last_rowid,
                 updated_at = excluded.updated_at",
            params![self.dir_key, table, self.token, hi, crate::clock::unix_ns()],
        )?;
        Ok(())
    }

    /// Rewrites each node's file of every small table (replacing the
    /// previous one by rename).
    fn snapshots(&mut self) -> Result<(), ArchiveError> {
        let nodes = self.nodes()?;
        let mut pending = Pending::default();
        for spec in tables::TABLES.iter().filter(|t| t.layout == Layout::Snapshot) {
            let Some(sql) = spec.select(&self.read, Some(&self.opts.node), "", "ORDER BY rowid")? else {
                continue;
            };
            let mut sink = Sink::new(
                *spec,
                SinkOptions {
                    dir: self.opts.dir.clone(),
                    stem: format!("part-{}", self.token),
                    token: self.token.clone(),
                    window: "snapshot".into(),
                },
            );
            let mut stmt = self.read.prepare(&sql)?;
            if spec.per_node_copy {
                for node in &nodes {
                    let mut rows = stmt.query([])?;
                    while let Some(r) = rows.next()? {
                        sink.push(r, Some(node))?;
                    }
                }
            } else {
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    sink.push(r, None)?;
                }
            }
            drop(stmt);
            let (files, report) = sink.finish()?;
            self.report.skipped += report.skipped;
            pending.extend(files);
        }
        self.publish(pending)
    }
}

/// Removes files in `dir` (at any depth) whose names start with `prefix`
/// and end in `.tmp`.
fn remove_matching(dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_matching(&p, prefix);
        } else if e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix) && n.rsplit('.').next() == Some("tmp"))
        {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests;
