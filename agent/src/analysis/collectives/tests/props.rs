//! Invariants on generated jobs: the order of the calls does not matter,
//! identical ranks have no straggler, a node's clock offset cancels with
//! its [`NodeClock`], and a rank late by far more than the noise on most
//! collectives is named.

use ingero_api::CommMember;
use proptest::prelude::*;

use super::*;

/// A job: ranks, collectives, the entry jitter (ns) and a seed for it.
fn jobs() -> impl Strategy<Value = (usize, u64, i64, u64)> {
    (2usize..7, 10u64..60, 1i64..2_000_000, any::<u64>())
}

/// Per node: clock offset and error bound, ns.
fn node_clocks() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::vec((-10_000_000_000i64..10_000_000_000, 0i64..200_000), 7)
}

fn clock_map(spec: &[(i64, i64)]) -> HashMap<String, NodeClock> {
    spec.iter()
        .enumerate()
        .map(|(r, &(offset_ns, error_ns))| (node(r), NodeClock { offset_ns, error_ns }))
        .collect()
}

/// `calls` as their nodes record them: each node's reference times moved
/// onto its own clock.
fn on_node_clocks(calls: &[CollectiveCall], clocks: &HashMap<String, NodeClock>) -> Vec<CollectiveCall> {
    calls
        .iter()
        .map(|c| CollectiveCall {
            entry_ns: c.entry_ns - clocks[&c.node].offset_ns,
            ..c.clone()
        })
        .collect()
}

fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut keyed: Vec<(i64, T)> = v
        .iter()
        .enumerate()
        .map(|(i, x)| (noise(seed, i, i as u64, i64::MAX), x.clone()))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, x)| x).collect()
}

proptest! {
    #[test]
    fn the_order_of_the_calls_does_not_matter(
        (n, steps, jitter, seed) in jobs(),
        late in 0usize..7,
        delay in 0i64..20_000_000,
        cut in 0u64..60,
        spec in node_clocks(),
        order in any::<u64>(),
    ) {
        let late = late % n;
        let clocks = clock_map(&spec);
        // Some ranks stop early, so hangs have something to find.
        let reference: Vec<CollectiveCall> = job(n, steps, |r, s| {
            noise(seed, r, s, jitter) + if r == late { delay } else { 0 }
        })
        .into_iter()
        .filter(|c| c.pid as usize - 4000 != late || c.seq < cut)
        .collect();
        let mut calls = on_node_clocks(&reference, &clocks);
        // Some calls recorded twice, the copy entered later.
        let copies: Vec<CollectiveCall> = calls
            .iter()
            .step_by(7)
            .map(|c| CollectiveCall { entry_ns: c.entry_ns + jitter, duration_ns: 1, ..c.clone() })
            .collect();
        calls.extend(copies);
        let other = shuffled(&calls, order);
        let (a, b) = (arrivals(&calls, &clocks), arrivals(&other, &clocks));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(lateness(&a), lateness(&shuffled(&b, order ^ 1)));
        let now = T0 + steps as i64 * STEP + 60_000 * MS;
        prop_assert_eq!(
            hangs(&calls, &[], &clocks, now, 10_000 * MS),
            hangs(&other, &[], &clocks, now, 10_000 * MS)
        );
    }

    #[test]
    fn identical_ranks_have_no_straggler(
        n in 2usize..7,
        cycles in 2u64..12,
        offsets in prop::collection::vec(0i64..50_000_000, 7),
    ) {
        // Every rank takes every role equally often: at step s, rank r
        // enters offsets[(r + s) % n] late. However large the spread,
        // nobody is late more than the others.
        let calls = job(n, cycles * n as u64, |r, s| offsets[(r + s as usize) % n]);
        let report = lateness(&arrivals(&calls, &HashMap::new()));
        prop_assert_eq!(report.straggler, None);
        let lasts: Vec<usize> = report.ranks.iter().map(|r| r.last).collect();
        prop_assert!(lasts.windows(2).all(|w| w[0] == w[1]), "{:?}", lasts);
    }

    #[test]
    fn a_node_clock_offset_cancels_with_its_node_clock(
        (n, steps, jitter, seed) in jobs(),
        late in 0usize..7,
        delay in 0i64..20_000_000,
        spec in node_clocks(),
        which in 0usize..7,
        shift in -3_600_000_000_000i64..3_600_000_000_000,
    ) {
        let late = late % n;
        let reference = job(n, steps, |r, s| noise(seed, r, s, jitter) + if r == late { delay } else { 0 });
        let clocks = clock_map(&spec);
        let calls = on_node_clocks(&reference, &clocks);
        // The node's clock jumps by `shift`, and so does its estimate.
        let moved_node = node(which % n);
        let moved: Vec<CollectiveCall> = calls
            .iter()
            .map(|c| CollectiveCall {
                entry_ns: if c.node == moved_node { c.entry_ns + shift } else { c.entry_ns },
                ..c.clone()
            })
            .collect();
        let mut moved_clocks = clocks.clone();
        if let Some(c) = moved_clocks.get_mut(&moved_node) {
            c.offset_ns -= shift;
        }
        let (a, b) = (arrivals(&calls, &clocks), arrivals(&moved, &moved_clocks));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(lateness(&a), lateness(&b));
        let now = T0 + 30_000 * MS;
        let key = |h: &Hang| (h.headline(), h.missing.iter().map(|m| (m.rank.pid, m.last_seq, m.last_entry_ns)).collect::<Vec<_>>());
        let partial: Vec<CollectiveCall> = calls.iter().filter(|c| c.pid != 4000 || c.seq + 1 < steps).cloned().collect();
        let partial_moved: Vec<CollectiveCall> = moved.iter().filter(|c| c.pid != 4000 || c.seq + 1 < steps).cloned().collect();
        let h1: Vec<_> = hangs(&partial, &[], &clocks, now, MS).iter().map(key).collect();
        let h2: Vec<_> = hangs(&partial_moved, &[], &moved_clocks, now, MS).iter().map(key).collect();
        prop_assert_eq!(h1, h2);
    }

    #[test]
    fn a_rank_late_by_far_more_than_the_noise_on_most_collectives_is_named(
        n in 2usize..7,
        steps in 30u64..80,
        late in 0usize..7,
        delay in 5_000_000i64..50_000_000,
        jitter in 1i64..1_000_000,
        seed in any::<u64>(),
        spec in prop::collection::vec((-10_000_000_000i64..10_000_000_000, 0i64..100_000), 7),
    ) {
        let late = late % n;
        // Late on all but every fifth collective (80% or more).
        let reference = job(n, steps, |r, s| {
            noise(seed, r, s, jitter) + if r == late && s % 5 != 0 { delay } else { 0 }
        });
        let clocks = clock_map(&spec);
        let calls = on_node_clocks(&reference, &clocks);
        let v = lateness(&arrivals(&calls, &clocks)).straggler;
        prop_assert_eq!(v.as_ref().map(|v| v.rank.node.clone()), Some(node(late)), "{:?}", v);
        let v = v.expect("named");
        prop_assert!(v.margin_p50_ns >= delay - jitter, "{:?}", v);
        let start = format!("STRAGGLER {} (rank {}): last at ", node(late), late);
        prop_assert!(v.headline().starts_with(&start), "{}", v.headline());
    }

    #[test]
    fn a_job_whose_ranks_all_finish_is_never_hung(
        (n, steps, jitter, seed) in jobs(),
        spec in node_clocks(),
        wait in 0i64..3_600_000_000_000,
    ) {
        let clocks = clock_map(&spec);
        let calls = on_node_clocks(&job(n, steps, |r, s| noise(seed, r, s, jitter)), &clocks);
        let members: Vec<CommMember> = (0..n)
            .map(|r| CommMember {
                node: node(r),
                pid: 4000 + r as u32,
                world_rank: Some(r as i64),
                comm_id: COMM.into(),
                comm_rank: Some(r as i64),
                comm_size: Some(n as i64),
                created_ns: T0,
            })
            .collect();
        let now = T0 + steps as i64 * STEP + wait;
        prop_assert_eq!(hangs(&calls, &members, &clocks, now, MS), []);
    }
}
