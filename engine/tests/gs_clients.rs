//! Group Services clients on real engines (docs/group-services.md §2–§3): the
//! `ringcast::gs` API talking to `ringcastd` through the control socket and the event
//! ring. Providers killed with SIGKILL are separate processes (this test binary run
//! again as `gs_provider_process`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, EVENT_TIMEOUT, FORM_TIMEOUT, free_port};
use ringcast::gs::{
    Change, GroupAttributes, GsClient, GsError, GsEvent, GsOptions, LeaveReason, Phases,
    ProtocolKind, ProviderId, ProviderToken, RejectReason, SubscribeFlags, Vote, VoteValue,
    summary,
};

/// How long a test makes sure that nothing more arrives.
const QUIET: Duration = Duration::from_millis(700);

fn options(socket: std::path::PathBuf) -> GsOptions {
    GsOptions {
        socket,
        deactivate_script: None,
        connect_wait: FORM_TIMEOUT,
    }
}

fn client(cluster: &Cluster, id: u32) -> GsClient {
    GsClient::connect(&options(cluster.socket(id))).expect("GS connect")
}

/// Retries `TryAgain` (Totem's queue full, or a sync running) for a bounded time.
fn retry<T>(mut f: impl FnMut() -> Result<T, GsError>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(GsError::TryAgain) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("GS request failed: {e:?}"),
        }
    }
}

/// The next event, or a panic after the timeout.
fn next(gs: &GsClient) -> GsEvent {
    match gs.wait_event(Some(EVENT_TIMEOUT)).expect("wait_event") {
        Some(e) => e,
        None => panic!("no GS event within {EVENT_TIMEOUT:?}"),
    }
}

/// Asserts that nothing arrives for a while.
fn quiet(gs: &GsClient) {
    if let Some(e) = gs.wait_event(Some(QUIET)).expect("wait_event") {
        let text = format!("{e:?}");
        panic!("unexpected event {}", &text[..text.len().min(400)]);
    }
}

fn start(name: &str, n: u32) -> Cluster {
    let mut cluster = Cluster::new(name, free_port(n), n);
    cluster.start_all();
    let all: Vec<u32> = (1..=n).collect();
    cluster.wait_ring(&all, FORM_TIMEOUT).unwrap();
    cluster
}

/// The next event must be the approval of a protocol of `kind`: returns it.
fn approved(gs: &GsClient, kind: ProtocolKind) -> GsEvent {
    let e = next(gs);
    match &e {
        GsEvent::Approved { info, .. } if info.kind == kind => e,
        other => panic!("expected an approved {kind:?}, got {other:?}"),
    }
}

/// The next event must be an n-phase notification of `phase`: returns (seq, summary).
fn nphase(gs: &GsClient, phase: u32) -> (GsEvent, u32) {
    let e = next(gs);
    match &e {
        GsEvent::NPhase {
            phase: p, summary, ..
        } if *p == phase => {
            let s = *summary;
            (e, s)
        }
        other => panic!("expected phase {phase}, got {other:?}"),
    }
}

/// Joins `group` as `instance` and waits for this client's own approval; the
/// providers already in `others` see the join approved too.
fn join(gs: &GsClient, group: &[u8], instance: u16, others: &[&GsClient]) -> ProviderToken {
    let token = retry(|| gs.join(group, instance, GroupAttributes::default()));
    approved(gs, ProtocolKind::Join);
    for o in others {
        let e = approved(o, ProtocolKind::Join);
        let GsEvent::Approved { info, .. } = e else {
            unreachable!()
        };
        assert_eq!(info.changing[0].1, Change::Joins);
        assert_eq!(info.changing[0].0.instance, instance);
    }
    token
}

fn changing(e: &GsEvent) -> Vec<(ProviderId, Change)> {
    match e {
        GsEvent::Approved { info, .. } | GsEvent::NPhase { info, .. } => info.changing.clone(),
        GsEvent::Subscription { changing, .. } => changing.clone(),
        other => panic!("no changing providers in {other:?}"),
    }
}

fn group_state(gs: &GsClient, group: &[u8]) -> (Vec<ProviderId>, Vec<u8>) {
    let (groups, _) = gs.groups().expect("groups");
    let g = groups
        .iter()
        .find(|g| g.name.as_bytes() == group)
        .expect("group listed");
    let live = g
        .providers
        .iter()
        .filter(|(_, failed)| failed.is_none())
        .map(|(id, _)| *id)
        .collect();
    (live, g.state.to_vec())
}

#[test]
fn three_phase_state_change_approved_by_votes() {
    let cluster = start("gs-3phase", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let _tb = join(&b, b"g", 2, &[&a]);
    retry(|| a.change_state(&ta, b"v1".to_vec(), Phases::N, None));
    for phase in 1..=3 {
        for (who, gs) in [("a", &a), ("b", &b)] {
            let (e, _) = nphase(gs, phase);
            let vote = match (phase, who) {
                (3, _) => Vote::plain(VoteValue::Approve),
                // b replaces the proposed state value in phase 2.
                (2, "b") => Vote {
                    value: VoteValue::Continue,
                    state: Some(b"v2".to_vec().into()),
                    message: Some(b"from b".to_vec().into()),
                    default: None,
                },
                _ => Vote::plain(VoteValue::Continue),
            };
            if phase == 3 {
                let GsEvent::NPhase { info, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(info.proposed_state.as_deref(), Some(&b"v2"[..]));
                assert_eq!(info.vote_messages.len(), 1, "b's message in phase 3");
            }
            gs.answer(&e, vote).expect("vote");
        }
    }
    for gs in [&a, &b] {
        let GsEvent::Approved { phases_run, .. } = approved(gs, ProtocolKind::StateChange) else {
            unreachable!()
        };
        assert_eq!(phases_run, 3);
    }
    let (members, state) = group_state(&a, b"g");
    assert_eq!(members.len(), 2);
    assert_eq!(state, b"v2");
    // A second vote in a phase that ended is refused at once.
    assert_eq!(
        a.vote(&ta, 1, 1, Vote::plain(VoteValue::Approve)),
        Err(GsError::VoteNotExpected)
    );
}

#[test]
fn a_leave_rejected_by_vote_keeps_the_provider() {
    let cluster = start("gs-leave", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let _ta = join(&a, b"g", 1, &[]);
    let tb = join(&b, b"g", 2, &[&a]);
    retry(|| b.leave(&tb, 7, Phases::N, None));
    let (ea, _) = nphase(&a, 1);
    let (eb, _) = nphase(&b, 1);
    assert_eq!(
        changing(&ea),
        vec![(
            ProviderId {
                node: 1,
                instance: 2
            },
            Change::Leaves(LeaveReason::Left { code: 7 })
        )]
    );
    a.answer(&ea, Vote::plain(VoteValue::Reject)).unwrap();
    b.answer(&eb, Vote::plain(VoteValue::Approve)).unwrap();
    for gs in [&a, &b] {
        match next(gs) {
            GsEvent::Rejected { reason, info, .. } => {
                assert_eq!(reason, RejectReason::Vote);
                assert_eq!(info.kind, ProtocolKind::Leave);
            }
            other => panic!("expected the leave rejected, got {other:?}"),
        }
    }
    assert_eq!(group_state(&a, b"g").0.len(), 2);
    // b is still a provider: it can propose.
    retry(|| b.change_state(&tb, b"still here".to_vec(), Phases::One, None));
    approved(&a, ProtocolKind::StateChange);
    approved(&b, ProtocolKind::StateChange);
}

#[test]
fn a_goodbye_in_phase_two_counts_the_default_vote_and_the_others_see_said_goodbye() {
    let cluster = start("gs-goodbye", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let c = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let _tb = join(&b, b"g", 2, &[&a]);
    let tc = join(&c, b"g", 3, &[&a, &b]);
    retry(|| a.change_state(&ta, b"next".to_vec(), Phases::N, None));
    for gs in [&a, &b, &c] {
        let (e, _) = nphase(gs, 1);
        gs.answer(&e, Vote::plain(VoteValue::Continue)).unwrap();
    }
    let (e2a, _) = nphase(&a, 2);
    let (e2b, _) = nphase(&b, 2);
    nphase(&c, 2);
    c.goodbye(tc).expect("goodbye");
    a.answer(&e2a, Vote::plain(VoteValue::Continue)).unwrap();
    b.answer(&e2b, Vote::plain(VoteValue::Continue)).unwrap();
    // c's default vote (APPROVE) stood in: phase 3 comes, flagged.
    for gs in [&a, &b] {
        let (e, flags) = nphase(gs, 3);
        assert_ne!(flags & summary::PROVIDER_FAILED, 0, "summary {flags}");
        gs.answer(&e, Vote::plain(VoteValue::Approve)).unwrap();
    }
    for gs in [&a, &b] {
        approved(gs, ProtocolKind::StateChange);
    }
    let gone = ProviderId {
        node: 1,
        instance: 3,
    };
    for gs in [&a, &b] {
        let e = approved(gs, ProtocolKind::FailureLeave);
        assert_eq!(
            changing(&e),
            vec![(gone, Change::Leaves(LeaveReason::SaidGoodbye))]
        );
    }
    // On return from goodbye c's token was dead: nothing more for it.
    quiet(&c);
    assert_eq!(
        group_state(&a, b"g"),
        (
            vec![
                ProviderId {
                    node: 1,
                    instance: 1
                },
                ProviderId {
                    node: 1,
                    instance: 2
                }
            ],
            b"next".to_vec()
        )
    );
}

/// A provider in another process: this test binary again, running
/// [`gs_provider_process`].
struct ProviderProcess {
    child: Child,
}

impl ProviderProcess {
    fn spawn(socket: &std::path::Path, group: &str, instance: u16) -> ProviderProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "gs_provider_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GS_TEST_SOCKET", socket)
            .env("GS_TEST_GROUP", group)
            .env("GS_TEST_INSTANCE", instance.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the provider process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Reads to the end, so the process never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // libtest writes "test gs_provider_process ... " before it, unended.
                Ok(line) if line.ends_with("joined") => break,
                Ok(line) => {
                    eprintln!("provider process: {line}");
                    continue;
                }
                Err(_) => panic!("the provider process did not join"),
            }
        }
        ProviderProcess { child }
    }

    fn kill9(&mut self) {
        // SAFETY: signals our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run by [`ProviderProcess`] only: joins, says so, and never votes (bounded life).
#[test]
#[ignore = "a helper process of gs_clients tests"]
fn gs_provider_process() {
    let Some(socket) = std::env::var_os("GS_TEST_SOCKET") else {
        return;
    };
    let group = std::env::var("GS_TEST_GROUP").unwrap();
    let instance: u16 = std::env::var("GS_TEST_INSTANCE").unwrap().parse().unwrap();
    let gs = GsClient::connect(&options(socket.into())).unwrap();
    retry(|| gs.join(group.as_bytes(), instance, GroupAttributes::default()));
    approved(&gs, ProtocolKind::Join);
    println!("joined");
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let _ = gs.wait_event(Some(Duration::from_millis(200)));
    }
}

#[test]
fn a_provider_killed_gets_its_default_vote_then_a_process_failed_leave() {
    let cluster = start("gs-kill", 1);
    let a = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let mut p = ProviderProcess::spawn(&cluster.socket(1), "g", 9);
    approved(&a, ProtocolKind::Join);
    retry(|| a.change_state(&ta, b"after".to_vec(), Phases::N, None));
    let (e, _) = nphase(&a, 1);
    a.answer(&e, Vote::plain(VoteValue::Approve)).unwrap();
    // The phase waits for the other process, which never votes; kill it.
    quiet(&a);
    p.kill9();
    match next(&a) {
        // Approved by the killed provider's default vote (APPROVE): the phase waited
        // for it until then. (The approval's summary flags only what happened in
        // earlier phases: docs/group-services.md §3.3.)
        GsEvent::Approved {
            info, phases_run, ..
        } => {
            assert_eq!(info.kind, ProtocolKind::StateChange);
            assert_eq!(phases_run, 1);
        }
        other => panic!("expected the state change approved, got {other:?}"),
    }
    let e = approved(&a, ProtocolKind::FailureLeave);
    assert_eq!(
        changing(&e),
        vec![(
            ProviderId {
                node: 1,
                instance: 9
            },
            Change::Leaves(LeaveReason::ProcessFailed)
        )]
    );
    assert_eq!(group_state(&a, b"g").1, b"after");
}

#[test]
fn a_subscriber_sees_approved_changes_only() {
    let cluster = start("gs-subscriber", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let s = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    s.subscribe(
        b"g",
        SubscribeFlags {
            membership: true,
            state: true,
        },
    )
    .expect("subscribe");
    let _tb = join(&b, b"g", 2, &[&a]);
    match next(&s) {
        GsEvent::Subscription {
            kind,
            members,
            changing,
            ..
        } => {
            assert!(kind.membership);
            assert_eq!(members.len(), 2);
            assert_eq!(changing.len(), 1);
            assert_eq!(changing[0].1, Change::Joins);
        }
        other => panic!("expected the join, got {other:?}"),
    }
    // Rejected: the subscriber hears nothing of it.
    retry(|| a.change_state(&ta, b"bad".to_vec(), Phases::N, None));
    let (ea, _) = nphase(&a, 1);
    let (eb, _) = nphase(&b, 1);
    a.answer(&ea, Vote::plain(VoteValue::Approve)).unwrap();
    b.answer(&eb, Vote::plain(VoteValue::Reject)).unwrap();
    for gs in [&a, &b] {
        assert!(matches!(next(gs), GsEvent::Rejected { .. }));
    }
    // A provider message: never to subscribers.
    retry(|| a.send_message(&ta, b"psst".to_vec(), Phases::One, None));
    approved(&a, ProtocolKind::Message);
    approved(&b, ProtocolKind::Message);
    // Approved: the subscriber sees the new value.
    retry(|| a.change_state(&ta, b"good".to_vec(), Phases::N, None));
    for gs in [&a, &b] {
        let (e, _) = nphase(gs, 1);
        gs.answer(&e, Vote::plain(VoteValue::Approve)).unwrap();
    }
    match next(&s) {
        GsEvent::Subscription { kind, state, .. } => {
            assert!(kind.state);
            assert_eq!(state.as_deref(), Some(&b"good"[..]));
        }
        other => panic!("expected the state change, got {other:?}"),
    }
    quiet(&s);
}

#[test]
fn requests_are_checked_at_once() {
    let cluster = start("gs-errors", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    // Same instance number on this node; a second provider of one client.
    assert_eq!(
        b.join(b"g", 1, GroupAttributes::default()),
        Err(GsError::DuplicateInstanceNumber)
    );
    assert_eq!(
        a.join(b"g", 5, GroupAttributes::default()),
        Err(GsError::Exists)
    );
    let other = GroupAttributes {
        batch_joins: false,
        ..GroupAttributes::default()
    };
    assert_eq!(b.join(b"g", 2, other), Err(GsError::BadGroupAttributes));
    assert_eq!(
        b.join(&[b'x'; 200], 2, GroupAttributes::default()),
        Err(GsError::NameTooLong)
    );
    assert_eq!(
        a.expel(&ta, vec![], 0, Vec::new(), Phases::One, None),
        Err(GsError::BadParameter)
    );
    // A protocol runs: a second proposal collides.
    retry(|| a.change_state(&ta, b"x".to_vec(), Phases::N, None));
    nphase(&a, 1);
    assert_eq!(
        a.change_state(&ta, b"y".to_vec(), Phases::One, None),
        Err(GsError::Collide)
    );
    // A group this node does not know: a delayed error.
    b.subscribe(
        b"nothere",
        SubscribeFlags {
            membership: true,
            state: false,
        },
    )
    .unwrap();
    match next(&b) {
        GsEvent::DelayedError { error, .. } => assert_eq!(error, GsError::UnknownGroup),
        other => panic!("expected a delayed error, got {other:?}"),
    }
    // A relative deactivate script path.
    let mut opts = options(cluster.socket(1));
    opts.deactivate_script = Some("relative.sh".into());
    assert_eq!(GsClient::connect(&opts).err(), Some(GsError::BadParameter));
}

#[test]
fn an_engine_killed_fails_its_providers_with_node_failed() {
    let mut cluster = start("gs-3engines", 3);
    let a = client(&cluster, 1);
    let b = client(&cluster, 2);
    let c = client(&cluster, 3);
    let s = client(&cluster, 2);
    let _ta = join(&a, b"g", 1, &[]);
    let _tb = join(&b, b"g", 2, &[&a]);
    s.subscribe(
        b"g",
        SubscribeFlags {
            membership: true,
            state: false,
        },
    )
    .expect("subscribe");
    let _tc = join(&c, b"g", 3, &[&a, &b]);
    let on3 = ProviderId {
        node: 3,
        instance: 3,
    };
    match next(&s) {
        GsEvent::Subscription { changing, .. } => {
            assert_eq!(changing, vec![(on3, Change::Joins)])
        }
        other => panic!("expected c's join, got {other:?}"),
    }
    // c stays connected: its engine dies under it (closing c first would fail it
    // with process-failed).
    cluster.kill9(3);
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    let left = vec![(on3, Change::Leaves(LeaveReason::NodeFailed))];
    for gs in [&a, &b] {
        let e = approved(gs, ProtocolKind::FailureLeave);
        assert_eq!(changing(&e), left);
    }
    match next(&s) {
        GsEvent::Subscription {
            changing, members, ..
        } => {
            assert_eq!(changing, left);
            assert_eq!(members.len(), 2);
        }
        other => panic!("expected the node failure, got {other:?}"),
    }
    // Both survivors hold the same table.
    assert_eq!(group_state(&a, b"g"), group_state(&b, b"g"));
}

#[test]
fn an_expel_runs_the_deactivate_script_and_announces_its_failure() {
    let cluster = start("gs-expel", 1);
    // Records its arguments, then fails.
    let args = cluster.dir.join("script-args");
    let script = cluster.dir.join("deactivate.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" > {}\nexit 3\n", args.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let a = client(&cluster, 1);
    let mut opts = options(cluster.socket(1));
    opts.deactivate_script = Some(script);
    let b = GsClient::connect(&opts).expect("GS connect with a script");
    let ta = join(&a, b"g", 1, &[]);
    let _tb = join(&b, b"g", 2, &[&a]);
    let target = ProviderId {
        node: 1,
        instance: 2,
    };
    retry(|| a.expel(&ta, vec![target], 1, b"bye".to_vec(), Phases::N, None));
    // a votes alone (expelled providers do not vote), once the script's failure is
    // announced.
    let mut phase1 = None;
    let mut announced = false;
    while phase1.is_none() || !announced {
        match next(&a) {
            e @ GsEvent::NPhase { phase: 1, .. } => phase1 = Some(e),
            GsEvent::Announcement {
                kind, providers, ..
            } => {
                assert_eq!(kind, ringcast::gs::AnnouncementKind::ScriptFailed);
                assert_eq!(providers, vec![target]);
                announced = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    a.answer(&phase1.unwrap(), Vote::plain(VoteValue::Approve))
        .unwrap();
    let e = approved(&a, ProtocolKind::Expel);
    assert_eq!(
        changing(&e),
        vec![(target, Change::Leaves(LeaveReason::Expelled))]
    );
    // The expelled provider's last notification is the approval.
    loop {
        match next(&b) {
            GsEvent::Approved { info, .. } if info.kind == ProtocolKind::Expel => break,
            GsEvent::Announcement { .. } => {}
            other => panic!("unexpected for the expelled provider: {other:?}"),
        }
    }
    quiet(&b);
    assert_eq!(
        std::fs::read_to_string(&args).unwrap(),
        "bye g 2 expelled\n"
    );
    assert_eq!(
        group_state(&a, b"g").0,
        vec![ProviderId {
            node: 1,
            instance: 1
        }]
    );
}

/// A `ringcast gs ...` process whose output lines the test reads.
struct Cli {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Cli {
    fn spawn(args: &[&str], socket: &std::path::Path) -> Cli {
        let mut child = Command::new(common::cli_bin())
            .arg("gs")
            .args(args)
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringcast gs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Cli {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing every one of `words`; returns it.
    fn expect(&mut self, words: &[&str]) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if words.iter().all(|w| line.contains(w)) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {words:?}; saw {:#?}", self.seen),
            }
        }
    }
}

/// The child's exit status, waiting at most [`EVENT_TIMEOUT`].
fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_command_line_joins_votes_watches_and_says_goodbye() {
    let cluster = start("gs-cli", 1);
    let socket = cluster.socket(1);
    let a = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let mut watch = Cli::spawn(&["watch", "g"], &socket);
    watch.expect(&["watching g"]);
    let mut provider = Cli::spawn(
        &["join", "g", "--instance", "7", "--vote", "approve"],
        &socket,
    );
    provider.expect(&["joined g as 1/7"]);
    approved(&a, ProtocolKind::Join);
    watch.expect(&["membership", "members=[1/1 1/7]", "1/7:joined"]);
    retry(|| a.change_state(&ta, b"hello".to_vec(), Phases::N, None));
    let (e, _) = nphase(&a, 1);
    a.answer(&e, Vote::plain(VoteValue::Approve)).unwrap();
    provider.expect(&["voted Approve", "phase=1"]);
    approved(&a, ProtocolKind::StateChange);
    watch.expect(&["state", "\"hello\""]);
    // SIGTERM: goodbye, exit 0; the others see said-goodbye.
    // SAFETY: signals our own unreaped child.
    unsafe { libc::kill(provider.child.id() as i32, libc::SIGTERM) };
    provider.expect(&["goodbye"]);
    let status = wait_exit(&mut provider.child).expect("exited");
    assert!(status.success(), "{status:?}");
    let e = approved(&a, ProtocolKind::FailureLeave);
    assert_eq!(
        changing(&e),
        vec![(
            ProviderId {
                node: 1,
                instance: 7
            },
            Change::Leaves(LeaveReason::SaidGoodbye)
        )]
    );
    watch.expect(&["membership", "members=[1/1]", "1/7:said-goodbye"]);
    let mut groups = Cli::spawn(&["groups"], &socket);
    groups.expect(&["providers [1/1]"]);
    groups.expect(&["state \"hello\""]);
}

#[test]
fn a_late_voter_gets_the_default_vote_and_is_announced() {
    let cluster = start("gs-late", 1);
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let tb = join(&b, b"g", 2, &[&a]);
    let limit = Duration::from_millis(500);
    retry(|| a.change_state(&ta, b"in time".to_vec(), Phases::N, Some(limit)));
    let (ea, _) = nphase(&a, 1);
    let (eb, _) = nphase(&b, 1);
    let GsEvent::NPhase { time_limit_ms, .. } = &ea else {
        unreachable!()
    };
    assert_eq!(*time_limit_ms, 500);
    let asked = Instant::now();
    a.answer(&ea, Vote::plain(VoteValue::Approve)).unwrap();
    // b does not vote: at the limit its default vote (APPROVE) counts and the
    // providers are told who was late.
    let late = ProviderId {
        node: 1,
        instance: 2,
    };
    for gs in [&a, &b] {
        match next(gs) {
            GsEvent::Announcement {
                kind, providers, ..
            } => {
                assert_eq!(kind, ringcast::gs::AnnouncementKind::VoteTimeout);
                assert_eq!(providers, vec![late]);
            }
            other => panic!("expected the late vote announced, got {other:?}"),
        }
        let GsEvent::Approved { info, .. } = approved(gs, ProtocolKind::StateChange) else {
            unreachable!()
        };
        assert_eq!(info.proposed_state.as_deref(), Some(&b"in time"[..]));
    }
    assert!(asked.elapsed() >= limit, "approved before the limit");
    // The late vote is refused (at once: this node saw the phase end).
    let GsEvent::NPhase { seq, .. } = eb else {
        unreachable!()
    };
    assert_eq!(
        b.vote(&tb, seq, 1, Vote::plain(VoteValue::Reject)),
        Err(GsError::VoteNotExpected)
    );
    assert_eq!(group_state(&a, b"g").1, b"in time");
}

fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// `ringcast gs ...` as another user (root drops to it with setpriv).
fn cli_as(uid: u32, args: &[&str], socket: &std::path::Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(common::cli_bin())
        .arg("gs")
        .args(args)
        .arg("--socket")
        .arg(socket);
    command
}

/// Access is CPG's (SO_PEERCRED against the allowed users), and a deactivate script
/// runs as the user of the client that registered it, never as the daemon's.
#[test]
fn gs_clients_pass_the_credential_check_and_scripts_run_as_their_user() {
    if euid() != 0 {
        eprintln!("skipped: needs root to run clients as other users");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::new("gs-cred", free_port(1), 1);
    cluster.extra = vec!["--set".into(), "ipc.allowed_uids=[65534]".into()];
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let socket = cluster.socket(1);
    std::fs::set_permissions(&cluster.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Refused: a user not in the list.
    let out = cli_as(65533, &["groups", "--wait", "0"], &socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Allowed: a provider as uid 65534 with a deactivate script recording its uid.
    let shared = cluster.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = shared.join("deactivate.sh");
    let out_file = shared.join("uid");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nid -u > {}\n", out_file.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let mut child = cli_as(
        65534,
        &[
            "join",
            "g",
            "--instance",
            "7",
            "--deactivate-script",
            script.to_str().unwrap(),
        ],
        &socket,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut provider = Cli {
        child,
        lines,
        seen: Vec::new(),
    };
    provider.expect(&["joined g as 1/7"]);
    approved(&a, ProtocolKind::Join);
    let target = ProviderId {
        node: 1,
        instance: 7,
    };
    retry(|| a.expel(&ta, vec![target], 1, b"f".to_vec(), Phases::One, None));
    approved(&a, ProtocolKind::Expel);
    provider.expect(&["out of g"]);
    let ran = common::wait_for(EVENT_TIMEOUT, || {
        std::fs::read_to_string(&out_file).is_ok_and(|s| s.ends_with('\n'))
    });
    assert!(ran, "the deactivate script did not run");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "65534\n");
    quiet(&a);
}

/// State values and messages larger than a socket message travel through the
/// region (requests) and in pieces on the event ring (events).
#[test]
fn large_values_travel_through_the_region_and_in_pieces() {
    // Event records of at most 128 KiB: a 512 KiB proposal arrives in pieces.
    let mut cluster = Cluster::new("gs-large", free_port(1), 1);
    cluster.extra = vec!["--set".into(), "ipc.event_ring_bytes=262144".into()];
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let a = client(&cluster, 1);
    let b = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let _tb = join(&b, b"g", 2, &[&a]);
    let value: Vec<u8> = (0..512 << 10).map(|i: u32| (i % 251) as u8).collect();
    let message: Vec<u8> = (0..200 << 10).map(|i: u32| (i % 13) as u8).collect();
    retry(|| a.change_state(&ta, value.clone(), Phases::N, None));
    for gs in [&a, &b] {
        let (e, _) = nphase(gs, 1);
        let GsEvent::NPhase { info, .. } = &e else {
            unreachable!()
        };
        assert_eq!(info.proposed_state.as_deref(), Some(&value[..]));
        let vote = Vote {
            value: VoteValue::Continue,
            state: None,
            message: Some(message.clone().into()),
            default: None,
        };
        gs.answer(&e, vote).unwrap();
    }
    for gs in [&a, &b] {
        let (e, _) = nphase(gs, 2);
        let GsEvent::NPhase { info, .. } = &e else {
            unreachable!()
        };
        assert_eq!(info.vote_messages.len(), 2);
        assert!(info.vote_messages.iter().all(|(_, m)| m[..] == message[..]));
        gs.answer(&e, Vote::plain(VoteValue::Approve)).unwrap();
    }
    for gs in [&a, &b] {
        approved(gs, ProtocolKind::StateChange);
    }
    let (_, state) = group_state(&a, b"g");
    assert_eq!(
        state,
        value[..state.len()],
        "the view shows its first bytes"
    );
    // Over the service's limit (1 MiB): refused at once.
    assert_eq!(
        a.change_state(&ta, vec![0u8; (1 << 20) + 1], Phases::One, None),
        Err(GsError::BadParameter)
    );
}

/// A provider that did not read its events says goodbye while many of them wait (in
/// its event ring and in the engine's backlog for it): none reaches it afterwards.
#[test]
fn no_event_of_a_provider_arrives_after_its_goodbye() {
    // A 128 KiB event ring (64 KiB records): most of 20 events of 30 KiB wait in the
    // engine's backlog for the session.
    let mut cluster = Cluster::new("gs-backlog", free_port(1), 1);
    cluster.extra = vec!["--set".into(), "ipc.event_ring_bytes=131072".into()];
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let a = client(&cluster, 1);
    let c = client(&cluster, 1);
    let ta = join(&a, b"g", 1, &[]);
    let tc = join(&c, b"g", 3, &[&a]);
    for i in 0..20u8 {
        retry(|| a.send_message(&ta, vec![i; 30 << 10], Phases::One, None));
        approved(&a, ProtocolKind::Message);
    }
    c.goodbye(tc).expect("goodbye");
    quiet(&c);
    let e = approved(&a, ProtocolKind::FailureLeave);
    assert_eq!(
        changing(&e),
        vec![(
            ProviderId {
                node: 1,
                instance: 3
            },
            Change::Leaves(LeaveReason::SaidGoodbye)
        )]
    );
    // The same client joins again (a new instance): it hears of the group again.
    let _again = retry(|| c.join(b"g", 4, GroupAttributes::default()));
    approved(&c, ProtocolKind::Join);
    approved(&a, ProtocolKind::Join);
}
