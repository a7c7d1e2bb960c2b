//! One client connection: its control socket, its shared region and the two ring ends
//! the engine holds, and what the engine still owes it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use ringcast_shm::proto::{
    self, Confchg, DeliverHeader, DeliverRef, PART_FIRST, PART_LAST, PartHeader, TotemConfchg,
    WireAddress, event,
};
use ringcast_shm::socket::{PeerCred, SeqPacket};
use ringcast_shm::{Consumer, EventFd, Producer, PushError, Region};

use crate::cpg::{Address, ClientEvent, ConnId, GroupName, Member};
use crate::host::Backlog;
use crate::totem::Guarantee;

/// Most iterations one session may have open at once.
pub const MAX_ITERATIONS: usize = 16;

/// A message arriving in pieces on the submit ring.
#[derive(Debug)]
pub struct Assembly {
    pub guarantee: Guarantee,
    pub total_len: usize,
    pub buf: AssemblyBuf,
}

/// Where a message in pieces is assembled: behind `cpg::MCAST_HEADER_MAX` bytes of room
/// for its header.
#[derive(Debug)]
pub enum AssemblyBuf {
    Heap(BytesMut),
    Pool {
        buffer: ringcast_shm::delivery_pool::PoolBuffer,
        filled: usize,
    },
}

impl AssemblyBuf {
    /// Payload bytes so far.
    pub fn filled(&self) -> usize {
        match self {
            AssemblyBuf::Heap(buf) => buf.len().saturating_sub(crate::cpg::MCAST_HEADER_MAX),
            AssemblyBuf::Pool { filled, .. } => *filled,
        }
    }

    /// Appends a piece the caller checked fits.
    pub fn append(&mut self, piece: &[u8]) {
        match self {
            AssemblyBuf::Heap(buf) => buf.extend_from_slice(piece),
            AssemblyBuf::Pool { buffer, filled } => {
                let written = buffer.write(crate::cpg::MCAST_HEADER_MAX + *filled, piece);
                debug_assert!(written, "an assembling buffer is ours alone");
                *filled += piece.len();
            }
        }
    }
}

/// What the engine owes a client: a service event, or a delivery whose payload is in
/// the delivery pool.
#[derive(Debug)]
pub enum Outgoing {
    Event(ClientEvent),
    /// A confchg encoded once for every local member of its group ([`ConfchgCache`]).
    Confchg(bytes::Bytes),
    Ref {
        sender: Member,
        guarantee: Guarantee,
        offset: u64,
        len: u64,
    },
    /// Trusted senders: the client's in-place message at this pool offset is its again.
    Released(u64),
    /// A Group Services event, encoded (`ringcast_shm::gs_proto::encode_event`).
    Gs(GsOutgoing),
}

/// An encoded GS event and, for a provider's event, its group and instance (a
/// goodbye drops the provider's events still waiting here).
#[derive(Debug)]
pub struct GsOutgoing {
    pub bytes: bytes::Bytes,
    pub provider: Option<(GroupName, u16)>,
}

/// An event that did not fit in the event ring yet; `sent` bytes of a large delivery
/// already went out as pieces.
#[derive(Debug)]
struct Backlogged {
    event: Outgoing,
    sent: usize,
}

/// Why a session must be closed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionFault {
    /// The client's rings or records broke the protocol.
    #[error("client broke the ring protocol: {0}")]
    Protocol(&'static str),
}

#[derive(Debug)]
pub struct Ready {
    pub region: Arc<Region>,
    pub submit: Consumer,
    pub events: Producer,
    pub client_wake: EventFd,
    /// Events that did not fit in the ring, oldest first.
    backlog: VecDeque<Backlogged>,
    /// Payload bytes referenced by `backlog` (shared with Totem's buffers, so this
    /// bounds what a slow client can pin, not a copy).
    backlog_bytes: usize,
    /// Records pushed since the last publish.
    unpublished: bool,
    pub assembly: Option<Assembly>,
    /// Open iteration snapshots (`cpg_iteration_*`), at most [`MAX_ITERATIONS`].
    pub iterations: Vec<(u32, Vec<(GroupName, Member)>)>,
    pub next_iteration: u32,
    /// Delivery pool buffers this client holds (handed out, not yet released): offset
    /// and length. Released by the engine for it when the session ends.
    pub held: super::id_map::IdMap<u64>,
    pub held_bytes: usize,
    /// Trusted senders: this client's slab of the delivery pool (offset, bytes).
    pub slab: Option<(u64, usize)>,
    /// Payload bytes copied into this client's event ring (inline deliveries).
    pub copied_bytes: u64,
}

#[derive(Debug)]
pub struct Session {
    pub conn: ConnId,
    pub socket: SeqPacket,
    pub cred: PeerCred,
    /// Set once the handshake succeeded.
    pub ready: Option<Ready>,
    /// Index into the engine's session table (for io_uring user data).
    pub slot: usize,
}

impl Ready {
    pub fn new(region: Arc<Region>, client_wake: EventFd) -> Option<Ready> {
        let submit = region.submit_consumer()?;
        let events = region.event_producer()?;
        Some(Ready {
            region,
            submit,
            events,
            client_wake,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            unpublished: false,
            assembly: None,
            iterations: Vec::new(),
            next_iteration: 1,
            held: super::id_map::IdMap::default(),
            held_bytes: 0,
            slab: None,
            copied_bytes: 0,
        })
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Queues `event` for the client: straight into the ring when nothing waits before
    /// it, else behind the backlog. The backlog's size is reported to the host after
    /// every round, which cuts off a client over the limits (`ringcast_proto::host::flow`):
    /// that bounds it.
    pub fn push_event(&mut self, event: Outgoing) -> Result<(), SessionFault> {
        let mut item = Backlogged { event, sent: 0 };
        if self.backlog.is_empty() && self.try_write(&mut item)? {
            return Ok(());
        }
        self.backlog_bytes += event_bytes(&item.event);
        self.backlog.push_back(item);
        Ok(())
    }

    /// What waits outside the event ring, for the host's flow control.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            events: self.backlog.len(),
            bytes: self.backlog_bytes,
        }
    }

    /// Drops the backlogged events of this client's provider `instance` of `group`
    /// (after its goodbye: no further event of it reaches the client). One already
    /// partly in the ring stays, or the client would see half an event.
    pub fn drop_gs_provider(&mut self, group: &GroupName, instance: u16) {
        let mut freed = 0;
        self.backlog.retain(|item| {
            let doomed = item.sent == 0
                && matches!(&item.event, Outgoing::Gs(gs)
                    if gs.provider.as_ref().is_some_and(|(g, i)| g == group && *i == instance));
            if doomed {
                freed += event_bytes(&item.event);
            }
            !doomed
        });
        self.backlog_bytes -= freed;
    }

    /// Moves backlogged events into the ring while they fit. Returns how many left.
    pub fn drain_backlog(&mut self) -> Result<usize, SessionFault> {
        let mut moved = 0;
        while let Some(mut item) = self.backlog.pop_front() {
            if self.try_write(&mut item)? {
                self.backlog_bytes -= event_bytes(&item.event);
                moved += 1;
            } else {
                self.backlog.push_front(item);
                break;
            }
        }
        Ok(moved)
    }

    /// Publishes what was pushed and wakes the client if it sleeps.
    pub fn publish(&mut self) {
        if self.unpublished {
            self.unpublished = false;
            if self.events.publish() {
                let _ = self.client_wake.notify();
            }
        }
    }

    /// One small record, if it fits now.
    fn push_record(&mut self, kind: u32, payload: &[u8]) -> bool {
        let done = self.events.try_push(kind, &[payload]).is_ok();
        self.unpublished |= done;
        done
    }

    /// Writes as much of `item` as fits. True when it is entirely in the ring.
    fn try_write(&mut self, item: &mut Backlogged) -> Result<bool, SessionFault> {
        let max = self.events.max_record_len();
        if let Outgoing::Gs(gs) = &item.event {
            let bytes = gs.bytes.clone();
            let done = self.write_gs(&bytes, &mut item.sent, max);
            self.unpublished |= done;
            return Ok(done);
        }
        let event = match &item.event {
            Outgoing::Event(event) => event,
            Outgoing::Released(offset) => {
                return Ok(self.push_record(event::SENT_RELEASED, &offset.to_le_bytes()));
            }
            Outgoing::Gs(_) => unreachable!("written above"),
            Outgoing::Confchg(bytes) => {
                let done = self.push_encoded(event::CONFCHG, bytes, max)?;
                self.unpublished |= done;
                return Ok(done);
            }
            Outgoing::Ref {
                sender,
                guarantee,
                offset,
                len,
            } => {
                let record = DeliverRef {
                    header: DeliverHeader {
                        node: sender.node,
                        pid: sender.pid,
                        guarantee: wire_guarantee(*guarantee),
                    },
                    offset: *offset,
                    len: *len,
                };
                return Ok(self.push_record(event::DELIVER_REF, &record.encode()));
            }
        };
        let done = match event {
            ClientEvent::Deliver {
                sender,
                guarantee,
                payload,
                ..
            } => self.write_delivery(*sender, *guarantee, payload, &mut item.sent, max),
            ClientEvent::Confchg {
                group,
                members,
                left,
                joined,
            } => self.push_encoded(
                event::CONFCHG,
                &encode_confchg(group, members, left, joined),
                max,
            )?,
            ClientEvent::TotemConfchg { ring_id, members } => {
                let t = TotemConfchg {
                    rep: ring_id.rep,
                    seq: ring_id.seq,
                    members: members.clone(),
                };
                self.push_encoded(event::TOTEM_CONFCHG, &t.encode(), max)?
            }
        };
        if done {
            self.unpublished = true;
        }
        Ok(done)
    }

    /// A delivery, inline: one record when it fits the ring, else pieces (`sent`
    /// payload bytes already went out). True when it is entirely in the ring.
    fn write_delivery(
        &mut self,
        sender: Member,
        guarantee: Guarantee,
        payload: &[u8],
        sent: &mut usize,
        max: usize,
    ) -> bool {
        let g = wire_guarantee(guarantee);
        if DeliverHeader::BYTES + payload.len() <= max {
            let header = DeliverHeader {
                node: sender.node,
                pid: sender.pid,
                guarantee: g,
            };
            match self.events.try_push_with(
                event::DELIVER,
                DeliverHeader::BYTES + payload.len(),
                |buf| {
                    header.write(&mut buf[..DeliverHeader::BYTES]);
                    buf[DeliverHeader::BYTES..].copy_from_slice(payload);
                },
            ) {
                Ok(()) => {
                    self.copied_bytes += payload.len() as u64;
                    true
                }
                Err(PushError::Full) => false,
                Err(PushError::TooBig) => unreachable!("checked against max_record_len"),
            }
        } else {
            // Pieces: as large as the ring allows, at most half of it so that a
            // reader holding one piece never blocks the next.
            let piece_max = (max - PartHeader::BYTES).min(max / 2).max(1);
            loop {
                if *sent == payload.len() {
                    break true;
                }
                let n = piece_max.min(payload.len() - *sent);
                let mut flags = 0;
                if *sent == 0 {
                    flags |= PART_FIRST;
                }
                if *sent + n == payload.len() {
                    flags |= PART_LAST;
                }
                let header = PartHeader {
                    a: sender.node,
                    b: sender.pid,
                    flags,
                    c: g,
                    total_len: payload.len() as u64,
                };
                let piece = &payload[*sent..*sent + n];
                match self
                    .events
                    .try_push_with(event::DELIVER_PART, PartHeader::BYTES + n, |buf| {
                        header.write(&mut buf[..PartHeader::BYTES]);
                        buf[PartHeader::BYTES..].copy_from_slice(piece);
                    }) {
                    Ok(()) => {
                        *sent += n;
                        self.copied_bytes += n as u64;
                        self.unpublished = true;
                    }
                    Err(_) => break false,
                }
            }
        }
    }

    /// A GS event: one record when it fits, else pieces as large as the ring allows
    /// (at most half of it, as for deliveries). True when it is entirely in the ring.
    fn write_gs(&mut self, bytes: &[u8], sent: &mut usize, max: usize) -> bool {
        if *sent == 0 && bytes.len() <= max {
            return self.push_record(event::GS_EVENT, bytes);
        }
        let piece_max = (max - PartHeader::BYTES).min(max / 2).max(1);
        while *sent < bytes.len() {
            let n = piece_max.min(bytes.len() - *sent);
            let mut flags = 0;
            if *sent == 0 {
                flags |= PART_FIRST;
            }
            if *sent + n == bytes.len() {
                flags |= PART_LAST;
            }
            let header = PartHeader {
                a: 0,
                b: 0,
                flags,
                c: 0,
                total_len: bytes.len() as u64,
            };
            let piece = &bytes[*sent..*sent + n];
            let pushed =
                self.events
                    .try_push_with(event::GS_EVENT_PART, PartHeader::BYTES + n, |buf| {
                        header.write(&mut buf[..PartHeader::BYTES]);
                        buf[PartHeader::BYTES..].copy_from_slice(piece);
                    });
            if pushed.is_err() {
                return false;
            }
            *sent += n;
            self.unpublished = true;
        }
        true
    }

    fn push_encoded(&mut self, kind: u32, bytes: &[u8], max: usize) -> Result<bool, SessionFault> {
        // Membership lists are bounded by the service's limits; a ring too small for
        // one is a configuration error that the region spec validation rules out.
        if bytes.len() > max {
            return Err(SessionFault::Protocol("event larger than the event ring"));
        }
        Ok(self.events.try_push(kind, &[bytes]).is_ok())
    }
}

/// Bytes an event pins while backlogged (payloads are shared `Bytes`; pool buffers
/// are bounded by the pool's own per-session share).
fn event_bytes(event: &Outgoing) -> usize {
    let event = match event {
        Outgoing::Event(event) => event,
        Outgoing::Confchg(bytes) => return 64 + bytes.len(),
        Outgoing::Gs(gs) => return 64 + gs.bytes.len(),
        Outgoing::Ref { .. } | Outgoing::Released(_) => return 64,
    };
    match event {
        ClientEvent::Deliver { payload, .. } => payload.len() + 64,
        ClientEvent::Confchg {
            members,
            left,
            joined,
            ..
        } => 160 + 12 * (members.len() + left.len() + joined.len()),
        ClientEvent::TotemConfchg { members, .. } => 32 + 4 * members.len(),
    }
}

/// The `cpg_guarantee_t` a client is told (the inverse of [`super::guarantee_of`]).
pub fn wire_guarantee(g: Guarantee) -> u32 {
    match g {
        Guarantee::Agreed => proto::WireGuarantee::Agreed.to_u32(),
        Guarantee::Safe => proto::WireGuarantee::Safe.to_u32(),
    }
}

fn wire_address(a: &Address) -> WireAddress {
    WireAddress {
        node: a.member.node,
        pid: a.member.pid,
        reason: a.reason as u32,
    }
}

/// The CONFCHG record of a membership change.
fn encode_confchg(
    group: &GroupName,
    members: &[Address],
    left: &[Address],
    joined: &[Address],
) -> Vec<u8> {
    Confchg {
        group: group.as_bytes().to_vec(),
        members: members.iter().map(wire_address).collect(),
        left: left.iter().map(wire_address).collect(),
        joined: joined.iter().map(wire_address).collect(),
    }
    .encode()
}

/// The last confchg encoded. The service hands one confchg to every local member of
/// the group back to back, all with the same lists: encoding it once instead of once
/// per member turns a join into a group of N members from N encodings of N entries
/// (each with its allocations) into one, plus N copies into the rings.
#[derive(Debug, Default)]
pub struct ConfchgCache {
    last: Option<(ClientEvent, bytes::Bytes)>,
}

impl ConfchgCache {
    /// `event` as it goes to a session: a confchg as shared encoded bytes.
    pub fn outgoing(&mut self, event: ClientEvent) -> Outgoing {
        if !matches!(event, ClientEvent::Confchg { .. }) {
            return Outgoing::Event(event);
        }
        if let Some((last, bytes)) = &self.last
            && *last == event
        {
            return Outgoing::Confchg(bytes.clone());
        }
        let ClientEvent::Confchg {
            group,
            members,
            left,
            joined,
        } = &event
        else {
            unreachable!("matched above");
        };
        let bytes = bytes::Bytes::from(encode_confchg(group, members, left, joined));
        self.last = Some((event, bytes.clone()));
        Outgoing::Confchg(bytes)
    }
}
