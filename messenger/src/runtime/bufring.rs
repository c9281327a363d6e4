//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel picks one of these buffers
//! only when bytes arrive, so idle connections hold no receive memory.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    slab: Box<[u8]>,
    entries: u16,
    buf_size: usize,
    tail: u16,
    pub bgid: u16,
}

impl BufRing {
    /// `entries` (a power of two) buffers of `buf_size` bytes, registered as group `bgid`.
    pub fn new(ring: &IoUring, bgid: u16, entries: u16, buf_size: usize) -> io::Result<Self> {
        assert!(entries.is_power_of_two());
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .expect("valid layout");
        // SAFETY: non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { alloc_zeroed(ring_layout) } as *mut BufRingEntry;
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut me = BufRing {
            ring: ptr,
            ring_layout,
            slab: vec![0u8; entries as usize * buf_size].into_boxed_slice(),
            entries,
            buf_size,
            tail: 0,
            bgid,
        };
        // SAFETY: the ring memory is page aligned, sized for `entries`, and lives as long as
        // `me`, which the worker drops only after its io_uring (field order in Worker).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        let addr = self.slab.as_ptr() as u64 + bid as u64 * self.buf_size as u64;
        // SAFETY: idx < entries; the entry is ours to write until the tail is published.
        let e = unsafe { &mut *self.ring.add(idx) };
        e.set_addr(addr);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // The tail shares its slot with entry 0's reserved field (offset 14).
        // SAFETY: the ring base is valid and aligned; the kernel reads this field atomically.
        let tail = unsafe { &*((self.ring as *mut u8).add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The bytes the kernel put in buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.buf_size;
        &self.slab[start..start + len.min(self.buf_size)]
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ring as *mut u8, self.ring_layout) };
    }
}
