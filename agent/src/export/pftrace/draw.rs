//! How each item looks in the native trace: CUDA and driver calls,
//! off-CPU spans and NCCL calls as slices on their thread, block requests
//! on the node's I/O lanes, process markers and page-allocation counters
//! on the process track, causal chains as instants on the node track.
//!
//! Invariant: a track is asked of the [`Sequence`] (which declares it on
//! first use) before the event that goes on it is written.

use std::io::Write;

use agent_common::catalog::{self, host_op, source};

use super::{
    Context,
    proto::{Arg, Flow, Name, NameKey, Value},
    rows::{Collective, Event},
    sequence::{Output, Sequence},
};
use crate::{
    analysis::{chain::Chain, dataset::op_name},
    export::ExportReport,
};

/// Writes one node's items into its sequence.
pub(super) struct Writer<'a, 'c, W: Write> {
    pub(super) seq: &'a mut Sequence,
    pub(super) node: &'a str,
    pub(super) out: &'a mut Output<W>,
    pub(super) cx: &'a Context<'c>,
    pub(super) report: &'a mut ExportReport,
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

    pub(super) fn event(&mut self, t: i64, dur: i64, e: &Event) -> std::io::Result<()> {
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
                    .thread_slice(self.out, e.tid, t, t + dur, &name, args, Flow::None)
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
                    &name,
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
                    &name,
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
    pub(super) fn collective(&mut self, t: i64, dur: i64, c: &Collective) -> std::io::Result<()> {
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
            &Name::Text(format!("{call} #{}", c.seq)),
            &args,
            flow,
        )
    }

    /// A causal chain: an instant on the node track with its text.
    pub(super) fn chain(&mut self, c: &Chain) -> std::io::Result<()> {
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
