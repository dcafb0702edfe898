//! Tests of the straggler verdict: which node, which causes, and the
//! invariants (order, identical nodes, window length) as properties.

use proptest::prelude::*;

use super::*;

fn node(name: &str, wait: f64, preempt: f64, write_mib_s: f64) -> NodeFigures {
    let window_ns = 40_000_000_000;
    NodeFigures {
        node: name.into(),
        rank: Some(name.bytes().last().map_or(0, |b| i64::from(b) - 48)),
        events: 10_000,
        window_ns,
        sync_ns: (wait * window_ns as f64) as i64,
        sync_op: Some("cuStreamSynchronize".into()),
        preempted_ns: (preempt * window_ns as f64) as i64,
        io_busy_ns: 0,
        io_write_bytes: (write_mib_s * 1024.0 * 1024.0 * 40.0) as u64,
        alloc_bytes: 0,
        oom_kills: 0,
        input_wait_ns: 0,
        launch: Some(("cuLaunchKernel".into(), 20_000, 60_000, 1_000)),
    }
}

#[test]
fn the_node_that_does_not_wait_is_the_straggler_and_its_stress_is_named() {
    let nodes = [
        node("n0", 0.99, 0.004, 0.0),
        node("n1", 0.98, 0.006, 0.0),
        node("n2", 0.01, 0.76, 80.0),
        node("n3", 0.985, 0.005, 0.0),
    ];
    let v = find(&nodes).expect("a straggler");
    assert_eq!(v.node, "n2");
    assert_eq!(v.rank, Some(2));
    assert!((v.peers_wait_share - 0.985).abs() < 1e-9);
    let kinds: Vec<Stress> = v.causes.iter().map(|c| c.stress).collect();
    assert_eq!(kinds.len(), 2, "{:?}", v.causes);
    assert!(kinds.contains(&Stress::Cpu) && kinds.contains(&Stress::Write));
    let line = v.headline();
    assert!(line.starts_with("STRAGGLER n2 (rank 2): waits 1.0% of the time while its 3 peer(s) wait 98.5% (median) in cuStreamSynchronize"), "{line}");
    assert!(
        line.contains("CPU: its threads preempted 76.0% vs 0.5%"),
        "{line}"
    );
}

#[test]
fn two_nodes_are_enough() {
    let v = find(&[node("a", 0.9, 0.0, 0.0), node("b", 0.1, 0.5, 0.0)]).expect("straggler");
    assert_eq!(v.node, "b");
}

#[test]
fn nobody_waiting_means_no_straggler() {
    // A job bound by the GPU everywhere: nobody waits for anybody.
    assert_eq!(
        find(&[
            node("a", 0.01, 0.0, 0.0),
            node("b", 0.0, 0.3, 0.0),
            node("c", 0.02, 0.0, 0.0)
        ]),
        None
    );
    // One node alone cannot be compared.
    assert_eq!(find(&[node("a", 0.9, 0.0, 0.0)]), None);
}

#[test]
fn ordinary_spread_is_not_an_outlier() {
    let nodes = [
        node("a", 0.50, 0.01, 0.0),
        node("b", 0.46, 0.01, 0.0),
        node("c", 0.55, 0.02, 0.0),
        node("d", 0.43, 0.01, 0.0),
    ];
    assert_eq!(find(&nodes), None);
}

#[test]
#[expect(clippy::float_cmp, reason = "medians of small exact values are exact")]
fn robust_statistics_ignore_one_wild_value() {
    assert_eq!(median(&[1.0, 2.0, 100.0]), 2.0);
    assert_eq!(median(&[1.0, 2.0, 3.0, 100.0]), 2.5);
    assert_eq!(mad(&[1.0, 2.0, 3.0, 100.0]), 1.0);
    assert!(robust_score(100.0, &[1.0, 2.0, 3.0], 0.0) > 30.0);
}

#[test]
fn a_starved_input_pipeline_is_named_first_over_its_workers_reads() {
    let mut starved = node("n1", 0.02, 0.01, 0.0);
    starved.input_wait_ns = starved.window_ns * 39 / 100;
    starved.io_busy_ns = starved.window_ns * 30 / 100;
    let v = find(&[node("n0", 0.6, 0.01, 0.0), starved]).expect("a straggler");
    assert_eq!(v.node, "n1");
    let kinds: Vec<Stress> = v.causes.iter().map(|c| c.stress).collect();
    assert_eq!(
        kinds,
        [Stress::Input, Stress::Io],
        "input first though the reads score higher: {:?}",
        v.causes
    );
    assert_eq!(v.causes[0].stress.class(), "input starvation");
    assert!(
        v.headline()
            .contains("; input starvation: its training thread waited for input 39.0% vs 0.0%"),
        "{}",
        v.headline()
    );
    // Below the floor (5% of the time) waiting is not a cause.
    let mut little = node("n1", 0.02, 0.01, 0.0);
    little.input_wait_ns = little.window_ns * 4 / 100;
    let v = find(&[node("n0", 0.6, 0.01, 0.0), little]).expect("a straggler");
    assert!(v.causes.is_empty(), "{:?}", v.causes);
}

#[test]
fn preemption_is_named_before_the_launch_tail_it_causes() {
    // The preempted node's launches also have a long tail, scoring higher
    // than its preemption: the tail is the symptom, CPU the cause.
    let mut hogged = node("n2", 0.02, 0.12, 0.0);
    hogged.launch = Some(("cuLaunchKernel".into(), 20_000, 2_000_000, 1_000));
    let nodes = [
        node("n0", 0.6, 0.01, 0.0),
        node("n1", 0.62, 0.012, 0.0),
        hogged,
        node("n3", 0.58, 0.011, 0.0),
    ];
    let v = find(&nodes).expect("a straggler");
    let kinds: Vec<Stress> = v.causes.iter().map(|c| c.stress).collect();
    assert_eq!(kinds, [Stress::Cpu, Stress::LaunchTail], "{:?}", v.causes);
    let tail = &v.causes[1];
    assert!(
        tail.score > v.causes[0].score,
        "the tail scores higher: {:?}",
        v.causes
    );
    // Alone, the tail is the cause named.
    let mut tail_only = node("n2", 0.02, 0.01, 0.0);
    tail_only.launch = Some(("cuLaunchKernel".into(), 20_000, 2_000_000, 1_000));
    let v = find(&[node("n0", 0.6, 0.01, 0.0), tail_only]).expect("a straggler");
    assert_eq!(v.causes.first().map(|c| c.stress), Some(Stress::LaunchTail));
}

#[test]
fn a_job_is_balanced_when_every_node_waits_and_none_stands_out() {
    let even = [
        node("a", 0.50, 0.01, 0.0),
        node("b", 0.46, 0.30, 0.0),
        node("c", 0.55, 0.02, 0.0),
    ];
    assert!(every_node_waits(&even) && find(&even).is_none());
    // A straggler waits too, but stands out: not balanced.
    let paced = [node("a", 0.9, 0.0, 0.0), node("b", 0.1, 0.5, 0.0)];
    assert!(every_node_waits(&paced) && find(&paced).is_some());
    // Nobody waits: nothing says whether a node sets the pace.
    assert!(!every_node_waits(&[
        node("a", 0.01, 0.0, 0.0),
        node("b", 0.02, 0.0, 0.0)
    ]));
    // One node alone is never balanced against anything.
    assert!(!every_node_waits(&[node("a", 0.5, 0.0, 0.0)]));
}

fn fleet() -> impl Strategy<Value = Vec<(f64, f64, f64)>> {
    prop::collection::vec((0.0f64..1.0, 0.0f64..1.0, 0.0f64..100.0), 2..9)
}

fn build(spec: &[(f64, f64, f64)]) -> Vec<NodeFigures> {
    spec.iter()
        .enumerate()
        .map(|(i, &(w, p, io))| node(&format!("n{i}"), w, p, io))
        .collect()
}

proptest! {
    #[test]
    fn the_verdict_does_not_depend_on_node_order(spec in fleet(), rotate in 0usize..8) {
        let nodes = build(&spec);
        let mut shuffled = nodes.clone();
        let k = rotate % shuffled.len();
        shuffled.rotate_left(k);
        shuffled.reverse();
        prop_assert_eq!(find(&nodes), find(&shuffled));
    }

    #[test]
    fn identical_nodes_have_no_straggler((w, p, io) in (0.0f64..1.0, 0.0f64..1.0, 0.0f64..100.0), n in 2usize..9) {
        let nodes = build(&vec![(w, p, io); n]);
        prop_assert_eq!(find(&nodes), None);
    }

    #[test]
    fn the_window_length_does_not_matter(spec in fleet(), factor in 1i64..5) {
        let nodes = build(&spec);
        let scaled: Vec<NodeFigures> = nodes
            .iter()
            .map(|n| NodeFigures {
                window_ns: n.window_ns * factor,
                sync_ns: n.sync_ns * factor,
                preempted_ns: n.preempted_ns * factor,
                io_write_bytes: n.io_write_bytes * factor as u64,
                ..n.clone()
            })
            .collect();
        let (a, b) = (find(&nodes), find(&scaled));
        prop_assert_eq!(a.as_ref().map(|v| &v.node), b.as_ref().map(|v| &v.node));
    }

    #[test]
    fn a_node_that_alone_does_not_wait_is_found(n in 2usize..9, which in 0usize..8, peers_wait in 0.3f64..1.0) {
        let which = which % n;
        let spec: Vec<(f64, f64, f64)> = (0..n).map(|i| if i == which { (0.0, 0.5, 0.0) } else { (peers_wait, 0.0, 0.0) }).collect();
        let v = find(&build(&spec));
        prop_assert_eq!(v.map(|v| v.node), Some(format!("n{which}")));
    }
}
