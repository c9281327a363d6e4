//! The cephx messages (Ceph `CephxProtocol.h`), with the byte layouts the fixtures pin down
//! (msgr2-auth.md; `shared/fixtures/msgr2-cephx/README.md`). Decoders borrow from the payload
//! and check every length against what remains before using it.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::key::{CryptoKey, Secret};
use super::CephxError;
use crate::proto::wire::{EntityType, Reader};

/// `CEPHX_GET_AUTH_SESSION_KEY`: the first request to a monitor.
pub const CEPHX_GET_AUTH_SESSION_KEY: u16 = 0x0100;

/// `CephXServerChallenge`: the monitor's AUTH_REPLY_MORE.
pub fn encode_server_challenge(challenge: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(9);
    out.put_u8(1);
    out.put_u64_le(challenge);
    out.freeze()
}

pub fn decode_server_challenge(payload: &[u8]) -> Result<u64, CephxError> {
    let mut r = Reader::new(payload);
    let _v = r.u8("CephXServerChallenge version")?;
    let challenge = r.u64("server_challenge")?;
    r.finish()?;
    Ok(challenge)
}

/// `CephXTicketBlob`: a service ticket, opaque to the client (encrypted under the
/// service's rotating secret `secret_id`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketBlob {
    pub secret_id: u64,
    pub blob: Bytes,
}

impl TicketBlob {
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(1);
        out.put_u64_le(self.secret_id);
        out.put_u32_le(self.blob.len() as u32);
        out.put_slice(&self.blob);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<TicketBlob, CephxError> {
        let _v = r.u8("CephXTicketBlob version")?;
        let secret_id = r.u64("secret_id")?;
        let blob = Bytes::copy_from_slice(r.bufferlist("ticket blob")?);
        Ok(TicketBlob { secret_id, blob })
    }
}

/// `CephXRequestHeader` + `CephXAuthenticate` (v3): the client's answer to the monitor's
/// challenge, its AUTH_REQUEST_MORE payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub client_challenge: u64,
    /// [`CryptoKey::challenge_proof`] of both challenges.
    pub key: u64,
    pub old_ticket: TicketBlob,
    /// Services wanted tickets for, as a mask of entity types.
    pub other_keys: u32,
}

impl Authenticate {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(40);
        out.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
        out.put_u8(3);
        out.put_u64_le(self.client_challenge);
        out.put_u64_le(self.key);
        self.old_ticket.encode(&mut out);
        out.put_u32_le(self.other_keys);
        out.freeze()
    }

    /// Reads the request header and `CephXAuthenticate` (v1 has no `other_keys`); fields a
    /// newer client appends are left unread.
    pub fn decode(payload: &[u8]) -> Result<Authenticate, CephxError> {
        let mut r = Reader::new(payload);
        let got = r.u16("request_type")?;
        if got != CEPHX_GET_AUTH_SESSION_KEY {
            return Err(CephxError::UnexpectedReply {
                got,
                want: CEPHX_GET_AUTH_SESSION_KEY,
            });
        }
        let v = r.u8("CephXAuthenticate version")?;
        let client_challenge = r.u64("client_challenge")?;
        let key = r.u64("key")?;
        let old_ticket = TicketBlob::decode(&mut r)?;
        let other_keys = if v >= 2 { r.u32("other_keys")? } else { 0 };
        Ok(Authenticate {
            client_challenge,
            key,
            old_ticket,
            other_keys,
        })
    }
}

/// One service's ticket as a client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub service: EntityType,
    pub session_key: CryptoKey,
    pub validity: Duration,
    pub blob: TicketBlob,
}

/// A service ticket reply under `key`: the counterpart of [`decode_ticket_reply`].
pub fn encode_ticket_reply(out: &mut BytesMut, key: &CryptoKey, tickets: &[Ticket]) {
    out.put_u8(1);
    out.put_u32_le(tickets.len() as u32);
    for t in tickets {
        out.put_u32_le(t.service.0 as u32);
        out.put_u8(1);
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(48));
        plain.put_u8(1);
        t.session_key.encode(&mut *plain);
        plain.put_u32_le(t.validity.as_secs().min(u32::MAX as u64) as u32);
        plain.put_u32_le(t.validity.subsec_nanos());
        key.seal_envelope_bl(&plain, out);
        out.put_u8(0);
        let mut blob = BytesMut::new();
        t.blob.encode(&mut blob);
        out.put_u32_le(blob.len() as u32);
        out.put_slice(&blob);
    }
}

/// The connection secret as [`decode_connection_secret`] reads it.
pub fn encode_connection_secret(out: &mut BytesMut, session_key: &CryptoKey, secret: &Secret) {
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    plain.put_u32_le(secret.len() as u32);
    plain.put_slice(secret.expose());
    let mut inner = Vec::new();
    session_key.seal_envelope_bl(&plain, &mut inner);
    out.put_u32_le(inner.len() as u32);
    out.put_slice(&inner);
}

/// `CephXServiceTicket` inside its envelope: the session key and how long it is valid.
fn decode_service_ticket(plain: &[u8]) -> Result<(CryptoKey, Duration), CephxError> {
    let mut r = Reader::new(plain);
    let _v = r.u8("CephXServiceTicket version")?;
    let key = CryptoKey::decode(&mut r)?;
    let sec = r.u32("validity")?;
    let nsec = r.u32("validity")?;
    Ok((key, Duration::new(sec as u64, nsec.min(999_999_999))))
}

/// A service ticket reply (`cephx_build_service_ticket_reply`): `u8 v, le32 n` and per ticket
/// `le32 service_id, u8 v, bufferlist enc(CephXServiceTicket), u8 ticket_enc, bufferlist
/// CephXTicketBlob`. Each `CephXServiceTicket` is encrypted under `key`.
pub fn decode_ticket_reply(r: &mut Reader<'_>, key: &CryptoKey) -> Result<Vec<Ticket>, CephxError> {
    let _v = r.u8("ticket reply version")?;
    let n = r.u32("ticket count")?;
    // Each ticket takes at least 14 bytes: the count cannot promise more than remain.
    let mut tickets = Vec::with_capacity((n as usize).min(r.remaining() / 14));
    for _ in 0..n {
        let service_id = r.u32("service_id")?;
        let service = u8::try_from(service_id)
            .map(EntityType)
            .map_err(|_| crate::proto::wire::WireError::BadEntityType(service_id))?;
        let _v = r.u8("service ticket version")?;
        let plain = key.open_envelope(r.bufferlist("encrypted service ticket")?)?;
        let (session_key, validity) = decode_service_ticket(plain.expose())?;
        if r.u8("ticket_enc")? != 0 {
            return Err(CephxError::EncryptedTicket);
        }
        let mut t = Reader::new(r.bufferlist("ticket")?);
        let blob = TicketBlob::decode(&mut t)?;
        tickets.push(Ticket {
            service,
            session_key,
            validity,
            blob,
        });
    }
    Ok(tickets)
}

/// `CephXResponseHeader`: the request type answered and its status.
pub fn decode_response_header(r: &mut Reader<'_>, want: u16) -> Result<(), CephxError> {
    let got = r.u16("request_type")?;
    let status = r.i32("status")?;
    if got != want {
        return Err(CephxError::UnexpectedReply { got, want });
    }
    if status != 0 {
        return Err(CephxError::Status(status));
    }
    Ok(())
}

/// The connection secret after the tickets: a bufferlist holding `encode_encrypt(string)`
/// under the session key (so two length prefixes), present in crc mode too (empty).
pub fn decode_connection_secret(
    r: &mut Reader<'_>,
    session_key: &CryptoKey,
) -> Result<Secret, CephxError> {
    let mut outer = Reader::new(r.bufferlist("connection secret")?);
    let plain = session_key.open_envelope(outer.bufferlist("encrypted connection secret")?)?;
    let mut p = Reader::new(plain.expose());
    Ok(Secret::from_slice(p.bufferlist("connection secret")?))
}

/// A cephx authorizer (`CephXAuthorizer`), the AUTH_REQUEST(_MORE) payload to a service: our
/// global_id and the ticket for the service, then `CephXAuthorize` sealed under the ticket's
/// session key (`challenge`: the service's challenge to answer, once it sent one).
pub fn encode_authorizer(
    global_id: u64,
    ticket: &Ticket,
    nonce: u64,
    challenge: Option<u64>,
) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + ticket.blob.blob.len());
    out.put_u8(1);
    out.put_u64_le(global_id);
    out.put_u32_le(ticket.service.0 as u32);
    ticket.blob.encode(&mut out);
    let mut msg = [0u8; 18];
    msg[0] = 2;
    msg[1..9].copy_from_slice(&nonce.to_le_bytes());
    msg[9] = u8::from(challenge.is_some());
    // Ceph's `server_challenge + 1`, a u64 that wraps.
    let answer = challenge.map_or(0, |c| c.wrapping_add(1));
    msg[10..].copy_from_slice(&answer.to_le_bytes());
    ticket.session_key.seal_envelope_bl(&msg, &mut out);
    out.freeze()
}

/// The service's AUTH_REPLY_MORE to an authorizer: `CephXAuthorizeChallenge` sealed under
/// the ticket's session key (no length prefix inside the payload).
pub fn decode_authorize_challenge(
    session_key: &CryptoKey,
    payload: &[u8],
) -> Result<u64, CephxError> {
    let plain = session_key.open_envelope(payload)?;
    let mut r = Reader::new(plain.expose());
    let _v = r.u8("CephXAuthorizeChallenge version")?;
    Ok(r.u64("server_challenge")?)
}

/// The service's AUTH_DONE payload: `CephXAuthorizeReply` sealed under the ticket's session
/// key, as a bufferlist: `nonce + 1`, and (v2) the connection secret.
pub fn decode_authorize_reply(
    session_key: &CryptoKey,
    payload: &[u8],
) -> Result<(u64, Secret), CephxError> {
    let mut outer = Reader::new(payload);
    let plain = session_key.open_envelope(outer.bufferlist("CephXAuthorizeReply")?)?;
    let mut r = Reader::new(plain.expose());
    let v = r.u8("CephXAuthorizeReply version")?;
    let nonce_plus_one = r.u64("nonce_plus_one")?;
    let secret = if v >= 2 {
        Secret::from_slice(r.bufferlist("connection secret")?)
    } else {
        Secret::new(Vec::new())
    };
    Ok((nonce_plus_one, secret))
}
