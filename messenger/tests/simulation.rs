//! Deterministic simulation: two protocol cores joined by simulated streams, driven by a seeded
//! scheduler with a virtual clock. Faults: connections killed at random moments (often
//! mid-frame), interceptor failures at every handshake step, refused connects, delays, and
//! simultaneous connects from both peers.
//!
//! Asserts, per seed: every message arrives intact (type, front, data); lossless policies
//! deliver every message exactly once and in order; lossy policies deliver, in both
//! directions, on each session a prefix of what was sent on its peer session (nothing
//! duplicated, reordered or skipped), and the sender of anything lost saw its session reset
//! or closed; sequence numbers and acks agree at the end; every run finishes within a step and
//! time budget.
//!
//! One file on purpose (over 800 lines): the simulated network, the scheduler and the
//! checks share the same per-seed state, and a failing seed is replayed from here alone.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ringwire::proto::cephx::client::read_auth_done;
use ringwire::proto::cephx::keyring::key_to_base64;
use ringwire::proto::cephx::server::{Grant, SERVICE_TICKET_TTL};
use ringwire::proto::cephx::{CryptoKey, KeyType, Keyring, Secret};
use ringwire::proto::endpoint::{Entropy, TicketStore, UnixClock};
use ringwire::proto::{
    Action, AuthConfig, AuthMethod, ConnId, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec,
    EntityName, EntityType, Event, FrameCounts, Interceptor, Io, Message, ModeName, Policy,
    SessionId, Step, Tag, Time,
};

const SEEDS: u64 = 1000;
const MESSAGES: u32 = 24;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// Fails the `nth` occurrence of `step` on this node.
struct FailAt {
    step: Step,
    nth: u32,
    seen: Rc<RefCell<u32>>,
}
impl Interceptor for FailAt {
    fn intercept(&mut self, _conn: ConnId, step: Step) -> Action {
        if step != self.step {
            return Action::Continue;
        }
        let mut seen = self.seen.borrow_mut();
        *seen += 1;
        if *seen == self.nth {
            Action::Fail
        } else {
            Action::Continue
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action2 {
    Accept {
        server: usize,
        client: usize,
        conn: ConnId,
        from: SocketAddr,
    },
    Connected {
        node: usize,
        conn: ConnId,
    },
    Deliver {
        link: u64,
        node: usize,
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        link: u64,
        node: usize,
        conn: ConnId,
    },
    AppSend {
        node: usize,
    },
    Kill,
}

struct Link {
    ends: [(usize, ConnId); 2],
    alive: bool,
    /// Per direction (index of the receiving end): when the last byte lands.
    next_at: [Time; 2],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    ClientServer { lossy: bool },
    Peers { reuse: bool },
}

struct Node {
    ep: Endpoint,
    addr: EntityAddr,
    /// The session this node sends its own messages on (clients and peers).
    session: Option<SessionId>,
    next_index: u32,
    /// Indices sent with send() == Ok, per session.
    sent_ok: Vec<(SessionId, u32)>,
    resets: HashSet<SessionId>,
    /// Last index received from the other node, per receiving session.
    last_rx: HashMap<SessionId, u32>,
    /// (receiving session, index) of every message received, in order.
    received: Vec<(SessionId, u32)>,
    echoes_sent: u32,
}

#[derive(Default, Debug)]
struct Stats {
    runs: u64,
    faults: u64,
    kills: u64,
    connects: u64,
    delivered: u64,
    resets: u64,
    ready: u64,
    /// Of `ready`: connections that settled on cephx and secure mode.
    ready_secure: u64,
    max_time_ms: u64,
    frames: FrameCounts,
}

struct Sim {
    stats: Stats,
    rng: Rng,
    now: Time,
    seq: u64,
    heap: BinaryHeap<Reverse<(Time, u64, Action2)>>,
    nodes: Vec<Node>,
    links: BTreeMap<u64, Link>,
    ends: HashMap<(usize, ConnId), u64>,
    next_link: u64,
    next_port: u16,
    scenario: Scenario,
    kills_left: u32,
    log: Vec<String>,
}

fn key(rng: &mut Rng) -> CryptoKey {
    let bytes = (0..2).flat_map(|_| rng.next().to_le_bytes()).collect();
    CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(bytes)).unwrap()
}

/// cephx and secure mode for the two nodes, every key from the seeded `rng`: each node's own
/// key and the OSDs' service secret in one keyring, and for each node an OSD ticket as a
/// monitor would have issued it (so each can present an authorizer to the other).
fn secure_auth(rng: &mut Rng, names: [&EntityName; 2]) -> [AuthConfig; 2] {
    let osd_secret = key(rng);
    let keys = [key(rng), key(rng)];
    let mut text = format!("[osd.]\n\tkey = {}\n", *key_to_base64(&osd_secret));
    for (name, k) in names.iter().zip(&keys) {
        text.push_str(&format!("[{name}]\n\tkey = {}\n", *key_to_base64(k)));
    }
    let keyring = Keyring::parse(&text).unwrap();
    let mint = |rng: &mut Rng, i: usize| {
        let tickets = TicketStore::default();
        let grant = Grant {
            name: names[i],
            global_id: 5000 + i as u64,
            session_key: key(rng),
            service_keys: vec![(EntityType::OSD, key(rng))],
            connection_secret: Secret::new(Vec::new()),
            ticket_secret: &key(rng),
            service_secrets: vec![(EntityType::OSD, &osd_secret)],
            service_ttl: SERVICE_TICKET_TTL,
            now_unix: UnixClock::default().now(),
        };
        let done = read_auth_done(&keys[i], &grant.auth_done_payload(&keys[i])).unwrap();
        tickets.replace(5000 + i as u64, done.tickets, Time(0));
        let mut entropy = [0u8; 32];
        for c in entropy.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        AuthConfig {
            client_required: vec![AuthMethod::Cephx],
            client_mode: vec![ModeName::Secure],
            key: Some(keys[i].clone()),
            service_required: vec![AuthMethod::Cephx],
            cluster_required: vec![AuthMethod::Cephx],
            service_mode: vec![ModeName::Secure],
            cluster_mode: vec![ModeName::Secure],
            keyring: Some(keyring.clone()),
            tickets,
            entropy: Entropy(entropy),
            ..AuthConfig::default()
        }
    };
    [mint(rng, 0), mint(rng, 1)]
}

fn node_addr(i: usize) -> EntityAddr {
    EntityAddr::msgr2(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 6800 + i as u16),
        1000 + i as u32,
    )
}

impl Sim {
    fn new(seed: u64, scenario: Scenario, secure: bool) -> Sim {
        let salt = match scenario {
            Scenario::ClientServer { lossy } => 1 + lossy as u64,
            Scenario::Peers { reuse } => 3 + reuse as u64,
        } + 8 * secure as u64;
        let mut rng =
            Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt.wrapping_mul(0xdead_beef));
        let (p0, p1, t0, t1) = match scenario {
            Scenario::ClientServer { lossy: true } => (
                Policy::lossy_client(),
                Policy::stateless_server(),
                EntityType::CLIENT,
                EntityType::OSD,
            ),
            Scenario::ClientServer { lossy: false } => (
                Policy::lossless_client(),
                Policy::stateful_server(),
                EntityType::CLIENT,
                EntityType::OSD,
            ),
            Scenario::Peers { reuse } => {
                let p = if reuse {
                    Policy::lossless_peer_reuse()
                } else {
                    Policy::lossless_peer()
                };
                (p, p, EntityType::OSD, EntityType::OSD)
            }
        };
        let inject = if rng.chance(20) {
            40 + rng.below(60) as u32
        } else {
            0
        };
        let names = [EntityName::new(t0, "0"), EntityName::new(t1, "1")];
        let mut auth = secure.then(|| secure_auth(&mut rng, [&names[0], &names[1]]));
        let mut nodes = Vec::new();
        for (i, (ty, policy, peer_ty)) in [(t0, p0, t1), (t1, p1, t0)].into_iter().enumerate() {
            let addr = node_addr(i);
            let bound = !matches!(scenario, Scenario::ClientServer { .. }) || i == 1;
            let mut cfg = EndpointConfig::new(
                EntityName {
                    ty,
                    id: i.to_string(),
                },
                if bound {
                    EntityAddrVec(vec![addr])
                } else {
                    EntityAddrVec::default()
                },
            );
            cfg.nonce = addr.nonce;
            cfg.default_policy = Policy::lossy_client();
            cfg.policies = vec![(peer_ty, policy)];
            cfg.tuning.initial_backoff = Duration::from_millis(200);
            cfg.tuning.max_backoff = Duration::from_secs(2);
            cfg.tuning.handshake_timeout = Duration::from_secs(3);
            cfg.tuning.idle_timeout = Duration::from_secs(60);
            cfg.tuning.inject_socket_failures = inject;
            if rng.chance(30) {
                cfg.tuning.keepalive_interval = Some(Duration::from_millis(300));
            }
            cfg.seed = rng.next();
            if let Some(a) = auth.as_mut() {
                cfg.auth = a[i].clone();
            }
            let mut ep = Endpoint::new(cfg);
            if rng.chance(30) {
                ep.set_interceptor(Some(Box::new(FailAt {
                    step: Step::HANDSHAKE[rng.below(Step::HANDSHAKE.len() as u64) as usize],
                    nth: 1 + rng.below(3) as u32,
                    seen: Rc::new(RefCell::new(0)),
                })));
            }
            nodes.push(Node {
                ep,
                addr,
                session: None,
                next_index: 1,
                sent_ok: Vec::new(),
                resets: HashSet::new(),
                last_rx: HashMap::new(),
                received: Vec::new(),
                echoes_sent: 0,
            });
        }
        let kills_left = rng.below(6) as u32;
        Sim {
            stats: Stats::default(),
            rng,
            now: Time(0),
            seq: 0,
            heap: BinaryHeap::new(),
            nodes,
            links: BTreeMap::new(),
            ends: HashMap::new(),
            next_link: 1,
            next_port: 40000,
            scenario,
            kills_left,
            log: Vec::new(),
        }
    }

    fn at(&mut self, t: Time, a: Action2) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, a)));
    }

    fn latency(&mut self) -> Duration {
        if self.rng.chance(2) {
            Duration::from_millis(100 + self.rng.below(900))
        } else {
            Duration::from_micros(5 + self.rng.below(2000))
        }
    }

    fn senders(&self) -> Vec<usize> {
        match self.scenario {
            Scenario::ClientServer { .. } => vec![0],
            Scenario::Peers { .. } => vec![0, 1],
        }
    }

    fn run(&mut self) -> Result<(), String> {
        for node in self.senders() {
            // Peers connect at nearly the same moment: races are the point.
            let start = Time(self.rng.below(2_000_000));
            self.at(start, Action2::AppSend { node });
        }
        for _ in 0..self.kills_left {
            let t = Time(self.rng.below(3_000_000_000));
            self.at(t, Action2::Kill);
        }
        let limit = Time(600_000_000_000);
        for step in 0..400_000u32 {
            self.drain();
            if self.finished() {
                self.stats.max_time_ms = self.now.0 / 1_000_000;
                return self.check_final();
            }
            let next_heap = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self
                .nodes
                .iter_mut()
                .enumerate()
                .filter_map(|(i, n)| n.ep.poll_timeout().map(|t| (t, i)))
                .min();
            match (next_heap, next_timer) {
                (Some(h), Some((t, i))) if t < h => self.fire_timer(t, i),
                (Some(_), _) => {
                    let Reverse((t, _, a)) = self.heap.pop().unwrap();
                    self.now = self.now.max(t);
                    self.apply(a);
                }
                (None, Some((t, i))) => self.fire_timer(t, i),
                (None, None) => return Err(format!("stalled at step {step}: nothing scheduled")),
            }
            if self.now > limit {
                return Err(format!("no progress by {:?} (livelock?)", self.now));
            }
        }
        Err("step budget exhausted (livelock?)".into())
    }

    fn fire_timer(&mut self, t: Time, i: usize) {
        self.now = self.now.max(t);
        let now = self.now;
        self.nodes[i].ep.handle_timeout(now);
    }

    fn apply(&mut self, a: Action2) {
        let now = self.now;
        match a {
            Action2::Accept {
                server,
                client,
                conn,
                from,
            } => {
                let sconn = self.nodes[server].ep.accept(now, from);
                let id = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    id,
                    Link {
                        ends: [(client, conn), (server, sconn)],
                        alive: true,
                        next_at: [now, now],
                    },
                );
                self.ends.insert((client, conn), id);
                self.ends.insert((server, sconn), id);
                self.at(
                    now.after(Duration::from_nanos(1)),
                    Action2::Connected { node: client, conn },
                );
            }
            Action2::Connected { node, conn } => self.nodes[node].ep.on_connected(now, conn),
            Action2::Deliver {
                link,
                node,
                conn,
                bytes,
            } => {
                if self.links.get(&link).is_some_and(|l| l.alive) {
                    self.nodes[node].ep.on_input(now, conn, &bytes);
                }
            }
            Action2::Closed { link, node, conn } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.alive = false;
                }
                self.nodes[node].ep.on_closed(now, conn);
            }
            Action2::AppSend { node } => {
                self.app_send(node);
                if self.nodes[node].next_index <= MESSAGES {
                    let gap = Duration::from_micros(self.rng.below(150_000));
                    self.at(now.after(gap), Action2::AppSend { node });
                }
            }
            Action2::Kill => {
                let live: Vec<u64> = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.alive)
                    .map(|(id, _)| *id)
                    .collect();
                if live.is_empty() {
                    return;
                }
                let id = live[self.rng.below(live.len() as u64) as usize];
                self.log.push(format!("{:?} kill link {id}", self.now));
                self.stats.kills += 1;
                let l = self.links.get_mut(&id).unwrap();
                l.alive = false;
                let ends = l.ends;
                for (node, conn) in ends {
                    let t = now.after(Duration::from_micros(10));
                    self.at(
                        t,
                        Action2::Closed {
                            link: id,
                            node,
                            conn,
                        },
                    );
                }
            }
        }
    }

    fn app_send(&mut self, node: usize) {
        let now = self.now;
        let peer = 1 - node;
        let peer_addr = self.nodes[peer].addr;
        let peer_type = self.nodes[peer].ep.config().name.ty;
        let n = &mut self.nodes[node];
        if n.next_index > MESSAGES {
            return;
        }
        let sid = match n.session {
            Some(s) if !n.ep.is_closed(s) => s,
            _ => {
                let s = n.ep.connect(now, peer_addr, peer_type);
                n.session = Some(s);
                s
            }
        };
        let index = n.next_index;
        n.next_index += 1;
        let msg = payload(node, index);
        if n.ep.send(now, sid, msg).is_ok() {
            n.sent_ok.push((sid, index));
        }
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                while let Some(io) = self.nodes[i].ep.poll_io() {
                    progressed = true;
                    self.on_io(i, io);
                }
                while let Some(ev) = self.nodes[i].ep.poll_event() {
                    progressed = true;
                    self.on_event(i, ev);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_io(&mut self, node: usize, io: Io) {
        let now = self.now;
        match io {
            Io::Connect { conn, addr, .. } => {
                self.stats.connects += 1;
                let Some(server) = self.nodes.iter().position(|n| n.addr.addr == Some(addr)) else {
                    self.at(
                        now,
                        Action2::Closed {
                            link: 0,
                            node,
                            conn,
                        },
                    );
                    return;
                };
                if self.rng.chance(3) {
                    let t = now.after(self.latency());
                    self.at(
                        t,
                        Action2::Closed {
                            link: 0,
                            node,
                            conn,
                        },
                    );
                    return;
                }
                self.next_port += 1;
                let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), self.next_port);
                let t = now.after(self.latency());
                self.at(
                    t,
                    Action2::Accept {
                        server,
                        client: node,
                        conn,
                        from,
                    },
                );
            }
            Io::Transmit { conn } => self.transmit(node, conn),
            Io::Migrate { .. } => unreachable!("single-endpoint nodes never migrate"),
            Io::Close { conn, remaining } => {
                let bytes: Vec<u8> = remaining.concat();
                self.send_bytes(node, conn, bytes);
                let Some(&id) = self.ends.get(&(node, conn)) else {
                    return;
                };
                let l = self.links.get_mut(&id).unwrap();
                if !l.alive {
                    return;
                }
                let peer_idx = if l.ends[0] == (node, conn) { 1 } else { 0 };
                let (pnode, pconn) = l.ends[peer_idx];
                // The peer sees the close after the bytes already in flight (a FIN).
                let t = l.next_at[peer_idx].max(now).after(Duration::from_micros(1));
                l.next_at[peer_idx] = t;
                self.at(
                    t,
                    Action2::Closed {
                        link: id,
                        node: pnode,
                        conn: pconn,
                    },
                );
            }
        }
    }

    fn transmit(&mut self, node: usize, conn: ConnId) {
        let Some(tx) = self.nodes[node].ep.tx_queue(conn) else {
            return;
        };
        let bytes = tx.take_all();
        self.send_bytes(node, conn, bytes);
    }

    fn send_bytes(&mut self, node: usize, conn: ConnId, bytes: Vec<u8>) {
        let Some(&id) = self.ends.get(&(node, conn)) else {
            return; // not connected yet: the transport would hold them; ours are lost
        };
        if !self.links[&id].alive || bytes.is_empty() {
            return;
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = if self.rng.chance(50) {
                rest.len()
            } else {
                1 + self.rng.below(rest.len() as u64) as usize
            };
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let lat = self.latency();
            let l = self.links.get_mut(&id).unwrap();
            let peer_idx = if l.ends[0] == (node, conn) { 1 } else { 0 };
            let (pnode, pconn) = l.ends[peer_idx];
            let t = l.next_at[peer_idx].max(self.now).after(lat);
            l.next_at[peer_idx] = t;
            self.at(
                t,
                Action2::Deliver {
                    link: id,
                    node: pnode,
                    conn: pconn,
                    bytes: chunk.to_vec(),
                },
            );
        }
    }

    fn on_event(&mut self, node: usize, ev: Event) {
        let now = self.now;
        match ev {
            Event::Message { session, msg } => {
                let (from, index) = parse(&msg);
                assert_eq!(from, 1 - node, "message from the wrong node");
                self.stats.delivered += 1;
                let n = &mut self.nodes[node];
                let last = n.last_rx.entry(session).or_insert(0);
                let lossless = !matches!(self.scenario, Scenario::ClientServer { lossy: true });
                if lossless && index != *last + 1 {
                    panic!(
                        "node {node} session {session:?}: got index {index} after {last} (lossless: exactly once, in order)"
                    );
                }
                if !lossless && index <= *last {
                    panic!("node {node}: index {index} after {last}: duplicated or reordered");
                }
                *last = index;
                n.received.push((session, index));
                // Servers echo; the echo stream has its own indices.
                if matches!(self.scenario, Scenario::ClientServer { .. }) && node == 1 {
                    n.echoes_sent += 1;
                    let echo = payload(1, n.echoes_sent);
                    if n.ep.send(now, session, echo).is_ok() {
                        let idx = n.echoes_sent;
                        n.sent_ok.push((session, idx));
                    }
                }
            }
            Event::Reset { session, .. } | Event::RemoteReset { session } => {
                self.log
                    .push(format!("{:?} node {node} reset {session:?}", self.now));
                self.nodes[node].resets.insert(session);
                self.stats.resets += 1;
            }
            Event::Connected { security, .. } | Event::Accepted { security, .. } => {
                self.stats.ready += 1;
                if security.to_string() == "cephx/secure" {
                    self.stats.ready_secure += 1;
                }
            }
            Event::Fault { reason, conn, .. } => {
                self.stats.faults += 1;
                self.log.push(format!(
                    "{:?} node {node} fault {conn:?}: {reason}",
                    self.now
                ));
            }
            _ => {}
        }
    }

    fn finished(&mut self) -> bool {
        let lossy = matches!(self.scenario, Scenario::ClientServer { lossy: true });
        let senders_done = self
            .senders()
            .iter()
            .all(|&i| self.nodes[i].next_index > MESSAGES);
        if !senders_done {
            return false;
        }
        if lossy {
            // Done when nothing is in flight any more (only idle timers remain).
            return self.heap.is_empty();
        }
        match self.scenario {
            Scenario::ClientServer { .. } => {
                self.nodes[1].received.len() == MESSAGES as usize
                    && self.nodes[0].received.len() == MESSAGES as usize
                    && self.all_acked()
            }
            Scenario::Peers { .. } => {
                self.nodes
                    .iter()
                    .all(|n| n.received.len() == MESSAGES as usize)
                    && self.all_acked()
            }
        }
    }

    fn all_acked(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.last_rx.keys().chain(n.session.iter()).all(|s| {
                n.ep.session_seqs(*s)
                    .is_none_or(|(_, _, queued, unacked)| queued == 0 && unacked == 0)
            })
        })
    }

    fn check_final(&self) -> Result<(), String> {
        let lossy = matches!(self.scenario, Scenario::ClientServer { lossy: true });
        if lossy {
            for i in 0..self.nodes.len() {
                self.check_lossy_delivery(i)?;
            }
            return Ok(());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.resets.is_empty() {
                return Err(format!("node {i}: unexpected reset of a lossless session"));
            }
        }
        // Sequence numbers agree: what one side sent is what the other received.
        let s0 = self.nodes[0].session.expect("node 0 connected");
        let (_, out0, _, _) = self.nodes[0].ep.session_seqs(s0).unwrap();
        let (in1, out1) = self.nodes[1]
            .last_rx
            .keys()
            .filter_map(|s| self.nodes[1].ep.session_seqs(*s))
            .map(|(i, o, _, _)| (i, o))
            .max()
            .unwrap_or((0, 0));
        let (in0, _, _, _) = self.nodes[0].ep.session_seqs(s0).unwrap();
        if out0 != in1 || out1 != in0 {
            return Err(format!(
                "seqs disagree: node0 out {out0} in {in0}, node1 out {out1} in {in1}"
            ));
        }
        Ok(())
    }
}

impl Sim {
    /// Lossy delivery from node `i` to its peer: each receiving session got a prefix of what
    /// one sending session sent (each sending session feeding at most one receiving session),
    /// and whatever did not arrive was sent on a session its sender saw reset or closed.
    fn check_lossy_delivery(&self, i: usize) -> Result<(), String> {
        let (n, peer) = (&self.nodes[i], &self.nodes[1 - i]);
        // Indices are unique per sending node (clients count their sends, servers their echoes).
        let mut sent: HashMap<SessionId, Vec<u32>> = HashMap::new();
        let mut sent_on: HashMap<u32, SessionId> = HashMap::new();
        for &(sid, index) in &n.sent_ok {
            sent.entry(sid).or_default().push(index);
            if sent_on.insert(index, sid).is_some() {
                return Err(format!("node {i}: index {index} sent twice"));
            }
        }
        let mut got: BTreeMap<SessionId, Vec<u32>> = BTreeMap::new();
        for &(rx, index) in &peer.received {
            got.entry(rx).or_default().push(index);
        }
        let mut fed: HashMap<SessionId, SessionId> = HashMap::new();
        let mut delivered = HashSet::new();
        for (rx, indices) in &got {
            let Some(&tx) = sent_on.get(&indices[0]) else {
                return Err(format!(
                    "node {}: {rx:?} got index {} that node {i} never sent",
                    1 - i,
                    indices[0]
                ));
            };
            if let Some(other) = fed.insert(tx, *rx) {
                return Err(format!(
                    "node {i}: {tx:?} delivered on two sessions, {other:?} and {rx:?}"
                ));
            }
            if !sent[&tx].starts_with(indices) {
                return Err(format!(
                    "node {i} → {}: {rx:?} got {indices:?}, not a prefix of {tx:?}'s {:?}",
                    1 - i,
                    sent[&tx]
                ));
            }
            delivered.extend(indices.iter().copied());
        }
        for &(sid, index) in &n.sent_ok {
            if !delivered.contains(&index) && !n.resets.contains(&sid) && !n.ep.is_closed(sid) {
                return Err(format!(
                    "node {i}: message {index} on {sid:?} lost without a reset"
                ));
            }
        }
        Ok(())
    }
}

fn payload(node: usize, index: u32) -> Message {
    let mut front = Vec::with_capacity(8);
    front.extend_from_slice(&(node as u32).to_le_bytes());
    front.extend_from_slice(&index.to_le_bytes());
    let mut m = Message::new(0x4242).with_front(Bytes::from(front));
    if index % 5 == 0 {
        m = m.with_data(vec![index as u8; 3000 + index as usize * 37]);
    }
    m
}

/// The (node, index) a received message names, after checking it is exactly what
/// [`payload`] built for them.
fn parse(m: &Message) -> (usize, u32) {
    let f = &m.front;
    assert_eq!(f.len(), 8, "front intact");
    let node = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize;
    let index = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
    let sent = payload(node, index);
    assert_eq!(m.ty, sent.ty, "type intact");
    assert_eq!(m.middle, sent.middle, "middle intact");
    assert!(
        m.data_contiguous() == sent.data_contiguous(),
        "data of ({node}, {index}) intact"
    );
    (node, index)
}

fn run_seeds(scenario: Scenario) -> Stats {
    run_seeds_with(scenario, false)
}

/// `secure`: cephx (authorizers both ways) and secure mode on every connection.
fn run_seeds_with(scenario: Scenario, secure: bool) -> Stats {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, scenario, secure);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
        let st = &sim.stats;
        total.runs += 1;
        total.faults += st.faults;
        total.kills += st.kills;
        total.connects += st.connects;
        total.delivered += st.delivered;
        total.resets += st.resets;
        total.ready += st.ready;
        total.ready_secure += st.ready_secure;
        total.max_time_ms = total.max_time_ms.max(st.max_time_ms);
        for n in &sim.nodes {
            total.frames.add(n.ep.frame_counts());
        }
        let err = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        let tail: Vec<String> = sim.log.iter().rev().take(12).rev().cloned().collect();
        failures.push(format!("seed {seed}: {err}\n    {}", tail.join("\n    ")));
    }
    assert!(
        failures.is_empty(),
        "{scenario:?} (secure: {secure}): {} of {SEEDS} seeds failed; first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let f = &total.frames;
    eprintln!(
        "{scenario:?}: runs {} faults {} kills {} connects {} delivered {} resets {} ready {}",
        total.runs,
        total.faults,
        total.kills,
        total.connects,
        total.delivered,
        total.resets,
        total.ready
    );
    let tags = [
        Tag::ClientIdent,
        Tag::SessionReconnect,
        Tag::SessionReconnectOk,
        Tag::SessionReset,
        Tag::SessionRetry,
        Tag::SessionRetryGlobal,
        Tag::Wait,
        Tag::IdentMissingFeatures,
        Tag::Keepalive2,
        Tag::Keepalive2Ack,
        Tag::Ack,
        Tag::Message,
    ];
    for t in tags {
        eprintln!(
            "    {:<24} sent {:>7} received {:>7}",
            t.name(),
            f.sent(t),
            f.received(t)
        );
    }
    // Every connection ready in the mode the run is about.
    let want_secure = if secure { total.ready } else { 0 };
    assert_eq!(total.ready_secure, want_secure, "{total:?}");
    // The faults must really have happened, or the run proves nothing.
    assert!(total.kills > SEEDS && total.faults > SEEDS, "{total:?}");
    assert!(total.connects > total.runs * 2, "{total:?}");
    total
}

/// Peers connecting at once must have gone through every race decision at least once.
fn assert_race_paths(f: &FrameCounts) {
    for tag in [
        Tag::Wait,
        Tag::SessionRetry,
        Tag::SessionReset,
        Tag::SessionReconnectOk,
        Tag::Keepalive2Ack,
    ] {
        assert!(f.received(tag) > 0, "no {} was ever received", tag.name());
    }
}

#[test]
fn lossy_client_stateless_server() {
    let st = run_seeds(Scenario::ClientServer { lossy: true });
    assert!(st.resets > 0, "lossy runs with faults must report resets");
    let f = &st.frames;
    assert_eq!(f.sent(Tag::Ack), 0, "lossy sessions never ACK");
    assert_eq!(
        f.sent(Tag::SessionReconnect),
        0,
        "lossy sessions never resume"
    );
}

#[test]
fn lossless_client_stateful_server() {
    let st = run_seeds(Scenario::ClientServer { lossy: false });
    assert_eq!(st.delivered, SEEDS * 2 * MESSAGES as u64);
    let f = &st.frames;
    assert!(
        f.received(Tag::SessionReconnectOk) > SEEDS / 2,
        "sessions resumed"
    );
    assert!(
        f.received(Tag::Message) < f.sent(Tag::Message),
        "replays happened and were dropped"
    );
}

#[test]
fn lossless_peer_both_ways() {
    let st = run_seeds(Scenario::Peers { reuse: false });
    assert_eq!(st.delivered, SEEDS * 2 * MESSAGES as u64);
    assert_race_paths(&st.frames);
}

#[test]
fn lossless_peer_reuse_both_ways() {
    let st = run_seeds(Scenario::Peers { reuse: true });
    assert_eq!(st.delivered, SEEDS * 2 * MESSAGES as u64);
    assert_race_paths(&st.frames);
}

/// The lossless client/server scenario with cephx and secure mode on every connection
/// (authorizers with tickets from the seeded keys): the same guarantees, every frame sealed.
#[test]
fn lossless_client_stateful_server_in_cephx_secure_mode() {
    let st = run_seeds_with(Scenario::ClientServer { lossy: false }, true);
    assert_eq!(st.delivered, SEEDS * 2 * MESSAGES as u64);
    assert!(st.frames.received(Tag::SessionReconnectOk) > SEEDS / 2);
}

/// Peers connecting at once, each presenting its ticket to the other, in secure mode.
#[test]
fn lossless_peers_both_ways_in_cephx_secure_mode() {
    let st = run_seeds_with(Scenario::Peers { reuse: false }, true);
    assert_eq!(st.delivered, SEEDS * 2 * MESSAGES as u64);
    assert_race_paths(&st.frames);
}
