//! Client sessions: the control socket (handshake with credentials, synchronous
//! requests, liveness), each session's shared region, and the glue between the rings
//! and the host (`crate::host::Host`), which decides everything the clients see.
//!
//! A client connects to the `SOCK_SEQPACKET` socket and says `Hello`; the engine checks
//! `SO_PEERCRED` against the allowed users and groups, creates the session's region
//! (huge pages when reserved), and answers `Welcome` with three descriptors: the region,
//! the client's eventfd (what `cpg_fd_get` returns) and the engine's eventfd. From then
//! on multicasts travel on the submit ring and every event on the event ring; the socket
//! carries only the rare synchronous requests and, by its EOF, the client's death.
//!
//! Ordering: before a join, leave or finalize is acted on, the session's submit ring is
//! drained into the host, so a request never overtakes the messages sent before it.
//!
//! Back-pressure: a multicast the host refuses (Totem's queue is long, a local client
//! lags behind its events, or a sync is running) stays at the head of the submit ring;
//! the client sees `TRY_AGAIN` once its ring is full. Nothing accepted into a ring is
//! ever dropped. Events a client does not consume wait in a backlog whose size is
//! reported to the host after every round; the host decides what it means (senders
//! held back, or the client cut off: `ringcast_proto::host::flow`), and this layer
//! closes the sessions it cuts off.

mod control;
pub mod delivery_placement;
mod events;
mod gs;
pub mod id_map;
pub mod session;
pub mod slot_set;
mod submit;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use ringcast_shm::proto::{
    self, ITER_BATCH, IterEntry, MAX_SOCKET_MESSAGE_BYTES, PART_FIRST, PART_LAST, PartHeader,
    Reply, Request, Status, Welcome, WireGuarantee, WireMember,
};
use ringcast_shm::socket::SeqPacket;
use ringcast_shm::{DeliveryPool, EventFd, HugePages, Region, RegionSpec, RingError};

use crate::cpg::{self, ConnId, CpgError, GroupName, IterationKind};
use crate::host::Host;
use crate::totem::{Guarantee, Instant, NodeId};
use delivery_placement::DeliveryPlacement;
use ringcast_shm::delivery_pool::PoolBuffer;
use session::AssemblyBuf;
use session::{Assembly, MAX_ITERATIONS, Outgoing, Ready, Session, SessionFault};

pub use control::status_of;
pub use submit::guarantee_of;

/// What the IPC layer needs from the configuration.
#[derive(Clone, Debug)]
pub struct IpcConfig {
    pub socket_path: PathBuf,
    /// The nodelist (node id, address), for clients' `Nodes` request (the C cfg API).
    pub nodes: Vec<(NodeId, std::net::SocketAddr)>,
    /// Users allowed to connect besides root and the engine's own user.
    pub allowed_uids: Vec<u32>,
    /// Groups allowed to connect.
    pub allowed_gids: Vec<u32>,
    pub region: RegionSpec,
    pub huge_pages: bool,
    pub max_clients: usize,
    /// Size of the delivery pool shared (read-only) with every client; 0: none.
    pub delivery_pool_bytes: usize,
    /// Deliveries at least this long go through the pool.
    pub delivery_pool_min_bytes: usize,
    /// Trusted senders (`ipc.trusted_senders`): clients map the delivery pool writable
    /// and each gets a slab of it of this many bytes to write its messages in place;
    /// 0: off (the pool is read-only to clients).
    pub trusted_slab_bytes: usize,
}

/// A trusted sender's slab of the delivery pool: freed once its client is gone and no
/// message in it is held any more.
#[derive(Debug)]
struct SendSlab {
    offset: u64,
    len: usize,
    /// Messages adopted from it and not released yet.
    outstanding: usize,
    closed: bool,
}

/// Why the IPC layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket could not be created at the configured path.
    #[error("ipc_socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The region sizes do not work, or the delivery pool could not be created.
    #[error("ipc region: {0}")]
    Region(#[from] ringcast_shm::RegionError),
}

/// Counters of the IPC layer (copied into the stats page by the engine).
#[derive(Copy, Clone, Debug, Default)]
pub struct IpcStats {
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub sessions_refused: u64,
    pub sessions_faulted: u64,
    pub client_messages: u64,
    pub client_bytes: u64,
    pub events_to_clients: u64,
    pub try_again: u64,
    /// Payloads copied into the delivery pool.
    pub pool_placed: u64,
    /// Deliveries sent by descriptor (each pool copy serves one or more).
    pub pool_descriptors: u64,
    /// Pool-sized deliveries that went inline (pool full, receiver over its share).
    pub pool_inline_fallbacks: u64,
    /// Local multicasts taken from a submit ring straight into the pool.
    pub pool_sent: u64,
    /// Payload bytes the engine copied between its clients and Totem: each message
    /// taken from a submit ring (once, into the pool or the heap), each inline delivery
    /// into an event ring, each placement into the pool.
    pub payload_bytes_copied: u64,
    /// Messages taken from clients' send buffers (`MCAST_REF`).
    pub send_buffer_messages: u64,
}

/// Every session of this engine and the listening socket.
#[derive(Debug)]
pub struct Ipc {
    config: IpcConfig,
    listener: SeqPacket,
    /// Indexed by slot; a slot's io_uring user data carries its generation.
    slots: Vec<Option<Session>>,
    generations: Vec<u32>,
    next_conn: u64,
    /// The node's id (clients learn it in `Welcome`).
    local: NodeId,
    engine_wake: std::os::fd::OwnedFd,
    own_uid: u32,
    stats: IpcStats,
    /// Sessions whose rings the engine should look at first (they have work queued).
    recv_buf: Box<[u8]>,
    /// (slot, generation) of sessions closed since [`Ipc::take_closed`]: their socket
    /// polls must be cancelled (the generation, because the slot may already be reused).
    closed: Vec<(usize, u32)>,
    /// The last ring poll stopped at a record the host refused (or held senders back).
    blocked: bool,
    /// Rotates the session polled first (fairness when Totem pushes back).
    next_poll: usize,
    /// The slot of each open session, for routing the host's client events.
    slot_of: id_map::IdMap<usize>,
    /// How deliveries use the delivery pool, when one is configured.
    placement: Option<DeliveryPlacement>,
    /// Trusted senders' slabs, by connection.
    slabs: std::collections::HashMap<ConnId, SendSlab>,
    /// Sessions given events since their last publish, or holding a backlog: the
    /// only ones [`Ipc::flush_events`] visits.
    dirty: slot_set::SlotSet,
    /// Scratch for [`Ipc::flush_events`] (the dirty slots being visited).
    visiting: Vec<usize>,
}

impl Ipc {
    /// Listens at the configured path (creating its directory) and creates the delivery
    /// pool.
    pub fn new(
        config: IpcConfig,
        local: NodeId,
        engine_wake: BorrowedFd<'_>,
    ) -> Result<Ipc, IpcError> {
        config.region.validate()?;
        let path = &config.socket_path;
        let listen_err = |source| IpcError::Listen {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(listen_err)?;
        }
        let listener = SeqPacket::listen(path, 128).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        // Access is decided by SO_PEERCRED, not by the file mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(listen_err)?;
        let engine_wake = engine_wake.try_clone_to_owned().map_err(listen_err)?;
        let slots = (0..config.max_clients).map(|_| None).collect();
        let pool = match config.delivery_pool_bytes {
            0 => None,
            bytes => {
                let huge = if config.huge_pages {
                    HugePages::Try
                } else {
                    HugePages::Never
                };
                let pool = if config.trusted_slab_bytes > 0 {
                    DeliveryPool::create_writable_by_clients(bytes, huge)?
                } else {
                    DeliveryPool::create(bytes, huge)?
                };
                tracing::info!(
                    bytes,
                    huge_pages = pool.huge_pages(),
                    min_bytes = config.delivery_pool_min_bytes,
                    "delivery pool"
                );
                Some(DeliveryPlacement::new(pool, config.delivery_pool_min_bytes))
            }
        };
        // SAFETY: getuid cannot fail and has no preconditions.
        let own_uid = unsafe { libc::getuid() };
        Ok(Ipc {
            generations: vec![0; config.max_clients],
            dirty: slot_set::SlotSet::new(config.max_clients),
            visiting: Vec::with_capacity(config.max_clients),
            config,
            listener,
            slots,
            next_conn: 1,
            local,
            engine_wake,
            own_uid,
            stats: IpcStats::default(),
            recv_buf: vec![0u8; MAX_SOCKET_MESSAGE_BYTES].into_boxed_slice(),
            closed: Vec::new(),
            blocked: false,
            next_poll: 0,
            slot_of: id_map::IdMap::default(),
            placement: pool,
            slabs: std::collections::HashMap::new(),
        })
    }

    /// The delivery pool, for receiving datagrams straight into it (None when off).
    pub fn delivery_pool(&self) -> Option<ringcast_shm::delivery_pool::SharedDeliveryPool> {
        self.placement.as_ref().map(|p| p.pool().clone())
    }

    pub fn stats(&self) -> IpcStats {
        let mut stats = self.stats;
        if let Some(pool) = &self.placement {
            stats.pool_placed = pool.stats.placed;
            stats.pool_descriptors = pool.stats.descriptors;
            stats.pool_inline_fallbacks = pool.stats.inline_fallbacks;
            stats.pool_sent = pool.stats.sent_from_pool;
            stats.payload_bytes_copied += pool.stats.placed_bytes;
        }
        stats
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn sessions(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// `(slot, generation, fd)` of a session, for arming its socket poll.
    pub fn session_fd(&self, slot: usize) -> Option<(u32, RawFd)> {
        let s = self.slots.get(slot)?.as_ref()?;
        Some((self.generations[slot], s.socket.as_raw_fd()))
    }

    /// Sessions closed since the last call, as (slot, generation).
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, (usize, u32)> {
        self.closed.drain(..)
    }

    pub fn is_current(&self, slot: usize, generation: u32) -> bool {
        self.generations.get(slot) == Some(&generation)
            && self.slots.get(slot).is_some_and(|s| s.is_some())
    }

    /// Accepts every pending connection. Returns the slots of new sessions (their
    /// sockets must now be watched).
    pub fn on_accept(&mut self) -> Vec<usize> {
        let mut new = Vec::new();
        loop {
            let socket = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            };
            let cred = match socket.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "SO_PEERCRED failed; connection dropped");
                    continue;
                }
            };
            let Some(slot) = self.slots.iter().position(|s| s.is_none()) else {
                self.stats.sessions_refused += 1;
                tracing::warn!(
                    pid = cred.pid,
                    "too many clients (ipc.max_clients); connection refused"
                );
                // A welcome, which is what the client waits for, saying why. Its hello is
                // read first if it came: closing with unread data resets the connection,
                // and the client could not read the refusal.
                let _ = socket.recv(&mut [0u8; 64]);
                let refusal = Welcome::refusal(Status::NoResources, self.local);
                let _ = socket.send(&refusal.encode(), &[]);
                continue;
            };
            let conn = self.next_conn;
            self.next_conn += 1;
            self.generations[slot] = self.generations[slot].wrapping_add(1);
            self.slot_of.insert(conn, slot);
            self.slots[slot] = Some(Session {
                conn,
                socket,
                cred,
                ready: None,
                slot,
            });
            new.push(slot);
        }
        new
    }

    fn ready_mut(&mut self, slot: usize) -> Option<&mut Ready> {
        self.slots.get_mut(slot)?.as_mut()?.ready.as_mut()
    }

    /// Ends a session: PROCDOWN for its member (if any), socket closed.
    fn close(&mut self, slot: usize, host: &mut Host, now: Instant, why: &str) {
        let Some(session) = self.slots[slot].take() else {
            return;
        };
        self.slot_of.remove(&session.conn);
        self.closed.push((slot, self.generations[slot]));
        if let Some(ready) = &session.ready {
            self.stats.payload_bytes_copied += ready.copied_bytes;
        }
        if let (Some(ready), Some(pool)) = (&session.ready, &mut self.placement) {
            for &offset in ready.held.keys() {
                pool.release(offset);
            }
        }
        // Its slab goes back once nothing holds a message in it.
        if let Some(slab) = self.slabs.get_mut(&session.conn) {
            slab.closed = true;
        }
        self.free_idle_slab(session.conn);
        if session.ready.is_some() {
            host.disconnect(now, session.conn);
            // ha_gs_quit: its GS providers fail (nothing if it never used GS).
            host.gs_disconnect(now, session.conn);
            self.stats.sessions_closed += 1;
            tracing::info!(
                conn = session.conn,
                pid = session.cred.pid,
                why,
                "client gone"
            );
        }
    }

    /// Closes the session in `slot` from outside (the engine saw an error on its poll).
    pub fn drop_session(&mut self, slot: usize, host: &mut Host, now: Instant) {
        self.close(slot, host, now, "socket poll error");
    }

    /// Before the engine sleeps: announce it on every submit ring. False if a ring
    /// already has records (do not sleep).
    pub fn prepare_sleep(&mut self) -> bool {
        // Records the engine cannot take now (the host holds senders back) must not
        // keep it awake: Totem's progress, or the engine's short sleep while senders
        // are held, wakes it.
        let rings_matter = !self.blocked;
        let mut may_sleep = true;
        for slot in 0..self.slots.len() {
            if let Some(ready) = self.ready_mut(slot) {
                if !ready.submit.prepare_sleep() && rings_matter {
                    may_sleep = false;
                }
            }
        }
        if !may_sleep {
            self.cancel_sleep();
        }
        may_sleep
    }

    pub fn cancel_sleep(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(ready) = self.ready_mut(slot) {
                ready.submit.cancel_sleep();
            }
        }
    }

    /// Closes every session (engine shutdown) and removes the socket file.
    pub fn shutdown(&mut self, host: &mut Host, now: Instant) {
        for slot in 0..self.slots.len() {
            self.close(slot, host, now, "engine shutting down");
        }
        let _ = std::fs::remove_file(&self.config.socket_path);
    }
}
