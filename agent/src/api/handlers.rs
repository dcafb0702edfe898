//! The endpoint handlers. Database work runs on blocking threads; every
//! failure is an [`ApiError`].

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json,
    extract::{Query, State, rejection::JsonRejection},
    http::header,
    response::IntoResponse,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Arrival};
use crate::{
    analysis::{self, NodeReport},
    readonly::{Limits, QueryError, ReadOnlyDb},
    trace::clock::unix_ns,
    units::HumanDuration,
};

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn time(State(state): State<Arc<ApiState>>, Extension(arrival): Extension<Arrival>) -> Json<Value> {
    Json(json!({ "node": state.node, "receive_ns": arrival.0, "send_ns": unix_ns() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    pub limit: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// Only the last DURATION of recorded data (`events` is filtered).
    pub since: Option<String>,
}

pub async fn query(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(|e| match e {
        JsonRejection::BytesRejection(_) => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest(format!(
            "the body must be {{\"sql\": \"...\", \"limit\": N}}: {}",
            other.body_text()
        )),
    })?;
    let permit = Arc::clone(&state.query_slots)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyQueries(state.max_queries))?;
    let limits = Limits {
        timeout: request.timeout_ms.map_or(state.query_timeout, |ms| {
            Duration::from_millis(ms).min(state.query_timeout)
        }),
        max_rows: request.limit.unwrap_or(state.max_rows).min(state.max_rows),
    };
    let since = match request.since.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(s.parse::<HumanDuration>().map_err(ApiError::BadRequest)?.0),
    };
    let db = state.db.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let window = match since {
            None => None,
            Some(since) => {
                let probe = ReadOnlyDb::open(&db, None)?;
                let range = crate::timewin::event_range(probe.connection())
                    .map_err(|e| QueryError::Sql(e.to_string()))?;
                crate::timewin::resolve(range, Some(since), None, None)
                    .map_err(QueryError::Sql)?
                    .map(|w| (w.from, w.to))
            }
        };
        ReadOnlyDb::open(&db, window)?.query(&request.sql, limits)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    state.metrics.record_query(&result, started.elapsed());
    let r = result?;
    Ok(Json(json!({
        "node": state.node,
        "columns": r.columns,
        "rows": r.rows,
        "truncated": r.truncated,
        "elapsed_ms": r.elapsed_ms,
    })))
}

#[derive(Debug, Deserialize)]
pub struct SinceParam {
    pub since: Option<String>,
}

impl SinceParam {
    fn window(&self, state: &ApiState) -> Result<Option<Duration>, ApiError> {
        match self.since.as_deref() {
            None => Ok(state.default_since),
            Some("all") => Ok(None),
            Some(s) => s
                .parse::<HumanDuration>()
                .map(|d| Some(d.0))
                .map_err(ApiError::BadRequest),
        }
    }
}

fn window_json(reports: &[NodeReport]) -> Value {
    json!({
        "from": reports.iter().map(|r| r.window.from).min(),
        "to": reports.iter().map(|r| r.window.to).max(),
    })
}

pub async fn chains(
    State(state): State<Arc<ApiState>>,
    Query(p): Query<SinceParam>,
) -> Result<Json<Value>, ApiError> {
    let reports = state.explain(p.window(&state)?).await?;
    Ok(Json(json!({
        "node": state.node,
        "window": window_json(&reports),
        "events": reports.iter().map(|r| r.events).sum::<u64>(),
        "chains": analysis::all_chains(&reports),
    })))
}

pub async fn ops(
    State(state): State<Arc<ApiState>>,
    Query(p): Query<SinceParam>,
) -> Result<Json<Value>, ApiError> {
    let reports = state.explain(p.window(&state)?).await?;
    let nodes: Vec<Value> = reports.iter().map(analysis::ops_json).collect();
    Ok(Json(
        json!({ "node": state.node, "window": window_json(&reports), "nodes": nodes }),
    ))
}

pub async fn overview(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let s = Arc::clone(&state);
    let mut out = tokio::task::spawn_blocking(move || overview_from_db(&s))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    if let Some(live) = &state.live {
        let drops = live
            .drops
            .lock()
            .map(|d| d.iter().map(|x| x.count).sum::<u64>())
            .unwrap_or(0);
        out["live"] = json!({
            "tracing": true,
            "session_id": live.session_id.load(std::sync::atomic::Ordering::Relaxed),
            "events_committed": live.committed.load(std::sync::atomic::Ordering::Relaxed),
            "events_dropped": drops,
        });
    }
    Ok(Json(out))
}

fn overview_from_db(state: &ApiState) -> Result<Value, ApiError> {
    let conn = rusqlite::Connection::open_with_flags(&state.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| ApiError::Internal(format!("cannot open the database: {e}")))?;
    let err = |e: rusqlite::Error| ApiError::Internal(e.to_string());
    let mut by_source = serde_json::Map::new();
    let mut total = 0i64;
    {
        let mut stmt = conn
            .prepare("SELECT s.name, count(*) FROM events e LEFT JOIN sources s ON s.id = e.source GROUP BY e.source")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let n: i64 = r.get(1).map_err(err)?;
            total += n;
            by_source.insert(
                r.get::<_, Option<String>>(0)
                    .map_err(err)?
                    .unwrap_or_else(|| "unknown".into()),
                n.into(),
            );
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
                Ok(json!({
                    "id": r.get::<_, i64>(0)?, "node": r.get::<_, String>(1)?, "started_at": r.get::<_, i64>(2)?,
                    "stopped_at": r.get::<_, i64>(3)?, "events_stored": r.get::<_, i64>(4)?,
                    "events_dropped": r.get::<_, i64>(5)?, "rank": r.get::<_, Option<i64>>(6)?,
                    "local_rank": r.get::<_, Option<i64>>(7)?, "world_size": r.get::<_, Option<i64>>(8)?,
                    "hostname": r.get::<_, String>(9)?,
                }))
            },
        )
        .ok();
    Ok(json!({
        "node": state.node,
        "rank": session.as_ref().and_then(|s| s["rank"].as_i64()),
        "world_size": session.as_ref().and_then(|s| s["world_size"].as_i64()),
        "events": total,
        "events_by_source": by_source,
        "first_event": scalar("SELECT min(timestamp) FROM events"),
        "last_event": scalar("SELECT max(timestamp) FROM events"),
        "chains_stored": scalar("SELECT count(*) FROM causal_chains").unwrap_or(0),
        "sessions": scalar("SELECT count(*) FROM sessions").unwrap_or(0),
        "dropped": scalar("SELECT sum(events_dropped) FROM sessions").unwrap_or(0),
        "session": session,
        "live": { "tracing": false },
    }))
}

pub async fn metrics(State(state): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    let s = Arc::clone(&state);
    let counts = match &state.live {
        Some(live) => super::metrics::EventCounts::live(live),
        None => tokio::task::spawn_blocking(move || super::metrics::EventCounts::from_db(&s.db))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(&state.node, &counts),
    ))
}
