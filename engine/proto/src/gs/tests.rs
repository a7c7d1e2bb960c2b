//! The GS service on an in-memory agreed order: a bus that delivers every node's
//! submissions, in one total order, to the members of the sender's ring, and forms
//! rings (configuration changes) on demand. Each test names the rule it checks
//! (section numbers of docs/group-services.md).

use super::*;
use crate::splitmix::TestRng;
use crate::totem::{Delivery, Event};

#[derive(Default)]
struct Out {
    ready: Vec<Bytes>,
    held: Vec<Bytes>,
    waiting: bool,
    refuse: bool,
    /// Keeps every submission but SYNCs back, across rings, until cleared: a message
    /// that Totem has not sent yet when configurations change.
    hold: bool,
}

impl Submit for Out {
    fn submit(&mut self, payload: Bytes, _g: Guarantee) -> Result<(), SubmitError> {
        if self.refuse {
            return Err(SubmitError::TryAgain);
        }
        if self.waiting || self.hold {
            self.held.push(payload);
        } else {
            self.ready.push(payload);
        }
        Ok(())
    }
    fn submit_sync(&mut self, payload: Bytes) -> Result<(), SubmitError> {
        self.ready.push(payload);
        Ok(())
    }
    fn sync_done(&mut self, _ring: RingId) {
        self.waiting = false;
        if !self.hold {
            self.ready.append(&mut self.held);
        }
    }
}

struct Bus {
    nodes: Vec<Option<Service>>,
    outs: Vec<Out>,
    rings: Vec<Option<(RingId, Vec<NodeId>)>>,
    events: Vec<Vec<(ClientId, GsEvent)>>,
    scripts: Vec<ScriptRun>,
    now: Instant,
    ring_seq: u64,
}

fn name(s: &str) -> GroupName {
    GroupName::new(s.as_bytes()).unwrap()
}

fn pid(node: NodeId, instance: u16) -> ProviderId {
    ProviderId { node, instance }
}

fn n_phase() -> GroupAttributes {
    GroupAttributes {
        join_phases: Phases::N,
        failure_phases: Phases::N,
        ..GroupAttributes::default()
    }
}

impl Bus {
    /// `n` nodes, all in one ring, synced.
    fn new(n: usize) -> Bus {
        let mut bus = Bus {
            nodes: (1..=n)
                .map(|i| Some(Service::new(i as NodeId, Limits::default())))
                .collect(),
            outs: (0..n).map(|_| Out::default()).collect(),
            rings: vec![None; n],
            events: vec![Vec::new(); n],
            scripts: Vec::new(),
            now: Instant::ZERO,
            ring_seq: 0,
        };
        for s in bus.nodes.iter_mut().flatten() {
            s.set_recording(true);
        }
        let all: Vec<NodeId> = (1..=n as NodeId).collect();
        bus.ring(&all);
        bus
    }

    fn svc(&mut self, node: NodeId) -> (&mut Service, &mut Out) {
        let i = node as usize - 1;
        (self.nodes[i].as_mut().expect("alive"), &mut self.outs[i])
    }

    /// A new ring of `members` (a partition side, a merge, a restart).
    fn ring(&mut self, members: &[NodeId]) {
        self.ring_seq += 4;
        let ring_id = RingId {
            rep: members[0],
            seq: self.ring_seq,
        };
        for &m in members {
            let i = m as usize - 1;
            let old = self.rings[i].take();
            let transitional: Vec<NodeId> = match &old {
                Some((_, old_members)) => old_members
                    .iter()
                    .copied()
                    .filter(|n| members.contains(n))
                    .collect(),
                None => vec![m],
            };
            self.rings[i] = Some((ring_id, members.to_vec()));
            self.outs[i].waiting = true;
            let now = self.now;
            let (svc, out) = self.svc(m);
            if old.is_some() {
                svc.handle_totem_event(
                    now,
                    Event::Configuration(ConfigurationChange {
                        kind: ConfigurationKind::Transitional,
                        ring_id,
                        members: transitional,
                        left: Vec::new(),
                        joined: Vec::new(),
                    }),
                    out,
                );
            }
            svc.handle_totem_event(
                now,
                Event::Configuration(ConfigurationChange {
                    kind: ConfigurationKind::Regular,
                    ring_id,
                    members: members.to_vec(),
                    left: Vec::new(),
                    joined: Vec::new(),
                }),
                out,
            );
        }
        self.run();
    }

    /// A node crashes and comes back empty (not in any ring until `ring`).
    fn restart(&mut self, node: NodeId) {
        let i = node as usize - 1;
        let mut s = Service::new(node, Limits::default());
        s.set_recording(true);
        self.nodes[i] = Some(s);
        self.outs[i] = Out::default();
        self.rings[i] = None;
    }

    /// Delivers everything submitted, in one order per ring, until nothing is left.
    fn run(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                let msgs = std::mem::take(&mut self.outs[i].ready);
                let Some((ring_id, members)) = self.rings[i].clone() else {
                    continue;
                };
                for payload in msgs {
                    any = true;
                    for &m in &members {
                        let j = m as usize - 1;
                        if self.rings[j].as_ref().map(|r| r.0) != Some(ring_id) {
                            continue;
                        }
                        let d = Delivery {
                            sender: i as NodeId + 1,
                            ring_id,
                            guarantee: Guarantee::Agreed,
                            payload: payload.clone(),
                        };
                        let now = self.now;
                        let (svc, out) = self.svc(m);
                        svc.handle_totem_event(now, Event::Deliver(d), out);
                    }
                }
            }
            self.collect();
            if !any {
                return;
            }
        }
    }

    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(s) = self.nodes[i].as_mut() else {
                continue;
            };
            while let Some(e) = s.poll_event() {
                self.events[i].push(e);
            }
            while let Some(r) = s.poll_script() {
                self.scripts.push(r);
            }
            while s.poll_record().is_some() {}
        }
    }

    /// Takes the events of `client` on `node`.
    fn take(&mut self, node: NodeId, client: ClientId) -> Vec<GsEvent> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.events[node as usize - 1])
            .into_iter()
            .partition(|(c, _)| *c == client);
        self.events[node as usize - 1] = rest;
        mine.into_iter().map(|(_, e)| e).collect()
    }

    fn join(
        &mut self,
        node: NodeId,
        client: ClientId,
        group: &str,
        instance: u16,
        attrs: GroupAttributes,
    ) {
        let (s, o) = self.svc(node);
        let _ = s.connect(client, Some(format!("/bin/deactivate-{client}")));
        s.join(client, &name(group), instance, attrs, o)
            .expect("join sent");
        self.run();
    }

    fn propose(
        &mut self,
        node: NodeId,
        client: ClientId,
        group: &str,
        body: ProposalBody,
        phases: Phases,
        limit: u32,
    ) -> Result<(), GsError> {
        let (s, o) = self.svc(node);
        let r = s.propose(
            client,
            &name(group),
            Proposal {
                body,
                phases,
                time_limit_ms: limit,
            },
            o,
        );
        self.run();
        r
    }

    fn vote(
        &mut self,
        node: NodeId,
        client: ClientId,
        group: &str,
        seq: u64,
        phase: u32,
        vote: Vote,
    ) -> Result<(), GsError> {
        let (s, o) = self.svc(node);
        let r = s.vote(client, &name(group), seq, phase, vote, o);
        self.run();
        r
    }

    fn digests_agree(&self, nodes: &[NodeId]) {
        let d: Vec<u64> = nodes
            .iter()
            .map(|n| self.nodes[*n as usize - 1].as_ref().unwrap().digest())
            .collect();
        assert!(d.windows(2).all(|w| w[0] == w[1]), "tables differ: {d:?}");
    }

    fn providers(&self, node: NodeId, group: &str) -> Vec<ProviderId> {
        self.nodes[node as usize - 1]
            .as_ref()
            .unwrap()
            .providers(&name(group))
    }
}

fn nphase_of(events: &[GsEvent]) -> Vec<(u64, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            GsEvent::NPhase { seq, phase, .. } => Some((*seq, *phase)),
            _ => None,
        })
        .collect()
}

/// §2.2, §4.7: a one-phase join creates the group; the joiner gets the approval;
/// every node has the same table; subscribers see the later join.
#[test]
fn one_phase_joins_build_the_same_group_everywhere() {
    let mut bus = Bus::new(3);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    assert!(matches!(
        &bus.take(1, 10)[..],
        [GsEvent::Approved { seq: 1, .. }]
    ));
    let (s, _) = bus.svc(2);
    s.connect(20, None).unwrap();
    s.subscribe(
        20,
        &name("g"),
        SubscribeFlags {
            membership: true,
            state: true,
        },
    )
    .unwrap();
    bus.join(3, 30, "g", 7, GroupAttributes::default());
    let ev = bus.take(2, 20);
    assert!(
        matches!(&ev[..], [GsEvent::Subscription { seq: 2, members, changing, kind, .. }]
            if members == &[pid(1, 1), pid(3, 7)] && changing == &[(pid(3, 7), Change::Joins)] && kind.membership && !kind.state),
        "{ev:?}"
    );
    // The existing provider is told too.
    assert!(matches!(
        &bus.take(1, 10)[..],
        [GsEvent::Approved { seq: 2, .. }]
    ));
    bus.digests_agree(&[1, 2, 3]);
    assert_eq!(bus.providers(2, "g"), vec![pid(1, 1), pid(3, 7)]);
}

/// §2.2: differing attributes and a used instance number are delayed errors.
#[test]
fn joins_with_other_attributes_or_a_used_instance_fail_later() {
    let mut bus = Bus::new(2);
    // Both joins are sent before either is ordered: the second finds other attributes.
    let (s, o) = bus.svc(1);
    s.connect(10, None).unwrap();
    s.join(10, &name("g"), 1, GroupAttributes::default(), o)
        .unwrap();
    let (s, o) = bus.svc(2);
    s.connect(20, None).unwrap();
    s.join(20, &name("g"), 1, n_phase(), o).unwrap();
    bus.run();
    assert!(matches!(
        &bus.take(2, 20)[..],
        [GsEvent::DelayedError {
            error: GsError::BadGroupAttributes,
            ..
        }]
    ));
    // Node 2 knows the attributes now: refused at once.
    let (s, o) = bus.svc(2);
    assert_eq!(
        s.join(20, &name("g"), 1, n_phase(), o),
        Err(GsError::BadGroupAttributes)
    );
    // Same instance number on another node is fine; on the same node it is not.
    bus.join(2, 20, "g", 1, GroupAttributes::default());
    assert!(matches!(&bus.take(2, 20)[..], [GsEvent::Approved { .. }]));
    let (s, o) = bus.svc(1);
    s.connect(11, None).unwrap();
    assert_eq!(
        s.join(11, &name("g"), 1, GroupAttributes::default(), o),
        Err(GsError::DuplicateInstanceNumber)
    );
}

/// §4.4: CONTINUE runs another phase; a vote's message comes with the next
/// notification; a vote's state value replaces the proposal's; all APPROVE approves.
#[test]
fn n_phase_state_change_runs_phases_and_carries_messages_and_state() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    bus.take(1, 10);
    bus.take(2, 20);
    let (s, _) = bus.svc(2);
    s.connect(21, None).unwrap();
    s.subscribe(
        21,
        &name("g"),
        SubscribeFlags {
            membership: false,
            state: true,
        },
    )
    .unwrap();
    bus.propose(
        1,
        10,
        "g",
        ProposalBody::ChangeState {
            state: Bytes::from_static(b"v1"),
        },
        Phases::N,
        0,
    )
    .unwrap();
    assert_eq!(nphase_of(&bus.take(1, 10)), vec![(3, 1)]);
    assert_eq!(nphase_of(&bus.take(2, 20)), vec![(3, 1)]);
    let cont = Vote {
        value: VoteValue::Continue,
        state: Some(Bytes::from_static(b"v2")),
        message: Some(Bytes::from_static(b"hello")),
        default: None,
    };
    bus.vote(1, 10, "g", 3, 1, cont).unwrap();
    assert!(bus.take(1, 10).is_empty(), "phase 1 waits for every voter");
    // A second vote in the same phase is refused at once.
    let (s, o) = bus.svc(1);
    assert_eq!(
        s.vote(10, &name("g"), 3, 1, Vote::plain(VoteValue::Approve), o),
        Err(GsError::VoteNotExpected)
    );
    bus.vote(2, 20, "g", 3, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    let ev = bus.take(2, 20);
    let [GsEvent::NPhase { phase: 2, info, .. }] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        info.vote_messages,
        vec![(pid(1, 1), Bytes::from_static(b"hello"))]
    );
    assert_eq!(info.proposed_state, Some(Bytes::from_static(b"v2")));
    assert!(
        bus.take(2, 21).is_empty(),
        "subscribers see nothing before approval"
    );
    bus.vote(1, 10, "g", 3, 2, Vote::plain(VoteValue::Approve))
        .unwrap();
    bus.vote(2, 20, "g", 3, 2, Vote::plain(VoteValue::Approve))
        .unwrap();
    assert!(matches!(
        &bus.take(1, 10)[..],
        [_, GsEvent::Approved { phases_run: 2, .. }]
    ));
    let ev = bus.take(2, 21);
    assert!(
        matches!(&ev[..], [GsEvent::Subscription { seq: 3, state: Some(s), .. }] if &s[..] == b"v2"),
        "{ev:?}"
    );
    bus.digests_agree(&[1, 2]);
}

/// §2.3, §4.4, §4.8: a leave rejected by vote changes nothing and subscribers never
/// see it.
#[test]
fn a_leave_rejected_by_vote_keeps_the_provider_and_is_invisible_to_subscribers() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    let (s, _) = bus.svc(1);
    s.connect(11, None).unwrap();
    s.subscribe(
        11,
        &name("g"),
        SubscribeFlags {
            membership: true,
            state: true,
        },
    )
    .unwrap();
    bus.take(1, 10);
    bus.take(2, 20);
    bus.propose(2, 20, "g", ProposalBody::Leave { code: 7 }, Phases::N, 0)
        .unwrap();
    bus.vote(2, 20, "g", 3, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    bus.vote(1, 10, "g", 3, 1, Vote::plain(VoteValue::Reject))
        .unwrap();
    assert!(matches!(
        bus.take(2, 20).last(),
        Some(GsEvent::Rejected {
            reason: RejectReason::Vote,
            ..
        })
    ));
    assert!(bus.take(1, 11).is_empty());
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1), pid(2, 2)]);
    // Approved this time: the leaver's last notification, with its code.
    bus.propose(2, 20, "g", ProposalBody::Leave { code: 7 }, Phases::One, 0)
        .unwrap();
    let ev = bus.take(2, 20);
    assert!(
        matches!(&ev[..], [GsEvent::Approved { info, .. }] if info.changing == vec![(pid(2, 2), Change::Leaves(LeaveReason::Left { code: 7 }))])
    );
    let (s, o) = bus.svc(2);
    assert_eq!(
        s.propose(
            20,
            &name("g"),
            Proposal {
                body: ProposalBody::Leave { code: 1 },
                phases: Phases::One,
                time_limit_ms: 0
            },
            o
        ),
        Err(GsError::BadMemberToken)
    );
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1)]);
    assert_eq!(bus.take(1, 11).len(), 1);
}

/// §4.3: one protocol at a time; a proposal ordered while one runs collides later; a
/// proposal on a node that sees the group busy collides at once.
#[test]
fn proposals_collide_while_a_protocol_runs() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    bus.take(1, 10);
    bus.take(2, 20);
    // Both sent before either is delivered.
    let msg = |d: &'static [u8]| Proposal {
        body: ProposalBody::Message {
            data: Bytes::from_static(d),
        },
        phases: Phases::N,
        time_limit_ms: 0,
    };
    let (s, o) = bus.svc(1);
    s.propose(10, &name("g"), msg(b"a"), o).unwrap();
    let (s, o) = bus.svc(2);
    s.propose(20, &name("g"), msg(b"b"), o).unwrap();
    bus.run();
    let ev = bus.take(2, 20);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            GsEvent::DelayedError {
                error: GsError::Collide,
                request: RequestKind::Propose(ProtocolKind::Message),
                ..
            }
        )),
        "{ev:?}"
    );
    let (s, o) = bus.svc(2);
    assert_eq!(
        s.propose(20, &name("g"), msg(b"c"), o),
        Err(GsError::Collide)
    );
}

/// §2.4, §4.5: a goodbye during phase 2 of a 3-phase protocol: the caller is out at
/// once, its default vote stands in, then a failure leave says `SaidGoodbye`.
#[test]
fn goodbye_during_phase_two_applies_the_default_vote_then_a_failure_leave() {
    let mut bus = Bus::new(3);
    for n in 1..=3 {
        bus.join(n, 10 * u64::from(n), "g", n as u16, n_phase());
        let clients: Vec<u64> = (1..=n).map(|k| 10 * u64::from(k)).collect();
        for m in 1..=n {
            for (seq, phase) in nphase_of(&bus.take(m, clients[m as usize - 1])) {
                bus.vote(
                    m,
                    10 * u64::from(m),
                    "g",
                    seq,
                    phase,
                    Vote::plain(VoteValue::Approve),
                )
                .unwrap();
            }
        }
    }
    for n in 1..=3 {
        bus.take(n, 10 * u64::from(n));
    }
    assert_eq!(bus.providers(1, "g").len(), 3);
    bus.propose(
        1,
        10,
        "g",
        ProposalBody::Message {
            data: Bytes::from_static(b"m"),
        },
        Phases::N,
        0,
    )
    .unwrap();
    let seq = nphase_of(&bus.take(1, 10))[0].0;
    bus.take(2, 20);
    bus.take(3, 30);
    for n in 1..=3 {
        bus.vote(
            n,
            10 * u64::from(n),
            "g",
            seq,
            1,
            Vote::plain(VoteValue::Continue),
        )
        .unwrap();
    }
    for n in 1..=3 {
        assert_eq!(nphase_of(&bus.take(n, 10 * u64::from(n))), vec![(seq, 2)]);
    }
    let (s, o) = bus.svc(2);
    s.goodbye(20, &name("g"), o).unwrap();
    assert_eq!(
        s.vote(20, &name("g"), seq, 2, Vote::plain(VoteValue::Approve), o),
        Err(GsError::BadMemberToken)
    );
    bus.run();
    bus.vote(1, 10, "g", seq, 2, Vote::plain(VoteValue::Continue))
        .unwrap();
    bus.vote(3, 30, "g", seq, 2, Vote::plain(VoteValue::Continue))
        .unwrap();
    let ev = bus.take(3, 30);
    let [
        GsEvent::NPhase {
            phase: 3, summary, ..
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert!(summary & summary::PROVIDER_FAILED != 0);
    bus.vote(1, 10, "g", seq, 3, Vote::plain(VoteValue::Approve))
        .unwrap();
    bus.vote(3, 30, "g", seq, 3, Vote::plain(VoteValue::Approve))
        .unwrap();
    let ev = bus.take(3, 30);
    assert!(matches!(&ev[0], GsEvent::Approved { phases_run: 3, .. }));
    // Then the failure leave (n-phase by the attributes).
    let GsEvent::NPhase {
        seq: fseq, info, ..
    } = &ev[1]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(info.kind, ProtocolKind::FailureLeave);
    assert_eq!(
        info.changing,
        vec![(pid(2, 2), Change::Leaves(LeaveReason::SaidGoodbye))]
    );
    let fseq = *fseq;
    bus.vote(1, 10, "g", fseq, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    bus.vote(3, 30, "g", fseq, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1), pid(3, 3)]);
    assert!(bus.take(2, 20).is_empty(), "no event after goodbye");
    bus.digests_agree(&[1, 2, 3]);
}

/// §4.5: a provider whose process dies in a protocol with default REJECT rejects it
/// (reason: the failure), then a failure leave with `ProcessFailed` runs.
#[test]
fn process_death_with_default_reject_rejects_then_fails_the_provider() {
    let mut bus = Bus::new(2);
    let attrs = GroupAttributes {
        default_vote: DefaultVote::Reject,
        ..GroupAttributes::default()
    };
    bus.join(1, 10, "g", 1, attrs);
    bus.join(2, 20, "g", 2, attrs);
    bus.take(1, 10);
    bus.propose(
        1,
        10,
        "g",
        ProposalBody::ChangeState {
            state: Bytes::from_static(b"x"),
        },
        Phases::N,
        0,
    )
    .unwrap();
    let (s, o) = bus.svc(2);
    s.disconnect(20, o);
    bus.run();
    bus.vote(1, 10, "g", 3, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    let ev = bus.take(1, 10);
    assert!(
        matches!(
            ev.get(1),
            Some(GsEvent::Rejected {
                reason: RejectReason::ProviderFailed,
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(
        matches!(ev.get(2), Some(GsEvent::Approved { info, .. }) if info.kind == ProtocolKind::FailureLeave
        && info.changing == vec![(pid(2, 2), Change::Leaves(LeaveReason::ProcessFailed))]),
        "{ev:?}"
    );
    assert_eq!(bus.providers(2, "g"), vec![pid(1, 1)]);
}

/// §1.5, §4.3: pending joins wait for the running protocol and are batched into one
/// join protocol when the attributes allow it, else run one by one.
#[test]
fn pending_joins_are_batched_or_serial_as_the_attributes_say() {
    for batch in [true, false] {
        let mut bus = Bus::new(3);
        let attrs = GroupAttributes {
            batch_joins: batch,
            ..GroupAttributes::default()
        };
        bus.join(1, 10, "g", 1, attrs);
        bus.propose(
            1,
            10,
            "g",
            ProposalBody::Message { data: Bytes::new() },
            Phases::N,
            0,
        )
        .unwrap();
        bus.join(2, 20, "g", 2, attrs);
        bus.join(3, 30, "g", 3, attrs);
        let seq = nphase_of(&bus.take(1, 10))[0].0;
        bus.vote(1, 10, "g", seq, 1, Vote::plain(VoteValue::Approve))
            .unwrap();
        let joins: Vec<Vec<(ProviderId, Change)>> = bus
            .take(1, 10)
            .into_iter()
            .filter_map(|e| match e {
                GsEvent::Approved { info, .. } if info.kind == ProtocolKind::Join => {
                    Some(info.changing)
                }
                _ => None,
            })
            .collect();
        if batch {
            assert_eq!(
                joins,
                vec![vec![(pid(2, 2), Change::Joins), (pid(3, 3), Change::Joins)]]
            );
        } else {
            assert_eq!(
                joins,
                vec![
                    vec![(pid(2, 2), Change::Joins)],
                    vec![(pid(3, 3), Change::Joins)]
                ]
            );
        }
        bus.digests_agree(&[1, 2, 3]);
    }
}

/// §4.6, §6.4: only the coordinator (oldest provider's node) times a phase out; the
/// late provider gets its default vote and is named in an announcement; its late vote
/// is refused.
#[test]
fn a_late_voter_gets_the_default_vote_and_an_announcement() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    bus.take(1, 10);
    bus.take(2, 20);
    bus.propose(
        2,
        20,
        "g",
        ProposalBody::Message { data: Bytes::new() },
        Phases::N,
        500,
    )
    .unwrap();
    let seq = nphase_of(&bus.take(2, 20))[0].0;
    assert!(
        bus.svc(2).0.poll_timeout().is_none(),
        "node 2 does not coordinate"
    );
    let at = bus.svc(1).0.poll_timeout().expect("node 1 coordinates");
    assert_eq!(at, Instant::ZERO + std::time::Duration::from_millis(500));
    bus.vote(1, 10, "g", seq, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    bus.now = at;
    let (s, o) = bus.svc(1);
    s.handle_timeout(at, o);
    bus.run();
    let ev = bus.take(2, 20);
    assert!(ev.iter().any(|e| matches!(e, GsEvent::Announcement { kind: AnnouncementKind::VoteTimeout, providers, .. } if providers == &[pid(2, 2)])), "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(e, GsEvent::Approved { .. })),
        "default approve: {ev:?}"
    );
    // The vote comes too late: refused at once now.
    let (s, o) = bus.svc(2);
    assert_eq!(
        s.vote(20, &name("g"), seq, 1, Vote::plain(VoteValue::Approve), o),
        Err(GsError::VoteNotExpected)
    );
}

/// §2.5, §6.5: an expel runs the target's deactivate script on its node; a failed
/// script is announced; the target leaves with `Expelled`.
#[test]
fn expel_runs_the_deactivate_script_and_announces_its_failure() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    bus.take(1, 10);
    bus.take(2, 20);
    let body = ProposalBody::Expel {
        targets: vec![pid(2, 2)],
        deactivate_phase: 1,
        flag: Bytes::from_static(b"now"),
    };
    bus.propose(1, 10, "g", body, Phases::N, 2000).unwrap();
    let run = bus.scripts.pop().expect("a script to run");
    assert_eq!(
        (run.provider, run.client, run.time_limit_ms, &run.script[..]),
        (pid(2, 2), 20, 2000, "/bin/deactivate-20")
    );
    assert!(
        nphase_of(&bus.take(2, 20)).is_empty(),
        "the target does not vote"
    );
    let (s, o) = bus.svc(2);
    s.script_done(&run, false, o);
    bus.run();
    let ev = bus.take(1, 10);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            GsEvent::Announcement {
                kind: AnnouncementKind::ScriptFailed,
                ..
            }
        )),
        "{ev:?}"
    );
    let seq = nphase_of(&ev)[0].0;
    bus.vote(1, 10, "g", seq, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    let ev = bus.take(2, 20);
    assert!(
        matches!(ev.last(), Some(GsEvent::Approved { info, .. }) if info.changing == vec![(pid(2, 2), Change::Leaves(LeaveReason::Expelled))]),
        "{ev:?}"
    );
    assert_eq!(bus.providers(2, "g"), vec![pid(1, 1)]);
}

/// §6.3, §6.6: a node failure fails its providers (`NodeFailed`); a restarted node
/// gets the whole table by state transfer.
#[test]
fn node_failure_and_state_transfer_to_a_new_node() {
    let mut bus = Bus::new(3);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(3, 30, "g", 3, GroupAttributes::default());
    bus.propose(
        1,
        10,
        "g",
        ProposalBody::ChangeState {
            state: Bytes::from_static(b"s"),
        },
        Phases::One,
        0,
    )
    .unwrap();
    bus.take(1, 10);
    bus.restart(3);
    bus.ring(&[1, 2]);
    let ev = bus.take(1, 10);
    assert!(
        matches!(&ev[..], [GsEvent::Approved { info, .. }] if info.changing == vec![(pid(3, 3), Change::Leaves(LeaveReason::NodeFailed))]),
        "{ev:?}"
    );
    bus.ring(&[1, 2, 3]);
    bus.digests_agree(&[1, 2, 3]);
    assert_eq!(bus.providers(3, "g"), vec![pid(1, 1)]);
    assert_eq!(
        bus.nodes[2].as_ref().unwrap().groups()[0].state,
        Bytes::from_static(b"s")
    );
}

/// §6.6: a group that lived on both sides of a partition: on merge the instance with
/// more providers stays; the other's providers get a merge notification.
#[test]
fn merge_casts_out_the_smaller_instance() {
    let mut bus = Bus::new(3);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(3, 30, "g", 3, GroupAttributes::default());
    bus.ring(&[1, 2]);
    bus.ring(&[3]);
    bus.take(1, 10);
    bus.take(3, 30);
    // Both sides lost the other's provider; node 2 joins on side A: 2 providers there.
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1), pid(2, 2)]);
    assert_eq!(bus.providers(3, "g"), vec![pid(3, 3)]);
    let (s, _) = bus.svc(3);
    s.connect(31, None).unwrap();
    s.subscribe(
        31,
        &name("g"),
        SubscribeFlags {
            membership: true,
            state: false,
        },
    )
    .unwrap();
    bus.ring(&[1, 2, 3]);
    let ev = bus.take(3, 30);
    assert!(
        matches!(&ev[..], [GsEvent::Merge { provider, .. }] if *provider == pid(3, 3)),
        "{ev:?}"
    );
    let ev = bus.take(3, 31);
    assert!(
        matches!(&ev[..], [GsEvent::Subscription { members, changing, .. }]
        if members == &[pid(1, 1), pid(2, 2)] && changing == &[(pid(3, 3), Change::Leaves(LeaveReason::CastOut))]),
        "{ev:?}"
    );
    bus.digests_agree(&[1, 2, 3]);
    assert_eq!(bus.providers(3, "g"), vec![pid(1, 1), pid(2, 2)]);
    // The cast-out client may join again.
    bus.join(3, 30, "g", 3, GroupAttributes::default());
    assert_eq!(bus.providers(1, "g").len(), 3);
}

/// §4.8, §3.6: the last provider going dissolves the group; subscribers are told.
#[test]
fn the_last_leave_dissolves_the_group() {
    let mut bus = Bus::new(1);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    let (s, _) = bus.svc(1);
    s.connect(11, None).unwrap();
    s.subscribe(
        11,
        &name("g"),
        SubscribeFlags {
            membership: true,
            state: true,
        },
    )
    .unwrap();
    bus.propose(1, 10, "g", ProposalBody::Leave { code: 0 }, Phases::One, 0)
        .unwrap();
    let ev = bus.take(1, 11);
    assert!(
        matches!(ev.last(), Some(GsEvent::Subscription { kind, .. }) if kind.dissolved),
        "{ev:?}"
    );
    assert!(bus.svc(1).0.groups().is_empty());
    let (s, _) = bus.svc(1);
    s.subscribe(
        11,
        &name("g"),
        SubscribeFlags {
            membership: true,
            state: true,
        },
    )
    .unwrap();
    bus.collect();
    let ev = bus.take(1, 11);
    assert!(
        matches!(
            &ev[..],
            [GsEvent::DelayedError {
                error: GsError::UnknownGroup,
                ..
            }]
        ),
        "{ev:?}"
    );
}

/// Owed messages (goodbye, client down) are never lost when Totem refuses them.
#[test]
fn owed_messages_wait_for_room() {
    let mut bus = Bus::new(2);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    let (s, o) = bus.svc(2);
    o.refuse = true;
    s.disconnect(20, o);
    assert_eq!(s.owed_submissions(), 1);
    o.refuse = false;
    s.poll(o);
    bus.run();
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1)]);
}

fn samples() -> Vec<Bytes> {
    let g = name("group");
    let attrs = n_phase();
    let mut table = BTreeMap::new();
    let mut grp = Group::new(attrs);
    let mut notes = Vec::new();
    grp.on_join(
        Entry {
            id: pid(1, 1),
            client: 5,
            failed: None,
        },
        &mut notes,
    );
    grp.on_join(
        Entry {
            id: pid(2, 1),
            client: 6,
            failed: None,
        },
        &mut notes,
    );
    table.insert(g.clone(), grp);
    vec![
        codec::encode(&Message::Join {
            group: g.clone(),
            client: 1,
            instance: 2,
            attrs,
        }),
        codec::encode(&Message::Propose {
            group: g.clone(),
            client: 1,
            instance: 2,
            proposal: Proposal {
                body: ProposalBody::Expel {
                    targets: vec![pid(3, 4)],
                    deactivate_phase: 2,
                    flag: Bytes::from_static(b"f"),
                },
                phases: Phases::N,
                time_limit_ms: 9,
            },
        }),
        codec::encode(&Message::Vote {
            group: g.clone(),
            client: 1,
            instance: 2,
            seq: 3,
            phase: 4,
            vote: Vote {
                value: VoteValue::Continue,
                state: Some(Bytes::from_static(b"s")),
                message: None,
                default: Some(DefaultVote::Reject),
            },
        }),
        codec::encode(&Message::Goodbye {
            group: g.clone(),
            client: 1,
            instance: 2,
        }),
        codec::encode(&Message::ClientDown { client: 1 }),
        codec::encode(&Message::PhaseTimeout {
            group: g.clone(),
            seq: 1,
            phase: 2,
        }),
        codec::encode(&Message::ScriptResult {
            group: g.clone(),
            client: 1,
            instance: 2,
            seq: 3,
            ok: true,
        }),
        codec::encode(&Message::Sync {
            ring_id: RingId { rep: 1, seq: 8 },
            table: SyncTable::SameAs(1),
        }),
        codec::encode(&Message::Sync {
            ring_id: RingId { rep: 1, seq: 8 },
            table: SyncTable::Full(codec::encode_table(&table)),
        }),
    ]
}

/// The codec: every message round-trips; no garbage, truncation or bit flip panics.
#[test]
fn codec_round_trips_and_survives_garbage() {
    for b in samples() {
        let m = codec::decode(&b).expect("decodes");
        assert_eq!(codec::encode(&m), b);
        if let Message::Sync {
            table: SyncTable::Full(t),
            ..
        } = &m
        {
            let table = codec::decode_table(t).expect("table decodes");
            assert_eq!(codec::encode_table(&table), *t);
        }
        for cut in 0..b.len() {
            match codec::decode(&b[..cut]) {
                // A full SYNC's table is decoded at activation.
                Ok(Message::Sync {
                    table: SyncTable::Full(t),
                    ..
                }) => assert!(codec::decode_table(&t).is_err()),
                other => assert!(other.is_err(), "{cut}: {other:?}"),
            }
        }
    }
    let mut rng = TestRng(7);
    let samples = samples();
    for _ in 0..20_000 {
        let mut b = samples[rng.below(samples.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        if let Ok(Message::Sync {
            table: SyncTable::Full(t),
            ..
        }) = codec::decode(&b)
        {
            let _ = codec::decode_table(&t);
        }
        let len = rng.below(64);
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = codec::decode(&junk);
        let _ = codec::decode_table(&junk);
    }
}

/// A malformed delivery is counted and dropped.
#[test]
fn malformed_deliveries_are_dropped() {
    let mut bus = Bus::new(1);
    let (s, o) = bus.svc(1);
    let d = Delivery {
        sender: 1,
        ring_id: RingId { rep: 1, seq: 4 },
        guarantee: Guarantee::Agreed,
        payload: Bytes::from_static(&[2, 99, 1]),
    };
    s.handle_totem_event(Instant::ZERO, Event::Deliver(d), o);
    assert_eq!(s.stats().malformed, 1);
}

/// Every provider notification's `(seq, phase)` of a client, in order; a one-phase
/// outcome counts as phase `u32::MAX` of its protocol.
fn positions(events: &[GsEvent]) -> Vec<(u64, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            GsEvent::NPhase { seq, phase, .. } => Some((*seq, *phase)),
            GsEvent::Approved { seq, .. } | GsEvent::Rejected { seq, .. } => Some((*seq, u32::MAX)),
            _ => None,
        })
        .collect()
}

/// The simulator's seed 20 (2–5 nodes) in small: a client said goodbye and joined
/// again with the same instance number before its goodbye was ordered, so the old
/// provider's phase notifications reached the new joiner and its `(seq, phase)` went
/// backwards. An instance number stays in use until the protocol that removes its
/// provider has ended (docs/group-services.md §2.12).
#[test]
fn an_instance_number_is_in_use_until_its_provider_is_gone() {
    let mut bus = Bus::new(2);
    bus.join(1, 7, "g", 4, n_phase());
    for (seq, phase) in nphase_of(&bus.take(1, 7)) {
        bus.vote(1, 7, "g", seq, phase, Vote::plain(VoteValue::Approve))
            .unwrap();
    }
    bus.join(2, 20, "g", 1, n_phase());
    for (node, client) in [(1, 7), (2, 20)] {
        for (seq, phase) in nphase_of(&bus.take(node, client)) {
            bus.vote(
                node,
                client,
                "g",
                seq,
                phase,
                Vote::plain(VoteValue::Approve),
            )
            .unwrap();
        }
    }
    bus.take(1, 7);
    bus.take(2, 20);
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 4), pid(2, 1)]);
    // Goodbye, and at once a join with the same instance: the GOODBYE travels.
    let (s, o) = bus.svc(1);
    s.goodbye(7, &name("g"), o).unwrap();
    assert_eq!(
        s.join(7, &name("g"), 4, n_phase(), o),
        Err(GsError::DuplicateInstanceNumber)
    );
    bus.run();
    // Ordered: the n-phase failure leave runs, the failed provider is still listed.
    let ev = bus.take(2, 20);
    let [
        GsEvent::NPhase {
            seq: fseq, info, ..
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(info.kind, ProtocolKind::FailureLeave);
    let fseq = *fseq;
    let (s, o) = bus.svc(1);
    assert_eq!(
        s.join(7, &name("g"), 4, n_phase(), o),
        Err(GsError::DuplicateInstanceNumber)
    );
    // Another instance number is fine, and so is this one once the provider is gone.
    bus.vote(2, 20, "g", fseq, 1, Vote::plain(VoteValue::Approve))
        .unwrap();
    assert_eq!(bus.providers(1, "g"), vec![pid(2, 1)]);
    assert!(bus.take(1, 7).is_empty(), "nothing for the old provider");
    bus.join(1, 7, "g", 4, n_phase());
    let ev = bus.take(1, 7);
    assert!(
        matches!(&ev[..], [GsEvent::NPhase { seq, phase: 1, info, .. }]
            if *seq == fseq + 1 && info.kind == ProtocolKind::Join),
        "{ev:?}"
    );
    bus.digests_agree(&[1, 2]);
}

/// The simulator's seed 16 (2–5 nodes): a provider said goodbye on the side of a
/// partition that later lost the merge, and its client joined again with the same
/// instance. Before the fix the join was sent while the goodbye travelled, the cast-out
/// took the new joiner's token for the old provider's, and the JOIN, ordered after the
/// merge, left an orphan provider that no client held: the group stalled in its next
/// n-phase protocol. Now the join waits for the goodbye's failure leave; a join still
/// travelling during the merge is not cast out and joins the winning instance.
#[test]
fn a_join_in_flight_across_a_lost_merge_joins_the_winner() {
    let mut bus = Bus::new(3);
    bus.join(1, 10, "g", 1, GroupAttributes::default());
    bus.join(1, 11, "g", 5, GroupAttributes::default());
    bus.join(2, 20, "g", 2, GroupAttributes::default());
    bus.join(3, 30, "g", 3, GroupAttributes::default());
    bus.ring(&[1]);
    bus.ring(&[2, 3]);
    for (n, c) in [(1, 10), (1, 11), (2, 20), (3, 30)] {
        bus.take(n, c);
    }
    let (s, o) = bus.svc(1);
    s.goodbye(11, &name("g"), o).unwrap();
    assert_eq!(
        s.join(11, &name("g"), 5, GroupAttributes::default(), o),
        Err(GsError::DuplicateInstanceNumber)
    );
    bus.run();
    assert_eq!(bus.providers(1, "g"), vec![pid(1, 1)]);
    bus.take(1, 10);
    // Joins again; the JOIN is still travelling when the partition heals. Side {2, 3}
    // has two live providers, side {1} one: node 1's instance loses.
    let (s, o) = bus.svc(1);
    s.join(11, &name("g"), 5, GroupAttributes::default(), o)
        .unwrap();
    bus.ring(&[1, 2, 3]);
    let ev = bus.take(1, 10);
    assert!(
        matches!(&ev[..], [GsEvent::Merge { provider, .. }] if *provider == pid(1, 1)),
        "{ev:?}"
    );
    let ev = bus.take(1, 11);
    assert!(
        matches!(&ev[..], [GsEvent::Approved { info, .. }]
            if info.kind == ProtocolKind::Join && info.changing == vec![(pid(1, 5), Change::Joins)]),
        "{ev:?}"
    );
    bus.digests_agree(&[1, 2, 3]);
    assert_eq!(bus.providers(2, "g"), vec![pid(2, 2), pid(3, 3), pid(1, 5)]);
    // The provider the table lists is the one its client holds: it can propose.
    bus.propose(
        1,
        11,
        "g",
        ProposalBody::ChangeState {
            state: Bytes::from_static(b"s"),
        },
        Phases::One,
        0,
    )
    .unwrap();
    let ev = bus.take(1, 11);
    assert!(matches!(&ev[..], [GsEvent::Approved { .. }]), "{ev:?}");
    let seqs = positions(&ev);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// The simulator's seed 8090 (2–16 nodes): a provider said goodbye while its node was
/// alone; the group dissolved there and its client joined again with the same instance
/// number. Before that JOIN was sent, its node merged with a side whose instance still
/// listed the old provider as failed (a protocol there waited for votes), and that
/// merged instance then lost a second merge. The cast-out took the failed old provider
/// for the client's new joiner: the joiner got `Merge`, its token died, and its JOIN,
/// ordered on the final ring, left an orphan provider. A failed provider's token is
/// already dead: the cast-out only concerns live ones (docs/group-services.md §6.6).
#[test]
fn a_cast_out_leaves_a_new_joiner_of_a_failed_providers_instance_alone() {
    let mut bus = Bus::new(4);
    let client = |n: NodeId| 10 * u64::from(n);
    for n in 1..=4 {
        bus.join(n, client(n), "g", n as u16, GroupAttributes::default());
    }
    for n in 1..=4 {
        bus.take(n, client(n));
    }
    // An n-phase state change nobody votes on yet: failures stay pending behind it.
    bus.propose(
        2,
        20,
        "g",
        ProposalBody::ChangeState {
            state: Bytes::from_static(b"s"),
        },
        Phases::N,
        0,
    )
    .unwrap();
    let seq = nphase_of(&bus.take(3, 30))[0].0;
    for n in [1, 2, 4] {
        bus.take(n, client(n));
    }
    bus.ring(&[1]);
    bus.ring(&[2]);
    bus.ring(&[3, 4]);
    // Side {3, 4} ends the protocol and removes the failed providers of 1 and 2.
    for n in [3, 4] {
        bus.vote(n, client(n), "g", seq, 1, Vote::plain(VoteValue::Approve))
            .unwrap();
    }
    assert_eq!(bus.providers(3, "g"), vec![pid(3, 3), pid(4, 4)]);
    // Node 1 alone: its provider says goodbye, the group dissolves there.
    let (s, o) = bus.svc(1);
    s.goodbye(10, &name("g"), o).unwrap();
    bus.run();
    assert!(bus.providers(1, "g").is_empty());
    bus.take(1, 10);
    // Its client joins again, same instance; the JOIN is not sent before the merges.
    bus.outs[0].hold = true;
    let (s, o) = bus.svc(1);
    s.join(10, &name("g"), 1, GroupAttributes::default(), o)
        .unwrap();
    // Node 1 merges with node 2, whose instance lists 1/1 as failed (its protocol still
    // waits for 2/2's vote); that instance then loses to side {3, 4}'s (two live
    // providers against one).
    bus.ring(&[1, 2]);
    assert!(bus.providers(1, "g").contains(&pid(1, 1)));
    bus.ring(&[1, 2, 3, 4]);
    let ev = bus.take(1, 10);
    assert!(
        !ev.iter().any(|e| matches!(e, GsEvent::Merge { .. })),
        "the new joiner is not cast out: {ev:?}"
    );
    assert!(matches!(&bus.take(2, 20)[..], [.., GsEvent::Merge { .. }]));
    // The JOIN goes out at last and joins the winning instance.
    bus.outs[0].hold = false;
    let held = std::mem::take(&mut bus.outs[0].held);
    bus.outs[0].ready.extend(held);
    bus.run();
    let ev = bus.take(1, 10);
    assert!(
        matches!(&ev[..], [GsEvent::Approved { info, .. }]
            if info.changing == vec![(pid(1, 1), Change::Joins)]),
        "{ev:?}"
    );
    assert_eq!(bus.providers(4, "g"), vec![pid(3, 3), pid(4, 4), pid(1, 1)]);
    bus.digests_agree(&[1, 2, 3, 4]);
}
