//! `ingero explain` on a database another tracer wrote: the original
//! ingero's, built here by hand with its tables and conventions (entry-time
//! CUDA timestamps, no preemption flag, `event_aggregates` with a `stored`
//! column and no `node`, `causal_chains` without window columns). Its
//! selective storage keeps a sample of kernel launches, and its live
//! engine left six chains. Explain must show those chains as recorded live,
//! beside its own (and keep telling them apart once it has stored its
//! own), and say the launches are a sample, counting them from the
//! aggregates. No root needed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{ingero, open, scalar};

/// Unix ns at the start of the recording (a whole minute).
const T0: i64 = 1_795_262_400_000_000_000;
const NODE: &str = "a100-1";
/// Launches the original's engine counted, and those it stored.
const COUNTED: i64 = 20_000;
const STORED: i64 = 200;

/// The six chains its live engine recorded: (id suffix, severity, summary).
const RECORDED: [(&str, &str, &str); 6] = [
    (
        "chain-001",
        "HIGH",
        "cuLaunchKernel p99=2.0ms (200.0x p50) - correlated with 10 sched_switch events",
    ),
    (
        "chain-002",
        "HIGH",
        "cuCtxSynchronize p99=41ms (8.2x p50) - CPU 97% busy",
    ),
    (
        "chain-003",
        "MEDIUM",
        "cuLaunchKernel throughput dropped 45% from peak",
    ),
    (
        "chain-004",
        "MEDIUM",
        "cuMemcpy p99=9.1ms (4.0x p50) - 2.1 GB page allocations",
    ),
    (
        "chain-005",
        "LOW",
        "cuLaunchKernel p99=80us (3.1x p50) - correlated with 6 sched_switch events",
    ),
    (
        "chain-006",
        "LOW",
        "cuCtxSynchronize p99=12ms (3.3x p50) - load average 9.2",
    ),
];

/// An original-ingero database over one minute: 200 stored launches of
/// 10 us (every 20th takes 2 ms and is preempted for 1 ms) out of 20,000
/// counted, 60 synchronize calls all stored, and six recorded chains.
fn original_db(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("ingero.db");
    let conn = open(&path)?;
    conn.execute_batch(
        "CREATE TABLE events (id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, pid INTEGER NOT NULL,
             tid INTEGER NOT NULL, source INTEGER NOT NULL, op INTEGER NOT NULL, duration INTEGER NOT NULL,
             gpu_id INTEGER NOT NULL DEFAULT 0, arg0 INTEGER NOT NULL DEFAULT 0, arg1 INTEGER NOT NULL DEFAULT 0,
             ret_code INTEGER NOT NULL DEFAULT 0, stack_hash INTEGER NOT NULL DEFAULT 0,
             node TEXT NOT NULL DEFAULT '', rank INTEGER, local_rank INTEGER, world_size INTEGER,
             comm TEXT NOT NULL DEFAULT '', cgroup_id INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE causal_chains (id TEXT PRIMARY KEY, detected_at INTEGER NOT NULL, severity TEXT NOT NULL,
             summary TEXT NOT NULL, root_cause TEXT NOT NULL, explanation TEXT NOT NULL,
             recommendations TEXT NOT NULL DEFAULT '', cuda_op TEXT NOT NULL DEFAULT '',
             cuda_p99_us INTEGER NOT NULL DEFAULT 0, cuda_p50_us INTEGER NOT NULL DEFAULT 0,
             tail_ratio REAL NOT NULL DEFAULT 0, timeline TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '');
         CREATE TABLE event_aggregates (bucket INTEGER NOT NULL, source INTEGER NOT NULL, op INTEGER NOT NULL,
             pid INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0, stored INTEGER NOT NULL DEFAULT 0,
             sum_dur INTEGER NOT NULL DEFAULT 0, min_dur INTEGER NOT NULL DEFAULT 0,
             max_dur INTEGER NOT NULL DEFAULT 0, sum_arg0 INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (bucket, source, op, pid));
         CREATE TABLE ops (source_id INTEGER NOT NULL, op_id INTEGER NOT NULL, name TEXT NOT NULL,
             description TEXT NOT NULL, PRIMARY KEY (source_id, op_id));
         INSERT INTO ops VALUES (4, 1, 'cuLaunchKernel', 'Launch GPU kernel via driver API'),
             (4, 4, 'cuCtxSynchronize', 'Wait for all GPU work in context'), (3, 1, 'sched_switch', 'context switch');
         CREATE TABLE schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO schema_info VALUES ('version', '0.10'), ('timestamp_unit', 'nanoseconds (Unix epoch)');
         CREATE TABLE process_names (pid INTEGER NOT NULL, name TEXT NOT NULL, seen_at INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (pid));
         INSERT INTO process_names VALUES (100, 'python', 0), (999, 'cpu-hog', 0);",
    )?;
    // Launches every 300 ms, at their entry time; the slow ones preempted.
    conn.execute_batch(&format!(
        "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n < {last})
         INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node)
           SELECT '{NODE}:l' || n, {T0} + n * 300000000, 100, 100, 4, 1,
                  CASE WHEN n % 20 = 5 THEN 2000000 ELSE 10000 END, '{NODE}' FROM i;
         INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg1, node)
           SELECT '{NODE}:s' || n, {T0} + n * 300000000 + 1001000, 100, 100, 3, 1, 1000000, 999, '{NODE}'
           FROM (WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n < {last})
                 SELECT n FROM i) WHERE n % 20 = 5;
         WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n < 59)
         INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node)
           SELECT '{NODE}:y' || n, {T0} + n * 1000000000 + 150000000, 100, 100, 4, 4, 5000000, '{NODE}' FROM i;
         INSERT INTO event_aggregates(bucket, source, op, pid, count, stored, sum_dur, min_dur, max_dur)
           VALUES ({T0}, 4, 1, 100, {COUNTED}, {STORED}, {sum_dur}, 10000, 2000000),
                  ({T0}, 4, 4, 100, 60, 60, 300000000, 5000000, 5000000),
                  ({T0}, 3, 1, 100, 10, 10, 10000000, 1000000, 1000000);",
        last = STORED - 1,
        sum_dur = (COUNTED - 10) * 10_000 + 10 * 2_000_000,
    ))?;
    for (k, (id, severity, summary)) in RECORDED.iter().enumerate() {
        // The original left recommendations empty ('') when it had none.
        let recommendations = if k == 5 {
            String::new()
        } else {
            r#"["Pin the training process to dedicated cores"]"#.to_owned()
        };
        conn.execute(
            "INSERT INTO causal_chains(id, detected_at, severity, summary, root_cause, explanation,
                 recommendations, cuda_op, cuda_p99_us, cuda_p50_us, tail_ratio, timeline, node)
             VALUES (?1, ?2, ?3, ?4, 'CPU contention', 'seen live', ?5, 'cuLaunchKernel', 2000, 10, 200.0,
                     '[{\"layer\":\"HOST\",\"op\":\"sched_switch\",\"detail\":\"10 events\",\"dur_us\":1000}]', ?6)",
            rusqlite::params![
                format!("{NODE}:{id}"),
                T0 + (10 + k as i64 * 8) * 1_000_000_000,
                severity,
                summary,
                recommendations,
                NODE
            ],
        )?;
    }
    Ok(path)
}

fn explain_json(db: &str, save: bool) -> anyhow::Result<Value> {
    let mut args = vec!["explain", "--json", "-d", db];
    if !save {
        args.push("--no-save");
    }
    let (code, out, err) = ingero(&args)?;
    anyhow::ensure!(code == 0, "explain failed ({code}): {err}");
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn chains_the_tracer_recorded_live_are_shown_as_such_beside_ours() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = original_db(dir.path())?;
    let db_s = db.display().to_string();

    let (code, out, err) = ingero(&["explain", "--no-save", "-d", &db_s])?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.starts_with("No causal chains:"), "{out}");
    assert!(
        out.contains(
            "\nRECORDED LIVE BY THE TRACER - 6 chain(s) the tracer's own engine found while capturing, as stored in causal_chains"
        ),
        "{out}"
    );
    for (id, severity, summary) in RECORDED {
        assert!(
            out.contains(&format!("[{severity}] [recorded live] [{NODE}] {summary}\n")),
            "{id} is shown as recorded:\n{out}"
        );
        assert!(out.contains(&format!("(id {NODE}:{id})")), "{out}");
    }
    assert!(
        out.contains("mostly by cpu-hog (999)"),
        "names from its process_names, which has no node column:\n{out}"
    );
    assert!(!out.contains("  Fix: \n"), "no empty fix line:\n{out}");
    // Ours come first, unmarked: the preempted launches.
    let ours = out.find(&format!("] [{NODE}] cuLaunchKernel p99="));
    let theirs = out.find("RECORDED LIVE BY THE TRACER");
    assert!(
        ours.is_some() && ours < theirs,
        "this engine's chain, then the recorded ones:\n{out}"
    );

    // Stored, our chains are not taken for recorded ones on the next run.
    let first = explain_json(&db_s, true)?;
    let ours = first["chains"].as_array().map_or(0, Vec::len);
    assert!(ours >= 1, "{first:#}");
    let again = explain_json(&db_s, false)?;
    let recorded: Vec<&str> = again["recorded"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        recorded,
        [
            "a100-1:chain-002",
            "a100-1:chain-001",
            "a100-1:chain-004",
            "a100-1:chain-003",
            "a100-1:chain-006",
            "a100-1:chain-005"
        ],
        "the six recorded chains, most severe and latest first, and nothing of ours"
    );
    assert_eq!(again["chains"].as_array().map_or(0, Vec::len), ours);
    let conn = open(&db)?;
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM causal_chains")?,
        6 + ours as i64,
        "both kinds live in the one table"
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM causal_chains WHERE window_from IS NULL"
        )?,
        6
    );
    let last = &again["recorded"][4];
    assert_eq!(last["recommendations"], serde_json::json!([]), "'' reads as none");
    assert_eq!(last["timeline"][0]["detail"], "10 events");
    Ok(())
}

#[test]
fn a_sampled_database_is_said_to_be_one_and_counted_from_its_aggregates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = original_db(dir.path())?.display().to_string();

    let (code, out, err) = ingero(&["explain", "--no-save", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "note: a100-1: the stored events are a sample: event_aggregates counts 20,000 calls of 1 operation(s) where events holds 200 (cuLaunchKernel 200 of 20,000); their counts and time in calls come from the aggregates"
        ),
        "{out}"
    );
    assert!(
        out.contains("over 200 stored calls (a sample of the 20000 counted)"),
        "the tail says what it was measured on:\n{out}"
    );

    let v = explain_json(&db, false)?;
    let node = &v["nodes"][0];
    assert_eq!(node["sampled"].as_array().map_or(0, Vec::len), 1, "{node:#}");
    assert_eq!(node["sampled"][0]["stored"], STORED);
    assert_eq!(node["sampled"][0]["counted"], COUNTED);
    let op = |name: &str| {
        node["ops"]
            .as_array()
            .and_then(|ops| ops.iter().find(|o| o["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let launch = op("cuLaunchKernel");
    assert_eq!(
        launch["count"], COUNTED,
        "counted from the aggregates: {launch:#}"
    );
    assert_eq!(
        launch["total_ns"],
        (COUNTED - 10) * 10_000 + 10 * 2_000_000,
        "time in the calls from the aggregates"
    );
    assert_eq!(launch["p50_ns"], 10_000, "percentiles from the sample");
    assert_eq!(op("cuCtxSynchronize")["count"], 60, "not sampled: all stored");
    Ok(())
}
