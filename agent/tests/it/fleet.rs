//! The fleet commands (`ingero query/explain/export --nodes`) against real
//! agents on loopback ports, over mutual TLS: `ingero serve` over the
//! investigation samples and over simulator runs, agents whose clocks are
//! shifted with libfaketime, and live `ingero trace --listen` agents.

use std::{
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

use crate::common::{Daemon, Pki, SampleFleet, Workload, ingero, root_or_skip, sample, serial};
use anyhow::Context;
use serde_json::Value;

/// The same SQL on the merged sample database, locally.
fn local(sql: &str) -> anyhow::Result<Vec<Vec<Value>>> {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let (code, out, err) = ingero(&["query", "--json", "-d", db.to_str().context("path")?, sql])?;
    anyhow::ensure!(code == 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    Ok(serde_json::from_value(v["rows"].clone())?)
}

#[test]
fn a_query_goes_to_every_node_and_comes_back_with_a_node_column() -> anyhow::Result<()> {
    let f = SampleFleet::start(&[])?;
    let (code, out, err) = f.ingero(&["query", "SELECT count(*) AS n FROM events"], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let expected = local("SELECT node, count(*) FROM events GROUP BY node ORDER BY node")?;
    for row in &expected {
        let (node, n) = (row[0].as_str().unwrap_or_default(), row[1].as_i64().unwrap_or(-1));
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [node, &n.to_string()]),
            "{node} {n} in:\n{out}"
        );
    }
    assert!(out.trim_end().ends_with("3 rows from 3 nodes"), "{out}");
    assert!(err.is_empty(), "no warnings: {err}");

    let (code, out, _) = f.ingero(&["query", "--json", "SELECT count(*) AS n FROM events"], &f.addrs)?;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["columns"], serde_json::json!(["node", "n"]));
    let nodes = v["nodes"].as_array().context("nodes")?;
    assert_eq!(nodes.len(), 3);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["address"], f.addrs[i].as_str());
        assert_eq!(n["node"], format!("gpu-node-{:02}", i + 1));
        assert_eq!(n["ok"], true);
        assert!(n["clock"]["error_ns"].as_i64().is_some(), "{n}");
    }
    Ok(())
}

#[test]
fn a_query_that_selects_node_itself_gets_one_node_column() -> anyhow::Result<()> {
    let f = SampleFleet::start(&[])?;
    let sql = "SELECT node, source, count(*) AS cnt, sum(duration) AS total_ns FROM events GROUP BY node, source ORDER BY node, source";
    let expected = local(sql)?;
    anyhow::ensure!(expected.len() >= 3, "the samples have several sources per node");

    // The table: one `node` column, each row's own node.
    let (code, out, err) = f.ingero(&["query", sql], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["node", "source", "cnt", "total_ns"], "{out}");
    for row in &expected {
        let cells: Vec<String> = row
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == cells),
            "{cells:?} in:\n{out}"
        );
    }
    assert!(
        out.trim_end()
            .ends_with(&format!("{} rows from 3 nodes", expected.len())),
        "{out}"
    );

    // JSON: the same columns, the same rows as the merged database gives.
    let (code, out, err) = f.ingero(&["query", "--json", sql], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(
        v["columns"],
        serde_json::json!(["node", "source", "cnt", "total_ns"])
    );
    let rows: Vec<Vec<Value>> = serde_json::from_value(v["rows"].clone())?;
    assert_eq!(rows, expected);

    // --merge: the `fleet` table has one `node` column to group by.
    let (code, out, err) = f.ingero(
        &[
            "query",
            "--json",
            "--merge",
            "SELECT node, sum(cnt) AS n FROM fleet GROUP BY node ORDER BY node",
            sql,
        ],
        &f.addrs,
    )?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["columns"], serde_json::json!(["node", "n"]));
    let merged: Vec<Vec<Value>> = serde_json::from_value(v["rows"].clone())?;
    assert_eq!(
        merged,
        local("SELECT node, count(*) FROM events GROUP BY node ORDER BY node")?
    );
    Ok(())
}

#[test]
fn merge_answers_over_all_rows_not_per_node_answers_glued_together() -> anyhow::Result<()> {
    let f = SampleFleet::start(&[])?;
    let q = |sql: &str, merge: &str| -> anyhow::Result<Vec<Vec<Value>>> {
        let (code, out, err) = f.ingero(
            &["query", "--json", "--limit", "50000", "--merge", merge, sql],
            &f.addrs,
        )?;
        anyhow::ensure!(code == 0, "{err}");
        let v: Value = serde_json::from_str(&out)?;
        Ok(serde_json::from_value(v["rows"].clone())?)
    };
    // A global count.
    assert_eq!(
        q("SELECT count(*) AS n FROM events", "SELECT sum(n) FROM fleet")?,
        local("SELECT count(*) FROM events")?
    );
    // A global p99 from every node's raw durations.
    let launches = "SELECT duration FROM events WHERE source = 4 AND op = 1";
    let p99 = |table: &str, filter: &str| {
        format!(
            "SELECT duration FROM {table} {filter} ORDER BY duration LIMIT 1 OFFSET (SELECT count(*) * 99 / 100 FROM {table} {filter})"
        )
    };
    let global = q(launches, &p99("fleet", ""))?;
    assert_eq!(global, local(&p99("events", "WHERE source = 4 AND op = 1"))?);
    // Not the same as the largest of the per-node p99s: that is what
    // gluing answers together would give.
    let per_node = q(
        &p99("events", "WHERE source = 4 AND op = 1"),
        "SELECT max(duration) FROM fleet",
    )?;
    assert_ne!(
        per_node, global,
        "the sample nodes' tails differ, so the two must too"
    );
    // A top-3 across nodes, with the node each came from.
    let top = q(
        "SELECT duration, id FROM events WHERE source = 4 ORDER BY duration DESC LIMIT 3",
        "SELECT node, duration FROM fleet ORDER BY duration DESC LIMIT 3",
    )?;
    assert_eq!(
        top,
        local("SELECT node, duration FROM events WHERE source = 4 ORDER BY duration DESC LIMIT 3")?
    );
    // --merge without nodes is a usage error.
    let (code, _, err) = ingero(&[
        "query",
        "--merge",
        "SELECT 1",
        "-d",
        "/nonexistent.db",
        "SELECT 1",
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--nodes"), "{err}");
    Ok(())
}

#[test]
fn failed_nodes_are_named_with_the_reason_and_the_exit_code_says_partial() -> anyhow::Result<()> {
    let mut f = SampleFleet::start(&[])?;
    // An agent whose certificate comes from another CA.
    let other = Pki::new(f.dir.path().join("other-pki"))?;
    let db = sample(&f.dir.path().join("pki"), 1)?;
    let mut foreign = other.serve_as("gpu-node-01", &db, &[], &[])?;
    // A port that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let silent_addr = silent.local_addr()?.to_string();
    // A stopped agent.
    let stopped = f.agents.remove(1);
    let stopped_addr = f.addrs[1].clone();
    drop(stopped);
    let addrs = vec![
        f.addrs[0].clone(),
        stopped_addr.clone(),
        f.addrs[2].clone(),
        foreign.api_addr()?,
        silent_addr.clone(),
    ];
    let started = Instant::now();
    let (code, out, err) = f.ingero(
        &["query", "--node-timeout", "2s", "SELECT count(*) FROM events"],
        &addrs,
    )?;
    let took = started.elapsed();
    assert_eq!(code, 3, "partial answers exit 3\n{out}\n{err}");
    assert!(
        out.contains("gpu-node-01") && out.contains("gpu-node-03"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with("2 rows from 2 nodes (3 of 5 did not answer)"),
        "{out}"
    );
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("no answer")).collect();
    assert_eq!(warnings.len(), 3, "one line per failed node:\n{err}");
    let line = |addr: &str| {
        warnings
            .iter()
            .find(|l| l.contains(addr))
            .copied()
            .unwrap_or_default()
    };
    assert!(line(&stopped_addr).contains("cannot connect"), "{err}");
    assert!(
        line(&foreign.api_addr()?).contains("TLS handshake failed"),
        "{err}"
    );
    assert!(line(&silent_addr).contains("timed out"), "{err}");
    assert!(
        took < Duration::from_secs(8),
        "bounded by the node timeout: {took:?}"
    );

    // Nobody answering is its own exit code.
    let (code, _, err) = f.ingero(
        &["query", "--node-timeout", "1s", "SELECT 1"],
        &[stopped_addr, silent_addr.clone()],
    )?;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("none of the 2 node(s) answered"), "{err}");
    // SQL every node refuses is bad input, not an outage.
    let (code, _, err) = f.ingero(&["query", "--node-timeout", "1s", "DELETE FROM events"], &addrs)?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("read-only"), "{err}");
    Ok(())
}

/// The injected offsets of the three agents, ns.
const SHIFTS: [i64; 3] = [0, 3_000_000_000, -1_500_000_000];

#[test]
fn clock_offsets_are_estimated_within_their_bound_and_correct_the_timelines() -> anyhow::Result<()> {
    let f = SampleFleet::start(&[&[], &["faketime", "-f", "+3s"], &["faketime", "-f", "-1.5s"]])?;
    let (code, out, err) = f.ingero(&["query", "--json", "SELECT 1"], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    for (i, n) in v["nodes"].as_array().context("nodes")?.iter().enumerate() {
        let (offset, error) = (
            n["clock"]["offset_ns"].as_i64().unwrap_or(i64::MIN),
            n["clock"]["error_ns"].as_i64().unwrap_or(0),
        );
        assert!(
            (offset - SHIFTS[i]).abs() <= error,
            "{}: estimated {offset} ± {error} ns, injected {} ns",
            n["node"],
            SHIFTS[i]
        );
        assert!(error < 50_000_000, "a loopback bound is tight: {error} ns");
    }
    assert!(
        err.contains("gpu-node-02's clock is 3.00 s ahead of ours"),
        "{err}"
    );
    assert!(err.contains("gpu-node-03's clock is 1.50 s behind ours"), "{err}");
    assert!(!err.contains("gpu-node-01's clock"), "{err}");

    // Fleet explain moves each chain onto our clock.
    let (code, out, err) = f.ingero(&["explain", "--json"], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let fleet: Value = serde_json::from_str(&out)?;
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-03.db");
    let (_, out, _) = ingero(&[
        "explain",
        "--json",
        "--no-save",
        "-d",
        db.to_str().context("path")?,
    ])?;
    let raw: Value = serde_json::from_str(&out)?;
    let raw_chain = &raw["chains"][0];
    let moved = fleet["chains"]
        .as_array()
        .context("chains")?
        .iter()
        .find(|c| c["id"] == raw_chain["id"])
        .context("the node's chain is in the fleet answer")?;
    let shift = raw_chain["peak_at"].as_i64().unwrap_or(0) - moved["peak_at"].as_i64().unwrap_or(0);
    assert!(
        (shift - SHIFTS[2]).abs() < 50_000_000,
        "peak moved by {shift} ns, expected {}",
        SHIFTS[2]
    );

    // Fleet export shifts each node's process track the same way.
    let out_dir = tempfile::tempdir()?;
    let trace = out_dir.path().join("cluster.json");
    let (code, _, err) = f.ingero(
        &[
            "export",
            "--format",
            "perfetto",
            "-o",
            trace.to_str().context("path")?,
        ],
        &f.addrs,
    )?;
    assert_eq!(code, 0, "{err}");
    let local_trace = out_dir.path().join("local.json");
    let cluster = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let (code, _, err) = ingero(&[
        "export",
        "--format",
        "perfetto",
        "-d",
        cluster.to_str().context("path")?,
        "-o",
        local_trace.to_str().context("path")?,
    ])?;
    assert_eq!(code, 0, "{err}");
    let first_slice = |path: &Path, node: &str| -> anyhow::Result<f64> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let events = v["traceEvents"].as_array().context("traceEvents")?;
        let pid = events
            .iter()
            .find(|e| {
                e["ph"] == "M"
                    && e["name"] == "process_name"
                    && e["args"]["name"].as_str().is_some_and(|n| n.starts_with(node))
            })
            .and_then(|e| e["pid"].as_i64())
            .context("node process")?;
        Ok(events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"].as_i64() == Some(pid))
            .filter_map(|e| e["ts"].as_f64())
            .fold(f64::MAX, f64::min))
    };
    for (i, node) in ["gpu-node-02", "gpu-node-03"].iter().enumerate() {
        let fleet_gap = first_slice(&trace, node)? - first_slice(&trace, "gpu-node-01")?;
        let local_gap = first_slice(&local_trace, node)? - first_slice(&local_trace, "gpu-node-01")?;
        let moved_us = local_gap - fleet_gap;
        let expected_us = SHIFTS[i + 1] as f64 / 1e3;
        assert!(
            (moved_us - expected_us).abs() < 50_000.0,
            "{node}: moved {moved_us} µs, expected {expected_us} µs"
        );
    }
    // The native trace keeps each node's clock; its clock snapshot carries
    // the estimated offset instead.
    let native = out_dir.path().join("cluster.pftrace");
    let (code, _, err) = f.ingero(
        &[
            "export",
            "--format",
            "perfetto",
            "-o",
            native.to_str().context("path")?,
        ],
        &f.addrs,
    )?;
    assert_eq!(code, 0, "{err}");
    let v = crate::perfetto::check(&native)?;
    let seqs = v["sequences"].as_object().context("sequences")?;
    assert_eq!(seqs.len(), 3);
    for s in seqs.values() {
        let label = s["node"].as_str().unwrap_or_default();
        let i = ["gpu-node-01", "gpu-node-02", "gpu-node-03"]
            .iter()
            .position(|n| label.starts_with(n))
            .context("a sample node")?;
        let offset = s["clock"].as_i64().unwrap_or(0) - s["realtime"].as_i64().unwrap_or(0);
        assert!(
            (offset - SHIFTS[i]).abs() < 50_000_000,
            "{label}: snapshot offset {offset} ns, injected {} ns",
            SHIFTS[i]
        );
    }
    Ok(())
}

#[test]
fn fleet_explain_tags_chains_with_nodes_and_names_the_sample_straggler() -> anyhow::Result<()> {
    let f = SampleFleet::start(&[])?;
    let (code, out, err) = f.ingero(&["explain"], &f.addrs)?;
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("FLEET CAUSAL CHAINS - ") && first.contains("from 3 node(s)"),
        "{out}"
    );
    let straggler = out.lines().nth(1).unwrap_or_default();
    assert!(straggler.starts_with("STRAGGLER gpu-node-03 (rank 2): "), "{out}");
    assert!(straggler.contains("CPU: its threads preempted"), "{straggler}");
    assert!(out.contains("gpu-node-03 <- straggler"), "{out}");
    // Every chain block names its node; HIGH chains come first.
    let blocks: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert!(!blocks.is_empty());
    assert!(blocks.iter().all(|b| b.contains("] [gpu-node-0")), "{blocks:?}");
    let rank = |b: &&str| {
        if b.starts_with("[HIGH]") {
            0
        } else if b.starts_with("[MEDIUM]") {
            1
        } else {
            2
        }
    };
    assert!(
        blocks.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{blocks:?}"
    );
    Ok(())
}

#[test]
fn live_agents_answer_while_they_trace() -> anyhow::Result<()> {
    if !root_or_skip("live_agents_answer_while_they_trace") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut workloads = Vec::new();
    let mut tracers = Vec::new();
    let mut addrs = Vec::new();
    for n in 1..=2 {
        let node = format!("gpu-node-{n:02}");
        let mut w = Workload::start(
            &ingero_sim::dir().join("ingero-sim-workload"),
            &["rate", "--calls", "20000", "--per-sec", "5000"],
            &[],
        )?;
        let mut args: Vec<String> = vec![
            "--pid".into(),
            w.pid.to_string(),
            "-q".into(),
            "--node".into(),
            node.clone(),
        ];
        args.extend(pki.agent_flags(&node));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut t = Daemon::trace(&dir.path().join(format!("{node}.db")), &args)?;
        addrs.push(t.api_addr()?);
        w.go()?;
        workloads.push(w);
        tracers.push(t);
    }
    // Wait until each agent has committed some of its node's driver calls.
    let deadline = Instant::now() + Duration::from_secs(20);
    for t in &tracers {
        let conn = crate::common::open(&t.db)?;
        while crate::common::scalar(&conn, "SELECT count(*) FROM events WHERE source = 4")? <= 100 {
            anyhow::ensure!(Instant::now() < deadline, "no driver calls committed in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut full = vec![
        "query".to_owned(),
        "--json".into(),
        "--nodes".into(),
        addrs.join(","),
    ];
    full.extend(pki.client_flags());
    full.push("SELECT count(*) AS n FROM events WHERE source = 4".into());
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (code, out, err) = ingero(&full)?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let rows = v["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 2, "{v}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], format!("gpu-node-{:02}", i + 1));
        assert!(
            row[1].as_i64().unwrap_or(0) > 100,
            "events recorded and committed while tracing: {row}"
        );
    }
    for w in workloads {
        w.finish()?;
    }
    for t in tracers {
        t.stop()?;
    }
    Ok(())
}

/// A three-node simulated job with `fault` on node `faulty` (0-based),
/// traced for real, then served by three agents and explained across them:
/// the straggler verdict must name that node and the fault's cause.
fn straggler_of(fault: ingero_sim::cluster::Fault, faulty: usize, cause: &[&str]) -> anyhow::Result<()> {
    use ingero_sim::cluster::{ClusterConfig, node_name, run};
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let cfg = ClusterConfig {
        ingero: crate::common::INGERO.into(),
        nodes: 3,
        steps: 40,
        faults: vec![fault],
        faulty_node: faulty,
        run_dir: dir.path().join("run"),
        cudart: ingero_sim::libcudart(),
        agent_args: Vec::new(),
    };
    let report = run(
        &cfg,
        &mut |line| eprintln!("{line}"),
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for (node, db) in &report.databases {
        let mut agent = pki.serve_as(node, db, &[], &[])?;
        addrs.push(agent.api_addr()?);
        agents.push(agent);
    }
    let mut full = vec![
        "explain".to_owned(),
        "--json".into(),
        "--nodes".into(),
        addrs.join(","),
    ];
    full.extend(pki.client_flags());
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (code, out, err) = ingero(&full)?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let s = &v["straggler"];
    eprintln!("{}: {s}", fault.name());
    assert_eq!(
        s["node"],
        node_name(faulty),
        "{} on {}: {s}\n{:#?}",
        fault.name(),
        node_name(faulty),
        v["nodes"]
    );
    let causes: Vec<&str> = s["causes"]
        .as_array()
        .context("causes")?
        .iter()
        .filter_map(|c| c["stress"].as_str())
        .collect();
    assert!(
        causes.iter().any(|c| cause.contains(c)),
        "{}: causes {causes:?}, expected one of {cause:?}\n{s}",
        fault.name()
    );
    assert!(
        s["peers_wait_share"].as_f64().unwrap_or(0.0) > s["wait_share"].as_f64().unwrap_or(1.0) * 1.25,
        "{s}"
    );
    Ok(())
}

#[test]
fn fleet_explain_finds_a_cpu_contended_straggler_on_the_third_node() -> anyhow::Result<()> {
    if !root_or_skip("fleet_explain_finds_a_cpu_contended_straggler") {
        return Ok(());
    }
    straggler_of(ingero_sim::cluster::Fault::CpuContention, 2, &["cpu"])
}

#[test]
fn fleet_explain_finds_a_checkpointing_straggler_on_the_first_node() -> anyhow::Result<()> {
    if !root_or_skip("fleet_explain_finds_a_checkpointing_straggler") {
        return Ok(());
    }
    straggler_of(ingero_sim::cluster::Fault::CheckpointIo, 0, &["io", "write"])
}

#[test]
fn fleet_explain_finds_a_memory_pressured_straggler_on_the_second_node() -> anyhow::Result<()> {
    if !root_or_skip("fleet_explain_finds_a_memory_pressured_straggler") {
        return Ok(());
    }
    straggler_of(ingero_sim::cluster::Fault::MemoryPressure, 1, &["memory"])
}
