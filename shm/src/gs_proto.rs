//! The client ↔ engine protocol of Group Services (docs/group-services.md §2–§3):
//! GS requests on the control socket (each answered by one [`GsReply`]) and GS
//! events on the event ring, beside CPG's in [`crate::proto`].
//!
//! ```text
//!  client                                   engine
//!    | -- Hello / Welcome (as CPG) -------> |  SO_PEERCRED checked, as for CPG
//!    | -- Gs(Connect{script}) ------------> |  ha_gs_init
//!    | <- Gs(Done(Ok | GsError)) --------- |
//!    | -- Gs(Join/Propose/Vote/...) ------> |  one request at a time, each answered
//!    | <- Gs(Done(..)) / Gs(Groups{..}) -- |
//!    | <= event ring: GS_EVENT, GS_EVENT_PART (a large event in pieces)
//! ```
//!
//! The types are those of the service (`ringcast_proto::gs`), one type per concept;
//! this module only encodes them. Integers are little-endian. A request larger than
//! one socket message (a large state value, message or expel flag) is written into the
//! client's region pool and named by a [`GsRequest::InPool`]; events may be larger
//! than a ring record and arrive in pieces ([`crate::proto::PartHeader`] with `a`, `b`
//! and `c` zero).
//!
//! Everything decoded here comes from another process: every length and count is
//! checked against what remains, every enum byte against its values, trailing bytes
//! are refused, and nothing panics.

use bytes::Bytes;
use ringcast_proto::cpg::GroupName;
use ringcast_proto::gs::{
    AnnouncementKind, Change, DefaultVote, GroupAttributes, GroupView, GsError, GsEvent,
    LeaveReason, Phases, Proposal, ProposalBody, ProposalInfo, ProtocolKind, ProviderId,
    RejectReason, RequestKind, SubscribeFlags, SubscriptionKind, Vote, VoteValue,
};

use crate::proto::{MAX_NAME_BYTES, ProtoError, Reader, Writer};

/// Largest GS event a client assembles from pieces (a proposal with every provider's
/// vote message of the previous phase).
pub const MAX_GS_EVENT_BYTES: usize = 64 << 20;

/// State value bytes a [`GsReply::Groups`] entry carries (the view is for people).
pub const GROUP_VIEW_STATE_BYTES: usize = 256;

/// A GS request (`ha_gs_*`), on the control socket inside `Request::Gs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GsRequest {
    /// `ha_gs_init`, with the deactivate script's path (run as the client's user).
    Connect {
        script: Option<Vec<u8>>,
    },
    /// `ha_gs_join`.
    Join {
        group: Vec<u8>,
        instance: u16,
        attrs: GroupAttributes,
    },
    /// Leave, expel, state change, message, attribute change.
    Propose {
        group: Vec<u8>,
        proposal: Proposal,
    },
    /// `ha_gs_vote` for phase `phase` of protocol `seq`.
    Vote {
        group: Vec<u8>,
        seq: u64,
        phase: u32,
        vote: Vote,
    },
    Goodbye {
        group: Vec<u8>,
    },
    Subscribe {
        group: Vec<u8>,
        flags: SubscribeFlags,
    },
    Unsubscribe {
        group: Vec<u8>,
    },
    /// Every group of this node's table (`ringcast gs groups`).
    Groups,
    /// A request too large for one socket message: its encoding (another request,
    /// never `InPool`) lies at `offset`, `len` in the client's region pool. The engine
    /// copies it out before it answers; the client frees the buffer after the answer.
    InPool {
        offset: u64,
        len: u64,
    },
}

/// The engine's answer to a [`GsRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GsReply {
    Done(Result<(), GsError>),
    /// State values cut to [`GROUP_VIEW_STATE_BYTES`]; `truncated` when more groups
    /// exist than fit in one socket message.
    Groups {
        groups: Vec<GroupView>,
        truncated: bool,
    },
}

// ------------------------------------------------------------------ errors

/// The `GsError` of an `ha_gs_rc_t` value (not 0).
pub fn gs_error_from_code(code: u32) -> Option<GsError> {
    use GsError::*;
    Some(match code {
        1 => NotOk,
        2 => NoInit,
        3 => BadMemberToken,
        4 => BadParameter,
        5 => BadGroupAttributes,
        6 => BacklevelProviders,
        7 => Collide,
        8 => NotSupported,
        9 => DuplicateInstanceNumber,
        10 => UnknownGroup,
        11 => Exists,
        12 => ConnectFailed,
        13 => NameTooLong,
        14 => NoMemory,
        15 => NotAMember,
        16 => VoteNotExpected,
        17 => NoSourceGroupProvider,
        18 => InvalidSourceGroup,
        19 => InvalidDeactivatePhase,
        20 => TryAgain,
        _ => return None,
    })
}

// ------------------------------------------------------------------ encoding

trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn len(&mut self, n: usize);
    fn blob(&mut self, b: &[u8]);
    fn opt_blob(&mut self, b: Option<&[u8]>);
    fn id(&mut self, id: ProviderId);
    fn ids(&mut self, ids: &[ProviderId]);
    fn phases(&mut self, p: Phases);
    fn default_vote(&mut self, d: DefaultVote);
    fn vote_value(&mut self, v: VoteValue);
    fn attrs(&mut self, a: &GroupAttributes);
    fn reason(&mut self, r: LeaveReason);
    fn change(&mut self, c: Change);
    fn changes(&mut self, c: &[(ProviderId, Change)]);
    fn kind(&mut self, k: ProtocolKind);
    fn proposal(&mut self, p: &Proposal);
    fn vote(&mut self, v: &Vote);
    fn info(&mut self, i: &ProposalInfo);
    fn group_view(&mut self, v: &GroupView);
}

impl Put for Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        // Every length the engine or a client sends is bounded by its own limits,
        // far below 4 GiB.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn blob(&mut self, b: &[u8]) {
        Put::len(self, b.len());
        self.buf.extend_from_slice(b);
    }
    fn opt_blob(&mut self, b: Option<&[u8]>) {
        match b {
            None => Put::u8(self, 0),
            Some(b) => {
                Put::u8(self, 1);
                self.blob(b);
            }
        }
    }
    fn id(&mut self, id: ProviderId) {
        self.u32(id.node);
        Put::u16(self, id.instance);
    }
    fn ids(&mut self, ids: &[ProviderId]) {
        Put::len(self, ids.len());
        ids.iter().for_each(|i| self.id(*i));
    }
    fn phases(&mut self, p: Phases) {
        Put::u8(self, phases_byte(p));
    }
    fn default_vote(&mut self, d: DefaultVote) {
        Put::u8(self, default_vote_byte(d));
    }
    fn vote_value(&mut self, v: VoteValue) {
        Put::u8(
            self,
            match v {
                VoteValue::Approve => 1,
                VoteValue::Continue => 2,
                VoteValue::Reject => 3,
            },
        );
    }
    fn attrs(&mut self, a: &GroupAttributes) {
        self.phases(a.join_phases);
        self.u32(a.join_time_limit_ms);
        self.phases(a.failure_phases);
        self.u32(a.failure_time_limit_ms);
        Put::u8(
            self,
            u8::from(a.batch_joins) | u8::from(a.batch_failures) << 1,
        );
        self.default_vote(a.default_vote);
    }
    fn reason(&mut self, r: LeaveReason) {
        let b = match r {
            LeaveReason::Left { code } => {
                Put::u8(self, 1);
                self.u32(code);
                return;
            }
            LeaveReason::ProcessFailed => 2,
            LeaveReason::NodeFailed => 3,
            LeaveReason::Expelled => 4,
            LeaveReason::SaidGoodbye => 5,
            LeaveReason::CastOut => 6,
        };
        Put::u8(self, b);
    }
    fn change(&mut self, c: Change) {
        match c {
            Change::Joins => Put::u8(self, 0),
            Change::Leaves(r) => self.reason(r),
        }
    }
    fn changes(&mut self, c: &[(ProviderId, Change)]) {
        Put::len(self, c.len());
        for (id, ch) in c {
            self.id(*id);
            self.change(*ch);
        }
    }
    fn kind(&mut self, k: ProtocolKind) {
        Put::u8(self, k as u8);
    }
    fn proposal(&mut self, p: &Proposal) {
        self.phases(p.phases);
        self.u32(p.time_limit_ms);
        match &p.body {
            ProposalBody::Leave { code } => {
                Put::u8(self, 1);
                self.u32(*code);
            }
            ProposalBody::Expel {
                targets,
                deactivate_phase,
                flag,
            } => {
                Put::u8(self, 2);
                self.ids(targets);
                self.u32(*deactivate_phase);
                self.blob(flag);
            }
            ProposalBody::ChangeState { state } => {
                Put::u8(self, 3);
                self.blob(state);
            }
            ProposalBody::Message { data } => {
                Put::u8(self, 4);
                self.blob(data);
            }
            ProposalBody::ChangeAttributes(a) => {
                Put::u8(self, 5);
                self.attrs(a);
            }
        }
    }
    fn vote(&mut self, v: &Vote) {
        self.vote_value(v.value);
        self.opt_blob(v.state.as_deref());
        self.opt_blob(v.message.as_deref());
        match v.default {
            None => Put::u8(self, 0),
            Some(d) => self.default_vote(d),
        }
    }
    fn info(&mut self, i: &ProposalInfo) {
        self.kind(i.kind);
        match i.proposer {
            None => Put::u8(self, 0),
            Some(p) => {
                Put::u8(self, 1);
                self.id(p);
            }
        }
        self.phases(i.phases);
        self.ids(&i.members);
        self.changes(&i.changing);
        self.blob(&i.state);
        self.opt_blob(i.proposed_state.as_deref());
        self.opt_blob(i.message.as_deref());
        Put::len(self, i.vote_messages.len());
        for (id, m) in &i.vote_messages {
            self.id(*id);
            self.blob(m);
        }
        self.attrs(&i.attributes);
        match &i.new_attributes {
            None => Put::u8(self, 0),
            Some(a) => {
                Put::u8(self, 1);
                self.attrs(a);
            }
        }
        self.opt_blob(i.expel_flag.as_deref());
    }
    fn group_view(&mut self, v: &GroupView) {
        self.name(v.name.as_bytes());
        self.attrs(&v.attributes);
        Put::len(self, v.providers.len());
        for (id, failed) in &v.providers {
            self.id(*id);
            match failed {
                None => Put::u8(self, 0),
                Some(r) => {
                    Put::u8(self, 1);
                    self.reason(*r);
                }
            }
        }
        self.blob(&v.state[..v.state.len().min(GROUP_VIEW_STATE_BYTES)]);
        self.u64(v.seq);
        match v.active {
            None => Put::u8(self, 0),
            Some((k, phase)) => {
                self.kind(k);
                self.u32(phase);
            }
        }
        self.ids(&v.waiting_for);
        Put::len(self, v.pending);
    }
}

fn phases_byte(p: Phases) -> u8 {
    match p {
        Phases::One => 1,
        Phases::N => 2,
    }
}

fn default_vote_byte(d: DefaultVote) -> u8 {
    match d {
        DefaultVote::Approve => 1,
        DefaultVote::Reject => 2,
    }
}

// ------------------------------------------------------------------ decoding

type D<T> = Result<T, ProtoError>;

trait Get<'a> {
    fn byte(&mut self) -> D<u8>;
    fn u16le(&mut self) -> D<u16>;
    /// A count of elements of at least `min` bytes each: never more than could fit.
    fn count(&mut self, min: usize) -> D<usize>;
    fn blob(&mut self) -> D<&'a [u8]>;
    fn opt_blob(&mut self) -> D<Option<Bytes>>;
    fn group(&mut self) -> D<Vec<u8>>;
    fn id(&mut self) -> D<ProviderId>;
    fn ids(&mut self) -> D<Vec<ProviderId>>;
    fn phases(&mut self) -> D<Phases>;
    fn default_vote(&mut self) -> D<DefaultVote>;
    fn vote_value(&mut self) -> D<VoteValue>;
    fn attrs(&mut self) -> D<GroupAttributes>;
    fn reason_of(&mut self, b: u8) -> D<LeaveReason>;
    fn change(&mut self) -> D<Change>;
    fn changes(&mut self) -> D<Vec<(ProviderId, Change)>>;
    fn kind(&mut self) -> D<ProtocolKind>;
    fn proposal(&mut self) -> D<Proposal>;
    fn vote(&mut self) -> D<Vote>;
    fn info(&mut self) -> D<ProposalInfo>;
    fn group_view(&mut self) -> D<GroupView>;
    fn gs_error(&mut self) -> D<GsError>;
}

impl<'a> Get<'a> for Reader<'a> {
    fn byte(&mut self) -> D<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16le(&mut self) -> D<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn count(&mut self, min: usize) -> D<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min.max(1)) > self.remaining() {
            return Err(ProtoError::BadField("count"));
        }
        Ok(n)
    }
    fn blob(&mut self) -> D<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    fn opt_blob(&mut self) -> D<Option<Bytes>> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(Bytes::copy_from_slice(self.blob()?))),
            _ => Err(ProtoError::BadField("option")),
        }
    }
    fn group(&mut self) -> D<Vec<u8>> {
        Ok(self.name()?.to_vec())
    }
    fn id(&mut self) -> D<ProviderId> {
        Ok(ProviderId {
            node: self.u32()?,
            instance: self.u16le()?,
        })
    }
    fn ids(&mut self) -> D<Vec<ProviderId>> {
        let n = self.count(6)?;
        (0..n).map(|_| self.id()).collect()
    }
    fn phases(&mut self) -> D<Phases> {
        match self.byte()? {
            1 => Ok(Phases::One),
            2 => Ok(Phases::N),
            _ => Err(ProtoError::BadField("phases")),
        }
    }
    fn default_vote(&mut self) -> D<DefaultVote> {
        match self.byte()? {
            1 => Ok(DefaultVote::Approve),
            2 => Ok(DefaultVote::Reject),
            _ => Err(ProtoError::BadField("default vote")),
        }
    }
    fn vote_value(&mut self) -> D<VoteValue> {
        match self.byte()? {
            1 => Ok(VoteValue::Approve),
            2 => Ok(VoteValue::Continue),
            3 => Ok(VoteValue::Reject),
            _ => Err(ProtoError::BadField("vote")),
        }
    }
    fn attrs(&mut self) -> D<GroupAttributes> {
        let join_phases = self.phases()?;
        let join_time_limit_ms = self.u32()?;
        let failure_phases = self.phases()?;
        let failure_time_limit_ms = self.u32()?;
        let batch = self.byte()?;
        if batch > 3 {
            return Err(ProtoError::BadField("batch control"));
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
    fn reason_of(&mut self, b: u8) -> D<LeaveReason> {
        Ok(match b {
            1 => LeaveReason::Left { code: self.u32()? },
            2 => LeaveReason::ProcessFailed,
            3 => LeaveReason::NodeFailed,
            4 => LeaveReason::Expelled,
            5 => LeaveReason::SaidGoodbye,
            6 => LeaveReason::CastOut,
            _ => return Err(ProtoError::BadField("leave reason")),
        })
    }
    fn change(&mut self) -> D<Change> {
        match self.byte()? {
            0 => Ok(Change::Joins),
            b => Ok(Change::Leaves(self.reason_of(b)?)),
        }
    }
    fn changes(&mut self) -> D<Vec<(ProviderId, Change)>> {
        let n = self.count(7)?;
        (0..n).map(|_| Ok((self.id()?, self.change()?))).collect()
    }
    fn kind(&mut self) -> D<ProtocolKind> {
        kind_of(self.byte()?)
    }
    fn proposal(&mut self) -> D<Proposal> {
        let phases = self.phases()?;
        let time_limit_ms = self.u32()?;
        let body = match self.byte()? {
            1 => ProposalBody::Leave { code: self.u32()? },
            2 => ProposalBody::Expel {
                targets: self.ids()?,
                deactivate_phase: self.u32()?,
                flag: Bytes::copy_from_slice(self.blob()?),
            },
            3 => ProposalBody::ChangeState {
                state: Bytes::copy_from_slice(self.blob()?),
            },
            4 => ProposalBody::Message {
                data: Bytes::copy_from_slice(self.blob()?),
            },
            5 => ProposalBody::ChangeAttributes(self.attrs()?),
            _ => return Err(ProtoError::BadField("proposal")),
        };
        Ok(Proposal {
            body,
            phases,
            time_limit_ms,
        })
    }
    fn vote(&mut self) -> D<Vote> {
        let value = self.vote_value()?;
        let state = self.opt_blob()?;
        let message = self.opt_blob()?;
        let default = match self.byte()? {
            0 => None,
            1 => Some(DefaultVote::Approve),
            2 => Some(DefaultVote::Reject),
            _ => return Err(ProtoError::BadField("default vote")),
        };
        Ok(Vote {
            value,
            state,
            message,
            default,
        })
    }
    fn info(&mut self) -> D<ProposalInfo> {
        let kind = self.kind()?;
        let proposer = match self.byte()? {
            0 => None,
            1 => Some(self.id()?),
            _ => return Err(ProtoError::BadField("option")),
        };
        let phases = self.phases()?;
        let members = self.ids()?;
        let changing = self.changes()?;
        let state = Bytes::copy_from_slice(self.blob()?);
        let proposed_state = self.opt_blob()?;
        let message = self.opt_blob()?;
        let n = self.count(10)?;
        let vote_messages = (0..n)
            .map(|_| Ok((self.id()?, Bytes::copy_from_slice(self.blob()?))))
            .collect::<D<Vec<_>>>()?;
        let attributes = self.attrs()?;
        let new_attributes = match self.byte()? {
            0 => None,
            1 => Some(self.attrs()?),
            _ => return Err(ProtoError::BadField("option")),
        };
        Ok(ProposalInfo {
            kind,
            proposer,
            phases,
            members,
            changing,
            state,
            proposed_state,
            message,
            vote_messages,
            attributes,
            new_attributes,
            expel_flag: self.opt_blob()?,
        })
    }
    fn group_view(&mut self) -> D<GroupView> {
        let name = self.name()?;
        let name = GroupName::new(name).map_err(|_| ProtoError::BadField("group name"))?;
        let attributes = self.attrs()?;
        let n = self.count(7)?;
        let providers = (0..n)
            .map(|_| {
                let id = self.id()?;
                let failed = match self.byte()? {
                    0 => None,
                    1 => {
                        let b = self.byte()?;
                        Some(self.reason_of(b)?)
                    }
                    _ => return Err(ProtoError::BadField("option")),
                };
                Ok((id, failed))
            })
            .collect::<D<Vec<_>>>()?;
        let state = Bytes::copy_from_slice(self.blob()?);
        let seq = self.u64()?;
        let active = match self.byte()? {
            0 => None,
            b => Some((kind_of(b)?, self.u32()?)),
        };
        Ok(GroupView {
            name,
            attributes,
            providers,
            state,
            seq,
            active,
            waiting_for: self.ids()?,
            pending: self.u32()? as usize,
        })
    }
    fn gs_error(&mut self) -> D<GsError> {
        gs_error_from_code(self.u32()?).ok_or(ProtoError::BadField("gs error"))
    }
}

fn kind_of(b: u8) -> D<ProtocolKind> {
    Ok(match b {
        1 => ProtocolKind::Join,
        2 => ProtocolKind::Leave,
        3 => ProtocolKind::FailureLeave,
        4 => ProtocolKind::Expel,
        5 => ProtocolKind::StateChange,
        6 => ProtocolKind::Message,
        7 => ProtocolKind::AttributeChange,
        _ => return Err(ProtoError::BadField("protocol kind")),
    })
}

fn group_name(bytes: &[u8]) -> D<GroupName> {
    GroupName::new(bytes).map_err(|_| ProtoError::BadField("group name"))
}

// ------------------------------------------------------------------ requests

const GS_CONNECT: u32 = 1;
const GS_JOIN: u32 = 2;
const GS_PROPOSE: u32 = 3;
const GS_VOTE: u32 = 4;
const GS_GOODBYE: u32 = 5;
const GS_SUBSCRIBE: u32 = 6;
const GS_UNSUBSCRIBE: u32 = 7;
const GS_GROUPS: u32 = 8;
const GS_IN_POOL: u32 = 9;

/// Longest deactivate script path.
pub const MAX_SCRIPT_PATH_BYTES: usize = 4096;

impl GsRequest {
    /// Appends the request's body (after `Request::Gs`'s op) to `w`.
    pub fn encode_into(&self, w: &mut Writer) {
        match self {
            GsRequest::Connect { script } => {
                w.u32(GS_CONNECT);
                w.opt_blob(script.as_deref());
            }
            GsRequest::Join {
                group,
                instance,
                attrs,
            } => {
                w.u32(GS_JOIN).name(group);
                Put::u16(w, *instance);
                w.attrs(attrs);
            }
            GsRequest::Propose { group, proposal } => {
                w.u32(GS_PROPOSE).name(group);
                w.proposal(proposal);
            }
            GsRequest::Vote {
                group,
                seq,
                phase,
                vote,
            } => {
                w.u32(GS_VOTE).name(group).u64(*seq).u32(*phase);
                w.vote(vote);
            }
            GsRequest::Goodbye { group } => {
                w.u32(GS_GOODBYE).name(group);
            }
            GsRequest::Subscribe { group, flags } => {
                w.u32(GS_SUBSCRIBE).name(group);
                Put::u8(w, u8::from(flags.membership) | u8::from(flags.state) << 1);
            }
            GsRequest::Unsubscribe { group } => {
                w.u32(GS_UNSUBSCRIBE).name(group);
            }
            GsRequest::Groups => {
                w.u32(GS_GROUPS);
            }
            GsRequest::InPool { offset, len } => {
                w.u32(GS_IN_POOL).u64(*offset).u64(*len);
            }
        }
    }

    /// The request's body alone (what an [`GsRequest::InPool`] buffer holds).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_into(&mut w);
        w.finish()
    }

    /// Decodes a whole body (an [`GsRequest::InPool`] buffer's): nothing may trail it,
    /// and it may not be another `InPool`.
    pub fn decode_body(buf: &[u8]) -> Result<GsRequest, ProtoError> {
        let mut r = Reader::new(buf);
        let request = GsRequest::decode_from(&mut r)?;
        r.finish()?;
        if matches!(request, GsRequest::InPool { .. }) {
            return Err(ProtoError::BadField("nested pool request"));
        }
        Ok(request)
    }

    /// Decodes a request body; the caller checks that nothing trails it.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<GsRequest, ProtoError> {
        Ok(match r.u32()? {
            GS_CONNECT => {
                let script = match r.byte()? {
                    0 => None,
                    1 => Some(r.blob()?.to_vec()),
                    _ => return Err(ProtoError::BadField("option")),
                };
                if script
                    .as_ref()
                    .is_some_and(|s| s.len() > MAX_SCRIPT_PATH_BYTES)
                {
                    return Err(ProtoError::BadField("script path"));
                }
                GsRequest::Connect { script }
            }
            GS_JOIN => GsRequest::Join {
                group: r.group()?,
                instance: r.u16le()?,
                attrs: r.attrs()?,
            },
            GS_PROPOSE => GsRequest::Propose {
                group: r.group()?,
                proposal: r.proposal()?,
            },
            GS_VOTE => GsRequest::Vote {
                group: r.group()?,
                seq: r.u64()?,
                phase: r.u32()?,
                vote: r.vote()?,
            },
            GS_GOODBYE => GsRequest::Goodbye { group: r.group()? },
            GS_SUBSCRIBE => {
                let group = r.group()?;
                let f = r.byte()?;
                if f > 3 {
                    return Err(ProtoError::BadField("subscribe flags"));
                }
                GsRequest::Subscribe {
                    group,
                    flags: SubscribeFlags {
                        membership: f & 1 != 0,
                        state: f & 2 != 0,
                    },
                }
            }
            GS_UNSUBSCRIBE => GsRequest::Unsubscribe { group: r.group()? },
            GS_GROUPS => GsRequest::Groups,
            GS_IN_POOL => GsRequest::InPool {
                offset: r.u64()?,
                len: r.u64()?,
            },
            other => return Err(ProtoError::UnknownOp(other)),
        })
    }
}

// ------------------------------------------------------------------ replies

const GR_DONE: u32 = 1;
const GR_GROUPS: u32 = 2;

impl GsReply {
    pub fn encode_into(&self, w: &mut Writer) {
        match self {
            GsReply::Done(result) => {
                w.u32(GR_DONE)
                    .u32(result.err().map_or(0, |e| e.code() as u32));
            }
            GsReply::Groups { groups, truncated } => {
                w.u32(GR_GROUPS).u32(u32::from(*truncated));
                Put::len(w, groups.len());
                for g in groups {
                    w.group_view(g);
                }
            }
        }
    }

    pub fn decode_from(r: &mut Reader<'_>) -> Result<GsReply, ProtoError> {
        Ok(match r.u32()? {
            GR_DONE => GsReply::Done(match r.u32()? {
                0 => Ok(()),
                code => Err(gs_error_from_code(code).ok_or(ProtoError::BadField("gs error"))?),
            }),
            GR_GROUPS => {
                let truncated = match r.u32()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ProtoError::BadField("truncated")),
                };
                let n = r.count(32)?;
                let groups = (0..n).map(|_| r.group_view()).collect::<D<Vec<_>>>()?;
                GsReply::Groups { groups, truncated }
            }
            other => return Err(ProtoError::UnknownOp(other)),
        })
    }

    /// The encoded size of one group's view in a [`GsReply::Groups`] (the engine
    /// fills a reply up to the socket limit).
    pub fn view_bytes(view: &GroupView) -> usize {
        let mut w = Writer::new();
        w.group_view(view);
        w.buf.len()
    }
}

// ------------------------------------------------------------------ events

const E_NPHASE: u8 = 1;
const E_APPROVED: u8 = 2;
const E_REJECTED: u8 = 3;
const E_ANNOUNCEMENT: u8 = 4;
const E_SUBSCRIPTION: u8 = 5;
const E_DELAYED_ERROR: u8 = 6;
const E_MERGE: u8 = 7;

/// A `GS_EVENT` record's payload (or the assembled pieces of `GS_EVENT_PART`s).
/// Long only by its one arm per event kind, each a flat list of fields.
pub fn encode_event(e: &GsEvent) -> Vec<u8> {
    let mut w = Writer::new();
    match e {
        GsEvent::NPhase {
            group,
            provider,
            seq,
            phase,
            info,
            summary,
            time_limit_ms,
        } => {
            Put::u8(&mut w, E_NPHASE);
            w.name(group.as_bytes());
            w.id(*provider);
            w.u64(*seq).u32(*phase).u32(*summary).u32(*time_limit_ms);
            w.info(info);
        }
        GsEvent::Approved {
            group,
            provider,
            seq,
            phases_run,
            info,
            summary,
        } => {
            Put::u8(&mut w, E_APPROVED);
            w.name(group.as_bytes());
            w.id(*provider);
            w.u64(*seq).u32(*phases_run).u32(*summary);
            w.info(info);
        }
        GsEvent::Rejected {
            group,
            provider,
            seq,
            info,
            reason,
        } => {
            Put::u8(&mut w, E_REJECTED);
            w.name(group.as_bytes());
            w.id(*provider);
            w.u64(*seq);
            Put::u8(&mut w, reject_byte(*reason));
            w.info(info);
        }
        GsEvent::Announcement {
            group,
            provider,
            kind,
            providers,
        } => {
            Put::u8(&mut w, E_ANNOUNCEMENT);
            w.name(group.as_bytes());
            w.id(*provider);
            Put::u8(
                &mut w,
                match kind {
                    AnnouncementKind::VoteTimeout => 1,
                    AnnouncementKind::ScriptFailed => 2,
                },
            );
            w.ids(providers);
        }
        GsEvent::Subscription {
            group,
            seq,
            kind,
            state,
            members,
            changing,
        } => {
            Put::u8(&mut w, E_SUBSCRIPTION);
            w.name(group.as_bytes());
            w.u64(*seq);
            Put::u8(
                &mut w,
                u8::from(kind.membership)
                    | u8::from(kind.state) << 1
                    | u8::from(kind.dissolved) << 2
                    | u8::from(kind.merged) << 3,
            );
            w.opt_blob(state.as_deref());
            w.ids(members);
            w.changes(changing);
        }
        GsEvent::DelayedError {
            group,
            request,
            error,
        } => {
            Put::u8(&mut w, E_DELAYED_ERROR);
            w.name(group.as_bytes());
            match request {
                RequestKind::Join => Put::u8(&mut w, 1),
                RequestKind::Subscribe => Put::u8(&mut w, 2),
                RequestKind::Propose(k) => {
                    Put::u8(&mut w, 3);
                    w.kind(*k);
                }
                RequestKind::Vote { seq, phase } => {
                    Put::u8(&mut w, 4);
                    w.u64(*seq).u32(*phase);
                }
            }
            w.u32(error.code() as u32);
        }
        GsEvent::Merge { group, provider } => {
            Put::u8(&mut w, E_MERGE);
            w.name(group.as_bytes());
            w.id(*provider);
        }
    }
    w.finish()
}

fn reject_byte(r: RejectReason) -> u8 {
    match r {
        RejectReason::Vote => 1,
        RejectReason::ProviderFailed => 2,
        RejectReason::TimedOut => 3,
        RejectReason::JoinersFailed => 4,
        RejectReason::CastOut => 5,
    }
}

fn reject_of(b: u8) -> D<RejectReason> {
    Ok(match b {
        1 => RejectReason::Vote,
        2 => RejectReason::ProviderFailed,
        3 => RejectReason::TimedOut,
        4 => RejectReason::JoinersFailed,
        5 => RejectReason::CastOut,
        _ => return Err(ProtoError::BadField("reject reason")),
    })
}

/// Decodes a GS event (untrusted: from the engine's side of shared memory). Long only
/// by its one arm per event kind, mirroring [`encode_event`].
pub fn decode_event(buf: &[u8]) -> Result<GsEvent, ProtoError> {
    let mut r = Reader::new(buf);
    let tag = r.byte()?;
    let group = group_name(r.name()?)?;
    let e = match tag {
        E_NPHASE => GsEvent::NPhase {
            group,
            provider: r.id()?,
            seq: r.u64()?,
            phase: r.u32()?,
            summary: r.u32()?,
            time_limit_ms: r.u32()?,
            info: r.info()?,
        },
        E_APPROVED => GsEvent::Approved {
            group,
            provider: r.id()?,
            seq: r.u64()?,
            phases_run: r.u32()?,
            summary: r.u32()?,
            info: r.info()?,
        },
        E_REJECTED => GsEvent::Rejected {
            group,
            provider: r.id()?,
            seq: r.u64()?,
            reason: reject_of(r.byte()?)?,
            info: r.info()?,
        },
        E_ANNOUNCEMENT => GsEvent::Announcement {
            group,
            provider: r.id()?,
            kind: match r.byte()? {
                1 => AnnouncementKind::VoteTimeout,
                2 => AnnouncementKind::ScriptFailed,
                _ => return Err(ProtoError::BadField("announcement")),
            },
            providers: r.ids()?,
        },
        E_SUBSCRIPTION => {
            let seq = r.u64()?;
            let k = r.byte()?;
            if k > 15 {
                return Err(ProtoError::BadField("subscription kind"));
            }
            GsEvent::Subscription {
                group,
                seq,
                kind: SubscriptionKind {
                    membership: k & 1 != 0,
                    state: k & 2 != 0,
                    dissolved: k & 4 != 0,
                    merged: k & 8 != 0,
                },
                state: r.opt_blob()?,
                members: r.ids()?,
                changing: r.changes()?,
            }
        }
        E_DELAYED_ERROR => {
            let request = match r.byte()? {
                1 => RequestKind::Join,
                2 => RequestKind::Subscribe,
                3 => RequestKind::Propose(r.kind()?),
                4 => RequestKind::Vote {
                    seq: r.u64()?,
                    phase: r.u32()?,
                },
                _ => return Err(ProtoError::BadField("request kind")),
            };
            GsEvent::DelayedError {
                group,
                request,
                error: r.gs_error()?,
            }
        }
        E_MERGE => GsEvent::Merge {
            group,
            provider: r.id()?,
        },
        _ => return Err(ProtoError::BadField("gs event")),
    };
    r.finish()?;
    Ok(e)
}

/// A name that a `Writer::name` accepts (1..=128 bytes is the service's call).
pub fn name_fits(name: &[u8]) -> bool {
    name.len() <= MAX_NAME_BYTES
}

#[cfg(test)]
mod tests;
