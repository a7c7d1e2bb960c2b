//! Single-producer single-consumer rings of variable-length records in shared memory.
//!
//! A ring is a [`RingControl`] (head, tail, sleep flag on separate cache lines) and a data
//! area of `capacity` bytes, a power of two. Records are an 8-byte header `{len: u32,
//! kind: u32}` (one native-endian u64, `len` in the low half) followed by `len` payload bytes,
//! padded to 8. A record never wraps: when it does not fit before the end of the data area
//! the producer first writes a padding record (kind [`PADDING_KIND`]) that fills the rest.
//!
//! Head and tail are byte positions that only grow; index = position & (capacity - 1).
//! The producer writes records past the tail, then publishes the new tail with `Release`;
//! the consumer loads the tail with `Acquire` and releases space by storing the head with
//! `Release`. A record therefore becomes visible whole or not at all, and a producer killed
//! mid-write leaves only unpublished bytes behind.
//!
//! Each end keeps its own index locally and never reads it back from shared memory (only the
//! peer's index, which it validates), so a peer scribbling over the control block or the data
//! area can at worst produce [`RingError::Corrupt`], never an access outside the ring.
//!
//! # Sleep protocol
//!
//! A consumer that finds the ring empty may block on a wake-up fd ([`crate::EventFd`]):
//!
//! ```text
//!   consumer                                producer
//!   prepare_sleep:                          publish:
//!     S_c  swap sleeping to 1 (Relaxed)       S_p  tail := t      (Release)
//!     F_c  fence(SeqCst)                      F_p  fence(SeqCst)
//!     L_c  load tail                          L_p  load sleeping; if 1, swap to 0
//!     if tail moved: sleeping := 0, retry             and return true (caller wakes)
//!     else block on the fd
//! ```
//!
//! This is Dekker's pattern. The two SeqCst fences are totally ordered. If F_p comes first,
//! L_c (after F_c) must observe S_p or a later tail, so the consumer sees the data and does
//! not block. If F_c comes first, L_p must observe S_c, so the producer sees the flag and
//! wakes the consumer. Both may happen (a spurious wake-up, harmless: the fd keeps the count
//! until drained); neither cannot, so no wake-up is lost. The swap makes at most one publish
//! per announcement report `true`.
//!
//! # Orderings
//!
//! Every ordering above `Relaxed` here is checked by a loom model test that fails when it
//! is weakened (`ring/model.rs`, run by `scripts/loom.sh`; `scripts/loom-mutants.py` weakens
//! each in turn): the tail's Release/Acquire pair (records are seen whole), the head's
//! Release/Acquire pair in `consume`, in `peek` past padding and in `refresh_head` (space is
//! reused only after the consumer is done), and the two SeqCst fences (no lost wake-up).
//! Every other access is `Relaxed` and says why that is enough.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
use std::sync::atomic::fence;

#[cfg(loom)]
use loom::sync::atomic::fence;

/// The control block the ends use: the one in shared memory, or under the model checker
/// ([`model`]) one made of loom's atomics, which loom can reorder.
#[cfg(not(loom))]
type Control = crate::layout::RingControl;
#[cfg(loom)]
type Control = model::ModelControl;

use crate::layout::RingControl;

#[cfg(loom)]
pub(crate) mod model;

/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 8;

/// Records start (and end) on multiples of this.
pub const RECORD_ALIGN: usize = 8;

/// Kind of a padding record, which the consumer skips. Producers may not use it.
pub const PADDING_KIND: u32 = u32::MAX;

/// Smallest capacity a ring end accepts (regions use at least 4096).
pub const MIN_CAPACITY: usize = 32;

/// One record, borrowed from the ring until [`Consumer::consume`].
///
/// `payload` points into shared memory. When the producer is untrusted (the engine reading a
/// client's submit ring) the peer can rewrite those bytes at any time: copy what you need
/// before validating it, and never validate-then-reread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Record kind chosen by the producer (never [`PADDING_KIND`]).
    pub kind: u32,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Why a push did not happen. Nothing was written in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Not enough free space now; retry after the consumer has consumed. Also returned once
    /// the consumer's head was found corrupt: [`Producer::check`] tells the two apart.
    #[error("ring full")]
    Full,
    /// The payload is longer than [`Producer::max_record_len`] and can never fit.
    #[error("record too big for the ring")]
    TooBig,
}

/// The peer broke the ring protocol; the end that saw it stays failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Indexes or a record header in shared memory are impossible; the text says which.
    #[error("ring corrupt: {0}")]
    Corrupt(&'static str),
}

/// Pointers to one ring's control block and data area, plus whatever keeps them mapped.
struct RingMem {
    ctrl: NonNull<RingControl>,
    data: NonNull<u8>,
    /// Power of two, at least [`MIN_CAPACITY`].
    capacity: usize,
    _owner: Arc<dyn Any + Send + Sync>,
    /// Under the model checker: the loom control block and the access tracker of the
    /// data area, owned by the heap ring that `_owner` is.
    #[cfg(loom)]
    model: Arc<heap::HeapRing>,
}

impl RingMem {
    /// # Safety
    ///
    /// `ctrl` must point to a `RingControl` and `data` to `capacity` bytes, both valid for
    /// reads and writes (by this process and possibly others) for as long as `owner` lives,
    /// `data` 8-byte aligned, and the two must not overlap.
    unsafe fn new(
        ctrl: NonNull<RingControl>,
        data: NonNull<u8>,
        capacity: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> RingMem {
        assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        assert!(data.as_ptr() as usize % RECORD_ALIGN == 0);
        RingMem {
            ctrl,
            data,
            capacity,
            #[cfg(loom)]
            model: owner
                .clone()
                .downcast::<heap::HeapRing>()
                .expect("under loom, rings live in a HeapRing"),
            _owner: owner,
        }
    }

    #[cfg(not(loom))]
    fn ctrl(&self) -> &Control {
        // SAFETY: valid for the owner's lifetime (constructor contract), which self holds;
        // RingControl is all atomics, so a shared reference tolerates concurrent writers.
        unsafe { self.ctrl.as_ref() }
    }

    #[cfg(loom)]
    fn ctrl(&self) -> &Control {
        let _ = self.ctrl;
        self.model.model_ctrl()
    }

    /// Tells the model checker that `len` bytes of the data area at `index` are read now
    /// (nothing outside it): a read the protocol does not order after the peer's write is
    /// a data race loom reports.
    #[inline(always)]
    fn note_read(&self, index: usize, len: usize) {
        #[cfg(loom)]
        self.model.note_access(index, len, false);
        #[cfg(not(loom))]
        let _ = (index, len);
    }

    /// As [`note_read`](Self::note_read), for a write.
    #[inline(always)]
    fn note_write(&self, index: usize, len: usize) {
        #[cfg(loom)]
        self.model.note_access(index, len, true);
        #[cfg(not(loom))]
        let _ = (index, len);
    }

    fn index(&self, position: u64) -> usize {
        (position as usize) & (self.capacity - 1)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        // Positions are kept 8-aligned by both ends; this assert is what keeps a broken
        // internal invariant from becoming an out-of-bounds access.
        assert!(index % RECORD_ALIGN == 0 && index + RECORD_HEADER_BYTES <= self.capacity);
        // SAFETY: in bounds and 8-aligned (assert above, data is 8-aligned), valid for the
        // owner's lifetime; record headers are only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.data.as_ptr().add(index).cast::<u64>()) }
    }
}

fn pack_header(len: u32, kind: u32) -> u64 {
    u64::from(len) | (u64::from(kind) << 32)
}

fn unpack_header(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// Ring bytes taken by a record with `len` payload bytes.
fn record_bytes(len: u64) -> u64 {
    RECORD_HEADER_BYTES as u64 + len.next_multiple_of(RECORD_ALIGN as u64)
}

/// The writing end of a ring. One per ring per process; `Send`, not `Sync`:
///
/// ```compile_fail,E0277
/// fn sync<T: Sync>() {}
/// sync::<ringcast_shm::Producer>();
/// ```
pub struct Producer {
    mem: RingMem,
    /// End of the records written so far (published or not); a multiple of 8,
    /// in `[published_tail, cached_head + capacity]`.
    tail: u64,
    /// Last tail stored to shared memory.
    published_tail: u64,
    /// Last consumer head read and found valid: in `[tail - capacity, published_tail]`.
    cached_head: u64,
    /// Set once the consumer's head was found impossible.
    failed: Option<&'static str>,
}

// SAFETY: the pointers target memory kept alive by the `Send + Sync` owner and are not tied
// to a thread; the producer role stays unique because Producer is not Clone nor Sync.
unsafe impl Send for Producer {}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.mem.capacity)
            .field("tail", &self.tail)
            .field("published_tail", &self.published_tail)
            .field("cached_head", &self.cached_head)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Producer {
    /// Takes the producer role of the ring at `ctrl`/`data`, starting from the indexes
    /// currently in the control block.
    ///
    /// # Safety
    ///
    /// As for the ring memory: `ctrl` points to a `RingControl` and `data` to `capacity`
    /// (power of two >= [`MIN_CAPACITY`]) 8-aligned bytes, not overlapping, valid for reads
    /// and writes while `owner` lives. No other `Producer` for this ring may exist in this
    /// process, and no other code in this process may access the data area except a
    /// `Consumer` of the same ring.
    pub(crate) unsafe fn from_raw(
        ctrl: NonNull<RingControl>,
        data: NonNull<u8>,
        capacity: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Producer {
        // SAFETY: forwarded from this function's contract.
        let mem = unsafe { RingMem::new(ctrl, data, capacity, owner) };
        // Relaxed: only the producer writes the tail, and whoever handed this process the
        // region synchronised with its creation (`Region::open` acquires the magic).
        let tail = mem.ctrl().tail.load(Ordering::Relaxed);
        let mut producer = Producer {
            mem,
            tail,
            published_tail: tail,
            cached_head: tail,
            failed: None,
        };
        if tail % RECORD_ALIGN as u64 != 0 {
            producer.failed = Some("tail is not 8-byte aligned");
        } else {
            producer.refresh_head();
        }
        producer
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.capacity
    }

    /// Largest payload that can ever be pushed: a record of half the ring always fits in an
    /// empty ring, whatever padding the wrap needs.
    pub fn max_record_len(&self) -> usize {
        self.mem.capacity / 2 - RECORD_HEADER_BYTES
    }

    /// Bytes not taken by unconsumed (or unpublished) records, per the consumer's current
    /// head; 0 once the ring is failed. A record needs `8 + len` rounded up to 8 of them,
    /// plus the rest of the data area when it would cross its end.
    pub fn free_bytes(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        // Relaxed: a number for the caller; a push reads the head again with Acquire
        // (refresh_head) before it reuses space.
        let head = self.mem.ctrl().head.load(Ordering::Relaxed);
        match self.head_error(head) {
            Some(_) => 0,
            None => self.mem.capacity - (self.tail - head) as usize,
        }
    }

    /// Writes one record of `len` payload bytes, filled by `write`, past the tail. It stays
    /// invisible to the consumer until [`publish`](Self::publish). If `write` panics nothing
    /// is pushed.
    ///
    /// # Panics
    ///
    /// If `kind` is [`PADDING_KIND`] (a bug in the caller, not bad input).
    pub fn try_push_with(
        &mut self,
        kind: u32,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), PushError> {
        assert_ne!(
            kind, PADDING_KIND,
            "record kind u32::MAX is reserved for padding"
        );
        if len > self.max_record_len() {
            return Err(PushError::TooBig);
        }
        if self.failed.is_some() {
            return Err(PushError::Full);
        }
        let capacity = self.mem.capacity;
        let size = record_bytes(len as u64) as usize;
        let index = self.mem.index(self.tail);
        let contiguous = capacity - index;
        let padding = if size > contiguous { contiguous } else { 0 };
        let needed = (padding + size) as u64;
        if needed > self.cached_free() {
            self.refresh_head();
            if self.failed.is_some() || needed > self.cached_free() {
                return Err(PushError::Full);
            }
        }
        let start = if padding > 0 { 0 } else { index };
        // SAFETY: start + 8 + len <= capacity (size <= contiguous, or size <= capacity / 2
        // at index 0); these bytes lie between the tail and cached_head + capacity, so the
        // consumer does not read them until we publish, and no other producer exists.
        let payload = unsafe {
            std::slice::from_raw_parts_mut(
                self.mem.data.as_ptr().add(start + RECORD_HEADER_BYTES),
                len,
            )
        };
        self.mem.note_write(start + RECORD_HEADER_BYTES, len);
        write(payload);
        // len <= capacity / 2 <= u32::MAX / 4 (layout const asserts, MIN/MAX ring sizes).
        self.mem.note_write(start, RECORD_HEADER_BYTES);
        self.mem
            .word(start)
            .store(pack_header(len as u32, kind), Ordering::Relaxed);
        if padding > 0 {
            let pad_len = (padding - RECORD_HEADER_BYTES) as u32;
            self.mem.note_write(index, RECORD_HEADER_BYTES);
            self.mem
                .word(index)
                .store(pack_header(pad_len, PADDING_KIND), Ordering::Relaxed);
        }
        self.tail += needed;
        Ok(())
    }

    /// Gather variant of [`try_push_with`](Self::try_push_with): the payload is the
    /// concatenation of `parts`.
    pub fn try_push(&mut self, kind: u32, parts: &[&[u8]]) -> Result<(), PushError> {
        let len = parts
            .iter()
            .try_fold(0usize, |sum, part| sum.checked_add(part.len()))
            .ok_or(PushError::TooBig)?;
        self.try_push_with(kind, len, |buf| {
            let mut at = 0;
            for part in parts {
                buf[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        })
    }

    /// Makes every record pushed so far visible to the consumer with one `Release` store.
    /// Returns true when the consumer had announced it is going to sleep: the flag is then
    /// cleared and the caller must wake the consumer (e.g. [`crate::EventFd::notify`]).
    #[must_use]
    pub fn publish(&mut self) -> bool {
        if self.tail == self.published_tail {
            return false;
        }
        let ctrl = self.mem.ctrl();
        ctrl.tail.store(self.tail, Ordering::Release);
        self.published_tail = self.tail;
        // F_p of the sleep protocol (module docs): orders the tail store before the flag load.
        fence(Ordering::SeqCst);
        if ctrl.consumer_sleeping.load(Ordering::Relaxed) == 0 {
            return false;
        }
        ctrl.consumer_sleeping.swap(0, Ordering::Relaxed) != 0
    }

    /// Re-reads the consumer's published head. A head outside `[tail - capacity, tail]` (or
    /// not 8-aligned) is corruption; the producer then stays failed and every push is `Full`.
    pub fn check(&mut self) -> Result<(), RingError> {
        if self.failed.is_none() {
            self.refresh_head();
        }
        match self.failed {
            Some(why) => Err(RingError::Corrupt(why)),
            None => Ok(()),
        }
    }

    fn cached_free(&self) -> u64 {
        self.mem.capacity as u64 - (self.tail - self.cached_head)
    }

    /// Ring position just past the last record written (published or not): a record
    /// pushed now ends here, and the consumer is done with it once
    /// [`consumed_upto`](Self::consumed_upto) reaches this position.
    pub fn written_upto(&self) -> u64 {
        self.tail
    }

    /// How far the consumer has consumed: every record ending at or before this position
    /// is done with. Never moves back; stays put once the ring is failed.
    pub fn consumed_upto(&mut self) -> u64 {
        if self.failed.is_none() {
            self.refresh_head();
        }
        self.cached_head
    }

    fn head_error(&self, head: u64) -> Option<&'static str> {
        if head > self.published_tail {
            Some("consumer head is ahead of the published tail")
        } else if self.tail - head > self.mem.capacity as u64 {
            Some("consumer head is more than the capacity behind the tail")
        } else if head % RECORD_ALIGN as u64 != 0 {
            Some("consumer head is not 8-byte aligned")
        } else {
            None
        }
    }

    fn refresh_head(&mut self) {
        // Acquire: the consumer's reads of the records it released happen before we reuse
        // their bytes.
        let head = self.mem.ctrl().head.load(Ordering::Acquire);
        match self.head_error(head) {
            Some(why) => self.failed = Some(why),
            None => self.cached_head = head,
        }
    }
}

/// The reading end of a ring. One per ring per process; `Send`, not `Sync`:
///
/// ```compile_fail,E0277
/// fn sync<T: Sync>() {}
/// sync::<ringcast_shm::Consumer>();
/// ```
pub struct Consumer {
    mem: RingMem,
    /// Position of the next record to read; a multiple of 8.
    head: u64,
    /// Last producer tail read and found valid: in `[head, head + capacity]`.
    cached_tail: u64,
    /// Ring bytes of the record the last peek returned, 0 if none.
    peeked: u64,
    /// Set once the ring was found corrupt.
    failed: Option<&'static str>,
}

// SAFETY: as for Producer: the pointers target memory kept alive by the `Send + Sync` owner,
// and the consumer role stays unique because Consumer is not Clone nor Sync.
unsafe impl Send for Consumer {}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.mem.capacity)
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Consumer {
    /// Takes the consumer role of the ring at `ctrl`/`data`, starting from the head
    /// currently in the control block.
    ///
    /// # Safety
    ///
    /// As for [`Producer::from_raw`], with "Consumer" and "Producer" swapped.
    pub(crate) unsafe fn from_raw(
        ctrl: NonNull<RingControl>,
        data: NonNull<u8>,
        capacity: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Consumer {
        // SAFETY: forwarded from this function's contract.
        let mem = unsafe { RingMem::new(ctrl, data, capacity, owner) };
        // Relaxed: as for the producer's tail in Producer::from_raw.
        let head = mem.ctrl().head.load(Ordering::Relaxed);
        let failed = (head % RECORD_ALIGN as u64 != 0).then_some("head is not 8-byte aligned");
        Consumer {
            mem,
            head,
            cached_tail: head,
            peeked: 0,
            failed,
        }
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.capacity
    }

    /// The next record, or `None` if nothing is published. Calling it again without
    /// [`consume`](Self::consume) returns the same record. Padding records are skipped.
    ///
    /// Validates everything it reads: the tail lies in `[head, head + capacity]` and is
    /// 8-aligned; the record fits in what is published and before the end of the data area
    /// and is no longer than a producer may write; padding fills exactly the rest of the data
    /// area. Anything else is `Err` and the consumer stays failed.
    pub fn peek(&mut self) -> Result<Option<Record<'_>>, RingError> {
        self.peeked = 0;
        if let Some(why) = self.failed {
            return Err(RingError::Corrupt(why));
        }
        let capacity = self.mem.capacity as u64;
        // At most one padding record precedes a real one: padding always reaches the end of
        // the data area, and padding at index 0 is refused.
        for _ in 0..2 {
            if self.head == self.cached_tail {
                // Acquire: pairs with the producer's Release, making the records visible.
                let tail = self.mem.ctrl().tail.load(Ordering::Acquire);
                if tail < self.head {
                    return Err(self.fail("tail is behind the head"));
                }
                if tail - self.head > capacity {
                    return Err(self.fail("tail is more than the capacity ahead of the head"));
                }
                if tail % RECORD_ALIGN as u64 != 0 {
                    return Err(self.fail("tail is not 8-byte aligned"));
                }
                self.cached_tail = tail;
                if tail == self.head {
                    return Ok(None);
                }
            }
            let available = self.cached_tail - self.head;
            let index = self.mem.index(self.head);
            // One load: the peer may rewrite the header, so it is read once and the local
            // copy is what gets checked and used.
            self.mem.note_read(index, RECORD_HEADER_BYTES);
            let (len, kind) = unpack_header(self.mem.word(index).load(Ordering::Relaxed));
            let size = record_bytes(u64::from(len));
            if size > available {
                return Err(self.fail("record is longer than the published data"));
            }
            if size > capacity - index as u64 {
                return Err(self.fail("record crosses the end of the data area"));
            }
            if kind == PADDING_KIND {
                if index == 0 {
                    return Err(self.fail("padding record at the start of the data area"));
                }
                if index as u64 + size != capacity {
                    return Err(self.fail("padding record does not reach the end of the data area"));
                }
                self.head += size;
                // Released now rather than at the next consume, so a producer waiting for
                // space sees it even if the ring then stays empty.
                self.mem.ctrl().head.store(self.head, Ordering::Release);
                continue;
            }
            if size > capacity / 2 {
                return Err(self.fail("record is longer than a producer may write"));
            }
            self.peeked = size;
            self.mem
                .note_read(index + RECORD_HEADER_BYTES, len as usize);
            // SAFETY: index + 8 + len <= capacity (checked above), inside the data area valid
            // for the owner's lifetime; the producer does not write these bytes until we
            // release them, and the borrow of self ends before consume() can.
            let payload = unsafe {
                std::slice::from_raw_parts(
                    self.mem.data.as_ptr().add(index + RECORD_HEADER_BYTES),
                    len as usize,
                )
            };
            return Ok(Some(Record { kind, payload }));
        }
        Err(self.fail("padding record follows a padding record"))
    }

    /// Releases the record returned by the last [`peek`](Self::peek) (one `Release` store
    /// of the head). Does nothing if that peek returned no record.
    pub fn consume(&mut self) {
        if self.peeked == 0 {
            return;
        }
        self.head += self.peeked;
        self.peeked = 0;
        self.mem.ctrl().head.store(self.head, Ordering::Release);
    }

    /// Announces that the caller is about to block on its wake-up fd, then re-checks the
    /// tail. Returns false (and withdraws the announcement) if records arrived meanwhile or
    /// the ring is failed, true if the caller may now block. After waking, or giving up,
    /// call [`cancel_sleep`](Self::cancel_sleep). See the module docs for the ordering.
    pub fn prepare_sleep(&mut self) -> bool {
        let ctrl = self.mem.ctrl();
        // The consumer writes the flag with swaps, not stores: the value read is not needed,
        // but a read-modify-write always follows the producer's last swap in the flag's
        // modification order, which the model checker (`ring/model.rs`) only knows for
        // writes that read. On x86-64 the swap is one `xchg`, as a `SeqCst` store is.
        // Relaxed: F_c orders it (sleep protocol in the module docs).
        ctrl.consumer_sleeping.swap(1, Ordering::Relaxed);
        // F_c of the sleep protocol: orders the flag store before the tail load.
        fence(Ordering::SeqCst);
        // Relaxed: the value only decides between sleeping and returning false; the caller
        // then peeks, which loads the tail again with Acquire.
        let tail = ctrl.tail.load(Ordering::Relaxed);
        if tail != self.head || self.failed.is_some() {
            ctrl.consumer_sleeping.swap(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Withdraws a sleep announcement (the producer may already have withdrawn it).
    pub fn cancel_sleep(&mut self) {
        // A swap for the model checker, as in prepare_sleep.
        self.mem.ctrl().consumer_sleeping.swap(0, Ordering::Relaxed);
    }

    /// Whether no record is published past the head. A failed ring is never empty, so that
    /// callers go on to [`peek`](Self::peek) and see the error.
    pub fn is_empty(&self) -> bool {
        // Relaxed: a false answer sends the caller to peek, which loads the tail with Acquire
        // before reading any record.
        self.failed.is_none() && self.mem.ctrl().tail.load(Ordering::Relaxed) == self.head
    }

    fn fail(&mut self, why: &'static str) -> RingError {
        self.failed = Some(why);
        RingError::Corrupt(why)
    }
}

/// A ring on the heap, for tests that must run without mmap (miri, loom).
#[cfg(any(test, loom))]
// Under loom only the ends and the model tests use it.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) mod heap {
    use super::*;
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::sync::atomic::AtomicBool;

    pub(crate) struct HeapRing {
        base: NonNull<u8>,
        layout: Layout,
        capacity: usize,
        ends_taken: AtomicBool,
        #[cfg(loom)]
        model: super::model::ModelRing,
    }

    // SAFETY: the allocation is only touched through atomics, the ring protocol, or the
    // atomic garbage-writing helpers below.
    unsafe impl Send for HeapRing {}
    // SAFETY: as above.
    unsafe impl Sync for HeapRing {}

    impl HeapRing {
        pub(crate) fn new(capacity: usize) -> Arc<HeapRing> {
            let ctrl_bytes = size_of::<RingControl>();
            let layout = Layout::from_size_align(ctrl_bytes + capacity, 128).unwrap();
            // SAFETY: the layout has a nonzero size.
            let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation");
            // SAFETY: base is valid for the layout and aligned for RingControl.
            unsafe {
                base.cast::<RingControl>()
                    .as_ptr()
                    .write(RingControl::new())
            };
            Arc::new(HeapRing {
                base,
                layout,
                capacity,
                ends_taken: AtomicBool::new(false),
                #[cfg(loom)]
                model: super::model::ModelRing::new(capacity),
            })
        }

        #[cfg(loom)]
        pub(crate) fn model_ctrl(&self) -> &super::Control {
            self.model.ctrl()
        }

        #[cfg(loom)]
        pub(crate) fn note_access(&self, index: usize, len: usize, write: bool) {
            self.model.note_access(index, len, write);
        }

        /// Both ends; panics when called twice on one ring.
        pub(crate) fn ends(self: &Arc<Self>) -> (Producer, Consumer) {
            assert!(!self.ends_taken.swap(true, Ordering::Relaxed));
            let data = self.data();
            let owner: Arc<dyn Any + Send + Sync> = self.clone();
            // SAFETY: the allocation holds a RingControl followed by `capacity` bytes, 128-
            // aligned, alive while the Arc is; ends are handed out once (assert above).
            unsafe {
                (
                    Producer::from_raw(self.base.cast(), data, self.capacity, owner.clone()),
                    Consumer::from_raw(self.base.cast(), data, self.capacity, owner),
                )
            }
        }

        pub(crate) fn ctrl(&self) -> &RingControl {
            // SAFETY: initialised in new(), all atomics, alive while self is.
            unsafe { self.base.cast::<RingControl>().as_ref() }
        }

        fn data(&self) -> NonNull<u8> {
            // SAFETY: in bounds of the allocation.
            unsafe { self.base.add(size_of::<RingControl>()) }
        }

        /// Address range of the data area.
        pub(crate) fn data_range(&self) -> std::ops::Range<usize> {
            let start = self.data().as_ptr() as usize;
            start..start + self.capacity
        }

        /// Overwrites the 8 bytes at `index` (8-aligned) of the data area, atomically so that
        /// miri sees no race with the ends.
        pub(crate) fn word(&self, index: usize) -> u64 {
            assert!(index % 8 == 0 && index + 8 <= self.capacity);
            // SAFETY: in bounds and aligned (assert); the ends access headers atomically.
            let word = unsafe { AtomicU64::from_ptr(self.data().as_ptr().add(index).cast()) };
            word.load(Ordering::Relaxed)
        }

        pub(crate) fn scribble(&self, index: usize, value: u64) {
            assert!(index % 8 == 0 && index + 8 <= self.capacity);
            // SAFETY: in bounds and aligned (assert); the ends read headers atomically.
            let word = unsafe { AtomicU64::from_ptr(self.data().as_ptr().add(index).cast()) };
            word.store(value, Ordering::Relaxed);
        }
    }

    impl Drop for HeapRing {
        fn drop(&mut self) {
            // SAFETY: allocated in new() with this layout; RingControl needs no drop.
            unsafe { dealloc(self.base.as_ptr(), self.layout) };
        }
    }
}

// Under miri (nightly-2026-05-19):
//   MIRIFLAGS=-Zmiri-disable-weak-memory-emulation cargo +nightly miri test -p ringcast-shm --lib
//   MIRIFLAGS=-Zmiri-many-seeds=0..16 cargo +nightly miri test -p ringcast-shm --lib sleep_protocol
// The first runs every test that needs no mmap; weak-memory emulation is off there because it
// ICEs ("cannot have empty store buffer when previous write was atomic") when a record header
// is stored atomically over bytes an earlier lap wrote as payload, which the memory model
// allows (the accesses are ordered by the head/tail Release/Acquire pairs). The second keeps
// the emulation on for the sleep protocol, whose test touches the data area only atomically;
// removing the SeqCst fence from `publish` makes it fail there.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::heap::HeapRing;
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn ring(capacity: usize) -> (Arc<HeapRing>, Producer, Consumer) {
        let heap = HeapRing::new(capacity);
        let (p, c) = heap.ends();
        (heap, p, c)
    }

    fn pop(c: &mut Consumer) -> Option<(u32, Vec<u8>)> {
        let rec = c.peek().unwrap()?;
        let out = (rec.kind, rec.payload.to_vec());
        c.consume();
        Some(out)
    }

    #[test]
    fn records_arrive_in_order_with_kind_and_payload() {
        let (_h, mut p, mut c) = ring(256);
        assert!(c.is_empty());
        assert_eq!(c.peek().unwrap(), None);
        p.try_push(7, &[b"hello"]).unwrap();
        p.try_push(8, &[b"ab", b"", b"cde"]).unwrap();
        p.try_push_with(9, 3, |b| b.copy_from_slice(b"xyz"))
            .unwrap();
        p.try_push(10, &[]).unwrap();
        assert!(!p.publish());
        assert!(!c.is_empty());
        // Peek is idempotent until consume.
        assert_eq!(c.peek().unwrap().unwrap().payload, b"hello");
        assert_eq!(pop(&mut c), Some((7, b"hello".to_vec())));
        assert_eq!(pop(&mut c), Some((8, b"abcde".to_vec())));
        assert_eq!(pop(&mut c), Some((9, b"xyz".to_vec())));
        assert_eq!(pop(&mut c), Some((10, vec![])));
        assert_eq!(pop(&mut c), None);
        assert!(c.is_empty());
        // consume without a peeked record is a no-op.
        c.consume();
        assert_eq!(h_head(&_h), 16 + 16 + 16 + 8);
    }

    fn h_head(h: &HeapRing) -> u64 {
        h.ctrl().head.load(Ordering::Relaxed)
    }

    #[test]
    fn batch_becomes_visible_on_publish_only() {
        let (h, mut p, mut c) = ring(256);
        for i in 0..3u32 {
            p.try_push(i, &[&i.to_le_bytes()]).unwrap();
        }
        assert_eq!(c.peek().unwrap(), None);
        assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), 0);
        assert!(!p.publish());
        assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), 3 * 16);
        for i in 0..3u32 {
            assert_eq!(pop(&mut c), Some((i, i.to_le_bytes().to_vec())));
        }
        assert_eq!(pop(&mut c), None);
        // Publishing with nothing new is a no-op that does not report a wake-up.
        assert!(!p.publish());
    }

    /// The producer learns which of its records the consumer is done with (how a client
    /// knows a buffer a record names is its own again).
    #[test]
    fn the_producer_sees_how_far_the_consumer_got() {
        let (_h, mut p, mut c) = ring(256);
        let mut ends = Vec::new();
        for i in 0..3u32 {
            p.try_push(i, &[&[0u8; 20]]).unwrap();
            ends.push(p.written_upto());
        }
        assert_eq!(ends, vec![32, 64, 96]);
        assert_eq!(p.consumed_upto(), 0);
        assert!(!p.publish(), "nobody sleeps");
        assert_eq!(p.consumed_upto(), 0, "published is not consumed");
        assert!(pop(&mut c).is_some());
        assert_eq!(p.consumed_upto(), ends[0]);
        assert!(pop(&mut c).is_some());
        assert!(pop(&mut c).is_some());
        assert_eq!(p.consumed_upto(), ends[2]);
    }

    #[test]
    fn record_that_does_not_fit_before_the_end_wraps_after_padding() {
        let (h, mut p, mut c) = ring(64);
        // 8 + 24 = 32 bytes at [0, 32).
        p.try_push(1, &[&[1; 24]]).unwrap();
        assert!(!p.publish());
        assert_eq!(pop(&mut c).unwrap().0, 1);
        // 8 + 16 = 24 bytes at [32, 56).
        p.try_push(2, &[&[2; 16]]).unwrap();
        // 8 + 9 -> 24 bytes: only 8 left before the end, so 8 bytes of padding, then [0, 24).
        p.try_push(3, &[&[3; 9]]).unwrap();
        assert!(!p.publish());
        assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), 32 + 24 + 8 + 24);
        assert_eq!(pop(&mut c), Some((2, vec![2; 16])));
        assert_eq!(pop(&mut c), Some((3, vec![3; 9])));
        assert_eq!(pop(&mut c), None);
        assert_eq!(h_head(&h), 88);
        // The padding record filled [56, 64).
        assert_eq!(h.word(56), pack_header(0, PADDING_KIND));
        assert_eq!(h.word(0), pack_header(9, 3));
    }

    #[test]
    fn exact_fit_at_the_end_needs_no_padding() {
        let (h, mut p, mut c) = ring(64);
        p.try_push(1, &[&[0; 24]]).unwrap();
        p.try_push(2, &[&[0; 24]]).unwrap();
        assert!(!p.publish());
        assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), 64);
        assert_eq!(p.free_bytes(), 0);
        assert_eq!(pop(&mut c).unwrap().0, 1);
        assert_eq!(pop(&mut c).unwrap().0, 2);
        p.try_push(3, &[&[0; 24]]).unwrap();
        assert!(!p.publish());
        assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), 96);
        assert_eq!(pop(&mut c).unwrap().0, 3);
    }

    #[test]
    fn too_big_is_refused_and_the_largest_record_always_fits() {
        let (_h, mut p, mut c) = ring(128);
        let max = p.max_record_len();
        assert_eq!(max, 56);
        assert_eq!(p.try_push(1, &[&vec![0; max + 1]]), Err(PushError::TooBig));
        assert_eq!(
            p.try_push_with(1, usize::MAX, |_| unreachable!()),
            Err(PushError::TooBig)
        );
        // From every 8-byte offset of an empty ring, a max-size record fits.
        for step in 0..16u32 {
            p.try_push(step, &[&vec![step as u8; max]]).unwrap();
            assert!(!p.publish());
            assert_eq!(pop(&mut c), Some((step, vec![step as u8; max])));
            p.try_push(100, &[]).unwrap();
            assert!(!p.publish());
            assert_eq!(pop(&mut c).unwrap().0, 100);
        }
    }

    #[test]
    fn full_until_the_consumer_releases_space() {
        let (_h, mut p, mut c) = ring(64);
        for i in 0..4 {
            p.try_push(i, &[&[0; 8]]).unwrap();
        }
        assert_eq!(p.free_bytes(), 0);
        assert_eq!(p.try_push(9, &[]), Err(PushError::Full));
        assert!(!p.publish());
        assert_eq!(p.try_push(9, &[]), Err(PushError::Full));
        assert_eq!(pop(&mut c).unwrap().0, 0);
        assert_eq!(p.free_bytes(), 16);
        // 16 free bytes but they are at the start while the tail is at the end: a 16-byte
        // record needs no padding here (index 0).
        p.try_push(9, &[&[0; 8]]).unwrap();
        assert_eq!(p.try_push(10, &[]), Err(PushError::Full));
        assert!(p.check().is_ok());
    }

    #[test]
    fn publish_reports_a_sleeping_consumer_once() {
        let (h, mut p, mut c) = ring(64);
        assert!(c.prepare_sleep());
        assert_eq!(h.ctrl().consumer_sleeping.load(Ordering::Relaxed), 1);
        p.try_push(1, &[]).unwrap();
        assert!(
            p.publish(),
            "consumer announced sleep: producer must wake it"
        );
        assert_eq!(h.ctrl().consumer_sleeping.load(Ordering::Relaxed), 0);
        p.try_push(2, &[]).unwrap();
        assert!(!p.publish(), "announcement already answered");
        c.cancel_sleep();
        // Data present: no sleeping.
        assert!(!c.prepare_sleep());
        assert_eq!(h.ctrl().consumer_sleeping.load(Ordering::Relaxed), 0);
        assert_eq!(pop(&mut c).unwrap().0, 1);
        assert!(!c.prepare_sleep());
        assert_eq!(pop(&mut c).unwrap().0, 2);
        assert!(c.prepare_sleep());
        c.cancel_sleep();
        p.try_push(3, &[]).unwrap();
        assert!(!p.publish(), "announcement withdrawn");
    }

    #[test]
    fn peeked_but_unconsumed_record_keeps_the_consumer_awake() {
        let (_h, mut p, mut c) = ring(64);
        p.try_push(1, &[]).unwrap();
        assert!(!p.publish());
        assert!(c.peek().unwrap().is_some());
        assert!(!c.prepare_sleep());
        assert!(!c.is_empty());
    }

    #[test]
    #[should_panic(expected = "reserved for padding")]
    fn padding_kind_is_reserved() {
        let (_h, mut p, _c) = ring(64);
        let _ = p.try_push(PADDING_KIND, &[]);
    }

    fn corrupt_tail(tail: u64, setup: impl FnOnce(&mut Producer, &mut Consumer)) -> RingError {
        let (h, mut p, mut c) = ring(64);
        setup(&mut p, &mut c);
        h.ctrl().tail.store(tail, Ordering::Relaxed);
        let err = c.peek().unwrap_err();
        // Sticky, and the consumer is neither empty nor ready to sleep.
        h.ctrl().tail.store(c.head, Ordering::Relaxed);
        assert_eq!(c.peek().unwrap_err(), err);
        assert!(!c.is_empty());
        assert!(!c.prepare_sleep());
        err
    }

    #[test]
    fn impossible_tails_are_corruption() {
        let RingError::Corrupt(why) = corrupt_tail(65, |_, _| {});
        assert!(why.contains("capacity"), "{why}");
        let RingError::Corrupt(why) = corrupt_tail(12, |_, _| {});
        assert!(why.contains("aligned"), "{why}");
        let RingError::Corrupt(why) = corrupt_tail(u64::MAX, |_, _| {});
        assert!(why.contains("capacity"), "{why}");
        let RingError::Corrupt(why) = corrupt_tail(8, |p, c| {
            p.try_push(1, &[&[0; 8]]).unwrap();
            assert!(!p.publish());
            pop(c).unwrap();
        });
        assert!(why.contains("behind"), "{why}");
    }

    fn corrupt_header_error(
        capacity: usize,
        setup: impl FnOnce(&mut Producer, &mut Consumer),
        index: usize,
        word: u64,
    ) -> &'static str {
        let (h, mut p, mut c) = ring(capacity);
        setup(&mut p, &mut c);
        assert!(!p.publish());
        h.scribble(index, word);
        let RingError::Corrupt(why) = c.peek().unwrap_err();
        why
    }

    #[test]
    fn garbage_record_headers_are_corruption() {
        let one_record = |p: &mut Producer, _: &mut Consumer| p.try_push(1, &[&[0; 8]]).unwrap();
        for (word, expect) in [
            (pack_header(9, 1), "longer than the published"),
            (pack_header(u32::MAX - 3, 1), "longer than the published"),
            (
                pack_header(u32::MAX, PADDING_KIND),
                "longer than the published",
            ),
            (pack_header(56, PADDING_KIND), "longer than the published"),
            (pack_header(8, PADDING_KIND), "padding record at the start"),
        ] {
            let why = corrupt_header_error(64, one_record, 0, word);
            assert!(why.contains(expect), "{word:#x}: {why}");
        }
        // Padding that stops short of the end of the data area.
        let why = corrupt_header_error(
            64,
            |p, c| {
                p.try_push(1, &[&[0; 8]]).unwrap();
                assert!(!p.publish());
                pop(c).unwrap();
                p.try_push(2, &[&[0; 8]]).unwrap();
            },
            16,
            pack_header(0, PADDING_KIND),
        );
        assert!(why.contains("reach the end"), "{why}");
        // A record crossing the end of the data area.
        let why = corrupt_header_error(
            64,
            |p, c| {
                p.try_push(1, &[&[0; 24]]).unwrap();
                assert!(!p.publish());
                pop(c).unwrap();
                p.try_push(2, &[&[0; 16]]).unwrap(); // [32, 56)
                assert!(!p.publish());
                pop(c).unwrap();
                p.try_push(3, &[&[0; 16]]).unwrap(); // pads [56, 64), lands at [0, 24)
            },
            56,
            pack_header(24, 1),
        );
        assert!(why.contains("crosses the end"), "{why}");
        // A record longer than any producer may write, although published.
        let why = corrupt_header_error(
            128,
            |p, _| {
                p.try_push(1, &[&[0; 56]]).unwrap();
                p.try_push(2, &[&[0; 8]]).unwrap();
            },
            0,
            pack_header(64, 1),
        );
        assert!(why.contains("longer than a producer"), "{why}");
    }

    #[test]
    fn impossible_heads_fail_the_producer() {
        for (head, expect) in [
            (24, "ahead"),
            (u64::MAX, "ahead"),
            (3, "aligned"),
            (1000, "ahead"),
        ] {
            let (h, mut p, _c) = ring(64);
            p.try_push(1, &[&[0; 8]]).unwrap();
            assert!(!p.publish());
            assert!(p.check().is_ok());
            h.ctrl().head.store(head, Ordering::Relaxed);
            let RingError::Corrupt(why) = p.check().unwrap_err();
            assert!(why.contains(expect), "{head}: {why}");
            assert_eq!(p.try_push(1, &[]), Err(PushError::Full));
            assert_eq!(p.free_bytes(), 0);
            // Sticky even when the head is put back.
            h.ctrl().head.store(0, Ordering::Relaxed);
            assert!(p.check().is_err());
        }
        // Head more than the capacity behind the tail.
        let (h, mut p, mut c) = ring(64);
        for round in 0..3 {
            p.try_push(round, &[&[0; 24]]).unwrap();
            assert!(!p.publish());
            pop(&mut c).unwrap();
        }
        h.ctrl().head.store(0, Ordering::Relaxed);
        let RingError::Corrupt(why) = p.check().unwrap_err();
        assert!(why.contains("behind"), "{why}");
    }

    #[test]
    fn misaligned_starting_indexes_fail_the_ends() {
        let heap = HeapRing::new(64);
        heap.ctrl().head.store(4, Ordering::Relaxed);
        heap.ctrl().tail.store(4, Ordering::Relaxed);
        let (mut p, mut c) = heap.ends();
        assert!(p.check().is_err());
        assert!(c.peek().is_err());
    }

    /// The sleep protocol (module docs) loses no wake-up: the consumer blocks in
    /// `thread::park` whenever `prepare_sleep` allows it, and is only ever unparked by a
    /// `publish` that returned true. A lost wake-up is a deadlock, which miri reports; natively
    /// it shows as a park that ran into its (long) timeout.
    ///
    /// Payloads are empty so that the data area is only ever accessed by 8-byte atomics: this
    /// test also runs under miri's weak-memory emulation, which (on nightly-2026-05-19) ICEs
    /// when an atomic store lands on bytes a payload copy wrote before.
    #[test]
    fn sleep_protocol_loses_no_wakeups() {
        let count: u32 = if cfg!(miri) { 150 } else { 100_000 };
        let (_h, mut p, mut c) = ring(64);
        let consumer = std::thread::spawn(move || {
            let mut next = 0u32;
            let mut announcements = 0u32;
            while next < count {
                match c.peek().unwrap() {
                    Some(rec) => {
                        assert_eq!((rec.kind, rec.payload.len()), (next, 0));
                        c.consume();
                        next += 1;
                    }
                    None => {
                        announcements += 1;
                        if c.prepare_sleep() {
                            if cfg!(miri) {
                                std::thread::park();
                            } else {
                                let started = std::time::Instant::now();
                                std::thread::park_timeout(std::time::Duration::from_secs(20));
                                assert!(
                                    started.elapsed() < std::time::Duration::from_secs(20),
                                    "lost wake-up at record {next}"
                                );
                            }
                            c.cancel_sleep();
                        }
                    }
                }
            }
            announcements
        });
        let consumer_thread = consumer.thread().clone();
        let mut wakes = 0u32;
        for i in 0..count {
            let mut spins = 0u64;
            while p.try_push(i, &[]) == Err(PushError::Full) {
                if p.publish() {
                    wakes += 1;
                    consumer_thread.unpark();
                }
                spins += 1;
                // A lost wake-up with a full ring leaves the producer here.
                let max_spins = if cfg!(miri) { 10_000 } else { 100_000_000 };
                assert!(
                    spins < max_spins,
                    "consumer stuck at record {i}: lost wake-up?"
                );
                std::thread::yield_now();
            }
            if i % 2 == 0 && p.publish() {
                wakes += 1;
                consumer_thread.unpark();
            }
        }
        if p.publish() {
            wakes += 1;
            consumer_thread.unpark();
        }
        let announcements = consumer.join().unwrap();
        // The producer's swap answers each announcement at most once (the consumer may also
        // withdraw one itself when data arrived in between).
        assert!(
            wakes <= announcements,
            "{wakes} wakes for {announcements} announcements"
        );
    }

    #[test]
    fn threads_pass_records_through_a_small_ring() {
        // Runs under miri too: checks the Release/Acquire pairing for data races.
        let count: u32 = if cfg!(miri) { 300 } else { 100_000 };
        let (_h, mut p, mut c) = ring(128);
        let producer = std::thread::spawn(move || {
            for i in 0..count {
                let len = (i % 41) as usize;
                let mut spins = 0u64;
                loop {
                    match p.try_push_with(i, len, |b| b.fill(i as u8)) {
                        Ok(()) => break,
                        Err(PushError::Full) => {
                            let _ = p.publish();
                            spins += 1;
                            assert!(spins < 100_000_000, "consumer stuck");
                            std::thread::yield_now();
                        }
                        Err(PushError::TooBig) => unreachable!("len <= 40 < 56"),
                    }
                }
                if i % 3 == 0 {
                    let _ = p.publish();
                }
            }
            let _ = p.publish();
        });
        let mut spins = 0u64;
        let mut next = 0u32;
        while next < count {
            match c.peek().unwrap() {
                Some(rec) => {
                    assert_eq!(rec.kind, next);
                    assert_eq!(rec.payload.len(), (next % 41) as usize);
                    assert!(rec.payload.iter().all(|&b| b == next as u8));
                    c.consume();
                    next += 1;
                }
                None => {
                    spins += 1;
                    assert!(spins < 100_000_000, "producer stuck");
                    std::thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(c.peek().unwrap(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { kind: u32, len: usize },
        Publish,
        Peek,
        Consume,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..1000, prop_oneof![0usize..40, 0usize..130]).prop_map(|(kind, len)| Op::Push { kind, len }),
            2 => Just(Op::Publish),
            2 => Just(Op::Peek),
            3 => Just(Op::Consume),
        ]
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: if cfg!(miri) { 3 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// The ring as positions only: what a push must cost and when it must be refused.
    struct Model {
        capacity: u64,
        /// The consumer's released head: padding is released when a peek skips it.
        head: u64,
        tail: u64,
        published: VecDeque<Entry>,
        pending: VecDeque<Entry>,
    }

    struct Entry {
        kind: u32,
        payload: Vec<u8>,
        padding: u64,
        size: u64,
    }

    impl Model {
        fn peek(&mut self) -> Option<(u32, Vec<u8>)> {
            let front = self.published.front_mut()?;
            self.head += front.padding;
            front.padding = 0;
            Some((front.kind, front.payload.clone()))
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn ring_matches_a_vecdeque_model(ops in proptest::collection::vec(op(), 1..300)) {
            let capacity = 128u64;
            let (h, mut p, mut c) = ring(capacity as usize);
            let mut m = Model {
                capacity,
                head: 0,
                tail: 0,
                published: VecDeque::new(),
                pending: VecDeque::new(),
            };
            let mut seq = 0u8;
            for op in ops {
                match op {
                    Op::Push { kind, len } => {
                        seq = seq.wrapping_add(1);
                        let payload: Vec<u8> = (0..len).map(|i| seq.wrapping_add(i as u8)).collect();
                        let result = p.try_push(kind, &[&payload]);
                        let size = 8 + (len as u64).next_multiple_of(8);
                        let index = m.tail % m.capacity;
                        let padding = if size > m.capacity - index { m.capacity - index } else { 0 };
                        let expected = if len > 56 {
                            Err(PushError::TooBig)
                        } else if padding + size > m.capacity - (m.tail - m.head) {
                            Err(PushError::Full)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(result, expected);
                        if result.is_ok() {
                            m.tail += padding + size;
                            m.pending.push_back(Entry { kind, payload, padding, size });
                        }
                    }
                    Op::Publish => {
                        prop_assert!(!p.publish());
                        m.published.extend(m.pending.drain(..));
                        prop_assert_eq!(h.ctrl().tail.load(Ordering::Relaxed), m.tail);
                    }
                    Op::Peek => {
                        let got = c.peek().unwrap().map(|r| (r.kind, r.payload.to_vec()));
                        prop_assert_eq!(got, m.peek());
                    }
                    Op::Consume => {
                        let got = c.peek().unwrap().map(|r| (r.kind, r.payload.to_vec()));
                        c.consume();
                        prop_assert_eq!(got.clone(), m.peek());
                        if got.is_some() {
                            let front = m.published.pop_front().unwrap();
                            m.head += front.size;
                        }
                    }
                }
                prop_assert_eq!(c.is_empty(), m.published.is_empty());
                prop_assert_eq!(h.ctrl().head.load(Ordering::Relaxed), m.head);
                prop_assert_eq!(p.free_bytes() as u64, m.capacity - (m.tail - m.head));
                prop_assert!(p.check().is_ok());
            }
        }

        #[test]
        fn garbage_never_panics_nor_escapes_the_data_area(
            steps in proptest::collection::vec(
                (0usize..60, any::<u64>(), 0u8..8, 0usize..60),
                1..120,
            )
        ) {
            let capacity = 256usize;
            let (h, mut p, mut c) = ring(capacity);
            let data = h.data_range();
            for (n, value, what, len) in steps {
                match what {
                    0 => h.ctrl().tail.store(value % 1024, Ordering::Relaxed),
                    1 => h.ctrl().head.store(value % 1024, Ordering::Relaxed),
                    2 => h.scribble((n * 8) % capacity, value),
                    3 => h.scribble((n * 8) % capacity, (value % 512) | (value & (0xffff_ffff << 32))),
                    4 => { let _ = p.try_push(n as u32, &[&vec![7; len]]); }
                    5 => { let _ = p.publish(); let _ = p.check(); let _ = p.free_bytes(); }
                    _ => {
                        if let Ok(Some(rec)) = c.peek() {
                            let start = rec.payload.as_ptr() as usize;
                            prop_assert!(data.start + 8 <= start);
                            prop_assert!(start + rec.payload.len() <= data.end);
                            prop_assert!(rec.payload.len() <= capacity / 2 - 8);
                        }
                        c.consume();
                        let _ = c.is_empty();
                        if c.prepare_sleep() { c.cancel_sleep(); }
                    }
                }
            }
        }
    }
}
