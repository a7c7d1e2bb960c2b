//! One node's whole service above the network and the shared memory, as a sans-IO
//! state machine: Totem, the CPG service (and, beside it, any further service), the
//! routing between them, what must be persisted, and the counters they keep
//! (docs/architecture.md, "The host").
//!
//! The driver (the daemon's io_uring loop, or the simulator) turns what happened into
//! inputs and acts on the outputs; the host decides everything else.
//!
//! Inputs:
//! - [`Host::handle_datagram`]: a datagram from the network (opened, if sealed);
//! - [`Host::handle_timeout`]: the deadline of [`Host::poll_timeout`] passed;
//! - client requests: [`Host::connect`], [`Host::disconnect`], [`Host::join`],
//!   [`Host::leave_group`], [`Host::mcast`] (and its zero-copy forms
//!   [`Host::mcast_framed`], [`Host::mcast_in_place`]) and the queries;
//! - [`Host::handle_persisted`]: the ring sequence asked for was written durably;
//! - [`Host::handle_backlog`]: how many events a client left unread (flow control,
//!   [`flow`]);
//! - [`Host::leave`]: the node is shutting down.
//!
//! Outputs, drained after every input:
//! - [`Host::poll_persist`]: a ring sequence to write before anything else leaves;
//! - [`Host::poll_transmit`]: datagrams to send;
//! - [`Host::poll_event`]: events for local client connections, in order;
//! - [`Host::poll_cut_off`]: clients the host disconnected for not reading;
//! - [`Host::poll_notice`]: what the driver may log or hand to its test hooks
//!   (configuration changes, deliveries of a service the host does not run);
//! - [`Host::poll_timeout`]: the next deadline.
//!
//! What Totem delivers reaches the services when the driver next asks for events or
//! notices ([`Host::poll_event`], [`Host::poll_notice`], [`Host::poll`]) or makes a
//! client request, not inside [`Host::handle_datagram`]: a token Totem forwards is in
//! [`Host::poll_transmit`] at once, and the driver sends it before it does that work
//! (docs/performance.md, "Token hop"). Queries answer from the state as of then.
//!
//! While a ring sequence asked for is not confirmed, the host holds every transmit,
//! client event and notice: nothing that may name the new ring leaves it.
//!
//! Zero-copy: payloads move as [`Bytes`] (slices of the driver's shared buffers
//! included) and [`Host::mcast_framed`] lets the driver place a message's header into
//! a buffer the host never sees, so nothing here copies a payload the driver did not
//! ask it to.
//!
//! Routing: the first byte of every Totem payload names its service
//! ([`ServiceId`]). CPG's go to [`cpg::Service`], Group Services' to
//! [`crate::gs::Service`] (its requests and outputs: `host/group_services.rs`); both
//! see every configuration change and share the sync barrier.

pub mod flow;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

pub use flow::{Backlog, CutOff, FlowLimits, FlowStats};

use crate::cpg::{self, ClientEvent, ConnId, CpgError, GroupName, IterationKind, Member};
use crate::service::ServiceId;
use crate::totem::{
    self, ConfigError, ConfigurationChange, ConfigurationKind, Delivery, Event, Guarantee, Instant,
    Node, NodeId, NodeState, RingId, RingSeqStore, SubmitError, Transmit,
};

/// Most application messages (and bytes) the host lets wait in Totem's send queue
/// before it refuses local clients' multicasts with `TRY_AGAIN`: what waits longer
/// belongs in the client's submit ring, where it back-pressures the client; and what
/// Totem holds reaches local receivers' backlogs whatever happens, so this must stay
/// well below the flow limits ([`FlowLimits`]).
pub const TOTEM_QUEUE_MAX_MESSAGES: usize = 4096;
/// See [`TOTEM_QUEUE_MAX_MESSAGES`].
pub const TOTEM_QUEUE_MAX_BYTES: usize = 8 << 20;

/// What a host runs with: one checked configuration per layer.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Totem; `sync_barrier` is turned on by the host (CPG needs it).
    pub totem: totem::Config,
    pub cpg: cpg::Limits,
    pub flow: FlowLimits,
}

/// What the driver may log, or hand to its test hooks. Nothing here needs an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A Totem configuration change (already handed to the services).
    Configuration(ConfigurationChange),
    /// A delivery of a service this host does not run (the daemon's load generator).
    Foreign(ServiceId, Delivery),
}

/// Counters of the host itself (Totem's and CPG's own are [`Host::totem_stats`] and
/// [`Host::cpg_stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Totem deliveries, every service.
    pub messages_delivered: u64,
    pub bytes_delivered: u64,
    pub regular_changes: u64,
    pub transitional_changes: u64,
    /// Deliveries with no known service id: dropped.
    pub unknown_service: u64,
    /// Ring sequences written (confirmed by the driver).
    pub ring_seqs_persisted: u64,
}

/// The ring sequence a node starts from; what Totem then stores is read back with
/// [`Node::ring_seq`] and persisted through the host's outputs.
struct StartingSeq(u64);

impl RingSeqStore for StartingSeq {
    fn load(&mut self) -> u64 {
        self.0
    }
    fn store(&mut self, _seq: u64) {}
}

/// One node: Totem, the CPG service, the persisted ring sequence.
#[derive(Debug)]
pub struct Host {
    node: Node,
    cpg: cpg::Service,
    gs: crate::gs::Service,
    barrier: group_services::SyncBarrier,
    /// The highest ring sequence the driver confirmed written.
    persisted_seq: u64,
    /// The ring sequence handed out by [`Host::poll_persist`] and not yet confirmed.
    persist_in_flight: Option<u64>,
    notices: VecDeque<Notice>,
    /// The latest time of an input: the time of routing done on a poll.
    now: Instant,
    flow: flow::Flow,
    stats: HostStats,
}

impl Host {
    /// A host whose node starts gathering at `now`. `last_ring_seq` is the ring sequence
    /// the driver read from durable storage (0 on first start): every ring this node
    /// enters is above it, and each new one is asked to be persisted
    /// ([`Host::poll_persist`]) before the node says anything that depends on it.
    pub fn new(config: HostConfig, last_ring_seq: u64, now: Instant) -> Result<Host, ConfigError> {
        let mut totem = config.totem;
        totem.sync_barrier = true;
        let local = totem.node_id;
        let node = Node::new(totem, Box::new(StartingSeq(last_ring_seq)), now)?;
        Ok(Host {
            node,
            cpg: cpg::Service::new(local, config.cpg),
            gs: crate::gs::Service::new(local, crate::gs::Limits::default()),
            barrier: group_services::SyncBarrier::default(),
            persisted_seq: last_ring_seq,
            persist_in_flight: None,
            notices: VecDeque::new(),
            now,
            flow: flow::Flow::new(config.flow),
            stats: HostStats::default(),
        })
    }

    // ------------------------------------------------------------------ inputs

    /// A datagram from the network. What it makes deliverable reaches the services
    /// when the driver next asks for events, notices or a request: a token Totem
    /// forwards is in [`Host::poll_transmit`] at once, before any of that work
    /// (docs/performance.md, "Token hop").
    pub fn handle_datagram(&mut self, now: Instant, source: NodeId, datagram: &Bytes) {
        self.now = self.now.max(now);
        self.node.handle_packet(now, source, datagram);
    }

    /// The deadline of [`Host::poll_timeout`] passed (calling it early does no harm).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        self.gs_handle_timeout(now);
    }

    /// Retries what the services owe Totem (it refused them for lack of room before).
    /// The driver calls it once per round of work.
    pub fn poll(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.route(now);
        self.cpg.poll(&mut group_services::submit(
            &mut self.node,
            &mut self.barrier,
            now,
            group_services::Party::Cpg,
        ));
        self.gs_poll(now);
    }

    /// The ring sequence `seq`, from [`Host::poll_persist`], is on durable storage.
    /// A driver that cannot write it must stop the node (a ring id must never be
    /// reused); it must not call this.
    pub fn handle_persisted(&mut self, seq: u64) {
        if self.persist_in_flight.is_some_and(|s| s <= seq) {
            self.persist_in_flight = None;
        }
        if seq > self.persisted_seq {
            self.persisted_seq = seq;
            self.stats.ring_seqs_persisted += 1;
        }
    }

    /// The node leaves the ring (shutdown): one last join tells the others.
    pub fn leave(&mut self, now: Instant) {
        self.node.leave(now);
    }

    /// A message of a service this host does not run (the daemon's load generator),
    /// its service id first. CPG messages go through the client requests.
    pub fn submit_foreign(
        &mut self,
        now: Instant,
        payload: Bytes,
        guarantee: Guarantee,
    ) -> Result<(), SubmitError> {
        debug_assert_ne!(ServiceId::of(&payload), Some(ServiceId::Cpg));
        self.node.submit(now, payload, guarantee)
    }

    // ---------------------------------------------------------- client requests

    /// A client connected (`pid` labels its members).
    pub fn connect(&mut self, conn: ConnId, pid: u32) -> Result<(), CpgError> {
        self.cpg.connect(conn, pid)
    }

    /// A client is gone, orderly or not: PROCDOWN for its members. (Once more for a
    /// client the host cut off does nothing.)
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.flow.forget(conn);
        self.route(now);
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg.disconnect(conn, &mut totem);
    }

    pub fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        group: &GroupName,
        initial_totem_conf: bool,
    ) -> Result<(), CpgError> {
        self.route(now);
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg.join(conn, group, initial_totem_conf, &mut totem)
    }

    pub fn leave_group(
        &mut self,
        now: Instant,
        conn: ConnId,
        group: &GroupName,
    ) -> Result<(), CpgError> {
        self.route(now);
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg.leave(conn, group, &mut totem)
    }

    /// Whether local clients' multicasts are taken now: false while Totem's send
    /// queue is long or a local client lags behind its events ([`flow`]); they are
    /// then refused with `TRY_AGAIN` and wait in the clients' submit rings. A driver
    /// asks before it does any work for a multicast.
    pub fn accepts_multicasts(&self) -> bool {
        self.node.send_queue_len() < TOTEM_QUEUE_MAX_MESSAGES
            && self.node.send_queue_bytes() < TOTEM_QUEUE_MAX_BYTES
            && !self.flow.senders_held()
    }

    /// `TRY_AGAIN` (counted) unless [`Host::accepts_multicasts`].
    fn admit_multicast(&mut self) -> Result<(), CpgError> {
        if self.accepts_multicasts() {
            return Ok(());
        }
        self.flow.stats.multicasts_held += 1;
        Err(CpgError::TryAgain)
    }

    /// `conn` leaves `backlog` events unread (handed out by [`Host::poll_event`], not
    /// yet in its event ring). The driver reports every change, at least once per
    /// round of work; the host holds local senders back while a client lags and cuts
    /// off one over the limits ([`flow`], [`Host::poll_cut_off`]).
    pub fn handle_backlog(&mut self, now: Instant, conn: ConnId, backlog: Backlog) {
        if self.flow.report(conn, backlog).is_some() {
            let mut totem = cpg::TotemSubmit {
                node: &mut self.node,
                now,
            };
            self.cpg.disconnect(conn, &mut totem);
        }
    }

    /// A multicast to `conn`'s group, copied from `parts`.
    pub fn mcast(
        &mut self,
        now: Instant,
        conn: ConnId,
        guarantee: Guarantee,
        parts: &[&[u8]],
    ) -> Result<(), CpgError> {
        self.route(now);
        self.admit_multicast()?;
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg.mcast(conn, guarantee, parts, &mut totem)
    }

    /// A multicast whose payload is already in `buf` behind room for the header
    /// (see [`cpg::Service::mcast_in_place`]): not copied.
    pub fn mcast_in_place(
        &mut self,
        now: Instant,
        conn: ConnId,
        guarantee: Guarantee,
        buf: BytesMut,
    ) -> Result<(), (CpgError, Option<BytesMut>)> {
        self.route(now);
        if let Err(e) = self.admit_multicast() {
            return Err((e, Some(buf)));
        }
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg.mcast_in_place(conn, guarantee, buf, &mut totem)
    }

    /// A multicast of `payload_len` bytes that lives in a buffer of the driver's: the
    /// host hands `frame` the header, the driver writes it in front of the payload and
    /// returns the whole message as one `Bytes` over its buffer (see
    /// [`cpg::Service::mcast_framed`]). The buffer stays opaque here.
    pub fn mcast_framed(
        &mut self,
        now: Instant,
        conn: ConnId,
        guarantee: Guarantee,
        payload_len: usize,
        frame: impl FnOnce(&[u8]) -> Option<Bytes>,
    ) -> Result<(), CpgError> {
        self.route(now);
        self.admit_multicast()?;
        let mut totem = cpg::TotemSubmit {
            node: &mut self.node,
            now,
        };
        self.cpg
            .mcast_framed(conn, guarantee, payload_len, frame, &mut totem)
    }

    pub fn membership(&self, group: &GroupName) -> Vec<Member> {
        self.cpg.membership(group)
    }

    pub fn iterate(
        &self,
        kind: IterationKind,
        group: Option<&GroupName>,
    ) -> Result<Vec<(GroupName, Member)>, CpgError> {
        self.cpg.iterate(kind, group)
    }

    // ----------------------------------------------------------------- outputs

    /// A ring sequence to write durably before anything else leaves the node; confirm
    /// it with [`Host::handle_persisted`]. Asked once per new value.
    pub fn poll_persist(&mut self) -> Option<u64> {
        let seq = self.node.ring_seq();
        if seq <= self.persisted_seq || self.persist_in_flight.is_some_and(|s| s >= seq) {
            return None;
        }
        self.persist_in_flight = Some(seq);
        Some(seq)
    }

    /// Whether a ring sequence waits to be persisted (transmits are held meanwhile).
    pub fn persist_pending(&self) -> bool {
        self.node.ring_seq() > self.persisted_seq
    }

    /// The next datagram to send; none while a new ring sequence is not yet on durable
    /// storage (what follows may name that ring).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.persist_pending() {
            return None;
        }
        self.node.poll_transmit()
    }

    /// The next event for a local connection; none while a new ring sequence is not
    /// yet on durable storage (events may name that ring).
    pub fn poll_event(&mut self) -> Option<(ConnId, ClientEvent)> {
        self.route(self.now);
        if self.persist_pending() {
            return None;
        }
        self.cpg.poll_event()
    }

    /// A client the host disconnected, and why ([`flow`]): the driver closes its
    /// connection (its members already left their groups).
    pub fn poll_cut_off(&mut self) -> Option<(ConnId, CutOff)> {
        self.flow.poll_cut_off()
    }

    /// The next notice for the driver; held like [`Host::poll_event`].
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.route(self.now);
        if self.persist_pending() {
            return None;
        }
        self.notices.pop_front()
    }

    /// The earliest deadline at which [`Host::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.node.poll_timeout(), self.gs.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------- state

    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    pub fn state(&self) -> NodeState {
        self.node.state()
    }

    pub fn ring_id(&self) -> RingId {
        self.node.ring_id()
    }

    pub fn members(&self) -> &[NodeId] {
        self.node.members()
    }

    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    pub fn totem_stats(&self) -> &totem::Stats {
        self.node.stats()
    }

    pub fn cpg_stats(&self) -> &cpg::Stats {
        self.cpg.stats()
    }

    pub fn cpg_limits(&self) -> &cpg::Limits {
        self.cpg.limits()
    }

    pub fn flow_limits(&self) -> &FlowLimits {
        self.flow.limits()
    }

    pub fn flow_stats(&self) -> &FlowStats {
        &self.flow.stats
    }

    /// Whether local senders are held back because a client lags ([`flow`]).
    pub fn senders_held(&self) -> bool {
        self.flow.senders_held()
    }

    /// Clients lagging behind their events now.
    pub fn clients_lagging(&self) -> usize {
        self.flow.lagging()
    }

    /// Whether CPG is between a regular configuration and the activation of its sync
    /// (joins, leaves and multicasts are then refused with `TRY_AGAIN`).
    pub fn cpg_in_sync(&self) -> bool {
        self.cpg.in_sync()
    }

    /// The ring of CPG's last completed sync.
    pub fn cpg_synced_ring(&self) -> Option<RingId> {
        self.cpg.synced_ring().map(|(ring, _)| ring)
    }

    /// PROCDOWNs and JOINLISTs CPG still owes Totem (see [`cpg::Service::poll`]).
    pub fn cpg_owed_submissions(&self) -> usize {
        self.cpg.owed_submissions()
    }

    /// Totem, read-only (queue lengths, for a driver or a simulator that waits for
    /// quiescence).
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn send_queue_len(&self) -> usize {
        self.node.send_queue_len()
    }

    /// Totem, for what only a driver tunes (reassembly buffers in shared memory).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    // ----------------------------------------------------------------- routing

    /// Hands every Totem event to the service it belongs to, in order: deliveries by
    /// their service id, configuration changes to every service.
    fn route(&mut self, now: Instant) {
        while let Some(event) = self.node.poll_event() {
            match &event {
                Event::Deliver(delivery) => {
                    self.stats.messages_delivered += 1;
                    self.stats.bytes_delivered += delivery.payload.len() as u64;
                    match ServiceId::of(&delivery.payload) {
                        Some(ServiceId::Cpg) => {}
                        Some(ServiceId::Gs) => {
                            self.gs_handle_totem_event(now, event);
                            continue;
                        }
                        Some(other) => {
                            if let Event::Deliver(delivery) = event {
                                self.notices.push_back(Notice::Foreign(other, delivery));
                            }
                            continue;
                        }
                        None => {
                            self.stats.unknown_service += 1;
                            continue;
                        }
                    }
                }
                Event::Configuration(change) => {
                    match change.kind {
                        ConfigurationKind::Regular => self.stats.regular_changes += 1,
                        ConfigurationKind::Transitional => self.stats.transitional_changes += 1,
                    }
                    self.notices
                        .push_back(Notice::Configuration(change.clone()));
                }
            }
            // A configuration change goes to CPG, then to GS.
            let for_gs = matches!(event, Event::Configuration(_)).then(|| event.clone());
            self.cpg.handle_totem_event(
                event,
                &mut group_services::submit(
                    &mut self.node,
                    &mut self.barrier,
                    now,
                    group_services::Party::Cpg,
                ),
            );
            if let Some(change) = for_gs {
                self.gs_handle_totem_event(now, change);
            }
        }
    }
}

mod group_services;

#[cfg(test)]
mod tests;
