//! `ringwire bench`: server and client messengers in one process on loopback, measured against
//! raw baselines (`ringwire-bench`: blocking std and io_uring, same bytes) in the same run.
//! Each round measures Ringwire and the baselines back to back; ratios are paired within a
//! round and the median over rounds is reported. By default everything is pinned to one CPU
//! (as `shared/recipes/baselines.md` measured): on a shared 2-vCPU machine, spreading client
//! and server across CPUs mostly measures the neighbours.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringwire::proto::{EntityAddr, EntityName, EntityType, Message, Policy, Tuning, TxQueue};
use ringwire::{Connection, Dispatcher, Messenger, Options};
use ringwire_bench as baseline;
use serde::Serialize;

const PING: u16 = 0x5001;
const PONG: u16 = 0x5002;
const DATA: u16 = 0x5003;
const DATA_ACK: u16 = 0x5004;
/// Ping-pong of the many-connection phase, on lossy connections: not part of the integrity
/// count, whose subject is the lossless session.
const MANY_PING: u16 = 0x5005;
const MANY_PONG: u16 = 0x5006;

pub struct BenchArgs {
    pub policy: String,
    /// Payload bytes of each ping-pong and rate-phase message, on every side (at least 8: the
    /// first 8 carry Ringwire's sequence number).
    pub small: usize,
    /// Payload bytes of each stream message, on every side (Ringwire: the data segment).
    pub large: usize,
    pub connections: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub iters: usize,
    pub inject: u32,
    pub cpu: Option<usize>,
    pub json: bool,
    pub metrics: Option<std::net::SocketAddr>,
    /// `tcp` or `rdma`: how the messengers reach each other (the baselines are TCP).
    pub transport: String,
    pub busy_poll: Duration,
}

impl BenchArgs {
    /// Rejects sizes the benchmark cannot send as asked (nothing is rounded up behind the
    /// caller's back: every side sends exactly these sizes).
    pub fn validate(&self) -> Result<(), String> {
        if self.small < 8 {
            return Err(format!(
                "--size {}: ping-pong messages carry at least 8 bytes (the first 8 hold the sequence number the integrity check reads)",
                self.small
            ));
        }
        if self.large == 0 {
            return Err("--large 0: stream messages carry at least 1 byte".into());
        }
        if self.connections == 0 {
            return Err("--connections 0: the rate phase needs at least 1 connection".into());
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Round {
    pub rw_p50_us: f64,
    pub rw_p99_us: f64,
    pub rw_p999_us: f64,
    pub std_p50_us: f64,
    pub uring_p50_us: f64,
    pub rw_stream_mbps: f64,
    pub std_stream_mbps: f64,
    pub uring_stream_mbps: f64,
    pub rw_many_msgs_per_sec: f64,
    pub std_one_msgs_per_sec: f64,
    /// CRC32C over the stream's payload on this CPU: msgr2's crc mode computes it over every
    /// byte on both ends, so it bounds the stream where checksumming is slow (emulated CPUs).
    pub crc32c_mbps: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Integrity {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub injected_faults: u64,
    /// Echoes (pongs) whose sequence number is not the one of the ping they answer.
    pub echo_mismatches: u64,
}

/// Bytes per message of one phase, for every side. Rates count payload bytes only.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSizes {
    /// Payload bytes (front + middle + data) of each Ringwire message, as the receiving
    /// messenger saw them (every message of the phase had this size, or the run fails).
    pub ringwire: usize,
    /// Bytes of each message of the blocking std baseline.
    pub std: usize,
    /// Bytes of each message of the io_uring baseline (the rate phase has none).
    pub io_uring: Option<usize>,
    /// Payload bytes of each Ringwire reply, as received (the echo, or the stream's empty
    /// acknowledgement). The baselines echo their ping-pong messages and acknowledge a whole
    /// stream with one byte.
    pub ringwire_reply: usize,
    /// Bytes a Ringwire message occupies on a TCP connection beyond its payload: the msgr2
    /// frame's preamble, message header, CRCs and epilogue (the session's ACK frames are not
    /// included). Not counted in any rate; the baselines have no framing.
    pub ringwire_frame_overhead: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub ping_pong: PhaseSizes,
    pub stream: PhaseSizes,
    /// Ringwire on `connections` connections against the std ping-pong on one.
    pub rate: PhaseSizes,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy: String,
    pub transport: String,
    pub pinned_cpu: Option<usize>,
    /// Payload bytes of each ping-pong and rate-phase message, Ringwire and baselines alike.
    pub small_bytes: usize,
    /// Payload bytes of each stream message, Ringwire (data segment) and baselines alike.
    pub large_bytes: usize,
    /// Per phase and per side, as measured.
    pub sizes: Sizes,
    pub connections: usize,
    pub rounds: Vec<Round>,
    pub median: Round,
    /// Median over rounds of the paired ratios.
    pub ratio_p50_vs_std: f64,
    pub ratio_p50_vs_uring: f64,
    pub ratio_stream_vs_uring: f64,
    pub ratio_stream_vs_std: f64,
    pub ratio_many_vs_one_std: f64,
    pub idle_connection_bytes: Option<u64>,
    pub integrity: Integrity,
}

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
    let f = &m.front;
    if f.len() >= 8 {
        u64::from_le_bytes(f[..8].try_into().expect("8 bytes"))
    } else {
        0
    }
}

/// Smallest and largest payload seen per message type (`PING..=MANY_PONG`), so that the
/// report states the sizes that were sent, not the ones that were asked for.
struct Seen([(AtomicUsize, AtomicUsize); 6]);

impl Default for Seen {
    fn default() -> Self {
        Seen(std::array::from_fn(|_| {
            (AtomicUsize::new(usize::MAX), AtomicUsize::new(0))
        }))
    }
}

impl Seen {
    fn record(&self, m: &Message) {
        let Some((min, max)) = self.0.get(m.ty.wrapping_sub(PING) as usize) else {
            return;
        };
        let len = m.payload_len();
        // Plain loads on the usual path: every message of a phase has the same size.
        if len < min.load(Ordering::Relaxed) {
            min.fetch_min(len, Ordering::Relaxed);
        }
        if len > max.load(Ordering::Relaxed) {
            max.fetch_max(len, Ordering::Relaxed);
        }
    }

    /// The one payload size messages of type `ty` had.
    fn size(&self, ty: u16, what: &str) -> Result<usize, String> {
        let (min, max) = &self.0[(ty - PING) as usize];
        match (min.load(Ordering::Relaxed), max.load(Ordering::Relaxed)) {
            (min, max) if min == max => Ok(min),
            (usize::MAX, 0) => Err(format!("no {what} arrived")),
            (min, max) => Err(format!("{what} arrived with {min} to {max} payload bytes")),
        }
    }
}

/// The server side: echoes pings (the same bytes), acknowledges data, checks order.
struct Server {
    checker: Arc<Checker>,
    seen: Arc<Seen>,
}

impl Dispatcher for Server {
    fn dispatch(&self, conn: &Connection, msg: Message) {
        self.seen.record(&msg);
        let reply = match msg.ty {
            PING => Message::new(PONG).with_front(msg.front.clone()),
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
/// next message leaves from the worker thread as soon as the previous answer arrives.
struct Client {
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
}

const PING_FILL: u8 = 0x5a;

impl Client {
    /// The message of type `ty` numbered `seq`: a ping carries `small` payload bytes in its
    /// front, the sequence number first; a stream message carries the data segment alone
    /// (`large` bytes), its sequence number in the header's tid.
    fn message(&self, slab: &mut BytesMut, ty: u16, seq: u64) -> Message {
        if ty == DATA {
            return Message::new(DATA)
                .with_tid(seq)
                .with_data(self.data.get().expect("set at start").clone());
        }
        if slab.capacity() < self.small {
            slab.reserve(self.small.max(SLAB_BYTES));
        }
        slab.extend_from_slice(&seq.to_le_bytes());
        slab.resize(self.small, PING_FILL);
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

    fn start(&self, conn: &Connection, ty: u16, in_flight: usize) {
        let mut st = self.state.lock().expect("not poisoned");
        let mut flow = st.flows.remove(&key(conn)).unwrap_or_default();
        for _ in 0..in_flight {
            self.send(conn, &mut st.slab, &mut flow, ty);
        }
        st.flows.insert(key(conn), flow);
    }
}

impl Dispatcher for Client {
    fn dispatch(&self, conn: &Connection, msg: Message) {
        let next = match msg.ty {
            PONG => PING,
            DATA_ACK => DATA,
            MANY_PONG => MANY_PING,
            _ => return,
        };
        self.seen.record(&msg);
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

struct Pair {
    server: Messenger,
    client: Messenger,
    /// Many anonymous connections need unregistered (lossy) sessions: anonymous lossless
    /// connections from one messenger would all claim the same session at the server.
    many_client: Messenger,
    server_checker: Arc<Checker>,
    client_side: Arc<Client>,
    target: EntityAddr,
}

fn start_pair(args: &BenchArgs) -> Result<Pair, String> {
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
    });
    let client_type = if args.policy == "peer" {
        EntityType::OSD
    } else {
        EntityType::CLIENT
    };
    let mut cb = Messenger::builder(EntityName {
        ty: client_type,
        id: "1".into(),
    })
    .policy(EntityType::OSD, cp)
    .options(options);
    if args.policy == "peer" {
        cb = cb.bind(listen);
    }
    let client = cb.start(client_side.clone()).map_err(|e| e.to_string())?;
    let data = match client.alloc_payload(args.large) {
        Some(mut buf) if args.transport == "rdma" => {
            buf.fill(0x5a);
            buf.freeze()
        }
        _ => Bytes::from(vec![0x5a; args.large]),
    };
    let _ = client_side.data.set(data);
    let many_client = Messenger::builder(EntityName {
        ty: EntityType::MGR,
        id: "many".into(),
    })
    .policy(EntityType::OSD, Policy::lossy_client())
    .options(Options {
        workers: 1,
        arena_size: 0,
        ..Options::default()
    })
    .start(client_side.clone())
    .map_err(|e| e.to_string())?;
    let target = server.addrs().0[0];
    Ok(Pair {
        server,
        client,
        many_client,
        server_checker,
        client_side,
        target,
    })
}

fn wait_connected(conns: &[Connection], timeout: Duration) -> Result<(), String> {
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

/// Replaces closed (lossy, reset) connections and waits until all are up.
fn refresh(p: &Pair, many: &mut [Connection]) -> Result<(), String> {
    for _ in 0..20 {
        for c in many.iter_mut().filter(|c| c.is_closed()) {
            *c = p.many_client.connect_anon(p.target, EntityType::OSD);
        }
        if wait_connected(many, Duration::from_secs(10)).is_ok() {
            return Ok(());
        }
    }
    wait_connected(many, Duration::from_secs(1))
}

/// Ping-pong of `small`-byte messages on one connection: returns sorted round trips.
fn rw_pingpong(p: &Pair, args: &BenchArgs, conn: &Connection) -> Result<Vec<Duration>, String> {
    let c = &p.client_side;
    let (tx, rx) = channel();
    {
        let mut st = c.state.lock().expect("not poisoned");
        st.rtts = Vec::with_capacity(args.iters);
        st.record = true;
        c.stop.store(false, Ordering::Relaxed);
        st.remaining = args.iters as u64 - 1;
        st.done = Some(tx);
    }
    c.start(conn, PING, 1);
    rx.recv_timeout(Duration::from_secs(120))
        .map_err(|_| "ping-pong stalled".to_string())?;
    let mut st = c.state.lock().expect("not poisoned");
    st.record = false;
    let mut rtts = std::mem::take(&mut st.rtts);
    rtts.sort();
    Ok(rtts)
}

/// `count` messages of `large` bytes with 4 in flight; returns bytes per second.
fn rw_stream(p: &Pair, args: &BenchArgs, conn: &Connection, count: u64) -> Result<f64, String> {
    let c = &p.client_side;
    let (tx, rx) = channel();
    let in_flight = 4u64.min(count);
    {
        let mut st = c.state.lock().expect("not poisoned");
        st.record = false;
        st.remaining = count - in_flight;
        st.done = Some(tx);
        c.stop.store(false, Ordering::Relaxed);
    }
    let acks_at_start = c.pongs.load(Ordering::Relaxed);
    let t = Instant::now();
    c.start(conn, DATA, in_flight as usize);
    rx.recv_timeout(Duration::from_secs(120))
        .map_err(|_| "stream stalled".to_string())?;
    // `done` fires when the last message is sent; wait for every acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.pongs.load(Ordering::Relaxed) < acks_at_start + count {
        if Instant::now() > deadline {
            return Err("stream acknowledgements stalled".into());
        }
        std::thread::yield_now();
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((count as usize * args.large) as f64 / secs)
}

/// Ping-pong on `conns` connections at once for `duration`; returns messages per second.
fn rw_many(p: &Pair, conns: &[Connection], duration: Duration) -> f64 {
    let c = &p.client_side;
    {
        let mut st = c.state.lock().expect("not poisoned");
        st.record = false;
        st.remaining = u64::MAX;
        st.done = None;
    }
    c.stop.store(false, Ordering::Relaxed);
    let before = c.pongs.load(Ordering::Relaxed);
    let t = Instant::now();
    for conn in conns {
        c.start(conn, MANY_PING, 1);
    }
    std::thread::sleep(duration);
    let n = c.pongs.load(Ordering::Relaxed) - before;
    let secs = t.elapsed().as_secs_f64();
    c.stop.store(true, Ordering::Relaxed);
    // Let the last round trips drain before the next phase.
    std::thread::sleep(Duration::from_millis(50));
    n as f64 / secs
}

/// Bytes per second of CRC32C over the stream's payload (a few passes, timed together).
fn crc32c_rate(p: &Pair) -> f64 {
    let data = p.client_side.data.get().expect("set at start");
    let passes = ((64 << 20) / data.len().max(1)).clamp(1, 64);
    let t = Instant::now();
    for _ in 0..passes {
        std::hint::black_box(ringwire::proto::crc::ceph_crc32c(0, data));
    }
    (passes * data.len()) as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Progress {
    tty: bool,
    total: usize,
    done: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.tty {
            let width = 30;
            let filled = width * self.done / self.total;
            eprint!(
                "\r[{}{}] {:>3}% {what:<40}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                100 * self.done / self.total
            );
            let _ = std::io::stderr().flush();
        }
    }
    fn finish(&self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(80));
        }
    }
}

pub fn run(args: BenchArgs) -> Result<Report, String> {
    args.validate()?;
    if let Some(cpu) = args.cpu {
        if !baseline::pin_to_cpu(cpu) {
            return Err(format!(
                "cannot pin to CPU {cpu} (use --no-pin or another --cpu)"
            ));
        }
    }
    let fds = baseline::raise_fd_limit();
    if (fds as usize) < 2 * args.connections + 64 {
        return Err(format!(
            "{} connections need about {} file descriptors; the limit is {fds} (raise ulimit -n)",
            args.connections,
            2 * args.connections + 64
        ));
    }
    let p = start_pair(&args)?;
    if let Some(addr) = args.metrics {
        let at = p
            .server
            .serve_metrics(addr)
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        eprintln!("server metrics at http://{at}/metrics");
    }
    let main = p.client.connect(p.target, EntityType::OSD);
    let mut many: Vec<Connection> = (0..args.connections)
        .map(|_| p.many_client.connect_anon(p.target, EntityType::OSD))
        .collect();
    let rss_before = rss_bytes();
    wait_connected(std::slice::from_ref(&main), Duration::from_secs(10))?;
    refresh(&p, &mut many)?;
    // Both ends of every idle connection live in this process.
    let idle_connection_bytes = (args.connections >= 100)
        .then(|| rss_bytes().saturating_sub(rss_before) / (2 * args.connections as u64));
    let stream_count = ((512 << 20) / args.large.max(1)).clamp(8, 4096) as u64;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total: args.rounds * 6 + 1,
        done: 0,
    };
    progress.step("warm-up");
    rw_pingpong(
        &p,
        &BenchArgs {
            iters: 500,
            ..clone_args(&args)
        },
        &main,
    )?;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let round = format!("round {}/{}", r + 1, args.rounds);
        let rtts = rw_pingpong(&p, &args, &main)?;
        progress.step(&format!("{round}: ringwire ping-pong"));
        let mut std_rtts = baseline::std_pingpong(args.small, 200, args.iters);
        std_rtts.sort();
        progress.step(&format!("{round}: std ping-pong"));
        let mut uring_rtts = baseline::uring_pingpong(args.small, 200, args.iters);
        uring_rtts.sort();
        progress.step(&format!("{round}: io_uring ping-pong"));
        let rw_bps = rw_stream(&p, &args, &main, stream_count)?;
        progress.step(&format!("{round}: ringwire stream"));
        let uring_bps = baseline::uring_stream(args.large, stream_count as usize);
        let std_bps = baseline::std_stream(args.large, stream_count as usize);
        progress.step(&format!("{round}: baseline streams"));
        // Injected failures end lossy connections (by design): replace those that ended.
        refresh(&p, &mut many)?;
        let rate = rw_many(&p, &many, args.duration);
        let std_total: Duration = std_rtts.iter().sum();
        progress.step(&format!("{round}: ringwire many connections"));
        rounds.push(Round {
            rw_p50_us: us(baseline::percentile(&rtts, 0.5)),
            rw_p99_us: us(baseline::percentile(&rtts, 0.99)),
            rw_p999_us: us(baseline::percentile(&rtts, 0.999)),
            std_p50_us: us(baseline::percentile(&std_rtts, 0.5)),
            uring_p50_us: us(baseline::percentile(&uring_rtts, 0.5)),
            rw_stream_mbps: rw_bps / 1e6,
            std_stream_mbps: std_bps / 1e6,
            uring_stream_mbps: uring_bps / 1e6,
            rw_many_msgs_per_sec: rate,
            std_one_msgs_per_sec: std_rtts.len() as f64 / std_total.as_secs_f64(),
            crc32c_mbps: crc32c_rate(&p),
        });
    }
    progress.finish();
    let col = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let med = Round {
        rw_p50_us: col(|r| r.rw_p50_us),
        rw_p99_us: col(|r| r.rw_p99_us),
        rw_p999_us: col(|r| r.rw_p999_us),
        std_p50_us: col(|r| r.std_p50_us),
        uring_p50_us: col(|r| r.uring_p50_us),
        rw_stream_mbps: col(|r| r.rw_stream_mbps),
        std_stream_mbps: col(|r| r.std_stream_mbps),
        uring_stream_mbps: col(|r| r.uring_stream_mbps),
        rw_many_msgs_per_sec: col(|r| r.rw_many_msgs_per_sec),
        crc32c_mbps: col(|r| r.crc32c_mbps),
        std_one_msgs_per_sec: col(|r| r.std_one_msgs_per_sec),
    };
    // Quiesce, then account for every message the client sent.
    std::thread::sleep(Duration::from_millis(200));
    let ck = &p.server_checker;
    let sent = p.client_side.sent.load(Ordering::Relaxed);
    let received = ck.seen.load(Ordering::Relaxed);
    let duplicated = ck.duplicated.load(Ordering::Relaxed);
    let integrity = Integrity {
        sent,
        received,
        lost: sent.saturating_sub(received - duplicated),
        duplicated,
        reordered: ck.reordered.load(Ordering::Relaxed),
        injected_faults: p.server.stats().injected_faults + p.client.stats().injected_faults,
        echo_mismatches: p.client_side.echo_mismatches.load(Ordering::Relaxed),
    };
    let sizes = measured_sizes(&p, &args)?;
    Ok(Report {
        policy: args.policy.clone(),
        transport: args.transport.clone(),
        pinned_cpu: args.cpu,
        small_bytes: args.small,
        large_bytes: args.large,
        sizes,
        connections: args.connections,
        ratio_p50_vs_std: col(|r| r.rw_p50_us / r.std_p50_us),
        ratio_p50_vs_uring: col(|r| r.rw_p50_us / r.uring_p50_us),
        ratio_stream_vs_uring: col(|r| r.rw_stream_mbps / r.uring_stream_mbps),
        ratio_stream_vs_std: col(|r| r.rw_stream_mbps / r.std_stream_mbps),
        ratio_many_vs_one_std: col(|r| r.rw_many_msgs_per_sec / r.std_one_msgs_per_sec),
        rounds,
        median: med,
        idle_connection_bytes,
        integrity,
    })
}

/// The sizes every side sent in each phase: Ringwire's as its receivers saw them, checked
/// against the baselines' (which send exactly what they are given).
fn measured_sizes(p: &Pair, args: &BenchArgs) -> Result<Sizes, String> {
    let c = &p.client_side;
    let seen = &c.seen;
    // What a message costs on a TCP connection beyond its payload, encoded as the runtime
    // encodes it.
    let overhead = |ty: u16| {
        let m = c.message(&mut BytesMut::new(), ty, 1);
        m.encode_frame(&mut TxQueue::default(), 1, 0) - m.payload_len()
    };
    let phase = |ty: u16, reply: u16, what: &str, baseline: usize, io_uring: bool| {
        let ringwire = seen.size(ty, &format!("Ringwire {what} messages"))?;
        if ringwire != baseline {
            return Err(format!(
                "Ringwire's {what} messages carried {ringwire} payload bytes, the baselines' {baseline}"
            ));
        }
        let ringwire_reply = seen.size(reply, &format!("Ringwire {what} replies"))?;
        if reply != DATA_ACK && ringwire_reply != ringwire {
            return Err(format!(
                "Ringwire's {what} echoes carried {ringwire_reply} payload bytes, not {ringwire}"
            ));
        }
        Ok(PhaseSizes {
            ringwire,
            std: baseline,
            io_uring: io_uring.then_some(baseline),
            ringwire_reply,
            ringwire_frame_overhead: overhead(ty),
        })
    };
    Ok(Sizes {
        ping_pong: phase(PING, PONG, "ping-pong", args.small, true)?,
        stream: phase(DATA, DATA_ACK, "stream", args.large, true)?,
        rate: phase(MANY_PING, MANY_PONG, "rate-phase", args.small, false)?,
    })
}

fn clone_args(a: &BenchArgs) -> BenchArgs {
    BenchArgs {
        policy: a.policy.clone(),
        small: a.small,
        large: a.large,
        connections: a.connections,
        duration: a.duration,
        rounds: a.rounds,
        iters: a.iters,
        transport: a.transport.clone(),
        busy_poll: a.busy_poll,
        inject: a.inject,
        cpu: a.cpu,
        json: a.json,
        metrics: a.metrics,
    }
}

/// `n` bytes as the docs write them: 64 B, 4 KiB, 4 MiB, 1000 B.
fn human_bytes(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

pub fn print(r: &Report) {
    let m = &r.median;
    let z = &r.sizes;
    let small = human_bytes(z.ping_pong.ringwire);
    let large = human_bytes(z.stream.ringwire);
    println!(
        "ringwire bench: {} transport, policy {}, {} connections, {} rounds{}",
        r.transport,
        r.policy,
        r.connections,
        r.rounds.len(),
        r.pinned_cpu
            .map(|c| format!(", pinned to CPU {c}"))
            .unwrap_or_default()
    );
    println!(
        "payload per message, Ringwire and baselines alike: ping-pong and rate {small} (echoed), stream {large}; \
         Ringwire's msgr2 framing adds {} B and {} B per message, not counted",
        z.ping_pong.ringwire_frame_overhead, z.stream.ringwire_frame_overhead
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>16}",
        "figure (median)", "ringwire", "std", "io_uring", "ratio"
    );
    println!(
        "{:<34} {:>9.1} us {:>9.1} us {:>9.1} us {:>9.2} x std",
        format!("{small} ping-pong p50"),
        m.rw_p50_us,
        m.std_p50_us,
        m.uring_p50_us,
        r.ratio_p50_vs_std
    );
    println!(
        "{:<34} {:>9.1} us",
        format!("{small} ping-pong p99"),
        m.rw_p99_us
    );
    println!(
        "{:<34} {:>9.1} us",
        format!("{small} ping-pong p999"),
        m.rw_p999_us
    );
    println!(
        "{:<34} {:>7.0} MB/s {:>7.0} MB/s {:>7.0} MB/s {:>7.2} x uring",
        format!("{large} stream, one connection"),
        m.rw_stream_mbps,
        m.std_stream_mbps,
        m.uring_stream_mbps,
        r.ratio_stream_vs_uring
    );
    println!(
        "{:<34} {:>9.0}/s {:>9.0}/s {:>12} {:>9.2} x std",
        format!(
            "{} rate, {} conns vs 1",
            human_bytes(z.rate.ringwire),
            r.connections
        ),
        m.rw_many_msgs_per_sec,
        m.std_one_msgs_per_sec,
        "",
        r.ratio_many_vs_one_std
    );
    println!(
        "{:<34} {:>6.0} MB/s",
        format!("CRC32C over {large}, one CPU"),
        m.crc32c_mbps
    );
    if let Some(b) = r.idle_connection_bytes {
        println!(
            "{:<34} {:>9.1} KiB",
            "memory per idle connection",
            b as f64 / 1024.0
        );
    }
    let i = &r.integrity;
    println!(
        "messages: {} sent, {} received, {} lost, {} duplicated, {} reordered, {} echoes mismatched ({} injected socket failures)",
        i.sent, i.received, i.lost, i.duplicated, i.reordered, i.echo_mismatches, i.injected_faults
    );
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn labels_name_the_sizes() {
        assert_eq!(human_bytes(64), "64 B");
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(4 << 20), "4 MiB");
        assert_eq!(human_bytes((4 << 20) + 8), "4194312 B");
    }
}
