//! `ringwire ping`: round-trip times measured with KEEPALIVE2 / KEEPALIVE2_ACK, which every
//! msgr2 peer answers, real Ceph daemons included.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringwire::proto::{EntityAddr, EntityName, EntityType, Policy};
use ringwire::{Connection, Dispatcher, FaultReason, Incoming, Messenger, NotReady, Options};

struct Pinger(Mutex<Sender<Duration>>);

impl Dispatcher for Pinger {
    fn dispatch(&self, _conn: &Connection, _msg: Incoming) {}
    fn on_keepalive_ack(&self, _conn: &Connection, rtt: Duration) {
        let _ = self.0.lock().expect("not poisoned").send(rtt);
    }
}

pub struct PingArgs {
    pub addr: EntityAddr,
    /// `EntityType::ANY` accepts whatever the peer is.
    pub peer_type: EntityType,
    pub name: EntityName,
    pub auth: super::AuthArgs,
    pub count: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn type_name(t: EntityType) -> String {
    t.name().map_or_else(|| t.0.to_string(), str::to_string)
}

/// What went wrong and what to do, for a connection that never became ready.
fn explain(addr: &EntityAddr, why: &NotReady) -> String {
    let (NotReady::Timeout { last_fault, .. } | NotReady::Closed { last_fault }) = why;
    match last_fault {
        Some(FaultReason::ConnectFailed {
            errno: Some(libc::ECONNREFUSED),
        }) => format!("nothing listening at {addr} (connection refused)"),
        Some(FaultReason::WrongPeerType { expected, got }) => {
            let (got, expected) = (type_name(*got), type_name(*expected));
            format!(
                "the peer at {addr} is of type {got}, expected {expected}: use --peer-type {got} \
                 (or leave --peer-type out to accept any)"
            )
        }
        Some(FaultReason::AuthMethodRefused { allowed }) => format!(
            "{addr} refused authentication: it allows auth methods {allowed:?} \
             (1 = none, 2 = cephx: cephx needs -k KEYRING)"
        ),
        Some(FaultReason::AuthRejected { result }) => format!(
            "authentication with {addr} failed: it rejected our key (error {result}, permission \
             denied); check that the keyring's key for our name (-n) is the cluster's"
        ),
        Some(FaultReason::ConModeRefused { allowed }) => format!(
            "{addr} refused our connection modes: it allows {allowed:?} (1 = crc, 2 = secure); \
             see --ms-mon-client-mode / --ms-client-mode"
        ),
        Some(reason @ FaultReason::Cephx(_)) => {
            format!("authentication with {addr} failed: {reason}")
        }
        Some(FaultReason::HandshakeTimeout) => format!(
            "handshake with {addr} timed out: the port accepted a connection but did not speak \
             msgr2 in time (a msgr1-only port, or an overloaded peer?)"
        ),
        Some(reason) => format!("{addr}: {reason}"),
        None => format!("{addr}: {why}"),
    }
}

/// After a peer refused the address we dialled: ask it, without a nonce, which address it
/// has, so the error can name the right one.
fn learn_peer_addr(m: &Messenger, addr: &EntityAddr, timeout: Duration) -> Option<String> {
    let any = EntityAddr { nonce: 0, ..*addr };
    let probe = m.connect_anon(any, EntityType::ANY);
    probe.wait_ready(timeout).ok()?;
    let found = match (probe.peer(), probe.peer_addrs()) {
        (Some(name), Some(addrs)) => Some(format!("{name} at {addrs}")),
        _ => None,
    };
    probe.mark_down();
    found
}

pub fn run(a: PingArgs) -> Result<(), String> {
    let (tx, rx) = channel();
    let mut options = Options {
        workers: 1,
        ..Options::default()
    };
    a.auth.apply(&mut options);
    let m = Messenger::builder(a.name)
        .default_policy(Policy::lossy_client())
        .options(options)
        .start(Arc::new(Pinger(Mutex::new(tx))))
        .map_err(|e| e.to_string())?;
    let conn = m.connect(a.addr, a.peer_type);
    if let Err(why) = conn.wait_ready(a.timeout) {
        conn.mark_down();
        let mut msg = explain(&a.addr, &why);
        if matches!(
            why,
            NotReady::Closed {
                last_fault: Some(FaultReason::IdentRefused)
            }
        ) && a.addr.nonce != 0
        {
            if let Some(peer) = learn_peer_addr(&m, &a.addr, a.timeout) {
                msg = format!(
                    "{} refused our connection: it is not the peer's address; the peer there is \
                     {peer}",
                    a.addr
                );
            }
        }
        return Err(msg);
    }
    let peer = conn.peer().map(|p| p.to_string()).unwrap_or_default();
    let security = conn.security().map(|s| s.to_string()).unwrap_or_default();
    println!(
        "PING {} ({peer}, {security}): KEEPALIVE2 round trips",
        a.addr
    );
    let mut rtts = Vec::with_capacity(a.count);
    for seq in 1..=a.count {
        conn.keepalive();
        match rx.recv_timeout(a.timeout) {
            Ok(rtt) => {
                println!("seq={seq} rtt={:.1} us", us(rtt));
                rtts.push(rtt);
            }
            Err(_) if conn.is_closed() => {
                let why = conn
                    .last_fault()
                    .map_or_else(|| "connection closed".to_string(), |f| f.to_string());
                return Err(format!("{}: {why}", a.addr));
            }
            Err(_) => println!("seq={seq} timeout"),
        }
        if seq < a.count {
            std::thread::sleep(a.interval);
        }
    }
    if rtts.is_empty() {
        return Err(format!("{}: no reply", a.addr));
    }
    rtts.sort();
    println!(
        "{} sent, {} received, rtt min {:.1} us, p50 {:.1} us, p99 {:.1} us",
        a.count,
        rtts.len(),
        us(rtts[0]),
        us(percentile(&rtts, 0.50)),
        us(percentile(&rtts, 0.99))
    );
    conn.mark_down();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_its_cause_and_what_to_do() {
        let addr = EntityAddr::parse("v2:127.0.0.1:3300").unwrap();
        let closed = |f: FaultReason| NotReady::Closed {
            last_fault: Some(f),
        };
        let cases: [(NotReady, &str); 8] = [
            (
                closed(FaultReason::ConnectFailed {
                    errno: Some(libc::ECONNREFUSED),
                }),
                "nothing listening at v2:127.0.0.1:3300/0 (connection refused)",
            ),
            (
                closed(FaultReason::WrongPeerType {
                    expected: EntityType::MON,
                    got: EntityType::OSD,
                }),
                "is of type osd, expected mon: use --peer-type osd",
            ),
            (
                closed(FaultReason::AuthMethodRefused { allowed: vec![2] }),
                "refused authentication: it allows auth methods [2]",
            ),
            (
                closed(FaultReason::AuthRejected { result: -13 }),
                "authentication with v2:127.0.0.1:3300/0 failed: it rejected our key",
            ),
            (
                closed(FaultReason::ConModeRefused { allowed: vec![2] }),
                "refused our connection modes: it allows [2]",
            ),
            (closed(FaultReason::HandshakeTimeout), "handshake with"),
            (closed(FaultReason::IdentRefused), "nonce"),
            (
                NotReady::Timeout {
                    waited: Duration::from_secs(5),
                    last_fault: None,
                },
                "not ready after 5s",
            ),
        ];
        for (why, expected) in cases {
            let text = explain(&addr, &why);
            assert!(text.contains(expected), "{why:?}: {text}");
        }
    }
}
