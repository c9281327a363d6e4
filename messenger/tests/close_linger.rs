//! Closing a connection whose peer stopped reading takes a bounded time. The socket's buffers
//! are full, so the send in flight (and the last words a close flushes) would wait for a
//! reader that never comes: a peer that is alive but stuck, or one behind a blackhole, until
//! TCP gives up (a quarter of an hour), or forever while it keeps answering zero-window probes.
//! `Messenger::shutdown` (and `Drop`) hung that long; found by tests/netns_cluster.rs when the
//! bridge went before the messengers.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use ringwire::proto::{
    Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityType, Message, Policy, Time,
};
use ringwire::{Messenger, Options, SendError};

/// A msgr2 server that completes the handshake and then never reads again.
fn stuck_peer(stop: Arc<AtomicBool>) -> (EntityAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = EntityAddr::msgr2(listener.local_addr().unwrap(), 77);
    let thread = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut cfg = EndpointConfig::new(name(EntityType::OSD, "0"), EntityAddrVec(vec![addr]));
        cfg.policies = vec![(EntityType::CLIENT, Policy::stateful_server())];
        let mut ep = Endpoint::new(cfg);
        let conn = ep.accept(Time(1), peer);
        raw::handshake(&mut s, &mut ep, conn);
        // Keep the socket open (and its receive buffer full) until told.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (addr, thread)
}

#[test]
fn shutdown_returns_while_a_peer_that_stopped_reading_holds_our_send_buffer_full() {
    // Zero-copy sends (1 MiB chunks, over `zerocopy_min`) and plain ones.
    for zerocopy_min in [256 << 10, 0] {
        shutdown_with_a_stuck_peer(zerocopy_min);
    }
}

fn shutdown_with_a_stuck_peer(zerocopy_min: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, peer) = stuck_peer(stop.clone());
    let m = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            workers: 1,
            arena_size: 0,
            zerocopy_min,
            ..Options::default()
        })
        .start(Arc::new(Recorder::default()))
        .unwrap();
    let conn = m.connect(addr, EntityType::OSD);
    conn.wait_ready(Duration::from_secs(10)).unwrap();
    // 64 MiB: far more than loopback's socket buffers take, so a send is left waiting.
    for _ in 0..64 {
        match conn.send(Message::new(0x10).with_data(vec![0x5a; 1 << 20])) {
            Ok(()) | Err(SendError::Throttled(_)) => {}
            Err(e) => panic!("send: {e}"),
        }
    }
    wait_until(
        Instant::now() + Duration::from_secs(10),
        "the socket buffers to fill",
        || m.stats().bytes_out > 0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (done_tx, done) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        m.shutdown();
        m.wait();
        let _ = done_tx.send(());
    });
    let returned = done.recv_timeout(Duration::from_secs(10)).is_ok();
    let took = t.elapsed();
    // Let the peer go either way, so that a failing run still ends.
    stop.store(true, Ordering::SeqCst);
    peer.join().unwrap();
    waiter.join().unwrap();
    assert!(
        returned,
        "zerocopy_min {zerocopy_min}: shutdown did not return within 10 s"
    );
    assert!(
        took < Duration::from_secs(3),
        "zerocopy_min {zerocopy_min}: shutdown took {took:?}"
    );
    eprintln!("zerocopy_min {zerocopy_min}: shutdown took {took:?}");
}
