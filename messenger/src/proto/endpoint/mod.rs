//! One messenger's protocol state, sans-IO: the handshake of every connection (a socket) and
//! the sessions they carry (sequence numbers, queues, cookies, reconnects, races).
//!
//! A *connection* ([`ConnId`]) is one byte stream; a *session* ([`SessionId`]) is what the
//! application holds and what survives reconnects under lossless policies. The runtime feeds
//! bytes, socket events and the time in, and takes out [`Io`] requests (connect, transmit,
//! close), [`Event`]s for the dispatcher and the next timer deadline.
//!
//! This file keeps the [`Endpoint`], its entry points and the plumbing every step uses. The
//! rest, by what each owns:
//! - leaves, which import nothing of the endpoint: `config` (configuration), `ids` (ids,
//!   cookies), `timer` (time, the timer table, what a connection's timer finds), `conn` (one
//!   connection's state), `session` (one session's seqs, queues and acks), `auth` (auth methods
//!   and connection modes), and the session decisions, pure functions with table tests:
//!   `ident` (what CLIENT_IDENT meets), `reconnect` (the answer to SESSION_RECONNECT), `fault`
//!   (fault reasons, and what follows a fault);
//! - steps, which apply those to the endpoint: `dispatch` (input to frames to steps, the data
//!   path), `handshake` (banner, HELLO, auth), `establish` (the session phase: idents and
//!   reconnects), `renew` (cephx ticket renewal on monitor sessions), `migrate` (connections
//!   owned by another endpoint).

mod auth;
mod config;
mod conn;
mod dispatch;
mod establish;
mod fault;
mod handshake;
mod ident;
mod ids;
mod migrate;
mod reconnect;
mod renew;
mod seq;
mod session;
mod timer;

pub use config::{
    owner_of, parse_auth_methods, parse_modes, placement_hash, AuthConfig, AuthMethod,
    EndpointConfig, Entropy, ModeName, Placement, Security, TicketStore, Tuning, UnixClock,
};
pub use fault::FaultReason;
pub(crate) use ids::shrink_when_sparse;
pub use ids::{ConnId, IdHasher, IdMap, SessionId};
pub use migrate::Handoff;
pub use timer::Time;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::control::{Control, UTime};
use super::frame::{encode_control_frame, Tag, TxQueue};
use super::hooks;
use super::intercept::{Action, Interceptor, Step};
use super::message::Message;
use super::wire::{EntityAddr, EntityAddrVec, EntityName, EntityType, Fabric};

use auth::Auth;
use conn::{Conn, ConnState, Role, Trigger, CONN_CLOSED};
use fault::FaultAction;
use ids::Rng;
use session::{Release, ReleaseLog, Session, SessionState, SESSION_CLOSED};
use timer::{ConnTimer, Timer, TimerTable};

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
    /// Adds `other`'s counts (statistics: they wrap rather than fail).
    pub fn add(&mut self, other: &FrameCounts) {
        for i in 0..self.sent.len() {
            self.sent[i] = self.sent[i].wrapping_add(other.sent[i]);
            self.received[i] = self.received[i].wrapping_add(other.received[i]);
        }
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
        security: Security,
    },
    /// A peer's connection became ready on our side (`ms_handle_accept`).
    Accepted {
        session: SessionId,
        peer: EntityName,
        addrs: EntityAddrVec,
        security: Security,
    },
    Message {
        session: SessionId,
        msg: Message,
    },
    /// A session ended: a lossy one faulted, or one waiting for its peer expired
    /// (`FaultReason::StandbyTimeout`). Its undelivered messages are gone (`ms_handle_reset`).
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
    /// The session no longer holds `messages` messages (`bytes` payload bytes) queued with
    /// [`Endpoint::send_tagged`] under `tag`: the peer acknowledged them, they were written on
    /// a lossy session, or a session reset dropped them. Runs of one tag, in order; not
    /// reported for a session that closes (its handle is done with) or for tag 0.
    Released {
        session: SessionId,
        tag: u64,
        messages: u64,
        bytes: u64,
    },
    /// A connection failed; the session continues per its policy.
    Fault {
        session: Option<SessionId>,
        conn: ConnId,
        reason: FaultReason,
    },
}

/// Result of a step: go on, or stop handling this input (paused or connection gone).
type Flow = Result<(), Halt>;

#[derive(Debug)]
enum Halt {
    Paused,
    Closed,
}

/// One messenger's protocol state. See the module docs.
///
/// Methods, by who calls them: the application (`connect`, `send`, `keepalive`, `mark_down`,
/// `resume` and the getters), the transport (`accept`, `adopt`, `on_connected`, `on_closed`,
/// `on_connect_failed`, `on_input`, `lend_segment`/`return_segment`, `tx_queue`) and the
/// runtime's loop, which drains the output in this order after any input: `poll_io`, then
/// `poll_event`, then `poll_timeout` (calling `handle_timeout` at that deadline).
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
    /// How connections authenticate.
    auth: Auth,
    timers: TimerTable,
    io: VecDeque<Io>,
    events: VecDeque<Event>,
    interceptor: Option<Box<dyn Interceptor>>,
    counts: FrameCounts,
    /// A connection handed over while its input was being processed; the rest of that
    /// input joins it before `Io::Migrate` goes out.
    migrating: Option<(ConnId, usize, Handoff)>,
    /// Sessions owed an ACK (see `after_input`), and the list's spare for flushing it.
    ack_due: Vec<SessionId>,
    ack_spare: Vec<SessionId>,
    /// Where `send_control` builds a control frame's payload.
    control_payload: BytesMut,
    /// Tagged messages sessions let go of, reported after the other events.
    released: ReleaseLog,
    now: Time,
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Self {
        let my_gid = config.name.id.parse::<i64>().unwrap_or(-1);
        let rng = Rng(config.seed);
        let auth = Auth::new(config.auth.clone(), config.name.ty);
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
            auth,
            timers: TimerTable::default(),
            io: VecDeque::new(),
            events: VecDeque::new(),
            interceptor: None,
            counts: FrameCounts::default(),
            migrating: None,
            ack_due: Vec::new(),
            ack_spare: Vec::new(),
            control_payload: BytesMut::new(),
            released: ReleaseLog::default(),
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
            .insert(sid, Session::new(peer_type, addr, policy, registered));
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
        msg: Message,
    ) -> Result<(), Box<Message>> {
        self.send_tagged(now, session, msg, 0)
    }

    /// [`send`](Self::send), and when the session no longer holds the message (acknowledged,
    /// written if lossy, or dropped by a session reset), an [`Event::Released`] with `tag`
    /// (0: none). A runtime counts what each sender has outstanding this way.
    pub fn send_tagged(
        &mut self,
        now: Time,
        session: SessionId,
        msg: Message,
        tag: u64,
    ) -> Result<(), Box<Message>> {
        self.now = now;
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(Box::new(msg));
        };
        s.queue(session, msg, now, tag, self.config.tuning.probe_sample);
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

    /// Closes the session and its connection; no reset event is raised, and its messages
    /// not yet taken with [`poll_event`](Self::poll_event) are dropped (Ceph's mark_down
    /// discards the connection's dispatch queue): the application has let the session go,
    /// and a message delivered after that would reach it on a session it no longer knows.
    pub fn mark_down(&mut self, now: Time, session: SessionId) {
        self.now = now;
        self.close_session(session);
        self.events
            .retain(|e| !matches!(e, Event::Message { session: s, .. } if *s == session));
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

    // ---------------------------------------------------------------- transport API

    /// A transport accepted a stream from `peer`.
    pub fn accept(&mut self, now: Time, peer: SocketAddr) -> ConnId {
        self.now = now;
        let cid = ConnId(self.alloc_id());
        let conn = Conn::new(cid, Role::Server, None, Some(peer), now);
        self.conns.insert(cid, conn);
        self.arm_conn_timer(cid);
        if self.start_banner(cid).is_ok() {
            self.after_input(cid);
        }
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
    ///
    /// [`FrameDecoder::lend_segment`]: crate::proto::FrameDecoder::lend_segment
    pub fn lend_segment(&mut self, conn: ConnId) -> Option<(BytesMut, usize)> {
        let c = self.conns.get_mut(&conn)?;
        // Before auth is done every byte goes through `on_input`, which records it.
        if c.paused.is_some() || c.auth.transcript.is_some() {
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
        self.events.pop_front().or_else(|| {
            let Release {
                session,
                tag,
                messages,
                bytes,
            } = self.released.pop()?;
            Some(Event::Released {
                session,
                tag,
                messages,
                bytes,
            })
        })
    }

    /// The next deadline at which [`Endpoint::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Conn(cid) => self.conn_timer(cid),
                Timer::Expire(sid) => self.expire(sid),
                Timer::RenewTickets(sid) => self.renew_tickets(sid),
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

    /// Ends a session whose peer did not come back in time (it would have cleared
    /// `expires_at` by taking a connection).
    fn expire(&mut self, sid: SessionId) {
        let due = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.conn.is_none() && s.expires_at.is_some_and(|at| at <= self.now));
        if due {
            self.events.push_back(Event::Reset {
                session: sid,
                reason: FaultReason::StandbyTimeout,
            });
            self.close_session(sid);
        }
    }

    fn conn_timer(&mut self, cid: ConnId) {
        let Some(c) = self.conns.get(&cid) else {
            return;
        };
        let now = self.now;
        let ready = c.state == ConnState::Ready;
        let t = &self.config.tuning;
        match timer::conn_timer(ready, c.deadline, c.last_input, c.next_keepalive, t, now) {
            ConnTimer::Fault(reason) => self.fault(cid, reason),
            ConnTimer::Wait { rearm, keepalive } => {
                if let Some(due) = keepalive {
                    let stamp = UTime::from_nanos(now.0);
                    self.send_control(cid, Control::Keepalive2 { stamp });
                    self.conns.get_mut(&cid).expect("checked").next_keepalive = Some(due);
                }
                if let Some(at) = rearm {
                    self.timers.arm(at, Timer::Conn(cid));
                }
            }
        }
    }

    fn arm_conn_timer(&mut self, cid: ConnId) {
        let at = self.now.after(self.config.tuning.handshake_timeout);
        if let Some(c) = self.conns.get_mut(&cid) {
            c.deadline = Some(at);
        }
        self.timers.arm(at, Timer::Conn(cid));
    }

    fn inject_failure(&mut self) -> bool {
        let n = self.config.tuning.inject_socket_failures;
        n > 0 && self.rng.next() % n as u64 == 0
    }

    // ---------------------------------------------------------------- internals: plumbing

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
        if let Some(e) = c.tx.take_error() {
            return self.fault(cid, e.into());
        }
        if was_empty && !c.tx.is_empty() {
            self.io.push_back(Io::Transmit { conn: cid });
        }
    }

    fn send_control(&mut self, cid: ConnId, control: Control) {
        let n = &mut self.counts.sent[control.tag() as usize];
        *n = n.wrapping_add(1);
        if let Some(t) = self
            .conns
            .get_mut(&cid)
            .and_then(|c| c.auth.transcript.as_mut())
        {
            // Before auth is done frames are plain and encoding is deterministic: the same
            // bytes as those queued.
            let mut copy = TxQueue::default();
            control.encode_frame(&mut copy);
            t.tx.extend_from_slice(&copy.take_all());
        }
        // The payload is built in a buffer kept for it (ACKs and keepalives go out on the
        // data path) and copied into the send queue.
        let mut payload = std::mem::take(&mut self.control_payload);
        payload.clear();
        control.encode_payload(&mut payload);
        self.queue_tx(cid, |tx| {
            encode_control_frame(tx, control.tag(), &payload);
        });
        self.control_payload = payload;
    }

    fn drop_conn(&mut self, cid: ConnId, flush: bool) {
        if let Some(mut c) = self.conns.remove(&cid) {
            shrink_when_sparse(&mut self.conns);
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
            self.sweep_timers();
        }
    }

    /// After a connection left: drops timer entries of what is gone, now and then (see
    /// [`TimerTable::compact`]).
    fn sweep_timers(&mut self) {
        let (conns, sessions) = (&self.conns, &self.sessions);
        self.timers.compact(|t| match t {
            Timer::Conn(c) => conns.contains_key(c),
            Timer::Reconnect(s) | Timer::Expire(s) | Timer::RenewTickets(s) => {
                sessions.contains_key(s)
            }
        });
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
        shrink_when_sparse(&mut self.sessions);
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
        match fault::decide_fault(&s.faulted(), &reason, &self.config.tuning) {
            FaultAction::Reset => {
                self.events.push_back(Event::Reset {
                    session: sid,
                    reason,
                });
                self.close_session(sid);
            }
            FaultAction::Standby { expire_after } => {
                s.requeue_sent();
                s.set_state(sid, SessionState::Standby);
                if let Some(after) = expire_after {
                    let at = self.now.after(after);
                    s.expires_at = Some(at);
                    self.timers.arm(at, Timer::Expire(sid));
                }
            }
            FaultAction::RedialNow => {
                s.requeue_sent();
                s.set_state(sid, SessionState::Connecting);
                s.was_ready = false;
                self.start_connect(sid);
            }
            FaultAction::Backoff(delay) => {
                s.requeue_sent();
                s.set_state(sid, SessionState::Connecting);
                s.backoff = delay;
                let at = self.now.after(delay);
                s.reconnect_at = Some(at);
                self.timers.arm(at, Timer::Reconnect(sid));
            }
        }
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
        self.global_seq = seq::bump(self.global_seq);
        s.global_seq = self.global_seq;
        if s.server_cookie != 0 {
            s.connect_seq = seq::bump(s.connect_seq);
        }
        s.conn = Some(cid);
        let conn = Conn::new(cid, Role::Client, Some(sid), Some(addr), self.now);
        self.conns.insert(cid, conn);
        self.arm_conn_timer(cid);
        self.io.push_back(Io::Connect {
            conn: cid,
            addr,
            fabric,
        });
    }
}
