//! `ingero trace`: configuration layering for the tracer, the async
//! runtime it runs on, the API beside it (`--listen`), readiness, and the
//! closing summary. The tracer and the API do not know each other: this
//! command starts both and hands the tracer's live counters to the API.

use std::{process::ExitCode, sync::Arc};

use crate::{
    api::{self, ApiSettings, ApiState, LiveView, listen::ListenOptions, metrics::EventCounts},
    archive::{Archiver, ArchiverOptions, ArchiverReport},
    cli::TraceArgs,
    config::{self, FileConfig, defaults},
    error::CliError,
    trace::{LiveStats, TraceOptions, Tracer, live::group_digits, probes::Families},
};

fn trace_options(args: &TraceArgs, file: &FileConfig) -> Result<TraceOptions, CliError> {
    let t = &file.trace;
    let flags = serde_json::json!({
        "argv": std::env::args().skip(1).collect::<Vec<_>>(),
    });
    let node = config::resolve_node(args.node.as_deref(), file)?;
    let db = config::resolve_db(args.db.as_deref(), file)?;
    Ok(TraceOptions {
        node,
        pids: args.pids.clone(),
        duration: args.duration.map(|d| d.0),
        db,
        max_db_size: Some(
            args.max_db
                .or(file.agent.max_db_size)
                .unwrap_or(defaults::MAX_DB)
                .0,
        ),
        stack: args.stack || t.stack.unwrap_or(defaults::STACK),
        cuda_libs: args
            .cuda_lib
            .iter()
            .chain(&t.cuda_lib)
            .map(|p| config::expand_home(p))
            .collect(),
        cudart_libs: args
            .cudart_lib
            .iter()
            .chain(&t.cudart_lib)
            .map(|p| config::expand_home(p))
            .collect(),
        nccl_libs: args
            .nccl_lib
            .iter()
            .chain(&t.nccl_lib)
            .map(|p| config::expand_home(p))
            .collect(),
        json: args.json,
        ringbuf_bytes: args
            .ringbuf_size
            .or(t.ringbuf_size)
            .unwrap_or(defaults::RINGBUF)
            .0,
        families: Families {
            sched: !args.no_sched && t.sched.unwrap_or(defaults::FAMILY_ENABLED),
            io: !args.no_io && t.io.unwrap_or(defaults::FAMILY_ENABLED),
            memory: !args.no_memory && t.memory.unwrap_or(defaults::FAMILY_ENABLED),
        },
        flags_json: flags.to_string(),
        live: !args.quiet,
    })
}

/// `--archive DIR` (or `archive.dir`) with its interval; `None`: off.
fn archive_options(
    args: &TraceArgs,
    file: &FileConfig,
    opts: &TraceOptions,
) -> Result<Option<ArchiverOptions>, CliError> {
    let Some(dir) = args.archive.as_deref().or(file.archive.dir.as_deref()) else {
        return Ok(None);
    };
    let interval = args
        .archive_interval
        .or(file.archive.interval)
        .map_or(defaults::ARCHIVE_INTERVAL, |d| d.0);
    if interval < std::time::Duration::from_secs(1) {
        return Err(CliError::BadInput(
            "--archive-interval must be at least 1s (each pass rewrites the small tables)".into(),
        ));
    }
    Ok(Some(ArchiverOptions {
        db: opts.db.clone(),
        dir: config::expand_home(dir),
        interval,
        node: opts.node.clone(),
    }))
}

/// The archive's closing lines.
fn report_archive(a: &ArchiverReport) {
    crate::say!(
        "ingero: archived {} events and {} NCCL calls to {} ({} file(s) written, {:.1} MiB)",
        group_digits(a.events),
        group_digits(a.collectives),
        a.dir.display(),
        group_digits(a.files),
        a.bytes as f64 / 1_048_576.0,
    );
    if let Some(e) = &a.last_error {
        crate::say!(
            "ingero: warning: the last archive pass failed ({e}); the events stay in the database and the next \
             `ingero trace --archive` on it archives them"
        );
    }
    if a.pruned_before_archived > 0 {
        crate::say!(
            "ingero: warning: {} events were pruned (--max-db) before they could be archived; \
             archive more often (--archive-interval) or raise --max-db",
            group_digits(a.pruned_before_archived)
        );
    }
    if a.skipped > 0 {
        crate::say!(
            "ingero: warning: {} row(s) were not archived because a value does not fit its column",
            group_digits(a.skipped)
        );
    }
}

/// Starts the OTLP export thread on the tracer's live counters and, for
/// chains, the analysis thread on its database.
fn start_otlp(
    o: &crate::otlp::OtlpOptions,
    tracer: &Tracer,
    opts: &TraceOptions,
) -> Result<(crate::otlp::Sender, Option<crate::otlp::chains::Watcher>), CliError> {
    let live: Arc<dyn LiveView> = tracer.live();
    let sender = crate::otlp::Sender::start(o, Some(live)).map_err(CliError::Failed)?;
    let watcher = sender
        .queue()
        .map(|q| crate::otlp::chains::Watcher::start(opts.db.clone(), o.interval, q))
        .transpose()
        .map_err(CliError::Failed)?;
    if opts.live {
        crate::say!(
            "ingero: pushing OTLP metrics and new causal chains to {} every {}",
            o.endpoint,
            crate::units::HumanDuration(o.interval)
        );
    }
    Ok((sender, watcher))
}

/// The tracer's counters as the API shows them.
impl LiveView for LiveStats {
    fn info(&self) -> ingero_api::LiveInfo {
        use std::sync::atomic::Ordering::Relaxed;
        ingero_api::LiveInfo {
            tracing: true,
            session_id: Some(self.session_id.load(Relaxed)),
            events_committed: Some(self.committed.load(Relaxed)),
            events_dropped: Some(
                self.drops
                    .lock()
                    .map_or(0, |d| d.iter().map(|x| x.count).sum::<u64>()),
            ),
        }
    }

    fn counts(&self) -> EventCounts {
        use std::sync::atomic::Ordering::Relaxed;
        EventCounts {
            by_source: std::array::from_fn(|i| self.events[i].load(Relaxed)),
            drops: self
                .drops
                .lock()
                .map(|d| {
                    d.iter()
                        .map(|x| (x.source, x.op, x.reason.to_owned(), x.count))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn registry(&self) -> Arc<crate::metrics::Registry> {
        self.metrics.latest()
    }
}

/// Runs `ingero trace`: records events into the database until Ctrl-C or
/// `--duration`, with the API beside it when a listen address is
/// configured, then prints a summary. Exit 0; 77 without privileges; 69 when
/// the kernel lacks BTF, tracefs or a probe point; 2 for a bad pid, ring
/// size or library, or a database that is not ingero's; 73 when the
/// database cannot be written or another tracer is writing it.
pub fn run(args: &TraceArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    let opts = trace_options(args, file)?;
    let archive = archive_options(args, file, &opts)?;
    if let Some(a) = &archive {
        crate::archive::live::prepare_dir(&a.dir)?;
    }
    let api: Option<(ListenOptions, ApiSettings)> =
        super::api_options(&args.api, file, &opts.node, &opts.db, Some(defaults::LIVE_WINDOW))?;
    let otlp = crate::otlp::options(&args.otlp, args.otlp_interval.map(|d| d.0), file, &opts.node)?;
    let runtime = crate::runtime()?;
    let outcome = runtime.block_on(async {
        let mut tracer = Tracer::start(opts.clone())?;
        // After the tracer: the registry is published and the database exists.
        let pusher = otlp.as_ref().map(|o| start_otlp(o, &tracer, &opts)).transpose()?;
        // After the tracer: the database exists and is ours alone.
        let archiver = archive.as_ref().map(Archiver::start).transpose()?;
        if let Some(a) = &archiver {
            crate::say!(
                "ingero: archiving to {} every {}",
                a.dir().display(),
                crate::units::HumanDuration(a.interval())
            );
        }
        let running = match &api {
            Some((listen, settings)) => {
                let live: Arc<dyn LiveView> = tracer.live();
                let state = ApiState::new(settings.clone(), Some(live));
                Some(api::listen::start(listen, state).await?)
            }
            None => None,
        };
        if let Some(path) = &args.ready_file {
            let served = running.as_ref().zip(api.as_ref().map(|(listen, _)| listen));
            super::announce(path, &opts.node, &opts.db, Some(tracer.session_id()), served)?;
        }
        let stop = tracer.run().await;
        let outcome = tracer.shutdown(stop).await;
        if let Some(running) = running {
            running.stop().await;
        }
        // The writer has committed everything: the last chain pass and
        // metrics snapshot see the whole recording.
        let pushed = pusher.map(|(sender, watcher)| {
            tokio::task::block_in_place(|| {
                if let Some(w) = watcher {
                    w.finish();
                }
                sender.finish()
            })
        });
        // The writer has committed everything: the archive takes the tail.
        let archived = archiver.map(|a| {
            if opts.live {
                crate::say!("ingero: archiving the last events");
            }
            tokio::task::block_in_place(|| a.finish())
        });
        Ok::<_, CliError>((outcome?, archived, pushed))
    })?;
    let (outcome, archived, pushed) = outcome;
    crate::say!(
        "ingero: {}: {} events stored in {} (node {}, session {}) over {:.1}s, {} dropped",
        outcome.stop_reason,
        group_digits(outcome.events),
        outcome.db.display(),
        outcome.node,
        outcome.session_id,
        outcome.seconds,
        group_digits(outcome.dropped),
    );
    if outcome.dropped > 0 {
        crate::say!(
            "ingero: warning: {} events could not be delivered while tracing (counted per probe in the drops table); \
             a larger --ringbuf-size helps",
            group_digits(outcome.dropped)
        );
    }
    if outcome.dropped_stopping > 0 {
        crate::say!(
            "ingero: note: {} calls made while the probes were being removed were not recorded \
             (drops with reason 'stopping'); stop the workload before the tracer to record every call",
            group_digits(outcome.dropped_stopping)
        );
    }
    if outcome.disk_full_dropped > 0 {
        crate::say!(
            "ingero: warning: {} events were not stored because the disk was full; \
             free space on it or lower --max-db",
            group_digits(outcome.disk_full_dropped)
        );
    }
    if let Some(a) = &archived {
        report_archive(a);
    }
    for line in pushed.iter().flat_map(crate::otlp::sender::Report::lines) {
        crate::say!("{line}");
    }
    if outcome.pruned > 0 {
        crate::say!(
            "ingero: {} oldest events were pruned to keep the database under --max-db and within \
             the free disk space (their per-minute counts stay in event_aggregates)",
            group_digits(outcome.pruned)
        );
    }
    Ok(ExitCode::SUCCESS)
}
