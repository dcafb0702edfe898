//! What the tracer hands the writer: a [`Batch`] of rows for every table
//! the tracer writes (`events`, `stack_traces`, `system_snapshots`,
//! `drops`, `nccl_comms`, `nccl_collectives`) and the session's changes, in the shape the schema stores
//! them. Batches merge: the writer absorbs several into one transaction.

/// One event, ready for the `events` table. 64-bit values (pointers,
/// handles) are stored as SQLite's signed 64-bit integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventRow {
    /// End of what was measured, Unix ns (`events.timestamp`).
    pub timestamp: i64,
    /// Process id (thread-group id) (`events.pid`).
    pub pid: u32,
    /// Thread id (`events.tid`).
    pub tid: u32,
    /// Event source, a `catalog::source` constant (`events.source`).
    pub source: u8,
    /// Operation within the source (`events.op`); meaning in the `ops` table.
    pub op: u8,
    /// Length of what was measured in ns, ending at `timestamp` (`events.duration`).
    pub duration: u64,
    /// GPU the calling thread selected, 0 by default (`events.gpu_id`).
    pub gpu_id: i32,
    /// First operation-specific value, often bytes (`events.arg0`).
    pub arg0: u64,
    /// Second operation-specific value (`events.arg1`).
    pub arg1: u64,
    /// CUDA error code of the call, or an errno for I/O (`events.ret_code`).
    pub ret_code: i32,
    /// Hash of the user stack, the key of `stack_traces`; 0 without a stack
    /// (`events.stack_hash`).
    pub stack_hash: u64,
    /// `RANK` of the traced process's environment, if set (`events.rank`).
    pub rank: Option<i64>,
    /// `LOCAL_RANK` of the traced process's environment, if set (`events.local_rank`).
    pub local_rank: Option<i64>,
    /// `WORLD_SIZE` of the traced process's environment, if set (`events.world_size`).
    pub world_size: Option<i64>,
    /// CUDA stream handle for operations that take one, else `None` (`events.stream`).
    pub stream: Option<u64>,
    /// Third operation-specific value where the operation has one (block I/O:
    /// the device), else `None` (`events.arg2`).
    pub arg2: Option<u64>,
    /// CPU the event happened on (`events.cpu`).
    pub cpu: u32,
}

/// A deduplicated user stack.
#[derive(Debug, Clone)]
pub struct StackRow {
    /// Hash of the addresses, referenced by `events.stack_hash` (`stack_traces.hash`).
    pub hash: u64,
    /// JSON array of hex addresses.
    pub ips: String,
    /// JSON array of `{"s": symbol, "f": file, "i": address}`.
    pub frames: String,
}

/// One sample of node-wide resource use.
#[derive(Debug, Clone, Default)]
pub struct SystemSnapshot {
    /// When the sample was taken, Unix ns (`system_snapshots.timestamp`).
    pub timestamp: i64,
    /// Node-wide CPU busy percentage (0-100, all CPUs) since the previous sample.
    pub cpu_pct: f64,
    /// Memory in use, as a percentage of the total (total minus available).
    pub mem_pct: f64,
    /// Available memory (`MemAvailable`) in MiB (`system_snapshots.mem_avail`).
    pub mem_avail_mb: i64,
    /// Swap in use, in MiB.
    pub swap_mb: i64,
    /// One-minute load average.
    pub load_avg: f64,
    /// Pages swapped in since the previous sample (`pswpin` delta).
    pub swap_in: i64,
    /// Pages swapped out since the previous sample (`pswpout` delta).
    pub swap_out: i64,
}

/// Drop counter of one (source, op, reason), cumulative for the session.
#[derive(Debug, Clone)]
pub struct DropCount {
    /// Source of the dropped events (`drops.source`).
    pub source: u8,
    /// Operation of the dropped events (`drops.op`).
    pub op: u8,
    /// Why they were dropped: "ring_full" or "map_full" while tracing,
    /// "stopping" for calls made while the probes were being removed
    /// (`drops.reason`).
    pub reason: &'static str,
    /// Events dropped for this (source, op, reason) since the session started.
    pub count: u64,
}

/// Everything the tracer hands to the writer at once.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events for the `events` table.
    pub events: Vec<EventRow>,
    /// New stacks for `stack_traces` (rows already present are ignored).
    pub stacks: Vec<StackRow>,
    /// (task id, name, seen at)
    pub names: Vec<(u32, String, i64)>,
    /// Samples for `system_snapshots`.
    pub snapshots: Vec<SystemSnapshot>,
    /// Current drop counters for the `drops` table (each replaces its previous value).
    pub drops: Vec<DropCount>,
    /// Changes to this session's `sessions` row, if any.
    pub session: Option<SessionUpdate>,
    /// Communicators created (`nccl_comms`).
    pub comms: Vec<CommRow>,
    /// Communicators freed: (pid, communicator id, Unix ns).
    pub comms_freed: Vec<(u32, i64, i64)>,
    /// NCCL collective and point-to-point calls (`nccl_collectives`).
    pub collectives: Vec<CollectiveRow>,
}

/// A communicator one traced process joined (`nccl_comms`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommRow {
    /// The process (`nccl_comms.pid`).
    pub pid: u32,
    /// The id every rank of the communicator shares (`catalog::comm_id`).
    pub comm_id: i64,
    /// The `ncclComm_t` handle in the process.
    pub handle: u64,
    /// This process's rank in the communicator, when the call says it.
    pub rank: Option<i64>,
    /// Ranks in the communicator, when the call says it.
    pub size: Option<i64>,
    /// The process's `RANK` in the job (torchrun), when known.
    pub world_rank: Option<i64>,
    /// The parent's id (split), when known.
    pub parent_id: Option<i64>,
    /// The split color.
    pub color: Option<i32>,
    /// The split key.
    pub split_key: Option<i32>,
    /// When the call returned, Unix ns.
    pub created: i64,
    /// The NCCL function that created it.
    pub how: &'static str,
}

/// One NCCL collective or point-to-point call (`nccl_collectives`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectiveRow {
    /// When the call returned, Unix ns (like `events.timestamp`).
    pub timestamp: i64,
    /// How long the call took on the host, ns.
    pub duration: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `catalog::nccl_op` of the call.
    pub op: u8,
    /// The communicator's id; `None` when its creation was not seen.
    pub comm_id: Option<i64>,
    /// The `ncclComm_t` handle.
    pub handle: u64,
    /// Sequence number on the communicator in this process, from 0.
    pub seq: u64,
    /// Group id, `None` outside `ncclGroupStart`/`ncclGroupEnd`.
    pub group_id: Option<u64>,
    /// The element count argument.
    pub count: u64,
    /// `ncclDataType_t`.
    pub datatype: i32,
    /// `count` times the datatype's size.
    pub bytes: u64,
    /// `ncclRedOp_t` of reducing collectives.
    pub redop: Option<i32>,
    /// Root or peer rank, where the call has one.
    pub peer: Option<i32>,
    /// The CUDA stream.
    pub stream: u64,
    /// `ncclResult_t`.
    pub ret_code: i32,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.stacks.is_empty()
            && self.names.is_empty()
            && self.snapshots.is_empty()
            && self.drops.is_empty()
            && self.session.is_none()
            && self.comms.is_empty()
            && self.comms_freed.is_empty()
            && self.collectives.is_empty()
    }

    pub(super) fn absorb(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.stacks.extend(other.stacks);
        self.names.extend(other.names);
        self.snapshots.extend(other.snapshots);
        self.drops.extend(other.drops);
        self.comms.extend(other.comms);
        self.comms_freed.extend(other.comms_freed);
        self.collectives.extend(other.collectives);
        if let Some(update) = other.session {
            self.session
                .get_or_insert_with(SessionUpdate::default)
                .merge(update);
        }
    }
}

/// Changes to the session row.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    /// When tracing stopped, Unix ns (`sessions.stopped_at`).
    pub stopped_at: Option<i64>,
    /// Total events dropped so far in the session (`sessions.events_dropped`).
    pub events_dropped: Option<u64>,
    /// JSON array of the CUDA libraries probed so far (`sessions.libraries`).
    pub libraries: Option<String>,
    /// `(rank, local_rank, world_size)` of the first traced process whose rank
    /// is known (`sessions.rank`, `local_rank`, `world_size`).
    pub rank: Option<(Option<i64>, Option<i64>, Option<i64>)>,
}

impl SessionUpdate {
    /// Takes every field `later` sets.
    pub(super) fn merge(&mut self, later: SessionUpdate) {
        self.stopped_at = later.stopped_at.or(self.stopped_at);
        self.events_dropped = later.events_dropped.or(self.events_dropped);
        self.libraries = later.libraries.or(self.libraries.take());
        self.rank = later.rank.or(self.rank);
    }
}
