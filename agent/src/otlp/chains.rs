//! New causal chains while tracing: a thread (`ingero-chains`, lowest CPU
//! and I/O priority) that runs the same analysis `/api/v1/chains` runs, on
//! a read-only connection over the last [`defaults::OTLP_CHAIN_WINDOW`] of
//! recorded data, an interval after the previous pass ended (so passes
//! never overlap nor run back to back) and once more when tracing stops,
//! and queues each chain it has not sent yet as a log record.
//!
//! Invariants: "not sent yet" is decided on the chain's id without its
//! window start ([`super::logs::chain_key`]), against the chains of the
//! previous pass only: a condition that persists is sent once, one that
//! goes away and comes back is sent again, and the memory held is one
//! pass's chains. The thread never writes the database.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use super::{logs, sender::LogQueue};
use crate::config::defaults;

/// Chain keys remembered at most (far above what one pass finds).
const MAX_SEEN: usize = 4096;

/// The running analysis thread.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Watcher {
    /// Starts the thread on `db`, queueing new chains to `queue`.
    pub fn start(db: PathBuf, interval: Duration, queue: LogQueue) -> Result<Self, String> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("ingero-chains".into())
            .spawn(move || {
                super::lower_priority();
                let mut seen = HashSet::new();
                loop {
                    let stopping = wait(&thread_stop, interval);
                    if let Err(e) = pass(&db, &queue, &mut seen) {
                        log::debug!("OTLP chain pass: {e}");
                    }
                    if stopping {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the OTLP chain thread: {e}"))?;
        Ok(Self { stop, handle })
    }

    /// Runs the last pass (over what the writer committed at stop) and
    /// ends the thread; its queue handle goes with it.
    pub fn finish(self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopping) = lock.lock() {
            *stopping = true;
        }
        wake.notify_all();
        let _ = self.handle.join();
    }
}

/// Waits `interval` or until asked to stop; true when stopping.
fn wait(stop: &(Mutex<bool>, Condvar), interval: Duration) -> bool {
    let (lock, wake) = stop;
    let Ok(guard) = lock.lock() else {
        return true;
    };
    wake.wait_timeout_while(guard, interval, |stopping| !*stopping)
        .map_or(true, |(g, _)| *g)
}

/// One analysis pass: queues the chains whose key the last pass did not
/// have, then remembers this pass's keys.
fn pass(db: &std::path::Path, queue: &LogQueue, seen: &mut HashSet<String>) -> Result<(), String> {
    let conn = crate::store::open_read(db).map_err(|e| e.to_string())?;
    let range = crate::timewin::event_range(&conn).map_err(|e| e.to_string())?;
    if range.is_none() {
        return Ok(());
    }
    let window = crate::timewin::resolve(range, Some(defaults::OTLP_CHAIN_WINDOW), None, None)?;
    let reports =
        crate::analysis::explain(&conn, window, crate::clock::unix_ns()).map_err(|e| e.to_string())?;
    let chains = crate::analysis::compare_reports(&reports, None).chains;
    let mut now = HashSet::new();
    for c in &chains {
        let key = logs::chain_key(c).to_owned();
        if !seen.contains(&key) {
            queue.push(logs::from_chain(c));
        }
        if now.len() < MAX_SEEN {
            now.insert(key);
        }
    }
    *seen = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_sent_once_while_it_lasts_and_a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("node.db");
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-gpu-node-03.db"),
            &db,
        )
        .expect("sample database");
        let (queue, rx) = LogQueue::bounded(64);
        let mut seen = HashSet::new();
        pass(&db, &queue, &mut seen).expect("first pass");
        let first: Vec<_> = rx.try_iter().collect();
        assert!(!first.is_empty(), "the sample node has chains");
        assert!(first.iter().all(|r| r.event == "ingero.causal_chain"));
        pass(&db, &queue, &mut seen).expect("second pass");
        assert_eq!(rx.try_iter().count(), 0, "the same chains are not sent again");
        // Forgotten (as after a pass without them): sent again.
        seen.clear();
        pass(&db, &queue, &mut seen).expect("third pass");
        assert_eq!(rx.try_iter().count(), first.len());
        // A queue with room for one: the rest are counted, not waited for.
        let (small, small_rx) = LogQueue::bounded(1);
        pass(&db, &small, &mut HashSet::new()).expect("pass");
        assert_eq!(small_rx.try_iter().count(), 1);
        assert_eq!(small.dropped(), first.len() as u64 - 1);
    }
}
