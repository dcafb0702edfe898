//! The processes of a simulated run and the plumbing around them: starting
//! children that die with this process, collecting their output lines into
//! one channel, placing ranks on CPUs, and stopping everything.
//!
//! Invariant: [`Processes`] stops what it holds when dropped (ranks and hogs
//! killed, agents sent SIGINT so they commit), whatever path the run took.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use super::SimError;

/// Every process the run started; stopped on drop, whatever happened.
#[derive(Debug, Default)]
pub(super) struct Processes {
    pub ranks: Vec<Child>,
    pub hogs: Vec<Child>,
    pub agents: Vec<Child>,
    pub pids: Vec<u32>,
}

impl Processes {
    pub fn stop_workers(&mut self) {
        for c in self.ranks.iter_mut().chain(self.hogs.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT to every agent, then waits for them all (they commit first).
    pub fn stop_agents(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
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
pub(super) fn die_with_parent(cmd: &mut Command, sig: i32) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

pub(super) fn spawn(cmd: &mut Command, what: &str) -> Result<Child, SimError> {
    cmd.spawn().map_err(|source| SimError::Spawn {
        what: what.to_owned(),
        source,
    })
}

pub(super) fn free_port() -> Result<u16, SimError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SimError::Failed(format!("no free loopback port: {e}")))
}

/// Lines of a child's stream, tagged with an index (and `prefix`), into one
/// channel.
pub(super) fn forward_lines(
    source: impl std::io::Read + Send + 'static,
    index: usize,
    prefix: &'static str,
    tx: mpsc::Sender<(usize, String)>,
) {
    std::thread::spawn(move || {
        // Reads to the end even when nobody listens any more: closing the
        // pipe early would make the child's next write fail (EPIPE).
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            let _ = tx.send((index, format!("{prefix}{line}")));
        }
    });
}

/// CPU for each rank: the faulty one alone on the last CPU (when there is
/// more than one), the others round-robin over the rest.
pub(super) fn placement(nodes: usize, faulty: Option<usize>, cpus: usize) -> Vec<usize> {
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

/// Waits until each of `count` sources sent a line containing `needle`;
/// returns those lines, in source order.
pub(super) fn wait_for_line(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faulty_rank_gets_a_cpu_of_its_own() {
        assert_eq!(placement(4, Some(2), 2), vec![0, 0, 1, 0]);
        assert_eq!(placement(4, None, 2), vec![0, 1, 0, 1]);
        assert_eq!(placement(3, Some(0), 1), vec![0, 0, 0]);
        assert_eq!(placement(2, Some(1), 4), vec![0, 3]);
    }
}
