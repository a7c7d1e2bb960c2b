//! Which buffers of the delivery pool hold which payload, and who still reads them.
//!
//! A delivery of at least `min_bytes` is copied into the pool once, however many local
//! receivers it has; each receiver gets a descriptor and hands it back (`RELEASE`). A
//! buffer returns to the allocator when its last reader released it. When the pool is
//! full, or a receiver already pins its share of it, deliveries go inline as before:
//! a slow reader costs copies, never progress.

use std::collections::HashMap;

use bytes::Bytes;
use ringcast_shm::{DeliveryPool, PoolAllocator, PoolBuf};

/// Allocation granularity: deliveries placed here are at least a few KiB.
const BLOCK_BYTES: usize = 4096;

#[derive(Debug)]
pub struct SharedPool {
    pool: DeliveryPool,
    alloc: PoolAllocator,
    /// Live buffers by offset: the buffer and how many descriptors name it.
    refs: HashMap<u64, (PoolBuf, u32)>,
    min_bytes: usize,
    /// Most pool bytes one session may hold at once.
    per_session_max: usize,
    /// The payload placed last and where: its other receivers' events follow it
    /// directly, and share the copy. Holding the `Bytes` keeps its address from being
    /// reused by another payload while this entry lives.
    last: Option<(Bytes, u64)>,
    pub stats: PoolStats,
}

#[derive(Copy, Clone, Debug, Default)]
pub struct PoolStats {
    /// Payloads copied into the pool.
    pub placed: u64,
    /// Descriptors handed to receivers (placed + shared copies).
    pub descriptors: u64,
    /// Deliveries that would have gone to the pool but went inline (pool full or the
    /// receiver over its share).
    pub inline_fallbacks: u64,
}

impl SharedPool {
    pub fn new(pool: DeliveryPool, min_bytes: usize) -> SharedPool {
        let len = pool.len();
        SharedPool {
            alloc: PoolAllocator::new(len, BLOCK_BYTES),
            pool,
            refs: HashMap::new(),
            min_bytes: min_bytes.max(1),
            per_session_max: len / 4,
            last: None,
            stats: PoolStats::default(),
        }
    }

    pub fn pool(&self) -> &DeliveryPool {
        &self.pool
    }

    /// Whether a payload of `len` bytes should travel by descriptor.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// A descriptor offset for `payload`, for a receiver that already holds
    /// `session_bytes` of the pool: the copy made for the previous receiver of the same
    /// payload, or a new one. `None`: deliver it inline.
    pub fn place(&mut self, payload: &Bytes, session_bytes: usize) -> Option<u64> {
        if session_bytes + payload.len() > self.per_session_max {
            self.stats.inline_fallbacks += 1;
            return None;
        }
        if let Some((last, offset)) = &self.last {
            if last.as_ptr() == payload.as_ptr() && last.len() == payload.len() {
                let offset = *offset;
                if let Some((_, n)) = self.refs.get_mut(&offset) {
                    *n += 1;
                    self.stats.descriptors += 1;
                    return Some(offset);
                }
            }
        }
        let Some(buf) = self.alloc.alloc(payload.len()) else {
            self.stats.inline_fallbacks += 1;
            return None;
        };
        let offset = buf.offset();
        self.pool.write(offset as usize, payload);
        self.refs.insert(offset, (buf, 1));
        self.last = Some((payload.clone(), offset));
        self.stats.placed += 1;
        self.stats.descriptors += 1;
        Some(offset)
    }

    /// Forgets the last placed payload (call when a batch of events is done, so the
    /// `Bytes` it holds is not kept alive).
    pub fn end_batch(&mut self) {
        self.last = None;
    }

    /// One descriptor of the buffer at `offset` was handed back (by a receiver, or by
    /// the engine for a receiver that went away).
    pub fn release(&mut self, offset: u64) {
        let Some((buf, n)) = self.refs.get_mut(&offset) else {
            debug_assert!(false, "release of an unknown pool buffer {offset}");
            return;
        };
        *n -= 1;
        if *n == 0 {
            let buf = PoolBuf::from_descriptor(buf.offset(), buf.len());
            self.refs.remove(&offset);
            if matches!(&self.last, Some((_, o)) if *o == offset) {
                self.last = None;
            }
            let freed = self.alloc.free(buf);
            debug_assert!(freed.is_ok(), "pool buffer {offset} not live: {freed:?}");
        }
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> usize {
        self.alloc.free_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_shm::{DeliveryPoolView, HugePages};

    fn pool() -> SharedPool {
        SharedPool::new(
            DeliveryPool::create(2 << 20, HugePages::Never).unwrap(),
            1024,
        )
    }

    #[test]
    fn receivers_of_one_payload_share_one_copy_until_the_last_release() {
        let mut p = pool();
        let view = DeliveryPoolView::open(p.pool().fd().try_clone_to_owned().unwrap()).unwrap();
        let total = p.free_bytes();
        let a = Bytes::from(vec![7u8; 5000]);
        let first = p.place(&a, 0).unwrap();
        assert_eq!(p.place(&a, 0), Some(first));
        assert_eq!(p.place(&a.clone(), 0), Some(first));
        assert_eq!(view.slice(first, 5000).unwrap(), &a[..]);
        assert_eq!(p.stats.placed, 1);
        assert_eq!(p.stats.descriptors, 3);
        // Another payload of the same length at another address gets its own copy.
        let b = Bytes::from(vec![9u8; 5000]);
        let second = p.place(&b, 0).unwrap();
        assert_ne!(second, first);
        assert_eq!(view.slice(second, 5000).unwrap(), &b[..]);
        for _ in 0..3 {
            p.release(first);
        }
        p.release(second);
        assert_eq!(p.free_bytes(), total);
    }

    #[test]
    fn a_full_pool_or_a_greedy_session_means_inline() {
        let mut p = pool();
        // Over a quarter of the pool for one session.
        let big = Bytes::from(vec![1u8; 600 << 10]);
        assert_eq!(p.place(&big, 0), None);
        assert_eq!(p.stats.inline_fallbacks, 1);
        let chunk = Bytes::from(vec![2u8; 500 << 10]);
        assert!(p.place(&chunk, 0).is_some());
        assert_eq!(p.place(&Bytes::from(vec![2u8; 100 << 10]), 500 << 10), None);
        // Fill the pool from several sessions, then one more does not fit.
        p.end_batch();
        let mut held = Vec::new();
        while let Some(o) = p.place(&Bytes::from(vec![3u8; 500 << 10]), 0) {
            held.push(o);
        }
        assert!(p.stats.inline_fallbacks >= 3);
        for o in held {
            p.release(o);
        }
        assert!(p.place(&Bytes::from(vec![4u8; 500 << 10]), 0).is_some());
    }
}
