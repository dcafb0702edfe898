//! `ingero export`: see [`crate::export`]; with `--nodes`, see
//! [`super::fleet_export`].

use std::process::ExitCode;

use crate::{
    cli::ExportArgs,
    config::FileConfig,
    error::CliError,
    export::{ExportReport, TraceFormat, write},
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
