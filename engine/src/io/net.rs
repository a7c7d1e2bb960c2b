//! UDP sockets for the two transports (docs/cpg.md §11), and socket addresses in the raw
//! form io_uring's `sendmsg`/`recvmsg` use.
//!
//! - `udpu`: one socket bound to this node's nodelist address; a multicast is one
//!   unicast copy per nodelist entry, this node included.
//! - `multicast`: the same unicast socket (tokens, and the source of everything sent),
//!   plus a socket bound to `group:port` that joined the group on this node's interface.
//!   Multicast loopback is on, so a node receives its own multicasts like Corosync does
//!   through its local socket pair.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::daemon::DaemonConfig;

/// Socket buffer sizes asked for (the kernel caps them at `net.core.*mem_max` unless
/// the engine may exceed it, see `size_buffers`).
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive buffer (and with `send` of send buffer): first
/// with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, which a process with `CAP_NET_ADMIN` may set
/// past `net.core.rmem_max`/`wmem_max` (socket(7)), else with `SO_RCVBUF`/`SO_SNDBUF`,
/// which the kernel caps at them. Returns the receive buffer the kernel granted (it
/// doubles the value asked for, for its bookkeeping; socket(7)), 0 if unknown.
///
/// The receive buffer is what a burst of the ring's datagrams fills while this node is
/// busy, and the flow-control window is sized from it (docs/performance.md, "The
/// flow-control window"): at the Debian default `rmem_max` of 208 KiB a full rotation
/// of large messages overflows it, the datagrams are dropped (`Udp: RcvbufErrors`)
/// and Totem retransmits them a rotation or more later.
fn size_buffers(socket: &Socket, send: bool) -> usize {
    let forced = |name: libc::c_int| -> bool {
        let bytes = libc::c_int::try_from(SOCKET_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd is open for the duration of the call; `bytes` is a valid
        // c_int for it.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                name,
                (&raw const bytes).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    };
    if !forced(libc::SO_RCVBUFFORCE) {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    }
    if send && !forced(libc::SO_SNDBUFFORCE) {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    }
    socket.recv_buffer_size().unwrap_or(0)
}

/// The receive buffer an engine's sockets get on this host, for this process (its
/// privileges, its network namespace's limits): what [`Sockets::open`] will be
/// granted, asked of a socket opened only to ask. 0 if unknown.
pub fn receive_buffer_grant() -> usize {
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .or_else(|_| Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)))
        .map_or(0, |socket| size_buffers(&socket, false))
}

/// How long a start waits for its port to be released.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds `socket` to `addr`, retrying while the address is in use for a few seconds: a
/// killed engine's io_uring is torn down asynchronously by the kernel, and its sockets
/// stay bound for a moment after the process is gone, so an immediate restart (after
/// `kill -9`, or by a supervisor) would otherwise fail.
fn bind_retrying(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    loop {
        match socket.bind(&addr.into()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The sockets of one engine: `[unicast]` or `[unicast, multicast]`.
#[derive(Debug)]
pub struct Sockets {
    pub unicast: UdpSocket,
    pub multicast: Option<UdpSocket>,
}

impl Sockets {
    pub fn open(config: &DaemonConfig) -> std::io::Result<Sockets> {
        let own = config.own_addr;
        let domain = Domain::for_address(own);
        let unicast = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        let granted = size_buffers(&unicast, true);
        // The kernel reports twice what it grants to the data (socket(7)).
        if granted < 2 * SOCKET_BUFFER_BYTES {
            tracing::warn!(
                granted,
                asked = SOCKET_BUFFER_BYTES,
                "socket receive buffer smaller than asked: raise net.core.rmem_max \
                 (`ringcast-tune check`) or give the engine CAP_NET_ADMIN; the \
                 flow-control window is sized from it (docs/performance.md)"
            );
        }
        bind_retrying(&unicast, own).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot bind {own} (nodelist): {e}"))
        })?;
        let multicast = match config.multicast_group {
            None => None,
            Some(group) => {
                match (group.ip(), own.ip()) {
                    (IpAddr::V4(_), IpAddr::V4(interface)) => {
                        unicast.set_multicast_if_v4(&interface)?;
                        unicast.set_multicast_loop_v4(true)?;
                        unicast.set_multicast_ttl_v4(config.settings.multicast_ttl)?;
                    }
                    _ => {
                        unicast.set_multicast_loop_v6(true)?;
                        unicast.set_multicast_hops_v6(config.settings.multicast_ttl)?;
                    }
                }
                let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
                socket.set_reuse_address(true)?;
                size_buffers(&socket, false);
                socket.bind(&group.into()).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot bind {group} (multicast_group): {e}"),
                    )
                })?;
                match (group.ip(), own.ip()) {
                    (IpAddr::V4(g), IpAddr::V4(interface)) => {
                        socket.join_multicast_v4(&g, &interface)?
                    }
                    (IpAddr::V6(g), _) => socket.join_multicast_v6(&g, 0)?,
                    _ => unreachable!("the config checks the address families"),
                }
                Some(socket.into())
            }
        };
        Ok(Sockets {
            unicast: unicast.into(),
            multicast,
        })
    }
}

/// A socket address as the kernel wants it for `msg_name`.
#[derive(Copy, Clone)]
pub enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_std())
    }
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        match addr {
            SocketAddr::V4(a) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn to_std(self) -> SocketAddr {
        match self {
            RawAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )),
            RawAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )),
        }
    }

    /// For `msg_name`; valid as long as `self` does not move.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            RawAddr::V4(a) => (a as *const libc::sockaddr_in).cast(),
            RawAddr::V6(a) => (a as *const libc::sockaddr_in6).cast(),
        }
    }

    pub fn socklen(&self) -> libc::socklen_t {
        match self {
            RawAddr::V4(_) => size_of::<libc::sockaddr_in>() as libc::socklen_t,
            RawAddr::V6(_) => size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        }
    }
}

/// Bytes of the IP and UDP headers in front of a datagram to `addr` (no IP options).
pub fn header_bytes(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 20 + 8,
        SocketAddr::V6(_) => 40 + 8,
    }
}

/// The MTU of the route from `local` to `peer`: what a socket bound to `local` and
/// connected to `peer` reports (`IP_MTU`, ip(7); `IPV6_MTU`, ipv6(7)). Connecting a
/// UDP socket sends nothing.
pub fn route_mtu(local: IpAddr, peer: SocketAddr) -> std::io::Result<usize> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::new(local, 0).into())?;
    socket.connect(&peer.into())?;
    let (level, name) = match peer {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the duration of the call; `mtu` and `len` are valid
    // for writes and `len` says how many bytes `mtu` has.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(mtu).unwrap_or(0))
}

/// Lets the kernel hand over a run of datagrams from one sender as one receive, with
/// their segment size in a `UDP_GRO` control message (udp(7)).
pub fn enable_gro(socket: &UdpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open; `on` is a valid c_int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `cmsghdr` as the kernel lays it out: its size, and the alignment of what follows.
const CMSG_HEADER: usize = size_of::<libc::cmsghdr>();
const CMSG_ALIGN: usize = size_of::<usize>();

/// The control message of a segmented send (`UDP_SEGMENT`, a u16 segment size): one
/// `cmsghdr` and its data, aligned like the kernel's `CMSG_SPACE`.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C, align(8))]
pub struct GsoControl([u8; GSO_CONTROL_BYTES]);

const GSO_CONTROL_BYTES: usize = CMSG_HEADER + size_of::<u16>().next_multiple_of(CMSG_ALIGN);

impl GsoControl {
    pub fn new(segment: u16) -> GsoControl {
        let mut bytes = [0u8; GSO_CONTROL_BYTES];
        let len = CMSG_HEADER + size_of::<u16>();
        bytes[..size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
        bytes[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        bytes[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
        bytes[CMSG_HEADER..CMSG_HEADER + 2].copy_from_slice(&segment.to_ne_bytes());
        GsoControl(bytes)
    }

    /// For `msg_control`; valid as long as `self` does not move.
    pub fn as_ptr(&self) -> *const libc::c_void {
        self.0.as_ptr().cast()
    }

    /// For `msg_controllen`.
    pub fn bytes(&self) -> usize {
        GSO_CONTROL_BYTES
    }
}

/// Room for received control messages: one `UDP_GRO` (a c_int), with slack.
pub const RECV_CONTROL_BYTES: usize = 64;

/// The segment size of a coalesced receive (its `UDP_GRO` control message), from the
/// control data the kernel wrote; `None` when there is none (one datagram) or it is
/// malformed. Parsed from bytes, without trusting alignment.
pub fn gro_segment(control: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    while let Some(header) = at
        .checked_add(CMSG_HEADER)
        .and_then(|end| control.get(at..end))
    {
        let len = usize::from_ne_bytes(header[..8].try_into().ok()?);
        let level = i32::from_ne_bytes(header[8..12].try_into().ok()?);
        let kind = i32::from_ne_bytes(header[12..16].try_into().ok()?);
        if len < CMSG_HEADER {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            let data = control.get(at + CMSG_HEADER..at.checked_add(len)?)?;
            let size = i32::from_ne_bytes(data.get(..4)?.try_into().ok()?);
            return usize::try_from(size).ok().filter(|s| *s > 0);
        }
        at = at.checked_add(len.checked_next_multiple_of(CMSG_ALIGN)?)?;
    }
    None
}

/// Room for the source address in a received buffer (`sockaddr_in6` is the largest).
pub const NAME_BYTES: usize = size_of::<libc::sockaddr_in6>();

/// The source address the kernel wrote into a receive buffer; `None` for anything but a
/// complete IPv4 or IPv6 address. Parsed from bytes, without trusting alignment.
pub fn parse_name(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::new(IpAddr::from(ip), port))
    } else if i32::from(family) == libc::AF_INET6 {
        let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
        let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            u32::from_ne_bytes(scope),
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_bytes(raw: &RawAddr) -> &[u8] {
        // SAFETY: `as_ptr` points at the sockaddr inside `raw`, which is `socklen()`
        // bytes long, initialised, and borrowed for the returned lifetime.
        unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.socklen() as usize) }
    }

    /// The engine gets at least what `rmem_max` allows (twice it as the kernel reports
    /// it), more with `CAP_NET_ADMIN`: the window's default is sized from this.
    #[test]
    fn receive_buffer_grant_is_what_the_kernel_allows() {
        let Some(rmem_max) = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
        else {
            println!("skipped: no /proc/sys/net/core/rmem_max");
            return;
        };
        let grant = receive_buffer_grant();
        assert!(
            grant >= 2 * rmem_max.min(SOCKET_BUFFER_BYTES),
            "granted {grant} with rmem_max {rmem_max}"
        );
        assert!(grant <= 2 * SOCKET_BUFFER_BYTES.max(rmem_max), "{grant}");
    }

    #[test]
    fn raw_addresses_round_trip() {
        for text in ["127.0.0.3:5405", "[::1]:7000"] {
            let addr: SocketAddr = text.parse().unwrap();
            let raw = RawAddr::new(addr);
            assert_eq!(raw.to_std(), addr);
            assert_eq!(parse_name(raw_bytes(&raw)), Some(addr));
        }
        assert_eq!(parse_name(&[]), None);
        assert_eq!(parse_name(&[0xff; 28]), None);
        let v4 = RawAddr::new("10.1.2.3:9".parse().unwrap());
        assert_eq!(parse_name(&raw_bytes(&v4)[..6]), None, "truncated");
    }

    /// A `UDP_GRO` message as the kernel writes it (after another message), and
    /// malformed control data, which yields no segment size rather than a panic.
    #[test]
    fn gro_segment_parses_untrusted_control_data() {
        let mut control = Vec::new();
        let mut cmsg = |level: i32, kind: i32, data: &[u8]| {
            let len = CMSG_HEADER + data.len();
            control.extend_from_slice(&len.to_ne_bytes());
            control.extend_from_slice(&level.to_ne_bytes());
            control.extend_from_slice(&kind.to_ne_bytes());
            control.extend_from_slice(data);
            control.resize(control.len().next_multiple_of(CMSG_ALIGN), 0);
        };
        cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7; 16]);
        cmsg(libc::SOL_UDP, libc::UDP_GRO, &1472i32.to_ne_bytes());
        assert_eq!(gro_segment(&control), Some(1472));
        assert_eq!(gro_segment(&control[..CMSG_HEADER + 16]), None);
        assert_eq!(gro_segment(&[]), None);
        assert_eq!(gro_segment(&[0xff; 40]), None);
        assert_eq!(gro_segment(&[0; 40]), None);
        let gso = GsoControl::new(1472);
        assert_eq!(gso.bytes(), 24);
        // The send side's message reads back with the receive side's parser once its
        // type is the receive one.
        let mut bytes = gso.0;
        bytes[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        bytes[CMSG_HEADER..CMSG_HEADER + 4].copy_from_slice(&1472i32.to_ne_bytes());
        let len = CMSG_HEADER + 4;
        bytes[..8].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(gro_segment(&bytes), Some(1472));
    }
}
