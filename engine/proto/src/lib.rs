//! ringcast's protocol, as pure state machines and codecs: the Totem single-ring
//! ordering and membership protocol (`totem`), the CPG group service on top of it
//! (`cpg`), Group Services beside it (`gs`), and what travels on the wire (`wire`: packet layouts, packing and
//! fragmentation, authenticated encryption as functions over bytes), and the host
//! that runs them together for one node (`host`: Totem, CPG and the routing between
//! them behind one input/output interface).
//!
//! Nothing here opens a file or a socket, reads a clock or draws randomness: time,
//! seeds, keys and nonce counters are inputs (see docs/architecture.md). The daemon
//! (`ringcast-engine`) and the simulator (`ringcast-sim`) drive the very same code.
#![forbid(unsafe_code)]

pub mod cpg;
pub mod gs;
pub mod host;
pub mod service;
pub mod splitmix;
pub mod totem;
pub mod wire;
