//! `ingero explain --nodes ...`: every agent's causal chains, tagged with
//! their node, and the straggler verdict from the nodes' figures side by
//! side (the node-specific chains first, then each condition common to all
//! nodes once, unless `--all`). The fleet client fetches each agent's chains and figures (chain
//! times already on this machine's clock, [`ingero_fleet::explain`]); the
//! engine compares the nodes and orders the chains
//! ([`crate::analysis::compare`], the same function a merged database
//! goes through); this module only prints.

use std::{collections::HashMap, process::ExitCode};

use ingero_fleet::{NodeAnswer, NodeExplain, Outcome, explain, skew::format_offset};
use serde_json::{Value, json};

use super::fleet::{FleetRun, check_window, finish, node_json};
use crate::{
    analysis::{
        self, Comparison,
        chain::{self, Severity},
        straggler::{NodeFigures, Stress},
    },
    cli::ExplainArgs,
    error::CliError,
    readonly::QueryResult,
    table,
    timewin::format_instant,
    units::format_ns,
};

/// Runs `ingero explain --nodes ...`: asks every agent for its chains and
/// figures, prints them by node with the straggler verdict (text or JSON).
/// Exit 0 all nodes answered, 3 some, 4 none (2 when the nodes refused the
/// request, or `--from`/`--to` was given).
/// With `otlp`, the verdict and the chains are also sent as log records.
pub fn run(
    args: &ExplainArgs,
    fleet: &FleetRun,
    otlp: Option<&crate::otlp::OtlpOptions>,
) -> Result<ExitCode, CliError> {
    let since = check_window(&args.window)?;
    let answers = fleet.block_on(fleet.setup.fleet.explain(since));
    let nccl =
        crate::fleet_nccl::nccl_input(&answers, args.hang_after.map_or(fleet.setup.hang_after, |d| d.0));
    let comparison = analysis::compare(
        &explain::node_ops(&answers),
        explain::chains(&answers),
        nccl.as_ref(),
    );
    fleet.warn(&answers, true);
    for a in &answers {
        if let Ok(NodeExplain {
            collectives: Err(e), ..
        }) = &a.result
        {
            crate::say!("ingero: warning: {}: no collectives ({e})", a.label());
        }
    }
    let verdict = super::verdict::verdict_text(&comparison);
    let code = if verdict.hung {
        ExitCode::from(super::verdict::EXIT_HANG)
    } else {
        finish(&answers)?
    };
    if args.json {
        let nodes: Vec<Value> = answers
            .iter()
            .map(|a| {
                let (n, figs) = a.result.as_ref().map_or((0, Vec::new()), |v| {
                    (
                        v.chains.chains.len(),
                        v.ops.nodes.iter().map(NodeFigures::from_node).collect(),
                    )
                });
                node_json(a, json!({ "chains": n, "figures": figs }))
            })
            .collect();
        let out = json!({
            "outcome": Outcome::of(&answers),
            "straggler": comparison.verdict,
            "collectives": comparison.collectives,
            "straggler_node": comparison.straggler_node(),
            "straggler_causes": comparison.straggler_causes(),
            "hung": verdict.hung,
            "chains": comparison.chains,
            "common": comparison.common,
            "nodes": nodes,
        });
        println!("{out}");
    } else {
        let threshold = i64::try_from(fleet.setup.skew_threshold.as_nanos()).unwrap_or(i64::MAX);
        // A clock note only where the offset matters.
        let offsets: HashMap<String, i64> = ingero_fleet::offsets(&answers)
            .into_iter()
            .filter(|(_, o)| o.abs() > threshold)
            .collect();
        print!(
            "{}",
            render(&answers, &comparison, &offsets, args.all, &verdict.text)
        );
    }
    if let Some(o) = otlp {
        crate::otlp::send_records(
            o,
            crate::otlp::logs::from_comparison(&comparison, crate::clock::unix_ns()),
        );
    }
    Ok(code)
}

fn render(
    answers: &[NodeAnswer<NodeExplain>],
    comparison: &Comparison,
    offsets: &HashMap<String, i64>,
    all: bool,
    verdict_text: &str,
) -> String {
    let (chains, figures, verdict) = (
        &comparison.chains,
        &comparison.figures,
        comparison.verdict.as_ref(),
    );
    let answered = answers.iter().filter(|a| a.result.is_ok()).count();
    let count = |s: Severity| chains.iter().filter(|c| c.severity == s).count();
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
        _ if !verdict_text.is_empty() => out.push_str(verdict_text),
        Some(v) => out.push_str(&format!("{}\n", crate::text::sanitize(&v.headline(), 4000))),
        None if figures.len() < 2 => {
            out.push_str("No straggler comparison: it needs at least two nodes with data.\n");
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
    out.push_str(&chain::render_compared(comparison, all, &|c| {
        let clock = offsets.get(&c.node).map_or(String::new(), |o| {
            format!(
                " (on this machine's clock; the node's clock is {})",
                format_offset(*o)
            )
        });
        format!(
            "{}  Worst at: {}{clock}\n",
            chain::render(c),
            format_instant(c.peak_at)
        )
    }));
    out
}

/// The per-node figures side by side, the straggler marked.
fn figures_table(
    answers: &[NodeAnswer<NodeExplain>],
    figures: &[NodeFigures],
    verdict: Option<&crate::analysis::straggler::Verdict>,
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
        "input wait",
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
                cell(Stress::Input.format(f.signal(Stress::Input))),
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
