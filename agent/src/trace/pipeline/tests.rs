//! The pipeline on hand-made records: rows, ranks, names, stacks, `--json`
//! lines and the published metrics.

use super::*;
use agent_common::catalog::{cuda_op, driver_op, nccl_op};
use std::sync::Mutex;

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
fn metrics_are_published_with_each_batch() {
    let mut p = Pipeline::with_rank_source("n1".into(), false, None, fake_rank);
    let published = Arc::new(Published::default());
    p.publish_metrics_to(Arc::clone(&published));
    p.push(Record::Event(launch(13, 14)));
    assert!(
        published.latest().sorted_series().is_empty(),
        "not before the batch"
    );
    let _ = p.take_batch();
    let latest = published.latest();
    let series = latest.sorted_series();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].1.latency.count, 1);
    assert_eq!(latest.targets()[0].node, "n1");
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
    let text = String::from_utf8(sink.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default();
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
    let mut p = Pipeline::with_rank_source("n1".into(), false, Some(JsonOut(Box::new(Closed))), fake_rank);
    assert!(!p.push(Record::Event(launch(5, 6))));
    let (batch, _) = p.take_batch();
    assert_eq!(batch.events.len(), 1, "the event is still stored");
}

#[test]
fn calls_carry_the_gpu_their_thread_selected_until_its_process_exits() {
    let mut p = Pipeline::with_rank_source("n1".into(), false, None, fake_rank);
    let set_device = |tid: u32, device: u64, ret: i32| Event {
        source: source::CUDA,
        op: cuda_op::SET_DEVICE,
        arg0: device,
        ret,
        ..launch(13, tid)
    };
    p.push(Record::Event(launch(13, 14)));
    p.push(Record::Event(set_device(14, 3, 0)));
    p.push(Record::Event(launch(13, 14)));
    p.push(Record::Event(launch(13, 15)));
    p.push(Record::Event(set_device(14, 5, 101)));
    p.push(Record::Event(Event {
        source: source::NCCL,
        op: nccl_op::ALL_REDUCE,
        ..launch(13, 14)
    }));
    p.push(Record::Event(Event {
        source: source::HOST,
        op: host_op::PROCESS_EXIT,
        ..launch(13, 13)
    }));
    p.push(Record::Event(launch(13, 14)));
    let (batch, _) = p.take_batch();
    let gpus: Vec<i32> = batch.events.iter().map(|r| r.gpu_id).collect();
    assert_eq!(
        gpus,
        vec![0, 3, 3, 0, 3, 3, 0, 0],
        "before the selection: 0; the selecting call and later ones: its device; another thread: 0; a failed selection changes nothing; after the exit: 0"
    );
}

#[test]
fn a_call_without_its_thread_name_gets_the_last_one_seen() {
    let sink = Sink::default();
    let mut p = Pipeline::with_rank_source(
        "n1".into(),
        false,
        Some(JsonOut(Box::new(sink.clone()))),
        fake_rank,
    );
    let nameless = Event {
        comm: [0; 16],
        ..launch(5, 6)
    };
    p.push(Record::Event(nameless));
    p.push(Record::Event(launch(5, 6)));
    p.push(Record::Event(nameless));
    let text = String::from_utf8(sink.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default();
    let comms: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["comm"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        comms,
        ["", "trainer", "trainer"],
        "unknown until first seen, then kept"
    );
    let (batch, _) = p.take_batch();
    assert_eq!(batch.names.len(), 1, "the name is stored once");
}
