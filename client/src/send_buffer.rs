//! Zero-copy send buffers (`cpg_zcb_alloc` → write → `cpg_zcb_mcast_joined`): a message
//! written in place into the buffer pool of this connection's shared region, then named
//! by a `MCAST_REF` record on the submit ring.
//!
//! The engine copies the message out of the pool before it consumes the record (its one
//! copy of any message: the pool stays writable by this process, so the engine never
//! sends or delivers from it). A buffer is therefore this process's again as soon as
//! the ring's consumer has passed its record; no event has to say so.
//!
//! With trusted senders (`ipc.trusted_senders`) the buffers are in this client's slab of
//! the engine's delivery pool instead, behind room for the engine's header, and named by
//! `MCAST_POOL_REF`: nothing copies them; Totem sends them from there, local receivers
//! read them there, and a `SENT_RELEASED` event hands each back when nothing holds it.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ringcast_shm::proto::{MessageRef, WireGuarantee, submit};
use ringcast_shm::send_area::{AreaBuf, SendArea, SentBuf};

use crate::{Cpg, Error, Guarantee, Result, Status, lock};

/// This connection's send buffers: the area they are in, and those the engine has not
/// given back yet.
#[derive(Debug)]
pub(crate) struct SendBuffers {
    /// `None` when the engine gives this connection none.
    area: Option<Arc<SendArea>>,
    /// In the region's pool: submitted buffers in ring order, each with the ring
    /// position where its record ends; free again once the consumer got there.
    in_flight: VecDeque<(u64, SentBuf)>,
    /// In a slab of the delivery pool (trusted senders): buffers sent, by offset, until
    /// the engine says they are released.
    sent: HashMap<u64, SentBuf>,
}

impl SendBuffers {
    pub(crate) fn new(area: Option<Arc<SendArea>>) -> SendBuffers {
        SendBuffers {
            area,
            in_flight: VecDeque::new(),
            sent: HashMap::new(),
        }
    }

    /// The engine no longer holds the in-place message at pool offset `offset`. False
    /// if no buffer was sent from there (an engine bug: the caller reports it).
    pub(crate) fn released(&mut self, offset: u64) -> bool {
        match (self.sent.remove(&offset), &self.area) {
            (Some(sent), Some(area)) => {
                area.free(sent);
                true
            }
            _ => false,
        }
    }

    /// Whether the buffers are in a slab of the delivery pool (trusted senders).
    pub(crate) fn is_trusted(&self) -> bool {
        self.area.as_ref().is_some_and(|a| a.in_pool())
    }

    /// Most bytes one buffer can hold (0: none).
    pub(crate) fn capacity(&self) -> usize {
        self.area.as_ref().map_or(0, |a| a.capacity())
    }

    /// Frees every buffer whose record the engine consumed.
    fn reclaim(&mut self, consumed_upto: u64) {
        let Some(area) = &self.area else {
            return;
        };
        while self
            .in_flight
            .front()
            .is_some_and(|(end, _)| *end <= consumed_upto)
        {
            if let Some((_, sent)) = self.in_flight.pop_front() {
                area.free(sent);
            }
        }
    }
}

/// A buffer in shared memory for one message (see [`Cpg::alloc`]): write the message
/// into it, then [`Cpg::mcast_buffer`]. Dropped unsent, it goes back to the pool.
#[derive(Debug)]
pub struct SendBuffer<'a> {
    cpg: &'a Cpg,
    buf: AreaBuf,
}

impl Deref for SendBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for SendBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Cpg {
    /// A buffer of `len` bytes in this connection's shared memory, to be written in
    /// place and sent with [`Cpg::mcast_buffer`] (`cpg_zcb_alloc`): neither this
    /// library nor anything after it copies the message again before the engine's one
    /// copy (none with trusted senders). `TryAgain` while the buffers are held by
    /// messages the engine has not taken or released yet; `TooBig` above
    /// [`Cpg::max_message_size`] or the buffers' size (`ipc.send_buffer_bytes` of the
    /// engine; [`Cpg::send_buffer_capacity`]).
    pub fn alloc(&self, len: usize) -> Result<SendBuffer<'_>> {
        match self.alloc_once(len) {
            Err(e) if e.is_try_again() && lock(&self.send_buffers).is_trusted() => {
                // Buffers the engine handed back in events not dispatched yet.
                self.stash_events();
                self.alloc_once(len)
            }
            other => other,
        }
    }

    fn alloc_once(&self, len: usize) -> Result<SendBuffer<'_>> {
        self.check_send(len)?;
        let consumed = lock(&self.submit).consumed_upto();
        let mut pool = lock(&self.send_buffers);
        pool.reclaim(consumed);
        let Some(area) = &pool.area else {
            return Err(Error::with_detail(
                Status::TooBig,
                "the engine gives this connection no send buffers",
            ));
        };
        if len > area.capacity() {
            return Err(Error::with_detail(
                Status::TooBig,
                format!("{len} bytes > send buffers of {}", area.capacity()),
            ));
        }
        match area.alloc(len) {
            Some(buf) => Ok(SendBuffer { cpg: self, buf }),
            None => Err(Error::with_detail(
                Status::TryAgain,
                "send buffers busy: earlier messages are still held by the engine",
            )),
        }
    }

    /// Bytes of send buffers this connection has (the largest message
    /// [`Cpg::alloc`] can ever give a buffer for); 0 when the engine gives none.
    pub fn send_buffer_capacity(&self) -> usize {
        lock(&self.send_buffers).capacity()
    }

    /// Multicasts the message written in `buffer` to the joined group
    /// (`cpg_zcb_mcast_joined`). On an error (`TryAgain` when the submit ring is full)
    /// nothing was sent and the buffer comes back with it, as written, for a retry.
    /// `InvalidParam` for a buffer of another connection.
    pub fn mcast_buffer<'a>(
        &'a self,
        guarantee: Guarantee,
        buffer: SendBuffer<'a>,
    ) -> std::result::Result<(), (Error, SendBuffer<'a>)> {
        if !std::ptr::eq(buffer.cpg, self) {
            return Err((Error::new(Status::InvalidParam), buffer));
        }
        if let Err(e) = self.check_send(buffer.len()) {
            return Err((e, buffer));
        }
        let trusted = lock(&self.send_buffers).is_trusted();
        let kind = if trusted {
            submit::MCAST_POOL_REF
        } else {
            submit::MCAST_REF
        };
        let offset = buffer.buf.offset();
        let record = MessageRef {
            guarantee: if guarantee.is_safe() {
                WireGuarantee::Safe
            } else {
                WireGuarantee::Agreed
            }
            .to_u32(),
            offset,
            len: buffer.len() as u64,
        };
        let mut producer = lock(&self.submit);
        if producer.try_push(kind, &[&record.encode()]).is_err() {
            return Err((Error::new(Status::TryAgain), buffer));
        }
        let end = producer.written_upto();
        let sent = buffer.buf.into_sent();
        let mut pool = lock(&self.send_buffers);
        if trusted {
            pool.sent.insert(offset, sent);
        } else {
            pool.in_flight.push_back((end, sent));
        }
        drop(pool);
        self.publish(&mut producer);
        Ok(())
    }
}

/// A send buffer that stays the caller's across sends (Corosync's `cpg_zcb_alloc`
/// contract): [`Cpg::mcast_retained`] sends its bytes as they are at the call, and the
/// caller may rewrite, resend or drop it as soon as that returns. Dropped, it goes back
/// to the pool.
#[derive(Debug)]
pub struct RetainedBuffer {
    buf: AreaBuf,
    /// The handle whose pool it is in (identity only).
    owner: usize,
}

impl RetainedBuffer {
    /// Where the buffer's bytes start (for a C caller).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl Deref for RetainedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for RetainedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Cpg {
    /// A buffer of `len` bytes in this connection's shared memory that the caller keeps
    /// (see [`RetainedBuffer`]). Errors as [`Cpg::alloc`].
    pub fn alloc_retained(&self, len: usize) -> Result<RetainedBuffer> {
        let buffer = self.alloc(len)?;
        Ok(RetainedBuffer {
            buf: buffer.buf,
            owner: self as *const Cpg as usize,
        })
    }

    /// Multicasts the first `len` bytes of `buffer` (`cpg_zcb_mcast_joined`) and returns
    /// once nothing will read the buffer again, so that the caller may rewrite it at
    /// once. In the region's pool the library copies nothing: the call waits until the
    /// engine has taken the record (its one copy of any message, made before it
    /// consumes the record). With trusted senders, whose buffers the engine keeps until
    /// every receiver is done, the message is copied once into a fresh buffer of the
    /// slab instead, which the engine then sends without a copy.
    /// `TryAgain` when the submit ring is full (nothing was sent); `InvalidParam` for a
    /// buffer of another handle or `len` beyond the buffer.
    pub fn mcast_retained(
        &self,
        guarantee: Guarantee,
        buffer: &RetainedBuffer,
        len: usize,
    ) -> Result<()> {
        if buffer.owner != self as *const Cpg as usize || len > buffer.len() {
            return Err(Error::new(Status::InvalidParam));
        }
        self.check_send(len)?;
        if lock(&self.send_buffers).is_trusted() {
            return self.mcast_with(guarantee, len, |dst| dst.copy_from_slice(&buffer[..len]));
        }
        let record = MessageRef {
            guarantee: if guarantee.is_safe() {
                WireGuarantee::Safe
            } else {
                WireGuarantee::Agreed
            }
            .to_u32(),
            offset: buffer.buf.offset(),
            len: len as u64,
        };
        let end = {
            let mut producer = lock(&self.submit);
            if producer
                .try_push(submit::MCAST_REF, &[&record.encode()])
                .is_err()
            {
                return Err(Error::new(Status::TryAgain));
            }
            let end = producer.written_upto();
            self.publish(&mut producer);
            end
        };
        self.wait_consumed(end)
    }

    /// Waits until the engine's consumer of the submit ring has passed `end`. The
    /// engine stops taking sends while this handle's own events pile up, so those are
    /// moved aside meanwhile (as a large send does).
    fn wait_consumed(&self, end: u64) -> Result<()> {
        let mut round = 0u32;
        loop {
            if lock(&self.submit).consumed_upto() >= end {
                return Ok(());
            }
            // The engine takes a record within microseconds when it is busy: spin,
            // then give it the CPU, and only then sleep in short naps.
            round += 1;
            if round < 200 {
                std::hint::spin_loop();
            } else if round < 1200 {
                std::thread::yield_now();
            } else {
                self.stash_events();
                if round % 64 == 0 && self.engine_gone() {
                    return Err(Error::with_detail(Status::Library, "engine gone"));
                }
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }
}
