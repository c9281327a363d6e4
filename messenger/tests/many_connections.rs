//! Many connections in one process: every one served, and what an idle connection costs.
//! A real server `Messenger` (one worker) in the test's process and a client `Messenger`
//! (one worker) in a child process, the same test binary run as `client_process` (each end
//! needs a descriptor per connection, and a process may hold 20 000 here): `CONNECTIONS`
//! anonymous lossy connections between them. The heap bytes live per connection end are
//! counted by a counting global allocator (allocated minus freed) in each process, and the
//! resident set is reported beside them.

mod common;

use common::mem::need_descriptors_for;
use common::{echo_server, one_worker};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwire::proto::{EntityAddr, EntityType, Message, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger};

/// `System`, keeping the number of heap bytes in use.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONNECTIONS: usize = 10_000;
/// Issue 13's bound on the memory an idle connection end keeps.
const IDLE_END_BYTES: i64 = 8 * 1024;
const TY: u16 = 0x4244;

/// Counts echoes.
#[derive(Default)]
struct Count(AtomicU64);

impl Dispatcher for Count {
    fn dispatch(&self, _conn: &Connection, msg: Incoming) {
        assert_eq!(msg.ty, TY);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Heap and resident bytes per connection end since `before` (taken with `usage`), once the
/// handshakes' transient buffers have gone.
fn per_end(before: (i64, i64)) -> (i64, i64) {
    std::thread::sleep(Duration::from_millis(200));
    let (heap, rss) = usage();
    let n = CONNECTIONS as i64;
    ((heap - before.0) / n, (rss - before.1) / n)
}

fn usage() -> (i64, i64) {
    (LIVE_BYTES.load(Ordering::Relaxed), rss_bytes())
}

/// The environment variable that makes `client_process` the client of a running test.
const SERVER_ENV: &str = "RINGWIRE_MANY_CONNECTIONS_SERVER";

#[test]
fn ten_thousand_connections_are_all_served_and_an_idle_end_keeps_under_8_kib() {
    need_descriptors_for(CONNECTIONS);
    let server = echo_server(Policy::stateless_server());
    // Warm up what every connection shares (rings, buffer pools, tables' first growth).
    let warm_client = Messenger::builder("client.1".parse().unwrap())
        .default_policy(Policy::lossy_client())
        .options(one_worker())
        .start(Arc::new(Count::default()))
        .expect("io_uring available");
    let warm: Vec<Connection> = (0..100)
        .map(|_| warm_client.connect_anon(server.addrs().0[0], EntityType::OSD))
        .collect();
    wait_until("warm-up connections", Duration::from_secs(30), || {
        warm.iter().all(|c| c.is_connected())
    });
    let before = usage();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "client_process", "--ignored", "--nocapture"])
        .env(SERVER_ENV, server.addrs().0[0].to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the client process starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = |prefix: &str| -> String {
        for line in lines.by_ref() {
            let line = line.expect("the client process writes lines");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
        panic!("the client process ended before saying {prefix:?}");
    };
    let client_figures = expect("READY");
    let (heap, rss) = per_end(before);
    let sessions = server.stats().sessions_ready;
    eprintln!(
        "server, per idle connection end: {heap} B heap, {rss} B resident ({sessions} sessions); client: {client_figures}"
    );
    assert!(
        sessions as usize >= CONNECTIONS,
        "the server holds a session per connection: {sessions}"
    );
    // All served: the client sends one message on every connection and counts the echoes.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "ECHO").unwrap();
    assert_eq!(expect("ECHOED"), CONNECTIONS.to_string());
    drop(stdin);
    assert!(child.wait().unwrap().success(), "the client process failed");
    let client_heap: i64 = client_figures
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("the client's heap figure");
    for (side, bytes) in [("server", heap), ("client", client_heap)] {
        assert!(
            bytes <= IDLE_END_BYTES,
            "an idle {side} connection end keeps {bytes} B of heap, more than {IDLE_END_BYTES}"
        );
    }
}

/// The client side of the test above, run by it in a child process (ignored on its own).
#[test]
#[ignore = "the client process of ten_thousand_connections_are_all_served_..., which starts it"]
fn client_process() {
    let Ok(addr) = std::env::var(SERVER_ENV) else {
        panic!("started by ten_thousand_connections_are_all_served_..., with {SERVER_ENV} set");
    };
    need_descriptors_for(CONNECTIONS);
    let echoes = Arc::new(Count::default());
    let client = Messenger::builder("client.0".parse().unwrap())
        .default_policy(Policy::lossy_client())
        .options(one_worker())
        .start(echoes.clone())
        .expect("io_uring available");
    let addr = EntityAddr::parse(&addr).unwrap();
    let before = usage();
    let started = Instant::now();
    let conns: Vec<Connection> = (0..CONNECTIONS)
        .map(|_| client.connect_anon(addr, EntityType::OSD))
        .collect();
    wait_until("every connection ready", Duration::from_secs(120), || {
        conns.iter().all(|c| c.is_connected())
    });
    let ready_in = started.elapsed();
    let (heap, rss) = per_end(before);
    println!(
        "READY {heap} B heap, {rss} B resident per idle end; {CONNECTIONS} ready in {ready_in:?}"
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ECHO");
    for c in &conns {
        c.send(Message::new(TY).with_front(vec![1u8; 64])).unwrap();
    }
    wait_until(
        "an echo on every connection",
        Duration::from_secs(60),
        || echoes.0.load(Ordering::Relaxed) >= CONNECTIONS as u64,
    );
    println!("ECHOED {}", echoes.0.load(Ordering::Relaxed));
}
