//! Whole tables of an agent, fetched in pages through `/api/v1/query`:
//! the same read-only path as any query, [`PAGE`] rows at a time, ordered
//! by rowid so a page boundary never skips or repeats a row. Each page goes
//! to a channel as it arrives, so memory holds a few pages, not a node.

use std::sync::mpsc;

use ingero_api::QueryRequest;
use serde_json::Value;

use crate::{AgentClient, FleetError};

/// Rows per request (the agent's cap is [`ingero_api::MAX_ROWS`]).
pub const PAGE: usize = 20_000;
/// Tables a trace is made from, besides `events`: names, snapshots and
/// chains, and the NCCL tables (collectives are joined across ranks by
/// `(comm_id, seq)`, which every node computes alike).
pub const SIDE_TABLES: [&str; 5] = [
    "process_names",
    "system_snapshots",
    "causal_chains",
    "nccl_comms",
    "nccl_collectives",
];

/// One page of rows of one table.
#[derive(Debug)]
pub struct Page {
    /// The table (`events` or one of [`SIDE_TABLES`]).
    pub table: &'static str,
    /// `ingero_rowid` and then the table's columns.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Vec<Value>>,
}

/// SQL for the page after `last_rowid`.
fn page_sql(table: &str, last_rowid: i64, since_ns: Option<u128>) -> String {
    let window = match (table, since_ns) {
        // The newest integer timestamp of the events: a text one (written
        // by another tool) would make max() text, and the window
        // everything. Collectives are cut at the same instant.
        ("events" | "nccl_collectives", Some(ns)) => format!(
            " AND timestamp >= (SELECT timestamp FROM events WHERE typeof(timestamp) = 'integer' ORDER BY timestamp DESC LIMIT 1) - {ns}"
        ),
        _ => String::new(),
    };
    format!(
        "SELECT rowid AS ingero_rowid, * FROM {table} WHERE rowid > {last_rowid}{window} ORDER BY rowid LIMIT {PAGE}"
    )
}

/// Every page of `events` (the last `since_ns` of recorded data, or all)
/// and of the side tables the agent has, sent to `tx`; the number of
/// events fetched.
pub async fn fetch_tables(
    client: AgentClient,
    since_ns: Option<u128>,
    tx: mpsc::SyncSender<Page>,
) -> Result<u64, FleetError> {
    let tables = client
        .query(&QueryRequest {
            sql: "SELECT name FROM sqlite_master WHERE type = 'table'".into(),
            ..QueryRequest::default()
        })
        .await?;
    let present: Vec<&str> = tables.rows.iter().filter_map(|r| r.first()?.as_str()).collect();
    let mut events = 0;
    for table in std::iter::once("events").chain(SIDE_TABLES) {
        if !present.contains(&table) {
            continue;
        }
        let mut last = 0i64;
        loop {
            let answer = client
                .query(&QueryRequest {
                    sql: page_sql(table, last, since_ns),
                    limit: Some(PAGE),
                    ..QueryRequest::default()
                })
                .await?;
            let n = answer.rows.len();
            last = answer
                .rows
                .last()
                .and_then(|r| r.first()?.as_i64())
                .unwrap_or(last);
            if table == "events" {
                events += n as u64;
            }
            let page = Page {
                table,
                columns: answer.columns,
                rows: answer.rows,
            };
            if n > 0 && tx.send(page).is_err() {
                return Err(FleetError::Other("the local writer stopped".into()));
            }
            if n < PAGE {
                break;
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_rowid_and_the_window_applies_to_timed_rows_only() {
        assert_eq!(
            page_sql("events", 40, Some(5_000_000_000)),
            format!(
                "SELECT rowid AS ingero_rowid, * FROM events WHERE rowid > 40 AND timestamp >= (SELECT timestamp FROM events WHERE typeof(timestamp) = 'integer' ORDER BY timestamp DESC LIMIT 1) - 5000000000 ORDER BY rowid LIMIT {PAGE}"
            )
        );
        assert!(!page_sql("process_names", 0, Some(1)).contains("timestamp"));
        assert!(!page_sql("nccl_comms", 0, Some(1)).contains("timestamp"));
        assert!(
            page_sql("nccl_collectives", 0, Some(1))
                .contains(" AND timestamp >= (SELECT timestamp FROM events ")
        );
        assert!(!page_sql("nccl_collectives", 0, None).contains("timestamp"));
    }
}
