//! One ring's message store and cursors: what has been received (`my_aru`, `high_seq`),
//! delivered (`delivered`), and is known to be held by every member (`safe_upto`).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{NodeId, RingId};
use crate::wire::Recovered;
use crate::wire::gather::Gather;

/// A message of this ring, kept until every member holds it and it has been delivered
/// here, so that any holder can serve a retransmission request (Totem §3.2).
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub origin: NodeId,
    pub safe: bool,
    /// Set on a new-ring message that carries an old-ring one during recovery: it is
    /// ordered like any other but delivers nothing itself.
    pub recovered: Option<Recovered>,
    pub payload: Gather,
    /// The datagram as it went on the wire, resent as-is on a retransmission request.
    /// Empty for old-ring messages learned during recovery (never resent on their ring).
    pub datagram: Gather,
    /// Our own message of which `payload` carries a fragment (see
    /// [`BuiltMcast::fragment_of`](crate::wire::packet::BuiltMcast::fragment_of)).
    pub fragment_of: Option<Bytes>,
}

#[derive(Debug)]
pub(super) struct RingState {
    pub ring_id: RingId,
    /// Sorted by node id; the token passes in this order and wraps.
    pub members: Vec<NodeId>,
    messages: BTreeMap<u64, Stored>,
    /// Every sequence up to this one has been received.
    pub my_aru: u64,
    /// The highest sequence received.
    pub high_seq: u64,
    /// Every sequence up to this one has been delivered (or skipped as a carrier).
    pub delivered: u64,
    /// Every member is known to hold every sequence up to this one.
    pub safe_upto: u64,
    /// Every sequence up to this one has been dropped from the store.
    freed: u64,
    /// Receive window: sequences beyond `my_aru + window` are refused (and requested
    /// again later), which bounds the store.
    window: u64,
}

impl RingState {
    pub fn new(ring_id: RingId, members: Vec<NodeId>, window: u64) -> RingState {
        RingState {
            ring_id,
            members,
            messages: BTreeMap::new(),
            my_aru: 0,
            high_seq: 0,
            delivered: 0,
            safe_upto: 0,
            freed: 0,
            window,
        }
    }

    pub fn get(&self, seq: u64) -> Option<&Stored> {
        self.messages.get(&seq)
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.freed || self.messages.contains_key(&seq)
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    /// Stores a message received on this ring. False for a duplicate, or one outside
    /// the receive window (the sender's copy stays available for retransmission).
    pub fn insert(&mut self, seq: u64, message: Stored) -> bool {
        if seq == 0 || seq > self.my_aru.saturating_add(self.window) {
            return false;
        }
        self.insert_unbounded(seq, message)
    }

    /// Stores an old-ring message learned during recovery, or one of our own. Its
    /// sequence is bounded by what the members declared, not by the receive window.
    pub fn insert_unbounded(&mut self, seq: u64, message: Stored) -> bool {
        if seq == 0 || self.contains(seq) {
            return false;
        }
        self.messages.insert(seq, message);
        self.high_seq = self.high_seq.max(seq);
        while self.messages.contains_key(&(self.my_aru + 1)) {
            self.my_aru += 1;
        }
        true
    }

    /// Drops messages that every member holds and this node has delivered.
    pub fn free_upto(&mut self, stable: u64) {
        let upto = stable.min(self.delivered);
        if upto <= self.freed {
            return;
        }
        let kept = self.messages.split_off(&(upto + 1));
        self.messages = kept;
        self.freed = upto;
    }

    /// Missing sequences above `my_aru` up to `upto`, ascending, at most `limit`.
    pub fn missing(&self, upto: u64, limit: usize) -> Vec<u64> {
        let mut gaps = Vec::new();
        let mut next = self.my_aru + 1;
        for (&seq, _) in self.messages.range(next..=upto.max(next)) {
            while next < seq && gaps.len() < limit {
                gaps.push(next);
                next += 1;
            }
            if gaps.len() >= limit {
                return gaps;
            }
            next = seq + 1;
        }
        while next <= upto && gaps.len() < limit {
            gaps.push(next);
            next += 1;
        }
        gaps
    }

    /// Stored messages with a sequence above `low`, ascending.
    pub fn above(&self, low: u64) -> impl Iterator<Item = (u64, &Stored)> {
        self.messages
            .range(low.saturating_add(1)..)
            .map(|(&seq, message)| (seq, message))
    }

    pub fn stored_len(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Stored {
        Stored {
            origin: 1,
            safe: false,
            recovered: None,
            payload: Gather::default(),
            datagram: Gather::default(),
            fragment_of: None,
        }
    }

    /// Totem §3.2: the aru is the highest sequence up to which everything is held.
    #[test]
    fn aru_advances_over_contiguous_sequences_only() {
        let mut ring = RingState::new(RingId { rep: 1, seq: 4 }, vec![1, 2], 100);
        assert!(ring.insert(2, msg()));
        assert_eq!((ring.my_aru, ring.high_seq), (0, 2));
        assert!(ring.insert(1, msg()));
        assert_eq!(ring.my_aru, 2);
        assert!(!ring.insert(2, msg()), "duplicate");
        assert!(ring.insert(5, msg()));
        assert_eq!(ring.missing(6, 10), vec![3, 4, 6]);
        assert_eq!(ring.missing(6, 2), vec![3, 4]);
        assert_eq!(ring.missing(1, 10), Vec::<u64>::new());
    }

    #[test]
    fn window_bounds_the_store_and_freeing_keeps_duplicates_out() {
        let mut ring = RingState::new(RingId { rep: 1, seq: 4 }, vec![1], 3);
        assert!(!ring.insert(4, msg()), "beyond my_aru + window");
        for seq in 1..=3 {
            assert!(ring.insert(seq, msg()));
        }
        ring.delivered = 2;
        ring.free_upto(3);
        assert_eq!(
            ring.stored_len(),
            1,
            "only delivered and stable messages are freed"
        );
        assert!(
            !ring.insert(1, msg()),
            "freed sequences are still duplicates"
        );
        assert!(ring.contains(2) && ring.contains(3) && !ring.contains(4));
    }
}
