//! A scripted session traced end to end with the real BPF programs in the real kernel:
//! connect → 100 messages → an injected failure → reconnect → mark_down. This test process is
//! the traced one (it links Ringwire, so the probe symbols are in /proc/self/exe).
//! It fails, not skips, when the BPF programs cannot be loaded.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwire::proto::{Action, ConnId, EntityAddr, EntityName, EntityType, Message, Policy, Step};
use ringwire::{Connection, Dispatcher, Messenger, MessengerInterceptor, Options};
use serde_json::Value;

const PING: u16 = 0x10;
const POKE: u16 = 0x11;
const POKE_REPLY: u16 = 0x12;

/// Counts messages; answers POKE.
#[derive(Default)]
struct Peer(AtomicUsize);
impl Dispatcher for Peer {
    fn dispatch(&self, conn: &Connection, msg: Message) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if msg.ty == POKE {
            let _ = conn.send(Message::new(POKE_REPLY));
        }
    }
}

/// Fails the connection once, at the next message it handles after being armed.
#[derive(Default)]
struct FailOnce(AtomicBool);
impl MessengerInterceptor for FailOnce {
    fn intercept(&self, _: usize, _: ConnId, step: Step) -> Action {
        if step == Step::HandleMessage && self.0.swap(false, Ordering::SeqCst) {
            Action::Fail
        } else {
            Action::Continue
        }
    }
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

#[test]
fn scripted_session_is_traced_end_to_end() {
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_ringwire-trace"))
        .args(["events", "--json", "--duration", "60", "--pid"])
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tracer.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("tracing pid"),
        "BPF programs could not be attached: {line}"
    );

    let opts = Options {
        workers: 1,
        ..Options::default()
    };
    let server_seen = Arc::new(Peer::default());
    let server = Messenger::builder(EntityName {
        ty: EntityType::OSD,
        id: "0".into(),
    })
    .bind(EntityAddr::parse("v2:127.0.0.1:0").unwrap())
    .policy(EntityType::CLIENT, Policy::stateful_server())
    .options(opts.clone())
    .start(server_seen.clone())
    .unwrap();
    let fail = Arc::new(FailOnce::default());
    let client_seen = Arc::new(Peer::default());
    let client = Messenger::builder(EntityName {
        ty: EntityType::CLIENT,
        id: "1".into(),
    })
    .policy(EntityType::OSD, Policy::lossless_client())
    .options(opts)
    .interceptor(fail.clone())
    .start(client_seen.clone())
    .unwrap();

    // connect → 100 messages
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    for i in 0..100u32 {
        conn.send(Message::new(PING).with_front(i.to_le_bytes().to_vec()))
            .unwrap();
    }
    wait("100 messages", || {
        server_seen.0.load(Ordering::SeqCst) == 100
    });
    // → injected failure (the client fails handling the reply) → reconnect (the reply resent)
    fail.0.store(true, Ordering::SeqCst);
    conn.send(Message::new(POKE)).unwrap();
    wait("the reply after the reconnect", || {
        client_seen.0.load(Ordering::SeqCst) == 1
    });
    // → mark_down
    conn.mark_down();
    std::thread::sleep(Duration::from_millis(500));
    let _ = tracer.kill();
    let out = tracer.wait_with_output().unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    // The client's session: the one its (client-role) connections belong to.
    let client_conns: Vec<&Value> = events
        .iter()
        .filter(|e| field(e, "event") == "conn_state" && field(e, "role") == "client")
        .collect();
    let session = client_conns
        .iter()
        .map(|e| field(e, "session"))
        .find(|s| *s != "0x0")
        .expect("client connection events")
        .to_string();
    let of_session = |kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| field(e, "event") == kind && field(e, "session") == session)
            .collect()
    };
    let states: Vec<(String, String)> = of_session("session_state")
        .iter()
        .map(|e| (field(e, "old").to_string(), field(e, "new").to_string()))
        .collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        states,
        vec![
            pair("CONNECTING", "READY"),
            pair("READY", "CONNECTING"),
            pair("CONNECTING", "READY"),
            pair("READY", "CLOSED"),
        ],
        "the session's states, in order"
    );
    // Two client connections, each through the whole handshake, each closed.
    let mut conns: Vec<String> = client_conns
        .iter()
        .map(|e| field(e, "conn").to_string())
        .collect();
    conns.dedup();
    assert_eq!(
        conns.len(),
        2,
        "the first connection and the reconnect: {conns:?}"
    );
    for c in &conns {
        let path: Vec<&str> = client_conns
            .iter()
            .filter(|e| field(e, "conn") == c)
            .map(|e| field(e, "new"))
            .collect();
        assert_eq!(
            path,
            [
                "BANNER",
                "HELLO",
                "AUTH",
                "AUTH_SIGN",
                "SESSION",
                "READY",
                "CLOSED"
            ]
        );
    }
    // Each client connection's TCP socket, joined through the ports its conn_socket event gave.
    for c in &conns {
        let port = events
            .iter()
            .find(|e| field(e, "event") == "conn_socket" && field(e, "conn") == c)
            .map(|e| field(e, "local_port").to_string())
            .unwrap_or_else(|| panic!("no conn_socket event for {c}"));
        let tcp: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| field(e, "event") == "tcp_state" && field(e, "sport") == port)
            .map(|e| (field(e, "old"), field(e, "new")))
            .collect();
        // (CLOSE → SYN_SENT carries source port 0 in this tracepoint, so a dialled socket
        // keyed by its port is first seen at SYN_SENT → ESTABLISHED.)
        assert_eq!(
            &tcp[..2.min(tcp.len())],
            &[("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1")],
            "connection {c} (port {port}): established, then closed by us first: {tcp:?}"
        );
        assert_eq!(tcp.last().map(|t| t.1), Some("CLOSE"), "{c}: {tcp:?}");
    }
    let faults: Vec<&str> = events
        .iter()
        .filter(|e| field(e, "event") == "fault" && conns.iter().any(|c| c == field(e, "conn")))
        .map(|e| field(e, "reason"))
        .collect();
    assert_eq!(faults, ["17"], "one fault, the interceptor's");
    let reconnects: Vec<&str> = of_session("reconnect")
        .iter()
        .map(|e| field(e, "outcome"))
        .collect();
    assert_eq!(reconnects, ["OK"], "one reconnect, accepted");
    let sent = of_session("msg_sent");
    assert!(
        sent.len() >= 101,
        "101 messages sent (plus any resent): {}",
        sent.len()
    );
    let queued = of_session("msg_queued");
    assert_eq!(queued.len(), 101);
    let received = of_session("msg_dispatched");
    assert_eq!(
        received.len(),
        1,
        "the one reply, dispatched once despite the resend"
    );
    // On the server: 101 messages dispatched in order, seq 1..=101.
    let server_seqs: Vec<u64> = events
        .iter()
        .filter(|e| field(e, "event") == "msg_dispatched" && field(e, "session") != session)
        .map(|e| field(e, "seq").parse().unwrap())
        .collect();
    assert_eq!(server_seqs, (1..=101).collect::<Vec<u64>>());
}
