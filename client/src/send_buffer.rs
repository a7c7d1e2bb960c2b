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

use ringcast_shm::delivery_pool::PoolWriter;
use ringcast_shm::proto::WireGuarantee;
use ringcast_shm::{PoolAllocator, PoolBuf};

use crate::{Cpg, Error, Guarantee, Result, Status, lock};

/// Allocation granularity of the pool.
const BLOCK_BYTES: usize = 4096;

/// Which parts of the region's pool are in use: buffers being written, and buffers the
/// engine has yet to copy out.
#[derive(Debug)]
pub(crate) struct SendPool {
    /// `None` when the region has no pool.
    alloc: Option<PoolAllocator>,
    /// Bytes the allocator manages (whole blocks).
    capacity: usize,
    /// Submitted buffers in ring order, each with the ring position where its record
    /// ends: free again once the consumer got there.
    in_flight: VecDeque<(u64, PoolBuf)>,
    /// Trusted senders: the slab the buffers are in, and the buffers sent from it by
    /// pool offset, until the engine says they are released.
    slab: Option<Slab>,
    sent: HashMap<u64, PoolBuf>,
}

/// This client's slab of the delivery pool (trusted senders).
#[derive(Debug)]
pub(crate) struct Slab {
    pub writer: Arc<PoolWriter>,
    /// Where the slab starts in the pool, and its size.
    pub offset: u64,
    pub len: usize,
    /// Room each buffer leaves in front of the message for the engine's header.
    pub room: usize,
}

impl SendPool {
    pub(crate) fn new(pool_len: usize) -> SendPool {
        let alloc = (pool_len >= BLOCK_BYTES).then(|| PoolAllocator::new(pool_len, BLOCK_BYTES));
        SendPool {
            capacity: alloc.as_ref().map_or(0, |a| a.free_bytes()),
            alloc,
            in_flight: VecDeque::new(),
            slab: None,
            sent: HashMap::new(),
        }
    }

    /// Buffers in a slab of the delivery pool (trusted senders).
    pub(crate) fn in_slab(slab: Slab) -> SendPool {
        let alloc = (slab.len >= BLOCK_BYTES).then(|| PoolAllocator::new(slab.len, BLOCK_BYTES));
        SendPool {
            capacity: alloc
                .as_ref()
                .map_or(0, |a| a.free_bytes().saturating_sub(slab.room)),
            alloc,
            in_flight: VecDeque::new(),
            slab: Some(slab),
            sent: HashMap::new(),
        }
    }

    /// The engine no longer holds the in-place message at pool offset `offset`. False
    /// if no buffer was sent from there (an engine bug: the caller reports it).
    pub(crate) fn released(&mut self, offset: u64) -> bool {
        match self.sent.remove(&offset) {
            Some(buf) => {
                self.free(buf);
                true
            }
            None => false,
        }
    }

    /// Whether the buffers are in a slab of the delivery pool (trusted senders).
    pub(crate) fn is_trusted(&self) -> bool {
        self.slab.is_some()
    }

    /// Most bytes one buffer can hold (0: no pool).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frees every buffer whose record the engine consumed.
    fn reclaim(&mut self, consumed_upto: u64) {
        while let Some((end, _)) = self.in_flight.front() {
            if *end > consumed_upto {
                break;
            }
            let Some((_, buf)) = self.in_flight.pop_front() else {
                break;
            };
            self.free(buf);
        }
    }

    fn free(&mut self, buf: PoolBuf) {
        if let Some(alloc) = &mut self.alloc {
            let freed = alloc.free(buf);
            debug_assert!(freed.is_ok(), "send buffer not live: {freed:?}");
        }
    }
}

/// A buffer in shared memory for one message (see [`Cpg::alloc`]): write the message
/// into it, then [`Cpg::mcast_buffer`]. Dropped unsent, it goes back to the pool.
pub struct SendBuffer<'a> {
    cpg: &'a Cpg,
    buf: Option<PoolBuf>,
    len: usize,
    /// Trusted senders: the writable pool mapping and where the message starts in it.
    slab: Option<(Arc<PoolWriter>, u64)>,
}

impl std::fmt::Debug for SendBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBuffer")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SendBuffer<'_> {
    fn pool_buf(&self) -> &PoolBuf {
        self.buf.as_ref().expect("present until sent or dropped")
    }

    /// The message's bytes.
    ///
    /// # Safety
    ///
    /// No other slice from this function for this handle may be alive.
    #[expect(clippy::mut_from_ref, reason = "exclusivity is the caller's contract")]
    unsafe fn bytes_mut(&self) -> &mut [u8] {
        let buf = self.pool_buf();
        match &self.slab {
            Some((writer, at)) => {
                // SAFETY: `buf` came from this connection's allocator over its slab and
                // is live until this handle is sent or dropped, so no other handle
                // overlaps it; the engine and other clients only read it; the caller
                // keeps one slice of it at a time.
                let bytes = unsafe { writer.slice_mut(*at, self.len) };
                bytes.expect("a slab buffer lies in the pool")
            }
            None => {
                // SAFETY: as above, over this region's pool.
                let whole = unsafe { self.cpg.region.pool_slice_mut_shared(buf) };
                &mut whole[..self.len]
            }
        }
    }
}

impl Deref for SendBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`; reborrowed for `&self`, so no `&mut` from
        // `deref_mut` is alive meanwhile.
        unsafe { self.bytes_mut() }
    }
}

impl DerefMut for SendBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` makes this the only slice of the buffer.
        unsafe { self.bytes_mut() }
    }
}

impl Drop for SendBuffer<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            lock(&self.cpg.send_pool).free(buf);
        }
    }
}

impl Cpg {
    /// A buffer of `len` bytes in this connection's shared region, to be written in
    /// place and sent with [`Cpg::mcast_buffer`] (`cpg_zcb_alloc`): neither this
    /// library nor anything after it copies the message again before the engine's one
    /// copy. `TryAgain` while the pool is busy with buffers the engine has not taken yet;
    /// `TooBig` above [`Cpg::max_message_size`] or the pool's size (`ipc.send_buffer_bytes`
    /// of the engine; [`Cpg::send_buffer_capacity`]).
    pub fn alloc(&self, len: usize) -> Result<SendBuffer<'_>> {
        match self.alloc_once(len) {
            Err(e) if e.is_try_again() && lock(&self.send_pool).slab.is_some() => {
                // Buffers the engine handed back in events not dispatched yet.
                self.take_released_buffers();
                self.alloc_once(len)
            }
            other => other,
        }
    }

    fn alloc_once(&self, len: usize) -> Result<SendBuffer<'_>> {
        self.check_send(len)?;
        let consumed = lock(&self.submit).consumed_upto();
        let mut pool = lock(&self.send_pool);
        pool.reclaim(consumed);
        let capacity = pool.capacity();
        if pool.alloc.is_none() {
            return Err(Error::with_detail(
                Status::TooBig,
                "the engine gives this connection no send buffers",
            ));
        }
        if len > capacity {
            return Err(Error::with_detail(
                Status::TooBig,
                format!("{len} bytes > send buffers of {capacity}"),
            ));
        }
        // A zero-length message still takes a block, so that it has a handle.
        let room = pool.slab.as_ref().map_or(0, |s| s.room);
        let alloc = pool.alloc.as_mut().expect("checked above");
        match alloc.alloc((room + len).max(1)) {
            Some(buf) => {
                let slab = pool.slab.as_ref().map(|s| {
                    let at = s.offset + buf.offset() + s.room as u64;
                    (s.writer.clone(), at)
                });
                Ok(SendBuffer {
                    cpg: self,
                    buf: Some(buf),
                    len,
                    slab,
                })
            }
            None => Err(Error::with_detail(
                Status::TryAgain,
                "send buffers busy: earlier messages are still held by the engine",
            )),
        }
    }

    /// Bytes of send buffers this connection has (the largest message
    /// [`Cpg::alloc`] can ever give a buffer for); 0 when the engine gives none.
    pub fn send_buffer_capacity(&self) -> usize {
        lock(&self.send_pool).capacity()
    }

    /// Multicasts the message written in `buffer` to the joined group
    /// (`cpg_zcb_mcast_joined`). On an error (`TryAgain` when the submit ring is full)
    /// nothing was sent and the buffer comes back with it, as written, for a retry.
    pub fn mcast_buffer<'a>(
        &'a self,
        guarantee: Guarantee,
        mut buffer: SendBuffer<'a>,
    ) -> std::result::Result<(), (Error, SendBuffer<'a>)> {
        if let Err(e) = self.check_send(buffer.len) {
            return Err((e, buffer));
        }
        let buf = buffer.pool_buf();
        let slab_offset = lock(&self.send_pool).slab.as_ref().map(|s| s.offset);
        let (kind, offset) = match slab_offset {
            Some(slab) => (
                ringcast_shm::proto::submit::MCAST_POOL_REF,
                slab + buf.offset(),
            ),
            None => (ringcast_shm::proto::submit::MCAST_REF, buf.offset()),
        };
        let record = ringcast_shm::proto::MessageRef {
            guarantee: if guarantee.is_safe() {
                WireGuarantee::Safe
            } else {
                WireGuarantee::Agreed
            }
            .to_u32(),
            offset,
            len: buffer.len as u64,
        };
        let mut producer = lock(&self.submit);
        match producer.try_push(kind, &[&record.encode()]) {
            Ok(()) => {}
            Err(_) => return Err((Error::new(Status::TryAgain), buffer)),
        }
        let end = producer.written_upto();
        let buf = buffer.buf.take().expect("present until sent");
        let mut pool = lock(&self.send_pool);
        if slab_offset.is_some() {
            pool.sent.insert(offset, buf);
        } else {
            pool.in_flight.push_back((end, buf));
        }
        drop(pool);
        self.publish(&mut producer);
        Ok(())
    }
}
