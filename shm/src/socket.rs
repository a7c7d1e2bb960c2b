//! The control socket: `SOCK_SEQPACKET` Unix sockets (whole messages, in order,
//! EOF when the peer dies), file descriptors passed with `SCM_RIGHTS`, and the peer's
//! credentials from `SO_PEERCRED`. The standard library has no seqpacket sockets, so
//! this is the one place that calls the socket FFI directly.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// The peer's identity as the kernel reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A connected or listening `SOCK_SEQPACKET` Unix socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path must be 1..{} bytes without NUL: {}",
                addr.sun_path.len(),
                path.display()
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn new_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl SeqPacket {
    /// Connects to a listening engine.
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = new_socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        Ok(SeqPacket { fd })
    }

    /// Binds and listens at `path`, replacing a stale socket file left by a previous
    /// run (but never a live one: if something accepts connections there, this fails
    /// with `AddrInUse`).
    pub fn listen(path: &Path, backlog: i32) -> io::Result<SeqPacket> {
        if path.exists() {
            match SeqPacket::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another engine listens on {}", path.display()),
                    ));
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        let fd = new_socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        // SAFETY: plain syscall on a socket we own.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
        Ok(SeqPacket { fd })
    }

    /// Accepts one connection; `Ok(None)` when none is pending on a non-blocking socket.
    pub fn accept(&self) -> io::Result<Option<SeqPacket>> {
        // SAFETY: null address arguments are allowed; flags are constants.
        let ret = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ECONNABORTED) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `ret` is a new descriptor returned by accept4, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(ret) };
        Ok(Some(SeqPacket { fd }))
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        // SAFETY: fcntl on a descriptor we own.
        let flags = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) })?;
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags) })?;
        Ok(())
    }

    /// Bounds every blocking receive (a client waiting for a reply never hangs for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(d) => libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: `tv` is a valid timeval that outlives the call.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        })?;
        Ok(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// Sends one message, with `fds` attached when not empty.
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let payload = std::mem::size_of_val(fds) as u32;
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
            debug_assert!(space <= std::mem::size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` bytes of aligned, writable memory, so
            // CMSG_FIRSTHDR returns a valid header inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                let dst = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    dst.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        loop {
            // SAFETY: `msg` and everything it points to outlive the call.
            let ret = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if ret >= 0 {
                return if ret as usize == data.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::WriteZero, "short send"))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one message into `buf`. `Ok(None)` is EOF (the peer closed or died).
    /// Descriptors that arrive with it are returned owned (and closed on drop).
    /// A message longer than `buf` is an error (`InvalidData`), never silently cut.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = loop {
            // SAFETY: `msg` and the buffers it points to outlive the call.
            let ret =
                unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if ret >= 0 {
                break ret as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG macros walk
        // only within them, and every SCM_RIGHTS payload holds whole descriptors that
        // now belong to us.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                    let count = bytes / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let raw = data.cast::<RawFd>().add(i).read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors attached",
            ));
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message larger than the receive buffer",
            ));
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        Ok(Some((n, fds)))
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn messages_fds_and_credentials_cross_the_socket() {
        let dir = std::env::temp_dir().join(format!("ringcast-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let listener = SeqPacket::listen(&path, 4).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        let server = loop {
            if let Some(s) = listener.accept().unwrap() {
                break s;
            }
        };
        let cred = server.peer_cred().unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        server.send(b"hello", &[file.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = client.recv(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);

        // A message larger than the buffer is an error, not a silent cut.
        client.send(&[7u8; 100], &[]).unwrap();
        server.set_nonblocking(false).unwrap();
        assert!(server.recv(&mut buf).is_err());

        // A second listener on a live socket is refused.
        assert!(SeqPacket::listen(&path, 4).is_err());

        drop(client);
        assert!(server.recv(&mut buf).unwrap().is_none(), "EOF after close");
        drop(listener);
        // A stale socket file is replaced.
        let again = SeqPacket::listen(&path, 4);
        assert!(again.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
