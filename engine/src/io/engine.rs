//! The event loop: one thread drives one `Host` (Totem, CPG) over UDP and the
//! clients' shared memory through io_uring.
//!
//! Every iteration: reap completions (datagrams in → `handle_packet`, sends done,
//! signals), fire due deadlines (`handle_timeout`), let the load generator submit,
//! drain the node's events (logs, counters) and transmits (sealed, then one `sendmsg`
//! per destination, batched into one `io_uring_enter`), publish the counters, then
//! decide how to wait according to the idle strategy.
//!
//! Receiving is one multishot `recvmsg` per socket into a provided-buffer ring: the
//! kernel keeps completing datagrams without resubmission; the engine copies each
//! datagram out (after verifying its seal) and hands the buffer straight back.
//!
//! Ownership of memory the kernel uses (the reason for every `unsafe` here): send slots
//! live in a boxed slice that is never reallocated, and a slot leaves the free list until
//! its completion; the receive `msghdr`s and the signal/wake read buffers are boxed and
//! live as long as the engine; the buffer ring outlives the io_uring because `ring` is
//! the first field (dropped first).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode};

use super::bufring::BufRing;
use super::net::{
    GsoControl, NAME_BYTES, RECV_CONTROL_BYTES, RawAddr, Sockets, enable_gro, gro_segment,
    header_bytes, parse_name, route_mtu,
};
use super::signal::{SIGINFO_BYTES, Waker, termination_fd};
use super::stats::{Counter, StatsWriter};
use crate::daemon::hooks::{HookError, TestHooks};
use crate::daemon::keyfile::{self, KeyError};
use crate::daemon::{DaemonConfig, FileRingSeqStore, IdleStrategy, RingSeqWriteError};
use crate::host::{FlowLimits, Host, HostConfig, Notice};
use crate::ipc::{Ipc, IpcConfig};
use crate::service::ServiceId;
use crate::totem::{
    ConfigurationChange, ConfigurationKind, Destination, Gather, Instant, NodeId, Transmit,
};
use crate::wire::packet::looks_like_mcast;
use crate::wire::seal::{OpenError, Opener, Sealer};
use ringcast_shm::delivery_pool::{PoolBuffer, SharedDeliveryPool};

/// Submission queue entries (completions: 4×, and the kernel buffers overflow).
const SQ_ENTRIES: u32 = 1024;
/// Sends in flight at once; more transmits wait in `pending`.
const SEND_SLOTS: usize = 1024;
/// Backoff: iterations without work spent spinning, then yielding, before sleeping.
const SPIN_ROUNDS: u32 = 64;
const YIELD_ROUNDS: u32 = 16;
/// Longest sleep (the stats heartbeat is refreshed at least this often).
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Longest sleep while local senders are held back for a lagging receiver.
const THROTTLED_POLL: Duration = Duration::from_millis(1);
/// How long a leaving engine waits for its last datagrams to be sent.
const LEAVE_FLUSH: Duration = Duration::from_secs(1);
/// Receive buffer ring group id.
const BUF_GROUP: u16 = 0;

// user_data: kind in the top byte, an index below.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_SIGNAL: u64 = 3;
const KIND_WAKE: u64 = 4;
/// The client listening socket is readable (multishot poll).
const KIND_ACCEPT: u64 = 5;
/// A client socket is readable; index = generation << 24 | slot.
const KIND_CLIENT: u64 = 6;
/// Completion of a cancelled client poll (nothing to do).
const KIND_CANCEL: u64 = 7;
const SLOT_BITS: u32 = 24;

fn client_index(slot: usize, generation: u32) -> usize {
    ((generation as usize) << SLOT_BITS) | slot
}

fn user_data(kind: u64, index: usize) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

/// Why the engine could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A system call failed; `what` says which step.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The kernel lacks an io_uring feature the engine needs.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The Totem configuration was refused.
    #[error(transparent)]
    Totem(#[from] crate::totem::ConfigError),
    /// A new ring sequence could not be written: the node stops rather than use a
    /// ring id that a restart could hand out again (docs/invariants.md, "Ring
    /// identifiers").
    #[error(
        "state_dir: cannot write ring sequence {} to {}: {}; stopping, a ring id must never be reused",
        .0.seq,
        .0.path.display(),
        .0.source
    )]
    RingSeq(RingSeqWriteError),
    /// The key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The stats page could not be created.
    #[error(transparent)]
    Stats(#[from] super::stats::StatsError),
    /// Pinning to the configured cpu failed.
    #[error("cpu: cannot pin the engine thread to cpu {0}")]
    Pin(usize),
    /// The client socket or sessions could not be set up.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
    /// A test hook (the delivery log) could not start.
    #[error(transparent)]
    Hook(#[from] HookError),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

/// What the kernel offers, probed at start (and logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    pub release: String,
    /// Major and minor version.
    pub version: (u32, u32),
    pub ext_arg: bool,
    pub nodrop: bool,
    pub fast_poll: bool,
    pub recvmsg: bool,
    pub sendmsg: bool,
    pub read: bool,
}

impl KernelFeatures {
    /// Multishot `recvmsg` with provided buffer rings needs Linux 6.0.
    pub fn multishot_recvmsg(&self) -> bool {
        self.version >= (6, 0)
    }

    fn probe(ring: &IoUring) -> std::io::Result<KernelFeatures> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let params = ring.params();
        Ok(KernelFeatures {
            release,
            version,
            ext_arg: params.is_feature_ext_arg(),
            nodrop: params.is_feature_nodrop(),
            fast_poll: params.is_feature_fast_poll(),
            recvmsg: probe.is_supported(opcode::RecvMsg::CODE),
            sendmsg: probe.is_supported(opcode::SendMsg::CODE),
            read: probe.is_supported(opcode::Read::CODE),
        })
    }

    /// A clear error for the first missing feature (no fallbacks: each of these is
    /// required and has been in mainline since 6.0).
    fn check(&self) -> Result<(), EngineError> {
        let missing = [
            (self.recvmsg, "IORING_OP_RECVMSG (5.3)"),
            (self.sendmsg, "IORING_OP_SENDMSG (5.3)"),
            (self.read, "IORING_OP_READ (5.6)"),
            (self.nodrop, "IORING_FEAT_NODROP (5.5)"),
            (self.fast_poll, "IORING_FEAT_FAST_POLL (5.7)"),
            (self.ext_arg, "IORING_FEAT_EXT_ARG, timed waits (5.11)"),
            (
                self.multishot_recvmsg(),
                "multishot recvmsg with provided buffer rings (6.0)",
            ),
        ];
        match missing.iter().find(|(ok, _)| !ok) {
            None => Ok(()),
            Some((_, what)) => Err(EngineError::Kernel(format!(
                "Linux {} lacks {what}; ringcastd needs Linux 6.0 or later",
                self.release
            ))),
        }
    }
}

/// Memory the kernel reads while a `sendmsg` is in flight.
struct SendSlot {
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
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes of one segmented send at most: what one UDP datagram over IPv4 can carry.
const GSO_MAX_BYTES: usize = 65_507;

/// A run of datagrams to every destination, sent as one segmented send each: all of
/// `segment` bytes but the last, which may be shorter and then ends the run.
#[derive(Default)]
struct SendRun {
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

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct of pointers and integers: all-zero (null
    // pointers, zero lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Asks a zero-copy send to say in its notification whether it copied after all
/// (`IORING_SEND_ZC_REPORT_USAGE`, Linux 6.2), which it then reports with
/// `IORING_NOTIF_USAGE_ZC_COPIED`.
const ZC_REPORT_USAGE: u16 = 1 << 3;
const ZC_REPORT_COPIED: u32 = 1 << 31;

/// Datagrams at least this long stay in the delivery pool buffer they were received
/// into; shorter ones (tokens, joins, small packed messages) are cheaper to copy out.
const KEEP_IN_POOL_MIN: usize = 4096;

/// Most packets to ourselves waiting for the next iteration (Totem sends itself a
/// token or two per rotation; past this they go through the kernel like any other).
const TO_SELF_MAX: usize = 64;

/// A received buffer's datagrams: see [`Engine::locate_datagram`].
struct Located {
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

fn open_error_counter(e: OpenError) -> Counter {
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
const MAX_UDP_PAYLOAD: usize = 65_535;

/// Whether every route to the destinations of `Destination::All` carries a whole
/// datagram of `datagram_bytes` in one IP packet: the kernel refuses a segmented send
/// whose segments it would have to fragment (udp(7), `UDP_SEGMENT`), and a datagram
/// that is fragmented costs two packets anyway. Offload (either way) is only on where
/// this holds: a fragmented datagram is neither sent segmented nor coalesced on receipt
/// (nodes share datagram_bytes).
fn segmenting_fits(config: &DaemonConfig) -> bool {
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

/// Turns `UDP_GRO` on for every socket; whether all took it (else receives carry one
/// datagram each, as without offload).
fn enable_gro_everywhere(sockets: &Sockets) -> bool {
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

/// One engine: the protocol node, its sockets, its io_uring.
pub struct Engine {
    // Declared first so that it is dropped first: the kernel lets go of every buffer
    // below (buffer ring, send slots, msghdrs) before they are freed.
    ring: IoUring,
    bufring: BufRing,
    /// Fixed length (never reallocated): each slot's address is stable.
    slots: Box<[SendSlot]>,
    free_slots: Vec<usize>,
    sends_in_flight: usize,
    /// One per socket, referenced by its multishot receive.
    recv_msghdrs: Box<[libc::msghdr]>,
    recv_armed: Vec<bool>,
    recv_ok: bool,
    signal_buf: Box<[u8; SIGINFO_BYTES]>,
    wake_buf: Box<[u8; 8]>,
    signal_fd: OwnedFd,
    waker: Waker,
    sockets: Sockets,

    /// Totem, the CPG service and every protocol decision (docs/architecture.md).
    host: Host,
    config: DaemonConfig,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    stats: StatsWriter,
    /// The load generator and the delivery log (feature `test-hooks`; empty otherwise).
    hooks: TestHooks,

    /// `Destination::All`: every node (udpu) or the group (multicast).
    all_dests: Vec<RawAddr>,
    /// `Destination::Node`, sorted by id.
    node_dests: Vec<(NodeId, RawAddr)>,
    pending: VecDeque<Transmit>,
    /// Bytes of received datagrams copied out of the provided buffers.
    datagram_bytes_copied: u64,
    /// `send_zerocopy_bytes` (0 = off).
    zerocopy_min: usize,
    /// The delivery pool, when datagrams are received into it (no pool, or sealed
    /// datagrams - decrypted into a copy - mean never).
    recv_pool: Option<SharedDeliveryPool>,
    /// Packets Totem addressed to this node, handed back at the next iteration (a
    /// datagram to ourselves would cost a send, a receive and two kernel copies).
    to_self: VecDeque<Bytes>,
    origin: std::time::Instant,
    last_heartbeat: Instant,
    /// Set once SIGTERM/SIGINT arrived: the node has left; exit once flushed or then.
    leaving_until: Option<Instant>,
    features: KernelFeatures,
    send_errors_logged: u32,
    /// Fault injection: datagrams from these nodes are dropped ([`Engine::reload_drop_rule`]).
    drop_from: Vec<NodeId>,
    /// Client sessions and the CPG service.
    ipc: Ipc,
    /// Where the ring sequences the host asks for are written.
    ring_seq_file: FileRingSeqStore,
    /// A packet to one other node (a token) was queued for sending since last cleared.
    token_pushed: bool,
    /// Tokens received as of the last busy-poll window opened.
    tokens_seen: u64,
    /// The end of the busy-poll window (`busy_poll_us` after the last token).
    busy_until: Instant,
    /// Runs of datagrams to all go out as segmented sends (`udp_offload`, and every
    /// route carries a whole datagram); cleared if the kernel refuses one.
    gso: bool,
    /// Receives may carry a run of coalesced datagrams (`UDP_GRO` is on).
    gro: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("host", &self.host)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Sets everything up: io_uring (probed), sockets, buffer ring, key, ring-sequence
    /// store, stats page, the node. SIGTERM/SIGINT must already be blocked
    /// ([`super::signal::block_termination_signals`]).
    pub fn new(config: DaemonConfig) -> Result<Engine, EngineError> {
        let (ring, features) = open_io_uring(&config)?;
        let offload = config.settings.udp_offload && segmenting_fits(&config);
        let (mut bufring, recv_buffers) = receive_buffers(&config, &ring, offload)?;
        let sockets = Sockets::open(&config).map_err(io_error("sockets"))?;
        let gro = offload && enable_gro_everywhere(&sockets);
        let signal_fd = termination_fd().map_err(io_error("signalfd"))?;
        let waker = Waker::new().map_err(io_error("eventfd"))?;
        let (sealer, opener) = sealing(&config)?;
        let (ring_seq_file, last_ring_seq) = open_ring_seq_store(&config)?;
        let stats = StatsWriter::create(&config.stats_path, config.node_id, config.cluster_id)?;
        let origin = std::time::Instant::now();
        let mut host = Host::new(host_config(&config), last_ring_seq, Instant::ZERO)?;
        let (all_dests, node_dests) = destinations(&config);
        let socket_count = 1 + usize::from(sockets.multicast.is_some());
        let recv_msghdrs = recv_msghdrs(socket_count, gro);
        let slots = send_slots(&config);
        // Start time in ns: a fresh epoch per start.
        let epoch = keyfile::counter_from_clock();
        let hooks = TestHooks::new(&config, epoch)?;
        log_ready(&config, recv_buffers, bufring.is_huge(), offload, gro);
        let ipc = Ipc::new(ipc_config(&config), config.node_id, waker.as_fd())?;
        tracing::info!(
            socket = %config.settings.ipc_socket.display(),
            "clients connect here (RINGCAST_SOCKET for a non-default path); try `ringcast listen demo` and `ringcast send demo hello`"
        );
        let recv_pool = use_delivery_pool(&config, &ipc, opener.is_none(), &mut host, &mut bufring);
        let mut engine = Engine {
            ipc,
            ring,
            bufring,
            slots,
            free_slots: (0..SEND_SLOTS).rev().collect(),
            sends_in_flight: 0,
            recv_armed: vec![false; socket_count],
            recv_msghdrs,
            recv_ok: false,
            signal_buf: Box::new([0; SIGINFO_BYTES]),
            wake_buf: Box::new([0; 8]),
            signal_fd,
            waker,
            sockets,
            host,
            sealer,
            opener,
            stats,
            hooks,
            all_dests,
            node_dests,
            pending: VecDeque::new(),
            datagram_bytes_copied: 0,
            zerocopy_min: config.settings.send_zerocopy_bytes,
            recv_pool,
            to_self: VecDeque::new(),
            origin,
            last_heartbeat: Instant::ZERO,
            leaving_until: None,
            ring_seq_file,
            features,
            send_errors_logged: 0,
            drop_from: Vec::new(),
            token_pushed: false,
            tokens_seen: 0,
            busy_until: Instant::ZERO,
            gso: offload,
            gro,
            config,
        };
        // The first ring's sequence, written before anything leaves: a bad state dir
        // stops the start.
        engine.persist()?;
        Ok(engine)
    }

    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    /// Wakes the loop from another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn socket_fd(&self, index: usize) -> i32 {
        match (index, &self.sockets.multicast) {
            (0, _) => self.sockets.unicast.as_raw_fd(),
            (_, Some(m)) => m.as_raw_fd(),
            (_, None) => unreachable!("no socket {index}"),
        }
    }

    /// Room for `n` more submissions, flushing the queue to the kernel if needed.
    fn reserve_sq(&mut self, n: usize) -> bool {
        let room = |ring: &mut IoUring| {
            let sq = ring.submission();
            sq.capacity() - sq.len() >= n
        };
        if room(&mut self.ring) {
            return true;
        }
        let _ = self.ring.submit();
        room(&mut self.ring)
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        assert!(self.reserve_sq(1), "submission queue stuck full");
        // SAFETY: every entry built by this engine points only at memory the engine owns
        // and keeps alive until the completion (see the module doc); the caller upholds
        // that for its entry.
        unsafe { self.ring.submission().push(entry) }.expect("room reserved");
    }

    fn arm_recv(&mut self, index: usize) {
        let entry = opcode::RecvMsgMulti::new(
            Fd(self.socket_fd(index)),
            &self.recv_msghdrs[index],
            self.bufring.group(),
        )
        .build()
        .user_data(user_data(KIND_RECV, index));
        // The msghdr lives in a never-reallocated boxed slice as long as the engine; the buffers belong to the
        // registered ring.
        self.push(&entry);
        self.recv_armed[index] = true;
    }

    fn arm_signal(&mut self) {
        let entry = opcode::Read::new(
            Fd(self.signal_fd.as_raw_fd()),
            self.signal_buf.as_mut_ptr(),
            SIGINFO_BYTES as u32,
        )
        .build()
        .user_data(user_data(KIND_SIGNAL, 0));
        // The buffer is boxed and lives as long as the engine.
        self.push(&entry);
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(Fd(self.waker.raw_fd()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(KIND_WAKE, 0));
        // The buffer is boxed and lives as long as the engine.
        self.push(&entry);
    }

    fn arm_accept(&mut self) {
        let entry = opcode::PollAdd::new(Fd(self.ipc.listener_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_ACCEPT, 0));
        // A poll references no engine memory.
        self.push(&entry);
    }

    fn arm_client(&mut self, slot: usize) {
        let Some((generation, fd)) = self.ipc.session_fd(slot) else {
            return;
        };
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_CLIENT, client_index(slot, generation)));
        // A poll references no engine memory.
        self.push(&entry);
    }

    /// Cancels the socket polls of sessions the IPC layer closed (the poll holds a
    /// reference to the socket, which is only really closed once it is gone).
    fn cancel_closed_polls(&mut self) {
        let closed: Vec<(usize, u32)> = self.ipc.take_closed().collect();
        for (slot, generation) in closed {
            let target = user_data(KIND_CLIENT, client_index(slot, generation));
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(KIND_CANCEL, 0));
            // A cancellation references no engine memory.
            self.push(&entry);
        }
    }

    fn on_client_readable(&mut self, now: Instant, index: usize, result: i32, flags: u32) {
        let slot = index & ((1 << SLOT_BITS) - 1);
        let generation = (index >> SLOT_BITS) as u32;
        if !self.ipc.is_current(slot, generation) {
            return;
        }
        if result < 0 {
            if -result != libc::ECANCELED {
                self.ipc.drop_session(slot, &mut self.host, now);
            }
            return;
        }
        if !self.ipc.on_readable(slot, &mut self.host, now) {
            return;
        }
        if !cqueue::more(flags) {
            self.arm_client(slot);
        }
    }

    /// Runs until SIGTERM/SIGINT, then leaves the ring and returns.
    pub fn run(&mut self) -> Result<(), EngineError> {
        if let Some(cpu) = self.config.settings.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                return Err(EngineError::Pin(cpu));
            }
            tracing::info!(cpu, "engine thread pinned");
        }
        for index in 0..self.recv_armed.len() {
            self.arm_recv(index);
        }
        self.arm_signal();
        self.arm_wake();
        self.arm_accept();
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(SQ_ENTRIES as usize * 4);
        let mut idle_rounds = 0u32;
        loop {
            let (work, now) = self.round(&mut completions)?;
            if self.left(now) {
                return Ok(());
            }
            if work > 0 {
                idle_rounds = 0;
                self.open_busy_poll(now);
                self.flush(None)?;
                continue;
            }
            self.idle(&mut idle_rounds)?;
        }
    }

    /// One round of the loop: completions, packets to ourselves, the token forwarded
    /// if one came in, timers, the load generator, client rings, then what Totem and
    /// the clients have to send. Returns how much work it found and the time it ended
    /// at.
    fn round(
        &mut self,
        completions: &mut Vec<(u64, i32, u32)>,
    ) -> Result<(usize, Instant), EngineError> {
        let tokens_before = self.host.totem_stats().tokens_received;
        let (mut work, seen) = self.take_in(completions)?;
        if self.host.totem_stats().tokens_received != tokens_before {
            self.forward_token_now(seen)?;
        }

        let now = self.now();
        if self.host.poll_timeout().is_some_and(|t| t <= now) {
            self.host.handle_timeout(now);
            work += 1;
        }
        if self.leaving_until.is_none() {
            work += self.hooks.generate_load(&mut self.host, now, &self.stats);
        }
        work += self.ipc.poll_rings(&mut self.host, now);
        self.persist()?;
        let now = self.now();
        work += self.ipc.flush_events(&mut self.host, now);
        self.cancel_closed_polls();
        self.persist()?;
        work += self.drain_notices(now);
        work += self.drain_transmits();
        self.publish_stats(now);
        self.hooks.tick(now);
        Ok((work, now))
    }

    /// What came in: completions (datagrams to Totem among them), then packets to
    /// ourselves; re-arms the receives that stopped. Returns how much work that was and
    /// the time the completions were seen at.
    fn take_in(
        &mut self,
        completions: &mut Vec<(u64, i32, u32)>,
    ) -> Result<(usize, Instant), EngineError> {
        completions.clear();
        completions.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let now = self.now();
        for &(data, result, flags) in completions.iter() {
            self.on_completion(now, data, result, flags)?;
        }
        let mut work = completions.len();
        // Packets to ourselves arrive like datagrams would, after what came in.
        for _ in 0..self.to_self.len() {
            let Some(packet) = self.to_self.pop_front() else {
                break;
            };
            // Counted in like a datagram: packets_in stays the sum of the drop
            // counters and packets_accepted.
            self.stats.add(Counter::PacketsIn, 1);
            self.stats.add(Counter::BytesIn, packet.len() as u64);
            self.host.handle_datagram(now, &packet);
            work += 1;
        }
        for index in 0..self.recv_armed.len() {
            if !self.recv_armed[index] {
                self.arm_recv(index);
            }
        }
        Ok((work, now))
    }

    /// A token arrived (its datagram was seen at `seen`): the token Totem forwards, and
    /// the multicasts it allowed before it, go to the kernel now, before this round
    /// delivers what the token made deliverable or takes new client messages. Every
    /// agreed delivery on the ring waits for the token, so it must not wait behind
    /// local work (docs/performance.md, "Token hop").
    fn forward_token_now(&mut self, seen: Instant) -> Result<(), EngineError> {
        // The host holds what names a ring whose sequence is not written yet.
        self.persist()?;
        self.token_pushed = false;
        self.drain_transmits();
        self.flush(None)?;
        if self.token_pushed {
            let hop = self.now().saturating_since(seen);
            self.stats.add(Counter::TokenHops, 1);
            self.stats.add(
                Counter::TokenHopNs,
                u64::try_from(hop.as_nanos()).unwrap_or(u64::MAX),
            );
        }
        Ok(())
    }

    /// After a round with work: a token received since the last window opens a new
    /// busy-poll window of `busy_poll_us` (see [`Engine::idle`]).
    fn open_busy_poll(&mut self, now: Instant) {
        let tokens = self.host.totem_stats().tokens_received;
        if self.tokens_seen != tokens {
            self.tokens_seen = tokens;
            self.busy_until = now + Duration::from_micros(self.config.settings.busy_poll_us);
        }
    }

    /// After a termination signal: whether the node is done leaving (its last
    /// datagrams sent, or the flush time is up); if so it has shut the clients down.
    fn left(&mut self, now: Instant) -> bool {
        let flushed = self.sends_in_flight == 0 && self.pending.is_empty();
        if !self
            .leaving_until
            .is_some_and(|until| flushed || now >= until)
        {
            return false;
        }
        if self.sends_in_flight != 0 || !self.pending.is_empty() {
            tracing::warn!(
                in_flight = self.sends_in_flight,
                "left before every datagram was sent"
            );
        }
        self.ipc.shutdown(&mut self.host, now);
        let _ = self.ring.submit();
        self.hooks.flush(now);
        tracing::info!("left the ring, exiting");
        true
    }

    /// A round without work: spin, then yield, then (backoff) sleep in
    /// `io_uring_enter` until the next deadline or a wake-up; within a busy-poll
    /// window, yield rather than sleep.
    fn idle(&mut self, idle_rounds: &mut u32) -> Result<(), EngineError> {
        match self.config.settings.idle {
            IdleStrategy::Spin => self.flush(None),
            IdleStrategy::Backoff => {
                *idle_rounds = idle_rounds.saturating_add(1);
                if *idle_rounds <= SPIN_ROUNDS {
                    self.flush(None)?;
                    std::hint::spin_loop();
                    Ok(())
                } else if *idle_rounds <= SPIN_ROUNDS + YIELD_ROUNDS || self.now() < self.busy_until
                {
                    // While the ring is busy the token is due back soon: yielding
                    // (which lets other runnable threads go first) rather than
                    // sleeping saves the wake-up on every token hop.
                    self.flush(None)?;
                    std::thread::yield_now();
                    Ok(())
                } else {
                    self.sleep()
                }
            }
        }
    }

    /// Sleeps until the earliest deadline (Totem, test hooks, leaving), at most
    /// `MAX_SLEEP`, unless a client's ring filled meanwhile.
    fn sleep(&mut self) -> Result<(), EngineError> {
        let now = self.now();
        let deadline = [
            self.host.poll_timeout(),
            self.hooks.next_deadline(now),
            self.leaving_until,
        ]
        .into_iter()
        .flatten()
        .min();
        let mut wait = deadline.map_or(MAX_SLEEP, |d| d.saturating_since(now).min(MAX_SLEEP));
        // A lagging receiver's progress is seen only by looking at its ring again.
        if self.host.senders_held() {
            wait = wait.min(THROTTLED_POLL);
        }
        // Clients wake the engine only after it announced its sleep on their rings; a
        // ring that filled meanwhile cancels the sleep.
        if !wait.is_zero() && self.ipc.prepare_sleep() {
            self.stats.add(Counter::IdleSleeps, 1);
            let slept = self.flush(Some(wait));
            self.ipc.cancel_sleep();
            slept?;
        }
        Ok(())
    }

    /// Writes the ring sequence the host asks for and confirms it; a failed write
    /// stops the engine. The host holds every datagram, client event and notice that
    /// may name the new ring until it is confirmed, so calling this before draining
    /// them is all the ordering the driver owes (docs/invariants.md, "Ring
    /// identifiers").
    fn persist(&mut self) -> Result<(), EngineError> {
        while let Some(seq) = self.host.poll_persist() {
            self.ring_seq_file
                .persist(seq)
                .map_err(EngineError::RingSeq)?;
            self.host.handle_persisted(seq);
        }
        Ok(())
    }

    /// Submits what is queued; with `wait`, also sleeps until a completion or `wait`.
    fn flush(&mut self, wait: Option<Duration>) -> Result<(), EngineError> {
        let result = match wait {
            None => {
                if self.ring.submission().is_empty() {
                    return Ok(());
                }
                self.ring.submit()
            }
            Some(wait) => {
                let ts = Timespec::from(wait);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(EngineError::Io {
                what: "io_uring_enter".into(),
                source: e,
            }),
        }
    }

    fn on_completion(
        &mut self,
        now: Instant,
        data: u64,
        result: i32,
        flags: u32,
    ) -> Result<(), EngineError> {
        let index = (data & ((1 << KIND_SHIFT) - 1)) as usize;
        match data >> KIND_SHIFT {
            KIND_RECV => return self.on_recv(now, index, result, flags),
            KIND_SEND => self.on_send(index, result, flags),
            KIND_SIGNAL => self.on_signal(now, result),
            KIND_WAKE => self.arm_wake(),
            KIND_ACCEPT => {
                if !cqueue::more(flags) {
                    self.arm_accept();
                }
                for slot in self.ipc.on_accept() {
                    self.arm_client(slot);
                }
            }
            KIND_CLIENT => self.on_client_readable(now, index, result, flags),
            KIND_CANCEL => {}
            _ => debug_assert!(false, "unknown completion {data:#x}"),
        }
        Ok(())
    }

    /// A multishot receive on socket `index` completed: a datagram, or an error.
    fn on_recv(
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

    /// A send from slot `index` completed, or its zero-copy notification arrived.
    fn on_send(&mut self, index: usize, result: i32, flags: u32) {
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
    fn stop_segmenting(&mut self, result: i32) {
        if self.gso {
            self.gso = false;
            tracing::warn!(
                error = %std::io::Error::from_raw_os_error(-result),
                "segmented send refused: UDP_SEGMENT off"
            );
        }
    }

    /// A signal arrived: SIGUSR1 reloads the drop rule, SIGUSR2 stops the load
    /// generator, SIGTERM/SIGINT make the node leave the ring.
    fn on_signal(&mut self, now: Instant, result: i32) {
        let signo = i32::from_ne_bytes([
            self.signal_buf[0],
            self.signal_buf[1],
            self.signal_buf[2],
            self.signal_buf[3],
        ]);
        let complete = result as usize == SIGINFO_BYTES;
        if complete && signo == libc::SIGUSR1 {
            self.reload_drop_rule();
        } else if complete && signo == libc::SIGUSR2 {
            // Tests and benchmarks end their load phase without stopping engines.
            self.hooks.stop_load();
        } else if complete && self.leaving_until.is_none() {
            tracing::info!(signal = signo, "termination signal: leaving the ring");
            self.host.leave(now);
            self.leaving_until = Some(now + LEAVE_FLUSH);
        }
        self.arm_signal();
    }

    /// Where in buffer `bid` (as the kernel filled it) the datagrams lie, the size of
    /// all but the last when the kernel coalesced a run of them (`UDP_GRO`), and which
    /// node sent them; the counter to bump when they are dropped.
    fn locate_datagram(&self, socket: usize, buf: &[u8]) -> Result<Located, Counter> {
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
    fn on_datagram(&mut self, now: Instant, socket: usize, bid: u16, len: usize) {
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
            self.host.handle_datagram(now, &packet);
        }
    }

    /// Datagrams the kernel received into a delivery pool buffer: a large one, or a
    /// coalesced run, stays there (its `Bytes` hold the buffer; Totem's deliveries are
    /// slices of it and local clients get descriptors into it); a small one is copied
    /// out and the buffer goes back to the id.
    fn on_datagram_in_pool(
        &mut self,
        now: Instant,
        socket: usize,
        bid: u16,
        len: usize,
        buffer: PoolBuffer,
    ) {
        let whole = buffer.bytes(0..len.min(buffer.len()));
        let packets = match self.locate_datagram(socket, &whole) {
            Err(counter) => {
                self.stats.add(Counter::PacketsIn, 1);
                self.stats.add(counter, 1);
                Vec::new()
            }
            Ok(located) => self.pool_packets(&whole, &located),
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
            self.host.handle_datagram(now, &packet);
        }
    }

    /// The datagrams `located` in a pool buffer (`whole`), counted in: slices of it
    /// when large or coalesced, else copies.
    fn pool_packets(&mut self, whole: &Bytes, located: &Located) -> Vec<Bytes> {
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
    fn refill(&mut self, bid: u16) {
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

    /// Fault injection for partition tests (a test-only drop rule): on SIGUSR1, `<state_dir>/drop_nodes` (node ids separated by commas or
    /// whitespace; missing or empty = none) lists the nodes whose datagrams this engine
    /// drops on arrival. Writing complementary lists on both sides and sending SIGUSR1
    /// partitions the cluster; empty lists heal it. Only IO is affected, never Totem.
    fn reload_drop_rule(&mut self) {
        let path = self.config.settings.state_dir.join("drop_nodes");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut ids: Vec<NodeId> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter_map(|id| id.parse().ok())
            .filter(|id| self.config.addr_of(*id).is_some())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        tracing::warn!(path = %path.display(), drop_from = ?ids, "drop rule reloaded");
        self.drop_from = ids;
    }

    /// What the host tells the driver: configuration changes are logged (and handed
    /// to the delivery log), deliveries of the load generator's service go to its
    /// checker. Nothing here feeds back into the protocol.
    fn drain_notices(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(notice) = self.host.poll_notice() {
            n += 1;
            match notice {
                Notice::Configuration(change) => {
                    log_membership(&change);
                    self.hooks.on_configuration(now, &change);
                }
                Notice::Foreign(ServiceId::LoadGenerator, delivery) => {
                    self.hooks.on_generated(now, &delivery, &self.stats);
                }
                Notice::Foreign(service, _) => {
                    tracing::debug!(?service, "delivery of a service this node does not run");
                }
            }
        }
        n
    }

    /// Hands Totem's datagrams to the kernel, in Totem's order: a run of datagrams to
    /// all goes out as one segmented send per destination when `gso` is on.
    fn drain_transmits(&mut self) -> usize {
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
    fn route(&self, destination: Destination) -> Option<(usize, usize)> {
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
    fn send_each(
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
    fn seal_overhead(&self) -> usize {
        if self.sealer.is_some() {
            crate::wire::seal::OVERHEAD
        } else {
            0
        }
    }

    fn sealed(&mut self, payload: Gather) -> Gather {
        match &mut self.sealer {
            Some(sealer) => Gather::from(Bytes::from(
                sealer.seal_pieces(payload.len(), payload.pieces().map(|p| &p[..])),
            )),
            None => payload,
        }
    }

    /// Sends `run` (its slots were reserved when it started) to every destination and
    /// empties it.
    fn send_run(&mut self, run: &mut SendRun) {
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

    fn release_slot(&mut self, index: usize) {
        self.slots[index].payloads.clear();
        self.free_slots.push(index);
        self.sends_in_flight -= 1;
    }

    /// One send of `payloads` to `addr`: one datagram, or a run of them that the kernel
    /// cuts into datagrams of the first one's size (`UDP_SEGMENT`, udp(7)).
    fn push_send(&mut self, addr: RawAddr, payloads: &[Gather]) {
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

    fn publish_stats(&mut self, now: Instant) {
        let s = self.host.totem_stats();
        let h = self.host.stats();
        let st = &self.stats;
        st.set(Counter::MessagesDelivered, h.messages_delivered);
        st.set(Counter::BytesDelivered, h.bytes_delivered);
        st.set(Counter::MembershipChanges, h.regular_changes);
        st.set(Counter::TransitionalChanges, h.transitional_changes);
        st.set(Counter::DropDecode, s.packets_dropped);
        st.set(
            Counter::PacketsAccepted,
            s.packets_received.saturating_sub(s.packets_dropped),
        );
        st.set(Counter::TokensReceived, s.tokens_received);
        st.set(Counter::TokensDropped, s.tokens_dropped);
        st.set(Counter::TokenRotations, s.token_rotations);
        st.set(Counter::MessagesOriginated, s.messages_originated);
        st.set(Counter::Retransmits, s.messages_retransmitted);
        st.set(Counter::TokenLosses, s.token_losses);
        st.set(Counter::FailedToReceive, s.failed_to_receive);
        st.set(Counter::RingsInstalled, s.rings_installed);
        st.set_send_queue_len(self.host.send_queue_len());
        let c = self.ipc.stats();
        st.set(Counter::ClientsConnected, self.ipc.sessions() as u64);
        st.set(Counter::ClientsOpened, c.sessions_opened);
        st.set(Counter::ClientsClosed, c.sessions_closed);
        st.set(Counter::ClientsRefused, c.sessions_refused);
        st.set(Counter::ClientsFaulted, c.sessions_faulted);
        st.set(Counter::ClientMessages, c.client_messages);
        st.set(Counter::ClientBytes, c.client_bytes);
        st.set(Counter::ClientEvents, c.events_to_clients);
        st.set(Counter::ClientTryAgain, c.try_again);
        st.set(Counter::PoolPlaced, c.pool_placed);
        st.set(Counter::PoolDescriptors, c.pool_descriptors);
        st.set(Counter::PoolInlineFallbacks, c.pool_inline_fallbacks);
        st.set(Counter::PoolSent, c.pool_sent);
        st.set(
            Counter::PayloadBytesCopied,
            c.payload_bytes_copied
                + s.bytes_packed_by_copy
                + s.bytes_reassembled
                + self.datagram_bytes_copied,
        );
        st.set(Counter::BytesPackedByReference, s.bytes_packed_by_reference);
        st.set(Counter::SendBufferMessages, c.send_buffer_messages);
        let state = self.leaving_until.is_none().then(|| self.host.state());
        self.stats
            .set_ring(self.host.ring_id(), state, self.host.members());
        if now.saturating_since(self.last_heartbeat) >= Duration::from_millis(100) {
            self.last_heartbeat = now;
            self.stats.heartbeat();
        }
    }
}

/// The io_uring instance and what its kernel offers (checked: the engine needs it).
fn open_io_uring(config: &DaemonConfig) -> Result<(IoUring, KernelFeatures), EngineError> {
    let s = &config.settings;
    let mut builder = IoUring::builder();
    builder.setup_cqsize(SQ_ENTRIES * 4);
    if s.sqpoll {
        builder.setup_sqpoll(s.sqpoll_idle_ms);
    }
    let ring = builder.build(SQ_ENTRIES).map_err(|e| EngineError::Io {
        what: if e.raw_os_error() == Some(libc::EPERM) {
            "io_uring_setup (disabled by kernel.io_uring_disabled, or SQPOLL not permitted)".into()
        } else {
            "io_uring_setup".into()
        },
        source: e,
    })?;
    let features = KernelFeatures::probe(&ring).map_err(io_error("io_uring probe"))?;
    tracing::info!(
        kernel = %features.release,
        ext_arg = features.ext_arg,
        nodrop = features.nodrop,
        fast_poll = features.fast_poll,
        multishot_recvmsg = features.multishot_recvmsg(),
        sqpoll = s.sqpoll,
        "io_uring features"
    );
    features.check()?;
    Ok((ring, features))
}

/// The provided buffers datagrams (or, `coalescing`, runs of them) are received into,
/// registered with `ring`, and how many there are.
fn receive_buffers(
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

/// The sealer and opener of the configured key file; none without one (the cluster
/// then runs in the clear, which is logged).
fn sealing(config: &DaemonConfig) -> Result<(Option<Sealer>, Option<Opener>), EngineError> {
    let Some(path) = &config.settings.key_file else {
        tracing::warn!(
            "no key_file: the cluster runs in the clear (no authentication, no encryption)"
        );
        return Ok((None, None));
    };
    let key = keyfile::read(path)?;
    if keyfile::is_exposed(path) {
        tracing::warn!(key_file = %path.display(), "key file is readable by group or others");
    }
    tracing::info!(key_file = %path.display(), "datagrams are sealed (ChaCha20-Poly1305)");
    Ok((
        Some(Sealer::new(
            &key,
            config.node_id,
            config.cluster_id,
            keyfile::counter_from_clock(),
        )),
        Some(Opener::new(&key, config.cluster_id, config.nodes.len())),
    ))
}

/// The ring sequence file and the value stored in it (rewritten at once: a bad state
/// dir stops the start).
fn open_ring_seq_store(config: &DaemonConfig) -> Result<(FileRingSeqStore, u64), EngineError> {
    FileRingSeqStore::open(config.ring_seq_path.clone()).map_err(io_error(format!(
        "state_dir: ring sequence file {}",
        config.ring_seq_path.display()
    )))
}

/// The host's configuration, one per layer, from the daemon's.
fn host_config(config: &DaemonConfig) -> HostConfig {
    let ipc = &config.settings.ipc;
    HostConfig {
        totem: config.totem.clone(),
        cpg: crate::cpg::Limits {
            max_members_per_group: ipc.max_members_per_group,
            max_groups: ipc.max_groups,
            max_connections: ipc.max_clients,
            max_message_bytes: config
                .totem
                .max_message_bytes
                .saturating_sub(crate::cpg::MCAST_HEADER_MAX),
        },
        flow: FlowLimits {
            max_events: ipc.backlog_events,
            max_bytes: ipc.backlog_bytes,
        },
    }
}

fn log_membership(change: &ConfigurationChange) {
    let kind = match change.kind {
        ConfigurationKind::Regular => "regular",
        ConfigurationKind::Transitional => "transitional",
    };
    tracing::info!(
        kind,
        ring_id = %change.ring_id,
        members = ?change.members,
        joined = ?change.joined,
        left = ?change.left,
        "membership"
    );
}

/// One receive header per socket, each with room for the source address (and with
/// `gro` for the control message giving the size of coalesced datagrams).
fn recv_msghdrs(sockets: usize, gro: bool) -> Box<[libc::msghdr]> {
    (0..sockets)
        .map(|_| {
            let mut msghdr = zeroed_msghdr();
            msghdr.msg_namelen = NAME_BYTES as libc::socklen_t;
            msghdr.msg_controllen = if gro { RECV_CONTROL_BYTES } else { 0 };
            msghdr
        })
        .collect()
}

fn send_slots(config: &DaemonConfig) -> Box<[SendSlot]> {
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

/// Lets Totem reassemble large messages in the delivery pool, and, for datagrams in
/// the clear and large enough to be worth it, receives datagrams straight into it;
/// returns the pool in that case.
fn use_delivery_pool(
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

/// Where `Destination::All` goes, and `Destination::Node` by id (sorted).
fn destinations(config: &DaemonConfig) -> (Vec<RawAddr>, Vec<(NodeId, RawAddr)>) {
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

fn log_ready(config: &DaemonConfig, recv_buffers: u16, huge_pages: bool, gso: bool, gro: bool) {
    let s = &config.settings;
    tracing::info!(
        node_id = config.node_id,
        cluster = %s.cluster_name,
        cluster_id = config.cluster_id,
        address = %config.own_addr,
        transport = ?s.transport,
        nodes = config.nodes.len(),
        token_ms = config.totem.token.as_millis() as u64,
        recv_buffers,
        udp_gso = gso,
        udp_gro = gro,
        huge_pages,
        stats = %config.stats_path.display(),
        "engine ready"
    );
}

/// The session layer's configuration, from the daemon's.
fn ipc_config(config: &DaemonConfig) -> IpcConfig {
    let s = &config.settings;
    let ipc = &s.ipc;
    IpcConfig {
        socket_path: s.ipc_socket.clone(),
        nodes: config.nodes.clone(),
        allowed_uids: ipc.allowed_uids.clone(),
        allowed_gids: ipc.allowed_gids.clone(),
        region: ringcast_shm::RegionSpec {
            submit_ring_bytes: ipc.submit_ring_bytes,
            event_ring_bytes: ipc.event_ring_bytes,
            // Trusted senders write into a slab of the delivery pool instead.
            pool_bytes: if ipc.trusted_senders {
                0
            } else {
                ipc.send_buffer_bytes
            },
        },
        huge_pages: ipc.huge_pages,
        max_clients: ipc.max_clients,
        delivery_pool_bytes: ipc.delivery_pool_bytes,
        delivery_pool_min_bytes: ipc.delivery_pool_min_bytes,
        trusted_slab_bytes: if ipc.trusted_senders {
            ipc.send_buffer_bytes
        } else {
            0
        },
    }
}

/// Builds an engine from `config` and runs it on the calling thread.
pub fn run(config: DaemonConfig) -> Result<(), EngineError> {
    Engine::new(config)?.run()
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
