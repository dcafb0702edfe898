//! What `ingero explain` prints about a database or a fleet: the span of
//! data it analysed (whatever window was asked for), and common-mode
//! findings said once. Works on copies of the investigation samples and on
//! small jobs written by hand ([`job_db`]), served by real agents on
//! loopback for the fleet form; no root needed.

use std::path::{Path, PathBuf};

use agent_common::catalog::{driver_op, host_op, source};
use serde_json::Value;

use crate::common::{Pki, ingero, open, scalar};

/// Unix ns the hand-written jobs start at.
const T0: i64 = 1_795_262_400_000_000_000;

/// A database holding `nodes` (the schema of a sample, its data replaced)
/// where, on every node, 10 of the 200 kernel launches of rank `python`
/// (pid 100) take 2 ms, each preempted by a sibling rank (`python`, pid
/// 200, which makes CUDA calls too): the ranks share their cores, the same
/// on every node. On the `noisy` nodes, 10 of 200 host-to-device copies are
/// slow as well, each preempted by `cpu-hog` (999): that is node-specific.
fn job_db(dir: &Path, file: &str, nodes: &[&str], noisy: &[&str]) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-01.db");
    let db = dir.join(file);
    std::fs::copy(&src, &db)?;
    let conn = open(&db)?;
    conn.execute_batch(
        "DELETE FROM events; DELETE FROM process_names; DELETE FROM causal_chains;
         DELETE FROM system_snapshots; DELETE FROM event_aggregates; DELETE FROM sessions; DELETE FROM drops;",
    )?;
    let (drv, host, launch, htod, switch) = (
        source::DRIVER,
        source::HOST,
        driver_op::LAUNCH_KERNEL,
        driver_op::MEMCPY_HTOD,
        host_op::SCHED_SWITCH,
    );
    for node in nodes {
        // Calls every 5 ms; the slow ones (every 20th, offset `at`) take 2 ms
        // and are preempted for 1 ms by `by`.
        let calls = |op: u8, tag: &str, at: i64, offset_ns: i64, by: u32| {
            format!(
                "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n < 199),
                      c(n, start, d) AS (SELECT n, {T0} + n * 5000000 + {offset_ns},
                                         CASE WHEN n % 20 = {at} THEN 2000000 ELSE 10000 END FROM i)
                 INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, node)
                   SELECT '{node}:{tag}' || n, start + d, 100, 100, {drv}, {op}, d, 4, '{node}' FROM c;
                 WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 20 FROM i WHERE n < 180)
                 INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, arg1, node)
                   SELECT '{node}:{tag}s' || n, {T0} + (n + {at}) * 5000000 + {offset_ns} + 1001000, 100, 100,
                          {host}, {switch}, 1000000, 1, {by}, '{node}' FROM i;"
            )
        };
        conn.execute_batch(&calls(launch, "l", 0, 0, 200))?;
        if noisy.contains(node) {
            conn.execute_batch(&calls(htod, "c", 10, 2_500_000, 999))?;
        }
        conn.execute_batch(&format!(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node) VALUES
               ('{node}:r1', {T0} + 1000000, 200, 200, {drv}, {launch}, 10000, '{node}'),
               ('{node}:r2', {T0} + 900000000, 200, 200, {drv}, {launch}, 10000, '{node}');
             INSERT INTO process_names(node, pid, name) VALUES
               ('{node}', 100, 'python'), ('{node}', 200, 'python'), ('{node}', 999, 'cpu-hog');"
        ))?;
    }
    Ok(db)
}

#[test]
fn a_condition_on_every_node_is_said_once_after_the_node_specific_chains() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = ["gpu-node-01", "gpu-node-02", "gpu-node-03"];
    let db = job_db(dir.path(), "cluster.db", &nodes, &["gpu-node-03"])?;
    let db = db.display().to_string();

    let (code, out, err) = ingero(&["explain", "--no-save", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    let blocks: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(
        blocks.len(),
        2,
        "the node-specific chain, then the common finding once:\n{out}"
    );
    assert!(
        blocks[0].starts_with("[HIGH] [gpu-node-03] cuMemcpyHtoD_v2"),
        "{out}"
    );
    assert!(
        blocks[1].starts_with(
            "[HIGH] on all 3 nodes: cuLaunchKernel p99 2.00ms (200.0x p50) - CPU contention within the job"
        ),
        "{out}"
    );
    assert!(
        out.contains("\nCOMMON TO ALL NODES - 1 condition seen on every node, said once for its 3 chains (--all lists them):\n"),
        "{out}"
    );
    assert!(
        out.contains("by the job's own processes (sibling ranks 100%)"),
        "{out}"
    );
    assert!(
        out.contains("CPU contention from outside the job") && out.contains("mostly by cpu-hog (999)"),
        "{out}"
    );

    // --all: every chain, as before.
    let (code, out, err) = ingero(&["explain", "--no-save", "--all", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    let blocks: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(blocks.len(), 4, "{out}");
    for node in nodes {
        assert!(
            blocks
                .iter()
                .any(|b| b.starts_with(&format!("[HIGH] [{node}] cuLaunchKernel"))),
            "{out}"
        );
    }
    assert!(!out.contains("COMMON TO ALL NODES"), "{out}");

    // JSON: every chain, and the finding that stands for three of them.
    let (code, out, err) = ingero(&["explain", "--no-save", "--json", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["chains"].as_array().map(Vec::len), Some(4));
    let common = v["common"].as_array().cloned().unwrap_or_default();
    assert_eq!(common.len(), 1, "{v:#}");
    assert_eq!(common[0]["cause"], "CPU contention within the job");
    assert_eq!(common[0]["rule"], "tail-cuLaunchKernel");
    assert_eq!(common[0]["severity"], "HIGH");
    let members: Vec<&str> = common[0]["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["node"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(members, nodes);
    Ok(())
}

/// A fresh copy of the merged three-node sample, in `dir`.
fn sample_cluster(dir: &Path) -> anyhow::Result<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let dst = dir.join("cluster.db");
    std::fs::copy(&src, &dst)?;
    Ok(dst.display().to_string())
}

#[test]
fn a_long_since_reports_the_span_of_the_recorded_data_in_human_units() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_cluster(dir.path())?;
    let conn = open(Path::new(&db))?;
    let span_s = scalar(
        &conn,
        "SELECT (max(timestamp) - min(timestamp)) / 1000000000 FROM events",
    )?;
    anyhow::ensure!((10..60).contains(&span_s), "the sample spans {span_s} s");

    let (code, all, err) = ingero(&["explain", "--no-save", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    let (code, year, err) = ingero(&["explain", "--no-save", "-d", &db, "--since", "8760h"])?;
    assert_eq!(code, 0, "{err}");
    let head = year.lines().next().unwrap_or_default();
    assert!(
        !head.contains("31536000"),
        "the window asked is not the span: {head}"
    );
    assert!(
        head.contains(&format!(" over {span_s}.")) && head.contains(" s of recorded data ("),
        "the recorded span ({span_s} s) in seconds: {head}"
    );
    assert!(head.ends_with("; last 365d asked"), "{head}");
    assert_eq!(
        head.trim_end_matches("; last 365d asked"),
        all.lines().next().unwrap_or_default(),
        "a window wider than the recording analyses the same data"
    );
    assert_eq!(
        year.lines().skip(1).collect::<Vec<_>>(),
        all.lines().skip(1).collect::<Vec<_>>(),
        "and finds the same straggler and chains"
    );
    Ok(())
}

#[test]
fn fleet_explain_says_a_condition_of_every_node_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for node in ["gpu-node-01", "gpu-node-02", "gpu-node-03"] {
        let noisy: &[&str] = if node == "gpu-node-02" { &[node] } else { &[] };
        let db = job_db(dir.path(), &format!("{node}.db"), &[node], noisy)?;
        let mut agent = pki.serve_as(node, &db, &[], &[])?;
        addrs.push(agent.api_addr()?);
        agents.push(agent);
    }
    let explain = |extra: &[&str]| -> anyhow::Result<String> {
        let mut full: Vec<String> = vec!["explain".into(), "--nodes".into(), addrs.join(",")];
        full.extend(extra.iter().map(|s| (*s).to_owned()));
        full.extend(pki.client_flags());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, out, err) = ingero(&full)?;
        anyhow::ensure!(code == 0, "{err}");
        Ok(out)
    };
    let out = explain(&[])?;
    let blocks: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(blocks.len(), 2, "{out}");
    assert!(
        blocks[0].starts_with("[HIGH] [gpu-node-02] cuMemcpyHtoD_v2"),
        "{out}"
    );
    assert!(
        blocks[1].starts_with("[HIGH] on all 3 nodes: cuLaunchKernel")
            && blocks[1].contains("CPU contention within the job"),
        "{out}"
    );
    assert!(
        out.contains("Worst at: "),
        "node-specific chains keep their time: {out}"
    );

    let out = explain(&["--all"])?;
    assert_eq!(out.lines().filter(|l| l.starts_with('[')).count(), 4, "{out}");

    let v: Value = serde_json::from_str(&explain(&["--json"])?)?;
    assert_eq!(v["chains"].as_array().map(Vec::len), Some(4), "{v:#}");
    assert_eq!(
        v["common"][0]["members"].as_array().map(Vec::len),
        Some(3),
        "{v:#}"
    );
    assert_eq!(v["common"][0]["cause"], "CPU contention within the job");
    Ok(())
}
