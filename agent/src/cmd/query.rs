//! `ingero query`: one read-only SQL statement on a database, printed as an
//! aligned table, CSV or JSON. Reads go through [`crate::readonly`].
//!
//! With `--nodes` (or `--fleet`) the statement goes to every agent in
//! parallel; the rows come back with a `node` column in front, plus one
//! warning per node that did not answer. `--merge SQL` then runs a second
//! statement over the union of those rows (a table named `fleet`), so a
//! global count, percentile or top-N is computed over all the rows, not
//! concatenated from per-node answers.

use std::{process::ExitCode, time::Duration};

use ingero_fleet::{Fleet, NodeAnswer, QueryAnswer, QueryRequest};
use serde_json::{Value, json};

use crate::{
    cli::QueryArgs,
    config::FileConfig,
    error::CliError,
    readonly::{Limits, QueryResult, ReadOnlyDb},
    table,
};

pub fn run(args: &QueryArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    if let Some(fleet) = super::fleet::connect(&args.fleet, file)? {
        return run_fleet(args, &fleet);
    }
    if args.merge.is_some() {
        return Err(CliError::BadInput(
            "--merge combines the answers of several nodes: use it with --nodes or --fleet".into(),
        ));
    }
    let path = super::database(args.db.as_deref(), file)?;
    let probe = ReadOnlyDb::open(&path, None)?;
    let window = super::window(probe.connection(), &args.window)?;
    drop(probe);
    let db = ReadOnlyDb::open(&path, window.map(|w| (w.from, w.to)))?;
    let limits = Limits {
        timeout: args.timeout.0,
        max_rows: args.limit,
    };
    let result = db.query(&args.sql, limits)?;
    print_result(args, &result, &table::footer(&result, args.limit), None)?;
    Ok(ExitCode::SUCCESS)
}

fn print_result(
    args: &QueryArgs,
    result: &QueryResult,
    footer: &str,
    extra: Option<Value>,
) -> Result<(), CliError> {
    if args.json {
        let mut v = serde_json::to_value(result).map_err(|e| CliError::Failed(e.to_string()))?;
        if let (Value::Object(base), Some(Value::Object(more))) = (&mut v, extra) {
            base.extend(more);
        }
        println!("{v}");
    } else if args.csv {
        print!("{}", table::render_csv(result));
    } else {
        print!("{}", table::render_table(result));
        println!("{footer}");
    }
    Ok(())
}

fn run_fleet(args: &QueryArgs, fleet: &super::fleet::FleetRun) -> Result<ExitCode, CliError> {
    // The agent's deadline ends before ours, so its answer (or its "ran
    // past the deadline" message) arrives rather than a bare timeout.
    let agent_deadline = args
        .timeout
        .0
        .min(
            fleet
                .fleet
                .options()
                .timeout
                .saturating_sub(Duration::from_millis(500)),
        )
        .max(Duration::from_millis(100));
    let request = QueryRequest {
        sql: args.sql.clone(),
        limit: Some(args.limit),
        timeout_ms: Some(u64::try_from(agent_deadline.as_millis()).unwrap_or(u64::MAX)),
        since: super::fleet::check_window(&args.window)?,
    };
    let rows = fleet.block_on(gather(&fleet.fleet, request));
    fleet.warn(&rows.answers, false);
    for (node, n) in &rows.cut {
        eprintln!(
            "ingero: warning: {node}: only the first {n} rows (raise --limit){}",
            if args.merge.is_some() {
                "; --merge sees only those"
            } else {
                ""
            }
        );
    }
    let code = super::fleet::finish(&rows.answers)?;
    let FleetRows {
        answers, combined, ..
    } = rows;
    let answered = answers.iter().filter(|a| a.result.is_ok()).count();
    let nodes_json: Vec<Value> = answers
        .iter()
        .map(|a| {
            let (rows, truncated) = a
                .result
                .as_ref()
                .map_or((0, false), |q| (q.rows.len(), q.truncated));
            super::fleet::node_json(a, json!({ "rows": rows, "truncated": truncated }))
        })
        .collect();
    let of_nodes = format!(
        "from {answered} node{}{}",
        if answered == 1 { "" } else { "s" },
        if answered < answers.len() {
            format!(
                " ({} of {} did not answer)",
                answers.len() - answered,
                answers.len()
            )
        } else {
            String::new()
        }
    );
    match &args.merge {
        None => {
            let n = combined.rows.len();
            let footer = format!("{n} row{} {of_nodes}", if n == 1 { "" } else { "s" });
            print_result(args, &combined, &footer, Some(json!({ "nodes": nodes_json })))?;
        }
        Some(merge_sql) => {
            let db = ReadOnlyDb::from_rows("fleet", &combined.columns, &combined.rows)?;
            let merged = db.query(
                merge_sql,
                Limits {
                    timeout: args.timeout.0,
                    max_rows: args.limit,
                },
            )?;
            let n = merged.rows.len();
            let footer = format!(
                "{n} row{} merged over {} row{} {of_nodes}",
                if n == 1 { "" } else { "s" },
                combined.rows.len(),
                if combined.rows.len() == 1 { "" } else { "s" }
            );
            print_result(
                args,
                &merged,
                &footer,
                Some(
                    json!({ "nodes": nodes_json, "fleet_rows": combined.rows.len(), "fleet_truncated": combined.truncated }),
                ),
            )?;
        }
    }
    Ok(code)
}

/// A fan-out query's answers and their rows, with a `node` column first.
#[derive(Debug)]
pub struct FleetRows {
    pub answers: Vec<NodeAnswer<QueryAnswer>>,
    pub combined: QueryResult,
    /// Nodes whose answer was cut at the row limit, and how many rows came.
    pub cut: Vec<(String, usize)>,
}

/// Sends `request` to every agent and puts the rows together. The first
/// answer fixes the columns; a node whose columns differ (another schema
/// version) becomes a failed node, not mixed in.
pub async fn gather(fleet: &Fleet, request: QueryRequest) -> FleetRows {
    let started = std::time::Instant::now();
    let mut answers = fleet
        .run(move |client| {
            let request = request.clone();
            async move { client.query_with(&request).await }
        })
        .await;
    for a in &mut answers {
        if let Ok(q) = &a.result
            && a.node.is_none()
            && !q.node.is_empty()
        {
            a.node = Some(q.node.clone());
        }
    }
    let columns: Option<Vec<String>> = answers
        .iter()
        .find_map(|a| a.result.as_ref().ok().map(|q| q.columns.clone()));
    for a in &mut answers {
        if let Ok(q) = &a.result
            && Some(&q.columns) != columns.as_ref()
        {
            a.result = Err(ingero_fleet::FleetError::Decode(format!(
                "its columns {:?} differ from the other nodes' {:?}",
                q.columns,
                columns.clone().unwrap_or_default()
            )));
        }
    }
    let mut combined = QueryResult {
        columns: std::iter::once("node".to_owned())
            .chain(columns.unwrap_or_default())
            .collect(),
        rows: Vec::new(),
        truncated: false,
        elapsed_ms: 0.0,
    };
    let mut cut = Vec::new();
    for a in &answers {
        if let Ok(QueryAnswer { rows, truncated, .. }) = &a.result {
            let node = Value::String(a.name().to_owned());
            combined.rows.extend(
                rows.iter()
                    .map(|r| std::iter::once(node.clone()).chain(r.iter().cloned()).collect()),
            );
            if *truncated {
                combined.truncated = true;
                cut.push((a.name().to_owned(), rows.len()));
            }
        }
    }
    combined.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    FleetRows {
        answers,
        combined,
        cut,
    }
}
