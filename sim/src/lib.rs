//! GPU-less stand-ins for a distributed training job, built from `native/`
//! by `build.rs`:
//!
//! - `libcuda.so.1`: the CUDA driver API with real signatures and a stream
//!   model (simulated GPU time), see `native/cuda_stub.c`;
//! - `libnccl.so.2`: the NCCL 2.28 host API ([`NCCL_EXPORTS`]) with real
//!   signatures; collectives are real barriers among the ranks of their
//!   communicator over loopback TCP, see `native/nccl_stub.c`;
//! - `ingero-sim-workload`: driver and host call patterns with known counts;
//! - `ingero-sim-cudart`: known calls into the real CUDA runtime;
//! - `ingero-sim-rank`: one rank of a data-parallel training job;
//! - `ingero-sim-nccl-check`: a 4-rank job checking the stub NCCL's
//!   semantics (see `native/nccl_check.c`).
//!
//! The real CUDA runtime (`libcudart.so.12`) comes from the PyPI package
//! `nvidia-cuda-runtime-cu12`; [`libcudart`] finds it.

#![warn(missing_docs)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Directory holding the built stand-ins.
#[must_use]
pub fn dir() -> &'static Path {
    Path::new(env!("INGERO_SIM_DIR"))
}

/// The stub driver library.
#[must_use]
pub fn libcuda() -> PathBuf {
    dir().join("libcuda.so.1")
}

/// The stub NCCL library.
#[must_use]
pub fn libnccl() -> PathBuf {
    dir().join("libnccl.so.2")
}

/// Every function the stub NCCL exports, by its NCCL name (each also has
/// a `pncclX` alias at the same address, as in the real library). Each
/// starts with `push %rbp`.
pub const NCCL_EXPORTS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommInitRankConfig",
    "ncclCommInitAll",
    "ncclCommSplit",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclCommCount",
    "ncclCommCuDevice",
    "ncclCommUserRank",
    "ncclGetErrorString",
    "ncclAllReduce",
    "ncclAllGather",
    "ncclReduceScatter",
    "ncclBroadcast",
    "ncclBcast",
    "ncclReduce",
    "ncclAlltoAll",
    "ncclGather",
    "ncclScatter",
    "ncclSend",
    "ncclRecv",
    "ncclGroupStart",
    "ncclGroupEnd",
];

/// The test workload program.
#[must_use]
pub fn workload() -> PathBuf {
    dir().join("ingero-sim-workload")
}

/// The real-runtime caller (does not load the stub driver).
#[must_use]
pub fn cudart_caller() -> PathBuf {
    dir().join("ingero-sim-cudart")
}

/// The stub NCCL semantics checker (one rank of a 4-rank job).
#[must_use]
pub fn nccl_check() -> PathBuf {
    dir().join("ingero-sim-nccl-check")
}

/// The simulated training rank.
#[must_use]
pub fn rank() -> PathBuf {
    dir().join("ingero-sim-rank")
}

/// The real `libcudart.so.12` of the `nvidia-cuda-runtime-cu12` wheel:
/// `$INGERO_CUDART` if set, else where `python3` imports it from.
#[must_use]
pub fn libcudart() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("INGERO_CUDART") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], 'lib', 'libcudart.so.12'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.exists()).then_some(path)
}

/// The real `libnccl.so.2` of the `nvidia-nccl-cu12` wheel: `$INGERO_NCCL`
/// if set, else where `python3` imports it from.
#[must_use]
pub fn libnccl_real() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("INGERO_NCCL") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], 'lib', 'libnccl.so.2'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.exists()).then_some(path)
}
pub mod cluster;
