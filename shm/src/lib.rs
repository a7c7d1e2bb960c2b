//! ringcast-shm: the memory one engine (ringcastd) shares with one client process.
//!
//! For each client connection the engine creates a [`Region`] (a sealed memfd, huge pages
//! when the host has them), and passes its fd to the client, which maps it with
//! [`Region::open`]. Inside the region live a submit ring (client → engine), an event ring
//! (engine → client) and a buffer pool the client writes payloads into for zero-copy sends.
//! The layout is a versioned ABI, drawn in [`layout::RegionHeader`].
//!
//! Trust: the engine never trusts what the client can write. Everything read back from the
//! region is bounds-checked against the engine's own copy of the [`Layout`], and a ring that
//! holds nonsense yields [`RingError`] (the engine then drops that client), never a panic or
//! an access outside the mapping.
//!
//! `unsafe` lives in [`ring`] (atomics and byte copies through pointers into the mapping)
//! and [`region`]/[`wake`] (FFI: memfd, fcntl, eventfd, poll); every block says why it holds.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod layout;
pub mod pool;
pub mod region;
pub mod ring;
pub mod wake;

pub use layout::{Layout, MAGIC, RegionSpec, VERSION};
pub use pool::{PoolAllocator, PoolBuf, PoolError};
pub use region::{HugePages, Region, RegionError};
pub use ring::{Consumer, Producer, PushError, Record, RingError};
pub use wake::EventFd;
