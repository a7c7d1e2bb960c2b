//! `xtask man DIR` writes the man pages of every installed program; `xtask check-help`
//! fails when a flag of any program (benchmarks included) has no help text.
//!
//! The programs whose clap definitions live in their `src/bin` file are compiled into
//! this binary as modules (`#[path]`), so their definitions are read where they are
//! written, with no copy to drift. Only their `Cli`/`Args` types are used here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../engine/src/bin/ringcastd.rs"]
mod ringcastd;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../engine/sim/src/bin/ringcast-sim.rs"]
mod ringcast_sim;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../bench/src/bin/ringcast_bench.rs"]
mod ringcast_bench;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../bench/src/bin/core_cost.rs"]
mod core_cost;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../bench/src/bin/engine_throughput.rs"]
mod engine_throughput;

/// Every program: (installed, clap definition named as the binary is).
fn programs() -> Vec<(bool, clap::Command)> {
    vec![
        (true, ringcastd::Cli::command().name("ringcastd")),
        (true, ringcast_cli::command().name("ringcast")),
        (true, ringcast_tune::command().name("ringcast-tune")),
        (true, ringcast_sim::Args::command().name("ringcast-sim")),
        (
            false,
            ringcast_bench::Args::command().name("ringcast-bench"),
        ),
        (false, core_cost::Args::command().name("core_cost")),
        (
            false,
            engine_throughput::Args::command().name("engine_throughput"),
        ),
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["check-help"] => {
            let mut missing = Vec::new();
            for (_, cmd) in programs() {
                missing.extend(xtask::missing_help(&cmd));
            }
            if missing.is_empty() {
                println!("every flag of {} programs has help text", programs().len());
                ExitCode::SUCCESS
            } else {
                for m in &missing {
                    println!("no help text: {m}");
                }
                ExitCode::from(1)
            }
        }
        ["man", dir] => {
            let dir = PathBuf::from(dir);
            for (installed, cmd) in programs() {
                if !installed {
                    continue;
                }
                match xtask::write_man_pages(&cmd, &dir) {
                    Ok(files) => {
                        for f in files {
                            println!("{}", f.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("xtask: man pages in {}: {e}", dir.display());
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: xtask check-help | xtask man DIR");
            ExitCode::from(2)
        }
    }
}
