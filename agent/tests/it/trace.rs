//! The tracer on real processes, with real eBPF (root; skipped otherwise).
//!
//! Each test starts one of the simulator's programs, attaches `ingero trace`
//! to it (or lets it discover it), lets it make a known set of calls, stops
//! the tracer with SIGINT and compares the database with what the program
//! reports it did.

use std::{collections::HashMap, time::Duration};

use crate::common::{Daemon, Workload, open, root_or_skip, scalar, serial};
use agent_common::catalog::{cuda_op, driver_op, host_op, io_op, source};
use anyhow::Context;

fn sim(name: &str) -> std::path::PathBuf {
    ingero_sim::dir().join(name)
}

/// `(op, count)` of one source for one pid.
fn op_counts(conn: &rusqlite::Connection, pid: u32, src: u8) -> anyhow::Result<HashMap<u8, i64>> {
    let mut stmt =
        conn.prepare("SELECT op, count(*) FROM events WHERE pid = ?1 AND source = ?2 GROUP BY op")?;
    let rows = stmt.query_map(rusqlite::params![pid, src], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[test]
fn cuda_runtime_calls_are_stored_with_arguments_and_driverless_return_code() -> anyhow::Result<()> {
    if !root_or_skip("cuda_runtime_calls_are_stored") {
        return Ok(());
    }
    let _guard = serial();
    let lib = ingero_sim::libcudart()
        .context("libcudart.so.12 from nvidia-cuda-runtime-cu12 (cargo xtask setup installs it)")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("cudart.db");
    let lib_arg = lib.display().to_string();
    let mut w = Workload::start(
        &sim("ingero-sim-cudart"),
        &["--lib", &lib_arg, "--calls", "25", "--bytes", "65536"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "--node", "rt-node", "-q"])?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;

    for (name, rc) in report["rc"].as_object().context("rc")? {
        assert_eq!(
            rc.as_i64(),
            Some(35),
            "{name} returns cudaErrorInsufficientDriver without a driver"
        );
    }
    let conn = open(&db)?;
    let counts = op_counts(&conn, w_pid(&report), source::CUDA)?;
    for op in [
        cuda_op::MALLOC,
        cuda_op::LAUNCH_KERNEL,
        cuda_op::MEMCPY,
        cuda_op::STREAM_SYNCHRONIZE,
    ] {
        assert_eq!(counts.get(&op), Some(&25), "op {op}: {counts:?}");
    }
    let tid = report["tid"].as_i64().context("tid")?;
    let kernel = report["kernel"].as_i64().context("kernel")?;
    let pid = w_pid(&report);
    let check = |sql: &str| scalar(&conn, &sql.replace("$pid", &pid.to_string()));
    assert_eq!(
        check("SELECT count(*) FROM events WHERE pid = $pid AND source = 1 AND ret_code != 35")?,
        0
    );
    assert_eq!(
        check(&format!(
            "SELECT count(*) FROM events WHERE pid = $pid AND source = 1 AND tid != {tid}"
        ))?,
        0
    );
    assert_eq!(
        check(
            "SELECT count(*) FROM events WHERE source = 1 AND op IN (1, 4) AND arg0 = 65536 AND pid = $pid"
        )?,
        50
    );
    assert_eq!(
        check("SELECT count(*) FROM events WHERE source = 1 AND op = 4 AND arg1 = 1 AND pid = $pid")?,
        25,
        "copy kind host-to-device"
    );
    assert_eq!(
        check(&format!(
            "SELECT count(*) FROM events WHERE source = 1 AND op = 3 AND arg0 = {kernel} AND arg1 = 8 AND stream = 0 AND pid = $pid"
        ))?,
        25,
        "kernel pointer, 4x2x1 grid, default stream"
    );
    assert_eq!(
        check("SELECT count(*) FROM events WHERE node = 'rt-node' AND id LIKE 'rt-node:%'")?,
        check("SELECT count(*) FROM events")?
    );
    Ok(())
}

fn w_pid(report: &serde_json::Value) -> u32 {
    report["pid"].as_u64().unwrap_or(0) as u32
}

#[test]
fn every_runtime_entry_point_including_per_thread_stream_variants_is_probed() -> anyhow::Result<()> {
    if !root_or_skip("every_runtime_entry_point") {
        return Ok(());
    }
    let _guard = serial();
    let lib = ingero_sim::libcudart().context("libcudart.so.12")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("ops.db");
    let lib_arg = lib.display().to_string();
    let mut w = Workload::start(
        &sim("ingero-sim-cudart"),
        &["--lib", &lib_arg, "--calls", "1", "--all-ops"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;
    let counts = op_counts(&open(&db)?, w_pid(&report), source::CUDA)?;
    let expected = [
        (cuda_op::MALLOC, 1),
        (cuda_op::FREE, 1),
        (cuda_op::LAUNCH_KERNEL, 2),
        (cuda_op::MEMCPY, 2),
        (cuda_op::STREAM_SYNCHRONIZE, 2),
        (cuda_op::DEVICE_SYNCHRONIZE, 1),
        (cuda_op::MEMCPY_ASYNC, 2),
        (cuda_op::MALLOC_MANAGED, 1),
        (cuda_op::MALLOC_ASYNC, 2),
        (cuda_op::EVENT_SYNCHRONIZE, 1),
        (cuda_op::SET_DEVICE, 1),
    ];
    for (op, n) in expected {
        assert_eq!(
            counts.get(&op).copied().unwrap_or(0),
            n,
            "op {op}; all counts {counts:?}"
        );
    }
    let conn = open(&db)?;
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM events WHERE source = 1 AND op = 7 AND arg0 = 16384 AND arg1 = 1 AND stream = 0"
        )?,
        1,
        "cudaMemcpyAsync_ptsz: bytes, kind and stream"
    );
    Ok(())
}

#[test]
fn driver_call_durations_and_threads_are_right() -> anyhow::Result<()> {
    if !root_or_skip("driver_call_durations") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("driver.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["driver", "--threads", "4", "--calls", "10", "--kernel-us", "3000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let threads = report["threads"].as_array().context("threads")?;
    assert_eq!(threads.len(), 4);
    for t in threads {
        let tid = t["tid"].as_i64().context("tid")?;
        let bytes = t["alloc_bytes"].as_i64().context("bytes")?;
        // The thread's own allocation, attributed to it and to no other.
        assert_eq!(
            scalar(
                &conn,
                &format!(
                    "SELECT count(*) FROM events WHERE source = 4 AND op = {} AND tid = {tid} AND arg0 = {bytes}",
                    driver_op::MEM_ALLOC
                )
            )?,
            1
        );
        let syncs = format!(
            "FROM events WHERE source = 4 AND op = {} AND tid = {tid}",
            driver_op::STREAM_SYNCHRONIZE
        );
        assert_eq!(scalar(&conn, &format!("SELECT count(*) {syncs}"))?, 10);
        assert_eq!(
            scalar(
                &conn,
                &format!(
                    "SELECT count(*) FROM events WHERE source = 4 AND op = {} AND tid = {tid}",
                    driver_op::LAUNCH_KERNEL
                )
            )?,
            10
        );
        // Each synchronize waits for 3 ms of simulated GPU time. Tolerance:
        // never shorter; at most 3 ms longer (thread wake-up on a loaded
        // 2-CPU machine plus probe cost).
        let (lo, hi) = (
            scalar(&conn, &format!("SELECT min(duration) {syncs}"))?,
            scalar(&conn, &format!("SELECT max(duration) {syncs}"))?,
        );
        assert!(lo >= 2_950_000, "synchronize shorter than the kernel: {lo} ns");
        assert!(hi <= 6_000_000, "synchronize far longer than the kernel: {hi} ns");
    }
    Ok(())
}

#[test]
fn off_cpu_time_is_recorded_for_every_thread() -> anyhow::Result<()> {
    if !root_or_skip("off_cpu_time") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("sched.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["sleep", "--threads", "3", "--calls", "20", "--sleep-us", "5000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    let report = w.finish()?;
    // Every wake-up is an event the kernel emitted before the program
    // ended; wait (bounded) until the tracer has committed them all.
    let tids: Vec<i64> = report["tids"]
        .as_array()
        .context("tids")?
        .iter()
        .filter_map(serde_json::Value::as_i64)
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let watch = open(&db)?;
    while std::time::Instant::now() < deadline
        && tids.iter().any(|tid| {
            scalar(
                &watch,
                &format!(
                    "SELECT count(*) FROM events WHERE source = 3 AND op = {} AND tid = {tid}",
                    host_op::SCHED_SWITCH
                ),
            )
            .unwrap_or(0)
                < 20
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracer.stop()?;
    let conn = open(&db)?;
    for tid in report["tids"].as_array().context("tids")? {
        let tid = tid.as_i64().context("tid")?;
        let base = format!(
            "FROM events WHERE source = 3 AND op = {} AND tid = {tid} AND pid = {pid}",
            host_op::SCHED_SWITCH
        );
        let n = scalar(&conn, &format!("SELECT count(*) {base}"))?;
        let off = scalar(&conn, &format!("SELECT sum(duration) {base}"))?;
        assert!(n >= 20, "thread {tid}: {n} switches for 20 sleeps");
        assert!(
            off >= 20 * 5_000_000,
            "thread {tid}: {off} ns off-CPU for 100 ms of sleep"
        );
        assert!(
            off < 20 * 5_000_000 * 3,
            "thread {tid}: {off} ns off-CPU is implausibly long"
        );
        // Every sleep is a voluntary switch; a switch while still runnable
        // (preemption by the rest of a busy machine) is marked as such.
        assert!(
            scalar(&conn, &format!("SELECT count(*) {base} AND arg0 = 0"))? >= 20,
            "thread {tid}: the 20 sleeps are voluntary switches"
        );
        assert_eq!(
            scalar(&conn, &format!("SELECT count(*) {base} AND arg0 IN (0, 1)"))?,
            n,
            "thread {tid}: every switch says whether it was a preemption"
        );
    }
    Ok(())
}

#[test]
fn direct_io_writes_are_recorded_with_bytes_and_latency() -> anyhow::Result<()> {
    if !root_or_skip("direct_io_writes") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("io.db");
    let file = dir.path().join("payload.bin");
    let file_arg = file.display().to_string();
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["io", "--file", &file_arg, "--mb", "16", "--chunk-kb", "1024"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let writes = format!(
        "FROM events WHERE source = {} AND op = {} AND pid = {pid}",
        source::IO,
        io_op::WRITE
    );
    let bytes = scalar(&conn, &format!("SELECT sum(arg0) {writes}"))?;
    assert!(
        bytes >= report["bytes"].as_i64().context("bytes")?,
        "{bytes} bytes recorded"
    );
    assert_eq!(
        scalar(
            &conn,
            &format!("SELECT count(*) {writes} AND (duration <= 0 OR arg2 IS NULL OR arg2 = 0)")
        )?,
        0,
        "latency and device on every request"
    );
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = {} AND pid != {pid}",
                source::IO
            )
        )?,
        0,
        "only the traced process's I/O"
    );
    Ok(())
}

#[test]
fn forked_children_are_traced_from_birth() -> anyhow::Result<()> {
    if !root_or_skip("forked_children") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("fork.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["fork", "--calls", "5"],
        &[("RANK", "1"), ("WORLD_SIZE", "2")],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;
    let child = report["child"].as_i64().context("child")?;
    let conn = open(&db)?;
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = 3 AND op = {} AND pid = {pid} AND arg1 = {child}",
                host_op::PROCESS_FORK
            )
        )?,
        1
    );
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = 4 AND op = {} AND pid = {child} AND arg0 = 3145728 AND rank = 1",
                driver_op::MEM_ALLOC
            )
        )?,
        5,
        "the child's calls, with the rank it inherited"
    );
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = 3 AND op = {} AND pid = {child}",
                host_op::PROCESS_EXIT
            )
        )?,
        1
    );
    Ok(())
}

#[test]
fn node_and_rank_columns_come_from_flags_and_environment() -> anyhow::Result<()> {
    if !root_or_skip("node_and_rank_columns") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("rank.db");
    let env = [("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "8")];
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["driver", "--threads", "2", "--calls", "3", "--kernel-us", "100"],
        &env,
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "--node", "gpu-node-07", "-q"])?;
    w.go()?;
    w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let total = scalar(&conn, &format!("SELECT count(*) FROM events WHERE pid = {pid}"))?;
    assert!(total > 10);
    let odd: Vec<String> = conn
        .prepare(&format!(
            "SELECT id || ' source=' || source || ' op=' || op || ' rank=' || ifnull(rank, 'NULL') FROM events
             WHERE pid = {pid} AND NOT (node = 'gpu-node-07' AND rank = 3 AND local_rank = 1 AND world_size = 8
             AND id LIKE 'gpu-node-07:%')"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert!(
        odd.is_empty(),
        "{} of {total} events lack the node or rank: {odd:?}",
        odd.len()
    );
    assert_eq!(
        scalar(&conn, "SELECT rank FROM sessions")?,
        3,
        "the session records the rank too"
    );
    // The query users already run elsewhere works verbatim.
    let mut stmt = conn.prepare("SELECT node, source, count(*) as cnt, avg(duration)/1000 as avg_us FROM events GROUP BY node, source")?;
    assert!(stmt.query_map([], |r| r.get::<_, String>(0))?.count() >= 2);
    Ok(())
}

#[test]
fn every_call_is_stored_at_a_moderate_rate() -> anyhow::Result<()> {
    if !root_or_skip("every_call_is_stored") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("rate.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", "3000", "--per-sec", "2000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE pid = {pid} AND source = 4 AND op = {}",
                driver_op::CTX_SYNCHRONIZE
            )
        )?,
        3000
    );
    assert_eq!(scalar(&conn, "SELECT events_dropped FROM sessions")?, 0);
    Ok(())
}

#[test]
fn other_processes_calling_the_same_library_are_neither_stored_nor_counted_as_drops() -> anyhow::Result<()> {
    if !root_or_skip("other_processes_calling_the_same_library") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("others.db");
    let args = ["rate", "--calls", "2000", "--per-sec", "4000"];
    let mut traced = Workload::start(&sim("ingero-sim-workload"), &args, &[])?;
    let mut other = Workload::start(&sim("ingero-sim-workload"), &args, &[])?;
    let pid = traced.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    traced.go()?;
    other.go()?;
    traced.finish()?;
    other.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let op = driver_op::CTX_SYNCHRONIZE;
    assert_eq!(
        scalar(
            &conn,
            &format!("SELECT count(*) FROM events WHERE source = 4 AND op = {op} AND pid = {pid}")
        )?,
        2000
    );
    assert_eq!(
        scalar(
            &conn,
            &format!("SELECT count(*) FROM events WHERE source = 4 AND pid != {pid}")
        )?,
        0
    );
    assert_eq!(
        scalar(&conn, "SELECT ifnull(sum(count), 0) FROM drops")?,
        0,
        "calls of untraced processes are not drops"
    );
    Ok(())
}

#[test]
fn a_tiny_ring_buffer_counts_its_drops() -> anyhow::Result<()> {
    if !root_or_skip("a_tiny_ring_buffer_counts_its_drops") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("drops.db");
    let calls = 50_000;
    let calls_arg = calls.to_string();
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", &calls_arg, "--per-sec", "100000000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(
        &db,
        &[
            "--pid",
            &pid,
            "--ringbuf-size",
            "4k",
            "--no-sched",
            "--no-io",
            "--no-memory",
            "-q",
        ],
    )?;
    w.go()?;
    w.finish()?;
    let log = tracer.stop()?;
    let conn = open(&db)?;
    let op = driver_op::CTX_SYNCHRONIZE;
    let stored = scalar(
        &conn,
        &format!("SELECT count(*) FROM events WHERE pid = {pid} AND source = 4 AND op = {op}"),
    )?;
    let dropped = scalar(
        &conn,
        &format!("SELECT sum(count) FROM drops WHERE source = 4 AND op = {op}"),
    )?;
    assert!(dropped > 0, "a 4 KiB ring cannot hold a burst of {calls} calls");
    assert_eq!(
        stored + dropped,
        calls,
        "every call is either stored or counted as dropped"
    );
    assert!(scalar(&conn, "SELECT events_dropped FROM sessions")? >= dropped);
    assert!(log.contains("could not be delivered"), "the user is told: {log}");
    Ok(())
}

#[test]
fn a_process_that_starts_after_the_tracer_is_traced_within_two_seconds() -> anyhow::Result<()> {
    if !root_or_skip("a_process_that_starts_after_the_tracer") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("late.db");
    // Every-CUDA-process mode: no --pid.
    let mut tracer = Daemon::trace(&db, &["-q", "--no-io", "--no-memory"])?;
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["driver", "--threads", "1", "--calls", "4", "--kernel-us", "100"],
        &[],
    )?;
    // The program has loaded libcuda and waits: the tracer must find it
    // and probe its library within 2 seconds. (Its own copy: a CUDA
    // process of someone else's on this machine may be probed first.)
    let own = sim("libcuda.so.1").display().to_string();
    tracer.wait_for_log(&own, Duration::from_secs(2))?;
    w.go()?;
    let report = w.finish()?;
    let log = tracer.stop()?;
    let pid = w_pid(&report);
    let conn = open(&db)?;
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE pid = {pid} AND source = 4 AND op = {}",
                driver_op::LAUNCH_KERNEL
            )
        )?,
        4,
        "{log}"
    );
    Ok(())
}

#[test]
fn json_streams_one_event_per_line() -> anyhow::Result<()> {
    if !root_or_skip("json_streams_one_event_per_line") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("json.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["rate", "--calls", "40", "--per-sec", "1000"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let mut tracer = Daemon::trace(&db, &["--pid", &pid, "--json", "--no-sched", "-q"])?;
    let stdout = tracer.stdout().context("stdout")?;
    let reader = std::thread::spawn(move || crate::common::read_all(stdout));
    w.go()?;
    w.finish()?;
    tracer.stop()?;
    let text = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let syncs = text
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|v| v["op"] == "cuCtxSynchronize" && v["source"] == "driver")
        .count();
    assert_eq!(syncs, 40);
    Ok(())
}

#[test]
fn stacks_are_captured_deduplicated_and_symbolized() -> anyhow::Result<()> {
    if !root_or_skip("stacks_are_captured") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("stack.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["driver", "--threads", "2", "--calls", "20", "--kernel-us", "50"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "--stack", "-q"])?;
    w.go()?;
    w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let launches = format!(
        "FROM events WHERE pid = {pid} AND source = 4 AND op = {}",
        driver_op::LAUNCH_KERNEL
    );
    assert_eq!(
        scalar(&conn, &format!("SELECT count(*) {launches} AND stack_hash != 0"))?,
        40
    );
    let distinct = scalar(&conn, &format!("SELECT count(DISTINCT stack_hash) {launches}"))?;
    assert!(
        distinct < 40,
        "identical call sites share a stack ({distinct} distinct)"
    );
    assert_eq!(
        scalar(
            &conn,
            &format!("SELECT count(*) {launches} AND stack_hash NOT IN (SELECT hash FROM stack_traces)")
        )?,
        0,
        "every stack is stored"
    );
    let frames: String = conn.query_row(
        &format!("SELECT frames FROM stack_traces WHERE hash = (SELECT stack_hash {launches} LIMIT 1)"),
        [],
        |r| r.get(0),
    )?;
    assert!(
        frames.contains("driver_thread"),
        "the calling function is named: {frames}"
    );
    Ok(())
}

#[test]
fn page_allocations_are_summarised_per_process() -> anyhow::Result<()> {
    if !root_or_skip("page_allocations_are_summarised") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("mem.db");
    let mut w = Workload::start(
        &sim("ingero-sim-workload"),
        &["alloc", "--mb", "64", "--calls", "4"],
        &[],
    )?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(&db, &["--pid", &pid, "-q"])?;
    w.go()?;
    w.finish()?;
    tracer.stop()?;
    let conn = open(&db)?;
    let bytes = scalar(
        &conn,
        &format!(
            "SELECT sum(arg1) FROM events WHERE pid = {pid} AND source = 3 AND op = {}",
            host_op::MM_PAGE_ALLOC_SUMMARY
        ),
    )?;
    assert!(
        bytes >= 200 << 20,
        "touching 256 MiB allocates about as much: {bytes} bytes recorded"
    );
    Ok(())
}
