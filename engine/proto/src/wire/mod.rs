//! What goes on the wire: Totem packet layouts (`packet`) and the packing of many small
//! application messages into one datagram / fragmentation of large ones (`pack`).
//! Pure code: bytes in, bytes out, every read bounds-checked, no panics on bad input.

pub mod gather;
pub mod pack;
pub mod packet;
pub mod seal;

pub use packet::{CommitEntry, CommitToken, DecodeError, Join, Mcast, Packet, Recovered, Token};

/// Largest ring, and the most node ids a join or commit token may carry
/// (Corosync's PROCESSOR_COUNT_MAX).
pub const MAX_MEMBERS: usize = 384;

/// Most retransmit requests one token carries.
pub const MAX_RTR_ENTRIES: usize = 64;
