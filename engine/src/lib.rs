//! ringcast engine: the Totem single-ring ordering and membership protocol as a sans-IO
//! state machine (`totem`), its wire encoding (`wire`), and a deterministic cluster
//! simulator that runs the same code (`sim`).
#![forbid(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod sim;
pub mod totem;
pub mod wire;
