//! The RDMA transport: msgr2's byte stream over RC queue pairs, driven by the same worker
//! loop and protocol core as TCP.
//!
//! - Setup ([`setup`]): a TCP side channel carries each side's [`Hello`] (queue pair number,
//!   PSN, LID, GID, credits, buffer size); the client then sends one READY byte. The side
//!   channel stays open for the connection's life, so a peer that dies is noticed even while
//!   idle.
//! - Memory: each worker registers one region once: send buffers shared by its connections
//!   and `credits` receive buffers per connection. Nothing grows with load.
//! - Send ([`send`]): a SEND carries a [`Header`] and stream bytes, copied into a send buffer
//!   when small or gathered straight from the registered payload arena. A chunk of at least
//!   `read_min` bytes is not sent: a READ descriptor goes instead and the receiver pulls the
//!   bytes with one RDMA READ straight into the segment buffer its decoder lends (the buffer
//!   that becomes the message payload), so a 4 MiB payload crosses without a copy
//!   ([`receive`]).
//! - Flow control: one credit per receive buffer; returned on every record or in an update
//!   (see [`record::Credits`]); no SEND is ever posted without a buffer for it.
//! - Completions ([`completions`]): one CQ per worker; its completion channel fd is a
//!   multishot poll on the worker's io_uring, and the CQ is also polled on every pass of the
//!   loop.
//!
//! This file holds the connection table and the [`Transport`] implementation: it routes
//! ring and work completions to the jobs above and owns each connection's life (up, failed,
//! torn down, freed once nothing refers to its buffers).
//!
//! [`Header`]: record::Header

mod completions;
mod ibv;
mod receive;
mod record;
mod send;
mod setup;
mod verbs;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use self::completions::{Batch, Completion, Link, Work};
use self::receive::{Consumed, Receiver};
use self::record::Hello;
pub(super) use self::record::HELLO_LEN;
// verbs.rs sizes queue pairs' scatter-gather lists by it.
use self::send::{SendBuffers, Sender, MAX_SGE};
use self::setup::{Phase, SideChannel, SideEvent};
use super::transport::{Cx, Listeners, ProbeIds, Transport, KEY_MASK};
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

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

struct Conn {
    /// The endpoint's connection (a server learns it when READY arrives); None after the
    /// endpoint closed or handed it away.
    cid: Option<ConnId>,
    /// The endpoint asked us to close: these bytes go out first.
    closing: Option<TxQueue>,
    phase: Phase,
    side: SideChannel,
    peer_socket: Option<SocketAddr>,
    /// The queue pair, once created (client: dialed; server: hello received).
    link: Option<Link>,
    tx: Sender,
    rx: Receiver,
    dirty: bool,
    probe: ProbeIds,
}

pub(crate) struct Rdma {
    index: usize,
    dev: Option<verbs::Device>,
    /// Why the device could not be opened (said once, then every RDMA connect fails).
    dev_error: Option<String>,
    listeners: Option<Listeners>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    by_cid: IdMap<u64, usize>,
    send_bufs: SendBuffers,
    dirty: Vec<usize>,
    held_back: Vec<usize>,
    batch: Batch,
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
            send_bufs: SendBuffers::default(),
            dirty: Vec::new(),
            held_back: Vec::new(),
            batch: Batch::new(),
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
        let shared = cx.shared;
        let o = &shared.rdma;
        match setup::open_device(o, shared.arena.as_deref(), self.index) {
            Ok(dev) => {
                self.send_bufs = SendBuffers::new(o.send_buffers);
                self.conns = (0..o.max_connections).map(|_| None).collect();
                self.free_conns = (0..o.max_connections).rev().collect();
                completions::arm(cx, &dev);
                self.dev = Some(dev);
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
    fn add(&mut self, side: SideChannel, phase: Phase, cid: Option<ConnId>) -> Option<usize> {
        let i = self.free_conns.pop()?;
        self.conns[i] = Some(Conn {
            cid,
            closing: None,
            phase,
            side,
            peer_socket: None,
            link: None,
            tx: Sender::new(),
            rx: Receiver::new(),
            dirty: false,
            probe: ProbeIds::default(),
        });
        if let Some(cid) = cid {
            self.by_cid.insert(cid.0, i);
        }
        Some(i)
    }

    /// Receives on connection `i`'s side channel (the peer's hello, or one byte).
    fn side_recv(&mut self, cx: &mut Cx<'_>, i: usize, hello: bool) {
        let c = self.conn(i);
        // Until the connection is up, a silent peer must not hold its slot.
        let guarded = c.phase != Phase::Up;
        for e in c.side.recv(i, hello, guarded) {
            cx.push(e);
        }
    }

    fn dial(&mut self, cx: &mut Cx<'_>, cid: ConnId, addr: SocketAddr) {
        let now = cx.now;
        if let Err(e) = self.open(cx) {
            tracing::warn!(worker = self.index, %addr, "cannot connect over RDMA: {e}");
            cx.ep.on_closed(now, cid);
            return;
        }
        let timeout = cx.ep.config().tuning.handshake_timeout;
        let side = match SideChannel::dialer(addr, timeout) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(worker = self.index, %addr, "cannot create socket: {e}");
                cx.ep.on_closed(now, cid);
                return;
            }
        };
        let Some(i) = self.add(side, Phase::Dialing, Some(cid)) else {
            tracing::warn!(
                worker = self.index,
                %addr,
                "cannot connect over RDMA: RdmaOptions::max_connections reached on this worker"
            );
            cx.ep.on_closed(now, cid);
            return;
        };
        let c = self.conn(i);
        c.peer_socket = Some(addr);
        let e = c.side.connect(i, addr);
        cx.push(e);
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
        let timeout = cx.ep.config().tuning.handshake_timeout;
        let (side, peer) = SideChannel::accepted(fd, timeout);
        let Some(i) = self.add(side, Phase::Hello, None) else {
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
                self.conn(i).side.hello_received(*h);
                if let Err(why) = self.on_hello(cx, i) {
                    self.fail(cx, i, &why);
                    self.reap(i);
                }
            }
            None => self.side_recv(cx, i, true),
        }
    }

    fn complete_side(&mut self, cx: &mut Cx<'_>, kind: u64, i: usize, res: i32) {
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return;
        };
        c.side.completed(kind == KIND_DIAL);
        if c.phase == Phase::Closing {
            return self.reap(i);
        }
        let step = match setup::side_event(kind, c.phase, res, c.side.got_ready()) {
            SideEvent::Nothing => Ok(()),
            SideEvent::Connected => self.dialed(cx, i),
            SideEvent::Hello => self.on_hello(cx, i),
            SideEvent::Up => {
                self.up(cx, i);
                Ok(())
            }
            SideEvent::Gone(why) => {
                // The peer closes its side channel only after its last SENDs completed, so
                // they are in our CQ: take them in before reporting the close.
                self.poll_cq(cx);
                self.step(cx, i);
                Err(why)
            }
            SideEvent::Failed(why) => Err(why),
        };
        if let Err(why) = step {
            self.fail(cx, i, &why);
            self.reap(i);
        }
    }

    /// Client: the side channel is connected; create the queue pair and say hello.
    fn dialed(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let shared = cx.shared;
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        let link = c.link.insert(setup::new_link(dev, &shared.rdma, i)?);
        let local_ip = c
            .side
            .local_ip()
            .ok_or("side channel has no local address")?;
        let placement = cx.ep.placement_hint(local_ip);
        let hello = dev.hello(link.qp(), shared.rdma.credits, placement);
        c.phase = Phase::Hello;
        cx.push(c.side.send_hello(i, &hello));
        self.side_recv(cx, i, true);
        Ok(())
    }

    /// The peer's hello arrived on connection `i`.
    fn on_hello(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let shared = cx.shared;
        let c = self.conn(i);
        let peer: Hello = c.side.peer_hello()?;
        let client = c.cid.is_some();
        if !client {
            let owner = setup::owner(peer.placement, shared.workers.len());
            if owner != self.index {
                // Hand the side channel to the worker that will own the session, before any
                // queue pair exists here.
                let c = self.conns[i].take().expect("live");
                self.free_conns.push(i);
                bump(&shared.counters.migrations, 1);
                let (fd, hello) = c.side.into_parts();
                shared.workers[owner].push(Command::AdoptRdma { fd, hello });
                return Ok(());
            }
            let dev = self.dev.as_ref().expect("device open");
            let link = setup::new_link(dev, &shared.rdma, i)?;
            self.conn(i).link = Some(link);
        }
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        let link = c.link.as_mut().expect("created");
        dev.connect_qp(link.qp_mut(), &peer)
            .map_err(|e| e.to_string())?;
        c.tx.connect(&peer, dev.region.slot);
        if client {
            c.phase = Phase::SendReady;
            cx.push(c.side.send_ready(i));
        } else {
            let hello = dev.hello(link.qp(), shared.rdma.credits, 0);
            c.phase = Phase::AwaitReady;
            cx.push(c.side.send_hello(i, &hello));
            self.side_recv(cx, i, false);
        }
        Ok(())
    }

    /// Connection `i` can carry msgr2 now.
    fn up(&mut self, cx: &mut Cx<'_>, i: usize) {
        let now = cx.now;
        let c = self.conn(i);
        c.phase = Phase::Up;
        c.probe = ProbeIds::of(c.side.fd());
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
        if let Some(link) = c.link.as_mut() {
            link.fail();
        }
        c.side.shutdown();
        self.mark_dirty(i);
    }

    /// A send buffer is free again: connections that waited for one go on.
    fn release_send(&mut self, slot: u32) {
        for i in self.send_bufs.release(slot) {
            self.mark_dirty(i);
        }
    }

    /// Frees connection `i` once nothing refers to its buffers any more.
    fn reap(&mut self, i: usize) {
        let Some(c) = self.conns.get(i).and_then(|c| c.as_ref()) else {
            return;
        };
        let in_flight = c.link.as_ref().map_or(0, |l| l.in_flight());
        if c.phase == Phase::Closing && in_flight == 0 && !c.side.busy() {
            let c = self.conns[i].take().expect("live");
            for slot in c.tx.into_buffers() {
                self.release_send(slot);
            }
            if let Some(cid) = c.cid {
                self.by_cid.remove(&cid.0);
            }
            self.free_conns.push(i);
        }
    }

    /// Polls the CQ dry.
    fn poll_cq(&mut self, cx: &mut Cx<'_>) -> bool {
        // Taken out while its completions are handled (they need `self`); no allocation.
        let mut batch = std::mem::take(&mut self.batch);
        let mut any = false;
        while self.dev.as_ref().is_some_and(|d| batch.poll(d)) {
            any = true;
            bump(&cx.shared.counters.rdma_cq_polls, 1);
            for wc in batch.iter() {
                self.completion(cx, wc);
            }
        }
        self.batch = batch;
        any
    }

    /// A work completion: its connection's send buffer, READ or record, or its failure.
    fn completion(&mut self, cx: &mut Cx<'_>, wc: Completion) {
        let i = wc.id.conn;
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            tracing::error!(
                worker = self.index,
                id = wc.id.encode(),
                "completion for no connection"
            );
            return;
        };
        if let Some(link) = c.link.as_mut() {
            link.completed();
        }
        let mut failed = None;
        match wc.id.work {
            Work::Send => {
                if let Some(slot) = c.tx.send_completed() {
                    debug_assert_eq!(slot, wc.id.slot);
                    self.release_send(slot);
                }
            }
            Work::Read if wc.ok() => {
                let to = c.cid.filter(|_| c.closing.is_none());
                if c.rx.read_completed(cx, to) {
                    failed = c.tx.read_finished().err();
                }
            }
            Work::Read => c.rx.read_failed(),
            Work::Recv => {
                if wc.ok() {
                    c.rx.arrived(wc.id.slot, wc.byte_len);
                }
            }
        }
        if !wc.ok() {
            if let Some(e) = wc.error() {
                bump(&cx.shared.counters.rdma_errors, 1);
                tracing::warn!(worker = self.index, "{e}");
            }
            self.fail(cx, i, "work request failed");
        } else if let Some(why) = failed {
            self.fail(cx, i, &why);
        }
        self.mark_dirty(i);
    }

    /// Feeds connection `i`'s arrived records to the endpoint.
    fn consume(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        let (Some(cid), Some(link)) = (c.cid, c.link.as_mut()) else {
            return Ok(());
        };
        if c.rx.consume(cx, dev, link, &mut c.tx, cid)? == Consumed::Throttled {
            self.held_back.push(i);
        }
        Ok(())
    }

    /// Sends connection `i`'s queued bytes (the endpoint's, or the last words of a closing
    /// connection, which is torn down once they are out).
    fn flush(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), String> {
        let shared = cx.shared;
        let dev = self.dev.as_ref().expect("device open");
        let c = self.conns[i].as_mut().expect("live");
        let link = c.link.as_mut().expect("up");
        let queue = match c.closing.as_mut() {
            Some(q) => Some(q),
            None => c.cid.and_then(|cid| cx.ep.tx_queue(cid)),
        };
        let result = match queue {
            Some(q) => c.tx.flush(shared, dev, &mut self.send_bufs, link, q),
            None => Ok(()),
        };
        if c.closing.as_ref().is_some_and(|q| q.is_empty()) && c.tx.is_idle() {
            // The endpoint's last words are out: now close.
            self.teardown(i);
        }
        result
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
                    completions::channel_event(cx, dev, self.index, flags);
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
