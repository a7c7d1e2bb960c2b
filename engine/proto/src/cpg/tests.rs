//! Unit tests: several `Service`s wired to a fake in-order Totem (every message a node
//! sends is delivered to every member of its partition in one agreed order), which the
//! test can reconfigure (transitional then regular configurations) and starve. Each test
//! names the docs/cpg.md rule it checks.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::totem::{ConfigurationChange, ConfigurationKind, Delivery, Event};

/// One node's view of the fake Totem: its send queues.
struct FakeTotem {
    normal: VecDeque<(Bytes, Guarantee)>,
    sync: VecDeque<Bytes>,
    /// Model Totem's sync barrier (`Config::sync_barrier`); without it, JOINLISTs go
    /// through the normal queue like everything else (the trait's defaults).
    barrier: bool,
    waiting: bool,
    ring: RingId,
    /// Messages the normal (and sync) queue accepts before refusing with TryAgain.
    capacity: usize,
}

impl Submit for FakeTotem {
    fn submit(&mut self, payload: Bytes, guarantee: Guarantee) -> Result<(), SubmitError> {
        if self.normal.len() >= self.capacity {
            return Err(SubmitError::TryAgain);
        }
        self.normal.push_back((payload, guarantee));
        Ok(())
    }

    fn submit_sync(&mut self, payload: Bytes) -> Result<(), SubmitError> {
        if !self.barrier {
            return self.submit(payload, Guarantee::Agreed);
        }
        if self.sync.len() >= self.capacity {
            return Err(SubmitError::TryAgain);
        }
        self.sync.push_back(payload);
        Ok(())
    }

    fn sync_done(&mut self, ring_id: RingId) {
        if self.barrier && ring_id == self.ring {
            self.waiting = false;
        }
    }
}

impl FakeTotem {
    /// The next message this node may send, sync lane first.
    fn next(&mut self) -> Option<(Bytes, Guarantee)> {
        if let Some(p) = self.sync.pop_front() {
            return Some((p, Guarantee::Agreed));
        }
        if self.waiting {
            return None;
        }
        self.normal.pop_front()
    }
}

struct TestNode {
    service: Service,
    totem: FakeTotem,
}

struct Part {
    ring: RingId,
    /// Members alive (crashes remove them).
    members: Vec<NodeId>,
    /// Members when the ring formed (for the next transitional configuration).
    ring_members: Vec<NodeId>,
    cursor: usize,
}

struct Cluster {
    nodes: BTreeMap<NodeId, TestNode>,
    parts: Vec<Part>,
    next_seq: u64,
    barrier: bool,
    limits: Limits,
    /// Every event each (node, connection) got, in order.
    log: BTreeMap<(NodeId, ConnId), Vec<ClientEvent>>,
    /// Every event of each node, in the order the node emitted them.
    node_log: BTreeMap<NodeId, Vec<(ConnId, ClientEvent)>>,
}

fn name(s: &str) -> GroupName {
    GroupName::new(s.as_bytes()).unwrap()
}

fn member(node: NodeId, pid: u32) -> Member {
    Member { node, pid }
}

fn addr(node: NodeId, pid: u32, reason: Reason) -> Address {
    Address {
        member: member(node, pid),
        reason,
    }
}

impl Cluster {
    /// `n` nodes in one ring, synchronised.
    fn new(n: NodeId, barrier: bool) -> Cluster {
        Cluster::with_limits(n, barrier, Limits::default())
    }

    fn with_limits(n: NodeId, barrier: bool, limits: Limits) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            parts: Vec::new(),
            next_seq: 4,
            barrier,
            limits,
            log: BTreeMap::new(),
            node_log: BTreeMap::new(),
        };
        for id in 1..=n {
            c.add_node(id);
        }
        let all: Vec<NodeId> = (1..=n).collect();
        c.reconfigure(&[&all]);
        c.settle();
        c
    }

    fn add_node(&mut self, id: NodeId) {
        let ring = RingId { rep: id, seq: 1 };
        self.nodes.insert(
            id,
            TestNode {
                service: Service::new(id, self.limits),
                totem: FakeTotem {
                    normal: VecDeque::new(),
                    sync: VecDeque::new(),
                    barrier: self.barrier,
                    waiting: self.barrier,
                    ring,
                    capacity: usize::MAX,
                },
            },
        );
        // A fresh node is alone in a ring of its own until the next reconfigure.
        self.parts.retain_mut(|p| {
            p.members.retain(|&m| m != id);
            !p.members.is_empty()
        });
        self.parts.push(Part {
            ring,
            members: vec![id],
            ring_members: vec![id],
            cursor: 0,
        });
    }

    fn node(&mut self, id: NodeId) -> &mut TestNode {
        self.nodes.get_mut(&id).expect("node is up")
    }

    fn service(&self, id: NodeId) -> &Service {
        &self.nodes[&id].service
    }

    fn drain(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node is up");
        while let Some((conn, event)) = node.service.poll_event() {
            self.node_log
                .entry(id)
                .or_default()
                .push((conn, event.clone()));
            self.log.entry((id, conn)).or_default().push(event);
        }
    }

    fn feed(&mut self, id: NodeId, event: Event) {
        let node = self.nodes.get_mut(&id).expect("node is up");
        node.service.handle_totem_event(event, &mut node.totem);
        self.drain(id);
    }

    /// New partitions (each a new ring), with the transitional and regular
    /// configurations Totem would deliver. Nodes not listed must have crashed.
    fn reconfigure(&mut self, parts: &[&[NodeId]]) {
        let old: BTreeMap<NodeId, (RingId, Vec<NodeId>)> = self
            .parts
            .iter()
            .flat_map(|p| {
                p.members
                    .iter()
                    .map(|&m| (m, (p.ring, p.ring_members.clone())))
            })
            .collect();
        let mut new_parts = Vec::new();
        for members in parts {
            let mut members = members.to_vec();
            members.sort_unstable();
            let ring = RingId {
                rep: members[0],
                seq: self.next_seq,
            };
            self.next_seq += 4;
            for &x in &members {
                let (old_ring, old_members) = old[&x].clone();
                let transitional: Vec<NodeId> = members
                    .iter()
                    .copied()
                    .filter(|y| old[y].0 == old_ring)
                    .collect();
                let left: Vec<NodeId> = old_members
                    .iter()
                    .copied()
                    .filter(|y| !transitional.contains(y))
                    .collect();
                let joined: Vec<NodeId> = members
                    .iter()
                    .copied()
                    .filter(|y| !transitional.contains(y))
                    .collect();
                self.node(x).totem.ring = ring;
                self.feed(
                    x,
                    Event::Configuration(ConfigurationChange {
                        kind: ConfigurationKind::Transitional,
                        ring_id: ring,
                        members: transitional,
                        left,
                        joined: Vec::new(),
                    }),
                );
                let barrier = self.barrier;
                self.node(x).totem.waiting = barrier;
                self.feed(
                    x,
                    Event::Configuration(ConfigurationChange {
                        kind: ConfigurationKind::Regular,
                        ring_id: ring,
                        members: members.clone(),
                        left: Vec::new(),
                        joined,
                    }),
                );
            }
            new_parts.push(Part {
                ring,
                members: members.clone(),
                ring_members: members,
                cursor: 0,
            });
        }
        self.parts = new_parts;
    }

    fn deliver(&mut self, ring: RingId, members: &[NodeId], sender: NodeId, payload: Bytes) {
        for &m in members {
            self.feed(
                m,
                Event::Deliver(Delivery {
                    sender,
                    ring_id: ring,
                    guarantee: Guarantee::Agreed,
                    payload: payload.clone(),
                }),
            );
        }
    }

    /// The next message to order (round robin over senders): partition, sender, payload.
    fn next_message(&mut self) -> Option<(usize, NodeId, Bytes)> {
        for pi in 0..self.parts.len() {
            let n = self.parts[pi].members.len();
            for k in 0..n {
                let at = (self.parts[pi].cursor + k) % n;
                let sender = self.parts[pi].members[at];
                if let Some((payload, _)) = self.node(sender).totem.next() {
                    self.parts[pi].cursor = (at + 1) % n;
                    return Some((pi, sender, payload));
                }
            }
        }
        None
    }

    /// Orders and delivers one message, if any can go.
    fn step(&mut self) -> bool {
        let Some((pi, sender, payload)) = self.next_message() else {
            return false;
        };
        let (ring, members) = (self.parts[pi].ring, self.parts[pi].members.clone());
        self.deliver(ring, &members, sender, payload);
        true
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.node(id);
                node.service.poll(&mut node.totem);
                self.drain(id);
            }
            if !self.step() {
                return;
            }
        }
        panic!("the fake ring did not settle");
    }

    /// Delivers everything without draining the services' client events.
    fn settle_without_draining(&mut self) {
        for _ in 0..100_000 {
            let Some((pi, sender, payload)) = self.next_message() else {
                return;
            };
            let (ring, members) = (self.parts[pi].ring, self.parts[pi].members.clone());
            for m in members {
                let node = self.node(m);
                node.service.handle_totem_event(
                    Event::Deliver(Delivery {
                        sender,
                        ring_id: ring,
                        guarantee: Guarantee::Agreed,
                        payload: payload.clone(),
                    }),
                    &mut node.totem,
                );
            }
        }
        panic!("the fake ring did not settle");
    }

    /// A message from `sender` delivered to every member of its partition, bypassing
    /// its send queue (what a faulty or foreign peer could send).
    fn inject(&mut self, sender: NodeId, payload: Bytes) {
        let part = self
            .parts
            .iter()
            .find(|p| p.members.contains(&sender))
            .expect("sender is in a partition");
        let (ring, members) = (part.ring, part.members.clone());
        self.deliver(ring, &members, sender, payload);
    }

    fn crash(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        for p in &mut self.parts {
            p.members.retain(|&m| m != id);
        }
        self.parts.retain(|p| !p.members.is_empty());
    }

    fn connect(&mut self, id: NodeId, conn: ConnId, pid: u32) {
        self.node(id).service.connect(conn, pid).unwrap();
    }

    fn join(&mut self, id: NodeId, conn: ConnId, group: &str) -> Result<(), CpgError> {
        self.join_with(id, conn, group, false)
    }

    fn join_with(
        &mut self,
        id: NodeId,
        conn: ConnId,
        group: &str,
        initial: bool,
    ) -> Result<(), CpgError> {
        let node = self.node(id);
        let r = node
            .service
            .join(conn, &name(group), initial, &mut node.totem);
        self.drain(id);
        r
    }

    fn leave(&mut self, id: NodeId, conn: ConnId, group: &str) -> Result<(), CpgError> {
        let node = self.node(id);
        let r = node.service.leave(conn, &name(group), &mut node.totem);
        self.drain(id);
        r
    }

    fn mcast(&mut self, id: NodeId, conn: ConnId, data: &[u8]) -> Result<(), CpgError> {
        let node = self.node(id);
        let r = node
            .service
            .mcast(conn, Guarantee::Agreed, &[data], &mut node.totem);
        self.drain(id);
        r
    }

    fn disconnect(&mut self, id: NodeId, conn: ConnId) {
        let node = self.node(id);
        node.service.disconnect(conn, &mut node.totem);
        self.drain(id);
    }

    fn events(&self, id: NodeId, conn: ConnId) -> Vec<ClientEvent> {
        self.log.get(&(id, conn)).cloned().unwrap_or_default()
    }

    fn take(&mut self, id: NodeId, conn: ConnId) -> Vec<ClientEvent> {
        self.log.remove(&(id, conn)).unwrap_or_default()
    }

    /// Connects and joins, and lets the join complete.
    fn joined(&mut self, id: NodeId, conn: ConnId, pid: u32, group: &str) {
        self.connect(id, conn, pid);
        self.join(id, conn, group).unwrap();
        self.settle();
    }
}

fn confchg(group: &str, members: &[Member], left: &[Address], joined: &[Address]) -> ClientEvent {
    ClientEvent::Confchg {
        group: name(group),
        members: members
            .iter()
            .map(|&member| Address {
                member,
                reason: Reason::Undefined,
            })
            .collect(),
        left: left.to_vec(),
        joined: joined.to_vec(),
    }
}

fn payloads(events: &[ClientEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Deliver { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .collect()
}

fn only_confchgs(events: &[ClientEvent]) -> Vec<ClientEvent> {
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Confchg { .. }))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- names and codec

/// docs/cpg.md §2.4 and §5.3 quirk: names are 1..=128 bytes, compared by length and
/// then bytes; the empty name is refused.
#[test]
fn group_names_are_bounded_and_ordered_by_length_first() {
    assert_eq!(GroupName::new(b""), Err(CpgError::InvalidParam));
    assert_eq!(GroupName::new(&[7; 129]), Err(CpgError::NameTooLong));
    assert_eq!(GroupName::new(&[7; 128]).unwrap().len(), 128);
    // "GROUP\0" (strlen + 1) and "GROUP" are different groups.
    assert_ne!(name("GROUP"), GroupName::new(b"GROUP\0").unwrap());
    assert!(name("zz") < name("aaa"));
    assert!(name("ab") < name("b\0"));
    assert!(name("ab") < name("ac"));
}

/// Our Totem payload encoding round-trips, and the mcast payload is a zero-copy slice
/// of the delivery.
#[test]
fn codec_round_trips_and_mcast_payload_is_a_slice() {
    let g = name("group");
    for (bytes, expected) in [
        (
            codec::encode_join(&g, 42),
            Message::Join {
                group: g.clone(),
                pid: 42,
            },
        ),
        (
            codec::encode_leave(&g, 43, false),
            Message::Leave {
                group: g.clone(),
                pid: 43,
                procdown: false,
            },
        ),
        (
            codec::encode_leave(&g, 44, true),
            Message::Leave {
                group: g.clone(),
                pid: 44,
                procdown: true,
            },
        ),
    ] {
        assert_eq!(codec::decode(&bytes).unwrap(), expected);
    }
    let bytes = codec::encode_mcast(&g, 9, &[b"hello ", b"", b"world"]);
    assert_eq!(bytes.len(), 7 + 5 + 11, "header is 7 bytes plus the name");
    match codec::decode(&bytes).unwrap() {
        Message::Mcast {
            group,
            pid,
            payload,
        } => {
            assert_eq!((group, pid), (g.clone(), 9));
            assert_eq!(&payload[..], b"hello world");
            assert_eq!(payload.as_ptr(), bytes[12..].as_ptr(), "zero copy");
        }
        other => panic!("decoded {other:?}"),
    }
    let ring = RingId { rep: 3, seq: 77 };
    let (a, b) = (name("a"), name("bb"));
    let bytes = codec::encode_joinlist(ring, [(&a, 1u32), (&b, 2u32)].into_iter());
    assert!(bytes.len() <= joinlist_bytes_max(2));
    assert_eq!(
        codec::decode(&bytes).unwrap(),
        Message::JoinList {
            ring_id: ring,
            entries: vec![(a, 1), (b, 2)]
        }
    );
    let empty = codec::encode_joinlist(ring, std::iter::empty());
    assert_eq!(
        codec::decode(&empty).unwrap(),
        Message::JoinList {
            ring_id: ring,
            entries: vec![]
        }
    );
}

/// The default limits fit the default Totem configuration (a 64 MiB payload plus our
/// header, and the largest JOINLIST).
#[test]
fn default_limits_fit_the_default_totem_message_size() {
    let limits = Limits::default();
    assert_eq!(limits.max_message_bytes, 64 << 20);
    assert!(limits.totem_message_bytes() <= crate::totem::DEFAULT_MAX_MESSAGE_BYTES);
    assert!(joinlist_bytes_max(limits.max_connections) <= limits.totem_message_bytes());
    assert_eq!(
        crate::totem::Config::new(1, 3).max_message_bytes,
        crate::totem::DEFAULT_MAX_MESSAGE_BYTES
    );
}

// ---------------------------------------------------------------- join, leave, procdown

/// docs/cpg.md §5.2: the JOIN confchg goes to every member, the joiner included, with
/// all members (reason 0) and the joiner (reason JOIN); every node's table agrees.
#[test]
fn join_confchg_reaches_every_member_and_the_joiner() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "g");
    assert_eq!(
        c.take(1, 10),
        vec![confchg(
            "g",
            &[member(1, 100)],
            &[],
            &[addr(1, 100, Reason::Join)]
        )]
    );
    c.joined(2, 20, 200, "g");
    let expected = confchg(
        "g",
        &[member(1, 100), member(2, 200)],
        &[],
        &[addr(2, 200, Reason::Join)],
    );
    assert_eq!(c.take(1, 10), vec![expected.clone()]);
    assert_eq!(c.take(2, 20), vec![expected]);
    for id in 1..=3 {
        assert_eq!(
            c.service(id).membership(&name("g")),
            vec![member(1, 100), member(2, 200)],
            "node {id}"
        );
    }
}

/// docs/cpg.md §5.3 and §13 quirk 2 (fixed): the leaver gets its own LEAVE confchg,
/// is then UNJOINED, stops receiving the group, and can join again.
#[test]
fn leave_confchg_reaches_the_leaver_which_can_then_rejoin() {
    let mut c = Cluster::new(2, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.take(1, 10);
    c.take(2, 20);
    c.leave(1, 10, "g").unwrap();
    c.settle();
    let expected = confchg("g", &[member(2, 200)], &[addr(1, 100, Reason::Leave)], &[]);
    assert_eq!(c.take(1, 10), vec![expected.clone()]);
    assert_eq!(c.take(2, 20), vec![expected]);
    c.mcast(2, 20, b"after leave").unwrap();
    c.settle();
    assert!(
        c.take(1, 10).is_empty(),
        "a departed connection gets nothing"
    );
    // Quirk 2 fixed: the same connection joins again, even the same group.
    c.join(1, 10, "g").unwrap();
    c.settle();
    assert_eq!(
        only_confchgs(&c.take(1, 10)),
        vec![confchg(
            "g",
            &[member(1, 100), member(2, 200)],
            &[],
            &[addr(1, 100, Reason::Join)]
        )]
    );
}

/// docs/cpg.md §5.3 PROCDOWN: a joined connection that goes away is reported with
/// reason 5; one still joining is seen JOIN then PROCDOWN; a leaving one only LEAVE.
#[test]
fn disconnect_sends_procdown_unless_leaving() {
    let mut c = Cluster::new(2, true);
    c.joined(2, 20, 200, "g");
    c.joined(1, 10, 100, "g");
    c.take(2, 20);
    c.disconnect(1, 10);
    c.settle();
    assert_eq!(
        c.take(2, 20),
        vec![confchg(
            "g",
            &[member(2, 200)],
            &[addr(1, 100, Reason::ProcDown)],
            &[]
        )]
    );
    // Still JOIN_STARTED when it goes away.
    c.connect(1, 11, 101);
    c.join(1, 11, "g").unwrap();
    c.disconnect(1, 11);
    c.settle();
    assert_eq!(
        c.take(2, 20),
        vec![
            confchg(
                "g",
                &[member(1, 101), member(2, 200)],
                &[],
                &[addr(1, 101, Reason::Join)]
            ),
            confchg(
                "g",
                &[member(2, 200)],
                &[addr(1, 101, Reason::ProcDown)],
                &[]
            ),
        ]
    );
    // LEAVE_STARTED when it goes away: the leave is all the others see.
    c.joined(1, 12, 102, "g");
    c.take(2, 20);
    c.leave(1, 12, "g").unwrap();
    c.disconnect(1, 12);
    c.settle();
    assert_eq!(
        c.take(2, 20),
        vec![confchg(
            "g",
            &[member(2, 200)],
            &[addr(1, 102, Reason::Leave)],
            &[]
        )]
    );
    assert_eq!(c.service(1).membership(&name("g")), vec![member(2, 200)]);
}

/// docs/cpg.md §3 `cpg_finalize`: events still queued for a connection that goes away
/// are dropped, so a reused connection id never gets them.
#[test]
fn disconnect_drops_the_events_still_queued() {
    let mut c = Cluster::new(1, true);
    c.joined(1, 10, 100, "g");
    c.connect(1, 11, 101);
    c.join(1, 11, "g").unwrap();
    c.settle_without_draining();
    let node = c.node(1);
    node.service.disconnect(10, &mut node.totem);
    let mut left = Vec::new();
    while let Some((conn, _)) = node.service.poll_event() {
        left.push(conn);
    }
    assert_eq!(left, vec![11], "only the connection still there");
}

/// docs/cpg.md §5.3: a PROCDOWN that Totem cannot take now is owed, retried by `poll`,
/// and never lost.
#[test]
fn procdown_refused_by_a_full_totem_is_sent_by_poll() {
    let mut c = Cluster::new(2, true);
    c.joined(2, 20, 200, "g");
    c.joined(1, 10, 100, "g");
    c.take(2, 20);
    c.node(1).totem.capacity = 0;
    c.disconnect(1, 10);
    assert_eq!(c.service(1).owed_submissions(), 1);
    c.settle();
    assert!(c.take(2, 20).is_empty());
    c.node(1).totem.capacity = usize::MAX;
    c.settle();
    assert_eq!(c.service(1).owed_submissions(), 0);
    assert_eq!(
        c.take(2, 20),
        vec![confchg(
            "g",
            &[member(2, 200)],
            &[addr(1, 100, Reason::ProcDown)],
            &[]
        )]
    );
    assert!(c.service(1).stats().submit_retries > 0);
}

// ---------------------------------------------------------------- delivery

/// docs/cpg.md §5.4: self-delivery, fan-out to every joined connection, one total order
/// across groups and senders (the same relative order at every receiver), and the
/// callback fields (Totem node, pid at join time).
#[test]
fn messages_fan_out_with_self_delivery_in_one_total_order() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "a");
    c.joined(2, 20, 200, "a");
    c.joined(3, 30, 300, "a");
    c.joined(3, 31, 301, "b");
    c.joined(1, 11, 101, "b");
    for (id, conn) in [(1, 10), (2, 20), (3, 30), (3, 31), (1, 11)] {
        c.take(id, conn);
    }
    for i in 0..30u8 {
        let (id, conn) = [(1, 10), (2, 20), (3, 30), (3, 31), (1, 11)][i as usize % 5];
        c.mcast(id, conn, &[i]).unwrap();
    }
    c.settle();
    let a_all: Vec<Vec<u8>> = (0..30u8)
        .filter(|i| [0, 1, 2].contains(&(i % 5)))
        .map(|i| vec![i])
        .collect();
    let b_all: Vec<Vec<u8>> = (0..30u8)
        .filter(|i| [3, 4].contains(&(i % 5)))
        .map(|i| vec![i])
        .collect();
    let a1 = payloads(&c.events(1, 10));
    assert_eq!(a1.len(), a_all.len());
    assert_eq!(payloads(&c.events(2, 20)), a1);
    assert_eq!(payloads(&c.events(3, 30)), a1, "the sender got its own too");
    let b3 = payloads(&c.events(3, 31));
    assert_eq!(b3.len(), b_all.len());
    assert_eq!(payloads(&c.events(1, 11)), b3);
    // Per-sender FIFO.
    let mut sorted = a1.clone();
    sorted.sort();
    assert_eq!(sorted, a_all);
    match &c.events(2, 20)[0] {
        ClientEvent::Deliver {
            group,
            sender,
            guarantee,
            ..
        } => {
            assert_eq!(group, &name("a"));
            assert_eq!(*guarantee, Guarantee::Agreed);
            assert!(
                [member(1, 100), member(2, 200), member(3, 300)].contains(sender),
                "{sender:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // One sequence across groups: nodes 1 and 3 (members of both) interleave the two
    // groups' messages the same way.
    let across = |id: NodeId| -> Vec<Vec<u8>> {
        let events: Vec<ClientEvent> = c.node_log[&id].iter().map(|(_, e)| e.clone()).collect();
        payloads(&events)
            .into_iter()
            .filter(|p| p.len() == 1)
            .collect()
    };
    assert_eq!(across(1).len(), 30, "both groups, all messages");
    assert_eq!(across(1), across(3));
}

/// docs/cpg.md §5.4 "Sender-node filter": a message from a node with no member in the
/// group is dropped; the check is per node, not per pid.
#[test]
fn sender_node_filter_drops_messages_from_nodes_without_members() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.take(1, 10);
    c.inject(3, codec::encode_mcast(&name("g"), 300, &[b"from 3"]));
    c.settle();
    assert!(c.take(1, 10).is_empty());
    assert_eq!(c.service(1).stats().dropped_unknown_node, 1);
    // Node 2 has a member: a message with another pid from node 2 is delivered.
    c.inject(2, codec::encode_mcast(&name("g"), 999, &[b"from 2"]));
    let got = c.take(1, 10);
    assert_eq!(payloads(&got), vec![b"from 2".to_vec()]);
    match &got[0] {
        ClientEvent::Deliver { sender, .. } => assert_eq!(*sender, member(2, 999)),
        other => panic!("{other:?}"),
    }
}

/// docs/cpg.md §5.2 "Message cut-off": messages ordered before the JOIN do not reach
/// the joiner, those after do; a message sent right after join returns is ordered
/// after the JOIN, so the sender sees its join first.
#[test]
fn messages_before_the_join_do_not_reach_the_joiner() {
    let mut c = Cluster::new(2, true);
    c.joined(2, 20, 200, "g");
    c.mcast(2, 20, b"before").unwrap();
    c.settle();
    c.connect(1, 10, 100);
    c.join(1, 10, "g").unwrap();
    c.mcast(1, 10, b"mine").unwrap();
    c.mcast(2, 20, b"after").unwrap();
    c.settle();
    let got = c.events(1, 10);
    assert!(matches!(got[0], ClientEvent::Confchg { .. }));
    let p = payloads(&got);
    assert!(!p.contains(&b"before".to_vec()));
    assert!(p.contains(&b"mine".to_vec()) && p.contains(&b"after".to_vec()));
}

// ---------------------------------------------------------------- errors by state

/// docs/cpg.md §3 `cpg_join`, checks in the daemon's order, in every state.
#[test]
fn join_results_in_every_state() {
    let mut c = Cluster::new(2, true);
    assert_eq!(c.join(1, 99, "g"), Err(CpgError::BadHandle));
    c.connect(1, 10, 100);
    c.connect(1, 11, 100); // same pid, another connection
    c.join(1, 10, "g").unwrap();
    // JOIN_STARTED.
    assert_eq!(c.join(1, 10, "g"), Err(CpgError::Exist));
    assert_eq!(c.join(1, 10, "other"), Err(CpgError::Exist));
    assert_eq!(
        c.join(1, 11, "g"),
        Err(CpgError::Exist),
        "same pid and name"
    );
    c.settle();
    // JOIN_COMPLETED: a second join on a connection is EXIST (quirk 1, kept).
    assert_eq!(c.join(1, 10, "other"), Err(CpgError::Exist));
    c.leave(1, 10, "g").unwrap();
    // LEAVE_STARTED: same group is EXIST (check 1), another group BUSY.
    assert_eq!(c.join(1, 10, "g"), Err(CpgError::Exist));
    assert_eq!(c.join(1, 10, "other"), Err(CpgError::Busy));
    c.disconnect(1, 10);
    // The member is still in the table until its leave is delivered: TRY_AGAIN.
    assert_eq!(c.join(1, 11, "g"), Err(CpgError::TryAgain));
    c.settle();
    c.join(1, 11, "g").unwrap();
    // A full Totem queue: TRY_AGAIN and nothing changes.
    c.connect(1, 12, 102);
    c.node(1).totem.capacity = 0;
    assert_eq!(c.join(1, 12, "g"), Err(CpgError::TryAgain));
    c.node(1).totem.capacity = usize::MAX;
    c.join(1, 12, "g").unwrap();
    c.settle();
    assert_eq!(
        c.service(1).membership(&name("g")),
        vec![member(1, 100), member(1, 102)]
    );
}

/// docs/cpg.md §3: a connection gone with its PROCDOWN not yet delivered blocks a
/// rejoin of the same (pid, group) with TRY_AGAIN, even before its JOIN is applied.
#[test]
fn rejoin_waits_for_the_procdown_of_a_departed_connection() {
    let mut c = Cluster::new(1, true);
    c.connect(1, 10, 100);
    c.join(1, 10, "g").unwrap();
    c.disconnect(1, 10);
    c.connect(1, 11, 100);
    assert_eq!(c.join(1, 11, "g"), Err(CpgError::TryAgain));
    c.settle();
    c.join(1, 11, "g").unwrap();
    c.settle();
    assert_eq!(c.service(1).membership(&name("g")), vec![member(1, 100)]);
    assert!(matches!(c.events(1, 11)[0], ClientEvent::Confchg { .. }));
}

/// docs/cpg.md §3 `cpg_leave` and §13 quirk 7 (the name is validated), in every state.
#[test]
fn leave_results_in_every_state() {
    let mut c = Cluster::new(2, true);
    assert_eq!(c.leave(1, 99, "g"), Err(CpgError::BadHandle));
    c.connect(1, 10, 100);
    assert_eq!(c.leave(1, 10, "g"), Err(CpgError::NotExist), "UNJOINED");
    c.join(1, 10, "g").unwrap();
    assert_eq!(c.leave(1, 10, "g"), Err(CpgError::Busy), "JOIN_STARTED");
    c.settle();
    assert_eq!(c.leave(1, 10, "h"), Err(CpgError::NotExist), "another name");
    c.node(1).totem.capacity = 0;
    assert_eq!(c.leave(1, 10, "g"), Err(CpgError::TryAgain), "Totem full");
    c.node(1).totem.capacity = usize::MAX;
    c.leave(1, 10, "g").unwrap();
    assert_eq!(
        c.leave(1, 10, "g"),
        Err(CpgError::NotExist),
        "LEAVE_STARTED"
    );
    c.settle();
    assert_eq!(
        c.leave(1, 10, "g"),
        Err(CpgError::NotExist),
        "UNJOINED again"
    );
}

/// docs/cpg.md §3 `cpg_mcast_joined` and §13 quirk 3 (kept: OK and dropped when not
/// joined), in every state.
#[test]
fn mcast_results_in_every_state() {
    let limits = Limits {
        max_message_bytes: 1000,
        ..Limits::default()
    };
    let mut c = Cluster::with_limits(2, true, limits);
    c.joined(2, 20, 200, "g");
    assert_eq!(c.mcast(1, 99, b"x"), Err(CpgError::BadHandle));
    c.connect(1, 10, 100);
    c.mcast(1, 10, b"unjoined").unwrap();
    assert_eq!(c.service(1).stats().dropped_not_joined, 1);
    c.join(1, 10, "g").unwrap();
    c.mcast(1, 10, b"join started").unwrap();
    c.settle();
    c.mcast(1, 10, b"join completed").unwrap();
    let big = vec![0u8; 1001];
    let node = c.node(1);
    assert_eq!(
        node.service.mcast(
            10,
            Guarantee::Agreed,
            &[&big[..500], &big[500..]],
            &mut node.totem
        ),
        Err(CpgError::TooBig)
    );
    c.node(1).totem.capacity = 0;
    assert_eq!(c.mcast(1, 10, b"full"), Err(CpgError::TryAgain));
    c.node(1).totem.capacity = usize::MAX;
    c.leave(1, 10, "g").unwrap();
    c.mcast(1, 10, b"leave started").unwrap();
    c.settle();
    assert_eq!(c.service(1).stats().dropped_not_joined, 2);
    assert_eq!(
        payloads(&c.events(2, 20)),
        vec![b"join started".to_vec(), b"join completed".to_vec()]
    );
    let node = c.node(1);
    node.service
        .mcast(10, Guarantee::Agreed, &[&big[..1000]], &mut node.totem)
        .unwrap();
}

/// docs/cpg.md §5.5 "During sync, multicasts, joins and leaves get TRY_AGAIN"; the
/// queries still answer; a disconnect during sync sends its PROCDOWN after activation.
#[test]
fn requests_get_try_again_during_sync() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.joined(2, 21, 201, "g");
    c.connect(1, 11, 101);
    c.reconfigure(&[&[1, 2, 3]]);
    assert!(c.service(1).in_sync());
    assert_eq!(c.join(1, 11, "g"), Err(CpgError::TryAgain));
    assert_eq!(c.leave(1, 10, "g"), Err(CpgError::TryAgain));
    assert_eq!(c.mcast(1, 10, b"x"), Err(CpgError::TryAgain));
    assert_eq!(c.service(1).membership(&name("g")).len(), 3);
    assert_eq!(
        c.service(1)
            .iterate(IterationKind::All, None)
            .unwrap()
            .len(),
        3
    );
    c.disconnect(2, 21);
    assert_eq!(c.service(2).owed_submissions(), 1);
    c.settle();
    assert!(!c.service(1).in_sync());
    assert_eq!(
        c.service(1).membership(&name("g")),
        vec![member(1, 100), member(2, 200)]
    );
    let events = c.take(1, 10);
    let n = events.len();
    assert!(matches!(events[n - 2], ClientEvent::TotemConfchg { .. }));
    assert_eq!(
        events[n - 1],
        confchg(
            "g",
            &[member(1, 100), member(2, 200)],
            &[addr(2, 201, Reason::ProcDown)],
            &[]
        )
    );
    c.join(1, 11, "g").unwrap();
}

/// The service refuses everything until its first sync completes.
#[test]
fn a_new_service_is_in_sync_until_its_first_activation() {
    let mut service = Service::new(1, Limits::default());
    let mut totem = FakeTotem {
        normal: VecDeque::new(),
        sync: VecDeque::new(),
        barrier: false,
        waiting: false,
        ring: RingId::default(),
        capacity: 10,
    };
    assert!(service.in_sync());
    service.connect(1, 100).unwrap();
    assert_eq!(
        service.join(1, &name("g"), false, &mut totem),
        Err(CpgError::TryAgain)
    );
    assert!(totem.normal.is_empty());
}

// ---------------------------------------------------------------- limits

/// docs/cpg.md §13 quirk 6: members per group, groups and connections are enforced
/// with an error, counting joins in flight and connections whose removal is in flight.
#[test]
fn limits_are_enforced_with_errors() {
    let limits = Limits {
        max_members_per_group: 2,
        max_groups: 2,
        max_connections: 4,
        ..Limits::default()
    };
    let mut c = Cluster::with_limits(2, true, limits);
    c.connect(1, 1, 1);
    c.connect(1, 2, 2);
    c.connect(2, 3, 3);
    c.join(1, 1, "g").unwrap();
    c.join(1, 2, "g").unwrap();
    c.settle();
    assert_eq!(c.join(2, 3, "g"), Err(CpgError::TooManyMembers));
    c.join(2, 3, "h").unwrap();
    c.connect(2, 4, 4);
    assert_eq!(
        c.join(2, 4, "i"),
        Err(CpgError::TooManyGroups),
        "h in flight"
    );
    c.settle();
    assert_eq!(c.join(2, 4, "i"), Err(CpgError::TooManyGroups));
    c.join(2, 4, "h").unwrap();
    // Connections: 4 on node 1 at most, a departed joined one counting until its
    // PROCDOWN is applied.
    c.connect(1, 5, 5);
    c.connect(1, 6, 6);
    assert_eq!(
        c.node(1).service.connect(7, 7),
        Err(CpgError::TooManyConnections)
    );
    assert_eq!(c.node(1).service.connect(1, 7), Err(CpgError::Exist));
    c.disconnect(1, 1);
    assert_eq!(
        c.node(1).service.connect(7, 7),
        Err(CpgError::TooManyConnections)
    );
    c.settle();
    c.connect(1, 7, 7);
    assert_eq!(CpgError::TooManyMembers.cs_error(), 15);
    assert_eq!(CpgError::TooManyGroups.cs_error(), 30);
}

// ---------------------------------------------------------------- queries

/// docs/cpg.md §3 `cpg_iteration_initialize` and `cpg_membership_get`: kinds, the
/// group/kind agreement check, sorted results, any group (joined or not).
#[test]
fn iteration_kinds_and_membership() {
    let mut c = Cluster::new(2, true);
    c.joined(2, 20, 200, "bb");
    c.joined(1, 10, 100, "bb");
    c.joined(1, 11, 101, "a");
    let s = c.service(2);
    assert_eq!(
        s.iterate(IterationKind::NameOnly, None).unwrap(),
        vec![(name("a"), member(0, 0)), (name("bb"), member(0, 0))]
    );
    assert_eq!(
        s.iterate(IterationKind::All, None).unwrap(),
        vec![
            (name("a"), member(1, 101)),
            (name("bb"), member(1, 100)),
            (name("bb"), member(2, 200))
        ]
    );
    assert_eq!(
        s.iterate(IterationKind::OneGroup, Some(&name("bb")))
            .unwrap(),
        vec![(name("bb"), member(1, 100)), (name("bb"), member(2, 200))]
    );
    assert_eq!(
        s.iterate(IterationKind::OneGroup, Some(&name("none")))
            .unwrap(),
        vec![]
    );
    assert_eq!(
        s.iterate(IterationKind::OneGroup, None),
        Err(CpgError::InvalidParam)
    );
    assert_eq!(
        s.iterate(IterationKind::All, Some(&name("a"))),
        Err(CpgError::InvalidParam)
    );
    assert_eq!(
        s.iterate(IterationKind::NameOnly, Some(&name("a"))),
        Err(CpgError::InvalidParam)
    );
    assert_eq!(s.membership(&name("a")), vec![member(1, 101)]);
    assert_eq!(s.local_node(), 2);
}

/// docs/cpg.md §5.6 `DELIVER_INITIAL_TOTEM_CONF`: the joiner gets its join confchg,
/// then the last completed sync; without the flag, nothing; if another confchg is
/// processed between the request and its JOIN, the totem confchg comes first.
#[test]
fn initial_totem_conf_follows_the_join_confchg() {
    let mut c = Cluster::new(2, true);
    let (ring, members) = {
        let (r, m) = c.service(1).synced_ring().unwrap();
        (r, m.to_vec())
    };
    let totem_conf = ClientEvent::TotemConfchg {
        ring_id: ring,
        members: members.clone(),
    };
    c.connect(1, 10, 100);
    c.join_with(1, 10, "g", true).unwrap();
    c.settle();
    let join = confchg("g", &[member(1, 100)], &[], &[addr(1, 100, Reason::Join)]);
    assert_eq!(c.take(1, 10), vec![join, totem_conf.clone()]);
    c.connect(1, 11, 101);
    c.join(1, 11, "g").unwrap();
    c.settle();
    assert_eq!(c.take(1, 11).len(), 1, "no flag, no totem confchg");
    // Edge case: another group's confchg first.
    c.connect(1, 12, 102);
    c.connect(1, 13, 103);
    c.join(1, 12, "other").unwrap();
    c.join_with(1, 13, "g2", true).unwrap();
    c.settle();
    let got = c.take(1, 13);
    assert_eq!(got[0], totem_conf);
    assert!(matches!(got[1], ClientEvent::Confchg { .. }));
    assert_eq!(got.len(), 2);
}

// ---------------------------------------------------------------- sync

/// docs/cpg.md §5.5: a node that leaves the ring takes its members with it (NODEDOWN,
/// one confchg per group with all of them), then every connection, joined or not,
/// gets a TOTEM_CONFCHG of the new ring; local members are never removed.
#[test]
fn nodedown_after_a_node_leaves_the_ring() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "g");
    c.joined(3, 30, 300, "g");
    c.joined(3, 31, 301, "g");
    c.joined(3, 32, 302, "h");
    c.connect(2, 20, 200); // never joins
    c.take(1, 10);
    c.take(2, 20);
    c.crash(3);
    c.reconfigure(&[&[1, 2]]);
    c.settle();
    let ring = c.service(1).synced_ring().unwrap().0;
    let totem_conf = ClientEvent::TotemConfchg {
        ring_id: ring,
        members: vec![1, 2],
    };
    assert_eq!(
        c.take(1, 10),
        vec![
            confchg(
                "g",
                &[member(1, 100)],
                &[
                    addr(3, 300, Reason::NodeDown),
                    addr(3, 301, Reason::NodeDown)
                ],
                &[]
            ),
            totem_conf.clone()
        ]
    );
    assert_eq!(c.take(2, 20), vec![totem_conf]);
    for id in 1..=2 {
        assert_eq!(
            c.service(id).iterate(IterationKind::All, None).unwrap(),
            vec![(name("g"), member(1, 100))]
        );
    }
}

/// docs/cpg.md §5.5 "Partitions": each side reports the other side's members as
/// NODEDOWN; after the merge the joinlists report them as NODEUP (one confchg per
/// group, reason 4), and every node's table is the same.
#[test]
fn nodeup_after_a_merge_of_two_partitions() {
    let mut c = Cluster::new(4, true);
    c.joined(1, 10, 100, "g");
    c.joined(3, 30, 300, "g");
    c.reconfigure(&[&[1, 2], &[3, 4]]);
    c.settle();
    // Members join on both sides while partitioned.
    c.joined(2, 20, 200, "g");
    c.joined(4, 40, 400, "g");
    c.joined(4, 41, 401, "h");
    c.take(1, 10);
    c.take(3, 30);
    c.take(2, 20);
    c.reconfigure(&[&[1, 2, 3, 4]]);
    c.settle();
    let ring = c.service(1).synced_ring().unwrap().0;
    let all = [
        member(1, 100),
        member(2, 200),
        member(3, 300),
        member(4, 400),
    ];
    let totem_conf = ClientEvent::TotemConfchg {
        ring_id: ring,
        members: vec![1, 2, 3, 4],
    };
    assert_eq!(
        c.take(1, 10),
        vec![
            confchg(
                "g",
                &all,
                &[],
                &[addr(3, 300, Reason::NodeUp), addr(4, 400, Reason::NodeUp)]
            ),
            totem_conf.clone()
        ]
    );
    assert_eq!(
        c.take(3, 30),
        vec![
            confchg(
                "g",
                &all,
                &[],
                &[addr(1, 100, Reason::NodeUp), addr(2, 200, Reason::NodeUp)]
            ),
            totem_conf
        ]
    );
    let table = c.service(1).iterate(IterationKind::All, None).unwrap();
    assert_eq!(table.len(), 5);
    for id in 2..=4 {
        assert_eq!(
            c.service(id).iterate(IterationKind::All, None).unwrap(),
            table
        );
    }
}

/// docs/cpg.md §5.5 "Zombie cleanup": a remote member that no joinlist mentions is
/// removed in its own confchg with reason PROCDOWN.
#[test]
fn zombie_members_no_joinlist_mentions_are_removed() {
    let mut c = Cluster::new(2, true);
    c.joined(1, 10, 100, "g");
    c.take(1, 10);
    // Only node 1 hears of (2, 777) and (2, 778): node 2's own table does not hold them.
    for pid in [777, 778] {
        let join = Event::Deliver(Delivery {
            sender: 2,
            ring_id: c.service(1).synced_ring().unwrap().0,
            guarantee: Guarantee::Agreed,
            payload: codec::encode_join(&name("g"), pid),
        });
        c.feed(1, join);
    }
    assert_eq!(c.service(1).membership(&name("g")).len(), 3);
    c.take(1, 10);
    c.reconfigure(&[&[1, 2]]);
    c.settle();
    let got = only_confchgs(&c.take(1, 10));
    assert_eq!(
        got,
        vec![
            confchg(
                "g",
                &[member(1, 100), member(2, 778)],
                &[addr(2, 777, Reason::ProcDown)],
                &[]
            ),
            confchg(
                "g",
                &[member(1, 100)],
                &[addr(2, 778, Reason::ProcDown)],
                &[]
            ),
        ]
    );
    assert_eq!(
        c.service(1).iterate(IterationKind::All, None).unwrap(),
        c.service(2).iterate(IterationKind::All, None).unwrap()
    );
}

/// docs/cpg.md §5.5 "Aborted sync": a new configuration before activation aborts the
/// sync; the next downlist covers both changes, and joinlists of the older ring are
/// ignored.
#[test]
fn aborted_sync_downlist_covers_both_changes() {
    let mut c = Cluster::new(3, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.joined(3, 30, 300, "g");
    c.take(1, 10);
    c.crash(3);
    c.reconfigure(&[&[1, 2]]);
    // No joinlist delivered yet; node 2 goes too.
    c.crash(2);
    c.reconfigure(&[&[1]]);
    c.settle();
    let s = c.service(1);
    assert_eq!(s.stats().syncs_aborted, 1);
    assert!(s.stats().stale_joinlists >= 1, "the old ring's joinlist");
    let ring = s.synced_ring().unwrap().0;
    assert_eq!(
        c.take(1, 10),
        vec![
            confchg(
                "g",
                &[member(1, 100)],
                &[
                    addr(2, 200, Reason::NodeDown),
                    addr(3, 300, Reason::NodeDown)
                ],
                &[]
            ),
            ClientEvent::TotemConfchg {
                ring_id: ring,
                members: vec![1]
            }
        ]
    );
}

/// A joinlist tagged with the current ring but delivered on another, or from a node
/// outside the ring, or repeated, does not count toward the barrier.
#[test]
fn joinlists_count_only_once_per_member_of_the_ring() {
    let mut c = Cluster::new(2, true);
    c.reconfigure(&[&[1, 2]]);
    let ring = c.parts[0].ring;
    let jl = codec::encode_joinlist(ring, std::iter::empty());
    c.inject(1, jl.clone());
    c.inject(1, jl.clone());
    let outsider = Event::Deliver(Delivery {
        sender: 9,
        ring_id: ring,
        guarantee: Guarantee::Agreed,
        payload: jl.clone(),
    });
    c.feed(1, outsider);
    let other_ring = Event::Deliver(Delivery {
        sender: 2,
        ring_id: RingId { rep: 1, seq: 1 },
        guarantee: Guarantee::Agreed,
        payload: jl,
    });
    c.feed(1, other_ring);
    assert!(c.service(1).in_sync());
    assert_eq!(c.service(1).stats().stale_joinlists, 3);
    c.settle();
    assert!(!c.service(1).in_sync());
}

/// docs/cpg.md §5.5 "Application messages that were already queued ... are delivered
/// after the new confchgs on every node". Without a sync barrier in Totem they are
/// ordered before the last JOINLIST and held; with it they are ordered after. Either
/// way every member sees NODEDOWN, TOTEM_CONFCHG, then the messages, in order.
#[test]
fn messages_queued_before_a_change_are_delivered_after_its_confchgs() {
    for barrier in [false, true] {
        let mut c = Cluster::new(3, barrier);
        c.joined(1, 10, 100, "g");
        c.joined(2, 20, 200, "g");
        c.joined(3, 30, 300, "g");
        c.take(1, 10);
        c.take(2, 20);
        for i in 0..3u8 {
            c.mcast(1, 10, &[b'm', i]).unwrap();
        }
        c.connect(2, 21, 201);
        c.join(2, 21, "g").unwrap();
        c.crash(3);
        c.reconfigure(&[&[1, 2]]);
        c.settle();
        let ring = c.service(1).synced_ring().unwrap().0;
        let expected = [
            confchg(
                "g",
                &[member(1, 100), member(2, 200)],
                &[addr(3, 300, Reason::NodeDown)],
                &[],
            ),
            ClientEvent::TotemConfchg {
                ring_id: ring,
                members: vec![1, 2],
            },
        ];
        for (id, conn) in [(1, 10), (2, 20)] {
            let got = c.take(id, conn);
            assert_eq!(got[..2], expected[..], "barrier {barrier} node {id}");
            assert_eq!(
                payloads(&got[2..]),
                vec![b"m\0".to_vec(), b"m\x01".to_vec(), b"m\x02".to_vec()],
                "barrier {barrier} node {id}"
            );
            assert!(got[2..].iter().any(|e| matches!(
                e,
                ClientEvent::Confchg { joined, .. } if joined == &[addr(2, 201, Reason::Join)]
            )));
        }
        let held = c.service(2).stats().held;
        if barrier {
            assert_eq!(held, 0, "the barrier orders them after activation");
        } else {
            assert!(held >= 4, "held {held}");
        }
    }
}

/// Without a sync barrier, messages held by a sync that is aborted are applied when
/// the next configuration arrives (documented fallback), never lost.
#[test]
fn held_messages_of_an_aborted_sync_are_applied_not_lost() {
    let mut c = Cluster::new(3, false);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.joined(3, 30, 300, "g");
    c.take(2, 20);
    c.mcast(1, 10, b"held").unwrap();
    c.crash(3);
    c.reconfigure(&[&[1, 2]]);
    // Deliver node 1's queued message (before its joinlist), then change again.
    assert!(c.step());
    assert_eq!(c.service(2).stats().held, 1);
    c.reconfigure(&[&[1, 2]]);
    c.settle();
    assert_eq!(c.service(2).stats().held_applied_on_abort, 1);
    assert_eq!(payloads(&c.take(2, 20)), vec![b"held".to_vec()]);
}

/// A JOINLIST that Totem cannot take is retried by `poll` until the sync completes.
#[test]
fn joinlist_refused_by_a_full_totem_is_retried_by_poll() {
    let mut c = Cluster::new(2, true);
    c.node(1).totem.capacity = 0;
    c.reconfigure(&[&[1, 2]]);
    c.settle();
    assert!(c.service(1).in_sync() && c.service(2).in_sync());
    assert_eq!(c.service(1).owed_submissions(), 1);
    c.node(1).totem.capacity = usize::MAX;
    c.settle();
    assert!(!c.service(1).in_sync() && !c.service(2).in_sync());
}

/// A restarted node's old members are reported NODEDOWN by the others (it left their
/// ring), and its new members NODEUP; its own table is rebuilt from the joinlists.
#[test]
fn restarted_node_is_down_then_up_with_its_new_members() {
    let mut c = Cluster::new(2, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.take(1, 10);
    c.crash(2);
    c.add_node(2);
    c.reconfigure(&[&[1, 2]]);
    c.settle();
    assert_eq!(c.service(2).membership(&name("g")), vec![member(1, 100)]);
    c.joined(2, 21, 201, "g");
    let got = only_confchgs(&c.take(1, 10));
    assert_eq!(
        got,
        vec![
            confchg(
                "g",
                &[member(1, 100)],
                &[addr(2, 200, Reason::NodeDown)],
                &[]
            ),
            confchg(
                "g",
                &[member(1, 100), member(2, 201)],
                &[],
                &[addr(2, 201, Reason::Join)]
            ),
        ]
    );
}

// ---------------------------------------------------------------- hostile input

/// docs/invariants.md guarantee 6: malformed CPG messages are counted and dropped, never a
/// panic, and change nothing.
#[test]
fn malformed_messages_are_counted_and_ignored() {
    let mut c = Cluster::new(2, true);
    c.joined(1, 10, 100, "g");
    let before = c.service(1).iterate(IterationKind::All, None).unwrap();
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![2, 1, 0, 0, 0, 0, 1, b'g'],    // version 2
        vec![1, 9, 0, 0, 0, 0, 1, b'g'],    // unknown kind
        vec![1, 1, 0, 0, 0, 0, 0],          // empty name
        vec![1, 1, 0, 0, 0, 0, 129],        // name too long
        vec![1, 1, 0, 0, 0, 0, 5, b'g'],    // truncated name
        vec![1, 2, 0, 0, 0, 0, 1, b'g', 0], // trailing byte
        vec![1, 4, 0, 0, 0],                // truncated pid
        vec![1, 5, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255], // count lie
    ];
    let valid_join = codec::encode_join(&name("g"), 5).to_vec();
    bad.push(valid_join[..valid_join.len() - 1].to_vec());
    let n = bad.len() as u64;
    for payload in bad {
        c.inject(2, Bytes::from(payload));
    }
    assert_eq!(c.service(1).stats().malformed, n);
    assert_eq!(
        c.service(1).iterate(IterationKind::All, None).unwrap(),
        before
    );
    // Mutations of valid messages: whatever decodes is applied, nothing panics.
    let mut rng = 0x5eed_u64;
    let valid = [
        codec::encode_join(&name("g"), 5).to_vec(),
        codec::encode_leave(&name("g"), 5, true).to_vec(),
        codec::encode_mcast(&name("g"), 5, &[b"payload"]).to_vec(),
        codec::encode_joinlist(RingId { rep: 1, seq: 9 }, [(&name("g"), 5u32)].into_iter())
            .to_vec(),
    ];
    for i in 0..2000 {
        let mut m = valid[i % valid.len()].clone();
        let r = crate::splitmix::splitmix64(&mut rng);
        let at = (r as usize) % m.len();
        match r >> 60 {
            0..=9 => m[at] = (r >> 32) as u8,
            10..=12 => m.truncate(at),
            _ => m.push((r >> 40) as u8),
        }
        c.inject(2, Bytes::from(m));
    }
    assert!(c.service(1).stats().malformed > n);
    // Node 1's own member is still there; the table is consistent across nodes.
    assert!(
        c.service(1)
            .membership(&name("g"))
            .contains(&member(1, 100))
    );
    assert_eq!(
        c.service(1).iterate(IterationKind::All, None).unwrap(),
        c.service(2).iterate(IterationKind::All, None).unwrap()
    );
}

/// `mcast_in_place`: the header goes into the room in front of the payload (no copy of
/// it), receivers see what `mcast` would have given them, and a TryAgain (sync running,
/// or Totem full) hands the buffer back untouched for the retry.
#[test]
fn mcast_in_place_sends_without_copying_and_returns_the_buffer_on_try_again() {
    let in_place = |payload: &[u8]| {
        let mut buf = BytesMut::zeroed(MCAST_HEADER_MAX);
        buf.extend_from_slice(payload);
        buf
    };
    let mut c = Cluster::new(2, true);
    c.joined(1, 10, 100, "g");
    c.joined(2, 20, 200, "g");
    c.take(1, 10);
    c.take(2, 20);
    let buf = in_place(b"large message");
    let payload_at = buf[MCAST_HEADER_MAX..].as_ptr();
    let node = c.nodes.get_mut(&1).unwrap();
    node.service
        .mcast_in_place(10, Guarantee::Agreed, buf, &mut node.totem)
        .unwrap();
    let (queued, _) = node.totem.normal.back().unwrap();
    assert_eq!(
        queued[queued.len() - 13..].as_ptr(),
        payload_at,
        "the payload was copied"
    );
    c.drain(1);
    c.mcast(2, 20, b"small").unwrap();
    c.settle();
    let want = vec![b"large message".to_vec(), b"small".to_vec()];
    assert_eq!(payloads(&c.take(1, 10)), want);
    assert_eq!(payloads(&c.take(2, 20)), want);

    let returned_on_try_again = |node: &mut TestNode| {
        let (e, back) = node
            .service
            .mcast_in_place(10, Guarantee::Agreed, in_place(b"again"), &mut node.totem)
            .unwrap_err();
        assert_eq!(e, CpgError::TryAgain);
        assert_eq!(back.unwrap()[MCAST_HEADER_MAX..], b"again"[..]);
    };
    // Totem full: the buffer comes back as it was.
    let node = c.nodes.get_mut(&1).unwrap();
    node.totem.capacity = node.totem.normal.len();
    returned_on_try_again(node);
    node.totem.capacity = usize::MAX;
    // A sync running: the same.
    c.reconfigure(&[&[1, 2]]);
    returned_on_try_again(c.nodes.get_mut(&1).unwrap());
    // Shorter than the room: refused, not a panic.
    let node = c.nodes.get_mut(&1).unwrap();
    let (e, _) = node
        .service
        .mcast_in_place(10, Guarantee::Agreed, BytesMut::zeroed(5), &mut node.totem)
        .unwrap_err();
    assert_eq!(e, CpgError::InvalidParam);
}

/// `decode_owned` gives what `decode` gives, the payload being the delivery itself
/// moved past its header; other kinds and malformed input go through `decode`.
#[test]
fn decode_owned_matches_decode_without_a_new_reference() {
    let g = name("grp");
    let bytes = codec::encode_mcast(&g, 9, &[b"hello"]);
    let header = bytes.len() - 5;
    let start = bytes.as_ptr();
    let owned = codec::decode_owned(bytes.clone()).unwrap();
    assert_eq!(owned, codec::decode(&bytes).unwrap());
    match owned {
        Message::Mcast { payload, .. } => {
            assert_eq!(payload.as_ptr(), start.wrapping_add(header));
        }
        other => panic!("{other:?}"),
    }
    for other in [
        codec::encode_join(&g, 1),
        codec::encode_leave(&g, 1, true),
        codec::encode_joinlist(RingId { rep: 1, seq: 2 }, [(&g, 3u32)].into_iter()),
    ] {
        assert_eq!(codec::decode_owned(other.clone()), codec::decode(&other));
    }
    for bad in [
        &b""[..],
        &[9u8, 3][..],
        &[1u8, 3, 0, 0][..],
        &[1u8, 3, 0, 0, 0, 0, 0][..],
    ] {
        let bad = Bytes::copy_from_slice(bad);
        assert_eq!(codec::decode_owned(bad.clone()), codec::decode(&bad));
        assert!(codec::decode(&bad).is_err());
    }
}

/// Short names are kept inline and long ones shared; either way equality, hashing and
/// the length-first order only see the bytes.
#[test]
fn inline_and_shared_names_behave_the_same() {
    use std::collections::HashSet;
    let short = vec![b'a'; 46];
    let long = vec![b'a'; 47];
    let wire = codec::encode_join(&GroupName::new(&long).unwrap(), 1);
    let decoded = match codec::decode(&wire).unwrap() {
        Message::Join { group, .. } => group,
        other => panic!("{other:?}"),
    };
    assert_eq!(decoded, GroupName::new(&long).unwrap());
    assert_eq!(decoded.detach(), decoded);
    assert_eq!(decoded.as_bytes(), &long[..]);
    let names = [
        GroupName::new(&short).unwrap(),
        GroupName::new(&long).unwrap(),
        GroupName::new(b"b").unwrap(),
    ];
    let mut sorted = names.to_vec();
    sorted.sort();
    assert_eq!(sorted[0].as_bytes(), b"b");
    assert_eq!(sorted[1].as_bytes(), &short[..]);
    assert_eq!(sorted[2].as_bytes(), &long[..]);
    let set: HashSet<GroupName> = names.iter().cloned().collect();
    assert!(set.contains(&decoded));
    assert!(set.contains(&GroupName::new(&short).unwrap()));
    assert_eq!(set.len(), 3);
}
