//! One connection (a byte stream): its handshake state, its decoder and transmit queue, and
//! what it learned of the peer. Sessions live in `session.rs`; a connection points to one.

use std::net::SocketAddr;

use crate::proto::frame::{Banner, Frame, FrameDecoder, FrameError, TxQueue, BANNER_LEN};
use crate::proto::hooks;
use crate::proto::intercept::Step;
use crate::proto::wire::{EntityAddr, EntityType};

use super::auth::ConnAuth;
use super::ids::{ConnId, SessionId};
use super::timer::Time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Role {
    Client,
    Server,
}

/// Numbered as the `ringwire_conn_state` probe reports them (7 = closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    Connecting,
    Banner,
    Hello,
    Auth,
    AuthSign,
    Session,
    Ready,
}

pub(super) const CONN_CLOSED: u32 = 7;

impl ConnState {
    pub(super) fn name(self, role: Role) -> &'static str {
        match (self, role) {
            (ConnState::Connecting, _) => "CONNECTING",
            (ConnState::Banner, Role::Client) => "BANNER_CONNECTING",
            (ConnState::Banner, Role::Server) => "BANNER_ACCEPTING",
            (ConnState::Hello, Role::Client) => "HELLO_CONNECTING",
            (ConnState::Hello, Role::Server) => "HELLO_ACCEPTING",
            (ConnState::Auth, Role::Client) => "AUTH_CONNECTING",
            (ConnState::Auth, Role::Server) => "AUTH_ACCEPTING",
            (ConnState::AuthSign, Role::Client) => "AUTH_CONNECTING_SIGN",
            (ConnState::AuthSign, Role::Server) => "AUTH_ACCEPTING_SIGN",
            (ConnState::Session, Role::Client) => "SESSION_CONNECTING",
            (ConnState::Session, Role::Server) => "SESSION_ACCEPTING",
            (ConnState::Ready, _) => "READY",
        }
    }
}

/// What made a connection pause at a step; replayed on resume.
#[derive(Debug)]
pub(super) enum Trigger {
    Start,
    Banner(Banner),
    Frame(Frame),
}

pub(super) struct Conn {
    /// Process-wide id, as the probes report it.
    pub(super) global_id: u64,
    pub(super) role: Role,
    pub(super) state: ConnState,
    /// `tracing` span of this connection (peer recorded once known).
    pub(super) span: tracing::Span,
    pub(super) session: Option<SessionId>,
    /// Banner bytes until the banner is complete, then the frame decoder.
    pub(super) banner_buf: Vec<u8>,
    pub(super) decoder: Option<FrameDecoder>,
    pub(super) tx: TxQueue,
    /// Client: the address dialled. Server: the peer's socket address.
    pub(super) peer_socket: Option<SocketAddr>,
    pub(super) peer_type: EntityType,
    /// What the peer says our address is (HELLO).
    pub(super) learned_addr: Option<EntityAddr>,
    pub(super) paused: Option<(Step, Trigger)>,
    pub(super) pending_input: Vec<u8>,
    pub(super) resume_skip: Option<Step>,
    pub(super) deadline: Option<Time>,
    pub(super) last_input: Time,
    pub(super) next_keepalive: Option<Time>,
    pub(super) closed: bool,
    /// Auth state, and the pre-auth bytes AUTH_SIGNATURE covers.
    pub(super) auth: ConnAuth,
}

impl Conn {
    pub(super) fn new(
        id: ConnId,
        role: Role,
        session: Option<SessionId>,
        peer_socket: Option<SocketAddr>,
        now: Time,
    ) -> Conn {
        let span = tracing::debug_span!(
            "conn",
            id = id.0,
            role = ?role,
            socket = ?peer_socket,
            peer = tracing::field::Empty,
        );
        Conn {
            global_id: id.0,
            span,
            role,
            state: match role {
                Role::Client => ConnState::Connecting,
                Role::Server => ConnState::Banner,
            },
            session,
            banner_buf: Vec::with_capacity(BANNER_LEN),
            decoder: None,
            tx: TxQueue::default(),
            peer_socket,
            peer_type: EntityType::ANY,
            learned_addr: None,
            paused: None,
            pending_input: Vec::new(),
            resume_skip: None,
            deadline: None,
            last_input: now,
            next_keepalive: None,
            closed: false,
            auth: ConnAuth::default(),
        }
    }

    pub(super) fn set_state(&mut self, to: ConnState) {
        let _e = self.span.enter();
        tracing::debug!(
            from = self.state.name(self.role),
            to = to.name(self.role),
            "connection state"
        );
        hooks::ringwire_conn_state(
            self.global_id,
            self.session.map_or(0, |s| s.0),
            self.role as u32,
            self.state as u32,
            to as u32,
        );
        self.state = to;
    }

    /// Takes banner bytes from the front of `data` (no more than the banner needs); returns
    /// the banner once complete.
    pub(super) fn take_banner(&mut self, data: &mut &[u8]) -> Result<Option<Banner>, FrameError> {
        let n = banner_need(&self.banner_buf).min(data.len());
        self.banner_buf.extend_from_slice(&data[..n]);
        *data = &data[n..];
        parse_banner(&self.banner_buf)
    }
}

/// How many more bytes the banner needs (its head says how long its payload is).
fn banner_need(buf: &[u8]) -> usize {
    if buf.len() < 10 {
        10 - buf.len()
    } else {
        let len = u16::from_le_bytes([buf[8], buf[9]]) as usize;
        (10 + len).saturating_sub(buf.len())
    }
}

fn parse_banner(buf: &[u8]) -> Result<Option<Banner>, FrameError> {
    if buf.len() < 10 {
        return Ok(None);
    }
    let mut head = [0u8; 10];
    head.copy_from_slice(&buf[..10]);
    let len = Banner::decode_head(&head)?;
    if buf.len() < 10 + len {
        return Ok(None);
    }
    Ok(Some(Banner::decode_payload(&buf[10..10 + len])))
}
