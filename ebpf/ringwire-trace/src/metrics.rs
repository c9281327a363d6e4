//! The tracer's Prometheus metrics: per traced process, from the model's totals.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use ringwire_trace_common::HIST_BUCKETS;

use crate::model::{ConnView, ProcessTotals};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("ringwire_trace_{name}"));
    f.set_help(help.into());
    f.set_field_type(ty);
    f.set_metric(metrics);
    f
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A log2 nanosecond histogram as a Prometheus histogram in seconds. The sum is estimated from
/// bucket midpoints (the kernel keeps counts only).
fn histogram(pairs: &[(&str, &str)], hist: &[u64; HIST_BUCKETS]) -> Metric {
    let mut buckets = Vec::with_capacity(HIST_BUCKETS);
    let (mut cumulative, mut sum) = (0u64, 0.0);
    for (i, &n) in hist.iter().enumerate() {
        cumulative += n;
        let upper_ns = (1u64 << (i + 1)) as f64;
        sum += n as f64 * upper_ns * 0.75 / 1e9;
        if i + 1 < HIST_BUCKETS {
            let mut b = Bucket::default();
            b.set_upper_bound(upper_ns / 1e9);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
    }
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(sum);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(h);
    m
}

/// The metrics in the Prometheus text exposition format.
pub fn render(totals: &[(u32, ProcessTotals)], conns: &[ConnView]) -> String {
    let mut fams: Vec<MetricFamily> = Vec::new();
    let per_pid = |f: &dyn Fn(&str, &ProcessTotals) -> Vec<Metric>| -> Vec<Metric> {
        totals
            .iter()
            .flat_map(|(pid, t)| f(&pid.to_string(), t))
            .collect()
    };
    let mut states: std::collections::BTreeMap<(u32, &str), u64> = Default::default();
    for c in conns {
        *states.entry((c.pid, c.state)).or_default() += 1;
    }
    fams.push(family(
        "connections",
        "Connections of the traced processes by messenger state (closed ones linger briefly)",
        MetricType::GAUGE,
        states
            .iter()
            .map(|((pid, state), n)| gauge(&[("pid", &pid.to_string()), ("state", state)], *n))
            .collect(),
    ));
    fams.push(family(
        "messages_total",
        "Messages sent and dispatched",
        MetricType::COUNTER,
        per_pid(&|pid, t| {
            vec![
                counter(&[("pid", pid), ("direction", "out")], t.msgs_out),
                counter(&[("pid", pid), ("direction", "in")], t.msgs_in),
            ]
        }),
    ));
    fams.push(family(
        "bytes_total",
        "Message payload bytes sent and dispatched",
        MetricType::COUNTER,
        per_pid(&|pid, t| {
            vec![
                counter(&[("pid", pid), ("direction", "out")], t.bytes_out),
                counter(&[("pid", pid), ("direction", "in")], t.bytes_in),
            ]
        }),
    ));
    fams.push(family(
        "faults_total",
        "Connection faults",
        MetricType::COUNTER,
        per_pid(&|pid, t| vec![counter(&[("pid", pid)], t.faults)]),
    ));
    fams.push(family(
        "reconnects_total",
        "SESSION_RECONNECT exchanges by outcome",
        MetricType::COUNTER,
        per_pid(&|pid, t| {
            t.reconnects
                .iter()
                .map(|(outcome, n)| counter(&[("pid", pid), ("outcome", outcome)], *n))
                .collect()
        }),
    ));
    fams.push(family(
        "tcp_retransmits_total",
        "TCP segments retransmitted on the traced connections",
        MetricType::COUNTER,
        per_pid(&|pid, t| vec![counter(&[("pid", pid)], t.retransmits)]),
    ));
    fams.push(family(
        "tcp_transitions_total",
        "TCP state changes of the traced connections, by new state",
        MetricType::COUNTER,
        per_pid(&|pid, t| {
            t.tcp_transitions
                .iter()
                .map(|(state, n)| counter(&[("pid", pid), ("state", state)], *n))
                .collect()
        }),
    ));
    fams.push(family(
        "io_uring_submissions_total",
        "io_uring requests submitted",
        MetricType::COUNTER,
        per_pid(&|pid, t| vec![counter(&[("pid", pid)], t.io_uring.submitted)]),
    ));
    fams.push(family(
        "io_uring_completions_total",
        "io_uring completions by result",
        MetricType::COUNTER,
        per_pid(&|pid, t| {
            vec![
                counter(&[("pid", pid), ("result", "ok")], t.io_uring.completed),
                counter(&[("pid", pid), ("result", "error")], t.io_uring.failed),
            ]
        }),
    ));
    fams.push(family(
        "queued_to_sent_seconds",
        "Time from a message being queued to being written to its connection",
        MetricType::HISTOGRAM,
        per_pid(&|pid, t| vec![histogram(&[("pid", pid)], &t.queued_to_sent)]),
    ));
    fams.push(family(
        "sent_to_dispatched_seconds",
        "Time from a message being sent to being dispatched by the peer (both ends traced)",
        MetricType::HISTOGRAM,
        per_pid(&|pid, t| vec![histogram(&[("pid", pid)], &t.sent_to_dispatched)]),
    ));
    // The text format has no empty families.
    fams.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&fams, &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("utf-8")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `ringwire_trace_*` names in `text`.
    fn trace_metric_names(text: &str) -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ringwire_trace_"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn dashboard_queries_only_exported_metrics() {
        let mut totals = ProcessTotals::default();
        totals.reconnects.insert("OK", 1);
        totals.tcp_transitions.insert("ESTABLISHED", 1);
        let conn = ConnView {
            state: "READY",
            ..ConnView::default()
        };
        let text = render(&[(1, totals)], &[conn]);
        let mut exported = BTreeSet::new();
        for line in text.lines() {
            let Some(decl) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = decl.split_once(' ').unwrap();
            exported.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/ringwire-dashboard.json"
        ))
        .unwrap();
        let queried = trace_metric_names(&dashboard);
        assert!(queried.len() >= 8, "{queried:?}");
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(missing.is_empty(), "queried, not exported: {missing:?}");
    }
}
