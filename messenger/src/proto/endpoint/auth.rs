//! Authentication, behind one seam (msgr2.md §1.6 steps 3–5, §1.7 "Auth-none payloads").
//!
//! The handshake asks an [`Auth`] what to send and what the peer's answer means, and gets back
//! the connection mode ([`ConMode`]) the exchange settled on; sessions never see any of it.
//! Auth none is the only method now. Cephx would be another [`Auth`] variant (with the state
//! its rounds keep per connection, and a session key that makes [`Auth::signature`] an HMAC of
//! the pre-auth transcript), and secure mode another [`ConMode`], whose frame cipher the
//! connection installs where the handshake matches on the mode.

use bytes::Bytes;

use crate::proto::control::{AuthNonePayload, Control, AUTH_METHOD_NONE, CON_MODE_CRC};
use crate::proto::wire::{EntityName, EntityType};

use super::fault::FaultReason;

/// `-EOPNOTSUPP`: Ceph's result code in AUTH_BAD_METHOD for a method it does not offer.
const EOPNOTSUPP: i32 = -95;

/// An auth method, with both its client and its server half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Auth {
    /// `AUTH_METHOD_NONE`: the peer is who it says; signatures are 32 zero bytes.
    None,
}

/// How frames are protected once auth is done (AUTH_DONE's `con_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConMode {
    /// `CON_MODE_CRC`: CRC-32C only, no encryption (msgr2.md §1.2).
    Crc,
}

impl ConMode {
    pub(super) fn to_wire(self) -> u32 {
        match self {
            ConMode::Crc => CON_MODE_CRC,
        }
    }
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
    /// AUTH_BAD_METHOD: not a method or mode we offer; the client may try another.
    BadMethod(Control),
}

impl Auth {
    /// The client's first AUTH_REQUEST to a peer of type `peer_type`.
    pub(super) fn client_request(&self, me: &EntityName, peer_type: EntityType) -> Control {
        match self {
            Auth::None => {
                let name = me.clone();
                // A MonClient talks to monitors; everything else presents an authorizer.
                let p = if peer_type == EntityType::MON && name.ty != EntityType::MON {
                    AuthNonePayload::MonClient { name, global_id: 0 }
                } else {
                    AuthNonePayload::Authorizer {
                        struct_v: 1,
                        name,
                        global_id: 0,
                    }
                };
                Control::AuthRequest {
                    method: AUTH_METHOD_NONE,
                    preferred_modes: vec![CON_MODE_CRC],
                    auth_payload: p.encode(),
                }
            }
        }
    }

    /// The client's answer to AUTH_REPLY_MORE: the AUTH_REQUEST_MORE payload, or `None` when
    /// this method never takes more rounds (a peer asking for them is confused).
    pub(super) fn client_more(&self, _payload: &[u8]) -> Option<Bytes> {
        match self {
            Auth::None => None,
        }
    }

    /// The client's reading of AUTH_DONE: the connection mode to switch to.
    pub(super) fn client_done(
        &self,
        con_mode: u32,
        _payload: &[u8],
    ) -> Result<ConMode, FaultReason> {
        match (self, con_mode) {
            (Auth::None, CON_MODE_CRC) => Ok(ConMode::Crc),
            (Auth::None, other) => Err(FaultReason::UnsupportedConMode(other)),
        }
    }

    /// The server's answer to AUTH_REQUEST. Auth none takes the global_id the client asks
    /// for, or assigns the next of `next_global_id` (as a monitor does on first contact).
    pub(super) fn server_request(
        &self,
        method: u32,
        modes: &[u32],
        payload: &[u8],
        next_global_id: &mut u64,
    ) -> ServerAuth {
        match self {
            Auth::None => {
                if method != AUTH_METHOD_NONE || !modes.contains(&CON_MODE_CRC) {
                    return ServerAuth::BadMethod(Control::AuthBadMethod {
                        method,
                        result: EOPNOTSUPP,
                        allowed_methods: vec![AUTH_METHOD_NONE],
                        allowed_modes: vec![CON_MODE_CRC],
                    });
                }
                let requested = AuthNonePayload::decode(payload)
                    .map(|p| p.global_id())
                    .unwrap_or(0);
                let global_id = if requested != 0 {
                    requested
                } else {
                    // Our own counter, one per client authenticated: far from u64::MAX.
                    *next_global_id += 1;
                    *next_global_id
                };
                ServerAuth::Done {
                    global_id,
                    mode: ConMode::Crc,
                    payload: Bytes::new(),
                }
            }
        }
    }

    /// Our AUTH_SIGNATURE (both sides send one).
    pub(super) fn signature(&self) -> [u8; 32] {
        match self {
            Auth::None => [0; 32],
        }
    }

    /// Whether the peer's AUTH_SIGNATURE is the one expected.
    pub(super) fn signature_ok(&self, sha256: &[u8; 32]) -> bool {
        match self {
            Auth::None => *sha256 == [0; 32],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::control::AUTH_METHOD_CEPHX;

    #[test]
    fn none_assigns_a_global_id_only_when_none_is_asked_for() {
        let me = EntityName::new(EntityType::CLIENT, "admin");
        let Control::AuthRequest { auth_payload, .. } =
            Auth::None.client_request(&me, EntityType::MON)
        else {
            panic!("an AUTH_REQUEST")
        };
        let mut next = 4096;
        let reply = Auth::None.server_request(AUTH_METHOD_NONE, &[1], &auth_payload, &mut next);
        assert!(
            matches!(
                reply,
                ServerAuth::Done {
                    global_id: 4097,
                    ..
                }
            ),
            "{reply:?}"
        );
        let asked = AuthNonePayload::Authorizer {
            struct_v: 1,
            name: me,
            global_id: 77,
        }
        .encode();
        let reply = Auth::None.server_request(AUTH_METHOD_NONE, &[1], &asked, &mut next);
        assert!(
            matches!(reply, ServerAuth::Done { global_id: 77, .. }),
            "{reply:?}"
        );
        assert_eq!(next, 4097);
    }

    #[test]
    fn none_refuses_other_methods_and_modes() {
        let mut next = 0;
        for (method, modes) in [(AUTH_METHOD_CEPHX, vec![2, 1]), (AUTH_METHOD_NONE, vec![2])] {
            let reply = Auth::None.server_request(method, &modes, &[], &mut next);
            assert!(
                matches!(
                    reply,
                    ServerAuth::BadMethod(Control::AuthBadMethod { result: -95, .. })
                ),
                "{method} {modes:?}: {reply:?}"
            );
        }
        assert_eq!(
            Auth::None.client_done(2, &[]),
            Err(FaultReason::UnsupportedConMode(2))
        );
        assert!(Auth::None.signature_ok(&Auth::None.signature()));
        assert!(!Auth::None.signature_ok(&[1; 32]));
    }
}
