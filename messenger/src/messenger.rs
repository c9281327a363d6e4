//! The public API: a [`Messenger`] bound to addresses, [`Connection`] handles, and the
//! [`Dispatcher`] that hears messages and connection events.

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::{
    owner_of, Action, ConnId, EntityAddr, EntityAddrVec, EntityName, EntityType, FaultReason,
    Message, Policy, Step, Tuning,
};
use crate::runtime::{self, Command, WorkerHandle};

/// Receives messages and connection events. Called on the worker thread that owns the
/// connection (fast dispatch): return quickly, hand long work to other threads.
pub trait Dispatcher: Send + Sync + 'static {
    /// A message arrived, in order, exactly once per lossless session.
    fn dispatch(&self, conn: &Connection, msg: Message);
    /// Our connection became ready.
    fn on_connect(&self, _conn: &Connection) {}
    /// A peer's connection became ready on our side.
    fn on_accept(&self, _conn: &Connection) {}
    /// A lossy session ended (`reason` says why: the fault, a refused connect, a new
    /// session from the peer); what was queued on it is lost.
    fn on_reset(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// A connection of this session failed and the session goes on as its policy says: a
    /// lossless client redials with backoff, a server waits for the peer to come back. Sessions
    /// a fault ends are reported by [`on_reset`](Self::on_reset) instead. Connection races
    /// (the peer's WAIT) are part of the protocol and not reported.
    fn on_fault(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// The peer lost our session (restart or mark_down); what was queued is lost.
    fn on_remote_reset(&self, _conn: &Connection) {}
    /// The peer refused us (auth method, missing features).
    fn on_refused(&self, _conn: &Connection, _reason: &FaultReason) {}
    /// A KEEPALIVE2 we sent came back after `rtt`.
    fn on_keepalive_ack(&self, _conn: &Connection, _rtt: Duration) {}
}

/// Fault injection for a whole messenger (Ceph's `Interceptor`): asked at every protocol
/// step of every connection, on the worker that owns it. [`Action::Pause`] holds the connection
/// until [`Messenger::resume`].
pub trait MessengerInterceptor: Send + Sync + 'static {
    fn intercept(&self, worker: usize, conn: ConnId, step: Step) -> Action;
}

/// Errors of the messenger API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io_uring is unavailable: {source}{hint}")]
    IoUring {
        source: std::io::Error,
        hint: String,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("address {0} has no socket address")]
    NoSocketAddr(EntityAddr),
    #[error("RDMA is unavailable: {0}")]
    Rdma(String),
}

/// Why a send was refused: the connection is closed (lossy and faulted, or marked down).
#[derive(Debug, thiserror::Error)]
#[error("connection is closed")]
pub struct Closed(pub Box<Message>);

/// Why [`Connection::wait_ready`] returned before the connection was ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Still connecting when the time was up; `last_fault` is why the last attempt failed.
    #[error("not ready after {waited:?}{}", describe_fault(last_fault))]
    Timeout {
        waited: Duration,
        last_fault: Option<FaultReason>,
    },
    /// The connection was closed: a lossy session faulted, or it was marked down.
    #[error("connection closed{}", describe_fault(last_fault))]
    Closed { last_fault: Option<FaultReason> },
}

fn describe_fault(fault: &Option<FaultReason>) -> String {
    fault
        .as_ref()
        .map_or_else(String::new, |f| format!(": {f}"))
}

pub(crate) const STATE_CONNECTING: u8 = 0;
pub(crate) const STATE_READY: u8 = 1;
pub(crate) const STATE_CLOSED: u8 = 2;

/// What a [`Connection`] handle shares with the worker that owns it.
pub(crate) struct ConnShared {
    pub id: u64,
    pub worker: usize,
    /// STATE_*: read lock-free by `send`; changed only through [`ConnShared::set_state`].
    state: AtomicU8,
    /// Whether this session was ever ready (a later ready counts as a reconnect).
    pub was_ready: AtomicBool,
    /// The state the worker counts this session under in the gauges (only the worker touches
    /// it; `state` may change first, e.g. on `mark_down`).
    pub counted: AtomicU8,
    pub peer: Mutex<Option<(EntityName, EntityAddrVec)>>,
    /// Why the last connection attempt or connection failed; `changed` wakes
    /// [`Connection::wait_ready`] callers when it or `state` changes.
    last_fault: Mutex<Option<FaultReason>>,
    changed: Condvar,
    pub messenger: Arc<Shared>,
}

impl ConnShared {
    /// The one constructor of connection handles, for `connect` and for accepted sessions.
    pub(crate) fn new(messenger: Arc<Shared>, worker: usize) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            id: messenger.next_handle.fetch_add(1, Ordering::Relaxed),
            worker,
            state: AtomicU8::new(STATE_CONNECTING),
            was_ready: AtomicBool::new(false),
            counted: AtomicU8::new(STATE_CLOSED),
            peer: Mutex::new(None),
            last_fault: Mutex::new(None),
            changed: Condvar::new(),
            messenger,
        })
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        // Under the lock, so that a waiter between its check and its wait cannot miss it.
        let _guard = self.last_fault.lock().expect("not poisoned");
        self.changed.notify_all();
    }

    pub(crate) fn record_fault(&self, reason: &FaultReason) {
        *self.last_fault.lock().expect("not poisoned") = Some(reason.clone());
        self.changed.notify_all();
    }
}

/// A handle on a session with a peer. Cheap to clone; all clones are the same connection.
#[derive(Clone)]
pub struct Connection {
    pub(crate) inner: Arc<ConnShared>,
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Connection {}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.peer())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Connection {
    /// A number unique to this connection within its messenger.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Queues a message; never blocks. Fails only if the connection is closed.
    pub fn send(&self, msg: Message) -> Result<(), Closed> {
        if self.inner.state() == STATE_CLOSED {
            return Err(Closed(Box::new(msg)));
        }
        let c = &self.inner.messenger.counters;
        c.messages_out.fetch_add(1, Ordering::Relaxed);
        c.bytes_out
            .fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
        self.command(Command::Send {
            handle: self.inner.id,
            msg,
        });
        Ok(())
    }

    /// Closes the connection and forgets its session; no reset callback follows.
    pub fn mark_down(&self) {
        self.inner.set_state(STATE_CLOSED);
        self.command(Command::MarkDown {
            handle: self.inner.id,
        });
    }

    /// Sends a KEEPALIVE2; [`Dispatcher::on_keepalive_ack`] reports the round trip.
    pub fn keepalive(&self) {
        self.command(Command::Keepalive {
            handle: self.inner.id,
        });
    }

    pub fn is_connected(&self) -> bool {
        self.inner.state() == STATE_READY
    }

    pub fn is_closed(&self) -> bool {
        self.inner.state() == STATE_CLOSED
    }

    /// Blocks until the session is ready, for at most `timeout`. A lossless connection to a
    /// peer that is down keeps redialling in the background; this is how a caller learns, in
    /// bounded time, that it is not getting through and why.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use ringwire::proto::{EntityAddr, EntityType};
    /// # fn f(m: &ringwire::Messenger) {
    /// let osd = m.connect(EntityAddr::parse("v2:127.0.0.1:6800").unwrap(), EntityType::OSD);
    /// match osd.wait_ready(Duration::from_secs(5)) {
    ///     Ok(()) => println!("connected to {:?}", osd.peer()),
    ///     Err(e) => eprintln!("osd unreachable: {e}"), // e.g. "...: nothing listening there"
    /// }
    /// # }
    /// ```
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), NotReady> {
        let start = Instant::now();
        let mut last_fault = self.inner.last_fault.lock().expect("not poisoned");
        loop {
            match self.inner.state() {
                STATE_READY => return Ok(()),
                STATE_CLOSED => {
                    return Err(NotReady::Closed {
                        last_fault: last_fault.clone(),
                    })
                }
                _ => {}
            }
            let waited = start.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|l| !l.is_zero()) else {
                return Err(NotReady::Timeout {
                    waited,
                    last_fault: last_fault.clone(),
                });
            };
            last_fault = self
                .inner
                .changed
                .wait_timeout(last_fault, left)
                .expect("not poisoned")
                .0;
        }
    }

    /// Why the last connection attempt or connection of this session failed, if one did.
    pub fn last_fault(&self) -> Option<FaultReason> {
        self.inner.last_fault.lock().expect("not poisoned").clone()
    }

    /// The peer's name, once a handshake completed.
    pub fn peer(&self) -> Option<EntityName> {
        self.inner
            .peer
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| p.0.clone())
    }

    /// The peer's addresses, once known.
    pub fn peer_addrs(&self) -> Option<EntityAddrVec> {
        self.inner
            .peer
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| p.1.clone())
    }

    fn command(&self, cmd: Command) {
        self.inner.messenger.workers[self.inner.worker].push(cmd);
    }
}

/// Options, with Ceph's option names where there is one.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (each with one io_uring); default: the number of CPUs.
    pub workers: usize,
    /// Protocol limits, timers and fault injection.
    pub tuning: Tuning,
    /// io_uring submission queue entries per worker.
    pub ring_entries: u32,
    /// `ms_dispatch_throttle_bytes`: bytes of dispatched messages the application may hold
    /// before workers stop reading (0: unlimited).
    pub dispatch_throttle_bytes: u64,
    /// Dispatched messages the application may hold before workers stop reading (0: unlimited).
    pub dispatch_throttle_messages: u64,
    /// A connection whose unsent bytes exceed this is not read until they drain: a peer that
    /// sends but never reads cannot make us buffer its replies without bound.
    pub max_send_backlog: usize,
    /// Size of the registered payload arena ([`Messenger::alloc_payload`]); 0: none.
    pub arena_size: usize,
    /// Chunks at least this large go out with SENDMSG_ZC (0: never). A connection whose
    /// zero-copy sends come back "copied" (loopback, some NICs) falls back to plain sends.
    pub zerocopy_min: usize,
    /// The nonce in our addresses (peers must name it to reach us). Default: 0 for monitors,
    /// as in Ceph, random otherwise.
    pub nonce: Option<u32>,
    /// The RDMA transport (addresses `rdma:IP:PORT`); see docs/rdma.md.
    pub rdma: RdmaOptions,
}

/// Options of the RDMA transport. Each worker opens the device when it first needs it and
/// registers `(send_buffers + max_connections × credits) × buffer_size` bytes once; that
/// memory never grows.
#[derive(Debug, Clone)]
pub struct RdmaOptions {
    /// The device (`ibv_devices` names it); default: the first one.
    pub device: Option<String>,
    /// The device port.
    pub port: u8,
    /// The GID index (RoCE); default: chosen (RoCE v2 with an IPv4 address first).
    pub gid_index: Option<u8>,
    /// Bytes per send and receive buffer: the largest SEND.
    pub buffer_size: usize,
    /// Receive buffers posted per connection: the peer's send credits.
    pub credits: u16,
    /// Send buffers per worker, shared by its connections.
    pub send_buffers: usize,
    /// RDMA connections per worker (each holds `credits` receive buffers).
    pub max_connections: usize,
    /// Stream chunks at least this large are not sent: the receiver READs them in place.
    pub read_min: usize,
    /// Before sleeping, a worker with RDMA connections polls its completion queue this long
    /// (0: never; completions then wake it through the completion channel).
    pub busy_poll: std::time::Duration,
    /// Testing: one received record in this many moves its queue pair to the error state,
    /// as a failing HCA or link would (0: never). Counted as injected faults.
    pub inject_qp_failures: u32,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            device: None,
            port: 1,
            gid_index: None,
            buffer_size: 8 << 10,
            credits: 16,
            send_buffers: 256,
            max_connections: 128,
            read_min: 32 << 10,
            busy_poll: std::time::Duration::ZERO,
            inject_qp_failures: 0,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tuning: Tuning::default(),
            ring_entries: 1024,
            dispatch_throttle_bytes: 100 << 20,
            dispatch_throttle_messages: 0,
            max_send_backlog: 64 << 20,
            zerocopy_min: 256 << 10,
            arena_size: 64 << 20,
            nonce: None,
            rdma: RdmaOptions::default(),
        }
    }
}

/// Builds a [`Messenger`].
pub struct MessengerBuilder {
    pub(crate) name: EntityName,
    pub(crate) bind: Vec<EntityAddr>,
    pub(crate) policies: Vec<(EntityType, Policy)>,
    pub(crate) default_policy: Policy,
    pub(crate) options: Options,
    pub(crate) interceptor: Option<Arc<dyn MessengerInterceptor>>,
}

impl MessengerBuilder {
    /// Fault injection at protocol steps (tests).
    pub fn interceptor(mut self, i: Arc<dyn MessengerInterceptor>) -> Self {
        self.interceptor = Some(i);
        self
    }
    /// Listen on `addr` (e.g. `v2:127.0.0.1:0` for an ephemeral port); may be repeated.
    pub fn bind(mut self, addr: EntityAddr) -> Self {
        self.bind.push(addr);
        self
    }
    /// The policy for peers of type `peer`.
    pub fn policy(mut self, peer: EntityType, policy: Policy) -> Self {
        self.policies.push((peer, policy));
        self
    }
    /// The policy for peer types without their own (default: `Policy::lossy_client()`; a
    /// connection that falls back to it logs a warning once per peer type).
    pub fn default_policy(mut self, policy: Policy) -> Self {
        self.default_policy = policy;
        self
    }
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }
    /// Starts the workers; `dispatcher` hears everything.
    pub fn start(self, dispatcher: Arc<dyn Dispatcher>) -> Result<Messenger, Error> {
        runtime::start(self, dispatcher)
    }
}

/// Counters of one messenger, summed over its workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reconnects: AtomicU64,
    /// Sessions per state (index: STATE_CONNECTING, STATE_READY).
    pub sessions: [std::sync::atomic::AtomicI64; 2],
    pub faults: AtomicU64,
    pub injected_faults: AtomicU64,
    pub handshakes: AtomicU64,
    pub resets: AtomicU64,
    pub remote_resets: AtomicU64,
    pub migrations: AtomicU64,
    pub throttle_stalls: AtomicU64,
    pub backlog_stalls: AtomicU64,
    pub zerocopy_sends: AtomicU64,
    pub zerocopy_copied: AtomicU64,
    pub registered_sends: AtomicU64,
    pub rdma_send_bytes: AtomicU64,
    pub rdma_read_bytes: AtomicU64,
    pub rdma_copied_bytes: AtomicU64,
    pub rdma_credit_waits: AtomicU64,
    pub rdma_cq_polls: AtomicU64,
    pub rdma_cq_events: AtomicU64,
    pub rdma_registrations: AtomicU64,
    pub rdma_errors: AtomicU64,
}

/// A snapshot of a messenger's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Messages dispatched.
    pub messages_in: u64,
    /// Payload bytes (front + middle + data) dispatched.
    pub bytes_in: u64,
    /// Messages the application queued for sending.
    pub messages_out: u64,
    /// Payload bytes the application queued for sending.
    pub bytes_out: u64,
    /// Sessions that became ready again after having been ready (resumed or re-established).
    pub reconnects: u64,
    /// Sessions connecting (dialling, handshaking, backing off or in standby) and ready.
    pub sessions_connecting: i64,
    pub sessions_ready: i64,
    /// Connection faults of any kind.
    pub faults: u64,
    /// Faults injected by `inject_socket_failures`.
    pub injected_faults: u64,
    /// Connections that reached READY (first connects, accepts and resumed sessions).
    pub handshakes: u64,
    pub resets: u64,
    pub remote_resets: u64,
    /// Accepted connections handed to the worker owning their peer's session.
    pub migrations: u64,
    /// Times a connection was not read because the dispatch throttle was full.
    pub throttle_stalls: u64,
    /// Times a connection was not read because its unsent backlog was over the bound.
    pub backlog_stalls: u64,
    /// SENDMSG_ZC operations whose buffers the kernel really did not copy.
    pub zerocopy_sends: u64,
    /// SENDMSG_ZC operations the kernel copied after all (each turns zero copy off for its
    /// connection).
    pub zerocopy_copied: u64,
    /// Sends straight from the registered arena (fixed buffer, no per-send page pinning).
    pub registered_sends: u64,
    /// Stream bytes sent in RDMA SENDs.
    pub rdma_send_bytes: u64,
    /// Segment bytes the receiver pulled with RDMA READ (no copy).
    pub rdma_read_bytes: u64,
    /// Bytes copied to or from registered RDMA buffers (headers and small payloads).
    pub rdma_copied_bytes: u64,
    /// Times an RDMA connection had data to send and no credit.
    pub rdma_credit_waits: u64,
    /// Non-empty polls of a worker's RDMA completion queue.
    pub rdma_cq_polls: u64,
    /// Completion-channel events (wake-ups) of the RDMA completion queues.
    pub rdma_cq_events: u64,
    /// Memory registrations on the data path (payloads outside the arena, READ targets).
    pub rdma_registrations: u64,
    /// RDMA work completions in error other than flushes (queue pair failures).
    pub rdma_errors: u64,
}

/// State shared by the messenger, its workers and its connection handles.
pub(crate) struct Shared {
    pub workers: Vec<WorkerHandle>,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub origin: Instant,
    pub next_handle: AtomicU64,
    pub addrs: EntityAddrVec,
    pub name: EntityName,
    /// Open connections by peer address, for `connect` to reuse (connect/accept path only).
    pub by_addr: Mutex<HashMap<EntityAddr, Connection>>,
    pub counters: Counters,
    pub throttle: Option<Arc<crate::proto::throttle::Throttle>>,
    pub max_send_backlog: usize,
    pub zerocopy_min: usize,
    pub arena: Option<Arc<crate::runtime::Arena>>,
    pub rdma: RdmaOptions,
    /// Peer types with a policy of their own, and those we warned about falling back.
    pub policy_types: Vec<EntityType>,
    pub warned_default_policy: Mutex<HashSet<EntityType>>,
}

/// A messenger: workers, listeners and sessions.
///
/// ```no_run
/// use std::sync::Arc;
/// use ringwire::proto::{EntityAddr, EntityName, EntityType, Message, Policy};
/// use ringwire::{Connection, Dispatcher, Messenger, Options};
///
/// /// Echoes every message back.
/// struct Echo;
/// impl Dispatcher for Echo {
///     fn dispatch(&self, conn: &Connection, msg: Message) {
///         let _ = conn.send(msg);
///     }
/// }
///
/// // An OSD-like server: stateful sessions for clients, lossless peers for other OSDs.
/// let server = Messenger::builder(EntityName { ty: EntityType::OSD, id: "0".into() })
///     .bind(EntityAddr::parse("v2:127.0.0.1:6800").unwrap())
///     .bind(EntityAddr::parse("v2:[::1]:6800").unwrap())
///     .policy(EntityType::CLIENT, Policy::stateful_server())
///     .policy(EntityType::OSD, Policy::lossless_peer())
///     .options(Options { workers: 2, ..Options::default() })
///     .start(Arc::new(Echo))?;
/// println!("listening on {}", server.addrs());
///
/// // A client whose messages survive reconnects.
/// let client = Messenger::builder(EntityName { ty: EntityType::CLIENT, id: "admin".into() })
///     .policy(EntityType::OSD, Policy::lossless_client())
///     .start(Arc::new(Echo))?;
/// let conn = client.connect(server.addrs().0[0], EntityType::OSD);
/// conn.send(Message::new(0x10).with_front(&b"hello"[..])).expect("open");
/// conn.keepalive();
/// client.shutdown();
/// client.wait();
/// # Ok::<(), ringwire::Error>(())
/// ```
pub struct Messenger {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Messenger {
    pub fn builder(name: EntityName) -> MessengerBuilder {
        MessengerBuilder {
            name,
            bind: Vec::new(),
            policies: Vec::new(),
            default_policy: Policy::lossy_client(),
            options: Options::default(),
            interceptor: None,
        }
    }

    /// The addresses we listen on (ephemeral ports resolved).
    pub fn addrs(&self) -> &EntityAddrVec {
        &self.shared.addrs
    }

    pub fn name(&self) -> &EntityName {
        &self.shared.name
    }

    /// A payload buffer from the registered arena (None when it is exhausted or disabled).
    /// Sending it needs no copy into kernel-pinned memory: fill it, `freeze()` it into `Bytes`,
    /// and use it as a message's front or data.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use ringwire::proto::{EntityName, EntityType, Message};
    /// # fn f(m: &ringwire::Messenger, conn: &ringwire::Connection) {
    /// let mut buf = m.alloc_payload(4 << 20).expect("arena space");
    /// buf.fill(7);
    /// conn.send(Message::new(0x10).with_data(buf.freeze())).unwrap();
    /// # }
    /// ```
    pub fn alloc_payload(&self, len: usize) -> Option<crate::runtime::ArenaBuf> {
        self.shared.arena.as_ref()?.alloc(len)
    }

    /// Serves Prometheus metrics at `http://addr/metrics` from a small thread; returns the
    /// address it listens on (useful with port 0).
    #[cfg(feature = "metrics")]
    pub fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::metrics::serve(Arc::downgrade(&self.shared), addr)
    }

    /// The metrics in Prometheus text exposition format.
    #[cfg(feature = "metrics")]
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.stats(), &self.shared.name)
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        stats_of(&self.shared)
    }

    /// A connection to `addr`: the open one if there is one, else a new one that connects in
    /// the background. Messages sent before it is ready are queued.
    pub fn connect(&self, addr: EntityAddr, peer_type: EntityType) -> Connection {
        self.warn_default_policy(peer_type);
        let mut map = self.shared.by_addr.lock().expect("not poisoned");
        if let Some(c) = map.get(&addr).filter(|c| !c.is_closed()) {
            return c.clone();
        }
        let conn = self.new_handle(owner_of(&addr, self.shared.workers.len()));
        map.insert(addr, conn.clone());
        drop(map);
        conn.command(Command::Connect {
            handle: conn.inner.clone(),
            addr,
            peer_type,
            anon: false,
        });
        conn
    }

    /// A new connection to `addr` that shares nothing with existing ones (Ceph's anonymous
    /// connect).
    pub fn connect_anon(&self, addr: EntityAddr, peer_type: EntityType) -> Connection {
        self.warn_default_policy(peer_type);
        let conn = self.new_handle(owner_of(&addr, self.shared.workers.len()));
        conn.command(Command::Connect {
            handle: conn.inner.clone(),
            addr,
            peer_type,
            anon: true,
        });
        conn
    }

    fn new_handle(&self, worker: usize) -> Connection {
        Connection {
            inner: ConnShared::new(self.shared.clone(), worker),
        }
    }

    /// A silent fallback hides a missing `policy()` call until the first fault behaves
    /// unexpectedly (lossy instead of lossless): say it, once per peer type.
    fn warn_default_policy(&self, peer_type: EntityType) {
        if peer_type == EntityType::ANY || self.shared.policy_types.contains(&peer_type) {
            return;
        }
        let mut warned = self
            .shared
            .warned_default_policy
            .lock()
            .expect("not poisoned");
        if warned.insert(peer_type) {
            tracing::warn!(
                peer_type = %peer_type,
                "no policy for this peer type: using the default policy \
                 (MessengerBuilder::policy sets one)"
            );
        }
    }

    /// Releases a connection the interceptor paused (`worker` and `conn` as it was told).
    pub fn resume(&self, worker: usize, conn: ConnId) {
        if let Some(w) = self.shared.workers.get(worker) {
            w.push(Command::Resume { conn });
        }
    }

    /// Closes every connection.
    pub fn mark_down_all(&self) {
        for w in &self.shared.workers {
            w.push(Command::MarkDownAll);
        }
    }

    /// Closes everything and stops the workers; [`wait`](Self::wait) joins them.
    pub fn shutdown(&self) {
        for w in &self.shared.workers {
            w.push(Command::Shutdown);
        }
        self.shared.by_addr.lock().expect("not poisoned").clear();
    }

    /// Waits for the workers to stop.
    pub fn wait(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("not poisoned"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shutdown();
        self.wait();
    }
}

/// A snapshot of the counters shared by a messenger's workers.
pub(crate) fn stats_of(shared: &Shared) -> Stats {
    let c = &shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        messages_in: get(&c.messages_in),
        bytes_in: get(&c.bytes_in),
        messages_out: get(&c.messages_out),
        bytes_out: get(&c.bytes_out),
        reconnects: get(&c.reconnects),
        sessions_connecting: c.sessions[0].load(Ordering::Relaxed),
        sessions_ready: c.sessions[1].load(Ordering::Relaxed),
        faults: get(&c.faults),
        injected_faults: get(&c.injected_faults),
        handshakes: get(&c.handshakes),
        resets: get(&c.resets),
        remote_resets: get(&c.remote_resets),
        migrations: get(&c.migrations),
        throttle_stalls: get(&c.throttle_stalls),
        backlog_stalls: get(&c.backlog_stalls),
        zerocopy_sends: get(&c.zerocopy_sends),
        zerocopy_copied: get(&c.zerocopy_copied),
        registered_sends: get(&c.registered_sends),
        rdma_send_bytes: get(&c.rdma_send_bytes),
        rdma_read_bytes: get(&c.rdma_read_bytes),
        rdma_copied_bytes: get(&c.rdma_copied_bytes),
        rdma_credit_waits: get(&c.rdma_credit_waits),
        rdma_cq_polls: get(&c.rdma_cq_polls),
        rdma_cq_events: get(&c.rdma_cq_events),
        rdma_registrations: get(&c.rdma_registrations),
        rdma_errors: get(&c.rdma_errors),
    }
}
