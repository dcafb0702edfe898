//! `/metrics` as Prometheus users see it.
//!
//! A real Prometheus server (Debian's `prometheus`, which `cargo xtask
//! setup` installs) scrapes a live `ingero trace --listen` every second
//! over mutual TLS with a client certificate, while the tracer follows a
//! known workload on the stub driver; the test then asks Prometheus' HTTP
//! API for `histogram_quantile(0.99, ...)` of `cuLaunchKernel` and checks
//! it against the p99 of the durations stored in SQLite, within the
//! bucket that holds it. A second test checks that `ingero serve` on a
//! stored (merged, three-node) database exposes exactly the counts SQL
//! finds in it. `promtool check metrics` reads both expositions.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::catalog::{driver_op, source};
use anyhow::{Context, bail};
use serde_json::Value;

use crate::common::{Daemon, Pki, Workload, open, promtool_check, root_or_skip, scalar, serial};

/// A Prometheus server on loopback, scraping one agent; stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `https://target/metrics` every
    /// second with the PKI's client certificate, and waits until it serves.
    fn start(dir: &Path, target: &str, pki: &Pki) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: ingero\n    scheme: https\n    tls_config:\n      \
                 ca_file: {}\n      cert_file: {}\n      key_file: {}\n    \
                 static_configs:\n      - targets: ['{target}']\n",
                pki.s("ca.pem"),
                pki.s("oncall.pem"),
                pki.s("oncall-key.pem"),
            ),
        )?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("running prometheus (cargo xtask setup installs Debian's prometheus package)")?;
        let mut prom = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prom.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", prom.log());
            }
            let (code, body) = prom.get("/-/ready", &[])?;
            if code == 0 && body.contains("Ready") {
                return Ok(prom);
            }
            if Instant::now() > deadline {
                bail!("prometheus was not ready within 30 s:\n{}", prom.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `curl` on Prometheus' own HTTP API: (exit code, body).
    fn get(&self, path: &str, form: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "10", "--noproxy", "*", "-G"]);
        for f in form {
            cmd.args(["--data-urlencode", f]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// The result of an instant query (`data.result`).
    fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let (code, body) = self.get("/api/v1/query", &[&format!("query={expr}")])?;
        if code != 0 {
            bail!("query {expr} failed (curl {code}): {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        if v["status"] != "success" {
            bail!("query {expr}: {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query answering one sample, if it answers any.
    fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(sample_value(&one["value"])?)),
            more => bail!("{expr} answered {} samples: {more:?}", more.len()),
        }
    }

    /// Waits until `expr` answers a value `ok` accepts; returns it.
    fn wait_for(&self, expr: &str, ok: impl Fn(f64) -> bool, timeout: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(expr)?;
            if let Some(v) = last.filter(|v| ok(*v)) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "Prometheus did not answer the expected value for {expr} within {timeout:?} (last: {last:?}):\n{}",
            self.log()
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[timestamp, "value"]` of Prometheus' JSON as a number.
fn sample_value(v: &Value) -> anyhow::Result<f64> {
    Ok(v[1].as_str().context("sample without a value")?.parse()?)
}

/// `/metrics` of an agent, fetched with curl and the PKI's client certificate.
fn scrape(addr: &str, pki: &Pki) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "--noproxy", "*"])
        .args(["--cacert", &pki.s("ca.pem"), "--cert", &pki.s("oncall.pem")])
        .args(["--key", &pki.s("oncall-key.pem")])
        .arg(format!("https://{addr}/metrics"))
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("scraping {addr}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// One sample of the text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of an exposition (label values unescaped).
fn samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').context("a sample has a value")?;
        let (name, mut rest) = series.split_once('{').unwrap_or((series, "}"));
        let mut labels = BTreeMap::new();
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().context("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().context("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            rest = &after[end + 1..];
        }
        out.push((name.to_owned(), labels, value.parse()?));
    }
    Ok(out)
}

/// The value of the sample named `name` whose labels include `want`.
fn find(all: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.2)
}

/// The finite `le` bounds of a histogram family in the exposition, ns, ascending.
fn bounds_ns(all: &[Sample], name: &str) -> Vec<u64> {
    let mut b: Vec<u64> = all
        .iter()
        .filter(|(n, _, _)| n == name)
        .filter_map(|(_, l, _)| l.get("le")?.parse::<f64>().ok())
        .filter(|le| le.is_finite())
        .map(|le| (le * 1e9).round() as u64)
        .collect();
    b.sort_unstable();
    b.dedup();
    b
}

#[test]
fn prometheus_scrapes_live_latency_histograms_over_mutual_tls() -> anyhow::Result<()> {
    if !root_or_skip("prometheus_scrapes_live_latency_histograms_over_mutual_tls") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("live.db");
    let pki = Pki::new(dir.path().join("pki"))?;
    // Two threads, each 1000 x (a launch of 4 ms of GPU time, a synchronize):
    // about 5 s, so Prometheus scrapes it while it runs.
    let (threads, calls) = (2u32, 1000u32);
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &[
            "driver",
            "--threads",
            &threads.to_string(),
            "--calls",
            &calls.to_string(),
            "--kernel-us",
            "4000",
        ],
        &[("RANK", "3"), ("WORLD_SIZE", "4")],
    )?;
    let pid = w.pid.to_string();
    let mut args = vec![
        "--pid".to_owned(),
        pid,
        "-q".into(),
        "--node".into(),
        "gpu-node-03".into(),
    ];
    args.extend(pki.agent_flags("gpu-node-03"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tracer = Daemon::trace(&db, &args)?;
    let addr = tracer.api_addr()?;
    let prom = Prometheus::start(&dir.path().join("prometheus"), &addr, &pki)?;
    prom.wait_for("up{job=\"ingero\"}", |v| v > 0.5, Duration::from_secs(30))
        .context("Prometheus scrapes the agent over mutual TLS")?;

    w.go()?;
    let report = w.finish()?;
    let launches = u64::from(threads * calls);
    let launch = "op=\"cuLaunchKernel\",source=\"driver\",node=\"gpu-node-03\",rank=\"3\"";
    prom.wait_for(
        &format!("ingero_call_duration_seconds_count{{{launch}}}"),
        |v| v as u64 == launches,
        Duration::from_secs(30),
    )?;
    // Two more scrapes with nothing new: every figure is final.
    std::thread::sleep(Duration::from_millis(2500));
    let text = scrape(&addr, &pki)?;
    promtool_check(&text)?;
    let exposed = samples(&text)?;
    let bounds = bounds_ns(&exposed, "ingero_call_duration_seconds_bucket");
    assert_eq!(bounds.len(), 24, "{bounds:?}");

    let p99_raw = prom
        .value(&format!(
            "histogram_quantile(0.99, sum by (le) (ingero_call_duration_seconds_bucket{{{launch}}}))"
        ))?
        .context("a p99 over the raw buckets")?;
    let p99_rate = prom
        .value(&format!(
            "histogram_quantile(0.99, sum by (le) (rate(ingero_call_duration_seconds_bucket{{{launch}}}[5m])))"
        ))?
        .context("a p99 over the bucket rates")?;
    // The count grew while the workload ran: updated as events are read,
    // not once at the end.
    let history = prom.query(&format!("ingero_call_duration_seconds_count{{{launch}}}[5m]"))?;
    let values: Vec<f64> = history
        .first()
        .and_then(|s| s["values"].as_array())
        .context("the count's history")?
        .iter()
        .map(sample_value)
        .collect::<anyhow::Result<_>>()?;
    let allocated = prom.value("sum(ingero_call_bytes_total{op=\"cuMemAlloc_v2\",rank=\"3\"})")?;
    let sync_wait =
        prom.value("sum(ingero_sync_wait_seconds_total{op=\"cuStreamSynchronize\",rank=\"3\"})")?;
    let switches = prom.value("sum(ingero_offcpu_switches_total{node=\"gpu-node-03\",rank=\"3\"})")?;
    let off_cpu = prom.value("sum(ingero_offcpu_seconds_total{node=\"gpu-node-03\",rank=\"3\"})")?;
    drop(prom);
    let log = tracer.stop()?;

    let conn = open(&db)?;
    let launch_sql = format!(
        "FROM events WHERE source = {} AND op = {}",
        source::DRIVER,
        driver_op::LAUNCH_KERNEL
    );
    let mut durations: Vec<u64> = conn
        .prepare(&format!("SELECT duration {launch_sql} ORDER BY duration"))?
        .query_map([], |r| r.get::<_, i64>(0))?
        .map(|d| d.map(|d| d as u64))
        .collect::<Result<_, _>>()?;
    durations.sort_unstable();
    assert_eq!(durations.len() as u64, launches, "{log}");
    // Nearest rank: the value Prometheus' bucket search lands on.
    let p99 = durations[(durations.len() * 99).div_ceil(100) - 1];
    let bucket = bounds
        .iter()
        .position(|b| p99 <= *b)
        .context("p99 above every bound")?;
    let (lower, upper) = (if bucket == 0 { 0 } else { bounds[bucket - 1] }, bounds[bucket]);
    let raw_ns = p99_raw * 1e9;
    eprintln!(
        "cuLaunchKernel p99: SQLite {p99} ns (bucket {lower}..{upper} ns), Prometheus {raw_ns:.0} ns over the raw buckets, {:.0} ns over their rates",
        p99_rate * 1e9
    );
    assert!(
        (lower as f64) - 1.0 <= raw_ns && raw_ns <= upper as f64 + 1.0,
        "histogram_quantile {raw_ns} ns is outside the bucket {lower}..{upper} ns of the stored p99 {p99} ns"
    );
    // Over rates, the first scrape's counts are the baseline, so the
    // estimate may move to a neighbouring bucket, no further.
    let rate_ns = p99_rate * 1e9;
    assert!(
        (lower as f64) / 2.0 - 1.0 <= rate_ns && rate_ns <= upper as f64 * 2.0 + 1.0,
        "p99 over rates {rate_ns} ns is far from the stored p99 {p99} ns"
    );
    assert!(
        values.iter().any(|v| *v > 0.0 && *v < launches as f64),
        "Prometheus saw the count grow while the workload ran: {values:?}"
    );

    let alloc_bytes: i64 = report["threads"]
        .as_array()
        .context("threads")?
        .iter()
        .filter_map(|t| t["alloc_bytes"].as_i64())
        .sum();
    assert_eq!(allocated, Some(alloc_bytes as f64), "bytes allocated");
    let stored_wait = scalar(
        &conn,
        &format!(
            "SELECT sum(duration) FROM events WHERE source = {} AND op = {}",
            source::DRIVER,
            driver_op::STREAM_SYNCHRONIZE
        ),
    )?;
    let wait = sync_wait.context("sync wait exposed")?;
    assert!(
        (wait - stored_wait as f64 / 1e9).abs() < 1e-6,
        "time in synchronize: {wait} s exposed, {stored_wait} ns stored"
    );
    assert!(
        wait >= 2.0 * 4e-3 * f64::from(calls),
        "each synchronize waits 4 ms: {wait} s"
    );
    let stored_switches = scalar(&conn, "SELECT count(*) FROM events WHERE source = 3 AND op = 1")?;
    let stored_off_cpu = scalar(
        &conn,
        "SELECT sum(duration) FROM events WHERE source = 3 AND op = 1",
    )?;
    assert!(stored_switches > 0);
    assert_eq!(switches, Some(stored_switches as f64), "off-CPU switches");
    let off = off_cpu.context("off-CPU time exposed")?;
    assert!(
        (off - stored_off_cpu as f64 / 1e9).abs() < 1e-6,
        "off-CPU time: {off} s exposed, {stored_off_cpu} ns stored"
    );
    Ok(())
}

#[test]
fn serve_exposes_the_counts_sql_finds_in_a_stored_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("cluster.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db"),
        &db,
    )?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &["--node", "archive"])?;
    let addr = agent.api_addr()?;
    let text = scrape(&addr, &pki)?;
    promtool_check(&text)?;
    let exposed = samples(&text)?;
    assert_eq!(
        find(&exposed, "ingero_db_scan_caught_up", &[]),
        Some(1.0),
        "{text}"
    );
    let conn = open(&db)?;

    // Calls: count, total time and bytes per node, rank and operation,
    // with source and operation names as the database itself writes them.
    let mut stmt = conn.prepare(
        "SELECT e.node, e.rank, s.name, o.name, count(*), sum(e.duration), sum(e.arg0)
         FROM events e JOIN sources s ON s.id = e.source JOIN ops o ON o.source_id = e.source AND o.op_id = e.op
         WHERE e.source IN (1, 4) GROUP BY 1, 2, 3, 4",
    )?;
    let groups: Vec<(String, i64, String, String, i64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    assert!(groups.len() > 20, "three nodes of several operations: {groups:?}");
    for (node, rank, src, op, count, total, bytes) in &groups {
        let labels = [
            ("node", node.as_str()),
            ("rank", &rank.to_string()),
            ("source", src.as_str()),
            ("op", op.as_str()),
        ];
        let what = format!("{labels:?}");
        assert_eq!(
            find(&exposed, "ingero_call_duration_seconds_count", &labels),
            Some(*count as f64),
            "{what}"
        );
        let sum = find(&exposed, "ingero_call_duration_seconds_sum", &labels).context(what.clone())?;
        assert!(
            (sum - *total as f64 / 1e9).abs() < 1e-6,
            "{what}: {sum} s vs {total} ns"
        );
        if op.contains("Alloc") || op.contains("Malloc") || op.contains("cpy") {
            assert_eq!(
                find(&exposed, "ingero_call_bytes_total", &labels),
                Some(*bytes as f64),
                "{what}"
            );
        }
        if op.contains("Synchronize") {
            let wait = find(&exposed, "ingero_sync_wait_seconds_total", &labels).context(what.clone())?;
            assert!((wait - sum).abs() < 1e-9, "{what}");
        }
    }
    let call_series = exposed
        .iter()
        .filter(|(n, _, _)| n == "ingero_call_duration_seconds_count")
        .count();
    assert_eq!(call_series, groups.len(), "no series that SQL does not find");

    // Every bucket of one node's launches: the calls at or under its bound.
    let bounds = bounds_ns(&exposed, "ingero_call_duration_seconds_bucket");
    for b in &bounds {
        let le = (*b as f64 / 1e9).to_string();
        let exposed_count = find(
            &exposed,
            "ingero_call_duration_seconds_bucket",
            &[("node", "gpu-node-03"), ("op", "cuLaunchKernel"), ("le", &le)],
        );
        let stored = scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE node = 'gpu-node-03' AND source = 4 AND op = 1 AND duration <= {b}"
            ),
        )?;
        assert_eq!(exposed_count, Some(stored as f64), "le={le}");
    }

    // Off-CPU time by state, block I/O, events per source.
    let mut stmt = conn.prepare(
        "SELECT node, rank, arg0 = 1, count(*), sum(duration) FROM events WHERE source = 3 AND op = 1 GROUP BY 1, 2, 3",
    )?;
    let off_cpu: Vec<(String, i64, bool, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    assert!(!off_cpu.is_empty());
    for (node, rank, preempted, count, total) in off_cpu {
        let rank = rank.to_string();
        let labels = [
            ("node", node.as_str()),
            ("rank", rank.as_str()),
            ("state", if preempted { "preempted" } else { "blocked" }),
        ];
        assert_eq!(
            find(&exposed, "ingero_offcpu_switches_total", &labels),
            Some(count as f64),
            "{labels:?}"
        );
        let secs = find(&exposed, "ingero_offcpu_seconds_total", &labels).context("off-CPU seconds")?;
        assert!((secs - total as f64 / 1e9).abs() < 1e-6, "{labels:?}");
    }
    let io_bytes = scalar(&conn, "SELECT sum(arg0) FROM events WHERE source = 5 AND op = 2")?;
    let io_count = scalar(&conn, "SELECT count(*) FROM events WHERE source = 5 AND op = 2")?;
    assert!(io_count > 0);
    let io = [("node", "gpu-node-03"), ("op", "block_write")];
    assert_eq!(
        find(&exposed, "ingero_block_io_bytes_total", &io),
        Some(io_bytes as f64)
    );
    assert_eq!(
        find(&exposed, "ingero_block_io_duration_seconds_count", &io),
        Some(io_count as f64)
    );
    for (name, id) in [("cuda", 1), ("driver", 4), ("host", 3), ("io", 5)] {
        let stored = scalar(&conn, &format!("SELECT count(*) FROM events WHERE source = {id}"))?;
        assert_eq!(
            find(&exposed, "ingero_events_total", &[("source", name)]),
            Some(stored as f64),
            "{name}"
        );
    }

    // A second scrape counts nothing twice.
    let again = samples(&scrape(&addr, &pki)?)?;
    let launches = [("node", "gpu-node-01"), ("op", "cuLaunchKernel")];
    assert_eq!(
        find(&again, "ingero_call_duration_seconds_count", &launches),
        find(&exposed, "ingero_call_duration_seconds_count", &launches)
    );
    Ok(())
}
