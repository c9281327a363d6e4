//! The send window: a lossless peer that reads everything but never acknowledges it cannot make
//! the sender hold more than `send_throttle_messages` / `send_throttle_bytes`. `Connection::send`
//! answers `SendError::Throttled` (with the message) at the limit, `send_timeout` waits, and the
//! window opens again when acknowledgements arrive.
//!
//! The peer is a bare protocol core over a blocking socket (`common::raw`): it completes the
//! handshake, then reads and keeps the bytes without feeding them to its endpoint, so no ACK
//! goes out; told to, it feeds them and acknowledges from then on.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{
    Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityType, Event, Message, Policy, Time,
};
use ringwire::{Connection, Messenger, Options, SendError};

/// A msgr2 server that reads and, until `acking` is set, acknowledges nothing.
struct SilentPeer {
    addr: EntityAddr,
    read: Arc<AtomicU64>,
    acking: Arc<AtomicBool>,
    /// Messages its endpoint delivered (once acknowledging).
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentPeer {
    fn start() -> SilentPeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = EntityAddr::msgr2(listener.local_addr().unwrap(), 77);
        let read = Arc::new(AtomicU64::new(0));
        let acking = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (read, acking, delivered, stop) = (
                read.clone(),
                acking.clone(),
                delivered.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let (s, peer) = listener.accept().unwrap();
                serve(s, peer, addr, &read, &acking, &delivered, &stop);
            })
        };
        SilentPeer {
            addr,
            read,
            acking,
            delivered,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    peer: std::net::SocketAddr,
    addr: EntityAddr,
    read: &AtomicU64,
    acking: &AtomicBool,
    delivered: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut cfg = EndpointConfig::new(name(EntityType::OSD, "0"), EntityAddrVec(vec![addr]));
    cfg.policies = vec![(EntityType::CLIENT, Policy::stateful_server())];
    let mut ep = Endpoint::new(cfg);
    let now = Time(1);
    let conn = ep.accept(now, peer);
    raw::handshake(&mut s, &mut ep, conn);
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::SeqCst) {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
            Err(_) => return,
        };
        read.fetch_add(n as u64, Ordering::SeqCst);
        kept.extend_from_slice(&buf[..n]);
        if !acking.load(Ordering::SeqCst) {
            continue;
        }
        ep.on_input(now, conn, &kept);
        kept.clear();
        while let Some(ev) = ep.poll_event() {
            if matches!(ev, Event::Message { .. }) {
                delivered.fetch_add(1, Ordering::SeqCst);
            }
        }
        // The ACKs, once the events are drained.
        if raw::flush(&mut s, &mut ep).is_err() {
            return;
        }
    }
}

fn client(messages: u64, bytes: u64) -> Messenger {
    Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            workers: 1,
            send_throttle_messages: messages,
            send_throttle_bytes: bytes,
            ..Options::default()
        })
        .start(Arc::new(Recorder::default()))
        .unwrap()
}

fn msg(len: usize) -> Message {
    Message::new(0x10).with_data(vec![0x5a; len])
}

/// Sends `len`-byte messages until one is refused; returns how many were taken.
fn fill(conn: &Connection, len: usize) -> usize {
    for taken in 0..(64 << 20) / len {
        match conn.send(msg(len)) {
            Ok(()) => {}
            Err(SendError::Throttled(back)) => {
                assert_eq!(back.data_contiguous().len(), len, "the message comes back");
                return taken;
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    panic!("64 MiB of messages taken and no throttle")
}

#[test]
fn a_peer_that_reads_but_never_acknowledges_holds_at_most_the_send_window() {
    // (row, send_throttle_messages, send_throttle_bytes, message size, messages taken)
    #[rustfmt::skip]
    let rows: [(&str, u64, u64, usize, usize); 2] = [
        ("the message limit binds", 100, 1 << 20, 4 << 10, 100),
        ("the byte limit binds", 1000, 1 << 20, 256 << 10, 4),
    ];
    for (row, messages, bytes, len, expected) in rows {
        let peer = SilentPeer::start();
        let m = client(messages, bytes);
        let conn = m.connect(peer.addr, EntityType::OSD);
        conn.wait_ready(Duration::from_secs(10)).unwrap();
        assert_eq!(fill(&conn, len), expected, "{row}");
        // Everything taken went out and was read: it is held for want of an ACK, not queued.
        let on_wire = (expected * len) as u64;
        wait_until(
            Instant::now() + Duration::from_secs(10),
            "the peer to read every message taken",
            || peer.read.load(Ordering::SeqCst) >= on_wire,
        );
        // No acknowledgement, no room: thousands more are refused, none queued.
        for _ in 0..10_000 {
            assert!(
                matches!(conn.send(msg(len)), Err(SendError::Throttled(_))),
                "{row}"
            );
        }
        let t = Instant::now();
        let waited = conn.send_timeout(msg(len), Duration::from_millis(200));
        assert!(matches!(waited, Err(SendError::Throttled(_))), "{row}");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{row}: waited the timeout"
        );
        let st = m.stats();
        assert_eq!(st.messages_out, expected as u64, "{row}");
        assert!(st.send_throttled > 10_000, "{row}: {}", st.send_throttled);
        assert!(conn.is_connected(), "{row}: a slow peer is not a fault");
    }
}

#[test]
fn acknowledgements_open_the_window_for_a_waiting_sender() {
    let peer = SilentPeer::start();
    let m = client(10, 0);
    let conn = m.connect(peer.addr, EntityType::OSD);
    conn.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(fill(&conn, 1000), 10);
    let acking = peer.acking.clone();
    let ack_later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        acking.store(true, Ordering::SeqCst);
    });
    let t = Instant::now();
    conn.send_timeout(msg(1000), Duration::from_secs(20))
        .expect("room once the peer acknowledges");
    let took = t.elapsed();
    ack_later.join().unwrap();
    assert!(
        took >= Duration::from_millis(300),
        "waited for the ACK: {took:?}"
    );
    // The window keeps turning: a hundred more, each waiting for room as needed.
    for _ in 0..100 {
        conn.send_timeout(msg(1000), Duration::from_secs(20))
            .unwrap();
    }
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "the peer to deliver all 111 messages",
        || peer.delivered.load(Ordering::SeqCst) == 111,
    );
}

#[test]
fn a_lossless_session_to_a_peer_that_is_down_queues_at_most_the_window() {
    // Nothing listens there: the session redials with backoff and its queue is what grows.
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = EntityAddr::msgr2(unused.local_addr().unwrap(), 0);
    drop(unused);
    let m = client(50, 0);
    let conn = m.connect(target, EntityType::OSD);
    assert_eq!(fill(&conn, 100), 50);
    assert!(!conn.is_connected());
}
