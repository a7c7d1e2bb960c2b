//! The internal load generator, a benchmark and test hook (feature `test-hooks`): the
//! engine submits messages of its own at a set rate and checks the ones it delivers, so
//! that ordered throughput can be measured without clients.
//!
//! Every generated message starts with a 24-byte header, little-endian:
//!
//! ```text
//!  0     1      4        8                16               24
//!  +-----+------+--------+----------------+----------------+---------- - -
//!  | svc | 0 0 0| sender | epoch (u64)    | seq (u64)      | filler
//!  +-----+------+--------+----------------+----------------+---------- - -
//! ```
//!
//! `svc` is [`ServiceId::LoadGenerator`]: the engine hands a delivery to the checker
//! because its service id says it is the generator's, as it hands CPG's to the CPG
//! service (docs/wire-format.md).
//!
//! `epoch` is the sender's start time, so that a restarted sender starts a new sequence;
//! `seq` counts from 1. The checker counts, per sender, deliveries in FIFO order, gaps
//! (a sender's messages never delivered here, legitimate only across a configuration
//! change) and order violations (a duplicate or a step back: never legitimate).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::config::LoadSettings;
use crate::service::ServiceId;
use crate::totem::{Instant, NodeId};

/// Bytes of the generator's header.
pub const HEADER_BYTES: usize = 24;
/// Most senders the checker tracks (bounded by the largest ring).
const MAX_SENDERS: usize = crate::wire::MAX_MEMBERS * 4;

/// Generates messages at a rate.
#[derive(Debug)]
pub struct LoadGenerator {
    node_id: NodeId,
    epoch: u64,
    size_bytes: usize,
    rate_per_s: u64,
    count: u64,
    /// Messages generated so far (the last `seq`).
    generated: u64,
    /// When generation started (the first call to `next`).
    started: Option<Instant>,
    /// A message refused with `TryAgain`, offered again first.
    pending: Option<Bytes>,
}

impl LoadGenerator {
    /// `None` when the settings disable the generator.
    pub fn new(settings: &LoadSettings, node_id: NodeId, epoch: u64) -> Option<LoadGenerator> {
        (settings.size_bytes >= HEADER_BYTES).then_some(LoadGenerator {
            node_id,
            epoch,
            size_bytes: settings.size_bytes,
            rate_per_s: settings.rate_per_s,
            count: settings.count,
            generated: 0,
            started: None,
            pending: None,
        })
    }

    pub fn generated(&self) -> u64 {
        self.generated
    }

    fn allowed_by_rate(&self, now: Instant) -> u64 {
        let limit = if self.count == 0 {
            u64::MAX
        } else {
            self.count
        };
        if self.rate_per_s == 0 {
            return limit;
        }
        let started = self.started.unwrap_or(now);
        let elapsed = now.saturating_since(started);
        let allowed = (elapsed.as_nanos() * u128::from(self.rate_per_s) / 1_000_000_000) + 1;
        u64::try_from(allowed).unwrap_or(u64::MAX).min(limit)
    }

    /// The next message to submit, if one is due at `now`. Hand it back with
    /// [`LoadGenerator::refused`] if the node did not take it.
    pub fn next(&mut self, now: Instant) -> Option<Bytes> {
        self.started.get_or_insert(now);
        if let Some(pending) = self.pending.take() {
            return Some(pending);
        }
        if self.generated >= self.allowed_by_rate(now) {
            return None;
        }
        self.generated += 1;
        let mut buf = BytesMut::with_capacity(self.size_bytes);
        buf.put_u8(ServiceId::LoadGenerator as u8);
        buf.put_bytes(0, 3);
        buf.put_u32_le(self.node_id);
        buf.put_u64_le(self.epoch);
        buf.put_u64_le(self.generated);
        buf.resize(self.size_bytes, 0xa5);
        Some(buf.freeze())
    }

    /// The node refused `message` (send queue full): offer it again later.
    pub fn refused(&mut self, message: Bytes) {
        self.pending = Some(message);
    }

    /// When the next message falls due, if later than `now` (for the idle sleep).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.pending.is_some() || self.rate_per_s == 0 {
            return None;
        }
        if self.count != 0 && self.generated >= self.count {
            return None;
        }
        let started = self.started?;
        let nanos = u128::from(self.generated) * 1_000_000_000 / u128::from(self.rate_per_s);
        let at = started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        (at > now).then_some(at)
    }
}

/// What the checker made of one delivery.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not a generated message: too short, or of another service.
    Malformed,
    /// From a sender beyond the most the checker tracks: not checked.
    Untracked,
    /// The next message of its sender.
    InOrder,
    /// In order, after `missing` messages of that sender that were not delivered here.
    Gap { missing: u64 },
    /// A duplicate or a message older than one already delivered.
    OutOfOrder,
}

/// The header of a generated message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The node whose generator made it.
    pub sender: NodeId,
    /// That generator's start (one per engine start).
    pub epoch: u64,
    /// Its position in the generator's sequence, from 1.
    pub seq: u64,
}

impl Generated {
    /// Reads the header of a message of the generator's service, or `None` when
    /// `payload` is too short or of another service.
    pub fn parse(payload: &[u8]) -> Option<Generated> {
        let header = payload.get(..HEADER_BYTES)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        (ServiceId::of(header) == Some(ServiceId::LoadGenerator)).then(|| Generated {
            sender: u32_at(4),
            epoch: u64_at(8),
            seq: u64_at(16),
        })
    }
}

/// Checks delivered generated messages, per sender.
#[derive(Debug, Default)]
pub struct LoadChecker {
    /// Per sender: its epoch and the last seq delivered.
    last: HashMap<NodeId, (u64, u64)>,
}

impl LoadChecker {
    pub fn check(&mut self, payload: &[u8]) -> Check {
        let Some(Generated { sender, epoch, seq }) = Generated::parse(payload) else {
            return Check::Malformed;
        };
        if !self.last.contains_key(&sender) && self.last.len() >= MAX_SENDERS {
            return Check::Untracked;
        }
        let entry = self.last.entry(sender).or_insert((epoch, 0));
        if epoch > entry.0 {
            *entry = (epoch, 0);
        } else if epoch < entry.0 {
            return Check::OutOfOrder;
        }
        let last = entry.1;
        if seq <= last {
            return Check::OutOfOrder;
        }
        entry.1 = seq;
        match seq - last - 1 {
            0 => Check::InOrder,
            missing => Check::Gap { missing },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(size: usize, rate: u64, count: u64) -> LoadSettings {
        LoadSettings {
            size_bytes: size,
            rate_per_s: rate,
            count,
        }
    }

    #[test]
    fn rate_limits_and_counts() {
        let mut g = LoadGenerator::new(&settings(64, 1000, 5), 3, 7).unwrap();
        let t0 = Instant::from_nanos(1_000);
        let first = g.next(t0).unwrap();
        assert_eq!(first.len(), 64);
        assert!(g.next(t0).is_none(), "one per millisecond");
        assert_eq!(g.next_deadline(t0), Some(t0 + Duration::from_millis(1)));
        let t1 = t0 + Duration::from_millis(10);
        let mut n = 1;
        while g.next(t1).is_some() {
            n += 1;
        }
        assert_eq!(n, 5, "stops at count");
        assert_eq!(g.next_deadline(t1), None);
        assert!(LoadGenerator::new(&settings(0, 0, 0), 1, 1).is_none());
    }

    #[test]
    fn refused_messages_come_back_first() {
        let mut g = LoadGenerator::new(&settings(24, 0, 0), 1, 1).unwrap();
        let now = Instant::ZERO;
        let m = g.next(now).unwrap();
        g.refused(m.clone());
        assert_eq!(g.next(now), Some(m));
        assert_eq!(g.generated(), 1);
    }

    #[test]
    fn checker_sees_gaps_duplicates_and_restarts() {
        let mut a = LoadGenerator::new(&settings(30, 0, 0), 1, 10).unwrap();
        let mut c = LoadChecker::default();
        let now = Instant::ZERO;
        let m1 = a.next(now).unwrap();
        let _m2 = a.next(now).unwrap();
        let m3 = a.next(now).unwrap();
        assert_eq!(c.check(&m1), Check::InOrder);
        assert_eq!(c.check(&m3), Check::Gap { missing: 1 });
        assert_eq!(c.check(&m3), Check::OutOfOrder);
        assert_eq!(c.check(b"not generated"), Check::Malformed);
        assert_eq!(c.check(&m1[..HEADER_BYTES - 1]), Check::Malformed);
        assert_eq!(ServiceId::of(&m1), Some(ServiceId::LoadGenerator));
        // A restarted sender (newer epoch) starts again at 1.
        let mut b = LoadGenerator::new(&settings(30, 0, 0), 1, 11).unwrap();
        assert_eq!(c.check(&b.next(now).unwrap()), Check::InOrder);
        assert_eq!(c.check(&m1), Check::OutOfOrder);
    }
}
