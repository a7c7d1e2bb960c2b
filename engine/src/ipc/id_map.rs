//! Maps keyed by engine-assigned u64 ids (connection ids, pool offsets), looked up once
//! per event on the hot path.
//!
//! The keys are chosen by the engine, not by clients, so SipHash's resistance to
//! chosen-key flooding buys nothing here; a multiplicative (Fibonacci) hash spreads
//! sequential ids and 4 KiB-aligned offsets over the whole 64 bits, which the table's
//! probing needs, for a fraction of the cost.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` from an engine-assigned u64 id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default, Clone, Copy, Debug)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; kept correct for any other key all the same.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_offsets_spread_over_the_high_bits() {
        let mut tops = std::collections::HashSet::new();
        for id in 0..128u64 {
            let mut h = IdHasher::default();
            h.write_u64(id * 4096);
            tops.insert(h.finish() >> 57);
        }
        // 7-bit tags (what the table compares first): sequential keys must not share one.
        assert!(tops.len() > 64, "only {} distinct tags", tops.len());
        let mut map: IdMap<u64> = IdMap::default();
        for id in 0..1000u64 {
            map.insert(id, id * 2);
        }
        assert!((0..1000u64).all(|id| map.get(&id) == Some(&(id * 2))));
    }
}
