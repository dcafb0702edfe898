//! `/metrics` in the Prometheus text exposition format: the API's own
//! counters (events and drops per source, queries by outcome with a latency
//! histogram, HTTP requests by path and status, failed TLS handshakes), and
//! for `ingero serve` the traced-work metrics of the served database
//! ([`StoredMetrics`], read a bounded slice per scrape; see
//! [`crate::metrics`]).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use agent_common::catalog::op_info;

use crate::{
    metrics::{Registry, exposition, stored::StoredScan},
    readonly::QueryError,
};

/// Upper bounds (seconds) of the query latency histogram.
const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// The `source` label of `EventCounts::by_source`, index by index.
pub const SOURCES: [&str; 4] = ["cuda", "driver", "host", "io"];

/// The label for a request path: known endpoints by name, anything else
/// as "other" (unbounded label values would grow without limit).
#[must_use]
pub fn path_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/api/v1/time" => "/api/v1/time",
        "/api/v1/query" => "/api/v1/query",
        "/api/v1/chains" => "/api/v1/chains",
        "/api/v1/ops" => "/api/v1/ops",
        "/api/v1/overview" => "/api/v1/overview",
        _ => "other",
    }
}

#[derive(Debug, Default)]
struct QueryStats {
    by_outcome: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The API's own counters (requests, queries, TLS handshakes), shared by
/// every request and rendered by `/metrics`.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    queries: Mutex<QueryStats>,
    /// TLS handshakes that failed since start; the server increments it.
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed at once because their address had too many open.
    pub connections_refused: AtomicU64,
}

/// Event and drop counts to expose.
#[derive(Debug, Default, Clone)]
pub struct EventCounts {
    /// Events recorded per source, in the order cuda, driver, host, io.
    pub by_source: [u64; 4],
    /// (source, op, reason, count)
    pub drops: Vec<(u8, u8, String, u64)>,
}

impl EventCounts {
    /// Counts of a stored database: events per source as `registry`
    /// counted them, drops from the `drops` table when there is one.
    pub fn from_db(conn: &rusqlite::Connection, registry: &Registry) -> rusqlite::Result<Self> {
        let mut counts = Self::default();
        for (&src, &n) in registry.events_by_source() {
            if let Some(i) = source_index(src) {
                counts.by_source[i] += n;
            }
        }
        if crate::store::schema::table_exists(conn, "drops")? {
            let mut stmt =
                conn.prepare("SELECT source, op, reason, sum(count) FROM drops GROUP BY 1, 2, 3")?;
            counts.drops = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
                })?
                .collect::<Result<_, _>>()?;
        }
        Ok(counts)
    }
}

/// What `/metrics` shows of a stored database: its counts, the
/// traced-work registry, and whether the scan has caught up.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    /// Events per source and drops.
    pub counts: EventCounts,
    /// The traced-work metrics so far.
    pub registry: Arc<Registry>,
    /// Whether every event of the database is counted.
    pub caught_up: bool,
}

/// Longest a scrape spends reading new rows of a served database; the
/// rest is read by the next scrapes.
pub const SCAN_BUDGET: Duration = Duration::from_millis(500);

/// The traced-work metrics of `ingero serve`: the scan of its database,
/// advanced by one slice per scrape, and its last answer, served as is to a
/// scrape that finds the scan busy or no query slot free.
#[derive(Debug)]
pub struct StoredMetrics {
    scan: Mutex<StoredScan>,
    last: Mutex<Option<StoredAnswer>>,
}

impl StoredMetrics {
    /// Nothing read yet, for the agent of `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            scan: Mutex::new(StoredScan::new(node)),
            last: Mutex::new(None),
        }
    }

    /// The last answer, if any.
    #[must_use]
    pub fn last(&self) -> Option<StoredAnswer> {
        self.last.lock().ok()?.clone()
    }

    /// Advances the scan by at most [`SCAN_BUDGET`] on `conn` and answers;
    /// if another scrape is advancing it, its last answer.
    pub fn read(&self, conn: &rusqlite::Connection) -> rusqlite::Result<Option<StoredAnswer>> {
        let Ok(mut scan) = self.scan.try_lock() else {
            return Ok(self.last());
        };
        scan.advance(conn, SCAN_BUDGET)?;
        let registry = Arc::new(scan.registry().clone());
        let answer = StoredAnswer {
            counts: EventCounts::from_db(conn, &registry)?,
            registry,
            caught_up: scan.caught_up(),
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(answer.clone());
        }
        Ok(Some(answer))
    }
}

/// The gauge saying whether a served database is counted whole.
#[must_use]
pub fn render_caught_up(node: &str, caught_up: bool) -> String {
    format!(
        "# HELP ingero_db_scan_caught_up 1 when the traced-work metrics count every event of the served database; 0 while it is still being read (a slice per scrape).\n\
         # TYPE ingero_db_scan_caught_up gauge\n\
         ingero_db_scan_caught_up{{node=\"{}\"}} {}\n",
        label(node),
        u8::from(caught_up)
    )
}

fn source_index(src: u8) -> Option<usize> {
    use agent_common::catalog::source;
    match src {
        source::CUDA => Some(0),
        source::DRIVER => Some(1),
        source::HOST => Some(2),
        source::IO => Some(3),
        _ => None,
    }
}

/// A label value, escaped as the exposition format requires.
fn label(v: &str) -> String {
    exposition::escape(v)
}

impl ApiMetrics {
    /// Counts one answered request by its path label and HTTP status.
    pub fn record_request(&self, path: &'static str, status: u16) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((path, status)).or_default() += 1;
        }
    }

    /// Counts one SQL query by outcome (ok, refused, timeout, error) and
    /// adds its duration to the latency histogram.
    pub fn record_query<T>(&self, result: &Result<T, &QueryError>, took: Duration) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(QueryError::Denied(_)) => "refused",
            Err(QueryError::Timeout(_)) => "timeout",
            Err(QueryError::Cancelled) => "cancelled",
            Err(_) => "error",
        };
        if let Ok(mut q) = self.queries.lock() {
            *q.by_outcome.entry(outcome).or_default() += 1;
            let secs = took.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    q.buckets[i] += 1;
                }
            }
            q.count += 1;
            q.sum += secs;
        }
    }

    /// The exposition text.
    #[must_use]
    pub fn render(&self, node: &str, counts: &EventCounts) -> String {
        let node = label(node);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ingero_events_total Events recorded by the agent, by source."
        );
        let _ = writeln!(out, "# TYPE ingero_events_total counter");
        for (i, s) in SOURCES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ingero_events_total{{node=\"{node}\",source=\"{s}\"}} {}",
                counts.by_source[i]
            );
        }
        let _ = writeln!(
            out,
            "# HELP ingero_events_dropped_total Events the kernel could not deliver, by source, operation and reason."
        );
        let _ = writeln!(out, "# TYPE ingero_events_dropped_total counter");
        for (src, op, reason, n) in &counts.drops {
            let op_name = op_info(*src, *op).map_or_else(|| format!("{src}/{op}"), |o| o.name.to_owned());
            let source = source_index(*src).map_or("unknown", |i| SOURCES[i]);
            let _ = writeln!(
                out,
                "ingero_events_dropped_total{{node=\"{node}\",source=\"{source}\",op=\"{}\",reason=\"{}\"}} {n}",
                label(&op_name),
                label(reason)
            );
        }
        if let Ok(q) = self.queries.lock() {
            let _ = writeln!(
                out,
                "# HELP ingero_queries_total SQL queries answered, by outcome."
            );
            let _ = writeln!(out, "# TYPE ingero_queries_total counter");
            for outcome in ["ok", "refused", "timeout", "error"] {
                let n = q.by_outcome.get(outcome).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "ingero_queries_total{{node=\"{node}\",outcome=\"{outcome}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP ingero_query_duration_seconds Time to answer an SQL query."
            );
            let _ = writeln!(out, "# TYPE ingero_query_duration_seconds histogram");
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ingero_query_duration_seconds_bucket{{node=\"{node}\",le=\"{bound}\"}} {}",
                    q.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "ingero_query_duration_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {}",
                q.count
            );
            let _ = writeln!(
                out,
                "ingero_query_duration_seconds_sum{{node=\"{node}\"}} {}",
                q.sum
            );
            let _ = writeln!(
                out,
                "ingero_query_duration_seconds_count{{node=\"{node}\"}} {}",
                q.count
            );
        }
        if let Ok(r) = self.requests.lock() {
            let _ = writeln!(
                out,
                "# HELP ingero_http_requests_total API requests, by path and status."
            );
            let _ = writeln!(out, "# TYPE ingero_http_requests_total counter");
            for ((path, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "ingero_http_requests_total{{node=\"{node}\",path=\"{path}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ingero_tls_handshake_failures_total TLS handshakes that failed (no or wrong client certificate, old protocol)."
        );
        let _ = writeln!(out, "# TYPE ingero_tls_handshake_failures_total counter");
        let _ = writeln!(
            out,
            "ingero_tls_handshake_failures_total{{node=\"{node}\"}} {}",
            self.tls_handshake_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ingero_connections_refused_total Connections closed at once: too many open from their address."
        );
        let _ = writeln!(out, "# TYPE ingero_connections_refused_total counter");
        let _ = writeln!(
            out,
            "ingero_connections_refused_total{{node=\"{node}\"}} {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP ingero_build_info The agent's version.");
        let _ = writeln!(out, "# TYPE ingero_build_info gauge");
        let _ = writeln!(
            out,
            "ingero_build_info{{node=\"{node}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = ApiMetrics::default();
        let err = QueryError::Sql("x".into());
        let ok: Result<(), &QueryError> = Err(&err);
        m.record_query(&ok, Duration::from_millis(20));
        m.record_query(&ok, Duration::from_secs(2));
        let text = m.render("n\"1", &EventCounts::default());
        assert!(
            text.contains("ingero_query_duration_seconds_bucket{node=\"n\\\"1\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingero_query_duration_seconds_bucket{node=\"n\\\"1\",le=\"5\"} 2"),
            "{text}"
        );
        assert!(text.contains("ingero_queries_total{node=\"n\\\"1\",outcome=\"error\"} 2"));
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(path_label("/api/v1/query"), "/api/v1/query");
        assert_eq!(path_label("/etc/passwd"), "other");
    }
}
