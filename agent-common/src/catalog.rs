//! Numbering of event sources and operations: the public contract of the
//! `events` table (`source`, `op` columns) and of the `sources`/`ops` lookup
//! tables written into every database.
//!
//! The numbers follow the original ingero tracer, so queries written for its
//! databases keep working; operations it did not have take new numbers.
//! Never renumber: databases outlive releases.
//!
//! Every uprobe is attached with a cookie ([`cookie`]) naming its source and
//! operation, so one entry and one return program serve every CUDA function.

/// Event sources (`events.source`).
pub mod source {
    /// CUDA runtime API (libcudart), uprobes.
    pub const CUDA: u8 = 1;
    /// Host kernel events (scheduler, memory, process lifecycle), tracepoints.
    pub const HOST: u8 = 3;
    /// CUDA driver API (libcuda), uprobes.
    pub const DRIVER: u8 = 4;
    /// Block I/O requests, tracepoints.
    pub const IO: u8 = 5;
    /// NCCL calls (libnccl uprobes): collectives, point-to-point, groups and
    /// communicator set-up.
    pub const NCCL: u8 = 6;
}

/// Operations of [`source::CUDA`].
pub mod cuda_op {
    /// cudaMalloc
    pub const MALLOC: u8 = 1;
    /// cudaFree
    pub const FREE: u8 = 2;
    /// cudaLaunchKernel (and cudaLaunchKernel_ptsz)
    pub const LAUNCH_KERNEL: u8 = 3;
    /// cudaMemcpy (and cudaMemcpy_ptds)
    pub const MEMCPY: u8 = 4;
    /// cudaStreamSynchronize (and cudaStreamSynchronize_ptsz)
    pub const STREAM_SYNCHRONIZE: u8 = 5;
    /// cudaDeviceSynchronize
    pub const DEVICE_SYNCHRONIZE: u8 = 6;
    /// cudaMemcpyAsync (and cudaMemcpyAsync_ptsz)
    pub const MEMCPY_ASYNC: u8 = 7;
    /// cudaMallocManaged
    pub const MALLOC_MANAGED: u8 = 8;
    /// cudaMallocAsync (and cudaMallocAsync_ptsz)
    pub const MALLOC_ASYNC: u8 = 9;
    /// cudaEventSynchronize
    pub const EVENT_SYNCHRONIZE: u8 = 10;
    /// cudaSetDevice
    pub const SET_DEVICE: u8 = 11;
}

/// Operations of [`source::DRIVER`].
pub mod driver_op {
    /// cuLaunchKernel
    pub const LAUNCH_KERNEL: u8 = 1;
    /// cuMemcpy
    pub const MEMCPY: u8 = 2;
    /// cuMemcpyAsync
    pub const MEMCPY_ASYNC: u8 = 3;
    /// cuCtxSynchronize
    pub const CTX_SYNCHRONIZE: u8 = 4;
    /// cuMemAlloc_v2
    pub const MEM_ALLOC: u8 = 5;
    /// cuMemAllocManaged
    pub const MEM_ALLOC_MANAGED: u8 = 6;
    /// cuLaunchKernelEx
    pub const LAUNCH_KERNEL_EX: u8 = 7;
    /// cuMemcpyHtoD_v2
    pub const MEMCPY_HTOD: u8 = 8;
    /// cuMemcpyDtoH_v2
    pub const MEMCPY_DTOH: u8 = 9;
    /// cuStreamSynchronize
    pub const STREAM_SYNCHRONIZE: u8 = 10;
    /// cuMemAllocAsync
    pub const MEM_ALLOC_ASYNC: u8 = 11;
}

/// Operations of [`source::HOST`].
pub mod host_op {
    /// `sched/sched_switch`: a traced thread back on a CPU; `duration_ns` is
    /// the time it spent off-CPU.
    pub const SCHED_SWITCH: u8 = 1;
    /// `oom/mark_victim`: the OOM killer chose a victim (any process on the node).
    pub const OOM_KILL: u8 = 4;
    /// `sched/sched_process_exec`: a traced process executed a new program.
    pub const PROCESS_EXEC: u8 = 5;
    /// `sched/sched_process_exit`: the last thread of a traced process exited.
    pub const PROCESS_EXIT: u8 = 6;
    /// `task/task_newtask`: a traced process created a child process (not a
    /// thread); the child is traced from birth.
    pub const PROCESS_FORK: u8 = 7;
    /// One-second summary of page allocations by a traced process.
    pub const MM_PAGE_ALLOC_SUMMARY: u8 = 20;
}

/// Operations of [`source::IO`].
pub mod io_op {
    /// Block read request (`rwbs` contains R).
    pub const READ: u8 = 1;
    /// Block write request (`rwbs` contains W).
    pub const WRITE: u8 = 2;
    /// Block discard request (`rwbs` contains D).
    pub const DISCARD: u8 = 3;
    /// Cache flush request with no data direction (`rwbs` such as F), e.g. from fsync.
    pub const FLUSH: u8 = 4;
}

/// Operations of [`source::NCCL`]. Collectives and point-to-point calls
/// are numbered below [`nccl_op::GROUP_START`]; see [`nccl_op::is_collective`].
pub mod nccl_op {
    /// ncclAllReduce
    pub const ALL_REDUCE: u8 = 1;
    /// ncclAllGather
    pub const ALL_GATHER: u8 = 2;
    /// ncclReduceScatter
    pub const REDUCE_SCATTER: u8 = 3;
    /// ncclBroadcast
    pub const BROADCAST: u8 = 4;
    /// ncclBcast (in-place broadcast)
    pub const BCAST: u8 = 5;
    /// ncclReduce
    pub const REDUCE: u8 = 6;
    /// ncclAlltoAll
    pub const ALL_TO_ALL: u8 = 7;
    /// ncclGather
    pub const GATHER: u8 = 8;
    /// ncclScatter
    pub const SCATTER: u8 = 9;
    /// ncclSend
    pub const SEND: u8 = 10;
    /// ncclRecv
    pub const RECV: u8 = 11;
    /// ncclGroupStart
    pub const GROUP_START: u8 = 20;
    /// ncclGroupEnd
    pub const GROUP_END: u8 = 21;
    /// ncclCommInitRank
    pub const COMM_INIT_RANK: u8 = 30;
    /// ncclCommInitRankConfig
    pub const COMM_INIT_RANK_CONFIG: u8 = 31;
    /// ncclCommInitAll (one record per communicator created)
    pub const COMM_INIT_ALL: u8 = 32;
    /// ncclCommSplit
    pub const COMM_SPLIT: u8 = 33;
    /// ncclCommDestroy
    pub const COMM_DESTROY: u8 = 34;
    /// ncclCommAbort
    pub const COMM_ABORT: u8 = 35;

    /// Whether `op` moves data on a communicator (a collective or a
    /// point-to-point call) and so takes a sequence number.
    #[must_use]
    pub const fn is_collective(op: u8) -> bool {
        op >= ALL_REDUCE && op <= RECV
    }

    /// Whether `op` creates a communicator.
    #[must_use]
    pub const fn is_init(op: u8) -> bool {
        op >= COMM_INIT_RANK && op <= COMM_SPLIT
    }

    /// Size in bytes of one element of `ncclDataType_t` `datatype`, 0 if unknown.
    #[must_use]
    pub const fn datatype_size(datatype: i32) -> u64 {
        match datatype {
            // int8, uint8, and the two fp8 formats
            0 | 1 | 10 | 11 => 1,
            // float16, bfloat16
            6 | 9 => 2,
            // int32, uint32, float32
            2 | 3 | 7 => 4,
            // int64, uint64, float64
            4 | 5 | 8 => 8,
            _ => 0,
        }
    }

    /// Name of `ncclDataType_t` `datatype`.
    #[must_use]
    pub const fn datatype_name(datatype: i32) -> &'static str {
        match datatype {
            0 => "int8",
            1 => "uint8",
            2 => "int32",
            3 => "uint32",
            4 => "int64",
            5 => "uint64",
            6 => "float16",
            7 => "float32",
            8 => "float64",
            9 => "bfloat16",
            10 => "float8e4m3",
            11 => "float8e5m2",
            _ => "",
        }
    }

    /// Name of `ncclRedOp_t` `redop` (user-defined operations are "custom").
    #[must_use]
    pub const fn redop_name(redop: i32) -> &'static str {
        match redop {
            0 => "sum",
            1 => "prod",
            2 => "max",
            3 => "min",
            4 => "avg",
            r if r > 4 => "custom",
            _ => "",
        }
    }
}

/// `arg1` of copies: the `cudaMemcpyKind` enum.
pub mod memcpy_kind {
    /// `cudaMemcpyHostToHost`
    pub const HOST_TO_HOST: u64 = 0;
    /// `cudaMemcpyHostToDevice` (H2D)
    pub const HOST_TO_DEVICE: u64 = 1;
    /// `cudaMemcpyDeviceToHost` (D2H)
    pub const DEVICE_TO_HOST: u64 = 2;
    /// `cudaMemcpyDeviceToDevice` (D2D)
    pub const DEVICE_TO_DEVICE: u64 = 3;
    /// Direction inferred from unified addressing.
    pub const DEFAULT: u64 = 4;
}

/// The uprobe cookie of an operation.
#[must_use]
pub const fn cookie(source: u8, op: u8) -> u64 {
    ((source as u64) << 8) | op as u64
}

/// `(source, op)` of a uprobe cookie.
#[must_use]
pub const fn split_cookie(cookie: u64) -> (u8, u8) {
    ((cookie >> 8) as u8, cookie as u8)
}

/// A row of the `sources` table.
#[derive(Debug, Clone, Copy)]
pub struct SourceInfo {
    /// Source number, as stored in `events.source` (one of the [`source`] constants).
    pub id: u8,
    /// Short lowercase name shown in output and stored in `sources.name` ("cuda", "host", ...).
    pub name: &'static str,
    /// One sentence on what the source records and what `duration_ns` measures.
    pub description: &'static str,
}

/// Every event source, as written into the `sources` table of each database.
pub const SOURCES: &[SourceInfo] = &[
    SourceInfo {
        id: source::CUDA,
        name: "cuda",
        description: "CUDA runtime API calls (libcudart uprobes); duration = call time",
    },
    SourceInfo {
        id: source::HOST,
        name: "host",
        description: "Host kernel events of traced processes: scheduler, memory, process lifecycle",
    },
    SourceInfo {
        id: source::DRIVER,
        name: "driver",
        description: "CUDA driver API calls (libcuda uprobes); duration = call time",
    },
    SourceInfo {
        id: source::IO,
        name: "io",
        description: "Block I/O requests issued by traced processes; duration = issue to completion",
    },
    SourceInfo {
        id: source::NCCL,
        name: "nccl",
        description: "NCCL calls (libnccl uprobes): collectives, point-to-point, groups, communicator set-up; duration = host call time (collectives are asynchronous: the GPU work is not included); details in nccl_collectives and nccl_comms",
    },
];

/// A row of the `ops` table.
#[derive(Debug, Clone, Copy)]
pub struct OpInfo {
    /// Source the operation belongs to (`events.source`, one of the [`source`] constants).
    pub source: u8,
    /// Operation number within its source (`events.op`).
    pub op: u8,
    /// Name shown in output: the CUDA function ("cudaMalloc") or the event ("sched_switch").
    pub name: &'static str,
    /// What the call does and what `arg0`, `arg1` and `arg2` hold; "stream"
    /// at the end means the `stream` column holds the call's CUDA stream.
    pub description: &'static str,
}

const fn op(source: u8, op: u8, name: &'static str, description: &'static str) -> OpInfo {
    OpInfo {
        source,
        op,
        name,
        description,
    }
}

/// Every operation of every source, as written into the `ops` table of each
/// database; look one up with [`op_info`].
pub const OPS: &[OpInfo] = &[
    op(
        source::CUDA,
        cuda_op::MALLOC,
        "cudaMalloc",
        "device allocation; arg0 = bytes, arg1 = device pointer returned",
    ),
    op(
        source::CUDA,
        cuda_op::FREE,
        "cudaFree",
        "device free; arg0 = device pointer",
    ),
    op(
        source::CUDA,
        cuda_op::LAUNCH_KERNEL,
        "cudaLaunchKernel",
        "kernel launch (also _ptsz); arg0 = kernel function pointer, arg1 = grid blocks (x*y*z); stream",
    ),
    op(
        source::CUDA,
        cuda_op::MEMCPY,
        "cudaMemcpy",
        "synchronous copy (also _ptds); arg0 = bytes, arg1 = kind (0 H2H, 1 H2D, 2 D2H, 3 D2D, 4 default)",
    ),
    op(
        source::CUDA,
        cuda_op::STREAM_SYNCHRONIZE,
        "cudaStreamSynchronize",
        "wait for a stream (also _ptsz); arg0 = stream; stream",
    ),
    op(
        source::CUDA,
        cuda_op::DEVICE_SYNCHRONIZE,
        "cudaDeviceSynchronize",
        "wait for the whole device",
    ),
    op(
        source::CUDA,
        cuda_op::MEMCPY_ASYNC,
        "cudaMemcpyAsync",
        "asynchronous copy (also _ptsz); arg0 = bytes, arg1 = kind (0 H2H, 1 H2D, 2 D2H, 3 D2D, 4 default); stream",
    ),
    op(
        source::CUDA,
        cuda_op::MALLOC_MANAGED,
        "cudaMallocManaged",
        "managed allocation; arg0 = bytes, arg1 = pointer returned",
    ),
    op(
        source::CUDA,
        cuda_op::MALLOC_ASYNC,
        "cudaMallocAsync",
        "stream-ordered allocation (also _ptsz); arg0 = bytes, arg1 = pointer returned; stream",
    ),
    op(
        source::CUDA,
        cuda_op::EVENT_SYNCHRONIZE,
        "cudaEventSynchronize",
        "wait for an event; arg0 = event handle",
    ),
    op(
        source::CUDA,
        cuda_op::SET_DEVICE,
        "cudaSetDevice",
        "select the calling thread's GPU; arg0 = device ordinal",
    ),
    op(
        source::DRIVER,
        driver_op::LAUNCH_KERNEL,
        "cuLaunchKernel",
        "kernel launch; arg0 = CUfunction, arg1 = grid blocks (x*y*z); stream",
    ),
    op(
        source::DRIVER,
        driver_op::MEMCPY,
        "cuMemcpy",
        "synchronous copy, unified addressing; arg0 = bytes, arg1 = 4 (direction inferred)",
    ),
    op(
        source::DRIVER,
        driver_op::MEMCPY_ASYNC,
        "cuMemcpyAsync",
        "asynchronous copy, unified addressing; arg0 = bytes, arg1 = 4 (direction inferred); stream",
    ),
    op(
        source::DRIVER,
        driver_op::CTX_SYNCHRONIZE,
        "cuCtxSynchronize",
        "wait for every stream of the context",
    ),
    op(
        source::DRIVER,
        driver_op::MEM_ALLOC,
        "cuMemAlloc_v2",
        "device allocation; arg0 = bytes, arg1 = device pointer returned",
    ),
    op(
        source::DRIVER,
        driver_op::MEM_ALLOC_MANAGED,
        "cuMemAllocManaged",
        "managed allocation; arg0 = bytes, arg1 = pointer returned",
    ),
    op(
        source::DRIVER,
        driver_op::LAUNCH_KERNEL_EX,
        "cuLaunchKernelEx",
        "kernel launch with a launch config; arg0 = CUfunction, arg1 = grid blocks (x*y*z); stream",
    ),
    op(
        source::DRIVER,
        driver_op::MEMCPY_HTOD,
        "cuMemcpyHtoD_v2",
        "synchronous host-to-device copy; arg0 = bytes, arg1 = 1 (H2D)",
    ),
    op(
        source::DRIVER,
        driver_op::MEMCPY_DTOH,
        "cuMemcpyDtoH_v2",
        "synchronous device-to-host copy; arg0 = bytes, arg1 = 2 (D2H)",
    ),
    op(
        source::DRIVER,
        driver_op::STREAM_SYNCHRONIZE,
        "cuStreamSynchronize",
        "wait for a stream; arg0 = stream; stream",
    ),
    op(
        source::DRIVER,
        driver_op::MEM_ALLOC_ASYNC,
        "cuMemAllocAsync",
        "stream-ordered allocation; arg0 = bytes, arg1 = device pointer returned; stream",
    ),
    op(
        source::HOST,
        host_op::SCHED_SWITCH,
        "sched_switch",
        "a traced thread back on a CPU; duration = time off-CPU, arg0 = 1 if it was preempted while runnable (0 if it blocked), arg1 = pid of the task that replaced it",
    ),
    op(
        source::HOST,
        host_op::OOM_KILL,
        "oom_kill",
        "the OOM killer chose a victim (any process); arg1 = victim pid, arg0 = victim RSS bytes",
    ),
    op(
        source::HOST,
        host_op::PROCESS_EXEC,
        "process_exec",
        "a traced process executed a new program",
    ),
    op(
        source::HOST,
        host_op::PROCESS_EXIT,
        "process_exit",
        "a traced process exited (last thread)",
    ),
    op(
        source::HOST,
        host_op::PROCESS_FORK,
        "process_fork",
        "a traced process forked; arg1 = child pid (traced from birth)",
    ),
    op(
        source::HOST,
        host_op::MM_PAGE_ALLOC_SUMMARY,
        "mm_page_alloc_summary",
        "page allocations by a traced process over the preceding interval; arg0 = allocations, arg1 = bytes, duration = interval",
    ),
    op(
        source::IO,
        io_op::READ,
        "block_read",
        "block read request; arg0 = bytes, arg1 = sector, arg2 = device (major << 20 | minor)",
    ),
    op(
        source::IO,
        io_op::WRITE,
        "block_write",
        "block write request; arg0 = bytes, arg1 = sector, arg2 = device (major << 20 | minor)",
    ),
    op(
        source::IO,
        io_op::DISCARD,
        "block_discard",
        "block discard request; arg0 = bytes, arg1 = sector, arg2 = device (major << 20 | minor)",
    ),
    op(
        source::IO,
        io_op::FLUSH,
        "block_flush",
        "cache flush request (fsync); arg2 = device (major << 20 | minor)",
    ),
    op(
        source::NCCL,
        nccl_op::ALL_REDUCE,
        "ncclAllReduce",
        "all-reduce; arg0 = bytes (count x datatype size), arg1 = communicator id (nccl_comms.comm_id), arg2 = sequence number on the communicator; stream",
    ),
    op(
        source::NCCL,
        nccl_op::ALL_GATHER,
        "ncclAllGather",
        "all-gather; arg0 = bytes sent by this rank (sendcount x datatype size), arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::REDUCE_SCATTER,
        "ncclReduceScatter",
        "reduce-scatter; arg0 = bytes received by this rank (recvcount x datatype size), arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::BROADCAST,
        "ncclBroadcast",
        "broadcast from root (nccl_collectives.peer); arg0 = bytes, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::BCAST,
        "ncclBcast",
        "in-place broadcast from root (nccl_collectives.peer); arg0 = bytes, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::REDUCE,
        "ncclReduce",
        "reduce to root (nccl_collectives.peer); arg0 = bytes, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::ALL_TO_ALL,
        "ncclAlltoAll",
        "all-to-all; arg0 = bytes per peer (count x datatype size), arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::GATHER,
        "ncclGather",
        "gather to root (nccl_collectives.peer); arg0 = bytes sent by this rank, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::SCATTER,
        "ncclScatter",
        "scatter from root (nccl_collectives.peer); arg0 = bytes received by this rank, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::SEND,
        "ncclSend",
        "send to a peer (nccl_collectives.peer); arg0 = bytes, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::RECV,
        "ncclRecv",
        "receive from a peer (nccl_collectives.peer); arg0 = bytes, arg1 = communicator id, arg2 = sequence number; stream",
    ),
    op(
        source::NCCL,
        nccl_op::GROUP_START,
        "ncclGroupStart",
        "opens a group of NCCL calls; arg0 = group id (nccl_collectives.group_id of the calls in it), arg1 = nesting depth after the call",
    ),
    op(
        source::NCCL,
        nccl_op::GROUP_END,
        "ncclGroupEnd",
        "closes a group (the outermost one launches its calls); arg0 = group id, arg1 = nesting depth after the call",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_INIT_RANK,
        "ncclCommInitRank",
        "joins a communicator (blocks until every rank has joined); arg0 = number of ranks, arg1 = communicator id (hash of the ncclUniqueId, the same on every rank), arg2 = this rank",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_INIT_RANK_CONFIG,
        "ncclCommInitRankConfig",
        "joins a communicator with a configuration (PyTorch's way); arg0 = number of ranks, arg1 = communicator id, arg2 = this rank",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_INIT_ALL,
        "ncclCommInitAll",
        "creates a communicator over several GPUs of one process; one event per rank created: arg0 = number of ranks, arg1 = communicator id, arg2 = rank",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_SPLIT,
        "ncclCommSplit",
        "creates a communicator from the ranks of a parent with the same color; arg0 = color, arg1 = new communicator id (derived from the parent's id and the color), arg2 = key",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_DESTROY,
        "ncclCommDestroy",
        "frees a communicator; arg1 = communicator id",
    ),
    op(
        source::NCCL,
        nccl_op::COMM_ABORT,
        "ncclCommAbort",
        "aborts a communicator's pending work and frees it; arg1 = communicator id",
    ),
];

/// A function to probe in a CUDA library, and the operation it records.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSymbol {
    /// Exported symbol name to attach the uprobe to (e.g. "cudaMalloc").
    pub symbol: &'static str,
    /// Source recorded for calls of the symbol ([`source::CUDA`], [`source::DRIVER`] or [`source::NCCL`]).
    pub source: u8,
    /// Operation recorded for calls of the symbol (a [`cuda_op`] or [`driver_op`] constant).
    pub op: u8,
}

const fn sym(symbol: &'static str, source: u8, op: u8) -> ProbeSymbol {
    ProbeSymbol { symbol, source, op }
}

/// Runtime functions (libcudart). Per-thread default stream variants
/// (`_ptsz`, `_ptds`) record the same operation as their base function and
/// are probed where the library exports them.
pub const RUNTIME_SYMBOLS: &[ProbeSymbol] = &[
    sym("cudaMalloc", source::CUDA, cuda_op::MALLOC),
    sym("cudaFree", source::CUDA, cuda_op::FREE),
    sym("cudaLaunchKernel", source::CUDA, cuda_op::LAUNCH_KERNEL),
    sym("cudaLaunchKernel_ptsz", source::CUDA, cuda_op::LAUNCH_KERNEL),
    sym("cudaMemcpy", source::CUDA, cuda_op::MEMCPY),
    sym("cudaMemcpy_ptds", source::CUDA, cuda_op::MEMCPY),
    sym("cudaMemcpyAsync", source::CUDA, cuda_op::MEMCPY_ASYNC),
    sym("cudaMemcpyAsync_ptsz", source::CUDA, cuda_op::MEMCPY_ASYNC),
    sym("cudaStreamSynchronize", source::CUDA, cuda_op::STREAM_SYNCHRONIZE),
    sym(
        "cudaStreamSynchronize_ptsz",
        source::CUDA,
        cuda_op::STREAM_SYNCHRONIZE,
    ),
    sym("cudaDeviceSynchronize", source::CUDA, cuda_op::DEVICE_SYNCHRONIZE),
    sym("cudaMallocManaged", source::CUDA, cuda_op::MALLOC_MANAGED),
    sym("cudaMallocAsync", source::CUDA, cuda_op::MALLOC_ASYNC),
    sym("cudaMallocAsync_ptsz", source::CUDA, cuda_op::MALLOC_ASYNC),
    sym("cudaEventSynchronize", source::CUDA, cuda_op::EVENT_SYNCHRONIZE),
    sym("cudaSetDevice", source::CUDA, cuda_op::SET_DEVICE),
];

/// Driver functions (libcuda).
pub const DRIVER_SYMBOLS: &[ProbeSymbol] = &[
    sym("cuLaunchKernel", source::DRIVER, driver_op::LAUNCH_KERNEL),
    sym("cuLaunchKernelEx", source::DRIVER, driver_op::LAUNCH_KERNEL_EX),
    sym("cuMemcpy", source::DRIVER, driver_op::MEMCPY),
    sym("cuMemcpyAsync", source::DRIVER, driver_op::MEMCPY_ASYNC),
    sym("cuMemcpyHtoD_v2", source::DRIVER, driver_op::MEMCPY_HTOD),
    sym("cuMemcpyDtoH_v2", source::DRIVER, driver_op::MEMCPY_DTOH),
    sym("cuCtxSynchronize", source::DRIVER, driver_op::CTX_SYNCHRONIZE),
    sym(
        "cuStreamSynchronize",
        source::DRIVER,
        driver_op::STREAM_SYNCHRONIZE,
    ),
    sym("cuMemAlloc_v2", source::DRIVER, driver_op::MEM_ALLOC),
    sym("cuMemAllocManaged", source::DRIVER, driver_op::MEM_ALLOC_MANAGED),
    sym("cuMemAllocAsync", source::DRIVER, driver_op::MEM_ALLOC_ASYNC),
];

/// NCCL functions (libnccl). The exported `nccl*` names are weak aliases of
/// `pnccl*` (the profiling interface): either name resolves to the same code.
pub const NCCL_SYMBOLS: &[ProbeSymbol] = &[
    sym("ncclAllReduce", source::NCCL, nccl_op::ALL_REDUCE),
    sym("ncclAllGather", source::NCCL, nccl_op::ALL_GATHER),
    sym("ncclReduceScatter", source::NCCL, nccl_op::REDUCE_SCATTER),
    sym("ncclBroadcast", source::NCCL, nccl_op::BROADCAST),
    sym("ncclBcast", source::NCCL, nccl_op::BCAST),
    sym("ncclReduce", source::NCCL, nccl_op::REDUCE),
    sym("ncclAlltoAll", source::NCCL, nccl_op::ALL_TO_ALL),
    sym("ncclGather", source::NCCL, nccl_op::GATHER),
    sym("ncclScatter", source::NCCL, nccl_op::SCATTER),
    sym("ncclSend", source::NCCL, nccl_op::SEND),
    sym("ncclRecv", source::NCCL, nccl_op::RECV),
    sym("ncclGroupStart", source::NCCL, nccl_op::GROUP_START),
    sym("ncclGroupEnd", source::NCCL, nccl_op::GROUP_END),
    sym("ncclCommInitRank", source::NCCL, nccl_op::COMM_INIT_RANK),
    sym(
        "ncclCommInitRankConfig",
        source::NCCL,
        nccl_op::COMM_INIT_RANK_CONFIG,
    ),
    sym("ncclCommInitAll", source::NCCL, nccl_op::COMM_INIT_ALL),
    sym("ncclCommSplit", source::NCCL, nccl_op::COMM_SPLIT),
    sym("ncclCommDestroy", source::NCCL, nccl_op::COMM_DESTROY),
    sym("ncclCommAbort", source::NCCL, nccl_op::COMM_ABORT),
];

/// Communicator ids (`nccl_comms.comm_id`): 63-bit hashes, so they stay
/// positive in SQL. Every rank of a communicator computes the same id from
/// what it knows: the `ncclUniqueId` bytes, or the parent's id and the
/// split color.
pub mod comm_id {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    const MASK: u64 = 0x7fff_ffff_ffff_ffff;

    /// Folds one 64-bit word into an FNV-1a state, a byte at a time.
    #[must_use]
    pub const fn fold(mut state: u64, word: u64) -> u64 {
        let mut i = 0;
        while i < 8 {
            state ^= (word >> (8 * i)) & 0xff;
            state = state.wrapping_mul(FNV_PRIME);
            i += 1;
        }
        state
    }

    /// The start state of [`fold`].
    #[must_use]
    pub const fn start() -> u64 {
        FNV_OFFSET
    }

    /// The id of a communicator from the state after folding every word of
    /// its `ncclUniqueId` (the eBPF probe folds the 16 words).
    #[must_use]
    pub const fn finish(state: u64) -> u64 {
        state & MASK
    }

    /// The id of the communicator created by `ncclCommSplit(parent, color, ..)`.
    #[must_use]
    pub const fn split(parent: u64, color: i32) -> u64 {
        finish(fold(fold(start(), parent), color as u32 as u64))
    }

    /// The id of a communicator created by `ncclCommInitAll` in process
    /// `pid` at `ts_ns`: private to one process, so any unique value works.
    #[must_use]
    pub const fn init_all(pid: u32, ts_ns: u64) -> u64 {
        finish(fold(fold(start(), pid as u64), ts_ns))
    }
}

/// Whether `arg0` of an operation is a byte count (allocations, copies,
/// block I/O), so sizes can be summed and compared.
#[must_use]
pub fn arg0_is_bytes(src: u8, op: u8) -> bool {
    match src {
        source::CUDA => matches!(
            op,
            cuda_op::MALLOC
                | cuda_op::MEMCPY
                | cuda_op::MEMCPY_ASYNC
                | cuda_op::MALLOC_MANAGED
                | cuda_op::MALLOC_ASYNC
        ),
        source::DRIVER => matches!(
            op,
            driver_op::MEMCPY
                | driver_op::MEMCPY_ASYNC
                | driver_op::MEMCPY_HTOD
                | driver_op::MEMCPY_DTOH
                | driver_op::MEM_ALLOC
                | driver_op::MEM_ALLOC_MANAGED
                | driver_op::MEM_ALLOC_ASYNC
        ),
        source::IO => true,
        source::NCCL => nccl_op::is_collective(op),
        _ => false,
    }
}

/// What a CUDA operation does, as far as comparing nodes is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Waits for the GPU (stream, device, context or event synchronize):
    /// where a rank blocks while its peers catch up.
    Synchronize,
    /// Launches a kernel.
    Launch,
    /// Anything else (copies, allocations, host events, I/O).
    Other,
}

/// The [`OpKind`] of `(source, op)`.
#[must_use]
pub fn op_kind(src: u8, op: u8) -> OpKind {
    match (src, op) {
        (
            source::CUDA,
            cuda_op::STREAM_SYNCHRONIZE | cuda_op::DEVICE_SYNCHRONIZE | cuda_op::EVENT_SYNCHRONIZE,
        )
        | (source::DRIVER, driver_op::CTX_SYNCHRONIZE | driver_op::STREAM_SYNCHRONIZE) => OpKind::Synchronize,
        (source::CUDA, cuda_op::LAUNCH_KERNEL)
        | (source::DRIVER, driver_op::LAUNCH_KERNEL | driver_op::LAUNCH_KERNEL_EX) => OpKind::Launch,
        _ => OpKind::Other,
    }
}

/// The catalogue entry of `(source, op)`.
#[must_use]
pub fn op_info(source: u8, op: u8) -> Option<&'static OpInfo> {
    OPS.iter().find(|o| o.source == source && o.op == op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_kinds_agree_with_op_names() {
        for o in OPS {
            let expected = if o.name.contains("Synchronize") {
                OpKind::Synchronize
            } else if o.name.contains("LaunchKernel") {
                OpKind::Launch
            } else {
                OpKind::Other
            };
            assert_eq!(op_kind(o.source, o.op), expected, "{}", o.name);
        }
    }

    #[test]
    fn cookies_round_trip_for_every_probe() {
        for p in RUNTIME_SYMBOLS.iter().chain(DRIVER_SYMBOLS).chain(NCCL_SYMBOLS) {
            assert_eq!(split_cookie(cookie(p.source, p.op)), (p.source, p.op));
            assert!(op_info(p.source, p.op).is_some(), "{} has no ops row", p.symbol);
        }
    }

    #[test]
    fn split_ids_differ_by_parent_and_color_and_stay_positive() {
        let a = comm_id::split(1, 0);
        assert_ne!(a, comm_id::split(1, 1));
        assert_ne!(a, comm_id::split(2, 0));
        assert_eq!(a, comm_id::split(1, 0));
        assert!(i64::try_from(a).is_ok());
        assert!(i64::try_from(comm_id::finish(u64::MAX)).is_ok());
    }

    #[test]
    fn every_nccl_op_is_probed_and_classified() {
        for o in OPS.iter().filter(|o| o.source == source::NCCL) {
            assert!(
                NCCL_SYMBOLS.iter().any(|p| p.op == o.op && p.symbol == o.name),
                "{} is not probed",
                o.name
            );
            assert_eq!(
                arg0_is_bytes(o.source, o.op),
                nccl_op::is_collective(o.op),
                "{}",
                o.name
            );
        }
        assert_eq!(nccl_op::datatype_size(7), 4);
        assert_eq!(nccl_op::datatype_size(99), 0);
    }

    #[test]
    fn ops_are_unique() {
        for (i, a) in OPS.iter().enumerate() {
            for b in &OPS[i + 1..] {
                assert!(
                    !(a.source == b.source && a.op == b.op),
                    "{} and {} collide",
                    a.name,
                    b.name
                );
            }
            assert!(SOURCES.iter().any(|s| s.id == a.source));
        }
    }
}
