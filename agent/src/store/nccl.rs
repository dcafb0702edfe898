//! Writing the NCCL tables: `nccl_comms` (the communicators each traced
//! process joined) and `nccl_collectives` (every collective and
//! point-to-point call, with its communicator id and sequence number).
//!
//! Both are written in the writer's transaction, with the `events` rows of
//! the same batch, so a crash never leaves a call in one table and not in
//! the other. Pruning keeps them no older than the oldest event left.

use rusqlite::{Transaction, params};

use super::batch::Batch;

/// Inserts the batch's NCCL rows.
pub(super) fn insert(
    tx: &Transaction<'_>,
    node: &str,
    session_id: i64,
    batch: &Batch,
) -> rusqlite::Result<()> {
    if !batch.comms.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO nccl_comms(node, session_id, pid, comm_id, handle, rank, size, world_rank,
                 parent_id, color, split_key, created, how)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for c in &batch.comms {
            stmt.execute(params![
                node,
                session_id,
                c.pid,
                c.comm_id,
                c.handle as i64,
                c.rank,
                c.size,
                c.world_rank,
                c.parent_id,
                c.color,
                c.split_key,
                c.created,
                c.how
            ])?;
        }
    }
    if !batch.comms_freed.is_empty() {
        let mut stmt = tx.prepare_cached(
            "UPDATE nccl_comms SET destroyed = ?4
             WHERE node = ?1 AND pid = ?2 AND comm_id = ?3 AND destroyed IS NULL",
        )?;
        for (pid, comm_id, at) in &batch.comms_freed {
            stmt.execute(params![node, pid, comm_id, at])?;
        }
    }
    if !batch.collectives.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO nccl_collectives(node, session_id, timestamp, duration, pid, tid, op, comm_id, handle,
                 seq, group_id, count, datatype, bytes, redop, peer, stream, ret_code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for c in &batch.collectives {
            stmt.execute(params![
                node,
                session_id,
                c.timestamp,
                c.duration as i64,
                c.pid,
                c.tid,
                c.op,
                c.comm_id,
                c.handle as i64,
                c.seq as i64,
                c.group_id.map(|g| g as i64),
                c.count as i64,
                c.datatype,
                c.bytes as i64,
                c.redop,
                c.peer,
                c.stream as i64,
                c.ret_code
            ])?;
        }
    }
    Ok(())
}

/// After events were pruned: drops collective calls older than the oldest
/// event left (communicators stay: they are few and name the ranks).
pub(super) fn prune_before_events(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM nccl_collectives WHERE timestamp < (SELECT coalesce(min(timestamp), 0) FROM events)",
        [],
    )?;
    Ok(())
}
