//! What an endpoint numbers and names on its own: connection and session ids, the hasher for
//! maps keyed by them, and the seeded generator behind cookies and injected failures.

use std::collections::HashMap;

/// A hasher for maps keyed by ids this process allocated: they need no defence against
/// chosen keys, so SipHash's cost buys nothing. Maps keyed by what peers send keep SipHash.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Below this capacity a map keeps its room: small maps are not worth rehashing.
const SHRINK_FLOOR: usize = 64;

/// Gives back most of an id map's room once three quarters of it stand empty. A map keeps the
/// capacity of its busiest moment otherwise: 5 000 connections that came and went left their
/// server 16–26 MiB of empty table slots (`tests/slow_peers.rs`). Amortised: the shrunk map
/// keeps room for twice its length, so a rehash follows removals in proportion to it.
pub(crate) fn shrink_when_sparse<K: Eq + std::hash::Hash, V>(map: &mut IdMap<K, V>) {
    if map.capacity() > SHRINK_FLOOR && map.len() < map.capacity() / 4 {
        map.shrink_to((map.len() * 2).max(SHRINK_FLOOR));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// splitmix64: cookies and injected failures from a seed, deterministic for simulations.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A non-zero cookie (0 means "no session" on the wire).
    pub(super) fn cookie(&mut self) -> u64 {
        loop {
            let c = self.next();
            if c != 0 {
                return c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_empties_gives_its_room_back_and_a_small_one_keeps_it() {
        let mut map: IdMap<ConnId, [u8; 64]> = IdMap::default();
        for i in 0..5_000 {
            map.insert(ConnId(i), [0; 64]);
        }
        let peak = map.capacity();
        for i in 0..5_000 {
            map.remove(&ConnId(i));
            shrink_when_sparse(&mut map);
            // Never more than four times what it holds, past the floor.
            assert!(map.capacity() <= (4 * map.len()).max(2 * SHRINK_FLOOR));
            assert!(map.capacity() >= map.len());
        }
        assert!(
            map.capacity() <= 2 * SHRINK_FLOOR,
            "{} of {peak}",
            map.capacity()
        );
        let small = map.capacity();
        map.insert(ConnId(1), [0; 64]);
        map.remove(&ConnId(1));
        shrink_when_sparse(&mut map);
        assert_eq!(
            map.capacity(),
            small,
            "below the floor, nothing is rehashed"
        );
    }
}
