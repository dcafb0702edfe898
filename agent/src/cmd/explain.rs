//! `ingero explain`: causal chains of a database (all its nodes), printed as
//! `[SEVERITY] [node] summary` blocks with `Root cause:` and `Fix:` lines
//! (after a `STRAGGLER` line when a merged database shows one; the
//! node-specific chains first, then each condition common to all nodes
//! once, unless `--all`),
//! or as JSON, and recorded in the database's `causal_chains` table. Chains
//! another tracer recorded there live (the original ingero's engine) are
//! printed after this engine's, marked as such (`recorded` in JSON); a
//! database whose stored events are a sample says so in a `note:` line.
//! With `--nodes`, see [`super::fleet_explain`].

use std::process::ExitCode;

use rusqlite::{Connection, OpenFlags};

use crate::{
    analysis::{self, Comparison, NodeReport, chain},
    cli::{ExplainArgs, WindowArgs},
    clock,
    config::FileConfig,
    error::CliError,
    text::sanitize,
    timewin::format_instant,
    trace::live::group_digits,
    units::format_span,
};

fn open(path: &std::path::Path) -> Result<(Connection, bool), CliError> {
    if !path.is_file() {
        return Err(CliError::BadInput(format!(
            "{}: no such database",
            path.display()
        )));
    }
    let err = |e: rusqlite::Error| CliError::BadInput(format!("cannot open {}: {e}", path.display()));
    match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(conn) => Ok((conn, true)),
        Err(_) => Ok((crate::store::open_read(path).map_err(err)?, false)),
    }
}

/// The window the flags asked for, in words (`last 5m`, `from .. to`),
/// when one was asked for.
fn asked(window: &WindowArgs) -> Option<String> {
    match (&window.since, &window.from, &window.to) {
        (Some(d), _, _) => Some(format!("last {d}")),
        (None, None, None) => None,
        (None, from, to) => Some(format!(
            "from {} to {}",
            from.as_deref().unwrap_or("the first event"),
            to.as_deref().unwrap_or("the last event")
        )),
    }
}

/// One `note:` line per node whose stored events are a sample of the
/// calls `event_aggregates` counts, naming the sampled operations.
fn sample_notes(reports: &[NodeReport], names: &std::collections::HashMap<(u8, u8), String>) -> String {
    let mut out = String::new();
    for r in reports.iter().filter(|r| !r.sampled.is_empty()) {
        let (stored, counted) = r
            .sampled
            .iter()
            .fold((0, 0), |(s, c), x| (s + x.stored, c + x.counted));
        let ops: Vec<String> = r
            .sampled
            .iter()
            .map(|x| {
                format!(
                    "{} {} of {}",
                    analysis::dataset::op_name(names, x.source, x.op),
                    group_digits(x.stored),
                    group_digits(x.counted)
                )
            })
            .collect();
        let node = if r.node.is_empty() {
            String::new()
        } else {
            format!("{}: ", sanitize(&r.node, 200))
        };
        out.push_str(&format!(
            "note: {node}the stored events are a sample: event_aggregates counts {} calls of {} operation(s) where events holds {} ({}); their counts and time in calls come from the aggregates, their percentiles from the sample, and no throughput drop is judged on them\n",
            group_digits(counted),
            r.sampled.len(),
            group_digits(stored),
            sanitize(&ops.join(", "), 2000)
        ));
    }
    out
}

/// The chains as text: a header line, then one block per chain, then the
/// chains another tracer recorded live (`recorded`). `asked`: the window
/// the flags asked for, in words; the span printed is the one of the data
/// actually analysed. `notes`: lines printed after the verdict.
#[must_use]
fn render(
    reports: &[NodeReport],
    comparison: &Comparison,
    recorded: &[chain::Chain],
    asked: Option<&str>,
    all: bool,
    verdict: &str,
    notes: &str,
) -> String {
    let chains = &comparison.chains;
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let nodes = reports.len();
    let from = reports.iter().map(|r| r.window.from).min().unwrap_or(0);
    let to = reports.iter().map(|r| r.window.to).max().unwrap_or(0);
    let span = format!(
        "{} events from {nodes} node{} over {} of recorded data ({} .. {}){}",
        group_digits(events),
        if nodes == 1 { "" } else { "s" },
        format_span(to - from),
        format_instant(from),
        format_instant(to),
        asked.map_or(String::new(), |a| format!("; {} asked", sanitize(a, 200)))
    );
    let straggler = verdict;
    if chains.is_empty() {
        let lead = if recorded.is_empty() {
            "No causal chains"
        } else {
            "No causal chains found by this engine's rules"
        };
        return format!(
            "{lead}: {span}.\n{straggler}{notes}No CUDA operation had a tail (p99 >= {}x p50), a throughput drop with a concurrent cause or a starved input pipeline.\n{}",
            analysis::rules::TAIL_RATIO,
            chain::render_recorded_section(recorded)
        );
    }
    let count = |s: chain::Severity| chains.iter().filter(|c| c.severity == s).count();
    let mut out = format!(
        "CAUSAL CHAINS - {} chain(s) from {nodes} node{} ({} HIGH, {} MEDIUM, {} LOW): {span}\n",
        chains.len(),
        if nodes == 1 { "" } else { "s" },
        count(chain::Severity::High),
        count(chain::Severity::Medium),
        count(chain::Severity::Low),
    );
    out.push_str(straggler);
    out.push_str(notes);
    out.push_str(&chain::render_compared(comparison, all, &chain::render));
    out.push_str(&chain::render_recorded_section(recorded));
    out
}

/// Runs `ingero explain`: prints the causal chains of the database's window
/// (text or JSON) and records them in `causal_chains` unless `--no-save` or
/// the file is read-only. Exit 0; 2 when the database is missing or not an
/// ingero database or the window is invalid; 1 when the analysis fails.
/// With `--nodes`/`--fleet` it hands over to the fleet form. With
/// `--otlp-endpoint` the verdict and the chains also go to that collector
/// as log records (after the output, within the export deadline).
pub fn run(args: &ExplainArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    let otlp = crate::otlp::options(&args.otlp, None, file, &crate::config::resolve_node(None, file)?)?;
    if let Some(fleet) = super::fleet::connect(&args.fleet, file, args.db.as_deref())? {
        return super::fleet_explain::run(args, &fleet, otlp.as_ref());
    }
    let path = super::database(args.db.as_deref(), file)?;
    let (conn, writable) = open(&path)?;
    if !crate::store::schema::has_column(&conn, "events", "id")
        .map_err(|e| CliError::BadInput(format!("{}: {e}", path.display())))?
    {
        return Err(CliError::BadInput(format!(
            "{} has no events table: is it an ingero database?",
            path.display()
        )));
    }
    if let Some(w) = crate::analysis::dataset::odd_timestamps(&conn)
        .ok()
        .and_then(|n| crate::analysis::dataset::odd_warning(&path, n))
    {
        crate::say!("{w}");
    }
    let window = super::window(&conn, &args.window)?;
    let reports = analysis::explain(&conn, window, clock::unix_ns())
        .map_err(|e| CliError::Failed(format!("cannot analyse {}: {e}", path.display())))?;
    let hang_after = crate::config::fleet::hang_after(args.hang_after, file);
    let nccl = analysis::database_nccl(
        &conn,
        window,
        i64::try_from(hang_after.as_nanos()).unwrap_or(i64::MAX),
    )
    .map_err(|e| CliError::Failed(format!("cannot read the NCCL tables of {}: {e}", path.display())))?;
    let comparison = analysis::compare_reports(&reports, nccl.as_ref());
    // Chains the tracer recorded live, read before this run stores its own.
    let recorded = chain::load_recorded(
        &conn,
        window.map_or(i64::MIN, |w| w.from),
        window.map_or(i64::MAX, |w| w.to),
    )
    .unwrap_or_else(|e| {
        crate::say!(
            "ingero: warning: cannot read the chains recorded in {}: {e}",
            path.display()
        );
        Vec::new()
    });
    let verdict = super::verdict::verdict_text(&comparison);
    let chains = &comparison.chains;
    if !args.no_save && !chains.is_empty() {
        let saved = writable
            && crate::store::schema::ensure_chains_table(&conn).is_ok()
            && chain::store(&conn, chains).is_ok();
        if !saved {
            crate::say!(
                "ingero: note: {} is read-only; the chains were not recorded in it",
                path.display()
            );
        }
    }
    if args.json {
        let out = serde_json::json!({
            "chains": chains,
            "recorded": recorded,
            "common": comparison.common,
            "straggler": comparison.verdict,
            "collectives": comparison.collectives,
            "straggler_node": comparison.straggler_node(),
            "straggler_causes": comparison.straggler_causes(),
            "hung": verdict.hung,
            "nodes": reports,
        });
        println!(
            "{}",
            serde_json::to_string(&out).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        print!(
            "{}",
            render(
                &reports,
                &comparison,
                &recorded,
                asked(&args.window).as_deref(),
                args.all,
                &verdict.text,
                &sample_notes(&reports, &analysis::dataset::op_names(&conn).unwrap_or_default()),
            )
        );
    }
    if let Some(o) = &otlp {
        crate::otlp::send_records(
            o,
            crate::otlp::logs::from_comparison(&comparison, clock::unix_ns()),
        );
    }
    Ok(if verdict.hung {
        ExitCode::from(super::verdict::EXIT_HANG)
    } else {
        ExitCode::SUCCESS
    })
}
