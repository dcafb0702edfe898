//! `cargo xtask test`: builds everything and runs every test of the
//! workspace. Tests that need root (real eBPF) skip with a printed reason
//! when not root; in CI (root) they all run, one at a time. The output is cargo's, passed
//! through as it comes, followed by one closing line with the totals of
//! every test binary (`tests: N passed, N failed, N skipped`, skipped being
//! cargo's ignored), so the last
//! line says what ran rather than the last crate's doc-tests.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::exec::{cargo, render, root};

/// Which tests to run.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Only tests whose name contains this
    filter: Option<String>,
}

/// Totals of `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a `test result: ok. 5 passed; 0 failed; 1 ignored; ...` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs the tests; fails if cargo fails.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--workspace", "--exclude", "agent-ebpf"]);
    // One test at a time: the tracer tests measure timings on a 2-core
    // machine, and any test beside them (a flood of requests, a merge)
    // is noise in what they measure.
    cmd.args(["--", "--test-threads=1"]);
    if let Some(f) = &opts.filter {
        cmd.arg(f);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", render(&cmd)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("`{}` failed ({status})", render(&cmd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_add_up() {
        let mut t = Totals::default();
        t.add(
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        t.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 8,
                failed: 2,
                ignored: 1
            }
        );
    }
}
