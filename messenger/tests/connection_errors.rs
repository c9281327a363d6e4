//! A connection that cannot be established is reported to the application with the reason:
//! in the reset and fault callbacks, and by `Connection::wait_ready`. Real sockets on loopback.

#[path = "common/wait.rs"]
mod wait;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringwire::proto::{EntityAddr, EntityType, Message, Policy, Tuning};
use ringwire::{Connection, Dispatcher, FaultReason, Incoming, Messenger, NotReady, Options};

/// Records the reasons the reset and fault callbacks carry.
#[derive(Default)]
struct Reasons {
    resets: Mutex<Vec<FaultReason>>,
    faults: Mutex<Vec<FaultReason>>,
}

impl Dispatcher for Reasons {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        let _ = conn.send(msg);
    }
    fn on_reset(&self, _conn: &Connection, reason: &FaultReason) {
        self.resets.lock().unwrap().push(reason.clone());
    }
    fn on_fault(&self, _conn: &Connection, reason: &FaultReason) {
        self.faults.lock().unwrap().push(reason.clone());
    }
}

impl Reasons {
    /// The reasons of the first `n` resets: the callback runs just after the connection is
    /// marked closed, so wait for it up to a deadline.
    fn resets(&self, n: usize) -> Vec<FaultReason> {
        let deadline = Instant::now() + Duration::from_secs(5);
        wait::wait_until(deadline, "reset callbacks", || {
            self.resets.lock().unwrap().len() >= n
        });
        self.resets.lock().unwrap().clone()
    }
}

fn options(tuning: Tuning) -> Options {
    Options {
        workers: 1,
        arena_size: 0,
        tuning,
        ..Options::default()
    }
}

fn client(policy: Policy, tuning: Tuning) -> (Messenger, Arc<Reasons>) {
    let reasons = Arc::new(Reasons::default());
    let m = Messenger::builder("client.test".parse().unwrap())
        .default_policy(policy)
        .options(options(tuning))
        .start(reasons.clone())
        .expect("io_uring available");
    (m, reasons)
}

fn server(nonce: Option<u32>) -> Messenger {
    Messenger::builder("osd.3".parse().unwrap())
        .bind(EntityAddr::parse("v2:127.0.0.1:0").unwrap())
        .default_policy(Policy::stateless_server())
        .options(Options {
            nonce,
            ..options(Tuning::default())
        })
        .start(Arc::new(Reasons::default()))
        .expect("io_uring available")
}

/// A loopback port with nothing listening on it.
fn closed_port() -> EntityAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    EntityAddr::parse(&format!("v2:127.0.0.1:{port}")).unwrap()
}

const REFUSED: FaultReason = FaultReason::ConnectFailed {
    errno: Some(libc::ECONNREFUSED),
};

#[test]
fn lossy_connect_to_a_closed_port_is_reset_with_connection_refused() {
    let (m, reasons) = client(Policy::lossy_client(), Tuning::default());
    let conn = m.connect(closed_port(), EntityType::OSD);
    let err = conn.wait_ready(Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        err,
        NotReady::Closed {
            last_fault: Some(REFUSED)
        }
    );
    assert!(err.to_string().contains("nothing listening"), "{err}");
    assert_eq!(reasons.resets(1), vec![REFUSED]);
    assert!(
        conn.send(Message::new(1)).is_err(),
        "a closed connection refuses sends"
    );
}

#[test]
fn lossless_connect_to_a_closed_port_keeps_redialling_and_says_why() {
    let tuning = Tuning {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..Tuning::default()
    };
    let (m, reasons) = client(Policy::lossless_client(), tuning);
    let conn = m.connect(closed_port(), EntityType::OSD);
    let started = Instant::now();
    let err = conn.wait_ready(Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let NotReady::Timeout { last_fault, .. } = err else {
        panic!("a lossless session is not closed by a refused connect: {err:?}");
    };
    assert_eq!(last_fault, Some(REFUSED));
    assert_eq!(conn.last_fault(), Some(REFUSED));
    let faults = reasons.faults.lock().unwrap().clone();
    assert!(faults.len() >= 2, "redialled with backoff: {faults:?}");
    assert!(faults.iter().all(|f| *f == REFUSED), "{faults:?}");
    assert!(reasons.resets.lock().unwrap().is_empty());
}

#[test]
fn an_address_without_nonce_reaches_a_server_with_a_random_nonce() {
    let s = server(None);
    let at = s.addrs().0[0];
    assert_ne!(at.nonce, 0, "a non-monitor gets a random nonce");
    let (m, _) = client(Policy::lossy_client(), Tuning::default());
    let conn = m.connect(EntityAddr { nonce: 0, ..at }, EntityType::OSD);
    conn.wait_ready(Duration::from_secs(5)).unwrap();
    assert_eq!(
        conn.peer_addrs().unwrap().0,
        vec![at],
        "learns the real nonce"
    );
}

#[test]
fn a_wrong_nonce_is_refused_and_reported_as_such() {
    let s = server(Some(1234));
    let at = s.addrs().0[0];
    let (m, reasons) = client(Policy::lossy_client(), Tuning::default());
    let conn = m.connect(EntityAddr { nonce: 77, ..at }, EntityType::OSD);
    let err = conn.wait_ready(Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        err,
        NotReady::Closed {
            last_fault: Some(FaultReason::IdentRefused)
        }
    );
    assert!(err.to_string().contains("nonce"), "{err}");
    assert_eq!(reasons.resets(1), vec![FaultReason::IdentRefused]);
}

#[test]
fn a_peer_of_another_type_is_refused_naming_both_types() {
    let s = server(None);
    let (m, _) = client(Policy::lossy_client(), Tuning::default());
    let conn = m.connect(s.addrs().0[0], EntityType::MON);
    let err = conn.wait_ready(Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        err,
        NotReady::Closed {
            last_fault: Some(FaultReason::WrongPeerType {
                expected: EntityType::MON,
                got: EntityType::OSD
            })
        }
    );
}

#[test]
fn any_peer_type_is_accepted_and_learned() {
    let s = server(None);
    let (m, _) = client(Policy::lossy_client(), Tuning::default());
    let conn = m.connect(s.addrs().0[0], EntityType::ANY);
    conn.wait_ready(Duration::from_secs(5)).unwrap();
    assert_eq!(conn.peer().unwrap().ty, EntityType::OSD);
}

#[test]
fn a_silent_peer_times_out_the_handshake() {
    // Accepts TCP connections (the kernel does, from the backlog) and never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let tuning = Tuning {
        handshake_timeout: Duration::from_millis(200),
        ..Tuning::default()
    };
    let (m, reasons) = client(Policy::lossy_client(), tuning);
    let addr = EntityAddr::parse(&format!("v2:127.0.0.1:{port}")).unwrap();
    let conn = m.connect(addr, EntityType::OSD);
    let err = conn.wait_ready(Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        err,
        NotReady::Closed {
            last_fault: Some(FaultReason::HandshakeTimeout)
        }
    );
    assert_eq!(reasons.resets(1), vec![FaultReason::HandshakeTimeout]);
}
