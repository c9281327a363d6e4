//! Heap allocations per small message in steady state, counted by a counting global
//! allocator: none on the send and receive paths, once a connection is warm.
//!
//! A real server and client `Messenger` on loopback, one worker each, lossy and lossless; the
//! server echoes every message. Three patterns: the whole ping-pong loop on the workers (the client's dispatcher
//! sends the next ping), the application thread sending and waiting for each echo, and an
//! application task on the client's worker (`Connection::spawn`) awaiting each echo from a
//! `Mailbox`.
//!
//! Every thread is counted (workers, the test thread), so the tests in this file run one at
//! a time under a lock.

mod common;

use common::{echo_server, one_worker};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringwire::proto::{EntityType, Message, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Mailbox, Messenger};

/// `System`, counting every allocation and reallocation.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests count allocations process-wide: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const TY: u16 = 0x4242;
/// A static front: building a ping allocates nothing in the test itself.
static FRONT: [u8; 64] = [0x5a; 64];
const WARMUP: u64 = 1_000;
const MEASURED: u64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(60);

fn ping() -> Message {
    Message::new(TY).with_front(&FRONT[..])
}

/// The client side: counts echoes and, while `to_send` lasts, answers each with the next ping
/// from inside `dispatch`; with `to_task` set, hands each echo to `mailbox` instead.
#[derive(Default)]
struct Pinger {
    to_send: AtomicU64,
    echoes: Mutex<u64>,
    changed: Condvar,
    to_task: std::sync::atomic::AtomicBool,
    mailbox: Arc<Mailbox<Incoming>>,
}

impl Dispatcher for Pinger {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        assert_eq!(msg.front.len(), FRONT.len());
        if self.to_task.load(Ordering::Relaxed) {
            self.mailbox.put(msg);
            return;
        }
        drop(msg);
        let more = self
            .to_send
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if more {
            let _ = conn.send(ping());
        }
        *self.echoes.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

impl Pinger {
    /// Waits until `n` echoes in all have come back.
    fn wait_echoes(&self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        let mut echoes = self.echoes.lock().unwrap();
        while *echoes < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out: {} of {n} echoes", *echoes);
            echoes = self.changed.wait_timeout(echoes, left).unwrap().0;
        }
    }
}

/// A server that echoes and a client connected to it, ready.
/// The policies a client and its server run: lossy (nothing kept for resending), or
/// lossless (each message kept until acknowledged, ACKs flowing both ways).
/// A policy pair by name: the client's, then the server's.
type PolicyPair = (&'static str, fn() -> Policy, fn() -> Policy);
const POLICIES: [PolicyPair; 2] = [
    ("lossy", Policy::lossy_client, Policy::stateless_server),
    ("lossless", Policy::lossless_client, Policy::stateful_server),
];

fn pair(client: Policy, server_policy: Policy) -> (Messenger, Messenger, Arc<Pinger>, Connection) {
    let server = echo_server(server_policy);
    let pinger = Arc::new(Pinger::default());
    let client = Messenger::builder("client.0".parse().unwrap())
        .default_policy(client)
        .options(one_worker())
        .start(pinger.clone())
        .expect("io_uring available");
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    conn.wait_ready(Duration::from_secs(5)).unwrap();
    (server, client, pinger, conn)
}

/// Runs `rounds` round trips with the loop on the workers, from `done` echoes so far.
fn worker_rounds(pinger: &Pinger, conn: &Connection, done: u64, rounds: u64) {
    pinger.to_send.store(rounds - 1, Ordering::Relaxed);
    conn.send(ping()).unwrap();
    pinger.wait_echoes(done + rounds);
}

/// Runs `rounds` round trips from the test thread, one at a time.
fn app_rounds(pinger: &Pinger, conn: &Connection, done: u64, rounds: u64) {
    for i in 1..=rounds {
        conn.send(ping()).unwrap();
        pinger.wait_echoes(done + i);
    }
}

/// Runs `rounds` round trips from a task on the client's worker, one at a time.
fn task_rounds(pinger: &Pinger, conn: &Connection, _done: u64, rounds: u64) {
    pinger.to_task.store(true, Ordering::Relaxed);
    let finished = Arc::new(Mailbox::new());
    let (c, mailbox, f) = (conn.clone(), pinger.mailbox.clone(), finished.clone());
    conn.spawn(async move {
        for _ in 0..rounds {
            c.send(ping()).unwrap();
            drop(mailbox.recv().await);
        }
        f.put(());
    });
    finished.recv_timeout(TIMEOUT).expect("the task finished");
}

/// A few allocations that happen once per measured run, not per round trip (starting the
/// run, waking the test thread at the end).
const ONE_OFF: u64 = 16;

/// Asserts at most `bound` allocations per round trip over `MEASURED` round trips of `run`,
/// after `WARMUP`, under each of `POLICIES`.
fn assert_per_round_trip(run: fn(&Pinger, &Connection, u64, u64), bound: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (name, client, server) in POLICIES {
        let (_server, _client, pinger, conn) = pair(client(), server());
        run(&pinger, &conn, 0, WARMUP);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        run(&pinger, &conn, WARMUP, MEASURED);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let per = allocations as f64 / MEASURED as f64;
        eprintln!(
            "{name}: {allocations} allocations in {MEASURED} round trips: {per:.3} per round trip"
        );
        assert!(
            allocations <= bound * MEASURED + ONE_OFF,
            "{name}: {per:.3} allocations per round trip, more than {bound}"
        );
    }
}

#[test]
fn worker_round_trips_allocate_nothing_in_steady_state() {
    assert_per_round_trip(worker_rounds, 0);
}

#[test]
fn worker_task_round_trips_allocate_nothing_in_steady_state() {
    assert_per_round_trip(task_rounds, 0);
}

#[test]
fn app_thread_round_trips_allocate_nothing_in_steady_state() {
    assert_per_round_trip(app_rounds, 0);
}
