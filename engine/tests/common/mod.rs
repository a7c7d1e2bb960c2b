//! The real-process test harness shared by the daemon and client tests: `ringcastd`
//! processes on 127.0.0.x, each with its own port, state directory and client socket,
//! short timers and the backoff idle strategy, killed when the test ends (also on
//! panic).
#![allow(dead_code)]

pub mod checked;
pub mod netns;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringcast_engine::io::stats::{Snapshot, StatsReader, state_name};

/// Node addresses in network namespaces: `<NETNS_SUBNET>.<id>/24`.
pub const NETNS_SUBNET: &str = "10.77.0";
pub const DAEMON: &str = env!("CARGO_BIN_EXE_ringcastd");
/// The `ringcast` command line (crate ringcast-cli): cargo builds it next to ringcastd
/// when the workspace's tests are built (`make test`).
pub fn cli_bin() -> PathBuf {
    let path = std::path::Path::new(DAEMON).with_file_name("ringcast");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p ringcast-cli`",
        path.display()
    );
    path
}
pub const TOKEN_MS: u64 = 300;
/// Generous for a loaded 2-core machine; membership itself takes token + consensus.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long client tests wait for any one event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of the engine listening at `socket`, retried while the engine starts.
pub fn connect_to(socket: &std::path::Path) -> ringcast::Cpg {
    let options = ringcast::ConnectOptions {
        socket: socket.to_path_buf(),
        initial_totem_conf: false,
    };
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        match ringcast::Cpg::connect(&options) {
            Ok(cpg) => return cpg,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect to {}: {e}", socket.display()),
        }
    }
}

/// Retries TRY_AGAIN (a sync in progress, or a full submit ring) the way CPG programs do.
pub fn retry<T>(mut f: impl FnMut() -> ringcast::Result<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.is_try_again() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

pub fn addr(id: u32) -> String {
    format!("127.0.0.{id}")
}

/// A UDP port the OS gives out on 127.0.0.1 that is also free on 127.0.0.2..=`n`, so that
/// no two tests (nor two test runs on one host) share a ring's port.
pub fn free_port(n: u32) -> u16 {
    for _ in 0..64 {
        let first = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = first.local_addr().expect("local_addr").port();
        let rest: Result<Vec<_>, _> = (2..=n)
            .map(|id| std::net::UdpSocket::bind(format!("{}:{port}", addr(id))))
            .collect();
        if rest.is_ok() {
            return port;
        }
    }
    panic!("no UDP port free on 127.0.0.1..={n} after 64 tries");
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.trim_start().chars().next())
                == Some('Z')
        }
        Err(_) => true,
    }
}

/// The last `n` lines of `text`, indented, for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

/// One running daemon; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child's pid (still unreaped, so not reused).
        unsafe { libc::kill(self.pid(), signal) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of `n` configured nodes (ids 1..=n on 127.0.0.id:port).
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub n: u32,
    pub key: Option<PathBuf>,
    pub extra: Vec<String>,
    /// Every node writes a delivery log (`deliveries<id>` in `dir`).
    pub delivery_logs: bool,
    /// Node `id` runs in network namespace `<netns><id>` ([`Netns`]) at
    /// [`NETNS_SUBNET`]`.id` instead of on 127.0.0.`id`.
    pub netns: Option<String>,
    pub daemons: Vec<Option<Daemon>>,
}

impl Cluster {
    pub fn new(name: &str, port: u16, n: u32) -> Cluster {
        let dir = std::env::temp_dir().join(format!("ringcast-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cluster {
            dir,
            port,
            n,
            key: None,
            extra: Vec::new(),
            delivery_logs: false,
            netns: None,
            daemons: (0..=n).map(|_| None).collect(),
        }
    }

    pub fn with_key(mut self) -> Cluster {
        let key = self.dir.join("authkey");
        let status = Command::new(DAEMON)
            .arg("--gen-key")
            .arg(&key)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        self.key = Some(key);
        self
    }

    /// Where node `id`'s engine listens for clients.
    pub fn socket(&self, id: u32) -> PathBuf {
        self.state_dir(id).join("ringcast.sock")
    }

    pub fn state_dir(&self, id: u32) -> PathBuf {
        self.dir.join(format!("n{id}"))
    }

    pub fn args(&self, id: u32) -> Vec<String> {
        let mut args = vec![
            "--node-id".into(),
            id.to_string(),
            "--port".into(),
            self.port.to_string(),
            "--cluster-name".into(),
            format!("test-{}", self.port),
            "--token-ms".into(),
            TOKEN_MS.to_string(),
            "--token-coefficient-ms".into(),
            "0".into(),
            "--idle".into(),
            "backoff".into(),
            "--state-dir".into(),
            self.state_dir(id).display().to_string(),
            "--log-level".into(),
            "info".into(),
            "--ipc-socket".into(),
            self.socket(id).display().to_string(),
        ];
        for node in 1..=self.n {
            args.push("--node".into());
            args.push(format!("{node}={}", self.addr(node)));
        }
        if let Some(key) = &self.key {
            args.push("--key-file".into());
            args.push(key.display().to_string());
        }
        if self.delivery_logs {
            args.push("--delivery-log".into());
            args.push(self.delivery_log(id).display().to_string());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    pub fn addr(&self, id: u32) -> String {
        match self.netns {
            None => addr(id),
            Some(_) => format!("{NETNS_SUBNET}.{id}"),
        }
    }

    pub fn delivery_log(&self, id: u32) -> PathBuf {
        self.dir.join(format!("deliveries{id}"))
    }

    pub fn start(&mut self, id: u32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("log{id}")))
            .unwrap();
        let mut command = match &self.netns {
            None => Command::new(DAEMON),
            // `ip netns exec` execs the daemon: the child's pid is the daemon's.
            Some(prefix) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &format!("{prefix}{id}"), DAEMON]);
                command
            }
        };
        let child = command
            .args(self.args(id))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ringcastd");
        self.daemons[id as usize] = Some(Daemon { child });
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.n {
            self.start(id);
        }
    }

    pub fn daemon(&mut self, id: u32) -> &mut Daemon {
        self.daemons[id as usize].as_mut().expect("running")
    }

    pub fn kill9(&mut self, id: u32) {
        let mut daemon = self.daemons[id as usize].take().expect("running");
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit(Duration::from_secs(5)).expect("killed");
    }

    /// The node's stats page, once it exists and belongs to the running process.
    pub fn status(&self, id: u32) -> Option<Snapshot> {
        let daemon = self.daemons[id as usize].as_ref()?;
        let path = self.state_dir(id).join(format!("stats_{id}"));
        let snapshot = StatsReader::open(&path).ok()?.snapshot();
        (snapshot.pid == daemon.child.id()).then_some(snapshot)
    }

    /// Waits until every listed node is operational in one ring of exactly `members`.
    pub fn wait_ring(&self, members: &[u32], timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let statuses: Vec<Option<Snapshot>> =
                members.iter().map(|id| self.status(*id)).collect();
            let formed = statuses.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    state_name(s.state) == "operational"
                        && s.members == members
                        && Some(s.ring_id) == statuses[0].as_ref().map(|f| f.ring_id)
                })
            });
            if formed {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let seen: Vec<String> = statuses
                    .iter()
                    .zip(members)
                    .map(|(s, id)| match s {
                        Some(s) => format!(
                            "node {id}: {} ring {} members {:?}",
                            state_name(s.state),
                            s.ring_id,
                            s.members
                        ),
                        None => self.why_no_status(*id),
                    })
                    .collect();
                return Err(format!(
                    "no ring {members:?} after {timeout:?}: {}; logs in {}",
                    seen.join("; "),
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Why node `id` shows no stats page: not started, exited (with its log's end), or
    /// running without one yet.
    fn why_no_status(&self, id: u32) -> String {
        match &self.daemons[id as usize] {
            None => format!("node {id}: not running"),
            Some(daemon) if has_exited(daemon.child.id()) => {
                format!("node {id}: exited; its log ends:{}", tail(&self.log(id), 8))
            }
            Some(_) => format!("node {id}: running, no stats page yet"),
        }
    }

    pub fn counter(&self, id: u32, name: &str) -> u64 {
        self.status(id)
            .and_then(|s| s.counter(name))
            .unwrap_or_else(|| panic!("node {id} has no counter {name}"))
    }

    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("log{id}"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.daemons.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn wait_for(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(50), condition)
}

pub fn poll_until(timeout: Duration, every: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(every);
    }
    condition()
}
