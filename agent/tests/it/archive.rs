//! The Parquet archive, read by engines no one here wrote: pyarrow opens
//! every file, DuckDB and a local Spark session run the README's queries,
//! and their figures are compared with SQLite's over the same rows. Also:
//! what export refuses, a full disk, and a tracer killed with SIGKILL in the
//! middle of archiving.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::common::{
    Daemon, SampleFleet, Workload, files_under, ingero, open, parquet_check, root_or_skip, sample,
    sample_cluster, scalar, serial,
};

/// SQLite's per-(node, source, op) counts and sums, as DuckDB's rows.
fn sqlite_figures(db: &Path) -> anyhow::Result<Value> {
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT node, source, op, count(*), sum(duration), sum(arg0) FROM events
         GROUP BY node, source, op ORDER BY node, source, op",
    )?;
    let rows: Vec<Value> = stmt
        .query_map([], |r| {
            Ok(json!([
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?
            ]))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Value::Array(rows))
}

/// The README's per-node query in SQLite: (node, source, cnt, avg_us).
fn sqlite_per_node(db: &Path) -> anyhow::Result<Vec<(String, i64, i64, f64)>> {
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT node, source, count(*) as cnt, avg(duration)/1000 as avg_us FROM events GROUP BY node, source ORDER BY node, source",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// An engine's per-node rows equal SQLite's: counts exactly, averages to
/// the last few bits.
fn same_per_node(engine: &str, got: &Value, want: &[(String, i64, i64, f64)]) -> anyhow::Result<()> {
    let got = got.as_array().context("per-node rows")?;
    ensure!(
        got.len() == want.len(),
        "{engine}: {} rows, SQLite {}",
        got.len(),
        want.len()
    );
    for (g, (node, source, cnt, avg)) in got.iter().zip(want) {
        let g_avg = g[3].as_f64().context("avg")?;
        ensure!(
            g[0] == json!(node)
                && g[1] == json!(source)
                && g[2] == json!(cnt)
                && (g_avg - avg).abs() <= avg.abs() * 1e-9,
            "{engine} says {g}, SQLite ({node}, {source}, {cnt}, {avg})"
        );
    }
    Ok(())
}

/// The fleet-wide p99 of cuLaunchKernel by exact rank (`--merge`'s definition).
fn sqlite_p99(db: &Path) -> anyhow::Result<i64> {
    scalar(
        &open(db)?,
        "SELECT duration FROM events WHERE source = 4 AND op = 1 ORDER BY duration LIMIT 1
         OFFSET (SELECT count(*) * 99 / 100 FROM events WHERE source = 4 AND op = 1)",
    )
}

#[test]
fn an_export_reads_the_same_in_pyarrow_and_duckdb_as_in_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_cluster(dir.path())?;
    let out = dir.path().join("archive");
    let out_s = out.display().to_string();
    let (code, stdout, stderr) = ingero(&[
        "export",
        "-d",
        &db.display().to_string(),
        "--format",
        "parquet",
        "-o",
        &out_s,
        "--json",
    ])?;
    ensure!(code == 0, "export failed ({code}): {stderr}");
    let summary: Value = serde_json::from_str(stdout.trim())?;
    let events = scalar(&open(&db)?, "SELECT count(*) FROM events")?;
    assert_eq!(summary["tables"]["events"]["rows"], json!(events));
    assert_eq!(
        summary["nodes"],
        json!(["gpu-node-01", "gpu-node-02", "gpu-node-03"])
    );

    let seen = parquet_check("read", &out)?;
    // Every visible file opens in pyarrow and says what it holds.
    assert_eq!(seen["files"], summary["files"]);
    assert_eq!(seen["hidden"], json!([]), "no temporary file left");
    for (table, want) in [
        ("events", events),
        ("sessions", scalar(&open(&db)?, "SELECT count(*) FROM sessions")?),
        (
            "process_names",
            scalar(&open(&db)?, "SELECT count(*) FROM process_names")?,
        ),
        (
            "causal_chains",
            scalar(&open(&db)?, "SELECT count(*) FROM causal_chains")?,
        ),
        // The catalogs: one copy per node.
        ("ops", 3 * scalar(&open(&db)?, "SELECT count(*) FROM ops")?),
    ] {
        assert_eq!(seen["rows_by_table"][table], json!(want), "{table}");
    }
    for meta in seen["metadata"].as_array().context("metadata")? {
        assert!(
            meta["ingero.node"]
                .as_str()
                .is_some_and(|n| n.starts_with("gpu-node-0")),
            "{meta}"
        );
        if meta["ingero.table"] == "events" {
            let first = meta["ingero.event_id_first"].as_str().unwrap_or_default();
            assert!(
                first.starts_with(meta["ingero.node"].as_str().unwrap_or("?")),
                "{meta}"
            );
            assert!(
                !meta["ingero.session_ids"].as_str().unwrap_or_default().is_empty(),
                "{meta}"
            );
        }
    }
    // Types: the contract's columns at their widths; timestamp in ns, UTC.
    let arrow = &seen["types"]["arrow"];
    assert_eq!(arrow["timestamp"], "timestamp[ns, tz=UTC]");
    assert_eq!(
        (
            arrow["source"].as_str(),
            arrow["pid"].as_str(),
            arrow["duration"].as_str()
        ),
        (Some("int16"), Some("int32"), Some("int64"))
    );
    assert!(
        seen["types"]["parquet_timestamp"]
            .as_str()
            .is_some_and(|t| t.contains("isAdjustedToUTC=true") && t.contains("nanoseconds"))
    );
    assert_eq!(seen["duckdb_types"]["timestamp"], "TIMESTAMPTZ_NS");
    assert_eq!(seen["duckdb_types"]["node"], "VARCHAR");
    // DuckDB's figures are SQLite's, per node and operation.
    assert_eq!(seen["duckdb_events"], sqlite_figures(&db)?);
    assert_eq!(
        (seen["duckdb_distinct_ids"].clone(), seen["duckdb_rows"].clone()),
        (json!(events), json!(events))
    );
    let (lo, hi) = open(&db)?.query_row("SELECT min(timestamp), max(timestamp) FROM events", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    assert_eq!(seen["duckdb_ts"], json!([lo, hi]), "the same instants");
    same_per_node("DuckDB", &seen["duckdb_per_node"], &sqlite_per_node(&db)?)?;
    assert_eq!(seen["duckdb_p99"], json!(sqlite_p99(&db)?));
    Ok(())
}

#[test]
fn export_refuses_what_would_mislead_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample(dir.path(), 1)?.display().to_string();
    let out = dir.path().join("archive").display().to_string();
    let export = |db: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["export", "-d", db, "--format", "parquet", "-o", out];
        args.extend(extra);
        ingero(&args)
    };
    let (code, _, err) = export(&db, &out, &[])?;
    ensure!(code == 0, "{err}");
    // The same node again would put its events there twice.
    let (code, _, err) = export(&db, &out, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already holds an archive of node(s) gpu-node-01"),
        "{err}"
    );
    // Another node's database joins the same archive.
    let other = sample(dir.path(), 2)?.display().to_string();
    let (code, _, err) = export(&other, &out, &[])?;
    assert_eq!(code, 0, "{err}");
    // -o a file; a missing database.
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "x")?;
    let (code, _, err) = export(&db, &file.display().to_string(), &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a file"), "{err}");
    let (code, _, err) = export("/nonexistent/x.db", &out, &[])?;
    assert_eq!(code, 2, "{err}");
    // Another tracer's database (no node column) needs a node name.
    let foreign = dir.path().join("old.db");
    open(&foreign)?.execute_batch(
        "CREATE TABLE events(id INTEGER PRIMARY KEY, timestamp INTEGER, pid INTEGER, tid INTEGER,
         source INTEGER, op INTEGER, duration INTEGER, gpu_id INTEGER, arg0 INTEGER, arg1 INTEGER,
         ret_code INTEGER, stack_hash INTEGER);
         INSERT INTO events VALUES (1, 1796196000000000000, 1, 1, 4, 1, 10, 0, 0, 0, 0, 0),
                                   (2, 'garbage', 1, 1, 4, 1, 10, 0, 0, 0, 0, 0);",
    )?;
    let foreign = foreign.display().to_string();
    let old_out = dir.path().join("old").display().to_string();
    let (code, _, err) = export(&foreign, &old_out, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force-node"), "{err}");
    let (code, out_json, err) = export(&foreign, &old_out, &["--force-node", "old-node", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out_json.trim())?;
    assert_eq!(
        (
            summary["tables"]["events"]["rows"].as_u64(),
            summary["skipped"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(err.contains("1 row(s) were left out"), "{err}");
    assert!(
        Path::new(&old_out)
            .join("table=events/node=old-node/date=2026-12-02/hour=07")
            .is_dir()
    );
    Ok(())
}

/// A tmpfs of `size` mounted on `dir` for the guard's life.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?
            .success();
        ensure!(ok, "mount tmpfs failed");
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_no_file_visible() -> anyhow::Result<()> {
    if !root_or_skip("a_full_disk_leaves_no_file_visible (mounts a small tmpfs)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = sample_cluster(dir.path())?;
    let out = dir.path().join("small");
    let _fs = Tmpfs::mount(&out, "128k")?;
    let (code, _, err) = ingero(&[
        "export",
        "-d",
        &db.display().to_string(),
        "--format",
        "parquet",
        "-o",
        &out.display().to_string(),
    ])?;
    assert_eq!(code, 73, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    let left = files_under(&out);
    assert!(left.is_empty(), "nothing visible, nothing temporary: {left:?}");
    Ok(())
}

/// A database holding node gpu-node-03's sample and `n` more launches,
/// with its id counter past them (so the tracer's ids do not collide).
fn big_node_db(dir: &Path, n: i64) -> anyhow::Result<std::path::PathBuf> {
    let db = sample(dir, 3)?;
    let conn = open(&db)?;
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1)
         INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, arg1, node, session_id, cpu)
         SELECT 'gpu-node-03:' || (1000000 + i), 1796196000000000000 + i * 1000, 100, 101, 4, 1,
                1000 + i % 777, i, 64, 'gpu-node-03', 1, i % 4 FROM c",
        [n],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO id_counters(node, next_seq) VALUES ('gpu-node-03', ?1)",
        [2_000_000 + n],
    )?;
    Ok(db)
}

/// Waits until a hidden temporary file of events appears under `dir`.
fn wait_for_temporary(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let busy = files_under(&dir.join("table=events"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "tmp"));
        if busy {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("no archive file was being written within {timeout:?}")
}

#[test]
fn archiving_while_tracing_survives_kill_9_without_duplicates() -> anyhow::Result<()> {
    if !root_or_skip("archiving_while_tracing_survives_kill_9_without_duplicates") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = big_node_db(dir.path(), 600_000)?;
    let total_before = scalar(&open(&db)?, "SELECT count(*) FROM events")?;
    let archive = dir.path().join("archive");
    let archive_s = archive.display().to_string();
    let flags = [
        "--node",
        "gpu-node-03",
        "--archive",
        &archive_s,
        "--archive-interval",
        "1h",
        "-q",
    ];

    // 1. Killed while a window's files are being written.
    let mut idle = std::process::Command::new("sleep").arg("120").spawn()?;
    let idle_pid = idle.id().to_string();
    let mut args = vec!["--pid", &idle_pid];
    args.extend(flags);
    let tracer = Daemon::trace(&db, &args)?;
    wait_for_temporary(&archive, Duration::from_secs(60))?;
    drop(tracer); // SIGKILL, as kill -9
    let _ = idle.kill();
    let _ = idle.wait();
    let seen = parquet_check("read", &archive)?;
    let visible = seen["duckdb_rows"].as_i64().unwrap_or(0);
    assert!(
        visible < total_before,
        "killed mid-way: {visible} of {total_before} events visible"
    );
    assert_eq!(seen["duckdb_distinct_ids"], seen["duckdb_rows"], "no event twice");

    // 2. Restarted, with a workload: the backlog, then the tail at stop.
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &["driver", "--threads", "1", "--calls", "200", "--kernel-us", "50"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend(flags);
    let tracer = Daemon::trace(&db, &args)?;
    w.go()?;
    w.finish()?;
    let log = tracer.stop()?;
    assert!(log.contains("archived"), "{log}");
    let total = scalar(&open(&db)?, "SELECT count(*) FROM events")?;
    ensure!(total > total_before, "the workload's calls were recorded");
    let seen = parquet_check("read", &archive)?;
    assert_eq!(seen["hidden"], json!([]), "the killed run's temporaries are gone");
    assert_eq!(
        (seen["duckdb_rows"].as_i64(), seen["duckdb_distinct_ids"].as_i64()),
        (Some(total), Some(total)),
        "every event exactly once"
    );
    assert_eq!(seen["duckdb_events"], sqlite_figures(&db)?);
    assert_eq!(
        seen["rows_by_table"]["sessions"],
        json!(scalar(&open(&db)?, "SELECT count(*) FROM sessions")?)
    );
    Ok(())
}

/// One Spark session per suite (it takes seconds to start): the README's
/// per-node query and fleet-wide p99 of cuLaunchKernel over an archive the
/// three sample nodes wrote, against SQL over the merged database and
/// `ingero query --nodes ... --merge` over agents serving the same data.
#[test]
fn spark_gets_the_fleet_figures_of_sqlite_and_the_live_agents() -> anyhow::Result<()> {
    let _guard = serial();
    let fleet = SampleFleet::start(&[])?;
    let archive = fleet.dir.path().join("archive");
    for n in 1..=3 {
        let db = fleet.dir.path().join(format!("node-{n:02}.db"));
        let (code, _, err) = ingero(&[
            "export",
            "-d",
            &db.display().to_string(),
            "--format",
            "parquet",
            "-o",
            &archive.display().to_string(),
        ])?;
        ensure!(code == 0, "export of node {n} failed: {err}");
    }
    let merged = sample_cluster(fleet.dir.path())?;

    let spark = parquet_check("spark", &archive)?;
    assert_eq!(
        spark["schema"]["timestamp"], "bigint",
        "nanoseconds as a long (nanosAsLong)"
    );
    assert_eq!(spark["schema"]["node"], "string");
    same_per_node("Spark", &spark["per_node"], &sqlite_per_node(&merged)?)?;
    let p99 = sqlite_p99(&merged)?;
    assert_eq!(
        spark["p99"],
        json!(p99),
        "Spark's p99 is SQLite's over the merged database"
    );
    assert_eq!(
        spark["launches_by_name"],
        json!(scalar(
            &open(&merged)?,
            "SELECT count(*) FROM events WHERE source = 4 AND op = 1"
        )?)
    );

    // The live agents, through the fan-out client, say the same.
    let (code, out, err) = fleet.ingero(
        &[
            "query",
            "--json",
            "--limit",
            "50000",
            "SELECT duration FROM events WHERE source = 4 AND op = 1",
            "--merge",
            "SELECT duration FROM fleet ORDER BY duration LIMIT 1 OFFSET (SELECT count(*) * 99 / 100 FROM fleet)",
        ],
        &fleet.addrs,
    )?;
    ensure!(code == 0, "fleet query failed ({code}): {err}");
    let answer: Value = serde_json::from_str(out.trim())?;
    let fleet_p99 = answer["rows"][0][0].clone();
    assert_eq!(fleet_p99, json!(p99), "ingero query --merge: {answer}");

    // The fleet's archive, fetched through the agents, holds the same events.
    let fetched = fleet.dir.path().join("fetched");
    let mut args = vec!["export", "--format", "parquet", "-o"];
    let fetched_s = fetched.display().to_string();
    args.push(&fetched_s);
    let (code, _, err) = fleet.ingero(&args, &fleet.addrs)?;
    ensure!(code == 0, "fleet export failed ({code}): {err}");
    let seen = parquet_check("read", &fetched)?;
    assert_eq!(seen["duckdb_events"], sqlite_figures(&merged)?);
    Ok(())
}
