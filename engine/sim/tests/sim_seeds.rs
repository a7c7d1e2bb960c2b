//! The simulator over many seeds with every fault on (docs/invariants.md, guarantees 1–5), and
//! bit-for-bit replay of a seed.
//!
//! Sized for `cargo test` in the debug profile on a 2-core machine: 200 seeds of 2–8
//! nodes, 2 virtual seconds of faults at 4 faults per second, half a second of tail.
//! `ringcast-sim --seeds 1000` (release) is the long run.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringcast_sim::{self as sim, RunReport, SimOptions};

fn options() -> SimOptions {
    let mut options = SimOptions {
        nodes_min: 2,
        nodes_max: 8,
        duration: Duration::from_secs(2),
        tail: Duration::from_millis(500),
        ..SimOptions::default()
    };
    options.faults.rate = 4.0;
    options.faults.downtime_max = Duration::from_secs(1);
    options
}

fn run_seeds(seeds: std::ops::Range<u64>, options: &SimOptions) -> Vec<RunReport> {
    let next = AtomicU64::new(seeds.start);
    let reports = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let report = sim::run(seed, options);
                    reports.lock().unwrap().push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    reports
}

#[test]
fn two_hundred_seeds_with_every_fault() {
    let options = options();
    let reports = run_seeds(0..200, &options);
    let violations: Vec<String> = reports
        .iter()
        .flat_map(|r| r.violations.iter().map(|v| v.to_string()))
        .collect();
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let configurations: u64 = reports.iter().map(|r| r.configurations).sum();
    let faults: u64 = reports.iter().map(|r| r.faults).sum();
    // The runs must actually exercise something.
    assert!(delivered > 10_000, "delivered only {delivered}");
    assert!(
        configurations > 1_000,
        "only {configurations} configurations"
    );
    assert!(faults > 500, "only {faults} faults");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let options = options();
    for seed in [3, 17] {
        let first = sim::run(seed, &options);
        let second = sim::run(seed, &options);
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first, second, "seed {seed}");
        assert!(first.delivered > 0);
    }
    // And a different seed is a different run.
    assert_ne!(
        sim::run(3, &options).trace_hash,
        sim::run(4, &options).trace_hash
    );
}
