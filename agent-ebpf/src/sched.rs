//! Off-CPU time of traced threads, from every context switch.
//!
//! When a thread of a traced process leaves a CPU (the tracepoint runs in
//! its context, so `current` is the outgoing task) its switch-out time, the
//! task replacing it and whether it was still runnable are kept per thread
//! id. When that thread id comes back onto a CPU, one event carries the
//! off-CPU duration. Every thread is matched by its own id, not only the
//! process's main thread.
//!
//! Two programs share that logic; user space attaches one:
//! - `sched_switch_btf` (`tp_btf/sched_switch`), when the kernel's BTF
//!   gives the `task_struct` offsets and the tracepoint passes
//!   `prev_state`: it runs from the raw tracepoint, reads the task
//!   pointers it is given with plain loads, and costs the machine the
//!   least, since the kernel builds no trace record for it;
//! - `sched_switch` (`sched/sched_switch`), the classic tracepoint, with
//!   field offsets from tracefs, everywhere else.
//!
//! Cost: this runs on every context switch of every task. A switch between
//! two untraced tasks (nearly all of them) ends after two `INTEREST` array
//! reads: no hash lookup, no clock read, no helper call in the BTF program.

use agent_common::{
    catalog::{host_op, source},
    event::Event,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_smp_processor_id,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    emit::emit,
    maps::{OFF_CPU, OffCpu, is_traced, mark_interest, of_interest, setting},
};

/// Task state bits below `TASK_REPORT_MAX` (with `TASK_DEAD`); all clear
/// means runnable (preempted), as the tracepoint's own "R" / "R+" output.
const TASK_STATE_MASK: u64 = 0xff;

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    // (bool preempt, struct task_struct *prev, struct task_struct *next,
    //  unsigned int prev_state), since Linux 5.18; user space checked.
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // The offsets are constants to the verifier (frozen .rodata), which
    // checks each load against the kernel's own task_struct.
    let (pid, tgid, comm) = (setting!(task.pid), setting!(task.tgid), setting!(task.comm));
    // SAFETY: BTF-typed task pointers given by the tracepoint; the loads
    // are verified against the field at each offset.
    let (prev_tid, prev_tgid, next_tid) = unsafe {
        (
            core::ptr::read(prev.add(pid as usize).cast::<u32>()),
            core::ptr::read(prev.add(tgid as usize).cast::<u32>()),
            core::ptr::read(next.add(pid as usize).cast::<u32>()),
        )
    };
    let switch = Switch {
        prev: prev_tid,
        tgid: prev_tgid,
        next: next_tid,
    };
    switch.record(|| {
        let preempt: u64 = ctx.arg(0);
        let state: u64 = ctx.arg(3);
        // SAFETY: reads 16 bytes of the task's name through the checked helper.
        let name = unsafe { bpf_probe_read_kernel(next.add(comm as usize).cast::<[u8; 16]>()) };
        (
            preempt & 1 != 0 || state & TASK_STATE_MASK == 0,
            name.unwrap_or_default(),
        )
    });
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fields = setting!(sched_switch);
    // SAFETY: offset from this kernel's tracepoint format file.
    let next = unsafe { ctx.read_at::<i32>(fields.next_pid as usize) }.map_err(|_| 1u32)? as u32;
    let switch = Switch {
        prev: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        next,
    };
    switch.record(|| {
        // SAFETY: as above.
        unsafe {
            (
                ctx.read_at::<i64>(fields.prev_state as usize).unwrap_or(0) as u64 & TASK_STATE_MASK == 0,
                ctx.read_at::<[u8; 16]>(fields.next_comm as usize)
                    .unwrap_or_default(),
            )
        }
    });
    Ok(0)
}

/// One context switch: `prev` (thread of process `tgid`) leaves the CPU
/// to `next`.
struct Switch {
    prev: u32,
    tgid: u32,
    next: u32,
}

impl Switch {
    /// Keeps `prev`'s switch-out if it is traced, emits `next`'s off-CPU
    /// time if it was switched out while traced. `details` gives whether
    /// `prev` is still runnable and `next`'s name; it is only called for a
    /// traced `prev`.
    #[inline(always)]
    fn record(&self, details: impl FnOnce() -> (bool, [u8; 16])) {
        // The idle task (0) is never traced.
        let prev_traced = self.prev != 0 && is_traced(self.tgid);
        let next_may_be_off = of_interest(self.next);
        if !prev_traced && !next_may_be_off {
            return;
        }
        // SAFETY: helper without side effects.
        let now = unsafe { bpf_ktime_get_ns() };
        if prev_traced {
            let (runnable, next_comm) = details();
            let out = OffCpu {
                ts_ns: now,
                tgid: self.tgid,
                preemptor: self.next,
                runnable: u32::from(runnable),
                // SAFETY: helper without side effects.
                cpu: unsafe { bpf_get_smp_processor_id() },
                preemptor_comm: next_comm,
            };
            mark_interest(self.prev);
            let _ = OFF_CPU.insert(self.prev, out, 0);
        }
        if next_may_be_off {
            // SAFETY: the value is copied before removal.
            if let Some(out) = unsafe { OFF_CPU.get(self.next) }.copied() {
                let _ = OFF_CPU.remove(self.next);
                emit(&Event {
                    ts_ns: now,
                    duration_ns: now.saturating_sub(out.ts_ns),
                    arg0: u64::from(out.runnable),
                    arg1: u64::from(out.preemptor),
                    pid: out.tgid,
                    tid: self.next,
                    cpu: out.cpu,
                    source: source::HOST,
                    op: host_op::SCHED_SWITCH,
                    comm: out.preemptor_comm,
                    ..Event::default()
                });
            }
        }
    }
}
