//! Every checker against hand-built traces: a clean history passes them all, and each
//! checker catches a history that breaks its guarantee (so none of them can pass
//! vacuously).

use std::time::Duration;

use super::*;
use crate::trace::{End, Outcome};
use crate::workload::encode;
use ringcast_proto::totem::Instant;

fn ring(rep: NodeId, seq: u64) -> RingId {
    RingId { rep, seq }
}

fn id(node: NodeId, incarnation: u32, counter: u64) -> MsgId {
    MsgId {
        node,
        incarnation,
        counter,
    }
}

/// A small trace builder: records get increasing timestamps.
struct Builder {
    trace: Trace,
    clock: u64,
}

impl Builder {
    fn new(nodes: usize) -> Builder {
        let incarnations = (1..=nodes as NodeId)
            .map(|n| Incarnation::new(n, 0, Instant::ZERO))
            .collect();
        Builder {
            trace: Trace {
                nodes,
                incarnations,
                outcome: Outcome {
                    final_heal: Some(Instant::ZERO),
                    settle_limit: Duration::from_secs(10),
                    quiescent_at: Some(Instant::from_nanos(1)),
                    final_states: Vec::new(),
                    aborted: false,
                },
            },
            clock: 0,
        }
    }

    fn inc(&mut self, node: NodeId, number: u32) -> usize {
        self.trace
            .incarnations
            .iter()
            .position(|i| i.node == node && i.number == number)
            .unwrap_or_else(|| {
                let started = Instant::from_nanos(self.clock);
                self.trace
                    .incarnations
                    .push(Incarnation::new(node, number, started));
                self.trace.incarnations.len() - 1
            })
    }

    fn push(&mut self, node: NodeId, number: u32, kind: RecordKind) -> &mut Self {
        self.clock += 1000;
        let at = Instant::from_nanos(self.clock);
        let i = self.inc(node, number);
        self.trace.incarnations[i].records.push(Record { at, kind });
        self
    }

    fn submit(&mut self, node: NodeId, m: MsgId, guarantee: Guarantee) -> &mut Self {
        let (payload, checksum) = encode(m, 40);
        self.push(
            node,
            m.incarnation,
            RecordKind::Submitted {
                id: m,
                len: payload.len(),
                checksum,
                guarantee,
            },
        )
    }

    fn deliver(
        &mut self,
        (node, number): (NodeId, u32),
        m: MsgId,
        guarantee: Guarantee,
        on: RingId,
    ) -> &mut Self {
        let (payload, checksum) = encode(m, 40);
        self.push(
            node,
            number,
            RecordKind::Delivered {
                id: Some(m),
                sender: m.node,
                ring_id: on,
                guarantee,
                len: payload.len(),
                checksum,
                integrity: Integrity::Ok,
            },
        )
    }

    fn config(
        &mut self,
        (node, number): (NodeId, u32),
        kind: ConfigurationKind,
        ring_id: RingId,
        members: &[NodeId],
        left: &[NodeId],
        joined: &[NodeId],
    ) -> &mut Self {
        self.push(
            node,
            number,
            RecordKind::Config(ConfigurationChange {
                kind,
                ring_id,
                members: members.to_vec(),
                left: left.to_vec(),
                joined: joined.to_vec(),
            }),
        )
    }

    fn crash(&mut self, node: NodeId, number: u32) -> &mut Self {
        self.clock += 1000;
        let i = self.inc(node, number);
        self.trace.incarnations[i].end = Some(End::Crashed(Instant::from_nanos(self.clock)));
        self
    }
}

fn first_delivery(records: &[Record]) -> usize {
    records
        .iter()
        .position(|r| matches!(r.kind, RecordKind::Delivered { .. }))
        .expect("a delivery")
}

use ConfigurationKind::{Regular, Transitional};
use Guarantee::{Agreed, Safe};

const R1: RingId = RingId { rep: 1, seq: 4 };
const R2: RingId = RingId { rep: 1, seq: 8 };

/// Three nodes start alone and form R1 = {1,2,3}; each sends one message (node 1's is
/// SAFE); node 3 crashes; 1 and 2 pass through the transitional configuration {1,2}
/// into R2 = {1,2}, where node 1 sends one more.
fn clean() -> Builder {
    let mut b = Builder::new(3);
    for n in 1..=3 {
        b.config((n, 0), Transitional, R1, &[n], &[], &[]);
        let joined: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&m| m != n).collect();
        b.config((n, 0), Regular, R1, &[1, 2, 3], &[], &joined);
    }
    b.submit(1, id(1, 0, 0), Safe);
    b.submit(2, id(2, 0, 0), Agreed);
    b.submit(3, id(3, 0, 0), Agreed);
    for n in 1..=3 {
        b.deliver((n, 0), id(1, 0, 0), Safe, R1);
        b.deliver((n, 0), id(2, 0, 0), Agreed, R1);
    }
    // Node 3's own message reached nobody before it crashed.
    b.crash(3, 0);
    for n in 1..=2 {
        b.config((n, 0), Transitional, R2, &[1, 2], &[3], &[]);
        b.config((n, 0), Regular, R2, &[1, 2], &[], &[]);
    }
    b.submit(1, id(1, 0, 1), Agreed);
    for n in 1..=2 {
        b.deliver((n, 0), id(1, 0, 1), Agreed, R2);
    }
    // The run ends with every live incarnation in a ring of all nodes: node 3 restarts.
    b.config((3, 1), Transitional, ring(1, 12), &[3], &[], &[]);
    b.config((3, 1), Regular, ring(1, 12), &[1, 2, 3], &[], &[1, 2]);
    for n in 1..=2 {
        b.config((n, 0), Transitional, ring(1, 12), &[1, 2], &[], &[]);
        b.config((n, 0), Regular, ring(1, 12), &[1, 2, 3], &[], &[3]);
    }
    b
}

fn names(trace: &Trace) -> Vec<&'static str> {
    check_all(trace).iter().map(|v| v.checker).collect()
}

fn only(trace: &Trace, checker: &'static str) {
    let found = check_all(trace);
    assert!(
        !found.is_empty() && found.iter().all(|v| v.checker == checker),
        "expected only {checker}, got {:#?}",
        found
    );
    assert!(!found[0].excerpt.is_empty());
}

#[test]
fn clean_history_passes_every_checker() {
    let b = clean();
    assert_eq!(
        names(&b.trace),
        Vec::<&str>::new(),
        "{:#?}",
        check_all(&b.trace)
    );
}

/// (a) Totem §2 agreed delivery: two incarnations disagree on the order of two
/// messages they both delivered.
#[test]
fn agreed_order_catches_a_swap() {
    let mut b = clean();
    let n2 = &mut b.trace.incarnations[1].records;
    let first = first_delivery(n2);
    n2.swap(first, first + 1);
    // The swap also breaks nothing else: same sets, same senders.
    only(&b.trace, "agreed-order");
}

/// (b) EVS: n1 and n2 both go from R1 to the same transitional configuration but n2
/// delivered one message fewer in R1.
#[test]
fn virtual_synchrony_catches_a_missing_message() {
    let mut b = clean();
    let mut extra = Builder::new(3);
    extra.deliver((1, 0), id(3, 0, 0), Agreed, R1);
    let record = extra.trace.incarnations[0].records[0].clone();
    // n1 delivers node 3's message in R1, right before leaving R1; n2 does not.
    let n1 = &mut b.trace.incarnations[0].records;
    let at = n1
        .iter()
        .position(|r| matches!(&r.kind, RecordKind::Config(c) if c.ring_id == R2))
        .unwrap();
    n1.insert(at, record);
    only(&b.trace, "virtual-synchrony");
}

/// (c) Self-delivery: a live incarnation never delivers its own message.
#[test]
fn self_delivery_catches_a_lost_own_message() {
    let mut b = clean();
    b.submit(2, id(2, 0, 1), Agreed);
    let found = check_all(&b.trace);
    assert!(
        found.iter().any(|v| v.checker == "self-delivery"),
        "{found:#?}"
    );
    // Its crash excuses it.
    let mut b = clean();
    b.trace.incarnations[1].records.retain(
        |r| !matches!(&r.kind, RecordKind::Delivered { id: Some(m), .. } if *m == id(2, 0, 0)),
    );
    b.trace.incarnations[0].records.retain(
        |r| !matches!(&r.kind, RecordKind::Delivered { id: Some(m), .. } if *m == id(2, 0, 0)),
    );
    b.trace.incarnations[2].records.retain(
        |r| !matches!(&r.kind, RecordKind::Delivered { id: Some(m), .. } if *m == id(2, 0, 0)),
    );
    only(&b.trace, "self-delivery");
    b.crash(2, 0);
    assert!(!names(&b.trace).contains(&"self-delivery"));
}

/// (d) Per-sender FIFO: node 1's counter 1 delivered before its counter 0.
#[test]
fn sender_fifo_catches_reordering_of_one_sender() {
    let mut b = Builder::new(1);
    b.config((1, 0), Transitional, R1, &[1], &[], &[]);
    b.config((1, 0), Regular, R1, &[1], &[], &[]);
    b.submit(1, id(1, 0, 0), Agreed);
    b.submit(1, id(1, 0, 1), Agreed);
    b.deliver((1, 0), id(1, 0, 1), Agreed, R1);
    b.deliver((1, 0), id(1, 0, 0), Agreed, R1);
    only(&b.trace, "sender-fifo");
    // A gap is fine.
    let mut b = Builder::new(1);
    b.config((1, 0), Transitional, R1, &[1], &[], &[]);
    b.config((1, 0), Regular, R1, &[1], &[], &[]);
    b.submit(1, id(1, 0, 0), Agreed);
    b.submit(1, id(1, 0, 5), Agreed);
    b.deliver((1, 0), id(1, 0, 0), Agreed, R1);
    b.deliver((1, 0), id(1, 0, 5), Agreed, R1);
    assert_eq!(names(&b.trace), Vec::<&str>::new());
}

/// (e) No duplicates.
#[test]
fn no_duplicates_catches_a_second_delivery() {
    let mut b = clean();
    b.deliver((2, 0), id(1, 0, 1), Agreed, R2);
    let found = names(&b.trace);
    assert!(found.contains(&"no-duplicates"), "{found:?}");
}

/// (f) Integrity: a message nobody sent, a corrupted one, a wrong sender.
#[test]
fn integrity_catches_phantoms_and_corruption() {
    let mut b = clean();
    b.deliver((1, 0), id(2, 0, 99), Agreed, ring(1, 12));
    assert!(names(&b.trace).contains(&"integrity"));

    let mut b = clean();
    let r = first_delivery(&b.trace.incarnations[1].records);
    if let RecordKind::Delivered { integrity, .. } = &mut b.trace.incarnations[1].records[r].kind {
        *integrity = Integrity::BadChecksum;
    }
    only(&b.trace, "integrity");

    let mut b = clean();
    if let RecordKind::Delivered { sender, .. } = &mut b.trace.incarnations[1].records[r].kind {
        *sender = 3;
    }
    only(&b.trace, "integrity");

    let mut b = clean();
    b.push(
        1,
        0,
        RecordKind::Delivered {
            id: None,
            sender: 2,
            ring_id: ring(1, 12),
            guarantee: Agreed,
            len: 3,
            checksum: 0,
            integrity: Integrity::Unparseable,
        },
    );
    only(&b.trace, "integrity");
}

/// (g) SAFE: n1 delivers a SAFE message in R2 = {1,2}, n2 installs the next ring
/// without having delivered it.
#[test]
fn safe_delivery_catches_a_member_that_never_got_it() {
    let mut b = Builder::new(2);
    for n in 1..=2 {
        b.config((n, 0), Transitional, R1, &[n], &[], &[]);
        b.config((n, 0), Regular, R1, &[1, 2], &[], &[3 - n]);
    }
    b.submit(1, id(1, 0, 0), Safe);
    b.deliver((1, 0), id(1, 0, 0), Safe, R1);
    let next = ring(1, 20);
    for n in 1..=2 {
        b.config((n, 0), Transitional, next, &[n], &[3 - n], &[]);
        b.config((n, 0), Regular, next, &[1, 2], &[], &[3 - n]);
    }
    let found = names(&b.trace);
    assert!(found.contains(&"safe-delivery"), "{found:?}");
    // Delivered by n2 in the transitional configuration: fine for SAFE (but the
    // transitional configurations differ, so EVS has nothing to compare).
    let mut b = Builder::new(2);
    for n in 1..=2 {
        b.config((n, 0), Transitional, R1, &[n], &[], &[]);
        b.config((n, 0), Regular, R1, &[1, 2], &[], &[3 - n]);
    }
    b.submit(1, id(1, 0, 0), Safe);
    b.deliver((1, 0), id(1, 0, 0), Safe, R1);
    b.config((2, 0), Transitional, next, &[2], &[1], &[]);
    b.deliver((2, 0), id(1, 0, 0), Safe, R1);
    b.config((2, 0), Regular, next, &[1, 2], &[], &[1]);
    b.config((1, 0), Transitional, next, &[1], &[2], &[]);
    b.config((1, 0), Regular, next, &[1, 2], &[], &[2]);
    assert_eq!(
        names(&b.trace),
        Vec::<&str>::new(),
        "{:#?}",
        check_all(&b.trace)
    );
    // A member that crashed before the next ring is excused.
    let mut b = Builder::new(2);
    for n in 1..=2 {
        b.config((n, 0), Transitional, R1, &[n], &[], &[]);
        b.config((n, 0), Regular, R1, &[1, 2], &[], &[3 - n]);
    }
    b.submit(1, id(1, 0, 0), Safe);
    b.deliver((1, 0), id(1, 0, 0), Safe, R1);
    b.crash(2, 0);
    b.trace.outcome.final_heal = None;
    assert_eq!(names(&b.trace), Vec::<&str>::new());
}

/// (h) Configuration agreement: the same ring id with different members; a node
/// outside its own configuration; a transitional member from elsewhere.
#[test]
fn configuration_agreement_catches_disagreement() {
    let mut b = clean();
    if let RecordKind::Config(c) = &mut b.trace.incarnations[2].records[1].kind {
        c.members = vec![1, 3];
        c.joined = vec![1];
    }
    let found = check_all(&b.trace);
    assert!(
        found
            .iter()
            .any(|v| v.checker == "configuration" && v.message.contains("installed with")),
        "{found:#?}"
    );

    let mut b = Builder::new(2);
    b.config((1, 0), Transitional, R1, &[1], &[], &[]);
    b.config((1, 0), Regular, R1, &[1, 2], &[], &[2]);
    b.config((1, 0), Transitional, R2, &[1, 3], &[2], &[]);
    b.config((1, 0), Regular, R2, &[1, 3], &[], &[]);
    b.trace.outcome.final_heal = None;
    assert_eq!(names(&b.trace), vec!["configuration"]);

    let mut b = Builder::new(2);
    b.config((2, 0), Transitional, R1, &[1], &[], &[]);
    b.trace.outcome.final_heal = None;
    assert_eq!(names(&b.trace), vec!["configuration"]);
}

/// (i) Liveness: never quiescent; a live node left out of the final ring; a message of
/// the final configuration not delivered everywhere.
#[test]
fn liveness_catches_a_cluster_that_never_settles() {
    let mut b = clean();
    b.trace.outcome.quiescent_at = None;
    only(&b.trace, "liveness");

    let mut b = clean();
    let n3 = b.trace.incarnations.len() - 1;
    b.trace.incarnations[n3].records.truncate(0);
    b.config((3, 1), Transitional, ring(3, 13), &[3], &[], &[]);
    b.config((3, 1), Regular, ring(3, 13), &[3], &[], &[]);
    only(&b.trace, "liveness");

    let mut b = clean();
    b.submit(2, id(2, 0, 1), Agreed);
    b.deliver((2, 0), id(2, 0, 1), Agreed, ring(1, 12));
    b.deliver((1, 0), id(2, 0, 1), Agreed, ring(1, 12));
    only(&b.trace, "liveness");
    // Delivered by node 3's live incarnation too: fine.
    b.deliver((3, 1), id(2, 0, 1), Agreed, ring(1, 12));
    assert_eq!(names(&b.trace), Vec::<&str>::new());

    // An aborted run is not judged for liveness.
    let mut b = clean();
    b.trace.outcome.quiescent_at = None;
    b.trace.outcome.aborted = true;
    assert_eq!(names(&b.trace), Vec::<&str>::new());
}
