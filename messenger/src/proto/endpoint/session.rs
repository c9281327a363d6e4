//! A session: what the application holds and what survives reconnects under lossless
//! policies. Its sequence numbers, cookies, the queue of messages not yet written, the list of
//! messages written but not acknowledged, and the acks it owes (msgr2.md §1.8, §1.9).
//!
//! Everything here works on one [`Session`]; the endpoint decides when.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::frame::TxQueue;
use crate::proto::hooks;
use crate::proto::message::{Message, MsgHeader2};
use crate::proto::policy::Policy;
use crate::proto::wire::{EntityAddr, EntityAddrVec, EntityName, EntityType, Fabric};

use super::fault::{FaultReason, FaultedSession};
use super::ids::{ConnId, SessionId};
use super::seq;
use super::timer::Time;

pub(super) const SESSION_CLOSED: u32 = 3;

/// Numbered as the `ringwire_session_state` probe reports them (3 = closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionState {
    /// Waiting for a connection (dialling, handshaking, or in backoff).
    Connecting,
    Ready,
    /// Faulted with nothing to send; reconnects on the next send (or waits for the peer).
    Standby,
}

pub(super) struct Session {
    pub(super) peer_type: EntityType,
    /// Where we reach the peer (what we dialled, or what it told us when it dialled us).
    pub(super) peer_addrs: EntityAddrVec,
    /// What the peer's SERVER_IDENT said its addresses are (with its real nonce).
    pub(super) announced_addrs: EntityAddrVec,
    pub(super) peer_gid: i64,
    pub(super) policy: Policy,
    pub(super) state: SessionState,
    pub(super) conn: Option<ConnId>,
    pub(super) registered: bool,
    pub(super) client_cookie: u64,
    pub(super) server_cookie: u64,
    pub(super) global_seq: u64,
    pub(super) connect_seq: u64,
    pub(super) peer_global_seq: u64,
    pub(super) in_seq: u64,
    pub(super) out_seq: u64,
    /// Every message sent and dispatched, for the probes.
    pub(super) counters: hooks::SessionCounters,
    /// Messages queued so far (the `ringwire_msg_queued` probe samples by it).
    pub(super) queued: u64,
    /// Messages not yet written; requeued ones keep their original seq (non-zero).
    pub(super) out_queue: VecDeque<Outgoing>,
    /// Written but not yet acknowledged (lossless only).
    pub(super) sent: VecDeque<Outgoing>,
    pub(super) ack_pending: bool,
    pub(super) ack_queued: bool,
    pub(super) backoff: Duration,
    pub(super) reconnect_at: Option<Time>,
    /// When the session ends unless its peer has come back (see `decide_fault`).
    pub(super) expires_at: Option<Time>,
    /// Whether the last connection reached READY (then reconnect at once, not after backoff).
    pub(super) was_ready: bool,
    /// A monitor session: our ticket renewals waiting for their MAuthReply (which are ours,
    /// not the application's), and when the last went.
    pub(super) renewals_out: u32,
    pub(super) renewal_sent: Time,
}

/// What the session decisions (`ident.rs`, `reconnect.rs`) need to know of an existing
/// session: a copy, so that they stay pure functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionView {
    pub(super) policy: Policy,
    pub(super) state: SessionState,
    pub(super) client_cookie: u64,
    pub(super) server_cookie: u64,
    pub(super) peer_global_seq: u64,
    pub(super) connect_seq: u64,
}

#[cfg(test)]
impl SessionView {
    /// For the decision tables: a registered session with client cookie 11, server cookie 22,
    /// peer global_seq 5 and connect_seq 3.
    pub(super) fn example(policy: Policy, state: SessionState) -> SessionView {
        SessionView {
            policy,
            state,
            client_cookie: 11,
            server_cookie: 22,
            peer_global_seq: 5,
            connect_seq: 3,
        }
    }

    /// For the decision tables: `v2:127.0.0.1:PORT/1`.
    pub(super) fn addr(port: u16) -> EntityAddr {
        EntityAddr::msgr2(([127, 0, 0, 1], port).into(), 1)
    }
}

/// A message on its way out, with the time the application queued it (for the
/// `ringwire_msg_sent` probe's queued-to-sent latency) and the caller's tag (see
/// [`ReleaseLog`]).
pub(super) struct Outgoing {
    pub(super) msg: Message,
    pub(super) queued_at: Time,
    pub(super) tag: u64,
}

/// Messages that sessions stopped holding, for the runtime's send throttle: acknowledged by
/// the peer, written on a lossy session, or dropped by a session reset. Kept as runs of
/// (session, tag) in the order they went; messages queued with tag 0 are not recorded.
#[derive(Default)]
pub(super) struct ReleaseLog(VecDeque<Release>);

/// `messages` messages of `bytes` payload bytes, queued on `session` with `tag`, that the
/// session no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Release {
    pub(super) session: SessionId,
    pub(super) tag: u64,
    pub(super) messages: u64,
    pub(super) bytes: u64,
}

impl ReleaseLog {
    fn add(&mut self, session: SessionId, out: &Outgoing) {
        if out.tag == 0 {
            return;
        }
        // Sums of payloads held in memory at once: far from u64::MAX.
        let bytes = out.msg.payload_len() as u64;
        match self.0.back_mut() {
            Some(r) if r.session == session && r.tag == out.tag => {
                r.messages += 1;
                r.bytes += bytes;
            }
            _ => self.0.push_back(Release {
                session,
                tag: out.tag,
                messages: 1,
                bytes,
            }),
        }
    }

    pub(super) fn pop(&mut self) -> Option<Release> {
        self.0.pop_front()
    }
}

impl Session {
    pub(super) fn new(
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
            expires_at: None,
            renewals_out: 0,
            renewal_sent: Time(0),
            was_ready: false,
        }
    }

    pub(super) fn set_state(&mut self, id: SessionId, to: SessionState) {
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

    pub(super) fn view(&self) -> SessionView {
        SessionView {
            policy: self.policy,
            state: self.state,
            client_cookie: self.client_cookie,
            server_cookie: self.server_cookie,
            peer_global_seq: self.peer_global_seq,
            connect_seq: self.connect_seq,
        }
    }

    /// What `decide_fault` needs to know of this session when its connection failed.
    pub(super) fn faulted(&self) -> FaultedSession {
        FaultedSession {
            policy: self.policy,
            has_pending: self.has_pending(),
            can_dial: self.dial_addr().is_some(),
            was_ready: self.was_ready,
            backoff: self.backoff,
        }
    }

    pub(super) fn peer_name(&self) -> EntityName {
        EntityName {
            ty: self.peer_type,
            id: self.peer_gid.to_string(),
        }
    }

    pub(super) fn dial_addr(&self) -> Option<(SocketAddr, Fabric)> {
        let a = self.peer_addrs.msgr2()?;
        a.addr.filter(|s| s.port() != 0).map(|s| (s, a.fabric()))
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.out_queue.is_empty() || !self.sent.is_empty()
    }

    /// Queues a message from the application; `tag` comes back in the [`ReleaseLog`] when
    /// the session lets go of it.
    pub(super) fn queue(
        &mut self,
        sid: SessionId,
        mut msg: Message,
        now: Time,
        tag: u64,
        probe_sample: u32,
    ) {
        msg.seq = 0;
        self.queued = self.queued.wrapping_add(1);
        if hooks::sampled(self.queued, probe_sample) {
            hooks::ringwire_msg_queued(sid.0, msg.ty as u32, msg.payload_len() as u64);
        }
        self.out_queue.push_back(Outgoing {
            msg,
            queued_at: now,
            tag,
        });
    }

    /// Unacked messages go back to the front of the queue with their sequence numbers.
    pub(super) fn requeue_sent(&mut self) {
        while let Some(m) = self.sent.pop_back() {
            self.out_queue.push_front(m);
        }
    }

    /// Drops requeued messages the peer already has.
    pub(super) fn discard_requeued_up_to(
        &mut self,
        sid: SessionId,
        seq: u64,
        log: &mut ReleaseLog,
    ) {
        while self
            .out_queue
            .front()
            .is_some_and(|o| o.msg.seq != 0 && o.msg.seq <= seq)
        {
            let o = self.out_queue.pop_front().expect("checked");
            log.add(sid, &o);
        }
    }

    /// The peer acknowledged every message up to `acked`.
    pub(super) fn trim_sent(&mut self, sid: SessionId, acked: u64, log: &mut ReleaseLog) {
        while self.sent.front().is_some_and(|o| o.msg.seq <= acked) {
            let o = self.sent.pop_front().expect("checked");
            log.add(sid, &o);
        }
    }

    /// Forgets everything of the session but its identity and policy (Ceph's `reset_session`).
    pub(super) fn reset(&mut self, sid: SessionId, log: &mut ReleaseLog) {
        for o in self.sent.drain(..).chain(self.out_queue.drain(..)) {
            log.add(sid, &o);
        }
        self.in_seq = 0;
        self.out_seq = 0;
        self.connect_seq = 0;
        self.client_cookie = 0;
        self.server_cookie = 0;
        self.ack_pending = false;
    }

    /// Writes every queued message to `tx`, numbering new ones, each carrying our `in_seq` as
    /// its ack; lossless sessions keep them until acknowledged. Returns how many were written.
    pub(super) fn write_queued(
        &mut self,
        sid: SessionId,
        tx: &mut TxQueue,
        now: Time,
        probe_sample: u32,
        log: &mut ReleaseLog,
    ) -> u64 {
        let mut written = 0;
        while let Some(mut out) = self.out_queue.pop_front() {
            let m = &mut out.msg;
            if m.seq == 0 {
                // Our own count of messages sent: it cannot come near u64::MAX.
                self.out_seq += 1;
                m.seq = self.out_seq;
            }
            m.encode_frame(tx, m.seq, self.in_seq);
            let len = m.payload_len() as u64;
            // Statistics for the probes: they wrap, as counters do, rather than fail.
            self.counters.msgs_out = self.counters.msgs_out.wrapping_add(1);
            self.counters.bytes_out = self.counters.bytes_out.wrapping_add(len);
            if hooks::sampled(m.seq, probe_sample) {
                let queued_ns = now.0.saturating_sub(out.queued_at.0);
                hooks::ringwire_msg_sent(sid.0, m.seq, m.ty as u32, len, queued_ns);
            }
            written += 1;
            self.ack_pending = false;
            if self.policy.lossy {
                log.add(sid, &out);
            } else {
                self.sent.push_back(out);
            }
        }
        written
    }

    /// A message arrived with `header`: trims what it acknowledges, and returns whether it is
    /// new (to dispatch) rather than a replay of one already delivered. A seq no sender
    /// reaches is a fault (see `seq.rs`).
    pub(super) fn receive(
        &mut self,
        sid: SessionId,
        header: &MsgHeader2,
        msg: &Message,
        probe_sample: u32,
        log: &mut ReleaseLog,
    ) -> Result<bool, FaultReason> {
        // Ceph takes any seq (and tests a gap with `cur_seq + 1`, which wraps). Ours becomes
        // in_seq, which every later message must pass: one near u64::MAX would leave the
        // session unable to take another. The ack_seq is only compared with our own seqs.
        seq::peer_seq("message seq", header.seq)?;
        self.trim_sent(sid, header.ack_seq, log);
        if header.seq <= self.in_seq {
            // Already delivered (a replay after reconnect): drop, as Ceph does.
            return Ok(false);
        }
        self.in_seq = header.seq;
        self.ack_pending = true;
        let len = msg.payload_len() as u64;
        self.counters.msgs_in = self.counters.msgs_in.wrapping_add(1);
        self.counters.bytes_in = self.counters.bytes_in.wrapping_add(len);
        if hooks::sampled(msg.seq, probe_sample) {
            hooks::ringwire_msg_dispatched(sid.0, msg.seq, msg.ty as u32, len);
        }
        Ok(true)
    }

    /// After a batch of input: whether this session now owes the peer an ACK frame (once).
    pub(super) fn owes_ack(&mut self) -> bool {
        // The ACK waits until the caller has drained the events: a reply to what just arrived
        // carries the ack for free, and only sessions left without one get an ACK frame.
        if self.ack_pending && !self.ack_queued && !self.policy.lossy {
            self.ack_queued = true;
            return true;
        }
        false
    }

    /// The ACK to send now, if one is still owed: the connection and our `in_seq`.
    pub(super) fn take_ack(&mut self) -> Option<(ConnId, u64)> {
        self.ack_queued = false;
        if !self.ack_pending || self.state != SessionState::Ready {
            return None;
        }
        let cid = self.conn?;
        self.ack_pending = false;
        Some((cid, self.in_seq))
    }
}
