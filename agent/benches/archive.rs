//! `cargo xtask bench archive`: what the Parquet archive costs, as ratios
//! against SQLite measured in the same run on the same rows.
//!
//! 1. SQLite ingest: the store's writer thread commits 1M events (a
//!    training node's mix: kernel launches, synchronizes, off-CPU spans,
//!    block I/O) into a fresh database. The baseline, in events/s, and the
//!    database's size per million events.
//! 2. Archive pass: the live archiver (`ingero trace --archive`) writes
//!    those events as Parquet; its events/s against the ingest rate, and
//!    the events files' size per million events against SQLite's.
//! 3. Export: `ingero export --format parquet` of the same database
//!    (timestamp order, through the index).
//! 4. Ingest while archiving every second: the writer's rate with the
//!    archiver running beside it on the same database, against (1). The
//!    issue's goal: archiving lowers the sustained ingest rate by at most
//!    10%. On a 2-core machine the two threads share the CPUs; on a node
//!    with idle cores the archiver (nice 19) takes none from the writer.

use std::{path::Path, time::Instant};

use agent_common::catalog::{driver_op, host_op, source};
use anyhow::Context;
use ingero::{
    archive::{self, Archiver, ArchiverOptions, ExportOptions},
    store::{
        self, SessionInfo,
        writer::{Batch, EventRow, StoreWriter, WriterConfig},
    },
};

const EVENTS: u64 = 1_000_000;
/// Events per batch handed to the writer (the tracer hands one per 50 ms).
const BATCH: u64 = 5_000;
/// The node's events span this long (several hourly partitions).
const SPAN_NS: i64 = 3 * 3_600_000_000_000;

/// Event `i` of the mix.
fn event(i: u64) -> EventRow {
    let ts = 1_796_196_000_000_000_000 + (i as i64) * (SPAN_NS / EVENTS as i64);
    let base = EventRow {
        timestamp: ts,
        pid: 4242,
        tid: 4243 + (i % 4) as u32,
        rank: Some(3),
        local_rank: Some(3),
        world_size: Some(8),
        cpu: (i % 16) as u32,
        ..EventRow::default()
    };
    match i % 10 {
        0..=5 => EventRow {
            source: source::DRIVER,
            op: driver_op::LAUNCH_KERNEL,
            duration: 9_000 + (i * 7919) % 5_000,
            arg0: 0x7f00_1234_5000 + (i % 32) * 0x100,
            arg1: 256,
            stream: Some(0x5555_0000),
            ..base
        },
        6 => EventRow {
            source: source::DRIVER,
            op: driver_op::STREAM_SYNCHRONIZE,
            duration: 2_500_000 + (i * 104_729) % 900_000,
            stream: Some(0x5555_0000),
            ..base
        },
        7 | 8 => EventRow {
            source: source::HOST,
            op: host_op::SCHED_SWITCH,
            duration: 40_000 + (i * 613) % 400_000,
            arg0: i % 3 / 2,
            arg1: 900 + i % 7,
            ..base
        },
        _ => EventRow {
            source: source::IO,
            op: 2,
            duration: 800_000 + (i * 31) % 200_000,
            arg0: 1 << 20,
            arg1: i * 2048,
            arg2: Some(259 << 20),
            ..base
        },
    }
}

/// Commits the mix into a fresh database at `db` (with an archiver into
/// `archive_to` running beside the writer, passing every second, when
/// given); returns the ingest rate and the archiver's report.
fn ingest(db: &Path, archive_to: Option<&Path>) -> anyhow::Result<(f64, Option<archive::ArchiverReport>)> {
    let conn = store::open_for_writing(db)?;
    let session_id = store::create_session(
        &conn,
        &SessionInfo {
            node: "gpu-node-01".into(),
            ..SessionInfo::default()
        },
    )?;
    let writer = StoreWriter::spawn(
        conn,
        WriterConfig {
            node: "gpu-node-01".into(),
            session_id,
            max_db_size: None,
        },
    );
    let archiver = archive_to
        .map(|dir| {
            Archiver::start(&ArchiverOptions {
                db: db.to_path_buf(),
                dir: dir.to_path_buf(),
                interval: std::time::Duration::from_secs(1),
                node: "gpu-node-01".into(),
            })
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let start = Instant::now();
    runtime.block_on(async {
        let mut sent = 0;
        while sent < EVENTS {
            let n = BATCH.min(EVENTS - sent);
            let events = (sent..sent + n).map(event).collect();
            writer
                .send(Batch {
                    events,
                    ..Batch::default()
                })
                .await?;
            sent += n;
        }
        anyhow::Ok(())
    })?;
    writer.finish()?;
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    Ok((rate, archiver.map(Archiver::finish)))
}

/// Bytes of the files under `dir`, at any depth.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                bytes_under(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Rounds of the ingest comparison.
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib_per_million(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0 / (EVENTS as f64 / 1e6)
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    eprintln!("committing {EVENTS} events into SQLite...");
    let db = dir.path().join("node.db");
    let (ingest_rate, _) = ingest(&db, None)?;
    let db_bytes = bytes_under(dir.path());

    eprintln!("archiving them...");
    let out = dir.path().join("archive");
    let start = Instant::now();
    let report = Archiver::start(&ArchiverOptions {
        db: db.clone(),
        dir: out.clone(),
        interval: std::time::Duration::from_secs(3600),
        node: "gpu-node-01".into(),
    })?
    .finish();
    let archive_rate = report.events as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.events == EVENTS,
        "archived {} of {EVENTS} events: {report:?}",
        report.events
    );
    let events_bytes = bytes_under(&out.join("table=events"));

    eprintln!("exporting them...");
    let exported = dir.path().join("export");
    let conn = store::open_read(&db)?;
    let start = Instant::now();
    let summary = archive::export(
        &conn,
        &ExportOptions {
            dir: exported,
            window: None,
            forced_node: None,
        },
        &mut |_| {},
    )?;
    let export_rate =
        summary.tables.get("events").map_or(0, |t| t.rows) as f64 / start.elapsed().as_secs_f64();

    // Alternating rounds with and without the archiver, medians of each:
    // the machine's other load moves both alike.
    eprintln!(
        "committing them again, {ROUNDS} rounds each with and without the archiver passing every second..."
    );
    let (mut plain, mut busy, mut windows) = (vec![ingest_rate], Vec::new(), 0);
    for _ in 0..ROUNDS {
        let round = tempfile::tempdir()?;
        let (rate, report) = ingest(&round.path().join("node.db"), Some(&round.path().join("archive")))?;
        let report = report.context("archiver report")?;
        anyhow::ensure!(
            report.events == EVENTS,
            "archived {} of {EVENTS}: {report:?}",
            report.events
        );
        busy.push(rate);
        windows += report.windows;
        let round = tempfile::tempdir()?;
        plain.push(ingest(&round.path().join("node.db"), None)?.0);
    }
    let (ingest_rate, busy_rate) = (median(plain), median(busy));

    println!(
        "archive benchmark: {EVENTS} events of one node (launches, synchronizes, off-CPU spans, block I/O) over 3 hours"
    );
    println!(
        "  SQLite ingest (baseline)          {ingest_rate:>10.0} events/s   database {:>6.1} MiB per million events (median of {} rounds)",
        mib_per_million(db_bytes),
        ROUNDS + 1
    );
    println!(
        "  archive pass (trace --archive)    {archive_rate:>10.0} events/s   {:.2}x the SQLite ingest rate;   events files {:>5.1} MiB per million events ({:.1}x smaller), {} windows",
        archive_rate / ingest_rate,
        mib_per_million(events_bytes),
        db_bytes as f64 / events_bytes.max(1) as f64,
        report.windows,
    );
    println!(
        "  export --format parquet           {export_rate:>10.0} events/s   {:.2}x the SQLite ingest rate",
        export_rate / ingest_rate
    );
    println!(
        "  SQLite ingest, archiving each 1s  {busy_rate:>10.0} events/s   {:.0}% of the baseline (medians of {ROUNDS} rounds; {windows} windows archived meanwhile)",
        busy_rate * 100.0 / ingest_rate,
    );
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .context("VmHWM")?;
    println!(
        "  peak memory of the whole run: {}",
        peak.trim_start_matches("VmHWM:").trim()
    );
    Ok(())
}
