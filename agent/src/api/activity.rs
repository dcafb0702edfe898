//! What the traced ranks' threads are doing now (`/api/v1/collectives`,
//! live agents only): the state the kernel reports for each thread
//! (`/proc/PID/task/TID/stat`) and the last CUDA or NCCL call each one
//! returned from, so a hang report can say what a missing rank is doing.
//!
//! Only processes that joined an NCCL communicator on this node are
//! looked at, and of those only the threads that made CUDA or NCCL calls
//! recently plus the main thread, at most [`MAX_THREADS`] per process.

use std::collections::BTreeMap;

use agent_common::catalog::{op_info, source};
use ingero_api::{CommMember, RankActivity, ThreadState};
use rusqlite::{Connection, params};

/// Threads reported per process.
pub const MAX_THREADS: usize = 32;

/// The kernel's one-letter task state as words.
#[must_use]
pub fn state_name(letter: char) -> &'static str {
    match letter {
        'R' => "running or runnable",
        'S' => "sleeping",
        'D' => "uninterruptible I/O",
        'T' | 't' => "stopped",
        'I' => "idle",
        _ => "gone",
    }
}

/// The state letter in the text of `/proc/PID/task/TID/stat` (after the
/// name in parentheses, which may itself hold parentheses and spaces).
#[must_use]
pub fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The activity of every live process among `members` of `node`; last
/// calls are looked for from `recent_from` (Unix ns) on.
pub fn activity(
    conn: &Connection,
    node: &str,
    members: &[CommMember],
    recent_from: i64,
) -> rusqlite::Result<Vec<RankActivity>> {
    let mut pids: BTreeMap<u32, Option<i64>> = BTreeMap::new();
    for m in members.iter().filter(|m| m.node == node) {
        let rank = pids.entry(m.pid).or_insert(None);
        *rank = rank.or(m.world_rank);
    }
    let mut last = conn.prepare(
        "SELECT tid, source, op, max(timestamp) FROM events
         WHERE timestamp >= ?1 AND pid = ?2 AND source IN (?3, ?4, ?5) GROUP BY tid",
    )?;
    let mut out = Vec::new();
    for (pid, world_rank) in pids {
        let task_dir = format!("/proc/{pid}/task");
        let Ok(tasks) = std::fs::read_dir(&task_dir) else {
            continue;
        };
        let calls: BTreeMap<u32, (String, i64)> = last
            .query_map(
                params![recent_from, pid, source::CUDA, source::DRIVER, source::NCCL],
                |r| {
                    let (src, op): (u8, u8) = (r.get(1)?, r.get(2)?);
                    let name = op_info(src, op).map_or_else(|| format!("{src}/{op}"), |o| o.name.to_owned());
                    Ok((r.get::<_, u32>(0)?, (name, r.get::<_, i64>(3)?)))
                },
            )?
            .collect::<Result<_, _>>()?;
        let mut threads = Vec::new();
        for entry in tasks.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let call = calls.get(&tid);
            if call.is_none() && tid != pid {
                continue;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            threads.push(ThreadState {
                tid,
                name: crate::text::sanitize(name.trim(), 64),
                state: stat_state(&stat).map_or("gone", state_name).to_owned(),
                since_ns: None,
                last_call: call.map(|c| c.0.clone()),
                last_call_ns: call.map(|c| c.1),
            });
        }
        threads.sort_by_key(|t| (std::cmp::Reverse(t.last_call_ns), t.tid));
        threads.truncate(MAX_THREADS);
        out.push(RankActivity {
            node: node.to_owned(),
            pid,
            world_rank,
            threads,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_name_even_with_parentheses_in_it() {
        assert_eq!(stat_state("42 (python) S 1 2 3"), Some('S'));
        assert_eq!(stat_state("42 (a) b) (c) D 1"), Some('D'));
        assert_eq!(stat_state("garbage"), None);
        assert_eq!(state_name('D'), "uninterruptible I/O");
    }

    #[test]
    fn this_process_is_seen_with_its_main_thread() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        crate::store::schema::init(&conn).expect("schema");
        let pid = std::process::id();
        let member = CommMember {
            node: "n".into(),
            pid,
            world_rank: Some(3),
            comm_id: "00".into(),
            comm_rank: None,
            comm_size: None,
            created_ns: 0,
        };
        let a = activity(&conn, "n", &[member], 0)?;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].world_rank, Some(3));
        assert!(a[0].threads.iter().any(|t| t.tid == pid && t.state != "gone"));
        Ok(())
    }
}
