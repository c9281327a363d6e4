//! The server's answer to SESSION_RECONNECT (msgr2.md §1.9 "Server handling of
//! SESSION_RECONNECT", Ceph's `ProtocolV2::handle_reconnect`), as a pure function of the
//! session it names and the request.

use crate::proto::control::{Control, Reconnect};
use crate::proto::hooks;
use crate::proto::wire::EntityAddr;

use super::session::SessionView;

/// What the server answers to SESSION_RECONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReconnectDecision {
    /// The existing session takes over this connection and answers SESSION_RECONNECT_OK.
    Accept,
    /// SESSION_RESET: the client starts over with CLIENT_IDENT; `full` also drops its queues.
    Reset { full: bool },
    /// SESSION_RETRY with the session's connect_seq: the client retries with a higher one.
    Retry { connect_seq: u64 },
    /// SESSION_RETRY_GLOBAL with the peer's last global_seq: the client retries past it.
    RetryGlobal { global_seq: u64 },
    /// WAIT: a reconnect race this side wins; the client backs off.
    Wait,
}

impl ReconnectDecision {
    /// The frame to send, except for `Accept`, whose SESSION_RECONNECT_OK carries the
    /// session's in_seq after the take-over.
    pub(super) fn reply(self) -> Option<Control> {
        Some(match self {
            ReconnectDecision::Accept => return None,
            ReconnectDecision::Reset { full } => Control::SessionReset { full },
            ReconnectDecision::Retry { connect_seq } => Control::SessionRetry { connect_seq },
            ReconnectDecision::RetryGlobal { global_seq } => {
                Control::SessionRetryGlobal { global_seq }
            }
            ReconnectDecision::Wait => Control::Wait,
        })
    }

    /// The outcome as the `ringwire_reconnect` probe reports it.
    pub(super) fn probe_outcome(self) -> u32 {
        match self {
            ReconnectDecision::Accept => hooks::RECONNECT_OK,
            ReconnectDecision::Reset { full: true } => hooks::RECONNECT_RESET_FULL,
            ReconnectDecision::Reset { full: false } => hooks::RECONNECT_RESET_PARTIAL,
            ReconnectDecision::Retry { .. } => hooks::RECONNECT_RETRY,
            ReconnectDecision::RetryGlobal { .. } => hooks::RECONNECT_RETRY_GLOBAL,
            ReconnectDecision::Wait => hooks::RECONNECT_WAIT,
        }
    }
}

/// The answer to `r`, a SESSION_RECONNECT from the peer at `peer` (its first address), given
/// the session registered for it (`existing`) and our own address (`mine`, for races).
/// Checked in Ceph's order; the rule numbers are msgr2.md §1.9's.
pub(super) fn decide_reconnect(
    existing: Option<&SessionView>,
    r: &Reconnect,
    peer: &EntityAddr,
    mine: Option<&EntityAddr>,
) -> ReconnectDecision {
    // Rules 1 and 2: a closed session leaves the registry, so both read "none".
    let Some(e) = existing else {
        return ReconnectDecision::Reset { full: true };
    };
    // Rule 3 (existing being replaced → RETRY_GLOBAL) has no case here: Ringwire replaces a
    // session's connection in one step, never leaving one half-replaced.
    if e.client_cookie != r.client_cookie {
        // Rule 4: the peer restarted. A reset makes it send CLIENT_IDENT next, where the old
        // session is reset too (if resetcheck).
        return ReconnectDecision::Reset {
            full: e.policy.resetcheck,
        };
    }
    if e.server_cookie == 0 {
        // Rule 5: our SERVER_IDENT never reached the peer.
        return ReconnectDecision::Reset { full: false };
    }
    if e.peer_global_seq > r.global_seq {
        // Rule 6.
        return ReconnectDecision::RetryGlobal {
            global_seq: e.peer_global_seq,
        };
    }
    if e.connect_seq > r.connect_seq {
        // Rule 7.
        return ReconnectDecision::Retry {
            connect_seq: e.connect_seq,
        };
    }
    // Rule 8: both sides reconnecting at once; the lower address wins, unless we are the
    // server (which never reconnects).
    if e.connect_seq == r.connect_seq && !e.policy.server && mine.is_some_and(|m| peer > m) {
        return ReconnectDecision::Wait;
    }
    // Rule 9.
    ReconnectDecision::Accept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::policy::Policy;
    use crate::proto::wire::EntityAddrVec;

    use super::super::session::SessionState;

    fn addr(port: u16) -> EntityAddr {
        SessionView::addr(port)
    }

    fn existing(policy: Policy) -> SessionView {
        SessionView::example(policy, SessionState::Standby)
    }

    fn request(client_cookie: u64, global_seq: u64, connect_seq: u64) -> Reconnect {
        Reconnect {
            addrs: EntityAddrVec(vec![addr(7000)]),
            client_cookie,
            server_cookie: 22,
            global_seq,
            connect_seq,
            msg_seq: 0,
        }
    }

    #[test]
    fn decide_reconnect_table() {
        use ReconnectDecision::*;
        let lossless_peer = Policy::lossless_peer();
        let server = Policy::stateful_server();
        let reuse = Policy::lossless_peer_reuse();
        let no_server_cookie = SessionView {
            server_cookie: 0,
            ..existing(server)
        };
        let (low, high) = (addr(6000), addr(8000));
        #[rustfmt::skip]
        let rows: Vec<(&str, Option<SessionView>, Reconnect, EntityAddr, ReconnectDecision)> = vec![
            // Rule 1: no existing session for the peer's addrs → RESET(full).
            ("1 no session", None, request(11, 5, 4), high, Reset { full: true }),
            // Rule 2: existing CLOSED → RESET(full); closed sessions leave the registry: rule 1.
            // Rule 4: the client_cookie differs (the peer restarted) → RESET(full=resetcheck).
            ("4 restarted, resetcheck", Some(existing(server)), request(99, 5, 4), high,
             Reset { full: true }),
            ("4 restarted, no resetcheck", Some(existing(lossless_peer)), request(99, 5, 4), high,
             Reset { full: false }),
            // Rule 4 comes before the seqs: a restarted peer has low ones.
            ("4 before 6", Some(existing(server)), request(99, 1, 0), high, Reset { full: true }),
            // Rule 5: server_cookie 0 (our SERVER_IDENT was lost) → RESET(partial).
            ("5 no server cookie", Some(no_server_cookie), request(11, 5, 4), high,
             Reset { full: false }),
            // Rule 6: the session saw a newer global_seq → RETRY_GLOBAL(existing's).
            ("6 old global_seq", Some(existing(server)), request(11, 4, 4), high,
             RetryGlobal { global_seq: 5 }),
            // Rule 6 comes before rule 7.
            ("6 before 7", Some(existing(server)), request(11, 4, 0), high,
             RetryGlobal { global_seq: 5 }),
            // Rule 7: the session's connect_seq is higher → RETRY(existing's).
            ("7 old connect_seq", Some(existing(server)), request(11, 5, 2), high,
             Retry { connect_seq: 3 }),
            // Rule 8: equal connect_seq, peer's address higher, not a server → WAIT.
            ("8 race, peer higher", Some(existing(reuse)), request(11, 5, 3), high, Wait),
            // Rule 8: … the lower address wins: this connection takes over.
            ("8 race, peer lower", Some(existing(reuse)), request(11, 5, 3), low, Accept),
            // Rule 8: … a server never waits (it never reconnects itself).
            ("8 race, server", Some(existing(server)), request(11, 5, 3), high, Accept),
            // Rule 9: a newer connect_seq → the session takes over this connection.
            ("9 newer connect_seq", Some(existing(reuse)), request(11, 6, 4), high, Accept),
        ];
        let mine = addr(7000);
        for (row, e, r, peer, expected) in rows {
            let got = decide_reconnect(e.as_ref(), &r, &peer, Some(&mine));
            assert_eq!(got, expected, "row {row:?}");
        }
        // Rule 8 needs our address: an unbound endpoint never waits.
        let got = decide_reconnect(Some(&existing(reuse)), &request(11, 5, 3), &high, None);
        assert_eq!(got, Accept, "unbound");
    }

    #[test]
    fn replies_and_probe_outcomes() {
        use ReconnectDecision::*;
        for d in [
            Accept,
            Reset { full: true },
            Reset { full: false },
            Retry { connect_seq: 3 },
            RetryGlobal { global_seq: 5 },
            Wait,
        ] {
            let outcome = d
                .reply()
                .as_ref()
                .map_or(Some(hooks::RECONNECT_OK), hooks::reconnect_outcome);
            assert_eq!(outcome, Some(d.probe_outcome()), "{d:?}");
        }
    }
}
