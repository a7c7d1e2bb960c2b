//! How GS messages travel inside Totem payloads: ringcast's own encoding,
//! little-endian, behind the GS service id (crate::service), which is also its version.
//!
//! ```text
//! every message   0: u8 service id = version (2)   1: u8 kind   then by kind:
//! JOIN          1  name, u64 client, u16 instance, attrs
//! PROPOSE       2  name, u64 client, u16 instance, u8 phases, u32 limit_ms, body
//! VOTE          3  name, u64 client, u16 instance, u64 seq, u32 phase, u8 value,
//!                  opt bytes state, opt bytes message, u8 default (0 none)
//! GOODBYE       4  name, u64 client, u16 instance
//! CLIENT_DOWN   5  u64 client
//! PHASE_TIMEOUT 6  name, u64 seq, u32 phase
//! SCRIPT_RESULT 7  name, u64 client, u16 instance, u64 seq, u8 ok
//! SYNC          8  u32 ring rep, u64 ring seq, u8 table: 0 none | 1 u32 same-as node
//!                  | 2 u32 count, count × { name, group }
//! name = u8 len (1..=128), bytes;  bytes = u32 len, bytes;  opt x = u8 0 | 1 x
//! ```
//!
//! Decoding trusts nothing: every length and count is checked against what remains,
//! every enum byte against its values, trailing bytes are an error; a bad message is
//! [`Malformed`] and the caller drops and counts it. Nothing here panics on input.

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::group::{Entry, Group, Pending, Protocol};
use super::types::*;
use crate::cpg::{GroupName, MAX_NAME_BYTES};
use crate::totem::{NodeId, RingId};

pub const VERSION: u8 = crate::service::ServiceId::Gs as u8;

/// Largest byte string (state value, message, flag) the decoder accepts.
pub const MAX_FIELD_BYTES: usize = 16 << 20;

const JOIN: u8 = 1;
const PROPOSE: u8 = 2;
const VOTE: u8 = 3;
const GOODBYE: u8 = 4;
const CLIENT_DOWN: u8 = 5;
const PHASE_TIMEOUT: u8 = 6;
const SCRIPT_RESULT: u8 = 7;
const SYNC: u8 = 8;

/// A node's table in its sync message (docs/group-services.md §6.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SyncTable {
    /// No previous ring: nothing to contribute.
    None,
    /// Same table as this node's (which sends it): they came from the same ring.
    SameAs(NodeId),
    /// The table, encoded (decoded at activation).
    Full(Bytes),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Join {
        group: GroupName,
        client: ClientId,
        instance: u16,
        attrs: GroupAttributes,
    },
    Propose {
        group: GroupName,
        client: ClientId,
        instance: u16,
        proposal: Proposal,
    },
    Vote {
        group: GroupName,
        client: ClientId,
        instance: u16,
        seq: u64,
        phase: u32,
        vote: Vote,
    },
    Goodbye {
        group: GroupName,
        client: ClientId,
        instance: u16,
    },
    ClientDown {
        client: ClientId,
    },
    PhaseTimeout {
        group: GroupName,
        seq: u64,
        phase: u32,
    },
    ScriptResult {
        group: GroupName,
        client: ClientId,
        instance: u16,
        seq: u64,
        ok: bool,
    },
    Sync {
        ring_id: RingId,
        table: SyncTable,
    },
}

/// Why a message was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("truncated")]
    Truncated,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("bad value {0} of a {1}")]
    Value(u8, &'static str),
    #[error("length {0} out of range")]
    Length(usize),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

// ------------------------------------------------------------------ encoding

struct W(BytesMut);

impl W {
    fn new(kind: u8) -> W {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(VERSION);
        b.put_u8(kind);
        W(b)
    }
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16_le(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32_le(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("bounded by the service's limits"));
    }
    fn name(&mut self, g: &GroupName) {
        self.u8(g.len() as u8);
        self.0.put_slice(g.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.put_slice(b);
    }
    fn opt_bytes(&mut self, b: Option<&Bytes>) {
        match b {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    fn id(&mut self, id: ProviderId) {
        self.u32(id.node);
        self.u16(id.instance);
    }
    fn ids(&mut self, ids: &[ProviderId]) {
        self.len(ids.len());
        ids.iter().for_each(|i| self.id(*i));
    }
    fn phases(&mut self, p: Phases) {
        self.u8(match p {
            Phases::One => 1,
            Phases::N => 2,
        });
    }
    fn default_vote(&mut self, d: DefaultVote) {
        self.u8(match d {
            DefaultVote::Approve => 1,
            DefaultVote::Reject => 2,
        });
    }
    fn vote_value(&mut self, v: VoteValue) {
        self.u8(match v {
            VoteValue::Approve => 1,
            VoteValue::Continue => 2,
            VoteValue::Reject => 3,
        });
    }
    fn attrs(&mut self, a: &GroupAttributes) {
        self.phases(a.join_phases);
        self.u32(a.join_time_limit_ms);
        self.phases(a.failure_phases);
        self.u32(a.failure_time_limit_ms);
        self.u8(u8::from(a.batch_joins) | u8::from(a.batch_failures) << 1);
        self.default_vote(a.default_vote);
    }
    fn reason(&mut self, r: LeaveReason) {
        match r {
            LeaveReason::Left { code } => {
                self.u8(1);
                self.u32(code);
            }
            LeaveReason::ProcessFailed => self.u8(2),
            LeaveReason::NodeFailed => self.u8(3),
            LeaveReason::Expelled => self.u8(4),
            LeaveReason::SaidGoodbye => self.u8(5),
            LeaveReason::CastOut => self.u8(6),
        }
    }
    fn entry(&mut self, e: &Entry) {
        self.id(e.id);
        self.u64(e.client);
        match e.failed {
            None => self.u8(0),
            Some(r) => {
                self.u8(1);
                self.reason(r);
            }
        }
    }
    fn cast(&mut self, c: Cast) {
        match c {
            Cast::Real(v) => {
                self.u8(1);
                self.vote_value(v);
            }
            Cast::Failed(d) => {
                self.u8(2);
                self.default_vote(d);
            }
            Cast::Late(d) => {
                self.u8(3);
                self.default_vote(d);
            }
        }
    }
    fn votes<'a>(&mut self, votes: impl ExactSizeIterator<Item = (&'a ProviderId, &'a Cast)>) {
        self.len(votes.len());
        for (id, c) in votes {
            self.id(*id);
            self.cast(*c);
        }
    }
    fn messages(&mut self, m: &[(ProviderId, Bytes)]) {
        self.len(m.len());
        for (id, b) in m {
            self.id(*id);
            self.bytes(b);
        }
    }
    fn body(&mut self, b: &ProposalBody) {
        match b {
            ProposalBody::Leave { code } => {
                self.u8(1);
                self.u32(*code);
            }
            ProposalBody::Expel {
                targets,
                deactivate_phase,
                flag,
            } => {
                self.u8(2);
                self.ids(targets);
                self.u32(*deactivate_phase);
                self.bytes(flag);
            }
            ProposalBody::ChangeState { state } => {
                self.u8(3);
                self.bytes(state);
            }
            ProposalBody::Message { data } => {
                self.u8(4);
                self.bytes(data);
            }
            ProposalBody::ChangeAttributes(a) => {
                self.u8(5);
                self.attrs(a);
            }
        }
    }
    fn kind(&mut self, k: ProtocolKind) {
        self.u8(k as u8);
    }
    fn protocol(&mut self, p: &Protocol) {
        self.u64(p.seq);
        self.kind(p.kind);
        match p.proposer {
            None => self.u8(0),
            Some(id) => {
                self.u8(1);
                self.id(id);
            }
        }
        self.phases(p.phases);
        self.u32(p.time_limit_ms);
        self.u32(p.phase);
        self.ids(&p.voters);
        self.votes(p.votes.iter());
        self.len(p.history.len());
        for phase in &p.history {
            self.votes(phase.iter().map(|(i, c)| (i, c)));
        }
        self.default_vote(p.default_vote);
        self.len(p.changes.len());
        for (e, c) in &p.changes {
            self.entry(e);
            match c {
                Change::Joins => self.u8(0),
                Change::Leaves(r) => {
                    self.u8(1);
                    self.reason(*r);
                }
            }
        }
        self.opt_bytes(p.proposed_state.as_ref());
        self.opt_bytes(p.message.as_ref());
        self.messages(&p.attached);
        self.messages(&p.delivered);
        match &p.new_attrs {
            None => self.u8(0),
            Some(a) => {
                self.u8(1);
                self.attrs(a);
            }
        }
        match &p.expel {
            None => self.u8(0),
            Some((phase, flag, started)) => {
                self.u8(1);
                self.u32(*phase);
                self.bytes(flag);
                self.u8(u8::from(*started));
            }
        }
        self.u32(p.summary);
    }
    fn group(&mut self, g: &Group) {
        self.attrs(&g.attrs);
        self.u64(g.seq);
        self.bytes(&g.state);
        self.len(g.providers.len());
        g.providers.iter().for_each(|e| self.entry(e));
        self.len(g.pending.len());
        for p in &g.pending {
            match p {
                Pending::Join(e) => {
                    self.u8(1);
                    self.entry(e);
                }
                Pending::Failure(id) => {
                    self.u8(2);
                    self.id(*id);
                }
            }
        }
        match &g.active {
            None => self.u8(0),
            Some(p) => {
                self.u8(1);
                self.protocol(p);
            }
        }
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

pub(crate) fn encode(m: &Message) -> Bytes {
    match m {
        Message::Join {
            group,
            client,
            instance,
            attrs,
        } => {
            let mut w = W::new(JOIN);
            w.name(group);
            w.u64(*client);
            w.u16(*instance);
            w.attrs(attrs);
            w.done()
        }
        Message::Propose {
            group,
            client,
            instance,
            proposal,
        } => {
            let mut w = W::new(PROPOSE);
            w.name(group);
            w.u64(*client);
            w.u16(*instance);
            w.phases(proposal.phases);
            w.u32(proposal.time_limit_ms);
            w.body(&proposal.body);
            w.done()
        }
        Message::Vote {
            group,
            client,
            instance,
            seq,
            phase,
            vote,
        } => {
            let mut w = W::new(VOTE);
            w.name(group);
            w.u64(*client);
            w.u16(*instance);
            w.u64(*seq);
            w.u32(*phase);
            w.vote_value(vote.value);
            w.opt_bytes(vote.state.as_ref());
            w.opt_bytes(vote.message.as_ref());
            match vote.default {
                None => w.u8(0),
                Some(d) => w.default_vote(d),
            }
            w.done()
        }
        Message::Goodbye {
            group,
            client,
            instance,
        } => {
            let mut w = W::new(GOODBYE);
            w.name(group);
            w.u64(*client);
            w.u16(*instance);
            w.done()
        }
        Message::ClientDown { client } => {
            let mut w = W::new(CLIENT_DOWN);
            w.u64(*client);
            w.done()
        }
        Message::PhaseTimeout { group, seq, phase } => {
            let mut w = W::new(PHASE_TIMEOUT);
            w.name(group);
            w.u64(*seq);
            w.u32(*phase);
            w.done()
        }
        Message::ScriptResult {
            group,
            client,
            instance,
            seq,
            ok,
        } => {
            let mut w = W::new(SCRIPT_RESULT);
            w.name(group);
            w.u64(*client);
            w.u16(*instance);
            w.u64(*seq);
            w.u8(u8::from(*ok));
            w.done()
        }
        Message::Sync { ring_id, table } => {
            let mut w = W::new(SYNC);
            w.u32(ring_id.rep);
            w.u64(ring_id.seq);
            match table {
                SyncTable::None => w.u8(0),
                SyncTable::SameAs(n) => {
                    w.u8(1);
                    w.u32(*n);
                }
                SyncTable::Full(b) => {
                    w.u8(2);
                    w.0.put_slice(b);
                }
            }
            w.done()
        }
    }
}

/// A whole table (the body of a full SYNC), in name order.
pub(crate) fn encode_table(table: &BTreeMap<GroupName, Group>) -> Bytes {
    let mut w = W(BytesMut::new());
    w.len(table.len());
    for (name, g) in table {
        w.name(name);
        w.group(g);
    }
    w.done()
}

// ------------------------------------------------------------------ decoding

struct R<'a>(&'a [u8]);

type D<T> = Result<T, Malformed>;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> D<&'a [u8]> {
        if self.0.len() < n {
            return Err(Malformed::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> D<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> D<u8> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> D<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> D<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> D<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn flag(&mut self) -> D<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Malformed::Value(v, "flag")),
        }
    }
    /// A count of elements of at least `min` bytes each: never more than could fit.
    fn count(&mut self, min: usize) -> D<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(Malformed::Length(n));
        }
        Ok(n)
    }
    fn name(&mut self) -> D<GroupName> {
        let n = self.u8()? as usize;
        if !(1..=MAX_NAME_BYTES).contains(&n) {
            return Err(Malformed::Length(n));
        }
        GroupName::new(self.take(n)?).map_err(|_| Malformed::Length(n))
    }
    fn bytes(&mut self) -> D<Bytes> {
        let n = self.u32()? as usize;
        if n > MAX_FIELD_BYTES {
            return Err(Malformed::Length(n));
        }
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    fn opt_bytes(&mut self) -> D<Option<Bytes>> {
        Ok(if self.flag()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    fn id(&mut self) -> D<ProviderId> {
        Ok(ProviderId {
            node: self.u32()?,
            instance: self.u16()?,
        })
    }
    fn ids(&mut self) -> D<Vec<ProviderId>> {
        let n = self.count(6)?;
        (0..n).map(|_| self.id()).collect()
    }
    fn phases(&mut self) -> D<Phases> {
        match self.u8()? {
            1 => Ok(Phases::One),
            2 => Ok(Phases::N),
            v => Err(Malformed::Value(v, "phases")),
        }
    }
    fn default_vote(&mut self) -> D<DefaultVote> {
        match self.u8()? {
            1 => Ok(DefaultVote::Approve),
            2 => Ok(DefaultVote::Reject),
            v => Err(Malformed::Value(v, "default vote")),
        }
    }
    fn vote_value(&mut self) -> D<VoteValue> {
        match self.u8()? {
            1 => Ok(VoteValue::Approve),
            2 => Ok(VoteValue::Continue),
            3 => Ok(VoteValue::Reject),
            v => Err(Malformed::Value(v, "vote")),
        }
    }
    fn attrs(&mut self) -> D<GroupAttributes> {
        let join_phases = self.phases()?;
        let join_time_limit_ms = self.u32()?;
        let failure_phases = self.phases()?;
        let failure_time_limit_ms = self.u32()?;
        let batch = self.u8()?;
        if batch > 3 {
            return Err(Malformed::Value(batch, "batch control"));
        }
        Ok(GroupAttributes {
            join_phases,
            join_time_limit_ms,
            failure_phases,
            failure_time_limit_ms,
            batch_joins: batch & 1 != 0,
            batch_failures: batch & 2 != 0,
            default_vote: self.default_vote()?,
        })
    }
    fn reason(&mut self) -> D<LeaveReason> {
        Ok(match self.u8()? {
            1 => LeaveReason::Left { code: self.u32()? },
            2 => LeaveReason::ProcessFailed,
            3 => LeaveReason::NodeFailed,
            4 => LeaveReason::Expelled,
            5 => LeaveReason::SaidGoodbye,
            6 => LeaveReason::CastOut,
            v => return Err(Malformed::Value(v, "leave reason")),
        })
    }
    fn entry(&mut self) -> D<Entry> {
        let id = self.id()?;
        let client = self.u64()?;
        let failed = if self.flag()? {
            Some(self.reason()?)
        } else {
            None
        };
        Ok(Entry { id, client, failed })
    }
    fn cast(&mut self) -> D<Cast> {
        Ok(match self.u8()? {
            1 => Cast::Real(self.vote_value()?),
            2 => Cast::Failed(self.default_vote()?),
            3 => Cast::Late(self.default_vote()?),
            v => return Err(Malformed::Value(v, "cast")),
        })
    }
    fn votes(&mut self) -> D<Vec<(ProviderId, Cast)>> {
        let n = self.count(8)?;
        (0..n).map(|_| Ok((self.id()?, self.cast()?))).collect()
    }
    fn messages(&mut self) -> D<Vec<(ProviderId, Bytes)>> {
        let n = self.count(10)?;
        (0..n).map(|_| Ok((self.id()?, self.bytes()?))).collect()
    }
    fn body(&mut self) -> D<ProposalBody> {
        Ok(match self.u8()? {
            1 => ProposalBody::Leave { code: self.u32()? },
            2 => ProposalBody::Expel {
                targets: self.ids()?,
                deactivate_phase: self.u32()?,
                flag: self.bytes()?,
            },
            3 => ProposalBody::ChangeState {
                state: self.bytes()?,
            },
            4 => ProposalBody::Message {
                data: self.bytes()?,
            },
            5 => ProposalBody::ChangeAttributes(self.attrs()?),
            v => return Err(Malformed::Value(v, "proposal")),
        })
    }
    fn kind(&mut self) -> D<ProtocolKind> {
        Ok(match self.u8()? {
            1 => ProtocolKind::Join,
            2 => ProtocolKind::Leave,
            3 => ProtocolKind::FailureLeave,
            4 => ProtocolKind::Expel,
            5 => ProtocolKind::StateChange,
            6 => ProtocolKind::Message,
            7 => ProtocolKind::AttributeChange,
            v => return Err(Malformed::Value(v, "protocol kind")),
        })
    }
    fn protocol(&mut self) -> D<Protocol> {
        let seq = self.u64()?;
        let kind = self.kind()?;
        let proposer = if self.flag()? { Some(self.id()?) } else { None };
        let phases = self.phases()?;
        let time_limit_ms = self.u32()?;
        let phase = self.u32()?;
        let voters = self.ids()?;
        let votes = self.votes()?.into_iter().collect();
        let n = self.count(4)?;
        let history = (0..n).map(|_| self.votes()).collect::<D<Vec<_>>>()?;
        let default_vote = self.default_vote()?;
        let n = self.count(15)?;
        let changes = (0..n)
            .map(|_| {
                let e = self.entry()?;
                let c = if self.flag()? {
                    Change::Leaves(self.reason()?)
                } else {
                    Change::Joins
                };
                Ok((e, c))
            })
            .collect::<D<Vec<_>>>()?;
        let proposed_state = self.opt_bytes()?;
        let message = self.opt_bytes()?;
        let attached = self.messages()?;
        let delivered = self.messages()?;
        let new_attrs = if self.flag()? {
            Some(self.attrs()?)
        } else {
            None
        };
        let expel = if self.flag()? {
            Some((self.u32()?, self.bytes()?, self.flag()?))
        } else {
            None
        };
        let summary = self.u32()?;
        Ok(Protocol {
            seq,
            kind,
            proposer,
            phases,
            time_limit_ms,
            phase,
            voters,
            votes,
            history,
            default_vote,
            changes,
            proposed_state,
            message,
            attached,
            delivered,
            new_attrs,
            expel,
            summary,
        })
    }
    fn group(&mut self) -> D<Group> {
        let attrs = self.attrs()?;
        let seq = self.u64()?;
        let state = self.bytes()?;
        let n = self.count(15)?;
        let providers = (0..n).map(|_| self.entry()).collect::<D<Vec<_>>>()?;
        let n = self.count(7)?;
        let pending = (0..n)
            .map(|_| match self.u8()? {
                1 => Ok(Pending::Join(self.entry()?)),
                2 => Ok(Pending::Failure(self.id()?)),
                v => Err(Malformed::Value(v, "pending")),
            })
            .collect::<D<VecDeque<_>>>()?;
        let active = if self.flag()? {
            Some(self.protocol()?)
        } else {
            None
        };
        Ok(Group {
            attrs,
            providers,
            state,
            seq,
            active,
            pending,
        })
    }
    fn end(&self) -> D<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed::Trailing(self.0.len()))
        }
    }
}

pub(crate) fn decode(payload: &[u8]) -> D<Message> {
    let mut r = R(payload);
    let version = r.u8()?;
    if version != VERSION {
        return Err(Malformed::Version(version));
    }
    let m = match r.u8()? {
        JOIN => Message::Join {
            group: r.name()?,
            client: r.u64()?,
            instance: r.u16()?,
            attrs: r.attrs()?,
        },
        PROPOSE => {
            let group = r.name()?;
            let client = r.u64()?;
            let instance = r.u16()?;
            let phases = r.phases()?;
            let time_limit_ms = r.u32()?;
            Message::Propose {
                group,
                client,
                instance,
                proposal: Proposal {
                    body: r.body()?,
                    phases,
                    time_limit_ms,
                },
            }
        }
        VOTE => {
            let group = r.name()?;
            let client = r.u64()?;
            let instance = r.u16()?;
            let seq = r.u64()?;
            let phase = r.u32()?;
            let value = r.vote_value()?;
            let state = r.opt_bytes()?;
            let message = r.opt_bytes()?;
            let default = match r.u8()? {
                0 => None,
                1 => Some(DefaultVote::Approve),
                2 => Some(DefaultVote::Reject),
                v => return Err(Malformed::Value(v, "default vote")),
            };
            Message::Vote {
                group,
                client,
                instance,
                seq,
                phase,
                vote: Vote {
                    value,
                    state,
                    message,
                    default,
                },
            }
        }
        GOODBYE => Message::Goodbye {
            group: r.name()?,
            client: r.u64()?,
            instance: r.u16()?,
        },
        CLIENT_DOWN => Message::ClientDown { client: r.u64()? },
        PHASE_TIMEOUT => Message::PhaseTimeout {
            group: r.name()?,
            seq: r.u64()?,
            phase: r.u32()?,
        },
        SCRIPT_RESULT => Message::ScriptResult {
            group: r.name()?,
            client: r.u64()?,
            instance: r.u16()?,
            seq: r.u64()?,
            ok: r.flag()?,
        },
        SYNC => {
            let ring_id = RingId {
                rep: r.u32()?,
                seq: r.u64()?,
            };
            let table = match r.u8()? {
                0 => SyncTable::None,
                1 => SyncTable::SameAs(r.u32()?),
                2 => {
                    let rest = Bytes::copy_from_slice(r.0);
                    r.0 = &[];
                    SyncTable::Full(rest)
                }
                v => return Err(Malformed::Value(v, "sync table")),
            };
            Message::Sync { ring_id, table }
        }
        v => return Err(Malformed::Value(v, "kind")),
    };
    r.end()?;
    Ok(m)
}

/// The body of a full SYNC back into a table.
pub(crate) fn decode_table(bytes: &[u8]) -> D<BTreeMap<GroupName, Group>> {
    let mut r = R(bytes);
    let n = r.count(2)?;
    let mut table = BTreeMap::new();
    for _ in 0..n {
        let name = r.name()?;
        let g = r.group()?;
        table.insert(name, g);
    }
    r.end()?;
    Ok(table)
}
