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
];

/// A function to probe in a CUDA library, and the operation it records.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSymbol {
    /// Exported symbol name to attach the uprobe to (e.g. "cudaMalloc").
    pub symbol: &'static str,
    /// Source recorded for calls of the symbol ([`source::CUDA`] or [`source::DRIVER`]).
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
        for p in RUNTIME_SYMBOLS.iter().chain(DRIVER_SYMBOLS) {
            assert_eq!(split_cookie(cookie(p.source, p.op)), (p.source, p.op));
            assert!(op_info(p.source, p.op).is_some(), "{} has no ops row", p.symbol);
        }
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
