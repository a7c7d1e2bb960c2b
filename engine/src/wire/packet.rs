//! Totem packet layouts: a common header (magic, version, kind, cluster id, sender) and
//! one body per kind, little-endian. See `encode`/`decode`.

use bytes::Bytes;

use crate::totem::{NodeId, RingId};

/// First two bytes of every ringcast packet ("RC" little-endian).
pub const MAGIC: u16 = 0x4352;
/// Wire version; packets of another version are dropped.
pub const VERSION: u8 = 1;

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Token(Token),
    Mcast(Mcast),
    Join(Join),
    Commit(CommitToken),
    /// Sent by an idle representative to find other rings (CPG_SPEC.md §9.6).
    MergeDetect {
        sender: NodeId,
        ring_id: RingId,
    },
    /// Asks a holding representative to release the token (CPG_SPEC.md §9.3).
    HoldCancel {
        sender: NodeId,
        ring_id: RingId,
    },
}

/// The regular (ORF) token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Token {
    pub sender: NodeId,
    pub ring_id: RingId,
    /// Grows with every hop: duplicates and stale retransmissions are dropped by it.
    pub token_seq: u64,
    /// Highest message sequence assigned on this ring.
    pub seq: u64,
    /// All-received-up-to, as lowered by the node that lacks the most.
    pub aru: u64,
    /// Node that last lowered `aru` (0 when `aru == seq`).
    pub aru_addr: NodeId,
    /// Messages originated in the last rotation (flow control).
    pub fcc: u32,
    /// Messages waiting in every node's send queue (flow control).
    pub backlog: u32,
    /// Recovery: set while some node still has old-ring messages to retransmit.
    pub retrans_flg: bool,
    /// Recovery: the representative's signal that every member holds every recovered
    /// message up to this sequence and the ring may be installed (0 = not yet).
    pub install_seq: u64,
    /// Retransmission requests, ascending sequence numbers of this ring.
    pub rtr: Vec<u64>,
}

/// A multicast message: one datagram carrying packed application messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mcast {
    /// Who put this datagram on the wire (the originator, or a node retransmitting).
    pub sender: NodeId,
    pub ring_id: RingId,
    pub seq: u64,
    /// Who assigned `seq` to it.
    pub origin: NodeId,
    /// Contains SAFE messages: deliver only once stable.
    pub safe: bool,
    /// Set when this message carries an old-ring message during recovery.
    pub recovered: Option<Recovered>,
    /// Packed application messages (see `pack`); for a recovered message, the old
    /// message's payload.
    pub payload: Bytes,
}

/// The identity of an old-ring message wrapped in a new-ring one during recovery
/// (Corosync's `encapsulated = 1`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub ring_id: RingId,
    pub seq: u64,
    pub origin: NodeId,
    pub safe: bool,
}

/// Membership join (gather state), or a leave announcement when `leaving` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Join {
    pub sender: NodeId,
    /// Highest ring sequence the sender has seen.
    pub ring_seq: u64,
    /// Nodes the sender believes can form the ring (sorted, deduplicated).
    pub proc_list: Vec<NodeId>,
    /// Nodes the sender believes failed (sorted, deduplicated).
    pub failed_list: Vec<NodeId>,
    /// The sender is shutting down and leaves the ring.
    pub leaving: bool,
}

/// The commit token that rotates twice to install a new ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitToken {
    pub sender: NodeId,
    /// The new ring.
    pub ring_id: RingId,
    pub token_seq: u64,
    /// Index of the member that last filled its entry (grows by one per hop).
    pub memb_index: u32,
    /// One entry per member of the new ring, ascending node id.
    pub entries: Vec<CommitEntry>,
}

/// What one member of the new ring says about its old ring.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitEntry {
    pub node: NodeId,
    /// The last ring this node was operational in.
    pub old_ring_id: RingId,
    /// Its all-received-up-to on the old ring.
    pub old_aru: u64,
    /// The highest old-ring sequence it received.
    pub old_high_seq: u64,
    /// The highest old-ring sequence it delivered.
    pub high_delivered: u64,
    /// The highest old-ring sequence it knows every old member holds.
    pub safe_upto: u64,
    /// Whether the entry has been filled (first rotation).
    pub filled: bool,
}

/// Why a datagram was dropped. Each reason is counted by the caller.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    #[error("packet shorter than its header or its declared lengths")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version")]
    BadVersion,
    #[error("packet of another cluster")]
    OtherCluster,
    #[error("unknown packet kind")]
    UnknownKind,
    #[error("a list exceeds its limit")]
    TooManyEntries,
    #[error("malformed packet")]
    Malformed,
}

impl Packet {
    /// The node that put this packet on the wire.
    pub fn sender(&self) -> NodeId {
        match self {
            Packet::Token(t) => t.sender,
            Packet::Mcast(m) => m.sender,
            Packet::Join(j) => j.sender,
            Packet::Commit(c) => c.sender,
            Packet::MergeDetect { sender, .. } | Packet::HoldCancel { sender, .. } => *sender,
        }
    }

    /// Encodes with the given cluster id.
    pub fn encode(&self, cluster_id: u32) -> Bytes {
        let _ = cluster_id;
        todo!("wire codec")
    }

    /// Decodes and checks one datagram. Never panics; the payload of a `Mcast` is a
    /// slice of `buf` (no copy).
    pub fn decode(buf: &Bytes, cluster_id: u32) -> Result<Packet, DecodeError> {
        let _ = (buf, cluster_id);
        todo!("wire codec")
    }
}

/// Bytes a `Mcast` adds around its payload (header and body, `recovered` included), so
/// that `max_datagram_bytes - MCAST_OVERHEAD` is the most payload one datagram carries.
pub const MCAST_OVERHEAD: usize = 96;
