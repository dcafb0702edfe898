//! Causal chains on the wire: what the engine concluded about one node,
//! with its evidence layer by layer. Stored the same way in the
//! `causal_chains` table (see the agent's `analysis::chain`).

use serde::{Deserialize, Serialize};

use crate::Window;

/// How much a chain matters; ordered `Low < Medium < High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Worth knowing, not what holds the job back.
    Low,
    /// A real effect with a weaker cause, or a strong cause with a smaller effect.
    Medium,
    /// A large effect with a strong cause.
    High,
}

impl Severity {
    /// `LOW`, `MEDIUM` or `HIGH`, as printed and stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
        }
    }

    /// The inverse of [`Severity::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LOW" => Some(Self::Low),
            "MEDIUM" => Some(Self::Medium),
            "HIGH" => Some(Self::High),
            _ => None,
        }
    }
}

/// One layer of evidence in a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// `HOST`, `IO`, `MEMORY`, `CUDA`, `DRIVER`.
    pub layer: String,
    /// The operation or event the layer is about.
    pub op: String,
    /// What was seen, in words with figures.
    pub detail: String,
    /// The duration that matters at this layer, in microseconds.
    pub dur_us: i64,
}

/// What the engine concluded: an effect, its cause, and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// `{node}:{descriptor}@{window start}`, e.g. `gpu-node-02:tail-cuLaunchKernel@1795262400`.
    pub id: String,
    /// The node the chain is about.
    pub node: String,
    /// How much it matters.
    pub severity: Severity,
    /// Orders chains of equal severity (bigger first).
    pub score: f64,
    /// One line: the effect and the evidence.
    pub summary: String,
    /// The cause, in words.
    pub root_cause: String,
    /// How the evidence supports the cause.
    pub explanation: String,
    /// What to do, most useful first.
    pub recommendations: Vec<String>,
    /// The CUDA operation affected.
    pub cuda_op: String,
    /// Its p99 duration, µs.
    pub p99_us: f64,
    /// Its p50 duration, µs.
    pub p50_us: f64,
    /// p99 / p50.
    pub tail_ratio: f64,
    /// The evidence, layer by layer.
    pub timeline: Vec<TimelineEntry>,
    /// Unix ns when the chain was detected.
    pub detected_at: i64,
    /// The data the chain was found in.
    pub window: Window,
    /// Unix ns when the effect was worst (the slowest call's end, a drop's
    /// start, the first OOM kill).
    pub peak_at: i64,
}

impl Chain {
    /// Moves every instant of the chain by `-offset_ns`: from the agent's
    /// clock onto the client's, given the agent's estimated offset.
    pub fn shift_clock(&mut self, offset_ns: i64) {
        self.detected_at -= offset_ns;
        self.window.from -= offset_ns;
        self.window.to -= offset_ns;
        self.peak_at -= offset_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_times_move_onto_our_clock() {
        let mut c = Chain {
            id: "n:x".into(),
            node: "n".into(),
            severity: Severity::High,
            score: 1.0,
            summary: "s".into(),
            root_cause: "r".into(),
            explanation: "e".into(),
            recommendations: Vec::new(),
            cuda_op: "cuLaunchKernel".into(),
            p99_us: 1.0,
            p50_us: 1.0,
            tail_ratio: 1.0,
            timeline: Vec::new(),
            detected_at: 5_000,
            window: Window {
                from: 1_000,
                to: 4_000,
            },
            peak_at: 3_000,
        };
        c.shift_clock(1_000);
        assert_eq!(
            (c.window.from, c.window.to, c.peak_at, c.detected_at),
            (0, 3_000, 2_000, 4_000)
        );
    }
}
