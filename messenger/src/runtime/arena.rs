//! The registered payload arena: one `memmap2` region per messenger (huge pages when the
//! system has them), registered as fixed buffer 0 with every worker's ring. Callers allocate
//! message payloads from it ([`crate::Messenger::alloc_payload`]); sends of arena payloads use
//! the fixed buffer (no per-send page pinning for zero-copy), and a payload returns to the arena
//! when its last `Bytes` is dropped.
//!
//! Allocation: power-of-two size classes from 4 KiB up to the arena size, carved from a bump
//! pointer, each class with its own free list. The lock is taken once per allocation and once
//! per release, never on the send path.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};

const MIN_CLASS: u32 = 12; // 4 KiB

pub struct Arena {
    map: MmapMut,
    base: usize,
    len: usize,
    free: Mutex<Free>,
}

struct Free {
    bump: usize,
    /// Free offsets per class (index = log2 of the size).
    lists: Vec<Vec<usize>>,
}

impl Arena {
    /// Maps `len` bytes (rounded up to 2 MiB), trying huge pages first.
    pub fn new(len: usize) -> std::io::Result<Arc<Arena>> {
        let len = len.div_ceil(2 << 20) * (2 << 20);
        let mut map = MmapOptions::new()
            .len(len)
            .huge(Some(21))
            .map_anon()
            .or_else(|_| MmapOptions::new().len(len).map_anon())?;
        let base = map.as_mut_ptr() as usize;
        Ok(Arc::new(Arena {
            map,
            base,
            len,
            free: Mutex::new(Free {
                bump: 0,
                lists: vec![Vec::new(); 64],
            }),
        }))
    }

    /// The region, for registration with a ring.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base as *mut libc::c_void,
            iov_len: self.len,
        }
    }

    /// Whether `ptr..ptr+len` lies inside the arena (then it can be sent as fixed buffer 0).
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let p = ptr as usize;
        p >= self.base && p + len <= self.base + self.len
    }

    fn class_of(len: usize) -> u32 {
        len.max(1)
            .next_power_of_two()
            .trailing_zeros()
            .max(MIN_CLASS)
    }

    /// A payload buffer of exactly `len` bytes, or None when the arena is exhausted.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<ArenaBuf> {
        let class = Self::class_of(len);
        let size = 1usize << class;
        if size > self.len {
            return None;
        }
        let mut f = self.free.lock().expect("not poisoned");
        let offset = match f.lists[class as usize].pop() {
            Some(o) => o,
            None => {
                // Keep every block aligned to its size.
                let start = f.bump.div_ceil(size) * size;
                if start + size > self.len {
                    return None;
                }
                f.bump = start + size;
                start
            }
        };
        Some(ArenaBuf {
            arena: self.clone(),
            offset,
            len,
            class,
        })
    }

    fn release(&self, offset: usize, class: u32) {
        self.free.lock().expect("not poisoned").lists[class as usize].push(offset);
    }
}

/// A payload buffer in the arena. Fill it, then [`freeze`](ArenaBuf::freeze) it into `Bytes`.
pub struct ArenaBuf {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
    class: u32,
}

impl ArenaBuf {
    /// The payload as `Bytes`; the block returns to the arena when the last clone drops.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for ArenaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.arena.map[self.offset..self.offset + self.len]
    }
}

impl DerefMut for ArenaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (o, l) = (self.offset, self.len);
        // SAFETY: blocks never overlap, and this buffer is the only owner of its block until
        // it is frozen (after which only shared access exists). The map is not resized.
        unsafe { std::slice::from_raw_parts_mut((self.arena.base + o) as *mut u8, l) }
    }
}

impl AsRef<[u8]> for ArenaBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        self.arena.release(self.offset, self.class);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_and_never_overlap() {
        let a = Arena::new(4 << 20).unwrap();
        let mut x = a.alloc(5000).unwrap();
        x.fill(1);
        let mut y = a.alloc(5000).unwrap();
        y.fill(2);
        assert!(x.iter().all(|b| *b == 1), "y did not overwrite x");
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        assert_ne!(xp, yp);
        let frozen = x.freeze();
        assert!(a.contains(frozen.as_ptr(), frozen.len()));
        let clone = frozen.clone();
        drop(frozen);
        assert_ne!(a.alloc(5000).unwrap().as_ptr(), xp, "still held by a clone");
        drop(clone);
        assert_eq!(a.alloc(5000).unwrap().as_ptr(), xp, "returned to its class");
        drop(y);
        assert!(a.alloc(8 << 20).is_none(), "bigger than the arena");
    }
}
