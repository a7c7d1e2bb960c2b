//! Client sessions: the control socket (handshake with credentials, synchronous
//! requests, liveness), each session's shared region, and the glue between the rings
//! and the CPG service.
//!
//! A client connects to the `SOCK_SEQPACKET` socket and says `Hello`; the engine checks
//! `SO_PEERCRED` against the allowed users and groups, creates the session's region
//! (huge pages when reserved), and answers `Welcome` with three descriptors: the region,
//! the client's eventfd (what `cpg_fd_get` returns) and the engine's eventfd. From then
//! on multicasts travel on the submit ring and every event on the event ring; the socket
//! carries only the rare synchronous requests and, by its EOF, the client's death.
//!
//! Ordering: before a join, leave or finalize is acted on, the session's submit ring is
//! drained into the service, so a request never overtakes the messages sent before it.
//!
//! Back-pressure: a multicast the service refuses (Totem's queue is full, or a sync is
//! running) stays at the head of the submit ring; the client sees `TRY_AGAIN` once its
//! ring is full. Nothing accepted into a ring is ever dropped. Events a client does not
//! consume wait in a bounded backlog; past its limit the client is disconnected, and
//! while any backlog is over half its limit the engine stops taking new multicasts from
//! its local clients.

pub mod delivery_placement;
pub mod id_map;
pub mod session;
pub mod slot_set;

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

use crate::cpg::{self, ConnId, CpgError, GroupName, IterationKind, Service, TotemSubmit};
use crate::totem::{Event, Guarantee, Instant, Node, NodeId};
use delivery_placement::DeliveryPlacement;
use ringcast_shm::delivery_pool::PoolBuffer;
use session::AssemblyBuf;
use session::{Assembly, BacklogLimits, MAX_ITERATIONS, Outgoing, Ready, Session, SessionFault};

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
    pub backlog: BacklogLimits,
    pub cpg: cpg::Limits,
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

/// Every session of this engine, the listening socket and the CPG service.
#[derive(Debug)]
pub struct Ipc {
    config: IpcConfig,
    listener: SeqPacket,
    /// Indexed by slot; a slot's io_uring user data carries its generation.
    slots: Vec<Option<Session>>,
    generations: Vec<u32>,
    next_conn: u64,
    pub service: Service,
    engine_wake: std::os::fd::OwnedFd,
    own_uid: u32,
    stats: IpcStats,
    /// Sessions whose rings the engine should look at first (they have work queued).
    recv_buf: Box<[u8]>,
    /// True while any backlog is over half its limit (local senders are held back).
    throttled: bool,
    /// (slot, generation) of sessions closed since [`Ipc::take_closed`]: their socket
    /// polls must be cancelled (the generation, because the slot may already be reused).
    closed: Vec<(usize, u32)>,
    /// The last ring poll stopped at a record Totem or the service refused.
    blocked: bool,
    /// Rotates the session polled first (fairness when Totem pushes back).
    next_poll: usize,
    /// The slot of each open session, for routing the service's events.
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
    /// Listens at the configured path (creating its directory) and prepares the service.
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
        let service = Service::new(local, config.cpg);
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
            service,
            engine_wake,
            own_uid,
            stats: IpcStats::default(),
            recv_buf: vec![0u8; MAX_SOCKET_MESSAGE_BYTES].into_boxed_slice(),
            throttled: false,
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
                let refusal = Welcome::refusal(Status::NoResources, self.service.local_node());
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

    fn allowed(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == self.own_uid
            || self.config.allowed_uids.contains(&uid)
            || self.config.allowed_gids.contains(&gid)
    }

    /// The socket of `slot` is readable: every queued request (or EOF). Returns false
    /// when the session was closed (its poll must be cancelled).
    pub fn on_readable(&mut self, slot: usize, node: &mut Node, now: Instant) -> bool {
        // A client has at most one request outstanding; the bound only guards against
        // one that ignores that.
        for _ in 0..64 {
            match self.one_request(slot, node, now) {
                Some(true) => continue,
                Some(false) => return false,
                None => return true,
            }
        }
        true
    }

    /// Handles one request. `None` when nothing is queued, `Some(false)` when the
    /// session was closed.
    fn one_request(&mut self, slot: usize, node: &mut Node, now: Instant) -> Option<bool> {
        let Some(session) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return Some(false);
        };
        let request = match session.socket.recv(&mut self.recv_buf) {
            Ok(Some((n, _fds))) => Request::decode(&self.recv_buf[..n]),
            Ok(None) => {
                self.close(slot, node, now, "client closed");
                return Some(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                tracing::debug!(error = %e, "client socket error");
                self.close(slot, node, now, "socket error");
                return Some(false);
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed request; closing the session");
                self.stats.sessions_faulted += 1;
                self.close(slot, node, now, "malformed request");
                return Some(false);
            }
        };
        let ready = self.slots[slot].as_ref().is_some_and(|s| s.ready.is_some());
        Some(match (ready, request) {
            (false, Request::Hello { version, pid }) => self.hello(slot, version, pid, node, now),
            (false, _) | (true, Request::Hello { .. }) => {
                self.reply(slot, Reply::Status(Status::BadHandle));
                self.close(slot, node, now, "request out of sequence");
                false
            }
            (true, Request::Finalize) => {
                let _ = self.drain_submit(slot, node, now, true);
                self.reply(slot, Reply::Status(Status::Ok));
                self.close(slot, node, now, "finalized");
                false
            }
            (true, request) => {
                let reply = self.request(slot, request, node, now);
                self.reply(slot, reply);
                self.slots[slot].is_some()
            }
        })
    }

    fn hello(
        &mut self,
        slot: usize,
        version: u32,
        pid: u32,
        node: &mut Node,
        now: Instant,
    ) -> bool {
        let Some(session) = self.slots[slot].as_ref() else {
            return false;
        };
        let cred = session.cred;
        let conn = session.conn;
        if version != proto::PROTOCOL_VERSION {
            return self.refuse(
                slot,
                Status::Version,
                "protocol version mismatch",
                node,
                now,
            );
        }
        if !self.allowed(cred.uid, cred.gid) {
            return self.refuse(slot, Status::Access, "user not allowed", node, now);
        }
        // The pid the client reports is only a label in membership lists; the kernel's
        // is what we trust when they differ (a client inside another pid namespace).
        let pid = if cred.pid > 0 { cred.pid as u32 } else { pid };
        let huge = if self.config.huge_pages {
            HugePages::Try
        } else {
            HugePages::Never
        };
        let region = match Region::create(&format!("client-{conn}"), &self.config.region, huge) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a client region");
                return self.refuse(slot, Status::NoMemory, "region creation failed", node, now);
            }
        };
        let wake = match EventFd::new() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "eventfd");
                return self.refuse(slot, Status::NoResources, "eventfd failed", node, now);
            }
        };
        if let Err(e) = self.service.connect(conn, pid) {
            return self.refuse(
                slot,
                status_of(e),
                "service refused the connection",
                node,
                now,
            );
        }
        let mut fds = vec![region.fd(), wake.as_fd(), self.engine_wake.as_fd()];
        if let Some(pool) = &self.placement {
            fds.push(pool.pool().fd());
        }
        // Trusted senders: a slab of the pool to write messages in (none when the pool
        // cannot spare one: the client then sends as any other).
        let slab = match (&self.placement, self.config.trusted_slab_bytes) {
            (Some(pool), bytes) if bytes > 0 => {
                let slab = pool.pool().alloc_raw(bytes).map(|offset| (offset, bytes));
                if slab.is_none() {
                    tracing::warn!(conn, bytes, "no room in the delivery pool for a send slab");
                }
                slab
            }
            _ => None,
        };
        if let Some((offset, len)) = slab {
            self.slabs.insert(
                conn,
                SendSlab {
                    offset,
                    len,
                    outstanding: 0,
                    closed: false,
                },
            );
        }
        let welcome = Welcome {
            status: Status::Ok,
            version: proto::PROTOCOL_VERSION,
            node_id: self.service.local_node(),
            max_message_bytes: self.config.cpg.max_message_bytes as u64,
            delivery_pool_bytes: self.placement.as_ref().map_or(0, |p| p.pool().len() as u64),
            send_slab_offset: slab.map_or(0, |s| s.0),
            send_slab_bytes: slab.map_or(0, |s| s.1 as u64),
            send_header_room: cpg::MCAST_HEADER_MAX as u32,
        };
        let sent = self.slots[slot]
            .as_ref()
            .map(|s| s.socket.send(&welcome.encode(), &fds));
        let Some(mut ready) = Ready::new(region.clone(), wake) else {
            unreachable!("a fresh region hands out each ring end once");
        };
        ready.slab = slab;
        if !matches!(sent, Some(Ok(()))) {
            self.service.disconnect(
                conn,
                &mut TotemSubmit {
                    node: &mut *node,
                    now,
                },
            );
            self.close(slot, node, now, "welcome not delivered");
            return false;
        }
        region.set_client_pid(pid);
        if let Some(s) = self.slots[slot].as_mut() {
            s.ready = Some(ready);
        }
        self.stats.sessions_opened += 1;
        tracing::info!(
            conn,
            pid,
            uid = cred.uid,
            huge_pages = region.huge_pages(),
            "client connected"
        );
        true
    }

    fn refuse(
        &mut self,
        slot: usize,
        status: Status,
        why: &str,
        node: &mut Node,
        now: Instant,
    ) -> bool {
        if let Some(s) = self.slots[slot].as_ref() {
            tracing::warn!(pid = s.cred.pid, uid = s.cred.uid, why, "client refused");
        }
        self.stats.sessions_refused += 1;
        self.reply_welcome(slot, status, &[]);
        self.close(slot, node, now, why);
        false
    }

    fn request(&mut self, slot: usize, request: Request, node: &mut Node, now: Instant) -> Reply {
        let conn = match self.slots[slot].as_ref() {
            Some(s) => s.conn,
            None => return Reply::Status(Status::BadHandle),
        };
        match request {
            Request::Join { flags, name } => {
                if flags & !1 != 0 {
                    return Reply::Status(Status::InvalidParam);
                }
                self.group_change(slot, &name, node, now, |service, group, totem| {
                    service.join(conn, group, flags & 1 != 0, totem)
                })
            }
            Request::Leave { name } => {
                self.group_change(slot, &name, node, now, |service, group, totem| {
                    service.leave(conn, group, totem)
                })
            }
            Request::Membership { name } => match GroupName::new(&name) {
                Ok(group) => Reply::Membership {
                    status: Status::Ok,
                    members: self
                        .service
                        .membership(&group)
                        .into_iter()
                        .map(|m| WireMember {
                            node: m.node,
                            pid: m.pid,
                        })
                        .collect(),
                },
                Err(e) => Reply::Membership {
                    status: status_of(e),
                    members: Vec::new(),
                },
            },
            Request::LocalGet => Reply::LocalGet {
                status: Status::Ok,
                node: self.service.local_node(),
            },
            Request::IterInit { kind, name } => self.iter_init(slot, kind, name),
            Request::IterNext { iter, index } => self.iter_next(slot, iter, index),
            Request::IterFinalize { iter } => {
                let Some(ready) = self.ready_mut(slot) else {
                    return Reply::Status(Status::BadHandle);
                };
                let before = ready.iterations.len();
                ready.iterations.retain(|(id, _)| *id != iter);
                Reply::Status(if ready.iterations.len() < before {
                    Status::Ok
                } else {
                    Status::BadHandle
                })
            }
            Request::Nodes => Reply::Nodes {
                status: Status::Ok,
                ring: node.members().to_vec(),
                nodes: (self.config.nodes.iter())
                    .map(|(id, addr)| proto::WireNode {
                        node: *id,
                        addr: addr.to_string().into_bytes(),
                    })
                    .collect(),
            },
            Request::Hello { .. } | Request::Finalize => Reply::Status(Status::BadHandle),
        }
    }

    /// A join or leave: the session's earlier multicasts go first (drained from its
    /// ring), then `change` on the named group.
    fn group_change(
        &mut self,
        slot: usize,
        name: &[u8],
        node: &mut Node,
        now: Instant,
        change: impl FnOnce(&mut Service, &GroupName, &mut TotemSubmit<'_>) -> Result<(), CpgError>,
    ) -> Reply {
        if !self.drain_submit(slot, node, now, true) {
            return Reply::Status(Status::TryAgain);
        }
        let group = match GroupName::new(name) {
            Ok(g) => g,
            Err(e) => return Reply::Status(status_of(e)),
        };
        let mut totem = TotemSubmit { node, now };
        Reply::Status(match change(&mut self.service, &group, &mut totem) {
            Ok(()) => Status::Ok,
            Err(e) => {
                if e == CpgError::TooManyMembers {
                    // Debug, not warn: a client can repeat the refused join at will.
                    tracing::debug!(
                        group = %String::from_utf8_lossy(name),
                        limit = self.config.cpg.max_members_per_group,
                        "join refused: the group is full (ipc.max_members_per_group)"
                    );
                }
                status_of(e)
            }
        })
    }

    fn iter_init(&mut self, slot: usize, kind: u32, name: Option<Vec<u8>>) -> Reply {
        let refused = |status| Reply::IterInit {
            status,
            iter: 0,
            total: 0,
        };
        let kind = match proto::IterKind::from_u32(kind) {
            Some(proto::IterKind::NameOnly) => IterationKind::NameOnly,
            Some(proto::IterKind::OneGroup) => IterationKind::OneGroup,
            Some(proto::IterKind::All) => IterationKind::All,
            None => return refused(Status::InvalidParam),
        };
        let group = match name.as_deref().map(GroupName::new).transpose() {
            Ok(g) => g,
            Err(e) => return refused(status_of(e)),
        };
        let snapshot = match self.service.iterate(kind, group.as_ref()) {
            Ok(s) => s,
            Err(e) => return refused(status_of(e)),
        };
        let Some(ready) = self.ready_mut(slot) else {
            return refused(Status::BadHandle);
        };
        if ready.iterations.len() >= MAX_ITERATIONS {
            return refused(Status::NoResources);
        }
        let id = ready.next_iteration;
        ready.next_iteration = ready.next_iteration.wrapping_add(1).max(1);
        let total = snapshot.len() as u32;
        ready.iterations.push((id, snapshot));
        Reply::IterInit {
            status: Status::Ok,
            iter: id,
            total,
        }
    }

    fn iter_next(&mut self, slot: usize, iter: u32, index: u32) -> Reply {
        let Some(ready) = self.ready_mut(slot) else {
            return Reply::Status(Status::BadHandle);
        };
        let Some((_, snapshot)) = ready.iterations.iter().find(|(id, _)| *id == iter) else {
            return Reply::IterNext {
                status: Status::BadHandle,
                entries: Vec::new(),
            };
        };
        let start = (index as usize).min(snapshot.len());
        let entries = snapshot[start..]
            .iter()
            .take(ITER_BATCH)
            .map(|(g, m)| IterEntry {
                name: g.as_bytes().to_vec(),
                node: m.node,
                pid: m.pid,
            })
            .collect();
        Reply::IterNext {
            status: Status::Ok,
            entries,
        }
    }

    fn ready_mut(&mut self, slot: usize) -> Option<&mut Ready> {
        self.slots.get_mut(slot)?.as_mut()?.ready.as_mut()
    }

    fn reply(&mut self, slot: usize, reply: Reply) {
        if let Some(s) = self.slots[slot].as_ref() {
            // A client that does not read its replies gets EAGAIN here after 200 KiB of
            // them; it is broken and will notice the closed socket.
            if let Err(e) = s.socket.send(&reply.encode(), &[]) {
                tracing::debug!(error = %e, "reply not delivered");
            }
        }
    }

    fn reply_welcome(&mut self, slot: usize, status: Status, fds: &[BorrowedFd<'_>]) {
        let welcome = Welcome::refusal(status, self.service.local_node());
        if let Some(s) = self.slots[slot].as_ref() {
            let _ = s.socket.send(&welcome.encode(), fds);
        }
    }

    /// Frees a closed client's slab when no message in it is held any more.
    fn free_idle_slab(&mut self, conn: ConnId) {
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
    fn hand_back_released(&mut self, node: &mut Node, now: Instant) {
        let Some(pool) = &self.placement else {
            return;
        };
        let released = pool.pool().take_released();
        let limits = self.config.backlog;
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
                        .map(|ready| ready.push_event(Outgoing::Released(offset), limits));
                    if let Some(Err(e)) = pushed {
                        self.fault(slot, e, node, now);
                    }
                }
                None => self.free_idle_slab(conn),
            }
        }
    }

    /// Ends a session: PROCDOWN for its member (if any), socket closed.
    fn close(&mut self, slot: usize, node: &mut Node, now: Instant, why: &str) {
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
            self.service.disconnect(
                session.conn,
                &mut TotemSubmit {
                    node: &mut *node,
                    now,
                },
            );
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
    pub fn drop_session(&mut self, slot: usize, node: &mut Node, now: Instant) {
        self.close(slot, node, now, "socket poll error");
    }

    /// Takes multicasts from every session's submit ring into the service, as far as
    /// Totem accepts them. Returns the number of records taken; sessions that broke
    /// their ring are closed (see [`Ipc::take_closed`]).
    pub fn poll_rings(&mut self, node: &mut Node, now: Instant) -> usize {
        let mut n = 0;
        self.blocked = false;
        let slots = self.slots.len();
        let start = self.next_poll % slots.max(1);
        self.next_poll = self.next_poll.wrapping_add(1);
        for slot in (start..slots).chain(0..start) {
            let Some(ready) = self.slots[slot].as_mut().and_then(|s| s.ready.as_mut()) else {
                continue;
            };
            // While a receiver lags, only a large message already half taken may go on
            // (at most one per session): its sender is stuck in the send until the
            // message is whole. (A sender that is itself the lagging receiver stashes
            // its events meanwhile, see the client's `stash_events`.)
            if self.throttled && ready.assembly.is_none() {
                continue;
            }
            let before = self.stats.client_messages;
            let drained = self.drain_submit_inner(slot, node, now, false);
            n += (self.stats.client_messages - before) as usize;
            if !drained {
                // Totem or the service pushed back: later sessions would be refused too.
                self.blocked = true;
                break;
            }
        }
        n
    }

    /// Whether the engine should look at the sessions again soon although nothing
    /// wakes it: a lagging receiver's progress is seen only by polling its backlog.
    pub fn wants_poll_soon(&self) -> bool {
        self.throttled
    }

    /// Drains `slot`'s submit ring; false when records remain (Totem pushed back).
    fn drain_submit(&mut self, slot: usize, node: &mut Node, now: Instant, all: bool) -> bool {
        let ok = self.drain_submit_inner(slot, node, now, all);
        ok && self.slots[slot].is_some()
    }

    fn drain_submit_inner(
        &mut self,
        slot: usize,
        node: &mut Node,
        now: Instant,
        all: bool,
    ) -> bool {
        // Per call, so one busy client cannot starve the others or the token, and so
        // that what one loop iteration takes (and will deliver to local receivers)
        // stays small next to the backlog limits.
        const BUDGET: usize = 256;
        const BUDGET_BYTES: usize = 4 << 20;
        let max_message = self.config.cpg.max_message_bytes;
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
                    self.close(slot, node, now, "corrupt submit ring");
                    return true;
                }
            };
            if record.kind == proto::submit::RELEASE {
                // Never held back by Totem: releases free pool space for everyone.
                let offset = <[u8; 8]>::try_from(record.payload)
                    .ok()
                    .map(u64::from_le_bytes);
                let held = offset.and_then(|o| Some((o, ready.held.remove(&o)?)));
                match (held, &mut self.placement) {
                    (Some((offset, len)), Some(pool)) => {
                        ready.held_bytes -= len as usize;
                        pool.release(offset);
                        ready.submit.consume();
                        continue;
                    }
                    _ => {
                        let why = "release of a pool buffer it does not hold";
                        tracing::warn!(conn, why, "closing the session");
                        self.stats.sessions_faulted += 1;
                        self.close(slot, node, now, why);
                        return true;
                    }
                }
            }
            // Keep Totem's queue short: what waits belongs in the client's ring, where
            // it costs nothing and back-pressures the client, and what Totem holds
            // will reach local receivers' backlogs whatever happens (so the throttle
            // below their limit must leave room for it).
            if node.send_queue_len() >= TOTEM_QUEUE_MAX_MESSAGES
                || node.send_queue_bytes() >= TOTEM_QUEUE_MAX_BYTES
            {
                self.stats.try_again += 1;
                return false;
            }
            taken_bytes += record.payload.len();
            let mut totem = TotemSubmit {
                node: &mut *node,
                now,
            };
            let outcome = match record.kind {
                proto::submit::MCAST_AGREED | proto::submit::MCAST_SAFE => {
                    let g = if record.kind == proto::submit::MCAST_SAFE {
                        Guarantee::Safe
                    } else {
                        Guarantee::Agreed
                    };
                    take_message(
                        self.placement.as_mut(),
                        &mut self.service,
                        conn,
                        g,
                        record.payload,
                        &mut totem,
                    )
                }
                proto::submit::MCAST_REF => {
                    // A message the client wrote into its region's buffer pool: copied
                    // out (once, as any message) before the record is consumed, which is
                    // what gives the buffer back to the client.
                    let message = message_ref(record.payload).and_then(|(g, m)| {
                        let payload = ready.region.pool_slice(m.offset, m.len);
                        Ok((g, payload.ok_or("bad message buffer reference")?))
                    });
                    match message {
                        Err(why) => Step::Fault(why),
                        Ok((g, payload)) => {
                            let step = take_message(
                                self.placement.as_mut(),
                                &mut self.service,
                                conn,
                                g,
                                payload,
                                &mut totem,
                            );
                            if matches!(step, Step::Taken(_)) {
                                self.stats.send_buffer_messages += 1;
                            }
                            step
                        }
                    }
                }
                proto::submit::MCAST_POOL_REF => {
                    let message = message_ref(record.payload).and_then(|(g, m)| {
                        let within = |(slab, slab_len): (u64, usize)| {
                            let end = m
                                .offset
                                .checked_add(cpg::MCAST_HEADER_MAX as u64)?
                                .checked_add(m.len)?;
                            (m.offset >= slab && end <= slab + slab_len as u64).then_some(())
                        };
                        ready
                            .slab
                            .and_then(within)
                            .ok_or("bad in-place message reference")?;
                        Ok((g, m))
                    });
                    match (message, &self.placement) {
                        (Ok((g, m)), Some(pool)) => {
                            let slab = self.slabs.get_mut(&conn);
                            in_place_message(pool, slab, &mut self.service, conn, g, m, &mut totem)
                        }
                        (Err(why), _) => Step::Fault(why),
                        (Ok(_), None) => Step::Fault("bad in-place message reference"),
                    }
                }
                proto::submit::MCAST_PART => match PartHeader::read(record.payload) {
                    Err(_) => Step::Fault("malformed message piece"),
                    Ok((h, _)) if guarantee_of(h.a).is_err() => Step::Fault(INVALID_GUARANTEE),
                    Ok((h, piece)) => {
                        let g = guarantee_of(h.a).unwrap_or(Guarantee::Agreed);
                        part(
                            &mut ready.assembly,
                            self.placement.as_mut(),
                            &mut self.service,
                            conn,
                            g,
                            h,
                            piece,
                            max_message,
                            &mut totem,
                        )
                    }
                },
                _ => Step::Fault("unknown submit record"),
            };
            match outcome {
                Step::Taken(len) => {
                    ready.submit.consume();
                    self.stats.client_messages += 1;
                    self.stats.client_bytes += len as u64;
                    self.stats.payload_bytes_copied += len as u64;
                    taken += 1;
                }
                Step::TakenInPlace(len) => {
                    ready.submit.consume();
                    self.stats.client_messages += 1;
                    self.stats.client_bytes += len as u64;
                    self.stats.send_buffer_messages += 1;
                    taken += 1;
                }
                Step::Piece | Step::Dropped => {
                    ready.submit.consume();
                    taken += 1;
                }
                Step::Blocked => {
                    self.stats.try_again += 1;
                    return false;
                }
                Step::Fault(why) => {
                    tracing::warn!(conn, why, "closing the session");
                    self.stats.sessions_faulted += 1;
                    self.close(slot, node, now, why);
                    return true;
                }
            }
        }
    }

    /// Feeds one Totem event to the service.
    pub fn handle_totem_event(&mut self, event: Event, node: &mut Node, now: Instant) {
        self.service.handle_totem_event(
            event,
            &mut TotemSubmit {
                node: &mut *node,
                now,
            },
        );
    }

    /// Retries what the service owes Totem, moves the service's events into the
    /// sessions' rings and publishes them. Returns the number of events moved; faulted
    /// sessions are closed (see [`Ipc::take_closed`]).
    pub fn flush_events(&mut self, node: &mut Node, now: Instant) -> usize {
        self.service.poll(&mut TotemSubmit {
            node: &mut *node,
            now,
        });
        self.hand_back_released(node, now);
        let limits = self.config.backlog;
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
                Err(e) => self.fault(slot, e, node, now),
            }
        }
        while let Some((conn, event)) = self.service.poll_event() {
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
            let outgoing = match (event, &mut self.placement) {
                (
                    cpg::ClientEvent::Deliver {
                        group,
                        sender,
                        guarantee,
                        payload,
                    },
                    Some(pool),
                ) if pool.wants(payload.len()) || pool.pool().contains(&payload) => {
                    match pool.place(&payload, ready.held_bytes) {
                        // One delivery per payload per session: a second would be a bug
                        // upstream, so it goes inline rather than confuse the accounting.
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
                            Outgoing::Event(cpg::ClientEvent::Deliver {
                                group,
                                sender,
                                guarantee,
                                payload,
                            })
                        }
                    }
                }
                (event, _) => confchgs.outgoing(event),
            };
            if let Err(e) = ready.push_event(outgoing, limits) {
                self.fault(slot, e, node, now);
            }
        }
        if let Some(pool) = &mut self.placement {
            pool.end_batch();
        }
        // Every session with something to publish or a backlog is dirty; the others
        // have neither (nothing to publish, no backlog toward the throttle).
        let mut throttled = false;
        let mut copied = 0;
        self.dirty.take_into(&mut visiting);
        for &slot in &visiting {
            if let Some(ready) = self.ready_mut(slot) {
                ready.publish();
                copied += std::mem::take(&mut ready.copied_bytes);
                throttled |= ready.backlog_bytes() > limits.max_bytes / 2
                    || ready.backlog_len() > limits.max_events / 2;
                if ready.backlog_len() > 0 {
                    self.dirty.insert(slot);
                }
            }
        }
        self.visiting = visiting;
        self.stats.payload_bytes_copied += copied;
        if throttled != self.throttled {
            tracing::debug!(throttled, "local senders held back by a slow receiver");
        }
        self.throttled = throttled;
        n
    }

    fn fault(&mut self, slot: usize, fault: SessionFault, node: &mut Node, now: Instant) {
        tracing::warn!(slot, error = %fault, "closing the session");
        self.stats.sessions_faulted += 1;
        self.close(slot, node, now, "fault");
    }

    /// Before the engine sleeps: announce it on every submit ring. False if a ring
    /// already has records (do not sleep).
    pub fn prepare_sleep(&mut self) -> bool {
        // Records the engine cannot take now (Totem full, or receivers lagging) must
        // not keep it awake: Totem's progress or `wants_poll_soon` wakes it.
        let rings_matter = !self.throttled && !self.blocked;
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
    pub fn shutdown(&mut self, node: &mut Node, now: Instant) {
        for slot in 0..self.slots.len() {
            self.close(slot, node, now, "engine shutting down");
        }
        let _ = std::fs::remove_file(&self.config.socket_path);
    }
}

/// Most application messages (and bytes) the IPC layer lets wait in Totem's send queue;
/// beyond that, multicasts wait in their submit rings.
const TOTEM_QUEUE_MAX_MESSAGES: usize = 4096;
const TOTEM_QUEUE_MAX_BYTES: usize = 8 << 20;

/// What became of one submit record.
enum Step {
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
fn part(
    assembly: &mut Option<Assembly>,
    pool: Option<&mut DeliveryPlacement>,
    service: &mut Service,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    h: PartHeader,
    piece: &[u8],
    max_message: usize,
    totem: &mut TotemSubmit<'_>,
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
        AssemblyBuf::Pool { buffer, .. } => service.mcast_framed(
            conn,
            a.guarantee,
            len,
            |header| frame(buffer, header, len),
            totem,
        ),
        AssemblyBuf::Heap(buf) => {
            let buf = std::mem::take(buf);
            match service.mcast_in_place(conn, a.guarantee, buf, totem) {
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
const INVALID_GUARANTEE: &str = "invalid guarantee (INVALID_PARAM)";

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
fn message_ref(payload: &[u8]) -> Result<(Guarantee, proto::MessageRef), &'static str> {
    let m = proto::MessageRef::decode(payload).map_err(|_| "malformed message reference")?;
    let g = guarantee_of(m.guarantee).map_err(|_| INVALID_GUARANTEE)?;
    Ok((g, m))
}

/// A trusted sender's message written in place in its slab of the delivery pool: not
/// copied. It becomes a live pool buffer (its release goes back to the client), the CPG
/// header is written into the room in front of it, and Totem takes it from there.
fn in_place_message(
    pool: &DeliveryPlacement,
    slab: Option<&mut SendSlab>,
    service: &mut Service,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    m: proto::MessageRef,
    totem: &mut TotemSubmit<'_>,
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
    let sent = service.mcast_framed(
        conn,
        guarantee,
        len,
        |header| frame(&mut buffer, header, len),
        totem,
    );
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
fn take_message(
    pool: Option<&mut DeliveryPlacement>,
    service: &mut Service,
    conn: cpg::ConnId,
    guarantee: Guarantee,
    payload: &[u8],
    totem: &mut TotemSubmit<'_>,
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
            service.mcast_framed(
                conn,
                guarantee,
                len,
                |header| frame(&mut buffer, header, len),
                totem,
            )
        }
        None => service.mcast(conn, guarantee, &[payload], totem),
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
fn frame(buffer: &mut PoolBuffer, header: &[u8], len: usize) -> Option<bytes::Bytes> {
    let at = cpg::MCAST_HEADER_MAX - header.len();
    buffer
        .write(at, header)
        .then(|| buffer.bytes(at..cpg::MCAST_HEADER_MAX + len))
}

/// The `cs_error_t` a client sees for a service error.
pub fn status_of(e: CpgError) -> Status {
    Status::from_u32(e.cs_error()).unwrap_or(Status::Library)
}
