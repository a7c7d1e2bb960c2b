//! ringcast engine: the daemon `ringcastd` that drives the protocol of
//! `ringcast-proto` (Totem, CPG, wire codecs, re-exported here under their old paths)
//! with io_uring on real sockets (`io`), serves local clients over shared memory
//! (`ipc`), and carries the daemon's configuration and persistence (`daemon`).
//! See docs/architecture.md.
#![deny(unsafe_op_in_unsafe_fn)]

pub use ringcast_proto::{cpg, host, service, splitmix, totem, wire};

pub mod daemon;
pub mod io;
pub mod ipc;
