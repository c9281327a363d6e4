//! Prometheus metrics of a messenger (the `prometheus` crate's registry and text format),
//! rendered from a [`Stats`] snapshot at each scrape; `ringwire-metrics-http` serves them.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::proto::EntityName;
use crate::Stats;

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// The metrics in the Prometheus text exposition format.
pub fn render(st: &Stats, name: &EntityName) -> String {
    let reg = Registry::new_custom(Some("ringwire".into()), None).expect("valid registry");
    let entity = name.to_string();
    let sessions = IntGaugeVec::new(
        Opts::new("sessions", "Sessions by state").const_label("entity", &entity),
        &["state"],
    )
    .expect("valid metric");
    reg.register(Box::new(sessions.clone()))
        .expect("unique metric");
    sessions
        .with_label_values(&["connecting"])
        .set(st.sessions_connecting);
    sessions
        .with_label_values(&["ready"])
        .set(st.sessions_ready);
    let e = entity.as_str();
    let messages = counter(
        &reg,
        "messages_total",
        "Messages by direction",
        &["entity", "direction"],
    );
    messages
        .with_label_values(&[e, "in"])
        .inc_by(st.messages_in);
    messages
        .with_label_values(&[e, "out"])
        .inc_by(st.messages_out);
    let bytes = counter(
        &reg,
        "payload_bytes_total",
        "Payload bytes by direction",
        &["entity", "direction"],
    );
    bytes.with_label_values(&[e, "in"]).inc_by(st.bytes_in);
    bytes.with_label_values(&[e, "out"]).inc_by(st.bytes_out);
    let plain: [(&str, &str, u64); 18] = [
        ("faults_total", "Connection faults", st.faults),
        (
            "injected_faults_total",
            "Faults injected by inject_socket_failures",
            st.injected_faults,
        ),
        (
            "handshakes_total",
            "Connections that reached READY",
            st.handshakes,
        ),
        (
            "reconnects_total",
            "Sessions ready again after having been ready",
            st.reconnects,
        ),
        (
            "migrations_total",
            "Accepted connections handed to the worker owning their session",
            st.migrations,
        ),
        (
            "throttle_stalls_total",
            "Receives held back by the dispatch throttle",
            st.throttle_stalls,
        ),
        (
            "send_throttled_total",
            "Sends refused because the connection's send window was full",
            st.send_throttled,
        ),
        (
            "backlog_stalls_total",
            "Receives held back by a connection's send backlog",
            st.backlog_stalls,
        ),
        (
            "registered_sends_total",
            "Sends from the registered payload arena",
            st.registered_sends,
        ),
        (
            "remote_resets_total",
            "Sessions the peer reset",
            st.remote_resets,
        ),
        (
            "rdma_send_bytes_total",
            "Stream bytes sent in RDMA SENDs",
            st.rdma_send_bytes,
        ),
        (
            "rdma_read_bytes_total",
            "Segment bytes the receiver pulled with RDMA READ (no copy)",
            st.rdma_read_bytes,
        ),
        (
            "rdma_copied_bytes_total",
            "Bytes copied to or from registered RDMA buffers (headers and small payloads)",
            st.rdma_copied_bytes,
        ),
        (
            "rdma_credit_waits_total",
            "Times an RDMA connection had data to send and no credit",
            st.rdma_credit_waits,
        ),
        (
            "rdma_cq_polls_total",
            "Non-empty polls of a worker's RDMA completion queue",
            st.rdma_cq_polls,
        ),
        (
            "rdma_cq_events_total",
            "Completion-channel events (wake-ups) of the RDMA completion queues",
            st.rdma_cq_events,
        ),
        (
            "rdma_registrations_total",
            "Memory registrations on the data path (payloads outside the arena, READ targets)",
            st.rdma_registrations,
        ),
        (
            "rdma_errors_total",
            "RDMA work completions in error other than flushes (queue pair failures)",
            st.rdma_errors,
        ),
    ];
    for (n, help, v) in plain {
        counter(&reg, n, help, &["entity"])
            .with_label_values(&[e])
            .inc_by(v);
    }
    counter(
        &reg,
        "resets_total",
        "Sessions ended (lossy ones at a fault, expired ones)",
        &["entity"],
    )
    .with_label_values(&[e])
    .inc_by(st.resets);
    let zc = counter(
        &reg,
        "zerocopy_sends_total",
        "SENDMSG_ZC operations by outcome",
        &["entity", "outcome"],
    );
    zc.with_label_values(&[e, "zerocopy"])
        .inc_by(st.zerocopy_sends);
    zc.with_label_values(&[e, "copied"])
        .inc_by(st.zerocopy_copied);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("utf-8")
}

pub use ringwire_metrics_http::serve_text;
