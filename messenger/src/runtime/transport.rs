//! What a worker asks of a transport. A transport owns the connections of one kind (TCP
//! sockets in `tcp.rs`, RC queue pairs in `rdma/`), starts ring operations for them and turns
//! their completions into endpoint input; the worker owns the ring, the endpoint, commands,
//! events and timers, and drives every transport through [`Transport`]. Whether a connection
//! may be read ([`Cx::receive_gate`]) is decided here, once for both.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::SockAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::os::fd::{AsRawFd, FromRawFd};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::Shared;
use crate::proto::{ConnId, Endpoint, Handoff, Time};

/// The worker's state a transport works with, borrowed for one call.
pub(crate) struct Cx<'a> {
    pub ring: &'a mut IoUring,
    pub ep: &'a mut Endpoint,
    pub shared: &'a Arc<Shared>,
    pub now: Time,
    pub shutting_down: bool,
}

/// Whether a connection may be read now. Both transports ask before each receive, so that
/// what holds a peer back is decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// Its unsent bytes are over `max_send_backlog`: read again when a send completes, so a
    /// peer that sends but never reads cannot make us buffer its replies without bound.
    Backlog,
    /// The dispatch throttle is full: read again on `Transport::unthrottle`.
    Throttled,
}

impl Cx<'_> {
    /// The [`Gate`] for reading `conn`, counted in the stall counters when closed.
    pub fn receive_gate(&mut self, conn: ConnId) -> Gate {
        let backlog = self.ep.tx_queue(conn).map_or(0, |q| q.len());
        let counters = &self.shared.counters;
        if backlog > self.shared.max_send_backlog {
            counters.backlog_stalls.fetch_add(1, Ordering::Relaxed);
            return Gate::Backlog;
        }
        if self.shared.throttle.as_ref().is_some_and(|t| t.over()) {
            counters.throttle_stalls.fetch_add(1, Ordering::Relaxed);
            return Gate::Throttled;
        }
        Gate::Open
    }

    /// Queues a ring operation (submitting first if the queue is full).
    pub fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every buffer an entry points to is owned by the transport (or the worker)
        // and outlives the operation: it is released only after the operation's completion.
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
            }
        }
    }
}

pub(crate) trait Transport {
    /// Opens a connection to `addr` for endpoint connection `conn`; its outcome reaches the
    /// endpoint as `on_connected` or `on_closed`.
    fn connect(&mut self, cx: &mut Cx<'_>, conn: ConnId, addr: SocketAddr);
    /// `conn` has bytes queued, or may receive again.
    fn wake(&mut self, conn: ConnId);
    /// Writes `remaining`, then closes `conn`.
    fn close(&mut self, conn: ConnId, remaining: Vec<Bytes>);
    /// Hands `conn` to worker `to` once its operations have completed.
    fn migrate(&mut self, conn: ConnId, to: usize, handoff: Box<Handoff>);
    /// Receives held back by the dispatch throttle may go again.
    fn unthrottle(&mut self);
    /// Starts the ring operations that woken connections need; true if it fed the endpoint
    /// input (whose output the worker must then handle before sleeping).
    fn progress(&mut self, cx: &mut Cx<'_>) -> bool;
    /// A completion of one of this transport's operations.
    fn complete(&mut self, cx: &mut Cx<'_>, user_data: u64, res: i32, flags: u32);
    /// Stops accepting new connections.
    fn shutdown(&mut self);
    /// No connection and no operation left.
    fn is_idle(&self) -> bool;
    /// Reports every established connection to the `ringwire_conn_socket` probe (called once
    /// a second, so a tracer attached late learns them); false when there was none.
    fn announce(&self, ep: &Endpoint) -> bool;
    /// When `progress` has timed work to do (the worker wakes by then).
    fn next_deadline(&self) -> Option<Time> {
        None
    }
    /// Polls for completions for a bounded time before the worker sleeps; true if any came.
    fn busy_poll(&mut self, _cx: &mut Cx<'_>) -> bool {
        false
    }
}

/// What the `ringwire_conn_socket` probe reports of a socket, read once when it is established.
#[derive(Default)]
pub(crate) struct ProbeIds {
    /// local << 16 | peer
    ports: u32,
    /// IPv6, or IPv4 mapped into it.
    peer_ip: [u8; 16],
}

impl ProbeIds {
    pub fn of(fd: &OwnedFd) -> Self {
        if !cfg!(feature = "probes") {
            // Nothing to report to; without ports `announce` never wakes the worker either.
            return ProbeIds::default();
        }
        let sock = socket2::SockRef::from(fd);
        let addr = |a: io::Result<SockAddr>| a.ok().and_then(|a| a.as_socket());
        let local = addr(sock.local_addr());
        let peer = addr(sock.peer_addr());
        let ip = |a: SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        ProbeIds {
            ports: (local.map_or(0, |a| a.port()) as u32) << 16
                | peer.map_or(0, |a| a.port()) as u32,
            peer_ip: peer.map(ip).unwrap_or_default(),
        }
    }

    pub fn has_ports(&self) -> bool {
        self.ports != 0
    }

    pub fn report(&self, ep: &Endpoint, conn: u64) {
        let (session, info, counters) = ep.probe_info(ConnId(conn)).unwrap_or_default();
        crate::proto::hooks::ringwire_conn_socket(
            conn,
            session,
            info,
            self.ports,
            self.peer_ip.as_ptr(),
            counters.as_ref().map_or(std::ptr::null(), |c| c),
        );
    }
}

pub(super) const KEY_MASK: u64 = (1 << 56) - 1;

/// A ring operation's user data: its kind (top byte) and a key.
pub(super) fn user_data(kind: u64, key: u64) -> u64 {
    (kind << 56) | (key & KEY_MASK)
}

/// Listening sockets, each with a multishot accept armed on the worker's ring.
pub(crate) struct Listeners {
    fds: Vec<OwnedFd>,
    armed: usize,
    /// The operation kind of the accepts (the key is the listener's index).
    kind: u64,
    worker: usize,
}

impl Listeners {
    pub fn new(cx: &mut Cx<'_>, fds: Vec<OwnedFd>, kind: u64, worker: usize) -> Self {
        let mut l = Listeners {
            fds,
            armed: 0,
            kind,
            worker,
        };
        for i in 0..l.fds.len() {
            l.arm(cx, i);
        }
        l
    }

    fn arm(&mut self, cx: &mut Cx<'_>, i: usize) {
        let e = opcode::AcceptMulti::new(types::Fd(self.fds[i].as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(self.kind, i as u64));
        cx.push(e);
        self.armed += 1;
    }

    /// An accept completion of listener `i`: the new socket, unless the accept failed or
    /// the worker is shutting down. Re-arms the accept when the kernel ended it.
    pub fn accepted(&mut self, cx: &mut Cx<'_>, i: usize, res: i32, flags: u32) -> Option<OwnedFd> {
        if !cqueue::more(flags) {
            self.armed -= 1;
            if !cx.shutting_down {
                self.arm(cx, i);
            }
        }
        if res < 0 {
            if !cx.shutting_down {
                tracing::warn!(
                    worker = self.worker,
                    "accept: {}",
                    io::Error::from_raw_os_error(-res)
                );
            }
            return None;
        }
        // SAFETY: a fresh descriptor from accept, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        (!cx.shutting_down).then_some(fd)
    }

    /// Wakes the multishot accepts; they complete and are not re-armed.
    pub fn shutdown(&self) {
        for l in &self.fds {
            // SAFETY: plain syscall on a descriptor we own.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    pub fn is_idle(&self) -> bool {
        self.armed == 0
    }
}
