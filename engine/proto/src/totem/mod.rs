#![forbid(unsafe_code)]
//! The Totem single-ring ordering and membership protocol (Amir et al., ACM TOCS 1995),
//! as Corosync runs it (docs/cpg.md §9–10), as a pure state machine.
//!
//! No sockets, no clock, no threads: the caller feeds datagrams with
//! [`Node::handle_packet`], fires deadlines with [`Node::handle_timeout`], queues
//! application messages with [`Node::submit`], and drains what the node wants done with
//! [`Node::poll_transmit`], [`Node::poll_event`] and [`Node::poll_timeout`]. The
//! simulator and the io_uring engine drive the very same code.

mod config;
mod events;
mod node;
mod ring;
mod time;

pub use config::{Config, ConfigError, DEFAULT_MAX_MESSAGE_BYTES, window_for_bytes};
pub use node::{MAX_SEQ, Node, NodeState, Stats, acceptable, receive_window, sequences_in_range};
pub use time::Instant;

pub use crate::wire::gather::Gather;
use bytes::Bytes;

/// A Totem node identifier (Corosync's `nodeid`). 0 is reserved.
pub type NodeId = u32;

/// Identifies one ring: its representative (lowest member) and a sequence number that
/// grows with every ring any member has been in.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingId {
    /// The ring's representative: the member with the lowest node id.
    pub rep: NodeId,
    /// Ring sequence: larger than any ring sequence its members had seen.
    pub seq: u64,
}

impl std::fmt::Display for RingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.rep, self.seq)
    }
}

/// Delivery guarantee of one application message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Guarantee {
    /// Delivered as soon as every lower-sequenced message of the ring is delivered.
    Agreed,
    /// Delivered only once every member of the configuration is known to hold it.
    Safe,
}

/// Where a datagram goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Every node (IP multicast, or one unicast copy per node, the sender included).
    All,
    /// One node (tokens and commit tokens go to the next member only).
    Node(NodeId),
}

/// A datagram the caller must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: Destination,
    /// The datagram, in pieces when messages went into it by reference: send them as
    /// one datagram (a vectored send).
    pub payload: Gather,
}

/// One application message delivered in agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The node that submitted it.
    pub sender: NodeId,
    /// The ring it was ordered on.
    pub ring_id: RingId,
    pub guarantee: Guarantee,
    pub payload: Bytes,
}

/// Transitional configurations precede regular ones (extended virtual synchrony).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfigurationKind {
    /// The members of the old ring that move on together; `joined` is always empty.
    Transitional,
    /// The new ring.
    Regular,
}

/// A configuration change, delivered between messages in agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigurationChange {
    pub kind: ConfigurationKind,
    /// The new ring, for both kinds (as Corosync reports it): a transitional
    /// configuration and the regular one after it carry the same ring id.
    pub ring_id: RingId,
    /// Sorted by node id.
    pub members: Vec<NodeId>,
    /// Members of the previous configuration that are not in this one, sorted.
    pub left: Vec<NodeId>,
    /// Members of this configuration that were not in the previous one, sorted.
    pub joined: Vec<NodeId>,
}

/// What a node hands to its user, in the order it must be acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Deliver(Delivery),
    Configuration(ConfigurationChange),
}

/// Why a message was not queued. Nothing was queued in either case.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The send queue is full; retry once some of it has been sent.
    #[error("send queue full, try again")]
    TryAgain,
    /// The message is larger than `Config::max_message_bytes`.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooBig { len: usize, max: usize },
}

/// Persistent state that must survive a restart: the highest ring sequence this node
/// has seen, so that a restarted node never reuses a ring id. The caller implements it
/// (a file for the daemon, a map for the simulator).
pub trait RingSeqStore {
    /// The highest ring sequence stored, or 0 on first start.
    fn load(&mut self) -> u64;
    /// Remember `seq`; called before the node enters a ring with that sequence.
    fn store(&mut self, seq: u64);
}

/// A store that forgets everything: for tests of a node that never restarts.
#[derive(Debug, Default)]
pub struct MemoryRingSeqStore {
    pub seq: u64,
}

impl RingSeqStore for MemoryRingSeqStore {
    fn load(&mut self) -> u64 {
        self.seq
    }
    fn store(&mut self, seq: u64) {
        self.seq = seq;
    }
}
