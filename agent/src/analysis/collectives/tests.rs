//! Tests of collective matching on synthetic jobs: arrivals and clocks,
//! lateness and the straggler verdict, and the words of the
//! headlines. Hangs are in `tests/hangs.rs`, properties in `tests/props.rs`.

mod hangs;
mod props;

use super::*;

pub(super) const MS: i64 = 1_000_000;
pub(super) const US: i64 = 1_000;
pub(super) const T0: i64 = 1_795_262_400_000_000_000;
/// Time between the collectives of a synthetic job.
pub(super) const STEP: i64 = 100 * MS;
pub(super) const COMM: &str = "3f2a9c0d1e5b7a64";

/// Node of rank `r`: `gpu-node-01` for rank 0.
pub(super) fn node(r: usize) -> String {
    format!("gpu-node-{:02}", r + 1)
}

/// Rank `r`'s all-reduce number `seq` of 64 MiB on [`COMM`] (of `n` ranks),
/// entered at `entry_ns` on its node's clock.
pub(super) fn call(r: usize, n: usize, seq: u64, entry_ns: i64) -> CollectiveCall {
    CollectiveCall {
        node: node(r),
        pid: 4000 + r as u32,
        world_rank: Some(r as i64),
        comm_id: COMM.into(),
        comm_rank: Some(r as i64),
        comm_size: Some(n as i64),
        seq,
        op: "ncclAllReduce".into(),
        bytes: 64 << 20,
        entry_ns,
        duration_ns: 40 * US,
        ret: 0,
    }
}

/// A job of `n` ranks, one per node, doing `steps` all-reduces [`STEP`]
/// apart; rank `r` enters number `s` `delay(r, s)` after the step starts.
pub(super) fn job(n: usize, steps: u64, delay: impl Fn(usize, u64) -> i64) -> Vec<CollectiveCall> {
    (0..steps)
        .flat_map(|s| (0..n).map(move |r| (r, s)))
        .map(|(r, s)| call(r, n, s, T0 + s as i64 * STEP + delay(r, s)))
        .collect()
}

/// A deterministic pseudo-random number in `0..range` (splitmix64).
pub(super) fn noise(seed: u64, r: usize, s: u64, range: i64) -> i64 {
    let mut z = (seed ^ ((r as u64) << 40) ^ s).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % range.max(1) as u64) as i64
}

pub(super) fn clocks(entries: &[(usize, i64, i64)]) -> HashMap<String, NodeClock> {
    entries
        .iter()
        .map(|&(r, offset_ns, error_ns)| (node(r), NodeClock { offset_ns, error_ns }))
        .collect()
}

fn no_clocks() -> HashMap<String, NodeClock> {
    HashMap::new()
}

// --- arrivals ---------------------------------------------------------

#[test]
fn arrivals_are_matched_by_comm_and_seq_on_the_reference_clock() {
    // gpu-node-02's clock is 5 s ahead: its raw entry looks latest but is
    // the earliest on the reference clock.
    let calls = vec![
        call(0, 3, 7, T0 + 2 * MS),
        call(1, 3, 7, T0 + 5_000 * MS + MS),
        call(2, 3, 7, T0 + 9 * MS),
        call(0, 3, 8, T0 + 100 * MS),
    ];
    let c = arrivals(&calls, &clocks(&[(1, -5_000 * MS, 0)]));
    assert_eq!(c.len(), 1, "seq 8 was seen by one rank only: {c:?}");
    let c = &c[0];
    assert_eq!(
        (c.comm_id.as_str(), c.seq, c.op.as_str(), c.bytes),
        (COMM, 7, "ncclAllReduce", 64 << 20)
    );
    let order: Vec<(&str, i64)> = c
        .arrivals
        .iter()
        .map(|a| (a.rank.node.as_str(), a.entry_ns - T0))
        .collect();
    assert_eq!(
        order,
        [
            ("gpu-node-02", MS),
            ("gpu-node-01", 2 * MS),
            ("gpu-node-03", 9 * MS)
        ]
    );
    assert_eq!(c.last.node, "gpu-node-03");
    assert_eq!((c.spread_ns, c.margin_ns), (8 * MS, 7 * MS));
    assert!(c.last_certain && c.mismatch.is_empty());
    assert_eq!(c.comm_size, Some(3));
}

#[test]
fn a_lateness_within_the_clock_bounds_is_not_certain() {
    let calls = vec![call(0, 2, 1, T0), call(1, 2, 1, T0 + 3 * MS)];
    // 3 ms late, bounds 1 + 1 ms: certain.
    let c = arrivals(&calls, &clocks(&[(0, 0, MS), (1, 0, MS)]));
    assert!(c[0].last_certain);
    // Bounds 2 + 1 ms: exactly the margin, not more.
    let c = arrivals(&calls, &clocks(&[(0, 0, 2 * MS), (1, 0, MS)]));
    assert!(!c[0].last_certain);
    assert_eq!(
        c[0].last.node, "gpu-node-02",
        "the estimate still says who is last"
    );
    // A tie is never certain.
    let c = arrivals(&[call(0, 2, 1, T0), call(1, 2, 1, T0)], &no_clocks());
    assert!(!c[0].last_certain);
}

#[test]
fn the_last_must_beat_every_rank_by_its_bound_not_only_the_second() {
    // Second-latest is close on a precise clock, but a third rank, 4 ms
    // earlier, sits on a clock known only to 10 ms.
    let calls = vec![
        call(0, 3, 1, T0),
        call(1, 3, 1, T0 + 4 * MS),
        call(2, 3, 1, T0 + 5 * MS),
    ];
    let c = arrivals(&calls, &clocks(&[(0, 0, 10 * MS), (1, 0, 0), (2, 0, 0)]));
    assert_eq!(c[0].margin_ns, MS);
    assert!(!c[0].last_certain);
}

#[test]
fn ranks_of_one_node_share_its_clock_error() {
    let mut a = call(0, 2, 1, T0);
    let mut b = call(1, 2, 1, T0 + 100 * US);
    a.node = "gpu-node-01".into();
    b.node = "gpu-node-01".into();
    let c = arrivals(&[a, b], &clocks(&[(0, 0, 10 * MS)]));
    assert!(c[0].last_certain, "both entries carry the same offset error");
}

#[test]
fn a_rank_recorded_twice_counts_once_with_its_earliest_entry() {
    let calls = vec![
        call(0, 2, 1, T0 + 5 * MS),
        call(0, 2, 1, T0 + MS),
        call(1, 2, 1, T0 + 3 * MS),
    ];
    let c = arrivals(&calls, &no_clocks());
    assert_eq!(c[0].arrivals.len(), 2);
    assert_eq!(c[0].last.node, "gpu-node-02");
    // One rank twice is still one rank.
    assert!(arrivals(&[call(0, 2, 1, T0), call(0, 2, 1, T0)], &no_clocks()).is_empty());
}

#[test]
fn ranks_that_disagree_on_the_collective_are_flagged() {
    let mut odd = call(2, 3, 4, T0 + 2 * MS);
    odd.op = "ncclAllGather".into();
    let calls = vec![call(0, 3, 4, T0), call(1, 3, 4, T0 + MS), odd];
    let c = arrivals(&calls, &no_clocks());
    assert_eq!(c[0].op, "ncclAllReduce", "the op most ranks called");
    assert_eq!(c[0].mismatch.len(), 1);
    assert_eq!(
        (c[0].mismatch[0].rank.node.as_str(), c[0].mismatch[0].op.as_str()),
        ("gpu-node-03", "ncclAllGather")
    );
    // A mismatch is left out of lateness, and counted.
    let r = lateness(&c);
    assert_eq!((r.comms[0].collectives, r.comms[0].mismatched), (0, 1));
    assert!(r.ranks.is_empty());
}

#[test]
fn fleet_offsets_convert_with_their_sign() {
    // An agent 5 s ahead of us: subtract 5 s from its times.
    let c = NodeClock::from_agent_offset(5_000 * MS, 2 * MS);
    assert_eq!(
        c,
        NodeClock {
            offset_ns: -5_000 * MS,
            error_ns: 2 * MS
        }
    );
}

// --- lateness -----------------------------------------------------------

/// Four ranks, 100 all-reduces. The peers enter 0, 0.1 and 0.2 ms into the
/// step (rotating); rank 2 enters 12.4 ms after the latest of them on 78,
/// 15.1 ms on 9, and first on the other 13.
fn straggling_job() -> Vec<CollectiveCall> {
    job(4, 100, |r, s| {
        let peer = |r: usize| ((r as u64 + s) % 3) as i64 * 100 * US;
        match (r, s) {
            (2, 0..78) => 200 * US + 12_400 * US,
            (2, 78..87) => 200 * US + 15_100 * US,
            (2, _) => -50 * US,
            (r, _) => peer(if r == 3 { 2 } else { r }),
        }
    })
}

#[test]
fn the_rank_that_is_last_far_too_often_is_the_straggler() {
    let report = lateness(&arrivals(&straggling_job(), &no_clocks()));
    let v = report.straggler.expect("rank 2 is the straggler");
    assert_eq!(
        (v.rank.node.as_str(), v.rank.world_rank),
        ("gpu-node-03", Some(2))
    );
    assert_eq!((v.last, v.collectives, v.ranks), (87, 100, 4));
    assert!((v.expected_share - 0.25).abs() < 1e-9);
    assert_eq!((v.margin_p50_ns, v.margin_p90_ns), (12_400 * US, 15_100 * US));
    assert_eq!(v.held_back_ns, 78 * 12_400 * US + 9 * 15_100 * US);
    assert_eq!(
        v.headline(),
        "STRAGGLER gpu-node-03 (rank 2): last at 87 of 100 all-reduces (87% vs 25% expected), \
         late by 12.4 ms median (p90 15.1 ms); held 3 peer(s) back 1.1 s in all on comm 3f2a…"
    );
    // The peers were last on the 13 others, by 0.1 ms.
    let peers: Vec<&RankLateness> = report.ranks.iter().filter(|r| r.rank.pid != 4002).collect();
    assert_eq!(peers.iter().map(|p| p.last).sum::<usize>(), 13);
    assert_eq!(v.peers_margin_p50_ns, 100 * US);
    assert_eq!(report.comms[0].certain, 100);
}

/// `n` all-reduces among 4 ranks: rank 2 is last, by `margin`, at the
/// `lasts` collectives `s` with `(7 s) mod n < lasts` (spread through the
/// run); at the others one of ranks 0, 1 and 3 in turn is last, by 0.5 ms.
fn often_last_job(n: u64, lasts: u64, margin: i64) -> Vec<CollectiveCall> {
    job(4, n, |r, s| {
        let late = if (7 * s) % n < lasts {
            2
        } else {
            [0, 1, 3][(s % 3) as usize]
        };
        let by = if late == 2 { margin } else { 500 * US };
        r as i64 * 10 * US + if r == late { by } else { 0 }
    })
}

#[test]
fn a_rank_last_half_again_as_often_as_chance_that_costs_most_is_the_straggler() {
    // As seen on the simulated job: last at 29 of 60 among 4 (48%, under
    // twice the 25% of chance, z 4.2), holding the others back far longer.
    let report = lateness(&arrivals(&often_last_job(60, 29, 3 * MS), &no_clocks()));
    let v = report.straggler.expect("rank 2 is the straggler");
    assert_eq!((v.rank.world_rank, v.last, v.collectives), (Some(2), 29, 60));
    assert!(v.share_last < 2.0 * v.expected_share && v.z > 4.0, "{v:?}");
    // Last barely more often than chance, however significant over 1000
    // collectives (34%, z 6.6) and however costly: not named.
    let report = lateness(&arrivals(&often_last_job(1000, 340, 4 * MS), &no_clocks()));
    let r2 = report.ranks.iter().find(|r| r.rank.pid == 4002).expect("rank 2");
    assert_eq!(r2.last, 340);
    assert!(r2.z > 6.0, "{r2:?}");
    assert_eq!(report.straggler, None);
}

#[test]
fn a_random_last_rank_is_no_straggler() {
    for seed in 0..20 {
        for n in [2, 4, 8] {
            let calls = job(n, 200, |r, s| noise(seed, r, s, 2 * MS));
            let report = lateness(&arrivals(&calls, &no_clocks()));
            assert_eq!(report.straggler, None, "seed {seed}, {n} ranks");
            let lasts: usize = report.ranks.iter().map(|r| r.last).sum();
            assert_eq!(lasts, report.comms[0].certain);
        }
    }
}

#[test]
fn a_rank_always_last_by_a_hair_is_no_straggler() {
    // Last every time, by 40 µs: below the noise floor, although over
    // 400 collectives it adds up to 16 ms held back.
    let calls = job(4, 400, |r, _| if r == 1 { 340 * US } else { r as i64 * 100 * US });
    let report = lateness(&arrivals(&calls, &no_clocks()));
    let r1 = report.ranks.iter().find(|r| r.rank.pid == 4001).expect("rank 1");
    assert_eq!((r1.last, r1.held_back_ns), (400, 16 * MS));
    assert_eq!(report.straggler, None);
    // 2 ms is well above it.
    let calls = job(4, 400, |r, _| if r == 1 { 2 * MS } else { r as i64 * 100 * US });
    assert_eq!(
        lateness(&arrivals(&calls, &no_clocks()))
            .straggler
            .map(|v| v.rank.pid),
        Some(4001)
    );
}

#[test]
fn lateness_inside_the_clock_error_is_not_evidence() {
    // Rank 3 enters 3 ms late every time; its node's clock is known to 5 ms.
    let calls = job(
        4,
        60,
        |r, s| if r == 3 { 3 * MS } else { noise(1, r, s, 300 * US) },
    );
    let loose = clocks(&[(3, 0, 5 * MS)]);
    let report = lateness(&arrivals(&calls, &loose));
    assert_eq!(report.straggler, None);
    assert_eq!(report.comms[0].certain, 0);
    let tight = clocks(&[(3, 0, 100 * US)]);
    let v = lateness(&arrivals(&calls, &tight))
        .straggler
        .expect("named with a precise clock");
    assert_eq!(v.rank.node, "gpu-node-04");
    assert!(v.noise_ns >= 100 * US);
}

#[test]
fn the_rank_last_most_often_is_no_straggler_when_the_others_cost_more() {
    // Rank 0 is last at 70 of 100 by 5 ms (350 ms held back); each peer is
    // last at 10, by 0.1 ms but twice by 500 ms (1 s held back each).
    let calls = job(4, 100, |r, s| {
        let i = s as usize;
        if i < 70 {
            return if r == 0 {
                5_200 * US
            } else {
                (r as i64 - 1) * 100 * US
            };
        }
        let late = 1 + (i - 70) % 3;
        match r {
            0 => 0,
            r if r == late => 200 * US + if i < 76 { 500 * MS } else { 100 * US },
            // The other two peers at 0.1 and 0.2 ms.
            r if r == (1..4).find(|&p| p != late).unwrap_or(0) => 100 * US,
            _ => 200 * US,
        }
    });
    let report = lateness(&arrivals(&calls, &no_clocks()));
    let held: Vec<(usize, i64)> = report.ranks.iter().map(|r| (r.last, r.held_back_ns)).collect();
    assert_eq!(
        held,
        [
            (70, 350 * MS),
            (10, 1_000_800 * US),
            (10, 1_000_800 * US),
            (10, 1_000_800 * US)
        ]
    );
    assert_eq!(report.straggler, None);
}

#[test]
fn a_few_collectives_are_not_enough() {
    let calls = job(4, 4, |r, _| if r == 0 { 20 * MS } else { 0 });
    assert_eq!(lateness(&arrivals(&calls, &no_clocks())).straggler, None);
}

#[test]
fn two_ranks_can_have_a_straggler() {
    let calls = job(2, 60, |r, s| match (r, s % 10) {
        (1, 0) => 0,
        (1, _) => 10 * MS,
        _ => noise(3, r, s, 200 * US),
    });
    let v = lateness(&arrivals(&calls, &no_clocks()))
        .straggler
        .expect("a straggler");
    assert_eq!(v.rank.node, "gpu-node-02");
    assert!((v.expected_share - 0.5).abs() < 1e-9);
}

#[test]
fn the_straggler_is_the_one_that_cost_most_across_communicators() {
    // Two communicators: on one rank 0 is late by 5 ms, on the other rank
    // 1 by 20 ms.
    let mut calls = job(2, 50, |r, _| if r == 0 { 5 * MS } else { 0 });
    calls.extend(
        job(2, 50, |r, _| if r == 1 { 20 * MS } else { 0 })
            .into_iter()
            .map(|mut c| {
                c.comm_id = "00000000000000aa".into();
                c
            }),
    );
    let report = lateness(&arrivals(&calls, &no_clocks()));
    assert_eq!(report.comms.len(), 2);
    let v = report.straggler.expect("a straggler");
    assert_eq!((v.rank.pid, v.comm_id.as_str()), (4001, "00000000000000aa"));
}

#[test]
fn mixed_ops_are_called_collectives() {
    let calls: Vec<CollectiveCall> = straggling_job()
        .into_iter()
        .map(|mut c| {
            if c.seq % 2 == 1 {
                c.op = "ncclReduceScatter".into();
            }
            c
        })
        .collect();
    let v = lateness(&arrivals(&calls, &no_clocks()))
        .straggler
        .expect("still rank 2");
    assert_eq!(v.op, None);
    assert!(
        v.headline().contains("last at 87 of 100 collectives"),
        "{}",
        v.headline()
    );
}

// --- words ---------------------------------------------------------------

#[test]
fn figures_read_as_people_write_them() {
    assert_eq!(duration(850), "850 ns");
    assert_eq!(duration(12_400), "12.4 µs");
    assert_eq!(duration(12_400_000), "12.4 ms");
    assert_eq!(duration(1_250_000_000), "1.2 s");
    assert_eq!(duration(41_000_000_000), "41 s");
    assert_eq!(duration(720_000_000_000), "12 min");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(64 << 20), "64.0 MiB");
    assert_eq!(bytes(2 << 30), "2.0 GiB");
    assert_eq!(short_comm(COMM), "3f2a…");
    assert_eq!(short_comm("ab"), "ab");
    assert_eq!(plural(Some("ncclAllReduce")), "all-reduces");
    assert_eq!(plural(Some("ncclSend")), "collectives");
    let rank = |w, c| Rank {
        node: "n".into(),
        pid: 7,
        world_rank: w,
        comm_rank: c,
    };
    assert_eq!(rank(Some(2), Some(0)).name(), "rank 2");
    assert_eq!(rank(None, Some(0)).name(), "comm rank 0");
    assert_eq!(rank(None, None).name(), "pid 7");
}
