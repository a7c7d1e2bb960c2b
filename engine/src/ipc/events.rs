//! Event rings: the host's client events into each session's ring (deliveries by
//! descriptor into the delivery pool where they belong there), the rest in the
//! session's backlog, reported to the host (flow control); trusted senders' buffers
//! handed back; the sessions the host cut off closed.

use super::*;
use crate::cpg::ClientEvent;

impl Ipc {
    /// Frees a closed client's slab when no message in it is held any more.
    pub(super) fn free_idle_slab(&mut self, conn: ConnId) {
        let idle = self
            .slabs
            .get(&conn)
            .is_some_and(|s| s.closed && s.outstanding == 0);
        if let (true, Some(pool)) = (idle, &self.placement) {
            if let Some(slab) = self.slabs.remove(&conn) {
                pool.pool().free_raw(slab.offset, slab.len);
            }
        }
    }

    /// Trusted senders' messages that nothing holds any more: each goes back to its
    /// client (a `SENT_RELEASED` event), or counts toward freeing a departed client's
    /// slab.
    pub(super) fn hand_back_released(&mut self, host: &mut Host, now: Instant) {
        let Some(pool) = &self.placement else {
            return;
        };
        let released = pool.pool().take_released();
        for (owner, offset) in released {
            let conn = owner as ConnId;
            if let Some(slab) = self.slabs.get_mut(&conn) {
                slab.outstanding = slab.outstanding.saturating_sub(1);
            }
            match self.slot_of.get(&conn).copied() {
                Some(slot) => {
                    self.dirty.insert(slot);
                    let pushed = self
                        .ready_mut(slot)
                        .map(|ready| ready.push_event(Outgoing::Released(offset)));
                    if let Some(Err(e)) = pushed {
                        self.fault(slot, e, host, now);
                    }
                }
                None => self.free_idle_slab(conn),
            }
        }
    }

    /// Lets the host retry what CPG owes Totem, moves the host's client events into the
    /// sessions' rings and publishes them. Returns the number of events moved; faulted
    /// sessions are closed (see [`Ipc::take_closed`]).
    pub fn flush_events(&mut self, host: &mut Host, now: Instant) -> usize {
        host.poll(now);
        self.hand_back_released(host, now);
        let mut n = 0;
        let mut confchgs = session::ConfchgCache::default();
        // Backlogs first (older events), of the sessions that have one: they are dirty.
        let mut visiting = std::mem::take(&mut self.visiting);
        visiting.clear();
        visiting.extend_from_slice(self.dirty.slots());
        for &slot in &visiting {
            let Some(ready) = self.ready_mut(slot) else {
                continue;
            };
            match ready.drain_backlog() {
                Ok(moved) => n += moved,
                Err(e) => self.fault(slot, e, host, now),
            }
        }
        while let Some((conn, event)) = host.poll_event() {
            n += 1;
            self.stats.events_to_clients += 1;
            let Some(&slot) = self.slot_of.get(&conn) else {
                continue;
            };
            self.dirty.insert(slot);
            let Some(ready) = self
                .slots
                .get_mut(slot)
                .and_then(|s| s.as_mut())
                .and_then(|s| s.ready.as_mut())
            else {
                continue;
            };
            let outgoing = match event {
                ClientEvent::Deliver { .. } => place(event, self.placement.as_mut(), ready),
                event => confchgs.outgoing(event),
            };
            if let Err(e) = ready.push_event(outgoing) {
                self.fault(slot, e, host, now);
            }
        }
        if let Some(pool) = &mut self.placement {
            pool.end_batch();
        }
        n += self.flush_gs_events(host, now);
        self.publish_dirty(&mut visiting, host, now);
        self.visiting = visiting;
        self.close_cut_off(host, now);
        n
    }

    /// Publishes what every dirty session was given and reports its backlog to the
    /// host. Every session with something to publish or a backlog is dirty, so every
    /// backlog that changed is reported; one with a backlog stays dirty.
    pub(super) fn publish_dirty(
        &mut self,
        visiting: &mut Vec<usize>,
        host: &mut Host,
        now: Instant,
    ) {
        let held = host.senders_held();
        let mut copied = 0;
        self.dirty.take_into(visiting);
        for &slot in visiting.iter() {
            let Some(session) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
                continue;
            };
            let conn = session.conn;
            let Some(ready) = session.ready.as_mut() else {
                continue;
            };
            ready.publish();
            copied += std::mem::take(&mut ready.copied_bytes);
            host.handle_backlog(now, conn, ready.backlog());
            if ready.backlog_len() > 0 {
                self.dirty.insert(slot);
            }
        }
        self.stats.payload_bytes_copied += copied;
        if held != host.senders_held() {
            tracing::debug!(
                held = !held,
                lagging = host.clients_lagging(),
                "local senders held back by a slow receiver"
            );
        }
    }

    /// Closes the sessions the host cut off (it already disconnected them).
    pub(super) fn close_cut_off(&mut self, host: &mut Host, now: Instant) {
        while let Some((conn, why)) = host.poll_cut_off() {
            let Some(&slot) = self.slot_of.get(&conn) else {
                continue;
            };
            tracing::warn!(conn, error = %why, "closing the session");
            self.stats.sessions_faulted += 1;
            self.close(slot, host, now, "client too slow");
        }
    }

    pub(super) fn fault(
        &mut self,
        slot: usize,
        fault: SessionFault,
        host: &mut Host,
        now: Instant,
    ) {
        tracing::warn!(slot, error = %fault, "closing the session");
        self.stats.sessions_faulted += 1;
        self.close(slot, host, now, "fault");
    }
}

/// A delivery for one session: by descriptor into the delivery pool when it belongs
/// there (large, or already in the pool: received or sent there) and the session may
/// hold one more buffer; else inline, copied into its event ring.
fn place(event: ClientEvent, pool: Option<&mut DeliveryPlacement>, ready: &mut Ready) -> Outgoing {
    let ClientEvent::Deliver {
        group,
        sender,
        guarantee,
        payload,
    } = event
    else {
        return Outgoing::Event(event);
    };
    let inline = |payload| {
        Outgoing::Event(ClientEvent::Deliver {
            group,
            sender,
            guarantee,
            payload,
        })
    };
    let Some(pool) = pool.filter(|p| p.wants(payload.len()) || p.pool().contains(&payload)) else {
        return inline(payload);
    };
    match pool.place(&payload, ready.held_bytes) {
        // One delivery per payload per session: a second would be a bug upstream, so it
        // goes inline rather than confuse the accounting.
        Some(offset) if !ready.held.contains_key(&offset) => {
            ready.held.insert(offset, payload.len() as u64);
            ready.held_bytes += payload.len();
            Outgoing::Ref {
                sender,
                guarantee,
                offset,
                len: payload.len() as u64,
            }
        }
        placed => {
            if let Some(offset) = placed {
                pool.release(offset);
            }
            inline(payload)
        }
    }
}
