//! `cargo xtask bench fleet`: fan-out latency to 4, 16 and 64 real agents
//! (`ingero serve` processes on loopback, mutual TLS), and the error of
//! the clock-offset estimate against offsets injected with libfaketime.
//!
//! Baseline, measured in the same run: one query to one agent through the
//! same client. Fan-out figures are p50/p99 over repeated runs and their
//! ratio to the baseline p50; the clock exchanges that run beside every
//! fan-out are measured once with and once without, to show what they
//! add. Skew: for each shifted agent, the estimate's distance from the
//! injected offset, next to the error bound it claimed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ingero_fleet::{AgentClient, ClientTls, Fleet, FleetOptions};

const INGERO: &str = env!("CARGO_BIN_EXE_ingero");
const SIZES: [usize; 3] = [4, 16, 64];
const FAN_OUT_RUNS: usize = 40;
const BASELINE_RUNS: usize = 200;
const SQL: &str = "SELECT count(*), sum(duration) FROM events WHERE source = 4";
/// Offsets injected with faketime (seconds, as faketime takes them).
const SHIFTS: [&str; 6] = ["-2", "-0.5", "-0.01", "+0.001", "+0.75", "+3"];

struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group: faketime runs
        // the agent as its child, and both must go.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn ingero(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(INGERO).args(args).output()?;
    if !out.status.success() {
        bail!("ingero {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn spawn(pki: &Path, db: &Path, name: &str, faketime: Option<&str>) -> anyhow::Result<Agent> {
    let mut cmd = match faketime {
        Some(shift) => {
            let mut c = Command::new("faketime");
            c.args(["-f", &format!("{shift}s"), INGERO]);
            c
        }
        None => Command::new(INGERO),
    };
    let p = |f: &str| pki.join(f);
    let ready = pki.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&ready);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--node", name, "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(p("bench-node.pem"))
        .arg("--tls-key")
        .arg(p("bench-node-key.pem"))
        .arg("--ca-cert")
        .arg(p("ca.pem"))
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting ingero serve (faketime comes from `cargo xtask setup`)")?;
    // Ready when it has written its ready file (with the port it got).
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            break v["listen"].as_str().context("no listen address")?.to_owned();
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            anyhow::bail!("agent {name} exited or was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Agent { child, addr })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latencies(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let pki: PathBuf = dir.path().join("pki");
    let pki_s = pki.to_str().context("path")?;
    ingero(&["certs", "init-ca", "--dir", pki_s])?;
    ingero(&[
        "certs",
        "issue",
        "--node",
        "bench-node",
        "--san",
        "127.0.0.1",
        "--dir",
        pki_s,
    ])?;
    ingero(&["certs", "issue", "--client", "bench", "--dir", pki_s])?;
    let db = dir.path().join("node.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-01.db"),
        &db,
    )?;
    let tls = ClientTls {
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: Some(pki.join("bench.pem")),
        client_key: Some(pki.join("bench-key.pem")),
        ..ClientTls::default()
    };

    let max = *SIZES.iter().max().unwrap_or(&4);
    eprintln!("starting {max} agents...");
    let agents: Vec<Agent> = (0..max)
        .map(|i| spawn(&pki, &db, &format!("agent-{i:02}"), None))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // Baseline: one query to one agent, connection reused as in a fan-out.
    let one = AgentClient::new(&addrs[0], &tls, Duration::from_secs(10))?;
    rt.block_on(one.sql(SQL))?;
    let mut base = Vec::with_capacity(BASELINE_RUNS);
    for _ in 0..BASELINE_RUNS {
        let t = Instant::now();
        rt.block_on(one.sql(SQL))?;
        base.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (b50, b99) = latencies(base);
    println!("fleet benchmark: `{SQL}` over mutual TLS on loopback, 2 cores shared by client and agents");
    println!("  one agent (baseline)        p50 {b50:>7.2} ms   p99 {b99:>7.2} ms");

    for &n in &SIZES {
        for samples in [5usize, 0] {
            let fleet = Fleet::new(
                &addrs[..n],
                &tls,
                FleetOptions {
                    clock_samples: samples,
                    ..ingero::config::fleet::default_options()
                },
            )?;
            let mut times = Vec::with_capacity(FAN_OUT_RUNS);
            for i in 0..=FAN_OUT_RUNS {
                let t = Instant::now();
                let answers = rt.block_on(fleet.run(|c| async move { c.sql(SQL).await }));
                let failed = answers.iter().filter(|a| a.result.is_err()).count();
                if failed > 0 {
                    bail!("{failed} of {n} agents failed");
                }
                // The first run opens the connections; it is not counted.
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let (p50, p99) = latencies(times);
            println!(
                "  {n:>2} agents, {} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   p50 = {:.1}x one agent ({:.2}x per agent)",
                if samples > 0 {
                    "with clock  "
                } else {
                    "query only  "
                },
                p50 / b50,
                p50 / b50 / n as f64
            );
        }
    }
    drop(agents);

    eprintln!("starting {} agents under faketime...", SHIFTS.len());
    let shifted: Vec<Agent> = SHIFTS
        .iter()
        .enumerate()
        .map(|(i, s)| spawn(&pki, &db, &format!("skewed-{i}"), Some(s)))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = shifted.iter().map(|a| a.addr.clone()).collect();
    let fleet = Fleet::new(&addrs, &tls, ingero::config::fleet::default_options())?;
    let mut worst_ratio: f64 = 0.0;
    let mut errors = Vec::new();
    let mut bounds = Vec::new();
    let mut within = 0;
    let runs = 10;
    for _ in 0..runs {
        let answers = rt.block_on(fleet.run(|c| async move { c.sql("SELECT 1").await }));
        for (a, shift) in answers.iter().zip(SHIFTS) {
            let injected = (shift.parse::<f64>()? * 1e9).round() as i64;
            let c = a.clock.context("no clock estimate")?;
            let err = (c.offset_ns - injected).abs();
            errors.push(err as f64 / 1e3);
            bounds.push(c.error_ns as f64 / 1e3);
            worst_ratio = worst_ratio.max(err as f64 / c.error_ns.max(1) as f64);
            if err <= c.error_ns {
                within += 1;
            }
        }
    }
    let (e50, e99) = latencies(errors);
    let (bound50, _) = latencies(bounds);
    println!(
        "  clock offset ({} agents, offsets -2 s .. +3 s, {runs} fan-outs): error p50 {e50:.1} µs, p99 {e99:.1} µs; claimed bound p50 {bound50:.1} µs; {within} of {} estimates within their bound (worst error = {worst_ratio:.2}x its bound)",
        SHIFTS.len(),
        runs * SHIFTS.len()
    );
    Ok(())
}
