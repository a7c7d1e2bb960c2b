//! Client-local bookkeeping of the pool area: which blocks hold buffers in flight.
//!
//! Nothing here lives in shared memory, so the engine cannot disturb it. A buffer is a run of
//! whole blocks, found first-fit in a bitmap; a second bitmap marks where each buffer starts,
//! which is what lets [`PoolAllocator::free`] refuse a double free or a buffer it did not
//! hand out (including a descriptor coming back from the engine that names no buffer).

/// A buffer in the pool: `len` bytes at `offset` from the pool start. Not `Clone`, so one
/// allocation has one handle; [`from_descriptor`](Self::from_descriptor) rebuilds a handle
/// from a descriptor, which [`PoolAllocator::free`] then checks.
#[derive(Debug, PartialEq, Eq)]
pub struct PoolBuf {
    offset: u64,
    len: u64,
}

impl PoolBuf {
    /// A handle for the buffer a descriptor names (e.g. one the engine reports released).
    /// Nothing is checked here; `free` and `Region::pool_slice_mut` check it.
    pub fn from_descriptor(offset: u64, len: u64) -> PoolBuf {
        PoolBuf { offset, len }
    }

    /// Offset of the buffer from the start of the pool.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length asked for when allocating (the blocks behind it may be longer).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the length is 0 (never for a buffer from [`PoolAllocator::alloc`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why [`PoolAllocator::free`] refused a buffer; the allocator is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The buffer does not start on a block boundary inside the pool, or runs past its end.
    #[error("buffer {offset}+{len} is not a block run inside the pool")]
    OutOfRange {
        /// The buffer's offset.
        offset: u64,
        /// The buffer's length.
        len: u64,
    },
    /// No live allocation has exactly this start and block count: a double free, or a
    /// buffer from another allocator.
    #[error("buffer {offset}+{len} is not allocated")]
    NotAllocated {
        /// The buffer's offset.
        offset: u64,
        /// The buffer's length.
        len: u64,
    },
}

/// First-fit allocator of contiguous block runs over `pool_len` bytes. Allocates only in
/// [`new`](Self::new) (two bitmaps of one bit per block).
#[derive(Debug)]
pub struct PoolAllocator {
    block_bytes: usize,
    blocks: usize,
    /// Bit i set: block i belongs to a live buffer.
    used: Vec<u64>,
    /// Bit i set: a live buffer starts at block i.
    starts: Vec<u64>,
    free_blocks: usize,
}

impl PoolAllocator {
    /// An allocator over `pool_len` bytes in blocks of `block` bytes; a tail shorter than a
    /// block is never used.
    ///
    /// # Panics
    ///
    /// If `block` is 0 (a configuration bug).
    pub fn new(pool_len: usize, block: usize) -> PoolAllocator {
        assert!(block > 0, "pool block size must be nonzero");
        let blocks = pool_len / block;
        let words = blocks.div_ceil(64);
        PoolAllocator {
            block_bytes: block,
            blocks,
            used: vec![0; words],
            starts: vec![0; words],
            free_blocks: blocks,
        }
    }

    /// Block size in bytes.
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    /// Bytes in free blocks (not necessarily contiguous).
    pub fn free_bytes(&self) -> usize {
        self.free_blocks * self.block_bytes
    }

    /// A buffer of `len` bytes on the first run of free blocks long enough, or `None` if
    /// `len` is 0 or no such run exists.
    pub fn alloc(&mut self, len: usize) -> Option<PoolBuf> {
        let want = len.div_ceil(self.block_bytes);
        if want == 0 || want > self.free_blocks {
            return None;
        }
        let start = self.find_run(want)?;
        for block in start..start + want {
            set(&mut self.used, block);
        }
        set(&mut self.starts, start);
        self.free_blocks -= want;
        Some(PoolBuf {
            offset: (start * self.block_bytes) as u64,
            len: len as u64,
        })
    }

    /// Returns `buf`'s blocks. Refuses (and changes nothing) unless `buf` is exactly a live
    /// allocation: its start and block count match one.
    pub fn free(&mut self, buf: PoolBuf) -> Result<(), PoolError> {
        let (offset, len) = (buf.offset, buf.len);
        let block = self.block_bytes as u64;
        let out_of_range = PoolError::OutOfRange { offset, len };
        if offset % block != 0 {
            return Err(out_of_range);
        }
        let first = offset / block;
        let count = len.div_ceil(block);
        let end = first.checked_add(count).ok_or(out_of_range)?;
        if end > self.blocks as u64 {
            return Err(out_of_range);
        }
        let (first, end) = (first as usize, end as usize);
        let not_allocated = PoolError::NotAllocated { offset, len };
        let whole_allocation = count > 0
            && get(&self.starts, first)
            && (first..end).all(|b| get(&self.used, b))
            && (first + 1..end).all(|b| !get(&self.starts, b))
            && (end == self.blocks || !get(&self.used, end) || get(&self.starts, end));
        if !whole_allocation {
            return Err(not_allocated);
        }
        for b in first..end {
            clear(&mut self.used, b);
        }
        clear(&mut self.starts, first);
        self.free_blocks += end - first;
        Ok(())
    }

    /// First block of the lowest run of `want` free blocks. Skips full words and takes
    /// empty ones whole, so a scan costs about blocks / 64 steps on a busy pool.
    fn find_run(&self, want: usize) -> Option<usize> {
        let mut run_start = 0;
        let mut run_len = 0;
        let mut block = 0;
        while block < self.blocks {
            let word = self.used[block / 64];
            let whole_word = block % 64 == 0 && block + 64 <= self.blocks;
            if whole_word && word == u64::MAX {
                run_len = 0;
                block += 64;
                continue;
            }
            if whole_word && word == 0 {
                if run_len == 0 {
                    run_start = block;
                }
                run_len += 64;
                if run_len >= want {
                    return Some(run_start);
                }
                block += 64;
                continue;
            }
            if word & (1 << (block % 64)) != 0 {
                run_len = 0;
            } else {
                if run_len == 0 {
                    run_start = block;
                }
                run_len += 1;
                if run_len >= want {
                    return Some(run_start);
                }
            }
            block += 1;
        }
        None
    }
}

fn get(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocates_first_fit_in_whole_blocks() {
        let mut pool = PoolAllocator::new(10 * 4096 + 100, 4096);
        assert_eq!(pool.free_bytes(), 10 * 4096);
        assert_eq!(pool.alloc(0), None);
        let a = pool.alloc(1).unwrap();
        let b = pool.alloc(4097).unwrap();
        let c = pool.alloc(4096).unwrap();
        assert_eq!((a.offset(), a.len()), (0, 1));
        assert_eq!((b.offset(), b.len()), (4096, 4097));
        assert_eq!(c.offset(), 3 * 4096);
        assert_eq!(pool.free_bytes(), 6 * 4096);
        pool.free(b).unwrap();
        // First fit: the hole left by b.
        let d = pool.alloc(100).unwrap();
        assert_eq!(d.offset(), 4096);
        // Too long for the one-block hole at 2: goes after c.
        let e = pool.alloc(2 * 4096).unwrap();
        assert_eq!(e.offset(), 4 * 4096);
        assert_eq!(pool.alloc(5 * 4096), None);
        assert!(pool.alloc(4 * 4096).is_some());
        assert_eq!(pool.free_bytes(), 4096);
        for buf in [a, c, d, e] {
            pool.free(buf).unwrap();
        }
    }

    #[test]
    fn double_free_and_foreign_buffers_are_refused() {
        let mut pool = PoolAllocator::new(64 * 1024, 1024);
        let a = pool.alloc(3000).unwrap(); // blocks 0..3
        let b = pool.alloc(1024).unwrap(); // block 3
        let free_before = pool.free_bytes();
        let forged = [
            (1024, 1024),                // middle of a
            (0, 1024),                   // a, too short
            (0, 5000),                   // a, too long (covers b)
            (3 * 1024, 2048),            // b, too long
            (4 * 1024, 1024),            // free block
            (0, 0),                      // empty
            (100, 1024),                 // not on a block boundary
            (64 * 1024, 1),              // past the end
            (u64::MAX - 1023, u64::MAX), // overflowing
        ];
        for (offset, len) in forged {
            let err = pool.free(PoolBuf::from_descriptor(offset, len));
            assert!(err.is_err(), "{offset}+{len}");
            assert_eq!(pool.free_bytes(), free_before);
        }
        assert!(matches!(
            pool.free(PoolBuf::from_descriptor(100, 1)),
            Err(PoolError::OutOfRange { .. })
        ));
        assert!(matches!(
            pool.free(PoolBuf::from_descriptor(0, 1024)),
            Err(PoolError::NotAllocated { .. })
        ));
        // The same length rounded to the same blocks names the same allocation.
        pool.free(PoolBuf::from_descriptor(0, 2049)).unwrap();
        assert!(matches!(pool.free(a), Err(PoolError::NotAllocated { .. })));
        pool.free(b).unwrap();
        assert_eq!(pool.free_bytes(), 64 * 1024);
    }

    #[test]
    fn empty_pool_allocates_nothing() {
        let mut pool = PoolAllocator::new(0, 4096);
        assert_eq!(pool.free_bytes(), 0);
        assert_eq!(pool.alloc(1), None);
        let mut small = PoolAllocator::new(4095, 4096);
        assert_eq!(small.alloc(1), None);
    }

    #[test]
    fn runs_cross_word_boundaries() {
        let mut pool = PoolAllocator::new(200, 1);
        let a = pool.alloc(60).unwrap();
        let b = pool.alloc(100).unwrap();
        assert_eq!((a.offset(), b.offset()), (0, 60));
        let c = pool.alloc(40).unwrap();
        assert_eq!(c.offset(), 160);
        assert_eq!(pool.alloc(1), None);
        pool.free(b).unwrap();
        let d = pool.alloc(100).unwrap();
        assert_eq!(d.offset(), 60);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize),
        Free(usize),
        Forge(u64, u64),
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_alloc_free_never_overlaps_nor_leaks(
            pool_blocks in 0usize..300,
            block in prop_oneof![Just(1usize), Just(64), Just(4096)],
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0usize..20).prop_map(Op::Alloc),
                    2 => any::<usize>().prop_map(Op::Free),
                    1 => (0u64..320, 0u64..20).prop_map(|(b, n)| Op::Forge(b, n)),
                ],
                0..200,
            ),
        ) {
            let pool_len = pool_blocks * block + block / 2;
            let mut pool = PoolAllocator::new(pool_len, block);
            let mut live: Vec<PoolBuf> = Vec::new();
            // Model: block ownership.
            let mut owner: Vec<bool> = vec![false; pool_blocks];
            for op in ops {
                match op {
                    Op::Alloc(blocks) => {
                        let len = (blocks * block).saturating_sub(block / 3);
                        let want = len.div_ceil(block);
                        let got = pool.alloc(len);
                        // First fit over the model: the lowest free run of `want` blocks.
                        let expected = (want > 0)
                            .then(|| (0..pool_blocks.saturating_sub(want - 1))
                                .find(|&s| owner[s..s + want].iter().all(|o| !o)))
                            .flatten();
                        prop_assert_eq!(got.as_ref().map(|b| b.offset() as usize / block), expected);
                        if let Some(buf) = got {
                            prop_assert_eq!(buf.len(), len as u64);
                            let first = buf.offset() as usize / block;
                            prop_assert!(buf.offset() as usize + len <= pool_len);
                            for o in &mut owner[first..first + want] {
                                prop_assert!(!*o);
                                *o = true;
                            }
                            live.push(buf);
                        }
                    }
                    Op::Free(pick) => {
                        if !live.is_empty() {
                            let buf = live.swap_remove(pick % live.len());
                            let first = buf.offset() as usize / block;
                            let want = (buf.len() as usize).div_ceil(block);
                            let again = PoolBuf::from_descriptor(buf.offset(), buf.len());
                            prop_assert_eq!(pool.free(buf), Ok(()));
                            owner[first..first + want].fill(false);
                            prop_assert!(pool.free(again).is_err(), "double free accepted");
                        }
                    }
                    Op::Forge(first, blocks) => {
                        let offset = first * block as u64;
                        let len = blocks * block as u64;
                        let is_live = live.iter().any(|b| {
                            b.offset() == offset
                                && b.len().div_ceil(block as u64) == blocks
                        });
                        if !is_live {
                            let before = pool.free_bytes();
                            prop_assert!(pool.free(PoolBuf::from_descriptor(offset, len)).is_err());
                            prop_assert_eq!(pool.free_bytes(), before);
                        }
                    }
                }
                let used = owner.iter().filter(|o| **o).count();
                prop_assert_eq!(pool.free_bytes(), (pool_blocks - used) * block);
            }
            for buf in live.drain(..) {
                prop_assert_eq!(pool.free(buf), Ok(()));
            }
            prop_assert_eq!(pool.free_bytes(), pool_blocks * block);
            if pool_blocks > 0 {
                // Everything is one run again.
                prop_assert_eq!(pool.alloc(pool_blocks * block).map(|b| b.offset()), Some(0));
            }
        }
    }
}
