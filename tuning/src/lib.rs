//! `ringcast-tune`: checks and applies the host tuning a ringcast engine wants (see
//! docs/tuning.md).
//!
//! ```text
//! ringcast-tune check                       # this host against the engine's config
//! ringcast-tune check -c /etc/ringcast/ringcast.toml --json
//! ringcast-tune apply --dry-run             # what apply would change
//! ringcast-tune apply                       # root: runtime changes, saved for revert
//! ringcast-tune revert                      # restore what apply changed
//! ringcast-tune --root tests/fixtures/untuned check   # a fixture /proc and /sys tree
//! ```
//!
//! The configuration is read with the engine's own parser (`ConfigFlags`, the flags of
//! `ringcastd`), so `check` sees exactly the settings the engine would run with.

pub mod checks;
pub mod host;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringcast_engine::daemon::config::{ConfigFlags, DaemonConfig};
use serde::{Deserialize, Serialize};

pub use checks::{Check, Needs, Status};

/// `println!` that ends the program quietly when stdout is closed (`ringcast-tune check |
/// head`), instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub use host::Host;

/// The config file `check` and `apply` read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/ringcast/ringcast.toml";
/// Where `apply` records what it changed, below `--root`.
pub const DEFAULT_SAVED: &str = "/var/lib/ringcast/tune-saved.json";

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-tune",
    version,
    about = "Check and apply the host tuning of a ringcast engine (huge pages, CPU isolation, \
             IRQs, governor, C-states, socket buffers, io_uring)"
)]
pub struct Cli {
    /// Read and write /proc and /sys below this directory (a fixture tree in tests).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report each item as ok, warn or fail, with its fix (exit 1 if any fails).
    Check {
        #[command(flatten)]
        engine: EngineArgs,
        /// One JSON document instead of the human report.
        #[arg(long)]
        json: bool,
    },
    /// Apply what can change at run time (root), save the old values for `revert`, and
    /// print the boot-time changes it cannot make.
    Apply {
        #[command(flatten)]
        engine: EngineArgs,
        /// Print the changes without making them.
        #[arg(long)]
        dry_run: bool,
        /// Where to save the old values [default: /var/lib/ringcast/tune-saved.json below
        /// --root].
        #[arg(long, value_name = "FILE")]
        saved: Option<PathBuf>,
    },
    /// Restore the values `apply` saved, then forget them.
    Revert {
        /// The file `apply` saved the old values in [default: as for apply].
        #[arg(long, value_name = "FILE")]
        saved: Option<PathBuf>,
        /// Print what would be restored without restoring it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The engine configuration to tune for.
#[derive(Args, Debug)]
struct EngineArgs {
    /// Client sessions to size the huge-page reservation for (each maps its own region).
    #[arg(long, default_value_t = 4, value_name = "N")]
    clients: usize,
    #[command(flatten)]
    flags: ConfigFlags,
}

/// The command line's clap definition (for man pages and the help-text check).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs `ringcast-tune` with this process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let host = Host::new(&cli.root);
    match cli.command {
        Command::Check { engine, json } => {
            let needs = match load_needs(&host, engine) {
                Ok(needs) => needs,
                Err(e) => return fail(&e),
            };
            let report = checks::run(&host, &needs);
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => say!("{text}"),
                    Err(e) => return fail(&e.to_string()),
                }
            } else {
                say!("{}", report.human().trim_end());
            }
            if report.failures() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Apply {
            engine,
            dry_run,
            saved,
        } => {
            let needs = match load_needs(&host, engine) {
                Ok(needs) => needs,
                Err(e) => return fail(&e),
            };
            let saved = saved.unwrap_or_else(|| host.path(DEFAULT_SAVED));
            apply(&host, &needs, &saved, dry_run)
        }
        Command::Revert { saved, dry_run } => {
            let saved = saved.unwrap_or_else(|| host.path(DEFAULT_SAVED));
            revert(&host, &saved, dry_run)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ringcast-tune: {message}");
    ExitCode::from(2)
}

/// Resolves the engine's configuration the way `ringcastd` does and derives what the
/// host must provide for it.
fn load_needs(host: &Host, engine: EngineArgs) -> Result<Needs, String> {
    let mut flags = engine.flags;
    if flags.config.is_none() && host.is_live() && Path::new(DEFAULT_CONFIG).exists() {
        flags.config = Some(PathBuf::from(DEFAULT_CONFIG));
    }
    let origin = match &flags.config {
        Some(path) => path.display().to_string(),
        None => "built-in defaults".to_owned(),
    };
    let config: DaemonConfig = flags
        .resolve()
        .map_err(|e| format!("bad configuration ({origin}): {e}"))?;
    Ok(Needs::from_config(&config, origin, engine.clients))
}

/// One file `apply` changed: enough to put it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The file, as an absolute path on the host (below `--root`).
    pub path: String,
    pub old: String,
    pub new: String,
    /// Why (the check it fixes).
    pub why: String,
}

/// What `apply` records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub changes: Vec<Change>,
}

impl Saved {
    fn load(path: &Path) -> Result<Saved, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a saved tuning: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn store(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Adds a change, keeping the oldest value of a file already changed (so `revert`
    /// restores what the host had before the first `apply`).
    fn record(&mut self, change: Change) {
        match self.changes.iter_mut().find(|c| c.path == change.path) {
            Some(existing) => existing.new = change.new,
            None => self.changes.push(change),
        }
    }
}

fn apply(host: &Host, needs: &Needs, saved_path: &Path, dry_run: bool) -> ExitCode {
    if host.is_live() && !dry_run && ringcast_shm::paths::effective_uid() != 0 {
        return fail("apply changes /proc and /sys: run it as root (or with --dry-run)");
    }
    let plan = checks::plan(host, needs);
    let mut saved = match Saved::load(saved_path) {
        Ok(saved) => saved,
        Err(e) => return fail(&e),
    };
    let mut failed = 0;
    if plan.runtime.is_empty() {
        say!("runtime: nothing to change");
    }
    for change in &plan.runtime {
        let line = format!(
            "{} {}: {} -> {}  ({})",
            if dry_run { "would set" } else { "set" },
            change.path,
            change.old,
            change.new,
            change.why
        );
        if dry_run {
            say!("{line}");
            continue;
        }
        match host.write(&change.path, &change.new) {
            Ok(()) => {
                say!("{line}");
                saved.record(change.clone());
            }
            Err(e) => {
                failed += 1;
                say!(
                    "FAILED {}: {} -> {}: {e}",
                    change.path,
                    change.old,
                    change.new
                );
            }
        }
    }
    if !dry_run && !saved.changes.is_empty() {
        if let Err(e) = saved.store(saved_path) {
            return fail(&format!("changes made but not saved for revert: {e}"));
        }
        say!(
            "saved the old values in {} (ringcast-tune revert restores them)",
            saved_path.display()
        );
    }
    if !plan.boot.is_empty() {
        say!("boot-time changes (not applied; make them and reboot):");
        for line in &plan.boot {
            say!("  {line}");
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn revert(host: &Host, saved_path: &Path, dry_run: bool) -> ExitCode {
    if host.is_live() && !dry_run && ringcast_shm::paths::effective_uid() != 0 {
        return fail("revert changes /proc and /sys: run it as root (or with --dry-run)");
    }
    let saved = match Saved::load(saved_path) {
        Ok(saved) => saved,
        Err(e) => return fail(&e),
    };
    if saved.changes.is_empty() {
        say!(
            "nothing to revert ({} has no changes)",
            saved_path.display()
        );
        return ExitCode::SUCCESS;
    }
    let mut left = Saved::default();
    for change in saved.changes.iter().rev() {
        if dry_run {
            say!("would restore {}: {}", change.path, change.old);
            continue;
        }
        match host.write(&change.path, &change.old) {
            Ok(()) => say!("restored {}: {}", change.path, change.old),
            Err(e) => {
                say!("FAILED to restore {}: {}: {e}", change.path, change.old);
                left.changes.insert(0, change.clone());
            }
        }
    }
    if dry_run {
        return ExitCode::SUCCESS;
    }
    let result = if left.changes.is_empty() {
        std::fs::remove_file(saved_path).map_err(|e| format!("{}: {e}", saved_path.display()))
    } else {
        left.store(saved_path)
    };
    if let Err(e) = result {
        return fail(&e);
    }
    if left.changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
