//! Connections that belong to another endpoint. Sessions are placed by their peer's address
//! ([`owner_of`]); a connection accepted by one worker whose ident names a peer another worker
//! owns is handed over ([`Handoff`]) with its decoder position and unsent bytes, and the owner
//! continues it ([`Endpoint::adopt`]) from the ident frame on.

use std::net::SocketAddr;

use crate::proto::frame::{Frame, FrameDecoder, TxQueue};
use crate::proto::secure::GcmStream;
use crate::proto::wire::{AddrType, EntityAddr, EntityName, EntityType};

use super::config::{owner_of, placement_hash, Security};
use super::conn::{Conn, ConnState, Role};
use super::ids::ConnId;
use super::timer::Time;
use super::{Endpoint, Flow, Halt, Io};

/// An accepted connection on its way to the endpoint that owns its peer's session: the ident
/// frame that decided it and any bytes that followed. Opaque; pass it to [`Endpoint::adopt`].
#[derive(Debug)]
pub struct Handoff {
    peer_socket: Option<SocketAddr>,
    peer_type: EntityType,
    frame: Frame,
    rest: Vec<u8>,
    stream_offset: u64,
    /// Secure mode's receiving cipher (the sending one is in `tx`).
    rx_cipher: Option<GcmStream>,
    security: Option<Security>,
    authenticated: Option<EntityName>,
    tx: TxQueue,
}

impl Handoff {
    /// Records that `n` of the unsent bytes were written after all (a send completed after
    /// the hand-over began).
    pub fn advance_tx(&mut self, n: usize) {
        self.tx.advance(n.min(self.tx.len()));
    }
}

impl Endpoint {
    /// Takes over a connection another endpoint handed over ([`Io::Migrate`]).
    pub fn adopt(&mut self, now: Time, handoff: Handoff) -> ConnId {
        self.now = now;
        let cid = ConnId(self.alloc_id());
        let mut conn = Conn::new(cid, Role::Server, None, handoff.peer_socket, self.now);
        conn.set_state(ConnState::Session);
        conn.peer_type = handoff.peer_type;
        let limits = self.config.tuning.limits.before_ready();
        let mut decoder = FrameDecoder::new(limits, handoff.stream_offset);
        if let Some(rx) = handoff.rx_cipher {
            decoder.set_cipher(rx);
        }
        conn.decoder = Some(decoder);
        // Auth was done on the first endpoint.
        conn.auth.transcript = None;
        conn.auth.security = handoff.security;
        conn.auth.authenticated = handoff.authenticated;
        let unsent = !handoff.tx.is_empty();
        conn.tx = handoff.tx;
        self.conns.insert(cid, conn);
        if unsent {
            self.io.push_back(Io::Transmit { conn: cid });
        }
        self.arm_conn_timer(cid);
        match self.on_frame(cid, handoff.frame) {
            Ok(()) => self.process_input(cid, &handoff.rest),
            Err(_) => self.finish_migration(cid, &handoff.rest),
        }
        self.after_input(cid);
        cid
    }

    /// The placement hash of the address this endpoint will identify itself with on a client
    /// connection whose local IP is `local_ip` (what the server will see): a transport that
    /// must place a connection before the handshake (RDMA) tells the server this.
    pub fn placement_hint(&self, local_ip: std::net::IpAddr) -> u64 {
        let key = match self.config.addrs.primary() {
            Some(a) => *a,
            None => EntityAddr {
                ty: AddrType::Any,
                nonce: self.config.nonce,
                addr: Some(SocketAddr::new(local_ip, 0)),
            },
        };
        placement_hash(&key)
    }

    pub(super) fn owner(&self, key: &EntityAddr) -> usize {
        owner_of(key, self.config.placement.count)
    }

    pub(super) fn migrate(&mut self, cid: ConnId, key: EntityAddr, frame: Frame) -> Flow {
        let mut c = self.conns.remove(&cid).ok_or(Halt::Closed)?;
        self.sweep_timers();
        let stream_offset = c.decoder.as_ref().map_or(0, |d| d.frame_offset());
        let rx_cipher = c.decoder.as_mut().and_then(|d| d.take_cipher());
        let tx = c.tx;
        let to = self.owner(&key);
        let handoff = Handoff {
            peer_socket: c.peer_socket,
            peer_type: c.peer_type,
            frame,
            rest: Vec::new(),
            stream_offset,
            rx_cipher,
            security: c.auth.security,
            authenticated: c.auth.authenticated.take(),
            tx,
        };
        self.migrating = Some((cid, to, handoff));
        Err(Halt::Closed)
    }

    /// Sends a connection handed over during input processing on its way, with the input
    /// that followed its ident frame.
    pub(super) fn finish_migration(&mut self, cid: ConnId, rest: &[u8]) {
        if let Some((mcid, to, mut handoff)) = self.migrating.take() {
            if mcid == cid {
                handoff.rest.extend_from_slice(rest);
                self.io.push_back(Io::Migrate {
                    conn: cid,
                    to,
                    handoff: Box::new(handoff),
                });
            } else {
                self.migrating = Some((mcid, to, handoff));
            }
        }
    }
}
