//! `ringcastd`: the per-host ringcast engine.
//!
//! ```text
//! ringcastd                                   # one node on 127.0.0.1:5405, defaults
//! ringcastd -c /etc/ringcast/ringcast.toml    # a configured cluster member
//! ringcastd --node-id 2 --node 1=10.0.0.1 --node 2=10.0.0.2 --token-ms 1000
//! ringcastd --gen-key /etc/ringcast/authkey   # write a fresh 32-byte key (mode 0600)
//! ringcastd --check-config -c FILE            # print the resolved settings and exit
//! ```
//!
//! Exit status: 0 after a clean leave (SIGTERM/SIGINT), 2 for a bad configuration,
//! 1 when the engine fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ringcast_engine::daemon::config::ConfigFlags;
use ringcast_engine::daemon::keyfile;
use ringcast_engine::io;

#[derive(Parser, Debug)]
#[command(
    name = "ringcastd",
    version,
    about = "ringcast engine: Totem over io_uring"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    flags: ConfigFlags,
    /// Write a new random 32-byte key to FILE (mode 0600; never overwrites) and exit.
    #[arg(long, value_name = "FILE")]
    gen_key: Option<PathBuf>,
    /// Check the configuration, print the resolved settings as TOML and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // Before any thread exists, so that only the engine's signalfd consumes them.
    if let Err(e) = io::signal::block_termination_signals() {
        eprintln!("ringcastd: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let cli = Cli::parse();
    if let Some(path) = &cli.gen_key {
        return match keyfile::generate_file(path) {
            Ok(_) => {
                println!("wrote a new key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringcastd: {e}");
                ExitCode::from(1)
            }
        };
    }
    let config = match cli.flags.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringcastd: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        match toml::to_string_pretty(&config.settings) {
            Ok(text) => print!("{text}"),
            Err(e) => eprintln!("ringcastd: {e}"),
        }
        // Derived on this host unless set (docs/performance.md, "The flow-control window").
        println!(
            "# flow control: totem.window_size = {}, totem.max_messages = {} datagrams",
            config.totem.window_size, config.totem.max_messages
        );
        return ExitCode::SUCCESS;
    }
    // A user's default runtime directory may be in /tmp, where another user could have
    // created it first: it must be this user's alone (the engine creates the rest).
    let runtime_dir = ringcast_shm::paths::runtime_dir();
    if config.settings.ipc_socket.parent() == Some(runtime_dir.as_path())
        && ringcast_shm::paths::effective_uid() != 0
        && let Err(e) = ringcast_shm::paths::ensure_private_dir(&runtime_dir)
    {
        eprintln!("ringcastd: runtime directory: {e}");
        return ExitCode::from(1);
    }
    eprintln!(
        "ringcastd: node {} on {}; clients connect at {}, stats page {}",
        config.node_id,
        config.own_addr,
        config.settings.ipc_socket.display(),
        config.stats_path.display()
    );
    let level: tracing::Level = config
        .settings
        .log_level
        .parse()
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!(
        window_size = config.totem.window_size,
        max_messages = config.totem.max_messages,
        datagram_bytes = config.settings.datagram_bytes,
        "flow control: datagrams per rotation and per token visit (docs/performance.md)"
    );
    match io::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ringcastd: {e}");
            ExitCode::from(1)
        }
    }
}
