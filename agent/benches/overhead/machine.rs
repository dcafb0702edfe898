//! What the always-on tracepoints cost processes that are not traced.
//!
//! - Context switches: two forked processes, pinned to one CPU, pass a
//!   byte back and forth over two pipes; each round trip is two context
//!   switches, each one firing `sched_switch`, which must find that
//!   neither task is traced.
//! - Block I/O: 4 KiB O_DIRECT overwrites of a preallocated file on the
//!   real disk (a temporary directory beside the system's), each one a
//!   block request through `block_rq_issue` and `block_rq_complete`.
//!
//! Each round measures both with no tracer, then with `ingero trace
//! --pid` of a sleeping process running (default probes: every host
//! family), then with no tracer again; a round's figure is the traced
//! sample over the mean of the untraced ones on either side, so the
//! machine's slow drifts (other builds on its two cores) cancel out. With
//! `$INGERO_BENCH_BASELINE` naming another `ingero` binary, each round
//! measures it too, in alternating order (before/after a change, in the
//! same conditions). Neither benchmark process is ever traced. The forked children call only
//! async-signal-safe functions (read, write, affinity, clock, `_exit`),
//! as a fork of a threaded process must.

use std::{
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::workload::{Tracer, median};

/// Round trips per ping-pong sample.
const ROUND_TRIPS: u64 = 100_000;
/// Writes per block I/O sample.
const WRITES: u64 = 3_000;
/// Size of each write, and of the file's blocks.
const BLOCK: usize = 4096;
/// Size of the preallocated file the writes cycle over.
const FILE_BYTES: usize = 16 << 20;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling process to `cpu` (async-signal-safe).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

fn pipe() -> anyhow::Result<[i32; 2]> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    Ok(fds)
}

fn close(fds: &[i32]) {
    for fd in fds {
        // SAFETY: closing descriptors this module opened.
        unsafe { libc::close(*fd) };
    }
}

/// Forks a child running `body` (async-signal-safe code only), then `_exit(0)`.
fn fork(body: impl FnOnce()) -> anyhow::Result<i32> {
    // SAFETY: the child runs only async-signal-safe calls, then _exit.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            body();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        pid => Ok(pid),
    }
}

fn reap(pid: i32) -> anyhow::Result<()> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid || status != 0 {
        bail!("a ping-pong process failed (status {status})");
    }
    Ok(())
}

/// Nanoseconds per round trip of `ROUND_TRIPS` between two processes on `cpu`.
fn ping_pong(cpu: usize) -> anyhow::Result<f64> {
    let (there, back, result) = (pipe()?, pipe()?, pipe()?);
    let pong = fork(|| {
        pin(cpu);
        // Its own copy of the write end would keep it from seeing the end.
        close(&[there[1], back[0], result[0], result[1]]);
        let mut byte = [0u8; 1];
        // SAFETY: reads and writes of a byte on descriptors of this process.
        unsafe {
            while libc::read(there[0], byte.as_mut_ptr().cast(), 1) == 1 {
                libc::write(back[1], byte.as_ptr().cast(), 1);
            }
        }
    })?;
    let ping = fork(|| {
        pin(cpu);
        let mut byte = [0u8; 1];
        let start = now_ns();
        // SAFETY: as above.
        unsafe {
            for _ in 0..ROUND_TRIPS {
                libc::write(there[1], byte.as_ptr().cast(), 1);
                libc::read(back[0], byte.as_mut_ptr().cast(), 1);
            }
            let elapsed = (now_ns() - start).to_ne_bytes();
            libc::write(result[1], elapsed.as_ptr().cast(), elapsed.len());
            libc::close(there[1]);
        }
    })?;
    close(&[there[0], there[1], back[0], back[1], result[1]]);
    let mut elapsed = [0u8; 8];
    // SAFETY: reading 8 bytes into an 8-byte buffer.
    let n = unsafe { libc::read(result[0], elapsed.as_mut_ptr().cast(), 8) };
    close(&[result[0]]);
    reap(ping)?;
    reap(pong)?;
    if n != 8 {
        bail!("the ping-pong reported nothing");
    }
    Ok(u64::from_ne_bytes(elapsed) as f64 / ROUND_TRIPS as f64)
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> anyhow::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        anyhow::ensure!(!ptr.is_null(), "out of memory");
        Ok(Self { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Microseconds per 4 KiB O_DIRECT write over the preallocated `file`.
fn direct_writes(file: &Path) -> anyhow::Result<f64> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(file)
        .with_context(|| format!("O_DIRECT open of {}", file.display()))?;
    let buf = Aligned::new(BLOCK)?;
    let blocks = (FILE_BYTES / BLOCK) as u64;
    let start = now_ns();
    for i in 0..WRITES {
        let offset = ((i * 7) % blocks) as i64 * BLOCK as i64;
        // SAFETY: writes BLOCK bytes from an aligned buffer of that size.
        let n = unsafe { libc::pwrite(f.as_raw_fd(), buf.ptr.cast(), BLOCK, offset) };
        if n != BLOCK as isize {
            bail!("O_DIRECT write: {}", std::io::Error::last_os_error());
        }
    }
    Ok((now_ns() - start) as f64 / 1e3 / WRITES as f64)
}

/// One sample of each benchmark asked for.
fn sample(switch: bool, io: Option<&Path>, cpu: usize) -> anyhow::Result<(f64, f64)> {
    let s = if switch { ping_pong(cpu)? } else { 0.0 };
    let w = io.map(direct_writes).transpose()?.unwrap_or(0.0);
    Ok((s, w))
}

/// The median of `v` and its interquartile range.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    (at(1), at(2), at(3))
}

/// What one tracer build did to the samples next to it.
#[derive(Default)]
struct Figures {
    /// Samples with the tracer running: (ping-pong ns, write us).
    traced: Vec<(f64, f64)>,
    /// Per round: traced sample / mean of the untraced samples just
    /// before and after it (slow drifts of the machine cancel out).
    ratios: Vec<(f64, f64)>,
}

fn report(what: &str, unit: &str, k: usize, none: &[(f64, f64)], tracers: &[(String, Figures)]) {
    let pick = |s: &(f64, f64)| if k == 0 { s.0 } else { s.1 };
    let base = median(none.iter().map(pick).collect());
    println!(
        "    {what}: no tracer {base:.2} {unit} (median of {} samples)",
        none.len()
    );
    for (name, f) in tracers {
        let traced = median(f.traced.iter().map(pick).collect());
        let (q1, med, q3) = quartiles(&f.ratios.iter().map(pick).collect::<Vec<_>>());
        println!(
            "      {name:<16} {traced:>8.2} {unit}   {med:>6.3}x ({:+.1}%; rounds' quartiles {q1:.3}..{q3:.3})",
            (med - 1.0) * 100.0
        );
        if k == 0 {
            println!(
                "      {:<16} => about {:.0} ns added per context switch",
                "",
                (med - 1.0) * base / 2.0
            );
        }
    }
}

pub fn run(rounds: usize, switch: bool, io: bool) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpu = cpus - 1;
    let mut binaries = vec![("this build".to_owned(), crate::workload::ingero())];
    if let Some(other) = std::env::var_os("INGERO_BENCH_BASELINE") {
        binaries.push(("baseline build".to_owned(), other.into()));
    }
    crate::section(&format!(
        "machine-wide cost for untraced processes, no tracer / `ingero trace --pid <sleeping process>`, {rounds} rounds, medians"
    ));
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let file = dir.path().join("direct.bin");
    if io {
        std::fs::write(&file, vec![1u8; FILE_BYTES])?;
        std::fs::File::open(&file)?.sync_all()?;
    }
    let io_file = io.then_some(file.as_path());
    let mut sleeper = Command::new("sleep")
        .arg("100000")
        .stdout(Stdio::null())
        .spawn()
        .context("sleep")?;
    let sleeper_pid = sleeper.id().to_string();
    let mut none = Vec::new();
    let mut figures: Vec<Figures> = binaries.iter().map(|_| Figures::default()).collect();
    let result = (|| {
        for round in 0..rounds {
            let mut before = sample(switch, io_file, cpu)?;
            none.push(before);
            for k in 0..binaries.len() {
                let i = (k + round) % binaries.len();
                let tracer = Tracer::start_with(&binaries[i].1, &["--pid", &sleeper_pid])?;
                let traced = sample(switch, io_file, cpu)?;
                tracer.stop()?;
                let after = sample(switch, io_file, cpu)?;
                none.push(after);
                let ratio = |t: f64, a: f64, b: f64| if a + b > 0.0 { t / f64::midpoint(a, b) } else { 1.0 };
                figures[i].traced.push(traced);
                figures[i].ratios.push((
                    ratio(traced.0, before.0, after.0),
                    ratio(traced.1, before.1, after.1),
                ));
                before = after;
            }
            eprintln!("    round {}/{rounds} done (load {})", round + 1, crate::load());
        }
        anyhow::Ok(())
    })();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    result?;
    let tracers: Vec<(String, Figures)> = binaries.into_iter().map(|b| b.0).zip(figures).collect();
    if switch {
        println!(
            "  context switches: {ROUND_TRIPS} pipe round trips between two untraced processes on CPU {cpu} (2 switches each)"
        );
        report("ns per round trip", "ns", 0, &none, &tracers);
    }
    if io {
        println!(
            "  block I/O: {WRITES} x 4 KiB O_DIRECT overwrites in {} by an untraced process",
            dir.path().display()
        );
        report("us per write", "us", 1, &none, &tracers);
    }
    Ok(())
}
