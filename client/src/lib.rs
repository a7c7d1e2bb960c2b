//! `ringcast`: the Rust client of the ringcast engine — Corosync's closed process group
//! API (docs/cpg.md) over shared-memory rings.
//!
//! ```no_run
//! use ringcast::{Cpg, ConnectOptions, Dispatch, Guarantee, Handler, Address};
//!
//! struct Print;
//! impl Handler for Print {
//!     fn deliver(&mut self, _cpg: &Cpg, group: &[u8], node: u32, pid: u32, msg: &[u8]) {
//!         println!("{node}/{pid} in {:?}: {} bytes", group, msg.len());
//!     }
//! }
//!
//! let cpg = Cpg::connect(&ConnectOptions::default())?;
//! cpg.join(b"demo")?;
//! cpg.mcast(Guarantee::Agreed, b"hello")?;
//! cpg.dispatch(Dispatch::One, &mut Print)?;
//! # Ok::<(), ringcast::Error>(())
//! ```
//!
//! A handle is `Send + Sync`: one thread may block in [`Cpg::dispatch`] while others
//! send, query membership or finalize. Callbacks may call any method of the handle
//! except `dispatch` itself.
//!
//! Copies of a payload on the host: the sender writes it once into shared memory
//! ([`Cpg::mcast_with`] lets it build the message in place; [`Cpg::mcast`] copies the
//! caller's slice there), the engine copies it once into Totem's queue and once into
//! each local receiver's event ring, and a receiver's callback reads it in place.

#![deny(unsafe_op_in_unsafe_fn)]

mod error;
pub mod gs;
mod send_buffer;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringcast_shm::delivery_pool::PoolWriter;
use ringcast_shm::proto::{
    self, Confchg, DeliverHeader, DeliverRef, IterEntry, PART_FIRST, PART_LAST, PartHeader, Reply,
    Request, TotemConfchg, Welcome, WireGuarantee, event, submit,
};
use ringcast_shm::send_area::SendArea;
use ringcast_shm::socket::SeqPacket;
use ringcast_shm::{Consumer, DeliveryPoolView, EventFd, Producer, PushError, Region, RingError};

pub use error::{Error, Result, Status};
pub use ringcast_shm::proto::WireAddress as Address;
pub use ringcast_shm::proto::reason;
pub use send_buffer::{RetainedBuffer, SendBuffer};

/// Where an engine run by root listens. Clients default to [`default_socket`] (this one
/// for root, a per-user socket otherwise); `RINGCAST_SOCKET` overrides both.
pub const DEFAULT_SOCKET: &str = ringcast_shm::paths::SYSTEM_SOCKET;
/// The socket of an engine run by this user on built-in defaults
/// (`ringcast_shm::paths`: the engine derives its own default the same way).
pub fn default_socket() -> PathBuf {
    ringcast_shm::paths::socket()
}

/// How long a synchronous request waits for the engine's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking wait checks the event ring this many times with a CPU pause (a few
/// microseconds in all) ...
const SPIN_ROUNDS: u32 = 200;
/// ... then this many times giving up the CPU, before it announces sleep.
const YIELD_ROUNDS: u32 = 20;
/// Bit 0 of the model flags (`CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF`).
pub const DELIVER_INITIAL_TOTEM_CONF: u32 = 1;

/// Delivery guarantee (`cpg_guarantee_t`). UNORDERED, FIFO and AGREED are all delivered
/// in agreed order; SAFE waits until every member holds the message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Guarantee {
    Unordered,
    Fifo,
    Agreed,
    Safe,
}

impl Guarantee {
    fn is_safe(self) -> bool {
        self == Guarantee::Safe
    }
}

/// `cs_dispatch_flags_t` (docs/cpg.md §4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// Wait for one event and handle it.
    One,
    /// Handle every pending event; `Ok` when none is left (never waits).
    All,
    /// Handle events until an error (or until the handle is finalized).
    Blocking,
    /// Handle at most one pending event; `TryAgain` if there was none.
    OneNonBlocking,
}

/// `cpg_flow_control_state_t`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FlowControl {
    Disabled,
    Enabled,
}

/// `cpg_iteration_type_t`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IterationKind {
    NameOnly,
    OneGroup,
    All,
}

/// A ring id (`cpg_ring_id`): representative node and sequence.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingId {
    pub rep: u32,
    pub seq: u64,
}

/// One (node, pid) of a group.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub node: u32,
    pub pid: u32,
}

/// The engine's nodelist and the current ring ([`Cpg::nodes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNodes {
    /// Node id and address (`ip:port`) of every configured node.
    pub nodes: Vec<(u32, String)>,
    /// Members of the current ring.
    pub ring: Vec<u32>,
}

/// One entry of an iteration (`cpg_iteration_description_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub group: Vec<u8>,
    pub node: u32,
    pub pid: u32,
}

/// Callbacks of model V1. Every method has an empty default.
pub trait Handler {
    /// A message of the group; `msg` points into shared memory and is valid only during
    /// the call.
    fn deliver(&mut self, cpg: &Cpg, group: &[u8], node: u32, pid: u32, msg: &[u8]) {
        let _ = (cpg, group, node, pid, msg);
    }
    /// The group's membership changed.
    fn confchg(
        &mut self,
        cpg: &Cpg,
        group: &[u8],
        members: &[Address],
        left: &[Address],
        joined: &[Address],
    ) {
        let _ = (cpg, group, members, left, joined);
    }
    /// The Totem ring changed (every connection gets these, joined or not).
    fn totem_confchg(&mut self, cpg: &Cpg, ring_id: RingId, members: &[u32]) {
        let _ = (cpg, ring_id, members);
    }
}

/// An event with owned data, for the iterator style ([`Cpg::next_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Deliver {
        group: Vec<u8>,
        node: u32,
        pid: u32,
        msg: Vec<u8>,
    },
    Confchg {
        group: Vec<u8>,
        members: Vec<Address>,
        left: Vec<Address>,
        joined: Vec<Address>,
    },
    TotemConfchg {
        ring_id: RingId,
        members: Vec<u32>,
    },
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub socket: PathBuf,
    /// `CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF`: after joining, get a totem confchg
    /// describing the current ring.
    pub initial_totem_conf: bool,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            socket: std::env::var_os("RINGCAST_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(ringcast_shm::paths::socket),
            initial_totem_conf: false,
        }
    }
}

/// The receiving side of a handle, used by one dispatching thread at a time.
struct Receiver {
    events: Consumer,
    /// Records taken off the ring while this handle was stuck in a large send (copies;
    /// handled before the ring). Without this, a sender that is itself a slow
    /// receiver would hold the engine back from taking the rest of its message.
    stashed: std::collections::VecDeque<(u32, Vec<u8>)>,
    stashed_bytes: usize,
    /// A large delivery arriving in pieces.
    assembly: Option<(u32, u32, Vec<u8>, usize)>,
    /// The group of the last confchg: deliveries always fall between a connection's
    /// join and leave confchgs, so this labels them.
    group: Vec<u8>,
    /// We wrote our own eventfd and have not drained it since, so the pollable fd is
    /// readable: while events stay pending, `arm` has nothing to do (no syscall per
    /// dispatch in a stream).
    self_signaled: bool,
    /// Delivery pool buffers read and not yet handed back (the submit ring was busy or
    /// full): sent with the next dispatch.
    releases: Vec<u64>,
}

/// A connection to the engine (`cpg_handle_t`).
pub struct Cpg {
    socket: Mutex<SeqPacket>,
    submit: Mutex<Producer>,
    receiver: Mutex<Receiver>,
    region: Arc<Region>,
    /// The engine's delivery pool, read-only: large deliveries are read in place there.
    delivery_pool: Option<DeliveryPoolView>,
    /// The region's send buffers (see [`SendBuffer`]).
    send_buffers: Mutex<send_buffer::SendBuffers>,
    wake: EventFd,
    engine_wake: EventFd,
    /// epoll over `wake` and the socket: readable when events are pending or the
    /// engine is gone (what `cpg_fd_get` returns).
    poll_fd: OwnedFd,
    node_id: u32,
    max_message_bytes: usize,
    flags: u32,
    context: AtomicUsize,
    finalized: AtomicBool,
    /// Set before the finalize request goes out: the engine then closes the session,
    /// and a dispatching thread that sees that must report `BadHandle`, not `Library`.
    finalizing: AtomicBool,
}

impl std::fmt::Debug for Cpg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpg")
            .field("node_id", &self.node_id)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

/// With trusted senders, `mcast_with` builds messages from this size on in a send buffer
/// of the delivery pool (nothing copies them); smaller ones are cheaper to copy.
const TRUSTED_IN_PLACE_MIN: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a user callback must not make the handle unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn epoll_over(fds: &[RawFd]) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ep` was just created and is owned by nobody else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for &fd in fds {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is valid for the call; `fd` is open for the handle's life.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(ep)
}

/// Waits until `fd` is readable or `timeout` passes; a libc cancellation point.
fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `pfd` is one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}

/// The error for a welcome that turns the client away, saying which limit it hit.
fn refused(status: Status) -> Error {
    let why = match status {
        Status::NoResources => {
            "engine refused the connection: it serves as many clients as it allows \
             (ipc.max_clients)"
        }
        Status::Access => "engine refused the connection: this user is not allowed",
        Status::Version => "engine refused the connection: protocol version mismatch",
        _ => "engine refused the connection",
    };
    Error::with_detail(status, why)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > proto::MAX_NAME_BYTES {
        return Err(Error::new(Status::NameTooLong));
    }
    Ok(())
}

impl Cpg {
    /// Connects to the engine (`cpg_model_initialize`).
    pub fn connect(options: &ConnectOptions) -> Result<Cpg> {
        Cpg::connect_at(&options.socket, options.initial_totem_conf, Duration::ZERO)
    }

    /// [`Cpg::connect`], waiting up to `wait` for an engine that is starting: while the
    /// socket does not exist yet, or nobody accepts on it, this retries every 50 ms.
    pub fn connect_waiting(options: &ConnectOptions, wait: Duration) -> Result<Cpg> {
        Cpg::connect_at(&options.socket, options.initial_totem_conf, wait)
    }

    fn connect_at(path: &Path, initial_totem_conf: bool, wait: Duration) -> Result<Cpg> {
        let deadline = Instant::now() + wait;
        let socket = loop {
            match SeqPacket::connect(path) {
                Ok(socket) => break socket,
                Err(e) => {
                    let absent = matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    );
                    if absent && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    let why = match e.kind() {
                        std::io::ErrorKind::NotFound => "no such socket".to_owned(),
                        std::io::ErrorKind::ConnectionRefused => {
                            "nobody accepts on the socket".to_owned()
                        }
                        _ => e.to_string(),
                    };
                    let waited = if wait.is_zero() {
                        String::new()
                    } else {
                        format!(" after waiting {:.1} s", wait.as_secs_f64())
                    };
                    return Err(Error::with_detail(
                        Status::Library,
                        format!(
                            "no engine at {} ({why}){waited}: is ringcastd running?",
                            path.display()
                        ),
                    ));
                }
            }
        };
        socket
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| Error::from_io(&e, "socket"))?;
        let hello = Request::Hello {
            version: proto::PROTOCOL_VERSION,
            pid: std::process::id(),
        };
        // An engine that turns the client away sends its refusal and closes at once, maybe
        // before the hello is sent: the refusal is still read, as it says why.
        let hello_sent = socket
            .send(&hello.encode(), &[])
            .map_err(|e| Error::from_io(&e, "hello"));
        let mut buf = vec![0u8; proto::MAX_SOCKET_MESSAGE_BYTES];
        let received = socket.recv(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset => Error::with_detail(
                Status::Library,
                "engine reset the connection before its welcome: it was stopped, or it \
                 serves as many clients as it allows (ipc.max_clients)",
            ),
            _ => Error::from_io(&e, "welcome"),
        });
        let (n, mut fds) = match (received, hello_sent) {
            (Ok(Some(got)), _) => got,
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(())) => return Err(e),
            (Ok(None), Ok(())) => {
                return Err(Error::with_detail(
                    Status::Library,
                    "engine closed the connection",
                ));
            }
        };
        let welcome = Welcome::decode(&buf[..n])
            .map_err(|e| Error::with_detail(Status::Library, format!("malformed welcome: {e}")))?;
        if welcome.status != Status::Ok {
            return Err(refused(welcome.status));
        }
        if welcome.version != proto::PROTOCOL_VERSION {
            return Err(Error::new(Status::Version));
        }
        let with_pool = welcome.delivery_pool_bytes > 0;
        if fds.len() != 3 + usize::from(with_pool) {
            return Err(Error::with_detail(
                Status::Library,
                "welcome without its descriptors",
            ));
        }
        let trusted = with_pool && welcome.send_slab_bytes > 0;
        let map_err = |e| Error::with_detail(Status::Library, format!("cannot map the pool: {e}"));
        let mut slab = None;
        let delivery_pool = if with_pool {
            let fd = fds.pop().expect("4 fds");
            let view = if trusted {
                // Trusted senders: this client writes its messages into its slab.
                let writer_fd = fd
                    .try_clone()
                    .map_err(|e| Error::from_io(&e, "pool descriptor"))?;
                let writer = PoolWriter::open(writer_fd).map_err(map_err)?;
                slab = SendArea::in_pool_slab(
                    writer,
                    welcome.send_slab_offset,
                    welcome.send_slab_bytes as usize,
                    welcome.send_header_room as usize,
                )
                .map_err(map_err)?;
                DeliveryPoolView::open_trusted(fd).map_err(map_err)?
            } else {
                DeliveryPoolView::open(fd).map_err(map_err)?
            };
            if view.len() as u64 != welcome.delivery_pool_bytes {
                return Err(Error::with_detail(
                    Status::Library,
                    "delivery pool size differs from the welcome",
                ));
            }
            Some(view)
        } else {
            None
        };
        let engine_wake = EventFd::from_owned(fds.pop().expect("3 fds"));
        let wake = EventFd::from_owned(fds.pop().expect("3 fds"));
        let region = Arc::new(Region::open(fds.pop().expect("3 fds")).map_err(|e| {
            Error::with_detail(Status::Library, format!("cannot map the region: {e}"))
        })?);
        let (Some(submit), Some(events)) = (region.submit_producer(), region.event_consumer())
        else {
            return Err(Error::with_detail(Status::Library, "region ends taken"));
        };
        let poll_fd = epoll_over(&[wake.as_raw_fd(), socket.as_raw_fd()])
            .map_err(|e| Error::from_io(&e, "epoll"))?;
        let area = if trusted {
            slab
        } else {
            SendArea::in_region(region.clone())
        };
        let send_buffers = Mutex::new(send_buffer::SendBuffers::new(area));
        let cpg = Cpg {
            send_buffers,
            socket: Mutex::new(socket),
            submit: Mutex::new(submit),
            receiver: Mutex::new(Receiver {
                events,
                stashed: std::collections::VecDeque::new(),
                stashed_bytes: 0,
                assembly: None,
                group: Vec::new(),
                self_signaled: false,
                releases: Vec::new(),
            }),
            region,
            delivery_pool,
            wake,
            engine_wake,
            poll_fd,
            node_id: welcome.node_id,
            max_message_bytes: welcome.max_message_bytes as usize,
            flags: if initial_totem_conf {
                DELIVER_INITIAL_TOTEM_CONF
            } else {
                0
            },
            context: AtomicUsize::new(0),
            finalized: AtomicBool::new(false),
            finalizing: AtomicBool::new(false),
        };
        cpg.arm();
        Ok(cpg)
    }

    fn request(&self, request: &Request) -> Result<Reply> {
        if self.finalized.load(Ordering::Acquire) {
            return Err(Error::new(Status::BadHandle));
        }
        let socket = lock(&self.socket);
        socket
            .send(&request.encode(), &[])
            .map_err(|e| Error::with_detail(Status::Library, format!("engine gone: {e}")))?;
        let mut buf = vec![0u8; proto::MAX_SOCKET_MESSAGE_BYTES];
        let n = match socket.recv(&mut buf) {
            Ok(Some((n, _))) => n,
            Ok(None) => return Err(Error::with_detail(Status::Library, "engine gone")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(Error::with_detail(
                    Status::Timeout,
                    "no reply from the engine",
                ));
            }
            Err(e) => return Err(Error::from_io(&e, "reply")),
        };
        Reply::decode(&buf[..n])
            .map_err(|e| Error::with_detail(Status::Library, format!("malformed reply: {e}")))
    }

    fn status_request(&self, request: &Request) -> Result<()> {
        match self.request(request)?.status() {
            Status::Ok => Ok(()),
            s => Err(Error::new(s)),
        }
    }

    /// Joins `group` (`cpg_join`). `Ok` means accepted; the join confchg follows.
    /// A leave or join in progress is retried for up to a second (libcpg spins on BUSY
    /// for ever; docs/cpg.md §13 quirk 8).
    pub fn join(&self, group: &[u8]) -> Result<()> {
        check_name(group)?;
        self.retry_busy(&Request::Join {
            flags: self.flags,
            name: group.to_vec(),
        })
        .map_err(|e| match e.status() {
            Status::NoSpace => Error::with_detail(
                Status::NoSpace,
                "the group has as many members as the engine allows \
                 (ipc.max_members_per_group)",
            ),
            Status::TooManyGroups => Error::with_detail(
                Status::TooManyGroups,
                "the cluster has as many groups as the engine allows (ipc.max_groups)",
            ),
            _ => e,
        })
    }

    /// Leaves `group`, which must be the joined group (`cpg_leave`).
    pub fn leave(&self, group: &[u8]) -> Result<()> {
        check_name(group)?;
        self.retry_busy(&Request::Leave {
            name: group.to_vec(),
        })
    }

    fn retry_busy(&self, request: &Request) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.status_request(request) {
                Err(e) if e.status() == Status::Busy && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    /// Multicasts one message to the joined group (`cpg_mcast_joined`). `TryAgain` when
    /// the submit ring is full: nothing was sent.
    pub fn mcast(&self, guarantee: Guarantee, msg: &[u8]) -> Result<()> {
        self.mcast_gather(guarantee, &[msg])
    }

    /// Multicasts the concatenation of `parts` as one message (an iovec send).
    pub fn mcast_gather(&self, guarantee: Guarantee, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.check_send(len)?;
        let mut producer = lock(&self.submit);
        if len <= producer.max_record_len() {
            let kind = if guarantee.is_safe() {
                submit::MCAST_SAFE
            } else {
                submit::MCAST_AGREED
            };
            match producer.try_push(kind, parts) {
                Ok(()) => {}
                Err(PushError::Full) => return Err(Error::new(Status::TryAgain)),
                Err(PushError::TooBig) => return Err(Error::new(Status::TooBig)),
            }
            self.publish(&mut producer);
            return Ok(());
        }
        self.send_pieces(&mut producer, guarantee, len, parts)
    }

    /// Zero-copy send: reserves `len` bytes in shared memory and lets `write` build the
    /// message there (`cpg_zcb_alloc` → write → `cpg_zcb_mcast_joined`, without the
    /// copy): in a submit-ring record, or above one record in a send buffer
    /// ([`Cpg::alloc`]; `TryAgain` while those are busy), and with trusted senders in a
    /// send buffer from 4 KiB on. Only a message larger than all the send buffers is
    /// built on the heap and copied into the ring in pieces.
    pub fn mcast_with(
        &self,
        guarantee: Guarantee,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        self.check_send(len)?;
        let mut producer = lock(&self.submit);
        // Above one record, or (trusted senders: no copy at all) from 4 KiB on, where a
        // reference beats a copy.
        let in_buffer = len > producer.max_record_len()
            || (len >= TRUSTED_IN_PLACE_MIN && lock(&self.send_buffers).is_trusted());
        if in_buffer && len <= self.send_buffer_capacity() {
            drop(producer);
            let mut buffer = self.alloc(len)?;
            write(&mut buffer);
            return self.mcast_buffer(guarantee, buffer).map_err(|(e, _)| e);
        }
        if len > producer.max_record_len() {
            let mut buf = vec![0u8; len];
            write(&mut buf);
            return self.send_pieces(&mut producer, guarantee, len, &[&buf]);
        }
        let kind = if guarantee.is_safe() {
            submit::MCAST_SAFE
        } else {
            submit::MCAST_AGREED
        };
        match producer.try_push_with(kind, len, write) {
            Ok(()) => {}
            Err(PushError::Full) => return Err(Error::new(Status::TryAgain)),
            Err(PushError::TooBig) => return Err(Error::new(Status::TooBig)),
        }
        self.publish(&mut producer);
        Ok(())
    }

    fn check_send(&self, len: usize) -> Result<()> {
        if self.finalized.load(Ordering::Acquire) {
            return Err(Error::new(Status::BadHandle));
        }
        if len > self.max_message_bytes {
            return Err(Error::with_detail(
                Status::TooBig,
                format!("{len} bytes > maximum {}", self.max_message_bytes),
            ));
        }
        Ok(())
    }

    fn publish(&self, producer: &mut Producer) {
        if producer.publish() {
            let _ = self.engine_wake.notify();
        }
    }

    /// A message larger than one record, in pieces. `TryAgain` only if not even the
    /// first piece fits; once started, it waits for ring space (the engine keeps
    /// consuming while it lives).
    fn send_pieces(
        &self,
        producer: &mut Producer,
        guarantee: Guarantee,
        len: usize,
        parts: &[&[u8]],
    ) -> Result<()> {
        let piece_max =
            (producer.max_record_len() - PartHeader::BYTES).min(producer.max_record_len() / 2);
        let g = if guarantee.is_safe() {
            WireGuarantee::Safe
        } else {
            WireGuarantee::Agreed
        };
        let mut sent = 0usize;
        // Cursor over the gathered parts.
        let mut part = 0usize;
        let mut offset = 0usize;
        let mut piece = Vec::with_capacity(piece_max.min(len));
        let mut waited = Duration::ZERO;
        while sent < len {
            let n = piece_max.min(len - sent);
            piece.clear();
            while piece.len() < n {
                let src = &parts[part][offset..];
                let take = src.len().min(n - piece.len());
                piece.extend_from_slice(&src[..take]);
                offset += take;
                if offset == parts[part].len() {
                    part += 1;
                    offset = 0;
                }
            }
            let mut flags = 0;
            if sent == 0 {
                flags |= PART_FIRST;
            }
            if sent + n == len {
                flags |= PART_LAST;
            }
            let header = PartHeader {
                a: g.to_u32(),
                b: 0,
                flags,
                c: 0,
                total_len: len as u64,
            };
            let mut head = [0u8; PartHeader::BYTES];
            header.write(&mut head);
            loop {
                match producer.try_push(submit::MCAST_PART, &[&head, &piece]) {
                    Ok(()) => break,
                    Err(PushError::TooBig) => return Err(Error::new(Status::TooBig)),
                    Err(PushError::Full) if sent == 0 => {
                        return Err(Error::new(Status::TryAgain));
                    }
                    Err(PushError::Full) => {
                        self.publish(producer);
                        if self.engine_gone() {
                            return Err(Error::with_detail(Status::Library, "engine gone"));
                        }
                        self.stash_events();
                        let nap = Duration::from_micros(200);
                        std::thread::sleep(nap);
                        waited += nap;
                    }
                }
            }
            sent += n;
            self.publish(producer);
        }
        let _ = waited;
        Ok(())
    }

    /// True when the engine closed our socket (EOF or error pending): the handle is
    /// useless (one `poll` syscall; for C callers that must tell a lost engine from an
    /// idle one).
    pub fn engine_gone(&self) -> bool {
        let socket = lock(&self.socket);
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Handles events (`cpg_dispatch`). Callbacks run on this thread.
    pub fn dispatch(&self, mode: Dispatch, handler: &mut impl Handler) -> Result<()> {
        let mut receiver = match self.receiver.try_lock() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(Error::with_detail(
                    Status::Busy,
                    "another thread is dispatching this handle",
                ));
            }
        };
        let result = self.dispatch_locked(&mut receiver, mode, handler);
        drop(receiver);
        self.arm();
        result
    }

    fn dispatch_locked(
        &self,
        receiver: &mut Receiver,
        mode: Dispatch,
        handler: &mut impl Handler,
    ) -> Result<()> {
        loop {
            if self.finalized.load(Ordering::Acquire) {
                return Err(Error::new(Status::BadHandle));
            }
            let handled = self.handle_one(receiver, &mut |cpg, ev| match ev {
                Borrowed::Deliver {
                    group,
                    node,
                    pid,
                    msg,
                } => handler.deliver(cpg, group, node, pid, msg),
                Borrowed::Confchg(c) => {
                    handler.confchg(cpg, &c.group, &c.members, &c.left, &c.joined)
                }
                Borrowed::Totem(t) => handler.totem_confchg(
                    cpg,
                    RingId {
                        rep: t.rep,
                        seq: t.seq,
                    },
                    &t.members,
                ),
            })?;
            match (mode, handled) {
                (Dispatch::One | Dispatch::OneNonBlocking, true) => return Ok(()),
                (Dispatch::All, false) => return Ok(()),
                (Dispatch::OneNonBlocking, false) => return Err(Error::new(Status::TryAgain)),
                (Dispatch::All | Dispatch::Blocking, true) => {}
                (Dispatch::One | Dispatch::Blocking, false) => {
                    if let Err(e) = self.wait(receiver, None) {
                        // Finalized from another thread (the engine then closed the
                        // session): that is a bad handle, not a lost engine.
                        if self.finalizing.load(Ordering::Acquire) {
                            return Err(Error::new(Status::BadHandle));
                        }
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The next event as an owned value, waiting up to `timeout` (`None`: for ever).
    /// `Ok(None)` when the time ran out.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut receiver = lock(&self.receiver);
        let result = loop {
            let mut out = None;
            let handled = self.handle_one(&mut receiver, &mut |_, ev| {
                out = Some(match ev {
                    Borrowed::Deliver {
                        group,
                        node,
                        pid,
                        msg,
                    } => Event::Deliver {
                        group: group.to_vec(),
                        node,
                        pid,
                        msg: msg.to_vec(),
                    },
                    Borrowed::Confchg(c) => Event::Confchg {
                        group: c.group.clone(),
                        members: c.members.clone(),
                        left: c.left.clone(),
                        joined: c.joined.clone(),
                    },
                    Borrowed::Totem(t) => Event::TotemConfchg {
                        ring_id: RingId {
                            rep: t.rep,
                            seq: t.seq,
                        },
                        members: t.members.clone(),
                    },
                });
            });
            match handled {
                Err(e) => break Err(e),
                Ok(true) if out.is_some() => break Ok(out),
                Ok(true) => continue,
                Ok(false) => {}
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Ok(None),
                },
                None => None,
            };
            if let Err(e) = self.wait(&mut receiver, left) {
                break Err(e);
            }
        };
        drop(receiver);
        self.arm();
        result
    }

    /// Blocks until the engine signals new events (or `timeout`, or the engine dies).
    fn wait(&self, receiver: &mut Receiver, timeout: Option<Duration>) -> Result<()> {
        // Back off before sleeping: a stream's next record is usually microseconds
        // away, and sleeping costs a wake-up syscall on each side.
        for round in 0..SPIN_ROUNDS + YIELD_ROUNDS {
            if !receiver.events.is_empty() {
                return Ok(());
            }
            if round < SPIN_ROUNDS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if !receiver.events.prepare_sleep() {
            return Ok(());
        }
        // Bounded naps so that a finalize from another thread is noticed.
        let nap = Duration::from_millis(100);
        let t = timeout.map_or(nap, |t| t.min(nap));
        let r = poll_readable(self.poll_fd.as_raw_fd(), Some(t));
        receiver.events.cancel_sleep();
        let _ = self.wake.drain();
        receiver.self_signaled = false;
        r.map_err(|e| Error::from_io(&e, "poll"))?;
        // The socket first, then the ring: an engine publishes its last events before it
        // closes, so events seen empty after the close was seen are really all there is
        // (the other order could report a gone engine with its last events unread).
        let gone = self.engine_gone();
        if gone && receiver.events.is_empty() {
            return Err(Error::with_detail(Status::Library, "engine gone"));
        }
        Ok(())
    }

    /// Leaves the pollable fd readable exactly when events are pending: clear it, then
    /// ask the engine to signal the next publish (or signal ourselves if events
    /// arrived in between).
    fn arm(&self) {
        let Ok(mut receiver) = self.receiver.try_lock() else {
            return;
        };
        let pending = !receiver.stashed.is_empty() || !receiver.events.is_empty();
        if pending && receiver.self_signaled {
            return;
        }
        let _ = self.wake.drain();
        receiver.self_signaled = false;
        if pending || !receiver.events.prepare_sleep() {
            let _ = self.wake.notify();
            receiver.self_signaled = true;
        }
    }

    /// Takes one record off the event ring and hands it to `f`. False if empty.
    /// Records for the library itself (send buffers handed back) are handled on the way
    /// and do not count.
    fn handle_one(
        &self,
        receiver: &mut Receiver,
        f: &mut dyn FnMut(&Cpg, Borrowed<'_>),
    ) -> Result<bool> {
        loop {
            if let Some((kind, payload)) = receiver.stashed.pop_front() {
                receiver.stashed_bytes -= payload.len();
                if kind == event::SENT_RELEASED {
                    self.hand_back(&payload)?;
                    continue;
                }
                let Receiver {
                    assembly,
                    group,
                    releases,
                    ..
                } = receiver;
                self.process(kind, &payload, assembly, group, releases, f)?;
                self.flush_releases(releases);
                return Ok(true);
            }
            let Receiver {
                events,
                assembly,
                group,
                releases,
                ..
            } = receiver;
            let record = match events.peek() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Ok(false);
                }
                Err(RingError::Corrupt(why)) => {
                    return Err(Error::with_detail(
                        Status::Library,
                        format!("event ring: {why}"),
                    ));
                }
            };
            if record.kind == event::SENT_RELEASED {
                let payload = record.payload.to_vec();
                events.consume();
                self.hand_back(&payload)?;
                continue;
            }
            self.process(record.kind, record.payload, assembly, group, releases, f)?;
            events.consume();
            self.flush_releases(releases);
            return Ok(true);
        }
    }

    /// A `SENT_RELEASED` record: the send buffer it names is free again.
    fn hand_back(&self, payload: &[u8]) -> Result<()> {
        let offset = <[u8; 8]>::try_from(payload).map(u64::from_le_bytes);
        if offset.is_ok_and(|offset| lock(&self.send_buffers).released(offset)) {
            Ok(())
        } else {
            Err(Error::with_detail(
                Status::Library,
                "bad send buffer release from the engine",
            ))
        }
    }

    /// Hands read pool buffers back to the engine, as far as the submit ring takes
    /// them now; the rest wait for the next dispatch.
    fn flush_releases(&self, releases: &mut Vec<u64>) {
        if releases.is_empty() {
            return;
        }
        let Ok(mut producer) = self.submit.try_lock() else {
            return;
        };
        let mut sent = 0;
        for offset in releases.iter() {
            if producer
                .try_push(submit::RELEASE, &[&offset.to_le_bytes()])
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        releases.drain(..sent);
        if sent > 0 {
            self.publish(&mut producer);
        }
    }

    /// Hands one event record to `f`.
    fn process(
        &self,
        kind: u32,
        payload: &[u8],
        assembly: &mut Option<(u32, u32, Vec<u8>, usize)>,
        group: &mut Vec<u8>,
        releases: &mut Vec<u64>,
        f: &mut dyn FnMut(&Cpg, Borrowed<'_>),
    ) -> Result<()> {
        struct Rec<'a> {
            kind: u32,
            payload: &'a [u8],
        }
        let record = Rec { kind, payload };
        let bad = |what: &str| Error::with_detail(Status::Library, format!("bad {what} event"));
        match record.kind {
            event::DELIVER => {
                let (h, msg) = DeliverHeader::read(record.payload).map_err(|_| bad("deliver"))?;
                f(
                    self,
                    Borrowed::Deliver {
                        group,
                        node: h.node,
                        pid: h.pid,
                        msg,
                    },
                );
            }
            event::DELIVER_REF => {
                let d = DeliverRef::decode(record.payload).map_err(|_| bad("deliver ref"))?;
                let msg = self
                    .delivery_pool
                    .as_ref()
                    .and_then(|pool| pool.slice(d.offset, d.len))
                    .ok_or_else(|| bad("deliver ref outside the pool"))?;
                f(
                    self,
                    Borrowed::Deliver {
                        group,
                        node: d.header.node,
                        pid: d.header.pid,
                        msg,
                    },
                );
                releases.push(d.offset);
            }
            event::DELIVER_PART => {
                let (h, piece) = PartHeader::read(record.payload).map_err(|_| bad("piece"))?;
                let total = h.total_len as usize;
                if h.flags & PART_FIRST != 0 {
                    if total > self.max_message_bytes.max(1 << 26) {
                        return Err(bad("oversized piece"));
                    }
                    *assembly = Some((h.a, h.b, Vec::with_capacity(total), total));
                }
                let done = match assembly.as_mut() {
                    Some((node, pid, buf, total))
                        if *node == h.a && *pid == h.b && buf.len() + piece.len() <= *total =>
                    {
                        buf.extend_from_slice(piece);
                        h.flags & PART_LAST != 0
                    }
                    _ => return Err(bad("out-of-sequence piece")),
                };
                if done {
                    let (node, pid, buf, _) = assembly.take().expect("checked above");
                    f(
                        self,
                        Borrowed::Deliver {
                            group,
                            node,
                            pid,
                            msg: &buf,
                        },
                    );
                }
            }
            event::CONFCHG => {
                let c = Confchg::decode(record.payload).map_err(|_| bad("confchg"))?;
                group.clone_from(&c.group);
                f(self, Borrowed::Confchg(&c));
            }
            event::TOTEM_CONFCHG => {
                let t = TotemConfchg::decode(record.payload).map_err(|_| bad("totem confchg"))?;
                f(self, Borrowed::Totem(&t));
            }
            event::CLOSED => {
                return Err(Error::with_detail(
                    Status::Library,
                    "engine closed the session",
                ));
            }
            _ => return Err(bad("unknown")),
        }
        Ok(())
    }

    /// While stuck in a large send, or out of send buffers: moves this handle's pending
    /// events into the stash (bounded), so that the engine keeps taking the send's
    /// pieces, and frees the send buffers handed back among them on the way.
    fn stash_events(&self) {
        const STASH_MAX_BYTES: usize = 256 << 20;
        let Ok(mut receiver) = self.receiver.try_lock() else {
            return;
        };
        let receiver = &mut *receiver;
        while receiver.stashed_bytes < STASH_MAX_BYTES {
            let Ok(Some(record)) = receiver.events.peek() else {
                break;
            };
            let copy = (record.kind, record.payload.to_vec());
            receiver.events.consume();
            // The library's own business; a bad one stays, to be reported by dispatch.
            if copy.0 == event::SENT_RELEASED && self.hand_back(&copy.1).is_ok() {
                continue;
            }
            receiver.stashed_bytes += copy.1.len();
            receiver.stashed.push_back(copy);
        }
        if !receiver.stashed.is_empty() {
            // Pollers must see that events are pending.
            let _ = self.wake.notify();
            receiver.self_signaled = true;
        }
    }

    /// Members of any group, sorted by node then pid (`cpg_membership_get`).
    pub fn membership(&self, group: &[u8]) -> Result<Vec<Member>> {
        check_name(group)?;
        match self.request(&Request::Membership {
            name: group.to_vec(),
        })? {
            Reply::Membership {
                status: Status::Ok,
                members,
            } => Ok(members
                .into_iter()
                .map(|m| Member {
                    node: m.node,
                    pid: m.pid,
                })
                .collect()),
            other => Err(Error::new(other.status())),
        }
    }

    /// This engine's node id (`cpg_local_get`).
    pub fn local_node(&self) -> Result<u32> {
        if self.finalized.load(Ordering::Acquire) {
            return Err(Error::new(Status::BadHandle));
        }
        Ok(self.node_id)
    }

    /// Snapshot of groups and members (`cpg_iteration_*`).
    pub fn iterate(&self, kind: IterationKind, group: Option<&[u8]>) -> Result<Vec<GroupMember>> {
        if let Some(g) = group {
            check_name(g)?;
        }
        match (kind, group) {
            (IterationKind::OneGroup, None) => return Err(Error::new(Status::InvalidParam)),
            (IterationKind::NameOnly | IterationKind::All, Some(_)) => {
                return Err(Error::new(Status::InvalidParam));
            }
            _ => {}
        }
        let kind = match kind {
            IterationKind::NameOnly => proto::IterKind::NameOnly,
            IterationKind::OneGroup => proto::IterKind::OneGroup,
            IterationKind::All => proto::IterKind::All,
        } as u32;
        let (iter, total) = match self.request(&Request::IterInit {
            kind,
            name: group.map(<[u8]>::to_vec),
        })? {
            Reply::IterInit {
                status: Status::Ok,
                iter,
                total,
            } => (iter, total),
            other => return Err(Error::new(other.status())),
        };
        let mut out = Vec::with_capacity(total as usize);
        let result = loop {
            if out.len() >= total as usize {
                break Ok(());
            }
            match self.request(&Request::IterNext {
                iter,
                index: out.len() as u32,
            }) {
                Ok(Reply::IterNext {
                    status: Status::Ok,
                    entries,
                }) if !entries.is_empty() => {
                    out.extend(entries.into_iter().map(|e: IterEntry| GroupMember {
                        group: e.name,
                        node: e.node,
                        pid: e.pid,
                    }));
                }
                Ok(Reply::IterNext { .. }) => break Ok(()),
                Ok(other) => break Err(Error::new(other.status())),
                Err(e) => break Err(e),
            }
        };
        let _ = self.status_request(&Request::IterFinalize { iter });
        result.map(|()| out)
    }

    /// The engine's nodelist (node id, `ip:port`) and the members of the current ring
    /// (for Corosync's cfg API).
    pub fn nodes(&self) -> Result<ClusterNodes> {
        match self.request(&Request::Nodes)? {
            Reply::Nodes {
                status: Status::Ok,
                ring,
                nodes,
            } => Ok(ClusterNodes {
                nodes: nodes
                    .into_iter()
                    .map(|n| (n.node, String::from_utf8_lossy(&n.addr).into_owned()))
                    .collect(),
                ring,
            }),
            other => Err(Error::new(other.status())),
        }
    }

    /// The engine's process id (SO_PEERCRED of the session socket).
    pub fn engine_pid(&self) -> Result<u32> {
        let cred = lock(&self.socket)
            .peer_cred()
            .map_err(|e| Error::from_io(&e, "peer credentials"))?;
        Ok(cred.pid as u32)
    }

    /// Largest message [`Cpg::mcast`] accepts.
    pub fn max_message_size(&self) -> usize {
        self.max_message_bytes
    }

    /// Largest message [`Cpg::mcast_with`] builds in place in shared memory (one ring
    /// record, or one send buffer); a larger one is built in a heap buffer and copied
    /// into the ring in pieces.
    pub fn max_in_place_message(&self) -> usize {
        let record = lock(&self.submit).max_record_len();
        record.max(self.send_buffer_capacity())
    }

    /// `Enabled` while the submit ring is more than three quarters full (sends may soon
    /// get `TryAgain`). Corosync always reports `Disabled`; the C ABI keeps that.
    pub fn flow_control_state(&self) -> FlowControl {
        let producer = lock(&self.submit);
        let cap = self.region.layout().submit.data_bytes;
        if producer.free_bytes() < cap / 4 {
            FlowControl::Enabled
        } else {
            FlowControl::Disabled
        }
    }

    /// A pointer-sized value stored with the handle (`cpg_context_get/set`).
    pub fn context(&self) -> usize {
        self.context.load(Ordering::Relaxed)
    }

    pub fn set_context(&self, value: usize) {
        self.context.store(value, Ordering::Relaxed);
    }

    /// Whether the shared region got huge pages.
    pub fn huge_pages(&self) -> bool {
        self.region.huge_pages()
    }

    /// Whether `msg` (a delivered message) lies in the engine's delivery pool, which
    /// this process maps read-only: a caller that must hand out writable memory (the
    /// C API's deliver callback) copies it first.
    pub fn is_read_only(&self, msg: &[u8]) -> bool {
        let Some(pool) = &self.delivery_pool else {
            return false;
        };
        let Some(all) = pool.slice(0, pool.len() as u64) else {
            return false;
        };
        let range = all.as_ptr_range();
        let start = msg.as_ptr();
        start >= range.start && start < range.end
    }

    /// Ends the session (`cpg_finalize`): a member still joined is reported with
    /// PROCDOWN. Also called on drop. Further calls get `BadHandle`.
    pub fn finalize(&self) -> Result<()> {
        if !self.finalized.load(Ordering::Acquire) {
            self.finalizing.store(true, Ordering::Release);
        }
        let reply = self.request(&Request::Finalize);
        self.finalized.store(true, Ordering::Release);
        let _ = self.wake.notify();
        match reply {
            Ok(r) if r.status() == Status::Ok => Ok(()),
            Ok(r) => Err(Error::new(r.status())),
            Err(e) if e.status() == Status::BadHandle => Err(e),
            Err(_) => Err(Error::new(Status::Library)),
        }
    }
}

impl Drop for Cpg {
    fn drop(&mut self) {
        if !self.finalized.load(Ordering::Acquire) {
            let _ = self.finalize();
        }
    }
}

impl AsFd for Cpg {
    /// Readable when events are pending or the engine is gone (`cpg_fd_get`), as long
    /// as they are (level-triggered): for `poll`, epoll and tokio's `AsyncFd`. With an
    /// edge-triggered waiter such as `AsyncFd`, clear readiness only when a
    /// `Dispatch::OneNonBlocking` (or `next_event(Some(ZERO))`) found nothing: the fd
    /// stays readable across dispatches while events remain, so no new edge comes for
    /// them.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll_fd.as_fd()
    }
}

impl AsRawFd for Cpg {
    fn as_raw_fd(&self) -> RawFd {
        self.poll_fd.as_raw_fd()
    }
}

enum Borrowed<'a> {
    Deliver {
        group: &'a [u8],
        node: u32,
        pid: u32,
        msg: &'a [u8],
    },
    Confchg(&'a Confchg),
    Totem(&'a TotemConfchg),
}
