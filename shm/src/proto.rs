//! The client ↔ engine protocol: what travels on the control socket and what the
//! records on the two rings of a session's region mean.
//!
//! ```text
//!  client                                   engine
//!    | -- Hello{pid} ----------------------> |  SO_PEERCRED checked
//!    | <- Welcome{node, limits} + 3-4 fds -- |  region memfd, client eventfd, engine
//!    |                                       |  eventfd[, delivery pool, read-only]
//!    | -- Join/Leave/Membership/... -------> |  one request at a time, each answered
//!    | <- Reply{status, ..} ---------------- |
//!    |                                       |
//!    | == submit ring: Mcast, McastPart ===> |  one-way; a full ring is TRY_AGAIN
//!    |    ... Release(offset)                |  a DeliverRef buffer handed back
//!    | <= event ring: Deliver, Confchg, ... = |  in agreed order; DeliverRef names
//!    |                                       |  its payload in the delivery pool
//! ```
//!
//! The socket is `SOCK_SEQPACKET`, so every message arrives whole. All integers are
//! little-endian. Status codes are Corosync's `cs_error_t` values (`OK` is 1), so a C
//! ABI can pass them through unchanged.
//!
//! Everything decoded here comes from another process and is untrusted: decoders
//! bounds-check every field and return [`ProtoError`], never panic.

/// First four bytes of a `Hello`: "RCST".
pub const HELLO_MAGIC: u32 = 0x5453_4352;
/// Bumped on any incompatible change to this module or to the region layout.
pub const PROTOCOL_VERSION: u32 = 4;
/// Longest group name (docs/cpg.md §2.4).
pub const MAX_NAME_BYTES: usize = 128;
/// Largest control-socket message either side sends.
pub const MAX_SOCKET_MESSAGE_BYTES: usize = 64 * 1024;
/// Entries per `IterNext` reply; keeps every reply far below the socket limit.
pub const ITER_BATCH: usize = 256;

/// `cs_error_t` (docs/cpg.md §2.1): the status of every reply.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 1,
    Library = 2,
    Version = 3,
    Init = 4,
    Timeout = 5,
    TryAgain = 6,
    InvalidParam = 7,
    NoMemory = 8,
    BadHandle = 9,
    Busy = 10,
    Access = 11,
    NotExist = 12,
    NameTooLong = 13,
    Exist = 14,
    NoSpace = 15,
    Interrupt = 16,
    NameNotFound = 17,
    NoResources = 18,
    NotSupported = 19,
    BadOperation = 20,
    FailedOperation = 21,
    MessageError = 22,
    QueueFull = 23,
    QueueNotAvailable = 24,
    BadFlags = 25,
    TooBig = 26,
    NoSections = 27,
    ContextNotFound = 28,
    TooManyGroups = 30,
    Security = 100,
}

impl Status {
    pub fn from_u32(v: u32) -> Option<Status> {
        use Status::*;
        Some(match v {
            1 => Ok,
            2 => Library,
            3 => Version,
            4 => Init,
            5 => Timeout,
            6 => TryAgain,
            7 => InvalidParam,
            8 => NoMemory,
            9 => BadHandle,
            10 => Busy,
            11 => Access,
            12 => NotExist,
            13 => NameTooLong,
            14 => Exist,
            15 => NoSpace,
            16 => Interrupt,
            17 => NameNotFound,
            18 => NoResources,
            19 => NotSupported,
            20 => BadOperation,
            21 => FailedOperation,
            22 => MessageError,
            23 => QueueFull,
            24 => QueueNotAvailable,
            25 => BadFlags,
            26 => TooBig,
            27 => NoSections,
            28 => ContextNotFound,
            30 => TooManyGroups,
            100 => Security,
            _ => return None,
        })
    }
}

/// Why a message from the other side could not be decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The message ended before a field it announced.
    #[error("message truncated")]
    Truncated,
    /// An operation or record kind this version does not know.
    #[error("unknown operation {0}")]
    UnknownOp(u32),
    /// A field outside its range (named).
    #[error("bad field {0}")]
    BadField(&'static str),
    /// Bytes left over after the last field.
    #[error("trailing bytes")]
    Trailing,
}

/// Bounds-checked little-endian reader over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length-prefixed group name of 0..=128 bytes (emptiness is the service's call).
    pub fn name(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.u32()? as usize;
        if len > MAX_NAME_BYTES {
            return Err(ProtoError::BadField("name length"));
        }
        self.bytes(len)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Trailing)
        }
    }
}

/// Little-endian writer into a growable buffer (the sending side owns its sizes).
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }
    pub fn u32(&mut self, v: u32) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn name(&mut self, name: &[u8]) -> &mut Writer {
        debug_assert!(name.len() <= MAX_NAME_BYTES);
        self.u32(name.len() as u32);
        self.buf.extend_from_slice(name);
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Writer {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Delivery guarantee as carried on the rings (docs/cpg.md §2.2 `cpg_guarantee_t`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WireGuarantee {
    Agreed,
    Safe,
}

impl WireGuarantee {
    /// UNORDERED, FIFO and AGREED are all delivered in agreed order; SAFE is honoured.
    pub fn from_cpg(v: u32) -> Option<WireGuarantee> {
        match v {
            0..=2 => Some(WireGuarantee::Agreed),
            3 => Some(WireGuarantee::Safe),
            _ => None,
        }
    }
    pub fn to_u32(self) -> u32 {
        match self {
            WireGuarantee::Agreed => 2,
            WireGuarantee::Safe => 3,
        }
    }
}

/// `cpg_iteration_type_t`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IterKind {
    NameOnly = 1,
    OneGroup = 2,
    All = 3,
}

impl IterKind {
    pub fn from_u32(v: u32) -> Option<IterKind> {
        match v {
            1 => Some(IterKind::NameOnly),
            2 => Some(IterKind::OneGroup),
            3 => Some(IterKind::All),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Control socket: requests (client → engine)
// ---------------------------------------------------------------------------------

const OP_HELLO: u32 = 1;
const OP_JOIN: u32 = 2;
const OP_LEAVE: u32 = 3;
const OP_MEMBERSHIP: u32 = 4;
const OP_LOCAL_GET: u32 = 5;
const OP_ITER_INIT: u32 = 6;
const OP_ITER_NEXT: u32 = 7;
const OP_ITER_FINALIZE: u32 = 8;
const OP_FINALIZE: u32 = 9;
const OP_NODES: u32 = 10;
const OP_GS: u32 = 11;

/// One request on the control socket. Each is answered by exactly one [`Reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// First message of a session; answered by [`Welcome`].
    Hello {
        version: u32,
        pid: u32,
    },
    /// `cpg_join`; `flags` are the model flags (bit 0: deliver the initial totem conf).
    Join {
        flags: u32,
        name: Vec<u8>,
    },
    Leave {
        name: Vec<u8>,
    },
    Membership {
        name: Vec<u8>,
    },
    LocalGet,
    IterInit {
        kind: u32,
        name: Option<Vec<u8>>,
    },
    /// Entries `index..` of iteration `iter`, up to [`ITER_BATCH`].
    IterNext {
        iter: u32,
        index: u32,
    },
    IterFinalize {
        iter: u32,
    },
    /// Leave the engine: PROCDOWN if still joined, then the engine closes the session.
    Finalize,
    /// The configured nodes and the current ring (Corosync's cfg API).
    Nodes,
    /// A Group Services request ([`crate::gs_proto`]), answered by [`Reply::Gs`].
    Gs(crate::gs_proto::GsRequest),
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Request::Hello { version, pid } => {
                w.u32(OP_HELLO).u32(HELLO_MAGIC).u32(*version).u32(*pid);
            }
            Request::Join { flags, name } => {
                w.u32(OP_JOIN).u32(*flags).name(name);
            }
            Request::Leave { name } => {
                w.u32(OP_LEAVE).name(name);
            }
            Request::Membership { name } => {
                w.u32(OP_MEMBERSHIP).name(name);
            }
            Request::LocalGet => {
                w.u32(OP_LOCAL_GET);
            }
            Request::IterInit { kind, name } => {
                w.u32(OP_ITER_INIT).u32(*kind);
                match name {
                    Some(n) => {
                        w.u32(1).name(n);
                    }
                    None => {
                        w.u32(0);
                    }
                }
            }
            Request::IterNext { iter, index } => {
                w.u32(OP_ITER_NEXT).u32(*iter).u32(*index);
            }
            Request::IterFinalize { iter } => {
                w.u32(OP_ITER_FINALIZE).u32(*iter);
            }
            Request::Finalize => {
                w.u32(OP_FINALIZE);
            }
            Request::Nodes => {
                w.u32(OP_NODES);
            }
            Request::Gs(gs) => {
                w.u32(OP_GS);
                gs.encode_into(&mut w);
            }
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Request, ProtoError> {
        let mut r = Reader::new(buf);
        let op = r.u32()?;
        let req = match op {
            OP_HELLO => {
                if r.u32()? != HELLO_MAGIC {
                    return Err(ProtoError::BadField("magic"));
                }
                Request::Hello {
                    version: r.u32()?,
                    pid: r.u32()?,
                }
            }
            OP_JOIN => Request::Join {
                flags: r.u32()?,
                name: r.name()?.to_vec(),
            },
            OP_LEAVE => Request::Leave {
                name: r.name()?.to_vec(),
            },
            OP_MEMBERSHIP => Request::Membership {
                name: r.name()?.to_vec(),
            },
            OP_LOCAL_GET => Request::LocalGet,
            OP_ITER_INIT => {
                let kind = r.u32()?;
                let name = match r.u32()? {
                    0 => None,
                    1 => Some(r.name()?.to_vec()),
                    _ => return Err(ProtoError::BadField("name present")),
                };
                Request::IterInit { kind, name }
            }
            OP_ITER_NEXT => Request::IterNext {
                iter: r.u32()?,
                index: r.u32()?,
            },
            OP_ITER_FINALIZE => Request::IterFinalize { iter: r.u32()? },
            OP_FINALIZE => Request::Finalize,
            OP_NODES => Request::Nodes,
            OP_GS => Request::Gs(crate::gs_proto::GsRequest::decode_from(&mut r)?),
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

/// The engine's answer to `Hello`; the fds travel with it (SCM_RIGHTS) in the order
/// region, client eventfd, engine eventfd and, when `delivery_pool_bytes` is not 0, the
/// engine's delivery pool (mapped read-only, see [`crate::delivery_pool`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub status: Status,
    pub version: u32,
    pub node_id: u32,
    /// Largest message `mcast` accepts.
    pub max_message_bytes: u64,
    /// Size of the delivery pool whose fd comes fourth; 0: no pool (every delivery
    /// arrives inline).
    pub delivery_pool_bytes: u64,
    /// Trusted senders (`ipc.trusted_senders`): this client's part of the delivery pool,
    /// which it maps writable and writes its messages into in place (`MCAST_POOL_REF`);
    /// 0 bytes: none.
    pub send_slab_offset: u64,
    pub send_slab_bytes: u64,
    /// Bytes a message in the slab leaves free in front of itself for the engine's
    /// header.
    pub send_header_room: u32,
}

impl Welcome {
    /// The answer to a client the engine turns away (`status` says why): no fds follow.
    pub fn refusal(status: Status, node_id: u32) -> Welcome {
        Welcome {
            status,
            version: PROTOCOL_VERSION,
            node_id,
            max_message_bytes: 0,
            delivery_pool_bytes: 0,
            send_slab_offset: 0,
            send_slab_bytes: 0,
            send_header_room: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.status as u32)
            .u32(self.version)
            .u32(self.node_id)
            .u64(self.max_message_bytes)
            .u64(self.delivery_pool_bytes)
            .u64(self.send_slab_offset)
            .u64(self.send_slab_bytes)
            .u32(self.send_header_room);
        w.finish()
    }
    pub fn decode(buf: &[u8]) -> Result<Welcome, ProtoError> {
        let mut r = Reader::new(buf);
        let status = Status::from_u32(r.u32()?).ok_or(ProtoError::BadField("status"))?;
        let w = Welcome {
            status,
            version: r.u32()?,
            node_id: r.u32()?,
            max_message_bytes: r.u64()?,
            delivery_pool_bytes: r.u64()?,
            send_slab_offset: r.u64()?,
            send_slab_bytes: r.u64()?,
            send_header_room: r.u32()?,
        };
        r.finish()?;
        Ok(w)
    }
}

/// One (node, pid) as carried in replies and events.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireMember {
    pub node: u32,
    pub pid: u32,
}

/// One entry of an iteration: group name, node, pid (0, 0 for NAME_ONLY).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IterEntry {
    pub name: Vec<u8>,
    pub node: u32,
    pub pid: u32,
}

/// One configured node: its id and address (`ip:port`, as text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireNode {
    pub node: u32,
    pub addr: Vec<u8>,
}

/// The answer to every request after `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Join, Leave, IterFinalize, Finalize, and any refused request.
    Status(Status),
    Membership {
        status: Status,
        members: Vec<WireMember>,
    },
    LocalGet {
        status: Status,
        node: u32,
    },
    IterInit {
        status: Status,
        iter: u32,
        total: u32,
    },
    IterNext {
        status: Status,
        entries: Vec<IterEntry>,
    },
    Nodes {
        status: Status,
        /// Members of the current ring.
        ring: Vec<u32>,
        nodes: Vec<WireNode>,
    },
    /// The answer to a [`Request::Gs`] (its status is always `Ok`: GS results are
    /// `ha_gs_rc_t` values inside).
    Gs(crate::gs_proto::GsReply),
}

const R_STATUS: u32 = 1;
const R_MEMBERSHIP: u32 = 2;
const R_LOCAL: u32 = 3;
const R_ITER_INIT: u32 = 4;
const R_ITER_NEXT: u32 = 5;
const R_NODES: u32 = 6;
const R_GS: u32 = 7;

impl Reply {
    pub fn status(&self) -> Status {
        match self {
            Reply::Status(s) => *s,
            Reply::Membership { status, .. }
            | Reply::LocalGet { status, .. }
            | Reply::IterInit { status, .. }
            | Reply::IterNext { status, .. }
            | Reply::Nodes { status, .. } => *status,
            Reply::Gs(_) => Status::Ok,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Reply::Status(s) => {
                w.u32(R_STATUS).u32(*s as u32);
            }
            Reply::Membership { status, members } => {
                w.u32(R_MEMBERSHIP)
                    .u32(*status as u32)
                    .u32(members.len() as u32);
                for m in members {
                    w.u32(m.node).u32(m.pid);
                }
            }
            Reply::LocalGet { status, node } => {
                w.u32(R_LOCAL).u32(*status as u32).u32(*node);
            }
            Reply::IterInit {
                status,
                iter,
                total,
            } => {
                w.u32(R_ITER_INIT)
                    .u32(*status as u32)
                    .u32(*iter)
                    .u32(*total);
            }
            Reply::IterNext { status, entries } => {
                w.u32(R_ITER_NEXT)
                    .u32(*status as u32)
                    .u32(entries.len() as u32);
                for e in entries {
                    w.name(&e.name).u32(e.node).u32(e.pid);
                }
            }
            Reply::Nodes {
                status,
                ring,
                nodes,
            } => {
                w.u32(R_NODES).u32(*status as u32).u32(ring.len() as u32);
                for id in ring {
                    w.u32(*id);
                }
                w.u32(nodes.len() as u32);
                for n in nodes {
                    w.u32(n.node).name(&n.addr);
                }
            }
            Reply::Gs(gs) => {
                w.u32(R_GS).u32(Status::Ok as u32);
                gs.encode_into(&mut w);
            }
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Reply, ProtoError> {
        let mut r = Reader::new(buf);
        let op = r.u32()?;
        let status = Status::from_u32(r.u32()?).ok_or(ProtoError::BadField("status"))?;
        let reply = match op {
            R_STATUS => Reply::Status(status),
            R_MEMBERSHIP => {
                let n = r.u32()? as usize;
                if n > r.remaining() / 8 {
                    return Err(ProtoError::BadField("member count"));
                }
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(WireMember {
                        node: r.u32()?,
                        pid: r.u32()?,
                    });
                }
                Reply::Membership { status, members }
            }
            R_LOCAL => Reply::LocalGet {
                status,
                node: r.u32()?,
            },
            R_ITER_INIT => Reply::IterInit {
                status,
                iter: r.u32()?,
                total: r.u32()?,
            },
            R_ITER_NEXT => {
                let n = r.u32()? as usize;
                if n > ITER_BATCH {
                    return Err(ProtoError::BadField("entry count"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(IterEntry {
                        name: r.name()?.to_vec(),
                        node: r.u32()?,
                        pid: r.u32()?,
                    });
                }
                Reply::IterNext { status, entries }
            }
            R_NODES => {
                let n = r.u32()? as usize;
                if n > r.remaining() / 4 {
                    return Err(ProtoError::BadField("ring size"));
                }
                let ring = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                let n = r.u32()? as usize;
                if n > r.remaining() / 8 {
                    return Err(ProtoError::BadField("node count"));
                }
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(WireNode {
                        node: r.u32()?,
                        addr: r.name()?.to_vec(),
                    });
                }
                Reply::Nodes {
                    status,
                    ring,
                    nodes,
                }
            }
            R_GS => Reply::Gs(crate::gs_proto::GsReply::decode_from(&mut r)?),
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.finish()?;
        Ok(reply)
    }
}

// ---------------------------------------------------------------------------------
// Submit ring records (client → engine)
// ---------------------------------------------------------------------------------

/// Record kinds on the submit ring.
pub mod submit {
    /// A whole message with AGREED delivery; the record's payload is the message.
    pub const MCAST_AGREED: u32 = 1;
    /// A whole message with SAFE delivery.
    pub const MCAST_SAFE: u32 = 2;
    /// A piece of a message too large for one record: [`super::PartHeader`] then bytes.
    pub const MCAST_PART: u32 = 3;
    /// The client is done with a `DELIVER_REF` buffer: its pool offset as a u64.
    pub const RELEASE: u32 = 4;
    /// A whole message the client wrote into its region's buffer pool:
    /// [`super::MessageRef`]. The engine copies it out before it consumes the record, so
    /// the buffer is the client's again once the ring's head has passed the record.
    pub const MCAST_REF: u32 = 5;
    /// Trusted senders: a whole message the client wrote in place into its slab of the
    /// delivery pool, [`super::MessageRef`] with `offset` the pool offset where the
    /// header room in front of it starts. Not copied: Totem sends it from there, local
    /// receivers read it there, and a `SENT_RELEASED` event hands the buffer back.
    pub const MCAST_POOL_REF: u32 = 6;
}

/// A `MCAST_REF` record: a message in the client's buffer pool.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MessageRef {
    /// As [`WireGuarantee::to_u32`].
    pub guarantee: u32,
    /// Offset from the start of the region's pool.
    pub offset: u64,
    pub len: u64,
}

impl MessageRef {
    pub const BYTES: usize = 24;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[0..4].copy_from_slice(&self.guarantee.to_le_bytes());
        // 4..8 reserved, zero.
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<MessageRef, ProtoError> {
        let mut r = Reader::new(payload);
        let guarantee = r.u32()?;
        if r.u32()? != 0 {
            return Err(ProtoError::BadField("reserved"));
        }
        let m = MessageRef {
            guarantee,
            offset: r.u64()?,
            len: r.u64()?,
        };
        r.finish()?;
        Ok(m)
    }
}

/// Bit 0 of [`PartHeader::flags`]: the first piece (carries `total_len`).
pub const PART_FIRST: u32 = 1;
/// Bit 1: the last piece; the message is complete.
pub const PART_LAST: u32 = 2;

/// Header of a message piece, on either ring.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PartHeader {
    /// On the submit ring: the guarantee as [`WireGuarantee::to_u32`]. On the event
    /// ring: the sender's node.
    pub a: u32,
    /// On the event ring: the sender's pid; 0 on the submit ring.
    pub b: u32,
    pub flags: u32,
    /// The guarantee on the event ring, 0 on the submit ring.
    pub c: u32,
    /// Length of the whole message.
    pub total_len: u64,
}

impl PartHeader {
    pub const BYTES: usize = 24;

    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.a.to_le_bytes());
        out[4..8].copy_from_slice(&self.b.to_le_bytes());
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.c.to_le_bytes());
        out[16..24].copy_from_slice(&self.total_len.to_le_bytes());
    }

    /// Splits a record payload into header and piece.
    pub fn read(payload: &[u8]) -> Result<(PartHeader, &[u8]), ProtoError> {
        let mut r = Reader::new(payload);
        let h = PartHeader {
            a: r.u32()?,
            b: r.u32()?,
            flags: r.u32()?,
            c: r.u32()?,
            total_len: r.u64()?,
        };
        if h.flags & !(PART_FIRST | PART_LAST) != 0 {
            return Err(ProtoError::BadField("part flags"));
        }
        Ok((h, r.rest()))
    }
}

// ---------------------------------------------------------------------------------
// Event ring records (engine → client)
// ---------------------------------------------------------------------------------

/// Record kinds on the event ring.
pub mod event {
    /// [`super::DeliverHeader`] then the message.
    pub const DELIVER: u32 = 1;
    /// [`super::PartHeader`] (node, pid, flags, guarantee, total) then a piece.
    pub const DELIVER_PART: u32 = 2;
    /// A group membership change, see [`super::Confchg`].
    pub const CONFCHG: u32 = 3;
    /// A Totem configuration, see [`super::TotemConfchg`].
    pub const TOTEM_CONFCHG: u32 = 4;
    /// The engine is closing this session; payload: a u32 [`super::Status`].
    pub const CLOSED: u32 = 5;
    /// A delivery whose payload is in the delivery pool: [`super::DeliverRef`]. The
    /// client hands the offset back with a `RELEASE` submit record when done.
    pub const DELIVER_REF: u32 = 6;
    /// Trusted senders: nothing holds the `MCAST_POOL_REF` buffer at this pool offset
    /// (u64) any more; it is the client's again.
    pub const SENT_RELEASED: u32 = 7;
    /// A Group Services event, encoded by [`crate::gs_proto::encode_event`].
    pub const GS_EVENT: u32 = 8;
    /// A piece of a GS event too large for one record: [`super::PartHeader`] (`a`,
    /// `b`, `c` zero; `total_len` the whole event's length) then bytes.
    pub const GS_EVENT_PART: u32 = 9;
}

/// A `DELIVER_REF` record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DeliverRef {
    pub header: DeliverHeader,
    /// Where the payload starts in the delivery pool.
    pub offset: u64,
    pub len: u64,
}

impl DeliverRef {
    pub const BYTES: usize = DeliverHeader::BYTES + 16;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        self.header.write(&mut out[..DeliverHeader::BYTES]);
        out[16..24].copy_from_slice(&self.offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<DeliverRef, ProtoError> {
        let (header, rest) = DeliverHeader::read(payload)?;
        let mut r = Reader::new(rest);
        let d = DeliverRef {
            header,
            offset: r.u64()?,
            len: r.u64()?,
        };
        r.finish()?;
        Ok(d)
    }
}

/// Header of a `DELIVER` record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DeliverHeader {
    pub node: u32,
    pub pid: u32,
    /// As [`WireGuarantee::to_u32`].
    pub guarantee: u32,
}

impl DeliverHeader {
    /// 16 so that the message starts 8-byte aligned inside the record.
    pub const BYTES: usize = 16;

    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.node.to_le_bytes());
        out[4..8].copy_from_slice(&self.pid.to_le_bytes());
        out[8..12].copy_from_slice(&self.guarantee.to_le_bytes());
        out[12..16].fill(0);
    }

    pub fn read(payload: &[u8]) -> Result<(DeliverHeader, &[u8]), ProtoError> {
        let mut r = Reader::new(payload);
        let h = DeliverHeader {
            node: r.u32()?,
            pid: r.u32()?,
            guarantee: r.u32()?,
        };
        r.u32()?;
        Ok((h, r.rest()))
    }
}

/// Reason of an address in a confchg (`cpg_reason_t`).
pub mod reason {
    pub const UNDEFINED: u32 = 0;
    pub const JOIN: u32 = 1;
    pub const LEAVE: u32 = 2;
    pub const NODEDOWN: u32 = 3;
    pub const NODEUP: u32 = 4;
    pub const PROCDOWN: u32 = 5;
}

/// `cpg_address`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireAddress {
    pub node: u32,
    pub pid: u32,
    pub reason: u32,
}

/// A `CONFCHG` record: the group, then members, left and joined lists.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Confchg {
    pub group: Vec<u8>,
    pub members: Vec<WireAddress>,
    pub left: Vec<WireAddress>,
    pub joined: Vec<WireAddress>,
}

impl Confchg {
    pub fn encoded_len(&self) -> usize {
        4 + self.group.len() + 12 + 12 * (self.members.len() + self.left.len() + self.joined.len())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.name(&self.group)
            .u32(self.members.len() as u32)
            .u32(self.left.len() as u32)
            .u32(self.joined.len() as u32);
        for a in self.members.iter().chain(&self.left).chain(&self.joined) {
            w.u32(a.node).u32(a.pid).u32(a.reason);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Confchg, ProtoError> {
        let mut r = Reader::new(buf);
        let group = r.name()?.to_vec();
        let counts = [r.u32()? as usize, r.u32()? as usize, r.u32()? as usize];
        let total = counts.iter().try_fold(0usize, |a, &n| a.checked_add(n));
        if total.is_none_or(|t| t.saturating_mul(12) != r.remaining()) {
            return Err(ProtoError::BadField("confchg counts"));
        }
        let mut lists: [Vec<WireAddress>; 3] = Default::default();
        for (list, &n) in lists.iter_mut().zip(&counts) {
            list.reserve_exact(n);
            for _ in 0..n {
                list.push(WireAddress {
                    node: r.u32()?,
                    pid: r.u32()?,
                    reason: r.u32()?,
                });
            }
        }
        let [members, left, joined] = lists;
        Ok(Confchg {
            group,
            members,
            left,
            joined,
        })
    }
}

/// A `TOTEM_CONFCHG` record: the ring id and the nodes of the new ring.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TotemConfchg {
    pub rep: u32,
    pub seq: u64,
    pub members: Vec<u32>,
}

impl TotemConfchg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.rep).u64(self.seq).u32(self.members.len() as u32);
        for &m in &self.members {
            w.u32(m);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<TotemConfchg, ProtoError> {
        let mut r = Reader::new(buf);
        let rep = r.u32()?;
        let seq = r.u64()?;
        let n = r.u32()? as usize;
        if n.saturating_mul(4) != r.remaining() {
            return Err(ProtoError::BadField("node count"));
        }
        let members = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        Ok(TotemConfchg { rep, seq, members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let all = [
            Request::Hello {
                version: PROTOCOL_VERSION,
                pid: 42,
            },
            Request::Join {
                flags: 1,
                name: b"GROUP\0".to_vec(),
            },
            Request::Leave {
                name: b"g".to_vec(),
            },
            Request::Membership { name: vec![] },
            Request::LocalGet,
            Request::IterInit {
                kind: 2,
                name: Some(b"x".to_vec()),
            },
            Request::IterInit {
                kind: 3,
                name: None,
            },
            Request::IterNext { iter: 3, index: 9 },
            Request::IterFinalize { iter: 3 },
            Request::Finalize,
            Request::Nodes,
        ];
        for req in all {
            assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
    }

    #[test]
    fn replies_round_trip() {
        let all = [
            Reply::Status(Status::TryAgain),
            Reply::Membership {
                status: Status::Ok,
                members: vec![WireMember { node: 1, pid: 2 }],
            },
            Reply::LocalGet {
                status: Status::Ok,
                node: 7,
            },
            Reply::IterInit {
                status: Status::Ok,
                iter: 1,
                total: 10,
            },
            Reply::IterNext {
                status: Status::Ok,
                entries: vec![IterEntry {
                    name: b"g".to_vec(),
                    node: 1,
                    pid: 5,
                }],
            },
            Reply::Nodes {
                status: Status::Ok,
                ring: vec![1, 3],
                nodes: vec![WireNode {
                    node: 3,
                    addr: b"127.0.0.3:5405".to_vec(),
                }],
            },
        ];
        for reply in all {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
    }

    #[test]
    fn events_round_trip() {
        let c = Confchg {
            group: b"g".to_vec(),
            members: vec![WireAddress {
                node: 1,
                pid: 2,
                reason: 0,
            }],
            left: vec![],
            joined: vec![WireAddress {
                node: 1,
                pid: 2,
                reason: reason::JOIN,
            }],
        };
        let enc = c.encode();
        assert_eq!(enc.len(), c.encoded_len());
        assert_eq!(Confchg::decode(&enc).unwrap(), c);
        let t = TotemConfchg {
            rep: 1,
            seq: 99,
            members: vec![1, 2, 3],
        };
        assert_eq!(TotemConfchg::decode(&t.encode()).unwrap(), t);
        let mut buf = [0u8; PartHeader::BYTES + 3];
        let h = PartHeader {
            a: 1,
            b: 2,
            flags: PART_FIRST,
            c: 3,
            total_len: 1 << 40,
        };
        h.write(&mut buf);
        buf[PartHeader::BYTES..].copy_from_slice(b"abc");
        assert_eq!(PartHeader::read(&buf).unwrap(), (h, &b"abc"[..]));
    }

    #[test]
    fn message_refs_round_trip_and_refuse_junk() {
        let m = MessageRef {
            guarantee: 2,
            offset: 1 << 33,
            len: 64 << 20,
        };
        let enc = m.encode();
        assert_eq!(MessageRef::decode(&enc), Ok(m));
        for cut in 0..enc.len() {
            assert!(MessageRef::decode(&enc[..cut]).is_err());
        }
        let mut long = enc.to_vec();
        long.push(0);
        assert_eq!(MessageRef::decode(&long), Err(ProtoError::Trailing));
        let mut reserved = enc;
        reserved[5] = 1;
        assert!(MessageRef::decode(&reserved).is_err());
    }

    /// Untrusted input: every prefix and every single-byte corruption decodes to a
    /// value or an error, never a panic or a huge allocation.
    #[test]
    fn truncated_and_mutated_messages_never_panic() {
        let samples: Vec<Vec<u8>> = vec![
            Request::Join {
                flags: 1,
                name: b"GROUP".to_vec(),
            }
            .encode(),
            Reply::Membership {
                status: Status::Ok,
                members: vec![WireMember { node: 1, pid: 2 }; 3],
            }
            .encode(),
            Reply::IterNext {
                status: Status::Ok,
                entries: vec![
                    IterEntry {
                        name: b"g".to_vec(),
                        node: 1,
                        pid: 1
                    };
                    2
                ],
            }
            .encode(),
            Confchg {
                group: b"g".to_vec(),
                members: vec![WireAddress::default_for_test(); 2],
                ..Default::default()
            }
            .encode(),
            TotemConfchg {
                rep: 1,
                seq: 2,
                members: vec![1, 2],
            }
            .encode(),
        ];
        for s in &samples {
            for cut in 0..s.len() {
                let p = &s[..cut];
                let _ = Request::decode(p);
                let _ = Reply::decode(p);
                let _ = Confchg::decode(p);
                let _ = TotemConfchg::decode(p);
                let _ = PartHeader::read(p);
                let _ = DeliverHeader::read(p);
            }
            for i in 0..s.len() {
                for v in [0u8, 0x7f, 0xff] {
                    let mut m = s.clone();
                    m[i] = v;
                    let _ = Request::decode(&m);
                    let _ = Reply::decode(&m);
                    let _ = Confchg::decode(&m);
                    let _ = TotemConfchg::decode(&m);
                }
            }
        }
        // A count that claims more entries than bytes follow is refused up front.
        let mut w = Writer::new();
        w.u32(R_MEMBERSHIP).u32(1).u32(u32::MAX);
        assert_eq!(
            Reply::decode(&w.finish()),
            Err(ProtoError::BadField("member count"))
        );
    }

    impl WireAddress {
        fn default_for_test() -> WireAddress {
            WireAddress {
                node: 1,
                pid: 1,
                reason: 0,
            }
        }
    }
}
