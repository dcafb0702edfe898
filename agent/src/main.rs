//! The `ingero` command. All behaviour lives in the library; this only
//! parses, runs, and turns an error into its sentence and exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ingero::cli::Cli::parse();
    ingero::logging::init(cli.verbose);
    match ingero::run(cli) {
        Ok(code) => code,
        Err(e) => {
            ingero::say!("ingero: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
