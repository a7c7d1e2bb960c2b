//! A region: one sealed memfd mapped shared by the engine and one client.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{
    DATA_OFFSET, HUGE_PAGE_BYTES, Layout, MAGIC, MAX_POOL_BYTES, MAX_RING_BYTES, RegionHeader,
    RegionSpec, RingControl, RingLayout, VERSION,
};
use crate::pool::PoolBuf;
use crate::ring::{Consumer, Producer};

/// Whether to back a region with huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Huge pages if the host has them free, else normal pages (one warning per process).
    #[default]
    Try,
    /// Huge pages or [`RegionError::HugePagesUnavailable`].
    Require,
    /// Normal pages.
    Never,
}

/// Why a region could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A ring size is not a power of two in [`crate::layout::MIN_RING_BYTES`,
    /// `MAX_RING_BYTES`] (`ring` is "submit" or "event").
    #[error("{ring} ring size {bytes} is not a power of two in [4096, 2^30]")]
    InvalidRingSize {
        /// Which ring.
        ring: &'static str,
        /// The size asked for.
        bytes: u64,
    },
    /// The pool size is not a multiple of 4096 or exceeds `MAX_POOL_BYTES`.
    #[error("pool size {bytes} is not a multiple of 4096 no larger than 64 GiB")]
    InvalidPoolSize {
        /// The size asked for.
        bytes: u64,
    },
    /// A delivery pool size that is 0, not a multiple of 2 MiB or over 64 GiB.
    #[error("delivery pool size {bytes} is not a nonzero multiple of 2 MiB no larger than 64 GiB")]
    BadPoolSize {
        /// The size asked for or found.
        bytes: u64,
    },
    /// The memfd name (with its "ringcast-" prefix) is over 249 bytes or contains a NUL.
    #[error("region name {0:?} is too long or contains a NUL byte")]
    InvalidName(String),
    /// `memfd_create` failed.
    #[error("memfd_create failed: {0}")]
    MemfdCreate(#[source] io::Error),
    /// Sizing the memfd (`ftruncate`) failed.
    #[error("cannot size the region to {bytes} bytes: {source}")]
    Truncate {
        /// The size asked for.
        bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// Adding or reading the memfd's seals failed.
    #[error("cannot seal the region or read its seals: {0}")]
    Seal(#[source] io::Error),
    /// `mmap` failed.
    #[error("cannot map {bytes} bytes: {source}")]
    Map {
        /// The length asked for.
        bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// A hugetlb region could not be made (`stage` says where); no huge pages reserved or
    /// free is the usual cause. Only returned to callers with [`HugePages::Require`].
    #[error("huge pages unavailable ({stage}): {source}")]
    HugePagesUnavailable {
        /// The step that failed: "memfd_create", "ftruncate", "seal" or "mmap".
        stage: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// `fstat` of a received fd failed.
    #[error("cannot stat the region fd: {0}")]
    Stat(#[source] io::Error),
    /// The received fd is not sealed against shrinking, so the peer could make our accesses
    /// fault (SIGBUS) by truncating it.
    #[error("region fd is not sealed against shrinking")]
    NotSealed,
    /// The received file is smaller than the header, or than the layout it describes.
    #[error("region file is {file_bytes} bytes, {needed_bytes} needed")]
    FileTooSmall {
        /// Size of the file (fstat).
        file_bytes: u64,
        /// Size required.
        needed_bytes: u64,
    },
    /// The received file is larger than any valid region.
    #[error("region file is {file_bytes} bytes, more than the {max_bytes} a region can be")]
    FileTooLarge {
        /// Size of the file (fstat).
        file_bytes: u64,
        /// Largest valid region.
        max_bytes: u64,
    },
    /// The header does not start with [`MAGIC`]: not a ringcast region.
    #[error("bad magic {found:#018x} (expected {expected:#018x}): not a ringcast region")]
    BadMagic {
        /// What the header holds.
        found: u64,
        /// [`MAGIC`].
        expected: u64,
    },
    /// The header has another layout version than this build.
    #[error("region layout version {found}, this build speaks {expected}")]
    UnsupportedVersion {
        /// What the header holds.
        found: u32,
        /// [`VERSION`].
        expected: u32,
    },
    /// A header field disagrees with the layout its sizes imply.
    #[error("region header field {field} is {found}, expected {expected}")]
    HeaderMismatch {
        /// Name of the [`RegionHeader`] field.
        field: &'static str,
        /// What the header holds.
        found: u64,
        /// What it must hold.
        expected: u64,
    },
}

/// Largest file [`Region::open`] maps.
const MAX_REGION_BYTES: u64 =
    (DATA_OFFSET + 2 * MAX_RING_BYTES + MAX_POOL_BYTES).next_multiple_of(HUGE_PAGE_BYTES) as u64;

/// Longest memfd name Linux accepts (NAME_MAX minus the "memfd:" prefix).
const MAX_MEMFD_NAME_BYTES: usize = 249;

const SUBMIT_PRODUCER: u8 = 1;
const SUBMIT_CONSUMER: u8 = 2;
const EVENT_PRODUCER: u8 = 4;
const EVENT_CONSUMER: u8 = 8;
/// The pool was claimed by a writer in this process ([`Region::claim_pool`]).
const POOL_WRITER: u8 = 16;

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING [| MFD_HUGETLB | MFD_HUGE_2MB])`
/// sized to `bytes`; a huge page failure is [`RegionError::HugePagesUnavailable`] (so
/// that callers can fall back to normal pages).
pub(crate) fn sized_memfd(name: &CStr, bytes: u64, huge: bool) -> Result<File, RegionError> {
    let huge_error = |stage: &'static str, source: io::Error| RegionError::HugePagesUnavailable {
        stage,
        source,
    };
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: name is a valid NUL-terminated string; memfd_create has no other
    // preconditions.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return Err(if huge {
            huge_error("memfd_create", err)
        } else {
            RegionError::MemfdCreate(err)
        });
    }
    // SAFETY: raw is a fresh fd that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.set_len(bytes).map_err(|source| {
        if huge {
            huge_error("ftruncate", source)
        } else {
            RegionError::Truncate { bytes, source }
        }
    })?;
    Ok(file)
}

/// A shared read-write mapping of `bytes` of `file`. For hugetlbfs this reserves the
/// huge pages, so a host without enough of them fails here (ENOMEM, as
/// [`RegionError::HugePagesUnavailable`]) instead of with SIGBUS at first touch.
pub(crate) fn map_shared(file: &File, bytes: usize, huge: bool) -> Result<MmapRaw, RegionError> {
    MmapOptions::new()
        .len(bytes)
        .map_raw(file)
        .map_err(|source| {
            if huge {
                RegionError::HugePagesUnavailable {
                    stage: "mmap",
                    source,
                }
            } else {
                RegionError::Map {
                    bytes: bytes as u64,
                    source,
                }
            }
        })
}

/// Set once the huge page fallback has been logged: hosts without huge pages would otherwise
/// log it for every client.
static HUGE_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// The mapping and its file; ring ends hold it too, so it lives as long as any of them.
struct Mapping {
    map: MmapRaw,
    file: File,
}

impl Mapping {
    fn header(&self) -> &RegionHeader {
        // SAFETY: every mapping is at least DATA_OFFSET > size_of::<RegionHeader>() bytes
        // (create sizes it from a Layout, open checks the file size first) and page aligned;
        // the header is all atomics, so a shared reference tolerates the peer's writes.
        unsafe { &*self.map.as_mut_ptr().cast::<RegionHeader>() }
    }
}

/// One engine–client shared region. `Send + Sync`; may be shared as `Arc<Region>`.
pub struct Region {
    mapping: Arc<Mapping>,
    /// This side's copy, never re-read from shared memory.
    layout: Layout,
    /// Bits of the ring ends already handed out.
    ends_taken: AtomicU8,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("fd", &self.mapping.file.as_raw_fd())
            .field("layout", &self.layout)
            .finish()
    }
}

impl Region {
    /// Engine side: `memfd_create("ringcast-<name>", MFD_CLOEXEC | MFD_ALLOW_SEALING
    /// [| MFD_HUGETLB | MFD_HUGE_2MB])`, size it, seal it against shrinking and growing (so a
    /// client cannot make the engine fault), map it shared read-write, write the header and
    /// validate it as a client would.
    ///
    /// With [`HugePages::Try`] a failure of any huge page step falls back to normal pages,
    /// logging one `tracing::warn!` per process. [`HugePages::Require`] returns the error.
    ///
    /// Limit of the seals: a client can still punch holes in the file (`fallocate`). On a
    /// normal-page region the hole reads back as zeros, which the ring checks treat like any
    /// other garbage; on a huge-page region the next touch needs a free huge page, and the
    /// engine would get SIGBUS if none were left.
    pub fn create(name: &str, spec: &RegionSpec, huge: HugePages) -> Result<Region, RegionError> {
        spec.validate()?;
        let full_name = format!("ringcast-{name}");
        if full_name.len() > MAX_MEMFD_NAME_BYTES {
            return Err(RegionError::InvalidName(name.to_owned()));
        }
        let c_name = CString::new(full_name).map_err(|_| RegionError::InvalidName(name.into()))?;
        match huge {
            HugePages::Never => Self::create_with(&c_name, spec, false),
            HugePages::Require => Self::create_with(&c_name, spec, true),
            HugePages::Try => match Self::create_with(&c_name, spec, true) {
                Err(RegionError::HugePagesUnavailable { stage, source }) => {
                    if !HUGE_FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            stage,
                            error = %source,
                            "no huge pages for shared regions, using normal pages \
                             (reserve some with vm.nr_hugepages); not repeated"
                        );
                    }
                    Self::create_with(&c_name, spec, false)
                }
                other => other,
            },
        }
    }

    fn create_with(name: &CString, spec: &RegionSpec, huge: bool) -> Result<Region, RegionError> {
        let layout = Layout::new(spec, huge)?;
        let total_bytes = layout.total_bytes as u64;
        let huge_error = |stage: &'static str, source: io::Error| {
            RegionError::HugePagesUnavailable { stage, source }
        };
        let file = sized_memfd(name, total_bytes, huge)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on an fd we own, with an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            let err = io::Error::last_os_error();
            return Err(if huge {
                huge_error("seal", err)
            } else {
                RegionError::Seal(err)
            });
        }
        let map = map_shared(&file, layout.total_bytes, huge)?;
        let region = Region {
            mapping: Arc::new(Mapping { map, file }),
            layout,
            ends_taken: AtomicU8::new(0),
        };
        region.write_header();
        // The client will run exactly this check; failing it here is a bug on our side.
        let parsed = parse_header(region.header(), total_bytes)?;
        debug_assert_eq!(parsed, layout);
        Ok(region)
    }

    fn write_header(&self) {
        let h = self.header();
        let l = &self.layout;
        let r = Ordering::Relaxed;
        h.version.store(VERSION, r);
        h.header_bytes.store(l.header_bytes as u32, r);
        h.total_bytes.store(l.total_bytes as u64, r);
        h.huge_pages.store(u32::from(l.huge_pages()), r);
        h.submit_ctrl_offset.store(l.submit.ctrl_offset as u64, r);
        h.submit_data_offset.store(l.submit.data_offset as u64, r);
        h.submit_data_bytes.store(l.submit.data_bytes as u64, r);
        h.event_ctrl_offset.store(l.event.ctrl_offset as u64, r);
        h.event_data_offset.store(l.event.data_offset as u64, r);
        h.event_data_bytes.store(l.event.data_bytes as u64, r);
        h.pool_offset.store(l.pool_offset as u64, r);
        h.pool_bytes.store(l.pool_bytes as u64, r);
        h.engine_pid.store(std::process::id(), r);
        // Magic last: a header with the magic is complete (the fd only leaves the engine
        // afterwards anyway, through a syscall that orders everything).
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// Client side: maps a region fd received from the engine, after checking that it is
    /// sealed against shrinking, and validates the header (magic, version, every size and
    /// offset, and that the layout fits the file). Errors name what is wrong.
    pub fn open(fd: OwnedFd) -> Result<Region, RegionError> {
        let file = File::from(fd);
        let file_bytes = file.metadata().map_err(RegionError::Stat)?.len();
        if file_bytes < DATA_OFFSET as u64 {
            return Err(RegionError::FileTooSmall {
                file_bytes,
                needed_bytes: DATA_OFFSET as u64,
            });
        }
        if file_bytes > MAX_REGION_BYTES {
            return Err(RegionError::FileTooLarge {
                file_bytes,
                max_bytes: MAX_REGION_BYTES,
            });
        }
        // SAFETY: F_GET_SEALS on an fd we own; no pointer arguments.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(RegionError::Seal(io::Error::last_os_error()));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RegionError::NotSealed);
        }
        let map = MmapOptions::new()
            .len(file_bytes as usize)
            .map_raw(&file)
            .map_err(|source| RegionError::Map {
                bytes: file_bytes,
                source,
            })?;
        let mapping = Arc::new(Mapping { map, file });
        let layout = parse_header(mapping.header(), file_bytes)?;
        Ok(Region {
            mapping,
            layout,
            ends_taken: AtomicU8::new(0),
        })
    }

    fn base(&self) -> *mut u8 {
        self.mapping.map.as_mut_ptr()
    }

    fn header(&self) -> &RegionHeader {
        self.mapping.header()
    }

    /// The region's fd, to pass to the client (SCM_RIGHTS).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.mapping.file.as_fd()
    }

    /// This side's layout (the engine's own, or the client's validated copy).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the region is hugetlb-backed.
    pub fn huge_pages(&self) -> bool {
        self.layout.huge_pages()
    }

    /// Size of the region in bytes ([`Layout::total_bytes`]); never 0.
    #[expect(clippy::len_without_is_empty, reason = "a region is never empty")]
    pub fn len(&self) -> usize {
        self.layout.total_bytes
    }

    fn take_end(&self, bit: u8) -> bool {
        self.ends_taken.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    fn ring_ptrs(&self, ring: &RingLayout) -> (NonNull<RingControl>, NonNull<u8>) {
        let base = self.base();
        // SAFETY: both offsets lie inside the mapping (the layout was checked against its
        // length), so the pointers are in bounds and non-null.
        unsafe {
            (
                NonNull::new_unchecked(base.add(ring.ctrl_offset).cast::<RingControl>()),
                NonNull::new_unchecked(base.add(ring.data_offset)),
            )
        }
    }

    fn producer(&self, bit: u8, ring: &RingLayout) -> Option<Producer> {
        if !self.take_end(bit) {
            return None;
        }
        let (ctrl, data) = self.ring_ptrs(ring);
        // SAFETY: ctrl and data point into the mapping (128- and page-aligned, disjoint,
        // capacity a power of two >= 4096 per the layout), kept alive by the Arc handed
        // over; the bit makes this the ring's only producer in this process.
        Some(unsafe { Producer::from_raw(ctrl, data, ring.data_bytes, self.mapping.clone()) })
    }

    fn consumer(&self, bit: u8, ring: &RingLayout) -> Option<Consumer> {
        if !self.take_end(bit) {
            return None;
        }
        let (ctrl, data) = self.ring_ptrs(ring);
        // SAFETY: as in producer(); the bit makes this the ring's only consumer here.
        Some(unsafe { Consumer::from_raw(ctrl, data, ring.data_bytes, self.mapping.clone()) })
    }

    /// Client: the producer end of the submit ring; `None` after the first call.
    pub fn submit_producer(&self) -> Option<Producer> {
        self.producer(SUBMIT_PRODUCER, &self.layout.submit)
    }

    /// Engine: the consumer end of the submit ring; `None` after the first call.
    pub fn submit_consumer(&self) -> Option<Consumer> {
        self.consumer(SUBMIT_CONSUMER, &self.layout.submit)
    }

    /// Engine: the producer end of the event ring; `None` after the first call.
    pub fn event_producer(&self) -> Option<Producer> {
        self.producer(EVENT_PRODUCER, &self.layout.event)
    }

    /// Client: the consumer end of the event ring; `None` after the first call.
    pub fn event_consumer(&self) -> Option<Consumer> {
        self.consumer(EVENT_CONSUMER, &self.layout.event)
    }

    /// Size of the buffer pool in bytes.
    pub fn pool_len(&self) -> usize {
        self.layout.pool_bytes
    }

    /// The pool bytes `[offset, offset + len)`, or `None` if that range is not inside the
    /// pool. Offsets are relative to the pool start.
    ///
    /// The other process can modify these bytes at any time. The engine must treat them as
    /// untrusted payload: copying them (to a socket, into a datagram) is fine; anything that
    /// interprets them must copy first and validate the copy.
    pub fn pool_slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.layout.pool_bytes as u64 || self.pool_claimed() {
            return None;
        }
        // SAFETY: [pool_offset + offset, pool_offset + end) lies inside the pool, inside the
        // mapping, which lives as long as &self. The bytes may change under us when the peer
        // writes them (documented above); nothing in this process writes them while the
        // shared borrow of self lasts, since writing needs &mut self, or a claim of the
        // pool (checked above: then this gives no slices at all).
        Some(unsafe {
            std::slice::from_raw_parts(
                self.base().add(self.layout.pool_offset + offset as usize),
                len as usize,
            )
        })
    }

    /// Client side write access to a pool buffer it allocated (from a [`crate::PoolAllocator`]
    /// over [`pool_len`](Self::pool_len) bytes).
    ///
    /// Takes `&mut self` so that no other slice of this region's pool can be alive meanwhile
    /// (a shared `&self` version would let safe code create aliasing `&mut`s). Code that
    /// shares the region as `Arc<Region>` writes through a
    /// [`SendArea`](crate::send_area::SendArea).
    ///
    /// # Panics
    ///
    /// If `buf` does not lie inside the pool: it then came from an allocator over another
    /// size, a bug in the caller.
    pub fn pool_slice_mut(&mut self, buf: &PoolBuf) -> &mut [u8] {
        let (start, len) = self.pool_range(buf);
        // SAFETY: in bounds (pool_range), and &mut self rules out any other reference into
        // this mapping's pool from this Region for the returned lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.base().add(start), len) }
    }

    /// Makes the pool this process's writer's ([`crate::send_area`]): true for the first
    /// caller only, and from then on [`pool_slice`](Self::pool_slice) gives no slices, so
    /// that the writer's views of its buffers are the only ones in this process.
    pub fn claim_pool(&self) -> bool {
        self.take_end(POOL_WRITER)
    }

    fn pool_claimed(&self) -> bool {
        self.ends_taken.load(Ordering::Relaxed) & POOL_WRITER != 0
    }

    /// Where `buf` starts in this mapping, as a raw pointer, for the writer that claimed
    /// the pool ([`crate::send_area`]), which proves its exclusivity itself.
    ///
    /// # Panics
    ///
    /// As for [`pool_slice_mut`](Self::pool_slice_mut).
    pub(crate) fn pool_ptr(&self, buf: &PoolBuf) -> *mut u8 {
        let (start, _) = self.pool_range(buf);
        self.base().wrapping_add(start)
    }

    /// Region offset and length of `buf`.
    fn pool_range(&self, buf: &PoolBuf) -> (usize, usize) {
        let end = buf.offset().checked_add(buf.len());
        assert!(
            end.is_some_and(|end| end <= self.layout.pool_bytes as u64),
            "pool buffer {}+{} outside the {}-byte pool",
            buf.offset(),
            buf.len(),
            self.layout.pool_bytes
        );
        (
            self.layout.pool_offset + buf.offset() as usize,
            buf.len() as usize,
        )
    }

    /// Client: records its pid in the header (the engine may compare it with SO_PEERCRED).
    pub fn set_client_pid(&self, pid: u32) {
        self.header().client_pid.store(pid, Ordering::Relaxed);
    }

    /// The pid the client recorded, 0 until it has.
    pub fn client_pid(&self) -> u32 {
        self.header().client_pid.load(Ordering::Relaxed)
    }

    /// The pid of the engine process that created the region.
    pub fn engine_pid(&self) -> u32 {
        self.header().engine_pid.load(Ordering::Relaxed)
    }

    /// Engine: one more tick of its liveness counter.
    pub fn bump_heartbeat_engine(&self) {
        self.header()
            .engine_heartbeat
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The engine's liveness counter.
    pub fn heartbeat_engine(&self) -> u64 {
        self.header().engine_heartbeat.load(Ordering::Relaxed)
    }

    /// Client: one more tick of its liveness counter.
    pub fn bump_heartbeat_client(&self) {
        self.header()
            .client_heartbeat
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The client's liveness counter.
    pub fn heartbeat_client(&self) -> u64 {
        self.header().client_heartbeat.load(Ordering::Relaxed)
    }

    /// Engine: marks the session closed from its side.
    pub fn set_engine_closed(&self) {
        self.header().engine_closed.store(1, Ordering::Release);
    }

    /// Whether the engine has closed the session.
    pub fn engine_closed(&self) -> bool {
        self.header().engine_closed.load(Ordering::Acquire) != 0
    }

    /// Client: marks the session closed from its side.
    pub fn set_client_closed(&self) {
        self.header().client_closed.store(1, Ordering::Release);
    }

    /// Whether the client has closed the session.
    pub fn client_closed(&self) -> bool {
        self.header().client_closed.load(Ordering::Acquire) != 0
    }
}

/// Validates a header against `file_bytes` and returns the layout it describes.
fn parse_header(h: &RegionHeader, file_bytes: u64) -> Result<Layout, RegionError> {
    let magic = h.magic.load(Ordering::Acquire);
    if magic != MAGIC {
        return Err(RegionError::BadMagic {
            found: magic,
            expected: MAGIC,
        });
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != VERSION {
        return Err(RegionError::UnsupportedVersion {
            found: version,
            expected: VERSION,
        });
    }
    let r = Ordering::Relaxed;
    let mismatch = |field, found: u64, expected: u64| {
        if found == expected {
            Ok(())
        } else {
            Err(RegionError::HeaderMismatch {
                field,
                found,
                expected,
            })
        }
    };
    mismatch(
        "header_bytes",
        u64::from(h.header_bytes.load(r)),
        size_of::<RegionHeader>() as u64,
    )?;
    let huge_flag = h.huge_pages.load(r);
    if huge_flag > 1 {
        mismatch("huge_pages", u64::from(huge_flag), 1)?;
    }
    // Sizes beyond usize truncate here but then differ from the header below.
    let spec = RegionSpec {
        submit_ring_bytes: h.submit_data_bytes.load(r) as usize,
        event_ring_bytes: h.event_data_bytes.load(r) as usize,
        pool_bytes: h.pool_bytes.load(r) as usize,
    };
    let layout = Layout::new(&spec, huge_flag == 1)?;
    let l = &layout;
    for (field, found, expected) in [
        (
            "submit_data_bytes",
            &h.submit_data_bytes,
            l.submit.data_bytes,
        ),
        ("event_data_bytes", &h.event_data_bytes, l.event.data_bytes),
        ("pool_bytes", &h.pool_bytes, l.pool_bytes),
        (
            "submit_ctrl_offset",
            &h.submit_ctrl_offset,
            l.submit.ctrl_offset,
        ),
        (
            "submit_data_offset",
            &h.submit_data_offset,
            l.submit.data_offset,
        ),
        (
            "event_ctrl_offset",
            &h.event_ctrl_offset,
            l.event.ctrl_offset,
        ),
        (
            "event_data_offset",
            &h.event_data_offset,
            l.event.data_offset,
        ),
        ("pool_offset", &h.pool_offset, l.pool_offset),
        ("total_bytes", &h.total_bytes, l.total_bytes),
    ] {
        mismatch(field, found.load(r), expected as u64)?;
    }
    if (l.total_bytes as u64) > file_bytes {
        return Err(RegionError::FileTooSmall {
            file_bytes,
            needed_bytes: l.total_bytes as u64,
        });
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolAllocator;

    fn small_spec() -> RegionSpec {
        RegionSpec {
            submit_ring_bytes: 4096,
            event_ring_bytes: 8192,
            pool_bytes: 16384,
        }
    }

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        fd.try_clone_to_owned().unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn engine_and_client_mappings_share_rings_pool_and_header() {
        let engine = Region::create("test-share", &small_spec(), HugePages::Never).unwrap();
        assert!(!engine.huge_pages());
        assert_eq!(engine.len(), 4096 + 4096 + 8192 + 16384);
        assert_eq!(engine.engine_pid(), std::process::id());
        let mut client = Region::open(dup(engine.fd())).unwrap();
        assert_eq!(client.layout(), engine.layout());
        assert_eq!(client.pool_len(), 16384);

        // Each end once per region object.
        let mut submit_tx = client.submit_producer().unwrap();
        assert!(client.submit_producer().is_none());
        let mut submit_rx = engine.submit_consumer().unwrap();
        assert!(engine.submit_consumer().is_none());
        let mut event_tx = engine.event_producer().unwrap();
        let mut event_rx = client.event_consumer().unwrap();
        assert!(engine.event_producer().is_none());
        assert!(client.event_consumer().is_none());
        assert_eq!(submit_tx.capacity(), 4096);
        assert_eq!(event_tx.capacity(), 8192);

        // Zero-copy send: payload in the pool, descriptor on the submit ring.
        let mut pool = PoolAllocator::new(client.pool_len(), 1024);
        let buf = pool.alloc(1500).unwrap();
        client.pool_slice_mut(&buf).copy_from_slice(&[0xab; 1500]);
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&buf.offset().to_le_bytes());
        desc[8..].copy_from_slice(&buf.len().to_le_bytes());
        submit_tx.try_push(1, &[&desc]).unwrap();
        assert!(!submit_tx.publish());

        let rec = submit_rx.peek().unwrap().unwrap();
        let offset = u64::from_le_bytes(rec.payload[..8].try_into().unwrap());
        let len = u64::from_le_bytes(rec.payload[8..].try_into().unwrap());
        assert_eq!(engine.pool_slice(offset, len).unwrap(), &[0xab; 1500][..]);
        submit_rx.consume();

        event_tx.try_push(2, &[b"released"]).unwrap();
        assert!(!event_tx.publish());
        let rec = event_rx.peek().unwrap().unwrap();
        assert_eq!((rec.kind, rec.payload), (2, &b"released"[..]));
        event_rx.consume();
        pool.free(buf).unwrap();

        // Header fields written by one side are seen by the other.
        client.set_client_pid(4242);
        assert_eq!(engine.client_pid(), 4242);
        engine.bump_heartbeat_engine();
        engine.bump_heartbeat_engine();
        assert_eq!(client.heartbeat_engine(), 2);
        client.bump_heartbeat_client();
        assert_eq!(engine.heartbeat_client(), 1);
        assert!(!engine.client_closed() && !client.engine_closed());
        client.set_client_closed();
        engine.set_engine_closed();
        assert!(engine.client_closed() && client.engine_closed());

        // The ring ends keep the mapping alive after the regions are gone.
        drop(engine);
        drop(client);
        submit_tx.try_push(3, &[b"still mapped"]).unwrap();
        assert!(!submit_tx.publish());
        assert_eq!(submit_rx.peek().unwrap().unwrap().payload, b"still mapped");
    }

    #[test]
    fn ends_move_between_threads_and_regions_are_shared() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Producer>();
        send::<Consumer>();
        send_sync::<Region>();
        send_sync::<std::sync::Arc<Region>>();
        send_sync::<crate::EventFd>();
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn pool_slice_is_bounds_checked() {
        let region = Region::create("test-pool", &small_spec(), HugePages::Never).unwrap();
        assert_eq!(region.pool_slice(0, 16384).unwrap().len(), 16384);
        assert_eq!(region.pool_slice(16383, 1).unwrap().len(), 1);
        assert_eq!(region.pool_slice(16384, 0).unwrap().len(), 0);
        assert!(region.pool_slice(16384, 1).is_none());
        assert!(region.pool_slice(1, 16384).is_none());
        assert!(region.pool_slice(u64::MAX, 2).is_none());
        assert!(region.pool_slice(2, u64::MAX).is_none());
        let empty = Region::create(
            "test-nopool",
            &RegionSpec {
                pool_bytes: 0,
                ..small_spec()
            },
            HugePages::Never,
        )
        .unwrap();
        assert!(empty.pool_slice(0, 1).is_none());
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    #[should_panic(expected = "outside the")]
    fn pool_slice_mut_refuses_a_foreign_buffer() {
        let mut region = Region::create("test-foreign", &small_spec(), HugePages::Never).unwrap();
        let mut big = PoolAllocator::new(1 << 20, 4096);
        let buf = big.alloc(1 << 20).unwrap();
        region.pool_slice_mut(&buf);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn create_rejects_bad_specs_and_names() {
        let bad = RegionSpec {
            submit_ring_bytes: 5000,
            ..small_spec()
        };
        assert!(matches!(
            Region::create("x", &bad, HugePages::Never),
            Err(RegionError::InvalidRingSize { ring: "submit", .. })
        ));
        assert!(matches!(
            Region::create("a\0b", &small_spec(), HugePages::Never),
            Err(RegionError::InvalidName(_))
        ));
        let long = "n".repeat(250);
        assert!(matches!(
            Region::create(&long, &small_spec(), HugePages::Never),
            Err(RegionError::InvalidName(_))
        ));
    }

    /// A region whose header field `mutate` rewrites, reopened by a client.
    #[track_caller]
    fn open_tampered(mutate: impl FnOnce(&RegionHeader)) -> RegionError {
        let engine = Region::create("test-tamper", &small_spec(), HugePages::Never).unwrap();
        mutate(engine.header());
        Region::open(dup(engine.fd())).unwrap_err()
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn open_names_what_is_wrong_with_the_header() {
        let r = Ordering::Relaxed;
        let err = open_tampered(|h| h.magic.store(7, r));
        assert!(
            matches!(err, RegionError::BadMagic { found: 7, .. }),
            "{err}"
        );
        let err = open_tampered(|h| h.version.store(2, r));
        assert!(
            matches!(err, RegionError::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );
        let err = open_tampered(|h| h.header_bytes.store(100, r));
        assert!(err.to_string().contains("header_bytes"), "{err}");
        let err = open_tampered(|h| h.huge_pages.store(5, r));
        assert!(err.to_string().contains("huge_pages"), "{err}");
        let err = open_tampered(|h| h.event_data_offset.store(12288, r));
        assert!(err.to_string().contains("event_data_offset"), "{err}");
        let err = open_tampered(|h| h.pool_offset.store(0, r));
        assert!(err.to_string().contains("pool_offset"), "{err}");
        let err = open_tampered(|h| h.submit_ctrl_offset.store(0, r));
        assert!(err.to_string().contains("submit_ctrl_offset"), "{err}");
        let err = open_tampered(|h| h.total_bytes.store(1 << 40, r));
        assert!(err.to_string().contains("total_bytes"), "{err}");
        let err = open_tampered(|h| h.submit_data_bytes.store(3000, r));
        assert!(
            matches!(err, RegionError::InvalidRingSize { ring: "submit", .. }),
            "{err}"
        );
        // Consistent sizes describing more than the file holds.
        let err = open_tampered(|h| {
            h.pool_bytes.store(1 << 20, r);
            h.total_bytes.store(4096 + 4096 + 8192 + (1 << 20), r);
        });
        assert!(matches!(err, RegionError::FileTooSmall { .. }), "{err}");
        // A huge flag on a normal-page region: the 2 MiB total no longer matches.
        let err = open_tampered(|h| h.huge_pages.store(1, r));
        assert!(err.to_string().contains("total_bytes"), "{err}");
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn open_refuses_files_that_are_not_regions() {
        let tmp = std::env::temp_dir().join(format!("ringcast-shm-test-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .unwrap();
        std::fs::remove_file(&tmp).unwrap();
        file.set_len(100).unwrap();
        let err = Region::open(dup(file.as_fd())).unwrap_err();
        assert!(matches!(err, RegionError::FileTooSmall { .. }), "{err}");
        file.set_len(1 << 20).unwrap();
        // A regular file cannot carry seals.
        let err = Region::open(OwnedFd::from(file)).unwrap_err();
        assert!(matches!(err, RegionError::Seal(_)), "{err}");

        // An unsealed memfd full of zeros.
        // SAFETY: valid C string, plain flags.
        let raw =
            unsafe { libc::memfd_create(c"ringcast-test-unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let memfd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        memfd.set_len(1 << 20).unwrap();
        let err = Region::open(dup(memfd.as_fd())).unwrap_err();
        assert!(matches!(err, RegionError::NotSealed), "{err}");
        // Sealed but without a header.
        // SAFETY: F_ADD_SEALS with an int argument on our fd.
        let rc = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        // Without MFD_ALLOW_SEALING the memfd starts sealed with F_SEAL_SEAL.
        if rc == 0 {
            let err = Region::open(OwnedFd::from(memfd)).unwrap_err();
            assert!(
                matches!(err, RegionError::BadMagic { found: 0, .. }),
                "{err}"
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn shrinking_a_region_is_refused_by_the_kernel() {
        let region = Region::create("test-seal", &small_spec(), HugePages::Never).unwrap();
        let file = File::from(dup(region.fd()));
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(1 << 30).is_err());
        assert_eq!(file.metadata().unwrap().len(), region.len() as u64);
    }
}
