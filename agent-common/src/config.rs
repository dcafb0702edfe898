//! Load-time configuration of the eBPF programs: one global `CONFIG`
//! written into the object by user space before it is loaded.
//!
//! Tracepoint field offsets are part of it: aya-ebpf has no CO-RE field
//! access for Rust programs, so user space reads the offsets from
//! `/sys/kernel/tracing/events/<category>/<name>/format` of the running
//! kernel instead of trusting constants. [`ABSENT`] marks an optional field
//! this kernel does not have.

/// Offset of a tracepoint field the running kernel does not provide.
pub const ABSENT: u32 = u32::MAX;

/// Slots of the eBPF `INTEREST` array (a power of two): an id's slot is
/// `id & (INTEREST_SLOTS - 1)`. A slot holds 0 (no id of that slot is in
/// the `TRACED` or `OFF_CPU` maps: certain), a process id `P` (`P` is
/// traced), or [`INTEREST_MANY`] (look in the maps). Writers put an id in
/// its map before they claim its slot, never write 0, and turn a slot that
/// names a process they untrace into [`INTEREST_MANY`], so both answers
/// the programs take without a hash lookup are exact.
pub const INTEREST_SLOTS: u32 = 1 << 17;

/// An `INTEREST` slot whose ids must be looked up in the maps.
pub const INTEREST_MANY: u32 = u32::MAX;

/// The value a slot holding `current` takes when process `tgid` becomes
/// traced (its `TRACED` entry already written): `tgid` if the slot was
/// free, else [`INTEREST_MANY`] unless it already names `tgid`.
#[must_use]
pub const fn interest_claim(current: u32, tgid: u32) -> u32 {
    if current == 0 || current == tgid {
        tgid
    } else {
        INTEREST_MANY
    }
}

/// `sched/sched_switch` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedSwitchFields {
    /// Offset of `prev_pid`, the thread leaving the CPU (4 bytes).
    pub prev_pid: u32,
    /// Offset of `prev_state`, its task state (8 bytes); 0 in the low bits means
    /// it was preempted while runnable.
    pub prev_state: u32,
    /// Offset of `next_pid`, the thread taking the CPU (4 bytes).
    pub next_pid: u32,
    /// Offset of `next_comm`, the name of the thread taking the CPU (16 bytes).
    pub next_comm: u32,
}

/// `struct task_struct` fields, from the kernel's BTF, for the BTF-typed
/// `sched_switch` program (which receives task pointers). All zero when
/// the kernel has no BTF or the fields were not found: the classic
/// tracepoint is used then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskFields {
    /// Offset of `pid`, the thread id (4 bytes).
    pub pid: u32,
    /// Offset of `tgid`, the process id (4 bytes).
    pub tgid: u32,
    /// Offset of `comm`, the thread name (16 bytes).
    pub comm: u32,
    /// Padding to a multiple of 8 bytes; always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit repr(C) padding, shared with the eBPF programs"
    )]
    pub _pad: u32,
}

/// `block/block_rq_issue` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIssueFields {
    /// Offset of `dev`, the device number (4 bytes).
    pub dev: u32,
    /// Offset of `sector`, the first sector of the request (8 bytes).
    pub sector: u32,
    /// Offset of `bytes`, the request size in bytes (4 bytes).
    pub bytes: u32,
    /// Offset of `rwbs`, the operation flags string ("R", "WS", "D", "F", ...).
    pub rwbs: u32,
}

/// `block/block_rq_complete` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCompleteFields {
    /// Offset of `dev`, the device number (4 bytes).
    pub dev: u32,
    /// Offset of `sector`, the first sector; with `dev` it matches the request to its issue.
    pub sector: u32,
    /// Offset of `error`, the completion status as a negative errno (4 bytes).
    pub error: u32,
    /// Padding to a multiple of 8 bytes; always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit repr(C) padding, shared with the eBPF programs"
    )]
    pub _pad: u32,
}

/// `task/task_newtask` fields (the child's pid and its clone flags).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewTaskFields {
    /// Offset of `pid`, the child's thread id (4 bytes).
    pub pid: u32,
    /// Offset of `clone_flags`, used to tell a new process from a new thread (8 bytes).
    pub clone_flags: u32,
}

/// `sched/sched_process_exit` fields; `group_dead` may be [`ABSENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitFields {
    /// Offset of `pid`, the exiting thread's id (4 bytes).
    pub pid: u32,
    /// Offset of `group_dead`, set when the whole process is gone (1 byte), or [`ABSENT`]
    /// on older kernels, where the main thread's exit stands for the process.
    pub group_dead: u32,
}

/// `oom/mark_victim` fields; `anon_rss` may be [`ABSENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomFields {
    /// Offset of `pid`, the victim's process id (4 bytes).
    pub pid: u32,
    /// Offset of `anon_rss`, the victim's anonymous RSS in KiB (8 bytes), or [`ABSENT`].
    pub anon_rss: u32,
}

/// `kmem/mm_page_alloc` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageAllocFields {
    /// Offset of `order`, log2 of the pages allocated by the call (4 bytes).
    pub order: u32,
    /// Padding to a multiple of 8 bytes; always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit repr(C) padding, shared with the eBPF programs"
    )]
    pub _pad: u32,
}

/// The `CONFIG` global of the eBPF object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1: a uprobe hit by an untraced process starts tracing it (mode
    /// "every process that uses CUDA"); 0: only processes user space (or a
    /// traced parent's fork) put in `TRACED`.
    pub auto_enrol: u8,
    /// 1: capture the user stack of each CUDA call (`--stack`).
    pub capture_stack: u8,
    /// Padding up to `wakeup_bytes`; always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit repr(C) padding, shared with the eBPF programs"
    )]
    pub _pad: [u8; 6],
    /// Wake the reader once this many bytes wait in the ring buffer; below
    /// it, records are submitted without a wake-up and the reader drains on
    /// its own timer (a wake-up per event would cause the very context
    /// switches being measured).
    pub wakeup_bytes: u64,
    /// Field offsets of `sched/sched_switch` (off-CPU time).
    pub sched_switch: SchedSwitchFields,
    /// Field offsets of `block/block_rq_issue` (start of a block request).
    pub block_issue: BlockIssueFields,
    /// Field offsets of `block/block_rq_complete` (end of a block request).
    pub block_complete: BlockCompleteFields,
    /// Field offsets of `task/task_newtask` (process fork).
    pub new_task: NewTaskFields,
    /// Field offsets of `sched/sched_process_exit` (process exit).
    pub exit: ExitFields,
    /// Field offsets of `oom/mark_victim` (OOM kill).
    pub oom: OomFields,
    /// Field offsets of `kmem/mm_page_alloc` (page-allocation counters).
    pub page_alloc: PageAllocFields,
    /// Field offsets of `struct task_struct` (BTF-typed `sched_switch`).
    pub task: TaskFields,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_names_one_traced_process_or_says_many() {
        assert_eq!(interest_claim(0, 42), 42, "a free slot names the process");
        assert_eq!(interest_claim(42, 42), 42, "enrolling twice changes nothing");
        assert_eq!(
            interest_claim(7, 42),
            INTEREST_MANY,
            "a shared slot says look it up"
        );
        assert_eq!(interest_claim(INTEREST_MANY, 42), INTEREST_MANY);
    }
}
