//! `make chaos`: a real-process soak. `CHAOS_NODES` (3–5, default 3) `ringcastd` engines
//! in network namespaces the test creates and removes, with clients sending on several
//! groups, run under random faults for `CHAOS_SECONDS` (default 60): `kill -9` and
//! restart of engines (all but node 1's, which holds the client that never reads),
//! `kill -9` and restart of client processes, partitions and heals (a node's bridge
//! port down and up), loss and duplication on a node's link (nftables:
//! the kernels this runs on have no `tc netem`, so no delay or reordering beyond what
//! the other faults cause), a client that never reads its events, and a client that
//! writes garbage into its submit ring (records, indexes, control block). `CHAOS_SEED`
//! makes the fault schedule reproducible (the processes' timing still varies); without
//! it the seed comes from the clock and is printed.
//!
//! Checked afterwards:
//! - every engine's delivery log (the engines' own generated load) with the simulator's
//!   checkers: agreed order, virtual synchrony, per-sender FIFO, no duplicates,
//!   integrity, self-delivery, configuration agreement, liveness once faults stop
//!   (docs/invariants.md);
//! - what the clients delivered, per group: agreed order between any two connections,
//!   per-sender FIFO, no duplicate, nothing that was not sent, and every message a
//!   connection that lived to the end sent delivered back to it.
//!
//! - the client that writes garbage is cut off each time (its socket closed by the
//!   engine, which says why in its log), and no other client is harmed (the checks above).
//!
//! The run ends with one summary line: `chaos: seed S, ... violations: N`. Skipped,
//! saying so, without root or network namespaces.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::checked::with_checked_load;
use common::netns::{Netns, ip};
use common::*;
use ringcast::{ConnectOptions, Cpg, Event, Guarantee};
use ringcast_engine::splitmix::splitmix64;

/// Groups the clients send on; every node has one sending client in each (but see
/// [`run_silent_client`]).
const GROUPS: usize = 3;
/// How often each client multicasts.
const SEND_EVERY: Duration = Duration::from_millis(10);
/// Generated messages per second per engine (checked from the delivery logs).
const LOAD_RATE: u64 = 100;

struct Settings {
    seed: u64,
    seconds: u64,
    nodes: u32,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let seed = match var("CHAOS_SEED") {
        Some(v) => v.parse().expect("CHAOS_SEED: an unsigned integer"),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let seconds = var("CHAOS_SECONDS").map_or(60, |v| v.parse().expect("CHAOS_SECONDS: seconds"));
    let nodes = var("CHAOS_NODES").map_or(3, |v| v.parse().expect("CHAOS_NODES: 3 to 5"));
    assert!((3..=5).contains(&nodes), "CHAOS_NODES must be 3 to 5");
    Settings {
        seed,
        seconds,
        nodes,
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        splitmix64(&mut self.0) % n.max(1)
    }

    /// A duration between `lo` and `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------
// Clients

/// One connection of a chaos client, from connect to its end: what it sent (accepted
/// by `mcast`) and what it delivered, in order.
struct Connection {
    /// `client.incarnation`: names the sender in payloads.
    name: String,
    group: usize,
    sent: Vec<u64>,
    delivered: Vec<(String, u64)>,
    /// Still connected when the run ended (its engine was never lost under it).
    lived_to_end: bool,
}

/// What the test tells its client threads.
struct Control {
    /// Stop sending (the end of the run).
    quiet: AtomicBool,
    /// Close the connection and end the thread.
    stop: AtomicBool,
}

fn payload(name: &str, seq: u64) -> Vec<u8> {
    format!("chaos {name} {seq}").into_bytes()
}

fn parse(msg: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut words = text.split(' ');
    (words.next()? == "chaos").then_some(())?;
    let name = words.next()?.to_owned();
    let seq = words.next()?.parse().ok()?;
    Some((name, seq))
}

/// A client of `socket` in group `chaos-<group>`: connects (again after its engine is
/// lost), sends every [`SEND_EVERY`] and records everything; each connection is one
/// [`Connection`] in `out`.
fn run_client(
    client: usize,
    group: usize,
    socket: PathBuf,
    control: Arc<Control>,
    out: Arc<Mutex<Vec<Connection>>>,
) {
    let name = format!("chaos-{group}");
    let mut incarnation = 0;
    while !control.stop.load(Ordering::Acquire) {
        let options = ConnectOptions {
            socket: socket.clone(),
            initial_totem_conf: false,
        };
        let Ok(cpg) = Cpg::connect_waiting(&options, Duration::from_millis(500)) else {
            continue;
        };
        let mut connection = Connection {
            name: format!("{client}.{incarnation}"),
            group,
            sent: Vec::new(),
            delivered: Vec::new(),
            lived_to_end: false,
        };
        incarnation += 1;
        match join_retrying(&cpg, name.as_bytes(), &control) {
            Ok(()) => {
                connection.lived_to_end = exchange(&cpg, &mut connection, &control);
                out.lock().unwrap().push(connection);
            }
            Err(e) => {
                eprintln!("chaos: client {client}: join: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn join_retrying(cpg: &Cpg, group: &[u8], control: &Control) -> ringcast::Result<()> {
    loop {
        match cpg.join(group) {
            Err(e) if e.is_try_again() && !control.stop.load(Ordering::Acquire) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// Sends and receives until told to stop (true) or the engine is lost (false).
fn exchange(cpg: &Cpg, connection: &mut Connection, control: &Control) -> bool {
    let mut next_send = Instant::now();
    let mut seq = 0;
    loop {
        if control.stop.load(Ordering::Acquire) {
            return true;
        }
        if !control.quiet.load(Ordering::Acquire) && Instant::now() >= next_send {
            next_send += SEND_EVERY;
            match cpg.mcast(Guarantee::Agreed, &payload(&connection.name, seq)) {
                Ok(()) => {
                    connection.sent.push(seq);
                    seq += 1;
                }
                Err(e) if e.is_try_again() => {}
                Err(_) => return false,
            }
        }
        match cpg.next_event(Some(Duration::from_millis(5))) {
            Ok(Some(Event::Deliver { msg, .. })) => {
                if let Some(id) = parse(&msg) {
                    connection.delivered.push(id);
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// A client that joins `chaos-0` and never reads: the engine must cut it off at its
/// backlog limit while everyone else carries on. Cut off (or its engine lost), it
/// connects again and does the same.
fn run_silent_client(socket: PathBuf, control: Arc<Control>) {
    let options = ConnectOptions {
        socket,
        initial_totem_conf: false,
    };
    while !control.stop.load(Ordering::Acquire) {
        let Ok(cpg) = Cpg::connect_waiting(&options, Duration::from_millis(500)) else {
            continue;
        };
        if let Err(e) = join_retrying(&cpg, b"chaos-0", &control) {
            eprintln!("chaos: the client that never reads: join: {e}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        while !control.stop.load(Ordering::Acquire) && !cpg.engine_gone() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the client that writes garbage saw: sessions it scribbled on, and how many of
/// them the engine cut off (closed its socket) within [`GARBAGE_CUT_WITHIN`].
#[derive(Default, Debug)]
struct GarbageTally {
    sessions: u32,
    cut_off: u32,
}

const GARBAGE_CUT_WITHIN: Duration = Duration::from_secs(5);

/// A client that connects (through the socket protocol, not the library, so that it
/// can map its region writable), writes garbage into its submit ring, wakes the engine
/// and waits to be cut off; then does it again. It never joins a group, so whatever
/// the engine might make of the garbage reaches no other client. Runs on node 1, whose
/// engine is never killed: a closed socket is the engine's doing.
fn run_garbage_client(
    socket: PathBuf,
    seed: u64,
    control: Arc<Control>,
    tally: Arc<Mutex<GarbageTally>>,
) {
    let mut rng = Rng(seed);
    while !control.stop.load(Ordering::Acquire) {
        match garbage_session(&socket, &mut rng) {
            Ok(cut_off) => {
                let mut tally = tally.lock().unwrap();
                tally.sessions += 1;
                tally.cut_off += u32::from(cut_off);
            }
            Err(e) => eprintln!("chaos: the client that writes garbage: {e}"),
        }
        std::thread::sleep(rng.millis(100, 1000));
    }
}

fn noise(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.below(256) as u8).collect()
}

/// One session: connect, scribble, wake the engine; whether the engine then closed
/// the socket.
fn garbage_session(socket: &std::path::Path, rng: &mut Rng) -> Result<bool, String> {
    use ringcast_shm::layout::CACHE_LINE_BYTES;
    use ringcast_shm::proto::{MAX_SOCKET_MESSAGE_BYTES, PROTOCOL_VERSION, Request, Welcome};
    use ringcast_shm::socket::SeqPacket;

    let conn = SeqPacket::connect(socket).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(GARBAGE_CUT_WITHIN))
        .map_err(|e| e.to_string())?;
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    conn.send(&hello.encode(), &[])
        .map_err(|e| format!("hello: {e}"))?;
    let mut buf = vec![0u8; MAX_SOCKET_MESSAGE_BYTES];
    let (n, mut fds) = conn
        .recv(&mut buf)
        .map_err(|e| format!("welcome: {e}"))?
        .ok_or("closed before the welcome")?;
    let welcome = Welcome::decode(&buf[..n]).map_err(|e| format!("welcome: {e}"))?;
    if welcome.status != ringcast::Status::Ok || fds.len() < 3 {
        return Err(format!("refused: {:?}", welcome.status));
    }
    let engine_wake = ringcast_shm::EventFd::from_owned(fds.remove(2));
    let file = std::fs::File::from(fds.remove(0));
    let region = ringcast_shm::Region::open(file.try_clone().map_err(|e| e.to_string())?.into())
        .map_err(|e| format!("region: {e}"))?;
    let layout = *region.layout();
    // SAFETY: a second mapping of this client's own region, written with garbage on
    // purpose; the engine reads the region only through its bounds-checked ring ends.
    let mut hostile =
        unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| format!("mmap: {e}"))?;
    let (ctrl, data, capacity) = (
        layout.submit.ctrl_offset,
        layout.submit.data_offset,
        layout.submit.data_bytes,
    );
    let tail_at = ctrl + CACHE_LINE_BYTES;
    let head = u64::from_le_bytes(hostile[ctrl..ctrl + 8].try_into().expect("8 bytes"));
    // Random records where the engine reads next, published by a tail that says so.
    let len = 8 * (1 + rng.below(64) as usize);
    let at = data + (head as usize & (capacity - 1));
    let end = (at + len).min(data + capacity);
    let bytes = noise(rng, end - at);
    hostile[at..end].copy_from_slice(&bytes);
    let tail = match rng.below(3) {
        0 => head + (end - at) as u64,
        1 => u64::from_le_bytes(noise(rng, 8).try_into().expect("8 bytes")),
        _ => head + capacity as u64 + 8 * (1 + rng.below(64)),
    };
    hostile[tail_at..tail_at + 8].copy_from_slice(&tail.to_le_bytes());
    // Now and then the whole control block and the region header too.
    if rng.below(4) == 0 {
        let bytes = noise(rng, tail_at - ctrl);
        hostile[ctrl..tail_at].copy_from_slice(&bytes);
        let header = noise(rng, layout.header_bytes);
        hostile[..layout.header_bytes].copy_from_slice(&header);
    }
    engine_wake.notify().map_err(|e| format!("wake: {e}"))?;
    // Cut off: the engine closes the socket (end of file, or a reset).
    Ok(!matches!(conn.recv(&mut buf), Ok(Some(_))))
}

// ---------------------------------------------------------------------------------
// Checks of what the clients delivered

/// Every violation found in the clients' records, as one line each.
fn check_clients(connections: &[Connection]) -> Vec<String> {
    let mut violations = Vec::new();
    let sent: HashSet<(String, u64)> = connections
        .iter()
        .flat_map(|c| c.sent.iter().map(|s| (c.name.clone(), *s)))
        .collect();
    for c in connections {
        violations.extend(check_one(c, &sent));
    }
    for group in 0..GROUPS {
        let members: Vec<&Connection> = connections.iter().filter(|c| c.group == group).collect();
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                if let Some(v) = order_conflict(a, b) {
                    violations.push(format!("group chaos-{group}: {v}"));
                }
            }
        }
    }
    violations
}

/// No duplicate, nothing unsent, per-sender FIFO, and (for a connection that lived to
/// the end) every message it sent delivered back to it.
fn check_one(c: &Connection, sent: &HashSet<(String, u64)>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for id in &c.delivered {
        if !seen.insert(id) {
            violations.push(format!("{}: {id:?} delivered twice", c.name));
        }
        if !sent.contains(id) {
            violations.push(format!("{}: {id:?} delivered, never sent", c.name));
        }
        if let Some(before) = last.insert(&id.0, id.1)
            && before >= id.1
        {
            violations.push(format!("{}: {} seq {} after {before}", c.name, id.0, id.1));
        }
    }
    if c.lived_to_end {
        let own = c.delivered.iter().filter(|(n, _)| *n == c.name).count();
        if own != c.sent.len() {
            violations.push(format!(
                "{}: sent {} and lived to the end, delivered {own} of its own",
                c.name,
                c.sent.len()
            ));
        }
    }
    violations
}

/// Two connections of one group deliver the messages they both deliver in one order.
fn order_conflict(a: &Connection, b: &Connection) -> Option<String> {
    let at: HashMap<&(String, u64), usize> = a
        .delivered
        .iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let mut previous: Option<(usize, &(String, u64))> = None;
    for id in &b.delivered {
        if let Some(&i) = at.get(id) {
            if let Some((j, before)) = previous
                && i < j
            {
                return Some(format!(
                    "{} delivered {before:?} before {id:?}, {} the other way round",
                    b.name, a.name
                ));
            }
            previous = Some((i, id));
        }
    }
    None
}

// ---------------------------------------------------------------------------------
// Faults

#[derive(Default, Debug)]
struct Tally {
    engine_kills: u32,
    partitions: u32,
    lossy: u32,
    client_kills: u32,
}

impl Tally {
    fn total(&self) -> u32 {
        self.engine_kills + self.partitions + self.lossy + self.client_kills
    }
}

/// A fault in force, undone at its deadline.
enum Undo {
    Restart(u32),
    Heal(u32),
    ClearLossy(u32),
}

/// `ringcast listen` processes, one per node in `chaos-1`: killed with `kill -9` and
/// started again, so that the others see process failures.
struct Listeners {
    cluster_sockets: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

impl Listeners {
    fn start(&mut self, id: u32) {
        let child = Command::new(cli_bin())
            .args(["listen", "chaos-1", "--wait", "10", "--socket"])
            .arg(&self.cluster_sockets[id as usize - 1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringcast listen");
        self.children[id as usize - 1] = Some(child);
    }

    fn kill9(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for id in 1..=self.children.len() as u32 {
            self.kill9(id);
        }
    }
}

/// Makes node `id`'s link lossy with nftables (this kernel has no `tc netem`): a share
/// of the ring's datagrams dropped as they arrive, and of those it sends duplicated.
fn set_lossy(netns: &Netns, id: u32, port: u16, rng: &mut Rng) {
    let (loss, dup) = (1 + rng.below(15), rng.below(6));
    let rules = format!(
        "table netdev chaos {{\n chain in {{\n  type filter hook ingress device v{id} priority 0; \
         policy accept;\n  udp dport {port} numgen random mod 100 < {loss} drop\n }}\n}}\n\
         table ip chaosdup {{\n chain out {{\n  type filter hook output priority 0; policy \
         accept;\n  udp dport {port} numgen random mod 100 < {dup} dup to ip daddr\n }}\n}}\n"
    );
    nft(netns, id, &["-f", "-"], Some(&rules)).unwrap();
}

fn clear_lossy(netns: &Netns, id: u32) {
    nft(netns, id, &["flush", "ruleset"], None).unwrap();
}

/// Runs `nft` in node `id`'s namespace, with `input` on its stdin.
fn nft(netns: &Netns, id: u32, args: &[&str], input: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns.node(id), "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether nftables works here (the lossy-link fault needs it).
fn nft_works(netns: &Netns) -> bool {
    nft(netns, 1, &["list", "ruleset"], None).is_ok()
}

/// Injects one random fault, to be undone at a random later time.
fn inject(
    rng: &mut Rng,
    cluster: &mut Cluster,
    netns: &Netns,
    listeners: &mut Listeners,
    busy: &HashSet<u32>,
    lossy: bool,
    tally: &mut Tally,
) -> Option<(u32, Undo, Duration)> {
    let n = cluster.n;
    let free: Vec<u32> = (1..=n).filter(|id| !busy.contains(id)).collect();
    // At most n - 2 nodes in trouble at once, so that a ring of two always exists.
    if free.is_empty() || busy.len() as u32 >= n - 2 {
        let id = rng.pick(&(1..=n).collect::<Vec<_>>());
        listeners.kill9(id);
        listeners.start(id);
        tally.client_kills += 1;
        return None;
    }
    let id = rng.pick(&free);
    match rng.below(4) {
        // Node 1's engine, which holds the client that never reads, is not killed: its
        // stats (and the check that it cut that client off) must last the whole run.
        0 if id != 1 => {
            cluster.kill9(id);
            tally.engine_kills += 1;
            Some((id, Undo::Restart(id), rng.millis(500, 3000)))
        }
        1 => {
            netns.set_port(id, false);
            tally.partitions += 1;
            Some((id, Undo::Heal(id), rng.millis(1000, 5000)))
        }
        2 if lossy => {
            set_lossy(netns, id, cluster.port, rng);
            tally.lossy += 1;
            Some((id, Undo::ClearLossy(id), rng.millis(1000, 5000)))
        }
        _ => {
            listeners.kill9(id);
            listeners.start(id);
            tally.client_kills += 1;
            None
        }
    }
}

fn undo(undo: Undo, cluster: &mut Cluster, netns: &Netns) {
    match undo {
        Undo::Restart(id) => cluster.start(id),
        Undo::Heal(id) => netns.set_port(id, true),
        Undo::ClearLossy(id) => clear_lossy(netns, id),
    }
}

/// Runs the fault schedule for `seconds`; returns what was injected and every node
/// that was ever killed, cut off or given a lossy link.
fn run_faults(
    settings: &Settings,
    cluster: &mut Cluster,
    netns: &Netns,
    listeners: &mut Listeners,
) -> (Tally, HashSet<u32>) {
    let mut rng = Rng(settings.seed);
    let lossy = nft_works(netns);
    if !lossy {
        eprintln!("chaos: nft does not work here: no lossy links in this run");
    }
    let mut tally = Tally::default();
    let mut touched = HashSet::new();
    let mut pending: Vec<(Instant, u32, Undo)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(settings.seconds);
    let mut next_fault = Instant::now() + rng.millis(1000, 3000);
    while Instant::now() < end || !pending.is_empty() {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _, _)| *at <= now);
        pending = later;
        for (_, _, what) in due {
            undo(what, cluster, netns);
        }
        if now >= next_fault && now < end {
            let busy: HashSet<u32> = pending.iter().map(|(_, id, _)| *id).collect();
            if let Some((id, what, lasts)) = inject(
                &mut rng, cluster, netns, listeners, &busy, lossy, &mut tally,
            ) {
                touched.insert(id);
                pending.push((now + lasts, id, what));
            }
            next_fault = now + rng.millis(500, 2500);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (tally, touched)
}

// ---------------------------------------------------------------------------------

#[test]
fn chaos() {
    let settings = settings();
    let netns = match Netns::create(settings.nodes) {
        Ok(netns) => netns,
        Err(why) => {
            println!("skipped: network namespaces unavailable: {why}");
            eprintln!("skipped: network namespaces unavailable: {why}");
            return;
        }
    };
    let n = settings.nodes;
    eprintln!(
        "chaos: seed {} (CHAOS_SEED replays the schedule), {} s, {n} engines",
        settings.seed, settings.seconds
    );
    let mut cluster = Cluster::new("chaos", free_port(n), n).with_key();
    cluster.netns = Some(netns.prefix.clone());
    with_checked_load(&mut cluster, LOAD_RATE);
    // Small event rings and backlogs, so that the client that never reads is cut off
    // within the run.
    cluster.extra.extend(
        [
            "--set",
            "ipc.event_ring_bytes=65536",
            "--set",
            "ipc.max_members_per_group=64",
            "--set",
            "ipc.backlog_events=64",
        ]
        .map(String::from),
    );
    cluster.start_all();
    let all: Vec<u32> = (1..=n).collect();
    cluster.wait_ring(&all, FORM_TIMEOUT).unwrap();

    let control = Arc::new(Control {
        quiet: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for id in 1..=n {
        for group in 0..GROUPS {
            // CPG names a member by node and pid: this process has one member per group
            // per node, and node 1's in chaos-0 is the client that never reads.
            if (id, group) == (1, 0) {
                continue;
            }
            let client = (id as usize - 1) * GROUPS + group;
            let (socket, control, records) = (cluster.socket(id), control.clone(), records.clone());
            threads.push(std::thread::spawn(move || {
                run_client(client, group, socket, control, records)
            }));
        }
    }
    let silent = {
        let (socket, control) = (cluster.socket(1), control.clone());
        std::thread::spawn(move || run_silent_client(socket, control))
    };
    let garbage_tally = Arc::new(Mutex::new(GarbageTally::default()));
    let garbage = {
        let (socket, control, tally) = (cluster.socket(1), control.clone(), garbage_tally.clone());
        let seed = settings.seed ^ 0x6a7b_a6e0;
        std::thread::spawn(move || run_garbage_client(socket, seed, control, tally))
    };
    let mut listeners = Listeners {
        cluster_sockets: all.iter().map(|id| cluster.socket(*id)).collect(),
        children: (0..n).map(|_| None).collect(),
    };
    for id in 1..=n {
        listeners.start(id);
    }

    let (tally, touched) = run_faults(&settings, &mut cluster, &netns, &mut listeners);

    // Faults over: one ring again, then quiet clients, drained, and stopped.
    cluster.wait_ring(&all, FORM_TIMEOUT).unwrap();
    control.quiet.store(true, Ordering::Release);
    cluster.stop_load_and_settle(&all);
    std::thread::sleep(Duration::from_secs(2));
    control.stop.store(true, Ordering::Release);
    for thread in threads {
        thread.join().expect("client thread");
    }
    silent.join().expect("silent client");
    garbage.join().expect("garbage client");
    drop(listeners);

    let faulted: u64 = all
        .iter()
        .map(|id| cluster.counter(*id, "clients_faulted"))
        .sum();
    let survivors: Vec<u32> = all
        .iter()
        .copied()
        .filter(|id| !touched.contains(id))
        .collect();
    let engine_violations = cluster.trace_violations(&survivors);
    let connections = records.lock().unwrap();
    let client_violations = check_clients(&connections);
    let delivered: usize = connections.iter().map(|c| c.delivered.len()).sum();
    for v in engine_violations.iter().chain(&client_violations).take(20) {
        eprintln!("violation: {v}");
    }
    let violations = engine_violations.len() + client_violations.len();
    let garbage = garbage_tally.lock().unwrap();
    let summary = format!(
        "chaos: seed {}, {} s, {n} engines, {} faults ({} engine kills, {} partitions, {} \
         lossy links, {} client kills), {} client connections, {delivered} client \
         deliveries checked, {faulted} clients cut off, {} of {} garbage-writing sessions \
         cut off, violations: {violations}",
        settings.seed,
        settings.seconds,
        tally.total(),
        tally.engine_kills,
        tally.partitions,
        tally.lossy,
        tally.client_kills,
        connections.len(),
        garbage.cut_off,
        garbage.sessions,
    );
    println!("{summary}");
    eprintln!("{summary}");
    assert_eq!(
        violations,
        0,
        "{summary}; logs in {}",
        cluster.dir.display()
    );
    assert!(faulted >= 1, "the client that never reads was not cut off");
    assert!(
        garbage.sessions >= 1,
        "the client that writes garbage never connected"
    );
    assert_eq!(
        garbage.cut_off, garbage.sessions,
        "sessions of the client that writes garbage not cut off within {GARBAGE_CUT_WITHIN:?}"
    );
    // The engine said why (node 1 is never restarted: one log).
    assert!(
        cluster
            .log(1)
            .contains("corrupt submit ring; closing the session"),
        "node 1's log does not say why it cut the client off"
    );
    drop(cluster);
    let _ = ip(&["netns", "list"]);
}

/// The client checks catch each kind of violation (and pass a clean record).
#[test]
fn client_checks_catch_what_they_check() {
    let id = |name: &str, seq| (name.to_owned(), seq);
    let connection = |name: &str, sent: Vec<u64>, delivered: Vec<(String, u64)>| Connection {
        name: name.to_owned(),
        group: 0,
        sent,
        delivered,
        lived_to_end: true,
    };
    let clean = || {
        vec![
            connection("a", vec![0, 1], vec![id("a", 0), id("b", 0), id("a", 1)]),
            connection("b", vec![0], vec![id("a", 0), id("b", 0), id("a", 1)]),
        ]
    };
    assert_eq!(check_clients(&clean()), Vec::<String>::new());

    let mut reordered = clean();
    reordered[1].delivered.swap(0, 1);
    assert!(check_clients(&reordered)[0].contains("the other way round"));

    let mut duplicated = clean();
    duplicated[1].delivered.push(id("b", 0));
    assert!(
        check_clients(&duplicated)
            .iter()
            .any(|v| v.contains("twice"))
    );

    let mut unsent = clean();
    unsent[1].delivered.push(id("c", 0));
    assert!(
        check_clients(&unsent)
            .iter()
            .any(|v| v.contains("never sent"))
    );

    let mut out_of_fifo = clean();
    out_of_fifo[0].delivered = vec![id("a", 1), id("b", 0), id("a", 0)];
    assert!(
        check_clients(&out_of_fifo)
            .iter()
            .any(|v| v.contains("seq 0 after 1"))
    );

    let mut lost_own = clean();
    lost_own[0].delivered.pop();
    assert!(
        check_clients(&lost_own)
            .iter()
            .any(|v| v.contains("of its own"))
    );
    lost_own[0].lived_to_end = false;
    assert_eq!(check_clients(&lost_own), Vec::<String>::new());
}
