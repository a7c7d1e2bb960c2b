//! The rings under the loom model checker: `RUSTFLAGS="--cfg loom"`, run by
//! `scripts/loom.sh` (`make loom`). Normal builds do not compile this module.
//!
//! Loom runs each test body under every interleaving of its threads (up to a preemption
//! bound) and lets every atomic load return any value the C11 memory model allows, not
//! only the latest. Two things make the ring visible to it:
//!
//! - the control block (head, tail, sleep flag) is made of loom's atomics ([`ModelControl`]
//!   stands in for [`crate::layout::RingControl`]), and `fence` is loom's;
//! - every access of the ends to the data area (record headers and payloads) is reported
//!   to a loom `UnsafeCell` per 8-byte word, so a read or write the protocol does not order
//!   after the peer's conflicting access is reported as a data race ("causality violation").
//!
//! Each ordering in the ring that is stronger than `Relaxed` has a test here that fails
//! when that ordering is weakened (each test names the orderings it justifies). Orderings
//! on loads whose value only chooses between two paths that both re-load with the real
//! ordering are `Relaxed` in the ring and say so there.
//!
//! Loom does not explore load buffering (a load reading a store that comes later in its
//! own thread's future) and treats `SeqCst` accesses as `AcqRel`; `fence(SeqCst)` it
//! models fully, which is what the sleep protocol rests on.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU64};

/// The fields of [`crate::layout::RingControl`] the ends use, as loom atomics.
#[derive(Debug)]
pub(crate) struct ModelControl {
    pub head: AtomicU64,
    pub tail: AtomicU64,
    pub consumer_sleeping: AtomicU32,
}

/// A loom control block and one access tracker per 8-byte word of the data area.
#[derive(Debug)]
pub(crate) struct ModelRing {
    ctrl: ModelControl,
    words: Box<[UnsafeCell<()>]>,
}

impl ModelRing {
    /// An empty ring of `capacity` bytes; must be called inside `loom::model`.
    pub(crate) fn new(capacity: usize) -> ModelRing {
        ModelRing {
            ctrl: ModelControl {
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                consumer_sleeping: AtomicU32::new(0),
            },
            words: (0..capacity / 8).map(|_| UnsafeCell::new(())).collect(),
        }
    }

    pub(crate) fn ctrl(&self) -> &ModelControl {
        &self.ctrl
    }

    /// Reports an access to bytes `[index, index + len)` of the data area to loom.
    pub(crate) fn note_access(&self, index: usize, len: usize, write: bool) {
        for word in &self.words[index / 8..(index + len).div_ceil(8)] {
            if write {
                word.with_mut(|_| ());
            } else {
                word.with(|_| ());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::heap::HeapRing;
    use super::super::{Consumer, Producer, PushError};
    use loom::sync::Notify;
    use loom::thread;
    use std::sync::Arc;

    /// The smallest ring: the largest record (8 payload bytes, 16 ring bytes) is half of
    /// it, so three records already wrap and reuse space.
    const CAPACITY: usize = 32;

    fn ring() -> (Arc<HeapRing>, Producer, Consumer) {
        let heap = HeapRing::new(CAPACITY);
        let (p, c) = heap.ends();
        (heap, p, c)
    }

    /// Runs `body` under loom; `LOOM_MAX_PREEMPTIONS` overrides the default bound of 3,
    /// which keeps each test to seconds on this machine.
    fn check(body: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(body);
    }

    /// Pushes `kind` with `len` bytes of `kind as u8`, publishing; yields while full.
    fn push(p: &mut Producer, kind: u32, len: usize) -> bool {
        let mut woke = false;
        loop {
            match p.try_push_with(kind, len, |b| b.fill(kind as u8)) {
                Ok(()) => return p.publish() | woke,
                Err(PushError::Full) => {
                    woke |= p.publish();
                    thread::yield_now();
                }
                Err(PushError::TooBig) => unreachable!("test records fit"),
            }
        }
    }

    /// Takes the next record, yielding while the ring is empty; checks its contents.
    fn pop(c: &mut Consumer, kind: u32, len: usize) {
        loop {
            if let Some(rec) = c.peek().unwrap() {
                assert_eq!(rec.kind, kind);
                assert_eq!(rec.payload.len(), len);
                assert!(rec.payload.iter().all(|&b| b == kind as u8));
                c.consume();
                return;
            }
            thread::yield_now();
        }
    }

    /// A published record is seen whole: header and payload written before the tail.
    /// Justifies `publish`'s `Release` store of the tail and `peek`'s `Acquire` load of it
    /// (either one `Relaxed`: loom reports the consumer's header read racing the
    /// producer's write).
    #[test]
    fn a_published_record_is_seen_whole() {
        check(|| {
            let (_h, mut p, mut c) = ring();
            let producer = thread::spawn(move || {
                let _ = push(&mut p, 1, 8);
                let _ = push(&mut p, 2, 0);
            });
            pop(&mut c, 1, 8);
            pop(&mut c, 2, 0);
            producer.join().unwrap();
        });
    }

    /// The producer overwrites a record's bytes only after the consumer is done reading
    /// them. Justifies `consume`'s `Release` store of the head and `refresh_head`'s
    /// `Acquire` load of it (either one `Relaxed`: loom reports the producer's write of the
    /// third record racing the consumer's read of the first).
    #[test]
    fn space_is_reused_only_after_consume() {
        check(|| {
            let (_h, mut p, mut c) = ring();
            let producer = thread::spawn(move || {
                for kind in 1..=3 {
                    let _ = push(&mut p, kind, 8);
                }
            });
            for kind in 1..=3 {
                pop(&mut c, kind, 8);
            }
            producer.join().unwrap();
        });
    }

    /// Padding is released by `peek` as soon as it is skipped; the producer reuses its
    /// header word only after that. Records: A [0, 8), B [8, 24), padding [24, 32), C
    /// [0, 16), and D [16, 32), which needs exactly the padding's release (head 32).
    /// Justifies `peek`'s `Release` store of the head past padding (`Relaxed`: loom reports
    /// D's write racing the consumer's read of the padding header).
    #[test]
    fn padding_is_released_before_its_space_is_reused() {
        check(|| {
            let (_h, mut p, mut c) = ring();
            let producer = thread::spawn(move || {
                for (kind, len) in [(1, 0), (2, 8), (3, 8), (4, 8)] {
                    let _ = push(&mut p, kind, len);
                }
            });
            for (kind, len) in [(1, 0), (2, 8), (3, 8), (4, 8)] {
                pop(&mut c, kind, len);
            }
            producer.join().unwrap();
        });
    }

    /// The sleep protocol (module docs of the ring): a consumer that finds the ring empty
    /// and announces sleep is either told by `prepare_sleep` that records arrived, or woken
    /// by the `publish` that made them visible. Justifies the two `SeqCst` fences (either
    /// one removed or weakened to `AcqRel`: loom finds the consumer blocked while
    /// `publish` returned false, a lost wake-up).
    #[test]
    fn an_announced_sleep_is_never_missed() {
        check(|| {
            let (_h, mut p, mut c) = ring();
            let producer = thread::spawn(move || {
                p.try_push(1, &[]).unwrap();
                p.publish()
            });
            let blocks = c.peek().unwrap().is_none() && c.prepare_sleep();
            let woken = producer.join().unwrap();
            assert!(
                !blocks || woken,
                "lost wake-up: consumer blocks, nobody wakes it"
            );
        });
    }

    /// The engine's use of the protocol end to end: a producer publishing a stream and a
    /// consumer that sleeps on a wake-up whenever the ring is empty (loom's `Notify`
    /// stands in for the eventfd: it keeps one notification for a later wait). A lost
    /// wake-up leaves the consumer waiting forever, which loom reports as a deadlock.
    /// Also checks that `publish` answers an announcement at most once.
    #[test]
    fn a_sleeping_consumer_gets_every_record() {
        check(|| {
            let (_h, mut p, mut c) = ring();
            let wake = Arc::new(Notify::new());
            let waker = wake.clone();
            let producer = thread::spawn(move || {
                let mut wakes = 0;
                for kind in 1..=3 {
                    if push(&mut p, kind, 8) {
                        wakes += 1;
                        waker.notify();
                    }
                }
                wakes
            });
            let mut announcements = 0;
            let mut kind = 1;
            while kind <= 3 {
                if let Some(rec) = c.peek().unwrap() {
                    assert_eq!(rec.kind, kind);
                    c.consume();
                    kind += 1;
                } else {
                    // Counted even when withdrawn: publish may have answered it already.
                    announcements += 1;
                    if c.prepare_sleep() {
                        wake.wait();
                        c.cancel_sleep();
                    }
                }
            }
            let wakes = producer.join().unwrap();
            assert!(
                wakes <= announcements,
                "{wakes} wakes, {announcements} sleeps"
            );
        });
    }
}
