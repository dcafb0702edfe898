//! Maps and the load-time configuration shared by all programs.
//!
//! Pair-matching maps (`CALLS`, `OFF_CPU`, `BLOCK_INFLIGHT`)
//! are LRU maps: a thread killed in the middle of a call, or a request that
//! never completes, cannot leak an entry for ever. Sizes are defaults; user
//! space may resize them before loading.
//!
//! Cost: the tracepoints fire for every task on the machine, traced or
//! not, so the common answer ("not traced") must be cheap. `INTEREST` is a
//! plain array consulted before any hash lookup: an id whose slot is 0 is
//! in neither `TRACED` nor `OFF_CPU` (see `agent_common::config::INTEREST_SLOTS`).
//! Per-call state (`CALLS`, `NCCL_THREAD`) is kept per thread and updated
//! in place: an entry whose start time is 0 has been consumed,
//! so a call costs two lookups instead of an insert and a delete.

use agent_common::{
    config::{Config, INTEREST_MANY, INTEREST_SLOTS, interest_claim},
    drops,
    event::{MemCounters, NcclTail},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Written by user space before loading (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads a `CONFIG` field. The read is volatile so the compiler cannot fold
/// the zero-initialised value into the program.
macro_rules! setting {
    ($($field:ident).+) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) }
    };
}
pub(crate) use setting;

/// All records for user space.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Events that could not be delivered, per `agent_common::drops::slot`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drops::SLOTS, 0);

/// Processes (thread-group ids) being traced.
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Per slot of ids: 0 (none in `TRACED` or `OFF_CPU`), the one traced
/// process it names, or `INTEREST_MANY` (`agent_common::config::INTEREST_SLOTS`).
#[map]
pub static INTEREST: Array<u32> = Array::with_max_entries(INTEREST_SLOTS, 0);

/// A call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallKey {
    pub tid: u32,
    /// `agent_common::catalog::cookie` of the operation.
    pub cookie: u32,
}

/// What the entry probe saw.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallStart {
    /// Entry time; 0 once the return probe consumed the entry.
    pub ts_ns: u64,
    pub arg0: u64,
    pub arg1: u64,
    pub stream: u64,
    /// User address where the call writes its result (an allocation's
    /// pointer), read back on return; 0 if none.
    pub out_ptr: u64,
    pub flags: u64,
    /// Calls of this operation by this thread before this one (the
    /// thread's name is sent every `COMM_EVERY` calls).
    pub calls: u64,
}

#[map]
pub static CALLS: LruHashMap<CallKey, CallStart> = LruHashMap::with_max_entries(65536, 0);

/// What the NCCL entry probe saw.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclStart {
    /// Entry time; 0 once the return probe consumed the entry.
    pub ts_ns: u64,
    pub stream: u64,
    /// Where an init or split call writes the new communicator handle(s).
    pub out_ptr: u64,
    pub tail: NcclTail,
}

/// A communicator handle in one process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CommKey {
    pub tgid: u32,
    pub pad: u32,
    pub comm: u64,
}

/// Next sequence number of each communicator: the same collective gets the
/// same number on every rank, since NCCL requires every rank to issue a
/// communicator's calls in the same order.
#[map]
pub static NCCL_SEQ: LruHashMap<CommKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Open `ncclGroupStart` nesting of a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GroupState {
    pub depth: u64,
    /// Start time of the outermost open group: the group's id.
    pub id: u64,
}

/// All the NCCL state of one thread. NCCL calls its own entry points
/// (`ncclBcast` calls `ncclBroadcast`); a call made inside another is not
/// the application's, so a thread has one recorded call at a time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclThread {
    /// Cookie of the outermost probed NCCL call in progress; 0 when none.
    pub active: u32,
    /// Calls recorded for this thread (its name is sent every `COMM_EVERY`).
    pub calls: u32,
    /// What that call's entry probe saw.
    pub start: NcclStart,
    /// The thread's open `ncclGroupStart` nesting (depth 0: none).
    pub group: GroupState,
}

#[map]
pub static NCCL_THREAD: LruHashMap<u32, NcclThread> = LruHashMap::with_max_entries(16384, 0);

/// A traced thread switched off its CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OffCpu {
    pub ts_ns: u64,
    pub tgid: u32,
    /// The task that took the CPU.
    pub preemptor: u32,
    /// 1 if the thread was still runnable (preempted), 0 if it blocked.
    pub runnable: u32,
    pub cpu: u32,
    pub preemptor_comm: [u8; 16],
}

#[map]
pub static OFF_CPU: LruHashMap<u32, OffCpu> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockKey {
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}

/// A block request issued by a traced process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockStart {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub bytes: u32,
    pub op: u32,
    pub comm: [u8; 16],
}

#[map]
pub static BLOCK_INFLIGHT: LruHashMap<BlockKey, BlockStart> = LruHashMap::with_max_entries(16384, 0);

/// Page-allocation counters per traced process and CPU; user space sums
/// and resets them every second.
#[map]
pub static MEM_COUNTERS: PerCpuHashMap<u32, MemCounters> = PerCpuHashMap::with_max_entries(16384, 0);

fn interest_slot(id: u32) -> Option<*mut u32> {
    INTEREST.get_ptr_mut(id & (INTEREST_SLOTS - 1))
}

/// Whether `id` may be in `TRACED` or `OFF_CPU` (false is certain).
#[inline(always)]
pub fn of_interest(id: u32) -> bool {
    // SAFETY: a live array slot, read once.
    interest_slot(id).is_some_and(|slot| unsafe { *slot } != 0)
}

/// Records that thread `tid` may now be in `OFF_CPU`: done before it is
/// inserted, so no program finds the entry with its slot still 0. A slot
/// naming a traced process keeps its name (it is not 0 either).
#[inline(always)]
pub fn mark_interest(tid: u32) {
    if let Some(slot) = interest_slot(tid) {
        // SAFETY: a live array slot; racing writers only store non-zero values.
        unsafe {
            if *slot == 0 {
                *slot = INTEREST_MANY;
            }
        }
    }
}

/// Whether process `tgid` is traced. For most tasks on the machine (slot
/// 0) and for a traced process that has its slot to itself, one array
/// read; a hash lookup otherwise.
pub fn is_traced(tgid: u32) -> bool {
    // SAFETY: a live array slot, read once.
    match interest_slot(tgid).map(|slot| unsafe { *slot }) {
        None | Some(0) => false,
        Some(named) if named == tgid => true,
        // SAFETY: the value is only tested for presence.
        Some(_) => unsafe { TRACED.get(tgid) }.is_some(),
    }
}

/// Starts tracing process `tgid` from the kernel (a traced parent's fork,
/// or a CUDA call in "every CUDA process" mode): the map first, then the
/// slot.
pub fn enrol(tgid: u32) -> Result<(), u32> {
    TRACED.insert(tgid, 1, 0).map_err(|_| 1u32)?;
    if let Some(slot) = interest_slot(tgid) {
        // SAFETY: a live array slot; see `INTEREST_SLOTS` for the races.
        unsafe { *slot = interest_claim(*slot, tgid) };
    }
    Ok(())
}

/// Stops tracing process `tgid` (it exited): the map first, then a slot
/// naming it becomes `INTEREST_MANY`.
pub fn untrace(tgid: u32) {
    let _ = TRACED.remove(tgid);
    if let Some(slot) = interest_slot(tgid) {
        // SAFETY: as above.
        unsafe {
            if *slot == tgid {
                *slot = INTEREST_MANY;
            }
        }
    }
}

/// Counts an event that could not be delivered.
pub fn count_drop(reason: u32, source: u8, op: u8) {
    if let Some(counter) = DROPS.get_ptr_mut(drops::slot(reason, source, op)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}
