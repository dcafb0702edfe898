//! From kernel records to stored rows.
//!
//! [`Pipeline::push`] turns one decoded record into an `events` row: Unix
//! timestamp, rank information from the process's environment (read once
//! per process), the task names worth keeping (`process_names`), and, with
//! `--stack`, the deduplicated, symbolized stack. It also counts events per
//! source for the live summary and, with `--json`, writes one NDJSON line
//! per event. It knows nothing of eBPF, so it is tested on hand-made
//! records.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
};

use agent_common::{
    catalog::{host_op, op_info, source},
    event::{Event, FLAG_HAS_ARG2, FLAG_HAS_STREAM},
};

use crate::clock::WallClock;

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
    stacks_seen: HashSet<u64>,
    symbolizer: Option<Symbolizer>,
    comms: Comms,
    session_rank_known: bool,
    batch: Batch,
    counts: SourceCounts,
    total: u64,
    json: Option<JsonOut>,
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
            node,
            clock: WallClock::new(),
            rank_of,
            ranks: HashMap::new(),
            names: HashMap::new(),
            stacks_seen: HashSet::new(),
            symbolizer: stacks.then(Symbolizer::default),
            comms: Comms::default(),
            session_rank_known: false,
            batch: Batch::default(),
            counts: SourceCounts::default(),
            total: 0,
            json,
        }
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
        let (event, stack, nccl) = match record {
            Record::Event(e) => (e, None, None),
            Record::WithStack(e, ips) => (e, Some(ips), None),
            Record::Nccl(e, tail) => (e, None, Some(tail)),
        };
        let timestamp = self.clock.to_unix(event.ts_ns);
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
        self.total += 1;
        let ok = self.write_json(&row, &event);
        self.batch.events.push(row);
        ok
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
            gpu_id: e.gpu_id,
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
        self.total += 1;
        self.batch.events.push(row);
    }

    /// The rows built since the last call, for the writer; flushes `--json`.
    pub fn take_batch(&mut self) -> (Batch, bool) {
        let ok = self.json.as_mut().is_none_or(|o| o.0.flush().is_ok());
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
mod tests {
    use super::*;
    use agent_common::catalog::driver_op;
    use std::sync::{Arc, Mutex};

    #[expect(
        clippy::unnecessary_wraps,
        reason = "has the signature of the rank lookup it stands in for"
    )]
    fn fake_rank(pid: u32) -> Option<RankInfo> {
        Some(RankInfo {
            rank: Some(i64::from(pid % 10)),
            local_rank: Some(0),
            world_size: Some(4),
        })
    }

    fn comm(name: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    fn launch(pid: u32, tid: u32) -> Event {
        Event {
            ts_ns: 1_000,
            duration_ns: 500,
            pid,
            tid,
            source: source::DRIVER,
            op: driver_op::LAUNCH_KERNEL,
            arg0: 0xdead,
            stream: 0,
            flags: FLAG_HAS_STREAM,
            comm: comm("trainer"),
            ..Event::default()
        }
    }

    #[test]
    fn rows_carry_rank_stream_and_names() {
        let mut p = Pipeline::with_rank_source("n1".into(), false, None, fake_rank);
        p.push(Record::Event(launch(13, 14)));
        p.push(Record::Event(launch(13, 14)));
        let (batch, ok) = p.take_batch();
        assert!(ok);
        assert_eq!(batch.events.len(), 2);
        let row = &batch.events[0];
        assert_eq!(
            (row.pid, row.tid, row.rank, row.world_size),
            (13, 14, Some(3), Some(4))
        );
        assert_eq!(
            row.stream,
            Some(0),
            "a default-stream launch still records its stream"
        );
        assert_eq!(row.arg2, None);
        assert_eq!(
            batch.names,
            vec![(14, "trainer".to_owned(), row.timestamp)],
            "names are written once"
        );
        let session = batch.session.expect("first rank updates the session");
        assert_eq!(session.rank, Some((Some(3), Some(0), Some(4))));
        assert_eq!(p.take_counts().driver, 2);
    }

    #[test]
    fn forked_children_inherit_rank_and_learned_ranks_stick() {
        fn only_parent(pid: u32) -> Option<RankInfo> {
            if pid == 100 { fake_rank(3) } else { None }
        }
        let mut p = Pipeline::with_rank_source("n1".into(), false, None, only_parent);
        p.learn_process(100);
        p.push(Record::Event(Event {
            source: source::HOST,
            op: host_op::PROCESS_FORK,
            pid: 100,
            tid: 100,
            arg1: 200,
            ..Event::default()
        }));
        p.push(Record::Event(launch(200, 200)));
        let (batch, _) = p.take_batch();
        assert_eq!(
            batch.events[1].rank,
            Some(3),
            "the child's events carry the parent's rank"
        );
    }

    #[test]
    fn rows_about_an_exited_process_keep_its_rank() {
        fn alive_once(pid: u32) -> Option<RankInfo> {
            static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            (CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0)
                .then(|| fake_rank(pid))
                .flatten()
        }
        let mut p = Pipeline::with_rank_source("n1".into(), false, None, alive_once);
        p.learn_process(42);
        p.push(Record::Event(Event {
            source: source::HOST,
            op: host_op::PROCESS_EXIT,
            pid: 42,
            tid: 42,
            ..Event::default()
        }));
        let late = p.host_row(42, host_op::MM_PAGE_ALLOC_SUMMARY, 1, 1, 1, 4096);
        assert_eq!(
            late.rank,
            Some(2),
            "a summary built after the exit still has the rank"
        );
    }

    #[test]
    fn sched_switch_names_the_preemptor() {
        let mut p = Pipeline::with_rank_source("n1".into(), false, None, fake_rank);
        p.push(Record::Event(Event {
            source: source::HOST,
            op: host_op::SCHED_SWITCH,
            pid: 20,
            tid: 21,
            arg1: 777,
            comm: comm("stress-ng"),
            ..Event::default()
        }));
        let (batch, _) = p.take_batch();
        assert_eq!(batch.names[0].0, 777);
        assert_eq!(batch.names[0].1, "stress-ng");
    }

    #[test]
    fn identical_stacks_are_stored_once() {
        let mut p = Pipeline::with_rank_source("n1".into(), false, None, fake_rank);
        for _ in 0..3 {
            p.push(Record::WithStack(launch(1, 1), vec![0x1000, 0x2000]));
        }
        p.push(Record::WithStack(launch(1, 1), vec![0x1000, 0x3000]));
        let (batch, _) = p.take_batch();
        assert_eq!(batch.stacks.len(), 2);
        assert_eq!(batch.events[0].stack_hash, batch.events[2].stack_hash);
        assert_ne!(batch.events[0].stack_hash, batch.events[3].stack_hash);
        assert_eq!(batch.stacks[0].ips, r#"["0x1000","0x2000"]"#);
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_name_source_and_op() {
        let sink = Sink::default();
        let mut p = Pipeline::with_rank_source(
            "n1".into(),
            false,
            Some(JsonOut(Box::new(sink.clone()))),
            fake_rank,
        );
        p.push(Record::Event(launch(5, 6)));
        let text =
            String::from_utf8(sink.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(v["op"], "cuLaunchKernel");
        assert_eq!(v["source"], "driver");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["rank"], 5);
    }

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_json_pipe_is_reported_and_rows_still_kept() {
        let mut p =
            Pipeline::with_rank_source("n1".into(), false, Some(JsonOut(Box::new(Closed))), fake_rank);
        assert!(!p.push(Record::Event(launch(5, 6))));
        let (batch, _) = p.take_batch();
        assert_eq!(batch.events.len(), 1, "the event is still stored");
    }
}
