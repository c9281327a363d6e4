//! What the events and maps say, put together: each connection with its session, TCP socket,
//! counters and latencies, for `top` and the metrics; and one event described for `events`.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ringwire_trace_common::*;

const CONN_STATES: [&str; 8] = [
    "CONNECTING",
    "BANNER",
    "HELLO",
    "AUTH",
    "AUTH_SIGN",
    "SESSION",
    "READY",
    "CLOSED",
];
const CONN_CLOSED: u64 = 7;
const SESSION_STATES: [&str; 4] = ["CONNECTING", "READY", "STANDBY", "CLOSED"];
const SESSION_CLOSED: u64 = 3;
/// The kernel's TCP states (include/net/tcp_states.h), index = number.
pub const TCP_STATES: [&str; 13] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];
pub const OUTCOMES: [&str; 7] = [
    "?",
    "OK",
    "RETRY",
    "RETRY_GLOBAL",
    "RESET_FULL",
    "RESET_PARTIAL",
    "WAIT",
];

fn name(table: &[&'static str], i: u64) -> &'static str {
    table.get(i as usize).copied().unwrap_or("?")
}

/// The event as (what, fields), for text or JSON.
pub fn describe(e: &Event) -> (&'static str, Vec<(&'static str, String)>) {
    let s = |v: u64| v.to_string();
    let hex = |v: u64| format!("{v:#x}");
    match e.kind {
        CONN_STATE => (
            "conn_state",
            vec![
                ("conn", hex(e.a)),
                ("session", hex(e.b)),
                ("role", if e.c == 0 { "client" } else { "server" }.into()),
                ("old", name(&CONN_STATES, e.d >> 32).into()),
                ("new", name(&CONN_STATES, e.d & 0xffff_ffff).into()),
            ],
        ),
        SESSION_STATE => (
            "session_state",
            vec![
                ("session", hex(e.a)),
                ("policy", policy::name(e.d).into()),
                ("old", name(&SESSION_STATES, e.b).into()),
                ("new", name(&SESSION_STATES, e.c).into()),
            ],
        ),
        MSG_QUEUED => (
            "msg_queued",
            vec![("session", hex(e.a)), ("type", hex(e.c)), ("len", s(e.d))],
        ),
        MSG_SENT | MSG_DISPATCHED => (
            if e.kind == MSG_SENT {
                "msg_sent"
            } else {
                "msg_dispatched"
            },
            vec![
                ("session", hex(e.a)),
                ("seq", s(e.b)),
                ("type", hex(e.c)),
                ("len", s(e.d)),
                (
                    if e.kind == MSG_SENT {
                        "queued_ns"
                    } else {
                        "wire_ns"
                    },
                    s(e.e),
                ),
            ],
        ),
        FAULT => (
            "fault",
            vec![
                ("conn", hex(e.a)),
                ("session", hex(e.b)),
                ("reason", fault::name(e.c as u32).into()),
            ],
        ),
        RECONNECT => (
            "reconnect",
            vec![
                ("session", hex(e.a)),
                ("connect_seq", s(e.b)),
                ("outcome", name(&OUTCOMES, e.c).into()),
            ],
        ),
        CONN_SOCKET => (
            "conn_socket",
            vec![
                ("conn", hex(e.a)),
                ("session", hex(e.b)),
                (
                    "role",
                    if e.c & 0xff == 0 { "client" } else { "server" }.into(),
                ),
                ("state", name(&CONN_STATES, (e.c >> 8) & 0xff).into()),
                ("local_port", s(e.d >> 16)),
                ("peer", peer(e.addr, e.d as u16)),
            ],
        ),
        TCP_STATE => (
            "tcp_state",
            vec![
                ("sport", s(e.a)),
                ("dport", s(e.b)),
                ("old", name(&TCP_STATES, e.c).into()),
                ("new", name(&TCP_STATES, e.d).into()),
            ],
        ),
        TCP_RETRANSMIT => (
            "tcp_retransmit",
            vec![
                ("sport", s(e.a)),
                ("dport", s(e.b)),
                ("state", name(&TCP_STATES, e.c).into()),
            ],
        ),
        _ => ("unknown", vec![("kind", s(e.kind as u64))]),
    }
}

fn peer(ip: [u8; 16], port: u16) -> String {
    let v6 = Ipv6Addr::from(ip);
    match v6.to_ipv4_mapped() {
        Some(v4) => format!("{v4}:{port}"),
        None => format!("[{v6}]:{port}"),
    }
}

/// One connection as `top` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConnView {
    pub pid: u32,
    pub conn: u64,
    pub session: u64,
    pub role: &'static str,
    pub peer: String,
    pub local_port: u16,
    pub peer_port: u16,
    pub policy: &'static str,
    pub state: &'static str,
    pub session_state: &'static str,
    pub tcp_state: &'static str,
    pub msgs_out: u64,
    pub msgs_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub retransmits: u64,
    pub reconnects: u64,
    pub faults: u64,
    /// Microseconds, from the in-kernel histograms (None: no sample yet).
    pub queued_to_sent_p50_us: Option<f64>,
    pub queued_to_sent_p99_us: Option<f64>,
    pub sent_to_dispatched_p50_us: Option<f64>,
    pub sent_to_dispatched_p99_us: Option<f64>,
    #[serde(skip)]
    pub closed_at: Option<Instant>,
}

#[derive(Default)]
struct SessionView {
    policy: &'static str,
    state: &'static str,
    reconnects: u64,
    faults: u64,
    closed: bool,
}

/// Per-process totals, for the metrics (kept across closed sessions).
#[derive(Clone, Debug, Default)]
pub struct ProcessTotals {
    pub msgs_out: u64,
    pub msgs_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub queued_to_sent: [u64; HIST_BUCKETS],
    pub sent_to_dispatched: [u64; HIST_BUCKETS],
    pub faults: u64,
    pub retransmits: u64,
    pub reconnects: HashMap<&'static str, u64>,
    pub tcp_transitions: HashMap<&'static str, u64>,
    pub io_uring: IoUringStats,
}

/// Socket events kept per unclaimed port pair.
const MAX_UNJOINED: usize = 16;

/// How long a closed connection stays in the table.
const LINGER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Model {
    conns: HashMap<(u32, u64), ConnView>,
    sessions: HashMap<(u32, u64), SessionView>,
    /// (local port, peer port) → connection, to join the kernel's socket events.
    by_ports: HashMap<(u16, u16), (u32, u64)>,
    /// Socket events not joined yet: a socket is established before its connection reports
    /// its ports.
    unjoined: HashMap<(u16, u16), (Instant, Vec<Event>)>,
    /// Counted from events, plus the counters of closed sessions the kernel side forgot.
    accumulated: HashMap<u32, ProcessTotals>,
    /// The latest live counters per process (closed sessions excluded).
    live: HashMap<u32, ProcessTotals>,
}

impl Model {
    pub fn event(&mut self, e: &Event) {
        let now = Instant::now();
        match e.kind {
            CONN_STATE => {
                let c = self.conn(e.pid, e.a);
                if e.b != 0 {
                    c.session = e.b;
                }
                c.role = if e.c == 0 { "client" } else { "server" };
                c.state = name(&CONN_STATES, e.d & 0xffff_ffff);
                if e.d & 0xffff_ffff == CONN_CLOSED {
                    c.closed_at = Some(now);
                }
            }
            SESSION_STATE => {
                let s = self.sessions.entry((e.pid, e.a)).or_default();
                s.policy = policy::name(e.d);
                s.state = name(&SESSION_STATES, e.c);
                s.closed = e.c == SESSION_CLOSED;
            }
            FAULT => {
                self.conn(e.pid, e.a).faults += 1;
                self.sessions.entry((e.pid, e.b)).or_default().faults += 1;
                self.accumulated.entry(e.pid).or_default().faults += 1;
            }
            RECONNECT => {
                self.sessions.entry((e.pid, e.a)).or_default().reconnects += 1;
                *self
                    .accumulated
                    .entry(e.pid)
                    .or_default()
                    .reconnects
                    .entry(name(&OUTCOMES, e.c))
                    .or_default() += 1;
            }
            CONN_SOCKET => {
                let (local, remote) = ((e.d >> 16) as u16, e.d as u16);
                self.by_ports.insert((local, remote), (e.pid, e.a));
                let c = self.conn(e.pid, e.a);
                if e.b != 0 {
                    c.session = e.b;
                }
                c.role = if e.c & 0xff == 0 { "client" } else { "server" };
                c.state = name(&CONN_STATES, (e.c >> 8) & 0xff);
                c.local_port = local;
                c.peer_port = remote;
                c.peer = peer(e.addr, remote);
                if e.b != 0 {
                    let s = self.sessions.entry((e.pid, e.b)).or_default();
                    s.state = name(&SESSION_STATES, (e.c >> 16) & 0xff);
                    s.policy = policy::name(e.c >> 24);
                }
                if let Some((_, earlier)) = self.unjoined.remove(&(local, remote)) {
                    for s in &earlier {
                        self.socket_event(s);
                    }
                }
            }
            TCP_STATE | TCP_RETRANSMIT => self.socket_event(e),
            _ => {}
        }
    }

    /// A TCP state change or retransmit, joined to its connection by ports, or kept until the
    /// connection reports them.
    fn socket_event(&mut self, e: &Event) {
        let ports = (e.a as u16, e.b as u16);
        let Some(key) = self.by_ports.get(&ports).copied() else {
            let (_, pending) = self
                .unjoined
                .entry(ports)
                .or_insert_with(|| (Instant::now(), Vec::new()));
            // A few transitions precede a connection's report; retransmits on a port nobody
            // claims are not worth keeping without bound.
            if pending.len() < MAX_UNJOINED {
                pending.push(*e);
            }
            return;
        };
        let totals = self.accumulated.entry(key.0).or_default();
        if e.kind == TCP_STATE {
            let new = name(&TCP_STATES, e.d);
            *totals.tcp_transitions.entry(new).or_default() += 1;
            if let Some(c) = self.conns.get_mut(&key) {
                c.tcp_state = new;
            }
        } else {
            totals.retransmits += 1;
            if let Some(c) = self.conns.get_mut(&key) {
                c.retransmits += 1;
            }
        }
    }

    fn conn(&mut self, pid: u32, conn: u64) -> &mut ConnView {
        self.conns.entry((pid, conn)).or_insert_with(|| ConnView {
            pid,
            conn,
            role: "?",
            policy: "?",
            state: "?",
            session_state: "?",
            tcp_state: "?",
            ..ConnView::default()
        })
    }

    /// Takes in the kernel's per-session counters; returns the sessions that are closed, whose
    /// counters now live in the totals (the caller removes them from the map).
    pub fn sessions(&mut self, stats: &[(SessionKey, SessionStats)]) -> Vec<SessionKey> {
        let mut forget = Vec::new();
        self.live.clear();
        let mut per_session: HashMap<(u32, u64), &SessionStats> = HashMap::new();
        for (key, st) in stats {
            let closed = self
                .sessions
                .get(&(key.pid, key.session))
                .is_some_and(|s| s.closed);
            let totals = if closed {
                forget.push(*key);
                self.accumulated.entry(key.pid).or_default()
            } else {
                per_session.insert((key.pid, key.session), st);
                self.live.entry(key.pid).or_default()
            };
            add(totals, st);
        }
        for c in self.conns.values_mut() {
            if let Some(st) = per_session.get(&(c.pid, c.session)) {
                c.msgs_out = st.msgs_out;
                c.msgs_in = st.msgs_in;
                c.bytes_out = st.bytes_out;
                c.bytes_in = st.bytes_in;
                c.queued_to_sent_p50_us = percentile_us(&st.queued_to_sent, 0.5);
                c.queued_to_sent_p99_us = percentile_us(&st.queued_to_sent, 0.99);
                c.sent_to_dispatched_p50_us = percentile_us(&st.sent_to_dispatched, 0.5);
                c.sent_to_dispatched_p99_us = percentile_us(&st.sent_to_dispatched, 0.99);
            }
            if let Some(s) = self.sessions.get(&(c.pid, c.session)) {
                c.policy = s.policy;
                c.session_state = s.state;
                c.reconnects = s.reconnects;
            }
        }
        let now = Instant::now();
        self.conns
            .retain(|_, c| c.closed_at.is_none_or(|t| now - t < LINGER));
        let conns = &self.conns;
        self.by_ports.retain(|_, key| conns.contains_key(key));
        // Sockets of other processes on a traced port never join.
        self.unjoined.retain(|_, (at, _)| now - *at < LINGER);
        self.sessions.retain(|_, s| !s.closed);
        forget
    }

    pub fn io_uring(&mut self, stats: &[(u32, IoUringStats)]) {
        for (pid, st) in stats {
            self.live.entry(*pid).or_default().io_uring = *st;
        }
    }

    /// The connections, by process and id.
    pub fn rows(&self) -> Vec<ConnView> {
        let mut rows: Vec<ConnView> = self.conns.values().cloned().collect();
        rows.sort_by_key(|c| (c.pid, c.conn));
        rows
    }

    /// Each process's totals: closed sessions plus the live ones.
    pub fn totals(&self) -> Vec<(u32, ProcessTotals)> {
        let mut pids: Vec<u32> = self
            .accumulated
            .keys()
            .chain(self.live.keys())
            .copied()
            .collect();
        pids.sort();
        pids.dedup();
        pids.into_iter()
            .map(|pid| {
                let mut t = self.accumulated.get(&pid).cloned().unwrap_or_default();
                if let Some(live) = self.live.get(&pid) {
                    t.msgs_out += live.msgs_out;
                    t.msgs_in += live.msgs_in;
                    t.bytes_out += live.bytes_out;
                    t.bytes_in += live.bytes_in;
                    for i in 0..HIST_BUCKETS {
                        t.queued_to_sent[i] += live.queued_to_sent[i];
                        t.sent_to_dispatched[i] += live.sent_to_dispatched[i];
                    }
                    t.io_uring = live.io_uring;
                }
                (pid, t)
            })
            .collect()
    }
}

fn add(t: &mut ProcessTotals, st: &SessionStats) {
    t.msgs_out += st.msgs_out;
    t.msgs_in += st.msgs_in;
    t.bytes_out += st.bytes_out;
    t.bytes_in += st.bytes_in;
    for i in 0..HIST_BUCKETS {
        t.queued_to_sent[i] += st.queued_to_sent[i];
        t.sent_to_dispatched[i] += st.sent_to_dispatched[i];
    }
}

/// The `q` quantile of a log2 histogram in microseconds, interpolated inside its bucket.
pub fn percentile_us(hist: &[u64; HIST_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0.0;
    for (i, &n) in hist.iter().enumerate() {
        let n = n as f64;
        if n > 0.0 && below + n >= rank {
            let lo = if i == 0 { 0.0 } else { (1u64 << i) as f64 };
            let hi = (1u64 << (i + 1)) as f64;
            return Some((lo + (hi - lo) * ((rank - below) / n)) / 1000.0);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let mut h = [0; HIST_BUCKETS];
        assert_eq!(percentile_us(&h, 0.5), None);
        // 100 samples in [8192, 16384) ns, 1 in [1 048 576, 2 097 152).
        h[13] = 100;
        h[20] = 1;
        let p50 = percentile_us(&h, 0.5).unwrap();
        assert!((8.192..16.384).contains(&p50), "{p50}");
        let p99 = percentile_us(&h, 0.99).unwrap();
        assert!((8.192..=16.384).contains(&p99), "{p99}");
        let max = percentile_us(&h, 1.0).unwrap();
        assert!((1048.576..=2097.152).contains(&max), "{max}");
    }
}
