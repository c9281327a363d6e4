//! Ticket renewal on an established monitor session (Ceph `MonClient::_check_auth_tickets`,
//! `CephxClientHandler::build_request`, `CephxServiceHandler::handle_request`): an MAuth
//! message carrying `CEPHX_GET_PRINCIPAL_SESSION_KEY` (an authorizer made from the auth
//! ticket, then the services wanted), answered by an MAuthReply with the new tickets sealed
//! under the auth ticket's session key. Pure codecs; the endpoint decides when.

use bytes::{BufMut, Bytes, BytesMut};

use super::msgs::{decode_response_header, decode_ticket_reply, encode_authorizer, Ticket};
use super::server::AuthorizerRequest;
use super::CephxError;
use crate::proto::control::AUTH_METHOD_CEPHX;
use crate::proto::message::Message;
use crate::proto::wire::Reader;

/// `CEPH_MSG_AUTH` and `CEPH_MSG_AUTH_REPLY`.
pub const MSG_AUTH: u16 = 17;
pub const MSG_AUTH_REPLY: u16 = 18;
/// `CEPHX_GET_PRINCIPAL_SESSION_KEY`: service tickets for the holder of an auth ticket.
pub const CEPHX_GET_PRINCIPAL_SESSION_KEY: u16 = 0x0200;

/// A ticket is renewed once this share of its validity has passed (Ceph's `renew_after`,
/// three quarters).
pub fn renew_after(validity: std::time::Duration) -> std::time::Duration {
    validity / 4 * 3
}

/// The client's MAuth asking for new tickets to the services of `keys` (a mask of entity
/// types), proving who it is with the auth ticket.
pub fn renewal_request(global_id: u64, auth_ticket: &Ticket, nonce: u64, keys: u32) -> Message {
    let authorizer = encode_authorizer(global_id, auth_ticket, nonce, None);
    let mut payload = BytesMut::with_capacity(2 + authorizer.len() + 5);
    payload.put_u16_le(CEPHX_GET_PRINCIPAL_SESSION_KEY);
    payload.put_slice(&authorizer);
    // CephXServiceTicketRequest.
    payload.put_u8(1);
    payload.put_u32_le(keys);
    let mut front = BytesMut::with_capacity(18 + 8 + payload.len() + 4);
    put_paxos_header(&mut front);
    front.put_u32_le(AUTH_METHOD_CEPHX);
    front.put_u32_le(payload.len() as u32);
    front.put_slice(&payload);
    // monmap_epoch: ours is unknown, as for a client that never asked for the map.
    front.put_u32_le(0);
    Message::new(MSG_AUTH).with_front(front.freeze())
}

/// `PaxosServiceMessage`'s fields as a client sends them: version 0, no session monitor.
fn put_paxos_header(out: &mut BytesMut) {
    out.put_u64_le(0);
    out.put_i16_le(-1);
    out.put_u64_le(0);
}

/// What a monitor reads from a renewal request: the authorizer and the services wanted.
pub fn read_renewal_request(front: &[u8]) -> Result<(AuthorizerRequest, u32), CephxError> {
    let mut r = Reader::new(front);
    r.take(18, "PaxosServiceMessage header")?;
    let protocol = r.u32("auth protocol")?;
    if protocol != AUTH_METHOD_CEPHX {
        return Err(CephxError::UnexpectedReply {
            got: protocol as u16,
            want: AUTH_METHOD_CEPHX as u16,
        });
    }
    let mut p = Reader::new(r.bufferlist("auth payload")?);
    let got = p.u16("request_type")?;
    if got != CEPHX_GET_PRINCIPAL_SESSION_KEY {
        return Err(CephxError::UnexpectedReply {
            got,
            want: CEPHX_GET_PRINCIPAL_SESSION_KEY,
        });
    }
    let authorizer = AuthorizerRequest::read(&mut p)?;
    let _v = p.u8("CephXServiceTicketRequest version")?;
    let keys = p.u32("keys")?;
    Ok((authorizer, keys))
}

/// The monitor's MAuthReply: `result` (0, or a negative errno), and on success the cephx
/// reply (`result_bl`).
pub fn renewal_reply(global_id: u64, result: i32, result_bl: &[u8]) -> Message {
    let mut front = BytesMut::with_capacity(4 + 4 + 8 + 4 + result_bl.len() + 4);
    front.put_u32_le(AUTH_METHOD_CEPHX);
    front.put_i32_le(result);
    front.put_u64_le(global_id);
    front.put_u32_le(result_bl.len() as u32);
    front.put_slice(result_bl);
    // result_msg: empty.
    front.put_u32_le(0);
    Message::new(MSG_AUTH_REPLY).with_front(front.freeze())
}

/// The client's reading of the MAuthReply: the renewed tickets, sealed under the auth
/// ticket's `session_key`.
pub fn read_renewal_reply(
    session_key: &super::CryptoKey,
    front: &[u8],
) -> Result<Vec<Ticket>, CephxError> {
    let mut r = Reader::new(front);
    let _protocol = r.u32("auth protocol")?;
    let result = r.i32("result")?;
    let _global_id = r.u64("global_id")?;
    if result != 0 {
        return Err(CephxError::Status(result));
    }
    let mut bl = Reader::new(r.bufferlist("result_bl")?);
    decode_response_header(&mut bl, CEPHX_GET_PRINCIPAL_SESSION_KEY)?;
    decode_ticket_reply(&mut bl, session_key)
}

/// The cephx reply a monitor puts in MAuthReply's `result_bl`: the response header, then the
/// tickets (Ceph seals the ticket reply under the auth session key, tickets unencrypted).
pub fn encode_renewal_result(session_key: &super::CryptoKey, tickets: &[Ticket]) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + 128 * tickets.len());
    out.put_u16_le(CEPHX_GET_PRINCIPAL_SESSION_KEY);
    out.put_i32_le(0);
    super::msgs::encode_ticket_reply(&mut out, session_key, tickets);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::cephx::msgs::TicketBlob;
    use crate::proto::cephx::server::open_authorize;
    use crate::proto::cephx::{CryptoKey, KeyType, Secret};
    use crate::proto::wire::EntityType;

    fn key(b: u8) -> CryptoKey {
        CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(vec![b; 16])).unwrap()
    }

    fn ticket(service: EntityType, k: u8) -> Ticket {
        Ticket {
            service,
            session_key: key(k),
            validity: Duration::from_secs(20),
            blob: TicketBlob {
                secret_id: 3,
                blob: Bytes::from_static(b"opaque"),
            },
        }
    }

    /// The request a client sends is what a monitor reads (authorizer under the auth
    /// ticket's session key, the services wanted), and the reply reads back as the tickets
    /// sealed, with the right key only.
    #[test]
    fn a_renewal_request_and_its_reply_round_trip() {
        let auth = ticket(EntityType::AUTH, 1);
        let req = renewal_request(4100, &auth, 77, 0x14);
        assert_eq!(req.ty, MSG_AUTH);
        let (authorizer, keys) = read_renewal_request(&req.front).unwrap();
        assert_eq!(
            (authorizer.global_id, authorizer.service),
            (4100, EntityType::AUTH)
        );
        assert_eq!(authorizer.ticket, auth.blob);
        assert_eq!(keys, 0x14);
        assert_eq!(
            open_authorize(&key(1), &authorizer.sealed).unwrap(),
            (77, None)
        );

        let renewed = [ticket(EntityType::OSD, 4), ticket(EntityType::MGR, 5)];
        let reply = renewal_reply(4100, 0, &encode_renewal_result(&key(1), &renewed));
        assert_eq!(reply.ty, MSG_AUTH_REPLY);
        assert_eq!(read_renewal_reply(&key(1), &reply.front).unwrap(), renewed);
        assert!(read_renewal_reply(&key(2), &reply.front).is_err());
    }

    /// A refusal is its status; a truncated reply or request is a wire error, not a panic.
    #[test]
    fn refusals_and_truncations_are_errors() {
        let refused = renewal_reply(4100, -13, &[]);
        assert_eq!(
            read_renewal_reply(&key(1), &refused.front),
            Err(CephxError::Status(-13))
        );
        let auth = ticket(EntityType::AUTH, 1);
        let req = renewal_request(4100, &auth, 77, 0x14);
        // Up to the monmap epoch at the end, which a monitor does not need.
        for n in 0..req.front.len() - 4 {
            assert!(read_renewal_request(&req.front[..n]).is_err(), "{n}");
        }
        let reply = renewal_reply(4100, 0, &encode_renewal_result(&key(1), &[auth]));
        for n in 0..reply.front.len() - 4 {
            assert!(
                read_renewal_reply(&key(1), &reply.front[..n]).is_err(),
                "{n}"
            );
        }
    }

    #[test]
    fn tickets_are_renewed_after_three_quarters_of_their_validity() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(2700)
        );
        assert_eq!(
            renew_after(Duration::from_secs(20)),
            Duration::from_secs(15)
        );
    }
}
