//! The names of Group Services (docs/group-services.md §1–§5) as Rust types: providers, votes,
//! attributes, proposals, reasons, errors, and what a client is told.

use bytes::Bytes;

use crate::cpg::GroupName;
use crate::totem::NodeId;

/// A local client connection (one `ha_gs_init`), chosen by the caller. The replicated
/// table does not name providers by it but by a token per join (the same type; see
/// docs/group-services.md §6.1).
pub type ClientId = u64;

/// A provider: its node and its instance number, unique per group and node
/// (docs/group-services.md §1.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId {
    pub node: NodeId,
    pub instance: u16,
}

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.instance)
    }
}

/// Why a provider left (docs/group-services.md §3.1, §6.3; `CastOut` is ringcast's, §6.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeaveReason {
    /// `ha_gs_leave`, with the application's leave code.
    Left { code: u32 },
    /// The client process died or called `ha_gs_quit`.
    ProcessFailed,
    /// Its node left the ring (crash, partition, shutdown).
    NodeFailed,
    /// An approved expel.
    Expelled,
    /// `ha_gs_goodbye` (`HA_GS_PROVIDER_SAID_GOODBYE`).
    SaidGoodbye,
    /// Its group instance lost the merge after a partition healed (docs/group-services.md §6.6).
    CastOut,
}

impl LeaveReason {
    /// The word the command-line view prints.
    pub fn word(self) -> &'static str {
        match self {
            LeaveReason::Left { .. } => "left",
            LeaveReason::ProcessFailed => "process-failed",
            LeaveReason::NodeFailed => "node-failed",
            LeaveReason::Expelled => "expelled",
            LeaveReason::SaidGoodbye => "said-goodbye",
            LeaveReason::CastOut => "cast-out",
        }
    }
}

/// How a provider changes in a protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Joins,
    Leaves(LeaveReason),
}

/// `HA_GS_VOTE_APPROVE`, `_CONTINUE`, `_REJECT`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VoteValue {
    Approve,
    Continue,
    Reject,
}

/// A group's default vote: what stands in for a provider that does not vote.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DefaultVote {
    Approve,
    Reject,
}

impl DefaultVote {
    pub fn value(self) -> VoteValue {
        match self {
            DefaultVote::Approve => VoteValue::Approve,
            DefaultVote::Reject => VoteValue::Reject,
        }
    }
}

/// One vote as counted in a phase.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cast {
    /// The provider's own vote.
    Real(VoteValue),
    /// The default vote, for a provider that failed (or was failed) in this protocol.
    Failed(DefaultVote),
    /// The default vote, for a provider that did not vote within the time limit.
    Late(DefaultVote),
}

impl Cast {
    pub fn value(self) -> VoteValue {
        match self {
            Cast::Real(v) => v,
            Cast::Failed(d) | Cast::Late(d) => d.value(),
        }
    }
}

/// One-phase (approved at once) or n-phase (voted).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phases {
    One,
    N,
}

/// `ha_gs_group_attributes_t` as ringcast defines it (docs/group-services.md §1.5 and
/// §7: IBM's C layout is not public). Fixed at creation; a joiner must bring equal
/// attributes; all of these may change through an attribute-change protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupAttributes {
    /// Phases and time limit of the join protocols GS starts.
    pub join_phases: Phases,
    pub join_time_limit_ms: u32,
    /// Phases and time limit of the failure-leave protocols GS starts.
    pub failure_phases: Phases,
    pub failure_time_limit_ms: u32,
    /// Batch control: pending joins (failures) run as one protocol, or one at a time.
    pub batch_joins: bool,
    pub batch_failures: bool,
    /// The default vote every protocol starts with.
    pub default_vote: DefaultVote,
}

impl Default for GroupAttributes {
    fn default() -> GroupAttributes {
        GroupAttributes {
            join_phases: Phases::One,
            join_time_limit_ms: 0,
            failure_phases: Phases::One,
            failure_time_limit_ms: 0,
            batch_joins: true,
            batch_failures: true,
            default_vote: DefaultVote::Approve,
        }
    }
}

/// The kinds of protocol (docs/group-services.md §1.3; source-state reflection is not built).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolKind {
    Join = 1,
    Leave = 2,
    FailureLeave = 3,
    Expel = 4,
    StateChange = 5,
    Message = 6,
    AttributeChange = 7,
}

/// What a provider proposes (docs/group-services.md §2.3–§2.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalBody {
    Leave {
        code: u32,
    },
    /// `deactivate_phase` 0: no deactivate script; else the phase at whose start the
    /// scripts run (or the approval, if it comes first).
    Expel {
        targets: Vec<ProviderId>,
        deactivate_phase: u32,
        flag: Bytes,
    },
    ChangeState {
        state: Bytes,
    },
    Message {
        data: Bytes,
    },
    ChangeAttributes(GroupAttributes),
}

impl ProposalBody {
    pub fn kind(&self) -> ProtocolKind {
        match self {
            ProposalBody::Leave { .. } => ProtocolKind::Leave,
            ProposalBody::Expel { .. } => ProtocolKind::Expel,
            ProposalBody::ChangeState { .. } => ProtocolKind::StateChange,
            ProposalBody::Message { .. } => ProtocolKind::Message,
            ProposalBody::ChangeAttributes(_) => ProtocolKind::AttributeChange,
        }
    }
}

/// A provider's proposal: what, how many phases, the time limit per phase (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub body: ProposalBody,
    pub phases: Phases,
    pub time_limit_ms: u32,
}

/// `ha_gs_vote`: the value, an optional replacement state value, an optional provider
/// message for the next notification, an optional new default vote (`None` is
/// `HA_GS_NULL_VOTE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub value: VoteValue,
    pub state: Option<Bytes>,
    pub message: Option<Bytes>,
    pub default: Option<DefaultVote>,
}

impl Vote {
    pub fn plain(value: VoteValue) -> Vote {
        Vote {
            value,
            state: None,
            message: None,
            default: None,
        }
    }
}

/// Why a protocol was rejected.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A provider voted REJECT.
    Vote,
    /// A failed provider's default vote was REJECT (a failure leave follows).
    ProviderFailed,
    /// A late provider's default vote was REJECT (an announcement names it).
    TimedOut,
    /// Every joiner of a join protocol failed before it ended.
    JoinersFailed,
    /// The group instance lost the merge after a partition (docs/group-services.md §6.6).
    CastOut,
}

/// Flags of `gs_summary_code`: what happened in the previous phase.
pub mod summary {
    /// A voter failed; its default vote was used.
    pub const PROVIDER_FAILED: u32 = 1;
    /// A voter did not vote within the time limit; its default vote was used.
    pub const VOTES_TIMED_OUT: u32 = 2;
    /// A deactivate script failed or ran late.
    pub const SCRIPT_FAILED: u32 = 4;
}

/// Why an announcement is sent (docs/group-services.md §3.5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AnnouncementKind {
    /// The providers did not vote within the phase's time limit.
    VoteTimeout,
    /// Their deactivate scripts failed or ran late.
    ScriptFailed,
}

/// `ha_gs_proposal_t` as ringcast gives it (docs/group-services.md §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalInfo {
    pub kind: ProtocolKind,
    pub proposer: Option<ProviderId>,
    pub phases: Phases,
    /// The providers before the change.
    pub members: Vec<ProviderId>,
    pub changing: Vec<(ProviderId, Change)>,
    pub state: Bytes,
    /// The state value the protocol would install (the proposal's, or the latest a
    /// vote offered), if any.
    pub proposed_state: Option<Bytes>,
    /// The message of a provider-message protocol.
    pub message: Option<Bytes>,
    /// Messages attached to votes of the previous phase, in agreed order.
    pub vote_messages: Vec<(ProviderId, Bytes)>,
    pub attributes: GroupAttributes,
    pub new_attributes: Option<GroupAttributes>,
    pub expel_flag: Option<Bytes>,
}

/// What a subscriber asked for (`ha_gs_subscription_ctrl_t`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscribeFlags {
    pub membership: bool,
    pub state: bool,
}

/// What a subscription notification reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionKind {
    pub membership: bool,
    pub state: bool,
    /// `HA_GS_SUBSCRIPTION_DISSOLVED`: the group is gone and the subscription ends.
    pub dissolved: bool,
    /// ringcast's own: after a partition healed, this node's instance of the group
    /// lost the merge; the notification shows the instance that stays (docs/group-services.md
    /// §6.6), with the cast-out providers as changing.
    pub merged: bool,
}

/// The request a delayed error answers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Join,
    Subscribe,
    Propose(ProtocolKind),
    /// The vote for phase `phase` of protocol `seq`: a client may have several votes
    /// of one group in flight, and must know which one was refused.
    Vote {
        seq: u64,
        phase: u32,
    },
}

/// What a local client is told, in order (docs/group-services.md §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GsEvent {
    /// A voting phase: answer with `vote(seq, phase, ..)`.
    NPhase {
        group: GroupName,
        provider: ProviderId,
        seq: u64,
        phase: u32,
        info: ProposalInfo,
        summary: u32,
        time_limit_ms: u32,
    },
    Approved {
        group: GroupName,
        provider: ProviderId,
        seq: u64,
        phases_run: u32,
        info: ProposalInfo,
        summary: u32,
    },
    Rejected {
        group: GroupName,
        provider: ProviderId,
        seq: u64,
        info: ProposalInfo,
        reason: RejectReason,
    },
    Announcement {
        group: GroupName,
        provider: ProviderId,
        kind: AnnouncementKind,
        providers: Vec<ProviderId>,
    },
    /// An approved change a subscriber asked about. `seq` is the protocol's.
    Subscription {
        group: GroupName,
        seq: u64,
        kind: SubscriptionKind,
        state: Option<Bytes>,
        members: Vec<ProviderId>,
        changing: Vec<(ProviderId, Change)>,
    },
    DelayedError {
        group: GroupName,
        request: RequestKind,
        error: GsError,
    },
    /// The provider's group instance lost a merge: the provider is out and its token
    /// is dead; it may join again (docs/group-services.md §6.6).
    Merge {
        group: GroupName,
        provider: ProviderId,
    },
}

/// A deactivate script to run outside the engine thread (docs/group-services.md §6.5): the driver
/// runs `script` with the arguments `flag group instance reason`, kills it after
/// `time_limit_ms`, and reports with `Service::script_done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRun {
    pub client: ClientId,
    pub script: String,
    pub group: GroupName,
    pub seq: u64,
    pub provider: ProviderId,
    pub flag: Bytes,
    pub reason: &'static str,
    pub time_limit_ms: u32,
}

/// `ha_gs_rc_t` (docs/group-services.md §5). Numbers are ringcast's and never change; `TryAgain`
/// (20) is ringcast's own: Totem's bounded send queue is full, retry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(i32)]
pub enum GsError {
    #[error("not ok")]
    NotOk = 1,
    #[error("not initialised")]
    NoInit = 2,
    #[error("bad member token")]
    BadMemberToken = 3,
    #[error("bad parameter")]
    BadParameter = 4,
    #[error("bad group attributes")]
    BadGroupAttributes = 5,
    #[error("back-level providers")]
    BacklevelProviders = 6,
    #[error("another protocol is running")]
    Collide = 7,
    #[error("not supported")]
    NotSupported = 8,
    #[error("instance number in use")]
    DuplicateInstanceNumber = 9,
    #[error("unknown group")]
    UnknownGroup = 10,
    #[error("exists")]
    Exists = 11,
    #[error("connect failed")]
    ConnectFailed = 12,
    #[error("name too long")]
    NameTooLong = 13,
    #[error("no memory")]
    NoMemory = 14,
    #[error("not a member")]
    NotAMember = 15,
    #[error("vote not expected")]
    VoteNotExpected = 16,
    #[error("no source group provider")]
    NoSourceGroupProvider = 17,
    #[error("invalid source group")]
    InvalidSourceGroup = 18,
    #[error("invalid deactivate phase")]
    InvalidDeactivatePhase = 19,
    #[error("try again")]
    TryAgain = 20,
}

impl GsError {
    /// The `ha_gs_rc_t` value.
    pub fn code(self) -> i32 {
        self as i32
    }
}
