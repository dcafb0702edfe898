//! Tests of the input-starvation rule on hand-built nodes: a rank that
//! launches a burst of kernels every 20 ms step, synchronizes, then
//! blocks waiting for its next batch, with or without busy workers.

use super::*;
use crate::{
    analysis::{
        dataset::{Call, Io, OffCpu},
        evidence::evidence as node_evidence,
    },
    timewin::Window,
};
use agent_common::catalog::{driver_op, source};

const MS: i64 = 1_000_000;
const STEP: i64 = 20 * MS;
const STEPS: i64 = 50;
const RANK: u32 = 10;
const WORKERS: [u32; 2] = [20, 21];

fn call(start: i64, end: i64) -> Call {
    Call {
        pid: RANK,
        tid: RANK,
        start,
        end,
        bytes: 0,
    }
}

fn off(pid: u32, start: i64, end: i64, preempted: Option<bool>) -> OffCpu {
    OffCpu {
        pid,
        tid: pid,
        start,
        end,
        preempted,
        preemptor: 0,
    }
}

/// Every step: 32 launches 100 us apart, a synchronize (3.3..8 ms, the
/// thread blocked in it), then `wait_ms` blocked outside any call from
/// 8.5 ms.
fn rank(wait_ms: i64) -> NodeData {
    let mut d = NodeData {
        node: "n1".into(),
        window: Window {
            from: 0,
            to: STEPS * STEP,
        },
        ..NodeData::default()
    };
    let (mut launches, mut syncs) = (Vec::new(), Vec::new());
    for k in 0..STEPS {
        let t = k * STEP;
        launches.extend((0..32).map(|i| call(t + i * 100_000, t + i * 100_000 + 10_000)));
        syncs.push(call(t + 3_300_000, t + 8 * MS));
        d.off_cpu
            .push(off(RANK, t + 3_400_000, t + 7_900_000, Some(false)));
        if wait_ms > 0 {
            d.off_cpu.push(off(
                RANK,
                t + 8_500_000,
                t + 8_500_000 + wait_ms * MS,
                Some(false),
            ));
        }
    }
    d.calls
        .insert((source::DRIVER, driver_op::LAUNCH_KERNEL), launches);
    d.calls
        .insert((source::DRIVER, driver_op::STREAM_SYNCHRONIZE), syncs);
    d.names.insert(RANK, "python".into());
    d
}

/// Adds two worker processes forked by the rank. Every step each is
/// blocked idle 1..8 ms, blocked reading 1 MiB 9..10 ms (`reads`), and
/// runnable 12..13 ms; on a CPU the rest of the time. `idle`: blocked
/// without reads all the time instead.
fn add_workers(d: &mut NodeData, reads: bool, idle: bool) {
    for w in WORKERS {
        d.children.insert(w);
        d.parents.insert(w, RANK);
        d.names.insert(w, "pt_data_worker".into());
        for k in 0..STEPS {
            let t = k * STEP;
            if idle {
                d.off_cpu.push(off(w, t + MS, t + STEP, Some(false)));
                continue;
            }
            d.off_cpu.push(off(w, t + MS, t + 8 * MS, Some(false)));
            d.off_cpu.push(off(w, t + 9 * MS, t + 10 * MS, Some(false)));
            d.off_cpu.push(off(w, t + 12 * MS, t + 13 * MS, Some(true)));
            if reads {
                d.io.push(Io {
                    pid: w,
                    tid: w,
                    start: t + 9 * MS,
                    end: t + 10 * MS,
                    bytes: 1 << 20,
                    write: false,
                    read: true,
                });
            }
        }
    }
    d.off_cpu.sort_by_key(|o| o.start);
    d.io.sort_by_key(|i| i.start);
}

fn starvation(d: &NodeData) -> Option<Chain> {
    let e = node_evidence(d, d.window.from, d.window.to);
    chain(d, &e.input, &HashMap::new(), 0)
}

#[test]
fn waiting_for_busy_workers_between_launch_bursts_is_input_starvation() {
    let mut d = rank(10);
    add_workers(&mut d, true, false);
    let e = evidence(&d, d.window.from, d.window.to);
    // 49 waits of 10 ms between launches (the last step's is after them).
    assert_eq!((e.pid, e.tid, e.wait_ns), (RANK, RANK, 490 * MS), "{e:#?}");
    assert_eq!(e.gaps, 49);
    assert_eq!(
        e.longest_gap_ns,
        STEP - 3_110_000,
        "from the last launch to the next burst"
    );
    assert_eq!(e.workers, 2);
    assert_eq!(
        e.worker_busy_ns,
        2 * 490 * MS,
        "both workers busy through every wait"
    );
    assert_eq!(e.worker_runnable_ns, 2 * STEPS * MS);
    assert_eq!((e.reads, e.read_bytes), (100, 100 << 20));
    assert!(starved(&e));
    assert_eq!(starved_wait_ns(&e), e.wait_ns);

    let c = starvation(&d).expect("a starvation chain");
    assert_eq!(c.id, "n1:input-starvation@0");
    assert_eq!(c.severity, Severity::High, "49% of the time waiting");
    assert!(
        c.summary.starts_with(
            "input pipeline starvation: python (10) waited for data 49% of the time between kernel launches, on 2 worker processes"
        ),
        "{}",
        c.summary
    );
    assert!(
        c.root_cause.starts_with(
            "Input pipeline starvation: python (10) issued no GPU work for 490ms (49% of the 1.00s analysed), blocked outside any CUDA call in 49 gaps between its kernel launches"
        ),
        "{}",
        c.root_cause
    );
    assert!(
        c.root_cause.contains(
            "its 2 worker processes (pt_data_worker (20), pt_data_worker (21)) were busy meanwhile (2.0 worker threads on average): on a CPU 1.08 CPUs' worth, runnable but waiting for a CPU 0.10, blocked 0.80; read 100 MiB in 100 requests (100.0 MiB/s)"
        ),
        "{}",
        c.root_cause
    );
    assert_eq!(c.cuda_op, "cuLaunchKernel");
    let fixes = c.recommendations.join("\n");
    for knob in [
        "num_workers",
        "pin_memory",
        "prefetch_factor",
        "persistent_workers",
        "local storage",
        "Cache decoded samples",
    ] {
        assert!(fixes.contains(knob), "{knob} missing from {fixes}");
    }
    assert!(
        c.recommendations[0].starts_with("Raise DataLoader num_workers"),
        "workers mostly on a CPU: decoding-bound, more workers first: {fixes}"
    );
    assert_eq!(
        crate::analysis::common_mode::cause_class(&c.root_cause),
        "Input pipeline starvation"
    );
}

#[test]
fn the_severity_follows_the_share_of_time_waited() {
    let mut d = rank(3);
    add_workers(&mut d, true, false);
    assert_eq!(starvation(&d).map(|c| c.severity), Some(Severity::Medium), "15%");
    let mut d = rank(1);
    add_workers(&mut d, true, false);
    assert!(starvation(&d).is_none(), "5% of the time is not starvation");
}

#[test]
fn waiting_without_busy_workers_is_not_starvation() {
    // A checkpoint writer's lock, a CPU-side barrier: nothing feeds the rank.
    let d = rank(10);
    let e = evidence(&d, d.window.from, d.window.to);
    assert_eq!(e.wait_ns, 490 * MS, "the waits are measured");
    assert!(!starved(&e) && starved_wait_ns(&e) == 0);
    assert!(starvation(&d).is_none());
    // Workers that sit idle (ahead of the rank) do not starve it either.
    let mut d = rank(10);
    add_workers(&mut d, false, true);
    let e = evidence(&d, d.window.from, d.window.to);
    assert_eq!((e.workers, e.worker_busy_ns), (2, 0), "{e:#?}");
    assert!(starvation(&d).is_none());
}

#[test]
fn blocking_inside_cuda_calls_or_preemption_is_not_waiting_for_input() {
    // The thread blocked only inside its synchronize: waiting for the GPU.
    let mut d = rank(0);
    add_workers(&mut d, true, false);
    assert_eq!(evidence(&d, d.window.from, d.window.to).wait_ns, 0);
    assert!(starvation(&d).is_none());
    // The same gaps, but runnable (preempted): CPU contention, not a wait.
    let mut d = rank(10);
    for o in &mut d.off_cpu {
        o.preempted = Some(true);
    }
    add_workers(&mut d, true, false);
    assert_eq!(evidence(&d, d.window.from, d.window.to).wait_ns, 0);
    // A database that does not say whether the thread was runnable.
    let mut d = rank(10);
    for o in &mut d.off_cpu {
        o.preempted = None;
    }
    add_workers(&mut d, true, false);
    assert!(starvation(&d).is_none());
}

#[test]
fn a_training_thread_reading_its_own_data_is_told_to_use_workers() {
    let mut d = rank(10);
    for k in 0..STEPS {
        let t = k * STEP;
        d.io.push(Io {
            pid: RANK,
            tid: RANK,
            start: t + 9 * MS,
            end: t + 17 * MS,
            bytes: 4 << 20,
            write: false,
            read: true,
        });
    }
    let c = starvation(&d).expect("a starvation chain");
    assert!(
        c.root_cause
            .contains("its own reads were in flight for 80% of the waits (read 196 MiB in 49 requests"),
        "{}",
        c.root_cause
    );
    assert!(
        c.recommendations[0].starts_with("Load data in DataLoader worker processes (num_workers > 0)"),
        "{:?}",
        c.recommendations
    );
    // Checkpoint writes during the waits are not data loading.
    for i in &mut d.io {
        (i.write, i.read) = (true, false);
    }
    assert!(starvation(&d).is_none());
}

#[test]
fn workers_waiting_for_a_cpu_are_not_cpu_contention_of_the_rank() {
    let mut d = rank(10);
    add_workers(&mut d, true, false);
    let e = node_evidence(&d, d.window.from, d.window.to);
    assert_eq!(
        (e.cpu.preemptions, e.cpu.preempted_ns),
        (0, 0),
        "only the workers were runnable off-CPU"
    );
    assert_eq!(e.input.worker_runnable_ns, 2 * STEPS * MS);
    // Workers short of CPU: giving them cores comes first.
    let mut d = rank(10);
    add_workers(&mut d, true, false);
    for o in &mut d.off_cpu {
        if o.pid != RANK && o.preempted == Some(true) {
            o.end = o.start + 6 * MS;
        }
    }
    let c = starvation(&d).expect("a starvation chain");
    assert!(
        c.recommendations[0].starts_with("Give the workers cores of their own"),
        "{:?}",
        c.recommendations
    );
}
