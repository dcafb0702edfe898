//! `ingero export --nodes ... --format perfetto`: one trace of the whole
//! fleet, one process per node, each node's timestamps moved onto this
//! machine's clock by its estimated offset (shifted in the JSON format; in
//! the protobuf format each node keeps its clock and its clock snapshot
//! carries the offset).
//!
//! Each agent's rows are fetched in pages ([`ingero_fleet::pages`]) into a
//! scratch database beside the output, which the ordinary exporter then streams
//! out; the scratch file is removed afterwards, whatever happens. With
//! `--format parquet` the scratch database is written as an archive
//! instead (events, process names, snapshots, chains and the NCCL tables,
//! with each node's own timestamps; sessions are not fetched: their ids
//! are per node).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use ingero_fleet::pages::{self, Page};
use rusqlite::Connection;
use serde_json::Value;

use super::fleet::{FleetRun, check_window, finish};
use crate::{
    cli::ExportArgs,
    error::CliError,
    export::{TraceFormat, write},
    trace::live::group_digits,
};

/// Removes the scratch database (and its WAL files) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Inserts pages as they come; prints progress about once a second.
fn write_pages(conn: &Connection, rx: &mpsc::Receiver<Page>, nodes: usize) -> rusqlite::Result<u64> {
    let mut events = 0u64;
    let mut shown = Instant::now();
    for page in rx {
        let local: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{}')", page.table))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // Columns both sides know (the agent may run another version).
        let keep: Vec<usize> = (0..page.columns.len())
            .filter(|&i| local.contains(&page.columns[i]))
            .collect();
        let names: Vec<String> = keep.iter().map(|&i| format!("\"{}\"", page.columns[i])).collect();
        let sql = format!(
            "INSERT OR IGNORE INTO {} ({}) VALUES ({})",
            page.table,
            names.join(", "),
            vec!["?"; keep.len()].join(", ")
        );
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare(&sql)?;
            for row in &page.rows {
                stmt.execute(rusqlite::params_from_iter(
                    keep.iter().map(|&i| sql_value(&row[i])),
                ))?;
            }
        }
        tx.commit()?;
        if page.table == "events" {
            events += page.rows.len() as u64;
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            crate::say!(
                "ingero: fetched {} events from {nodes} node(s) so far",
                group_digits(events)
            );
            shown = Instant::now();
        }
    }
    Ok(events)
}

fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| V::Real(n.as_f64().unwrap_or(0.0)), V::Integer),
        Value::String(s) => V::Text(s.clone()),
        other => V::Text(other.to_string()),
    }
}

fn scratch_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "trace".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.ingero-fetch-{}.db", std::process::id()))
}

/// Runs `ingero export --nodes ...`: fetches every agent's rows into a
/// scratch database beside the output, writes one Perfetto trace on this
/// machine's clock, and prints a summary. Exit 0 all nodes answered, 3
/// some, 4 none (2 when the nodes refused the request); 1 when the output
/// cannot be written.
pub fn run(args: &ExportArgs, fleet: &FleetRun) -> Result<ExitCode, CliError> {
    let since_ns = check_window(&args.window)?
        .and_then(ingero_api::Since::duration)
        .map(|d| d.as_nanos());
    let scratch = Scratch(scratch_path(&args.output));
    let conn = crate::store::open_for_writing(&scratch.0)?;
    let (tx, rx) = mpsc::sync_channel::<Page>(4);
    let nodes = fleet.setup.fleet.len();
    let writer = std::thread::spawn(move || {
        let written = write_pages(&conn, &rx, nodes);
        (conn, written)
    });
    let answers = fleet.block_on(
        fleet
            .setup
            .fleet
            .run(move |client| pages::fetch_tables(client, since_ns, tx.clone())),
    );
    let (conn, written) = writer
        .join()
        .map_err(|_| CliError::Failed("the local writer failed".into()))?;
    let written = written.map_err(|e| {
        CliError::Failed(format!(
            "cannot store the fetched rows in {}: {e}",
            scratch.0.display()
        ))
    })?;
    fleet.warn(&answers, true);
    let code = finish(&answers)?;
    if matches!(args.format, crate::cli::ExportFormat::Parquet) {
        // The rows as each node recorded them (its own clock): an archive
        // keeps the database's values.
        let opts = crate::archive::ExportOptions {
            dir: args.output.clone(),
            window: None,
            forced_node: None,
        };
        let summary = crate::archive::export(&conn, &opts, &mut |line| crate::say!("ingero: {line}"))?;
        super::export::print_parquet_summary(&summary, args.json)?;
        return Ok(code);
    }
    let offsets = ingero_fleet::offsets(&answers);
    let out = std::fs::File::create(&args.output)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", args.output.display())))?;
    let format = TraceFormat::for_path(&args.output);
    let report = write(format, &conn, out, None, &offsets)
        .map_err(|e| CliError::Failed(format!("export to {} failed: {e}", args.output.display())))?;
    if args.json {
        let nodes: Vec<Value> = answers
            .iter()
            .map(|a| super::fleet::node_json(a, serde_json::json!({ "events": a.result.as_ref().ok() })))
            .collect();
        let mut v = serde_json::to_value(&report).map_err(|e| CliError::Failed(e.to_string()))?;
        v["nodes_detail"] = Value::Array(nodes);
        v["events"] = written.into();
        println!("{v}");
    } else {
        println!(
            "wrote {} ({}): {} events from {} node(s) on this machine's clock, {}; open it in https://ui.perfetto.dev",
            args.output.display(),
            super::export::describe(format),
            group_digits(written),
            report.nodes,
            super::export::counts(&report)
        );
    }
    Ok(code)
}
