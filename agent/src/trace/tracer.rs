//! The tracer's life in three steps: [`Tracer::start`] (checks, probes,
//! session, writer), [`Tracer::run`] (the drain loop and its per-second
//! tick, until a signal, the duration or a failure) and
//! [`Tracer::shutdown`] (detach while still draining, take the last
//! records, close the session).
//!
//! Invariant: every record read from the ring buffer reaches the writer,
//! including those the kernel writes while the probes are being removed.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use agent_common::config::Config;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

use super::{
    DRAIN_EVERY, MAX_RECORDS_PER_DRAIN, TraceError, TraceOptions, TraceOutcome, decode, describe_library,
    discovery::Discovery,
    live::{self, LiveStats},
    memsum::MemSummaries,
    pipeline::{JsonOut, Pipeline},
    preflight,
    probes::Probes,
    tracefs,
};
use crate::{
    clock,
    host::{self, SnapshotSampler},
    store::{
        self, SessionInfo,
        writer::{DropCount, StoreWriter, WriterConfig},
    },
};

/// Why the drain loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C, SIGTERM or SIGHUP.
    Signal(&'static str),
    /// `--duration` reached.
    Duration,
    /// The `--json` reader went away.
    JsonClosed,
    /// The database writer stopped (its error is returned by shutdown).
    WriterFailed,
}

impl Stop {
    fn describe(self) -> String {
        match self {
            Self::Signal(s) => format!("stopped by {s}"),
            Self::Duration => "duration reached".into(),
            Self::JsonClosed => "--json output closed".into(),
            Self::WriterFailed => "database writer failed".into(),
        }
    }
}

/// The signals that stop a trace, registered at start so none is missed.
#[derive(Debug)]
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

/// A running trace.
pub struct Tracer {
    opts: TraceOptions,
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    pipeline: Pipeline,
    writer: StoreWriter,
    /// Held until the writer has finished (released by the kernel on any exit).
    lock: store::WriteLock,
    discovery: Discovery,
    signals: Signals,
    live: Arc<LiveStats>,
    session_id: i64,
    started: Instant,
    sampler: SnapshotSampler,
    mem: MemSummaries,
    decode_errors: u64,
    last_libraries: String,
    last_drop_total: u64,
    last_second: Instant,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("node", &self.opts.node)
            .field("db", &self.opts.db)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Checks everything that can fail, loads and attaches the probes,
    /// opens the session and starts the writer. Must run inside the
    /// runtime (the ring buffer is registered with it).
    pub fn start(opts: TraceOptions) -> Result<Self, TraceError> {
        let explicit_libs = preflight(&opts)?;
        let tracefs_root = tracefs::ensure_mounted()?;
        let mut config = Config::default();
        tracefs::read_offsets(&tracefs_root, &mut config)?;
        // Offsets for the BTF-typed sched_switch program; zero (the
        // classic tracepoint) without BTF.
        if opts.families.sched {
            config.task = super::btf::KernelBtf::load(std::path::Path::new(super::btf::VMLINUX))
                .as_ref()
                .and_then(super::btf::task_fields)
                .unwrap_or_default();
        }
        let every_cuda_process = opts.pids.is_empty();
        config.auto_enrol = u8::from(every_cuda_process);
        config.capture_stack = u8::from(opts.stack);
        config.wakeup_bytes = opts.ringbuf_bytes / 4;

        // Fail on an unwritable, foreign or busy database before attaching
        // anything. The lock comes first: a second tracer changes nothing.
        let lock_file = store::lock_path(&opts.db);
        let lock_existed = lock_file.exists();
        let lock = store::lock_for_writing(&opts.db, clock::unix_ns())?;
        let conn = store::open_for_writing(&opts.db).inspect_err(|_| {
            if !lock_existed {
                // Leave nothing beside a database we refused or could not open.
                let _ = std::fs::remove_file(&lock_file);
            }
        })?;

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
        let live = Arc::new(LiveStats::default());
        live.session_id.store(session_id, Relaxed);
        pipeline.publish_metrics_to(Arc::clone(&live.metrics));
        let ring = probes.take_ring()?;
        // SAFETY: the ring buffer owns its map fd for its whole life and always
        // reports that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| TraceError::Io(format!("cannot poll the ring buffer: {e}")))?;
        let io = |e: std::io::Error| TraceError::Io(e.to_string());
        let signals = Signals {
            int: signal(SignalKind::interrupt()).map_err(io)?,
            term: signal(SignalKind::terminate()).map_err(io)?,
            hup: signal(SignalKind::hangup()).map_err(io)?,
        };

        for m in &messages {
            crate::say!("ingero: {m}");
        }
        if probes.attached_libraries().is_empty() {
            crate::say!(
                "ingero: no CUDA library found yet; {} will be probed as soon as they load one",
                if every_cuda_process {
                    "processes"
                } else {
                    "the traced processes"
                },
            );
        }
        crate::say!(
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
        Ok(Self {
            opts,
            probes,
            ring,
            pipeline,
            writer,
            lock,
            discovery,
            signals,
            live,
            session_id,
            started: Instant::now(),
            sampler: SnapshotSampler::default(),
            mem: MemSummaries::new(),
            decode_errors: 0,
            last_libraries: libraries_json,
            last_drop_total: 0,
            last_second: Instant::now(),
        })
    }

    /// The live counters, updated once a second.
    #[must_use]
    pub fn live(&self) -> Arc<LiveStats> {
        Arc::clone(&self.live)
    }

    /// The session being recorded.
    #[must_use]
    pub fn session_id(&self) -> i64 {
        self.session_id
    }

    /// Drains the ring buffer until a signal, the duration, a closed
    /// `--json` pipe or a failed writer.
    pub async fn run(&mut self) -> Stop {
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        let mut second_tick = tokio::time::interval(Duration::from_secs(1));
        second_tick.tick().await;
        let deadline = self.opts.duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            let mut json_ok = true;
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        json_ok = drain(guard.get_inner_mut(), &mut self.pipeline, &mut self.decode_errors);
                        guard.clear_ready();
                    }
                }
                _ = drain_tick.tick() => {
                    json_ok = drain(self.ring.get_mut(), &mut self.pipeline, &mut self.decode_errors);
                    let (batch, flushed) = self.pipeline.take_batch();
                    json_ok &= flushed;
                    if self.writer.send(batch).await.is_err() {
                        return Stop::WriterFailed;
                    }
                }
                _ = second_tick.tick() => {
                    if !self.each_second() {
                        return Stop::WriterFailed;
                    }
                }
                _ = self.signals.int.recv() => return Stop::Signal("Ctrl-C"),
                _ = self.signals.term.recv() => return Stop::Signal("SIGTERM"),
                _ = self.signals.hup.recv() => return Stop::Signal("SIGHUP"),
                () = sleep_until(deadline) => return Stop::Duration,
            }
            if !json_ok {
                return Stop::JsonClosed;
            }
        }
    }

    /// The per-second work: memory summaries, drop counters, a system
    /// snapshot, new processes and libraries, the live counters and the
    /// summary line. `false` when the writer has stopped.
    fn each_second(&mut self) -> bool {
        let now = clock::unix_ns();
        let interval = self.last_second.elapsed();
        self.last_second = Instant::now();
        self.mem
            .collect(&mut self.probes, &mut self.pipeline, now, interval);
        let (drops, drop_total) = drops_of(&self.probes);
        if let Ok(mut live_drops) = self.live.drops.lock() {
            live_drops.clone_from(&drops);
        }
        if drop_total != self.last_drop_total {
            self.last_drop_total = drop_total;
            self.pipeline.session_update().events_dropped = Some(drop_total);
            self.pipeline.batch_mut().drops.extend(drops);
        }
        self.pipeline.batch_mut().snapshots.push(self.sampler.sample(now));
        match self.discovery.scan(&mut self.probes) {
            Ok(report) => {
                for lib in &report.new_libraries {
                    crate::say!("ingero: {}", describe_library(lib));
                }
                for &pid in &report.new_processes {
                    self.pipeline.learn_process(pid);
                }
            }
            Err(e) => log::warn!("process scan failed: {e}"),
        }
        let libs = serde_json::to_string(&self.probes.attached_libraries()).unwrap_or_default();
        if libs != self.last_libraries {
            self.pipeline.session_update().libraries = Some(libs.clone());
            self.last_libraries = libs;
        }
        let counts = self.pipeline.take_counts();
        let committed = self.writer.stats.committed.load(Relaxed);
        self.live.publish(counts, committed);
        if self.opts.live {
            crate::say!(
                "{}",
                live::summary_line(
                    self.started.elapsed(),
                    counts,
                    committed,
                    drop_total,
                    self.probes.traced_pids().len(),
                )
            );
        }
        !self.writer.is_finished()
    }

    /// Detaches the probes (still draining meanwhile), takes what the
    /// kernel wrote last, closes the session and waits for the writer.
    pub async fn shutdown(mut self, stop: Stop) -> Result<TraceOutcome, TraceError> {
        self.mem.collect(
            &mut self.probes,
            &mut self.pipeline,
            clock::unix_ns(),
            self.last_second.elapsed(),
        );
        let links = self.probes.link_count();
        if self.opts.live && links > 8 {
            crate::say!(
                "ingero: {}; detaching {links} probes (the kernel removes them one by one)",
                stop.describe()
            );
        }
        // What the kernel dropped while we were reading; anything counted
        // after this is a call made while the probes were being removed.
        let (while_tracing, dropped) = drops_of(&self.probes);
        let mut probes = self.probes;
        let detaching = std::thread::spawn(move || {
            probes.detach();
            probes
        });
        let (mut pipeline, writer) = (self.pipeline, self.writer);
        let mut decode_errors = self.decode_errors;
        while !detaching.is_finished() {
            drain(self.ring.get_mut(), &mut pipeline, &mut decode_errors);
            let (batch, _) = pipeline.take_batch();
            let _ = writer.send(batch).await;
            // Faster than while tracing: the ring must not fill meanwhile.
            tokio::time::sleep(DRAIN_EVERY / 10).await;
        }
        let probes = detaching
            .join()
            .map_err(|_| TraceError::Io("detaching the probes failed".into()))?;
        let mut ring = self.ring.into_inner();
        while ring.next().is_some_and(|item| {
            if let Ok(record) = decode::decode(&item) {
                pipeline.push(record);
            }
            true
        }) {}
        let (at_end, _) = drops_of(&probes);
        let stopping = dropped_while_stopping(&while_tracing, &at_end);
        let dropped_stopping = stopping.iter().map(|d| d.count).sum();
        pipeline.batch_mut().drops.extend(while_tracing);
        pipeline.batch_mut().drops.extend(stopping);
        let update = pipeline.session_update();
        update.stopped_at = Some(clock::unix_ns());
        update.events_dropped = Some(dropped);
        let (batch, _) = pipeline.take_batch();
        let _ = writer.send(batch).await;
        let stats = Arc::clone(&writer.stats);
        writer.finish()?;
        drop(self.lock);
        let events = stats.committed.load(Relaxed);
        let disk_full_dropped = stats.disk_full_dropped.load(Relaxed);
        if decode_errors > 0 {
            log::warn!("{decode_errors} ring-buffer records could not be decoded");
        }
        Ok(TraceOutcome {
            session_id: self.session_id,
            db: self.opts.db.clone(),
            node: self.opts.node.clone(),
            events,
            dropped,
            dropped_stopping,
            disk_full_dropped,
            pruned: stats.pruned.load(Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
            stop_reason: stop.describe(),
        })
    }
}

/// The kernel's drops counted after `before` was read, per probe, under
/// the reason "stopping": calls made while the probes were being removed,
/// when nothing reads the ring buffer any more.
fn dropped_while_stopping(before: &[DropCount], after: &[DropCount]) -> Vec<DropCount> {
    after
        .iter()
        .filter_map(|a| {
            let earlier = before
                .iter()
                .find(|b| (b.source, b.op, b.reason) == (a.source, a.op, a.reason))
                .map_or(0, |b| b.count);
            let count = a.count.saturating_sub(earlier);
            (count > 0).then_some(DropCount {
                source: a.source,
                op: a.op,
                reason: STOPPING,
                count,
            })
        })
        .fold(Vec::new(), |mut out: Vec<DropCount>, d| {
            match out.iter_mut().find(|o| (o.source, o.op) == (d.source, d.op)) {
                Some(o) => o.count += d.count,
                None => out.push(d),
            }
            out
        })
}

/// `drops.reason` of the calls lost while the probes were being removed.
const STOPPING: &str = "stopping";

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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
