//! NCCL records to rows: which communicator each handle is, and the rows
//! of `nccl_comms` and `nccl_collectives`.
//!
//! The kernel reports communicator *handles* (pointers, private to a
//! process); ranks on other nodes know the same communicator by what they
//! passed to create it. [`Comms`] maps each (process, handle) to the id
//! every rank computes alike (`catalog::comm_id`): the hash of the
//! `ncclUniqueId` for `ncclCommInitRank[Config]`, the parent's id and the
//! color for `ncclCommSplit`, a process-private id for `ncclCommInitAll`.
//! The `events` row of each call gets the id in place of the handle.
//!
//! Invariant: a handle is mapped only from a successful creation seen by
//! the tracer; calls on a communicator created before tracing started keep
//! `comm_id` NULL (they cannot be matched across ranks) rather than a guess.

use std::collections::HashMap;

use agent_common::{
    catalog::{comm_id, nccl_op, op_info, source},
    event::{Event, NcclTail},
};

use crate::store::writer::{Batch, CollectiveRow, CommRow, EventRow};

/// What is known of one communicator handle in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Comm {
    id: i64,
}

/// Communicator handles of every traced process; see the module documentation.
#[derive(Debug, Default)]
pub struct Comms {
    by_handle: HashMap<(u32, u64), Comm>,
}

/// Bounds the map whatever a process does (a leak of communicators, or
/// handles never freed because the process was killed).
const MAX_HANDLES: usize = 65_536;

impl Comms {
    /// Handles `event` of [`source::NCCL`]: rewrites `row.arg1` from the
    /// handle to the communicator id and adds the NCCL rows to `batch`.
    /// `world_rank` is the process's job rank, when known.
    pub fn note(
        &mut self,
        event: &Event,
        tail: &NcclTail,
        row: &mut EventRow,
        world_rank: Option<i64>,
        batch: &mut Batch,
    ) {
        debug_assert_eq!(event.source, source::NCCL);
        let op = event.op;
        let pid = event.pid;
        if nccl_op::is_init(op) {
            // The id shows on the event even when the call failed: it names
            // the communicator that could not be created.
            if let Some(id) = self.id_of(event, tail) {
                row.arg1 = id as u64;
                if event.ret == 0 && tail.comm != 0 {
                    self.created(event, tail, id, row.timestamp, world_rank, batch);
                }
            }
        } else if nccl_op::is_collective(op) {
            let comm_id = self.by_handle.get(&(pid, tail.comm)).map(|c| c.id);
            if let Some(id) = comm_id {
                row.arg1 = id as u64;
            }
            batch.collectives.push(CollectiveRow {
                timestamp: row.timestamp,
                duration: event.duration_ns,
                pid,
                tid: event.tid,
                op,
                comm_id,
                handle: tail.comm,
                seq: tail.seq,
                group_id: (tail.group != 0).then_some(tail.group),
                count: tail.count,
                datatype: tail.datatype,
                bytes: event.arg0,
                redop: (tail.redop >= 0).then_some(tail.redop),
                peer: (tail.peer >= 0).then_some(tail.peer),
                stream: event.stream,
                ret_code: event.ret,
            });
        } else if matches!(op, nccl_op::COMM_DESTROY | nccl_op::COMM_ABORT)
            && let Some(c) = self.by_handle.remove(&(pid, tail.comm))
        {
            row.arg1 = c.id as u64;
            batch.comms_freed.push((pid, c.id, row.timestamp));
        }
    }

    /// The id of the communicator a creation call makes; `None` for a
    /// split whose parent was created before tracing started.
    fn id_of(&self, event: &Event, tail: &NcclTail) -> Option<i64> {
        let id = match event.op {
            nccl_op::COMM_INIT_RANK | nccl_op::COMM_INIT_RANK_CONFIG => tail.seq,
            // One record per device, all stamped with the call's return.
            nccl_op::COMM_INIT_ALL => comm_id::init_all(event.pid, event.ts_ns),
            nccl_op::COMM_SPLIT => {
                let parent = self.by_handle.get(&(event.pid, tail.count))?;
                comm_id::split(parent.id as u64, tail.datatype)
            }
            _ => return None,
        };
        Some(id as i64)
    }

    /// A successful creation: records the handle and the `nccl_comms` row.
    fn created(
        &mut self,
        event: &Event,
        tail: &NcclTail,
        id: i64,
        created: i64,
        world_rank: Option<i64>,
        batch: &mut Batch,
    ) {
        let pid = event.pid;
        let mut row = CommRow {
            pid,
            comm_id: id,
            handle: tail.comm,
            world_rank,
            created,
            how: op_info(source::NCCL, event.op).map_or("", |o| o.name),
            ..CommRow::default()
        };
        if event.op == nccl_op::COMM_SPLIT {
            // The new rank and size depend on every rank's color and key:
            // the analysis works them out from the members it sees.
            row.parent_id = self.by_handle.get(&(pid, tail.count)).map(|p| p.id);
            row.color = Some(tail.datatype);
            row.split_key = Some(tail.peer);
        } else {
            row.rank = Some(i64::from(tail.peer));
            row.size = Some(tail.count as i64);
        }
        if self.by_handle.len() >= MAX_HANDLES {
            self.by_handle.clear();
        }
        self.by_handle.insert((pid, tail.comm), Comm { id });
        batch.comms.push(row);
    }

    /// Forgets a process that exited (its handles mean nothing any more).
    pub fn forget(&mut self, pid: u32) {
        self.by_handle.retain(|(p, _), _| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: u8, ret: i32) -> Event {
        Event {
            pid: 10,
            tid: 11,
            source: source::NCCL,
            op,
            ret,
            ts_ns: 1_000,
            ..Event::default()
        }
    }

    fn row() -> EventRow {
        EventRow {
            timestamp: 5_000,
            ..EventRow::default()
        }
    }

    #[test]
    fn collectives_get_the_id_of_the_communicator_their_handle_was_created_as() {
        let mut comms = Comms::default();
        let mut batch = Batch::default();
        let init = NcclTail {
            comm: 0xa0,
            count: 4,
            seq: 77,
            peer: 2,
            ..NcclTail::default()
        };
        let mut r = row();
        comms.note(
            &call(nccl_op::COMM_INIT_RANK_CONFIG, 0),
            &init,
            &mut r,
            Some(2),
            &mut batch,
        );
        assert_eq!(r.arg1, 77);
        assert_eq!(batch.comms[0].rank, Some(2));
        assert_eq!(batch.comms[0].size, Some(4));
        assert_eq!(batch.comms[0].how, "ncclCommInitRankConfig");

        let split = NcclTail {
            comm: 0xb0,
            count: 0xa0,
            datatype: 0,
            peer: 2,
            ..NcclTail::default()
        };
        let mut r = row();
        comms.note(&call(nccl_op::COMM_SPLIT, 0), &split, &mut r, Some(2), &mut batch);
        let split_id = comm_id::split(77, 0) as i64;
        assert_eq!(batch.comms[1].comm_id, split_id);
        assert_eq!(batch.comms[1].parent_id, Some(77));

        let all_reduce = NcclTail {
            comm: 0xb0,
            count: 256,
            seq: 3,
            datatype: 7,
            redop: 0,
            peer: -1,
            ..NcclTail::default()
        };
        let mut e = call(nccl_op::ALL_REDUCE, 0);
        e.arg0 = 1024;
        let mut r = row();
        comms.note(&e, &all_reduce, &mut r, Some(2), &mut batch);
        assert_eq!(r.arg1, split_id as u64);
        let c = &batch.collectives[0];
        assert_eq!(
            (c.comm_id, c.seq, c.bytes, c.redop, c.peer),
            (Some(split_id), 3, 1024, Some(0), None)
        );

        let mut r = row();
        comms.note(
            &call(nccl_op::COMM_DESTROY, 0),
            &NcclTail {
                comm: 0xb0,
                ..NcclTail::default()
            },
            &mut r,
            None,
            &mut batch,
        );
        assert_eq!(batch.comms_freed, vec![(10, split_id, 5_000)]);
        // The handle means nothing now.
        let mut r = row();
        comms.note(&e, &all_reduce, &mut r, Some(2), &mut batch);
        assert_eq!(batch.collectives[1].comm_id, None);
    }

    #[test]
    fn failed_creations_and_unknown_parents_map_nothing() {
        let mut comms = Comms::default();
        let mut batch = Batch::default();
        let init = NcclTail {
            comm: 0xa0,
            count: 4,
            seq: 77,
            ..NcclTail::default()
        };
        comms.note(
            &call(nccl_op::COMM_INIT_RANK, 4),
            &init,
            &mut row(),
            None,
            &mut batch,
        );
        let split = NcclTail {
            comm: 0xb0,
            count: 0xdead,
            ..NcclTail::default()
        };
        comms.note(
            &call(nccl_op::COMM_SPLIT, 0),
            &split,
            &mut row(),
            None,
            &mut batch,
        );
        assert!(batch.comms.is_empty());
    }

    #[test]
    fn init_all_gives_every_device_of_the_call_one_id() {
        let mut comms = Comms::default();
        let mut batch = Batch::default();
        for (i, handle) in [0xa0u64, 0xb0].iter().enumerate() {
            let tail = NcclTail {
                comm: *handle,
                count: 2,
                peer: i as i32,
                ..NcclTail::default()
            };
            comms.note(
                &call(nccl_op::COMM_INIT_ALL, 0),
                &tail,
                &mut row(),
                None,
                &mut batch,
            );
        }
        assert_eq!(batch.comms.len(), 2);
        assert_eq!(batch.comms[0].comm_id, batch.comms[1].comm_id);
        assert_eq!(batch.comms[1].rank, Some(1));
    }
}
