//! Agreed order across groups, seen by processes on real engines.
//!
//! docs/cpg.md §5.4 (total order): all messages on the ring, in every group, share one
//! sequence; so a process with a handle in each of two groups is handed their messages
//! in that sequence. A handle joins one group, so the order between two groups shows
//! only through causality: a relay turns every message `a` of group A it is handed
//! into a message `b(a)` of group B. Totem orders `b(a)` after `a` (it was sent after
//! `a` was delivered), and the engine publishes each delivery in the rings of all its
//! local members of the group before any later delivery (the rings here are far from
//! full, so nothing waits in a backlog), so a process that is handed `b(a)` on one
//! handle must already find `a` waiting on the other.
//!
//! A process may have only one member per group and node (docs/cpg.md §3 `cpg_join`:
//! EXIST), so the observers are separate processes: this test binary run again, with
//! [`OBSERVER_ENV`] set, as the same test, which then plays one observer.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, EVENT_TIMEOUT, FORM_TIMEOUT, connect_to, free_port, retry};
use ringcast::{Cpg, Event, Guarantee};

/// Messages each sender multicasts to A (each is relayed once into B).
const PER_SENDER_A: u32 = 300;
/// Messages each sender multicasts straight to B, concurrently with the relay.
const PER_SENDER_DIRECT: u32 = 100;
/// Messages a sender multicasts to A between pauses.
const BURST: u32 = 20;
const SENDERS: [u32; 2] = [1, 2];
const RELAY_NODE: u32 = 3;
const OBSERVERS: [u32; 3] = [1, 2, 3];
const GROUP_A: &[u8] = b"A";
const GROUP_B: &[u8] = b"B";
const A_TOTAL: usize = (PER_SENDER_A as usize) * SENDERS.len();
const B_TOTAL: usize = A_TOTAL + (PER_SENDER_DIRECT as usize) * SENDERS.len();

/// The test's name: an observer process runs it again (and only it).
const TEST_NAME: &str = "a_relayed_message_never_overtakes_its_cause_across_groups";
/// Set (to the observer's node id) in an observer process.
const OBSERVER_ENV: &str = "RINGCAST_XGRP_OBSERVER";
/// The observer's engine socket.
const SOCKET_ENV: &str = "RINGCAST_XGRP_SOCKET";
/// Where the observer writes what it was handed.
const OUT_ENV: &str = "RINGCAST_XGRP_OUT";
/// The pid of the process that sends every message (the test's main process).
const SENDER_PID_ENV: &str = "RINGCAST_XGRP_SENDER_PID";

fn connect(socket: &Path) -> Cpg {
    connect_to(socket)
}

/// Waits for the confchg whose members are exactly `expected` (node, pid).
fn wait_members(cpg: &Cpg, group: &[u8], expected: &[(u32, u32)]) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut last = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match cpg.next_event(Some(left)).expect("next_event") {
            Some(Event::Confchg { members, left, .. }) => {
                assert!(
                    left.is_empty(),
                    "{}: left before the start: {left:?}",
                    text(group)
                );
                last = members.iter().map(|m| (m.node, m.pid)).collect();
                if last == expected {
                    return;
                }
            }
            Some(Event::TotemConfchg { .. }) => {}
            Some(other) => panic!(
                "{}: event before the group was whole: {other:?}",
                text(group)
            ),
            None => panic!(
                "{}: members {last:?}, not {expected:?}, after {EVENT_TIMEOUT:?}",
                text(group)
            ),
        }
    }
}

fn text(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).into_owned()
}

/// `(sender, counter)` of a message tagged `<kind> <sender> <counter>`.
fn tag(msg: &[u8], kind: &str) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(msg).ok()?;
    let mut words = s.split(' ');
    if words.next()? != kind {
        return None;
    }
    let sender = words.next()?.parse().ok()?;
    let counter = words.next()?.parse().ok()?;
    words.next().is_none().then_some((sender, counter))
}

/// What one observer was handed.
#[derive(Debug, Default)]
struct Seen {
    a: Vec<Vec<u8>>,
    b: Vec<Vec<u8>>,
    /// Relayed messages whose cause had not yet been taken off A's ring when they
    /// arrived: the drain before the check had to find it (the cases where a
    /// reordering would show).
    close_calls: usize,
}

impl Seen {
    /// One line per message (`A <msg>` or `B <msg>`; messages are single-line text),
    /// then `close_calls <n>`.
    fn encode(&self) -> String {
        let mut out = String::new();
        for (prefix, list) in [("A", &self.a), ("B", &self.b)] {
            for m in list {
                out += &format!("{prefix} {}\n", text(m));
            }
        }
        out + &format!("close_calls {}\n", self.close_calls)
    }

    fn decode(s: &str) -> Result<Seen, String> {
        let mut seen = Seen::default();
        for line in s.lines() {
            match line.split_once(' ') {
                Some(("A", m)) => seen.a.push(m.as_bytes().to_vec()),
                Some(("B", m)) => seen.b.push(m.as_bytes().to_vec()),
                Some(("close_calls", n)) => {
                    seen.close_calls = n.parse().map_err(|_| format!("bad line {line:?}"))?
                }
                _ => return Err(format!("bad line {line:?}")),
            }
        }
        Ok(seen)
    }
}

/// Every step of a role either makes progress within [`EVENT_TIMEOUT`] or fails; any
/// failure stops the other roles of the process.
struct Watch<'a> {
    stop: &'a AtomicBool,
    last_progress: Instant,
    who: String,
}

impl Watch<'_> {
    fn progress(&mut self) {
        self.last_progress = Instant::now();
    }

    fn check(&self) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(format!("{}: stopped by another role's failure", self.who));
        }
        if self.last_progress.elapsed() > EVENT_TIMEOUT {
            return Err(self.fail(format!("no event for {EVENT_TIMEOUT:?}")));
        }
        Ok(())
    }

    /// Stops the other roles; the error to return.
    fn fail(&self, why: String) -> String {
        self.stop.store(true, Ordering::Relaxed);
        format!("{}: {why}", self.who)
    }
}

/// A role that panics (a send refused for good) stops the others at once.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Only other members' joins may show up while the observer runs (everyone is in
/// before the first message is sent), and after the group's last message, another
/// observer that is done and exits.
fn check_confchg(event: &Event, sender_pid: u32, complete: bool) -> Result<(), String> {
    match event {
        Event::Confchg { left, .. } if left.is_empty() => Ok(()),
        Event::Confchg { left, .. }
            if complete
                && left
                    .iter()
                    .all(|m| m.reason == ringcast::reason::PROCDOWN && m.pid != sender_pid) =>
        {
            Ok(())
        }
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Takes every event already waiting on `oa` (never waits) into `seen_a`.
fn drain_a(
    oa: &Cpg,
    sender_pid: u32,
    seen_a: &mut Vec<Vec<u8>>,
    set_a: &mut HashSet<Vec<u8>>,
) -> Result<usize, String> {
    let mut n = 0;
    loop {
        match oa.next_event(Some(Duration::ZERO)) {
            Ok(None) => return Ok(n),
            Ok(Some(Event::Deliver {
                group,
                node,
                pid,
                msg,
            })) => {
                let Some((sender, _)) = tag(&msg, "a") else {
                    return Err(format!("unexpected message on A: {:?}", text(&msg)));
                };
                if group != GROUP_A || node != sender || pid != sender_pid {
                    return Err(format!(
                        "{:?} labelled group {:?} node {node} pid {pid}",
                        text(&msg),
                        text(&group)
                    ));
                }
                set_a.insert(msg.clone());
                seen_a.push(msg);
                n += 1;
            }
            Ok(Some(Event::TotemConfchg { .. })) => {}
            Ok(Some(other)) => check_confchg(&other, sender_pid, seen_a.len() == A_TOTAL)
                .map_err(|e| format!("on A: {e}"))?,
            Err(e) => return Err(format!("next_event on A: {e}")),
        }
    }
}

/// One process in both groups, driving both handles from one thread: it reads B, and
/// A only when B hands it a relayed message, so that A's ring lags B's as far as the
/// engine allows. (Every message of A is relayed, so the last relayed one finds all of
/// A waiting.)
fn observe(oa: &Cpg, ob: &Cpg, sender_pid: u32, mut watch: Watch<'_>) -> Result<Seen, String> {
    let mut seen = Seen::default();
    let mut set_a = HashSet::new();
    while seen.a.len() < A_TOTAL || seen.b.len() < B_TOTAL {
        watch.check()?;
        let event = match ob.next_event(Some(Duration::from_millis(2))) {
            Ok(event) => event,
            Err(e) => return Err(watch.fail(format!("next_event on B: {e}"))),
        };
        match event {
            None | Some(Event::TotemConfchg { .. }) => {}
            Some(Event::Deliver {
                group,
                node,
                pid,
                msg,
            }) => {
                watch.progress();
                let labels_ok = group == GROUP_B && pid == sender_pid;
                if let Some(cause) = msg.strip_prefix(b"b ") {
                    if !labels_ok || node != RELAY_NODE {
                        let why = format!("{:?} labelled node {node} pid {pid}", text(&msg));
                        return Err(watch.fail(why));
                    }
                    // b(a) is visible: a must already be in A's ring.
                    let before = seen.a.len();
                    if let Err(why) = drain_a(oa, sender_pid, &mut seen.a, &mut set_a) {
                        return Err(watch.fail(why));
                    }
                    if !set_a.contains(cause) {
                        let why = format!(
                            "handed {:?} on B before its cause {:?} on A \
                             ({} A messages so far, the last {:?})",
                            text(&msg),
                            text(cause),
                            seen.a.len(),
                            seen.a.last().map(|m| text(m))
                        );
                        return Err(watch.fail(why));
                    }
                    if seen.a[before..].iter().any(|m| m == cause) {
                        seen.close_calls += 1;
                    }
                } else if tag(&msg, "d").is_none_or(|(sender, _)| !labels_ok || node != sender) {
                    let why = format!("unexpected {:?} node {node} pid {pid}", text(&msg));
                    return Err(watch.fail(why));
                }
                seen.b.push(msg);
            }
            Some(other) => {
                if let Err(e) = check_confchg(&other, sender_pid, seen.b.len() == B_TOTAL) {
                    return Err(watch.fail(format!("on B: {e}")));
                }
            }
        }
    }
    Ok(seen)
}

/// The observer process's side of the test: join A and B on one engine, observe, and
/// write what was handed to the output file (a panic is its failure).
fn run_observer(node: &str) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let socket = PathBuf::from(var(SOCKET_ENV));
    let out = PathBuf::from(var(OUT_ENV));
    let sender_pid: u32 = var(SENDER_PID_ENV).parse().expect("sender pid");
    let (oa, ob) = (connect(&socket), connect(&socket));
    retry(|| oa.join(GROUP_A));
    retry(|| ob.join(GROUP_B));
    let stop = AtomicBool::new(false);
    let watch = Watch {
        stop: &stop,
        last_progress: Instant::now(),
        who: format!("observer on node {node}"),
    };
    let seen = observe(&oa, &ob, sender_pid, watch).unwrap_or_else(|why| panic!("{why}"));
    std::fs::write(&out, seen.encode()).expect("write the observer's results");
}

/// An observer process, killed if still running when dropped.
struct Observer {
    node: u32,
    child: Child,
    out: PathBuf,
    stderr: PathBuf,
}

impl Observer {
    fn spawn(cluster: &Cluster, node: u32) -> Observer {
        let out = cluster.dir.join(format!("observer{node}.out"));
        let stderr = cluster.dir.join(format!("observer{node}.stderr"));
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(OBSERVER_ENV, node.to_string())
            .env(SOCKET_ENV, cluster.socket(node))
            .env(OUT_ENV, &out)
            .env(SENDER_PID_ENV, std::process::id().to_string())
            // The panic message is what the report needs.
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("observer stderr"))
            .spawn()
            .expect("spawn an observer process");
        Observer {
            node,
            child,
            out,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the observer was handed, once it exits (within `timeout`).
    fn results(&mut self, timeout: Duration) -> Result<Seen, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "observer {} still running after {timeout:?}",
                    self.node
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            return Err(format!("observer {} {status}: {stderr}", self.node));
        }
        let out = std::fs::read_to_string(&self.out).map_err(|e| {
            format!(
                "observer {} wrote no results ({e}): does it run {TEST_NAME}?",
                self.node
            )
        })?;
        Seen::decode(&out).map_err(|e| format!("observer {}: {e}", self.node))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay: every message it is handed on A, it multicasts on B as `b <message>`.
fn relay(ra: &Cpg, rb: &Cpg, mut watch: Watch<'_>) -> Result<(), String> {
    let _guard = StopOnPanic(watch.stop);
    let mut relayed = 0;
    while relayed < A_TOTAL {
        watch.check()?;
        match ra.next_event(Some(Duration::from_millis(50))) {
            Ok(None | Some(Event::TotemConfchg { .. })) => {}
            Ok(Some(Event::Deliver { msg, .. })) => {
                watch.progress();
                let mut b = b"b ".to_vec();
                b.extend_from_slice(&msg);
                retry(|| rb.mcast(Guarantee::Agreed, &b));
                relayed += 1;
            }
            Ok(Some(other)) => return Err(watch.fail(format!("unexpected event on A: {other:?}"))),
            Err(e) => return Err(watch.fail(format!("next_event on A: {e}"))),
        }
        // The relay is a member of B too: keep its ring short.
        while let Ok(Some(_)) = rb.next_event(Some(Duration::ZERO)) {}
    }
    Ok(())
}

/// Multicasts `PER_SENDER_A` messages to A and, interleaved, `PER_SENDER_DIRECT` to B,
/// in bursts that overlap with the relay's traffic (A runs ahead of the relay), each
/// followed by a pause long enough for the relay to catch up (its next message then
/// follows its cause as closely as Totem allows).
fn send(node: u32, sa: &Cpg, sb: &Cpg, stop: &AtomicBool) {
    let _guard = StopOnPanic(stop);
    let mut direct = 0;
    for i in 0..PER_SENDER_A {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        retry(|| sa.mcast(Guarantee::Agreed, format!("a {node} {i}").as_bytes()));
        if direct < PER_SENDER_DIRECT && i % 3 == 0 {
            retry(|| sb.mcast(Guarantee::Agreed, format!("d {node} {direct}").as_bytes()));
            direct += 1;
        }
        // The members' rings are far larger than all of this: draining them only
        // keeps the senders' sessions tidy.
        while let Ok(Some(_)) = sa.next_event(Some(Duration::ZERO)) {}
        while let Ok(Some(_)) = sb.next_event(Some(Duration::ZERO)) {}
        let pause = if i % BURST == BURST - 1 { 20_000 } else { 500 };
        std::thread::sleep(Duration::from_micros(pause));
    }
    assert_eq!(direct, PER_SENDER_DIRECT);
}

/// Per-sender counters of the messages of `kind` in `order`, by sender.
fn counters(order: &[Vec<u8>], kind: &str, sender: u32) -> Vec<u32> {
    order
        .iter()
        .filter_map(|m| tag(m, kind))
        .filter(|(s, _)| *s == sender)
        .map(|(_, i)| i)
        .collect()
}

/// docs/cpg.md §5.4: total order across groups, agreed delivery, per-sender FIFO. Three
/// engines, the default datagram size. This process sends (on nodes 1 and 2) and
/// relays (on node 3); one observer process per node checks the causal order and
/// reports what it was handed.
#[test]
fn a_relayed_message_never_overtakes_its_cause_across_groups() {
    if let Ok(node) = std::env::var(OBSERVER_ENV) {
        return run_observer(&node);
    }
    let mut cluster = Cluster::new("xgrp", free_port(3), 3);
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    let started = Instant::now();
    let me = std::process::id();

    let senders: Vec<(u32, Cpg, Cpg)> = SENDERS
        .iter()
        .map(|&id| {
            (
                id,
                connect(&cluster.socket(id)),
                connect(&cluster.socket(id)),
            )
        })
        .collect();
    let relay_socket = cluster.socket(RELAY_NODE);
    let (ra, rb) = (connect(&relay_socket), connect(&relay_socket));
    let ours: Vec<(&Cpg, &Cpg)> = senders
        .iter()
        .map(|(_, a, b)| (a, b))
        .chain([(&ra, &rb)])
        .collect();
    for (a, b) in &ours {
        retry(|| a.join(GROUP_A));
        retry(|| b.join(GROUP_B));
    }
    let mut observers: Vec<Observer> = OBSERVERS
        .iter()
        .map(|&id| Observer::spawn(&cluster, id))
        .collect();
    // Nobody sends before every member is in: then everyone is handed everything.
    let mut expected: Vec<(u32, u32)> = OBSERVERS
        .iter()
        .zip(&observers)
        .flat_map(|(&id, o)| [(id, me), (id, o.pid())])
        .collect();
    expected.sort();
    for (a, b) in &ours {
        wait_members(a, GROUP_A, &expected);
        wait_members(b, GROUP_B, &expected);
    }

    let stop = &AtomicBool::new(false);
    let relayed = std::thread::scope(|s| {
        for (id, sa, sb) in &senders {
            s.spawn(move || send(*id, sa, sb, stop));
        }
        let watch = Watch {
            stop,
            last_progress: Instant::now(),
            who: "relay".into(),
        };
        relay(&ra, &rb, watch)
    });
    let seen: Vec<Result<Seen, String>> = observers
        .iter_mut()
        .map(|o| o.results(EVENT_TIMEOUT))
        .collect();
    // An observer's failure is the cause of anything else going wrong: it goes first.
    let failures: Vec<&String> = seen
        .iter()
        .filter_map(|r| r.as_ref().err())
        .chain(relayed.as_ref().err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let seen: Vec<Seen> = seen.into_iter().map(Result::unwrap).collect();

    // Everyone was handed the same messages in the same order, in each group.
    for (id, s) in OBSERVERS.iter().zip(&seen).skip(1) {
        assert!(
            s.a == seen[0].a,
            "observer {id}'s A order differs from observer 1's"
        );
        assert!(
            s.b == seen[0].b,
            "observer {id}'s B order differs from observer 1's"
        );
    }
    let (order_a, order_b) = (&seen[0].a, &seen[0].b);
    assert_eq!(order_a.len(), A_TOTAL);
    assert_eq!(order_b.len(), B_TOTAL);
    for sender in SENDERS {
        assert_eq!(
            counters(order_a, "a", sender),
            (0..PER_SENDER_A).collect::<Vec<_>>(),
            "FIFO of sender {sender} in A"
        );
        assert_eq!(
            counters(order_b, "d", sender),
            (0..PER_SENDER_DIRECT).collect::<Vec<_>>(),
            "FIFO of sender {sender} in B"
        );
    }
    // The relay's messages are in its sending order, which is A's agreed order.
    let relayed: Vec<&[u8]> = order_b
        .iter()
        .filter_map(|m| m.strip_prefix(b"b "))
        .collect();
    let order_a_refs: Vec<&[u8]> = order_a.iter().map(Vec::as_slice).collect();
    assert!(relayed == order_a_refs, "the relay's FIFO in B");

    // The run is only meaningful if direct and relayed messages are interleaved in B,
    // the senders' messages in A, and some relayed messages arrived while their
    // causes were fresh.
    let switches = |order: &[Vec<u8>], first: fn(&[u8]) -> bool| {
        order
            .windows(2)
            .filter(|w| first(&w[0]) != first(&w[1]))
            .count()
    };
    let b_switches = switches(order_b, |m| m.starts_with(b"d "));
    let a_switches = switches(order_a, |m| tag(m, "a").is_some_and(|(s, _)| s == 1));
    let close_calls: Vec<usize> = seen.iter().map(|s| s.close_calls).collect();
    eprintln!(
        "{A_TOTAL} in A ({a_switches} sender switches), {B_TOTAL} in B ({b_switches} \
         direct/relayed switches), causes found only by the drain per observer: \
         {close_calls:?}, {:?} after the ring formed",
        started.elapsed()
    );
    assert!(
        close_calls.iter().all(|&n| n > 0),
        "the relay never caught up with A: no relayed message followed its cause closely"
    );
    assert!(
        a_switches >= 10,
        "senders' messages barely interleaved in A"
    );
    assert!(
        b_switches >= 10,
        "direct and relayed messages barely interleaved in B"
    );
}
