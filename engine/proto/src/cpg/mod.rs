#![forbid(unsafe_code)]
//! The CPG service (docs/cpg.md §3 and §5) as a pure state machine on top of Totem's
//! agreed deliveries.
//!
//! The replicated group table changes only through messages in Totem's total order
//! (JOIN, LEAVE, PROCDOWN, and the JOINLISTs of the synchronisation after each
//! configuration change), so every engine applies identical changes in the same order.
//! No IO, no clock, no threads; every map is ordered, so outputs never depend on hash
//! order. The caller:
//! - feeds every [`totem::Event`](crate::totem::Event) in order to
//!   [`Service::handle_totem_event`];
//! - turns client requests into [`Service::join`], [`Service::leave`],
//!   [`Service::mcast`], [`Service::disconnect`] and the queries;
//! - calls [`Service::poll`] after Totem had a chance to drain its queues (it retries
//!   submissions that Totem refused for lack of room);
//! - drains [`Service::poll_event`] after every call: events for local connections, in
//!   order. The queue holds what one call produced (at most a fan-out per connection
//!   per delivered message, or one activation); a caller that drains after every call
//!   keeps it bounded.
//!
//! # Synchronisation (docs/cpg.md §5.5)
//!
//! After every regular Totem configuration each node multicasts one JOINLIST (its own
//! members, possibly none; it doubles as the barrier) tagged with the ring id. When the
//! JOINLISTs of every member of the ring have been delivered on that ring, the sync
//! activates: NODEDOWN confchgs for the members of nodes that left since the last
//! activation, NODEUP for members found in other nodes' joinlists, PROCDOWN for remote
//! members that no joinlist mentions (zombies), then a TOTEM_CONFCHG to every
//! connection. After activation every node's table is the union of the joinlists, so
//! all nodes of the ring agree whatever they believed before.
//!
//! Application messages (JOIN, LEAVE, PROCDOWN, MCAST) must be ordered after the
//! activation on every node. With a Totem that has the sync barrier
//! (`totem::Config::sync_barrier`, [`TotemSubmit`]) they are: Totem holds them until
//! [`Submit::sync_done`] (Corosync's "waiting for sync" queue). A [`Submit`] without
//! that barrier may get them ordered on the new ring before the last JOINLIST: they are
//! then held and applied right after activation, in order; if the sync is aborted by
//! yet another configuration first, they are applied at that point instead, before the
//! next sync starts. The next joinlists then reconcile the tables, but until then
//! members may see views that differ between nodes, and a member may miss a message
//! that the sender-node filter drops on its node only: use the barrier. (Measured in
//! the simulator without it: 100 seeds kept order and converged, and 361 messages
//! were dropped by that filter; with it, none.)
//!
//! A JOINLIST holds this node's members, at most `Limits::max_connections`, so it fits
//! one Totem message of [`Limits::totem_message_bytes`] (asserted).

mod codec;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::totem::{
    self, ConfigurationChange, ConfigurationKind, Delivery, Guarantee, Instant, NodeId, RingId,
    SubmitError,
};
use codec::Message;
pub use codec::{JOINLIST_ENTRY_MAX, MCAST_HEADER_MAX, Malformed, joinlist_bytes_max};

/// A local client connection, chosen by the caller.
pub type ConnId = u64;

/// `CPG_MAX_NAME_LENGTH` (docs/cpg.md §2.4).
pub const MAX_NAME_BYTES: usize = 128;

/// A group name: 1..=128 arbitrary bytes (not a C string), ordered by length and then
/// bytes, as Corosync compares them (docs/cpg.md §2.4).
#[derive(Clone)]
pub struct GroupName(NameRepr);

/// Names up to this long are kept inline: cloning one (per delivery and receiver) is a
/// copy, not an atomic reference count.
const INLINE_NAME_BYTES: usize = 46;

#[derive(Clone)]
enum NameRepr {
    Inline {
        len: u8,
        bytes: [u8; INLINE_NAME_BYTES],
    },
    Shared(Bytes),
}

impl GroupName {
    /// The empty name is refused (docs/cpg.md §5.3 quirk: Corosync accepts it and then
    /// never sends PROCDOWN for it); so is a name over 128 bytes.
    pub fn new(bytes: &[u8]) -> Result<GroupName, CpgError> {
        if bytes.is_empty() {
            return Err(CpgError::InvalidParam);
        }
        if bytes.len() > MAX_NAME_BYTES {
            return Err(CpgError::NameTooLong);
        }
        Ok(GroupName::copied(bytes))
    }

    fn copied(name: &[u8]) -> GroupName {
        match Self::inline(name) {
            Some(inline) => inline,
            None => GroupName(NameRepr::Shared(Bytes::copy_from_slice(name))),
        }
    }

    fn inline(name: &[u8]) -> Option<GroupName> {
        let mut bytes = [0u8; INLINE_NAME_BYTES];
        bytes.get_mut(..name.len())?.copy_from_slice(name);
        Some(GroupName(NameRepr::Inline {
            len: name.len() as u8,
            bytes,
        }))
    }

    /// The name at `range` of a delivery (length already checked): inline if short,
    /// else a slice of the delivery, good for lookups; [`GroupName::detach`] before
    /// keeping it.
    fn from_wire(delivery: &Bytes, range: std::ops::Range<usize>) -> GroupName {
        debug_assert!((1..=MAX_NAME_BYTES).contains(&range.len()));
        match Self::inline(&delivery[range.clone()]) {
            Some(inline) => inline,
            None => GroupName(NameRepr::Shared(delivery.slice(range))),
        }
    }

    /// A copy that does not keep the delivery it was decoded from alive.
    fn detach(&self) -> GroupName {
        GroupName::copied(self.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            NameRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            NameRepr::Shared(bytes) => bytes,
        }
    }

    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }
}

impl PartialEq for GroupName {
    fn eq(&self, other: &GroupName) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for GroupName {}

impl std::hash::Hash for GroupName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl Ord for GroupName {
    fn cmp(&self, other: &GroupName) -> std::cmp::Ordering {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        (a.len(), a).cmp(&(b.len(), b))
    }
}

impl PartialOrd for GroupName {
    fn partial_cmp(&self, other: &GroupName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GroupName({:?})",
            String::from_utf8_lossy(self.as_bytes())
        )
    }
}

/// A group member: a process (`pid` as sent at join time) on a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub node: NodeId,
    pub pid: u32,
}

/// `cpg_reason_t` (docs/cpg.md §2.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Reason {
    /// Entries of a confchg's member list.
    Undefined = 0,
    Join = 1,
    Leave = 2,
    NodeDown = 3,
    NodeUp = 4,
    ProcDown = 5,
}

/// `cpg_address` (docs/cpg.md §2.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub member: Member,
    pub reason: Reason,
}

/// Why a request was refused. [`CpgError::cs_error`] gives the `cs_error_t` the client
/// returns (docs/cpg.md §2.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CpgError {
    /// A sync is running, or Totem's send queue is full: nothing was done; retry
    /// (`CS_ERR_TRY_AGAIN`). Also a join while this node still holds the same
    /// (pid, group) from a connection whose leave or PROCDOWN is not yet delivered.
    #[error("try again")]
    TryAgain,
    /// Join: a local connection with the same pid already joined (or is joining) that
    /// group, or this connection already joined a group (`CS_ERR_EXIST`). Connect: the
    /// connection id is in use.
    #[error("already exists")]
    Exist,
    /// Leave from a connection that has not joined, is already leaving, or names
    /// another group than the one it joined (`CS_ERR_NOT_EXIST`).
    #[error("not joined")]
    NotExist,
    /// Join while this connection's leave is in progress, or leave while its join is
    /// in progress (`CS_ERR_BUSY`; libcpg retries, docs/cpg.md §13 quirk 8).
    #[error("busy")]
    Busy,
    /// A group name longer than 128 bytes (`CS_ERR_NAME_TOO_LONG`).
    #[error("group name longer than 128 bytes")]
    NameTooLong,
    /// An empty group name, or an iteration request whose kind and group disagree
    /// (`CS_ERR_INVALID_PARAM`).
    #[error("invalid parameter")]
    InvalidParam,
    /// A message larger than `Limits::max_message_bytes` (`CS_ERR_TOO_BIG`).
    #[error("message too big")]
    TooBig,
    /// The group already has `Limits::max_members_per_group` members (counting joins
    /// from this node still in flight) (`CS_ERR_NO_SPACE`).
    #[error("group is full")]
    TooManyMembers,
    /// The cluster already has `Limits::max_groups` groups (counting new groups that
    /// joins from this node are creating) (`CS_ERR_TOO_MANY_GROUPS`).
    #[error("too many groups")]
    TooManyGroups,
    /// `Limits::max_connections` local connections exist (counting connections that
    /// went away whose removal is still in flight) (`CS_ERR_NO_RESOURCES`).
    #[error("too many connections")]
    TooManyConnections,
    /// The connection id is unknown (`CS_ERR_BAD_HANDLE`).
    #[error("unknown connection")]
    BadHandle,
}

impl CpgError {
    /// The `cs_error_t` value (docs/cpg.md §2.1).
    pub fn cs_error(self) -> u32 {
        match self {
            CpgError::TryAgain => 6,
            CpgError::InvalidParam => 7,
            CpgError::BadHandle => 9,
            CpgError::Busy => 10,
            CpgError::NotExist => 12,
            CpgError::NameTooLong => 13,
            CpgError::Exist => 14,
            CpgError::TooManyMembers => 15,
            CpgError::TooManyConnections => 18,
            CpgError::TooBig => 26,
            CpgError::TooManyGroups => 30,
        }
    }
}

/// `cpg_iteration_type_t` (docs/cpg.md §3 `cpg_iteration_initialize`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IterationKind {
    /// One entry per group, with node and pid 0.
    NameOnly,
    /// The members of one group (none for an unknown group).
    OneGroup,
    /// Every member of every group.
    All,
}

/// Bounds on what clients can make the service hold. Every node of a cluster should use
/// the same limits: they are checked where requests arrive, and a partition merge or
/// joins from several nodes at once can take a group or the group count past them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Members of one group. Default 1024. Programs built against cpg.h size their
    /// membership arrays with `CPG_MEMBERS_MAX` (128), which is safe above it:
    /// `cpg_membership_get` writes at most the count it is given and confchgs are
    /// passed as pointers (docs/cpg.md §2.4, §13 quirk 6).
    pub max_members_per_group: usize,
    /// Groups in the cluster. Default 1024.
    pub max_groups: usize,
    /// Local client connections. Default 1024. Also bounds this node's JOINLIST.
    pub max_connections: usize,
    /// Largest application payload of one mcast. Default 64 MiB.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_members_per_group: 1024,
            max_groups: 1024,
            max_connections: 1024,
            max_message_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// The `totem::Config::max_message_bytes` these limits need: the largest mcast with
    /// its header, or the largest JOINLIST, whichever is larger.
    pub fn totem_message_bytes(&self) -> usize {
        (self.max_message_bytes + MCAST_HEADER_MAX).max(joinlist_bytes_max(self.max_connections))
    }
}

/// Whatever can take a message into Totem's send queue: [`TotemSubmit`] in production,
/// a queue in tests. Nothing is queued when a method returns an error.
pub trait Submit {
    /// Queues an application message (JOIN, LEAVE, PROCDOWN, MCAST).
    fn submit(&mut self, payload: Bytes, guarantee: Guarantee) -> Result<(), SubmitError>;

    /// Queues a JOINLIST. With a sync barrier it is sent ahead of application messages,
    /// which wait until [`Submit::sync_done`]. The default has no barrier.
    fn submit_sync(&mut self, payload: Bytes) -> Result<(), SubmitError> {
        self.submit(payload, Guarantee::Agreed)
    }

    /// The sync of `ring_id` is complete: application messages may go. The default has
    /// no barrier and does nothing.
    fn sync_done(&mut self, ring_id: RingId) {
        let _ = ring_id;
    }
}

/// A [`totem::Node`] (built with `Config::sync_barrier` on) at one instant.
pub struct TotemSubmit<'a> {
    pub node: &'a mut totem::Node,
    pub now: Instant,
}

impl Submit for TotemSubmit<'_> {
    fn submit(&mut self, payload: Bytes, guarantee: Guarantee) -> Result<(), SubmitError> {
        self.node.submit(self.now, payload, guarantee)
    }

    fn submit_sync(&mut self, payload: Bytes) -> Result<(), SubmitError> {
        self.node.submit_sync(self.now, payload)
    }

    fn sync_done(&mut self, ring_id: RingId) {
        self.node.sync_done(self.now, ring_id);
    }
}

/// What a local connection is told, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message of the connection's group. `payload` is a slice of the Totem delivery.
    Deliver {
        group: GroupName,
        sender: Member,
        guarantee: Guarantee,
        payload: Bytes,
    },
    /// A membership change of the connection's group. `members` is the membership after
    /// the change (reason `Undefined`), sorted by (node, pid); `left` and `joined` are
    /// sorted too.
    Confchg {
        group: GroupName,
        members: Vec<Address>,
        left: Vec<Address>,
        joined: Vec<Address>,
    },
    /// A sync completed (docs/cpg.md §5.6): the ring and all its node ids, sorted.
    TotemConfchg {
        ring_id: RingId,
        members: Vec<NodeId>,
    },
}

/// Counters the service keeps about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Group messages applied (each counted once, whatever the number of receivers).
    pub messages_delivered: u64,
    /// Group messages dropped because the sending node has no member in the group
    /// (docs/cpg.md §5.4 "Sender-node filter").
    pub dropped_unknown_node: u64,
    /// Mcasts accepted from unjoined or leaving connections and dropped (§13 quirk 3).
    pub dropped_not_joined: u64,
    /// Deliveries that were not a valid CPG message.
    pub malformed: u64,
    /// JOINLISTs of another ring than the one being synchronised, or repeated.
    pub stale_joinlists: u64,
    /// JOINs of a member already known, LEAVEs and PROCDOWNs of an unknown one.
    pub ignored: u64,
    /// Messages ordered before the activation of their ring, applied after it.
    pub held: u64,
    /// Held messages applied when their sync was aborted.
    pub held_applied_on_abort: u64,
    pub syncs_completed: u64,
    pub syncs_aborted: u64,
    /// Submissions Totem refused for lack of room and that `poll` retried.
    pub submit_retries: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ConnState {
    Unjoined,
    JoinStarted,
    JoinCompleted,
    LeaveStarted,
}

#[derive(Debug)]
struct Conn {
    pid: u32,
    state: ConnState,
    /// Set from the join request until the connection's own leave is delivered.
    group: Option<GroupName>,
    /// `CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF` came with the join (docs/cpg.md §5.6).
    wants_initial_conf: bool,
    initial_conf_sent: bool,
}

/// A message delivered on a ring whose sync has not activated yet.
#[derive(Debug)]
struct Held {
    sender: NodeId,
    guarantee: Guarantee,
    message: Message,
}

#[derive(Debug)]
struct SyncRun {
    ring_id: RingId,
    /// The ring's members, sorted.
    members: Vec<NodeId>,
    /// Nodes whose members are reported NODEDOWN at activation.
    downlist: BTreeSet<NodeId>,
    /// JOINLISTs delivered on this ring, by sender.
    joinlists: BTreeMap<NodeId, Vec<(GroupName, u32)>>,
    held: VecDeque<Held>,
    /// This node's JOINLIST is queued in Totem.
    joinlist_submitted: bool,
}

/// The CPG service of one node.
pub struct Service {
    local: NodeId,
    limits: Limits,
    conns: BTreeMap<ConnId, Conn>,
    /// The replicated table. No group is ever empty.
    table: BTreeMap<GroupName, BTreeSet<Member>>,
    /// Local connections in JOIN_COMPLETED or LEAVE_STARTED, by group: who gets the
    /// group's messages and confchgs. No entry is empty.
    receivers: BTreeMap<GroupName, BTreeSet<ConnId>>,
    /// The running sync, from a regular configuration to its activation.
    sync: Option<SyncRun>,
    /// The last completed sync: ring and members.
    synced: Option<(RingId, Vec<NodeId>)>,
    /// Members of the ring of the last completed sync (the "previous CPG membership").
    cpg_members: Vec<NodeId>,
    /// The transitional membership of the configuration change in progress.
    transitional: Option<Vec<NodeId>>,
    /// Nodes that left this node's ring since the last completed sync.
    departed: BTreeSet<NodeId>,
    /// PROCDOWNs to submit, in order: (group, pid) of connections that went away.
    owed_procdowns: VecDeque<(GroupName, u32)>,
    /// Local members whose connection went away and whose LEAVE or PROCDOWN is not yet
    /// applied: they still count against `max_connections` and block a rejoin of the
    /// same (group, pid).
    departing: BTreeSet<(GroupName, u32)>,
    events: VecDeque<(ConnId, ClientEvent)>,
    /// Where small multicasts are encoded ([`codec::encode_mcast_into`]).
    arena: bytes::BytesMut,
    stats: Stats,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("local", &self.local)
            .field("synced", &self.synced)
            .field("syncing", &self.sync.as_ref().map(|s| s.ring_id))
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Panics if the limits are unusable (a configuration bug): zero members, groups or
    /// connections.
    pub fn new(local: NodeId, limits: Limits) -> Service {
        assert!(
            limits.max_members_per_group > 0 && limits.max_groups > 0 && limits.max_connections > 0,
            "cpg limits must be at least 1: {limits:?}"
        );
        Service {
            local,
            limits,
            conns: BTreeMap::new(),
            table: BTreeMap::new(),
            receivers: BTreeMap::new(),
            sync: None,
            synced: None,
            cpg_members: Vec::new(),
            transitional: None,
            departed: BTreeSet::new(),
            owed_procdowns: VecDeque::new(),
            departing: BTreeSet::new(),
            events: VecDeque::new(),
            arena: bytes::BytesMut::new(),
            stats: Stats::default(),
        }
    }

    pub fn local_node(&self) -> NodeId {
        self.local
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// True until the first sync completes and from each regular configuration until
    /// its sync activates. Join, leave and mcast then return `TryAgain`.
    pub fn in_sync(&self) -> bool {
        self.sync.is_some() || self.synced.is_none()
    }

    /// The ring and members of the last completed sync.
    pub fn synced_ring(&self) -> Option<(RingId, &[NodeId])> {
        self.synced.as_ref().map(|(r, m)| (*r, &m[..]))
    }

    /// PROCDOWNs and JOINLISTs still to be handed to Totem.
    pub fn owed_submissions(&self) -> usize {
        self.owed_procdowns.len()
            + usize::from(self.sync.as_ref().is_some_and(|s| !s.joinlist_submitted))
    }

    /// A new client connection.
    pub fn connect(&mut self, conn: ConnId, pid: u32) -> Result<(), CpgError> {
        if self.conns.contains_key(&conn) {
            return Err(CpgError::Exist);
        }
        if self.conns.len() + self.departing.len() >= self.limits.max_connections {
            return Err(CpgError::TooManyConnections);
        }
        self.conns.insert(
            conn,
            Conn {
                pid,
                state: ConnState::Unjoined,
                group: None,
                wants_initial_conf: false,
                initial_conf_sent: false,
            },
        );
        Ok(())
    }

    /// `cpg_join` (docs/cpg.md §3): checks in the daemon's order, then multicasts a
    /// JOIN. Ok means accepted; the join takes effect with its confchg (§5.2).
    pub fn join(
        &mut self,
        conn: ConnId,
        group: &GroupName,
        initial_totem_conf: bool,
        totem: &mut impl Submit,
    ) -> Result<(), CpgError> {
        let c = self.conns.get(&conn).ok_or(CpgError::BadHandle)?;
        let pid = c.pid;
        if self.in_sync() {
            return Err(CpgError::TryAgain);
        }
        // 1. EXIST if a local connection with this pid has (or is getting) this name.
        if self
            .conns
            .values()
            .any(|o| o.pid == pid && o.group.as_ref() == Some(group))
        {
            return Err(CpgError::Exist);
        }
        // 2. TRY_AGAIN while the same member's leave or PROCDOWN is in flight.
        let me = Member {
            node: self.local,
            pid,
        };
        if self.table.get(group).is_some_and(|m| m.contains(&me))
            || self.departing.contains(&(group.clone(), pid))
        {
            return Err(CpgError::TryAgain);
        }
        // 4. By state (3, NAME_TOO_LONG, is GroupName's).
        match c.state {
            ConnState::Unjoined => {}
            ConnState::JoinStarted | ConnState::JoinCompleted => return Err(CpgError::Exist),
            ConnState::LeaveStarted => return Err(CpgError::Busy),
        }
        // Limits (docs/cpg.md §13 quirk 6), counting this node's joins in flight.
        let joining = |g: &GroupName| {
            self.conns
                .values()
                .filter(|o| o.state == ConnState::JoinStarted && o.group.as_ref() == Some(g))
                .count()
        };
        match self.table.get(group) {
            Some(members) => {
                if members.len() + joining(group) >= self.limits.max_members_per_group {
                    return Err(CpgError::TooManyMembers);
                }
            }
            None => {
                if joining(group) >= self.limits.max_members_per_group {
                    return Err(CpgError::TooManyMembers);
                }
                let new_groups: BTreeSet<&GroupName> = self
                    .conns
                    .values()
                    .filter(|o| o.state == ConnState::JoinStarted)
                    .filter_map(|o| o.group.as_ref())
                    .filter(|g| !self.table.contains_key(*g))
                    .collect();
                let creating = usize::from(!new_groups.contains(group));
                if self.table.len() + new_groups.len() + creating > self.limits.max_groups {
                    return Err(CpgError::TooManyGroups);
                }
            }
        }
        submit(totem, codec::encode_join(group, pid), Guarantee::Agreed)?;
        let c = self.conns.get_mut(&conn).expect("looked up above");
        c.state = ConnState::JoinStarted;
        c.group = Some(group.detach());
        c.wants_initial_conf = initial_totem_conf;
        Ok(())
    }

    /// `cpg_leave` (docs/cpg.md §3): the name must be the joined group's (§13 quirk 7).
    pub fn leave(
        &mut self,
        conn: ConnId,
        group: &GroupName,
        totem: &mut impl Submit,
    ) -> Result<(), CpgError> {
        let c = self.conns.get(&conn).ok_or(CpgError::BadHandle)?;
        if self.in_sync() {
            return Err(CpgError::TryAgain);
        }
        match c.state {
            ConnState::Unjoined | ConnState::LeaveStarted => return Err(CpgError::NotExist),
            ConnState::JoinStarted => return Err(CpgError::Busy),
            ConnState::JoinCompleted => {}
        }
        if c.group.as_ref() != Some(group) {
            return Err(CpgError::NotExist);
        }
        submit(
            totem,
            codec::encode_leave(group, c.pid, false),
            Guarantee::Agreed,
        )?;
        self.conns.get_mut(&conn).expect("looked up above").state = ConnState::LeaveStarted;
        Ok(())
    }

    /// `cpg_mcast_joined` (docs/cpg.md §3): `parts` gathered into one message (the one
    /// copy of the send path). From an unjoined or leaving connection: Ok, and the
    /// message is dropped (the compatible choice, §13 quirk 3; counted).
    pub fn mcast(
        &mut self,
        conn: ConnId,
        guarantee: Guarantee,
        parts: &[&[u8]],
        totem: &mut impl Submit,
    ) -> Result<(), CpgError> {
        let len = parts.iter().fold(0usize, |a, p| a.saturating_add(p.len()));
        let in_sync = self.in_sync();
        let Some((group, pid)) = mcast_sender(
            &self.conns,
            &mut self.stats,
            &self.limits,
            in_sync,
            conn,
            len,
        )?
        else {
            return Ok(());
        };
        let message = codec::encode_mcast_into(&mut self.arena, group, pid, parts);
        submit(totem, message, guarantee)
    }

    /// [`Service::mcast`] of a payload the caller already holds at
    /// `buf[MCAST_HEADER_MAX..]` (a large message assembled from pieces): the header is
    /// written into the room in front of it, so the payload is not copied again. On
    /// `TryAgain` the buffer comes back as it was, for a retry.
    pub fn mcast_in_place(
        &mut self,
        conn: ConnId,
        guarantee: Guarantee,
        mut buf: BytesMut,
        totem: &mut impl Submit,
    ) -> Result<(), (CpgError, Option<BytesMut>)> {
        let Some(len) = buf.len().checked_sub(MCAST_HEADER_MAX) else {
            return Err((CpgError::InvalidParam, None));
        };
        let in_sync = self.in_sync();
        let sender = mcast_sender(
            &self.conns,
            &mut self.stats,
            &self.limits,
            in_sync,
            conn,
            len,
        );
        let (group, pid) = match sender {
            Ok(Some(sender)) => sender,
            Ok(None) => return Ok(()),
            Err(CpgError::TryAgain) => return Err((CpgError::TryAgain, Some(buf))),
            Err(e) => return Err((e, None)),
        };
        let start = MCAST_HEADER_MAX - codec::mcast_header_len(group);
        codec::write_mcast_header(&mut buf[start..MCAST_HEADER_MAX], group, pid);
        let full = buf.freeze();
        match submit(totem, full.slice(start..), guarantee) {
            Ok(()) => Ok(()),
            // Totem dropped its slice: the buffer is ours alone again.
            Err(CpgError::TryAgain) => Err((CpgError::TryAgain, full.try_into_mut().ok())),
            Err(e) => Err((e, None)),
        }
    }

    /// [`Service::mcast`] of a `payload_len`-byte payload the caller already holds
    /// somewhere of its own (the engine's delivery pool): `frame` gets the header and
    /// returns the whole message, that header directly in front of the payload, as one
    /// `Bytes`; so the payload is not copied here. `frame` is called only when the
    /// message goes to Totem now; `None` from it is `TryAgain` (nothing sent).
    pub fn mcast_framed(
        &mut self,
        conn: ConnId,
        guarantee: Guarantee,
        payload_len: usize,
        frame: impl FnOnce(&[u8]) -> Option<Bytes>,
        totem: &mut impl Submit,
    ) -> Result<(), CpgError> {
        let in_sync = self.in_sync();
        let Some((group, pid)) = mcast_sender(
            &self.conns,
            &mut self.stats,
            &self.limits,
            in_sync,
            conn,
            payload_len,
        )?
        else {
            return Ok(());
        };
        let mut header = [0u8; MCAST_HEADER_MAX];
        let header = &mut header[..codec::mcast_header_len(group)];
        codec::write_mcast_header(header, group, pid);
        let message = frame(header).ok_or(CpgError::TryAgain)?;
        debug_assert_eq!(message.len(), header.len() + payload_len);
        submit(totem, message, guarantee)
    }

    /// The client went away (EOF or finalize). A connection that joined (or is joining)
    /// and is not leaving gets a PROCDOWN (docs/cpg.md §5.3); if Totem cannot take it
    /// now, or a sync is running, it is owed and `poll` sends it. It is never lost.
    /// Events still queued for it are dropped (docs/cpg.md §3 `cpg_finalize`: "pending
    /// events are lost"), so a connection id used again never sees them.
    pub fn disconnect(&mut self, conn: ConnId, totem: &mut impl Submit) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.events.retain(|(id, _)| *id != conn);
        let Some(group) = c.group else {
            return;
        };
        self.remove_receiver(&group, conn);
        match c.state {
            ConnState::JoinStarted | ConnState::JoinCompleted => {
                self.departing.insert((group.clone(), c.pid));
                self.owed_procdowns.push_back((group, c.pid));
                self.flush_procdowns(totem);
            }
            ConnState::LeaveStarted => {
                self.departing.insert((group, c.pid));
            }
            ConnState::Unjoined => {}
        }
    }

    /// Every member of `group` (any group, joined or not), sorted by (node, pid).
    pub fn membership(&self, group: &GroupName) -> Vec<Member> {
        self.table
            .get(group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A snapshot for `cpg_iteration_*` (docs/cpg.md §3): sorted by group, then member.
    pub fn iterate(
        &self,
        kind: IterationKind,
        group: Option<&GroupName>,
    ) -> Result<Vec<(GroupName, Member)>, CpgError> {
        match (kind, group) {
            (IterationKind::OneGroup, Some(g)) => Ok(self
                .membership(g)
                .into_iter()
                .map(|m| (g.clone(), m))
                .collect()),
            (IterationKind::NameOnly, None) => Ok(self
                .table
                .keys()
                .map(|g| (g.clone(), Member { node: 0, pid: 0 }))
                .collect()),
            (IterationKind::All, None) => Ok(self
                .table
                .iter()
                .flat_map(|(g, members)| members.iter().map(move |m| (g.clone(), *m)))
                .collect()),
            _ => Err(CpgError::InvalidParam),
        }
    }

    /// Retries what Totem refused for lack of room: this node's JOINLIST, then (outside
    /// a sync) owed PROCDOWNs, in order.
    pub fn poll(&mut self, totem: &mut impl Submit) {
        if self.sync.is_some() {
            self.submit_joinlist(totem);
        } else {
            self.flush_procdowns(totem);
        }
    }

    pub fn poll_event(&mut self) -> Option<(ConnId, ClientEvent)> {
        self.events.pop_front()
    }

    /// Feed every Totem event, in order.
    pub fn handle_totem_event(&mut self, event: totem::Event, totem: &mut impl Submit) {
        match event {
            totem::Event::Deliver(delivery) => self.on_delivery(delivery, totem),
            totem::Event::Configuration(change) => match change.kind {
                ConfigurationKind::Transitional => self.on_transitional(change),
                ConfigurationKind::Regular => self.on_regular(change, totem),
            },
        }
    }

    // ------------------------------------------------------------ configuration

    fn on_transitional(&mut self, change: ConfigurationChange) {
        self.departed
            .extend(change.left.iter().copied().filter(|&n| n != self.local));
        self.transitional = Some(change.members);
    }

    /// A new ring: abort a sync still running, start this ring's (docs/cpg.md §5.5).
    fn on_regular(&mut self, change: ConfigurationChange, totem: &mut impl Submit) {
        if let Some(aborted) = self.sync.take() {
            // The next downlist covers both changes: `departed` and `cpg_members` are
            // only reset by an activation.
            self.stats.syncs_aborted += 1;
            for held in aborted.held {
                self.stats.held_applied_on_abort += 1;
                self.apply(held.sender, held.guarantee, held.message);
            }
        }
        let transitional = self.transitional.take().unwrap_or_else(|| vec![self.local]);
        let mut downlist: BTreeSet<NodeId> = self
            .cpg_members
            .iter()
            .copied()
            .filter(|n| !transitional.contains(n))
            .collect();
        downlist.extend(self.departed.iter().copied());
        downlist.remove(&self.local);
        self.sync = Some(SyncRun {
            ring_id: change.ring_id,
            members: change.members,
            downlist,
            joinlists: BTreeMap::new(),
            held: VecDeque::new(),
            joinlist_submitted: false,
        });
        self.submit_joinlist(totem);
    }

    /// This node's members as the table holds them: they do not change during a sync
    /// (application messages are held), so it does not matter when this runs.
    fn submit_joinlist(&mut self, totem: &mut impl Submit) {
        let Some(sync) = &self.sync else { return };
        if sync.joinlist_submitted {
            return;
        }
        let local = self.local;
        let mine: Vec<(&GroupName, u32)> = self
            .table
            .iter()
            .flat_map(|(g, members)| {
                members
                    .range(
                        Member {
                            node: local,
                            pid: 0,
                        }..=Member {
                            node: local,
                            pid: u32::MAX,
                        },
                    )
                    .map(move |m| (g, m.pid))
            })
            .collect();
        // Local members are joined or departing connections, bounded by
        // max_connections (connect counts the departing ones).
        assert!(
            mine.len() <= self.limits.max_connections,
            "{} local members exceed max_connections {}",
            mine.len(),
            self.limits.max_connections
        );
        let payload = codec::encode_joinlist(sync.ring_id, mine.into_iter());
        match totem.submit_sync(payload) {
            Ok(()) => {
                self.sync.as_mut().expect("checked").joinlist_submitted = true;
            }
            Err(SubmitError::TryAgain) => self.stats.submit_retries += 1,
            Err(e @ SubmitError::TooBig { .. }) => panic!(
                "JOINLIST refused ({e}): totem max_message_bytes is below \
                 Limits::totem_message_bytes() = {}",
                self.limits.totem_message_bytes()
            ),
        }
    }

    fn flush_procdowns(&mut self, totem: &mut impl Submit) {
        if self.in_sync() {
            return;
        }
        while let Some((group, pid)) = self.owed_procdowns.front() {
            match submit(
                totem,
                codec::encode_leave(group, *pid, true),
                Guarantee::Agreed,
            ) {
                Ok(()) => {
                    self.owed_procdowns.pop_front();
                }
                Err(_) => {
                    self.stats.submit_retries += 1;
                    return;
                }
            }
        }
    }

    // ------------------------------------------------------------ deliveries

    fn on_delivery(&mut self, delivery: Delivery, totem: &mut impl Submit) {
        let sender = delivery.sender;
        let guarantee = delivery.guarantee;
        let delivered_on = delivery.ring_id;
        let message = match codec::decode_owned(delivery.payload) {
            Ok(message) => message,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if let Message::JoinList { ring_id, entries } = message {
            self.on_joinlist(sender, delivered_on, ring_id, entries, totem);
            return;
        }
        if self.synced.is_none() && self.sync.is_none() {
            // Totem delivers nothing before its first configuration; nothing to apply
            // it to.
            self.stats.ignored += 1;
            return;
        }
        if let Some(sync) = &mut self.sync {
            self.stats.held += 1;
            sync.held.push_back(Held {
                sender,
                guarantee,
                message,
            });
            return;
        }
        self.apply(sender, guarantee, message);
    }

    fn on_joinlist(
        &mut self,
        sender: NodeId,
        delivered_on: RingId,
        tagged: RingId,
        entries: Vec<(GroupName, u32)>,
        totem: &mut impl Submit,
    ) {
        let Some(sync) = &mut self.sync else {
            self.stats.stale_joinlists += 1;
            return;
        };
        if tagged != sync.ring_id
            || delivered_on != sync.ring_id
            || sync.members.binary_search(&sender).is_err()
            || sync.joinlists.contains_key(&sender)
        {
            self.stats.stale_joinlists += 1;
            return;
        }
        sync.joinlists.insert(sender, entries);
        if sync.joinlists.len() == sync.members.len() {
            self.activate(totem);
        }
    }

    /// docs/cpg.md §5.5 "activate", then the held messages and owed PROCDOWNs.
    fn activate(&mut self, totem: &mut impl Submit) {
        let sync = self.sync.take().expect("activate runs a sync");
        let local = self.local;

        // 1. NODEDOWN: members of nodes that left, one confchg per group. Never local.
        let groups: Vec<GroupName> = self.table.keys().cloned().collect();
        for group in &groups {
            let members = self.table.get_mut(group).expect("listed");
            let down: Vec<Member> = members
                .iter()
                .copied()
                .filter(|m| m.node != local && sync.downlist.contains(&m.node))
                .collect();
            if down.is_empty() {
                continue;
            }
            for m in &down {
                members.remove(m);
            }
            self.after_removal(group);
            self.confchg(group, addresses(&down, Reason::NodeDown), Vec::new());
        }

        // 2. NODEUP: members other nodes list that this one does not know.
        let mut mentioned: BTreeSet<(GroupName, Member)> = BTreeSet::new();
        let mut up: BTreeMap<GroupName, Vec<Member>> = BTreeMap::new();
        for (&node, entries) in &sync.joinlists {
            if node == local {
                continue;
            }
            for (group, pid) in entries {
                let member = Member { node, pid: *pid };
                mentioned.insert((group.clone(), member));
                let known = self.table.get(group).is_some_and(|m| m.contains(&member));
                if !known {
                    up.entry(group.detach()).or_default().push(member);
                }
            }
        }
        for (group, mut members) in up {
            members.sort_unstable();
            members.dedup();
            self.table
                .entry(group.clone())
                .or_default()
                .extend(members.iter().copied());
            self.confchg(&group, Vec::new(), addresses(&members, Reason::NodeUp));
        }

        // 3. Zombies: remote members no joinlist mentions, one confchg each.
        let zombies: Vec<(GroupName, Member)> = self
            .table
            .iter()
            .flat_map(|(g, members)| members.iter().map(move |m| (g, *m)))
            .filter(|(g, m)| m.node != local && !mentioned.contains(&((*g).clone(), *m)))
            .map(|(g, m)| (g.clone(), m))
            .collect();
        for (group, member) in zombies {
            if let Some(members) = self.table.get_mut(&group) {
                members.remove(&member);
            }
            self.after_removal(&group);
            self.confchg(&group, addresses(&[member], Reason::ProcDown), Vec::new());
        }

        // 4. The new CPG membership, and a TOTEM_CONFCHG to every connection.
        self.stats.syncs_completed += 1;
        self.cpg_members = sync.members.clone();
        self.departed.clear();
        self.synced = Some((sync.ring_id, sync.members));
        let (ring_id, members) = self.synced.clone().expect("just set");
        for (&conn, c) in self.conns.iter_mut() {
            // It also serves as the initial one of a connection that asked for it.
            c.initial_conf_sent |= c.wants_initial_conf;
            self.events.push_back((
                conn,
                ClientEvent::TotemConfchg {
                    ring_id,
                    members: members.clone(),
                },
            ));
        }
        totem.sync_done(ring_id);

        // Messages ordered on this ring before the activation (no sync barrier), then
        // what the sync kept this node from sending.
        for held in sync.held {
            self.apply(held.sender, held.guarantee, held.message);
        }
        self.flush_procdowns(totem);
    }

    /// One JOIN, LEAVE, PROCDOWN or MCAST at its place in the agreed order.
    fn apply(&mut self, sender: NodeId, guarantee: Guarantee, message: Message) {
        match message {
            Message::Join { group, pid } => self.on_join(sender, group, pid),
            Message::Leave {
                group,
                pid,
                procdown,
            } => self.on_leave(sender, group, pid, procdown),
            Message::Mcast {
                group,
                pid,
                payload,
            } => self.on_mcast(sender, guarantee, group, pid, payload),
            Message::JoinList { .. } => unreachable!("joinlists are never held"),
        }
    }

    /// docs/cpg.md §5.2.
    fn on_join(&mut self, node: NodeId, group: GroupName, pid: u32) {
        let member = Member { node, pid };
        if self.table.get(&group).is_some_and(|m| m.contains(&member)) {
            self.stats.ignored += 1;
            return;
        }
        let group = group.detach();
        self.table.entry(group.clone()).or_default().insert(member);
        if node == self.local {
            // The joiner is marked JOIN_COMPLETED first: it gets this confchg too.
            let joiner = self.conns.iter_mut().find(|(_, c)| {
                c.pid == pid
                    && c.state == ConnState::JoinStarted
                    && c.group.as_ref() == Some(&group)
            });
            if let Some((&id, c)) = joiner {
                c.state = ConnState::JoinCompleted;
                self.receivers.entry(group.clone()).or_default().insert(id);
            }
        }
        self.confchg(&group, Vec::new(), addresses(&[member], Reason::Join));
        self.initial_totem_confs();
    }

    /// docs/cpg.md §5.3. The leaver gets the confchg, then (quirk 2 fixed) is UNJOINED.
    fn on_leave(&mut self, node: NodeId, group: GroupName, pid: u32, procdown: bool) {
        let member = Member { node, pid };
        let removed = self
            .table
            .get_mut(&group)
            .is_some_and(|m| m.remove(&member));
        if removed {
            self.after_removal(&group);
            let reason = if procdown {
                Reason::ProcDown
            } else {
                Reason::Leave
            };
            self.confchg(&group, addresses(&[member], reason), Vec::new());
        } else {
            self.stats.ignored += 1;
        }
        if node == self.local {
            self.departing.remove(&(group.clone(), pid));
            let leaver = self.conns.iter_mut().find(|(_, c)| {
                c.pid == pid
                    && c.state == ConnState::LeaveStarted
                    && c.group.as_ref() == Some(&group)
            });
            if let Some((&id, c)) = leaver {
                c.state = ConnState::Unjoined;
                c.group = None;
                self.remove_receiver(&group, id);
            }
        }
        if removed {
            self.initial_totem_confs();
        }
    }

    /// docs/cpg.md §5.4: fan-out to the group's receivers, the sender included, unless
    /// the sending node has no member in the group.
    fn on_mcast(
        &mut self,
        node: NodeId,
        guarantee: Guarantee,
        group: GroupName,
        pid: u32,
        payload: Bytes,
    ) {
        let known = self.table.get(&group).is_some_and(|members| {
            members
                .range(
                    Member { node, pid: 0 }..=Member {
                        node,
                        pid: u32::MAX,
                    },
                )
                .next()
                .is_some()
        });
        if !known {
            self.stats.dropped_unknown_node += 1;
            return;
        }
        self.stats.messages_delivered += 1;
        let Some(receivers) = self.receivers.get(&group) else {
            return;
        };
        let sender = Member { node, pid };
        // Every receiver but the last gets new references; the last gets the decoded
        // group and payload themselves (each reference is an atomic operation, and most
        // groups have one local receiver).
        let mut conns = receivers.iter().copied().peekable();
        while let Some(conn) = conns.next() {
            if conns.peek().is_none() {
                self.events.push_back((
                    conn,
                    ClientEvent::Deliver {
                        group,
                        sender,
                        guarantee,
                        payload,
                    },
                ));
                return;
            }
            self.events.push_back((
                conn,
                ClientEvent::Deliver {
                    group: group.clone(),
                    sender,
                    guarantee,
                    payload: payload.clone(),
                },
            ));
        }
    }

    // ------------------------------------------------------------ helpers

    /// A confchg of `group` (membership as the table now holds it) to its receivers.
    fn confchg(&mut self, group: &GroupName, left: Vec<Address>, joined: Vec<Address>) {
        let Some((key, receivers)) = self.receivers.get_key_value(group) else {
            return;
        };
        let members: Vec<Address> = self
            .table
            .get(group)
            .map(|m| addresses(&m.iter().copied().collect::<Vec<_>>(), Reason::Undefined))
            .unwrap_or_default();
        for &conn in receivers {
            self.events.push_back((
                conn,
                ClientEvent::Confchg {
                    group: key.clone(),
                    members: members.clone(),
                    left: left.clone(),
                    joined: joined.clone(),
                },
            ));
        }
    }

    /// docs/cpg.md §5.6 `DELIVER_INITIAL_TOTEM_CONF`: after a confchg is processed,
    /// each connection that asked and has not had it gets the last completed sync.
    fn initial_totem_confs(&mut self) {
        let Some((ring_id, members)) = &self.synced else {
            return;
        };
        for (&id, c) in self.conns.iter_mut() {
            if c.wants_initial_conf && !c.initial_conf_sent {
                c.initial_conf_sent = true;
                self.events.push_back((
                    id,
                    ClientEvent::TotemConfchg {
                        ring_id: *ring_id,
                        members: members.clone(),
                    },
                ));
            }
        }
    }

    fn after_removal(&mut self, group: &GroupName) {
        if self.table.get(group).is_some_and(|m| m.is_empty()) {
            self.table.remove(group);
        }
    }

    fn remove_receiver(&mut self, group: &GroupName, conn: ConnId) {
        if let Some(set) = self.receivers.get_mut(group) {
            set.remove(&conn);
            if set.is_empty() {
                self.receivers.remove(group);
            }
        }
    }
}

fn addresses(members: &[Member], reason: Reason) -> Vec<Address> {
    members
        .iter()
        .map(|&member| Address { member, reason })
        .collect()
}

/// Hands one application message to Totem.
fn submit(totem: &mut impl Submit, payload: Bytes, guarantee: Guarantee) -> Result<(), CpgError> {
    totem.submit(payload, guarantee).map_err(|e| match e {
        SubmitError::TryAgain => CpgError::TryAgain,
        SubmitError::TooBig { .. } => CpgError::TooBig,
    })
}

/// The checks of every multicast: a known connection (`BadHandle`), not too big
/// (`TooBig`), no sync running (`TryAgain`). `Ok(None)` when the connection is not a
/// member: the message is dropped, counted (docs/cpg.md §13 quirk 3). Else its group and
/// pid.
fn mcast_sender<'a>(
    conns: &'a BTreeMap<ConnId, Conn>,
    stats: &mut Stats,
    limits: &Limits,
    in_sync: bool,
    conn: ConnId,
    len: usize,
) -> Result<Option<(&'a GroupName, u32)>, CpgError> {
    let c = conns.get(&conn).ok_or(CpgError::BadHandle)?;
    if len > limits.max_message_bytes {
        return Err(CpgError::TooBig);
    }
    if in_sync {
        return Err(CpgError::TryAgain);
    }
    match (c.state, &c.group) {
        (ConnState::JoinStarted | ConnState::JoinCompleted, Some(group)) => {
            Ok(Some((group, c.pid)))
        }
        _ => {
            stats.dropped_not_joined += 1;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
