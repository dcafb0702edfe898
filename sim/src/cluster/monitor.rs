//! Follows a running job through its ranks' output: step lines (`step S
//! rank R TOTAL COMPUTE WAIT`), JSON summaries, the `stuck before step K`
//! line of a hung rank and errors on stderr.
//!
//! It prints per-interval means as every rank finishes an interval, keeps
//! every step so a run that never finishes still has per-rank figures, and
//! decides when a job is hung: a rank said it is stuck and no rank has
//! completed a step for a settling time since (the others are then blocked
//! in their synchronize, as they cannot complete that step without it).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{RankReport, SimError, node_name};

/// Summed (total, compute, wait) ms of some steps, and how many.
type StepSums = (f64, f64, f64, u64);

/// What the ranks said so far.
#[derive(Debug)]
pub(super) struct Monitor {
    steps: u64,
    report_every: u64,
    /// Per interval of `report_every` steps and rank: sums of the steps seen.
    intervals: BTreeMap<u64, Vec<StepSums>>,
    /// Per rank, (total, compute, wait) ms of every step reported.
    records: Vec<Vec<(f64, f64, f64)>>,
    summaries: Vec<Option<serde_json::Value>>,
    /// Per rank, the last step it completed (0: none).
    pub last_step: Vec<u64>,
    /// When a rank last completed a step or finished.
    last_progress: Instant,
    /// (rank, step it never started, when it said so).
    stuck: Option<(usize, u64, Instant)>,
}

impl Monitor {
    pub fn new(nodes: usize, steps: u64, report_every: u64) -> Self {
        Self {
            steps,
            report_every,
            intervals: BTreeMap::new(),
            records: vec![Vec::new(); nodes],
            summaries: vec![None; nodes],
            last_step: vec![0; nodes],
            last_progress: Instant::now(),
            stuck: None,
        }
    }

    /// Takes one line of rank `i`; returns what to show, if anything.
    pub fn line(&mut self, i: usize, line: &str) -> Result<Option<String>, SimError> {
        if let Some(rest) = line.strip_prefix("stderr: ") {
            if rest.contains("failed") {
                return Err(SimError::Failed(format!("rank {i} failed: {rest}")));
            }
            if let Some(step) = rest
                .split("stuck before step ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
            {
                self.stuck = Some((i, step, Instant::now()));
            }
            return Ok(Some(format!("  rank {i}: {rest}")));
        }
        if let Some(rest) = line.strip_prefix("step ") {
            let f: Vec<f64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if let [step, _rank, total, compute, wait] = f[..] {
                return Ok(self.step(i, step as u64, total, compute, wait));
            }
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            self.summaries[i] = Some(v);
            self.last_progress = Instant::now();
        }
        Ok(None)
    }

    fn step(&mut self, i: usize, step: u64, total: f64, compute: f64, wait: f64) -> Option<String> {
        self.records[i].push((total, compute, wait));
        self.last_step[i] = self.last_step[i].max(step);
        self.last_progress = Instant::now();
        // Means over each interval of `report_every` steps, printed once
        // every rank has finished the interval.
        let nodes = self.records.len();
        let interval = (step.max(1) - 1) / self.report_every;
        let first = interval * self.report_every + 1;
        let last = (first + self.report_every - 1).min(self.steps);
        let row = self
            .intervals
            .entry(interval)
            .or_insert_with(|| vec![(0.0, 0.0, 0.0, 0); nodes]);
        let (t, c, w, n) = &mut row[i];
        *t += total;
        *c += compute;
        *w += wait;
        *n += 1;
        if !row.iter().all(|r| r.3 == last - first + 1) {
            return None;
        }
        let cols: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(r, (t, c, w, n))| {
                let n = *n as f64;
                format!("r{r} {:.0}ms (compute {:.0}, wait {:.0})", t / n, c / n, w / n)
            })
            .collect();
        Some(format!(
            "  steps {first:>4}-{last:<4} of {} (mean per step): {}",
            self.steps,
            cols.join("  ")
        ))
    }

    /// Every rank printed its summary.
    pub fn finished(&self) -> bool {
        self.summaries.iter().all(Option::is_some)
    }

    /// Time since any rank last completed a step.
    pub fn idle(&self) -> Duration {
        self.last_progress.elapsed()
    }

    /// (rank, step) of a rank that is stuck, once no rank has completed a
    /// step for `settle` since it said so.
    pub fn hung(&self, settle: Duration) -> Option<(usize, u64)> {
        let (rank, step, since) = self.stuck?;
        let quiet_since = since.max(self.last_progress);
        (quiet_since.elapsed() >= settle).then_some((rank, step))
    }

    /// Rank `i`'s figures: its summary, or else computed from the steps it
    /// completed (a run that did not finish).
    pub fn report(&self, i: usize, pid: u32) -> RankReport {
        if let Some(v) = &self.summaries[i] {
            let ms = |k: &str| v[k].as_f64().unwrap_or(0.0);
            return RankReport {
                rank: i,
                node: node_name(i),
                pid,
                steps: v["steps"].as_u64().unwrap_or(0),
                median_ms: ms("median_ms"),
                p90_ms: ms("p90_ms"),
                compute_median_ms: ms("compute_median_ms"),
                wait_median_ms: ms("wait_median_ms"),
                compute_mean_ms: ms("compute_mean_ms"),
                wait_mean_ms: ms("wait_mean_ms"),
            };
        }
        let steps = &self.records[i];
        let column = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = steps.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (total, compute, wait) = (column(|s| s.0), column(|s| s.1), column(|s| s.2));
        let at = |v: &[f64], num: usize, den: usize| v.get(v.len() * num / den).copied().unwrap_or(0.0);
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        RankReport {
            rank: i,
            node: node_name(i),
            pid,
            steps: steps.len() as u64,
            median_ms: at(&total, 1, 2),
            p90_ms: at(&total, 9, 10),
            compute_median_ms: at(&compute, 1, 2),
            wait_median_ms: at(&wait, 1, 2),
            compute_mean_ms: mean(&compute),
            wait_mean_ms: mean(&wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_rank_makes_the_job_hung_once_steps_stop() -> Result<(), SimError> {
        let mut m = Monitor::new(2, 40, 8);
        for step in 1..=4 {
            for rank in 0..2 {
                let line = format!("step {step} rank {rank} 25.0 20.0 5.0");
                m.line(rank, &line)?;
            }
        }
        assert_eq!(m.hung(Duration::ZERO), None, "nobody is stuck");
        m.line(
            1,
            "stderr: ingero-sim-rank: rank 1: stuck before step 5 (waiting)",
        )?;
        assert_eq!(m.hung(Duration::ZERO), Some((1, 5)));
        assert_eq!(m.hung(Duration::from_secs(60)), None, "not quiet for long enough");
        let r = m.report(0, 42);
        assert_eq!((r.steps, r.median_ms, r.wait_mean_ms), (4, 25.0, 5.0));
        assert!(!m.finished());
        Ok(())
    }

    #[test]
    fn a_failure_on_stderr_is_an_error_and_intervals_print_when_complete() {
        let mut m = Monitor::new(2, 2, 2);
        assert!(m.line(0, "stderr: x: rank 0: cuInit failed (3)").is_err());
        assert_eq!(m.line(0, "step 1 rank 0 1 1 0").ok().flatten(), None);
        assert_eq!(m.line(1, "step 1 rank 1 1 1 0").ok().flatten(), None);
        assert_eq!(m.line(0, "step 2 rank 0 1 1 0").ok().flatten(), None);
        let shown = m
            .line(1, "step 2 rank 1 3 1 2")
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(
            shown.contains("steps    1-2") && shown.contains("r1 2ms"),
            "{shown}"
        );
    }
}
