//! Group Services in the host (docs/group-services.md §6.1): the GS service runs beside
//! CPG on the same Totem node, takes the deliveries whose first byte is its service id
//! (2), sees every configuration change after CPG, and shares Totem's sync barrier with
//! it: after a regular configuration, application messages wait until **both** services
//! completed their sync of that ring (CPG's JOINLISTs, GS's table transfer, §6.6).
//!
//! GS clients are named by the driver ([`gs::ClientId`]); their requests are the
//! `gs_*` methods below, their events come from [`Host::poll_gs_event`] and the
//! deactivate scripts to run outside the engine thread from [`Host::poll_gs_script`].

use crate::cpg::{GroupName, Submit};
use crate::gs::{
    self, ClientId, GroupAttributes, GroupView, GsError, GsEvent, Proposal, ScriptRun,
};
use crate::totem::{Event, Guarantee, Instant, Node, RingId, SubmitError};

use super::Host;

/// A service that takes part in the sync barrier.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Party {
    Cpg,
    Gs,
}

/// The ring each service last completed its sync on. Totem's barrier opens for a ring
/// once both did.
#[derive(Debug, Default)]
pub(super) struct SyncBarrier {
    cpg: Option<RingId>,
    gs: Option<RingId>,
}

/// What a service submits through: Totem, with `sync_done` held until the other
/// service is done with the same ring.
pub(super) struct BarrierSubmit<'a> {
    pub(super) node: &'a mut Node,
    pub(super) now: Instant,
    pub(super) barrier: &'a mut SyncBarrier,
    pub(super) party: Party,
}

impl Submit for BarrierSubmit<'_> {
    fn submit(&mut self, payload: bytes::Bytes, guarantee: Guarantee) -> Result<(), SubmitError> {
        self.node.submit(self.now, payload, guarantee)
    }

    fn submit_sync(&mut self, payload: bytes::Bytes) -> Result<(), SubmitError> {
        self.node.submit_sync(self.now, payload)
    }

    fn sync_done(&mut self, ring_id: RingId) {
        match self.party {
            Party::Cpg => self.barrier.cpg = Some(ring_id),
            Party::Gs => self.barrier.gs = Some(ring_id),
        }
        if self.barrier.cpg == Some(ring_id) && self.barrier.gs == Some(ring_id) {
            self.node.sync_done(self.now, ring_id);
        }
    }
}

/// Borrows Totem and the barrier for one party (fields, so that the service beside
/// them can be borrowed at the same time).
pub(super) fn submit<'a>(
    node: &'a mut Node,
    barrier: &'a mut SyncBarrier,
    now: Instant,
    party: Party,
) -> BarrierSubmit<'a> {
    BarrierSubmit {
        node,
        now,
        barrier,
        party,
    }
}

impl Host {
    /// A Totem event for GS: one of its deliveries, or a configuration change.
    pub(super) fn gs_handle_totem_event(&mut self, now: Instant, event: Event) {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.handle_totem_event(now, event, &mut totem);
    }

    /// GS's part of [`Host::poll`]: its SYNC and owed messages.
    pub(super) fn gs_poll(&mut self, now: Instant) {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.poll(&mut totem);
    }

    /// GS's part of [`Host::handle_timeout`]: phase deadlines this node enforces.
    pub(super) fn gs_handle_timeout(&mut self, now: Instant) {
        if self.gs.poll_timeout().is_some_and(|t| t <= now) {
            let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
            self.gs.handle_timeout(now, &mut totem);
        }
    }

    /// `ha_gs_init`: a GS client with an optional deactivate script.
    pub fn gs_connect(&mut self, client: ClientId, script: Option<String>) -> Result<(), GsError> {
        self.gs.connect(client, script)
    }

    /// `ha_gs_quit` or the client's connection closed: its providers fail.
    pub fn gs_disconnect(&mut self, now: Instant, client: ClientId) {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.disconnect(client, &mut totem);
    }

    pub fn gs_join(
        &mut self,
        now: Instant,
        client: ClientId,
        group: &GroupName,
        instance: u16,
        attrs: GroupAttributes,
    ) -> Result<(), GsError> {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.join(client, group, instance, attrs, &mut totem)
    }

    pub fn gs_propose(
        &mut self,
        now: Instant,
        client: ClientId,
        group: &GroupName,
        proposal: Proposal,
    ) -> Result<(), GsError> {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.propose(client, group, proposal, &mut totem)
    }

    pub fn gs_vote(
        &mut self,
        now: Instant,
        client: ClientId,
        group: &GroupName,
        (seq, phase): (u64, u32),
        vote: gs::Vote,
    ) -> Result<(), GsError> {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.vote(client, group, seq, phase, vote, &mut totem)
    }

    pub fn gs_goodbye(
        &mut self,
        now: Instant,
        client: ClientId,
        group: &GroupName,
    ) -> Result<(), GsError> {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.goodbye(client, group, &mut totem)
    }

    pub fn gs_subscribe(
        &mut self,
        client: ClientId,
        group: &GroupName,
        flags: gs::SubscribeFlags,
    ) -> Result<(), GsError> {
        self.gs.subscribe(client, group, flags)
    }

    pub fn gs_unsubscribe(&mut self, client: ClientId, group: &GroupName) -> Result<(), GsError> {
        self.gs.unsubscribe(client, group)
    }

    /// A deactivate script of [`Host::poll_gs_script`] ended (`ok`: exit 0 in time).
    pub fn gs_script_done(&mut self, now: Instant, run: &ScriptRun, ok: bool) {
        let mut totem = submit(&mut self.node, &mut self.barrier, now, Party::Gs);
        self.gs.script_done(run, ok, &mut totem);
    }

    /// The next GS event for a local client; held like [`Host::poll_event`].
    pub fn poll_gs_event(&mut self) -> Option<(ClientId, GsEvent)> {
        if self.persist_pending() {
            return None;
        }
        self.gs.poll_event()
    }

    /// The next deactivate script to run outside the engine thread; held like
    /// [`Host::poll_event`].
    pub fn poll_gs_script(&mut self) -> Option<ScriptRun> {
        if self.persist_pending() {
            return None;
        }
        self.gs.poll_script()
    }

    /// The instance number of `client`'s provider (or joiner) of `group`, if any.
    pub fn gs_local_instance(&self, client: ClientId, group: &GroupName) -> Option<u16> {
        self.gs.local_instance(client, group)
    }

    /// Every GS group as this node's replicated table holds it (`ringcast gs groups`).
    pub fn gs_groups(&self) -> Vec<GroupView> {
        self.gs.groups()
    }

    pub fn gs_stats(&self) -> &gs::Stats {
        self.gs.stats()
    }

    /// The ring of GS's last completed sync.
    pub fn gs_synced_ring(&self) -> Option<RingId> {
        self.gs.synced_ring()
    }
}
