//! The native Perfetto trace (`ingero export --format perfetto -o
//! X.pftrace`), decoded by Perfetto's own protobuf module (PyPI `perfetto`,
//! installed by `cargo xtask setup`; `tests/perfetto_check.py` checks the
//! structure, this file compares what it holds with the database): the
//! merged three-node sample with NCCL collectives added by hand, with and
//! without clock offsets, against the JSON export of the same database.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::Command,
};

use agent_common::catalog::{driver_op, host_op, nccl_op, source};
use anyhow::{Context, bail};
use ingero::export::{TraceFormat, write};
use serde_json::Value;

use crate::common::{Pki, ingero, open, scalar};

/// Decodes and checks `trace` with `tests/perfetto_check.py`; fails on any
/// structural error it reports.
pub fn check(trace: &Path) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perfetto_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(trace)
        .output()
        .context("running python3 (cargo xtask setup installs the perfetto package)")?;
    if !out.status.success() {
        bail!(
            "the trace does not decode: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let errors = v["errors"].as_array().context("errors")?;
    assert!(
        errors.is_empty(),
        "structural errors in {}: {errors:#?}",
        trace.display()
    );
    Ok(v)
}

/// The node of a node track label (`gpu-node-01 (rank 0)`).
fn node_of(label: &Value) -> String {
    label
        .as_str()
        .unwrap_or_default()
        .split(" (")
        .next()
        .unwrap_or_default()
        .to_owned()
}

const COMM: i64 = 0x5eed_c0ff_ee00_0001;
const COLLECTIVES: i64 = 20;

/// A copy of the merged sample (three nodes, one rank each) with an NCCL
/// communicator over the three ranks and `COLLECTIVES` all-reduces on each,
/// the ranks arriving 1 ms apart in turn; plus rows the export leaves out
/// (a failed call, a call without communicator) and a point-to-point send
/// (one rank: no flow) and a call overlapping a CUDA call without nesting.
fn cluster_with_collectives(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let db = dir.join("cluster.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db"),
        &db,
    )?;
    // Opening for writing adds the tables the sample predates.
    drop(ingero::store::open_for_writing(&db)?);
    let conn = open(&db)?;
    let nodes: Vec<(String, i64, i64)> = conn
        .prepare(
            "SELECT node, min(pid), min(timestamp) FROM events WHERE source = 4 GROUP BY node ORDER BY node",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let base = nodes.iter().map(|n| n.2).max().context("nodes")?;
    for (rank, (node, pid, _)) in nodes.iter().enumerate() {
        conn.execute(
            "INSERT INTO nccl_comms(node, pid, comm_id, handle, rank, size, created, how)
             VALUES (?1, ?2, ?3, 4096, ?4, 3, ?5, 'init')",
            rusqlite::params![node, pid, COMM, rank as i64, base],
        )?;
        let insert = |seq: i64, end: i64, op: u8, comm: Option<i64>, ret: i64, peer: Option<i64>| {
            conn.execute(
                "INSERT INTO nccl_collectives(node, timestamp, duration, pid, tid, op, comm_id, handle, seq,
                                              count, datatype, bytes, peer, stream, ret_code)
                 VALUES (?1, ?2, 400000, ?3, ?3, ?4, ?5, 4096, ?6, 1024, 7, 4096, ?7, 0, ?8)",
                rusqlite::params![node, end, pid, op, comm, seq, peer, ret],
            )
        };
        for seq in 1..=COLLECTIVES {
            // Rank r arrives r ms after rank r-1 (mod 3 rotates the first).
            let arrival = ((seq + rank as i64) % 3) * 1_000_000;
            insert(
                seq,
                base + seq * 1_000_000_000 + arrival + 400_000,
                nccl_op::ALL_REDUCE,
                Some(COMM),
                0,
                None,
            )?;
        }
        insert(
            COLLECTIVES + 1,
            base + 30_000_000_000,
            nccl_op::ALL_REDUCE,
            Some(COMM),
            5,
            None,
        )?;
        insert(
            COLLECTIVES + 1,
            base + 30_100_000_000,
            nccl_op::ALL_REDUCE,
            None,
            0,
            None,
        )?;
        if rank == 0 {
            insert(
                COLLECTIVES + 2,
                base + 31_000_000_000,
                nccl_op::SEND,
                Some(COMM),
                0,
                Some(1),
            )?;
            // A call that starts halfway through the longest kernel launch and
            // lasts as long: it ends after the launch, so it cannot nest there
            // and goes to a lane of its own.
            let (end, dur): (i64, i64) = conn.query_row(
                &format!(
                    "SELECT timestamp, duration FROM events WHERE node = ?1 AND tid = ?2 AND source = {} AND op = {}
                     ORDER BY duration DESC LIMIT 1",
                    source::DRIVER,
                    driver_op::LAUNCH_KERNEL
                ),
                rusqlite::params![node, pid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            insert(COLLECTIVES + 3, 0, nccl_op::ALL_GATHER, Some(COMM), 0, None)?;
            conn.execute(
                "UPDATE nccl_collectives SET timestamp = ?1, duration = ?2 WHERE seq = ?3",
                rusqlite::params![end + dur / 2, dur, COLLECTIVES + 3],
            )?;
        }
    }
    Ok(db)
}

/// SQL counts by node.
fn by_node(conn: &rusqlite::Connection, sql: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(conn
        .prepare(sql)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Whether a slice is a CUDA or driver call (they alone have `arg0`).
fn is_call(s: &Value) -> bool {
    s["args"]["arg0"].is_i64()
}

/// Counts items of `list` by node where `pred` holds.
fn count(list: &Value, pred: impl Fn(&Value) -> bool) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for x in list.as_array().into_iter().flatten().filter(|x| pred(x)) {
        *m.entry(node_of(&x["node"])).or_insert(0) += 1;
    }
    m
}

#[test]
fn the_native_trace_holds_every_event_of_every_node_in_sound_structure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = cluster_with_collectives(dir.path())?;
    exports_every_event(dir.path(), &db)
}

/// The same with the events stored newest first: the export reads them in
/// timestamp order instead of storage order, with the same result.
#[test]
fn events_stored_out_of_order_come_out_the_same() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = cluster_with_collectives(dir.path())?;
    open(&db)?.execute_batch(
        "CREATE TEMP TABLE copy AS SELECT * FROM events ORDER BY timestamp DESC;
         DELETE FROM events;
         INSERT INTO events SELECT * FROM copy;",
    )?;
    exports_every_event(dir.path(), &db)
}

/// Exports `db` (from [`cluster_with_collectives`]) to both formats and
/// checks the native trace against the database and the JSON.
fn exports_every_event(dir: &Path, db: &Path) -> anyhow::Result<()> {
    let db_s = db.display().to_string();
    let pftrace = dir.join("cluster.pftrace");
    let json = dir.join("cluster.json");
    let (code, out, err) = ingero(&[
        "export",
        "--format",
        "perfetto",
        "-d",
        &db_s,
        "-o",
        pftrace.to_str().context("path")?,
        "--json",
    ])?;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["format"], "pftrace", "{out}");
    let (code, out, err) = ingero(&[
        "export",
        "--format",
        "perfetto",
        "-d",
        &db_s,
        "-o",
        json.to_str().context("path")?,
    ])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(Chrome JSON)"), "{out}");
    let v = check(&pftrace)?;
    let conn = open(db)?;

    // A sequence per node, each on its own clock, offset 0 for a local database.
    let seqs = v["sequences"].as_object().context("sequences")?;
    let labels: Vec<&str> = seqs.values().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(
        labels,
        [
            "gpu-node-01 (rank 0)",
            "gpu-node-02 (rank 1)",
            "gpu-node-03 (rank 2)"
        ]
    );
    for s in seqs.values() {
        assert_eq!(s["clock"], s["realtime"], "no offset: {s}");
        assert_eq!(s["incremental"], true);
    }
    // Every timestamp lies within its node's data (give or take the CPU
    // samples around it); a delta that wrapped would be centuries off.
    let ranges = conn
        .prepare("SELECT node, min(timestamp - duration), max(timestamp) FROM events GROUP BY node")?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
        })?
        .collect::<Result<HashMap<_, _>, _>>()?;
    for s in seqs.values() {
        let (lo, hi) = ranges[&node_of(&s["node"])];
        let (min, max) = (s["min"].as_i64().unwrap_or(0), s["max"].as_i64().unwrap_or(0));
        assert!(
            lo - 5_000_000_000 <= min && max <= hi + 5_000_000_000,
            "{s} outside [{lo}, {hi}]"
        );
    }

    // Slices per node and kind, as many as the database has.
    let slices = &v["slices"];
    let calls = count(slices, is_call);
    assert_eq!(
        calls,
        by_node(
            &conn,
            "SELECT node, count(*) FROM events WHERE source IN (1, 4) GROUP BY node"
        )?,
        "CUDA and driver calls"
    );
    let off_cpu = count(slices, |s| {
        s["name"].as_str().unwrap_or_default().starts_with("off-CPU")
    });
    assert_eq!(
        off_cpu,
        by_node(
            &conn,
            &format!(
                "SELECT node, count(*) FROM events WHERE source = {} AND op = {} GROUP BY node",
                source::HOST,
                host_op::SCHED_SWITCH
            )
        )?,
        "off-CPU spans"
    );
    let io = count(slices, |s| s["track_name"] == "block I/O");
    assert_eq!(
        io,
        by_node(
            &conn,
            "SELECT node, count(*) FROM events WHERE source = 5 GROUP BY node"
        )?,
        "block requests"
    );
    let collectives = count(slices, |s| !s["args"]["comm"].is_null());
    assert_eq!(
        collectives,
        by_node(
            &conn,
            "SELECT node, count(*) FROM nccl_collectives WHERE ret_code = 0 AND comm_id IS NOT NULL GROUP BY node"
        )?,
        "collective calls (failed ones and ones without communicator left out)"
    );
    assert_eq!(report["collectives"], 3 * COLLECTIVES + 2);
    // The call that overlaps a launch without nesting sits on a lane of
    // its own under the thread (so BEGIN/END still pair up on each track).
    let overlapping = v["slices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == format!("ncclAllGather #{}", COLLECTIVES + 3))
        .context("the overlapping call")?;
    assert_eq!(overlapping["track_name"], "overlapping calls", "{overlapping}");
    assert_eq!(
        overlapping["tid"], overlapping["args"]["pid"],
        "under its thread: {overlapping}"
    );

    // Each call where and when it happened: start = end - duration, on its thread.
    let mut want: Vec<(String, i64, i64, i64)> = conn
        .prepare("SELECT node, tid, timestamp - duration, timestamp FROM events WHERE source IN (1, 4)")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut got: Vec<(String, i64, i64, i64)> = slices
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| is_call(s))
        .map(|s| {
            (
                node_of(&s["node"]),
                s["tid"].as_i64().unwrap_or(-1),
                s["begin"].as_i64().unwrap_or(-1),
                s["end"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every CUDA/driver call at its place and time");

    // Causal chains: instants on the node track with their text.
    let chains = count(&v["instants"], |i| !i["args"]["root_cause"].is_null());
    assert_eq!(
        chains,
        by_node(&conn, "SELECT node, count(*) FROM causal_chains GROUP BY node")?
    );
    for i in v["instants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| !i["args"]["root_cause"].is_null())
    {
        assert_eq!(i["track_kind"], "process", "{i}");
        assert!(i["name"].as_str().unwrap_or_default().starts_with('['), "{i}");
        assert!(i["args"]["fix"].as_array().is_some_and(|f| !f.is_empty()), "{i}");
    }
    // Counters: page allocations and CPU load.
    let counters = count(&v["counters"], |_| true);
    let page_allocs = by_node(
        &conn,
        &format!(
            "SELECT node, count(*) FROM events WHERE source = {} AND op = {} GROUP BY node",
            source::HOST,
            host_op::MM_PAGE_ALLOC_SUMMARY
        ),
    )?;
    let cpu = by_node(&conn, "SELECT node, count(*) FROM system_snapshots GROUP BY node")?;
    for (node, n) in &counters {
        assert_eq!(
            *n,
            page_allocs.get(node).copied().unwrap_or(0) + cpu[node],
            "{node}"
        );
    }

    // Flows join the calls of one collective on every rank, first arrival to last.
    let flows = v["flows"].as_object().context("flows")?;
    assert_eq!(
        flows.len() as i64,
        COLLECTIVES,
        "one flow per collective, none for the lone send"
    );
    for (id, steps) in flows {
        let steps = steps.as_array().context("steps")?;
        let mut nodes: Vec<String> = steps.iter().map(|s| node_of(&s["node"])).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "flow {id} reaches every rank: {steps:?}");
        assert!(
            steps
                .iter()
                .all(|s| s["comm"] == steps[0]["comm"] && s["seq"] == steps[0]["seq"]),
            "flow {id}: {steps:?}"
        );
        let last = steps.iter().filter(|s| s["last"] == true).collect::<Vec<_>>();
        assert_eq!(last.len(), 1, "flow {id}");
        assert_eq!(
            last[0]["ts"].as_i64(),
            steps.iter().filter_map(|s| s["ts"].as_i64()).max(),
            "flow {id} ends at the last rank to arrive"
        );
    }

    // At least three times smaller than the JSON of the same database.
    let (pf_len, json_len) = (
        std::fs::metadata(&pftrace)?.len(),
        std::fs::metadata(&json)?.len(),
    );
    assert!(json_len >= 3 * pf_len, "pftrace {pf_len} B vs JSON {json_len} B");
    Ok(())
}

#[test]
fn each_node_keeps_its_clock_and_the_snapshot_carries_its_offset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let conn = ingero::store::open_read(&db)?;
    let offsets: HashMap<String, i64> = [
        ("gpu-node-02".to_owned(), 3_000_000_000),
        ("gpu-node-03".to_owned(), -1_500_000_250),
    ]
    .into();
    let pftrace = dir.path().join("shifted.pftrace");
    let json = dir.path().join("shifted.json");
    let pf = write(
        TraceFormat::Protobuf,
        &conn,
        std::fs::File::create(&pftrace)?,
        None,
        &offsets,
    )?;
    let js = write(
        TraceFormat::Json,
        &conn,
        std::fs::File::create(&json)?,
        None,
        &offsets,
    )?;
    assert_eq!(
        (pf.slices, pf.markers, pf.counters, pf.threads),
        (js.slices, js.markers, js.counters, js.threads)
    );
    let v = check(&pftrace)?;
    for s in v["sequences"].as_object().context("sequences")?.values() {
        let node = node_of(&s["node"]);
        let offset = s["clock"].as_i64().unwrap_or(0) - s["realtime"].as_i64().unwrap_or(0);
        assert_eq!(offset, offsets.get(&node).copied().unwrap_or(0), "{node}");
    }
    // On the reference clock, each node's first CUDA call starts where the
    // JSON (which shifts times itself) puts it.
    let j: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let origin = j["otherData"]["time_origin_unix_ns"].as_i64().context("origin")?;
    let events = j["traceEvents"].as_array().context("events")?;
    for node in ["gpu-node-01", "gpu-node-02", "gpu-node-03"] {
        let pid = events
            .iter()
            .find(|e| {
                e["name"] == "process_name" && e["args"]["name"].as_str().is_some_and(|n| n.starts_with(node))
            })
            .map(|e| e["pid"].clone())
            .context("node in the JSON")?;
        let json_first = events
            .iter()
            .filter(|e| e["pid"] == pid && (e["cat"] == "cuda" || e["cat"] == "driver"))
            .filter_map(|e| e["ts"].as_f64())
            .fold(f64::MAX, f64::min);
        let offset = offsets.get(node).copied().unwrap_or(0);
        let pf_first = v["slices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| node_of(&s["node"]) == node && is_call(s))
            .filter_map(|s| s["begin"].as_i64())
            .min()
            .context("slices")?;
        let pf_us = (pf_first - offset - origin) as f64 / 1000.0;
        assert!(
            (pf_us - json_first).abs() < 0.002,
            "{node}: {pf_us} µs vs {json_first} µs"
        );
    }
    // A window keeps the trace sound and smaller.
    let all = scalar(&open(&db)?, "SELECT count(*) FROM events WHERE source IN (1, 4)")?;
    let (from, to): (i64, i64) = conn.query_row(
        "SELECT min(timestamp), min(timestamp) + 10000000000 FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let window = ingero::timewin::Window { from, to };
    let part = dir.path().join("part.pftrace");
    write(
        TraceFormat::Protobuf,
        &conn,
        std::fs::File::create(&part)?,
        Some(window),
        &HashMap::new(),
    )?;
    let v = check(&part)?;
    let in_window = scalar(
        &open(&db)?,
        &format!("SELECT count(*) FROM events WHERE source IN (1, 4) AND timestamp BETWEEN {from} AND {to}"),
    )?;
    let calls = v["slices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| is_call(s))
        .count() as i64;
    assert!(in_window < all);
    assert_eq!(calls, in_window);
    Ok(())
}

/// A fleet trace finds the last rank to arrive on the reference clock: a
/// node whose clock runs 10 ms behind is last at every collective once its
/// offset is applied, though its own timestamps make it last at a third of
/// them.
#[test]
fn the_last_to_arrive_is_found_on_the_reference_clock() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = cluster_with_collectives(dir.path())?;
    let conn = open(&db)?;
    let behind: String = conn.query_row("SELECT node FROM nccl_comms WHERE rank = 0", [], |r| r.get(0))?;
    let offsets = HashMap::from([(behind.clone(), -10_000_000i64)]);
    let trace = dir.path().join("skewed.pftrace");
    write(
        TraceFormat::Protobuf,
        &conn,
        std::fs::File::create(&trace)?,
        None,
        &offsets,
    )?;
    let v = check(&trace)?;
    let flows = v["flows"].as_object().context("flows")?;
    assert_eq!(flows.len() as i64, COLLECTIVES);
    let mut own_clock_not_last = 0;
    for (id, steps) in flows {
        let steps = steps.as_array().context("steps")?;
        let last: Vec<&Value> = steps.iter().filter(|s| s["last"] == true).collect();
        assert_eq!(last.len(), 1, "flow {id}");
        assert_eq!(node_of(&last[0]["node"]), behind, "flow {id}: {steps:?}");
        assert_eq!(
            last[0]["at"].as_i64(),
            steps.iter().filter_map(|s| s["at"].as_i64()).max(),
            "flow {id}: the mark is on the latest call on the reference clock"
        );
        if steps.iter().any(|s| s["ts"].as_i64() > last[0]["ts"].as_i64()) {
            own_clock_not_last += 1;
        }
    }
    // On its own clock rank 0 is last only where the fixture rotates it
    // last (seq % 3 == 2).
    let rotated_last = (1..=COLLECTIVES).filter(|seq| seq % 3 == 2).count() as i64;
    assert_eq!(own_clock_not_last, COLLECTIVES - rotated_last);
    Ok(())
}

#[test]
fn a_fleet_trace_joins_the_collectives_of_every_agent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = cluster_with_collectives(dir.path())?;
    // Each agent has its own node's rows only, as on a real fleet.
    let pki = Pki::new(dir.path().join("pki"))?;
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    for node in ["gpu-node-01", "gpu-node-02", "gpu-node-03"] {
        let db = dir.path().join(format!("{node}.db"));
        std::fs::copy(&cluster, &db)?;
        let conn = open(&db)?;
        let tables: Vec<String> = conn
            .prepare(
                "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c
                 WHERE m.type = 'table' AND c.name = 'node'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for t in tables {
            conn.execute(&format!("DELETE FROM \"{t}\" WHERE node != ?1"), [node])?;
        }
        drop(conn);
        let mut agent = pki.serve_as(node, &db, &[], &[])?;
        addrs.push(agent.api_addr()?);
        agents.push(agent);
    }
    let fleet = dir.path().join("fleet.pftrace");
    let mut args: Vec<String> = ["export", "--format", "perfetto", "-o"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(fleet.display().to_string());
    args.extend(["--nodes".to_owned(), addrs.join(",")]);
    args.extend(pki.client_flags());
    let (code, _, err) = ingero(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert_eq!(code, 0, "{err}");
    let local = dir.path().join("local.pftrace");
    let (code, _, err) = ingero(&[
        "export",
        "--format",
        "perfetto",
        "-d",
        &cluster.display().to_string(),
        "-o",
        &local.display().to_string(),
    ])?;
    assert_eq!(code, 0, "{err}");

    let (f, l) = (check(&fleet)?, check(&local)?);
    let collectives = |v: &Value| count(&v["slices"], |s| !s["args"]["comm"].is_null());
    assert_eq!(collectives(&f), collectives(&l), "collective calls per node");
    assert_eq!(
        collectives(&f).values().sum::<i64>(),
        3 * COLLECTIVES + 2,
        "every successful call on a communicator"
    );
    // One flow per all-reduce, through the three nodes' tracks.
    let flows = f["flows"].as_object().context("flows")?;
    let across: Vec<&Vec<Value>> = flows
        .values()
        .filter_map(Value::as_array)
        .filter(|steps| {
            let nodes: std::collections::BTreeSet<String> =
                steps.iter().map(|x| node_of(&x["node"])).collect();
            nodes.len() == 3
        })
        .collect();
    assert_eq!(across.len() as i64, COLLECTIVES, "{flows:?}");
    assert_eq!(
        flows.len(),
        l["flows"].as_object().map_or(0, serde_json::Map::len)
    );
    Ok(())
}
