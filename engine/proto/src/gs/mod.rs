#![forbid(unsafe_code)]
//! Group Services as a pure state machine on top of Totem's agreed deliveries, beside
//! CPG. Section numbers (§) in this module are those of docs/group-services.md.
//!
//! Every node keeps the whole replicated group table: attributes, ordered providers,
//! state value, the protocol in progress and the pending membership changes. It
//! changes only when a GS message or a configuration change is delivered in agreed
//! order (§6.1): client calls, disconnects and timers only multicast a message, and its
//! delivery acts. So every node reaches the same protocol outcomes, membership and
//! state values, without a leader. Subscribers are local only.
//!
//! The caller:
//! - feeds every Totem event in order to [`Service::handle_totem_event`] (with the time
//!   of delivery: a phase's time limit starts then);
//! - turns client requests into [`Service::connect`], [`Service::join`],
//!   [`Service::propose`], [`Service::vote`], [`Service::goodbye`],
//!   [`Service::subscribe`], [`Service::disconnect`], ...;
//! - calls [`Service::handle_timeout`] at [`Service::poll_timeout`], and
//!   [`Service::poll`] after Totem drained its queues (messages it refused are owed);
//! - drains [`Service::poll_event`] (client events), [`Service::poll_script`]
//!   (deactivate scripts to run outside the engine thread, answered with
//!   [`Service::script_done`]) and, when recording is on, [`Service::poll_record`].
//!
//! # Synchronisation (§6.6)
//!
//! After every regular configuration each node multicasts one SYNC (through the sync
//! barrier, like CPG's JOINLIST): its table, or "same as node X" when X (the lowest
//! member of its transitional configuration) holds the same table, or nothing for a
//! node with no previous ring. Once every member's SYNC is delivered, each node merges
//! the tables the same way: a group known on one side is taken as it is; a group that
//! lived on several sides keeps the instance with the most live providers (then the
//! lowest oldest provider), the others are cast out; providers on nodes outside their
//! table's side fail with `NodeFailed`.

mod codec;
mod group;
mod types;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::cpg::{GroupName, Submit};
use crate::totem::{
    self, ConfigurationChange, ConfigurationKind, Guarantee, Instant, NodeId, RingId, SubmitError,
};
pub use codec::{MAX_FIELD_BYTES, Malformed};
use codec::{Message, SyncTable};
pub use group::Outcome;
use group::{Entry, Group, Note, Pending};
pub use types::*;

/// Bounds on what clients can make the service hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_groups: usize,
    /// Providers plus pending joiners of one group.
    pub max_providers_per_group: usize,
    /// State values, messages, expel flags.
    pub max_value_bytes: usize,
    pub max_clients: usize,
    /// A deactivate script's time when the expel has no time limit.
    pub default_script_ms: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_groups: 1024,
            max_providers_per_group: 256,
            max_value_bytes: 1 << 20,
            max_clients: 1024,
            default_script_ms: 60_000,
        }
    }
}

/// What the service records for checkers and the command-line view (only when
/// [`Service::set_recording`] is on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Started {
        ring: RingId,
        group: GroupName,
        seq: u64,
    },
    Ended {
        ring: RingId,
        group: GroupName,
        outcome: Box<Outcome>,
    },
    /// A sync completed: the tables are merged (`digest` is a hash of the result);
    /// the failures it finds follow.
    Synced { ring: RingId, digest: u64 },
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub malformed: u64,
    pub applied: u64,
    pub held: u64,
    pub stale_syncs: u64,
    pub syncs_completed: u64,
    pub syncs_aborted: u64,
    pub protocols_started: u64,
    pub approved: u64,
    pub rejected: u64,
    pub cast_out: u64,
    pub submit_retries: u64,
}

/// One group as `ringcast gs groups` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub name: GroupName,
    pub attributes: GroupAttributes,
    pub providers: Vec<(ProviderId, Option<LeaveReason>)>,
    pub state: Bytes,
    pub seq: u64,
    /// The protocol in progress: kind, phase.
    pub active: Option<(ProtocolKind, u32)>,
    /// The voters of the running phase that have no vote yet.
    pub waiting_for: Vec<ProviderId>,
    pub pending: usize,
}

#[derive(Debug)]
struct LocalProvider {
    client: ClientId,
    /// What the replicated table names this provider's client by: a number this node
    /// gave this one join, so that a table entry of an earlier provider with the same
    /// instance number (brought back by a merge) never reaches it (§6.1).
    token: ClientId,
    /// Its join was approved (before: a joiner).
    joined: bool,
}

#[derive(Debug, Default)]
struct LocalClient {
    script: Option<String>,
}

#[derive(Debug)]
struct Timer {
    seq: u64,
    phase: u32,
    at: Instant,
    fired: bool,
}

#[derive(Debug)]
struct SyncRun {
    ring_id: RingId,
    members: Vec<NodeId>,
    tables: BTreeMap<NodeId, SyncTable>,
    held: VecDeque<(NodeId, Message)>,
    message: Bytes,
    submitted: bool,
}

/// The GS service of one node.
#[derive(Debug)]
pub struct Service {
    local: NodeId,
    limits: Limits,
    clients: BTreeMap<ClientId, LocalClient>,
    /// This node's providers and joiners, by (group, instance).
    locals: BTreeMap<(GroupName, u16), LocalProvider>,
    /// JOIN and GOODBYE messages this node sent and has not delivered yet, by
    /// (group, instance): the instance number stays in use while they travel.
    in_flight: BTreeMap<(GroupName, u16), u32>,
    /// The next provider token (see `LocalProvider::token`).
    next_token: ClientId,
    subs: BTreeMap<GroupName, BTreeMap<ClientId, SubscribeFlags>>,
    table: BTreeMap<GroupName, Group>,
    sync: Option<SyncRun>,
    synced: Option<(RingId, Vec<NodeId>)>,
    last_regular: Option<RingId>,
    transitional: Option<Vec<NodeId>>,
    /// The ring the current input belongs to (for records).
    ring: RingId,
    timers: BTreeMap<GroupName, Timer>,
    /// Messages that must not be lost (goodbye, client down, timeouts, script
    /// results), in order, while Totem refuses them.
    owed: VecDeque<Bytes>,
    events: VecDeque<(ClientId, GsEvent)>,
    scripts: VecDeque<ScriptRun>,
    records: Option<VecDeque<Record>>,
    stats: Stats,
}

fn submit(totem: &mut impl Submit, payload: Bytes) -> Result<(), GsError> {
    totem
        .submit(payload, Guarantee::Agreed)
        .map_err(|e| match e {
            SubmitError::TryAgain => GsError::TryAgain,
            SubmitError::TooBig { .. } => GsError::BadParameter,
        })
}

/// FNV-1a over a table's encoding: equal tables, equal digests.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Service {
    pub fn new(local: NodeId, limits: Limits) -> Service {
        assert!(
            limits.max_groups > 0 && limits.max_providers_per_group > 0 && limits.max_clients > 0,
            "gs limits must be at least 1: {limits:?}"
        );
        Service {
            local,
            limits,
            clients: BTreeMap::new(),
            locals: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_token: 1,
            subs: BTreeMap::new(),
            table: BTreeMap::new(),
            sync: None,
            synced: None,
            last_regular: None,
            transitional: None,
            ring: RingId::default(),
            timers: BTreeMap::new(),
            owed: VecDeque::new(),
            events: VecDeque::new(),
            scripts: VecDeque::new(),
            records: None,
            stats: Stats::default(),
        }
    }

    pub fn local_node(&self) -> NodeId {
        self.local
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Keep [`Record`]s for [`Service::poll_record`] (the simulator, tests). Off by
    /// default: a caller that turns it on drains them.
    pub fn set_recording(&mut self, on: bool) {
        self.records = on.then(VecDeque::new);
    }

    /// True until the first sync completes and from each regular configuration until
    /// its sync completes.
    pub fn in_sync(&self) -> bool {
        self.sync.is_some() || self.synced.is_none()
    }

    pub fn synced_ring(&self) -> Option<RingId> {
        self.synced.as_ref().map(|s| s.0)
    }

    /// Messages still to be handed to Totem (owed ones and this node's SYNC).
    pub fn owed_submissions(&self) -> usize {
        self.owed.len() + usize::from(self.sync.as_ref().is_some_and(|s| !s.submitted))
    }

    /// A hash of the whole replicated table: equal on every node of a synced ring
    /// that delivered the same messages.
    pub fn digest(&self) -> u64 {
        digest(&codec::encode_table(&self.table))
    }

    /// Every group, by name (`ringcast gs groups`).
    pub fn groups(&self) -> Vec<GroupView> {
        self.table
            .iter()
            .map(|(name, g)| GroupView {
                name: name.clone(),
                attributes: g.attrs,
                providers: g.providers.iter().map(|e| (e.id, e.failed)).collect(),
                state: g.state.clone(),
                seq: g.seq,
                active: g.active.as_ref().map(|p| (p.kind, p.phase)),
                waiting_for: g
                    .active
                    .iter()
                    .flat_map(|p| p.voters.iter().filter(|v| !p.votes.contains_key(v)))
                    .copied()
                    .collect(),
                pending: g.pending.len(),
            })
            .collect()
    }

    /// The current providers of `group`, in order.
    pub fn providers(&self, group: &GroupName) -> Vec<ProviderId> {
        self.table
            .get(group)
            .map(|g| g.member_ids())
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ client requests

    /// `ha_gs_init`: a client with an optional deactivate script.
    pub fn connect(
        &mut self,
        client: ClientId,
        deactivate_script: Option<String>,
    ) -> Result<(), GsError> {
        if self.clients.contains_key(&client) {
            return Err(GsError::Exists);
        }
        if self.clients.len() >= self.limits.max_clients {
            return Err(GsError::NoMemory);
        }
        self.clients.insert(
            client,
            LocalClient {
                script: deactivate_script,
            },
        );
        Ok(())
    }

    /// `ha_gs_quit` or the client's connection closed: every provider it has fails
    /// (`ProcessFailed`), through an ordered CLIENT_DOWN that is never lost.
    pub fn disconnect(&mut self, client: ClientId, totem: &mut impl Submit) {
        if self.clients.remove(&client).is_none() {
            return;
        }
        self.events.retain(|(c, _)| *c != client);
        self.scripts.retain(|s| s.client != client);
        for subs in self.subs.values_mut() {
            subs.remove(&client);
        }
        self.subs.retain(|_, s| !s.is_empty());
        let mut tokens = Vec::new();
        self.locals.retain(|_, l| {
            if l.client == client {
                tokens.push(l.token);
            }
            l.client != client
        });
        // One CLIENT_DOWN per provider: the table knows them by their tokens.
        for token in tokens {
            self.owe(codec::encode(&Message::ClientDown { client: token }), totem);
        }
    }

    fn check_client(&self, client: ClientId) -> Result<(), GsError> {
        if self.clients.contains_key(&client) {
            Ok(())
        } else {
            Err(GsError::NoInit)
        }
    }

    /// `ha_gs_join`: Ok means the join was sent; it takes effect with the approval of
    /// its join protocol, or fails later with a delayed error.
    pub fn join(
        &mut self,
        client: ClientId,
        group: &GroupName,
        instance: u16,
        attrs: GroupAttributes,
        totem: &mut impl Submit,
    ) -> Result<(), GsError> {
        self.check_client(client)?;
        if self
            .locals
            .iter()
            .any(|((g, _), l)| g == group && l.client == client)
        {
            return Err(GsError::Exists);
        }
        if self.locals.contains_key(&(group.clone(), instance)) {
            return Err(GsError::DuplicateInstanceNumber);
        }
        if let Some(g) = self.table.get(group) {
            if g.attrs != attrs {
                return Err(GsError::BadGroupAttributes);
            }
            // An instance number stays in use until the protocol that removes its
            // provider has ended, even after a goodbye: until then the table's events
            // for it would reach the new joiner (docs/group-services.md §2.12).
            let id = ProviderId {
                node: self.local,
                instance,
            };
            if g.knows_instance(id) {
                return Err(GsError::DuplicateInstanceNumber);
            }
        }
        if self.in_flight.contains_key(&(group.clone(), instance)) {
            return Err(GsError::DuplicateInstanceNumber);
        }
        let token = self.next_token;
        let m = Message::Join {
            group: group.clone(),
            client: token,
            instance,
            attrs,
        };
        self.send(codec::encode(&m), totem)?;
        self.next_token += 1;
        *self.in_flight.entry((group.clone(), instance)).or_default() += 1;
        self.locals.insert(
            (group.clone(), instance),
            LocalProvider {
                client,
                token,
                joined: false,
            },
        );
        Ok(())
    }

    /// The instance number of `client`'s provider (or joiner) of `group`, if it has one.
    pub fn local_instance(&self, client: ClientId, group: &GroupName) -> Option<u16> {
        self.provider_of(client, group).ok()
    }

    fn provider_of(&self, client: ClientId, group: &GroupName) -> Result<u16, GsError> {
        self.check_client(client)?;
        self.locals
            .iter()
            .find(|((g, _), l)| g == group && l.client == client)
            .map(|((_, i), _)| *i)
            .ok_or(GsError::BadMemberToken)
    }

    /// Leave, expel, state change, message, attribute change (docs/group-services.md §2.3–§2.8).
    /// `Collide` at once when this node already sees the group busy; else later.
    pub fn propose(
        &mut self,
        client: ClientId,
        group: &GroupName,
        proposal: Proposal,
        totem: &mut impl Submit,
    ) -> Result<(), GsError> {
        let instance = self.provider_of(client, group)?;
        if !self.locals[&(group.clone(), instance)].joined {
            return Err(GsError::BadMemberToken);
        }
        let max = self.limits.max_value_bytes;
        let g = self.table.get(group).ok_or(GsError::BadMemberToken)?;
        match &proposal.body {
            ProposalBody::ChangeState { state: b } | ProposalBody::Message { data: b }
                if b.len() > max =>
            {
                return Err(GsError::BadParameter);
            }
            ProposalBody::Expel {
                targets,
                deactivate_phase,
                flag,
            } => {
                if targets.is_empty()
                    || flag.len() > max
                    || targets.len() > self.limits.max_providers_per_group
                {
                    return Err(GsError::BadParameter);
                }
                if proposal.phases == Phases::One && *deactivate_phase > 1 {
                    return Err(GsError::InvalidDeactivatePhase);
                }
            }
            _ => {}
        }
        if g.is_busy() {
            return Err(GsError::Collide);
        }
        let m = Message::Propose {
            group: group.clone(),
            client: self.locals[&(group.clone(), instance)].token,
            instance,
            proposal,
        };
        self.send(codec::encode(&m), totem)
    }

    /// `ha_gs_vote` for phase `phase` of protocol `seq` (from the n-phase
    /// notification it answers, so that a vote can never count for another phase).
    pub fn vote(
        &mut self,
        client: ClientId,
        group: &GroupName,
        seq: u64,
        phase: u32,
        vote: Vote,
        totem: &mut impl Submit,
    ) -> Result<(), GsError> {
        let instance = self.provider_of(client, group)?;
        let max = self.limits.max_value_bytes;
        if vote.state.as_ref().is_some_and(|b| b.len() > max)
            || vote.message.as_ref().is_some_and(|b| b.len() > max)
        {
            return Err(GsError::BadParameter);
        }
        let id = ProviderId {
            node: self.local,
            instance,
        };
        let expected = self
            .table
            .get(group)
            .and_then(|g| g.active.as_ref())
            .is_some_and(|p| {
                p.seq == seq
                    && p.phase == phase
                    && p.phases == Phases::N
                    && p.voters.contains(&id)
                    && !p.votes.contains_key(&id)
            });
        if !expected {
            return Err(GsError::VoteNotExpected);
        }
        let m = Message::Vote {
            group: group.clone(),
            client: self.locals[&(group.clone(), instance)].token,
            instance,
            seq,
            phase,
            vote,
        };
        self.send(codec::encode(&m), totem)
    }

    /// `ha_gs_goodbye`: the caller is out at once (no more events for it); the others
    /// see a failure leave with `SaidGoodbye`.
    pub fn goodbye(
        &mut self,
        client: ClientId,
        group: &GroupName,
        totem: &mut impl Submit,
    ) -> Result<(), GsError> {
        let instance = self.provider_of(client, group)?;
        let token = self
            .locals
            .remove(&(group.clone(), instance))
            .map_or(client, |l| l.token);
        self.events
            .retain(|(c, e)| !(*c == client && provider_event_of(e, group)));
        let m = Message::Goodbye {
            group: group.clone(),
            client: token,
            instance,
        };
        *self.in_flight.entry((group.clone(), instance)).or_default() += 1;
        self.owe(codec::encode(&m), totem);
        Ok(())
    }

    /// `ha_gs_subscribe`: an unknown group is a delayed `UnknownGroup`.
    pub fn subscribe(
        &mut self,
        client: ClientId,
        group: &GroupName,
        flags: SubscribeFlags,
    ) -> Result<(), GsError> {
        self.check_client(client)?;
        if !flags.membership && !flags.state {
            return Err(GsError::BadParameter);
        }
        if self
            .subs
            .get(group)
            .is_some_and(|s| s.contains_key(&client))
        {
            return Err(GsError::Exists);
        }
        if !self.table.contains_key(group) {
            self.events.push_back((
                client,
                GsEvent::DelayedError {
                    group: group.clone(),
                    request: RequestKind::Subscribe,
                    error: GsError::UnknownGroup,
                },
            ));
            return Ok(());
        }
        self.subs
            .entry(group.clone())
            .or_default()
            .insert(client, flags);
        Ok(())
    }

    pub fn unsubscribe(&mut self, client: ClientId, group: &GroupName) -> Result<(), GsError> {
        self.check_client(client)?;
        let subs = self.subs.get_mut(group).ok_or(GsError::BadMemberToken)?;
        subs.remove(&client).ok_or(GsError::BadMemberToken)?;
        if subs.is_empty() {
            self.subs.remove(group);
        }
        Ok(())
    }

    /// A deactivate script of [`Service::poll_script`] ended (`ok`: exit 0 in time).
    pub fn script_done(&mut self, run: &ScriptRun, ok: bool, totem: &mut impl Submit) {
        let m = Message::ScriptResult {
            group: run.group.clone(),
            client: run.client,
            instance: run.provider.instance,
            seq: run.seq,
            ok,
        };
        self.owe(codec::encode(&m), totem);
    }

    /// Sends `payload` unless owed messages wait (they go first, in order).
    fn send(&mut self, payload: Bytes, totem: &mut impl Submit) -> Result<(), GsError> {
        self.flush(totem);
        if !self.owed.is_empty() {
            return Err(GsError::TryAgain);
        }
        submit(totem, payload)
    }

    fn owe(&mut self, payload: Bytes, totem: &mut impl Submit) {
        self.owed.push_back(payload);
        self.flush(totem);
    }

    fn flush(&mut self, totem: &mut impl Submit) {
        while let Some(p) = self.owed.front() {
            if submit(totem, p.clone()).is_err() {
                self.stats.submit_retries += 1;
                return;
            }
            self.owed.pop_front();
        }
    }

    // ------------------------------------------------------------ outputs, time

    pub fn poll_event(&mut self) -> Option<(ClientId, GsEvent)> {
        self.events.pop_front()
    }

    pub fn poll_script(&mut self) -> Option<ScriptRun> {
        self.scripts.pop_front()
    }

    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.as_mut()?.pop_front()
    }

    /// The earliest phase deadline this node enforces (it coordinates that group).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers
            .values()
            .filter(|t| !t.fired)
            .map(|t| t.at)
            .min()
    }

    /// Deadlines that passed become ordered PHASE_TIMEOUTs (§6.4).
    pub fn handle_timeout(&mut self, now: Instant, totem: &mut impl Submit) {
        let mut due = Vec::new();
        for (name, t) in self.timers.iter_mut() {
            if !t.fired && t.at <= now {
                t.fired = true;
                due.push(Message::PhaseTimeout {
                    group: name.clone(),
                    seq: t.seq,
                    phase: t.phase,
                });
            }
        }
        for m in due {
            self.owe(codec::encode(&m), totem);
        }
    }

    /// Retries what Totem refused: this node's SYNC, then owed messages.
    pub fn poll(&mut self, totem: &mut impl Submit) {
        self.submit_sync(totem);
        if self.sync.is_none() {
            self.flush(totem);
        }
    }

    // ------------------------------------------------------------ totem events

    pub fn handle_totem_event(
        &mut self,
        now: Instant,
        event: totem::Event,
        totem: &mut impl Submit,
    ) {
        match event {
            totem::Event::Deliver(d) => {
                self.ring = d.ring_id;
                let message = match codec::decode(&d.payload) {
                    Ok(m) => m,
                    Err(_) => {
                        self.stats.malformed += 1;
                        return;
                    }
                };
                if d.sender == self.local {
                    self.landed(&message);
                }
                if let Message::Sync { ring_id, table } = message {
                    self.on_sync(now, d.sender, d.ring_id, ring_id, table, totem);
                    return;
                }
                if self.synced.is_none() && self.sync.is_none() {
                    return;
                }
                if let Some(sync) = &mut self.sync {
                    self.stats.held += 1;
                    sync.held.push_back((d.sender, message));
                    return;
                }
                self.apply(now, d.sender, message);
            }
            totem::Event::Configuration(change) => match change.kind {
                ConfigurationKind::Transitional => self.transitional = Some(change.members),
                ConfigurationKind::Regular => self.on_regular(now, change, totem),
            },
        }
    }

    fn on_regular(&mut self, now: Instant, change: ConfigurationChange, totem: &mut impl Submit) {
        if let Some(aborted) = self.sync.take() {
            self.stats.syncs_aborted += 1;
            for (sender, m) in aborted.held {
                self.apply(now, sender, m);
            }
        }
        let transitional = self.transitional.take();
        let table = match (&self.synced, self.last_regular, &transitional) {
            (None, _, _) => SyncTable::None,
            (Some((synced, _)), Some(last), Some(t))
                if *synced == last
                    && t.len() > 1
                    && t.contains(&self.local)
                    && t[0] != self.local =>
            {
                // Virtual synchrony: the members of the transitional configuration
                // delivered the same messages, so the lowest one holds this very table.
                SyncTable::SameAs(t[0])
            }
            _ => SyncTable::Full(codec::encode_table(&self.table)),
        };
        self.last_regular = Some(change.ring_id);
        self.ring = change.ring_id;
        let message = codec::encode(&Message::Sync {
            ring_id: change.ring_id,
            table,
        });
        self.sync = Some(SyncRun {
            ring_id: change.ring_id,
            members: change.members,
            tables: BTreeMap::new(),
            held: VecDeque::new(),
            message,
            submitted: false,
        });
        self.submit_sync(totem);
    }

    fn submit_sync(&mut self, totem: &mut impl Submit) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        if sync.submitted {
            return;
        }
        match totem.submit_sync(sync.message.clone()) {
            Ok(()) => sync.submitted = true,
            Err(SubmitError::TryAgain) => self.stats.submit_retries += 1,
            Err(e @ SubmitError::TooBig { .. }) => {
                panic!(
                    "GS SYNC refused ({e}): totem max_message_bytes is too small for the GS table"
                )
            }
        }
    }

    fn on_sync(
        &mut self,
        now: Instant,
        sender: NodeId,
        delivered_on: RingId,
        tagged: RingId,
        table: SyncTable,
        totem: &mut impl Submit,
    ) {
        let Some(sync) = self.sync.as_mut() else {
            self.stats.stale_syncs += 1;
            return;
        };
        if tagged != sync.ring_id
            || delivered_on != sync.ring_id
            || sync.members.binary_search(&sender).is_err()
            || sync.tables.contains_key(&sender)
        {
            self.stats.stale_syncs += 1;
            return;
        }
        sync.tables.insert(sender, table);
        if sync.tables.len() == sync.members.len() {
            self.activate(now, totem);
        }
    }

    /// Every member's SYNC is in: merge the tables (§6.6), fail what is gone.
    fn activate(&mut self, now: Instant, totem: &mut impl Submit) {
        let sync = self.sync.take().expect("activate runs a sync");
        // Sources: distinct tables and the nodes (the side) that hold each.
        let mut sources: BTreeMap<Bytes, Vec<NodeId>> = BTreeMap::new();
        for &m in &sync.members {
            let bytes = match sync.tables.get(&m) {
                Some(SyncTable::Full(b)) => b,
                Some(SyncTable::SameAs(x)) => match sync.tables.get(x) {
                    Some(SyncTable::Full(b)) => b,
                    _ => continue,
                },
                _ => continue,
            };
            sources.entry(bytes.clone()).or_default().push(m);
        }
        let mut sides: Vec<(Vec<NodeId>, BTreeMap<GroupName, Group>)> = Vec::new();
        for (bytes, origin) in sources {
            match codec::decode_table(&bytes) {
                Ok(t) => sides.push((origin, t)),
                Err(_) => self.stats.malformed += 1,
            }
        }
        sides.sort_by_key(|(origin, _)| origin[0]);
        let mut instances: BTreeMap<GroupName, Vec<(usize, Group)>> = BTreeMap::new();
        for (i, (_, t)) in sides.iter_mut().enumerate() {
            for (name, g) in std::mem::take(t) {
                instances.entry(name).or_default().push((i, g));
            }
        }
        self.table.clear();
        let mut origin_of: BTreeMap<GroupName, usize> = BTreeMap::new();
        for (name, mut list) in instances {
            let rank = |(i, g): &(usize, Group)| {
                let origin = &sides[*i].0;
                let live: Vec<ProviderId> = g
                    .live()
                    .filter(|e| origin.contains(&e.id.node))
                    .map(|e| e.id)
                    .collect();
                (
                    std::cmp::Reverse(live.len()),
                    live.first().copied(),
                    origin[0],
                )
            };
            list.sort_by_key(|x| rank(x));
            let mut list = list.into_iter();
            let (winner_side, winner) = list.next().expect("at least one instance");
            for (side, loser) in list {
                self.cast_out(&name, &loser, &sides[side].0, &winner);
            }
            origin_of.insert(name.clone(), winner_side);
            self.table.insert(name, winner);
        }
        // Recorded before what the failures below bring: the merged tables, whose
        // protocols may have started elsewhere.
        self.ring = sync.ring_id;
        let d = self.digest();
        self.record(Record::Synced {
            ring: sync.ring_id,
            digest: d,
        });
        // Whatever lived on a node outside its table's side failed with it.
        let names: Vec<GroupName> = self.table.keys().cloned().collect();
        for name in &names {
            let origin = &sides[origin_of[name]].0;
            let g = &self.table[name];
            let mut gone: Vec<(ProviderId, ClientId)> = g
                .live()
                .map(|e| (e.id, e.client))
                .chain(g.pending.iter().filter_map(|p| match p {
                    Pending::Join(e) => Some((e.id, e.client)),
                    Pending::Failure(_) => None,
                }))
                .chain(
                    g.active
                        .iter()
                        .filter(|p| p.kind == ProtocolKind::Join)
                        .flat_map(|p| p.changes.iter().map(|(e, _)| (e.id, e.client))),
                )
                .filter(|(id, _)| !origin.contains(&id.node))
                .collect();
            gone.sort();
            gone.dedup();
            let mut notes = Vec::new();
            if let Some(g) = self.table.get_mut(name) {
                for (id, client) in gone {
                    g.on_failure(id, client, LeaveReason::NodeFailed, &mut notes);
                }
            }
            self.tell(name, notes);
        }
        self.stats.syncs_completed += 1;
        self.ring = sync.ring_id;
        self.synced = Some((sync.ring_id, sync.members));
        // The next coordinator re-arms the full limit from here (§6.4).
        self.timers.clear();
        for name in &names {
            self.refresh_timer(name, now);
        }
        totem.sync_done(sync.ring_id);
        for (sender, m) in sync.held {
            self.apply(now, sender, m);
        }
        self.flush(totem);
    }

    /// A losing instance of `name` (§6.6): if this node is on its side, its running
    /// protocol is rejected for the local participants, its local providers get a
    /// merge notification and are out, and local subscribers see the winner.
    fn cast_out(&mut self, name: &GroupName, loser: &Group, side: &[NodeId], winner: &Group) {
        self.stats.cast_out += 1;
        if !side.contains(&self.local) {
            return;
        }
        // Live providers only: a failed one's token died with its failure (goodbye,
        // death) or an earlier cast-out, and its client may hold a new provider with
        // the same instance number whose JOIN is still travelling (§2.12).
        let mut ours: Vec<(ProviderId, ClientId)> = loser
            .live()
            .map(|e| (e.id, e.client))
            .chain(loser.pending.iter().filter_map(|p| match p {
                Pending::Join(e) => Some((e.id, e.client)),
                Pending::Failure(_) => None,
            }))
            .chain(
                loser
                    .active
                    .iter()
                    .flat_map(|p| p.changes.iter().map(|(e, _)| (e.id, e.client))),
            )
            .filter_map(|(id, token)| self.local_client(name, id, token).map(|c| (id, c)))
            .collect();
        ours.sort();
        ours.dedup();
        if let (Some(p), Some(info)) = (&loser.active, loser.info()) {
            for &(id, client) in &ours {
                if p.voters.contains(&id) || p.changes.iter().any(|(e, _)| e.id == id) {
                    self.events.push_back((
                        client,
                        GsEvent::Rejected {
                            group: name.clone(),
                            provider: id,
                            seq: p.seq,
                            info: info.clone(),
                            reason: RejectReason::CastOut,
                        },
                    ));
                }
            }
        }
        for &(id, client) in &ours {
            self.locals.remove(&(name.clone(), id.instance));
            self.events.push_back((
                client,
                GsEvent::Merge {
                    group: name.clone(),
                    provider: id,
                },
            ));
        }
        let changing: Vec<(ProviderId, Change)> = loser
            .live()
            .filter(|e| side.contains(&e.id.node))
            .map(|e| (e.id, Change::Leaves(LeaveReason::CastOut)))
            .collect();
        let subs: Vec<(ClientId, SubscribeFlags)> = self
            .subs
            .get(name)
            .map(|s| s.iter().map(|(c, f)| (*c, *f)).collect())
            .unwrap_or_default();
        for (client, flags) in subs {
            self.events.push_back((
                client,
                GsEvent::Subscription {
                    group: name.clone(),
                    seq: winner.seq,
                    kind: SubscriptionKind {
                        membership: flags.membership,
                        state: flags.state,
                        dissolved: false,
                        merged: true,
                    },
                    state: flags.state.then(|| winner.state.clone()),
                    members: if flags.membership {
                        winner.member_ids()
                    } else {
                        Vec::new()
                    },
                    changing: if flags.membership {
                        changing.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }

    /// One of this node's own messages came back in the agreed order.
    fn landed(&mut self, message: &Message) {
        let (Message::Join {
            group, instance, ..
        }
        | Message::Goodbye {
            group, instance, ..
        }) = message
        else {
            return;
        };
        let key = (group.clone(), *instance);
        if let Some(n) = self.in_flight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&key);
            }
        }
    }

    /// The local client of the table's provider `id` named by `token`, if it is this
    /// node's and still held.
    fn local_client(&self, group: &GroupName, id: ProviderId, token: ClientId) -> Option<ClientId> {
        if id.node != self.local {
            return None;
        }
        self.locals
            .get(&(group.clone(), id.instance))
            .filter(|l| l.token == token)
            .map(|l| l.client)
    }

    fn is_local(&self, group: &GroupName, id: ProviderId, token: ClientId) -> bool {
        self.local_client(group, id, token).is_some()
    }

    // ------------------------------------------------------------ deliveries

    /// One GS message at its place in the agreed order.
    fn apply(&mut self, now: Instant, sender: NodeId, message: Message) {
        self.stats.applied += 1;
        match message {
            Message::Join {
                group,
                client,
                instance,
                attrs,
            } => {
                self.on_join(sender, &group, client, instance, attrs);
                self.refresh_timer(&group, now);
            }
            Message::Propose {
                group,
                client,
                instance,
                proposal,
            } => {
                let kind = proposal.body.kind();
                let entry = Entry {
                    id: ProviderId {
                        node: sender,
                        instance,
                    },
                    client,
                    failed: None,
                };
                let mut notes = Vec::new();
                let result = match self.table.get_mut(&group) {
                    Some(g) => g.on_propose(&entry, proposal, &mut notes),
                    None => Err(GsError::BadMemberToken),
                };
                if let Err(error) = result {
                    notes.push(Note::Error {
                        node: sender,
                        client,
                        request: RequestKind::Propose(kind),
                        error,
                    });
                }
                self.tell(&group, notes);
                self.refresh_timer(&group, now);
            }
            Message::Vote {
                group,
                client,
                instance,
                seq,
                phase,
                vote,
            } => {
                let entry = Entry {
                    id: ProviderId {
                        node: sender,
                        instance,
                    },
                    client,
                    failed: None,
                };
                let mut notes = Vec::new();
                let result = match self.table.get_mut(&group) {
                    Some(g) => g.on_vote(&entry, seq, phase, vote, &mut notes),
                    None => Err(GsError::VoteNotExpected),
                };
                if let Err(error) = result {
                    notes.push(Note::Error {
                        node: sender,
                        client,
                        request: RequestKind::Vote { seq, phase },
                        error,
                    });
                }
                self.tell(&group, notes);
                self.refresh_timer(&group, now);
            }
            Message::Goodbye {
                group,
                client,
                instance,
            } => {
                let mut notes = Vec::new();
                if let Some(g) = self.table.get_mut(&group) {
                    g.on_failure(
                        ProviderId {
                            node: sender,
                            instance,
                        },
                        client,
                        LeaveReason::SaidGoodbye,
                        &mut notes,
                    );
                }
                self.tell(&group, notes);
                self.refresh_timer(&group, now);
            }
            Message::ClientDown { client } => {
                let names: Vec<GroupName> = self.table.keys().cloned().collect();
                for name in names {
                    let g = &self.table[&name];
                    let mut ids: Vec<ProviderId> = g
                        .providers
                        .iter()
                        .map(|e| (e.id, e.client))
                        .chain(g.pending.iter().filter_map(|p| match p {
                            Pending::Join(e) => Some((e.id, e.client)),
                            Pending::Failure(_) => None,
                        }))
                        .chain(
                            g.active
                                .iter()
                                .flat_map(|p| p.changes.iter().map(|(e, _)| (e.id, e.client))),
                        )
                        .filter(|(id, c)| id.node == sender && *c == client)
                        .map(|(id, _)| id)
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    ids.sort();
                    ids.dedup();
                    let mut notes = Vec::new();
                    if let Some(g) = self.table.get_mut(&name) {
                        for id in ids {
                            g.on_failure(id, client, LeaveReason::ProcessFailed, &mut notes);
                        }
                    }
                    self.tell(&name, notes);
                    self.refresh_timer(&name, now);
                }
            }
            Message::PhaseTimeout { group, seq, phase } => {
                let mut notes = Vec::new();
                if let Some(g) = self.table.get_mut(&group) {
                    g.on_timeout(seq, phase, &mut notes);
                }
                self.tell(&group, notes);
                self.refresh_timer(&group, now);
            }
            Message::ScriptResult {
                group,
                instance,
                seq,
                ok,
                ..
            } => {
                let mut notes = Vec::new();
                if let Some(g) = self.table.get_mut(&group) {
                    g.on_script_result(
                        seq,
                        ProviderId {
                            node: sender,
                            instance,
                        },
                        ok,
                        &mut notes,
                    );
                }
                self.tell(&group, notes);
            }
            Message::Sync { .. } => unreachable!("syncs are never applied"),
        }
    }

    fn on_join(
        &mut self,
        sender: NodeId,
        group: &GroupName,
        client: ClientId,
        instance: u16,
        attrs: GroupAttributes,
    ) {
        let id = ProviderId {
            node: sender,
            instance,
        };
        let check = match self.table.get(group) {
            Some(g) if g.attrs != attrs => Err(GsError::BadGroupAttributes),
            Some(g) if g.knows_instance(id) => Err(GsError::DuplicateInstanceNumber),
            Some(g)
                if g.providers.iter().any(|e| e.id.node == sender && e.client == client)
                    || g.pending.iter().any(|p| matches!(p, Pending::Join(e) if e.id.node == sender && e.client == client)) =>
            {
                Err(GsError::Exists)
            }
            Some(g) if g.providers.len() + g.pending.len() >= self.limits.max_providers_per_group => Err(GsError::NoMemory),
            Some(_) => Ok(()),
            None if self.table.len() >= self.limits.max_groups => Err(GsError::NoMemory),
            None => Ok(()),
        };
        let mut notes = Vec::new();
        match check {
            Ok(()) => {
                let g = self
                    .table
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(attrs));
                g.on_join(
                    Entry {
                        id,
                        client,
                        failed: None,
                    },
                    &mut notes,
                );
            }
            Err(error) => notes.push(Note::Error {
                node: sender,
                client,
                request: RequestKind::Join,
                error,
            }),
        }
        self.tell(group, notes);
    }

    // ------------------------------------------------------------ notes → clients

    /// Turns what happened in `name` into events for this node's clients.
    fn tell(&mut self, name: &GroupName, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Started(seq) => {
                    self.stats.protocols_started += 1;
                    self.record(Record::Started {
                        ring: self.ring,
                        group: name.clone(),
                        seq,
                    });
                }
                Note::Phase(note) => self.tell_phase(name, *note),
                Note::Ended(outcome, info, clients) => {
                    self.tell_end(name, *outcome, *info, &clients.0, &clients.1)
                }
                Note::Announce(kind, providers) => {
                    let to: Vec<(ProviderId, ClientId)> = self
                        .locals
                        .iter()
                        .filter(|((g, _), l)| g == name && l.joined)
                        .map(|((_, i), l)| {
                            (
                                ProviderId {
                                    node: self.local,
                                    instance: *i,
                                },
                                l.client,
                            )
                        })
                        .collect();
                    for (provider, client) in to {
                        self.events.push_back((
                            client,
                            GsEvent::Announcement {
                                group: name.clone(),
                                provider,
                                kind,
                                providers: providers.clone(),
                            },
                        ));
                    }
                }
                Note::Script {
                    provider,
                    client,
                    seq,
                    flag,
                    time_limit_ms,
                } => {
                    let Some(client) = self.local_client(name, provider, client) else {
                        continue;
                    };
                    if let Some(script) = self.clients.get(&client).and_then(|c| c.script.clone()) {
                        self.scripts.push_back(ScriptRun {
                            client,
                            script,
                            group: name.clone(),
                            seq,
                            provider,
                            flag,
                            reason: "expelled",
                            time_limit_ms: if time_limit_ms == 0 {
                                self.limits.default_script_ms
                            } else {
                                time_limit_ms
                            },
                        });
                    }
                }
                Note::Error {
                    node,
                    client: token,
                    request,
                    error,
                } => {
                    // The request's provider, by its token; gone (a goodbye, a cast-out)
                    // means nobody waits for the answer.
                    let Some((&key, &client)) = self
                        .locals
                        .iter()
                        .find(|((g, _), l)| g == name && l.token == token)
                        .map(|((_, i), l)| (i, &l.client))
                    else {
                        continue;
                    };
                    if node != self.local {
                        continue;
                    }
                    if request == RequestKind::Join {
                        self.locals.remove(&(name.clone(), key));
                    }
                    self.events.push_back((
                        client,
                        GsEvent::DelayedError {
                            group: name.clone(),
                            request,
                            error,
                        },
                    ));
                }
                Note::Dissolved => self.dissolve(name),
            }
        }
    }

    fn tell_phase(&mut self, name: &GroupName, note: group::PhaseNote) {
        for (v, client) in note.to {
            let Some(client) = self.local_client(name, v, client) else {
                continue;
            };
            self.events.push_back((
                client,
                GsEvent::NPhase {
                    group: name.clone(),
                    provider: v,
                    seq: note.seq,
                    phase: note.phase,
                    info: note.info.clone(),
                    summary: note.summary,
                    time_limit_ms: note.time_limit_ms,
                },
            ));
        }
    }

    fn tell_end(
        &mut self,
        name: &GroupName,
        outcome: Outcome,
        info: ProposalInfo,
        clients: &[ClientId],
        changing_clients: &[ClientId],
    ) {
        let approved = outcome.result.is_ok();
        if approved {
            self.stats.approved += 1;
        } else {
            self.stats.rejected += 1;
        }
        for (id, &token) in outcome.participants.iter().zip(clients) {
            let Some(client) = self.local_client(name, *id, token) else {
                continue;
            };
            let event = match outcome.result {
                Ok(()) => GsEvent::Approved {
                    group: name.clone(),
                    provider: *id,
                    seq: outcome.seq,
                    phases_run: outcome.phases_run,
                    info: info.clone(),
                    summary: outcome.summary,
                },
                Err(reason) => GsEvent::Rejected {
                    group: name.clone(),
                    provider: *id,
                    seq: outcome.seq,
                    info: info.clone(),
                    reason,
                },
            };
            self.events.push_back((client, event));
        }
        // Local tokens: joiners become providers or die; the departed are out.
        for ((id, change), &client) in outcome.changing.iter().zip(changing_clients) {
            if !self.is_local(name, *id, client) {
                continue;
            }
            let key = (name.clone(), id.instance);
            let Some(l) = self.locals.get_mut(&key) else {
                continue;
            };
            match (change, approved, l.joined) {
                (Change::Joins, true, false) => l.joined = true,
                // A rejected joiner, or a provider that left: its token is dead.
                (Change::Joins, false, false) | (Change::Leaves(_), true, true) => {
                    self.locals.remove(&key);
                }
                _ => {}
            }
        }
        if approved {
            self.tell_subscribers(name, &outcome, &info);
        }
        self.record(Record::Ended {
            ring: self.ring,
            group: name.clone(),
            outcome: Box::new(outcome),
        });
    }

    /// §4.8: approved changes of the membership or the state value only.
    fn tell_subscribers(&mut self, name: &GroupName, outcome: &Outcome, info: &ProposalInfo) {
        let Some(subs) = self.subs.get(name) else {
            return;
        };
        let membership_changed = !outcome.changing.is_empty()
            && matches!(
                outcome.kind,
                ProtocolKind::Join
                    | ProtocolKind::Leave
                    | ProtocolKind::FailureLeave
                    | ProtocolKind::Expel
            );
        let state_changed = outcome.state != info.state;
        for (&client, flags) in subs {
            let kind = SubscriptionKind {
                membership: flags.membership && membership_changed,
                state: flags.state && state_changed,
                dissolved: false,
                merged: false,
            };
            if !kind.membership && !kind.state {
                continue;
            }
            self.events.push_back((
                client,
                GsEvent::Subscription {
                    group: name.clone(),
                    seq: outcome.seq,
                    kind,
                    state: kind.state.then(|| outcome.state.clone()),
                    members: if kind.membership {
                        outcome.members.clone()
                    } else {
                        Vec::new()
                    },
                    changing: if kind.membership {
                        outcome.changing.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }

    fn dissolve(&mut self, name: &GroupName) {
        let Some(g) = self.table.get(name) else {
            return;
        };
        if !g.is_empty() {
            return;
        }
        let seq = g.seq;
        self.table.remove(name);
        self.timers.remove(name);
        for (client, _) in self.subs.remove(name).unwrap_or_default() {
            self.events.push_back((
                client,
                GsEvent::Subscription {
                    group: name.clone(),
                    seq,
                    kind: SubscriptionKind {
                        membership: false,
                        state: false,
                        dissolved: true,
                        merged: false,
                    },
                    state: None,
                    members: Vec::new(),
                    changing: Vec::new(),
                },
            ));
        }
    }

    fn record(&mut self, r: Record) {
        if let Some(records) = self.records.as_mut() {
            records.push_back(r);
        }
    }

    /// Arms (or drops) this node's deadline for the group's running phase: only the
    /// coordinator times phases out (§6.4).
    fn refresh_timer(&mut self, name: &GroupName, now: Instant) {
        let want = self.table.get(name).and_then(|g| {
            let p = g.active.as_ref()?;
            (p.phases == Phases::N && p.time_limit_ms > 0 && g.coordinator() == Some(self.local))
                .then_some((p.seq, p.phase, p.time_limit_ms))
        });
        match want {
            None => {
                self.timers.remove(name);
            }
            Some((seq, phase, limit)) => {
                if self
                    .timers
                    .get(name)
                    .is_some_and(|t| t.seq == seq && t.phase == phase)
                {
                    return;
                }
                self.timers.insert(
                    name.clone(),
                    Timer {
                        seq,
                        phase,
                        at: now + std::time::Duration::from_millis(u64::from(limit)),
                        fired: false,
                    },
                );
            }
        }
    }
}

/// Whether a queued event belongs to a provider of `group` (dropped at goodbye).
fn provider_event_of(e: &GsEvent, group: &GroupName) -> bool {
    match e {
        GsEvent::NPhase { group: g, .. }
        | GsEvent::Approved { group: g, .. }
        | GsEvent::Rejected { group: g, .. }
        | GsEvent::Announcement { group: g, .. }
        | GsEvent::Merge { group: g, .. } => g == group,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
