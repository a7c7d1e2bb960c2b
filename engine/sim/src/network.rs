//! The simulated network: datagrams in flight, ordered by (delivery time, sequence
//! number), with seeded loss, duplication, reordering, jitter and partitions (in the
//! spirit of TigerBeetle's packet simulator and raft-rs's `harness/src/network.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use bytes::Bytes;

use super::rng::Rng;
use ringcast_proto::totem::{Instant, NodeId};

/// Network behaviour. Probabilities are per datagram copy (a multicast is one copy per
/// destination, each decided on its own).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkOptions {
    /// Probability that a copy is lost.
    pub drop: f64,
    /// Probability that a copy arrives twice (the duplicate with its own delay).
    pub duplicate: f64,
    /// Probability that a copy gets an extra delay of up to `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Every copy takes `delay_min..=delay_max` (uniform).
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Loss probability while a loss burst is on.
    pub burst_drop: f64,
    /// Loss probability of unicast datagrams (tokens, commit tokens) while token-only
    /// loss is on.
    pub token_drop: f64,
    /// A broadcast also reaches its sender, as a datagram to every node including
    /// itself does. Off models ringcastd's unicast fan-out, which skips its own
    /// address because Totem ignores its own broadcasts coming back.
    pub loopback: bool,
}

impl Default for NetworkOptions {
    fn default() -> NetworkOptions {
        NetworkOptions {
            drop: 0.005,
            duplicate: 0.005,
            reorder: 0.02,
            reorder_delay: Duration::from_millis(2),
            delay_min: Duration::from_micros(50),
            delay_max: Duration::from_micros(500),
            burst_drop: 0.3,
            token_drop: 0.5,
            loopback: true,
        }
    }
}

impl NetworkOptions {
    /// A perfect network apart from delay and jitter.
    pub fn lossless(&self) -> NetworkOptions {
        NetworkOptions {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            burst_drop: 0.0,
            token_drop: 0.0,
            ..self.clone()
        }
    }
}

/// One datagram copy on its way to one node.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub at: Instant,
    /// Tie-breaker: datagrams due at the same instant arrive in the order sent.
    pub seq: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub unicast: bool,
    pub payload: Bytes,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &InFlight) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &InFlight) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &InFlight) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Counters of what the network did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub dropped_partition: u64,
    pub dropped_dead: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

pub struct Network {
    pub options: NetworkOptions,
    rng: Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    /// `group[id]`: the partition side of node `id` (index 0 unused). All equal when
    /// healed.
    group: Vec<u32>,
    pub burst: bool,
    pub token_loss: bool,
    pub stats: NetworkStats,
}

impl Network {
    pub fn new(options: NetworkOptions, seed: u64, nodes: usize) -> Network {
        Network {
            options,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            next_seq: 0,
            group: vec![0; nodes + 1],
            burst: false,
            token_loss: false,
            stats: NetworkStats::default(),
        }
    }

    /// Splits the nodes into the given sides; a node not listed is on a side of its own.
    pub fn partition(&mut self, sides: &[Vec<NodeId>]) {
        let alone = sides.len() as u32 + 1;
        for (id, group) in self.group.iter_mut().enumerate() {
            *group = alone + id as u32;
        }
        for (side, members) in sides.iter().enumerate() {
            for &id in members {
                self.group[id as usize] = side as u32;
            }
        }
    }

    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    pub fn is_partitioned(&self) -> bool {
        self.group[1..].windows(2).any(|w| w[0] != w[1])
    }

    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.group[a as usize] == self.group[b as usize]
    }

    /// Sends one copy from `from` to `to`, deciding its fate now. A node's copy to
    /// itself is the loopback: never lost or partitioned, only delayed.
    pub fn send(&mut self, now: Instant, from: NodeId, to: NodeId, unicast: bool, payload: Bytes) {
        self.stats.sent += 1;
        let loopback = from == to;
        if !loopback {
            let mut p = if self.burst {
                self.options.burst_drop.max(self.options.drop)
            } else {
                self.options.drop
            };
            if unicast && self.token_loss {
                p = p.max(self.options.token_drop);
            }
            if self.rng.chance(p) {
                self.stats.dropped += 1;
                return;
            }
        }
        let copies = if !loopback && self.rng.chance(self.options.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now + self.delay(loopback);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse(InFlight {
                at,
                seq,
                from,
                to,
                unicast,
                payload: payload.clone(),
            }));
        }
    }

    fn delay(&mut self, loopback: bool) -> Duration {
        let lo = self.options.delay_min.as_nanos() as u64;
        let hi = (self.options.delay_max.as_nanos() as u64).max(lo);
        if loopback {
            return Duration::from_nanos(lo);
        }
        let mut nanos = self.rng.range(lo, hi);
        if self.rng.chance(self.options.reorder) {
            self.stats.reordered += 1;
            nanos += self
                .rng
                .below(self.options.reorder_delay.as_nanos() as u64 + 1);
        }
        Duration::from_nanos(nanos)
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(d)| d.at)
    }

    /// The next datagram due at or before `now` that may still arrive (datagrams across
    /// a partition are dropped on arrival, so a partition cuts datagrams in flight).
    pub fn pop_due(&mut self, now: Instant) -> Option<InFlight> {
        while self.queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(datagram) = self.queue.pop().expect("peeked");
            if datagram.from != datagram.to && !self.connected(datagram.from, datagram.to) {
                self.stats.dropped_partition += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some(datagram);
        }
        None
    }

    /// A node crashed: whatever was on its way to it is lost.
    pub fn drop_to(&mut self, node: NodeId) {
        let before = self.queue.len();
        self.queue.retain(|Reverse(d)| d.to != node);
        self.stats.dropped_dead += (before - self.queue.len()) as u64;
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossless() -> NetworkOptions {
        NetworkOptions::default().lossless()
    }

    fn drain(net: &mut Network) -> Vec<InFlight> {
        let mut out = Vec::new();
        while let Some(at) = net.next_due() {
            if let Some(d) = net.pop_due(at) {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn delivers_in_time_order_with_jitter_bounds() {
        let mut net = Network::new(lossless(), 1, 3);
        for i in 0..100u8 {
            net.send(Instant::ZERO, 1, 2, false, Bytes::from(vec![i]));
        }
        let out = drain(&mut net);
        assert_eq!(out.len(), 100);
        assert!(
            out.windows(2)
                .all(|w| (w[0].at, w[0].seq) < (w[1].at, w[1].seq))
        );
        for d in &out {
            let ns = d.at.as_nanos();
            assert!((50_000..=500_000).contains(&ns), "{ns}");
        }
    }

    #[test]
    fn drop_and_duplicate_rates_are_roughly_right() {
        let options = NetworkOptions {
            drop: 0.2,
            duplicate: 0.1,
            ..lossless()
        };
        let mut net = Network::new(options, 2, 2);
        for _ in 0..10_000 {
            net.send(Instant::ZERO, 1, 2, false, Bytes::new());
        }
        let out = drain(&mut net).len();
        // 10 000 × 0.8 × 1.1 = 8800 expected.
        assert!((8_400..9_200).contains(&out), "{out}");
        assert!((1_800..2_200).contains(&(net.stats.dropped as usize)));
    }

    #[test]
    fn token_only_loss_spares_multicast_and_loopback() {
        let options = NetworkOptions {
            token_drop: 1.0,
            ..lossless()
        };
        let mut net = Network::new(options, 3, 2);
        net.token_loss = true;
        net.send(Instant::ZERO, 1, 2, true, Bytes::from_static(b"token"));
        net.send(Instant::ZERO, 1, 2, false, Bytes::from_static(b"mcast"));
        net.send(Instant::ZERO, 1, 1, true, Bytes::from_static(b"self"));
        let out: Vec<_> = drain(&mut net).into_iter().map(|d| d.payload).collect();
        assert_eq!(out.len(), 2);
        assert!(!out.contains(&Bytes::from_static(b"token")));
    }

    #[test]
    fn partition_cuts_in_flight_and_heal_restores() {
        let mut net = Network::new(lossless(), 4, 4);
        net.send(Instant::ZERO, 1, 3, false, Bytes::new());
        net.send(Instant::ZERO, 1, 2, false, Bytes::new());
        net.partition(&[vec![1, 2], vec![3, 4]]);
        assert!(net.is_partitioned());
        let out = drain(&mut net);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 2);
        assert_eq!(net.stats.dropped_partition, 1);
        net.heal();
        assert!(!net.is_partitioned());
        net.send(Instant::ZERO, 1, 3, false, Bytes::new());
        assert_eq!(drain(&mut net).len(), 1);
    }

    #[test]
    fn crash_drops_what_was_on_its_way() {
        let mut net = Network::new(lossless(), 5, 3);
        net.send(Instant::ZERO, 1, 3, false, Bytes::new());
        net.send(Instant::ZERO, 3, 1, false, Bytes::new());
        net.drop_to(3);
        let out = drain(&mut net);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 1);
    }

    #[test]
    fn same_seed_same_fate() {
        let options = NetworkOptions {
            drop: 0.3,
            duplicate: 0.3,
            reorder: 0.3,
            ..NetworkOptions::default()
        };
        let run = |seed| {
            let mut net = Network::new(options.clone(), seed, 3);
            for i in 0..200u32 {
                net.send(
                    Instant::ZERO,
                    1 + i % 3,
                    1 + (i + 1) % 3,
                    false,
                    Bytes::new(),
                );
            }
            drain(&mut net)
                .into_iter()
                .map(|d| (d.at, d.from, d.to))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
