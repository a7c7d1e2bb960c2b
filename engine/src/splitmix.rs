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
