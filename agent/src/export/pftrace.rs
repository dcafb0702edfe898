//! `ingero export --format perfetto -o trace.pftrace`: a database as
//! Perfetto's native protobuf trace (the format the Perfetto SDK writes).
//!
//! Layout, per node (one packet sequence each, see [`sequence`]):
//! - the node is a process track (`gpu-node-01 (rank 0)`) whose pid is
//!   synthetic (`NODE_PID_BASE + n`, above any Linux pid) so nodes never
//!   merge, whatever pids they share; under it a track per traced process
//!   (`name (pid P, rank R)`: its lifecycle markers and page-allocation
//!   counter), a thread track per traced thread (real tid, the node's
//!   pid), the block I/O lanes and the CPU-load counter; causal chains are
//!   instants on the node track with their summary, root cause,
//!   explanation and fixes as arguments;
//! - CUDA and driver calls, off-CPU spans and NCCL collectives are slices
//!   on their thread, starting at `timestamp - duration` (the store keeps a
//!   call's end); the calls of one collective on every rank (same
//!   communicator and sequence number) are joined by a flow, in the order
//!   the ranks arrived;
//! - timestamps stay on the node's own clock; the sequence's clock snapshot
//!   ties that clock to the reference (Unix) clock by the node's estimated
//!   offset (0 for a local database), so Perfetto lines the nodes up.
//!
//! Streaming without sorting the events: a sequence needs its items in
//! start order, and the events table is nearly in that order already.
//! - A first scan (rowid order, a few columns) finds the nodes, their
//!   ranks, and how late an event arrives at worst after a later-starting
//!   one of its node (its *lag*, seconds at most when the rows were written
//!   as they came).
//! - Events shorter than [`LONG_NS`] are then read once more in the same
//!   order (or, if some node lags more than [`MAX_LAG_NS`], in timestamp
//!   order through the index, where the lag is at most [`LONG_NS`]); each
//!   waits in its node's heap until no later row can start before it.
//! - The few longer events, the CPU samples and the NCCL calls go to a
//!   temporary table indexed by node and start, read by one cursor per
//!   node; the causal chains are kept in memory (a handful per node).
//!
//! Memory holds one lag's worth of events per node, their open slices,
//! tracks and interned names; never the whole table. Rows whose columns
//! have unexpected types are skipped, as in the JSON export.

mod sequence;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io::Write,
};

use agent_common::catalog::{self, host_op, source};
use rusqlite::{Connection, Row, Rows, types::ValueRef};

use self::sequence::{Arg, Flow, Name, NameKey, Output, Sequence, Value};
use super::{ExportError, ExportReport, node_label};
use crate::{
    analysis::{
        chain::Chain,
        dataset::{Conventions, conventions, op_name, op_names, well_typed},
    },
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// Node `n`'s process descriptor has pid `NODE_PID_BASE + n` (n from 1):
/// Linux pids stay below 2^22, so it never names a real process.
pub const NODE_PID_BASE: i64 = 1 << 22;

/// Events at least this long (100 ms) are read from the sorted side table
/// rather than waiting in the node's heap.
pub const LONG_NS: i64 = 100_000_000;

/// Rowid order is used when no node's events arrive more than this (1 s)
/// after a later-starting one; timestamp order otherwise.
pub const MAX_LAG_NS: i64 = 1_000_000_000;

/// The temporary table of the side items (dropped afterwards).
const SIDE: &str = "temp.ingero_pftrace_side";

/// Item kinds, in the order items starting together are written.
const EVENT: u8 = 0;
const CPU: u8 = 1;
const COLLECTIVE: u8 = 2;
const CHAIN: u8 = 3;

/// An `events` row, well typed.
#[derive(Debug, Clone, Copy)]
struct Event {
    pid: u32,
    tid: u32,
    src: u8,
    op: u8,
    arg0: i64,
    arg1: i64,
    ret: i64,
    rank: Option<i64>,
}

/// An `nccl_collectives` row.
#[derive(Debug, Clone, Copy)]
struct Collective {
    pid: u32,
    tid: u32,
    op: u8,
    comm: i64,
    seq: i64,
    bytes: i64,
    count: i64,
    datatype: i32,
    peer: Option<i64>,
    flow: i64,
    /// Ranks taking part x2, +1 for the last to arrive.
    packed: i64,
}

#[derive(Debug, Clone)]
enum Payload {
    Event(Event),
    Cpu(f64),
    Collective(Collective),
    Chain(Box<Chain>),
}

/// Something to write at `t` (a slice's start), `dur` long.
#[derive(Debug, Clone)]
struct Item {
    t: i64,
    dur: i64,
    kind: u8,
    /// Arrival number: keeps equal items in arrival order.
    n: u64,
    payload: Payload,
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
fn event_columns(conv: &Conventions) -> String {
    let node_col = if conv.has_node { "node" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    format!("{node_col}, timestamp, duration, pid, tid, source, op, arg0, arg1, ret_code, {rank_col}")
}

/// Reads an events row of [`event_columns`]: its node, start, duration
/// and content; `None` for a badly typed row or a source the export does
/// not draw.
fn read_event<'r>(
    r: &'r Row<'_>,
    conv: &Conventions,
) -> rusqlite::Result<Option<(&'r [u8], i64, i64, Event)>> {
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
fn start(conv: &Conventions, ts: i64, dur: i64, src: u8, op: u8) -> Option<i64> {
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
struct Found {
    min_rank: Option<i64>,
    max_rank: Option<i64>,
    /// The latest start among its short events read so far.
    max_t: Option<i64>,
    /// How far a short event started before `max_t` at worst.
    lag: i64,
}

/// The `WHERE` condition of the window on `timestamp`.
fn window_sql(window: Option<Window>) -> String {
    window.map_or_else(
        || "1".to_owned(),
        |w| format!("timestamp BETWEEN {} AND {}", w.from, w.to),
    )
}

/// First scan: the nodes (by name) and their ranks and lags.
fn scan_nodes(
    conn: &Connection,
    conv: &Conventions,
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
/// flow ids). Columns: kind, node, t, dur, c0..c10.
fn fill_side(conn: &Connection, conv: &Conventions, window: Option<Window>) -> rusqlite::Result<()> {
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
        well_typed(conv, &["ret_code"])
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
        // The flow id numbers the collectives; c10 packs how many ranks
        // took part (x2) and whether this call was the last to arrive.
        conn.execute_batch(&format!(
            "INSERT INTO {SIDE}
             SELECT {COLLECTIVE}, node, timestamp - max(duration, 0), max(duration, 0), pid, tid, op, comm_id, seq,
                    bytes, count, datatype, peer, flow, ranks * 2 + (arrival = 1)
             FROM (SELECT *, dense_rank() OVER (ORDER BY comm_id, seq) AS flow,
                          count(*) OVER (PARTITION BY comm_id, seq) AS ranks,
                          row_number() OVER (PARTITION BY comm_id, seq
                                             ORDER BY timestamp - duration DESC, node DESC, tid DESC) AS arrival
                   FROM nccl_collectives
                   WHERE comm_id IS NOT NULL AND ret_code = 0 AND {within})"
        ))?;
    }
    conn.execute_batch(&format!(
        "CREATE INDEX {SIDE}_order ON {}(node, t, dur DESC, kind)",
        SIDE.trim_start_matches("temp.")
    ))
}

/// Reads a side-table row (`kind, t, dur, c0..c10`) as an item.
fn read_side(r: &Row<'_>, n: u64) -> rusqlite::Result<Item> {
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

/// What every node's writing reads: op and process names, conventions.
struct Context<'a> {
    ops: HashMap<(u8, u8), String>,
    names: HashMap<(String, u32), String>,
    conv: &'a Conventions,
    offsets: &'a HashMap<String, i64>,
}

impl Context<'_> {
    fn name_of(&self, node: &str, id: u32) -> Option<&str> {
        self.names.get(&(node.to_owned(), id)).map(String::as_str)
    }
}

/// One node being written: its pending items and its sequence.
struct NodeRun<'s> {
    /// 1-based, in name order: the sequence id.
    index: u64,
    node: String,
    label: String,
    seq: Option<Sequence>,
    /// Short events read but not yet written.
    heap: BinaryHeap<Reverse<Item>>,
    max_t: i64,
    lag: i64,
    side: Rows<'s>,
    side_head: Option<Item>,
    chains: std::vec::IntoIter<Chain>,
}

impl NodeRun<'_> {
    /// Writes every pending item that no unread row can precede (all of
    /// them when `all`).
    fn pump<W: Write>(
        &mut self,
        out: &mut Output<W>,
        cx: &Context<'_>,
        report: &mut ExportReport,
        all: bool,
    ) -> Result<(), ExportError> {
        let bound = if all {
            i64::MAX
        } else {
            self.max_t.saturating_sub(self.lag)
        };
        loop {
            let heap_t = self.heap.peek().map(|Reverse(i)| i);
            let side_first = match (&self.side_head, heap_t) {
                (Some(s), Some(h)) => s < h,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let next_t = if side_first {
                self.side_head.as_ref().map(|i| i.t)
            } else {
                heap_t.map(|i| i.t)
            };
            let chain_t = self.chains.as_slice().first().map(|c| c.peak_at);
            let item = match (next_t, chain_t) {
                (_, Some(c)) if next_t.is_none_or(|t| c <= t) && (all || c < bound) => {
                    let chain = self.chains.next().map(Box::new);
                    chain.map(|c| Item {
                        t: c.peak_at,
                        dur: 0,
                        kind: CHAIN,
                        n: 0,
                        payload: Payload::Chain(c),
                    })
                }
                (Some(t), _) if all || t < bound => {
                    if side_first {
                        let item = self.side_head.take();
                        self.side_head = match self.side.next()? {
                            Some(r) => Some(read_side(r, 0)?),
                            None => None,
                        };
                        item
                    } else {
                        self.heap.pop().map(|Reverse(i)| i)
                    }
                }
                _ => None,
            };
            let Some(item) = item else { return Ok(()) };
            self.write(out, cx, report, item)?;
        }
    }

    /// Writes one item, opening the sequence at the node's first.
    fn write<W: Write>(
        &mut self,
        out: &mut Output<W>,
        cx: &Context<'_>,
        report: &mut ExportReport,
        item: Item,
    ) -> Result<(), ExportError> {
        if self.seq.is_none() {
            let offset = cx.offsets.get(&self.node).copied().unwrap_or(0);
            self.seq = Some(Sequence::start(
                out,
                self.index,
                &self.label,
                NODE_PID_BASE + self.index as i64,
                item.t,
                offset,
            )?);
        }
        let Some(seq) = self.seq.as_mut() else {
            return Ok(());
        };
        let mut w = Writer {
            seq,
            node: &self.node,
            out,
            cx,
            report,
        };
        match item.payload {
            Payload::Event(e) => w.event(item.t, item.dur, &e)?,
            Payload::Cpu(v) => {
                w.report.counters += 1;
                let track = w.seq.cpu(w.out)?;
                w.seq.counter(w.out, track, item.t, v)?;
            }
            Payload::Collective(c) => w.collective(item.t, item.dur, &c)?,
            Payload::Chain(c) => w.chain(&c)?,
        }
        Ok(())
    }

    fn finish<W: Write>(
        mut self,
        out: &mut Output<W>,
        cx: &Context<'_>,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        self.pump(out, cx, report, true)?;
        if let Some(seq) = self.seq {
            report.threads += seq.threads();
            seq.finish(out)?;
        }
        Ok(())
    }
}

/// Exports `conn` to `out` as a native Perfetto trace. `offsets` gives each
/// node's clock offset (ns ahead of the reference clock; 0 if not listed),
/// which its clock snapshot records.
pub fn export(
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> Result<ExportReport, ExportError> {
    let conv = conventions(conn)?;
    let nodes = scan_nodes(conn, &conv, window)?;
    let by_rowid = nodes.iter().all(|(_, f)| f.lag <= MAX_LAG_NS);
    let cx = Context {
        ops: op_names(conn)?,
        names: super::thread_names(conn, &conv)?,
        conv: &conv,
        offsets,
    };
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.0.as_str(), i)).collect();
    let mut chains: Vec<Vec<Chain>> = vec![Vec::new(); nodes.len()];
    for c in crate::analysis::chain::load_stored(conn, i64::MIN).unwrap_or_default() {
        if window.is_some_and(|w| c.peak_at < w.from || c.peak_at > w.to) {
            continue;
        }
        if let Some(&i) = index.get(c.node.as_str()) {
            chains[i].push(c);
        }
    }
    for list in &mut chains {
        list.sort_by_key(|c| c.peak_at);
    }
    fill_side(conn, &conv, window)?;
    let result = write_all(conn, out, window, &nodes, &index, chains, by_rowid, &cx);
    // The side table would go with the connection; drop it now so the
    // connection can export again.
    let _ = conn.execute_batch(&format!("DROP TABLE IF EXISTS {SIDE}"));
    result
}

/// The second scan and the writing, once the side table is filled.
#[expect(
    clippy::too_many_arguments,
    reason = "the export's parts, prepared by its caller"
)]
fn write_all(
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    nodes: &[(String, Found)],
    index: &HashMap<&str, usize>,
    chains: Vec<Vec<Chain>>,
    by_rowid: bool,
    cx: &Context<'_>,
) -> Result<ExportReport, ExportError> {
    let mut report = ExportReport {
        format: "pftrace",
        nodes: nodes.len(),
        ..ExportReport::default()
    };
    let mut out = Output::new(std::io::BufWriter::new(out));
    let mut side_stmts = nodes
        .iter()
        .map(|_| {
            conn.prepare(&format!(
                "SELECT kind, t, dur, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10 FROM {SIDE}
                 WHERE node = ?1 ORDER BY t, dur DESC, kind"
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut runs = Vec::with_capacity(nodes.len());
    for ((stmt, (name, found)), list) in side_stmts.iter_mut().zip(nodes).zip(chains) {
        let mut side = stmt.query([name])?;
        let side_head = match side.next()? {
            Some(r) => Some(read_side(r, 0)?),
            None => None,
        };
        runs.push(NodeRun {
            index: runs.len() as u64 + 1,
            node: name.clone(),
            label: node_label(name, found.min_rank, found.max_rank),
            seq: None,
            heap: BinaryHeap::new(),
            max_t: i64::MIN,
            lag: if by_rowid { found.lag } else { LONG_NS },
            side,
            side_head,
            chains: list.into_iter(),
        });
    }

    let (from, order) = if by_rowid {
        ("events NOT INDEXED", "")
    } else {
        ("events", "ORDER BY timestamp")
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {from} WHERE duration < {LONG_NS} AND {} {order}",
        event_columns(cx.conv),
        window_sql(window)
    ))?;
    let mut rows = stmt.query([])?;
    let mut last: Option<usize> = None;
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let Some((node, t, dur, e)) = read_event(r, cx.conv)? else {
            continue;
        };
        let i = match last {
            Some(i) if runs[i].node.as_bytes() == node => i,
            _ => {
                let Some(&i) = index.get(String::from_utf8_lossy(node).as_ref()) else {
                    continue;
                };
                last = Some(i);
                i
            }
        };
        n += 1;
        let run = &mut runs[i];
        run.heap.push(Reverse(Item {
            t,
            dur,
            kind: EVENT,
            n,
            payload: Payload::Event(e),
        }));
        if t > run.max_t {
            run.max_t = t;
            run.pump(&mut out, cx, &mut report, false)?;
        }
    }
    drop(rows);
    for run in runs {
        run.finish(&mut out, cx, &mut report)?;
    }
    out.finish()?.flush()?;
    Ok(report)
}

/// Writes one node's items into its sequence.
struct Writer<'a, 'c, W: Write> {
    seq: &'a mut Sequence,
    node: &'a str,
    out: &'a mut Output<W>,
    cx: &'a Context<'c>,
    report: &'a mut ExportReport,
}

impl<W: Write> Writer<'_, '_, W> {
    /// The track of process `pid`.
    fn process(&mut self, pid: u32, rank: Option<i64>) -> std::io::Result<u64> {
        let (cx, node) = (self.cx, self.node);
        self.seq.process(self.out, pid, || {
            let name = cx.name_of(node, pid).unwrap_or("process");
            match rank {
                Some(r) => format!("{name} (pid {pid}, rank {r})"),
                None => format!("{name} (pid {pid})"),
            }
        })
    }

    /// The thread track of `tid` (in process `pid`).
    fn thread(&mut self, pid: u32, tid: u32, rank: Option<i64>) -> std::io::Result<u64> {
        if let Some(uuid) = self.seq.thread_uuid(tid) {
            return Ok(uuid);
        }
        self.process(pid, rank)?;
        let (cx, node) = (self.cx, self.node);
        // Linux threads keep their process's name unless renamed.
        self.seq.thread(self.out, pid, tid, || {
            cx.name_of(node, tid)
                .or_else(|| cx.name_of(node, pid))
                .unwrap_or("thread")
                .to_owned()
        })
    }

    fn event(&mut self, t: i64, dur: i64, e: &Event) -> std::io::Result<()> {
        let cx = self.cx;
        let label = || op_name(&cx.ops, e.src, e.op);
        match (e.src, e.op) {
            (source::CUDA | source::DRIVER, _) => {
                self.report.slices += 1;
                self.thread(e.pid, e.tid, e.rank)?;
                let name = self.seq.name(NameKey::Op(e.src, e.op), label);
                let args = [
                    (Arg::Arg0, Value::Int(e.arg0)),
                    (Arg::Arg1, Value::Int(e.arg1)),
                    (Arg::Ret, Value::Int(e.ret)),
                ];
                let args = if e.ret == 0 { &args[..2] } else { &args[..] };
                self.seq
                    .thread_slice(self.out, e.tid, t, t + dur, name, args, Flow::None)
            }
            (source::HOST, host_op::SCHED_SWITCH) => {
                self.report.slices += 1;
                self.thread(e.pid, e.tid, e.rank)?;
                let next = e.arg1 as u32;
                let node = self.node;
                let name = match (cx.conv.preempt_flag, e.arg0) {
                    (true, 1) => self.seq.name(NameKey::PreemptedBy(next), || {
                        let who = cx
                            .name_of(node, next)
                            .map_or_else(|| format!("task {next}"), |n| format!("{n} ({next})"));
                        format!("off-CPU: preempted by {who}")
                    }),
                    (true, _) => self
                        .seq
                        .name(NameKey::Fixed("off-CPU: waiting"), || "off-CPU: waiting".into()),
                    _ => self.seq.name(NameKey::Fixed("off-CPU"), || "off-CPU".into()),
                };
                self.seq.thread_slice(
                    self.out,
                    e.tid,
                    t,
                    t + dur,
                    name,
                    &[(Arg::Next, Value::Int(e.arg1))],
                    Flow::None,
                )
            }
            (source::HOST, host_op::MM_PAGE_ALLOC_SUMMARY) => {
                self.report.counters += 1;
                self.process(e.pid, e.rank)?;
                let track = self.seq.allocations(self.out, e.pid)?;
                let secs = (dur as f64 / 1e9).max(1e-3);
                self.seq
                    .counter(self.out, track, t, (e.arg1 as f64 / 1_048_576.0 / secs).round())
            }
            (source::HOST, _) => {
                self.report.markers += 1;
                let track = self.process(e.pid, e.rank)?;
                let name = self.seq.name(NameKey::Op(e.src, e.op), label);
                self.seq.instant(
                    self.out,
                    track,
                    t,
                    &name,
                    &[
                        (Arg::Tid, Value::Int(i64::from(e.tid))),
                        (Arg::Arg0, Value::Int(e.arg0)),
                        (Arg::Arg1, Value::Int(e.arg1)),
                    ],
                )
            }
            (source::IO, _) => {
                self.report.slices += 1;
                let bytes = if cx.conv.io_bytes { e.arg0 } else { e.arg0 * 512 };
                let name = self.seq.name(NameKey::Op(e.src, e.op), label);
                self.seq.io_slice(
                    self.out,
                    t,
                    t + dur,
                    name,
                    &[
                        (Arg::Bytes, Value::Int(bytes)),
                        (Arg::Sector, Value::Int(e.arg1)),
                        (Arg::IssuerPid, Value::Int(i64::from(e.pid))),
                        (Arg::IssuerTid, Value::Int(i64::from(e.tid))),
                    ],
                )
            }
            _ => Ok(()),
        }
    }

    /// A collective call: a slice on its thread, in its collective's flow
    /// when more than one rank took part.
    fn collective(&mut self, t: i64, dur: i64, c: &Collective) -> std::io::Result<()> {
        self.report.collectives += 1;
        self.thread(c.pid, c.tid, None)?;
        let call = catalog::op_info(source::NCCL, c.op).map_or("nccl", |o| o.name);
        let comm = crate::analysis::nccl_data::comm_hex(c.comm);
        let mut args = vec![
            (Arg::Comm, Value::Str(&comm)),
            (Arg::Seq, Value::Int(c.seq)),
            (Arg::Bytes, Value::Int(c.bytes)),
            (Arg::Count, Value::Int(c.count)),
            (
                Arg::Datatype,
                Value::Str(catalog::nccl_op::datatype_name(c.datatype)),
            ),
            (Arg::Pid, Value::Int(i64::from(c.pid))),
        ];
        if let Some(p) = c.peer {
            args.push((Arg::Peer, Value::Int(p)));
        }
        let flow = match (c.packed / 2, c.packed % 2 == 1) {
            (0 | 1, _) => Flow::None,
            (_, true) => Flow::Last(c.flow as u64),
            (_, false) => Flow::Step(c.flow as u64),
        };
        self.seq.thread_slice(
            self.out,
            c.tid,
            t,
            t + dur,
            Name::Text(format!("{call} #{}", c.seq)),
            &args,
            flow,
        )
    }

    /// A causal chain: an instant on the node track with its text.
    fn chain(&mut self, c: &Chain) -> std::io::Result<()> {
        self.report.markers += 1;
        let track = self.seq.node_track();
        self.seq.instant(
            self.out,
            track,
            c.peak_at,
            &Name::Text(format!("[{}] {}", c.severity.as_str(), c.summary)),
            &[
                (Arg::Severity, Value::Str(c.severity.as_str())),
                (Arg::RootCause, Value::Str(&c.root_cause)),
                (Arg::Explanation, Value::Str(&c.explanation)),
                (Arg::Fix, Value::Strs(&c.recommendations)),
                (Arg::ChainId, Value::Str(&c.id)),
            ],
        )
    }
}
