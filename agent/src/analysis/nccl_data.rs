//! Reading the NCCL tables into the wire types the collective analysis
//! works on ([`CollectiveCall`], [`CommMember`]), for a local or merged
//! database and for the agent's `/api/v1/collectives`.
//!
//! Only collectives NCCL accepted (`ret_code = 0`) and whose communicator
//! is known are read (point-to-point calls pair two ranks, not the whole
//! communicator, so they are not matched): a refused call takes no sequence number, and a call on a
//! communicator created before tracing started cannot be matched across
//! ranks. When there are more than `limit` calls the newest are kept (a
//! hang shows at the end of the recording).

use agent_common::catalog::{nccl_op, op_info, source};
use ingero_api::{CollectiveCall, CommMember};
use rusqlite::{Connection, params};

use crate::{store::schema::table_exists, timewin::Window};

/// Collective calls read from a database for one analysis at most (the
/// newest are kept).
pub const MAX_CALLS: usize = 1_000_000;

/// A communicator id as shown and sent: 16 hex digits.
#[must_use]
pub fn comm_hex(id: i64) -> String {
    format!("{:016x}", id as u64)
}

/// What the NCCL tables hold for a window.
#[derive(Debug, Clone, Default)]
pub struct NcclData {
    /// Collective calls, oldest first.
    pub calls: Vec<CollectiveCall>,
    /// Every communicator a process joined that was alive in the window.
    pub members: Vec<CommMember>,
    /// More calls than the limit: the oldest were left out.
    pub truncated: bool,
}

/// The calls and members of `window` (all of them without one), at most
/// `limit` calls. A database without the NCCL tables has none.
pub fn load(conn: &Connection, window: Option<Window>, limit: usize) -> rusqlite::Result<NcclData> {
    if !table_exists(conn, "nccl_collectives")? || !table_exists(conn, "nccl_comms")? {
        return Ok(NcclData::default());
    }
    let (from, to) = window.map_or((i64::MIN, i64::MAX), |w| (w.from, w.to));
    let mut stmt = conn.prepare(
        "WITH m AS (
             SELECT node, pid, comm_id, max(rank) AS rank, max(size) AS size, max(world_rank) AS world_rank
             FROM nccl_comms GROUP BY node, pid, comm_id
         )
         SELECT c.node, c.pid, m.world_rank, c.comm_id, m.rank, m.size, c.seq, c.op, c.bytes,
                c.timestamp - c.duration, c.duration, c.ret_code
         FROM nccl_collectives c LEFT JOIN m ON m.node = c.node AND m.pid = c.pid AND m.comm_id = c.comm_id
         WHERE c.comm_id IS NOT NULL AND c.ret_code = 0 AND c.op NOT IN (?4, ?5)
           AND c.timestamp BETWEEN ?1 AND ?2
         ORDER BY c.timestamp DESC LIMIT ?3",
    )?;
    let limit_sql = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut calls: Vec<CollectiveCall> = stmt
        .query_map(params![from, to, limit_sql, nccl_op::SEND, nccl_op::RECV], |r| {
            let op: u8 = r.get(7)?;
            Ok(CollectiveCall {
                node: r.get(0)?,
                pid: r.get(1)?,
                world_rank: r.get(2)?,
                comm_id: comm_hex(r.get(3)?),
                comm_rank: r.get(4)?,
                comm_size: r.get(5)?,
                seq: r.get::<_, i64>(6)?.max(0) as u64,
                op: op_info(source::NCCL, op).map_or_else(|| format!("nccl op {op}"), |o| o.name.to_owned()),
                bytes: r.get::<_, i64>(8)?.max(0) as u64,
                entry_ns: r.get(9)?,
                duration_ns: r.get(10)?,
                ret: r.get(11)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let truncated = calls.len() > limit;
    calls.truncate(limit);
    calls.reverse();
    let mut stmt = conn.prepare(
        "SELECT node, pid, world_rank, comm_id, rank, size, created FROM nccl_comms
         WHERE created <= ?2 AND (destroyed IS NULL OR destroyed >= ?1)
         ORDER BY node, pid, created",
    )?;
    let members = stmt
        .query_map(params![from, to], |r| {
            Ok(CommMember {
                node: r.get(0)?,
                pid: r.get(1)?,
                world_rank: r.get(2)?,
                comm_id: comm_hex(r.get(3)?),
                comm_rank: r.get(4)?,
                comm_size: r.get(5)?,
                created_ns: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(NcclData {
        calls,
        members,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("memory db");
        crate::store::schema::init(&conn).expect("schema");
        conn.execute_batch(
            "INSERT INTO nccl_comms(node, pid, comm_id, handle, rank, size, world_rank, created, how)
                 VALUES ('n1', 10, 255, 1, 1, 2, 1, 100, 'ncclCommInitRank');
             INSERT INTO nccl_collectives(node, timestamp, duration, pid, tid, op, comm_id, handle, seq, count,
                 datatype, bytes, stream, ret_code) VALUES
                 ('n1', 1000, 10, 10, 10, 1, 255, 1, 0, 4, 7, 16, 0, 0),
                 ('n1', 2000, 10, 10, 10, 1, 255, 1, 1, 4, 7, 16, 0, 0),
                 ('n1', 2500, 10, 10, 10, 1, 255, 1, 2, 4, 7, 16, 0, 4),
                 ('n1', 2600, 10, 10, 10, 1, NULL, 9, 0, 4, 7, 16, 0, 0),
                 ('n1', 3000, 10, 10, 10, 2, 255, 1, 2, 4, 7, 16, 0, 0);",
        )
        .expect("rows");
        conn
    }

    #[test]
    fn calls_carry_their_rank_and_skip_refused_and_unknown_communicators() -> rusqlite::Result<()> {
        let d = load(&db(), None, 100)?;
        let seqs: Vec<u64> = d.calls.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        let c = &d.calls[2];
        assert_eq!(
            (c.op.as_str(), c.entry_ns, c.comm_rank, c.comm_size),
            ("ncclAllGather", 2990, Some(1), Some(2))
        );
        assert_eq!(c.comm_id, "00000000000000ff");
        assert_eq!(d.members.len(), 1);
        assert!(!d.truncated);
        Ok(())
    }

    #[test]
    fn the_newest_calls_are_kept_past_the_limit() -> rusqlite::Result<()> {
        let d = load(&db(), None, 2)?;
        assert!(d.truncated);
        let seqs: Vec<u64> = d.calls.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        Ok(())
    }

    #[test]
    fn a_window_selects_calls_by_time() -> rusqlite::Result<()> {
        let d = load(&db(), Some(Window { from: 1500, to: 2500 }), 10)?;
        assert_eq!(d.calls.len(), 1);
        Ok(())
    }
}
