//! Packing many small application messages into one datagram payload, fragmenting large
//! ones across several, and reassembling them on the receiving side.
//!
//! Fragments of one message are sent by one node in increasing sequence order, so the
//! receiver reassembles per originator. A message is delivered only when all of its
//! fragments were ordered on one ring: after a configuration change the sender restarts
//! a partly sent message ([`SendQueue::restart_partial`]) and receivers drop partial
//! ones ([`Reassembler::reset`]).
//!
//! # Chunk format
//!
//! A payload is a sequence of chunks, back to back, with nothing before, between or
//! after them:
//!
//! ```text
//! payload = chunk*
//! chunk   = +---------------------+------------------+------------+
//!           | tag: varint         | total: varint    | data       |
//!           | (len << 2) | kind   | (kind First only)| len bytes  |
//!           +---------------------+------------------+------------+
//! kind    = 0 Whole | 1 First | 2 Middle | 3 Last
//! varint  = LEB128: 7 bits per byte, low bits first, high bit set on all but the last
//! ```
//!
//! A whole message of up to 31 bytes costs 1 byte of framing, up to 4095 bytes 2 bytes,
//! below 512 KiB 3 bytes; a zero-length message is the single byte `0x00`. A message too
//! large for an empty payload is split into First (which carries the message's total
//! length), zero or more Middle, and one Last; First and Middle fill their payload, so
//! each one is the only chunk of its payload, and Last may be followed by whole messages.
//! Every chunk of one payload has the same delivery guarantee (the `Mcast::safe` flag).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::MAX_MEMBERS;
use super::gather::Gather;
use crate::totem::{NodeId, SubmitError};

/// The smallest `max_payload` that `SendQueue::next_payload` accepts: room for the
/// largest First header (two 10-byte varints) and some data, so that every payload
/// makes progress. Real payloads (a datagram of at least 576 bytes less
/// `MCAST_OVERHEAD`) are far larger.
pub const MIN_PAYLOAD: usize = 32;

/// Framing bytes of a whole message of `len` bytes: a payload carries it unfragmented
/// iff `len + whole_overhead(len)` fits in its remaining space.
pub fn whole_overhead(len: usize) -> usize {
    varint_len(tag(len, Kind::Whole))
}

/// Where [`SendQueue::append_payload`] writes a payload. A `BytesMut` copies every
/// byte; a sink may instead take a large message's data by reference (see
/// [`super::gather`]), as long as the bytes it stands for are the same.
pub trait PayloadSink {
    /// Bytes written so far.
    fn written(&self) -> usize;
    /// Room for `additional` more bytes, ahead of writing them.
    fn reserve(&mut self, additional: usize);
    /// One varint of framing.
    fn put_varint(&mut self, value: u64);
    /// A chunk's data, `message[range]`; `fragment` for a First, Middle or Last.
    fn put_data(&mut self, message: &Bytes, range: Range<usize>, fragment: bool);
}

impl PayloadSink for BytesMut {
    #[inline]
    fn written(&self) -> usize {
        self.len()
    }

    #[inline]
    fn reserve(&mut self, additional: usize) {
        BytesMut::reserve(self, additional);
    }

    #[inline]
    fn put_varint(&mut self, value: u64) {
        put_varint(self, value);
    }

    #[inline]
    fn put_data(&mut self, message: &Bytes, range: Range<usize>, _fragment: bool) {
        self.extend_from_slice(&message[range]);
    }
}

/// Application messages waiting to be sent, bounded in bytes.
#[derive(Debug)]
pub struct SendQueue {
    /// Messages in submission order, with their SAFE flag.
    queue: VecDeque<(Bytes, bool)>,
    /// Bytes of the head message already handed out in fragments; 0 when none were.
    sent: usize,
    /// Sum of the lengths of the queued messages (the partly sent one counted whole).
    bytes: usize,
    /// What the queue counts against `max_bytes`: each message at least 1 byte, so that
    /// zero-length messages cannot grow it without bound.
    charged: usize,
    max_bytes: usize,
    max_message_bytes: usize,
}

impl SendQueue {
    pub fn new(max_bytes: usize, max_message_bytes: usize) -> SendQueue {
        SendQueue {
            queue: VecDeque::new(),
            sent: 0,
            bytes: 0,
            charged: 0,
            max_bytes,
            max_message_bytes,
        }
    }

    /// Queues one message. Zero-length messages are allowed (and count as one byte
    /// against `max_bytes`).
    pub fn push(&mut self, data: Bytes, safe: bool) -> Result<(), SubmitError> {
        let len = data.len();
        if len > self.max_message_bytes {
            return Err(SubmitError::TooBig {
                len,
                max: self.max_message_bytes,
            });
        }
        let charge = len.max(1);
        if self.charged.saturating_add(charge) > self.max_bytes {
            return Err(SubmitError::TryAgain);
        }
        self.charged += charge;
        self.bytes += len;
        self.queue.push_back((data, safe));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages waiting (a partly sent one counts).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of the messages waiting (a partly sent one counts whole).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The next datagram payload of at most `max_payload` bytes and whether it carries
    /// SAFE messages, or None when empty.
    ///
    /// Panics if `max_payload < MIN_PAYLOAD` (a configuration bug, not input).
    pub fn next_payload(&mut self, max_payload: usize) -> Option<(Bytes, bool)> {
        assert!(
            max_payload >= MIN_PAYLOAD,
            "max_payload {max_payload} below {MIN_PAYLOAD}"
        );
        if self.is_empty() {
            return None;
        }
        let mut out = BytesMut::with_capacity(max_payload);
        let safe = self.append_payload(&mut out, max_payload)?;
        Some((out.freeze(), safe))
    }

    /// [`SendQueue::next_payload`], appended to `out` (after what it holds already) so
    /// that a caller can write the payload straight into its datagram.
    ///
    /// Panics if `max_payload < MIN_PAYLOAD` (a configuration bug, not input).
    pub fn append_payload(
        &mut self,
        out: &mut impl PayloadSink,
        max_payload: usize,
    ) -> Option<bool> {
        assert!(
            max_payload >= MIN_PAYLOAD,
            "max_payload {max_payload} below {MIN_PAYLOAD}"
        );
        let safe = self.queue.front()?.1;
        let base = out.written();
        out.reserve(max_payload);

        // A fragmented head message goes on first: as Last if the rest fits, else as a
        // Middle that fills the whole payload.
        if self.sent > 0 {
            let (message, _) = self.queue.front()?;
            let rest = message.len() - self.sent;
            if chunk_len(rest, Kind::Last) <= max_payload {
                put_chunk(out, Kind::Last, message, self.sent..message.len());
                self.pop_front();
            } else {
                // `rest` does not fit with a Last header, and a Middle header of the same
                // length is as long, so this Middle never carries the whole rest.
                let len = fragment_len(max_payload, Kind::Middle, 0);
                put_chunk(out, Kind::Middle, message, self.sent..self.sent + len);
                self.sent += len;
                return Some(safe);
            }
        }

        // Then whole messages of the same guarantee, as many as fit.
        while let Some((message, message_safe)) = self.queue.front() {
            if *message_safe != safe {
                break;
            }
            let used = out.written() - base;
            let room = max_payload - used;
            if chunk_len(message.len(), Kind::Whole) <= room {
                put_chunk(out, Kind::Whole, message, 0..message.len());
                self.pop_front();
            } else if used == 0 {
                // Too large even for an empty payload: its First fills this one.
                let total = message.len();
                let len = fragment_len(max_payload, Kind::First, total);
                out.put_varint(tag(len, Kind::First));
                out.put_varint(total as u64);
                out.put_data(message, 0..len, true);
                self.sent = len;
                break;
            } else {
                // It starts the next payload (fragmented only if it needs to be there).
                break;
            }
        }
        debug_assert!(out.written() - base <= max_payload);
        Some(safe)
    }

    /// Whether the head message has been handed out in part: its remaining fragments
    /// must go before anything else from this origin, or receivers lose it.
    pub fn is_partial(&self) -> bool {
        self.sent > 0
    }

    /// A message of which some fragments were sent starts again from its first byte.
    pub fn restart_partial(&mut self) {
        self.sent = 0;
    }

    fn pop_front(&mut self) {
        if let Some((message, _)) = self.queue.pop_front() {
            self.bytes -= message.len();
            self.charged -= message.len().max(1);
        }
        self.sent = 0;
    }
}

/// Where a fragmented message is reassembled, when not on the heap: the caller's memory
/// (the engine's delivery pool, so that local readers read the message where it was
/// joined).
pub trait ReassemblyBuffer: Send {
    /// Appends `data`; the reassembler never appends past the `total` the buffer was
    /// made for.
    fn append(&mut self, data: &[u8]);
    /// The message, once `total` bytes were appended.
    fn finish(self: Box<Self>) -> Bytes;
}

/// Makes a buffer for a message of `total` bytes, or None (then the heap is used).
pub type ReassemblyBuffers = Box<dyn FnMut(usize) -> Option<Box<dyn ReassemblyBuffer>> + Send>;

/// Reassembly of the messages in delivered payloads, per originator.
pub struct Reassembler {
    partials: HashMap<NodeId, Partial>,
    max_message_bytes: usize,
    /// Fragment bytes copied into partial messages, ever.
    copied: std::cell::Cell<u64>,
    /// Buffers for messages of at least `.0` bytes.
    buffers: Option<(usize, std::cell::RefCell<ReassemblyBuffers>)>,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("partials", &self.partials.len())
            .field("max_message_bytes", &self.max_message_bytes)
            .field("buffers_from", &self.buffers.as_ref().map(|b| b.0))
            .finish()
    }
}

/// One message completed by [`Reassembler::push_parts`].
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// A whole message: these bytes of the payload.
    Whole(std::ops::Range<usize>),
    /// The last fragment of a message completed it: the message, joined.
    Joined(Bytes),
}

/// A message of which First and maybe some Middle chunks have arrived.
struct Partial {
    /// The bytes so far; its capacity never exceeds `total`. Empty when `original` or
    /// `external` is set.
    data: Vec<u8>,
    /// The caller's buffer the message is joined in instead of `data`.
    external: Option<Box<dyn ReassemblyBuffer>>,
    /// Bytes received so far; `< total` until Last.
    received: usize,
    /// The length First declared.
    total: usize,
    /// The whole message, when the sender is this node and handed it over with its
    /// First: its fragments are counted, not copied, and Last delivers it.
    original: Option<Bytes>,
}

/// What one chunk did to its origin's reassembly.
enum Outcome {
    /// Nothing to deliver yet (or a malformed chunk, counted).
    Nothing,
    /// The chunk is a whole message: deliver its data.
    Whole,
    /// The chunk completed this message.
    Joined(Bytes),
}

/// A First reserves at most this much up front; the buffer then doubles as data
/// arrives (capped at the declared total), so memory follows bytes received, not bytes
/// claimed by a possibly bogus header.
const INITIAL_RESERVE: usize = 64 << 10;

impl Reassembler {
    pub fn new(max_message_bytes: usize) -> Reassembler {
        Reassembler {
            partials: HashMap::new(),
            max_message_bytes,
            copied: std::cell::Cell::new(0),
            buffers: None,
        }
    }

    /// Joins messages of at least `min_bytes` in buffers from `buffers` (when it gives
    /// one) instead of on the heap.
    pub fn set_buffers(&mut self, min_bytes: usize, buffers: ReassemblyBuffers) {
        self.buffers = Some((min_bytes, std::cell::RefCell::new(buffers)));
    }

    /// Fragment bytes copied to reassemble messages so far (not counting our own
    /// fragments delivered from their original).
    pub fn copied_bytes(&self) -> u64 {
        self.copied.get()
    }

    /// Unpacks one delivered payload from `origin`, calling `deliver` with each message
    /// completed by it. Returns the number of malformed chunks dropped.
    ///
    /// Counted as one malformed chunk each: a chunk header that is truncated or garbage,
    /// or a chunk longer than the payload (the rest of the payload is dropped with it);
    /// a First whose total is over `max_message_bytes` or not larger than its own data;
    /// a Middle or Last without a partial message or that does not continue it exactly;
    /// a whole message over `max_message_bytes`; and a partial message abandoned by a
    /// Whole or First chunk from the same origin (the sender never interleaves them, so
    /// its missing fragments were lost).
    pub fn push(
        &mut self,
        origin: NodeId,
        payload: &Bytes,
        mut deliver: impl FnMut(Bytes),
    ) -> usize {
        self.push_parts(origin, payload, |part| match part {
            Part::Whole(range) => deliver(payload.slice(range)),
            Part::Joined(message) => deliver(message),
        })
    }

    /// [`Reassembler::push`], handing whole messages over as their place in `payload`
    /// rather than as a `Bytes` each: a caller that batches them spares one reference
    /// count per message.
    pub fn push_parts(
        &mut self,
        origin: NodeId,
        payload: &[u8],
        mut deliver: impl FnMut(Part),
    ) -> usize {
        // Every chunk of a payload is from one origin: its partial message is looked up
        // once, kept here while the payload is unpacked, and put back at the end.
        let mut partial = if self.partials.is_empty() {
            None
        } else {
            self.partials.remove(&origin)
        };
        let malformed = self.unpack(payload, &mut partial, &mut deliver);
        if let Some(partial) = partial {
            self.partials.insert(origin, partial);
        }
        malformed
    }

    /// [`Reassembler::push`] for a payload in pieces (see [`super::gather`]): a chunk's
    /// data lies inside one piece, or is the whole of the piece after its header (a
    /// message packed by reference). `original` is this node's own fragmented message
    /// whose First, Middle or Last the payload carries, if any: its fragments are not
    /// copied, and its Last delivers `original` itself. Other payloads pass None.
    pub fn push_gather(
        &mut self,
        origin: NodeId,
        payload: &Gather,
        original: Option<&Bytes>,
        mut deliver: impl FnMut(Bytes),
    ) -> usize {
        let mut partial = if self.partials.is_empty() {
            None
        } else {
            self.partials.remove(&origin)
        };
        let mut malformed = 0;
        let mut pieces = payload.pieces();
        'pieces: while let Some(piece) = pieces.next() {
            let mut pos = 0;
            while pos < piece.len() {
                let Some(header) = parse_header(piece, &mut pos) else {
                    malformed += 1;
                    break 'pieces;
                };
                let rest = piece.len() - pos;
                let data = if header.len <= rest as u64 {
                    let range = pos..pos + header.len as usize;
                    pos = range.end;
                    piece.slice(range)
                } else {
                    // By reference: the header ends its piece and the next piece is
                    // exactly the data.
                    match pieces.next() {
                        Some(next) if rest == 0 && next.len() as u64 == header.len => next.clone(),
                        _ => {
                            malformed += 1;
                            break 'pieces;
                        }
                    }
                };
                let (bad, outcome) = self.on_chunk(&header, &data, original, &mut partial);
                malformed += bad;
                match outcome {
                    Outcome::Nothing => {}
                    Outcome::Whole => deliver(data),
                    Outcome::Joined(message) => deliver(message),
                }
            }
        }
        if let Some(partial) = partial {
            self.partials.insert(origin, partial);
        }
        malformed
    }

    /// The chunk loop of `push_parts`; `partial` is `origin`'s partial message, which
    /// `self.partials` does not hold meanwhile.
    fn unpack(
        &self,
        payload: &[u8],
        partial: &mut Option<Partial>,
        deliver: &mut impl FnMut(Part),
    ) -> usize {
        let mut malformed = 0;
        let mut pos = 0;
        while pos < payload.len() {
            let Some(chunk) = parse_chunk(payload, &mut pos) else {
                return malformed + 1;
            };
            // The common case first: a whole message with nothing being reassembled.
            if chunk.header.kind == Kind::Whole
                && partial.is_none()
                && chunk.data.len() <= self.max_message_bytes
            {
                deliver(Part::Whole(chunk.data));
                continue;
            }
            let data = &payload[chunk.data.clone()];
            let (bad, outcome) = self.on_chunk(&chunk.header, data, None, partial);
            malformed += bad;
            match outcome {
                Outcome::Nothing => {}
                Outcome::Whole => deliver(Part::Whole(chunk.data)),
                Outcome::Joined(message) => deliver(Part::Joined(message)),
            }
        }
        malformed
    }

    /// One chunk with its data: the malformed count it adds and what to deliver.
    /// (Inlined into the per-chunk loops: a call per chunk costs ~10 % of Totem's time
    /// per 64 B message.)
    #[inline(always)]
    fn on_chunk(
        &self,
        chunk: &Header,
        data: &[u8],
        original: Option<&Bytes>,
        partial: &mut Option<Partial>,
    ) -> (usize, Outcome) {
        let mut malformed = 0;
        match chunk.kind {
            Kind::Whole => {
                if partial.take().is_some() {
                    malformed += 1;
                }
                if data.len() > self.max_message_bytes {
                    return (malformed + 1, Outcome::Nothing);
                }
                (malformed, Outcome::Whole)
            }
            Kind::First => {
                if partial.take().is_some() {
                    malformed += 1;
                }
                // `total` comes from the wire: anything over max_message_bytes (or
                // over usize) is dropped before it sizes anything.
                let total = usize::try_from(chunk.total).unwrap_or(usize::MAX);
                if total > self.max_message_bytes || total <= data.len() {
                    return (malformed + 1, Outcome::Nothing);
                }
                // One partial per origin; origins are ring members, so more than
                // MAX_MEMBERS of them is not a ring we are in. (This origin's own
                // partial is out of the map, as it was just dropped.)
                if self.partials.len() >= MAX_MEMBERS {
                    return (malformed + 1, Outcome::Nothing);
                }
                // Our own message, if it is the one this First starts.
                let original = original
                    .filter(|m| {
                        m.len() == total && (m.as_ptr() == data.as_ptr() || m.starts_with(data))
                    })
                    .cloned();
                let mut external = None;
                let buffer = if original.is_some() {
                    Vec::new()
                } else {
                    self.copied.set(self.copied.get() + data.len() as u64);
                    external = self.external_buffer(total);
                    match &mut external {
                        Some(external) => {
                            external.append(data);
                            Vec::new()
                        }
                        None => {
                            let mut buffer =
                                Vec::with_capacity(total.min(INITIAL_RESERVE.max(data.len())));
                            buffer.extend_from_slice(data);
                            buffer
                        }
                    }
                };
                *partial = Some(Partial {
                    data: buffer,
                    external,
                    received: data.len(),
                    total,
                    original,
                });
                (malformed, Outcome::Nothing)
            }
            Kind::Middle | Kind::Last => {
                let Some(open) = partial.as_mut() else {
                    return (malformed + 1, Outcome::Nothing);
                };
                let len = open.received + data.len();
                let continues = match chunk.kind {
                    Kind::Middle => len < open.total,
                    _ => len == open.total,
                };
                if !continues {
                    *partial = None;
                    return (malformed + 1, Outcome::Nothing);
                }
                if open.original.is_none() {
                    self.copied.set(self.copied.get() + data.len() as u64);
                }
                open.append(data);
                if chunk.kind == Kind::Last
                    && let Some(done) = partial.take()
                {
                    let message = match (done.original, done.external) {
                        (Some(original), _) => original,
                        (None, Some(external)) => external.finish(),
                        // No copy: the Vec becomes the Bytes.
                        (None, None) => Bytes::from(done.data),
                    };
                    return (malformed, Outcome::Joined(message));
                }
                (malformed, Outcome::Nothing)
            }
        }
    }

    /// A caller's buffer for a message of `total` bytes, if it wants such messages.
    fn external_buffer(&self, total: usize) -> Option<Box<dyn ReassemblyBuffer>> {
        let (min_bytes, buffers) = self.buffers.as_ref()?;
        if total < *min_bytes {
            return None;
        }
        let mut make = buffers.try_borrow_mut().ok()?;
        make(total)
    }

    /// Drops every partial message (at a regular configuration change).
    pub fn reset(&mut self) {
        self.partials.clear();
    }
}

impl Partial {
    /// Appends `data`, which the caller checked ends at or before `total`: grows the
    /// buffer by doubling, never beyond `total`.
    fn append(&mut self, data: &[u8]) {
        self.received += data.len();
        if self.original.is_some() {
            return;
        }
        if let Some(external) = &mut self.external {
            external.append(data);
            return;
        }
        let needed = self.data.len() + data.len();
        if needed > self.data.capacity() {
            let target = needed.max(self.data.capacity() * 2).min(self.total);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(data);
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Whole = 0,
    First = 1,
    Middle = 2,
    Last = 3,
}

/// A chunk's header: its kind, First's declared total (0 otherwise) and its data length
/// (from the wire: not yet checked against anything).
#[derive(Debug)]
struct Header {
    kind: Kind,
    total: u64,
    len: u64,
}

/// One parsed chunk: its header and where its data lies in the payload.
#[derive(Debug)]
struct Chunk {
    header: Header,
    data: std::ops::Range<usize>,
}

/// Parses the chunk header at `*pos` and moves past it, or None when it is truncated or
/// garbage.
#[inline]
fn parse_header(payload: &[u8], pos: &mut usize) -> Option<Header> {
    let tag = read_varint(payload, pos)?;
    let kind = match tag & 3 {
        0 => Kind::Whole,
        1 => Kind::First,
        2 => Kind::Middle,
        _ => Kind::Last,
    };
    let total = if kind == Kind::First {
        read_varint(payload, pos)?
    } else {
        0
    };
    Some(Header {
        kind,
        total,
        len: tag >> 2,
    })
}

/// Parses the chunk at `*pos` and moves past it, or None when its header is truncated or
/// garbage or its data runs past the end of the payload.
#[inline]
fn parse_chunk(payload: &[u8], pos: &mut usize) -> Option<Chunk> {
    let header = parse_header(payload, pos)?;
    let rest = payload.len().checked_sub(*pos)?;
    if header.len > rest as u64 {
        return None;
    }
    // len <= rest, so it fits in usize.
    let start = *pos;
    *pos += header.len as usize;
    Some(Chunk {
        header,
        data: start..*pos,
    })
}

fn tag(len: usize, kind: Kind) -> u64 {
    ((len as u64) << 2) | kind as u64
}

/// Header and data of a Whole, Middle or Last chunk of `len` bytes.
fn chunk_len(len: usize, kind: Kind) -> usize {
    varint_len(tag(len, kind)) + len
}

/// The most data a First (of a `total`-byte message) or Middle chunk can carry in a
/// payload of `space` bytes. `space >= MIN_PAYLOAD` leaves room for at least one byte.
fn fragment_len(space: usize, kind: Kind, total: usize) -> usize {
    let extra = if kind == Kind::First {
        varint_len(total as u64)
    } else {
        0
    };
    // A header for `space` bytes is at least as long as one for fewer, so this fits;
    // a shorter header may leave room for a few more bytes.
    let mut len = space - extra - varint_len(tag(space, kind));
    while varint_len(tag(len + 1, kind)) + extra + len < space {
        len += 1;
    }
    len
}

/// Appends the chunk carrying `message[range]`.
#[inline]
fn put_chunk(out: &mut impl PayloadSink, kind: Kind, message: &Bytes, range: Range<usize>) {
    out.put_varint(tag(range.len(), kind));
    out.put_data(message, range, kind != Kind::Whole);
}

fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(super) fn put_varint(out: &mut BytesMut, mut value: u64) {
    // Byte by byte: each is a single store into reserved capacity, cheaper on the hot
    // path (two bytes for a 64-byte message) than a variable-length copy.
    while value >= 0x80 {
        out.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// LEB128, at most 10 bytes; None when truncated or over 64 bits.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    // Tags of whole messages under 4 KiB take one or two bytes: read those directly.
    match buf.get(*pos..) {
        Some([b0, ..]) if b0 & 0x80 == 0 => {
            *pos += 1;
            return Some(u64::from(*b0));
        }
        Some([b0, b1, ..]) if b1 & 0x80 == 0 => {
            *pos += 2;
            return Some(u64::from(b0 & 0x7F) | u64::from(*b1) << 7);
        }
        _ => {}
    }
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        let bits = u64::from(byte & 0x7F);
        // The tenth byte holds bit 63 only.
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::splitmix::TestRng as Rng;

    impl Rng {
        fn bytes(&mut self, len: usize) -> Bytes {
            let mut v = Vec::with_capacity(len + 8);
            while v.len() < len {
                v.extend_from_slice(&self.next().to_le_bytes());
            }
            v.truncate(len);
            Bytes::from(v)
        }
    }

    const PAYLOAD_SIZES: [usize; 4] = [576, 1500, 9000, 65_000];
    const MIB: usize = 1 << 20;

    /// Every chunk of a payload, or None if it does not parse to its end.
    fn chunks(payload: &[u8]) -> Option<Vec<Chunk>> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < payload.len() {
            out.push(parse_chunk(payload, &mut pos)?);
        }
        Some(out)
    }

    /// Drains `queue` into `reassembler` as `origin`, checking on every payload the
    /// packing rules against `expected` (what was pushed, in order): bounded size, one
    /// guarantee per payload, First/Middle alone in a full payload, and no whole message
    /// left out that would have fit. Returns the delivered messages.
    fn drain(
        queue: &mut SendQueue,
        max_payload: usize,
        expected: &[(Bytes, bool)],
        reassembler: &mut Reassembler,
    ) -> Vec<Bytes> {
        let mut delivered = Vec::new();
        let mut next = 0; // index in `expected` of the message the next chunk belongs to
        while let Some((payload, safe)) = queue.next_payload(max_payload) {
            assert!(payload.len() <= max_payload);
            assert!(!payload.is_empty());
            let parsed = chunks(&payload).expect("payload parses");
            for chunk in &parsed {
                assert_eq!(expected[next].1, safe, "SAFE and non-SAFE mixed");
                match chunk.header.kind {
                    Kind::First | Kind::Middle => {
                        assert_eq!(parsed.len(), 1, "a fragment shares its payload");
                        assert!(max_payload - payload.len() < 8, "fragment does not fill");
                    }
                    Kind::Whole | Kind::Last => next += 1,
                }
            }
            let last = parsed.last().map(|c| c.header.kind);
            if matches!(last, Some(Kind::Whole | Kind::Last)) {
                if let Some((message, message_safe)) = expected.get(next) {
                    assert!(
                        *message_safe != safe
                            || chunk_len(message.len(), Kind::Whole) > max_payload - payload.len(),
                        "message {next} would have fit"
                    );
                }
            }
            let malformed = reassembler.push(7, &payload, |m| delivered.push(m));
            assert_eq!(malformed, 0);
        }
        assert_eq!(next, expected.len());
        assert_eq!((queue.len(), queue.bytes()), (0, 0));
        delivered
    }

    fn push_all(queue: &mut SendQueue, messages: &[(Bytes, bool)]) {
        for (m, safe) in messages {
            queue.push(m.clone(), *safe).expect("queue has room");
        }
    }

    /// The plain LEB128 loop `read_varint` shortcuts for one- and two-byte values.
    fn read_varint_reference(buf: &[u8], pos: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *buf.get(*pos)?;
            *pos += 1;
            let bits = u64::from(byte & 0x7F);
            if i == 9 && bits > 1 {
                return None;
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The short paths read what the loop reads, and stop where it stops, on every
    /// one- and two-byte input (truncated ones included) and on longer random ones.
    #[test]
    fn varint_short_paths_match_the_loop() {
        let check = |buf: &[u8], start: usize| {
            let (mut a, mut b) = (start, start);
            let got = read_varint(buf, &mut a);
            let want = read_varint_reference(buf, &mut b);
            assert_eq!(got, want, "{buf:02x?} at {start}");
            if want.is_some() {
                assert_eq!(a, b, "{buf:02x?} at {start}");
            }
        };
        check(&[], 0);
        for b0 in 0..=255u8 {
            check(&[b0], 0);
            check(&[0, b0], 1);
            for b1 in 0..=255u8 {
                check(&[b0, b1], 0);
                check(&[b0, b1, 0x01], 0);
            }
        }
        let mut rng = Rng(11);
        for _ in 0..10_000 {
            let len = rng.below(12);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8 | 0x80).collect();
            if let Some(last) = buf.last_mut() {
                *last &= 0x7F;
            }
            check(&buf, 0);
        }
        for value in [0u64, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(value));
            assert_eq!(pos, out.len());
        }
    }

    /// Appending to a buffer that already holds a datagram header packs the very payloads
    /// `next_payload` makes.
    #[test]
    fn append_payload_packs_what_next_payload_packs() {
        let mut rng = Rng(5);
        for &max_payload in &PAYLOAD_SIZES {
            let mut a = SendQueue::new(8 * MIB, MIB);
            let mut b = SendQueue::new(8 * MIB, MIB);
            for _ in 0..300 {
                let len = [0, 1, 64, 500, 3000, 70_000][rng.below(6)];
                let message = rng.bytes(len);
                let safe = rng.below(4) == 0;
                a.push(message.clone(), safe).unwrap();
                b.push(message, safe).unwrap();
            }
            let prefix = [0xEE; 44];
            while let Some((payload, safe)) = a.next_payload(max_payload) {
                let mut out = BytesMut::new();
                out.extend_from_slice(&prefix);
                assert_eq!(b.append_payload(&mut out, max_payload), Some(safe));
                assert_eq!(out[..prefix.len()], prefix);
                assert_eq!(out[prefix.len()..], payload[..]);
            }
            let mut out = BytesMut::new();
            assert_eq!(b.append_payload(&mut out, max_payload), None);
            assert!(out.is_empty());
        }
    }

    /// Packed by reference into a datagram in pieces: the bytes are those of a copying
    /// pack; a receiver of the joined datagram and the sender unpacking its own pieces
    /// deliver the same messages; and the sender delivers its large messages (whole or
    /// fragmented) as the very `Bytes` it was given, with no reassembly copy.
    #[test]
    fn packing_by_reference_delivers_the_senders_own_bytes() {
        use crate::totem::RingId;
        use crate::wire::packet::{McastBuilder, McastFields};
        let mut rng = Rng(17);
        for &max_payload in &PAYLOAD_SIZES {
            for by_reference_min in [256, 4096] {
                let mut copying = SendQueue::new(8 * MIB, MIB);
                let mut referencing = SendQueue::new(8 * MIB, MIB);
                let mut expected = Vec::new();
                for _ in 0..200 {
                    let len = [0, 1, 64, 300, 3000, 5000, 70_000][rng.below(7)];
                    let message = rng.bytes(len);
                    let safe = rng.below(4) == 0;
                    copying.push(message.clone(), safe).unwrap();
                    referencing.push(message.clone(), safe).unwrap();
                    expected.push(message);
                }
                let mut own = Reassembler::new(MIB);
                let mut remote = Reassembler::new(MIB);
                let (mut own_got, mut remote_got) = (Vec::new(), Vec::new());
                while let Some((flat, safe)) = copying.next_payload(max_payload) {
                    let mut builder = McastBuilder::new(max_payload, by_reference_min);
                    assert_eq!(
                        referencing.append_payload(&mut builder, max_payload),
                        Some(safe)
                    );
                    let fields = McastFields {
                        sender: 1,
                        ring_id: RingId::default(),
                        seq: 1,
                        origin: 1,
                        safe,
                    };
                    let built = builder.finish(0, fields);
                    assert_eq!(built.payload.to_bytes(), flat);
                    let own_bad =
                        own.push_gather(1, &built.payload, built.fragment_of.as_ref(), |m| {
                            own_got.push(m)
                        });
                    assert_eq!(own_bad, 0);
                    assert_eq!(remote.push(1, &flat, |m| remote_got.push(m)), 0);
                }
                assert_eq!(own_got, expected);
                assert_eq!(remote_got, expected);
                for (got, sent) in own_got.iter().zip(&expected) {
                    let fragmented = sent.len() + whole_overhead(sent.len()) > max_payload;
                    if sent.len() >= by_reference_min || (fragmented && !sent.is_empty()) {
                        assert_eq!(got.as_ptr(), sent.as_ptr(), "{} bytes copied", sent.len());
                    }
                }
            }
        }
    }

    /// Fragmented messages of at least the threshold are joined in the caller's buffers
    /// (when it has one), smaller ones and refused ones on the heap; all arrive intact.
    #[test]
    fn reassembly_goes_into_the_callers_buffers() {
        use std::sync::{Arc, Mutex};
        struct Counted {
            data: Vec<u8>,
            appended: Arc<Mutex<usize>>,
        }
        impl ReassemblyBuffer for Counted {
            fn append(&mut self, data: &[u8]) {
                *self.appended.lock().unwrap() += data.len();
                self.data.extend_from_slice(data);
            }
            fn finish(self: Box<Self>) -> Bytes {
                Bytes::from(self.data)
            }
        }
        let appended = Arc::new(Mutex::new(0usize));
        let made = Arc::new(Mutex::new(0usize));
        let mut reassembler = Reassembler::new(MIB);
        let (a, m) = (appended.clone(), made.clone());
        reassembler.set_buffers(
            10_000,
            Box::new(move |total| {
                let mut made = m.lock().unwrap();
                *made += 1;
                // Every third request is refused: the heap takes that message.
                (*made % 3 != 0).then(|| {
                    Box::new(Counted {
                        data: Vec::with_capacity(total),
                        appended: a.clone(),
                    }) as Box<dyn ReassemblyBuffer>
                })
            }),
        );
        let mut rng = Rng(23);
        let mut queue = SendQueue::new(8 * MIB, MIB);
        let mut expected = Vec::new();
        for _ in 0..60 {
            let len = [100, 5000, 20_000, 300_000][rng.below(4)];
            let message = rng.bytes(len);
            queue.push(message.clone(), false).unwrap();
            expected.push(message);
        }
        let mut got = Vec::new();
        while let Some((payload, _)) = queue.next_payload(9000) {
            assert_eq!(reassembler.push(4, &payload, |m| got.push(m)), 0);
        }
        assert_eq!(got, expected);
        let large: Vec<usize> = expected
            .iter()
            .map(Bytes::len)
            .filter(|&len| len >= 10_000)
            .collect();
        let made = *made.lock().unwrap();
        assert_eq!(made, large.len(), "a buffer asked for each large message");
        let in_buffers: usize = (1..=made)
            .filter(|n| n % 3 != 0)
            .map(|n| large[n - 1])
            .sum();
        assert_eq!(*appended.lock().unwrap(), in_buffers);
    }

    /// A payload in pieces whose by-reference piece does not match the chunk header
    /// before it is malformed, never misread.
    #[test]
    fn mismatched_pieces_are_malformed() {
        let mut header = BytesMut::new();
        put_varint(&mut header, tag(100, Kind::Whole));
        let header = header.freeze();
        let mut reassembler = Reassembler::new(MIB);
        for data in [99, 101] {
            let payload = Gather::with_tail(header.clone(), vec![Bytes::from(vec![1; data])]);
            let mut got = 0;
            assert_eq!(reassembler.push_gather(3, &payload, None, |_| got += 1), 1);
            assert_eq!(got, 0);
        }
        // Data that does not start right after its header is not a piece of it.
        let mut early = BytesMut::from(&header[..]);
        early.extend_from_slice(&[0]);
        let payload = Gather::with_tail(early.freeze(), vec![Bytes::from(vec![1; 100])]);
        assert_eq!(reassembler.push_gather(3, &payload, None, |_| {}), 1);
        // The right piece is one message.
        let payload = Gather::with_tail(header, vec![Bytes::from(vec![1; 100])]);
        let mut got = Vec::new();
        assert_eq!(
            reassembler.push_gather(3, &payload, None, |m| got.push(m)),
            0
        );
        assert_eq!(got, vec![Bytes::from(vec![1; 100])]);
    }

    /// An original that is not the message a First starts (wrong length or bytes) is
    /// ignored: the fragments are reassembled from what arrived.
    #[test]
    fn a_foreign_original_is_not_delivered() {
        let mut queue = SendQueue::new(MIB, MIB);
        let message = Bytes::from(vec![5u8; 3000]);
        queue.push(message.clone(), false).unwrap();
        let impostor = Bytes::from(vec![6u8; 3000]);
        let mut reassembler = Reassembler::new(MIB);
        let mut got = Vec::new();
        while let Some((payload, _)) = queue.next_payload(1500) {
            let payload = Gather::from(payload);
            assert_eq!(
                reassembler.push_gather(2, &payload, Some(&impostor), |m| got.push(m)),
                0
            );
        }
        assert_eq!(got, vec![message]);
    }

    #[test]
    fn framing_is_compact() {
        assert_eq!(whole_overhead(0), 1);
        assert_eq!(whole_overhead(31), 1);
        assert_eq!(whole_overhead(64), 2);
        assert_eq!(whole_overhead(4095), 2);
        assert_eq!(whole_overhead(4096), 3);
        assert_eq!(whole_overhead((512 << 10) - 1), 3);
        assert_eq!(whole_overhead(MIB), 4);
        let mut queue = SendQueue::new(MIB, MIB);
        for _ in 0..100 {
            queue.push(Bytes::from_static(&[1; 64]), false).unwrap();
        }
        let (payload, _) = queue.next_payload(65_000).unwrap();
        assert_eq!(payload.len(), 100 * 66);
    }

    #[test]
    fn random_mixes_round_trip() {
        let mut rng = Rng(1);
        for max_payload in PAYLOAD_SIZES {
            for round in 0..4 {
                let mut messages = Vec::new();
                for _ in 0..300 {
                    let len = match rng.below(10) {
                        0 => 0,
                        1 => 1,
                        2 | 3 => 64,
                        4 => max_payload - 4 + rng.below(8), // around the fragmenting edge
                        5 => max_payload * 2 + rng.below(3),
                        6 if rng.below(20) == 0 => MIB,
                        _ => rng.below(3000),
                    };
                    // Runs of the same guarantee, so that packing has something to do.
                    let safe = (messages.len() / 7 + round) % 3 == 0;
                    messages.push((rng.bytes(len), safe));
                }
                let mut queue = SendQueue::new(usize::MAX, 2 * MIB);
                push_all(&mut queue, &messages);
                let mut reassembler = Reassembler::new(2 * MIB);
                let delivered = drain(&mut queue, max_payload, &messages, &mut reassembler);
                assert!(delivered.iter().eq(messages.iter().map(|(m, _)| m)));
            }
        }
    }

    fn checksum(data: &[u8]) -> u64 {
        data.chunks(8).fold(0u64, |sum, word| {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            sum.rotate_left(5) ^ u64::from_le_bytes(w).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
    }

    #[test]
    fn a_64_mib_message_arrives_intact() {
        let message = Rng(64).bytes(64 * MIB);
        let sum = checksum(&message);
        let mut queue = SendQueue::new(65 * MIB, 64 * MIB);
        queue.push(message.clone(), true).unwrap();
        queue.push(Bytes::from_static(b"after"), true).unwrap();
        drop(message);
        let mut reassembler = Reassembler::new(64 * MIB);
        let mut delivered = Vec::new();
        let mut payloads = 0;
        while let Some((payload, safe)) = queue.next_payload(65_000) {
            assert!(safe && payload.len() <= 65_000);
            payloads += 1;
            assert_eq!(reassembler.push(1, &payload, |m| delivered.push(m)), 0);
        }
        // Fragments fill their payloads: at most 7 bytes of framing each.
        assert!(
            payloads <= (64 * MIB).div_ceil(65_000 - 7),
            "{payloads} payloads"
        );
        assert_eq!(delivered.len(), 2);
        assert_eq!(delivered[0].len(), 64 * MIB);
        assert_eq!(checksum(&delivered[0]), sum);
        assert_eq!(&delivered[1][..], b"after");
    }

    #[test]
    fn safe_and_agreed_never_share_a_payload() {
        let mut queue = SendQueue::new(MIB, MIB);
        for i in 0..10 {
            queue.push(Bytes::from(vec![i; 10]), i % 2 == 0).unwrap();
        }
        for i in 0..10 {
            let (payload, safe) = queue.next_payload(1500).unwrap();
            assert_eq!(safe, i % 2 == 0);
            assert_eq!(payload.len(), 11);
        }
        assert!(queue.next_payload(1500).is_none());
    }

    #[test]
    fn zero_length_messages_are_delivered_as_such() {
        let mut queue = SendQueue::new(MIB, MIB);
        for _ in 0..1000 {
            queue.push(Bytes::new(), false).unwrap();
        }
        let (payload, _) = queue.next_payload(576).unwrap();
        assert_eq!(payload.len(), 576);
        let mut reassembler = Reassembler::new(MIB);
        let mut count = 0;
        reassembler.push(1, &payload, |m| {
            assert!(m.is_empty());
            count += 1;
        });
        assert_eq!(count, 576);
        assert_eq!(queue.len(), 1000 - 576);
    }

    #[test]
    fn queue_bounds() {
        let mut queue = SendQueue::new(100, 60);
        assert_eq!(
            queue.push(Bytes::from(vec![0; 61]), false),
            Err(SubmitError::TooBig { len: 61, max: 60 })
        );
        queue.push(Bytes::from(vec![0; 60]), false).unwrap();
        queue.push(Bytes::from(vec![0; 39]), true).unwrap();
        assert_eq!((queue.len(), queue.bytes()), (2, 99));
        queue.push(Bytes::new(), false).unwrap(); // charged as 1 byte
        assert_eq!((queue.len(), queue.bytes()), (3, 99));
        assert_eq!(queue.push(Bytes::new(), false), Err(SubmitError::TryAgain));
        assert_eq!(
            queue.push(Bytes::from(vec![0; 1]), false),
            Err(SubmitError::TryAgain)
        );
        assert_eq!((queue.len(), queue.bytes()), (3, 99));
        queue.next_payload(MIN_PAYLOAD).unwrap(); // 60 bytes: a First
        assert_eq!(
            (queue.len(), queue.bytes()),
            (3, 99),
            "a partly sent one counts"
        );
        queue.next_payload(MIN_PAYLOAD).unwrap(); // its Last
        assert_eq!((queue.len(), queue.bytes()), (2, 39));
        queue.push(Bytes::from(vec![0; 60]), false).unwrap();
        assert_eq!(queue.push(Bytes::new(), false), Err(SubmitError::TryAgain));
        // A message of max_message_bytes always fits an empty queue of that size.
        let mut queue = SendQueue::new(60, 60);
        queue.push(Bytes::from(vec![0; 60]), false).unwrap();
    }

    #[test]
    fn restart_after_reset_delivers_once() {
        let message = Rng(3).bytes(10_000);
        let mut queue = SendQueue::new(MIB, MIB);
        queue.push(message.clone(), false).unwrap();
        let mut reassembler = Reassembler::new(MIB);
        let mut delivered = Vec::new();
        let (first, _) = queue.next_payload(1500).unwrap();
        let (middle, _) = queue.next_payload(1500).unwrap();
        assert_eq!(reassembler.push(2, &first, |m| delivered.push(m)), 0);
        assert_eq!(reassembler.push(2, &middle, |m| delivered.push(m)), 0);
        // The configuration changes: both sides forget the partial message.
        queue.restart_partial();
        reassembler.reset();
        assert_eq!((queue.len(), queue.bytes()), (1, 10_000));
        let (again, _) = queue.next_payload(1500).unwrap();
        assert_eq!(again, first, "restarted from offset 0");
        assert_eq!(reassembler.push(2, &again, |m| delivered.push(m)), 0);
        while let Some((payload, _)) = queue.next_payload(1500) {
            assert_eq!(reassembler.push(2, &payload, |m| delivered.push(m)), 0);
        }
        assert_eq!(delivered, vec![message]);
    }

    #[test]
    fn restart_without_reset_still_delivers_once() {
        let message = Rng(4).bytes(5_000);
        let mut queue = SendQueue::new(MIB, MIB);
        queue.push(message.clone(), false).unwrap();
        let mut reassembler = Reassembler::new(MIB);
        let mut delivered = Vec::new();
        let (first, _) = queue.next_payload(1500).unwrap();
        reassembler.push(2, &first, |m| delivered.push(m));
        queue.restart_partial();
        let mut malformed = 0;
        while let Some((payload, _)) = queue.next_payload(1500) {
            malformed += reassembler.push(2, &payload, |m| delivered.push(m));
        }
        assert_eq!(malformed, 1, "the abandoned partial is counted");
        assert_eq!(delivered, vec![message]);
    }

    #[test]
    fn reset_drops_partials() {
        let mut queue = SendQueue::new(MIB, MIB);
        queue.push(Bytes::from(vec![5; 3000]), false).unwrap();
        let mut reassembler = Reassembler::new(MIB);
        let (first, _) = queue.next_payload(1500).unwrap();
        reassembler.push(2, &first, |_| panic!("nothing to deliver yet"));
        reassembler.reset();
        let mut malformed = 0;
        while let Some((payload, _)) = queue.next_payload(1500) {
            malformed += reassembler.push(2, &payload, |_| panic!("its First was dropped"));
        }
        assert_eq!(malformed, 2); // a Middle and a Last with nothing to continue
    }

    #[test]
    fn origins_are_reassembled_apart() {
        let mut rng = Rng(5);
        let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
        let mut queues: Vec<SendQueue> = (0..3).map(|_| SendQueue::new(usize::MAX, MIB)).collect();
        for _ in 0..300 {
            let origin = rng.below(3);
            let len = [0, 64, 700, 5000, 40_000][rng.below(5)];
            let message = rng.bytes(len);
            queues[origin].push(message.clone(), false).unwrap();
            sent[origin].push(message);
        }
        let mut reassembler = Reassembler::new(MIB);
        let mut delivered: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
        // Payloads of the three origins interleave in a random total order.
        while queues.iter().any(|q| !q.is_empty()) {
            let origin = rng.below(3);
            if let Some((payload, _)) = queues[origin].next_payload(1500) {
                let d = &mut delivered[origin];
                assert_eq!(
                    reassembler.push(origin as NodeId, &payload, |m| d.push(m)),
                    0
                );
            }
        }
        assert_eq!(delivered, sent);
    }

    fn push_raw(reassembler: &mut Reassembler, payload: &[u8]) -> (usize, Vec<Bytes>) {
        let mut delivered = Vec::new();
        let payload = Bytes::copy_from_slice(payload);
        let malformed = reassembler.push(1, &payload, |m| delivered.push(m));
        (malformed, delivered)
    }

    #[test]
    fn malformed_chunks_are_counted() {
        let first = |len: u8, total: u8| vec![len << 2 | 1, total];
        let mut r = Reassembler::new(100);
        // Truncated tag, then a chunk longer than the payload: parsing stops at each.
        assert_eq!(
            push_raw(&mut r, &[0x04, 9, 0x80]),
            (1, vec![Bytes::from_static(&[9])])
        );
        assert_eq!(push_raw(&mut r, &[0x08, 9]).0, 1);
        assert_eq!(push_raw(&mut r, &[0xFF; 11]).0, 1); // varint over 64 bits
        // First over the limit, and First that claims no more than it carries.
        assert_eq!(push_raw(&mut r, &[&first(1, 101)[..], &[0]].concat()).0, 1);
        assert_eq!(push_raw(&mut r, &[&first(1, 1)[..], &[0]].concat()).0, 1);
        assert!(r.partials.is_empty());
        // Middle and Last without a First.
        assert_eq!(push_raw(&mut r, &[1 << 2 | 2, 0, 1 << 2 | 3, 0]).0, 2);
        // Middle that reaches the total, Last that falls short of it.
        assert_eq!(
            push_raw(&mut r, &[&first(1, 2)[..], &[0, 1 << 2 | 2, 0]].concat()).0,
            1
        );
        assert_eq!(
            push_raw(&mut r, &[&first(1, 3)[..], &[0, 1 << 2 | 3, 0]].concat()).0,
            1
        );
        // Whole over the limit (a peer with a larger max_message_bytes).
        let mut small = Reassembler::new(1);
        assert_eq!(push_raw(&mut small, &[2 << 2, 0, 0]).0, 1);
        // A good one still works afterwards.
        let (malformed, delivered) = push_raw(
            &mut r,
            &[&first(1, 3)[..], &[7, 1 << 2 | 2, 8, 1 << 2 | 3, 9]].concat(),
        );
        assert_eq!(
            (malformed, delivered),
            (0, vec![Bytes::from_static(&[7, 8, 9])])
        );
    }

    #[test]
    fn a_bogus_total_reserves_little() {
        let mut r = Reassembler::new(64 * MIB);
        let mut payload = vec![1 << 2 | 1];
        payload.extend_from_slice(&[0x80, 0x80, 0x80, 0x20]); // total 64 MiB
        payload.push(0);
        assert_eq!(push_raw(&mut r, &payload).0, 0);
        assert!(r.partials[&1].data.capacity() <= INITIAL_RESERVE);
    }

    #[test]
    fn garbage_payloads_never_panic() {
        let mut rng = Rng(6);
        let mut r = Reassembler::new(4096);
        for _ in 0..100_000 {
            let len = rng.below(64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Small chunk lengths now and then, so that chunks actually chain.
            for b in v.iter_mut() {
                if rng.below(3) == 0 {
                    *b &= 0x1F;
                }
            }
            let origin = rng.below(4) as NodeId;
            r.push(origin, &Bytes::from(v), |m| assert!(m.len() <= 4096));
            if rng.below(1000) == 0 {
                r.reset();
            }
        }
    }

    #[test]
    fn mutated_payloads_never_panic() {
        let mut rng = Rng(7);
        let mut queue = SendQueue::new(usize::MAX, 8192);
        for i in 0..200 {
            queue
                .push(rng.bytes([0, 10, 64, 600, 3000][i % 5]), false)
                .unwrap();
        }
        let mut payloads = Vec::new();
        while let Some((p, _)) = queue.next_payload(576) {
            payloads.push(p);
        }
        let mut r = Reassembler::new(8192);
        for _ in 0..20_000 {
            let mut v = payloads[rng.below(payloads.len())].to_vec();
            let at = rng.below(v.len());
            v[at] ^= 1 << rng.below(8);
            r.push(1, &Bytes::from(v), |m| assert!(m.len() <= 8192));
        }
    }

    /// Steady-state cost of 64-byte messages through 65000-byte payloads: batches of
    /// 10000 messages are queued, packed, unpacked and dropped, so that the allocator
    /// recycles payload buffers as it does in a running node. Run with
    /// `cargo test --release -p ringcast-engine packing_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn packing_cost() {
        use std::time::{Duration, Instant};
        const BATCH: usize = 10_000;
        const BATCHES: usize = 200;
        let backing = Bytes::from(vec![0xA5; 64 * 1000]);
        let messages: Vec<Bytes> = (0..BATCH)
            .map(|i| backing.slice((i % 1000) * 64..(i % 1000) * 64 + 64))
            .collect();
        let mut queue = SendQueue::new(usize::MAX, MIB);
        let mut reassembler = Reassembler::new(MIB);
        let mut payloads = Vec::new();
        for round in 0..3 {
            let (mut push, mut pack, mut unpack) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut count = 0;
            for _ in 0..BATCHES {
                let start = Instant::now();
                for m in &messages {
                    queue.push(m.clone(), false).unwrap();
                }
                let pushed = Instant::now();
                while let Some((p, _)) = queue.next_payload(65_000) {
                    payloads.push(p);
                }
                let packed = Instant::now();
                for p in payloads.drain(..) {
                    reassembler.push(1, &p, |_| count += 1);
                }
                let unpacked = Instant::now();
                push += pushed - start;
                pack += packed - pushed;
                unpack += unpacked - packed;
            }
            assert_eq!(count, BATCH * BATCHES);
            let ns = |d: Duration| d.as_nanos() as f64 / count as f64;
            println!(
                "round {round}: push {:.1} ns, next_payload {:.1} ns, reassemble {:.1} ns per message",
                ns(push),
                ns(pack),
                ns(unpack)
            );
        }
    }
}
