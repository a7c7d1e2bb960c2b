//! The systems under test: Corosync (Debian's `corosync -f`, a generated config) or
//! ringcast (`ringcastd`), on one node or three, every node in its own network
//! namespace (three joined by veth pairs on a bridge at MTU 1500). Everything started
//! here is stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringcast_netns::{Netns, Topology};
use ringcast_shm::stats::{StatsReader, page_path};

/// Which daemon and client library.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum System {
    Corosync,
    Ringcast,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Corosync => "corosync",
            System::Ringcast => "ringcast",
        }
    }
}

/// Where ringcast's pieces are.
#[derive(Clone, Debug)]
pub struct RingcastPaths {
    pub daemon: PathBuf,
    /// The directory holding ringcast's `libcpg.so.4` (`make install-c`).
    pub libdir: PathBuf,
    /// `--set key=value` settings for every engine.
    pub settings: Vec<String>,
}

/// The subnet of the three-node topology (inside namespaces this harness creates).
const SUBNET: &str = "10.231.77";
/// Bound on a daemon's exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running topology of one system.
pub struct Cluster {
    pub system: System,
    pub nodes: u32,
    daemons: Vec<Child>,
    dir: PathBuf,
    ringcast: RingcastPaths,
    // Dropped after the daemons are stopped (field order).
    netns: Netns,
}

impl Cluster {
    /// Starts `nodes` daemons of `system` under `dir` (created, emptied by the caller).
    pub fn start(
        system: System,
        nodes: u32,
        dir: &Path,
        ringcast: &RingcastPaths,
    ) -> Result<Cluster, String> {
        let prefix = format!("cbc{}{}", std::process::id() % 100_000, &system.name()[..1]);
        let netns = Netns::create(&Topology {
            prefix,
            subnet: SUBNET.to_owned(),
            nodes,
            mtu: Some(1500),
            link_single_node: false,
        })?;
        let mut cluster = Cluster {
            system,
            nodes,
            daemons: Vec::new(),
            dir: dir.to_owned(),
            ringcast: ringcast.clone(),
            netns,
        };
        for id in 1..=nodes {
            let node_dir = dir.join(format!("n{id}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| format!("{node_dir:?}: {e}"))?;
            let script = match system {
                System::Corosync => cluster.corosync_script(id, &node_dir)?,
                System::Ringcast => cluster.ringcast_script(id, &node_dir),
            };
            let log = std::fs::File::create(node_dir.join("daemon.log"))
                .map_err(|e| format!("log: {e}"))?;
            // `ip netns exec` and the shell both exec: the child's pid is the daemon's.
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &cluster.netns.node(id),
                    "sh",
                    "-c",
                    &script,
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start {}: {e}", system.name()))?;
            cluster.daemons.push(child);
        }
        // A daemon that cannot start (bad config, port taken) exits at once.
        std::thread::sleep(Duration::from_millis(300));
        if !cluster.alive() {
            return Err(format!(
                "{} did not start:\n{}",
                system.name(),
                cluster.log(1)
            ));
        }
        Ok(cluster)
    }

    fn addr(&self, id: u32) -> String {
        if self.nodes == 1 {
            "127.0.0.1".into()
        } else {
            self.netns.addr(id)
        }
    }

    /// Corosync keeps its pid file in /run: each daemon gets a private /run (the mount
    /// namespace `ip netns exec` made), and its state in the node's directory.
    fn corosync_script(&self, id: u32, node_dir: &Path) -> Result<String, String> {
        let mut nodelist = String::new();
        for n in 1..=self.nodes {
            nodelist.push_str(&format!(
                "  node {{\n    ring0_addr: {}\n    nodeid: {n}\n    name: n{n}\n  }}\n",
                self.addr(n)
            ));
        }
        let conf = format!(
            "totem {{\n  version: 2\n  cluster_name: cpgbench\n  transport: knet\n  \
             crypto_cipher: none\n  crypto_hash: none\n}}\nnodelist {{\n{nodelist}}}\n\
             logging {{\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n}}\n\
             system {{\n  state_dir: {}\n}}\n",
            node_dir.display()
        );
        let path = node_dir.join("corosync.conf");
        std::fs::write(&path, conf).map_err(|e| format!("{path:?}: {e}"))?;
        let _ = id;
        Ok(format!(
            "mount -t tmpfs none /run && ulimit -n \"$(ulimit -Hn)\" && exec corosync -f -c {}",
            path.display()
        ))
    }

    fn ringcast_script(&self, id: u32, node_dir: &Path) -> String {
        let mut args = vec![
            self.ringcast.daemon.display().to_string(),
            format!("--node-id {id}"),
            "--cluster-name cpgbench".into(),
            format!("--state-dir {}", node_dir.display()),
            format!("--ipc-socket {}", self.socket(id).display()),
        ];
        for n in 1..=self.nodes {
            args.push(format!("--node {n}={}", self.addr(n)));
        }
        for s in &self.ringcast.settings {
            args.push(format!("--set {s}"));
        }
        format!("ulimit -n \"$(ulimit -Hn)\" && exec {}", args.join(" "))
    }

    fn socket(&self, id: u32) -> PathBuf {
        self.dir.join(format!("n{id}")).join("ringcast.sock")
    }

    /// The daemons' CPU time so far (user + system), summed over the nodes.
    pub fn daemon_cpu_seconds(&self) -> f64 {
        self.daemons.iter().map(|c| cpu_seconds(c.id())).sum()
    }

    /// Token rotations so far, summed over the nodes (each counts the rotations it
    /// saw as the ring's representative in ringcast, the tokens it received in
    /// Corosync: one per rotation per node, so Corosync's sum is divided by the node
    /// count). `None` when a counter cannot be read within a second (a daemon that
    /// has just started may not answer yet).
    pub fn token_rotations(&self) -> Option<u64> {
        for _ in 0..5 {
            if let Some(rotations) = self.read_token_rotations() {
                return Some(rotations);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    fn read_token_rotations(&self) -> Option<u64> {
        match self.system {
            System::Ringcast => (1..=self.nodes)
                .map(|id| {
                    let path = page_path(&self.dir.join(format!("n{id}")), id);
                    StatsReader::open(&path)
                        .ok()?
                        .snapshot()
                        .counter("token_rotations")
                })
                .sum(),
            System::Corosync => {
                let received: Option<u64> = (1..=self.nodes).map(|id| self.orf_tokens(id)).sum();
                received.map(|r| r / u64::from(self.nodes))
            }
        }
    }

    /// Corosync's count of tokens node `id` received (`stats.srp.orf_token_rx`).
    fn orf_tokens(&self, id: u32) -> Option<u64> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.netns.node(id)])
            .args(["corosync-cmapctl", "-m", "stats", "stats.srp.orf_token_rx"])
            .output()
            .ok()?;
        // "stats.srp.orf_token_rx (u64) = 12345"
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find(|l| l.starts_with("stats.srp.orf_token_rx"))?
            .rsplit_once('=')?
            .1
            .trim()
            .parse()
            .ok()
    }

    /// A command running `program` on node 1 against this system's library.
    pub fn client(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns.node(1)]);
        cmd.arg(program);
        if self.system == System::Ringcast {
            cmd.env("LD_LIBRARY_PATH", &self.ringcast.libdir);
            cmd.env("RINGCAST_SOCKET", self.socket(1));
        }
        cmd
    }

    /// Whether every daemon is still running (a crash makes the figure void).
    pub fn alive(&mut self) -> bool {
        self.daemons
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{id}/daemon.log"))).unwrap_or_default()
    }

    fn stop(&mut self) {
        for child in &self.daemons {
            // SAFETY: kill(2) with a pid this harness spawned and has not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for child in &mut self.daemons {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "bench-compare: daemon {} ignored SIGTERM: SIGKILL",
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.daemons.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// utime + stime of a process from /proc/<pid>/stat (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields are counted after its closing ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}
