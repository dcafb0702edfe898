//! `ingero query`: one read-only SQL statement on a database, printed as an
//! aligned table, CSV or JSON. Reads go through [`crate::readonly`].
//!
//! With `--nodes` (or `--fleet`) the statement goes to every agent in
//! parallel; the rows come back with a `node` column in front (unless the
//! statement selects `node` itself: never two of them), plus one
//! warning per node that did not answer. `--merge SQL` then runs a second
//! statement over the union of those rows (a table named `fleet`), so a
//! global count, percentile or top-N is computed over all the rows, not
//! concatenated from per-node answers.

use std::{process::ExitCode, time::Duration};

use ingero_api::QueryRequest;
use ingero_fleet::FleetRows;
use serde_json::{Value, json};

use crate::{
    cli::QueryArgs,
    config::{FileConfig, defaults},
    error::CliError,
    readonly::{Limits, QueryResult, ReadOnlyDb},
    table,
};

/// `--limit` and `--timeout`: flag, then `query:` in the file, then default.
fn limits(args: &QueryArgs, file: &FileConfig) -> Limits {
    Limits {
        timeout: args
            .timeout
            .or(file.query.timeout)
            .map_or(defaults::QUERY_TIMEOUT, |d| d.0),
        max_rows: args.limit.or(file.query.limit).unwrap_or(defaults::QUERY_LIMIT),
    }
}

/// Runs `ingero query`: one read-only statement on the local database's
/// window, printed as a table, CSV or JSON. Exit 0; 2 when the SQL is
/// refused or invalid, the database is missing or not an ingero database,
/// or `--merge` is given without nodes; 1 when the query passes its
/// deadline. With `--nodes`/`--fleet`: 0 all nodes answered, 3 some, 4 none.
pub fn run(args: &QueryArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    let limits = limits(args, file);
    if let Some(fleet) = super::fleet::connect(&args.fleet, file, args.db.as_deref())? {
        return run_fleet(args, limits, &fleet);
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
    if args.csv || args.json {
        return stream(args, &db, limits);
    }
    let result = db.query(&args.sql, limits)?;
    print_result(args, &result, &table::footer(&result, limits.max_rows), None)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `--csv` or `--json` rows as they are read, keeping none: the
/// memory used does not grow with the answer. JSON is one object on one
/// line: `{"columns": [...], "rows": [...], "truncated": b, "elapsed_ms": x}`.
/// A reader that goes away (`| head`) ends the query quietly.
fn stream(args: &QueryArgs, db: &ReadOnlyDb, limits: Limits) -> Result<ExitCode, CliError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut failed: Option<std::io::Error> = None;
    let mut first = true;
    let mut write = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, text: &[u8]| {
        out.write_all(text).map_err(|e| {
            failed = Some(e);
            crate::readonly::QueryError::Cancelled
        })
    };
    let json = args.json;
    let result = {
        let out = std::cell::RefCell::new(&mut out);
        let write = std::cell::RefCell::new(&mut write);
        db.query_each(
            &args.sql,
            limits,
            |columns| {
                let text = if json {
                    format!("{{\"columns\":{},\"rows\":[", Value::from(columns.to_vec()))
                } else {
                    table::csv_line(
                        &columns
                            .iter()
                            .map(|c| Value::from(c.as_str()))
                            .collect::<Vec<_>>(),
                    )
                };
                (write.borrow_mut())(&mut out.borrow_mut(), text.as_bytes())
            },
            |row| {
                let text = if json {
                    let sep = if first { "" } else { "," };
                    first = false;
                    format!("{sep}{}", Value::from(row))
                } else {
                    table::csv_line(&row)
                };
                (write.borrow_mut())(&mut out.borrow_mut(), text.as_bytes())
            },
        )
    };
    let finished = match result {
        Ok((truncated, elapsed_ms)) if json => out
            .write_all(
                format!(
                    "],\"truncated\":{truncated},\"elapsed_ms\":{}}}\n",
                    json!(elapsed_ms)
                )
                .as_bytes(),
            )
            .and_then(|()| out.flush()),
        Ok(_) => out.flush(),
        Err(e) => match failed.take() {
            Some(io) => Err(io),
            None => return Err(e.into()),
        },
    };
    match finished.or_else(|e| failed.take().map_or(Err(e), Err)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::Failed(format!(
            "cannot write the output: {e}; check the disk or the pipe it goes to"
        ))),
    }
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

fn run_fleet(args: &QueryArgs, limits: Limits, fleet: &super::fleet::FleetRun) -> Result<ExitCode, CliError> {
    // The agent's deadline ends before ours, so its answer (or its "ran
    // past the deadline" message) arrives rather than a bare timeout.
    let agent_deadline = limits
        .timeout
        .min(
            fleet
                .setup
                .fleet
                .options()
                .timeout
                .saturating_sub(Duration::from_millis(500)),
        )
        .max(Duration::from_millis(100));
    let request = QueryRequest {
        sql: args.sql.clone(),
        limit: Some(limits.max_rows),
        timeout_ms: Some(u64::try_from(agent_deadline.as_millis()).unwrap_or(u64::MAX)),
        since: super::fleet::check_window(&args.window)?,
    };
    let rows = fleet.block_on(fleet.setup.fleet.query(request));
    fleet.warn(&rows.answers, false);
    for (node, n) in &rows.cut {
        crate::say!(
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
        answers,
        columns,
        rows,
        truncated,
        elapsed_ms,
        ..
    } = rows;
    let combined = QueryResult {
        columns,
        rows,
        truncated,
        elapsed_ms,
    };
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
            let merged = db.query(merge_sql, limits)?;
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
