//! The endpoint handlers. Database work runs on blocking threads; every
//! failure is an [`ApiError`].

use std::{
    cell::RefCell,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use axum::{
    Extension, Json,
    body::Body,
    extract::{
        Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::header,
    response::IntoResponse,
};
use ingero_api::{
    ChainsAnswer, LiveInfo, OpsAnswer, OverviewAnswer, QueryRequest, SessionInfo, Since, Span, TimeAnswer,
};
use serde::Deserialize;

use super::{ApiError, ApiState, Arrival, CancelOnDrop, REQUEST_TIMEOUT, db_error, stream};
use crate::{
    analysis::{self, NodeReport},
    clock::unix_ns,
    readonly::{Limits, QueryError, ReadOnlyDb},
};

/// `GET /healthz`: always `ok` (no token needed); says the process serves.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /api/v1/time`: when the request arrived and when the answer left
/// (Unix ns), for the fleet client's clock offset estimate.
pub async fn time(
    State(state): State<Arc<ApiState>>,
    Extension(arrival): Extension<Arrival>,
) -> Json<TimeAnswer> {
    Json(TimeAnswer {
        node: state.node.clone(),
        receive_ns: arrival.0,
        send_ns: unix_ns(),
    })
}

/// `POST /api/v1/query`: runs one read-only SQL query, its limit and timeout
/// capped by the agent's and its answer by `max_answer_bytes`; 403 if
/// refused, 400 if invalid, 408 past its deadline, 429 when all query slots
/// are busy, 503 when the database is locked, 413 for an oversized body.
/// The answer is streamed as its rows are read ([`stream`]): an error after
/// the first rows ends it with an `error` field instead of a status.
pub async fn query(
    State(state): State<Arc<ApiState>>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    // The body is JSON whatever the Content-Type says (`curl -d` sends a
    // form type): the SQL is all that matters.
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"sql\": \"...\", \"limit\": N}}: {e}"
        ))
    })?;
    let permit = state.slot()?;
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let flags = vec![Arc::clone(&cancel.0), Arc::clone(&state.stopping)];
    let max_bytes = state.limits.max_answer_bytes;
    let limits = Limits {
        timeout: request.timeout_ms.map_or(state.query_timeout, |ms| {
            Duration::from_millis(ms).min(state.query_timeout)
        }),
        max_rows: request.limit.unwrap_or(state.max_rows).min(state.max_rows),
    };
    let since = request.since.and_then(Since::duration);
    let (tx, mut rx) = tokio::sync::mpsc::channel(stream::QUEUED);
    let writer = stream::Writer::new(tx, tokio::runtime::Handle::current());
    let thread_state = Arc::clone(&state);
    // Run and encode on a blocking thread (a large answer must not hold up
    // the async workers and `/healthz`); the pieces go out as they are
    // written ([`stream`]).
    tokio::task::spawn_blocking(move || {
        super::reader_thread();
        let started = std::time::Instant::now();
        let writer = RefCell::new(writer);
        let result = run_query(
            &thread_state,
            &request.sql,
            since,
            limits,
            max_bytes,
            flags,
            &writer,
        );
        // The database is done with: the slot frees before the last piece
        // goes out, so a client that sends its next query as soon as it has
        // this answer (a paged fetch) finds it free, however long this
        // lowered-priority thread waits for the CPU after sending.
        drop(permit);
        thread_state
            .metrics
            .record_query(&result.as_ref().map(|(_, ms)| *ms), started.elapsed());
        writer.into_inner().finish(&result);
    });
    let json = [(header::CONTENT_TYPE, "application/json")];
    match rx.recv().await {
        Some(stream::Piece::Failed(e)) => Err(e.into()),
        Some(stream::Piece::Last(whole)) => Ok((json, whole).into_response()),
        Some(stream::Piece::More(first)) => {
            Ok((json, Body::new(stream::Streamed::new(first, rx, cancel))).into_response())
        }
        None => Err(ApiError::Internal("the query stopped without an answer".into())),
    }
}

/// Runs one statement of `/api/v1/query`, writing its answer's JSON (all
/// but the closing fields) into `writer` row by row.
fn run_query(
    state: &ApiState,
    sql: &str,
    since: Option<Duration>,
    limits: Limits,
    max_bytes: usize,
    flags: Vec<Arc<AtomicBool>>,
    writer: &RefCell<stream::Writer>,
) -> Result<(bool, f64), QueryError> {
    let window = match since {
        None => None,
        Some(since) => {
            let probe = ReadOnlyDb::open_cancellable(&state.db, None, flags.clone())?;
            let range = crate::timewin::event_range(probe.connection())
                .map_err(|e| QueryError::Sql(e.to_string()))?;
            crate::timewin::resolve(range, Some(since), None, None)
                .map_err(QueryError::Sql)?
                .map(|w| (w.from, w.to))
        }
    };
    let write = |v: &dyn stream::erased::Json| writer.borrow_mut().write(v);
    write(&"{\"node\":")?;
    write(&serde_json::Value::from(state.node.as_str()))?;
    let db = ReadOnlyDb::open_cancellable(&state.db, window, flags)?.with_max_bytes(max_bytes);
    let mut first = true;
    db.query_each(
        sql,
        limits,
        |columns| {
            write(&",\"columns\":")?;
            write(&serde_json::Value::from(columns.to_vec()))?;
            write(&",\"rows\":[")
        },
        |row| {
            if !std::mem::take(&mut first) {
                write(&",")?;
            }
            write(&serde_json::Value::from(row))?;
            // Time spent waiting for the reader is not the statement's.
            let waited = writer.borrow_mut().row_done()?;
            db.postpone_deadline(waited);
            Ok(())
        },
    )
}

/// `?since=5m` (or `all`); without it, the agent's default window.
#[derive(Debug, Deserialize)]
pub struct SinceParam {
    /// How far back from the last event to look; `None` (absent) means the
    /// agent's default window.
    pub since: Option<Since>,
}

impl SinceParam {
    /// The window asked for, or the agent's default; a bad `since` is a
    /// 400 with the parser's sentence.
    fn window(
        param: Result<Query<Self>, QueryRejection>,
        state: &ApiState,
    ) -> Result<Option<Duration>, ApiError> {
        let Query(p) = param.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(p.since.map_or(state.default_since, Since::duration))
    }
}

fn span(reports: &[NodeReport]) -> Span {
    Span::covering(reports.iter().map(|r| r.window))
}

/// `GET /api/v1/chains?since=`: the causal chains the engine finds in the
/// window, with the window's span and event count.
pub async fn chains(
    State(state): State<Arc<ApiState>>,
    param: Result<Query<SinceParam>, QueryRejection>,
) -> Result<Json<ChainsAnswer>, ApiError> {
    let reports = state.explain(SinceParam::window(param, &state)?).await?;
    Ok(Json(ChainsAnswer {
        node: state.node.clone(),
        window: span(&reports),
        events: reports.iter().map(|r| r.events).sum::<u64>(),
        chains: analysis::compare_reports(&reports, None).chains,
    }))
}

/// `GET /api/v1/ops?since=`: per-operation percentiles and evidence of each
/// node (rank) in the window.
pub async fn ops(
    State(state): State<Arc<ApiState>>,
    param: Result<Query<SinceParam>, QueryRejection>,
) -> Result<Json<OpsAnswer>, ApiError> {
    let reports = state.explain(SinceParam::window(param, &state)?).await?;
    Ok(Json(OpsAnswer {
        node: state.node.clone(),
        window: span(&reports),
        nodes: reports.iter().map(NodeReport::node_ops).collect(),
    }))
}

/// `GET /api/v1/collectives?since=`: the NCCL collective calls in the
/// window, the communicators, and what the ranks' threads are doing.
pub async fn collectives(
    State(state): State<Arc<ApiState>>,
    param: Result<Query<SinceParam>, QueryRejection>,
) -> Result<Json<ingero_api::CollectivesAnswer>, ApiError> {
    Ok(Json(state.collectives(SinceParam::window(param, &state)?).await?))
}

/// `GET /api/v1/overview`: event counts per source, time range, stored
/// chains, the latest session and drops, plus live counters while tracing.
pub async fn overview(State(state): State<Arc<ApiState>>) -> Result<Json<OverviewAnswer>, ApiError> {
    let mut out = state.overview().await?;
    if let Some(live) = &state.live {
        out.live = live.info();
    }
    Ok(Json(out))
}

/// The database part of the overview, interrupted when `cancel` is set.
pub(super) fn overview_from_db(
    state: &ApiState,
    cancel: &Arc<AtomicBool>,
) -> Result<OverviewAnswer, ApiError> {
    let mut conn = crate::store::open_read(&state.db).map_err(|e| db_error(&e))?;
    state.watch(&mut conn, cancel, REQUEST_TIMEOUT)?;
    let err = |e: rusqlite::Error| db_error(&e);
    let mut by_source = std::collections::BTreeMap::new();
    let mut total = 0i64;
    {
        let mut stmt = conn
            .prepare("SELECT s.name, count(*) FROM events e LEFT JOIN sources s ON s.id = e.source GROUP BY e.source")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let n: i64 = r.get(1).map_err(err)?;
            total += n;
            *by_source
                .entry(
                    r.get::<_, Option<String>>(0)
                        .map_err(err)?
                        .unwrap_or_else(|| "unknown".into()),
                )
                .or_insert(0) += n;
        }
    }
    let scalar = |sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
    };
    let session = conn
        .query_row(
            "SELECT id, node, started_at, stopped_at, events_stored, events_dropped, rank, local_rank, world_size, hostname
             FROM sessions ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                Ok(SessionInfo {
                    id: r.get(0)?,
                    node: r.get(1)?,
                    started_at: r.get(2)?,
                    stopped_at: r.get(3)?,
                    events_stored: r.get(4)?,
                    events_dropped: r.get(5)?,
                    rank: r.get(6)?,
                    local_rank: r.get(7)?,
                    world_size: r.get(8)?,
                    hostname: r.get(9)?,
                })
            },
        )
        .ok();
    // Integer timestamps only, through the index: one bad row spoils nothing.
    let range = crate::timewin::event_range(&conn).ok().flatten();
    Ok(OverviewAnswer {
        node: state.node.clone(),
        rank: session.as_ref().and_then(|s| s.rank),
        world_size: session.as_ref().and_then(|s| s.world_size),
        events: total,
        events_by_source: by_source,
        first_event: range.map(|r| r.0),
        last_event: range.map(|r| r.1),
        chains_stored: scalar("SELECT count(*) FROM causal_chains").unwrap_or(0),
        sessions: scalar("SELECT count(*) FROM sessions").unwrap_or(0),
        dropped: scalar("SELECT sum(events_dropped) FROM sessions").unwrap_or(0),
        session,
        live: LiveInfo::default(),
    })
}

/// `GET /metrics`: the Prometheus text exposition. While tracing, event
/// counts and the traced-work metrics come from the tracer (as of its last
/// batch); under `ingero serve`, from the database: each scrape reads the
/// rows added since the last one for at most [`SCAN_BUDGET`] under a slot
/// of the query budget, and a scrape that finds no slot free gets the last
/// reading (429 only before there is one).
///
/// [`SCAN_BUDGET`]: super::metrics::SCAN_BUDGET
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    let (counts, registry, caught_up) = if let Some(live) = &state.live {
        (live.counts(), live.registry(), None)
    } else {
        let answer = match (state.slot(), state.stored_metrics.last()) {
            (Ok(permit), _) => {
                let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
                let flag = Arc::clone(&cancel.0);
                let s = Arc::clone(&state);
                let answer = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                    let _permit = permit;
                    super::reader_thread();
                    let mut conn = crate::store::open_read(&s.db).map_err(|e| db_error(&e))?;
                    s.watch(&mut conn, &flag, s.query_timeout)?;
                    s.stored_metrics.read(&conn).map_err(|e| db_error(&e))
                })
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
                drop(cancel);
                answer
            }
            (Err(_), Some(last)) => Some(last),
            (Err(busy), None) => return Err(busy),
        };
        let answer = answer.ok_or(ApiError::TooManyQueries(state.max_queries))?;
        (answer.counts, answer.registry, Some(answer.caught_up))
    };
    let mut text = state.metrics.render(&state.node, &counts);
    crate::metrics::exposition::render(&mut text, &registry);
    crate::otlp::render_prometheus(&mut text, &state.node);
    if let Some(caught_up) = caught_up {
        text.push_str(&super::metrics::render_caught_up(&state.node, caught_up));
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    ))
}
