//! The deterministic cluster simulator (docs/architecture.md; in the manner of
//! TigerBeetle's VOPR): N [`Node`]s on one thread, virtual time, a seeded network that
//! drops, duplicates, reorders, delays and partitions, nodes that crash, leave and
//! restart, a workload of checksummed messages, and checkers for every guarantee
//! (docs/invariants.md) run over the recorded trace.
//!
//! Everything a run does follows from one `u64` seed and the [`SimOptions`]: a failing
//! seed replays bit-for-bit (`ringcast-sim --seed S`).
//!
//! The main loop repeatedly advances the virtual clock to the earliest of: the next
//! scheduled action (fault, workload, restart, check), the earliest node deadline
//! (`poll_timeout`), the next datagram arrival; ties are broken in that order, nodes by
//! id and datagrams by send order. After every call into a node it drains the node's
//! transmits into the network and its events into the trace.
#![forbid(unsafe_code)]

pub mod checker;
pub mod gs;
pub mod hosts;
pub mod network;
pub mod rng;
pub mod trace;
pub mod workload;

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use checker::Violation;
use network::{Network, NetworkOptions, NetworkStats};
use ringcast_proto::totem::{
    Config, Destination, Event, Guarantee, Instant, Node, NodeId, NodeState, RingSeqStore,
    SubmitError,
};
use rng::{Rng, derive};
use trace::{End, Incarnation, MsgId, Record, RecordKind, Trace, fmt_instant};
use workload::WorkloadOptions;

/// Which faults the schedule injects, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultOptions {
    /// Mean faults per virtual second (inter-arrival uniform in `0..2/rate`).
    pub rate: f64,
    pub crash: bool,
    /// Clean departures (`Node::leave`), counted with crashes as node failures.
    pub leave: bool,
    pub partition: bool,
    /// Bursts of heavy loss (`NetworkOptions::burst_drop`) on and off.
    pub burst: bool,
    /// Loss of unicast datagrams only (tokens) on and off.
    pub token_loss: bool,
    /// A crashed node restarts after a downtime in this range.
    pub downtime_min: Duration,
    pub downtime_max: Duration,
}

impl Default for FaultOptions {
    fn default() -> FaultOptions {
        FaultOptions {
            rate: 2.0,
            crash: true,
            leave: true,
            partition: true,
            burst: true,
            token_loss: true,
            downtime_min: Duration::from_millis(100),
            downtime_max: Duration::from_secs(3),
        }
    }
}

/// Everything about a run except its seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// Each seed picks a node count in `nodes_min..=nodes_max` (ids 1..=N).
    pub nodes_min: usize,
    pub nodes_max: usize,
    /// Virtual time with faults.
    pub duration: Duration,
    /// Workload time after the final heal.
    pub tail: Duration,
    /// After the workload stops, the cluster must be quiescent within this long.
    ///
    /// Default 10 s, justified for the default timers (token 200 ms, consensus 240 ms,
    /// join 30 ms, merge 100 ms): one membership round takes at most merge, consensus
    /// and two commit-token rotations, ≈ 0.4 s; a round can be restarted by each node
    /// that shows up late (at most N = 16), ≈ 6.4 s; draining the send queues (a few
    /// MiB at ≥ 10 MB/s of virtual throughput) takes ≈ 1 s.
    pub settle_limit: Duration,
    /// Totem timers of every node (`Config::with_token`, then join and merge; the
    /// others derive as in Corosync).
    pub token: Duration,
    pub join: Duration,
    pub merge: Duration,
    /// Each seed picks `max_datagram_bytes` among these.
    pub datagram_bytes: Vec<usize>,
    /// Each seed picks a flow-control window among these, in bytes
    /// (`totem::window_for_bytes`, as ringcastd sizes it by default); 0 keeps
    /// Corosync's datagram counts (50 and 17).
    pub window_bytes: Vec<usize>,
    pub network: NetworkOptions,
    pub faults: FaultOptions,
    pub workload: WorkloadOptions,
    /// Print every event as it happens.
    pub trace: bool,
    /// Also print every datagram arrival, decoded.
    pub trace_net: bool,
    /// Hang guard: a run that takes more steps is cut short and reported.
    pub max_steps: u64,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes_min: 2,
            nodes_max: 8,
            duration: Duration::from_secs(10),
            tail: Duration::from_secs(1),
            settle_limit: Duration::from_secs(10),
            token: Duration::from_millis(200),
            join: Duration::from_millis(30),
            merge: Duration::from_millis(100),
            datagram_bytes: vec![1500, 9000, 65000],
            // Corosync's counts; ringcastd's default at Debian's rmem_max; its cap.
            window_bytes: vec![0, 212_992, 1 << 20],
            network: NetworkOptions::default(),
            faults: FaultOptions::default(),
            workload: WorkloadOptions::default(),
            trace: false,
            trace_net: false,
            max_steps: 200_000_000,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn micros(d: Duration) -> String {
    format!("{}", d.as_micros())
}

impl SimOptions {
    /// The `ringcast-sim` flags that reproduce these options (only those that differ
    /// from the defaults).
    pub fn to_args(&self) -> Vec<String> {
        let d = SimOptions::default();
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            args.push(format!("--{name}"));
            args.extend(value);
        };
        if (self.nodes_min, self.nodes_max) != (d.nodes_min, d.nodes_max) {
            flag(
                "nodes",
                Some(if self.nodes_min == self.nodes_max {
                    self.nodes_min.to_string()
                } else {
                    format!("{}-{}", self.nodes_min, self.nodes_max)
                }),
            );
        }
        macro_rules! differs {
            ($($field:ident).+, $name:literal, $fmt:expr) => {
                if self.$($field).+ != d.$($field).+ {
                    flag($name, Some($fmt(self.$($field).+)));
                }
            };
        }
        let f64s = |v: f64| format!("{v}");
        differs!(duration, "duration", secs);
        differs!(tail, "tail", secs);
        differs!(settle_limit, "settle", secs);
        differs!(token, "token-ms", |v: Duration| v.as_millis().to_string());
        differs!(join, "join-ms", |v: Duration| v.as_millis().to_string());
        differs!(merge, "merge-ms", |v: Duration| v.as_millis().to_string());
        if self.datagram_bytes != d.datagram_bytes {
            let list: Vec<String> = self.datagram_bytes.iter().map(|b| b.to_string()).collect();
            flag("datagram", Some(list.join(",")));
        }
        if self.window_bytes != d.window_bytes {
            let list: Vec<String> = self.window_bytes.iter().map(|b| b.to_string()).collect();
            flag("window-bytes", Some(list.join(",")));
        }
        differs!(network.drop, "drop", f64s);
        differs!(network.duplicate, "dup", f64s);
        differs!(network.reorder, "reorder", f64s);
        differs!(network.reorder_delay, "reorder-delay-us", micros);
        differs!(network.delay_min, "delay-min-us", micros);
        differs!(network.delay_max, "delay-max-us", micros);
        differs!(network.burst_drop, "burst-drop", f64s);
        differs!(network.token_drop, "token-drop", f64s);
        differs!(faults.rate, "fault-rate", f64s);
        differs!(faults.downtime_min, "downtime-min", secs);
        differs!(faults.downtime_max, "downtime-max", secs);
        for (on, default, name) in [
            (self.faults.crash, d.faults.crash, "no-crash"),
            (self.faults.leave, d.faults.leave, "no-leave"),
            (self.faults.partition, d.faults.partition, "no-partition"),
            (self.faults.burst, d.faults.burst, "no-burst"),
            (self.faults.token_loss, d.faults.token_loss, "no-token-loss"),
        ] {
            if on != default {
                flag(name, None);
            }
        }
        differs!(workload.rate, "msg-rate", f64s);
        differs!(workload.medium_fraction, "medium", f64s);
        differs!(workload.large_fraction, "large", f64s);
        differs!(workload.safe_fraction, "safe", f64s);
        differs!(max_steps, "max-steps", |v: u64| v.to_string());
        args
    }

    /// The command line that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut cmd =
            format!("cargo run --release -p ringcast-sim --bin ringcast-sim -- --seed {seed}");
        for arg in self.to_args() {
            cmd.push(' ');
            cmd.push_str(&arg);
        }
        cmd
    }
}

/// What one run did and found.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub max_datagram_bytes: usize,
    pub violations: Vec<Violation>,
    pub submitted: u64,
    /// Deliveries, summed over incarnations.
    pub delivered: u64,
    /// Regular configurations installed, summed over incarnations.
    pub configurations: u64,
    /// Distinct regular rings.
    pub rings: u64,
    pub incarnations: usize,
    pub faults: u64,
    pub try_again: u64,
    pub sim_time: Duration,
    /// From the final heal until every node was first operational in one ring of all.
    pub converged_after: Option<Duration>,
    /// From the end of the workload until quiescence.
    pub quiescent_after: Option<Duration>,
    pub network: NetworkStats,
    pub steps: u64,
    /// A hash of everything that happened (trace and datagram arrivals): equal for
    /// equal runs.
    pub trace_hash: u64,
}

/// Runs one seed and checks it.
pub fn run(seed: u64, options: &SimOptions) -> RunReport {
    let mut sim = Sim::new(seed, options);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_loop()));
    let mut violations = Vec::new();
    if let Err(panic) = result {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        sim.abort(format!(
            "node {} panicked at {}: {what}",
            sim.current,
            fmt_instant(sim.now)
        ));
    }
    violations.append(&mut sim.aborts);
    violations.extend(checker::check_all(&sim.trace));
    for v in &mut violations {
        v.seed = seed;
        v.replay = options.replay_command(seed);
    }
    let mut report = sim.report();
    report.violations = violations;
    report
}

/// The store that outlives a node: shared between a node id's incarnations.
struct SharedStore(Rc<Cell<u64>>);

impl RingSeqStore for SharedStore {
    fn load(&mut self) -> u64 {
        self.0.get()
    }
    fn store(&mut self, seq: u64) {
        assert!(
            seq >= self.0.get(),
            "ring sequence stored going backwards: {} after {}",
            seq,
            self.0.get()
        );
        self.0.set(seq);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// Start (or restart) a node.
    Start(NodeId),
    Submit(NodeId),
    Retry(NodeId),
    Fault,
    /// Faults stop, everything is healed and restarted.
    FinalHeal,
    StopWorkload,
    Check,
    End,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Instant,
    seq: u64,
    action: Action,
}

struct Pending {
    id: MsgId,
    payload: Bytes,
    checksum: u64,
    guarantee: Guarantee,
}

struct Slot {
    node: Option<Node>,
    /// The node's `poll_timeout`, refreshed after every call into it (in `drain`).
    deadline: Option<Instant>,
    store: Rc<Cell<u64>>,
    /// Index of its current (or last) incarnation in the trace.
    trace_index: Option<usize>,
    incarnations: u32,
    next_counter: u64,
    /// Messages whose submit returned TryAgain (and any generated behind them).
    retry: VecDeque<Pending>,
    retry_scheduled: bool,
}

struct Sim {
    seed: u64,
    options: SimOptions,
    n: usize,
    max_datagram_bytes: usize,
    /// The seed's flow-control window in bytes (0: Corosync's counts).
    window_bytes: usize,
    now: Instant,
    net: Network,
    slots: Vec<Slot>,
    schedule: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    workload_rng: Rng,
    fault_rng: Rng,
    trace: Trace,
    /// Every payload the workload built, so that a delivery equal to its original is
    /// known intact without checksumming it again (one memcmp instead).
    payloads: HashMap<MsgId, Bytes>,
    faults_on: bool,
    workload_on: bool,
    fault_end: Instant,
    final_heal: Option<Instant>,
    workload_stop: Option<Instant>,
    converged_at: Option<Instant>,
    done: bool,
    /// The node being called (for panic reports).
    current: NodeId,
    steps: u64,
    hash: u64,
    submitted: u64,
    faults: u64,
    try_again: u64,
    aborts: Vec<Violation>,
    /// Stuck-timer guard: the deadline last fired and how often in a row.
    last_fire: (NodeId, Instant, u32),
    /// Storm guard: steps taken within the current virtual millisecond.
    steps_this_ms: u64,
}

/// A run is cut short (and reported) when one virtual millisecond takes more steps than
/// this (a healthy ring of 16 nodes takes a few hundred) ...
const STEPS_PER_MS_MAX: u64 = 200_000;
/// ... or when this many datagrams are in flight at once.
const IN_FLIGHT_MAX: usize = 500_000;

impl Sim {
    fn new(seed: u64, options: &SimOptions) -> Sim {
        let mut setup = Rng::new(derive(seed, 1));
        let lo = options.nodes_min.max(1);
        let hi = options.nodes_max.max(lo);
        let n = setup.range(lo as u64, hi as u64) as usize;
        let max_datagram_bytes = if options.datagram_bytes.is_empty() {
            1500
        } else {
            options.datagram_bytes[setup.index(options.datagram_bytes.len())]
        };
        // From its own stream, so that adding the choice left every other draw of a
        // seed as it was.
        let window_bytes = if options.window_bytes.is_empty() {
            0
        } else {
            let mut pick = Rng::new(derive(seed, 0x77));
            options.window_bytes[pick.index(options.window_bytes.len())]
        };
        let slots = (0..=n)
            .map(|_| Slot {
                node: None,
                deadline: None,
                store: Rc::new(Cell::new(0)),
                trace_index: None,
                incarnations: 0,
                next_counter: 0,
                retry: VecDeque::new(),
                retry_scheduled: false,
            })
            .collect();
        let mut sim = Sim {
            seed,
            options: options.clone(),
            n,
            max_datagram_bytes,
            window_bytes,
            now: Instant::ZERO,
            net: Network::new(options.network.clone(), derive(seed, 2), n),
            slots,
            schedule: BinaryHeap::new(),
            next_seq: 0,
            workload_rng: Rng::new(derive(seed, 3)),
            fault_rng: Rng::new(derive(seed, 4)),
            trace: Trace {
                nodes: n,
                ..Trace::default()
            },
            payloads: HashMap::new(),
            faults_on: true,
            workload_on: true,
            fault_end: Instant::ZERO + options.duration,
            final_heal: None,
            workload_stop: None,
            converged_at: None,
            done: false,
            current: 0,
            steps: 0,
            hash: 0xcbf2_9ce4_8422_2325 ^ seed,
            submitted: 0,
            faults: 0,
            try_again: 0,
            aborts: Vec::new(),
            last_fire: (0, Instant::ZERO, 0),
            steps_this_ms: 0,
        };
        sim.trace.outcome.settle_limit = options.settle_limit;
        // Nodes come up within the first 20 ms, in a seeded order.
        for id in 1..=n as NodeId {
            let at = Instant::from_nanos(setup.below(20_000_000));
            sim.at(at, Action::Start(id));
            let first = sim.options.workload.next_interval(&mut sim.workload_rng);
            sim.at(at + first, Action::Submit(id));
        }
        if options.faults.rate > 0.0 {
            let first = sim.fault_interval();
            sim.at(Instant::ZERO + first, Action::Fault);
        }
        sim.at(sim.fault_end, Action::FinalHeal);
        sim
    }

    fn at(&mut self, at: Instant, action: Action) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.schedule.push(Reverse(Scheduled { at, seq, action }));
    }

    fn mix(&mut self, words: &[u64]) {
        for &w in words {
            self.hash = (self.hash ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.options.trace {
            println!("t={} {what}", fmt_instant(self.now));
        }
    }

    fn fault_interval(&mut self) -> Duration {
        let mean_ns = 1e9 / self.options.faults.rate;
        Duration::from_nanos((self.fault_rng.unit() * 2.0 * mean_ns) as u64 + 1)
    }

    fn alive(&self, id: NodeId) -> bool {
        self.slots[id as usize].node.is_some()
    }

    fn live_ids(&self) -> Vec<NodeId> {
        (1..=self.n as NodeId)
            .filter(|&id| self.alive(id))
            .collect()
    }

    fn dead_ids(&self) -> Vec<NodeId> {
        (1..=self.n as NodeId)
            .filter(|&id| !self.alive(id))
            .collect()
    }

    fn abort(&mut self, why: String) {
        let inc = self.slots[self.current as usize]
            .trace_index
            .map(|i| &self.trace.incarnations[i]);
        let mut v = Violation {
            checker: "run",
            node: inc.map(|i| i.node),
            incarnation: inc.map(|i| i.number),
            message: why,
            excerpt: inc.map(|i| i.tail(checker::EXCERPT)).unwrap_or_default(),
            seed: self.seed,
            replay: String::new(),
        };
        if inc.is_none() {
            v.node = None;
        }
        self.aborts.push(v);
        self.trace.outcome.aborted = true;
        self.done = true;
    }

    fn run_loop(&mut self) {
        while !self.done {
            self.steps += 1;
            if self.steps > self.options.max_steps {
                self.current = 0;
                self.abort(format!(
                    "step budget of {} exhausted at {} (livelock?)",
                    self.options.max_steps,
                    fmt_instant(self.now)
                ));
                break;
            }
            let scheduled = self.schedule.peek().map(|Reverse(s)| s.at);
            let timer = (1..=self.n as NodeId)
                .filter_map(|id| self.slots[id as usize].deadline.map(|t| (t, id)))
                .min();
            debug_assert_eq!(
                timer,
                (1..=self.n as NodeId)
                    .filter_map(|id| {
                        let node = self.slots[id as usize].node.as_ref()?;
                        node.poll_timeout().map(|t| (t, id))
                    })
                    .min(),
                "a node was called without a drain"
            );
            let datagram = self.net.next_due();
            let Some(next) = [scheduled, timer.map(|(t, _)| t), datagram]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next.as_nanos() / 1_000_000 != self.now.as_nanos() / 1_000_000 {
                self.steps_this_ms = 0;
            }
            self.steps_this_ms += 1;
            self.now = self.now.max(next);
            if self.steps_this_ms > STEPS_PER_MS_MAX || self.net.in_flight() > IN_FLIGHT_MAX {
                self.current = 0;
                self.abort(format!(
                    "datagram storm at {}: {} steps within one virtual millisecond, {} \
                     datagrams in flight",
                    fmt_instant(self.now),
                    self.steps_this_ms,
                    self.net.in_flight()
                ));
                break;
            }
            if scheduled.is_some_and(|t| t <= next) {
                let Reverse(s) = self.schedule.pop().expect("peeked");
                self.act(s.action);
            } else if let Some((_, id)) = timer.filter(|&(t, _)| t <= next) {
                self.fire(id);
            } else if let Some(d) = self.net.pop_due(self.now) {
                if !self.alive(d.to) {
                    continue;
                }
                self.mix(&[1, self.now.as_nanos(), u64::from(d.from), u64::from(d.to)]);
                self.mix(&[d.payload.len() as u64]);
                if self.options.trace_net {
                    let mut text = match ringcast_proto::wire::Packet::decode(&d.payload, 0) {
                        Ok(packet) => format!("{packet:?}"),
                        Err(e) => format!("undecodable: {e:?}"),
                    };
                    text.truncate(300);
                    self.log(format_args!("net {} -> {} {text}", d.from, d.to));
                }
                self.current = d.to;
                let node = self.slots[d.to as usize].node.as_mut().expect("alive");
                node.handle_packet(self.now, d.from, &d.payload);
                self.drain(d.to);
            }
        }
        self.trace.outcome.final_heal = self.final_heal;
        self.trace.outcome.final_states =
            (1..=self.n as NodeId).map(|id| self.describe(id)).collect();
    }

    fn describe(&self, id: NodeId) -> String {
        let slot = &self.slots[id as usize];
        match &slot.node {
            None => format!("n{id} down"),
            Some(node) => format!(
                "n{id}#{} {:?} ring {} members {:?} send queue {} retry {} stats {:?}",
                slot.incarnations - 1,
                node.state(),
                node.ring_id(),
                node.members(),
                node.send_queue_len(),
                slot.retry.len(),
                node.stats()
            ),
        }
    }

    fn fire(&mut self, id: NodeId) {
        let (last_id, last_at, count) = self.last_fire;
        self.last_fire = if (last_id, last_at) == (id, self.now) {
            (id, self.now, count + 1)
        } else {
            (id, self.now, 1)
        };
        self.current = id;
        if self.last_fire.2 > 10_000 {
            self.abort(format!(
                "node {id}: poll_timeout stays at or before now ({}) after handle_timeout",
                fmt_instant(self.now)
            ));
            return;
        }
        self.mix(&[2, self.now.as_nanos(), u64::from(id)]);
        let node = self.slots[id as usize].node.as_mut().expect("alive");
        node.handle_timeout(self.now);
        self.drain(id);
    }

    /// Moves a node's transmits into the network and its events into the trace.
    fn drain(&mut self, id: NodeId) {
        loop {
            let slot = &mut self.slots[id as usize];
            let Some(node) = slot.node.as_mut() else {
                slot.deadline = None;
                return;
            };
            if let Some(transmit) = node.poll_transmit() {
                // What a vectored send puts on the wire: the pieces joined.
                let datagram = transmit.payload.into_bytes();
                match transmit.destination {
                    Destination::All => {
                        for to in 1..=self.n as NodeId {
                            if to == id && !self.options.network.loopback {
                                continue;
                            }
                            self.net.send(self.now, id, to, false, datagram.clone());
                        }
                    }
                    Destination::Node(to) => {
                        if (1..=self.n as NodeId).contains(&to) {
                            self.net.send(self.now, id, to, true, datagram);
                        }
                    }
                }
                continue;
            }
            let Some(event) = node.poll_event() else {
                slot.deadline = node.poll_timeout();
                return;
            };
            let kind = match event {
                Event::Deliver(d) => {
                    let verbatim = workload::claimed_id(&d.payload)
                        .and_then(|m| self.payloads.get(&m))
                        .is_some_and(|original| {
                            (original.as_ptr() == d.payload.as_ptr()
                                && original.len() == d.payload.len())
                                || original[..] == d.payload[..]
                        });
                    let (msg, len, checksum, integrity) = if verbatim {
                        workload::decode_verbatim(&d.payload)
                    } else {
                        workload::decode(&d.payload)
                    };
                    RecordKind::Delivered {
                        id: msg,
                        sender: d.sender,
                        ring_id: d.ring_id,
                        guarantee: d.guarantee,
                        len,
                        checksum,
                        integrity,
                    }
                }
                Event::Configuration(c) => RecordKind::Config(c),
            };
            self.record(id, kind);
        }
    }

    fn record(&mut self, id: NodeId, kind: RecordKind) {
        let index = self.slots[id as usize].trace_index.expect("started");
        let record = Record { at: self.now, kind };
        let words: [u64; 4] = match &record.kind {
            RecordKind::Submitted { id, checksum, .. } => {
                [3, u64::from(id.node), id.counter, *checksum]
            }
            RecordKind::Delivered {
                id: Some(m),
                checksum,
                ..
            } => [
                4,
                u64::from(m.node) << 32 | u64::from(m.incarnation),
                m.counter,
                *checksum,
            ],
            RecordKind::Delivered { id: None, len, .. } => [5, *len as u64, 0, 0],
            RecordKind::Config(c) => [
                6 + c.kind as u64,
                u64::from(c.ring_id.rep),
                c.ring_id.seq,
                c.members.len() as u64,
            ],
        };
        self.mix(&[self.now.as_nanos(), u64::from(id)]);
        self.mix(&words);
        let inc = &mut self.trace.incarnations[index];
        if self.options.trace {
            println!("{} {record}", inc.name());
        }
        inc.records.push(record);
    }

    fn act(&mut self, action: Action) {
        self.mix(&[7, self.now.as_nanos()]);
        match action {
            Action::Start(id) => self.start(id),
            Action::Submit(id) => {
                if !self.workload_on {
                    return;
                }
                let next = self.options.workload.next_interval(&mut self.workload_rng);
                self.at(self.now + next, Action::Submit(id));
                if self.alive(id) {
                    self.generate(id);
                }
            }
            Action::Retry(id) => {
                self.slots[id as usize].retry_scheduled = false;
                self.flush_retries(id);
            }
            Action::Fault => {
                if !self.faults_on {
                    return;
                }
                self.fault();
                let next = self.now + self.fault_interval();
                if next < self.fault_end {
                    self.at(next, Action::Fault);
                }
            }
            Action::FinalHeal => {
                self.log(format_args!("FINAL HEAL: faults stop, heal, restart all"));
                self.faults_on = false;
                self.net.heal();
                self.net.burst = false;
                self.net.token_loss = false;
                for id in self.dead_ids() {
                    self.start(id);
                }
                self.final_heal = Some(self.now);
                self.at(self.now + self.options.tail, Action::StopWorkload);
                self.at(self.now, Action::Check);
            }
            Action::StopWorkload => {
                self.log(format_args!("workload stops"));
                self.workload_on = false;
                self.workload_stop = Some(self.now);
                self.at(self.now + self.options.settle_limit, Action::End);
            }
            Action::Check => self.check(),
            Action::End => {
                self.done = true;
            }
        }
    }

    /// Periodic after the final heal: notes convergence and quiescence; once quiescent,
    /// lets the ring run a little longer so the last deliveries land, then ends.
    fn check(&mut self) {
        let all: Vec<NodeId> = (1..=self.n as NodeId).collect();
        let mut rings = BTreeSet::new();
        let mut converged = true;
        let mut queued = 0;
        for id in 1..=self.n as NodeId {
            let slot = &self.slots[id as usize];
            match &slot.node {
                Some(node) if node.state() == NodeState::Operational && node.members() == all => {
                    rings.insert(node.ring_id());
                    queued += node.send_queue_len() + slot.retry.len();
                }
                _ => converged = false,
            }
        }
        converged &= rings.len() == 1;
        if converged {
            self.converged_at.get_or_insert(self.now);
        } else {
            self.converged_at = None;
        }
        if converged && queued == 0 && !self.workload_on {
            let at = self.now;
            self.trace.outcome.quiescent_at = Some(at);
            self.log(format_args!("quiescent"));
            // Grace: long enough for SAFE messages (two rotations) and retransmissions.
            let grace = (self.options.token * 5).max(Duration::from_secs(1));
            self.at(at + grace, Action::End);
            return;
        }
        self.at(self.now + Duration::from_millis(10), Action::Check);
    }

    fn start(&mut self, id: NodeId) {
        if self.alive(id) {
            return;
        }
        let seed = derive(self.seed, 0x1000 + u64::from(id));
        let mut config = Config::with_token(id, self.options.token);
        config.join = self.options.join;
        config.merge = self.options.merge;
        config.max_datagram_bytes = self.max_datagram_bytes;
        if self.window_bytes != 0 {
            (config.window_size, config.max_messages) =
                ringcast_proto::totem::window_for_bytes(self.window_bytes, self.max_datagram_bytes);
        }
        config.max_message_bytes = 4 << 20;
        config.send_queue_bytes = 8 << 20;
        config.seed = seed;
        let slot = &mut self.slots[id as usize];
        let store = Box::new(SharedStore(slot.store.clone()));
        self.current = id;
        let node = match Node::new(config, store, self.now) {
            Ok(node) => node,
            Err(e) => panic!("simulator config rejected: {e}"),
        };
        let number = slot.incarnations;
        slot.incarnations += 1;
        slot.next_counter = 0;
        slot.node = Some(node);
        slot.trace_index = Some(self.trace.incarnations.len());
        self.trace
            .incarnations
            .push(Incarnation::new(id, number, self.now));
        self.log(format_args!("START n{id}#{number}"));
        self.mix(&[8, u64::from(id)]);
        self.drain(id);
    }

    fn stop(&mut self, id: NodeId, leave: bool) {
        self.current = id;
        if leave {
            let node = self.slots[id as usize].node.as_mut().expect("alive");
            node.leave(self.now);
            self.drain(id);
        }
        let slot = &mut self.slots[id as usize];
        slot.node = None;
        slot.deadline = None;
        slot.retry.clear();
        let index = slot.trace_index.expect("started");
        self.trace.incarnations[index].end = Some(if leave {
            End::Left(self.now)
        } else {
            End::Crashed(self.now)
        });
        self.net.drop_to(id);
        let downtime = Duration::from_nanos(
            self.fault_rng.range(
                self.options.faults.downtime_min.as_nanos() as u64,
                self.options
                    .faults
                    .downtime_max
                    .max(self.options.faults.downtime_min)
                    .as_nanos() as u64,
            ),
        );
        self.at(self.now + downtime, Action::Start(id));
    }

    fn generate(&mut self, id: NodeId) {
        let (len, guarantee) = self.options.workload.next_shape(&mut self.workload_rng);
        let slot = &mut self.slots[id as usize];
        let msg = MsgId {
            node: id,
            incarnation: slot.incarnations - 1,
            counter: slot.next_counter,
        };
        slot.next_counter += 1;
        let (payload, checksum) = workload::encode(msg, len);
        self.payloads.insert(msg, payload.clone());
        let slot = &mut self.slots[id as usize];
        slot.retry.push_back(Pending {
            id: msg,
            payload,
            checksum,
            guarantee,
        });
        self.flush_retries(id);
    }

    /// Submits queued messages in order until one is refused.
    fn flush_retries(&mut self, id: NodeId) {
        self.current = id;
        loop {
            let slot = &mut self.slots[id as usize];
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            let Some(pending) = slot.retry.front() else {
                return;
            };
            match node.submit(self.now, pending.payload.clone(), pending.guarantee) {
                Ok(()) => {
                    let p = slot.retry.pop_front().expect("front");
                    self.submitted += 1;
                    self.record(
                        id,
                        RecordKind::Submitted {
                            id: p.id,
                            len: p.payload.len(),
                            checksum: p.checksum,
                            guarantee: p.guarantee,
                        },
                    );
                    self.drain(id);
                }
                Err(SubmitError::TryAgain) => {
                    slot.deadline = node.poll_timeout();
                    self.try_again += 1;
                    if !slot.retry_scheduled {
                        slot.retry_scheduled = true;
                        let at = self.now + self.options.workload.retry_after;
                        self.at(at, Action::Retry(id));
                    }
                    return;
                }
                Err(e @ SubmitError::TooBig { .. }) => {
                    panic!("workload message refused: {e}");
                }
            }
        }
    }

    fn fault(&mut self) {
        let live = self.live_ids();
        let dead = self.dead_ids();
        let f = &self.options.faults;
        let mut choices: Vec<(u32, &'static str)> = Vec::new();
        if f.crash && live.len() > 1 {
            choices.push((3, "crash"));
        }
        if f.leave && live.len() > 1 {
            choices.push((1, "leave"));
        }
        if (f.crash || f.leave) && !dead.is_empty() {
            choices.push((2, "restart"));
        }
        if f.partition && self.n > 1 {
            choices.push((2, "partition"));
        }
        if f.partition && self.net.is_partitioned() {
            choices.push((3, "heal"));
        }
        if f.burst {
            choices.push((1, "burst"));
        }
        if f.token_loss {
            choices.push((1, "token-loss"));
        }
        let total: u32 = choices.iter().map(|c| c.0).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.fault_rng.below(u64::from(total)) as u32;
        let kind = choices
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("weights sum to total")
            .1;
        self.faults += 1;
        self.mix(&[9, total as u64, pick as u64]);
        match kind {
            "crash" | "leave" => {
                let id = live[self.fault_rng.index(live.len())];
                self.log(format_args!("FAULT {kind} n{id}"));
                self.stop(id, kind == "leave");
            }
            "restart" => {
                let id = dead[self.fault_rng.index(dead.len())];
                self.log(format_args!("FAULT restart n{id}"));
                self.start(id);
            }
            "partition" => {
                let mut ids: Vec<NodeId> = (1..=self.n as NodeId).collect();
                self.fault_rng.shuffle(&mut ids);
                let k = (self.fault_rng.range(2, 3) as usize).min(self.n);
                let mut sides: Vec<Vec<NodeId>> = vec![Vec::new(); k];
                for (i, &id) in ids.iter().enumerate() {
                    let side = if i < k { i } else { self.fault_rng.index(k) };
                    sides[side].push(id);
                }
                for side in &mut sides {
                    side.sort_unstable();
                }
                self.log(format_args!("FAULT partition {sides:?}"));
                self.net.partition(&sides);
            }
            "heal" => {
                self.log(format_args!("FAULT heal"));
                self.net.heal();
            }
            "burst" => {
                self.net.burst = !self.net.burst;
                self.log(format_args!("FAULT loss burst {}", self.net.burst));
            }
            "token-loss" => {
                self.net.token_loss = !self.net.token_loss;
                self.log(format_args!("FAULT token loss {}", self.net.token_loss));
            }
            _ => unreachable!("fault kinds listed above"),
        }
    }

    fn report(&self) -> RunReport {
        let mut delivered = 0;
        let mut configurations = 0;
        let mut rings = BTreeSet::new();
        for inc in &self.trace.incarnations {
            for r in &inc.records {
                match &r.kind {
                    RecordKind::Delivered { .. } => delivered += 1,
                    RecordKind::Config(c)
                        if c.kind == ringcast_proto::totem::ConfigurationKind::Regular =>
                    {
                        configurations += 1;
                        rings.insert(c.ring_id);
                    }
                    _ => {}
                }
            }
        }
        RunReport {
            seed: self.seed,
            nodes: self.n,
            max_datagram_bytes: self.max_datagram_bytes,
            violations: Vec::new(),
            submitted: self.submitted,
            delivered,
            configurations,
            rings: rings.len() as u64,
            incarnations: self.trace.incarnations.len(),
            faults: self.faults,
            try_again: self.try_again,
            sim_time: self.now - Instant::ZERO,
            converged_after: self
                .final_heal
                .zip(self.converged_at)
                .map(|(heal, at)| at - heal),
            quiescent_after: self
                .workload_stop
                .zip(self.trace.outcome.quiescent_at)
                .map(|(stop, at)| at - stop),
            network: self.net.stats.clone(),
            steps: self.steps,
            trace_hash: self.hash,
        }
    }
}

impl RunReport {
    /// One line for the summary.
    pub fn summary_line(&self) -> String {
        let mut s = format!(
            "seed {} nodes {} dgram {} submitted {} delivered {} configs {} rings {} faults {} \
             sim {:.2}s steps {}",
            self.seed,
            self.nodes,
            self.max_datagram_bytes,
            self.submitted,
            self.delivered,
            self.configurations,
            self.rings,
            self.faults,
            self.sim_time.as_secs_f64(),
            self.steps
        );
        if let Some(c) = self.converged_after {
            let _ = write!(s, " converged {:.3}s", c.as_secs_f64());
        }
        if !self.violations.is_empty() {
            let _ = write!(s, " VIOLATIONS {}", self.violations.len());
        }
        s
    }
}

#[cfg(test)]
mod tests;
