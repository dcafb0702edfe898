//! `ingero explain --nodes ...`: every agent's causal chains, tagged with
//! their node and sorted by severity, and the straggler verdict from the
//! nodes' figures side by side ([`ingero_fleet::straggler`]).
//!
//! Each agent runs the same engine as `ingero explain` on its own data
//! (`/api/v1/chains`, `/api/v1/ops`); times in the answer (a chain's
//! window and worst moment) are moved onto this machine's clock by each
//! agent's estimated offset, so chains from different nodes line up.
//! Chains are sorted by severity, the straggler's first within a severity.

use std::{process::ExitCode, time::Duration};

use ingero_fleet::{
    Fleet, FleetError, NodeAnswer,
    skew::format_offset,
    straggler::{self, NodeFigures, Stress, Verdict},
};
use serde_json::{Value, json};

use super::fleet::{FleetRun, check_window, finish, node_json};
use crate::{
    analysis::chain::{self, Chain, Severity},
    cli::ExplainArgs,
    error::CliError,
    readonly::QueryResult,
    table,
    timewin::format_instant,
    units::format_ns,
};

/// What one agent said.
#[derive(Debug)]
pub struct NodeView {
    pub chains: Vec<Chain>,
    pub figures: Vec<NodeFigures>,
}

fn parse(chains: &Value, ops: &Value, offset_ns: i64) -> Result<NodeView, FleetError> {
    let mut list: Vec<Chain> = serde_json::from_value(chains["chains"].clone())
        .map_err(|e| FleetError::Decode(format!("chains: {e}")))?;
    for c in &mut list {
        c.detected_at -= offset_ns;
        c.window.from -= offset_ns;
        c.window.to -= offset_ns;
        c.peak_at -= offset_ns;
    }
    Ok(NodeView {
        chains: list,
        figures: NodeFigures::from_ops(ops),
    })
}

/// Everything the fleet said, put together.
#[derive(Debug)]
pub struct FleetExplain {
    pub answers: Vec<NodeAnswer<NodeView>>,
    /// Every chain, in [`crate::analysis::sort_chains`] order, with its
    /// node's clock offset where it exceeds the threshold.
    pub chains: Vec<(Chain, Option<i64>)>,
    pub figures: Vec<NodeFigures>,
    pub verdict: Option<Verdict>,
}

/// Asks every agent for its chains and figures (`since`: `5m`, `all`, or
/// the agents' default) and compares the nodes.
pub async fn collect(fleet: &Fleet, skew_threshold: Duration, since: Option<String>) -> FleetExplain {
    let query = since.map_or(String::new(), |s| format!("?since={s}"));
    let raw = fleet
        .run(move |client| {
            let query = query.clone();
            async move {
                let (chains, ops) = (format!("/api/v1/chains{query}"), format!("/api/v1/ops{query}"));
                tokio::try_join!(client.get(&chains), client.get(&ops))
            }
        })
        .await;
    let answers: Vec<NodeAnswer<NodeView>> = raw
        .into_iter()
        .map(|a| {
            let offset = a.clock.map_or(0, |c| c.offset_ns);
            let result = a.result.and_then(|(chains, ops)| parse(&chains, &ops, offset));
            let node = a
                .node
                .or_else(|| result.as_ref().ok()?.figures.first().map(|f| f.node.clone()));
            NodeAnswer {
                address: a.address,
                node,
                result,
                clock: a.clock,
                elapsed_ms: a.elapsed_ms,
            }
        })
        .collect();
    let figures: Vec<NodeFigures> = answers
        .iter()
        .filter_map(|a| a.result.as_ref().ok())
        .flat_map(|v| v.figures.iter().cloned())
        .collect();
    let verdict = straggler::find(&figures);
    // A clock note only where the offset matters.
    let threshold = i64::try_from(skew_threshold.as_nanos()).unwrap_or(i64::MAX);
    let mut chains: Vec<(Chain, Option<i64>)> = answers
        .iter()
        .filter_map(|a| {
            Some((
                a.result.as_ref().ok()?,
                a.clock.map(|c| c.offset_ns).filter(|o| o.abs() > threshold),
            ))
        })
        .flat_map(|(v, offset)| v.chains.iter().cloned().map(move |c| (c, offset)))
        .collect();
    // The same order as a local explain: severity, then the straggler's.
    let mut ordered: Vec<Chain> = chains.iter().map(|(c, _)| c.clone()).collect();
    crate::analysis::sort_chains(&mut ordered, verdict.as_ref().map(|v| v.node.as_str()));
    let offsets: std::collections::HashMap<String, Option<i64>> =
        chains.drain(..).map(|(c, o)| (c.id, o)).collect();
    let chains = ordered
        .into_iter()
        .map(|c| {
            let offset = offsets.get(&c.id).copied().flatten();
            (c, offset)
        })
        .collect();
    FleetExplain {
        answers,
        chains,
        figures,
        verdict,
    }
}

pub fn run(args: &ExplainArgs, fleet: &FleetRun) -> Result<ExitCode, CliError> {
    let since = check_window(&args.window)?;
    let FleetExplain {
        answers,
        chains,
        figures,
        verdict,
    } = fleet.block_on(collect(&fleet.fleet, fleet.skew_threshold, since));
    fleet.warn(&answers, true);
    let code = finish(&answers)?;
    if args.json {
        let nodes: Vec<Value> = answers
            .iter()
            .map(|a| {
                let (n, figs) = a
                    .result
                    .as_ref()
                    .map_or((0, Vec::new()), |v| (v.chains.len(), v.figures.clone()));
                node_json(a, json!({ "chains": n, "figures": figs }))
            })
            .collect();
        let out = json!({
            "outcome": ingero_fleet::Outcome::of(&answers),
            "straggler": verdict,
            "chains": chains.iter().map(|(c, _)| c).collect::<Vec<_>>(),
            "nodes": nodes,
        });
        println!("{out}");
    } else {
        print!("{}", render(&answers, &chains, &figures, verdict.as_ref()));
    }
    Ok(code)
}

fn render(
    answers: &[NodeAnswer<NodeView>],
    chains: &[(Chain, Option<i64>)],
    figures: &[NodeFigures],
    verdict: Option<&Verdict>,
) -> String {
    let answered = answers.iter().filter(|a| a.result.is_ok()).count();
    let count = |s: Severity| chains.iter().filter(|(c, _)| c.severity == s).count();
    let nodes = figures.len().max(answered);
    let mut out = format!(
        "FLEET CAUSAL CHAINS - {} chain(s) from {nodes} node(s) ({} HIGH, {} MEDIUM, {} LOW); {answered} of {} agent(s) answered\n",
        chains.len(),
        count(Severity::High),
        count(Severity::Medium),
        count(Severity::Low),
        answers.len(),
    );
    match verdict {
        Some(v) => out.push_str(&format!("{}\n", v.headline())),
        None if figures.len() < 2 => {
            out.push_str("No straggler comparison: it needs at least two nodes with data.\n")
        }
        None => {
            let waits: Vec<f64> = figures.iter().map(NodeFigures::wait_share).collect();
            let (lo, hi) = waits
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), w| (l.min(*w), h.max(*w)));
            out.push_str(&format!(
                "No straggler: no node waits markedly less than its peers in synchronize calls (waiting {:.1}% .. {:.1}% of the time).\n",
                lo * 100.0,
                hi * 100.0
            ));
        }
    }
    out.push('\n');
    out.push_str(&figures_table(answers, figures, verdict));
    for (c, offset) in chains {
        out.push('\n');
        out.push_str(&chain::render(c));
        let clock = offset.map_or(String::new(), |o| {
            format!(
                " (on this machine's clock; the node's clock is {})",
                format_offset(o)
            )
        });
        out.push_str(&format!("  Worst at: {}{clock}\n", format_instant(c.peak_at)));
    }
    out
}

/// The per-node figures side by side, the straggler marked.
fn figures_table(
    answers: &[NodeAnswer<NodeView>],
    figures: &[NodeFigures],
    verdict: Option<&Verdict>,
) -> String {
    let cell = |s: String| Value::String(s);
    let columns = [
        "node",
        "rank",
        "events",
        "window",
        "waiting",
        "preempted",
        "io busy",
        "written/s",
        "alloc/s",
        "launch p50",
        "launch p99",
        "clock",
    ];
    let clock_of = |node: &str| {
        answers
            .iter()
            .find(|a| a.name() == node)
            .and_then(|a| a.clock)
            .map_or_else(
                || "-".to_owned(),
                |c| {
                    format!(
                        "{} ±{}",
                        format_offset(c.offset_ns),
                        format_offset(c.error_ns).trim_start_matches('+')
                    )
                },
            )
    };
    let rows = figures
        .iter()
        .map(|f| {
            let mark = if verdict.is_some_and(|v| v.node == f.node) {
                " <- straggler"
            } else {
                ""
            };
            let (p50, p99) = f
                .launch
                .as_ref()
                .map_or(("-".into(), "-".into()), |(_, p50, p99, _)| {
                    (format_ns(*p50 as f64), format_ns(*p99 as f64))
                });
            vec![
                cell(format!("{}{mark}", f.node)),
                f.rank.map_or(Value::Null, Value::from),
                Value::from(f.events),
                cell(format_ns(f.window_ns as f64)),
                cell(format!("{:.1}%", f.wait_share() * 100.0)),
                cell(Stress::Cpu.format(f.signal(Stress::Cpu))),
                cell(Stress::Io.format(f.signal(Stress::Io))),
                cell(Stress::Write.format(f.signal(Stress::Write))),
                cell(Stress::Memory.format(f.signal(Stress::Memory))),
                cell(p50),
                cell(p99),
                cell(clock_of(&f.node)),
            ]
        })
        .collect();
    let result = QueryResult {
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows,
        truncated: false,
        elapsed_ms: 0.0,
    };
    table::render_table(&result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_times_move_onto_our_clock() {
        let chains = json!({ "chains": [{
            "id": "n:x", "node": "n", "severity": "HIGH", "score": 1.0, "summary": "s", "root_cause": "r",
            "explanation": "e", "recommendations": [], "cuda_op": "cuLaunchKernel", "p99_us": 1.0, "p50_us": 1.0,
            "tail_ratio": 1.0, "timeline": [], "detected_at": 5_000, "window": { "from": 1_000, "to": 4_000 },
            "peak_at": 3_000
        }]});
        let view = parse(&chains, &json!({ "nodes": [] }), 1_000).expect("parses");
        let c = &view.chains[0];
        assert_eq!(
            (c.window.from, c.window.to, c.peak_at, c.detected_at),
            (0, 3_000, 2_000, 4_000)
        );
    }
}
