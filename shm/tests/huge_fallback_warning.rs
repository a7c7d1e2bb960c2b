//! The huge page fallback warns once per process, not once per region. Its own test binary
//! (its own process), because the "warned" flag is process-wide.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ringcast_shm::layout::HUGE_PAGE_BYTES;
use ringcast_shm::{HugePages, Region, RegionSpec};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Counts WARN events.
struct CountWarnings(Arc<AtomicUsize>);

impl Subscriber for CountWarnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn huge_pages_total() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("HugePages_Total:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[cfg_attr(miri, ignore)]
fn fallback_warns_once_per_process() {
    // More huge pages than the host has in total: every Try falls back.
    let spec = RegionSpec {
        submit_ring_bytes: 4096,
        event_ring_bytes: 4096,
        pool_bytes: (huge_pages_total() + 1) * HUGE_PAGE_BYTES,
    };
    let warnings = Arc::new(AtomicUsize::new(0));
    let subscriber = CountWarnings(warnings.clone());
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..3 {
            let region = Region::create(&format!("test-warn-{i}"), &spec, HugePages::Try).unwrap();
            assert!(!region.huge_pages());
        }
    });
    assert_eq!(warnings.load(Ordering::Relaxed), 1);
}
