//! What `/metrics` counts about traced work, keyed by bounded labels.
//!
//! A [`Registry`] takes one [`Sample`] per event (from the live pipeline or
//! from a database row) and keeps, per *target* (node and rank) and per
//! catalog operation: a latency [`Histogram`] and a byte count. Calls of
//! every API source of the catalog (every source but host and block I/O:
//! the CUDA runtime and driver today, collectives once a source for them
//! is added) get latency histograms; `sched_switch` events get off-CPU
//! time by state (preempted, blocked, or unknown for databases that do not
//! record it); block I/O requests get a latency histogram and bytes.
//!
//! Invariants, so the number of series is bounded by construction:
//! operations not in the catalog are counted in the per-source event
//! totals only; no pid, tid, pointer or other caller-controlled value
//! becomes a label; at most [`MAX_TARGETS`] (node, rank) pairs are kept,
//! and samples of any further pair are added to one overflow target
//! (`rank="other"` on the registry's own node).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use agent_common::catalog::{arg0_is_bytes, host_op, op_info, source};

use super::{histogram::Histogram, is_call_source};

/// Most (node, rank) pairs with their own series; more share one overflow
/// target. Enough for a merged database of 8 nodes x 7 GPUs, or 63 nodes
/// of one rank each.
pub const MAX_TARGETS: usize = 64;

/// The `rank` label of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rank {
    /// The process has no `RANK` in its environment.
    None,
    /// The process's `RANK`.
    Known(i64),
    /// Samples beyond [`MAX_TARGETS`] pairs.
    Other,
}

impl Rank {
    /// The label value: the number, `none` or `other`.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Known(r) => r.to_string(),
            Self::Other => "other".into(),
        }
    }
}

/// One set of `node` and `rank` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Node the events were recorded on.
    pub node: String,
    /// Rank of the process that made them.
    pub rank: Rank,
}

/// Why a traced thread was off its CPU (`sched_switch` `arg0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OffCpuState {
    /// Switched out while still runnable: waiting for a CPU.
    Preempted,
    /// Switched out because it blocked (a lock, a sleep, I/O, a peer).
    Blocked,
    /// The database does not say (other tracers' databases).
    Unknown,
}

impl OffCpuState {
    /// The `state` label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Preempted => "preempted",
            Self::Blocked => "blocked",
            Self::Unknown => "unknown",
        }
    }
}

/// Which series a sample adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Catalog source.
    pub source: u8,
    /// Catalog operation.
    pub op: u8,
    /// Off-CPU state of `sched_switch` series; `None` for the others.
    pub state: Option<OffCpuState>,
    /// Index into [`Registry::targets`].
    pub target: u16,
}

/// What one series has counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    /// Durations (call time, off-CPU time, request time).
    pub latency: Histogram,
    /// Bytes copied, allocated or transferred (operations whose `arg0` is a size).
    pub bytes: u64,
}

/// One event as the registry sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// Node that recorded it (empty: the registry's own node).
    pub node: &'a str,
    /// Rank of the process, if known.
    pub rank: Option<i64>,
    /// Catalog source.
    pub source: u8,
    /// Catalog operation.
    pub op: u8,
    /// Duration, ns.
    pub duration_ns: u64,
    /// `arg0`, in bytes for block I/O (converted from sectors by the caller
    /// where a database stores sectors).
    pub arg0: u64,
}

/// The counters behind the traced-work metrics; see the module documentation.
#[derive(Debug, Clone)]
pub struct Registry {
    node: String,
    preempt_flag: bool,
    targets: Vec<Target>,
    index: HashMap<String, HashMap<Option<i64>, u16>>,
    overflow: Option<u16>,
    /// The last target looked up: a live pipeline sees one node and
    /// mostly one rank, so most lookups stop here.
    last: Option<(Option<i64>, u16)>,
    series: HashMap<SeriesKey, Series>,
    events: BTreeMap<u8, u64>,
}

impl Registry {
    /// An empty registry for the agent of `node`; `preempt_flag`: whether
    /// `sched_switch` `arg0` says preempted (1) or blocked (0).
    #[must_use]
    pub fn new(node: &str, preempt_flag: bool) -> Self {
        Self {
            node: node.to_owned(),
            preempt_flag,
            targets: Vec::new(),
            index: HashMap::new(),
            overflow: None,
            last: None,
            series: HashMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Counts one event.
    pub fn observe(&mut self, s: &Sample<'_>) {
        *self.events.entry(s.source).or_default() += 1;
        if op_info(s.source, s.op).is_none() {
            return;
        }
        let state = match s.source {
            source::HOST if s.op == host_op::SCHED_SWITCH => Some(if !self.preempt_flag {
                OffCpuState::Unknown
            } else if s.arg0 == 1 {
                OffCpuState::Preempted
            } else {
                OffCpuState::Blocked
            }),
            source::IO => None,
            src if is_call_source(src) => None,
            _ => return,
        };
        let target = self.target(s.node, s.rank);
        let series = self
            .series
            .entry(SeriesKey {
                source: s.source,
                op: s.op,
                state,
                target,
            })
            .or_default();
        series.latency.observe(s.duration_ns);
        if arg0_is_bytes(s.source, s.op) {
            series.bytes = series.bytes.saturating_add(s.arg0);
        }
    }

    /// The index of `(node, rank)`, made on first sight while there is
    /// room, else the overflow target's.
    fn target(&mut self, node: &str, rank: Option<i64>) -> u16 {
        if let Some((last_rank, i)) = self.last
            && last_rank == rank
            && self.targets[usize::from(i)].node == if node.is_empty() { &self.node } else { node }
        {
            return i;
        }
        let i = self.lookup(node, rank);
        // The overflow target's node is not the sample's: never cached.
        if self.overflow != Some(i) {
            self.last = Some((rank, i));
        }
        i
    }

    fn lookup(&mut self, node: &str, rank: Option<i64>) -> u16 {
        let node = if node.is_empty() { self.node.as_str() } else { node };
        if let Some(&i) = self.index.get(node).and_then(|m| m.get(&rank)) {
            return i;
        }
        if self.targets.len() >= MAX_TARGETS - 1 {
            if let Some(i) = self.overflow {
                return i;
            }
            let i = self.targets.len() as u16;
            self.targets.push(Target {
                node: self.node.clone(),
                rank: Rank::Other,
            });
            self.overflow = Some(i);
            return i;
        }
        let i = self.targets.len() as u16;
        self.targets.push(Target {
            node: node.to_owned(),
            rank: rank.map_or(Rank::None, Rank::Known),
        });
        self.index.entry(node.to_owned()).or_default().insert(rank, i);
        i
    }

    /// The (node, rank) pairs; [`SeriesKey::target`] indexes this.
    #[must_use]
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Every series, ordered by source, operation, state and target.
    #[must_use]
    pub fn sorted_series(&self) -> Vec<(&SeriesKey, &Series)> {
        let mut all: Vec<_> = self.series.iter().collect();
        all.sort_by_key(|(k, _)| **k);
        all
    }

    /// Events counted per source (every event, catalogued or not).
    #[must_use]
    pub fn events_by_source(&self) -> &BTreeMap<u8, u64> {
        &self.events
    }
}

/// The latest copy of a registry, handed from the one thread that
/// updates it to the threads that render it.
#[derive(Debug)]
pub struct Published(Mutex<Arc<Registry>>);

impl Default for Published {
    fn default() -> Self {
        Self::new("")
    }
}

impl Published {
    /// Starts with an empty registry of `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self(Mutex::new(Arc::new(Registry::new(node, true))))
    }

    /// Replaces the copy with the current state of `registry`.
    pub fn publish(&self, registry: &Registry) {
        let copy = Arc::new(registry.clone());
        if let Ok(mut latest) = self.0.lock() {
            *latest = copy;
        }
    }

    /// The latest copy.
    #[must_use]
    pub fn latest(&self) -> Arc<Registry> {
        self.0
            .lock()
            .map_or_else(|_| Arc::new(Registry::new("", true)), |r| Arc::clone(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::catalog::{cuda_op, driver_op, io_op};

    fn sample(node: &str, rank: Option<i64>, source: u8, op: u8, ns: u64, arg0: u64) -> Sample<'_> {
        Sample {
            node,
            rank,
            source,
            op,
            duration_ns: ns,
            arg0,
        }
    }

    #[test]
    fn calls_io_and_off_cpu_land_in_their_series() {
        let mut r = Registry::new("n1", true);
        r.observe(&sample(
            "n1",
            Some(0),
            source::DRIVER,
            driver_op::LAUNCH_KERNEL,
            3_000,
            0xdead,
        ));
        r.observe(&sample(
            "n1",
            Some(0),
            source::CUDA,
            cuda_op::MEMCPY,
            10_000,
            4096,
        ));
        r.observe(&sample("n1", Some(0), source::IO, io_op::WRITE, 50_000, 1 << 20));
        r.observe(&sample("n1", Some(0), source::HOST, host_op::SCHED_SWITCH, 7, 1));
        r.observe(&sample("n1", Some(0), source::HOST, host_op::SCHED_SWITCH, 9, 0));
        r.observe(&sample("n1", Some(0), source::HOST, host_op::PROCESS_EXIT, 0, 0));
        let series = r.sorted_series();
        assert_eq!(series.len(), 5, "{series:?}");
        let launch = series
            .iter()
            .find(|(k, _)| k.op == driver_op::LAUNCH_KERNEL && k.source == source::DRIVER)
            .expect("launch series");
        assert_eq!(launch.1.bytes, 0, "a kernel pointer is not a size");
        let copy = series
            .iter()
            .find(|(k, _)| k.source == source::CUDA)
            .expect("copy");
        assert_eq!(copy.1.bytes, 4096);
        let states: Vec<_> = series.iter().filter_map(|(k, _)| k.state).collect();
        assert_eq!(states, vec![OffCpuState::Preempted, OffCpuState::Blocked]);
        assert_eq!(r.events_by_source()[&source::HOST], 3);
    }

    #[test]
    fn targets_are_capped_and_the_rest_share_one() {
        let mut r = Registry::new("agent", true);
        for rank in 0..1000 {
            r.observe(&sample(
                "n",
                Some(rank),
                source::DRIVER,
                driver_op::LAUNCH_KERNEL,
                1,
                0,
            ));
        }
        assert_eq!(r.targets().len(), MAX_TARGETS);
        let last = r.targets().last().expect("overflow target");
        assert_eq!((last.node.as_str(), last.rank), ("agent", Rank::Other));
        let overflow = r.sorted_series().into_iter().map(|(_, s)| s.latency.count).max();
        assert_eq!(overflow, Some(1000 - (MAX_TARGETS as u64 - 1)));
        // A known pair asked right after an overflowing one with the same
        // rank still finds its own series.
        r.observe(&sample(
            "agent",
            Some(1),
            source::DRIVER,
            driver_op::LAUNCH_KERNEL,
            1,
            0,
        ));
        r.observe(&sample(
            "n",
            Some(1),
            source::DRIVER,
            driver_op::LAUNCH_KERNEL,
            1,
            0,
        ));
        let rank1 = r
            .sorted_series()
            .into_iter()
            .find(|(k, _)| {
                r.targets()[usize::from(k.target)]
                    == Target {
                        node: "n".into(),
                        rank: Rank::Known(1),
                    }
            })
            .map(|(_, s)| s.latency.count);
        assert_eq!(rank1, Some(2));
    }

    #[test]
    fn unknown_ops_and_empty_nodes_add_no_labels() {
        let mut r = Registry::new("agent", false);
        r.observe(&sample("", None, source::DRIVER, 200, 1, 0));
        r.observe(&sample("", None, 77, 1, 1, 0));
        assert!(r.sorted_series().is_empty());
        r.observe(&sample("", None, source::HOST, host_op::SCHED_SWITCH, 5, 1));
        assert_eq!(r.targets()[0].node, "agent");
        assert_eq!(r.sorted_series()[0].0.state, Some(OffCpuState::Unknown));
    }
}
