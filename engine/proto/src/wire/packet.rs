//! Totem packet layouts: a common header (magic, version, kind, cluster id, sender) and
//! one body per kind, little-endian. See `encode`/`decode`.
//!
//! ```text
//! every packet     Header (12 B)
//!                  +--------+---------+------+------------+--------+
//!                  | magic  | version | kind | cluster_id | sender |
//!                  | u16    | u8      | u8   | u32        | u32    |
//!                  +--------+---------+------+------------+--------+
//! kind 1 Token     TokenBody (60 B), then rtr_count x u64
//! kind 2 Mcast     McastBody (32 B), [RecoveredBody (28 B) if recovered == 1],
//!                  then payload_len bytes of payload (see `wire::pack`)
//! kind 3 Join      JoinBody (16 B), then proc_count x u32, then failed_count x u32
//! kind 4 Commit    CommitBody (28 B), then entry_count x CommitEntryBody (52 B)
//! kind 5 MergeDetect, kind 6 HoldCancel
//!                  RingIdBody (12 B)
//! ```
//!
//! Every field is little-endian and unaligned (no padding anywhere). Reserved bytes are
//! written as zero and a packet with a non-zero reserved byte is `Malformed`, so that a
//! later version can give them a meaning without being misread by this one. A packet is
//! exactly as long as its header and counts say: anything left over is `Malformed`.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::gather::Gather;
use super::pack::PayloadSink;
use super::{MAX_MEMBERS, MAX_RTR_ENTRIES};
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
    /// Sent by an idle representative to find other rings (docs/cpg.md §9.6).
    MergeDetect {
        sender: NodeId,
        ring_id: RingId,
    },
    /// Asks a holding representative to release the token (docs/cpg.md §9.3).
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
    ///
    /// The lists must respect the limits `decode` enforces (`MAX_RTR_ENTRIES`,
    /// `MAX_MEMBERS`, ascending node ids in joins and commit tokens): a packet that breaks
    /// them is encoded anyway but every receiver drops it, so debug builds assert them.
    pub fn encode(&self, cluster_id: u32) -> Bytes {
        let header = |kind: u8| Header {
            magic: U16::new(MAGIC),
            version: VERSION,
            kind,
            cluster_id: U32::new(cluster_id),
            sender: U32::new(self.sender()),
        };
        match self {
            Packet::Token(t) => {
                debug_assert!(t.rtr.len() <= MAX_RTR_ENTRIES, "token rtr list too long");
                let body = TokenBody {
                    ring_id: t.ring_id.into(),
                    token_seq: U64::new(t.token_seq),
                    seq: U64::new(t.seq),
                    aru: U64::new(t.aru),
                    aru_addr: U32::new(t.aru_addr),
                    fcc: U32::new(t.fcc),
                    backlog: U32::new(t.backlog),
                    install_seq: U64::new(t.install_seq),
                    retrans_flg: u8::from(t.retrans_flg),
                    reserved: 0,
                    rtr_count: count_u16(t.rtr.len()),
                };
                let mut out = BytesMut::with_capacity(token_len(t.rtr.len()));
                out.extend_from_slice(header(KIND_TOKEN).as_bytes());
                out.extend_from_slice(body.as_bytes());
                for &seq in &t.rtr {
                    out.extend_from_slice(U64::new(seq).as_bytes());
                }
                out.freeze()
            }
            Packet::Mcast(m) => {
                // Payloads are at most one datagram; 4 GiB would be a caller bug.
                let payload_len =
                    u32::try_from(m.payload.len()).expect("mcast payload larger than 4 GiB");
                let body = McastBody {
                    ring_id: m.ring_id.into(),
                    seq: U64::new(m.seq),
                    origin: U32::new(m.origin),
                    safe: u8::from(m.safe),
                    recovered: u8::from(m.recovered.is_some()),
                    reserved: U16::new(0),
                    payload_len: U32::new(payload_len),
                };
                // One allocation, one copy of the payload: the header is written in front
                // of it in the same buffer.
                let mut out = BytesMut::with_capacity(mcast_len(m.payload.len(), m.recovered));
                out.extend_from_slice(header(KIND_MCAST).as_bytes());
                out.extend_from_slice(body.as_bytes());
                if let Some(r) = m.recovered {
                    let recovered = RecoveredBody {
                        ring_id: r.ring_id.into(),
                        seq: U64::new(r.seq),
                        origin: U32::new(r.origin),
                        safe: u8::from(r.safe),
                        reserved: [0; 3],
                    };
                    out.extend_from_slice(recovered.as_bytes());
                }
                out.extend_from_slice(&m.payload);
                out.freeze()
            }
            Packet::Join(j) => {
                debug_assert!(j.proc_list.len() <= MAX_MEMBERS, "join proc_list too long");
                debug_assert!(
                    j.failed_list.len() <= MAX_MEMBERS,
                    "join failed_list too long"
                );
                debug_assert!(is_ascending(&j.proc_list), "join proc_list not sorted");
                debug_assert!(is_ascending(&j.failed_list), "join failed_list not sorted");
                let body = JoinBody {
                    ring_seq: U64::new(j.ring_seq),
                    leaving: u8::from(j.leaving),
                    reserved: 0,
                    proc_count: count_u16(j.proc_list.len()),
                    failed_count: count_u16(j.failed_list.len()),
                    reserved2: U16::new(0),
                };
                let mut out =
                    BytesMut::with_capacity(join_len(j.proc_list.len(), j.failed_list.len()));
                out.extend_from_slice(header(KIND_JOIN).as_bytes());
                out.extend_from_slice(body.as_bytes());
                for &node in j.proc_list.iter().chain(&j.failed_list) {
                    out.extend_from_slice(U32::new(node).as_bytes());
                }
                out.freeze()
            }
            Packet::Commit(c) => {
                debug_assert!(c.entries.len() <= MAX_MEMBERS, "commit token too long");
                debug_assert!(
                    c.entries.windows(2).all(|w| w[0].node < w[1].node),
                    "commit entries not in ascending node order"
                );
                let body = CommitBody {
                    ring_id: c.ring_id.into(),
                    token_seq: U64::new(c.token_seq),
                    memb_index: U32::new(c.memb_index),
                    entry_count: count_u16(c.entries.len()),
                    reserved: U16::new(0),
                };
                let mut out = BytesMut::with_capacity(commit_len(c.entries.len()));
                out.extend_from_slice(header(KIND_COMMIT).as_bytes());
                out.extend_from_slice(body.as_bytes());
                for e in &c.entries {
                    let entry = CommitEntryBody {
                        node: U32::new(e.node),
                        old_ring_id: e.old_ring_id.into(),
                        old_aru: U64::new(e.old_aru),
                        old_high_seq: U64::new(e.old_high_seq),
                        high_delivered: U64::new(e.high_delivered),
                        safe_upto: U64::new(e.safe_upto),
                        filled: u8::from(e.filled),
                        reserved: [0; 3],
                    };
                    out.extend_from_slice(entry.as_bytes());
                }
                out.freeze()
            }
            Packet::MergeDetect { ring_id, .. } | Packet::HoldCancel { ring_id, .. } => {
                let kind = if matches!(self, Packet::MergeDetect { .. }) {
                    KIND_MERGE_DETECT
                } else {
                    KIND_HOLD_CANCEL
                };
                let body: RingIdBody = (*ring_id).into();
                let mut out = BytesMut::with_capacity(HEADER_LEN + RING_ID_LEN);
                out.extend_from_slice(header(kind).as_bytes());
                out.extend_from_slice(body.as_bytes());
                out.freeze()
            }
        }
    }

    /// Decodes and checks one datagram. Never panics; the payload of a `Mcast` is a
    /// slice of `buf` (no copy).
    pub fn decode(buf: &Bytes, cluster_id: u32) -> Result<Packet, DecodeError> {
        let mut r = Reader { rest: buf };
        let header: &Header = r.take()?;
        if header.magic.get() != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if header.version != VERSION {
            return Err(DecodeError::BadVersion);
        }
        if header.cluster_id.get() != cluster_id {
            return Err(DecodeError::OtherCluster);
        }
        let sender = header.sender.get();
        let packet = match header.kind {
            KIND_TOKEN => {
                let body: &TokenBody = r.take()?;
                reserved_zero(body.reserved)?;
                let rtr: &[U64] = r.take_list(body.rtr_count.get(), MAX_RTR_ENTRIES)?;
                r.finish()?;
                Packet::Token(Token {
                    sender,
                    ring_id: body.ring_id.into(),
                    token_seq: body.token_seq.get(),
                    seq: body.seq.get(),
                    aru: body.aru.get(),
                    aru_addr: body.aru_addr.get(),
                    fcc: body.fcc.get(),
                    backlog: body.backlog.get(),
                    retrans_flg: flag(body.retrans_flg)?,
                    install_seq: body.install_seq.get(),
                    rtr: rtr.iter().map(|s| s.get()).collect(),
                })
            }
            KIND_MCAST => {
                let body: &McastBody = r.take()?;
                reserved_zero(body.reserved.get())?;
                let safe = flag(body.safe)?;
                let recovered = if flag(body.recovered)? {
                    let rec: &RecoveredBody = r.take()?;
                    reserved_zero(rec.reserved)?;
                    Some(Recovered {
                        ring_id: rec.ring_id.into(),
                        seq: rec.seq.get(),
                        origin: rec.origin.get(),
                        safe: flag(rec.safe)?,
                    })
                } else {
                    None
                };
                // u32 -> usize cannot lose bits on the 32/64-bit targets we build for;
                // saturating keeps a hypothetical 16-bit target from wrapping.
                let payload_len = usize::try_from(body.payload_len.get()).unwrap_or(usize::MAX);
                let start = buf.len() - r.rest.len();
                if r.rest.len() < payload_len {
                    return Err(DecodeError::Truncated);
                }
                if r.rest.len() > payload_len {
                    return Err(DecodeError::Malformed);
                }
                Packet::Mcast(Mcast {
                    sender,
                    ring_id: body.ring_id.into(),
                    seq: body.seq.get(),
                    origin: body.origin.get(),
                    safe,
                    recovered,
                    payload: buf.slice(start..),
                })
            }
            KIND_JOIN => {
                let body: &JoinBody = r.take()?;
                reserved_zero(body.reserved)?;
                reserved_zero(body.reserved2.get())?;
                let proc_count = body.proc_count.get();
                let failed_count = body.failed_count.get();
                // Both limits before either list is read, so a huge second count is
                // TooManyEntries whatever the length.
                if usize::from(proc_count) > MAX_MEMBERS || usize::from(failed_count) > MAX_MEMBERS
                {
                    return Err(DecodeError::TooManyEntries);
                }
                let proc: &[U32] = r.take_list(proc_count, MAX_MEMBERS)?;
                let failed: &[U32] = r.take_list(failed_count, MAX_MEMBERS)?;
                r.finish()?;
                let proc_list = node_list(proc)?;
                let failed_list = node_list(failed)?;
                Packet::Join(Join {
                    sender,
                    ring_seq: body.ring_seq.get(),
                    proc_list,
                    failed_list,
                    leaving: flag(body.leaving)?,
                })
            }
            KIND_COMMIT => {
                let body: &CommitBody = r.take()?;
                reserved_zero(body.reserved.get())?;
                let list: &[CommitEntryBody] = r.take_list(body.entry_count.get(), MAX_MEMBERS)?;
                r.finish()?;
                let mut entries = Vec::with_capacity(list.len());
                for e in list {
                    reserved_zero(e.reserved)?;
                    entries.push(CommitEntry {
                        node: e.node.get(),
                        old_ring_id: e.old_ring_id.into(),
                        old_aru: e.old_aru.get(),
                        old_high_seq: e.old_high_seq.get(),
                        high_delivered: e.high_delivered.get(),
                        safe_upto: e.safe_upto.get(),
                        filled: flag(e.filled)?,
                    });
                }
                // The protocol looks members up by binary search and compares member
                // lists element-wise: an unsorted or duplicated list is not a ring.
                if !entries.windows(2).all(|w| w[0].node < w[1].node) {
                    return Err(DecodeError::Malformed);
                }
                Packet::Commit(CommitToken {
                    sender,
                    ring_id: body.ring_id.into(),
                    token_seq: body.token_seq.get(),
                    memb_index: body.memb_index.get(),
                    entries,
                })
            }
            KIND_MERGE_DETECT | KIND_HOLD_CANCEL => {
                let body: &RingIdBody = r.take()?;
                r.finish()?;
                let ring_id = (*body).into();
                if header.kind == KIND_MERGE_DETECT {
                    Packet::MergeDetect { sender, ring_id }
                } else {
                    Packet::HoldCancel { sender, ring_id }
                }
            }
            _ => return Err(DecodeError::UnknownKind),
        };
        Ok(packet)
    }
}

/// Builds a `Mcast` datagram (without `recovered`) around a payload written straight
/// into it: room for the header is kept in front, and [`McastBuilder::finish`] fills it
/// in once the payload's length is known. Encoding `Packet::Mcast` would copy the
/// payload into a second buffer; a sender's own payload needs no such copy.
///
/// As a [`PayloadSink`], it copies framing and messages under `by_reference_min` bytes
/// and takes larger ones (and each of their fragments) by reference: the datagram is
/// then in pieces ([`Gather`]).
#[derive(Debug)]
pub struct McastBuilder {
    /// The header room and the payload up to the first piece taken by reference.
    first: BytesMut,
    /// Pieces after `first`, in order.
    pieces: Vec<Bytes>,
    /// Bytes copied after the last piece taken by reference.
    current: BytesMut,
    /// Bytes in `pieces`.
    pieces_len: usize,
    /// Message bytes copied / taken by reference so far.
    copied: usize,
    referenced: usize,
    by_reference_min: usize,
    /// The message a fragment in this payload belongs to.
    fragment_of: Option<Bytes>,
}

/// What precedes the payload in a mcast without `recovered`.
const PLAIN_MCAST_PREFIX: usize = HEADER_LEN + MCAST_BODY_LEN;

/// A datagram built by [`McastBuilder::finish`].
#[derive(Debug)]
pub struct BuiltMcast {
    /// The datagram as it goes on the wire.
    pub datagram: Gather,
    /// Its payload: the datagram without its header.
    pub payload: Gather,
    /// The whole message of which the payload carries a First, Middle or Last chunk,
    /// for delivering it without reassembly ([`Reassembler::push_gather`]).
    ///
    /// [`Reassembler::push_gather`]: super::pack::Reassembler::push_gather
    pub fragment_of: Option<Bytes>,
    /// Message bytes copied into the datagram, and taken by reference.
    pub copied: usize,
    pub referenced: usize,
}

impl McastBuilder {
    /// A builder with room for `payload_capacity` bytes of payload (more may be written;
    /// the buffer grows), taking messages of `by_reference_min` bytes or more by
    /// reference (`usize::MAX`: never).
    pub fn new(payload_capacity: usize, by_reference_min: usize) -> McastBuilder {
        let mut first = BytesMut::with_capacity(PLAIN_MCAST_PREFIX + payload_capacity);
        first.resize(PLAIN_MCAST_PREFIX, 0);
        McastBuilder {
            first,
            pieces: Vec::new(),
            current: BytesMut::new(),
            pieces_len: 0,
            copied: 0,
            referenced: 0,
            by_reference_min,
            fragment_of: None,
        }
    }

    /// Where copied bytes go now.
    #[inline]
    fn copy_target(&mut self) -> &mut BytesMut {
        if self.pieces.is_empty() {
            &mut self.first
        } else {
            &mut self.current
        }
    }

    /// The finished datagram, as `Packet::Mcast` with these fields, `recovered: None`
    /// and the payload appended would encode it.
    pub fn finish(mut self, cluster_id: u32, m: McastFields) -> BuiltMcast {
        // Payloads are at most one datagram; 4 GiB would be a caller bug.
        let payload_len = u32::try_from(self.written()).expect("mcast payload larger than 4 GiB");
        let header = Header {
            magic: U16::new(MAGIC),
            version: VERSION,
            kind: KIND_MCAST,
            cluster_id: U32::new(cluster_id),
            sender: U32::new(m.sender),
        };
        let body = McastBody {
            ring_id: m.ring_id.into(),
            seq: U64::new(m.seq),
            origin: U32::new(m.origin),
            safe: u8::from(m.safe),
            recovered: 0,
            reserved: U16::new(0),
            payload_len: U32::new(payload_len),
        };
        self.first[..HEADER_LEN].copy_from_slice(header.as_bytes());
        self.first[HEADER_LEN..PLAIN_MCAST_PREFIX].copy_from_slice(body.as_bytes());
        let datagram = if self.pieces.is_empty() {
            Gather::from(self.first.freeze())
        } else {
            if !self.current.is_empty() {
                self.pieces.push(self.current.freeze());
            }
            Gather::with_tail(self.first.freeze(), self.pieces)
        };
        let payload = datagram.skip(PLAIN_MCAST_PREFIX);
        BuiltMcast {
            datagram,
            payload,
            fragment_of: self.fragment_of,
            copied: self.copied,
            referenced: self.referenced,
        }
    }
}

impl PayloadSink for McastBuilder {
    #[inline]
    fn written(&self) -> usize {
        self.first.len() - PLAIN_MCAST_PREFIX + self.pieces_len + self.current.len()
    }

    #[inline]
    fn reserve(&mut self, additional: usize) {
        self.copy_target().reserve(additional);
    }

    #[inline(always)]
    fn put_varint(&mut self, value: u64) {
        super::pack::put_varint(self.copy_target(), value);
    }

    #[inline(always)]
    fn put_data(&mut self, message: &Bytes, range: Range<usize>, fragment: bool) {
        if fragment && self.fragment_of.is_none() {
            self.fragment_of = Some(message.clone());
        }
        // By the message's size, not the chunk's: every fragment of a large message
        // goes by reference, however small the datagrams.
        if message.len() < self.by_reference_min {
            self.copied += range.len();
            self.copy_target().extend_from_slice(&message[range]);
            return;
        }
        self.referenced += range.len();
        if !self.current.is_empty() {
            let copied = self.current.split().freeze();
            self.pieces_len += copied.len();
            self.pieces.push(copied);
        }
        self.pieces_len += range.len();
        if self.pieces.capacity() == 0 {
            // Usually just this piece and what is copied after it.
            self.pieces.reserve_exact(3);
        }
        self.pieces.push(message.slice(range));
    }
}

/// The fields of a `Mcast` other than its payload and `recovered`, for
/// [`McastBuilder::finish`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct McastFields {
    pub sender: NodeId,
    pub ring_id: RingId,
    pub seq: u64,
    pub origin: NodeId,
    pub safe: bool,
}

/// Bytes a `Mcast` adds around its payload (header and body, `recovered` included), so
/// that `max_datagram_bytes - MCAST_OVERHEAD` is the most payload one datagram carries.
/// Exact, not a bound. It does not include what `seal` adds around the whole datagram.
pub const MCAST_OVERHEAD: usize = HEADER_LEN + MCAST_BODY_LEN + RECOVERED_LEN;

/// Encoded length of a token carrying `rtr` retransmission requests.
pub const fn token_len(rtr: usize) -> usize {
    HEADER_LEN + TOKEN_BODY_LEN + 8 * rtr
}

/// Encoded length of a mcast.
pub const fn mcast_len(payload: usize, recovered: Option<Recovered>) -> usize {
    let recovered_len = if recovered.is_some() {
        RECOVERED_LEN
    } else {
        0
    };
    HEADER_LEN + MCAST_BODY_LEN + recovered_len + payload
}

/// Encoded length of a join with the given list lengths.
pub const fn join_len(proc: usize, failed: usize) -> usize {
    HEADER_LEN + JOIN_BODY_LEN + 4 * (proc + failed)
}

/// Encoded length of a commit token with `entries` entries.
pub const fn commit_len(entries: usize) -> usize {
    HEADER_LEN + COMMIT_BODY_LEN + COMMIT_ENTRY_LEN * entries
}

/// The longest packet other than a mcast: a commit token of `MAX_MEMBERS` entries. Note
/// that joins and commit tokens of large rings exceed a 1500-byte datagram (a commit
/// token outgrows it above 28 members), so receive buffers must be sized by this, not
/// by `max_datagram_bytes`.
pub const MAX_CONTROL_PACKET_BYTES: usize = {
    let commit = commit_len(MAX_MEMBERS);
    let join = join_len(MAX_MEMBERS, MAX_MEMBERS);
    let token = token_len(MAX_RTR_ENTRIES);
    let max = if commit > join { commit } else { join };
    if max > token { max } else { token }
};

/// Whether `datagram` claims to be a multicast (application messages), by its header
/// alone: for accounting before it is decoded, not a check of anything.
pub fn looks_like_mcast(datagram: &[u8]) -> bool {
    datagram.get(3) == Some(&KIND_MCAST)
}

const KIND_TOKEN: u8 = 1;
const KIND_MCAST: u8 = 2;
const KIND_JOIN: u8 = 3;
const KIND_COMMIT: u8 = 4;
const KIND_MERGE_DETECT: u8 = 5;
const KIND_HOLD_CANCEL: u8 = 6;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U16,
    version: u8,
    kind: u8,
    cluster_id: U32,
    sender: U32,
}
const HEADER_LEN: usize = 12;
const _: () = assert!(size_of::<Header>() == HEADER_LEN);

#[derive(Copy, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RingIdBody {
    rep: U32,
    seq: U64,
}
const RING_ID_LEN: usize = 12;
const _: () = assert!(size_of::<RingIdBody>() == RING_ID_LEN);

impl From<RingId> for RingIdBody {
    fn from(r: RingId) -> RingIdBody {
        RingIdBody {
            rep: U32::new(r.rep),
            seq: U64::new(r.seq),
        }
    }
}

impl From<RingIdBody> for RingId {
    fn from(r: RingIdBody) -> RingId {
        RingId {
            rep: r.rep.get(),
            seq: r.seq.get(),
        }
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TokenBody {
    ring_id: RingIdBody,
    token_seq: U64,
    seq: U64,
    aru: U64,
    aru_addr: U32,
    fcc: U32,
    backlog: U32,
    install_seq: U64,
    retrans_flg: u8,
    reserved: u8,
    rtr_count: U16,
}
const TOKEN_BODY_LEN: usize = 60;
const _: () = assert!(size_of::<TokenBody>() == TOKEN_BODY_LEN);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct McastBody {
    ring_id: RingIdBody,
    seq: U64,
    origin: U32,
    safe: u8,
    /// 1 when a `RecoveredBody` follows.
    recovered: u8,
    reserved: U16,
    /// Bytes after the body (and `RecoveredBody`): catches datagrams cut short by a
    /// receive buffer that was too small.
    payload_len: U32,
}
const MCAST_BODY_LEN: usize = 32;
const _: () = assert!(size_of::<McastBody>() == MCAST_BODY_LEN);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RecoveredBody {
    ring_id: RingIdBody,
    seq: U64,
    origin: U32,
    safe: u8,
    reserved: [u8; 3],
}
const RECOVERED_LEN: usize = 28;
const _: () = assert!(size_of::<RecoveredBody>() == RECOVERED_LEN);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct JoinBody {
    ring_seq: U64,
    leaving: u8,
    reserved: u8,
    proc_count: U16,
    failed_count: U16,
    reserved2: U16,
}
const JOIN_BODY_LEN: usize = 16;
const _: () = assert!(size_of::<JoinBody>() == JOIN_BODY_LEN);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct CommitBody {
    ring_id: RingIdBody,
    token_seq: U64,
    memb_index: U32,
    entry_count: U16,
    reserved: U16,
}
const COMMIT_BODY_LEN: usize = 28;
const _: () = assert!(size_of::<CommitBody>() == COMMIT_BODY_LEN);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct CommitEntryBody {
    node: U32,
    old_ring_id: RingIdBody,
    old_aru: U64,
    old_high_seq: U64,
    high_delivered: U64,
    safe_upto: U64,
    filled: u8,
    reserved: [u8; 3],
}
const COMMIT_ENTRY_LEN: usize = 52;
const _: () = assert!(size_of::<CommitEntryBody>() == COMMIT_ENTRY_LEN);

// Every count field is a u16: the limits must fit.
const _: () = assert!(MAX_MEMBERS <= u16::MAX as usize);
const _: () = assert!(MAX_RTR_ENTRIES <= u16::MAX as usize);
// A mcast carrying a recovered message fits in the largest UDP datagram with room for
// payload.
const _: () = assert!(MCAST_OVERHEAD < 576);

/// A bounds-checked cursor over the rest of a datagram.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The next fixed-size layout, or `Truncated`.
    fn take<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
    ) -> Result<&'a T, DecodeError> {
        let (value, rest) = T::ref_from_prefix(self.rest).map_err(|_| DecodeError::Truncated)?;
        self.rest = rest;
        Ok(value)
    }

    /// `count` consecutive layouts, checked against `max` before anything else; borrowed
    /// from the datagram, so nothing is allocated before the length is known to be there.
    fn take_list<T: FromBytes + Immutable + Unaligned>(
        &mut self,
        count: u16,
        max: usize,
    ) -> Result<&'a [T], DecodeError> {
        let count = usize::from(count);
        if count > max {
            return Err(DecodeError::TooManyEntries);
        }
        let (list, rest) = <[T]>::ref_from_prefix_with_elems(self.rest, count)
            .map_err(|_| DecodeError::Truncated)?;
        self.rest = rest;
        Ok(list)
    }

    /// The packet must end here.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed)
        }
    }
}

fn flag(byte: u8) -> Result<bool, DecodeError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Malformed),
    }
}

fn reserved_zero<T: Default + PartialEq>(value: T) -> Result<(), DecodeError> {
    if value == T::default() {
        Ok(())
    } else {
        Err(DecodeError::Malformed)
    }
}

/// A sorted, deduplicated node list (the protocol compares lists element-wise).
fn node_list(list: &[U32]) -> Result<Vec<NodeId>, DecodeError> {
    let nodes: Vec<NodeId> = list.iter().map(|n| n.get()).collect();
    if is_ascending(&nodes) {
        Ok(nodes)
    } else {
        Err(DecodeError::Malformed)
    }
}

fn is_ascending(nodes: &[NodeId]) -> bool {
    nodes.windows(2).all(|w| w[0] < w[1])
}

fn count_u16(len: usize) -> U16 {
    // The list limits (far below u16::MAX, asserted above) are checked in debug builds;
    // a list this long is a bug in the caller, not input.
    U16::new(u16::try_from(len).expect("wire list longer than u16::MAX"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u32 = 0xC1C1_0042;

    use crate::splitmix::TestRng as Rng;

    fn ring(rep: NodeId, seq: u64) -> RingId {
        RingId { rep, seq }
    }

    fn token(rtr: Vec<u64>) -> Packet {
        Packet::Token(Token {
            sender: 7,
            ring_id: ring(1, 0x1_0000_0004),
            token_seq: u64::MAX,
            seq: 1234,
            aru: 1200,
            aru_addr: 3,
            fcc: 17,
            backlog: u32::MAX,
            retrans_flg: true,
            install_seq: 99,
            rtr,
        })
    }

    fn mcast(payload: &[u8], recovered: Option<Recovered>) -> Packet {
        Packet::Mcast(Mcast {
            sender: 2,
            ring_id: ring(1, 8),
            seq: 5,
            origin: 3,
            safe: recovered.is_none(),
            recovered,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn recovered() -> Recovered {
        Recovered {
            ring_id: ring(4, 4),
            seq: u64::MAX - 1,
            origin: u32::MAX,
            safe: true,
        }
    }

    fn join(proc: usize, failed: usize, leaving: bool) -> Packet {
        Packet::Join(Join {
            sender: 9,
            ring_seq: 44,
            proc_list: (1..=proc as u32).collect(),
            failed_list: (1..=failed as u32).map(|n| n * 3).collect(),
            leaving,
        })
    }

    fn commit(entries: usize) -> Packet {
        Packet::Commit(CommitToken {
            sender: 1,
            ring_id: ring(1, 12),
            token_seq: 3,
            memb_index: entries as u32,
            entries: (0..entries as u32)
                .map(|i| CommitEntry {
                    node: i * 2 + 1,
                    old_ring_id: ring(i, u64::from(i) + 8),
                    old_aru: 10,
                    old_high_seq: 11,
                    high_delivered: 12,
                    safe_upto: 9,
                    filled: i % 2 == 0,
                })
                .collect(),
        })
    }

    /// Small packets of every kind and every optional part.
    fn small_samples() -> Vec<Packet> {
        vec![
            token(vec![]),
            token(vec![3, 4, 9]),
            Packet::Token(Token::default()),
            mcast(b"", None),
            mcast(b"hello", None),
            mcast(b"", Some(recovered())),
            mcast(&[0xAB; 100], Some(recovered())),
            join(0, 0, false),
            join(3, 2, true),
            commit(0),
            commit(3),
            Packet::MergeDetect {
                sender: 5,
                ring_id: ring(5, 60),
            },
            Packet::HoldCancel {
                sender: 6,
                ring_id: ring(1, 64),
            },
        ]
    }

    /// Every sample, including lists at their limits.
    fn all_samples() -> Vec<Packet> {
        let mut samples = small_samples();
        samples.push(token((0..MAX_RTR_ENTRIES as u64).collect()));
        samples.push(join(MAX_MEMBERS, 0, false));
        samples.push(join(0, MAX_MEMBERS, false));
        samples.push(join(MAX_MEMBERS, MAX_MEMBERS, true));
        samples.push(commit(MAX_MEMBERS));
        samples.push(mcast(&[7; 65_000], Some(recovered())));
        samples
    }

    #[test]
    fn every_kind_round_trips() {
        for packet in all_samples() {
            let bytes = packet.encode(CLUSTER);
            assert_eq!(
                Packet::decode(&bytes, CLUSTER),
                Ok(packet.clone()),
                "{packet:?}"
            );
        }
    }

    #[test]
    fn encoded_lengths_match_the_length_functions() {
        assert_eq!(token(vec![1, 2]).encode(CLUSTER).len(), token_len(2));
        assert_eq!(join(3, 4, false).encode(CLUSTER).len(), join_len(3, 4));
        assert_eq!(commit(5).encode(CLUSTER).len(), commit_len(5));
        assert_eq!(
            commit(MAX_MEMBERS).encode(CLUSTER).len(),
            MAX_CONTROL_PACKET_BYTES
        );
        // MCAST_OVERHEAD is exact: what a recovered mcast adds around its payload.
        assert_eq!(
            mcast(&[1; 10], Some(recovered())).encode(CLUSTER).len(),
            10 + MCAST_OVERHEAD
        );
        assert_eq!(
            mcast(&[1; 10], None).encode(CLUSTER).len(),
            10 + MCAST_OVERHEAD - RECOVERED_LEN
        );
    }

    #[test]
    fn header_layout_is_as_documented() {
        let bytes = Packet::HoldCancel {
            sender: 0x0A0B_0C0D,
            ring_id: ring(1, 2),
        }
        .encode(0x1122_3344);
        assert_eq!(
            bytes[..HEADER_LEN],
            [
                0x52,
                0x43,
                VERSION,
                KIND_HOLD_CANCEL,
                0x44,
                0x33,
                0x22,
                0x11,
                0x0D,
                0x0C,
                0x0B,
                0x0A
            ]
        );
    }

    #[test]
    fn mcast_payload_is_a_slice_of_the_datagram() {
        let bytes = mcast(b"zero copy please", Some(recovered())).encode(CLUSTER);
        let Ok(Packet::Mcast(m)) = Packet::decode(&bytes, CLUSTER) else {
            panic!("mcast did not decode");
        };
        let range = bytes.as_ptr_range();
        assert!(range.contains(&m.payload.as_ptr()));
        assert_eq!(m.payload.as_ptr_range().end, range.end);
    }

    /// A mcast built in place is byte for byte the one `encode` makes, and the payload
    /// it hands back is the datagram's own.
    #[test]
    fn built_mcast_equals_encoded_mcast() {
        for payload in [&b""[..], b"x", &[0x5A; 1000], &[3; 65_000]] {
            for safe in [false, true] {
                let fields = McastFields {
                    sender: 2,
                    ring_id: ring(1, 8),
                    seq: u64::MAX - 3,
                    origin: 3,
                    safe,
                };
                for by_reference_min in [usize::MAX, 256] {
                    // A small capacity: the buffer must grow, not overflow.
                    let mut builder = McastBuilder::new(16, by_reference_min);
                    let message = Bytes::copy_from_slice(payload);
                    builder.put_varint(300);
                    builder.put_data(&message, 0..message.len(), false);
                    builder.put_varint(7);
                    let built = builder.finish(CLUSTER, fields);
                    let mut expected_payload = BytesMut::new();
                    super::super::pack::put_varint(&mut expected_payload, 300);
                    expected_payload.extend_from_slice(payload);
                    super::super::pack::put_varint(&mut expected_payload, 7);
                    let expected = Packet::Mcast(Mcast {
                        sender: fields.sender,
                        ring_id: fields.ring_id,
                        seq: fields.seq,
                        origin: fields.origin,
                        safe,
                        recovered: None,
                        payload: expected_payload.freeze(),
                    });
                    let datagram = built.datagram.to_bytes();
                    assert_eq!(datagram, expected.encode(CLUSTER));
                    assert_eq!(built.payload, built.datagram.skip(PLAIN_MCAST_PREFIX));
                    assert_eq!(built.fragment_of, None);
                    assert_eq!(decode(&datagram), Ok(expected));
                    // Taken by reference: the message's own bytes are a piece.
                    let by_reference = payload.len() >= by_reference_min;
                    assert_eq!(
                        built
                            .datagram
                            .pieces()
                            .any(|p| p.as_ptr() == message.as_ptr()),
                        by_reference && !payload.is_empty()
                    );
                    assert_eq!(built.datagram.is_contiguous(), !by_reference);
                }
            }
        }
    }

    /// Rewrites the little-endian u16 at `at`.
    fn with_u16(bytes: &Bytes, at: usize, value: u16) -> Bytes {
        let mut v = bytes.to_vec();
        v[at..at + 2].copy_from_slice(&value.to_le_bytes());
        Bytes::from(v)
    }

    fn with_byte(bytes: &Bytes, at: usize, value: u8) -> Bytes {
        let mut v = bytes.to_vec();
        v[at] = value;
        Bytes::from(v)
    }

    fn decode(bytes: &Bytes) -> Result<Packet, DecodeError> {
        Packet::decode(bytes, CLUSTER)
    }

    #[test]
    fn header_errors() {
        let good = token(vec![1]).encode(CLUSTER);
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&good.slice(..HEADER_LEN - 1)),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&with_u16(&good, 0, 0x5243)),
            Err(DecodeError::BadMagic)
        );
        assert_eq!(
            decode(&with_byte(&good, 2, 0)),
            Err(DecodeError::BadVersion)
        );
        assert_eq!(
            decode(&with_byte(&good, 2, 2)),
            Err(DecodeError::BadVersion)
        );
        assert_eq!(
            Packet::decode(&good, CLUSTER + 1),
            Err(DecodeError::OtherCluster)
        );
        for kind in [0, 7, 0x80, 0xFF] {
            assert_eq!(
                decode(&with_byte(&good, 3, kind)),
                Err(DecodeError::UnknownKind)
            );
        }
    }

    #[test]
    fn lists_over_their_limits_are_too_many_entries() {
        // Count fields: token rtr_count at header + 58; join proc/failed at header + 10/12;
        // commit entry_count at header + 24.
        let t = token(vec![]).encode(CLUSTER);
        let over = MAX_RTR_ENTRIES as u16 + 1;
        assert_eq!(
            decode(&with_u16(&t, HEADER_LEN + 58, over)),
            Err(DecodeError::TooManyEntries)
        );
        assert_eq!(
            decode(&with_u16(&t, HEADER_LEN + 58, u16::MAX)),
            Err(DecodeError::TooManyEntries)
        );
        let j = join(0, 0, false).encode(CLUSTER);
        let over = MAX_MEMBERS as u16 + 1;
        assert_eq!(
            decode(&with_u16(&j, HEADER_LEN + 10, over)),
            Err(DecodeError::TooManyEntries)
        );
        assert_eq!(
            decode(&with_u16(&j, HEADER_LEN + 12, over)),
            Err(DecodeError::TooManyEntries)
        );
        let c = commit(0).encode(CLUSTER);
        assert_eq!(
            decode(&with_u16(&c, HEADER_LEN + 24, over)),
            Err(DecodeError::TooManyEntries)
        );
        // At the limit but without the bytes: truncated, and nothing was allocated for it.
        assert_eq!(
            decode(&with_u16(&c, HEADER_LEN + 24, MAX_MEMBERS as u16)),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        for packet in small_samples() {
            let mut v = packet.encode(CLUSTER).to_vec();
            v.push(0);
            assert_eq!(
                decode(&Bytes::from(v)),
                Err(DecodeError::Malformed),
                "{packet:?}"
            );
        }
    }

    #[test]
    fn bool_and_reserved_bytes_other_than_zero_are_malformed() {
        let h = HEADER_LEN;
        let t = token(vec![]).encode(CLUSTER);
        let m = mcast(b"x", Some(recovered())).encode(CLUSTER);
        let j = join(1, 1, false).encode(CLUSTER);
        let c = commit(1).encode(CLUSTER);
        let cases = [
            (&t, h + 56, 2),      // retrans_flg
            (&t, h + 57, 1),      // reserved
            (&m, h + 24, 2),      // safe
            (&m, h + 25, 2),      // recovered
            (&m, h + 26, 1),      // reserved
            (&m, h + 27, 1),      // reserved
            (&m, h + 56, 2),      // recovered.safe
            (&m, h + 57, 1),      // recovered.reserved
            (&j, h + 8, 2),       // leaving
            (&j, h + 9, 1),       // reserved
            (&j, h + 14, 1),      // reserved2
            (&c, h + 26, 1),      // reserved
            (&c, h + 28 + 48, 2), // entry.filled
            (&c, h + 28 + 51, 1), // entry.reserved
        ];
        for (bytes, at, value) in cases {
            assert_eq!(
                decode(&with_byte(bytes, at, value)),
                Err(DecodeError::Malformed),
                "at {at}"
            );
        }
    }

    #[test]
    fn unsorted_or_duplicate_node_lists_are_malformed() {
        // Built by hand: `encode` asserts sortedness in debug builds.
        let cases: [(&[u32], &[u32]); 2] = [(&[2, 1], &[]), (&[], &[3, 3])];
        for (proc_list, failed_list) in cases {
            let mut v = join(proc_list.len(), failed_list.len(), false)
                .encode(CLUSTER)
                .to_vec();
            for (i, node) in proc_list.iter().chain(failed_list).enumerate() {
                let at = HEADER_LEN + JOIN_BODY_LEN + 4 * i;
                v[at..at + 4].copy_from_slice(&node.to_le_bytes());
            }
            assert_eq!(decode(&Bytes::from(v)), Err(DecodeError::Malformed));
        }
        let mut v = commit(2).encode(CLUSTER).to_vec();
        let second = HEADER_LEN + COMMIT_BODY_LEN + COMMIT_ENTRY_LEN;
        v[second..second + 4].copy_from_slice(&1u32.to_le_bytes()); // same node as the first
        assert_eq!(decode(&Bytes::from(v)), Err(DecodeError::Malformed));
    }

    #[test]
    fn mcast_payload_length_must_match() {
        let m = mcast(b"abcd", None).encode(CLUSTER);
        let len_at = HEADER_LEN + 28;
        let with_len = |len: u32| {
            let mut v = m.to_vec();
            v[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
            Bytes::from(v)
        };
        assert_eq!(decode(&with_len(3)), Err(DecodeError::Malformed));
        assert_eq!(decode(&with_len(5)), Err(DecodeError::Truncated));
        assert_eq!(decode(&with_len(u32::MAX)), Err(DecodeError::Truncated));
        assert!(decode(&with_len(4)).is_ok());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for packet in all_samples() {
            let bytes = packet.encode(CLUSTER);
            for len in 0..bytes.len() {
                assert!(decode(&bytes.slice(..len)).is_err(), "{len} of {packet:?}");
            }
        }
    }

    #[test]
    fn random_datagrams_never_panic() {
        let mut rng = Rng(0x5EED_0001);
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            buf.clear();
            let len = rng.below(160);
            buf.extend((0..len).map(|_| rng.next() as u8));
            // Mostly a valid header, or nothing would get past the magic.
            if len >= HEADER_LEN && rng.below(4) != 0 {
                buf[..2].copy_from_slice(&MAGIC.to_le_bytes());
                buf[2] = VERSION;
                buf[3] = rng.below(8) as u8;
                buf[4..8].copy_from_slice(&CLUSTER.to_le_bytes());
            }
            let bytes = Bytes::copy_from_slice(&buf);
            if let Ok(packet) = decode(&bytes) {
                // Whatever decodes has exactly one encoding.
                assert_eq!(packet.encode(CLUSTER), bytes);
            }
        }
    }

    #[test]
    fn mutated_packets_never_panic() {
        let encoded: Vec<Bytes> = small_samples().iter().map(|p| p.encode(CLUSTER)).collect();
        let mut rng = Rng(0x5EED_0002);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let original = &encoded[rng.below(encoded.len())];
            let mut v = original.to_vec();
            let at = rng.below(v.len());
            if rng.below(2) == 0 {
                v[at] ^= 1 << rng.below(8);
            } else {
                v[at] = rng.next() as u8;
            }
            let bytes = Bytes::from(v);
            if let Ok(packet) = decode(&bytes) {
                accepted += 1;
                assert_eq!(packet.encode(CLUSTER), bytes);
            }
        }
        // Mutations of values (not of structure) must still decode.
        assert!(accepted > 10_000, "only {accepted} mutations decoded");
    }
}
