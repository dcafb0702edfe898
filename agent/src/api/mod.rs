//! The agent's HTTPS API (versioned, JSON): what the fleet client asks
//! each node.
//!
//! - `GET /api/v1/time`: the server's receive and send times (Unix ns), for
//!   NTP-style clock offset estimation;
//! - `POST /api/v1/query {sql, limit, timeout_ms, since}`: columns and rows,
//!   through the same read-only guard, deadline and row cap as `ingero
//!   query` (at most [`MAX_ROWS`] rows an answer);
//! - `GET /api/v1/chains?since=5m`, `GET /api/v1/ops?since=5m`: the causal
//!   chain engine's chains, and per-op percentiles with the node's evidence;
//! - `GET /api/v1/overview`: event counts, chains, node, rank, session, drops;
//! - `GET /healthz`; `GET /metrics` (Prometheus text format).
//!
//! Limits: a 64 KiB request body, a 30 s deadline per request, a cap on
//! concurrent queries (429 past it). Every error is `{"error": "..."}`
//! with a status chosen in one place ([`ApiError`]); nothing else is ever
//! sent. A bearer token, when configured, is checked in constant time.
//! Transport (TLS or not) is [`server`]'s business.

pub mod handlers;
pub mod listen;
pub mod metrics;
pub mod server;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::sync::Semaphore;

use ingero_api::{ErrorAnswer, LiveInfo};

use crate::{analysis::NodeReport, readonly::QueryError};

pub use ingero_api::MAX_ROWS;
/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline of any request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an engine run is reused for identical windows.
const EXPLAIN_CACHE: Duration = Duration::from_secs(2);

/// Everything an API error can be; the one place that picks statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed body, parameter or SQL statement; holds the sentence.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a token is configured and the request lacks it or sends another.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 403: the query was refused by the read-only guard.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no endpoint at this path.
    #[error("no such endpoint; see GET /api/v1/overview and the README")]
    NotFound,
    /// 405: the endpoint exists but not for this method.
    #[error("method not allowed for this endpoint")]
    MethodNotAllowed,
    /// 413: the request body is larger than `MAX_BODY` bytes.
    #[error("request body over {MAX_BODY} bytes")]
    PayloadTooLarge,
    /// 429 with `retry-after: 1`: every query slot is busy; holds the slot count.
    #[error("{0} queries are already running; retry shortly")]
    TooManyQueries(usize),
    /// 408: the query ran past its deadline and was interrupted.
    #[error("{0}")]
    QueryTimeout(String),
    /// 503: the whole request took longer than `REQUEST_TIMEOUT`.
    #[error("the request took longer than {REQUEST_TIMEOUT:?}")]
    RequestTimeout,
    /// 500: the database cannot be opened or read, or a task failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyQueries(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::QueryTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(ErrorAnswer {
                error: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, Self::TooManyQueries(_)) {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Denied(_) => Self::Forbidden(e.to_string()),
            QueryError::Sql(_) => Self::BadRequest(e.to_string()),
            QueryError::Timeout(_) => Self::QueryTimeout(e.to_string()),
            QueryError::Open { .. } | QueryError::NotIngero { .. } => Self::Internal(e.to_string()),
        }
    }
}

/// What a tracing agent shows of its live counters; the command that runs
/// both the tracer and the API provides it, so neither knows the other.
pub trait LiveView: Send + Sync + std::fmt::Debug {
    /// Session, committed and dropped counts for `/api/v1/overview`.
    fn info(&self) -> LiveInfo;
    /// Events per source and drops per probe for `/metrics`.
    fn counts(&self) -> metrics::EventCounts;
}

/// One engine run: its window, when it ran, its reports.
type CachedExplain = (Option<Duration>, Instant, Arc<Vec<NodeReport>>);

/// Shared by every request.
#[derive(Debug)]
pub struct ApiState {
    /// This agent's node name, put in every answer.
    pub node: String,
    /// Path of the SQLite database the API reads.
    pub db: PathBuf,
    /// `Some` while tracing; `None` for `ingero serve`.
    pub live: Option<Arc<dyn LiveView>>,
    /// One permit per query allowed to run at once (`max_queries` permits).
    pub query_slots: Arc<Semaphore>,
    /// How many SQL queries may run at once; past it, 429.
    pub max_queries: usize,
    /// Longest a query may run; a request's `timeout_ms` can only shorten it.
    pub query_timeout: Duration,
    /// Most rows an answer carries; a request's `limit` can only lower it.
    pub max_rows: usize,
    /// Bearer token every request but `/healthz` must send; `None`: no check.
    pub token: Option<Vec<u8>>,
    /// Window of chains/ops without `since` (live: recent; serve: all).
    pub default_since: Option<Duration>,
    /// Request, query and TLS counters for `/metrics`.
    pub metrics: metrics::ApiMetrics,
    explain_cache: Mutex<Option<CachedExplain>>,
}

/// The settings of an [`ApiState`].
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// This agent's node name, put in every answer.
    pub node: String,
    /// Path of the SQLite database the API reads.
    pub db: PathBuf,
    /// How many SQL queries may run at once; past it, 429.
    pub max_queries: usize,
    /// Longest a query may run.
    pub query_timeout: Duration,
    /// Most rows an answer carries.
    pub max_rows: usize,
    /// Bearer token clients must send; `None`: no check.
    pub token: Option<Vec<u8>>,
    /// Window of chains/ops when a request gives no `since`; `None`: all data.
    pub default_since: Option<Duration>,
}

impl ApiState {
    /// The shared state from its settings; `live` is `Some` while tracing.
    #[must_use]
    pub fn new(settings: ApiSettings, live: Option<Arc<dyn LiveView>>) -> Arc<Self> {
        Arc::new(Self {
            node: settings.node,
            db: settings.db,
            live,
            query_slots: Arc::new(Semaphore::new(settings.max_queries)),
            max_queries: settings.max_queries,
            query_timeout: settings.query_timeout,
            max_rows: settings.max_rows,
            token: settings.token,
            default_since: settings.default_since,
            metrics: metrics::ApiMetrics::default(),
            explain_cache: Mutex::new(None),
        })
    }

    /// The engine's reports for the last `since` of recorded data (or the
    /// whole database), reused for a moment so `/chains` and `/ops` asked
    /// together cost one run.
    pub async fn explain(
        self: &Arc<Self>,
        since: Option<Duration>,
    ) -> Result<Arc<Vec<NodeReport>>, ApiError> {
        if let Ok(cache) = self.explain_cache.lock()
            && let Some((key, at, reports)) = cache.as_ref()
            && *key == since
            && at.elapsed() < EXPLAIN_CACHE
        {
            return Ok(Arc::clone(reports));
        }
        let state = Arc::clone(self);
        let reports = tokio::task::spawn_blocking(move || -> Result<Vec<NodeReport>, ApiError> {
            let conn = crate::store::open_read(&state.db)
                .map_err(|e| ApiError::Internal(format!("cannot open the database: {e}")))?;
            let range = crate::timewin::event_range(&conn).map_err(|e| ApiError::Internal(e.to_string()))?;
            let window = crate::timewin::resolve(range, since, None, None).map_err(ApiError::BadRequest)?;
            crate::analysis::explain(&conn, window, crate::clock::unix_ns())
                .map_err(|e| ApiError::Internal(format!("analysis failed: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        let reports = Arc::new(reports);
        if let Ok(mut cache) = self.explain_cache.lock() {
            *cache = Some((since, Instant::now(), Arc::clone(&reports)));
        }
        Ok(reports)
    }
}

/// When a request arrived (Unix ns), for `/api/v1/time`.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub i64);

/// Constant-time equality of a presented token with the expected one.
#[must_use]
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(presented.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get("authorization")?.as_bytes().strip_prefix(b"Bearer ")
}

/// Token check, request deadline, arrival time and request metrics.
async fn guard(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Arrival(crate::clock::unix_ns()));
    let path = metrics::path_label(request.uri().path());
    let response = if path != "/healthz"
        && state
            .token
            .as_deref()
            .is_some_and(|t| !bearer(request.headers()).is_some_and(|p| token_matches(p, t)))
    {
        ApiError::Unauthorized.into_response()
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(r) => r,
            Err(_) => ApiError::RequestTimeout.into_response(),
        }
    };
    state.metrics.record_request(path, response.status().as_u16());
    response
}

/// The API's routes, with its limits.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/api/v1/time", get(handlers::time))
        .route("/api/v1/query", post(handlers::query))
        .route("/api/v1/chains", get(handlers::chains))
        .route("/api/v1/ops", get(handlers::ops))
        .route("/api/v1/overview", get(handlers::overview))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cret!", b"s3cret"));
        assert!(!token_matches(b"S3cret", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }

    #[test]
    fn every_error_has_its_status() {
        assert_eq!(
            ApiError::from(QueryError::Denied("x".into())).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::from(QueryError::Sql("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from(QueryError::Timeout(Duration::from_secs(1))).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            ApiError::TooManyQueries(4).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
