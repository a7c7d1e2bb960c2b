//! Where an engine and its clients meet when nothing is configured: the one rule both
//! sides follow, so that a client finds the engine's socket and stats page on built-in
//! defaults.
//!
//! | who      | runtime dir (socket)                          | state dir (ring seq, stats page)                  |
//! |----------|-----------------------------------------------|---------------------------------------------------|
//! | root     | `/run/ringcast`                               | `/var/lib/ringcast`                               |
//! | any user | `$XDG_RUNTIME_DIR/ringcast`, else `/tmp/ringcast-$UID` | `$XDG_STATE_HOME/ringcast`, else `$HOME/.local/state/ringcast` (if `$HOME` exists), else `<runtime dir>/state` |
//!
//! An explicit setting (`ipc_socket`, `state_dir`, `--socket`, `RINGCAST_SOCKET`) always
//! wins over these.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The system-wide socket (an engine run by root, e.g. from the systemd unit).
pub const SYSTEM_SOCKET: &str = "/run/ringcast/ringcast.sock";
/// The system-wide runtime directory.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/ringcast";
/// The system-wide state directory.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/ringcast";
/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "ringcast.sock";

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The environment the defaults are derived from (a seam for tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub uid: u32,
    pub xdg_runtime_dir: Option<OsString>,
    pub xdg_state_home: Option<OsString>,
    pub home: Option<OsString>,
}

impl Env {
    /// This process's user and environment.
    pub fn current() -> Env {
        Env {
            uid: effective_uid(),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR"),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME"),
            // A home that does not exist (`nobody`'s /nonexistent) cannot hold state.
            home: std::env::var_os("HOME").filter(|h| Path::new(h).is_dir()),
        }
    }

    /// An absolute, non-empty path from a variable (the XDG rules ignore relative ones).
    fn absolute(value: &Option<OsString>) -> Option<PathBuf> {
        value
            .as_ref()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }

    pub fn runtime_dir(&self) -> PathBuf {
        if self.uid == 0 {
            return PathBuf::from(SYSTEM_RUNTIME_DIR);
        }
        match Env::absolute(&self.xdg_runtime_dir) {
            Some(dir) => dir.join("ringcast"),
            None => PathBuf::from(format!("/tmp/ringcast-{}", self.uid)),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        if self.uid == 0 {
            return PathBuf::from(SYSTEM_STATE_DIR);
        }
        if let Some(dir) = Env::absolute(&self.xdg_state_home) {
            return dir.join("ringcast");
        }
        if let Some(home) = Env::absolute(&self.home).filter(|h| h != Path::new("/")) {
            return home.join(".local/state/ringcast");
        }
        self.runtime_dir().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join(SOCKET_NAME)
    }
}

/// Default runtime directory of an engine run by this user.
pub fn runtime_dir() -> PathBuf {
    Env::current().runtime_dir()
}

/// Default state directory of an engine run by this user.
pub fn state_dir() -> PathBuf {
    Env::current().state_dir()
}

/// Default socket of an engine run by this user (where clients look first).
pub fn socket() -> PathBuf {
    Env::current().socket()
}

/// Creates `dir` (mode 0700) if it is missing, and refuses one that another user owns
/// or others can write: in `/tmp` anyone may have created the directory first, to
/// receive this user's clients.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = effective_uid();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of user {uid} that only it can write",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(uid: u32, runtime: Option<&str>, state: Option<&str>, home: Option<&str>) -> Env {
        Env {
            uid,
            xdg_runtime_dir: runtime.map(OsString::from),
            xdg_state_home: state.map(OsString::from),
            home: home.map(OsString::from),
        }
    }

    #[test]
    fn root_uses_the_system_directories() {
        let e = env(0, Some("/run/user/0"), Some("/x"), Some("/root"));
        assert_eq!(e.socket(), PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(e.state_dir(), PathBuf::from(SYSTEM_STATE_DIR));
    }

    #[test]
    fn users_get_their_own_directories() {
        let e = env(1000, Some("/run/user/1000"), None, Some("/home/ann"));
        assert_eq!(
            e.socket(),
            PathBuf::from("/run/user/1000/ringcast/ringcast.sock")
        );
        assert_eq!(
            e.state_dir(),
            PathBuf::from("/home/ann/.local/state/ringcast")
        );
        let e = env(1000, None, Some("/home/ann/st"), None);
        assert_eq!(
            e.socket(),
            PathBuf::from("/tmp/ringcast-1000/ringcast.sock")
        );
        assert_eq!(e.state_dir(), PathBuf::from("/home/ann/st/ringcast"));
        // Relative XDG values are ignored (XDG base directory specification).
        let e = env(1000, Some("run"), Some("st"), None);
        assert_eq!(e.runtime_dir(), PathBuf::from("/tmp/ringcast-1000"));
        assert_eq!(e.state_dir(), PathBuf::from("/tmp/ringcast-1000/state"));
    }

    #[test]
    fn private_dirs_are_created_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("ringcast-paths-{}", std::process::id()));
        let dir = base.join("a/b");
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        ensure_private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_private_dir(&dir).is_err());
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(ensure_private_dir(&base.join("file")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
