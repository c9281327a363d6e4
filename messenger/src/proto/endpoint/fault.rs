//! Why a connection fails ([`FaultReason`]) and what its session does next
//! ([`decide_fault`]: msgr2.md §1.9 "Fault handling", Ceph's `ProtocolV2::_fault`).

use std::time::Duration;

use crate::proto::cephx::CephxError;
use crate::proto::control::ControlError;
use crate::proto::frame::{FrameError, Tag};
use crate::proto::intercept::Step;
use crate::proto::policy::Policy;
use crate::proto::secure::SecureError;
use crate::proto::wire::{EntityType, WireError};

use super::config::Tuning;

/// Why a connection failed. Each is reported once; the session then follows its policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultReason {
    #[error("connection closed by the transport")]
    SocketClosed,
    /// The transport could not connect; `errno` is the OS error when it gave one.
    #[error("{}", connect_failure(*errno))]
    ConnectFailed { errno: Option<i32> },
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
    #[error("control frame error: {0}")]
    Control(#[from] ControlError),
    #[error("malformed message: {0}")]
    Message(#[from] WireError),
    #[error("unexpected {tag} in state {state}")]
    UnexpectedFrame { state: &'static str, tag: Tag },
    #[error("peer is a {got}, expected a {expected}")]
    WrongPeerType {
        expected: EntityType,
        got: EntityType,
    },
    #[error("peer refused our auth methods; it allows methods {allowed:?} (1 = none, 2 = cephx; cephx needs a keyring with our key)")]
    AuthMethodRefused { allowed: Vec<u32> },
    #[error("peer chose connection mode {0}, which we did not offer")]
    UnsupportedConMode(u32),
    /// The peer refused our cephx proof (Ceph answers AUTH_BAD_METHOD, result -13).
    #[error("authentication failed: the peer rejected our key (result {result}, permission denied); is the keyring's key the one the cluster holds for our name?")]
    AuthRejected { result: i32 },
    #[error(
        "peer refused our connection modes; it allows modes {allowed:?} (1 = crc, 2 = secure)"
    )]
    ConModeRefused { allowed: Vec<u32> },
    #[error("authentication failed: cephx: {0}")]
    Cephx(#[from] CephxError),
    #[error("secure mode: {0}")]
    Secure(#[from] SecureError),
    #[error("no auth method to offer this peer: cephx needs our key, and for a daemon an unexpired ticket from a monitor (authenticate with one first, again once tickets expire); auth none is not in auth_client_required")]
    NoAuthMethod,
    #[error("auth signature mismatch")]
    BadSignature,
    #[error("peer requires features {0:#x} that we do not support")]
    MissingFeatures(u64),
    #[error("peer lacks features {0:#x} that we require")]
    PeerMissingFeatures(u64),
    #[error("bad ident: {0}")]
    BadIdent(&'static str),
    #[error("handshake did not complete in time")]
    HandshakeTimeout,
    #[error("no input for the idle timeout")]
    IdleTimeout,
    #[error("injected socket failure")]
    Injected,
    #[error("interceptor failed the connection at {0:?}")]
    Intercepted(Step),
    #[error("peer asked us to wait (connection race)")]
    Wait,
    #[error("stale connection (an older global_seq than the session's)")]
    Stale,
    /// The peer closed the connection instead of answering our CLIENT_IDENT or
    /// SESSION_RECONNECT. A Ceph or Ringwire server does that when the address we dialled is
    /// not its own (most often a nonce from an earlier instance), or refuses us for a reason
    /// only its log names.
    #[error(
        "peer closed the connection in answer to our identification: the address's nonce is \
         probably not the peer's (a restarted daemon has a new one; name none, v2:IP:PORT, to \
         reach whichever instance listens there), or it refused us (its log says why)"
    )]
    IdentRefused,
    /// The peer started a new session on another connection, which ends a lossy one.
    #[error("peer started a new session")]
    Replaced,
    /// The peer sent a sequence number (`what`: connect_seq, global_seq or message seq) no
    /// counter reaches, where Ceph would let its own counter wrap (see `seq.rs`).
    #[error("peer sent an impossible {what} (2^63 or more; no counter from 0 gets there)")]
    SeqOverflow { what: &'static str },
    /// Not a connection's failure but a session's end: the peer did not come back within
    /// `Tuning::standby_timeout` after its connection failed.
    #[error("the peer did not reconnect within the standby timeout")]
    StandbyTimeout,
}

fn connect_failure(errno: Option<i32>) -> String {
    match errno {
        Some(libc::ECONNREFUSED) => "nothing listening there (connection refused)".into(),
        Some(e) => format!("connect failed: {}", std::io::Error::from_raw_os_error(e)),
        None => "connect failed".into(),
    }
}

impl FaultReason {
    /// A stable number per kind of fault, for the `ringwire_fault` probe.
    pub fn code(&self) -> u32 {
        match self {
            FaultReason::SocketClosed => 1,
            FaultReason::ConnectFailed { .. } => 2,
            FaultReason::Frame(_) => 3,
            FaultReason::Control(_) => 4,
            FaultReason::Message(_) => 5,
            FaultReason::UnexpectedFrame { .. } => 6,
            FaultReason::WrongPeerType { .. } => 7,
            FaultReason::AuthMethodRefused { .. } => 8,
            FaultReason::UnsupportedConMode(_) => 9,
            FaultReason::BadSignature => 10,
            FaultReason::MissingFeatures(_) => 11,
            FaultReason::PeerMissingFeatures(_) => 12,
            FaultReason::BadIdent(_) => 13,
            FaultReason::HandshakeTimeout => 14,
            FaultReason::IdleTimeout => 15,
            FaultReason::Injected => 16,
            FaultReason::Intercepted(_) => 17,
            FaultReason::Wait => 18,
            FaultReason::Stale => 19,
            FaultReason::IdentRefused => 20,
            FaultReason::Replaced => 21,
            FaultReason::SeqOverflow { .. } => 22,
            FaultReason::StandbyTimeout => 23,
            FaultReason::AuthRejected { .. } => 24,
            FaultReason::ConModeRefused { .. } => 25,
            FaultReason::Cephx(_) => 26,
            FaultReason::Secure(_) => 27,
            FaultReason::NoAuthMethod => 28,
        }
    }

    /// The name of each [`code`](Self::code), as the tracer prints it.
    pub fn code_name(code: u32) -> &'static str {
        ringwire_trace_common::fault::name(code)
    }
}

/// What [`decide_fault`] needs to know of a session whose connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FaultedSession {
    pub(super) policy: Policy,
    /// Messages queued or written but not acknowledged.
    pub(super) has_pending: bool,
    /// Whether we know an address to dial the peer at (a peer that dialled us from an
    /// unbound client has none).
    pub(super) can_dial: bool,
    /// Whether the failed connection had reached READY.
    pub(super) was_ready: bool,
    /// The last reconnect delay (zero: none yet).
    pub(super) backoff: Duration,
}

/// What a session does after its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FaultAction {
    /// Dial again after this delay (also the next delay's base).
    Backoff(Duration),
    /// Dial again at once.
    RedialNow,
    /// Lossy: the session ends, its undelivered messages are gone, the application hears
    /// `Event::Reset`.
    Reset,
    /// Wait, with unacknowledged messages requeued: for the peer to reconnect (server policy),
    /// for something to send (standby policy), or for an address to dial. A session only the
    /// peer can revive ends if the peer has not come back after `expire_after`.
    Standby { expire_after: Option<Duration> },
}

/// What follows a fault, per policy (msgr2.md §1.9 "Fault handling"). Lossless sessions
/// requeue their unacknowledged messages whatever this says.
pub(super) fn decide_fault(
    s: &FaultedSession,
    reason: &FaultReason,
    tuning: &Tuning,
) -> FaultAction {
    if s.policy.lossy {
        return FaultAction::Reset;
    }
    // Only the peer can revive a session we never dial: it expires if the peer does not
    // come back (`standby_timeout`), so departed clients do not pile up.
    let waits_for_peer = s.policy.server || !s.can_dial;
    if waits_for_peer || (s.policy.standby && !s.has_pending) {
        let expire_after = tuning.standby_timeout.filter(|_| waits_for_peer);
        return FaultAction::Standby { expire_after };
    }
    let wait = *reason == FaultReason::Wait;
    if s.was_ready && !wait {
        return FaultAction::RedialNow;
    }
    FaultAction::Backoff(next_backoff(s.backoff, wait, tuning))
}

/// `ms_initial_backoff` doubling to `ms_max_backoff`; the maximum at once after WAIT.
fn next_backoff(last: Duration, wait: bool, tuning: &Tuning) -> Duration {
    if wait {
        tuning.max_backoff
    } else if last.is_zero() {
        tuning.initial_backoff
    } else {
        last.saturating_mul(2).min(tuning.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_tracer_names_each_reason_by_its_code() {
        let cases = [
            (FaultReason::SocketClosed, "socket_closed"),
            (FaultReason::ConnectFailed { errno: None }, "connect_failed"),
            (FaultReason::HandshakeTimeout, "handshake_timeout"),
            (FaultReason::Injected, "injected"),
            (FaultReason::Wait, "wait"),
            (FaultReason::Stale, "stale"),
            (FaultReason::IdentRefused, "ident_refused"),
            (FaultReason::Replaced, "replaced"),
            (FaultReason::SeqOverflow { what: "seq" }, "seq_overflow"),
            (FaultReason::StandbyTimeout, "standby_timeout"),
        ];
        for (reason, name) in cases {
            assert_eq!(FaultReason::code_name(reason.code()), name, "{reason:?}");
        }
    }

    #[test]
    fn decide_fault_table() {
        let tuning = Tuning {
            initial_backoff: ms(200),
            max_backoff: ms(1000),
            standby_timeout: Some(ms(5000)),
            ..Tuning::default()
        };
        let keep = Tuning {
            standby_timeout: None,
            ..tuning
        };
        let expires = FaultAction::Standby {
            expire_after: Some(ms(5000)),
        };
        let waits = FaultAction::Standby { expire_after: None };
        let session = |policy: Policy| FaultedSession {
            policy,
            has_pending: true,
            can_dial: true,
            was_ready: false,
            backoff: Duration::ZERO,
        };
        let lossless = session(Policy::lossless_client());
        let closed = FaultReason::SocketClosed;
        #[rustfmt::skip]
        let rows: Vec<(&str, FaultedSession, FaultReason, FaultAction)> = vec![
            // §1.9 "lossy → stop and deliver ms_handle_reset".
            ("lossy", session(Policy::lossy_client()), closed.clone(), FaultAction::Reset),
            ("lossy server", session(Policy::stateless_server()), closed.clone(), FaultAction::Reset),
            // §1.9 "server policy … → STANDBY", even with messages queued. Ringwire: only the
            // peer can revive it, so it expires after standby_timeout.
            ("server", session(Policy::stateful_server()), closed.clone(), expires),
            // §1.9 "standby policy with nothing queued → STANDBY"; we can redial it, so it
            // waits without expiring.
            ("standby, idle",
             FaultedSession { has_pending: false, ..session(Policy::lossless_peer()) },
             closed.clone(), waits),
            // … and with something queued it reconnects like any client.
            ("standby, queued", session(Policy::lossless_peer()), closed.clone(),
             FaultAction::Backoff(ms(200))),
            // Ringwire: a session with no address to dial (the peer dialled us from an
            // unbound client) can only wait for the peer.
            ("nowhere to dial", FaultedSession { can_dial: false, ..lossless }, closed.clone(),
             expires),
            // §1.9 "reconnect immediately if the connection had been READY".
            ("was ready", FaultedSession { was_ready: true, ..lossless }, closed.clone(),
             FaultAction::RedialNow),
            // §1.9 "after WAIT, use the max directly", even after READY (Ceph: `state == WAIT`
            // takes the backoff branch).
            ("was ready, WAIT", FaultedSession { was_ready: true, ..lossless }, FaultReason::Wait,
             FaultAction::Backoff(ms(1000))),
            // §1.9 "else after backoff: ms_initial_backoff 0.2 s doubling to ms_max_backoff".
            ("first backoff", lossless, closed.clone(), FaultAction::Backoff(ms(200))),
            ("doubling", FaultedSession { backoff: ms(400), ..lossless }, closed.clone(),
             FaultAction::Backoff(ms(800))),
            ("capped", FaultedSession { backoff: ms(800), ..lossless }, closed.clone(),
             FaultAction::Backoff(ms(1000))),
            ("WAIT", FaultedSession { backoff: ms(200), ..lossless }, FaultReason::Wait,
             FaultAction::Backoff(ms(1000))),
            // A huge configured delay saturates instead of overflowing the doubling.
            ("huge backoff", FaultedSession { backoff: Duration::MAX, ..lossless },
             closed.clone(), FaultAction::Backoff(ms(1000))),
        ];
        for (row, s, reason, expected) in rows {
            assert_eq!(decide_fault(&s, &reason, &tuning), expected, "row {row:?}");
        }
        // Without a standby timeout, sessions wait for their peer as long as it takes.
        let server = session(Policy::stateful_server());
        assert_eq!(
            decide_fault(&server, &closed, &keep),
            waits,
            "no standby_timeout"
        );
    }

    #[test]
    fn codes_have_names() {
        let cases = [
            (FaultReason::SocketClosed, "socket_closed"),
            (FaultReason::Stale, "stale"),
            (FaultReason::Replaced, "replaced"),
            (
                FaultReason::SeqOverflow {
                    what: "connect_seq",
                },
                "seq_overflow",
            ),
        ];
        for (reason, name) in cases {
            assert_eq!(FaultReason::code_name(reason.code()), name, "{reason:?}");
        }
        assert_eq!(
            FaultReason::code_name(FaultReason::AuthRejected { result: -13 }.code()),
            "auth_rejected"
        );
        assert_eq!(
            FaultReason::code_name(FaultReason::Secure(SecureError::OutOfNonces).code()),
            "secure"
        );
        assert_eq!(FaultReason::code_name(28), "no_auth_method");
        assert_eq!(FaultReason::code_name(23), "standby_timeout");
        assert_eq!(FaultReason::code_name(29), "unknown");
    }
}
