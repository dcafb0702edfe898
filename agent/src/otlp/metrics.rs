//! A registry snapshot as one OTLP `ExportMetricsServiceRequest`: the
//! families of the Prometheus exposition ([`crate::metrics::exposition`])
//! under the same names without the `_total` suffix (OTLP names carry no
//! type suffix; a Prometheus-compatible back end adds it back), with the
//! same `node`, `rank`, `source`, `op`, `state` attributes.
//!
//! Why not the SDK's instruments: its histogram data points cannot be
//! built from outside the SDK, and recording every event a second time
//! through its instruments would cost the tracer's hot path and round
//! bucket edges through `f64`. The registry already holds cumulative
//! counts per bucket, so each push sends them as they are: cumulative
//! temporality, explicit bounds equal to the registry's (1 µs .. 8.39 s,
//! powers of two, in seconds), bucket counts copied, sums from integer
//! nanoseconds. A push that fails loses nothing but resolution: the next
//! one carries the totals. The encoding is the generated OTLP protobuf
//! types of `opentelemetry-proto`, serialised by prost.

use agent_common::catalog::{OpKind, arg0_is_bytes, op_info, op_kind, source};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};

use crate::{
    api::metrics::EventCounts,
    metrics::{
        Registry, histogram,
        histogram::{BUCKETS, bound_ns},
        is_call_source,
        registry::SeriesKey,
        source_name,
    },
};

/// A string attribute.
pub(crate) fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// The resource every request describes: the agent on `node`.
pub(crate) fn resource(node: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", "ingero"),
            kv("service.version", env!("CARGO_PKG_VERSION")),
            kv("host.name", node),
        ],
        ..Resource::default()
    }
}

/// Times of every point of one push: when counting started and now.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Unix ns when the tracer started counting (cumulative start).
    pub start_ns: u64,
    /// Unix ns of this snapshot.
    pub now_ns: u64,
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn cumulative() -> i32 {
    AggregationTemporality::Cumulative as i32
}

fn op_name(k: SeriesKey) -> &'static str {
    op_info(k.source, k.op).map_or("unknown", |o| o.name)
}

/// A monotonic cumulative sum.
fn sum(name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: cumulative(),
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn point(t: Times, attributes: Vec<KeyValue>, value: number_data_point::Value) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: t.start_ns,
        time_unix_nano: t.now_ns,
        value: Some(value),
        ..NumberDataPoint::default()
    }
}

fn int(v: u64) -> number_data_point::Value {
    number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))
}

fn double(v: f64) -> number_data_point::Value {
    number_data_point::Value::AsDouble(v)
}

/// One histogram data point with the registry's bounds and counts.
fn histogram_point(t: Times, attributes: Vec<KeyValue>, h: &histogram::Histogram) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: t.start_ns,
        time_unix_nano: t.now_ns,
        count: h.count,
        sum: Some(seconds(h.sum_ns)),
        bucket_counts: h.counts.to_vec(),
        explicit_bounds: (0..BUCKETS).map(|i| seconds(bound_ns(i))).collect(),
        ..HistogramDataPoint::default()
    }
}

fn histogram_metric(name: &str, description: &str, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: cumulative(),
        })),
        ..Metric::default()
    }
}

/// The request for one snapshot: `registry`'s families and `counts`'
/// events and drops, on `node`'s resource. Families without a series are
/// left out (OTLP has no empty metric).
#[must_use]
pub fn request(
    node: &str,
    registry: &Registry,
    counts: &EventCounts,
    t: Times,
) -> ExportMetricsServiceRequest {
    let series = registry.sorted_series();
    let target = |k: &SeriesKey| {
        let tg = &registry.targets()[usize::from(k.target)];
        vec![kv("node", tg.node.clone()), kv("rank", tg.rank.label())]
    };
    let with = |k: &SeriesKey, extra: &[(&str, &str)]| {
        let mut a = target(k);
        a.extend(extra.iter().map(|(key, v)| kv(key, *v)));
        a
    };
    let call_attrs = |k: &SeriesKey| with(k, &[("source", source_name(k.source)), ("op", op_name(*k))]);
    let calls: Vec<_> = series.iter().filter(|(k, _)| is_call_source(k.source)).collect();
    let off_cpu: Vec<_> = series
        .iter()
        .filter_map(|(k, s)| k.state.map(|st| (k, st, s)))
        .collect();
    let io: Vec<_> = series.iter().filter(|(k, _)| k.source == source::IO).collect();

    let mut metrics = vec![
        histogram_metric(
            "ingero_call_duration_seconds",
            "Time in traced API calls (CUDA runtime, driver), by operation; the count is the number of calls.",
            calls
                .iter()
                .map(|(k, s)| histogram_point(t, call_attrs(k), &s.latency))
                .collect(),
        ),
        sum(
            "ingero_call_bytes",
            "Bytes copied or allocated by traced API calls, for operations with a size.",
            "By",
            calls
                .iter()
                .filter(|(k, _)| arg0_is_bytes(k.source, k.op))
                .map(|(k, s)| point(t, call_attrs(k), int(s.bytes)))
                .collect(),
        ),
        sum(
            "ingero_sync_wait_seconds",
            "Time traced threads waited in synchronize calls (stream, device, context, event).",
            "s",
            calls
                .iter()
                .filter(|(k, _)| op_kind(k.source, k.op) == OpKind::Synchronize)
                .map(|(k, s)| point(t, call_attrs(k), double(seconds(s.latency.sum_ns))))
                .collect(),
        ),
        sum(
            "ingero_offcpu_seconds",
            "Time traced threads spent off their CPU: preempted (runnable, waiting for a CPU) or blocked.",
            "s",
            off_cpu
                .iter()
                .map(|(k, st, s)| {
                    point(
                        t,
                        with(k, &[("state", st.label())]),
                        double(seconds(s.latency.sum_ns)),
                    )
                })
                .collect(),
        ),
        sum(
            "ingero_offcpu_switches",
            "Times traced threads were switched out, by state.",
            "{switch}",
            off_cpu
                .iter()
                .map(|(k, st, s)| point(t, with(k, &[("state", st.label())]), int(s.latency.count)))
                .collect(),
        ),
        histogram_metric(
            "ingero_block_io_duration_seconds",
            "Block I/O requests of traced processes, issue to completion, by operation.",
            io.iter()
                .map(|(k, s)| histogram_point(t, with(k, &[("op", op_name(**k))]), &s.latency))
                .collect(),
        ),
        sum(
            "ingero_block_io_bytes",
            "Bytes of block I/O requests of traced processes, by operation.",
            "By",
            io.iter()
                .map(|(k, s)| point(t, with(k, &[("op", op_name(**k))]), int(s.bytes)))
                .collect(),
        ),
    ];
    let node_attr = || vec![kv("node", node)];
    metrics.push(sum(
        "ingero_events",
        "Events recorded by the agent, by source.",
        "{event}",
        crate::api::metrics::SOURCES
            .iter()
            .zip(counts.by_source)
            .map(|(s, n)| {
                let mut a = node_attr();
                a.push(kv("source", *s));
                point(t, a, int(n))
            })
            .collect(),
    ));
    metrics.push(sum(
        "ingero_events_dropped",
        "Events the kernel could not deliver, by source, operation and reason.",
        "{event}",
        counts
            .drops
            .iter()
            .map(|(src, op, reason, n)| {
                let mut a = node_attr();
                a.push(kv("source", source_name(*src)));
                a.push(kv(
                    "op",
                    op_info(*src, *op).map_or_else(|| format!("{src}/{op}"), |o| o.name.to_owned()),
                ));
                a.push(kv("reason", reason.clone()));
                point(t, a, int(*n))
            })
            .collect(),
    ));
    metrics.retain(|m| match &m.data {
        Some(metric::Data::Sum(s)) => !s.data_points.is_empty(),
        Some(metric::Data::Histogram(h)) => !h.data_points.is_empty(),
        _ => false,
    });
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(node)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "ingero".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// Data points in a request (what a failed export drops).
#[must_use]
pub fn points(req: &ExportMetricsServiceRequest) -> u64 {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        })
        .sum::<usize>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;
    use agent_common::catalog::{driver_op, host_op};
    use prost::Message as _;

    #[test]
    fn histograms_keep_the_registry_bounds_and_counts() {
        let mut r = Registry::new("n1", true);
        for ns in [500, 1_000, 1_001, 3_000_000, 20_000_000_000] {
            r.observe(&Sample {
                node: "n1",
                rank: Some(3),
                source: source::DRIVER,
                op: driver_op::LAUNCH_KERNEL,
                duration_ns: ns,
                arg0: 0,
            });
        }
        r.observe(&Sample {
            node: "n1",
            rank: Some(3),
            source: source::HOST,
            op: host_op::SCHED_SWITCH,
            duration_ns: 7,
            arg0: 1,
        });
        let counts = EventCounts {
            by_source: [0, 5, 1, 0],
            drops: vec![(source::DRIVER, driver_op::LAUNCH_KERNEL, "ringbuf".into(), 2)],
        };
        let req = request(
            "n1",
            &r,
            &counts,
            Times {
                start_ns: 1,
                now_ns: 2,
            },
        );
        let bytes = req.encode_to_vec();
        let back = ExportMetricsServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let metrics = &back.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ingero_call_duration_seconds",
                "ingero_offcpu_seconds",
                "ingero_offcpu_switches",
                "ingero_events",
                "ingero_events_dropped"
            ]
        );
        let Some(metric::Data::Histogram(h)) = &metrics[0].data else {
            panic!("a histogram");
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 5);
        assert_eq!(p.bucket_counts.len(), BUCKETS + 1);
        assert_eq!(p.explicit_bounds.len(), BUCKETS);
        assert_eq!(
            p.explicit_bounds[0].to_bits(),
            1e-6_f64.to_bits(),
            "1 µs, exactly"
        );
        assert_eq!(
            &p.bucket_counts[..2],
            &[2, 1],
            "500 ns and 1 µs in the first, 1.001 µs in the second"
        );
        assert_eq!(p.bucket_counts[BUCKETS], 1, "20 s above every bound");
        let attrs: Vec<(&str, String)> = p
            .attributes
            .iter()
            .map(|a| match &a.value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => (a.key.as_str(), s.clone()),
                _ => (a.key.as_str(), String::new()),
            })
            .collect();
        assert_eq!(
            attrs,
            [
                ("node", "n1".to_owned()),
                ("rank", "3".to_owned()),
                ("source", "driver".to_owned()),
                ("op", "cuLaunchKernel".to_owned())
            ]
        );
        assert_eq!(points(&back), 1 + 1 + 1 + 4 + 1);
    }
}
