//! The JSON shape of the collectives answer (`/api/v1/collectives`),
//! pinned like every other answer in `snapshots.rs`: serialised and
//! compared with `tests/snapshots/collectives.json`, then parsed back.
//! Regenerate on purpose with `UPDATE_SNAPSHOTS=1 cargo test -p ingero-api`.

use std::path::PathBuf;

use ingero_api::{
    CollectiveCall, CollectivesAnswer, CollectivesEndpoint, CommMember, Endpoint, RankActivity, ThreadState,
};

fn check(name: &str, value: &CollectivesAnswer) {
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
    let back: CollectivesAnswer = serde_json::from_str(&pinned).expect("the snapshot parses back");
    assert_eq!(&back, value, "{name} does not round-trip");
}

const T0: i64 = 1_795_262_400_000_000_000;

fn answer() -> CollectivesAnswer {
    let call = |seq: u64, entry_ns: i64| CollectiveCall {
        node: "gpu-node-03".into(),
        pid: 4242,
        world_rank: Some(2),
        comm_id: "3f2a9c0d1e5b7a64".into(),
        comm_rank: Some(2),
        comm_size: Some(4),
        seq,
        op: "ncclAllReduce".into(),
        bytes: 64 << 20,
        entry_ns,
        duration_ns: 41_000,
        ret: 0,
    };
    CollectivesAnswer {
        node: "gpu-node-03".into(),
        now_ns: T0 + 60_000_000_000,
        calls: vec![call(18, T0 + 1_000_000_000), call(19, T0 + 1_250_000_000)],
        members: vec![CommMember {
            node: "gpu-node-03".into(),
            pid: 4242,
            world_rank: Some(2),
            comm_id: "3f2a9c0d1e5b7a64".into(),
            comm_rank: Some(2),
            comm_size: Some(4),
            created_ns: T0,
        }],
        activity: vec![RankActivity {
            node: "gpu-node-03".into(),
            pid: 4242,
            world_rank: Some(2),
            threads: vec![
                ThreadState {
                    tid: 4242,
                    name: "pt_main_thread".into(),
                    state: "uninterruptible I/O".into(),
                    since_ns: Some(T0 + 1_300_000_000),
                    last_call: Some("cudaStreamSynchronize".into()),
                    last_call_ns: Some(T0 + 1_290_000_000),
                },
                ThreadState {
                    tid: 4250,
                    name: "pt_autograd_0".into(),
                    state: "running".into(),
                    since_ns: None,
                    last_call: None,
                    last_call_ns: None,
                },
            ],
        }],
        truncated: false,
    }
}

#[test]
fn collectives_answer() {
    assert_eq!(CollectivesEndpoint::PATH, "/api/v1/collectives");
    check("collectives", &answer());
    check(
        "collectives_empty",
        &CollectivesAnswer {
            node: "gpu-node-01".into(),
            now_ns: T0,
            calls: Vec::new(),
            members: Vec::new(),
            activity: Vec::new(),
            truncated: true,
        },
    );
}

#[test]
fn collective_types_refuse_unknown_fields() {
    let mut json = serde_json::to_value(answer()).expect("serialises");
    json["calls"][0]["sequence"] = 5.into();
    let e = serde_json::from_value::<CollectivesAnswer>(json).expect_err("a misnamed field is refused");
    assert!(e.to_string().contains("sequence"), "{e}");

    let mut json = serde_json::to_value(answer()).expect("serialises");
    json["activity"][0]["threads"][0]["cpu"] = 1.into();
    let e = serde_json::from_value::<CollectivesAnswer>(json).expect_err("an unknown field is refused");
    assert!(e.to_string().contains("cpu"), "{e}");
}

#[test]
fn unknown_ranks_may_be_left_out() {
    // An agent that does not know a rank may omit the optional fields.
    let m: CommMember =
        serde_json::from_str(r#"{"node": "n", "pid": 1, "comm_id": "00000000000000ff", "created_ns": 5}"#)
            .expect("optional fields may be absent");
    assert_eq!((m.world_rank, m.comm_rank, m.comm_size), (None, None, None));
}
