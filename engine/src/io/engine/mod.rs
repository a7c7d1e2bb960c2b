//! The event loop: one thread drives one [`Host`] (Totem, the CPG service, flow
//! control: every protocol decision) over UDP and the clients' shared memory through
//! io_uring. The loop only turns completions into host inputs and host outputs into
//! submissions (docs/architecture.md, "The daemon's driver").
//!
//! Every round: reap completions (datagrams in → `Host::handle_datagram`, sends done,
//! client sockets, signals: `completions`, `recv`), forward a token at once if one
//! came in, fire the host's deadline (`Host::handle_timeout`), let the load generator
//! submit, take client multicasts from the submit rings into the host and its events
//! into the event rings (`crate::ipc`), write the ring sequence the host asks for
//! (`Engine::persist`), act on its notices (logs, test hooks), send its transmits
//! (`send`: sealed, one `sendmsg` per destination, batched into one
//! `io_uring_enter`), publish the counters, then decide how to wait according to the
//! idle strategy.
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

mod completions;
mod gs_scripts;
mod kernel;
mod recv;
mod send;
mod setup;

use completions::*;
pub use kernel::KernelFeatures;
use kernel::*;
pub use recv::recv_buffers;
use recv::*;
use send::*;
use setup::*;

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
    /// Client sessions: their sockets and rings.
    ipc: Ipc,
    /// GS deactivate scripts running outside this thread.
    scripts: super::scripts::ScriptRunner,
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
            scripts: super::scripts::ScriptRunner::new(waker.clone()),
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
        work += self.run_scripts(now);
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
            self.host.handle_datagram(now, self.config.node_id, &packet);
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

/// Builds an engine from `config` and runs it on the calling thread.
pub fn run(config: DaemonConfig) -> Result<(), EngineError> {
    Engine::new(config)?.run()
}
