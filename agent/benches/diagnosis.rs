//! `cargo xtask bench diagnosis`: how often the diagnosis is right, over a
//! matrix of injected faults on the simulated 4-node job, traced for real.
//!
//! Each cell runs the job once with one fault on one node (the node moves
//! from cell to cell; `none` runs three times), then scores two views of
//! it: the fleet (`ingero explain --nodes` over one agent per node serving
//! its recording: the same API and engine as live agents; a hung job is
//! asked live, while it is hung) and the merged database (`ingero explain
//! -d merged.db`). Per view: was the straggler line right (the faulty node,
//! or none for `none`), was the cause class right (CPU, I/O, memory, input
//! starvation; `slow-rank` has no host stress to name; `hang` must name the
//! missing node), and how many HIGH and MEDIUM chains landed on healthy
//! nodes. Prints every run, a confusion table and the totals against the
//! goals: the right node and cause in at least 95% of faulty runs, no
//! straggler in any `none` run, at most one MEDIUM and no HIGH chain per
//! healthy node.
//!
//! `INGERO_DIAGNOSIS_QUICK=1` runs one cell per scenario (for a smoke
//! check). Needs root; prints why it skips otherwise.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use ingero_sim::cluster::{ClusterConfig, ClusterReport, Fault, RunOptions, node_name, run_with};
use serde_json::Value;

const INGERO: &str = env!("CARGO_BIN_EXE_ingero");
const NODES: usize = 4;
const STEPS: u64 = 80;
/// Short, so a hung job is reported while the benchmark holds it hung.
const HANG_AFTER: &str = "5s";

/// What a view concluded about one run.
#[derive(Debug, Clone)]
struct Verdict {
    /// The node named as the straggler (or as missing from a hung collective).
    node: Option<String>,
    /// The cause class named for it.
    class: String,
    /// HIGH / MEDIUM chains on nodes other than the faulty one.
    healthy_high: usize,
    healthy_medium: usize,
    /// Most MEDIUM chains on one healthy node.
    healthy_medium_max: usize,
}

/// The cause class a scenario should get.
fn expected_class(fault: Option<Fault>) -> &'static str {
    match fault {
        None => "no straggler",
        Some(Fault::CpuContention) => "CPU",
        Some(Fault::CheckpointIo) => "I/O",
        Some(Fault::MemoryPressure) => "memory",
        Some(Fault::DataloaderStarvation) => "input",
        Some(Fault::SlowRank) => "compute",
        Some(Fault::Hang) => "hang",
    }
}

/// The class of the strongest cause in `causes` (`straggler_causes`).
fn class_of(causes: &Value) -> String {
    let Some(stress) = causes.get(0).and_then(|c| c["stress"].as_str()) else {
        return "compute".into();
    };
    let s = stress.to_lowercase();
    if s.contains("cpu") {
        "CPU".into()
    } else if s.contains("io") || s.contains("write") {
        "I/O".into()
    } else if s.contains("memory") {
        "memory".into()
    } else if s.contains("input") || s.contains("starv") || s.contains("loader") {
        "input".into()
    } else {
        s
    }
}

fn verdict(v: &Value, faulty: Option<&str>) -> Verdict {
    let hang = &v["collectives"]["hangs"][0];
    let (node, class) = if v["hung"] == true {
        (
            hang["missing"][0]["node"].as_str().map(str::to_owned),
            "hang".to_owned(),
        )
    } else {
        let node = v["straggler_node"].as_str().map(str::to_owned);
        let class = if node.is_some() {
            class_of(&v["straggler_causes"])
        } else {
            "no straggler".into()
        };
        (node, class)
    };
    let mut medium: BTreeMap<String, usize> = BTreeMap::new();
    let (mut high, mut med) = (0, 0);
    // Chains a common finding stands for are said once, "on all nodes":
    // they did not land on a healthy node.
    let common: Vec<&str> = v["common"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["members"].as_array().into_iter().flatten())
        .filter_map(|m| m["chain_id"].as_str())
        .collect();
    for c in v["chains"].as_array().into_iter().flatten() {
        let n = c["node"].as_str().unwrap_or_default();
        if Some(n) == faulty || common.contains(&c["id"].as_str().unwrap_or_default()) {
            continue;
        }
        match c["severity"].as_str() {
            Some("HIGH") => high += 1,
            Some("MEDIUM") => {
                med += 1;
                *medium.entry(n.to_owned()).or_default() += 1;
            }
            _ => {}
        }
    }
    Verdict {
        node,
        class,
        healthy_high: high,
        healthy_medium: med,
        healthy_medium_max: medium.values().copied().max().unwrap_or(0),
    }
}

/// The one-minute load average when a run ends: a run scored under load
/// from outside the job (other builds on the two cores) says so.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

fn ingero_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(INGERO).args(args).stdin(Stdio::null()).output()?;
    let code = out.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code == 0 || code == 5,
        "ingero {} failed ({code}): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(&String::from_utf8_lossy(&out.stdout))?)
}

fn free_addr() -> anyhow::Result<String> {
    Ok(format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    ))
}

/// `ingero serve --no-tls` per database, stopped when dropped.
struct Servers(Vec<std::process::Child>, Vec<String>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

fn serve(report: &ClusterReport, dir: &Path) -> anyhow::Result<Servers> {
    let mut s = Servers(Vec::new(), Vec::new());
    for (i, (_, db)) in report.databases.iter().enumerate() {
        let addr = free_addr()?;
        let ready = dir.join(format!("serve-{i}.json"));
        let child = Command::new(INGERO)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", &addr, "--no-tls", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        s.0.push(child);
        s.1.push(addr);
        let start = Instant::now();
        while !ready.exists() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "serve never got ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(s)
}

/// One cell: the run and both views' verdicts.
fn cell(fault: Option<Fault>, faulty: usize) -> anyhow::Result<(Verdict, Verdict)> {
    let dir = tempfile::tempdir()?;
    let mut cfg = ClusterConfig {
        ingero: INGERO.into(),
        nodes: NODES,
        steps: STEPS,
        faults: fault.into_iter().collect(),
        faulty_node: faulty,
        run_dir: dir.path().to_path_buf(),
        cudart: ingero_sim::libcudart(),
        agent_args: Vec::new(),
    };
    let mut addrs = Vec::new();
    for _ in 0..NODES {
        let addr = free_addr()?;
        cfg.agent_args
            .push(vec!["--listen".into(), addr.clone(), "--no-tls".into()]);
        addrs.push(addr);
    }
    let nodes = addrs.join(",");
    let faulty_name = fault.map(|_| node_name(faulty));
    let mut live: Option<Value> = None;
    let mut on_hang = |_: &ingero_sim::cluster::Hang| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(v) = ingero_json(&[
                "explain",
                "--nodes",
                &nodes,
                "--no-tls",
                "--json",
                "--hang-after",
                HANG_AFTER,
            ]) && v["hung"] == true
            {
                live = Some(v);
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let report = run_with(
        &cfg,
        RunOptions {
            hold: Duration::from_secs(2),
            on_hang: Some(&mut on_hang),
            ..RunOptions::default()
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )?;
    anyhow::ensure!(report.survivors.is_empty(), "processes outlived the run");
    let fleet = if let Some(v) = live {
        v
    } else {
        let servers = serve(&report, dir.path())?;
        ingero_json(&[
            "explain",
            "--nodes",
            &servers.1.join(","),
            "--no-tls",
            "--json",
            "--hang-after",
            HANG_AFTER,
        ])?
    };
    let merged = dir.path().join("merged.db").display().to_string();
    let mut args: Vec<String> = vec!["merge".into(), "-o".into(), merged.clone()];
    args.extend(report.databases.iter().map(|(_, p)| p.display().to_string()));
    let out = Command::new(INGERO).args(&args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline = ingero_json(&[
        "explain",
        "--json",
        "--no-save",
        "--hang-after",
        HANG_AFTER,
        "-d",
        &merged,
    ])?;
    Ok((
        verdict(&fleet, faulty_name.as_deref()),
        verdict(&offline, faulty_name.as_deref()),
    ))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench diagnosis skipped: tracing needs root");
        return;
    }
    let quick = std::env::var_os("INGERO_DIAGNOSIS_QUICK").is_some();
    let faults = [
        Fault::CpuContention,
        Fault::CheckpointIo,
        Fault::MemoryPressure,
        Fault::DataloaderStarvation,
        Fault::SlowRank,
        Fault::Hang,
    ];
    let mut cells: Vec<(Option<Fault>, usize)> = vec![(None, 0)];
    if !quick {
        cells.extend([(None, 0), (None, 0)]);
    }
    for (i, f) in faults.iter().enumerate() {
        cells.push((Some(*f), (i + 1) % NODES));
        if !quick && *f != Fault::Hang {
            cells.push((Some(*f), (i + 3) % NODES));
        }
    }
    println!(
        "diagnosis benchmark: {} runs of a {NODES}-node job ({STEPS} steps), each scored by fleet explain and merged explain",
        cells.len()
    );
    println!(
        "{:<22} {:<12} {:<6} {:<28} {:<28} {:<5} healthy HIGH/MEDIUM (max per node)",
        "scenario", "faulty", "view", "named", "cause", "load"
    );
    let started = Instant::now();
    let mut confusion: BTreeMap<(String, String), usize> = BTreeMap::new();
    let (mut faulty_runs, mut faulty_right, mut none_runs, mut none_right) = (0, 0, 0, 0);
    let (mut healthy_ok, mut views) = (0, 0);
    for (fault, faulty) in cells {
        let name = fault.map_or("none", Fault::name);
        let expected_node = fault.map(|_| node_name(faulty));
        let (fleet, offline) = match cell(fault, faulty) {
            Ok(v) => v,
            Err(e) => {
                println!("{name:<22} run failed: {e:#}");
                continue;
            }
        };
        let load = load_average();
        for (view, v) in [("fleet", &fleet), ("merged", &offline)] {
            views += 1;
            let node_right = v.node == expected_node;
            let class_right = v.class == expected_class(fault);
            let right = node_right && class_right;
            if fault.is_some() {
                faulty_runs += 1;
                faulty_right += usize::from(right);
            } else {
                none_runs += 1;
                none_right += usize::from(v.node.is_none());
            }
            let healthy = v.healthy_high == 0 && v.healthy_medium_max <= 1;
            healthy_ok += usize::from(healthy);
            let predicted = if v.node.is_some() && !node_right {
                "wrong node".to_owned()
            } else {
                v.class.clone()
            };
            *confusion
                .entry((expected_class(fault).to_owned(), predicted))
                .or_default() += 1;
            println!(
                "{name:<22} {:<12} {view:<6} {:<28} {:<28} {load:<5} {}/{} ({}){}",
                expected_node.as_deref().unwrap_or("-"),
                v.node.as_deref().unwrap_or("no straggler"),
                v.class,
                v.healthy_high,
                v.healthy_medium,
                v.healthy_medium_max,
                if right || (fault.is_none() && v.node.is_none()) {
                    ""
                } else {
                    "   <- wrong"
                }
            );
        }
    }
    println!("\nconfusion (expected cause -> what explain said, both views):");
    let predicted: std::collections::BTreeSet<&String> = confusion.keys().map(|(_, p)| p).collect();
    print!("  {:<14}", "expected");
    for p in &predicted {
        print!(" {p:>13}");
    }
    println!();
    let expected: std::collections::BTreeSet<&String> = confusion.keys().map(|(e, _)| e).collect();
    for e in expected {
        print!("  {e:<14}");
        for p in &predicted {
            print!(
                " {:>13}",
                confusion.get(&(e.clone(), (*p).clone())).copied().unwrap_or(0)
            );
        }
        println!();
    }
    let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    println!(
        "\nright node and cause: {faulty_right} of {faulty_runs} faulty views ({:.0}%; goal >= 95%)",
        pct(faulty_right, faulty_runs)
    );
    println!("no straggler named: {none_right} of {none_runs} none views (goal: all)");
    println!("healthy nodes within 1 MEDIUM and 0 HIGH chains: {healthy_ok} of {views} views (goal: all)");
    println!("({:.0} s)", started.elapsed().as_secs_f64());
}
