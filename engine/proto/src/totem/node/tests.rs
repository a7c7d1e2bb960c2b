//! Unit tests of single protocol rules, on a few nodes wired together by a lossless,
//! instantaneous network that the test can cut. Each test names the rule it checks.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::totem::MemoryRingSeqStore;

struct Cluster {
    nodes: Vec<Option<Node>>,
    events: Vec<Vec<Event>>,
    now: Instant,
    /// Node pairs that cannot reach each other.
    cut: BTreeSet<(NodeId, NodeId)>,
    in_flight: VecDeque<(NodeId, NodeId, Bytes)>,
    /// Datagrams of this kind are dropped (by the first byte of the body after the
    /// header is not practical; we filter on decoded kind instead).
    drop_tokens: bool,
}

fn config(id: NodeId) -> Config {
    let mut config = Config::with_token(id, Duration::from_millis(300));
    config.max_datagram_bytes = 9000;
    config
}

impl Cluster {
    fn new(n: u32) -> Cluster {
        Cluster::with(n, config)
    }

    fn with(n: u32, make: impl Fn(NodeId) -> Config) -> Cluster {
        let now = Instant::from_nanos(1_000_000_000);
        let nodes = (1..=n)
            .map(|id| {
                Some(Node::new(make(id), Box::new(MemoryRingSeqStore::default()), now).unwrap())
            })
            .collect();
        Cluster {
            nodes,
            events: vec![Vec::new(); n as usize],
            now,
            cut: BTreeSet::new(),
            in_flight: VecDeque::new(),
            drop_tokens: false,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id as usize - 1].as_mut().expect("node is up")
    }

    fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }

    fn partition(&mut self, groups: &[&[NodeId]]) {
        self.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.cut.insert((x, y));
                    }
                }
            }
        }
    }

    /// Moves every datagram and fires every due timer until nothing is left at `now`.
    fn pump(&mut self) {
        for _ in 0..1_000_000 {
            let mut progress = false;
            let n = self.nodes.len() as NodeId;
            for index in 0..self.nodes.len() {
                let from = index as NodeId + 1;
                let Some(node) = self.nodes[index].as_mut() else {
                    continue;
                };
                while let Some(event) = node.poll_event() {
                    self.events[index].push(event);
                }
                while let Some(transmit) = node.poll_transmit() {
                    progress = true;
                    match transmit.destination {
                        Destination::All => {
                            for to in 1..=n {
                                self.in_flight
                                    .push_back((from, to, transmit.payload.to_bytes()));
                            }
                        }
                        Destination::Node(to) => {
                            self.in_flight
                                .push_back((from, to, transmit.payload.to_bytes()))
                        }
                    }
                }
            }
            while let Some((from, to, datagram)) = self.in_flight.pop_front() {
                progress = true;
                if !self.reachable(from, to) {
                    continue;
                }
                if self.drop_tokens && matches!(Packet::decode(&datagram, 0), Ok(Packet::Token(_)))
                {
                    continue;
                }
                let now = self.now;
                if let Some(node) = self.nodes[to as usize - 1].as_mut() {
                    node.handle_packet(now, from, &datagram);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Runs for `duration` of virtual time, firing timers as they fall due.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.pump();
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|n| n.poll_timeout())
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    for node in self.nodes.iter_mut().flatten() {
                        if node.poll_timeout().is_some_and(|t| t <= now) {
                            node.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.pump();
                    return;
                }
            }
        }
    }

    fn deliveries(&self, id: NodeId) -> Vec<(NodeId, Bytes)> {
        self.events[id as usize - 1]
            .iter()
            .filter_map(|e| match e {
                Event::Deliver(d) => Some((d.sender, d.payload.clone())),
                Event::Configuration(_) => None,
            })
            .collect()
    }

    fn configurations(&self, id: NodeId) -> Vec<ConfigurationChange> {
        self.events[id as usize - 1]
            .iter()
            .filter_map(|e| match e {
                Event::Configuration(c) => Some(c.clone()),
                Event::Deliver(_) => None,
            })
            .collect()
    }

    fn last_regular(&self, id: NodeId) -> Option<ConfigurationChange> {
        self.configurations(id)
            .into_iter()
            .rev()
            .find(|c| c.kind == ConfigurationKind::Regular)
    }
}

/// docs/cpg.md §9.6 "Startup": a node alone forms a singleton ring, and delivers its own
/// messages (self-delivery).
#[test]
fn single_node_forms_a_ring_and_delivers_to_itself() {
    let mut c = Cluster::new(1);
    c.run(Duration::from_secs(1));
    assert_eq!(c.node(1).state(), NodeState::Operational);
    assert_eq!(c.node(1).members(), &[1]);
    let now = c.now;
    for i in 0..10u8 {
        c.node(1)
            .submit(now, Bytes::from(vec![i; 100]), Guarantee::Agreed)
            .unwrap();
    }
    c.run(Duration::from_millis(100));
    let got: Vec<u8> = c.deliveries(1).iter().map(|(_, p)| p[0]).collect();
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
}

/// Totem §4 and §3.3: nodes that start together merge into one ring, and every member
/// delivers every message in the same order.
#[test]
fn three_nodes_form_one_ring_with_agreed_order() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    for id in 1..=3 {
        assert_eq!(c.node(id).state(), NodeState::Operational, "node {id}");
        assert_eq!(c.node(id).members(), &[1, 2, 3], "node {id}");
        let regular = c.last_regular(id).unwrap();
        assert_eq!(regular.members, vec![1, 2, 3]);
    }
    let now = c.now;
    for i in 0..50u32 {
        let id = i % 3 + 1;
        c.node(id)
            .submit(
                now,
                Bytes::from(i.to_le_bytes().to_vec()),
                Guarantee::Agreed,
            )
            .unwrap();
    }
    c.run(Duration::from_millis(500));
    let first = c.deliveries(1);
    assert_eq!(first.len(), 50);
    assert_eq!(c.deliveries(2), first);
    assert_eq!(c.deliveries(3), first);
    // Per-sender FIFO.
    for sender in 1..=3 {
        let from: Vec<u32> = first
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, p)| u32::from_le_bytes(p[..4].try_into().unwrap()))
            .collect();
        assert!(from.windows(2).all(|w| w[0] < w[1]));
    }
}

/// docs/cpg.md §9.5 and §9.6: a crashed node is detected by token loss and the
/// survivors install a new ring within token + consensus (plus a few joins), first a
/// transitional configuration that says who left.
#[test]
fn survivors_reform_after_a_crash_with_transitional_then_regular() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let crash_at = c.now;
    c.nodes[2] = None;
    let config = c.node(1).config().clone();
    let bound = config.token + config.consensus + 4 * config.join + Duration::from_millis(100);
    c.run(bound);
    for id in 1..=2 {
        assert_eq!(c.node(id).state(), NodeState::Operational);
        assert_eq!(c.node(id).members(), &[1, 2], "node {id}");
        let configs = c.configurations(id);
        let n = configs.len();
        assert_eq!(configs[n - 2].kind, ConfigurationKind::Transitional);
        assert_eq!(configs[n - 2].members, vec![1, 2]);
        assert_eq!(configs[n - 2].left, vec![3]);
        assert_eq!(configs[n - 1].kind, ConfigurationKind::Regular);
        assert_eq!(configs[n - 1].joined, Vec::<NodeId>::new());
    }
    assert!(c.now - crash_at <= bound);
}

/// docs/cpg.md §9.2 "Leave message": a node that leaves is failed at once, without
/// waiting for the token-loss timeout.
#[test]
fn a_clean_leave_is_faster_than_token_loss() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let now = c.now;
    c.node(3).leave(now);
    c.pump();
    c.nodes[2] = None;
    let config = c.node(1).config().clone();
    c.run(config.token / 2);
    for id in 1..=2 {
        assert_eq!(c.node(id).members(), &[1, 2]);
    }
}

/// Totem §4.4 and docs/cpg.md §9.6 "Merge detection": after a partition heals, the two
/// rings find each other and merge; the regular configuration lists who joined.
#[test]
fn partition_gives_two_rings_and_healing_merges_them() {
    let mut c = Cluster::new(4);
    c.run(Duration::from_secs(3));
    c.partition(&[&[1, 2], &[3, 4]]);
    c.run(Duration::from_secs(3));
    assert_eq!(c.node(1).members(), &[1, 2]);
    assert_eq!(c.node(3).members(), &[3, 4]);
    let now = c.now;
    c.node(1)
        .submit(now, Bytes::from_static(b"left side"), Guarantee::Agreed)
        .unwrap();
    c.node(4)
        .submit(now, Bytes::from_static(b"right side"), Guarantee::Agreed)
        .unwrap();
    c.run(Duration::from_millis(200));
    assert!(c.deliveries(2).iter().any(|(_, p)| &p[..] == b"left side"));
    assert!(!c.deliveries(2).iter().any(|(_, p)| &p[..] == b"right side"));
    c.cut.clear();
    c.run(Duration::from_secs(3));
    for id in 1..=4 {
        assert_eq!(c.node(id).members(), &[1, 2, 3, 4], "node {id}");
    }
    let regular = c.last_regular(1).unwrap();
    assert_eq!(regular.joined, vec![3, 4]);
}

/// Totem §3.3 (safe delivery): a SAFE message is delivered only once every member is
/// known to hold it; an agreed message queued after it waits behind it (agreed order).
#[test]
fn safe_message_waits_for_stability() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let now = c.now;
    c.node(2)
        .submit(now, Bytes::from_static(b"safe"), Guarantee::Safe)
        .unwrap();
    c.node(2)
        .submit(now, Bytes::from_static(b"agreed"), Guarantee::Agreed)
        .unwrap();
    c.run(Duration::from_millis(300));
    for id in 1..=3 {
        let got: Vec<Bytes> = c.deliveries(id).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"safe"), Bytes::from_static(b"agreed")]
        );
        let safe = c.events[id as usize - 1].iter().find_map(|e| match e {
            Event::Deliver(d) if d.payload == "safe" => Some(d.guarantee),
            _ => None,
        });
        assert_eq!(safe, Some(Guarantee::Safe));
    }
}

/// Fragmentation: a message larger than a datagram is split, ordered and reassembled
/// intact on every member.
#[test]
fn large_messages_are_fragmented_and_reassembled() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let now = c.now;
    c.node(3)
        .submit(now, Bytes::from(big.clone()), Guarantee::Agreed)
        .unwrap();
    c.node(1)
        .submit(now, Bytes::from_static(b"small"), Guarantee::Agreed)
        .unwrap();
    c.run(Duration::from_secs(2));
    for id in 1..=3 {
        let got = c.deliveries(id);
        assert_eq!(got.len(), 2, "node {id}");
        let (_, payload) = got.iter().find(|(s, _)| *s == 3).unwrap();
        assert!(
            payload[..] == big[..],
            "node {id} got the big message intact"
        );
    }
}

/// docs/cpg.md §9.5: a lost token is retransmitted by the node that sent it, and the
/// ring survives without a membership change while the loss is shorter than `token`.
#[test]
fn token_retransmission_covers_a_short_loss() {
    let mut c = Cluster::new(3);
    c.run(Duration::from_secs(3));
    let installed = c.node(1).stats().rings_installed;
    c.drop_tokens = true;
    c.run(Duration::from_millis(100));
    c.drop_tokens = false;
    c.run(Duration::from_secs(1));
    assert_eq!(c.node(1).stats().rings_installed, installed);
    let now = c.now;
    c.node(1)
        .submit(now, Bytes::from_static(b"after"), Guarantee::Agreed)
        .unwrap();
    c.run(Duration::from_millis(300));
    assert_eq!(c.deliveries(3).len(), 1);
}

/// A restarted node never reuses a ring sequence: it starts above what its store holds.
#[test]
fn restart_takes_a_fresh_ring_sequence() {
    let mut store = MemoryRingSeqStore { seq: 40 };
    let now = Instant::ZERO;
    let node = Node::new(config(1), Box::new(std::mem::take(&mut store)), now).unwrap();
    assert!(node.ring_id().seq > 40);
}

/// Bad datagrams are counted and dropped, never a panic.
#[test]
fn garbage_is_counted_and_dropped() {
    let mut c = Cluster::new(2);
    c.run(Duration::from_secs(2));
    let now = c.now;
    let node = c.node(1);
    for len in 0..200usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        node.handle_packet(now, 2, &Bytes::from(junk));
    }
    assert_eq!(node.stats().packets_dropped, 200);
    assert_eq!(node.state(), NodeState::Operational);
}

/// Queue bounds: a full send queue refuses with TryAgain, an oversized message with
/// TooBig, and nothing is queued either way.
#[test]
fn submit_refuses_what_does_not_fit() {
    let mut c = Cluster::with(1, |id| {
        let mut config = config(id);
        config.max_message_bytes = 1000;
        config.send_queue_bytes = 2000;
        config
    });
    let now = c.now;
    let node = c.node(1);
    assert_eq!(
        node.submit(now, Bytes::from(vec![0; 1001]), Guarantee::Agreed),
        Err(SubmitError::TooBig {
            len: 1001,
            max: 1000
        })
    );
    node.submit(now, Bytes::from(vec![0; 1000]), Guarantee::Agreed)
        .unwrap();
    node.submit(now, Bytes::from(vec![0; 1000]), Guarantee::Agreed)
        .unwrap();
    assert_eq!(
        node.submit(now, Bytes::from(vec![0; 1]), Guarantee::Agreed),
        Err(SubmitError::TryAgain)
    );
    assert_eq!(node.send_queue_len(), 2);
}

/// docs/cpg.md §9.6 "Entering OPERATIONAL" step 4 (Corosync's "waiting for sync"
/// queue): with `sync_barrier`, application messages queued before or after a new
/// ring wait until `sync_done` names that ring, while `submit_sync` messages go at once;
/// so every synchronisation message is ordered before them on every node.
#[test]
fn sync_barrier_holds_application_messages_until_sync_done() {
    let mut c = Cluster::with(2, |id| {
        let mut config = config(id);
        config.sync_barrier = true;
        config
    });
    c.run(Duration::from_secs(3));
    for id in 1..=2 {
        assert_eq!(c.node(id).members(), &[1, 2]);
        assert!(c.node(id).waiting_for_sync(), "node {id}");
    }
    let now = c.now;
    c.node(1)
        .submit(now, Bytes::from_static(b"app"), Guarantee::Agreed)
        .unwrap();
    c.run(Duration::from_millis(300));
    assert!(c.deliveries(1).is_empty() && c.deliveries(2).is_empty());
    let now = c.now;
    c.node(1)
        .submit_sync(now, Bytes::from_static(b"sync1"))
        .unwrap();
    c.node(2)
        .submit_sync(now, Bytes::from_static(b"sync2"))
        .unwrap();
    c.run(Duration::from_millis(300));
    assert_eq!(c.deliveries(1).len(), 2);
    assert_eq!(c.deliveries(1), c.deliveries(2));
    // A sync finished for another ring does not open this one.
    let stale = RingId { rep: 1, seq: 1 };
    assert_ne!(stale, c.node(1).ring_id());
    c.node(1).sync_done(now, stale);
    c.run(Duration::from_millis(300));
    assert_eq!(c.deliveries(2).len(), 2);
    let ring = c.node(1).ring_id();
    let now = c.now;
    c.node(1).sync_done(now, ring);
    assert!(!c.node(1).waiting_for_sync());
    c.run(Duration::from_millis(300));
    for id in 1..=2 {
        let got: Vec<Bytes> = c.deliveries(id).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got.len(), 3, "node {id}");
        assert_eq!(got[2], Bytes::from_static(b"app"), "node {id}");
    }
}

/// A message cut into fragments is finished before a sync message starts (receivers
/// reassemble per origin), and after a new ring both start again whole, sync first.
#[test]
fn sync_barrier_never_interleaves_fragments() {
    let mut c = Cluster::with(2, |id| {
        let mut config = config(id);
        config.sync_barrier = true;
        config
    });
    c.run(Duration::from_secs(3));
    let (now, ring) = (c.now, c.node(1).ring_id());
    c.node(1).sync_done(now, ring);
    c.node(2).sync_done(now, ring);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 13 + 1) as u8).collect();
    let originated = c.node(1).stats().messages_originated;
    c.node(1)
        .submit(now, Bytes::from(big.clone()), Guarantee::Agreed)
        .unwrap();
    // Move datagrams one at a time until node 1 has sent part of the big message.
    for _ in 0..10_000 {
        if c.node(1).stats().messages_originated > originated {
            break;
        }
        let node = c.node(1);
        let mut out: Vec<(NodeId, Transmit)> =
            std::iter::from_fn(|| node.poll_transmit().map(|t| (1, t))).collect();
        let node2 = c.node(2);
        out.extend(std::iter::from_fn(|| node2.poll_transmit().map(|t| (2, t))));
        for (from, t) in out {
            let to: Vec<NodeId> = match t.destination {
                Destination::All => vec![1, 2],
                Destination::Node(n) => vec![n],
            };
            for n in to {
                c.node(n).handle_packet(now, from, &t.payload.to_bytes());
            }
        }
    }
    let sent = c.node(1).stats().messages_originated - originated;
    assert!(
        sent > 0 && sent < 20,
        "part of the big message is out ({sent} datagrams)"
    );
    assert!(c.node(1).send_queue.is_partial());
    c.node(1)
        .submit_sync(now, Bytes::from_static(b"sync"))
        .unwrap();
    c.run(Duration::from_secs(1));
    for id in 1..=2 {
        let got = c.deliveries(id);
        assert_eq!(got.len(), 2, "node {id}");
        assert!(got.iter().any(|(_, p)| p[..] == big[..]), "node {id}");
        assert!(got.iter().any(|(_, p)| &p[..] == b"sync"), "node {id}");
    }
    assert_eq!(c.node(1).stats().chunks_malformed, 0);
    assert_eq!(c.node(2).stats().chunks_malformed, 0);
}

/// Sequence numbers near `u64::MAX` come only from forged or corrupt packets: they are
/// dropped and counted, never added to (nothing in a datagram may make the
/// engine panic: docs/invariants.md guarantee 6; found by the daemon's 100,000-datagram test).
#[test]
fn packets_with_sequences_near_the_top_are_dropped() {
    use crate::wire::{CommitToken, Join, Packet};
    let mut cluster = Cluster::new(2);
    let now = cluster.now;
    let node = cluster.node(1);
    let cluster_id = node.config().cluster_id;
    let before = node.stats().packets_dropped;
    let join = Packet::Join(Join {
        sender: 2,
        ring_seq: u64::MAX,
        proc_list: vec![1, 2],
        failed_list: vec![],
        leaving: false,
    });
    let commit = Packet::Commit(CommitToken {
        sender: 2,
        ring_id: RingId { rep: 1, seq: 4 },
        token_seq: u64::MAX,
        memb_index: 0,
        entries: vec![],
    });
    for p in [join, commit] {
        node.handle_packet(now, p.sender(), &p.encode(cluster_id));
    }
    assert_eq!(node.stats().packets_dropped, before + 2);
}

/// Only members put a ring's token and messages on the wire: a node that holds the key
/// but is not in the ring (docs/wire-format.md "Sealing") cannot pass the ring a token
/// (it would hand out sequence numbers twice) nor slip a message into its order.
#[test]
fn tokens_and_messages_of_non_members_are_dropped() {
    use crate::wire::{Mcast, Packet, Token};
    let mut cluster = Cluster::new(2);
    cluster.run(Duration::from_secs(2));
    let now = cluster.now;
    let node = cluster.node(1);
    assert_eq!(node.state(), NodeState::Operational);
    let cluster_id = node.config().cluster_id;
    let ring_id = node.ring_id();
    let (tokens_received, tokens_dropped) =
        (node.stats().tokens_received, node.stats().tokens_dropped);
    let stored = node.stored_messages();
    let token = Packet::Token(Token {
        sender: 3,
        ring_id,
        token_seq: 1 << 40,
        seq: 1000,
        aru: 1000,
        ..Token::default()
    });
    let mcast = Packet::Mcast(Mcast {
        sender: 3,
        ring_id,
        seq: 1,
        origin: 1,
        safe: false,
        recovered: None,
        payload: Bytes::from_static(b"forged"),
    });
    for p in [token, mcast] {
        node.handle_packet(now, p.sender(), &p.encode(cluster_id));
    }
    assert_eq!(node.stats().tokens_received, tokens_received);
    assert_eq!(node.stats().tokens_dropped, tokens_dropped + 1);
    assert_eq!(node.stored_messages(), stored);
    cluster.run(Duration::from_secs(2));
    assert_eq!(cluster.node(1).state(), NodeState::Operational);
    assert_eq!(cluster.node(1).ring_id(), ring_id);
}

/// A node holding the key must not speak for another member either: a token naming
/// member 2 as its sender but coming from node 3 (not a member), and a multicast of a
/// member's naming a member but put on the wire by node 3, are dropped.
#[test]
fn packets_are_judged_by_the_node_they_came_from() {
    use crate::wire::{Mcast, Packet, Token};
    let mut cluster = Cluster::new(2);
    cluster.run(Duration::from_secs(2));
    let now = cluster.now;
    let node = cluster.node(1);
    assert_eq!(node.state(), NodeState::Operational);
    let cluster_id = node.config().cluster_id;
    let ring_id = node.ring_id();
    let (tokens_received, dropped) = (node.stats().tokens_received, node.stats().packets_dropped);
    let stored = node.stored_messages();
    let token = Packet::Token(Token {
        sender: 2,
        ring_id,
        token_seq: 1 << 40,
        seq: 1000,
        aru: 1000,
        ..Token::default()
    });
    let mcast = Packet::Mcast(Mcast {
        sender: 2,
        ring_id,
        seq: 1,
        origin: 2,
        safe: false,
        recovered: None,
        payload: Bytes::from_static(b"forged"),
    });
    node.handle_packet(now, 3, &token.encode(cluster_id));
    assert_eq!(
        node.stats().packets_dropped,
        dropped + 1,
        "the token names 2, came from 3"
    );
    node.handle_packet(now, 3, &mcast.encode(cluster_id));
    assert_eq!(node.stats().tokens_received, tokens_received);
    assert_eq!(
        node.stored_messages(),
        stored,
        "a multicast put on the wire by 3"
    );
    cluster.run(Duration::from_secs(2));
    assert_eq!(cluster.node(1).state(), NodeState::Operational);
    assert_eq!(cluster.node(1).ring_id(), ring_id);
}
