//! Databases whose `events` hold a sample: the original ingero stores
//! only some events of busy operations (selective storage: launches and
//! copies are summarised, sched_switch and synchronize calls kept) and
//! counts every call per minute in `event_aggregates`. Analysing such a
//! sample as if it were every call would understate counts, time in calls
//! and rates.
//!
//! `load` compares, per node and `(source, op)`, the calls the
//! aggregates count with the events stored over the same minutes (the
//! minute buckets covering the node's span). An operation is sampled when
//! the aggregates count at least [`SAMPLE_RATIO`] times the stored events
//! and at least [`SAMPLE_MIN_MISSING`] more. For such an operation the
//! report's count and total time come from the aggregates, the percentiles
//! from the sample (said so), and no throughput drop is judged on it.
//!
//! This tracer stores every event it records; its aggregates exceed the
//! events only where the oldest events were pruned past the size cap, so
//! in its databases (CUDA timestamps at call end) the node's first stored
//! minute, which pruning may have cut, is left out of the comparison.
//! Aggregates without a `node` column (the original ingero's) belong to
//! the database's only node; with several nodes they are not used.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Serialize;

use super::dataset::{Conventions, NodeData};
use crate::store::schema::{has_column, table_exists};

/// An operation is sampled when the aggregates count at least this many
/// times the events stored...
pub const SAMPLE_RATIO: f64 = 1.5;
/// ...and at least this many calls more.
pub const SAMPLE_MIN_MISSING: u64 = 50;

const MINUTE: i64 = 60_000_000_000;

/// An operation whose stored events are a sample of the calls counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sampled {
    /// `events.source` code.
    pub source: u8,
    /// `events.op` code.
    pub op: u8,
    /// Events of the operation stored over the minutes compared.
    pub stored: u64,
    /// Calls `event_aggregates` counts over the same minutes.
    pub counted: u64,
    /// Time in the counted calls, ns (the aggregates' `sum_dur`).
    pub total_ns: i64,
    /// First instant of the minutes compared, Unix ns.
    pub from: i64,
    /// End of the minutes compared (exclusive), Unix ns.
    pub to: i64,
}

/// Finds each node's sampled operations (`NodeData::sampled`).
pub(super) fn load(
    conn: &Connection,
    conv: Conventions,
    nodes: &mut BTreeMap<String, NodeData>,
) -> rusqlite::Result<()> {
    if !table_exists(conn, "event_aggregates")? {
        return Ok(());
    }
    for column in ["bucket", "source", "op", "count", "sum_dur"] {
        if !has_column(conn, "event_aggregates", column)? {
            return Ok(());
        }
    }
    let by_node = has_column(conn, "event_aggregates", "node")?;
    if !by_node && nodes.len() != 1 {
        return Ok(());
    }
    let node_filter = |on: bool| if on { "AND node = ?3" } else { "AND ?3 = ?3" };
    let counted_sql = format!(
        "SELECT source, op, sum(count), sum(sum_dur) FROM event_aggregates
         WHERE bucket >= ?1 AND bucket < ?2 {}
           AND typeof(source) = 'integer' AND typeof(op) = 'integer'
           AND typeof(count) = 'integer' AND typeof(sum_dur) = 'integer'
         GROUP BY source, op",
        node_filter(by_node)
    );
    let stored_sql = format!(
        "SELECT source, op, count(*) FROM events
         WHERE timestamp >= ?1 AND timestamp < ?2 {}
           AND typeof(source) = 'integer' AND typeof(op) = 'integer'
         GROUP BY source, op",
        node_filter(conv.has_node)
    );
    for d in nodes.values_mut() {
        let first = d.window.from.div_euclid(MINUTE) * MINUTE;
        let from = if conv.timestamps_at_end {
            first + MINUTE
        } else {
            first
        };
        let to = (d.window.to.div_euclid(MINUTE) + 1) * MINUTE;
        if from >= to {
            continue;
        }
        let mut counted: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
        let mut stmt = conn.prepare_cached(&counted_sql)?;
        let mut rows = stmt.query(rusqlite::params![from, to, d.node])?;
        while let Some(r) = rows.next()? {
            counted.insert((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?));
        }
        let mut stored: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        let mut stmt = conn.prepare_cached(&stored_sql)?;
        let mut rows = stmt.query(rusqlite::params![from, to, d.node])?;
        while let Some(r) = rows.next()? {
            stored.insert((r.get(0)?, r.get(1)?), r.get(2)?);
        }
        for ((src, op), (count, total_ns)) in counted {
            let (Ok(source), Ok(op)) = (u8::try_from(src), u8::try_from(op)) else {
                continue;
            };
            let counted = count.max(0) as u64;
            let kept = stored.get(&(src, i64::from(op))).copied().unwrap_or(0).max(0) as u64;
            if counted as f64 >= SAMPLE_RATIO * kept as f64
                && counted - kept.min(counted) >= SAMPLE_MIN_MISSING
            {
                d.sampled.insert(
                    (source, op),
                    Sampled {
                        source,
                        op,
                        stored: kept,
                        counted,
                        total_ns: total_ns.max(0),
                        from,
                        to,
                    },
                );
            }
        }
    }
    Ok(())
}
