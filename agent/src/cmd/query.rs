//! `ingero query`: one read-only SQL statement on a database, printed as an
//! aligned table, CSV or JSON. Reads go through [`crate::readonly`].

use std::process::ExitCode;

use crate::{
    cli::QueryArgs,
    config::FileConfig,
    error::CliError,
    readonly::{Limits, ReadOnlyDb},
    table,
};

pub fn run(args: &QueryArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
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
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&result).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else if args.csv {
        print!("{}", table::render_csv(&result));
    } else {
        print!("{}", table::render_table(&result));
        println!("{}", table::footer(&result, args.limit));
    }
    Ok(ExitCode::SUCCESS)
}
