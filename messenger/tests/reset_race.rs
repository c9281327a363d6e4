//! A lossy session's reset reaches the application even when a send arrives between the
//! fault and its report. The worker used to run that send first, find the session gone,
//! close the handle itself, and leave the `Reset` event that followed with no connection to
//! report: `on_reset` never ran (found by tests/netns_cluster.rs, one blackhole in two).
//!
//! Deterministic: the client's interceptor, called on the worker when the echo arrives,
//! queues a send on the connection and then fails it, so the send is the next command the
//! worker runs, before the endpoint's events.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use ringwire::proto::{Action, ConnId, EntityType, Message, Policy, Step};
use ringwire::{Connection, Messenger, MessengerInterceptor};

#[derive(Default)]
struct SendThenFail {
    conn: OnceLock<Connection>,
}

impl MessengerInterceptor for SendThenFail {
    fn intercept(&self, _worker: usize, _conn: ConnId, step: Step) -> Action {
        match (step, self.conn.get()) {
            (Step::HandleMessage, Some(c)) => {
                let _ = c.send(Message::new(0x10).with_front(&b"late"[..]));
                Action::Fail
            }
            _ => Action::Continue,
        }
    }
}

#[test]
fn a_send_queued_as_a_lossy_session_faults_does_not_swallow_its_reset() {
    let server_rec = Recorder::echoing(0x11);
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(one_worker())
        .start(server_rec)
        .unwrap();
    let interceptor = Arc::new(SendThenFail::default());
    let rec = Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossy_client())
        .interceptor(interceptor.clone())
        .options(one_worker())
        .start(rec.clone())
        .unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    conn.wait_ready(Duration::from_secs(10)).unwrap();
    let _ = interceptor.conn.set(conn.clone());
    conn.send(Message::new(0x10).with_front(&b"ping"[..]))
        .unwrap();
    let id = conn_id(&conn);
    rec.wait_for(
        Duration::from_secs(10),
        "on_reset for the lossy session",
        |s| s.contains(&Seen::Reset(id)),
    );
    assert!(conn.is_closed());
}
