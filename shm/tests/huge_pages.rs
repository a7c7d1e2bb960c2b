//! Huge pages: `Try` works whether or not the host has them and reports which it got.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use ringcast_shm::layout::{HUGE_PAGE_BYTES, PAGE_BYTES};
use ringcast_shm::{HugePages, PoolAllocator, Region, RegionError, RegionSpec};

/// `HugePages_<field>` from /proc/meminfo (0 when absent).
fn meminfo_huge(field: &str) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(&format!("HugePages_{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The page size the kernel reports for the region's file: 2 MiB on hugetlbfs.
fn file_block_bytes(region: &Region) -> u64 {
    let file = File::from(region.fd().try_clone_to_owned().unwrap());
    file.metadata().unwrap().blksize()
}

/// A client maps the region and one record and one pool buffer make the round trip.
fn round_trip(engine: &Region) {
    let mut client = Region::open(engine.fd().try_clone_to_owned().unwrap()).unwrap();
    assert_eq!(client.huge_pages(), engine.huge_pages());
    assert_eq!(client.layout(), engine.layout());
    let mut pool = PoolAllocator::new(client.pool_len(), 4096);
    let buf = pool.alloc(3 << 20).unwrap();
    client.pool_slice_mut(&buf).fill(0x5a);
    let mut tx = client.submit_producer().unwrap();
    tx.try_push(1, &[&buf.offset().to_le_bytes(), &buf.len().to_le_bytes()])
        .unwrap();
    assert!(!tx.publish());
    let mut rx = engine.submit_consumer().unwrap();
    let rec = rx.peek().unwrap().unwrap();
    let offset = u64::from_le_bytes(rec.payload[..8].try_into().unwrap());
    let len = u64::from_le_bytes(rec.payload[8..].try_into().unwrap());
    let bytes = engine.pool_slice(offset, len).unwrap();
    assert!(bytes.iter().all(|&b| b == 0x5a));
    rx.consume();
}

#[test]
#[cfg_attr(miri, ignore)]
fn try_works_with_or_without_huge_pages() {
    let spec = RegionSpec::default();
    let free_before = meminfo_huge("Free");
    let region = Region::create("test-huge-try", &spec, HugePages::Try).unwrap();
    let page = region.layout().page_bytes;
    println!(
        "HugePages::Try got {} pages ({} bytes; {} huge pages were free before)",
        if region.huge_pages() {
            "huge"
        } else {
            "normal"
        },
        region.len(),
        free_before
    );
    // The flag matches what the kernel says about the file.
    let block = file_block_bytes(&region);
    assert_eq!(
        region.huge_pages(),
        block == HUGE_PAGE_BYTES as u64,
        "st_blksize {block}"
    );
    assert_eq!(
        page,
        if region.huge_pages() {
            HUGE_PAGE_BYTES
        } else {
            PAGE_BYTES
        }
    );
    assert_eq!(region.len() % page, 0);
    if meminfo_huge("Total") == 0 {
        assert!(!region.huge_pages(), "huge pages without any reserved");
    }
    round_trip(&region);
}

#[test]
#[cfg_attr(miri, ignore)]
fn require_gives_huge_pages_or_says_why() {
    let spec = RegionSpec {
        submit_ring_bytes: 1 << 20,
        event_ring_bytes: 1 << 20,
        pool_bytes: 4 << 20,
    };
    match Region::create("test-huge-require", &spec, HugePages::Require) {
        Ok(region) => {
            println!(
                "HugePages::Require: got {} bytes of huge pages",
                region.len()
            );
            assert!(region.huge_pages());
            assert_eq!(file_block_bytes(&region), HUGE_PAGE_BYTES as u64);
            assert_eq!(region.len(), 8 << 20);
            round_trip(&region);
        }
        Err(err) => {
            println!("HugePages::Require: {err}");
            assert!(
                matches!(err, RegionError::HugePagesUnavailable { .. }),
                "{err}"
            );
        }
    }
    let never = Region::create("test-huge-never", &spec, HugePages::Never).unwrap();
    assert!(!never.huge_pages());
    assert_eq!(never.len(), 4096 + (6 << 20));
}

#[test]
#[cfg_attr(miri, ignore)]
fn more_than_the_host_reserves_falls_back_or_fails() {
    // One huge page more than the host has in total can never be satisfied.
    let reserved = meminfo_huge("Total");
    let spec = RegionSpec {
        submit_ring_bytes: 4096,
        event_ring_bytes: 4096,
        pool_bytes: (reserved as usize + 1) * HUGE_PAGE_BYTES,
    };
    let region = Region::create("test-huge-too-many", &spec, HugePages::Try).unwrap();
    assert!(!region.huge_pages());
    assert_eq!(file_block_bytes(&region), PAGE_BYTES as u64);
    let err = Region::create("test-huge-too-many", &spec, HugePages::Require).unwrap_err();
    assert!(
        matches!(err, RegionError::HugePagesUnavailable { .. }),
        "{err}"
    );
    println!("{} huge pages reserved; asking for more: {err}", reserved);
}
