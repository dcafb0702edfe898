//! From kernel records to stored rows.
//!
//! [`Pipeline::push`] turns one decoded record into an `events` row: Unix
//! timestamp, rank information from the process's environment (read once
//! per process), the task names worth keeping (`process_names`), and, with
//! `--stack`, the deduplicated, symbolized stack. It also counts events per
//! source for the live summary and, with `--json`, writes one NDJSON line
//! per event, and counts every event into the traced-work metrics
//! ([`crate::metrics`]), publishing a copy with each batch for `/metrics`.
//! It knows nothing of eBPF, so it is tested on hand-made records.
//!
//! The GPU of a CUDA or NCCL call (`gpu_id`) is the device the calling
//! thread last selected with a successful `cudaSetDevice`, followed here
//! rather than in the kernel (a map lookup less per traced call): a
//! thread's records arrive in the order its calls returned. Likewise most
//! CUDA and NCCL records come without the thread's name
//! (`agent_common::event::COMM_EVERY`): it is the last one seen.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::Arc,
};

use agent_common::{
    catalog::{cuda_op, host_op, op_info, source},
    event::{COMM_LEN, Event, FLAG_HAS_ARG2, FLAG_HAS_STREAM},
};

use crate::{
    clock::WallClock,
    metrics::{Published, Registry, Sample},
};

use super::{
    comms::Comms,
    decode::Record,
    procs::{self, RankInfo},
    symbolize::{Symbolizer, stack_hash},
};
use crate::store::writer::{Batch, EventRow, SessionUpdate, StackRow};

/// Events per source since the last [`Pipeline::take_counts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SourceCounts {
    /// CUDA runtime API calls (libcudart).
    pub cuda: u64,
    /// CUDA driver API calls (libcuda).
    pub driver: u64,
    /// Host kernel events: scheduling, memory, process lifecycle.
    pub host: u64,
    /// Block I/O requests (and events of any unknown source).
    pub io: u64,
    /// NCCL calls (libnccl).
    pub nccl: u64,
}

impl SourceCounts {
    /// Events of every source together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.cuda + self.driver + self.host + self.io + self.nccl
    }
}

/// Where rank information comes from; `/proc` in production. `None` when
/// the process is gone.
pub type RankSource = fn(u32) -> Option<RankInfo>;

/// Turns decoded records into the rows of the next writer batch; see the
/// module documentation.
#[derive(Debug)]
pub struct Pipeline {
    node: String,
    clock: WallClock,
    rank_of: RankSource,
    ranks: HashMap<u32, RankInfo>,
    names: HashMap<u32, String>,
    /// Per thread id: (its process, the device it selected).
    thread_gpu: HashMap<u32, (u32, i32)>,
    stacks_seen: HashSet<u64>,
    symbolizer: Option<Symbolizer>,
    comms: Comms,
    session_rank_known: bool,
    batch: Batch,
    counts: SourceCounts,
    total: u64,
    json: Option<JsonOut>,
    metrics: Registry,
    published: Option<Arc<Published>>,
}

/// Where `--json` lines go.
pub struct JsonOut(pub Box<dyn Write + Send>);

impl std::fmt::Debug for JsonOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonOut")
    }
}

fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn source_name(src: u8) -> &'static str {
    match src {
        source::CUDA => "cuda",
        source::DRIVER => "driver",
        source::HOST => "host",
        source::IO => "io",
        source::NCCL => "nccl",
        _ => "unknown",
    }
}

impl Pipeline {
    /// `stacks`: symbolize captured stacks. `json`: where NDJSON goes.
    #[must_use]
    pub fn new(node: String, stacks: bool, json: Option<JsonOut>) -> Self {
        Self::with_rank_source(node, stacks, json, procs::rank_info)
    }

    /// As `new`, with rank information from `rank_of` instead of `/proc`
    /// (for tests).
    #[must_use]
    pub fn with_rank_source(node: String, stacks: bool, json: Option<JsonOut>, rank_of: RankSource) -> Self {
        Self {
            clock: WallClock::new(),
            rank_of,
            ranks: HashMap::new(),
            names: HashMap::new(),
            thread_gpu: HashMap::new(),
            stacks_seen: HashSet::new(),
            symbolizer: stacks.then(Symbolizer::default),
            comms: Comms::default(),
            session_rank_known: false,
            batch: Batch::default(),
            counts: SourceCounts::default(),
            total: 0,
            metrics: Registry::new(&node, true),
            node,
            json,
            published: None,
        }
    }

    /// Publishes the metrics to `to` with every batch taken.
    pub fn publish_metrics_to(&mut self, to: Arc<Published>) {
        to.publish(&self.metrics);
        self.published = Some(to);
    }

    /// The monotonic-to-Unix-ns clock used for the events' timestamps.
    #[must_use]
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Events pushed since the start.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reads what `pid`'s events will need (its rank, and its mappings
    /// with `--stack`) now, while the process surely exists: a short-lived
    /// one may be gone by the time its events are drained. Entries outlive
    /// the process: summaries about it can arrive after its exit.
    pub fn learn_process(&mut self, pid: u32) {
        if let Some(info) = (self.rank_of)(pid) {
            self.ranks.insert(pid, info);
        }
        if let Some(s) = self.symbolizer.as_mut() {
            s.learn(pid);
        }
    }

    fn rank(&mut self, pid: u32) -> RankInfo {
        let rank_of = self.rank_of;
        let info = *self
            .ranks
            .entry(pid)
            .or_insert_with(|| rank_of(pid).unwrap_or_default());
        if info.is_known() && !self.session_rank_known {
            self.session_rank_known = true;
            self.batch.session.get_or_insert_with(SessionUpdate::default).rank =
                Some((info.rank, info.local_rank, info.world_size));
        }
        info
    }

    fn remember_name(&mut self, task: u32, name: String, seen_at: i64) {
        if task == 0 || name.is_empty() || self.names.get(&task) == Some(&name) {
            return;
        }
        self.names.insert(task, name.clone());
        self.batch.names.push((task, name, seen_at));
    }

    /// Adds one record. Returns `false` if `--json` output failed (closed
    /// pipe): the caller should stop tracing.
    pub fn push(&mut self, record: Record) -> bool {
        let (mut event, stack, nccl) = match record {
            Record::Event(e) => (e, None, None),
            Record::WithStack(e, ips) => (e, Some(ips), None),
            Record::Nccl(e, tail) => (e, None, Some(tail)),
        };
        if event.comm[0] == 0
            && matches!(event.source, source::CUDA | source::DRIVER | source::NCCL)
            && let Some(name) = self.names.get(&event.tid)
        {
            let n = name.len().min(COMM_LEN - 1);
            event.comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        }
        let timestamp = self.clock.to_unix(event.ts_ns);
        if event.source == source::CUDA && event.op == cuda_op::SET_DEVICE && event.ret == 0 {
            self.thread_gpu.insert(event.tid, (event.pid, event.arg0 as i32));
        }
        let mut row = self.row(&event, timestamp);
        if let Some(tail) = nccl.filter(|_| event.source == source::NCCL) {
            let world_rank = row.rank;
            self.comms
                .note(&event, &tail, &mut row, world_rank, &mut self.batch);
        }
        if let Some(ips) = stack.filter(|ips| !ips.is_empty()) {
            row.stack_hash = stack_hash(&ips);
            if self.stacks_seen.insert(row.stack_hash) {
                self.store_stack(event.pid, row.stack_hash, &ips);
            }
        }
        self.note_host_event(&event, timestamp);
        match event.source {
            source::CUDA => self.counts.cuda += 1,
            source::DRIVER => self.counts.driver += 1,
            source::HOST => self.counts.host += 1,
            source::NCCL => self.counts.nccl += 1,
            _ => self.counts.io += 1,
        }
        self.observe(&row);
        let ok = self.write_json(&row, &event);
        self.batch.events.push(row);
        ok
    }

    /// Counts a row in the totals and the metrics.
    fn observe(&mut self, row: &EventRow) {
        self.total += 1;
        self.metrics.observe(&Sample {
            node: &self.node,
            rank: row.rank,
            source: row.source,
            op: row.op,
            duration_ns: row.duration,
            arg0: row.arg0,
        });
    }

    fn row(&mut self, e: &Event, timestamp: i64) -> EventRow {
        let rank = self.rank(e.pid);
        EventRow {
            timestamp,
            pid: e.pid,
            tid: e.tid,
            source: e.source,
            op: e.op,
            duration: e.duration_ns,
            gpu_id: match e.source {
                source::CUDA | source::DRIVER | source::NCCL => {
                    self.thread_gpu.get(&e.tid).map_or(0, |g| g.1)
                }
                _ => e.gpu_id,
            },
            arg0: e.arg0,
            arg1: e.arg1,
            ret_code: e.ret,
            stack_hash: 0,
            rank: rank.rank,
            local_rank: rank.local_rank,
            world_size: rank.world_size,
            stream: (e.flags & FLAG_HAS_STREAM != 0).then_some(e.stream),
            arg2: (e.flags & FLAG_HAS_ARG2 != 0).then_some(e.arg2),
            cpu: e.cpu,
        }
    }

    fn store_stack(&mut self, pid: u32, hash: u64, ips: &[u64]) {
        let frames = self
            .symbolizer
            .as_mut()
            .map(|s| s.frames(pid, ips))
            .unwrap_or_default();
        let ips_json: Vec<String> = ips.iter().map(|ip| format!("{ip:#x}")).collect();
        self.batch.stacks.push(StackRow {
            hash,
            ips: serde_json::to_string(&ips_json).unwrap_or_default(),
            frames: serde_json::to_string(&frames).unwrap_or_default(),
        });
    }

    /// Names and per-process state changes carried by host events.
    fn note_host_event(&mut self, e: &Event, timestamp: i64) {
        let comm = comm_str(&e.comm);
        if e.source != source::HOST {
            self.remember_name(e.tid, comm, timestamp);
            return;
        }
        match e.op {
            // The name is the preempting task's.
            host_op::SCHED_SWITCH => self.remember_name(e.arg1 as u32, comm, timestamp),
            host_op::PROCESS_EXEC => {
                // A new program: new name, possibly a new environment.
                self.learn_process(e.pid);
                self.remember_name(e.pid, comm, timestamp);
            }
            host_op::PROCESS_FORK => {
                // The child starts with its parent's environment.
                let child = e.arg1 as u32;
                if let Some(parent) = self.ranks.get(&e.pid).copied() {
                    self.ranks.insert(child, parent);
                }
                if let Some(s) = self.symbolizer.as_mut() {
                    s.inherit(e.pid, child);
                }
                self.remember_name(e.pid, comm, timestamp);
            }
            host_op::PROCESS_EXIT => {
                if let Some(s) = self.symbolizer.as_mut() {
                    s.forget(e.pid);
                }
                self.thread_gpu.retain(|_, (pid, _)| *pid != e.pid);
                self.comms.forget(e.pid);
            }
            host_op::OOM_KILL => self.remember_name(e.pid, comm, timestamp),
            _ => {}
        }
    }

    fn write_json(&mut self, row: &EventRow, e: &Event) -> bool {
        let Some(out) = self.json.as_mut() else {
            return true;
        };
        let line = serde_json::json!({
            "timestamp": row.timestamp,
            "node": self.node,
            "pid": row.pid,
            "tid": row.tid,
            "source": source_name(row.source),
            "op": op_info(row.source, row.op).map_or("unknown", |o| o.name),
            "duration_ns": row.duration,
            "arg0": row.arg0,
            "arg1": row.arg1,
            "arg2": row.arg2,
            "stream": row.stream,
            "ret_code": row.ret_code,
            "gpu_id": row.gpu_id,
            "rank": row.rank,
            "local_rank": row.local_rank,
            "world_size": row.world_size,
            "stack_hash": (row.stack_hash != 0).then_some(row.stack_hash),
            "comm": comm_str(&e.comm),
        });
        if writeln!(out.0, "{line}").is_err() {
            self.json = None;
            return false;
        }
        true
    }

    /// Adds a row that did not come from the ring buffer (summaries).
    pub fn push_row(&mut self, row: EventRow) {
        self.counts.host += 1;
        self.observe(&row);
        self.batch.events.push(row);
    }

    /// The rows built since the last call, for the writer; flushes `--json`.
    pub fn take_batch(&mut self) -> (Batch, bool) {
        let ok = self.json.as_mut().is_none_or(|o| o.0.flush().is_ok());
        if let Some(to) = &self.published {
            to.publish(&self.metrics);
        }
        self.clock.refresh();
        (std::mem::take(&mut self.batch), ok)
    }

    /// Per-source counts since the last call.
    pub fn take_counts(&mut self) -> SourceCounts {
        std::mem::take(&mut self.counts)
    }

    /// The batch being built, for rows that do not come from the kernel.
    pub fn batch_mut(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// The session fields to update alongside the next batch.
    pub fn session_update(&mut self) -> &mut SessionUpdate {
        self.batch.session.get_or_insert_with(SessionUpdate::default)
    }

    /// A row for a host event built in user space (page-allocation summary).
    #[must_use]
    pub fn host_row(
        &mut self,
        pid: u32,
        op: u8,
        timestamp: i64,
        duration: u64,
        arg0: u64,
        arg1: u64,
    ) -> EventRow {
        let rank = self.rank(pid);
        EventRow {
            timestamp,
            pid,
            tid: pid,
            source: source::HOST,
            op,
            duration,
            arg0,
            arg1,
            rank: rank.rank,
            local_rank: rank.local_rank,
            world_size: rank.world_size,
            ..EventRow::default()
        }
    }
}

#[cfg(test)]
mod tests;
