//! The tracer's database under hostile conditions: a second tracer on the
//! same database, a SQLite file that is someone else's, a size cap on a
//! small file system, readers hammering the live database, and drops
//! around the stop.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::common::{Daemon, Workload, ingero, open, root_or_skip, scalar, serial, sha256};

fn sim(name: &str) -> PathBuf {
    ingero_sim::dir().join(name)
}

/// A tmpfs of a given size, unmounted whatever happens (lazily if busy).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("cannot mount a tmpfs on {}: {status}", dir.path().display());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Bytes of the database and its WAL on disk.
fn disk_use(db: &Path) -> u64 {
    let len = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
    };
    len("") + len("-wal")
}

/// Traces a `rate` workload of `calls` calls into `db` with `extra` flags,
/// sampling the database's disk use every 20 ms until the workload is
/// done; returns (largest disk use seen, tracer's output).
fn trace_rate_sampling(db: &Path, calls: u64, extra: &[&str]) -> anyhow::Result<(u64, String)> {
    let calls_arg = calls.to_string();
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", &calls_arg, "--per-sec", "100000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let mut args = vec!["--pid", &pid, "--no-sched", "--no-io", "--no-memory", "-q"];
    args.extend_from_slice(extra);
    let tracer = Daemon::trace(db, &args)?;
    w.go()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut largest = 0;
    let waiting = std::thread::spawn(move || w.finish());
    while !waiting.is_finished() && Instant::now() < deadline {
        largest = largest.max(disk_use(db));
        std::thread::sleep(Duration::from_millis(20));
    }
    waiting
        .join()
        .map_err(|_| anyhow::anyhow!("the workload thread panicked"))??;
    let log = tracer.stop()?;
    Ok((largest.max(disk_use(db)), log))
}

#[test]
fn a_second_tracer_on_the_same_database_is_refused_naming_the_first() -> anyhow::Result<()> {
    if !root_or_skip("a_second_tracer_on_the_same_database_is_refused") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("one.db");
    let db_arg = db.to_str().context("utf-8 path")?;
    let first = Daemon::trace(&db, &["-q", "--no-sched", "--no-io", "--no-memory"])?;
    let first_pid = first.ready["pid"].as_u64().context("pid in the ready file")?;
    let (code, _, err) = ingero(&["trace", "--db", db_arg, "-q", "--duration", "1s"])?;
    assert_eq!(code, 73, "{err}");
    assert!(
        err.contains(&format!("pid {first_pid}")),
        "names the first tracer: {err}"
    );
    assert!(err.contains("another ingero trace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    let conn = open(&db)?;
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM sessions")?,
        1,
        "the second left no session"
    );
    drop(conn);
    // kill -9 (the Daemon's drop) releases the lock with the process.
    drop(first);
    let again = Daemon::trace(&db, &["-q", "--no-sched", "--no-io", "--no-memory"])?;
    again.stop()?;
    Ok(())
}

#[test]
fn a_sqlite_file_that_is_not_ingeros_is_refused_and_left_unchanged() -> anyhow::Result<()> {
    if !root_or_skip("a_sqlite_file_that_is_not_ingeros_is_refused") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("shop.db");
    rusqlite::Connection::open(&db)?
        .execute_batch("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers(name) VALUES ('a');")?;
    let before = sha256(&db)?;
    let (code, _, err) = ingero(&[
        "trace",
        "--db",
        db.to_str().context("utf-8")?,
        "-q",
        "--duration",
        "1s",
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not ingero's") && err.contains("customers"), "{err}");
    assert_eq!(sha256(&db)?, before, "the file is unchanged");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    left.sort();
    assert_eq!(left, ["shop.db"], "nothing was added beside it");
    Ok(())
}

#[test]
fn the_size_cap_counts_the_wal_and_the_file_shrinks_back_under_it() -> anyhow::Result<()> {
    if !root_or_skip("the_size_cap_counts_the_wal") {
        return Ok(());
    }
    let _guard = serial();
    let fs = SmallFs::mount("8m")?;
    let db = fs.path().join("capped.db");
    let cap: u64 = 3 << 20;
    let (largest, log) = trace_rate_sampling(&db, 300_000, &["--max-db", "3m"])?;
    eprintln!(
        "largest disk use {largest} bytes for a {cap}-byte cap; after exit {}",
        disk_use(&db)
    );
    assert!(log.contains("pruned"), "the cap was reached: {log}");
    assert!(
        !log.contains("disk was full"),
        "pruning kept the disk from filling: {log}"
    );
    assert!(
        largest <= cap + cap / 10,
        "database and WAL stayed near the cap: {largest}"
    );
    assert!(disk_use(&db) <= cap, "and under it after exit: {}", disk_use(&db));
    let conn = open(&db)?;
    let stored = scalar(&conn, "SELECT count(*) FROM events")?;
    let counted = scalar(&conn, "SELECT sum(count) FROM event_aggregates WHERE source = 4")?;
    assert!(
        stored > 0 && counted >= 300_000,
        "newest kept ({stored}), every call counted ({counted})"
    );
    Ok(())
}

#[test]
fn a_nearly_full_disk_lowers_the_cap_to_what_fits_and_tracing_goes_on() -> anyhow::Result<()> {
    if !root_or_skip("a_nearly_full_disk_lowers_the_cap") {
        return Ok(());
    }
    let _guard = serial();
    let fs = SmallFs::mount("4m")?;
    // Leave about 1.5 MiB: less than the 3 MiB cap.
    std::fs::write(fs.path().join("filler"), vec![0u8; (5 << 20) / 2])?;
    let db = fs.path().join("full.db");
    let (largest, log) = trace_rate_sampling(&db, 200_000, &["--max-db", "3m"])?;
    eprintln!("largest disk use {largest} bytes with about 1.5 MiB free");
    assert!(log.contains("pruned"), "pruning made room: {log}");
    assert!(!log.contains("disk was full"), "before the disk filled: {log}");
    let conn = open(&db)?;
    assert!(
        scalar(&conn, "SELECT count(*) FROM events")? > 0,
        "events were stored"
    );
    assert!(
        scalar(&conn, "SELECT stopped_at FROM sessions")? > 0,
        "the session was closed: {log}"
    );
    assert!(
        scalar(&conn, "SELECT sum(count) FROM event_aggregates WHERE source = 4")? >= 200_000,
        "every call is counted"
    );
    Ok(())
}

#[test]
fn calls_made_while_the_probes_are_removed_are_not_blamed_on_the_ring_buffer() -> anyhow::Result<()> {
    if !root_or_skip("calls_made_while_the_probes_are_removed") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("stop.db");
    // Far more calls than the test lets it make: still calling at the stop.
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", "100000000", "--per-sec", "200000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(
        &db,
        &["--pid", &pid, "--no-sched", "--no-io", "--no-memory", "-q"],
    )?;
    w.go()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stored = 0;
    while stored < 200_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        stored = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
    }
    assert!(
        stored >= 200_000,
        "the tracer stored the workload's calls ({stored})"
    );
    let log = tracer.stop()?;
    drop(w);
    let conn = open(&db)?;
    let while_tracing = scalar(&conn, "SELECT events_dropped FROM sessions")?;
    let counted = scalar(&conn, "SELECT sum(count) FROM drops WHERE reason <> 'stopping'")?;
    let stopping = scalar(&conn, "SELECT sum(count) FROM drops WHERE reason = 'stopping'")?;
    eprintln!("dropped while tracing {while_tracing}, while stopping {stopping}");
    assert_eq!(
        while_tracing, counted,
        "the session counts only drops while tracing"
    );
    if while_tracing == 0 {
        assert!(
            !log.contains("--ringbuf-size"),
            "no advice without drops while tracing: {log}"
        );
    }
    if stopping > 0 {
        assert!(
            log.contains("being removed"),
            "the stop's drops are named apart: {log}"
        );
    }
    Ok(())
}

/// One `GET /api/v1/overview` over plain HTTP on loopback; whether it was
/// answered (200, or 429 past the read budget).
fn overview_answered(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let request = format!("GET /api/v1/overview HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(1 << 20).read_to_end(&mut answer);
    // The data, or "retry shortly" when every database slot is taken
    // (the API's read budget): either way the API answered.
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 429")
}

/// Largest commit lag seen over `span`: how far the newest stored event's
/// timestamp trails the clock, sampled every 50 ms with a cheap indexed read.
fn largest_lag(db: &Path, span: Duration) -> anyhow::Result<Duration> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let end = Instant::now() + span;
    let mut largest = 0i64;
    while Instant::now() < end {
        let newest: Option<i64> = conn.query_row("SELECT max(timestamp) FROM events", [], |r| r.get(0))?;
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos(),
        )?;
        if let Some(t) = newest {
            largest = largest.max(now - t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Duration::from_nanos(u64::try_from(largest.max(0))?))
}

#[test]
fn api_reads_do_not_hold_back_the_tracers_commits() -> anyhow::Result<()> {
    if !root_or_skip("api_reads_do_not_hold_back_the_tracers_commits") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("lag.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", "100000000", "--per-sec", "100000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let mut tracer = Daemon::trace(
        &db,
        &[
            "--pid",
            &pid,
            "--no-sched",
            "--no-io",
            "--no-memory",
            "-q",
            "--listen",
            "127.0.0.1:0",
            "--no-tls",
        ],
    )?;
    let addr = tracer.api_addr()?;
    w.go()?;
    // Some data first, so that each overview reads a sizeable table.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
            < 200_000
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let quiet = largest_lag(&db, Duration::from_secs(2))?;
    // Overview requests (each a full scan) from 8 clients at once for 20 s
    // (at most 400), while the lag is sampled.
    let requests = std::thread::spawn(move || -> (usize, usize, Duration) {
        let started = Instant::now();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let (mut sent, mut ok) = (0, 0);
                    while sent < 50 && started.elapsed() < Duration::from_secs(20) {
                        sent += 1;
                        ok += usize::from(overview_answered(&addr));
                    }
                    (sent, ok)
                })
            })
            .collect();
        let (sent, ok) = clients
            .into_iter()
            .map(|c| c.join().unwrap_or((0, 0)))
            .fold((0, 0), |(s, o), (s2, o2)| (s + s2, o + o2));
        (sent, ok, started.elapsed())
    });
    let mut busy = Duration::ZERO;
    while !requests.is_finished() {
        busy = busy.max(largest_lag(&db, Duration::from_millis(500))?);
    }
    let (sent, answered, took) = requests
        .join()
        .map_err(|_| anyhow::anyhow!("the request thread panicked"))?;
    eprintln!(
        "commit lag: {quiet:?} without readers, {busy:?} during {answered} overview requests ({took:?})"
    );
    drop(w);
    tracer.stop()?;
    let conn = open(&db)?;
    eprintln!(
        "{} events stored, {} dropped",
        scalar(&conn, "SELECT count(*) FROM events")?,
        scalar(&conn, "SELECT sum(count) FROM drops")?
    );
    assert_eq!(answered, sent, "the API answered every request");
    // Before: tens of seconds (a backlog of 256 batches queued in memory).
    assert!(
        busy < quiet + Duration::from_secs(2),
        "readers must not hold back commits: {busy:?} (without readers {quiet:?})"
    );
    Ok(())
}
