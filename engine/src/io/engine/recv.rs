//! Receiving: the provided buffer ring (optionally backed by the delivery pool), the
//! multishot `recvmsg` completions, coalesced runs (`UDP_GRO`) split into datagrams,
//! seals opened, and each datagram handed to the host.

use super::*;

/// Datagrams at least this long stay in the delivery pool buffer they were received
/// into; shorter ones (tokens, joins, small packed messages) are cheaper to copy out.
pub(super) const KEEP_IN_POOL_MIN: usize = 4096;

/// A received buffer's datagrams: see [`Engine::locate_datagram`].
pub(super) struct Located {
    from: NodeId,
    /// The payload within the buffer: one datagram, or a run of them.
    range: std::ops::Range<usize>,
    /// The size of every datagram of a coalesced run but the last.
    segment: Option<usize>,
}

impl Located {
    /// The range of each datagram within the buffer (one, unless coalesced; an empty
    /// payload is one empty datagram, which Totem then counts as malformed).
    fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let (start, end) = (self.range.start, self.range.end);
        let step = self.segment.unwrap_or(end - start).max(1);
        let count = (end - start).div_ceil(step).max(1);
        (0..count).map(move |i| start + i * step..(start + (i + 1) * step).min(end))
    }
}

pub(super) fn open_error_counter(e: OpenError) -> Counter {
    match e {
        OpenError::Auth => Counter::DropAuth,
        OpenError::Replay => Counter::DropReplay,
        OpenError::SenderMismatch => Counter::DropSenderMismatch,
        OpenError::Truncated | OpenError::NotSealed | OpenError::TooManySenders => {
            Counter::DropNotSealed
        }
    }
}

/// The provided receive buffers an engine with `config` registers: how many, and the
/// bytes of each (a recvmsg header, the source address, room for a `UDP_GRO` control
/// message, and the longest payload: one datagram, or when `coalescing` a run up to
/// the largest UDP payload; 64-byte aligned, about 8 MiB, or 16 MiB of 256 when
/// coalescing: every datagram that is not coalesced takes a whole buffer too).
pub fn recv_buffers(config: &DaemonConfig, coalescing: bool) -> (u16, usize) {
    let s = &config.settings;
    let (largest, control, budget) = if coalescing {
        (MAX_UDP_PAYLOAD, RECV_CONTROL_BYTES, 24usize << 20)
    } else {
        (config.recv_datagram_bytes, 0, 8 << 20)
    };
    let buf_bytes = (16 + NAME_BYTES + control + largest).next_multiple_of(64);
    let entries = if s.recv_buffers != 0 {
        s.recv_buffers as u16
    } else {
        let wanted = (budget / buf_bytes).clamp(64, 4096);
        // Round down to a power of two.
        (1usize << (usize::BITS - 1 - wanted.leading_zeros())) as u16
    };
    (entries, buf_bytes)
}

/// The largest UDP payload (a coalesced receive is at most one).
pub(super) const MAX_UDP_PAYLOAD: usize = 65_535;

/// Turns `UDP_GRO` on for every socket; whether all took it (else receives carry one
/// datagram each, as without offload).
pub(super) fn enable_gro_everywhere(sockets: &Sockets) -> bool {
    [Some(&sockets.unicast), sockets.multicast.as_ref()]
        .into_iter()
        .flatten()
        .all(|socket| match enable_gro(socket) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "UDP_GRO refused: one datagram per receive");
                false
            }
        })
}

/// The provided buffers datagrams (or, `coalescing`, runs of them) are received into,
/// registered with `ring`, and how many there are.
pub(super) fn receive_buffers(
    config: &DaemonConfig,
    ring: &IoUring,
    coalescing: bool,
) -> Result<(BufRing, u16), EngineError> {
    let s = &config.settings;
    // Room for the recvmsg header, the source address and the longest datagram a
    // configured node may send (control packets of large rings included), or run.
    let (entries, buf_bytes) = recv_buffers(config, coalescing);
    let bufring = BufRing::new(entries, buf_bytes, BUF_GROUP, s.huge_pages)
        .map_err(io_error("receive buffers"))?;
    if s.huge_pages && !bufring.is_huge() {
        tracing::warn!("huge_pages: none available, receive buffers use normal pages");
    }
    bufring.register(&ring.submitter()).map_err(|e| {
        EngineError::Kernel(format!(
            "cannot register a provided buffer ring (needs Linux 5.19): {e}"
        ))
    })?;
    Ok((bufring, entries))
}

/// One receive header per socket, each with room for the source address (and with
/// `gro` for the control message giving the size of coalesced datagrams).
pub(super) fn recv_msghdrs(sockets: usize, gro: bool) -> Box<[libc::msghdr]> {
    (0..sockets)
        .map(|_| {
            let mut msghdr = zeroed_msghdr();
            msghdr.msg_namelen = NAME_BYTES as libc::socklen_t;
            msghdr.msg_controllen = if gro { RECV_CONTROL_BYTES } else { 0 };
            msghdr
        })
        .collect()
}

/// Lets Totem reassemble large messages in the delivery pool, and, for datagrams in
/// the clear and large enough to be worth it, receives datagrams straight into it;
/// returns the pool in that case.
pub(super) fn use_delivery_pool(
    config: &DaemonConfig,
    ipc: &Ipc,
    clear: bool,
    host: &mut Host,
    bufring: &mut BufRing,
) -> Option<SharedDeliveryPool> {
    let recv_pool = if clear && config.recv_datagram_bytes >= KEEP_IN_POOL_MIN {
        ipc.delivery_pool()
    } else {
        None
    };
    if let Some(pool) = ipc.delivery_pool() {
        host.node_mut().set_reassembly_buffers(
            config.settings.ipc.delivery_pool_min_bytes,
            crate::ipc::delivery_placement::reassembly_buffers(pool),
        );
    }
    if let Some(pool) = &recv_pool {
        // No receive is armed yet (the loop arms them).
        let buf_bytes = bufring.buf_bytes();
        bufring.attach_all_before_use(|| pool.alloc(buf_bytes));
    }
    recv_pool
}

impl Engine {
    /// A multishot receive on socket `index` completed: a datagram, or an error.
    pub(super) fn on_recv(
        &mut self,
        now: Instant,
        index: usize,
        result: i32,
        flags: u32,
    ) -> Result<(), EngineError> {
        if !cqueue::more(flags) {
            self.recv_armed[index] = false;
        }
        if result < 0 {
            let errno = -result;
            if errno == libc::ENOBUFS {
                self.stats.add(Counter::RecvNoBuffers, 1);
            } else if errno == libc::EINVAL && !self.recv_ok {
                return Err(EngineError::Kernel(
                    "multishot recvmsg refused (EINVAL): needs Linux 6.0".into(),
                ));
            } else {
                tracing::warn!(error = %std::io::Error::from_raw_os_error(errno), "receive failed");
            }
            return Ok(());
        }
        self.recv_ok = true;
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.on_datagram(now, index, bid, result as usize);
            self.refill(bid);
            self.bufring.recycle(bid);
        }
        Ok(())
    }

    /// Where in buffer `bid` (as the kernel filled it) the datagrams lie, the size of
    /// all but the last when the kernel coalesced a run of them (`UDP_GRO`), and which
    /// node sent them; the counter to bump when they are dropped.
    pub(super) fn locate_datagram(&self, socket: usize, buf: &[u8]) -> Result<Located, Counter> {
        let out = RecvMsgOut::parse(buf, &self.recv_msghdrs[socket])
            .map_err(|()| Counter::DropTruncated)?;
        self.stats
            .add(Counter::BytesIn, out.payload_data().len() as u64);
        if out.is_payload_truncated()
            || out.is_name_data_truncated()
            || out.is_control_data_truncated()
        {
            return Err(Counter::DropTruncated);
        }
        let start = out.payload_data().as_ptr() as usize - buf.as_ptr() as usize;
        let range = start..start + out.payload_data().len();
        let from = parse_name(out.name_data())
            .and_then(|addr| self.config.node_of(&addr))
            .ok_or(Counter::DropUnlisted)?;
        if self.drop_from.contains(&from) {
            return Err(Counter::DropRule);
        }
        let segment = if self.gro {
            gro_segment(out.control_data())
        } else {
            None
        };
        // The receive buffers hold a coalesced run; one datagram may still be no longer
        // than any node sends (what a buffer held before coalescing existed).
        if segment.unwrap_or(range.len()) > self.config.recv_datagram_bytes {
            return Err(Counter::DropTruncated);
        }
        Ok(Located {
            from,
            range,
            segment,
        })
    }

    /// Buffer `bid` holds one datagram, or a run of them (`UDP_GRO`): check the source,
    /// open each seal, hand each datagram to Totem.
    pub(super) fn on_datagram(&mut self, now: Instant, socket: usize, bid: u16, len: usize) {
        if let Some(buffer) = self.bufring.take_attached(bid) {
            self.on_datagram_in_pool(now, socket, bid, len, buffer);
            return;
        }
        let Some(buf) = self.bufring.buf(bid, len) else {
            return;
        };
        let located = match self.locate_datagram(socket, buf) {
            Ok(found) => found,
            Err(counter) => {
                // Counted in first: every datagram in packets_in lands in exactly one
                // drop counter or in packets_accepted.
                self.stats.add(Counter::PacketsIn, 1);
                self.stats.add(counter, 1);
                return;
            }
        };
        if located.segment.is_some() {
            self.stats.add(Counter::ReceivesCoalesced, 1);
        }
        let Some(buf) = self.bufring.buf_mut(bid, len) else {
            return;
        };
        for range in located.datagrams() {
            self.stats.add(Counter::PacketsIn, 1);
            let payload = &mut buf[range];
            // Out of the provided buffer, which goes straight back to the kernel.
            if looks_like_mcast(payload) {
                self.datagram_bytes_copied += payload.len() as u64;
            }
            let packet = match &mut self.opener {
                None => Bytes::copy_from_slice(payload),
                Some(opener) => match opener.open_from(payload, located.from) {
                    Ok(plain) => Bytes::copy_from_slice(plain),
                    Err(e) => {
                        self.stats.add(open_error_counter(e), 1);
                        continue;
                    }
                },
            };
            self.host.handle_datagram(now, located.from, &packet);
        }
    }

    /// Datagrams the kernel received into a delivery pool buffer: a large one, or a
    /// coalesced run, stays there (its `Bytes` hold the buffer; Totem's deliveries are
    /// slices of it and local clients get descriptors into it); a small one is copied
    /// out and the buffer goes back to the id.
    pub(super) fn on_datagram_in_pool(
        &mut self,
        now: Instant,
        socket: usize,
        bid: u16,
        len: usize,
        buffer: PoolBuffer,
    ) {
        let whole = buffer.bytes(0..len.min(buffer.len()));
        let (source, packets) = match self.locate_datagram(socket, &whole) {
            Err(counter) => {
                self.stats.add(Counter::PacketsIn, 1);
                self.stats.add(counter, 1);
                (0, Vec::new())
            }
            Ok(located) => (located.from, self.pool_packets(&whole, &located)),
        };
        drop(whole);
        if buffer.is_unique() {
            // Nothing kept it: the id receives into it again.
            self.bufring.attach(bid, buffer);
        } else {
            self.stats.add(Counter::DatagramsInPool, 1);
            drop(buffer);
        }
        for packet in packets {
            self.host.handle_datagram(now, source, &packet);
        }
    }

    /// The datagrams `located` in a pool buffer (`whole`), counted in: slices of it
    /// when large or coalesced, else copies.
    pub(super) fn pool_packets(&mut self, whole: &Bytes, located: &Located) -> Vec<Bytes> {
        let keep = located.segment.is_some() || located.range.len() >= KEEP_IN_POOL_MIN;
        if located.segment.is_some() {
            self.stats.add(Counter::ReceivesCoalesced, 1);
        }
        let mut packets = Vec::new();
        for range in located.datagrams() {
            self.stats.add(Counter::PacketsIn, 1);
            packets.push(if keep {
                whole.slice(range)
            } else {
                let payload = &whole[range];
                if looks_like_mcast(payload) {
                    self.datagram_bytes_copied += payload.len() as u64;
                }
                Bytes::copy_from_slice(payload)
            });
        }
        packets
    }

    /// Before id `bid` goes back to the kernel: unless it has a pool buffer, give it a
    /// fresh one when the pool can spare it (a quarter of the pool stays for deliveries
    /// copied in and for senders); else it receives into its own buffer.
    pub(super) fn refill(&mut self, bid: u16) {
        let Some(pool) = &self.recv_pool else {
            return;
        };
        if self.bufring.has_attached(bid) || pool.free_bytes() < pool.len() / 4 {
            return;
        }
        if let Some(buffer) = pool.alloc(self.bufring.buf_bytes()) {
            self.bufring.attach(bid, buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(start: usize, end: usize, segment: Option<usize>) -> Vec<std::ops::Range<usize>> {
        Located {
            from: 1,
            range: start..end,
            segment,
        }
        .datagrams()
        .collect()
    }

    /// A coalesced receive splits into its datagrams, the last one shorter; a segment
    /// size from the (untrusted) control message that is 0 or past the payload cannot
    /// lose or invent bytes.
    #[test]
    fn coalesced_receives_split_into_datagrams() {
        assert_eq!(ranges(40, 40 + 1000, None), vec![40..1040]);
        assert_eq!(
            ranges(40, 40 + 2 * 400 + 100, Some(400)),
            vec![40..440, 440..840, 840..940]
        );
        assert_eq!(ranges(0, 800, Some(400)), vec![0..400, 400..800]);
        assert_eq!(ranges(8, 8, None), vec![8..8], "an empty datagram is one");
        assert_eq!(ranges(8, 8, Some(400)), vec![8..8]);
        assert_eq!(
            ranges(0, 10, Some(0)),
            (0..10).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        assert_eq!(ranges(0, 10, Some(4000)), vec![0..10]);
    }
}
