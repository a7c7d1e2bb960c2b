//! One replicated group: attributes, ordered providers, state value, the protocol in
//! progress and the pending membership changes. Every function here runs at the same
//! point of the agreed order on every node, reads nothing else, and reports what
//! happened as [`Note`]s; the service turns those into what local clients see. So every
//! node reaches the same outcome without a leader (§6.1). Section numbers (§) in this
//! file are those of docs/group-services.md; §4 holds the protocol rules.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::types::*;
use crate::totem::NodeId;

/// A provider in the table. `failed` is set when its failure is ordered; it stays a
/// member (with default votes in the running protocol) until its failure leave ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: ProviderId,
    pub client: ClientId,
    pub failed: Option<LeaveReason>,
}

/// A membership change waiting for the group to be idle (§4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    Join(Entry),
    Failure(ProviderId),
}

/// The protocol in progress (§4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Protocol {
    pub seq: u64,
    pub kind: ProtocolKind,
    pub proposer: Option<ProviderId>,
    pub phases: Phases,
    pub time_limit_ms: u32,
    /// Counted from 1.
    pub phase: u32,
    pub voters: Vec<ProviderId>,
    /// This phase's votes.
    pub votes: BTreeMap<ProviderId, Cast>,
    /// The votes of the phases that ended.
    pub history: Vec<Vec<(ProviderId, Cast)>>,
    pub default_vote: DefaultVote,
    /// Joiners (with their client) or departing providers.
    pub changes: Vec<(Entry, Change)>,
    pub proposed_state: Option<Bytes>,
    pub message: Option<Bytes>,
    /// Attached to votes of this phase: delivered with the next notification.
    pub attached: Vec<(ProviderId, Bytes)>,
    /// Attached in the previous phase: part of this phase's notification.
    pub delivered: Vec<(ProviderId, Bytes)>,
    pub new_attrs: Option<GroupAttributes>,
    /// Expel: (deactivate phase, flag, scripts started).
    pub expel: Option<(u32, Bytes, bool)>,
    /// `summary` flags for this phase's notification.
    pub summary: u32,
}

/// The outcome of one protocol, as every node records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub seq: u64,
    pub kind: ProtocolKind,
    pub proposer: Option<ProviderId>,
    /// `Ok(())` approved, else why it was rejected.
    pub result: Result<(), RejectReason>,
    pub phases_run: u32,
    pub changing: Vec<(ProviderId, Change)>,
    /// Providers and state value after the protocol.
    pub members: Vec<ProviderId>,
    pub state: Bytes,
    /// Every phase's votes.
    pub votes: Vec<Vec<(ProviderId, Cast)>>,
    /// Who is told the outcome: the voters and the changing providers still alive.
    pub participants: Vec<ProviderId>,
    pub summary: u32,
}

/// A phase as it began (later notes of the same input may already have ended it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PhaseNote {
    pub seq: u64,
    pub phase: u32,
    pub info: ProposalInfo,
    /// The voters to notify, with their clients.
    pub to: Vec<(ProviderId, ClientId)>,
    pub summary: u32,
    pub time_limit_ms: u32,
}

/// What happened in a group, for the service to tell local clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A protocol started (`seq`).
    Started(u64),
    /// A voting phase began: tell the voters that have no vote yet.
    Phase(Box<PhaseNote>),
    /// A protocol ended; the information is as it was before the change took effect.
    /// The third field holds the clients of the participants and of the changing
    /// providers, in the outcome's order.
    Ended(
        Box<Outcome>,
        Box<ProposalInfo>,
        (Vec<ClientId>, Vec<ClientId>),
    ),
    Announce(AnnouncementKind, Vec<ProviderId>),
    /// Run the deactivate script of this provider (on its node).
    Script {
        provider: ProviderId,
        client: ClientId,
        seq: u64,
        flag: Bytes,
        time_limit_ms: u32,
    },
    /// A delayed error for the client that made a request.
    Error {
        node: NodeId,
        client: ClientId,
        request: RequestKind,
        error: GsError,
    },
    /// The group has no provider and nothing pending: it is gone.
    Dissolved,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub attrs: GroupAttributes,
    pub providers: Vec<Entry>,
    pub state: Bytes,
    /// The sequence number of the last protocol started.
    pub seq: u64,
    pub active: Option<Protocol>,
    pub pending: VecDeque<Pending>,
}

impl Group {
    pub fn new(attrs: GroupAttributes) -> Group {
        Group {
            attrs,
            providers: Vec::new(),
            state: Bytes::new(),
            seq: 0,
            active: None,
            pending: VecDeque::new(),
        }
    }

    /// A provider proposal would collide: a protocol runs or a change is pending (§4.3).
    pub fn is_busy(&self) -> bool {
        self.active.is_some() || !self.pending.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty() && self.active.is_none() && self.pending.is_empty()
    }

    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.providers.iter().filter(|e| e.failed.is_none())
    }

    pub fn member_ids(&self) -> Vec<ProviderId> {
        self.providers.iter().map(|e| e.id).collect()
    }

    /// The client of a provider or of a joiner in the running protocol.
    pub fn client_of(&self, id: ProviderId) -> Option<ClientId> {
        self.entry(id).map(|e| e.client).or_else(|| {
            self.active
                .as_ref()?
                .changes
                .iter()
                .find(|(e, _)| e.id == id)
                .map(|(e, _)| e.client)
        })
    }

    fn entry(&self, id: ProviderId) -> Option<&Entry> {
        self.providers.iter().find(|e| e.id == id)
    }

    /// Is `id` known here as provider, pending joiner or joiner in progress?
    pub fn knows_instance(&self, id: ProviderId) -> bool {
        self.entry(id).is_some()
            || self
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Join(e) if e.id == id))
            || self.active.as_ref().is_some_and(|p| {
                p.kind == ProtocolKind::Join && p.changes.iter().any(|(e, _)| e.id == id)
            })
    }

    /// The node whose timer ends phases (§6.4): the oldest live provider's, else the
    /// first live voter's (a group being created).
    pub fn coordinator(&self) -> Option<NodeId> {
        if let Some(e) = self.live().next() {
            return Some(e.id.node);
        }
        let p = self.active.as_ref()?;
        p.voters
            .iter()
            .find(|v| !matches!(p.votes.get(v), Some(Cast::Failed(_))))
            .map(|v| v.node)
    }

    // ------------------------------------------------------------ inputs

    /// An ordered join request, already checked against the attributes.
    pub fn on_join(&mut self, entry: Entry, out: &mut Vec<Note>) {
        self.pending.push_back(Pending::Join(entry));
        self.advance(out);
    }

    /// An ordered provider proposal (§4.3): starts only if the group is idle.
    pub fn on_propose(
        &mut self,
        proposer: &Entry,
        proposal: Proposal,
        out: &mut Vec<Note>,
    ) -> Result<(), GsError> {
        if self.is_busy() {
            return Err(GsError::Collide);
        }
        if !self
            .providers
            .iter()
            .any(|e| e == proposer && e.failed.is_none())
        {
            return Err(GsError::BadMemberToken);
        }
        let kind = proposal.body.kind();
        let mut p = self.protocol(
            kind,
            Some(proposer.id),
            proposal.phases,
            proposal.time_limit_ms,
        );
        let live: Vec<ProviderId> = self.live().map(|e| e.id).collect();
        match proposal.body {
            ProposalBody::Leave { code } => {
                p.changes = vec![(proposer.clone(), Change::Leaves(LeaveReason::Left { code }))];
                p.voters = live;
            }
            ProposalBody::Expel {
                targets,
                deactivate_phase,
                flag,
            } => {
                if targets.is_empty() {
                    return Err(GsError::BadParameter);
                }
                if proposal.phases == Phases::One && deactivate_phase > 1 {
                    return Err(GsError::InvalidDeactivatePhase);
                }
                let mut changes = Vec::new();
                for t in &targets {
                    let Some(e) = self.live().find(|e| e.id == *t) else {
                        return Err(GsError::BadParameter);
                    };
                    if !changes.iter().any(|(c, _): &(Entry, Change)| c.id == *t) {
                        changes.push((e.clone(), Change::Leaves(LeaveReason::Expelled)));
                    }
                }
                p.voters = live
                    .into_iter()
                    .filter(|v| !changes.iter().any(|(c, _)| c.id == *v))
                    .collect();
                p.changes = changes;
                p.expel = Some((deactivate_phase, flag, false));
            }
            ProposalBody::ChangeState { state } => {
                p.proposed_state = Some(state);
                p.voters = live;
            }
            ProposalBody::Message { data } => {
                p.message = Some(data);
                p.voters = live;
            }
            ProposalBody::ChangeAttributes(attrs) => {
                p.new_attrs = Some(attrs);
                p.voters = live;
            }
        }
        self.start(p, out);
        Ok(())
    }

    /// An ordered vote (§4.4). Err: not expected (wrong protocol or phase, not a
    /// voter, already voted, or late).
    pub fn on_vote(
        &mut self,
        voter: &Entry,
        seq: u64,
        phase: u32,
        vote: Vote,
        out: &mut Vec<Note>,
    ) -> Result<(), GsError> {
        let known = self
            .entry(voter.id)
            .is_some_and(|e| e.client == voter.client)
            || self.active.as_ref().is_some_and(|p| {
                p.kind == ProtocolKind::Join
                    && p.changes
                        .iter()
                        .any(|(e, _)| e.id == voter.id && e.client == voter.client)
            });
        let Some(p) = self.active.as_mut() else {
            return Err(GsError::VoteNotExpected);
        };
        if !known
            || p.seq != seq
            || p.phase != phase
            || p.phases != Phases::N
            || !p.voters.contains(&voter.id)
            || p.votes.contains_key(&voter.id)
        {
            return Err(GsError::VoteNotExpected);
        }
        p.votes.insert(voter.id, Cast::Real(vote.value));
        if let Some(state) = vote.state {
            p.proposed_state = Some(state);
        }
        if let Some(message) = vote.message {
            p.attached.push((voter.id, message));
        }
        if let Some(default) = vote.default {
            // §4.6: the latest update in agreed order wins, from now on.
            p.default_vote = default;
        }
        self.evaluate(out);
        Ok(())
    }

    /// The failure of a provider (or of a joiner), ordered (§4.5).
    pub fn on_failure(
        &mut self,
        id: ProviderId,
        client: ClientId,
        reason: LeaveReason,
        out: &mut Vec<Note>,
    ) {
        // A pending joiner simply goes.
        let before = self.pending.len();
        self.pending
            .retain(|p| !matches!(p, Pending::Join(e) if e.id == id && e.client == client));
        if self.pending.len() != before {
            self.maybe_dissolve(out);
            return;
        }
        // A joiner of the running join leaves its change list (§4.5 "Joiners").
        if let Some(p) = self.active.as_mut() {
            if p.kind == ProtocolKind::Join
                && p.changes
                    .iter()
                    .any(|(e, _)| e.id == id && e.client == client)
            {
                p.changes.retain(|(e, _)| e.id != id);
                p.voters.retain(|v| *v != id);
                p.votes.remove(&id);
                if p.changes.is_empty() {
                    self.conclude(Err(RejectReason::JoinersFailed), out);
                } else {
                    self.evaluate(out);
                }
                return;
            }
        }
        let Some(entry) = self
            .providers
            .iter_mut()
            .find(|e| e.id == id && e.client == client && e.failed.is_none())
        else {
            return;
        };
        entry.failed = Some(reason);
        self.pending.push_back(Pending::Failure(id));
        if let Some(p) = self.active.as_mut() {
            if p.voters.contains(&id) && !p.votes.contains_key(&id) {
                p.votes.insert(id, Cast::Failed(p.default_vote));
            }
            self.evaluate(out);
        }
        self.advance(out);
    }

    /// The coordinator's ordered timeout of a phase (§6.4).
    pub fn on_timeout(&mut self, seq: u64, phase: u32, out: &mut Vec<Note>) {
        let Some(p) = self.active.as_mut() else {
            return;
        };
        if p.seq != seq || p.phase != phase || p.phases != Phases::N {
            return;
        }
        let late: Vec<ProviderId> = p
            .voters
            .iter()
            .copied()
            .filter(|v| !p.votes.contains_key(v))
            .collect();
        if late.is_empty() {
            return;
        }
        for v in &late {
            p.votes.insert(*v, Cast::Late(p.default_vote));
        }
        out.push(Note::Announce(AnnouncementKind::VoteTimeout, late));
        self.evaluate(out);
    }

    /// An ordered deactivate-script result (§6.5): a failure is announced; it never
    /// blocks the protocol.
    pub fn on_script_result(
        &mut self,
        seq: u64,
        provider: ProviderId,
        ok: bool,
        out: &mut Vec<Note>,
    ) {
        if ok {
            return;
        }
        if let Some(p) = self.active.as_mut() {
            if p.seq == seq {
                p.summary |= summary::SCRIPT_FAILED;
            }
        }
        out.push(Note::Announce(
            AnnouncementKind::ScriptFailed,
            vec![provider],
        ));
    }

    // ------------------------------------------------------------ protocol

    fn protocol(
        &self,
        kind: ProtocolKind,
        proposer: Option<ProviderId>,
        phases: Phases,
        time_limit_ms: u32,
    ) -> Protocol {
        Protocol {
            seq: self.seq + 1,
            kind,
            proposer,
            phases,
            time_limit_ms,
            phase: 1,
            voters: Vec::new(),
            votes: BTreeMap::new(),
            history: Vec::new(),
            default_vote: self.attrs.default_vote,
            changes: Vec::new(),
            proposed_state: None,
            message: None,
            attached: Vec::new(),
            delivered: Vec::new(),
            new_attrs: None,
            expel: None,
            summary: 0,
        }
    }

    /// Starts queued membership changes while the group is idle: failures first, then
    /// joins, batched as the attributes say (§4.3).
    fn advance(&mut self, out: &mut Vec<Note>) {
        while self.active.is_none() && !self.pending.is_empty() {
            let failures: Vec<ProviderId> = self
                .pending
                .iter()
                .filter_map(|p| match p {
                    Pending::Failure(id) => Some(*id),
                    Pending::Join(_) => None,
                })
                .collect();
            if !failures.is_empty() {
                let take = if self.attrs.batch_failures {
                    failures.len()
                } else {
                    1
                };
                let batch: Vec<ProviderId> = failures[..take].to_vec();
                self.pending
                    .retain(|p| !matches!(p, Pending::Failure(id) if batch.contains(id)));
                self.start_failure_leave(&batch, out);
                continue;
            }
            let take = if self.attrs.batch_joins {
                self.pending.len()
            } else {
                1
            };
            let joiners: Vec<Entry> = self
                .pending
                .drain(..take)
                .map(|p| match p {
                    Pending::Join(e) => e,
                    Pending::Failure(_) => unreachable!("failures went first"),
                })
                .collect();
            let mut p = self.protocol(
                ProtocolKind::Join,
                None,
                self.attrs.join_phases,
                self.attrs.join_time_limit_ms,
            );
            p.voters = self
                .live()
                .map(|e| e.id)
                .chain(joiners.iter().map(|e| e.id))
                .collect();
            p.changes = joiners.into_iter().map(|e| (e, Change::Joins)).collect();
            self.start(p, out);
        }
        self.maybe_dissolve(out);
    }

    fn start_failure_leave(&mut self, batch: &[ProviderId], out: &mut Vec<Note>) {
        let changes: Vec<(Entry, Change)> = batch
            .iter()
            .filter_map(|id| self.providers.iter().find(|e| e.id == *id))
            .filter_map(|e| e.failed.map(|r| (e.clone(), Change::Leaves(r))))
            .collect();
        if changes.is_empty() {
            // Every one of them already left by another protocol (a leave or expel).
            return;
        }
        let mut p = self.protocol(
            ProtocolKind::FailureLeave,
            None,
            self.attrs.failure_phases,
            self.attrs.failure_time_limit_ms,
        );
        p.voters = self.live().map(|e| e.id).collect();
        p.changes = changes;
        self.start(p, out);
    }

    fn start(&mut self, p: Protocol, out: &mut Vec<Note>) {
        self.seq = p.seq;
        let one = p.phases == Phases::One;
        self.active = Some(p);
        out.push(Note::Started(self.seq));
        if one {
            self.run_scripts(out);
            self.conclude(Ok(()), out);
        } else {
            self.begin_phase(out);
        }
    }

    /// A phase begins: failed voters get their default vote at once (§4.5).
    fn begin_phase(&mut self, out: &mut Vec<Note>) {
        let failed: Vec<ProviderId> = self
            .providers
            .iter()
            .filter(|e| e.failed.is_some())
            .map(|e| e.id)
            .collect();
        let p = self.active.as_mut().expect("a protocol runs");
        p.votes.clear();
        for v in &p.voters {
            if failed.contains(v) {
                p.votes.insert(*v, Cast::Failed(p.default_vote));
            }
        }
        let due = p
            .expel
            .as_ref()
            .is_some_and(|(ph, _, started)| !started && *ph == p.phase);
        if due {
            self.run_scripts(out);
        }
        let p = self.active.as_ref().expect("a protocol runs");
        let to = p
            .voters
            .iter()
            .filter(|v| !p.votes.contains_key(v))
            .filter_map(|v| self.client_of(*v).map(|c| (*v, c)))
            .collect();
        let note = PhaseNote {
            seq: p.seq,
            phase: p.phase,
            info: self.info().expect("a protocol runs"),
            to,
            summary: p.summary,
            time_limit_ms: p.time_limit_ms,
        };
        out.push(Note::Phase(Box::new(note)));
        self.evaluate(out);
    }

    fn run_scripts(&mut self, out: &mut Vec<Note>) {
        let Some(p) = self.active.as_mut() else {
            return;
        };
        let Some((phase, flag, started)) = p.expel.as_mut() else {
            return;
        };
        if *started || *phase == 0 {
            return;
        }
        *started = true;
        for (e, _) in &p.changes {
            out.push(Note::Script {
                provider: e.id,
                client: e.client,
                seq: p.seq,
                flag: flag.clone(),
                time_limit_ms: p.time_limit_ms,
            });
        }
    }

    /// The phase rule (§4.4) once every voter has a vote.
    fn evaluate(&mut self, out: &mut Vec<Note>) {
        let Some(p) = self.active.as_mut() else {
            return;
        };
        if p.phases != Phases::N || p.voters.iter().any(|v| !p.votes.contains_key(v)) {
            return;
        }
        let casts: Vec<Cast> = p.votes.values().copied().collect();
        // A failure has happened: its protocol cannot undo it. Its phases let the
        // survivors coordinate (CONTINUE); a REJECT ends it like an APPROVE
        // (docs/group-services.md §7).
        let reject = p.kind != ProtocolKind::FailureLeave
            && casts.iter().any(|c| c.value() == VoteValue::Reject);
        if reject {
            let reason = if casts.contains(&Cast::Real(VoteValue::Reject)) {
                RejectReason::Vote
            } else if casts
                .iter()
                .any(|c| matches!(c, Cast::Failed(DefaultVote::Reject)))
            {
                RejectReason::ProviderFailed
            } else {
                RejectReason::TimedOut
            };
            self.conclude(Err(reason), out);
        } else if casts.contains(&Cast::Real(VoteValue::Continue)) {
            let mut flags = 0;
            if casts.iter().any(|c| matches!(c, Cast::Failed(_))) {
                flags |= summary::PROVIDER_FAILED;
            }
            if casts.iter().any(|c| matches!(c, Cast::Late(_))) {
                flags |= summary::VOTES_TIMED_OUT;
            }
            let votes = std::mem::take(&mut p.votes);
            p.history.push(votes.into_iter().collect());
            p.delivered = std::mem::take(&mut p.attached);
            p.summary = flags | (p.summary & summary::SCRIPT_FAILED);
            p.phase += 1;
            self.begin_phase(out);
        } else {
            self.conclude(Ok(()), out);
        }
    }

    /// The proposal as a notification shows it.
    pub fn info(&self) -> Option<ProposalInfo> {
        let p = self.active.as_ref()?;
        Some(ProposalInfo {
            kind: p.kind,
            proposer: p.proposer,
            phases: p.phases,
            members: self.member_ids(),
            changing: p.changes.iter().map(|(e, c)| (e.id, *c)).collect(),
            state: self.state.clone(),
            proposed_state: p.proposed_state.clone(),
            message: p.message.clone(),
            vote_messages: p.delivered.clone(),
            attributes: self.attrs,
            new_attributes: p.new_attrs,
            expel_flag: p.expel.as_ref().map(|(_, f, _)| f.clone()),
        })
    }

    /// Ends the protocol; an approval takes effect atomically (§4.4, §4.7).
    pub fn conclude(&mut self, result: Result<(), RejectReason>, out: &mut Vec<Note>) {
        if result.is_ok() {
            // Scripts due at a later phase run at the approval.
            self.run_scripts(out);
        }
        let mut info = self.info().expect("a protocol runs");
        info.vote_messages = self
            .active
            .as_ref()
            .map(|p| {
                let mut all = p.delivered.clone();
                all.extend(p.attached.iter().cloned());
                all
            })
            .unwrap_or_default();
        let mut p = self.active.take().expect("a protocol runs");
        if !p.votes.is_empty() {
            p.history
                .push(std::mem::take(&mut p.votes).into_iter().collect());
        }
        let mut participants: Vec<ProviderId> = p.voters.clone();
        for (e, _) in &p.changes {
            if !participants.contains(&e.id) {
                participants.push(e.id);
            }
        }
        let failed = |g: &Group, id: &ProviderId| g.entry(*id).is_some_and(|e| e.failed.is_some());
        participants.retain(|id| !failed(self, id));
        let clients: Vec<ClientId> = participants
            .iter()
            .map(|id| {
                p.changes
                    .iter()
                    .find(|(e, _)| e.id == *id)
                    .map(|(e, _)| e.client)
                    .or_else(|| self.entry(*id).map(|e| e.client))
                    .unwrap_or(ClientId::MAX)
            })
            .collect();
        if result.is_ok() {
            self.apply(&p);
        }
        let outcome = Outcome {
            seq: p.seq,
            kind: p.kind,
            proposer: p.proposer,
            result,
            phases_run: if p.phases == Phases::One { 1 } else { p.phase },
            changing: p.changes.iter().map(|(e, c)| (e.id, *c)).collect(),
            members: self.member_ids(),
            state: self.state.clone(),
            votes: p.history,
            participants,
            summary: p.summary,
        };
        let changing_clients = p.changes.iter().map(|(e, _)| e.client).collect();
        out.push(Note::Ended(
            Box::new(outcome),
            Box::new(info),
            (clients, changing_clients),
        ));
        self.advance(out);
    }

    fn apply(&mut self, p: &Protocol) {
        match p.kind {
            ProtocolKind::Join => {
                self.providers
                    .extend(p.changes.iter().map(|(e, _)| e.clone()));
            }
            ProtocolKind::Leave | ProtocolKind::Expel | ProtocolKind::FailureLeave => {
                self.providers
                    .retain(|e| !p.changes.iter().any(|(c, _)| c.id == e.id));
            }
            ProtocolKind::AttributeChange => {
                if let Some(a) = p.new_attrs {
                    self.attrs = a;
                }
            }
            ProtocolKind::StateChange | ProtocolKind::Message => {}
        }
        if let Some(state) = &p.proposed_state {
            self.state = state.clone();
        }
    }

    fn maybe_dissolve(&mut self, out: &mut Vec<Note>) {
        if self.is_empty() && !out.contains(&Note::Dissolved) {
            out.push(Note::Dissolved);
        }
    }
}
