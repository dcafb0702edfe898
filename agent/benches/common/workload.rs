//! Shared by the `trace` and `overhead` benchmarks: a sim program held at
//! its start line ([`Run`]), `ingero trace` as a child process
//! ([`Tracer`]), and the per-call measurement (no probe, empty probe,
//! traced) of one probed function.
//!
//! Invariants: a [`Tracer`] is stopped with SIGINT (so it commits what it
//! read) when dropped, whatever path the benchmark took; the per-call
//! cases alternate within each round, so a slow spell of the machine
//! (other builds on its two cores) hits the three cases alike.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use agent_common::config::Config;
use anyhow::{Context, bail};
use ingero::trace::{libraries::Library, probes::Probes};

/// The `ingero` binary: `$INGERO_BENCH_BIN` if set (to measure another
/// build, e.g. the one before a change, in the same session), else the one
/// built with this benchmark.
pub fn ingero() -> PathBuf {
    std::env::var_os("INGERO_BENCH_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ingero")), PathBuf::from)
}

/// A sim program started with `--wait`: it printed its pid and waits for
/// the go line.
pub struct Run {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub pid: u32,
}

impl Run {
    /// `calls` x cuCtxSynchronize of the stub driver, paced at `per_sec`.
    pub fn driver(calls: u64, per_sec: u64) -> anyhow::Result<Self> {
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

    /// `rounds` x (cudaMalloc, cudaLaunchKernel, cudaMemcpy,
    /// cudaStreamSynchronize) of the real CUDA runtime at `lib` (no driver:
    /// each returns cudaErrorInsufficientDriver after its checks).
    pub fn runtime(lib: &Path, rounds: u64) -> anyhow::Result<Self> {
        let mut cmd = Command::new(ingero_sim::cudart_caller());
        cmd.arg("--lib")
            .arg(lib)
            .args(["--calls", &rounds.to_string(), "--bytes", "4096", "--wait"]);
        Self::spawn(cmd)
    }

    /// `calls` x ncclAllReduce of the real libnccl at `lib` (null
    /// communicator: NCCL checks the arguments and refuses the call).
    pub fn nccl(lib: &Path, calls: u64) -> anyhow::Result<Self> {
        let mut cmd = Command::new(ingero_sim::dir().join("ingero-sim-nccl-loop"));
        cmd.arg("--lib")
            .arg(lib)
            .args(["--calls", &calls.to_string(), "--wait"]);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        if pinned() {
            pin_to(&mut cmd, |cpus| vec![cpus - 1]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready: serde_json::Value = serde_json::from_str(&lines.next().context("no ready line")??)?;
        let pid = ready["ready"].as_u64().context("pid")? as u32;
        Ok(Self { child, lines, pid })
    }

    /// Lets it run; returns the seconds it reports for its calls.
    pub fn go(mut self) -> anyhow::Result<f64> {
        writeln!(self.child.stdin.take().context("stdin")?, "go")?;
        let report: serde_json::Value = serde_json::from_str(&self.lines.next().context("no report")??)?;
        self.child.wait()?;
        report["seconds"].as_f64().context("seconds")
    }
}

/// `ingero trace` on a fresh database in its own temporary directory.
pub struct Tracer {
    child: Option<Child>,
    /// Its stderr lines, with the time each arrived.
    pub lines: mpsc::Receiver<(Instant, String)>,
    /// The database it writes.
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tracer {
    /// Starts `ingero trace ARGS --db DB` and waits until it traces.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(&ingero(), args)
    }

    /// As [`Self::start`], with the `ingero` binary at `bin`.
    pub fn start_with(bin: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("bench.db");
        let mut cmd = Command::new(bin);
        if pinned() {
            pin_to(&mut cmd, |cpus| (0..cpus.saturating_sub(1).max(1)).collect());
        }
        let mut child = cmd
            .arg("trace")
            .args(args)
            .arg("--db")
            .arg(&db)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let tracer = Self {
            child: Some(child),
            lines: rx,
            db,
            _dir: dir,
        };
        loop {
            let (_, line) = tracer
                .lines
                .recv_timeout(Duration::from_secs(60))
                .context("the tracer did not start within 60 s")?;
            if line.contains("Ctrl-C to stop") {
                return Ok(tracer);
            }
        }
    }

    /// Process id of the tracer.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for a summary line reporting at least `events` stored; returns
    /// when that line arrived.
    pub fn wait_stored(&self, events: u64, timeout: Duration) -> anyhow::Result<Instant> {
        loop {
            let (at, line) = self
                .lines
                .recv_timeout(timeout)
                .context("the tracer went quiet")?;
            if stored_in(&line).is_some_and(|n| n >= events) {
                return Ok(at);
            }
        }
    }

    /// Events counted as dropped in its database (after [`Self::stop`]).
    pub fn dropped(&self) -> anyhow::Result<i64> {
        let conn = rusqlite::Connection::open(&self.db)?;
        Ok(conn.query_row("SELECT ifnull(sum(count), 0) FROM drops", [], |r| r.get(0))?)
    }

    /// Stops it with SIGINT and waits; fails if it did not exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<Self> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let status = child.wait()?;
            if !status.success() {
                bail!("tracer failed: {status}");
            }
        }
        Ok(self)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, programs started by [`Run`] run on the last CPU and
/// tracers on the others (`true`), or both anywhere (`false`, the default).
/// Pinned, the agent's own work (reading and storing a million events a
/// second) does not share the program's CPU, and a per-call figure
/// measures the probes.
pub fn set_pinned(on: bool) {
    PINNED.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn pinned() -> bool {
    PINNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Restricts the child to the CPUs `which` picks out of the machine's.
fn pin_to(cmd: &mut Command, which: impl Fn(usize) -> Vec<usize>) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let set = which(cpus);
    // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            let mut mask: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &set {
                libc::CPU_SET(cpu, &mut mask);
            }
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const mask);
            Ok(())
        });
    }
}

/// The "N stored" figure of a summary line.
pub fn stored_in(line: &str) -> Option<u64> {
    let before = line.split(" stored").next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per call of the three cases of [`per_call`].
#[derive(Debug, Clone, Copy)]
pub struct PerCall {
    pub none: f64,
    pub empty: f64,
    pub traced: f64,
    /// Events the tracer counted as dropped, over all rounds (the calls
    /// come faster than any writer stores them).
    pub drops: i64,
    /// Traced / empty per round (same round, so the machine's state at
    /// the time cancels out): their smallest and largest.
    pub ratio_range: (f64, f64),
}

impl PerCall {
    /// Prints the three lines of the figure.
    pub fn print(&self) {
        let Self {
            none: n,
            empty: e,
            traced: f,
            drops,
            ratio_range: (lo, hi),
        } = *self;
        println!("    no probe      {:>7.3} us/call", n * 1e6);
        println!(
            "    empty probe   {:>7.3} us/call   {:>5.2}x no probe",
            e * 1e6,
            e / n
        );
        println!(
            "    ingero trace  {:>7.3} us/call   {:>5.2}x no probe   {:>5.2}x empty probe  (rounds {lo:.2}x..{hi:.2}x; drops during bursts: {drops})",
            f * 1e6,
            f / n,
            f / e
        );
    }
}

/// Median seconds per call with no probe, with a do-nothing probe pair on
/// the same functions, and under `ingero trace --pid`, over `rounds`
/// rounds. `start` starts the program, which makes `calls` probed calls.
pub fn per_call(
    lib: &Library,
    rounds: usize,
    calls: u64,
    start: &dyn Fn() -> anyhow::Result<Run>,
) -> anyhow::Result<PerCall> {
    let (mut none, mut empty, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let mut drops = 0;
    for round in 0..rounds {
        none.push(start()?.go()? / calls as f64);
        {
            let mut probes = Probes::load(&Config::default(), 1 << 20)?;
            probes.attach_library_empty(lib)?;
            empty.push(start()?.go()? / calls as f64);
        }
        let run = start()?;
        let tracer = Tracer::start(&["--pid", &run.pid.to_string()])?;
        full.push(run.go()? / calls as f64);
        drops += tracer.stop()?.dropped()?;
        eprintln!("    round {}/{rounds} done", round + 1);
    }
    let ratios: Vec<f64> = full.iter().zip(&empty).map(|(f, e)| f / e).collect();
    let ratio_range = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    Ok(PerCall {
        none: median(none),
        empty: median(empty),
        traced: median(full),
        drops,
        ratio_range,
    })
}
