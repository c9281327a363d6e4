//! Prometheus metrics: served over HTTP, valid exposition format (parsed by a real parser),
//! and the counters match what the test sent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{EntityType, Message, Policy};
use ringwire::{Messenger, Options};

fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"));
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} missing"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("unexpected type for {name}"),
    }
}

#[test]
fn metrics_endpoint_counts_what_was_sent() {
    let srec = Arc::new(Recorder::default());
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(Options {
            workers: 2,
            ..Options::default()
        })
        .start(srec.clone())
        .unwrap();
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(Arc::new(Recorder::default()))
        .unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    for i in 0..100u32 {
        conn.send(
            Message::new(0x10)
                .with_front(i.to_le_bytes().to_vec())
                .with_data(vec![1u8; 1000]),
        )
        .unwrap();
    }
    srec.wait_for(Duration::from_secs(10), "100 messages", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == 100
    });
    let s = scrape(
        server
            .serve_metrics("127.0.0.1:0".parse().unwrap())
            .unwrap(),
    );
    assert_eq!(
        value(&s, "ringwire_messages_total", Some(("direction", "in"))),
        100.0
    );
    assert_eq!(
        value(
            &s,
            "ringwire_payload_bytes_total",
            Some(("direction", "in"))
        ),
        100.0 * 1004.0
    );
    assert_eq!(
        value(&s, "ringwire_sessions", Some(("state", "ready"))),
        1.0
    );
    assert_eq!(value(&s, "ringwire_faults_total", None), 0.0);
    let client_metrics = client
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let c = scrape(client_metrics);
    assert_eq!(
        value(&c, "ringwire_messages_total", Some(("direction", "out"))),
        100.0
    );
    assert_eq!(value(&c, "ringwire_handshakes_total", None), 1.0);
    assert_eq!(
        value(&c, "ringwire_sessions", Some(("state", "ready"))),
        1.0
    );
    // Closing the session takes it off the gauge (the worker updates it after mark_down).
    conn.mark_down();
    let sessions = |state| {
        value(
            &scrape(client_metrics),
            "ringwire_sessions",
            Some(("state", state)),
        )
    };
    wait_until(
        Instant::now() + Duration::from_secs(10),
        "the closed session off the ready and connecting gauges",
        || sessions("ready") == 0.0 && sessions("connecting") == 0.0,
    );
}
