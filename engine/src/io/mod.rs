//! The io_uring event loop that drives a Totem node over UDP (see docs/architecture.md).
//!
//! - [`engine`]: the loop itself (one thread, pinned when configured).
//! - [`net`]: the UDP sockets of the two transports, raw socket addresses.
//! - [`bufring`]: the provided-buffer ring multishot receives fill.
//! - [`signal`]: SIGTERM/SIGINT as a signalfd, the eventfd [`signal::Waker`].
//! - [`scripts`]: GS deactivate scripts, run outside the engine thread.
//! - [`stats`]: the shared-memory counters page `ringcast status` reads.
//!
//! This is one of the few places with `unsafe` (io_uring submissions that lend buffers
//! to the kernel, the mapped stats page, a few libc calls); every block says why it holds.

pub mod bufring;
pub mod engine;
pub mod net;
pub mod scripts;
pub mod signal;
pub mod stats;

pub use engine::{Engine, EngineError, KernelFeatures, run};
