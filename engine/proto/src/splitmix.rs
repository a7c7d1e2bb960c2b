//! splitmix64 (Vigna): the one tiny seeded generator the pure code uses, for the
//! protocol's join jitter, the simulator's seed derivation and the tests' inputs. A
//! fixed public algorithm, so that a seed replays bit-for-bit after any `cargo update`.

/// Advances `state` and returns the next value.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded generator for tests, so that every failure replays.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform enough below `n` for test inputs (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
