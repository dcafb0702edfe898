//! Collectives across ranks, on simulated 4-rank jobs traced for real
//! (root; skipped otherwise): the stub NCCL makes every collective a real
//! barrier among the ranks, so a late rank holds the others back exactly as
//! on a GPU cluster. The straggler must be named from the collectives'
//! arrival order on whichever node the fault is, no straggler without a
//! fault, and a rank that never arrives must be named by live agents while
//! the job is hung.

use std::{
    fmt::Write as _,
    net::TcpListener,
    path::Path,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::Context;
use ingero_sim::cluster::{ClusterConfig, ClusterReport, Fault, RunOptions, node_name, run, run_with};

use crate::common::{ingero, root_or_skip, serial};

const NODES: usize = 4;
/// `--hang-after` of the live hang test: short, so the test is short.
const HANG_AFTER_S: u64 = 5;

fn config(dir: &Path, faults: Vec<Fault>, faulty_node: usize, steps: u64) -> ClusterConfig {
    ClusterConfig {
        ingero: crate::common::INGERO.into(),
        nodes: NODES,
        steps,
        faults,
        faulty_node,
        run_dir: dir.to_path_buf(),
        cudart: None,
        agent_args: Vec::new(),
    }
}

/// `ingero explain --json` of the run's databases merged.
fn merged_explain(dir: &Path, report: &ClusterReport) -> anyhow::Result<serde_json::Value> {
    let merged = dir.join("merged.db").display().to_string();
    let mut args: Vec<String> = vec!["merge".into()];
    args.extend(report.databases.iter().map(|(_, p)| p.display().to_string()));
    args.extend(["-o".into(), merged.clone()]);
    let (code, _, err) = ingero(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    anyhow::ensure!(code == 0, "merge failed: {err}");
    let (code, out, err) = ingero(&["explain", "--json", "--no-save", "-d", &merged])?;
    anyhow::ensure!(code == 0, "explain failed ({code}): {err}");
    Ok(serde_json::from_str(&out)?)
}

/// The node the collectives name as the straggler, if any.
fn collective_straggler(v: &serde_json::Value) -> Option<String> {
    v["collectives"]["lateness"]["straggler"]["node"]
        .as_str()
        .map(str::to_owned)
}

/// One line per rank of the lateness report: lasts against chance, margin,
/// time held back.
fn lateness_table(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for r in v["collectives"]["lateness"]["ranks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = write!(
            out,
            "\n  {} on {}: last {}/{} (expected {:.1}, z {:.1}), margin p50 {} us (clock bound {} us), held back {} ms",
            r["node"].as_str().unwrap_or("?"),
            r["comm_id"].as_str().unwrap_or("?").get(..8).unwrap_or("?"),
            r["last"],
            r["collectives"],
            r["expected_last"].as_f64().unwrap_or(0.0),
            r["z"].as_f64().unwrap_or(0.0),
            r["margin_p50_ns"].as_i64().unwrap_or(0) / 1000,
            r["bound_p50_ns"].as_i64().unwrap_or(0) / 1000,
            r["held_back_ns"].as_i64().unwrap_or(0) / 1_000_000,
        );
    }
    out
}

fn run_scenario(faults: Vec<Fault>, faulty: usize) -> anyhow::Result<(tempfile::TempDir, ClusterReport)> {
    let dir = tempfile::tempdir()?;
    let report = run(
        &config(dir.path(), faults, faulty, 60),
        &mut |line| eprintln!("{line}"),
        &AtomicBool::new(false),
    )?;
    anyhow::ensure!(report.survivors.is_empty(), "survivors: {:?}", report.survivors);
    Ok((dir, report))
}

#[test]
fn the_late_rank_is_named_from_the_collectives_wherever_the_fault_is() -> anyhow::Result<()> {
    if !root_or_skip("the_late_rank_is_named_from_the_collectives") {
        return Ok(());
    }
    let _guard = serial();
    for (fault, faulty) in [
        (Fault::SlowRank, 2),
        (Fault::CpuContention, 1),
        (Fault::CheckpointIo, 3),
    ] {
        let (dir, report) = run_scenario(vec![fault], faulty)?;
        let v = merged_explain(dir.path(), &report)?;
        let matched = v["collectives"]["matched"].as_u64().unwrap_or(0);
        // On stderr before the asserts: a CI log that cuts the panic
        // message short still shows what each rank measured.
        eprintln!("{}: {}", fault.name(), lateness_table(&v));
        assert!(
            matched >= 60,
            "{}: {matched} collectives matched across ranks",
            fault.name()
        );
        assert_eq!(
            collective_straggler(&v).as_deref(),
            Some(node_name(faulty).as_str()),
            "{}: {}",
            fault.name(),
            v["collectives"]["lateness"]
        );
    }
    Ok(())
}

#[test]
fn without_a_fault_no_rank_is_named() -> anyhow::Result<()> {
    if !root_or_skip("without_a_fault_no_rank_is_named") {
        return Ok(());
    }
    let _guard = serial();
    let (dir, report) = run_scenario(Vec::new(), 0)?;
    let v = merged_explain(dir.path(), &report)?;
    eprintln!("none: {}", lateness_table(&v));
    assert!(v["collectives"]["matched"].as_u64().unwrap_or(0) >= 60);
    assert_eq!(collective_straggler(&v), None, "{}", v["collectives"]["lateness"]);
    assert_eq!(v["hung"], false);
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn live_agents_name_the_rank_missing_from_a_hung_collective() -> anyhow::Result<()> {
    if !root_or_skip("live_agents_name_the_rank_missing_from_a_hung_collective") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let faulty = 2;
    let mut cfg = config(dir.path(), vec![Fault::Hang], faulty, 40);
    let mut addrs = Vec::new();
    for _ in 0..NODES {
        let addr = format!("127.0.0.1:{}", free_port()?);
        cfg.agent_args
            .push(vec!["--listen".into(), addr.clone(), "--no-tls".into()]);
        addrs.push(addr);
    }
    let nodes = addrs.join(",");
    let hang_after = format!("{HANG_AFTER_S}s");
    let mut seen: Option<(f64, i32, serde_json::Value)> = None;
    let mut on_hang = |_: &ingero_sim::cluster::Hang| {
        // Called about 2 s after the ranks stalled: ask the live agents
        // until they report the hang, for at most the threshold + 10 s.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(HANG_AFTER_S + 10) {
            if let Ok((code, out, _)) = ingero(&[
                "explain",
                "--nodes",
                &nodes,
                "--no-tls",
                "--json",
                "--hang-after",
                &hang_after,
            ]) && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
                && v["hung"] == true
            {
                seen = Some((start.elapsed().as_secs_f64(), code, v));
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let report = run_with(
        &cfg,
        RunOptions {
            hold: Duration::ZERO,
            on_hang: Some(&mut on_hang),
            ..RunOptions::default()
        },
        &mut |line| eprintln!("{line}"),
        &AtomicBool::new(false),
    )?;
    assert!(report.hung.is_some(), "the job did not hang");
    let (after, code, v) =
        seen.context("the live agents never reported the hang within the threshold + 10 s")?;
    eprintln!("hang reported {after:.1} s after the stall was seen");
    assert_eq!(code, 5, "explain exits 5 on a hang");
    let hang = &v["collectives"]["hangs"][0];
    let missing: Vec<&str> = hang["missing"]
        .as_array()
        .context("missing")?
        .iter()
        .filter_map(|m| m["node"].as_str())
        .collect();
    assert_eq!(missing, vec![node_name(faulty).as_str()], "{hang}");
    let mut waiting: Vec<&str> = hang["waiting"]
        .as_array()
        .context("waiting")?
        .iter()
        .filter_map(|m| m["node"].as_str())
        .collect();
    waiting.sort_unstable();
    let expected: Vec<String> = (0..NODES).filter(|i| *i != faulty).map(node_name).collect();
    assert_eq!(waiting, expected.iter().map(String::as_str).collect::<Vec<_>>());
    // What the missing rank is doing, from its agent's view of /proc.
    let activity = v["collectives"]["missing_activity"][0].to_string();
    assert!(activity.contains("sleeping"), "{activity}");
    Ok(())
}
