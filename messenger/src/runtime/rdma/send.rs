//! Sending: the worker's send buffers, each connection's send credits and SENDs in flight,
//! and turning the queued stream into records. A record's bytes are copied into its send
//! buffer when small, gathered straight from the registered payload arena, or, for a chunk
//! of at least `read_min` bytes, not sent at all: a READ descriptor goes instead and the
//! chunk stays exposed (registered) until the peer says it has read it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::super::Shared;
use super::bump;
use super::completions::Link;
use super::ibv;
use super::record::{self, Body, Credits, Header, Hello, RecordError, HEADER_LEN};
use super::verbs::{self, Device, MemoryRegion};
use crate::proto::frame::TxQueue;

/// Scatter-gather entries per SEND: the header's buffer and arena payloads between copies.
pub(super) const MAX_SGE: usize = 8;

/// The worker's send buffers (the first slots of its region), shared by its connections.
#[derive(Debug, Default)]
pub(super) struct SendBuffers {
    free: Vec<u32>,
    /// Connections that found none free: woken when one is released.
    waiters: Vec<usize>,
}

impl SendBuffers {
    /// Slots `0..count`, taken lowest first.
    pub fn new(count: usize) -> Self {
        SendBuffers {
            free: (0..count as u32).rev().collect(),
            waiters: Vec::new(),
        }
    }

    /// A free buffer for connection `conn`; None when there is none, and then `conn` is
    /// among those [`release`](Self::release) returns.
    pub fn take(&mut self, conn: usize) -> Option<u32> {
        let slot = self.free.pop();
        if slot.is_none() {
            self.waiters.push(conn);
        }
        slot
    }

    /// Buffer `slot` is free again: returns the connections to wake.
    pub fn release(&mut self, slot: u32) -> Vec<usize> {
        self.free.push(slot);
        std::mem::take(&mut self.waiters)
    }
}

/// A chunk of ours the peer is READing: kept (and registered) until it says it is done.
struct Exposed {
    _mr: Option<Arc<MemoryRegion>>,
    _chunk: Bytes,
}

/// One connection's sending state.
pub(super) struct Sender {
    credits: Credits,
    /// The largest record: the peer's receive buffer, and our send buffer.
    record_max: usize,
    /// Per posted SEND, in order: its send buffer and the arena payloads it gathers.
    sends: VecDeque<(u32, Vec<Bytes>)>,
    /// Our chunks the peer is READing, oldest first (it acknowledges them in order).
    exposed: VecDeque<Exposed>,
    /// READ descriptors of the peer's fully read and not acknowledged yet.
    reads_done_owed: u16,
    /// Data waited for credits since the last SEND (counted once per wait).
    starved: bool,
}

impl Sender {
    /// No credits until [`connect`](Self::connect).
    pub fn new() -> Sender {
        Sender {
            credits: Credits::new(0),
            record_max: 0,
            sends: VecDeque::new(),
            exposed: VecDeque::new(),
            reads_done_owed: 0,
            starved: false,
        }
    }

    /// The peer's hello arrived: its receive buffers are our credits (no more than our send
    /// queue holds, less the room kept for updates), and their size bounds our records.
    pub fn connect(&mut self, peer: &Hello, send_buffer: usize) {
        self.credits = Credits::new(peer.credits.min(verbs::SEND_DEPTH as u16 - 2));
        self.record_max = (peer.buffer_size as usize).min(send_buffer);
    }

    /// A record's acknowledgements from the peer: `credits` receive buffers reposted and
    /// `reads_done` of our READ descriptors fully read (their chunks are released).
    pub fn acknowledged(&mut self, credits: u16, reads_done: u16) -> Result<(), RecordError> {
        self.credits.returned(credits)?;
        if reads_done as usize > self.exposed.len() {
            return Err(RecordError::TooManyReads {
                acked: reads_done as u32,
                outstanding: self.exposed.len() as u32,
            });
        }
        self.exposed.drain(..reads_done as usize);
        Ok(())
    }

    /// We reposted a receive buffer: a credit owed to the peer.
    pub fn reposted(&mut self) {
        self.credits.reposted();
    }

    /// We finished READing one of the peer's descriptors: an acknowledgement owed to it.
    pub fn read_finished(&mut self) -> Result<(), String> {
        // The peer cannot make us owe more without our sending a record, as its READs wait
        // for its credits; a count past u16 would be a broken peer.
        self.reads_done_owed = self
            .reads_done_owed
            .checked_add(1)
            .ok_or("the peer's READ descriptors read and not acknowledged overflow u16")?;
        Ok(())
    }

    /// The oldest SEND completed: its send buffer (and the payloads it gathered) are free.
    pub fn send_completed(&mut self) -> Option<u32> {
        self.sends.pop_front().map(|(slot, _held)| slot)
    }

    /// No SEND in flight.
    pub fn is_idle(&self) -> bool {
        self.sends.is_empty()
    }

    /// The send buffers of SENDs that never completed (the connection is being freed).
    pub fn into_buffers(self) -> impl Iterator<Item = u32> {
        self.sends.into_iter().map(|(slot, _)| slot)
    }

    /// Posts SENDs for `q`'s bytes while credits and send buffers last, then a credit update
    /// if one is due and nothing else carried it.
    pub fn flush(
        &mut self,
        shared: &Shared,
        dev: &Device,
        bufs: &mut SendBuffers,
        link: &mut Link,
        q: &mut TxQueue,
    ) -> Result<(), String> {
        let o = &shared.rdma;
        let (read_min, our_credits) = (o.read_min, o.credits);
        let counters = &shared.counters;
        let lkey = dev.region.mr.lkey();
        // Payloads in the registered arena go out from where they are.
        let arena = shared
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
            if !self.credits.can_send_data() {
                if !self.starved {
                    self.starved = true;
                    bump(&counters.rdma_credit_waits, 1);
                }
                break;
            }
            let Some(slot) = bufs.take(link.conn()) else {
                break;
            };
            self.starved = false;
            let base = dev.region.slot_ptr(slot);
            let (body, consumed, mut sges, held) = if first.len() >= read_min {
                // Not sent: the peer READs it in place.
                let rkey = match in_arena(&first) {
                    Some((_, _, rkey)) => {
                        self.exposed.push_back(Exposed {
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
                        self.exposed.push_back(Exposed {
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
                let sges = Sges::new(base, header_len, lkey);
                (body, first.len(), sges, Vec::new())
            } else {
                let mut sges = Sges::new(base, HEADER_LEN, lkey);
                let arena_lkey = |c: &Bytes| in_arena(c).map(|(_, lkey, _)| lkey);
                // SAFETY: `base` is send buffer `slot`, `dev.region.slot` >= record_max bytes,
                // ours until its SEND completes.
                let f = unsafe {
                    fill_data(
                        &mut sges,
                        base,
                        self.record_max,
                        read_min,
                        q.chunks(),
                        arena_lkey,
                    )
                };
                bump(&counters.rdma_send_bytes, f.consumed as u64);
                bump(&counters.rdma_copied_bytes, f.copied as u64);
                (Body::Data, f.consumed, sges, f.held)
            };
            self.post(link, slot, body, sges.as_mut(), held)?;
            q.advance(consumed);
            sent_any = true;
        }
        let update_due = self.reads_done_owed > 0 || self.credits.update_due(our_credits);
        if !sent_any && update_due && self.credits.can_send_update() {
            if let Some(slot) = bufs.take(link.conn()) {
                let mut sges = Sges::new(dev.region.slot_ptr(slot), HEADER_LEN, lkey);
                self.post(link, slot, Body::Update, sges.as_mut(), Vec::new())?;
            }
        }
        Ok(())
    }

    /// Writes the record header (with the credits and READ completions owed) at the front of
    /// send buffer `slot`, whose first entry in `sges` it is, and posts the SEND; `held`
    /// stays alive until it completes.
    fn post(
        &mut self,
        link: &mut Link,
        slot: u32,
        body: Body,
        sges: &mut [ibv::ibv_sge],
        held: Vec<Bytes>,
    ) -> Result<(), String> {
        let header = Header {
            body,
            credits: self.credits.spend(),
            reads_done: std::mem::take(&mut self.reads_done_owed),
        };
        // SAFETY: the first entry starts with the header's room (the whole header: 8 bytes,
        // or 24 with a READ descriptor) at the front of the send buffer, ours until the SEND
        // completes.
        let room = unsafe {
            std::slice::from_raw_parts_mut(sges[0].addr as *mut u8, sges[0].length as usize)
        };
        header.encode(room);
        link.post_send(slot, sges)
            .map_err(|e| format!("posting a SEND: {e}"))?;
        self.sends.push_back((slot, held));
        Ok(())
    }
}

/// What [`fill_data`] put in a record.
struct Filled {
    /// Stream bytes the record carries.
    consumed: usize,
    /// Of which copied into the send buffer (the rest is gathered from the arena).
    copied: usize,
    /// Arena payloads the SEND gathers: kept until it completes.
    held: Vec<Bytes>,
}

/// Puts the leading small chunks of `chunks` into one data record after its header: arena
/// payloads (`arena_lkey` gives their key) are gathered whole, the rest copied into the send
/// buffer at `base`. Stops at a chunk for READ (`read_min`), a full record (`record_max`)
/// or a full scatter-gather list.
///
/// # Safety
/// `base` must be valid for writes of `record_max` bytes and be the buffer `sges` starts in.
unsafe fn fill_data<'a>(
    sges: &mut Sges,
    base: *mut u8,
    record_max: usize,
    read_min: usize,
    chunks: impl Iterator<Item = &'a Bytes>,
    arena_lkey: impl Fn(&Bytes) -> Option<u32>,
) -> Filled {
    let lkey = sges.list[0].lkey;
    let mut used = HEADER_LEN;
    let mut f = Filled {
        consumed: 0,
        copied: 0,
        held: Vec::new(),
    };
    for chunk in chunks {
        let take = chunk.len().min(record_max - used);
        if take == 0 || chunk.len() >= read_min {
            break;
        }
        let gathered = match arena_lkey(chunk).filter(|_| take == chunk.len()) {
            Some(arena_lkey) => sges.push(chunk.as_ptr(), take, arena_lkey),
            None => false,
        };
        if gathered {
            f.held.push(chunk.clone());
        } else {
            // SAFETY: `used + take` stays within the record (record_max), which the caller
            // vouches for.
            let at = unsafe { base.add(used) };
            if !sges.push(at, take, lkey) {
                break; // the list is full: the rest goes in the next record
            }
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), at, take) };
            used += take;
            f.copied += take;
        }
        f.consumed += take;
        if take < chunk.len() {
            break;
        }
    }
    f
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_buffers_wake_their_waiters_once() {
        let mut b = SendBuffers::new(2);
        assert_eq!(b.take(7), Some(0));
        assert_eq!(b.take(8), Some(1));
        assert_eq!(b.take(7), None);
        assert_eq!(b.take(9), None);
        assert_eq!(b.release(1), vec![7, 9]);
        assert_eq!(b.release(0), Vec::<usize>::new());
        assert_eq!(b.take(7), Some(0));
    }

    fn hello(credits: u16, buffer_size: u32) -> Hello {
        Hello {
            qpn: 1,
            psn: 2,
            lid: 0,
            gid: [0; 16],
            credits,
            buffer_size,
            mtu: 5,
            placement: 0,
        }
    }

    #[test]
    fn acknowledgements_release_exposed_chunks_and_bad_ones_are_errors() {
        let mut s = Sender::new();
        s.connect(&hello(4, 8192), 4096);
        assert_eq!(s.record_max, 4096);
        for _ in 0..2 {
            s.exposed.push_back(Exposed {
                _mr: None,
                _chunk: Bytes::from_static(b"chunk"),
            });
        }
        s.credits.spend();
        s.acknowledged(1, 1).unwrap();
        assert_eq!(s.exposed.len(), 1);
        assert_eq!(
            s.acknowledged(0, 2),
            Err(RecordError::TooManyReads {
                acked: 2,
                outstanding: 1
            })
        );
        assert!(matches!(
            s.acknowledged(u16::MAX, 0),
            Err(RecordError::TooManyCredits { .. })
        ));
    }

    #[test]
    fn peer_credits_are_capped_by_our_send_queue() {
        let mut s = Sender::new();
        s.connect(&hello(u16::MAX, 1 << 20), 8192);
        assert_eq!(s.record_max, 8192);
        // Spend everything a data SEND may: the cap leaves room in the send queue.
        let mut sent = 0;
        while s.credits.can_send_data() {
            s.credits.spend();
            sent += 1;
        }
        assert_eq!(sent, verbs::SEND_DEPTH - 3);
    }

    #[test]
    fn reads_owed_count_up_and_stop_at_the_limit() {
        let mut s = Sender::new();
        s.reads_done_owed = u16::MAX - 1;
        s.read_finished().unwrap();
        let e = s.read_finished().unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        assert_eq!(s.reads_done_owed, u16::MAX);
    }

    #[test]
    fn sges_merge_adjacent_entries_and_stop_when_full() {
        let mut buf = [0u8; 64];
        let base = buf.as_mut_ptr();
        let mut s = Sges::new(base, 8, 1);
        // Right after the header, same key: one entry.
        assert!(s.push(base.wrapping_add(8), 10, 1));
        assert_eq!(s.len, 1);
        assert_eq!(s.list[0].length, 18);
        // Elsewhere (another key): new entries until the list is full.
        for k in 1..MAX_SGE {
            assert!(s.push(base.wrapping_add(40 + k), 1, 2 + k as u32));
        }
        assert_eq!(s.len, MAX_SGE);
        assert!(!s.push(base.wrapping_add(60), 1, 99));
        assert_eq!(s.as_mut().len(), MAX_SGE);
    }

    #[test]
    fn data_records_copy_small_chunks_gather_arena_ones_and_stop_before_reads() {
        let record_max = 64;
        let mut slot = vec![0u8; record_max];
        let base = slot.as_mut_ptr();
        let arena = Bytes::from(vec![b'a'; 16]);
        let chunks = [
            Bytes::from_static(b"hello "),
            arena.clone(),
            Bytes::from_static(b"world"),
            Bytes::from(vec![b'r'; 100]), // >= read_min: left for a READ descriptor
        ];
        let is_arena = |c: &Bytes| (c.as_ptr() == arena.as_ptr()).then_some(77);
        let mut sges = Sges::new(base, HEADER_LEN, 5);
        // SAFETY: `slot` holds record_max bytes.
        let f = unsafe { fill_data(&mut sges, base, record_max, 50, chunks.iter(), is_arena) };
        assert_eq!(f.consumed, 6 + 16 + 5);
        assert_eq!(f.copied, 11);
        assert_eq!(f.held.len(), 1);
        assert_eq!(&slot[HEADER_LEN..HEADER_LEN + 6], b"hello ");
        // header + "hello ", the arena payload, then "world" after "hello " in the buffer.
        let l = sges.as_mut();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].length, l[0].lkey), (HEADER_LEN as u32 + 6, 5));
        assert_eq!((l[1].length, l[1].lkey), (16, 77));
        assert_eq!(l[2].addr, base as u64 + HEADER_LEN as u64 + 6);
        assert_eq!(&slot[HEADER_LEN + 6..HEADER_LEN + 11], b"world");
    }

    #[test]
    fn a_full_record_takes_part_of_a_chunk() {
        let record_max = 32;
        let mut slot = vec![0u8; record_max];
        let base = slot.as_mut_ptr();
        let chunks = [Bytes::from(vec![7u8; 40]), Bytes::from_static(b"next")];
        let mut sges = Sges::new(base, HEADER_LEN, 5);
        // SAFETY: `slot` holds record_max bytes.
        let f = unsafe { fill_data(&mut sges, base, record_max, 1000, chunks.iter(), |_| None) };
        assert_eq!(f.consumed, record_max - HEADER_LEN);
        assert_eq!(f.copied, record_max - HEADER_LEN);
        assert_eq!(sges.as_mut()[0].length as usize, record_max);
        assert!(slot[HEADER_LEN..].iter().all(|&b| b == 7));
    }
}
