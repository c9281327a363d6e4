//! The RDMA transport: msgr2's byte stream over RC queue pairs, driven by the same worker
//! loop and protocol core as TCP.
//!
//! - Setup: a TCP side channel carries each side's [`Hello`] (queue pair number, PSN, LID,
//!   GID, credits, buffer size); the client then sends one READY byte. The side channel stays
//!   open for the connection's life, so a peer that dies is noticed even while idle.
//! - Memory: each worker registers one region once: send buffers shared by its connections
//!   and `credits` receive buffers per connection. Nothing grows with load.
//! - Send: a SEND carries a [`Header`] and stream bytes, copied into a send buffer when small
//!   or gathered straight from the registered payload arena. A chunk of at least
//!   `read_min` bytes is not sent: a READ descriptor goes instead and the receiver pulls the
//!   bytes with one RDMA READ straight into the segment buffer its decoder lends (the buffer
//!   that becomes the message payload), so a 4 MiB payload crosses without a copy.
//! - Flow control: one credit per receive buffer; returned on every record or in an update
//!   (see [`record::Credits`]); no SEND is ever posted without a buffer for it.
//! - Completions: one CQ per worker; its completion channel fd is a multishot poll on the
//!   worker's io_uring, and the CQ is also polled on every pass of the loop.

mod ibv;
mod record;
mod verbs;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

pub(super) use self::record::HELLO_LEN;
use self::record::{Body, Credits, Header, Hello, HEADER_LEN, READY};
use self::verbs::{Device, MemoryRegion, Qp};
use super::transport::{user_data, Cx, Gate, Listeners, ProbeIds, Transport, KEY_MASK};
use super::Command;
use crate::proto::endpoint::IdMap;
use crate::proto::frame::TxQueue;
use crate::proto::{ConnId, Endpoint, Handoff};
use crate::Error;

const KIND_ACCEPT: u64 = 0x10;
const KIND_DIAL: u64 = 0x11;
const KIND_SIDE_SEND: u64 = 0x12;
const KIND_SIDE_RECV: u64 = 0x13;
const KIND_CQ: u64 = 0x14;
/// The timeout linked to a side-channel receive during setup.
const KIND_SIDE_TIMEOUT: u64 = 0x15;

/// Whether a ring operation kind is this transport's.
pub(super) fn owns_kind(kind: u64) -> bool {
    (KIND_ACCEPT..=KIND_SIDE_TIMEOUT).contains(&kind)
}

/// Scatter-gather entries per SEND: the header's buffer and arena payloads between copies.
pub(super) const MAX_SGE: usize = 8;
/// A READ not landing in a lent segment buffer goes through a buffer of at most this size.
const BOUNCE_MAX: u32 = 256 << 10;
const WC_BATCH: usize = 64;

const WR_RECV: u64 = 1;
const WR_SEND: u64 = 2;
const WR_READ: u64 = 3;

/// Work request ids: kind (4 bits), connection slot (28), buffer slot (32).
fn wr_id(kind: u64, conn: usize, slot: u32) -> u64 {
    kind << 60 | (conn as u64) << 32 | slot as u64
}

fn split_wr_id(id: u64) -> (u64, usize, u32) {
    (id >> 60, ((id >> 32) & 0x0fff_ffff) as usize, id as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client: the side channel's TCP connect is in flight.
    Dialing,
    /// Hellos crossing.
    Hello,
    /// Server: its queue pair is ready; waiting for the client's READY.
    AwaitReady,
    /// Client: READY is on its way.
    SendReady,
    Up,
    /// Torn down: waiting for work requests and side-channel operations to finish.
    Closing,
}

/// Where a READ lands.
enum Target {
    /// The decoder's segment buffer (the payload): no copy.
    Lent(BytesMut),
    /// Anything else (a paused connection): a bounce buffer fed to the decoder.
    Bounce(Vec<u8>),
}

struct Reading {
    // Dropped before the target: the registration covers the target's memory.
    _mr: Arc<MemoryRegion>,
    target: Target,
    len: usize,
}

/// A chunk of ours the peer is READing: kept (and registered) until it says it is done.
struct Exposed {
    _mr: Option<Arc<MemoryRegion>>,
    _chunk: Bytes,
}

struct Conn {
    /// The endpoint's connection (a server learns it when READY arrives); None after the
    /// endpoint closed or handed it away.
    cid: Option<ConnId>,
    /// The endpoint asked us to close: these bytes go out first.
    closing: Option<TxQueue>,
    side: OwnedFd,
    peer_socket: Option<SocketAddr>,
    phase: Phase,
    dial_addr: Option<Box<SockAddr>>,
    hello_out: Box<[u8; HELLO_LEN]>,
    hello_in: Box<[u8; HELLO_LEN]>,
    byte_in: Box<[u8; 1]>,
    byte_out: Box<[u8; 1]>,
    /// How long a setup step may wait for the peer (the kernel reads it at submission).
    setup_timeout: Box<types::Timespec>,
    side_ops: u32,
    qp: Option<Qp>,
    peer: Option<Hello>,
    credits: Credits,
    /// Received records not consumed yet: (receive slot, length).
    arrived: VecDeque<(u32, u32)>,
    /// The READ descriptor being pulled: next remote address, rkey, bytes left.
    read_desc: Option<(u64, u32, u32)>,
    reading: Option<Reading>,
    exposed: VecDeque<Exposed>,
    reads_done_owed: u16,
    /// Per posted SEND, in order: its send slot and the payloads it gathers.
    sends: VecDeque<(u32, Vec<Bytes>)>,
    /// Work requests posted and not completed.
    wrs: u32,
    /// Data waited for credits since the last SEND (counted once per wait).
    starved: bool,
    dirty: bool,
    probe: ProbeIds,
}

pub(crate) struct Rdma {
    index: usize,
    dev: Option<Device>,
    /// Why the device could not be opened (said once, then every RDMA connect fails).
    dev_error: Option<String>,
    listeners: Option<Listeners>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    by_cid: IdMap<u64, usize>,
    free_send: Vec<u32>,
    dirty: Vec<usize>,
    held_back: Vec<usize>,
    /// Connections that found no free send buffer: woken when one is released.
    send_waiters: Vec<usize>,
    wcs: Vec<ibv::ibv_wc>,
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Rdma {
    /// A transport listening on `listeners` (side channels); the device is opened now when
    /// there are listeners (a bad setup fails the messenger's start), else on first use.
    pub(crate) fn new(
        cx: &mut Cx<'_>,
        index: usize,
        listeners: Vec<OwnedFd>,
    ) -> Result<Rdma, Error> {
        let mut r = Rdma {
            index,
            dev: None,
            dev_error: None,
            listeners: None,
            conns: Vec::new(),
            free_conns: Vec::new(),
            by_cid: IdMap::default(),
            free_send: Vec::new(),
            dirty: Vec::new(),
            held_back: Vec::new(),
            send_waiters: Vec::new(),
            wcs: Vec::with_capacity(WC_BATCH),
        };
        if !listeners.is_empty() {
            r.open(cx)?;
            r.listeners = Some(Listeners::new(cx, listeners, KIND_ACCEPT, index));
        }
        Ok(r)
    }

    fn open(&mut self, cx: &mut Cx<'_>) -> Result<(), Error> {
        if self.dev.is_some() {
            return Ok(());
        }
        if let Some(e) = &self.dev_error {
            return Err(Error::Rdma(e.clone()));
        }
        let o = &cx.shared.rdma;
        let slots = o.send_buffers + o.max_connections * o.credits as usize;
        let cqe = (slots + 2 * o.max_connections + 16) as u32;
        match Device::open(o, slots, cx.shared.arena.as_deref(), cqe) {
            Ok(dev) => {
                tracing::info!(
                    worker = self.index,
                    device = %dev.name,
                    gid_index = dev.gid_index,
                    region_kib = dev.region.len() / 1024,
                    "RDMA device open"
                );
                self.free_send = (0..o.send_buffers as u32).rev().collect();
                self.conns = (0..o.max_connections).map(|_| None).collect();
                self.free_conns = (0..o.max_connections).rev().collect();
                self.dev = Some(dev);
                self.arm_cq(cx);
                Ok(())
            }
            Err(e) => {
                if let Error::Rdma(msg) = &e {
                    self.dev_error = Some(msg.clone());
                }
                Err(e)
            }
        }
    }

    fn arm_cq(&mut self, cx: &mut Cx<'_>) {
        let Some(dev) = &self.dev else { return };
        let e = opcode::PollAdd::new(types::Fd(dev.channel_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_CQ, 0));
        cx.push(e);
    }

    /// Whether endpoint connection `conn` is one of ours.
    pub(crate) fn owns(&self, conn: ConnId) -> bool {
        self.by_cid.contains_key(&conn.0)
    }

    fn conn(&mut self, i: usize) -> &mut Conn {
        self.conns[i].as_mut().expect("live connection slot")
    }

    fn mark_dirty(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(i);
            }
        }
    }

    /// Takes a connection slot for a new side channel; None when the worker is full.
    fn add(
        &mut self,
        side: OwnedFd,
        phase: Phase,
        cid: Option<ConnId>,
        setup_timeout: std::time::Duration,
    ) -> Option<usize> {
        let i = self.free_conns.pop()?;
        self.conns[i] = Some(Conn {
            cid,
            closing: None,
            side,
            peer_socket: None,
            phase,
            dial_addr: None,
            hello_out: Box::new([0; HELLO_LEN]),
            hello_in: Box::new([0; HELLO_LEN]),
            byte_in: Box::new([0]),
            byte_out: Box::new([READY]),
            setup_timeout: Box::new(types::Timespec::from(setup_timeout)),
            side_ops: 0,
            qp: None,
            peer: None,
            credits: Credits::new(0),
            arrived: VecDeque::new(),
            read_desc: None,
            reading: None,
            exposed: VecDeque::new(),
            reads_done_owed: 0,
            sends: VecDeque::new(),
            wrs: 0,
            starved: false,
            dirty: false,
            probe: ProbeIds::default(),
        });
        if let Some(cid) = cid {
            self.by_cid.insert(cid.0, i);
        }
        Some(i)
    }

    fn side_send(&mut self, cx: &mut Cx<'_>, i: usize, hello: bool) {
        let c = self.conn(i);
        let (ptr, len) = if hello {
            (c.hello_out.as_ptr(), HELLO_LEN as u32)
        } else {
            (c.byte_out.as_ptr(), 1)
        };
        let e = opcode::Send::new(types::Fd(c.side.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(KIND_SIDE_SEND, i as u64));
        c.side_ops += 1;
        cx.push(e);
    }

    fn side_recv(&mut self, cx: &mut Cx<'_>, i: usize, hello: bool) {
        let c = self.conn(i);
        let (ptr, len) = if hello {
            (c.hello_in.as_mut_ptr(), HELLO_LEN as u32)
        } else {
            (c.byte_in.as_mut_ptr(), 1)
        };
        let e = opcode::Recv::new(types::Fd(c.side.as_raw_fd()), ptr, len)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(user_data(KIND_SIDE_RECV, i as u64));
        c.side_ops += 1;
        if c.phase == Phase::Up {
            return cx.push(e);
        }
        // During setup a silent peer must not hold a connection slot: the receive is
        // cancelled (-ECANCELED) after the handshake timeout.
        cx.push(e.flags(squeue::Flags::IO_LINK));
        let t = opcode::LinkTimeout::new(&*c.setup_timeout)
            .build()
            .user_data(user_data(KIND_SIDE_TIMEOUT, i as u64));
        cx.push(t);
    }

    /// A new queue pair for connection `i`, its receive buffers posted.
    fn create_qp(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let credits = cx.shared.rdma.credits;
        let send_buffers = cx.shared.rdma.send_buffers as u32;
        let dev = self.dev.as_ref().expect("device open");
        let mut qp = dev.create_qp(credits as u32).map_err(|e| e.to_string())?;
        let region = &dev.region;
        for k in 0..credits as u32 {
            let slot = send_buffers + i as u32 * credits as u32 + k;
            qp.post_recv(
                wr_id(WR_RECV, i, slot),
                region.slot_ptr(slot),
                region.slot as u32,
                region.mr.lkey(),
            )
            .map_err(|e| format!("posting receives: {e}"))?;
        }
        let c = self.conns[i].as_mut().expect("live");
        c.wrs += credits as u32;
        c.qp = Some(qp);
        Ok(())
    }

    /// The peer's hello arrived on connection `i`.
    fn on_hello(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let c = self.conn(i);
        let peer = Hello::decode(&c.hello_in).map_err(|e| e.to_string())?;
        let client = c.cid.is_some();
        if !client {
            let count = cx.shared.workers.len() as u64;
            let owner = (peer.placement % count.max(1)) as usize;
            if owner != self.index {
                // Hand the side channel to the worker that will own the session, before any
                // queue pair exists here.
                let c = self.conns[i].take().expect("live");
                self.free_conns.push(i);
                bump(&cx.shared.counters.migrations, 1);
                cx.shared.workers[owner].push(Command::AdoptRdma {
                    fd: c.side,
                    hello: c.hello_in,
                });
                return Ok(());
            }
            self.create_qp(cx, i)?;
        }
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        let qp = c.qp.as_mut().expect("created");
        dev.connect_qp(qp, &peer).map_err(|e| e.to_string())?;
        c.credits = Credits::new(peer.credits.min(verbs::SEND_DEPTH as u16 - 2));
        c.peer = Some(peer);
        if client {
            c.phase = Phase::SendReady;
            self.side_send(cx, i, false);
        } else {
            *c.hello_out = dev.hello(qp, cx.shared.rdma.credits, 0).encode();
            c.phase = Phase::AwaitReady;
            self.side_send(cx, i, true);
            self.side_recv(cx, i, false);
        }
        Ok(())
    }

    /// Connection `i` can carry msgr2 now.
    fn up(&mut self, cx: &mut Cx<'_>, i: usize) {
        let now = cx.now;
        let c = self.conn(i);
        c.phase = Phase::Up;
        c.probe = ProbeIds::of(&c.side);
        match c.cid {
            Some(cid) => {
                c.probe.report(cx.ep, cid.0);
                cx.ep.on_connected(now, cid);
            }
            None => {
                let peer = c.peer_socket.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                let cid = cx.ep.accept(now, peer);
                c.cid = Some(cid);
                c.probe.report(cx.ep, cid.0);
                self.by_cid.insert(cid.0, i);
            }
        }
        // Any byte or end of stream from now on means the peer is gone.
        self.side_recv(cx, i, false);
        self.mark_dirty(i);
    }

    /// Connection `i` failed: the endpoint hears it once; the queue pair is flushed and
    /// everything is released when its work requests have completed.
    fn fail(&mut self, cx: &mut Cx<'_>, i: usize, why: &str) {
        let now = cx.now;
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.phase == Phase::Closing {
            return;
        }
        tracing::debug!(worker = self.index, conn = ?c.cid, "RDMA connection down: {why}");
        if let Some(cid) = c.cid.take() {
            self.by_cid.remove(&cid.0);
            if c.closing.is_none() {
                cx.ep.on_closed(now, cid);
            }
        }
        self.teardown(i);
    }

    fn teardown(&mut self, i: usize) {
        let c = self.conn(i);
        c.phase = Phase::Closing;
        if let Some(qp) = c.qp.as_mut() {
            qp.fail();
        }
        // SAFETY: plain syscall on a descriptor we own; completes its pending operations.
        unsafe { libc::shutdown(c.side.as_raw_fd(), libc::SHUT_RDWR) };
        self.mark_dirty(i);
    }

    /// A send buffer is free again: connections that waited for one go on.
    fn release_send(&mut self, slot: u32) {
        self.free_send.push(slot);
        for i in std::mem::take(&mut self.send_waiters) {
            self.mark_dirty(i);
        }
    }

    /// Frees connection `i` once nothing refers to its buffers any more.
    fn reap(&mut self, i: usize) {
        let Some(c) = self.conns.get(i).and_then(|c| c.as_ref()) else {
            return;
        };
        if c.phase == Phase::Closing && c.wrs == 0 && c.side_ops == 0 {
            let c = self.conns[i].take().expect("live");
            for (slot, _) in c.sends {
                self.release_send(slot);
            }
            if let Some(cid) = c.cid {
                self.by_cid.remove(&cid.0);
            }
            self.free_conns.push(i);
        }
    }

    fn complete_side(&mut self, cx: &mut Cx<'_>, kind: u64, i: usize, res: i32) {
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return;
        };
        c.side_ops -= 1;
        if c.phase == Phase::Closing {
            return self.reap(i);
        }
        let phase = c.phase;
        let step = match (kind, phase) {
            (KIND_DIAL, Phase::Dialing) if res == 0 => {
                c.dial_addr = None;
                self.dialed(cx, i)
            }
            (KIND_DIAL, _) => Err(format!("connect: {}", io::Error::from_raw_os_error(-res))),
            (KIND_SIDE_SEND, _) if res < 0 => Err(format!(
                "side channel: {}",
                io::Error::from_raw_os_error(-res)
            )),
            (KIND_SIDE_SEND, Phase::SendReady) => {
                self.up(cx, i);
                Ok(())
            }
            (KIND_SIDE_SEND, _) => Ok(()),
            (KIND_SIDE_RECV, Phase::Hello) if res == HELLO_LEN as i32 => self.on_hello(cx, i),
            (KIND_SIDE_RECV, Phase::AwaitReady) if res == 1 && c.byte_in[0] == READY => {
                self.up(cx, i);
                Ok(())
            }
            (KIND_SIDE_RECV, Phase::Up) => {
                // The peer closes its side channel only after its last SENDs completed, so
                // they are in our CQ: take them in before reporting the close.
                self.poll_cq(cx);
                self.step(cx, i);
                Err(match res {
                    0 => "side channel closed by the peer".to_string(),
                    r if r < 0 => format!("side channel: {}", io::Error::from_raw_os_error(-r)),
                    _ => "unexpected bytes on the side channel".to_string(),
                })
            }
            (KIND_SIDE_RECV, _) => Err(match res {
                0 => "side channel closed by the peer".to_string(),
                r if r == -libc::ECANCELED => {
                    format!("no RDMA setup from the peer in {phase:?} within the handshake timeout")
                }
                r if r < 0 => format!("side channel: {}", io::Error::from_raw_os_error(-r)),
                _ => format!("unexpected bytes on the side channel in {phase:?}"),
            }),
            _ => Ok(()),
        };
        if let Err(why) = step {
            self.fail(cx, i, &why);
            self.reap(i);
        }
    }

    /// Client: the side channel is connected; create the queue pair and say hello.
    fn dialed(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        self.create_qp(cx, i)?;
        let c = self.conns[i].as_mut().expect("live");
        let local_ip = socket2::SockRef::from(&c.side)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip())
            .ok_or("side channel has no local address")?;
        let placement = cx.ep.placement_hint(local_ip);
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        *c.hello_out = dev
            .hello(
                c.qp.as_ref().expect("created"),
                cx.shared.rdma.credits,
                placement,
            )
            .encode();
        c.phase = Phase::Hello;
        self.side_send(cx, i, true);
        self.side_recv(cx, i, true);
        Ok(())
    }

    fn accepted(&mut self, cx: &mut Cx<'_>, l: usize, res: i32, flags: u32) {
        let Some(listeners) = self.listeners.as_mut() else {
            return;
        };
        let Some(fd) = listeners.accepted(cx, l, res, flags) else {
            return;
        };
        self.adopt(cx, fd, None);
    }

    /// A side channel accepted here or by another worker (`hello`: already received there).
    pub(crate) fn adopt(
        &mut self,
        cx: &mut Cx<'_>,
        fd: OwnedFd,
        hello: Option<Box<[u8; HELLO_LEN]>>,
    ) {
        if let Err(e) = self.open(cx) {
            tracing::warn!(worker = self.index, "refusing an RDMA connection: {e}");
            return;
        }
        let sock = Socket::from(fd);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let timeout = cx.ep.config().tuning.handshake_timeout;
        let Some(i) = self.add(sock.into(), Phase::Hello, None, timeout) else {
            tracing::warn!(
                worker = self.index,
                max = cx.shared.rdma.max_connections,
                "refusing an RDMA connection: RdmaOptions::max_connections reached on this worker"
            );
            return;
        };
        self.conn(i).peer_socket = peer;
        match hello {
            Some(h) => {
                *self.conn(i).hello_in = *h;
                if let Err(why) = self.on_hello(cx, i) {
                    self.fail(cx, i, &why);
                    self.reap(i);
                }
            }
            None => self.side_recv(cx, i, true),
        }
    }

    fn dial(&mut self, cx: &mut Cx<'_>, cid: ConnId, addr: SocketAddr) {
        let now = cx.now;
        if let Err(e) = self.open(cx) {
            tracing::warn!(worker = self.index, %addr, "cannot connect over RDMA: {e}");
            cx.ep.on_closed(now, cid);
            return;
        }
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)
            .and_then(|s| s.set_tcp_nodelay(true).map(|_| s));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(worker = self.index, %addr, "cannot create socket: {e}");
                cx.ep.on_closed(now, cid);
                return;
            }
        };
        let timeout = cx.ep.config().tuning.handshake_timeout;
        let Some(i) = self.add(socket.into(), Phase::Dialing, Some(cid), timeout) else {
            tracing::warn!(
                worker = self.index,
                %addr,
                "cannot connect over RDMA: RdmaOptions::max_connections reached on this worker"
            );
            cx.ep.on_closed(now, cid);
            return;
        };
        let sa = Box::new(SockAddr::from(addr));
        let c = self.conn(i);
        let e = opcode::Connect::new(
            types::Fd(c.side.as_raw_fd()),
            sa.as_ptr() as *const libc::sockaddr,
            sa.len(),
        )
        .build()
        .user_data(user_data(KIND_DIAL, i as u64));
        c.dial_addr = Some(sa);
        c.peer_socket = Some(addr);
        c.side_ops += 1;
        cx.push(e);
    }

    /// Polls the CQ dry.
    fn poll_cq(&mut self, cx: &mut Cx<'_>) -> bool {
        let mut wcs = std::mem::take(&mut self.wcs);
        let mut any = false;
        while self.dev.as_ref().map_or(0, |d| d.poll(&mut wcs)) > 0 {
            any = true;
            bump(&cx.shared.counters.rdma_cq_polls, 1);
            for wc in wcs.iter() {
                self.completion(cx, wc.wr_id, wc.status, wc.byte_len);
            }
        }
        self.wcs = wcs;
        any
    }

    fn completion(&mut self, cx: &mut Cx<'_>, id: u64, status: u32, byte_len: u32) {
        let (kind, i, slot) = split_wr_id(id);
        let now = cx.now;
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            tracing::error!(worker = self.index, id, "completion for no connection");
            return;
        };
        c.wrs -= 1;
        match kind {
            WR_SEND => {
                if let Some((s, _held)) = c.sends.pop_front() {
                    debug_assert_eq!(s, slot);
                    self.release_send(s);
                }
            }
            WR_READ => {
                let r = c.reading.take();
                if status == ibv::IBV_WC_SUCCESS {
                    let r = r.expect("a READ was in flight");
                    let counters = &cx.shared.counters;
                    bump(&counters.rdma_read_bytes, r.len as u64);
                    let Reading { _mr, target, len } = r;
                    drop(_mr);
                    if let Some(cid) = c.cid.filter(|_| c.closing.is_none()) {
                        match target {
                            Target::Lent(mut buf) => {
                                // SAFETY: the READ wrote `len` bytes into the spare capacity.
                                unsafe { buf.set_len(buf.len() + len) };
                                cx.ep.return_segment(now, cid, buf, len);
                            }
                            Target::Bounce(mut v) => {
                                // SAFETY: as above.
                                unsafe { v.set_len(len) };
                                bump(&counters.rdma_copied_bytes, len as u64);
                                cx.ep.on_input(now, cid, &v);
                            }
                        }
                    }
                    let c = self.conn(i);
                    if c.read_desc.is_some_and(|(_, _, left)| left == 0) {
                        c.read_desc = None;
                        c.reads_done_owed += 1;
                    }
                }
            }
            _ => {
                if status == ibv::IBV_WC_SUCCESS {
                    c.arrived.push_back((slot, byte_len));
                }
            }
        }
        if status != ibv::IBV_WC_SUCCESS {
            if status != ibv::IBV_WC_WR_FLUSH_ERR {
                bump(&cx.shared.counters.rdma_errors, 1);
                let what = match kind {
                    WR_SEND => "SEND",
                    WR_READ => "READ",
                    _ => "RECV",
                };
                tracing::warn!(
                    worker = self.index,
                    "RDMA {what} failed: {}",
                    verbs::status_str(status)
                );
            }
            self.fail(cx, i, "work request failed");
        }
        self.mark_dirty(i);
    }

    /// Feeds the records that arrived on connection `i` to the endpoint, in order, until one
    /// needs a READ or the dispatch throttle says stop.
    fn consume(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let now = cx.now;
        loop {
            self.next_read(cx, i)?;
            let c = self.conn(i);
            if c.reading.is_some() || c.read_desc.is_some() {
                return Ok(());
            }
            let Some(&(slot, len)) = c.arrived.front() else {
                return Ok(());
            };
            let Some(cid) = c.cid else { return Ok(()) };
            match cx.receive_gate(cid) {
                Gate::Open => {}
                Gate::Backlog => return Ok(()), // resumed when a SEND completes
                Gate::Throttled => {
                    self.held_back.push(i);
                    return Ok(());
                }
            }
            let dev = self.dev.as_ref().expect("device open");
            let bytes = dev.region.slot_bytes(slot, len as usize);
            let (h, data) = Header::decode(bytes).map_err(|e| e.to_string())?;
            let c = self.conns[i].as_mut().expect("live");
            c.credits.returned(h.credits).map_err(|e| e.to_string())?;
            if h.reads_done as usize > c.exposed.len() {
                return Err(record::RecordError::TooManyReads {
                    acked: h.reads_done as u32,
                    outstanding: c.exposed.len() as u32,
                }
                .to_string());
            }
            c.exposed.drain(..h.reads_done as usize);
            match h.body {
                Body::Data if !data.is_empty() => {
                    bump(&cx.shared.counters.rdma_copied_bytes, data.len() as u64);
                    cx.ep.on_input(now, cid, data);
                }
                Body::Read { addr, rkey, len } => c.read_desc = Some((addr, rkey, len)),
                _ => {}
            }
            let c = self.conns[i].as_mut().expect("live");
            c.arrived.pop_front();
            let every = cx.shared.rdma.inject_qp_failures;
            if every > 0 && (super::random_u64() % every as u64) == 0 {
                bump(&cx.shared.counters.injected_faults, 1);
                c.qp.as_mut().expect("up").fail();
                return Ok(()); // its work requests now complete flushed: the connection faults
            }
            let qp = c.qp.as_mut().expect("up");
            qp.post_recv(
                wr_id(WR_RECV, i, slot),
                dev.region.slot_ptr(slot),
                dev.region.slot as u32,
                dev.region.mr.lkey(),
            )
            .map_err(|e| format!("reposting a receive: {e}"))?;
            c.wrs += 1;
            c.credits.reposted();
            if c.cid.is_none() || c.phase != Phase::Up {
                return Ok(()); // the endpoint closed it while consuming
            }
        }
    }

    /// Starts the next READ of the current descriptor, into the decoder's lent segment
    /// buffer when it has one.
    fn next_read(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let c = self.conns[i].as_mut().expect("live");
        let (Some((addr, rkey, left)), None, Some(cid)) = (c.read_desc, &c.reading, c.cid) else {
            return Ok(());
        };
        if left == 0 {
            c.read_desc = None;
            c.reads_done_owed += 1;
            return Ok(());
        }
        let dev = self.dev.as_ref().expect("device open");
        let (target, dst, n) = match cx.ep.lend_segment(cid) {
            Some((mut buf, want)) => {
                let n = (want as u32).min(left) as usize;
                // SAFETY: within the spare capacity (len + want <= capacity).
                let dst = unsafe { buf.as_mut_ptr().add(buf.len()) };
                (Target::Lent(buf), dst, n)
            }
            None => {
                let n = left.min(BOUNCE_MAX) as usize;
                let mut v = Vec::with_capacity(n);
                let dst = v.as_mut_ptr();
                (Target::Bounce(v), dst, n)
            }
        };
        // SAFETY: the target is kept in `reading` until the READ completes.
        let mr = unsafe { dev.register(dst, n, false) }?;
        bump(&cx.shared.counters.rdma_registrations, 1);
        let sge = ibv::ibv_sge {
            addr: dst as u64,
            length: n as u32,
            lkey: mr.lkey(),
        };
        let c = self.conns[i].as_mut().expect("live");
        c.qp.as_mut()
            .expect("up")
            .post_read(wr_id(WR_READ, i, 0), sge, addr, rkey)
            .map_err(|e| format!("posting a READ: {e}"))?;
        c.wrs += 1;
        c.read_desc = Some((addr + n as u64, rkey, left - n as u32));
        c.reading = Some(Reading {
            _mr: mr,
            target,
            len: n,
        });
        Ok(())
    }

    /// Posts SENDs for connection `i`'s queued bytes while credits and send buffers last,
    /// then a credit update if one is due.
    fn flush(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let c = self.conns[i].as_mut().expect("live");
        let mut closing = c.closing.take();
        let result = self.flush_from(cx, i, &mut closing);
        let c = self.conns[i].as_mut().expect("live");
        let drained = closing.as_ref().is_some_and(|q| q.is_empty()) && c.sends.is_empty();
        c.closing = closing;
        if drained {
            // The endpoint's last words are out: now close.
            self.teardown(i);
        }
        result
    }

    fn flush_from(
        &mut self,
        cx: &mut Cx<'_>,
        i: usize,
        closing: &mut Option<TxQueue>,
    ) -> Result<(), String> {
        let o = &cx.shared.rdma;
        let (read_min, our_credits) = (o.read_min, o.credits);
        let counters = &cx.shared.counters;
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        // A SEND fills at most the peer's receive buffer, and our send buffer.
        let record_max = (c.peer.as_ref().expect("up").buffer_size as usize).min(dev.region.slot);
        let queue = match closing.as_mut() {
            Some(q) => Some(q),
            None => c.cid.and_then(|cid| cx.ep.tx_queue(cid)),
        };
        let Some(q) = queue else { return Ok(()) };
        let lkey = dev.region.mr.lkey();
        // Payloads in the registered arena go out from where they are.
        let arena = cx
            .shared
            .arena
            .as_deref()
            .zip(dev.arena_mr.as_ref())
            .map(|(a, mr)| (a, mr.lkey(), mr.rkey()));
        let in_arena = |c: &Bytes| arena.filter(|(a, _, _)| a.contains(c.as_ptr(), c.len()));
        let mut sent_any = false;
        loop {
            let Some(first) = q.chunks().next().cloned() else {
                break;
            };
            if !c.credits.can_send_data() {
                if !c.starved {
                    c.starved = true;
                    bump(&counters.rdma_credit_waits, 1);
                }
                break;
            }
            let Some(slot) = self.free_send.pop() else {
                self.send_waiters.push(i);
                break;
            };
            c.starved = false;
            let base = dev.region.slot_ptr(slot);
            let mut held = Vec::new();
            let (body, consumed, mut sges) = if first.len() >= read_min {
                // Not sent: the peer READs it in place.
                let rkey = match in_arena(&first) {
                    Some((_, _, rkey)) => {
                        c.exposed.push_back(Exposed {
                            _mr: None,
                            _chunk: first.clone(),
                        });
                        rkey
                    }
                    None => {
                        // SAFETY: the chunk is kept in `exposed` with its registration.
                        let mr = unsafe { dev.register(first.as_ptr(), first.len(), true) }?;
                        bump(&counters.rdma_registrations, 1);
                        let rkey = mr.rkey();
                        c.exposed.push_back(Exposed {
                            _mr: Some(mr),
                            _chunk: first.clone(),
                        });
                        rkey
                    }
                };
                let body = Body::Read {
                    addr: first.as_ptr() as u64,
                    rkey,
                    len: first.len() as u32,
                };
                let header_len = HEADER_LEN + record::READ_DESC_LEN;
                (body, first.len(), Sges::new(base, header_len, lkey))
            } else {
                let mut sges = Sges::new(base, HEADER_LEN, lkey);
                let mut used = HEADER_LEN;
                let mut consumed = 0;
                let mut copied = 0;
                for chunk in q.chunks() {
                    let take = chunk.len().min(record_max - used);
                    if take == 0 || chunk.len() >= read_min {
                        break;
                    }
                    let gathered = match in_arena(chunk).filter(|_| take == chunk.len()) {
                        Some((_, arena_lkey, _)) => sges.push(chunk.as_ptr(), take, arena_lkey),
                        None => false,
                    };
                    if gathered {
                        held.push(chunk.clone());
                    } else {
                        // SAFETY: `used + take` stays within the slot (record_max).
                        let at = unsafe { base.add(used) };
                        if !sges.push(at, take, lkey) {
                            break; // the list is full: the rest goes in the next record
                        }
                        // SAFETY: as above; the slot is ours until the SEND completes.
                        unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), at, take) };
                        used += take;
                        copied += take;
                    }
                    consumed += take;
                    if take < chunk.len() {
                        break;
                    }
                }
                bump(&counters.rdma_send_bytes, consumed as u64);
                bump(&counters.rdma_copied_bytes, copied as u64);
                (Body::Data, consumed, sges)
            };
            post_record(c, i, slot, body, sges.as_mut(), held)?;
            q.advance(consumed);
            sent_any = true;
        }
        let update_due = c.reads_done_owed > 0 || c.credits.update_due(our_credits);
        if !sent_any && update_due && c.credits.can_send_update() {
            match self.free_send.pop() {
                None => self.send_waiters.push(i),
                Some(slot) => {
                    let mut sges = Sges::new(dev.region.slot_ptr(slot), HEADER_LEN, lkey);
                    post_record(c, i, slot, Body::Update, sges.as_mut(), Vec::new())?;
                }
            }
        }
        Ok(())
    }

    /// Everything connection `i` can do now.
    fn step(&mut self, cx: &mut Cx<'_>, i: usize) {
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return;
        };
        c.dirty = false;
        match c.phase {
            Phase::Closing => return self.reap(i),
            Phase::Up => {}
            _ => return,
        }
        let r = self.consume(cx, i).and_then(|_| {
            if self.conns[i].as_ref().is_some_and(|c| c.phase == Phase::Up) {
                self.flush(cx, i)
            } else {
                Ok(())
            }
        });
        if let Err(why) = r {
            tracing::warn!(worker = self.index, "RDMA connection failed: {why}");
            self.fail(cx, i, &why);
        }
        self.reap(i);
    }
}

/// The scatter-gather list of one SEND, in stream order: the send buffer's header and copied
/// bytes, with arena payloads between them.
struct Sges {
    list: [ibv::ibv_sge; MAX_SGE],
    len: usize,
}

impl Sges {
    /// Starts with the header: the first `header_len` bytes at `base`.
    fn new(base: *mut u8, header_len: usize, lkey: u32) -> Self {
        let mut list = [ibv::ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        }; MAX_SGE];
        list[0] = ibv::ibv_sge {
            addr: base as u64,
            length: header_len as u32,
            lkey,
        };
        Sges { list, len: 1 }
    }

    /// Appends `len` bytes at `at`, extending the last entry when they follow it in the same
    /// region; false when the list is full.
    fn push(&mut self, at: *const u8, len: usize, lkey: u32) -> bool {
        let last = &mut self.list[self.len - 1];
        if last.lkey == lkey && last.addr + last.length as u64 == at as u64 {
            last.length += len as u32;
            return true;
        }
        if self.len == MAX_SGE {
            return false;
        }
        self.list[self.len] = ibv::ibv_sge {
            addr: at as u64,
            length: len as u32,
            lkey,
        };
        self.len += 1;
        true
    }

    fn as_mut(&mut self) -> &mut [ibv::ibv_sge] {
        &mut self.list[..self.len]
    }
}

/// Writes the record header (with the credits and READ completions owed) at the front of
/// send buffer `slot`, whose first entry in `sges` it is, and posts the SEND; `held` stays
/// alive until it completes.
fn post_record(
    c: &mut Conn,
    i: usize,
    slot: u32,
    body: Body,
    sges: &mut [ibv::ibv_sge],
    held: Vec<Bytes>,
) -> Result<(), String> {
    let header = Header {
        body,
        credits: c.credits.spend(),
        reads_done: std::mem::take(&mut c.reads_done_owed),
    };
    // SAFETY: the first entry starts with the header's room (the whole header: 8 bytes, or
    // 24 with a READ descriptor) at the front of the send buffer, ours until the SEND completes.
    let room =
        unsafe { std::slice::from_raw_parts_mut(sges[0].addr as *mut u8, sges[0].length as usize) };
    header.encode(room);
    c.qp.as_mut()
        .expect("up")
        .post_send(wr_id(WR_SEND, i, slot), sges)
        .map_err(|e| format!("posting a SEND: {e}"))?;
    c.wrs += 1;
    c.sends.push_back((slot, held));
    Ok(())
}

impl Transport for Rdma {
    fn connect(&mut self, cx: &mut Cx<'_>, conn: ConnId, addr: SocketAddr) {
        self.dial(cx, conn, addr);
    }

    fn wake(&mut self, conn: ConnId) {
        if let Some(&i) = self.by_cid.get(&conn.0) {
            self.mark_dirty(i);
        }
    }

    fn close(&mut self, conn: ConnId, remaining: Vec<Bytes>) {
        let Some(i) = self.by_cid.remove(&conn.0) else {
            return;
        };
        let c = self.conn(i);
        c.cid = None;
        let mut q = TxQueue::default();
        for b in &remaining {
            q.push_payload(b);
        }
        if c.phase == Phase::Up {
            c.closing = Some(q);
        } else {
            self.teardown(i);
        }
        self.mark_dirty(i);
    }

    fn migrate(&mut self, conn: ConnId, to: usize, _handoff: Box<Handoff>) {
        // The side channel was placed on the owning worker from the client's hint; a client
        // whose identity does not match its hint cannot move its queue pair: drop it, and
        // its next attempt is placed again.
        tracing::warn!(
            worker = self.index,
            to,
            "RDMA connection identified as belonging to another worker; closing it"
        );
        if let Some(i) = self.by_cid.remove(&conn.0) {
            self.conn(i).cid = None;
            self.teardown(i);
        }
    }

    fn unthrottle(&mut self) {
        for i in std::mem::take(&mut self.held_back) {
            self.mark_dirty(i);
        }
    }

    fn progress(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.dev.is_none() {
            return false;
        }
        self.poll_cq(cx);
        let stepped = !self.dirty.is_empty();
        while let Some(i) = self.dirty.pop() {
            self.step(cx, i);
        }
        stepped
    }

    fn complete(&mut self, cx: &mut Cx<'_>, ud: u64, res: i32, flags: u32) {
        let key = (ud & KEY_MASK) as usize;
        match ud >> 56 {
            KIND_ACCEPT => self.accepted(cx, key, res, flags),
            KIND_SIDE_TIMEOUT => {} // the receive it guards reports the outcome
            KIND_CQ => {
                if let Some(dev) = &self.dev {
                    let n = dev.take_events();
                    bump(&cx.shared.counters.rdma_cq_events, n as u64);
                    if let Err(e) = dev.request_notify() {
                        tracing::error!(worker = self.index, "{e}");
                    }
                }
                if !cqueue::more(flags) {
                    self.arm_cq(cx);
                }
                self.poll_cq(cx);
            }
            kind => self.complete_side(cx, kind, key, res),
        }
    }

    fn shutdown(&mut self) {
        if let Some(l) = &self.listeners {
            l.shutdown();
        }
    }

    fn is_idle(&self) -> bool {
        self.free_conns.len() == self.conns.len()
            && self.listeners.as_ref().is_none_or(|l| l.is_idle())
    }

    fn announce(&self, ep: &Endpoint) -> bool {
        let mut any = false;
        for c in self.conns.iter().flatten() {
            if let (Some(cid), Phase::Up) = (c.cid, c.phase) {
                if c.probe.has_ports() {
                    c.probe.report(ep, cid.0);
                    any = true;
                }
            }
        }
        any
    }

    fn busy_poll(&mut self, cx: &mut Cx<'_>) -> bool {
        let budget = cx.shared.rdma.busy_poll;
        if budget.is_zero() || self.dev.is_none() || self.by_cid.is_empty() {
            return false;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < budget {
            if self.poll_cq(cx) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }
}
