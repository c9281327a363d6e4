//! A cephx server's side (Ceph `CephxServiceHandler.cc`, `cephx_verify_authorizer`): as a
//! monitor answers AUTH_MODE_MON (the challenge, the check of the client's proof, the
//! AUTH_DONE payload with session key, tickets and connection secret), and as a service
//! checks an authorizer (the ticket opened with the service secret, the challenge, the
//! reply). Pure functions: the caller brings the keys and the random values.
//!
//! Tickets this server issues carry its own record (name, global_id, session key), sealed
//! under the service's secret: a keyring entry `TYPE.` (as Ceph's `mon.`; `secret_id` -1,
//! Ceph's "no rotating secret" ticket), or for services without one a secret only this
//! endpoint knows. Only Ringwire reads them.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::key::{CryptoKey, Secret};
use super::msgs::{
    encode_connection_secret, encode_ticket_reply, Authenticate, Ticket, TicketBlob,
    CEPHX_GET_AUTH_SESSION_KEY,
};
use super::renewal::encode_renewal_result;
use super::CephxError;
use crate::proto::wire::{EntityName, EntityType, Reader};

/// `secret_id` of a ticket sealed under the service's own key (`TYPE.` in the keyring).
pub const SERVICE_KEY_SECRET_ID: u64 = u64::MAX;

/// `auth_mon_ticket_ttl`: how long the auth ticket is valid (Ceph's default, 72 h).
pub const AUTH_TICKET_TTL: Duration = Duration::from_secs(72 * 3600);
/// `auth_service_ticket_ttl`: how long service tickets are valid (Ceph's default, 1 h).
pub const SERVICE_TICKET_TTL: Duration = Duration::from_secs(3600);

/// Whether the client's AUTH_REQUEST_MORE proves it holds `key` for our `server_challenge`.
/// Returns the request (its `other_keys` say which tickets it wants).
pub fn check_proof(
    key: &CryptoKey,
    server_challenge: u64,
    payload: &[u8],
) -> Result<Option<Authenticate>, CephxError> {
    let req = Authenticate::decode(payload)?;
    let expected = key.challenge_proof(server_challenge, req.client_challenge);
    Ok((expected == req.key).then_some(req))
}

/// What the server hands out for one authenticated client.
pub struct Grant<'a> {
    pub name: &'a EntityName,
    pub global_id: u64,
    /// The auth ticket's session key: it signs the connection and seals the rest.
    pub session_key: CryptoKey,
    /// Session keys of the service tickets asked for, in `other_keys` order.
    pub service_keys: Vec<(EntityType, CryptoKey)>,
    /// 64 bytes for secure mode, empty for crc.
    pub connection_secret: Secret,
    /// Seals the ticket blobs of services without a secret of their own (and the auth
    /// ticket's), which only this server reads back.
    pub ticket_secret: &'a CryptoKey,
    /// Service secrets (`TYPE.` keyring entries): their services can open their tickets.
    pub service_secrets: Vec<(EntityType, &'a CryptoKey)>,
    /// How long the service tickets are valid (`auth_service_ticket_ttl`).
    pub service_ttl: Duration,
    /// The wall clock at issue, in seconds since the UNIX epoch: tickets expire from it.
    pub now_unix: u64,
}

/// The services of `other_keys` a ticket is issued for (the auth bit is the auth ticket).
pub fn wanted_services(other_keys: u32) -> impl Iterator<Item = EntityType> {
    [
        EntityType::MON,
        EntityType::MDS,
        EntityType::OSD,
        EntityType::MGR,
    ]
    .into_iter()
    .filter(move |t| other_keys & t.0 as u32 != 0)
}

impl Grant<'_> {
    /// A ticket's blob: this server's own record (name, global_id, session key, when it
    /// expires on the wall clock), sealed under its ticket secret. Clients hold it as opaque
    /// bytes.
    fn ticket(&self, service: EntityType, session_key: &CryptoKey, validity: Duration) -> Ticket {
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(72));
        plain.put_u8(TICKET_RECORD_VERSION);
        self.name.encode(&mut *plain);
        plain.put_u64_le(self.global_id);
        session_key.encode(&mut *plain);
        plain.put_u64_le(self.now_unix.saturating_add(validity.as_secs()));
        let own = self.service_secrets.iter().find(|(t, _)| *t == service);
        let (secret_id, secret) = match own {
            Some((_, k)) => (SERVICE_KEY_SECRET_ID, *k),
            None => (1, self.ticket_secret),
        };
        Ticket {
            service,
            session_key: session_key.clone(),
            validity,
            blob: TicketBlob {
                secret_id,
                blob: Bytes::from(secret.seal_envelope(&plain)),
            },
        }
    }

    /// The AUTH_DONE payload, sealed under the client's `key`.
    pub fn auth_done_payload(&self, key: &CryptoKey) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        out.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
        out.put_i32_le(0);
        let auth = self.ticket(EntityType::AUTH, &self.session_key, AUTH_TICKET_TTL);
        encode_ticket_reply(&mut out, key, &[auth]);
        encode_connection_secret(&mut out, &self.session_key, &self.connection_secret);
        let services = self.service_tickets();
        let mut extra = BytesMut::new();
        if !services.is_empty() {
            encode_ticket_reply(&mut extra, &self.session_key, &services);
        }
        out.put_u32_le(extra.len() as u32);
        out.put_slice(&extra);
        out.freeze()
    }

    /// The same grant, with this connection secret in its AUTH_DONE.
    pub fn with_connection_secret(mut self, secret: Secret) -> Self {
        self.connection_secret = secret;
        self
    }

    /// The service tickets asked for.
    fn service_tickets(&self) -> Vec<Ticket> {
        self.service_keys
            .iter()
            .map(|(ty, k)| self.ticket(*ty, k, self.service_ttl))
            .collect()
    }

    /// The MAuthReply's `result_bl` to a ticket renewal: the new service tickets, sealed
    /// under the auth ticket's session key.
    pub fn renewal_result(&self) -> Bytes {
        encode_renewal_result(&self.session_key, &self.service_tickets())
    }
}

/// An authorizer as a service reads it, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRequest {
    pub global_id: u64,
    pub service: EntityType,
    pub ticket: TicketBlob,
    /// `CephXAuthorize`, sealed under the ticket's session key.
    pub sealed: Bytes,
}

impl AuthorizerRequest {
    pub fn decode(payload: &[u8]) -> Result<AuthorizerRequest, CephxError> {
        AuthorizerRequest::read(&mut Reader::new(payload))
    }

    /// [`decode`](Self::decode) from within a larger payload (a renewal request).
    pub fn read(r: &mut Reader<'_>) -> Result<AuthorizerRequest, CephxError> {
        let _v = r.u8("authorizer version")?;
        let global_id = r.u64("global_id")?;
        let service_id = r.u32("service_id")?;
        let service = u8::try_from(service_id)
            .map(EntityType)
            .map_err(|_| crate::proto::wire::WireError::BadEntityType(service_id))?;
        let ticket = TicketBlob::decode(r)?;
        let sealed = Bytes::copy_from_slice(r.bufferlist("CephXAuthorize")?);
        Ok(AuthorizerRequest {
            global_id,
            service,
            ticket,
            sealed,
        })
    }
}

/// The layout of the record in the tickets this server issues (2: with the expiry).
const TICKET_RECORD_VERSION: u8 = 2;

/// What a ticket this server issued says: who, which global_id, which session key; refused
/// once it has expired at `now_unix` (wall-clock seconds), as Ceph's services refuse theirs.
pub fn open_ticket(
    secret: &CryptoKey,
    ticket: &TicketBlob,
    now_unix: u64,
) -> Result<(EntityName, u64, CryptoKey), CephxError> {
    let plain = secret.open_envelope(&ticket.blob)?;
    let mut r = Reader::new(plain.expose());
    let v = r.u8("ticket version")?;
    if v != TICKET_RECORD_VERSION {
        return Err(CephxError::UnsupportedTicket(v));
    }
    let name = EntityName::decode(&mut r)?;
    let global_id = r.u64("global_id")?;
    let session_key = CryptoKey::decode(&mut r)?;
    let expires = r.u64("expires")?;
    if now_unix >= expires {
        return Err(CephxError::TicketExpired {
            ago: now_unix - expires,
        });
    }
    Ok((name, global_id, session_key))
}

/// `CephXAuthorize` opened with the ticket's session key: the nonce, and the answer to our
/// challenge (`challenge + 1`) if the client gave one.
pub fn open_authorize(
    session_key: &CryptoKey,
    sealed: &[u8],
) -> Result<(u64, Option<u64>), CephxError> {
    let plain = session_key.open_envelope(sealed)?;
    let mut r = Reader::new(plain.expose());
    let _v = r.u8("CephXAuthorize version")?;
    let nonce = r.u64("nonce")?;
    let have_challenge = r.u8("have_challenge")? != 0;
    let answer = r.u64("server_challenge_plus_one")?;
    Ok((nonce, have_challenge.then_some(answer)))
}

/// The service's AUTH_REPLY_MORE payload: `CephXAuthorizeChallenge`, sealed, bare.
pub fn encode_authorize_challenge(session_key: &CryptoKey, challenge: u64) -> Bytes {
    let mut plain = [0u8; 9];
    plain[0] = 1;
    plain[1..].copy_from_slice(&challenge.to_le_bytes());
    Bytes::from(session_key.seal_envelope(&plain))
}

/// The service's AUTH_DONE payload: `CephXAuthorizeReply` sealed, as a bufferlist: v1
/// (`nonce + 1`) in crc mode, v2 with the connection secret in secure mode, as Ceph sends.
pub fn encode_authorize_reply(session_key: &CryptoKey, nonce: u64, secret: &Secret) -> Bytes {
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(77));
    plain.put_u8(if secret.is_empty() { 1 } else { 2 });
    plain.put_u64_le(nonce.wrapping_add(1));
    if !secret.is_empty() {
        plain.put_u32_le(secret.len() as u32);
        plain.put_slice(secret.expose());
    }
    let mut out = BytesMut::new();
    session_key.seal_envelope_bl(&plain, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cephx::client::{answer_challenge, read_auth_done, read_authorize_reply};
    use crate::proto::cephx::key::KeyType;
    use crate::proto::cephx::msgs::encode_server_challenge;
    use crate::proto::cephx::msgs::{decode_authorize_challenge, encode_authorizer};

    fn key(b: u8) -> CryptoKey {
        CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(vec![b; 16])).unwrap()
    }

    /// The client's steps and the server's meet: the proof checks out with the right key
    /// only, and the client reads back exactly what was granted.
    #[test]
    fn client_and_server_halves_agree() {
        let client = key(1);
        let more = answer_challenge(&client, &encode_server_challenge(42), 7).unwrap();
        assert!(check_proof(&client, 42, &more).unwrap().is_some());
        assert!(check_proof(&key(2), 42, &more).unwrap().is_none());
        assert!(check_proof(&client, 43, &more).unwrap().is_none());
        let req = check_proof(&client, 42, &more).unwrap().unwrap();
        let name = EntityName::new(EntityType::CLIENT, "admin");
        let (ticket_secret, osd_secret) = (key(9), key(8));
        let grant = Grant {
            name: &name,
            global_id: 4100,
            session_key: key(3),
            service_keys: wanted_services(req.other_keys)
                .map(|t| (t, key(t.0)))
                .collect(),
            connection_secret: Secret::new(vec![5; 64]),
            ticket_secret: &ticket_secret,
            service_secrets: vec![(EntityType::OSD, &osd_secret)],
            service_ttl: SERVICE_TICKET_TTL,
            now_unix: 1_000_000,
        };
        let done = read_auth_done(&client, &grant.auth_done_payload(&client)).unwrap();
        assert_eq!(done.auth.session_key, key(3));
        assert_eq!(done.connection_secret.expose(), &[5; 64][..]);
        let services: Vec<u8> = done.tickets.iter().map(|t| t.service.0).collect();
        assert_eq!(services, [1, 2, 4, 16]);
        assert!(done
            .tickets
            .iter()
            .all(|t| t.session_key == key(t.service.0)));
        assert!(read_auth_done(&key(2), &grant.auth_done_payload(&client)).is_err());

        // The OSD ticket opens with the OSD's secret; the client's authorizer, the
        // challenge and the reply go round.
        let osd = done
            .tickets
            .iter()
            .find(|t| t.service == EntityType::OSD)
            .unwrap();
        assert_eq!(osd.blob.secret_id, SERVICE_KEY_SECRET_ID);
        let payload = encode_authorizer(4100, osd, 77, None);
        let req = AuthorizerRequest::decode(&payload).unwrap();
        let (who, gid, session) = open_ticket(&key(8), &req.ticket, 1_000_000).unwrap();
        assert_eq!((who, gid, &session), (name.clone(), 4100, &osd.session_key));
        assert!(
            open_ticket(&key(9), &req.ticket, 1_000_000).is_err(),
            "not under another secret"
        );
        // Valid for the hour it was issued for, to the second.
        assert!(open_ticket(&key(8), &req.ticket, 1_003_599).is_ok());
        assert_eq!(
            open_ticket(&key(8), &req.ticket, 1_003_605),
            Err(CephxError::TicketExpired { ago: 5 })
        );
        assert_eq!(open_authorize(&session, &req.sealed).unwrap(), (77, None));
        let c = decode_authorize_challenge(&session, &encode_authorize_challenge(&session, 5));
        let again = AuthorizerRequest::decode(&encode_authorizer(4100, osd, 77, Some(c.unwrap())));
        assert_eq!(
            open_authorize(&session, &again.unwrap().sealed).unwrap(),
            (77, Some(6))
        );
        let secret = Secret::new(vec![4; 64]);
        let reply = encode_authorize_reply(&session, 77, &secret);
        assert_eq!(read_authorize_reply(osd, 77, &reply).unwrap(), secret);
    }
}
