//! `ingero config` and the configuration path as a user meets it: the
//! effective value of every setting and the layer it came from, and file
//! keys that reach the commands.

use serde_json::Value;

use crate::common::ingero_env;

/// Runs `ingero ARGS` with `env` set and `HOME` pointed at `home`, so no
/// user file is picked up by accident.
fn run(args: &[&str], env: &[(&str, &str)], home: &std::path::Path) -> anyhow::Result<(i32, String, String)> {
    let home = home.display().to_string();
    let mut env = env.to_vec();
    env.push(("HOME", &home));
    ingero_env(args, &env)
}

fn setting<'a>(v: &'a Value, key: &str) -> &'a Value {
    v["settings"]
        .as_array()
        .and_then(|s| s.iter().find(|e| e["key"] == key))
        .unwrap_or(&Value::Null)
}

#[test]
fn config_names_the_layer_of_every_value() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ingero.yaml");
    std::fs::write(
        &file,
        "agent:\n  node: from-file\nfleet:\n  timeout: 3s\n  concurrency: 8\n",
    )?;
    let file_arg = file.display().to_string();
    let (code, out, err) = run(
        &["config", "--json", "--config", &file_arg],
        &[("INGERO_NODES", "a:1,b:2")],
        dir.path(),
    )?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["file"], file_arg);
    let file_source = format!("file {file_arg}");
    assert_eq!(setting(&v, "agent.node")["value"], "from-file");
    assert_eq!(setting(&v, "agent.node")["source"], file_source.as_str());
    assert_eq!(setting(&v, "fleet.concurrency")["value"], "8");
    assert_eq!(setting(&v, "fleet.nodes")["value"], "a:1,b:2");
    assert_eq!(setting(&v, "fleet.nodes")["source"], "env INGERO_NODES");
    assert_eq!(setting(&v, "fleet.deadline")["source"], "default");
    assert_eq!(setting(&v, "agent.max_queries")["value"], "4");

    // The table form says the same, one line per setting.
    let (code, out, _) = run(&["config", "--config", &file_arg], &[], dir.path())?;
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("configuration file: {file_arg}")),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("fleet.timeout"))
        .unwrap_or_default();
    assert!(line.contains("3s") && line.contains("file "), "{out}");
    Ok(())
}

#[test]
fn a_bad_file_value_is_one_sentence_with_exit_78() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ingero.yaml");
    std::fs::write(&file, "fleet:\n  concurency: 8\n")?;
    let (code, _, err) = run(
        &["config", "--config", &file.display().to_string()],
        &[],
        dir.path(),
    )?;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("concurency"), "the typo is named: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    Ok(())
}

#[test]
fn file_keys_reach_the_commands() -> anyhow::Result<()> {
    // query.limit from the file caps the rows of `ingero query`.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("t.db");
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch(
        "CREATE TABLE events(id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, pid INTEGER, tid INTEGER, source INTEGER, op INTEGER, duration INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO events SELECT 'x:' || i, i, 1, 1, 1, 1, 10 FROM n;",
    )?;
    drop(conn);
    let file = dir.path().join("ingero.yaml");
    std::fs::write(&file, "query:\n  limit: 7\n")?;
    let (file, db) = (file.display().to_string(), db.display().to_string());
    let rows = |extra: &[&str]| -> anyhow::Result<Value> {
        let mut args = vec!["query", "--json", "--config", &file, "-d", &db];
        args.extend(extra);
        args.push("SELECT id FROM events");
        let (code, out, err) = run(&args, &[], dir.path())?;
        anyhow::ensure!(code == 0, "{err}");
        Ok(serde_json::from_str(&out)?)
    };
    let v = rows(&[])?;
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(7), "{v}");
    assert_eq!(v["truncated"], true);
    // A flag beats the file.
    let v = rows(&["--limit", "9"])?;
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(9), "{v}");
    Ok(())
}
