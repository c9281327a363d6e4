//! The handshake up to the session phase, both roles (msgr2.md §1.6 steps 1–5): banner, HELLO,
//! auth and signatures. Each step checks the interceptor, moves the connection's state and
//! queues what goes out; what auth means is [`Auth`](super::auth::Auth)'s business. The session
//! phase (CLIENT_IDENT, SESSION_RECONNECT and their answers) is in `establish.rs`.

use crate::proto::control::{Control, CON_MODE_CRC};
use crate::proto::frame::{Banner, Frame, Tag};
use crate::proto::intercept::Step;
use crate::proto::secure::streams;
use crate::proto::wire::{AddrType, EntityAddr, EntityType};

use super::auth::{BadMethod, ConMode, Refusal, ServerAuth};
use super::conn::{ConnState, Role, Trigger};
use super::fault::FaultReason;
use super::ids::ConnId;
use super::{Endpoint, Event, Flow, Halt};

impl Endpoint {
    pub(super) fn start_banner(&mut self, cid: ConnId) -> Flow {
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
        if let Some(t) = self
            .conns
            .get_mut(&cid)
            .and_then(|c| c.auth.transcript.as_mut())
        {
            t.tx.extend_from_slice(&banner);
        }
        self.queue_tx(cid, |tx| tx.push_small(&banner));
        self.intercept(cid, sent, || None)
    }

    pub(super) fn on_peer_banner(&mut self, cid: ConnId, banner: Banner) -> Flow {
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

    pub(super) fn on_hello(
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
                let c = self.conns.get_mut(&cid).expect("checked");
                let request = self.auth.client_request(
                    &self.config.name,
                    peer_type,
                    &mut c.auth,
                    self.now,
                    None,
                );
                let Some(request) = request else {
                    // Our only method needs what we lack (cephx without a key or ticket).
                    return self.refuse(cid, FaultReason::NoAuthMethod);
                };
                self.send_control(cid, request);
            }
            Role::Server => c.set_state(ConnState::Auth),
        }
        Ok(())
    }

    // ---------------------------------------------------------------- client: auth replies

    /// AUTH_BAD_METHOD: our method or modes are refused, or (after our cephx proof) our
    /// key. Another method both sides allow is tried on the same connection.
    pub(super) fn on_auth_bad_method(
        &mut self,
        cid: ConnId,
        result: i32,
        allowed_methods: &[u32],
        allowed_modes: &[u32],
    ) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        let refusal = Refusal {
            result,
            methods: allowed_methods,
            modes: allowed_modes,
        };
        let answer = self.auth.client_bad_method(
            &self.config.name,
            c.peer_type,
            &mut c.auth,
            self.now,
            refusal,
        );
        match answer {
            BadMethod::Retry(request) => {
                self.send_control(cid, request);
                Ok(())
            }
            BadMethod::Fail(reason) => self.refuse(cid, reason),
        }
    }

    /// The peer refused us (or we it) during auth: the session hears why, then the
    /// connection fails.
    fn refuse(&mut self, cid: ConnId, reason: FaultReason) -> Flow {
        if let Some(session) = self.conns.get(&cid).and_then(|c| c.session) {
            self.events.push_back(Event::Refused {
                session,
                reason: reason.clone(),
            });
        }
        self.fail(cid, reason)
    }

    pub(super) fn on_auth_reply_more(&mut self, cid: ConnId, payload: &[u8]) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        match self.auth.client_more(&mut c.auth, payload) {
            Some(Ok(auth_payload)) => {
                self.send_control(cid, Control::AuthRequestMore { auth_payload });
                Ok(())
            }
            Some(Err(reason)) => self.fail(cid, reason),
            None => self.unexpected(cid, Tag::AuthReplyMore),
        }
    }

    pub(super) fn on_auth_done(
        &mut self,
        cid: ConnId,
        global_id: u64,
        con_mode: u32,
        payload: &[u8],
    ) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        let mode = match self
            .auth
            .client_done(&mut c.auth, self.now, global_id, con_mode, payload)
        {
            Ok(mode) => mode,
            Err(reason) => return self.refuse(cid, reason),
        };
        c.set_state(ConnState::AuthSign);
        // What we received, AUTH_DONE included, is signed; then the mode switches, and our
        // AUTH_SIGNATURE is the first frame under it.
        let sha256 = c.auth.finish_transcript();
        if let Err(reason) = self.switch_mode(cid, mode) {
            return self.fail(cid, reason);
        }
        self.send_control(cid, Control::AuthSignature { sha256 });
        Ok(())
    }

    /// Installs secure mode's ciphers on both directions (crc mode needs nothing).
    fn switch_mode(&mut self, cid: ConnId, mode: ConMode) -> Result<(), FaultReason> {
        let ConMode::Secure(secret) = mode else {
            return Ok(());
        };
        let c = self.conns.get_mut(&cid).expect("checked");
        let (tx, rx) = streams(secret.expose(), c.role == Role::Server)?;
        c.tx.set_cipher(tx);
        c.decoder
            .as_mut()
            .expect("frames arrive through the decoder")
            .set_cipher(rx);
        Ok(())
    }

    /// The server's AUTH_SIGNATURE: auth is done, the session phase begins.
    pub(super) fn on_server_signature(
        &mut self,
        cid: ConnId,
        frame: Frame,
        sha256: &[u8; 32],
    ) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        if !c.auth.signature_ok(sha256) {
            return self.fail(cid, FaultReason::BadSignature);
        }
        self.send_client_ident(cid, frame)
    }

    // ---------------------------------------------------------------- server: auth requests

    pub(super) fn on_auth_request(
        &mut self,
        cid: ConnId,
        method: u32,
        modes: &[u32],
        payload: &[u8],
    ) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        let reply = self.auth.server_request(
            &mut c.auth,
            c.peer_type,
            method,
            modes,
            payload,
            &mut self.next_global_id,
        );
        self.answer_auth(cid, reply)
    }

    /// AUTH_REQUEST_MORE: cephx's proof.
    pub(super) fn on_auth_request_more(&mut self, cid: ConnId, payload: &[u8]) -> Flow {
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        let reply =
            self.auth
                .server_more(&mut c.auth, c.peer_type, payload, &mut self.next_global_id);
        match reply {
            Some(Ok(reply)) => self.answer_auth(cid, reply),
            Some(Err(reason)) => self.fail(cid, reason),
            None => self.unexpected(cid, Tag::AuthRequestMore),
        }
    }

    fn answer_auth(&mut self, cid: ConnId, reply: ServerAuth) -> Flow {
        let (global_id, mode, auth_payload) = match reply {
            ServerAuth::Done {
                global_id,
                mode,
                payload,
            } => (global_id, mode, payload),
            ServerAuth::More(auth_payload) => {
                self.send_control(cid, Control::AuthReplyMore { auth_payload });
                return Ok(());
            }
            ServerAuth::BadMethod(reply) => {
                // Ceph's answer to a method it does not offer; the client may try another.
                self.send_control(cid, reply);
                return Ok(());
            }
        };
        let c = self.conns.get_mut(&cid).expect("checked");
        c.set_state(ConnState::AuthSign);
        let con_mode = c.auth.security.map_or(CON_MODE_CRC, |s| s.mode.to_wire());
        if let (Some(name), Some(security)) = (&c.auth.authenticated, c.auth.security) {
            c.span.in_scope(|| {
                tracing::info!(peer = %name, %security, "authenticated");
            });
        }
        // AUTH_DONE is the last frame of what we sent (the client signs it); what we received
        // up to the request is what we sign.
        self.send_control(
            cid,
            Control::AuthDone {
                global_id,
                con_mode,
                auth_payload,
            },
        );
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        let sha256 = c.auth.finish_transcript();
        if let Err(reason) = self.switch_mode(cid, mode) {
            return self.fail(cid, reason);
        }
        self.send_control(cid, Control::AuthSignature { sha256 });
        Ok(())
    }

    /// The client's AUTH_SIGNATURE: the session phase begins (we wait for its ident).
    pub(super) fn on_client_signature(
        &mut self,
        cid: ConnId,
        frame: Frame,
        sha256: &[u8; 32],
    ) -> Flow {
        self.intercept(cid, Step::HandleAuthRequestAcceptingSign, || {
            Some(Trigger::Frame(frame))
        })?;
        let c = self.conns.get_mut(&cid).ok_or(Halt::Closed)?;
        if !c.auth.signature_ok(sha256) {
            return self.fail(cid, FaultReason::BadSignature);
        }
        c.set_state(ConnState::Session);
        Ok(())
    }
}
