//! Shared by the socket tests: a dispatcher that records everything and can echo.
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringwire::proto::{EntityAddr, EntityName, EntityType, FaultReason, Message};
use ringwire::{Connection, Dispatcher};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Message {
        conn: u64,
        seq: u64,
        ty: u16,
        front: Vec<u8>,
        /// Sum of the data bytes: enough to check a large payload arrived intact.
        data_sum: u64,
    },
    Connect(u64),
    Accept(u64),
    Reset(u64),
    RemoteReset(u64),
    Refused(u64, String),
    KeepaliveAck(u64),
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
                Seen::Message {
                    conn, seq, front, ..
                } => Some((*conn, *seq, front.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| pred(s)).count()
    }
}

impl Dispatcher for Recorder {
    fn dispatch(&self, conn: &Connection, msg: Message) {
        if let Some(ty) = self.echo {
            let _ = conn.send(Message::new(ty).with_front(msg.front.clone()));
        }
        let data_sum = msg
            .data
            .iter()
            .flat_map(|d| d.iter())
            .map(|b| *b as u64)
            .sum();
        self.push(Seen::Message {
            conn: conn_id(conn),
            seq: msg.seq,
            ty: msg.ty,
            front: msg.front.to_vec(),
            data_sum,
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
