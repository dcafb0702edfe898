//! Page allocations of traced processes, from `kmem/mm_page_alloc`.
//!
//! Allocations are far too frequent to send one by one: they are counted
//! per process and per CPU in `MEM_COUNTERS` (no atomics needed), which
//! user space sums into one summary event per process per second.

use crate::maps::{MEM_COUNTERS, is_traced, setting};
use agent_common::event::MemCounters;
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    match try_mm_page_alloc(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

fn try_mm_page_alloc(ctx: &TracePointContext) -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_traced(tgid) {
        return Ok(0);
    }
    let offset = setting!(page_alloc.order) as usize;
    // SAFETY: offset from this kernel's tracepoint format file.
    let order = unsafe { ctx.read_at::<u32>(offset) }.map_err(|_| 1u32)?;
    let pages = 1u64 << (order & 31);
    match MEM_COUNTERS.get_ptr_mut(tgid) {
        Some(counters) => {
            // SAFETY: this CPU's copy of a live map value, with no
            // concurrent writer on this CPU.
            unsafe {
                (*counters).allocs += 1;
                (*counters).pages += pages;
            }
        }
        None => {
            let first = MemCounters { allocs: 1, pages };
            MEM_COUNTERS.insert(tgid, first, 0).map_err(|_| 1u32)?;
        }
    }
    Ok(0)
}
