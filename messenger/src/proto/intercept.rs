//! Fault injection at protocol steps, after Ceph's `Interceptor` (`src/msg/Messenger.h`,
//! msgr2.md §2): tests pause, fail or stop a connection at a named step.

use super::endpoint::ConnId;

/// The steps, numbered as in Ceph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    StartClientBannerExchange = 1,
    StartServerBannerExchange = 2,
    BannerExchangeBannerConnecting = 3,
    BannerExchange = 4,
    HandlePeerBannerBannerConnecting = 5,
    HandlePeerBanner = 6,
    HandlePeerBannerPayloadHelloConnecting = 7,
    HandlePeerBannerPayload = 8,
    SendAuthRequest = 9,
    HandleAuthRequestAcceptingSign = 10,
    SendClientIdentity = 11,
    SendServerIdentity = 12,
    SendReconnect = 13,
    SendReconnectOk = 14,
    Ready = 15,
    HandleMessage = 16,
    ReadMessageComplete = 17,
    SessionRetry = 18,
    SendCompressionRequest = 19,
    HandleCompressionRequest = 20,
}

impl Step {
    /// The steps a handshake passes through (compression is never negotiated).
    pub const HANDSHAKE: [Step; 14] = [
        Step::StartClientBannerExchange,
        Step::StartServerBannerExchange,
        Step::BannerExchangeBannerConnecting,
        Step::BannerExchange,
        Step::HandlePeerBannerBannerConnecting,
        Step::HandlePeerBanner,
        Step::HandlePeerBannerPayloadHelloConnecting,
        Step::HandlePeerBannerPayload,
        Step::SendAuthRequest,
        Step::HandleAuthRequestAcceptingSign,
        Step::SendClientIdentity,
        Step::SendServerIdentity,
        Step::SendReconnect,
        Step::SendReconnectOk,
    ];
}

/// What the interceptor wants done at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Fault the connection as a socket error would.
    Fail,
    /// Stop the connection and its session, as `mark_down` would.
    Stop,
    /// Hold the connection at this step until [`Endpoint::resume`](super::Endpoint::resume).
    Pause,
}

pub trait Interceptor {
    fn intercept(&mut self, conn: ConnId, step: Step) -> Action;
}
