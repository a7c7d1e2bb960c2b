//! Two processes on one region: this test binary spawns itself as the client.
//!
//! The parent plays the engine: it creates the region and consumes the submit ring,
//! blocking on an eventfd through the sleep protocol when the ring is empty. The child plays
//! the client: it maps the region from the inherited fd and pushes sequence-numbered records
//! whose length and bytes are a function of the sequence number, so the parent can check
//! every byte.
//!
//! Cases (run in order by `main`; this target has `harness = false`):
//! - `stress`: 1,000,000 records of varying size (0 to the largest a record may be) through a
//!   64 KiB ring, every one verified.
//! - `killed_mid_stream`: the child pushes forever; the parent SIGKILLs it mid-stream and
//!   then drains what was published: every record is whole and in sequence, the ring is
//!   not corrupt, and the dead client's heartbeat stops.
//! - `RINGCAST_SHM_BENCH=<records>` adds a throughput run with 64-byte payloads (print only;
//!   `RINGCAST_SHM_BENCH_SPINS=<n>`: empty polls the consumer spins through before sleeping).
//!
//! Every wait is bounded: the child and the parent give up after `DEADLINE`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringcast_shm::{Consumer, EventFd, HugePages, PushError, Region, RegionSpec};

const CHILD_ROLE: &str = "RINGCAST_SHM_TEST_CHILD";
const REGION_FD: &str = "RINGCAST_SHM_TEST_REGION_FD";
const WAKE_FD: &str = "RINGCAST_SHM_TEST_WAKE_FD";
const RECORDS: &str = "RINGCAST_SHM_TEST_RECORDS";
const PAYLOAD: &str = "RINGCAST_SHM_TEST_PAYLOAD";
const BENCH: &str = "RINGCAST_SHM_BENCH";
const BENCH_SPINS: &str = "RINGCAST_SHM_BENCH_SPINS";

/// Longest any side of a test waits for the other.
const DEADLINE: Duration = Duration::from_secs(120);

/// How long a consumer blocks on the eventfd before re-checking the ring and the child.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Records the producer writes between publishes.
const PUBLISH_BATCH: u64 = 16;

fn main() {
    if cfg!(miri) {
        return; // processes, memfd and eventfd are outside miri
    }
    match std::env::var(CHILD_ROLE).as_deref() {
        Ok("producer") => {
            child_producer();
            return;
        }
        Ok(other) => panic!("unknown child role {other:?}"),
        Err(_) => {}
    }
    stress();
    killed_mid_stream();
    if let Ok(records) = std::env::var(BENCH) {
        bench(records.parse().expect("RINGCAST_SHM_BENCH=<records>"));
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a record's length follows from its sequence number.
#[derive(Clone, Copy, Debug)]
enum Payload {
    /// Mostly 0..=200 bytes, every 97th up to `max` (the ring's largest record).
    Varying { max: usize },
    /// Always this many bytes.
    Fixed(usize),
}

impl Payload {
    fn encode(self) -> String {
        match self {
            Payload::Varying { max } => format!("varying:{max}"),
            Payload::Fixed(len) => format!("fixed:{len}"),
        }
    }

    fn decode(s: &str) -> Payload {
        let (kind, n) = s.split_once(':').expect("payload spec");
        let n = n.parse().expect("payload length");
        match kind {
            "varying" => Payload::Varying { max: n },
            "fixed" => Payload::Fixed(n),
            _ => panic!("bad payload spec {s}"),
        }
    }

    /// The bytes of record `seq`: its sequence number, then (for `Varying`) a stream seeded
    /// by it, or (for `Fixed`, the benchmark) the sequence number's low byte repeated, which
    /// keeps the producer's cost close to the ring's own.
    fn fill(self, seq: u64, buf: &mut [u8]) {
        match self {
            Payload::Varying { .. } => fill_stream(seq, buf),
            Payload::Fixed(_) => {
                buf.fill(seq as u8);
                let head = buf.len().min(8);
                buf[..head].copy_from_slice(&seq.to_le_bytes()[..head]);
            }
        }
    }

    fn len(self, seq: u64) -> usize {
        match self {
            Payload::Fixed(len) => len,
            Payload::Varying { max } => {
                let mut state = seq;
                let r = splitmix64(&mut state) as usize;
                if seq % 97 == 0 {
                    r % (max + 1)
                } else {
                    r % 201
                }
            }
        }
    }
}

/// Sequence number, then a splitmix64 stream seeded by it.
fn fill_stream(seq: u64, buf: &mut [u8]) {
    let mut state = seq ^ 0x5eed;
    let mut chunks = buf.chunks_mut(8);
    if let Some(first) = chunks.next() {
        first.copy_from_slice(&seq.to_le_bytes()[..first.len()]);
    }
    for chunk in chunks {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

fn kind_of(seq: u64) -> u32 {
    (seq % (1 << 31)) as u32
}

/// An fd the child inherits (no CLOEXEC), closed in the parent when dropped.
fn inheritable(fd: BorrowedFd<'_>) -> OwnedFd {
    // SAFETY: dup of a live fd; the copy has FD_CLOEXEC clear, which is the point.
    let raw = unsafe { libc::dup(fd.as_raw_fd()) };
    assert!(raw >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn spawn_producer(region: &Region, wake: &EventFd, records: u64, payload: Payload) -> Child {
    let region_fd = inheritable(region.fd());
    let wake_fd = inheritable(wake.as_fd());
    let child = Command::new(std::env::current_exe().expect("test binary path"))
        .env(CHILD_ROLE, "producer")
        .env(REGION_FD, region_fd.as_raw_fd().to_string())
        .env(WAKE_FD, wake_fd.as_raw_fd().to_string())
        .env(RECORDS, records.to_string())
        .env(PAYLOAD, payload.encode())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn child");
    // The parent's copies close here; the child has its own.
    drop((region_fd, wake_fd));
    child
}

fn env_fd(name: &str) -> OwnedFd {
    let raw: RawFd = std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} unset"))
        .parse()
        .expect("fd number");
    // SAFETY: the parent passed this fd to us for our exclusive use.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The client: push `RECORDS` records (0 = until killed), publishing in batches.
fn child_producer() {
    let region = Region::open(env_fd(REGION_FD)).expect("child maps the region");
    let wake = EventFd::from_owned(env_fd(WAKE_FD));
    let records: u64 = std::env::var(RECORDS).unwrap().parse().unwrap();
    let payload = Payload::decode(&std::env::var(PAYLOAD).unwrap());
    region.set_client_pid(std::process::id());
    let mut tx = region.submit_producer().expect("submit producer");
    let deadline = Instant::now() + DEADLINE;
    let publish = |tx: &mut ringcast_shm::Producer| {
        if tx.publish() {
            wake.notify().expect("notify");
        }
    };
    let mut seq = 0u64;
    while records == 0 || seq < records {
        let len = payload.len(seq);
        let mut full_spins = 0u32;
        loop {
            match tx.try_push_with(kind_of(seq), len, |buf| payload.fill(seq, buf)) {
                Ok(()) => break,
                Err(PushError::Full) => {
                    publish(&mut tx);
                    tx.check().expect("consumer head sane");
                    if region.engine_closed() || Instant::now() > deadline {
                        std::process::exit(3);
                    }
                    // Back off: spin briefly, then yield (the machine may have two cores).
                    full_spins += 1;
                    if full_spins > 64 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Err(PushError::TooBig) => panic!("record {seq} of {len} bytes too big"),
            }
        }
        seq += 1;
        if seq % PUBLISH_BATCH == 0 {
            publish(&mut tx);
            region.bump_heartbeat_client();
        }
    }
    publish(&mut tx);
    region.set_client_closed();
}

/// What the consumer expects and how hard it checks and waits.
#[derive(Clone, Copy, Debug)]
struct Reading {
    payload: Payload,
    /// Compare every byte (else only kind, length and sequence number).
    verify_bytes: bool,
    /// Empty polls to spin through before announcing sleep.
    spins_before_sleep: u32,
}

impl Reading {
    fn verified(payload: Payload) -> Reading {
        Reading {
            payload,
            verify_bytes: true,
            spins_before_sleep: 0,
        }
    }
}

#[derive(Default, Debug)]
struct ConsumeStats {
    records: u64,
    bytes: u64,
    sleeps: u64,
    /// Sleeps that ended by timeout rather than by a wake-up (a lost wake-up shows here,
    /// but so does a producer descheduled for a whole wait slice).
    timeouts: u64,
    empty_polls: u64,
}

/// Consumes records `first_seq..until`, verifying each. When the ring is empty and
/// `alive(next_seq)` says the producer is gone, stops once nothing more is published.
fn consume(
    rx: &mut Consumer,
    wake: &EventFd,
    how: Reading,
    first_seq: u64,
    until: u64,
    mut alive: impl FnMut(u64) -> bool,
) -> ConsumeStats {
    let Reading {
        payload,
        verify_bytes,
        spins_before_sleep,
    } = how;
    let deadline = Instant::now() + DEADLINE;
    let mut stats = ConsumeStats::default();
    let mut empty_streak = 0u32;
    let mut expected = Vec::new();
    let mut seq = first_seq;
    while seq < until {
        match rx.peek().expect("ring not corrupt") {
            Some(rec) => {
                assert_eq!(rec.kind, kind_of(seq), "record {seq}: kind");
                assert_eq!(rec.payload.len(), payload.len(seq), "record {seq}: length");
                if verify_bytes {
                    expected.resize(rec.payload.len(), 0);
                    payload.fill(seq, &mut expected);
                    assert!(rec.payload == &expected[..], "record {seq}: payload");
                } else if rec.payload.len() >= 8 {
                    assert_eq!(
                        rec.payload[..8],
                        seq.to_le_bytes(),
                        "record {seq}: sequence"
                    );
                }
                stats.bytes += rec.payload.len() as u64;
                rx.consume();
                empty_streak = 0;
                seq += 1;
                stats.records += 1;
            }
            None => {
                stats.empty_polls += 1;
                assert!(Instant::now() < deadline, "stuck at record {seq}");
                if !alive(seq) {
                    // The producer is gone: whatever it published is all there is.
                    if rx.peek().expect("ring not corrupt").is_none() {
                        break;
                    }
                    continue;
                }
                if empty_streak < spins_before_sleep {
                    empty_streak += 1;
                    std::hint::spin_loop();
                    continue;
                }
                if rx.prepare_sleep() {
                    stats.sleeps += 1;
                    if !wake.wait(Some(WAIT_SLICE)).expect("poll eventfd") {
                        stats.timeouts += 1;
                    }
                    rx.cancel_sleep();
                    wake.drain().expect("drain eventfd");
                }
            }
        }
    }
    stats
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            return status;
        }
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn engine_region(name: &str, ring_bytes: usize) -> (Region, Consumer, EventFd) {
    let spec = RegionSpec {
        submit_ring_bytes: ring_bytes,
        event_ring_bytes: 4096,
        pool_bytes: 0,
    };
    let region = Region::create(name, &spec, HugePages::Never).expect("create region");
    let rx = region.submit_consumer().expect("submit consumer");
    let wake = EventFd::new().expect("eventfd");
    (region, rx, wake)
}

fn stress() {
    const RECORDS_TOTAL: u64 = 1_000_000;
    let started = Instant::now();
    let (region, mut rx, wake) = engine_region("stress", 64 << 10);
    let max = (64 << 10) / 2 - 8;
    let payload = Payload::Varying { max };
    let mut child = spawn_producer(&region, &wake, RECORDS_TOTAL, payload);
    let stats = consume(
        &mut rx,
        &wake,
        Reading::verified(payload),
        0,
        RECORDS_TOTAL,
        |_| true,
    );
    let status = wait_exit(&mut child);
    assert!(status.success(), "child failed: {status}");
    assert_eq!(stats.records, RECORDS_TOTAL);
    assert_eq!(rx.peek().unwrap(), None);
    assert_eq!(region.client_pid(), child.id());
    assert!(region.client_closed());
    assert!(region.heartbeat_client() >= RECORDS_TOTAL / PUBLISH_BATCH);
    println!(
        "stress: {} records, {} payload bytes verified in {:.2?} ({} sleeps on the eventfd, \
         {} of them ended by the {WAIT_SLICE:?} timeout; {} empty polls)",
        stats.records,
        stats.bytes,
        started.elapsed(),
        stats.sleeps,
        stats.timeouts,
        stats.empty_polls
    );
}

fn killed_mid_stream() {
    killed(false);
    killed(true);
}

/// Kills the child after `BEFORE_KILL` records. With `backlog`, the parent first stops
/// consuming until records are waiting, so the kill leaves published records to drain.
/// Without, another thread kills the child while this one keeps consuming, so the child dies
/// streaming (mid-record or mid-batch, with unpublished bytes in the ring).
fn killed(backlog: bool) {
    const BEFORE_KILL: u64 = 50_000;
    let (region, mut rx, wake) = engine_region("killed", 16 << 10);
    let payload = Payload::Varying {
        max: (16 << 10) / 2 - 8,
    };
    let mut child = spawn_producer(&region, &wake, 0, payload);
    let before = consume(
        &mut rx,
        &wake,
        Reading::verified(payload),
        0,
        BEFORE_KILL,
        |_| true,
    );
    assert_eq!(before.records, BEFORE_KILL);
    let (status, after) = if backlog {
        let deadline = Instant::now() + DEADLINE;
        while rx.is_empty() {
            assert!(Instant::now() < deadline, "child published nothing");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
        child.kill().expect("SIGKILL the child");
        let status = wait_exit(&mut child);
        let after = consume(
            &mut rx,
            &wake,
            Reading::verified(payload),
            BEFORE_KILL,
            u64::MAX,
            |_| false,
        );
        assert!(
            after.records > 0,
            "published records survive their producer"
        );
        (status, after)
    } else {
        let dead = Arc::new(AtomicBool::new(false));
        let killer = std::thread::spawn({
            let dead = dead.clone();
            move || {
                std::thread::sleep(Duration::from_millis(30));
                child.kill().expect("SIGKILL the child");
                let status = wait_exit(&mut child);
                dead.store(true, Ordering::Release);
                status
            }
        });
        let after = consume(
            &mut rx,
            &wake,
            Reading::verified(payload),
            BEFORE_KILL,
            u64::MAX,
            |_| !dead.load(Ordering::Acquire),
        );
        (killer.join().expect("killer thread"), after)
    };
    assert!(!status.success(), "child was killed: {status}");
    // Everything published before the kill was whole and in order (consume checked each
    // byte); the ring is now empty, not corrupt.
    assert_eq!(rx.peek().expect("ring not corrupt after the kill"), None);
    assert!(rx.is_empty());
    assert!(
        !region.client_closed(),
        "a killed client cannot have closed"
    );
    let heartbeat = region.heartbeat_client();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        region.heartbeat_client(),
        heartbeat,
        "dead client's heartbeat moved"
    );
    println!(
        "killed_mid_stream ({}): {} records verified after the first {BEFORE_KILL}, ring intact",
        if backlog {
            "killed with a backlog, drained after the kill"
        } else {
            "killed while streaming"
        },
        after.records,
    );
}

fn bench(records: u64) {
    let (region, mut rx, wake) = engine_region("bench", RegionSpec::default().submit_ring_bytes);
    let payload = Payload::Fixed(64);
    let mut child = spawn_producer(&region, &wake, records, payload);
    // Time from the first record to the last, so process start-up is not counted.
    // Empty polls spun through before sleeping (an idle strategy's spin phase).
    let spins: u32 = std::env::var(BENCH_SPINS).map_or(0, |s| s.parse().expect(BENCH_SPINS));
    let first = consume(&mut rx, &wake, Reading::verified(payload), 0, 1, |_| true);
    let how = Reading {
        payload,
        verify_bytes: false,
        spins_before_sleep: spins,
    };
    let started = Instant::now();
    let stats = consume(&mut rx, &wake, how, 1, records, |_| true);
    let elapsed = started.elapsed();
    assert!(wait_exit(&mut child).success());
    assert_eq!(first.records + stats.records, records);
    println!(
        "bench: {} records of 64 B through a 1 MiB ring in {:.3?}: {:.0} records/s \
         ({} sleeps, {} timeouts, {} empty polls, {spins} spins before sleeping; \
         publish every {PUBLISH_BATCH})",
        stats.records,
        elapsed,
        stats.records as f64 / elapsed.as_secs_f64(),
        stats.sleeps,
        stats.timeouts,
        stats.empty_polls
    );
}
