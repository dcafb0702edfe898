//! `ingero export --format perfetto -o trace.json`: a database as a Chrome
//! Trace Event JSON file that opens in ui.perfetto.dev (and chrome://tracing).
//!
//! Layout: one process track per node (named with the node and its rank),
//! one thread track per traced thread (named from `process_names`). CUDA
//! and driver calls are complete slices starting at `timestamp - duration`
//! (the store keeps the end of each call); off-CPU spans are slices on the
//! thread ("off-CPU: preempted by X" or "off-CPU: waiting"); block requests
//! are async slices on the node; process lifecycle events and causal chains
//! are instant markers, chains coloured by severity with the root cause and
//! fixes in their args; page allocations and CPU load are counters. NCCL
//! collective calls are slices on their thread ("ncclAllReduce #12"), and
//! the calls of one collective on every rank (same communicator and
//! sequence number) are joined by a flow from the first rank to arrive to
//! the last.
//!
//! Events are streamed from SQLite to the file one row at a time: memory
//! stays flat whatever the database size. Timestamps are microseconds from
//! the first event (Perfetto shows relative time), optionally shifted per
//! node by a clock offset (fleet export).

use std::{
    collections::{HashMap, HashSet},
    io::Write,
};

use agent_common::catalog::{host_op, source};
use rusqlite::Connection;
use serde_json::{Value, json};

use super::{ExportError, ExportReport, events_filter, node_label, node_list, thread_names};
use crate::{
    analysis::dataset::{conventions, op_name, op_names},
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// One node of the export: its process track id and clock shift.
struct NodeTrack {
    pid: u32,
    offset_ns: i64,
}

/// Writes trace events separated by commas.
struct TraceWriter<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> TraceWriter<W> {
    fn event(&mut self, v: &Value) -> std::io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, v).map_err(std::io::Error::other)
    }
}

/// The NCCL collective calls of the window as slices, each collective's
/// calls joined across ranks by a flow in arrival order. Calls are read in
/// (communicator, sequence) order, so one collective's rows are adjacent
/// and memory holds one collective at a time.
fn collectives<W: Write>(
    conn: &Connection,
    w: &mut TraceWriter<W>,
    nodes: &HashMap<String, NodeTrack>,
    window: Option<Window>,
    us: &dyn Fn(i64, &NodeTrack) -> f64,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    if !table_exists(conn, "nccl_collectives")? {
        return Ok(());
    }
    let (from, to) = window.map_or((i64::MIN, i64::MAX), |w| (w.from, w.to));
    let mut stmt = conn.prepare(
        "SELECT node, tid, comm_id, seq, op, timestamp - duration, duration, bytes, count, datatype, peer, pid
         FROM nccl_collectives
         WHERE comm_id IS NOT NULL AND ret_code = 0 AND timestamp BETWEEN ?1 AND ?2
         ORDER BY comm_id, seq",
    )?;
    let mut rows = stmt.query([from, to])?;
    // (track pid, tid, start in µs) of the collective being read.
    let mut group: Vec<(u32, u32, f64)> = Vec::new();
    let mut key: Option<(i64, i64)> = None;
    let mut flows = 0u64;
    let mut flush = |group: &mut Vec<(u32, u32, f64)>,
                     w: &mut TraceWriter<W>,
                     name: &str|
     -> std::io::Result<()> {
        if group.len() >= 2 {
            group.sort_by(|a, b| a.2.total_cmp(&b.2));
            flows += 1;
            let last = group.len() - 1;
            for (i, (pid, tid, ts)) in group.iter().enumerate() {
                let ph = match i {
                    0 => "s",
                    i if i == last => "f",
                    _ => "t",
                };
                w.event(&json!({"ph": ph, "bp": "e", "id": flows, "name": name, "cat": "nccl", "pid": pid, "tid": tid, "ts": ts}))?;
            }
        }
        group.clear();
        Ok(())
    };
    let mut name = String::new();
    while let Some(r) = rows.next()? {
        let node: String = r.get(0)?;
        let Some(track) = nodes.get(&node) else { continue };
        let (comm, seq): (i64, i64) = (r.get(2)?, r.get(3)?);
        if key != Some((comm, seq)) {
            flush(&mut group, w, &name)?;
            key = Some((comm, seq));
        }
        let op: u8 = r.get(4)?;
        let op_name = agent_common::catalog::op_info(source::NCCL, op).map_or("nccl", |o| o.name);
        name = format!("{op_name} #{seq}");
        let tid = r.get::<_, i64>(1)? as u32;
        let start = us(r.get(5)?, track);
        let datatype: i32 = r.get(9)?;
        report.collectives += 1;
        w.event(&json!({
            "ph": "X", "name": name, "cat": "nccl", "pid": track.pid, "tid": tid, "ts": start,
            "dur": r.get::<_, i64>(6)?.max(0) as f64 / 1000.0,
            "args": {
                "comm": crate::analysis::nccl_data::comm_hex(comm), "seq": seq, "bytes": r.get::<_, i64>(7)?,
                "count": r.get::<_, i64>(8)?, "datatype": agent_common::catalog::nccl_op::datatype_name(datatype),
                "peer": r.get::<_, Option<i64>>(10)?, "pid": r.get::<_, i64>(11)?,
            },
        }))?;
        group.push((track.pid, tid, start));
    }
    flush(&mut group, w, &name)?;
    Ok(())
}

/// Exports `conn` to `out`. `offsets` shifts each node's clock (ns to
/// subtract); nodes not listed are not shifted.
pub fn export(
    conn: &Connection,
    out: impl Write,
    window: Option<Window>,
    offsets: &HashMap<String, i64>,
) -> Result<ExportReport, ExportError> {
    let conv = conventions(conn)?;
    let names = op_names(conn)?;
    let node_col = if conv.has_node { "node" } else { "''" };
    let filter = events_filter(conv, window);

    // Pass 1 (aggregate only): nodes, their ranks, the earliest start.
    let mut nodes: HashMap<String, NodeTrack> = HashMap::new();
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut t0 = i64::MAX;
    for n in node_list(conn, conv, &filter)? {
        let offset_ns = offsets.get(&n.node).copied().unwrap_or(0);
        t0 = t0.min(n.first_start - offset_ns);
        labels.push((n.node.clone(), node_label(&n.node, n.min_rank, n.max_rank)));
        nodes.insert(
            n.node,
            NodeTrack {
                pid: nodes.len() as u32 + 1,
                offset_ns,
            },
        );
    }
    if t0 == i64::MAX {
        t0 = 0;
    }
    let thread_names = thread_names(conn, conv)?;

    let mut w = TraceWriter {
        out: std::io::BufWriter::new(out),
        first: true,
    };
    w.out.write_all(b"{\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(
        &mut w.out,
        &json!({"producer": format!("ingero {}", env!("CARGO_PKG_VERSION")), "time_origin_unix_ns": t0}),
    )
    .map_err(std::io::Error::other)?;
    w.out.write_all(b",\"traceEvents\":[\n")?;
    let mut report = ExportReport {
        format: "json",
        nodes: nodes.len(),
        ..ExportReport::default()
    };
    for (node, label) in &labels {
        let pid = nodes[node].pid;
        w.event(&json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}}))?;
        w.event(&json!({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}))?;
        w.event(&json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "block I/O and markers"}}))?;
    }
    let us = |ns: i64, node: &NodeTrack| (ns - node.offset_ns - t0) as f64 / 1000.0;

    // Pass 2: every event, streamed.
    let mut named: HashSet<(u32, u32)> = HashSet::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT {node_col}, source, op, pid, tid, timestamp, duration, arg0, arg1, ret_code, rowid FROM events {filter}"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let node: String = r.get::<_, Option<String>>(0)?.unwrap_or_default();
        let Some(track) = nodes.get(&node) else { continue };
        let (src, op): (u8, u8) = (r.get(1)?, r.get(2)?);
        let (pid, tid): (u32, u32) = (r.get::<_, i64>(3)? as u32, r.get::<_, i64>(4)? as u32);
        let (ts, dur): (i64, i64) = (r.get(5)?, r.get::<_, i64>(6)?.max(0));
        let (arg0, arg1, ret): (i64, i64, i64) = (r.get(7)?, r.get(8)?, r.get(9)?);
        let rowid: i64 = r.get(10)?;
        let start = if conv.timestamps_at_end || !matches!(src, source::CUDA | source::DRIVER) {
            ts - dur
        } else {
            ts
        };
        if named.insert((track.pid, tid)) && src != source::IO {
            let name = thread_names
                .get(&(node.clone(), tid))
                .map_or_else(|| format!("thread {tid}"), |n| format!("{n} ({tid})"));
            w.event(&json!({"ph": "M", "name": "thread_name", "pid": track.pid, "tid": tid, "args": {"name": name}}))?;
        }
        let name = op_name(&names, src, op);
        match (src, op) {
            (source::CUDA | source::DRIVER, _) => {
                report.slices += 1;
                w.event(&json!({
                    "ph": "X", "name": name, "cat": if src == source::CUDA { "cuda" } else { "driver" },
                    "pid": track.pid, "tid": tid, "ts": us(start, track), "dur": dur as f64 / 1000.0,
                    "args": {"pid": pid, "ret": ret, "arg0": arg0, "arg1": arg1},
                }))?;
            }
            (source::HOST, host_op::SCHED_SWITCH) => {
                report.slices += 1;
                let label = match (conv.preempt_flag, arg0) {
                    (true, 1) => format!(
                        "off-CPU: preempted by {}",
                        thread_names
                            .get(&(node.clone(), arg1 as u32))
                            .map_or_else(|| format!("task {arg1}"), |n| format!("{n} ({arg1})"))
                    ),
                    (true, _) => "off-CPU: waiting".to_owned(),
                    _ => "off-CPU".to_owned(),
                };
                w.event(&json!({
                    "ph": "X", "name": label, "cat": "sched", "pid": track.pid, "tid": tid,
                    "ts": us(start, track), "dur": dur as f64 / 1000.0, "args": {"next": arg1},
                }))?;
            }
            (source::HOST, host_op::MM_PAGE_ALLOC_SUMMARY) => {
                report.counters += 1;
                let secs = (dur as f64 / 1e9).max(1e-3);
                w.event(&json!({
                    "ph": "C", "name": "page allocations (MiB/s)", "pid": track.pid, "ts": us(ts, track),
                    "args": {format!("pid {pid}"): (arg1 as f64 / 1_048_576.0 / secs).round()},
                }))?;
            }
            (source::HOST, _) => {
                report.markers += 1;
                w.event(&json!({
                    "ph": "i", "s": "t", "name": name, "cat": "process", "pid": track.pid, "tid": tid,
                    "ts": us(ts, track), "args": {"pid": pid, "arg0": arg0, "arg1": arg1},
                }))?;
            }
            (source::IO, _) => {
                report.slices += 1;
                let bytes = if conv.io_bytes { arg0 } else { arg0 * 512 };
                let common = json!({"cat": "io", "name": name, "id": format!("{rowid:x}"), "pid": track.pid, "tid": 0});
                let mut begin = common.clone();
                begin["ph"] = "b".into();
                begin["ts"] = us(start, track).into();
                begin["args"] = json!({"bytes": bytes, "sector": arg1, "issuer_pid": pid, "issuer_tid": tid});
                w.event(&begin)?;
                let mut end = common;
                end["ph"] = "e".into();
                end["ts"] = us(ts, track).into();
                w.event(&end)?;
            }
            _ => {}
        }
    }
    drop(rows);
    drop(stmt);
    report.threads = named.len();

    if table_exists(conn, "system_snapshots")? && has_column(conn, "system_snapshots", "node")? {
        let mut stmt =
            conn.prepare(
                "SELECT node, timestamp, cpu_pct FROM system_snapshots
                 WHERE typeof(node) = 'text' AND typeof(timestamp) = 'integer' AND typeof(cpu_pct) IN ('integer', 'real')",
            )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let node: String = r.get(0)?;
            let ts: i64 = r.get(1)?;
            if let Some(track) = nodes
                .get(&node)
                .filter(|_| window.is_none_or(|w| ts >= w.from && ts <= w.to))
            {
                report.counters += 1;
                w.event(&json!({"ph": "C", "name": "CPU busy %", "pid": track.pid, "ts": us(ts, track), "args": {"cpu": r.get::<_, f64>(2)?}}))?;
            }
        }
    }
    collectives(conn, &mut w, &nodes, window, &us, &mut report)?;
    for c in super::stored_chains(conn)? {
        let Some(track) = nodes.get(&c.node) else { continue };
        if window.is_some_and(|w| c.peak_at < w.from || c.peak_at > w.to) {
            continue;
        }
        report.markers += 1;
        let color = match c.severity {
            crate::analysis::chain::Severity::High => "terrible",
            crate::analysis::chain::Severity::Medium => "bad",
            crate::analysis::chain::Severity::Low => "yellow",
        };
        w.event(&json!({
            "ph": "i", "s": "p", "name": format!("[{}] {}", c.severity.as_str(), c.summary),
            "cat": "causal_chain", "pid": track.pid, "tid": 0, "ts": us(c.peak_at, track), "cname": color,
            "args": {"severity": c.severity.as_str(), "root_cause": c.root_cause, "fix": c.recommendations, "id": c.id},
        }))?;
    }
    w.out.write_all(b"\n]}\n")?;
    w.out.flush()?;
    Ok(report)
}
