//! Sessions live on the endpoint (worker) that owns their peer's address. A connection accepted
//! by another endpoint is handed over at its ident, on first contact and on every reconnect,
//! and the session resumes there with nothing lost.

use std::net::SocketAddr;

use ringwire::proto::{
    owner_of, ConnId, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType,
    Event, Io, Message, Placement, Policy, Tag, Time,
};

struct World {
    client: Endpoint,
    servers: Vec<Endpoint>,
    /// The one socket: client conn ↔ (server endpoint, server conn).
    link: Option<(ConnId, usize, ConnId)>,
    /// Which server endpoint accepts new sockets (the "wrong" one, on purpose).
    acceptor: usize,
    delivered: Vec<(usize, u64)>,
    migrations: usize,
    remote_resets: usize,
    now: Time,
}

impl World {
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(io) = self.client.poll_io() {
                moved = true;
                match io {
                    Io::Connect { conn, .. } => {
                        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
                        let s = self.servers[self.acceptor].accept(self.now, peer);
                        self.link = Some((conn, self.acceptor, s));
                        self.client.on_connected(self.now, conn);
                    }
                    Io::Transmit { conn } => {
                        let Some(q) = self.client.tx_queue(conn) else {
                            continue;
                        };
                        let bytes = q.take_all();
                        if let Some((c, i, s)) = self.link {
                            if c == conn {
                                self.servers[i].on_input(self.now, s, &bytes);
                            }
                        }
                    }
                    Io::Close { conn, .. } => {
                        if let Some((c, i, s)) = self.link.take() {
                            assert_eq!(c, conn);
                            self.servers[i].on_closed(self.now, s);
                        }
                    }
                    Io::Migrate { .. } => unreachable!("the client has one endpoint"),
                }
            }
            for i in 0..self.servers.len() {
                while let Some(io) = self.servers[i].poll_io() {
                    moved = true;
                    match io {
                        Io::Transmit { conn } => {
                            let Some(q) = self.servers[i].tx_queue(conn) else {
                                continue;
                            };
                            let bytes = q.take_all();
                            if let Some((c, li, s)) = self.link {
                                if (li, s) == (i, conn) {
                                    self.client.on_input(self.now, c, &bytes);
                                }
                            }
                        }
                        Io::Migrate { conn, to, handoff } => {
                            self.migrations += 1;
                            let (c, li, s) = self.link.expect("a live socket");
                            assert_eq!((li, s), (i, conn));
                            let adopted = self.servers[to].adopt(self.now, *handoff);
                            self.link = Some((c, to, adopted));
                        }
                        Io::Close { conn, remaining } => {
                            if let Some((c, li, s)) = self.link {
                                if (li, s) == (i, conn) {
                                    self.client.on_input(self.now, c, &remaining.concat());
                                    self.link = None;
                                    self.client.on_closed(self.now, c);
                                }
                            }
                        }
                        Io::Connect { .. } => unreachable!("stateful servers never dial"),
                    }
                }
                while let Some(ev) = self.servers[i].poll_event() {
                    moved = true;
                    match ev {
                        Event::Message { msg, .. } => self.delivered.push((i, msg.seq)),
                        Event::RemoteReset { .. } => self.remote_resets += 1,
                        _ => {}
                    }
                }
            }
            while self.client.poll_event().is_some() {
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }
}

#[test]
fn sessions_follow_their_owner_across_reconnects() {
    let server_addr = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 1);
    let client_addr = EntityAddr::msgr2("127.0.0.1:6900".parse().unwrap(), 2);
    let owner = owner_of(&client_addr, 2);
    let servers = (0..2)
        .map(|index| {
            let mut c = EndpointConfig::new(
                EntityName {
                    ty: EntityType::OSD,
                    id: "0".into(),
                },
                EntityAddrVec(vec![server_addr]),
            );
            c.placement = Placement {
                index,
                count: 2,
                messenger: 0,
            };
            c.default_policy = Policy::stateful_server();
            c.seed = index as u64 + 7;
            Endpoint::new(c)
        })
        .collect();
    let mut cc = EndpointConfig::new(
        EntityName {
            ty: EntityType::CLIENT,
            id: "1".into(),
        },
        EntityAddrVec(vec![client_addr]),
    );
    cc.default_policy = Policy::lossless_client();
    let mut w = World {
        client: Endpoint::new(cc),
        servers,
        link: None,
        acceptor: 1 - owner,
        delivered: Vec::new(),
        migrations: 0,
        remote_resets: 0,
        now: Time(1),
    };
    let s = w.client.connect(w.now, server_addr, EntityType::OSD);
    for _ in 0..3 {
        w.client.send(w.now, s, Message::new(9)).unwrap();
    }
    w.pump();
    assert_eq!(w.migrations, 1, "first contact is handed to the owner");
    assert!(w.client.is_connected(s));
    // Cut the socket with two messages unacknowledged in flight... then reconnect.
    let (c, i, sc) = w.link.take().unwrap();
    w.servers[i].on_closed(w.now, sc);
    w.client.send(w.now, s, Message::new(9)).unwrap();
    w.client.send(w.now, s, Message::new(9)).unwrap();
    w.client.on_closed(w.now, c);
    w.pump();
    assert_eq!(w.migrations, 2, "the reconnect is handed to the owner too");
    assert!(w.client.is_connected(s));
    assert_eq!(w.remote_resets, 0);
    assert_eq!(
        w.delivered,
        (1..=5).map(|seq| (owner, seq)).collect::<Vec<_>>(),
        "every message once, in order, all on the owning endpoint"
    );
    assert_eq!(
        w.servers[owner]
            .frame_counts()
            .sent(Tag::SessionReconnectOk),
        1
    );
    assert_eq!(w.servers[1 - owner].open_sessions(), 0);
}
