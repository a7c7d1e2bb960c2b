//! Client side: the memory a client writes its messages into in place, and which part
//! of it each message may write.
//!
//! Two kinds: the buffer pool of the client's own region (the engine copies a message
//! out before it consumes the record naming it), or, with trusted senders, the client's
//! slab of the engine's delivery pool (nothing copies it; the engine hands each buffer
//! back when nothing holds it). Either way a buffer is a run of blocks from one
//! allocator, written through one [`AreaBuf`] at a time, and given back only as the
//! [`SentBuf`] that sending it turned it into: safe code cannot make two writable views
//! of the same bytes.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::delivery_pool::PoolWriter;
use crate::{PoolAllocator, PoolBuf, Region, RegionError};

/// Allocation granularity.
const BLOCK_BYTES: usize = 4096;

/// Where a client builds messages in place.
#[derive(Debug)]
pub struct SendArea {
    memory: Memory,
    /// Offset of the area in what the engine's references count from (0 for the
    /// region's pool; the slab's offset in the delivery pool).
    base: u64,
    /// Bytes each buffer keeps free in front of its message (the engine's header).
    room: usize,
    alloc: Mutex<PoolAllocator>,
    capacity: usize,
}

#[derive(Debug)]
enum Memory {
    Region(Arc<Region>),
    Pool(PoolWriter),
}

impl SendArea {
    /// The buffer pool of `region`, or None when it has none or it was claimed already
    /// (one writer per process: its buffers are then the only views of those bytes).
    pub fn in_region(region: Arc<Region>) -> Option<Arc<SendArea>> {
        let len = region.pool_len();
        if len < BLOCK_BYTES || !region.claim_pool() {
            return None;
        }
        Self::new(Memory::Region(region), 0, len, 0)
    }

    /// Trusted senders: `[offset, offset + len)` of the delivery pool `writer` maps, each
    /// buffer leaving `room` bytes in front of its message. Refused when the slab does
    /// not lie in the pool (the engine's welcome is checked, not trusted).
    pub fn in_pool_slab(
        writer: PoolWriter,
        offset: u64,
        len: usize,
        room: usize,
    ) -> Result<Option<Arc<SendArea>>, RegionError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > writer.len() as u64) {
            return Err(RegionError::BadPoolSize { bytes: len as u64 });
        }
        Ok(Self::new(Memory::Pool(writer), offset, len, room))
    }

    fn new(memory: Memory, base: u64, len: usize, room: usize) -> Option<Arc<SendArea>> {
        if len < BLOCK_BYTES {
            return None;
        }
        let alloc = PoolAllocator::new(len, BLOCK_BYTES);
        Some(Arc::new(SendArea {
            capacity: alloc.free_bytes().saturating_sub(room),
            memory,
            base,
            room,
            alloc: Mutex::new(alloc),
        }))
    }

    fn allocator(&self) -> MutexGuard<'_, PoolAllocator> {
        // The allocator's state stays consistent whatever panicked while it was held.
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest message a buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether this is a slab of the delivery pool (trusted senders).
    pub fn in_pool(&self) -> bool {
        matches!(self.memory, Memory::Pool(_))
    }

    /// A buffer for a message of `len` bytes, or None while the area is too full.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<AreaBuf> {
        // A zero-length message still takes a block, so that it has a handle.
        let buf = self.allocator().alloc((self.room + len).max(1))?;
        Some(AreaBuf {
            area: self.clone(),
            buf: Some(buf),
            len,
        })
    }

    /// A sent buffer is this client's again.
    pub fn free(&self, sent: SentBuf) {
        let freed = self.allocator().free(sent.buf);
        debug_assert!(freed.is_ok(), "a sent buffer is live: {freed:?}");
    }
}

/// One message's buffer, being written: the only view of its bytes in this process.
/// Dropped unsent, it goes back to its area.
#[derive(Debug)]
pub struct AreaBuf {
    area: Arc<SendArea>,
    /// Present until sent or dropped.
    buf: Option<PoolBuf>,
    len: usize,
}

impl AreaBuf {
    /// Where the buffer starts (its header room included), counted as the engine's
    /// references count: what a record names.
    pub fn offset(&self) -> u64 {
        self.area.base + self.buf.as_ref().expect("present until sent").offset()
    }

    /// Gives up writing: what to free once the engine is done with it.
    pub fn into_sent(mut self) -> SentBuf {
        let buf = self.buf.take().expect("present until sent");
        SentBuf {
            offset: self.area.base + buf.offset(),
            buf,
        }
    }

    /// Where the message starts: `len` bytes from here lie in the buffer.
    fn start(&self) -> *mut u8 {
        let buf = self.buf.as_ref().expect("present until sent");
        let area = &*self.area;
        let start = match &area.memory {
            Memory::Region(region) => region.pool_ptr(buf),
            Memory::Pool(writer) => writer
                .ptr(area.base + buf.offset(), buf.len() as usize)
                .expect("the slab was checked to lie in the pool"),
        };
        start.wrapping_add(area.room)
    }
}

impl std::ops::Deref for AreaBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start` is followed by `len` bytes of this buffer (`room + len` were
        // allocated) in a mapping the area keeps alive. The buffer came from the area's
        // allocator, which never hands out overlapping ones, and only this handle (not
        // Clone) gives access to it until it becomes a `SentBuf`, which gives none; the
        // area claimed the region's pool (no `pool_slice` of it in this process) or
        // mapped its slab itself: no other reference into these bytes exists in this
        // process. `&self` rules out a `&mut` from `deref_mut` meanwhile. Other
        // processes (the engine, trusted clients) only read a buffer they were not given.
        unsafe { std::slice::from_raw_parts(self.start(), self.len) }
    }
}

impl std::ops::DerefMut for AreaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only slice of them.
        unsafe { std::slice::from_raw_parts_mut(self.start(), self.len) }
    }
}

impl Drop for AreaBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let freed = self.area.allocator().free(buf);
            debug_assert!(freed.is_ok(), "a written buffer is live: {freed:?}");
        }
    }
}

/// A buffer named in a record: no access to its bytes, freed with [`SendArea::free`]
/// once the engine is done with it.
#[derive(Debug)]
pub struct SentBuf {
    buf: PoolBuf,
    offset: u64,
}

impl SentBuf {
    /// Where the buffer starts (its header room included), counted as the engine's
    /// references count: in the region's pool, or in the delivery pool.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HugePages, RegionSpec};

    #[test]
    #[cfg_attr(miri, ignore)]
    fn buffers_are_disjoint_and_come_back() {
        let spec = RegionSpec {
            pool_bytes: 64 << 10,
            ..RegionSpec::default()
        };
        let region = Arc::new(Region::create("send-area-test", &spec, HugePages::Never).unwrap());
        let area = SendArea::in_region(region.clone()).unwrap();
        assert_eq!(area.capacity(), 64 << 10);
        let mut a = area.alloc(5000).unwrap();
        let mut b = area.alloc(100).unwrap();
        a.fill(1);
        b.fill(2);
        assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
        assert!(area.alloc(60 << 10).is_none(), "full");
        let sent = a.into_sent();
        // What the engine sees, through its own mapping; in this process the claimed
        // pool gives no other views.
        assert!(region.pool_slice(sent.offset(), 5000).is_none());
        assert!(
            SendArea::in_region(region.clone()).is_none(),
            "claimed once"
        );
        let engine = Region::open(region.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(
            engine.pool_slice(sent.offset(), 5000).unwrap(),
            &[1; 5000][..]
        );
        drop(b);
        assert!(area.alloc(57 << 10).is_none(), "the sent one is still out");
        area.free(sent);
        assert!(area.alloc(64 << 10).is_some(), "all back");
        let empty = RegionSpec {
            pool_bytes: 0,
            ..RegionSpec::default()
        };
        let bare = Arc::new(Region::create("send-area-bare", &empty, HugePages::Never).unwrap());
        assert!(SendArea::in_region(bare).is_none());
    }
}
