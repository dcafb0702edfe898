//! The faults a simulated job can inject on one node, their scenario names,
//! and the `ingero-sim-rank` options that produce each one.
//!
//! Invariant: every fault changes the faulty rank's own behaviour only; its
//! peers see it the way real peers do, through the collectives (they wait
//! longer, or forever for `hang`).

use std::{ffi::OsString, path::Path};

use super::SimError;

/// A fault injected on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// CPU hogs pinned to the rank's CPU: the rank is preempted.
    CpuContention,
    /// Periodic large O_DIRECT checkpoint writes + fsync from the rank.
    CheckpointIo,
    /// A burst of large allocations and page faults every step.
    MemoryPressure,
    /// A slow input step: extra CPU work on the training thread before every
    /// step's batch copy (no other host stress).
    SlowRank,
    /// The rank stops before a step's collectives and never arrives (a stuck
    /// data loader); every other rank blocks in its next synchronize.
    Hang,
    /// Batches come from worker processes that read with O_DIRECT and decode
    /// slower than the rank consumes: the training thread sleeps waiting for
    /// data and launches kernels in bursts.
    DataloaderStarvation,
}

/// CPU time the `slow-rank` fault adds to every step of the rank: about 80%
/// of a healthy step's compute (~25 ms here). Not a share of the step's own
/// host work (~1.3 ms, overlapped with the GPU), which would not show. The
/// faulty rank has a CPU to itself while the healthy ranks share the others
/// (see `procs::placement`), which on 2 cores gives back about 5 ms of it: at
/// 10 ms the rank arrived only ~1 ms after the next latest, within the reach
/// of scheduling noise, and one CI run in many saw no straggler.
pub const SLOW_INPUT_US: u64 = 20_000;
/// Data loader workers of the `dataloader-starvation` fault.
pub const LOADER_WORKERS: u64 = 2;
/// CPU time a worker spends decoding one batch: the two workers, sharing the
/// rank's CPU, deliver a batch every ~45 ms, well behind a healthy step
/// (~25 ms alone, ~35 ms with 4 ranks and 4 agents on 2 cores). At 30 ms a
/// batch came about as fast as the loaded healthy steps, and one matrix run
/// in several found no straggler because there hardly was one.
pub const LOADER_DECODE_US: u64 = 45_000;
/// Step before which the `hang` rank stops, unless told otherwise (at most
/// half the run's steps).
pub const DEFAULT_HANG_STEP: u64 = 20;

impl Fault {
    /// Every fault, in the order of their names in messages.
    pub const ALL: [Fault; 6] = [
        Fault::CpuContention,
        Fault::CheckpointIo,
        Fault::MemoryPressure,
        Fault::SlowRank,
        Fault::Hang,
        Fault::DataloaderStarvation,
    ];

    /// The fault's scenario name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::CpuContention => "cpu-contention",
            Self::CheckpointIo => "checkpoint-io",
            Self::MemoryPressure => "memory-pressure",
            Self::SlowRank => "slow-rank",
            Self::Hang => "hang",
            Self::DataloaderStarvation => "dataloader-starvation",
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
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    SimError::Config(format!(
                        "unknown scenario '{name}': use none, {}, or a combination such as cpu-contention+checkpoint-io",
                        names.join(", ")
                    ))
                })
            })
            .collect()
    }

    /// The options that make `ingero-sim-rank` inject this fault. Faults
    /// that live outside the rank (CPU hogs) have none.
    pub(super) fn rank_args(self, run_dir: &Path, hang_at_step: u64) -> Vec<OsString> {
        let args: Vec<OsString> = match self {
            Self::CheckpointIo => vec![
                "--checkpoint-dir".into(),
                run_dir.into(),
                "--checkpoint-every".into(),
                "10".into(),
            ],
            Self::MemoryPressure => {
                vec![
                    "--memory-pressure-mb".into(),
                    "512".into(),
                    "--memory-every".into(),
                    "5".into(),
                ]
            }
            Self::SlowRank => vec!["--slow-input-us".into(), SLOW_INPUT_US.to_string().into()],
            Self::Hang => vec!["--hang-at-step".into(), hang_at_step.to_string().into()],
            Self::DataloaderStarvation => vec![
                "--loader-workers".into(),
                LOADER_WORKERS.to_string().into(),
                "--loader-dir".into(),
                run_dir.into(),
                "--loader-decode-us".into(),
                LOADER_DECODE_US.to_string().into(),
            ],
            Self::CpuContention => Vec::new(),
        };
        args
    }
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
        assert_eq!(
            Fault::parse_scenario("slow-rank+hang+dataloader-starvation").ok(),
            Some(vec![Fault::SlowRank, Fault::Hang, Fault::DataloaderStarvation])
        );
        let err = Fault::parse_scenario("gpu-on-fire")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("dataloader-starvation"), "{err}");
    }

    #[test]
    fn every_fault_name_parses_back() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse_scenario(f.name()).ok(), Some(vec![f]));
        }
    }
}
