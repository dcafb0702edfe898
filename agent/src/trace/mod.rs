//! `ingero trace`: load the probes, follow the processes, store the events.
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

pub mod clock;
pub mod decode;
pub mod discovery;
pub mod libraries;
pub mod live;
pub mod pipeline;
pub mod probes;
pub mod procs;
pub mod symbolize;
pub mod tracefs;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::{catalog::host_op, config::Config, event::MemCounters};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    host::{self, SnapshotSampler},
    store::{
        self, SessionInfo, StoreError,
        writer::{DropCount, StoreWriter, WriterConfig},
    },
};
use discovery::Discovery;
use libraries::{LibKind, Library, LibraryError};
use pipeline::{JsonOut, Pipeline};
use probes::{Families, Probes};

/// How often the ring buffer is drained when the kernel does not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Records read per drain before the batch is handed over.
const MAX_RECORDS_PER_DRAIN: usize = 1 << 16;
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
    #[error(transparent)]
    Api(#[from] crate::api::listen::ListenError),
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
    /// Serve the agent API while tracing.
    pub api: Option<(crate::api::listen::ListenOptions, crate::api::ApiSettings)>,
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
fn preflight(opts: &TraceOptions) -> Result<Vec<Library>, TraceError> {
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

/// Why the main loop ended.
enum Stop {
    Signal(&'static str),
    Duration,
    JsonClosed,
    WriterFailed,
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Self::Signal(s) => format!("stopped by {s}"),
            Self::Duration => "duration reached".into(),
            Self::JsonClosed => "--json output closed".into(),
            Self::WriterFailed => "database writer failed".into(),
        }
    }
}

/// Per-process page-allocation counters seen last, to emit deltas.
#[derive(Debug, Default)]
struct MemSummaries {
    last: HashMap<u32, MemCounters>,
    page_size: u64,
}

impl MemSummaries {
    fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            last: HashMap::new(),
            page_size: u64::try_from(page).unwrap_or(4096),
        }
    }

    /// Adds one summary row per process that allocated since the last call.
    fn collect(&mut self, probes: &mut Probes, pipeline: &mut Pipeline, now: i64, interval: Duration) {
        for (pid, total) in probes.mem_counters() {
            let prev = self.last.insert(pid, total).unwrap_or_default();
            let allocs = total.allocs.saturating_sub(prev.allocs);
            let pages = total.pages.saturating_sub(prev.pages);
            if allocs > 0 {
                let row = pipeline.host_row(
                    pid,
                    host_op::MM_PAGE_ALLOC_SUMMARY,
                    now,
                    interval.as_nanos() as u64,
                    allocs,
                    pages * self.page_size,
                );
                pipeline.push_row(row);
            }
            if !procs::exists(pid) {
                probes.forget_mem_counters(pid);
                self.last.remove(&pid);
            }
        }
    }
}

fn drops_of(probes: &Probes) -> (Vec<DropCount>, u64) {
    let drops: Vec<DropCount> = probes
        .drops()
        .into_iter()
        .map(|d| DropCount {
            source: d.source,
            op: d.op,
            reason: d.reason,
            count: d.count,
        })
        .collect();
    let total = drops.iter().map(|d| d.count).sum();
    (drops, total)
}

fn describe_library(lib: &Library) -> String {
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

/// Drains the ring buffer into the pipeline. Returns `false` if `--json`
/// output closed.
fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, decode_errors: &mut u64) -> bool {
    let mut ok = true;
    for _ in 0..MAX_RECORDS_PER_DRAIN {
        let Some(item) = ring.next() else { break };
        match decode::decode(&item) {
            Ok(record) => ok &= pipeline.push(record),
            Err(e) => {
                if *decode_errors == 0 {
                    log::warn!("{e}");
                }
                *decode_errors += 1;
            }
        }
    }
    ok
}

/// Runs a trace until stopped.
pub async fn run(opts: TraceOptions) -> Result<TraceOutcome, TraceError> {
    let explicit_libs = preflight(&opts)?;
    let tracefs_root = tracefs::ensure_mounted()?;
    let mut config = Config::default();
    tracefs::read_offsets(&tracefs_root, &mut config)?;
    let every_cuda_process = opts.pids.is_empty();
    config.auto_enrol = u8::from(every_cuda_process);
    config.capture_stack = u8::from(opts.stack);
    config.wakeup_bytes = opts.ringbuf_bytes / 4;

    // Fail on an unwritable database before attaching anything.
    let conn = store::open_for_writing(&opts.db)?;

    let ring_bytes =
        u32::try_from(opts.ringbuf_bytes).map_err(|_| TraceError::RingSize(opts.ringbuf_bytes))?;
    let mut probes = Probes::load(&config, ring_bytes)?;
    probes.attach_tracepoints(opts.families)?;
    let json = opts
        .json
        .then(|| JsonOut(Box::new(std::io::BufWriter::new(std::io::stdout()))));
    let mut pipeline = Pipeline::new(opts.node.clone(), opts.stack, json);
    for &pid in &opts.pids {
        probes.trace_pid(pid)?;
        pipeline.learn_process(pid);
    }
    let mut discovery = Discovery::new(every_cuda_process);
    let mut messages = Vec::new();
    for lib in explicit_libs {
        if let Some(lib) = discovery.attach(&mut probes, lib)? {
            messages.push(describe_library(&lib));
        }
    }
    if every_cuda_process {
        // With --pid, only what the traced processes map is probed (each
        // probe costs time to remove when tracing stops).
        for lib in discovery.probe_installed(&mut probes) {
            messages.push(describe_library(&lib));
        }
    }
    let report = discovery.scan(&mut probes)?;
    messages.extend(report.new_libraries.iter().map(describe_library));
    for &pid in &report.new_processes {
        pipeline.learn_process(pid);
    }

    let facts = host::facts();
    let started = Instant::now();
    let libraries_json = serde_json::to_string(&probes.attached_libraries()).unwrap_or_default();
    let session_id = store::create_session(
        &conn,
        &SessionInfo {
            node: opts.node.clone(),
            started_at: clock::unix_ns(),
            hostname: facts.hostname.clone(),
            kernel: facts.kernel.clone(),
            os_release: facts.os_release.clone(),
            cpu_model: facts.cpu_model.clone(),
            cpu_cores: facts.cpu_cores,
            mem_total_mb: facts.mem_total_mb,
            pid_filter: opts.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            flags: opts.flags_json.clone(),
            libraries: libraries_json.clone(),
        },
    )?;
    let writer = StoreWriter::spawn(
        conn,
        WriterConfig {
            node: opts.node.clone(),
            session_id,
            max_db_size: opts.max_db_size,
        },
    );

    let live_stats = std::sync::Arc::new(crate::api::LiveStats::default());
    live_stats
        .session_id
        .store(session_id, std::sync::atomic::Ordering::Relaxed);
    let api = match &opts.api {
        Some((listen, settings)) => {
            let state = crate::api::ApiState::new(settings.clone(), Some(std::sync::Arc::clone(&live_stats)));
            Some(crate::api::listen::start(listen, state).await?)
        }
        None => None,
    };
    let ring = probes.take_ring()?;
    // SAFETY: the ring buffer owns its map fd for its whole life and always
    // reports that same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| TraceError::Io(format!("cannot poll the ring buffer: {e}")))?;

    for m in &messages {
        eprintln!("ingero: {m}");
    }
    if probes.attached_libraries().is_empty() {
        eprintln!(
            "ingero: no CUDA library found yet; {} will be probed as soon as they load one",
            if every_cuda_process {
                "processes"
            } else {
                "the traced processes"
            },
        );
    }
    eprintln!(
        "ingero: tracing {} on node {} into {} (session {session_id}); Ctrl-C to stop",
        if every_cuda_process {
            "every CUDA process".to_owned()
        } else {
            format!(
                "pid {}",
                opts.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        opts.node,
        opts.db.display()
    );

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| TraceError::Io(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| TraceError::Io(e.to_string()))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| TraceError::Io(e.to_string()))?;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut second_tick = tokio::time::interval(Duration::from_secs(1));
    second_tick.tick().await;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sampler = SnapshotSampler::default();
    let mut mem = MemSummaries::new();
    let mut decode_errors = 0u64;
    let mut last_libraries = libraries_json;
    let mut last_drop_total = 0u64;
    let mut last_second = Instant::now();

    let stop = loop {
        let mut json_ok = true;
        tokio::select! {
            guard = ring.readable_mut() => {
                if let Ok(mut guard) = guard {
                    json_ok = drain(guard.get_inner_mut(), &mut pipeline, &mut decode_errors);
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                json_ok = drain(ring.get_mut(), &mut pipeline, &mut decode_errors);
                let (batch, flushed) = pipeline.take_batch();
                json_ok &= flushed;
                if writer.send(batch).await.is_err() {
                    break Stop::WriterFailed;
                }
            }
            _ = second_tick.tick() => {
                let now = clock::unix_ns();
                let interval = last_second.elapsed();
                last_second = Instant::now();
                mem.collect(&mut probes, &mut pipeline, now, interval);
                let (drops, drop_total) = drops_of(&probes);
                if let Ok(mut live_drops) = live_stats.drops.lock() {
                    live_drops.clone_from(&drops);
                }
                if drop_total != last_drop_total {
                    last_drop_total = drop_total;
                    pipeline.session_update().events_dropped = Some(drop_total);
                    pipeline.batch_mut().drops.extend(drops);
                }
                pipeline.batch_mut().snapshots.push(sampler.sample(now));
                match discovery.scan(&mut probes) {
                    Ok(report) => {
                        for lib in &report.new_libraries {
                            eprintln!("ingero: {}", describe_library(lib));
                        }
                        for &pid in &report.new_processes {
                            pipeline.learn_process(pid);
                        }
                    }
                    Err(e) => log::warn!("process scan failed: {e}"),
                }
                let libs = serde_json::to_string(&probes.attached_libraries()).unwrap_or_default();
                if libs != last_libraries {
                    pipeline.session_update().libraries = Some(libs.clone());
                    last_libraries = libs;
                }
                let counts = pipeline.take_counts();
                publish(&live_stats, counts, &writer);
                if opts.live {
                    eprintln!(
                        "{}",
                        live::summary_line(
                            started.elapsed(),
                            counts,
                            writer.stats.committed.load(std::sync::atomic::Ordering::Relaxed),
                            drop_total,
                            probes.traced_pids().len(),
                        )
                    );
                }
                if writer.is_finished() {
                    break Stop::WriterFailed;
                }
            }
            _ = sigint.recv() => break Stop::Signal("Ctrl-C"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = sighup.recv() => break Stop::Signal("SIGHUP"),
            () = sleep_until(deadline) => break Stop::Duration,
        }
        if !json_ok {
            break Stop::JsonClosed;
        }
    };

    // Detach, still draining meanwhile; then take what the kernel wrote last.
    mem.collect(
        &mut probes,
        &mut pipeline,
        clock::unix_ns(),
        last_second.elapsed(),
    );
    let links = probes.link_count();
    if opts.live && links > 8 {
        eprintln!(
            "ingero: {}; detaching {links} probes (the kernel removes them one by one)",
            stop.describe()
        );
    }
    let detaching = std::thread::spawn(move || {
        probes.detach();
        probes
    });
    while !detaching.is_finished() {
        drain(ring.get_mut(), &mut pipeline, &mut decode_errors);
        let (batch, _) = pipeline.take_batch();
        let _ = writer.send(batch).await;
        tokio::time::sleep(DRAIN_EVERY).await;
    }
    let probes = detaching
        .join()
        .map_err(|_| TraceError::Io("detaching the probes failed".into()))?;
    let mut ring = ring.into_inner();
    while ring.next().is_some_and(|item| {
        if let Ok(record) = decode::decode(&item) {
            pipeline.push(record);
        }
        true
    }) {}
    let (drops, dropped) = drops_of(&probes);
    pipeline.batch_mut().drops.extend(drops);
    let update = pipeline.session_update();
    update.stopped_at = Some(clock::unix_ns());
    update.events_dropped = Some(dropped);
    let (batch, _) = pipeline.take_batch();
    let _ = writer.send(batch).await;
    if let Some(api) = api {
        api.stop().await;
    }
    let stats = std::sync::Arc::clone(&writer.stats);
    writer.finish()?;
    let events = stats.committed.load(std::sync::atomic::Ordering::Relaxed);
    if decode_errors > 0 {
        log::warn!("{decode_errors} ring-buffer records could not be decoded");
    }
    Ok(TraceOutcome {
        session_id,
        db: opts.db.clone(),
        node: opts.node.clone(),
        events,
        dropped,
        seconds: started.elapsed().as_secs_f64(),
        stop_reason: stop.describe(),
    })
}

/// Hands the last second's figures to the API's live counters.
fn publish(live: &crate::api::LiveStats, counts: pipeline::SourceCounts, writer: &StoreWriter) {
    use std::sync::atomic::Ordering::Relaxed;
    for (i, n) in [counts.cuda, counts.driver, counts.host, counts.io]
        .into_iter()
        .enumerate()
    {
        live.events[i].fetch_add(n, Relaxed);
    }
    live.committed
        .store(writer.stats.committed.load(Relaxed), Relaxed);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
