//! OTLP push: the traced-work metrics `/metrics` serves, every interval,
//! and causal chains and verdicts as log records, to an OpenTelemetry
//! collector over OTLP/HTTP with protobuf bodies.
//!
//! - [`metrics`]: a registry snapshot as one OTLP metrics request (same
//!   names, labels and bucket bounds as the Prometheus exposition);
//! - [`logs`]: chains and verdicts as SDK log records;
//! - [`sender`]: the export thread, its bounded queue and its counters;
//! - [`chains`]: the analysis thread of `ingero trace` that finds new chains.
//!
//! Invariants: nothing here runs on the tracer's threads; the tracer's side
//! only reads the published registry copy and `try_send`s into a bounded
//! queue, so a collector that is down, slow or refusing costs the tracing
//! nothing. What cannot be delivered (a failed export, a full queue) is
//! counted in [`Stats`], shown in the closing summary and in
//! `ingero_otlp_dropped_total`, and warned about once.

pub mod chains;
pub mod logs;
pub mod metrics;
pub mod sender;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::{
    cli::OtlpArgs,
    config::{ConfigError, FileConfig, defaults},
    error::CliError,
};

pub use sender::Sender;

/// Where and how to push, resolved from flags and `otlp:`.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// Base URL without a trailing `/` (`http://host:4318`).
    pub endpoint: String,
    /// Time between metric pushes and chain passes.
    pub interval: Duration,
    /// Headers of every request.
    pub headers: BTreeMap<String, String>,
    /// TLS for an https endpoint.
    pub tls: Option<rustls::ClientConfig>,
    /// Deadline of one export.
    pub timeout: Duration,
    /// Node name, the resource's `host.name`.
    pub node: String,
}

impl OtlpOptions {
    /// The URL of one signal (`v1/metrics`, `v1/logs`).
    #[must_use]
    pub fn url(&self, signal: &str) -> String {
        format!("{}/{signal}", self.endpoint)
    }
}

/// Reads `--otlp-endpoint`/`otlp.endpoint` and the rest; `None` when no
/// endpoint is set. A bad value from a flag or `INGERO_OTLP_ENDPOINT` is
/// bad input (exit 2); one from the configuration file is a configuration
/// error (exit 78).
pub fn options(
    args: &OtlpArgs,
    interval: Option<Duration>,
    file: &FileConfig,
    node: &str,
) -> Result<Option<OtlpOptions>, CliError> {
    let o = &file.otlp;
    let (raw, from_file) = match (&args.otlp_endpoint, &o.endpoint) {
        (Some(e), _) if !e.is_empty() => (e.clone(), false),
        (_, Some(e)) if !e.is_empty() => (e.clone(), true),
        _ => return Ok(None),
    };
    let bad = |msg: String| -> CliError {
        if from_file {
            ConfigError::Value(format!("otlp.endpoint: {msg}")).into()
        } else {
            CliError::BadInput(format!("--otlp-endpoint: {msg}"))
        }
    };
    let endpoint = check_endpoint(&raw).map_err(bad)?;
    let valid = |k: &str, v: &str| {
        reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(v).is_ok()
    };
    let mut headers = o.headers.clone().unwrap_or_default();
    if let Some((k, _)) = headers.iter().find(|(k, v)| !valid(k, v)) {
        return Err(ConfigError::Value(format!(
            "otlp.headers: '{k}' is not a valid HTTP header name and value"
        ))
        .into());
    }
    for h in &args.otlp_headers {
        let (k, v) = h
            .split_once('=')
            .map(|(k, v)| (k.trim(), v))
            .filter(|(k, v)| valid(k, v))
            .ok_or_else(|| {
                CliError::BadInput(format!(
                    "--otlp-header '{h}' is not NAME=VALUE with a valid HTTP header name and value"
                ))
            })?;
        headers.insert(k.to_owned(), v.to_owned());
    }
    let too_short = |d: Duration| d < Duration::from_secs(1);
    let interval = match (interval, o.interval) {
        (Some(d), _) if too_short(d) => {
            return Err(CliError::BadInput("--otlp-interval must be at least 1s".into()));
        }
        (Some(d), _) => d,
        (None, Some(d)) if too_short(d.0) => {
            return Err(ConfigError::Value("otlp.interval must be at least 1s".into()).into());
        }
        (None, Some(d)) => d.0,
        (None, None) => defaults::OTLP_INTERVAL,
    };
    let tls = if endpoint.starts_with("https://") {
        let client = ingero_fleet::ClientTls {
            ca_cert: o.ca_cert.as_deref().map(crate::config::expand_home),
            client_cert: o.client_cert.as_deref().map(crate::config::expand_home),
            client_key: o.client_key.as_deref().map(crate::config::expand_home),
            ..ingero_fleet::ClientTls::default()
        };
        if client.ca_cert.is_none() {
            return Err(bad(
                "an https endpoint needs otlp.ca_cert, the CA that signed the collector's certificate".into(),
            ));
        }
        Some(
            client
                .rustls_config(rustls::DEFAULT_VERSIONS)
                .map_err(|e| ConfigError::Value(format!("otlp TLS: {e}")))?,
        )
    } else {
        None
    };
    Ok(Some(OtlpOptions {
        endpoint,
        interval,
        headers,
        tls,
        timeout: defaults::OTLP_TIMEOUT,
        node: node.to_owned(),
    }))
}

/// `raw` as a base URL without a trailing `/`, or why it is not one.
fn check_endpoint(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| format!("'{raw}' is not a URL ({e}); give one like http://127.0.0.1:4318"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "'{raw}' is not an http:// or https:// URL (OTLP/HTTP); give one like http://127.0.0.1:4318"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{raw}' names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{raw}' has a query or fragment; give the base URL"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Sends `records` (an explain's verdict and chains) and waits for them
/// within the export deadline; prints the one summary line to stderr.
pub fn send_records(opts: &OtlpOptions, records: Vec<logs::Record>) {
    let report = match Sender::start(opts, None) {
        Ok(sender) => {
            if let Some(q) = sender.queue() {
                for r in records {
                    q.push(r);
                }
            }
            sender.finish()
        }
        Err(e) => sender::Report {
            endpoint: opts.endpoint.clone(),
            dropped: records.len() as u64,
            last_error: Some(e),
            ..sender::Report::default()
        },
    };
    for line in report.lines() {
        crate::say!("{line}");
    }
}

/// Lowers the calling thread to nice 19 and the lowest best-effort I/O
/// priority, as the archiver does: OTLP work yields to the tracer and to
/// the training job.
pub(crate) fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority and ioprio_set on
    // our own thread id only change its scheduling.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), 19);
        // IOPRIO_WHO_PROCESS = 1; class best-effort (2) << 13, level 7.
        libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

/// What was sent and what was not; shared by the export thread, the
/// closing summary and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Metric exports the collector took.
    pub metric_exports: AtomicU64,
    /// Data points in those exports.
    pub points_sent: AtomicU64,
    /// Data points of exports that failed.
    pub points_dropped: AtomicU64,
    /// Log records the collector took.
    pub logs_sent: AtomicU64,
    /// Log records of failed exports or refused by a full queue.
    pub logs_dropped: AtomicU64,
    /// Log records queued and not yet exported (nor counted as dropped).
    pub logs_pending: AtomicU64,
}

impl Stats {
    /// Everything not delivered.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.points_dropped.load(Relaxed) + self.logs_dropped.load(Relaxed)
    }
}

/// The process's counters, once an export thread has started.
static PROCESS_STATS: OnceLock<Arc<Stats>> = OnceLock::new();

/// The counters of this process's OTLP push (one per process: the
/// first sender made registers its counters).
fn register(stats: &Arc<Stats>) {
    let _ = PROCESS_STATS.set(Arc::clone(stats));
}

/// Appends `ingero_otlp_sent_total` and `ingero_otlp_dropped_total` (by
/// signal) to a `/metrics` answer when this process pushes OTLP.
pub fn render_prometheus(out: &mut String, node: &str) {
    let Some(s) = PROCESS_STATS.get() else {
        return;
    };
    let node = crate::metrics::exposition::escape(node);
    let rows = [
        (
            "ingero_otlp_sent_total",
            "Items the OTLP collector accepted: metric data points and log records.",
            s.points_sent.load(Relaxed),
            s.logs_sent.load(Relaxed),
        ),
        (
            "ingero_otlp_dropped_total",
            "Items not delivered to the OTLP collector (failed export or full queue): metric data points and log records.",
            s.points_dropped.load(Relaxed),
            s.logs_dropped.load(Relaxed),
        ),
    ];
    for (name, help, metrics, logs) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name}{{node=\"{node}\",signal=\"metrics\"}} {metrics}");
        let _ = writeln!(out, "{name}{{node=\"{node}\",signal=\"logs\"}} {logs}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: &str) -> OtlpArgs {
        OtlpArgs {
            otlp_endpoint: Some(endpoint.into()),
            otlp_headers: vec!["x-tenant=a=b".into()],
        }
    }

    #[test]
    fn endpoints_are_checked_and_their_origin_sets_the_exit_code() {
        let file = FileConfig::default();
        let ok = options(&args("http://127.0.0.1:4318/"), None, &file, "n")
            .expect("valid")
            .expect("on");
        assert_eq!(ok.url("v1/logs"), "http://127.0.0.1:4318/v1/logs");
        assert_eq!(ok.headers["x-tenant"], "a=b");
        assert_eq!(ok.interval, defaults::OTLP_INTERVAL);
        for bad in ["127.0.0.1:4318", "ftp://x:1", "http://", "not a url"] {
            let e = options(&args(bad), None, &file, "n").expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
        let file = FileConfig::parse("otlp:\n  endpoint: grpc://x:4317\n").expect("parses");
        let none = OtlpArgs {
            otlp_endpoint: None,
            otlp_headers: Vec::new(),
        };
        let e = options(&none, None, &file, "n").expect_err("bad file value");
        assert_eq!(e.exit_code(), 78, "{e}");
        for yaml in [
            "otlp:\n  interval: 100ms\n",
            "otlp:\n  headers:\n    \"bad name\": x\n",
        ] {
            let file = FileConfig::parse(yaml).expect("parses");
            let e = options(&args("http://x:4318"), None, &file, "n").expect_err(yaml);
            assert_eq!(e.exit_code(), 78, "{yaml}: {e}");
        }
        let e = options(
            &args("http://x:4318"),
            Some(Duration::from_millis(10)),
            &FileConfig::default(),
            "n",
        )
        .expect_err("too short");
        assert_eq!(e.exit_code(), 2, "{e}");
        let e = options(&args("https://x:4318"), None, &FileConfig::default(), "n").expect_err("no CA");
        assert!(e.to_string().contains("ca_cert"), "{e}");
        assert!(
            options(&none, None, &FileConfig::default(), "n")
                .expect("off")
                .is_none()
        );
    }
}
