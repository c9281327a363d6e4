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

pub use self::arena::{Arena, ArenaBuf};

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, SockAddr, Socket, Type};

use self::bufring::BufRing;
use crate::messenger::{
    ConnShared, Connection, Dispatcher, Error, Messenger, MessengerBuilder, Shared, STATE_CLOSED,
    STATE_CONNECTING, STATE_READY,
};
use crate::proto::endpoint::IdMap;
use crate::proto::{
    AddrType, ConnId, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityType, Event,
    Handoff, Io, Message, Placement, SessionId, Time,
};

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

const KIND_ACCEPT: u64 = 1;
const KIND_CONNECT: u64 = 2;
const KIND_RECV: u64 = 3;
const KIND_SEND: u64 = 4;
const KIND_EVENTFD: u64 = 5;
const KEY_MASK: u64 = (1 << 56) - 1;
/// `IORING_NOTIF_USAGE_ZC_COPIED` (include/uapi/linux/io_uring.h): the zero-copy send was
/// copied after all.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// `IORING_SEND_ZC_REPORT_USAGE`: ask the kernel to say whether it copied.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

fn user_data(kind: u64, key: u64) -> u64 {
    (kind << 56) | (key & KEY_MASK)
}

/// At most this many chunks per `sendmsg` (well under IOV_MAX).
const MAX_IOV: usize = 256;
/// Provided receive buffers per worker, and their size.
const RECV_BUFFERS: u16 = 256;
const RECV_BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_GROUP: u16 = 1;

enum RecvState {
    Idle,
    /// A receive into the provided-buffer ring is in flight.
    Pooled,
    /// A receive straight into a lent segment buffer is in flight.
    Direct(BytesMut),
}

struct SendOp {
    chunks: Vec<Bytes>,
    // The kernel reads these while the send is in flight; they live in the heap (stable
    // addresses) and are dropped only after the completion.
    _iov: Vec<libc::iovec>,
    _msg: Option<Box<libc::msghdr>>,
}

struct Sock {
    fd: OwnedFd,
    recv: RecvState,
    send: Option<SendOp>,
    connect_addr: Option<Box<SockAddr>>,
    /// Operations in flight; the fd and buffers are released only at zero.
    ops: u32,
    /// Closing: these bytes still go out first, then the socket is shut down.
    closing: Option<Vec<Bytes>>,
    shut: bool,
    migrate: Option<(usize, Box<Handoff>)>,
    dirty: bool,
    /// Payloads of zero-copy sends the kernel may still read (until their notification).
    zc_pending: VecDeque<Vec<Bytes>>,
    /// Cleared when a zero-copy send to this peer was copied anyway: it does not pay here.
    zc_pays: bool,
}

impl Sock {
    fn new(fd: OwnedFd) -> Self {
        Sock {
            fd,
            recv: RecvState::Idle,
            send: None,
            connect_addr: None,
            ops: 0,
            closing: None,
            shut: false,
            migrate: None,
            dirty: true,
            zc_pending: VecDeque::new(),
            zc_pays: true,
        }
    }
}

struct Worker {
    // Dropped first: unregisters the buffer ring before its memory goes.
    ring: IoUring,
    bufs: BufRing,
    index: usize,
    shared: Arc<Shared>,
    ep: Endpoint,
    socks: IdMap<u64, Sock>,
    dirty: Vec<u64>,
    listeners: Vec<OwnedFd>,
    accepts_armed: usize,
    eventfd_buf: Box<[u8; 8]>,
    /// Handles per session (several when `connect` raced an accepted session).
    handles: IdMap<SessionId, Vec<Arc<ConnShared>>>,
    sessions: IdMap<u64, SessionId>,
    cqes: Vec<(u64, i32, u32)>,
    commands: VecDeque<Command>,
    /// Sockets not read because the dispatch throttle is full.
    held_back: Vec<u64>,
    /// The payload arena is registered with this ring as fixed buffer 0.
    fixed_arena: bool,
    /// The time read once after each wait, for everything handled until the next one.
    now: Time,
    shutting_down: bool,
}

fn io_uring_error(source: io::Error) -> Error {
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

pub(crate) fn start(
    b: MessengerBuilder,
    dispatcher: Arc<dyn Dispatcher>,
) -> Result<Messenger, Error> {
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
    // One listening socket per bound address per worker (SO_REUSEPORT spreads accepts).
    let mut listeners: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for a in &b.bind {
        let sa = a.addr.ok_or(Error::NoSocketAddr(*a))?;
        let mut port = sa.port();
        for per_worker in listeners.iter_mut() {
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
            ty: AddrType::Msgr2,
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
        workers,
        dispatcher,
        origin: Instant::now(),
        next_handle: AtomicU64::new(1),
        addrs: EntityAddrVec(addrs),
        name: b.name.clone(),
        by_addr: Mutex::new(HashMap::new()),
        counters: Default::default(),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (index, own_listeners) in listeners.into_iter().enumerate() {
        let mut cfg = EndpointConfig::new(b.name.clone(), shared.addrs.clone());
        cfg.nonce = nonce;
        cfg.policies = b.policies.clone();
        cfg.default_policy = b.default_policy;
        cfg.limits = b.options.limits;
        cfg.initial_backoff = b.options.initial_backoff;
        cfg.max_backoff = b.options.max_backoff;
        cfg.handshake_timeout = b.options.handshake_timeout;
        cfg.idle_timeout = b.options.idle_timeout;
        cfg.keepalive_interval = b.options.keepalive_interval;
        cfg.inject_socket_failures = b.options.inject_socket_failures;
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
                match Worker::new(index, shared, cfg, own_listeners, entries) {
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
    let messenger = Messenger {
        shared,
        threads: Mutex::new(threads),
    };
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Thread(io::Error::other("worker died at start"))),
        }
    }
    Ok(messenger)
}

/// Adapts the messenger's interceptor to one worker's endpoint.
struct OnWorker(usize, Arc<dyn crate::messenger::MessengerInterceptor>);

impl crate::proto::Interceptor for OnWorker {
    fn intercept(&mut self, conn: ConnId, step: crate::proto::Step) -> crate::proto::Action {
        self.1.intercept(self.0, conn, step)
    }
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        cfg: EndpointConfig,
        listeners: Vec<OwnedFd>,
        entries: u32,
    ) -> Result<Worker, Error> {
        let ring = build_ring(entries)?;
        let bufs = BufRing::new(&ring, BUFFER_GROUP, RECV_BUFFERS, RECV_BUFFER_SIZE)
            .map_err(io_uring_error)?;
        let fixed_arena = match &shared.arena {
            // SAFETY: the arena outlives the ring: the worker holds `shared` (which holds the
            // arena) and drops its ring first.
            Some(a) => match unsafe { ring.submitter().register_buffers(&[a.iovec()]) } {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        worker = index,
                        "cannot register the payload arena ({e}); raise RLIMIT_MEMLOCK to send from it without pinning per send"
                    );
                    false
                }
            },
            None => false,
        };
        let mut w = Worker {
            ring,
            bufs,
            index,
            shared,
            ep: Endpoint::new(cfg),
            socks: IdMap::default(),
            dirty: Vec::new(),
            listeners,
            accepts_armed: 0,
            eventfd_buf: Box::new([0; 8]),
            handles: IdMap::default(),
            sessions: IdMap::default(),
            cqes: Vec::with_capacity(256),
            commands: VecDeque::new(),
            held_back: Vec::new(),
            fixed_arena,
            now: Time(0),
            shutting_down: false,
        };
        for i in 0..w.listeners.len() {
            w.arm_accept(i);
        }
        w.arm_eventfd();
        Ok(w)
    }

    fn now(&self) -> Time {
        self.now
    }

    fn tick(&mut self) {
        self.now = Time(self.shared.origin.elapsed().as_nanos() as u64);
    }

    fn push_sqe(&mut self, e: squeue::Entry) {
        // SAFETY: every buffer an entry points to is owned by a Sock, the BufRing or the
        // Worker and outlives the operation (released only after its completion).
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
    }

    fn arm_accept(&mut self, i: usize) {
        let fd = self.listeners[i].as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(KIND_ACCEPT, i as u64));
        self.push_sqe(e);
        self.accepts_armed += 1;
    }

    fn arm_eventfd(&mut self) {
        let fd = self.shared.workers[self.index].eventfd.as_raw_fd();
        let e = opcode::Read::new(types::Fd(fd), self.eventfd_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(KIND_EVENTFD, 0));
        self.push_sqe(e);
    }

    fn run(&mut self) {
        loop {
            self.tick();
            self.drain();
            if self.shutting_down && self.socks.is_empty() && self.accepts_armed == 0 {
                return;
            }
            let now = self.now();
            let wait = self.ep.poll_timeout().map(|t| t.0.saturating_sub(now.0));
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
            let moved = self.endpoint_output();
            self.arm_dirty();
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
                    handle.state.store(STATE_CLOSED, Ordering::Release);
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
                handle.state.store(state, Ordering::Release);
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
                for key in std::mem::take(&mut self.held_back) {
                    self.mark_dirty(key);
                }
            }
            Command::Adopt { fd, handoff } => {
                let cid = self.ep.adopt(now, *handoff);
                self.socks.insert(cid.0, Sock::new(fd));
                self.dirty.push(cid.0);
            }
            Command::Shutdown => {
                self.shutting_down = true;
                self.ep.mark_down_all(now);
                let sids: Vec<SessionId> = self.handles.keys().copied().collect();
                for sid in sids {
                    self.session_closed(sid);
                }
                for l in &self.listeners {
                    // Wakes the multishot accepts; they complete and are not re-armed.
                    // SAFETY: plain syscall on a descriptor we own.
                    unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
                }
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
            h.state.store(state, Ordering::Release);
        }
    }

    fn session_closed(&mut self, sid: SessionId) {
        if let Some(first) = self.handles.get(&sid).and_then(|h| h.first()) {
            self.count_as(first, STATE_CLOSED);
        }
        if let Some(hs) = self.handles.remove(&sid) {
            let mut by_addr = self.shared.by_addr.lock().expect("not poisoned");
            for h in hs {
                h.state.store(STATE_CLOSED, Ordering::Release);
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
            Io::Connect { conn, addr } => self.connect(conn, addr),
            Io::Transmit { conn } => self.mark_dirty(conn.0),
            Io::Close { conn, remaining } => {
                if let Some(s) = self.socks.get_mut(&conn.0) {
                    s.closing = Some(remaining);
                    self.mark_dirty(conn.0);
                }
            }
            Io::Migrate { conn, to, handoff } => {
                if let Some(s) = self.socks.get_mut(&conn.0) {
                    s.migrate = Some((to, handoff));
                    self.mark_dirty(conn.0);
                }
            }
        }
    }

    fn mark_dirty(&mut self, key: u64) {
        if let Some(s) = self.socks.get_mut(&key) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)
            .and_then(|s| s.set_tcp_nodelay(true).map(|_| s));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%addr, "cannot create socket: {e}");
                let now = self.now();
                self.ep.on_closed(now, conn);
                return;
            }
        };
        let mut sock = Sock::new(socket.into());
        sock.dirty = false;
        let sa = Box::new(SockAddr::from(addr));
        let e = opcode::Connect::new(
            types::Fd(sock.fd.as_raw_fd()),
            sa.as_ptr() as *const libc::sockaddr,
            sa.len(),
        )
        .build()
        .user_data(user_data(KIND_CONNECT, conn.0));
        sock.connect_addr = Some(sa);
        sock.ops += 1;
        self.socks.insert(conn.0, sock);
        self.push_sqe(e);
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
                if *reason == crate::proto::FaultReason::Injected {
                    bump(&counters.injected_faults, 1);
                }
            }
            _ => {}
        }
        match ev {
            Event::Connected { session, peer } => {
                tracing::debug!(worker = self.index, ?session, %peer, "connected");
                let addrs = self.peer_addrs_hint(session);
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
            Event::Reset { session } => {
                tracing::debug!(worker = self.index, ?session, "reset");
                let c = self.connection(session);
                self.session_closed(session);
                if let Some(c) = c {
                    d.on_reset(&c);
                }
            }
            Event::RemoteReset { session } => {
                if let Some(c) = self.connection(session) {
                    d.on_remote_reset(&c);
                }
            }
            Event::Refused { session, reason } => {
                tracing::info!(worker = self.index, ?session, %reason, "refused");
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
            Event::Fault {
                session,
                conn,
                reason,
            } => {
                let _ = (conn, reason); // logged by the endpoint, in the connection's span
                                        // A session closed by the fault is reported by the Reset event that follows.
                if let Some(sid) = session.filter(|s| !self.ep.is_closed(*s)) {
                    if !self.ep.is_connected(sid) {
                        self.set_state(sid, STATE_CONNECTING);
                    }
                }
            }
        }
    }

    fn peer_addrs_hint(&self, sid: SessionId) -> EntityAddrVec {
        self.handles
            .get(&sid)
            .and_then(|h| h.first())
            .and_then(|h| h.peer.lock().expect("not poisoned").clone())
            .map(|p| p.1)
            .unwrap_or_default()
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
        let inner = Arc::new(ConnShared {
            id: self.shared.next_handle.fetch_add(1, Ordering::Relaxed),
            worker: self.index,
            state: std::sync::atomic::AtomicU8::new(STATE_CONNECTING),
            was_ready: Default::default(),
            counted: std::sync::atomic::AtomicU8::new(STATE_CLOSED),
            peer: Mutex::new(None),
            messenger: self.shared.clone(),
        });
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

    fn arm_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(s) = self.socks.get_mut(&key) {
                s.dirty = false;
            }
            self.arm(key);
        }
    }

    /// Starts whatever a socket can do next: send, receive, close or hand-over.
    fn arm(&mut self, key: u64) {
        let Some(s) = self.socks.get_mut(&key) else {
            return;
        };
        if let Some(remaining) = s.closing.as_mut() {
            if s.send.is_none() && !remaining.is_empty() && !s.shut {
                let chunks = std::mem::take(remaining);
                self.submit_send(key, chunks);
                return;
            }
            let s = self.socks.get_mut(&key).expect("present");
            if s.send.is_none() && !s.shut {
                s.shut = true;
                // Completes the receive in flight (with 0); the fd closes when ops reach 0.
                // SAFETY: plain syscall on a descriptor we own.
                unsafe { libc::shutdown(s.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            if s.ops == 0 {
                self.socks.remove(&key);
            }
            return;
        }
        if s.migrate.is_some() {
            if s.ops == 0 {
                let s = self.socks.remove(&key).expect("present");
                let (to, handoff) = s.migrate.expect("checked");
                self.shared
                    .counters
                    .migrations
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.workers[to].push(Command::Adopt { fd: s.fd, handoff });
            }
            return;
        }
        if s.connect_addr.is_some() {
            return; // still connecting
        }
        let conn = ConnId(key);
        if s.send.is_none() {
            let zc_pays = s.zc_pays;
            let zc_min = self.shared.zerocopy_min;
            let arena = self.shared.arena.clone().filter(|_| self.fixed_arena);
            // An arena chunk worth sending zero-copy goes alone from the fixed buffer; the
            // chunks before it go in one sendmsg first.
            let fixed = |c: &Bytes| {
                zc_pays
                    && zc_min > 0
                    && c.len() >= zc_min
                    && arena
                        .as_ref()
                        .is_some_and(|a| a.contains(c.as_ptr(), c.len()))
            };
            let mut chunks: Vec<Bytes> = Vec::new();
            if let Some(q) = self.ep.tx_queue(conn).filter(|q| !q.is_empty()) {
                for c in q.chunks().take(MAX_IOV) {
                    if fixed(c) {
                        if chunks.is_empty() {
                            chunks.push(c.clone());
                        }
                        break;
                    }
                    chunks.push(c.clone());
                }
            }
            match chunks.as_slice() {
                [] => {}
                [one] if fixed(one) => self.submit_fixed_send(key, one.clone()),
                _ => self.submit_send(key, chunks),
            }
        }
        let backlog = self.ep.tx_queue(conn).map_or(0, |q| q.len());
        let s = self.socks.get_mut(&key).expect("present");
        if matches!(s.recv, RecvState::Idle) && !self.shutting_down {
            let counters = &self.shared.counters;
            if backlog > self.shared.max_send_backlog {
                // Re-armed when a send completes (which marks the socket dirty).
                counters.backlog_stalls.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if self.shared.throttle.as_ref().is_some_and(|t| t.over()) {
                counters.throttle_stalls.fetch_add(1, Ordering::Relaxed);
                self.held_back.push(key);
                return;
            }
            let s = self.socks.get_mut(&key).expect("present");
            let fd = s.fd.as_raw_fd();
            let entry = match self.ep.lend_segment(conn) {
                Some((mut buf, want)) => {
                    debug_assert!(buf.capacity() - buf.len() >= want);
                    // Into the spare capacity after the bytes already received.
                    // SAFETY: the pointer stays within the allocation (len + want <= capacity).
                    let dst = unsafe { buf.as_mut_ptr().add(buf.len()) };
                    let len = want as u32;
                    let e = opcode::Recv::new(types::Fd(fd), dst, len)
                        .flags(libc::MSG_WAITALL)
                        .build();
                    s.recv = RecvState::Direct(buf);
                    e
                }
                None => {
                    s.recv = RecvState::Pooled;
                    opcode::Recv::new(
                        types::Fd(fd),
                        std::ptr::null_mut(),
                        self.bufs.buf_size() as u32,
                    )
                    .buf_group(self.bufs.bgid)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                }
            };
            s.ops += 1;
            self.push_sqe(entry.user_data(user_data(KIND_RECV, key)));
        }
    }

    /// A zero-copy send straight from the registered arena (fixed buffer 0).
    fn submit_fixed_send(&mut self, key: u64, chunk: Bytes) {
        let s = self.socks.get_mut(&key).expect("present");
        let e = opcode::SendZc::new(
            types::Fd(s.fd.as_raw_fd()),
            chunk.as_ptr(),
            chunk.len() as u32,
        )
        .buf_index(Some(0))
        .flags(libc::MSG_NOSIGNAL)
        .zc_flags(SEND_ZC_REPORT_USAGE)
        .build()
        .user_data(user_data(KIND_SEND, key));
        s.send = Some(SendOp {
            chunks: vec![chunk],
            _iov: Vec::new(),
            _msg: None,
        });
        // The send's completion and its notification.
        s.ops += 2;
        self.shared
            .counters
            .registered_sends
            .fetch_add(1, Ordering::Relaxed);
        self.push_sqe(e);
    }

    fn submit_send(&mut self, key: u64, chunks: Vec<Bytes>) {
        let s = self.socks.get_mut(&key).expect("present");
        let mut iov: Vec<libc::iovec> = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is valid; the fields we need are set below.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        let zc_min = self.shared.zerocopy_min;
        let zerocopy = zc_min > 0 && s.zc_pays && chunks.iter().any(|c| c.len() >= zc_min);
        let fd = types::Fd(s.fd.as_raw_fd());
        let e = if zerocopy {
            // One more completion will come: the notification that the buffers are free.
            s.ops += 1;
            opcode::SendMsgZc::new(fd, &*msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .ioprio(SEND_ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::SendMsg::new(fd, &*msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        }
        .user_data(user_data(KIND_SEND, key));
        s.send = Some(SendOp {
            chunks,
            _iov: iov,
            _msg: Some(msg),
        });
        s.ops += 1;
        self.push_sqe(e);
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let key = ud & KEY_MASK;
        let now = self.now();
        match ud >> 56 {
            KIND_ACCEPT => self.accepted(key as usize, res, flags),
            KIND_EVENTFD => {
                if !(self.shutting_down && self.socks.is_empty()) {
                    self.arm_eventfd();
                }
            }
            KIND_CONNECT => {
                let Some(s) = self.socks.get_mut(&key) else {
                    return;
                };
                s.ops -= 1;
                s.connect_addr = None;
                if s.closing.is_none() {
                    if res == 0 {
                        self.ep.on_connected(now, ConnId(key));
                    } else {
                        tracing::debug!("connect failed: {}", io::Error::from_raw_os_error(-res));
                        self.ep.on_closed(now, ConnId(key));
                    }
                }
                self.mark_dirty(key);
            }
            KIND_RECV => self.received(key, res, flags),
            KIND_SEND if cqueue::notif(flags) => {
                let Some(s) = self.socks.get_mut(&key) else {
                    return;
                };
                s.ops -= 1;
                s.zc_pending.pop_front();
                let counters = &self.shared.counters;
                if res as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    counters.zerocopy_copied.fetch_add(1, Ordering::Relaxed);
                    s.zc_pays = false;
                } else {
                    counters.zerocopy_sends.fetch_add(1, Ordering::Relaxed);
                }
                self.mark_dirty(key);
            }
            KIND_SEND => {
                let Some(s) = self.socks.get_mut(&key) else {
                    return;
                };
                s.ops -= 1;
                let op = s.send.take().expect("a send was in flight");
                if cqueue::more(flags) {
                    // Zero copy: the kernel still reads these buffers until the notification.
                    s.zc_pending.push_back(op.chunks.clone());
                }
                let live = s.closing.is_none();
                if res < 0 {
                    if live && s.migrate.is_none() {
                        self.ep.on_closed(now, ConnId(key));
                    }
                } else {
                    let n = res as usize;
                    if let Some((_, handoff)) = s.migrate.as_mut() {
                        handoff.advance_tx(n);
                    } else if let Some(remaining) = s.closing.as_mut() {
                        // The last words before a close: resend what did not go out.
                        let mut left = n;
                        let mut rest: Vec<Bytes> = Vec::new();
                        for mut c in op.chunks {
                            if left >= c.len() {
                                left -= c.len();
                            } else {
                                let _ = c.split_to(left);
                                left = 0;
                                rest.push(c);
                            }
                        }
                        rest.append(remaining);
                        *remaining = rest;
                    } else if let Some(q) = self.ep.tx_queue(ConnId(key)) {
                        q.advance(n.min(q.len()));
                    }
                }
                self.mark_dirty(key);
            }
            _ => tracing::error!(ud, "completion for an unknown operation"),
        }
    }

    fn accepted(&mut self, i: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accepts_armed -= 1;
            if !self.shutting_down {
                self.arm_accept(i);
            }
        }
        if res < 0 {
            if !self.shutting_down {
                tracing::warn!("accept: {}", io::Error::from_raw_os_error(-res));
            }
            return;
        }
        // SAFETY: a fresh descriptor from accept, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if self.shutting_down {
            return;
        }
        let sock = Socket::from(fd);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let Some(peer) = peer else {
            return; // already gone
        };
        let now = self.now();
        let cid = self.ep.accept(now, peer);
        self.socks.insert(cid.0, Sock::new(sock.into()));
        self.dirty.push(cid.0);
    }

    fn received(&mut self, key: u64, res: i32, flags: u32) {
        let now = self.now();
        let Some(s) = self.socks.get_mut(&key) else {
            return;
        };
        s.ops -= 1;
        let state = std::mem::replace(&mut s.recv, RecvState::Idle);
        let live = s.closing.is_none() && s.migrate.is_none();
        let conn = ConnId(key);
        match state {
            RecvState::Pooled => {
                let bid = cqueue::buffer_select(flags);
                if res > 0 {
                    let bid = bid.expect("a selected buffer");
                    if live {
                        let data = self.bufs.get(bid, res as usize);
                        self.ep.on_input(now, conn, data);
                    }
                    self.bufs.recycle(bid);
                } else {
                    if let Some(bid) = bid {
                        self.bufs.recycle(bid);
                    }
                    // Out of pooled buffers: try again on the next pass.
                    if res != -libc::ENOBUFS && live {
                        self.ep.on_closed(now, conn);
                    }
                }
            }
            RecvState::Direct(mut buf) => {
                if live {
                    let n = res.max(0) as usize;
                    // SAFETY: the kernel wrote `n` bytes right after the buffer's length, inside
                    // its capacity (the receive asked for at most the spare room it was given).
                    unsafe { buf.set_len(buf.len() + n) };
                    self.ep.return_segment(now, conn, buf, n);
                    if res <= 0 {
                        self.ep.on_closed(now, conn);
                    }
                }
            }
            RecvState::Idle => {}
        }
        self.mark_dirty(key);
    }
}
