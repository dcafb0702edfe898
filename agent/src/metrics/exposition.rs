//! The Prometheus text exposition (format 0.0.4) of a [`Registry`].
//!
//! Families, each written once with its `HELP` and `TYPE` and all its
//! series together (the format requires it), every series labelled `node`
//! and `rank` first:
//!
//! - `ingero_call_duration_seconds{source,op}` histogram of API call time
//!   (its `_count` is the number of calls);
//! - `ingero_call_bytes_total{source,op}`: bytes copied or allocated, for
//!   operations whose `arg0` is a size;
//! - `ingero_sync_wait_seconds_total{source,op}`: time in synchronize calls;
//! - `ingero_offcpu_seconds_total{state}` and
//!   `ingero_offcpu_switches_total{state}`: time traced threads spent off
//!   their CPU, and how many times they left it;
//! - `ingero_block_io_duration_seconds{op}` histogram and
//!   `ingero_block_io_bytes_total{op}` of block requests.
//!
//! Values are written from integers (ns as seconds, counts as is), so a
//! scrape shows exactly what was counted.

use std::fmt::Write as _;

use agent_common::catalog::{OpKind, arg0_is_bytes, op_info, op_kind, source};

use super::{
    histogram::{BUCKETS, Histogram, bound_ns},
    is_call_source,
    registry::{Registry, Series, SeriesKey},
    source_name,
};

/// A label value, escaped as the exposition format requires (backslash,
/// double quote, newline).
#[must_use]
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Nanoseconds as seconds, the unit of every duration metric.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{node="..",rank="..",k="v",...}` for one series of `r`.
fn labels(r: &Registry, key: SeriesKey, extra: &[(&str, &str)]) -> String {
    let target = &r.targets()[usize::from(key.target)];
    let mut s = format!(
        "{{node=\"{}\",rank=\"{}\"",
        escape(&target.node),
        target.rank.label()
    );
    for (k, v) in extra {
        let _ = write!(s, ",{k}=\"{}\"", escape(v));
    }
    s.push('}');
    s
}

/// `_bucket`, `_sum` and `_count` lines of one histogram series;
/// `labels` ends with `}`.
fn histogram_lines(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let open = &labels[..labels.len() - 1];
    for (i, cumulative) in h.cumulative().enumerate() {
        let le = if i < BUCKETS {
            seconds(bound_ns(i)).to_string()
        } else {
            "+Inf".to_owned()
        };
        let _ = writeln!(out, "{name}_bucket{open},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{labels} {}", seconds(h.sum_ns));
    let _ = writeln!(out, "{name}_count{labels} {}", h.count);
}

fn op_name(key: SeriesKey) -> &'static str {
    op_info(key.source, key.op).map_or("unknown", |o| o.name)
}

/// Appends every family of `r` to `out`.
pub fn render(out: &mut String, r: &Registry) {
    let series: Vec<(SeriesKey, &Series)> = r.sorted_series().into_iter().map(|(k, s)| (*k, s)).collect();
    let calls: Vec<(SeriesKey, &Series)> = series
        .iter()
        .copied()
        .filter(|(k, _)| is_call_source(k.source))
        .collect();
    let call_labels = |k: SeriesKey| labels(r, k, &[("source", source_name(k.source)), ("op", op_name(k))]);

    let name = "ingero_call_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time in traced API calls (CUDA runtime, driver), by operation; _count is the number of calls.",
    );
    for &(k, s) in &calls {
        histogram_lines(out, name, &call_labels(k), &s.latency);
    }

    header(
        out,
        "ingero_call_bytes_total",
        "counter",
        "Bytes copied or allocated by traced API calls, for operations with a size.",
    );
    for &(k, s) in calls.iter().filter(|(k, _)| arg0_is_bytes(k.source, k.op)) {
        let _ = writeln!(out, "ingero_call_bytes_total{} {}", call_labels(k), s.bytes);
    }

    header(
        out,
        "ingero_sync_wait_seconds_total",
        "counter",
        "Time traced threads waited in synchronize calls (stream, device, context, event).",
    );
    for &(k, s) in calls
        .iter()
        .filter(|(k, _)| op_kind(k.source, k.op) == OpKind::Synchronize)
    {
        let _ = writeln!(
            out,
            "ingero_sync_wait_seconds_total{} {}",
            call_labels(k),
            seconds(s.latency.sum_ns)
        );
    }

    let off_cpu: Vec<_> = series
        .iter()
        .filter_map(|&(k, s)| k.state.map(|state| (k, state, s)))
        .collect();
    header(
        out,
        "ingero_offcpu_seconds_total",
        "counter",
        "Time traced threads spent off their CPU: preempted (runnable, waiting for a CPU) or blocked.",
    );
    for &(k, state, s) in &off_cpu {
        let _ = writeln!(
            out,
            "ingero_offcpu_seconds_total{} {}",
            labels(r, k, &[("state", state.label())]),
            seconds(s.latency.sum_ns)
        );
    }
    header(
        out,
        "ingero_offcpu_switches_total",
        "counter",
        "Times traced threads were switched out, by state.",
    );
    for &(k, state, s) in &off_cpu {
        let _ = writeln!(
            out,
            "ingero_offcpu_switches_total{} {}",
            labels(r, k, &[("state", state.label())]),
            s.latency.count
        );
    }

    let io: Vec<_> = series
        .iter()
        .copied()
        .filter(|(k, _)| k.source == source::IO)
        .collect();
    let name = "ingero_block_io_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Block I/O requests of traced processes, issue to completion, by operation.",
    );
    for &(k, s) in &io {
        histogram_lines(out, name, &labels(r, k, &[("op", op_name(k))]), &s.latency);
    }
    header(
        out,
        "ingero_block_io_bytes_total",
        "counter",
        "Bytes of block I/O requests of traced processes, by operation.",
    );
    for &(k, s) in &io {
        let _ = writeln!(
            out,
            "ingero_block_io_bytes_total{} {}",
            labels(r, k, &[("op", op_name(k))]),
            s.bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;
    use agent_common::catalog::{driver_op, host_op, io_op};

    fn text() -> String {
        let mut r = Registry::new("n\"1", true);
        let mut add = |source, op, ns, arg0| {
            r.observe(&Sample {
                node: "",
                rank: Some(2),
                source,
                op,
                duration_ns: ns,
                arg0,
            });
        };
        add(source::DRIVER, driver_op::LAUNCH_KERNEL, 1_500, 0x7f00);
        add(source::DRIVER, driver_op::LAUNCH_KERNEL, 3_000_000, 0x7f00);
        add(source::DRIVER, driver_op::STREAM_SYNCHRONIZE, 2_000_000_000, 0);
        add(source::DRIVER, driver_op::MEM_ALLOC, 5_000, 1 << 20);
        add(source::HOST, host_op::SCHED_SWITCH, 250_000_000, 1);
        add(source::IO, io_op::WRITE, 40_000, 4096);
        let mut out = String::new();
        render(&mut out, &r);
        out
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let t = text();
        let launch = "node=\"n\\\"1\",rank=\"2\",source=\"driver\",op=\"cuLaunchKernel\"";
        assert!(
            t.contains(&format!(
                "ingero_call_duration_seconds_bucket{{{launch},le=\"0.000001\"}} 0"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "ingero_call_duration_seconds_bucket{{{launch},le=\"0.000002\"}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "ingero_call_duration_seconds_bucket{{{launch},le=\"0.004096\"}} 2"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "ingero_call_duration_seconds_bucket{{{launch},le=\"+Inf\"}} 2"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!("ingero_call_duration_seconds_count{{{launch}}} 2")),
            "{t}"
        );
        assert!(
            t.contains(&format!("ingero_call_duration_seconds_sum{{{launch}}} 0.0030015")),
            "{t}"
        );
    }

    #[test]
    fn bytes_sync_wait_off_cpu_and_io_have_their_families() {
        let t = text();
        assert!(t.contains("ingero_call_bytes_total{node=\"n\\\"1\",rank=\"2\",source=\"driver\",op=\"cuMemAlloc_v2\"} 1048576"), "{t}");
        assert!(
            !t.contains(
                "ingero_call_bytes_total{node=\"n\\\"1\",rank=\"2\",source=\"driver\",op=\"cuLaunchKernel\""
            ),
            "{t}"
        );
        assert!(t.contains("ingero_sync_wait_seconds_total{node=\"n\\\"1\",rank=\"2\",source=\"driver\",op=\"cuStreamSynchronize\"} 2"), "{t}");
        assert!(
            t.contains("ingero_offcpu_seconds_total{node=\"n\\\"1\",rank=\"2\",state=\"preempted\"} 0.25"),
            "{t}"
        );
        assert!(
            t.contains("ingero_offcpu_switches_total{node=\"n\\\"1\",rank=\"2\",state=\"preempted\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ingero_block_io_bytes_total{node=\"n\\\"1\",rank=\"2\",op=\"block_write\"} 4096"),
            "{t}"
        );
        assert!(
            t.contains(
                "ingero_block_io_duration_seconds_count{node=\"n\\\"1\",rank=\"2\",op=\"block_write\"} 1"
            ),
            "{t}"
        );
        assert_eq!(t.matches("# TYPE ").count(), 7, "each family once: {t}");
    }

    #[test]
    fn one_target_has_at_most_the_series_the_readme_states() {
        let mut r = Registry::new("n", true);
        for o in agent_common::catalog::OPS {
            for arg0 in [0, 1] {
                r.observe(&Sample {
                    node: "n",
                    rank: Some(0),
                    source: o.source,
                    op: o.op,
                    duration_ns: 1,
                    arg0,
                });
            }
        }
        let mut out = String::new();
        render(&mut out, &r);
        let series = out.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            series, 1251,
            "README, Prometheus metrics: the bound per (node, rank)"
        );
    }
}
