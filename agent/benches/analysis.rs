//! `cargo xtask bench analysis`: explain, merge and export throughput on a
//! generated 1M-event, 4-node database, each against a baseline measured
//! in the same run:
//!
//! - explain (and export) against a raw scan of the same rows with the
//!   same columns: what the analysis costs beyond reading the data;
//! - the native Perfetto export (`.pftrace`) against the Chrome JSON export
//!   of the same database: speed and file size;
//! - merge against SQLite's own `VACUUM INTO` copy of the same parts:
//!   what node handling, session renumbering and stack deduplication cost
//!   beyond copying.

use std::{collections::HashMap, time::Instant};

use agent_common::catalog::{driver_op, host_op, source};
use anyhow::Context;
use ingero::{
    analysis,
    export::{ExportReport, TraceFormat, write},
    merge::{MergeOptions, merge},
    store,
};
use rusqlite::{Connection, params};

const NODES: usize = 4;
const EVENTS_PER_NODE: usize = 250_000;

/// A node's database: launches with a contended tail, synchronizes,
/// off-CPU spans (some preempting slow launches) and block writes, over a
/// minute.
fn generate(path: &std::path::Path, node: &str) -> anyhow::Result<()> {
    let conn = store::open_for_writing(path)?;
    let session = store::create_session(
        &conn,
        &store::SessionInfo {
            node: node.into(),
            ..Default::default()
        },
    )?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, arg1, stack_hash, node, rank, session_id)
             VALUES (?1, ?2, 100, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
        )?;
        let span_ns: i64 = 60_000_000_000;
        let step = span_ns / EVENTS_PER_NODE as i64;
        for i in 0..EVENTS_PER_NODE {
            let ts = 1_795_000_000_000_000_000 + i as i64 * step;
            let (src, op, dur, tid, arg0, arg1) = match i % 10 {
                0..=5 => {
                    let slow = i % 97 == 0;
                    (
                        source::DRIVER,
                        driver_op::LAUNCH_KERNEL,
                        if slow { 900_000 } else { 11_000 },
                        101,
                        0xabcd,
                        64,
                    )
                }
                6 => (
                    source::DRIVER,
                    driver_op::STREAM_SYNCHRONIZE,
                    3_000_000,
                    101,
                    0,
                    0,
                ),
                7 | 8 => (
                    source::HOST,
                    host_op::SCHED_SWITCH,
                    500_000,
                    101,
                    i64::from(i % 3 == 0),
                    4242,
                ),
                _ => (source::IO, 2, 800_000, 102, 1 << 20, i as i64),
            };
            stmt.execute(params![
                format!("{node}:{i}"),
                ts,
                tid,
                src,
                op,
                dur,
                arg0,
                arg1,
                (i % 50) as i64,
                node,
                session
            ])?;
        }
    }
    tx.commit()?;
    conn.execute_batch(
        "INSERT INTO stack_traces(hash, ips, frames) SELECT value, '[]', '[]' FROM generate_series(0, 49)",
    )
    .or_else(|_| {
        for h in 0..50 {
            conn.execute(
                "INSERT OR IGNORE INTO stack_traces(hash, ips, frames) VALUES (?1, '[]', '[]')",
                [h],
            )?;
        }
        Ok::<_, rusqlite::Error>(())
    })?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

fn rate(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    eprintln!("generating {NODES} x {EVENTS_PER_NODE} events...");
    let parts: Vec<_> = (0..NODES)
        .map(|i| dir.path().join(format!("gpu-node-{:02}.db", i + 1)))
        .collect();
    for (i, p) in parts.iter().enumerate() {
        generate(p, &format!("gpu-node-{:02}", i + 1))?;
    }
    let total = NODES * EVENTS_PER_NODE;

    // Merge, against VACUUM INTO copies of the same parts.
    let copies = Instant::now();
    for (i, p) in parts.iter().enumerate() {
        let copy = dir.path().join(format!("copy{i}.db"));
        Connection::open(p)?.execute("VACUUM INTO ?1", [copy.display().to_string()])?;
    }
    let copy_rate = rate(total, copies);
    let merged = dir.path().join("cluster.db");
    let start = Instant::now();
    let report = merge(
        &MergeOptions {
            inputs: parts.clone(),
            output: merged.clone(),
            force: false,
            force_node: Vec::new(),
            allow_same_node: false,
        },
        &mut |_| {},
    )?;
    let merge_rate = rate(total, start);
    anyhow::ensure!(report.events as usize == total, "merge lost events");

    // Explain and export, against a raw scan of the same rows.
    let conn = Connection::open(&merged)?;
    let start = Instant::now();
    let mut rows = 0usize;
    {
        let mut stmt =
            conn.prepare("SELECT node, source, op, pid, tid, timestamp, duration, arg0, arg1, rank, world_size FROM events")?;
        let mut cursor = stmt.query([])?;
        while let Some(r) = cursor.next()? {
            let _: (String, i64, i64) = (r.get(0)?, r.get(5)?, r.get(6)?);
            rows += 1;
        }
    }
    let scan_rate = rate(rows, start);
    let start = Instant::now();
    let reports = analysis::explain(&conn, None, 0)?;
    let explain_rate = rate(total, start);
    let chains = analysis::compare_reports(&reports, None).chains;
    let export = |name: &str| -> anyhow::Result<(f64, f64, ExportReport)> {
        let path = dir.path().join(name);
        let start = Instant::now();
        let out = std::fs::File::create(&path)?;
        let report = write(
            TraceFormat::for_path(&path),
            &conn,
            out,
            None,
            &HashMap::default(),
        )?;
        let rate = rate(total, start);
        let mib = std::fs::metadata(&path)?.len() as f64 / 1_048_576.0;
        std::fs::remove_file(&path)?;
        Ok((rate, mib, report))
    };
    let (json_rate, json_mib, json_report) = export("trace.json")?;
    let (pf_rate, pf_mib, pf_report) = export("trace.pftrace")?;
    anyhow::ensure!(
        (json_report.slices, json_report.counters) == (pf_report.slices, pf_report.counters),
        "the two formats disagree"
    );

    println!("analysis benchmark: {NODES} nodes x {EVENTS_PER_NODE} events = {total} events");
    println!("  raw scan (baseline)   {scan_rate:>10.0} events/s");
    println!(
        "  explain               {:>10.0} events/s   {:.2}x the raw scan   ({} chains, top: {})",
        explain_rate,
        explain_rate / scan_rate,
        chains.len(),
        chains.first().map_or("none".into(), |c| format!(
            "[{}] {}",
            c.severity.as_str(),
            c.summary
        ))
    );
    println!(
        "  export JSON           {:>10.0} events/s   {:.2}x the raw scan   ({} slices, {json_mib:.1} MiB, {:.0} B/event)",
        json_rate,
        json_rate / scan_rate,
        json_report.slices,
        json_mib * 1_048_576.0 / total as f64
    );
    println!(
        "  export .pftrace       {:>10.0} events/s   {:.2}x the raw scan   ({} slices, {pf_mib:.1} MiB, {:.0} B/event): {:.1}x faster, {:.1}x smaller than JSON",
        pf_rate,
        pf_rate / scan_rate,
        pf_report.slices,
        pf_mib * 1_048_576.0 / total as f64,
        pf_rate / json_rate,
        json_mib / pf_mib
    );
    println!("  VACUUM INTO (baseline){copy_rate:>10.0} events/s");
    println!(
        "  merge                 {:>10.0} events/s   {:.2}x VACUUM INTO",
        merge_rate,
        merge_rate / copy_rate
    );
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .context("VmHWM")?;
    println!(
        "  peak memory of the whole run: {}",
        peak_kib.trim_start_matches("VmHWM:").trim()
    );
    Ok(())
}
