//! `ringcast-bench`: client-level throughput and latency on one host, next to a raw
//! two-process shared-memory ring as the ceiling.
//!
//! It starts its own single-node `ringcastd` (backoff idle strategy, a private socket and
//! state directory, an OS-chosen port) unless `--socket` names a running engine. Every
//! receiver is a separate process (this binary with `--role receiver`).
//!
//! - Throughput: one sender multicasts `--messages` messages of each `--sizes` to a
//!   group with 1..=`--receivers` receivers; the sender writes every byte of every
//!   message (a per-message pattern) and every receiver reads every byte (a sum). The
//!   sender is a member too and drains its own deliveries. Rate = messages / time from
//!   the first send to the last receiver's last delivery.
//! - Latency: one member sends one 64 B message at a time and waits for its own
//!   delivery; an hdrhistogram of send → own delivery.
//! - Raw ring: a producer process and a consumer process on one `ringcast-shm` ring
//!   (same record sizes, same byte writing and reading): the ceiling for this host.
//!
//! `--test` runs every part on tiny inputs (what `make test` does, so it cannot rot).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ringcast::{ConnectOptions, Cpg, Dispatch, Guarantee, Handler};
use ringcast_engine::io::stats::StatsReader;

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-bench",
    about = "ringcast client throughput and latency"
)]
pub(crate) struct Args {
    /// A running engine's socket; default: start a private engine.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Message sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,65536,1048576")]
    sizes: Vec<usize>,
    /// Largest receiver count (1..=N are measured).
    #[arg(long, default_value_t = 4)]
    receivers: usize,
    /// Messages per throughput run (scaled down for large sizes: at most 2 GiB total).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Latency samples.
    #[arg(long, default_value_t = 100_000)]
    samples: u64,
    /// Tiny inputs, for `make test`.
    #[arg(long)]
    test: bool,
    /// A TOML file for the private engine (`ringcastd -c`), e.g. one with
    /// `[ipc] delivery_pool_bytes = 0` to compare inline deliveries.
    #[arg(long)]
    engine_config: Option<PathBuf>,
    #[arg(long, hide = true)]
    role: Option<String>,
    #[arg(long, hide = true)]
    group: Option<String>,
    #[arg(long, hide = true)]
    count: Option<u64>,
    #[arg(long, hide = true)]
    size: Option<usize>,
    #[arg(long, hide = true)]
    fd: Option<i32>,
    #[arg(long, hide = true)]
    wake_fd: Option<i32>,
}

const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    match args.role.as_deref() {
        Some("receiver") => receiver(&args),
        Some("raw-consumer") => raw_consumer(&args),
        Some(other) => {
            eprintln!("unknown role {other}");
            std::process::exit(2);
        }
        None => orchestrate(args),
    }
}

/// A private single-node engine, stopped on drop.
struct Engine {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: signals our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    // Tests run from target/<profile>/deps; binaries live one level up.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found next to {}", exe.display());
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn start_engine(config: Option<&Path>) -> Engine {
    let dir = std::env::temp_dir().join(format!("ringcast-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    let socket = dir.join("ringcast.sock");
    let log = std::fs::File::create(dir.join("engine.log")).expect("log");
    let mut command = Command::new(sibling("ringcastd"));
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    let child = command
        .args(["--port", &free_udp_port().to_string()])
        .args(["--idle", "backoff", "--datagram-bytes", "65000"])
        .arg("--state-dir")
        .arg(&dir)
        .arg("--ipc-socket")
        .arg(&socket)
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn ringcastd");
    let engine = Engine { child, dir, socket };
    let deadline = Instant::now() + GROUP_TIMEOUT;
    while Cpg::connect(&options(&engine.socket)).is_err() {
        assert!(Instant::now() < deadline, "engine did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    engine
}

fn options(socket: &Path) -> ConnectOptions {
    ConnectOptions {
        socket: socket.to_path_buf(),
        initial_totem_conf: false,
    }
}

fn retry<T>(mut f: impl FnMut() -> ringcast::Result<T>) -> T {
    let deadline = Instant::now() + GROUP_TIMEOUT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.is_try_again() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Reads every byte of every delivery; counts them.
struct Reader {
    delivered: u64,
    bytes: u64,
    sum: u64,
    first: Option<Instant>,
}

impl Handler for Reader {
    fn deliver(&mut self, _cpg: &Cpg, _group: &[u8], _node: u32, _pid: u32, msg: &[u8]) {
        self.first.get_or_insert_with(Instant::now);
        self.delivered += 1;
        self.bytes += msg.len() as u64;
        // Reading every byte, eight at a time.
        let mut s = 0u64;
        let mut chunks = msg.chunks_exact(8);
        for c in &mut chunks {
            s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            s = s.wrapping_add(u64::from(b));
        }
        self.sum = self.sum.wrapping_add(s);
    }
}

fn receiver(args: &Args) {
    let socket = args.socket.as_ref().expect("--socket");
    let group = args.group.as_ref().expect("--group");
    let count = args.count.expect("--count");
    let cpg = Cpg::connect(&options(socket)).expect("connect");
    retry(|| cpg.join(group.as_bytes()));
    println!("joined");
    std::io::stdout().flush().ok();
    let mut r = Reader {
        delivered: 0,
        bytes: 0,
        sum: 0,
        first: None,
    };
    while r.delivered < count {
        cpg.dispatch(Dispatch::One, &mut r).expect("dispatch");
    }
    println!("done {} {} {}", r.delivered, r.bytes, r.sum);
}

/// Fills `buf` with a pattern of message `i` (the sender writes every byte).
fn fill(buf: &mut [u8], i: u64) {
    let word = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes();
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word);
    }
    for b in chunks.into_remainder() {
        *b = word[0];
    }
}

struct RunResult {
    msgs_per_s: f64,
    mb_per_s: f64,
    /// Payload copies per message made by the engine (its `payload_bytes_copied`
    /// counter over the bytes sent), when the engine's stats page is known.
    engine_copies: Option<f64>,
    /// Payload copies per message made by the sending client library: 0 when the
    /// message is built in place in the submit ring, 1 when it is too large for that.
    sender_copies: u32,
}

/// The engine's `payload_bytes_copied` counter, read once the page has settled (it is
/// republished every few milliseconds); None if it does not settle within 3 s.
fn engine_bytes_copied(stats: &Path) -> Option<u64> {
    let read = || {
        StatsReader::open(stats)
            .ok()?
            .snapshot()
            .counter("payload_bytes_copied")
    };
    let mut last = read()?;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(30));
        let now = read()?;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    None
}

fn throughput(
    socket: &Path,
    stats: Option<&Path>,
    size: usize,
    receivers: usize,
    count: u64,
) -> RunResult {
    let group = format!("tp-{size}-{receivers}-{}", std::process::id());
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = (0..receivers)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().expect("exe"))
                .args(["--role", "receiver", "--group", &group])
                .args(["--count", &count.to_string()])
                .arg("--socket")
                .arg(socket)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn receiver");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            (child, out)
        })
        .collect();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).expect("receiver output");
        assert_eq!(line.trim(), "joined");
    }
    let cpg = Cpg::connect(&options(socket)).expect("connect");
    retry(|| cpg.join(group.as_bytes()));
    let deadline = Instant::now() + GROUP_TIMEOUT;
    while cpg.membership(group.as_bytes()).expect("membership").len() < receivers + 1 {
        assert!(Instant::now() < deadline, "receivers never joined");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut own = Reader {
        delivered: 0,
        bytes: 0,
        sum: 0,
        first: None,
    };
    let copied_before = stats.and_then(engine_bytes_copied);
    let sender_copies = u32::from(size > cpg.max_in_place_message());
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        match cpg.mcast_with(Guarantee::Agreed, size, |buf| fill(buf, sent)) {
            Ok(()) => sent += 1,
            Err(e) if e.is_try_again() => {
                // Our own deliveries must be drained too, or we would be the slow
                // receiver holding everyone back.
                cpg.dispatch(Dispatch::All, &mut own).expect("dispatch");
                std::thread::yield_now();
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    while own.delivered < count {
        cpg.dispatch(Dispatch::One, &mut own).expect("dispatch");
    }
    for (child, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).expect("receiver result");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"done"), "receiver said {line:?}");
        assert_eq!(fields[1].parse::<u64>().ok(), Some(count));
        assert_eq!(
            fields[3].parse::<u64>().ok(),
            Some(own.sum),
            "payload sums differ"
        );
        child.wait().expect("receiver exit");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let copied_after = stats.and_then(engine_bytes_copied);
    let _ = cpg.leave(group.as_bytes());
    let engine_copies = match (copied_before, copied_after) {
        (Some(a), Some(b)) if size > 0 => {
            Some(b.saturating_sub(a) as f64 / (count as f64 * size as f64))
        }
        _ => None,
    };
    RunResult {
        msgs_per_s: count as f64 / elapsed,
        mb_per_s: (count as f64 * size as f64) / elapsed / 1e6,
        engine_copies,
        sender_copies,
    }
}

fn latency(socket: &Path, samples: u64) -> Histogram<u64> {
    let group = format!("lat-{}", std::process::id());
    let cpg = Cpg::connect(&options(socket)).expect("connect");
    retry(|| cpg.join(group.as_bytes()));
    struct Own {
        got: bool,
    }
    impl Handler for Own {
        fn deliver(&mut self, _: &Cpg, _: &[u8], _: u32, _: u32, _: &[u8]) {
            self.got = true;
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut own = Own { got: false };
    // Warm-up: drain the join confchg and a few round trips.
    for i in 0..(samples + samples / 10 + 10) {
        own.got = false;
        let t0 = Instant::now();
        retry(|| cpg.mcast(Guarantee::Agreed, &[0u8; 64]));
        while !own.got {
            cpg.dispatch(Dispatch::One, &mut own).expect("dispatch");
        }
        if i >= samples / 10 + 10 {
            hist.record(t0.elapsed().as_nanos() as u64).expect("record");
        }
    }
    hist
}

/// Raw ring ceiling: this process produces, a child consumes from the same region.
fn raw_ring(size: usize, count: u64) -> RunResult {
    use ringcast_shm::{EventFd, HugePages, Region, RegionSpec};
    let spec = RegionSpec {
        submit_ring_bytes: 1 << 20,
        event_ring_bytes: 8 << 20,
        pool_bytes: 0,
    };
    let region = Region::create("bench-raw", &spec, HugePages::Try).expect("region");
    let wake = EventFd::new().expect("eventfd");
    // The child inherits the region fd and the eventfd (CLOEXEC cleared on copies).
    let region_fd = dup_inheritable(region.fd().as_raw_fd());
    let wake_fd = dup_inheritable(wake.as_raw_fd());
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--role", "raw-consumer"])
        .args(["--fd", &region_fd.as_raw_fd().to_string()])
        .args(["--count", &count.to_string()])
        .args(["--wake-fd", &wake_fd.as_raw_fd().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn raw consumer");
    drop(region_fd);
    drop(wake_fd);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("consumer ready");
    let mut producer = region.event_producer().expect("producer");
    let max = producer.max_record_len();
    let size = size.min(max);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        match producer.try_push_with(1, size, |buf| fill(buf, sent)) {
            Ok(()) => {
                sent += 1;
                if producer.publish() {
                    let _ = wake.notify();
                }
            }
            Err(_) => std::thread::yield_now(),
        }
    }
    if producer.publish() {
        let _ = wake.notify();
    }
    line.clear();
    out.read_line(&mut line).expect("consumer result");
    child.wait().expect("consumer exit");
    let elapsed = start.elapsed().as_secs_f64();
    RunResult {
        msgs_per_s: count as f64 / elapsed,
        mb_per_s: count as f64 * size as f64 / elapsed / 1e6,
        // The raw ring: the sender writes in place, the consumer reads in place.
        engine_copies: Some(0.0),
        sender_copies: 0,
    }
}

fn dup_inheritable(fd: i32) -> OwnedFd {
    // SAFETY: dup of a descriptor we hold; the result has no CLOEXEC flag.
    let new = unsafe { libc::dup(fd) };
    assert!(new >= 0, "dup failed");
    // SAFETY: `new` was just returned by dup and belongs to nobody else.
    unsafe { OwnedFd::from_raw_fd(new) }
}

fn raw_consumer(args: &Args) {
    use ringcast_shm::{EventFd, Region};
    let count = args.count.expect("--count");
    // SAFETY: the parent passed these descriptors to us by inheritance.
    let region_fd = unsafe { OwnedFd::from_raw_fd(args.fd.expect("--fd")) };
    // SAFETY: as above.
    let wake =
        EventFd::from_owned(unsafe { OwnedFd::from_raw_fd(args.wake_fd.expect("--wake-fd")) });
    let region = Region::open(region_fd).expect("open region");
    let mut consumer = region.event_consumer().expect("consumer");
    println!("ready");
    std::io::stdout().flush().ok();
    let mut got = 0u64;
    let mut sum = 0u64;
    while got < count {
        match consumer.peek().expect("ring") {
            Some(r) => {
                let mut s = 0u64;
                for c in r.payload.chunks(8) {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    s = s.wrapping_add(u64::from_le_bytes(w));
                }
                sum = sum.wrapping_add(s);
                consumer.consume();
                got += 1;
            }
            None => {
                if consumer.prepare_sleep() {
                    let _ = wake.wait(Some(Duration::from_millis(100)));
                    consumer.cancel_sleep();
                    let _ = wake.drain();
                }
            }
        }
    }
    println!("done {got} {sum}");
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{cores} cpus, {cpu}; loadavg at start {}", load.trim())
}

fn orchestrate(args: Args) {
    let (sizes, receivers, messages, samples) = if args.test {
        (vec![64, 70_000], 2, 200u64, 200u64)
    } else {
        (
            args.sizes.clone(),
            args.receivers,
            args.messages,
            args.samples,
        )
    };
    let engine = if args.socket.is_none() {
        Some(start_engine(args.engine_config.as_deref()))
    } else {
        None
    };
    let socket = args
        .socket
        .clone()
        .or_else(|| engine.as_ref().map(|e| e.socket.clone()))
        .expect("socket");
    // The engine we started is the only one writing a stats page in its state dir.
    let stats = engine.as_ref().and_then(|e| {
        std::fs::read_dir(&e.dir)
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("stats_"))
            })
    });
    println!("# ringcast-bench on {}", machine());
    println!(
        "# copies of a payload per message beyond the sender's own write of it into shared memory:"
    );
    println!(
        "#   sender = the client library's (1 when the message is larger than one submit-ring record);"
    );
    println!(
        "#   engine = measured, the engine's payload_bytes_copied counter over the bytes sent (submit"
    );
    println!(
        "#   ring -> pool or heap, packing under pack_by_reference_min, inline deliveries into event rings)."
    );
    println!("#   Receivers read in place (event ring or the read-only delivery pool).");
    println!();
    println!(
        "| size | receivers | ringcast msg/s | ringcast MB/s | raw ring msg/s | raw ring MB/s | ratio | copies: sender | engine |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Progress on stderr (the table on stdout stays clean): one line per measurement.
    let runs = sizes.len() * receivers;
    let started = Instant::now();
    let mut run = 0;
    for &size in &sizes {
        let count = messages.min(((2u64 << 30) / size as u64).max(50));
        let raw = raw_ring(size, count);
        for r in 1..=receivers {
            run += 1;
            eprintln!(
                "[{run}/{runs}] size {size} B, {r} receivers, {count} messages ({:.0} s so far)",
                started.elapsed().as_secs_f64()
            );
            let rc = throughput(&socket, stats.as_deref(), size, r, count);
            let engine_copies = rc
                .engine_copies
                .map_or_else(|| "?".to_string(), |c| format!("{c:.2}"));
            println!(
                "| {size} | {r} | {:.0} | {:.1} | {:.0} | {:.1} | {:.3} | {} | {engine_copies} |",
                rc.msgs_per_s,
                rc.mb_per_s,
                raw.msgs_per_s,
                raw.mb_per_s,
                rc.msgs_per_s / raw.msgs_per_s,
                rc.sender_copies,
            );
        }
    }
    eprintln!("[latency] {samples} samples of 64 B");
    let hist = latency(&socket, samples);
    println!();
    println!(
        "latency send -> own delivery, 64 B, {} samples (µs): p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        hist.len(),
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.9) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.value_at_quantile(0.999) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
    drop(engine);
}
