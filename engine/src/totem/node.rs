use bytes::Bytes;

use super::{
    Config, ConfigError, Event, Guarantee, Instant, NodeId, RingId, RingSeqStore, SubmitError,
    Transmit,
};

/// The protocol state of a node (Totem paper §3–§4; CPG_SPEC.md §9.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    Operational,
    Gather,
    Commit,
    Recovery,
}

/// Counters a node keeps about itself; the caller may read them at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_received: u64,
    pub packets_dropped: u64,
    pub tokens_received: u64,
    pub token_rotations: u64,
    pub messages_originated: u64,
    pub messages_retransmitted: u64,
    pub messages_delivered: u64,
    pub rings_installed: u64,
    pub token_losses: u64,
}

pub struct Node {
    _todo: (),
}

impl Node {
    /// A node that starts gathering at `now` (its first ring is a singleton that then
    /// merges with the others). The store supplies the highest ring sequence seen.
    pub fn new(
        config: Config,
        store: Box<dyn RingSeqStore>,
        now: Instant,
    ) -> Result<Node, ConfigError> {
        let _ = (config, store, now);
        todo!()
    }
    pub fn node_id(&self) -> NodeId {
        todo!()
    }
    pub fn state(&self) -> NodeState {
        todo!()
    }
    /// The ring this node was last operational in, and its members.
    pub fn ring_id(&self) -> RingId {
        todo!()
    }
    pub fn members(&self) -> &[NodeId] {
        todo!()
    }
    pub fn stats(&self) -> &Stats {
        todo!()
    }
    /// Application messages waiting to be sent.
    pub fn send_queue_len(&self) -> usize {
        todo!()
    }

    /// One datagram arrived. Bad or foreign packets are counted and dropped.
    pub fn handle_packet(&mut self, now: Instant, datagram: &Bytes) {
        let _ = (now, datagram);
        todo!()
    }
    /// Fires every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }
    /// Queues an application message for agreed (or safe) delivery to the ring.
    pub fn submit(
        &mut self,
        now: Instant,
        payload: Bytes,
        guarantee: Guarantee,
    ) -> Result<(), SubmitError> {
        let _ = (now, payload, guarantee);
        todo!()
    }
    /// Announces a clean departure (sent once); the caller stops driving the node after
    /// draining its transmits.
    pub fn leave(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        todo!()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
    /// The earliest deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
}
