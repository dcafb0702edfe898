//! Process lifecycle of traced processes, and OOM kills on the node.
//!
//! `task/task_newtask` runs in the parent's context with the child's clone
//! flags: a new *process* (not a thread) of a traced process is added to
//! `TRACED` in the kernel, so it is traced from its first instruction.
//! Threads need nothing: they share the traced thread-group id.

use agent_common::{
    catalog::{host_op, source},
    config::ABSENT,
    event::Event,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_smp_processor_id,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    emit::emit,
    maps::{enrol, is_traced, setting, untrace},
};

/// `CLONE_THREAD` from `<linux/sched.h>`.
const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    match try_task_newtask(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    match try_process_exec() {
        Ok(code) | Err(code) => code,
    }
}

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    match try_process_exit(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    match try_oom_mark_victim(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

/// A host event about the current task.
fn current_event(op: u8) -> Event {
    let pid_tgid = bpf_get_current_pid_tgid();
    Event {
        // SAFETY: helpers without side effects.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: as above.
        cpu: unsafe { bpf_get_smp_processor_id() },
        source: source::HOST,
        op,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..Event::default()
    }
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_traced(tgid) {
        return Ok(0);
    }
    let fields = setting!(new_task);
    // SAFETY: offsets come from this kernel's tracepoint format file.
    let (child, flags) = unsafe {
        (
            ctx.read_at::<i32>(fields.pid as usize),
            ctx.read_at::<u64>(fields.clone_flags as usize),
        )
    };
    if flags.map_err(|_| 1u32)? & CLONE_THREAD != 0 {
        return Ok(0);
    }
    let child = child.map_err(|_| 1u32)? as u32;
    enrol(child)?;
    let mut event = current_event(host_op::PROCESS_FORK);
    event.arg1 = u64::from(child);
    emit(&event);
    Ok(0)
}

/// Whether the current task belongs to a traced process (checked before
/// any event is built: these tracepoints fire for every task).
fn current_traced() -> bool {
    is_traced((bpf_get_current_pid_tgid() >> 32) as u32)
}

fn try_process_exec() -> Result<u32, u32> {
    if !current_traced() {
        return Ok(0);
    }
    emit(&current_event(host_op::PROCESS_EXEC));
    Ok(0)
}

fn try_process_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    if !current_traced() {
        return Ok(0);
    }
    let event = current_event(host_op::PROCESS_EXIT);
    let group_dead = match setting!(exit.group_dead) {
        // Older kernels: the main thread's exit stands for the process.
        ABSENT => event.pid == event.tid,
        // SAFETY: offset from this kernel's tracepoint format file.
        offset => unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0) != 0,
    };
    if !group_dead {
        return Ok(0);
    }
    // Page-allocation counters stay: user space reads the last interval and
    // then deletes them.
    untrace(event.pid);
    emit(&event);
    Ok(0)
}

fn try_oom_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let fields = setting!(oom);
    // SAFETY: offsets come from this kernel's tracepoint format file.
    let victim = unsafe { ctx.read_at::<i32>(fields.pid as usize) }.map_err(|_| 1u32)?;
    let rss_kib = match fields.anon_rss {
        ABSENT => 0,
        // SAFETY: as above.
        offset => unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0),
    };
    let mut event = current_event(host_op::OOM_KILL);
    event.pid = victim as u32;
    event.tid = victim as u32;
    event.arg0 = rss_kib * 1024;
    event.arg1 = u64::from(victim as u32);
    emit(&event);
    Ok(0)
}
