//! Hostile peers and a bad day, on loopback only, bounded in count and
//! time: an "agent" that streams an endless answer or never answers,
//! conflicting sources of data, and recorded strings that carry terminal
//! escape sequences. Each test says which limit it checks.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{Daemon, ingero_env, sample};

/// A fake agent on loopback: `answer` gets every connection (after its
/// request headers are read). Runs until the test ends (the thread is
/// detached; each connection is bounded by `answer` itself).
fn fake_agent(answer: fn(TcpStream)) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64).flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                answer(stream);
            });
        }
    });
    Ok(addr)
}

/// 200 and a JSON body that never ends: at most 512 MiB or 30 s, and only
/// until the client hangs up.
fn endless(mut s: TcpStream) {
    let started = Instant::now();
    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n[")
        .is_err()
    {
        return;
    }
    let chunk = "1,".repeat(32 * 1024);
    for _ in 0..8192 {
        if started.elapsed() > Duration::from_secs(30) || s.write_all(chunk.as_bytes()).is_err() {
            return;
        }
    }
}

/// Accepts and never answers (for 30 s).
fn silent(s: TcpStream) {
    std::thread::sleep(Duration::from_secs(30));
    drop(s);
}

/// A real agent serving a sample node over plain HTTP on loopback.
fn real_agent(dir: &std::path::Path) -> anyhow::Result<(Daemon, String)> {
    let db = sample(dir, 1)?;
    let mut agent = Daemon::serve(&db, &["--listen", "127.0.0.1:0", "--no-tls"])?;
    let addr = agent.api_addr()?;
    Ok((agent, addr))
}

#[test]
fn an_endless_answer_fails_its_node_and_the_others_rows_are_kept() -> anyhow::Result<()> {
    // A server writing as fast as it can: not alongside the tracer tests.
    let _guard = crate::common::serial();
    let dir = tempfile::tempdir()?;
    let (_agent, good) = real_agent(dir.path())?;
    let bad = fake_agent(endless)?;
    let nodes = format!("{good},{bad}");
    let started = Instant::now();
    let (code, out, err) = ingero_env(
        &[
            "query",
            "--json",
            "--no-tls",
            "--max-answer",
            "1m",
            "--nodes",
            &nodes,
            "SELECT count(*) AS n FROM events",
        ],
        &[],
    )?;
    assert_eq!(code, 3, "some nodes answered: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_str(&out)?;
    let rows = v["rows"].as_array().map_or(0, Vec::len);
    assert_eq!(rows, 1, "the good node's row is kept: {v}");
    let line = err.lines().find(|l| l.contains(&bad)).unwrap_or_default();
    assert!(
        line.contains("exceeded 1 MiB"),
        "the bad node is named with the reason: {err}"
    );
    Ok(())
}

#[test]
fn the_deadline_bounds_the_whole_command_even_below_the_node_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_agent, good) = real_agent(dir.path())?;
    let quiet = fake_agent(silent)?;
    let nodes = format!("{good},{quiet}");
    let started = Instant::now();
    let (code, _, err) = ingero_env(
        &[
            "query",
            "--no-tls",
            "--node-timeout",
            "15s",
            "--deadline",
            "2s",
            "--nodes",
            &nodes,
            "SELECT 1",
        ],
        &[],
    )?;
    let took = started.elapsed();
    assert_eq!(code, 3, "{err}");
    assert!(took < Duration::from_secs(6), "--deadline 2s took {took:?}");
    assert!(err.contains(&quiet) && err.contains("timed out"), "{err}");
    Ok(())
}

#[test]
fn an_explicit_database_outranks_the_nodes_of_the_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 2)?;
    let db = db.display().to_string();
    // INGERO_NODES points nowhere; -d must win.
    let (code, out, err) = ingero_env(
        &["query", "--json", "-d", &db, "SELECT count(*) AS n FROM events"],
        &[("INGERO_NODES", "127.0.0.1:9")],
    )?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert!(v["rows"][0][0].as_i64().is_some_and(|n| n > 0), "{v}");
    // Both on the command line: one sentence, exit 2.
    let (code, _, err) = ingero_env(&["query", "-d", &db, "--nodes", "127.0.0.1:9", "SELECT 1"], &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give one of them"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    Ok(())
}

#[test]
fn escape_sequences_in_recorded_strings_never_reach_the_terminal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 3)?;
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute(
        "INSERT INTO process_names(node, pid, name, seen_at) VALUES ('gpu-node-03', 424242, ?1, 0)",
        ["evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nFORGED LINE"],
    )?;
    drop(conn);
    let db = db.display().to_string();
    let (code, out, err) = ingero_env(
        &[
            "query",
            "-d",
            &db,
            "SELECT pid, name FROM process_names WHERE pid = 424242",
        ],
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(!out.lines().any(|l| l.starts_with("FORGED")), "{out:?}");
    Ok(())
}
