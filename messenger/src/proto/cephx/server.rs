//! A cephx server's side of AUTH_MODE_MON, as a monitor answers it (Ceph
//! `CephxServiceHandler.cc`): the challenge, the check of the client's proof, and the
//! AUTH_DONE payload (session key, tickets, connection secret). Pure functions: the caller
//! brings the keys and the random values.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::key::{CryptoKey, Secret};
use super::msgs::{
    encode_connection_secret, encode_ticket_reply, Authenticate, Ticket, TicketBlob,
    CEPHX_GET_AUTH_SESSION_KEY,
};
use super::CephxError;
use crate::proto::wire::{EntityName, EntityType};

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
    /// Seals the ticket blobs, which only this server reads back.
    pub ticket_secret: &'a CryptoKey,
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
    /// A ticket's blob: this server's own record (name, global_id, session key), sealed
    /// under its ticket secret. Clients hold it as opaque bytes.
    fn ticket(&self, service: EntityType, session_key: &CryptoKey, validity: Duration) -> Ticket {
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(64));
        plain.put_u8(1);
        self.name.encode(&mut *plain);
        plain.put_u64_le(self.global_id);
        session_key.encode(&mut *plain);
        Ticket {
            service,
            session_key: session_key.clone(),
            validity,
            blob: TicketBlob {
                secret_id: 1,
                blob: Bytes::from(self.ticket_secret.seal_envelope(&plain)),
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
        let services: Vec<Ticket> = self
            .service_keys
            .iter()
            .map(|(ty, k)| self.ticket(*ty, k, SERVICE_TICKET_TTL))
            .collect();
        let mut extra = BytesMut::new();
        if !services.is_empty() {
            encode_ticket_reply(&mut extra, &self.session_key, &services);
        }
        out.put_u32_le(extra.len() as u32);
        out.put_slice(&extra);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cephx::client::{answer_challenge, read_auth_done};
    use crate::proto::cephx::key::KeyType;
    use crate::proto::cephx::msgs::encode_server_challenge;

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
        let grant = Grant {
            name: &name,
            global_id: 4100,
            session_key: key(3),
            service_keys: wanted_services(req.other_keys)
                .map(|t| (t, key(t.0)))
                .collect(),
            connection_secret: Secret::new(vec![5; 64]),
            ticket_secret: &key(9),
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
    }
}
