//! The JSON shape of every answer, pinned: each example is serialised and
//! compared with `tests/snapshots/NAME.json`, and parsed back. A change to
//! the contract fails here until the snapshot is regenerated on purpose
//! (`UPDATE_SNAPSHOTS=1 cargo test -p ingero-api`), so it shows as a diff.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use ingero_api::{
    Chain, ChainsAnswer, CpuEvidence, ErrorAnswer, Evidence, InputEvidence, IoEvidence, LiveInfo,
    MemEvidence, NodeOps, OpSummary, OpsAnswer, OverviewAnswer, QueryAnswer, QueryRequest, SessionInfo,
    Severity, Since, Span, TimeAnswer, TimelineEntry, Window,
};
use serde::{Serialize, de::DeserializeOwned};

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/snapshots/{name}.json"));
    let json = serde_json::to_string_pretty(value).expect("serialises") + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &json).expect("writes the snapshot");
    }
    let pinned = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        json,
        pinned,
        "the JSON of {name} changed: the wire contract is not what {} pins",
        path.display()
    );
    let back: T = serde_json::from_str(&pinned).expect("the snapshot parses back");
    assert_eq!(&back, value, "{name} does not round-trip");
}

const WINDOW: Window = Window {
    from: 1_795_262_400_000_000_000,
    to: 1_795_262_460_000_000_000,
};

fn chain() -> Chain {
    Chain {
        id: "gpu-node-03:tail-cuLaunchKernel@1795262400000000000".into(),
        node: "gpu-node-03".into(),
        severity: Severity::High,
        score: 4.5,
        summary: "cuLaunchKernel p99=5.64ms (502.1x p50) - 304 sched_switch events".into(),
        root_cause: "CPU contention: threads making CUDA calls were preempted 304 times".into(),
        explanation: "The slow calls overlapped preemption of their own threads.".into(),
        recommendations: vec!["Pin the training processes to dedicated cores (taskset -c ...)".into()],
        cuda_op: "cuLaunchKernel".into(),
        p99_us: 5640.0,
        p50_us: 11.2,
        tail_ratio: 502.1,
        timeline: vec![TimelineEntry {
            layer: "HOST".into(),
            op: "sched_switch".into(),
            detail: "304 preemptions of the calling threads".into(),
            dur_us: 2_810_000,
        }],
        detected_at: WINDOW.to + 1_000,
        window: WINDOW,
        peak_at: WINDOW.from + 30_000_000_000,
    }
}

#[test]
fn time_answer() {
    check(
        "time",
        &TimeAnswer {
            node: "gpu-node-01".into(),
            receive_ns: 1_795_262_400_000_001_000,
            send_ns: 1_795_262_400_000_009_000,
        },
    );
}

#[test]
fn query_request_and_answer() {
    check(
        "query_request",
        &QueryRequest {
            sql: "SELECT source, count(*) FROM events GROUP BY source".into(),
            limit: Some(100),
            timeout_ms: Some(10_000),
            since: Some(Since::Last(Duration::from_secs(300))),
        },
    );
    check(
        "query_answer",
        &QueryAnswer {
            node: "gpu-node-01".into(),
            columns: vec!["source".into(), "count(*)".into()],
            rows: vec![
                vec![1.into(), 3840.into()],
                vec![4.into(), serde_json::Value::Null],
            ],
            truncated: false,
            elapsed_ms: 1.5,
            error: None,
        },
    );
    // Streamed: a statement that fails after rows were sent ends its
    // answer with the reason.
    check(
        "query_answer_cut",
        &QueryAnswer {
            node: "gpu-node-01".into(),
            columns: vec!["n".into()],
            rows: vec![vec![1.into()], vec![2.into()]],
            truncated: true,
            elapsed_ms: 10_000.5,
            error: Some(
                "the query ran past its 10s deadline and was interrupted; narrow it (WHERE, LIMIT) or raise --timeout"
                    .into(),
            ),
        },
    );
}

#[test]
fn query_request_refuses_unknown_fields() {
    let e = serde_json::from_str::<QueryRequest>(r#"{"sql": "select 1", "lmit": 5}"#)
        .expect_err("a typo is refused");
    assert!(e.to_string().contains("lmit"), "{e}");
    let minimal: QueryRequest = serde_json::from_str(r#"{"sql": "select 1"}"#).expect("only sql is needed");
    assert_eq!(minimal.limit, None);
}

#[test]
fn chains_answer() {
    check(
        "chains",
        &ChainsAnswer {
            node: "gpu-node-03".into(),
            window: Span::covering([WINDOW]),
            events: 123_456,
            chains: vec![chain()],
        },
    );
}

#[test]
fn ops_answer() {
    check(
        "ops",
        &OpsAnswer {
            node: "gpu-node-03".into(),
            window: Span::covering([WINDOW]),
            nodes: vec![NodeOps {
                node: "gpu-node-03".into(),
                rank: Some(2),
                world_size: Some(4),
                events: 123_456,
                window: WINDOW,
                ops: vec![OpSummary {
                    name: "cuStreamSynchronize".into(),
                    source: 4,
                    op: 10,
                    count: 600,
                    p50_us: 210.5,
                    p95_us: 900.0,
                    p99_us: 1200.25,
                    max_us: 5000.0,
                    total_ms: 22_080.5,
                }],
                evidence: Evidence {
                    cpu: CpuEvidence {
                        preemptions: 304,
                        preempted_ns: 2_810_000_000,
                        top_preemptors: vec![(6600, 41)],
                    },
                    io: IoEvidence {
                        requests: 1200,
                        read_bytes: 0,
                        write_bytes: 405_000_000,
                        busy_ns: 8_760_000_000,
                        peak_ns: 80_000_000,
                        top_issuers: vec![(7001, 405_000_000)],
                    },
                    mem: MemEvidence {
                        alloc_bytes: 1 << 30,
                        swap_pages: 0,
                        oom_kills: 0,
                    },
                    input: InputEvidence {
                        pid: 4242,
                        tid: 4242,
                        wait_ns: 860_000_000,
                        gaps: 59,
                        gap_ns: 1_650_000_000,
                        longest_gap_ns: 44_000_000,
                        workers: 2,
                        worker_cpu_ns: 1_850_000_000,
                        worker_runnable_ns: 2_340_000_000,
                        worker_blocked_ns: 210_000_000,
                        worker_busy_ns: 1_640_000_000,
                        own_read_ns: 0,
                        reads: 59,
                        read_bytes: 61_865_984,
                    },
                },
            }],
        },
    );
}

#[test]
fn evidence_of_an_older_agent_reads_as_no_input_starvation() {
    let old = r#"{"cpu":{"preemptions":3,"preempted_ns":9,"top_preemptors":[]},
        "io":{"requests":0,"read_bytes":0,"write_bytes":0,"busy_ns":0,"peak_ns":0,"top_issuers":[]},
        "mem":{"alloc_bytes":0,"swap_pages":0,"oom_kills":0}}"#;
    let e: Evidence = serde_json::from_str(old).expect("an answer without `input` parses");
    assert_eq!(e.cpu.preemptions, 3);
    assert_eq!(e.input, InputEvidence::default());
}

#[test]
fn overview_answer() {
    let session = SessionInfo {
        id: 1,
        node: "gpu-node-01".into(),
        started_at: WINDOW.from,
        stopped_at: 0,
        events_stored: 1000,
        events_dropped: 0,
        rank: Some(0),
        local_rank: Some(0),
        world_size: Some(4),
        hostname: "host-a".into(),
    };
    check(
        "overview_live",
        &OverviewAnswer {
            node: "gpu-node-01".into(),
            rank: Some(0),
            world_size: Some(4),
            events: 1000,
            events_by_source: BTreeMap::from([("cuda".into(), 600), ("host".into(), 400)]),
            first_event: Some(WINDOW.from),
            last_event: Some(WINDOW.to),
            chains_stored: 2,
            sessions: 1,
            dropped: 0,
            session: Some(session),
            live: LiveInfo {
                tracing: true,
                session_id: Some(1),
                events_committed: Some(1000),
                events_dropped: Some(0),
            },
        },
    );
    check(
        "overview_stored",
        &OverviewAnswer {
            node: "gpu-node-02".into(),
            rank: None,
            world_size: None,
            events: 0,
            events_by_source: BTreeMap::new(),
            first_event: None,
            last_event: None,
            chains_stored: 0,
            sessions: 0,
            dropped: 0,
            session: None,
            live: LiveInfo::default(),
        },
    );
}

#[test]
fn error_answer() {
    check(
        "error",
        &ErrorAnswer {
            error: "refused: DELETE from events (queries are read-only)".into(),
        },
    );
}
