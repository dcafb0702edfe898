//! Tests of [`compare`]: how severities follow the pace across nodes.

use agent_common::catalog::{cuda_op, source};
use ingero_api::{Evidence, NodeOps, OpSummary, Severity, Window};

use super::*;

const WINDOW_NS: i64 = 40_000_000_000;

/// A node that spends `wait` of its window in `cudaStreamSynchronize`.
fn node(name: &str, wait: f64) -> NodeOps {
    NodeOps {
        node: name.into(),
        rank: None,
        world_size: None,
        events: 10_000,
        window: Window {
            from: 0,
            to: WINDOW_NS,
        },
        ops: vec![OpSummary {
            name: "cudaStreamSynchronize".into(),
            source: source::CUDA,
            op: cuda_op::STREAM_SYNCHRONIZE,
            count: 1_000,
            p50_us: 100.0,
            p95_us: 200.0,
            p99_us: 300.0,
            max_us: 400.0,
            total_ms: wait * WINDOW_NS as f64 / 1e6,
        }],
        evidence: Evidence::default(),
    }
}

/// A chain of `rule` on `node`, with a root cause of its own.
fn chain(node: &str, rule: &str, severity: Severity, score: f64) -> Chain {
    common_mode::tests::chain(
        node,
        rule,
        severity,
        &format!("a cause of {rule}"),
        5_000.0,
        score,
    )
}

fn severities(c: &Comparison) -> Vec<(String, Severity)> {
    let mut v: Vec<(String, Severity)> = c.chains.iter().map(|c| (c.id.clone(), c.severity)).collect();
    v.sort();
    v
}

/// Two HIGH chains on one node, one elsewhere.
fn chains() -> Vec<Chain> {
    vec![
        chain("n1", "tail-cudaMemcpy", Severity::High, 9.0),
        chain("n1", "tail-cudaMalloc", Severity::High, 5.0),
        chain("n2", "tail-cudaMemcpy", Severity::Medium, 3.0),
    ]
}

#[test]
fn in_a_balanced_job_no_node_keeps_a_high_chain() {
    // Every node waits about half its time and none stands out: what is
    // slow on n1 alone did not make it set the pace.
    let nodes = [node("n0", 0.50), node("n1", 0.46), node("n2", 0.55)];
    let c = compare(&nodes, chains(), None);
    assert!(c.verdict.is_none());
    assert_eq!(
        severities(&c),
        [
            ("n1:tail-cudaMalloc@1795262400".into(), Severity::Low),
            ("n1:tail-cudaMemcpy@1795262400".into(), Severity::Medium),
            ("n2:tail-cudaMemcpy@1795262400".into(), Severity::Medium),
        ]
    );
}

#[test]
fn the_straggler_keeps_its_high_chains_and_the_others_are_capped() {
    let nodes = [node("n0", 0.60), node("n1", 0.02), node("n2", 0.62)];
    let mut given = chains();
    given.push(chain("n2", "tail-cudaMalloc", Severity::High, 8.0));
    let c = compare(&nodes, given, None);
    assert_eq!(c.straggler_node(), Some("n1"));
    assert_eq!(
        severities(&c),
        [
            ("n1:tail-cudaMalloc@1795262400".into(), Severity::High),
            ("n1:tail-cudaMemcpy@1795262400".into(), Severity::High),
            ("n2:tail-cudaMalloc@1795262400".into(), Severity::Medium),
            ("n2:tail-cudaMemcpy@1795262400".into(), Severity::Low),
        ]
    );
    assert_eq!(c.chains[0].node, "n1", "the straggler's chains first");
}

#[test]
fn nodes_that_never_wait_keep_their_severities() {
    // Without synchronize calls nothing says which node sets the pace.
    let nodes = [node("n0", 0.0), node("n1", 0.0), node("n2", 0.01)];
    let c = compare(&nodes, chains(), None);
    assert_eq!(
        severities(&c),
        [
            ("n1:tail-cudaMalloc@1795262400".into(), Severity::High),
            ("n1:tail-cudaMemcpy@1795262400".into(), Severity::High),
            ("n2:tail-cudaMemcpy@1795262400".into(), Severity::Medium),
        ]
    );
}

#[test]
fn text_counts_the_low_chains_of_nodes_that_do_not_set_the_pace() {
    let nodes = [node("n0", 0.60), node("n1", 0.02), node("n2", 0.62)];
    let given = vec![
        chain("n1", "tail-cudaMemcpy", Severity::Low, 2.0),
        chain("n0", "tail-cudaMemcpy", Severity::Low, 1.0),
        chain("n2", "tail-cudaFree", Severity::Low, 1.5),
        chain("n2", "tail-cudaMalloc", Severity::Medium, 4.0),
    ];
    let c = compare(&nodes, given, None);
    let text = chain::render_compared(&c, false, &chain::render);
    let blocks: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(
        blocks,
        [
            "[MEDIUM] [n2] tail-cudaMalloc on n2",
            "[LOW] [n1] tail-cudaMemcpy on n1"
        ],
        "{text}"
    );
    assert!(
        text.contains("\n2 LOW chains on n0, n2 not shown: slow calls that cost little of the step time, on nodes that wait for the straggler anyway (--all lists them).\n"),
        "{text}"
    );
    let all = chain::render_compared(&c, true, &chain::render);
    assert_eq!(all.lines().filter(|l| l.starts_with('[')).count(), 4, "{all}");
    assert!(!all.contains("not shown"), "{all}");

    // One node alone: nothing to compare, every chain printed.
    let alone = compare(
        &[node("n0", 0.6)],
        vec![chain("n0", "tail-cudaMemcpy", Severity::Low, 1.0)],
        None,
    );
    let text = chain::render_compared(&alone, false, &chain::render);
    assert!(
        text.contains("[LOW] [n0]") && !text.contains("not shown"),
        "{text}"
    );
}
