//! `ingero export --format perfetto -o trace.pftrace`: a database as
//! Perfetto's native protobuf trace (the format the Perfetto SDK writes).
//!
//! Layout, per node (one packet sequence each, see [`sequence`]):
//! - the node is a process track (`gpu-node-01 (rank 0)`) whose pid is
//!   synthetic (`NODE_PID_BASE + n`, above any Linux pid) so nodes never
//!   merge, whatever pids they share; under it a track per traced process
//!   (`name (pid P, rank R)`: its lifecycle markers and page-allocation
//!   counter), a thread track per traced thread (real tid, process
//!   descriptor pid of the node), the block I/O lanes and the CPU-load
//!   counter; causal chains are instants on the node track with their
//!   summary, root cause, explanation and fixes as arguments;
//! - CUDA and driver calls, off-CPU spans and NCCL collectives are slices
//!   on their thread, starting at `timestamp - duration` (the store keeps a
//!   call's end); the calls of one collective on every rank (same
//!   communicator and sequence number) are joined by a flow, in the order
//!   the ranks arrived;
//! - timestamps stay on the node's own clock; the sequence's clock snapshot
//!   ties that clock to the reference (Unix) clock by the node's estimated
//!   offset (0 for a local database), so Perfetto lines the nodes up.
//!
//! Streaming: one SQL query returns every item (events, CPU samples,
//! collectives) sorted by node and start time (SQLite's sorter spills to
//! disk), and each is written as it comes; memory holds one node's open
//! slices, tracks and interned names, never the events.

mod sequence;

use std::{collections::HashMap, io::Write};

use agent_common::catalog::{self, host_op, source};
use rusqlite::{Connection, Row};

use self::sequence::{Arg, Flow, Name, NameKey, Output, Sequence, Value};
use super::{ExportError, ExportReport, events_filter, node_label, node_list, thread_names};
use crate::{
    analysis::{
        chain::Chain,
        dataset::{Conventions, conventions, op_name, op_names},
    },
    store::schema::{has_column, table_exists},
    timewin::Window,
};

/// Node `n`'s process descriptor has pid `NODE_PID_BASE + n` (n from 1):
/// Linux pids stay below 2^22, so it never names a real process.
pub const NODE_PID_BASE: i64 = 1 << 22;

/// Item kinds of the export query.
const EVENT: i64 = 0;
const CPU: i64 = 1;
const COLLECTIVE: i64 = 2;

/// The export query: every item of the window, sorted by node, start time
/// and (for slices starting together) the longest first, so slices nest.
/// Columns: kind, node, t (start, or the time of an instant/counter), dur,
/// pid, tid, then nine kind-specific values a..i.
fn items_sql(
    conn: &Connection,
    conv: &Conventions,
    filter: &str,
    window: Option<Window>,
) -> rusqlite::Result<String> {
    let node_col = if conv.has_node { "coalesce(node, '')" } else { "''" };
    let rank_col = if conv.has_rank { "rank" } else { "NULL" };
    let call_start = if conv.timestamps_at_end {
        "timestamp - max(duration, 0)"
    } else {
        "timestamp"
    };
    let (cuda, host, driver, io) = (source::CUDA, source::HOST, source::DRIVER, source::IO);
    let switch = host_op::SCHED_SWITCH;
    let (from, to) = window.map_or((i64::MIN, i64::MAX), |w| (w.from, w.to));
    let mut parts = vec![format!(
        "SELECT {EVENT} AS kind, {node_col} AS node,
                CASE WHEN source IN ({cuda}, {driver}) THEN {call_start}
                     WHEN source = {io} OR (source = {host} AND op = {switch}) THEN timestamp - max(duration, 0)
                     ELSE timestamp END AS t,
                max(duration, 0) AS dur, pid, tid, source AS a, op AS b, arg0 AS c, arg1 AS d, ret_code AS e,
                {rank_col} AS f, NULL AS g, NULL AS h, NULL AS i
         FROM events {filter} AND source IN ({cuda}, {host}, {driver}, {io})"
    )];
    if table_exists(conn, "system_snapshots")? && has_column(conn, "system_snapshots", "node")? {
        parts.push(format!(
            "SELECT {CPU}, node, timestamp, 0, 0, 0, cpu_pct, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM system_snapshots
             WHERE typeof(node) = 'text' AND typeof(timestamp) = 'integer'
               AND typeof(cpu_pct) IN ('integer', 'real') AND timestamp BETWEEN {from} AND {to}"
        ));
    }
    if table_exists(conn, "nccl_collectives")? {
        // The flow id numbers the collectives; `h` packs how many ranks
        // took part (x2) and whether this call was the last to arrive.
        parts.push(format!(
            "SELECT {COLLECTIVE}, node, timestamp - max(duration, 0), max(duration, 0), pid, tid, op, comm_id, seq,
                    bytes, count, datatype, peer, flow, ranks * 2 + (arrival = 1)
             FROM (SELECT *, dense_rank() OVER (ORDER BY comm_id, seq) AS flow,
                          count(*) OVER (PARTITION BY comm_id, seq) AS ranks,
                          row_number() OVER (PARTITION BY comm_id, seq
                                             ORDER BY timestamp - duration DESC, node DESC, tid DESC) AS arrival
                   FROM nccl_collectives
                   WHERE comm_id IS NOT NULL AND ret_code = 0 AND timestamp BETWEEN {from} AND {to})"
        ));
    }
    Ok(format!(
        "{} ORDER BY node, t, dur DESC, kind",
        parts.join(" UNION ALL ")
    ))
}

/// What the export reads besides the items: op and thread names.
struct Names {
    ops: HashMap<(u8, u8), String>,
    threads: HashMap<(String, u32), String>,
}

impl Names {
    fn of(&self, node: &str, id: u32) -> Option<&str> {
        // Borrowed lookup without building the key twice.
        self.threads.get(&(node.to_owned(), id)).map(String::as_str)
    }
}

/// The node being written.
struct Current {
    node: String,
    seq: Sequence,
    chains: std::vec::IntoIter<Chain>,
    next_chain: Option<Chain>,
}

impl Current {
    /// Writes the node's chains up to `t` (all of them for `i64::MAX`).
    fn chains_until<W: Write>(
        &mut self,
        out: &mut Output<W>,
        t: i64,
        report: &mut ExportReport,
    ) -> std::io::Result<()> {
        while let Some(c) = self.next_chain.take_if(|c| c.peak_at <= t) {
            report.markers += 1;
            let track = self.seq.node_track();
            let name = Name::Text(format!("[{}] {}", c.severity.as_str(), c.summary));
            self.seq.instant(
                out,
                track,
                c.peak_at,
                &name,
                &[
                    (Arg::Severity, Value::Str(c.severity.as_str())),
                    (Arg::RootCause, Value::Str(&c.root_cause)),
                    (Arg::Explanation, Value::Str(&c.explanation)),
                    (Arg::Fix, Value::Strs(&c.recommendations)),
                    (Arg::ChainId, Value::Str(&c.id)),
                ],
            )?;
            self.next_chain = self.chains.next();
        }
        Ok(())
    }

    fn finish<W: Write>(mut self, out: &mut Output<W>, report: &mut ExportReport) -> std::io::Result<()> {
        self.chains_until(out, i64::MAX, report)?;
        report.threads += self.seq.threads();
        self.seq.finish(out)
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
    let filter = events_filter(&conv, window);
    let nodes = node_list(conn, &conv, &filter)?;
    let names = Names {
        ops: op_names(conn)?,
        threads: thread_names(conn, &conv)?,
    };
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.as_str(), i))
        .collect();
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

    let mut report = ExportReport {
        format: "pftrace",
        nodes: nodes.len(),
        ..ExportReport::default()
    };
    let mut out = Output::new(std::io::BufWriter::new(out));
    let mut stmt = conn.prepare(&items_sql(conn, &conv, &filter, window)?)?;
    let mut rows = stmt.query([])?;
    let mut cur: Option<Current> = None;
    while let Some(r) = rows.next()? {
        let node = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let t: i64 = r.get(2)?;
        if cur.as_ref().is_none_or(|c| c.node != node) {
            if let Some(done) = cur.take() {
                done.finish(&mut out, &mut report)?;
            }
            let Some(&i) = index.get(node) else { continue };
            let info = &nodes[i];
            let mut list = std::mem::take(&mut chains[i]).into_iter();
            let next_chain = list.next();
            let start = next_chain.as_ref().map_or(t, |c| c.peak_at.min(t));
            let label = node_label(&info.node, info.min_rank, info.max_rank);
            let seq = Sequence::start(
                &mut out,
                i as u64 + 1,
                &label,
                NODE_PID_BASE + i as i64 + 1,
                start,
                offsets.get(&info.node).copied().unwrap_or(0),
            )?;
            cur = Some(Current {
                node: info.node.clone(),
                seq,
                chains: list,
                next_chain,
            });
        }
        let Some(c) = cur.as_mut() else { continue };
        c.chains_until(&mut out, t, &mut report)?;
        match r.get::<_, i64>(0)? {
            EVENT => event(r, t, c, &mut out, &names, &conv, &mut report)?,
            CPU => {
                report.counters += 1;
                let track = c.seq.cpu(&mut out)?;
                c.seq.counter(&mut out, track, t, r.get(6)?)?;
            }
            COLLECTIVE => collective(r, t, c, &mut out, &names, &mut report)?,
            _ => {}
        }
    }
    if let Some(done) = cur.take() {
        done.finish(&mut out, &mut report)?;
    }
    drop(rows);
    out.finish()?.flush()?;
    Ok(report)
}

/// The track of process `pid` on the current node.
fn process_track<W: Write>(
    c: &mut Current,
    out: &mut Output<W>,
    names: &Names,
    pid: u32,
    rank: Option<i64>,
) -> std::io::Result<u64> {
    let node = &c.node;
    c.seq.process(out, pid, || {
        let name = names.of(node, pid).unwrap_or("process");
        match rank {
            Some(r) => format!("{name} (pid {pid}, rank {r})"),
            None => format!("{name} (pid {pid})"),
        }
    })
}

/// The thread track of `tid` (in process `pid`) on the current node.
fn thread_track<W: Write>(
    c: &mut Current,
    out: &mut Output<W>,
    names: &Names,
    pid: u32,
    tid: u32,
    rank: Option<i64>,
) -> std::io::Result<u64> {
    process_track(c, out, names, pid, rank)?;
    let node = &c.node;
    // Linux threads keep their process's name unless renamed.
    c.seq.thread(out, pid, tid, || {
        names
            .of(node, tid)
            .or_else(|| names.of(node, pid))
            .unwrap_or("thread")
            .to_owned()
    })
}

/// One `events` row.
fn event<W: Write>(
    r: &Row<'_>,
    t: i64,
    c: &mut Current,
    out: &mut Output<W>,
    names: &Names,
    conv: &Conventions,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let dur: i64 = r.get(3)?;
    let (pid, tid) = (r.get::<_, i64>(4)? as u32, r.get::<_, i64>(5)? as u32);
    let (src, op): (u8, u8) = (r.get(6)?, r.get(7)?);
    let (arg0, arg1, ret): (i64, i64, i64) = (r.get(8)?, r.get(9)?, r.get(10)?);
    let rank: Option<i64> = r.get(11)?;
    let label = || op_name(&names.ops, src, op);
    match (src, op) {
        (source::CUDA | source::DRIVER, _) => {
            report.slices += 1;
            thread_track(c, out, names, pid, tid, rank)?;
            let name = c.seq.name(NameKey::Op(src, op), label);
            let mut args = vec![(Arg::Arg0, Value::Int(arg0)), (Arg::Arg1, Value::Int(arg1))];
            if ret != 0 {
                args.push((Arg::Ret, Value::Int(ret)));
            }
            c.seq
                .thread_slice(out, tid, t, t + dur, name, &args, Flow::None)?;
        }
        (source::HOST, host_op::SCHED_SWITCH) => {
            report.slices += 1;
            thread_track(c, out, names, pid, tid, rank)?;
            let next = arg1 as u32;
            let name = match (conv.preempt_flag, arg0) {
                (true, 1) => c.seq.name(NameKey::PreemptedBy(next), || {
                    let who = names
                        .of(&c.node, next)
                        .map_or_else(|| format!("task {next}"), |n| format!("{n} ({next})"));
                    format!("off-CPU: preempted by {who}")
                }),
                (true, _) => c
                    .seq
                    .name(NameKey::Fixed("off-CPU: waiting"), || "off-CPU: waiting".into()),
                _ => c.seq.name(NameKey::Fixed("off-CPU"), || "off-CPU".into()),
            };
            c.seq.thread_slice(
                out,
                tid,
                t,
                t + dur,
                name,
                &[(Arg::Next, Value::Int(arg1))],
                Flow::None,
            )?;
        }
        (source::HOST, host_op::MM_PAGE_ALLOC_SUMMARY) => {
            report.counters += 1;
            process_track(c, out, names, pid, rank)?;
            let track = c.seq.allocations(out, pid)?;
            let secs = (dur as f64 / 1e9).max(1e-3);
            c.seq
                .counter(out, track, t, (arg1 as f64 / 1_048_576.0 / secs).round())?;
        }
        (source::HOST, _) => {
            report.markers += 1;
            let track = process_track(c, out, names, pid, rank)?;
            let name = c.seq.name(NameKey::Op(src, op), label);
            c.seq.instant(
                out,
                track,
                t,
                &name,
                &[
                    (Arg::Tid, Value::Int(i64::from(tid))),
                    (Arg::Arg0, Value::Int(arg0)),
                    (Arg::Arg1, Value::Int(arg1)),
                ],
            )?;
        }
        (source::IO, _) => {
            report.slices += 1;
            let bytes = if conv.io_bytes { arg0 } else { arg0 * 512 };
            let name = c.seq.name(NameKey::Op(src, op), label);
            c.seq.io_slice(
                out,
                t,
                t + dur,
                name,
                &[
                    (Arg::Bytes, Value::Int(bytes)),
                    (Arg::Sector, Value::Int(arg1)),
                    (Arg::IssuerPid, Value::Int(i64::from(pid))),
                    (Arg::IssuerTid, Value::Int(i64::from(tid))),
                ],
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// One `nccl_collectives` row: a slice on its thread, in its collective's
/// flow when more than one rank took part.
fn collective<W: Write>(
    r: &Row<'_>,
    t: i64,
    c: &mut Current,
    out: &mut Output<W>,
    names: &Names,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let dur: i64 = r.get(3)?;
    let (pid, tid) = (r.get::<_, i64>(4)? as u32, r.get::<_, i64>(5)? as u32);
    let op: u8 = r.get(6)?;
    let (comm, seq): (i64, i64) = (r.get(7)?, r.get(8)?);
    let (bytes, count, datatype): (i64, i64, i32) = (r.get(9)?, r.get(10)?, r.get(11)?);
    let peer: Option<i64> = r.get(12)?;
    let (flow, packed): (i64, i64) = (r.get(13)?, r.get(14)?);
    report.collectives += 1;
    thread_track(c, out, names, pid, tid, None)?;
    let call = catalog::op_info(source::NCCL, op).map_or("nccl", |o| o.name);
    let comm_hex = crate::analysis::nccl_data::comm_hex(comm);
    let mut args = vec![
        (Arg::Comm, Value::Str(&comm_hex)),
        (Arg::Seq, Value::Int(seq)),
        (Arg::Bytes, Value::Int(bytes)),
        (Arg::Count, Value::Int(count)),
        (
            Arg::Datatype,
            Value::Str(catalog::nccl_op::datatype_name(datatype)),
        ),
        (Arg::Pid, Value::Int(i64::from(pid))),
    ];
    if let Some(p) = peer {
        args.push((Arg::Peer, Value::Int(p)));
    }
    let flow = match (packed / 2, packed % 2 == 1) {
        (0 | 1, _) => Flow::None,
        (_, true) => Flow::Last(flow as u64),
        (_, false) => Flow::Step(flow as u64),
    };
    c.seq.thread_slice(
        out,
        tid,
        t,
        t + dur,
        Name::Text(format!("{call} #{seq}")),
        &args,
        flow,
    )?;
    Ok(())
}
