//! The engine's use of the delivery pool: where deliveries go, and who still reads them.
//!
//! A local multicast of at least `min_bytes` is copied from the sender's submit ring
//! straight into a pool buffer, and Totem sends and keeps it from there; when it is
//! delivered on this host, every local receiver gets a descriptor into that same buffer
//! (no further copy). A delivery from another node is copied into the pool once, however
//! many local receivers it has. Each receiver hands its descriptor back (`RELEASE`); a
//! buffer returns to the allocator when its last holder (Totem, a receiver) let go.
//! When the pool is full, or a receiver already pins its share of it, deliveries go
//! inline as before: a slow reader costs copies, never progress.

use bytes::Bytes;
use ringcast_shm::DeliveryPool;
use ringcast_shm::delivery_pool::{PoolBuffer, SharedDeliveryPool};

use crate::wire::pack::{ReassemblyBuffer, ReassemblyBuffers};

/// Allocation granularity: what goes through the pool is at least a few KiB.
const BLOCK_BYTES: usize = 4096;

/// Where deliveries and local multicasts go in the delivery pool, and the per-session
/// share of it (the pool itself is `ringcast_shm::DeliveryPool`; docs/shm-layout.md
/// names every piece of shared memory).
#[derive(Debug)]
pub struct DeliveryPlacement {
    pool: SharedDeliveryPool,
    min_bytes: usize,
    /// Most pool bytes one session may hold at once.
    per_session_max: usize,
    /// The payload copied in last and its buffer: its other receivers' events follow it
    /// directly, and share the copy. Holding the `Bytes` keeps its address from being
    /// reused by another payload while this entry lives.
    last: Option<(Bytes, PoolBuffer)>,
    pub stats: PlacementStats,
}

#[derive(Copy, Clone, Debug, Default)]
pub struct PlacementStats {
    /// Payloads copied into the pool at delivery (from other nodes, or local ones that
    /// were not sent from the pool).
    pub placed: u64,
    /// Bytes of those payloads.
    pub placed_bytes: u64,
    /// Local multicasts taken from a submit ring straight into the pool.
    pub sent_from_pool: u64,
    /// Descriptors handed to receivers.
    pub descriptors: u64,
    /// Deliveries that would have gone to the pool but went inline (pool full or the
    /// receiver over its share).
    pub inline_fallbacks: u64,
}

impl DeliveryPlacement {
    pub fn new(pool: DeliveryPool, min_bytes: usize) -> DeliveryPlacement {
        let len = pool.len();
        DeliveryPlacement {
            pool: SharedDeliveryPool::new(pool, BLOCK_BYTES),
            min_bytes: min_bytes.max(1),
            per_session_max: len / 4,
            last: None,
            stats: PlacementStats::default(),
        }
    }

    pub fn pool(&self) -> &SharedDeliveryPool {
        &self.pool
    }

    /// Whether a payload of `len` bytes should travel through the pool.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// A buffer for a local multicast (header room included), or `None` when the pool
    /// is too full to spare it.
    pub fn alloc_message(&mut self, len: usize) -> Option<PoolBuffer> {
        let buffer = self.pool.alloc(len)?;
        self.stats.sent_from_pool += 1;
        Some(buffer)
    }

    /// A descriptor offset for `payload`, for a receiver that already holds
    /// `session_bytes` of the pool: in place when the payload already lives in the pool
    /// (a local multicast), else the copy made for the previous receiver of the same
    /// payload, else a new copy. `None`: deliver it inline.
    pub fn place(&mut self, payload: &Bytes, session_bytes: usize) -> Option<u64> {
        if session_bytes + payload.len() > self.per_session_max {
            self.stats.inline_fallbacks += 1;
            return None;
        }
        if let Some(offset) = self.pool.retain_slice(payload) {
            self.stats.descriptors += 1;
            return Some(offset);
        }
        if let Some((last, buffer)) = &self.last {
            if last.as_ptr() == payload.as_ptr() && last.len() == payload.len() {
                self.stats.descriptors += 1;
                return Some(buffer.share());
            }
        }
        let Some(mut buffer) = self.pool.alloc(payload.len()) else {
            self.stats.inline_fallbacks += 1;
            return None;
        };
        let written = buffer.write(0, payload);
        debug_assert!(written, "a fresh buffer is ours alone");
        let offset = buffer.share();
        self.last = Some((payload.clone(), buffer));
        self.stats.placed += 1;
        self.stats.placed_bytes += payload.len() as u64;
        self.stats.descriptors += 1;
        Some(offset)
    }

    /// Forgets the last copied payload (call when a batch of events is done, so that
    /// neither it nor its buffer is kept alive).
    pub fn end_batch(&mut self) {
        self.last = None;
    }

    /// One descriptor naming pool offset `offset` was handed back (by a receiver, or by
    /// the engine for a receiver that went away).
    pub fn release(&mut self, offset: u64) {
        let released = self.pool.release(offset);
        debug_assert!(released, "release of an unknown pool buffer {offset}");
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> usize {
        self.pool.free_bytes()
    }
}

/// Reassembly of large fragmented messages in the pool (see
/// [`crate::totem::Node::set_reassembly_buffers`]): the one copy that joins the fragments
/// puts the message where local readers read it, instead of on the heap and then into
/// the pool. A quarter of the pool stays for the rest; past that, the heap.
pub fn reassembly_buffers(pool: SharedDeliveryPool) -> ReassemblyBuffers {
    Box::new(move |total| {
        if pool.free_bytes() < pool.len() / 4 + total {
            return None;
        }
        let buffer = pool.alloc(total)?;
        Some(Box::new(PoolReassembly { buffer, filled: 0 }) as Box<dyn ReassemblyBuffer>)
    })
}

/// A message being joined in a pool buffer that nothing else holds yet.
struct PoolReassembly {
    buffer: PoolBuffer,
    filled: usize,
}

impl ReassemblyBuffer for PoolReassembly {
    fn append(&mut self, data: &[u8]) {
        let written = self.buffer.write(self.filled, data);
        debug_assert!(written, "a reassembly buffer is ours alone and long enough");
        self.filled += data.len();
    }

    fn finish(self: Box<Self>) -> Bytes {
        self.buffer.bytes(0..self.filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_shm::{DeliveryPoolView, HugePages};

    fn pool() -> DeliveryPlacement {
        DeliveryPlacement::new(
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
        p.end_batch();
        for _ in 0..3 {
            p.release(first);
        }
        p.release(second);
        assert_eq!(p.free_bytes(), total);
    }

    #[test]
    fn a_local_multicast_is_delivered_from_where_it_was_sent() {
        let mut p = pool();
        let view = DeliveryPoolView::open(p.pool().fd().try_clone_to_owned().unwrap()).unwrap();
        let total = p.free_bytes();
        let mut buffer = p.alloc_message(16 + 6000).unwrap();
        assert!(buffer.write(16, &[5; 6000]));
        assert!(buffer.write(10, b"header"));
        let message = buffer.bytes(10..16 + 6000); // what Totem holds
        drop(buffer);
        let payload = message.slice(6..); // what the CPG service delivers
        let a = p.place(&payload, 0).unwrap();
        let b = p.place(&payload, 0).unwrap();
        assert_eq!((a, b), (a, a));
        assert_eq!(view.slice(a, 6000).unwrap(), &[5; 6000][..]);
        assert_eq!(p.stats.placed, 0, "no copy");
        drop((message, payload)); // Totem done with it
        assert!(p.free_bytes() < total, "readers still hold it");
        p.release(a);
        p.release(b);
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
        loop {
            let payload = Bytes::from(vec![3u8; 500 << 10]);
            let Some(o) = p.place(&payload, 0) else { break };
            p.end_batch();
            held.push(o);
        }
        assert!(p.stats.inline_fallbacks >= 3);
        for o in held {
            p.release(o);
        }
        assert!(p.place(&Bytes::from(vec![4u8; 500 << 10]), 0).is_some());
    }
}
