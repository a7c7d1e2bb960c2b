//! ringcast engine: the Totem single-ring ordering and membership protocol as a sans-IO
//! state machine (`totem`), the CPG group service on top of it (`cpg`, also sans-IO),
//! its wire encoding (`wire`), the io_uring driver that runs it
//! on real sockets (`io`), and a deterministic cluster simulator that runs the same
//! protocol code (`sim`).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cpg;
pub mod daemon;
pub mod io;
pub mod ipc;
pub mod sim;
pub mod splitmix;
pub mod totem;
pub mod wire;
