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
    maps::{OFF_CPU, OffCpu, is_traced, setting},
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

fn try_sched_switch(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let fields = setting!(sched_switch);
    // SAFETY: offsets come from this kernel's tracepoint format file.
    let (prev_pid, next_pid) = unsafe {
        (
            ctx.read_at::<i32>(fields.prev_pid as usize),
            ctx.read_at::<i32>(fields.next_pid as usize),
        )
    };
    let (prev_pid, next_pid) = (prev_pid.map_err(|_| 1u32)?, next_pid.map_err(|_| 1u32)?);
    // SAFETY: helper without side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };

    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if prev_pid != 0 && is_traced(tgid) {
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
            preemptor: next_pid as u32,
            runnable: u32::from(state & TASK_STATE_MASK == 0),
            cpu,
            preemptor_comm: next_comm,
        };
        let _ = OFF_CPU.insert(prev_pid as u32, out, 0);
    }

    let next = next_pid as u32;
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
    Ok(0)
}
