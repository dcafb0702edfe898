//! One-second page-allocation summaries: the kernel keeps running counters
//! per traced process; each second the deltas become one `events` row per
//! process that allocated (`host` / `mm_page_alloc_summary`), and exited
//! processes are forgotten so the map stays bounded.

use std::{collections::HashMap, time::Duration};

use agent_common::{catalog::host_op, event::MemCounters};

use super::{pipeline::Pipeline, probes::Probes, procs};

/// Per-process page-allocation counters seen last, to emit deltas.
#[derive(Debug, Default)]
pub struct MemSummaries {
    last: HashMap<u32, MemCounters>,
    page_size: u64,
}

impl MemSummaries {
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            last: HashMap::new(),
            page_size: u64::try_from(page).unwrap_or(4096),
        }
    }

    /// Adds one summary row per process that allocated since the last call.
    pub fn collect(&mut self, probes: &mut Probes, pipeline: &mut Pipeline, now: i64, interval: Duration) {
        for (pid, total) in probes.mem_counters() {
            let prev = self.last.insert(pid, total).unwrap_or_default();
            let allocs = total.allocs.saturating_sub(prev.allocs);
            let pages = total.pages.saturating_sub(prev.pages);
            if allocs > 0 {
                let row = pipeline.host_row(
                    pid,
                    host_op::MM_PAGE_ALLOC_SUMMARY,
                    now,
                    interval.as_nanos() as u64,
                    allocs,
                    pages * self.page_size,
                );
                pipeline.push_row(row);
            }
            if !procs::exists(pid) {
                probes.forget_mem_counters(pid);
                self.last.remove(&pid);
            }
        }
    }
}
