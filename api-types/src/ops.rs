//! Per-node figures (`/api/v1/ops`): every CUDA operation's duration
//! statistics and the node's host evidence over the window. This is what
//! nodes are compared on (the straggler verdict), so it carries figures,
//! never conclusions.

use serde::{Deserialize, Serialize};

use crate::{Span, Window};

/// The answer of `/api/v1/ops`: one entry per node the agent's database
/// holds (a merged database holds several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpsAnswer {
    /// The answering agent's node name.
    pub node: String,
    /// First and last instant analysed.
    pub window: Span,
    /// One entry per node in the database.
    pub nodes: Vec<NodeOps>,
}

/// One node's figures over its window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOps {
    /// Node name.
    pub node: String,
    /// Its rank in the job, when known.
    pub rank: Option<i64>,
    /// The job's world size, when known.
    pub world_size: Option<i64>,
    /// Events analysed.
    pub events: u64,
    /// The node's analysed window.
    pub window: Window,
    /// Every CUDA runtime and driver operation seen.
    pub ops: Vec<OpSummary>,
    /// Host evidence over the window.
    pub evidence: Evidence,
}

/// Duration statistics of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Operation name (`cuLaunchKernel`).
    pub name: String,
    /// `events.source` code.
    pub source: u8,
    /// `events.op` code.
    pub op: u8,
    /// Calls.
    pub count: usize,
    /// Median duration, µs.
    pub p50_us: f64,
    /// 95th percentile, µs.
    pub p95_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Longest call, µs.
    pub max_us: f64,
    /// Time in the calls altogether, ms.
    pub total_ms: f64,
}

/// Evidence of CPU contention on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuEvidence {
    /// Times a traced thread was switched out while still runnable.
    pub preemptions: usize,
    /// Time those threads spent runnable but off-CPU, ns.
    pub preempted_ns: i64,
    /// (task id, times it preempted a traced thread), most first.
    pub top_preemptors: Vec<(u32, usize)>,
}

/// Evidence of block I/O on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoEvidence {
    /// Requests completed.
    pub requests: usize,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Time at least one request was in flight, ns.
    pub busy_ns: i64,
    /// Longest request, ns.
    pub peak_ns: i64,
    /// (thread id, bytes), most first.
    pub top_issuers: Vec<(u32, u64)>,
}

/// Evidence of memory pressure on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemEvidence {
    /// Bytes of pages allocated by traced processes.
    pub alloc_bytes: u64,
    /// Pages swapped in and out.
    pub swap_pages: i64,
    /// OOM kills.
    pub oom_kills: usize,
}

/// Evidence of a starved input pipeline: the training thread waiting for
/// data between its kernel launches while the job's worker processes
/// (DataLoader workers: children of the traced processes that make no
/// CUDA call) read and decode it. Figures of the rank that waited most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEvidence {
    /// Process id of the rank that waited most (0 when none waited).
    pub pid: u32,
    /// Thread of that rank that waited most among those launching kernels.
    pub tid: u32,
    /// Time its kernel-launching threads spent blocked (off-CPU, not
    /// runnable) between launches and outside any CUDA or NCCL call, ns.
    pub wait_ns: i64,
    /// Launch gaps (between consecutive kernel launches of a thread)
    /// holding at least 1 ms of such waiting.
    pub gaps: usize,
    /// Total length of those gaps, ns.
    pub gap_ns: i64,
    /// The longest of those gaps, ns.
    pub longest_gap_ns: i64,
    /// Worker processes with events in the window.
    pub workers: usize,
    /// Their threads' time on a CPU (between their recorded switches), ns.
    pub worker_cpu_ns: i64,
    /// Their threads' time runnable but off-CPU (waiting for a CPU), ns.
    pub worker_runnable_ns: i64,
    /// Their threads' time blocked (sleeping, or in a read), ns.
    pub worker_blocked_ns: i64,
    /// Worker thread time spent busy (on a CPU, waiting for one, or with
    /// a block read in flight) during the rank's waits, summed over
    /// threads, ns.
    pub worker_busy_ns: i64,
    /// Wait time of the rank during which its own block reads were in
    /// flight (a training thread loading data itself), ns.
    pub own_read_ns: i64,
    /// Block read requests of the workers, and of the rank during its waits.
    pub reads: usize,
    /// Bytes those requests read.
    pub read_bytes: u64,
}

/// Node-wide evidence of each cause class within a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// CPU contention.
    pub cpu: CpuEvidence,
    /// Block I/O.
    pub io: IoEvidence,
    /// Memory pressure.
    pub mem: MemEvidence,
    /// A starved input pipeline (absent from the answers of older agents:
    /// read as none).
    #[serde(default)]
    pub input: InputEvidence,
}
