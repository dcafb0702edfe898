//! The single writer thread of a database.
//!
//! The tracer hands over [`Batch`]es (at least every drain tick); the writer
//! accumulates them and commits one transaction per 10 000 events (fewer
//! under a small cap) or per 100 ms, whichever comes first, so ingest runs at bulk-insert speed while
//! a crash loses at most the last fraction of a second. Event ids
//! (`{node}:{seq}`) are allocated inside the transaction from `id_counters`,
//! so two writers on one database can never hand out the same id.
//!
//! Per-minute aggregates (`event_aggregates`) are maintained with every
//! commit, so counts survive when the size cap prunes the oldest events.
//! When the channel closes, everything received is committed before the
//! thread ends: nothing read from the kernel is lost on a clean stop.
//!
//! The size cap (`--max-db`) bounds what is on disk: the database file
//! and its WAL. The WAL gets an eighth of the cap, at most 64 MiB
//! (checkpointed past it, truncated back to it), a transaction is sized to
//! fit that budget, and from 80% of the cap the oldest events are deleted
//! down to 60%, their pages returned (`incremental_vacuum` run to its end)
//! and the file shrunk by a checkpoint; on exit a final checkpoint empties
//! the WAL. A nearly full file system lowers the cap to what fits there.
//! Should the disk fill anyway, a quarter of the oldest events go; if even
//! that does not make room, the batch's events are dropped and counted
//! ([`WriterStats::disk_full_dropped`]) and the writer goes on.
//!
//! Readers never delay a commit: checkpoints are passive (they never wait
//! for a reader), the queue in front of the writer holds about a second
//! (beyond that, back-pressure overflows the kernel's ring buffer, where
//! losses are counted), and the API's readers run at a lower priority
//! than the writer (and the traced job): the agent stays a guest.

use std::fmt::Write as _;
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::catalog::arg0_is_bytes;
use rusqlite::{Connection, Transaction, params};
use tokio::sync::mpsc;

use super::StoreError;
pub use super::batch::{
    Batch, CollectiveRow, CommRow, DropCount, EventRow, SessionUpdate, StackRow, SystemSnapshot,
};

/// Events per transaction at most.
pub const MAX_BATCH_ROWS: usize = 10_000;
/// Longest time an event waits for its commit.
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);
/// Batches queued for the writer at most (the tracer hands one over per
/// 50 ms drain tick): about a second of backlog. A writer that falls
/// further behind holds the tracer back, so the kernel's ring buffer
/// overflows and the loss is counted, instead of events waiting in memory
/// for seconds (lost on a crash) with no bound on memory.
const MAX_QUEUED_BATCHES: usize = 16;
/// Bytes an event takes in the database with its indexes, roughly: sizes
/// transactions under a small cap.
const BYTES_PER_EVENT: u64 = 200;
/// Fewest events per transaction, whatever the cap.
const MIN_BATCH_ROWS: usize = 256;
/// Pruning starts when the files on disk (database and WAL) reach this
/// fraction of the cap, leaving room for the pruning itself, which writes
/// to the WAL before the file can shrink.
const PRUNE_START: f64 = 0.8;
/// Pruning brings the data (pages in use) down to this fraction of the cap.
const PRUNE_TARGET: f64 = 0.6;
/// Share of the cap the WAL may take before it is checkpointed and, once
/// checkpointed, truncated back to.
const WAL_SHARE: u64 = 8;
/// Smallest WAL budget, whatever the cap (one transaction must fit).
const MIN_WAL_BUDGET: u64 = 256 << 10;
/// Largest WAL budget, whatever the cap. SQLite checkpoints in the
/// committing thread: with an eighth of a 10 GiB cap (1.28 GiB) each
/// checkpoint held the writer for seconds, long enough for the ring buffer
/// to overflow at 100k events/s (found by the 10-minute footprint bench).
const MAX_WAL_BUDGET: u64 = 64 << 20;
/// Oldest events deleted at once when the disk is full.
const DISK_FULL_PRUNE: f64 = 0.25;

/// Counters the writer publishes for the live summary.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events committed so far.
    pub committed: AtomicU64,
    /// Oldest events deleted so far to keep the database under its size cap.
    pub pruned: AtomicU64,
    /// Transactions committed so far.
    pub commits: AtomicU64,
    /// Events not stored because the disk was full and pruning could not
    /// make room (the writer keeps going; later batches are stored again
    /// as soon as there is room).
    pub disk_full_dropped: AtomicU64,
}

/// What the writer thread needs to know about its session.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Node name: the `node` column of every row and the prefix of event ids.
    pub node: String,
    /// Id of this run's `sessions` row (from `create_session`).
    pub session_id: i64,
    /// Size cap in bytes; `None` for no cap.
    pub max_db_size: Option<u64>,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub struct StoreWriter {
    tx: mpsc::Sender<Batch>,
    handle: JoinHandle<Result<(), StoreError>>,
    /// Counters the writer updates as it commits and prunes.
    pub stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// Starts the writer thread on `conn`.
    pub fn spawn(conn: Connection, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_BATCHES);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("ingero-writer".into())
            .spawn(move || Writer::new(conn, config, thread_stats).run(rx))
            .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
        Self { tx, handle, stats }
    }

    /// Hands a batch over; waits while the writer is behind (back-pressure
    /// reaches the kernel's ring buffer, whose overflow is counted).
    pub async fn send(&self, batch: Batch) -> Result<(), StoreError> {
        self.tx
            .send(batch)
            .await
            .map_err(|_| StoreError::WriterGone("it exited early".into()))
    }

    /// A sender for other tasks.
    #[must_use]
    pub fn sender(&self) -> mpsc::Sender<Batch> {
        self.tx.clone()
    }

    /// Whether the writer thread has stopped (on an error).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Closes the channel, waits until everything is committed, and returns
    /// the writer's outcome.
    pub fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(StoreError::WriterGone("it panicked".into())))
    }
}

#[derive(Default)]
struct Aggregate {
    count: i64,
    sum_dur: i64,
    min_dur: i64,
    max_dur: i64,
    sum_arg0: i64,
}

struct Writer {
    conn: Connection,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    /// Events per transaction: [`MAX_BATCH_ROWS`], or fewer under a small
    /// cap so one transaction fits the WAL's budget.
    batch_rows: usize,
    /// The database file and its WAL, whose sizes count against the cap.
    files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The WAL's budget in bytes for a size cap: an eighth of it, within
/// [`MIN_WAL_BUDGET`, `MAX_WAL_BUDGET`]; 4 MiB without a cap.
fn wal_budget(max_db_size: Option<u64>) -> u64 {
    max_db_size.map_or(4 << 20, |cap| {
        (cap / WAL_SHARE).clamp(MIN_WAL_BUDGET, MAX_WAL_BUDGET)
    })
}

impl Writer {
    fn new(conn: Connection, config: WriterConfig, stats: Arc<WriterStats>) -> Self {
        let files = conn.path().filter(|p| !p.is_empty()).map(|p| {
            let db = std::path::PathBuf::from(p);
            let mut wal = db.as_os_str().to_owned();
            wal.push("-wal");
            (db, std::path::PathBuf::from(wal))
        });
        let batch_rows = config.max_db_size.map_or(MAX_BATCH_ROWS, |cap| {
            usize::try_from(wal_budget(Some(cap)) / BYTES_PER_EVENT)
                .unwrap_or(MAX_BATCH_ROWS)
                .clamp(MIN_BATCH_ROWS, MAX_BATCH_ROWS)
        });
        let writer = Self {
            conn,
            config,
            stats,
            batch_rows,
            files,
        };
        writer.limit_wal();
        writer
    }

    /// Bounds the WAL: checkpointed past its budget (a share of the cap),
    /// and truncated back to the budget once checkpointed, so the file on
    /// disk does not keep its largest size.
    fn limit_wal(&self) {
        let budget = self.wal_budget();
        let page = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap_or(4096)
            .max(512);
        let pages = (i64::try_from(budget).unwrap_or(i64::MAX) / page).max(16);
        let set = self
            .conn
            .query_row(&format!("PRAGMA journal_size_limit = {budget}"), [], |_| Ok(()));
        let auto = self
            .conn
            .query_row(&format!("PRAGMA wal_autocheckpoint = {pages}"), [], |_| Ok(()));
        if let Err(e) = set.and(auto) {
            log::warn!("cannot bound the WAL: {e}");
        }
    }

    /// The WAL's budget in bytes (see [`Self::limit_wal`]).
    fn wal_budget(&self) -> u64 {
        wal_budget(self.config.max_db_size)
    }

    /// Bytes free for us on the database's file system, if known.
    fn free_bytes(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let (db, _) = self.files.as_ref()?;
        let dir = db.parent().filter(|d| !d.as_os_str().is_empty())?;
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c_dir.as_ptr(), &raw mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Bytes the database takes on disk: the file and its WAL.
    fn disk_bytes(&self) -> u64 {
        let Some((db, wal)) = &self.files else {
            return used_bytes(&self.conn).unwrap_or(0);
        };
        let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        len(db) + len(wal)
    }

    /// Commits `batch`; when the disk is full, makes room by pruning and
    /// tries once more, and otherwise drops the batch's events with a count
    /// (keeping the rest: session row, drop counters) instead of stopping
    /// the trace.
    fn commit_or_drop(&mut self, mut batch: Batch) -> Result<(), StoreError> {
        match self.commit(&batch) {
            Err(e) if is_disk_full(&e) => {
                self.make_room();
                match self.commit(&batch) {
                    Err(e) if is_disk_full(&e) => {
                        let n = batch.events.len() as u64;
                        // The small rest (session row, drop counters) may still fit.
                        batch.events = Vec::new();
                        if let Err(e) = self.commit(&batch) {
                            log::debug!("committing without events on a full disk: {e}");
                        }
                        let before = self.stats.disk_full_dropped.fetch_add(n, Ordering::Relaxed);
                        if before == 0 {
                            log::warn!(
                                "the disk holding the database is full: events are dropped (and counted) until there is room; lower --max-db or free space"
                            );
                        }
                        Ok(())
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The disk is full: deletes a quarter of the oldest events and gives
    /// their pages back, as far as the full disk allows.
    fn make_room(&mut self) {
        if let Err(e) = self.prune_fraction(DISK_FULL_PRUNE) {
            log::debug!("pruning on a full disk: {e}");
        }
        self.checkpoint();
    }

    /// Copies the WAL into the database without waiting for anyone (a
    /// reader that still needs old pages keeps them), which also shrinks
    /// the file after pruning and lets the WAL be truncated.
    fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            log::debug!("checkpoint: {e}");
        }
    }

    /// Deletes the oldest `fraction` of the events and returns their pages
    /// to the file system. Returns how many were deleted.
    fn prune_fraction(&mut self, fraction: f64) -> rusqlite::Result<u64> {
        let (min_rowid, max_rowid): (Option<i64>, Option<i64>) =
            self.conn
                .query_row("SELECT min(rowid), max(rowid) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let (Some(lo), Some(hi)) = (min_rowid, max_rowid) else {
            return Ok(0);
        };
        let rows = (hi - lo + 1).max(1);
        let delete = ((rows as f64 * fraction).ceil() as i64).clamp(1, rows);
        let deleted = self.conn.execute(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT ?1)",
            params![delete],
        )?;
        self.stats.pruned.fetch_add(deleted as u64, Ordering::Relaxed);
        super::nccl::prune_before_events(&self.conn)?;
        // Each step of the pragma frees one page: run it to the end.
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(deleted as u64)
    }

    fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Result<(), StoreError> {
        let mut pending = Batch::default();
        let mut first_pending: Option<Instant> = None;
        loop {
            let received = rx.blocking_recv();
            let closed = received.is_none();
            if let Some(batch) = received
                && !batch.is_empty()
            {
                first_pending.get_or_insert_with(Instant::now);
                pending.absorb(batch);
            }
            let due = first_pending.is_some_and(|t| t.elapsed() >= MAX_BATCH_DELAY);
            if closed || due || pending.events.len() >= self.batch_rows {
                // At most batch_rows events per transaction, the cap checked after each.
                while !pending.is_empty() {
                    let rest = if pending.events.len() > self.batch_rows {
                        pending.events.split_off(self.batch_rows)
                    } else {
                        Vec::new()
                    };
                    self.commit_or_drop(std::mem::take(&mut pending))?;
                    self.maybe_prune()?;
                    pending.events = rest;
                }
                first_pending = None;
            }
            if closed {
                self.close();
                return Ok(());
            }
        }
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let sql = |context: &'static str| move |source| StoreError::Sql { context, source };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting a transaction"))?;
        let n = batch.events.len();
        insert_events(&tx, &self.config, &batch.events).map_err(sql("inserting events"))?;
        upsert_aggregates(&tx, &self.config.node, &batch.events).map_err(sql("updating event_aggregates"))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO stack_traces(hash, ips, frames) VALUES (?1, ?2, ?3)")
                .map_err(sql("inserting stacks"))?;
            for s in &batch.stacks {
                stmt.execute(params![s.hash as i64, s.ips, s.frames])
                    .map_err(sql("inserting stacks"))?;
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO process_names(node, pid, name, seen_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(node, pid) DO UPDATE SET name = excluded.name, seen_at = excluded.seen_at",
                )
                .map_err(sql("inserting process names"))?;
            for (pid, name, seen) in &batch.names {
                stmt.execute(params![self.config.node, pid, name, seen])
                    .map_err(sql("inserting process names"))?;
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO system_snapshots(node, timestamp, cpu_pct, mem_pct, mem_avail,
                         swap_mb, load_avg, swap_in, swap_out) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(sql("inserting system snapshots"))?;
            for s in &batch.snapshots {
                stmt.execute(params![
                    self.config.node,
                    s.timestamp,
                    s.cpu_pct,
                    s.mem_pct,
                    s.mem_avail_mb,
                    s.swap_mb,
                    s.load_avg,
                    s.swap_in,
                    s.swap_out
                ])
                .map_err(sql("inserting system snapshots"))?;
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO drops(session_id, node, source, op, reason, count, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%s','now') * 1000000000)",
                )
                .map_err(sql("recording drops"))?;
            for d in &batch.drops {
                stmt.execute(params![
                    self.config.session_id,
                    self.config.node,
                    d.source,
                    d.op,
                    d.reason,
                    d.count as i64
                ])
                .map_err(sql("recording drops"))?;
            }
        }
        tx.execute(
            "UPDATE sessions SET events_stored = events_stored + ?1 WHERE id = ?2",
            params![n as i64, self.config.session_id],
        )
        .map_err(sql("updating the session"))?;
        if let Some(update) = &batch.session {
            apply_session_update(&tx, self.config.session_id, update).map_err(sql("updating the session"))?;
        }
        super::nccl::insert(&tx, &self.config.node, self.config.session_id, batch)
            .map_err(sql("inserting NCCL calls"))?;
        tx.commit().map_err(sql("committing"))?;
        self.stats.committed.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the database and its WAL under the size cap: from
    /// [`PRUNE_START`] of the cap on disk, deletes the oldest events down to
    /// [`PRUNE_TARGET`] of the cap in use, returns the pages and
    /// checkpoints so the file shrinks.
    fn maybe_prune(&mut self) -> Result<(), StoreError> {
        let Some(cap) = self.config.max_db_size else {
            return Ok(());
        };
        let disk = self.disk_bytes();
        // A nearly full file system lowers the cap to what fits, keeping a
        // reserve for the WAL and the pruning itself: past that point a
        // checkpoint could no longer grow the file, and nothing could be
        // pruned or stored.
        let cap = match self.free_bytes() {
            Some(free) => cap.min((disk + free).saturating_sub(2 * self.wal_budget())),
            None => cap,
        };
        if (disk as f64) < cap as f64 * PRUNE_START {
            return Ok(());
        }
        let sql = |context: &'static str| move |source| StoreError::Sql { context, source };
        let used = used_bytes(&self.conn).map_err(sql("measuring the database"))?;
        let target = cap as f64 * PRUNE_TARGET;
        if (used as f64) > target {
            let fraction = 1.0 - target / used as f64;
            match self.prune_fraction(fraction) {
                Ok(deleted) => log::info!(
                    "database near its {cap}-byte cap ({disk} bytes on disk): pruned the {deleted} oldest events"
                ),
                Err(e) if is_disk_full_sql(&e) => {
                    log::debug!("pruning on a full disk: {e}");
                }
                Err(e) => return Err(sql("pruning old events")(e)),
            }
        }
        self.checkpoint();
        Ok(())
    }

    /// At the end: the cap once more, then a checkpoint that empties the
    /// WAL, so what stays on disk after exit is within the cap.
    fn close(&mut self) {
        if let Err(e) = self.maybe_prune() {
            log::warn!("{e}");
        }
        // A short wait for readers, not the 5 s busy timeout.
        let _ = self.conn.busy_timeout(Duration::from_millis(500));
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            log::debug!("final checkpoint: {e}");
        }
    }
}

/// Whether a store error is SQLite's "database or disk is full".
fn is_disk_full(e: &StoreError) -> bool {
    matches!(e, StoreError::Sql { source, .. } if is_disk_full_sql(source))
}

fn is_disk_full_sql(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Bytes in use by the database file (excluding free pages).
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0));
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok((pages.max(0) * pragma("page_size")?) as u64)
}

fn insert_events(tx: &Transaction<'_>, config: &WriterConfig, events: &[EventRow]) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let first: i64 = tx.query_row(
        "INSERT INTO id_counters(node, next_seq) VALUES (?1, ?2)
         ON CONFLICT(node) DO UPDATE SET next_seq = next_seq + ?2
         RETURNING next_seq - ?2",
        params![config.node, events.len() as i64],
        |r| r.get(0),
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code,
             stack_hash, node, rank, local_rank, world_size, stream, arg2, cpu, session_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
    )?;
    let mut id = String::with_capacity(config.node.len() + 21);
    for (i, e) in events.iter().enumerate() {
        id.clear();
        let _ = write!(id, "{}:{}", config.node, first + i as i64);
        stmt.execute(params![
            id,
            e.timestamp,
            e.pid,
            e.tid,
            e.source,
            e.op,
            e.duration as i64,
            e.gpu_id,
            e.arg0 as i64,
            e.arg1 as i64,
            e.ret_code,
            e.stack_hash as i64,
            config.node,
            e.rank,
            e.local_rank,
            e.world_size,
            e.stream.map(|s| s as i64),
            e.arg2.map(|a| a as i64),
            e.cpu,
            config.session_id,
        ])?;
    }
    Ok(())
}

fn upsert_aggregates(tx: &Transaction<'_>, node: &str, events: &[EventRow]) -> rusqlite::Result<()> {
    const MINUTE: i64 = 60_000_000_000;
    let mut buckets: HashMap<(i64, u8, u8, u32), Aggregate> = HashMap::new();
    for e in events {
        let key = (
            e.timestamp - e.timestamp.rem_euclid(MINUTE),
            e.source,
            e.op,
            e.pid,
        );
        let dur = e.duration as i64;
        let a = buckets.entry(key).or_insert_with(|| Aggregate {
            min_dur: i64::MAX,
            ..Aggregate::default()
        });
        a.count += 1;
        a.sum_dur = a.sum_dur.saturating_add(dur);
        a.min_dur = a.min_dur.min(dur);
        a.max_dur = a.max_dur.max(dur);
        if arg0_is_bytes(e.source, e.op) {
            a.sum_arg0 = a.sum_arg0.saturating_add(e.arg0 as i64);
        }
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO event_aggregates(node, bucket, source, op, pid, count, sum_dur, min_dur, max_dur, sum_arg0)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(node, bucket, source, op, pid) DO UPDATE SET
             count = count + excluded.count,
             sum_dur = sum_dur + excluded.sum_dur,
             min_dur = min(min_dur, excluded.min_dur),
             max_dur = max(max_dur, excluded.max_dur),
             sum_arg0 = sum_arg0 + excluded.sum_arg0",
    )?;
    for ((bucket, src, op, pid), a) in buckets {
        stmt.execute(params![
            node, bucket, src, op, pid, a.count, a.sum_dur, a.min_dur, a.max_dur, a.sum_arg0
        ])?;
    }
    Ok(())
}

fn apply_session_update(tx: &Transaction<'_>, id: i64, u: &SessionUpdate) -> rusqlite::Result<()> {
    if let Some(t) = u.stopped_at {
        tx.execute(
            "UPDATE sessions SET stopped_at = ?1 WHERE id = ?2",
            params![t, id],
        )?;
    }
    if let Some(d) = u.events_dropped {
        tx.execute(
            "UPDATE sessions SET events_dropped = ?1 WHERE id = ?2",
            params![d as i64, id],
        )?;
    }
    if let Some(libs) = &u.libraries {
        tx.execute(
            "UPDATE sessions SET libraries = ?1 WHERE id = ?2",
            params![libs, id],
        )?;
    }
    if let Some((rank, local_rank, world_size)) = u.rank {
        tx.execute(
            "UPDATE sessions SET rank = ?1, local_rank = ?2, world_size = ?3 WHERE id = ?4",
            params![rank, local_rank, world_size, id],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
