//! Authentication, behind one seam (msgr2.md §1.6 steps 3–5; msgr2-auth.md).
//!
//! The handshake asks an [`Auth`] (one per endpoint: configuration, random source, tickets)
//! what to send and what the peer's answer means, keeping each connection's state in a
//! [`ConnAuth`]; it gets back the connection mode ([`ConMode`]) the exchange settled on.
//! Sessions never see any of it.
//!
//! Client: auth none, or cephx: to monitors AUTH_MODE_MON (challenge, proof, session key,
//! tickets, connection secret), to other daemons an authorizer with the ticket a monitor gave
//! this endpoint (answering the service's challenge); crc or secure mode by the
//! `ms_*_mode` preference lists.
//! Server: auth none, or cephx as a monitor answers AUTH_MODE_MON, with the keys of a keyring
//! (authorizers, to and from other daemons, come later); the mode is the client's most
//! preferred one that the server allows, as Ceph picks it.
//! AUTH_SIGNATURE: each side signs every byte it received before auth was done, with the
//! session key (32 zero bytes without one).

use bytes::Bytes;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::proto::cephx::client::{answer_challenge, read_auth_done, read_authorize_reply};
use crate::proto::cephx::msgs::{
    decode_authorize_challenge, encode_authorizer, encode_server_challenge, Ticket,
};
use crate::proto::cephx::renewal::{
    read_renewal_reply, read_renewal_request, renewal_reply, renewal_request,
};
use crate::proto::cephx::server::{
    check_proof, encode_authorize_challenge, encode_authorize_reply, open_authorize, open_ticket,
    wanted_services, AuthorizerRequest, Grant, SERVICE_KEY_SECRET_ID,
};
use crate::proto::cephx::{CephxError, CryptoKey, KeyType, Secret};
use crate::proto::control::{AuthNonePayload, Control};
use crate::proto::message::Message;
use crate::proto::secure::{SecureError, SECRET_LEN};
use crate::proto::wire::{EntityName, EntityType};

use super::config::{AuthConfig, AuthMethod, ModeName, Security};
use super::fault::FaultReason;
use super::timer::Time;

/// `-EOPNOTSUPP`: Ceph's result code in AUTH_BAD_METHOD for a method it does not offer.
const EOPNOTSUPP: i32 = -95;
/// `-EACCES`: Ceph's result code in AUTH_BAD_METHOD for a cephx proof that fails.
const EACCES: i32 = -13;

/// How frames are protected once auth is done (AUTH_DONE's `con_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConMode {
    /// `CON_MODE_CRC`: CRC-32C only, no encryption (msgr2.md §1.2).
    Crc,
    /// `CON_MODE_SECURE`: AES-128-GCM, keyed by this 64-byte connection secret.
    Secure(Secret),
}

/// What a server answers to AUTH_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ServerAuth {
    /// AUTH_DONE, then (at once) our AUTH_SIGNATURE.
    Done {
        global_id: u64,
        mode: ConMode,
        payload: Bytes,
    },
    /// AUTH_REPLY_MORE with this payload (cephx's challenge).
    More(Bytes),
    /// AUTH_BAD_METHOD: not a method or mode we offer, or a failed proof; the client may
    /// try another.
    BadMethod(Control),
}

/// AUTH_BAD_METHOD as a client reads it: the peer's result code and what it allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusal<'a> {
    pub(super) result: i32,
    pub(super) methods: &'a [u32],
    pub(super) modes: &'a [u32],
}

/// What a client does with AUTH_BAD_METHOD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BadMethod {
    /// Try this AUTH_REQUEST (another method both sides allow) on the same connection.
    Retry(Control),
    Fail(FaultReason),
}

/// Every byte a connection received and sent before auth was done.
#[derive(Debug, Default)]
pub(super) struct Transcript {
    pub(super) rx: Vec<u8>,
    pub(super) tx: Vec<u8>,
}

/// A server's cephx challenge awaiting its answer: to whom, and the mode chosen meanwhile.
#[derive(Debug)]
struct Pending {
    challenge: u64,
    mode: ModeName,
    /// The monitor exchange's client (who it claims to be); `None`: an authorizer's
    /// presenter (its answer re-presents the authorizer).
    mon_client: Option<EntityName>,
}

/// A client's authorizer to a service: our global_id, the ticket, the authorizer's nonce,
/// and whether the service's challenge was answered (once only).
#[derive(Debug)]
struct Authorizing {
    global_id: u64,
    ticket: Ticket,
    nonce: u64,
    answered: bool,
}

/// One connection's auth state.
#[derive(Debug)]
pub(super) struct ConnAuth {
    /// Methods tried on this connection (AUTH_BAD_METHOD lets a client try another).
    tried: Vec<AuthMethod>,
    /// Client: the modes of our AUTH_REQUEST.
    modes_offered: Vec<ModeName>,
    /// cephx: our proof went out, so a refusal now means the key was wrong.
    proved: bool,
    /// cephx to a service.
    authorizer: Option<Authorizing>,
    session_key: Option<CryptoKey>,
    /// Recorded until auth is done (then `None`).
    pub(super) transcript: Option<Transcript>,
    /// What we sent before auth was done, kept to check the peer's signature.
    sent: Vec<u8>,
    /// Once auth is done: the method and mode it settled on.
    pub(super) security: Option<Security>,
    /// Server: the cephx challenge sent, and what it answers.
    pending: Option<Pending>,
    /// Server: who proved to hold their key (cephx).
    pub(super) authenticated: Option<EntityName>,
}

impl Default for ConnAuth {
    fn default() -> Self {
        ConnAuth {
            tried: Vec::new(),
            modes_offered: Vec::new(),
            proved: false,
            authorizer: None,
            session_key: None,
            transcript: Some(Transcript::default()),
            sent: Vec::new(),
            security: None,
            pending: None,
            authenticated: None,
        }
    }
}

impl ConnAuth {
    fn method(&self) -> Option<AuthMethod> {
        self.tried.last().copied()
    }

    /// Ends the pre-auth phase: our AUTH_SIGNATURE over what we received. What we sent is
    /// kept for [`Auth::signature_ok`].
    pub(super) fn finish_transcript(&mut self) -> [u8; 32] {
        let t = self.transcript.take().unwrap_or_default();
        self.sent = t.tx;
        match &self.session_key {
            Some(k) => k.hmac_sha256(&t.rx),
            None => [0; 32],
        }
    }

    /// Whether the peer's AUTH_SIGNATURE signs what we sent.
    pub(super) fn signature_ok(&mut self, sha256: &[u8; 32]) -> bool {
        let sent = std::mem::take(&mut self.sent);
        match &self.session_key {
            Some(k) => k.verify_hmac_sha256(&sent, sha256),
            None => *sha256 == [0; 32],
        }
    }
}

/// An endpoint's authentication: what it offers, its random source (tickets are in
/// `cfg.tickets`, shared with the messenger's other endpoints).
pub(super) struct Auth {
    cfg: AuthConfig,
    /// Our entity type: the service our authorizers must name.
    me: EntityType,
    rng: ChaCha20Rng,
    /// Server: seals the blobs of tickets we issue for services without a secret of their
    /// own (only we read them back).
    ticket_secret: CryptoKey,
}

impl Auth {
    pub(super) fn new(cfg: AuthConfig, me: EntityType) -> Auth {
        let rng = ChaCha20Rng::from_seed(cfg.entropy.0);
        let ticket_secret = random_key(&mut ChaCha20Rng::from_seed(cfg.ticket_seed.0));
        Auth {
            cfg,
            me,
            rng,
            ticket_secret,
        }
    }

    /// The methods we can use with a peer of `peer_type`, preferred first: cephx needs our
    /// key, and for a service, a ticket for it.
    fn usable(&self, peer_type: EntityType, now: Time) -> impl Iterator<Item = AuthMethod> + '_ {
        self.cfg
            .client_required
            .iter()
            .copied()
            .filter(move |m| match m {
                AuthMethod::None => true,
                AuthMethod::Cephx => {
                    self.cfg.key.is_some()
                        && (peer_type == EntityType::MON
                            || self.cfg.tickets.get(peer_type, now).is_some())
                }
            })
    }

    fn modes_for(&self, method: AuthMethod, peer_type: EntityType) -> Vec<ModeName> {
        match method {
            // No key, no connection secret: crc only, as Ceph offers with auth none.
            AuthMethod::None => vec![ModeName::Crc],
            AuthMethod::Cephx if peer_type == EntityType::MON => self.cfg.mon_client_mode.clone(),
            AuthMethod::Cephx => self.cfg.client_mode.clone(),
        }
    }

    /// The client's AUTH_REQUEST to a peer of type `peer_type` with the first method not
    /// yet tried (and in `allowed`, when the peer said which it allows).
    pub(super) fn client_request(
        &mut self,
        me: &EntityName,
        peer_type: EntityType,
        st: &mut ConnAuth,
        now: Time,
        allowed: Option<&[u32]>,
    ) -> Option<Control> {
        let method = self
            .usable(peer_type, now)
            .find(|m| !st.tried.contains(m) && allowed.is_none_or(|a| a.contains(&m.to_wire())))?;
        st.tried.push(method);
        st.modes_offered = self.modes_for(method, peer_type);
        let preferred_modes = st.modes_offered.iter().map(|m| m.to_wire()).collect();
        if method == AuthMethod::Cephx && peer_type != EntityType::MON {
            let (global_id, ticket) = self.cfg.tickets.get(peer_type, now).expect("usable");
            let nonce = self.rng.next_u64();
            let auth_payload = encode_authorizer(global_id, &ticket, nonce, None);
            // The authorizer proves what we hold: a refusal from here on is of our ticket.
            st.proved = true;
            st.authorizer = Some(Authorizing {
                global_id,
                ticket,
                nonce,
                answered: false,
            });
            return Some(Control::AuthRequest {
                method: method.to_wire(),
                preferred_modes,
                auth_payload,
            });
        }
        let name = me.clone();
        // A MonClient talks to monitors (cephx's AUTH_MODE_MON payload has the same layout);
        // everything else presents an authorizer.
        let p = if peer_type == EntityType::MON && name.ty != EntityType::MON {
            AuthNonePayload::MonClient { name, global_id: 0 }
        } else {
            AuthNonePayload::Authorizer {
                struct_v: 1,
                name,
                global_id: 0,
            }
        };
        Some(Control::AuthRequest {
            method: method.to_wire(),
            preferred_modes,
            auth_payload: p.encode(),
        })
    }

    /// The client's answer to AUTH_REPLY_MORE: the AUTH_REQUEST_MORE payload, or `None`
    /// when no more rounds are due (a peer asking for them is confused).
    pub(super) fn client_more(
        &mut self,
        st: &mut ConnAuth,
        payload: &[u8],
    ) -> Option<Result<Bytes, FaultReason>> {
        if let Some(a) = st.authorizer.as_mut() {
            // A service's challenge: the same authorizer again, answering it. Once only.
            if a.answered {
                return None;
            }
            a.answered = true;
            let answer = decode_authorize_challenge(&a.ticket.session_key, payload)
                .map(|c| encode_authorizer(a.global_id, &a.ticket, a.nonce, Some(c)))
                .map_err(Into::into);
            return Some(answer);
        }
        match (st.method(), &self.cfg.key) {
            (Some(AuthMethod::Cephx), Some(key)) if !st.proved => {
                st.proved = true;
                let client_challenge = self.rng.next_u64();
                Some(answer_challenge(key, payload, client_challenge).map_err(Into::into))
            }
            _ => None,
        }
    }

    /// The client's reading of AUTH_DONE: the connection mode to switch to.
    pub(super) fn client_done(
        &mut self,
        st: &mut ConnAuth,
        now: Time,
        global_id: u64,
        con_mode: u32,
        payload: &[u8],
    ) -> Result<ConMode, FaultReason> {
        let mode = ModeName::from_wire(con_mode)
            .filter(|m| st.modes_offered.contains(m))
            .ok_or(FaultReason::UnsupportedConMode(con_mode))?;
        let method = st
            .method()
            .ok_or(FaultReason::UnsupportedConMode(con_mode))?;
        let secret = match (method, &self.cfg.key, &st.authorizer) {
            (AuthMethod::Cephx, _, Some(a)) => {
                st.session_key = Some(a.ticket.session_key.clone());
                read_authorize_reply(&a.ticket, a.nonce, payload)?
            }
            (AuthMethod::Cephx, Some(key), None) => {
                let mut done = read_auth_done(key, payload)?;
                st.session_key = Some(done.auth.session_key.clone());
                tracing::debug!(
                    tickets = ?done.tickets.iter().map(|t| t.service).collect::<Vec<_>>(),
                    "cephx: authenticated with the monitor"
                );
                // The auth ticket is kept with the others: renewals present it.
                done.tickets.push(done.auth);
                self.cfg.tickets.replace(global_id, done.tickets, now);
                done.connection_secret
            }
            // Auth none offers crc only, checked above.
            _ => Secret::new(Vec::new()),
        };
        let con = match mode {
            ModeName::Crc => ConMode::Crc,
            ModeName::Secure if secret.len() != SECRET_LEN => {
                return Err(SecureError::BadSecret(secret.len()).into())
            }
            ModeName::Secure => ConMode::Secure(secret),
        };
        st.security = Some(Security { method, mode });
        Ok(con)
    }

    /// The client's reading of AUTH_BAD_METHOD.
    pub(super) fn client_bad_method(
        &mut self,
        me: &EntityName,
        peer_type: EntityType,
        st: &mut ConnAuth,
        now: Time,
        refusal: Refusal<'_>,
    ) -> BadMethod {
        let Refusal {
            result,
            methods: allowed_methods,
            modes: allowed_modes,
        } = refusal;
        if st.proved {
            return BadMethod::Fail(FaultReason::AuthRejected { result });
        }
        let ours = st.method().map(|m| m.to_wire());
        let method_allowed = ours.is_some_and(|m| allowed_methods.contains(&m));
        if let Some(retry) = self.client_request(me, peer_type, st, now, Some(allowed_methods)) {
            return BadMethod::Retry(retry);
        }
        BadMethod::Fail(if method_allowed {
            FaultReason::ConModeRefused {
                allowed: allowed_modes.to_vec(),
            }
        } else {
            FaultReason::AuthMethodRefused {
                allowed: allowed_methods.to_vec(),
            }
        })
    }

    /// What a server allows from a peer of `peer_type`: methods, and the modes cephx may
    /// use (clients: `auth_service_required` and the service modes; daemons: the cluster
    /// ones).
    fn allowed(&self, peer_type: EntityType) -> (&[AuthMethod], &[ModeName]) {
        if peer_type == EntityType::CLIENT {
            (&self.cfg.service_required, &self.cfg.service_mode)
        } else {
            (&self.cfg.cluster_required, &self.cfg.cluster_mode)
        }
    }

    /// AUTH_BAD_METHOD with what we allow from `peer_type`.
    fn bad_method(&self, peer_type: EntityType, method: u32, result: i32) -> ServerAuth {
        let (methods, modes) = self.allowed(peer_type);
        let modes = if methods.contains(&AuthMethod::Cephx) {
            modes.iter().map(|m| m.to_wire()).collect()
        } else {
            vec![ModeName::Crc.to_wire()]
        };
        ServerAuth::BadMethod(Control::AuthBadMethod {
            method,
            result,
            allowed_methods: methods.iter().map(|m| m.to_wire()).collect(),
            allowed_modes: modes,
        })
    }

    /// The server's answer to AUTH_REQUEST: auth none at once (taking the global_id the
    /// client asks for, or assigning the next of `next_global_id`, as a monitor does on
    /// first contact), or cephx's challenge.
    pub(super) fn server_request(
        &mut self,
        st: &mut ConnAuth,
        peer_type: EntityType,
        method: u32,
        modes: &[u32],
        payload: &[u8],
        next_global_id: &mut u64,
    ) -> ServerAuth {
        st.pending = None;
        let (methods, cephx_modes) = self.allowed(peer_type);
        let Some(m) = methods.iter().copied().find(|m| m.to_wire() == method) else {
            tracing::info!(%peer_type, method, ?methods, "auth method refused: not allowed");
            return self.bad_method(peer_type, method, EOPNOTSUPP);
        };
        let usable: &[ModeName] = match m {
            AuthMethod::None => &[ModeName::Crc],
            AuthMethod::Cephx => cephx_modes,
        };
        // The client's most preferred mode that we allow (Ceph's pick_mode).
        let mode = modes
            .iter()
            .filter_map(|w| ModeName::from_wire(*w))
            .find(|m| usable.contains(m));
        let Some(mode) = mode else {
            tracing::info!(%peer_type, ?modes, allowed = ?usable, "connection modes refused: none allowed");
            return self.bad_method(peer_type, method, EOPNOTSUPP);
        };
        let request = AuthNonePayload::decode(payload);
        match m {
            AuthMethod::None => {
                let requested = request.map(|p| p.global_id()).unwrap_or(0);
                let global_id = if requested != 0 {
                    requested
                } else {
                    next_id(next_global_id)
                };
                st.tried.push(AuthMethod::None);
                st.security = Some(Security {
                    method: AuthMethod::None,
                    mode: ModeName::Crc,
                });
                ServerAuth::Done {
                    global_id,
                    mode: ConMode::Crc,
                    payload: Bytes::new(),
                }
            }
            AuthMethod::Cephx => {
                st.tried.push(AuthMethod::Cephx);
                match request {
                    // The monitor exchange.
                    Ok(AuthNonePayload::MonClient { name, .. }) if self.cfg.keyring.is_some() => {
                        let challenge = self.rng.next_u64();
                        st.pending = Some(Pending {
                            challenge,
                            mode,
                            mon_client: Some(name),
                        });
                        ServerAuth::More(encode_server_challenge(challenge))
                    }
                    // An authorizer: checked, then challenged (as a Ceph OSD always does).
                    _ => match self.open_authorizer(payload) {
                        Ok(opened) => {
                            let challenge = self.rng.next_u64();
                            st.pending = Some(Pending {
                                challenge,
                                mode,
                                mon_client: None,
                            });
                            ServerAuth::More(encode_authorize_challenge(&opened.2, challenge))
                        }
                        Err(e) => {
                            tracing::info!(reason = %e, "cephx: authorizer refused");
                            self.bad_method(peer_type, method, EACCES)
                        }
                    },
                }
            }
        }
    }

    /// The server's answer to AUTH_REQUEST_MORE (cephx's proof): AUTH_DONE with the session
    /// key, tickets and connection secret, or AUTH_BAD_METHOD (-EACCES) for a name we have no
    /// key of or a proof that fails. `None`: no challenge was pending.
    pub(super) fn server_more(
        &mut self,
        st: &mut ConnAuth,
        peer_type: EntityType,
        payload: &[u8],
        next_global_id: &mut u64,
    ) -> Option<Result<ServerAuth, FaultReason>> {
        let Pending {
            challenge,
            mode,
            mon_client,
        } = st.pending.take()?;
        let refused = |this: &Self, why: &dyn std::fmt::Display| {
            tracing::info!(reason = %why, "cephx: authentication failed");
            Some(Ok(this.bad_method(
                peer_type,
                AuthMethod::Cephx.to_wire(),
                EACCES,
            )))
        };
        let secret = self.connection_secret(mode);
        let (name, global_id, session_key, payload) = match mon_client {
            Some(name) => {
                let key = self
                    .cfg
                    .keyring
                    .as_ref()
                    .and_then(|k| k.get(&name))
                    .cloned();
                // No such entity, or the wrong key: Ceph answers both the same way.
                let proven = match key.as_ref().map(|k| check_proof(k, challenge, payload)) {
                    Some(Ok(Some(req))) => req,
                    Some(Err(e)) => return Some(Err(e.into())),
                    Some(Ok(None)) => return refused(self, &format!("wrong key for {name}")),
                    None => return refused(self, &format!("no key for {name}")),
                };
                let key = key.expect("proven");
                let session_key = random_key(&mut self.rng);
                let global_id = next_id(next_global_id);
                let payload = self
                    .grant(&name, global_id, &session_key, proven.other_keys)
                    .with_connection_secret(secret.clone())
                    .auth_done_payload(&key);
                (name, global_id, session_key, payload)
            }
            None => match self.open_authorizer(payload) {
                Ok((name, global_id, session_key, nonce, Some(answer)))
                    if answer == challenge.wrapping_add(1) =>
                {
                    let payload = encode_authorize_reply(&session_key, nonce, &secret);
                    (name, global_id, session_key, payload)
                }
                Ok(_) => return refused(self, &CephxError::BadChallengeAnswer),
                Err(e) => return refused(self, &e),
            },
        };
        st.session_key = Some(session_key);
        st.security = Some(Security {
            method: AuthMethod::Cephx,
            mode,
        });
        st.authenticated = Some(name);
        let mode = match mode {
            ModeName::Crc => ConMode::Crc,
            ModeName::Secure => ConMode::Secure(secret),
        };
        Some(Ok(ServerAuth::Done {
            global_id,
            mode,
            payload,
        }))
    }

    /// What a monitor grants `name` (`global_id`, auth session key `session_key`): fresh
    /// session keys for the services of `other_keys`, their tickets sealed under the
    /// services' secrets where the keyring has them.
    fn grant<'a>(
        &'a mut self,
        name: &'a EntityName,
        global_id: u64,
        session_key: &CryptoKey,
        other_keys: u32,
    ) -> Grant<'a> {
        let service_keys = wanted_services(other_keys)
            .map(|t| (t, random_key(&mut self.rng)))
            .collect();
        let service_secrets = self.cfg.keyring.as_ref().map_or(Vec::new(), |keyring| {
            wanted_services(other_keys)
                .filter_map(|t| Some((t, keyring.get(&EntityName::new(t, ""))?)))
                .collect()
        });
        Grant {
            name,
            global_id,
            session_key: session_key.clone(),
            service_keys,
            connection_secret: Secret::new(Vec::new()),
            ticket_secret: &self.ticket_secret,
            service_secrets,
            service_ttl: self.cfg.service_ticket_ttl,
            now_unix: self.cfg.clock.now(),
        }
    }

    /// When the tickets we hold are next due for renewal; `None` without a key (we never
    /// authenticated with a monitor) or tickets.
    pub(super) fn next_renewal(&self) -> Option<Time> {
        self.cfg.key.as_ref()?;
        self.cfg.tickets.next_renewal()
    }

    /// The MAuth renewing the tickets due at `now`; `None` when none is due, or the auth
    /// ticket that would ask for them has expired.
    pub(super) fn renewal_request(&mut self, now: Time) -> Option<Message> {
        let due = self.cfg.tickets.renewal_due(now)?;
        let nonce = self.rng.next_u64();
        Some(renewal_request(
            due.global_id,
            &due.auth,
            nonce,
            due.services,
        ))
    }

    /// Takes the monitor's MAuthReply to our renewal: the number of tickets renewed.
    pub(super) fn take_renewal(&mut self, front: &[u8], now: Time) -> Result<usize, CephxError> {
        let (_, auth) = self
            .cfg
            .tickets
            .get(EntityType::AUTH, now)
            .ok_or(CephxError::NoAuthTicket)?;
        let tickets = read_renewal_reply(&auth.session_key, front)?;
        let n = tickets.len();
        self.cfg.tickets.renew(tickets, now);
        Ok(n)
    }

    /// Whether we answer ticket renewals: a monitor with a keyring (it issued the tickets).
    pub(super) fn issues_tickets(&self) -> bool {
        self.me == EntityType::MON && self.cfg.keyring.is_some()
    }

    /// A monitor's MAuthReply to a client's renewal: new tickets for the services asked
    /// for, or -EACCES when the auth ticket does not open with our ticket secret or the
    /// authorizer does not open with its session key.
    pub(super) fn answer_renewal(&mut self, front: &[u8]) -> Message {
        match self.renew(front) {
            Ok((global_id, result)) => renewal_reply(global_id, 0, &result),
            Err(e) => {
                tracing::info!(reason = %e, "cephx: ticket renewal refused");
                renewal_reply(0, EACCES, &[])
            }
        }
    }

    fn renew(&mut self, front: &[u8]) -> Result<(u64, Bytes), CephxError> {
        let (req, services) = read_renewal_request(front)?;
        if req.service != EntityType::AUTH {
            return Err(CephxError::WrongService {
                got: req.service.0,
                want: EntityType::AUTH.0,
            });
        }
        let now_unix = self.cfg.clock.now();
        let (name, global_id, session_key) =
            open_ticket(&self.ticket_secret, &req.ticket, now_unix)?;
        if global_id != req.global_id {
            return Err(CephxError::GlobalIdMismatch);
        }
        // Only a holder of the session key seals an authorizer that opens.
        open_authorize(&session_key, &req.sealed)?;
        let result = self
            .grant(&name, global_id, &session_key, services)
            .renewal_result();
        Ok((global_id, result))
    }

    /// A fresh connection secret: 64 bytes for secure mode, none for crc.
    fn connection_secret(&mut self, mode: ModeName) -> Secret {
        let len = match mode {
            ModeName::Secure => SECRET_LEN,
            ModeName::Crc => 0,
        };
        let mut secret = vec![0u8; len];
        self.rng.fill_bytes(&mut secret);
        Secret::new(secret)
    }

    /// Opens an authorizer for our service with our service secret (the keyring's `TYPE.`
    /// entry): who presents it, its global_id, the session key, its nonce and its answer to
    /// our challenge, if any.
    fn open_authorizer(
        &self,
        payload: &[u8],
    ) -> Result<(EntityName, u64, CryptoKey, u64, Option<u64>), CephxError> {
        let req = AuthorizerRequest::decode(payload)?;
        if req.service != self.me {
            return Err(CephxError::WrongService {
                got: req.service.0,
                want: self.me.0,
            });
        }
        let secret = (req.ticket.secret_id == SERVICE_KEY_SECRET_ID)
            .then(|| {
                self.cfg
                    .keyring
                    .as_ref()?
                    .get(&EntityName::new(self.me, ""))
            })
            .flatten()
            .ok_or(CephxError::NoServiceSecret(req.ticket.secret_id))?;
        let (name, global_id, session_key) =
            open_ticket(secret, &req.ticket, self.cfg.clock.now())?;
        if global_id != req.global_id {
            return Err(CephxError::GlobalIdMismatch);
        }
        let (nonce, answer) = open_authorize(&session_key, &req.sealed)?;
        Ok((name, global_id, session_key, nonce, answer))
    }
}

/// The next global_id of our own counter (one per client authenticated: far from u64::MAX).
fn next_id(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

/// A fresh AES session key.
fn random_key(rng: &mut ChaCha20Rng) -> CryptoKey {
    let mut b = vec![0u8; 16];
    rng.fill_bytes(&mut b);
    CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(b)).expect("16 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cephx::{CryptoKey, KeyType};
    use crate::proto::control::AUTH_METHOD_CEPHX;

    fn auth(methods: &[AuthMethod], key: bool) -> Auth {
        let key =
            key.then(|| CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(vec![7; 16])).unwrap());
        let cfg = AuthConfig {
            client_required: methods.to_vec(),
            key,
            ..AuthConfig::default()
        };
        Auth::new(cfg, EntityType::CLIENT)
    }

    fn me() -> EntityName {
        EntityName::new(EntityType::CLIENT, "admin")
    }

    fn refusal<'a>(result: i32, methods: &'a [u32], modes: &'a [u32]) -> Refusal<'a> {
        Refusal {
            result,
            methods,
            modes,
        }
    }

    /// What a client offers: cephx only with a key and (until authorizers) to a monitor;
    /// auth none with crc only; cephx with the mode list for the peer's type.
    #[test]
    fn the_first_request_offers_what_the_key_and_peer_allow() {
        use AuthMethod::*;
        /// Methods configured, key present, peer type: (method, modes) offered, if any.
        type Row = (
            &'static [AuthMethod],
            bool,
            EntityType,
            Option<(u32, Vec<u32>)>,
        );
        #[rustfmt::skip]
        let rows: [Row; 6] = [
            (&[Cephx], true, EntityType::MON, Some((2, vec![2, 1]))),
            (&[Cephx, None], false, EntityType::MON, Some((1, vec![1]))),
            (&[Cephx], false, EntityType::MON, Option::None),
            (&[Cephx, None], true, EntityType::OSD, Some((1, vec![1]))),
            (&[Cephx], true, EntityType::OSD, Option::None),
            (&[None, Cephx], true, EntityType::MON, Some((1, vec![1]))),
        ];
        for (methods, key, peer, want) in rows {
            let mut st = ConnAuth::default();
            let got = auth(methods, key)
                .client_request(&me(), peer, &mut st, Time(0), Option::None)
                .map(|c| match c {
                    Control::AuthRequest {
                        method,
                        preferred_modes,
                        ..
                    } => (method, preferred_modes),
                    other => panic!("{other:?}"),
                });
            assert_eq!(got, want, "{methods:?} key={key} {peer}");
        }
    }

    /// AUTH_BAD_METHOD: after our proof it is a rejected key; before, another method both
    /// allow is tried, else the refusal names methods or modes.
    #[test]
    fn auth_bad_method_is_read_as_a_retry_or_the_right_refusal() {
        use AuthMethod::*;
        let mut a = auth(&[Cephx, None], true);
        let first = |a: &mut Auth, st: &mut ConnAuth| {
            a.client_request(&me(), EntityType::MON, st, Time(0), Option::None)
        };

        let mut st = ConnAuth::default();
        first(&mut a, &mut st);
        st.proved = true;
        let got = a.client_bad_method(
            &me(),
            EntityType::MON,
            &mut st,
            Time(0),
            refusal(-13, &[2], &[1]),
        );
        assert_eq!(
            got,
            BadMethod::Fail(FaultReason::AuthRejected { result: -13 })
        );

        let mut st = ConnAuth::default();
        first(&mut a, &mut st);
        let got = a.client_bad_method(
            &me(),
            EntityType::MON,
            &mut st,
            Time(0),
            refusal(-95, &[1], &[1]),
        );
        assert!(
            matches!(
                got,
                BadMethod::Retry(Control::AuthRequest { method: 1, .. })
            ),
            "{got:?}"
        );
        // Auth none refused as well: nothing left.
        let got = a.client_bad_method(
            &me(),
            EntityType::MON,
            &mut st,
            Time(0),
            refusal(-95, &[2], &[2]),
        );
        assert_eq!(
            got,
            BadMethod::Fail(FaultReason::AuthMethodRefused { allowed: vec![2] })
        );

        let mut only_cephx = auth(&[Cephx], true);
        let mut st = ConnAuth::default();
        only_cephx.client_request(&me(), EntityType::MON, &mut st, Time(0), Option::None);
        let got = only_cephx.client_bad_method(
            &me(),
            EntityType::MON,
            &mut st,
            Time(0),
            refusal(-95, &[AUTH_METHOD_CEPHX], &[3]),
        );
        assert_eq!(
            got,
            BadMethod::Fail(FaultReason::ConModeRefused { allowed: vec![3] })
        );
    }

    /// AUTH_DONE with a mode we did not offer is refused before its payload is read, and a
    /// second challenge is not answered.
    #[test]
    fn a_mode_not_offered_and_a_second_challenge_are_refused() {
        let mut a = auth(&[AuthMethod::None], false);
        let mut st = ConnAuth::default();
        a.client_request(&me(), EntityType::MON, &mut st, Time(0), Option::None);
        assert_eq!(
            a.client_done(&mut st, Time(0), 4100, 2, &[]),
            Err(FaultReason::UnsupportedConMode(2))
        );
        let mut a = auth(&[AuthMethod::Cephx], true);
        let mut st = ConnAuth::default();
        a.client_request(&me(), EntityType::MON, &mut st, Time(0), Option::None);
        let challenge = [1, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(matches!(a.client_more(&mut st, &challenge), Some(Ok(_))));
        assert!(a.client_more(&mut st, &challenge).is_none());
    }
}
