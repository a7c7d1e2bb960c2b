//! `ringcast`: operator commands.
//!
//! ```text
//! ringcast status                             # counters of node 1 under /var/lib/ringcast
//! ringcast status --state-dir DIR --node-id 3
//! ringcast groups                             # groups and members (like corosync-cpgtool)
//! ringcast listen GROUP                       # join GROUP and print what happens in it
//! ringcast send GROUP MESSAGE                 # join GROUP, multicast MESSAGE, leave
//! ```
//!
//! `groups`, `listen` and `send` connect to the engine's socket (`--socket`, or
//! `RINGCAST_SOCKET`, default /run/ringcast/ringcast.sock).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` that ends the program quietly when stdout is closed (`ringcast status |
/// head`), instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
use ringcast::{Address, ConnectOptions, Cpg, Dispatch, Guarantee, Handler, IterationKind, RingId};
use ringcast_engine::daemon::config::stats_path;
use ringcast_engine::io::stats::{StatsReader, now_unix_ms, state_name};

#[derive(Parser, Debug)]
#[command(name = "ringcast", version, about = "ringcast operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a running engine's ring, members and counters.
    Status {
        /// The engine's state_dir.
        #[arg(long, default_value = "/var/lib/ringcast")]
        state_dir: PathBuf,
        /// The engine's node id.
        #[arg(long, default_value_t = 1)]
        node_id: u32,
        /// The stats page itself (overrides --state-dir and --node-id).
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
    },
    /// List every group and its members (node/pid).
    Groups {
        #[arg(long, env = "RINGCAST_SOCKET", default_value = ringcast::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Join GROUP and print its membership changes and messages until interrupted.
    Listen {
        group: String,
        #[arg(long, env = "RINGCAST_SOCKET", default_value = ringcast::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Exit after this many messages (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Join GROUP, multicast MESSAGE, wait for its own delivery, and leave.
    Send {
        group: String,
        message: String,
        #[arg(long, env = "RINGCAST_SOCKET", default_value = ringcast::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// SAFE delivery instead of AGREED.
        #[arg(long)]
        safe: bool,
    },
}

fn connect(socket: PathBuf) -> Result<Cpg, ExitCode> {
    Cpg::connect(&ConnectOptions {
        socket,
        initial_totem_conf: false,
    })
    .map_err(|e| {
        eprintln!("ringcast: {e}");
        ExitCode::from(1)
    })
}

fn show(list: &[Address]) -> String {
    let v: Vec<String> = list
        .iter()
        .map(|a| format!("{}/{}", a.node, a.pid))
        .collect();
    v.join(" ")
}

fn reason_name(r: u32) -> &'static str {
    match r {
        1 => "join",
        2 => "leave",
        3 => "nodedown",
        4 => "nodeup",
        5 => "procdown",
        _ => "?",
    }
}

struct Printer {
    delivered: u64,
}

impl Handler for Printer {
    fn deliver(&mut self, _cpg: &Cpg, group: &[u8], node: u32, pid: u32, msg: &[u8]) {
        self.delivered += 1;
        say!(
            "deliver group={} from={node}/{pid} len={} {}",
            String::from_utf8_lossy(group),
            msg.len(),
            String::from_utf8_lossy(&msg[..msg.len().min(200)])
        );
    }
    fn confchg(
        &mut self,
        _cpg: &Cpg,
        group: &[u8],
        members: &[Address],
        left: &[Address],
        joined: &[Address],
    ) {
        let why: Vec<String> = left
            .iter()
            .chain(joined)
            .map(|a| format!("{}/{}:{}", a.node, a.pid, reason_name(a.reason)))
            .collect();
        say!(
            "confchg group={} members=[{}] changes=[{}]",
            String::from_utf8_lossy(group),
            show(members),
            why.join(" ")
        );
    }
    fn totem_confchg(&mut self, _cpg: &Cpg, ring_id: RingId, members: &[u32]) {
        say!(
            "totem ring={}.{} nodes={members:?}",
            ring_id.rep,
            ring_id.seq
        );
    }
}

fn groups(socket: PathBuf) -> ExitCode {
    let cpg = match connect(socket) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cpg.iterate(IterationKind::All, None) {
        Ok(entries) => {
            if entries.is_empty() {
                say!("no groups");
            }
            let mut current: Option<&[u8]> = None;
            for e in &entries {
                if current != Some(&e.group[..]) {
                    say!("{}", String::from_utf8_lossy(&e.group));
                    current = Some(&e.group);
                }
                say!("    node {} pid {}", e.node, e.pid);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::from(1)
        }
    }
}

fn listen(socket: PathBuf, group: String, count: u64) -> ExitCode {
    let cpg = match connect(socket) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = cpg.join(group.as_bytes()) {
        eprintln!("ringcast: join {group}: {e}");
        return ExitCode::from(1);
    }
    let mut printer = Printer { delivered: 0 };
    loop {
        if let Err(e) = cpg.dispatch(Dispatch::One, &mut printer) {
            eprintln!("ringcast: {e}");
            return ExitCode::from(1);
        }
        if count != 0 && printer.delivered >= count {
            return ExitCode::SUCCESS;
        }
    }
}

fn send(socket: PathBuf, group: String, message: String, safe: bool) -> ExitCode {
    let cpg = match connect(socket) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fail = |what: &str, e: ringcast::Error| {
        eprintln!("ringcast: {what}: {e}");
        ExitCode::from(1)
    };
    if let Err(e) = cpg.join(group.as_bytes()) {
        return fail("join", e);
    }
    let guarantee = if safe {
        Guarantee::Safe
    } else {
        Guarantee::Agreed
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match cpg.mcast(guarantee, message.as_bytes()) {
            Ok(()) => break,
            Err(e) if e.is_try_again() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return fail("send", e),
        }
    }
    // Wait for self-delivery: the message is then ordered and delivered everywhere.
    struct Own {
        me: (u32, u32),
        seen: bool,
    }
    impl Handler for Own {
        fn deliver(&mut self, _cpg: &Cpg, _group: &[u8], node: u32, pid: u32, _msg: &[u8]) {
            if (node, pid) == self.me {
                self.seen = true;
            }
        }
    }
    let me = (cpg.local_node().unwrap_or(0), std::process::id());
    let mut own = Own { me, seen: false };
    while !own.seen {
        if std::time::Instant::now() > deadline {
            eprintln!("ringcast: no delivery within 10 s");
            return ExitCode::from(1);
        }
        if let Err(e) = cpg.dispatch(Dispatch::One, &mut own) {
            return fail("dispatch", e);
        }
    }
    let _ = cpg.leave(group.as_bytes());
    say!("sent {} bytes to {group}", message.len());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Status {
            state_dir,
            node_id,
            stats,
        } => {
            let path = stats.unwrap_or_else(|| stats_path(&state_dir, node_id));
            let reader = match StatsReader::open(&path) {
                Ok(reader) => reader,
                Err(e) => {
                    eprintln!("ringcast: {e} (is ringcastd running with this state_dir?)");
                    return ExitCode::from(1);
                }
            };
            let s = reader.snapshot();
            let alive = std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
            let members: Vec<String> = s.members.iter().map(u32::to_string).collect();
            say!("node_id {}", s.node_id);
            say!("cluster_id {}", s.cluster_id);
            say!("pid {}", s.pid);
            say!("running {alive}");
            say!(
                "heartbeat_age_ms {}",
                now_unix_ms().saturating_sub(s.heartbeat_unix_ms)
            );
            say!(
                "uptime_ms {}",
                s.heartbeat_unix_ms.saturating_sub(s.start_unix_ms)
            );
            say!("state {}", state_name(s.state));
            say!("ring_id {}", s.ring_id);
            say!("members {}", members.join(","));
            say!("send_queue_len {}", s.send_queue_len);
            for (name, value) in &s.counters {
                say!("{name} {value}");
            }
            ExitCode::SUCCESS
        }
        Command::Groups { socket } => groups(socket),
        Command::Listen {
            group,
            socket,
            count,
        } => listen(socket, group, count),
        Command::Send {
            group,
            message,
            socket,
            safe,
        } => send(socket, group, message, safe),
    }
}
