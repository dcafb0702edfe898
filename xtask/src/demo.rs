//! `cargo xtask demo`: a simulated multi-node training job on this machine,
//! traced for real, then a walkthrough of the analysis commands on what the
//! agents recorded.
//!
//! Builds what it needs, runs the job (`ingero_sim::cluster`), prints
//! per-rank step times (compute vs all-reduce wait: the straggler computes
//! longest and waits least), then walks through what an on-call engineer
//! would run, printing each command and its output. Across the fleet: a
//! PKI made with `ingero certs`, one `ingero serve` agent per node over
//! mutual TLS, `ingero explain --nodes` (the straggler and its cause) and
//! `ingero query --nodes --merge` (a fleet-wide percentile). Offline:
//! `ingero query` on the faulty node, `ingero merge` of all nodes, `ingero
//! explain` of the merged database and `ingero export --format perfetto`.
//! Every process it started is stopped on success, failure or Ctrl-C, and
//! checked to be gone.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail};
use ingero_sim::cluster::{self, ClusterConfig, ClusterReport, Fault, RunOptions};

use crate::exec::{cargo, exec, root};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// none, cpu-contention, checkpoint-io, memory-pressure, slow-rank, hang,
    /// dataloader-starvation, or a combination joined by '+'
    #[arg(long, default_value = "checkpoint-io")]
    pub scenario: String,
    /// Simulated nodes (one rank each)
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Training steps per rank
    #[arg(long, default_value_t = 150)]
    pub steps: u64,
    /// The node that gets the fault (1-based)
    #[arg(long, default_value_t = 3)]
    pub faulty_node: usize,
    /// Where the databases go [default: target/demo/SCENARIO]
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM set [`STOP`]; the run then stops its processes.
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
    }
}

/// Builds the release `ingero` and returns its path.
pub fn build_ingero() -> anyhow::Result<PathBuf> {
    eprintln!("building ingero (release)...");
    exec(
        cargo()
            .current_dir(root())
            .args(["build", "--release", "--quiet", "-p", "ingero"]),
    )?;
    Ok(root().join("target/release/ingero"))
}

/// Runs the job and prints its progress. A job that hangs is traced for a
/// few more seconds, hung, before it is stopped.
pub fn run_cluster(cfg: &ClusterConfig) -> anyhow::Result<ClusterReport> {
    run_cluster_with(cfg, None)
}

/// [`run_cluster`], calling `on_hang` while a hung job's agents still trace.
fn run_cluster_with(
    cfg: &ClusterConfig,
    on_hang: Option<&mut dyn FnMut(&cluster::Hang)>,
) -> anyhow::Result<ClusterReport> {
    catch_interrupts();
    let opts = RunOptions {
        hold: std::time::Duration::from_secs(HANG_AFTER_S + 1),
        on_hang,
        ..RunOptions::default()
    };
    let report = cluster::run_with(cfg, opts, &mut |line| eprintln!("{line}"), &STOP);
    match report {
        Err(cluster::SimError::Interrupted) => bail!("interrupted; every process of the run was stopped"),
        other => other.context("the simulated job failed"),
    }
}

fn print_ranks(report: &ClusterReport) {
    let straggler = report
        .ranks
        .iter()
        .max_by(|a, b| a.compute_mean_ms.total_cmp(&b.compute_mean_ms))
        .map(|r| r.rank);
    if let Some(h) = &report.hung {
        println!(
            "\nthe job hung: rank {} ({}) never started step {}, every other rank blocked in cuStreamSynchronize \
             after step {}; hung {:.0}s after training started, traced hung for {:.0}s, then stopped",
            h.rank,
            h.node,
            h.step,
            h.step - 1,
            h.detected_after_s,
            h.held_s
        );
    }
    println!("\nper-rank step times in ms (compute = own forward/backward, wait = all-reduce):");
    println!(
        "  {:<12} {:>4} {:>6} {:>12} {:>8} {:>13} {:>10}",
        "node", "rank", "steps", "step median", "step p90", "compute mean", "wait mean"
    );
    for r in &report.ranks {
        let note = match &report.hung {
            Some(h) if h.rank == r.rank => "   <- hung: stopped before a step",
            Some(_) => "",
            None if Some(r.rank) == straggler && report.ranks.len() > 1 => {
                "   <- straggler: computes longest, waits least"
            }
            None => "",
        };
        println!(
            "  {:<12} {:>4} {:>6} {:>12.1} {:>8.1} {:>13.1} {:>10.1}{note}",
            r.node, r.rank, r.steps, r.median_ms, r.p90_ms, r.compute_mean_ms, r.wait_mean_ms,
        );
    }
}

/// The demo's `--hang-after`: short, so the live report comes while the
/// job is held hung (a real job would use the 30 s default).
const HANG_AFTER_S: u64 = 5;

/// Runs `ingero ARGS`, printing the command and its output.
pub fn walkthrough(ingero: &Path, args: &[&str]) -> anyhow::Result<()> {
    walkthrough_codes(ingero, args, &[0])
}

/// [`walkthrough`], accepting the exit codes in `ok` (explain exits 5 on a
/// hung collective: the answer, not a failure).
fn walkthrough_codes(ingero: &Path, args: &[&str], ok: &[i32]) -> anyhow::Result<()> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("\n$ ingero {}", shown.join(" "));
    let out = Command::new(ingero)
        .args(args)
        .output()
        .context("running ingero")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.code().is_some_and(|c| ok.contains(&c)) {
        bail!("`ingero {}` failed ({})", shown.join(" "), out.status);
    }
    Ok(())
}

/// An `ingero serve` agent; stopped when dropped.
struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGINT is its clean stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

fn serve(ingero: &Path, pki: &Path, node: &str, db: &Path) -> anyhow::Result<Agent> {
    let mut child = Command::new(ingero)
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(pki.join(format!("{node}.pem")))
        .arg("--tls-key")
        .arg(pki.join(format!("{node}-key.pem")))
        .arg("--ca-cert")
        .arg(pki.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ingero serve")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = loop {
        let Some(line) = lines.next().transpose()? else {
            let _ = child.wait();
            bail!("the agent for {node} exited before listening");
        };
        if let Some(rest) = line.split("https://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Agent { child, addr })
}

/// The fleet's certificates, made with `ingero certs` in `dir/pki`: a CA,
/// one per node, one for the on-call client.
fn make_pki(ingero: &Path, dir: &Path, nodes: &[String]) -> anyhow::Result<PathBuf> {
    let pki = dir.join("pki");
    let pki_s = pki.display().to_string();
    walkthrough(ingero, &["certs", "init-ca", "--dir", &pki_s])?;
    for (i, node) in nodes.iter().enumerate() {
        let args = [
            "certs",
            "issue",
            "--node",
            node,
            "--san",
            "127.0.0.1",
            "--dir",
            &pki_s,
        ];
        if i == 0 {
            walkthrough(ingero, &args)?;
        } else {
            quiet(ingero, &args)?;
        }
    }
    walkthrough(ingero, &["certs", "issue", "--client", "oncall", "--dir", &pki_s])?;
    Ok(pki)
}

/// The client's TLS flags for the demo's PKI.
fn client_tls(pki: &Path) -> Vec<String> {
    vec![
        "--ca-cert".into(),
        pki.join("ca.pem").display().to_string(),
        "--client-cert".into(),
        pki.join("oncall.pem").display().to_string(),
        "--client-key".into(),
        pki.join("oncall-key.pem").display().to_string(),
    ]
}

/// A hung job: live agents (`ingero trace --listen` over mutual TLS) are
/// asked while the ranks are still stuck.
fn live_hang_report(ingero: &Path, pki: &Path, addrs: &[String]) -> anyhow::Result<()> {
    println!(
        "\n(the job is hung; its agents are live: `ingero trace --listen` on {})",
        addrs.join(", ")
    );
    let nodes = addrs.join(",");
    let hang_after = format!("{HANG_AFTER_S}s");
    let mut args: Vec<String> = vec![
        "explain".into(),
        "--nodes".into(),
        nodes,
        "--hang-after".into(),
        hang_after,
    ];
    args.extend(client_tls(pki));
    walkthrough_codes(
        ingero,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[0, 5],
    )
}

/// The fleet part: one agent per node over mutual TLS (the PKI of
/// [`make_pki`]), then the questions an on-call engineer asks all of them
/// at once.
fn fleet_walkthrough(ingero: &Path, pki: &Path, report: &ClusterReport) -> anyhow::Result<()> {
    let agents: Vec<Agent> = report
        .databases
        .iter()
        .map(|(node, db)| serve(ingero, pki, node, db))
        .collect::<Result<_, _>>()?;
    println!(
        "
(one `ingero serve --listen ... --ca-cert ca.pem` agent per node, as `ingero trace --listen` would serve live: {})",
        agents.iter().map(|a| a.addr.as_str()).collect::<Vec<_>>().join(", ")
    );
    let nodes = agents
        .iter()
        .map(|a| a.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let tls = client_tls(pki);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut explain = vec!["explain", "--nodes", &nodes];
    explain.extend(&tls);
    walkthrough_codes(ingero, &explain, &[0, 5])?;
    let mut query = vec![
        "query",
        "--nodes",
        &nodes,
        "--merge",
        "SELECT count(*) AS launches, (SELECT duration FROM fleet ORDER BY duration LIMIT 1 OFFSET (SELECT count(*) * 99 / 100 FROM fleet)) / 1000 AS p99_us FROM fleet",
        "--limit",
        "100000",
    ];
    query.extend(&tls);
    query.push("SELECT duration FROM events WHERE source = 4 AND op = 1");
    walkthrough(ingero, &query)?;
    drop(agents);
    Ok(())
}

/// Runs `ingero ARGS` without printing it; fails with its output.
fn quiet(ingero: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(ingero)
        .args(args)
        .output()
        .context("running ingero")?;
    if !out.status.success() {
        bail!(
            "`ingero {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let faults = Fault::parse_scenario(&opts.scenario)?;
    if opts.faulty_node == 0 || opts.faulty_node > opts.nodes {
        bail!("--faulty-node must be between 1 and --nodes ({})", opts.nodes);
    }
    let ingero = build_ingero()?;
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| root().join("target/demo").join(&opts.scenario));
    let _ = std::fs::remove_dir_all(&dir);
    let hang = faults.contains(&Fault::Hang);
    let names: Vec<String> = (0..opts.nodes).map(cluster::node_name).collect();
    std::fs::create_dir_all(&dir)?;
    let pki = make_pki(&ingero, &dir, &names)?;
    let mut cfg = ClusterConfig {
        ingero: ingero.clone(),
        nodes: opts.nodes,
        steps: opts.steps,
        faults,
        faulty_node: opts.faulty_node - 1,
        run_dir: dir.clone(),
        cudart: ingero_sim::libcudart(),
        agent_args: Vec::new(),
    };
    // A hung job is asked live: its agents serve their API while tracing.
    let mut addrs = Vec::new();
    if hang {
        for node in &names {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            cfg.agent_args.push(vec![
                "--listen".into(),
                addr.clone(),
                "--tls-cert".into(),
                pki.join(format!("{node}.pem")).display().to_string(),
                "--tls-key".into(),
                pki.join(format!("{node}-key.pem")).display().to_string(),
                "--ca-cert".into(),
                pki.join("ca.pem").display().to_string(),
            ]);
            addrs.push(addr);
        }
    }
    let mut live_result = Ok(());
    let mut on_hang = |_: &cluster::Hang| live_result = live_hang_report(&ingero, &pki, &addrs);
    let report = run_cluster_with(
        &cfg,
        hang.then_some(&mut on_hang as &mut dyn FnMut(&cluster::Hang)),
    )?;
    live_result?;
    print_ranks(&report);
    fleet_walkthrough(&ingero, &pki, &report)?;

    let faulty = &report.databases[opts.faulty_node - 1].1;
    let faulty = faulty.to_string_lossy();
    walkthrough(
        &ingero,
        &[
            "query",
            "-d",
            &faulty,
            "SELECT node, source, count(*) as cnt, avg(duration)/1000 as avg_us FROM events GROUP BY node, source",
        ],
    )?;
    let cluster = dir.join("cluster.db").display().to_string();
    let mut merge: Vec<String> = vec!["merge".into()];
    merge.extend(report.databases.iter().map(|(_, p)| p.display().to_string()));
    merge.extend(["-o".into(), cluster.clone()]);
    walkthrough(&ingero, &merge.iter().map(String::as_str).collect::<Vec<_>>())?;
    walkthrough_codes(&ingero, &["explain", "-d", &cluster], &[0, 5])?;
    let trace = dir.join("cluster.pftrace").display().to_string();
    walkthrough(
        &ingero,
        &["export", "--format", "perfetto", "-d", &cluster, "-o", &trace],
    )?;
    if !report.survivors.is_empty() {
        bail!("processes outlived the demo: {:?}", report.survivors);
    }
    println!(
        "\ndemo done in {:.0}s; databases in {} (no process left running)",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}
