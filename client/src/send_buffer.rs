//! Zero-copy send buffers (`cpg_zcb_alloc` → write → `cpg_zcb_mcast_joined`): a message
//! written in place into the buffer pool of this connection's shared region, then named
//! by a `MCAST_REF` record on the submit ring.
//!
//! The engine copies the message out of the pool before it consumes the record (its one
//! copy of any message: the pool stays writable by this process, so the engine never
//! sends or delivers from it). A buffer is therefore this process's again as soon as
//! the ring's consumer has passed its record; no event has to say so.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

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
}

impl SendPool {
    pub(crate) fn new(pool_len: usize) -> SendPool {
        let alloc = (pool_len >= BLOCK_BYTES).then(|| PoolAllocator::new(pool_len, BLOCK_BYTES));
        SendPool {
            capacity: alloc.as_ref().map_or(0, |a| a.free_bytes()),
            alloc,
            in_flight: VecDeque::new(),
        }
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
}

impl Deref for SendBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let buf = self.pool_buf();
        // SAFETY: `buf` came from this connection's allocator over this region's pool
        // and is live until this handle is sent or dropped, so no other handle (and no
        // other slice this process makes of the pool) overlaps it; the engine only reads
        // it. Reborrowed for `&self`, so no `&mut` from `deref_mut` is alive meanwhile.
        let whole = unsafe { self.cpg.region.pool_slice_mut_shared(buf) };
        &whole[..self.len]
    }
}

impl DerefMut for SendBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let buf = self.pool_buf();
        // SAFETY: as in `deref`; `&mut self` makes this the only slice of it.
        let whole = unsafe { self.cpg.region.pool_slice_mut_shared(buf) };
        &mut whole[..len]
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
        self.check_send(len)?;
        let consumed = lock(&self.submit).consumed_upto();
        let mut pool = lock(&self.send_pool);
        pool.reclaim(consumed);
        let capacity = pool.capacity();
        let Some(alloc) = pool.alloc.as_mut() else {
            return Err(Error::with_detail(
                Status::TooBig,
                "the engine gives this connection no send buffers",
            ));
        };
        if len > capacity {
            return Err(Error::with_detail(
                Status::TooBig,
                format!("{len} bytes > send buffers of {capacity}"),
            ));
        }
        // A zero-length message still takes a block, so that it has a handle.
        match alloc.alloc(len.max(1)) {
            Some(buf) => Ok(SendBuffer {
                cpg: self,
                buf: Some(buf),
                len,
            }),
            None => Err(Error::with_detail(
                Status::TryAgain,
                "send buffers busy: the engine has not taken earlier messages yet",
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
        let record = ringcast_shm::proto::MessageRef {
            guarantee: if guarantee.is_safe() {
                WireGuarantee::Safe
            } else {
                WireGuarantee::Agreed
            }
            .to_u32(),
            offset: buf.offset(),
            len: buffer.len as u64,
        };
        let mut producer = lock(&self.submit);
        match producer.try_push(ringcast_shm::proto::submit::MCAST_REF, &[&record.encode()]) {
            Ok(()) => {}
            Err(_) => return Err((Error::new(Status::TryAgain), buffer)),
        }
        let end = producer.written_upto();
        let buf = buffer.buf.take().expect("present until sent");
        lock(&self.send_pool).in_flight.push_back((end, buf));
        self.publish(&mut producer);
        Ok(())
    }
}
