//! `ingero export --format perfetto -o trace.pftrace`: a database as
//! Perfetto's native protobuf trace (the format the Perfetto SDK writes).
//!
//! Layout, per node (one packet sequence each, see the `sequence` module):
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

mod draw;
mod proto;
mod rows;
mod sequence;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io::Write,
};

use rusqlite::{Connection, Rows};

use self::{
    draw::Writer,
    rows::{
        CHAIN, EVENT, Found, Item, Payload, SIDE, event_columns, fill_side, read_event, read_side,
        scan_nodes, window_sql,
    },
    sequence::{Output, Sequence},
};
use super::{ExportError, ExportReport, node_label};
use crate::{
    analysis::{
        chain::Chain,
        dataset::{Conventions, conventions, op_names},
    },
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

/// What every node's writing reads: op and process names, conventions.
pub(super) struct Context<'a> {
    pub(super) ops: HashMap<(u8, u8), String>,
    pub(super) names: HashMap<(String, u32), String>,
    pub(super) conv: Conventions,
    pub(super) offsets: &'a HashMap<String, i64>,
}

impl Context<'_> {
    pub(super) fn name_of(&self, node: &str, id: u32) -> Option<&str> {
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
    // One snapshot for every scan: rows a live tracer appends meanwhile
    // would not have been measured by the first.
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN")?;
    }
    let result = export_snapshot(conn, out, window, offsets);
    // The side table would go with the connection; drop it now so the
    // connection can export again.
    let _ = conn.execute_batch(&format!("DROP TABLE IF EXISTS {SIDE}"));
    if own {
        let _ = conn.execute_batch("COMMIT");
    }
    result
}

/// [`export`] within one read transaction.
fn export_snapshot(
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> Result<ExportReport, ExportError> {
    let conv = conventions(conn)?;
    let nodes = scan_nodes(conn, conv, window)?;
    let by_rowid = nodes.iter().all(|(_, f)| f.lag <= MAX_LAG_NS);
    let cx = Context {
        ops: op_names(conn)?,
        names: super::thread_names(conn, conv)?,
        conv,
        offsets,
    };
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.0.as_str(), i)).collect();
    let mut chains: Vec<Vec<Chain>> = vec![Vec::new(); nodes.len()];
    for c in super::stored_chains(conn)? {
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
    fill_side(conn, conv, window, offsets)?;
    write_all(conn, out, window, &nodes, &index, chains, by_rowid, &cx)
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
