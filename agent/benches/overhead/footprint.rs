//! The agent's own footprint over a sustained run: a program makes driver
//! calls at a steady rate for the whole duration under `ingero trace
//! --pid`; every second the tracer's CPU time (`utime + stime` of
//! `/proc/PID/stat`, all its threads) and memory (`VmRSS`, `VmHWM` of
//! `/proc/PID/status`) are sampled, and every 10 s a line is printed, so a
//! reader sees whether RSS plateaus. The figure is CPU seconds per million
//! events stored (every event, the program's off-CPU ones included).

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::workload::{Run, Tracer, stored_in};

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// (VmRSS, VmHWM) of process `pid`, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        let line = status.lines().find(|l| l.starts_with(key)).context("status")?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse::<f64>()? / 1024.0)
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

pub fn run(seconds: u64, rate: u64) -> anyhow::Result<()> {
    crate::section(&format!(
        "agent footprint: {seconds} s at {rate} driver calls/s under `ingero trace --pid`"
    ));
    let calls = seconds * rate;
    let program = Run::driver(calls, rate)?;
    let tracer = Tracer::start(&["--pid", &program.pid.to_string()])?;
    let pid = tracer.pid();
    let cpu_start = cpu_seconds(pid)?;
    let started = Instant::now();
    let worker = std::thread::spawn(move || program.go());
    let mut stored = 0u64;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next_print = 10;
    println!(
        "    {:>5}  {:>12}  {:>9}  {:>9}  {:>8}",
        "s", "stored", "RSS MiB", "peak MiB", "CPU s"
    );
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        while let Ok((_, line)) = tracer.lines.try_recv() {
            stored = stored_in(&line).unwrap_or(stored);
        }
        let elapsed = started.elapsed().as_secs();
        if elapsed as usize > samples.len() {
            let (rss, hwm) = memory_mib(pid)?;
            samples.push((rss, hwm));
            if elapsed >= next_print {
                println!(
                    "    {elapsed:>5}  {stored:>12}  {rss:>9.1}  {hwm:>9.1}  {:>8.2}",
                    cpu_seconds(pid)? - cpu_start
                );
                next_print += 10;
            }
        }
    }
    let program_seconds = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the program thread panicked"))??;
    // Every call is an event; wait until they are all committed.
    let _ = tracer.wait_stored(calls, Duration::from_secs(30));
    let cpu = cpu_seconds(pid)? - cpu_start;
    let (rss, hwm) = memory_mib(pid)?;
    let tracer = tracer.stop()?;
    let conn = rusqlite::Connection::open(&tracer.db)?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    let dropped = tracer.dropped()?;
    let achieved = calls as f64 / program_seconds;
    let third = samples.get(samples.len() / 3).map_or(0.0, |s| s.0);
    println!(
        "    {achieved:.0} calls/s achieved; {rows} events stored, {dropped} dropped; agent CPU {cpu:.2} s = {:.2} s per million events ({:.0}% of one CPU)",
        cpu / (rows.max(1) as f64 / 1e6),
        cpu / started.elapsed().as_secs_f64() * 100.0
    );
    println!(
        "    RSS {third:.1} MiB at a third of the run, {rss:.1} MiB at the end ({:+.1}%); peak (VmHWM) {hwm:.1} MiB",
        (rss / third.max(0.1) - 1.0) * 100.0
    );
    Ok(())
}
