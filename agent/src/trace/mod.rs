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
//! commits it: every event read from the kernel is stored. Calls the kernel
//! could not deliver while the probes were being removed are counted apart
//! (`drops.reason` "stopping"), not as drops while tracing, and are no
//! reason for a larger ring buffer.

pub mod btf;
mod comms;
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

/// Why tracing could not start or ended in failure; `CliError::exit_code`
/// turns each into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not running as root (effective uid 0), which loading eBPF needs: exit 77.
    #[error("ingero trace must run as root, because it loads eBPF programs: run it with sudo")]
    NotRoot,
    /// The kernel has no BTF at the given path (needs
    /// `CONFIG_DEBUG_INFO_BTF=y`): exit 69.
    #[error(
        "this kernel exposes no BTF ({0} is missing): ingero needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or later)"
    )]
    NoBtf(PathBuf),
    /// tracefs cannot be mounted, or a tracepoint or one of its fields is
    /// missing or has an unexpected size on this kernel: exit 69.
    #[error("{0}")]
    Tracefs(String),
    /// A `--pid` that is 0 or names no running process: exit 2.
    #[error("no process with pid {0}; check the --pid value")]
    NoSuchPid(u32),
    /// A ring buffer size (bytes) that is not a power of two between 4 KiB
    /// and 1 GiB: exit 2.
    #[error("--ringbuf-size {0} is not valid: use a power of two of at least 4k, e.g. 8m")]
    RingSize(u64),
    /// A library given with `--cuda-lib`/`--cudart-lib` cannot be probed: exit 2.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// The kernel refused the eBPF object or one of its maps or programs
    /// (verifier, missing map), or a pid could not be added: exit 69.
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    /// A tracepoint or uprobe cannot be attached: exit 69.
    #[error("cannot attach to {what}: {message}")]
    Attach {
        /// The probe point: `tracepoint <category>/<name>` or `<symbol> in <library>`.
        what: String,
        /// The kernel's or loader's error.
        message: String,
    },
    /// The database cannot be opened or written: exit 73.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the ring buffer or detaching the probes failed: exit 1.
    #[error("{0}")]
    Io(String),
}

/// Everything `ingero trace` was asked to do, after configuration layering.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Node name recorded with every event (already validated).
    pub node: String,
    /// Processes to trace, with their descendants; empty: every process
    /// that maps a CUDA library.
    pub pids: Vec<u32>,
    /// Stop after this long; `None`: until a signal.
    pub duration: Option<Duration>,
    /// The SQLite database to write.
    pub db: PathBuf,
    /// Size cap of the database in bytes (oldest events pruned past it);
    /// `None`: no cap.
    pub max_db_size: Option<u64>,
    /// Capture and symbolize the user stack of every CUDA call.
    pub stack: bool,
    /// Driver libraries (libcuda.so*) to probe besides the ones discovered.
    pub cuda_libs: Vec<PathBuf>,
    /// Runtime libraries (libcudart.so*) to probe besides the ones discovered.
    pub cudart_libs: Vec<PathBuf>,
    /// NCCL libraries (libnccl.so*) to probe besides the ones discovered.
    pub nccl_libs: Vec<PathBuf>,
    /// Also write every event to stdout as one JSON object per line.
    pub json: bool,
    /// Ring buffer size in bytes: a power of two from 4 KiB to 1 GiB.
    pub ringbuf_bytes: u64,
    /// Which host event families to record.
    pub families: Families,
    /// The command line as JSON, recorded in `sessions.flags`.
    pub flags_json: String,
    /// Print the per-second summary line.
    pub live: bool,
}

/// What a finished trace run recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceOutcome {
    /// Id of the run's row in the `sessions` table.
    pub session_id: i64,
    /// The database written.
    pub db: PathBuf,
    /// Node name recorded with the events.
    pub node: String,
    /// Events committed to the database.
    pub events: u64,
    /// Events the kernel could not deliver while they were being read
    /// (ring buffer or map full): a larger ring buffer helps.
    pub dropped: u64,
    /// Calls made while the probes were being removed at the stop, when
    /// the ring buffer is no longer read (`drops.reason` "stopping"): not a
    /// matter of the ring buffer's size.
    pub dropped_stopping: u64,
    /// Events not stored because the disk was full and pruning could not
    /// make room.
    pub disk_full_dropped: u64,
    /// Oldest events deleted to keep the database under `--max-db`.
    pub pruned: u64,
    /// Wall-clock length of the run, in seconds.
    pub seconds: f64,
    /// Why tracing stopped, as a phrase (e.g. "stopped by Ctrl-C", "duration reached").
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
        (LibKind::Nccl, &opts.nccl_libs),
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
        lib.kind.name(),
        if lib.missing.is_empty() {
            String::new()
        } else {
            format!("; not exported: {}", lib.missing.join(", "))
        }
    )
}
