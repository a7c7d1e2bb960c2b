//! ringcast-shm: what the engine and its clients share.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod proto;
pub mod socket;
