//! Odd data and odd fleets: a database with a few badly typed values, merge
//! inputs that disagree, a token file that could never match, agents that
//! claim the same node or answer with other columns. Daemons listen on
//! loopback only and stop with the test.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::common::{Pki, ingero, open, sample, scalar};

/// Sets the `timestamp` of `n` events of `db` to text.
fn spoil_timestamps(db: &Path, n: i64) -> anyhow::Result<()> {
    let conn = open(db)?;
    conn.execute(
        "UPDATE events SET timestamp = 'soon' WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT ?1)",
        [n],
    )?;
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_text_timestamp_spoils_no_command() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 1)?;
    let total = scalar(&open(&db)?, "SELECT count(*) FROM events")?;
    spoil_timestamps(&db, 3)?;
    let db_s = s(&db);

    let (code, out, err) = ingero(&["query", "-d", &db_s, "--json", "select 1 AS one"])?;
    assert_eq!(code, 0, "query without a window: {err}");
    assert!(out.contains("\"one\""), "{out}");
    let (code, out, err) = ingero(&[
        "query",
        "-d",
        &db_s,
        "--since",
        "10m",
        "--csv",
        "select count(*) AS n from events",
    ])?;
    assert_eq!(code, 0, "query with a window: {err}");
    assert!(
        out.contains(&(total - 3).to_string()),
        "the odd rows are outside every window: {out}"
    );

    let (code, _, err) = ingero(&["explain", "-d", &db_s, "--no-save", "--json"])?;
    assert_eq!(code, 0, "explain: {err}");
    assert!(
        err.contains("3 event(s)") && err.contains("left out"),
        "reported: {err}"
    );
    let (code, _, err) = ingero(&["explain", "-d", &db_s, "--no-save", "--since", "1m"])?;
    assert_eq!(code, 0, "explain --since: {err}");
    let trace = dir.path().join("t.json");
    let (code, _, err) = ingero(&["export", "--format", "perfetto", "-d", &db_s, "-o", &s(&trace)])?;
    assert_eq!(code, 0, "export: {err}");
    let parsed: Value = serde_json::from_slice(&std::fs::read(&trace)?)?;
    assert!(parsed["traceEvents"].as_array().is_some_and(|a| !a.is_empty()));
    let native = dir.path().join("t.pftrace");
    let (code, _, err) = ingero(&["export", "--format", "perfetto", "-d", &db_s, "-o", &s(&native)])?;
    assert_eq!(code, 0, "native export: {err}");
    let v = crate::perfetto::check(&native)?;
    assert!(v["slices"].as_array().is_some_and(|a| !a.is_empty()));

    let other = sample(dir.path(), 2)?;
    let merged = dir.path().join("m.db");
    let (code, out, err) = ingero(&["merge", &db_s, &s(&other), "-o", &s(&merged), "--json"])?;
    assert_eq!(code, 0, "merge: {err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["skipped"], 3, "{out}");
    assert!(
        err.contains("not an integer"),
        "the skipped rows are reported: {err}"
    );
    let conn = open(&merged)?;
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM events WHERE typeof(timestamp) <> 'integer'"
        )?,
        0
    );
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM events WHERE node = 'gpu-node-01'")?,
        total - 3
    );
    Ok(())
}

#[test]
fn merge_refuses_a_directory_and_clears_a_killed_merge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (sample(dir.path(), 1)?, sample(dir.path(), 2)?);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir)?;
    let (code, _, err) = ingero(&["merge", &s(&a), &s(&b), "-o", &s(&out_dir), "--force"])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(!dir.path().join("out.partial").exists(), "nothing left behind");

    // What a merge killed half-way leaves: its work file and journal.
    let out = dir.path().join("c.db");
    std::fs::write(dir.path().join("c.db.partial"), b"half a database")?;
    std::fs::write(dir.path().join("c.db.partial-journal"), b"its journal")?;
    let (code, _, err) = ingero(&["merge", &s(&a), &s(&b), "-o", &s(&out)])?;
    assert_eq!(code, 0, "{err}");
    assert!(!dir.path().join("c.db.partial").exists());
    assert!(!dir.path().join("c.db.partial-journal").exists());
    assert!(scalar(&open(&out)?, "SELECT count(*) FROM events")? > 0);
    Ok(())
}

#[test]
fn merge_takes_unknown_tables_with_other_columns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (sample(dir.path(), 1)?, sample(dir.path(), 2)?);
    open(&a)?.execute_batch(
        "CREATE TABLE notes(k TEXT, v INTEGER NOT NULL); INSERT INTO notes VALUES ('x', 1);",
    )?;
    open(&b)?.execute_batch(
        "CREATE TABLE notes(k TEXT, w REAL, \"odd \"\"name\"\"\" TEXT); INSERT INTO notes VALUES ('y', 2.5, 'z');",
    )?;
    let out = dir.path().join("m.db");
    let (code, _, err) = ingero(&["merge", &s(&a), &s(&b), "-o", &s(&out)])?;
    assert_eq!(code, 0, "{err}");
    let conn = open(&out)?;
    assert_eq!(scalar(&conn, "SELECT count(*) FROM notes")?, 2);
    assert_eq!(
        scalar(
            &conn,
            "SELECT v FROM notes WHERE node = 'gpu-node-01' AND k = 'x'"
        )?,
        1
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM notes WHERE node = 'gpu-node-02' AND w = 2.5 AND \"odd \"\"name\"\"\" = 'z'"
        )?,
        1
    );
    Ok(())
}

#[test]
fn force_node_fills_missing_names_and_is_never_ignored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (sample(dir.path(), 1)?, sample(dir.path(), 2)?);
    // A database whose node column allows NULL (as other tools write it),
    // with some events unnamed and some empty.
    open(&a)?.execute_batch(
        "CREATE TABLE ev AS SELECT * FROM events; DROP TABLE events; ALTER TABLE ev RENAME TO events;
         UPDATE events SET node = NULL WHERE rowid % 3 = 0; UPDATE events SET node = '' WHERE rowid % 3 = 1;",
    )?;
    let total = scalar(&open(&a)?, "SELECT count(*) FROM events")?;
    let named = scalar(
        &open(&a)?,
        "SELECT count(*) FROM events WHERE node = 'gpu-node-01'",
    )?;
    let out = dir.path().join("m.db");

    let (code, _, err) = ingero(&["merge", &s(&a), &s(&b), "-o", &s(&out)])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force-node"), "{err}");

    let (code, _, err) = ingero(&[
        "merge",
        &s(&a),
        &s(&b),
        "-o",
        &s(&out),
        "--force-node",
        &format!("{}=lost-node", s(&b)),
    ])?;
    assert_eq!(code, 2, "a name for a database that has one is refused: {err}");
    assert!(err.contains("drop --force-node"), "{err}");
    assert!(!out.exists());
    let c = sample(dir.path(), 3)?;
    let (code, _, err) = ingero(&[
        "merge",
        &s(&b),
        &s(&c),
        "-o",
        &s(&out),
        "--force-node",
        "lost-node",
    ])?;
    assert_eq!(code, 2, "a name no input needs is refused: {err}");
    assert!(err.contains("drop --force-node"), "{err}");
    assert!(!out.exists());

    let (code, _, err) = ingero(&[
        "merge",
        &s(&a),
        &s(&b),
        "-o",
        &s(&out),
        "--force-node",
        &format!("{}=lost-node", s(&a)),
    ])?;
    assert_eq!(code, 0, "{err}");
    let conn = open(&out)?;
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM events WHERE node = 'lost-node'")?,
        total - named
    );
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM events WHERE node = 'gpu-node-01'")?,
        named
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM events WHERE node IS NULL OR node = ''"
        )?,
        0
    );
    Ok(())
}

#[test]
fn export_tells_a_damaged_database_from_a_foreign_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 1)?;
    let mut bytes = std::fs::read(&db)?;
    // Keep the header, wreck the pages after it.
    for b in bytes.iter_mut().skip(100) {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes)?;
    let (code, _, err) = ingero(&[
        "export",
        "--format",
        "perfetto",
        "-d",
        &s(&db),
        "-o",
        &s(&dir.path().join("t.json")),
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("no events table"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    Ok(())
}

#[test]
fn a_token_file_of_several_lines_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 1)?;
    let token = dir.path().join("token");
    std::fs::write(&token, "first-line-of-the-token\nsecond-line-of-the-token\n")?;
    let (code, _, err) = ingero(&[
        "serve",
        "--db",
        &s(&db),
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--token-file",
        &s(&token),
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("one line"), "{err}");
    Ok(())
}

#[test]
fn two_agents_with_one_node_are_counted_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let one = sample(dir.path(), 1)?;
    let copy = dir.path().join("copy.db");
    std::fs::copy(&one, &copy)?;
    let events = scalar(&open(&one)?, "SELECT count(*) FROM events")?;
    let mut first = pki.serve_as("gpu-node-01", &one, &[], &[])?;
    let mut second = pki.serve_as("gpu-node-01", &copy, &[], &[])?;
    let addrs = [first.api_addr()?, second.api_addr()?];
    let mut args = vec![
        "query".to_owned(),
        "--nodes".to_owned(),
        addrs.join(","),
        "--csv".to_owned(),
        "--merge".to_owned(),
        "SELECT sum(n) AS total FROM fleet".to_owned(),
        "SELECT count(*) AS n FROM events".to_owned(),
    ];
    args.extend(pki.client_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ingero(&args)?;
    assert_eq!(code, 3, "the duplicate is a node that did not count: {err}");
    assert!(out.contains(&events.to_string()), "{out}");
    assert!(!out.contains(&(2 * events).to_string()), "{out}");
    assert!(err.contains("counted twice"), "{err}");

    let mut args = vec![
        "explain".to_owned(),
        "--nodes".to_owned(),
        addrs.join(","),
        "--json".to_owned(),
    ];
    args.extend(pki.client_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ingero(&args)?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("counted twice"), "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let figures: usize = v["nodes"].as_array().map_or(0, |n| {
        n.iter()
            .map(|n| n["figures"].as_array().map_or(0, Vec::len))
            .sum()
    });
    assert_eq!(figures, 1, "one figure line for the node: {out}");
    first.stop()?;
    second.stop()?;
    Ok(())
}

#[test]
fn an_odd_first_node_does_not_outvote_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for n in 1..=3 {
        let db = sample(dir.path(), n)?;
        if n == 1 {
            open(&db)?.execute_batch("ALTER TABLE events ADD COLUMN extra INTEGER")?;
        }
        let mut agent = pki.serve_as(&format!("gpu-node-{n:02}"), &db, &[], &[])?;
        addrs.push(agent.api_addr()?);
        agents.push(agent);
    }
    let mut args = vec![
        "query".to_owned(),
        "--nodes".to_owned(),
        addrs.join(","),
        "--json".to_owned(),
        "SELECT * FROM events LIMIT 1".to_owned(),
    ];
    args.extend(pki.client_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ingero(&args)?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("gpu-node-01") && err.contains("columns"), "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let rows = v["rows"].as_array().map_or(0, Vec::len);
    assert_eq!(rows, 2, "the two agreeing nodes' rows: {out}");
    for a in agents {
        a.stop()?;
    }
    Ok(())
}

#[test]
fn the_mcp_server_answers_malformed_lines_with_json_rpc_errors() -> anyhow::Result<()> {
    use std::{
        io::{BufRead, BufReader, Write},
        process::{Command, Stdio},
        sync::mpsc,
        time::Duration,
    };
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 1)?;
    let mut child = Command::new(crate::common::INGERO)
        .args(["mcp", "--db", &s(&db)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut ask = |line: &str| -> anyhow::Result<Value> {
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let answer = rx.recv_timeout(Duration::from_secs(20))?;
        Ok(serde_json::from_str(&answer)?)
    };
    let init = ask(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    )?;
    assert_eq!(init["result"]["serverInfo"]["name"], "ingero", "{init}");
    let garbage = ask("this is not json")?;
    assert_eq!(garbage["error"]["code"], -32700, "{garbage}");
    assert!(garbage.get("id").is_some_and(Value::is_null), "{garbage}");
    let no_params = ask(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call"}"#)?;
    assert_eq!(no_params["error"]["code"], -32602, "{no_params}");
    assert_eq!(no_params["id"], 2);
    let no_method = ask(r#"{"jsonrpc":"2.0","id":3}"#)?;
    assert_eq!(no_method["error"]["code"], -32600, "{no_method}");
    assert_eq!(no_method["id"], 3);
    let long = format!("{{\"pad\": \"{}\"}}", "x".repeat(5 << 20));
    let too_long = ask(&long)?;
    assert_eq!(too_long["error"]["code"], -32600, "{too_long}");
    // The session goes on.
    let tools = ask(r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#)?;
    assert_eq!(tools["id"], 4);
    assert!(
        tools["result"]["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "{tools}"
    );
    drop(stdin);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("ingero mcp did not end with its input");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    Ok(())
}
