//! The host on its own: persistence before transmission, routing by service id, and a
//! small cluster of hosts with clients on a lossless network.

use std::time::Duration;

use super::*;
use crate::cpg::{Address, Reason};
use crate::totem::Destination;

fn config(id: NodeId, n: usize) -> HostConfig {
    HostConfig {
        totem: totem::Config::new(id, n),
        cpg: cpg::Limits::default(),
        flow: FlowLimits {
            max_events: 8,
            max_bytes: 1 << 20,
        },
    }
}

/// Hosts 1..=n on a lossless, instantaneous network; ring sequences are persisted
/// (into `persisted`) as soon as asked.
struct Cluster {
    hosts: Vec<Host>,
    persisted: Vec<Vec<u64>>,
    now: Instant,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let now = Instant::ZERO;
        Cluster {
            hosts: (1..=n as NodeId)
                .map(|id| Host::new(config(id, n), 0, now).unwrap())
                .collect(),
            persisted: vec![Vec::new(); n],
            now,
        }
    }

    fn host(&mut self, id: NodeId) -> &mut Host {
        &mut self.hosts[id as usize - 1]
    }

    /// Moves every output until nothing is left, then advances to the next deadline;
    /// for `span` of virtual time.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now <= end {
            let mut moved = true;
            while moved {
                moved = false;
                for i in 0..self.hosts.len() {
                    while let Some(seq) = self.hosts[i].poll_persist() {
                        self.persisted[i].push(seq);
                        self.hosts[i].handle_persisted(seq);
                    }
                    while let Some(t) = self.hosts[i].poll_transmit() {
                        moved = true;
                        let datagram = t.payload.into_bytes();
                        let to: Vec<usize> = match t.destination {
                            Destination::All => (0..self.hosts.len()).filter(|&j| j != i).collect(),
                            Destination::Node(id) => vec![id as usize - 1],
                        };
                        for j in to {
                            self.hosts[j].handle_datagram(self.now, i as NodeId + 1, &datagram);
                        }
                    }
                    self.hosts[i].poll(self.now);
                }
            }
            let next = self.hosts.iter().filter_map(Host::poll_timeout).min();
            self.now = next.map_or(end, |t| t.max(self.now)) + Duration::from_micros(1);
            for host in &mut self.hosts {
                host.handle_timeout(self.now);
            }
        }
    }

    fn events(&mut self, id: NodeId) -> Vec<(ConnId, ClientEvent)> {
        std::iter::from_fn(|| self.host(id).poll_event()).collect()
    }
}

/// Nothing leaves a host before the ring sequence it will use is on durable storage
/// (a restarted node must never reuse a ring id): a fresh host first asks for a
/// sequence above the last one, and sends its first join only once that is confirmed.
#[test]
fn persistence_comes_before_any_transmit() {
    let mut host = Host::new(config(1, 3), 41, Instant::ZERO).unwrap();
    assert!(host.persist_pending());
    assert!(host.poll_transmit().is_none(), "held until persisted");
    let seq = host.poll_persist().unwrap();
    assert!(seq > 41, "above the last one: {seq}");
    assert_eq!(host.poll_persist(), None, "asked once");
    assert!(host.poll_transmit().is_none(), "held until confirmed");
    host.handle_persisted(seq);
    assert!(!host.persist_pending());
    assert!(
        host.poll_transmit().is_some(),
        "the join goes once persisted"
    );
    assert_eq!(host.stats().ring_seqs_persisted, 1);
}

/// A host that moves on to a new ring (here: alone, after the join timeout) while a
/// write is outstanding shows nothing of it - no datagram, no client event, no notice -
/// until the newest sequence is confirmed.
#[test]
fn nothing_of_a_new_ring_shows_before_it_is_persisted() {
    let mut host = Host::new(config(1, 3), 41, Instant::ZERO).unwrap();
    host.connect(7, 70).unwrap();
    let first = host.poll_persist().unwrap();
    host.handle_persisted(first);
    while host.poll_transmit().is_some() {}
    let mut now = Instant::ZERO;
    // Alone: gather, consensus and a ring of its own, with nobody to send to.
    for _ in 0..200 {
        now = host.poll_timeout().unwrap_or(now).max(now);
        host.handle_timeout(now);
        if host.persist_pending() {
            break;
        }
        while host.poll_transmit().is_some() {}
        while host.poll_notice().is_some() {}
        while host.poll_event().is_some() {}
    }
    assert!(host.persist_pending(), "a new ring was formed");
    for _ in 0..50 {
        now = host.poll_timeout().unwrap_or(now).max(now);
        host.handle_timeout(now);
        assert!(host.poll_transmit().is_none());
        assert!(host.poll_event().is_none());
        assert!(host.poll_notice().is_none());
    }
    let seq = host.poll_persist().unwrap();
    assert!(seq > first);
    host.handle_persisted(seq);
    assert!(!host.persist_pending());
}

/// Every ring a node enters is persisted first, and ring sequences only grow.
#[test]
fn a_cluster_persists_every_ring_it_forms() {
    let mut cluster = Cluster::new(3);
    cluster.run(Duration::from_secs(5));
    for id in 1..=3 {
        assert_eq!(cluster.host(id).state(), NodeState::Operational);
        assert_eq!(cluster.host(id).members(), &[1, 2, 3]);
    }
    let ring = cluster.host(1).ring_id();
    for (i, seqs) in cluster.persisted.iter().enumerate() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "node {}: {seqs:?}",
            i + 1
        );
        assert!(
            seqs.last().is_some_and(|&s| s >= ring.seq),
            "node {}",
            i + 1
        );
    }
}

/// Deliveries go to the service their first byte names: CPG's to CPG, another
/// service's to the driver as a notice, an unknown one is counted and dropped.
#[test]
fn deliveries_are_routed_by_service_id() {
    let mut cluster = Cluster::new(1);
    cluster.run(Duration::from_secs(2));
    let now = cluster.now;
    let host = cluster.host(1);
    let mut foreign = vec![ServiceId::LoadGenerator as u8];
    foreign.extend_from_slice(b"load");
    host.submit_foreign(now, Bytes::from(foreign.clone()), Guarantee::Agreed)
        .unwrap();
    host.submit_foreign(now, Bytes::from_static(b"\x7fnobody"), Guarantee::Agreed)
        .unwrap();
    while host.poll_notice().is_some() {}
    let before = host.stats().messages_delivered;
    cluster.run(Duration::from_millis(100));
    let host = cluster.host(1);
    let notices: Vec<Notice> = std::iter::from_fn(|| host.poll_notice()).collect();
    assert!(
        matches!(&notices[..], [Notice::Foreign(ServiceId::LoadGenerator, d)] if d.payload[..] == foreign[..]),
        "{notices:?}"
    );
    assert_eq!(host.stats().unknown_service, 1);
    assert_eq!(host.stats().messages_delivered - before, 2);
}

/// Clients on two hosts join one group, see the same confchg and each other's
/// messages in one order; a client that goes away is a PROCDOWN for the other.
#[test]
fn clients_on_two_hosts_share_a_group() {
    let mut cluster = Cluster::new(2);
    cluster.run(Duration::from_secs(3));
    let group = GroupName::new(b"g").unwrap();
    let now = cluster.now;
    cluster.host(1).connect(10, 100).unwrap();
    cluster.host(2).connect(20, 200).unwrap();
    cluster.host(1).join(now, 10, &group, false).unwrap();
    cluster.run(Duration::from_millis(200));
    let now = cluster.now;
    cluster.host(2).join(now, 20, &group, false).unwrap();
    cluster.run(Duration::from_millis(200));
    let now = cluster.now;
    cluster
        .host(1)
        .mcast(now, 10, Guarantee::Agreed, &[b"one"])
        .unwrap();
    cluster
        .host(2)
        .mcast(now, 20, Guarantee::Safe, &[b"two"])
        .unwrap();
    cluster.run(Duration::from_millis(200));

    let mut seen = Vec::new();
    for id in [1, 2] {
        let events = cluster.events(id);
        let confchgs: Vec<_> = events
            .iter()
            .filter_map(|(_, e)| match e {
                ClientEvent::Confchg { members, .. } => Some(members.len()),
                _ => None,
            })
            .collect();
        let messages: Vec<Bytes> = events
            .into_iter()
            .filter_map(|(_, e)| match e {
                ClientEvent::Deliver { payload, .. } => Some(payload),
                _ => None,
            })
            .collect();
        assert_eq!(messages.len(), 2, "node {id}: {messages:?}");
        // Node 2's client joined second: it sees only its own join.
        assert_eq!(confchgs.last(), Some(&2), "node {id}");
        seen.push(messages);
    }
    assert_eq!(seen[0], seen[1], "agreed order");

    let now = cluster.now;
    cluster.host(2).disconnect(now, 20);
    cluster.run(Duration::from_millis(200));
    let events = cluster.events(1);
    let left: Vec<&Address> = events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Confchg { left, .. } => left.first(),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&left[..], [a] if a.reason == Reason::ProcDown && a.member.pid == 200),
        "{events:?}"
    );
}

/// A client that lags behind its events holds every local sender back (`TRY_AGAIN`)
/// until it catches up; one over the limits is cut off, saying why, and its member
/// leaves its group with PROCDOWN for the others.
#[test]
fn a_slow_reader_holds_senders_back_then_is_cut_off() {
    let mut cluster = Cluster::new(2);
    cluster.run(Duration::from_secs(3));
    let group = GroupName::new(b"g").unwrap();
    let now = cluster.now;
    cluster.host(1).connect(10, 100).unwrap();
    cluster.host(1).connect(11, 110).unwrap();
    cluster.host(2).connect(20, 200).unwrap();
    cluster.host(1).join(now, 10, &group, false).unwrap();
    cluster.host(2).join(now, 20, &group, false).unwrap();
    cluster.run(Duration::from_millis(300));
    cluster.events(1);
    cluster.events(2);

    let now = cluster.now;
    let lagging = Backlog {
        events: 5,
        bytes: 100,
    };
    cluster.host(1).handle_backlog(now, 10, lagging);
    assert!(cluster.host(1).senders_held());
    assert_eq!(
        cluster.host(1).mcast(now, 10, Guarantee::Agreed, &[b"x"]),
        Err(CpgError::TryAgain)
    );
    assert_eq!(
        cluster.host(1).mcast(now, 11, Guarantee::Agreed, &[b"x"]),
        Err(CpgError::TryAgain),
        "every local sender, joined or not"
    );
    assert!(
        cluster
            .host(2)
            .mcast(now, 20, Guarantee::Agreed, &[b"y"])
            .is_ok(),
        "other nodes' senders are not held"
    );
    assert_eq!(cluster.host(1).flow_stats().multicasts_held, 2);

    cluster.host(1).handle_backlog(now, 10, Backlog::default());
    assert!(!cluster.host(1).senders_held(), "caught up");
    assert!(cluster.host(1).poll_cut_off().is_none());

    let over = Backlog {
        events: 9,
        bytes: 100,
    };
    cluster.host(1).handle_backlog(now, 10, over);
    assert_eq!(
        cluster.host(1).poll_cut_off(),
        Some((10, CutOff::SlowReader(over)))
    );
    assert!(
        !cluster.host(1).senders_held(),
        "a client cut off holds nobody back"
    );
    assert_eq!(cluster.host(1).flow_stats().clients_cut_off, 1);
    cluster.host(1).disconnect(now, 10);
    cluster.run(Duration::from_millis(300));
    let events = cluster.events(2);
    let left: Vec<&Address> = events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Confchg { left, .. } => left.first(),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&left[..], [a] if a.reason == Reason::ProcDown && a.member.pid == 100),
        "{events:?}"
    );
}

fn gs_events(cluster: &mut Cluster, id: NodeId) -> Vec<(crate::gs::ClientId, crate::gs::GsEvent)> {
    std::iter::from_fn(|| cluster.host(id).poll_gs_event()).collect()
}

/// CPG and GS share the sync barrier: a formed ring is synced by both, and CPG's
/// application messages still flow (they waited for both syncs).
#[test]
fn cpg_and_gs_both_sync_every_ring() {
    let mut cluster = Cluster::new(3);
    cluster.run(Duration::from_secs(3));
    for id in 1..=3 {
        let host = cluster.host(id);
        assert_eq!(host.members(), &[1, 2, 3]);
        let ring = host.ring_id();
        assert_eq!(host.cpg_synced_ring(), Some(ring));
        assert_eq!(host.gs_synced_ring(), Some(ring));
        assert!(host.gs_stats().syncs_completed >= 1);
    }
    let group = GroupName::new(b"g").unwrap();
    let now = cluster.now;
    cluster.host(1).connect(10, 100).unwrap();
    cluster.host(1).join(now, 10, &group, false).unwrap();
    cluster.run(Duration::from_millis(200));
    let now = cluster.now;
    cluster
        .host(1)
        .mcast(now, 10, Guarantee::Agreed, &[b"after both syncs"])
        .unwrap();
    cluster.run(Duration::from_millis(200));
    let events = cluster.events(1);
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::Deliver { payload, .. } if payload[..] == b"after both syncs"[..])),
        "{events:?}"
    );
}

/// GS through the host (service id 2): providers on two hosts join one group, run an
/// n-phase state change voted through the host, and a client that goes away is a
/// failure leave with `ProcessFailed` for the other.
#[test]
fn gs_providers_on_two_hosts_vote_and_see_a_process_failure() {
    use crate::gs::{
        Change, GroupAttributes, GsEvent, LeaveReason, Phases, Proposal, ProposalBody,
        ProtocolKind, ProviderId, Vote, VoteValue,
    };
    let mut cluster = Cluster::new(2);
    cluster.run(Duration::from_secs(3));
    let group = GroupName::new(b"gs-group").unwrap();
    for (id, client) in [(1, 10), (2, 20)] {
        let now = cluster.now;
        let host = cluster.host(id);
        host.gs_connect(client, None).unwrap();
        host.gs_join(now, client, &group, id as u16, GroupAttributes::default())
            .unwrap();
        cluster.run(Duration::from_millis(100));
    }
    let providers = |cluster: &Cluster, id: NodeId| {
        cluster.hosts[id as usize - 1]
            .gs_groups()
            .into_iter()
            .find(|g| g.name == group)
            .map(|g| g.providers.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
    };
    let both = vec![
        ProviderId {
            node: 1,
            instance: 1,
        },
        ProviderId {
            node: 2,
            instance: 2,
        },
    ];
    assert_eq!(providers(&cluster, 1).as_ref(), Some(&both));
    assert_eq!(providers(&cluster, 2).as_ref(), Some(&both));
    gs_events(&mut cluster, 1);
    gs_events(&mut cluster, 2);
    let now = cluster.now;
    cluster
        .host(1)
        .gs_propose(
            now,
            10,
            &group,
            Proposal {
                body: ProposalBody::ChangeState {
                    state: Bytes::from_static(b"v1"),
                },
                phases: Phases::N,
                time_limit_ms: 0,
            },
        )
        .unwrap();
    cluster.run(Duration::from_millis(100));
    for (id, client) in [(1, 10), (2, 20)] {
        let ev = gs_events(&mut cluster, id);
        let [(c, GsEvent::NPhase { seq, phase, .. })] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(*c, client);
        let now = cluster.now;
        cluster
            .host(id)
            .gs_vote(
                now,
                client,
                &group,
                (*seq, *phase),
                Vote::plain(VoteValue::Approve),
            )
            .unwrap();
    }
    cluster.run(Duration::from_millis(100));
    for id in [1, 2] {
        let ev = gs_events(&mut cluster, id);
        assert!(
            matches!(&ev[..], [(_, GsEvent::Approved { info, .. })] if info.kind == ProtocolKind::StateChange),
            "{ev:?}"
        );
        let g = cluster.host(id).gs_groups();
        assert_eq!(g[0].state, Bytes::from_static(b"v1"));
    }
    let now = cluster.now;
    cluster.host(2).gs_disconnect(now, 20);
    cluster.run(Duration::from_millis(100));
    let ev = gs_events(&mut cluster, 1);
    assert!(
        matches!(&ev[..], [(10, GsEvent::Approved { info, .. })]
            if info.kind == ProtocolKind::FailureLeave
                && info.changing == vec![(both[1], Change::Leaves(LeaveReason::ProcessFailed))]),
        "{ev:?}"
    );
    assert_eq!(providers(&cluster, 2), Some(vec![both[0]]));
}
