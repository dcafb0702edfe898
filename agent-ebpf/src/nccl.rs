//! NCCL calls: one uprobe/uretprobe pair for every probed NCCL function,
//! told apart by the attach cookie, like the CUDA programs.
//!
//! The entry probe reads the arguments (System V AMD64: the 7th and 8th
//! integer arguments, such as the `stream` of `ncclAllReduce`, are on the
//! stack; `ncclUniqueId` is passed by value in memory just above the return
//! address), gives each collective the next sequence number of its
//! communicator in this process (`NCCL_SEQ`) and the id of the thread's open
//! group. The return probe emits one [`NcclEvent`] per call
//! (per communicator created for `ncclCommInitAll`), with the handle an init
//! or split call wrote. User space maps handles to communicator ids.
//!
//! A probed call that NCCL makes from inside another (`ncclBcast` calls
//! `ncclBroadcast`) is not recorded: only the application's calls count.
//!
//! A thread has at most one recorded NCCL call in progress (the outermost),
//! so all its NCCL state is one `NCCL_THREAD` entry, updated in place: the
//! active call's cookie (0: none), its entry record (start time 0 once
//! consumed) and its open group. A call costs one lookup at entry and one
//! at return, plus the communicator's sequence counter for collectives.
//!
//! Invariant: the sequence number is taken at entry and in the kernel, so a
//! record lost later (ring full) does not shift the numbering of the calls
//! after it, and a handle reused after `ncclCommDestroy` starts again at 0.

use agent_common::{
    catalog::{comm_id, nccl_op, split_cookie},
    drops::{REASON_MAP_FULL, REASON_RING_FULL},
    event::{COMM_EVERY, Event, FLAG_HAS_ARG2, FLAG_HAS_STREAM, KIND_NCCL, NcclEvent, NcclTail},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_smp_processor_id,
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    cuda::{arg, cookie_of, stack_pointer, user_u64},
    emit::wakeup_flag,
    maps::{
        CommKey, EVENTS, NCCL_SEQ, NCCL_THREAD, NcclStart, NcclThread, count_drop, enrol, is_traced,
        of_interest, setting,
    },
};

/// Communicators recorded for one `ncclCommInitAll` call at most.
const MAX_INIT_ALL: u64 = 8;
/// Size of `ncclUniqueId` in 8-byte words.
const UNIQUE_ID_WORDS: u64 = 16;

#[uprobe]
pub fn nccl_enter(ctx: ProbeContext) -> u32 {
    match try_nccl_enter(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[uretprobe]
pub fn nccl_exit(ctx: RetProbeContext) -> u32 {
    match try_nccl_exit(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

fn try_nccl_enter(ctx: &ProbeContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !is_traced(tgid) {
        if setting!(auto_enrol) == 0 {
            return Ok(0);
        }
        enrol(tgid)?;
    }
    let cookie = cookie_of(ctx);
    let (src, op) = split_cookie(cookie);
    let Some(thread) = thread_state(tid) else {
        count_drop(REASON_MAP_FULL, src, op);
        return Err(1);
    };
    // SAFETY: this thread's own entry, written only by this thread's probes.
    let thread = unsafe { &mut *thread };
    if thread.active != 0 {
        // Called by NCCL itself from inside the application's call.
        return Ok(0);
    }
    thread.active = cookie as u32;
    let mut start = read_args(ctx, op);
    if nccl_op::is_collective(op) {
        let key = CommKey {
            tgid,
            pad: 0,
            comm: start.tail.comm,
        };
        // Point-to-point calls involve two ranks, not all: they do not
        // advance the communicator's numbering.
        let numbered = !matches!(op, nccl_op::SEND | nccl_op::RECV);
        start.tail.seq = match NCCL_SEQ.get_ptr_mut(key) {
            // SAFETY: a live counter; a communicator's calls are issued by
            // one thread at a time (NCCL requires it).
            Some(next) => unsafe {
                let seq = *next;
                if numbered {
                    *next = seq + 1;
                }
                seq
            },
            None => {
                if numbered && NCCL_SEQ.insert(key, 1u64, 0).is_err() {
                    count_drop(REASON_MAP_FULL, src, op);
                }
                0
            }
        };
    }
    let group = &mut thread.group;
    match op {
        nccl_op::GROUP_START => {
            if group.depth == 0 {
                // SAFETY: helper without side effects.
                group.id = unsafe { bpf_ktime_get_ns() };
            }
            group.depth += 1;
            start.tail.group = group.id;
            start.tail.count = group.depth;
        }
        nccl_op::GROUP_END => {
            start.tail.group = group.id;
            group.depth = group.depth.saturating_sub(1);
            start.tail.count = group.depth;
            if group.depth == 0 {
                group.id = 0;
            }
        }
        nccl_op::COMM_DESTROY | nccl_op::COMM_ABORT => {
            let _ = NCCL_SEQ.remove(CommKey {
                tgid,
                pad: 0,
                comm: start.tail.comm,
            });
        }
        _ => start.tail.group = if group.depth > 0 { group.id } else { 0 },
    }
    // Taken last, so the probe's own work is not counted in the call.
    // SAFETY: helper without side effects.
    start.ts_ns = unsafe { bpf_ktime_get_ns() };
    thread.start = start;
    Ok(0)
}

/// The NCCL state of thread `tid`, created (idle) on its first call.
#[inline(always)]
fn thread_state(tid: u32) -> Option<*mut NcclThread> {
    if let Some(state) = NCCL_THREAD.get_ptr_mut(tid) {
        return Some(state);
    }
    // SAFETY: plain integers; all zero is the idle state.
    let idle: NcclThread = unsafe { core::mem::zeroed() };
    NCCL_THREAD.insert(tid, idle, 0).ok()?;
    NCCL_THREAD.get_ptr_mut(tid)
}

/// The arguments of `op`, per the NCCL C signatures.
fn read_args(ctx: &ProbeContext, op: u8) -> NcclStart {
    let mut s = NcclStart {
        ts_ns: 0,
        stream: 0,
        out_ptr: 0,
        tail: NcclTail {
            peer: -1,
            datatype: -1,
            redop: -1,
            ..NcclTail::default()
        },
    };
    let t = &mut s.tail;
    match op {
        // (send, recv, count, datatype, redop, comm, stream)
        nccl_op::ALL_REDUCE | nccl_op::REDUCE_SCATTER => {
            t.count = arg(ctx, 2);
            t.datatype = arg(ctx, 3) as i32;
            t.redop = arg(ctx, 4) as i32;
            t.comm = arg(ctx, 5);
            s.stream = arg(ctx, 6);
        }
        // (send, recv, count, datatype, comm, stream)
        nccl_op::ALL_GATHER | nccl_op::ALL_TO_ALL => {
            t.count = arg(ctx, 2);
            t.datatype = arg(ctx, 3) as i32;
            t.comm = arg(ctx, 4);
            s.stream = arg(ctx, 5);
        }
        // (send, recv, count, datatype, root, comm, stream)
        nccl_op::BROADCAST | nccl_op::GATHER | nccl_op::SCATTER => {
            t.count = arg(ctx, 2);
            t.datatype = arg(ctx, 3) as i32;
            t.peer = arg(ctx, 4) as i32;
            t.comm = arg(ctx, 5);
            s.stream = arg(ctx, 6);
        }
        // (buff, count, datatype, root/peer, comm, stream)
        nccl_op::BCAST | nccl_op::SEND | nccl_op::RECV => {
            t.count = arg(ctx, 1);
            t.datatype = arg(ctx, 2) as i32;
            t.peer = arg(ctx, 3) as i32;
            t.comm = arg(ctx, 4);
            s.stream = arg(ctx, 5);
        }
        // (send, recv, count, datatype, redop, root, comm, stream)
        nccl_op::REDUCE => {
            t.count = arg(ctx, 2);
            t.datatype = arg(ctx, 3) as i32;
            t.redop = arg(ctx, 4) as i32;
            t.peer = arg(ctx, 5) as i32;
            t.comm = arg(ctx, 6);
            s.stream = arg(ctx, 7);
        }
        // (comm *out, nranks, ncclUniqueId id /* in memory */, rank[, config])
        nccl_op::COMM_INIT_RANK | nccl_op::COMM_INIT_RANK_CONFIG => {
            s.out_ptr = arg(ctx, 0);
            t.count = arg(ctx, 1);
            t.peer = arg(ctx, 2) as i32;
            t.seq = unique_id_hash(stack_pointer(ctx) + 8);
        }
        // (comm *comms, ndev, const int *devlist)
        nccl_op::COMM_INIT_ALL => {
            s.out_ptr = arg(ctx, 0);
            t.count = arg(ctx, 1) & 0xffff_ffff;
        }
        // (comm, color, key, comm *newcomm, config)
        nccl_op::COMM_SPLIT => {
            t.count = arg(ctx, 0);
            t.datatype = arg(ctx, 1) as i32;
            t.peer = arg(ctx, 2) as i32;
            s.out_ptr = arg(ctx, 3);
        }
        // (comm)
        nccl_op::COMM_DESTROY | nccl_op::COMM_ABORT => t.comm = arg(ctx, 0),
        _ => {}
    }
    s
}

/// The communicator id folded from the 128-byte `ncclUniqueId` at `addr`.
fn unique_id_hash(addr: u64) -> u64 {
    let mut state = comm_id::start();
    let mut i = 0;
    while i < UNIQUE_ID_WORDS {
        state = comm_id::fold(state, user_u64(addr + 8 * i));
        i += 1;
    }
    comm_id::finish(state)
}

fn try_nccl_exit(ctx: &RetProbeContext) -> Result<u32, u32> {
    // SAFETY: helper without side effects. Taken first (see try_nccl_enter).
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !of_interest(tgid) {
        return Ok(0);
    }
    let tid = pid_tgid as u32;
    let cookie = cookie_of(ctx);
    let (src, op) = split_cookie(cookie);
    let Some(thread) = NCCL_THREAD.get_ptr_mut(tid) else {
        // Its entry was evicted (or never stored) while the call ran.
        if is_traced(tgid) {
            count_drop(REASON_MAP_FULL, src, op);
        }
        return Err(1);
    };
    // SAFETY: this thread's own entry.
    let thread = unsafe { &mut *thread };
    if thread.active != 0 && thread.active != cookie as u32 {
        // The return of a call NCCL made inside the application's call.
        return Ok(0);
    }
    let recorded = thread.active == cookie as u32 && thread.start.ts_ns != 0;
    let start = thread.start;
    let calls = u64::from(thread.calls);
    thread.active = 0;
    thread.start.ts_ns = 0;
    thread.calls = thread.calls.wrapping_add(1);
    if !recorded {
        if is_traced(tgid) {
            count_drop(REASON_MAP_FULL, src, op);
        }
        return Err(1);
    }
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    let mut tail = start.tail;
    let mut event = Event {
        ts_ns: now,
        duration_ns: now.saturating_sub(start.ts_ns),
        arg0: 0,
        arg1: tail.comm,
        arg2: 0,
        stream: 0,
        pid: tgid,
        tid,
        ret,
        // User space follows each thread's cudaSetDevice.
        gpu_id: 0,
        // SAFETY: helper without side effects.
        cpu: unsafe { bpf_get_smp_processor_id() },
        source: src,
        op,
        kind: KIND_NCCL,
        flags: 0,
        comm: if calls % COMM_EVERY == 0 {
            bpf_get_current_comm().unwrap_or_default()
        } else {
            [0; 16]
        },
    };
    match op {
        nccl_op::GROUP_START | nccl_op::GROUP_END => {
            event.arg0 = tail.group;
            event.arg1 = tail.count;
        }
        nccl_op::COMM_INIT_ALL => {
            if ret == 0 {
                let mut i = 0;
                while i < MAX_INIT_ALL && i < tail.count {
                    tail.comm = user_u64(start.out_ptr + 8 * i);
                    tail.peer = i as i32;
                    forget_sequence(tgid, tail.comm);
                    event.arg0 = tail.count;
                    event.arg1 = tail.comm;
                    event.arg2 = i;
                    event.flags = FLAG_HAS_ARG2;
                    emit_nccl(&event, &tail);
                    i += 1;
                }
                return Ok(0);
            }
            event.arg0 = tail.count;
        }
        nccl_op::COMM_INIT_RANK | nccl_op::COMM_INIT_RANK_CONFIG | nccl_op::COMM_SPLIT => {
            if ret == 0 {
                tail.comm = user_u64(start.out_ptr);
                forget_sequence(tgid, tail.comm);
            }
            event.arg1 = tail.comm;
            if op == nccl_op::COMM_SPLIT {
                event.arg0 = tail.datatype as u32 as u64;
            } else {
                event.arg0 = tail.count;
            }
            event.arg2 = tail.peer as u32 as u64;
            event.flags = FLAG_HAS_ARG2;
        }
        op if nccl_op::is_collective(op) => {
            if ret != 0 && !matches!(op, nccl_op::SEND | nccl_op::RECV) {
                // A refused call enqueues nothing: give its number back, so
                // this rank's numbering stays in step with its peers'.
                let key = CommKey {
                    tgid,
                    pad: 0,
                    comm: tail.comm,
                };
                if let Some(next) = NCCL_SEQ.get_ptr_mut(key) {
                    // SAFETY: a live counter (see try_nccl_enter).
                    unsafe {
                        if *next == tail.seq + 1 {
                            *next = tail.seq;
                        }
                    }
                }
            }
            // Sizes are at most 8 bytes: no 128-bit multiply (unsupported in eBPF).
            event.arg0 = if tail.count > u64::MAX >> 3 {
                u64::MAX
            } else {
                tail.count * nccl_op::datatype_size(tail.datatype)
            };
            event.arg2 = tail.seq;
            event.stream = start.stream;
            event.flags = FLAG_HAS_ARG2 | FLAG_HAS_STREAM;
        }
        _ => {}
    }
    emit_nccl(&event, &tail);
    Ok(0)
}

/// A new communicator at `comm` starts its numbering at 0, whatever a
/// destroyed one at the same address reached.
fn forget_sequence(tgid: u32, comm: u64) {
    let _ = NCCL_SEQ.remove(CommKey { tgid, pad: 0, comm });
}

/// Sends `event` with its tail; counts it as dropped if the ring is full.
fn emit_nccl(event: &Event, tail: &NcclTail) {
    match EVENTS.reserve::<NcclEvent>(0) {
        Some(mut entry) => {
            entry.write(NcclEvent {
                event: *event,
                tail: *tail,
            });
            entry.submit(wakeup_flag());
        }
        None => count_drop(REASON_RING_FULL, event.source, event.op),
    }
}
