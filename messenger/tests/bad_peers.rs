//! Bad peers against a real server: garbage, a stall mid-frame, silence, and a flood that never
//! reads. Each gets a clear error or backpressure, memory stays bounded, and a well-behaved
//! client on the same server is served throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mem::rss;
use common::*;
use ringwire::proto::frame::Banner;
use ringwire::proto::{EntityType, Message, Policy, Time, Tuning};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

fn server(rec: Arc<Recorder>, options: Options) -> Messenger {
    Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(options)
        .start(rec)
        .unwrap()
}

fn strict() -> Options {
    Options {
        workers: 1,
        tuning: Tuning {
            handshake_timeout: Duration::from_millis(800),
            ..Tuning::default()
        },
        max_send_backlog: 4 << 20,
        ..Options::default()
    }
}

/// Seconds until the server closes `s` (reads return 0 or an error).
fn closed_within(mut s: TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("still open after {limit:?}")
            }
            Err(_) => return t.elapsed(),
        }
    }
}

/// A good client pinging in the background; returns its echo counter.
fn good_client(
    target: ringwire::proto::EntityAddr,
    stop: Arc<AtomicBool>,
) -> (Messenger, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let m = Messenger::builder(name(EntityType::CLIENT, "good"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    let conn = m.connect(target, EntityType::OSD);
    std::thread::spawn(move || {
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let _ = conn.send(Message::new(0x10).with_front(i.to_le_bytes().to_vec()));
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (m, rec)
}

fn echoes(rec: &Recorder) -> usize {
    rec.count(|s| matches!(s, Seen::Message { .. }))
}

/// The good client gets a new echo (within 10 s) after what happened so far.
fn still_served(rec: &Recorder) {
    let before = echoes(rec);
    wait_until(
        Instant::now() + Duration::from_secs(10),
        "the good client is still being served",
        || echoes(rec) > before,
    );
}

#[test]
fn garbage_silence_and_stalls_are_cut_off_and_others_unaffected() {
    let srec = Recorder::echoing(0x11);
    let srv = server(srec.clone(), strict());
    let addr = srv.addrs().0[0].addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (_good, grec) = good_client(srv.addrs().0[0], stop.clone());
    grec.wait_for(Duration::from_secs(10), "good client served", |s| {
        s.len() > 3
    });

    // Garbage: closed at once (bad banner).
    let mut g = TcpStream::connect(addr).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: ringwire\r\n\r\n")
        .unwrap();
    assert!(closed_within(g, Duration::from_secs(5)) < Duration::from_secs(1));

    // Silence: cut at the handshake timeout.
    let silent = TcpStream::connect(addr).unwrap();
    let took = closed_within(silent, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A valid banner, then half a frame, then nothing: also cut at the handshake timeout.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&Banner::RINGWIRE.encode()).unwrap();
    half.write_all(&[1, 1, 36, 0, 0, 0, 8, 0]).unwrap();
    let took = closed_within(half, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "{took:?}");

    still_served(&grec);
    assert!(srv.stats().faults >= 3, "each bad peer was faulted");
    stop.store(true, Ordering::Relaxed);
}

/// A msgr2 client that completes the handshake over `s`, then only writes.
fn handshake_then_flood(
    mut s: TcpStream,
    target: ringwire::proto::EntityAddr,
    bytes: usize,
) -> usize {
    let (mut ep, _, sid) = raw::dial(&mut s, "flood", Policy::lossless_client(), target);
    let now = Time(1);
    // Flood; never read again. Writes stall once the server stops reading us.
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let payload = bytes::Bytes::from(vec![0xabu8; 64 << 10]);
    let mut written = 0;
    while written < bytes {
        // In the front, which the server echoes: every reply is as large as the request.
        ep.send(now, sid, Message::new(0x10).with_front(payload.clone()))
            .unwrap();
        match raw::flush(&mut s, &mut ep) {
            Ok(n) => written += n,
            Err(_) => return written, // backpressure reached us
        }
    }
    written
}

#[test]
fn a_peer_that_floods_without_reading_gets_backpressure_not_our_memory() {
    let srec = Recorder::echoing(0x11);
    let srv = server(srec.clone(), strict());
    let target = srv.addrs().0[0];
    let stop = Arc::new(AtomicBool::new(false));
    let (_good, grec) = good_client(target, stop.clone());
    grec.wait_for(Duration::from_secs(10), "good client served", |s| {
        s.len() > 3
    });
    let rss_before = rss();
    let s = TcpStream::connect(target.addr.unwrap()).unwrap();
    let attempted = 512usize << 20;
    let written = handshake_then_flood(s, target, attempted);
    let grown = rss().saturating_sub(rss_before);
    eprintln!(
        "flood: {} MiB of {} MiB accepted before backpressure; RSS grew {} MiB",
        written >> 20,
        attempted >> 20,
        grown >> 20
    );
    assert!(
        written < attempted,
        "the server stopped reading: {written} of {attempted} bytes went out"
    );
    assert!(
        srv.stats().backlog_stalls > 0,
        "stalled on the send backlog"
    );
    // Echoes of what it did read are bounded by the backlog bound plus socket buffers.
    assert!(grown < 96 << 20, "memory grew by {} MiB", grown >> 20);
    still_served(&grec);
    stop.store(true, Ordering::Relaxed);
}

/// Holds every message it is given until told to let go.
struct Hoarder {
    held: Mutex<Vec<Incoming>>,
    peak: AtomicU64,
    total: AtomicU64,
}

impl Dispatcher for Hoarder {
    fn dispatch(&self, _conn: &Connection, msg: Incoming) {
        let mut h = self.held.lock().unwrap();
        h.push(msg);
        self.peak.fetch_max(h.len() as u64, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dispatch_throttle_stops_reading_until_messages_are_released() {
    let hoarder = Arc::new(Hoarder {
        held: Mutex::new(Vec::new()),
        peak: AtomicU64::new(0),
        total: AtomicU64::new(0),
    });
    let srv = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(Options {
            workers: 1,
            dispatch_throttle_messages: 100,
            dispatch_throttle_bytes: 0,
            ..Options::default()
        })
        .start(hoarder.clone())
        .unwrap();
    let crec = Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(crec)
        .unwrap();
    let conn = client.connect(srv.addrs().0[0], EntityType::OSD);
    for i in 0..1000u32 {
        conn.send(
            Message::new(0x10)
                .with_front(i.to_le_bytes().to_vec())
                .with_data(vec![0u8; 2000]),
        )
        .unwrap();
    }
    // One receive batch may carry several messages past the limit, never an unbounded number.
    const BOUND: u64 = 100 + 16;
    let total = || hoarder.total.load(Ordering::SeqCst);
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "the application to hold the throttle's 100 messages and reading to stall",
        || total() >= 100 && srv.stats().throttle_stalls > 0,
    );
    // Reading stopped: nothing more is dispatched while the application holds them, watched
    // for the grace period.
    holds_for(
        GRACE,
        "no dispatch past the throttle while the application holds messages",
        || total() <= BOUND,
    );
    // Let go, repeatedly, until everything arrived.
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "all 1000 messages once released",
        || {
            hoarder.held.lock().unwrap().clear();
            total() >= 1000
        },
    );
    assert!(
        hoarder.peak.load(Ordering::SeqCst) <= BOUND,
        "peak {}",
        hoarder.peak.load(Ordering::SeqCst)
    );
}
