//! The agent API over real sockets and real TLS handshakes.
//!
//! Most tests serve a copy of an investigation database with `ingero
//! serve` (no root needed) and talk to it with two independent clients:
//! the project's own (`ingero_fleet::AgentClient`, reqwest on rustls) and
//! stock Debian tools no one here wrote (`curl`, `openssl s_client`,
//! `promtool`). The last test serves while tracing a busy process (root).

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::common::{
    Daemon, Pki, Workload, ingero, promtool_check, root_or_skip, runtime, sample_db, serial, sha256,
};
use anyhow::{Context, bail};
use ingero_api::{ChainsEndpoint, OpsEndpoint, OverviewEndpoint, Since};
use ingero_fleet::{AgentClient, ClientTls, FleetError};
use serde_json::{Value, json};

fn client(addr: &str, tls: &ClientTls) -> anyhow::Result<AgentClient> {
    Ok(AgentClient::new(addr, tls, Duration::from_secs(20))?)
}

/// `curl` against the agent: (exit code, body).
fn curl(args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", "*"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running curl (cargo xtask setup installs it)")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// `openssl s_client` against the agent: (exit code, all output).
fn s_client(addr: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "gpu-node-03"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn certs_commands_make_a_fleet_pki_with_private_keys_and_refuse_to_overwrite() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path().join("pki"))?;
    for key in ["ca-key.pem", "gpu-node-03-key.pem", "oncall-key.pem"] {
        let mode = std::fs::metadata(pki.path(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} must be readable by its owner only");
    }
    // The node certificate verifies against the CA for the names it was issued for.
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            &pki.s("ca.pem"),
            "-purpose",
            "sslserver",
            &pki.s("gpu-node-03.pem"),
        ])
        .output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &pki.s("gpu-node-03.pem")])
        .output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DNS:gpu-node-03") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    let before = sha256(&pki.path("ca-key.pem"))?;
    let (code, _, err) = ingero(&["certs", "init-ca", "--dir", &pki.s("")])?;
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "says how to replace: {err}");
    assert_eq!(
        sha256(&pki.path("ca-key.pem"))?,
        before,
        "the CA key was not replaced"
    );
    Ok(())
}

#[test]
fn mutual_tls_rejects_missing_foreign_and_old_clients_for_both_clients() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let other = Pki::new(dir.path().join("other-pki"))?;
    let mut agent = pki.serve(&db, &[])?;
    let addr = agent.api_addr()?;
    let rt = runtime()?;

    // The project's client: the right certificate works...
    let good = client(&addr, &pki.client())?;
    let answer = rt.block_on(good.sql("SELECT count(*) FROM events"))?;
    assert!(answer.rows[0][0].as_i64().unwrap_or(0) > 1000, "{answer:?}");
    // ...no certificate, one from another CA, and TLS 1.2 do not.
    let no_cert = ClientTls {
        client_cert: None,
        client_key: None,
        ..pki.client()
    };
    let foreign = ClientTls {
        ca_cert: Some(pki.path("ca.pem")),
        ..other.client()
    };
    // Each refusal says what to fix, whether the agent's alert or its
    // close reaches the client first (TLS 1.3 checks the client's
    // certificate after the client's side of the handshake).
    for (what, tls, config, advice) in [
        (
            "no client certificate",
            &no_cert,
            no_cert.tls13()?,
            "requires a client certificate",
        ),
        (
            "a certificate from another CA",
            &foreign,
            foreign.tls13()?,
            "is it from the agent's CA?",
        ),
        (
            "TLS 1.2",
            &pki.client(),
            pki.client().rustls_config(&[&rustls::version::TLS12])?,
            "share no TLS version",
        ),
    ] {
        let c = AgentClient::with_tls_config(&addr, tls, Duration::from_secs(10), Some(config))?;
        match rt.block_on(c.sql("SELECT 1")) {
            Err(FleetError::Tls(m)) if m.contains(advice) => {}
            other => bail!("{what}: expected a TLS failure saying '{advice}', got {other:?}"),
        }
    }

    // A stock client: curl.
    let url = format!("https://{addr}/api/v1/overview");
    let (ca, cert, key) = (pki.s("ca.pem"), pki.s("oncall.pem"), pki.s("oncall-key.pem"));
    let (code, body) = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url])?;
    assert_eq!(code, 0, "curl with the right certificate: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["node"], "gpu-node-03");
    // The README's example, as written: `-d` sends a form content type,
    // and the body is JSON all the same.
    let query_url = format!("https://{addr}/api/v1/query");
    let (code, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-d",
        r#"{"sql": "SELECT count(*) FROM events"}"#,
        &query_url,
    ])?;
    assert_eq!(code, 0, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert!(answer["rows"][0][0].as_i64().is_some_and(|n| n > 0), "{answer}");
    let (code, body) = curl(&["--cacert", &ca, &url])?;
    assert_ne!(code, 0, "curl without a certificate got: {body}");
    let (ocert, okey) = (other.s("oncall.pem"), other.s("oncall-key.pem"));
    let (code, body) = curl(&["--cacert", &ca, "--cert", &ocert, "--key", &okey, &url])?;
    assert_ne!(code, 0, "curl with another CA's certificate got: {body}");
    let (code, body) = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        &url,
    ])?;
    assert_eq!(code, 35, "curl over TLS 1.2 must fail the handshake: {body}");

    // Another stock client: openssl s_client shows the protocol and the verdicts.
    let (code, out) = s_client(
        &addr,
        &[
            "-CAfile",
            &ca,
            "-cert",
            &cert,
            "-key",
            &key,
            "-verify_return_error",
        ],
    )?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let (code, out) = s_client(&addr, &["-tls1_2", "-CAfile", &ca, "-cert", &cert, "-key", &key])?;
    assert_ne!(code, 0, "openssl s_client -tls1_2 must fail: {out}");
    assert!(out.contains("alert protocol version"), "{out}");

    // The server counted every refusal.
    let metrics = rt.block_on(async {
        let response = reqwest_client(&pki)?
            .get(format!("https://{addr}/metrics"))
            .send()
            .await?;
        anyhow::Ok(response.text().await?)
    })?;
    let failures = metric(&metrics, "ingero_tls_handshake_failures_total").context("no handshake metric")?;
    assert!(
        failures >= 6.0,
        "failed handshakes counted: {failures}\n{metrics}"
    );
    Ok(())
}

/// A plain reqwest client with the PKI's client certificate, for raw
/// requests the fleet client does not make.
fn reqwest_client(pki: &Pki) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client().tls13()?)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

#[test]
fn the_self_signed_certificate_is_persisted_and_its_fingerprint_printed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let state = dir.path().join("state");
    let state_s = state.display().to_string();
    let args = ["--listen", "127.0.0.1:0", "--state-dir", &state_s];
    let mut first = Daemon::serve(&db, &args)?;
    let line = first.logged("SHA-256").context("fingerprint line")?;
    let printed = line.rsplit(' ').next().unwrap_or_default().to_owned();
    let addr = first.api_addr()?;
    let cert = state.join("tls/agent.pem");
    // openssl agrees with the printed fingerprint.
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()?;
    let x509 = String::from_utf8_lossy(&x509.stdout);
    assert!(
        x509.trim().ends_with(&printed),
        "openssl: {x509}, agent: {printed}"
    );
    // A client that trusts exactly this certificate connects, with no client certificate.
    let (code, body) = curl(&[
        "--cacert",
        &cert.display().to_string(),
        &format!("https://{addr}/healthz"),
    ])?;
    assert_eq!((code, body.as_str()), (0, "ok\n"));
    drop(first);
    let mut second = Daemon::serve(&db, &args)?;
    let again = second.logged("SHA-256").context("fingerprint line")?;
    assert!(
        again.ends_with(&printed),
        "a restart keeps the certificate: {again} vs {printed}"
    );
    Ok(())
}

#[test]
fn writes_through_the_query_endpoint_fail_and_leave_the_database_unchanged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let digest = sha256(&db)?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &["--query-timeout", "2s"])?;
    let c = client(&agent.api_addr()?, &pki.client())?;
    let rt = runtime()?;
    let attempts = [
        "INSERT INTO events (timestamp, pid, tid, source, op, duration) VALUES (1, 1, 1, 1, 1, 1)",
        "DELETE FROM events",
        "UPDATE events SET duration = 0",
        "DROP TABLE events",
        "CREATE TABLE x (a)",
        "ATTACH DATABASE '/tmp/ingero-api-attack.db' AS x",
        "PRAGMA writable_schema = ON",
        "SELECT 1; DELETE FROM events",
        "VACUUM",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT sum(x) FROM c",
    ];
    for sql in attempts {
        let started = Instant::now();
        match rt.block_on(c.sql(sql)) {
            Err(FleetError::Http { status, message }) => {
                assert!(
                    [400, 403, 408].contains(&status),
                    "{sql}: HTTP {status} {message}"
                );
                assert!(
                    !message.is_empty() && !message.contains("panicked"),
                    "{sql}: {message}"
                );
            }
            other => bail!("{sql}: expected a refusal, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        !Path::new("/tmp/ingero-api-attack.db").exists(),
        "ATTACH created a file"
    );
    // Still serving, and the file is byte for byte what it was.
    let ok = rt.block_on(c.sql("SELECT count(*) FROM events"))?;
    assert!(ok.rows[0][0].as_i64().unwrap_or(0) > 0);
    drop(agent);
    assert_eq!(sha256(&db)?, digest, "the database changed");
    Ok(())
}

/// Starts `sql` with its own `timeout_ms` and returns once it holds the
/// agent's only query slot: a probe was refused with 429 while it still ran.
/// A probe can win the race for the slot, and the long query then got the
/// 429 itself; it is sent again. Returns the running query and the refusal.
async fn hold_the_only_slot(
    http: &reqwest::Client,
    url: &str,
    sql: &str,
    timeout_ms: u64,
) -> anyhow::Result<(
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    reqwest::Response,
)> {
    let start_long = || {
        let (http, url) = (http.clone(), url.to_owned());
        let body = json!({ "sql": sql, "timeout_ms": timeout_ms });
        tokio::spawn(async move { http.post(&url).json(&body).send().await })
    };
    let mut long = start_long();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = http.post(url).json(&json!({ "sql": "SELECT 1" })).send().await?;
        if probe.status().as_u16() == 429 && !long.is_finished() {
            return Ok((long, probe));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "in 5 s the long query never held the slot while a probe was refused"
        );
        if long.is_finished() {
            long = start_long();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_long_query_is_interrupted_at_its_deadline_and_the_cap_answers_429() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &["--max-queries", "1", "--query-timeout", "20s"])?;
    let addr = agent.api_addr()?;
    let rt = runtime()?;
    let http = reqwest_client(&pki)?;
    let url = format!("https://{addr}/api/v1/query");
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT sum(x) FROM c";

    // The request's own deadline.
    let started = Instant::now();
    let (status, body) = rt.block_on(async {
        let r = http
            .post(&url)
            .json(&json!({ "sql": endless, "timeout_ms": 500 }))
            .send()
            .await?;
        anyhow::Ok((r.status().as_u16(), r.json::<Value>().await?))
    })?;
    let took = started.elapsed();
    assert_eq!(status, 408, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("deadline")
            || body["error"].as_str().unwrap_or("").contains("time"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "interrupted after {took:?}"
    );

    // With the one query slot taken, a second query is told to retry; other endpoints still answer.
    let (second, health) = rt.block_on(async {
        let (long, second) = hold_the_only_slot(&http, &url, endless, 3000).await?;
        let retry = second.headers().get("retry-after").cloned();
        let status = second.status().as_u16();
        let health = http
            .get(format!("https://{addr}/healthz"))
            .send()
            .await?
            .status()
            .as_u16();
        let first = long.await??.status().as_u16();
        assert_eq!(first, 408);
        anyhow::Ok(((status, retry), health))
    })?;
    assert_eq!(second.0, 429);
    assert!(second.1.is_some(), "429 carries Retry-After");
    assert_eq!(health, 200);
    // The slot is free again.
    let ok = rt.block_on(client(&addr, &pki.client())?.sql("SELECT 42"))?;
    assert_eq!(ok.rows, vec![vec![json!(42)]]);

    // The fleet client waits out a busy agent: refused while a long query
    // holds the slot, it asks again after the agent's retry-after.
    let fleet = client(&addr, &pki.client())?;
    let (answer, took) = rt.block_on(async {
        let (long, _) = hold_the_only_slot(&http, &url, endless, 1500).await?;
        let started = Instant::now();
        let answer = fleet.sql("SELECT 43").await;
        let took = started.elapsed();
        long.await??;
        anyhow::Ok((answer, took))
    })?;
    eprintln!("a busy agent answered the fleet client after {took:?}");
    assert_eq!(answer?.rows, vec![vec![json!(43)]]);
    Ok(())
}

#[test]
fn bad_requests_get_json_errors_and_do_not_disturb_good_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &[])?;
    let addr = agent.api_addr()?;
    let base = format!("https://{addr}");
    let http = reqwest_client(&pki)?;
    let rt = runtime()?;
    let huge = "x".repeat(200 * 1024);
    let bad: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            http.post(format!("{base}/api/v1/query"))
                .body("{not json")
                .header("content-type", "application/json"),
            400,
        ),
        (
            http.post(format!("{base}/api/v1/query"))
                .json(&json!({ "sql": "SELECT 1", "bogus": 1 })),
            400,
        ),
        (
            http.post(format!("{base}/api/v1/query"))
                .json(&json!({ "sql": huge })),
            413,
        ),
        (
            http.post(format!("{base}/api/v1/query"))
                .json(&json!({ "sql": "SELEC nonsense" })),
            400,
        ),
        (http.get(format!("{base}/api/v1/query")), 405),
        (http.get(format!("{base}/api/v1/chains?since=yesterday-ish")), 400),
        (http.get(format!("{base}/etc/passwd")), 404),
    ];
    let good = Arc::new(client(&addr, &pki.client())?);
    rt.block_on(async {
        // Good requests run alongside the bad ones throughout.
        let g = Arc::clone(&good);
        let good_task = tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..20 {
                let a = g.sql("SELECT count(*) FROM events WHERE source = 4").await?;
                assert!(a.rows[0][0].as_i64().unwrap_or(0) > 0);
                answered += 1;
            }
            anyhow::Ok(answered)
        });
        for (request, expected) in bad {
            let r = request.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            assert_eq!(status, expected, "{text}");
            let v: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
            let message = v["error"].as_str().context("an error message")?;
            assert!(
                !message.is_empty() && !message.contains("panicked") && !message.contains("backtrace"),
                "{message}"
            );
        }
        assert_eq!(good_task.await??, 20);
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn endpoints_answer_what_the_readme_documents() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &[])?;
    let c = client(&agent.api_addr()?, &pki.client())?;
    let rt = runtime()?;
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let total: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;

    let (_, sample) = rt.block_on(c.time())?;
    assert!(
        sample.t0 <= sample.t1 && sample.t1 <= sample.t2 && sample.t2 <= sample.t3,
        "{sample:?}"
    );

    let overview = rt.block_on(c.get::<OverviewEndpoint>(None))?;
    assert_eq!(overview.node, "gpu-node-03");
    assert_eq!(overview.events, total);
    let by_source: i64 = overview.events_by_source.values().sum();
    assert_eq!(by_source, total);
    assert_eq!(overview.rank, Some(2));

    let ops = rt.block_on(c.get::<OpsEndpoint>(Some(Since::All)))?;
    let node = ops.nodes.first().context("a node")?;
    let launch = node
        .ops
        .iter()
        .find(|o| o.name == "cuLaunchKernel")
        .context("cuLaunchKernel")?;
    let (p50, p95, p99) = (launch.p50_us, launch.p95_us, launch.p99_us);
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{launch:?}");
    let launches: i64 = conn.query_row(
        "SELECT count(*) FROM events WHERE source = 4 AND op = ?1",
        [agent_common::catalog::driver_op::LAUNCH_KERNEL],
        |r| r.get(0),
    )?;
    assert_eq!(launch.count as i64, launches);

    // The sample node was slowed by CPU contention and checkpoint writes.
    let chains = rt.block_on(c.get::<ChainsEndpoint>(Some(Since::All)))?;
    assert!(!chains.chains.is_empty(), "{chains:?}");
    assert!(chains.chains.iter().all(|ch| ch.node == "gpu-node-03"));
    Ok(())
}

#[test]
fn metrics_pass_promtool() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agent = pki.serve(&db, &[])?;
    let addr = agent.api_addr()?;
    let c = client(&addr, &pki.client())?;
    let rt = runtime()?;
    rt.block_on(async {
        c.sql("SELECT 1").await?;
        let _ = c.sql("DELETE FROM events").await;
        c.get::<OverviewEndpoint>(None).await?;
        anyhow::Ok(())
    })?;
    let text = rt.block_on(async {
        anyhow::Ok(
            reqwest_client(&pki)?
                .get(format!("https://{addr}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        )
    })?;
    promtool_check(&text)?;
    assert_eq!(
        metric(&text, "ingero_queries_total{node=\"gpu-node-03\",outcome=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "ingero_queries_total{node=\"gpu-node-03\",outcome=\"refused\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "ingero_events_total{node=\"gpu-node-03\",source=\"driver\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    // The traced-work metrics of the served database (see prometheus.rs).
    assert_eq!(
        metric(
            &text,
            "ingero_call_duration_seconds_bucket{node=\"gpu-node-03\",rank=\"2\",source=\"driver\",op=\"cuLaunchKernel\",le=\"+Inf\"}"
        ),
        Some(1320.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ingero_db_scan_caught_up{node=\"gpu-node-03\"}"),
        Some(1.0),
        "{text}"
    );
    Ok(())
}

#[test]
fn plain_http_needs_no_tls_and_a_token_off_loopback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_db(dir.path())?;
    let db_s = db.display().to_string();
    let (code, _, err) = ingero(&["serve", "--db", &db_s, "--listen", "0.0.0.0:0", "--no-tls"])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--token-file"), "says what to do: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "short\n")?;
    let token_s = token_file.display().to_string();
    let (code, _, err) = ingero(&[
        "serve",
        "--db",
        &db_s,
        "--listen",
        "0.0.0.0:0",
        "--no-tls",
        "--token-file",
        &token_s,
    ])?;
    assert_ne!(code, 0, "a short token is refused: {err}");
    assert!(err.contains("16 characters"), "{err}");

    let token = "c0ffee-f00d-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n"))?;
    let mut agent = Daemon::serve(
        &db,
        &["--listen", "0.0.0.0:0", "--no-tls", "--token-file", &token_s],
    )?;
    let warning = agent
        .logged("WARNING")
        .context("plain HTTP is announced loudly")?;
    assert!(warning.contains("not encrypted"), "{warning}");
    let port = agent
        .api_addr()?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let addr = format!("127.0.0.1:{port}");
    let rt = runtime()?;
    let anonymous = client(
        &addr,
        &ClientTls {
            no_tls: true,
            ..ClientTls::default()
        },
    )?;
    match rt.block_on(anonymous.sql("SELECT 1")) {
        Err(FleetError::Http { status: 401, .. }) => {}
        other => bail!("no token: expected 401, got {other:?}"),
    }
    let wrong = client(
        &addr,
        &ClientTls {
            no_tls: true,
            token: Some("c0ffee-f00d-token-0123456788".into()),
            ..ClientTls::default()
        },
    )?;
    assert!(matches!(
        rt.block_on(wrong.sql("SELECT 1")),
        Err(FleetError::Http { status: 401, .. })
    ));
    let right = client(
        &addr,
        &ClientTls {
            no_tls: true,
            token: Some(token.into()),
            ..ClientTls::default()
        },
    )?;
    assert_eq!(rt.block_on(right.sql("SELECT 7"))?.rows, vec![vec![json!(7)]]);
    // Health checks need no token.
    let (code, body) = curl(&[&format!("http://{addr}/healthz")])?;
    assert_eq!((code, body.as_str()), (0, "ok\n"));
    Ok(())
}

#[test]
fn the_agent_keeps_serving_while_tracing_under_load() -> anyhow::Result<()> {
    if !root_or_skip("the_agent_keeps_serving_while_tracing_under_load") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("live.db");
    let pki = Pki::new(dir.path().join("pki"))?;
    // 50k calls/s: a busy training process (the tracer alone sustains 600k/s).
    let calls = 200_000;
    let mut w = Workload::start(
        &ingero_sim::dir().join("ingero-sim-workload"),
        &["rate", "--calls", &calls.to_string(), "--per-sec", "50000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let (cert, key, ca) = (
        pki.s("gpu-node-03.pem"),
        pki.s("gpu-node-03-key.pem"),
        pki.s("ca.pem"),
    );
    let mut tracer = Daemon::trace(
        &db,
        &[
            "--pid",
            &pid,
            "-q",
            "--node",
            "gpu-node-03",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--ca-cert",
            &ca,
        ],
    )?;
    let c = client(&tracer.api_addr()?, &pki.client())?;
    let rt = runtime()?;
    w.go()?;
    let (answers, committed) = rt.block_on(async {
        let mut answers = 0;
        let mut committed = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            let q = c.sql("SELECT count(*) FROM events WHERE source = 4").await?;
            assert!(q.rows[0][0].as_i64().is_some());
            let overview = c.get::<OverviewEndpoint>(None).await?;
            assert!(overview.live.tracing, "{overview:?}");
            committed.push(overview.live.events_committed.map_or(-1, |n| n as i64));
            c.get::<OpsEndpoint>(Some("1m".parse().map_err(anyhow::Error::msg)?))
                .await?;
            answers += 3;
        }
        anyhow::Ok((answers, committed))
    })?;
    w.finish()?;
    let log = tracer.stop()?;
    assert!(answers >= 6, "answered {answers} requests");
    assert!(
        committed.windows(2).all(|w| w[0] <= w[1]) && committed.last() > committed.first(),
        "the live commit count grows while serving: {committed:?}"
    );
    let conn = rusqlite::Connection::open(&db)?;
    let sync = agent_common::catalog::driver_op::CTX_SYNCHRONIZE;
    let stored: i64 = conn.query_row(
        "SELECT count(*) FROM events WHERE source = 4 AND op = ?1",
        [sync],
        |r| r.get(0),
    )?;
    let dropped: i64 = conn.query_row(
        "SELECT ifnull(sum(count), 0) FROM drops WHERE source = 4 AND op = ?1",
        [sync],
        |r| r.get(0),
    )?;
    eprintln!("while serving {answers} requests: {stored} of {calls} calls stored, {dropped} dropped");
    assert_eq!(
        stored + dropped,
        calls,
        "every call is stored or counted as dropped\n{log}"
    );
    assert!(
        stored * 10 >= calls * 9,
        "serving does not starve the tracer: {stored} of {calls} stored\n{log}"
    );
    Ok(())
}
