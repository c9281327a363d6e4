//! Slow and half-open peers at scale: 5 000 raw TCP connections that drip a byte every two
//! seconds, open and never speak, or stop in the middle of a frame, against one real server
//! `Messenger` (one worker, echoing). Meanwhile a normal Ringwire client pings it, and in
//! turn a twin server that has no bad peers: its median latency to the first must stay within
//! 2x of its median to the twin at the same moments (its latency before the bad peers came
//! and after they left is printed beside it). The server's heap per bad connection is
//! asserted, and what it keeps once they are gone, and so is what the server does with
//! them: `handshake_timeout` cuts those that never reach READY, counted from the accept
//! whatever they drip; `idle_timeout` cuts READY ones once their input stops, counted from
//! their last byte, so a peer dripping a frame is kept for as long as it drips.
//!
//! The bad peers live in a child process (this test binary run as `bad_peers_process`), so
//! that their descriptors and memory are not the server's. Heap, RSS and descriptors are
//! this whole process's: this file holds this one test, so that nothing else runs beside it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::mem::{heap_in_use, need_descriptors_for, open_fds, predictable_malloc, rss};
use common::*;
use ringwire::proto::frame::Banner;
use ringwire::proto::{EntityAddr, EntityType, Message, Policy, Time, Tuning};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

/// Bad peers of each kind.
const PER_KIND: usize = 1000;
/// The server's timers, short for the test (defaults: 10 s and 900 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// How often a dripping peer sends its next byte.
const DRIP: Duration = Duration::from_secs(2);
/// How often the bad peers' process wakes up to drip what is due (it wakes for closes too).
const TICK_MS: i32 = 5;
/// How long a peer dripping a frame after READY keeps dripping (from the end of the setup):
/// longer than `IDLE_TIMEOUT`, so that being kept is the drip's doing.
const DRIP_FOR: Duration = Duration::from_secs(12);
/// How often the client pings.
const PING_EVERY: Duration = Duration::from_micros(500);
/// How long each latency sample pings.
const PING_FOR: Duration = Duration::from_secs(4);
/// How late a timer may cut a connection on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);
/// What the server's heap may grow by per bad connection while they are attached, on
/// average: issue 13's bound on an idle connection end (tests/many_connections.rs), which
/// holds with a fifth of them inside a 4 KiB data segment whose buffer is allocated.
const HEAP_PER_BAD_PEER: u64 = 8 << 10;
/// What the server's heap may keep once every bad peer is gone, about 800 B per connection it
/// once held: what its timer heap and handle tables keep of their peak. Its connection and
/// session tables give their room back (`shrink_when_sparse`); they kept 16–26 MiB before.
const HEAP_KEPT: u64 = 4 << 20;
const TY: u16 = 0x5150;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Connects and never sends a byte.
    Silent,
    /// Sends the banner a byte every `DRIP`.
    BannerDrip,
    /// Sends the banner and 8 bytes of a 32-byte HELLO preamble, then nothing.
    HalfHello,
    /// Completes the handshake, sends half a MESSAGE frame (4 KiB of data), then nothing.
    HalfMessage,
    /// Completes the handshake, then sends a MESSAGE frame a byte every `DRIP` for `DRIP_FOR`.
    MessageDrip,
}

const KINDS: [Kind; 5] = [
    Kind::Silent,
    Kind::BannerDrip,
    Kind::HalfHello,
    Kind::HalfMessage,
    Kind::MessageDrip,
];

impl Kind {
    /// The server timer that must cut it, and its duration.
    fn timeout(self) -> (&'static str, Duration) {
        match self {
            Kind::Silent | Kind::BannerDrip | Kind::HalfHello => {
                ("handshake_timeout", HANDSHAKE_TIMEOUT)
            }
            Kind::HalfMessage | Kind::MessageDrip => ("idle_timeout", IDLE_TIMEOUT),
        }
    }

    /// What that timer counts from.
    fn counted_from(self) -> &'static str {
        match self.timeout().0 {
            "handshake_timeout" => "their connect",
            _ => "their last byte",
        }
    }
}

/// Round-trip times of the pinging client, sorted.
struct Latency(Vec<Duration>);

impl Latency {
    fn pooled(all: &[&Latency]) -> Latency {
        let mut rtts: Vec<Duration> = all.iter().flat_map(|l| l.0.iter().copied()).collect();
        rtts.sort();
        Latency(rtts)
    }

    fn at(&self, percent: usize) -> Duration {
        self.0[(self.0.len() * percent / 100).min(self.0.len() - 1)]
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:?}, p99 {:?}, max {:?} ({} round trips)",
            self.at(50),
            self.at(99),
            self.0.last().unwrap(),
            self.0.len()
        )
    }
}

/// Hands every echo to the pinging thread.
struct Pongs(mpsc::Sender<()>);

impl Dispatcher for Pongs {
    fn dispatch(&self, _conn: &Connection, _msg: Incoming) {
        let _ = self.0.send(());
    }
}

/// Pings one message at a time, over each of `conns` in turn, one every `PING_EVERY`, until
/// `done`, timing each echo. Paced, as a client that has work to do between requests: one
/// that pings flat out keeps three threads busy on two cores, and measures its own
/// contention. In turn, so that the servers are compared under the machine's same load.
fn ping<const N: usize>(
    conns: [&Connection; N],
    pongs: &mpsc::Receiver<()>,
    mut done: impl FnMut() -> bool,
) -> [Latency; N] {
    let mut rtts: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::new());
    let mut next = Instant::now();
    while !done() {
        for (conn, rtts) in conns.iter().zip(rtts.iter_mut()) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += PING_EVERY;
            let t = Instant::now();
            conn.send(Message::new(TY).with_front(vec![7u8; 64]))
                .expect("the ping is sent");
            pongs
                .recv_timeout(Duration::from_secs(10))
                .expect("the echo within 10 s");
            rtts.push(t.elapsed());
        }
    }
    rtts.map(|mut r| {
        assert!(!r.is_empty(), "no round trip completed");
        r.sort();
        Latency(r)
    })
}

fn for_a_while(d: Duration) -> impl FnMut() -> bool {
    let end = Instant::now() + d;
    move || Instant::now() >= end
}

fn server() -> Messenger {
    Messenger::builder(name(EntityType::OSD, "0"))
        .bind(EntityAddr::parse("v2:127.0.0.1:0").unwrap())
        .default_policy(Policy::stateless_server())
        .options(Options {
            tuning: Tuning {
                handshake_timeout: HANDSHAKE_TIMEOUT,
                idle_timeout: IDLE_TIMEOUT,
                ..Tuning::default()
            },
            ..one_worker()
        })
        .start(Arc::new(Echo))
        .expect("io_uring available")
}

/// What the child reported of one kind: peers closed by the server, and how long after the
/// moment its timer counts from (the connect; the last byte after READY) the first and the
/// last were closed.
struct Closed {
    kind: Kind,
    closed: usize,
    first: Duration,
    last: Duration,
}

fn parse_closed(line: &str) -> Closed {
    let f: Vec<&str> = line.split_whitespace().collect();
    let kind = KINDS
        .into_iter()
        .find(|k| format!("{k:?}") == f[0])
        .expect("a kind");
    let ms = |s: &str| Duration::from_millis(s.parse().unwrap());
    Closed {
        kind,
        closed: f[1].parse().unwrap(),
        first: ms(f[2]),
        last: ms(f[3]),
    }
}

/// The environment variable that makes `bad_peers_process` the bad peers of a running test.
const SERVER_ENV: &str = "RINGWIRE_SLOW_PEERS_SERVER";

#[test]
fn five_thousand_slow_and_half_open_peers_are_cut_by_the_timers_without_slowing_a_client() {
    predictable_malloc();
    need_descriptors_for(KINDS.len() * PER_KIND);
    let srv = server();
    let twin = server();
    let addr = srv.addrs().0[0];
    let (tx, pongs) = mpsc::channel();
    let client = Messenger::builder(name(EntityType::CLIENT, "good"))
        .default_policy(Policy::lossy_client())
        .options(one_worker())
        .start(Arc::new(Pongs(tx)))
        .expect("io_uring available");
    let conns = [
        &client.connect(addr, EntityType::OSD),
        &client.connect(twin.addrs().0[0], EntityType::OSD),
    ];
    // Warm-up (rings, pools, the allocator), then the latency without bad peers.
    ping(conns, &pongs, for_a_while(Duration::from_millis(500)));
    let before = ping(conns, &pongs, for_a_while(PING_FOR));
    let (heap0, rss0, fds0) = (heap_in_use(), rss(), open_fds());
    let stats0 = srv.stats();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bad_peers_process", "--ignored", "--nocapture"])
        .env(SERVER_ENV, addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the bad peers' process starts");
    let (line_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let expect = |prefix: &str, timeout: Duration| -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!("the bad peers' process did not say {prefix:?} in time"),
            }
        }
    };
    let setup = expect("READY", Duration::from_secs(30));
    let bad = KINDS.len() * PER_KIND;

    // Every bad peer attached: the server holds a descriptor for each.
    std::thread::sleep(Duration::from_millis(300));
    let (heap1, rss1, fds1) = (heap_in_use(), rss(), open_fds());
    let faults1 = srv.stats().faults;
    let with = ping(conns, &pongs, for_a_while(PING_FOR));
    let faults2 = srv.stats().faults;
    let per_peer = heap1.saturating_sub(heap0) / bad as u64;
    eprintln!(
        "slow_peers: {bad} bad peers set up in {setup} ms; server: {fds1} descriptors (was {fds0}), \
         heap +{} KiB ({per_peer} B per bad peer), RSS +{} KiB",
        heap1.saturating_sub(heap0) >> 10,
        rss1.saturating_sub(rss0) >> 10
    );
    assert!(
        fds1 >= fds0 + bad,
        "every bad peer is connected: {fds1} descriptors, {fds0} before"
    );
    assert_eq!(
        faults1, faults2,
        "no bad peer was cut while the latency was measured: it was measured with all of them"
    );

    // Then they are reaped, while the client keeps pinging.
    let mut reports = Vec::new();
    let reaping = ping(conns, &pongs, || match lines.try_recv() {
        Ok(line) => {
            if let Some(rest) = line.strip_prefix("CLOSED") {
                reports.push(parse_closed(rest));
            }
            line == "END"
        }
        Err(mpsc::TryRecvError::Empty) => false,
        Err(mpsc::TryRecvError::Disconnected) => panic!("the bad peers' process ended early"),
    });
    assert!(
        child.wait().unwrap().success(),
        "the bad peers' process failed"
    );
    for r in &reports {
        let (timer, timeout) = r.kind.timeout();
        eprintln!(
            "slow_peers: {:?}: {} of {PER_KIND} cut by {timer} ({timeout:?}), {:?} to {:?} after \
             {}",
            r.kind,
            r.closed,
            r.first,
            r.last,
            r.kind.counted_from()
        );
    }
    // Nothing the server held for them is left: descriptors, sessions, heap.
    wait_until(
        Instant::now() + Duration::from_secs(5),
        "the server to close every bad peer's descriptor",
        || open_fds() <= fds0,
    );
    let after = ping(conns, &pongs, for_a_while(PING_FOR));
    for (when, [l, t]) in [
        ("before the bad peers", &before),
        ("with them", &with),
        ("while they were cut", &reaping),
        ("after", &after),
    ] {
        eprintln!("slow_peers: latency {when}: {l}; to the twin: {t}");
    }
    let alone = Latency::pooled(&[&before[0], &after[0]]);
    eprintln!(
        "slow_peers: median with them / without (before and after, pooled): {:.2}",
        with[0].at(50).as_secs_f64() / alone.at(50).as_secs_f64()
    );
    let stats3 = srv.stats();
    let (heap3, rss3) = (heap_in_use(), rss());
    eprintln!(
        "slow_peers: after: heap {:+} KiB, RSS {:+} KiB from before the bad peers; \
         server faults +{}, sessions ready {} (was {})",
        (heap3 as i64 - heap0 as i64) >> 10,
        (rss3 as i64 - rss0 as i64) >> 10,
        stats3.faults - stats0.faults,
        stats3.sessions_ready,
        stats0.sessions_ready
    );

    assert_eq!(reports.len(), KINDS.len(), "a report per kind");
    for r in &reports {
        let (timer, timeout) = r.kind.timeout();
        assert_eq!(
            r.closed, PER_KIND,
            "{:?}: every peer cut by {timer}",
            r.kind
        );
        // Not before the timer ran out (counted from the connect, whatever was dripped, or
        // from the last byte), and not long after.
        assert!(
            r.first >= timeout.saturating_sub(Duration::from_millis(50))
                && r.last <= timeout + SLACK,
            "{:?}: cut {:?} to {:?} after, {timer} is {timeout:?}",
            r.kind,
            r.first,
            r.last
        );
    }
    assert!(
        stats3.faults - stats0.faults >= bad as u64,
        "each bad peer faulted on the server"
    );
    assert_eq!(
        (stats3.sessions_ready, stats3.sessions_connecting),
        (stats0.sessions_ready, stats0.sessions_connecting),
        "the bad peers' sessions ended"
    );
    assert!(
        per_peer <= HEAP_PER_BAD_PEER,
        "a bad peer costs the server {per_peer} B of heap, over {HEAP_PER_BAD_PEER}"
    );
    assert!(
        heap3 <= heap0 + HEAP_KEPT,
        "the server kept {} KiB of heap after the bad peers were gone",
        (heap3 - heap0) >> 10
    );
    // The client's median latency to the server with bad peers, while they are attached and
    // while they are cut, within 2x of its median to the twin at the same moments. Not p99
    // (printed above): on two shared cores under other builds, the p99 of the two servers
    // differs by up to 4x in windows without any bad peer, so 2x would say nothing of them.
    // (The median before and after, in turn, moves with the load of the machine.)
    for (when, [l, t]) in [("with bad peers", &with), ("while they were cut", &reaping)] {
        assert!(
            l.at(50) <= t.at(50) * 2,
            "median latency {when} {:?}, to the twin {:?}",
            l.at(50),
            t.at(50)
        );
    }
}

/// A bad peer in the child process.
struct Peer {
    kind: Kind,
    s: TcpStream,
    /// Bytes still to drip, first first.
    drip: std::collections::VecDeque<u8>,
    /// What the server's timer for it counts from: the connect before READY, the last byte
    /// sent after.
    since: Instant,
    closed: Option<Duration>,
}

/// The bad peers of the test above, run by it in a child process (ignored on its own).
#[test]
#[ignore = "the bad peers of five_thousand_slow_and_half_open_peers_..., which starts it"]
fn bad_peers_process() {
    let Ok(addr) = std::env::var(SERVER_ENV) else {
        panic!("started by five_thousand_slow_and_half_open_peers_..., with {SERVER_ENV} set");
    };
    need_descriptors_for(KINDS.len() * PER_KIND);
    let target = EntityAddr::parse(&addr).unwrap();
    let sock = target.addr.unwrap();
    let started = Instant::now();
    let banner = Banner::RINGWIRE.encode();
    let mut peers = Vec::new();
    // READY ones first (their handshakes take the time); then their frames, and the others,
    // so that every timer starts within the setup's last moments.
    let mut frames = Vec::new();
    for kind in [Kind::HalfMessage, Kind::MessageDrip] {
        for i in 0..PER_KIND {
            let mut s = TcpStream::connect(sock).expect("connect");
            let (mut ep, _, sid) =
                raw::dial(&mut s, &format!("bad{i}"), Policy::lossy_client(), target);
            ep.send(Time(1), sid, Message::new(TY).with_data(vec![9u8; 4096]))
                .unwrap();
            frames.push((kind, s, raw::take_output(&mut ep)));
        }
    }
    for (kind, mut s, frame) in frames {
        let drip = if kind == Kind::HalfMessage {
            s.write_all(&frame[..frame.len() / 2]).unwrap();
            Default::default()
        } else {
            frame.into()
        };
        peers.push(Peer {
            kind,
            s,
            drip,
            since: Instant::now(),
            closed: None,
        });
    }
    for kind in [Kind::Silent, Kind::BannerDrip, Kind::HalfHello] {
        for _ in 0..PER_KIND {
            let since = Instant::now();
            let mut s = TcpStream::connect(sock).expect("connect");
            let mut drip = Default::default();
            match kind {
                Kind::BannerDrip => drip = banner.iter().copied().collect(),
                Kind::HalfHello => {
                    s.write_all(&banner).unwrap();
                    s.write_all(&[1, 1, 36, 0, 0, 0, 8, 0]).unwrap();
                }
                _ => {}
            }
            peers.push(Peer {
                kind,
                s,
                drip,
                since,
                closed: None,
            });
        }
    }
    for p in &peers {
        p.s.set_nonblocking(true).unwrap();
    }
    let set_up = Instant::now();
    println!("READY {}", set_up.duration_since(started).as_millis());
    // The setup took less than a timeout: no timer can have run out yet.
    assert!(set_up.duration_since(started) < HANDSHAKE_TIMEOUT.min(IDLE_TIMEOUT) / 2);

    // Drip, and watch for the server's closes (a read returning 0 or an error), until every
    // peer is closed. An epoll set, so that a wake-up costs what is ready, not 5 000 sockets.
    // SAFETY: plain syscalls; each event names the index of its peer.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    for (i, p) in peers.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, p.s.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut open = peers.len();
    // Drips are spread evenly over each `DRIP`, as independent peers' would be: drip `g`
    // (counting from 0, round-robin over the dripping peers) is due `g × DRIP / dripping`
    // after the setup.
    let dripping: Vec<usize> = (0..peers.len())
        .filter(|&i| matches!(peers[i].kind, Kind::BannerDrip | Kind::MessageDrip))
        .collect();
    let mut g = 0u32;
    let deadline = set_up + DRIP_FOR + IDLE_TIMEOUT + SLACK * 2;
    let mut buf = vec![0u8; 64 << 10];
    while open > 0 {
        let now = Instant::now();
        assert!(now < deadline, "{open} bad peers still open");
        while set_up + DRIP * g / dripping.len() as u32 <= now {
            let p = &mut peers[dripping[g as usize % dripping.len()]];
            g += 1;
            let stopped = p.kind == Kind::MessageDrip && now.duration_since(set_up) >= DRIP_FOR;
            if p.closed.is_some() || stopped {
                continue;
            }
            let Some(b) = p.drip.pop_front() else {
                continue;
            };
            // A write to a peer the server cut fails; its close is seen by the epoll.
            if (&p.s).write(&[b]).is_ok() && p.kind == Kind::MessageDrip {
                p.since = Instant::now();
            }
        }
        // SAFETY: a valid array of epoll_event of the length given.
        let n =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, TICK_MS) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        for ev in &events[..n as usize] {
            let p = &mut peers[ev.u64 as usize];
            if p.closed.is_some() {
                continue;
            }
            let closed = loop {
                match std::io::Read::read(&mut p.s, &mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            if closed {
                p.closed = Some(p.since.elapsed());
                // SAFETY: as above; the socket stays open until the end.
                unsafe {
                    libc::epoll_ctl(
                        epoll,
                        libc::EPOLL_CTL_DEL,
                        p.s.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
                open -= 1;
            }
        }
    }
    for kind in KINDS {
        let times: Vec<Duration> = peers
            .iter()
            .filter(|p| p.kind == kind)
            .filter_map(|p| p.closed)
            .collect();
        println!(
            "CLOSED {kind:?} {} {} {}",
            times.len(),
            times.iter().min().unwrap().as_millis(),
            times.iter().max().unwrap().as_millis()
        );
    }
    println!("END");
    std::io::stdout().flush().unwrap();
}
