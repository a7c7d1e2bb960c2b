//! `ringcast`: operator commands. `ringcast status` prints a running engine's counters
//! from its shared-memory stats page, one `name value` pair per line:
//!
//! ```text
//! ringcast status                             # node 1 under /var/lib/ringcast
//! ringcast status --state-dir DIR --node-id 3
//! ringcast status --stats DIR/stats_3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
            println!("node_id {}", s.node_id);
            println!("cluster_id {}", s.cluster_id);
            println!("pid {}", s.pid);
            println!("running {alive}");
            println!(
                "heartbeat_age_ms {}",
                now_unix_ms().saturating_sub(s.heartbeat_unix_ms)
            );
            println!(
                "uptime_ms {}",
                s.heartbeat_unix_ms.saturating_sub(s.start_unix_ms)
            );
            println!("state {}", state_name(s.state));
            println!("ring_id {}", s.ring_id);
            println!("members {}", members.join(","));
            println!("send_queue_len {}", s.send_queue_len);
            for (name, value) in &s.counters {
                println!("{name} {value}");
            }
            ExitCode::SUCCESS
        }
    }
}
