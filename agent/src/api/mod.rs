//! The agent's HTTPS API (versioned, JSON): what the fleet client asks
//! each node.
//!
//! - `GET /api/v1/time`: the server's receive and send times (Unix ns), for
//!   NTP-style clock offset estimation;
//! - `POST /api/v1/query {sql, limit, timeout_ms, since}`: columns and rows,
//!   through the same read-only guard, deadline and row cap as `ingero
//!   query` (at most [`MAX_ROWS`] rows and `max_answer_bytes` an answer);
//! - `GET /api/v1/chains?since=5m`, `GET /api/v1/ops?since=5m`: the causal
//!   chain engine's chains, and per-op percentiles with the node's evidence;
//! - `GET /api/v1/overview`: event counts, chains, node, rank, session, drops;
//! - `GET /healthz`; `GET /metrics` (Prometheus text format).
//!
//! Limits: a 64 KiB request body (a larger one is read and discarded up to
//! [`DRAIN_LIMIT`] so the 413 reaches the client), a 30 s deadline per
//! request and [`SEND_TIMEOUT`] to send its answer, a cap on the bytes of a
//! query answer (`truncated` says so; the answer is streamed as its rows
//! are read, [`stream`]), one shared budget of database-reading
//! requests (`/query`, `/chains`, `/ops`, `/overview`, and `/metrics` under
//! `ingero serve`; 429 with `retry-after` past it, except for a `/metrics`
//! that can be answered from its last reading). Database work stops when
//! its client goes away, its deadline passes or the agent stops.
//! Connections are limited per address, their headers and idleness are
//! timed ([`server`]). Every error is `{"error": "..."}`
//! with a status chosen in one place ([`ApiError`]); nothing else is ever
//! sent. A bearer token, when configured, is checked in constant time.
//! Transport (TLS or not) is [`server`]'s business.

mod activity;
pub mod handlers;
pub mod listen;
pub mod metrics;
pub mod server;
pub mod stream;

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes, HttpBody},
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use ingero_api::{ErrorAnswer, LiveInfo};

use crate::{analysis::NodeReport, readonly::QueryError};

pub use ingero_api::MAX_ROWS;
/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline of any request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an answer may take to send once it is ready (a streamed query
/// answer: from its first piece); a slower reader's connection is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an oversized request body read (and discarded) so the 413
/// reaches the client; past it the connection is closed.
pub const DRAIN_LIMIT: usize = 16 << 20;
/// Longest spent reading a request body (and discarding an oversized one).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an engine run or an overview is reused.
const SUMMARY_CACHE: Duration = Duration::from_secs(2);

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
    #[error("the request body is over {MAX_BODY} bytes; send a shorter one")]
    PayloadTooLarge,
    /// 503 with `retry-after: 1`: the database is locked by another process.
    #[error("the database is busy (locked by another process); retry in a moment")]
    Busy,
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
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
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
        if matches!(self, Self::TooManyQueries(_) | Self::Busy) {
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
            QueryError::Busy => Self::Busy,
            QueryError::Cancelled => Self::RequestTimeout,
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
    /// The traced-work metrics as of the last batch read, for `/metrics`.
    fn registry(&self) -> Arc<crate::metrics::Registry>;
}

/// One engine run: its window, when it ran, its reports.
type CachedExplain = (Option<Duration>, Instant, Arc<Vec<NodeReport>>);

/// Sets its flag when dropped: a handler holds one while database work runs
/// on a blocking thread, so the work is interrupted when the handler's
/// future is dropped (the client went away, or the request deadline passed).
#[derive(Debug)]
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Limits of the connections and answers, after configuration layering.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most bytes of one query answer (JSON); past it rows are cut and the
    /// answer says `truncated`.
    pub max_answer_bytes: usize,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a connection handling no request may take to complete a
    /// request's headers (HTTP/1 and HTTP/2, after the TLS handshake).
    pub header_timeout: Duration,
    /// Most connections open at once from one IP address; more are closed
    /// at once, before TLS and authentication.
    pub max_connections_per_address: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_answer_bytes: crate::config::defaults::MAX_ANSWER_BYTES
                .0
                .try_into()
                .unwrap_or(usize::MAX),
            idle_timeout: crate::config::defaults::IDLE_TIMEOUT,
            header_timeout: crate::config::defaults::HEADER_TIMEOUT,
            max_connections_per_address: crate::config::defaults::MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

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
    /// The traced-work metrics of the database (`ingero serve`).
    pub stored_metrics: metrics::StoredMetrics,
    /// Connection and answer limits.
    pub limits: ConnLimits,
    /// Set when the agent stops: every database statement still running is
    /// interrupted.
    pub stopping: Arc<AtomicBool>,
    explain_cache: Mutex<Option<CachedExplain>>,
    overview_cache: Mutex<Option<(Instant, ingero_api::OverviewAnswer)>>,
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
    /// Connection and answer limits.
    pub limits: ConnLimits,
}

impl ApiState {
    /// The shared state from its settings; `live` is `Some` while tracing.
    #[must_use]
    pub fn new(settings: ApiSettings, live: Option<Arc<dyn LiveView>>) -> Arc<Self> {
        Arc::new(Self {
            stored_metrics: metrics::StoredMetrics::new(&settings.node),
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
            limits: settings.limits,
            stopping: Arc::new(AtomicBool::new(false)),
            explain_cache: Mutex::new(None),
            overview_cache: Mutex::new(None),
        })
    }

    /// One slot of the shared budget of database-reading requests, or 429.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.query_slots)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyQueries(self.max_queries))
    }

    /// Interrupts `conn`'s statements when `cancel` is set, the agent
    /// stops or `timeout` passes.
    pub fn watch(
        &self,
        conn: &mut rusqlite::Connection,
        cancel: &Arc<AtomicBool>,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let cancel = Arc::clone(cancel);
        let stopping = Arc::clone(&self.stopping);
        let deadline = Instant::now() + timeout;
        conn.progress_handler(
            1_000,
            Some(move || {
                cancel.load(Ordering::Relaxed)
                    || stopping.load(Ordering::Relaxed)
                    || Instant::now() > deadline
            }),
        )
        .map_err(|e| db_error(&e))
    }

    /// The overview of the last [`SUMMARY_CACHE`], if any.
    fn cached_overview(&self) -> Option<ingero_api::OverviewAnswer> {
        let cache = self.overview_cache.lock().ok()?;
        let (at, answer) = cache.as_ref()?;
        (at.elapsed() < SUMMARY_CACHE).then(|| answer.clone())
    }

    /// The database part of `/api/v1/overview`, from the cache or read
    /// under a slot of the budget, interrupted if its client goes away.
    pub async fn overview(self: &Arc<Self>) -> Result<ingero_api::OverviewAnswer, ApiError> {
        if let Some(answer) = self.cached_overview() {
            return Ok(answer);
        }
        let permit = self.slot()?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&cancel.0);
        let state = Arc::clone(self);
        let answer = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            reader_thread();
            handlers::overview_from_db(&state, &flag)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        drop(cancel);
        if let Ok(mut cache) = self.overview_cache.lock() {
            *cache = Some((Instant::now(), answer.clone()));
        }
        Ok(answer)
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
            && at.elapsed() < SUMMARY_CACHE
        {
            return Ok(Arc::clone(reports));
        }
        let permit = self.slot()?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&cancel.0);
        let state = Arc::clone(self);
        let reports = tokio::task::spawn_blocking(move || -> Result<Vec<NodeReport>, ApiError> {
            let _permit = permit;
            reader_thread();
            let mut conn = crate::store::open_read(&state.db).map_err(|e| db_error(&e))?;
            state.watch(&mut conn, &flag, REQUEST_TIMEOUT)?;
            let range = crate::timewin::event_range(&conn).map_err(|e| ApiError::Internal(e.to_string()))?;
            let window = crate::timewin::resolve(range, since, None, None).map_err(ApiError::BadRequest)?;
            crate::analysis::explain(&conn, window, crate::clock::unix_ns())
                .map_err(|e| ApiError::Internal(format!("analysis failed: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        drop(cancel);
        let reports = Arc::new(reports);
        if let Ok(mut cache) = self.explain_cache.lock() {
            *cache = Some((since, Instant::now(), Arc::clone(&reports)));
        }
        Ok(reports)
    }
}

impl ApiState {
    /// `/api/v1/collectives`: the NCCL calls of the last `since` of
    /// recorded data (the newest [`MAX_COLLECTIVE_CALLS`]), the
    /// communicators, and, while tracing, what the ranks' threads are doing.
    pub async fn collectives(
        self: &Arc<Self>,
        since: Option<Duration>,
    ) -> Result<ingero_api::CollectivesAnswer, ApiError> {
        let permit = self.slot()?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&cancel.0);
        let state = Arc::clone(self);
        let answer =
            tokio::task::spawn_blocking(move || -> Result<ingero_api::CollectivesAnswer, ApiError> {
                let _permit = permit;
                reader_thread();
                let mut conn = crate::store::open_read(&state.db).map_err(|e| db_error(&e))?;
                state.watch(&mut conn, &flag, REQUEST_TIMEOUT)?;
                let range =
                    crate::timewin::event_range(&conn).map_err(|e| ApiError::Internal(e.to_string()))?;
                let window =
                    crate::timewin::resolve(range, since, None, None).map_err(ApiError::BadRequest)?;
                let data = crate::analysis::nccl_data::load(&conn, window, MAX_COLLECTIVE_CALLS)
                    .map_err(|e| db_error(&e))?;
                // A stored database has no "now": its recording ended at
                // its last event, and a hang is judged there.
                let now_ns = if state.live.is_some() {
                    crate::clock::unix_ns()
                } else {
                    range.map_or_else(crate::clock::unix_ns, |(_, last)| last)
                };
                let activity = if state.live.is_some() {
                    activity::activity(&conn, &state.node, &data.members, now_ns - ACTIVITY_LOOKBACK_NS)
                        .map_err(|e| db_error(&e))?
                } else {
                    Vec::new()
                };
                Ok(ingero_api::CollectivesAnswer {
                    node: state.node.clone(),
                    now_ns,
                    calls: data.calls,
                    members: data.members,
                    activity,
                    truncated: data.truncated,
                })
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        drop(cancel);
        Ok(answer)
    }
}

/// Collective calls in one `/api/v1/collectives` answer at most (about
/// 250 bytes each in JSON: well under the client's answer cap).
pub const MAX_COLLECTIVE_CALLS: usize = 40_000;

/// How far back the last call of each thread is looked for.
const ACTIVITY_LOOKBACK_NS: i64 = 600_000_000_000;

/// A database error as an API error: busy is 503, the rest 500.
pub fn db_error(e: &rusqlite::Error) -> ApiError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => ApiError::Busy,
        Some(rusqlite::ErrorCode::OperationInterrupted) => ApiError::RequestTimeout,
        _ => ApiError::Internal(format!("cannot read the database: {e}")),
    }
}

/// Nice value of the threads that read the database for the API: below
/// the writer and the traced job, so a flood of reads costs the training
/// job and the tracer's commits as little CPU as the scheduler allows.
const READER_NICE: i32 = 10;

/// Lowers the calling (blocking-pool) thread to [`READER_NICE`]. The pool
/// runs only the API's database work, so the thread keeps it.
pub(crate) fn reader_thread() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread
    // id only changes its scheduling weight (lowering needs no privilege).
    unsafe {
        let tid = libc::gettid();
        if libc::getpriority(libc::PRIO_PROCESS, tid.cast_unsigned()) < READER_NICE {
            libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), READER_NICE);
        }
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

/// Why a request body was not read whole.
enum BodyTrouble {
    /// Over `MAX_BODY`; `drained` when the rest was read and discarded, so
    /// the connection can carry the answer.
    TooLarge { drained: bool },
    /// The body could not be read in time or at all.
    Unreadable,
}

/// Reads the request body, at most `MAX_BODY` bytes; a larger one is read
/// and discarded up to [`DRAIN_LIMIT`] (not when the client waits for
/// `100-continue`: it has sent nothing yet), so the answer reaches it.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, BodyTrouble> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let expects = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > MAX_BODY) && (expects || declared.is_some_and(|n| n > DRAIN_LIMIT)) {
        return Err(BodyTrouble::TooLarge { drained: false });
    }
    let read = async {
        let mut kept = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) =
            std::future::poll_fn(|cx: &mut Context<'_>| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else {
                return Err(BodyTrouble::Unreadable);
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                return Err(BodyTrouble::TooLarge { drained: false });
            }
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            }
        }
        if seen > MAX_BODY {
            Err(BodyTrouble::TooLarge { drained: true })
        } else {
            Ok(Bytes::from(kept))
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyTrouble::Unreadable))
}

/// A response body that fails (closing the connection) when it is still
/// being sent past its deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if Instant::now() > self.deadline {
            return Poll::Ready(Some(Err(axum::Error::new("the answer took too long to send"))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Body limits, token check, request deadline, send deadline, arrival time
/// and request metrics.
async fn guard(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(Arrival(crate::clock::unix_ns()));
    let path = metrics::path_label(parts.uri.path());
    let body = read_body(&parts.headers, body).await;
    let response = match body {
        Err(BodyTrouble::TooLarge { drained }) => {
            let mut r = ApiError::PayloadTooLarge.into_response();
            if !drained {
                r.headers_mut()
                    .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            }
            r
        }
        Err(BodyTrouble::Unreadable) => {
            let mut r =
                ApiError::BadRequest("the request body could not be read in time; send it again".into())
                    .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            r
        }
        Ok(_)
            if path != "/healthz"
                && state
                    .token
                    .as_deref()
                    .is_some_and(|t| !bearer(&parts.headers).is_some_and(|p| token_matches(p, t))) =>
        {
            ApiError::Unauthorized.into_response()
        }
        Ok(bytes) => {
            let request = Request::from_parts(parts, Body::from(bytes));
            match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
                Ok(r) => r,
                Err(_) => ApiError::RequestTimeout.into_response(),
            }
        }
    };
    state.metrics.record_request(path, response.status().as_u16());
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(DeadlineBody {
            inner: body,
            deadline: Instant::now() + SEND_TIMEOUT,
        }),
    )
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
        .route("/api/v1/collectives", get(handlers::collectives))
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
