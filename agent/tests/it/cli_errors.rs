//! Mistakes a user makes end with one sentence, the documented exit code,
//! and no panic or backtrace.

use crate::common::{INGERO, ingero, root_or_skip};

/// Asserts a clean failure: `code`, a message mentioning `needle`, one line.
fn assert_clean_failure((code, _out, err): (i32, String, String), expected: i32, needle: &str) {
    assert_eq!(code, expected, "exit code; stderr: {err}");
    assert!(err.contains(needle), "message should mention '{needle}': {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "no panic: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

#[test]
fn not_root_is_refused_with_advice() -> anyhow::Result<()> {
    if !root_or_skip("not_root_is_refused (needs root to become nobody)") {
        return Ok(());
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            INGERO,
            "trace",
            "--db",
            "/tmp/ingero-nobody.db",
        ])
        .output()?;
    let result = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_clean_failure(result, 77, "sudo");
    Ok(())
}

#[test]
fn a_pid_that_does_not_exist_is_bad_input() -> anyhow::Result<()> {
    if !root_or_skip("a_pid_that_does_not_exist") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("x.db").display().to_string();
    assert_clean_failure(
        ingero(&["trace", "--db", &db, "--pid", "2147483000"])?,
        2,
        "no process with pid 2147483000",
    );
    Ok(())
}

#[test]
fn a_library_path_that_does_not_exist_is_bad_input() -> anyhow::Result<()> {
    if !root_or_skip("a_library_path_that_does_not_exist") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("x.db").display().to_string();
    assert_clean_failure(
        ingero(&["trace", "--db", &db, "--cuda-lib", "/opt/nowhere/libcuda.so.1"])?,
        2,
        "/opt/nowhere/libcuda.so.1",
    );
    // A file that exists but is not a CUDA library.
    assert_clean_failure(
        ingero(&["trace", "--db", &db, "--cudart-lib", "/etc/hostname"])?,
        2,
        "not an ELF",
    );
    Ok(())
}

#[test]
fn a_database_that_cannot_be_written_is_reported() -> anyhow::Result<()> {
    if !root_or_skip("a_database_that_cannot_be_written") {
        return Ok(());
    }
    assert_clean_failure(
        ingero(&["trace", "--db", "/dev/null/ingero.db"])?,
        73,
        "/dev/null",
    );
    Ok(())
}

#[test]
fn bad_flags_and_configuration_are_explained() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "agent:\n  nod: x\n")?;
    let bad = bad.display().to_string();
    assert_clean_failure(ingero(&["--config", &bad, "check"])?, 78, "nod");
    assert_clean_failure(
        ingero(&["--config", "/nonexistent/ingero.yaml", "check"])?,
        78,
        "/nonexistent/ingero.yaml",
    );
    let (code, _, err) = ingero(&["trace", "--duration", "ten"])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a duration"), "{err}");
    if root_or_skip("bad ring size") {
        let db = dir.path().join("x.db").display().to_string();
        assert_clean_failure(
            ingero(&["trace", "--db", &db, "--ringbuf-size", "3000"])?,
            2,
            "power of two",
        );
        assert_clean_failure(
            ingero(&["trace", "--db", &db, "--node", "bad node"])?,
            2,
            "invalid node name",
        );
    }
    Ok(())
}

#[test]
fn check_reports_readiness() -> anyhow::Result<()> {
    let (code, out, err) = ingero(&["check", "--json"])?;
    let report: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out} {err}"))?;
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let names: Vec<_> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in ["kernel", "BTF", "privileges", "tracefs"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert_eq!(code == 0, report["ready"] == true);
    let (_, text, _) = ingero(&["check"])?;
    assert!(text.contains("cuda runtime"), "{text}");
    Ok(())
}

#[test]
fn a_reader_that_stops_early_ends_the_query_quietly() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::{io::Read as _, os::unix::process::ExitStatusExt as _, process::Stdio};
    let dir = tempfile::tempdir()?;
    let db = crate::common::sample_db(dir.path())?;
    let db = db.display().to_string();
    // `ingero query ... | head -c 100`: the reader takes 100 bytes of a
    // large answer and closes the pipe.
    let mut child = std::process::Command::new(INGERO)
        .args(["query", "-d", &db, "SELECT * FROM events"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = [0u8; 100];
    child.stdout.take().context("stdout")?.read_exact(&mut first)?;
    let mut err = String::new();
    child.stderr.take().context("stderr")?.read_to_string(&mut err)?;
    let status = child.wait()?;
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "a closed pipe is not an error to report: {err}"
    );
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "ended by the closed pipe, as other Unix tools: {status:?}"
    );
    Ok(())
}
