//! A simulated multi-node training job on one machine, traced for real.
//!
//! [`run`] starts N ranks of `ingero-sim-rank` the way torchrun would (one
//! rank per simulated node), one `ingero trace --node gpu-node-0K --pid
//! <rank>` agent per rank, injects the requested faults on one node, lets
//! the job train, and stops everything. Each agent writes its own database.
//!
//! Placement on a small machine: the faulty node's rank gets a CPU of its
//! own (with its CPU hogs or data loader workers, when there are some); the
//! other ranks share the remaining CPUs. So a fault changes that node's
//! behaviour only, and its peers see it the way real peers do: waiting in
//! the collectives.
//!
//! A job that cannot finish ends cleanly too. With the `hang` fault the
//! faulty rank stops before a step and the others block in their next
//! synchronize: once no rank has completed a step for a few seconds the run
//! is declared hung, the agents keep tracing for [`RunOptions::hold`], then
//! [`RunOptions::on_hang`] is called (ranks still stuck, agents still
//! live), then everything is stopped and [`ClusterReport::hung`] says what
//! happened; that is a result, not an error. Any other run in which no rank
//! reports anything for [`RunOptions::stall_timeout`] fails.
//!
//! Cleanup is unconditional: a `Processes` guard kills ranks and hogs and
//! stops agents with SIGINT (so they commit what they recorded) on success,
//! error or interruption; every child also asks the kernel to signal it if
//! this process dies. [`ClusterReport::survivors`] lists any process that
//! outlived the run (it should be empty).

mod fault;
mod monitor;
mod procs;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

pub use fault::{DEFAULT_HANG_STEP, Fault, LOADER_DECODE_US, LOADER_WORKERS, SLOW_INPUT_US};
use monitor::Monitor;
use procs::{Processes, die_with_parent, forward_lines, free_port, placement, spawn, wait_for_line};

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid (nothing was started).
    #[error("{0}")]
    Config(String),
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// Why it could not.
        source: std::io::Error,
    },
    /// A process failed, or the run made no progress.
    #[error("{0}")]
    Failed(String),
    /// The stop flag was set.
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
    /// Training steps per rank.
    pub steps: u64,
    /// Faults injected on [`Self::faulty_node`].
    pub faults: Vec<Fault>,
    /// 0-based index of the node that gets the faults.
    pub faulty_node: usize,
    /// Where databases, logs, checkpoint and dataset files go.
    pub run_dir: PathBuf,
    /// The real CUDA runtime, if available (runtime-API events).
    pub cudart: Option<PathBuf>,
    /// Extra arguments for every agent (e.g. `--listen`).
    pub agent_args: Vec<Vec<String>>,
}

/// How [`run_with`] treats a job that stops making progress.
pub struct RunOptions<'a> {
    /// Step before which the `hang` rank stops ([`DEFAULT_HANG_STEP`], at
    /// most half the steps, if not given; at most the steps).
    pub hang_at_step: Option<u64>,
    /// How long the agents keep tracing a hung job before [`Self::on_hang`]
    /// and the teardown.
    pub hold: Duration,
    /// Called once a job is hung and [`Self::hold`] has passed, while its
    /// ranks are still stuck and the agents still tracing (e.g. to query
    /// their live API); the teardown starts when it returns.
    pub on_hang: Option<&'a mut dyn FnMut(&Hang)>,
    /// A run in which no rank completes a step for this long fails (a
    /// `hang` run is declared hung well before).
    pub stall_timeout: Duration,
    /// Trace every rank with its own agent (the default). Without, the job
    /// runs untraced, as the baseline of the overhead benchmark: no agent
    /// starts and [`ClusterReport::databases`] is empty.
    pub trace: bool,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        Self {
            hang_at_step: None,
            hold: Duration::from_secs(2),
            on_hang: None,
            stall_timeout: Duration::from_secs(60),
            trace: true,
        }
    }
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("hang_at_step", &self.hang_at_step)
            .field("hold", &self.hold)
            .field("on_hang", &self.on_hang.as_ref().map(|_| "FnMut"))
            .field("stall_timeout", &self.stall_timeout)
            .field("trace", &self.trace)
            .finish()
    }
}

/// No rank completed a step for this long after one said it is stuck: the
/// others are blocked (a healthy step takes tens of milliseconds).
const HANG_SETTLE: Duration = Duration::from_secs(2);

/// What one rank measured about itself (over the steps it completed, when
/// the job did not finish).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RankReport {
    /// 0-based rank.
    pub rank: usize,
    /// Its node name.
    pub node: String,
    /// Its process id.
    pub pid: u32,
    /// Steps it completed.
    pub steps: u64,
    /// Median step time, ms.
    pub median_ms: f64,
    /// 90th percentile step time, ms.
    pub p90_ms: f64,
    /// Median time to the end of its own compute, ms.
    pub compute_median_ms: f64,
    /// Median time in the gradient all-reduce (peers + transfer), ms.
    pub wait_median_ms: f64,
    /// Mean compute time, ms.
    pub compute_mean_ms: f64,
    /// Mean all-reduce wait, ms.
    pub wait_mean_ms: f64,
}

/// A job that stopped making progress (the `hang` fault).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hang {
    /// The rank that stopped, 0-based.
    pub rank: usize,
    /// Its node.
    pub node: String,
    /// Its process id.
    pub pid: u32,
    /// The step it never started (so nobody completed it).
    pub step: u64,
    /// Every rank's last completed step.
    pub last_steps: Vec<u64>,
    /// Process ids of every rank, in rank order (all still running when
    /// [`RunOptions::on_hang`] is called).
    pub pids: Vec<u32>,
    /// (node, database) per agent, still being written while hung.
    pub databases: Vec<(String, PathBuf)>,
    /// Seconds from the start of training to the hang being declared.
    pub detected_after_s: f64,
    /// Seconds the agents traced the hung job before the teardown.
    pub held_s: f64,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterReport {
    /// Per rank, in rank order.
    pub ranks: Vec<RankReport>,
    /// (node, database) per agent.
    pub databases: Vec<(String, PathBuf)>,
    /// Processes started by the run that still exist afterwards.
    pub survivors: Vec<u32>,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Set when the job hung (and was stopped) instead of finishing.
    pub hung: Option<Hang>,
}

/// Node name of rank `i` (0-based): `gpu-node-01`, ...
#[must_use]
pub fn node_name(i: usize) -> String {
    format!("gpu-node-{:02}", i + 1)
}

/// Runs the job with the default [`RunOptions`]. `progress` receives
/// human-readable lines as it goes; `stop` set (e.g. by a Ctrl-C handler)
/// ends the run early, cleanly.
pub fn run(
    cfg: &ClusterConfig,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<ClusterReport, SimError> {
    run_with(cfg, RunOptions::default(), progress, stop)
}

fn check(cfg: &ClusterConfig, opts: &RunOptions<'_>) -> Result<u64, SimError> {
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
    let hang_at = opts
        .hang_at_step
        .unwrap_or_else(|| DEFAULT_HANG_STEP.min(cfg.steps / 2).max(1));
    if cfg.faults.contains(&Fault::Hang) && (hang_at == 0 || hang_at > cfg.steps) {
        return Err(SimError::Config(format!(
            "the hang step ({hang_at}) must be between 1 and the steps ({})",
            cfg.steps
        )));
    }
    Ok(hang_at)
}

/// Starts the ranks (waiting for the go line); returns their stdins.
fn start_ranks(
    cfg: &ClusterConfig,
    hang_at: u64,
    procs: &mut Processes,
    tx: &mpsc::Sender<(usize, String)>,
) -> Result<(Vec<ChildStdin>, Vec<usize>), SimError> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let faulty = (!cfg.faults.is_empty()).then_some(cfg.faulty_node);
    let cpu_of = placement(cfg.nodes, faulty, cpus);
    let master_port = free_port()?.to_string();
    let mut stdins = Vec::new();
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
                cmd.args(f.rank_args(&cfg.run_dir, hang_at));
            }
        }
        let mut child = spawn(&mut cmd, "a rank")?;
        procs.pids.push(child.id());
        let missing = || SimError::Failed("no stdio for a rank".into());
        forward_lines(child.stdout.take().ok_or_else(missing)?, i, "", tx.clone());
        forward_lines(
            child.stderr.take().ok_or_else(missing)?,
            i,
            "stderr: ",
            tx.clone(),
        );
        stdins.push(child.stdin.take().ok_or_else(missing)?);
        procs.ranks.push(child);
    }
    Ok((stdins, cpu_of))
}

/// Starts one agent per rank pid; returns (node, database) per agent.
fn start_agents(
    cfg: &ClusterConfig,
    pids: &[u32],
    procs: &mut Processes,
    stop: &AtomicBool,
) -> Result<Vec<(String, PathBuf)>, SimError> {
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
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| SimError::Failed("no stderr for an agent".into()))?;
        forward_lines(stderr, i, "", agent_tx.clone());
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
    Ok(databases)
}

/// Runs the job: ranks, agents, faults, training until every rank finished
/// (or the job hung), then the teardown. See the module documentation.
pub fn run_with(
    cfg: &ClusterConfig,
    mut opts: RunOptions<'_>,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<ClusterReport, SimError> {
    let hang_at = check(cfg, &opts)?;
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(|e| SimError::Failed(format!("cannot create {}: {e}", cfg.run_dir.display())))?;
    let started = Instant::now();
    let faulty = (!cfg.faults.is_empty()).then_some(cfg.faulty_node);
    let mut procs = Processes::default();

    let (rank_tx, rank_rx) = mpsc::channel();
    let (stdins, cpu_of) = start_ranks(cfg, hang_at, &mut procs, &rank_tx)?;
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
    let databases = if opts.trace {
        start_agents(cfg, &pids, &mut procs, stop)?
    } else {
        Vec::new()
    };
    progress(&format!(
        "{} ranks traced by {} agents; faults: {} on {}",
        cfg.nodes,
        databases.len(),
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
    let training = Instant::now();
    let mut monitor = Monitor::new(cfg.nodes, cfg.steps, (cfg.steps / 5).max(1));
    let mut hung = None;
    while !monitor.finished() {
        if stop.load(Ordering::Relaxed) {
            return Err(SimError::Interrupted);
        }
        if let Some((rank, step)) = monitor.hung(HANG_SETTLE) {
            let mut hang = Hang {
                rank,
                node: node_name(rank),
                pid: pids[rank],
                step,
                last_steps: monitor.last_step.clone(),
                pids: pids.clone(),
                databases: databases.clone(),
                detected_after_s: training.elapsed().as_secs_f64(),
                held_s: 0.0,
            };
            hold_hung(&mut hang, &mut opts, progress, stop)?;
            hung = Some(hang);
            break;
        }
        if monitor.idle() > opts.stall_timeout {
            return Err(SimError::Failed(format!(
                "no rank completed a step for {} s (last steps {:?})",
                opts.stall_timeout.as_secs(),
                monitor.last_step
            )));
        }
        match rank_rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, line)) => {
                if let Some(shown) = monitor.line(i, &line)? {
                    progress(&shown);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SimError::Failed("the ranks exited before finishing".into()));
            }
        }
    }
    procs.stop_workers();
    progress(if hung.is_some() {
        "hung ranks stopped; stopping the agents (each commits what it recorded)"
    } else {
        "training done; stopping the agents (each commits what it recorded)"
    });
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
        ranks: (0..cfg.nodes).map(|i| monitor.report(i, pids[i])).collect(),
        databases,
        survivors,
        seconds: started.elapsed().as_secs_f64(),
        hung,
    })
}

/// The job is hung: keep the agents tracing for the hold, then hand over to
/// the caller's hook, ranks still stuck.
fn hold_hung(
    hang: &mut Hang,
    opts: &mut RunOptions<'_>,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<(), SimError> {
    let others: Vec<String> = hang
        .last_steps
        .iter()
        .enumerate()
        .filter(|(r, _)| *r != hang.rank)
        .map(|(r, s)| format!("r{r} after step {s}"))
        .collect();
    progress(&format!(
        "job hung: rank {} ({}) never started step {}; the others are blocked in their synchronize ({}); agents keep tracing for {:.1} s",
        hang.rank,
        hang.node,
        hang.step,
        others.join(", "),
        opts.hold.as_secs_f64()
    ));
    let held = Instant::now();
    while held.elapsed() < opts.hold {
        if stop.load(Ordering::Relaxed) {
            return Err(SimError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(50).min(opts.hold.saturating_sub(held.elapsed())));
    }
    hang.held_s = held.elapsed().as_secs_f64();
    if let Some(hook) = opts.on_hang.as_mut() {
        hook(hang);
    }
    Ok(())
}
