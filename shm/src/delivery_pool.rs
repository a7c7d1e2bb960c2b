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

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use memmap2::{Mmap, MmapOptions, MmapRaw};

use crate::region::{HugePages, RegionError};

/// Largest delivery pool either side maps.
pub const MAX_DELIVERY_POOL_BYTES: usize = 64 << 30;

/// Granularity of the pool size: huge page sized, so either page size fits it.
pub const DELIVERY_POOL_ALIGN_BYTES: usize = 2 << 20;

const SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;

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
        if bytes == 0 || bytes % DELIVERY_POOL_ALIGN_BYTES != 0 || bytes > MAX_DELIVERY_POOL_BYTES {
            return Err(RegionError::BadPoolSize {
                bytes: bytes as u64,
            });
        }
        match huge {
            HugePages::Never => Self::create_with(bytes, false),
            HugePages::Require => Self::create_with(bytes, true),
            HugePages::Try => Self::create_with(bytes, true).or_else(|e| match e {
                RegionError::HugePagesUnavailable { .. } => Self::create_with(bytes, false),
                other => Err(other),
            }),
        }
    }

    fn create_with(bytes: usize, huge: bool) -> Result<DeliveryPool, RegionError> {
        let file = crate::region::sized_memfd(c"ringcast-delivery-pool", bytes as u64, huge)?;
        let map = crate::region::map_shared(&file, bytes, huge)?;
        // After our mapping: F_SEAL_FUTURE_WRITE leaves existing writable mappings alone.
        // SAFETY: F_ADD_SEALS on an fd we own, with an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
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
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_FUTURE_WRITE;
        if seals & needed != needed {
            return Err(RegionError::NotSealed);
        }
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
