//! Common-mode findings: one condition seen on every node is one finding.
//!
//! When every node compared has a chain of the same rule on the same
//! operation with the same class of root cause (say the launch tail from
//! "CPU contention within the job", the ranks sharing their cores), that
//! is a property of the job or of the machines, not of a node: printing it
//! once per node buries what is specific to one node. [`find`] groups such
//! chains into [`CommonFinding`]s; local, merged and fleet explain print
//! each once ("on all 4 nodes: ...") after the node-specific chains, and
//! `--all` prints every chain as before.
//!
//! Invariants: a finding needs at least two nodes and a chain on *every*
//! node compared (a condition on three nodes of four is node-specific, the
//! fourth node being the odd one), of a similar size: no node's p99 more
//! than [`COMMON_SPREAD`] times the median of the others' (where it is far
//! worse, it is that node's problem); a chain belongs to at most one finding;
//! the chains themselves are never changed or dropped (JSON keeps them all,
//! the findings only say which ids they stand for). The class of a root
//! cause is its words before the first colon (`CPU contention within the
//! job`, `Block I/O`, `Memory pressure`), the rule is the chain id's
//! descriptor without node and time (`tail-cuLaunchKernel`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::chain::{Chain, Severity};
use crate::units::format_ns;

/// Most a chain's p99 may exceed the median of the others' p99 (as a
/// multiple) for its condition to count as the same on every node.
pub const COMMON_SPREAD: f64 = 3.0;

/// One chain a finding stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// The chain's node.
    pub node: String,
    /// The chain's id.
    pub chain_id: String,
    /// The chain's severity on that node.
    pub severity: Severity,
}

/// A condition seen on every node, said once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommonFinding {
    /// The rule and operation, from the chain ids (`tail-cuLaunchKernel`).
    pub rule: String,
    /// The class of the root cause (`CPU contention within the job`).
    pub cause: String,
    /// The most severe of its chains.
    pub severity: Severity,
    /// One line for all the nodes: the effect's range and the cause class.
    pub summary: String,
    /// The node whose chain stands as the example (the highest score).
    pub example_node: String,
    /// The example chain's root cause.
    pub root_cause: String,
    /// The example chain's fixes.
    pub recommendations: Vec<String>,
    /// Every chain it stands for, one or more per node, in node order.
    pub members: Vec<Member>,
}

impl CommonFinding {
    /// The nodes it was seen on (all of them), in order, without repeats.
    #[must_use]
    pub fn nodes(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.members.iter().map(|m| m.node.as_str()).collect();
        v.dedup();
        v
    }

    /// Whether the finding stands for chain `id`.
    #[must_use]
    pub fn covers(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.chain_id == id)
    }
}

/// The rule of a chain: its id without the node and the time
/// (`tail-cuLaunchKernel`), else its operation.
#[must_use]
pub fn rule_of(c: &Chain) -> String {
    c.id.strip_prefix(c.node.as_str())
        .and_then(|r| r.strip_prefix(':'))
        .map_or(c.cuda_op.as_str(), |r| {
            r.rsplit_once('@').map_or(r, |(rule, _)| rule)
        })
        .to_owned()
}

/// The class of a root cause: its words before the first colon.
#[must_use]
pub fn cause_class(root_cause: &str) -> String {
    root_cause
        .split_once(':')
        .map_or(root_cause, |(class, _)| class)
        .trim()
        .to_owned()
}

/// The conditions every one of `nodes` shows, most severe first (then by
/// the example's score). `chains` may come from any of the nodes, in any
/// order.
#[must_use]
pub fn find(chains: &[Chain], nodes: &[String]) -> Vec<CommonFinding> {
    let all: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    if all.len() < 2 {
        return Vec::new();
    }
    let mut groups: BTreeMap<(String, String), Vec<&Chain>> = BTreeMap::new();
    for c in chains.iter().filter(|c| all.contains(c.node.as_str())) {
        groups
            .entry((rule_of(c), cause_class(&c.root_cause)))
            .or_default()
            .push(c);
    }
    let mut out: Vec<(f64, CommonFinding)> = groups
        .into_iter()
        .filter(|(_, group)| {
            group.iter().map(|c| c.node.as_str()).collect::<BTreeSet<_>>() == all && alike(group)
        })
        .map(|((rule, cause), mut group)| {
            group.sort_by(|a, b| a.node.cmp(&b.node).then(a.id.cmp(&b.id)));
            let example = group
                .iter()
                .copied()
                .max_by(|a, b| a.score.total_cmp(&b.score).then(b.id.cmp(&a.id)))
                .unwrap_or(group[0]);
            let finding = CommonFinding {
                severity: group.iter().map(|c| c.severity).max().unwrap_or(Severity::Low),
                summary: summary(&group, example, &cause, all.len()),
                example_node: example.node.clone(),
                root_cause: example.root_cause.clone(),
                recommendations: example.recommendations.clone(),
                members: group
                    .iter()
                    .map(|c| Member {
                        node: c.node.clone(),
                        chain_id: c.id.clone(),
                        severity: c.severity,
                    })
                    .collect(),
                rule,
                cause,
            };
            (example.score, finding)
        })
        .collect();
    out.sort_by(|(sa, a), (sb, b)| {
        b.severity
            .cmp(&a.severity)
            .then(sb.total_cmp(sa))
            .then(a.rule.cmp(&b.rule))
    });
    out.into_iter().map(|(_, f)| f).collect()
}

/// No chain's p99 is more than [`COMMON_SPREAD`] times the median of the
/// others' (chains without a p99, such as drops, are not compared): a
/// node where the condition is far worse is where it matters, and its
/// chain must stay in view.
fn alike(group: &[&Chain]) -> bool {
    group.iter().enumerate().all(|(i, c)| {
        let mut others: Vec<f64> = group
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && o.p99_us > 0.0)
            .map(|(_, o)| o.p99_us)
            .collect();
        if c.p99_us <= 0.0 || others.is_empty() {
            return true;
        }
        others.sort_by(f64::total_cmp);
        let median = others[others.len() / 2];
        c.p99_us <= COMMON_SPREAD * median
    })
}

/// The finding's line, such as `on all 4 nodes: cuLaunchKernel p99
/// 1.20ms..3.40ms (40.1x..120.5x p50) - CPU contention within the job`,
/// with the nodes where it is more severe than elsewhere.
fn summary(group: &[&Chain], example: &Chain, cause: &str, nodes: usize) -> String {
    let tails: Vec<&&Chain> = group.iter().filter(|c| c.tail_ratio > 0.0).collect();
    let effect = if tails.len() == group.len() {
        let range = |f: &dyn Fn(&Chain) -> f64, show: &dyn Fn(f64) -> String| {
            let lo = tails.iter().map(|c| f(c)).fold(f64::MAX, f64::min);
            let hi = tails.iter().map(|c| f(c)).fold(f64::MIN, f64::max);
            if show(lo) == show(hi) {
                show(lo)
            } else {
                format!("{}..{}", show(lo), show(hi))
            }
        };
        format!(
            "{} p99 {} ({} p50)",
            example.cuda_op,
            range(&|c| c.p99_us * 1e3, &format_ns),
            range(&|c| c.tail_ratio, &|r| format!("{r:.1}x"))
        )
    } else {
        format!("{} (as on {})", example.summary, example.node)
    };
    let top = group.iter().map(|c| c.severity).max().unwrap_or(Severity::Low);
    let worst: Vec<&str> = group
        .iter()
        .filter(|c| c.severity == top)
        .map(|c| c.node.as_str())
        .collect();
    let uneven = if worst.len() < group.len() {
        format!(" ({} on {}, less elsewhere)", top.as_str(), worst.join(", "))
    } else {
        String::new()
    };
    format!("on all {nodes} nodes: {effect} - {cause}{uneven}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::timewin::Window;

    /// A chain of `rule` on `node` (`tail-cudaMemcpy`: op `cudaMemcpy`),
    /// its tail 40x its p50; also the fixture of the comparison tests.
    pub(in crate::analysis) fn chain(
        node: &str,
        rule: &str,
        severity: Severity,
        root_cause: &str,
        p99_us: f64,
        score: f64,
    ) -> Chain {
        Chain {
            id: format!("{node}:{rule}@1795262400"),
            node: node.into(),
            severity,
            score,
            summary: format!("{rule} on {node}"),
            root_cause: root_cause.into(),
            explanation: String::new(),
            recommendations: vec![format!("fix {node}")],
            cuda_op: rule.trim_start_matches("tail-").into(),
            p99_us,
            p50_us: p99_us / 40.0,
            tail_ratio: 40.0,
            timeline: Vec::new(),
            detected_at: 0,
            window: Window { from: 0, to: 1 },
            peak_at: 0,
        }
    }

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("gpu-node-{i:02}")).collect()
    }

    const OWN: &str = "CPU contention within the job: threads making CUDA calls were preempted";

    #[test]
    fn a_condition_on_every_node_is_one_finding() {
        let mut chains: Vec<Chain> = nodes(4)
            .iter()
            .enumerate()
            .map(|(i, n)| {
                chain(
                    n,
                    "tail-cuLaunchKernel",
                    Severity::Medium,
                    &format!("{OWN} {} times", 100 + i),
                    1200.0 + 700.0 * i as f64,
                    i as f64,
                )
            })
            .collect();
        // Node-specific: block I/O on one node, and a tail on three of four.
        chains.push(chain(
            "gpu-node-03",
            "tail-cuStreamSynchronize",
            Severity::High,
            "Block I/O: 772 write requests",
            24_000.0,
            9.0,
        ));
        for n in &nodes(3) {
            chains.push(chain(n, "tail-cuMemcpyHtoD", Severity::Low, OWN, 900.0, 0.1));
        }
        let found = find(&chains, &nodes(4));
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(f.rule, "tail-cuLaunchKernel");
        assert_eq!(f.cause, "CPU contention within the job");
        assert_eq!(f.severity, Severity::Medium);
        assert_eq!(
            f.nodes(),
            ["gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"]
        );
        assert_eq!(
            f.summary,
            "on all 4 nodes: cuLaunchKernel p99 1.20ms..3.30ms (40.0x p50) - CPU contention within the job"
        );
        assert_eq!(
            f.example_node, "gpu-node-04",
            "the highest score stands as the example"
        );
        assert_eq!(f.recommendations, ["fix gpu-node-04"]);
        assert!(f.covers("gpu-node-02:tail-cuLaunchKernel@1795262400"));
        assert!(!f.covers("gpu-node-03:tail-cuStreamSynchronize@1795262400"));
    }

    #[test]
    fn another_cause_class_or_a_missing_node_makes_it_node_specific() {
        let mut chains: Vec<Chain> = nodes(3)
            .iter()
            .map(|n| chain(n, "tail-cuLaunchKernel", Severity::Medium, OWN, 1000.0, 1.0))
            .collect();
        chains[2].root_cause = "CPU contention from outside the job: ... mostly by cpu-hog (6600)".into();
        assert!(
            find(&chains, &nodes(3)).is_empty(),
            "the straggler's cause is its own"
        );
        chains[2].root_cause = OWN.into();
        assert_eq!(find(&chains, &nodes(3)).len(), 1);
        chains[2].p99_us = 3001.0;
        assert!(
            find(&chains, &nodes(3)).is_empty(),
            "over 3x the others' p99: worse on that node"
        );
        chains[2].p99_us = 3000.0;
        assert_eq!(find(&chains, &nodes(3)).len(), 1);
        assert!(
            find(&chains, &nodes(4)).is_empty(),
            "the fourth node has no such chain"
        );
        assert!(
            find(&chains[..1], &nodes(1)).is_empty(),
            "one node is not common mode"
        );
    }

    #[test]
    fn uneven_severities_are_said_and_the_worst_counts() {
        let mut chains: Vec<Chain> = nodes(2)
            .iter()
            .map(|n| chain(n, "tail-cuLaunchKernel", Severity::Low, OWN, 1000.0, 1.0))
            .collect();
        chains[1].severity = Severity::High;
        let f = &find(&chains, &nodes(2))[0];
        assert_eq!(f.severity, Severity::High);
        assert!(
            f.summary.ends_with("(HIGH on gpu-node-02, less elsewhere)"),
            "{}",
            f.summary
        );
        assert_eq!(rule_of(&chains[0]), "tail-cuLaunchKernel");
        assert_eq!(cause_class("Block I/O: 3 requests"), "Block I/O");
    }
}
