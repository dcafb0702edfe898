//! The rows a native trace is drawn from: events read and type-checked
//! in Rust (the two scans of [`super::export`]), and the side table of
//! long events, CPU samples and NCCL calls, each row becoming an [`Item`]
//! ordered by start.
//!
//! Invariants: [`read_event`] and [`scan_nodes`] agree on which rows count
//! and when each starts ([`start`]), so the lag the first scan measures
//! holds for the second; the side table holds only well-typed rows, and
//! events go either there (at least [`LONG_NS`] long) or to the scans
//! (shorter), never both.

use std::{cmp::Reverse, collections::HashMap};

use agent_common::catalog::{host_op, source};
use rusqlite::{Connection, Row, types::ValueRef};

use super::LONG_NS;
use crate::{
    analysis::{
        chain::Chain,
        dataset::{Conventions, well_typed},
    },
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// The temporary table of the side items (dropped after the export).
pub(super) const SIDE: &str = "temp.ingero_pftrace_side";
/// Each node's clock offset, for [`fill_side`] to order arrivals by
/// (dropped once the side table is filled).
const OFFSETS: &str = "temp.ingero_pftrace_offsets";

/// Item kinds, in the order items starting together are written.
pub(super) const EVENT: u8 = 0;
pub(super) const CPU: u8 = 1;
pub(super) const COLLECTIVE: u8 = 2;
pub(super) const CHAIN: u8 = 3;

/// An `events` row, well typed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Event {
    pub(super) pid: u32,
    pub(super) tid: u32,
    pub(super) src: u8,
    pub(super) op: u8,
    pub(super) arg0: i64,
    pub(super) arg1: i64,
    pub(super) ret: i64,
    pub(super) rank: Option<i64>,
}

/// An `nccl_collectives` row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Collective {
    pub(super) pid: u32,
    pub(super) tid: u32,
    pub(super) op: u8,
    pub(super) comm: i64,
    pub(super) seq: i64,
    pub(super) bytes: i64,
    pub(super) count: i64,
    pub(super) datatype: i32,
    pub(super) peer: Option<i64>,
    pub(super) flow: i64,
    /// Ranks taking part x2, +1 for the last to arrive.
    pub(super) packed: i64,
}

#[derive(Debug, Clone)]
pub(super) enum Payload {
    Event(Event),
    Cpu(f64),
    Collective(Collective),
    Chain(Box<Chain>),
}

/// Something to write at `t` (a slice's start), `dur` long.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) t: i64,
    pub(super) dur: i64,
    pub(super) kind: u8,
    /// Arrival number: keeps equal items in arrival order.
    pub(super) n: u64,
    pub(super) payload: Payload,
}

impl Item {
    /// Start order; at equal starts the longest first (so slices nest).
    fn key(&self) -> (i64, Reverse<i64>, u8, u64) {
        (self.t, Reverse(self.dur), self.kind, self.n)
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The columns both event scans read.
pub(super) fn event_columns(conv: Conventions) -> String {
    let node_col = if conv.has_node { "node" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    format!("{node_col}, timestamp, duration, pid, tid, source, op, arg0, arg1, ret_code, {rank_col}")
}

/// An event as read: its node (the text as stored), start, duration and
/// content.
pub(super) type Placed<'r> = (&'r [u8], i64, i64, Event);

/// Reads an events row of [`event_columns`]; `None` for a badly typed row
/// or a source the export does not draw.
pub(super) fn read_event<'r>(r: &'r Row<'_>, conv: Conventions) -> rusqlite::Result<Option<Placed<'r>>> {
    let int = |i: usize| -> rusqlite::Result<Option<i64>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Integer(v) => Some(v),
            _ => None,
        })
    };
    let node = match r.get_ref(0)? {
        ValueRef::Text(t) => t,
        ValueRef::Null => b"",
        _ => return Ok(None),
    };
    let rank = match r.get_ref(10)? {
        ValueRef::Integer(v) => Some(v),
        ValueRef::Null => None,
        _ => return Ok(None),
    };
    let mut v = [0i64; 9];
    for (i, slot) in v.iter_mut().enumerate() {
        match int(i + 1)? {
            Some(x) => *slot = x,
            None => return Ok(None),
        }
    }
    let [ts, dur, pid, tid, src, op, arg0, arg1, ret] = v;
    let (Ok(src), Ok(op)) = (u8::try_from(src), u8::try_from(op)) else {
        return Ok(None);
    };
    let dur = dur.max(0);
    let Some(t) = start(conv, ts, dur, src, op) else {
        return Ok(None);
    };
    Ok(Some((
        node,
        t,
        dur,
        Event {
            pid: pid as u32,
            tid: tid as u32,
            src,
            op,
            arg0,
            arg1,
            ret,
            rank,
        },
    )))
}

/// When an event of `source`/`op` starts (a slice) or happens (a marker,
/// a counter sample); `None` for a source the export does not draw.
pub(super) fn start(conv: Conventions, ts: i64, dur: i64, src: u8, op: u8) -> Option<i64> {
    match (src, op) {
        (source::CUDA | source::DRIVER, _) if !conv.timestamps_at_end => Some(ts),
        (source::CUDA | source::DRIVER | source::IO, _) | (source::HOST, host_op::SCHED_SWITCH) => {
            Some(ts - dur)
        }
        (source::HOST, _) => Some(ts),
        _ => None,
    }
}

/// A node found by the first scan.
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) min_rank: Option<i64>,
    pub(super) max_rank: Option<i64>,
    /// The latest start among its short events read so far.
    pub(super) max_t: Option<i64>,
    /// How far a short event started before `max_t` at worst.
    pub(super) lag: i64,
}

/// The `WHERE` condition of the window on `timestamp`.
pub(super) fn window_sql(window: Option<Window>) -> String {
    window.map_or_else(
        || "1".to_owned(),
        |w| format!("timestamp BETWEEN {} AND {}", w.from, w.to),
    )
}

/// First scan: the nodes (by name) and their ranks and lags.
pub(super) fn scan_nodes(
    conn: &Connection,
    conv: Conventions,
    window: Option<Window>,
) -> rusqlite::Result<Vec<(String, Found)>> {
    let mut nodes: Vec<(String, Found)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let node_col = if conv.has_node { "node" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    // The columns that place an event (the others are checked when read).
    let mut stmt = conn.prepare(&format!(
        "SELECT {node_col}, timestamp, duration, source, op, {rank_col} FROM events NOT INDEXED WHERE {}",
        window_sql(window)
    ))?;
    let mut rows = stmt.query([])?;
    let mut last = usize::MAX;
    while let Some(r) = rows.next()? {
        let node = match r.get_ref(0)? {
            ValueRef::Text(t) => t,
            ValueRef::Null => b"",
            _ => continue,
        };
        let (ValueRef::Integer(ts), ValueRef::Integer(dur), ValueRef::Integer(src), ValueRef::Integer(op)) =
            (r.get_ref(1)?, r.get_ref(2)?, r.get_ref(3)?, r.get_ref(4)?)
        else {
            continue;
        };
        let rank = match r.get_ref(5)? {
            ValueRef::Integer(v) => Some(v),
            ValueRef::Null => None,
            _ => continue,
        };
        let (Ok(src), Ok(op)) = (u8::try_from(src), u8::try_from(op)) else {
            continue;
        };
        let dur = dur.max(0);
        let Some(t) = start(conv, ts, dur, src, op) else {
            continue;
        };
        if nodes.get(last).is_none_or(|(name, _)| name.as_bytes() != node) {
            let node = String::from_utf8_lossy(node).into_owned();
            last = *index.entry(node.clone()).or_insert_with(|| {
                nodes.push((node, Found::default()));
                nodes.len() - 1
            });
        }
        let f = &mut nodes[last].1;
        if let Some(rank) = rank {
            f.min_rank = Some(f.min_rank.map_or(rank, |m| m.min(rank)));
            f.max_rank = Some(f.max_rank.map_or(rank, |m| m.max(rank)));
        }
        if dur < LONG_NS {
            let max_t = f.max_t.map_or(t, |m| m.max(t));
            f.lag = f.lag.max(max_t - t);
            f.max_t = Some(max_t);
        }
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(nodes)
}

/// Fills the side table: long events, CPU samples, NCCL calls (with their
/// flow ids, and the last to arrive found on the reference clock: each
/// node's start less its `offsets` entry). Columns: kind, node, t, dur,
/// c0..c10.
pub(super) fn fill_side(
    conn: &Connection,
    conv: Conventions,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {SIDE};
         CREATE TABLE {SIDE}(kind INTEGER, node TEXT, t INTEGER, dur INTEGER,
                             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)"
    ))?;
    let node_col = if conv.has_node { "coalesce(node, '')" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    let call_start = if conv.timestamps_at_end {
        "timestamp - duration"
    } else {
        "timestamp"
    };
    let (cuda, host, driver, io) = (source::CUDA, source::HOST, source::DRIVER, source::IO);
    let switch = host_op::SCHED_SWITCH;
    let within = window_sql(window);
    // `duration >= LONG_NS` first: the type checks then run on few rows.
    conn.execute_batch(&format!(
        "INSERT INTO {SIDE}
         SELECT {EVENT}, {node_col},
                CASE WHEN source IN ({cuda}, {driver}) THEN {call_start}
                     WHEN source = {io} OR (source = {host} AND op = {switch}) THEN timestamp - duration
                     ELSE timestamp END,
                duration, pid, tid, source, op, arg0, arg1, ret_code, {rank_col}, NULL, NULL, NULL
         FROM events NOT INDEXED
         WHERE duration >= {LONG_NS} AND {} AND source IN ({cuda}, {host}, {driver}, {io}) AND {within}",
        well_typed(&conv, &["ret_code"])
    ))?;
    if table_exists(conn, "system_snapshots")? && has_column(conn, "system_snapshots", "node")? {
        conn.execute_batch(&format!(
            "INSERT INTO {SIDE}
             SELECT {CPU}, node, timestamp, 0, cpu_pct, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM system_snapshots
             WHERE typeof(node) = 'text' AND typeof(timestamp) = 'integer'
               AND typeof(cpu_pct) IN ('integer', 'real') AND {within}"
        ))?;
    }
    if table_exists(conn, "nccl_collectives")? {
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {OFFSETS};
             CREATE TABLE {OFFSETS}(node TEXT PRIMARY KEY, ns INTEGER NOT NULL)"
        ))?;
        let mut add = conn.prepare(&format!("INSERT INTO {OFFSETS} VALUES (?1, ?2)"))?;
        for (node, ns) in offsets {
            add.execute(rusqlite::params![node, ns])?;
        }
        // The flow id numbers the collectives; c10 packs how many ranks
        // took part (x2) and whether this call was the last to arrive.
        conn.execute_batch(&format!(
            "INSERT INTO {SIDE}
             SELECT {COLLECTIVE}, node, timestamp - max(duration, 0), max(duration, 0), pid, tid, op, comm_id, seq,
                    bytes, count, datatype, peer, flow, ranks * 2 + (arrival = 1)
             FROM (SELECT c.*, dense_rank() OVER (ORDER BY comm_id, seq) AS flow,
                          count(*) OVER (PARTITION BY comm_id, seq) AS ranks,
                          row_number() OVER (PARTITION BY comm_id, seq
                                             ORDER BY timestamp - duration - coalesce(o.ns, 0) DESC,
                                                      c.node DESC, tid DESC) AS arrival
                   FROM nccl_collectives c LEFT JOIN {OFFSETS} o ON o.node = c.node
                   WHERE comm_id IS NOT NULL AND ret_code = 0 AND {within});
             DROP TABLE {OFFSETS}"
        ))?;
    }
    conn.execute_batch(&format!(
        "CREATE INDEX {SIDE}_order ON {}(node, t, dur DESC, kind)",
        SIDE.trim_start_matches("temp.")
    ))
}

/// Reads a side-table row (`kind, t, dur, c0..c10`) as an item.
pub(super) fn read_side(r: &Row<'_>, n: u64) -> rusqlite::Result<Item> {
    let kind: u8 = r.get(0)?;
    let (t, dur): (i64, i64) = (r.get(1)?, r.get(2)?);
    let id = |i: usize| -> rusqlite::Result<u32> { Ok(r.get::<_, i64>(i)? as u32) };
    let payload = match kind {
        EVENT => Payload::Event(Event {
            pid: id(3)?,
            tid: id(4)?,
            src: r.get(5)?,
            op: r.get(6)?,
            arg0: r.get(7)?,
            arg1: r.get(8)?,
            ret: r.get(9)?,
            rank: r.get(10)?,
        }),
        CPU => Payload::Cpu(r.get(3)?),
        _ => Payload::Collective(Collective {
            pid: id(3)?,
            tid: id(4)?,
            op: r.get(5)?,
            comm: r.get(6)?,
            seq: r.get(7)?,
            bytes: r.get(8)?,
            count: r.get(9)?,
            datatype: r.get(10)?,
            peer: r.get(11)?,
            flow: r.get(12)?,
            packed: r.get(13)?,
        }),
    };
    Ok(Item {
        t,
        dur,
        kind,
        n,
        payload,
    })
}
