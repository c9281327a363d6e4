//! The handshake up to the session phase, both roles (msgr2.md §1.6 steps 1–5): banner, HELLO,
//! auth and signatures. Each step checks the interceptor, moves the connection's state and
//! queues what goes out; what auth means is [`Auth`](super::auth::Auth)'s business. The session
//! phase (CLIENT_IDENT, SESSION_RECONNECT and their answers) is in `establish.rs`.

use crate::proto::control::Control;
use crate::proto::frame::{Banner, Frame, Tag};
use crate::proto::intercept::Step;
use crate::proto::wire::{AddrType, EntityAddr, EntityType};

use super::auth::{ConMode, ServerAuth};
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
                let request = self.auth.client_request(&self.config.name, peer_type);
                self.send_control(cid, request);
            }
            Role::Server => c.set_state(ConnState::Auth),
        }
        Ok(())
    }

    // ---------------------------------------------------------------- client: auth replies

    /// AUTH_BAD_METHOD: the peer offers none of our methods. We have no other to try.
    pub(super) fn on_auth_bad_method(&mut self, cid: ConnId, allowed: Vec<u32>) -> Flow {
        let reason = FaultReason::AuthMethodRefused { allowed };
        if let Some(session) = self.conns.get(&cid).and_then(|c| c.session) {
            self.events.push_back(Event::Refused {
                session,
                reason: reason.clone(),
            });
        }
        self.fail(cid, reason)
    }

    pub(super) fn on_auth_reply_more(&mut self, cid: ConnId, payload: &[u8]) -> Flow {
        match self.auth.client_more(payload) {
            Some(auth_payload) => {
                self.send_control(cid, Control::AuthRequestMore { auth_payload });
                Ok(())
            }
            None => self.unexpected(cid, Tag::AuthReplyMore),
        }
    }

    pub(super) fn on_auth_done(&mut self, cid: ConnId, con_mode: u32, payload: &[u8]) -> Flow {
        match self.auth.client_done(con_mode, payload) {
            // crc mode needs nothing installed; secure mode would install its cipher here.
            Ok(ConMode::Crc) => {}
            Err(reason) => return self.fail(cid, reason),
        }
        self.conns
            .get_mut(&cid)
            .expect("checked")
            .set_state(ConnState::AuthSign);
        let sha256 = self.auth.signature();
        self.send_control(cid, Control::AuthSignature { sha256 });
        Ok(())
    }

    /// The server's AUTH_SIGNATURE: auth is done, the session phase begins.
    pub(super) fn on_server_signature(
        &mut self,
        cid: ConnId,
        frame: Frame,
        sha256: &[u8; 32],
    ) -> Flow {
        if !self.auth.signature_ok(sha256) {
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
        let reply = self
            .auth
            .server_request(method, modes, payload, &mut self.next_global_id);
        let (global_id, mode, auth_payload) = match reply {
            ServerAuth::Done {
                global_id,
                mode,
                payload,
            } => (global_id, mode, payload),
            ServerAuth::BadMethod(reply) => {
                // Ceph's answer to a method it does not offer; the client may try another.
                self.send_control(cid, reply);
                return Ok(());
            }
        };
        self.conns
            .get_mut(&cid)
            .expect("checked")
            .set_state(ConnState::AuthSign);
        self.send_control(
            cid,
            Control::AuthDone {
                global_id,
                con_mode: mode.to_wire(),
                auth_payload,
            },
        );
        // crc mode needs nothing installed; secure mode would install its cipher here.
        let sha256 = self.auth.signature();
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
        if !self.auth.signature_ok(sha256) {
            return self.fail(cid, FaultReason::BadSignature);
        }
        self.conns
            .get_mut(&cid)
            .expect("checked")
            .set_state(ConnState::Session);
        Ok(())
    }
}
