//! Tests of the rules, on small synthetic nodes: which chains fire, with
//! which severity, cause, words and fixes.

use super::*;
use crate::{
    analysis::dataset::{Io, OffCpu, OomKill, PageAllocs},
    timewin::Window,
};
use agent_common::catalog::{driver_op, source};

const LAUNCH: (u8, u8) = (source::DRIVER, driver_op::LAUNCH_KERNEL);
const MS: i64 = 1_000_000;

/// 200 launches of 10 us every 5 ms on thread 7 of pid 1; the ones in
/// `slow` take `slow_ns` instead.
fn node(slow: &[usize], slow_ns: i64) -> NodeData {
    node_with(10_000, slow, slow_ns)
}

/// As [`node`], with calls of `base_ns` (under 5 ms).
fn node_with(base_ns: i64, slow: &[usize], slow_ns: i64) -> NodeData {
    let calls = (0..200)
        .map(|i| {
            let start = i as i64 * 5 * MS;
            let dur = if slow.contains(&i) { slow_ns } else { base_ns };
            Call {
                pid: 1,
                tid: 7,
                start,
                end: start + dur,
                bytes: 0,
            }
        })
        .collect();
    NodeData {
        node: "n1".into(),
        calls: [(LAUNCH, calls)].into_iter().collect(),
        window: Window {
            from: 0,
            to: 1000 * MS,
        },
        ..NodeData::default()
    }
}

fn slow_set() -> Vec<usize> {
    (0..200).step_by(20).collect() // 10 slow calls: 5%
}

/// A preemption of thread 7 inside each slow call.
fn preempt_slow_calls(d: &mut NodeData, preempted: bool, by: u32) {
    for i in slow_set() {
        let start = i as i64 * 5 * MS + 1_000;
        d.off_cpu.push(OffCpu {
            pid: 1,
            tid: 7,
            start,
            end: start + MS,
            preempted: Some(preempted),
            preemptor: by,
        });
    }
}

fn run(d: &NodeData) -> Vec<Chain> {
    chains(d, &evidence(d, d.window.from, d.window.to), &HashMap::new(), 0).0
}

#[test]
fn a_tail_with_preemption_of_the_calling_thread_is_high_cpu_contention() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 99);
    d.names.insert(99, "cpu-hog".into());
    let c = run(&d);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0].severity, Severity::High, "{c:#?}");
    assert!(
        c[0].summary
            .starts_with("cuLaunchKernel p99=2.00ms (200.0x p50) - 10 sched_switch events"),
        "{}",
        c[0].summary
    );
    assert!(
        c[0].root_cause.starts_with("CPU contention"),
        "{}",
        c[0].root_cause
    );
    assert!(
        c[0].root_cause.contains("cpu-hog (99)"),
        "names the preemptor: {}",
        c[0].root_cause
    );
    assert!(
        c[0].recommendations
            .iter()
            .any(|f| f.contains("renice +19 -p 99"))
    );
    assert_eq!(c[0].id, "n1:tail-cuLaunchKernel@0");
}

#[test]
fn preemption_by_the_jobs_own_processes_is_contention_within_the_job() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 20);
    // Thread 20 belongs to process 2, another rank making CUDA calls.
    d.calls.insert(
        (source::DRIVER, driver_op::STREAM_SYNCHRONIZE),
        vec![Call {
            pid: 2,
            tid: 20,
            start: 0,
            end: 10,
            bytes: 0,
        }],
    );
    d.names.insert(20, "python".into());
    let c = run(&d);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert!(
        c[0].root_cause.starts_with("CPU contention within the job: ")
            && c[0].root_cause.contains("(sibling ranks 100%)")
            && c[0].root_cause.contains("mostly by python (20)"),
        "{}",
        c[0].root_cause
    );
    assert!(
        !c[0].recommendations.iter().any(|f| f.contains("renice")),
        "{:?}",
        c[0].recommendations
    );
    // A child a rank forked (a DataLoader worker) is the job's too.
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 30);
    d.children.insert(30);
    let c = run(&d);
    assert!(
        c[0].root_cause.contains("(worker processes (DataLoader) 100%)"),
        "{}",
        c[0].root_cause
    );
}

#[test]
fn a_tail_without_a_concurrent_cause_is_not_a_chain() {
    assert!(run(&node(&slow_set(), 2 * MS)).is_empty());
}

#[test]
fn waiting_off_cpu_is_not_contention() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, false, 99);
    assert!(
        run(&d).is_empty(),
        "voluntary sleeps during the calls explain nothing"
    );
}

#[test]
fn too_few_samples_or_a_small_tail_do_not_fire() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 99);
    if let Some(c) = d.calls.get_mut(&LAUNCH) {
        c.truncate(MIN_SAMPLES - 1);
    }
    assert!(run(&d).is_empty(), "fewer than MIN_SAMPLES calls");
    let mut d = node(&slow_set(), 25_000); // 2.5x
    preempt_slow_calls(&mut d, true, 99);
    assert!(run(&d).is_empty(), "p99/p50 below TAIL_RATIO");
}

#[test]
fn a_moderate_tail_with_a_strong_cause_is_medium() {
    let mut d = node_with(200_000, &slow_set(), 1_200_000); // 6x
    preempt_slow_calls(&mut d, true, 99);
    let c = run(&d);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].severity, Severity::Medium);
    assert_eq!(severity(12.0, 0.3, 0.05), Severity::Medium);
    assert_eq!(severity(12.0, 0.1, 0.05), Severity::Low);
    assert_eq!(severity(4.0, 0.3, 0.05), Severity::Low);
}

#[test]
fn a_rare_tail_is_low_however_strong_its_cause() {
    // One slow call in 200 (0.2 ms beyond the median over a second).
    let mut d = node(&[100, 101, 102], 100_000);
    for i in [100, 101, 102] {
        let start = i64::from(i) * 5 * MS;
        d.off_cpu.push(OffCpu {
            pid: 1,
            tid: 7,
            start,
            end: start + 50_000,
            preempted: Some(true),
            preemptor: 99,
        });
    }
    for i in 0..5 {
        d.off_cpu.push(OffCpu {
            pid: 1,
            tid: 7,
            start: i,
            end: i + 1,
            preempted: Some(true),
            preemptor: 99,
        });
    }
    let c = run(&d);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(
        c[0].severity,
        Severity::Low,
        "0.03% of the span lost: not worth a page"
    );
    assert_eq!(severity(200.0, 1.0, 0.0003), Severity::Low);
}

#[test]
fn a_tail_that_costs_little_of_the_nodes_window_is_low_whatever_its_ratio() {
    // 10 slow calls of 2 ms (200x p50), all preempted: 2% of a 1 s window
    // is HIGH; the same calls in a 10 s window cost 0.2% of it.
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 99);
    assert_eq!(run(&d)[0].severity, Severity::High);
    d.window.to = 10_000 * MS;
    let c = run(&d);
    assert_eq!(c.len(), 1, "still a chain: {c:#?}");
    assert_eq!(
        c[0].severity,
        Severity::Low,
        "0.2% of the node's time: {}",
        c[0].summary
    );
    assert_eq!(
        tail_severity(200.0, 1.0, 0.5, MIN_WINDOW_IMPACT / 2.0),
        Severity::Low
    );
    assert_eq!(tail_severity(200.0, 1.0, 0.5, MIN_WINDOW_IMPACT), Severity::High);
    assert_eq!(tail_severity(4.0, 0.6, 0.05, 0.5), Severity::Medium);
}

#[test]
fn block_io_during_the_slow_calls_is_the_cause_and_writes_get_checkpoint_fixes() {
    let mut d = node(&slow_set(), 2 * MS);
    block_io(
        &mut d,
        slow_set().into_iter().map(|i| i as i64 * 5 * MS),
        3 * MS,
        8 << 20,
        true,
    );
    d.names.insert(8, "ckpt-writer".into());
    let c = run(&d);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert!(c[0].summary.contains("block I/O"), "{}", c[0].summary);
    assert!(
        c[0].root_cause
            .starts_with("Block I/O: 10 write requests (checkpoint-like)"),
        "{}",
        c[0].root_cause
    );
    assert!(c[0].root_cause.contains("ckpt-writer (8)"));
    assert!(c[0].recommendations[0].contains("Checkpoint asynchronously"));
}

#[test]
fn reads_get_data_loading_fixes() {
    let mut d = node(&slow_set(), 2 * MS);
    block_io(
        &mut d,
        slow_set().into_iter().map(|i| i as i64 * 5 * MS),
        3 * MS,
        8 << 20,
        false,
    );
    let c = run(&d);
    assert!(
        c[0].root_cause.contains("read requests (data loading)"),
        "{}",
        c[0].root_cause
    );
    assert!(c[0].recommendations[0].contains("/dev/shm"));
}

/// Block requests by thread 8, one starting at each of `starts`.
fn block_io(d: &mut NodeData, starts: impl IntoIterator<Item = i64>, len: i64, bytes: u64, write: bool) {
    for start in starts {
        d.io.push(Io {
            pid: 1,
            tid: 8,
            start,
            end: start + len,
            bytes,
            write,
            read: !write,
        });
    }
}

/// `n` 1 MiB writes of 100 us by thread 8, one every `every` ns.
fn checkpoint_writes(d: &mut NodeData, n: i64, every: i64) {
    block_io(d, (0..n).map(|i| i * every), 100_000, 1 << 20, true);
}

#[test]
fn a_preempting_thread_that_writes_makes_block_io_the_root_cause() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 8);
    checkpoint_writes(&mut d, 40, 25 * MS);
    let c = run(&d);
    assert!(c[0].root_cause.starts_with("Block I/O"), "{}", c[0].root_cause);
    assert!(
        c[0].root_cause
            .contains("the I/O thread also preempted the callers"),
        "{}",
        c[0].root_cause
    );
}

#[test]
fn kernel_io_threads_preempting_during_io_count_as_io() {
    let mut d = node(&slow_set(), 2 * MS);
    preempt_slow_calls(&mut d, true, 41);
    d.names.insert(41, "kworker/1:1".into());
    let c = run(&d);
    assert!(
        c[0].root_cause.starts_with("CPU contention"),
        "no I/O on the node: {}",
        c[0].root_cause
    );
    checkpoint_writes(&mut d, 10, 100 * MS);
    let c = run(&d);
    assert!(
        c[0].root_cause.starts_with("Block I/O"),
        "with I/O: {}",
        c[0].root_cause
    );
}

#[test]
fn memory_volume_alone_supports_at_most_a_medium_chain() {
    let mut d = node(&slow_set(), 2 * MS);
    d.page_allocs.push(PageAllocs {
        ts: 10 * MS,
        bytes: 512 << 20,
    });
    assert!(run(&d).is_empty(), "below MIN_MEM_BYTES");
    d.page_allocs[0].bytes = 2 << 30;
    let c = run(&d);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].root_cause.starts_with("Memory pressure: 2.0 GiB"),
        "{}",
        c[0].root_cause
    );
    assert_eq!(c[0].severity, Severity::Medium);
    d.page_allocs[0].bytes = 64 << 30;
    assert_eq!(
        run(&d)[0].severity,
        Severity::Medium,
        "volume alone never makes a HIGH chain"
    );
    d.oom_kills.push(OomKill {
        ts: MS,
        victim: 1,
        rss_bytes: 0,
    });
    assert!(
        run(&d).iter().any(|c| c.severity == Severity::High),
        "an OOM kill does"
    );
}

#[test]
fn copies_are_compared_within_their_size_class() {
    let calls: Vec<Call> = (0..200)
        .map(|i| {
            let start = i64::from(i) * 5 * MS;
            // Every 20th copy moves 256 MiB and takes 20 ms; the rest 4 bytes in 3 us.
            let (bytes, dur) = if i % 20 == 0 {
                (256 << 20, 20 * MS)
            } else {
                (4, 3_000)
            };
            Call {
                pid: 1,
                tid: 7,
                start,
                end: start + dur,
                bytes,
            }
        })
        .collect();
    let mut d = NodeData {
        node: "n1".into(),
        calls: [((source::DRIVER, driver_op::MEMCPY_DTOH), calls)]
            .into_iter()
            .collect(),
        window: Window {
            from: 0,
            to: 1000 * MS,
        },
        ..NodeData::default()
    };
    preempt_slow_calls(&mut d, true, 99);
    assert!(run(&d).is_empty(), "big copies are not a tail of small ones");
}

#[test]
fn an_oom_kill_is_a_high_chain_of_its_own() {
    let mut d = node(&[], 0);
    d.oom_kills.push(OomKill {
        ts: 5 * MS,
        victim: 42,
        rss_bytes: 3 << 30,
    });
    d.names.insert(42, "python".into());
    let c = run(&d);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].severity, Severity::High);
    assert!(
        c[0].summary.contains("python (42)") && c[0].summary.contains("3.0 GiB"),
        "{}",
        c[0].summary
    );
    assert_eq!(c[0].peak_at, 5 * MS);
}

#[test]
fn a_throughput_drop_with_io_in_the_same_seconds_fires() {
    const S: i64 = 1_000_000_000;
    // 100 calls/s for 12 s, except 10/s during seconds 5..8 (with I/O).
    let mut calls = Vec::new();
    for sec in 0..12i64 {
        let n = if (5..8).contains(&sec) { 10 } else { 100 };
        for k in 0..n {
            let start = sec * S + k * (S / n);
            calls.push(Call {
                pid: 1,
                tid: 7,
                start,
                end: start + 10_000,
                bytes: 0,
            });
        }
    }
    let mut d = NodeData {
        node: "n1".into(),
        calls: [(LAUNCH, calls)].into_iter().collect(),
        window: Window { from: 0, to: 12 * S },
        ..NodeData::default()
    };
    for k in 0..30 {
        let start = 5 * S + k * 100 * MS;
        d.io.push(Io {
            pid: 1,
            tid: 8,
            start,
            end: start + 60 * MS,
            bytes: 32 << 20,
            write: true,
            read: false,
        });
    }
    let c = run(&d);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert!(c[0].id.starts_with("n1:drop-cuLaunchKernel@"), "{}", c[0].id);
    assert!(c[0].summary.contains("throughput -90%"), "{}", c[0].summary);
    assert!(c[0].root_cause.starts_with("Block I/O"));
    d.io.clear();
    assert!(run(&d).is_empty(), "a drop without a cause is not a chain");
}
