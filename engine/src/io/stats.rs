//! The engine's counters page: its layout, writer and reader live in
//! `ringcast_shm::stats` (shared with the `ringcast` command line, which does not depend on
//! the engine); this adds the mapping from Totem's types.

pub use ringcast_shm::stats::{
    COUNTER_SLOTS, Counter, Liveness, MAGIC, MEMBER_SLOTS, PAGE_BYTES, STALE_AFTER_MS, Snapshot,
    StatsError, StatsReader, VERSION, now_unix_ms, page_path, state_name,
};

use ringcast_shm::stats as page;

use crate::totem::{NodeId, NodeState, RingId};

// Every member of the largest ring fits in the page.
const _: () = assert!(crate::wire::MAX_MEMBERS <= MEMBER_SLOTS);

/// `NodeState` as stored in the page (`STATE_LEFT` = left the ring).
pub fn state_code(state: Option<NodeState>) -> u64 {
    match state {
        Some(NodeState::Operational) => page::STATE_OPERATIONAL,
        Some(NodeState::Gather) => page::STATE_GATHER,
        Some(NodeState::Commit) => page::STATE_COMMIT,
        Some(NodeState::Recovery) => page::STATE_RECOVERY,
        None => page::STATE_LEFT,
    }
}

/// The engine's side: `ringcast_shm::stats::StatsWriter` taking Totem's types.
#[derive(Debug)]
pub struct StatsWriter(page::StatsWriter);

impl StatsWriter {
    /// Creates (or replaces) the page at `path`.
    pub fn create(
        path: &std::path::Path,
        node_id: NodeId,
        cluster_id: u32,
    ) -> Result<StatsWriter, StatsError> {
        page::StatsWriter::create(path, node_id, cluster_id).map(StatsWriter)
    }

    pub fn add(&self, counter: Counter, n: u64) {
        self.0.add(counter, n);
    }

    pub fn set(&self, counter: Counter, value: u64) {
        self.0.set(counter, value);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter)
    }

    /// Records the heartbeat (call about once a second or more often).
    pub fn heartbeat(&self) {
        self.0.heartbeat();
    }

    pub fn set_send_queue_len(&self, len: usize) {
        self.0.set_send_queue_len(len);
    }

    /// Publishes the ring, its members and the node's state.
    pub fn set_ring(&mut self, ring_id: RingId, state: Option<NodeState>, members: &[NodeId]) {
        let ring_id = page::RingId {
            rep: ring_id.rep,
            seq: ring_id.seq,
        };
        self.0.set_ring(ring_id, state_code(state), members);
    }
}
