//! `ringcast`: the operator's command line.
//!
//! ```text
//! ringcast status                       # a running engine's ring, members and counters
//! ringcast status --state-dir DIR --node-id 3
//! ringcast stats --watch                # counters and their rates per second (AeronStat)
//! ringcast stats --prometheus           # text exposition format, for node_exporter
//! ringcast groups                       # groups and members (like corosync-cpgtool)
//! ringcast listen GROUP                 # join GROUP and print what happens in it
//! ringcast send GROUP MESSAGE           # join GROUP, multicast MESSAGE, leave
//! ringcast gs groups                    # Group Services groups (like lssrc -ls)
//! ringcast gs watch GROUP               # a GS subscriber, one line per change
//! ringcast gs join GROUP [--state V] [--vote approve|continue|reject]
//! ```
//!
//! `status` and `stats` read the engine's stats page (`ringcast_shm::stats`) and report a
//! page whose engine is gone as stale, never as current figures (exit status 1). `groups`,
//! `listen` and `send` connect to the engine's socket and wait `--wait` seconds for an
//! engine that is starting. Both follow the engine's own defaults (`ringcast_shm::paths`):
//! the system directories for root, per-user ones otherwise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ringcast::{Address, ConnectOptions, Cpg, Dispatch, Guarantee, Handler, IterationKind, RingId};
use ringcast_shm::stats::{
    Counter, Liveness, Snapshot, StatsReader, now_unix_ms, page_path, state_name,
};

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

mod gs;

#[derive(Parser, Debug)]
#[command(
    name = "ringcast",
    version,
    about = "ringcast operator commands: engine status and counters, groups, listen, send"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a running engine's ring, members and counters (exit 1 if none runs).
    Status {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Print the counters once, as rates per second (--watch) or for Prometheus.
    Stats {
        #[command(flatten)]
        page: PageArgs,
        /// Print every counter's value and rate per second each interval until
        /// interrupted (or --count times).
        #[arg(long, conflicts_with = "prometheus")]
        watch: bool,
        /// Seconds between two samples of --watch.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Stop --watch after this many samples (0: never).
        #[arg(long, default_value_t = 0, value_name = "N")]
        count: u64,
        /// Print the Prometheus text exposition format (for node_exporter's textfile
        /// collector or a scrape wrapper); `ringcast_up 0` and exit 1 without an engine.
        #[arg(long)]
        prometheus: bool,
    },
    /// List every group and its members (node/pid).
    Groups {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Join GROUP and print its membership changes and messages until interrupted.
    Listen {
        /// The group to join.
        group: String,
        #[command(flatten)]
        conn: ConnArgs,
        /// Exit after this many messages (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Join GROUP, multicast MESSAGE, wait for its own delivery, and leave.
    Send {
        /// The group to join and send to.
        group: String,
        /// The message (sent as its UTF-8 bytes).
        message: String,
        #[command(flatten)]
        conn: ConnArgs,
        /// SAFE delivery instead of AGREED.
        #[arg(long)]
        safe: bool,
    },
    /// Group Services: groups, watch GROUP, join GROUP.
    Gs {
        #[command(subcommand)]
        command: gs::GsCommand,
    },
}

/// Where the stats page is.
#[derive(Args, Debug)]
struct PageArgs {
    /// The engine's state_dir [default: /var/lib/ringcast for root,
    /// $XDG_STATE_HOME/ringcast or ~/.local/state/ringcast for other users].
    #[arg(long, env = "RINGCAST_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The engine's node id.
    #[arg(long, default_value_t = 1, value_name = "ID")]
    node_id: u32,
    /// The stats page itself (overrides --state-dir and --node-id).
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
}

impl PageArgs {
    fn path(&self) -> PathBuf {
        match &self.stats {
            Some(path) => path.clone(),
            None => {
                let dir = self
                    .state_dir
                    .clone()
                    .unwrap_or_else(ringcast_shm::paths::state_dir);
                page_path(&dir, self.node_id)
            }
        }
    }
}

/// How to reach the engine.
#[derive(Args, Debug)]
struct ConnArgs {
    /// The engine's socket [default: /run/ringcast/ringcast.sock for root,
    /// $XDG_RUNTIME_DIR/ringcast/ringcast.sock or /tmp/ringcast-$UID/ringcast.sock
    /// for other users].
    #[arg(long, env = "RINGCAST_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Seconds to wait for an engine that is starting (0: fail at once).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    wait: f64,
}

/// The command line's clap definition (for man pages and the help-text check).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs `ringcast` with this process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { page } => status(&page),
        Command::Stats {
            page,
            watch,
            interval,
            count,
            prometheus,
        } => {
            if prometheus {
                prometheus_once(&page)
            } else if watch {
                watch_rates(&page, interval, count)
            } else {
                stats_once(&page)
            }
        }
        Command::Groups { conn } => groups(&conn),
        Command::Listen { group, conn, count } => listen(&conn, group, count),
        Command::Send {
            group,
            message,
            conn,
            safe,
        } => send(&conn, group, message, safe),
        Command::Gs { command } => gs::run(command),
    }
}

/// The current figures of a running engine, or the one line that says why there are none.
fn live_snapshot(path: &Path) -> Result<Snapshot, String> {
    let reader = StatsReader::open(path).map_err(|e| {
        format!("no engine running: {e} (is ringcastd running with this state_dir and node id?)")
    })?;
    let snapshot = reader.snapshot();
    match snapshot.liveness() {
        Liveness::Live => Ok(snapshot),
        stale => Err(format!(
            "no engine running: the stats page {} is stale ({stale}); its figures are not \
             current",
            path.display()
        )),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ringcast: {message}");
    ExitCode::from(1)
}

fn status(page: &PageArgs) -> ExitCode {
    let s = match live_snapshot(&page.path()) {
        Ok(s) => s,
        Err(message) => return fail(&message),
    };
    let members: Vec<String> = s.members.iter().map(u32::to_string).collect();
    say!("node_id {}", s.node_id);
    say!("cluster_id {}", s.cluster_id);
    say!("pid {}", s.pid);
    say!("running true");
    say!("heartbeat_age_ms {}", s.heartbeat_age_ms(now_unix_ms()));
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

fn stats_once(page: &PageArgs) -> ExitCode {
    match live_snapshot(&page.path()) {
        Ok(s) => {
            for (name, value) in &s.counters {
                say!("{name} {value}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

/// One `--watch` block: every counter, its total and its rate per second since `before`.
pub fn rates_block(before: &Snapshot, after: &Snapshot, seconds: f64) -> String {
    let mut out = String::new();
    let members: Vec<String> = after.members.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "node {} pid {} state {} ring {} members [{}] send_queue_len {}",
        after.node_id,
        after.pid,
        state_name(after.state),
        after.ring_id,
        members.join(","),
        after.send_queue_len
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>20} {:>16}",
        "counter", "value", "per second"
    );
    for ((name, old), (_, new)) in before.counters.iter().zip(&after.counters) {
        let rate = new.wrapping_sub(*old) as f64 / seconds.max(1e-9);
        let _ = writeln!(out, "  {name:<28} {new:>20} {rate:>16.1}");
    }
    out
}

fn watch_rates(page: &PageArgs, interval: f64, count: u64) -> ExitCode {
    if !(interval.is_finite() && interval > 0.0) {
        return fail("--interval must be a positive number of seconds");
    }
    let path = page.path();
    let mut before = match live_snapshot(&path) {
        Ok(s) => s,
        Err(message) => return fail(&message),
    };
    let mut taken = Instant::now();
    let mut samples = 0;
    while count == 0 || samples < count {
        std::thread::sleep(Duration::from_secs_f64(interval));
        // Reopened each time: a restarted engine writes a new page (a new file).
        let after = match live_snapshot(&path) {
            Ok(s) => s,
            Err(message) => return fail(&message),
        };
        let now = Instant::now();
        if after.pid != before.pid {
            say!("engine restarted (pid {} -> {})", before.pid, after.pid);
        } else {
            say!(
                "{}",
                rates_block(&before, &after, (now - taken).as_secs_f64())
            );
        }
        before = after;
        taken = now;
        samples += 1;
    }
    ExitCode::SUCCESS
}

/// Escapes a HELP text of the exposition format.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The Prometheus text exposition format of a stats page; `snapshot` is `None` when
/// there is no engine (only `ringcast_up 0` is written then).
pub fn prometheus_text(node_id: u32, snapshot: Option<&Snapshot>, now_unix_ms: u64) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, labels: &str, value: String| {
        let _ = writeln!(out, "# HELP ringcast_{name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE ringcast_{name} {kind}");
        let _ = writeln!(
            out,
            "ringcast_{name}{{node_id=\"{node_id}\"{labels}}} {value}"
        );
    };
    metric(
        "up",
        "gauge",
        "1 if the engine that writes the stats page is running, else 0.",
        "",
        u8::from(snapshot.is_some()).to_string(),
    );
    let Some(s) = snapshot else {
        return out;
    };
    metric(
        "heartbeat_age_seconds",
        "gauge",
        "Seconds since the engine's last heartbeat.",
        "",
        format!("{:.3}", s.heartbeat_age_ms(now_unix_ms) as f64 / 1000.0),
    );
    metric(
        "start_time_seconds",
        "gauge",
        "When the engine started, in seconds since the Unix epoch.",
        "",
        format!("{:.3}", s.start_unix_ms as f64 / 1000.0),
    );
    metric(
        "state",
        "gauge",
        "The Totem state of the node (the label), always 1.",
        &format!(",state=\"{}\"", state_name(s.state)),
        "1".into(),
    );
    metric(
        "ring_seq",
        "gauge",
        "Sequence number of the current ring.",
        &format!(",ring_rep=\"{}\"", s.ring_id.rep),
        s.ring_id.seq.to_string(),
    );
    metric(
        "ring_members",
        "gauge",
        "Nodes in the current ring.",
        "",
        s.members.len().to_string(),
    );
    metric(
        "send_queue_length",
        "gauge",
        "Messages in Totem's send queue.",
        "",
        s.send_queue_len.to_string(),
    );
    for counter in Counter::ALL {
        let value = s.counter(counter.name()).unwrap_or(0);
        let help = match counter.help() {
            "" => counter.name(),
            help => help,
        };
        if counter.is_gauge() {
            metric(counter.name(), "gauge", help, "", value.to_string());
        } else {
            let name = format!("{}_total", counter.name());
            metric(&name, "counter", help, "", value.to_string());
        }
    }
    out
}

fn prometheus_once(page: &PageArgs) -> ExitCode {
    let node_id = page.node_id;
    match live_snapshot(&page.path()) {
        Ok(s) => {
            say!(
                "{}",
                prometheus_text(s.node_id, Some(&s), now_unix_ms()).trim_end()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            say!(
                "{}",
                prometheus_text(node_id, None, now_unix_ms()).trim_end()
            );
            fail(&message)
        }
    }
}

/// Joins `group`, retrying TRY_AGAIN (the engine answers it while the ring forms or a
/// sync runs, as Corosync does) for up to 10 seconds.
fn join(cpg: &Cpg, group: &str) -> ringcast::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cpg.join(group.as_bytes()) {
            Err(e) if e.is_try_again() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn connect(conn: &ConnArgs) -> Result<Cpg, ExitCode> {
    if !(conn.wait.is_finite() && conn.wait >= 0.0) {
        return Err(fail("--wait must be a number of seconds, 0 or more"));
    }
    let options = ConnectOptions {
        socket: conn.socket.clone().unwrap_or_else(ringcast::default_socket),
        initial_totem_conf: false,
    };
    Cpg::connect_waiting(&options, Duration::from_secs_f64(conn.wait)).map_err(|e| {
        // One line: the library's message already names the socket and the remedy.
        let text = e.to_string();
        fail(text.strip_prefix("Library: ").unwrap_or(&text))
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

fn groups(conn: &ConnArgs) -> ExitCode {
    let cpg = match connect(conn) {
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
        Err(e) => fail(&e.to_string()),
    }
}

fn listen(conn: &ConnArgs, group: String, count: u64) -> ExitCode {
    let cpg = match connect(conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = join(&cpg, &group) {
        return fail(&format!("join {group}: {e}"));
    }
    let mut printer = Printer { delivered: 0 };
    loop {
        if let Err(e) = cpg.dispatch(Dispatch::One, &mut printer) {
            return fail(&e.to_string());
        }
        if count != 0 && printer.delivered >= count {
            return ExitCode::SUCCESS;
        }
    }
}

fn send(conn: &ConnArgs, group: String, message: String, safe: bool) -> ExitCode {
    let cpg = match connect(conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let failed = |what: &str, e: ringcast::Error| fail(&format!("{what}: {e}"));
    if let Err(e) = join(&cpg, &group) {
        return failed("join", e);
    }
    let guarantee = if safe {
        Guarantee::Safe
    } else {
        Guarantee::Agreed
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cpg.mcast(guarantee, message.as_bytes()) {
            Ok(()) => break,
            Err(e) if e.is_try_again() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return failed("send", e),
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
        if Instant::now() > deadline {
            return fail("no delivery within 10 s");
        }
        if let Err(e) = cpg.dispatch(Dispatch::One, &mut own) {
            return failed("dispatch", e);
        }
    }
    let _ = cpg.leave(group.as_bytes());
    say!("sent {} bytes to {group}", message.len());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(counters: &[(&'static str, u64)]) -> Snapshot {
        Snapshot {
            node_id: 3,
            cluster_id: 7,
            pid: 42,
            start_unix_ms: 1_000,
            heartbeat_unix_ms: 2_000,
            ring_id: ringcast_shm::stats::RingId { rep: 1, seq: 8 },
            state: 0,
            members: vec![1, 3],
            send_queue_len: 0,
            counters: counters.to_vec(),
        }
    }

    #[test]
    fn rates_are_per_second() {
        let a = snapshot(&[("packets_in", 100), ("bytes_in", 0)]);
        let b = snapshot(&[("packets_in", 300), ("bytes_in", 5000)]);
        let text = rates_block(&a, &b, 2.0);
        assert!(
            text.contains("state operational ring 1.8 members [1,3]"),
            "{text}"
        );
        let line = text.lines().find(|l| l.contains("packets_in")).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields, ["packets_in", "300", "100.0"]);
        let line = text.lines().find(|l| l.contains("bytes_in")).unwrap();
        assert!(line.ends_with("2500.0"), "{line}");
    }

    /// Text exposition format 0.0.4: `# HELP`, `# TYPE`, then samples; counters end in
    /// `_total`; every line parses as name{labels} value.
    #[test]
    fn prometheus_exposition_is_well_formed() {
        let counters: Vec<(&'static str, u64)> = Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name(), i as u64))
            .collect();
        let s = snapshot(&counters);
        let text = prometheus_text(3, Some(&s), 2_500);
        assert!(text.contains("ringcast_up{node_id=\"3\"} 1\n"));
        assert!(text.contains("# TYPE ringcast_packets_in_total counter\n"));
        assert!(text.contains("ringcast_packets_out_total{node_id=\"3\"} 2\n"));
        assert!(text.contains("# TYPE ringcast_clients_connected gauge\n"));
        assert!(text.contains("ringcast_heartbeat_age_seconds{node_id=\"3\"} 0.500\n"));
        assert!(text.contains("ringcast_state{node_id=\"3\",state=\"operational\"} 1\n"));
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                assert!(matches!(parts.next(), Some("HELP" | "TYPE")), "{line}");
                let name = parts.next().unwrap();
                assert!(name.starts_with("ringcast_"), "{line}");
                assert!(!parts.next().unwrap_or("").is_empty(), "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = &series[..series.find('{').unwrap()];
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(series.ends_with('}'), "{line}");
            samples += 1;
        }
        assert_eq!(samples, Counter::ALL.len() + 7);
        let down = prometheus_text(3, None, 0);
        assert_eq!(down.lines().filter(|l| !l.starts_with('#')).count(), 1);
        assert!(down.contains("ringcast_up{node_id=\"3\"} 0\n"));
    }
}
