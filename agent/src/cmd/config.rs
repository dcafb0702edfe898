//! `ingero config`: the effective configuration, one line per setting with
//! the layer it comes from ([`crate::config::effective`]), or JSON.

use std::{path::Path, process::ExitCode};

use serde_json::Value;

use crate::{
    cli::ConfigArgs,
    config::{FileConfig, effective},
    error::CliError,
    readonly::QueryResult,
    table,
};

/// Runs `ingero config`: prints every setting's effective value, the layer
/// it comes from and its variable, as a table or JSON. `explicit` is the
/// `--config` path. Exit 0; 78 when the file cannot be read or parsed.
pub fn run(args: &ConfigArgs, explicit: Option<&Path>) -> Result<ExitCode, CliError> {
    let (file, path) = FileConfig::load_with_path(explicit)?;
    let entries = effective::entries(&file, path.as_deref());
    if args.json {
        let out = serde_json::json!({
            "file": path.as_ref().map(|p| p.display().to_string()),
            "settings": entries,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "configuration file: {}",
        path.map_or_else(
            || "none found (defaults apply)".to_owned(),
            |p| p.display().to_string()
        )
    );
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                Value::from(e.key),
                Value::from(e.value.clone()),
                Value::from(e.source.clone()),
                Value::from(e.env.unwrap_or_default()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render_table(&QueryResult {
            columns: ["key", "value", "from", "variable"].map(str::to_owned).to_vec(),
            rows,
            truncated: false,
            elapsed_ms: 0.0,
        })
    );
    println!("flags beat all of these; see each command's --help");
    Ok(ExitCode::SUCCESS)
}
