//! Signals and wake-ups as file descriptors the event loop reads through io_uring:
//! SIGTERM/SIGINT (leave and exit), SIGUSR1 (reload the fault-injection drop rule) and
//! SIGUSR2 (stop the load generator) through a signalfd (the signals are blocked in
//! every thread, so they are only ever consumed there), and an eventfd that other
//! threads (later: client sessions) write to wake the engine.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// `struct signalfd_siginfo` is 128 bytes.
pub const SIGINFO_BYTES: usize = 128;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own; `zeroed` is a
    // valid starting value for the plain C struct sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        set
    }
}

/// Blocks SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 in the calling thread and every thread it
/// spawns later.
/// Call first thing in `main`, before any thread exists.
pub fn block_termination_signals() -> std::io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a valid, initialised sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A signalfd for SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (blocking reads; io_uring polls it).
pub fn termination_fd() -> std::io::Result<OwnedFd> {
    let set = termination_set();
    // SAFETY: a valid sigset; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wakes the engine from another thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        // SAFETY: plain syscall with constant flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the engine's pending read of the eventfd complete.
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live stack buffer to our eventfd. A failure
        // (counter saturated) means a wake-up is pending anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}
