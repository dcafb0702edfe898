//! Hung collectives: who waits, who never arrived, and what its threads do.

use ingero_api::{CommMember, RankActivity, ThreadState};

use super::*;

const S: i64 = 1_000_000_000;
const THRESHOLD: i64 = 10 * S;

fn member(r: usize, n: usize) -> CommMember {
    CommMember {
        node: node(r),
        pid: 4000 + r as u32,
        world_rank: Some(r as i64),
        comm_id: COMM.into(),
        comm_rank: Some(r as i64),
        comm_size: Some(n as i64),
        created_ns: T0 - S,
    }
}

fn members(n: usize) -> Vec<CommMember> {
    (0..n).map(|r| member(r, n)).collect()
}

/// Four ranks do all-reduces #0 to #19; all but rank 2 enter #20, 2 s
/// after the start (plus `r` ms).
fn stuck_job() -> Vec<CollectiveCall> {
    let mut calls = job(4, 20, |r, _| r as i64 * US);
    calls.extend([0, 1, 3].map(|r| call(r, 4, 20, T0 + 2 * S + r as i64 * MS)));
    calls
}

#[test]
fn a_rank_that_never_arrives_is_a_hang() {
    let now = T0 + 43 * S;
    let found = hangs(&stuck_job(), &members(4), &no_clocks(), now, THRESHOLD);
    assert_eq!(found.len(), 1, "{found:?}");
    let h = &found[0];
    assert_eq!(
        (h.seq, h.op.as_str(), h.bytes, h.ranks),
        (20, "ncclAllReduce", 64 << 20, 4)
    );
    assert_eq!((h.since_ns, h.waited_ns), (T0 + 2 * S, 41 * S));
    let waiting: Vec<u32> = h.waiting.iter().map(|w| w.rank.pid).collect();
    assert_eq!(waiting, [4000, 4001, 4003], "earliest first");
    assert_eq!(h.missing.len(), 1);
    assert_eq!((h.missing[0].rank.pid, h.missing[0].last_seq), (4002, Some(19)));
    assert!(h.confirmed && h.unseen == 0);
    assert_eq!(
        h.headline(),
        "HANG ncclAllReduce #20 on comm 3f2a… (4 ranks, 64.0 MiB): 3 ranks wait since 41 s; \
         rank 2 (gpu-node-03) never arrived (last entered #19)"
    );
    // Members are also learnt from the calls alone.
    let without_members = hangs(&stuck_job(), &[], &no_clocks(), now, THRESHOLD);
    assert_eq!(without_members, found);
}

#[test]
fn a_job_that_ended_normally_is_no_hang() {
    let calls = job(4, 20, |r, _| r as i64 * MS);
    assert_eq!(
        hangs(&calls, &members(4), &no_clocks(), T0 + 3_600 * S, THRESHOLD),
        []
    );
    // Nor is a communicator nobody called on.
    assert_eq!(
        hangs(&[], &members(4), &no_clocks(), T0 + 3_600 * S, THRESHOLD),
        []
    );
}

#[test]
fn a_rank_that_lags_less_than_the_threshold_is_no_hang() {
    let now = T0 + 7 * S;
    assert_eq!(hangs(&stuck_job(), &members(4), &no_clocks(), now, THRESHOLD), []);
    assert_eq!(hangs(&stuck_job(), &members(4), &no_clocks(), now, S).len(), 1);
}

#[test]
fn the_wait_must_exceed_the_threshold_beyond_the_clock_error() {
    // Rank 0 entered first, 10.5 s before now, on a clock known to 1 s.
    let now = T0 + 2 * S + THRESHOLD + S / 2;
    let loose = clocks(&[(0, 0, S)]);
    assert_eq!(hangs(&stuck_job(), &members(4), &loose, now, THRESHOLD), []);
    let tight = clocks(&[(0, 0, S / 10)]);
    assert_eq!(hangs(&stuck_job(), &members(4), &tight, now, THRESHOLD).len(), 1);
}

#[test]
fn waiting_is_measured_on_the_reference_clock() {
    // Every node's clock runs 30 s behind the reference: the raw entries
    // look 30 s older than they are.
    let calls: Vec<CollectiveCall> = stuck_job()
        .into_iter()
        .map(|mut c| {
            c.entry_ns -= 30 * S;
            c
        })
        .collect();
    let behind = clocks(&[(0, 30 * S, 0), (1, 30 * S, 0), (2, 30 * S, 0), (3, 30 * S, 0)]);
    let now = T0 + 2 * S + 5 * S;
    assert_eq!(hangs(&calls, &members(4), &behind, now, THRESHOLD), []);
    assert_eq!(hangs(&calls, &members(4), &no_clocks(), now, THRESHOLD).len(), 1);
}

#[test]
fn a_member_that_never_called_is_missing() {
    let calls = job(4, 5, |_, _| 0);
    let mut all = members(5);
    for m in &mut all {
        m.comm_size = Some(5);
    }
    let found = hangs(&calls, &all, &no_clocks(), T0 + 60 * S, THRESHOLD);
    assert_eq!(found.len(), 1);
    let h = &found[0];
    assert_eq!((h.seq, h.ranks, h.missing.len()), (4, 5, 1));
    assert_eq!(h.missing[0].last_seq, None);
    assert!(
        h.headline().ends_with(
            "4 ranks wait since 60 s; rank 4 (gpu-node-05) never arrived (no collective on this comm)"
        ),
        "{}",
        h.headline()
    );
}

#[test]
fn members_the_size_promises_but_nobody_reported_make_a_possible_hang() {
    // Comm of 4; only ranks 0 to 2 are seen, all at #9.
    let calls: Vec<CollectiveCall> = job(4, 10, |_, _| 0)
        .into_iter()
        .filter(|c| c.pid != 4003)
        .collect();
    let found = hangs(&calls, &members(4)[..3], &no_clocks(), T0 + 60 * S, THRESHOLD);
    assert_eq!(found.len(), 1);
    let h = &found[0];
    assert!(!h.confirmed && h.missing.is_empty());
    assert_eq!((h.unseen, h.unseen_comm_ranks.as_slice()), (1, &[3][..]));
    assert!(
        h.headline().starts_with("POSSIBLE HANG ncclAllReduce #9"),
        "{}",
        h.headline()
    );
    assert!(
        h.headline().ends_with(
            "1 rank(s) never seen (comm rank 3): no node reported them, is their agent answering?"
        ),
        "{}",
        h.headline()
    );
    assert_eq!(
        describe_missing(h, &[]),
        ["comm rank 3: never seen, no node reported it (its agent is not answering or not running)"]
    );
    // Without comm ranks the unseen are only counted.
    let anonymous: Vec<CollectiveCall> = calls
        .into_iter()
        .map(|mut c| {
            c.comm_rank = None;
            c
        })
        .collect();
    let h = &hangs(&anonymous, &[], &no_clocks(), T0 + 60 * S, THRESHOLD)[0];
    assert_eq!((h.unseen, h.unseen_comm_ranks.len()), (1, 0));
}

#[test]
fn describe_missing_says_what_the_missing_threads_do() {
    // gpu-node-03's clock is 1 s behind the reference.
    let calls: Vec<CollectiveCall> = stuck_job()
        .into_iter()
        .map(|mut c| {
            if c.pid == 4002 {
                c.entry_ns -= S;
            }
            c
        })
        .collect();
    let clocks = clocks(&[(2, S, 0)]);
    let now = T0 + 43 * S;
    let mut all = members(5);
    for m in &mut all {
        m.comm_size = Some(5);
    }
    let h = &hangs(&calls, &all, &clocks, now, THRESHOLD)[0];
    assert_eq!(h.missing.len(), 2);
    assert_eq!(
        h.missing[0].last_entry_ns,
        Some(T0 + 19 * STEP + 2 * US),
        "moved onto our clock"
    );
    let thread =
        |tid: u32, name: &str, state: &str, since: Option<i64>, call: Option<(&str, i64)>| ThreadState {
            tid,
            name: name.into(),
            state: state.into(),
            since_ns: since,
            last_call: call.map(|c| c.0.into()),
            last_call_ns: call.map(|c| c.1),
        };
    let activity = [RankActivity {
        node: node(2),
        pid: 4002,
        world_rank: Some(2),
        threads: vec![
            thread(4090, "pt_data_worker", "gone", None, None),
            // Node-clock times: 40 s and 40.8 s before now on ours.
            thread(
                4002,
                "pt_main_thread",
                "uninterruptible I/O",
                Some(T0 + 2 * S),
                Some(("cudaStreamSynchronize", T0 + 1_200 * MS)),
            ),
            thread(
                4010,
                "pt_autograd_0",
                "running",
                Some(T0),
                Some(("cuLaunchKernel", T0 + 42 * S)),
            ),
        ],
    }];
    assert_eq!(
        describe_missing(h, &activity),
        [
            "rank 2 (gpu-node-03, pid 4002): thread 4002 pt_main_thread uninterruptible I/O for 40 s; \
             last call cudaStreamSynchronize returned 41 s ago",
            "rank 2 (gpu-node-03, pid 4002): thread 4010 pt_autograd_0 running; \
             last call cuLaunchKernel returned 0 ns ago",
            "rank 2 (gpu-node-03, pid 4002): thread 4090 pt_data_worker gone (it has exited); \
             no CUDA or NCCL call seen",
            "rank 4 (gpu-node-05, pid 4004): no thread activity reported \
             (a stored database, or its agent does not trace the process)",
        ]
    );
}

#[test]
fn hangs_of_several_communicators_come_longest_first() {
    let mut calls = stuck_job();
    // A second communicator whose rank 1 stopped at #2, entered 30 s ago.
    let other = |r: usize, seq: u64| {
        let mut c = call(r, 2, seq, T0 + 13 * S + seq as i64 * MS);
        c.comm_id = "00000000000000aa".into();
        c
    };
    calls.extend([
        other(0, 0),
        other(1, 0),
        other(0, 1),
        other(1, 1),
        other(0, 2),
        other(1, 2),
        other(0, 3),
    ]);
    let found = hangs(&calls, &[], &no_clocks(), T0 + 43 * S, THRESHOLD);
    let order: Vec<(&str, u64)> = found.iter().map(|h| (h.comm_id.as_str(), h.seq)).collect();
    assert_eq!(order, [(COMM, 20), ("00000000000000aa", 3)]);
    assert_eq!(
        found[1].headline().split(':').next(),
        Some("HANG ncclAllReduce #3 on comm 0000… (2 ranks, 64.0 MiB)")
    );
}
