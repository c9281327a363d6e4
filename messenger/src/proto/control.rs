//! Control frame payloads (msgr2.md §1.7): every tag but MESSAGE.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{encode_control_frame, Tag, TxQueue};
use super::wire::{
    put_bufferlist, put_u32_vec, EntityAddr, EntityAddrVec, EntityName, EntityType, Reader,
    WireError,
};

pub const AUTH_METHOD_UNKNOWN: u32 = 0;
pub const AUTH_METHOD_NONE: u32 = 1;
pub const AUTH_METHOD_CEPHX: u32 = 2;
pub const CON_MODE_CRC: u32 = 1;
pub const CON_MODE_SECURE: u32 = 2;
/// `CEPH_MSG_CONNECT_LOSSY` in the IDENT flags.
pub const IDENT_FLAG_LOSSY: u64 = 1;
/// `AUTH_MODE_MON`: the first byte of a MonClient's auth-none request.
pub const AUTH_MODE_MON: u8 = 10;

/// `utime_t`: seconds and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct UTime {
    pub sec: u32,
    pub nsec: u32,
}

impl UTime {
    pub fn from_nanos(ns: u64) -> Self {
        UTime {
            sec: (ns / 1_000_000_000) as u32,
            nsec: (ns % 1_000_000_000) as u32,
        }
    }
    pub fn as_nanos(&self) -> u64 {
        self.sec as u64 * 1_000_000_000 + self.nsec as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientIdent {
    pub addrs: EntityAddrVec,
    pub target_addr: EntityAddr,
    pub gid: i64,
    pub global_seq: u64,
    pub features_supported: u64,
    pub features_required: u64,
    pub flags: u64,
    pub client_cookie: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerIdent {
    pub addrs: EntityAddrVec,
    pub gid: i64,
    pub global_seq: u64,
    pub features_supported: u64,
    pub features_required: u64,
    pub flags: u64,
    pub server_cookie: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reconnect {
    pub addrs: EntityAddrVec,
    pub client_cookie: u64,
    pub server_cookie: u64,
    pub global_seq: u64,
    pub connect_seq: u64,
    pub msg_seq: u64,
}

/// A decoded control frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Control {
    Hello {
        entity_type: EntityType,
        peer_addr: EntityAddr,
    },
    AuthRequest {
        method: u32,
        preferred_modes: Vec<u32>,
        #[serde(serialize_with = "hex")]
        auth_payload: Bytes,
    },
    AuthBadMethod {
        method: u32,
        result: i32,
        allowed_methods: Vec<u32>,
        allowed_modes: Vec<u32>,
    },
    AuthReplyMore {
        #[serde(serialize_with = "hex")]
        auth_payload: Bytes,
    },
    AuthRequestMore {
        #[serde(serialize_with = "hex")]
        auth_payload: Bytes,
    },
    AuthDone {
        global_id: u64,
        con_mode: u32,
        #[serde(serialize_with = "hex")]
        auth_payload: Bytes,
    },
    AuthSignature {
        #[serde(serialize_with = "hex")]
        sha256: [u8; 32],
    },
    ClientIdent(ClientIdent),
    ServerIdent(ServerIdent),
    IdentMissingFeatures {
        features: u64,
    },
    SessionReconnect(Reconnect),
    SessionReset {
        full: bool,
    },
    SessionRetry {
        connect_seq: u64,
    },
    SessionRetryGlobal {
        global_seq: u64,
    },
    SessionReconnectOk {
        msg_seq: u64,
    },
    Wait,
    Keepalive2 {
        stamp: UTime,
    },
    Keepalive2Ack {
        stamp: UTime,
    },
    Ack {
        seq: u64,
    },
}

fn hex<S: serde::Serializer>(b: impl AsRef<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex_string(b.as_ref()))
}

pub fn hex_string(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Why a control payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("malformed {tag} payload: {source}")]
    Malformed {
        tag: &'static str,
        #[source]
        source: WireError,
    },
    #[error("{0} frames are not supported (compression is never negotiated)")]
    Unsupported(&'static str),
    #[error("MESSAGE is not a control frame")]
    NotControl,
}

impl Control {
    pub fn tag(&self) -> Tag {
        match self {
            Control::Hello { .. } => Tag::Hello,
            Control::AuthRequest { .. } => Tag::AuthRequest,
            Control::AuthBadMethod { .. } => Tag::AuthBadMethod,
            Control::AuthReplyMore { .. } => Tag::AuthReplyMore,
            Control::AuthRequestMore { .. } => Tag::AuthRequestMore,
            Control::AuthDone { .. } => Tag::AuthDone,
            Control::AuthSignature { .. } => Tag::AuthSignature,
            Control::ClientIdent(_) => Tag::ClientIdent,
            Control::ServerIdent(_) => Tag::ServerIdent,
            Control::IdentMissingFeatures { .. } => Tag::IdentMissingFeatures,
            Control::SessionReconnect(_) => Tag::SessionReconnect,
            Control::SessionReset { .. } => Tag::SessionReset,
            Control::SessionRetry { .. } => Tag::SessionRetry,
            Control::SessionRetryGlobal { .. } => Tag::SessionRetryGlobal,
            Control::SessionReconnectOk { .. } => Tag::SessionReconnectOk,
            Control::Wait => Tag::Wait,
            Control::Keepalive2 { .. } => Tag::Keepalive2,
            Control::Keepalive2Ack { .. } => Tag::Keepalive2Ack,
            Control::Ack { .. } => Tag::Ack,
        }
    }

    /// The payload bytes (segment 0).
    pub fn encode_payload(&self, out: &mut BytesMut) {
        match self {
            Control::Hello {
                entity_type,
                peer_addr,
            } => {
                out.put_u8(entity_type.0);
                peer_addr.encode(out);
            }
            Control::AuthRequest {
                method,
                preferred_modes,
                auth_payload,
            } => {
                out.put_u32_le(*method);
                put_u32_vec(out, preferred_modes);
                put_bufferlist(out, auth_payload);
            }
            Control::AuthBadMethod {
                method,
                result,
                allowed_methods,
                allowed_modes,
            } => {
                out.put_u32_le(*method);
                out.put_i32_le(*result);
                put_u32_vec(out, allowed_methods);
                put_u32_vec(out, allowed_modes);
            }
            Control::AuthReplyMore { auth_payload } | Control::AuthRequestMore { auth_payload } => {
                put_bufferlist(out, auth_payload)
            }
            Control::AuthDone {
                global_id,
                con_mode,
                auth_payload,
            } => {
                out.put_u64_le(*global_id);
                out.put_u32_le(*con_mode);
                put_bufferlist(out, auth_payload);
            }
            Control::AuthSignature { sha256 } => out.put_slice(sha256),
            Control::ClientIdent(c) => {
                c.addrs.encode(out);
                c.target_addr.encode(out);
                out.put_i64_le(c.gid);
                out.put_u64_le(c.global_seq);
                out.put_u64_le(c.features_supported);
                out.put_u64_le(c.features_required);
                out.put_u64_le(c.flags);
                out.put_u64_le(c.client_cookie);
            }
            Control::ServerIdent(s) => {
                s.addrs.encode(out);
                out.put_i64_le(s.gid);
                out.put_u64_le(s.global_seq);
                out.put_u64_le(s.features_supported);
                out.put_u64_le(s.features_required);
                out.put_u64_le(s.flags);
                out.put_u64_le(s.server_cookie);
            }
            Control::IdentMissingFeatures { features } => out.put_u64_le(*features),
            Control::SessionReconnect(r) => {
                r.addrs.encode(out);
                out.put_u64_le(r.client_cookie);
                out.put_u64_le(r.server_cookie);
                out.put_u64_le(r.global_seq);
                out.put_u64_le(r.connect_seq);
                out.put_u64_le(r.msg_seq);
            }
            Control::SessionReset { full } => out.put_u8(*full as u8),
            Control::SessionRetry { connect_seq: v }
            | Control::SessionRetryGlobal { global_seq: v }
            | Control::SessionReconnectOk { msg_seq: v }
            | Control::Ack { seq: v } => out.put_u64_le(*v),
            Control::Wait => {}
            Control::Keepalive2 { stamp } | Control::Keepalive2Ack { stamp } => {
                out.put_u32_le(stamp.sec);
                out.put_u32_le(stamp.nsec);
            }
        }
    }

    /// Appends the whole frame (preamble, payload, CRC) to `tx`; returns the bytes queued.
    pub fn encode_frame(&self, tx: &mut TxQueue) -> usize {
        let mut payload = BytesMut::with_capacity(128);
        self.encode_payload(&mut payload);
        encode_control_frame(tx, self.tag(), &payload)
    }

    /// Decodes the payload of a control frame with the given tag. The payload must be used
    /// exactly: trailing bytes are an error.
    pub fn decode(tag: Tag, payload: &Bytes) -> Result<Control, ControlError> {
        let malformed = |source| ControlError::Malformed {
            tag: tag.name(),
            source,
        };
        let mut r = Reader::new(payload);
        let c = Self::decode_fields(tag, &mut r, payload).map_err(malformed)?;
        r.finish().map_err(malformed)?;
        Ok(c)
    }

    fn decode_fields(tag: Tag, r: &mut Reader<'_>, payload: &Bytes) -> Result<Control, WireError> {
        // Auth payloads are sliced out of the frame buffer rather than copied.
        let slice = |r: &mut Reader<'_>, what| -> Result<Bytes, WireError> {
            let b = r.bufferlist(what)?;
            let end = r.position();
            Ok(payload.slice(end - b.len()..end))
        };
        Ok(match tag {
            Tag::Hello => Control::Hello {
                entity_type: EntityType(r.u8("entity_type")?),
                peer_addr: EntityAddr::decode(r)?,
            },
            Tag::AuthRequest => Control::AuthRequest {
                method: r.u32("method")?,
                preferred_modes: r.u32_vec("preferred_modes")?,
                auth_payload: slice(r, "auth_payload")?,
            },
            Tag::AuthBadMethod => Control::AuthBadMethod {
                method: r.u32("method")?,
                result: r.i32("result")?,
                allowed_methods: r.u32_vec("allowed_methods")?,
                allowed_modes: r.u32_vec("allowed_modes")?,
            },
            Tag::AuthReplyMore => Control::AuthReplyMore {
                auth_payload: slice(r, "auth_payload")?,
            },
            Tag::AuthRequestMore => Control::AuthRequestMore {
                auth_payload: slice(r, "auth_payload")?,
            },
            Tag::AuthDone => Control::AuthDone {
                global_id: r.u64("global_id")?,
                con_mode: r.u32("con_mode")?,
                auth_payload: slice(r, "auth_payload")?,
            },
            Tag::AuthSignature => {
                let mut sha256 = [0u8; 32];
                sha256.copy_from_slice(r.take(32, "sha256")?);
                Control::AuthSignature { sha256 }
            }
            Tag::ClientIdent => Control::ClientIdent(ClientIdent {
                addrs: EntityAddrVec::decode(r)?,
                target_addr: EntityAddr::decode(r)?,
                gid: r.i64("gid")?,
                global_seq: r.u64("global_seq")?,
                features_supported: r.u64("features_supported")?,
                features_required: r.u64("features_required")?,
                flags: r.u64("flags")?,
                client_cookie: r.u64("client_cookie")?,
            }),
            Tag::ServerIdent => Control::ServerIdent(ServerIdent {
                addrs: EntityAddrVec::decode(r)?,
                gid: r.i64("gid")?,
                global_seq: r.u64("global_seq")?,
                features_supported: r.u64("features_supported")?,
                features_required: r.u64("features_required")?,
                flags: r.u64("flags")?,
                server_cookie: r.u64("server_cookie")?,
            }),
            Tag::IdentMissingFeatures => Control::IdentMissingFeatures {
                features: r.u64("features")?,
            },
            Tag::SessionReconnect => Control::SessionReconnect(Reconnect {
                addrs: EntityAddrVec::decode(r)?,
                client_cookie: r.u64("client_cookie")?,
                server_cookie: r.u64("server_cookie")?,
                global_seq: r.u64("global_seq")?,
                connect_seq: r.u64("connect_seq")?,
                msg_seq: r.u64("msg_seq")?,
            }),
            Tag::SessionReset => Control::SessionReset {
                full: r.u8("full")? != 0,
            },
            Tag::SessionRetry => Control::SessionRetry {
                connect_seq: r.u64("connect_seq")?,
            },
            Tag::SessionRetryGlobal => Control::SessionRetryGlobal {
                global_seq: r.u64("global_seq")?,
            },
            Tag::SessionReconnectOk => Control::SessionReconnectOk {
                msg_seq: r.u64("msg_seq")?,
            },
            Tag::Wait => Control::Wait,
            Tag::Keepalive2 => Control::Keepalive2 {
                stamp: UTime {
                    sec: r.u32("stamp")?,
                    nsec: r.u32("stamp")?,
                },
            },
            Tag::Keepalive2Ack => Control::Keepalive2Ack {
                stamp: UTime {
                    sec: r.u32("stamp")?,
                    nsec: r.u32("stamp")?,
                },
            },
            Tag::Ack => Control::Ack { seq: r.u64("seq")? },
            Tag::Message | Tag::CompressionRequest | Tag::CompressionDone => {
                unreachable!("filtered by Control::decode_frame")
            }
        })
    }

    /// Decodes a control frame, rejecting MESSAGE and the compression frames.
    pub fn decode_frame(tag: Tag, payload: &Bytes) -> Result<Control, ControlError> {
        match tag {
            Tag::Message => Err(ControlError::NotControl),
            Tag::CompressionRequest | Tag::CompressionDone => {
                Err(ControlError::Unsupported(tag.name()))
            }
            _ => Self::decode(tag, payload),
        }
    }
}

/// The auth-none request payloads seen on the wire (msgr2.md §1.7).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthNonePayload {
    /// A MonClient talking to a monitor: `AUTH_MODE_MON`, name, global_id.
    MonClient { name: EntityName, global_id: u64 },
    /// An authorizer for a daemon: struct_v, name, global_id.
    Authorizer {
        struct_v: u8,
        name: EntityName,
        global_id: u64,
    },
}

impl AuthNonePayload {
    pub fn name(&self) -> &EntityName {
        match self {
            AuthNonePayload::MonClient { name, .. } | AuthNonePayload::Authorizer { name, .. } => {
                name
            }
        }
    }
    pub fn global_id(&self) -> u64 {
        match self {
            AuthNonePayload::MonClient { global_id, .. }
            | AuthNonePayload::Authorizer { global_id, .. } => *global_id,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32);
        match self {
            AuthNonePayload::MonClient { name, global_id } => {
                out.put_u8(AUTH_MODE_MON);
                name.encode(&mut out);
                out.put_u64_le(*global_id);
            }
            AuthNonePayload::Authorizer {
                struct_v,
                name,
                global_id,
            } => {
                out.put_u8(*struct_v);
                name.encode(&mut out);
                out.put_u64_le(*global_id);
            }
        }
        out.freeze()
    }

    /// Decodes either form; the first byte tells them apart. Extra trailing bytes are
    /// tolerated (newer Ceph releases append fields).
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let first = r.u8("auth mode")?;
        let name = EntityName::decode(&mut r)?;
        let global_id = r.u64("global_id")?;
        Ok(if first == AUTH_MODE_MON {
            AuthNonePayload::MonClient { name, global_id }
        } else {
            AuthNonePayload::Authorizer {
                struct_v: first,
                name,
                global_id,
            }
        })
    }
}
