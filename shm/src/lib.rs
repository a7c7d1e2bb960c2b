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
//! ```
//! use ringcast_shm::{EventFd, HugePages, PoolAllocator, Region, RegionSpec};
//!
//! // Engine: one region per client connection; its fd goes to the client (SCM_RIGHTS).
//! let engine = Region::create("client-42", &RegionSpec::default(), HugePages::Try)?;
//! let mut submit_rx = engine.submit_consumer().unwrap();
//! let wake_engine = EventFd::new()?; // also sent to the client
//!
//! // Client: maps the received fd (here a duplicate) and takes its ring ends.
//! let mut client = Region::open(engine.fd().try_clone_to_owned()?)?;
//! client.set_client_pid(std::process::id());
//! let mut submit_tx = client.submit_producer().unwrap();
//! let mut pool = PoolAllocator::new(client.pool_len(), 4096);
//!
//! // Zero-copy send: payload into the pool, descriptor onto the submit ring.
//! let buf = pool.alloc(5).unwrap();
//! client.pool_slice_mut(&buf).copy_from_slice(b"hello");
//! let desc = [buf.offset().to_le_bytes(), buf.len().to_le_bytes()].concat();
//! submit_tx.try_push(1, &[&desc]).unwrap();
//! if submit_tx.publish() {
//!     wake_engine.notify()?; // the engine had announced it was going to sleep
//! }
//!
//! // Engine: read the descriptor, then the payload in place (bounds-checked, untrusted).
//! let record = submit_rx.peek()?.unwrap();
//! let offset = u64::from_le_bytes(record.payload[..8].try_into().unwrap());
//! let len = u64::from_le_bytes(record.payload[8..].try_into().unwrap());
//! assert_eq!(engine.pool_slice(offset, len), Some(&b"hello"[..]));
//! submit_rx.consume();
//!
//! // Engine with nothing to do: announce sleep, re-check, block on the eventfd.
//! if submit_rx.prepare_sleep() {
//!     wake_engine.wait(Some(std::time::Duration::from_millis(1)))?;
//!     submit_rx.cancel_sleep();
//!     wake_engine.drain()?;
//! }
//! pool.free(buf)?; // once the engine says it is done with the buffer
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`stats`] is the engine's counters page (read by the `ringcast` command line) and
//! [`paths`] the default socket and directories both sides derive.
//!
//! `unsafe` lives in [`ring`] (atomics and byte copies through pointers into the mapping)
//! and [`region`]/[`wake`] (FFI: memfd, fcntl, eventfd, poll); every block says why it holds.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod delivery_pool;
pub mod gs_proto;
pub mod layout;
pub mod paths;
pub mod pool;
pub mod proto;
pub mod region;
pub mod ring;
pub mod send_area;
pub mod socket;
pub mod stats;
pub mod wake;

pub use delivery_pool::{DeliveryPool, DeliveryPoolView};
pub use layout::{Layout, MAGIC, RegionSpec, VERSION};
pub use pool::{PoolAllocator, PoolBuf, PoolError};
pub use region::{HugePages, Region, RegionError};
pub use ring::{Consumer, Producer, PushError, Record, RingError};
pub use wake::EventFd;
