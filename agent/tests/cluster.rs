//! The simulated multi-node job, traced for real (root; skipped otherwise):
//! a fault on one node must show in that node's database and not in its
//! peer's, and the peer must show the waiting a straggler causes.

mod common;

use std::sync::atomic::AtomicBool;

use agent_common::catalog::{driver_op, host_op, source};
use common::{open, root_or_skip, scalar, serial};
use ingero_sim::cluster::{ClusterConfig, ClusterReport, Fault, run};

fn two_nodes(fault: Fault, dir: &std::path::Path) -> anyhow::Result<ClusterReport> {
    let cfg = ClusterConfig {
        ingero: common::INGERO.into(),
        nodes: 2,
        steps: 60,
        faults: vec![fault],
        faulty_node: 1,
        run_dir: dir.to_path_buf(),
        cudart: ingero_sim::libcudart(),
        agent_args: Vec::new(),
    };
    let report = run(&cfg, &mut |line| eprintln!("{line}"), &AtomicBool::new(false))?;
    assert!(
        report.survivors.is_empty(),
        "processes outlived the run: {:?}",
        report.survivors
    );
    Ok(report)
}

fn db(report: &ClusterReport, node: &str) -> anyhow::Result<rusqlite::Connection> {
    let path = &report
        .databases
        .iter()
        .find(|(n, _)| n == node)
        .ok_or_else(|| anyhow::anyhow!("no {node}"))?
        .1;
    open(path)
}

#[test]
fn cpu_contention_on_one_node_makes_it_the_straggler() -> anyhow::Result<()> {
    if !root_or_skip("cpu_contention_on_one_node") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let report = two_nodes(Fault::CpuContention, dir.path())?;
    let (healthy, faulty) = (db(&report, "gpu-node-01")?, db(&report, "gpu-node-02")?);
    for (conn, node, rank) in [(&healthy, "gpu-node-01", 0), (&faulty, "gpu-node-02", 1)] {
        for src in [source::DRIVER, source::HOST] {
            let n = scalar(
                conn,
                &format!(
                    "SELECT count(*) FROM events WHERE source = {src} AND node = '{node}' AND rank = {rank} AND world_size = 2"
                ),
            )?;
            assert!(
                n > 50,
                "{node}: {n} events of source {src} with the right node and rank"
            );
        }
        assert_eq!(
            scalar(
                conn,
                &format!("SELECT count(*) FROM events WHERE node != '{node}'")
            )?,
            0
        );
    }
    // Time spent preempted while runnable, by the traced threads.
    let preempted = |c: &rusqlite::Connection| {
        scalar(
            c,
            &format!(
                "SELECT ifnull(sum(duration), 0) FROM events WHERE source = 3 AND op = {} AND arg0 = 1",
                host_op::SCHED_SWITCH
            ),
        )
    };
    let (p_healthy, p_faulty) = (preempted(&healthy)?, preempted(&faulty)?);
    assert!(
        p_faulty > 5 * p_healthy.max(1_000_000),
        "preempted: faulty {p_faulty} ns vs healthy {p_healthy} ns"
    );
    // The healthy peer waits for the straggler in the all-reduce.
    let sync = |c: &rusqlite::Connection| {
        scalar(
            c,
            &format!(
                "SELECT sum(duration) FROM events WHERE source = 4 AND op = {}",
                driver_op::STREAM_SYNCHRONIZE
            ),
        )
    };
    let (s_healthy, s_faulty) = (sync(&healthy)?, sync(&faulty)?);
    assert!(
        s_healthy * 10 > s_faulty * 12,
        "stream synchronize: healthy {s_healthy} ns vs straggler {s_faulty} ns"
    );
    // What the ranks measured agrees.
    let (r0, r1) = (&report.ranks[0], &report.ranks[1]);
    assert!(r1.compute_median_ms > r0.compute_median_ms, "{r0:?} {r1:?}");
    assert!(r0.wait_median_ms > r1.wait_median_ms, "{r0:?} {r1:?}");
    Ok(())
}

#[test]
fn checkpoint_writes_show_as_block_io_on_the_faulty_node_only() -> anyhow::Result<()> {
    if !root_or_skip("checkpoint_writes_show_as_block_io") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let report = two_nodes(Fault::CheckpointIo, dir.path())?;
    let (healthy, faulty) = (db(&report, "gpu-node-01")?, db(&report, "gpu-node-02")?);
    let writes = format!(
        "SELECT ifnull(sum(arg0), 0) FROM events WHERE source = {}",
        source::IO
    );
    assert!(
        scalar(&faulty, &writes)? >= 256 << 20,
        "the checkpoints' bytes reach the block layer"
    );
    assert_eq!(
        scalar(
            &healthy,
            &format!("SELECT count(*) FROM events WHERE source = {}", source::IO)
        )?,
        0
    );
    Ok(())
}
