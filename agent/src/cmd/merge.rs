//! `ingero merge`: see [`crate::merge`].

use std::{io::IsTerminal, process::ExitCode};

use crate::{
    cli::MergeArgs,
    error::CliError,
    merge::{MergeOptions, merge},
    trace::live::group_digits,
};

/// Runs `ingero merge`: merges the input databases into `--output`, with
/// progress on stderr and a summary on stdout (text or JSON). Exit 0; 2
/// when an input is refused or unreadable; 73 when the output cannot be
/// written.
pub fn run(args: &MergeArgs) -> Result<ExitCode, CliError> {
    let opts = MergeOptions {
        inputs: args.inputs.clone(),
        output: args.output.clone(),
        force: args.force,
        force_node: args.force_node.clone(),
        allow_same_node: args.allow_same_node,
    };
    let tty = std::io::stderr().is_terminal();
    let report = merge(&opts, &mut |line| {
        if tty || !line.starts_with("  ") {
            crate::say!("{line}");
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        let nodes: Vec<&str> = report
            .inputs
            .iter()
            .flat_map(|i| i.nodes.iter().map(String::as_str))
            .collect();
        println!(
            "merged {} database(s) ({} node(s): {}) into {}: {} events, {} stacks, {} sessions, {} chains{}{}",
            report.inputs.len(),
            nodes.len(),
            nodes.join(", "),
            report.output.display(),
            group_digits(report.events),
            report.stacks,
            report.sessions,
            report.chains,
            if report.duplicates > 0 {
                format!(
                    " ({} duplicate events kept once)",
                    group_digits(report.duplicates)
                )
            } else {
                String::new()
            },
            if report.skipped > 0 {
                format!(
                    " ({} events with a non-integer timestamp left out)",
                    group_digits(report.skipped)
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
