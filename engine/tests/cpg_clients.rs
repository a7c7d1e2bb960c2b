//! Clients on real engines: the `ringcast` crate talking to
//! `ringcastd` processes through the control socket and the shared-memory rings.
//! Other members are separate processes (`ringcast listen`), so that they have their
//! own pids and can be killed with SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Cluster, EVENT_TIMEOUT, FORM_TIMEOUT, cli_bin, connect_to, free_port, retry, wait_for,
};
use ringcast::{
    Address, ConnectOptions, Cpg, Dispatch, Event, Guarantee, Handler, IterationKind, Status,
    reason,
};

fn connect(cluster: &Cluster, id: u32) -> Cpg {
    connect_to(&cluster.socket(id))
}

/// Starts a one-engine cluster and waits for its ring.
fn start_one(cluster: &mut Cluster) {
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
}

/// A client of engine 1 that joined `group` and saw its own JOIN confchg.
fn joined(cluster: &Cluster, group: &[u8]) -> Cpg {
    let cpg = connect(cluster, 1);
    retry(|| cpg.join(group));
    next_confchg(&cpg);
    cpg
}

/// The next group event (totem confchgs skipped), or a panic after the timeout.
fn next_group_event(cpg: &Cpg) -> Event {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match cpg.next_event(Some(left)).expect("next_event") {
            Some(Event::TotemConfchg { .. }) => continue,
            Some(e) => return e,
            None => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }
}

/// Skips events until a confchg; returns (members, left, joined).
fn next_confchg(cpg: &Cpg) -> (Vec<Address>, Vec<Address>, Vec<Address>) {
    loop {
        if let Event::Confchg {
            members,
            left,
            joined,
            ..
        } = next_group_event(cpg)
        {
            return (members, left, joined);
        }
    }
}

fn member_pairs(list: &[Address]) -> Vec<(u32, u32, u32)> {
    list.iter().map(|a| (a.node, a.pid, a.reason)).collect()
}

/// `ringcast listen GROUP` as a separate member process; prints one line per event.
struct Listener {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Listener {
    fn spawn(cluster: &Cluster, id: u32, group: &str) -> Listener {
        let mut child = Command::new(cli_bin())
            .args(["listen", group, "--socket"])
            .arg(cluster.socket(id))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringcast listen");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listener { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines until one contains `needle` (panics after the timeout).
    fn wait_line(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("listener never printed {needle:?}; saw {seen:?}"),
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// docs/cpg.md §5.2 (the joiner gets its own join confchg), §5.3 (LEAVE and PROCDOWN,
/// the leaver gets its own leave confchg), §5.4 (self-delivery, per-sender FIFO),
/// §13.2 (a leave resets the connection: it can join again).
#[test]
fn join_send_leave_and_procdown_on_one_host() {
    let mut cluster = Cluster::new("cpg1", free_port(1), 1);
    start_one(&mut cluster);
    let me = std::process::id();
    let a = connect(&cluster, 1);
    assert_eq!(a.local_node().unwrap(), 1);
    retry(|| a.join(b"g1"));
    let (members, left, joined) = next_confchg(&a);
    assert_eq!(member_pairs(&members), vec![(1, me, 0)]);
    assert!(left.is_empty());
    assert_eq!(member_pairs(&joined), vec![(1, me, reason::JOIN)]);

    // A second member, in its own process.
    let mut other = Listener::spawn(&cluster, 1, "g1");
    let other_pid = other.pid();
    let (members, _, joined) = next_confchg(&a);
    let mut expected = vec![(1, me, 0), (1, other_pid, 0)];
    expected.sort();
    assert_eq!(member_pairs(&members), expected);
    assert_eq!(member_pairs(&joined), vec![(1, other_pid, reason::JOIN)]);
    assert_eq!(
        a.membership(b"g1").unwrap().len(),
        2,
        "membership_get lists both"
    );

    // Self-delivery in per-sender FIFO order; the other member receives them too.
    for i in 0..200u32 {
        retry(|| a.mcast(Guarantee::Agreed, format!("m{i}").as_bytes()));
    }
    for i in 0..200u32 {
        match next_group_event(&a) {
            Event::Deliver {
                node,
                pid,
                msg,
                group,
            } => {
                assert_eq!((node, pid), (1, me));
                assert_eq!(group, b"g1");
                assert_eq!(msg, format!("m{i}").as_bytes());
            }
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    other.wait_line("m199");

    // kill -9 of a member: PROCDOWN.
    other.kill9();
    let (members, left, joined) = next_confchg(&a);
    assert_eq!(member_pairs(&members), vec![(1, me, 0)]);
    assert_eq!(member_pairs(&left), vec![(1, other_pid, reason::PROCDOWN)]);
    assert!(joined.is_empty());

    // Leave: the leaver gets its own confchg, then can join again (quirk fixed).
    assert_eq!(
        a.leave(b"other").unwrap_err().status(),
        Status::NotExist,
        "leave validates the name (docs/cpg.md §13 quirk 7)"
    );
    retry(|| a.leave(b"g1"));
    let (members, left, _) = next_confchg(&a);
    assert!(members.is_empty());
    assert_eq!(member_pairs(&left), vec![(1, me, reason::LEAVE)]);
    retry(|| a.join(b"g1"));
    let (_, _, joined) = next_confchg(&a);
    assert_eq!(member_pairs(&joined), vec![(1, me, reason::JOIN)]);
    assert_eq!(
        a.join(b"g2").unwrap_err().status(),
        Status::Exist,
        "one group per handle (docs/cpg.md §3 cpg_join)"
    );
    assert_eq!(
        a.join(b"").unwrap_err().status(),
        Status::InvalidParam,
        "empty names are refused (docs/cpg.md §13 / §5.3)"
    );
    assert_eq!(
        a.join(&[b'x'; 129]).unwrap_err().status(),
        Status::NameTooLong
    );
    let groups = a.iterate(IterationKind::NameOnly, None).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group, b"g1");
    a.finalize().unwrap();
    assert_eq!(a.local_node().unwrap_err().status(), Status::BadHandle);
}

struct Counting {
    delivered: usize,
    confchgs: usize,
}

impl Handler for Counting {
    fn deliver(&mut self, cpg: &Cpg, _group: &[u8], _node: u32, _pid: u32, _msg: &[u8]) {
        // Callbacks may call the handle (docs/cpg.md §12).
        assert_eq!(cpg.local_node().unwrap(), 1);
        self.delivered += 1;
    }
    fn confchg(
        &mut self,
        cpg: &Cpg,
        group: &[u8],
        _members: &[Address],
        _left: &[Address],
        _joined: &[Address],
    ) {
        assert!(!cpg.membership(group).unwrap().is_empty());
        self.confchgs += 1;
    }
}

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

/// docs/cpg.md §4: the four dispatch modes, and the fd readable exactly when events wait.
#[test]
fn dispatch_modes_and_the_pollable_fd() {
    let mut cluster = Cluster::new("cpg2", free_port(1), 1);
    start_one(&mut cluster);
    let cpg = connect(&cluster, 1);
    let mut h = Counting {
        delivered: 0,
        confchgs: 0,
    };
    // Nothing pending yet (a totem confchg may be: drain first).
    cpg.dispatch(Dispatch::All, &mut h).unwrap();
    assert!(
        !readable(cpg.as_raw_fd(), 0),
        "fd idle when nothing is pending"
    );
    assert_eq!(
        cpg.dispatch(Dispatch::OneNonBlocking, &mut h)
            .unwrap_err()
            .status(),
        Status::TryAgain
    );
    retry(|| cpg.join(b"modes"));
    // One waits for the join confchg.
    cpg.dispatch(Dispatch::One, &mut h).unwrap();
    assert_eq!(h.confchgs, 1);
    for i in 0..10u8 {
        retry(|| cpg.mcast(Guarantee::Safe, &[i; 100]));
    }
    assert!(
        readable(cpg.as_raw_fd(), 10_000),
        "fd readable once deliveries are pending"
    );
    wait_for(EVENT_TIMEOUT, || {
        cpg.dispatch(Dispatch::All, &mut h).unwrap();
        h.delivered == 10
    });
    assert_eq!(h.delivered, 10);
    assert!(!readable(cpg.as_raw_fd(), 0), "fd idle after ALL drained");
    // OneNonBlocking handles one at a time.
    retry(|| cpg.mcast(Guarantee::Agreed, b"x"));
    assert!(readable(cpg.as_raw_fd(), 10_000));
    cpg.dispatch(Dispatch::OneNonBlocking, &mut h).unwrap();
    assert_eq!(h.delivered, 11);
    // A poller taking one event per wake-up: the fd stays readable while any are left
    // (the client signals itself once, not on every dispatch, so this is the case
    // that could lose a wake-up), and goes idle after the last.
    for i in 0..20u8 {
        retry(|| cpg.mcast(Guarantee::Agreed, &[i]));
    }
    for n in 1..=20 {
        assert!(
            readable(cpg.as_raw_fd(), 10_000),
            "fd readable with {} deliveries left",
            21 - n
        );
        cpg.dispatch(Dispatch::OneNonBlocking, &mut h).unwrap();
        assert_eq!(h.delivered, 11 + n);
    }
    assert!(!readable(cpg.as_raw_fd(), 0), "fd idle after the last one");
    // The same after a blocking One that the engine woke: it takes one of a batch
    // published at once (the engine is stopped while they are sent), and the fd must
    // stay readable for the rest although the engine's signal was consumed.
    cluster.daemon(1).signal(libc::SIGSTOP);
    for i in 0..20u8 {
        cpg.mcast(Guarantee::Agreed, &[i]).unwrap();
    }
    let engine = cluster.daemon(1);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            engine.signal(libc::SIGCONT);
        });
        cpg.dispatch(Dispatch::One, &mut h).unwrap();
    });
    assert_eq!(h.delivered, 32);
    while h.delivered < 51 {
        assert!(
            readable(cpg.as_raw_fd(), 10_000),
            "fd readable with {} deliveries left",
            51 - h.delivered
        );
        cpg.dispatch(Dispatch::OneNonBlocking, &mut h).unwrap();
    }
    assert!(!readable(cpg.as_raw_fd(), 0), "fd idle after the last one");
    // Blocking returns when the handle is finalized from another thread.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            cpg.finalize().unwrap();
        });
        let mut h2 = Counting {
            delivered: 0,
            confchgs: 0,
        };
        let err = cpg.dispatch(Dispatch::Blocking, &mut h2).unwrap_err();
        assert_eq!(err.status(), Status::BadHandle);
    });
}

/// The pollable fd under tokio's `AsyncFd`: one task waits for readiness and
/// dispatches without blocking, clearing readiness only when nothing was pending (tokio's
/// rule), while another thread sends; every message arrives.
#[test]
fn the_fd_works_with_tokio_async_fd() {
    struct Fd(std::os::fd::RawFd);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0
        }
    }
    let mut cluster = Cluster::new("cpg10", free_port(1), 1);
    start_one(&mut cluster);
    let cpg = connect(&cluster, 1);
    retry(|| cpg.join(b"tokio"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap();
    let mut h = Counting {
        delivered: 0,
        confchgs: 0,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300u32 {
                retry(|| cpg.mcast(Guarantee::Agreed, &i.to_le_bytes()));
                if i % 25 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        runtime.block_on(async {
            // SAFETY: the fd is the handle's epoll fd, open and the same for as long as
            // `cpg` lives, which outlives this AsyncFd (dropped at the end of the block).
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    Fd(cpg.as_raw_fd()),
                    tokio::io::Interest::READABLE,
                )
            }
            .unwrap();
            let all = tokio::time::timeout(EVENT_TIMEOUT, async {
                while h.delivered < 300 {
                    let mut ready = fd.readable().await.unwrap();
                    match cpg.dispatch(Dispatch::OneNonBlocking, &mut h) {
                        Ok(()) => {}
                        Err(e) if e.status() == Status::TryAgain => ready.clear_ready(),
                        Err(e) => panic!("dispatch: {e}"),
                    }
                }
            })
            .await;
            assert!(all.is_ok(), "{} of 300 within the timeout", h.delivered);
        });
    });
    assert_eq!(h.delivered, 300);
    assert_eq!(h.confchgs, 1, "the join");
}

/// Back-pressure: with the engine stopped, a sender fills its ring and gets
/// TRY_AGAIN; nothing accepted is lost once the engine runs again.
#[test]
fn a_full_ring_gives_try_again_and_loses_nothing() {
    let mut cluster = Cluster::new("cpg3", free_port(1), 1);
    start_one(&mut cluster);
    let cpg = joined(&cluster, b"bp");
    cluster.daemon(1).signal(libc::SIGSTOP);
    let mut accepted = 0u32;
    let refused = loop {
        match cpg.mcast(Guarantee::Agreed, &accepted.to_le_bytes().repeat(256)) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "the ring never filled");
    };
    cluster.daemon(1).signal(libc::SIGCONT);
    assert_eq!(refused.status(), Status::TryAgain);
    assert!(accepted > 100, "only {accepted} fitted");
    for i in 0..accepted {
        match next_group_event(&cpg) {
            Event::Deliver { msg, .. } => {
                assert_eq!(&msg[..4], &i.to_le_bytes(), "message {i} of {accepted}")
            }
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
}

/// A session opened by hand (no client crate): the socket, the Welcome and its fds.
fn raw_session(
    cluster: &Cluster,
) -> (
    ringcast_shm::socket::SeqPacket,
    ringcast_shm::proto::Welcome,
    Vec<std::os::fd::OwnedFd>,
) {
    use ringcast_shm::proto::{Request, Welcome};
    let socket = ringcast_shm::socket::SeqPacket::connect(&cluster.socket(1)).unwrap();
    socket.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    socket
        .send(
            &Request::Hello {
                version: ringcast_shm::proto::PROTOCOL_VERSION,
                pid: 1,
            }
            .encode(),
            &[],
        )
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, fds) = socket.recv(&mut buf).unwrap().unwrap();
    let welcome = Welcome::decode(&buf[..n]).unwrap();
    assert_eq!(welcome.status, ringcast_shm::proto::Status::Ok);
    (socket, welcome, fds)
}

/// Puts one submit record of `kind` on a raw session's ring, asks for a join (the engine
/// drains the ring first and finds the record) and checks the session was closed
/// instead of answered: EOF, or a reset when the engine closed with the join unread.
fn expect_closed_for(
    socket: &ringcast_shm::socket::SeqPacket,
    region: std::os::fd::OwnedFd,
    kind: u32,
    record: &[u8],
    what: &str,
) {
    let region = ringcast_shm::Region::open(region).unwrap();
    let mut submit = region.submit_producer().unwrap();
    submit.try_push(kind, &[record]).unwrap();
    let _ = submit.publish(); // the join below wakes the engine anyway
    let _ = socket.send(
        &ringcast_shm::proto::Request::Join {
            flags: 0,
            name: b"h".to_vec(),
        }
        .encode(),
        &[],
    );
    let mut buf = vec![0u8; 65536];
    let answer = socket.recv(&mut buf);
    assert!(
        matches!(&answer, Ok(None))
            || matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "session not closed after {what}: {answer:?}"
    );
}

/// A hostile client that scribbles on its rings: it is cut off; the engine
/// and the other clients carry on.
#[test]
fn a_client_scribbling_on_its_rings_is_cut_off() {
    use ringcast_shm::proto::Request;
    use ringcast_shm::socket::SeqPacket;

    let mut cluster = Cluster::new("cpg4", free_port(1), 1);
    start_one(&mut cluster);
    let good = joined(&cluster, b"h");

    let mut buf = vec![0u8; 65536];
    for round in 0..20u64 {
        let (socket, _, fds) = raw_session(&cluster);
        let region = std::fs::File::from(fds.into_iter().next().unwrap());
        let len = region.metadata().unwrap().len() as usize;
        // SAFETY: a shared mapping of the region file; the engine may write it at the
        // same time, which is exactly the hostile case under test (we only write bytes).
        let mut map = unsafe { memmap2::MmapMut::map_mut(&region) }.unwrap();
        // Garbage over the rings (control blocks and data, round 0..9) or over
        // everything, the header included (10..19).
        let start = if round < 10 {
            ringcast_shm::layout::SUBMIT_CTRL_OFFSET
        } else {
            0
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round;
        for byte in &mut map[start..len.min(start + (4 << 20))] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        // Ask for a join (the engine drains the ring first and finds the garbage).
        let _ = socket.send(
            &Request::Join {
                flags: 0,
                name: b"h".to_vec(),
            }
            .encode(),
            &[],
        );
        let _ = socket.recv(&mut buf);
        drop(map);
    }
    // Garbage on the socket as well.
    for round in 0..20u8 {
        let socket = SeqPacket::connect(&cluster.socket(1)).unwrap();
        let _ = socket.send(&[round; 37], &[]);
    }

    // A session handing back a delivery pool buffer it was never given is closed; and
    // nobody can map the pool writable.
    {
        let (socket, welcome, mut fds) = raw_session(&cluster);
        assert!(welcome.delivery_pool_bytes > 0);
        assert_eq!(fds.len(), 4);
        let pool = std::fs::File::from(fds.pop().unwrap());
        // SAFETY: a mapping that must fail; nothing would use it.
        let writable = unsafe { memmap2::MmapOptions::new().len(4096).map_mut(&pool) };
        assert!(writable.is_err(), "the delivery pool mapped writable");
        expect_closed_for(
            &socket,
            fds.remove(0),
            ringcast_shm::proto::submit::RELEASE,
            &4096u64.to_le_bytes(),
            "a bogus release",
        );
    }

    // A send buffer reference outside the region's pool closes the session.
    {
        let (socket, _, mut fds) = raw_session(&cluster);
        let region = fds.remove(0);
        let pool_len = ringcast_shm::Region::open(region.try_clone().unwrap())
            .unwrap()
            .pool_len();
        let outside = ringcast_shm::proto::MessageRef {
            guarantee: 2,
            offset: pool_len as u64 - 100,
            len: 101,
        };
        expect_closed_for(
            &socket,
            region,
            ringcast_shm::proto::submit::MCAST_REF,
            &outside.encode(),
            "a reference outside its pool",
        );
    }

    // A guarantee that is no cpg_guarantee_t is INVALID_PARAM on every path: the
    // session is closed for it, whether it comes with a message piece or a send
    // buffer reference (never read as AGREED).
    {
        let (socket, _, mut fds) = raw_session(&cluster);
        let mut piece = vec![0u8; ringcast_shm::proto::PartHeader::BYTES + 8];
        ringcast_shm::proto::PartHeader {
            a: 7,
            b: 0,
            flags: ringcast_shm::proto::PART_FIRST | ringcast_shm::proto::PART_LAST,
            c: 0,
            total_len: 8,
        }
        .write(&mut piece);
        expect_closed_for(
            &socket,
            fds.remove(0),
            ringcast_shm::proto::submit::MCAST_PART,
            &piece,
            "a message piece with guarantee 7",
        );
    }
    {
        let (socket, _, mut fds) = raw_session(&cluster);
        let inside = ringcast_shm::proto::MessageRef {
            guarantee: 7,
            offset: 0,
            len: 8,
        };
        expect_closed_for(
            &socket,
            fds.remove(0),
            ringcast_shm::proto::submit::MCAST_REF,
            &inside.encode(),
            "a send buffer reference with guarantee 7",
        );
    }

    // The engine is up and the good client still works.
    for i in 0..50u32 {
        retry(|| good.mcast(Guarantee::Agreed, &i.to_le_bytes()));
    }
    for i in 0..50u32 {
        match next_group_event(&good) {
            Event::Deliver { msg, .. } => assert_eq!(msg, i.to_le_bytes()),
            Event::Confchg { left, joined, .. } => {
                panic!("no hostile client may have joined: {left:?} {joined:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(cluster.wait_ring(&[1], Duration::from_secs(5)).is_ok());
    assert!(
        wait_for(Duration::from_secs(5), || cluster
            .counter(1, "clients_faulted")
            >= 10),
        "faulted sessions counted: {}",
        cluster.counter(1, "clients_faulted")
    );
}

/// A big message with a checksum in its first 8 bytes (FNV-1a of the rest).
fn checksummed(len: usize, seed: u64) -> Vec<u8> {
    let mut msg = vec![0u8; len];
    let mut x = seed | 1;
    for chunk in msg[8..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let sum = fnv(&msg[8..]);
    msg[..8].copy_from_slice(&sum.to_le_bytes());
    msg
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The delivery pool: a large local multicast is copied from the submit ring into the
/// engine's shared pool, sent by Totem from there and read there by local receivers;
/// the buffer comes back when read. With a 4 MiB pool a session may
/// hold 1 MiB of it, so 100 messages of 256 KiB read one by one all travel by pool only
/// if every buffer is handed back; 20 sent before any is read take 4 pool buffers and
/// go inline after that, in order, nothing lost.
#[test]
fn large_deliveries_travel_through_the_pool_and_come_back() {
    let mut cluster = Cluster::new("cpg9", free_port(1), 1);
    let config = cluster.dir.join("pool.toml");
    std::fs::write(
        &config,
        "[ipc]\ndelivery_pool_bytes = 4194304\ndelivery_pool_min_bytes = 8192\n",
    )
    .unwrap();
    cluster.extra = vec!["-c".into(), config.display().to_string()];
    start_one(&mut cluster);
    let cpg = joined(&cluster, b"pool");
    // A counter reaches `value` (the stats page is written every few milliseconds).
    let expect = |name: &str, value: u64| {
        let ok = wait_for(EVENT_TIMEOUT, || cluster.counter(1, name) == value);
        assert!(ok, "{name} = {}, not {value}", cluster.counter(1, name));
    };
    let check = |event: Event, seed: u64| match event {
        Event::Deliver { msg, .. } => {
            assert_eq!(msg, checksummed(256 << 10, seed), "message {seed}");
        }
        other => panic!("unexpected {other:?}"),
    };
    for i in 0..100u64 {
        retry(|| cpg.mcast(Guarantee::Agreed, &checksummed(256 << 10, i)));
        check(next_group_event(&cpg), i);
    }
    // Small messages stay inline.
    retry(|| cpg.mcast(Guarantee::Agreed, b"small"));
    assert!(matches!(next_group_event(&cpg), Event::Deliver { msg, .. } if msg == b"small"));
    expect("pool_descriptors", 100);
    // Sent from the pool and delivered from where it was sent: no copy at delivery.
    assert_eq!(cluster.counter(1, "pool_sent"), 100);
    assert_eq!(cluster.counter(1, "pool_placed"), 0);
    assert_eq!(cluster.counter(1, "pool_inline_fallbacks"), 0);
    // One engine copy of each large payload in all (submit ring -> pool); Totem packed
    // them by reference. The slack is the small message and CPG's own messages.
    let large = 100 * (256 << 10);
    let copied = cluster.counter(1, "payload_bytes_copied");
    assert!(
        (large..large + (64 << 10)).contains(&copied),
        "{copied} bytes copied for {large} bytes sent"
    );
    assert!(cluster.counter(1, "bytes_packed_by_reference") >= large);

    for i in 100..120u64 {
        retry(|| cpg.mcast(Guarantee::Agreed, &checksummed(256 << 10, i)));
    }
    // All 20 delivered (placed or inline) before the first is read.
    let ok = wait_for(EVENT_TIMEOUT, || {
        cluster.counter(1, "pool_descriptors") + cluster.counter(1, "pool_inline_fallbacks") == 120
    });
    assert!(ok, "not all 20 delivered");
    for i in 100..120u64 {
        check(next_group_event(&cpg), i);
    }
    expect("pool_inline_fallbacks", 16);
    assert_eq!(cluster.counter(1, "pool_descriptors"), 104);
    // And everything came back: the next ones use the pool again.
    for i in 120..130u64 {
        retry(|| cpg.mcast(Guarantee::Agreed, &checksummed(256 << 10, i)));
        check(next_group_event(&cpg), i);
    }
    expect("pool_descriptors", 114);
    assert_eq!(cluster.counter(1, "pool_inline_fallbacks"), 16);
}

/// Zero-copy send buffers (`alloc` → write → send): messages larger than one
/// submit-ring record are written in place into the connection's send buffers (by
/// `alloc` + `mcast_buffer` and by `mcast_with`), arrive intact, and cost one engine
/// copy each (none in the library); 40 MiB go through the 16 MiB of buffers, so they
/// are given back as the engine takes them.
#[test]
fn send_buffers_are_written_in_place_and_reused() {
    let mut cluster = Cluster::new("cpg11", free_port(1), 1);
    start_one(&mut cluster);
    let sender = joined(&cluster, b"zcb");
    assert_eq!(sender.send_buffer_capacity(), 16 << 20);
    let len = 1 << 20;
    assert!(sender.max_in_place_message() >= len);
    let copied_before = cluster.counter(1, "payload_bytes_copied");
    for i in 0..40u64 {
        let message = checksummed(len, i);
        if i % 2 == 0 {
            send_in_buffer(&sender, &message);
        } else {
            retry(|| {
                sender.mcast_with(Guarantee::Agreed, len, |buf| buf.copy_from_slice(&message))
            });
        }
    }
    for i in 0..40u64 {
        match next_group_event(&sender) {
            Event::Deliver { msg, .. } => assert!(msg == checksummed(len, i), "message {i}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let ok = wait_for(EVENT_TIMEOUT, || {
        cluster.counter(1, "send_buffer_messages") == 40
    });
    assert!(
        ok,
        "{} messages by reference",
        cluster.counter(1, "send_buffer_messages")
    );
    let copied = cluster.counter(1, "payload_bytes_copied") - copied_before;
    let sent = 40 * len as u64;
    assert!(
        (sent..sent + (64 << 10)).contains(&copied),
        "{copied} bytes copied for {sent} sent"
    );
    // A buffer dropped unsent goes back; one larger than all of them is refused.
    drop(sender.alloc(16 << 20).expect("all buffers free again"));
    let too_big = sender.alloc((16 << 20) + 1).unwrap_err();
    assert_eq!(too_big.status(), ringcast::Status::TooBig);
}

/// `alloc` → write `message` → `mcast_buffer`, retrying on `TryAgain` (the buffer comes
/// back as written) until the timeout.
fn send_in_buffer(cpg: &Cpg, message: &[u8]) {
    let mut buffer = retry(|| cpg.alloc(message.len()));
    buffer.copy_from_slice(message);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut pending = buffer;
    while let Err((e, back)) = cpg.mcast_buffer(Guarantee::Agreed, pending) {
        assert!(e.is_try_again() && Instant::now() < deadline, "{e}");
        pending = back;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts a two-engine cluster and joins `group` with a client on each: (node 1's,
/// node 2's), their join confchgs read.
fn two_members(cluster: &mut Cluster, group: &[u8]) -> (Cpg, Cpg) {
    cluster.start_all();
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    let sender = connect(cluster, 1);
    let receiver = connect(cluster, 2);
    retry(|| receiver.join(group));
    next_confchg(&receiver);
    retry(|| sender.join(group));
    next_confchg(&sender);
    next_confchg(&receiver);
    (sender, receiver)
}

/// `sender` multicasts checksummed messages `seeds` of `len` bytes, one at a time; each
/// must reach `receiver` and `sender` intact before the next.
fn send_and_check(sender: &Cpg, receiver: &Cpg, len: usize, seeds: std::ops::Range<u64>) {
    for i in seeds {
        retry(|| sender.mcast(Guarantee::Agreed, &checksummed(len, i)));
        for cpg in [receiver, sender] {
            match next_group_event(cpg) {
                Event::Deliver { msg, .. } => assert!(msg == checksummed(len, i), "message {i}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Datagrams from another node are received straight into the delivery pool (io_uring
/// provided buffers there): their messages reach local clients as descriptors into the
/// buffer the kernel wrote, with no copy in the receiving engine.
#[test]
fn remote_messages_are_read_where_the_kernel_put_them() {
    let mut cluster = Cluster::new("cpg12", free_port(2), 2);
    cluster.extra = vec!["--datagram-bytes".into(), "65000".into()];
    let (sender, receiver) = two_members(&mut cluster, b"far");
    let copied_before = cluster.counter(2, "payload_bytes_copied");
    let placed_before = cluster.counter(2, "pool_placed");
    send_and_check(&sender, &receiver, 32 << 10, 0..50);
    let ok = wait_for(EVENT_TIMEOUT, || {
        cluster.counter(2, "pool_descriptors") >= 50
    });
    assert!(ok, "{} descriptors", cluster.counter(2, "pool_descriptors"));
    let in_pool = cluster.counter(2, "datagrams_in_pool");
    assert!(in_pool >= 50, "{in_pool} datagrams kept in the pool");
    assert_eq!(
        cluster.counter(2, "pool_placed"),
        placed_before,
        "copied into the pool"
    );
    let copied = cluster.counter(2, "payload_bytes_copied") - copied_before;
    assert!(copied < 4096, "the receiving engine copied {copied} bytes");

    // Larger than a datagram: joined once, in the pool, where node 2's client reads it.
    let copied_before = cluster.counter(2, "payload_bytes_copied");
    let descriptors = cluster.counter(2, "pool_descriptors");
    let len = 1 << 20;
    send_and_check(&sender, &receiver, len, 0..10);
    assert!(wait_for(EVENT_TIMEOUT, || {
        cluster.counter(2, "pool_descriptors") == descriptors + 10
    }));
    assert_eq!(
        cluster.counter(2, "pool_placed"),
        placed_before,
        "copied into the pool"
    );
    let copied = cluster.counter(2, "payload_bytes_copied") - copied_before;
    let sent = 10 * len as u64;
    assert!(
        (sent..sent + 4096).contains(&copied),
        "node 2 copied {copied} bytes of {sent} (one reassembly copy each expected)"
    );
}

/// `send_zerocopy_bytes`: large datagrams go out with `SENDMSG_ZC`; each send's slot is
/// kept until the kernel's notification (more sends than the engine has slots, so a
/// slot kept forever would stall it), and everything arrives intact.
#[test]
fn zero_copy_sends_deliver_and_release_their_buffers() {
    let mut cluster = Cluster::new("cpg14", free_port(2), 2);
    cluster.extra = vec![
        "--datagram-bytes".into(),
        "65000".into(),
        "--set".into(),
        "send_zerocopy_bytes=16384".into(),
    ];
    let (sender, receiver) = two_members(&mut cluster, b"zc");
    send_and_check(&sender, &receiver, 32 << 10, 0..1200);
    let zerocopy = cluster.counter(1, "sends_zerocopy");
    assert!(zerocopy >= 1200, "{zerocopy} zero-copy sends");
    // On loopback the kernel copies later; it says so for each (or some) of them.
    assert!(cluster.counter(1, "sends_zerocopy_copied") <= zerocopy);
    assert_eq!(cluster.counter(1, "send_errors"), 0);
}

/// Trusted senders (`ipc.trusted_senders`): a message written with `alloc` →
/// `mcast_buffer` into the client's slab of the delivery pool is not copied on the host
/// at all (Totem packs it by reference, its delivery is a descriptor to where it was
/// written), and each buffer comes back to the client once nothing holds it: 100
/// messages, 35 MiB in all, through a 16 MiB slab.
#[test]
fn trusted_senders_send_without_any_copy() {
    let mut cluster = Cluster::new("cpg15", free_port(1), 1);
    cluster.extra = vec!["--set".into(), "ipc.trusted_senders=true".into()];
    start_one(&mut cluster);
    let cpg = joined(&cluster, b"trust");
    assert!(cpg.send_buffer_capacity() > (15 << 20));
    let copied_before = cluster.counter(1, "payload_bytes_copied");
    let placed_before = cluster.counter(1, "pool_placed");
    for i in 0..100u64 {
        let len = [5000, 256 << 10, 1 << 20][i as usize % 3];
        let message = checksummed(len, i);
        send_in_buffer(&cpg, &message);
        match next_group_event(&cpg) {
            Event::Deliver { msg, .. } => assert!(msg == message, "message {i}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(wait_for(EVENT_TIMEOUT, || {
        cluster.counter(1, "send_buffer_messages") == 100
    }));
    assert_eq!(cluster.counter(1, "payload_bytes_copied"), copied_before);
    assert_eq!(cluster.counter(1, "pool_placed"), placed_before);
    // Every buffer came back: the whole slab can be taken at once.
    drop(retry(|| cpg.alloc(cpg.send_buffer_capacity())));

    // A reference outside the client's own slab (another client's, or past it) closes
    // that session; the engine and the trusted client carry on.
    let (socket, welcome, mut fds) = raw_session(&cluster);
    assert!(welcome.send_slab_bytes > 0);
    let outside = ringcast_shm::proto::MessageRef {
        guarantee: 2,
        offset: welcome.send_slab_offset + welcome.send_slab_bytes - 100,
        len: 4096,
    };
    expect_closed_for(
        &socket,
        fds.remove(0),
        ringcast_shm::proto::submit::MCAST_POOL_REF,
        &outside.encode(),
        "a reference outside its slab",
    );
    let message = checksummed(5000, 7);
    let mut buffer = retry(|| cpg.alloc(5000));
    buffer.copy_from_slice(&message);
    cpg.mcast_buffer(Guarantee::Agreed, buffer)
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(matches!(next_group_event(&cpg), Event::Deliver { msg, .. } if msg == message));
}

/// Garbage received into the delivery pool (no key, 64 KB datagrams, from a configured
/// node's address): every datagram is counted, none is delivered, the engine carries on
/// and large messages still go through the pool.
#[test]
fn garbage_received_into_the_pool_is_dropped() {
    let mut cluster = Cluster::new("cpg13", free_port(2), 2);
    cluster.extra = vec!["--datagram-bytes".into(), "65000".into()];
    cluster.start(1);
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let cpg = connect(&cluster, 1);
    retry(|| cpg.join(b"junk"));
    next_confchg(&cpg);
    // Node 2's address: listed, so its datagrams get past the source check.
    let socket =
        std::net::UdpSocket::bind(format!("{}:{}", cluster.addr(2), cluster.port)).unwrap();
    let target = format!("{}:{}", cluster.addr(1), cluster.port);
    let before = cluster.counter(1, "packets_in");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let count = 3000u64;
    for i in 0..count {
        let len = [16, 100, 5000, 40_000, 64_000][(next() % 5) as usize];
        let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            // A Totem header that claims a multicast, then garbage.
            datagram[..4].copy_from_slice(&[0x52, 0x43, 1, 2]);
        }
        socket.send_to(&datagram, &target).unwrap();
        if i % 200 == 199 {
            let want = before + i + 1;
            assert!(
                wait_for(EVENT_TIMEOUT, || cluster.counter(1, "packets_in") >= want),
                "the engine stopped taking datagrams"
            );
        }
    }
    assert!(cluster.wait_ring(&[1], Duration::from_secs(5)).is_ok());
    let descriptors = cluster.counter(1, "pool_descriptors");
    for i in 0..20u64 {
        retry(|| cpg.mcast(Guarantee::Agreed, &checksummed(32 << 10, i)));
        match next_group_event(&cpg) {
            Event::Deliver { msg, .. } => assert!(msg == checksummed(32 << 10, i)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(wait_for(EVENT_TIMEOUT, || {
        cluster.counter(1, "pool_descriptors") == descriptors + 20
    }));
}

/// Three engines: one member per node sees the others join (NODEUP-free
/// startup: joins), every member delivers the same messages in the same order, a
/// 64 MiB message arrives intact, a killed engine's member is reported NODEDOWN,
/// and a healed partition reports NODEUP.
#[test]
fn three_engines_order_nodedown_nodeup_and_64_mib() {
    let mut cluster = Cluster::new("cpg5", free_port(3), 3);
    // Large datagrams: the 64 MiB message should take a second, not a minute.
    cluster.extra = vec!["--datagram-bytes".into(), "65000".into()];
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    let me = std::process::id();
    let clients: Vec<Cpg> = (1..=3).map(|id| connect(&cluster, id)).collect();
    for c in &clients {
        retry(|| c.join(b"tri"));
    }
    // Every client eventually sees all three members.
    for c in &clients {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let (members, _, _) = next_confchg(c);
            if members.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline);
        }
    }
    // Each sends 300 messages; everyone delivers the same 900 in the same order.
    for (k, c) in clients.iter().enumerate() {
        for i in 0..300u32 {
            let msg = [k as u8, (i >> 8) as u8, i as u8];
            retry(|| c.mcast(Guarantee::Agreed, &msg));
        }
    }
    let mut orders: Vec<Vec<Vec<u8>>> = Vec::new();
    for c in &clients {
        let mut order = Vec::new();
        while order.len() < 900 {
            match next_group_event(c) {
                Event::Deliver { msg, node, pid, .. } => {
                    assert_eq!(pid, me);
                    assert_eq!(u32::from(msg[0]) + 1, node);
                    order.push(msg);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    for k in 0..3u8 {
        let mine: Vec<u32> = orders[0]
            .iter()
            .filter(|m| m[0] == k)
            .map(|m| (u32::from(m[1]) << 8) | u32::from(m[2]))
            .collect();
        assert_eq!(mine, (0..300).collect::<Vec<_>>(), "FIFO of sender {k}");
    }

    // 64 MiB from node 1, checksummed, to everyone.
    let big = checksummed(64 << 20, 7);
    retry(|| clients[0].mcast(Guarantee::Agreed, &big));
    for c in &clients {
        match next_group_event(c) {
            Event::Deliver { msg, node, .. } => {
                assert_eq!(node, 1);
                assert_eq!(msg.len(), 64 << 20);
                assert_eq!(
                    u64::from_le_bytes(msg[..8].try_into().unwrap()),
                    fnv(&msg[8..]),
                    "64 MiB message corrupted"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(big);

    // kill -9 of engine 3: its member is NODEDOWN for the others.
    cluster.kill9(3);
    for c in &clients[..2] {
        let (members, left, _) = next_confchg(c);
        assert_eq!(members.len(), 2);
        assert_eq!(member_pairs(&left), vec![(3, me, reason::NODEDOWN)]);
    }

    // Partition 1 | 2 (the engines' drop rule), then heal: NODEDOWN, then NODEUP.
    let drop_from = |cluster: &mut Cluster, id: u32, nodes: &[u32]| {
        let list: Vec<String> = nodes.iter().map(u32::to_string).collect();
        std::fs::write(cluster.state_dir(id).join("drop_nodes"), list.join(",")).unwrap();
        cluster.daemon(id).signal(libc::SIGUSR1);
    };
    drop_from(&mut cluster, 1, &[2]);
    drop_from(&mut cluster, 2, &[1]);
    for (k, c) in clients[..2].iter().enumerate() {
        let other = 2 - k as u32;
        let (members, left, _) = next_confchg(c);
        assert_eq!(member_pairs(&members), vec![(k as u32 + 1, me, 0)]);
        assert_eq!(member_pairs(&left), vec![(other, me, reason::NODEDOWN)]);
    }
    drop_from(&mut cluster, 1, &[]);
    drop_from(&mut cluster, 2, &[]);
    for (k, c) in clients[..2].iter().enumerate() {
        let other = 2 - k as u32;
        let (members, _, joined) = next_confchg(c);
        assert_eq!(members.len(), 2);
        assert_eq!(member_pairs(&joined), vec![(other, me, reason::NODEUP)]);
    }
    // And they still agree on order afterwards.
    retry(|| clients[0].mcast(Guarantee::Agreed, b"after"));
    for c in &clients[..2] {
        match next_group_event(c) {
            Event::Deliver { msg, .. } => assert_eq!(msg, b"after"),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(clients);
}

/// The operator CLI: `ringcast groups`, `listen`, `send`.
#[test]
fn the_cli_lists_groups_listens_and_sends() {
    let mut cluster = Cluster::new("cpg6", free_port(1), 1);
    start_one(&mut cluster);
    let listener = Listener::spawn(&cluster, 1, "cli");
    listener.wait_line("confchg group=cli");
    let groups = Command::new(cli_bin())
        .arg("groups")
        .arg("--socket")
        .arg(cluster.socket(1))
        .output()
        .unwrap();
    assert!(groups.status.success());
    let text = String::from_utf8_lossy(&groups.stdout);
    assert!(text.contains("cli"), "{text}");
    assert!(
        text.contains(&format!("node 1 pid {}", listener.pid())),
        "{text}"
    );
    let send = Command::new(cli_bin())
        .args(["send", "cli", "hello there", "--socket"])
        .arg(cluster.socket(1))
        .output()
        .unwrap();
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    listener.wait_line("hello there");
}

/// docs/cpg.md §5.6: with DELIVER_INITIAL_TOTEM_CONF, a joiner gets its join confchg and
/// then a totem confchg describing the current ring.
#[test]
fn initial_totem_conf_follows_the_join() {
    let mut cluster = Cluster::new("cpg7", free_port(1), 1);
    start_one(&mut cluster);
    let cpg = Cpg::connect(&ConnectOptions {
        socket: cluster.socket(1),
        initial_totem_conf: true,
    })
    .unwrap();
    retry(|| cpg.join(b"itc"));
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut saw_join = false;
    loop {
        assert!(Instant::now() < deadline, "no initial totem confchg");
        match cpg.next_event(Some(EVENT_TIMEOUT)).unwrap() {
            Some(Event::Confchg { joined, .. }) => {
                assert_eq!(joined.len(), 1);
                saw_join = true;
            }
            Some(Event::TotemConfchg { members, ring_id }) if saw_join => {
                assert_eq!(members, vec![1]);
                assert_eq!(ring_id.rep, 1);
                break;
            }
            Some(_) => {}
            None => panic!("no event"),
        }
    }
}

/// docs/cpg.md §12: a client sees `CS_ERR_LIBRARY` when its engine dies, and can connect
/// again once the engine is back.
#[test]
fn a_dead_engine_is_reported_and_a_restarted_one_accepts_clients() {
    let mut cluster = Cluster::new("cpg8", free_port(1), 1);
    start_one(&mut cluster);
    let cpg = joined(&cluster, b"restart");
    cluster.kill9(1);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let err = loop {
        match cpg.next_event(Some(Duration::from_millis(200))) {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "engine death never reported"),
        }
    };
    assert_eq!(err.status(), Status::Library, "{err}");
    assert_eq!(
        cpg.membership(b"restart").unwrap_err().status(),
        Status::Library
    );
    cluster.start(1);
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let again = connect(&cluster, 1);
    retry(|| again.join(b"restart"));
    let (members, _, _) = next_confchg(&again);
    assert_eq!(members.len(), 1, "the old member died with its engine");
}

/// The member limit per group is a setting (`ipc.max_members_per_group`, default
/// 1024): a join past it is refused with `CS_ERR_NO_SPACE` and a message naming the
/// setting, and a member leaving makes room again. Members are separate processes
/// (one member per process and group, docs/cpg.md §5.2).
#[test]
fn a_full_group_refuses_a_join_with_a_clear_error() {
    let mut cluster = Cluster::new("cpg16", 47260, 1);
    cluster.extra = vec!["--set".into(), "ipc.max_members_per_group=2".into()];
    start_one(&mut cluster);
    let first = joined(&cluster, b"full");
    let mut second = Listener::spawn(&cluster, 1, "full");
    second.wait_line(&format!("{}:join", second.pid()));
    let (members, _, joined_now) = next_confchg(&first);
    assert_eq!((members.len(), joined_now.len()), (2, 1));

    let send = |group: &str| {
        Command::new(cli_bin())
            .args(["send", group, "hi", "--socket"])
            .arg(cluster.socket(1))
            .output()
            .expect("ringcast send")
    };
    let refused = send("full");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a third member joined: {stderr}");
    assert!(
        stderr.contains("NoSpace") && stderr.contains("ipc.max_members_per_group"),
        "{stderr}"
    );
    // Another group is not affected; the full one has room once a member is gone.
    assert!(send("roomy").status.success());
    second.kill9();
    let (members, left, _) = next_confchg(&first);
    assert_eq!((members.len(), left.len()), (1, 1));
    let admitted = send("full");
    assert!(
        admitted.status.success(),
        "{}",
        String::from_utf8_lossy(&admitted.stderr)
    );
}
