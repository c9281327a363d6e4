//! One messenger's protocol state, sans-IO: the handshake of every connection (a socket) and
//! the sessions they carry (sequence numbers, queues, cookies, reconnects, races).
//!
//! A *connection* ([`ConnId`]) is one byte stream; a *session* ([`SessionId`]) is what the
//! application holds and what survives reconnects under lossless policies. The runtime feeds
//! bytes, socket events and the time in, and takes out [`Io`] requests (connect, transmit,
//! close), [`Event`]s for the dispatcher and the next timer deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::control::{
    AuthNonePayload, ClientIdent, Control, ControlError, Reconnect, ServerIdent, UTime,
    AUTH_METHOD_NONE, CON_MODE_CRC, IDENT_FLAG_LOSSY,
};
use super::frame::{
    Banner, Frame, FrameDecoder, FrameError, FrameLimits, Tag, TxQueue, BANNER_LEN,
};
use super::hooks;
use super::intercept::{Action, Interceptor, Step};
use super::message::Message;
use super::policy::Policy;
use super::wire::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Fabric, WireError};

/// A hasher for maps keyed by ids this process allocated: they need no defence against
/// chosen keys, so SipHash's cost buys nothing. Maps keyed by what peers send keep SipHash.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A point on the runtime's monotonic clock, in nanoseconds from an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub fn after(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_nanos() as u64))
    }
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Frames sent and received by an endpoint, per tag (index = tag number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub sent: [u64; 23],
    pub received: [u64; 23],
}

impl FrameCounts {
    pub fn sent(&self, tag: Tag) -> u64 {
        self.sent[tag as usize]
    }
    pub fn received(&self, tag: Tag) -> u64 {
        self.received[tag as usize]
    }
    pub fn add(&mut self, other: &FrameCounts) {
        for i in 0..self.sent.len() {
            self.sent[i] += other.sent[i];
            self.received[i] += other.received[i];
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Configuration of one endpoint; Ceph's option names in brackets.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Who we are, e.g. `osd.0` or `client.admin`.
    pub name: EntityName,
    /// Addresses we are bound to; empty for a client that only connects.
    pub addrs: EntityAddrVec,
    /// Our nonce, when we have no bound address (it goes into the `any:` address we send).
    pub nonce: u32,
    /// Policy per peer type; `default_policy` for the rest.
    pub policies: Vec<(EntityType, Policy)>,
    pub default_policy: Policy,
    pub tuning: Tuning,
    /// Seeds the cookies and the failure injector (the runtime passes real randomness).
    pub seed: u64,
    /// Which of several endpoints (one per worker) this is. Sessions are owned by the endpoint
    /// [`owner_of`] their peer's address names; an incoming connection whose peer belongs to
    /// another endpoint is handed over ([`Io::Migrate`]) when its ident arrives.
    pub placement: Placement,
}

/// The protocol's limits, timers and fault injection (Ceph's option names in brackets): the
/// same for the bare core ([`EndpointConfig`]) and the messenger (`ringwire::Options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Largest segment, frame and control payload accepted.
    pub limits: FrameLimits,
    /// `ms_initial_backoff`: the first reconnect delay.
    pub initial_backoff: Duration,
    /// `ms_max_backoff`: the reconnect delay cap (used at once after WAIT).
    pub max_backoff: Duration,
    /// `ms_connection_ready_timeout`: the whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// `ms_connection_idle_timeout`: a connection with no input for this long is faulted.
    pub idle_timeout: Duration,
    /// Send a KEEPALIVE2 on every ready connection this often (`None`: only on request).
    pub keepalive_interval: Option<Duration>,
    /// `ms_inject_socket_failures`: fault one received batch in N (0 = never; testing).
    pub inject_socket_failures: u32,
    /// The per-message probes (`ringwire_msg_*`) fire for one message in this many (by
    /// sequence number; 1: every message, 0: none). A traced probe costs a few hundred
    /// nanoseconds, so sampling keeps a busy messenger's tracing cheap; the counters the
    /// other probes report cover every message either way.
    pub probe_sample: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            limits: FrameLimits::default(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            keepalive_interval: None,
            inject_socket_failures: 0,
            probe_sample: 64,
        }
    }
}

/// This endpoint's index among `count` endpoints sharing the session space, and the
/// messenger it belongs to (its number in the process, for process-unique ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub index: usize,
    pub count: usize,
    pub messenger: u8,
}

/// The endpoint (of `count`) that owns sessions with the peer at `addr`.
pub fn owner_of(addr: &EntityAddr, count: usize) -> usize {
    (placement_hash(addr) % count.max(1) as u64) as usize
}

/// FNV-1a over the address, so every worker and every process computes the same answer.
pub fn placement_hash(addr: &EntityAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&addr.ty.to_wire().to_le_bytes());
    eat(&addr.nonce.to_le_bytes());
    match addr.addr {
        Some(SocketAddr::V4(a)) => {
            eat(&a.ip().octets());
            eat(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            eat(&a.ip().octets());
            eat(&a.port().to_le_bytes());
        }
        None => {}
    }
    h
}

/// An accepted connection on its way to the endpoint that owns its peer's session: the ident
/// frame that decided it and any bytes that followed. Opaque; pass it to [`Endpoint::adopt`].
#[derive(Debug)]
pub struct Handoff {
    peer_socket: Option<SocketAddr>,
    peer_type: EntityType,
    frame: Frame,
    rest: Vec<u8>,
    stream_offset: u64,
    tx: TxQueue,
}

impl Handoff {
    /// Bytes the old endpoint had queued and not yet seen written.
    pub fn unsent(&self) -> usize {
        self.tx.len()
    }
    /// Records that `n` of the unsent bytes were written after all (a send completed after
    /// the hand-over began).
    pub fn advance_tx(&mut self, n: usize) {
        self.tx.advance(n.min(self.tx.len()));
    }
}

impl EndpointConfig {
    pub fn new(name: EntityName, addrs: EntityAddrVec) -> Self {
        EndpointConfig {
            name,
            addrs,
            nonce: 0,
            policies: Vec::new(),
            default_policy: Policy::lossy_client(),
            tuning: Tuning::default(),
            seed: 0x5eed,
            placement: Placement {
                index: 0,
                count: 1,
                messenger: 0,
            },
        }
    }

    pub fn policy_for(&self, peer: EntityType) -> Policy {
        self.policies
            .iter()
            .find(|(t, _)| *t == peer)
            .map(|(_, p)| *p)
            .unwrap_or(self.default_policy)
    }
}

/// Why a connection failed. Each is reported once; the session then follows its policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultReason {
    #[error("connection closed by the transport")]
    SocketClosed,
    /// The transport could not connect; `errno` is the OS error when it gave one.
    #[error("{}", connect_failure(*errno))]
    ConnectFailed { errno: Option<i32> },
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
    #[error("control frame error: {0}")]
    Control(#[from] ControlError),
    #[error("malformed message: {0}")]
    Message(#[from] WireError),
    #[error("unexpected {tag} in state {state}")]
    UnexpectedFrame { state: &'static str, tag: Tag },
    #[error("peer is a {got}, expected a {expected}")]
    WrongPeerType {
        expected: EntityType,
        got: EntityType,
    },
    #[error("peer refused auth method none; it allows methods {allowed:?} (Ringwire supports none only; cephx is not implemented yet)")]
    AuthMethodRefused { allowed: Vec<u32> },
    #[error("peer chose connection mode {0}; Ringwire supports crc mode only")]
    UnsupportedConMode(u32),
    #[error("auth signature mismatch")]
    BadSignature,
    #[error("peer requires features {0:#x} that we do not support")]
    MissingFeatures(u64),
    #[error("peer lacks features {0:#x} that we require")]
    PeerMissingFeatures(u64),
    #[error("bad ident: {0}")]
    BadIdent(&'static str),
    #[error("handshake did not complete in time")]
    HandshakeTimeout,
    #[error("no input for the idle timeout")]
    IdleTimeout,
    #[error("injected socket failure")]
    Injected,
    #[error("interceptor failed the connection at {0:?}")]
    Intercepted(Step),
    #[error("peer asked us to wait (connection race)")]
    Wait,
    #[error("stale connection (an older global_seq than the session's)")]
    Stale,
    /// The peer closed the connection instead of answering our CLIENT_IDENT or
    /// SESSION_RECONNECT. A Ceph or Ringwire server does that when the address we dialled is
    /// not its own (most often a nonce from an earlier instance), or refuses us for a reason
    /// only its log names.
    #[error(
        "peer closed the connection in answer to our identification: the address's nonce is \
         probably not the peer's (a restarted daemon has a new one; name none, v2:IP:PORT, to \
         reach whichever instance listens there), or it refused us (its log says why)"
    )]
    IdentRefused,
    /// The peer started a new session on another connection, which ends a lossy one.
    #[error("peer started a new session")]
    Replaced,
}

fn connect_failure(errno: Option<i32>) -> String {
    match errno {
        Some(libc::ECONNREFUSED) => "nothing listening there (connection refused)".into(),
        Some(e) => format!("connect failed: {}", std::io::Error::from_raw_os_error(e)),
        None => "connect failed".into(),
    }
}

impl FaultReason {
    /// A stable number per kind of fault, for the `ringwire_fault` probe.
    pub fn code(&self) -> u32 {
        match self {
            FaultReason::SocketClosed => 1,
            FaultReason::ConnectFailed { .. } => 2,
            FaultReason::Frame(_) => 3,
            FaultReason::Control(_) => 4,
            FaultReason::Message(_) => 5,
            FaultReason::UnexpectedFrame { .. } => 6,
            FaultReason::WrongPeerType { .. } => 7,
            FaultReason::AuthMethodRefused { .. } => 8,
            FaultReason::UnsupportedConMode(_) => 9,
            FaultReason::BadSignature => 10,
            FaultReason::MissingFeatures(_) => 11,
            FaultReason::PeerMissingFeatures(_) => 12,
            FaultReason::BadIdent(_) => 13,
            FaultReason::HandshakeTimeout => 14,
            FaultReason::IdleTimeout => 15,
            FaultReason::Injected => 16,
            FaultReason::Intercepted(_) => 17,
            FaultReason::Wait => 18,
            FaultReason::Stale => 19,
            FaultReason::IdentRefused => 20,
            FaultReason::Replaced => 21,
        }
    }

    /// The name of each [`code`](Self::code), as the tracer prints it.
    pub fn code_name(code: u32) -> &'static str {
        const NAMES: [&str; 22] = [
            "unknown",
            "socket_closed",
            "connect_failed",
            "frame",
            "control",
            "message",
            "unexpected_frame",
            "wrong_peer_type",
            "auth_method_refused",
            "unsupported_con_mode",
            "bad_signature",
            "missing_features",
            "peer_missing_features",
            "bad_ident",
            "handshake_timeout",
            "idle_timeout",
            "injected",
            "intercepted",
            "wait",
            "stale",
            "ident_refused",
            "replaced",
        ];
        NAMES.get(code as usize).copied().unwrap_or("unknown")
    }
}

/// Requests for the transport.
#[derive(Debug)]
pub enum Io {
    /// Open a stream to `addr`, then call [`Endpoint::on_connected`] or [`Endpoint::on_closed`].
    Connect {
        conn: ConnId,
        addr: SocketAddr,
        fabric: Fabric,
    },
    /// Bytes are queued for `conn`: see [`Endpoint::tx_queue`].
    Transmit { conn: ConnId },
    /// Hand the socket of `conn` (no longer known here) and `handoff` to endpoint `to`, which
    /// continues with [`Endpoint::adopt`].
    Migrate {
        conn: ConnId,
        to: usize,
        handoff: Box<Handoff>,
    },
    /// Write `remaining` (the last frames, e.g. a WAIT; often empty), then close `conn`.
    /// The connection is already gone from the endpoint.
    Close { conn: ConnId, remaining: Vec<Bytes> },
}

/// What the dispatcher hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Our connection became ready (`ms_handle_connect`); `addrs` are those the peer announced.
    Connected {
        session: SessionId,
        peer: EntityName,
        addrs: EntityAddrVec,
    },
    /// A peer's connection became ready on our side (`ms_handle_accept`).
    Accepted {
        session: SessionId,
        peer: EntityName,
        addrs: EntityAddrVec,
    },
    Message {
        session: SessionId,
        msg: Message,
    },
    /// A lossy session ended; its undelivered messages are gone (`ms_handle_reset`).
    Reset {
        session: SessionId,
        reason: FaultReason,
    },
    /// The peer lost our session; queued messages were dropped (`ms_handle_remote_reset`).
    RemoteReset {
        session: SessionId,
    },
    /// The peer refused the handshake (`ms_handle_refused`-like): the reason says why.
    Refused {
        session: SessionId,
        reason: FaultReason,
    },
    KeepaliveAck {
        session: SessionId,
        stamp: UTime,
    },
    /// A connection failed; the session continues per its policy.
    Fault {
        session: Option<SessionId>,
        conn: ConnId,
        reason: FaultReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Role {
    Client,
    Server,
}

/// Numbered as the `ringwire_conn_state` probe reports them (7 = closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Banner,
    Hello,
    Auth,
    AuthSign,
    Session,
    Ready,
}

impl Conn {
    fn set_state(&mut self, to: ConnState) {
        let _e = self.span.enter();
        tracing::debug!(
            from = self.state.name(self.role),
            to = to.name(self.role),
            "connection state"
        );
        hooks::ringwire_conn_state(
            self.global_id,
            self.session.map_or(0, |s| s.0),
            self.role as u32,
            self.state as u32,
            to as u32,
        );
        self.state = to;
    }
}

impl ConnState {
    fn name(self, role: Role) -> &'static str {
        match (self, role) {
            (ConnState::Connecting, _) => "CONNECTING",
            (ConnState::Banner, Role::Client) => "BANNER_CONNECTING",
            (ConnState::Banner, Role::Server) => "BANNER_ACCEPTING",
            (ConnState::Hello, Role::Client) => "HELLO_CONNECTING",
            (ConnState::Hello, Role::Server) => "HELLO_ACCEPTING",
            (ConnState::Auth, Role::Client) => "AUTH_CONNECTING",
            (ConnState::Auth, Role::Server) => "AUTH_ACCEPTING",
            (ConnState::AuthSign, Role::Client) => "AUTH_CONNECTING_SIGN",
            (ConnState::AuthSign, Role::Server) => "AUTH_ACCEPTING_SIGN",
            (ConnState::Session, Role::Client) => "SESSION_CONNECTING",
            (ConnState::Session, Role::Server) => "SESSION_ACCEPTING",
            (ConnState::Ready, _) => "READY",
        }
    }
}

/// What made a connection pause at a step; replayed on resume.
#[derive(Debug)]
enum Trigger {
    Start,
    Banner(Banner),
    Frame(Frame),
}

struct Conn {
    /// Process-wide id, as the probes report it.
    global_id: u64,
    role: Role,
    state: ConnState,
    /// `tracing` span of this connection (peer recorded once known).
    span: tracing::Span,
    session: Option<SessionId>,
    /// Banner bytes until the banner is complete, then the frame decoder.
    banner_buf: Vec<u8>,
    decoder: Option<FrameDecoder>,
    tx: TxQueue,
    /// Client: the address dialled. Server: the peer's socket address.
    peer_socket: Option<SocketAddr>,
    peer_type: EntityType,
    /// What the peer says our address is (HELLO).
    learned_addr: Option<EntityAddr>,
    paused: Option<(Step, Trigger)>,
    pending_input: Vec<u8>,
    resume_skip: Option<Step>,
    deadline: Option<Time>,
    last_input: Time,
    next_keepalive: Option<Time>,
    closed: bool,
}

const CONN_CLOSED: u32 = 7;
const SESSION_CLOSED: u32 = 3;

/// Numbered as the `ringwire_session_state` probe reports them (3 = closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    /// Waiting for a connection (dialling, handshaking, or in backoff).
    Connecting,
    Ready,
    /// Faulted with nothing to send; reconnects on the next send (or waits for the peer).
    Standby,
}

struct Session {
    peer_type: EntityType,
    /// Where we reach the peer (what we dialled, or what it told us when it dialled us).
    peer_addrs: EntityAddrVec,
    /// What the peer's SERVER_IDENT said its addresses are (with its real nonce).
    announced_addrs: EntityAddrVec,
    peer_gid: i64,
    policy: Policy,
    state: SessionState,
    conn: Option<ConnId>,
    registered: bool,
    client_cookie: u64,
    server_cookie: u64,
    global_seq: u64,
    connect_seq: u64,
    peer_global_seq: u64,
    in_seq: u64,
    out_seq: u64,
    /// Every message sent and dispatched, for the probes.
    counters: hooks::SessionCounters,
    /// Messages queued so far (the `ringwire_msg_queued` probe samples by it).
    queued: u64,
    /// Messages not yet written; requeued ones keep their original seq (non-zero).
    out_queue: VecDeque<Outgoing>,
    /// Written but not yet acknowledged (lossless only).
    sent: VecDeque<Outgoing>,
    ack_pending: bool,
    ack_queued: bool,
    backoff: Duration,
    reconnect_at: Option<Time>,
    /// Whether the last connection reached READY (then reconnect at once, not after backoff).
    was_ready: bool,
}

/// A message on its way out, with the time the application queued it (for the
/// `ringwire_msg_sent` probe's queued-to-sent latency).
struct Outgoing {
    msg: Message,
    queued_at: Time,
}

impl Session {
    fn set_state(&mut self, id: SessionId, to: SessionState) {
        if self.state != to {
            hooks::ringwire_session_state(
                id.0,
                self.state as u32,
                to as u32,
                self.policy.probe_bits(),
                &self.counters,
            );
            tracing::debug!(
                session = id.0,
                peer = %self.peer_addrs,
                lossy = self.policy.lossy,
                server = self.policy.server,
                from = ?self.state,
                to = ?to,
                "session state"
            );
            self.state = to;
        }
    }

    fn dial_addr(&self) -> Option<(SocketAddr, Fabric)> {
        let a = self.peer_addrs.msgr2()?;
        a.addr.filter(|s| s.port() != 0).map(|s| (s, a.fabric()))
    }

    fn has_pending(&self) -> bool {
        !self.out_queue.is_empty() || !self.sent.is_empty()
    }

    /// Unacked messages go back to the front of the queue with their sequence numbers.
    fn requeue_sent(&mut self) {
        while let Some(m) = self.sent.pop_back() {
            self.out_queue.push_front(m);
        }
    }

    /// Drops requeued messages the peer already has.
    fn discard_requeued_up_to(&mut self, seq: u64) {
        while self
            .out_queue
            .front()
            .is_some_and(|o| o.msg.seq != 0 && o.msg.seq <= seq)
        {
            self.out_queue.pop_front();
        }
    }

    fn trim_sent(&mut self, acked: u64) {
        while self.sent.front().is_some_and(|o| o.msg.seq <= acked) {
            self.sent.pop_front();
        }
    }

    fn reset(&mut self) {
        self.out_queue.clear();
        self.sent.clear();
        self.in_seq = 0;
        self.out_seq = 0;
        self.connect_seq = 0;
        self.client_cookie = 0;
        self.server_cookie = 0;
        self.ack_pending = false;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Reconnect(SessionId),
}

/// splitmix64: cookies and injected failures from a seed, deterministic for simulations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn cookie(&mut self) -> u64 {
        loop {
            let c = self.next();
            if c != 0 {
                return c;
            }
        }
    }
}

/// Result of a step: go on, or stop handling this input (paused or connection gone).
type Flow = Result<(), Halt>;

#[derive(Debug)]
enum Halt {
    Paused,
    Closed,
}

/// One messenger's protocol state. See the module docs.
pub struct Endpoint {
    config: EndpointConfig,
    my_gid: i64,
    conns: IdMap<ConnId, Conn>,
    sessions: IdMap<SessionId, Session>,
    registry: HashMap<EntityAddr, SessionId>,
    next_id: u64,
    global_seq: u64,
    next_global_id: u64,
    rng: Rng,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    io: VecDeque<Io>,
    events: VecDeque<Event>,
    interceptor: Option<Box<dyn Interceptor>>,
    counts: FrameCounts,
    /// A connection handed over while its input was being processed; the rest of that
    /// input joins it before `Io::Migrate` goes out.
    migrating: Option<(ConnId, usize, Handoff)>,
    /// Sessions owed an ACK (see `after_input`).
    ack_due: Vec<SessionId>,
    now: Time,
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Self {
        let my_gid = config.name.id.parse::<i64>().unwrap_or(-1);
        let rng = Rng(config.seed);
        Endpoint {
            config,
            my_gid,
            conns: IdMap::default(),
            sessions: IdMap::default(),
            registry: HashMap::new(),
            next_id: 1,
            global_seq: 0,
            next_global_id: 4096,
            rng,
            timers: BinaryHeap::new(),
            io: VecDeque::new(),
            events: VecDeque::new(),
            interceptor: None,
            counts: FrameCounts::default(),
            migrating: None,
            ack_due: Vec::new(),
            now: Time(0),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Frames sent and received so far, per tag.
    pub fn frame_counts(&self) -> &FrameCounts {
        &self.counts
    }

    pub fn set_interceptor(&mut self, interceptor: Option<Box<dyn Interceptor>>) {
        self.interceptor = interceptor;
    }

    /// Ids are unique in the process (messenger and worker in the top bits: 8 + 8 + 40 bits),
    /// so probes and logs of different workers and messengers never mix them up.
    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        let p = self.config.placement;
        ((p.messenger as u64) << 48) | ((p.index as u64 & 0xff) << 40) | self.next_id
    }

    fn my_race_addr(&self) -> Option<&EntityAddr> {
        self.config.addrs.primary()
    }

    // ---------------------------------------------------------------- application API

    /// A session to `addr` (reused if one exists and the policy registers sessions).
    /// Connects lazily: at once, or on the first send under a standby policy.
    pub fn connect(&mut self, now: Time, addr: EntityAddr, peer_type: EntityType) -> SessionId {
        self.connect_inner(now, addr, peer_type, false)
    }

    /// A new, unregistered session to `addr` even if one exists (Ceph's `anon` connect).
    pub fn connect_anon(
        &mut self,
        now: Time,
        addr: EntityAddr,
        peer_type: EntityType,
    ) -> SessionId {
        self.connect_inner(now, addr, peer_type, true)
    }

    fn connect_inner(
        &mut self,
        now: Time,
        addr: EntityAddr,
        peer_type: EntityType,
        anon: bool,
    ) -> SessionId {
        self.now = now;
        let policy = self.config.policy_for(peer_type);
        if !anon {
            if let Some(&sid) = self.registry.get(&addr) {
                return sid;
            }
        }
        let sid = SessionId(self.alloc_id());
        let registered = !anon && policy.registers();
        self.sessions
            .insert(sid, new_session(peer_type, addr, policy, registered));
        if registered {
            self.registry.insert(addr, sid);
        }
        self.start_connect(sid);
        sid
    }

    /// What the `ringwire_conn_socket` probe reports of `conn`: its session, role | state << 8
    /// | session state << 16 | policy bits << 24, and the session's counters.
    pub fn probe_info(&self, conn: ConnId) -> Option<(u64, u32, Option<hooks::SessionCounters>)> {
        let c = self.conns.get(&conn)?;
        let mut info = c.role as u32 | (c.state as u32) << 8;
        let session = c
            .session
            .and_then(|sid| Some((sid, self.sessions.get(&sid)?)));
        if let Some((sid, s)) = session {
            info |= (s.state as u32) << 16 | s.policy.probe_bits() << 24;
            return Some((sid.0, info, Some(s.counters)));
        }
        Some((0, info, None))
    }

    /// Queues a message. Fails only when the session is closed (lossy and faulted, or marked
    /// down).
    pub fn send(
        &mut self,
        now: Time,
        session: SessionId,
        mut msg: Message,
    ) -> Result<(), Box<Message>> {
        self.now = now;
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(Box::new(msg));
        };
        msg.seq = 0;
        s.queued += 1;
        if hooks::sampled(s.queued, self.config.tuning.probe_sample) {
            hooks::ringwire_msg_queued(session.0, msg.ty as u32, msg.payload_len() as u64);
        }
        s.out_queue.push_back(Outgoing {
            msg,
            queued_at: now,
        });
        match s.state {
            SessionState::Ready => self.flush_session(session),
            SessionState::Standby if !s.policy.server => self.start_connect(session),
            _ => {}
        }
        Ok(())
    }

    /// Sends a KEEPALIVE2 stamped with `now` if the session is ready.
    pub fn keepalive(&mut self, now: Time, session: SessionId) -> bool {
        self.now = now;
        let Some(cid) = self.ready_conn(session) else {
            return false;
        };
        let stamp = UTime::from_nanos(now.0);
        self.send_control(cid, Control::Keepalive2 { stamp });
        true
    }

    /// Closes the session and its connection; no reset event is raised.
    pub fn mark_down(&mut self, now: Time, session: SessionId) {
        self.now = now;
        self.close_session(session);
    }

    pub fn mark_down_all(&mut self, now: Time) {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        for sid in ids {
            self.mark_down(now, sid);
        }
    }

    pub fn is_connected(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.state == SessionState::Ready)
    }

    pub fn is_closed(&self, session: SessionId) -> bool {
        !self.sessions.contains_key(&session)
    }

    pub fn peer_name(&self, session: SessionId) -> Option<EntityName> {
        self.sessions.get(&session).map(peer_name)
    }

    /// (in_seq, out_seq, queued, unacked) of a session, for tests and metrics.
    pub fn session_seqs(&self, session: SessionId) -> Option<(u64, u64, usize, usize)> {
        self.sessions
            .get(&session)
            .map(|s| (s.in_seq, s.out_seq, s.out_queue.len(), s.sent.len()))
    }

    /// Number of open sessions.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Resumes a connection paused by the interceptor.
    pub fn resume(&mut self, now: Time, conn: ConnId) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some((step, trigger)) = c.paused.take() else {
            return;
        };
        c.resume_skip = Some(step);
        let flow = match trigger {
            Trigger::Start => self.start_banner(conn),
            Trigger::Banner(b) => self.on_peer_banner(conn, b),
            Trigger::Frame(f) => self.on_frame(conn, f),
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.resume_skip = None;
        }
        let pending = self
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::take(&mut c.pending_input))
            .unwrap_or_default();
        match flow {
            Ok(()) => self.process_input(conn, &pending),
            Err(_) => self.finish_migration(conn, &pending),
        }
        self.after_input(conn);
    }

    // ---------------------------------------------------------------- transport API

    /// A transport accepted a stream from `peer`.
    pub fn accept(&mut self, now: Time, peer: SocketAddr) -> ConnId {
        self.now = now;
        let cid = ConnId(self.alloc_id());
        self.conns
            .insert(cid, self.new_conn(cid, Role::Server, None, Some(peer)));
        self.arm_conn_timer(cid);
        if self.start_banner(cid).is_ok() {
            self.after_input(cid);
        }
        cid
    }

    /// Takes over a connection another endpoint handed over ([`Io::Migrate`]).
    pub fn adopt(&mut self, now: Time, handoff: Handoff) -> ConnId {
        self.now = now;
        let cid = ConnId(self.alloc_id());
        let mut conn = self.new_conn(cid, Role::Server, None, handoff.peer_socket);
        conn.set_state(ConnState::Session);
        conn.peer_type = handoff.peer_type;
        conn.decoder = Some(FrameDecoder::new(
            self.config.tuning.limits,
            handoff.stream_offset,
        ));
        let unsent = !handoff.tx.is_empty();
        conn.tx = handoff.tx;
        self.conns.insert(cid, conn);
        if unsent {
            self.io.push_back(Io::Transmit { conn: cid });
        }
        self.arm_conn_timer(cid);
        match self.on_frame(cid, handoff.frame) {
            Ok(()) => self.process_input(cid, &handoff.rest),
            Err(_) => self.finish_migration(cid, &handoff.rest),
        }
        self.after_input(cid);
        cid
    }

    /// The stream requested by [`Io::Connect`] is established.
    pub fn on_connected(&mut self, now: Time, conn: ConnId) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state != ConnState::Connecting {
            return;
        }
        c.set_state(ConnState::Banner);
        c.last_input = now;
        if self.start_banner(conn).is_ok() {
            self.after_input(conn);
        }
    }

    /// The stream failed or the peer closed it.
    pub fn on_closed(&mut self, now: Time, conn: ConnId) {
        self.now = now;
        let reason = match self.conns.get(&conn) {
            Some(c) if c.state == ConnState::Connecting => {
                FaultReason::ConnectFailed { errno: None }
            }
            Some(c) if c.state == ConnState::Session && c.role == Role::Client => {
                FaultReason::IdentRefused
            }
            Some(c) => match &c.decoder {
                Some(d) if !d.at_frame_boundary() => d
                    .finish()
                    .map(|_| FaultReason::SocketClosed)
                    .unwrap_or_else(FaultReason::Frame),
                _ => FaultReason::SocketClosed,
            },
            None => return,
        };
        self.fault(conn, reason);
    }

    /// The stream requested by [`Io::Connect`] could not be opened; `errno` is the OS error.
    pub fn on_connect_failed(&mut self, now: Time, conn: ConnId, errno: i32) {
        self.now = now;
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.state == ConnState::Connecting)
        {
            self.fault(conn, FaultReason::ConnectFailed { errno: Some(errno) });
        } else {
            self.on_closed(now, conn);
        }
    }

    /// Bytes received on `conn`.
    pub fn on_input(&mut self, now: Time, conn: ConnId, data: &[u8]) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_input = now;
        if c.paused.is_some() {
            c.pending_input.extend_from_slice(data);
            return;
        }
        if self.inject_failure() {
            self.fault(conn, FaultReason::Injected);
            return;
        }
        self.process_input(conn, data);
        self.after_input(conn);
    }

    /// Lends the buffer of the large segment `conn` is receiving, for a transport to receive
    /// into in place (see [`FrameDecoder::lend_segment`]). None when the next bytes are small
    /// (use [`Endpoint::on_input`]) or the connection is paused.
    pub fn lend_segment(&mut self, conn: ConnId) -> Option<(BytesMut, usize)> {
        let c = self.conns.get_mut(&conn)?;
        if c.paused.is_some() {
            return None;
        }
        c.decoder.as_mut()?.lend_segment()
    }

    /// Gives back a lent segment buffer with `n` more bytes received into it (0: none).
    pub fn return_segment(&mut self, now: Time, conn: ConnId, buf: BytesMut, n: usize) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if n > 0 {
            c.last_input = now;
        }
        let Some(d) = c.decoder.as_mut() else {
            return;
        };
        match d.return_segment(buf, n) {
            Ok(Some(frame)) => {
                if self.on_frame(conn, frame).is_err() {
                    self.finish_migration(conn, &[]);
                }
            }
            Ok(None) => {}
            Err(e) => self.fault(conn, e.into()),
        }
        self.after_input(conn);
    }

    /// The bytes queued for `conn`; write from [`TxQueue::chunks`] and call
    /// [`TxQueue::advance`].
    pub fn tx_queue(&mut self, conn: ConnId) -> Option<&mut TxQueue> {
        self.conns.get_mut(&conn).map(|c| &mut c.tx)
    }

    /// The next I/O request. Pending ACKs are generated once both the I/O and the event
    /// queues are empty, so drain events between calls.
    pub fn poll_io(&mut self) -> Option<Io> {
        if self.io.is_empty() && self.events.is_empty() && !self.ack_due.is_empty() {
            self.flush_acks();
        }
        self.io.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next deadline at which [`Endpoint::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        while let Some(Reverse((t, timer))) = self.timers.peek().cloned() {
            if t > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn(cid) => self.conn_timer(cid),
                Timer::Reconnect(sid) => {
                    let due = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.reconnect_at)
                        .is_some_and(|at| at <= now);
                    if due {
                        self.sessions.get_mut(&sid).expect("checked").reconnect_at = None;
                        self.start_connect(sid);
                    }
                }
            }
        }
    }

    fn conn_timer(&mut self, cid: ConnId) {
        let Some(c) = self.conns.get(&cid) else {
            return;
        };
        let now = self.now;
        if c.state != ConnState::Ready {
            if c.deadline.is_some_and(|d| d <= now) {
                self.fault(cid, FaultReason::HandshakeTimeout);
            } else if let Some(d) = c.deadline {
                self.timers.push(Reverse((d, Timer::Conn(cid))));
            }
            return;
        }
        let idle_at = c.last_input.after(self.config.tuning.idle_timeout);
        if idle_at <= now {
            self.fault(cid, FaultReason::IdleTimeout);
            return;
        }
        let mut next = idle_at;
        if let (Some(due), Some(every)) = (c.next_keepalive, self.config.tuning.keepalive_interval)
        {
            let due = if due <= now {
                let stamp = UTime::from_nanos(now.0);
                self.send_control(cid, Control::Keepalive2 { stamp });
                let due = now.after(every);
                self.conns.get_mut(&cid).expect("checked").next_keepalive = Some(due);
                due
            } else {
                due
            };
            next = next.min(due);
        }
        self.timers.push(Reverse((next, Timer::Conn(cid))));
    }

    fn arm_conn_timer(&mut self, cid: ConnId) {
        let at = self.now.after(self.config.tuning.handshake_timeout);
        if let Some(c) = self.conns.get_mut(&cid) {
            c.deadline = Some(at);
        }
        self.timers.push(Reverse((at, Timer::Conn(cid))));
    }

    fn inject_failure(&mut self) -> bool {
        let n = self.config.tuning.inject_socket_failures;
        n > 0 && self.rng.next() % n as u64 == 0
    }

    // ---------------------------------------------------------------- internals: plumbing

    fn new_conn(
        &self,
        id: ConnId,
        role: Role,
        session: Option<SessionId>,
        peer_socket: Option<SocketAddr>,
    ) -> Conn {
        let span = tracing::debug_span!(
            "conn",
            id = id.0,
            role = ?role,
            socket = ?peer_socket,
            peer = tracing::field::Empty,
        );
        Conn {
            global_id: id.0,
            span,
            role,
            state: match role {
                Role::Client => ConnState::Connecting,
                Role::Server => ConnState::Banner,
            },
            session,
            banner_buf: Vec::with_capacity(BANNER_LEN),
            decoder: None,
            tx: TxQueue::default(),
            peer_socket,
            peer_type: EntityType::ANY,
            learned_addr: None,
            paused: None,
            pending_input: Vec::new(),
            resume_skip: None,
            deadline: None,
            last_input: self.now,
            next_keepalive: None,
            closed: false,
        }
    }

    /// Asks the interceptor about `step`. `trigger` rebuilds what to replay on resume; steps
    /// reached after a state change have none, and there a pause acts as continue.
    fn intercept(
        &mut self,
        cid: ConnId,
        step: Step,
        trigger: impl FnOnce() -> Option<Trigger>,
    ) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        if c.resume_skip == Some(step) {
            c.resume_skip = None;
            return Ok(());
        }
        let Some(i) = self.interceptor.as_mut() else {
            return Ok(());
        };
        match i.intercept(cid, step) {
            Action::Continue => Ok(()),
            Action::Fail => {
                self.fault(cid, FaultReason::Intercepted(step));
                Err(Halt::Closed)
            }
            Action::Stop => {
                match self.conns.get(&cid).and_then(|c| c.session) {
                    Some(sid) => self.close_session(sid),
                    None => self.drop_conn(cid, false),
                }
                Err(Halt::Closed)
            }
            Action::Pause => match trigger() {
                Some(t) => {
                    let c = self.conns.get_mut(&cid).expect("checked above");
                    c.paused = Some((step, t));
                    Err(Halt::Paused)
                }
                None => Ok(()),
            },
        }
    }

    fn queue_tx(&mut self, cid: ConnId, f: impl FnOnce(&mut TxQueue)) {
        let Some(c) = self.conns.get_mut(&cid) else {
            return;
        };
        let was_empty = c.tx.is_empty();
        f(&mut c.tx);
        if was_empty && !c.tx.is_empty() {
            self.io.push_back(Io::Transmit { conn: cid });
        }
    }

    fn send_control(&mut self, cid: ConnId, control: Control) {
        self.counts.sent[control.tag() as usize] += 1;
        self.queue_tx(cid, |tx| {
            control.encode_frame(tx);
        });
    }

    fn drop_conn(&mut self, cid: ConnId, flush: bool) {
        if let Some(mut c) = self.conns.remove(&cid) {
            hooks::ringwire_conn_state(
                cid.0,
                c.session.map_or(0, |s| s.0),
                c.role as u32,
                c.state as u32,
                CONN_CLOSED,
            );
            if !c.closed {
                c.closed = true;
                let remaining = if flush {
                    c.tx.chunks().cloned().collect()
                } else {
                    Vec::new()
                };
                self.io.push_back(Io::Close {
                    conn: cid,
                    remaining,
                });
            }
            if let Some(sid) = c.session {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if s.conn == Some(cid) {
                        s.conn = None;
                    }
                }
            }
        }
    }

    fn ready_conn(&self, sid: SessionId) -> Option<ConnId> {
        let s = self.sessions.get(&sid)?;
        (s.state == SessionState::Ready).then_some(s.conn).flatten()
    }

    fn close_session(&mut self, sid: SessionId) {
        // Removed outright: a closed session's handle only ever answers "closed".
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        hooks::ringwire_session_state(
            sid.0,
            s.state as u32,
            SESSION_CLOSED,
            s.policy.probe_bits(),
            &s.counters,
        );
        let conn = s.conn.take();
        if s.registered {
            let key = s.peer_addrs.primary().copied();
            if let Some(k) = key {
                if self.registry.get(&k) == Some(&sid) {
                    self.registry.remove(&k);
                }
            }
        }
        if let Some(cid) = conn {
            self.drop_conn(cid, true);
        }
    }

    // ---------------------------------------------------------------- internals: input

    fn process_input(&mut self, cid: ConnId, mut data: &[u8]) {
        let span = match self.conns.get(&cid) {
            Some(c) => c.span.clone(),
            None => return,
        };
        let _e = span.enter();
        while !data.is_empty() {
            let Some(c) = self.conns.get_mut(&cid) else {
                return;
            };
            if c.paused.is_some() {
                c.pending_input.extend_from_slice(data);
                return;
            }
            if c.decoder.is_none() {
                let need = banner_need(&c.banner_buf);
                let n = need.min(data.len());
                c.banner_buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                match parse_banner(&c.banner_buf) {
                    Ok(None) => continue,
                    Ok(Some(banner)) => {
                        let consumed = c.banner_buf.len() as u64;
                        c.decoder = Some(FrameDecoder::new(self.config.tuning.limits, consumed));
                        if self.on_peer_banner(cid, banner).is_err() {
                            self.stash_rest(cid, data);
                            return;
                        }
                    }
                    Err(e) => return self.fault(cid, e.into()),
                }
                continue;
            }
            let d = c.decoder.as_mut().expect("checked");
            match d.feed(&mut data) {
                Ok(Some(frame)) => {
                    if self.on_frame(cid, frame).is_err() {
                        self.stash_rest(cid, data);
                        self.finish_migration(cid, data);
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => return self.fault(cid, e.into()),
            }
        }
    }

    fn stash_rest(&mut self, cid: ConnId, data: &[u8]) {
        if let Some(c) = self.conns.get_mut(&cid) {
            if c.paused.is_some() {
                c.pending_input.extend_from_slice(data);
            }
        }
    }

    /// After a batch of input: a standalone ACK if messages arrived and nothing carried it.
    fn after_input(&mut self, cid: ConnId) {
        let Some(sid) = self.conns.get(&cid).and_then(|c| c.session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // The ACK waits until the caller has drained the events: a reply to what just arrived
        // carries the ack for free, and only sessions left without one get an ACK frame.
        if s.ack_pending && !s.ack_queued && !s.policy.lossy {
            s.ack_queued = true;
            self.ack_due.push(sid);
        }
    }

    /// ACK frames for sessions that received messages and sent nothing back since.
    fn flush_acks(&mut self) {
        for sid in std::mem::take(&mut self.ack_due) {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            s.ack_queued = false;
            if !s.ack_pending || s.state != SessionState::Ready {
                continue;
            }
            let Some(cid) = s.conn else {
                continue;
            };
            s.ack_pending = false;
            let seq = s.in_seq;
            self.send_control(cid, Control::Ack { seq });
        }
    }

    fn unexpected(&mut self, cid: ConnId, tag: Tag) -> Flow {
        let c = self.conns.get(&cid).ok_or(Halt::Closed)?;
        let state = c.state.name(c.role);
        self.fault(cid, FaultReason::UnexpectedFrame { state, tag });
        Err(Halt::Closed)
    }

    fn fail(&mut self, cid: ConnId, reason: FaultReason) -> Flow {
        self.fault(cid, reason);
        Err(Halt::Closed)
    }

    // ---------------------------------------------------------------- handshake

    fn start_banner(&mut self, cid: ConnId) -> Flow {
        let role = self.conns.get(&cid).ok_or(Halt::Closed)?.role;
        let (start, sent) = match role {
            Role::Client => (
                Step::StartClientBannerExchange,
                Step::BannerExchangeBannerConnecting,
            ),
            Role::Server => (Step::StartServerBannerExchange, Step::BannerExchange),
        };
        self.intercept(cid, start, || Some(Trigger::Start))?;
        let banner = Banner::RINGWIRE.encode();
        self.queue_tx(cid, |tx| tx.push_small(&banner));
        self.intercept(cid, sent, || None)
    }

    fn on_peer_banner(&mut self, cid: ConnId, banner: Banner) -> Flow {
        let role = self.conns.get(&cid).ok_or(Halt::Closed)?.role;
        let step = match role {
            Role::Client => Step::HandlePeerBannerBannerConnecting,
            Role::Server => Step::HandlePeerBanner,
        };
        self.intercept(cid, step, || Some(Trigger::Banner(banner)))?;
        if let Err(e) = Banner::RINGWIRE.negotiate(&banner) {
            return self.fail(cid, e.into());
        }
        let c = self.conns.get_mut(&cid).expect("checked");
        c.set_state(ConnState::Hello);
        let hello = match c.role {
            Role::Client => {
                let sid = c.session.expect("client conns belong to a session");
                let target =
                    self.sessions[&sid]
                        .peer_addrs
                        .primary()
                        .copied()
                        .unwrap_or(EntityAddr {
                            ty: AddrType::None,
                            nonce: 0,
                            addr: None,
                        });
                Control::Hello {
                    entity_type: self.config.name.ty,
                    peer_addr: target,
                }
            }
            Role::Server => Control::Hello {
                entity_type: self.config.name.ty,
                peer_addr: EntityAddr {
                    ty: AddrType::Msgr2,
                    nonce: 0,
                    addr: c.peer_socket,
                },
            },
        };
        self.send_control(cid, hello);
        Ok(())
    }

    fn on_frame(&mut self, cid: ConnId, frame: Frame) -> Flow {
        let tag = frame.tag();
        if self
            .conns
            .get(&cid)
            .is_some_and(|c| c.resume_skip.is_none())
        {
            self.counts.received[tag as usize] += 1;
        }
        if tag == Tag::Message {
            return self.on_message(cid, frame);
        }
        let control = match Control::decode_frame(tag, frame.payload()) {
            Ok(c) => c,
            Err(e) => return self.fail(cid, e.into()),
        };
        let c = self.conns.get(&cid).ok_or(Halt::Closed)?;
        let (role, state, sid) = (c.role, c.state, c.session);
        match (role, state, control) {
            (
                _,
                ConnState::Hello,
                Control::Hello {
                    entity_type,
                    peer_addr,
                },
            ) => self.on_hello(cid, frame, entity_type, peer_addr),
            (
                Role::Client,
                ConnState::Auth,
                Control::AuthBadMethod {
                    allowed_methods, ..
                },
            ) => {
                let reason = FaultReason::AuthMethodRefused {
                    allowed: allowed_methods,
                };
                if let Some(session) = sid {
                    self.events.push_back(Event::Refused {
                        session,
                        reason: reason.clone(),
                    });
                }
                self.fail(cid, reason)
            }
            (Role::Client, ConnState::Auth, Control::AuthReplyMore { .. }) => {
                // Auth none never needs more rounds; a peer asking for them is confused.
                self.unexpected(cid, tag)
            }
            (Role::Client, ConnState::Auth, Control::AuthDone { con_mode, .. }) => {
                if con_mode != CON_MODE_CRC {
                    return self.fail(cid, FaultReason::UnsupportedConMode(con_mode));
                }
                self.conns
                    .get_mut(&cid)
                    .expect("checked")
                    .set_state(ConnState::AuthSign);
                self.send_control(cid, Control::AuthSignature { sha256: [0; 32] });
                Ok(())
            }
            (Role::Client, ConnState::AuthSign, Control::AuthSignature { sha256 }) => {
                if sha256 != [0; 32] {
                    return self.fail(cid, FaultReason::BadSignature);
                }
                self.send_client_ident(cid, frame)
            }
            (
                Role::Server,
                ConnState::Auth,
                Control::AuthRequest {
                    method,
                    preferred_modes,
                    auth_payload,
                },
            ) => self.on_auth_request(cid, method, &preferred_modes, &auth_payload),
            (Role::Server, ConnState::AuthSign, Control::AuthSignature { sha256 }) => {
                self.intercept(cid, Step::HandleAuthRequestAcceptingSign, || {
                    Some(Trigger::Frame(frame))
                })?;
                if sha256 != [0; 32] {
                    return self.fail(cid, FaultReason::BadSignature);
                }
                self.conns
                    .get_mut(&cid)
                    .expect("checked")
                    .set_state(ConnState::Session);
                Ok(())
            }
            (Role::Server, ConnState::Session, Control::ClientIdent(ci)) => {
                let lossy = ci.flags & IDENT_FLAG_LOSSY != 0;
                let registers =
                    !lossy || self.config.policy_for(c.peer_type).register_lossy_clients;
                match ci.addrs.primary().copied() {
                    Some(key) if registers && self.owner(&key) != self.config.placement.index => {
                        self.migrate(cid, key, frame)
                    }
                    _ => self.on_client_ident(cid, frame, ci),
                }
            }
            (Role::Server, ConnState::Session, Control::SessionReconnect(r)) => {
                match r.addrs.primary().copied() {
                    Some(key) if self.owner(&key) != self.config.placement.index => {
                        self.migrate(cid, key, frame)
                    }
                    _ => self.on_reconnect(cid, frame, r),
                }
            }
            (Role::Client, ConnState::Session, control) => {
                self.on_session_reply(cid, frame, control)
            }
            (_, ConnState::Ready, Control::Keepalive2 { stamp }) => {
                self.send_control(cid, Control::Keepalive2Ack { stamp });
                Ok(())
            }
            (_, ConnState::Ready, Control::Keepalive2Ack { stamp }) => {
                if let Some(session) = self.conns[&cid].session {
                    self.events
                        .push_back(Event::KeepaliveAck { session, stamp });
                }
                Ok(())
            }
            (_, ConnState::Ready, Control::Ack { seq }) => {
                if let Some(s) = self.conn_session_mut(cid) {
                    s.trim_sent(seq);
                }
                Ok(())
            }
            _ => self.unexpected(cid, tag),
        }
    }

    fn owner(&self, key: &EntityAddr) -> usize {
        owner_of(key, self.config.placement.count)
    }

    fn migrate(&mut self, cid: ConnId, key: EntityAddr, frame: Frame) -> Flow {
        let c = self.conns.remove(&cid).ok_or(Halt::Closed)?;
        let stream_offset = c.decoder.as_ref().map_or(0, |d| d.frame_offset());
        let tx = c.tx;
        let to = self.owner(&key);
        let handoff = Handoff {
            peer_socket: c.peer_socket,
            peer_type: c.peer_type,
            frame,
            rest: Vec::new(),
            stream_offset,
            tx,
        };
        self.migrating = Some((cid, to, handoff));
        Err(Halt::Closed)
    }

    /// Sends a connection handed over during input processing on its way, with the input
    /// that followed its ident frame.
    fn finish_migration(&mut self, cid: ConnId, rest: &[u8]) {
        if let Some((mcid, to, mut handoff)) = self.migrating.take() {
            if mcid == cid {
                handoff.rest.extend_from_slice(rest);
                self.io.push_back(Io::Migrate {
                    conn: cid,
                    to,
                    handoff: Box::new(handoff),
                });
            } else {
                self.migrating = Some((mcid, to, handoff));
            }
        }
    }

    fn conn_session_mut(&mut self, cid: ConnId) -> Option<&mut Session> {
        let sid = self.conns.get(&cid)?.session?;
        self.sessions.get_mut(&sid)
    }

    fn on_hello(
        &mut self,
        cid: ConnId,
        frame: Frame,
        peer_type: EntityType,
        peer_addr: EntityAddr,
    ) -> Flow {
        let role = self.conns[&cid].role;
        let step = match role {
            Role::Client => Step::HandlePeerBannerPayloadHelloConnecting,
            Role::Server => Step::HandlePeerBannerPayload,
        };
        self.intercept(cid, step, || Some(Trigger::Frame(frame)))?;
        let c = self.conns.get_mut(&cid).expect("checked");
        c.peer_type = peer_type;
        c.span.record("peer", tracing::field::display(peer_type));
        match role {
            Role::Client => {
                let sid = c.session.expect("client conns belong to a session");
                let s = self
                    .sessions
                    .get_mut(&sid)
                    .expect("client conns belong to a session");
                let expected = s.peer_type;
                if expected == EntityType::ANY {
                    // Learned: the session is with this type of peer from now on.
                    s.peer_type = peer_type;
                } else if expected != peer_type {
                    return self.fail(
                        cid,
                        FaultReason::WrongPeerType {
                            expected,
                            got: peer_type,
                        },
                    );
                }
                c.learned_addr = Some(peer_addr);
                c.set_state(ConnState::Auth);
                self.intercept(cid, Step::SendAuthRequest, || None)?;
                let payload = self.auth_payload(peer_type);
                self.send_control(
                    cid,
                    Control::AuthRequest {
                        method: AUTH_METHOD_NONE,
                        preferred_modes: vec![CON_MODE_CRC],
                        auth_payload: payload,
                    },
                );
            }
            Role::Server => c.set_state(ConnState::Auth),
        }
        Ok(())
    }

    fn auth_payload(&self, peer_type: EntityType) -> Bytes {
        let name = self.config.name.clone();
        let p = if peer_type == EntityType::MON && name.ty != EntityType::MON {
            AuthNonePayload::MonClient { name, global_id: 0 }
        } else {
            AuthNonePayload::Authorizer {
                struct_v: 1,
                name,
                global_id: 0,
            }
        };
        p.encode()
    }

    fn on_auth_request(&mut self, cid: ConnId, method: u32, modes: &[u32], payload: &[u8]) -> Flow {
        if method != AUTH_METHOD_NONE || !modes.contains(&CON_MODE_CRC) {
            // Ceph's answer to a method it does not offer; the client may try another.
            self.send_control(
                cid,
                Control::AuthBadMethod {
                    method,
                    result: -95,
                    allowed_methods: vec![AUTH_METHOD_NONE],
                    allowed_modes: vec![CON_MODE_CRC],
                },
            );
            return Ok(());
        }
        let requested = AuthNonePayload::decode(payload)
            .map(|p| p.global_id())
            .unwrap_or(0);
        let global_id = if requested != 0 {
            requested
        } else {
            self.next_global_id += 1;
            self.next_global_id
        };
        self.conns
            .get_mut(&cid)
            .expect("checked")
            .set_state(ConnState::AuthSign);
        self.send_control(
            cid,
            Control::AuthDone {
                global_id,
                con_mode: CON_MODE_CRC,
                auth_payload: Bytes::new(),
            },
        );
        self.send_control(cid, Control::AuthSignature { sha256: [0; 32] });
        Ok(())
    }

    /// The placement hash of the address this endpoint will identify itself with on a client
    /// connection whose local IP is `local_ip` (what the server will see): a transport that
    /// must place a connection before the handshake (RDMA) tells the server this.
    pub fn placement_hint(&self, local_ip: std::net::IpAddr) -> u64 {
        let key = match self.config.addrs.primary() {
            Some(a) => *a,
            None => EntityAddr {
                ty: AddrType::Any,
                nonce: self.config.nonce,
                addr: Some(SocketAddr::new(local_ip, 0)),
            },
        };
        placement_hash(&key)
    }

    fn my_ident_addrs(&self, cid: ConnId) -> EntityAddrVec {
        if !self.config.addrs.0.is_empty() {
            return self.config.addrs.clone();
        }
        // Unbound: the address the peer saw, port 0, type ANY, as Ceph clients send.
        let learned = self.conns.get(&cid).and_then(|c| c.learned_addr);
        let ip = learned
            .and_then(|a| a.addr)
            .map(|a| SocketAddr::new(a.ip(), 0));
        EntityAddrVec(vec![EntityAddr {
            ty: AddrType::Any,
            nonce: self.config.nonce,
            addr: ip,
        }])
    }

    fn send_client_ident(&mut self, cid: ConnId, frame: Frame) -> Flow {
        let sid = self.conns[&cid]
            .session
            .expect("client conns belong to a session");
        let reconnecting = self.sessions[&sid].server_cookie != 0;
        let step = if reconnecting {
            Step::SendReconnect
        } else {
            Step::SendClientIdentity
        };
        self.intercept(cid, step, || Some(Trigger::Frame(frame)))?;
        self.conns
            .get_mut(&cid)
            .expect("checked")
            .set_state(ConnState::Session);
        if reconnecting {
            self.send_reconnect(cid, sid);
        } else {
            self.send_client_ident_frame(cid, sid);
        }
        Ok(())
    }

    fn send_client_ident_frame(&mut self, cid: ConnId, sid: SessionId) {
        let addrs = self.my_ident_addrs(cid);
        let gid = self.my_gid;
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if !s.policy.lossy && s.client_cookie == 0 {
            s.client_cookie = self.rng.cookie();
        }
        let ci = ClientIdent {
            addrs,
            target_addr: s.peer_addrs.primary().copied().expect("dialled address"),
            gid,
            global_seq: s.global_seq,
            features_supported: s.policy.features_supported,
            features_required: s.policy.required_on_wire(),
            flags: if s.policy.lossy { IDENT_FLAG_LOSSY } else { 0 },
            client_cookie: s.client_cookie,
        };
        self.send_control(cid, Control::ClientIdent(ci));
    }

    fn send_reconnect(&mut self, cid: ConnId, sid: SessionId) {
        let addrs = self.my_ident_addrs(cid);
        let s = &self.sessions[&sid];
        let r = Reconnect {
            addrs,
            client_cookie: s.client_cookie,
            server_cookie: s.server_cookie,
            global_seq: s.global_seq,
            connect_seq: s.connect_seq,
            msg_seq: s.in_seq,
        };
        self.send_control(cid, Control::SessionReconnect(r));
    }

    /// Client side: the server's answer to CLIENT_IDENT or SESSION_RECONNECT.
    fn on_session_reply(&mut self, cid: ConnId, frame: Frame, control: Control) -> Flow {
        let sid = self.conns[&cid]
            .session
            .expect("client conns belong to a session");
        if let Some(outcome) = hooks::reconnect_outcome(&control) {
            let cs = self.sessions.get(&sid).map_or(0, |s| s.connect_seq);
            hooks::ringwire_reconnect(sid.0, cs, outcome);
        }
        match control {
            Control::ServerIdent(si) => {
                let s = self.sessions.get_mut(&sid).expect("session exists");
                let missing = s.policy.required_on_wire() & !si.features_supported;
                if missing != 0 {
                    return self.fail(cid, FaultReason::PeerMissingFeatures(missing));
                }
                s.server_cookie = si.server_cookie;
                s.peer_global_seq = si.global_seq;
                s.peer_gid = si.gid;
                s.connect_seq = 0;
                if !si.addrs.0.is_empty() && s.peer_addrs.msgr2().is_none() {
                    s.peer_addrs = si.addrs.clone();
                }
                s.announced_addrs = si.addrs;
                self.become_ready(cid, sid)
            }
            Control::SessionReconnectOk { msg_seq } => {
                let s = self.sessions.get_mut(&sid).expect("session exists");
                s.discard_requeued_up_to(msg_seq);
                self.become_ready(cid, sid)
            }
            Control::IdentMissingFeatures { features } => {
                let reason = FaultReason::MissingFeatures(features);
                self.events.push_back(Event::Refused {
                    session: sid,
                    reason: reason.clone(),
                });
                self.fail(cid, reason)
            }
            Control::SessionRetry { connect_seq } => {
                self.intercept(cid, Step::SessionRetry, || Some(Trigger::Frame(frame)))?;
                let s = self.sessions.get_mut(&sid).expect("session exists");
                s.connect_seq = connect_seq + 1;
                self.send_reconnect(cid, sid);
                Ok(())
            }
            Control::SessionRetryGlobal { global_seq } => {
                self.intercept(cid, Step::SessionRetry, || Some(Trigger::Frame(frame)))?;
                self.global_seq = self.global_seq.max(global_seq) + 1;
                let gs = self.global_seq;
                self.sessions
                    .get_mut(&sid)
                    .expect("session exists")
                    .global_seq = gs;
                self.send_reconnect(cid, sid);
                Ok(())
            }
            Control::SessionReset { full } => {
                let s = self.sessions.get_mut(&sid).expect("session exists");
                if full {
                    s.reset();
                    self.events.push_back(Event::RemoteReset { session: sid });
                } else {
                    s.server_cookie = 0;
                    s.connect_seq = 0;
                    s.in_seq = 0;
                }
                // Straight on to CLIENT_IDENT on the same connection.
                self.send_client_ident_frame(cid, sid);
                Ok(())
            }
            Control::Wait => self.fail(cid, FaultReason::Wait),
            other => self.unexpected(cid, other.tag()),
        }
    }

    /// Server side: a peer identified itself with CLIENT_IDENT.
    fn on_client_ident(&mut self, cid: ConnId, frame: Frame, ci: ClientIdent) -> Flow {
        if ci.addrs.0.is_empty() {
            return self.fail(cid, FaultReason::BadIdent("empty address vector"));
        }
        if !self.is_my_addr(&ci.target_addr) {
            let c = &self.conns[&cid];
            c.span.in_scope(|| {
                tracing::warn!(
                    peer = %ci.addrs,
                    target = %ci.target_addr,
                    ours = %self.config.addrs,
                    "refusing a peer that dialled an address that is not ours (wrong nonce?)"
                )
            });
            return self.fail(cid, FaultReason::BadIdent("target address is not ours"));
        }
        let peer_type = self.conns[&cid].peer_type;
        let policy = self.config.policy_for(peer_type);
        let missing = policy.required_on_wire() & !ci.features_supported;
        if missing != 0 {
            self.send_control(cid, Control::IdentMissingFeatures { features: missing });
            self.drop_conn(cid, true);
            return Err(Halt::Closed);
        }
        let lossy_peer = ci.flags & IDENT_FLAG_LOSSY != 0;
        let registers = !lossy_peer || policy.register_lossy_clients;
        let key = ci.addrs.primary().copied().expect("non-empty");
        let existing = if registers {
            self.registry.get(&key).copied()
        } else {
            None
        };
        let Some(eid) = existing.filter(|e| self.sessions.contains_key(e)) else {
            return self.accept_new_session(cid, frame, ci, policy, registers);
        };
        let my_addr = self.my_race_addr().copied();
        let e = self.sessions.get_mut(&eid).expect("registered");
        if e.peer_global_seq > ci.global_seq {
            return self.fail(cid, FaultReason::Stale);
        }
        if e.policy.lossy {
            // A lossy session is never resumed: the old one ends, a new one starts.
            self.events.push_back(Event::Reset {
                session: eid,
                reason: FaultReason::Replaced,
            });
            self.close_session(eid);
            return self.accept_new_session(cid, frame, ci, policy, registers);
        }
        let peer_restarted =
            e.client_cookie != 0 && e.server_cookie != 0 && e.client_cookie != ci.client_cookie;
        if peer_restarted {
            if e.policy.resetcheck {
                e.reset();
                self.events.push_back(Event::RemoteReset { session: eid });
            }
        } else if e.client_cookie != ci.client_cookie
            && !matches!(e.state, SessionState::Ready | SessionState::Standby)
        {
            // Both sides are connecting: the connection from the lower address wins.
            let incoming_wins = e.policy.server || my_addr.is_none_or(|mine| key < mine);
            if !incoming_wins {
                self.send_control(cid, Control::Wait);
                self.drop_conn(cid, true);
                return Err(Halt::Closed);
            }
        }
        self.intercept(cid, Step::SendServerIdentity, || {
            Some(Trigger::Frame(frame))
        })?;
        let e = self.sessions.get_mut(&eid).expect("registered");
        e.client_cookie = ci.client_cookie;
        e.peer_global_seq = ci.global_seq;
        e.peer_gid = ci.gid;
        e.connect_seq = 0;
        e.peer_addrs = ci.addrs.clone();
        self.take_over(eid, cid);
        self.send_server_ident(cid, eid);
        self.become_ready(cid, eid)
    }

    fn accept_new_session(
        &mut self,
        cid: ConnId,
        frame: Frame,
        ci: ClientIdent,
        policy: Policy,
        registers: bool,
    ) -> Flow {
        self.intercept(cid, Step::SendServerIdentity, || {
            Some(Trigger::Frame(frame))
        })?;
        let peer_type = self.conns[&cid].peer_type;
        let key = ci.addrs.primary().copied().expect("non-empty");
        let sid = SessionId(self.alloc_id());
        let mut s = new_session(peer_type, key, policy, registers);
        s.peer_addrs = ci.addrs;
        s.client_cookie = ci.client_cookie;
        s.peer_global_seq = ci.global_seq;
        s.peer_gid = ci.gid;
        s.conn = Some(cid);
        self.sessions.insert(sid, s);
        if registers {
            self.registry.insert(key, sid);
        }
        self.conns.get_mut(&cid).expect("checked").session = Some(sid);
        self.send_server_ident(cid, sid);
        self.become_ready(cid, sid)
    }

    fn send_server_ident(&mut self, cid: ConnId, sid: SessionId) {
        self.global_seq += 1;
        let global_seq = self.global_seq;
        let addrs = self.config.addrs.clone();
        let gid = self.my_gid;
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if !s.policy.lossy {
            s.server_cookie = self.rng.cookie();
        }
        let si = ServerIdent {
            addrs,
            gid,
            global_seq,
            features_supported: s.policy.features_supported,
            features_required: s.policy.required_on_wire(),
            flags: if s.policy.lossy { IDENT_FLAG_LOSSY } else { 0 },
            server_cookie: s.server_cookie,
        };
        self.send_control(cid, Control::ServerIdent(si));
    }

    /// Server side: SESSION_RECONNECT (msgr2.md §1.9, checked in Ceph's order).
    fn on_reconnect(&mut self, cid: ConnId, frame: Frame, r: Reconnect) -> Flow {
        let Some(key) = r.addrs.primary().copied() else {
            return self.fail(cid, FaultReason::BadIdent("empty address vector"));
        };
        let existing = self
            .registry
            .get(&key)
            .copied()
            .filter(|e| self.sessions.contains_key(e));
        let Some(eid) = existing else {
            self.send_control(cid, Control::SessionReset { full: true });
            return Ok(());
        };
        let my_addr = self.my_race_addr().copied();
        let e = &self.sessions[&eid];
        let reply = if e.client_cookie != r.client_cookie {
            Some(Control::SessionReset {
                full: e.policy.resetcheck,
            })
        } else if e.server_cookie == 0 {
            Some(Control::SessionReset { full: false })
        } else if e.peer_global_seq > r.global_seq {
            Some(Control::SessionRetryGlobal {
                global_seq: e.peer_global_seq,
            })
        } else if e.connect_seq > r.connect_seq {
            Some(Control::SessionRetry {
                connect_seq: e.connect_seq,
            })
        } else if e.connect_seq == r.connect_seq
            && !e.policy.server
            && my_addr.is_some_and(|mine| key > mine)
        {
            Some(Control::Wait)
        } else {
            None
        };
        let outcome = reply
            .as_ref()
            .map_or(Some(hooks::RECONNECT_OK), hooks::reconnect_outcome);
        hooks::ringwire_reconnect(eid.0, r.connect_seq, outcome.unwrap_or(0));
        if let Some(reply) = reply {
            // A reset makes the client send CLIENT_IDENT next, where a restarted peer is
            // detected and the old session reset (if resetcheck).
            let wait = reply == Control::Wait;
            self.send_control(cid, reply);
            if wait {
                self.drop_conn(cid, true);
                return Err(Halt::Closed);
            }
            return Ok(());
        }
        self.intercept(cid, Step::SendReconnectOk, || Some(Trigger::Frame(frame)))?;
        let e = self.sessions.get_mut(&eid).expect("exists");
        e.connect_seq = r.connect_seq;
        e.peer_global_seq = r.global_seq;
        self.take_over(eid, cid);
        let e = self.sessions.get_mut(&eid).expect("exists");
        e.discard_requeued_up_to(r.msg_seq);
        let in_seq = e.in_seq;
        self.send_control(cid, Control::SessionReconnectOk { msg_seq: in_seq });
        self.become_ready(cid, eid)
    }

    /// The session `sid` moves onto connection `cid`; its previous connection (if any) is
    /// closed and its unacked messages are requeued.
    fn take_over(&mut self, sid: SessionId, cid: ConnId) {
        let s = self.sessions.get_mut(&sid).expect("exists");
        let old = s.conn.replace(cid);
        s.requeue_sent();
        s.reconnect_at = None;
        self.conns.get_mut(&cid).expect("exists").session = Some(sid);
        if let Some(old) = old.filter(|o| *o != cid) {
            self.drop_conn(old, false);
        }
    }

    fn become_ready(&mut self, cid: ConnId, sid: SessionId) -> Flow {
        self.intercept(cid, Step::Ready, || None)?;
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        c.set_state(ConnState::Ready);
        c.deadline = None;
        let role = c.role;
        let mut next = self.now.after(self.config.tuning.idle_timeout);
        if let Some(every) = self.config.tuning.keepalive_interval {
            let due = self.now.after(every);
            c.next_keepalive = Some(due);
            next = next.min(due);
        }
        self.timers.push(Reverse((next, Timer::Conn(cid))));
        let s = self.sessions.get_mut(&sid).expect("exists");
        s.set_state(sid, SessionState::Ready);
        s.was_ready = true;
        s.backoff = Duration::ZERO;
        s.conn = Some(cid);
        let peer = peer_name(s);
        self.events.push_back(match role {
            Role::Client => Event::Connected {
                session: sid,
                peer,
                addrs: s.announced_addrs.clone(),
            },
            Role::Server => Event::Accepted {
                session: sid,
                peer,
                addrs: s.peer_addrs.clone(),
            },
        });
        self.flush_session(sid);
        Ok(())
    }

    /// Whether a peer dialling `target` meant us. A nonce of 0 names no instance (the peer
    /// knows only IP and port), so it reaches whichever one listens there; Ceph daemons always
    /// name the nonce from their maps, so this changes nothing between them.
    fn is_my_addr(&self, target: &EntityAddr) -> bool {
        self.config.addrs.0.iter().any(|mine| {
            mine.ty == target.ty
                && (mine.nonce == target.nonce || target.nonce == 0)
                && match (mine.addr, target.addr) {
                    (Some(m), Some(t)) => {
                        m.port() == t.port() && (m.ip() == t.ip() || m.ip().is_unspecified())
                    }
                    _ => false,
                }
        })
    }

    // ---------------------------------------------------------------- sessions: data path

    fn flush_session(&mut self, sid: SessionId) {
        let Some(cid) = self.ready_conn(sid) else {
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("exists");
        let c = self.conns.get_mut(&cid).expect("ready conn exists");
        let was_empty = c.tx.is_empty();
        while let Some(mut out) = s.out_queue.pop_front() {
            let m = &mut out.msg;
            if m.seq == 0 {
                s.out_seq += 1;
                m.seq = s.out_seq;
            }
            m.encode_frame(&mut c.tx, m.seq, s.in_seq);
            let len = m.payload_len() as u64;
            s.counters.msgs_out += 1;
            s.counters.bytes_out += len;
            if hooks::sampled(m.seq, self.config.tuning.probe_sample) {
                let queued_ns = self.now.0.saturating_sub(out.queued_at.0);
                hooks::ringwire_msg_sent(sid.0, m.seq, m.ty as u32, len, queued_ns);
            }
            self.counts.sent[Tag::Message as usize] += 1;
            s.ack_pending = false;
            if !s.policy.lossy {
                s.sent.push_back(out);
            }
        }
        if was_empty && !c.tx.is_empty() {
            self.io.push_back(Io::Transmit { conn: cid });
        }
    }

    fn on_message(&mut self, cid: ConnId, frame: Frame) -> Flow {
        let c = self.conns.get(&cid).ok_or(Halt::Closed)?;
        if c.state != ConnState::Ready {
            return self.unexpected(cid, Tag::Message);
        }
        self.intercept(cid, Step::HandleMessage, || {
            Some(Trigger::Frame(frame.clone()))
        })?;
        let (header, msg) = match Message::from_frame(frame) {
            Ok(x) => x,
            Err(e) => return self.fail(cid, e.into()),
        };
        let sid = self.conns[&cid]
            .session
            .expect("ready conns have a session");
        let s = self.sessions.get_mut(&sid).expect("exists");
        s.trim_sent(header.ack_seq);
        if header.seq <= s.in_seq {
            // Already delivered (a replay after reconnect): drop, as Ceph does.
            return Ok(());
        }
        s.in_seq = header.seq;
        s.ack_pending = true;
        let len = msg.payload_len() as u64;
        s.counters.msgs_in += 1;
        s.counters.bytes_in += len;
        if hooks::sampled(msg.seq, self.config.tuning.probe_sample) {
            hooks::ringwire_msg_dispatched(sid.0, msg.seq, msg.ty as u32, len);
        }
        self.events.push_back(Event::Message { session: sid, msg });
        self.intercept(cid, Step::ReadMessageComplete, || None)
    }

    // ---------------------------------------------------------------- faults and reconnect

    fn fault(&mut self, cid: ConnId, reason: FaultReason) {
        let Some(c) = self.conns.get(&cid) else {
            return;
        };
        c.span.in_scope(|| tracing::debug!(%reason, "fault"));
        let sid = c.session;
        hooks::ringwire_fault(cid.0, sid.map_or(0, |s| s.0), reason.code());
        self.events.push_back(Event::Fault {
            session: sid,
            conn: cid,
            reason: reason.clone(),
        });
        self.drop_conn(cid, false);
        let Some(sid) = sid else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.conn.is_some() {
            // The session already moved on to another connection.
            return;
        }
        if s.policy.lossy {
            self.events.push_back(Event::Reset {
                session: sid,
                reason: reason.clone(),
            });
            self.close_session(sid);
            return;
        }
        s.requeue_sent();
        if s.policy.server || (s.policy.standby && !s.has_pending()) || s.dial_addr().is_none() {
            s.set_state(sid, SessionState::Standby);
            return;
        }
        s.set_state(sid, SessionState::Connecting);
        if s.was_ready && reason != FaultReason::Wait {
            s.was_ready = false;
            self.start_connect(sid);
            return;
        }
        s.backoff = if reason == FaultReason::Wait {
            self.config.tuning.max_backoff
        } else if s.backoff.is_zero() {
            self.config.tuning.initial_backoff
        } else {
            (s.backoff * 2).min(self.config.tuning.max_backoff)
        };
        let at = self.now.after(s.backoff);
        s.reconnect_at = Some(at);
        self.timers.push(Reverse((at, Timer::Reconnect(sid))));
    }

    fn start_connect(&mut self, sid: SessionId) {
        let cid = ConnId(self.alloc_id());
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.conn.is_some() {
            return;
        }
        let Some((addr, fabric)) = s.dial_addr() else {
            s.set_state(sid, SessionState::Standby);
            return;
        };
        s.set_state(sid, SessionState::Connecting);
        s.reconnect_at = None;
        self.global_seq += 1;
        s.global_seq = self.global_seq;
        if s.server_cookie != 0 {
            s.connect_seq += 1;
        }
        s.conn = Some(cid);
        let conn = self.new_conn(cid, Role::Client, Some(sid), Some(addr));
        self.conns.insert(cid, conn);
        self.arm_conn_timer(cid);
        self.io.push_back(Io::Connect {
            conn: cid,
            addr,
            fabric,
        });
    }
}

fn new_session(
    peer_type: EntityType,
    addr: EntityAddr,
    policy: Policy,
    registered: bool,
) -> Session {
    Session {
        peer_type,
        peer_addrs: EntityAddrVec(vec![addr]),
        announced_addrs: EntityAddrVec::default(),
        peer_gid: -1,
        policy,
        state: SessionState::Connecting,
        conn: None,
        registered,
        client_cookie: 0,
        server_cookie: 0,
        global_seq: 0,
        connect_seq: 0,
        peer_global_seq: 0,
        in_seq: 0,
        out_seq: 0,
        counters: hooks::SessionCounters::default(),
        queued: 0,
        out_queue: VecDeque::new(),
        sent: VecDeque::new(),
        ack_pending: false,
        ack_queued: false,
        backoff: Duration::ZERO,
        reconnect_at: None,
        was_ready: false,
    }
}

fn peer_name(s: &Session) -> EntityName {
    EntityName {
        ty: s.peer_type,
        id: s.peer_gid.to_string(),
    }
}

fn banner_need(buf: &[u8]) -> usize {
    if buf.len() < 10 {
        10 - buf.len()
    } else {
        let len = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        (10 + len).saturating_sub(buf.len())
    }
}

fn parse_banner(buf: &[u8]) -> Result<Option<Banner>, FrameError> {
    if buf.len() < 10 {
        return Ok(None);
    }
    let mut head = [0u8; 10];
    head.copy_from_slice(&buf[..10]);
    let len = Banner::decode_head(&head)?;
    if buf.len() < 10 + len {
        return Ok(None);
    }
    Ok(Some(Banner::decode_payload(&buf[10..10 + len])))
}
