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

/// `sched/sched_switch` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedSwitchFields {
    pub prev_pid: u32,
    pub prev_state: u32,
    pub next_pid: u32,
    pub next_comm: u32,
}

/// `block/block_rq_issue` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIssueFields {
    pub dev: u32,
    pub sector: u32,
    pub bytes: u32,
    pub rwbs: u32,
}

/// `block/block_rq_complete` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCompleteFields {
    pub dev: u32,
    pub sector: u32,
    pub error: u32,
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
    pub pid: u32,
    pub clone_flags: u32,
}

/// `sched/sched_process_exit` fields; `group_dead` may be [`ABSENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitFields {
    pub pid: u32,
    pub group_dead: u32,
}

/// `oom/mark_victim` fields; `anon_rss` may be [`ABSENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomFields {
    pub pid: u32,
    pub anon_rss: u32,
}

/// `kmem/mm_page_alloc` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageAllocFields {
    pub order: u32,
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
    pub sched_switch: SchedSwitchFields,
    pub block_issue: BlockIssueFields,
    pub block_complete: BlockCompleteFields,
    pub new_task: NewTaskFields,
    pub exit: ExitFields,
    pub oom: OomFields,
    pub page_alloc: PageAllocFields,
}
