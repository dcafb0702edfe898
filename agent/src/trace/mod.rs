//! `ingero trace`: load the probes, follow the processes, store the events.
//!
//! [`Tracer::start`] does the start-up, [`Tracer::run`] the drain loop with
//! its per-second tick, [`Tracer::shutdown`] the orderly stop; the live
//! counters ([`LiveStats`]) are the tracer's, for whoever wants to show
//! them (the command hands them to the API).
//!
//! Start-up checks everything that can fail before anything is attached
//! (privileges, BTF, tracefs, pids, library paths, the database), so a
//! mistake ends with one sentence and nothing half-done. Then one async
//! loop drains the ring buffer (on its own 50 ms timer, or when the kernel
//! wakes it because the buffer is filling), hands batches to the writer
//! thread, and once a second prints the live summary, samples drop
//! counters, memory counters and system load, and looks for new CUDA
//! processes and libraries.
//!
//! Stopping (Ctrl-C, SIGTERM, `--duration`, a closed `--json` pipe) detaches
//! the programs first, then drains what is left in the ring buffer and
//! commits it: every event read from the kernel is stored.

pub mod decode;
pub mod discovery;
pub mod libraries;
pub mod live;
mod memsum;
pub mod pipeline;
pub mod probes;
pub mod procs;
pub mod symbolize;
pub mod tracefs;
mod tracer;

use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::store::StoreError;
use libraries::{LibKind, Library, LibraryError};
use probes::Families;

pub use live::LiveStats;
pub use tracer::{Stop, Tracer};

/// How often the ring buffer is drained when the kernel does not wake us.
pub(crate) const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Records read per drain before the batch is handed over.
pub(crate) const MAX_RECORDS_PER_DRAIN: usize = 1 << 16;
/// Kernel BTF, required by the loader.
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("ingero trace must run as root, because it loads eBPF programs: run it with sudo")]
    NotRoot,
    #[error(
        "this kernel exposes no BTF ({0} is missing): ingero needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or later)"
    )]
    NoBtf(PathBuf),
    #[error("{0}")]
    Tracefs(String),
    #[error("no process with pid {0}; check the --pid value")]
    NoSuchPid(u32),
    #[error("--ringbuf-size {0} is not valid: use a power of two of at least 4k, e.g. 8m")]
    RingSize(u64),
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("cannot attach to {what}: {message}")]
    Attach { what: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
}

/// Everything `ingero trace` was asked to do, after configuration layering.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub node: String,
    pub pids: Vec<u32>,
    pub duration: Option<Duration>,
    pub db: PathBuf,
    pub max_db_size: Option<u64>,
    pub stack: bool,
    pub cuda_libs: Vec<PathBuf>,
    pub cudart_libs: Vec<PathBuf>,
    pub json: bool,
    pub ringbuf_bytes: u64,
    pub families: Families,
    /// The command line as JSON, recorded in `sessions.flags`.
    pub flags_json: String,
    /// Print the per-second summary line.
    pub live: bool,
}

/// What a finished trace run recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceOutcome {
    pub session_id: i64,
    pub db: PathBuf,
    pub node: String,
    pub events: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub stop_reason: String,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The checks that need no side effects, in the order a user would fix them.
pub(crate) fn preflight(opts: &TraceOptions) -> Result<Vec<Library>, TraceError> {
    if !is_root() {
        return Err(TraceError::NotRoot);
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(TraceError::NoBtf(PathBuf::from(BTF_PATH)));
    }
    let ring = opts.ringbuf_bytes;
    if ring < 4096 || !ring.is_power_of_two() || ring > 1 << 30 {
        return Err(TraceError::RingSize(ring));
    }
    if let Some(pid) = opts.pids.iter().find(|p| **p == 0 || !procs::exists(**p)) {
        return Err(TraceError::NoSuchPid(*pid));
    }
    let mut libs = Vec::new();
    for (kind, paths) in [
        (LibKind::Driver, &opts.cuda_libs),
        (LibKind::Runtime, &opts.cudart_libs),
    ] {
        for path in paths {
            libs.push(libraries::inspect(kind, path, path)?);
        }
    }
    Ok(libs)
}

pub(crate) fn describe_library(lib: &Library) -> String {
    format!(
        "probing {} ({} {} functions{})",
        lib.path.display(),
        lib.symbols.len(),
        match lib.kind {
            LibKind::Runtime => "runtime",
            LibKind::Driver => "driver",
        },
        if lib.missing.is_empty() {
            String::new()
        } else {
            format!("; not exported: {}", lib.missing.join(", "))
        }
    )
}
