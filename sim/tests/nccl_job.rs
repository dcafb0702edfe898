//! The stub NCCL and the simulated job, without the tracer: the stub's
//! semantics across four ranks (argument errors, asynchronous calls with
//! the barrier in cuStreamSynchronize, transfer times, split communicators,
//! send/recv, groups, abort), a training job on its split communicator, and
//! the runner's new faults (hang, slow rank, data loader starvation) with
//! stand-in agents.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use ingero_sim::cluster::{ClusterConfig, ClusterReport, Fault, RunOptions, run_with};

/// Processes of one test, killed if still running when dropped.
struct Ranks {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `n` ranks of `program` as torchrun would, output in files.
fn start(program: &Path, n: usize, args: &[&str], env: &[(&str, &str)]) -> Ranks {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let children = (0..n)
        .map(|r| {
            let out = File::create(dir.path().join(format!("{r}.out"))).expect("out file");
            let err = File::create(dir.path().join(format!("{r}.err"))).expect("err file");
            Command::new(program)
                .args(args)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", "0")
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start a rank")
        })
        .collect();
    Ranks { children, dir }
}

/// Waits for every rank (at most `timeout`); (status, stdout, stderr) each.
fn finish(mut ranks: Ranks, timeout: Duration) -> Vec<(ExitStatus, String, String)> {
    let deadline = Instant::now() + timeout;
    let mut statuses = Vec::new();
    for (r, c) in ranks.children.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "rank {r} still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |ext: &str| {
            std::fs::read_to_string(ranks.dir.path().join(format!("{r}.{ext}"))).unwrap_or_default()
        };
        statuses.push((status, read("out"), read("err")));
    }
    statuses
}

#[test]
fn the_stub_nccl_behaves_like_nccl_across_four_ranks() {
    let ranks = start(&ingero_sim::nccl_check(), 4, &[], &[("INGERO_SIM_NET_GBPS", "2")]);
    for (r, (status, out, err)) in finish(ranks, Duration::from_secs(20)).into_iter().enumerate() {
        assert!(status.success(), "rank {r}: {status}\n{out}\n{err}");
        let mut expected = vec![
            "args",
            "init",
            "args-comm",
            "async",
            "bandwidth",
            "all-ops",
            "split",
            "p2p",
            "group",
            "abort",
        ];
        if r == 0 {
            expected.extend(["local", "group-init"]);
        }
        expected.push("end");
        let passed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
        assert_eq!(passed, expected, "rank {r}\n{err}");
        assert!(!err.contains("different orders"), "rank {r}: {err}");
    }
}

fn summary(out: &str) -> serde_json::Value {
    out.lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no summary in {out}"))
}

#[test]
fn every_rank_of_a_training_job_completes_on_its_split_communicator() {
    let ranks = start(
        &ingero_sim::rank(),
        3,
        &["--steps", "25", "--report-every", "5"],
        &[],
    );
    for (r, (status, out, err)) in finish(ranks, Duration::from_secs(20)).into_iter().enumerate() {
        assert!(status.success(), "rank {r}: {status}\n{err}");
        let s = summary(&out);
        assert_eq!(s["rank"], r);
        assert_eq!(s["steps"], 25);
        assert_eq!(
            (s["world_size"].as_u64(), s["dp_size"].as_u64()),
            (Some(3), Some(3)),
            "{s}"
        );
        assert_eq!(s["dp_rank"], r, "the split keeps the world order (key = rank)");
        assert_eq!(
            s["nccl"],
            serde_json::json!({"broadcast": 1, "all_reduce": 25, "groups": 2})
        );
        let steps = out.lines().filter(|l| l.starts_with("step ")).count();
        assert_eq!(steps, 5, "{out}");
        assert!(err.is_empty(), "rank {r}: {err}");
    }
}

/// An `ingero` stand-in: announces itself like `ingero trace`, then waits
/// for SIGINT and exits 0, as an agent that committed would.
fn fake_ingero(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-ingero");
    std::fs::write(
        &path,
        "#!/bin/sh\ntrap 'exit 0' INT TERM\necho 'ingero: tracing (stand-in); Ctrl-C to stop' >&2\nwhile :; do sleep 0.1; done\n",
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn config(dir: &Path, fault: Fault, faulty: usize, steps: u64) -> ClusterConfig {
    ClusterConfig {
        ingero: fake_ingero(dir),
        nodes: 3,
        steps,
        faults: vec![fault],
        faulty_node: faulty,
        run_dir: dir.join("run"),
        cudart: None,
        agent_args: Vec::new(),
    }
}

/// (tid, state, wchan) of every thread of a process.
fn threads(pid: u32) -> Vec<(u32, char, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|s| s.chars().next())
                .unwrap_or('?');
            let tid = t.file_name().to_string_lossy().parse().unwrap_or(0);
            (
                tid,
                state,
                std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default(),
            )
        })
        .collect()
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
}

#[test]
fn a_hung_rank_stops_and_its_peers_stall_until_the_runner_ends_the_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), Fault::Hang, 1, 40);
    let mut seen = None;
    let mut on_hang = |h: &ingero_sim::cluster::Hang| {
        // While hung: every rank alive, asleep in every thread, burning no CPU.
        let before: Vec<u64> = h.pids.iter().map(|p| cpu_ticks(*p)).collect();
        std::thread::sleep(Duration::from_millis(500));
        let after: Vec<u64> = h.pids.iter().map(|p| cpu_ticks(*p)).collect();
        let states: Vec<Vec<(u32, char, String)>> = h.pids.iter().map(|p| threads(*p)).collect();
        seen = Some((h.clone(), before, after, states));
    };
    let opts = RunOptions {
        hang_at_step: Some(5),
        hold: Duration::from_millis(500),
        on_hang: Some(&mut on_hang),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let report: ClusterReport =
        run_with(&cfg, opts, &mut |l| eprintln!("{l}"), &AtomicBool::new(false)).expect("the run ends, hung");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let (hang, before, after, states) = seen.expect("on_hang was called");
    assert_eq!((hang.rank, hang.step, hang.node.as_str()), (1, 5, "gpu-node-02"));
    assert_eq!(
        hang.last_steps,
        vec![4, 4, 4],
        "nobody completed the step the hung rank never started"
    );
    assert!(hang.held_s >= 0.5, "{hang:?}");
    for (r, threads) in states.iter().enumerate() {
        assert!(!threads.is_empty(), "rank {r} was not running while hung");
        assert!(
            threads.iter().all(|(_, s, _)| *s == 'S'),
            "rank {r} threads not all asleep: {threads:?}"
        );
        assert!(
            after[r] - before[r] <= 5,
            "rank {r} burned {} ticks while hung",
            after[r] - before[r]
        );
    }
    let hung_main = states[1]
        .iter()
        .find(|(tid, _, _)| *tid == hang.pid)
        .map(|t| t.2.as_str());
    assert!(
        hung_main.is_some_and(|w| w.contains("pipe")),
        "the hung rank sleeps in {hung_main:?}"
    );
    let stuck = report.hung.as_ref().expect("the report says the job hung");
    assert_eq!(stuck.step, 5);
    assert!(report.ranks.iter().all(|r| r.steps == 4), "{:?}", report.ranks);
    assert!(
        report.survivors.is_empty(),
        "outlived the run: {:?}",
        report.survivors
    );
}

/// Runs `fault` on the second of three ranks; the faulty rank must be the
/// straggler (longest compute, shortest wait), the job must finish.
fn straggler(fault: Fault) -> (tempfile::TempDir, ClusterReport) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), fault, 1, 60);
    let report = run_with(
        &cfg,
        RunOptions::default(),
        &mut |l| eprintln!("{l}"),
        &AtomicBool::new(false),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", fault.name()));
    assert!(report.hung.is_none() && report.survivors.is_empty());
    assert!(report.ranks.iter().all(|r| r.steps == 60), "{:?}", report.ranks);
    let (faulty, peers): (Vec<_>, Vec<_>) = report.ranks.iter().partition(|r| r.rank == 1);
    for p in peers {
        assert!(
            faulty[0].compute_mean_ms > p.compute_mean_ms + 3.0 && faulty[0].wait_mean_ms < p.wait_mean_ms,
            "{}: the faulty rank {:?} is not the straggler against {p:?}",
            fault.name(),
            faulty[0]
        );
    }
    (dir, report)
}

#[test]
fn a_slow_rank_is_the_straggler() {
    straggler(Fault::SlowRank);
}

#[test]
fn a_starved_data_loader_makes_its_rank_the_straggler() {
    let (_dir, report) = straggler(Fault::DataloaderStarvation);
    let dataset = report.databases[0].1.with_file_name("rank1-dataset.bin");
    assert!(dataset.exists(), "{} was not written", dataset.display());
}
