//! Two [`Endpoint`]s joined by an in-memory stream, for deterministic tests of the protocol
//! core without sockets. Bytes move in whole batches, in order.

use std::net::SocketAddr;

use crate::proto::{ConnId, Endpoint, EndpointConfig, Event, Io, Time};

pub const CLIENT: usize = 0;
pub const SERVER: usize = 1;

/// A client endpoint, a server endpoint and at most one connection between them.
pub struct Pipe {
    pub eps: [Endpoint; 2],
    pub conns: [Option<ConnId>; 2],
    /// Events each side raised, in order.
    pub events: [Vec<Event>; 2],
    pub now: Time,
    /// Bytes carried each way (client→server, server→client).
    pub bytes: [u64; 2],
}

impl Pipe {
    pub fn new(client: EndpointConfig, server: EndpointConfig) -> Self {
        Pipe {
            eps: [Endpoint::new(client), Endpoint::new(server)],
            conns: [None, None],
            events: [Vec::new(), Vec::new()],
            now: Time(1),
            bytes: [0, 0],
        }
    }

    fn deliver(&mut self, from: usize, bytes: &[u8]) {
        self.bytes[from] += bytes.len() as u64;
        if let Some(peer) = self.conns[1 - from] {
            self.eps[1 - from].on_input(self.now, peer, bytes);
        }
    }

    /// Moves bytes and collects events until nothing moves. Returns false if it did not
    /// settle within `max_rounds`.
    pub fn run(&mut self, max_rounds: usize) -> bool {
        let mut buf = Vec::new();
        for _ in 0..max_rounds {
            let mut moved = false;
            for side in [CLIENT, SERVER] {
                while let Some(io) = self.eps[side].poll_io() {
                    moved = true;
                    match io {
                        Io::Connect { conn, .. } => {
                            self.conns[CLIENT] = Some(conn);
                            let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
                            self.conns[SERVER] = Some(self.eps[SERVER].accept(self.now, peer));
                            self.eps[CLIENT].on_connected(self.now, conn);
                        }
                        Io::Transmit { conn } => {
                            // Closed since: its last bytes come with Io::Close.
                            let Some(q) = self.eps[side].tx_queue(conn) else {
                                continue;
                            };
                            buf.clear();
                            for c in q.chunks() {
                                buf.extend_from_slice(c);
                            }
                            q.advance(buf.len());
                            let bytes = std::mem::take(&mut buf);
                            self.deliver(side, &bytes);
                            buf = bytes;
                        }
                        Io::Migrate { .. } => {
                            unreachable!("a pipe joins two single endpoints: nothing migrates")
                        }
                        Io::Close { remaining, .. } => {
                            self.deliver(side, &remaining.concat());
                            if let Some(peer) = self.conns[1 - side].take() {
                                self.eps[1 - side].on_closed(self.now, peer);
                            }
                            self.conns[side] = None;
                        }
                    }
                }
                while let Some(ev) = self.eps[side].poll_event() {
                    moved = true;
                    self.events[side].push(ev);
                }
            }
            if !moved {
                return true;
            }
        }
        false
    }
}
