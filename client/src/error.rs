//! Errors: one `cs_error_t` status (docs/cpg.md §2.1) plus, where it helps, what happened.

pub use ringcast_shm::proto::Status;

/// A failed call. [`Error::status`] is the `cs_error_t` a C caller would get.
#[derive(Debug, thiserror::Error)]
#[error("{status:?}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct Error {
    status: Status,
    detail: Option<String>,
}

impl Error {
    pub fn new(status: Status) -> Error {
        Error {
            status,
            detail: None,
        }
    }

    pub fn with_detail(status: Status, detail: impl Into<String>) -> Error {
        Error {
            status,
            detail: Some(detail.into()),
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The numeric `cs_error_t`.
    pub fn code(&self) -> u32 {
        self.status as u32
    }

    /// Retry later: a full ring, a full Totem queue, or a membership change in progress.
    pub fn is_try_again(&self) -> bool {
        self.status == Status::TryAgain
    }

    /// The engine went away; the handle is useless (reconnect).
    pub fn is_library(&self) -> bool {
        self.status == Status::Library
    }

    /// An io error during a call, translated as libcpg does (docs/cpg.md §2.1).
    pub fn from_io(e: &std::io::Error, what: &str) -> Error {
        let status = match e.raw_os_error() {
            Some(libc::EBADF) => Status::BadHandle,
            Some(libc::ENOMEM) => Status::NoMemory,
            Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMSG | libc::ETIMEDOUT) => Status::TryAgain,
            Some(libc::EINVAL) => Status::InvalidParam,
            Some(libc::EACCES) => Status::Access,
            Some(libc::EINTR) => Status::Interrupt,
            Some(libc::ENOENT | libc::ENODEV) => Status::NotExist,
            _ => Status::Library,
        };
        Error::with_detail(status, format!("{what}: {e}"))
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::new(status)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
