//! Why a connection fails ([`FaultReason`]) and what its session does next.

use crate::proto::control::ControlError;
use crate::proto::frame::{FrameError, Tag};
use crate::proto::intercept::Step;
use crate::proto::wire::{EntityType, WireError};

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
    #[error("peer refused auth method none; it allows methods {allowed:?} (Ringwire supports none only; cephx is not implemented yet)")]
    AuthMethodRefused { allowed: Vec<u32> },
    #[error("peer chose connection mode {0}; Ringwire supports crc mode only")]
    UnsupportedConMode(u32),
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
        }
    }

    /// The name of each [`code`](Self::code), as the tracer prints it.
    pub fn code_name(code: u32) -> &'static str {
        const NAMES: [&str; 22] = [
            "unknown",
            "socket_closed",
            "connect_failed",
            "frame",
            "control",
            "message",
            "unexpected_frame",
            "wrong_peer_type",
            "auth_method_refused",
            "unsupported_con_mode",
            "bad_signature",
            "missing_features",
            "peer_missing_features",
            "bad_ident",
            "handshake_timeout",
            "idle_timeout",
            "injected",
            "intercepted",
            "wait",
            "stale",
            "ident_refused",
            "replaced",
        ];
        NAMES.get(code as usize).copied().unwrap_or("unknown")
    }
}
