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

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Instant,
};

use agent_common::{catalog::driver_op, config::Config};
use anyhow::{Context, bail};
use ingero::{
    store::{
        self, SessionInfo,
        writer::{Batch, EventRow, StoreWriter, WriterConfig},
    },
    trace::{
        libraries::{LibKind, inspect},
        probes::Probes,
    },
};

const INGERO: &str = env!("CARGO_BIN_EXE_ingero");
const CALLS: u64 = 200_000;
const ROUNDS: usize = 5;
/// Seconds the commits may trail the calls and still count as keeping up
/// (the tracer reports once a second).
const MAX_LAG: f64 = 2.0;

/// A workload started with --wait; returns (pid, go, wait-for-report).
struct Run {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pid: u32,
}

impl Run {
    fn start(calls: u64, per_sec: u64) -> anyhow::Result<Self> {
        let mut cmd = Command::new(ingero_sim::workload());
        cmd.args([
            "rate",
            "--calls",
            &calls.to_string(),
            "--per-sec",
            &per_sec.to_string(),
            "--wait",
        ]);
        Self::spawn(cmd)
    }

    /// `calls` x ncclAllReduce of the real libnccl at `lib`.
    fn nccl(lib: &std::path::Path, calls: u64) -> anyhow::Result<Self> {
        let mut cmd = Command::new(ingero_sim::dir().join("ingero-sim-nccl-loop"));
        cmd.arg("--lib")
            .arg(lib)
            .args(["--calls", &calls.to_string(), "--wait"]);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready: serde_json::Value = serde_json::from_str(&lines.next().context("no ready line")??)?;
        let pid = ready["ready"].as_u64().context("pid")? as u32;
        Ok(Self { child, lines, pid })
    }

    /// Lets it run; returns its elapsed seconds.
    fn go(mut self) -> anyhow::Result<f64> {
        writeln!(self.child.stdin.take().context("stdin")?, "go")?;
        let report: serde_json::Value = serde_json::from_str(&self.lines.next().context("no report")??)?;
        self.child.wait()?;
        report["seconds"].as_f64().context("seconds")
    }
}

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

/// The "N stored" figure of a summary line.
fn stored_in(line: &str) -> Option<u64> {
    let before = line.split(" stored").next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

/// `ingero trace --pid` on a fresh database.
fn traced(run: Run, calls: u64) -> anyhow::Result<Traced> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let mut tracer = Command::new(INGERO)
        .args(["trace", "--pid", &run.pid.to_string(), "--db"])
        .arg(&db)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = BufReader::new(tracer.stderr.take().context("stderr")?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    while !rx.recv()?.1.contains("Ctrl-C to stop") {}
    let seconds = run.go()?;
    let ended = Instant::now();
    let commit_lag = loop {
        let (at, line) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .context("tracer went quiet")?;
        if stored_in(&line).is_some_and(|n| n >= calls) {
            break at.saturating_duration_since(ended).as_secs_f64();
        }
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let status = tracer.wait()?;
    if !status.success() {
        bail!("tracer failed: {status}");
    }
    let conn = rusqlite::Connection::open(&db)?;
    let stored: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM events WHERE source = 4 AND op = {}",
            driver_op::CTX_SYNCHRONIZE
        ),
        [],
        |r| r.get(0),
    )?;
    let dropped: i64 = conn.query_row("SELECT ifnull(sum(count), 0) FROM drops", [], |r| r.get(0))?;
    Ok(Traced {
        seconds,
        stored,
        dropped,
        commit_lag,
    })
}

/// Calls in each NCCL round.
const NCCL_CALLS: u64 = 100_000;

/// Median seconds per ncclAllReduce call: (no probe, empty probe, traced).
fn nccl_per_call(lib_path: &std::path::Path) -> anyhow::Result<(f64, f64, f64)> {
    let mut lib = inspect(LibKind::Nccl, lib_path, lib_path)?;
    lib.symbols.retain(|(s, _)| s.symbol == "ncclAllReduce");
    let (mut none, mut empty, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        none.push(Run::nccl(lib_path, NCCL_CALLS)?.go()? / NCCL_CALLS as f64);
        {
            let mut probes = Probes::load(&Config::default(), 1 << 20)?;
            probes.attach_library_empty(&lib)?;
            empty.push(Run::nccl(lib_path, NCCL_CALLS)?.go()? / NCCL_CALLS as f64);
        }
        let t = traced(Run::nccl(lib_path, NCCL_CALLS)?, NCCL_CALLS)?;
        full.push(t.seconds / NCCL_CALLS as f64);
        eprintln!("  NCCL round {}/{ROUNDS} done", round + 1);
    }
    Ok((median(none), median(empty), median(full)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

    println!("trace benchmark: {CALLS} x cuCtxSynchronize (stub libcuda), {ROUNDS} rounds, medians");
    let (mut none, mut empty, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let mut full_drops = 0;
    for round in 0..ROUNDS {
        none.push(Run::start(CALLS, u64::MAX / 2)?.go()? / CALLS as f64);
        {
            let mut probes = Probes::load(&Config::default(), 1 << 20)?;
            probes.attach_library_empty(&lib)?;
            empty.push(Run::start(CALLS, u64::MAX / 2)?.go()? / CALLS as f64);
        }
        let t = traced(Run::start(CALLS, u64::MAX / 2)?, CALLS)?;
        full.push(t.seconds / CALLS as f64);
        full_drops += t.dropped;
        eprintln!("  round {}/{ROUNDS} done", round + 1);
    }
    let nccl = ingero_sim::libnccl_real()
        .map(|path| nccl_per_call(&path))
        .transpose()?;
    let (n, e, f) = (median(none), median(empty), median(full));
    println!("  no probe      {:>7.3} us/call", n * 1e6);
    println!(
        "  empty probe   {:>7.3} us/call   {:>5.2}x no probe",
        e * 1e6,
        e / n
    );
    println!(
        "  ingero trace  {:>7.3} us/call   {:>5.2}x no probe   {:>5.2}x empty probe  (drops during bursts: {full_drops})",
        f * 1e6,
        f / n,
        f / e
    );

    match nccl {
        Some((n, e, f)) => {
            println!(
                "NCCL: {NCCL_CALLS} x ncclAllReduce (real libnccl.so.2, null communicator), {ROUNDS} rounds, medians"
            );
            println!("  no probe      {:>7.3} us/call", n * 1e6);
            println!(
                "  empty probe   {:>7.3} us/call   {:>5.2}x no probe",
                e * 1e6,
                e / n
            );
            println!(
                "  ingero trace  {:>7.3} us/call   {:>5.2}x no probe   {:>5.2}x empty probe",
                f * 1e6,
                f / n,
                f / e
            );
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
        let t = traced(Run::start(calls, rate)?, calls)?;
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
