//! NCCL uprobes on the real `libnccl.so.2` (PyPI `nvidia-nccl-cu12`), with
//! real eBPF (root; skipped otherwise).
//!
//! Without a GPU the real library still answers: collectives on a null
//! communicator return `ncclInvalidArgument` (4) after the probes fired
//! with the real arguments, `ncclGetUniqueId` works and
//! `ncclCommInitRank` fails with a CUDA error. A Python program calls every
//! probed function through ctypes with arguments it chooses, and the test
//! compares the database with them.

use agent_common::catalog::{comm_id, nccl_op, source};
use anyhow::Context;

use crate::common::{Daemon, Workload, open, root_or_skip, scalar, serial};

/// Calls every probed NCCL function once with known arguments, following
/// the workload protocol of `common::Workload` (ready line, `go`, report).
const CALLER: &str = r#"
import ctypes, json, os, sys, threading
lib = ctypes.CDLL(sys.argv[1])
print(json.dumps({"ready": os.getpid()}), flush=True)
sys.stdin.readline()
P, I, Z = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
def call(name, types, *args):
    f = getattr(lib, name)
    f.argtypes = types
    f.restype = ctypes.c_int
    return f(*args)
rc = {}
# (send, recv, count, datatype, redop, comm, stream): stream is on the stack
rc["ncclAllReduce"] = call("ncclAllReduce", [P, P, Z, I, I, P, P], 0x1000, 0x2000, 1024, 7, 0, None, 0xabc1)
rc["ncclAllGather"] = call("ncclAllGather", [P, P, Z, I, P, P], 0x1000, 0x2000, 300, 6, None, 0xabc2)
rc["ncclReduceScatter"] = call("ncclReduceScatter", [P, P, Z, I, I, P, P], 0x1000, 0x2000, 500, 8, 2, None, 0xabc3)
rc["ncclBroadcast"] = call("ncclBroadcast", [P, P, Z, I, I, P, P], 0x1000, 0x2000, 77, 9, 3, None, 0xabc4)
rc["ncclBcast"] = call("ncclBcast", [P, Z, I, I, P, P], 0x1000, 66, 0, 1, None, 0xabc5)
# (send, recv, count, datatype, redop, root, comm, stream): comm and stream on the stack
rc["ncclReduce"] = call("ncclReduce", [P, P, Z, I, I, I, P, P], 0x1000, 0x2000, 33, 4, 3, 1, None, 0xabc6)
rc["ncclAlltoAll"] = call("ncclAlltoAll", [P, P, Z, I, P, P], 0x1000, 0x2000, 40, 2, None, 0xabc7)
rc["ncclGather"] = call("ncclGather", [P, P, Z, I, I, P, P], 0x1000, 0x2000, 50, 3, 2, None, 0xabc8)
rc["ncclScatter"] = call("ncclScatter", [P, P, Z, I, I, P, P], 0x1000, 0x2000, 60, 5, 1, None, 0xabc9)
rc["ncclGroupStart"] = call("ncclGroupStart", [])
rc["ncclSend"] = call("ncclSend", [P, Z, I, I, P, P], 0x1000, 10, 7, 2, None, 0xabca)
rc["ncclRecv"] = call("ncclRecv", [P, Z, I, I, P, P], 0x2000, 11, 7, 3, None, 0xabcb)
rc["ncclGroupEnd"] = call("ncclGroupEnd", [])
class UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 128)]
uid = UniqueId()
rc["ncclGetUniqueId"] = call("ncclGetUniqueId", [ctypes.POINTER(UniqueId)], ctypes.byref(uid))
comm = P(0)
# (comm *out, nranks, ncclUniqueId by value, rank)
rc["ncclCommInitRank"] = call("ncclCommInitRank", [ctypes.POINTER(P), I, UniqueId, I], ctypes.byref(comm), 4, uid, 2)
rc["ncclCommSplit"] = call("ncclCommSplit", [P, I, I, ctypes.POINTER(P), P], None, 5, 9, ctypes.byref(comm), None)
rc["ncclCommDestroy"] = call("ncclCommDestroy", [P], None)
print(json.dumps({"rc": rc, "tid": threading.get_native_id(), "uid": bytes(uid).hex()}), flush=True)
"#;

#[test]
fn every_probed_call_of_the_real_library_is_stored_with_its_arguments() -> anyhow::Result<()> {
    if !root_or_skip("every_probed_call_of_the_real_library") {
        return Ok(());
    }
    let _guard = serial();
    let lib = ingero_sim::libnccl_real()
        .context("libnccl.so.2 from nvidia-nccl-cu12 (cargo xtask setup installs it)")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("caller.py");
    std::fs::write(&script, CALLER)?;
    let db = dir.path().join("nccl.db");
    let (script_arg, lib_arg) = (script.display().to_string(), lib.display().to_string());
    let mut w = Workload::start(std::path::Path::new("python3"), &[&script_arg, &lib_arg], &[])?;
    let pid = w.pid.to_string();
    let tracer = Daemon::trace(
        &db,
        &["--pid", &pid, "--node", "nccl-node", "--nccl-lib", &lib_arg, "-q"],
    )?;
    w.go()?;
    let report = w.finish()?;
    tracer.stop()?;

    let rc = report["rc"].as_object().context("rc")?;
    assert_eq!(
        rc["ncclAllReduce"].as_i64(),
        Some(4),
        "null communicator: ncclInvalidArgument"
    );
    assert_eq!(rc["ncclGetUniqueId"].as_i64(), Some(0));
    let conn = open(&db)?;
    let tid = report["tid"].as_i64().context("tid")?;
    // Every call: one event, by the caller's thread, with the library's
    // return code.
    for (name, code) in rc {
        let n = scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op
                 WHERE e.source = {} AND o.name = '{name}' AND e.tid = {tid} AND e.ret_code = {}",
                source::NCCL,
                code.as_i64().unwrap_or(-1)
            ),
        )?;
        let expected = i64::from(name != "ncclGetUniqueId");
        assert_eq!(n, expected, "{name}");
    }
    // Arguments, as the program passed them: (op, count, datatype, bytes,
    // redop, root/peer, stream).
    #[expect(
        clippy::type_complexity,
        reason = "one row of the table below, read as written"
    )]
    let expected: &[(u8, i64, i64, i64, Option<i64>, Option<i64>, i64)] = &[
        (nccl_op::ALL_REDUCE, 1024, 7, 4096, Some(0), None, 0xabc1),
        (nccl_op::ALL_GATHER, 300, 6, 600, None, None, 0xabc2),
        (nccl_op::REDUCE_SCATTER, 500, 8, 4000, Some(2), None, 0xabc3),
        (nccl_op::BROADCAST, 77, 9, 154, None, Some(3), 0xabc4),
        (nccl_op::BCAST, 66, 0, 66, None, Some(1), 0xabc5),
        (nccl_op::REDUCE, 33, 4, 264, Some(3), Some(1), 0xabc6),
        (nccl_op::ALL_TO_ALL, 40, 2, 160, None, None, 0xabc7),
        (nccl_op::GATHER, 50, 3, 200, None, Some(2), 0xabc8),
        (nccl_op::SCATTER, 60, 5, 480, None, Some(1), 0xabc9),
        (nccl_op::SEND, 10, 7, 40, None, Some(2), 0xabca),
        (nccl_op::RECV, 11, 7, 44, None, Some(3), 0xabcb),
    ];
    for (op, count, datatype, bytes, redop, peer, stream) in expected {
        let row: (i64, i64, i64, Option<i64>, Option<i64>, i64, i64) = conn.query_row(
            "SELECT count, datatype, bytes, redop, peer, stream, seq FROM nccl_collectives WHERE op = ?1",
            [op],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        assert_eq!(
            row,
            (*count, *datatype, *bytes, *redop, *peer, *stream, 0),
            "op {op}: a refused call takes no sequence number"
        );
        assert_eq!(
            scalar(
                &conn,
                &format!(
                    "SELECT count(*) FROM events WHERE source = 6 AND op = {op} AND arg0 = {bytes} AND stream = {stream}"
                )
            )?,
            1,
            "events row of op {op}"
        );
    }
    // Send and Recv were called inside one group, the others outside.
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(DISTINCT group_id) FROM nccl_collectives WHERE op IN (10, 11)"
        )?,
        1
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM nccl_collectives WHERE group_id IS NOT NULL AND op NOT IN (10, 11)"
        )?,
        0
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM events WHERE source = 6 AND op = 20 AND arg0 = (SELECT group_id FROM nccl_collectives WHERE op = 10)"
        )?,
        1,
        "ncclGroupStart carries the group id"
    );
    // ncclCommInitRank: ranks, rank, and the id every rank derives from
    // the 128-byte ncclUniqueId passed by value.
    let uid = hex_bytes(report["uid"].as_str().context("uid")?);
    let mut state = comm_id::start();
    for word in uid.chunks(8) {
        state = comm_id::fold(state, u64::from_le_bytes(word.try_into()?));
    }
    let id = comm_id::finish(state) as i64;
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = 6 AND op = {} AND arg0 = 4 AND arg2 = 2 AND arg1 = {id}",
                nccl_op::COMM_INIT_RANK
            )
        )?,
        1,
        "ncclCommInitRank(comm, 4, id, 2) with id {id:#x}"
    );
    // ncclCommSplit(NULL, color 5, key 9, ...): color and key.
    assert_eq!(
        scalar(
            &conn,
            &format!(
                "SELECT count(*) FROM events WHERE source = 6 AND op = {} AND arg0 = 5 AND arg2 = 9",
                nccl_op::COMM_SPLIT
            )
        )?,
        1
    );
    // The failed creations made no communicator.
    assert_eq!(scalar(&conn, "SELECT count(*) FROM nccl_comms")?, 0);
    Ok(())
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}
