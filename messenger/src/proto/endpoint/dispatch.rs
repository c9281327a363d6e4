//! From bytes to protocol steps: the banner and frame decoding of a connection's input, the
//! dispatch of each frame to the step for the connection's role and state (and its replay when
//! the interceptor paused it), and the data path of ready sessions (messages out and in, and
//! the ACKs they owe).

use crate::proto::control::Control;
use crate::proto::frame::{Frame, FrameDecoder, Tag};
use crate::proto::intercept::Step;
use crate::proto::message::Message;

use super::conn::{ConnState, Role, Trigger};
use super::ident;
use super::ids::{ConnId, SessionId};
use super::timer::Time;
use super::{Endpoint, Event, Flow, Halt, Io};

impl Endpoint {
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

    pub(super) fn process_input(&mut self, cid: ConnId, mut data: &[u8]) {
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
                match c.take_banner(&mut data) {
                    Ok(None) => continue,
                    Ok(Some(banner)) => {
                        let consumed = c.banner_buf.len() as u64;
                        if let Some(t) = c.auth.transcript.as_mut() {
                            t.rx.extend_from_slice(&c.banner_buf);
                        }
                        let limits = self.config.tuning.limits.before_ready();
                        c.decoder = Some(FrameDecoder::new(limits, consumed));
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
            let before = data;
            let fed = d.feed(&mut data);
            if let Some(t) = c.auth.transcript.as_mut() {
                t.rx.extend_from_slice(&before[..before.len() - data.len()]);
            }
            match fed {
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
    pub(super) fn after_input(&mut self, cid: ConnId) {
        let Some(sid) = self.conns.get(&cid).and_then(|c| c.session) else {
            return;
        };
        if self.sessions.get_mut(&sid).is_some_and(|s| s.owes_ack()) {
            self.ack_due.push(sid);
        }
    }

    /// ACK frames for sessions that received messages and sent nothing back since.
    pub(super) fn flush_acks(&mut self) {
        let mut due = std::mem::replace(&mut self.ack_due, std::mem::take(&mut self.ack_spare));
        for &sid in &due {
            let ack = self.sessions.get_mut(&sid).and_then(|s| s.take_ack());
            if let Some((cid, seq)) = ack {
                self.send_control(cid, Control::Ack { seq });
            }
        }
        due.clear();
        self.ack_spare = due;
    }

    // ---------------------------------------------------------------- frame dispatch

    pub(super) fn on_frame(&mut self, cid: ConnId, frame: Frame) -> Flow {
        let tag = frame.tag();
        if self
            .conns
            .get(&cid)
            .is_some_and(|c| c.resume_skip.is_none())
        {
            // A statistic, counted per frame the peer sends: it wraps rather than fails.
            let n = &mut self.counts.received[tag as usize];
            *n = n.wrapping_add(1);
        }
        if tag == Tag::Message {
            return self.on_message(cid, frame);
        }
        let control = match Control::decode_frame(tag, frame.payload()) {
            Ok(c) => c,
            Err(e) => return self.fail(cid, e.into()),
        };
        let c = self.conns.get(&cid).ok_or(Halt::Closed)?;
        let (role, state) = (c.role, c.state);
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
                    result,
                    allowed_methods,
                    allowed_modes,
                    ..
                },
            ) => self.on_auth_bad_method(cid, result, &allowed_methods, &allowed_modes),
            (Role::Client, ConnState::Auth, Control::AuthReplyMore { auth_payload }) => {
                self.on_auth_reply_more(cid, &auth_payload)
            }
            (
                Role::Client,
                ConnState::Auth,
                Control::AuthDone {
                    global_id,
                    con_mode,
                    auth_payload,
                },
            ) => self.on_auth_done(cid, global_id, con_mode, &auth_payload),
            (Role::Client, ConnState::AuthSign, Control::AuthSignature { sha256 }) => {
                self.on_server_signature(cid, frame, &sha256)
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
            (Role::Server, ConnState::Auth, Control::AuthRequestMore { auth_payload }) => {
                self.on_auth_request_more(cid, &auth_payload)
            }
            (Role::Server, ConnState::AuthSign, Control::AuthSignature { sha256 }) => {
                self.on_client_signature(cid, frame, &sha256)
            }
            (Role::Server, ConnState::Session, Control::ClientIdent(ci)) => {
                let configured = self.config.policy_for(c.peer_type);
                let registers = ident::accept_policy(configured, ci.flags).registers;
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
                let sid = self.conns[&cid].session;
                if let Some((sid, s)) =
                    sid.and_then(|sid| Some((sid, self.sessions.get_mut(&sid)?)))
                {
                    s.trim_sent(sid, seq, &mut self.released);
                }
                Ok(())
            }
            _ => self.unexpected(cid, tag),
        }
    }

    // ---------------------------------------------------------------- sessions: data path

    pub(super) fn flush_session(&mut self, sid: SessionId) {
        let Some(cid) = self.ready_conn(sid) else {
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("exists");
        let c = self.conns.get_mut(&cid).expect("ready conn exists");
        let was_empty = c.tx.is_empty();
        let sample = self.config.tuning.probe_sample;
        let written = s.write_queued(sid, &mut c.tx, self.now, sample, &mut self.released);
        let n = &mut self.counts.sent[Tag::Message as usize];
        *n = n.wrapping_add(written);
        let sealing_failed = c.tx.take_error();
        let queued = was_empty && !c.tx.is_empty();
        if let Some(e) = sealing_failed {
            return self.fault(cid, e.into());
        }
        if queued {
            self.io.push_back(Io::Transmit { conn: cid });
        }
    }

    pub(super) fn on_message(&mut self, cid: ConnId, frame: Frame) -> Flow {
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
        let sample = self.config.tuning.probe_sample;
        match s.receive(sid, &header, &msg, sample, &mut self.released) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(reason) => return self.fail(cid, reason),
        }
        if let Some(msg) = self.take_auth_message(cid, sid, msg) {
            self.events.push_back(Event::Message { session: sid, msg });
        }
        self.intercept(cid, Step::ReadMessageComplete, || None)
    }
}
