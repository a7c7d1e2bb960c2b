//! An engine and its clients run by a user who is not root, on built-in defaults: the
//! engine puts its socket in /tmp/ringcast-$UID (no XDG_RUNTIME_DIR) or
//! $XDG_RUNTIME_DIR/ringcast, its state in $HOME/.local/state/ringcast or beside the
//! socket, and `ringcast` finds both with no flags. Run as root (CI), the test drops to
//! an unused uid with setpriv; run as a user, it is that user.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_ringcast");

fn daemon_bin() -> PathBuf {
    let path = Path::new(CLI).with_file_name("ringcastd");
    assert!(
        path.exists(),
        "{} missing: cargo build -p ringcast-engine",
        path.display()
    );
    path
}

/// `program` where another user can run it: in place when every directory above it is
/// searchable by others (e.g. under /work), else a copy in a 0755 directory (a clone
/// under /root, mode 0700). The copies are made once, before any test spawns anything:
/// a child forked while a copy is open for writing would make its exec fail (ETXTBSY).
fn runnable_by_others(program: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPIES: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let dir = COPIES.get_or_init(|| {
        let open = Path::new(CLI)
            .ancestors()
            .skip(1)
            .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0));
        if open || euid() != 0 {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("ringcast-nonroot-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for bin in [PathBuf::from(CLI), daemon_bin()] {
            std::fs::copy(&bin, dir.join(bin.file_name().unwrap())).unwrap();
        }
        Some(dir)
    });
    match dir {
        Some(dir) => dir.join(program.file_name().unwrap()),
        None => program.to_path_buf(),
    }
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// How to run a program as the test's user: (uid, command builder).
struct User {
    uid: u32,
    /// Set for a real user: a private XDG_RUNTIME_DIR, so a developer's own engine is
    /// left alone.
    runtime: Option<PathBuf>,
}

impl User {
    fn command(&self, program: &Path) -> Command {
        let mut cmd = if euid() == 0 {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.uid))
                .arg("--clear-groups")
                .arg(runnable_by_others(program));
            cmd
        } else {
            Command::new(program)
        };
        cmd.env_remove("RINGCAST_SOCKET")
            .env_remove("RINGCAST_STATE_DIR")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", "/nonexistent");
        match &self.runtime {
            Some(dir) => cmd.env("XDG_RUNTIME_DIR", dir),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        cmd
    }

    fn runtime_dir(&self) -> PathBuf {
        match &self.runtime {
            Some(dir) => dir.join("ringcast"),
            None => PathBuf::from(format!("/tmp/ringcast-{}", self.uid)),
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

fn test_user() -> User {
    if euid() == 0 {
        // An unused uid (no passwd entry needed), one per test process.
        User {
            uid: 61_000 + std::process::id() % 4_000,
            runtime: None,
        }
    } else {
        let dir = std::env::temp_dir().join(format!("ringcast-xdg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        User {
            uid: euid(),
            runtime: Some(dir),
        }
    }
}

#[test]
fn a_user_runs_an_engine_and_clients_on_built_in_defaults() {
    let user = test_user();
    let runtime = user.runtime_dir();
    let _ = std::fs::remove_dir_all(&runtime);
    let port = free_port();
    let mut engine = Killed(
        user.command(&daemon_bin())
            .args(["--port", &port.to_string()])
            .args(["--cluster-name", &format!("non-root-{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its first line says where clients connect.
    let stderr = engine.0.stderr.take().unwrap();
    let mut stderr = BufReader::new(stderr);
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    // Keep reading: the engine logs to stderr and must not find it closed.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let socket = runtime.join("ringcast.sock");
    assert!(
        first.contains(&format!("clients connect at {}", socket.display())),
        "{first}"
    );

    let mut listener = Killed(
        user.command(Path::new(CLI))
            .args(["listen", "demo", "--count", "1", "--wait", "20"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = BufReader::new(listener.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?}: {e}"),
            }
        }
    };
    wait_line("confchg group=demo");
    let out = user
        .command(Path::new(CLI))
        .args(["send", "demo", "hello from a user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_line("hello from a user");
    assert!(listener.0.wait().unwrap().success());

    let out = user.command(Path::new(CLI)).arg("status").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("running true"));

    // The runtime directory is the user's alone.
    let meta = std::fs::metadata(&runtime).unwrap();
    assert_eq!(meta.uid(), user.uid);
    assert_eq!(meta.mode() & 0o777, 0o700);
    drop(engine);
    let _ = std::fs::remove_dir_all(&runtime);
    if let Some(dir) = &user.runtime {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Someone else's /tmp/ringcast-$UID is refused, not used.
#[test]
fn a_runtime_dir_of_another_user_is_refused() {
    if euid() != 0 {
        eprintln!("SKIPPED: needs root to create another user's directory");
        return;
    }
    let user = User {
        uid: 65_000 + std::process::id() % 400,
        runtime: None,
    };
    let squatted = user.runtime_dir();
    let _ = std::fs::remove_dir_all(&squatted);
    std::fs::create_dir_all(&squatted).unwrap(); // owned by root
    let out = user
        .command(&daemon_bin())
        .args(["--port", &free_port().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runtime directory"), "{stderr}");
    std::fs::remove_dir_all(&squatted).unwrap();
}
