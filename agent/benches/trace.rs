//! `cargo xtask bench trace`: what tracing costs, as ratios measured in one
//! run on this machine.
//!
//! 1. Per-call cost: a program calls `cuCtxSynchronize` of the stub driver
//!    in a tight loop, (a) with no probe, (b) with a do-nothing
//!    uprobe/uretprobe pair on that function, (c) under `ingero trace`
//!    (every probe, reader, writer). Rounds alternate the three cases; the
//!    median of each is reported, with (c)/(b) as the overhead figure: the
//!    price of what the probes do beyond merely existing.
//! 2. Sustained ingest: the same program paced at rising rates under
//!    `ingero trace`; the highest rate at which every call is committed
//!    to SQLite with zero drops, against the raw speed of the same writer
//!    storing the same number of rows without tracing.
//!
//! Needs root; prints why it skips otherwise.

#[path = "common/workload.rs"]
#[expect(
    dead_code,
    reason = "the real-runtime program and pinning are the overhead benchmark's"
)]
mod workload;

use std::time::{Duration, Instant};

use agent_common::catalog::driver_op;
use ingero::{
    store::{
        self, SessionInfo,
        writer::{Batch, EventRow, StoreWriter, WriterConfig},
    },
    trace::libraries::{LibKind, inspect},
};
use workload::{Run, Tracer, per_call};

const CALLS: u64 = 200_000;
const ROUNDS: usize = 5;
/// Calls in each NCCL round.
const NCCL_CALLS: u64 = 100_000;
/// Seconds the commits may trail the calls and still count as keeping up
/// (the tracer reports once a second).
const MAX_LAG: f64 = 2.0;

/// What one traced run recorded.
struct Traced {
    /// Seconds the program took for its calls.
    seconds: f64,
    stored: i64,
    dropped: i64,
    /// Seconds from the program's end until the tracer reported every call
    /// committed (its per-second summary line; resolution 1 s).
    commit_lag: f64,
}

/// `ingero trace --pid` on a fresh database, until every call is committed.
fn traced(run: Run, calls: u64) -> anyhow::Result<Traced> {
    let tracer = Tracer::start(&["--pid", &run.pid.to_string()])?;
    let seconds = run.go()?;
    let ended = Instant::now();
    let commit_lag = tracer
        .wait_stored(calls, Duration::from_secs(60))?
        .saturating_duration_since(ended)
        .as_secs_f64();
    let tracer = tracer.stop()?;
    let conn = rusqlite::Connection::open(&tracer.db)?;
    let stored: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM events WHERE source = 4 AND op = {}",
            driver_op::CTX_SYNCHRONIZE
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(Traced {
        seconds,
        stored,
        dropped: tracer.dropped()?,
        commit_lag,
    })
}

/// Rows per second the store writer commits on its own (no tracing).
fn raw_writer_rate(rows: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let conn = store::open_for_writing(&dir.path().join("raw.db"))?;
    let session_id = store::create_session(&conn, &SessionInfo::default())?;
    let writer = StoreWriter::spawn(
        conn,
        WriterConfig {
            node: "bench".into(),
            session_id,
            max_db_size: None,
        },
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let start = Instant::now();
    runtime.block_on(async {
        let mut sent = 0;
        while sent < rows {
            let n = 5_000.min(rows - sent);
            let events = (sent..sent + n)
                .map(|i| EventRow {
                    timestamp: i as i64,
                    pid: 1,
                    tid: 1,
                    source: 4,
                    op: driver_op::CTX_SYNCHRONIZE,
                    duration: 700,
                    ..EventRow::default()
                })
                .collect();
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
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench trace skipped: loading eBPF programs needs root");
        return Ok(());
    }
    let lib_path = ingero_sim::libcuda();
    let mut lib = inspect(LibKind::Driver, &lib_path, &lib_path)?;
    lib.symbols.retain(|(s, _)| s.symbol == "cuCtxSynchronize");
    let driver = per_call(&lib, ROUNDS, CALLS, &|| Run::driver(CALLS, u64::MAX / 2))?;
    println!("trace benchmark: {CALLS} x cuCtxSynchronize (stub libcuda), {ROUNDS} rounds, medians");
    driver.print();

    match ingero_sim::libnccl_real() {
        Some(path) => {
            let mut lib = inspect(LibKind::Nccl, &path, &path)?;
            lib.symbols.retain(|(s, _)| s.symbol == "ncclAllReduce");
            let nccl = per_call(&lib, ROUNDS, NCCL_CALLS, &|| Run::nccl(&path, NCCL_CALLS))?;
            println!(
                "NCCL: {NCCL_CALLS} x ncclAllReduce (real libnccl.so.2, null communicator), {ROUNDS} rounds, medians"
            );
            nccl.print();
        }
        None => {
            println!("NCCL: skipped (no libnccl.so.2 from nvidia-nccl-cu12; cargo xtask setup installs it)");
        }
    }

    let raw = raw_writer_rate(1_000_000)?;
    println!(
        "sustained ingest (5 s per rate; sustained = every call committed, zero drops, commits at most {MAX_LAG} s behind):"
    );
    let mut best = None;
    for rate in [100_000u64, 200_000, 400_000, 600_000, 800_000, 1_000_000] {
        let calls = rate * 5;
        let t = traced(Run::driver(calls, rate)?, calls)?;
        let achieved = calls as f64 / t.seconds;
        let ok = t.stored as u64 == calls && t.dropped == 0 && t.commit_lag <= MAX_LAG;
        let note = if achieved < 0.95 * rate as f64 {
            " (the traced program cannot call faster)"
        } else {
            ""
        };
        println!(
            "  {:>7} calls/s asked, {:>7.0} achieved: {} stored, {} dropped, committed {:.1} s after the last call  {}{note}",
            rate,
            achieved,
            t.stored,
            t.dropped,
            t.commit_lag,
            if ok { "ok" } else { "BEHIND" }
        );
        if ok {
            best = Some(achieved);
        } else {
            break;
        }
    }
    match best {
        Some(rate) => println!(
            "  => {:.0} events/s sustained end to end = {:.2}x the raw writer alone ({raw:.0} rows/s here)",
            rate,
            rate / raw
        ),
        None => println!("  => even 100k events/s lost events (raw writer: {raw:.0} rows/s)"),
    }
    Ok(())
}
