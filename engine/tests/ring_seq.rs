//! A ring sequence that cannot be written stops `ringcastd` (docs/invariants.md, "Ring
//! identifiers"): with a clear error that names the file and exit status 1, before
//! anything that names the new ring leaves the node, so the ring id it would have used
//! is never seen by anyone and cannot be used twice. Real processes on 127.0.0.1 and
//! 127.0.0.2, on a UDP port the OS hands out.

mod common;
use common::*;

use std::time::Duration;

/// A UDP port that was free on 127.0.0.1 a moment ago (the OS picks it).
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    socket.local_addr().expect("local address").port()
}

fn regular_memberships(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("membership") && l.contains("kind=\"regular\""))
        .collect()
}

#[test]
fn a_failed_ring_seq_write_stops_the_node_and_its_ring_is_never_seen() {
    let mut cluster = Cluster::new("ringseq", free_udp_port(), 2);
    cluster.start(1);
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();

    // The disk goes bad under the running node: its ring sequence file becomes a
    // directory, so the next write (a temporary file renamed over it) fails.
    let path = cluster.state_dir(1).join("ringid_1");
    let before = std::fs::read(&path).expect("ringid_1 written at start");
    assert_eq!(before.len(), 8);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("occupied"), b"x").unwrap();

    // A second node makes node 1 form a new ring, which needs a new sequence.
    cluster.start(2);
    let status = cluster
        .daemon(1)
        .wait_exit(FORM_TIMEOUT)
        .unwrap_or_else(|| panic!("node 1 still runs; log:\n{}", cluster.log(1)));
    assert_eq!(status.code(), Some(1), "log:\n{}", cluster.log(1));
    let log1 = cluster.log(1);
    let error = log1
        .lines()
        .find(|l| l.starts_with("ringcastd: state_dir: cannot write ring sequence"))
        .unwrap_or_else(|| panic!("no error line; log:\n{log1}"));
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("a ring id must never be reused"), "{error}");

    // Nothing that named the unwritten ring left node 1: node 2 never installed a
    // ring with it (given the time a commit token already sent would take to arrive
    // and be installed), and is in one of its own.
    std::thread::sleep(Duration::from_millis(3 * TOKEN_MS));
    cluster.wait_ring(&[2], FORM_TIMEOUT).unwrap();
    let log2 = cluster.log(2);
    assert!(!regular_memberships(&log2).is_empty(), "log:\n{log2}");
    let with_1: Vec<&str> = regular_memberships(&log2)
        .into_iter()
        .filter(|l| l.contains("members=[1, 2]"))
        .collect();
    assert!(
        with_1.is_empty(),
        "node 2 was in a ring with node 1: {with_1:?}"
    );

    // Repaired, node 1 starts again from the last value written and joins.
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, &before).unwrap();
    cluster.start(1);
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    let ring = cluster.status(1).expect("stats page").ring_id;
    let stored = u64::from_le_bytes(std::fs::read(&path).unwrap().try_into().unwrap());
    let before = u64::from_le_bytes(before.try_into().unwrap());
    assert!(
        stored > before && stored >= ring.seq,
        "stored {stored}, before {before}, ring {ring:?}"
    );
    cluster.daemon(1).signal(libc::SIGTERM);
    cluster.daemon(2).signal(libc::SIGTERM);
    assert!(
        cluster
            .daemon(1)
            .wait_exit(Duration::from_secs(10))
            .is_some()
    );
    assert!(
        cluster
            .daemon(2)
            .wait_exit(Duration::from_secs(10))
            .is_some()
    );
}
