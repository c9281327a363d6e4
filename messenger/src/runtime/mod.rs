//! Worker threads, after Ceph's Worker + EventCenter with io_uring as the event driver: each
//! worker owns one io_uring (SINGLE_ISSUER + DEFER_TASKRUN), one protocol [`Endpoint`], the
//! sockets of its connections, and a command queue other threads push to (woken by an
//! eventfd). Nothing on the data path takes a lock shared between workers.
//!
//! Receive: small frames and headers arrive through a provided-buffer ring (idle connections
//! hold no receive buffer); a large segment is received straight into the buffer that becomes
//! the message payload (lent by the decoder, so the transport owns it while the kernel writes).
//! Send: every queued chunk of a connection goes out in one `sendmsg` (vectored, payloads by
//! reference, `MSG_NOSIGNAL`).

mod arena;
mod bufring;
mod handle;
mod rdma;
mod tcp;
mod transport;

pub use self::arena::{Arena, ArenaBuf};
pub use self::handle::{Closed, Connection, Dispatcher, MessengerInterceptor, NotReady};
pub(crate) use self::handle::{ConnShared, STATE_CLOSED, STATE_CONNECTING, STATE_READY};

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use socket2::{Domain, Socket, Type};

use crate::options::{Options, RdmaOptions};
use crate::proto::endpoint::IdMap;
use crate::proto::{
    AddrType, ConnId, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType,
    Event, Fabric, FaultReason, Handoff, Io, Message, Placement, Policy, SessionId, Time,
};
use crate::stats::Counters;
use crate::Error;

/// What a messenger is started with (its builder's settings).
pub(crate) struct Config {
    pub name: EntityName,
    pub bind: Vec<EntityAddr>,
    pub policies: Vec<(EntityType, Policy)>,
    pub default_policy: Policy,
    pub options: Options,
    pub interceptor: Option<Arc<dyn MessengerInterceptor>>,
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
    pub arena: Option<Arc<Arena>>,
    pub rdma: RdmaOptions,
    /// Peer types with a policy of their own, and those we warned about falling back.
    pub policy_types: Vec<EntityType>,
    pub warned_default_policy: Mutex<HashSet<EntityType>>,
}

/// Work handed to a worker by other threads (or by its own dispatcher callbacks).
pub(crate) enum Command {
    Connect {
        handle: Arc<ConnShared>,
        addr: EntityAddr,
        peer_type: EntityType,
        anon: bool,
    },
    Send {
        handle: u64,
        msg: Message,
    },
    MarkDown {
        handle: u64,
    },
    Keepalive {
        handle: u64,
    },
    MarkDownAll,
    /// The dispatch throttle is back under its limits.
    Unthrottle,
    /// Release a connection the interceptor paused.
    Resume {
        conn: ConnId,
    },
    /// A connection accepted by another worker whose peer's session lives here.
    Adopt {
        fd: OwnedFd,
        handoff: Box<Handoff>,
    },
    /// An RDMA side channel accepted by another worker, with the client's hello, placed here
    /// before its queue pair is made.
    AdoptRdma {
        fd: OwnedFd,
        hello: Box<[u8; rdma::HELLO_LEN]>,
    },
    Shutdown,
}

/// The way into a worker from any thread.
pub(crate) struct WorkerHandle {
    queue: Mutex<VecDeque<Command>>,
    eventfd: OwnedFd,
    thread: OnceLock<ThreadId>,
}

impl WorkerHandle {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WorkerHandle {
            queue: Mutex::new(VecDeque::new()),
            // SAFETY: fd is a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            thread: OnceLock::new(),
        })
    }

    pub(crate) fn push(&self, cmd: Command) {
        self.queue.lock().expect("not poisoned").push_back(cmd);
        // The worker drains its queue before it sleeps: no wake-up needed from itself.
        if self.thread.get() != Some(&std::thread::current().id()) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    &one as *const u64 as *const libc::c_void,
                    8,
                )
            };
        }
    }

    /// Moves the queued commands into `into` (swapping buffers, so neither side allocates).
    fn take_into(&self, into: &mut VecDeque<Command>) {
        std::mem::swap(&mut *self.queue.lock().expect("not poisoned"), into);
    }
}

/// The eventfd read's operation kind (the transport's kinds are below it).
const KIND_EVENTFD: u64 = 0x7f;
/// How often a worker reports its connections to the `ringwire_conn_socket` probe.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

use self::rdma::Rdma;
use self::tcp::Tcp;
use self::transport::user_data;
use self::transport::{Cx, Transport};

struct Worker {
    // Dropped first: unregisters the transport's buffers before their memory goes.
    ring: IoUring,
    tcp: Tcp,
    rdma: Rdma,
    index: usize,
    shared: Arc<Shared>,
    ep: Endpoint,
    eventfd_buf: Box<[u8; 8]>,
    /// Handles per session (several when `connect` raced an accepted session).
    handles: IdMap<SessionId, Vec<Arc<ConnShared>>>,
    sessions: IdMap<u64, SessionId>,
    cqes: Vec<(u64, i32, u32)>,
    commands: VecDeque<Command>,
    /// The time read once after each wait, for everything handled until the next one.
    now: Time,
    /// When connections are next reported to the `ringwire_conn_socket` probe, and whether
    /// there were any to report last time (an idle worker does not wake up for it).
    next_announce: Time,
    announcing: bool,
    shutting_down: bool,
}

pub(crate) fn io_uring_error(source: io::Error) -> Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let hint = match (source.raw_os_error(), disabled.as_str()) {
        (_, "2") => " (sysctl kernel.io_uring_disabled=2 disables io_uring for everyone; set it to 0)".to_string(),
        (_, "1") => " (sysctl kernel.io_uring_disabled=1 allows io_uring only for the group in kernel.io_uring_group; set it to 0 or join that group)".to_string(),
        (Some(libc::ENOSYS), _) => " (this kernel has no io_uring)".to_string(),
        (Some(libc::EPERM), _) => " (denied: check sysctl kernel.io_uring_disabled and seccomp)".to_string(),
        (Some(libc::ENOMEM), _) => " (raise RLIMIT_MEMLOCK or lower Options::ring_entries)".to_string(),
        _ => String::new(),
    };
    Error::IoUring { source, hint }
}

fn build_ring(entries: u32) -> Result<IoUring, Error> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    match tuned {
        Ok(r) => Ok(r),
        // Kernels before 6.1 lack DEFER_TASKRUN: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::new(entries).map_err(io_uring_error)
        }
        Err(e) => Err(io_uring_error(e)),
    }
}

fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into v.
    let n = unsafe { libc::getrandom(&mut v as *mut u64 as *mut libc::c_void, 8, 0) };
    if n != 8 {
        // Never expected on Linux ≥ 3.17; the time still gives distinct cookies per process.
        v = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    }
    v
}

fn listen_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s)
}

/// Binds, starts the workers and waits until each is running.
pub(crate) fn start(
    b: Config,
    dispatcher: Arc<dyn Dispatcher>,
) -> Result<(Arc<Shared>, Vec<JoinHandle<()>>), Error> {
    let n = b.options.workers.max(1);
    // Numbers messengers in this process, so that probe ids of two messengers never collide.
    static MESSENGERS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let messenger = MESSENGERS.fetch_add(1, Ordering::Relaxed);
    // Monitors are known by their address alone (monmaps carry nonce 0), as in Ceph.
    let nonce = b.options.nonce.unwrap_or_else(|| {
        if b.name.ty == EntityType::MON {
            0
        } else {
            random_u64() as u32
        }
    });
    // One listening socket per bound address per worker (SO_REUSEPORT spreads accepts);
    // RDMA addresses listen for side channels.
    let mut listeners: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
    let mut rdma_listeners: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for a in &b.bind {
        let sa = a.addr.ok_or(Error::NoSocketAddr(*a))?;
        let mut port = sa.port();
        let rdma = a.ty == AddrType::Rdma;
        let per_fabric = if rdma {
            &mut rdma_listeners
        } else {
            &mut listeners
        };
        for per_worker in per_fabric.iter_mut() {
            let at = SocketAddr::new(sa.ip(), port);
            let s = listen_socket(at).map_err(|source| Error::Bind { addr: at, source })?;
            if port == 0 {
                port = s
                    .local_addr()
                    .ok()
                    .and_then(|l| l.as_socket())
                    .map_or(0, |l| l.port());
            }
            per_worker.push(s.into());
        }
        addrs.push(EntityAddr {
            ty: if rdma {
                AddrType::Rdma
            } else {
                AddrType::Msgr2
            },
            nonce,
            addr: Some(SocketAddr::new(sa.ip(), port)),
        });
    }
    let workers = (0..n)
        .map(|_| WorkerHandle::new())
        .collect::<io::Result<Vec<_>>>()
        .map_err(Error::Thread)?;
    let o = &b.options;
    let (tb, tm) = (o.dispatch_throttle_bytes, o.dispatch_throttle_messages);
    let arena = match o.arena_size {
        0 => None,
        n => Some(Arena::new(n).map_err(|source| Error::IoUring {
            source,
            hint: " (cannot map the payload arena; lower Options::arena_size)".into(),
        })?),
    };
    let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| Shared {
        throttle: (tb > 0 || tm > 0).then(|| {
            let weak = weak.clone();
            Arc::new(crate::proto::throttle::Throttle::new(
                tb,
                tm,
                // Back under the limit: every worker re-arms the receives it held back.
                Box::new(move || {
                    if let Some(shared) = weak.upgrade() {
                        for w in &shared.workers {
                            w.push(Command::Unthrottle);
                        }
                    }
                }),
            ))
        }),
        max_send_backlog: o.max_send_backlog,
        zerocopy_min: o.zerocopy_min,
        arena,
        rdma: o.rdma.clone(),
        workers,
        dispatcher,
        origin: Instant::now(),
        next_handle: AtomicU64::new(1),
        addrs: EntityAddrVec(addrs),
        name: b.name.clone(),
        by_addr: Mutex::new(HashMap::new()),
        counters: Default::default(),
        policy_types: b.policies.iter().map(|(ty, _)| *ty).collect(),
        warned_default_policy: Mutex::new(Default::default()),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (index, (own_listeners, own_rdma)) in listeners.into_iter().zip(rdma_listeners).enumerate()
    {
        let mut cfg = EndpointConfig::new(b.name.clone(), shared.addrs.clone());
        cfg.nonce = nonce;
        cfg.policies = b.policies.clone();
        cfg.default_policy = b.default_policy;
        cfg.tuning = b.options.tuning;
        cfg.seed = random_u64();
        cfg.placement = Placement {
            index,
            count: n,
            messenger,
        };
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let entries = b.options.ring_entries;
        let interceptor = b.interceptor.clone();
        let t = std::thread::Builder::new()
            .name(format!("ringwire-w{index}"))
            .spawn(move || {
                let _ = shared.workers[index]
                    .thread
                    .set(std::thread::current().id());
                match Worker::new(index, shared, cfg, [own_listeners, own_rdma], entries) {
                    Ok(mut w) => {
                        if let Some(i) = interceptor {
                            w.ep.set_interceptor(Some(Box::new(OnWorker(index, i))));
                        }
                        let _ = ready.send(Ok(()));
                        w.run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(Error::Thread)?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..n {
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => Error::Thread(io::Error::other("worker died at start")),
        };
        // The workers that did start stop again.
        for w in &shared.workers {
            w.push(Command::Shutdown);
        }
        for t in threads {
            let _ = t.join();
        }
        return Err(failed);
    }
    Ok((shared, threads))
}

/// Adapts the messenger's interceptor to one worker's endpoint.
struct OnWorker(usize, Arc<dyn MessengerInterceptor>);

impl crate::proto::Interceptor for OnWorker {
    fn intercept(&mut self, conn: ConnId, step: crate::proto::Step) -> crate::proto::Action {
        self.1.intercept(self.0, conn, step)
    }
}

/// Borrows the worker's ring, endpoint and shared state for a transport call.
macro_rules! cx {
    ($w:ident) => {
        Cx {
            ring: &mut $w.ring,
            ep: &mut $w.ep,
            shared: &$w.shared,
            now: $w.now,
            shutting_down: $w.shutting_down,
        }
    };
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        cfg: EndpointConfig,
        [listeners, rdma_listeners]: [Vec<OwnedFd>; 2],
        entries: u32,
    ) -> Result<Worker, Error> {
        let mut ring = build_ring(entries)?;
        let mut ep = Endpoint::new(cfg);
        let (tcp, rdma) = {
            let mut cx = Cx {
                ring: &mut ring,
                ep: &mut ep,
                shared: &shared,
                now: Time(0),
                shutting_down: false,
            };
            let tcp = Tcp::new(&mut cx, index, listeners)?;
            (tcp, Rdma::new(&mut cx, index, rdma_listeners)?)
        };
        let mut w = Worker {
            ring,
            tcp,
            rdma,
            index,
            shared,
            ep,
            eventfd_buf: Box::new([0; 8]),
            handles: IdMap::default(),
            sessions: IdMap::default(),
            cqes: Vec::with_capacity(256),
            commands: VecDeque::new(),
            now: Time(0),
            next_announce: Time(0),
            announcing: false,
            shutting_down: false,
        };
        w.arm_eventfd();
        Ok(w)
    }

    fn now(&self) -> Time {
        self.now
    }

    fn tick(&mut self) {
        self.now = Time(self.shared.origin.elapsed().as_nanos() as u64);
    }

    fn arm_eventfd(&mut self) {
        let fd = self.shared.workers[self.index].eventfd.as_raw_fd();
        let e = opcode::Read::new(types::Fd(fd), self.eventfd_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(KIND_EVENTFD, 0));
        cx!(self).push(e);
    }

    /// A completion: the eventfd's, or the transport's.
    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        if ud >> 56 == KIND_EVENTFD {
            if !(self.shutting_down && self.is_idle()) {
                self.arm_eventfd();
            }
            return;
        }
        if rdma::owns_kind(ud >> 56) {
            self.rdma.complete(&mut cx!(self), ud, res, flags);
        } else {
            self.tcp.complete(&mut cx!(self), ud, res, flags);
        }
    }

    fn is_idle(&self) -> bool {
        self.tcp.is_idle() && self.rdma.is_idle()
    }

    fn run(&mut self) {
        loop {
            self.tick();
            self.drain();
            if self.shutting_down && self.is_idle() {
                return;
            }
            let now = self.now();
            if now >= self.next_announce {
                let tcp = self.tcp.announce(&self.ep);
                self.announcing = self.rdma.announce(&self.ep) | tcp;
                self.next_announce = now.after(ANNOUNCE_INTERVAL);
            }
            let wake = match (self.ep.poll_timeout(), self.announcing) {
                (Some(t), true) => Some(t.min(self.next_announce)),
                (None, true) => Some(self.next_announce),
                (t, false) => t,
            };
            let mut wait = wake.map(|t| t.0.saturating_sub(now.0));
            if wait != Some(0) && self.rdma.busy_poll(&mut cx!(self)) {
                wait = Some(0);
            }
            let result = match wait {
                Some(0) => self.ring.submit().map(|_| ()),
                Some(ns) => {
                    let ts = types::Timespec::new()
                        .sec(ns / 1_000_000_000)
                        .nsec((ns % 1_000_000_000) as u32);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args).map(|_| ())
                }
                None => self.ring.submit_and_wait(1).map(|_| ()),
            };
            if let Err(e) = result {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => tracing::error!(worker = self.index, "io_uring_enter: {e}"),
                }
            }
            self.tick();
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(ud, res, flags) in &cqes {
                self.complete(ud, res, flags);
            }
            cqes.clear();
            self.cqes = cqes;
            let now = self.now();
            self.ep.handle_timeout(now);
        }
    }

    /// Commands, endpoint output and socket work until nothing is left to do without waiting.
    fn drain(&mut self) {
        loop {
            let mut commands = std::mem::take(&mut self.commands);
            self.shared.workers[self.index].take_into(&mut commands);
            let idle = commands.is_empty();
            for cmd in commands.drain(..) {
                self.command(cmd);
            }
            self.commands = commands;
            let mut moved = self.endpoint_output();
            moved |= self.tcp.progress(&mut cx!(self));
            moved |= self.rdma.progress(&mut cx!(self));
            if idle && !moved {
                return;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect {
                handle,
                addr,
                peer_type,
                anon,
            } => {
                if self.shutting_down {
                    handle.set_state(STATE_CLOSED);
                    return;
                }
                let sid = if anon {
                    self.ep.connect_anon(now, addr, peer_type)
                } else {
                    self.ep.connect(now, addr, peer_type)
                };
                let state = if self.ep.is_connected(sid) {
                    STATE_READY
                } else {
                    STATE_CONNECTING
                };
                handle.set_state(state);
                if !self.handles.contains_key(&sid) {
                    self.count_as(&handle, state);
                }
                if let Some(first) = self.handles.get(&sid).and_then(|h| h.first()) {
                    let peer = first.peer.lock().expect("not poisoned").clone();
                    *handle.peer.lock().expect("not poisoned") = peer;
                }
                self.sessions.insert(handle.id, sid);
                self.handles.entry(sid).or_default().push(handle);
            }
            Command::Send { handle, msg } => {
                let Some(&sid) = self.sessions.get(&handle) else {
                    return;
                };
                if self.ep.send(now, sid, msg).is_err() {
                    self.session_closed(sid);
                }
            }
            Command::MarkDown { handle } => {
                if let Some(&sid) = self.sessions.get(&handle) {
                    self.ep.mark_down(now, sid);
                    self.session_closed(sid);
                }
            }
            Command::Keepalive { handle } => {
                if let Some(&sid) = self.sessions.get(&handle) {
                    self.ep.keepalive(now, sid);
                }
            }
            Command::MarkDownAll => {
                self.ep.mark_down_all(now);
                let sids: Vec<SessionId> = self.handles.keys().copied().collect();
                for sid in sids {
                    self.session_closed(sid);
                }
            }
            Command::Resume { conn } => self.ep.resume(now, conn),
            Command::Unthrottle => {
                self.tcp.unthrottle();
                self.rdma.unthrottle();
            }
            Command::Adopt { fd, handoff } => {
                let cid = self.ep.adopt(now, *handoff);
                self.tcp.adopt(&self.ep, cid, fd);
            }
            Command::AdoptRdma { fd, hello } => self.rdma.adopt(&mut cx!(self), fd, Some(hello)),
            Command::Shutdown => {
                self.shutting_down = true;
                self.ep.mark_down_all(now);
                let sids: Vec<SessionId> = self.handles.keys().copied().collect();
                for sid in sids {
                    self.session_closed(sid);
                }
                self.tcp.shutdown();
                self.rdma.shutdown();
            }
        }
    }

    fn connection(&self, sid: SessionId) -> Option<Connection> {
        self.handles
            .get(&sid)
            .and_then(|h| h.first())
            .map(|inner| Connection {
                inner: inner.clone(),
            })
    }

    /// Moves a session (its first handle) to `state` in the per-state gauges.
    fn count_as(&self, first: &ConnShared, state: u8) {
        let sessions = &self.shared.counters.sessions;
        let old = first.counted.swap(state, Ordering::Relaxed);
        if old == state {
            return;
        }
        if let Some(g) = sessions.get(old as usize) {
            g.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(g) = sessions.get(state as usize) {
            g.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_state(&self, sid: SessionId, state: u8) {
        let Some(hs) = self.handles.get(&sid) else {
            return;
        };
        if let Some(first) = hs.first() {
            let old = first.counted.load(Ordering::Relaxed);
            self.count_as(first, state);
            let ready_again = old != state
                && state == STATE_READY
                && first.was_ready.swap(true, Ordering::Relaxed);
            if ready_again {
                self.shared
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for h in hs {
            h.set_state(state);
        }
    }

    fn session_closed(&mut self, sid: SessionId) {
        if let Some(first) = self.handles.get(&sid).and_then(|h| h.first()) {
            self.count_as(first, STATE_CLOSED);
        }
        if let Some(hs) = self.handles.remove(&sid) {
            let mut by_addr = self.shared.by_addr.lock().expect("not poisoned");
            for h in hs {
                h.set_state(STATE_CLOSED);
                self.sessions.remove(&h.id);
                by_addr.retain(|_, c| !Arc::ptr_eq(&c.inner, &h));
            }
        }
    }

    /// Handles the endpoint's I/O requests and events. Returns whether anything came out.
    fn endpoint_output(&mut self) -> bool {
        let mut moved = false;
        while let Some(io) = self.ep.poll_io() {
            moved = true;
            self.io(io);
        }
        while let Some(ev) = self.ep.poll_event() {
            moved = true;
            self.event(ev);
        }
        moved
    }

    fn io(&mut self, io: Io) {
        match io {
            Io::Connect {
                conn,
                addr,
                fabric: Fabric::Rdma,
            } => self.rdma.connect(&mut cx!(self), conn, addr),
            Io::Connect { conn, addr, .. } => self.tcp.connect(&mut cx!(self), conn, addr),
            Io::Transmit { conn } if self.rdma.owns(conn) => self.rdma.wake(conn),
            Io::Transmit { conn } => self.tcp.wake(conn),
            Io::Close { conn, remaining } if self.rdma.owns(conn) => {
                self.rdma.close(conn, remaining)
            }
            Io::Close { conn, remaining } => self.tcp.close(conn, remaining),
            Io::Migrate { conn, to, handoff } if self.rdma.owns(conn) => {
                self.rdma.migrate(conn, to, handoff)
            }
            Io::Migrate { conn, to, handoff } => self.tcp.migrate(conn, to, handoff),
        }
    }

    fn event(&mut self, ev: Event) {
        let d = self.shared.dispatcher.clone();
        let counters = &self.shared.counters;
        let bump = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match &ev {
            Event::Connected { .. } | Event::Accepted { .. } => bump(&counters.handshakes, 1),
            Event::Message { msg, .. } => {
                bump(&counters.messages_in, 1);
                bump(&counters.bytes_in, msg.payload_len() as u64);
            }
            Event::Reset { .. } => bump(&counters.resets, 1),
            Event::RemoteReset { .. } => bump(&counters.remote_resets, 1),
            Event::Fault { reason, .. } => {
                bump(&counters.faults, 1);
                if *reason == FaultReason::Injected {
                    bump(&counters.injected_faults, 1);
                }
            }
            _ => {}
        }
        match ev {
            Event::Connected {
                session,
                peer,
                addrs,
            } => {
                tracing::debug!(worker = self.index, ?session, %peer, %addrs, "connected");
                self.set_peer(session, peer, addrs);
                self.set_state(session, STATE_READY);
                if let Some(c) = self.connection(session) {
                    d.on_connect(&c);
                }
            }
            Event::Accepted {
                session,
                peer,
                addrs,
            } => {
                tracing::debug!(worker = self.index, ?session, %peer, %addrs, "accepted");
                let c = self.handle_for_accepted(session, &addrs);
                self.set_peer(session, peer, addrs);
                self.set_state(session, STATE_READY);
                d.on_accept(&c);
            }
            Event::Message { session, mut msg } => {
                if let Some(t) = &self.shared.throttle {
                    msg.permit = Some(t.acquire(msg.payload_len() as u64));
                }
                let c = match self.connection(session) {
                    Some(c) => c,
                    None => self.handle_for_accepted(session, &EntityAddrVec::default()),
                };
                d.dispatch(&c, msg);
            }
            Event::Reset { session, reason } => {
                tracing::debug!(worker = self.index, ?session, %reason, "reset");
                self.record_fault(session, &reason);
                let c = self.connection(session);
                self.session_closed(session);
                if let Some(c) = c {
                    d.on_reset(&c, &reason);
                }
            }
            Event::RemoteReset { session } => {
                if let Some(c) = self.connection(session) {
                    d.on_remote_reset(&c);
                }
            }
            Event::Refused { session, reason } => {
                tracing::info!(worker = self.index, ?session, %reason, "refused");
                self.record_fault(session, &reason);
                if let Some(c) = self.connection(session) {
                    d.on_refused(&c, &reason);
                }
            }
            Event::KeepaliveAck { session, stamp } => {
                let rtt = self.now().since(Time(stamp.as_nanos()));
                if let Some(c) = self.connection(session) {
                    d.on_keepalive_ack(&c, rtt);
                }
            }
            // Logged by the endpoint, in the connection's span. A session the fault closes is
            // reported by the Reset event that follows.
            Event::Fault {
                session: Some(sid),
                reason,
                ..
            } if !self.ep.is_closed(sid) => {
                if !self.ep.is_connected(sid) {
                    self.set_state(sid, STATE_CONNECTING);
                }
                if reason != FaultReason::Wait {
                    self.record_fault(sid, &reason);
                    if let Some(c) = self.connection(sid) {
                        d.on_fault(&c, &reason);
                    }
                }
            }
            Event::Fault { .. } => {}
        }
    }

    fn record_fault(&self, sid: SessionId, reason: &FaultReason) {
        for h in self.handles.get(&sid).into_iter().flatten() {
            h.record_fault(reason);
        }
    }

    fn set_peer(&self, sid: SessionId, peer: crate::proto::EntityName, addrs: EntityAddrVec) {
        for h in self.handles.get(&sid).into_iter().flatten() {
            *h.peer.lock().expect("not poisoned") = Some((peer.clone(), addrs.clone()));
        }
    }

    fn handle_for_accepted(&mut self, sid: SessionId, addrs: &EntityAddrVec) -> Connection {
        if let Some(c) = self.connection(sid) {
            return c;
        }
        let inner = ConnShared::new(self.shared.clone(), self.index);
        self.sessions.insert(inner.id, sid);
        self.handles.insert(sid, vec![inner.clone()]);
        self.count_as(&inner, STATE_CONNECTING);
        let conn = Connection { inner };
        if let Some(key) = addrs.primary() {
            let mut by_addr = self.shared.by_addr.lock().expect("not poisoned");
            let stale = by_addr.get(key).is_none_or(|c| c.is_closed());
            if stale {
                by_addr.insert(*key, conn.clone());
            }
        }
        conn
    }

    // ------------------------------------------------------------------ sockets
}
