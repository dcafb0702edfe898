//! Loading what the rules need from a database, per node, in one pass.
//!
//! Works on this tracer's databases and on other tracers' that use the same
//! `events` columns: a missing `node` column makes every event belong to one
//! unnamed node; databases that do not say otherwise in `schema_info` are
//! read with the original ingero's conventions (CUDA timestamps at call
//! entry, block I/O sizes in 512-byte sectors, no preemption flag on
//! `sched_switch`). Operations whose stored events are only a sample of
//! the calls counted in `event_aggregates` are marked ([`super::sampled`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use agent_common::catalog::{arg0_is_bytes, host_op, io_op, op_info, source};
use rusqlite::Connection;

use crate::{
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// A CUDA runtime or driver call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Process id (thread-group id) of the caller (`events.pid`).
    pub pid: u32,
    /// Thread id of the caller (`events.tid`).
    pub tid: u32,
    /// When the call was entered, Unix ns.
    pub start: i64,
    /// When the call returned, Unix ns.
    pub end: i64,
    /// Bytes moved or allocated, for operations that have a size (else 0).
    pub bytes: u64,
}

impl Call {
    /// Time spent in the call, ns (`end - start`).
    #[must_use]
    pub fn duration(&self) -> i64 {
        self.end - self.start
    }
}

/// A span a traced thread spent off its CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffCpu {
    /// Process id (thread-group id) of the switched-out thread (`events.pid`).
    pub pid: u32,
    /// Thread id of the switched-out thread (`events.tid`).
    pub tid: u32,
    /// When the thread left its CPU, Unix ns.
    pub start: i64,
    /// When the thread was back on a CPU, Unix ns (`events.timestamp`).
    pub end: i64,
    /// Still runnable when switched out (preempted); `None` when the
    /// database does not say.
    pub preempted: Option<bool>,
    /// The task that took the CPU.
    pub preemptor: u32,
}

/// A block I/O request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    /// Process id (thread-group id) of the issuer (`events.pid`).
    pub pid: u32,
    /// Thread id of the issuer (`events.tid`).
    pub tid: u32,
    /// When the request was issued, Unix ns.
    pub start: i64,
    /// When the request completed, Unix ns (`events.timestamp`).
    pub end: i64,
    /// Size of the request in bytes (`arg0`, converted from 512-byte
    /// sectors for databases that count in sectors).
    pub bytes: u64,
    /// A write request (`io_op::WRITE`); every other request counts as a
    /// read in the I/O evidence.
    pub write: bool,
    /// A read request proper (`io_op::READ`: not a flush or a discard).
    pub read: bool,
}

/// Page allocations reported at `ts` (a summary or a single allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAllocs {
    /// When the allocations were reported, Unix ns (`events.timestamp`; for
    /// a summary, the end of the interval it covers).
    pub ts: i64,
    /// Bytes of pages allocated (`arg1` of a summary, `arg0` of a single
    /// allocation).
    pub bytes: u64,
}

/// An OOM kill on the node (`oom_kill` events, any process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomKill {
    /// When the OOM killer chose its victim, Unix ns.
    pub ts: i64,
    /// Process id of the victim (`arg1`, else the event's `pid`).
    pub victim: u32,
    /// Resident set size of the victim in bytes (`arg0`).
    pub rss_bytes: u64,
}

/// One `system_snapshots` row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// When the sample was taken, Unix ns (`timestamp`).
    pub ts: i64,
    /// Node-wide CPU busy percentage, 0-100, since the previous sample
    /// (`cpu_pct`, 0 when NULL).
    pub cpu_pct: f64,
    /// Memory in use as a percentage of the total (`mem_pct`, 0 when NULL).
    pub mem_pct: f64,
    /// Pages swapped in since the previous sample (`swap_in`, 0 when NULL).
    pub swap_in: i64,
    /// Pages swapped out since the previous sample (`swap_out`, 0 when NULL).
    pub swap_out: i64,
}

/// Everything recorded for one node in the window.
#[derive(Debug, Clone, Default)]
pub struct NodeData {
    /// Node name (`events.node`; empty when the database has no `node` column).
    pub node: String,
    /// Calls per (source, op), in timestamp order.
    pub calls: BTreeMap<(u8, u8), Vec<Call>>,
    /// NCCL calls (collectives, groups, communicator set-up), by start:
    /// time their callers spent inside a call. Read from this tracer's
    /// databases only (source 6 is TCP in the original ingero's).
    pub nccl_calls: Vec<Call>,
    /// Off-CPU spans of traced threads (`sched_switch` events), by start.
    pub off_cpu: Vec<OffCpu>,
    /// Block I/O requests (`events` of the I/O source), by start.
    pub io: Vec<Io>,
    /// Page allocations by traced processes (summary and single-allocation
    /// events), in the order read.
    pub page_allocs: Vec<PageAllocs>,
    /// OOM kills on the node (`oom_kill` events), in the order read.
    pub oom_kills: Vec<OomKill>,
    /// Resource samples within the window (`system_snapshots`), by time.
    pub snapshots: Vec<Snapshot>,
    /// Task names by task id (`process_names`).
    pub names: HashMap<u32, String>,
    /// Processes created by traced processes (`arg1` of fork events):
    /// the job's worker processes, such as DataLoader workers.
    pub children: HashSet<u32>,
    /// The process that created each of `children` (`pid` of its fork event).
    pub parents: HashMap<u32, u32>,
    /// Operations whose stored events are a sample of the calls
    /// `event_aggregates` counts ([`super::sampled`]), by (source, op).
    pub sampled: BTreeMap<(u8, u8), super::sampled::Sampled>,
    /// Rank of the traced process on this node (`events.rank` of the first of
    /// its events read that has one), when known.
    pub rank: Option<i64>,
    /// The job's world size (`events.world_size` of the event `rank` came from).
    pub world_size: Option<i64>,
    /// Events of the node read in the window, of every source.
    pub events: u64,
    /// The span the data covers: the node's first to last event read.
    pub window: Window,
}

impl NodeData {
    /// The name of a task (process or thread), or "task N". Names are
    /// set by the traced processes themselves: control characters are
    /// dropped and the length capped, so a name cannot forge output lines.
    #[must_use]
    pub fn task_name(&self, id: u32) -> String {
        match self.names.get(&id) {
            Some(name) => format!("{} ({id})", crate::text::sanitize(name, 32)),
            None => format!("task {id}"),
        }
    }
}

/// How the database encodes what the rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conventions {
    /// `events` has a `node` column (else all events belong to one unnamed node).
    pub has_node: bool,
    /// `events` has both `rank` and `world_size` columns.
    pub has_rank: bool,
    /// CUDA timestamps at the end of the call (this tracer) or its entry.
    pub timestamps_at_end: bool,
    /// Block I/O `arg0` in bytes (this tracer) or sectors.
    pub io_bytes: bool,
    /// `sched_switch` `arg0` says whether the thread was preempted.
    pub preempt_flag: bool,
}

/// The conventions of the database behind `conn`, from its `events`
/// columns and its `schema_info` notes (`timestamp_note`, `io_arg0`).
pub fn conventions(conn: &Connection) -> rusqlite::Result<Conventions> {
    let info = |key: &str| -> rusqlite::Result<Option<String>> {
        if !table_exists(conn, "schema_info")? {
            return Ok(None);
        }
        let mut stmt = conn.prepare("SELECT value FROM schema_info WHERE key = ?1")?;
        let mut rows = stmt.query([key])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    };
    let ours = info("timestamp_note")?.is_some_and(|n| n.contains("END"));
    Ok(Conventions {
        has_node: has_column(conn, "events", "node")?,
        has_rank: has_column(conn, "events", "rank")? && has_column(conn, "events", "world_size")?,
        timestamps_at_end: ours,
        io_bytes: info("io_arg0")?.as_deref() == Some("bytes"),
        preempt_flag: ours,
    })
}

/// An SQL condition true for the `events` rows whose columns the
/// analysis reads have the types it reads them as (integers, a text or
/// NULL node): a row with, say, a text `timestamp` is skipped instead of
/// failing the whole analysis. `extra` names further integer columns.
#[must_use]
pub fn well_typed(conv: &Conventions, extra: &[&str]) -> String {
    let mut parts: Vec<String> = [
        "source",
        "op",
        "pid",
        "tid",
        "timestamp",
        "duration",
        "arg0",
        "arg1",
    ]
    .iter()
    .chain(extra)
    .map(|c| format!("typeof({c}) = 'integer'"))
    .collect();
    parts.push("source BETWEEN 0 AND 255 AND op BETWEEN 0 AND 255".into());
    if conv.has_node {
        parts.push("typeof(node) IN ('text', 'null')".into());
    }
    if conv.has_rank {
        parts
            .push("typeof(rank) IN ('integer', 'null') AND typeof(world_size) IN ('integer', 'null')".into());
    }
    parts.join(" AND ")
}

/// Events whose `timestamp` is text or a blob (so every analysis leaves
/// them out). Such values sort after every number, so the timestamp
/// index finds them without a scan.
pub fn odd_timestamps(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM events WHERE timestamp >= ''", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.max(0) as u64)
}

/// The warning line for `odd` events left out of `path`, if any.
#[must_use]
pub fn odd_warning(path: &std::path::Path, odd: u64) -> Option<String> {
    (odd > 0).then(|| {
        format!(
            "ingero: warning: {odd} event(s) of {} have a timestamp that is not a number and were left out; find them with: SELECT * FROM events WHERE timestamp >= ''",
            path.display()
        )
    })
}

/// Loads every node's data; each node's window is its own first to last
/// event within `window` (the whole database when `None`): the span of
/// data actually analysed, never a stretch asked for where nothing was
/// recorded (which would dilute every rate and share). Rows whose columns
/// have the wrong type (see [`well_typed`]) are skipped.
pub fn load(conn: &Connection, window: Option<Window>) -> rusqlite::Result<Vec<NodeData>> {
    let conv = conventions(conn)?;
    let node_expr = if conv.has_node { "node" } else { "''" };
    let rank_expr = if conv.has_rank {
        "rank, world_size"
    } else {
        "NULL, NULL"
    };
    let typed = well_typed(&conv, &[]);
    let filter = window.map_or(format!("WHERE {typed}"), |w| {
        format!("WHERE timestamp BETWEEN {} AND {} AND {typed}", w.from, w.to)
    });
    let sql = format!(
        "SELECT {node_expr}, source, op, pid, tid, timestamp, duration, arg0, arg1, {rank_expr} FROM events {filter}"
    );
    let mut nodes: BTreeMap<String, NodeData> = BTreeMap::new();
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let node: String = r.get::<_, Option<String>>(0)?.unwrap_or_default();
        let (src, op): (u8, u8) = (r.get(1)?, r.get(2)?);
        let (pid, tid): (u32, u32) = (r.get::<_, i64>(3)? as u32, r.get::<_, i64>(4)? as u32);
        let (ts, dur): (i64, i64) = (r.get(5)?, r.get::<_, i64>(6)?.max(0));
        let (arg0, arg1): (i64, i64) = (r.get(7)?, r.get(8)?);
        let d = nodes.entry(node.clone()).or_insert_with(|| NodeData {
            node,
            window: Window {
                from: i64::MAX,
                to: i64::MIN,
            },
            ..NodeData::default()
        });
        d.events += 1;
        d.window.from = d.window.from.min(ts);
        d.window.to = d.window.to.max(ts);
        if d.rank.is_none() {
            d.rank = r.get(9)?;
            d.world_size = r.get(10)?;
        }
        // Spans end at the timestamp except CUDA calls of entry-stamped databases.
        let (start, end) = (ts - dur, ts);
        match src {
            source::CUDA | source::DRIVER => {
                let (start, end) = if conv.timestamps_at_end {
                    (start, end)
                } else {
                    (ts, ts + dur)
                };
                let bytes = if arg0_is_bytes(src, op) {
                    arg0.max(0) as u64
                } else {
                    0
                };
                d.calls.entry((src, op)).or_default().push(Call {
                    pid,
                    tid,
                    start,
                    end,
                    bytes,
                });
            }
            source::HOST => match op {
                host_op::SCHED_SWITCH => d.off_cpu.push(OffCpu {
                    pid,
                    tid,
                    start,
                    end,
                    preempted: conv.preempt_flag.then_some(arg0 == 1),
                    preemptor: arg1 as u32,
                }),
                // 3: single page allocations (arg0 bytes) of the original tracer.
                3 => d.page_allocs.push(PageAllocs {
                    ts,
                    bytes: arg0.max(0) as u64,
                }),
                host_op::MM_PAGE_ALLOC_SUMMARY => d.page_allocs.push(PageAllocs {
                    ts,
                    bytes: arg1.max(0) as u64,
                }),
                host_op::PROCESS_FORK if arg1 > 0 => {
                    d.children.insert(arg1 as u32);
                    d.parents.insert(arg1 as u32, pid);
                }
                host_op::OOM_KILL => d.oom_kills.push(OomKill {
                    ts,
                    victim: if arg1 > 0 { arg1 as u32 } else { pid },
                    rss_bytes: arg0.max(0) as u64,
                }),
                _ => {}
            },
            source::IO => d.io.push(Io {
                pid,
                tid,
                start,
                end,
                bytes: if conv.io_bytes {
                    arg0.max(0) as u64
                } else {
                    arg0.max(0) as u64 * 512
                },
                write: op == io_op::WRITE,
                read: op == io_op::READ,
            }),
            source::NCCL if conv.timestamps_at_end => d.nccl_calls.push(Call {
                pid,
                tid,
                start,
                end,
                bytes: 0,
            }),
            _ => {}
        }
    }
    drop(rows);
    drop(stmt);
    for d in nodes.values_mut() {
        for calls in d.calls.values_mut() {
            calls.sort_by_key(|c| c.start);
        }
        d.off_cpu.sort_by_key(|o| o.start);
        d.io.sort_by_key(|i| i.start);
        d.nccl_calls.sort_by_key(|c| c.start);
    }
    load_names(conn, &mut nodes, conv.has_node)?;
    load_snapshots(conn, &mut nodes)?;
    super::sampled::load(conn, conv, &mut nodes)?;
    Ok(nodes.into_values().collect())
}

fn load_names(
    conn: &Connection,
    nodes: &mut BTreeMap<String, NodeData>,
    has_node: bool,
) -> rusqlite::Result<()> {
    if !table_exists(conn, "process_names")? {
        return Ok(());
    }
    let by_node = has_node && has_column(conn, "process_names", "node")?;
    let node_expr = if by_node { "node" } else { "''" };
    // Names without a node (the original ingero's table) belong to the
    // database's only node, whatever its name.
    let only = match (by_node, nodes.len()) {
        (false, 1) => nodes.keys().next().cloned(),
        _ => None,
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {node_expr}, pid, name FROM process_names
         WHERE typeof({node_expr}) IN ('text', 'null') AND typeof(pid) = 'integer' AND typeof(name) = 'text'"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let node: String = only
            .clone()
            .map_or_else(|| r.get::<_, Option<String>>(0), |n| Ok(Some(n)))?
            .unwrap_or_default();
        if let Some(d) = nodes.get_mut(&node) {
            d.names.insert(r.get::<_, i64>(1)? as u32, r.get(2)?);
        }
    }
    Ok(())
}

fn load_snapshots(conn: &Connection, nodes: &mut BTreeMap<String, NodeData>) -> rusqlite::Result<()> {
    if !table_exists(conn, "system_snapshots")? || !has_column(conn, "system_snapshots", "node")? {
        return Ok(());
    }
    let mut stmt = conn.prepare(
        "SELECT node, timestamp, ifnull(cpu_pct, 0), ifnull(mem_pct, 0), ifnull(swap_in, 0), ifnull(swap_out, 0)
         FROM system_snapshots
         WHERE typeof(node) = 'text' AND typeof(timestamp) = 'integer'
           AND typeof(cpu_pct) IN ('integer', 'real', 'null') AND typeof(mem_pct) IN ('integer', 'real', 'null')
           AND typeof(swap_in) IN ('integer', 'null') AND typeof(swap_out) IN ('integer', 'null')
         ORDER BY timestamp",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let node: String = r.get(0)?;
        if let Some(d) = nodes.get_mut(&node) {
            let ts: i64 = r.get(1)?;
            if ts >= d.window.from && ts <= d.window.to {
                d.snapshots.push(Snapshot {
                    ts,
                    cpu_pct: r.get(2)?,
                    mem_pct: r.get(3)?,
                    swap_in: r.get(4)?,
                    swap_out: r.get(5)?,
                });
            }
        }
    }
    Ok(())
}

/// The name of an operation: the database's `ops` table, else the catalog.
pub fn op_names(conn: &Connection) -> rusqlite::Result<HashMap<(u8, u8), String>> {
    let mut names = HashMap::new();
    if table_exists(conn, "ops")? {
        let mut stmt = conn.prepare("SELECT source_id, op_id, name FROM ops")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            names.insert((r.get(0)?, r.get(1)?), r.get(2)?);
        }
    }
    Ok(names)
}

/// The display name of `(source, op)`.
#[must_use]
pub fn op_name(names: &HashMap<(u8, u8), String>, src: u8, op: u8) -> String {
    names
        .get(&(src, op))
        .cloned()
        .or_else(|| op_info(src, op).map(|o| o.name.to_owned()))
        .unwrap_or_else(|| format!("op {src}/{op}"))
}
