//! The engine's counters, readable from outside while it runs (Aeron's counters file):
//! one 4 KiB page in a file (`<state_dir>/stats_<nodeid>`), mapped shared by the engine
//! (which writes it with relaxed atomic stores) and read-only by `ringcast status`.
//!
//! The layout lives here, in the crate both sides already share, so that the operator's
//! command line reads it without depending on the engine. Protocol types appear as their
//! raw values (node ids as `u32`, the Totem state as a code, see [`state_name`]).
//!
//! ```text
//!  offset  size
//!     0      64  header: magic "RCSTATS\0", version, page_bytes, counter_slots,
//!                node_id, pid, member_slots, cluster_id, start and heartbeat (unix ms)
//!    64      64  ring: seqlock, rep, seq, state, member_count, send_queue_len
//!   128     512  counters: 64 × u64, indexed by `Counter`
//!   640    1536  members: 384 × u32 (the first member_count are valid)
//!  2176          end (the file is one 4096-byte page)
//! ```
//!
//! The magic is stored last (release) when the page is created; a reader that sees it
//! sees a complete header. The ring section is a seqlock: `ring_version` is odd while the
//! engine rewrites it, and a reader retries until it reads the same even version before
//! and after. Counters are independent monotonic u64s, so they need no lock.

use std::fs::OpenOptions;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{Mmap, MmapMut, MmapOptions};

/// A node id, as Totem numbers nodes.
pub type NodeId = u32;

/// The ring a snapshot was taken in: its representative and sequence.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RingId {
    pub rep: NodeId,
    pub seq: u64,
}

impl std::fmt::Display for RingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.rep, self.seq)
    }
}

/// "RCSTATS\0", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RCSTATS\0");
pub const VERSION: u32 = 1;
/// Size of the stats file.
pub const PAGE_BYTES: usize = 4096;
pub const COUNTER_SLOTS: usize = 64;
/// Members listed (Totem's largest ring).
pub const MEMBER_SLOTS: usize = 384;

/// The shared layout. Every field is an atomic: the page is shared between processes.
#[repr(C)]
pub struct StatsPage {
    magic: AtomicU64,
    version: AtomicU32,
    page_bytes: AtomicU32,
    counter_slots: AtomicU32,
    node_id: AtomicU32,
    pid: AtomicU32,
    member_slots: AtomicU32,
    cluster_id: AtomicU32,
    _reserved0: AtomicU32,
    start_unix_ms: AtomicU64,
    heartbeat_unix_ms: AtomicU64,
    _reserved1: [AtomicU64; 1],

    ring_version: AtomicU64,
    ring_rep: AtomicU64,
    ring_seq: AtomicU64,
    state: AtomicU64,
    member_count: AtomicU64,
    send_queue_len: AtomicU64,
    _reserved2: [AtomicU64; 2],

    counters: [AtomicU64; COUNTER_SLOTS],
    members: [AtomicU32; MEMBER_SLOTS],
}

const _: () = {
    assert!(offset_of!(StatsPage, version) == 8);
    assert!(offset_of!(StatsPage, start_unix_ms) == 40);
    assert!(offset_of!(StatsPage, ring_version) == 64);
    assert!(offset_of!(StatsPage, counters) == 128);
    assert!(offset_of!(StatsPage, members) == 640);
    assert!(size_of::<StatsPage>() == 2176);
    assert!(size_of::<StatsPage>() <= PAGE_BYTES);
    assert!(Counter::ALL.len() <= COUNTER_SLOTS);
};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident = $text:literal,)*) => {
        /// One counter of the stats page; the discriminant is its slot. New counters are
        /// appended (slots never move within a version).
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter {
            $($(#[doc = $doc])* $name,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The name `ringcast status` prints.
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$name => $text,)*
                }
            }

            /// Its doc comment (empty for the self-explanatory ones), for metrics' help.
            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$name => concat!("" $(, $doc)*).trim_ascii(),)*
                }
            }
        }
    };
}

counters! {
    /// Datagrams received (before any check).
    PacketsIn = "packets_in",
    BytesIn = "bytes_in",
    /// Datagrams sent (one per destination).
    PacketsOut = "packets_out",
    BytesOut = "bytes_out",
    /// Sends the kernel failed.
    SendErrors = "send_errors",
    /// Dropped: the source address is not in the nodelist.
    DropUnlisted = "drop_unlisted_sender",
    /// Dropped: longer than any node sends (larger than a receive buffer held, or the
    /// longest datagram of the configuration).
    DropTruncated = "drop_truncated",
    /// Dropped: failed authentication (wrong key, other cluster, tampered).
    DropAuth = "drop_auth",
    /// Dropped: replayed (counter seen or too old).
    DropReplay = "drop_replay",
    /// Dropped: not sealed while this node uses a key (or malformed seal).
    DropNotSealed = "drop_not_sealed",
    /// Dropped: the sender id a sealed datagram claims is not the source address's node.
    DropSenderMismatch = "drop_sender_mismatch",
    /// Dropped by Totem: bad magic, version, cluster id or layout.
    DropDecode = "drop_decode",
    /// The receive buffer ring ran empty: the multishot receive stopped (`ENOBUFS`)
    /// until re-armed, its datagrams waiting in the socket receive buffer (the kernel
    /// drops only when that is full: `Udp: RcvbufErrors`).
    RecvNoBuffers = "recv_no_buffers",
    TokensReceived = "tokens_received",
    /// Tokens Totem dropped as duplicates or of another ring.
    TokensDropped = "tokens_dropped",
    TokenRotations = "token_rotations",
    MessagesOriginated = "messages_originated",
    Retransmits = "retransmits",
    MessagesDelivered = "messages_delivered",
    BytesDelivered = "bytes_delivered",
    /// Regular configurations delivered.
    MembershipChanges = "membership_changes",
    TransitionalChanges = "transitional_changes",
    TokenLosses = "token_losses",
    FailedToReceive = "failed_to_receive",
    RingsInstalled = "rings_installed",
    /// `submit` refused with a full send queue.
    SubmitTryAgain = "submit_try_again",
    LoadSubmitted = "load_submitted",
    /// Generated messages delivered in per-sender order.
    LoadDelivered = "load_delivered",
    LoadDeliveredBytes = "load_delivered_bytes",
    /// Generated messages of a sender skipped (lost to this node).
    LoadGaps = "load_gaps",
    /// Generated messages delivered twice or out of order (never legitimate).
    LoadOutOfOrder = "load_out_of_order",
    /// Times the engine slept in `io_uring_enter`.
    IdleSleeps = "idle_sleeps",
    /// Transmits to a node id that is not in the nodelist.
    DropUnknownDestination = "drop_unknown_destination",
    /// Dropped by the fault-injection rule (`<state_dir>/drop_nodes`, see `io::engine`).
    DropRule = "drop_rule",
    /// Decoded by Totem (which may still ignore it, e.g. a packet of another ring).
    /// Every datagram received is counted once in here or in one `drop_*` counter.
    PacketsAccepted = "packets_accepted",
    /// Client sessions open now.
    ClientsConnected = "clients_connected",
    ClientsOpened = "clients_opened",
    ClientsClosed = "clients_closed",
    /// Connections refused (credentials, version, limits).
    ClientsRefused = "clients_refused",
    /// Sessions cut off for breaking the ring protocol or not consuming events.
    ClientsFaulted = "clients_faulted",
    /// Multicasts taken from clients' submit rings.
    ClientMessages = "client_messages",
    ClientBytes = "client_bytes",
    /// Events written to clients' event rings.
    ClientEvents = "client_events",
    /// Times a client's multicast waited in its ring (Totem queue full or sync).
    ClientTryAgain = "client_try_again",
    /// Deliveries copied into the shared delivery pool (once for all local receivers).
    PoolPlaced = "pool_placed",
    /// Deliveries sent to a receiver by descriptor into the pool.
    PoolDescriptors = "pool_descriptors",
    /// Pool-sized deliveries sent inline instead (pool full, receiver over its share).
    PoolInlineFallbacks = "pool_inline_fallbacks",
    /// Packets Totem sent to its own node (the token of a one-node ring), handed back to
    /// it directly instead of through the kernel (counted in `packets_in` too, not in
    /// `packets_out`).
    PacketsToSelf = "packets_to_self",
    /// Local multicasts copied from a submit ring straight into the pool (Totem sends
    /// them from there, local receivers read them there); a retry after TryAgain counts
    /// again.
    PoolSent = "pool_sent",
    /// Application payload bytes copied by the engine: from submit rings (once per
    /// message), into datagrams (messages under `pack_by_reference_min`), to reassemble
    /// fragments, into event rings and into the delivery pool, and received datagrams
    /// out of the kernel's provided buffers (whole, headers included). Divided by the bytes
    /// multicast, the engine's copies per message.
    PayloadBytesCopied = "payload_bytes_copied",
    /// Application bytes that went into datagrams by reference (no copy).
    BytesPackedByReference = "bytes_packed_by_reference",
    /// Messages clients wrote into their send buffers and named by reference.
    SendBufferMessages = "send_buffer_messages",
    /// Datagrams kept where the kernel received them, in the delivery pool (their
    /// messages are delivered to local clients from there, no copy).
    DatagramsInPool = "datagrams_in_pool",
    /// Datagram sends with `SENDMSG_ZC` (`send_zerocopy_bytes`), and those of them the
    /// kernel had to copy after all (loopback, or a device without scatter-gather).
    SendsZerocopy = "sends_zerocopy",
    SendsZerocopyCopied = "sends_zerocopy_copied",
    /// Tokens forwarded in the engine iteration that received them, and the time summed
    /// over them from the engine seeing the token's datagram to handing the token it
    /// forwards to the kernel (the engine's share of a token hop; its mean is
    /// `token_hop_ns / token_hops`).
    TokenHops = "token_hops",
    TokenHopNs = "token_hop_ns",
    /// Sends of a run of datagrams as one (`UDP_SEGMENT`), and the datagrams they carried
    /// (each counted in `packets_out` too).
    SendsSegmented = "sends_segmented",
    SegmentsSent = "segments_sent",
    /// Receives that carried a run of datagrams coalesced by the kernel (`UDP_GRO`);
    /// each datagram counts in `packets_in`.
    ReceivesCoalesced = "receives_coalesced",
}

impl Counter {
    /// A level that goes up and down (sessions open now), not a running total.
    pub fn is_gauge(self) -> bool {
        self == Counter::ClientsConnected
    }
}

/// State codes as stored in the page (Totem's node states).
pub const STATE_OPERATIONAL: u64 = 0;
pub const STATE_GATHER: u64 = 1;
pub const STATE_COMMIT: u64 = 2;
pub const STATE_RECOVERY: u64 = 3;
/// The node left the ring (a clean shutdown).
pub const STATE_LEFT: u64 = u64::MAX;

/// The name of a stored state code.
pub fn state_name(code: u64) -> &'static str {
    match code {
        0 => "operational",
        1 => "gather",
        2 => "commit",
        3 => "recovery",
        u64::MAX => "left",
        _ => "unknown",
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a stats page cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be opened, sized or mapped.
    #[error("stats page {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Not a stats page of this version (or the engine has not finished creating it).
    #[error("stats page {path}: not a ringcast stats page of version {VERSION}")]
    Layout { path: String },
}

/// The engine's side: owns the mapping and writes the counters.
pub struct StatsWriter {
    map: MmapMut,
    /// Local copy of the ring section, to rewrite it only when it changed.
    last_ring: Option<(RingId, u64, Vec<NodeId>)>,
}

impl std::fmt::Debug for StatsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsWriter").finish_non_exhaustive()
    }
}

impl StatsWriter {
    /// Creates (or replaces) the page at `path`.
    pub fn create(
        path: &Path,
        node_id: NodeId,
        cluster_id: u32,
    ) -> Result<StatsWriter, StatsError> {
        let io = |source| StatsError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // A new inode, so that a reader still mapping a previous engine's page keeps
        // reading that one (frozen) instead of a half-initialised one.
        let tmp = path.with_extension("new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        file.set_len(PAGE_BYTES as u64).map_err(io)?;
        // SAFETY: the file was just created by this process with this size; nothing else
        // truncates it while mapped (readers open it read-only). All access to the
        // mapping goes through atomics (`StatsPage`).
        let map = unsafe { MmapOptions::new().len(PAGE_BYTES).map_mut(&file) }.map_err(io)?;
        let writer = StatsWriter {
            map,
            last_ring: None,
        };
        let page = writer.page();
        page.version.store(VERSION, Ordering::Relaxed);
        page.page_bytes.store(PAGE_BYTES as u32, Ordering::Relaxed);
        page.counter_slots
            .store(COUNTER_SLOTS as u32, Ordering::Relaxed);
        page.member_slots
            .store(MEMBER_SLOTS as u32, Ordering::Relaxed);
        page.node_id.store(node_id, Ordering::Relaxed);
        page.cluster_id.store(cluster_id, Ordering::Relaxed);
        page.pid.store(std::process::id(), Ordering::Relaxed);
        let now = unix_ms();
        page.start_unix_ms.store(now, Ordering::Relaxed);
        page.heartbeat_unix_ms.store(now, Ordering::Relaxed);
        page.state.store(STATE_GATHER, Ordering::Relaxed);
        page.magic.store(MAGIC, Ordering::Release);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(writer)
    }

    fn page(&self) -> &StatsPage {
        // SAFETY: the mapping is PAGE_BYTES long (≥ size_of::<StatsPage>()), page-aligned
        // (≥ align_of), lives as long as `self`, and StatsPage consists of atomics only,
        // for which every bit pattern is valid and shared access is allowed.
        unsafe { &*self.map.as_ptr().cast::<StatsPage>() }
    }

    pub fn add(&self, counter: Counter, n: u64) {
        let slot = &self.page().counters[counter as usize];
        // Single writer: a load and a store are enough (no read-modify-write needed).
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn set(&self, counter: Counter, value: u64) {
        self.page().counters[counter as usize].store(value, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.page().counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Records the heartbeat (call about once a second or more often).
    pub fn heartbeat(&self) {
        self.page()
            .heartbeat_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
    }

    pub fn set_send_queue_len(&self, len: usize) {
        self.page()
            .send_queue_len
            .store(len as u64, Ordering::Relaxed);
    }

    /// Publishes the ring, its members and the node's state code (seqlock).
    pub fn set_ring(&mut self, ring_id: RingId, code: u64, members: &[NodeId]) {
        let unchanged = self
            .last_ring
            .as_ref()
            .is_some_and(|(id, s, m)| *id == ring_id && *s == code && m.as_slice() == members);
        if unchanged {
            return;
        }
        let page = self.page();
        let version = page.ring_version.load(Ordering::Relaxed);
        page.ring_version
            .store(version.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        page.ring_rep.store(ring_id.rep.into(), Ordering::Relaxed);
        page.ring_seq.store(ring_id.seq, Ordering::Relaxed);
        page.state.store(code, Ordering::Relaxed);
        let shown = members.len().min(MEMBER_SLOTS);
        for (slot, member) in page.members.iter().zip(&members[..shown]) {
            slot.store(*member, Ordering::Relaxed);
        }
        page.member_count.store(shown as u64, Ordering::Relaxed);
        page.ring_version
            .store(version.wrapping_add(2), Ordering::Release);
        self.last_ring = Some((ring_id, code, members.to_vec()));
    }
}

/// A consistent copy of a stats page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub node_id: NodeId,
    pub cluster_id: u32,
    pub pid: u32,
    pub start_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    pub ring_id: RingId,
    pub state: u64,
    pub members: Vec<NodeId>,
    pub send_queue_len: u64,
    /// Every known counter with its name, in slot order.
    pub counters: Vec<(&'static str, u64)>,
}

impl Snapshot {
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// The outside side (`ringcast status`, tests): maps the page read-only.
pub struct StatsReader {
    map: Mmap,
}

impl StatsReader {
    pub fn open(path: &Path) -> Result<StatsReader, StatsError> {
        let io = |source| StatsError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < PAGE_BYTES as u64 {
            return Err(StatsError::Layout {
                path: path.display().to_string(),
            });
        }
        // SAFETY: mapped read-only; the engine never shrinks the file (it replaces it by
        // rename), so the PAGE_BYTES mapped stay backed. Access is through atomics.
        let map = unsafe { MmapOptions::new().len(PAGE_BYTES).map(&file) }.map_err(io)?;
        let reader = StatsReader { map };
        let page = reader.page();
        if page.magic.load(Ordering::Acquire) != MAGIC
            || page.version.load(Ordering::Relaxed) != VERSION
            || page.page_bytes.load(Ordering::Relaxed) as usize != PAGE_BYTES
        {
            return Err(StatsError::Layout {
                path: path.display().to_string(),
            });
        }
        Ok(reader)
    }

    fn page(&self) -> &StatsPage {
        // SAFETY: as in `StatsWriter::page`: PAGE_BYTES long, page-aligned, atomics only,
        // alive as long as `self`. The mapping is read-only and only loads are done.
        unsafe { &*self.map.as_ptr().cast::<StatsPage>() }
    }

    pub fn snapshot(&self) -> Snapshot {
        let page = self.page();
        let (ring_id, state, members, _) = loop {
            let before = page.ring_version.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let ring_id = RingId {
                rep: page.ring_rep.load(Ordering::Relaxed) as NodeId,
                seq: page.ring_seq.load(Ordering::Relaxed),
            };
            let state = page.state.load(Ordering::Relaxed);
            let count = (page.member_count.load(Ordering::Relaxed) as usize).min(MEMBER_SLOTS);
            let members: Vec<NodeId> = page.members[..count]
                .iter()
                .map(|m| m.load(Ordering::Relaxed))
                .collect();
            std::sync::atomic::fence(Ordering::Acquire);
            if page.ring_version.load(Ordering::Relaxed) == before {
                break (ring_id, state, members, before);
            }
        };
        Snapshot {
            node_id: page.node_id.load(Ordering::Relaxed),
            cluster_id: page.cluster_id.load(Ordering::Relaxed),
            pid: page.pid.load(Ordering::Relaxed),
            start_unix_ms: page.start_unix_ms.load(Ordering::Relaxed),
            heartbeat_unix_ms: page.heartbeat_unix_ms.load(Ordering::Relaxed),
            ring_id,
            state,
            members,
            send_queue_len: page.send_queue_len.load(Ordering::Relaxed),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name(), page.counters[*c as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// Milliseconds since the Unix epoch now (to age a heartbeat).
pub fn now_unix_ms() -> u64 {
    unix_ms()
}

/// The stats page a node with this state dir and id writes.
pub fn page_path(state_dir: &Path, node_id: NodeId) -> std::path::PathBuf {
    state_dir.join(format!("stats_{node_id}"))
}

/// A heartbeat older than this means the engine is not running its loop: the engine
/// refreshes it at least every 250 ms (its longest sleep), so this leaves room for a
/// loaded host without passing off a dead engine's figures as current.
pub const STALE_AFTER_MS: u64 = 3000;

/// Whether a page's figures describe a running engine.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The engine's process exists and its heartbeat is recent.
    Live,
    /// The engine left the ring (a clean shutdown); the figures are its last ones.
    Left,
    /// No process has the engine's pid any more.
    ProcessGone { pid: u32 },
    /// The heartbeat is older than [`STALE_AFTER_MS`] (a hung or stopped engine, or
    /// the pid reused by another process).
    NoHeartbeat { age_ms: u64 },
}

impl Liveness {
    pub fn is_live(self) -> bool {
        self == Liveness::Live
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Liveness::Live => write!(f, "live"),
            Liveness::Left => write!(f, "the engine has left the ring and stopped"),
            Liveness::ProcessGone { pid } => write!(f, "engine process {pid} is gone"),
            Liveness::NoHeartbeat { age_ms } => {
                write!(f, "no heartbeat for {:.1} s", *age_ms as f64 / 1000.0)
            }
        }
    }
}

impl Snapshot {
    /// Milliseconds since the engine's last heartbeat, at `now_unix_ms`.
    pub fn heartbeat_age_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.heartbeat_unix_ms)
    }

    /// Whether the engine that wrote this page still runs: its pid exists (as seen in
    /// `proc_dir`, normally `/proc`) and its heartbeat is recent at `now_unix_ms`.
    pub fn liveness_at(&self, proc_dir: &Path, now_unix_ms: u64) -> Liveness {
        if self.state == STATE_LEFT {
            return Liveness::Left;
        }
        if self.pid == 0 || !proc_dir.join(self.pid.to_string()).exists() {
            return Liveness::ProcessGone { pid: self.pid };
        }
        let age_ms = self.heartbeat_age_ms(now_unix_ms);
        if age_ms > STALE_AFTER_MS {
            return Liveness::NoHeartbeat { age_ms };
        }
        Liveness::Live
    }

    /// [`Snapshot::liveness_at`] for this host, now.
    pub fn liveness(&self) -> Liveness {
        self.liveness_at(Path::new("/proc"), unix_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree() {
        let dir = std::env::temp_dir().join(format!("ringcast-stats-{}", std::process::id()));
        let path = dir.join("stats_4");
        let mut w = StatsWriter::create(&path, 4, 99).unwrap();
        let r = StatsReader::open(&path).unwrap();
        w.add(Counter::PacketsIn, 3);
        w.add(Counter::PacketsIn, 2);
        w.set(Counter::TokenRotations, 77);
        w.set_ring(RingId { rep: 1, seq: 8 }, STATE_OPERATIONAL, &[1, 2, 4]);
        let s = r.snapshot();
        assert_eq!(
            (s.node_id, s.cluster_id, s.pid),
            (4, 99, std::process::id())
        );
        assert_eq!(s.counter("packets_in"), Some(5));
        assert_eq!(s.counter("token_rotations"), Some(77));
        assert_eq!(s.ring_id, RingId { rep: 1, seq: 8 });
        assert_eq!(state_name(s.state), "operational");
        assert_eq!(s.members, vec![1, 2, 4]);
        // A restarted engine replaces the page; an old reader keeps the old one.
        let w2 = StatsWriter::create(&path, 4, 99).unwrap();
        w2.add(Counter::PacketsIn, 1);
        assert_eq!(r.snapshot().counter("packets_in"), Some(5));
        let r2 = StatsReader::open(&path).unwrap();
        assert_eq!(r2.snapshot().counter("packets_in"), Some(1));
        // This process writes it and heartbeats: live; then its figures go stale.
        let s = r2.snapshot();
        let proc_dir = Path::new("/proc");
        assert_eq!(s.liveness(), Liveness::Live);
        let later = s.heartbeat_unix_ms + STALE_AFTER_MS + 1;
        assert!(matches!(
            s.liveness_at(proc_dir, later),
            Liveness::NoHeartbeat { .. }
        ));
        let gone = Snapshot {
            pid: u32::MAX,
            ..s.clone()
        };
        assert_eq!(
            gone.liveness_at(proc_dir, s.heartbeat_unix_ms),
            Liveness::ProcessGone { pid: u32::MAX }
        );
        let mut w2 = w2;
        w2.set_ring(RingId { rep: 4, seq: 9 }, STATE_LEFT, &[]);
        assert_eq!(r2.snapshot().liveness(), Liveness::Left);
        std::fs::write(dir.join("junk"), [0u8; PAGE_BYTES]).unwrap();
        assert!(matches!(
            StatsReader::open(&dir.join("junk")),
            Err(StatsError::Layout { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
