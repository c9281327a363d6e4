//! The messenger over real loopback sockets: every policy pair end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{EntityType, Message, Policy, Tuning};
use ringwire::{Messenger, Options};

fn options(workers: usize) -> Options {
    Options {
        workers,
        ..Options::default()
    }
}

#[test]
fn lossless_client_to_stateful_server_echo() {
    let server_rec = Recorder::echoing(0x11);
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(options(2))
        .start(server_rec.clone())
        .unwrap();
    let client_rec = std::sync::Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(options(2))
        .start(client_rec.clone())
        .unwrap();
    let target = server.addrs().0[0];
    let conn = client.connect(target, EntityType::OSD);
    const N: usize = 2000;
    let sent = |i: usize| {
        let mut m = Message::new(0x10).with_front((i as u32).to_le_bytes().to_vec());
        if i % 100 == 0 {
            m = m.with_data(vec![i as u8; 300_000]);
        }
        m
    };
    for i in 0..N {
        conn.send(sent(i)).unwrap();
    }
    client_rec.wait_for(Duration::from_secs(20), "echoes", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == N
    });
    let got = client_rec.messages();
    for (i, (_, seq, front)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(front, &(i as u32).to_le_bytes().to_vec());
    }
    assert!(conn.is_connected());
    assert_eq!(conn.peer().unwrap().ty, EntityType::OSD);
    assert_received(&server_rec, N, sent);
    drop(client);
    drop(server);
}

/// Sends `n` numbered messages (some large) and waits until the receiver has them all.
fn numbered(i: usize, big_every: usize, big: usize) -> Message {
    let mut m = Message::new(0x10).with_front((i as u32).to_le_bytes().to_vec());
    if big_every > 0 && i % big_every == 0 {
        m = m.with_data(vec![(i % 251) as u8; big]);
    }
    m
}

/// `rec` received exactly the `n` messages `sent(0..n)`, in order, each intact.
fn assert_received(rec: &Recorder, n: usize, sent: impl Fn(usize) -> Message) {
    let got = rec.contents();
    assert_eq!(got.len(), n, "every message exactly once");
    for (i, (_, content)) in got.iter().enumerate() {
        assert_eq!(
            *content,
            Content::of(&sent(i)),
            "message {i}: in order, intact"
        );
    }
}

#[test]
fn lossless_survives_injected_socket_failures() {
    let server_rec = std::sync::Arc::new(Recorder::default());
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(Options {
            tuning: Tuning {
                inject_socket_failures: 30,
                ..Tuning::default()
            },
            ..options(2)
        })
        .start(server_rec.clone())
        .unwrap();
    let client_rec = std::sync::Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            tuning: Tuning {
                inject_socket_failures: 30,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                ..Tuning::default()
            },
            ..options(2)
        })
        .start(client_rec.clone())
        .unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    const N: usize = 2000;
    // In rounds, so that there are many receive batches for the injector to strike: with
    // one batch per round, 200 rounds leave it (29/30)^200 ≈ 0.1 % to miss them all.
    for round in 0..200 {
        for i in round * 10..(round + 1) * 10 {
            conn.send(numbered(i, 97, 1 << 20)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    server_rec.wait_for(Duration::from_secs(60), "all messages", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            >= N
    });
    assert_received(&server_rec, N, |i| numbered(i, 97, 1 << 20));
    assert_eq!(server_rec.count(|s| matches!(s, Seen::RemoteReset(_))), 0);
    assert_eq!(client_rec.count(|s| matches!(s, Seen::RemoteReset(_))), 0);
    let injected = server.stats().injected_faults + client.stats().injected_faults;
    assert!(injected > 0, "no failure was injected");
    assert!(
        server.stats().handshakes > 1,
        "the session resumed after failures"
    );
}

#[test]
fn lossless_peers_connecting_both_ways_share_one_session() {
    let recs: Vec<_> = (0..2)
        .map(|_| std::sync::Arc::new(Recorder::default()))
        .collect();
    let ms: Vec<_> = (0..2)
        .map(|i| {
            Messenger::builder(name(EntityType::OSD, &i.to_string()))
                .bind(loopback())
                .policy(EntityType::OSD, Policy::lossless_peer())
                .options(options(2))
                .start(recs[i].clone())
                .unwrap()
        })
        .collect();
    let a_to_b = ms[0].connect(ms[1].addrs().0[0], EntityType::OSD);
    let b_to_a = ms[1].connect(ms[0].addrs().0[0], EntityType::OSD);
    const N: usize = 500;
    for i in 0..N {
        a_to_b.send(numbered(i, 0, 0)).unwrap();
        b_to_a.send(numbered(i, 0, 0)).unwrap();
    }
    for rec in &recs {
        rec.wait_for(Duration::from_secs(20), "peer messages", |s| {
            s.iter()
                .filter(|x| matches!(x, Seen::Message { .. }))
                .count()
                >= N
        });
    }
    for rec in &recs {
        assert_received(rec, N, |i| numbered(i, 0, 0));
        let msgs = rec.messages();
        let conns: std::collections::HashSet<u64> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(conns.len(), 1, "one session between the peers");
    }
}

#[test]
fn lossy_client_sees_reset_when_the_server_marks_down() {
    init_tracing();
    let server_rec = Recorder::echoing(0x11);
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(options(1))
        .start(server_rec.clone())
        .unwrap();
    let client_rec = std::sync::Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossy_client())
        .options(options(1))
        .start(client_rec.clone())
        .unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    conn.send(numbered(0, 0, 0)).unwrap();
    client_rec.wait_for(Duration::from_secs(10), "echo", |s| {
        s.iter().any(|x| matches!(x, Seen::Message { .. }))
    });
    let accepted = server_rec.conns.lock().unwrap()[0].clone();
    accepted.mark_down();
    client_rec.wait_for(Duration::from_secs(10), "reset", |s| {
        s.iter().any(|x| matches!(x, Seen::Reset(_)))
    });
    assert!(conn.is_closed());
    assert!(
        conn.send(numbered(1, 0, 0)).is_err(),
        "a closed lossy connection refuses sends"
    );
    // A new connection works.
    let again = client.connect(server.addrs().0[0], EntityType::OSD);
    assert_ne!(again, conn);
    again.send(numbered(2, 0, 0)).unwrap();
    client_rec.wait_for(Duration::from_secs(10), "second echo", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == 2
    });
}

/// A stateful server (one worker) and a lossless client with `client_options`, connected.
fn stateful_pair(
    client_options: Options,
) -> (
    Messenger,
    std::sync::Arc<Recorder>,
    Messenger,
    ringwire::Connection,
) {
    let server_rec = std::sync::Arc::new(Recorder::default());
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(options(1))
        .start(server_rec.clone())
        .unwrap();
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(client_options)
        .start(std::sync::Arc::new(Recorder::default()))
        .unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    (server, server_rec, client, conn)
}

#[test]
fn zero_copy_is_tried_and_dropped_where_the_kernel_copies_anyway() {
    let (_server, server_rec, client, conn) = stateful_pair(Options {
        zerocopy_min: 64 << 10,
        ..options(1)
    });
    for i in 0..20 {
        conn.send(numbered(i, 1, 1 << 20)).unwrap();
    }
    server_rec.wait_for(Duration::from_secs(20), "all", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == 20
    });
    assert_received(&server_rec, 20, |i| numbered(i, 1, 1 << 20));
    let st = client.stats();
    // Loopback copies: the first zero-copy attempt says so, and the connection stops trying.
    assert!(st.zerocopy_copied >= 1, "{st:?}");
    assert!(
        st.zerocopy_copied + st.zerocopy_sends < 20,
        "fell back after learning: {st:?}"
    );
}

#[test]
fn arena_payloads_go_out_from_the_registered_buffer_and_come_back() {
    let (_server, server_rec, client, conn) = stateful_pair(Options {
        arena_size: 16 << 20,
        ..options(1)
    });
    // 40 × 4 MiB through a 16 MiB arena: only possible if sent payloads return to it.
    for i in 0..40u64 {
        let mut buf = None;
        wait_until(
            Instant::now() + Duration::from_secs(30),
            "a sent payload back in the arena",
            || {
                buf = client.alloc_payload(4 << 20);
                buf.is_some()
            },
        );
        let mut buf = buf.unwrap();
        buf.fill((i % 251) as u8);
        conn.send(
            Message::new(0x10)
                .with_front((i as u32).to_le_bytes().to_vec())
                .with_data(buf.freeze()),
        )
        .unwrap();
    }
    server_rec.wait_for(Duration::from_secs(30), "all", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == 40
    });
    assert_received(&server_rec, 40, |i| {
        Message::new(0x10)
            .with_front((i as u32).to_le_bytes().to_vec())
            .with_data(vec![(i % 251) as u8; 4 << 20])
    });
    let st = client.stats();
    assert!(
        st.registered_sends >= 1,
        "sent from the fixed buffer: {st:?}"
    );
}

#[test]
fn rdma_without_its_device_is_a_clear_error() {
    let mut o = options(1);
    o.rdma.device = Some("no-such-hca".into());
    let err = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(ringwire::proto::EntityAddr::parse("rdma:127.0.0.1:0").unwrap())
        .options(o.clone())
        .start(std::sync::Arc::new(Recorder::default()))
        .err()
        .expect("no messenger without its RDMA device");
    let text = err.to_string();
    assert!(
        matches!(err, ringwire::Error::Rdma(_)) && text.contains("RDMA is unavailable"),
        "{text}"
    );
    assert!(
        text.contains("no-such-hca") || text.contains("libibverbs"),
        "names the device or the missing library: {text}"
    );
    // A client without the device: connecting over RDMA fails like a refused connection
    // (the lossy session resets), and TCP still works.
    let rec = std::sync::Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossy_client())
        .options(o)
        .start(rec.clone())
        .unwrap();
    let conn = client.connect(
        ringwire::proto::EntityAddr::parse("rdma:127.0.0.1:9/1").unwrap(),
        EntityType::OSD,
    );
    rec.wait_for(Duration::from_secs(10), "reset", |s| {
        s.iter().any(|x| matches!(x, Seen::Reset(_)))
    });
    assert!(conn.is_closed());
    // TCP: a round trip with an echoing server.
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(ringwire::proto::EntityAddr::parse("v2:127.0.0.1:0").unwrap())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(options(1))
        .start(Recorder::echoing(0x11))
        .unwrap();
    let tcp = client.connect(server.addrs().0[0], EntityType::OSD);
    tcp.send(numbered(7, 0, 0)).unwrap();
    rec.wait_for(Duration::from_secs(10), "the echo over TCP", |s| {
        s.iter().any(|x| matches!(x, Seen::Message { .. }))
    });
    let echoes = rec.contents();
    assert_eq!(echoes.len(), 1);
    assert_eq!(echoes[0].1.ty, 0x11);
    assert_eq!(echoes[0].1.front, 7u32.to_le_bytes());
}
