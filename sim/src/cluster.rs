//! A simulated multi-node training job on one machine, traced for real.
//!
//! [`run`] starts N ranks of `ingero-sim-rank` the way torchrun would (one
//! rank per simulated node), one `ingero trace --node gpu-node-0K --pid
//! <rank>` agent per rank, injects the requested faults on one node, lets
//! the job train, and stops everything. Each agent writes its own database.
//!
//! Placement on a small machine: the faulty node's rank gets a CPU of its
//! own (with its CPU hogs, when there are some); the other ranks share the
//! remaining CPUs. So a fault changes that node's behaviour only, and its
//! peers see it the way real peers do: waiting in the all-reduce.
//!
//! Cleanup is unconditional: a `Processes` guard kills ranks and hogs and
//! stops agents with SIGINT (so they commit what they recorded) on success,
//! error or interruption; every child also asks the kernel to signal it if
//! this process dies. [`ClusterReport::survivors`] lists any process that
//! outlived the run (it should be empty).

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// A fault injected on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// CPU hogs pinned to the rank's CPU: the rank is preempted.
    CpuContention,
    /// Periodic large O_DIRECT checkpoint writes + fsync from the rank.
    CheckpointIo,
    /// A burst of large allocations and page faults every step.
    MemoryPressure,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::CpuContention, Fault::CheckpointIo, Fault::MemoryPressure];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::CpuContention => "cpu-contention",
            Self::CheckpointIo => "checkpoint-io",
            Self::MemoryPressure => "memory-pressure",
        }
    }

    /// Parses a scenario: `none`, one fault name, or several joined by `+`.
    pub fn parse_scenario(text: &str) -> Result<Vec<Fault>, SimError> {
        if text == "none" {
            return Ok(Vec::new());
        }
        text.split('+')
            .map(|name| {
                Fault::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
                    SimError::Config(format!(
                        "unknown scenario '{name}': use none, cpu-contention, checkpoint-io, memory-pressure, or a combination such as cpu-contention+checkpoint-io"
                    ))
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Config(String),
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Interrupted,
}

/// The job to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `ingero` binary.
    pub ingero: PathBuf,
    /// Number of nodes (one rank each).
    pub nodes: usize,
    pub steps: u64,
    pub faults: Vec<Fault>,
    /// 0-based index of the node that gets the faults.
    pub faulty_node: usize,
    /// Where databases, logs and checkpoint files go.
    pub run_dir: PathBuf,
    /// The real CUDA runtime, if available (runtime-API events).
    pub cudart: Option<PathBuf>,
    /// Extra arguments for every agent (e.g. `--listen`).
    pub agent_args: Vec<Vec<String>>,
}

/// What one rank measured about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RankReport {
    pub rank: usize,
    pub node: String,
    pub pid: u32,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub compute_median_ms: f64,
    pub wait_median_ms: f64,
    pub compute_mean_ms: f64,
    pub wait_mean_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterReport {
    pub ranks: Vec<RankReport>,
    /// (node, database) per agent.
    pub databases: Vec<(String, PathBuf)>,
    /// Processes started by the run that still exist afterwards.
    pub survivors: Vec<u32>,
    pub seconds: f64,
}

/// Summed (total, compute, wait) ms of some steps, and how many.
type StepSums = (f64, f64, f64, u64);

/// Node name of rank `i` (0-based): `gpu-node-01`, ...
#[must_use]
pub fn node_name(i: usize) -> String {
    format!("gpu-node-{:02}", i + 1)
}

/// Every process the run started; stopped on drop, whatever happened.
#[derive(Debug, Default)]
struct Processes {
    ranks: Vec<Child>,
    hogs: Vec<Child>,
    agents: Vec<Child>,
    pids: Vec<u32>,
}

impl Processes {
    fn stop_workers(&mut self) {
        for c in self.ranks.iter_mut().chain(self.hogs.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT to every agent, then waits for them all (they commit first).
    fn stop_agents(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
        for a in &self.agents {
            signal(a.id(), libc::SIGINT);
        }
        self.agents
            .iter_mut()
            .filter_map(|a| Some((a.id(), a.wait().ok()?)))
            .collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_workers();
        self.stop_agents();
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: sending a signal to a child we started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Asks the kernel to send `sig` to the child when this process dies.
fn die_with_parent(cmd: &mut Command, sig: i32) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Child, SimError> {
    cmd.spawn().map_err(|source| SimError::Spawn {
        what: what.to_owned(),
        source,
    })
}

fn free_port() -> Result<u16, SimError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SimError::Failed(format!("no free loopback port: {e}")))
}

/// Lines of a child's stream, tagged with an index, into one channel.
fn forward_lines(
    source: impl std::io::Read + Send + 'static,
    index: usize,
    tx: mpsc::Sender<(usize, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            if tx.send((index, line)).is_err() {
                break;
            }
        }
    });
}

/// CPU for each rank: the faulty one alone on the last CPU (when there is
/// more than one), the others round-robin over the rest.
fn placement(nodes: usize, faulty: Option<usize>, cpus: usize) -> Vec<usize> {
    let shared = match faulty {
        Some(_) if cpus > 1 => cpus - 1,
        _ => cpus,
    };
    let mut next = 0;
    (0..nodes)
        .map(|i| {
            if faulty == Some(i) && cpus > 1 {
                cpus - 1
            } else {
                let cpu = next % shared.max(1);
                next += 1;
                cpu
            }
        })
        .collect()
}

fn wait_for_line(
    rx: &mpsc::Receiver<(usize, String)>,
    count: usize,
    needle: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Vec<String>, SimError> {
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Option<String>> = vec![None; count];
    let mut seen: Vec<String> = Vec::new();
    while found.iter().any(Option::is_none) {
        if stop.load(Ordering::Relaxed) {
            return Err(SimError::Interrupted);
        }
        let left = deadline.checked_duration_since(Instant::now()).ok_or_else(|| {
            SimError::Failed(format!("timed out waiting for '{needle}': {}", seen.join(" | ")))
        })?;
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok((i, line)) => {
                if line.contains(needle) {
                    found[i] = Some(line);
                } else if found[i].is_none() {
                    seen.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SimError::Failed(format!(
                    "a process exited before '{needle}': {}",
                    seen.join(" | ")
                )));
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// Runs the job. `progress` receives human-readable lines as it goes;
/// `stop` set (e.g. by a Ctrl-C handler) ends the run early, cleanly.
pub fn run(
    cfg: &ClusterConfig,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<ClusterReport, SimError> {
    if cfg.nodes == 0 || cfg.nodes > 16 {
        return Err(SimError::Config("--nodes must be between 1 and 16".into()));
    }
    if !cfg.faults.is_empty() && cfg.faulty_node >= cfg.nodes {
        return Err(SimError::Config(format!(
            "the faulty node ({}) must be one of the {} nodes",
            cfg.faulty_node + 1,
            cfg.nodes
        )));
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(|e| SimError::Failed(format!("cannot create {}: {e}", cfg.run_dir.display())))?;
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let faulty = (!cfg.faults.is_empty()).then_some(cfg.faulty_node);
    let cpu_of = placement(cfg.nodes, faulty, cpus);
    let master_port = free_port()?.to_string();
    let report_every = (cfg.steps / 5).max(1);
    let mut procs = Processes::default();

    // Ranks, waiting for the go line.
    let (rank_tx, rank_rx) = mpsc::channel();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    for (i, cpu) in cpu_of.iter().enumerate() {
        let mut cmd = Command::new(crate::rank());
        cmd.env("RANK", i.to_string())
            .env("LOCAL_RANK", "0")
            .env("WORLD_SIZE", cfg.nodes.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &master_port)
            // A launch costs the driver some CPU time; 10 us is typical.
            .env("INGERO_SIM_LAUNCH_NS", "10000")
            .args([
                "--steps",
                &cfg.steps.to_string(),
                "--cpu",
                &cpu.to_string(),
                "--wait",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cudart) = &cfg.cudart {
            cmd.arg("--cudart").arg(cudart);
        }
        if faulty == Some(i) {
            for f in &cfg.faults {
                match f {
                    Fault::CheckpointIo => {
                        cmd.arg("--checkpoint-dir")
                            .arg(&cfg.run_dir)
                            .args(["--checkpoint-every", "10"]);
                    }
                    Fault::MemoryPressure => {
                        cmd.args(["--memory-pressure-mb", "512", "--memory-every", "5"]);
                    }
                    Fault::CpuContention => {}
                }
            }
        }
        let mut child = spawn(&mut cmd, "a rank")?;
        procs.pids.push(child.id());
        forward_lines(
            child
                .stdout
                .take()
                .ok_or_else(|| SimError::Failed("no stdout".into()))?,
            i,
            rank_tx.clone(),
        );
        let log_tx = rank_tx.clone();
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| SimError::Failed("no stderr".into()))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send((i, format!("stderr: {line}")));
            }
        });
        stdins.push(
            child
                .stdin
                .take()
                .ok_or_else(|| SimError::Failed("no stdin".into()))?,
        );
        procs.ranks.push(child);
    }
    drop(rank_tx);
    let ready = wait_for_line(&rank_rx, cfg.nodes, "\"ready\"", Duration::from_secs(30), stop)?;
    let pids: Vec<u32> = ready
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["ready"].as_u64())
                .map(|p| p as u32)
                .ok_or_else(|| SimError::Failed(format!("bad ready line: {l}")))
        })
        .collect::<Result<_, _>>()?;

    // One agent per rank.
    let (agent_tx, agent_rx) = mpsc::channel();
    let mut databases = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let node = node_name(i);
        let db = cfg.run_dir.join(format!("{node}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let mut cmd = Command::new(&cfg.ingero);
        cmd.args(["trace", "-q", "--node", &node, "--pid", &pid.to_string(), "--db"])
            .arg(&db)
            .args(cfg.agent_args.get(i).cloned().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd, libc::SIGINT);
        let mut child = spawn(&mut cmd, "an ingero agent")?;
        procs.pids.push(child.id());
        forward_lines(
            child
                .stderr
                .take()
                .ok_or_else(|| SimError::Failed("no stderr".into()))?,
            i,
            agent_tx.clone(),
        );
        procs.agents.push(child);
        databases.push((node, db));
    }
    drop(agent_tx);
    wait_for_line(
        &agent_rx,
        cfg.nodes,
        "Ctrl-C to stop",
        Duration::from_secs(60),
        stop,
    )?;
    progress(&format!(
        "{} ranks traced by {} agents; faults: {} on {}",
        cfg.nodes,
        cfg.nodes,
        if cfg.faults.is_empty() {
            "none".to_owned()
        } else {
            cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join("+")
        },
        faulty.map_or_else(|| "no node".to_owned(), node_name)
    ));

    if let Some(i) = faulty.filter(|_| cfg.faults.contains(&Fault::CpuContention)) {
        for _ in 0..2 {
            let mut cmd = Command::new(crate::rank());
            cmd.args(["--hog", "--cpu", &cpu_of[i].to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let hog = spawn(&mut cmd, "a CPU hog")?;
            procs.pids.push(hog.id());
            procs.hogs.push(hog);
        }
    }

    for mut stdin in stdins {
        writeln!(stdin, "go").map_err(|e| SimError::Failed(format!("cannot start a rank: {e}")))?;
    }
    let mut reports: Vec<Option<RankReport>> = vec![None; cfg.nodes];
    // Per interval of steps and rank: summed (total, compute, wait) and steps seen.
    let mut reported: std::collections::BTreeMap<u64, Vec<StepSums>> = std::collections::BTreeMap::default();
    while reports.iter().any(Option::is_none) {
        if stop.load(Ordering::Relaxed) {
            return Err(SimError::Interrupted);
        }
        let (i, line) = match rank_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(x) => x,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SimError::Failed("the ranks exited before finishing".into()));
            }
        };
        if let Some(rest) = line.strip_prefix("stderr: ") {
            progress(&format!("  rank {i}: {rest}"));
            if rest.contains("failed") {
                return Err(SimError::Failed(format!("rank {i} failed: {rest}")));
            }
        } else if let Some(rest) = line.strip_prefix("step ") {
            let f: Vec<f64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if let [step, _rank, total, compute, wait] = f[..] {
                // Means over each interval of `report_every` steps, printed
                // once every rank has finished the interval.
                let interval = (step as u64 - 1) / report_every;
                let first = interval * report_every + 1;
                let last = (first + report_every - 1).min(cfg.steps);
                let row = reported
                    .entry(interval)
                    .or_insert_with(|| vec![(0.0, 0.0, 0.0, 0); cfg.nodes]);
                let (t, c, w, n) = &mut row[i];
                *t += total;
                *c += compute;
                *w += wait;
                *n += 1;
                if row.iter().all(|r| r.3 == last - first + 1) {
                    let cols: Vec<String> = row
                        .iter()
                        .enumerate()
                        .map(|(r, (t, c, w, n))| {
                            let n = *n as f64;
                            format!("r{r} {:.0}ms (compute {:.0}, wait {:.0})", t / n, c / n, w / n)
                        })
                        .collect();
                    progress(&format!(
                        "  steps {first:>4}-{last:<4} of {} (mean per step): {}",
                        cfg.steps,
                        cols.join("  ")
                    ));
                }
            }
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            let ms = |k: &str| v[k].as_f64().unwrap_or(0.0);
            reports[i] = Some(RankReport {
                rank: i,
                node: node_name(i),
                pid: pids[i],
                median_ms: ms("median_ms"),
                p90_ms: ms("p90_ms"),
                compute_median_ms: ms("compute_median_ms"),
                wait_median_ms: ms("wait_median_ms"),
                compute_mean_ms: ms("compute_mean_ms"),
                wait_mean_ms: ms("wait_mean_ms"),
            });
        }
    }
    procs.stop_workers();
    progress("training done; stopping the agents (each commits what it recorded)");
    for (pid, status) in procs.stop_agents() {
        if !status.success() {
            return Err(SimError::Failed(format!("agent {pid} exited with {status}")));
        }
    }
    let all_pids = std::mem::take(&mut procs.pids);
    drop(procs);
    let survivors = all_pids
        .into_iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    Ok(ClusterReport {
        ranks: reports.into_iter().flatten().collect(),
        databases,
        survivors,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse() {
        assert_eq!(Fault::parse_scenario("none").ok(), Some(vec![]));
        assert_eq!(
            Fault::parse_scenario("cpu-contention+checkpoint-io").ok(),
            Some(vec![Fault::CpuContention, Fault::CheckpointIo])
        );
        assert!(Fault::parse_scenario("gpu-on-fire").is_err());
    }

    #[test]
    fn the_faulty_rank_gets_a_cpu_of_its_own() {
        assert_eq!(placement(4, Some(2), 2), vec![0, 0, 1, 0]);
        assert_eq!(placement(4, None, 2), vec![0, 1, 0, 1]);
        assert_eq!(placement(3, Some(0), 1), vec![0, 0, 0]);
        assert_eq!(placement(2, Some(1), 4), vec![0, 3]);
    }
}
