//! Block request latency from `block/block_rq_issue` and
//! `block/block_rq_complete`, for requests issued by traced processes.
//!
//! A request is identified by (device, sector) between issue and
//! completion. Attribution is to the task that issues the request (direct
//! I/O and fsync are issued in the caller's context); background writeback
//! by kernel threads is not attributed to a process and is not recorded.

use agent_common::{
    catalog::{io_op, source},
    event::{Event, FLAG_HAS_ARG2},
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
    maps::{BLOCK_INFLIGHT, BlockKey, BlockStart, is_traced, setting},
};

#[tracepoint]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    match try_block_rq_issue(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

#[tracepoint]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    match try_block_rq_complete(&ctx) {
        Ok(code) | Err(code) => code,
    }
}

/// The operation from the `rwbs` flags ("R", "WS", "FWS", "D", "F", ...).
fn classify(rwbs: &[u8; 8]) -> u32 {
    let mut op = u32::from(io_op::FLUSH);
    let mut i = 0;
    while i < rwbs.len() {
        match rwbs[i] {
            b'D' => return u32::from(io_op::DISCARD),
            b'W' => return u32::from(io_op::WRITE),
            b'R' => op = u32::from(io_op::READ),
            0 => break,
            _ => {}
        }
        i += 1;
    }
    op
}

fn try_block_rq_issue(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return Ok(0);
    }
    let fields = setting!(block_issue);
    // SAFETY: offsets come from this kernel's tracepoint format file.
    let (dev, sector, bytes, rwbs) = unsafe {
        (
            ctx.read_at::<u32>(fields.dev as usize),
            ctx.read_at::<u64>(fields.sector as usize),
            ctx.read_at::<u32>(fields.bytes as usize),
            ctx.read_at::<[u8; 8]>(fields.rwbs as usize),
        )
    };
    let key = BlockKey {
        dev: dev.map_err(|_| 1u32)?,
        _pad: 0,
        sector: sector.map_err(|_| 1u32)?,
    };
    let start = BlockStart {
        // SAFETY: helper without side effects.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid: pid_tgid as u32,
        bytes: bytes.unwrap_or(0),
        op: classify(&rwbs.unwrap_or_default()),
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = BLOCK_INFLIGHT.insert(key, start, 0);
    Ok(0)
}

fn try_block_rq_complete(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let fields = setting!(block_complete);
    // SAFETY: offsets come from this kernel's tracepoint format file.
    let (dev, sector, error) = unsafe {
        (
            ctx.read_at::<u32>(fields.dev as usize),
            ctx.read_at::<u64>(fields.sector as usize),
            ctx.read_at::<i32>(fields.error as usize),
        )
    };
    let key = BlockKey {
        dev: dev.map_err(|_| 1u32)?,
        _pad: 0,
        sector: sector.map_err(|_| 1u32)?,
    };
    // SAFETY: the value is copied before removal.
    let Some(start) = (unsafe { BLOCK_INFLIGHT.get(key) }).copied() else {
        return Ok(0);
    };
    let _ = BLOCK_INFLIGHT.remove(key);
    emit(&Event {
        ts_ns: now,
        duration_ns: now.saturating_sub(start.ts_ns),
        arg0: u64::from(start.bytes),
        arg1: key.sector,
        arg2: u64::from(key.dev),
        pid: start.tgid,
        tid: start.tid,
        ret: error.unwrap_or(0),
        // SAFETY: helper without side effects.
        cpu: unsafe { bpf_get_smp_processor_id() },
        source: source::IO,
        op: start.op as u8,
        flags: FLAG_HAS_ARG2,
        comm: start.comm,
        ..Event::default()
    });
    Ok(0)
}
