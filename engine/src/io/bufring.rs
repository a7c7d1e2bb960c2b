//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the kernel picks a
//! free buffer for each datagram a multishot receive completes, and the engine hands
//! the buffer back once it copied the datagram out.
//!
//! ```text
//!  ring (entries × 16 B, page-aligned)        buffers (entries × buf_bytes)
//!  +----------------------------------+       +-----------+-----------+-- - -
//!  | addr u64 | len u32 | bid u16 |tail|  -->  | bid 0     | bid 1     |
//!  | addr u64 | len u32 | bid u16 |    |       +-----------+-----------+-- - -
//!  |  ...                              |
//!  +----------------------------------+
//! ```
//!
//! The tail (a u16 overlaying the `resv` field of entry 0) is the only field the engine
//! publishes with release ordering; the kernel consumes entries from its own head.
//! Invariant: a buffer id is either owned by the kernel (in the ring) or by the engine
//! (handed out in a completion, until [`BufRing::recycle`]).
//!
//! A buffer id may instead point at a buffer of the delivery pool
//! ([`BufRing::attach`]): the kernel then receives the datagram straight into memory
//! local clients read, and the engine can keep it (its `Bytes` holds the pool buffer)
//! and attach a fresh one before recycling the id. The attached buffer's handle is its
//! only holder while the kernel owns the id, so nothing reads it while it is written.

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use memmap2::{MmapMut, MmapOptions};
use ringcast_shm::delivery_pool::PoolBuffer;

const ENTRY_BYTES: usize = size_of::<BufRingEntry>();
const _: () = assert!(ENTRY_BYTES == 16);
/// Offset of the tail within the ring (entry 0's `resv`).
const TAIL_OFFSET: usize = 14;
const HUGE_PAGE_BYTES: usize = 2 << 20;

pub struct BufRing {
    /// The entries the kernel reads.
    ring: MmapMut,
    /// The buffers the kernel writes into.
    bufs: MmapMut,
    entries: u16,
    buf_bytes: usize,
    group: u16,
    /// The next tail to publish.
    tail: u16,
    /// Whether `bufs` is backed by huge pages.
    huge: bool,
    /// Per id: a delivery pool buffer used instead of the id's slot in `bufs`.
    attached: Vec<Option<PoolBuffer>>,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("entries", &self.entries)
            .field("buf_bytes", &self.buf_bytes)
            .field("huge", &self.huge)
            .finish_non_exhaustive()
    }
}

impl BufRing {
    /// `entries` must be a power of two ≤ 32768. With `huge_pages`, the buffers are
    /// mapped from 2 MiB huge pages when the host has some reserved, else (with a
    /// warning from the caller, see [`BufRing::is_huge`]) from normal pages.
    pub fn new(
        entries: u16,
        buf_bytes: usize,
        group: u16,
        huge_pages: bool,
    ) -> std::io::Result<BufRing> {
        assert!(
            entries.is_power_of_two() && entries <= 32768,
            "buffer ring entries"
        );
        assert!(buf_bytes > 0 && buf_bytes <= u32::MAX as usize);
        let ring = MmapOptions::new()
            .len(usize::from(entries) * ENTRY_BYTES)
            .map_anon()?;
        let bytes = usize::from(entries) * buf_bytes;
        let (bufs, huge) = if huge_pages {
            let rounded = bytes.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
            match MmapOptions::new().len(rounded).huge(None).map_anon() {
                Ok(map) => (map, true),
                Err(_) => (MmapOptions::new().len(bytes).map_anon()?, false),
            }
        } else {
            (MmapOptions::new().len(bytes).map_anon()?, false)
        };
        let mut ring = BufRing {
            ring,
            bufs,
            entries,
            buf_bytes,
            group,
            tail: 0,
            huge,
            attached: (0..entries).map(|_| None).collect(),
        };
        for bid in 0..entries {
            ring.write_entry(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn is_huge(&self) -> bool {
        self.huge
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Registers the ring with `submitter`'s io_uring.
    ///
    /// The owner must keep `self` alive (and unmoved mappings — they are heap mappings,
    /// moving `BufRing` does not move them) until the io_uring is dropped or the group
    /// unregistered: the engine declares its `IoUring` before its `BufRing`, so the ring
    /// is torn down first.
    pub fn register(&self, submitter: &io_uring::Submitter<'_>) -> std::io::Result<()> {
        // SAFETY: the ring memory is page-aligned (mmap), `entries` entries long, and
        // outlives the registration per the contract above.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.group,
                0,
            )
        }
    }

    /// Writes the entry at the tail for buffer `bid` (not yet visible to the kernel).
    fn write_entry(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        let addr = match &mut self.attached[usize::from(bid)] {
            Some(buffer) => buffer.as_mut_ptr() as u64,
            None => self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_bytes as u64,
        };
        let entry = &mut self.ring[index * ENTRY_BYTES..index * ENTRY_BYTES + TAIL_OFFSET];
        entry[0..8].copy_from_slice(&addr.to_ne_bytes());
        entry[8..12].copy_from_slice(&(self.buf_bytes as u32).to_ne_bytes());
        entry[12..14].copy_from_slice(&bid.to_ne_bytes());
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        let tail = self
            .ring
            .as_mut_ptr()
            .wrapping_add(TAIL_OFFSET)
            .cast::<AtomicU16>();
        // SAFETY: offset 14 of the page-aligned ring is 2-byte aligned and inside the
        // mapping, which lives as long as `self`; the kernel only reads it, and this is
        // the only writer. AtomicU16 has the layout of u16.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// [`BufRing::buf_mut`], to read.
    pub fn buf(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > self.buf_bytes {
            return None;
        }
        let start = usize::from(bid) * self.buf_bytes;
        Some(&self.bufs[start..start + len])
    }

    /// The first `len` bytes of buffer `bid` (not attached), which a completion handed
    /// to the engine. `None` for an id or length the kernel cannot have produced.
    pub fn buf_mut(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        if bid >= self.entries || len > self.buf_bytes {
            return None;
        }
        debug_assert!(self.attached[usize::from(bid)].is_none());
        let start = usize::from(bid) * self.buf_bytes;
        Some(&mut self.bufs[start..start + len])
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        debug_assert!(
            self.attached[usize::from(bid)]
                .as_ref()
                .is_none_or(PoolBuffer::is_unique),
            "an attached buffer is read elsewhere while the kernel owns it"
        );
        self.write_entry(bid);
        self.publish();
    }

    /// The delivery pool buffer that id `bid` (handed to the engine by a completion)
    /// received into, if any: the id falls back to its own buffer unless another is
    /// attached before it is recycled.
    pub fn take_attached(&mut self, bid: u16) -> Option<PoolBuffer> {
        self.attached.get_mut(usize::from(bid))?.take()
    }

    /// Attaches a buffer from `alloc` (while it gives some) to every id. Only before any
    /// receive using this ring was submitted: the kernel has taken no entry yet, so the
    /// entries can be written again with the new addresses.
    pub fn attach_all_before_use(&mut self, mut alloc: impl FnMut() -> Option<PoolBuffer>) {
        self.tail = self.tail.wrapping_sub(self.entries);
        for bid in 0..self.entries {
            if let Some(buffer) = alloc() {
                assert!(buffer.len() >= self.buf_bytes, "attached buffer too short");
                self.attached[usize::from(bid)] = Some(buffer);
            }
            self.write_entry(bid);
        }
        self.publish();
    }

    pub fn has_attached(&self, bid: u16) -> bool {
        self.attached
            .get(usize::from(bid))
            .is_some_and(Option::is_some)
    }

    /// Makes id `bid` (owned by the engine) receive into `buffer` from its next
    /// recycle on. `buffer` must be at least `buf_bytes` long and held by nothing else.
    pub fn attach(&mut self, bid: u16, buffer: PoolBuffer) {
        assert!(buffer.len() >= self.buf_bytes, "attached buffer too short");
        debug_assert!(buffer.is_unique());
        if let Some(slot) = self.attached.get_mut(usize::from(bid)) {
            *slot = Some(buffer);
        }
    }
}
