//! One Totem node: the operational token protocol (Totem §3; docs/cpg.md §9.3–9.5) and
//! the membership protocol (gather, commit, recovery; Totem §4; docs/cpg.md §9.6).
//!
//! Everything happens inside `handle_*`, `submit` and `leave`; results queue up in
//! `transmits` and `events` until the caller drains them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::config::MAX_WINDOW;
use super::events::EventQueue;
use super::ring::{RingState, Stored};
use super::{
    Config, ConfigError, ConfigurationChange, ConfigurationKind, Delivery, Destination, Event,
    Gather, Guarantee, Instant, NodeId, RingId, RingSeqStore, SubmitError, Transmit,
};
use crate::wire::pack::{Part, Reassembler, ReassemblyBuffers, SendQueue};
use crate::wire::packet::{MCAST_OVERHEAD, McastBuilder, McastFields};
use crate::wire::{
    CommitEntry, CommitToken, Join, MAX_RTR_ENTRIES, Mcast, Packet, Recovered, Token,
};

/// The protocol state of a node (Totem §4; docs/cpg.md §9.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    Operational,
    Gather,
    Commit,
    Recovery,
}

/// Counters a node keeps about itself; the caller may read them at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_received: u64,
    /// Datagrams that failed to decode (bad magic, version, cluster, truncated, …).
    pub packets_dropped: u64,
    pub tokens_received: u64,
    /// Tokens dropped as duplicates or of another ring.
    pub tokens_dropped: u64,
    /// Rotations completed (counted by the representative).
    pub token_rotations: u64,
    /// Datagrams of application messages originated.
    pub messages_originated: u64,
    pub messages_retransmitted: u64,
    /// Application messages delivered.
    pub messages_delivered: u64,
    /// Malformed packed chunks dropped during reassembly.
    pub chunks_malformed: u64,
    pub rings_installed: u64,
    pub token_losses: u64,
    pub failed_to_receive: u64,
    /// Application bytes copied into datagrams this node originated.
    pub bytes_packed_by_copy: u64,
    /// Application bytes that went into datagrams by reference (no copy).
    pub bytes_packed_by_reference: u64,
    /// Fragment bytes copied to reassemble messages.
    pub bytes_reassembled: u64,
}

/// The ring being installed: from the commit token's first visit to installation.
#[derive(Debug)]
struct NextRing {
    ring: RingState,
    /// The commit token's entries, complete once the second rotation starts.
    entries: Vec<CommitEntry>,
    /// Members of the new ring that come from this node's old ring.
    transitional: Vec<NodeId>,
    /// Old-ring messages this node still has to retransmit on the new ring.
    recovery_queue: VecDeque<(u64, Stored)>,
    /// The highest old-ring sequence any member of the old ring knew to be safe.
    old_safe_upto: u64,
    /// Highest commit-token `token_seq` received: duplicates are dropped.
    last_commit_token_seq: u64,
    orf_sent: bool,
}

/// What a node remembers between two visits of the token on one ring.
#[derive(Debug, Default)]
struct TokenMemory {
    /// Highest `token_seq` seen: older and duplicate tokens are dropped.
    last_token_seq: u64,
    /// `token.aru` as received on the previous visit (for stability).
    prev_aru: u64,
    /// `token.seq` as received on the previous visit (for idle detection).
    last_seq: u64,
    seq_unchanged: u32,
    /// `token.aru` as forwarded on the previous visit, and how often it did not move.
    last_aru: u64,
    aru_count: u32,
    sent_last_visit: u32,
    prev_backlog: u32,
    /// `token.seq` when this node last forwarded the token: a message above it proves
    /// that the token went on.
    forwarded_seq: u64,
    /// The ring is idle (no new message for `seqno_unchanged_const` visits).
    idle: bool,
    /// The representative holds the idle token until the hold timer or a new message.
    holding: Option<Token>,
    /// Visits on which each missing sequence was seen missing.
    miss_counts: BTreeMap<u64, u32>,
}

#[derive(Debug, Default)]
struct Timers {
    token_loss: Option<Instant>,
    token_retransmit: Option<Instant>,
    hold: Option<Instant>,
    merge: Option<Instant>,
    join: Option<Instant>,
    consensus: Option<Instant>,
}

impl Timers {
    fn earliest(&self) -> Option<Instant> {
        [
            self.token_loss,
            self.token_retransmit,
            self.hold,
            self.merge,
            self.join,
            self.consensus,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn clear_ring_timers(&mut self) {
        self.token_loss = None;
        self.token_retransmit = None;
        self.hold = None;
        self.merge = None;
    }
}

/// Largest retransmit store, in bytes: bounds the receive window for large datagrams.
const STORE_BYTES_MAX: usize = 256 << 20;

/// A ring's receive window in messages: sequences beyond `my_aru` plus this are refused,
/// so one ring's store holds at most this many datagrams of `max_datagram_bytes`.
pub fn receive_window(config: &Config) -> u64 {
    (STORE_BYTES_MAX / config.max_datagram_bytes)
        .clamp(4 * config.window_size as usize, MAX_WINDOW as usize) as u64
}

/// Whether a decoded packet that came from node `source` is looked at: its sequence
/// numbers are in range, and it names `source` as its sender unless it is a multicast
/// (see [`Node::handle_packet`]).
pub fn acceptable(packet: &Packet, source: NodeId) -> bool {
    sequences_in_range(packet) && (matches!(packet, Packet::Mcast(_)) || packet.sender() == source)
}

pub struct Node {
    config: Config,
    me: NodeId,
    store: Box<dyn RingSeqStore>,
    state: NodeState,
    stats: Stats,
    rng: u64,
    left: bool,

    transmits: VecDeque<Transmit>,
    events: EventQueue,

    send_queue: SendQueue,
    /// Messages of the synchronisation that follows a configuration change: they go
    /// before `send_queue`, and alone while `waiting_for_sync`.
    sync_queue: SendQueue,
    /// `Config::sync_barrier` is on and the user has not yet called `sync_done` for
    /// the ring installed last: `send_queue` waits.
    waiting_for_sync: bool,
    reassembler: Reassembler,
    max_payload: usize,
    max_rtr: usize,
    window: u64,

    /// Highest ring sequence this node has been in (persisted).
    ring_seq: u64,
    /// Highest ring sequence seen in any join.
    max_ring_seq_seen: u64,
    /// The last ring this node was operational in (the old ring during membership).
    regular: RingState,
    next: Option<NextRing>,

    proc_list: BTreeSet<NodeId>,
    failed_list: BTreeSet<NodeId>,
    consensus: BTreeSet<NodeId>,
    failed_to_receive: bool,

    tok: TokenMemory,
    /// The last token or commit token sent, resent when the retransmit timer fires.
    last_sent: Option<Transmit>,
    timers: Timers,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me)
            .field("state", &self.state)
            .field("ring", &self.regular.ring_id)
            .field("members", &self.regular.members)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node that starts gathering at `now`: its first ring is a singleton, which then
    /// merges with the others (docs/cpg.md §9.6, "Startup"). The store supplies the
    /// highest ring sequence seen before a restart.
    pub fn new(
        config: Config,
        mut store: Box<dyn RingSeqStore>,
        now: Instant,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        let me = config.node_id;
        // A fresh start is a ring of its own that no other node can have been in: its
        // sequence is above any this node has seen, so it is never mistaken for the
        // ring this node was in before it restarted.
        let ring_seq = store.load().saturating_add(1);
        store.store(ring_seq);
        let window = receive_window(&config);
        let max_rtr = MAX_RTR_ENTRIES.min(config.max_datagram_bytes.saturating_sub(160) / 8);
        let mut node = Node {
            me,
            store,
            state: NodeState::Gather,
            stats: Stats::default(),
            rng: config.seed,
            left: false,
            transmits: VecDeque::new(),
            events: EventQueue::default(),
            send_queue: SendQueue::new(config.send_queue_bytes, config.max_message_bytes),
            sync_queue: SendQueue::new(config.max_message_bytes, config.max_message_bytes),
            waiting_for_sync: config.sync_barrier,
            reassembler: Reassembler::new(config.max_message_bytes),
            max_payload: config.max_datagram_bytes - MCAST_OVERHEAD,
            max_rtr,
            window,
            ring_seq,
            max_ring_seq_seen: ring_seq,
            regular: RingState::new(
                RingId {
                    rep: me,
                    seq: ring_seq,
                },
                vec![me],
                window,
            ),
            next: None,
            proc_list: BTreeSet::new(),
            failed_list: BTreeSet::new(),
            consensus: BTreeSet::new(),
            failed_to_receive: false,
            tok: TokenMemory::default(),
            last_sent: None,
            timers: Timers::default(),
            config,
        };
        node.gather_enter(now);
        Ok(node)
    }

    /// Joins fragmented messages of at least `min_bytes` in buffers from `buffers`
    /// (when it gives one) instead of on the heap: the caller's own memory, e.g. memory
    /// its local readers share. What is delivered is the same.
    pub fn set_reassembly_buffers(&mut self, min_bytes: usize, buffers: ReassemblyBuffers) {
        self.reassembler.set_buffers(min_bytes, buffers);
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The highest ring sequence this node has used; a restarted node must start above
    /// it, so whoever drives the node persists it (see [`RingSeqStore`]).
    pub fn ring_seq(&self) -> u64 {
        self.ring_seq
    }

    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The ring this node was last operational in.
    pub fn ring_id(&self) -> RingId {
        self.regular.ring_id
    }

    /// The members of that ring, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.regular.members
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Messages held for retransmission on the current ring (bounded by the window).
    pub fn stored_messages(&self) -> usize {
        self.current_ring().stored_len()
    }

    /// Application messages waiting to be sent.
    pub fn send_queue_len(&self) -> usize {
        self.send_queue.len()
    }

    /// Bytes of application messages waiting in the send queue.
    pub fn send_queue_bytes(&self) -> usize {
        self.send_queue.bytes()
    }

    /// Synchronisation messages waiting to be sent (see [`Node::submit_sync`]).
    pub fn sync_queue_len(&self) -> usize {
        self.sync_queue.len()
    }

    /// Whether application messages wait for [`Node::sync_done`].
    pub fn waiting_for_sync(&self) -> bool {
        self.waiting_for_sync
    }

    /// One datagram arrived from node `source` (as the network says: the sealed
    /// datagram's authenticated sender, or the address it came from). Bad or foreign
    /// packets are counted and dropped, and so is a token, join, commit token or
    /// announcement naming another sender than `source`: a node holding the key must
    /// not speak for another member (docs/wire-format.md "Sealing"). A multicast is
    /// retransmitted as stored, its header naming the node that first sent it, so for
    /// it `source` must be a member of its ring instead (`on_mcast`).
    pub fn handle_packet(&mut self, now: Instant, source: NodeId, datagram: &Bytes) {
        if self.left {
            return;
        }
        self.stats.packets_received += 1;
        let packet = match Packet::decode(datagram, self.config.cluster_id) {
            Ok(packet) if acceptable(&packet, source) => packet,
            _ => {
                self.stats.packets_dropped += 1;
                return;
            }
        };
        match packet {
            Packet::Token(token) => self.on_token(now, token),
            Packet::Mcast(mcast) => self.on_mcast(now, source, mcast, datagram),
            Packet::Join(join) => self.on_join(now, join),
            Packet::Commit(commit) => self.on_commit_token(now, commit),
            Packet::MergeDetect { sender, ring_id } => self.on_merge_detect(now, sender, ring_id),
            Packet::HoldCancel { ring_id, .. } => self.on_hold_cancel(now, ring_id),
        }
    }

    /// Fires every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left {
            return;
        }
        // Each handler may change state and clear other timers, so re-check each time.
        if self.timers.join.is_some_and(|t| t <= now) {
            self.timers.join = None;
            if self.state == NodeState::Gather {
                self.send_join();
                self.timers.join = Some(now + self.config.join);
            }
        }
        if self.timers.consensus.is_some_and(|t| t <= now) {
            self.timers.consensus = None;
            if self.state == NodeState::Gather {
                self.on_consensus_timeout(now);
            }
        }
        if self.timers.token_loss.is_some_and(|t| t <= now) {
            self.timers.token_loss = None;
            self.on_token_loss(now);
        }
        if self.timers.token_retransmit.is_some_and(|t| t <= now) {
            self.timers.token_retransmit = None;
            if let Some(transmit) = self.last_sent.clone() {
                self.transmits.push_back(transmit);
                self.timers.token_retransmit = Some(now + self.config.token_retransmit);
            }
        }
        if self.timers.hold.is_some_and(|t| t <= now) {
            self.timers.hold = None;
            self.release_held_token(now);
        }
        if self.timers.merge.is_some_and(|t| t <= now) {
            self.timers.merge = None;
            if self.state == NodeState::Operational && self.is_rep() {
                // Totem §4.4: an idle representative looks for other rings.
                let packet = Packet::MergeDetect {
                    sender: self.me,
                    ring_id: self.regular.ring_id,
                };
                self.send(Destination::All, &packet);
            }
        }
    }

    /// Queues an application message for agreed (or safe) delivery to the ring.
    pub fn submit(
        &mut self,
        now: Instant,
        payload: Bytes,
        guarantee: Guarantee,
    ) -> Result<(), SubmitError> {
        self.send_queue
            .push(payload, guarantee == Guarantee::Safe)?;
        if !self.waiting_for_sync {
            self.wake(now);
        }
        Ok(())
    }

    /// Queues a message of the synchronisation that follows a configuration change
    /// (with `Config::sync_barrier`, the only messages sent until [`Node::sync_done`]).
    /// Agreed delivery; bounded by `max_message_bytes` of waiting messages.
    pub fn submit_sync(&mut self, now: Instant, payload: Bytes) -> Result<(), SubmitError> {
        self.sync_queue.push(payload, false)?;
        self.wake(now);
        Ok(())
    }

    /// The user has finished synchronising on `ring_id`: application messages may go.
    /// Ignored unless `ring_id` is the ring installed last, so that a sync finished
    /// late (after the next ring was installed) cannot open that next ring early.
    pub fn sync_done(&mut self, now: Instant, ring_id: RingId) {
        if !self.waiting_for_sync || ring_id != self.regular.ring_id {
            return;
        }
        self.waiting_for_sync = false;
        if !self.send_queue.is_empty() {
            self.wake(now);
        }
    }

    /// Something was queued: an idle ring must pass the token again.
    fn wake(&mut self, now: Instant) {
        if self.state == NodeState::Operational {
            if self.tok.holding.is_some() {
                self.tok.seq_unchanged = 0;
                self.release_held_token(now);
            } else if self.tok.idle {
                // docs/cpg.md §9.3 "Ending a hold": wake a holding representative.
                self.tok.idle = false;
                let packet = Packet::HoldCancel {
                    sender: self.me,
                    ring_id: self.regular.ring_id,
                };
                self.send(Destination::All, &packet);
            }
        }
    }

    /// Announces a clean departure (docs/cpg.md §9.2 "Leave message"): the others fail
    /// this node at once instead of waiting for the token to be lost. The node does
    /// nothing after this; the caller drains its transmits and drops it.
    pub fn leave(&mut self, _now: Instant) {
        if self.left {
            return;
        }
        let mut proc_list = self.proc_list.clone();
        proc_list.extend(self.regular.members.iter().copied());
        proc_list.remove(&self.me);
        let mut failed_list = self.failed_list.clone();
        failed_list.insert(self.me);
        let join = Join {
            sender: self.me,
            ring_seq: self.ring_seq,
            proc_list: proc_list.into_iter().collect(),
            failed_list: failed_list.into_iter().collect(),
            leaving: true,
        };
        self.send(Destination::All, &Packet::Join(join));
        self.left = true;
        self.timers = Timers::default();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The earliest deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        self.timers.earliest()
    }

    // ---------------------------------------------------------------- helpers

    fn is_rep(&self) -> bool {
        self.current_ring().members.first() == Some(&self.me)
    }

    /// The ring tokens and messages belong to in the current state.
    fn current_ring(&self) -> &RingState {
        match (&self.state, &self.next) {
            (NodeState::Commit | NodeState::Recovery, Some(next)) => &next.ring,
            _ => &self.regular,
        }
    }

    fn successor(members: &[NodeId], me: NodeId) -> NodeId {
        match members.binary_search(&me) {
            Ok(index) => members[(index + 1) % members.len()],
            Err(_) => me,
        }
    }

    fn send(&mut self, destination: Destination, packet: &Packet) -> Transmit {
        let transmit = Transmit {
            destination,
            payload: Gather::from(packet.encode(self.config.cluster_id)),
        };
        self.transmits.push_back(transmit.clone());
        transmit
    }

    fn next_random(&mut self) -> u64 {
        crate::splitmix::splitmix64(&mut self.rng)
    }

    /// Datagrams the send queue still needs (its share in the token's backlog).
    fn backlog_packets(&self) -> u32 {
        let queued = match (&self.state, &self.next) {
            (NodeState::Recovery, Some(next)) => next.recovery_queue.len(),
            _ => {
                let packets = |q: &SendQueue| {
                    if q.is_empty() {
                        0
                    } else {
                        q.bytes().div_ceil(self.max_payload).max(1)
                    }
                };
                let sendable = if self.waiting_for_sync {
                    0
                } else {
                    packets(&self.send_queue)
                };
                packets(&self.sync_queue) + sendable
            }
        };
        u32::try_from(queued).unwrap_or(u32::MAX)
    }

    fn emit_configuration(
        &mut self,
        kind: ConfigurationKind,
        ring_id: RingId,
        members: Vec<NodeId>,
        left: Vec<NodeId>,
        joined: Vec<NodeId>,
    ) {
        self.events.push(Event::Configuration(ConfigurationChange {
            kind,
            ring_id,
            members,
            left,
            joined,
        }));
    }

    /// Delivers one ordered message: unpacks its application messages, completing
    /// fragmented ones. Carriers of recovered messages deliver nothing themselves.
    fn deliver_stored(
        events: &mut EventQueue,
        reassembler: &mut Reassembler,
        stats: &mut Stats,
        ring_id: RingId,
        message: &Stored,
    ) {
        if message.recovered.is_some() {
            return;
        }
        let guarantee = if message.safe {
            Guarantee::Safe
        } else {
            Guarantee::Agreed
        };
        let sender = message.origin;
        let mut delivered = 0;
        let malformed = if message.payload.is_contiguous() && message.fragment_of.is_none() {
            let payload = message.payload.head();
            let mut batch = events.batch(payload, sender, ring_id, guarantee);
            reassembler.push_parts(sender, payload, |part| {
                delivered += 1;
                match part {
                    Part::Whole(range) => batch.push_range(range),
                    Part::Joined(payload) => batch.push_event(Event::Deliver(Delivery {
                        sender,
                        ring_id,
                        guarantee,
                        payload,
                    })),
                }
            })
        } else {
            // Our own payload with messages packed by reference: they are delivered as
            // the `Bytes` we were given (no reassembly copy for our own fragments).
            reassembler.push_gather(
                sender,
                &message.payload,
                message.fragment_of.as_ref(),
                |payload| {
                    delivered += 1;
                    events.push(Event::Deliver(Delivery {
                        sender,
                        ring_id,
                        guarantee,
                        payload,
                    }));
                },
            )
        };
        stats.messages_delivered += delivered;
        stats.bytes_reassembled = reassembler.copied_bytes();
        stats.chunks_malformed += malformed as u64;
    }

    /// Delivers a message of the old ring while installing the new one (the old ring is
    /// no longer `self.regular`, so this may borrow the rest of `self`).
    fn deliver_old(&mut self, ring_id: RingId, message: &Stored) {
        Self::deliver_stored(
            &mut self.events,
            &mut self.reassembler,
            &mut self.stats,
            ring_id,
            message,
        );
    }

    /// Agreed delivery (Totem §3.3): every message whose predecessors are all delivered,
    /// except that a SAFE message also waits until every member holds it.
    fn deliver_ready(&mut self) {
        let ring = &mut self.regular;
        while let Some(message) = ring.get(ring.delivered + 1) {
            if message.safe && ring.delivered + 1 > ring.safe_upto {
                break;
            }
            Self::deliver_stored(
                &mut self.events,
                &mut self.reassembler,
                &mut self.stats,
                ring.ring_id,
                message,
            );
            ring.delivered += 1;
        }
    }

    // ---------------------------------------------------------------- operational

    /// Token receipt (Totem §3.1–3.3; docs/cpg.md §9.3) in the operational and recovery
    /// states.
    fn on_token(&mut self, now: Instant, mut token: Token) {
        // Only a member passes the token: a token of this ring from any other node (one
        // holding the key: docs/wire-format.md "Sealing") would hand out sequence numbers
        // twice.
        let in_ring = match self.state {
            NodeState::Operational => {
                token.ring_id == self.regular.ring_id && self.regular.is_member(token.sender)
            }
            NodeState::Recovery => self.next.as_ref().is_some_and(|next| {
                token.ring_id == next.ring.ring_id && next.ring.is_member(token.sender)
            }),
            // docs/cpg.md §9.3: tokens are discarded while gathering.
            NodeState::Gather | NodeState::Commit => false,
        };
        if !in_ring || token.token_seq <= self.tok.last_token_seq {
            self.stats.tokens_dropped += 1;
            return;
        }
        self.tok.last_token_seq = token.token_seq;
        self.stats.tokens_received += 1;
        self.timers.token_retransmit = None;
        self.timers.token_loss = Some(now + self.config.token);

        // Idle detection (docs/cpg.md §9.3).
        if token.seq == self.tok.last_seq {
            self.tok.seq_unchanged = self.tok.seq_unchanged.saturating_add(1);
            if self.timers.merge.is_none() && self.state == NodeState::Operational && self.is_rep()
            {
                self.timers.merge = Some(now + self.config.merge);
            }
        } else {
            self.tok.seq_unchanged = 0;
            self.tok.idle = false;
            self.timers.merge = None;
        }
        self.tok.last_seq = token.seq;
        if self.tok.seq_unchanged >= self.config.seqno_unchanged_const {
            self.tok.idle = true;
        }

        // Stability (Totem §3.3, safe delivery): what the token's aru showed on two
        // consecutive visits is held by every member.
        let stable = self.tok.prev_aru.min(token.aru);
        self.tok.prev_aru = token.aru;

        if self.state == NodeState::Recovery {
            {
                let next = self.next.as_mut().expect("recovery has a next ring");
                next.ring.safe_upto = next.ring.safe_upto.max(stable.min(next.ring.my_aru));
            }
            if token.install_seq != 0 && stable.saturating_add(1) >= token.install_seq {
                self.install(now);
            }
        }
        let ring_is_regular = self.state == NodeState::Operational;
        if ring_is_regular {
            let ring = &mut self.regular;
            ring.safe_upto = ring.safe_upto.max(stable.min(ring.my_aru));
        }

        // Sending allowance (docs/cpg.md §9.3).
        let backlog_now = self.backlog_packets();
        let mut allowed = self
            .config
            .max_messages
            .min(self.config.window_size.saturating_sub(token.fcc));
        let backlog_sum =
            i64::from(token.backlog) + i64::from(backlog_now) - i64::from(self.tok.prev_backlog);
        if backlog_sum > 0 {
            let share =
                i64::from(self.config.window_size) * i64::from(self.tok.prev_backlog) / backlog_sum;
            if share > 0 && share < i64::from(allowed) {
                allowed = share as u32;
            }
        }
        let room = token
            .aru
            .saturating_add(self.window)
            .saturating_sub(token.seq);
        allowed = allowed.min(u32::try_from(room).unwrap_or(u32::MAX));

        // Retransmissions: any holder serves a request (step 9).
        let mut unserved = Vec::with_capacity(token.rtr.len());
        for seq in std::mem::take(&mut token.rtr) {
            let ring = self.current_ring();
            let held = ring.get(seq).map(|m| m.datagram.clone());
            match held {
                Some(datagram) if allowed > 0 && !datagram.is_empty() => {
                    allowed -= 1;
                    self.stats.messages_retransmitted += 1;
                    self.transmits.push_back(Transmit {
                        destination: Destination::All,
                        payload: datagram,
                    });
                }
                _ => unserved.push(seq),
            }
        }

        // New messages (step 10): application messages, or old-ring ones in recovery.
        let mut sent_now = 0u32;
        while allowed > 0 {
            let Some(stored) = self.next_message(token.seq + 1) else {
                break;
            };
            token.seq += 1;
            allowed -= 1;
            sent_now += 1;
            self.transmits.push_back(Transmit {
                destination: Destination::All,
                payload: stored.datagram.clone(),
            });
            self.stats.messages_originated += 1;
            self.store_on_current_ring(token.seq, stored);
        }

        // Our own gaps, once seen missing on miss_count_const visits (step 9).
        let (my_aru, missing) = {
            let ring = self.current_ring();
            (ring.my_aru, ring.missing(token.seq, 4 * self.max_rtr))
        };
        self.tok.miss_counts = std::mem::take(&mut self.tok.miss_counts).split_off(&(my_aru + 1));
        for seq in missing {
            let count = self.tok.miss_counts.entry(seq).or_insert(0);
            *count += 1;
            if *count >= self.config.miss_count_const
                && unserved.len() < self.max_rtr
                && !unserved.contains(&seq)
            {
                unserved.push(seq);
            }
        }
        unserved.sort_unstable();
        unserved.truncate(self.max_rtr);
        token.rtr = unserved;

        // Flow-control bookkeeping (step 11).
        token.fcc = (token.fcc.saturating_add(sent_now)).saturating_sub(self.tok.sent_last_visit);
        self.tok.sent_last_visit = sent_now;
        let backlog_after = self.backlog_packets();
        token.backlog =
            (token.backlog.saturating_add(backlog_after)).saturating_sub(self.tok.prev_backlog);
        self.tok.prev_backlog = backlog_after;

        // aru (step 12).
        let my_aru = self.current_ring().my_aru;
        if my_aru < token.aru || token.aru_addr == self.me || token.aru_addr == 0 {
            token.aru = my_aru;
            token.aru_addr = if token.aru == token.seq { 0 } else { self.me };
        }
        if token.aru == self.tok.last_aru && token.aru_addr != 0 {
            self.tok.aru_count += 1;
        } else {
            self.tok.aru_count = 0;
        }
        self.tok.last_aru = token.aru;
        if self.tok.aru_count > self.config.fail_recv_const && token.aru_addr == self.me {
            // docs/cpg.md §9.3: this node cannot get what it misses; it leaves
            // the ring for a singleton one and merges back later.
            self.stats.failed_to_receive += 1;
            self.failed_to_receive = true;
            self.gather_enter(now);
            return;
        }

        // Recovery progress: the representative learns when every member has sent all
        // of its old-ring messages, and marks the sequence that then must be held by
        // all before the ring is installed.
        if self.state == NodeState::Recovery {
            let queue_empty = self
                .next
                .as_ref()
                .is_none_or(|next| next.recovery_queue.is_empty());
            if self.is_rep() {
                let all_sent = !token.retrans_flg;
                token.retrans_flg = !queue_empty;
                if all_sent && token.install_seq == 0 {
                    token.install_seq = token.seq + 1;
                }
            } else if !queue_empty {
                token.retrans_flg = true;
            }
        }
        if self.is_rep() {
            self.stats.token_rotations += 1;
        }

        // Forward, or hold an idle token (steps 14 and 16).
        token.sender = self.me;
        token.token_seq += 1;
        self.tok.forwarded_seq = token.seq;
        let hold = self.state == NodeState::Operational
            && self.is_rep()
            && self.tok.seq_unchanged > self.config.seqno_unchanged_const
            && self.sync_queue.is_empty()
            && (self.waiting_for_sync || self.send_queue.is_empty());
        if hold {
            self.tok.holding = Some(token);
            self.timers.hold = Some(now + self.config.hold);
        } else {
            self.forward_token(now, &token);
        }

        // Free what every member holds (step 5) and deliver (step 15).
        if self.state == NodeState::Operational {
            self.regular.free_upto(stable);
            self.deliver_ready();
        }
    }

    fn forward_token(&mut self, now: Instant, token: &Token) {
        let successor = Self::successor(&self.current_ring().members, self.me);
        let transmit = self.send(Destination::Node(successor), &Packet::Token(token.clone()));
        self.last_sent = Some(transmit);
        self.timers.token_retransmit = Some(now + self.config.token_retransmit);
        self.timers.token_loss = Some(now + self.config.token);
    }

    /// Passes on a held token. The ring stays idle (and the token is held again on the
    /// next visit) unless a new message ended the hold: the caller resets that.
    fn release_held_token(&mut self, now: Instant) {
        self.timers.hold = None;
        if let Some(token) = self.tok.holding.take() {
            self.forward_token(now, &token);
        }
    }

    /// The next message to originate with sequence `seq`, if any, with its datagram.
    fn next_message(&mut self, seq: u64) -> Option<Stored> {
        match self.state {
            NodeState::Operational => {
                // A message cut into fragments finishes before another one starts
                // (receivers reassemble per origin); the sync queue goes first.
                let normal_first = self.send_queue.is_partial() && !self.waiting_for_sync;
                let from_sync = !normal_first && !self.sync_queue.is_empty();
                let queue = if from_sync {
                    &mut self.sync_queue
                } else if self.waiting_for_sync || self.send_queue.is_empty() {
                    return None;
                } else {
                    &mut self.send_queue
                };
                // The payload is packed straight into the datagram, large messages by
                // reference.
                let mut builder =
                    McastBuilder::new(self.max_payload, self.config.pack_by_reference_min);
                let safe = queue.append_payload(&mut builder, self.max_payload)?;
                let fields = McastFields {
                    sender: self.me,
                    ring_id: self.regular.ring_id,
                    seq,
                    origin: self.me,
                    safe,
                };
                let built = builder.finish(self.config.cluster_id, fields);
                self.stats.bytes_packed_by_copy += built.copied as u64;
                self.stats.bytes_packed_by_reference += built.referenced as u64;
                Some(Stored {
                    origin: self.me,
                    safe,
                    recovered: None,
                    payload: built.payload,
                    datagram: built.datagram,
                    fragment_of: built.fragment_of,
                })
            }
            NodeState::Recovery => {
                let old_ring = self.regular.ring_id;
                let next = self.next.as_mut()?;
                let (old_seq, old) = next.recovery_queue.pop_front()?;
                let recovered = Some(Recovered {
                    ring_id: old_ring,
                    seq: old_seq,
                    origin: old.origin,
                    safe: old.safe,
                });
                // A carrier is one contiguous datagram: an old message of ours packed
                // by reference is copied here (recovery only).
                let payload = old.payload.to_bytes();
                let mcast = Mcast {
                    sender: self.me,
                    ring_id: next.ring.ring_id,
                    seq,
                    origin: self.me,
                    safe: false,
                    recovered,
                    payload: payload.clone(),
                };
                Some(Stored {
                    origin: self.me,
                    safe: false,
                    recovered,
                    payload: Gather::from(payload),
                    datagram: Gather::from(Packet::Mcast(mcast).encode(self.config.cluster_id)),
                    fragment_of: None,
                })
            }
            NodeState::Gather | NodeState::Commit => None,
        }
    }

    fn store_on_current_ring(&mut self, seq: u64, stored: Stored) {
        match (&self.state, self.next.as_mut()) {
            (NodeState::Recovery, Some(next)) => {
                next.ring.insert_unbounded(seq, stored);
            }
            _ => {
                self.regular.insert_unbounded(seq, stored);
            }
        }
    }

    /// A multicast (Totem §3.2; docs/cpg.md §9.3 "Multicasts").
    fn on_mcast(&mut self, now: Instant, source: NodeId, mcast: Mcast, datagram: &Bytes) {
        let stored = Stored {
            origin: mcast.origin,
            safe: mcast.safe,
            recovered: mcast.recovered,
            payload: Gather::from(mcast.payload.clone()),
            datagram: Gather::from(datagram.clone()),
            fragment_of: None,
        };
        match self.state {
            NodeState::Operational | NodeState::Gather if mcast.ring_id == self.regular.ring_id => {
                // Originated and put on the wire (first or retransmitted) by members only.
                if !self.regular.is_member(mcast.origin)
                    || !self.regular.is_member(mcast.sender)
                    || !self.regular.is_member(source)
                {
                    return;
                }
                if self.regular.insert(mcast.seq, stored) {
                    if self.state == NodeState::Operational && mcast.seq > self.tok.forwarded_seq {
                        // Someone after us sent: our token went on.
                        self.timers.token_retransmit = None;
                    }
                    self.deliver_ready();
                }
            }
            NodeState::Recovery
                if self
                    .next
                    .as_ref()
                    .is_some_and(|next| next.ring.ring_id == mcast.ring_id) =>
            {
                let old_ring = self.regular.ring_id;
                let next = self.next.as_mut().expect("checked above");
                if !next.ring.is_member(mcast.origin)
                    || !next.ring.is_member(mcast.sender)
                    || !next.ring.is_member(source)
                    || !next.ring.insert(mcast.seq, stored)
                {
                    return;
                }
                if mcast.seq > self.tok.forwarded_seq {
                    self.timers.token_retransmit = None;
                }
                if let Some(old) = mcast.recovered
                    && old.ring_id == old_ring
                    && self.regular.is_member(old.origin)
                {
                    self.regular.insert_unbounded(
                        old.seq,
                        Stored {
                            origin: old.origin,
                            safe: old.safe,
                            recovered: None,
                            payload: Gather::from(mcast.payload),
                            datagram: Gather::default(),
                            fragment_of: None,
                        },
                    );
                }
            }
            _ => self.on_foreign_ring(now, mcast.sender, mcast.ring_id),
        }
    }

    fn on_merge_detect(&mut self, now: Instant, sender: NodeId, ring_id: RingId) {
        if ring_id != self.regular.ring_id {
            self.on_foreign_ring(now, sender, ring_id);
        }
    }

    /// A packet from another ring (docs/cpg.md §9.6 "Merge detection"): a node we do
    /// not have, or a member that moved on without us, makes us gather to merge.
    fn on_foreign_ring(&mut self, now: Instant, sender: NodeId, ring_id: RingId) {
        if sender == self.me {
            return;
        }
        match self.state {
            NodeState::Operational => {
                if self.regular.is_member(sender) && ring_id.seq <= self.regular.ring_id.seq {
                    return; // late packet of an older ring
                }
                if self.proc_list.len() >= self.config.max_nodes
                    && !self.proc_list.contains(&sender)
                {
                    return;
                }
                self.proc_list.insert(sender);
                self.gather_enter(now);
            }
            NodeState::Gather => {
                if !self.proc_list.contains(&sender)
                    && !self.failed_list.contains(&sender)
                    && self.proc_list.len() < self.config.max_nodes
                {
                    self.proc_list.insert(sender);
                    self.gather_enter(now);
                }
            }
            NodeState::Commit | NodeState::Recovery => {}
        }
    }

    fn on_hold_cancel(&mut self, now: Instant, ring_id: RingId) {
        if self.state != NodeState::Operational || ring_id != self.regular.ring_id {
            return;
        }
        self.tok.seq_unchanged = 0;
        self.tok.idle = false;
        self.release_held_token(now);
    }

    fn on_token_loss(&mut self, now: Instant) {
        match self.state {
            NodeState::Operational | NodeState::Commit | NodeState::Recovery => {
                // "A processor failed, forming new configuration" (docs/cpg.md §9.5).
                self.stats.token_losses += 1;
                self.gather_enter(now);
            }
            NodeState::Gather => {}
        }
    }

    // ---------------------------------------------------------------- membership

    /// Enter (or restart) the gather state (Totem §4.1; docs/cpg.md §9.6 "GATHER").
    fn gather_enter(&mut self, now: Instant) {
        self.state = NodeState::Gather;
        self.next = None;
        self.tok.holding = None;
        self.last_sent = None;
        self.timers.clear_ring_timers();
        if self.failed_to_receive {
            // Leave for a singleton ring: everyone else counts as failed for now.
            self.failed_list = self
                .proc_list
                .iter()
                .copied()
                .filter(|&n| n != self.me)
                .collect();
            self.failed_to_receive = false;
        }
        self.proc_list.insert(self.me);
        self.failed_list.remove(&self.me);
        self.consensus.clear();
        self.consensus.insert(self.me);
        if self.config.send_join.is_zero() {
            self.send_join();
            self.timers.join = Some(now + self.config.join);
        } else {
            let max = self.config.send_join.as_nanos() as u64;
            let delay = self.next_random() % (max + 1);
            self.timers.join = Some(now + Duration::from_nanos(delay));
        }
        self.timers.consensus = Some(now + self.config.consensus);
        self.check_consensus(now);
    }

    fn send_join(&mut self) {
        let join = Join {
            sender: self.me,
            ring_seq: self.ring_seq,
            proc_list: self.proc_list.iter().copied().collect(),
            failed_list: self.failed_list.iter().copied().collect(),
            leaving: false,
        };
        self.send(Destination::All, &Packet::Join(join));
    }

    fn on_join(&mut self, now: Instant, join: Join) {
        if join.sender == self.me {
            return; // our own, looped back: we agree with ourselves already
        }
        match self.state {
            NodeState::Operational => {
                let member = self.regular.is_member(join.sender);
                if join.leaving {
                    if member {
                        self.failed_list.insert(join.sender);
                        self.gather_enter(now);
                    }
                    return;
                }
                // docs/cpg.md §9.6: ignore joins that list us as failed, and stale
                // joins of our own members from before this ring.
                if join.failed_list.contains(&self.me)
                    || (member && join.ring_seq < self.regular.ring_id.seq)
                {
                    return;
                }
                self.gather_enter(now);
                self.join_process(now, join);
            }
            NodeState::Gather => self.join_process(now, join),
            NodeState::Commit | NodeState::Recovery => {
                // Only a new-ring member that gave up on this ring aborts it.
                let next = self
                    .next
                    .as_ref()
                    .expect("commit and recovery have a next ring");
                if next.ring.is_member(join.sender)
                    && (join.leaving || join.ring_seq >= next.ring.ring_id.seq)
                {
                    self.gather_enter(now);
                    self.join_process(now, join);
                }
            }
        }
    }

    /// Processing a join while gathering (Totem §4.1; docs/cpg.md §9.6).
    fn join_process(&mut self, now: Instant, join: Join) {
        self.max_ring_seq_seen = self.max_ring_seq_seen.max(join.ring_seq);
        if join.leaving {
            if self.proc_list.contains(&join.sender) && !self.failed_list.contains(&join.sender) {
                self.failed_list.insert(join.sender);
                self.gather_enter(now);
            }
            return;
        }
        let same_proc = join.proc_list.iter().eq(self.proc_list.iter());
        let same_failed = join.failed_list.iter().eq(self.failed_list.iter());
        if same_proc && same_failed {
            self.consensus.insert(join.sender);
            self.check_consensus(now);
            return;
        }
        let subset = join.proc_list.iter().all(|n| self.proc_list.contains(n))
            && join
                .failed_list
                .iter()
                .all(|n| self.failed_list.contains(n));
        if subset || self.failed_list.contains(&join.sender) {
            return;
        }
        let mut merged = self.proc_list.clone();
        merged.extend(join.proc_list.iter().copied().filter(|&n| n != 0));
        merged.insert(join.sender);
        if merged.len() > self.config.max_nodes {
            return;
        }
        let mut failed = self.failed_list.clone();
        if join.failed_list.contains(&self.me) {
            // It believes we failed: we cannot be in one ring with it now.
            failed.insert(join.sender);
        } else if self.regular.is_member(join.sender) {
            // A member of our ring knows of failures we have not seen yet.
            failed.extend(
                join.failed_list
                    .iter()
                    .copied()
                    .filter(|&n| n != self.me && n != 0),
            );
        }
        // Regather only on news: re-announcing unchanged lists to nodes that disagree
        // with them would make every node answer every other one, forever.
        if merged == self.proc_list && failed == self.failed_list {
            return;
        }
        self.proc_list = merged;
        self.failed_list = failed;
        self.gather_enter(now);
    }

    /// Nodes that have not agreed in time are failed (docs/cpg.md §9.6 "Consensus
    /// timeout").
    fn on_consensus_timeout(&mut self, now: Instant) {
        let candidates: Vec<NodeId> = self
            .proc_list
            .difference(&self.failed_list)
            .copied()
            .collect();
        if candidates.iter().all(|n| self.consensus.contains(n)) {
            // We agreed but the commit token never came: start over.
            self.consensus.clear();
            self.consensus.insert(self.me);
            self.send_join();
            self.timers.consensus = Some(now + self.config.consensus);
        } else {
            for node in candidates {
                if !self.consensus.contains(&node) {
                    self.failed_list.insert(node);
                }
            }
            self.gather_enter(now);
        }
    }

    /// When every candidate agrees, the lowest creates the commit token (Totem §4.2).
    fn check_consensus(&mut self, now: Instant) {
        if self.state != NodeState::Gather {
            return;
        }
        let candidates: Vec<NodeId> = self
            .proc_list
            .difference(&self.failed_list)
            .copied()
            .collect();
        if candidates.first() != Some(&self.me)
            || !candidates.iter().all(|n| self.consensus.contains(n))
        {
            return;
        }
        let seq = self.ring_seq.max(self.max_ring_seq_seen) + 4;
        let ring_id = RingId { rep: self.me, seq };
        let entries = candidates
            .iter()
            .map(|&node| CommitEntry {
                node,
                ..CommitEntry::default()
            })
            .collect();
        let commit = CommitToken {
            sender: self.me,
            ring_id,
            token_seq: 0,
            memb_index: 0,
            entries,
        };
        self.commit_enter(now, commit);
    }

    /// Fill our entry in the commit token and pass it on (docs/cpg.md §9.6 "COMMIT").
    fn commit_enter(&mut self, now: Instant, mut commit: CommitToken) {
        let index = commit.memb_index as usize;
        commit.entries[index] = CommitEntry {
            node: self.me,
            old_ring_id: self.regular.ring_id,
            old_aru: self.regular.my_aru,
            old_high_seq: self.regular.high_seq,
            high_delivered: self.regular.delivered,
            safe_upto: self.regular.safe_upto,
            filled: true,
        };
        commit.memb_index += 1;
        // The failed list has done its job: the ring is proc − failed. Should this ring
        // not be installed, the next gather starts without it, so that a stale verdict
        // (often the other side of a healed partition) is not handed on to the next
        // round, where the other side would fail us back for it and so on, forever.
        self.failed_list.clear();
        self.ring_seq = self.ring_seq.max(commit.ring_id.seq);
        self.store.store(self.ring_seq);
        let members: Vec<NodeId> = commit.entries.iter().map(|e| e.node).collect();
        self.state = NodeState::Commit;
        self.next = Some(NextRing {
            ring: RingState::new(commit.ring_id, members, self.window),
            entries: Vec::new(),
            transitional: Vec::new(),
            recovery_queue: VecDeque::new(),
            old_safe_upto: 0,
            last_commit_token_seq: commit.token_seq,
            orf_sent: false,
        });
        self.timers.join = None;
        self.timers.consensus = None;
        self.timers.clear_ring_timers();
        self.timers.token_loss = Some(now + self.config.token);
        self.forward_commit_token(now, commit);
    }

    fn forward_commit_token(&mut self, now: Instant, mut commit: CommitToken) {
        commit.sender = self.me;
        commit.token_seq += 1;
        let successor = Self::successor(&self.current_ring().members, self.me);
        let transmit = self.send(Destination::Node(successor), &Packet::Commit(commit));
        self.last_sent = Some(transmit);
        self.timers.token_retransmit = Some(now + self.config.token_retransmit);
    }

    fn on_commit_token(&mut self, now: Instant, commit: CommitToken) {
        let n = commit.entries.len();
        let index = commit.memb_index as usize;
        if n == 0 || n > self.config.max_nodes || index > n {
            return;
        }
        let nodes_sorted = commit.entries.windows(2).all(|w| w[0].node < w[1].node);
        if !nodes_sorted {
            return;
        }
        match self.state {
            NodeState::Gather => {
                // First rotation: accept a token for exactly the ring we agreed on.
                let candidates = self.proc_list.difference(&self.failed_list);
                let matches = commit
                    .entries
                    .iter()
                    .map(|e| e.node)
                    .eq(candidates.copied());
                if matches
                    && commit.ring_id.seq > self.ring_seq
                    && commit.ring_id.rep == commit.entries[0].node
                    && index < n
                    && commit.entries[index].node == self.me
                    && commit.entries[..index].iter().all(|e| e.filled)
                {
                    self.commit_enter(now, commit);
                }
            }
            NodeState::Commit | NodeState::Recovery => {
                let Some(next) = self.next.as_ref() else {
                    return;
                };
                if commit.ring_id != next.ring.ring_id
                    || commit.token_seq <= next.last_commit_token_seq
                    || index != n
                    || !commit.entries.iter().all(|e| e.filled)
                {
                    return;
                }
                if let Some(next) = self.next.as_mut() {
                    next.last_commit_token_seq = commit.token_seq;
                }
                if self.state == NodeState::Commit {
                    // Second rotation: everyone's entry is in.
                    self.recovery_enter(now, commit.entries.clone());
                    self.forward_commit_token(now, commit);
                } else if self.is_rep() && !self.next.as_ref().is_some_and(|n| n.orf_sent) {
                    // The second rotation is complete: start the ring (Totem §4.3).
                    let next = self.next.as_mut().expect("checked above");
                    next.orf_sent = true;
                    let token = Token {
                        sender: self.me,
                        ring_id: commit.ring_id,
                        token_seq: 1,
                        retrans_flg: true,
                        ..Token::default()
                    };
                    self.on_token(now, token);
                }
            }
            NodeState::Operational => {}
        }
    }

    /// Enter recovery (Totem §4.3; docs/cpg.md §9.6 "RECOVERY"): work out which
    /// old-ring messages the members that come from our old ring may lack, and queue
    /// the ones we hold for retransmission on the new ring.
    fn recovery_enter(&mut self, now: Instant, entries: Vec<CommitEntry>) {
        let old_ring = self.regular.ring_id;
        let mut from_old: Vec<&CommitEntry> = entries
            .iter()
            .filter(|e| e.old_ring_id == old_ring)
            .collect();
        from_old.sort_by_key(|e| e.node);
        let transitional: Vec<NodeId> = from_old.iter().map(|e| e.node).collect();
        let low_aru = from_old.iter().map(|e| e.old_aru).min().unwrap_or(0);
        let high = from_old.iter().map(|e| e.old_high_seq).max().unwrap_or(0);
        let old_safe_upto = from_old.iter().map(|e| e.safe_upto).max().unwrap_or(0);
        // A message at or below some member's aru is sent by the lowest such member
        // only; above every aru, whoever has it sends it.
        let responsible = |seq: u64| {
            from_old
                .iter()
                .find(|e| e.old_aru >= seq)
                .is_none_or(|e| e.node == self.me)
        };
        let recovery_queue: VecDeque<(u64, Stored)> = self
            .regular
            .above(low_aru)
            .take_while(|(seq, _)| *seq <= high)
            .filter(|(seq, message)| message.recovered.is_none() && responsible(*seq))
            .map(|(seq, message)| (seq, message.clone()))
            .collect();
        let next = self.next.as_mut().expect("recovery follows commit");
        next.entries = entries;
        next.transitional = transitional;
        next.recovery_queue = recovery_queue;
        next.old_safe_upto = old_safe_upto;
        self.state = NodeState::Recovery;
        self.tok = TokenMemory::default();
        self.timers.token_loss = Some(now + self.config.token);
    }

    /// Install the new ring (Totem §4.3 and §5, extended virtual synchrony;
    /// docs/cpg.md §9.6 "Entering OPERATIONAL"): finish the old ring's messages around
    /// the transitional configuration, then deliver the regular one.
    fn install(&mut self, _now: Instant) {
        let next = self.next.take().expect("install follows recovery");
        let new_ring_id = next.ring.ring_id;
        let new_members = next.ring.members.clone();
        let old = std::mem::replace(&mut self.regular, next.ring);
        let transitional = next.transitional;

        // 1. In the old configuration: every message up to the first gap, but a SAFE
        //    one only if some member knew it was held by all.
        let mut seq = old.delivered + 1;
        while let Some(message) = old.get(seq) {
            if message.safe && seq > next.old_safe_upto.max(old.safe_upto) {
                break;
            }
            self.deliver_old(old.ring_id, message);
            seq += 1;
        }

        // 2. The transitional configuration: who moves on with us.
        let left: Vec<NodeId> = old
            .members
            .iter()
            .copied()
            .filter(|n| transitional.binary_search(n).is_err())
            .collect();
        self.emit_configuration(
            ConfigurationKind::Transitional,
            new_ring_id,
            transitional.clone(),
            left,
            Vec::new(),
        );

        // 3. The rest of the old ring, which every transitional member now holds:
        //    past a gap, only messages of transitional members (they cannot depend on
        //    what was lost).
        let mut expected = seq;
        let mut gap = false;
        for (s, message) in old.above(seq - 1) {
            if s != expected {
                gap = true;
            }
            expected = s + 1;
            if !gap || transitional.binary_search(&message.origin).is_ok() {
                self.deliver_old(old.ring_id, message);
            }
        }

        // 4. A message cut by the change is dropped everywhere and sent again whole.
        self.reassembler.reset();
        self.send_queue.restart_partial();
        self.sync_queue.restart_partial();
        // docs/cpg.md §9.6 "Entering OPERATIONAL" step 4: application messages wait
        // until the user has synchronised on the new ring.
        self.waiting_for_sync = self.config.sync_barrier;

        // 5. The regular configuration.
        let joined: Vec<NodeId> = new_members
            .iter()
            .copied()
            .filter(|n| transitional.binary_search(n).is_err())
            .collect();
        self.emit_configuration(
            ConfigurationKind::Regular,
            new_ring_id,
            new_members.clone(),
            Vec::new(),
            joined,
        );

        self.state = NodeState::Operational;
        self.proc_list = new_members.into_iter().collect();
        self.failed_list.clear();
        self.consensus.clear();
        self.failed_to_receive = false;
        self.stats.rings_installed += 1;
        // Carriers of recovered messages are ordered like the rest; skip over them.
        self.deliver_ready();
    }
}

/// Sequence numbers only grow by small steps from 0, so none legitimately comes near
/// the top of `u64` (2^62 at a billion per second lasts 146 years). A packet carrying
/// one that does is forged or corrupt; refusing it keeps every `+ 1` below from
/// overflowing.
pub const MAX_SEQ: u64 = 1 << 62;

/// Whether every sequence number in `packet` is at most [`MAX_SEQ`]; Totem drops (and
/// counts) packets that fail this.
pub fn sequences_in_range(packet: &Packet) -> bool {
    let ok = |seq: u64| seq <= MAX_SEQ;
    match packet {
        Packet::Token(t) => {
            ok(t.ring_id.seq)
                && ok(t.token_seq)
                && ok(t.seq)
                && ok(t.aru)
                && ok(t.install_seq)
                && t.rtr.iter().all(|&s| ok(s))
        }
        Packet::Mcast(m) => {
            ok(m.ring_id.seq)
                && ok(m.seq)
                && m.recovered.is_none_or(|r| ok(r.ring_id.seq) && ok(r.seq))
        }
        Packet::Join(j) => ok(j.ring_seq),
        Packet::Commit(c) => {
            ok(c.ring_id.seq)
                && ok(c.token_seq)
                && c.entries.iter().all(|e| {
                    ok(e.old_ring_id.seq)
                        && ok(e.old_aru)
                        && ok(e.old_high_seq)
                        && ok(e.high_delivered)
                        && ok(e.safe_upto)
                })
        }
        Packet::MergeDetect { ring_id, .. } | Packet::HoldCancel { ring_id, .. } => ok(ring_id.seq),
    }
}

#[cfg(test)]
mod tests;
