//! Submission of records to the ring buffer with batched wake-ups.
//!
//! Records are submitted without waking the reader (`BPF_RB_NO_WAKEUP`)
//! until `CONFIG.wakeup_bytes` are waiting; the reader otherwise drains on
//! its own timer. Waking the reader per event would make it produce the
//! context switches the tracer measures. A record with no room is counted
//! in `DROPS`, never silently lost.

use agent_common::{
    drops::REASON_RING_FULL,
    event::{Event, KIND_STACK, MAX_STACK_DEPTH, StackEvent},
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_get_stack,
};

use crate::maps::{EVENTS, count_drop, setting};

pub(crate) fn wakeup_flag() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= setting!(wakeup_bytes) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Sends `event`; counts it as dropped if the ring buffer is full.
pub fn emit(event: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(wakeup_flag());
        }
        None => count_drop(REASON_RING_FULL, event.source, event.op),
    }
}

/// Sends `event` followed by the current user stack.
pub fn emit_with_stack<C: EbpfContext>(ctx: &C, event: &Event) {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        count_drop(REASON_RING_FULL, event.source, event.op);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned StackEvent;
    // bpf_get_stack writes at most the size it is given into `ips`.
    unsafe {
        (*record).event = *event;
        (*record).event.kind = KIND_STACK;
        let written = bpf_get_stack(
            ctx.as_ptr(),
            (&raw mut (*record).stack.ips).cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        );
        (*record).stack.depth = if written > 0 { written as u64 / 8 } else { 0 };
    }
    entry.submit(wakeup_flag());
}
