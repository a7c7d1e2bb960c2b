//! The workload's messages: each payload names its sender incarnation and counter,
//! states its own length and carries a checksum of its contents, so that the checkers
//! can identify every delivered message and verify it arrived intact.
//!
//! Layout (little-endian), [`HEADER_BYTES`] bytes then filler:
//!
//! ```text
//!  0      4      8      12             20     24             32
//! +------+------+------+--------------+------+--------------+--------------
//! |magic | node | inc  |   counter    | len  |   checksum   | filler ...
//! +------+------+------+--------------+------+--------------+--------------
//! ```
//!
//! The filler is a deterministic function of the id; the checksum covers it.

use std::time::Duration;

use bytes::{BufMut, Bytes};

use super::rng::{Rng, splitmix64};
use super::trace::{Integrity, MsgId};
use ringcast_proto::totem::Guarantee;

pub const HEADER_BYTES: usize = 32;
const MAGIC: u32 = 0x4d53_4352; // "RCSM"

/// How the nodes submit messages.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadOptions {
    /// Mean messages per node per virtual second (inter-arrival uniform in
    /// `0..2/rate`; no transcendental functions, so replays are identical on any libm).
    pub rate: f64,
    /// Fraction of 1–20 KiB messages.
    pub medium_fraction: f64,
    /// Fraction of 100 KiB–2 MiB messages (fragmented over many datagrams).
    pub large_fraction: f64,
    /// Fraction sent SAFE.
    pub safe_fraction: f64,
    /// Delay before retrying a submit that returned TryAgain.
    pub retry_after: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions {
            rate: 100.0,
            medium_fraction: 0.08,
            large_fraction: 0.003,
            safe_fraction: 0.1,
            retry_after: Duration::from_millis(20),
        }
    }
}

impl WorkloadOptions {
    /// The time until a node's next submit.
    pub fn next_interval(&self, rng: &mut Rng) -> Duration {
        if self.rate <= 0.0 {
            return Duration::MAX;
        }
        let mean_ns = 1e9 / self.rate;
        Duration::from_nanos((rng.unit() * 2.0 * mean_ns) as u64 + 1)
    }

    /// Length and guarantee of the next message: mostly small, some medium, rarely
    /// large. Lengths start at the header size.
    pub fn next_shape(&self, rng: &mut Rng) -> (usize, Guarantee) {
        let u = rng.unit();
        let len = if u < self.large_fraction {
            rng.range(100 << 10, 2 << 20)
        } else if u < self.large_fraction + self.medium_fraction {
            rng.range(1 << 10, 20 << 10)
        } else {
            rng.range(HEADER_BYTES as u64, 200)
        } as usize;
        let guarantee = if rng.chance(self.safe_fraction) {
            Guarantee::Safe
        } else {
            Guarantee::Agreed
        };
        (len, guarantee)
    }
}

/// A 64-bit checksum over bytes, 8 at a time (FNV-1a style mixing per word plus a
/// final avalanche): fast enough for 2 MiB payloads in debug builds.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= data.len() as u64;
    let mut state = h;
    splitmix64(&mut state)
}

/// Builds the payload of message `id` of `len` bytes (at least [`HEADER_BYTES`]);
/// returns it with its checksum. Written in place: one allocation, one pass over the
/// filler to checksum it.
pub fn encode(id: MsgId, len: usize) -> (Bytes, u64) {
    let len = len.max(HEADER_BYTES);
    let mut out = vec![0u8; len];
    let mut state = (u64::from(id.node) << 40) ^ (u64::from(id.incarnation) << 32) ^ id.counter;
    let mut words = out[HEADER_BYTES..].chunks_exact_mut(8);
    for word in &mut words {
        word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let rest = words.into_remainder();
    let last = splitmix64(&mut state).to_le_bytes();
    let rest_len = rest.len();
    rest.copy_from_slice(&last[..rest_len]);
    let sum = checksum(&out[HEADER_BYTES..]);
    let mut header = &mut out[..HEADER_BYTES];
    header.put_u32_le(MAGIC);
    header.put_u32_le(id.node);
    header.put_u32_le(id.incarnation);
    header.put_u64_le(id.counter);
    header.put_u32_le(len as u32);
    header.put_u64_le(sum);
    (Bytes::from(out), sum)
}

/// The id a payload claims in its header, unchecked.
pub fn claimed_id(payload: &[u8]) -> Option<MsgId> {
    if payload.len() < HEADER_BYTES {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4"));
    (u32_at(0) == MAGIC).then(|| MsgId {
        node: u32_at(4),
        incarnation: u32_at(8),
        counter: u64::from_le_bytes(payload[12..20].try_into().expect("8")),
    })
}

/// [`decode`] for a payload the caller found byte-for-byte equal to one [`encode`]
/// produced: the same answer without checksumming the filler again.
pub fn decode_verbatim(payload: &[u8]) -> (Option<MsgId>, usize, u64, Integrity) {
    let sum = u64::from_le_bytes(payload[24..32].try_into().expect("8"));
    (claimed_id(payload), payload.len(), sum, Integrity::Ok)
}

/// What a delivered payload says about itself: its id, stated length and checksum, and
/// whether it is intact.
pub fn decode(payload: &[u8]) -> (Option<MsgId>, usize, u64, Integrity) {
    if payload.len() < HEADER_BYTES {
        return (None, payload.len(), 0, Integrity::Unparseable);
    }
    let u32_at = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4"));
    let u64_at = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8"));
    if u32_at(0) != MAGIC {
        return (None, payload.len(), 0, Integrity::Unparseable);
    }
    let id = MsgId {
        node: u32_at(4),
        incarnation: u32_at(8),
        counter: u64_at(12),
    };
    let len = u32_at(20) as usize;
    let sum = u64_at(24);
    let integrity = if len != payload.len() {
        Integrity::BadLength
    } else if checksum(&payload[HEADER_BYTES..]) != sum {
        Integrity::BadChecksum
    } else {
        Integrity::Ok
    };
    (Some(id), len, sum, integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption_is_detected() {
        let id = MsgId {
            node: 3,
            incarnation: 1,
            counter: 77,
        };
        for len in [0, 1, 32, 33, 39, 40, 200, 20_000] {
            let (payload, sum) = encode(id, len);
            assert_eq!(payload.len(), len.max(HEADER_BYTES));
            assert_eq!(
                decode(&payload),
                (Some(id), payload.len(), sum, Integrity::Ok)
            );
            let mut bad = payload.to_vec();
            *bad.last_mut().unwrap() ^= 1;
            // Header only: the last byte belongs to the stored checksum.
            assert_eq!(decode(&bad).3, Integrity::BadChecksum);
            assert_eq!(decode(&payload[..payload.len() - 1]).3, {
                if payload.len() > HEADER_BYTES {
                    Integrity::BadLength
                } else {
                    Integrity::Unparseable
                }
            });
        }
        assert_eq!(decode(b"hello").3, Integrity::Unparseable);
        let (payload, _) = encode(id, 5000);
        assert_eq!(decode_verbatim(&payload), decode(&payload));
        assert_eq!(claimed_id(&payload), Some(id));
        assert_eq!(decode(&[0u8; 64]).3, Integrity::Unparseable);
    }

    #[test]
    fn shapes_follow_the_mix() {
        let options = WorkloadOptions::default();
        let mut rng = Rng::new(1);
        let (mut small, mut medium, mut large, mut safe) = (0, 0, 0, 0);
        for _ in 0..100_000 {
            let (len, g) = options.next_shape(&mut rng);
            match len {
                0..=200 => small += 1,
                1024..=20480 => medium += 1,
                _ => {
                    assert!(((100 << 10)..=(2 << 20)).contains(&len));
                    large += 1
                }
            }
            safe += usize::from(g == Guarantee::Safe);
        }
        assert!(
            small > 90_000 && medium > 7_000 && large > 200,
            "{small} {medium} {large}"
        );
        assert!((9_000..11_000).contains(&safe));
    }
}
