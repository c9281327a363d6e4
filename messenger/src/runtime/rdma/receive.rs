//! Receiving: records arrive in the connection's receive buffers and are consumed in order
//! into the endpoint, each buffer reposted (a credit owed back) once read. A record may be a
//! READ descriptor instead of bytes: the stream then continues with RDMA READs of the peer's
//! memory, straight into the segment buffer the decoder lends (the buffer that becomes the
//! message payload), or into a bounce buffer when it lends none.
//!
//! Everything here that comes from the peer (record fields, descriptor address and length)
//! is checked before it is used in arithmetic: a bad value faults the connection.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;

use super::super::transport::{Cx, Gate};
use super::bump;
use super::completions::Link;
use super::ibv;
use super::record::{Body, Header};
use super::send::Sender;
use super::verbs::{Device, MemoryRegion, Region};
use crate::proto::ConnId;

/// A READ not landing in a lent segment buffer goes through a buffer of at most this size.
const BOUNCE_MAX: u32 = 256 << 10;

/// Posts receive buffer `slot` of the worker's region on `link`.
pub(super) fn post_receive(link: &mut Link, region: &Region, slot: u32) -> io::Result<()> {
    link.post_recv(
        slot,
        region.slot_ptr(slot),
        region.slot as u32,
        region.mr.lkey(),
    )
}

/// The peer's READ descriptor being pulled: where its next bytes are and how many are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadDesc {
    addr: u64,
    rkey: u32,
    left: u32,
}

impl ReadDesc {
    /// A descriptor as the peer sent it: its whole range must exist, so that no step
    /// through it can wrap.
    fn new(addr: u64, rkey: u32, len: u32) -> Result<ReadDesc, String> {
        if len == 0 {
            return Err("READ descriptor with len 0".to_string());
        }
        if addr.checked_add(len as u64).is_none() {
            return Err(format!(
                "READ descriptor addr {addr:#x} + len {len} overflows u64"
            ));
        }
        Ok(ReadDesc {
            addr,
            rkey,
            left: len,
        })
    }

    /// Takes the next `n` bytes: returns the peer's address of them.
    fn take(&mut self, n: u32) -> Result<u64, String> {
        let left = self.left.checked_sub(n).ok_or_else(|| {
            format!(
                "READ of {n} bytes past the descriptor's len ({} left)",
                self.left
            )
        })?;
        let next = self
            .addr
            .checked_add(n as u64)
            .ok_or_else(|| format!("READ descriptor addr {:#x} + {n} overflows u64", self.addr))?;
        let at = self.addr;
        self.addr = next;
        self.left = left;
        Ok(at)
    }
}

/// Where a READ lands.
enum Target {
    /// The decoder's segment buffer (the payload): no copy.
    Lent(BytesMut),
    /// Anything else (a paused connection, bytes outside a large segment): a bounce buffer
    /// fed to the decoder.
    Bounce(Vec<u8>),
}

/// A READ in flight. `R` keeps its target registered (a memory region; `()` in tests).
struct Reading<R> {
    // Dropped before the target: the registration covers the target's memory.
    _mr: R,
    target: Target,
    len: usize,
}

/// The next READ to post: `len` bytes at the peer's `remote` into `target`.
pub(super) struct Pull {
    target: Target,
    len: usize,
    remote: u64,
    rkey: u32,
}

impl Pull {
    /// Where the bytes land (stable: the target's heap memory does not move with it).
    fn dst(&mut self) -> *mut u8 {
        match &mut self.target {
            // SAFETY: within the spare capacity, which `pull` checked holds `len` bytes.
            Target::Lent(buf) => unsafe { buf.as_mut_ptr().add(buf.len()) },
            Target::Bounce(v) => v.as_mut_ptr(),
        }
    }
}

/// What a completed READ brought, for the endpoint.
pub(super) enum Landed {
    /// The lent segment buffer, grown by that many bytes.
    Segment(BytesMut, usize),
    /// Stream bytes to feed as input.
    Input(Vec<u8>),
}

/// Whether [`Receiver::consume`] stopped on the dispatch throttle (retried on unthrottle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consumed {
    Done,
    Throttled,
}

/// One connection's receiving state.
pub(super) struct Receiver<R = Arc<MemoryRegion>> {
    /// Records received, not consumed yet: (receive slot, length).
    arrived: VecDeque<(u32, u32)>,
    /// The READ descriptor being pulled.
    desc: Option<ReadDesc>,
    reading: Option<Reading<R>>,
}

impl<R> Receiver<R> {
    pub fn new() -> Self {
        Receiver {
            arrived: VecDeque::new(),
            desc: None,
            reading: None,
        }
    }

    /// Receive buffer `slot` holds a record of `len` bytes.
    pub fn arrived(&mut self, slot: u32, len: u32) {
        self.arrived.push_back((slot, len));
    }

    /// The next record to consume; none while a READ descriptor is being pulled, as its
    /// bytes come first in the stream.
    fn next_record(&self) -> Option<(u32, u32)> {
        if self.desc.is_some() || self.reading.is_some() {
            return None;
        }
        self.arrived.front().copied()
    }

    /// The record just consumed carried a READ descriptor.
    fn read_descriptor(&mut self, addr: u64, rkey: u32, len: u32) -> Result<(), String> {
        self.desc = Some(ReadDesc::new(addr, rkey, len)?);
        Ok(())
    }

    /// The next READ of the current descriptor, if one is due: into the decoder's segment
    /// buffer when `lend` gives one (with the bytes the decoder wants), else a bounce buffer.
    fn pull(
        &mut self,
        lend: impl FnOnce() -> Option<(BytesMut, usize)>,
    ) -> Result<Option<Pull>, String> {
        if self.reading.is_some() {
            return Ok(None);
        }
        // A descriptor is dropped when its last READ completes, so one here has bytes left.
        let Some(desc) = self.desc.as_mut().filter(|d| d.left > 0) else {
            return Ok(None);
        };
        let (target, n) = match lend() {
            Some((buf, want)) => {
                // A descriptor may run past the segment (a chunk of coalesced small frames
                // can end inside a large one): the rest comes with the next READ.
                let n = u32::try_from(want).unwrap_or(u32::MAX).min(desc.left);
                let room = buf.capacity() - buf.len();
                if n as usize > room {
                    return Err(format!(
                        "lent segment buffer has room for {room} bytes, not the {n} it wants"
                    ));
                }
                (Target::Lent(buf), n)
            }
            None => {
                let n = desc.left.min(BOUNCE_MAX);
                (Target::Bounce(Vec::with_capacity(n as usize)), n)
            }
        };
        let remote = desc.take(n)?;
        Ok(Some(Pull {
            target,
            len: n as usize,
            remote,
            rkey: desc.rkey,
        }))
    }

    /// `pull` was posted; `mr` keeps its target registered until it completes.
    fn started(&mut self, pull: Pull, mr: R) {
        self.reading = Some(Reading {
            _mr: mr,
            target: pull.target,
            len: pull.len,
        });
    }

    /// The READ in flight completed: the bytes it landed, and whether that finished the
    /// descriptor (an acknowledgement is then owed to the peer).
    fn land(&mut self) -> (Landed, bool) {
        let Reading { _mr, target, len } = self.reading.take().expect("a READ was in flight");
        drop(_mr);
        let landed = match target {
            Target::Lent(mut buf) => {
                // SAFETY: the READ wrote `len` bytes into the spare capacity (checked to hold
                // them in `pull`).
                unsafe { buf.set_len(buf.len() + len) };
                Landed::Segment(buf, len)
            }
            Target::Bounce(mut v) => {
                // SAFETY: as above; the bounce buffer was made with that capacity.
                unsafe { v.set_len(len) };
                Landed::Input(v)
            }
        };
        let done = self.desc.is_some_and(|d| d.left == 0);
        if done {
            self.desc = None;
        }
        (landed, done)
    }

    /// The READ in flight failed (the connection is failing): its target is dropped.
    pub fn read_failed(&mut self) {
        self.reading = None;
    }
}

impl Receiver {
    /// The READ in flight completed: its bytes go to the endpoint as connection `cid`'s
    /// input (None: nobody takes them any more). True when that finished the descriptor.
    pub fn read_completed(&mut self, cx: &mut Cx<'_>, cid: Option<ConnId>) -> bool {
        let now = cx.now;
        let counters = &cx.shared.counters;
        let (landed, done) = self.land();
        let len = match &landed {
            Landed::Segment(_, len) => *len,
            Landed::Input(v) => v.len(),
        };
        bump(&counters.rdma_read_bytes, len as u64);
        if let Some(cid) = cid {
            match landed {
                Landed::Segment(buf, len) => cx.ep.return_segment(now, cid, buf, len),
                Landed::Input(v) => {
                    bump(&counters.rdma_copied_bytes, v.len() as u64);
                    cx.ep.on_input(now, cid, &v);
                }
            }
        }
        done
    }

    /// Feeds the records that arrived to the endpoint as connection `cid`'s input, in order,
    /// until one needs a READ or the receive gate closes. Acknowledgements in the records go
    /// to `tx`, and each buffer consumed is reposted on `link`.
    pub fn consume(
        &mut self,
        cx: &mut Cx<'_>,
        dev: &Device,
        link: &mut Link,
        tx: &mut Sender,
        cid: ConnId,
    ) -> Result<Consumed, String> {
        let now = cx.now;
        loop {
            self.start_read(cx, dev, link, cid)?;
            let Some((slot, len)) = self.next_record() else {
                return Ok(Consumed::Done);
            };
            match cx.receive_gate(cid) {
                Gate::Open => {}
                Gate::Backlog => return Ok(Consumed::Done), // resumed when a SEND completes
                Gate::Throttled => return Ok(Consumed::Throttled),
            }
            let bytes = dev.region.slot_bytes(slot, len as usize);
            let (h, data) = Header::decode(bytes).map_err(|e| e.to_string())?;
            tx.acknowledged(h.credits, h.reads_done)
                .map_err(|e| e.to_string())?;
            match h.body {
                Body::Data if !data.is_empty() => {
                    bump(&cx.shared.counters.rdma_copied_bytes, data.len() as u64);
                    cx.ep.on_input(now, cid, data);
                }
                Body::Read { addr, rkey, len } => self.read_descriptor(addr, rkey, len)?,
                _ => {}
            }
            self.arrived.pop_front();
            let every = cx.shared.rdma.inject_qp_failures;
            if every > 0 && (super::super::random_u64() % every as u64) == 0 {
                bump(&cx.shared.counters.injected_faults, 1);
                link.fail();
                return Ok(Consumed::Done); // its work requests now complete flushed: it faults
            }
            post_receive(link, &dev.region, slot)
                .map_err(|e| format!("reposting a receive: {e}"))?;
            tx.reposted();
        }
    }

    /// Posts the next READ of the current descriptor, if one is due.
    fn start_read(
        &mut self,
        cx: &mut Cx<'_>,
        dev: &Device,
        link: &mut Link,
        cid: ConnId,
    ) -> Result<(), String> {
        let Some(mut pull) = self.pull(|| cx.ep.lend_segment(cid))? else {
            return Ok(());
        };
        let dst = pull.dst();
        // SAFETY: the target is kept in `reading` until the READ completes.
        let mr = unsafe { dev.register(dst, pull.len, false) }?;
        bump(&cx.shared.counters.rdma_registrations, 1);
        let sge = ibv::ibv_sge {
            addr: dst as u64,
            length: pull.len as u32,
            lkey: mr.lkey(),
        };
        link.post_read(sge, pull.remote, pull.rkey)
            .map_err(|e| format!("posting a READ: {e}"))?;
        self.started(pull, mr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Posts `pull` as the device would carry it out: fills its bytes, then completes.
    fn read(rx: &mut Receiver<()>, mut pull: Pull, byte: u8) -> (Landed, bool) {
        // SAFETY: `pull` says `len` bytes fit at `dst`.
        unsafe { std::ptr::write_bytes(pull.dst(), byte, pull.len) };
        rx.started(pull, ());
        rx.land()
    }

    #[test]
    fn a_read_descriptor_whose_address_plus_length_overflows_is_an_error() {
        let mut rx = Receiver::<()>::new();
        let e = rx
            .read_descriptor(u64::MAX - 15, 7, 32)
            .expect_err("must not be accepted");
        assert_eq!(
            e,
            "READ descriptor addr 0xfffffffffffffff0 + len 32 overflows u64"
        );
        assert!(rx.desc.is_none());
        assert!(rx.pull(|| None).unwrap().is_none());
        // Ending exactly at the top of the address space is fine, and so is every step.
        rx.read_descriptor(u64::MAX - 32, 7, 32).unwrap();
        let p = rx.pull(|| None).unwrap().expect("a READ");
        assert_eq!((p.remote, p.len), (u64::MAX - 32, 32));
        let (_, done) = read(&mut rx, p, 1);
        assert!(done);
        assert_eq!(
            rx.read_descriptor(0, 7, 0),
            Err("READ descriptor with len 0".to_string())
        );
    }

    #[test]
    fn a_descriptor_cannot_be_taken_past_its_end() {
        let mut d = ReadDesc::new(100, 1, 10).unwrap();
        assert_eq!(d.take(4), Ok(100));
        assert_eq!(d.take(6), Ok(104));
        let e = d.take(1).unwrap_err();
        assert!(e.contains("past the descriptor's len (0 left)"), "{e}");
        // Fields forged past the checks in `new` still cannot wrap.
        let mut forged = ReadDesc {
            addr: u64::MAX,
            rkey: 1,
            left: 8,
        };
        let e = forged.take(8).unwrap_err();
        assert!(e.contains("overflows u64"), "{e}");
    }

    #[test]
    fn a_descriptor_longer_than_the_lent_segment_fills_it_and_reads_the_rest_next() {
        let mut rx = Receiver::<()>::new();
        rx.read_descriptor(0x1000, 9, 200).unwrap();
        rx.arrived(5, 64);
        assert_eq!(rx.next_record(), None, "the READ's bytes come first");
        // The decoder lends its segment buffer: 10 bytes in, 90 more wanted.
        let mut seg = BytesMut::with_capacity(100);
        seg.extend_from_slice(&[0; 10]);
        let p = rx.pull(|| Some((seg, 90))).unwrap().expect("a READ");
        assert_eq!((p.remote, p.len, p.rkey), (0x1000, 90, 9));
        // Nothing more is posted while it is in flight.
        let (landed, done) = read(&mut rx, p, 0xab);
        assert!(!done);
        let Landed::Segment(buf, n) = landed else {
            panic!("not the lent buffer")
        };
        assert_eq!((buf.len(), n), (100, 90));
        assert!(buf[10..].iter().all(|&b| b == 0xab));
        // The decoder lends nothing now (its segment is complete): the rest is bounced.
        let p = rx.pull(|| None).unwrap().expect("a READ");
        assert_eq!((p.remote, p.len), (0x1000 + 90, 110));
        let (landed, done) = read(&mut rx, p, 0xcd);
        assert!(done, "the descriptor is fully read");
        let Landed::Input(v) = landed else {
            panic!("not bounced")
        };
        assert_eq!(v, vec![0xcd; 110]);
        assert!(rx.pull(|| None).unwrap().is_none());
        assert_eq!(rx.next_record(), Some((5, 64)));
    }

    #[test]
    fn a_lent_segment_without_room_for_what_it_wants_is_an_error() {
        let mut rx = Receiver::<()>::new();
        rx.read_descriptor(0x1000, 9, 4096).unwrap();
        let seg = BytesMut::with_capacity(16);
        let room = seg.capacity();
        let e = match rx.pull(|| Some((seg, room + 1))) {
            Err(e) => e,
            Ok(_) => panic!("a READ past the buffer"),
        };
        assert_eq!(
            e,
            format!(
                "lent segment buffer has room for {room} bytes, not the {} it wants",
                room + 1
            )
        );
        assert!(rx.reading.is_none());
    }

    #[test]
    fn bounced_reads_are_bounded() {
        let mut rx = Receiver::<()>::new();
        rx.read_descriptor(0, 1, 1 << 20).unwrap();
        let mut at = 0;
        let mut reads = 0;
        while let Some(p) = rx.pull(|| None).unwrap() {
            assert_eq!((p.remote, p.len), (at, BOUNCE_MAX as usize));
            at += p.len as u64;
            reads += 1;
            let (_, done) = read(&mut rx, p, 0);
            assert_eq!(done, at == 1 << 20);
        }
        assert_eq!(reads, 4);
    }

    #[test]
    fn records_come_out_in_order() {
        let mut rx = Receiver::<()>::new();
        rx.arrived(3, 10);
        rx.arrived(4, 20);
        assert_eq!(rx.next_record(), Some((3, 10)));
        rx.arrived.pop_front();
        assert_eq!(rx.next_record(), Some((4, 20)));
    }
}
