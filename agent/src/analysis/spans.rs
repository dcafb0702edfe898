//! Span geometry: unions, overlaps and coverage of `[start, end]` time
//! spans (nanoseconds, both ends inclusive), and the shares of a set of
//! slow calls that preemptions or block requests touched.
//!
//! Everything here is pure arithmetic over the node's recorded spans: no
//! thresholds and no judgement about causes (that is [`super::evidence`]).
//! A preempted off-CPU span is one whose task was switched out while still
//! runnable (`preempted` is not `Some(false)`); off-CPU time spent waiting
//! is never counted. Shares are in [0, 1] and 0 for no calls. Spans come
//! in [`NodeData`]'s order (off-CPU spans and block requests sorted by
//! start), which [`union_ns`] and the per-thread lookups rely on.

use std::collections::HashMap;

use super::dataset::{Call, NodeData, OffCpu};

/// Total length of the union of `[start, end]` spans sorted by start.
pub(super) fn union_ns(spans: impl Iterator<Item = (i64, i64)>) -> i64 {
    let mut total = 0;
    let mut current: Option<(i64, i64)> = None;
    for (s, e) in spans {
        match current {
            Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                current = Some((s, e));
            }
            None => current = Some((s, e)),
        }
    }
    total + current.map_or(0, |(s, e)| e - s)
}

/// Spans sorted by start, answering "does any span overlap [s, e]?".
#[derive(Debug, Default)]
struct SpanIndex {
    starts: Vec<i64>,
    /// Latest end among the spans up to each position.
    max_end: Vec<i64>,
}

impl SpanIndex {
    fn new(mut spans: Vec<(i64, i64)>) -> Self {
        spans.sort_unstable();
        let mut max_end = Vec::with_capacity(spans.len());
        let mut m = i64::MIN;
        for (_, e) in &spans {
            m = m.max(*e);
            max_end.push(m);
        }
        Self {
            starts: spans.into_iter().map(|(s, _)| s).collect(),
            max_end,
        }
    }

    fn overlaps(&self, s: i64, e: i64) -> bool {
        let i = self.starts.partition_point(|start| *start <= e);
        i > 0 && self.max_end[i - 1] >= s
    }
}

/// Disjoint, sorted spans with prefix sums: how much of `[s, e]` they cover.
#[derive(Debug, Default)]
pub(super) struct Coverage {
    starts: Vec<i64>,
    ends: Vec<i64>,
    /// Total length of the spans before each position.
    prefix: Vec<i64>,
}

impl Coverage {
    /// The union of `spans` (any order; empty spans are kept as points).
    pub(super) fn new(mut spans: Vec<(i64, i64)>) -> Self {
        spans.sort_unstable();
        let mut c = Self::default();
        for (s, e) in spans {
            match c.ends.last_mut() {
                Some(last) if s <= *last => *last = (*last).max(e),
                _ => {
                    c.starts.push(s);
                    c.ends.push(e);
                }
            }
        }
        let mut total = 0;
        c.prefix.push(0);
        for (s, e) in c.starts.iter().zip(&c.ends) {
            total += e - s;
            c.prefix.push(total);
        }
        c
    }

    /// How much of `[s, e]` the spans cover, ns.
    pub(super) fn covered(&self, s: i64, e: i64) -> i64 {
        let i = self.ends.partition_point(|end| *end <= s);
        let j = self.starts.partition_point(|start| *start < e);
        if i >= j {
            return 0;
        }
        let full = self.prefix[j] - self.prefix[i];
        full - (s - self.starts[i]).max(0) - (self.ends[j - 1] - e).max(0)
    }
}

impl Coverage {
    /// The pieces of `[s, e]` the spans do not cover, in order.
    pub(super) fn uncovered(&self, s: i64, e: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut at = s;
        let first = self.ends.partition_point(|end| *end <= s);
        for (cs, ce) in self.starts[first..].iter().zip(&self.ends[first..]) {
            if *cs >= e {
                break;
            }
            if *cs > at {
                out.push((at, *cs));
            }
            at = at.max(*ce);
        }
        if at < e {
            out.push((at, e));
        }
        out
    }

    /// Total time the spans cover, ns.
    pub(super) fn total(&self) -> i64 {
        self.prefix.last().copied().unwrap_or(0)
    }

    /// How much of the spans of `other` these spans cover, ns.
    pub(super) fn overlap(&self, other: &Coverage) -> i64 {
        other
            .starts
            .iter()
            .zip(&other.ends)
            .map(|(s, e)| self.covered(*s, *e))
            .sum()
    }
}

/// Off-CPU spans where the task was preempted by a task `by` accepts,
/// grouped by `key` (the process or the thread).
fn preempted_spans(
    d: &NodeData,
    by: &dyn Fn(u32) -> bool,
    key: fn(&OffCpu) -> u32,
) -> HashMap<u32, Vec<(i64, i64)>> {
    let mut spans: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
    for o in d
        .off_cpu
        .iter()
        .filter(|o| o.preempted != Some(false) && by(o.preemptor))
    {
        spans.entry(key(o)).or_default().push((o.start, o.end));
    }
    spans
}

/// Share of the slow calls' time during which threads of the calling
/// process were preempted by a task `by` accepts.
fn process_preempted_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    let cover: HashMap<u32, Coverage> = preempted_spans(d, by, |o| o.pid)
        .into_iter()
        .map(|(p, v)| (p, Coverage::new(v)))
        .collect();
    let total: i64 = slow.iter().map(Call::duration).sum();
    let covered: i64 = slow
        .iter()
        .map(|c| {
            cover
                .get(&c.pid)
                .map_or(0, |cv| cv.covered(c.start, c.end).min(c.duration()))
        })
        .sum();
    if total > 0 {
        covered as f64 / total as f64
    } else {
        0.0
    }
}

/// Share of `slow` calls during which their own thread was preempted by
/// a task `by` accepts.
fn cpu_hit_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    let index: HashMap<u32, SpanIndex> = preempted_spans(d, by, |o| o.tid)
        .into_iter()
        .map(|(t, v)| (t, SpanIndex::new(v)))
        .collect();
    let hits = slow
        .iter()
        .filter(|c| index.get(&c.tid).is_some_and(|i| i.overlaps(c.start, c.end)))
        .count();
    share(hits, slow.len())
}

/// Share of `slow` calls that overlapped a block request of the node.
pub(super) fn io_hit_share(d: &NodeData, slow: &[Call]) -> f64 {
    let index = SpanIndex::new(d.io.iter().map(|i| (i.start, i.end)).collect());
    share(
        slow.iter().filter(|c| index.overlaps(c.start, c.end)).count(),
        slow.len(),
    )
}

fn share(hits: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { hits as f64 / of as f64 }
}

/// Share of the slow calls during which the caller (or its process) was
/// preempted by a task `by` accepts.
pub(super) fn preempted_share(d: &NodeData, slow: &[Call], by: &dyn Fn(u32) -> bool) -> f64 {
    cpu_hit_share(d, slow, by).max(process_preempted_share(d, slow, by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_measures_overlap_exactly() {
        let c = Coverage::new(vec![(0, 10), (5, 20), (30, 40)]);
        assert_eq!(c.covered(0, 100), 30);
        assert_eq!(c.covered(15, 35), 10);
        assert_eq!(c.covered(20, 30), 0);
        assert_eq!(c.covered(38, 39), 1);
        assert_eq!(c.total(), 30);
        assert_eq!(c.uncovered(-5, 45), vec![(-5, 0), (20, 30), (40, 45)]);
        assert_eq!(c.uncovered(2, 8), Vec::<(i64, i64)>::new());
        assert_eq!(c.uncovered(12, 35), vec![(20, 30)]);
        let other = Coverage::new(vec![(15, 32), (39, 50)]);
        assert_eq!(c.overlap(&other), 5 + 2 + 1);
    }
}
