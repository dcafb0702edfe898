//! OTLP push as a collector sees it.
//!
//! A real OpenTelemetry collector, rotel (PyPI `rotel`, which `cargo xtask
//! setup` installs; its `rotel-agent` binary prints what it receives with
//! `--debug-log`), listens on loopback. The tests check that a live
//! `ingero trace --otlp-endpoint` delivers the call histogram of a known
//! workload with the counts SQLite holds, bucket by bucket; that
//! `ingero explain --otlp-endpoint` delivers the straggler verdict and
//! every chain as log records; and that with a collector that is not
//! there, tracing stores every event, counts what it could not push, and
//! says so once. rotel's receiver has no TLS, so for an https endpoint
//! Python's `ssl` module (OpenSSL) terminates mutual TLS in front of it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::catalog::{driver_op, source};
use anyhow::{Context, bail};

use crate::common::{Daemon, Pki, Workload, ingero, ingero_env, open, root_or_skip, scalar, serial};

/// A rotel collector on loopback that prints every metric and log record
/// it receives and forwards nothing; killed on drop.
struct Rotel {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

/// The `rotel-agent` binary inside the installed `rotel` package.
fn rotel_agent() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("running python3")?;
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "rotel-agent not found (cargo xtask setup installs the rotel package): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Rotel {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let log = dir.join("rotel.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(rotel_agent()?)
            .args(["start", "--exporter", "blackhole"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--debug-log", "metrics", "--debug-log", "logs"])
            .args(["--debug-log-verbosity", "detailed"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting rotel-agent")?;
        let mut rotel = Self {
            child,
            http_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
            if let Some(status) = rotel.child.try_wait()? {
                bail!("rotel-agent exited with {status}:\n{}", rotel.output());
            }
            if Instant::now() > deadline {
                bail!("rotel-agent did not listen within 20 s:\n{}", rotel.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(rotel)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// What it printed, colour codes removed.
    fn output(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Waits until its output contains `text`.
    fn wait_for(&self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(text) {
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!("rotel did not receive '{text}' within {timeout:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One histogram data point as the collector printed it.
#[derive(Debug, Default, Clone)]
struct Point {
    metric: String,
    attributes: BTreeMap<String, String>,
    count: Option<u64>,
    buckets: Vec<u64>,
}

/// The histogram data points in the collector's debug output, in the
/// order received.
fn histogram_points(out: &str) -> Vec<Point> {
    let mut points = Vec::new();
    let mut metric = String::new();
    let mut current: Option<Point> = None;
    for line in out.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("-> Name: ") {
            name.clone_into(&mut metric);
        } else if line.starts_with("HistogramDataPoints #") {
            points.extend(current.take());
            current = Some(Point {
                metric: metric.clone(),
                ..Point::default()
            });
        } else if let Some(p) = current.as_mut() {
            if let Some(kv) = line.strip_prefix("-> ") {
                if let Some((k, v)) = kv.split_once(": Str(") {
                    p.attributes
                        .insert(k.to_owned(), v.trim_end_matches(')').to_owned());
                }
            } else if let Some(n) = line.strip_prefix("Count: ") {
                p.count = n.parse().ok();
            } else if let Some(rest) = line.strip_prefix("Buckets #") {
                if let Some(n) = rest.split_once("Count: ").and_then(|(_, n)| n.parse().ok()) {
                    p.buckets.push(n);
                }
            } else if line.starts_with("Metric #") || line.starts_with("ResourceMetrics #") {
                points.extend(current.take());
            }
        }
    }
    points.extend(current);
    points
}

#[test]
fn a_live_tracer_pushes_histograms_whose_counts_match_sqlite() -> anyhow::Result<()> {
    if !root_or_skip("a_live_tracer_pushes_histograms_whose_counts_match_sqlite") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let rotel = Rotel::start(dir.path())?;
    let db = dir.path().join("live.db");
    let (threads, calls) = (2u32, 300u32);
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &[
            "driver",
            "--threads",
            &threads.to_string(),
            "--calls",
            &calls.to_string(),
            "--kernel-us",
            "2000",
        ],
        &[("RANK", "1"), ("WORLD_SIZE", "2")],
    )?;
    let pid = w.pid.to_string();
    let endpoint = rotel.endpoint();
    let tracer = Daemon::trace(
        &db,
        &[
            "--pid",
            &pid,
            "-q",
            "--node",
            "gpu-node-07",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-interval",
            "1s",
        ],
    )?;
    w.go()?;
    w.finish()?;
    // At least one push while tracing, then the last one at stop.
    rotel.wait_for("ingero_call_duration_seconds", Duration::from_secs(20))?;
    let log = tracer.stop()?;
    assert!(log.contains("0 dropped"), "{log}");

    let conn = open(&db)?;
    let durations: Vec<i64> = conn
        .prepare(&format!(
            "SELECT duration FROM events WHERE source = {} AND op = {}",
            source::DRIVER,
            driver_op::LAUNCH_KERNEL
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let stored = durations.len() as u64;
    assert_eq!(stored, u64::from(threads * calls), "{log}");
    // The registry's buckets: the first bound 1 µs << i at or above the value.
    let mut expected = vec![0u64; 25];
    for d in &durations {
        let i = (0..24).find(|i| *d as u64 <= 1_000u64 << i).unwrap_or(24);
        expected[i] += 1;
    }

    // The last snapshot the collector printed is the one sent at stop.
    let out = rotel.wait_for("cuLaunchKernel", Duration::from_secs(10))?;
    let launches: Vec<Point> = histogram_points(&out)
        .into_iter()
        .filter(|p| {
            p.metric == "ingero_call_duration_seconds"
                && p.attributes.get("op").map(String::as_str) == Some("cuLaunchKernel")
        })
        .collect();
    let last = launches
        .last()
        .with_context(|| format!("no cuLaunchKernel histogram:\n{out}"))?;
    assert_eq!(
        last.attributes,
        BTreeMap::from([
            ("node".to_owned(), "gpu-node-07".to_owned()),
            ("rank".to_owned(), "1".to_owned()),
            ("source".to_owned(), "driver".to_owned()),
            ("op".to_owned(), "cuLaunchKernel".to_owned()),
        ])
    );
    assert_eq!(last.count, Some(stored), "the call count is SQLite's");
    assert_eq!(last.buckets, expected, "every bucket holds SQLite's count");
    // Counts only grow from push to push (cumulative temporality).
    let counts: Vec<u64> = launches.iter().filter_map(|p| p.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");

    // Every chain explain finds in the recording arrived as a log record
    // (the last pass runs after the last commit); ids without their
    // window start, which moves with the tracer's sliding window.
    let db = db.to_string_lossy().into_owned();
    let (code, json, err) = ingero(&["explain", "-d", &db, "--no-save", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&json)?;
    let key = |id: &str| id.rsplit_once('@').map_or(id, |(k, _)| k).to_owned();
    let found: Vec<String> = answer["chains"]
        .as_array()
        .context("chains")?
        .iter()
        .filter_map(|c| c["id"].as_str().map(key))
        .collect();
    let out = rotel.output();
    let received: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> ingero.chain.id: Str("))
        .map(|id| key(id.trim_end_matches(')')))
        .collect();
    for k in &found {
        assert!(
            received.contains(k),
            "chain {k} was not pushed; received {received:?}"
        );
    }
    assert!(
        log.contains(&format!("log record(s) delivered to {endpoint}")),
        "{log}"
    );
    Ok(())
}

#[test]
fn explain_sends_the_verdict_and_every_chain_as_log_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rotel = Rotel::start(dir.path())?;
    let db = dir.path().join("cluster.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db"),
        &db,
    )?;
    let db = db.to_string_lossy().into_owned();
    let (code, json, _) = ingero(&["explain", "-d", &db, "--no-save", "--json"])?;
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&json)?;
    let ids: Vec<&str> = answer["chains"]
        .as_array()
        .context("chains")?
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(!ids.is_empty(), "the sample cluster has chains");
    let straggler = answer["straggler_node"].as_str().context("a straggler")?;

    let endpoint = rotel.endpoint();
    let (code, _, err) = ingero(&["explain", "-d", &db, "--no-save", "--otlp-endpoint", &endpoint])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{} log record(s) delivered", ids.len() + 1)) && err.contains("0 dropped"),
        "{err}"
    );
    let out = rotel.wait_for("EventName: ingero.straggler", Duration::from_secs(10))?;
    assert!(out.contains("SeverityText: STRAGGLER"), "{out}");
    assert!(out.contains(&format!("Body: Str(STRAGGLER {straggler}")), "{out}");
    for id in &ids {
        assert!(
            out.contains(&format!("ingero.chain.id: Str({id})")),
            "chain {id} missing:\n{out}"
        );
    }
    assert_eq!(out.matches("EventName: ingero.causal_chain").count(), ids.len());
    assert!(out.contains("ingero.chain.recommendations: Slice(Str("), "{out}");
    assert!(out.contains("host.name: Str("), "{out}");
    Ok(())
}

#[test]
fn a_collector_that_is_down_costs_no_event_and_the_drops_are_counted() -> anyhow::Result<()> {
    if !root_or_skip("a_collector_that_is_down_costs_no_event_and_the_drops_are_counted") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("down.db");
    let pki = Pki::new(dir.path().join("pki"))?;
    // A port nothing listens on.
    let endpoint = format!("http://127.0.0.1:{}", free_port()?);
    let (threads, calls) = (2u32, 300u32);
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &[
            "driver",
            "--threads",
            &threads.to_string(),
            "--calls",
            &calls.to_string(),
            "--kernel-us",
            "2000",
        ],
        &[],
    )?;
    let pid = w.pid.to_string();
    let mut args = vec![
        "--pid".to_owned(),
        pid,
        "-q".into(),
        "--node".into(),
        "gpu-node-03".into(),
        "--otlp-endpoint".into(),
        endpoint.clone(),
        "--otlp-interval".into(),
        "1s".into(),
    ];
    args.extend(pki.agent_flags("gpu-node-03"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tracer = Daemon::trace(&db, &args)?;
    let addr = tracer.api_addr()?;
    w.go()?;
    w.finish()?;
    // `/metrics` counts what could not be pushed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--noproxy", "*"])
            .args(["--cacert", &pki.s("ca.pem"), "--cert", &pki.s("oncall.pem")])
            .args(["--key", &pki.s("oncall-key.pem")])
            .arg(format!("https://{addr}/metrics"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let n = text
            .lines()
            .find(|l| l.starts_with("ingero_otlp_dropped_total{") && l.contains("signal=\"metrics\""))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            crate::common::promtool_check(&text)?;
            break n;
        }
        if Instant::now() > deadline {
            bail!("ingero_otlp_dropped_total never counted a drop:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(dropped > 0);
    let log = tracer.stop()?;
    let launches = scalar(
        &open(&db)?,
        &format!(
            "SELECT count(*) FROM events WHERE source = {} AND op = {}",
            source::DRIVER,
            driver_op::LAUNCH_KERNEL
        ),
    )?;
    assert_eq!(
        launches,
        i64::from(threads * calls),
        "every call is stored:\n{log}"
    );
    assert!(log.contains("events stored"), "{log}");
    assert!(
        log.contains(&format!(
            "0 metric push(es) (0 data points) and 0 log record(s) delivered to {endpoint}"
        )),
        "{log}"
    );
    assert!(
        log.contains("OTLP item(s)") && log.contains("could not be delivered"),
        "{log}"
    );
    assert_eq!(
        log.matches("warning: OTLP").count(),
        1,
        "warned once, not per interval:\n{log}"
    );
    Ok(())
}

/// A mutual-TLS terminator (Python's `ssl`, OpenSSL) on loopback that
/// forwards each connection to `upstream`; killed on drop.
struct TlsFront {
    child: Child,
    port: u16,
}

const TLS_FRONT: &str = r"
import asyncio, ssl, sys
cert, key, ca, upstream = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(r, w):
    ur, uw = await asyncio.open_connection('127.0.0.1', int(upstream))
    await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=ctx)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
";

impl TlsFront {
    fn start(pki: &Pki, upstream: u16) -> anyhow::Result<Self> {
        let mut child = Command::new("python3")
            .args(["-c", TLS_FRONT])
            .args([
                pki.s("gpu-node-03.pem"),
                pki.s("gpu-node-03-key.pem"),
                pki.s("ca.pem"),
            ])
            .arg(upstream.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running python3")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("the TLS front's port: '{line}'"))?;
        Ok(Self { child, port })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_https_endpoint_gets_the_records_over_mutual_tls_and_refuses_us_without_our_certificate()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rotel = Rotel::start(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let front = TlsFront::start(&pki, rotel.http_port)?;
    let db = dir.path().join("node.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-03.db"),
        &db,
    )?;
    let db = db.to_string_lossy().into_owned();
    let endpoint = format!("https://127.0.0.1:{}", front.port);
    let config = |with_client: bool| -> anyhow::Result<String> {
        let path = dir.path().join(format!("ingero-{with_client}.yaml"));
        let mut yaml = format!("otlp:\n  endpoint: {endpoint}\n  ca_cert: {}\n", pki.s("ca.pem"));
        if with_client {
            yaml.push_str(&format!(
                "  client_cert: {}\n  client_key: {}\n  headers:\n    x-tenant: gpu-team\n",
                pki.s("oncall.pem"),
                pki.s("oncall-key.pem")
            ));
        }
        std::fs::write(&path, yaml)?;
        Ok(path.to_string_lossy().into_owned())
    };

    let with = config(true)?;
    let (code, _, err) = ingero_env(&["--config", &with, "explain", "-d", &db, "--no-save"], &[])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("0 dropped") && !err.contains(" 0 log record(s) delivered"),
        "{err}"
    );
    rotel.wait_for("EventName: ingero.causal_chain", Duration::from_secs(10))?;

    // Without our certificate the collector's side refuses the handshake:
    // explain still prints its chains and exits 0, and says what was lost.
    let without = config(false)?;
    let (code, out, err) = ingero_env(&["--config", &without, "explain", "-d", &db, "--no-save"], &[])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CAUSAL CHAINS"), "{out}");
    assert!(
        err.contains("warning: OTLP log export") && err.contains(" 0 log record(s) delivered"),
        "{err}"
    );
    Ok(())
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_in_one_sentence() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("node.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-01.db"),
        &db,
    )?;
    let db = db.to_string_lossy().into_owned();
    let (code, out, err) = ingero_env(&["explain", "-d", &db, "--otlp-endpoint", "collector:4318"], &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "nothing runs: {out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("http://127.0.0.1:4318"), "says what to give: {err}");
    let config = dir.path().join("ingero.yaml");
    std::fs::write(&config, "otlp:\n  endpoint: grpc://collector:4317\n")?;
    let config = config.to_string_lossy().into_owned();
    let (code, _, err) = ingero_env(&["--config", &config, "explain", "-d", &db], &[])?;
    assert_eq!(code, 78, "a bad configuration file: {err}");
    assert!(err.contains("otlp.endpoint"), "{err}");
    Ok(())
}

#[test]
fn a_live_tracer_sends_the_chains_of_a_contended_node_as_log_records() -> anyhow::Result<()> {
    if !root_or_skip("a_live_tracer_sends_the_chains_of_a_contended_node_as_log_records") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let rotel = Rotel::start(dir.path())?;
    let endpoint = rotel.endpoint();
    let otlp: Vec<String> = ["--otlp-endpoint", &endpoint, "--otlp-interval", "2s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    // The simulated two-node job with a CPU hog on the second node, each
    // node's agent pushing to the collector.
    let cfg = ingero_sim::cluster::ClusterConfig {
        ingero: crate::common::INGERO.into(),
        nodes: 2,
        steps: 30,
        faults: vec![ingero_sim::cluster::Fault::CpuContention],
        faulty_node: 1,
        run_dir: dir.path().join("run"),
        cudart: ingero_sim::libcudart(),
        agent_args: vec![otlp.clone(), otlp],
    };
    std::fs::create_dir_all(&cfg.run_dir)?;
    let report = ingero_sim::cluster::run(
        &cfg,
        &mut |line| eprintln!("{line}"),
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let faulty = report
        .databases
        .iter()
        .find(|(n, _)| n == "gpu-node-02")
        .context("the faulty node's database")?
        .1
        .display()
        .to_string();
    let (code, json, err) = ingero(&["explain", "-d", &faulty, "--no-save", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&json)?;
    let top = answer["chains"]
        .as_array()
        .and_then(|c| c.first())
        .with_context(|| format!("the contended node has a chain: {json}"))?
        .clone();
    let id = top["id"].as_str().context("an id")?;
    let key = id.rsplit_once('@').map_or(id, |(k, _)| k);

    let out = rotel.wait_for(&format!("ingero.chain.id: Str({key}@"), Duration::from_secs(20))?;
    // Not once per pass (one every 2 s while the job ran): a chain is sent
    // again only when a pass lost it and a later one found it again.
    let sent = out.matches(&format!("ingero.chain.id: Str({key}@")).count();
    let passes = out.matches("ingero_call_duration_seconds").count();
    assert!(
        sent <= 3 && passes > sent * 3,
        "sent {sent} times over {passes} pushes:\n{out}"
    );
    let record = out
        .split("LogRecord #")
        .find(|r| r.contains(&format!("ingero.chain.id: Str({key}@")))
        .context("the record")?;
    assert!(record.contains("EventName: ingero.causal_chain"), "{record}");
    assert!(record.contains("ingero.node: Str(gpu-node-02)"), "{record}");
    // Sent when first found, on the data recorded by then: its words and
    // severity are that pass's, in the OTLP mapping.
    assert!(record.contains("ingero.chain.root_cause: Str("), "{record}");
    assert!(
        [
            ("HIGH", "SEVERITY_NUMBER_ERROR(17)"),
            ("MEDIUM", "SEVERITY_NUMBER_WARN(13)"),
            ("LOW", "SEVERITY_NUMBER_INFO(9)"),
        ]
        .iter()
        .any(|(text, number)| record.contains(&format!("SeverityText: {text}\nSeverityNumber: {number}"))),
        "{record}"
    );
    // And the metrics of both nodes arrived.
    for node in ["gpu-node-01", "gpu-node-02"] {
        assert!(out.contains(&format!("host.name: Str({node})")), "{node}:\n{out}");
    }
    Ok(())
}

/// Accepts connections on loopback and never answers: a hung collector.
fn silent_collector() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(256) {
            held.push(s);
        }
    });
    Ok(endpoint)
}

#[test]
fn a_collector_that_never_answers_costs_no_event_and_one_deadline_at_most() -> anyhow::Result<()> {
    // explain: the records are abandoned after the 5 s deadline.
    let dir = tempfile::tempdir()?;
    let endpoint = silent_collector()?;
    let sample = dir.path().join("cluster.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db"),
        &sample,
    )?;
    let sample = sample.to_string_lossy().into_owned();
    let started = Instant::now();
    let (code, out, err) = ingero(&[
        "explain",
        "-d",
        &sample,
        "--no-save",
        "--otlp-endpoint",
        &endpoint,
    ])?;
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CAUSAL CHAINS"), "{out}");
    assert!(took < Duration::from_secs(9), "explain took {took:?}:\n{err}");
    assert!(
        err.contains(" 0 log record(s) delivered") && !err.contains(", 0 dropped"),
        "{err}"
    );

    // trace: every event stored, the pushes that timed out counted.
    if !root_or_skip("a_collector_that_never_answers_costs_no_event_and_one_deadline_at_most") {
        return Ok(());
    }
    let _guard = serial();
    let db = dir.path().join("slow.db");
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &[
            "driver",
            "--threads",
            "2",
            "--calls",
            "200",
            "--kernel-us",
            "1000",
        ],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(
        &db,
        &[
            "--pid",
            &pid,
            "-q",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-interval",
            "1s",
        ],
    )?;
    w.go()?;
    w.finish()?;
    std::thread::sleep(Duration::from_secs(2));
    let log = tracer.stop()?;
    let launches = scalar(
        &open(&db)?,
        &format!(
            "SELECT count(*) FROM events WHERE source = {} AND op = {}",
            source::DRIVER,
            driver_op::LAUNCH_KERNEL
        ),
    )?;
    assert_eq!(launches, 400, "every call is stored:\n{log}");
    assert!(log.contains("could not be delivered"), "{log}");
    assert!(
        log.contains("timed out") || log.contains("no answer within"),
        "{log}"
    );
    Ok(())
}
