//! Off-CPU time of traced threads from `sched/sched_switch`.
//!
//! When a thread of a traced process leaves a CPU (the tracepoint runs in
//! its context, so `current` is the outgoing task) its switch-out time, the
//! task replacing it and whether it was still runnable are kept per thread
//! id. When that thread id comes back onto a CPU, one event carries the
//! off-CPU duration. Every thread is matched by its own id, not only the
//! process's main thread.

use agent_common::{
    catalog::{host_op, source},
    event::Event,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_smp_processor_id},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    emit::emit,
    maps::{OFF_CPU, OffCpu, is_traced, mark_interest, of_interest, setting},
};

/// Task state bits below `TASK_REPORT_MAX`; all clear means runnable
/// (preempted), as the tracepoint's own "R" / "R+" output.
const TASK_STATE_MASK: i64 = 0xff;

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

/// Runs on every context switch of the machine. The outgoing task is the
/// current one, so its ids come from a helper; the incoming one can only
/// be in `OFF_CPU` if its `INTEREST` slot is set. A switch between two
/// untraced tasks (nearly all of them) costs a helper call, one field
/// read and two array reads: no hash lookup, no clock read.
fn try_sched_switch(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, prev) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let fields = setting!(sched_switch);
    // SAFETY: offset from this kernel's tracepoint format file.
    let next = unsafe { ctx.read_at::<i32>(fields.next_pid as usize) }.map_err(|_| 1u32)? as u32;
    // The idle task (0) is never traced.
    let prev_traced = prev != 0 && is_traced(tgid);
    let next_may_be_off = of_interest(next);
    if !prev_traced && !next_may_be_off {
        return Ok(0);
    }
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };

    if prev_traced {
        // SAFETY: as above.
        let (state, next_comm) = unsafe {
            (
                ctx.read_at::<i64>(fields.prev_state as usize).unwrap_or(0),
                ctx.read_at::<[u8; 16]>(fields.next_comm as usize)
                    .unwrap_or_default(),
            )
        };
        let out = OffCpu {
            ts_ns: now,
            tgid,
            preemptor: next,
            runnable: u32::from(state & TASK_STATE_MASK == 0),
            // SAFETY: helper without side effects.
            cpu: unsafe { bpf_get_smp_processor_id() },
            preemptor_comm: next_comm,
        };
        mark_interest(prev);
        let _ = OFF_CPU.insert(prev, out, 0);
    }

    if next_may_be_off {
        // SAFETY: the value is copied before removal.
        if let Some(out) = unsafe { OFF_CPU.get(next) }.copied() {
            let _ = OFF_CPU.remove(next);
            emit(&Event {
                ts_ns: now,
                duration_ns: now.saturating_sub(out.ts_ns),
                arg0: u64::from(out.runnable),
                arg1: u64::from(out.preemptor),
                pid: out.tgid,
                tid: next,
                cpu: out.cpu,
                source: source::HOST,
                op: host_op::SCHED_SWITCH,
                comm: out.preemptor_comm,
                ..Event::default()
            });
        }
    }
    Ok(0)
}
