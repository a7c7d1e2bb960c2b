use super::*;

fn options() -> HostOptions {
    HostOptions::default()
}

/// A run is deterministic: the same seed gives the same outcome.
#[test]
fn host_sim_replays_bit_for_bit() {
    let a = run(7, &options());
    let b = run(7, &options());
    let fingerprint = |r: &HostReport| {
        (
            r.syncs,
            r.delivered,
            r.sent,
            r.connections,
            r.persisted,
            r.sim_time,
            r.cpg.clone(),
        )
    };
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert!(a.violations.is_empty(), "{:#?}", a.violations);
}

/// docs/invariants.md ("Clients") for N hosts with clients, on a few dozen seeds with
/// crashes, clean leaves, restarts, partitions, loss bursts and slow disks.
#[test]
fn hosts_keep_the_client_guarantees_under_faults() {
    let mut failures = Vec::new();
    let mut sum = HostReport::default();
    for seed in 1..=24 {
        let r = run(seed, &options());
        sum.syncs += r.syncs;
        sum.delivered += r.delivered;
        sum.sent += r.sent;
        sum.persisted += r.persisted;
        sum.persists_lost += r.persists_lost;
        sum.incarnations += r.incarnations;
        sum.slow_readers += r.slow_readers;
        sum.cut_off += r.cut_off;
        sum.multicasts_held += r.multicasts_held;
        add_stats(&mut sum.cpg, &r.cpg);
        failures.extend(r.violations);
    }
    println!("24 seeds: {}", sum.summary_line());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The runs did something: syncs under faults, some aborted, restarts, traffic,
    // persistence.
    assert!(sum.syncs > 24 * 3, "syncs {}", sum.syncs);
    assert!(sum.cpg.syncs_aborted > 0, "{:?}", sum.cpg);
    assert!(sum.incarnations > 24 * 3, "{}", sum.incarnations);
    assert!(sum.persisted >= sum.syncs / 4, "{}", sum.summary_line());
    // Slow readers held local senders back and were cut off (docs/architecture.md,
    // "Flow control").
    assert!(
        sum.slow_readers > 0 && sum.multicasts_held > 0 && sum.cut_off > 0,
        "{}",
        sum.summary_line()
    );
    // With the sync barrier nothing is ordered before an activation.
    assert_eq!(sum.cpg.held, 0, "{:?}", sum.cpg);
    assert!(
        sum.sent > 1000 && sum.delivered > sum.sent,
        "{}",
        sum.summary_line()
    );
}

/// The same on more seeds, by hand (`ringcast-sim --hosts --seeds N` is the fast way):
/// `HOST_SIM_SEEDS=25-400 cargo test -p ringcast-sim --lib many_host_seeds -- --ignored`.
#[test]
#[ignore = "long; run by hand with HOST_SIM_SEEDS=a-b"]
fn many_host_seeds() {
    let range = std::env::var("HOST_SIM_SEEDS").unwrap_or_else(|_| "25-400".into());
    let (a, b) = range.split_once('-').expect("HOST_SIM_SEEDS=a-b");
    let (a, b): (u64, u64) = (a.parse().expect("a"), b.parse().expect("b"));
    let failures: Vec<String> = (a..=b)
        .flat_map(|s| run(s, &options()).violations)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replay_command_names_the_seed_and_changed_options() {
    assert_eq!(
        options().replay_command(9),
        "cargo run --release -p ringcast-sim --bin ringcast-sim -- --hosts --seed 9"
    );
    let o = HostOptions {
        nodes_min: 3,
        nodes_max: 3,
        duration: Duration::from_millis(2500),
        ..options()
    };
    assert!(
        o.replay_command(9)
            .ends_with("--seed 9 --nodes 3-3 --duration 2.5")
    );
}
