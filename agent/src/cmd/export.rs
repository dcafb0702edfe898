//! `ingero export`: see [`crate::export`] (Perfetto) and
//! [`crate::archive::export()`] (Parquet); with `--nodes`, see
//! [`super::fleet_export`].

use std::process::ExitCode;

use crate::{
    archive::{ExportOptions, ExportSummary},
    cli::{ExportArgs, ExportFormat},
    config::FileConfig,
    error::CliError,
    export::{ExportReport, TraceFormat, write},
    trace::live::group_digits,
};

/// Runs `ingero export`: writes the database's window as a Perfetto trace
/// to `--output` (native protobuf for `.pftrace`, Chrome JSON otherwise;
/// see [`TraceFormat::for_path`]) and prints a summary (text or JSON). Exit 0; 2 when the
/// database is missing or not an ingero database or the window is invalid;
/// 1 when the output cannot be written. With `--nodes`/`--fleet` it hands
/// over to the fleet form.
pub fn run(args: &ExportArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    if let Some(fleet) = super::fleet::connect(&args.fleet, file, args.db.as_deref())? {
        return super::fleet_export::run(args, &fleet);
    }
    let path = super::database(args.db.as_deref(), file)?;
    if !path.is_file() {
        return Err(CliError::BadInput(format!(
            "{}: no such database",
            path.display()
        )));
    }
    let conn = crate::store::open_read(&path)
        .map_err(|e| CliError::BadInput(format!("cannot open {}: {e}", path.display())))?;
    match crate::store::schema::has_column(&conn, "events", "id") {
        Ok(true) => {}
        Ok(false) => {
            return Err(CliError::BadInput(format!(
                "{} has no events table: is it an ingero database?",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CliError::BadInput(format!(
                "cannot read {} ({e}): check that it is an intact SQLite database no other program holds locked",
                path.display()
            )));
        }
    }
    if let Some(w) = crate::analysis::dataset::odd_timestamps(&conn)
        .ok()
        .and_then(|n| crate::analysis::dataset::odd_warning(&path, n))
    {
        crate::say!("{w}");
    }
    let window = super::window(&conn, &args.window)?;
    if matches!(args.format, ExportFormat::Parquet) {
        return parquet(&conn, args, window);
    }
    if args.force_node.is_some() {
        return Err(CliError::BadInput(
            "--force-node goes with --format parquet (a Perfetto trace shows such rows under an unnamed node)".into(),
        ));
    }
    let out = std::fs::File::create(&args.output)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", args.output.display())))?;
    let format = TraceFormat::for_path(&args.output);
    let report = write(format, &conn, out, window, &std::collections::HashMap::new())
        .map_err(|e| CliError::Failed(format!("export to {} failed: {e}", args.output.display())))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        println!(
            "wrote {} ({}): {} node(s), {}; open it in https://ui.perfetto.dev",
            args.output.display(),
            describe(format),
            report.nodes,
            counts(&report)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The format's name in the summary line.
pub(super) fn describe(format: TraceFormat) -> &'static str {
    match format {
        TraceFormat::Json => "Chrome JSON",
        TraceFormat::Protobuf => "Perfetto protobuf",
    }
}

/// The summary's counts: threads, slices, collectives, markers, counters.
pub(super) fn counts(r: &ExportReport) -> String {
    format!(
        "{} thread(s), {} slices, {} NCCL collective calls, {} markers, {} counter samples",
        r.threads, r.slices, r.collectives, r.markers, r.counters
    )
}

/// `--format parquet`: the database as an archive directory (see
/// [`crate::archive::export()`]), with progress on stderr.
fn parquet(
    conn: &rusqlite::Connection,
    args: &ExportArgs,
    window: Option<crate::timewin::Window>,
) -> Result<ExitCode, CliError> {
    if let Some(node) = &args.force_node {
        crate::config::validate_node(node)?;
    }
    let opts = ExportOptions {
        dir: args.output.clone(),
        window,
        forced_node: args.force_node.clone(),
    };
    let summary = crate::archive::export(conn, &opts, &mut |line| crate::say!("ingero: {line}"))?;
    print_parquet_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The closing summary of a Parquet export: one line (and a warning for
/// rows left out), or the summary as JSON.
pub(crate) fn print_parquet_summary(summary: &ExportSummary, json: bool) -> Result<(), CliError> {
    if summary.skipped > 0 {
        crate::say!(
            "ingero: warning: {} row(s) were left out because a value does not fit its column \
             (text or a real in an integer column, a NULL where the schema has none, a pid past 32 bits)",
            group_digits(summary.skipped)
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(summary).map_err(|e| CliError::Failed(e.to_string()))?
        );
        return Ok(());
    }
    let rows = |t: &str| summary.tables.get(t).map_or(0, |t| t.rows);
    println!(
        "wrote {}: {} events and {} NCCL calls of {} node(s) in {} Parquet file(s), {}, in {:.1}s; \
         query it with read_parquet('{}/table=events/**/*.parquet', hive_partitioning = true)",
        summary.dir.display(),
        group_digits(rows("events")),
        group_digits(rows("nccl_collectives")),
        summary.nodes.len(),
        summary.files,
        format_args!("{:.1} MiB", summary.bytes as f64 / 1_048_576.0),
        summary.seconds,
        summary.dir.display(),
    );
    Ok(())
}
