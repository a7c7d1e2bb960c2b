use super::*;
use crate::proto::{Reply, Request};

fn g(name: &str) -> GroupName {
    GroupName::new(name.as_bytes()).unwrap()
}

fn id(node: u32, instance: u16) -> ProviderId {
    ProviderId { node, instance }
}

fn attrs() -> GroupAttributes {
    GroupAttributes {
        join_phases: Phases::N,
        join_time_limit_ms: 5000,
        failure_phases: Phases::One,
        failure_time_limit_ms: 0,
        batch_joins: false,
        batch_failures: true,
        default_vote: DefaultVote::Reject,
    }
}

fn info() -> ProposalInfo {
    ProposalInfo {
        kind: ProtocolKind::Expel,
        proposer: Some(id(1, 7)),
        phases: Phases::N,
        members: vec![id(1, 7), id(2, 1)],
        changing: vec![
            (id(2, 1), Change::Leaves(LeaveReason::Left { code: 9 })),
            (id(3, 3), Change::Joins),
            (id(3, 4), Change::Leaves(LeaveReason::SaidGoodbye)),
        ],
        state: Bytes::from_static(b"old"),
        proposed_state: Some(Bytes::from_static(b"new")),
        message: None,
        vote_messages: vec![(id(2, 1), Bytes::from_static(b"hi"))],
        attributes: attrs(),
        new_attributes: Some(GroupAttributes::default()),
        expel_flag: Some(Bytes::from_static(b"flag")),
    }
}

fn requests() -> Vec<GsRequest> {
    let group = b"grp".to_vec();
    vec![
        GsRequest::Connect { script: None },
        GsRequest::Connect {
            script: Some(b"/bin/false".to_vec()),
        },
        GsRequest::Join {
            group: group.clone(),
            instance: 65535,
            attrs: attrs(),
        },
        GsRequest::Propose {
            group: group.clone(),
            proposal: Proposal {
                body: ProposalBody::Expel {
                    targets: vec![id(1, 2), id(3, 4)],
                    deactivate_phase: 2,
                    flag: Bytes::from_static(b"f"),
                },
                phases: Phases::N,
                time_limit_ms: 1000,
            },
        },
        GsRequest::Propose {
            group: group.clone(),
            proposal: Proposal {
                body: ProposalBody::ChangeAttributes(attrs()),
                phases: Phases::One,
                time_limit_ms: 0,
            },
        },
        GsRequest::Propose {
            group: group.clone(),
            proposal: Proposal {
                body: ProposalBody::Leave { code: 3 },
                phases: Phases::N,
                time_limit_ms: 0,
            },
        },
        GsRequest::Vote {
            group: group.clone(),
            seq: 1 << 40,
            phase: 2,
            vote: Vote {
                value: VoteValue::Continue,
                state: Some(Bytes::from_static(b"s")),
                message: None,
                default: Some(DefaultVote::Approve),
            },
        },
        GsRequest::Goodbye {
            group: group.clone(),
        },
        GsRequest::Subscribe {
            group: group.clone(),
            flags: SubscribeFlags {
                membership: true,
                state: false,
            },
        },
        GsRequest::Unsubscribe { group },
        GsRequest::Groups,
        GsRequest::InPool {
            offset: 4096,
            len: 1 << 20,
        },
    ]
}

fn events() -> Vec<GsEvent> {
    vec![
        GsEvent::NPhase {
            group: g("a"),
            provider: id(1, 7),
            seq: 4,
            phase: 2,
            info: info(),
            summary: 3,
            time_limit_ms: 100,
        },
        GsEvent::Approved {
            group: g("a"),
            provider: id(1, 7),
            seq: 4,
            phases_run: 3,
            info: info(),
            summary: 0,
        },
        GsEvent::Rejected {
            group: g("a"),
            provider: id(1, 7),
            seq: 4,
            info: info(),
            reason: RejectReason::TimedOut,
        },
        GsEvent::Announcement {
            group: g("a"),
            provider: id(1, 7),
            kind: AnnouncementKind::ScriptFailed,
            providers: vec![id(2, 2)],
        },
        GsEvent::Subscription {
            group: g("a"),
            seq: 9,
            kind: SubscriptionKind {
                membership: true,
                state: true,
                dissolved: false,
                merged: true,
            },
            state: Some(Bytes::from_static(b"v")),
            members: vec![id(1, 1)],
            changing: vec![(id(2, 2), Change::Leaves(LeaveReason::NodeFailed))],
        },
        GsEvent::DelayedError {
            group: g("a"),
            request: RequestKind::Vote { seq: 3, phase: 1 },
            error: GsError::VoteNotExpected,
        },
        GsEvent::DelayedError {
            group: g("a"),
            request: RequestKind::Propose(ProtocolKind::StateChange),
            error: GsError::Collide,
        },
        GsEvent::Merge {
            group: g("a"),
            provider: id(5, 5),
        },
    ]
}

fn view() -> GroupView {
    GroupView {
        name: g("view"),
        attributes: attrs(),
        providers: vec![
            (id(1, 1), None),
            (id(2, 2), Some(LeaveReason::ProcessFailed)),
        ],
        state: Bytes::from_static(b"state"),
        seq: 12,
        active: Some((ProtocolKind::FailureLeave, 2)),
        waiting_for: vec![id(1, 1)],
        pending: 3,
    }
}

#[test]
fn pool_bodies_round_trip_and_never_nest() {
    for req in requests() {
        let body = req.encode_body();
        match req {
            GsRequest::InPool { .. } => assert!(GsRequest::decode_body(&body).is_err()),
            req => assert_eq!(GsRequest::decode_body(&body).unwrap(), req),
        }
        let mut long = body.clone();
        long.push(0);
        assert!(GsRequest::decode_body(&long).is_err());
    }
}

#[test]
fn requests_replies_and_events_round_trip() {
    for req in requests() {
        let r = Request::Gs(req);
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }
    for reply in [
        GsReply::Done(Ok(())),
        GsReply::Done(Err(GsError::Collide)),
        GsReply::Done(Err(GsError::TryAgain)),
        GsReply::Groups {
            groups: vec![view(), view()],
            truncated: true,
        },
    ] {
        let r = Reply::Gs(reply);
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
    }
    for e in events() {
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    }
    for code in 1..=20 {
        assert_eq!(gs_error_from_code(code).unwrap().code(), code as i32);
    }
    assert_eq!(gs_error_from_code(0), None);
    assert_eq!(gs_error_from_code(21), None);
}

/// A view's state value is cut for the command-line view.
#[test]
fn group_views_carry_a_bounded_state() {
    let mut v = view();
    v.state = Bytes::from(vec![7u8; 10_000]);
    let r = Reply::Gs(GsReply::Groups {
        groups: vec![v],
        truncated: false,
    });
    let Reply::Gs(GsReply::Groups { groups, .. }) = Reply::decode(&r.encode()).unwrap() else {
        panic!("not a groups reply");
    };
    assert_eq!(groups[0].state.len(), GROUP_VIEW_STATE_BYTES);
}

/// Untrusted input: every prefix, every single-byte corruption and trailing bytes give
/// a value or an error, never a panic or a huge allocation.
#[test]
fn truncated_and_mutated_gs_messages_never_panic() {
    let requests: Vec<Vec<u8>> = requests()
        .into_iter()
        .map(|r| Request::Gs(r).encode())
        .collect();
    let events: Vec<Vec<u8>> = events().iter().map(encode_event).collect();
    for s in &requests {
        for cut in 0..s.len() {
            assert!(Request::decode(&s[..cut]).is_err());
        }
        let mut long = s.clone();
        long.push(0);
        assert!(Request::decode(&long).is_err());
    }
    for s in &events {
        for cut in 0..s.len() {
            assert!(decode_event(&s[..cut]).is_err());
        }
        let mut long = s.clone();
        long.push(0);
        assert!(decode_event(&long).is_err());
    }
    let mut samples = [requests, events].concat();
    samples.push(
        Reply::Gs(GsReply::Groups {
            groups: vec![view()],
            truncated: false,
        })
        .encode(),
    );
    for s in &samples {
        for cut in 0..s.len() {
            let p = &s[..cut];
            let _ = Request::decode(p);
            let _ = Reply::decode(p);
            let _ = decode_event(p);
        }
        for i in 0..s.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = s.clone();
                m[i] = v;
                // What decodes encodes back to the same meaning (as the request fuzz
                // target checks).
                if let Ok(r) = Request::decode(&m) {
                    assert_eq!(Request::decode(&r.encode()).unwrap(), r);
                }
                if let Ok(r) = Reply::decode(&m) {
                    assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
                }
                if let Ok(e) = decode_event(&m) {
                    assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
                }
            }
        }
    }
    // A count that claims more entries than bytes follow is refused up front.
    let mut w = Writer::new();
    w.u32(11).u32(GS_PROPOSE).name(b"g");
    Put::u8(&mut w, 2);
    w.u32(0);
    Put::u8(&mut w, 2);
    w.u32(u32::MAX);
    assert!(Request::decode(&w.finish()).is_err());
}
