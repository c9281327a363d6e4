//! A cephx client's side (Ceph `CephxClientHandler.cc`): with a monitor (AUTH_MODE_MON),
//! answering its challenge and reading its AUTH_DONE (the auth session key, the connection
//! secret, the service tickets); with a service, checking its answer to our authorizer.
//! Pure functions; the endpoint keeps the state between them.

use bytes::Bytes;

use super::key::{CryptoKey, Secret};
use super::msgs::{
    decode_authorize_reply, decode_connection_secret, decode_response_header,
    decode_server_challenge, decode_ticket_reply, Authenticate, Ticket, TicketBlob,
    CEPHX_GET_AUTH_SESSION_KEY,
};
use super::CephxError;
use crate::proto::wire::{EntityType, Reader};

/// The services a client asks the monitor for tickets to, with the auth ticket itself:
/// mon, mds, osd, mgr and auth (`other_keys`). A monitor leaves out those the client's caps
/// do not allow.
pub const WANTED_SERVICES: u32 = (EntityType::MON.0
    | EntityType::MDS.0
    | EntityType::OSD.0
    | EntityType::MGR.0
    | EntityType::AUTH.0) as u32;

/// The AUTH_REQUEST_MORE payload answering the monitor's AUTH_REPLY_MORE (`challenge`):
/// our challenge and the proof that we hold `key`.
pub fn answer_challenge(
    key: &CryptoKey,
    challenge: &[u8],
    client_challenge: u64,
) -> Result<Bytes, CephxError> {
    let server_challenge = decode_server_challenge(challenge)?;
    Ok(Authenticate {
        client_challenge,
        key: key.challenge_proof(server_challenge, client_challenge),
        old_ticket: TicketBlob::default(),
        other_keys: WANTED_SERVICES,
    }
    .encode())
}

/// What a monitor's AUTH_DONE gives a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonAuthDone {
    /// The auth ticket: its session key signs this connection and decrypts the rest.
    pub auth: Ticket,
    /// 64 bytes in secure mode, empty in crc mode.
    pub connection_secret: Secret,
    /// Tickets for the other services asked for.
    pub tickets: Vec<Ticket>,
}

/// Reads the monitor's AUTH_DONE payload with our `key`. Fields a newer monitor appends are
/// left unread.
pub fn read_auth_done(key: &CryptoKey, payload: &[u8]) -> Result<MonAuthDone, CephxError> {
    let mut r = Reader::new(payload);
    decode_response_header(&mut r, CEPHX_GET_AUTH_SESSION_KEY)?;
    let auth = decode_ticket_reply(&mut r, key)?
        .into_iter()
        .find(|t| t.service == EntityType::AUTH)
        .ok_or(CephxError::NoAuthTicket)?;
    let connection_secret = decode_connection_secret(&mut r, &auth.session_key)?;
    let extra = r.bufferlist("extra tickets")?;
    let tickets = if extra.is_empty() {
        Vec::new()
    } else {
        decode_ticket_reply(&mut Reader::new(extra), &auth.session_key)?
    };
    Ok(MonAuthDone {
        auth,
        connection_secret,
        tickets,
    })
}

/// Checks a service's AUTH_DONE to our authorizer (its `nonce + 1` proves it opened our
/// ticket) and returns the connection secret it chose.
pub fn read_authorize_reply(
    ticket: &Ticket,
    nonce: u64,
    payload: &[u8],
) -> Result<Secret, CephxError> {
    let (nonce_plus_one, secret) = decode_authorize_reply(&ticket.session_key, payload)?;
    if nonce_plus_one != nonce.wrapping_add(1) {
        return Err(CephxError::BadNonce);
    }
    Ok(secret)
}
