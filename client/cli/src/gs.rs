//! `ringcast gs ...`: Group Services from the command line (docs/group-services.md).
//!
//! ```text
//! ringcast gs groups                      # every GS group: providers, state, protocol, pending
//! ringcast gs watch GROUP                 # a subscriber: one line per approved change
//! ringcast gs join GROUP [--state V] [--vote approve|continue|reject]
//! ```
//!
//! Providers are written `node/instance`; each membership change names every changing
//! provider with its reason: `joined`, `left`, `process-failed`, `node-failed`,
//! `expelled`, `said-goodbye` (`cast-out` after a lost merge).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use ringcast::gs::{
    Change, GroupAttributes, GroupView, GsClient, GsError, GsEvent, GsOptions, Phases,
    ProposalInfo, ProtocolKind, ProviderId, ProviderToken, SubscribeFlags, Vote, VoteValue,
};

use super::{ConnArgs, fail};

#[derive(Subcommand, Debug)]
pub(super) enum GsCommand {
    /// Every GS group of this node's table: providers, state value, the protocol in
    /// progress and the pending membership changes.
    Groups {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Subscribe to GROUP and print one line per approved membership or state value
    /// change until interrupted.
    Watch {
        /// The group to watch (it must exist).
        group: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Join GROUP as a provider that votes as told in every phase and prints what it
    /// sees; on SIGINT or SIGTERM it says goodbye and exits 0.
    Join {
        /// The group to join (created if it does not exist, with default attributes).
        group: String,
        #[command(flatten)]
        conn: ConnArgs,
        /// Once joined, propose this state value (an n-phase protocol).
        #[arg(long, value_name = "VALUE")]
        state: Option<String>,
        /// The vote in every phase.
        #[arg(long, value_enum, default_value_t = VoteArg::Approve)]
        vote: VoteArg,
        /// The provider's instance number [default: from the process id].
        #[arg(long)]
        instance: Option<u16>,
        /// Run this program (an absolute path) on this node, as this user, if the
        /// provider is expelled: `PROGRAM FLAG GROUP INSTANCE expelled`.
        #[arg(long, value_name = "PATH")]
        deactivate_script: Option<std::path::PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub(super) enum VoteArg {
    Approve,
    Continue,
    Reject,
}

impl VoteArg {
    fn value(self) -> VoteValue {
        match self {
            VoteArg::Approve => VoteValue::Approve,
            VoteArg::Continue => VoteValue::Continue,
            VoteArg::Reject => VoteValue::Reject,
        }
    }
}

pub(super) fn run(command: GsCommand) -> ExitCode {
    match command {
        GsCommand::Groups { conn } => groups(&conn),
        GsCommand::Watch { group, conn } => watch(&conn, &group),
        GsCommand::Join {
            group,
            conn,
            state,
            vote,
            instance,
            deactivate_script,
        } => {
            let instance = instance.unwrap_or((std::process::id() % 65_535) as u16 + 1);
            let provider = Provider {
                state,
                vote,
                instance,
                deactivate_script,
            };
            join(&conn, &group, provider)
        }
    }
}

/// What `gs join` was told.
struct Provider {
    state: Option<String>,
    vote: VoteArg,
    instance: u16,
    deactivate_script: Option<std::path::PathBuf>,
}

fn connect(conn: &ConnArgs) -> Result<GsClient, ExitCode> {
    connect_with(conn, None)
}

fn connect_with(
    conn: &ConnArgs,
    deactivate_script: Option<std::path::PathBuf>,
) -> Result<GsClient, ExitCode> {
    if !(conn.wait.is_finite() && conn.wait >= 0.0) {
        return Err(fail("--wait must be a number of seconds, 0 or more"));
    }
    let options = GsOptions {
        socket: conn.socket.clone().unwrap_or_else(ringcast::default_socket),
        deactivate_script,
        connect_wait: Duration::from_secs_f64(conn.wait),
    };
    GsClient::connect(&options).map_err(|e| {
        let why = match e {
            GsError::NotOk => {
                "this user may not connect (the engine's ipc.allowed_uids, ipc.allowed_gids)"
            }
            GsError::BadParameter => "the deactivate script must be an absolute path",
            _ => "is ringcastd running?",
        };
        fail(&format!(
            "cannot connect to the engine at {}: {e}: {why}",
            options.socket.display()
        ))
    })
}

/// Retries `TryAgain` (the ring forming, a sync running) for up to 10 seconds.
fn retry<T>(mut f: impl FnMut() -> Result<T, GsError>) -> Result<T, GsError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(GsError::TryAgain) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn ids(list: &[ProviderId]) -> String {
    let v: Vec<String> = list.iter().map(|p| p.to_string()).collect();
    v.join(" ")
}

/// `node/instance:word` for each changing provider.
pub fn changes(list: &[(ProviderId, Change)]) -> String {
    let v: Vec<String> = list
        .iter()
        .map(|(p, c)| match c {
            Change::Joins => format!("{p}:joined"),
            Change::Leaves(r) => format!("{p}:{}", r.word()),
        })
        .collect();
    v.join(" ")
}

fn kind_word(k: ProtocolKind) -> &'static str {
    match k {
        ProtocolKind::Join => "join",
        ProtocolKind::Leave => "leave",
        ProtocolKind::FailureLeave => "failure-leave",
        ProtocolKind::Expel => "expel",
        ProtocolKind::StateChange => "state-change",
        ProtocolKind::Message => "message",
        ProtocolKind::AttributeChange => "attribute-change",
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

fn group_block(g: &GroupView) -> String {
    let providers: Vec<String> = g
        .providers
        .iter()
        .map(|(p, failed)| match failed {
            None => p.to_string(),
            Some(r) => format!("{p}({})", r.word()),
        })
        .collect();
    let protocol = match g.active {
        None => "idle".to_string(),
        Some((k, phase)) => format!(
            "{} phase {phase} waiting for [{}]",
            kind_word(k),
            ids(&g.waiting_for)
        ),
    };
    format!(
        "{}\n    providers [{}]\n    state {:?}\n    protocol {protocol} (seq {})\n    pending {}",
        String::from_utf8_lossy(g.name.as_bytes()),
        providers.join(" "),
        text(&g.state),
        g.seq,
        g.pending
    )
}

fn groups(conn: &ConnArgs) -> ExitCode {
    let gs = match connect(conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match gs.groups() {
        Ok((groups, truncated)) => {
            if groups.is_empty() {
                say!("no groups");
            }
            for g in &groups {
                say!("{}", group_block(g));
            }
            if truncated {
                say!("(more groups than one reply holds)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("gs groups: {e}")),
    }
}

fn watch(conn: &ConnArgs, group: &str) -> ExitCode {
    let gs = match connect(conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let flags = SubscribeFlags {
        membership: true,
        state: true,
    };
    if let Err(e) = retry(|| gs.subscribe(group.as_bytes(), flags)) {
        return fail(&format!("subscribe {group}: {e}"));
    }
    say!("watching {group}");
    loop {
        match gs.wait_event(None) {
            Ok(Some(GsEvent::Subscription {
                seq,
                kind,
                state,
                members,
                changing,
                ..
            })) => {
                if kind.membership || kind.merged {
                    let merged = if kind.merged { " merged" } else { "" };
                    say!(
                        "membership seq={seq}{merged} members=[{}] {}",
                        ids(&members),
                        changes(&changing)
                    );
                }
                if let Some(state) = state.filter(|_| kind.state) {
                    say!("state seq={seq} value={:?}", text(&state));
                }
                if kind.dissolved {
                    say!("dissolved seq={seq}");
                    return ExitCode::SUCCESS;
                }
            }
            Ok(Some(GsEvent::DelayedError { error, .. })) => {
                return fail(&format!("subscribe {group}: {error}"));
            }
            Ok(_) => {}
            Err(e) => return fail(&format!("gs watch: {e}")),
        }
    }
}

fn info_line(info: &ProposalInfo) -> String {
    let mut line = format!("kind={}", kind_word(info.kind));
    if let Some(p) = info.proposer {
        line += &format!(" proposer={p}");
    }
    if !info.changing.is_empty() {
        line += &format!(" changes=[{}]", changes(&info.changing));
    }
    if let Some(s) = &info.proposed_state {
        line += &format!(" proposed-state={:?}", text(s));
    }
    if let Some(m) = &info.message {
        line += &format!(" message={:?}", text(m));
    }
    line
}

/// Prints one event as a provider sees it; votes on n-phase notifications.
fn provider_event(gs: &GsClient, event: &GsEvent, vote: VoteArg) -> Result<(), String> {
    match event {
        GsEvent::NPhase {
            seq, phase, info, ..
        } => {
            say!("nphase seq={seq} phase={phase} {}", info_line(info));
            match gs.answer(event, Vote::plain(vote.value())) {
                Ok(()) => say!("voted {vote:?} seq={seq} phase={phase}"),
                Err(e) => say!("vote refused seq={seq} phase={phase}: {e}"),
            }
        }
        GsEvent::Approved {
            seq, info, summary, ..
        } => say!(
            "approved seq={seq} {} members=[{}] summary={summary}",
            info_line(info),
            ids(&info.members)
        ),
        GsEvent::Rejected {
            seq, info, reason, ..
        } => say!("rejected seq={seq} {} reason={reason:?}", info_line(info)),
        GsEvent::Announcement {
            kind, providers, ..
        } => say!("announcement {kind:?} [{}]", ids(providers)),
        GsEvent::DelayedError { request, error, .. } => {
            say!("error {request:?}: {error}");
        }
        GsEvent::Merge { provider, .. } => {
            say!("merge: {provider} cast out");
            return Err("cast out by a merge".into());
        }
        GsEvent::Subscription { .. } => {}
    }
    Ok(())
}

fn join(conn: &ConnArgs, group: &str, provider: Provider) -> ExitCode {
    let Provider {
        state,
        vote,
        instance,
        deactivate_script,
    } = provider;
    let signals = match signals::Termination::block() {
        Ok(s) => s,
        Err(e) => return fail(&format!("signals: {e}")),
    };
    let gs = match connect_with(conn, deactivate_script) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let token = match retry(|| gs.join(group.as_bytes(), instance, GroupAttributes::default())) {
        Ok(t) => t,
        Err(e) => return fail(&format!("join {group}: {e}")),
    };
    let me = ProviderId {
        node: gs.node_id(),
        instance,
    };
    say!("joining {group} as {me}");
    let mut state = state;
    loop {
        if signals.pending() {
            return goodbye(&gs, token);
        }
        let event = match gs.wait_event(Some(Duration::from_millis(100))) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => return fail(&format!("gs join: {e}")),
        };
        if let Err(why) = provider_event(&gs, &event, vote) {
            return fail(&why);
        }
        if ends_provider(&event, me) {
            say!("out of {group}");
            return ExitCode::SUCCESS;
        }
        if is_own_join(&event, me) {
            say!("joined {group} as {me}");
            if let Some(value) = state.take() {
                let value = value.into_bytes();
                match retry(|| gs.change_state(&token, value.clone(), Phases::N, None)) {
                    Ok(()) => say!("proposed state"),
                    Err(e) => say!("state change refused: {e}"),
                }
            }
        }
    }
}

fn is_own_join(event: &GsEvent, me: ProviderId) -> bool {
    matches!(event, GsEvent::Approved { info, .. }
        if info.kind == ProtocolKind::Join && info.changing.iter().any(|(p, _)| *p == me))
}

/// Whether `event` took `me` out of the group (an approved leave or expel of it, a
/// rejected join).
fn ends_provider(event: &GsEvent, me: ProviderId) -> bool {
    match event {
        GsEvent::Approved { info, .. } => info
            .changing
            .iter()
            .any(|(p, c)| *p == me && matches!(c, Change::Leaves(_))),
        GsEvent::Rejected { info, .. } => info.kind == ProtocolKind::Join,
        _ => false,
    }
}

fn goodbye(gs: &GsClient, token: ProviderToken) -> ExitCode {
    match gs.goodbye(token) {
        Ok(()) => {
            say!("goodbye");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("goodbye: {e}")),
    }
}

/// SIGINT and SIGTERM as a flag the provider loop looks at between events.
mod signals {
    /// SIGINT and SIGTERM blocked in this process, so that they stay pending until
    /// [`Termination::pending`] takes them.
    pub struct Termination {
        set: libc::sigset_t,
    }

    impl Termination {
        /// Call before any thread exists (the mask is inherited by threads).
        pub fn block() -> std::io::Result<Termination> {
            // SAFETY: sigemptyset/sigaddset fill a set we own; `zeroed` is a valid
            // starting value for the plain C sigset_t.
            let set = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::sigaddset(&mut set, libc::SIGTERM);
                set
            };
            // SAFETY: a valid set; a null old-set pointer is allowed.
            let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(Termination { set })
        }

        /// Whether SIGINT or SIGTERM arrived (taking it).
        pub fn pending(&self) -> bool {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid set and timeout; a null siginfo pointer is allowed.
            let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &zero) };
            sig > 0
        }
    }
}
