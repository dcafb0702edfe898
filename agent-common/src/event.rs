//! Ring-buffer records: what the eBPF programs send to user space.
//!
//! One fixed-size [`Event`] serves every source. Timestamps are the kernel's
//! `CLOCK_MONOTONIC` at the *end* of what is measured (a call's return, a
//! thread's switch back onto a CPU, an I/O completion); `duration_ns` reaches
//! back to its start. A record of kind [`KIND_STACK`] is an [`Event`]
//! followed by a [`StackTail`] with the user stack at the call's return.

/// Length of a kernel task name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// A CUDA or NCCL record carries its thread's name on the thread's first
/// call of each operation and on every `COMM_EVERY`-th call after (reading
/// it costs the probe a helper call); the others carry an empty name, which
/// user space fills with the thread's last known one.
pub const COMM_EVERY: u64 = 256;
/// User stack frames captured per call with `--stack`.
pub const MAX_STACK_DEPTH: usize = 32;

/// A plain event.
pub const KIND_EVENT: u8 = 0;
/// An event followed by a [`StackTail`].
pub const KIND_STACK: u8 = 1;
/// An NCCL event followed by an [`NcclTail`].
pub const KIND_NCCL: u8 = 2;

/// `Event::stream` holds a CUDA stream handle (0 is the default stream).
pub const FLAG_HAS_STREAM: u8 = 1 << 0;
/// `Event::arg2` is meaningful for this operation.
pub const FLAG_HAS_ARG2: u8 = 1 << 1;

/// One traced occurrence. Field meaning per operation is documented in
/// [`crate::catalog`] (and in the `ops` table of every database).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_MONOTONIC` ns at the end of the call / off-CPU span / request.
    pub ts_ns: u64,
    /// Length in ns of what was measured (call, off-CPU span, I/O request), ending at `ts_ns`.
    pub duration_ns: u64,
    /// First operation-specific value (often a byte count); see the `ops` table.
    pub arg0: u64,
    /// Second operation-specific value (a pointer, a copy kind, a pid...); see the `ops` table.
    pub arg1: u64,
    /// Third operation-specific value (block I/O: the device), valid when [`FLAG_HAS_ARG2`] is set.
    pub arg2: u64,
    /// CUDA stream handle of the call, valid when [`FLAG_HAS_STREAM`] is set
    /// (0 is the default stream).
    pub stream: u64,
    /// Process id (thread-group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Return code of the call (CUDA error code), or an errno for I/O.
    pub ret: i32,
    /// GPU the calling thread selected with `cudaSetDevice`: always 0 from
    /// the kernel; user space fills it in from the thread's own calls.
    pub gpu_id: i32,
    /// CPU the event happened on.
    pub cpu: u32,
    /// Event source, one of the `catalog::source` constants (`events.source`).
    pub source: u8,
    /// Operation within the source, from the `catalog` op constants (`events.op`).
    pub op: u8,
    /// [`KIND_EVENT`] or [`KIND_STACK`].
    pub kind: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Task name: the caller, the preempting task (sched_switch), the new
    /// program (exec) or the issuer (block I/O).
    pub comm: [u8; COMM_LEN],
}

/// Follows an [`Event`] of kind [`KIND_STACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTail {
    /// Number of valid entries in `ips`.
    pub depth: u64,
    /// User-space return addresses, innermost frame first; entries past `depth` are
    /// meaningless.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// An [`Event`] with its stack, as reserved in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackEvent {
    /// The event itself, with `kind` set to [`KIND_STACK`].
    pub event: Event,
    /// The user stack captured at the call's return.
    pub stack: StackTail,
}

/// Follows an [`Event`] of kind [`KIND_NCCL`]: what an NCCL call says
/// beyond the event's columns. Fields whose meaning depends on the
/// operation say so; -1 marks a value the operation does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NcclTail {
    /// The communicator handle (`ncclComm_t`) the call used, or created
    /// (init and split: the handle written through the out-pointer).
    pub comm: u64,
    /// Collectives: the element count argument. Init: number of ranks.
    /// Split: the parent's handle.
    pub count: u64,
    /// Collectives: sequence number on the communicator, from 0 (the
    /// kernel counts per process and handle; `ncclSend`/`ncclRecv` carry
    /// the number of the next collective and do not advance it). Init: the communicator id
    /// (`catalog::comm_id`) folded from the `ncclUniqueId`.
    pub seq: u64,
    /// Group id: the start time of the outermost open `ncclGroupStart` on
    /// the thread, 0 outside a group.
    pub group: u64,
    /// Root or peer rank of the call. Init: this rank. Split: the key.
    pub peer: i32,
    /// `ncclDataType_t` of a collective. Split: the color.
    pub datatype: i32,
    /// `ncclRedOp_t` of a reducing collective.
    pub redop: i32,
    /// Explicit padding.
    pub pad: u32,
}

/// An [`Event`] with its [`NcclTail`], as reserved in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NcclEvent {
    /// The event itself, with `kind` set to [`KIND_NCCL`].
    pub event: Event,
    /// The NCCL-specific part.
    pub tail: NcclTail,
}

/// Per-process page-allocation counters kept in the kernel
/// (`kmem/mm_page_alloc`) and summarised by user space every second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCounters {
    /// Calls into the page allocator.
    pub allocs: u64,
    /// Pages allocated (`1 << order` per call).
    pub pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        // The eBPF object and user space are built separately: a layout
        // change must be deliberate on both sides.
        assert_eq!(core::mem::size_of::<Event>(), 88);
        assert_eq!(core::mem::align_of::<Event>(), 8);
        assert_eq!(core::mem::offset_of!(Event, pid), 48);
        assert_eq!(core::mem::offset_of!(Event, source), 68);
        assert_eq!(core::mem::offset_of!(Event, comm), 72);
        assert_eq!(core::mem::size_of::<NcclTail>(), 48);
        assert_eq!(core::mem::size_of::<NcclEvent>(), 136);
        assert_eq!(core::mem::size_of::<StackEvent>(), 88 + 8 + 8 * MAX_STACK_DEPTH);
    }
}
