//! The host simulator: N [`Host`]s, each one node's whole service (Totem, CPG, the
//! routing between them, persistence as an output), with simulated clients, in the
//! seeded faulty network of [`crate::network`], under crashes, clean leaves and
//! restarts of nodes (docs/architecture.md, "The simulator").
//!
//! Each node has up to [`CONNS_PER_NODE`] client connections that connect, join,
//! leave, multicast (copied or in place, AGREED or SAFE), crash (the connection drops
//! while joined) and finalize without leaving, at random. Some of them are slow
//! readers: their events go through a simulated event ring of [`RING_EVENTS`] and a
//! backlog behind it, which the driver reports to the host after every input (the
//! host's flow control, docs/architecture.md "Flow control"), and they read a few
//! events now and then; and one observer connection
//! that never joins and places every completed sync in the node's event stream. The
//! driver writes each ring sequence the host asks for after a random delay; a node that
//! crashes meanwhile loses the write.
//!
//! Checked (docs/invariants.md, "Clients"):
//! - agreed order: any two connections order the messages and confchgs they both saw
//!   the same way, across groups; nobody gets a message twice;
//! - virtual synchrony: connections that pass from one view to the next together
//!   deliver the same messages in between, and connections whose next confchg is in
//!   the same ring see the same next confchg;
//! - per-sender FIFO, integrity (no message nobody sent, none corrupted, the right
//!   sender), self-delivery for senders that survive;
//! - no delivery after a member's own leave, and no message of another group;
//! - every connection gets one TOTEM_CONFCHG per completed sync, after it is
//!   persisted; ring sequences persisted per node id only grow (never reused);
//! - after the faults stop, every node completes a sync on one ring of all, every
//!   node's table is the same and holds exactly the joined connections, and each of
//!   those saw that membership in its last confchg;
//! - flow control: a slow reader gets every event while it is connected (the checks
//!   above hold for it, on what it reads, in the ring it was handed each event in);
//!   the host cuts it off only when the backlog the driver reported is over the
//!   limits, saying so.
//!
//! A run follows from its seed and [`HostOptions`] alone:
//! `ringcast-sim --hosts --seed S` replays it.

mod history;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::BytesMut;

use crate::network::{Network, NetworkOptions};
use crate::rng::{Rng, derive};
use history::{Disagreement, Step, order_violations, synchrony_violations};
use ringcast_proto::cpg::{
    self, Address, ClientEvent, ConnId, CpgError, GroupName, IterationKind, MCAST_HEADER_MAX,
    Member, Reason,
};
use ringcast_proto::host::{Backlog, CutOff, FlowLimits, Host, HostConfig, Notice};
use ringcast_proto::totem::{
    self, ConfigurationKind, Destination, Guarantee, Instant, NodeId, NodeState, RingId,
};

/// Everything about a host run except its seed.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOptions {
    /// Each seed picks a node count in `nodes_min..=nodes_max` (ids 1..=N).
    pub nodes_min: usize,
    pub nodes_max: usize,
    /// Virtual time with faults; then a final heal, one second of workload, and up to
    /// 35 s to become quiescent.
    pub duration: Duration,
    /// Print what happens.
    pub trace: bool,
}

impl Default for HostOptions {
    fn default() -> HostOptions {
        HostOptions {
            nodes_min: 2,
            nodes_max: 5,
            duration: Duration::from_secs(4),
            trace: false,
        }
    }
}

impl HostOptions {
    /// The command line that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        let d = HostOptions::default();
        let mut cmd = format!(
            "cargo run --release -p ringcast-sim --bin ringcast-sim -- --hosts --seed {seed}"
        );
        if (self.nodes_min, self.nodes_max) != (d.nodes_min, d.nodes_max) {
            let _ = write!(cmd, " --nodes {}-{}", self.nodes_min, self.nodes_max);
        }
        if self.duration != d.duration {
            let _ = write!(cmd, " --duration {}", self.duration.as_secs_f64());
        }
        cmd
    }
}

/// What one host run did and found.
#[derive(Clone, Debug, Default)]
pub struct HostReport {
    pub seed: u64,
    pub nodes: usize,
    pub violations: Vec<String>,
    /// Syncs completed, as the observers saw them.
    pub syncs: u64,
    /// Messages handed to connections (every receiver counted).
    pub delivered: u64,
    /// Messages the workload multicast from joined connections.
    pub sent: u64,
    pub connections: usize,
    /// Ring sequences written (and lost to a crash before they were).
    pub persisted: u64,
    pub persists_lost: u64,
    pub incarnations: u64,
    /// Slow readers, those the host cut off, and multicasts it held back meanwhile.
    pub slow_readers: u64,
    pub cut_off: u64,
    pub multicasts_held: u64,
    /// CPG's counters, summed over every incarnation.
    pub cpg: cpg::Stats,
    pub sim_time: Duration,
}

impl HostReport {
    /// One line for a summary.
    pub fn summary_line(&self) -> String {
        let mut s = format!(
            "seed {} nodes {} syncs {} sent {} delivered {} connections {} persisted {} \
             incarnations {} slow readers {} cut off {} held {} sim {:.2}s",
            self.seed,
            self.nodes,
            self.syncs,
            self.sent,
            self.delivered,
            self.connections,
            self.persisted,
            self.incarnations,
            self.slow_readers,
            self.cut_off,
            self.multicasts_held,
            self.sim_time.as_secs_f64()
        );
        if !self.violations.is_empty() {
            let _ = write!(s, " VIOLATIONS {}", self.violations.len());
        }
        s
    }
}

/// Runs one seed and checks it; a panic inside a host is a violation too.
pub fn run(seed: u64, options: &HostOptions) -> HostReport {
    let mut harness = Harness::new(seed, options);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.run_loop()));
    if let Err(panic) = result {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        harness.violation(format!("panic: {what}"));
    } else {
        harness.check_end();
    }
    let mut report = harness.report();
    if !report.violations.is_empty() {
        report
            .violations
            .push(format!("replay: {}", options.replay_command(seed)));
    }
    report
}

const GROUPS: [&[u8]; 3] = [b"alpha", b"beta", b"gamma\0"];
/// Client connections per node, besides the observer.
pub const CONNS_PER_NODE: usize = 3;
/// The observer's connection id on every node.
const OBSERVER: ConnId = 0;
/// After the final heal: workload for this long, then up to `SETTLE` to quiesce.
const TAIL: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(35);
const STEPS_MAX: u64 = 20_000_000;
/// Every host's flow limits: small, so that slow readers reach them.
const FLOW: FlowLimits = FlowLimits {
    max_events: 48,
    max_bytes: 256 << 10,
};
/// Events a slow reader's event ring holds; the rest wait in its backlog.
pub const RING_EVENTS: usize = 8;
/// Most events a slow reader reads at a time.
const SLOW_READ_MAX: u64 = 3;
/// Percent of connections that are slow readers.
const SLOW_PERCENT: u64 = 25;

fn group_name(i: usize) -> GroupName {
    GroupName::new(GROUPS[i]).expect("valid")
}

/// The payload of message `id`: its id, then bytes derived from it.
fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.extend((0..len).map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

/// What identifies one client event across nodes (see [`history`]): a message by its
/// id; a confchg by its content, where it was seen ([`Harness::seen_in`]), and how
/// many equal ones the connection saw before (a member may leave and join again in
/// one ring).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Msg(u64),
    Conf(Box<Conf>, u32),
}

/// See [`Harness::seen_in`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Seen {
    synced: RingId,
    totem: RingId,
    path: Vec<RingId>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Conf {
    ring: Seen,
    group: Vec<u8>,
    members: Vec<Member>,
    left: Vec<Address>,
    joined: Vec<Address>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Model {
    Unjoined,
    Joining,
    Joined,
    Leaving,
}

/// One connection's whole life, for the checkers.
#[derive(Debug)]
struct ConnLog {
    node: NodeId,
    incarnation: u32,
    conn: ConnId,
    pid: u32,
    keys: Vec<Key>,
    /// Messages received, by sending connection: their counters, in order.
    from: BTreeMap<usize, Vec<u64>>,
    /// The members of its group in its last confchg.
    view: Vec<Member>,
    /// TOTEM_CONFCHGs received, and the observer's count when it connected.
    totem_confchgs: u64,
    syncs_at_connect: u64,
    /// It asked to leave (so others may see it leave with reason LEAVE).
    asked_leave: bool,
    closed: bool,
}

impl ConnLog {
    fn name(&self) -> String {
        format!("n{}#{} conn {}", self.node, self.incarnation, self.conn)
    }

    fn member(&self) -> Member {
        Member {
            node: self.node,
            pid: self.pid,
        }
    }

    /// Records a confchg, numbered among the equal ones it saw before (see [`Key`]).
    fn push_conf(&mut self, conf: Conf) {
        let nth = self
            .keys
            .iter()
            .filter(|k| matches!(k, Key::Conf(c, _) if **c == conf))
            .count() as u32;
        self.view = conf.members.clone();
        self.keys.push(Key::Conf(Box::new(conf), nth));
    }
}

struct ConnState {
    log: usize,
    group: Option<usize>,
    model: Model,
    sent: u64,
    /// A slow reader's unread events (its event ring, then its backlog), each with
    /// where a confchg was seen when the host handed it over; `None` for a connection
    /// that reads every event at once.
    inbox: Option<VecDeque<(ClientEvent, Option<Seen>)>>,
}

impl ConnState {
    /// What waits behind the simulated event ring, as the daemon's driver counts it.
    fn backlog(&self) -> Backlog {
        let Some(inbox) = &self.inbox else {
            return Backlog::default();
        };
        let behind = inbox.iter().skip(RING_EVENTS);
        Backlog {
            events: inbox.len().saturating_sub(RING_EVENTS),
            bytes: behind.map(|(e, _)| event_bytes(e)).sum(),
        }
    }
}

/// Bytes an event pins while it waits (payloads counted whole).
fn event_bytes(event: &ClientEvent) -> usize {
    match event {
        ClientEvent::Deliver { payload, .. } => payload.len() + 64,
        ClientEvent::Confchg {
            members,
            left,
            joined,
            ..
        } => 160 + 12 * (members.len() + left.len() + joined.len()),
        ClientEvent::TotemConfchg { members, .. } => 32 + 4 * members.len(),
    }
}

struct Slot {
    host: Option<Host>,
    /// The ring sequence on "disk": survives crashes.
    stored_seq: u64,
    /// When the last write asked for completes: writes complete in the order they
    /// were asked for, as the daemon's one file is written.
    disk_busy_until: Instant,
    incarnation: u32,
    conns: BTreeMap<ConnId, ConnState>,
    next_conn: ConnId,
    /// The ring of the observer's last TOTEM_CONFCHG, and how many it had.
    ring: RingId,
    syncs: u64,
    /// Regular rings Totem installed since then.
    path: Vec<RingId>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Start(NodeId),
    Work(NodeId),
    /// A ring sequence write of one incarnation completes.
    Persisted(NodeId, u32, u64),
    Fault,
    FinalHeal,
    StopWorkload,
    Check,
    End,
}

/// A sent message: who sent it and its counter, to check integrity and FIFO.
struct Sent {
    log: usize,
    counter: u64,
    len: usize,
    /// Sent while joined: its sender must get it back if it survives.
    owed: bool,
}

struct Harness {
    seed: u64,
    options: HostOptions,
    n: usize,
    now: Instant,
    net: Network,
    slots: Vec<Slot>,
    work: Rng,
    faults: Rng,
    disk: Rng,
    schedule: BinaryHeap<Reverse<(Instant, u64, Action)>>,
    next_action: u64,
    logs: Vec<ConnLog>,
    /// Member -> its log, for the reasons others see.
    logs_by_member: BTreeMap<Member, usize>,
    sent: BTreeMap<u64, Sent>,
    next_msg: u64,
    faults_on: bool,
    workload_on: bool,
    quiescent: bool,
    done: bool,
    violations: Vec<String>,
    report: HostReport,
}

impl Harness {
    fn new(seed: u64, options: &HostOptions) -> Harness {
        let mut setup = Rng::new(derive(seed, 1));
        let lo = options.nodes_min.max(1) as u64;
        let n = setup.range(lo, (options.nodes_max as u64).max(lo)) as usize;
        let mut h = Harness {
            seed,
            options: options.clone(),
            n,
            now: Instant::ZERO,
            net: Network::new(NetworkOptions::default(), derive(seed, 2), n),
            slots: (0..=n)
                .map(|_| Slot {
                    host: None,
                    stored_seq: 0,
                    disk_busy_until: Instant::ZERO,
                    incarnation: 0,
                    conns: BTreeMap::new(),
                    next_conn: OBSERVER + 1,
                    ring: RingId::default(),
                    syncs: 0,
                    path: Vec::new(),
                })
                .collect(),
            work: Rng::new(derive(seed, 3)),
            faults: Rng::new(derive(seed, 4)),
            disk: Rng::new(derive(seed, 5)),
            schedule: BinaryHeap::new(),
            next_action: 0,
            logs: Vec::new(),
            logs_by_member: BTreeMap::new(),
            sent: BTreeMap::new(),
            next_msg: 1,
            faults_on: true,
            workload_on: true,
            quiescent: false,
            done: false,
            violations: Vec::new(),
            report: HostReport {
                seed,
                nodes: n,
                ..HostReport::default()
            },
        };
        for id in 1..=n as NodeId {
            let at = Instant::from_nanos(setup.below(20_000_000));
            h.at(at, Action::Start(id));
            h.at(at + Duration::from_millis(300), Action::Work(id));
        }
        h.at(Instant::ZERO + Duration::from_millis(500), Action::Fault);
        h.at(Instant::ZERO + options.duration, Action::FinalHeal);
        h
    }

    fn at(&mut self, at: Instant, action: Action) {
        self.next_action += 1;
        self.schedule.push(Reverse((at, self.next_action, action)));
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations
                .push(format!("seed {} t={:?}: {what}", self.seed, self.now));
        }
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.options.trace {
            println!("{:>12?} {what}", self.now);
        }
    }

    /// The ring of the node's last completed sync.
    fn synced_ring(&self, id: NodeId) -> RingId {
        let host = self.slots[id as usize].host.as_ref();
        host.and_then(Host::cpg_synced_ring).unwrap_or_default()
    }

    /// Where a client event is seen (docs/invariants.md, "Clients"):
    /// - in the regular configuration of the ring of the last completed sync: that
    ///   ring twice; every member of the ring sees the same there;
    /// - while Totem moves to a new ring (the old ring's last messages, delivered in
    ///   the transitional configuration): the synced ring and the new one; members
    ///   that move to the same new ring see the same, members that end up apart may
    ///   not;
    /// - at the activation of a sync (before the observer hears of it): the new ring,
    ///   and the path to it: the previously synced ring and every ring installed
    ///   since. Members that came the same way see the same activation confchgs;
    ///   members that met again after being apart do not (each sees the other leave
    ///   and come back).
    ///
    /// Events are drained after every input, and no input both delivers a message in
    /// a ring and installs the next.
    fn seen_in(&self, id: NodeId) -> Seen {
        let slot = &self.slots[id as usize];
        let totem = slot.host.as_ref().map(Host::ring_id).unwrap_or_default();
        let synced = self.synced_ring(id);
        let path = if synced != slot.ring {
            std::iter::once(slot.ring)
                .chain(slot.path.iter().copied())
                .collect()
        } else {
            Vec::new()
        };
        Seen {
            synced,
            totem,
            path,
        }
    }

    fn host(&mut self, id: NodeId) -> Option<&mut Host> {
        self.slots[id as usize].host.as_mut()
    }

    // ---------------------------------------------------------------- main loop

    /// Advances virtual time to the earliest of: the next scheduled action, the
    /// earliest host deadline, the next datagram arrival (ties in that order).
    fn run_loop(&mut self) {
        let deadline = Instant::ZERO + self.options.duration + TAIL + SETTLE;
        let mut steps = 0u64;
        while !self.done {
            steps += 1;
            if steps > STEPS_MAX {
                self.violation("step budget exhausted".into());
                return;
            }
            let scheduled = self.schedule.peek().map(|Reverse((t, _, _))| *t);
            let timer = (1..=self.n as NodeId)
                .filter_map(|id| Some((self.slots[id as usize].host.as_ref()?.poll_timeout()?, id)))
                .min();
            let datagram = self.net.next_due();
            let Some(next) = [scheduled, timer.map(|(t, _)| t), datagram]
                .into_iter()
                .flatten()
                .min()
            else {
                return;
            };
            if next > deadline {
                self.violation("no quiescence 35 s after the workload stopped".into());
                return;
            }
            self.now = self.now.max(next);
            if scheduled.is_some_and(|t| t <= next) {
                let Reverse((_, _, action)) = self.schedule.pop().expect("peeked");
                self.act(action);
            } else if let Some((_, id)) = timer.filter(|&(t, _)| t <= next) {
                let now = self.now;
                self.host(id).expect("alive").handle_timeout(now);
                self.drain(id);
            } else if let Some(d) = self.net.pop_due(self.now) {
                let now = self.now;
                if let Some(host) = self.host(d.to) {
                    host.handle_datagram(now, d.from, &d.payload);
                    self.drain(d.to);
                }
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(id) => self.start(id),
            Action::Work(id) => {
                if !self.workload_on {
                    return;
                }
                let next = Duration::from_millis(self.work.range(2, 30));
                self.at(self.now + next, Action::Work(id));
                if self.slots[id as usize].host.is_some() {
                    self.work_once(id);
                    self.drain(id);
                }
            }
            Action::Persisted(id, incarnation, seq) => self.persisted(id, incarnation, seq),
            Action::Fault => {
                if !self.faults_on {
                    return;
                }
                self.fault();
                let next = Duration::from_millis(self.faults.range(50, 700));
                self.at(self.now + next, Action::Fault);
            }
            Action::FinalHeal => {
                self.log(format_args!("FINAL HEAL"));
                self.faults_on = false;
                self.net.heal();
                self.net.burst = false;
                for id in 1..=self.n as NodeId {
                    self.start(id);
                }
                self.at(self.now + TAIL, Action::StopWorkload);
            }
            Action::StopWorkload => {
                self.workload_on = false;
                self.at(self.now, Action::Check);
            }
            Action::Check => {
                self.read_all();
                if self.settled() {
                    self.quiescent = true;
                    self.at(self.now + Duration::from_millis(500), Action::End);
                } else {
                    self.at(self.now + Duration::from_millis(10), Action::Check);
                }
            }
            Action::End => {
                self.read_all();
                self.done = true;
            }
        }
    }

    /// Every node operational in one ring of all, synchronised on it, persisted,
    /// nothing queued.
    fn settled(&self) -> bool {
        let all: Vec<NodeId> = (1..=self.n as NodeId).collect();
        let mut rings = BTreeSet::new();
        for id in 1..=self.n as NodeId {
            let Some(host) = &self.slots[id as usize].host else {
                return false;
            };
            if host.state() != NodeState::Operational
                || host.members() != all
                || host.cpg_in_sync()
                || host.cpg_synced_ring() != Some(host.ring_id())
                || host.cpg_owed_submissions() != 0
                || host.persist_pending()
                || host.send_queue_len() != 0
                || host.node().sync_queue_len() != 0
            {
                return false;
            }
            rings.insert(host.ring_id());
        }
        rings.len() == 1
    }

    // ------------------------------------------------------------------- nodes

    fn start(&mut self, id: NodeId) {
        if self.slots[id as usize].host.is_some() {
            return;
        }
        let mut totem = totem::Config::with_token(id, Duration::from_millis(200));
        totem.join = Duration::from_millis(30);
        totem.merge = Duration::from_millis(100);
        totem.max_datagram_bytes = if self.seed % 2 == 0 { 1500 } else { 9000 };
        // Corosync's counts, or sized from bytes as ringcastd does by default (at
        // Debian's rmem_max, and its cap).
        let window_bytes = [0, 212_992, 1 << 20][(self.seed / 2 % 3) as usize];
        if window_bytes != 0 {
            (totem.window_size, totem.max_messages) =
                totem::window_for_bytes(window_bytes, totem.max_datagram_bytes);
        }
        totem.max_message_bytes = 1 << 20;
        totem.send_queue_bytes = 4 << 20;
        totem.seed = derive(self.seed, 0x1000 + u64::from(id));
        let config = HostConfig {
            totem,
            cpg: cpg::Limits {
                max_message_bytes: (1 << 20) - MCAST_HEADER_MAX,
                ..cpg::Limits::default()
            },
            flow: FLOW,
        };
        let slot = &mut self.slots[id as usize];
        let mut host = Host::new(config, slot.stored_seq, self.now).expect("valid config");
        slot.incarnation += 1;
        slot.conns.clear();
        slot.ring = RingId::default();
        slot.syncs = 0;
        slot.path.clear();
        slot.next_conn = OBSERVER + 1;
        let pid = slot.incarnation * 1000;
        host.connect(OBSERVER, pid).expect("the first connection");
        slot.host = Some(host);
        self.report.incarnations += 1;
        self.log(format_args!(
            "START n{id}#{} from ring seq {}",
            self.slots[id as usize].incarnation, self.slots[id as usize].stored_seq
        ));
        self.drain(id);
    }

    fn stop(&mut self, id: NodeId, leave: bool) {
        let now = self.now;
        self.log(format_args!(
            "{} n{id}",
            if leave { "LEAVE" } else { "CRASH" }
        ));
        if leave {
            if let Some(host) = self.host(id) {
                host.leave(now);
            }
            self.drain(id);
        }
        let slot = &mut self.slots[id as usize];
        if let Some(host) = slot.host.take() {
            add_stats(&mut self.report.cpg, host.cpg_stats());
            self.report.multicasts_held += host.flow_stats().multicasts_held;
        }
        for c in slot.conns.values() {
            self.logs[c.log].closed = true;
        }
        slot.conns.clear();
        self.net.drop_to(id);
        let downtime = Duration::from_millis(self.faults.range(100, 1500));
        self.at(self.now + downtime, Action::Start(id));
    }

    /// The driver's half of persistence: a write the host asked for completes; a
    /// crash before that loses it.
    fn persisted(&mut self, id: NodeId, incarnation: u32, seq: u64) {
        let slot = &mut self.slots[id as usize];
        if slot.incarnation != incarnation || slot.host.is_none() {
            self.report.persists_lost += 1;
            return;
        }
        if seq <= slot.stored_seq {
            let stored = slot.stored_seq;
            self.violation(format!("n{id}: ring seq {seq} persisted after {stored}"));
            return;
        }
        slot.stored_seq = seq;
        self.report.persisted += 1;
        self.host(id).expect("alive").handle_persisted(seq);
        self.drain(id);
    }

    fn fault(&mut self) {
        let live: Vec<NodeId> = (1..=self.n as NodeId)
            .filter(|&id| self.slots[id as usize].host.is_some())
            .collect();
        match self.faults.below(10) {
            0..=2 if live.len() > 1 => {
                let id = live[self.faults.index(live.len())];
                self.stop(id, false);
            }
            3 if live.len() > 1 => {
                let id = live[self.faults.index(live.len())];
                self.stop(id, true);
            }
            4..=6 => {
                let mut ids: Vec<NodeId> = (1..=self.n as NodeId).collect();
                self.faults.shuffle(&mut ids);
                let cut = self.faults.range(1, self.n as u64 - 1) as usize;
                let mut sides = vec![ids[..cut].to_vec(), ids[cut..].to_vec()];
                sides.iter_mut().for_each(|s| s.sort_unstable());
                self.log(format_args!("PARTITION {sides:?}"));
                self.net.partition(&sides);
            }
            7 | 8 => {
                self.log(format_args!("HEAL"));
                self.net.heal();
            }
            _ => self.net.burst = !self.net.burst,
        }
    }

    // ----------------------------------------------------------------- clients

    /// One random client action on node `id`.
    fn work_once(&mut self, id: NodeId) {
        let slot = &self.slots[id as usize];
        if slot.conns.len() < CONNS_PER_NODE && self.work.below(100) < 30 {
            self.connect(id);
            return;
        }
        if slot.conns.is_empty() {
            return;
        }
        let conns: Vec<ConnId> = slot.conns.keys().copied().collect();
        let conn = conns[self.work.index(conns.len())];
        // A slow reader with events unread reads a few; it acts (and its model of
        // its own state is right) only once it has read everything.
        if slot.conns[&conn]
            .inbox
            .as_ref()
            .is_some_and(|i| !i.is_empty())
        {
            let n = self.work.range(1, SLOW_READ_MAX);
            return self.read(id, conn, n as usize);
        }
        let r = self.work.below(100);
        let model = slot.conns[&conn].model;
        match model {
            // A crash of the client, or a finalize without leave: the host sees the
            // connection go either way, and owes its members a PROCDOWN.
            _ if r < 3 => self.disconnect(id, conn),
            Model::Unjoined => self.join(id, conn),
            _ if r < 10 => self.leave(id, conn),
            _ => {
                let burst = if r > 95 { 8 } else { 1 };
                for _ in 0..burst {
                    if !self.mcast(id, conn) {
                        break;
                    }
                }
            }
        }
    }

    fn connect(&mut self, id: NodeId) {
        let slow = self.work.below(100) < SLOW_PERCENT;
        self.report.slow_readers += u64::from(slow);
        let slot = &mut self.slots[id as usize];
        let conn = slot.next_conn;
        slot.next_conn += 1;
        let pid = slot.incarnation * 1000 + conn as u32;
        let (incarnation, syncs) = (slot.incarnation, slot.syncs);
        let host = slot.host.as_mut().expect("alive");
        host.connect(conn, pid).expect("below the limits");
        self.logs.push(ConnLog {
            node: id,
            incarnation,
            conn,
            pid,
            keys: Vec::new(),
            from: BTreeMap::new(),
            view: Vec::new(),
            totem_confchgs: 0,
            syncs_at_connect: syncs,
            asked_leave: false,
            closed: false,
        });
        let log = self.logs.len() - 1;
        self.logs_by_member.insert(self.logs[log].member(), log);
        slot.conns.insert(
            conn,
            ConnState {
                log,
                group: None,
                model: Model::Unjoined,
                sent: 0,
                inbox: slow.then(VecDeque::new),
            },
        );
    }

    /// Slow reader `conn` on node `id` reads up to `n` of its events.
    fn read(&mut self, id: NodeId, conn: ConnId, n: usize) {
        for _ in 0..n {
            let slot = &mut self.slots[id as usize];
            let Some(inbox) = slot.conns.get_mut(&conn).and_then(|c| c.inbox.as_mut()) else {
                return;
            };
            let Some((event, seen)) = inbox.pop_front() else {
                return;
            };
            self.client_event(id, conn, event, seen);
        }
    }

    /// Every slow reader reads everything (the workload is over).
    fn read_all(&mut self) {
        for id in 1..=self.n as NodeId {
            let conns: Vec<ConnId> = self.slots[id as usize].conns.keys().copied().collect();
            for conn in conns {
                self.read(id, conn, usize::MAX);
            }
        }
    }

    fn disconnect(&mut self, id: NodeId, conn: ConnId) {
        let now = self.now;
        self.host(id).expect("alive").disconnect(now, conn);
        let c = self.slots[id as usize].conns.remove(&conn).expect("listed");
        self.logs[c.log].closed = true;
    }

    /// Checks a request's result: `TRY_AGAIN` is always allowed, and is the only
    /// answer during a sync. Returns whether it was accepted.
    fn expect(
        &mut self,
        id: NodeId,
        conn: ConnId,
        what: &str,
        result: Result<(), CpgError>,
        ok: Result<(), CpgError>,
    ) -> bool {
        let in_sync = self.slots[id as usize]
            .host
            .as_ref()
            .is_some_and(Host::cpg_in_sync);
        let want = if in_sync { Err(CpgError::TryAgain) } else { ok };
        if result != want && result != Err(CpgError::TryAgain) {
            self.violation(format!(
                "n{id} conn {conn} {what}: {result:?}, expected {want:?}"
            ));
        }
        result.is_ok()
    }

    fn join(&mut self, id: NodeId, conn: ConnId) {
        let now = self.now;
        let g = self.work.index(GROUPS.len());
        let result = self
            .host(id)
            .expect("alive")
            .join(now, conn, &group_name(g), false);
        if self.expect(id, conn, "join", result, Ok(())) {
            let c = self.slots[id as usize]
                .conns
                .get_mut(&conn)
                .expect("listed");
            c.model = Model::Joining;
            c.group = Some(g);
        }
    }

    fn leave(&mut self, id: NodeId, conn: ConnId) {
        let now = self.now;
        let c = &self.slots[id as usize].conns[&conn];
        let (model, g, log) = (c.model, group_name(c.group.expect("has a group")), c.log);
        let result = self.host(id).expect("alive").leave_group(now, conn, &g);
        let want = match model {
            Model::Joining => Err(CpgError::Busy),
            Model::Joined => Ok(()),
            _ => Err(CpgError::NotExist),
        };
        if self.expect(id, conn, "leave", result, want) && model == Model::Joined {
            self.logs[log].asked_leave = true;
            let c = self.slots[id as usize]
                .conns
                .get_mut(&conn)
                .expect("listed");
            c.model = Model::Leaving;
        }
    }

    /// One multicast, copied or in place, AGREED or SAFE; whether it was accepted.
    fn mcast(&mut self, id: NodeId, conn: ConnId) -> bool {
        let now = self.now;
        let msg = self.next_msg;
        let len = if self.work.chance(0.05) {
            self.work.range(2000, 20_000) as usize
        } else {
            self.work.below(100) as usize
        };
        let guarantee = if self.work.chance(0.2) {
            Guarantee::Safe
        } else {
            Guarantee::Agreed
        };
        let in_place = self.work.chance(0.3);
        let data = payload(msg, len);
        let host = self.host(id).expect("alive");
        let result = if in_place {
            let mut buf = BytesMut::zeroed(MCAST_HEADER_MAX);
            buf.extend_from_slice(&data);
            host.mcast_in_place(now, conn, guarantee, buf)
                .map_err(|(e, _)| e)
        } else {
            host.mcast(now, conn, guarantee, &[&data])
        };
        if !self.expect(id, conn, "mcast", result, Ok(())) {
            return false;
        }
        let c = self.slots[id as usize]
            .conns
            .get_mut(&conn)
            .expect("listed");
        self.next_msg += 1;
        self.sent.insert(
            msg,
            Sent {
                log: c.log,
                counter: c.sent,
                len,
                // A joining connection's message goes out, a leaving one's is dropped
                // (docs/cpg.md): only a joined connection's is owed to itself.
                owed: c.model == Model::Joined,
            },
        );
        c.sent += 1;
        true
    }

    // ----------------------------------------------------------------- outputs

    /// Acts on a host's outputs after an input: persistence, datagrams, client events
    /// (checked as they come), notices; then lets CPG retry what Totem refused.
    fn drain(&mut self, id: NodeId) {
        let now = self.now;
        let mut polled = false;
        loop {
            let incarnation = self.slots[id as usize].incarnation;
            let Some(host) = self.host(id) else {
                return;
            };
            if let Some(seq) = host.poll_persist() {
                let delay = Duration::from_micros(self.disk.range(0, 5000));
                let slot = &mut self.slots[id as usize];
                let done = (now + delay).max(slot.disk_busy_until);
                slot.disk_busy_until = done;
                self.at(done, Action::Persisted(id, incarnation, seq));
                continue;
            }
            if let Some(t) = host.poll_transmit() {
                let datagram = t.payload.into_bytes();
                match t.destination {
                    Destination::All => {
                        for to in 1..=self.n as NodeId {
                            self.net.send(now, id, to, false, datagram.clone());
                        }
                    }
                    Destination::Node(to) if (1..=self.n as NodeId).contains(&to) => {
                        self.net.send(now, id, to, true, datagram);
                    }
                    Destination::Node(_) => {}
                }
                continue;
            }
            // Notices before events: a regular configuration is known before the
            // confchgs of its sync's activation are looked at.
            if let Some(notice) = host.poll_notice() {
                self.notice(id, notice);
                continue;
            }
            if let Some((conn, event)) = host.poll_event() {
                polled = false;
                self.hand_over(id, conn, event);
                continue;
            }
            if self.flow(id) {
                polled = false;
                continue;
            }
            if polled {
                return;
            }
            polled = true;
            self.host(id).expect("alive").poll(now);
        }
    }

    /// An event the host hands connection `conn`: read at once, or queued for a slow
    /// reader with where it was seen now.
    fn hand_over(&mut self, id: NodeId, conn: ConnId, event: ClientEvent) {
        let slow = self.slots[id as usize]
            .conns
            .get(&conn)
            .is_some_and(|c| c.inbox.is_some());
        if !slow {
            return self.client_event(id, conn, event, None);
        }
        let seen = match &event {
            ClientEvent::Deliver { .. } => None,
            _ => Some(self.seen_in(id)),
        };
        let c = self.slots[id as usize]
            .conns
            .get_mut(&conn)
            .expect("listed");
        c.inbox.as_mut().expect("slow").push_back((event, seen));
    }

    /// The driver's half of flow control: every slow reader's backlog goes to the
    /// host, then the connections it cut off are closed. Whether anyone was.
    fn flow(&mut self, id: NodeId) -> bool {
        let now = self.now;
        let slot = &mut self.slots[id as usize];
        let Some(host) = slot.host.as_mut() else {
            return false;
        };
        for (&conn, c) in &slot.conns {
            if c.inbox.is_some() {
                host.handle_backlog(now, conn, c.backlog());
            }
        }
        let mut any = false;
        while let Some((conn, why)) = self.host(id).and_then(Host::poll_cut_off) {
            any = true;
            self.cut_off(id, conn, why);
        }
        any
    }

    /// The host cut `conn` off: only for a backlog over the limits, as reported.
    fn cut_off(&mut self, id: NodeId, conn: ConnId, why: CutOff) {
        self.log(format_args!("n{id} conn {conn} CUT OFF: {why}"));
        self.report.cut_off += 1;
        let Some(c) = self.slots[id as usize].conns.get(&conn) else {
            return self.violation(format!("n{id}: cut off unknown connection {conn}"));
        };
        let backlog = c.backlog();
        let CutOff::SlowReader(reported) = why;
        let over = backlog.events > FLOW.max_events || backlog.bytes > FLOW.max_bytes;
        if reported != backlog || !over {
            self.violation(format!(
                "n{id} conn {conn} cut off ({why}) with backlog {backlog:?}"
            ));
        }
        self.disconnect(id, conn);
    }

    fn notice(&mut self, id: NodeId, notice: Notice) {
        match notice {
            Notice::Configuration(c) if c.kind == ConfigurationKind::Regular => {
                self.slots[id as usize].path.push(c.ring_id);
            }
            Notice::Configuration(_) => {}
            Notice::Foreign(service, _) => {
                self.violation(format!("n{id}: a delivery of service {service:?}"));
            }
        }
    }

    /// A connection reads an event; `seen` is where a slow reader's was handed over
    /// (the others read theirs at once: it is where the node is now).
    fn client_event(&mut self, id: NodeId, conn: ConnId, event: ClientEvent, seen: Option<Seen>) {
        if conn == OBSERVER {
            return self.observer_event(id, event);
        }
        let Some(state) = self.slots[id as usize].conns.get(&conn) else {
            return self.violation(format!("n{id}: event for unknown connection {conn}"));
        };
        let log = state.log;
        match event {
            ClientEvent::TotemConfchg { ring_id, members } => {
                let ring = seen.map_or_else(|| self.synced_ring(id), |s| s.synced);
                if ring_id != ring || !members.contains(&id) {
                    self.violation(format!(
                        "n{id} conn {conn}: totem confchg {ring_id} {members:?}, synced on {ring}"
                    ));
                }
                self.logs[log].totem_confchgs += 1;
            }
            ClientEvent::Deliver {
                group,
                sender,
                payload: data,
                ..
            } => self.delivered(id, conn, group, sender, &data),
            ClientEvent::Confchg {
                group,
                members,
                left,
                joined,
            } => {
                let ring = seen.unwrap_or_else(|| self.seen_in(id));
                self.confchg(id, conn, ring, group, members, left, joined)
            }
        }
    }

    /// The observer places syncs in the event stream; the ring it names must be
    /// persisted already and newer than the last.
    fn observer_event(&mut self, id: NodeId, event: ClientEvent) {
        let ClientEvent::TotemConfchg { ring_id, members } = event else {
            return self.violation(format!("n{id}: the observer got {event:?}"));
        };
        let slot = &mut self.slots[id as usize];
        let (stored, previous) = (slot.stored_seq, slot.ring);
        slot.ring = ring_id;
        slot.syncs += 1;
        slot.path.clear();
        self.report.syncs += 1;
        self.log(format_args!("n{id} sync {ring_id} {members:?}"));
        if ring_id.seq > stored || ring_id.seq <= previous.seq || !members.contains(&id) {
            self.violation(format!(
                "n{id}: sync of {ring_id} {members:?} after {previous}, ring seq stored {stored}"
            ));
        }
    }

    fn delivered(
        &mut self,
        id: NodeId,
        conn: ConnId,
        group: GroupName,
        sender: Member,
        data: &[u8],
    ) {
        self.report.delivered += 1;
        self.log(format_args!(
            "n{id} conn {conn} deliver {group:?} from {sender:?}"
        ));
        let state = &self.slots[id as usize].conns[&conn];
        let (li, model, own_group) = (state.log, state.model, state.group.map(group_name));
        let mut problems = Vec::new();
        if own_group.as_ref() != Some(&group) {
            let after_leave = model == Model::Unjoined && self.logs[li].asked_leave;
            problems.push(if after_leave {
                format!("a message of {group:?} after its own leave")
            } else {
                format!("a message of {group:?} in {own_group:?} ({model:?})")
            });
        }
        let msg_id = data
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let Some((m, sent)) = msg_id.and_then(|m| self.sent.get(&m).map(|s| (m, s))) else {
            return self.violation(format!("n{id} conn {conn}: a message nobody sent"));
        };
        let (from, counter) = (sent.log, sent.counter);
        if sender != self.logs[from].member() {
            problems.push(format!("message {m} from {sender:?}"));
        }
        if data[..] != payload(m, sent.len)[..] {
            problems.push(format!("message {m} corrupted"));
        }
        let log = &mut self.logs[li];
        let key = Key::Msg(m);
        if log.keys.contains(&key) {
            problems.push(format!("message {m} twice"));
        }
        log.keys.push(key);
        log.from.entry(from).or_default().push(counter);
        for p in problems {
            self.violation(format!("n{id} conn {conn}: {p}"));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn confchg(
        &mut self,
        id: NodeId,
        conn: ConnId,
        ring: Seen,
        group: GroupName,
        members: Vec<Address>,
        left: Vec<Address>,
        joined: Vec<Address>,
    ) {
        self.log(format_args!(
            "n{id} conn {conn} confchg {group:?} in {ring:?}: {members:?} left {left:?} joined {joined:?}"
        ));
        let state = &self.slots[id as usize].conns[&conn];
        let (li, model, own_group) = (state.log, state.model, state.group.map(group_name));
        let me = self.logs[li].member();
        let members: Vec<Member> = members.iter().map(|a| a.member).collect();
        let mut problems = self.confchg_shape(&members, &left, &joined);
        if own_group.as_ref() != Some(&group) {
            problems.push(format!("a confchg of {group:?} in {own_group:?}"));
        }
        let mut model = model;
        if joined
            .iter()
            .any(|a| a.member == me && a.reason == Reason::Join)
        {
            if model != Model::Joining {
                problems.push(format!("own join in {model:?}"));
            }
            model = Model::Joined;
        }
        let exit = left.iter().find(|a| a.member == me).copied();
        if let Some(a) = exit {
            if a.reason != Reason::Leave || model != Model::Leaving {
                problems.push(format!("left with {:?} in {model:?}", a.reason));
            }
            model = Model::Unjoined;
        }
        let state = self.slots[id as usize]
            .conns
            .get_mut(&conn)
            .expect("listed");
        state.model = model;
        if exit.is_some() {
            state.group = None;
        }
        let conf = Conf {
            ring,
            group: group.as_bytes().to_vec(),
            members,
            left,
            joined,
        };
        self.logs[li].push_conf(conf);
        for p in problems {
            self.violation(format!("n{id} conn {conn}: {p}"));
        }
    }

    /// What is wrong with a confchg on its own: members unsorted, a joiner not among
    /// them, a leaver still among them, a member that left with LEAVE but never asked.
    fn confchg_shape(
        &self,
        members: &[Member],
        left: &[Address],
        joined: &[Address],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if !members.windows(2).all(|w| w[0] < w[1])
            || joined.iter().any(|a| !members.contains(&a.member))
            || left.iter().any(|a| members.contains(&a.member))
        {
            problems.push(format!(
                "confchg {members:?} left {left:?} joined {joined:?}"
            ));
        }
        for a in left.iter().filter(|a| a.reason == Reason::Leave) {
            let asked = self
                .logs_by_member
                .get(&a.member)
                .is_some_and(|&l| self.logs[l].asked_leave);
            if !asked {
                problems.push(format!("{:?} left with LEAVE, never asked", a.member));
            }
        }
        problems
    }

    // ---------------------------------------------------------------- checkers

    fn check_end(&mut self) {
        if !self.quiescent && self.violations.is_empty() {
            self.violation("the run ended before quiescence".into());
        }
        if self.quiescent {
            self.check_tables();
            self.check_survivors();
        }
        self.check_fifo();
        self.check_order();
        self.check_synchrony();
    }

    /// After quiescence: one table everywhere, equal to the joined connections, each of
    /// which saw it in its last confchg.
    fn check_tables(&mut self) {
        let tables: Vec<Vec<(GroupName, Member)>> = (1..=self.n as NodeId)
            .map(|id| {
                let host = self.slots[id as usize].host.as_ref().expect("all up");
                host.iterate(IterationKind::All, None).expect("valid")
            })
            .collect();
        let mut problems = Vec::new();
        for (i, t) in tables.iter().enumerate().skip(1) {
            if *t != tables[0] {
                problems.push(format!(
                    "tables differ: n1 {:?} vs n{} {t:?}",
                    tables[0],
                    i + 1
                ));
            }
        }
        let mut expected = Vec::new();
        for id in 1..=self.n as NodeId {
            for (conn, c) in &self.slots[id as usize].conns {
                let log = &self.logs[c.log];
                match c.model {
                    Model::Joined => {
                        let g = group_name(c.group.expect("joined"));
                        expected.push((g.clone(), log.member()));
                        let members: Vec<Member> = tables[0]
                            .iter()
                            .filter(|(name, _)| *name == g)
                            .map(|(_, m)| *m)
                            .collect();
                        if log.view != members {
                            problems.push(format!(
                                "n{id} conn {conn}: last view {:?}, table {members:?}",
                                log.view
                            ));
                        }
                    }
                    Model::Unjoined => {}
                    other => problems.push(format!("n{id} conn {conn} still {other:?}")),
                }
            }
        }
        expected.sort();
        if expected != tables[0] {
            problems.push(format!("table {:?}, joined {expected:?}", tables[0]));
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// After quiescence: what surviving connections sent came back to them, and each
    /// got one TOTEM_CONFCHG per sync of its node since it connected.
    fn check_survivors(&mut self) {
        let mut problems = Vec::new();
        for (m, s) in &self.sent {
            let log = &self.logs[s.log];
            if s.owed && !log.closed && !log.keys.contains(&Key::Msg(*m)) {
                problems.push(format!("{}: own message {m} not delivered", log.name()));
            }
        }
        for id in 1..=self.n as NodeId {
            let slot = &self.slots[id as usize];
            for c in slot.conns.values() {
                let log = &self.logs[c.log];
                if log.totem_confchgs != slot.syncs - log.syncs_at_connect {
                    problems.push(format!(
                        "{}: {} totem confchgs, {} syncs since it connected",
                        log.name(),
                        log.totem_confchgs,
                        slot.syncs - log.syncs_at_connect
                    ));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Per-sender FIFO: every receiver got each sender's messages in send order.
    fn check_fifo(&mut self) {
        let mut problems = Vec::new();
        for log in &self.logs {
            for (sender, counters) in &log.from {
                if !counters.windows(2).all(|w| w[0] < w[1]) {
                    let from = self.logs[*sender].name();
                    problems.push(format!("{}: messages of {from} out of order", log.name()));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Agreed order: any two connections order what they both saw the same way.
    fn check_order(&mut self) {
        let keys: Vec<&[Key]> = self.logs.iter().map(|l| &l.keys[..]).collect();
        let problems: Vec<String> = order_violations(&keys)
            .into_iter()
            .take(5)
            .map(|(a, b, key)| {
                let (la, lb) = (self.logs[a].name(), self.logs[b].name());
                format!("{la} and {lb} disagree on the order of {key:?}")
            })
            .collect();
        for p in problems {
            self.violation(p);
        }
    }

    /// Virtual synchrony (see [`history::synchrony_violations`]).
    fn check_synchrony(&mut self) {
        let logs: Vec<(&[Key], bool)> = self
            .logs
            .iter()
            .map(|l| (&l.keys[..], self.quiescent && !l.closed))
            .collect();
        let members: Vec<Member> = self.logs.iter().map(ConnLog::member).collect();
        let classify = |log: usize, k: &Key| match k {
            Key::Msg(_) => Step::Message,
            Key::Conf(c, _) if c.left.iter().any(|a| a.member == members[log]) => Step::Exit,
            Key::Conf(..) => Step::View,
        };
        let ring_of = |k: &Key| match k {
            Key::Conf(c, _) => Some((c.ring.clone(), c.group.clone())),
            Key::Msg(_) => None,
        };
        let problems: Vec<String> = synchrony_violations(&logs, classify, ring_of)
            .into_iter()
            .take(5)
            .map(|(a, b, d)| {
                let (la, lb) = (self.logs[a].name(), self.logs[b].name());
                match d {
                    Disagreement::Messages(view) => {
                        format!("{la} and {lb} delivered different messages after {view:?}")
                    }
                    Disagreement::NextView(view) => {
                        format!("{la} and {lb} saw different confchgs after {view:?}")
                    }
                }
            })
            .collect();
        for p in problems {
            self.violation(p);
        }
    }

    fn report(&mut self) -> HostReport {
        for slot in &self.slots {
            if let Some(host) = &slot.host {
                add_stats(&mut self.report.cpg, host.cpg_stats());
                self.report.multicasts_held += host.flow_stats().multicasts_held;
            }
        }
        let mut report = std::mem::take(&mut self.report);
        report.violations = std::mem::take(&mut self.violations);
        report.sent = self.sent.values().filter(|s| s.owed).count() as u64;
        report.connections = self.logs.len();
        report.sim_time = self.now - Instant::ZERO;
        report
    }
}

/// Adds one service's counters to a sum.
pub fn add_stats(sum: &mut cpg::Stats, s: &cpg::Stats) {
    sum.messages_delivered += s.messages_delivered;
    sum.dropped_unknown_node += s.dropped_unknown_node;
    sum.dropped_not_joined += s.dropped_not_joined;
    sum.malformed += s.malformed;
    sum.stale_joinlists += s.stale_joinlists;
    sum.ignored += s.ignored;
    sum.held += s.held;
    sum.held_applied_on_abort += s.held_applied_on_abort;
    sum.syncs_completed += s.syncs_completed;
    sum.syncs_aborted += s.syncs_aborted;
    sum.submit_retries += s.submit_retries;
}

#[cfg(test)]
mod tests;
