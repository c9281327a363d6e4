//! Shared by the socket tests: a dispatcher that records everything and can echo, and
//! waiting for events up to a deadline (`wait`).
#![allow(dead_code)]

pub mod mem;
pub mod netns;
pub mod raw;
pub mod rng;
mod wait;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

// Not every test file waits.
#[allow(unused_imports)]
pub use wait::*;

use ringwire::proto::{EntityAddr, EntityName, EntityType, FaultReason, Message, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Message {
        conn: u64,
        seq: u64,
        content: Content,
    },
    Connect(u64),
    Accept(u64),
    Reset(u64),
    RemoteReset(u64),
    Refused(u64, String),
    KeepaliveAck(u64),
}

/// What a message carries end to end: its type and the bytes of its three parts (data
/// joined into one buffer). Tests compare it with what was sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    pub ty: u16,
    pub front: Vec<u8>,
    pub middle: Vec<u8>,
    pub data: Vec<u8>,
}

impl Content {
    pub fn of(msg: &Message) -> Self {
        Content {
            ty: msg.ty,
            front: msg.front.to_vec(),
            middle: msg.middle.to_vec(),
            data: msg.data_contiguous().to_vec(),
        }
    }
}

/// Short enough for a failed `assert_eq!` on megabyte payloads: short parts in full, long ones
/// as their length and an FNV-1a digest.
impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Part<'a>(&'a [u8]);
        impl std::fmt::Debug for Part<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.0.len() <= 16 {
                    return write!(f, "{:02x?}", self.0);
                }
                let digest = self.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
                write!(f, "<{} bytes, fnv {digest:016x}>", self.0.len())
            }
        }
        f.debug_struct("Content")
            .field("ty", &format_args!("{:#x}", self.ty))
            .field("front", &Part(&self.front))
            .field("middle", &Part(&self.middle))
            .field("data", &Part(&self.data))
            .finish()
    }
}

#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Seen>>,
    pub changed: Condvar,
    /// Reply to every message with one of this type (and the same front).
    pub echo: Option<u16>,
    pub conns: Mutex<Vec<Connection>>,
}

pub fn conn_id(c: &Connection) -> u64 {
    // Connections are compared by identity; the Debug form carries the handle id.
    let s = format!("{c:?}");
    s.split("id: ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Recorder {
    pub fn echoing(ty: u16) -> Arc<Self> {
        Arc::new(Recorder {
            echo: Some(ty),
            ..Default::default()
        })
    }

    fn push(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
        self.changed.notify_all();
    }

    /// Waits until `pred` holds over what was seen, or panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut seen = self.seen.lock().unwrap();
        while !pred(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; seen: {:?}",
                &seen[seen.len().saturating_sub(10)..]
            );
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    pub fn messages(&self) -> Vec<(u64, u64, Vec<u8>)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Message { conn, seq, content } => Some((*conn, *seq, content.front.clone())),
                _ => None,
            })
            .collect()
    }

    /// The messages received, in order: (connection, content).
    pub fn contents(&self) -> Vec<(u64, Content)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Message { conn, content, .. } => Some((*conn, content.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| pred(s)).count()
    }
}

impl Dispatcher for Recorder {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        if let Some(ty) = self.echo {
            let _ = conn.send(Message::new(ty).with_front(msg.front.clone()));
        }
        self.push(Seen::Message {
            conn: conn_id(conn),
            seq: msg.seq,
            content: Content::of(&msg),
        });
    }
    fn on_connect(&self, conn: &Connection) {
        self.push(Seen::Connect(conn_id(conn)));
    }
    fn on_accept(&self, conn: &Connection) {
        self.conns.lock().unwrap().push(conn.clone());
        self.push(Seen::Accept(conn_id(conn)));
    }
    fn on_reset(&self, conn: &Connection, _reason: &FaultReason) {
        self.push(Seen::Reset(conn_id(conn)));
    }
    fn on_remote_reset(&self, conn: &Connection) {
        self.push(Seen::RemoteReset(conn_id(conn)));
    }
    fn on_refused(&self, conn: &Connection, reason: &FaultReason) {
        self.push(Seen::Refused(conn_id(conn), reason.to_string()));
    }
    fn on_keepalive_ack(&self, conn: &Connection, _rtt: Duration) {
        self.push(Seen::KeepaliveAck(conn_id(conn)));
    }
}

pub fn name(ty: EntityType, id: &str) -> EntityName {
    EntityName { ty, id: id.into() }
}

/// An ephemeral loopback address: msgr2 over TCP, or over RDMA when
/// `RINGWIRE_TEST_FABRIC=rdma` (`cargo xtask rxe-test` reruns socket scenarios that way in
/// its soft-RoCE guest).
pub fn loopback() -> EntityAddr {
    EntityAddr::parse(&format!("{}:127.0.0.1:0", fabric())).unwrap()
}

pub fn fabric() -> &'static str {
    match std::env::var("RINGWIRE_TEST_FABRIC").as_deref() {
        Ok("rdma") => "rdma",
        Ok("tcp") | Err(_) => "v2",
        Ok(other) => panic!("RINGWIRE_TEST_FABRIC={other}: expected tcp or rdma"),
    }
}

/// Options sized for many messengers in one small test VM: RDMA registers its buffers and
/// the payload arena up front, per worker.
pub fn small_rdma(mut o: ringwire::Options) -> ringwire::Options {
    o.arena_size = 8 << 20;
    o.rdma.max_connections = 32;
    o.rdma.send_buffers = 64;
    o
}

/// Logs to stderr when RUST_LOG is set (e.g. RUST_LOG=ringwire=debug).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Echoes every message on the connection it came on, keeping nothing (so it allocates
/// nothing itself: the allocation tests count every allocation in the process).
pub struct Echo;

impl Dispatcher for Echo {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        let _ = conn.send(msg);
    }
}

/// One worker, no registered arena: what the tests of one connection's costs run on.
pub fn one_worker() -> Options {
    Options {
        workers: 1,
        arena_size: 0,
        ..Options::default()
    }
}

/// An echoing server (`osd.0`, one worker) on a free loopback port, with `policy`.
pub fn echo_server(policy: Policy) -> Messenger {
    Messenger::builder(name(EntityType::OSD, "0"))
        .bind(EntityAddr::parse("v2:127.0.0.1:0").unwrap())
        .default_policy(policy)
        .options(one_worker())
        .start(Arc::new(Echo))
        .expect("io_uring available")
}
