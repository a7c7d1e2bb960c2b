//! The byte layout of a region: a versioned ABI shared by the engine and its clients.
//!
//! Everything both processes may write concurrently is an atomic (the header and ring
//! control blocks are made of nothing else, padding included), so references to them stay
//! sound whatever the peer does. Only ring payloads and the pool are plain bytes.

use std::mem::{align_of, offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::region::RegionError;

/// `b"RCASTSHM"` read as a little-endian u64: the first eight bytes of every region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RCASTSHM");

/// Layout version. Bump on any change to [`RegionHeader`], [`RingControl`], the record
/// format or the placement rules of [`Layout::new`]; a peer with another version is refused.
pub const VERSION: u32 = 1;

/// Normal page size the layout is built on (x86-64 and aarch64 4K kernels).
pub const PAGE_BYTES: usize = 4096;

/// Huge page size used with `MFD_HUGETLB` (`MFD_HUGE_2MB` is requested explicitly).
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Distance kept between fields written by different sides. 128 rather than 64 because
/// Intel's adjacent-line prefetcher pulls cache lines in pairs.
pub const CACHE_LINE_BYTES: usize = 128;

/// Smallest ring data area [`RegionSpec::validate`] accepts.
pub const MIN_RING_BYTES: usize = 4096;

/// Largest ring data area: keeps record lengths far inside `u32`.
pub const MAX_RING_BYTES: usize = 1 << 30;

/// Largest pool; a sanity bound so a hostile header cannot make a peer map terabytes.
pub const MAX_POOL_BYTES: usize = 64 << 30;

/// Granularity of the pool size (and alignment of its start).
pub const POOL_ALIGN_BYTES: usize = PAGE_BYTES;

/// Offset of [`RegionHeader`] in the region.
pub const HEADER_OFFSET: usize = 0;

/// Offset of the submit ring's [`RingControl`].
pub const SUBMIT_CTRL_OFFSET: usize = HEADER_OFFSET + size_of::<RegionHeader>();

/// Offset of the event ring's [`RingControl`].
pub const EVENT_CTRL_OFFSET: usize = SUBMIT_CTRL_OFFSET + size_of::<RingControl>();

/// Offset of the first ring data area: the header and both control blocks share page 0.
pub const DATA_OFFSET: usize = PAGE_BYTES;

/// What a region holds; the engine chooses it (from its configuration) per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    /// Submit ring data area (client → engine): a power of two in
    /// [`MIN_RING_BYTES`, `MAX_RING_BYTES`].
    pub submit_ring_bytes: usize,
    /// Event ring data area (engine → client): a power of two in
    /// [`MIN_RING_BYTES`, `MAX_RING_BYTES`].
    pub event_ring_bytes: usize,
    /// Buffer pool: a multiple of [`POOL_ALIGN_BYTES`], at most [`MAX_POOL_BYTES`], may be 0.
    pub pool_bytes: usize,
}

impl Default for RegionSpec {
    fn default() -> Self {
        RegionSpec {
            submit_ring_bytes: 1 << 20,
            event_ring_bytes: 8 << 20,
            pool_bytes: 16 << 20,
        }
    }
}

impl RegionSpec {
    /// Checks the size rules documented on the fields.
    pub fn validate(&self) -> Result<(), RegionError> {
        for (ring, bytes) in [
            ("submit", self.submit_ring_bytes),
            ("event", self.event_ring_bytes),
        ] {
            if !bytes.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&bytes) {
                return Err(RegionError::InvalidRingSize {
                    ring,
                    bytes: bytes as u64,
                });
            }
        }
        if self.pool_bytes % POOL_ALIGN_BYTES != 0 || self.pool_bytes > MAX_POOL_BYTES {
            return Err(RegionError::InvalidPoolSize {
                bytes: self.pool_bytes as u64,
            });
        }
        Ok(())
    }
}

/// Where one ring lives in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of its [`RingControl`].
    pub ctrl_offset: usize,
    /// Offset of its data area (page aligned).
    pub data_offset: usize,
    /// Size of its data area: the ring capacity, a power of two.
    pub data_bytes: usize,
}

/// Offsets and sizes of everything in a region, computed from a [`RegionSpec`].
///
/// Each side keeps its own `Layout` and never re-reads offsets from shared memory after
/// creation (engine) or validation (client), so a peer rewriting the header changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Page size the region is built from: [`PAGE_BYTES`] or [`HUGE_PAGE_BYTES`].
    pub page_bytes: usize,
    /// Offset of the [`RegionHeader`] (always [`HEADER_OFFSET`]).
    pub header_offset: usize,
    /// `size_of::<RegionHeader>()`.
    pub header_bytes: usize,
    /// The submit ring (client produces, engine consumes).
    pub submit: RingLayout,
    /// The event ring (engine produces, client consumes).
    pub event: RingLayout,
    /// Offset of the buffer pool (page aligned).
    pub pool_offset: usize,
    /// Size of the buffer pool (may be 0).
    pub pool_bytes: usize,
    /// Size of the region: everything above rounded up to `page_bytes`.
    pub total_bytes: usize,
}

impl Layout {
    /// Places the pieces of `spec`: header and both ring control blocks in page 0, then the
    /// submit data area, the event data area and the pool, back to back (each page aligned
    /// because ring sizes are powers of two >= 4096 and the pool starts after them).
    pub fn new(spec: &RegionSpec, huge_pages: bool) -> Result<Layout, RegionError> {
        spec.validate()?;
        let page_bytes = if huge_pages {
            HUGE_PAGE_BYTES
        } else {
            PAGE_BYTES
        };
        let submit = RingLayout {
            ctrl_offset: SUBMIT_CTRL_OFFSET,
            data_offset: DATA_OFFSET,
            data_bytes: spec.submit_ring_bytes,
        };
        let event = RingLayout {
            ctrl_offset: EVENT_CTRL_OFFSET,
            data_offset: submit.data_offset + submit.data_bytes,
            data_bytes: spec.event_ring_bytes,
        };
        let pool_offset = event.data_offset + event.data_bytes;
        // Cannot overflow: validate() bounds the sum far below usize::MAX on 64-bit targets.
        let end = pool_offset + spec.pool_bytes;
        let total_bytes = end.next_multiple_of(page_bytes);
        Ok(Layout {
            page_bytes,
            header_offset: HEADER_OFFSET,
            header_bytes: size_of::<RegionHeader>(),
            submit,
            event,
            pool_offset,
            pool_bytes: spec.pool_bytes,
            total_bytes,
        })
    }

    /// The spec this layout was built from.
    pub fn spec(&self) -> RegionSpec {
        RegionSpec {
            submit_ring_bytes: self.submit.data_bytes,
            event_ring_bytes: self.event.data_bytes,
            pool_bytes: self.pool_bytes,
        }
    }

    /// Whether the region is built from huge pages.
    pub fn huge_pages(&self) -> bool {
        self.page_bytes == HUGE_PAGE_BYTES
    }
}

/// The header at offset 0 of every region (layout [`VERSION`] 1).
///
/// ```text
///  offset                       size        what
///  0x0000  +------------------+
///          | RegionHeader     |  384        line 0: descriptor (magic, version, sizes,
///          |                  |             offsets), written once by the engine
///          |                  |             line 1: engine pid, closed, heartbeat
///          |                  |             line 2: client pid, closed, heartbeat
///  0x0180  +------------------+
///          | RingControl      |  384        submit ring: head | tail | consumer_sleeping,
///          |  (submit)        |             one 128-byte line each
///  0x0300  +------------------+
///          | RingControl      |  384        event ring
///          |  (event)         |
///  0x0480  +------------------+
///          | unused           |             rest of page 0
///  0x1000  +------------------+
///          | submit data      |  S          client → engine records, S = 2^k >= 4096
///  +S      +------------------+
///          | event data       |  E          engine → client records, E = 2^k >= 4096
///  +S+E    +------------------+
///          | pool             |  P          client-written payload buffers, P = 4096 n
///          +------------------+
///          | unused           |             up to the page size (4 KiB or 2 MiB)
///  total   +------------------+
///
///  record in a data area (8-byte aligned, never wraps):
///          +-----------+------------+---------------------+---------+
///          | len: u32  | kind: u32  | payload (len bytes) | pad to 8|
///          +-----------+------------+---------------------+---------+
///  kind u32::MAX is a padding record that fills the data area up to its end.
/// ```
///
/// Line 0 is written by the engine before the fd leaves it and never changes; the client
/// validates it once in [`crate::Region::open`]. Lines 1 and 2 each have one writer. All
/// integers are native-endian: both processes run on one host.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RegionHeader {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// `size_of::<RegionHeader>()`.
    pub header_bytes: AtomicU32,
    /// [`Layout::total_bytes`].
    pub total_bytes: AtomicU64,
    /// 1 when the region is hugetlb-backed (page size [`HUGE_PAGE_BYTES`]), else 0.
    pub huge_pages: AtomicU32,
    /// Zero.
    pub reserved0: AtomicU32,
    /// [`RingLayout::ctrl_offset`] of the submit ring.
    pub submit_ctrl_offset: AtomicU64,
    /// [`RingLayout::data_offset`] of the submit ring.
    pub submit_data_offset: AtomicU64,
    /// [`RingLayout::data_bytes`] of the submit ring.
    pub submit_data_bytes: AtomicU64,
    /// [`RingLayout::ctrl_offset`] of the event ring.
    pub event_ctrl_offset: AtomicU64,
    /// [`RingLayout::data_offset`] of the event ring.
    pub event_data_offset: AtomicU64,
    /// [`RingLayout::data_bytes`] of the event ring.
    pub event_data_bytes: AtomicU64,
    /// [`Layout::pool_offset`].
    pub pool_offset: AtomicU64,
    /// [`Layout::pool_bytes`].
    pub pool_bytes: AtomicU64,
    pad_descriptor: [AtomicU64; 4],

    /// Process id of the engine (written by the engine).
    pub engine_pid: AtomicU32,
    /// Nonzero once the engine has closed the session.
    pub engine_closed: AtomicU32,
    /// Bumped by the engine while it is alive.
    pub engine_heartbeat: AtomicU64,
    pad_engine: [AtomicU64; 14],

    /// Process id of the client (written by the client after mapping).
    pub client_pid: AtomicU32,
    /// Nonzero once the client has closed the session.
    pub client_closed: AtomicU32,
    /// Bumped by the client while it is alive.
    pub client_heartbeat: AtomicU64,
    pad_client: [AtomicU64; 14],
}

/// Control block of one ring: each index on its own pair of cache lines.
///
/// `head` and `tail` are byte positions that only grow (index = position & (capacity - 1));
/// `head` is written only by the consumer, `tail` only by the producer, and
/// `consumer_sleeping` is set by the consumer and cleared by whichever side sees it first.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RingControl {
    /// Position of the next record the consumer will read; in `[tail - capacity, tail]`.
    pub head: AtomicU64,
    pad_head: [AtomicU64; 15],
    /// Position after the last published record; a multiple of 8.
    pub tail: AtomicU64,
    pad_tail: [AtomicU64; 15],
    /// 1 while the consumer has announced it may block on its wake-up fd.
    pub consumer_sleeping: AtomicU32,
    pad_sleeping_u32: AtomicU32,
    pad_sleeping: [AtomicU64; 15],
}

impl RingControl {
    /// An all-zero control block (an empty ring), for rings outside a region (tests).
    pub fn new() -> RingControl {
        RingControl {
            head: AtomicU64::new(0),
            pad_head: Default::default(),
            tail: AtomicU64::new(0),
            pad_tail: Default::default(),
            consumer_sleeping: AtomicU32::new(0),
            pad_sleeping_u32: AtomicU32::new(0),
            pad_sleeping: Default::default(),
        }
    }
}

impl Default for RingControl {
    fn default() -> Self {
        RingControl::new()
    }
}

// The ABI, asserted: changing any of these is a VERSION bump.
const _: () = {
    assert!(size_of::<RegionHeader>() == 3 * CACHE_LINE_BYTES);
    assert!(align_of::<RegionHeader>() == CACHE_LINE_BYTES);
    assert!(offset_of!(RegionHeader, magic) == 0);
    assert!(offset_of!(RegionHeader, version) == 8);
    assert!(offset_of!(RegionHeader, header_bytes) == 12);
    assert!(offset_of!(RegionHeader, total_bytes) == 16);
    assert!(offset_of!(RegionHeader, huge_pages) == 24);
    assert!(offset_of!(RegionHeader, submit_ctrl_offset) == 32);
    assert!(offset_of!(RegionHeader, submit_data_offset) == 40);
    assert!(offset_of!(RegionHeader, submit_data_bytes) == 48);
    assert!(offset_of!(RegionHeader, event_ctrl_offset) == 56);
    assert!(offset_of!(RegionHeader, event_data_offset) == 64);
    assert!(offset_of!(RegionHeader, event_data_bytes) == 72);
    assert!(offset_of!(RegionHeader, pool_offset) == 80);
    assert!(offset_of!(RegionHeader, pool_bytes) == 88);
    assert!(offset_of!(RegionHeader, engine_pid) == CACHE_LINE_BYTES);
    assert!(offset_of!(RegionHeader, engine_closed) == CACHE_LINE_BYTES + 4);
    assert!(offset_of!(RegionHeader, engine_heartbeat) == CACHE_LINE_BYTES + 8);
    assert!(offset_of!(RegionHeader, client_pid) == 2 * CACHE_LINE_BYTES);
    assert!(offset_of!(RegionHeader, client_closed) == 2 * CACHE_LINE_BYTES + 4);
    assert!(offset_of!(RegionHeader, client_heartbeat) == 2 * CACHE_LINE_BYTES + 8);

    assert!(size_of::<RingControl>() == 3 * CACHE_LINE_BYTES);
    assert!(align_of::<RingControl>() == CACHE_LINE_BYTES);
    assert!(offset_of!(RingControl, head) == 0);
    assert!(offset_of!(RingControl, tail) == CACHE_LINE_BYTES);
    assert!(offset_of!(RingControl, consumer_sleeping) == 2 * CACHE_LINE_BYTES);

    assert!(SUBMIT_CTRL_OFFSET == 0x180);
    assert!(EVENT_CTRL_OFFSET == 0x300);
    assert!(SUBMIT_CTRL_OFFSET % CACHE_LINE_BYTES == 0);
    assert!(EVENT_CTRL_OFFSET % CACHE_LINE_BYTES == 0);
    assert!(EVENT_CTRL_OFFSET + size_of::<RingControl>() <= DATA_OFFSET);
    assert!(DATA_OFFSET % PAGE_BYTES == 0);
    assert!(HUGE_PAGE_BYTES % PAGE_BYTES == 0);
    assert!(MIN_RING_BYTES.is_power_of_two() && MIN_RING_BYTES >= PAGE_BYTES);
    assert!(MAX_RING_BYTES.is_power_of_two() && MAX_RING_BYTES <= u32::MAX as usize / 2);
    assert!(MAX_POOL_BYTES % POOL_ALIGN_BYTES == 0);
    // The largest region still fits comfortably in usize and u64 arithmetic.
    assert!(DATA_OFFSET + 2 * MAX_RING_BYTES + MAX_POOL_BYTES + HUGE_PAGE_BYTES < (1 << 40));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_and_laid_out_in_order() {
        let spec = RegionSpec::default();
        assert_eq!(spec.submit_ring_bytes, 1 << 20);
        assert_eq!(spec.event_ring_bytes, 8 << 20);
        assert_eq!(spec.pool_bytes, 16 << 20);
        let layout = Layout::new(&spec, false).unwrap();
        assert_eq!(layout.submit.data_offset, 4096);
        assert_eq!(layout.event.data_offset, 4096 + (1 << 20));
        assert_eq!(layout.pool_offset, 4096 + (9 << 20));
        assert_eq!(layout.total_bytes, 4096 + (25 << 20));
        assert_eq!(layout.spec(), spec);
        assert!(!layout.huge_pages());
    }

    #[test]
    fn huge_layout_rounds_total_to_2mib() {
        let spec = RegionSpec::default();
        let layout = Layout::new(&spec, true).unwrap();
        assert_eq!(layout.total_bytes, 26 << 20);
        assert!(layout.huge_pages());
        // The offsets do not depend on the page size; only the total does.
        let normal = Layout::new(&spec, false).unwrap();
        assert_eq!(layout.pool_offset, normal.pool_offset);
    }

    #[test]
    fn pieces_do_not_overlap_and_stay_aligned() {
        for (s, e, p) in [
            (4096, 4096, 0),
            (8192, 1 << 20, 4096),
            (1 << 30, 4096, 12288),
        ] {
            let spec = RegionSpec {
                submit_ring_bytes: s,
                event_ring_bytes: e,
                pool_bytes: p,
            };
            for huge in [false, true] {
                let l = Layout::new(&spec, huge).unwrap();
                assert!(l.header_offset + l.header_bytes <= l.submit.ctrl_offset);
                assert!(l.submit.ctrl_offset + size_of::<RingControl>() <= l.event.ctrl_offset);
                assert!(l.event.ctrl_offset + size_of::<RingControl>() <= l.submit.data_offset);
                assert!(l.submit.data_offset + s <= l.event.data_offset);
                assert!(l.event.data_offset + e <= l.pool_offset);
                assert!(l.pool_offset + p <= l.total_bytes);
                assert!(l.total_bytes % l.page_bytes == 0);
                for off in [l.submit.data_offset, l.event.data_offset, l.pool_offset] {
                    assert!(off % PAGE_BYTES == 0);
                }
            }
        }
    }

    #[test]
    fn spec_validation_rejects_each_bad_size() {
        let ok = RegionSpec::default();
        let cases = [
            RegionSpec {
                submit_ring_bytes: 3000,
                ..ok
            },
            RegionSpec {
                submit_ring_bytes: 2048,
                ..ok
            },
            RegionSpec {
                submit_ring_bytes: 2 << 30,
                ..ok
            },
            RegionSpec {
                event_ring_bytes: 12288,
                ..ok
            },
            RegionSpec {
                event_ring_bytes: 0,
                ..ok
            },
        ];
        for spec in cases {
            assert!(
                matches!(spec.validate(), Err(RegionError::InvalidRingSize { .. })),
                "{spec:?}"
            );
            assert!(Layout::new(&spec, false).is_err());
        }
        for pool_bytes in [1, 4095, 4097, MAX_POOL_BYTES + 4096] {
            let spec = RegionSpec { pool_bytes, ..ok };
            assert!(
                matches!(spec.validate(), Err(RegionError::InvalidPoolSize { .. })),
                "{spec:?}"
            );
        }
        let empty_pool = RegionSpec {
            pool_bytes: 0,
            ..ok
        };
        assert!(empty_pool.validate().is_ok());
        let err = RegionSpec {
            event_ring_bytes: 12288,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("event"), "{err}");
    }

    #[test]
    fn magic_spells_its_name() {
        assert_eq!(&MAGIC.to_le_bytes(), b"RCASTSHM");
    }
}
