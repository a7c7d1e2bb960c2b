//! `core_cost`: what the Totem state machine costs per ordered message.
//!
//! A 3-node ring, simulated in-process with a fixed 50 µs virtual network delay and no
//! faults, with packing (`max_datagram_bytes` 65000). Each node keeps its send queue
//! topped up with 64 B AGREED messages until the total is submitted; the run ends when
//! every message has been delivered on all 3 nodes.
//!
//! **Definition.** `ns/msg` = wall-clock nanoseconds spent inside `Node` calls
//! (`submit`, `handle_packet`, `handle_timeout`, `poll_transmit`, `poll_event`,
//! `poll_timeout`) summed over the 3 nodes, divided by the number of messages ordered
//! (each message counted once, not once per node). The harness's own work (its
//! datagram queue, bookkeeping) is outside the timed sections; the cost of reading the
//! clock is measured beforehand and subtracted per timed section. Ring formation before
//! the first submit is not counted.
//!
//! `--quick` runs a tiny input; a test runs it so the benchmark cannot rot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ringcast_engine::totem::{
    Config, Destination, Event, Guarantee, Instant, MemoryRingSeqStore, Node, NodeId, NodeState,
};

#[derive(Parser, Debug)]
#[command(about = "ns of Totem state-machine work per ordered 64 B message, 3-node ring")]
pub(crate) struct Args {
    /// Messages to order (split evenly over the 3 nodes).
    #[arg(long, default_value_t = 3_000_000)]
    messages: u64,
    /// A tiny run (30 000 messages).
    #[arg(long)]
    quick: bool,
}

const NODES: usize = 3;
const MESSAGE_BYTES: usize = 64;
/// A datagram on its way: (arrival, tie-break, to (node index), from (node id), bytes).
type InFlight = (Instant, u64, usize, NodeId, Bytes);

/// Each node's send queue is topped up to this many messages.
const QUEUE_TARGET: usize = 20_000;
const DELAY: Duration = Duration::from_micros(50);

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    messages: u64,
    node_ns: u64,
    timed_sections: u64,
    datagrams: u64,
    wall: Duration,
    virtual_time: Duration,
}

impl Outcome {
    fn ns_per_msg(&self) -> f64 {
        self.node_ns as f64 / self.messages as f64
    }
}

/// Accumulates time spent in node calls.
struct Meter {
    ns: u64,
    sections: u64,
    /// Cost of one `std::time::Instant::now()` pair, subtracted per section.
    overhead_ns: u64,
}

impl Meter {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        let ns = start.elapsed().as_nanos() as u64;
        self.ns += ns.saturating_sub(self.overhead_ns);
        self.sections += 1;
        out
    }
}

fn clock_overhead_ns() -> u64 {
    let rounds = 200_000;
    let start = std::time::Instant::now();
    let mut sink = 0u128;
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        sink = sink.wrapping_add(t.elapsed().as_nanos());
    }
    std::hint::black_box(sink);
    (start.elapsed().as_nanos() / rounds) as u64
}

struct Ring {
    nodes: Vec<Node>,
    now: Instant,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    delivered: [u64; NODES],
    datagrams: u64,
}

impl Ring {
    fn new() -> Ring {
        let now = Instant::ZERO;
        let nodes = (1..=NODES as NodeId)
            .map(|id| {
                let mut config = Config::new(id, NODES);
                config.max_datagram_bytes = 65_000;
                Node::new(config, Box::new(MemoryRingSeqStore::default()), now)
                    .expect("valid config")
            })
            .collect();
        Ring {
            nodes,
            now,
            queue: BinaryHeap::new(),
            seq: 0,
            delivered: [0; NODES],
            datagrams: 0,
        }
    }

    /// Drains node `i` (timed) and queues its datagrams (untimed).
    fn drain(&mut self, i: usize, meter: &mut Meter) {
        let node = &mut self.nodes[i];
        let mut delivered = 0;
        let (transmits, _) = meter.time(|| {
            let mut transmits = Vec::new();
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(event) = node.poll_event() {
                if let Event::Deliver(_) = event {
                    delivered += 1;
                }
            }
            (transmits, ())
        });
        self.delivered[i] += delivered;
        let at = self.now + DELAY;
        for t in transmits {
            let targets: Vec<usize> = match t.destination {
                Destination::All => (0..NODES).collect(),
                Destination::Node(id) => vec![id as usize - 1],
            };
            // One piece for the small messages measured here: no copy.
            let datagram = t.payload.into_bytes();
            for to in targets {
                self.seq += 1;
                self.queue.push(Reverse((
                    at,
                    self.seq,
                    to,
                    i as NodeId + 1,
                    datagram.clone(),
                )));
            }
        }
    }

    /// One step: the earliest datagram or timer. False when nothing is left to do.
    fn step(&mut self, meter: &mut Meter) -> bool {
        let nodes = &self.nodes;
        let timer = meter.time(|| {
            (0..NODES)
                .filter_map(|i| nodes[i].poll_timeout().map(|t| (t, i)))
                .min()
        });
        let datagram = self.queue.peek().map(|Reverse((t, ..))| *t);
        let take_datagram = match (datagram, timer) {
            (Some(d), Some((t, _))) => d <= t,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_datagram {
            let Reverse((at, _, to, from, payload)) = self.queue.pop().expect("peeked");
            self.now = self.now.max(at);
            self.datagrams += 1;
            let now = self.now;
            let node = &mut self.nodes[to];
            meter.time(|| node.handle_packet(now, from, &payload));
            self.drain(to, meter);
            return true;
        }
        let Some((t, i)) = timer else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        let node = &mut self.nodes[i];
        meter.time(|| node.handle_timeout(now));
        self.drain(i, meter);
        true
    }
}

fn run(messages: u64) -> Outcome {
    let per_node = messages.div_ceil(NODES as u64);
    let messages = per_node * NODES as u64;
    let mut ring = Ring::new();
    // Ring formation, not counted.
    let mut setup = Meter {
        ns: 0,
        sections: 0,
        overhead_ns: 0,
    };
    for i in 0..NODES {
        ring.drain(i, &mut setup);
    }
    while !ring
        .nodes
        .iter()
        .all(|n| n.state() == NodeState::Operational && n.members().len() == NODES)
    {
        assert!(ring.step(&mut setup), "the ring never formed");
        assert!(
            ring.now.as_nanos() < 60_000_000_000,
            "the ring did not form in 60 virtual seconds"
        );
    }
    ring.delivered = [0; NODES];

    let mut meter = Meter {
        ns: 0,
        sections: 0,
        overhead_ns: clock_overhead_ns(),
    };
    let payload = Bytes::from(vec![0x5a; MESSAGE_BYTES]);
    let mut submitted = [0u64; NODES];
    let started = std::time::Instant::now();
    let virtual_start = ring.now;
    let mut topped = usize::MAX;
    loop {
        // Top up one node's queue per step, round robin (batches are timed as a whole).
        topped = (topped.wrapping_add(1)) % NODES;
        let i = topped;
        if submitted[i] < per_node && ring.nodes[i].send_queue_len() < QUEUE_TARGET / 2 {
            let want = (QUEUE_TARGET - ring.nodes[i].send_queue_len()) as u64;
            let batch = want.min(per_node - submitted[i]);
            let now = ring.now;
            let node = &mut ring.nodes[i];
            let payload = &payload;
            let ok = meter.time(|| {
                let mut ok = 0;
                for _ in 0..batch {
                    if node
                        .submit(now, payload.clone(), Guarantee::Agreed)
                        .is_err()
                    {
                        break;
                    }
                    ok += 1;
                }
                ok
            });
            submitted[i] += ok;
            ring.drain(i, &mut meter);
        }
        if ring.delivered.iter().all(|&d| d >= messages) {
            break;
        }
        assert!(
            ring.step(&mut meter),
            "the ring went idle before delivering everything"
        );
    }
    assert_eq!(
        ring.delivered, [messages; NODES],
        "every message exactly once per node"
    );
    Outcome {
        messages,
        node_ns: meter.ns,
        timed_sections: meter.sections,
        datagrams: ring.datagrams,
        wall: started.elapsed(),
        virtual_time: ring.now - virtual_start,
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args = Args::parse();
    let messages = if args.quick { 30_000 } else { args.messages };
    let o = run(messages);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("core_cost: 3-node ring, 64 B AGREED messages, max_datagram_bytes 65000, no faults");
    println!("cpu: {} ({cores} cores available)", cpu_model());
    println!(
        "build: {}",
        if cfg!(debug_assertions) {
            "debug (numbers meaningless; use --release)"
        } else {
            "release"
        }
    );
    println!(
        "messages ordered: {}   datagrams: {}   timed sections: {}   virtual time: {:.3} ms   \
         wall time: {:.3} s",
        o.messages,
        o.datagrams,
        o.timed_sections,
        o.virtual_time.as_secs_f64() * 1e3,
        o.wall.as_secs_f64()
    );
    println!(
        "ns in Node calls: {}   => {:.1} ns/msg (all 3 nodes' work per ordered message)",
        o.node_ns,
        o.ns_per_msg()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick mode runs, orders everything everywhere, and measures something.
    #[test]
    fn quick_mode_runs() {
        let o = run(3_000);
        assert_eq!(o.messages, 3_000);
        assert!(o.node_ns > 0 && o.timed_sections > 0);
        assert!(o.ns_per_msg().is_finite());
    }
}
