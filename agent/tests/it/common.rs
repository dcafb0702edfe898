//! Harness for tests that run the real tracer on real processes.
//!
//! A [`Workload`] is one of the simulator's programs started with `--wait`:
//! it loads its libraries, reports its pid, and waits for a go line, so the
//! tracer can be attached to it first. A [`Daemon`] is the `ingero` binary
//! running `trace` or `serve`; it is ready when it writes its
//! `--ready-file` (a JSON object with its API address), waited on with a
//! deadline, and is stopped with SIGINT like a user would. Tests that need root skip with a
//! printed reason otherwise; tracer tests run one at a time ([`serial`]) so
//! their timings do not disturb each other on a small machine.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ingero_fleet::ClientTls;

pub const INGERO: &str = env!("CARGO_BIN_EXE_ingero");

/// True if running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped {test}: needs root to load eBPF programs (CI runs it as root)");
    }
    root
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the tracer-test lock for the duration of a test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A simulator program waiting to start.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
}

impl Workload {
    /// Starts `program args... --wait` with extra environment `env`.
    pub fn start(program: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .arg("--wait")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(Duration::from_secs(20))
            .context("workload never became ready")?;
        let v: serde_json::Value = serde_json::from_str(&ready)?;
        let pid = v["ready"].as_u64().context("ready line without pid")? as u32;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            lines,
            pid,
        })
    }

    /// Lets the program make its calls.
    pub fn go(&mut self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.take().context("already started")?;
        writeln!(stdin, "go")?;
        Ok(())
    }

    /// Waits for the program to finish and returns its report line.
    pub fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .context("no report from the workload")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("workload failed: {status}");
        }
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `ingero trace` or `ingero serve`.
pub struct Daemon {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    /// The database it writes or serves.
    pub db: PathBuf,
    /// What it wrote to its ready file.
    pub ready: serde_json::Value,
}

/// A fresh ready-file path beside `db` (several daemons may share a directory).
fn ready_path(db: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push(format!(".ready-{}-{n}.json", std::process::id()));
    db.with_file_name(name)
}

impl Daemon {
    /// Starts `ingero trace --db DB ARGS` and waits until it is tracing.
    pub fn trace(db: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_wrapped(&[], "trace", db, args)
    }

    /// Starts `ingero serve --db DB ARGS` and waits until it is serving.
    pub fn serve(db: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_wrapped(&[], "serve", db, args)
    }

    /// As [`Daemon::trace`] or [`Daemon::serve`], run through `wrapper`
    /// (a program and its arguments).
    pub fn spawn_wrapped(wrapper: &[&str], command: &str, db: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let ready = ready_path(db);
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(INGERO);
                c
            }
            None => Command::new(INGERO),
        };
        // Its own process group, so a wrapper's child (faketime runs the
        // agent as its child) is stopped together with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .arg(command)
            .arg("--db")
            .arg(db)
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            stderr: rx,
            log: Vec::new(),
            db: db.to_path_buf(),
            ready: serde_json::Value::Null,
        };
        daemon.ready = daemon.wait_ready(&ready, Duration::from_secs(30))?;
        Ok(daemon)
    }

    /// Waits for the ready file (or the daemon's exit, which is a failure).
    fn wait_ready(&mut self, path: &Path, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(path) {
                let _ = std::fs::remove_file(path);
                return Ok(serde_json::from_str(&text)?);
            }
            if let Some(status) = self.child.try_wait()? {
                self.log.extend(self.stderr.try_iter());
                bail!(
                    "ingero exited with {status} before it was ready; its output:\n{}",
                    self.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log.extend(self.stderr.try_iter());
        bail!(
            "ingero was not ready within {timeout:?}; its output:\n{}",
            self.log.join("\n")
        )
    }

    /// The first line printed so far that contains `text`.
    pub fn logged(&mut self, text: &str) -> Option<String> {
        self.log.extend(self.stderr.try_iter());
        self.log.iter().find(|l| l.contains(text)).cloned()
    }

    /// Where the API listens (`host:port`), from its ready file.
    pub fn api_addr(&mut self) -> anyhow::Result<String> {
        Ok(self.ready["listen"]
            .as_str()
            .context("the daemon's ready file has no API address (no --listen?)")?
            .to_owned())
    }

    /// Waits until a stderr line contains `text` (behaviour a user sees,
    /// such as a library being announced), within `timeout`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.logged(text) {
            return Ok(line);
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return Ok(line);
                    }
                }
                Err(_) => break,
            }
        }
        bail!(
            "ingero did not print '{text}' within {timeout:?}; its output:\n{}",
            self.log.join("\n")
        )
    }

    /// Takes the tracer's stdout (for `--json`).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Stops with SIGINT, as Ctrl-C would; returns everything it printed.
    pub fn stop(mut self) -> anyhow::Result<String> {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGINT) };
        let status = self.child.wait()?;
        self.log.extend(self.stderr.try_iter());
        let log = self.log.join("\n");
        if !status.success() {
            bail!("tracer exited with {status}:\n{log}");
        }
        Ok(log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group (wrapper included).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Opens a database written by the tracer.
pub fn open(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open(db)?)
}

/// One integer from a query.
pub fn scalar(conn: &rusqlite::Connection, sql: &str) -> anyhow::Result<i64> {
    Ok(conn
        .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
        .unwrap_or(0))
}

/// Runs `ingero ARGS` to completion: (exit code, stdout, stderr).
pub fn ingero(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(INGERO).args(args).stdin(Stdio::null()).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs `ingero ARGS` to completion with none of the `INGERO_*` variables
/// of the test's own environment (nor `SUDO_UID`), and `env` set instead.
pub fn ingero_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(INGERO);
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if name.starts_with("INGERO_") || name == "SUDO_UID" {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `promtool check metrics` on an exposition: an error with promtool's
/// complaints and the text when it is not clean.
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (cargo xtask setup installs Debian's prometheus package)")?;
    promtool
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Reads all of a child's stdout.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// A fresh copy of the third node of the investigation samples (the one
/// with the injected faults).
pub fn sample_db(dir: &Path) -> anyhow::Result<PathBuf> {
    sample(dir, 3)
}

/// A fresh copy of investigation sample node `n` (1..=3), in `dir`.
pub fn sample(dir: &Path, n: u32) -> anyhow::Result<PathBuf> {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../investigations/sample-gpu-node-{n:02}.db"));
    let dst = dir.join(format!("node-{n:02}.db"));
    std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(dst)
}

pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let data = std::fs::read(path)?;
    Ok(format!(
        "{:?}",
        ring::digest::digest(&ring::digest::SHA256, &data)
    ))
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A fleet PKI made with the CLI, as the README tells operators to: a
/// CA, node certificates for `gpu-node-01` .. `gpu-node-03` (and
/// 127.0.0.1), and the client certificate `oncall`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        let mut commands = vec![vec!["certs", "init-ca"]];
        for node in ["gpu-node-01", "gpu-node-02", "gpu-node-03"] {
            commands.push(vec!["certs", "issue", "--node", node, "--san", "127.0.0.1"]);
        }
        commands.push(vec!["certs", "issue", "--client", "oncall"]);
        for args in commands {
            let mut full: Vec<&str> = args.clone();
            full.extend(["--dir", dir.to_str().context("utf-8 path")?]);
            let (code, out, err) = ingero(&full)?;
            if code != 0 {
                bail!("ingero {} failed ({code}): {out}{err}", args.join(" "));
            }
        }
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The client side: this CA, the `oncall` certificate.
    pub fn client(&self) -> ClientTls {
        ClientTls {
            ca_cert: Some(self.path("ca.pem")),
            client_cert: Some(self.path("oncall.pem")),
            client_key: Some(self.path("oncall-key.pem")),
            ..ClientTls::default()
        }
    }

    /// The same as `ingero` flags.
    pub fn client_flags(&self) -> Vec<String> {
        vec![
            "--ca-cert".into(),
            self.s("ca.pem"),
            "--client-cert".into(),
            self.s("oncall.pem"),
            "--client-key".into(),
            self.s("oncall-key.pem"),
        ]
    }

    /// `--listen 127.0.0.1:0` with `node`'s certificate, requiring client
    /// certificates from this CA.
    pub fn agent_flags(&self, node: &str) -> Vec<String> {
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            self.s(&format!("{node}.pem")),
            "--tls-key".into(),
            self.s(&format!("{node}-key.pem")),
            "--ca-cert".into(),
            self.s("ca.pem"),
        ]
    }

    /// `ingero serve` on `db` as `gpu-node-03` (see [`Pki::agent_flags`]).
    pub fn serve(&self, db: &Path, extra: &[&str]) -> anyhow::Result<Daemon> {
        self.serve_as("gpu-node-03", db, extra, &[])
    }

    /// `ingero serve` on `db` with `node`'s certificate, run through
    /// `wrapper` (e.g. `faketime -f +3s`) if not empty.
    pub fn serve_as(
        &self,
        node: &str,
        db: &Path,
        extra: &[&str],
        wrapper: &[&str],
    ) -> anyhow::Result<Daemon> {
        let mut args: Vec<String> = self.agent_flags(node);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::spawn_wrapped(wrapper, "serve", db, &args)
    }
}

/// Three agents serving the three sample nodes (`gpu-node-01..03`).
pub struct SampleFleet {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub agents: Vec<Daemon>,
    pub addrs: Vec<String>,
}

impl SampleFleet {
    /// `wrappers[i]` runs agent i (e.g. under faketime).
    pub fn start(wrappers: &[&[&str]]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new(dir.path().join("pki"))?;
        let mut agents = Vec::new();
        let mut addrs = Vec::new();
        for n in 1..=3 {
            let db = sample(dir.path(), n)?;
            let wrapper = wrappers.get(n as usize - 1).copied().unwrap_or(&[]);
            let mut agent = pki.serve_as(&format!("gpu-node-{n:02}"), &db, &[], wrapper)?;
            addrs.push(agent.api_addr()?);
            agents.push(agent);
        }
        Ok(Self {
            dir,
            pki,
            agents,
            addrs,
        })
    }

    /// `--nodes ADDRS` and the client TLS flags, for all the agents.
    pub fn nodes_flags(&self) -> Vec<String> {
        let mut flags = vec!["--nodes".to_owned(), self.addrs.join(",")];
        flags.extend(self.pki.client_flags());
        flags
    }

    /// `ingero ARGS --nodes ADDRS <client TLS flags>`.
    pub fn ingero(&self, args: &[&str], addrs: &[String]) -> anyhow::Result<(i32, String, String)> {
        let nodes = addrs.join(",");
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--nodes".to_owned(), nodes]);
        full.extend(self.pki.client_flags());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        ingero(&full)
    }
}

/// A fresh copy of the merged investigation sample: three nodes
/// (`gpu-node-01..03`) in one database.
pub fn sample_cluster(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let dst = dir.join("cluster.db");
    std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(dst)
}

/// Runs `agent/tests/parquet_check.py MODE DIR` (pyarrow and DuckDB for
/// `read`, a local Spark session for `spark`) and returns what it printed.
pub fn parquet_check(mode: &str, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parquet_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(mode)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running python3 (cargo xtask setup installs duckdb, pyarrow and pyspark)")?;
    if !out.status.success() {
        bail!(
            "parquet_check.py {mode} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("parquet_check.py {mode} printed: {stdout}"))
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
