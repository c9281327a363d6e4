//! The two ends of the benchmark in one process: a server messenger that echoes pings and
//! acknowledges stream messages, the client messengers that send them from their dispatcher,
//! and the server's integrity check (every numbered message once, in order). The phases drive
//! the client through `Client`'s few methods; the rest stays in here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringwire::proto::cephx::keyring::key_to_base64;
use ringwire::proto::cephx::{CryptoKey, KeyType, Keyring, Secret};
use ringwire::proto::{
    EntityAddr, EntityName, EntityType, Message, ModeName, Policy, Tuning, TxQueue,
};
use ringwire::{Connection, Dispatcher, Incoming, Mailbox, Messenger, Options};

use ringwire_bench::wire::{
    self, one_size, Seen, APP_PING, APP_PONG, DATA, DATA_ACK, MANY_PING, MANY_PONG, PING, PONG,
};

use super::rados::RadosSizes;
use super::report::{Integrity, PhaseSizes, Sizes};
use super::BenchArgs;

fn policies(name: &str) -> Result<(Policy, Policy), String> {
    Ok(match name {
        "lossless" => (Policy::lossless_client(), Policy::stateful_server()),
        "lossy" => (Policy::lossy_client(), Policy::stateless_server()),
        "peer" => (Policy::lossless_peer(), Policy::lossless_peer()),
        _ => {
            return Err(format!(
                "unknown policy pair {name:?} (lossless, lossy, peer)"
            ))
        }
    })
}

/// Per-connection order check on the receiving side: sequence numbers the sender put in the
/// front must arrive each once, in order.
#[derive(Default)]
struct Checker {
    last: Mutex<HashMap<u64, u64>>,
    seen: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

impl Checker {
    fn check(&self, conn_key: u64, seq: u64) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().expect("not poisoned");
        let l = last.entry(conn_key).or_insert(0);
        if seq == *l {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        } else if seq < *l {
            self.reordered.fetch_add(1, Ordering::Relaxed);
        } else {
            // A gap is counted as lost at the end (sent minus seen).
            *l = seq;
        }
    }
}

fn key(c: &Connection) -> u64 {
    c.id()
}

/// The sequence number a message carries: in the first 8 bytes of a ping's front, in the tid
/// of a stream message (whose payload is the data segment alone, as the baselines' is).
fn seq_of(m: &Message) -> u64 {
    if m.ty == DATA {
        return m.tid;
    }
    wire::ping_seq(&m.front)
}

/// The server side: echoes pings (the same bytes), acknowledges data, checks order.
struct Server {
    checker: Arc<Checker>,
    seen: Arc<Seen>,
}

impl Dispatcher for Server {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        self.seen.record(msg.ty, msg.payload_len());
        let reply = match msg.ty {
            PING => Message::new(PONG).with_front(msg.front.clone()),
            APP_PING => Message::new(APP_PONG).with_front(msg.front.clone()),
            DATA => Message::new(DATA_ACK),
            MANY_PING => Message::new(MANY_PONG).with_front(msg.front.clone()),
            _ => return,
        };
        if msg.ty != MANY_PING {
            self.checker.check(key(conn), seq_of(&msg));
        }
        let _ = conn.send(reply);
    }
}

/// What a client connection is doing.
#[derive(Default)]
struct Flow {
    next_seq: u64,
    sent_at: Option<Instant>,
}

#[derive(Default)]
struct ClientState {
    flows: HashMap<u64, Flow>,
    rtts: Vec<Duration>,
    record: bool,
    remaining: u64,
    done: Option<Sender<()>>,
    /// Ping payloads are split off this buffer: one allocation per many messages.
    slab: BytesMut,
}

/// Bytes of ping payloads per slab allocation (at least one payload).
const SLAB_BYTES: usize = 64 << 10;

/// The client side: ping-pong and windowed streaming, driven from the dispatcher so the
/// next message leaves from the worker thread as soon as the previous answer arrives; and
/// ping-pong from an application thread, to which the dispatcher hands each echo.
pub(super) struct Client {
    state: Mutex<ClientState>,
    /// Payload bytes of a ping (`--size`): the sequence number, then `PING_FILL`.
    small: usize,
    /// The stream's payload: from the client's registered arena over RDMA (sent without a
    /// copy), a plain heap buffer over TCP.
    data: std::sync::OnceLock<Bytes>,
    stop: AtomicBool,
    pongs: AtomicU64,
    sent: AtomicU64,
    echo_mismatches: AtomicU64,
    seen: Arc<Seen>,
    /// Echoes for the application thread.
    /// Where the dispatcher puts application pings' echoes, for the thread or the task that
    /// waits for them.
    pub(super) handoff: Arc<Mailbox<Incoming>>,
}

impl Client {
    /// The message of type `ty` numbered `seq`: a ping carries `small` payload bytes in its
    /// front, the sequence number first; a stream message carries the data segment alone
    /// (`large` bytes), its sequence number in the header's tid.
    fn message(&self, slab: &mut BytesMut, ty: u16, seq: u64) -> Message {
        if ty == DATA {
            return Message::new(DATA)
                .with_tid(seq)
                .with_data(self.payload().clone());
        }
        if slab.capacity() < self.small {
            slab.reserve(self.small.max(SLAB_BYTES));
        }
        slab.resize(self.small, 0);
        wire::ping(seq, &mut slab[..]);
        Message::new(ty).with_front(slab.split().freeze())
    }

    fn send(&self, conn: &Connection, slab: &mut BytesMut, flow: &mut Flow, ty: u16) {
        flow.next_seq += 1;
        let m = self.message(slab, ty, flow.next_seq);
        flow.sent_at = Some(Instant::now());
        if conn.send(m).is_ok() && ty != MANY_PING {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Readies the next phase: after the messages `start` sends, `remaining` more (`u64::MAX`:
    /// until `stop`), and `done` told when the last has been sent; round trips are recorded
    /// when `rtts` gives room for them.
    pub(super) fn arm(&self, rtts: Option<usize>, remaining: u64, done: Option<Sender<()>>) {
        let mut st = self.state.lock().expect("not poisoned");
        st.record = rtts.is_some();
        if let Some(n) = rtts {
            st.rtts = Vec::with_capacity(n);
        }
        st.remaining = remaining;
        st.done = done;
        self.stop.store(false, Ordering::Relaxed);
    }

    /// Sends `in_flight` messages of type `ty` on `conn`; each answer sends the next.
    pub(super) fn start(&self, conn: &Connection, ty: u16, in_flight: usize) {
        let mut st = self.state.lock().expect("not poisoned");
        let mut flow = st.flows.remove(&key(conn)).unwrap_or_default();
        for _ in 0..in_flight {
            self.send(conn, &mut st.slab, &mut flow, ty);
        }
        st.flows.insert(key(conn), flow);
    }

    /// Sends one application ping on `conn`, from the calling thread; returns its sequence
    /// number. Its echo goes to `handoff`.
    pub(super) fn send_app_ping(&self, conn: &Connection) -> u64 {
        let mut st = self.state.lock().expect("not poisoned");
        let st = &mut *st;
        let flow = st.flows.entry(key(conn)).or_default();
        self.send(conn, &mut st.slab, flow, APP_PING);
        flow.next_seq
    }

    /// Counts `echo` as mismatched unless it answers ping `seq`.
    pub(super) fn check_echo(&self, echo: &Message, seq: u64) {
        if seq_of(echo) != seq {
            self.echo_mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends an open-ended phase: answers still arrive and count, but send nothing more.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Answers (echoes and acknowledgements) received so far, all phases together.
    pub(super) fn replies(&self) -> u64 {
        self.pongs.load(Ordering::Relaxed)
    }

    /// The round trips recorded since `arm`, sorted; recording stops.
    pub(super) fn take_rtts(&self) -> Vec<Duration> {
        let mut st = self.state.lock().expect("not poisoned");
        st.record = false;
        let mut rtts = std::mem::take(&mut st.rtts);
        rtts.sort();
        rtts
    }

    /// The stream's payload, the same buffer in every stream message.
    pub(super) fn payload(&self) -> &Bytes {
        self.data.get().expect("set at start")
    }
}

impl Dispatcher for Client {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        if msg.ty == APP_PONG {
            self.seen.record(msg.ty, msg.payload_len());
            self.pongs.fetch_add(1, Ordering::Relaxed);
            self.handoff.put(msg);
            return;
        }
        let next = match msg.ty {
            PONG => PING,
            DATA_ACK => DATA,
            MANY_PONG => MANY_PING,
            _ => return,
        };
        self.seen.record(msg.ty, msg.payload_len());
        self.pongs.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("not poisoned");
        let k = key(conn);
        let mut flow = st.flows.remove(&k).unwrap_or_default();
        // One ping in flight per connection: its echo carries the last sequence number sent.
        if next != DATA && seq_of(&msg) != flow.next_seq {
            self.echo_mismatches.fetch_add(1, Ordering::Relaxed);
        }
        if st.record {
            if let Some(t) = flow.sent_at {
                st.rtts.push(t.elapsed());
            }
        }
        let more = if self.stop.load(Ordering::Relaxed) {
            false
        } else if st.remaining > 0 {
            st.remaining -= 1;
            true
        } else {
            st.remaining == u64::MAX
        };
        if more {
            self.send(conn, &mut st.slab, &mut flow, next);
        } else if let Some(done) = st.done.take() {
            let _ = done.send(());
        }
        st.flows.insert(k, flow);
    }
}

/// The server, the clients, and the address the clients connect to.
pub(super) struct Pair {
    server: Messenger,
    client: Messenger,
    /// Many anonymous connections need unregistered (lossy) sessions: anonymous lossless
    /// connections from one messenger would all claim the same session at the server.
    many_client: Messenger,
    server_checker: Arc<Checker>,
    client_side: Arc<Client>,
    target: EntityAddr,
    /// The secure run's keys and monitor (kept while the messengers run).
    _keys: Option<Keys>,
}

/// The keys of a secure run, made for it and never shown: a keyring file (removed on drop)
/// holding the clients' keys and the OSDs' service secret, and the monitor that hands out
/// the tickets.
struct Keys {
    path: std::path::PathBuf,
    monitor: Messenger,
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Keys {
    /// Keys for the run; the client's (`client`) from its keyring when `-k` gave one.
    fn start(client: &EntityName, keyring: Option<&std::path::Path>) -> Result<Keys, String> {
        let mut text = zeroize::Zeroizing::new(String::new());
        if let Some(path) = keyring {
            let key = Keyring::load_key(path, client).map_err(|e| format!("-k: {e}"))?;
            text.push_str(&format!("[{client}]\n\tkey = {}\n", *key_to_base64(&key)));
        }
        let client = client.to_string();
        let made = [client.as_str(), "mgr.many", "osd."]
            .into_iter()
            .filter(|e| keyring.is_none() || *e != client);
        for entity in made {
            let mut secret = vec![0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret))
                .map_err(|e| format!("no randomness for keys: {e}"))?;
            let key = CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(secret))
                .map_err(|e| e.to_string())?;
            text.push_str(&format!("[{entity}]\n\tkey = {}\n", *key_to_base64(&key)));
        }
        let path =
            std::env::temp_dir().join(format!("ringwire-bench-{}.keyring", std::process::id()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| e.to_string())?;
        }
        let monitor = Messenger::builder(EntityName::new(EntityType::MON, "bench"))
            .bind(EntityAddr::parse("v2:127.0.0.1:0").expect("valid"))
            .default_policy(Policy::stateless_server())
            .options(Options {
                workers: 1,
                arena_size: 0,
                keyring: Some(path.clone()),
                ..Options::default()
            })
            .start(Arc::new(NoDispatch))
            .map_err(|e| e.to_string())?;
        Ok(Keys { path, monitor })
    }

    /// Gets `m` its tickets from the monitor, in secure mode.
    fn authenticate(&self, m: &Messenger) -> Result<(), String> {
        let c = m.connect(self.monitor.addrs().0[0], EntityType::MON);
        c.wait_ready(Duration::from_secs(10))
            .map_err(|e| format!("bench monitor: {e}"))?;
        c.mark_down();
        Ok(())
    }

    /// `options` for a messenger of the secure run: our keyring, secure mode only.
    fn apply(&self, options: &mut Options) {
        options.keyring = Some(self.path.clone());
        options.ms_client_mode = vec![ModeName::Secure];
        options.ms_mon_client_mode = vec![ModeName::Secure];
        options.ms_service_mode = vec![ModeName::Secure];
        options.ms_cluster_mode = vec![ModeName::Secure];
    }
}

/// The bench monitor's dispatcher: it only authenticates.
struct NoDispatch;

impl Dispatcher for NoDispatch {
    fn dispatch(&self, _conn: &Connection, _msg: Incoming) {}
}

impl Pair {
    /// The messengers of one mode: crc, or (`secure`) cephx with keys made for the run and
    /// secure mode on every connection.
    pub(super) fn start(args: &BenchArgs, secure: bool) -> Result<Pair, String> {
        let (cp, sp) = policies(&args.policy)?;
        let prefix = match args.transport.as_str() {
            "tcp" => "v2",
            "rdma" => "rdma",
            other => return Err(format!("unknown transport {other:?} (tcp, rdma)")),
        };
        let listen = EntityAddr::parse(&format!("{prefix}:127.0.0.1:0")).expect("valid");
        let mut options = Options {
            workers: 1,
            tuning: Tuning {
                inject_socket_failures: args.inject,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(200),
                ..Tuning::default()
            },
            ..Options::default()
        };
        options.rdma.busy_poll = args.busy_poll;
        // Room for the stream's messages in flight, however large `--large` makes them.
        let stream_bytes = super::phases::STREAM_IN_FLIGHT * args.large as u64;
        options.send_throttle_bytes = options.send_throttle_bytes.max(stream_bytes);
        let client_name = args.client_name();
        let keys = secure
            .then(|| Keys::start(&client_name, args.keyring.as_deref()))
            .transpose()?;
        if let Some(k) = &keys {
            k.apply(&mut options);
        }
        let server_checker = Arc::new(Checker::default());
        let seen = Arc::new(Seen::default());
        let server = Messenger::builder(EntityName {
            ty: EntityType::OSD,
            id: "0".into(),
        })
        .bind(listen)
        .policy(EntityType::CLIENT, sp)
        .policy(EntityType::OSD, sp)
        .policy(EntityType::MGR, Policy::stateless_server())
        .options(options.clone())
        .start(Arc::new(Server {
            checker: server_checker.clone(),
            seen: seen.clone(),
        }))
        .map_err(|e| e.to_string())?;
        let client_side = Arc::new(Client {
            state: Mutex::new(ClientState::default()),
            small: args.small,
            data: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
            pongs: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            echo_mismatches: AtomicU64::new(0),
            seen,
            handoff: Arc::default(),
        });
        let mut cb = Messenger::builder(client_name)
            .policy(EntityType::OSD, cp)
            .policy(EntityType::MON, Policy::lossy_client())
            .options(options);
        if args.policy == "peer" {
            cb = cb.bind(listen);
        }
        let client = cb.start(client_side.clone()).map_err(|e| e.to_string())?;
        if let Some(k) = &keys {
            k.authenticate(&client)?;
        }
        let data = match client.alloc_payload(args.large) {
            Some(mut buf) if args.transport == "rdma" => {
                buf.fill(0x5a);
                buf.freeze()
            }
            _ => Bytes::from(wire::stream_payload(args.large)),
        };
        let _ = client_side.data.set(data);
        let mut many_options = Options {
            workers: 1,
            arena_size: 0,
            ..Options::default()
        };
        if let Some(k) = &keys {
            k.apply(&mut many_options);
        }
        let many_client = Messenger::builder(EntityName {
            ty: EntityType::MGR,
            id: "many".into(),
        })
        .policy(EntityType::OSD, Policy::lossy_client())
        .policy(EntityType::MON, Policy::lossy_client())
        .options(many_options)
        .start(client_side.clone())
        .map_err(|e| e.to_string())?;
        if let Some(k) = &keys {
            k.authenticate(&many_client)?;
        }
        let target = server.addrs().0[0];
        Ok(Pair {
            server,
            client,
            many_client,
            server_checker,
            client_side,
            target,
            _keys: keys,
        })
    }

    pub(super) fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.server.serve_metrics(addr)
    }

    /// The connection of the ping-pong and stream phases.
    pub(super) fn connect(&self) -> Connection {
        self.client.connect(self.target, EntityType::OSD)
    }

    /// A connection of the many-connection phase.
    pub(super) fn connect_anon(&self) -> Connection {
        self.many_client.connect_anon(self.target, EntityType::OSD)
    }

    pub(super) fn client(&self) -> &Client {
        &self.client_side
    }

    /// The client, for a task spawned on its worker.
    pub(super) fn client_shared(&self) -> &Arc<Client> {
        &self.client_side
    }

    /// Replaces closed (lossy, reset) connections and waits until all are up.
    pub(super) fn refresh(&self, many: &mut [Connection]) -> Result<(), String> {
        for _ in 0..20 {
            for c in many.iter_mut().filter(|c| c.is_closed()) {
                *c = self.connect_anon();
            }
            if wait_connected(many, Duration::from_secs(10)).is_ok() {
                return Ok(());
            }
        }
        wait_connected(many, Duration::from_secs(1))
    }

    /// Every numbered message the client sent, accounted for at the server: to be taken once
    /// all have been answered.
    pub(super) fn integrity(&self) -> Integrity {
        let ck = &self.server_checker;
        let sent = self.client_side.sent.load(Ordering::Relaxed);
        let received = ck.seen.load(Ordering::Relaxed);
        let duplicated = ck.duplicated.load(Ordering::Relaxed);
        Integrity {
            sent,
            received,
            lost: sent.saturating_sub(received - duplicated),
            duplicated,
            reordered: ck.reordered.load(Ordering::Relaxed),
            injected_faults: self.server.stats().injected_faults
                + self.client.stats().injected_faults,
            echo_mismatches: self.client_side.echo_mismatches.load(Ordering::Relaxed),
        }
    }

    /// The sizes every side sent in each phase: Ringwire's and rados-rs's as their receivers
    /// saw them, checked against the baselines' (which send exactly what they are given:
    /// `small`, `large`).
    pub(super) fn sizes(
        &self,
        small: usize,
        large: usize,
        rados: Option<&RadosSizes>,
    ) -> Result<Sizes, String> {
        let c = &self.client_side;
        let seen = |ty: u16, what: String| one_size(c.seen.range(ty), &what);
        // What a message costs on a TCP connection beyond its payload, encoded as the runtime
        // encodes it.
        let overhead = |ty: u16| {
            let m = c.message(&mut BytesMut::new(), ty, 1);
            m.encode_frame(&mut TxQueue::default(), 1, 0) - m.payload_len()
        };
        // `ty`'s messages carried `baseline` bytes and their replies the same (an echo) or
        // none (an acknowledgement).
        let check = |who: &str, what: &str, (sent, reply): (usize, usize), baseline: usize| {
            if sent != baseline {
                return Err(format!(
                    "{who}'s {what} messages carried {sent} payload bytes, the baselines' {baseline}"
                ));
            }
            let want = if what == "stream" { 0 } else { sent };
            if reply != want {
                return Err(format!(
                    "{who}'s {what} replies carried {reply} payload bytes, not {want}"
                ));
            }
            Ok((sent, reply))
        };
        let phase = |ty: u16, what: &str, baseline: usize, rados: Option<(usize, usize)>| {
            let ringwire = (
                seen(ty, format!("Ringwire {what} messages"))?,
                seen(ty + 1, format!("Ringwire {what} replies"))?,
            );
            let (ringwire, ringwire_reply) = check("Ringwire", what, ringwire, baseline)?;
            let rados = rados
                .map(|r| check("rados-rs", what, r, baseline))
                .transpose()?;
            Ok::<_, String>(PhaseSizes {
                ringwire,
                ringwire_app_thread: None,
                std: baseline,
                io_uring: (ty != MANY_PING).then_some(baseline),
                ringwire_reply,
                ringwire_frame_overhead: overhead(ty),
                rados_rs: rados.map(|r| r.0),
                rados_rs_reply: rados.map(|r| r.1),
            })
        };
        let app = (
            seen(APP_PING, "Ringwire application-thread pings".into())?,
            seen(APP_PONG, "Ringwire application-thread echoes".into())?,
        );
        let (app, _) = check("Ringwire", "application-thread ping-pong", app, small)?;
        Ok(Sizes {
            ping_pong: PhaseSizes {
                ringwire_app_thread: Some(app),
                ..phase(PING, "ping-pong", small, rados.map(|r| r.ping_pong))?
            },
            stream: phase(DATA, "stream", large, rados.map(|r| r.stream))?,
            rate: phase(MANY_PING, "rate-phase", small, rados.map(|r| r.rate))?,
        })
    }
}

pub(super) fn wait_connected(conns: &[Connection], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !conns.iter().all(|c| c.is_connected()) {
        if Instant::now() > deadline || conns.iter().any(|c| c.is_closed()) {
            let n = conns.iter().filter(|c| c.is_connected()).count();
            return Err(format!("only {n} of {} connections came up", conns.len()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
