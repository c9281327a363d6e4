//! What the idents decide, as pure functions: the policy of the session a server keeps for a
//! client ([`accept_policy`]) and the client's policy once the server has answered
//! ([`client_policy`]), both from the LOSSY flag; and what a CLIENT_IDENT meets when the peer
//! may already have a session ([`decide_client_ident`]: msgr2.md §1.9 "CLIENT_IDENT against
//! an existing connection", Ceph's `ProtocolV2::handle_existing_connection`), connection
//! races included.

use crate::proto::control::{ClientIdent, IDENT_FLAG_LOSSY};
use crate::proto::policy::Policy;
use crate::proto::wire::EntityAddr;

use super::session::{SessionState, SessionView};

/// How a server keeps the session of a client that identified itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AcceptPolicy {
    pub(super) policy: Policy,
    /// Whether the session enters the registry (is found again by the client's address).
    pub(super) registers: bool,
}

/// The session a server keeps for a client whose CLIENT_IDENT carries `flags`, under the
/// policy `configured` for the client's type.
///
/// A client that says it is lossy (`CEPH_MSG_CONNECT_LOSSY`) gets a lossy session: it never
/// sends SESSION_RECONNECT (it has no server cookie) and starts a new session after every
/// fault, so reconnect state kept for it could never be used; kept, it would only pile up, one
/// session per departed client, and a later ident from the same address with the same (zero)
/// client cookie would resume it with a stale in_seq. A lossy session ends when its
/// connection faults and announces itself lossy in SERVER_IDENT. Ceph's classic
/// `ProtocolV2` instead keeps the acceptor's policy for the peer type and tells the client in
/// SERVER_IDENT, whose flag the client adopts (`handle_server_ident`); crimson reads the
/// client's flag and only warns on a mismatch. Ceph's own daemons avoid the question: they
/// give clients lossy policies (`stateless_server`, `stateless_registered_server`).
///
/// Registration follows the flag as before: lossy clients are registered only under
/// `register_lossy_clients`.
pub(super) fn accept_policy(configured: Policy, flags: u64) -> AcceptPolicy {
    let lossy_client = flags & IDENT_FLAG_LOSSY != 0;
    AcceptPolicy {
        policy: Policy {
            lossy: configured.lossy || lossy_client,
            ..configured
        },
        registers: !lossy_client || configured.register_lossy_clients,
    }
}

/// A client's policy once SERVER_IDENT's `flags` arrived: lossy if the server keeps a lossy
/// session for it, since then nothing the client sends will be acknowledged and nothing
/// will be resumed. Ceph's `handle_server_ident` takes the server's flag either way; a
/// Ringwire client does not turn lossless on the server's word (it sent no client cookie,
/// and its application expects lossy semantics), and a Ringwire server never asks it to.
pub(super) fn client_policy(policy: Policy, server_flags: u64) -> Policy {
    Policy {
        lossy: policy.lossy || server_flags & IDENT_FLAG_LOSSY != 0,
        ..policy
    }
}

/// The outcome of CLIENT_IDENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdentDecision {
    /// No session to resume: a new one, and SERVER_IDENT.
    NewSession,
    /// The peer restarted (its client_cookie changed): the session is reset first when
    /// `reset` (the policy's resetcheck; the application hears `RemoteReset`), then resumed.
    PeerRestarted { reset: bool },
    /// A lossy session is never resumed: it ends (`Reset`, reason `Replaced`) and a new one
    /// starts.
    ReplaceLossy,
    /// The existing session takes over this connection, and SERVER_IDENT.
    Resume,
    /// The peer's global_seq is older than the session's: this connection is stale (fault).
    Stale,
    /// A connection race this side wins: the peer gets WAIT, and this connection closes.
    Wait,
}

/// The outcome of `ci`, a CLIENT_IDENT from the peer at `peer` (its first address), given the
/// session registered for it (`existing`, `None` when the peer is not registered) and our own
/// address (`mine`, for races). Checked in Ceph's order.
pub(super) fn decide_client_ident(
    existing: Option<&SessionView>,
    ci: &ClientIdent,
    peer: &EntityAddr,
    mine: Option<&EntityAddr>,
) -> IdentDecision {
    // A closed session leaves the registry: "existing CLOSED → SERVER_IDENT" reads "none".
    let Some(e) = existing else {
        return IdentDecision::NewSession;
    };
    // "Existing is being replaced → WAIT" has no case here: Ringwire replaces a session's
    // connection in one step, never leaving one half-replaced.
    if e.peer_global_seq > ci.global_seq {
        return IdentDecision::Stale;
    }
    if e.policy.lossy {
        return IdentDecision::ReplaceLossy;
    }
    if e.client_cookie != 0 && e.server_cookie != 0 && e.client_cookie != ci.client_cookie {
        return IdentDecision::PeerRestarted {
            reset: e.policy.resetcheck,
        };
    }
    let connecting = !matches!(e.state, SessionState::Ready | SessionState::Standby);
    if e.client_cookie != ci.client_cookie && connecting {
        // Both sides are connecting: the connection from the lower address wins, and the
        // incoming one always when we are the server (which never connects).
        let incoming_wins = e.policy.server || mine.is_none_or(|m| peer < m);
        if !incoming_wins {
            return IdentDecision::Wait;
        }
    }
    IdentDecision::Resume
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::policy::Policy;
    use crate::proto::wire::EntityAddrVec;

    fn addr(port: u16) -> EntityAddr {
        SessionView::addr(port)
    }

    fn existing(policy: Policy, state: SessionState) -> SessionView {
        SessionView::example(policy, state)
    }

    fn ident(client_cookie: u64, global_seq: u64) -> ClientIdent {
        ClientIdent {
            addrs: EntityAddrVec(vec![addr(7000)]),
            target_addr: addr(7000),
            gid: 1,
            global_seq,
            features_supported: 0,
            features_required: 0,
            flags: 0,
            client_cookie,
        }
    }

    #[test]
    fn accept_policy_table() {
        let lossless = |p: Policy| AcceptPolicy {
            policy: p,
            registers: true,
        };
        let lossy = |p: Policy, registers: bool| AcceptPolicy {
            policy: Policy { lossy: true, ..p },
            registers,
        };
        let stateful = Policy::stateful_server();
        let stateless = Policy::stateless_server();
        #[rustfmt::skip]
        let rows: Vec<(&str, Policy, u64, AcceptPolicy)> = vec![
            // The configured policy, when the client is lossless.
            ("lossless client, stateful server", stateful, 0, lossless(stateful)),
            ("lossless client, peer", Policy::lossless_peer(), 0,
             lossless(Policy::lossless_peer())),
            // A lossy client gets a lossy session: nothing kept for a reconnect that never
            // comes (msgr2.md §1.9 "lossy → stop and deliver ms_handle_reset").
            ("lossy client, stateful server", stateful, IDENT_FLAG_LOSSY, lossy(stateful, true)),
            ("lossy client, peer", Policy::lossless_peer(), IDENT_FLAG_LOSSY,
             lossy(Policy::lossless_peer(), true)),
            // A lossy server policy stays lossy; an unregistering one registers only
            // lossless clients (msgr2.md §1.10 register_lossy_clients).
            ("lossy client, stateless server", stateless, IDENT_FLAG_LOSSY,
             lossy(stateless, false)),
            ("lossless client, stateless server", stateless, 0, lossy(stateless, true)),
            // Other flag bits change nothing.
            ("unknown flags", stateful, 0b110, lossless(stateful)),
        ];
        for (row, configured, flags, expected) in rows {
            assert_eq!(accept_policy(configured, flags), expected, "row {row:?}");
        }
    }

    #[test]
    fn client_policy_table() {
        let lossy = |p: Policy| Policy { lossy: true, ..p };
        #[rustfmt::skip]
        let rows: Vec<(&str, Policy, u64, Policy)> = vec![
            ("both lossless", Policy::lossless_client(), 0, Policy::lossless_client()),
            // Ceph's handle_server_ident: `policy.lossy = flags & CEPH_MSG_CONNECT_LOSSY`.
            ("lossy server", Policy::lossless_client(), IDENT_FLAG_LOSSY,
             lossy(Policy::lossless_client())),
            ("both lossy", Policy::lossy_client(), IDENT_FLAG_LOSSY, Policy::lossy_client()),
            // Ringwire: a lossy client stays lossy.
            ("lossless server", Policy::lossy_client(), 0, Policy::lossy_client()),
        ];
        for (row, policy, flags, expected) in rows {
            assert_eq!(client_policy(policy, flags), expected, "row {row:?}");
        }
    }

    #[test]
    fn decide_client_ident_table() {
        use IdentDecision::*;
        use SessionState::{Connecting, Ready, Standby};
        let server = Policy::stateful_server();
        let reuse = Policy::lossless_peer_reuse();
        let lossless_peer = Policy::lossless_peer();
        // A session we dialled and never completed: our own cookie, no server cookie yet.
        let dialling = SessionView {
            server_cookie: 0,
            ..existing(reuse, Connecting)
        };
        let (low, high) = (addr(6000), addr(8000));
        #[rustfmt::skip]
        let rows: Vec<(&str, Option<SessionView>, ClientIdent, EntityAddr, IdentDecision)> = vec![
            // "existing CLOSED → SERVER_IDENT": closed sessions leave the registry.
            ("no session", None, ident(11, 6), high, NewSession),
            // "existing.peer_global_seq > new.global_seq → drop the new connection".
            ("stale", Some(existing(server, Ready)), ident(11, 4), high, Stale),
            // Staleness is checked first, before the policy.
            ("stale, lossy", Some(existing(Policy::stateless_registered_server(), Ready)),
             ident(11, 4), high, Stale),
            // "existing policy lossy → drop existing, then SERVER_IDENT".
            ("lossy", Some(existing(Policy::stateless_registered_server(), Ready)),
             ident(99, 6), high, ReplaceLossy),
            // "both cookies and a different client_cookie → the peer restarted: reset_session
            // if resetcheck, then reuse".
            ("restarted, resetcheck", Some(existing(server, Ready)), ident(99, 6), high,
             PeerRestarted { reset: true }),
            ("restarted, no resetcheck", Some(existing(lossless_peer, Standby)), ident(99, 6),
             high, PeerRestarted { reset: false }),
            // "same client_cookie → continue, then reuse".
            ("same cookie", Some(existing(server, Connecting)), ident(11, 6), high, Resume),
            // "existing READY or STANDBY → reuse" (a different cookie, no server cookie).
            ("ready", Some(SessionView { server_cookie: 0, ..existing(reuse, Ready) }),
             ident(99, 6), high, Resume),
            ("standby", Some(SessionView { server_cookie: 0, ..existing(reuse, Standby) }),
             ident(99, 6), high, Resume),
            // "otherwise a connection race: the connection from the lower msgr2 address
            // wins … the loser gets WAIT".
            ("race, peer higher", Some(dialling), ident(99, 6), high, Wait),
            ("race, peer lower", Some(dialling), ident(99, 6), low, Resume),
            // "… or the incoming one if the existing policy is server".
            ("race, server", Some(SessionView { policy: server, ..dialling }), ident(99, 6),
             high, Resume),
        ];
        let mine = addr(7000);
        for (row, e, ci, peer, expected) in rows {
            let got = decide_client_ident(e.as_ref(), &ci, &peer, Some(&mine));
            assert_eq!(got, expected, "row {row:?}");
        }
        // An unbound endpoint has no address to compare: the incoming connection wins.
        let got = decide_client_ident(Some(&dialling), &ident(99, 6), &high, None);
        assert_eq!(got, Resume, "unbound");
    }
}
