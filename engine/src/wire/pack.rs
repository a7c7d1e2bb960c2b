//! Packing many small application messages into one datagram payload, fragmenting large
//! ones across several, and reassembling them on the receiving side.
//!
//! Fragments of one message are sent by one node in increasing sequence order, so the
//! receiver reassembles per originator. A message is delivered only when all of its
//! fragments were ordered on one ring: after a configuration change the sender restarts
//! a partly sent message ([`SendQueue::restart_partial`]) and receivers drop partial
//! ones ([`Reassembler::reset`]).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::totem::{NodeId, SubmitError};

/// Application messages waiting to be sent, bounded in bytes.
#[derive(Debug)]
pub struct SendQueue {
    queue: VecDeque<(Bytes, bool)>,
    _todo: (),
}

impl SendQueue {
    pub fn new(max_bytes: usize, max_message_bytes: usize) -> SendQueue {
        let _ = (max_bytes, max_message_bytes);
        todo!()
    }
    pub fn push(&mut self, data: Bytes, safe: bool) -> Result<(), SubmitError> {
        let _ = (data, safe);
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    /// Messages waiting (a partly sent one counts).
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn bytes(&self) -> usize {
        todo!()
    }
    /// The next datagram payload of at most `max_payload` bytes and whether it carries
    /// SAFE messages, or None when empty.
    pub fn next_payload(&mut self, max_payload: usize) -> Option<(Bytes, bool)> {
        let _ = max_payload;
        todo!()
    }
    /// A message of which some fragments were sent starts again from its first byte.
    pub fn restart_partial(&mut self) {
        todo!()
    }
}

/// Reassembly of the messages in delivered payloads, per originator.
#[derive(Debug)]
pub struct Reassembler {
    _todo: (),
}

impl Reassembler {
    pub fn new(max_message_bytes: usize) -> Reassembler {
        let _ = max_message_bytes;
        todo!()
    }
    /// Unpacks one delivered payload from `origin`, calling `deliver` with each message
    /// completed by it. Returns the number of malformed chunks dropped.
    pub fn push(&mut self, origin: NodeId, payload: &Bytes, deliver: impl FnMut(Bytes)) -> usize {
        let _ = (origin, payload, deliver);
        todo!()
    }
    /// Drops every partial message (at a regular configuration change).
    pub fn reset(&mut self) {
        todo!()
    }
}
