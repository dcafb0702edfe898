//! The traced-work metrics of a stored database, for `ingero serve`.
//!
//! A [`StoredScan`] reads the `events` table in rowid order, a slice per
//! scrape: each [`StoredScan::advance`] continues after the last row it
//! counted, in chunks, until it has caught up or its time budget is
//! spent. A scrape therefore costs at most about the budget whatever the
//! size of the database, a database that grows (a tracer writing it) is
//! followed by reading only its new rows, and the counters only grow, as
//! Prometheus counters must. Rows removed later (pruning) stay counted; a
//! database whose rows went below the last one counted (replaced) starts
//! a new count, which Prometheus sees as a counter reset.
//!
//! Rows are read with the analysis' conventions (other tracers' databases:
//! block I/O sizes in sectors, no preemption flag) and its type filter, so
//! a row the analysis skips is skipped here too.

use std::time::{Duration, Instant};

use agent_common::catalog::source;
use rusqlite::Connection;

use super::registry::{Registry, Sample};
use crate::analysis::dataset::{Conventions, conventions, well_typed};

/// Rows read per statement.
const CHUNK: i64 = 50_000;

/// Where the scan of one database stands.
#[derive(Debug)]
pub struct StoredScan {
    node: String,
    registry: Registry,
    after_rowid: i64,
    conv: Option<Conventions>,
    caught_up: bool,
}

impl StoredScan {
    /// A scan that has read nothing yet, for the agent of `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            registry: Registry::new(node, true),
            after_rowid: 0,
            conv: None,
            caught_up: false,
        }
    }

    /// The counters so far.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether the last [`StoredScan::advance`] reached the last row.
    #[must_use]
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Counts the rows added since the last call, for at most about
    /// `budget` (a chunk started is finished; the connection's progress
    /// handler can interrupt it). Returns whether it caught up.
    pub fn advance(&mut self, conn: &Connection, budget: Duration) -> rusqlite::Result<bool> {
        let started = Instant::now();
        let conv = if let Some(c) = self.conv {
            c
        } else {
            let c = conventions(conn)?;
            self.registry = Registry::new(&self.node, c.preempt_flag);
            self.conv = Some(c);
            c
        };
        let last: i64 = conn.query_row("SELECT ifnull(max(rowid), 0) FROM events", [], |r| r.get(0))?;
        if last < self.after_rowid {
            // Another database now: count it from the start.
            self.registry = Registry::new(&self.node, conv.preempt_flag);
            self.after_rowid = 0;
        }
        let sql = format!(
            "SELECT rowid, {node}, {rank}, source, op, duration, arg0 FROM events
             WHERE rowid > ?1 AND rowid <= ?2 AND {typed} ORDER BY rowid LIMIT {CHUNK}",
            node = if conv.has_node { "node" } else { "''" },
            rank = if conv.has_rank { "rank" } else { "NULL" },
            typed = well_typed(&conv, &[]),
        );
        let mut stmt = conn.prepare(&sql)?;
        self.caught_up = false;
        while !self.caught_up && started.elapsed() < budget {
            let mut rows = stmt.query([self.after_rowid, last])?;
            let mut read = 0;
            while let Some(r) = rows.next()? {
                read += 1;
                self.after_rowid = r.get(0)?;
                let node: Option<String> = r.get(1)?;
                let (src, op): (u8, u8) = (r.get(3)?, r.get(4)?);
                let arg0 = r.get::<_, i64>(6)?.max(0) as u64;
                let arg0 = if src == source::IO && !conv.io_bytes {
                    arg0.saturating_mul(512)
                } else {
                    arg0
                };
                self.registry.observe(&Sample {
                    node: node.as_deref().unwrap_or(""),
                    rank: r.get(2)?,
                    source: src,
                    op,
                    duration_ns: r.get::<_, i64>(5)?.max(0) as u64,
                    arg0,
                });
            }
            if read < CHUNK {
                // Rows the type filter skipped up to `last` are skipped for good.
                self.after_rowid = last;
                self.caught_up = true;
            }
        }
        Ok(self.caught_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::catalog::{driver_op, io_op};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("memory db");
        crate::store::schema::init(&conn).expect("schema");
        conn
    }

    fn insert(conn: &Connection, id: &str, src: u8, op: u8, duration: i64, arg0: i64) {
        conn.execute(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, node, rank, world_size)
             VALUES (?1, 1, 1, 1, ?2, ?3, ?4, ?5, 'n1', 0, 1)",
            rusqlite::params![id, src, op, duration, arg0],
        )
        .expect("insert");
    }

    fn launches(scan: &StoredScan) -> u64 {
        scan.registry()
            .sorted_series()
            .iter()
            .filter(|(k, _)| k.op == driver_op::LAUNCH_KERNEL && k.source == source::DRIVER)
            .map(|(_, s)| s.latency.count)
            .sum()
    }

    #[test]
    fn new_rows_are_read_once_and_odd_rows_skipped() {
        let conn = db();
        for i in 0..5 {
            insert(
                &conn,
                &format!("n1:{i}"),
                source::DRIVER,
                driver_op::LAUNCH_KERNEL,
                2_000,
                0,
            );
        }
        conn.execute(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration) VALUES ('odd', 'x', 1, 1, 4, 1, 5)",
            [],
        )
        .expect("odd row");
        let mut scan = StoredScan::new("agent");
        assert!(scan.advance(&conn, Duration::from_secs(5)).expect("scan"));
        assert_eq!(launches(&scan), 5, "the row with a text timestamp is skipped");
        assert!(scan.advance(&conn, Duration::from_secs(5)).expect("scan"));
        assert_eq!(launches(&scan), 5, "nothing counted twice");
        insert(&conn, "n1:9", source::DRIVER, driver_op::LAUNCH_KERNEL, 2_000, 0);
        insert(&conn, "n1:10", source::IO, io_op::READ, 2_000, 8192);
        assert!(scan.advance(&conn, Duration::from_secs(5)).expect("scan"));
        assert_eq!(launches(&scan), 6);
        assert_eq!(scan.registry().targets()[0].node, "n1");
    }

    #[test]
    fn a_replaced_database_starts_a_new_count() {
        let conn = db();
        for i in 0..3 {
            insert(
                &conn,
                &format!("n1:{i}"),
                source::DRIVER,
                driver_op::LAUNCH_KERNEL,
                2_000,
                0,
            );
        }
        let mut scan = StoredScan::new("agent");
        scan.advance(&conn, Duration::from_secs(5)).expect("scan");
        conn.execute("DELETE FROM events", []).expect("delete");
        insert(&conn, "n1:0", source::DRIVER, driver_op::LAUNCH_KERNEL, 2_000, 0);
        scan.advance(&conn, Duration::from_secs(5)).expect("scan");
        assert_eq!(launches(&scan), 1);
    }
}
