//! The RDMA transport against real verbs (soft-RoCE in the guest `cargo xtask rxe-test`
//! boots). Built only with the `rdma-tests` feature: without an RDMA device these tests fail
//! (they do not skip), so the host's own test run leaves them out and the guest runs them.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ringwire::proto::{EntityAddr, EntityType, Message, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options, Stats};

const T: Duration = Duration::from_secs(60);

fn rdma_addr() -> EntityAddr {
    EntityAddr::parse("rdma:127.0.0.1:0").unwrap()
}

fn opts(workers: usize) -> Options {
    small_rdma(Options {
        workers,
        ..Options::default()
    })
}

fn server(rec: Arc<dyn Dispatcher>, o: Options) -> Messenger {
    init_tracing();
    Messenger::builder(name(EntityType::OSD, "0"))
        .bind(rdma_addr())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(o)
        .start(rec)
        .expect("an RDMA device (is rdma_rxe set up?)")
}

fn client(id: &str, o: Options) -> (Messenger, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let m = Messenger::builder(name(EntityType::CLIENT, id))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(o)
        .start(rec.clone())
        .unwrap();
    (m, rec)
}

fn msgs(s: &[Seen]) -> usize {
    s.iter()
        .filter(|x| matches!(x, Seen::Message { .. }))
        .count()
}

/// Pinned memory of this process (ibv_reg_mr pins pages), in KiB.
fn vm_pinned_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPin:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPin in /proc/self/status")
}

/// Receiver-not-ready NAKs the rxe device counted (sent and received), all ports.
fn rnr_counts() -> u64 {
    let mut total = 0;
    for dev in std::fs::read_dir("/sys/class/infiniband").expect("an RDMA device") {
        let counters = dev.unwrap().path().join("ports/1/hw_counters");
        for name in ["rcvd_rnr_err", "send_rnr_err"] {
            let v = std::fs::read_to_string(counters.join(name))
                .unwrap_or_else(|e| panic!("{name} in {}: {e}", counters.display()));
            total += v.trim().parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn round_trips_and_large_payloads_over_rdma() {
    let srv = server(Recorder::echoing(0x11), opts(1));
    let (c, rec) = client("1", opts(1));
    let conn = c.connect(srv.addrs().0[0], EntityType::OSD);
    for i in 0..200u32 {
        conn.send(Message::new(0x10).with_front(i.to_le_bytes().to_vec()))
            .unwrap();
    }
    rec.wait_for(T, "200 echoes", |s| msgs(s) == 200);
    let fronts: Vec<Vec<u8>> = rec.messages().into_iter().map(|m| m.2).collect();
    let want: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(fronts, want, "in order, once each");
    let st = srv.stats();
    assert!(st.rdma_send_bytes > 0 && st.rdma_errors == 0, "{st:?}");
}

/// Counts what a slow dispatcher has been given.
struct Slow {
    got: AtomicU64,
    per_conn_order_ok: AtomicU64,
    last: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

impl Dispatcher for Slow {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        std::thread::sleep(Duration::from_micros(200));
        let n = u32::from_le_bytes(msg.front[..4].try_into().unwrap());
        let mut last = self.last.lock().unwrap();
        let prev = last.insert(conn_id(conn), n);
        if prev.map_or(n == 0, |p| p + 1 == n) {
            self.per_conn_order_ok.fetch_add(1, Ordering::Relaxed);
        }
        self.got.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn receive_memory_stays_bounded_under_a_flood() {
    // 32 clients flood one receiver whose dispatcher is slow: credits hold every sender
    // back, so the receiver's registered memory never grows, no receiver-not-ready NAK
    // happens, and every message arrives in order.
    const CLIENTS: usize = 32;
    const EACH: u32 = 300;
    let slow = Arc::new(Slow {
        got: AtomicU64::new(0),
        per_conn_order_ok: AtomicU64::new(0),
        last: Default::default(),
    });
    let mut o = opts(1);
    o.rdma.max_connections = 40;
    let srv = server(slow.clone(), o);
    let rnr_before = rnr_counts();
    let clients: Vec<(Messenger, Arc<Recorder>)> = (0..CLIENTS)
        .map(|i| client(&format!("{}", 10 + i), opts(1)))
        .collect();
    let conns: Vec<Connection> = clients
        .iter()
        .map(|(m, _)| m.connect(srv.addrs().0[0], EntityType::OSD))
        .collect();
    for c in &conns {
        c.send(Message::new(0x10).with_front(0u32.to_le_bytes().to_vec()))
            .unwrap();
    }
    // The clients live in this process too: their registrations are in place once every
    // session is up; from then on only the flood runs.
    wait_until(Instant::now() + T, "every session up", || {
        srv.stats().sessions_ready >= CLIENTS as i64
            && slow.got.load(Ordering::Relaxed) >= CLIENTS as u64
    });
    let pinned_at_start = vm_pinned_kib();
    let payload = Bytes::from(vec![7u8; 2048]);
    for i in 1..=EACH {
        for c in &conns {
            c.send(
                Message::new(0x10)
                    .with_front(i.to_le_bytes().to_vec())
                    .with_data(payload.clone()),
            )
            .unwrap();
        }
    }
    let total = CLIENTS as u64 * (EACH as u64 + 1);
    let mut max_pinned = pinned_at_start;
    wait_until(
        Instant::now() + Duration::from_secs(240),
        &format!("all {total} messages"),
        || {
            max_pinned = max_pinned.max(vm_pinned_kib());
            slow.got.load(Ordering::Relaxed) >= total
        },
    );
    let st: Stats = srv.stats();
    let waits: u64 = clients
        .iter()
        .map(|(m, _)| m.stats().rdma_credit_waits)
        .sum();
    println!(
        "pinned {pinned_at_start} KiB at start, at most {max_pinned} KiB; senders waited for credit {waits} times; {st:?}"
    );
    assert_eq!(max_pinned, pinned_at_start, "registered memory grew");
    assert_eq!(rnr_counts(), rnr_before, "receiver-not-ready NAKs happened");
    assert!(
        waits > 0,
        "the flood never ran out of credits: the test did not test"
    );
    assert_eq!(
        slow.per_conn_order_ok.load(Ordering::Relaxed),
        total,
        "per-connection order"
    );
    assert_eq!(st.faults + st.rdma_errors, 0, "{st:?}");
}

#[test]
fn arena_payload_crosses_without_a_copy() {
    // A 4 MiB payload from the registered arena: the sender posts a READ descriptor (no
    // copy, no registration per send); the receiver READs it straight into the segment
    // buffer that becomes the message's data.
    let rec = Arc::new(Recorder::default());
    let srv = server(rec.clone(), opts(1));
    let (c, _) = client("1", opts(1));
    let conn = c.connect(srv.addrs().0[0], EntityType::OSD);
    conn.send(Message::new(0x10).with_front(vec![0])).unwrap();
    rec.wait_for(T, "warm-up", |s| msgs(s) == 1);
    let (before_c, before_s) = (c.stats(), srv.stats());
    const LEN: usize = 4 << 20;
    let mut buf = c.alloc_payload(LEN).expect("arena has room");
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let msg = Message::new(0x10)
        .with_front(vec![1])
        .with_data(buf.freeze());
    let sent = Content::of(&msg);
    conn.send(msg).unwrap();
    rec.wait_for(T, "the 4 MiB message", |s| msgs(s) == 2);
    let got = rec.contents().pop().unwrap().1;
    assert_eq!(got, sent, "payload intact");
    let (after_c, after_s) = (c.stats(), srv.stats());
    let d = |a: u64, b: u64| a - b;
    println!("sender: {after_c:?}\nreceiver: {after_s:?}");
    assert_eq!(
        d(after_c.rdma_registrations, before_c.rdma_registrations),
        0,
        "an arena payload needs no registration per send"
    );
    assert!(
        d(after_c.rdma_copied_bytes, before_c.rdma_copied_bytes) < 4096,
        "the sender copied only headers"
    );
    assert_eq!(
        d(after_s.rdma_read_bytes, before_s.rdma_read_bytes),
        LEN as u64,
        "the receiver READ the payload in place"
    );
    assert!(
        d(after_s.rdma_copied_bytes, before_s.rdma_copied_bytes) < 4096,
        "the receiver copied only headers"
    );
    // A small arena payload is sent, gathered from the arena beside the copied header.
    let mut small = c.alloc_payload(4096).expect("arena has room");
    small.fill(9);
    conn.send(
        Message::new(0x10)
            .with_front(vec![2])
            .with_data(small.freeze()),
    )
    .unwrap();
    rec.wait_for(T, "the 4 KiB message", |s| msgs(s) == 3);
    let last = c.stats();
    let sent = d(last.rdma_send_bytes, after_c.rdma_send_bytes);
    let copied = d(last.rdma_copied_bytes, after_c.rdma_copied_bytes);
    assert!(sent >= 4096, "the payload went in a SEND ({sent} bytes)");
    assert!(
        copied < 1024,
        "only its frame header was copied ({copied} bytes)"
    );
}

/// The server closed `s` (end of stream or reset) before `limit` passed.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn silent_or_foreign_side_channels_do_not_hold_connection_slots() {
    use std::io::Write;
    // Two slots: two peers that connect and say nothing (half-open) fill them until the
    // handshake timeout frees them; a msgr2-over-TCP client that dialled the RDMA port by
    // mistake is closed at once. Then a real client gets in.
    let mut o = opts(1);
    o.rdma.max_connections = 2;
    o.tuning.handshake_timeout = Duration::from_secs(1);
    let srv = server(Arc::new(Recorder::default()), o);
    let side = srv.addrs().0[0].addr.unwrap();
    let silent: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(side).unwrap())
        .collect();
    let mut foreign = std::net::TcpStream::connect(side).unwrap();
    foreign
        .write_all(&[b"ceph v2\n".as_slice(), &[0u8; 56]].concat())
        .unwrap();
    assert!(
        closed_within(&mut foreign, Duration::from_secs(5)),
        "a peer that is not a Ringwire RDMA peer is closed"
    );
    for mut s in silent {
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "a silent peer is closed by the handshake timeout"
        );
    }
    let (c, _rec) = client("1", opts(1));
    let conn = c.connect(srv.addrs().0[0], EntityType::OSD);
    conn.send(Message::new(0x10).with_front(vec![1])).unwrap();
    wait_until(Instant::now() + T, "the real client's message", || {
        srv.stats().messages_in >= 1
    });
}

/// Sets the guest's `lo`, the netdev rxe0 is bound to, up or down.
fn lo(state: &str) {
    let ok = std::process::Command::new("ip")
        .args(["link", "set", "lo", state])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip link set lo {state}");
}

fn port_state() -> String {
    std::fs::read_to_string("/sys/class/infiniband/rxe0/ports/1/state").unwrap_or_default()
}

#[test]
fn a_port_that_is_down_is_a_clear_error() {
    // rxe's port follows its netdev: with the guest's `lo` down the port is not ACTIVE.
    let ip = lo;
    ip("down");
    wait_until(Instant::now() + T, "the port inactive with lo down", || {
        !port_state().contains("ACTIVE")
    });
    let err = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(rdma_addr())
        .options(opts(1))
        .start(Arc::new(Recorder::default()))
        .err();
    ip("up");
    wait_until(Instant::now() + T, "the port active again", || {
        port_state().contains("ACTIVE")
    });
    let text = err
        .expect("no messenger on a port that is down")
        .to_string();
    assert!(text.contains("port 1 is not active"), "{text}");
}

#[test]
fn connections_share_few_send_buffers_without_stalling() {
    // Four send buffers for a server echoing to 16 clients: connections that find none wait
    // and are woken when one is released; every echo arrives.
    const CLIENTS: usize = 16;
    const EACH: u32 = 40;
    let mut o = opts(1);
    o.rdma.send_buffers = 4;
    let srv = server(Recorder::echoing(0x11), o);
    let clients: Vec<(Messenger, Arc<Recorder>)> = (0..CLIENTS)
        .map(|i| client(&format!("{}", 100 + i), opts(1)))
        .collect();
    for (m, _) in &clients {
        let conn = m.connect(srv.addrs().0[0], EntityType::OSD);
        for i in 0..EACH {
            conn.send(Message::new(0x10).with_front(i.to_le_bytes().to_vec()))
                .unwrap();
        }
    }
    // About 1.5 s in the soft-RoCE guest. Without the wake-up a waiting connection sat until
    // an unrelated timer fired (about 10 s), so the bound is what this test checks.
    let deadline = Instant::now() + Duration::from_secs(8);
    for (_, rec) in &clients {
        let left = deadline.saturating_duration_since(Instant::now());
        rec.wait_for(left, "every echo", |s| msgs(s) == EACH as usize);
    }
}

/// Set in the child that [`registration_under_a_low_memlock_limit_is_a_clear_error`] runs
/// under `prlimit`.
const MEMLOCK_CHILD: &str = "RINGWIRE_TEST_MEMLOCK_CHILD";

/// Memory registration refused by a low locked-memory limit (the child runs without
/// CAP_IPC_LOCK under `prlimit --memlock=65536`, far below what a worker registers): the
/// messenger does not start, and the error names RLIMIT_MEMLOCK and how to raise it, rather
/// than a bare errno.
#[test]
fn registration_under_a_low_memlock_limit_is_a_clear_error() {
    if std::env::var_os(MEMLOCK_CHILD).is_some() {
        let err = Messenger::builder(name(EntityType::OSD, "0"))
            .bind(rdma_addr())
            .options(opts(1))
            .start(Arc::new(Recorder::default()))
            .err()
            .expect("no messenger under a 64 KiB memlock limit");
        println!("memlock error: {err}");
        return;
    }
    // Without CAP_IPC_LOCK (which lets root pin past the limit), under a 64 KiB limit.
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"])
        .args(["prlimit", "--memlock=65536"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "registration_under_a_low_memlock_limit_is_a_clear_error",
            "--nocapture",
        ])
        .env(MEMLOCK_CHILD, "1")
        .output()
        .expect("setpriv and prlimit (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("memlock error: "))
        .unwrap_or_else(|| panic!("no error reported: {stdout}"));
    assert!(
        line.contains("RLIMIT_MEMLOCK") && line.contains("ulimit -l"),
        "{line}"
    );
}

/// The rxe netdev (the guest's `lo`) set down for 2 s in the middle of a lossless stream of
/// numbered messages, then up: the connection faults and the session reconnects once the port
/// is active again, and every message arrives once, in order.
#[test]
fn the_netdev_down_and_up_during_traffic_loses_nothing_lossless() {
    const N: u32 = 3000;
    let rec = Arc::new(Recorder::default());
    let srv = server(rec.clone(), opts(1));
    let (c, _) = client("netdev", opts(1));
    let conn = c.connect(srv.addrs().0[0], EntityType::OSD);
    conn.wait_ready(T).unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            let msg = Message::new(0x10).with_front(i.to_le_bytes().to_vec());
            conn.send_timeout(msg, T).expect("room in the send window");
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    lo("down");
    std::thread::sleep(Duration::from_secs(2));
    lo("up");
    wait_until(Instant::now() + T, "the port active again", || {
        port_state().contains("ACTIVE")
    });
    sender.join().unwrap();
    wait_until(Instant::now() + T, "every message", || {
        msgs(&rec.seen.lock().unwrap()) >= N as usize
    });
    let got: Vec<u32> = rec
        .contents()
        .iter()
        .map(|(_, m)| u32::from_le_bytes(m.front[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "once each, in order");
    assert!(
        c.stats().faults >= 1,
        "the link going down faulted the connection"
    );
}

/// Set in the sender child of [`the_sender_killed_mid_read_faults_only_its_connection`]: the
/// server's address.
const READ_SENDER: &str = "RINGWIRE_TEST_READ_SENDER";

/// A peer killed in the middle of a READ: a child process sends a 64 MiB payload (which the
/// server pulls with one RDMA READ) and is killed with SIGKILL as soon as the server has posted
/// that READ.
/// The server faults that connection only: the message is not delivered, part or whole; the
/// READ's landing buffer is unpinned again; and a new client's message arrives afterwards.
#[test]
fn the_sender_killed_mid_read_faults_only_its_connection() {
    const LEN: usize = 64 << 20;
    if let Some(addr) = std::env::var_os(READ_SENDER) {
        let addr = EntityAddr::parse(addr.to_str().unwrap()).unwrap();
        let (c, _) = client("sender", opts(1));
        let conn = c.connect(addr, EntityType::OSD);
        conn.wait_ready(T).unwrap();
        let data = Bytes::from(vec![7u8; LEN]);
        conn.send(Message::new(0x10).with_front(vec![1]).with_data(data))
            .unwrap();
        println!("sent");
        std::thread::sleep(T);
        return;
    }
    let rec = Arc::new(Recorder::default());
    let srv = server(rec.clone(), opts(1));
    let pinned = vm_pinned_kib();
    let registrations = srv.stats().rdma_registrations;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_sender_killed_mid_read_faults_only_its_connection",
            "--nocapture",
        ])
        .env(READ_SENDER, srv.addrs().0[0].to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("sent") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the sender ended before sending");
    }
    // The server registers the landing buffer just before it posts the READ.
    wait_until(Instant::now() + T, "the server's READ posted", || {
        srv.stats().rdma_registrations > registrations
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(
        Instant::now() + T,
        "the dead sender's connection faulted",
        || srv.stats().faults >= 1,
    );
    assert!(
        srv.stats().rdma_read_bytes < LEN as u64,
        "the READ finished before the kill: the test did not hit a READ in flight"
    );
    assert_eq!(msgs(&rec.seen.lock().unwrap()), 0, "nothing delivered");
    wait_until(
        Instant::now() + T,
        "the READ's landing buffer unpinned",
        || vm_pinned_kib() <= pinned,
    );
    // The server goes on: a new client's message arrives.
    let (c, _) = client("after", opts(1));
    let conn = c.connect(srv.addrs().0[0], EntityType::OSD);
    conn.send(Message::new(0x10).with_front(vec![2])).unwrap();
    rec.wait_for(T, "the next client's message", |s| msgs(s) == 1);
}
