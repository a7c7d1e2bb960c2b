//! How CPG messages travel inside Totem payloads. This encoding is ringcast's own (not
//! Corosync's, docs/cpg.md §7): versioned, little-endian, with a compact header so that
//! an application payload is a zero-copy slice of the Totem delivery.
//!
//! ```text
//! every message   0: u8 service id = version (1)   1: u8 kind
//! JOIN     (1)    2: u32 pid   6: u8 name_len (1..=128)   7: name
//! LEAVE    (2)    same as JOIN (the member left with cpg_leave, reason LEAVE)
//! PROCDOWN (3)    same as JOIN (the member's connection went away, reason PROCDOWN)
//! MCAST    (4)    same as JOIN, then the application payload to the end
//! JOINLIST (5)    2: u32 ring rep   6: u64 ring seq   14: u32 count
//!                 18: count × { u32 pid, u8 name_len, name }
//! ```
//!
//! Decoding trusts nothing: a wrong version or kind, a name length outside 1..=128, a
//! truncated message, trailing bytes after a JOIN/LEAVE/PROCDOWN/JOINLIST: all are
//! [`Malformed`] and the message is dropped (and counted) by the caller.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{GroupName, MAX_NAME_BYTES};
use crate::totem::RingId;

/// The first byte of every CPG message: the CPG service's id (crate::service), which
/// is also the version of this encoding.
pub const VERSION: u8 = crate::service::ServiceId::Cpg as u8;

const KIND_JOIN: u8 = 1;
const KIND_LEAVE: u8 = 2;
const KIND_PROCDOWN: u8 = 3;
const KIND_MCAST: u8 = 4;
const KIND_JOINLIST: u8 = 5;

/// Bytes before the name in JOIN, LEAVE, PROCDOWN and MCAST.
const MEMBER_PREFIX: usize = 7;
/// Largest header of a MCAST: version, kind, pid, name length and the longest name.
pub const MCAST_HEADER_MAX: usize = MEMBER_PREFIX + MAX_NAME_BYTES;
const JOINLIST_PREFIX: usize = 18;
/// Largest JOINLIST entry: pid, name length and the longest name.
pub const JOINLIST_ENTRY_MAX: usize = 5 + MAX_NAME_BYTES;

/// Largest JOINLIST of `entries` members.
pub const fn joinlist_bytes_max(entries: usize) -> usize {
    JOINLIST_PREFIX + entries * JOINLIST_ENTRY_MAX
}

/// One CPG message as carried by Totem. Names and payloads are slices of the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Join {
        group: GroupName,
        pid: u32,
    },
    /// LEAVE (`procdown == false`) or PROCDOWN.
    Leave {
        group: GroupName,
        pid: u32,
        procdown: bool,
    },
    Mcast {
        group: GroupName,
        pid: u32,
        payload: Bytes,
    },
    JoinList {
        ring_id: RingId,
        /// The sender's own members: (group, pid).
        entries: Vec<(GroupName, u32)>,
    },
}

/// Why a message from the network was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("truncated")]
    Truncated,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("group name length {0} outside 1..=128")]
    NameLength(usize),
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

fn put_member(out: &mut impl BufMut, kind: u8, group: &GroupName, pid: u32) {
    let name = group.as_bytes();
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u32_le(pid);
    // GroupName guarantees 1..=128 bytes.
    out.put_u8(name.len() as u8);
    out.put_slice(name);
}

/// Length of a multicast's header for `group`.
pub fn mcast_header_len(group: &GroupName) -> usize {
    MEMBER_PREFIX + group.len()
}

/// Writes a multicast's header into `out`, which is exactly
/// [`mcast_header_len`] long.
pub fn write_mcast_header(mut out: &mut [u8], group: &GroupName, pid: u32) {
    debug_assert_eq!(out.len(), mcast_header_len(group));
    put_member(&mut out, KIND_MCAST, group, pid);
}

pub fn encode_join(group: &GroupName, pid: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(MEMBER_PREFIX + group.len());
    put_member(&mut out, KIND_JOIN, group, pid);
    out.freeze()
}

pub fn encode_leave(group: &GroupName, pid: u32, procdown: bool) -> Bytes {
    let kind = if procdown { KIND_PROCDOWN } else { KIND_LEAVE };
    let mut out = BytesMut::with_capacity(MEMBER_PREFIX + group.len());
    put_member(&mut out, kind, group, pid);
    out.freeze()
}

/// Messages up to this size are carved out of a shared arena by [`encode_mcast_into`].
pub const ARENA_MESSAGE_MAX: usize = 1024;
/// Size of one arena allocation.
const ARENA_BYTES: usize = 16 << 10;

/// [`encode_mcast`] for small messages out of `arena`: many consecutive messages share
/// one allocation and one reference count (a malloc, a free and cold reference counts
/// per message otherwise dominate the engine's cost at 64 B). An arena chunk lives as
/// long as its longest-lived message: at most 16 KiB per message Totem holds.
pub fn encode_mcast_into(
    arena: &mut BytesMut,
    group: &GroupName,
    pid: u32,
    parts: &[&[u8]],
) -> Bytes {
    let len = MEMBER_PREFIX + group.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > ARENA_MESSAGE_MAX {
        return encode_mcast(group, pid, parts);
    }
    if arena.capacity() < len {
        *arena = BytesMut::with_capacity(ARENA_BYTES);
    }
    put_member(arena, KIND_MCAST, group, pid);
    for part in parts {
        arena.put_slice(part);
    }
    arena.split().freeze()
}

/// Gathers `parts` behind the header: the one copy of the payload on the send path.
pub fn encode_mcast(group: &GroupName, pid: u32, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(MEMBER_PREFIX + group.len() + len);
    put_member(&mut out, KIND_MCAST, group, pid);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

pub fn encode_joinlist<'a>(
    ring_id: RingId,
    entries: impl ExactSizeIterator<Item = (&'a GroupName, u32)>,
) -> Bytes {
    let count = entries.len();
    let mut out = BytesMut::with_capacity(joinlist_bytes_max(count));
    out.put_u8(VERSION);
    out.put_u8(KIND_JOINLIST);
    out.put_u32_le(ring_id.rep);
    out.put_u64_le(ring_id.seq);
    out.put_u32_le(u32::try_from(count).expect("joinlist count bounded by max_connections"));
    for (group, pid) in entries {
        out.put_u32_le(pid);
        out.put_u8(group.len() as u8);
        out.put_slice(group.as_bytes());
    }
    out.freeze()
}

/// A bounds-checked reader over a delivery.
struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(Malformed::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A name as a zero-copy slice of the delivery.
    fn name(&mut self) -> Result<GroupName, Malformed> {
        let range = self.name_range()?;
        Ok(GroupName::from_wire(self.bytes, range))
    }

    /// Where the next name lies in the delivery.
    fn name_range(&mut self) -> Result<std::ops::Range<usize>, Malformed> {
        let len = usize::from(self.u8()?);
        if !(1..=MAX_NAME_BYTES).contains(&len) {
            return Err(Malformed::NameLength(len));
        }
        let start = self.at;
        self.take(len)?;
        Ok(start..start + len)
    }

    fn rest(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn end(&self) -> Result<(), Malformed> {
        match self.rest() {
            0 => Ok(()),
            n => Err(Malformed::Trailing(n)),
        }
    }
}

/// [`decode`] taking the delivery: a multicast's payload is the delivery itself, moved
/// past its header, not a new reference to it (the hot path: each reference costs an
/// atomic operation).
pub fn decode_owned(mut bytes: Bytes) -> Result<Message, Malformed> {
    let mut r = Reader {
        bytes: &bytes,
        at: 0,
    };
    let version = r.u8()?;
    if version != VERSION {
        return Err(Malformed::Version(version));
    }
    if r.u8()? != KIND_MCAST {
        return decode(&bytes);
    }
    let pid = r.u32()?;
    let range = r.name_range()?;
    let at = r.at;
    let group = GroupName::from_wire(&bytes, range);
    bytes.advance(at);
    Ok(Message::Mcast {
        group,
        pid,
        payload: bytes,
    })
}

pub fn decode(bytes: &Bytes) -> Result<Message, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(Malformed::Version(version));
    }
    let kind = r.u8()?;
    match kind {
        KIND_JOIN | KIND_LEAVE | KIND_PROCDOWN | KIND_MCAST => {
            let pid = r.u32()?;
            let group = r.name()?;
            let message = match kind {
                KIND_JOIN => Message::Join { group, pid },
                KIND_LEAVE | KIND_PROCDOWN => Message::Leave {
                    group,
                    pid,
                    procdown: kind == KIND_PROCDOWN,
                },
                _ => {
                    let payload = bytes.slice(r.at..);
                    return Ok(Message::Mcast {
                        group,
                        pid,
                        payload,
                    });
                }
            };
            r.end()?;
            Ok(message)
        }
        KIND_JOINLIST => {
            let rep = r.u32()?;
            let seq = r.u64()?;
            let count = r.u32()? as usize;
            // Each entry takes at least 6 bytes: a count the rest cannot hold is a lie,
            // refused before anything is allocated for it.
            if count > r.rest() / 6 {
                return Err(Malformed::Truncated);
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let pid = r.u32()?;
                let group = r.name()?;
                entries.push((group, pid));
            }
            r.end()?;
            Ok(Message::JoinList {
                ring_id: RingId { rep, seq },
                entries,
            })
        }
        other => Err(Malformed::Kind(other)),
    }
}
