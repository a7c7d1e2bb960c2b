//! Submit rings: records decoded and validated (untrusted shared memory), each
//! multicast copied once into the delivery pool (or taken in place from a trusted
//! sender's slab) and handed to the host, which may refuse it with `TRY_AGAIN`; a
//! refused record stays at the head of its ring.

use super::*;

/// What became of one submit record.
pub(super) enum Step {
    /// A message of this many bytes went to Totem, copied once.
    Taken(usize),
    /// A trusted sender's message went to Totem from where it was written.
    TakenInPlace(usize),
    Piece,
    Dropped,
    Blocked,
    Fault(&'static str),
}

/// One piece of a large message: appended to the session's assembly; the last one
/// submits the whole message.
#[allow(clippy::too_many_arguments)]
pub(super) fn part(
    assembly: &mut Option<Assembly>,
    pool: Option<&mut DeliveryPlacement>,
    host: &mut Host,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    h: PartHeader,
    piece: &[u8],
    max_message: usize,
    now: Instant,
) -> Step {
    // The buffer keeps room for the CPG header in front, so the assembled message is
    // not copied again: in the delivery pool when there is one and room in it (Totem
    // then sends it from there and local receivers read it there), else on the heap.
    const ROOM: usize = cpg::MCAST_HEADER_MAX;
    if h.flags & PART_FIRST != 0 {
        let Ok(total) = usize::try_from(h.total_len) else {
            return Step::Fault("message length");
        };
        if total > max_message {
            return Step::Fault("message larger than the maximum");
        }
        let buf = match pool {
            Some(pool) if pool.wants(total) => pool.alloc_message(ROOM + total),
            _ => None,
        };
        let buf = match buf {
            Some(buffer) => AssemblyBuf::Pool { buffer, filled: 0 },
            None => {
                let mut buf = BytesMut::with_capacity(ROOM + total);
                buf.resize(ROOM, 0);
                AssemblyBuf::Heap(buf)
            }
        };
        *assembly = Some(Assembly {
            guarantee,
            total_len: total,
            buf,
        });
    }
    let Some(a) = assembly.as_mut() else {
        return Step::Fault("message piece without a first piece");
    };
    if h.total_len != a.total_len as u64 {
        return Step::Fault("message pieces exceed the announced length");
    }
    let have = a.buf.filled();
    let last = h.flags & PART_LAST != 0;
    // The last piece stays in the ring until the message is taken: after a TryAgain it
    // is read again, and is already in the buffer.
    if !last || have < a.total_len {
        if have + piece.len() > a.total_len || (last && have + piece.len() != a.total_len) {
            return Step::Fault("message pieces do not add up to the announced length");
        }
        a.buf.append(piece);
    }
    if !last {
        return Step::Piece;
    }
    let len = a.total_len;
    let result = match &mut a.buf {
        AssemblyBuf::Pool { buffer, .. } => {
            host.mcast_framed(now, conn, a.guarantee, len, |header| {
                frame(buffer, header, len)
            })
        }
        AssemblyBuf::Heap(buf) => {
            let buf = std::mem::take(buf);
            match host.mcast_in_place(now, conn, a.guarantee, buf) {
                Ok(()) => Ok(()),
                Err((e, back)) => {
                    if let Some(back) = back {
                        a.buf = AssemblyBuf::Heap(back);
                    }
                    Err(e)
                }
            }
        }
    };
    match result {
        Ok(()) => {
            *assembly = None;
            Step::Taken(len)
        }
        Err(CpgError::TryAgain) if a.buf.filled() == a.total_len => Step::Blocked,
        Err(_) => {
            *assembly = None;
            Step::Dropped
        }
    }
}

/// Why a session is closed for a guarantee that is not a `cpg_guarantee_t`.
pub(super) const INVALID_GUARANTEE: &str = "invalid guarantee (INVALID_PARAM)";

/// The one reading of a guarantee a client sent (`cpg_guarantee_t`, validated by
/// [`WireGuarantee::from_cpg`]): UNORDERED, FIFO and AGREED are delivered in agreed
/// order, SAFE is honoured, anything else is `INVALID_PARAM` - on every path (ring
/// records, where the session is then closed, as a client library that validates
/// first never sends one).
pub fn guarantee_of(value: u32) -> Result<Guarantee, CpgError> {
    match WireGuarantee::from_cpg(value) {
        Some(WireGuarantee::Agreed) => Ok(Guarantee::Agreed),
        Some(WireGuarantee::Safe) => Ok(Guarantee::Safe),
        None => Err(CpgError::InvalidParam),
    }
}

/// A `MCAST_REF` / `MCAST_POOL_REF` record: its guarantee and reference.
pub(super) fn message_ref(payload: &[u8]) -> Result<(Guarantee, proto::MessageRef), &'static str> {
    let m = proto::MessageRef::decode(payload).map_err(|_| "malformed message reference")?;
    let g = guarantee_of(m.guarantee).map_err(|_| INVALID_GUARANTEE)?;
    Ok((g, m))
}

/// A trusted sender's message written in place in its slab of the delivery pool: not
/// copied. It becomes a live pool buffer (its release goes back to the client), the CPG
/// header is written into the room in front of it, and Totem takes it from there.
pub(super) fn in_place_message(
    pool: &DeliveryPlacement,
    slab: Option<&mut SendSlab>,
    host: &mut Host,
    now: Instant,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    m: proto::MessageRef,
) -> Step {
    let Some(slab) = slab else {
        return Step::Fault("no send slab");
    };
    let room = cpg::MCAST_HEADER_MAX;
    let Ok(len) = usize::try_from(m.len) else {
        return Step::Fault("bad in-place message length");
    };
    // A buffer the client sends again while it is still held is its bug: refused.
    let Some(mut buffer) = pool.pool().adopt(m.offset, (room + len) as u64, conn) else {
        return Step::Fault("in-place message buffer still in use");
    };
    let sent = host.mcast_framed(now, conn, guarantee, len, |header| {
        frame(&mut buffer, header, len)
    });
    match sent {
        Ok(()) => {
            slab.outstanding += 1;
            Step::TakenInPlace(len)
        }
        Err(CpgError::TryAgain) => {
            // Read again later: the buffer is the client's meanwhile, with nothing to
            // report.
            if !buffer.unadopt() {
                slab.outstanding += 1;
            }
            Step::Blocked
        }
        Err(_) => {
            // Dropped (not joined, too big): released at once, and handed back.
            slab.outstanding += 1;
            Step::Dropped
        }
    }
}

/// One whole message from a client (a ring record or a buffer of its pool), copied once:
/// into the delivery pool when it is pool-sized and there is room (Totem sends it from
/// there and local receivers read it there), else onto the heap.
pub(super) fn take_message(
    pool: Option<&mut DeliveryPlacement>,
    host: &mut Host,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    payload: &[u8],
    now: Instant,
) -> Step {
    let len = payload.len();
    let from_pool = match pool {
        Some(pool) if pool.wants(len) => pool.alloc_message(cpg::MCAST_HEADER_MAX + len),
        _ => None,
    };
    let sent = match from_pool {
        Some(mut buffer) => {
            let copied = buffer.write(cpg::MCAST_HEADER_MAX, payload);
            debug_assert!(copied, "a fresh buffer is ours alone");
            host.mcast_framed(now, conn, guarantee, len, |header| {
                frame(&mut buffer, header, len)
            })
        }
        None => host.mcast(now, conn, guarantee, &[payload]),
    };
    match sent {
        Ok(()) => Step::Taken(len),
        Err(CpgError::TryAgain) => Step::Blocked,
        // Not joined (compatible: accepted and dropped, docs/cpg.md §13 quirk 3) or too big: the
        // record is consumed either way.
        Err(_) => Step::Dropped,
    }
}

/// The header written into the room in front of a payload at `buffer[MCAST_HEADER_MAX..]`
/// and the message as one `Bytes` over the pool buffer; `None` if the buffer is still
/// held elsewhere (it is not: Totem let go of an earlier attempt).
pub(super) fn frame(buffer: &mut PoolBuffer, header: &[u8], len: usize) -> Option<bytes::Bytes> {
    let at = cpg::MCAST_HEADER_MAX - header.len();
    buffer
        .write(at, header)
        .then(|| buffer.bytes(at..cpg::MCAST_HEADER_MAX + len))
}

impl Ipc {
    /// Takes multicasts from every session's submit ring into the host, as far as it
    /// accepts them. Returns the number of records taken; sessions that broke
    /// their ring are closed (see [`Ipc::take_closed`]).
    pub fn poll_rings(&mut self, host: &mut Host, now: Instant) -> usize {
        let mut n = 0;
        let held = !host.accepts_multicasts();
        self.blocked = held;
        let slots = self.slots.len();
        let start = self.next_poll % slots.max(1);
        self.next_poll = self.next_poll.wrapping_add(1);
        for slot in (start..slots).chain(0..start) {
            let Some(ready) = self.slots[slot].as_mut().and_then(|s| s.ready.as_mut()) else {
                continue;
            };
            // While the host holds senders back, only a large message already half
            // taken may go on (at most one per session): its sender is stuck in the
            // send until the message is whole. (A sender that is itself the lagging
            // receiver stashes its events meanwhile, see the client's `stash_events`.)
            if held && ready.assembly.is_none() {
                continue;
            }
            let before = self.stats.client_messages;
            let drained = self.drain_submit_inner(slot, host, now, false);
            n += (self.stats.client_messages - before) as usize;
            if !drained {
                // The host pushed back: later sessions would be refused too.
                self.blocked = true;
                break;
            }
        }
        n
    }

    /// Drains `slot`'s submit ring; false when records remain (Totem pushed back).
    pub(super) fn drain_submit(
        &mut self,
        slot: usize,
        host: &mut Host,
        now: Instant,
        all: bool,
    ) -> bool {
        let ok = self.drain_submit_inner(slot, host, now, all);
        ok && self.slots[slot].is_some()
    }

    pub(super) fn drain_submit_inner(
        &mut self,
        slot: usize,
        host: &mut Host,
        now: Instant,
        all: bool,
    ) -> bool {
        // Per call, so one busy client cannot starve the others or the token, and so
        // that what one loop iteration takes (and will deliver to local receivers)
        // stays small next to the backlog limits.
        const BUDGET: usize = 256;
        const BUDGET_BYTES: usize = 4 << 20;
        let max_message = host.cpg_limits().max_message_bytes;
        let mut taken = 0;
        let mut taken_bytes = 0usize;
        loop {
            if !all && (taken >= BUDGET || taken_bytes >= BUDGET_BYTES) {
                return true;
            }
            let Some(session) = self.slots[slot].as_mut() else {
                return true;
            };
            let conn = session.conn;
            let Some(ready) = session.ready.as_mut() else {
                return true;
            };
            let record = match ready.submit.peek() {
                Ok(Some(r)) => r,
                Ok(None) => return true,
                Err(RingError::Corrupt(why)) => {
                    tracing::warn!(conn, why, "corrupt submit ring; closing the session");
                    self.stats.sessions_faulted += 1;
                    self.close(slot, host, now, "corrupt submit ring");
                    return true;
                }
            };
            if record.kind == proto::submit::RELEASE {
                // Never held back by Totem: releases free pool space for everyone.
                let held = (&mut ready.held, &mut ready.held_bytes);
                if release(held, record.payload, self.placement.as_mut()) {
                    ready.submit.consume();
                    continue;
                }
                let why = "release of a pool buffer it does not hold";
                tracing::warn!(conn, why, "closing the session");
                self.stats.sessions_faulted += 1;
                self.close(slot, host, now, why);
                return true;
            }
            // Nothing is copied for a multicast the host would refuse (the pieces of a
            // large message go on: they wait in the session's assembly, one at most).
            if record.kind != proto::submit::MCAST_PART && !host.accepts_multicasts() {
                self.stats.try_again += 1;
                return false;
            }
            taken_bytes += record.payload.len();
            let mut taker = Taker {
                placement: self.placement.as_mut(),
                slabs: &mut self.slabs,
                host: &mut *host,
                conn,
                now,
            };
            let outcome = match record.kind {
                proto::submit::MCAST_AGREED => taker.copied(Guarantee::Agreed, record.payload),
                proto::submit::MCAST_SAFE => taker.copied(Guarantee::Safe, record.payload),
                proto::submit::MCAST_REF => {
                    let step = taker.send_buffer(&ready.region, record.payload);
                    if matches!(step, Step::Taken(_)) {
                        self.stats.send_buffer_messages += 1;
                    }
                    step
                }
                proto::submit::MCAST_POOL_REF => taker.in_place(ready.slab, record.payload),
                proto::submit::MCAST_PART => {
                    taker.piece(&mut ready.assembly, record.payload, max_message)
                }
                _ => Step::Fault("unknown submit record"),
            };
            match outcome {
                Step::Blocked => {
                    self.stats.try_again += 1;
                    return false;
                }
                Step::Fault(why) => {
                    tracing::warn!(conn, why, "closing the session");
                    self.stats.sessions_faulted += 1;
                    self.close(slot, host, now, why);
                    return true;
                }
                taken_step => {
                    ready.submit.consume();
                    self.stats.count(taken_step);
                    taken += 1;
                }
            }
        }
    }
}

impl IpcStats {
    /// Counts a record consumed from a submit ring.
    fn count(&mut self, step: Step) {
        match step {
            Step::Taken(len) => {
                self.client_messages += 1;
                self.client_bytes += len as u64;
                self.payload_bytes_copied += len as u64;
            }
            Step::TakenInPlace(len) => {
                self.client_messages += 1;
                self.client_bytes += len as u64;
                self.send_buffer_messages += 1;
            }
            Step::Piece | Step::Dropped | Step::Blocked | Step::Fault(_) => {}
        }
    }
}

/// A `RELEASE` record: the client gives back a delivery pool buffer it held (`held`:
/// the session's held buffers and their bytes). False when it does not hold that
/// buffer (it broke the protocol).
fn release(
    (held, held_bytes): (&mut id_map::IdMap<u64>, &mut usize),
    payload: &[u8],
    placement: Option<&mut DeliveryPlacement>,
) -> bool {
    let offset = <[u8; 8]>::try_from(payload).ok().map(u64::from_le_bytes);
    let found = offset.and_then(|o| Some((o, held.remove(&o)?)));
    match (found, placement) {
        (Some((offset, len)), Some(pool)) => {
            *held_bytes -= len as usize;
            pool.release(offset);
            true
        }
        _ => false,
    }
}

/// Hands one session's multicast records to the host, each in the form that copies
/// least (see [`take_message`], [`in_place_message`], [`part`]).
struct Taker<'a> {
    placement: Option<&'a mut DeliveryPlacement>,
    slabs: &'a mut std::collections::HashMap<ConnId, SendSlab>,
    host: &'a mut Host,
    conn: ConnId,
    now: Instant,
}

impl Taker<'_> {
    /// `MCAST_AGREED` / `MCAST_SAFE`: the payload is in the record.
    fn copied(&mut self, guarantee: Guarantee, payload: &[u8]) -> Step {
        let pool = self.placement.as_deref_mut();
        take_message(pool, self.host, self.conn, guarantee, payload, self.now)
    }

    /// `MCAST_REF`: a message the client wrote into its region's buffer pool, copied
    /// out (once, as any message) before the record is consumed, which is what gives
    /// the buffer back to the client.
    fn send_buffer(&mut self, region: &Region, record: &[u8]) -> Step {
        let message = message_ref(record).and_then(|(g, m)| {
            let payload = region.pool_slice(m.offset, m.len);
            Ok((g, payload.ok_or("bad message buffer reference")?))
        });
        match message {
            Err(why) => Step::Fault(why),
            Ok((g, payload)) => self.copied(g, payload),
        }
    }

    /// `MCAST_POOL_REF`: a trusted sender's message written in place in its slab.
    fn in_place(&mut self, slab: Option<(u64, usize)>, record: &[u8]) -> Step {
        let message = message_ref(record).and_then(|(g, m)| {
            let within = |(slab, slab_len): (u64, usize)| {
                let end = m
                    .offset
                    .checked_add(cpg::MCAST_HEADER_MAX as u64)?
                    .checked_add(m.len)?;
                (m.offset >= slab && end <= slab + slab_len as u64).then_some(())
            };
            slab.and_then(within)
                .ok_or("bad in-place message reference")?;
            Ok((g, m))
        });
        match (message, self.placement.as_deref()) {
            (Ok((g, m)), Some(pool)) => {
                let slab = self.slabs.get_mut(&self.conn);
                in_place_message(pool, slab, self.host, self.now, self.conn, g, m)
            }
            (Err(why), _) => Step::Fault(why),
            (Ok(_), None) => Step::Fault("bad in-place message reference"),
        }
    }

    /// `MCAST_PART`: one piece of a large message.
    fn piece(&mut self, assembly: &mut Option<Assembly>, record: &[u8], max: usize) -> Step {
        match PartHeader::read(record) {
            Err(_) => Step::Fault("malformed message piece"),
            Ok((h, piece)) => match guarantee_of(h.a) {
                Err(_) => Step::Fault(INVALID_GUARANTEE),
                Ok(g) => {
                    let pool = self.placement.as_deref_mut();
                    part(
                        assembly, pool, self.host, self.conn, g, h, piece, max, self.now,
                    )
                }
            },
        }
    }
}
