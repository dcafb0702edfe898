//! The single writer thread of a database.
//!
//! The tracer hands over [`Batch`]es (at least every drain tick); the writer
//! accumulates them and commits one transaction per 10 000 events or per
//! 100 ms, whichever comes first, so ingest runs at bulk-insert speed while
//! a crash loses at most the last fraction of a second. Event ids
//! (`{node}:{seq}`) are allocated inside the transaction from `id_counters`,
//! so two writers on one database can never hand out the same id.
//!
//! Per-minute aggregates (`event_aggregates`) are maintained with every
//! commit, so counts survive when the size cap prunes the oldest events.
//! When the channel closes, everything received is committed before the
//! thread ends: nothing read from the kernel is lost on a clean stop.

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

/// Events per transaction at most.
pub const MAX_BATCH_ROWS: usize = 10_000;
/// Longest time an event waits for its commit.
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);
/// How often the size cap is checked.
const PRUNE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Pruning brings the database down to this fraction of the cap.
const PRUNE_TARGET: f64 = 0.9;

/// One event, ready for the `events` table. 64-bit values (pointers,
/// handles) are stored as SQLite's signed 64-bit integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventRow {
    /// End of what was measured, Unix ns (`events.timestamp`).
    pub timestamp: i64,
    /// Process id (thread-group id) (`events.pid`).
    pub pid: u32,
    /// Thread id (`events.tid`).
    pub tid: u32,
    /// Event source, a `catalog::source` constant (`events.source`).
    pub source: u8,
    /// Operation within the source (`events.op`); meaning in the `ops` table.
    pub op: u8,
    /// Length of what was measured in ns, ending at `timestamp` (`events.duration`).
    pub duration: u64,
    /// GPU the calling thread selected, 0 by default (`events.gpu_id`).
    pub gpu_id: i32,
    /// First operation-specific value, often bytes (`events.arg0`).
    pub arg0: u64,
    /// Second operation-specific value (`events.arg1`).
    pub arg1: u64,
    /// CUDA error code of the call, or an errno for I/O (`events.ret_code`).
    pub ret_code: i32,
    /// Hash of the user stack, the key of `stack_traces`; 0 without a stack
    /// (`events.stack_hash`).
    pub stack_hash: u64,
    /// `RANK` of the traced process's environment, if set (`events.rank`).
    pub rank: Option<i64>,
    /// `LOCAL_RANK` of the traced process's environment, if set (`events.local_rank`).
    pub local_rank: Option<i64>,
    /// `WORLD_SIZE` of the traced process's environment, if set (`events.world_size`).
    pub world_size: Option<i64>,
    /// CUDA stream handle for operations that take one, else `None` (`events.stream`).
    pub stream: Option<u64>,
    /// Third operation-specific value where the operation has one (block I/O:
    /// the device), else `None` (`events.arg2`).
    pub arg2: Option<u64>,
    /// CPU the event happened on (`events.cpu`).
    pub cpu: u32,
}

/// A deduplicated user stack.
#[derive(Debug, Clone)]
pub struct StackRow {
    /// Hash of the addresses, referenced by `events.stack_hash` (`stack_traces.hash`).
    pub hash: u64,
    /// JSON array of hex addresses.
    pub ips: String,
    /// JSON array of `{"s": symbol, "f": file, "i": address}`.
    pub frames: String,
}

/// One sample of node-wide resource use.
#[derive(Debug, Clone, Default)]
pub struct SystemSnapshot {
    /// When the sample was taken, Unix ns (`system_snapshots.timestamp`).
    pub timestamp: i64,
    /// Node-wide CPU busy percentage (0-100, all CPUs) since the previous sample.
    pub cpu_pct: f64,
    /// Memory in use, as a percentage of the total (total minus available).
    pub mem_pct: f64,
    /// Available memory (`MemAvailable`) in MiB (`system_snapshots.mem_avail`).
    pub mem_avail_mb: i64,
    /// Swap in use, in MiB.
    pub swap_mb: i64,
    /// One-minute load average.
    pub load_avg: f64,
    /// Pages swapped in since the previous sample (`pswpin` delta).
    pub swap_in: i64,
    /// Pages swapped out since the previous sample (`pswpout` delta).
    pub swap_out: i64,
}

/// Drop counter of one (source, op, reason), cumulative for the session.
#[derive(Debug, Clone)]
pub struct DropCount {
    /// Source of the dropped events (`drops.source`).
    pub source: u8,
    /// Operation of the dropped events (`drops.op`).
    pub op: u8,
    /// Why they were dropped: "ring_full" or "map_full" (`drops.reason`).
    pub reason: &'static str,
    /// Events dropped for this (source, op, reason) since the session started.
    pub count: u64,
}

/// Everything the tracer hands to the writer at once.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events for the `events` table.
    pub events: Vec<EventRow>,
    /// New stacks for `stack_traces` (rows already present are ignored).
    pub stacks: Vec<StackRow>,
    /// (task id, name, seen at)
    pub names: Vec<(u32, String, i64)>,
    /// Samples for `system_snapshots`.
    pub snapshots: Vec<SystemSnapshot>,
    /// Current drop counters for the `drops` table (each replaces its previous value).
    pub drops: Vec<DropCount>,
    /// Changes to this session's `sessions` row, if any.
    pub session: Option<SessionUpdate>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.stacks.is_empty()
            && self.names.is_empty()
            && self.snapshots.is_empty()
            && self.drops.is_empty()
            && self.session.is_none()
    }

    fn absorb(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.stacks.extend(other.stacks);
        self.names.extend(other.names);
        self.snapshots.extend(other.snapshots);
        self.drops.extend(other.drops);
        if let Some(update) = other.session {
            self.session
                .get_or_insert_with(SessionUpdate::default)
                .merge(update);
        }
    }
}

/// Changes to the session row.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// When tracing stopped, Unix ns (`sessions.stopped_at`).
    pub stopped_at: Option<i64>,
    /// Total events dropped so far in the session (`sessions.events_dropped`).
    pub events_dropped: Option<u64>,
    /// JSON array of the CUDA libraries probed so far (`sessions.libraries`).
    pub libraries: Option<String>,
    /// `(rank, local_rank, world_size)` of the first traced process whose rank
    /// is known (`sessions.rank`, `local_rank`, `world_size`).
    pub rank: Option<(Option<i64>, Option<i64>, Option<i64>)>,
}

impl SessionUpdate {
    /// Takes every field `later` sets.
    fn merge(&mut self, later: SessionUpdate) {
        self.stopped_at = later.stopped_at.or(self.stopped_at);
        self.events_dropped = later.events_dropped.or(self.events_dropped);
        self.libraries = later.libraries.or(self.libraries.take());
        self.rank = later.rank.or(self.rank);
    }
}

/// Counters the writer publishes for the live summary.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events committed so far.
    pub committed: AtomicU64,
    /// Oldest events deleted so far to keep the database under its size cap.
    pub pruned: AtomicU64,
    /// Transactions committed so far.
    pub commits: AtomicU64,
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
        let (tx, rx) = mpsc::channel(256);
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
    last_prune_check: Instant,
}

impl Writer {
    fn new(conn: Connection, config: WriterConfig, stats: Arc<WriterStats>) -> Self {
        Self {
            conn,
            config,
            stats,
            last_prune_check: Instant::now(),
        }
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
            if closed || due || pending.events.len() >= MAX_BATCH_ROWS {
                if !pending.is_empty() {
                    self.commit(&std::mem::take(&mut pending))?;
                }
                first_pending = None;
                self.maybe_prune()?;
            }
            if closed {
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
        tx.commit().map_err(sql("committing"))?;
        self.stats.committed.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the database under its size cap by deleting the oldest events.
    fn maybe_prune(&mut self) -> Result<(), StoreError> {
        let Some(cap) = self.config.max_db_size else {
            return Ok(());
        };
        if self.last_prune_check.elapsed() < PRUNE_CHECK_EVERY {
            return Ok(());
        }
        self.last_prune_check = Instant::now();
        let sql = |context: &'static str| move |source| StoreError::Sql { context, source };
        let used = used_bytes(&self.conn).map_err(sql("measuring the database"))?;
        if used <= cap {
            return Ok(());
        }
        let (min_rowid, max_rowid): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT min(rowid), max(rowid) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(sql("measuring the database"))?;
        let (Some(lo), Some(hi)) = (min_rowid, max_rowid) else {
            return Ok(());
        };
        let rows = (hi - lo + 1).max(1) as f64;
        let excess = 1.0 - (cap as f64 * PRUNE_TARGET) / used as f64;
        let delete = ((rows * excess).ceil() as i64).clamp(1, hi - lo + 1);
        let deleted = self
            .conn
            .execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT ?1)",
                params![delete],
            )
            .map_err(sql("pruning old events"))?;
        self.conn
            .execute_batch("PRAGMA incremental_vacuum")
            .map_err(sql("returning pruned pages"))?;
        self.stats.pruned.fetch_add(deleted as u64, Ordering::Relaxed);
        log::info!("database over its {cap}-byte cap: pruned the {deleted} oldest events");
        Ok(())
    }
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
mod tests {
    use super::*;
    use crate::store::{SessionInfo, create_session, open_for_writing};
    use agent_common::catalog::{driver_op, source};

    fn event(ts: i64, op: u8) -> EventRow {
        EventRow {
            timestamp: ts,
            pid: 10,
            tid: 11,
            source: source::DRIVER,
            op,
            duration: 1_000,
            arg0: 4096,
            ..EventRow::default()
        }
    }

    #[test]
    fn merged_session_updates_keep_every_field() {
        let mut a = Batch {
            session: Some(SessionUpdate {
                rank: Some((Some(3), None, Some(8))),
                ..SessionUpdate::default()
            }),
            ..Batch::default()
        };
        a.absorb(Batch {
            session: Some(SessionUpdate {
                events_dropped: Some(5),
                ..SessionUpdate::default()
            }),
            ..Batch::default()
        });
        let s = a.session.expect("merged");
        assert_eq!(s.rank, Some((Some(3), None, Some(8))));
        assert_eq!(s.events_dropped, Some(5));
    }

    fn start(path: &std::path::Path, node: &str, cap: Option<u64>) -> StoreWriter {
        let conn = open_for_writing(path).expect("open");
        let session_id = create_session(
            &conn,
            &SessionInfo {
                node: node.into(),
                ..SessionInfo::default()
            },
        )
        .expect("session");
        StoreWriter::spawn(
            conn,
            WriterConfig {
                node: node.into(),
                session_id,
                max_db_size: cap,
            },
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn every_event_is_committed_with_unique_node_ids() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.db");
        for round in 0..2 {
            let writer = start(&path, "n1", None);
            runtime().block_on(async {
                for chunk in 0..5 {
                    let events = (0..3000)
                        .map(|i| event(chunk * 3000 + i, driver_op::MEM_ALLOC))
                        .collect();
                    writer
                        .send(Batch {
                            events,
                            ..Batch::default()
                        })
                        .await
                        .expect("send");
                }
            });
            writer.finish()?;
            let conn = Connection::open(&path)?;
            let (n, distinct): (i64, i64) =
                conn.query_row("SELECT count(*), count(DISTINCT id) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            assert_eq!(n, 15_000 * (round + 1));
            assert_eq!(distinct, n, "ids stay unique across sessions");
            let agg: i64 = conn.query_row("SELECT sum(count) FROM event_aggregates", [], |r| r.get(0))?;
            assert_eq!(agg, n);
            let stored: i64 = conn.query_row("SELECT sum(events_stored) FROM sessions", [], |r| r.get(0))?;
            assert_eq!(stored, n);
        }
        Ok(())
    }

    #[test]
    fn size_cap_prunes_oldest_first() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cap.db");
        let cap = 2 << 20;
        let writer = start(&path, "n1", Some(cap));
        runtime().block_on(async {
            for chunk in 0..40i64 {
                let events = (0..2000)
                    .map(|i| event(chunk * 2000 + i, driver_op::MEM_ALLOC))
                    .collect();
                writer
                    .send(Batch {
                        events,
                        ..Batch::default()
                    })
                    .await
                    .expect("send");
                // Let the once-a-second size check run during the test.
                if chunk % 10 == 9 {
                    tokio::time::sleep(PRUNE_CHECK_EVERY + Duration::from_millis(50)).await;
                }
            }
        });
        let stats = Arc::clone(&writer.stats);
        writer.finish()?;
        let pruned = stats.pruned.load(Ordering::Relaxed);
        assert!(pruned > 0, "the cap must have been hit");
        let conn = Connection::open(&path)?;
        let (n, oldest): (i64, i64) =
            conn.query_row("SELECT count(*), min(timestamp) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        assert_eq!(n as u64 + pruned, 80_000);
        assert_eq!(oldest, pruned as i64, "the oldest events went first");
        let agg: i64 = conn.query_row("SELECT sum(count) FROM event_aggregates", [], |r| r.get(0))?;
        assert_eq!(agg, 80_000, "aggregates keep the pruned events' counts");
        Ok(())
    }
}
