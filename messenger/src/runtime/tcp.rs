//! The TCP transport: sockets driven by the worker's io_uring (multishot accept, connect,
//! receives through the provided-buffer ring or in place into lent segments, vectored and
//! zero-copy sends, backpressure, hand-over of sockets between workers).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

use super::bufring::BufRing;
use super::transport::{user_data, Cx, Gate, Listeners, ProbeIds, Transport, KEY_MASK};
use super::{io_uring_error, Command};
use crate::proto::endpoint::{shrink_when_sparse, IdMap};
use crate::proto::{ConnId, Endpoint, Handoff, Time};
use crate::Error;

const KIND_ACCEPT: u64 = 1;
const KIND_CONNECT: u64 = 2;
const KIND_RECV: u64 = 3;
const KIND_SEND: u64 = 4;
/// `IORING_NOTIF_USAGE_ZC_COPIED` (include/uapi/linux/io_uring.h): the zero-copy send was
/// copied after all.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// `IORING_SEND_ZC_REPORT_USAGE`: ask the kernel to say whether it copied.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

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

#[derive(Default)]
struct SendOp {
    chunks: Vec<Bytes>,
    // The kernel reads these while the send is in flight; they live in the heap (stable
    // addresses) and are released (or kept for reuse) only after the completion.
    iov: Vec<libc::iovec>,
    msg: Option<Box<libc::msghdr>>,
}

/// How many emptied send operations a worker keeps for reuse, so that a steady-state send
/// allocates no chunk list, iovec array or msghdr.
const SPARE_SENDS: usize = 64;

/// How long a closing socket may spend writing its last words (and the send in flight) before
/// it is shut down regardless. A peer that stopped reading, or one behind a blackhole, would
/// otherwise hold the socket, and `Messenger::shutdown`, until TCP gives up on it (a quarter
/// of an hour), or forever while the peer answers zero-window probes.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Resets a connection (RST) and drops what its send queue holds: `connect(AF_UNSPEC)`, the
/// kernel's disconnect. A shutdown would not do: the send in flight keeps waiting for room,
/// and zero-copy sends complete only when the peer acknowledges their bytes.
fn abort(fd: &OwnedFd) {
    // SAFETY: an AF_UNSPEC sockaddr of the size connect expects; a descriptor we own.
    let rc = unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "aborting a lingering socket: {}",
            std::io::Error::last_os_error()
        );
    }
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
    /// Closing: when it is aborted even if the bytes have not gone out (`CLOSE_LINGER`).
    linger_until: Option<Time>,
    aborted: bool,
    shut: bool,
    migrate: Option<(usize, Box<Handoff>)>,
    dirty: bool,
    /// Payloads of zero-copy sends the kernel may still read (until their notification).
    zc_pending: VecDeque<Vec<Bytes>>,
    /// Cleared when a zero-copy send to this peer was copied anyway: it does not pay here.
    zc_pays: bool,
    probe: ProbeIds,
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
            linger_until: None,
            aborted: false,
            shut: false,
            migrate: None,
            dirty: true,
            zc_pending: VecDeque::new(),
            zc_pays: true,
            probe: ProbeIds::default(),
        }
    }

    fn established(fd: OwnedFd) -> Self {
        let probe = ProbeIds::of(&fd);
        Sock {
            probe,
            ..Sock::new(fd)
        }
    }
}

pub(crate) struct Tcp {
    bufs: BufRing,
    index: usize,
    socks: IdMap<u64, Sock>,
    dirty: Vec<u64>,
    listeners: Listeners,
    /// Sockets not read because the dispatch throttle is full.
    held_back: Vec<u64>,
    /// The payload arena is registered with this ring as fixed buffer 0.
    fixed_arena: bool,
    /// Emptied send operations (no chunks), their allocations kept for the next sends.
    spare_sends: Vec<SendOp>,
    /// Closing sockets and when their linger ends: they are armed again then.
    lingering: Vec<(Time, u64)>,
}

impl Tcp {
    /// Registers the receive buffers (and the payload arena) with `ring` and starts
    /// accepting on `listeners`.
    pub(crate) fn new(
        cx: &mut Cx<'_>,
        index: usize,
        listeners: Vec<OwnedFd>,
    ) -> Result<Tcp, Error> {
        let bufs = BufRing::new(cx.ring, BUFFER_GROUP, RECV_BUFFERS, RECV_BUFFER_SIZE)
            .map_err(io_uring_error)?;
        let fixed_arena = match &cx.shared.arena {
            // SAFETY: the arena outlives the ring: the worker holds `shared` (which holds the
            // arena) and drops its ring first.
            Some(a) => match unsafe { cx.ring.submitter().register_buffers(&[a.iovec()]) } {
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
        let tcp = Tcp {
            bufs,
            index,
            socks: IdMap::default(),
            dirty: Vec::new(),
            listeners: Listeners::new(cx, listeners, KIND_ACCEPT, index),
            held_back: Vec::new(),
            spare_sends: Vec::new(),
            lingering: Vec::new(),
            fixed_arena,
        };
        Ok(tcp)
    }

    /// A socket accepted by another worker, now owned here as endpoint connection `conn`.
    pub(crate) fn adopt(&mut self, ep: &Endpoint, conn: ConnId, fd: OwnedFd) {
        let sock = Sock::established(fd);
        sock.probe.report(ep, conn.0);
        self.socks.insert(conn.0, sock);
        self.dirty.push(conn.0);
    }

    fn mark_dirty(&mut self, key: u64) {
        if let Some(s) = self.socks.get_mut(&key) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn dial(&mut self, cx: &mut Cx<'_>, conn: ConnId, addr: SocketAddr) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)
            .and_then(|s| s.set_tcp_nodelay(true).map(|_| s));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(worker = self.index, %addr, "cannot create socket: {e}");
                let now = cx.now;
                cx.ep
                    .on_connect_failed(now, conn, e.raw_os_error().unwrap_or(libc::EIO));
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
        cx.push(e);
    }

    fn arm_dirty(&mut self, cx: &mut Cx<'_>) {
        while let Some(key) = self.dirty.pop() {
            if let Some(s) = self.socks.get_mut(&key) {
                s.dirty = false;
            }
            self.arm(cx, key);
        }
    }

    /// Starts whatever a socket can do next: send, receive, close or hand-over.
    fn arm(&mut self, cx: &mut Cx<'_>, key: u64) {
        let Some(s) = self.socks.get_mut(&key) else {
            return;
        };
        if let Some(remaining) = s.closing.as_mut() {
            let until = *s.linger_until.get_or_insert_with(|| {
                let until = cx.now.after(CLOSE_LINGER);
                self.lingering.push((until, key));
                until
            });
            let overdue = cx.now >= until;
            if overdue {
                remaining.clear();
            }
            if s.send.is_none() && !remaining.is_empty() && !s.shut {
                let chunks = std::mem::take(remaining);
                let op = SendOp {
                    chunks,
                    ..SendOp::default()
                };
                self.submit_send(cx, key, op);
                return;
            }
            let s = self.socks.get_mut(&key).expect("present");
            if overdue && !s.aborted {
                s.aborted = true;
                abort(&s.fd);
            }
            if s.send.is_none() && !s.shut {
                s.shut = true;
                // Completes the receive in flight (with 0); the fd closes when ops reach 0.
                // SAFETY: plain syscall on a descriptor we own.
                unsafe { libc::shutdown(s.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            if s.ops == 0 {
                self.socks.remove(&key);
                shrink_when_sparse(&mut self.socks);
            }
            return;
        }
        if s.migrate.is_some() {
            if s.ops == 0 {
                let s = self.socks.remove(&key).expect("present");
                shrink_when_sparse(&mut self.socks);
                let (to, handoff) = s.migrate.expect("checked");
                cx.shared
                    .counters
                    .migrations
                    .fetch_add(1, Ordering::Relaxed);
                cx.shared.workers[to].push(Command::Adopt { fd: s.fd, handoff });
            }
            return;
        }
        if s.connect_addr.is_some() {
            return; // still connecting
        }
        let conn = ConnId(key);
        if s.send.is_none() {
            let zc_pays = s.zc_pays;
            let zc_min = cx.shared.zerocopy_min;
            let arena = cx.shared.arena.clone().filter(|_| self.fixed_arena);
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
            let mut op = self.spare_sends.pop().unwrap_or_default();
            let chunks = &mut op.chunks;
            if let Some(q) = cx.ep.tx_queue(conn).filter(|q| !q.is_empty()) {
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
            match op.chunks.as_slice() {
                [] => self.spare_sends.push(op),
                [one] if fixed(one) => {
                    let one = one.clone();
                    op.chunks.clear();
                    self.spare_sends.push(op);
                    self.submit_fixed_send(cx, key, one)
                }
                _ => self.submit_send(cx, key, op),
            }
        }
        let s = self.socks.get_mut(&key).expect("present");
        if matches!(s.recv, RecvState::Idle) && !cx.shutting_down {
            match cx.receive_gate(conn) {
                Gate::Open => {}
                // A completed send marks the socket dirty, which comes back here.
                Gate::Backlog => return,
                Gate::Throttled => {
                    self.held_back.push(key);
                    return;
                }
            }
            let s = self.socks.get_mut(&key).expect("present");
            let fd = s.fd.as_raw_fd();
            let entry = match cx.ep.lend_segment(conn) {
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
            cx.push(entry.user_data(user_data(KIND_RECV, key)));
        }
    }

    /// A zero-copy send straight from the registered arena (fixed buffer 0).
    fn submit_fixed_send(&mut self, cx: &mut Cx<'_>, key: u64, chunk: Bytes) {
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
            iov: Vec::new(),
            msg: None,
        });
        // The send's completion and its notification.
        s.ops += 2;
        cx.shared
            .counters
            .registered_sends
            .fetch_add(1, Ordering::Relaxed);
        cx.push(e);
    }

    /// Sends `op.chunks`; `op` is otherwise empty (fresh or spare).
    fn submit_send(&mut self, cx: &mut Cx<'_>, key: u64, op: SendOp) {
        let s = self.socks.get_mut(&key).expect("present");
        let SendOp {
            chunks,
            mut iov,
            msg,
        } = op;
        iov.clear();
        iov.extend(chunks.iter().map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        }));
        // SAFETY: an all-zero msghdr is valid; the fields we need are set below.
        let zeroed: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut msg = match msg {
            Some(mut m) => {
                *m = zeroed;
                m
            }
            None => Box::new(zeroed),
        };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        let zc_min = cx.shared.zerocopy_min;
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
            iov,
            msg: Some(msg),
        });
        s.ops += 1;
        cx.push(e);
    }

    fn complete_op(&mut self, cx: &mut Cx<'_>, ud: u64, res: i32, flags: u32) {
        let key = ud & KEY_MASK;
        let now = cx.now;
        match ud >> 56 {
            KIND_ACCEPT => self.accepted(cx, key as usize, res, flags),
            KIND_CONNECT => {
                let Some(s) = self.socks.get_mut(&key) else {
                    return;
                };
                s.ops -= 1;
                s.connect_addr = None;
                if s.closing.is_none() {
                    if res == 0 {
                        s.probe = ProbeIds::of(&s.fd);
                        s.probe.report(cx.ep, key);
                        cx.ep.on_connected(now, ConnId(key));
                    } else {
                        cx.ep.on_connect_failed(now, ConnId(key), -res);
                    }
                }
                self.mark_dirty(key);
            }
            KIND_RECV => self.received(cx, key, res, flags),
            KIND_SEND if cqueue::notif(flags) => {
                let Some(s) = self.socks.get_mut(&key) else {
                    return;
                };
                s.ops -= 1;
                s.zc_pending.pop_front();
                let counters = &cx.shared.counters;
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
                let mut op = s.send.take().expect("a send was in flight");
                if cqueue::more(flags) {
                    // Zero copy: the kernel still reads these buffers until the notification.
                    s.zc_pending.push_back(op.chunks.clone());
                }
                let live = s.closing.is_none();
                if res < 0 {
                    if live && s.migrate.is_none() {
                        cx.ep.on_closed(now, ConnId(key));
                    }
                } else {
                    let n = res as usize;
                    if let Some((_, handoff)) = s.migrate.as_mut() {
                        handoff.advance_tx(n);
                    } else if let Some(remaining) = s.closing.as_mut() {
                        // The last words before a close: resend what did not go out.
                        let mut left = n;
                        let mut rest: Vec<Bytes> = Vec::new();
                        for mut c in op.chunks.drain(..) {
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
                    } else if let Some(q) = cx.ep.tx_queue(ConnId(key)) {
                        q.advance(n.min(q.len()));
                    }
                }
                self.mark_dirty(key);
                if self.spare_sends.len() < SPARE_SENDS {
                    op.chunks.clear();
                    op.iov.clear();
                    self.spare_sends.push(op);
                }
            }
            _ => tracing::error!(ud, "completion for an unknown operation"),
        }
    }

    fn accepted(&mut self, cx: &mut Cx<'_>, i: usize, res: i32, flags: u32) {
        let Some(fd) = self.listeners.accepted(cx, i, res, flags) else {
            return;
        };
        let sock = Socket::from(fd);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let Some(peer) = peer else {
            return; // already gone
        };
        let now = cx.now;
        let cid = cx.ep.accept(now, peer);
        let sock = Sock::established(sock.into());
        sock.probe.report(cx.ep, cid.0);
        self.socks.insert(cid.0, sock);
        self.dirty.push(cid.0);
    }

    fn received(&mut self, cx: &mut Cx<'_>, key: u64, res: i32, flags: u32) {
        let now = cx.now;
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
                        cx.ep.on_input(now, conn, data);
                    }
                    self.bufs.recycle(bid);
                } else {
                    if let Some(bid) = bid {
                        self.bufs.recycle(bid);
                    }
                    // Out of pooled buffers: try again on the next pass.
                    if res != -libc::ENOBUFS && live {
                        cx.ep.on_closed(now, conn);
                    }
                }
            }
            RecvState::Direct(mut buf) => {
                if live {
                    let n = res.max(0) as usize;
                    // SAFETY: the kernel wrote `n` bytes right after the buffer's length, inside
                    // its capacity (the receive asked for at most the spare room it was given).
                    unsafe { buf.set_len(buf.len() + n) };
                    cx.ep.return_segment(now, conn, buf, n);
                    if res <= 0 {
                        cx.ep.on_closed(now, conn);
                    }
                }
            }
            RecvState::Idle => {}
        }
        self.mark_dirty(key);
    }
}

impl Transport for Tcp {
    fn connect(&mut self, cx: &mut Cx<'_>, conn: ConnId, addr: SocketAddr) {
        self.dial(cx, conn, addr);
    }

    fn wake(&mut self, conn: ConnId) {
        self.mark_dirty(conn.0);
    }

    fn close(&mut self, conn: ConnId, remaining: Vec<Bytes>) {
        if let Some(s) = self.socks.get_mut(&conn.0) {
            s.closing = Some(remaining);
            self.mark_dirty(conn.0);
        }
    }

    fn migrate(&mut self, conn: ConnId, to: usize, handoff: Box<Handoff>) {
        if let Some(s) = self.socks.get_mut(&conn.0) {
            s.migrate = Some((to, handoff));
            self.mark_dirty(conn.0);
        }
    }

    fn unthrottle(&mut self) {
        for key in std::mem::take(&mut self.held_back) {
            self.mark_dirty(key);
        }
    }

    fn progress(&mut self, cx: &mut Cx<'_>) -> bool {
        let mut i = 0;
        while i < self.lingering.len() {
            if self.lingering[i].0 <= cx.now {
                let (_, key) = self.lingering.swap_remove(i);
                self.mark_dirty(key);
            } else {
                i += 1;
            }
        }
        // Input reaches the endpoint in `complete`, never here.
        self.arm_dirty(cx);
        false
    }

    fn next_deadline(&self) -> Option<Time> {
        self.lingering.iter().map(|(t, _)| *t).min()
    }

    fn complete(&mut self, cx: &mut Cx<'_>, user_data: u64, res: i32, flags: u32) {
        self.complete_op(cx, user_data, res, flags);
    }

    fn shutdown(&mut self) {
        self.listeners.shutdown();
    }

    fn is_idle(&self) -> bool {
        self.socks.is_empty() && self.listeners.is_idle()
    }

    fn announce(&self, ep: &Endpoint) -> bool {
        let mut any = false;
        for (&conn, sock) in self.socks.iter() {
            if sock.probe.has_ports() {
                sock.probe.report(ep, conn);
                any = true;
            }
        }
        any
    }
}
