//! Causal chains and explain verdicts as OTLP log records.
//!
//! A [`Record`] is plain owned data, made on whichever thread found the
//! chain and queued to the export thread, which turns it into an SDK log
//! record there. Each record names its event (`ingero.causal_chain`,
//! `ingero.straggler`, `ingero.hung_collective`), its node
//! (`ingero.node`), its severity both as the OTLP number (HIGH: ERROR,
//! MEDIUM: WARN, LOW: INFO; a confirmed hang ERROR, a straggler WARN) and
//! as ingero's word (`severity_text`), and its text: the body is the
//! one-line summary (or the verdict's lines), the rest are attributes.

use opentelemetry::logs::{AnyValue, Severity};

use crate::analysis::{
    Comparison,
    chain::{self, Chain},
};

/// One log record to send.
#[derive(Debug, Clone)]
pub struct Record {
    /// `event.name`.
    pub event: &'static str,
    /// When it was found, Unix ns.
    pub time_ns: i64,
    /// OTLP severity number.
    pub severity: Severity,
    /// ingero's word for it (`HIGH`, `STRAGGLER`, `HUNG`).
    pub severity_text: &'static str,
    /// The text people read first.
    pub body: String,
    /// Everything else.
    pub attributes: Vec<(&'static str, AnyValue)>,
}

fn text(s: &str) -> AnyValue {
    AnyValue::String(crate::text::sanitize(s, 4000).into())
}

/// The OTLP severity of a chain's.
#[must_use]
pub fn severity(s: chain::Severity) -> Severity {
    match s {
        chain::Severity::High => Severity::Error,
        chain::Severity::Medium => Severity::Warn,
        chain::Severity::Low => Severity::Info,
    }
}

/// The key under which a chain is "the same chain" from one analysis
/// pass to the next: its id without the `@window start` suffix, which
/// moves with a sliding window.
#[must_use]
pub fn chain_key(c: &Chain) -> &str {
    c.id.rsplit_once('@').map_or(c.id.as_str(), |(k, _)| k)
}

/// A chain as a record: body the summary; attributes its id, node,
/// root cause, explanation, recommendations (a list, most useful first),
/// operation and figures.
#[must_use]
pub fn from_chain(c: &Chain) -> Record {
    Record {
        event: "ingero.causal_chain",
        time_ns: c.detected_at,
        severity: severity(c.severity),
        severity_text: c.severity.as_str(),
        body: crate::text::sanitize(&c.summary, 4000),
        attributes: vec![
            ("ingero.chain.id", text(&c.id)),
            ("ingero.node", text(&c.node)),
            ("ingero.chain.root_cause", text(&c.root_cause)),
            ("ingero.chain.explanation", text(&c.explanation)),
            (
                "ingero.chain.recommendations",
                AnyValue::ListAny(Box::new(c.recommendations.iter().map(|r| text(r)).collect())),
            ),
            ("ingero.chain.cuda_op", text(&c.cuda_op)),
            ("ingero.chain.p99_us", AnyValue::Double(c.p99_us)),
            ("ingero.chain.p50_us", AnyValue::Double(c.p50_us)),
            ("ingero.chain.tail_ratio", AnyValue::Double(c.tail_ratio)),
            ("ingero.chain.score", AnyValue::Double(c.score)),
        ],
    }
}

/// The verdicts of an explain: the straggler (when one was found) and
/// each hung collective, followed by every chain.
#[must_use]
pub fn from_comparison(comparison: &Comparison, now_ns: i64) -> Vec<Record> {
    let mut out = Vec::new();
    if let Some(node) = comparison.straggler_node() {
        let lines = comparison.straggler_lines();
        out.push(Record {
            event: "ingero.straggler",
            time_ns: now_ns,
            severity: Severity::Warn,
            severity_text: "STRAGGLER",
            body: crate::text::sanitize(&lines.join("\n"), 8000),
            attributes: vec![("ingero.node", text(node))],
        });
    }
    if let Some(c) = &comparison.collectives {
        for (hang, missing) in c.hangs.iter().zip(&c.missing_activity) {
            let mut body = hang.headline();
            for line in missing {
                body.push_str("\n  ");
                body.push_str(line);
            }
            out.push(Record {
                event: "ingero.hung_collective",
                time_ns: now_ns,
                severity: if hang.confirmed {
                    Severity::Error
                } else {
                    Severity::Warn
                },
                severity_text: if hang.confirmed { "HUNG" } else { "POSSIBLY HUNG" },
                body: crate::text::sanitize(&body, 8000),
                attributes: vec![
                    ("ingero.collective.op", text(&hang.op)),
                    ("ingero.collective.comm_id", text(&hang.comm_id)),
                    (
                        "ingero.collective.seq",
                        AnyValue::Int(i64::try_from(hang.seq).unwrap_or(i64::MAX)),
                    ),
                    ("ingero.collective.waited_ns", AnyValue::Int(hang.waited_ns)),
                ],
            });
        }
    }
    out.extend(comparison.chains.iter().map(from_chain));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_keeps_its_words_and_a_stable_key() {
        let c: Chain = serde_json::from_value(serde_json::json!({
            "id": "gpu-1:tail-cuLaunchKernel@1795262400",
            "node": "gpu-1",
            "severity": "HIGH",
            "score": 2.0,
            "summary": "cuLaunchKernel p99 is 40x p50",
            "root_cause": "CPU contention",
            "explanation": "preempted",
            "recommendations": ["pin the rank", "move the job"],
            "cuda_op": "cuLaunchKernel",
            "p99_us": 400.0,
            "p50_us": 10.0,
            "tail_ratio": 40.0,
            "timeline": [],
            "detected_at": 5,
            "window": {"from": 1, "to": 2},
            "peak_at": 1
        }))
        .expect("a chain");
        assert_eq!(chain_key(&c), "gpu-1:tail-cuLaunchKernel");
        let r = from_chain(&c);
        assert_eq!((r.severity, r.severity_text), (Severity::Error, "HIGH"));
        assert_eq!(r.body, "cuLaunchKernel p99 is 40x p50");
        assert!(
            r.attributes
                .iter()
                .any(|(k, v)| *k == "ingero.chain.root_cause"
                    && *v == AnyValue::String("CPU contention".into()))
        );
    }
}
