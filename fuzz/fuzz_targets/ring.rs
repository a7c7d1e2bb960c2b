//! The engine reading a hostile client's submit ring. The client's side is a real
//! `Region` mapping (the engine's region, opened from its fd) whose producer pushes
//! honest records, plus a second writable mapping of the same memory through which the
//! fuzzer writes garbage anywhere: region header, ring control block (head, tail, sleep
//! flag) and data area. The engine's side does what the engine does with each record:
//! peek, decode a release offset or a message reference, look the reference up in the
//! pool, consume; and announces sleep when the ring is empty.
//!
//! Checked: nothing panics, a corrupt ring stays failed, and a record handed to the
//! engine is never longer than a producer may write.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringcast_shm::layout::CACHE_LINE_BYTES;
use ringcast_shm::proto::MessageRef;
use ringcast_shm::{HugePages, Region, RegionSpec};

#[derive(Debug, Arbitrary)]
enum Op {
    /// The client's producer pushes a record of `len` bytes (not yet published).
    Push {
        kind: u16,
        len: u16,
        fill: u8,
    },
    Publish,
    /// Garbage at `at` (modulo the header, control blocks and submit data area).
    Scribble {
        at: u16,
        bytes: Vec<u8>,
    },
    /// A chosen value for the submit ring's head or tail.
    SetIndex {
        tail: bool,
        value: u64,
    },
    /// The engine takes up to `n` records.
    Take {
        n: u8,
    },
    /// The engine announces sleep (and withdraws it).
    Sleep,
}

fuzz_target!(|ops: Vec<Op>| {
    let spec = RegionSpec {
        submit_ring_bytes: 4096,
        event_ring_bytes: 4096,
        pool_bytes: 4096,
    };
    let engine = Region::create("fuzz", &spec, HugePages::Never).expect("region");
    let client = Region::open(engine.fd().try_clone_to_owned().unwrap()).expect("open");
    let mut producer = client.submit_producer().unwrap();
    let mut consumer = engine.submit_consumer().unwrap();
    let file = std::fs::File::from(engine.fd().try_clone_to_owned().unwrap());
    // SAFETY: the mapping is shared memory the test writes garbage into on purpose; the
    // ring ends read it only through their bounds-checked, untrusting accessors.
    let mut hostile = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("mmap");
    let layout = *engine.layout();
    let ctrl = layout.submit.ctrl_offset;
    let writable = layout.submit.data_offset + layout.submit.data_bytes;
    let max_record = spec.submit_ring_bytes / 2 - 8;
    let mut failed = false;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Push { kind, len, fill } => {
                let len = usize::from(len) % (max_record + 1);
                let _ = producer.try_push_with(u32::from(kind), len, |b| b.fill(fill));
            }
            Op::Publish => {
                let _ = producer.publish();
            }
            Op::Scribble { at, bytes } => {
                let at = usize::from(at) % writable;
                let end = (at + bytes.len()).min(writable);
                hostile[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Op::SetIndex { tail, value } => {
                let at = ctrl + if tail { CACHE_LINE_BYTES } else { 0 };
                hostile[at..at + 8].copy_from_slice(&value.to_ne_bytes());
            }
            Op::Take { n } => {
                for _ in 0..n % 8 {
                    match consumer.peek() {
                        Ok(Some(record)) => {
                            assert!(!failed, "a failed ring yielded a record");
                            assert!(record.payload.len() <= max_record);
                            // Copied first: the client may rewrite it at any time.
                            let payload = record.payload.to_vec();
                            engine_reads(&engine, record.kind, &payload);
                            consumer.consume();
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            Op::Sleep => {
                if consumer.prepare_sleep() {
                    consumer.cancel_sleep();
                }
            }
        }
    }
});

/// What the engine does with a submit record's bytes (engine/src/ipc): a release names a
/// pool offset, a message reference a pool range.
fn engine_reads(engine: &Region, kind: u32, payload: &[u8]) {
    if let Ok(offset) = <[u8; 8]>::try_from(payload) {
        let _ = u64::from_le_bytes(offset) % 4096 + u64::from(kind);
    }
    if let Ok(m) = MessageRef::decode(payload) {
        if let Some(bytes) = engine.pool_slice(m.offset, m.len) {
            assert_eq!(bytes.len() as u64, m.len);
        }
    }
}
