//! The session phase of the handshake, both roles (msgr2.md §1.6 steps 6–7 and server step 4,
//! §1.9): the client's CLIENT_IDENT or SESSION_RECONNECT and what it makes of the answer; the
//! server's lookup of an existing session and its answer. The decisions themselves are pure
//! functions in `ident.rs` and `reconnect.rs`; this file applies them to the endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::control::{ClientIdent, Control, Reconnect, ServerIdent, IDENT_FLAG_LOSSY};
use crate::proto::frame::Frame;
use crate::proto::hooks;
use crate::proto::intercept::Step;
use crate::proto::policy::Policy;
use crate::proto::wire::{AddrType, EntityAddr, EntityAddrVec};

use super::config::{AuthMethod, ModeName, Security};
use super::conn::{ConnState, Role, Trigger};
use super::fault::FaultReason;
use super::ident::{
    accept_policy, client_policy, decide_client_ident, AcceptPolicy, IdentDecision,
};
use super::ids::{ConnId, SessionId};
use super::reconnect::{decide_reconnect, ReconnectDecision};
use super::seq;
use super::session::{Session, SessionState};
use super::timer::Timer;
use super::{Endpoint, Event, Flow, Halt};

impl Endpoint {
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

    pub(super) fn send_client_ident(&mut self, cid: ConnId, frame: Frame) -> Flow {
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

    pub(super) fn send_reconnect(&mut self, cid: ConnId, sid: SessionId) {
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
    pub(super) fn on_session_reply(&mut self, cid: ConnId, frame: Frame, control: Control) -> Flow {
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
                let peer_global_seq = match seq::peer_seq("global_seq", si.global_seq) {
                    Ok(gs) => gs,
                    Err(reason) => return self.fail(cid, reason),
                };
                s.policy = client_policy(s.policy, si.flags);
                s.server_cookie = si.server_cookie;
                s.peer_global_seq = peer_global_seq;
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
                s.discard_requeued_up_to(sid, msg_seq, &mut self.released);
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
                // Ceph: `connect_seq = retry.connect_seq() + 1`, wrapping (see seq.rs).
                let connect_seq = match seq::after_retry(connect_seq) {
                    Ok(cs) => cs,
                    Err(reason) => return self.fail(cid, reason),
                };
                let s = self.sessions.get_mut(&sid).expect("session exists");
                s.connect_seq = connect_seq;
                self.send_reconnect(cid, sid);
                Ok(())
            }
            Control::SessionRetryGlobal { global_seq } => {
                self.intercept(cid, Step::SessionRetry, || Some(Trigger::Frame(frame)))?;
                // Ceph: `global_seq = messenger->get_global_seq(retry.global_seq())`, which
                // truncates to 32 bits and wraps (see seq.rs).
                let gs = match seq::after_retry_global(self.global_seq, global_seq) {
                    Ok(gs) => gs,
                    Err(reason) => return self.fail(cid, reason),
                };
                self.global_seq = gs;
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
                    s.reset(sid, &mut self.released);
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
    pub(super) fn on_client_ident(&mut self, cid: ConnId, frame: Frame, ci: ClientIdent) -> Flow {
        if ci.addrs.0.is_empty() {
            return self.fail(cid, FaultReason::BadIdent("empty address vector"));
        }
        if !self.config.is_my_addr(&ci.target_addr) {
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
        let AcceptPolicy { policy, registers } =
            accept_policy(self.config.policy_for(peer_type), ci.flags);
        let missing = policy.required_on_wire() & !ci.features_supported;
        if missing != 0 {
            self.send_control(cid, Control::IdentMissingFeatures { features: missing });
            self.drop_conn(cid, true);
            return Err(Halt::Closed);
        }
        // Kept as the session's peer_global_seq, which later idents and reconnects must reach.
        if let Err(reason) = seq::peer_seq("global_seq", ci.global_seq) {
            return self.fail(cid, reason);
        }
        let key = ci.addrs.primary().copied().expect("non-empty");
        let existing = registers
            .then(|| self.registry.get(&key).copied())
            .flatten()
            .and_then(|eid| Some((eid, self.sessions.get(&eid)?.view())));
        let mine = self.config.race_addr();
        let decision = decide_client_ident(existing.as_ref().map(|(_, v)| v), &ci, &key, mine);
        match (decision, existing.map(|(eid, _)| eid)) {
            (IdentDecision::NewSession, _) | (_, None) => {
                self.accept_new_session(cid, frame, ci, policy, registers)
            }
            (IdentDecision::Stale, _) => self.fail(cid, FaultReason::Stale),
            (IdentDecision::Wait, _) => {
                self.send_control(cid, Control::Wait);
                self.drop_conn(cid, true);
                Err(Halt::Closed)
            }
            (IdentDecision::ReplaceLossy, Some(eid)) => {
                self.events.push_back(Event::Reset {
                    session: eid,
                    reason: FaultReason::Replaced,
                });
                self.close_session(eid);
                self.accept_new_session(cid, frame, ci, policy, registers)
            }
            (IdentDecision::PeerRestarted { reset }, Some(eid)) => {
                if reset {
                    let e = self.sessions.get_mut(&eid).expect("registered");
                    e.reset(eid, &mut self.released);
                    self.events.push_back(Event::RemoteReset { session: eid });
                }
                self.resume_session(cid, frame, ci, eid)
            }
            (IdentDecision::Resume, Some(eid)) => self.resume_session(cid, frame, ci, eid),
        }
    }

    /// The existing session `eid` takes over connection `cid`, whose CLIENT_IDENT is `ci`.
    fn resume_session(
        &mut self,
        cid: ConnId,
        frame: Frame,
        ci: ClientIdent,
        eid: SessionId,
    ) -> Flow {
        self.intercept(cid, Step::SendServerIdentity, || {
            Some(Trigger::Frame(frame))
        })?;
        let e = self.sessions.get_mut(&eid).expect("registered");
        e.client_cookie = ci.client_cookie;
        e.peer_global_seq = ci.global_seq;
        e.peer_gid = ci.gid;
        e.connect_seq = 0;
        e.peer_addrs = ci.addrs;
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
        let mut s = Session::new(peer_type, key, policy, registers);
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
        self.global_seq = seq::bump(self.global_seq);
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
    pub(super) fn on_reconnect(&mut self, cid: ConnId, frame: Frame, r: Reconnect) -> Flow {
        let Some(key) = r.addrs.primary().copied() else {
            return self.fail(cid, FaultReason::BadIdent("empty address vector"));
        };
        // Both are kept (as the session's peer_global_seq and connect_seq), and the
        // connect_seq counts on from there when this side redials.
        let checked = seq::peer_seq("global_seq", r.global_seq)
            .and_then(|_| seq::peer_seq("connect_seq", r.connect_seq));
        if let Err(reason) = checked {
            return self.fail(cid, reason);
        }
        let existing = self
            .registry
            .get(&key)
            .copied()
            .and_then(|eid| Some((eid, self.sessions.get(&eid)?.view())));
        let mine = self.config.race_addr();
        let decision = decide_reconnect(existing.as_ref().map(|(_, v)| v), &r, &key, mine);
        let Some((eid, _)) = existing else {
            // Rule 1, a RESET (no session, so nothing for the probe to report).
            if let Some(reply) = decision.reply() {
                self.send_control(cid, reply);
            }
            return Ok(());
        };
        hooks::ringwire_reconnect(eid.0, r.connect_seq, decision.probe_outcome());
        if let Some(reply) = decision.reply() {
            self.send_control(cid, reply);
            if decision == ReconnectDecision::Wait {
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
        e.discard_requeued_up_to(eid, r.msg_seq, &mut self.released);
        let in_seq = e.in_seq;
        self.send_control(cid, Control::SessionReconnectOk { msg_seq: in_seq });
        self.become_ready(cid, eid)
    }

    /// The session `sid` moves onto connection `cid`; its previous connection (if any) is
    /// closed and its unacked messages are requeued.
    pub(super) fn take_over(&mut self, sid: SessionId, cid: ConnId) {
        let s = self.sessions.get_mut(&sid).expect("exists");
        let old = s.conn.replace(cid);
        s.requeue_sent();
        s.reconnect_at = None;
        s.expires_at = None;
        self.conns.get_mut(&cid).expect("exists").session = Some(sid);
        if let Some(old) = old.filter(|o| *o != cid) {
            self.drop_conn(old, false);
        }
    }

    pub(super) fn become_ready(&mut self, cid: ConnId, sid: SessionId) -> Flow {
        self.intercept(cid, Step::Ready, || None)?;
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        c.set_state(ConnState::Ready);
        c.deadline = None;
        // Messages may come now, up to the full limits. Frames are decoded one at a time,
        // so a message right behind the frame that made us ready is held to these.
        if let Some(d) = c.decoder.as_mut() {
            d.set_limits(self.config.tuning.limits);
        }
        let role = c.role;
        let mut next = self.now.after(self.config.tuning.idle_timeout);
        if let Some(every) = self.config.tuning.keepalive_interval {
            let due = self.now.after(every);
            c.next_keepalive = Some(due);
            next = next.min(due);
        }
        self.timers.arm(next, Timer::Conn(cid));
        let s = self.sessions.get_mut(&sid).expect("exists");
        s.set_state(sid, SessionState::Ready);
        s.was_ready = true;
        s.backoff = Duration::ZERO;
        s.conn = Some(cid);
        // Who the peer proved to be, when it did (cephx); else what it says it is.
        let peer = self.conns[&cid]
            .auth
            .authenticated
            .clone()
            .unwrap_or_else(|| s.peer_name());
        let security = self.conns[&cid].auth.security.unwrap_or(Security {
            method: AuthMethod::None,
            mode: ModeName::Crc,
        });
        self.events.push_back(match role {
            Role::Client => Event::Connected {
                session: sid,
                peer,
                addrs: s.announced_addrs.clone(),
                security,
            },
            Role::Server => Event::Accepted {
                session: sid,
                peer,
                addrs: s.peer_addrs.clone(),
                security,
            },
        });
        self.flush_session(sid);
        self.arm_ticket_renewal(cid, sid);
        Ok(())
    }
}
