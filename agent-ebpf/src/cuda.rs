//! CUDA runtime and driver calls: one uprobe/uretprobe pair for every probed
//! function, told apart by the attach cookie (`catalog::cookie`).
//!
//! The entry probe records the start time and the arguments worth keeping
//! (see `catalog::OPS`) per thread and operation; the return probe computes
//! the duration, reads results written through out-pointers, and emits one
//! event. Keying by (thread, operation) keeps nested calls apart, e.g. a
//! runtime call that enters the driver on the same thread.
//!
//! A thread's entry for an operation stays in `CALLS` between calls and is
//! rewritten in place (start time 0 = consumed), so a call costs two
//! lookups rather than an insert and a delete, each of which takes a lock
//! in the kernel. The return probe fires for untraced callers too: their
//! process's `INTEREST` slot is 0, which it checks before any lookup. The
//! thread's name is read on its first call of an operation and every
//! `COMM_EVERY` calls after, not on every call.

use agent_common::{
    catalog::{cuda_op, driver_op, memcpy_kind, source, split_cookie},
    drops::REASON_MAP_FULL,
    event::{COMM_EVERY, Event, FLAG_HAS_STREAM},
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_get_smp_processor_id},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    emit::{emit, emit_with_stack},
    maps::{CALLS, CallKey, CallStart, count_drop, enrol, is_traced, of_interest, setting},
};

#[uprobe]
pub fn cuda_enter(ctx: ProbeContext) -> u32 {
    match try_cuda_enter(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[uretprobe]
pub fn cuda_exit(ctx: RetProbeContext) -> u32 {
    match try_cuda_exit(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

pub(crate) fn cookie_of<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the program's attach cookie.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

fn try_cuda_enter(ctx: &ProbeContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        if setting!(auto_enrol) == 0 {
            return Ok(0);
        }
        // Tracing every CUDA process: a call into CUDA enrols the caller.
        enrol(tgid)?;
    }
    let cookie = cookie_of(ctx);
    let (src, op) = split_cookie(cookie);
    let mut start = read_args(ctx, src, op);
    let key = CallKey {
        tid: pid_tgid as u32,
        cookie: cookie as u32,
    };
    // The clock is read last, so the probe's own work is not counted in the call.
    if let Some(slot) = CALLS.get_ptr_mut(key) {
        // SAFETY: a live entry of this thread's own key; no other thread writes it.
        start.calls = unsafe { (*slot).calls }.wrapping_add(1);
        // SAFETY: helper without side effects.
        start.ts_ns = unsafe { bpf_ktime_get_ns() };
        // SAFETY: as above.
        unsafe { *slot = start };
        return Ok(0);
    }
    // SAFETY: as above.
    start.ts_ns = unsafe { bpf_ktime_get_ns() };
    if CALLS.insert(key, start, 0).is_err() {
        count_drop(REASON_MAP_FULL, src, op);
        return Err(1);
    }
    Ok(0)
}

fn try_cuda_exit(ctx: &RetProbeContext) -> Result<u32, u32> {
    // SAFETY: helper without side effects. Taken first (see try_cuda_enter).
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The return probe fires for every caller of the function; the entry
    // probe ignored untraced ones, so they have nothing to match.
    if !of_interest(tgid) {
        return Ok(0);
    }
    let tid = pid_tgid as u32;
    let cookie = cookie_of(ctx);
    let (src, op) = split_cookie(cookie);
    let key = CallKey {
        tid,
        cookie: cookie as u32,
    };
    let slot = CALLS.get_ptr_mut(key);
    // SAFETY: the entry is this thread's own; it is copied, then marked consumed.
    let start = slot.map(|p| unsafe {
        let start = *p;
        (*p).ts_ns = 0;
        start
    });
    let Some(start) = start.filter(|s| s.ts_ns != 0) else {
        // For a traced caller the entry probe fired (that is what armed
        // this return probe), so a missing entry means it was evicted or
        // could not be stored.
        if is_traced(tgid) {
            count_drop(REASON_MAP_FULL, src, op);
        }
        return Err(1);
    };
    let ret: i64 = ctx.ret();
    let ret = ret as i32;

    let mut arg1 = start.arg1;
    if start.out_ptr != 0 && ret == 0 {
        // The call succeeded: read the pointer it returned.
        // SAFETY: reads user memory through the checked helper.
        arg1 = unsafe { bpf_probe_read_user(start.out_ptr as *const u64) }.unwrap_or(0);
    }

    let event = Event {
        ts_ns: now,
        duration_ns: now.saturating_sub(start.ts_ns),
        arg0: start.arg0,
        arg1,
        arg2: 0,
        stream: start.stream,
        pid: tgid,
        tid,
        ret,
        // User space follows each thread's cudaSetDevice.
        gpu_id: 0,
        // SAFETY: helper without side effects.
        cpu: unsafe { bpf_get_smp_processor_id() },
        source: src,
        op,
        kind: 0,
        flags: start.flags as u8,
        comm: if start.calls % COMM_EVERY == 0 {
            bpf_get_current_comm().unwrap_or_default()
        } else {
            [0; 16]
        },
    };
    if setting!(capture_stack) != 0 {
        emit_with_stack(ctx, &event);
    } else {
        emit(&event);
    }
    Ok(0)
}

/// Argument `n` (0-based) of the probed function, registers or stack.
pub(crate) fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    if let Some(value) = ctx.arg::<u64>(n) {
        return value;
    }
    stack_arg(ctx, n)
}

/// Arguments past the registers, read from the caller's stack. At a
/// function's first instruction the stack pointer points at the return
/// address, with the 7th, 8th, ... integer arguments just above it.
#[cfg(bpf_target_arch = "x86_64")]
fn stack_arg(ctx: &ProbeContext, n: usize) -> u64 {
    const REGISTER_ARGS: usize = 6;
    if n < REGISTER_ARGS {
        return 0;
    }
    // SAFETY: `regs` is the probe's pt_regs; the stack slot is user memory
    // read through the checked helper.
    unsafe {
        let sp = (*ctx.regs).rsp;
        let slot = sp + 8 * (n - REGISTER_ARGS + 1) as u64;
        bpf_probe_read_user(slot as *const u64).unwrap_or(0)
    }
}

/// The stack pointer at the probed instruction (0 where not supported):
/// at a function's entry it points at the return address, with arguments
/// passed in memory just above it.
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the probe's pt_regs.
    unsafe { (*ctx.regs).rsp }
}

#[cfg(not(bpf_target_arch = "x86_64"))]
pub(crate) fn stack_pointer(_ctx: &ProbeContext) -> u64 {
    0
}

#[cfg(not(bpf_target_arch = "x86_64"))]
fn stack_arg(_ctx: &ProbeContext, _n: usize) -> u64 {
    0
}

fn low(x: u64) -> u64 {
    x & 0xffff_ffff
}

fn high(x: u64) -> u64 {
    x >> 32
}

/// Reads a user `u64` at `addr`, 0 if unreadable.
pub(crate) fn user_u64(addr: u64) -> u64 {
    // SAFETY: user memory read through the checked helper.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

/// The arguments of interest of `(src, op)`; layouts follow the C
/// signatures (System V AMD64: a struct of three `unsigned` such as `dim3`
/// travels in two registers).
fn read_args(ctx: &ProbeContext, src: u8, op: u8) -> CallStart {
    let mut s = CallStart {
        ts_ns: 0,
        arg0: 0,
        arg1: 0,
        stream: 0,
        out_ptr: 0,
        flags: 0,
        calls: 0,
    };
    let with_stream = |s: &mut CallStart, stream: u64| {
        s.stream = stream;
        s.flags = u64::from(FLAG_HAS_STREAM);
    };
    match (src, op) {
        // (void **devPtr, size_t size, ...)
        (source::CUDA, cuda_op::MALLOC | cuda_op::MALLOC_MANAGED)
        | (source::DRIVER, driver_op::MEM_ALLOC | driver_op::MEM_ALLOC_MANAGED) => {
            s.arg0 = arg(ctx, 1);
            s.out_ptr = arg(ctx, 0);
        }
        // (void **devPtr, size_t size, stream)
        (source::CUDA, cuda_op::MALLOC_ASYNC) | (source::DRIVER, driver_op::MEM_ALLOC_ASYNC) => {
            s.arg0 = arg(ctx, 1);
            s.out_ptr = arg(ctx, 0);
            with_stream(&mut s, arg(ctx, 2));
        }
        // (const void *func, dim3 grid, dim3 block, void **args, size_t shmem, stream)
        (source::CUDA, cuda_op::LAUNCH_KERNEL) => {
            let (grid_xy, grid_z) = (arg(ctx, 1), arg(ctx, 2));
            s.arg0 = arg(ctx, 0);
            s.arg1 = low(grid_xy) * high(grid_xy) * low(grid_z);
            with_stream(&mut s, arg(ctx, 7));
        }
        // (CUfunction f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra)
        (source::DRIVER, driver_op::LAUNCH_KERNEL) => {
            s.arg0 = arg(ctx, 0);
            s.arg1 = low(arg(ctx, 1)) * low(arg(ctx, 2)) * low(arg(ctx, 3));
            with_stream(&mut s, arg(ctx, 8));
        }
        // (const CUlaunchConfig *config, CUfunction f, ...): grid dims at
        // offsets 0, 4, 8 and hStream at 32 of the config.
        (source::DRIVER, driver_op::LAUNCH_KERNEL_EX) => {
            let config = arg(ctx, 0);
            let grid_xy = user_u64(config);
            let grid_z = user_u64(config + 8);
            s.arg0 = arg(ctx, 1);
            s.arg1 = low(grid_xy) * high(grid_xy) * low(grid_z);
            with_stream(&mut s, user_u64(config + 32));
        }
        // (void *dst, const void *src, size_t count, kind[, stream])
        (source::CUDA, cuda_op::MEMCPY) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = arg(ctx, 3);
        }
        (source::CUDA, cuda_op::MEMCPY_ASYNC) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = arg(ctx, 3);
            with_stream(&mut s, arg(ctx, 4));
        }
        // (dst, src, size_t bytes[, stream])
        (source::DRIVER, driver_op::MEMCPY) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = memcpy_kind::DEFAULT;
        }
        (source::DRIVER, driver_op::MEMCPY_ASYNC) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = memcpy_kind::DEFAULT;
            with_stream(&mut s, arg(ctx, 3));
        }
        (source::DRIVER, driver_op::MEMCPY_HTOD) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = memcpy_kind::HOST_TO_DEVICE;
        }
        (source::DRIVER, driver_op::MEMCPY_DTOH) => {
            s.arg0 = arg(ctx, 2);
            s.arg1 = memcpy_kind::DEVICE_TO_HOST;
        }
        // (stream)
        (source::CUDA, cuda_op::STREAM_SYNCHRONIZE) | (source::DRIVER, driver_op::STREAM_SYNCHRONIZE) => {
            let stream = arg(ctx, 0);
            s.arg0 = stream;
            with_stream(&mut s, stream);
        }
        // (void *devPtr) / (cudaEvent_t) / (int device)
        (source::CUDA, cuda_op::FREE | cuda_op::EVENT_SYNCHRONIZE | cuda_op::SET_DEVICE) => {
            s.arg0 = arg(ctx, 0);
        }
        _ => {}
    }
    s
}

/// Do-nothing probes: the baseline of `cargo xtask bench trace`.
#[uprobe]
pub fn empty_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}
