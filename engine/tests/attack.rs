//! Resource bounds under attack: real `ringcastd` processes against hostile clients and a
//! hostile peer that holds the cluster key.
//!
//! - a client opening and closing connections in a loop, and one that opens connections
//!   until it is refused (`ipc.max_clients`);
//! - a client joining groups without end (`ipc.max_groups`), and one group filled past
//!   `ipc.max_members_per_group`;
//! - node 4 of the nodelist, with the key but no engine, flooding a 3-engine ring with
//!   sealed join messages and tokens built with the wire codecs.
//!
//! Each attack checks that the engine refuses with the status and message naming the
//! limit, that its peak resident memory (VmHWM, /proc/PID/status) stays below its resident
//! memory before the attack plus what its configuration lets it hold ([`ipc_budget`],
//! [`totem_budget`]), and that well-behaved clients keep their messages flowing in order
//! meanwhile (the peer attack: the simulator's checkers on every engine's delivery log).
//! Every attack prints one `attack: {json}` line with its figures.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::checked::with_checked_load;
use common::*;
use ringcast::{ConnectOptions, Cpg, Event, Guarantee, Status};
use ringcast_engine::daemon::config::{ConfigFlags, DaemonConfig, cluster_id};
use ringcast_engine::daemon::keyfile::{self, counter_from_clock};
use ringcast_engine::splitmix::splitmix64;
use ringcast_engine::totem::{RingId, receive_window};
use ringcast_engine::wire::seal::Sealer;
use ringcast_engine::wire::{Join, Packet, Token};
use ringcast_shm::{Layout, RegionSpec};

/// Small client regions and backlogs, so that a budget of `max_clients` of them is a
/// bound a leak would cross within the test.
const SMALL_IPC: [&str; 16] = [
    "--set",
    "ipc.huge_pages=false",
    "--set",
    "ipc.submit_ring_bytes=65536",
    "--set",
    "ipc.event_ring_bytes=65536",
    "--set",
    "ipc.send_buffer_bytes=0",
    "--set",
    "ipc.delivery_pool_bytes=0",
    "--set",
    "ipc.backlog_events=256",
    "--set",
    "ipc.backlog_bytes=1048576",
    "--set",
    "ipc.max_members_per_group=64",
];

/// A cluster of `listed` configured nodes with [`SMALL_IPC`] and `limits`.
fn small_cluster(name: &str, listed: u32, limits: &[(&str, usize)]) -> Cluster {
    let mut cluster = Cluster::new(name, free_port(listed), listed);
    cluster.extra.extend(SMALL_IPC.map(String::from));
    for (setting, value) in limits {
        cluster.extra.push("--set".into());
        cluster.extra.push(format!("{setting}={value}"));
    }
    cluster
}

// ---------------------------------------------------------------------------------
// Memory

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory(pid: i32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// `ringcastd`'s flags, parsed and resolved exactly as the engine does.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: ConfigFlags,
}

fn resolved(cluster: &Cluster, id: u32) -> DaemonConfig {
    let args = std::iter::once("ringcastd".to_owned()).chain(cluster.args(id));
    let flags = Flags::try_parse_from(args).expect("the test's flags parse");
    let settings = flags.config.settings().expect("settings");
    DaemonConfig::resolve(settings).expect("a valid configuration")
}

/// What the configuration lets an engine hold for its clients: every client's region
/// (mapped by the engine too) and the events it may leave unread (`ipc.backlog_bytes`),
/// and the delivery pool.
fn ipc_budget(config: &DaemonConfig) -> u64 {
    let ipc = &config.settings.ipc;
    let spec = RegionSpec {
        submit_ring_bytes: ipc.submit_ring_bytes,
        event_ring_bytes: ipc.event_ring_bytes,
        pool_bytes: ipc.send_buffer_bytes,
    };
    let region = Layout::new(&spec, ipc.huge_pages)
        .expect("layout")
        .total_bytes;
    (ipc.max_clients * (region + ipc.backlog_bytes) + ipc.delivery_pool_bytes) as u64
}

/// What the configuration lets Totem hold: its send queue, and the stores of the
/// current and the next ring, each at most a receive window of datagrams.
fn totem_budget(config: &DaemonConfig) -> u64 {
    let totem = &config.totem;
    let store = receive_window(totem) as usize * config.recv_datagram_bytes;
    (totem.send_queue_bytes + 2 * store) as u64
}

/// Peak memory of engine `pid` against `before` plus `budget` bytes; the figures as JSON.
fn check_memory(attack: &str, node: u32, pid: i32, before: Memory, budget: u64) -> String {
    let after = memory(pid);
    let bound_kib = before.hwm_kib.max(before.rss_kib) + budget / 1024;
    let json = format!(
        "{{\"attack\": \"{attack}\", \"node\": {node}, \"rss_before_kib\": {}, \
         \"hwm_before_kib\": {}, \"rss_after_kib\": {}, \"peak_rss_kib\": {}, \
         \"bound_kib\": {bound_kib}, \"budget_kib\": {}}}",
        before.rss_kib,
        before.hwm_kib,
        after.rss_kib,
        after.hwm_kib,
        budget / 1024
    );
    assert!(
        after.hwm_kib <= bound_kib,
        "{attack}: node {node}'s peak RSS {} KiB is above {bound_kib} KiB: {json}",
        after.hwm_kib
    );
    json
}

fn report(figures: &[String], extra: &str) {
    for f in figures {
        let line = if extra.is_empty() {
            f.clone()
        } else {
            format!("{}, {extra}}}", f.trim_end_matches('}'))
        };
        println!("attack: {line}");
    }
}

// ---------------------------------------------------------------------------------
// A well-behaved client

/// One connection that multicasts a counter in `group` and reads its own messages back:
/// they must come back in order, none missing (per-sender FIFO, self-delivery).
struct Steady {
    stop: Arc<AtomicBool>,
    delivered: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<Result<u64, String>>>,
}

impl Steady {
    fn start(socket: std::path::PathBuf, group: &'static [u8]) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(0));
        let (s, d) = (stop.clone(), delivered.clone());
        let thread = std::thread::spawn(move || steady_client(socket, group, &s, &d));
        let steady = Steady {
            stop,
            delivered,
            thread: Some(thread),
        };
        steady.wait_flows(20);
        steady
    }

    fn delivered(&self) -> u64 {
        *self.delivered.lock().unwrap()
    }

    /// Waits until `n` more of its messages came back.
    fn wait_flows(&self, n: u64) -> bool {
        let want = self.delivered() + n;
        wait_for(EVENT_TIMEOUT, || self.delivered() >= want)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("running");
        match thread.join().expect("steady client thread") {
            Ok(n) => n,
            Err(e) => panic!("the well-behaved client: {e}"),
        }
    }
}

fn steady_client(
    socket: std::path::PathBuf,
    group: &[u8],
    stop: &AtomicBool,
    delivered: &Mutex<u64>,
) -> Result<u64, String> {
    let cpg = connect_to(&socket);
    retry(|| cpg.join(group));
    let me = std::process::id();
    let (mut sent, mut next) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        if sent < next + 64 {
            match cpg.mcast(Guarantee::Agreed, &sent.to_le_bytes()) {
                Ok(()) => sent += 1,
                Err(e) if e.is_try_again() => {}
                Err(e) => return Err(format!("mcast: {e}")),
            }
        }
        let event = cpg
            .next_event(Some(Duration::from_millis(5)))
            .map_err(|e| format!("events: {e}"))?;
        if let Some(Event::Deliver { pid, msg, .. }) = event {
            if pid != me {
                continue;
            }
            let seq = u64::from_le_bytes(msg[..8].try_into().map_err(|_| "short message")?);
            if seq != next {
                return Err(format!("delivered {seq}, expected {next}"));
            }
            next += 1;
            *delivered.lock().unwrap() = next;
        }
    }
    Ok(next)
}

fn options(socket: &std::path::Path) -> ConnectOptions {
    ConnectOptions {
        socket: socket.to_path_buf(),
        initial_totem_conf: false,
    }
}

/// The refusal of a connection past `ipc.max_clients`: NO_RESOURCES naming the setting
/// (or, when the client's hello reached the engine only after the engine read its
/// socket, a reset connection, whose error names the setting too). Returns whether it
/// was the reset.
fn assert_refused_for_clients(e: &ringcast::Error) -> bool {
    assert!(
        matches!(e.status(), Status::NoResources | Status::Library),
        "{e}"
    );
    assert!(
        e.to_string().contains("ipc.max_clients"),
        "unclear refusal: {e}"
    );
    e.status() == Status::Library
}

// ---------------------------------------------------------------------------------
// Client attacks

const MAX_CLIENTS: usize = 8;
const CHURN: usize = 10_000;
const HOARD_RETRIES: usize = 1000;

/// [`CHURN`] connections opened and closed at once: how many were refused (the engine
/// not done closing the previous ones), and how many of those by a reset.
fn churn(socket: &std::path::Path) -> (u64, u64) {
    let (mut refused, mut resets) = (0, 0);
    for _ in 0..CHURN {
        match Cpg::connect(&options(socket)) {
            Ok(cpg) => drop(cpg),
            Err(e) => {
                resets += u64::from(assert_refused_for_clients(&e));
                refused += 1;
            }
        }
    }
    (refused, resets)
}

/// Connections kept open until the engine refuses one (one slot is the well-behaved
/// client's), then [`HOARD_RETRIES`] more refused while they are held: the held
/// connections, the first refusal and how many refusals were resets.
fn hoard_until_refused(socket: &std::path::Path) -> (Vec<Cpg>, ringcast::Error, u64) {
    let mut hoard = Vec::new();
    let refusal = loop {
        match Cpg::connect(&options(socket)) {
            Ok(cpg) => hoard.push(cpg),
            Err(e) => break e,
        }
        assert!(
            hoard.len() <= MAX_CLIENTS,
            "more than ipc.max_clients accepted"
        );
    };
    let mut resets = u64::from(assert_refused_for_clients(&refusal));
    assert_eq!(
        hoard.len(),
        MAX_CLIENTS - 1,
        "the steady client holds one slot"
    );
    for _ in 0..HOARD_RETRIES {
        let Err(e) = Cpg::connect(&options(socket)) else {
            panic!("a connection past ipc.max_clients was accepted");
        };
        resets += u64::from(assert_refused_for_clients(&e));
    }
    (hoard, refusal, resets)
}

/// A client connecting and disconnecting in a loop, then one connecting until it is
/// refused: the engine refuses past `ipc.max_clients` with NO_RESOURCES naming the
/// setting, holds no descriptor or memory for the closed connections, and the
/// well-behaved client's messages keep coming back in order.
#[test]
fn connection_churn_and_hoarding_are_bounded_by_max_clients() {
    let mut cluster = small_cluster("attack-conns", 1, &[("ipc.max_clients", MAX_CLIENTS)]);
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let pid = cluster.daemon(1).pid();
    let budget = ipc_budget(&resolved(&cluster, 1));
    let steady = Steady::start(cluster.socket(1), b"attack-steady");
    let connected = |cluster: &Cluster| cluster.counter(1, "clients_connected");
    let fds_before = open_fds(pid);
    let before = memory(pid);

    let started = Instant::now();
    let (refused, mut resets) = churn(&cluster.socket(1));
    let churn_time = started.elapsed();
    assert!(
        wait_for(FORM_TIMEOUT, || connected(&cluster) == 1),
        "{} clients still connected after the churn",
        connected(&cluster)
    );
    assert!(steady.wait_flows(20), "the well-behaved client stalled");
    assert!(
        wait_for(FORM_TIMEOUT, || open_fds(pid) <= fds_before),
        "the engine holds {} descriptors after the churn, {fds_before} before",
        open_fds(pid)
    );
    let churn = check_memory("connection churn", 1, pid, before, budget);

    // Hoarding: connections kept open until the engine refuses.
    let before = memory(pid);
    let (hoard, refusal, hoard_resets) = hoard_until_refused(&cluster.socket(1));
    resets += hoard_resets;
    assert!(steady.wait_flows(20), "the well-behaved client stalled");
    let hoarding = check_memory("connection hoarding", 1, pid, before, budget);
    drop(hoard);
    assert!(wait_for(FORM_TIMEOUT, || connected(&cluster) == 1));
    // The slots are free again.
    let again = Cpg::connect(&options(&cluster.socket(1))).expect("a slot after the hoard");
    drop(again);
    let delivered = steady.finish();
    report(
        &[churn],
        &format!(
            "\"connections\": {CHURN}, \"refused_transiently\": {refused}, \
             \"seconds\": {:.1}, \"max_clients\": {MAX_CLIENTS}",
            churn_time.as_secs_f64()
        ),
    );
    report(
        &[hoarding],
        &format!(
            "\"held\": {}, \"max_clients\": {MAX_CLIENTS}, \"refusal\": \"{refusal}\", \
             \"refused_after\": {HOARD_RETRIES}, \"refused_by_reset\": {resets}, \
             \"steady_delivered\": {delivered}",
            MAX_CLIENTS - 1
        ),
    );
}

const MAX_GROUPS: usize = 6;
const MAX_MEMBERS: usize = 3;
const GROUP_CYCLES: usize = 3000;

/// One connection through [`GROUP_CYCLES`] fresh groups, joining and leaving each.
fn cycle_groups(cycler: &Cpg) {
    for i in 0..GROUP_CYCLES {
        let group = format!("attack-cycle-{i}");
        retry(|| cycler.join(group.as_bytes()));
        retry(|| cycler.leave(group.as_bytes()));
        // Its confchgs are read, or the engine cuts it off as a slow client.
        while let Ok(Some(_)) = cycler.next_event(Some(Duration::ZERO)) {}
    }
}

/// New groups, one per connection, until a join is refused: the holders and the refusal.
fn hold_groups_until_refused(socket: &std::path::Path) -> (Vec<Cpg>, ringcast::Error) {
    let mut holders = Vec::new();
    let refusal = loop {
        let cpg = connect_to(socket);
        let group = format!("attack-hold-{}", holders.len());
        match cpg.join(group.as_bytes()) {
            Ok(()) => holders.push(cpg),
            Err(e) if e.is_try_again() => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break e,
        }
        assert!(
            holders.len() < MAX_GROUPS,
            "more than ipc.max_groups groups"
        );
    };
    (holders, refusal)
}

/// `attack-full` filled by [`MAX_MEMBERS`] other processes (CPG names a member by node
/// and pid), then joined by `joiner`: the refusal, NO_SPACE naming the setting.
fn join_full_group(cluster: &Cluster, joiner: &Cpg) -> ringcast::Error {
    let mut members: Vec<_> = (0..MAX_MEMBERS)
        .map(|_| {
            std::process::Command::new(cli_bin())
                .args(["listen", "attack-full", "--socket"])
                .arg(cluster.socket(1))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn ringcast listen")
        })
        .collect();
    let joined = wait_for(FORM_TIMEOUT, || {
        joiner
            .membership(b"attack-full")
            .is_ok_and(|m| m.len() == MAX_MEMBERS)
    });
    let full = joiner.join(b"attack-full");
    for child in &mut members {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(joined, "the listeners did not join");
    let full = full.expect_err("a join past ipc.max_members_per_group");
    assert_eq!(full.status(), Status::NoSpace, "{full}");
    assert!(
        full.to_string().contains("ipc.max_members_per_group"),
        "{full}"
    );
    full
}

/// Joins of fresh groups without end: a connection joining and leaving a new group each
/// time leaves nothing behind, and connections each holding a new group are refused at
/// `ipc.max_groups` with TOO_MANY_GROUPS naming it; a group full at
/// `ipc.max_members_per_group` refuses the next member with NO_SPACE naming that.
#[test]
fn endless_joins_are_bounded_by_max_groups_and_max_members() {
    let limits = [
        ("ipc.max_clients", 16),
        ("ipc.max_groups", MAX_GROUPS),
        ("ipc.max_members_per_group", MAX_MEMBERS),
    ];
    let mut cluster = small_cluster("attack-groups", 1, &limits);
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let pid = cluster.daemon(1).pid();
    let budget = ipc_budget(&resolved(&cluster, 1));
    let steady = Steady::start(cluster.socket(1), b"attack-steady");
    let before = memory(pid);

    let started = Instant::now();
    let cycler = connect_to(&cluster.socket(1));
    cycle_groups(&cycler);
    let cycle_time = started.elapsed();
    let groups = |cpg: &Cpg| {
        cpg.iterate(ringcast::IterationKind::NameOnly, None)
            .expect("iterate")
            .len()
    };
    assert!(
        wait_for(FORM_TIMEOUT, || groups(&cycler) <= 1),
        "{} groups left after joining and leaving {GROUP_CYCLES}",
        groups(&cycler)
    );

    let (holders, refusal) = hold_groups_until_refused(&cluster.socket(1));
    assert_eq!(refusal.status(), Status::TooManyGroups, "{refusal}");
    assert!(refusal.to_string().contains("ipc.max_groups"), "{refusal}");
    // The steady client's group counts too.
    assert_eq!(holders.len(), MAX_GROUPS - 1);
    assert!(steady.wait_flows(20), "the well-behaved client stalled");
    let groups_figure = check_memory("endless joins", 1, pid, before, budget);
    drop(holders);
    assert!(wait_for(FORM_TIMEOUT, || groups(&cycler) <= 1));

    let before = memory(pid);
    let full = join_full_group(&cluster, &cycler);
    assert!(steady.wait_flows(20), "the well-behaved client stalled");
    let members_figure = check_memory("full group", 1, pid, before, budget);
    let delivered = steady.finish();
    report(
        &[groups_figure],
        &format!(
            "\"join_leave_cycles\": {GROUP_CYCLES}, \"seconds\": {:.1}, \
             \"max_groups\": {MAX_GROUPS}, \"refusal\": \"{refusal}\"",
            cycle_time.as_secs_f64()
        ),
    );
    report(
        &[members_figure],
        &format!(
            "\"max_members_per_group\": {MAX_MEMBERS}, \"refusal\": \"{full}\", \
             \"steady_delivered\": {delivered}"
        ),
    );
}

// ---------------------------------------------------------------------------------
// A hostile peer

/// The attacker: node 4 of the nodelist, which holds the key but runs no engine.
const ATTACKER: u32 = 4;
const FLOOD: Duration = Duration::from_secs(8);
const LOAD_RATE: u64 = 200;

struct Attacker {
    socket: UdpSocket,
    sealer: Sealer,
    cluster_id: u32,
    port: u16,
    rng: u64,
    sent: u64,
}

impl Attacker {
    fn new(cluster: &Cluster) -> Attacker {
        let key = keyfile::read(cluster.key.as_ref().expect("keyed")).expect("key");
        let cluster_id = cluster_id(&format!("test-{}", cluster.port));
        Attacker {
            socket: UdpSocket::bind(format!("{}:{}", addr(ATTACKER), cluster.port)).unwrap(),
            sealer: Sealer::new(&key, ATTACKER, cluster_id, counter_from_clock()),
            cluster_id,
            port: cluster.port,
            rng: 0xa77ac4,
            sent: 0,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        splitmix64(&mut self.rng) % n.max(1)
    }

    fn nodes(&mut self) -> Vec<u32> {
        let mut nodes: Vec<u32> = (1..=ATTACKER).filter(|_| self.below(2) == 0).collect();
        // Now and then ids the nodelist does not have.
        if self.below(4) == 0 {
            nodes.push(100 + self.below(1000) as u32);
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    fn join(&mut self) -> Packet {
        let proc_list = self.nodes();
        let failed_list = self.nodes();
        Packet::Join(Join {
            sender: ATTACKER,
            ring_seq: match self.below(3) {
                0 => self.below(16),
                1 => u64::MAX - self.below(16),
                _ => splitmix64(&mut self.rng),
            },
            proc_list,
            failed_list,
            leaving: self.below(8) == 0,
        })
    }

    /// A token of the ring the engines are in (`ring`) or of another one.
    fn token(&mut self, ring: RingId) -> Packet {
        let ring_id = if self.below(4) == 0 {
            RingId {
                rep: 1 + self.below(u64::from(ATTACKER)) as u32,
                seq: ring.seq + self.below(3),
            }
        } else {
            ring
        };
        let seq = self.below(1 << 20);
        let rtr = (0..self.below(64)).map(|_| self.below(1 << 20)).collect();
        Packet::Token(Token {
            sender: ATTACKER,
            ring_id,
            token_seq: match self.below(2) {
                0 => self.below(1 << 20),
                _ => u64::MAX - self.below(1 << 20),
            },
            seq,
            aru: seq.saturating_sub(self.below(1000)),
            aru_addr: self.below(5) as u32,
            fcc: self.below(100) as u32,
            backlog: self.below(1000) as u32,
            retrans_flg: self.below(2) == 0,
            install_seq: self.below(2) * seq,
            rtr,
        })
    }

    /// Sends `packet`, sealed, to engine `to`.
    fn send(&mut self, packet: &Packet, to: u32) {
        let datagram = self.sealer.seal(&packet.encode(self.cluster_id));
        // A full socket buffer drops it, which is an attacker's loss.
        let _ = self
            .socket
            .send_to(&datagram, format!("{}:{}", addr(to), self.port));
        self.sent += 1;
    }
}

/// Memory, as JSON figures, and deliveries during one flood.
struct Flooded {
    figures: Vec<String>,
    sent: u64,
    delivered: Vec<u64>,
}

fn flood(
    cluster: &Cluster,
    attacker: &mut Attacker,
    attack: &str,
    mut packet: impl FnMut(&mut Attacker, RingId) -> Packet,
) -> Flooded {
    let engines = [1u32, 2, 3];
    let pids: Vec<i32> = engines
        .iter()
        .map(|id| cluster.status(*id).expect("running").pid as i32)
        .collect();
    let before: Vec<Memory> = pids.iter().map(|pid| memory(*pid)).collect();
    let delivered_before: Vec<u64> = engines
        .iter()
        .map(|id| cluster.counter(*id, "load_delivered"))
        .collect();
    let ring = cluster.status(1).expect("running").ring_id;
    let ring = RingId {
        rep: ring.rep,
        seq: ring.seq,
    };
    let sent_before = attacker.sent;
    let started = Instant::now();
    while started.elapsed() < FLOOD {
        let p = packet(attacker, ring);
        for id in engines {
            attacker.send(&p, id);
        }
    }
    let delivered = engines
        .iter()
        .zip(&delivered_before)
        .map(|(id, before)| cluster.counter(*id, "load_delivered") - before)
        .collect();
    let figures = engines
        .iter()
        .zip(&pids)
        .zip(&before)
        .map(|((id, pid), before)| {
            check_memory(
                attack,
                *id,
                *pid,
                *before,
                totem_budget(&resolved(cluster, *id)),
            )
        })
        .collect();
    Flooded {
        figures,
        sent: attacker.sent - sent_before,
        delivered,
    }
}

/// Node 4 holds the key and floods the 3-engine ring with join messages, then with
/// tokens (of the engines' ring and of others): every engine stays within its Totem
/// budget, the ring is whole again once the flood stops, and every engine's delivery
/// log passes the simulator's checkers (agreed order, virtual synchrony, per-sender
/// FIFO, no loss to the survivors).
#[test]
fn a_keyed_peer_flooding_joins_and_tokens_is_survived() {
    let limits = [
        ("totem.max_message_bytes", 64 << 10),
        ("totem.send_queue_bytes", 4 << 20),
    ];
    let mut cluster = small_cluster("attack-peer", ATTACKER, &limits).with_key();
    with_checked_load(&mut cluster, LOAD_RATE);
    for id in 1..=3 {
        cluster.start(id);
    }
    let engines = [1u32, 2, 3];
    cluster.wait_ring(&engines, FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(1, 100);
    let mut attacker = Attacker::new(&cluster);

    let joins = flood(&cluster, &mut attacker, "join flood", |a, _| a.join());
    let healed_after_joins = cluster.wait_ring(&engines, FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(1, 100);
    let tokens = flood(&cluster, &mut attacker, "token flood", |a, ring| {
        a.token(ring)
    });
    let healed_after_tokens = cluster.wait_ring(&engines, FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(1, 100);

    // The checkers judge the three engines' logs: the attacker delivers nothing and is
    // not a node of the trace (liveness: the engines end in one ring of the three).
    cluster.n = 3;
    cluster.stop_load_and_settle(&engines);
    cluster.check_guarantees(&engines);
    for (flooded, healed) in [(&joins, healed_after_joins), (&tokens, healed_after_tokens)] {
        report(
            &flooded.figures,
            &format!(
                "\"datagrams\": {}, \"seconds\": {}, \"load_delivered_during\": {:?}, \
                 \"ring_whole_after_ms\": {}",
                flooded.sent,
                FLOOD.as_secs(),
                flooded.delivered,
                healed.as_millis()
            ),
        );
    }
    // The ring kept ordering the engines' own load during the token flood: tokens of a
    // node that is not a member are dropped. A join flood is another matter: a listed
    // node holding the key may make the ring gather again and again (Totem trusts it to
    // join), so how much is delivered during one depends on how fast the attacker
    // sends; it is reported above, and what is asserted is that the ring is whole again
    // and orders the load afterwards (the waits above) with nothing lost or reordered
    // (the checkers).
    assert!(
        tokens.delivered.iter().all(|n| *n > 0),
        "no delivery during the token flood: {:?}",
        tokens.delivered
    );
}
