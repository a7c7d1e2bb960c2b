//! What a run records: per node incarnation, the sequence of submits, deliveries and
//! configuration changes, which the checkers then judge. A restarted node is a new
//! incarnation with a trace of its own.

use std::fmt;
use std::time::Duration;

use ringcast_proto::totem::{
    ConfigurationChange, ConfigurationKind, Guarantee, Instant, NodeId, RingId,
};

/// Identifies one application message of the workload: its sender incarnation and the
/// sender's counter (from 0 in each incarnation).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub node: NodeId,
    pub incarnation: u32,
    pub counter: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}:{}", self.node, self.incarnation, self.counter)
    }
}

/// What the simulator found when it decoded a delivered payload.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Integrity {
    Ok,
    /// Too short or without the workload's magic: not a message anyone sent.
    Unparseable,
    /// Its length differs from the length written into it.
    BadLength,
    /// Its contents do not match the checksum written into it.
    BadChecksum,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `submit` returned Ok.
    Submitted {
        id: MsgId,
        len: usize,
        checksum: u64,
        guarantee: Guarantee,
    },
    /// An `Event::Deliver`. `id`, `len` and `checksum` as written in the payload (id is
    /// None when the payload could not be parsed).
    Delivered {
        id: Option<MsgId>,
        sender: NodeId,
        ring_id: RingId,
        guarantee: Guarantee,
        len: usize,
        checksum: u64,
        integrity: Integrity,
    },
    /// An `Event::Configuration`.
    Config(ConfigurationChange),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub at: Instant,
    pub kind: RecordKind,
}

/// How an incarnation ended, if it did before the end of the run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum End {
    Crashed(Instant),
    /// It called `leave` and was then dropped.
    Left(Instant),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    pub node: NodeId,
    /// 0 for the first start of `node`, then 1, 2, … after each restart.
    pub number: u32,
    pub started: Instant,
    pub end: Option<End>,
    pub records: Vec<Record>,
}

impl Incarnation {
    pub fn new(node: NodeId, number: u32, started: Instant) -> Incarnation {
        Incarnation {
            node,
            number,
            started,
            end: None,
            records: Vec::new(),
        }
    }

    pub fn alive_at_end(&self) -> bool {
        self.end.is_none()
    }

    pub fn name(&self) -> String {
        format!("n{}#{}", self.node, self.number)
    }

    /// The records up to and including `index`, at most `n` of them, one line each.
    pub fn excerpt(&self, index: usize, n: usize) -> Vec<String> {
        let end = (index + 1).min(self.records.len());
        let start = end.saturating_sub(n);
        self.records[start..end]
            .iter()
            .map(|r| format!("{} {}", self.name(), r))
            .collect()
    }

    /// The last `n` records.
    pub fn tail(&self, n: usize) -> Vec<String> {
        match self.records.len() {
            0 => Vec::new(),
            len => self.excerpt(len - 1, n),
        }
    }
}

/// Facts about the end of a run that the liveness checker needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// When faults stopped, everything was healed and every crashed node restarted.
    pub final_heal: Option<Instant>,
    /// The bound within which the cluster must settle after `final_heal`.
    pub settle_limit: Duration,
    /// When the cluster was first seen settled: every node alive and operational in one
    /// ring of all nodes, with empty send queues. None if never within the bound.
    pub quiescent_at: Option<Instant>,
    /// Per live node at the end: a one-line description (state, ring, queue).
    pub final_states: Vec<String>,
    /// The run was cut short (panic, stuck timer, step budget): liveness is not judged.
    pub aborted: bool,
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub nodes: usize,
    pub incarnations: Vec<Incarnation>,
    pub outcome: Outcome,
}

pub fn fmt_instant(at: Instant) -> String {
    let ns = at.as_nanos();
    format!(
        "{}.{:06}s",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1_000
    )
}

fn fmt_members(members: &[NodeId]) -> String {
    let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    format!("[{}]", list.join(","))
}

fn fmt_guarantee(g: Guarantee) -> &'static str {
    match g {
        Guarantee::Agreed => "agreed",
        Guarantee::Safe => "SAFE",
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={} ", fmt_instant(self.at))?;
        match &self.kind {
            RecordKind::Submitted {
                id, len, guarantee, ..
            } => write!(f, "submit {id} {} {len} B", fmt_guarantee(*guarantee)),
            RecordKind::Delivered {
                id,
                sender,
                ring_id,
                guarantee,
                len,
                integrity,
                ..
            } => {
                match id {
                    Some(id) => write!(f, "deliver {id}")?,
                    None => write!(f, "deliver <unparseable>")?,
                }
                write!(
                    f,
                    " from {sender} ring {ring_id} {} {len} B",
                    fmt_guarantee(*guarantee)
                )?;
                if *integrity != Integrity::Ok {
                    write!(f, " {integrity:?}")?;
                }
                Ok(())
            }
            RecordKind::Config(c) => {
                let kind = match c.kind {
                    ConfigurationKind::Transitional => "transitional",
                    ConfigurationKind::Regular => "REGULAR",
                };
                write!(
                    f,
                    "config {kind} ring {} members {} left {} joined {}",
                    c.ring_id,
                    fmt_members(&c.members),
                    fmt_members(&c.left),
                    fmt_members(&c.joined)
                )
            }
        }
    }
}
