//! The export thread: one thread (`ingero-otlp`, lowest CPU priority) with
//! its own single-threaded async runtime and HTTP client. Every interval
//! it reads the latest published registry (a copy, never the tracer's
//! own) and posts it to `/v1/metrics`; log records reach it through a
//! bounded queue and go to `/v1/logs` through the OTLP SDK's log exporter.
//!
//! Invariants: producers only `try_send`, so they never wait on the
//! collector; a full queue drops the record and counts it; every export
//! has a deadline ([`OtlpOptions::timeout`]); [`Sender::finish`] waits for
//! a last snapshot and what is queued at most one deadline (and a second)
//! and then returns whatever happened, so a command never hangs on a
//! collector.
//! The first failure is warned about once; the rest are only counted.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    InstrumentationScope,
    logs::{LogRecord as _, Logger as _, LoggerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLoggerProvider};
use prost::Message as _;

use super::{OtlpOptions, Stats, logs::Record, metrics};
use crate::api::LiveView;

/// Records exported together at most.
const BATCH: usize = 64;

/// Where producers put log records; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogQueue {
    tx: SyncSender<Record>,
    stats: Arc<Stats>,
}

impl LogQueue {
    /// Queues `r` for export, or counts it as dropped when the queue is
    /// full (the collector is slower than the records come).
    pub fn push(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {
                self.stats.logs_pending.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.logs_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

impl LogQueue {
    /// A queue of `capacity` records and its receiving end, for tests of
    /// producers.
    #[cfg(test)]
    pub(crate) fn bounded(capacity: usize) -> (Self, Receiver<Record>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        (
            Self {
                tx,
                stats: Arc::new(Stats::default()),
            },
            rx,
        )
    }

    /// Records dropped because the queue was full.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.stats.logs_dropped.load(Relaxed)
    }
}

/// What the push did, for the closing summary.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The collector's base URL.
    pub endpoint: String,
    /// Whether metrics were pushed (a tracer) or only records (explain).
    pub with_metrics: bool,
    /// Metric exports taken.
    pub metric_exports: u64,
    /// Data points taken.
    pub points_sent: u64,
    /// Log records taken.
    pub logs_sent: u64,
    /// Data points and log records not delivered.
    pub dropped: u64,
    /// The last export error, if any.
    pub last_error: Option<String>,
}

impl Report {
    /// The summary line (and a warning line when something was dropped).
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let metrics = if self.with_metrics {
            format!(
                "{} metric push(es) ({} data points) and ",
                self.metric_exports, self.points_sent
            )
        } else {
            String::new()
        };
        let mut out = vec![format!(
            "ingero: OTLP: {metrics}{} log record(s) delivered to {}, {} dropped",
            self.logs_sent, self.endpoint, self.dropped
        )];
        if self.dropped > 0 {
            out.push(format!(
                "ingero: warning: {} OTLP item(s) (metric data points, log records) could not be delivered{}{}",
                self.dropped,
                self.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last error: {e})")),
                if self.with_metrics {
                    "; the events themselves are all in the database"
                } else {
                    ""
                }
            ));
        }
        out
    }
}

/// The running export thread.
#[derive(Debug)]
pub struct Sender {
    queue: Option<LogQueue>,
    done: Receiver<Option<String>>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    endpoint: String,
    timeout: Duration,
    with_metrics: bool,
}

impl Sender {
    /// Starts the thread. With `live`, it pushes its metrics every
    /// interval and once more at [`Sender::finish`]; without, it only
    /// sends the log records queued.
    pub fn start(opts: &OtlpOptions, live: Option<Arc<dyn LiveView>>) -> Result<Self, String> {
        let with_metrics = live.is_some();
        let stats = Arc::new(Stats::default());
        super::register(&stats);
        let (tx, rx) = mpsc::sync_channel(crate::config::defaults::OTLP_QUEUE);
        let (done_tx, done) = mpsc::channel();
        let thread_stats = Arc::clone(&stats);
        let thread_opts = opts.clone();
        let handle = std::thread::Builder::new()
            .name("ingero-otlp".into())
            .spawn(move || {
                super::lower_priority();
                let error = Worker::new(thread_opts, live, thread_stats).map(|mut w| {
                    w.run(&rx);
                    w.last_error
                });
                let error = match error {
                    Ok(e) => e,
                    Err(e) => Some(e),
                };
                let _ = done_tx.send(error);
            })
            .map_err(|e| format!("cannot start the OTLP thread: {e}"))?;
        Ok(Self {
            queue: Some(LogQueue {
                tx,
                stats: Arc::clone(&stats),
            }),
            done,
            handle: Some(handle),
            stats,
            endpoint: opts.endpoint.clone(),
            timeout: opts.timeout,
            with_metrics,
        })
    }

    /// A producer's handle on the log queue.
    #[must_use]
    pub fn queue(&self) -> Option<LogQueue> {
        self.queue.clone()
    }

    /// Sends the last snapshot and the queued records (every producer's
    /// handle must be dropped first, or they wait for the next interval),
    /// waits for them at most one export deadline (and a second), and
    /// reports. Records still unsent then are counted as dropped and the
    /// thread is left to end with the process.
    #[must_use]
    pub fn finish(mut self) -> Report {
        drop(self.queue.take());
        let waited = self.done.recv_timeout(self.timeout + Duration::from_secs(1));
        let last_error = if let Ok(e) = waited {
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
            e
        } else {
            let unsent = self.stats.logs_pending.swap(0, Relaxed);
            self.stats.logs_dropped.fetch_add(unsent, Relaxed);
            Some(format!(
                "the collector did not answer within {}; the last push was abandoned",
                crate::units::HumanDuration(self.timeout)
            ))
        };
        let s = &self.stats;
        Report {
            endpoint: self.endpoint.clone(),
            with_metrics: self.with_metrics,
            metric_exports: s.metric_exports.load(Relaxed),
            points_sent: s.points_sent.load(Relaxed),
            logs_sent: s.logs_sent.load(Relaxed),
            dropped: s.dropped(),
            last_error,
        }
    }
}

/// Warned once per process.
static WARNED: AtomicBool = AtomicBool::new(false);

/// The innermost cause of an error chain ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    inner.to_string()
}

/// The export thread's state.
struct Worker {
    opts: OtlpOptions,
    live: Option<Arc<dyn LiveView>>,
    stats: Arc<Stats>,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    exporter: opentelemetry_otlp::LogExporter,
    provider: SdkLoggerProvider,
    scope: InstrumentationScope,
    start_ns: u64,
    last_error: Option<String>,
}

impl Worker {
    fn new(opts: OtlpOptions, live: Option<Arc<dyn LiveView>>, stats: Arc<Stats>) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP runtime: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .no_proxy();
        if let Some(tls) = &opts.tls {
            builder = builder.tls_backend_preconfigured(tls.clone());
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot make the OTLP HTTP client: {}", root_cause(&e)))?;
        let headers: HashMap<String, String> = opts.headers.clone().into_iter().collect();
        let mut exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_endpoint(opts.url("v1/logs"))
            .with_http_client(client.clone())
            .with_headers(headers)
            .with_timeout(opts.timeout)
            .build()
            .map_err(|e| format!("cannot make the OTLP log exporter: {e}"))?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_attributes([
                    opentelemetry::KeyValue::new("service.name", "ingero"),
                    opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    opentelemetry::KeyValue::new("host.name", opts.node.clone()),
                ])
                .build(),
        );
        Ok(Self {
            live,
            stats,
            rt,
            client,
            exporter,
            provider: SdkLoggerProvider::builder().build(),
            scope: InstrumentationScope::builder("ingero")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            start_ns: u64::try_from(crate::clock::unix_ns()).unwrap_or(0),
            last_error: None,
            opts,
        })
    }

    fn run(&mut self, rx: &Receiver<Record>) {
        let mut next = Instant::now() + self.opts.interval;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.export_logs(&batch, self.opts.timeout);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export_metrics(self.opts.timeout);
                    next = Instant::now() + self.opts.interval;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The last snapshot and what is still queued, within one deadline.
        let deadline = Instant::now() + self.opts.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.export_metrics(left());
        let rest: Vec<Record> = rx.try_iter().collect();
        for batch in rest.chunks(BATCH) {
            self.export_logs(batch, left());
        }
    }

    fn failed(&mut self, what: &str, error: String) {
        if !WARNED.swap(true, Relaxed) {
            crate::say!(
                "ingero: warning: OTLP {what} export to {} failed ({error}); the work goes on, and what is not \
                 delivered is counted (ingero_otlp_dropped_total and the closing summary); no further warning",
                self.opts.endpoint
            );
        }
        self.last_error = Some(error);
    }

    fn export_metrics(&mut self, budget: Duration) {
        let Some(live) = &self.live else {
            return;
        };
        let registry = live.registry();
        let counts = live.counts();
        let now_ns = u64::try_from(crate::clock::unix_ns()).unwrap_or(0);
        let req = metrics::request(
            &self.opts.node,
            &registry,
            &counts,
            metrics::Times {
                start_ns: self.start_ns.min(now_ns),
                now_ns,
            },
        );
        let points = metrics::points(&req);
        if points == 0 {
            return;
        }
        let mut http = self
            .client
            .post(self.opts.url("v1/metrics"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(req.encode_to_vec());
        for (k, v) in &self.opts.headers {
            http = http.header(k, v);
        }
        let result = if budget.is_zero() {
            Err("no time left".to_owned())
        } else {
            self.rt.block_on(async {
                match tokio::time::timeout(budget, http.send()).await {
                    Err(_) => Err(format!(
                        "no answer within {}",
                        crate::units::HumanDuration(budget)
                    )),
                    Ok(Err(e)) => Err(root_cause(&e)),
                    Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                    Ok(Ok(resp)) => Err(format!("the collector answered HTTP {}", resp.status())),
                }
            })
        };
        match result {
            Ok(()) => {
                self.stats.metric_exports.fetch_add(1, Relaxed);
                self.stats.points_sent.fetch_add(points, Relaxed);
            }
            Err(e) => {
                self.stats.points_dropped.fetch_add(points, Relaxed);
                self.failed("metrics", e);
            }
        }
    }

    fn export_logs(&mut self, batch: &[Record], budget: Duration) {
        let n = batch.len() as u64;
        let logger = self.provider.logger("ingero");
        let records: Vec<_> = batch
            .iter()
            .map(|r| {
                let mut rec = logger.create_log_record();
                let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(r.time_ns).unwrap_or(0));
                rec.set_event_name(r.event);
                rec.set_timestamp(at);
                rec.set_observed_timestamp(SystemTime::now());
                rec.set_severity_number(r.severity);
                rec.set_severity_text(r.severity_text);
                rec.set_body(opentelemetry::logs::AnyValue::String(r.body.clone().into()));
                for (k, v) in &r.attributes {
                    rec.add_attribute(*k, v.clone());
                }
                rec
            })
            .collect();
        let pairs: Vec<_> = records.iter().map(|r| (r, &self.scope)).collect();
        let result = if budget.is_zero() {
            Err("no time left".to_owned())
        } else {
            let exporter = &self.exporter;
            self.rt.block_on(async {
                match tokio::time::timeout(budget, exporter.export(LogBatch::new(&pairs))).await {
                    Err(_) => Err(format!(
                        "no answer within {}",
                        crate::units::HumanDuration(budget)
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(())) => Ok(()),
                }
            })
        };
        // No longer pending; of a failed batch, only what `finish` has not
        // already counted as dropped when it stopped waiting.
        let pending = self
            .stats
            .logs_pending
            .fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n)))
            .unwrap_or(0);
        match result {
            Ok(()) => {
                self.stats.logs_sent.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.stats.logs_dropped.fetch_add(n.min(pending), Relaxed);
                self.failed("log", e);
            }
        }
    }
}
