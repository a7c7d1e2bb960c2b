//! Sending: the host's transmits in its order, sealed, one `sendmsg` per destination
//! from send slots whose memory the kernel reads until the completion; runs of
//! datagrams to all as one segmented send (`UDP_SEGMENT`); zero-copy sends.

use super::*;

/// Memory the kernel reads while a `sendmsg` is in flight.
pub(super) struct SendSlot {
    msghdr: libc::msghdr,
    /// One entry per piece of every payload; not pushed to while the send is in flight.
    iov: Vec<libc::iovec>,
    addr: RawAddr,
    /// One datagram, or a run of them sent as one (`control` then says their size).
    payloads: Vec<Gather>,
    control: GsoControl,
}

impl SendSlot {
    /// Points the slot's `msghdr` at `addr` and `payloads` (kept here): one datagram,
    /// or a run of them that the kernel cuts into datagrams of the first one's size
    /// (`UDP_SEGMENT`, udp(7)). Returns the bytes of the send.
    fn load(&mut self, addr: RawAddr, payloads: &[Gather]) -> usize {
        self.payloads.clear();
        self.payloads.extend_from_slice(payloads);
        self.addr = addr;
        // A datagram in pieces goes out in one vectored send: the messages packed by
        // reference are read by the kernel where they are.
        self.iov.clear();
        self.iov.extend(
            self.payloads
                .iter()
                .flat_map(Gather::pieces)
                .map(|piece| libc::iovec {
                    iov_base: piece.as_ptr() as *mut libc::c_void,
                    iov_len: piece.len(),
                }),
        );
        self.msghdr = zeroed_msghdr();
        self.msghdr.msg_name = self.addr.as_ptr() as *mut libc::c_void;
        self.msghdr.msg_namelen = self.addr.socklen();
        self.msghdr.msg_iov = self.iov.as_mut_ptr();
        self.msghdr.msg_iovlen = self.iov.len();
        if self.payloads.len() > 1 {
            // At most 65,507 bytes in the run: the segment size fits a u16.
            let segment = self.payloads[0].len() as u16;
            self.control = GsoControl::new(segment);
            self.msghdr.msg_control = self.control.as_ptr() as *mut libc::c_void;
            self.msghdr.msg_controllen = self.control.bytes();
        }
        self.payloads.iter().map(Gather::len).sum()
    }
}

/// Datagrams of one segmented send at most (the kernel's `UDP_MAX_SEGMENTS`).
pub(super) const GSO_MAX_SEGMENTS: usize = 64;

/// Bytes of one segmented send at most: what one UDP datagram over IPv4 can carry.
pub(super) const GSO_MAX_BYTES: usize = 65_507;

/// A run of datagrams to every destination, sent as one segmented send each: all of
/// `segment` bytes but the last, which may be shorter and then ends the run.
#[derive(Default)]
pub(super) struct SendRun {
    payloads: Vec<Gather>,
    segment: usize,
    bytes: usize,
    closed: bool,
}

impl SendRun {
    /// Whether `len` more bytes may join the run.
    fn admits(&self, len: usize) -> bool {
        !self.closed
            && len <= self.segment
            && len > 0
            && self.payloads.len() < GSO_MAX_SEGMENTS
            && self.bytes + len <= GSO_MAX_BYTES
    }

    fn push(&mut self, payload: Gather) {
        if self.payloads.is_empty() {
            self.segment = payload.len();
        }
        self.closed = payload.len() < self.segment;
        self.bytes += payload.len();
        self.payloads.push(payload);
    }
}

pub(super) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct of pointers and integers: all-zero (null
    // pointers, zero lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Asks a zero-copy send to say in its notification whether it copied after all
/// (`IORING_SEND_ZC_REPORT_USAGE`, Linux 6.2), which it then reports with
/// `IORING_NOTIF_USAGE_ZC_COPIED`.
pub(super) const ZC_REPORT_USAGE: u16 = 1 << 3;

pub(super) const ZC_REPORT_COPIED: u32 = 1 << 31;

/// Most packets to ourselves waiting for the next iteration (Totem sends itself a
/// token or two per rotation; past this they go through the kernel like any other).
pub(super) const TO_SELF_MAX: usize = 64;

/// Whether every route to the destinations of `Destination::All` carries a whole
/// datagram of `datagram_bytes` in one IP packet: the kernel refuses a segmented send
/// whose segments it would have to fragment (udp(7), `UDP_SEGMENT`), and a datagram
/// that is fragmented costs two packets anyway. Offload (either way) is only on where
/// this holds: a fragmented datagram is neither sent segmented nor coalesced on receipt
/// (nodes share datagram_bytes).
pub(super) fn segmenting_fits(config: &DaemonConfig) -> bool {
    let peers: Vec<std::net::SocketAddr> = match config.multicast_group {
        Some(group) => vec![group],
        None => config
            .nodes
            .iter()
            .filter(|(id, _)| *id != config.node_id)
            .map(|(_, addr)| *addr)
            .collect(),
    };
    let datagram = config.settings.datagram_bytes;
    for peer in peers {
        match route_mtu(config.own_addr.ip(), peer) {
            Ok(mtu) if datagram + header_bytes(&peer) <= mtu => {}
            Ok(mtu) => {
                tracing::warn!(
                    %peer,
                    mtu,
                    datagram_bytes = datagram,
                    "datagrams are fragmented on the route to this node (datagram_bytes + \
                     IP/UDP headers > MTU): UDP_SEGMENT off; see docs/performance.md"
                );
                return false;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "route MTU unknown: UDP_SEGMENT off");
                return false;
            }
        }
    }
    true
}

pub(super) fn send_slots(config: &DaemonConfig) -> Box<[SendSlot]> {
    (0..SEND_SLOTS)
        .map(|_| SendSlot {
            msghdr: zeroed_msghdr(),
            iov: Vec::with_capacity(4),
            addr: RawAddr::new(config.own_addr),
            payloads: Vec::new(),
            control: GsoControl::default(),
        })
        .collect()
}

/// Where `Destination::All` goes, and `Destination::Node` by id (sorted).
pub(super) fn destinations(config: &DaemonConfig) -> (Vec<RawAddr>, Vec<(NodeId, RawAddr)>) {
    let all = match config.multicast_group {
        Some(group) => vec![RawAddr::new(group)],
        // Not to ourselves: Totem keeps its own broadcasts when it sends them and
        // ignores them coming back, so the copy would cost two syscalls and two
        // kernel copies for nothing (the simulator checks Totem without it too:
        // `ringcast-sim --no-loopback`).
        None => config
            .nodes
            .iter()
            .filter(|(id, _)| *id != config.node_id)
            .map(|(_, a)| RawAddr::new(*a))
            .collect(),
    };
    let by_id = config
        .nodes
        .iter()
        .map(|(id, a)| (*id, RawAddr::new(*a)))
        .collect();
    (all, by_id)
}

impl Engine {
    /// A send from slot `index` completed, or its zero-copy notification arrived.
    pub(super) fn on_send(&mut self, index: usize, result: i32, flags: u32) {
        if cqueue::notif(flags) {
            // A zero-copy send's notification: the kernel is done with the payload; its
            // result says whether it had to copy after all.
            if result as u32 & ZC_REPORT_COPIED != 0 {
                self.stats.add(Counter::SendsZerocopyCopied, 1);
            }
            self.release_slot(index);
            return;
        }
        let segmented = self.slots[index].payloads.len() > 1;
        if !cqueue::more(flags) {
            // Done (a plain send, or a zero-copy one that took no reference).
            self.release_slot(index);
        }
        if result < 0 && segmented {
            self.stop_segmenting(result);
        }
        if result < 0 {
            self.stats.add(Counter::SendErrors, 1);
            if self.send_errors_logged < 10 {
                self.send_errors_logged += 1;
                tracing::warn!(
                    to = ?self.slots[index].addr,
                    error = %std::io::Error::from_raw_os_error(-result),
                    "send failed"
                );
            }
        }
    }

    /// A segmented send failed with `result`: the route or device cannot segment after
    /// all (udp(7): EIO without checksum offload, EINVAL past the MTU). Totem
    /// retransmits what was lost; later runs go out one datagram per send.
    pub(super) fn stop_segmenting(&mut self, result: i32) {
        if self.gso {
            self.gso = false;
            tracing::warn!(
                error = %std::io::Error::from_raw_os_error(-result),
                "segmented send refused: UDP_SEGMENT off"
            );
        }
    }

    /// Hands Totem's datagrams to the kernel, in Totem's order: a run of datagrams to
    /// all goes out as one segmented send per destination when `gso` is on.
    pub(super) fn drain_transmits(&mut self) -> usize {
        let mut n = 0;
        let mut run = SendRun::default();
        loop {
            let Some(transmit) = self
                .pending
                .pop_front()
                .or_else(|| self.host.poll_transmit())
            else {
                break;
            };
            if transmit.destination == Destination::Node(self.config.node_id)
                && self.to_self.len() < TO_SELF_MAX
            {
                self.stats.add(Counter::PacketsToSelf, 1);
                // Tokens and joins: one piece, so no copy.
                self.to_self.push_back(transmit.payload.into_bytes());
                n += 1;
                continue;
            }
            let Some((first, count)) = self.route(transmit.destination) else {
                self.stats.add(Counter::DropUnknownDestination, 1);
                continue;
            };
            let to_all = transmit.destination == Destination::All;
            let joins_run =
                to_all && self.gso && run.admits(transmit.payload.len() + self.seal_overhead());
            if !joins_run {
                // Datagrams go out in Totem's order: the run before this one.
                self.send_run(&mut run);
                if self.free_slots.len() < count || !self.reserve_sq(count) {
                    self.pending.push_front(transmit);
                    break;
                }
            }
            let payload = self.sealed(transmit.payload);
            n += 1;
            if to_all && self.gso {
                run.push(payload);
            } else {
                self.send_each(transmit.destination, first, count, &payload);
            }
        }
        self.send_run(&mut run);
        n
    }

    /// Where a datagram to `destination` goes: the first of its addresses (in
    /// `all_dests`, or `node_dests`) and how many; `None` for a node not configured.
    pub(super) fn route(&self, destination: Destination) -> Option<(usize, usize)> {
        match destination {
            Destination::All => Some((0, self.all_dests.len())),
            Destination::Node(id) => self
                .node_dests
                .binary_search_by_key(&id, |(node, _)| *node)
                .ok()
                .map(|index| (index, 1)),
        }
    }

    /// One send of `payload` per address of its route (slots reserved by the caller).
    pub(super) fn send_each(
        &mut self,
        destination: Destination,
        first: usize,
        count: usize,
        payload: &Gather,
    ) {
        if destination != Destination::All {
            // Only tokens and commit tokens go to one other node.
            self.token_pushed = true;
        }
        for i in 0..count {
            let addr = match destination {
                Destination::All => self.all_dests[i],
                Destination::Node(_) => self.node_dests[first].1,
            };
            self.push_send(addr, std::slice::from_ref(payload));
        }
        self.stats.add(Counter::PacketsOut, count as u64);
        self.stats
            .add(Counter::BytesOut, (count * payload.len()) as u64);
    }

    /// Bytes the sealer adds to a datagram.
    pub(super) fn seal_overhead(&self) -> usize {
        if self.sealer.is_some() {
            crate::wire::seal::OVERHEAD
        } else {
            0
        }
    }

    pub(super) fn sealed(&mut self, payload: Gather) -> Gather {
        match &mut self.sealer {
            Some(sealer) => Gather::from(Bytes::from(
                sealer.seal_pieces(payload.len(), payload.pieces().map(|p| &p[..])),
            )),
            None => payload,
        }
    }

    /// Sends `run` (its slots were reserved when it started) to every destination and
    /// empties it.
    pub(super) fn send_run(&mut self, run: &mut SendRun) {
        if run.payloads.is_empty() {
            return;
        }
        let count = self.all_dests.len();
        for i in 0..count {
            self.push_send(self.all_dests[i], &run.payloads);
        }
        let segments = run.payloads.len() as u64;
        self.stats.add(Counter::PacketsOut, count as u64 * segments);
        self.stats
            .add(Counter::BytesOut, (count * run.bytes) as u64);
        if segments > 1 {
            self.stats.add(Counter::SendsSegmented, count as u64);
            self.stats
                .add(Counter::SegmentsSent, count as u64 * segments);
        }
        *run = SendRun::default();
    }

    pub(super) fn release_slot(&mut self, index: usize) {
        self.slots[index].payloads.clear();
        self.free_slots.push(index);
        self.sends_in_flight -= 1;
    }

    /// One send of `payloads` to `addr`: one datagram, or a run of them that the kernel
    /// cuts into datagrams of the first one's size (`UDP_SEGMENT`, udp(7)).
    pub(super) fn push_send(&mut self, addr: RawAddr, payloads: &[Gather]) {
        let index = self.free_slots.pop().expect("slots checked by the caller");
        let slot = &mut self.slots[index];
        let bytes = slot.load(addr, payloads);
        let fd = Fd(self.sockets.unicast.as_raw_fd());
        let zerocopy = self.zerocopy_min != 0 && bytes >= self.zerocopy_min;
        let entry = if zerocopy {
            self.stats.add(Counter::SendsZerocopy, 1);
            // The slot (and the payload) stays until the notification, not the result.
            opcode::SendMsgZc::new(fd, &slot.msghdr)
                .ioprio(ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::SendMsg::new(fd, &slot.msghdr).build()
        }
        .user_data(user_data(KIND_SEND, index));
        // The slot lives in a never-reallocated boxed slice (its address is stable), holds
        // the payloads (whose pieces the iovecs point into), the address, the control
        // message and the iovec array the msghdr points to (not touched again until this
        // send completes), and stays off the free list until this send completes.
        self.push(&entry);
        self.sends_in_flight += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(len: usize) -> Gather {
        Gather::from(Bytes::from(vec![0u8; len]))
    }

    /// A run takes datagrams of its first one's size, ends with a shorter one, and
    /// stays within the kernel's limits on a segmented send.
    #[test]
    fn send_runs_follow_the_kernel_rules() {
        let mut run = SendRun::default();
        assert!(!run.admits(1000), "a run starts outside admits");
        run.push(gather(1000));
        assert!(run.admits(1000) && run.admits(10));
        assert!(!run.admits(1001), "longer than the segment");
        assert!(!run.admits(0));
        run.push(gather(500));
        assert!(!run.admits(500), "a shorter datagram ends the run");

        let mut run = SendRun::default();
        run.push(gather(1472));
        while run.admits(1472) {
            run.push(gather(1472));
        }
        assert_eq!(run.payloads.len(), GSO_MAX_BYTES / 1472);
        assert!(run.bytes <= GSO_MAX_BYTES);

        let mut run = SendRun::default();
        run.push(gather(600));
        while run.admits(600) {
            run.push(gather(600));
        }
        assert_eq!(run.payloads.len(), GSO_MAX_SEGMENTS);
    }
}
