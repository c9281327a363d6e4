//! Ringwire's messengers traced with the real BPF programs in the real kernel. This test
//! process is the traced one (it links Ringwire, so the probe symbols are in its executable).
//! The tests fail, not skip, when the BPF programs cannot be loaded.
//!
//! - A scripted session traced end to end: connect → 100 messages → an injected failure →
//!   reconnect → mark_down; the events, then the tracer's Prometheus metrics against them.
//! - `top` attached to the binary: the connection's row.
//! - Retransmits, on a connection whose loopback goes down for a while.
//! - Clear errors without privileges, without probes, without the process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringwire::proto::{Action, ConnId, EntityAddr, EntityName, EntityType, Message, Policy, Step};
use ringwire::{
    Connection, Dispatcher, Incoming, Messenger, MessengerBuilder, MessengerInterceptor, Options,
};
use serde_json::Value;

const PING: u16 = 0x10;
const POKE: u16 = 0x11;
const POKE_REPLY: u16 = 0x12;

/// Counts messages; answers POKE.
#[derive(Default)]
struct Peer(AtomicUsize);
impl Dispatcher for Peer {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
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

#[path = "../../../messenger/tests/common/wait.rs"]
mod wait;
use wait::wait_until;

const T: Duration = Duration::from_secs(20);

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(Instant::now() + T, what, f);
}

/// Collects the JSON events `tracer` prints, as they come; the thread ends with the tracer.
fn collect_events(tracer: &mut Child) -> (Arc<Mutex<Vec<Value>>>, JoinHandle<()>) {
    let out = BufReader::new(tracer.stdout.take().unwrap());
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let reader = std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    (events, reader)
}

/// The scripted session's end is in `events`: the client session closed, and every client
/// connection's TCP socket (by the port its conn_socket event gave) reached CLOSE.
fn client_closed(events: &[Value]) -> bool {
    let session_closed = events.iter().any(|e| {
        field(e, "event") == "session_state"
            && field(e, "policy") == "lossless_client"
            && field(e, "new") == "CLOSED"
    });
    let ports: Vec<&str> = events
        .iter()
        .filter(|e| field(e, "event") == "conn_socket" && field(e, "role") == "client")
        .map(|e| field(e, "local_port"))
        .collect();
    session_closed
        && !ports.is_empty()
        && ports.iter().all(|p| {
            events.iter().any(|e| {
                field(e, "event") == "tcp_state"
                    && field(e, "sport") == *p
                    && field(e, "new") == "CLOSE"
            })
        })
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

/// Both tests trace this one process: one at a time, so each sees only its own connections.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `ringwire-trace ARGS` and waits until it has attached; returns it and the metrics
/// address it printed, if any.
fn start_tracer(args: &[&str]) -> (std::process::Child, Option<String>) {
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_ringwire-trace"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tracer.stderr.take().unwrap());
    let mut metrics = None;
    loop {
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        if let Some(url) = line.strip_prefix("metrics at ") {
            metrics = Some(url.trim().to_string());
            continue;
        }
        assert!(
            line.starts_with("tracing "),
            "BPF programs could not be attached: {line}"
        );
        return (tracer, metrics);
    }
}

/// Every message through the probes, so the per-message events can be counted exactly.
fn options() -> Options {
    let mut opts = Options {
        workers: 1,
        ..Options::default()
    };
    opts.tuning.probe_sample = 1;
    opts
}

/// osd.0 on loopback, stateful_server to clients.
fn start_server(seen: Arc<Peer>) -> Messenger {
    Messenger::builder(EntityName {
        ty: EntityType::OSD,
        id: "0".into(),
    })
    .bind(EntityAddr::parse("v2:127.0.0.1:0").unwrap())
    .policy(EntityType::CLIENT, Policy::stateful_server())
    .options(options())
    .start(seen)
    .unwrap()
}

/// client.1, lossless_client to OSDs.
fn client_builder() -> MessengerBuilder {
    Messenger::builder(EntityName {
        ty: EntityType::CLIENT,
        id: "1".into(),
    })
    .policy(EntityType::OSD, Policy::lossless_client())
    .options(options())
}

/// Exposition text parsed by a real parser (so: valid exposition format).
fn parse_exposition(exposition: &str) -> prometheus_parse::Scrape {
    let lines = exposition.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

/// The sum of counter or gauge `name` of `pid` over the samples with `labels`.
fn metric(exposition: &str, pid: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_exposition(exposition)
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.get("pid") == Some(pid)
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .sum()
}

/// GET over plain TCP (the test has no HTTP client).
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let at = body.find("\r\n\r\n").expect("HTTP response");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body[at + 4..].to_string()
}

#[test]
fn scripted_session_is_traced_end_to_end() {
    let _one = one_at_a_time();
    let pid = std::process::id().to_string();
    let (mut tracer, metrics_url) = start_tracer(&[
        "events",
        "--json",
        "--messages",
        "--io-uring",
        "--metrics",
        "127.0.0.1:0",
        "--duration",
        "60",
        "--pid",
        &pid,
    ]);
    let (events, reader) = collect_events(&mut tracer);

    let server_seen = Arc::new(Peer::default());
    let server = start_server(server_seen.clone());
    let fail = Arc::new(FailOnce::default());
    let client_seen = Arc::new(Peer::default());
    let client = client_builder()
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
    wait(
        "the client's session and sockets closed, in the events",
        || client_closed(&events.lock().unwrap()),
    );
    // The tracer refreshes its metrics once a second: wait for a refresh that has the
    // script's last message (its exact count is checked below).
    let metrics_url = metrics_url.expect("the tracer printed its metrics address");
    let mut exposition = String::new();
    wait("metrics with all 102 dispatched messages", || {
        exposition = http_get(&metrics_url);
        metric(
            &exposition,
            &pid,
            "ringwire_trace_messages_total",
            &[("direction", "in")],
        ) >= 102.0
    });
    let _ = tracer.kill();
    let _ = tracer.wait();
    reader.join().unwrap();
    let events = std::mem::take(&mut *events.lock().unwrap());

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
    assert!(
        of_session("session_state")
            .iter()
            .all(|e| field(e, "policy") == "lossless_client"),
        "the client session's policy"
    );
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
    assert_eq!(faults, ["intercepted"], "one fault, the interceptor's");
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

    // The tracer's metrics: valid exposition format (a real parser), and the counters equal
    // to what the events and the script say.
    let scrape = parse_exposition(&exposition);
    let value = |name: &str, labels: &[(&str, &str)]| metric(&exposition, &pid, name, labels);
    let count = |kind: &str| events.iter().filter(|e| field(e, "event") == kind).count() as f64;
    let direction = |d| [("direction", d)];
    assert_eq!(
        value("ringwire_trace_messages_total", &direction("in")),
        102.0,
        "101 messages to the server, 1 reply to the client, each dispatched once"
    );
    assert_eq!(
        value("ringwire_trace_messages_total", &direction("out")),
        count("msg_sent"),
        "every send, resends included"
    );
    assert_eq!(
        value("ringwire_trace_bytes_total", &direction("in")),
        400.0,
        "100 four-byte fronts"
    );
    assert_eq!(
        value("ringwire_trace_reconnects_total", &[("outcome", "OK")]),
        count("reconnect"),
        "the reconnect, seen by both ends"
    );
    assert_eq!(value("ringwire_trace_faults_total", &[]), count("fault"));
    assert!(
        value(
            "ringwire_trace_tcp_transitions_total",
            &[("state", "ESTABLISHED")]
        ) >= 2.0
    );
    assert!(value("ringwire_trace_io_uring_submissions_total", &[]) > 0.0);
    let wire = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "ringwire_trace_sent_to_dispatched_seconds"
                && s.labels.get("pid") == Some(pid.as_str())
        })
        .expect("the sent-to-dispatched histogram");
    let prometheus_parse::Value::Histogram(buckets) = &wire.value else {
        panic!("not a histogram: {:?}", wire.value);
    };
    assert!(
        buckets.last().is_some_and(|b| b.count >= 100.0),
        "both ends traced: most messages timed from send to dispatch: {buckets:?}"
    );
}

#[test]
fn top_shows_each_connection() {
    let _one = one_at_a_time();
    let exe = std::env::current_exe().unwrap();
    let (mut tracer, _) = start_tracer(&[
        "top",
        "--json",
        "--interval",
        "0.3",
        "--duration",
        "60",
        "--binary",
        exe.to_str().unwrap(),
    ]);
    let server = start_server(Arc::new(Peer::default()));
    let server_addr = server.addrs().0[0].addr.unwrap();
    let client = client_builder().start(Arc::new(Peer::default())).unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    for i in 0..50u32 {
        conn.send(Message::new(PING).with_front(vec![0; i as usize]))
            .unwrap();
    }
    let mut lines = BufReader::new(tracer.stdout.take().unwrap()).lines();
    let (row, server_row) = next_snapshot(&mut lines, "both ends with all 50 messages", |rows| {
        let find = |role: &str, key: &str| {
            rows.iter()
                .find(|c| c["role"] == role && c[key] == 50 && c["state"] == "READY")
                .cloned()
        };
        find("client", "msgs_out").zip(find("server", "msgs_in"))
    });
    let _ = tracer.kill();
    let _ = tracer.wait();
    assert_eq!(row["peer"], format!("{server_addr}"));
    assert_eq!(row["policy"], "lossless_client");
    assert_eq!(row["session_state"], "READY");
    assert_eq!(row["tcp_state"], "ESTABLISHED");
    assert_eq!(row["msgs_in"], 0);
    assert_eq!(row["bytes_out"], (0..50).sum::<u64>());
    assert_eq!(row["retransmits"], 0);
    assert_eq!(row["reconnects"], 0);
    assert_eq!(row["pid"], std::process::id());
    assert_eq!(server_row["policy"], "stateful_server");
    assert_eq!(server_row["peer_port"], row["local_port"]);
    assert_eq!(server_row["bytes_in"], (0..50).sum::<u64>());
    // Both ends are in this process, so each message is timed from send to dispatch.
    let p50 = server_row["sent_to_dispatched_p50_us"]
        .as_f64()
        .expect("a latency");
    let p99 = server_row["sent_to_dispatched_p99_us"]
        .as_f64()
        .expect("a latency");
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50} µs, p99 {p99} µs");
}

/// Reads `top --json` snapshots from `lines` until `pick` finds what it looks for among one's
/// connections; fails after T.
fn next_snapshot<R>(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    what: &str,
    mut pick: impl FnMut(&[Value]) -> Option<R>,
) -> R {
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "no snapshot with {what}");
        let line = lines.next().expect("the tracer's output ended").unwrap();
        let snapshot: Value = serde_json::from_str(&line).unwrap();
        if let Some(found) = pick(snapshot["connections"].as_array().unwrap()) {
            return found;
        }
    }
}

/// `ringwire-trace ARGS` run to its end, which must be a failure: its stderr.
fn tracer_fails(args: &[&str], as_nobody: bool) -> String {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ringwire-trace"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_ringwire-trace"))
    };
    let out = cmd.args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn clear_errors_without_privileges_or_probes() {
    let pid = std::process::id().to_string();
    let err = tracer_fails(&["events", "--pid", &pid], true);
    assert!(
        err.contains("run as root or with CAP_BPF and CAP_PERFMON"),
        "{err}"
    );
    // A process without Ringwire in it.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let err = tracer_fails(&["events", "--pid", &sleeper.id().to_string()], false);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(err.contains("has no Ringwire probes"), "{err}");
    let err = tracer_fails(&["top", "--pid", "999999999"], false);
    assert!(err.contains("no process 999999999"), "{err}");
}

/// `ip ARGS` in this thread's network namespace.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

#[test]
fn retransmits_are_counted_per_connection() {
    let _one = one_at_a_time();
    // A network namespace of this thread's own: the messengers' threads start from here and
    // inherit it, so taking its loopback down loses their segments and TCP retransmits them.
    // SAFETY: a plain syscall; it affects only the calling thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
    ip(&["link", "set", "lo", "up"]);
    let pid = std::process::id().to_string();
    let (mut tracer, _) = start_tracer(&[
        "top",
        "--json",
        "--interval",
        "0.3",
        "--duration",
        "60",
        "--pid",
        &pid,
    ]);
    let server_seen = Arc::new(Peer::default());
    let server = start_server(server_seen.clone());
    let client = client_builder().start(Arc::new(Peer::default())).unwrap();
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    conn.send(Message::new(PING)).unwrap();
    wait("the first message", || {
        server_seen.0.load(Ordering::SeqCst) == 1
    });
    ip(&["link", "set", "lo", "down"]);
    conn.send(Message::new(PING).with_front(vec![7; 1000]))
        .unwrap();
    // With lo down TCP retransmits the message: wait until the tracer shows it.
    let mut lines = BufReader::new(tracer.stdout.take().unwrap()).lines();
    let retransmitting = |c: &&Value| c["role"] == "client" && c["retransmits"].as_u64() > Some(0);
    next_snapshot(&mut lines, "retransmits while lo is down", |rows| {
        rows.iter().find(retransmitting).cloned()
    });
    ip(&["link", "set", "lo", "up"]);
    wait("the message sent while the link was down", || {
        server_seen.0.load(Ordering::SeqCst) == 2
    });
    // A snapshot from after the delivery: the server's row has both messages.
    let row = next_snapshot(&mut lines, "the connection after the retransmits", |rows| {
        let delivered = rows
            .iter()
            .any(|c| c["role"] == "server" && c["msgs_in"] == 2);
        let client = rows
            .iter()
            .filter(retransmitting)
            .find(|c| c["msgs_out"] == 2);
        client.filter(|_| delivered).cloned()
    });
    let _ = tracer.kill();
    let _ = tracer.wait();
    assert_eq!(row["state"], "READY", "the connection survived: {row}");
    assert_eq!(row["tcp_state"], "ESTABLISHED", "{row}");
}
