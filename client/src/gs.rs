//! Group Services (docs/group-services.md): providers that vote on n-phase protocols
//! over the agreed order, subscribers that watch approved changes. One [`GsClient`]
//! is one connection to the engine, IBM's `ha_gs_init`.
//!
//! ```no_run
//! use ringcast::gs::{GsClient, GsOptions, GroupAttributes, GsEvent, Phases, Vote, VoteValue};
//! use std::time::Duration;
//!
//! let gs = GsClient::connect(&GsOptions::default())?;
//! let me = gs.join(b"db", 1, GroupAttributes::default())?;
//! gs.change_state(&me, b"primary=1".to_vec(), Phases::N, Some(Duration::from_secs(5)))?;
//! while let Some(event) = gs.wait_event(Some(Duration::from_secs(10)))? {
//!     match &event {
//!         GsEvent::NPhase { .. } => gs.answer(&event, Vote::plain(VoteValue::Approve))?,
//!         GsEvent::Approved { .. } => break,
//!         _ => {}
//!     }
//! }
//! gs.goodbye(me)?;
//! # Ok::<(), ringcast::gs::GsError>(())
//! ```
//!
//! Every call but the waits is non-blocking: a request goes to the engine and its
//! answer says whether it was accepted; what happens to it comes later as events, in
//! the group's agreed order. Errors are `ha_gs_rc_t` values ([`GsError`]); a lost
//! engine is [`GsError::ConnectFailed`].
//!
//! A client is `Send + Sync` (so the thread-safe C library can sit on it): one thread
//! may wait for events while others make requests. The pollable descriptor
//! ([`GsClient::as_raw_fd`]) is readable while events are pending or when the engine
//! is gone, as `ha_gs_init`'s socket is for `select`.
//!
//! A request travels in one socket message, or, when it is larger (a large state
//! value, message or expel flag; the service takes up to 1 MiB), through this
//! connection's shared region: written there, named by the socket message, copied
//! out by the engine before it answers.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use ringcast_shm::gs_proto::MAX_GS_EVENT_BYTES;
use ringcast_shm::gs_proto::{self, GsReply, GsRequest};
use ringcast_shm::proto::{
    self, PART_FIRST, PART_LAST, PartHeader, Reply, Request, Status, Welcome, event,
};
use ringcast_shm::send_area::SendArea;
use ringcast_shm::socket::SeqPacket;
use ringcast_shm::{Consumer, EventFd, Region, RingError};

pub use ringcast_proto::cpg::GroupName;
pub use ringcast_proto::gs::{
    AnnouncementKind, Change, DefaultVote, GroupAttributes, GroupView, GsError, GsEvent,
    LeaveReason, Phases, Proposal, ProposalBody, ProposalInfo, ProtocolKind, ProviderId,
    RejectReason, RequestKind, SubscribeFlags, SubscriptionKind, Vote, VoteValue, summary,
};

use super::{epoll_over, lock, poll_readable};

/// How long a request waits for the engine's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the engine, and what `ha_gs_init` registers.
#[derive(Clone, Debug)]
pub struct GsOptions {
    /// The engine's socket (`RINGCAST_SOCKET`, else the default for this user).
    pub socket: PathBuf,
    /// Run on this node, as this process's user, when one of this client's providers
    /// is expelled (docs/group-services.md §6.5): `script FLAG GROUP INSTANCE REASON`.
    /// An absolute path.
    pub deactivate_script: Option<PathBuf>,
    /// How long to wait for an engine that is starting (0: fail at once).
    pub connect_wait: Duration,
}

impl Default for GsOptions {
    fn default() -> GsOptions {
        GsOptions {
            socket: std::env::var_os("RINGCAST_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(ringcast_shm::paths::socket),
            deactivate_script: None,
            connect_wait: Duration::ZERO,
        }
    }
}

/// This client's provider of a group (IBM's provider token): from [`GsClient::join`],
/// dead after an approved leave or expel, a goodbye, a rejected join, a failure leave
/// of its own, or a [`GsEvent::Merge`]. A client has at most one provider per group,
/// so the group names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderToken {
    group: GroupName,
    instance: u16,
}

impl ProviderToken {
    pub fn group(&self) -> &GroupName {
        &self.group
    }
    pub fn instance(&self) -> u16 {
        self.instance
    }
}

/// This client's subscription to a group (IBM's subscriber token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberToken {
    group: GroupName,
}

impl SubscriberToken {
    pub fn group(&self) -> &GroupName {
        &self.group
    }
}

/// The group an event is about.
pub fn event_group(event: &GsEvent) -> &GroupName {
    match event {
        GsEvent::NPhase { group, .. }
        | GsEvent::Approved { group, .. }
        | GsEvent::Rejected { group, .. }
        | GsEvent::Announcement { group, .. }
        | GsEvent::Subscription { group, .. }
        | GsEvent::DelayedError { group, .. }
        | GsEvent::Merge { group, .. } => group,
    }
}

/// The receiving side, used by one waiting thread at a time.
struct Receiver {
    events: Consumer,
    /// A large event arriving in pieces: its length and the bytes so far.
    assembly: Option<(usize, Vec<u8>)>,
    /// The pollable fd was made readable by us and not cleared since.
    self_signaled: bool,
    /// Events read off the ring at a goodbye (to drop the departed provider's), handed
    /// out before the ring's; bounded by what the ring held.
    stash: std::collections::VecDeque<GsEvent>,
    /// Providers this client said goodbye to: any event of theirs still on its way
    /// (one the engine had started writing into the ring) is dropped, until this
    /// client joins the group again. At most one entry per group.
    departed: Vec<(GroupName, u16)>,
}

/// One connection to the engine: `ha_gs_init` .. `ha_gs_quit` (dropping it quits).
pub struct GsClient {
    socket: Mutex<SeqPacket>,
    receiver: Mutex<Receiver>,
    /// Keeps the event ring's memory mapped.
    _region: Arc<Region>,
    wake: EventFd,
    /// The engine's eventfd (kept open: the engine may look for it).
    _engine_wake: EventFd,
    /// epoll over `wake` and the socket.
    poll_fd: OwnedFd,
    node_id: u32,
    /// The region's buffer pool, for requests larger than a socket message (None when
    /// the engine gave the region no pool).
    area: Option<Arc<SendArea>>,
}

impl std::fmt::Debug for GsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsClient")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// A lost or broken engine connection, whatever the cause: one error code (the
/// library does not log).
fn gone(_why: impl std::fmt::Display) -> GsError {
    GsError::ConnectFailed
}

/// The socket, waiting up to `wait` for an engine that is starting.
fn connect_socket(options: &GsOptions) -> Result<SeqPacket, GsError> {
    let deadline = Instant::now() + options.connect_wait;
    loop {
        match SeqPacket::connect(&options.socket) {
            Ok(socket) => return Ok(socket),
            Err(e) => {
                let absent = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if absent && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                return Err(gone(e));
            }
        }
    }
}

/// Hello and Welcome: the engine checks this process's credentials (as for CPG) and
/// hands over the region and the eventfds.
fn handshake(socket: &SeqPacket) -> Result<(Welcome, Vec<OwnedFd>), GsError> {
    socket.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(gone)?;
    let hello = Request::Hello {
        version: proto::PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    socket.send(&hello.encode(), &[]).map_err(gone)?;
    let mut buf = vec![0u8; proto::MAX_SOCKET_MESSAGE_BYTES];
    let (n, fds) = socket
        .recv(&mut buf)
        .map_err(gone)?
        .ok_or(GsError::ConnectFailed)?;
    let welcome = Welcome::decode(&buf[..n]).map_err(gone)?;
    match welcome.status {
        Status::Ok => {}
        // Not allowed to connect (SO_PEERCRED): IBM's "not authorised" is NOT_OK.
        Status::Access => return Err(GsError::NotOk),
        Status::NoMemory | Status::NoResources => return Err(GsError::NoMemory),
        _ => return Err(GsError::ConnectFailed),
    }
    if welcome.version != proto::PROTOCOL_VERSION {
        return Err(GsError::ConnectFailed);
    }
    let want = 3 + usize::from(welcome.delivery_pool_bytes > 0);
    if fds.len() != want {
        return Err(GsError::ConnectFailed);
    }
    Ok((welcome, fds))
}

impl GsClient {
    /// `ha_gs_init`: connects and registers this client (with its deactivate script).
    pub fn connect(options: &GsOptions) -> Result<GsClient, GsError> {
        let script = match &options.deactivate_script {
            Some(p) if !p.is_absolute() => return Err(GsError::BadParameter),
            Some(p) => Some(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec()),
            None => None,
        };
        let socket = connect_socket(options)?;
        let (welcome, mut fds) = handshake(&socket)?;
        // The delivery pool (4th, when the engine has one) carries no GS event.
        fds.truncate(3);
        let engine_wake = EventFd::from_owned(fds.pop().ok_or(GsError::ConnectFailed)?);
        let wake = EventFd::from_owned(fds.pop().ok_or(GsError::ConnectFailed)?);
        let region =
            Arc::new(Region::open(fds.pop().ok_or(GsError::ConnectFailed)?).map_err(gone)?);
        let events = region.event_consumer().ok_or(GsError::ConnectFailed)?;
        let poll_fd = epoll_over(&[wake.as_raw_fd(), socket.as_raw_fd()]).map_err(gone)?;
        let client = GsClient {
            socket: Mutex::new(socket),
            receiver: Mutex::new(Receiver {
                events,
                assembly: None,
                self_signaled: false,
                stash: std::collections::VecDeque::new(),
                departed: Vec::new(),
            }),
            area: SendArea::in_region(region.clone()),
            _region: region,
            wake,
            _engine_wake: engine_wake,
            poll_fd,
            node_id: welcome.node_id,
        };
        client.done(GsRequest::Connect { script })?;
        client.arm();
        Ok(client)
    }

    /// This node's number (`ha_gs_get_node_number`): the `node` of this client's
    /// providers.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    // ------------------------------------------------------------------ requests

    fn request(&self, request: GsRequest) -> Result<GsReply, GsError> {
        let encoded = Request::Gs(request.clone()).encode();
        if encoded.len() <= proto::MAX_SOCKET_MESSAGE_BYTES {
            return self.exchange(&encoded);
        }
        // Too large for the socket: through the region's pool.
        let body = request.encode_body();
        let area = self.area.as_ref().ok_or(GsError::BadParameter)?;
        if body.len() > area.capacity() {
            return Err(GsError::BadParameter);
        }
        let mut buf = area.alloc(body.len()).ok_or(GsError::TryAgain)?;
        buf.copy_from_slice(&body);
        let sent = buf.into_sent();
        let named = GsRequest::InPool {
            offset: sent.offset(),
            len: body.len() as u64,
        };
        let reply = self.exchange(&Request::Gs(named).encode());
        // The engine copied it out before answering (or never will: it is gone).
        area.free(sent);
        reply
    }

    /// One request out, its reply in.
    fn exchange(&self, encoded: &[u8]) -> Result<GsReply, GsError> {
        let socket = lock(&self.socket);
        socket.send(encoded, &[]).map_err(gone)?;
        let mut buf = vec![0u8; proto::MAX_SOCKET_MESSAGE_BYTES];
        let n = match socket.recv(&mut buf) {
            Ok(Some((n, _))) => n,
            Ok(None) => return Err(GsError::ConnectFailed),
            Err(e) => return Err(gone(e)),
        };
        match Reply::decode(&buf[..n]) {
            Ok(Reply::Gs(reply)) => Ok(reply),
            _ => Err(GsError::ConnectFailed),
        }
    }

    fn done(&self, request: GsRequest) -> Result<(), GsError> {
        match self.request(request)? {
            GsReply::Done(result) => result,
            GsReply::Groups { .. } => Err(GsError::ConnectFailed),
        }
    }

    /// `ha_gs_join`: asks to become a provider of `group` with `instance` (unique per
    /// group on this node) and the group's attributes (the group is created with
    /// them if it does not exist). The token is usable once this client's own
    /// [`GsEvent::Approved`] of the join arrives; a refusal found later comes as a
    /// [`GsEvent::DelayedError`] or a [`GsEvent::Rejected`].
    pub fn join(
        &self,
        group: &[u8],
        instance: u16,
        attrs: GroupAttributes,
    ) -> Result<ProviderToken, GsError> {
        let name = group_name(group)?;
        lock(&self.receiver).departed.retain(|(g, _)| *g != name);
        self.done(GsRequest::Join {
            group: group.to_vec(),
            instance,
            attrs,
        })?;
        Ok(ProviderToken {
            group: name,
            instance,
        })
    }

    /// `ha_gs_subscribe`: approved changes of `group`'s membership and/or state value,
    /// as [`GsEvent::Subscription`]s. An unknown group is a delayed `UnknownGroup`.
    pub fn subscribe(
        &self,
        group: &[u8],
        what: SubscribeFlags,
    ) -> Result<SubscriberToken, GsError> {
        let name = group_name(group)?;
        self.done(GsRequest::Subscribe {
            group: group.to_vec(),
            flags: what,
        })?;
        Ok(SubscriberToken { group: name })
    }

    /// `ha_gs_unsubscribe`.
    pub fn unsubscribe(&self, token: SubscriberToken) -> Result<(), GsError> {
        self.done(GsRequest::Unsubscribe {
            group: token.group.as_bytes().to_vec(),
        })
    }

    /// Proposes a protocol (leave, expel, state value change, provider message,
    /// attribute change). `Collide` when another protocol runs or waits; the outcome
    /// comes as events. The helpers below build the common proposals.
    pub fn propose(&self, token: &ProviderToken, proposal: Proposal) -> Result<(), GsError> {
        self.done(GsRequest::Propose {
            group: token.group.as_bytes().to_vec(),
            proposal,
        })
    }

    /// `ha_gs_leave` with the application's leave code.
    pub fn leave(
        &self,
        token: &ProviderToken,
        code: u32,
        phases: Phases,
        time_limit: Option<Duration>,
    ) -> Result<(), GsError> {
        self.propose(
            token,
            proposal(ProposalBody::Leave { code }, phases, time_limit),
        )
    }

    /// `ha_gs_expel`: `targets` leave with reason `Expelled`; each one's deactivate
    /// script runs on its node at the start of phase `deactivate_phase` (0: none).
    pub fn expel(
        &self,
        token: &ProviderToken,
        targets: Vec<ProviderId>,
        deactivate_phase: u32,
        flag: impl Into<Bytes>,
        phases: Phases,
        time_limit: Option<Duration>,
    ) -> Result<(), GsError> {
        let body = ProposalBody::Expel {
            targets,
            deactivate_phase,
            flag: flag.into(),
        };
        self.propose(token, proposal(body, phases, time_limit))
    }

    /// `ha_gs_change_state_value`.
    pub fn change_state(
        &self,
        token: &ProviderToken,
        state: impl Into<Bytes>,
        phases: Phases,
        time_limit: Option<Duration>,
    ) -> Result<(), GsError> {
        let body = ProposalBody::ChangeState {
            state: state.into(),
        };
        self.propose(token, proposal(body, phases, time_limit))
    }

    /// `ha_gs_send_message`: to every provider, never to subscribers.
    pub fn send_message(
        &self,
        token: &ProviderToken,
        data: impl Into<Bytes>,
        phases: Phases,
        time_limit: Option<Duration>,
    ) -> Result<(), GsError> {
        let body = ProposalBody::Message { data: data.into() };
        self.propose(token, proposal(body, phases, time_limit))
    }

    /// `ha_gs_change_attributes`: they apply from the next protocol.
    pub fn change_attributes(
        &self,
        token: &ProviderToken,
        attrs: GroupAttributes,
        phases: Phases,
        time_limit: Option<Duration>,
    ) -> Result<(), GsError> {
        let body = ProposalBody::ChangeAttributes(attrs);
        self.propose(token, proposal(body, phases, time_limit))
    }

    /// `ha_gs_vote` for phase `phase` of protocol `seq` (from the
    /// [`GsEvent::NPhase`] it answers; [`GsClient::answer`] takes them from it).
    pub fn vote(
        &self,
        token: &ProviderToken,
        seq: u64,
        phase: u32,
        vote: Vote,
    ) -> Result<(), GsError> {
        self.done(GsRequest::Vote {
            group: token.group.as_bytes().to_vec(),
            seq,
            phase,
            vote,
        })
    }

    /// Votes on `notification`, which must be a [`GsEvent::NPhase`] of this client
    /// (else `BadParameter`).
    pub fn answer(&self, notification: &GsEvent, vote: Vote) -> Result<(), GsError> {
        let GsEvent::NPhase {
            group,
            provider,
            seq,
            phase,
            ..
        } = notification
        else {
            return Err(GsError::BadParameter);
        };
        let token = ProviderToken {
            group: group.clone(),
            instance: provider.instance,
        };
        self.vote(&token, *seq, *phase, vote)
    }

    /// `ha_gs_goodbye`: the provider is out at once (no further event of it reaches
    /// this client); the others see a failure leave with `SaidGoodbye`, and the
    /// group's default vote stands in for it in a protocol that runs.
    pub fn goodbye(&self, token: ProviderToken) -> Result<(), GsError> {
        self.done(GsRequest::Goodbye {
            group: token.group.as_bytes().to_vec(),
        })?;
        // The engine sends nothing more for it; what it sent before is in the ring:
        // read it now and drop that provider's part.
        let me = ProviderId {
            node: self.node_id,
            instance: token.instance,
        };
        let mut receiver = lock(&self.receiver);
        receiver.departed.retain(|(g, _)| *g != token.group);
        receiver
            .departed
            .push((token.group.clone(), token.instance));
        while let Some(event) = take_one(&mut receiver)? {
            if !is_provider_event(&event, &token.group, me) {
                receiver.stash.push_back(event);
            }
        }
        drop(receiver);
        self.arm();
        Ok(())
    }

    /// Every group of this node's replicated table (what `ringcast gs groups` shows;
    /// state values cut to their first bytes), and whether more did not fit.
    pub fn groups(&self) -> Result<(Vec<GroupView>, bool), GsError> {
        match self.request(GsRequest::Groups)? {
            GsReply::Groups { groups, truncated } => Ok((groups, truncated)),
            GsReply::Done(Err(e)) => Err(e),
            GsReply::Done(Ok(())) => Err(GsError::ConnectFailed),
        }
    }

    /// `ha_gs_quit`: every provider of this client fails (`ProcessFailed`).
    pub fn quit(self) {}

    // ------------------------------------------------------------------ events

    /// The next event if one is pending (`ha_gs_dispatch(HA_GS_NON_BLOCKING)`, one
    /// event). `ConnectFailed` once the engine is gone and every event was read.
    pub fn poll_event(&self) -> Result<Option<GsEvent>, GsError> {
        self.wait_event(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (`None`: for ever) for the next event.
    pub fn wait_event(&self, timeout: Option<Duration>) -> Result<Option<GsEvent>, GsError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut receiver = lock(&self.receiver);
        let result = loop {
            match take_one(&mut receiver) {
                Err(e) => break Err(e),
                Ok(Some(event)) => break Ok(Some(event)),
                Ok(None) => {}
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        if receiver.events.is_empty() && self.engine_gone() {
                            break Err(GsError::ConnectFailed);
                        }
                        break Ok(None);
                    }
                },
                None => None,
            };
            if let Err(e) = self.sleep(&mut receiver, left) {
                break Err(e);
            }
        };
        drop(receiver);
        self.arm();
        result
    }

    /// Waits up to `timeout` for the pollable descriptor to become readable (events
    /// pending, or the engine gone). True if it did.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, GsError> {
        poll_readable(self.poll_fd.as_raw_fd(), timeout).map_err(gone)
    }

    fn engine_gone(&self) -> bool {
        let socket = lock(&self.socket);
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Sleeps until the engine publishes (or `timeout`, at most 100 ms at a time).
    fn sleep(&self, receiver: &mut Receiver, timeout: Option<Duration>) -> Result<(), GsError> {
        if !receiver.events.prepare_sleep() {
            return Ok(());
        }
        let nap = Duration::from_millis(100);
        let t = timeout.map_or(nap, |t| t.min(nap));
        let r = poll_readable(self.poll_fd.as_raw_fd(), Some(t));
        receiver.events.cancel_sleep();
        let _ = self.wake.drain();
        receiver.self_signaled = false;
        r.map_err(gone)?;
        // The socket first, then the ring: the engine publishes its last events before
        // it closes.
        if self.engine_gone() && receiver.events.is_empty() {
            return Err(GsError::ConnectFailed);
        }
        Ok(())
    }

    /// Leaves the pollable fd readable exactly when events are pending.
    fn arm(&self) {
        let Ok(mut receiver) = self.receiver.try_lock() else {
            return;
        };
        let pending = !receiver.events.is_empty() || !receiver.stash.is_empty();
        if pending && receiver.self_signaled {
            return;
        }
        let _ = self.wake.drain();
        receiver.self_signaled = false;
        if pending || !receiver.events.prepare_sleep() {
            let _ = self.wake.notify();
            receiver.self_signaled = true;
        }
    }
}

/// The instance of a provider's event (none for a subscriber's or a delayed error).
fn provider_instance(event: &GsEvent) -> Option<u16> {
    match event {
        GsEvent::NPhase { provider, .. }
        | GsEvent::Approved { provider, .. }
        | GsEvent::Rejected { provider, .. }
        | GsEvent::Announcement { provider, .. }
        | GsEvent::Merge { provider, .. } => Some(provider.instance),
        GsEvent::Subscription { .. } | GsEvent::DelayedError { .. } => None,
    }
}

/// Whether `event` is for this client's provider `me` of `group`.
fn is_provider_event(event: &GsEvent, group: &GroupName, me: ProviderId) -> bool {
    let provider = match event {
        GsEvent::NPhase { provider, .. }
        | GsEvent::Approved { provider, .. }
        | GsEvent::Rejected { provider, .. }
        | GsEvent::Announcement { provider, .. }
        | GsEvent::Merge { provider, .. } => *provider,
        GsEvent::Subscription { .. } | GsEvent::DelayedError { .. } => return false,
    };
    provider == me && event_group(event) == group
}

/// The next GS event: stashed ones first, then the ring (assembling pieces); `None`
/// when there is none.
fn take_one(receiver: &mut Receiver) -> Result<Option<GsEvent>, GsError> {
    if let Some(event) = receiver.stash.pop_front() {
        return Ok(Some(event));
    }
    loop {
        let record = match receiver.events.peek() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(RingError::Corrupt(_)) => return Err(GsError::ConnectFailed),
        };
        let whole = match record.kind {
            event::GS_EVENT => Some(record.payload.to_vec()),
            event::GS_EVENT_PART => {
                let (h, piece) = PartHeader::read(record.payload).map_err(gone)?;
                add_piece(&mut receiver.assembly, h, piece)?
            }
            // Nothing else is sent to a GS-only connection.
            _ => None,
        };
        receiver.events.consume();
        if let Some(bytes) = whole {
            let event = gs_proto::decode_event(&bytes).map_err(gone)?;
            let departed = receiver
                .departed
                .iter()
                .any(|(g, i)| event_group(&event) == g && provider_instance(&event) == Some(*i));
            if !departed {
                return Ok(Some(event));
            }
        }
    }
}

/// Appends one piece; the whole event when it was the last.
fn add_piece(
    assembly: &mut Option<(usize, Vec<u8>)>,
    h: PartHeader,
    piece: &[u8],
) -> Result<Option<Vec<u8>>, GsError> {
    if h.flags & PART_FIRST != 0 {
        let total = usize::try_from(h.total_len).map_err(gone)?;
        if total > MAX_GS_EVENT_BYTES {
            return Err(GsError::ConnectFailed);
        }
        *assembly = Some((total, Vec::with_capacity(total)));
    }
    let Some((total, buf)) = assembly.as_mut() else {
        return Err(GsError::ConnectFailed);
    };
    if buf.len() + piece.len() > *total {
        return Err(GsError::ConnectFailed);
    }
    buf.extend_from_slice(piece);
    if h.flags & PART_LAST == 0 {
        return Ok(None);
    }
    let (total, buf) = assembly.take().expect("checked above");
    if buf.len() != total {
        return Err(GsError::ConnectFailed);
    }
    Ok(Some(buf))
}

fn group_name(group: &[u8]) -> Result<GroupName, GsError> {
    GroupName::new(group).map_err(|e| match e {
        ringcast_proto::cpg::CpgError::NameTooLong => GsError::NameTooLong,
        _ => GsError::BadParameter,
    })
}

fn proposal(body: ProposalBody, phases: Phases, time_limit: Option<Duration>) -> Proposal {
    Proposal {
        body,
        phases,
        time_limit_ms: time_limit.map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
    }
}

impl AsFd for GsClient {
    /// Readable while events are pending or the engine is gone (level-triggered).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd.as_fd()
    }
}

impl AsRawFd for GsClient {
    fn as_raw_fd(&self) -> RawFd {
        self.poll_fd.as_raw_fd()
    }
}
