//! Per-client flow control: what the host does about local clients that do not read
//! their events (docs/architecture.md, "Flow control").
//!
//! The driver puts each event the host hands a client into that client's event ring;
//! what does not fit waits in a backlog the driver keeps, and after every round the
//! driver reports each backlog that changed ([`super::Host::handle_backlog`]). The
//! host decides what it means:
//! - over half of either limit, the client is *lagging*: while any client lags, the
//!   host refuses local clients' multicasts with `TRY_AGAIN` (they wait in the
//!   senders' submit rings, back-pressuring the senders). Every message a local
//!   client sends is delivered to every local member, the lagging one included, so
//!   taking more would only grow its backlog;
//! - over either limit, the client is *cut off*: the host disconnects it (its
//!   members leave their groups with PROCDOWN, like a crash) and tells the driver
//!   ([`super::Host::poll_cut_off`]), which closes the connection saying why. Nothing
//!   is dropped from a client that stays connected.
//!
//! The backlog is bounded: it is reported after every round, and one round hands a
//! client at most the events of that round on top of the limit.

use std::collections::{BTreeMap, VecDeque};

use crate::cpg::ConnId;

/// How much a local client may leave unread (events handed to it that are not in its
/// event ring yet).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for FlowLimits {
    fn default() -> FlowLimits {
        FlowLimits {
            max_events: 65_536,
            max_bytes: 256 << 20,
        }
    }
}

/// A client's events waiting outside its event ring, as the driver counts them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub events: usize,
    pub bytes: usize,
}

impl Backlog {
    fn over(&self, max_events: usize, max_bytes: usize) -> bool {
        self.events > max_events || self.bytes > max_bytes
    }
}

/// Why the host cut a client off.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CutOff {
    /// It did not read its events: its backlog went over the limits.
    SlowReader(Backlog),
}

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutOff::SlowReader(b) => write!(
                f,
                "client too slow: {} events ({} bytes) unread, over the backlog limit",
                b.events, b.bytes
            ),
        }
    }
}

/// Counters of flow control.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Local multicasts refused with `TRY_AGAIN` while a client lagged or Totem's send
    /// queue was long.
    pub multicasts_held: u64,
    pub clients_cut_off: u64,
}

/// The lagging clients and the cut-offs the driver has not been told of yet.
#[derive(Debug)]
pub(super) struct Flow {
    limits: FlowLimits,
    lagging: BTreeMap<ConnId, Backlog>,
    cut_off: VecDeque<(ConnId, CutOff)>,
    pub(super) stats: FlowStats,
}

impl Flow {
    pub(super) fn new(limits: FlowLimits) -> Flow {
        Flow {
            limits,
            lagging: BTreeMap::new(),
            cut_off: VecDeque::new(),
            stats: FlowStats::default(),
        }
    }

    pub(super) fn limits(&self) -> &FlowLimits {
        &self.limits
    }

    /// Takes `conn`'s backlog into account; `Some` when it is to be cut off (it is
    /// then forgotten here and queued for [`Flow::poll_cut_off`]).
    pub(super) fn report(&mut self, conn: ConnId, backlog: Backlog) -> Option<CutOff> {
        let FlowLimits {
            max_events,
            max_bytes,
        } = self.limits;
        if backlog.over(max_events, max_bytes) {
            self.lagging.remove(&conn);
            let why = CutOff::SlowReader(backlog);
            self.cut_off.push_back((conn, why));
            self.stats.clients_cut_off += 1;
            return Some(why);
        }
        if backlog.over(max_events / 2, max_bytes / 2) {
            self.lagging.insert(conn, backlog);
        } else {
            self.lagging.remove(&conn);
        }
        None
    }

    /// `conn` is gone: it holds nobody back any more.
    pub(super) fn forget(&mut self, conn: ConnId) {
        self.lagging.remove(&conn);
    }

    /// Whether local senders are held back (a client lags).
    pub(super) fn senders_held(&self) -> bool {
        !self.lagging.is_empty()
    }

    pub(super) fn lagging(&self) -> usize {
        self.lagging.len()
    }

    pub(super) fn poll_cut_off(&mut self) -> Option<(ConnId, CutOff)> {
        self.cut_off.pop_front()
    }
}
