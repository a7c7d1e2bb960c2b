//! Wake-ups between processes: an eventfd, nonblocking, waited on with poll(2) (or handed to
//! io_uring, epoll or an async runtime through its fd).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Largest number of reads [`EventFd::drain`] makes; one read empties a (non-semaphore)
/// eventfd, more only happen while the peer keeps notifying.
const MAX_DRAIN_READS: usize = 8;

/// An eventfd created with `EFD_CLOEXEC | EFD_NONBLOCK`.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with a zero count.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no pointer arguments.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    /// Wraps an eventfd received from the peer. It should be nonblocking (the peer created
    /// it with [`EventFd::new`]); a blocking one makes `drain` block when the count is 0.
    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// Adds 1 to the count, waking a waiter. A count at its maximum (EAGAIN) already wakes
    /// every waiter, so that is success too.
    pub fn notify(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        loop {
            // SAFETY: writes 8 bytes from a live 8-byte buffer.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            if n == one.len() as isize {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(err),
            }
        }
    }

    /// Resets the count to 0, returning what it was (summed over the reads).
    pub fn drain(&self) -> io::Result<u64> {
        let mut total = 0u64;
        for _ in 0..MAX_DRAIN_READS {
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == buf.len() as isize {
                total = total.saturating_add(u64::from_ne_bytes(buf));
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(total),
                _ => return Err(err),
            }
        }
        Ok(total)
    }

    /// Blocks until the count is nonzero or `timeout` passes (`None`: no limit). Returns
    /// whether it is readable. Does not drain. Sub-millisecond timeouts round up to 1 ms.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let timeout_ms: libc::c_int = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ms = left.as_nanos().div_ceil(1_000_000);
                    ms.min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, count 1.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if n > 0 {
                if pfd.revents & libc::POLLNVAL != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                return Ok(pfd.revents & libc::POLLIN != 0);
            }
            if n == 0 {
                return Ok(false);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// The raw fd (for io_uring or epoll registration).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives up ownership of the fd (e.g. to send it).
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn notify_wakes_and_drain_resets() {
        let ev = EventFd::new().unwrap();
        assert!(!ev.wait(Some(Duration::ZERO)).unwrap());
        assert_eq!(ev.drain().unwrap(), 0);
        ev.notify().unwrap();
        ev.notify().unwrap();
        assert!(ev.wait(Some(Duration::from_millis(10))).unwrap());
        assert!(ev.wait(None).unwrap());
        assert_eq!(ev.drain().unwrap(), 2);
        let started = Instant::now();
        assert!(!ev.wait(Some(Duration::from_millis(20))).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn wakes_another_thread_through_a_duplicated_fd() {
        let ev = EventFd::new().unwrap();
        let other = EventFd::from_owned(ev.as_fd().try_clone_to_owned().unwrap());
        let waiter = std::thread::spawn(move || {
            let woke = other.wait(Some(Duration::from_secs(10))).unwrap();
            (woke, other.drain().unwrap())
        });
        std::thread::sleep(Duration::from_millis(20));
        ev.notify().unwrap();
        assert_eq!(waiter.join().unwrap(), (true, 1));
        let raw = ev.as_raw_fd();
        let owned = ev.into_owned();
        assert_eq!(owned.as_raw_fd(), raw);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn notify_at_the_maximum_count_is_not_an_error() {
        let ev = EventFd::new().unwrap();
        let max = (u64::MAX - 1).to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer.
        let n = unsafe { libc::write(ev.as_raw_fd(), max.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
        ev.notify().unwrap();
        assert_eq!(ev.drain().unwrap(), u64::MAX - 1);
    }
}
