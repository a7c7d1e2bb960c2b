//! The engine's delivery pool: one shared memory file per engine, written only by the
//! engine and mapped read-only by every local client.
//!
//! A message delivered to several local receivers is copied into the pool once, and
//! each receiver's event ring gets a descriptor (offset, length) instead of the bytes:
//! the receivers read the payload in place and hand the descriptor back when done. The
//! engine writes a buffer only while no client holds it, so a client never sees bytes
//! change under a descriptor it holds.
//!
//! Clients cannot write: the file carries `F_SEAL_FUTURE_WRITE` (added after the
//! engine's own writable mapping exists, which it leaves working), so any new writable
//! mapping or `write(2)` fails, whoever holds the fd. It is also sealed against
//! shrinking and growing, so a reader cannot be made to fault.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use memmap2::{Mmap, MmapOptions, MmapRaw};

use crate::region::{HugePages, RegionError};

/// Largest delivery pool either side maps.
pub const MAX_DELIVERY_POOL_BYTES: usize = 64 << 30;

/// Granularity of the pool size: huge page sized, so either page size fits it.
pub const DELIVERY_POOL_ALIGN_BYTES: usize = 2 << 20;

const SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
/// For a pool its clients may write (trusted senders): size still fixed.
const SEALS_WRITABLE: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Engine side: the pool and its only writable mapping.
pub struct DeliveryPool {
    map: MmapRaw,
    file: File,
    huge_pages: bool,
}

impl std::fmt::Debug for DeliveryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryPool")
            .field("len", &self.map.len())
            .field("huge_pages", &self.huge_pages)
            .finish()
    }
}

impl DeliveryPool {
    /// A pool of `bytes` (a nonzero multiple of [`DELIVERY_POOL_ALIGN_BYTES`], at most
    /// [`MAX_DELIVERY_POOL_BYTES`]), on huge pages as `huge` says (falling back to
    /// normal pages for [`HugePages::Try`]).
    pub fn create(bytes: usize, huge: HugePages) -> Result<DeliveryPool, RegionError> {
        Self::create_sealed(bytes, huge, SEALS)
    }

    /// [`DeliveryPool::create`] for clients that trust each other: whoever holds the fd
    /// may map it writable (each writes its own messages into it in place), so a client
    /// can also change what others read. Its size is sealed all the same.
    pub fn create_writable_by_clients(
        bytes: usize,
        huge: HugePages,
    ) -> Result<DeliveryPool, RegionError> {
        Self::create_sealed(bytes, huge, SEALS_WRITABLE)
    }

    fn create_sealed(
        bytes: usize,
        huge: HugePages,
        seals: libc::c_int,
    ) -> Result<DeliveryPool, RegionError> {
        if bytes == 0 || bytes % DELIVERY_POOL_ALIGN_BYTES != 0 || bytes > MAX_DELIVERY_POOL_BYTES {
            return Err(RegionError::BadPoolSize {
                bytes: bytes as u64,
            });
        }
        match huge {
            HugePages::Never => Self::create_with(bytes, false, seals),
            HugePages::Require => Self::create_with(bytes, true, seals),
            HugePages::Try => Self::create_with(bytes, true, seals).or_else(|e| match e {
                RegionError::HugePagesUnavailable { .. } => Self::create_with(bytes, false, seals),
                other => Err(other),
            }),
        }
    }

    fn create_with(
        bytes: usize,
        huge: bool,
        seals: libc::c_int,
    ) -> Result<DeliveryPool, RegionError> {
        let file = crate::region::sized_memfd(c"ringcast-delivery-pool", bytes as u64, huge)?;
        let map = crate::region::map_shared(&file, bytes, huge)?;
        // After our mapping: F_SEAL_FUTURE_WRITE leaves existing writable mappings alone.
        // SAFETY: F_ADD_SEALS on an fd we own, with an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(RegionError::Seal(io::Error::last_os_error()));
        }
        Ok(DeliveryPool {
            map,
            file,
            huge_pages: huge,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// The fd to pass to clients (SCM_RIGHTS); sealed, so they can only read it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Copies `data` to `offset`. The caller (the engine's allocator) guarantees that no
    /// client holds a descriptor overlapping it; a clients' concurrent read of a buffer it
    /// does not hold is its own bug and only sees bytes change.
    ///
    /// # Panics
    ///
    /// If the range is outside the pool (an allocator bug, not input).
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset.checked_add(data.len());
        assert!(
            end.is_some_and(|end| end <= self.map.len()),
            "delivery pool write {offset}+{} outside {} bytes",
            data.len(),
            self.map.len()
        );
        // SAFETY: [offset, end) is inside the mapping (checked above), which lives as long
        // as self; &mut self makes this the only writer in this process, and no reference
        // into the mapping is ever handed out on this side.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                data.len(),
            );
        }
    }
}

/// Client side: the pool mapped read-only.
#[derive(Debug)]
pub struct DeliveryPoolView {
    map: Mmap,
}

impl DeliveryPoolView {
    /// Maps a pool fd received from the engine, after checking its seals (so that it
    /// can neither shrink under us nor be written by another client) and its size.
    pub fn open(fd: OwnedFd) -> Result<DeliveryPoolView, RegionError> {
        Self::open_sealed(fd, libc::F_SEAL_SHRINK | libc::F_SEAL_FUTURE_WRITE)
    }

    /// [`DeliveryPoolView::open`] of a pool its clients may write (trusted senders,
    /// [`DeliveryPool::create_writable_by_clients`]): only its size is checked sealed.
    pub fn open_trusted(fd: OwnedFd) -> Result<DeliveryPoolView, RegionError> {
        Self::open_sealed(fd, libc::F_SEAL_SHRINK)
    }

    fn open_sealed(fd: OwnedFd, needed: libc::c_int) -> Result<DeliveryPoolView, RegionError> {
        let (file, bytes) = checked_pool_file(fd, needed)?;
        // SAFETY: the file is sealed against shrinking (checked above), so the mapping
        // stays backed; its bytes change only where the engine writes buffers that no
        // descriptor we hold names (the engine's contract, see the module docs).
        let map = unsafe { MmapOptions::new().len(bytes as usize).map(&file) }
            .map_err(|source| RegionError::Map { bytes, source })?;
        Ok(DeliveryPoolView { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The bytes a descriptor names, or `None` if it is not inside the pool.
    pub fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.map.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        fd.try_clone_to_owned().unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn clients_read_what_the_engine_wrote_and_cannot_write() {
        let mut pool = DeliveryPool::create(2 << 20, HugePages::Try).unwrap();
        pool.write(4096, b"hello pool");
        let view = DeliveryPoolView::open(dup(pool.fd())).unwrap();
        assert_eq!(view.len(), 2 << 20);
        assert_eq!(view.slice(4096, 10), Some(&b"hello pool"[..]));
        assert_eq!(view.slice((2 << 20) - 1, 2), None);
        assert_eq!(view.slice(u64::MAX, 2), None);
        // Later writes are visible through the existing read-only mapping.
        pool.write(0, b"again");
        assert_eq!(view.slice(0, 5), Some(&b"again"[..]));

        // Whoever holds the fd cannot map it writable, write it or resize it.
        let file = File::from(dup(pool.fd()));
        // SAFETY: a mapping that must fail; nothing would use it.
        assert!(unsafe { MmapOptions::new().len(4096).map_mut(&file) }.is_err());
        use std::io::Write;
        assert!((&file).write(b"x").is_err());
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(4 << 20).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn an_unsealed_or_odd_file_is_refused() {
        assert!(matches!(
            DeliveryPool::create(4096, HugePages::Never),
            Err(RegionError::BadPoolSize { .. })
        ));
        // SAFETY: valid C string, plain flags.
        let raw = unsafe { libc::memfd_create(c"ringcast-test-pool".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let memfd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        memfd.set_len(2 << 20).unwrap();
        assert!(matches!(
            DeliveryPoolView::open(OwnedFd::from(memfd)),
            Err(RegionError::NotSealed)
        ));
    }
}

/// A pool fd from the engine, with its size (nonzero, bounded) and the `needed` seals
/// checked before anything maps it.
fn checked_pool_file(fd: OwnedFd, needed: libc::c_int) -> Result<(File, u64), RegionError> {
    let file = File::from(fd);
    let bytes = file.metadata().map_err(RegionError::Stat)?.len();
    if bytes == 0 || bytes > MAX_DELIVERY_POOL_BYTES as u64 {
        return Err(RegionError::BadPoolSize { bytes });
    }
    // SAFETY: F_GET_SEALS on an fd we own; no pointer arguments.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(RegionError::Seal(io::Error::last_os_error()));
    }
    if seals & needed != needed {
        return Err(RegionError::NotSealed);
    }
    Ok((file, bytes))
}

/// Client side, trusted senders: the pool mapped writable, for writing messages in
/// place into this client's slab of it.
#[derive(Debug)]
pub struct PoolWriter {
    map: MmapRaw,
}

impl PoolWriter {
    /// Maps a trusted pool fd writable, after checking that it cannot shrink.
    pub fn open(fd: OwnedFd) -> Result<PoolWriter, RegionError> {
        let (file, bytes) = checked_pool_file(fd, libc::F_SEAL_SHRINK)?;
        let map = MmapOptions::new()
            .len(bytes as usize)
            .map_raw(&file)
            .map_err(|source| RegionError::Map { bytes, source })?;
        Ok(PoolWriter { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Where the pool bytes `[offset, offset + len)` start, or `None` outside the pool.
    /// The mapping lives as long as `self` and cannot shrink (sealed); writing through
    /// the pointer is the caller's business ([`crate::send_area`] hands out each range
    /// once at a time).
    pub fn ptr(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.map.len()).then(|| self.map.as_mut_ptr().wrapping_add(start))
    }
}

/// Engine side: the pool shared by the engine's own owners of its buffers (the engine
/// loop, Totem's queue through [`bytes::Bytes`], readers' descriptors), with one count of
/// holders per buffer. A buffer returns to the allocator when its last holder lets go.
///
/// Cheap to clone; single-threaded use in practice (the engine loop), but `Send + Sync`
/// because `Bytes` owners must be.
#[derive(Clone)]
pub struct SharedDeliveryPool {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    pool: DeliveryPool,
    /// Address of the mapping, for telling whether a slice lies in it.
    base: usize,
    state: Mutex<SharedState>,
    /// Set when `state.released` has entries: the engine looks every loop iteration,
    /// and without the lock.
    any_released: std::sync::atomic::AtomicBool,
}

struct SharedState {
    alloc: crate::PoolAllocator,
    /// Live buffers by start offset: (length, holders).
    live: BTreeMap<u64, (u64, u32)>,
    /// Live buffers that a client wrote in its own part of the pool
    /// ([`SharedDeliveryPool::adopt`]), by start offset: the owner's tag.
    owners: std::collections::HashMap<u64, u64>,
    /// Adopted buffers whose last holder let go: (owner, start), for telling the owner.
    released: Vec<(u64, u64)>,
}

impl std::fmt::Debug for SharedDeliveryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDeliveryPool")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl SharedDeliveryPool {
    /// Shares `pool`, handing out buffers in runs of `block` bytes.
    pub fn new(pool: DeliveryPool, block: usize) -> SharedDeliveryPool {
        let alloc = crate::PoolAllocator::new(pool.len(), block);
        let base = pool.map.as_ptr() as usize;
        SharedDeliveryPool {
            inner: Arc::new(SharedInner {
                pool,
                base,
                state: Mutex::new(SharedState {
                    alloc,
                    live: BTreeMap::new(),
                    owners: std::collections::HashMap::new(),
                    released: Vec::new(),
                }),
                any_released: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SharedState> {
        // Nothing here can panic while the lock is held but an allocator bug; a poisoned
        // lock still has consistent counts.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.inner.pool.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.pool.is_empty()
    }

    pub fn huge_pages(&self) -> bool {
        self.inner.pool.huge_pages()
    }

    /// The fd to pass to clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.pool.fd()
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> usize {
        self.state().alloc.free_bytes()
    }

    /// Live buffers (for tests and counters).
    pub fn live_buffers(&self) -> usize {
        self.state().live.len()
    }

    /// A new buffer of `len` bytes, held once by the returned handle.
    pub fn alloc(&self, len: usize) -> Option<PoolBuffer> {
        let mut state = self.state();
        let buf = state.alloc.alloc(len)?;
        state.live.insert(buf.offset(), (buf.len(), 1));
        Some(PoolBuffer {
            pool: self.clone(),
            offset: buf.offset(),
            len: buf.len(),
            cancelled: false,
        })
    }

    /// `len` bytes taken from the allocator for a client to manage itself (its part of
    /// the pool for trusted senders): no live buffer, no holders.
    pub fn alloc_raw(&self, len: usize) -> Option<u64> {
        Some(self.state().alloc.alloc(len)?.offset())
    }

    /// Gives back what [`SharedDeliveryPool::alloc_raw`] took.
    pub fn free_raw(&self, offset: u64, len: usize) {
        let freed = self
            .state()
            .alloc
            .free(crate::PoolBuf::from_descriptor(offset, len as u64));
        debug_assert!(
            freed.is_ok(),
            "raw pool range {offset} not allocated: {freed:?}"
        );
    }

    /// `[offset, offset + len)`, which a client (tagged `owner`) wrote in its part of the
    /// pool, as a live buffer held by the returned handle. When its last holder lets go
    /// it is not freed but reported by [`SharedDeliveryPool::take_released`]. `None` if
    /// it is empty, outside the pool or overlaps a live buffer.
    pub fn adopt(&self, offset: u64, len: u64, owner: u64) -> Option<PoolBuffer> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len() as u64 {
            return None;
        }
        let mut state = self.state();
        if let Some((&start, &(l, _))) = state.live.range(..end).next_back() {
            if start + l > offset {
                return None;
            }
        }
        state.live.insert(offset, (len, 1));
        state.owners.insert(offset, owner);
        Some(PoolBuffer {
            pool: self.clone(),
            offset,
            len,
            cancelled: false,
        })
    }

    /// Whether `bytes` lies in this pool's mapping (a trusted sender's in-place
    /// message, whatever its size, is delivered by descriptor).
    pub fn contains(&self, bytes: &[u8]) -> bool {
        let start = bytes.as_ptr() as usize;
        start >= self.inner.base && start + bytes.len() <= self.inner.base + self.len()
    }

    /// Adopted buffers released since the last call: (owner, start offset).
    pub fn take_released(&self) -> Vec<(u64, u64)> {
        use std::sync::atomic::Ordering;
        if !self.inner.any_released.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut state = self.state();
        self.inner.any_released.store(false, Ordering::Relaxed);
        std::mem::take(&mut state.released)
    }

    /// If `bytes` lies inside one live buffer of this pool: one more holder of that
    /// buffer, and the pool offset where `bytes` starts (a descriptor for a reader).
    pub fn retain_slice(&self, bytes: &[u8]) -> Option<u64> {
        let start = (bytes.as_ptr() as usize).checked_sub(self.inner.base)? as u64;
        let end = start.checked_add(bytes.len() as u64)?;
        if end > self.len() as u64 {
            return None;
        }
        let mut state = self.state();
        let (&buffer_start, entry) = state.live.range_mut(..=start).next_back()?;
        if end > buffer_start + entry.0 {
            return None;
        }
        entry.1 += 1;
        Some(start)
    }

    /// One holder of the buffer containing pool offset `offset` let go. False if no
    /// live buffer contains it.
    pub fn release(&self, offset: u64) -> bool {
        let mut state = self.state();
        let Some((&start, &(len, holders))) = state.live.range(..=offset).next_back() else {
            return false;
        };
        if offset >= start + len.max(1) {
            return false;
        }
        if holders > 1 {
            state.live.insert(start, (len, holders - 1));
        } else if let Some(owner) = state.owners.remove(&start) {
            state.live.remove(&start);
            state.released.push((owner, start));
            self.inner
                .any_released
                .store(true, std::sync::atomic::Ordering::Release);
        } else {
            state.live.remove(&start);
            let freed = state
                .alloc
                .free(crate::PoolBuf::from_descriptor(start, len));
            debug_assert!(freed.is_ok(), "pool buffer {start} not live: {freed:?}");
        }
        true
    }

    fn holders(&self, start: u64) -> u32 {
        self.state().live.get(&start).map_or(0, |&(_, n)| n)
    }

    fn retain(&self, start: u64) {
        if let Some((_, n)) = self.state().live.get_mut(&start) {
            *n += 1;
        }
    }
}

/// One buffer of a [`SharedDeliveryPool`], held by this handle (released on drop).
/// Writable only while nothing else holds it, so no reader ever sees bytes change.
#[derive(Debug)]
pub struct PoolBuffer {
    pool: SharedDeliveryPool,
    offset: u64,
    len: u64,
    /// Set by [`PoolBuffer::unadopt`]: nothing to release on drop.
    cancelled: bool,
}

impl PoolBuffer {
    /// Pool offset of the buffer's first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` to `at` in the buffer. False (nothing written) if the range is
    /// outside the buffer or anything else holds the buffer (a `Bytes` or a reader).
    pub fn write(&mut self, at: usize, data: &[u8]) -> bool {
        let Some(end) = at.checked_add(data.len()) else {
            return false;
        };
        if end > self.len as usize || self.pool.holders(self.offset) != 1 {
            return false;
        }
        let start = self.offset as usize + at;
        // SAFETY: [start, start + len) lies in this buffer (checked above), inside the
        // mapping that `self.pool` keeps alive; this handle is the buffer's only holder
        // (checked above, and only holders can create references into it), so no
        // reference into these bytes exists in this process; clients cannot write the
        // pool (sealed), and no descriptor to this buffer was handed out (that would be
        // a holder).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.pool.inner.base + start) as *mut u8,
                data.len(),
            );
        }
        true
    }

    /// The bytes `range` of the buffer as a `Bytes` that holds the buffer while it (or
    /// any clone or slice of it) lives.
    ///
    /// # Panics
    ///
    /// If `range` is not inside the buffer (a caller bug).
    pub fn bytes(&self, range: std::ops::Range<usize>) -> Bytes {
        assert!(
            range.start <= range.end && range.end <= self.len as usize,
            "range {range:?} outside a {}-byte pool buffer",
            self.len
        );
        self.pool.retain(self.offset);
        Bytes::from_owner(Held {
            pool: self.pool.clone(),
            start: self.offset,
            at: self.offset as usize + range.start,
            len: range.len(),
        })
    }

    /// Where the buffer starts in this process, for handing it to the kernel to fill (a
    /// receive). Writing through it is the caller's `unsafe` business: only while this
    /// handle is the buffer's one holder (no `Bytes` of it, no descriptor), as for
    /// [`PoolBuffer::write`].
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        (self.pool.inner.base + self.offset as usize) as *mut u8
    }

    /// Whether this handle is the buffer's only holder.
    pub fn is_unique(&self) -> bool {
        self.pool.holders(self.offset) == 1
    }

    /// One more holder for a reader's descriptor (released with
    /// [`SharedDeliveryPool::release`] of the returned offset, the buffer's start).
    pub fn share(&self) -> u64 {
        self.pool.retain(self.offset);
        self.offset
    }
}

impl PoolBuffer {
    /// Undoes [`SharedDeliveryPool::adopt`] while this handle is the only holder: the
    /// range is the client's again without a release being reported (a message that
    /// could not be taken yet and will be adopted again). False if the buffer was not
    /// adopted or has other holders; the handle is then dropped as usual.
    pub fn unadopt(mut self) -> bool {
        let mut state = self.pool.state();
        let unique = state.live.get(&self.offset).is_some_and(|&(_, n)| n == 1);
        if !unique || !state.owners.contains_key(&self.offset) {
            return false;
        }
        state.owners.remove(&self.offset);
        state.live.remove(&self.offset);
        drop(state);
        self.cancelled = true;
        true
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if !self.cancelled {
            self.pool.release(self.offset);
        }
    }
}

/// The owner behind a pool-backed `Bytes`.
struct Held {
    pool: SharedDeliveryPool,
    start: u64,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: [at, at + len) lies in a live buffer (checked when this was made), in
        // the mapping `self.pool` keeps alive; this owner holds the buffer, so the engine
        // does not write it ([`PoolBuffer::write`] refuses a shared buffer) and clients
        // cannot (sealed).
        unsafe {
            std::slice::from_raw_parts((self.pool.inner.base + self.at) as *const u8, self.len)
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.pool.release(self.start);
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    /// Trusted senders: a client's range of the pool is adopted as a live buffer; its
    /// last holder's release is reported to the owner instead of freeing it, an
    /// adoption undone while unshared reports nothing, and overlaps are refused.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn adopted_buffers_are_reported_back_to_their_owner() {
        let pool = SharedDeliveryPool::new(
            DeliveryPool::create_writable_by_clients(2 << 20, HugePages::Never).unwrap(),
            4096,
        );
        // Whoever holds the fd may map it writable.
        let file = File::from(pool.fd().try_clone_to_owned().unwrap());
        // SAFETY: a shared mapping only compared against below.
        let mut map = unsafe { MmapOptions::new().len(1 << 20).map_mut(&file) }.unwrap();
        let slab = pool.alloc_raw(1 << 20).unwrap();
        let free = pool.free_bytes();
        map[slab as usize + 10..slab as usize + 15].copy_from_slice(b"hello");
        let buffer = pool.adopt(slab, 4096, 7).unwrap();
        assert!(
            pool.adopt(slab + 100, 10, 7).is_none(),
            "overlaps a live buffer"
        );
        let bytes = buffer.bytes(10..15);
        assert_eq!(&bytes[..], b"hello");
        let reader = pool.retain_slice(&bytes).unwrap();
        drop(buffer);
        drop(bytes);
        assert!(pool.take_released().is_empty(), "a reader still holds it");
        assert!(pool.release(reader));
        assert_eq!(pool.take_released(), vec![(7, slab)]);
        assert_eq!(pool.free_bytes(), free, "the client's range is not freed");
        assert_eq!(pool.live_buffers(), 0);
        // Undone while unshared: nothing reported, the range can be adopted again.
        let again = pool.adopt(slab, 4096, 7).unwrap();
        assert!(again.unadopt());
        assert!(pool.take_released().is_empty());
        let shared = pool.adopt(slab, 4096, 7).unwrap();
        let held = shared.bytes(0..1);
        assert!(!shared.unadopt(), "held elsewhere");
        drop(held);
        assert_eq!(pool.take_released(), vec![(7, slab)]);
        pool.free_raw(slab, 1 << 20);
        assert_eq!(pool.free_bytes(), 2 << 20);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_buffer_lives_while_anything_holds_it_and_is_written_only_when_unshared() {
        let pool = SharedDeliveryPool::new(
            DeliveryPool::create(2 << 20, HugePages::Never).unwrap(),
            4096,
        );
        let view = DeliveryPoolView::open(pool.fd().try_clone_to_owned().unwrap()).unwrap();
        let total = pool.free_bytes();
        let mut buf = pool.alloc(10_000).unwrap();
        assert!(buf.write(100, b"payload"));
        assert!(!buf.write(9_999, b"xy"), "past the end");
        let bytes = buf.bytes(100..107);
        assert_eq!(&bytes[..], b"payload");
        assert!(!buf.write(0, b"h"), "written while a Bytes holds it");
        // A slice of it is recognised and held for a reader.
        let offset = pool.retain_slice(&bytes[2..]).unwrap();
        assert_eq!(offset, buf.offset() + 102);
        assert_eq!(view.slice(offset, 5).unwrap(), b"yload");
        assert_eq!(pool.retain_slice(b"elsewhere"), None);
        drop(buf);
        drop(bytes);
        assert_eq!(pool.live_buffers(), 1, "the reader still holds it");
        assert!(pool.release(offset));
        assert_eq!(pool.live_buffers(), 0);
        assert_eq!(pool.free_bytes(), total);
        assert!(!pool.release(offset), "nothing left to release");

        // share(): descriptors for readers of a copied payload.
        let mut buf = pool.alloc(5000).unwrap();
        assert!(buf.write(0, &[7; 5000]));
        let a = buf.share();
        let b = buf.share();
        drop(buf);
        assert!(pool.release(a));
        assert_eq!(pool.live_buffers(), 1);
        assert!(pool.release(b));
        assert_eq!(pool.free_bytes(), total);
    }
}
