//! `ringcast-sim`: runs the deterministic cluster simulator over many seeds, in
//! parallel, and reports every broken guarantee with the command that replays it.
//!
//! ```text
//! ringcast-sim --seeds 1000 --nodes 2-8          # seeds 0..1000
//! ringcast-sim --seed 42 --nodes 2-8 --trace     # replay one seed, every event
//! ringcast-sim --hosts --seeds 1000              # whole hosts with clients
//! ringcast-sim --hosts --seed 42 --trace         # replay one of those
//! ```
//! Exit code 1 if any run broke a guarantee.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use ringcast_sim::hosts::{self, HostOptions, HostReport};
use ringcast_sim::{self as sim, RunReport, SimOptions};

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-sim",
    version,
    about = "Deterministic Totem cluster simulator with fault injection and checkers"
)]
pub(crate) struct Args {
    /// Simulate whole hosts (Totem, CPG, persistence) with client connections and check
    /// what the clients see (docs/invariants.md, "Clients"); without it, Totem nodes
    /// with a checksummed workload. With --hosts, --nodes defaults to 2-5, --duration
    /// to 4, and the flags below --datagram are ignored.
    #[arg(long)]
    hosts: bool,
    /// Run this many seeds, from --start.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of --seeds.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay one seed, verbosely (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Node count, or a range like 2-8 from which each seed picks one (2..16).
    #[arg(long, value_parser = parse_nodes)]
    nodes: Option<(usize, usize)>,
    /// Virtual seconds with faults (default 10).
    #[arg(long)]
    duration: Option<f64>,
    /// Virtual seconds of workload after the final heal.
    #[arg(long, default_value_t = 1.0)]
    tail: f64,
    /// Virtual seconds the cluster has to become quiescent after the workload stops.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Token-loss timeout of every simulated node, ms.
    #[arg(long, default_value_t = 200)]
    token_ms: u64,
    /// Join retransmission timeout, ms.
    #[arg(long, default_value_t = 30)]
    join_ms: u64,
    /// Merge-detection interval of an idle representative, ms.
    #[arg(long, default_value_t = 100)]
    merge_ms: u64,
    /// max_datagram_bytes choices, comma-separated; each seed picks one.
    #[arg(long, value_delimiter = ',', default_value = "1500,9000,65000")]
    datagram: Vec<usize>,
    /// Flow-control window choices in bytes, comma-separated; each seed picks one (0:
    /// Corosync's counts, 50 and 17 datagrams).
    #[arg(long, value_delimiter = ',', default_value = "0,212992,1048576")]
    window_bytes: Vec<usize>,
    /// Loss probability per datagram copy.
    #[arg(long)]
    drop: Option<f64>,
    /// Duplication probability.
    #[arg(long)]
    dup: Option<f64>,
    /// Probability of an extra reordering delay.
    #[arg(long)]
    reorder: Option<f64>,
    /// Extra delay of a reordered datagram, µs.
    #[arg(long)]
    reorder_delay_us: Option<u64>,
    /// Shortest network delay, µs.
    #[arg(long)]
    delay_min_us: Option<u64>,
    /// Longest network delay, µs.
    #[arg(long)]
    delay_max_us: Option<u64>,
    /// Loss probability during a loss burst.
    #[arg(long)]
    burst_drop: Option<f64>,
    /// Loss probability of unicast (token) datagrams during token loss.
    #[arg(long)]
    token_drop: Option<f64>,
    /// Mean faults per virtual second.
    #[arg(long)]
    fault_rate: Option<f64>,
    /// Shortest downtime of a crashed node, virtual seconds.
    #[arg(long)]
    downtime_min: Option<f64>,
    /// Longest downtime of a crashed node, virtual seconds.
    #[arg(long)]
    downtime_max: Option<f64>,
    /// Broadcasts do not come back to their sender (ringcastd's unicast fan-out).
    #[arg(long)]
    no_loopback: bool,
    /// No node crashes (and restarts).
    #[arg(long)]
    no_crash: bool,
    /// No node leaves the ring cleanly.
    #[arg(long)]
    no_leave: bool,
    /// No network partitions.
    #[arg(long)]
    no_partition: bool,
    /// No loss at all: --drop 0, no bursts, no token loss.
    #[arg(long)]
    no_loss: bool,
    /// No loss bursts.
    #[arg(long)]
    no_burst: bool,
    /// No token loss episodes.
    #[arg(long)]
    no_token_loss: bool,
    /// No duplicated datagrams (--dup 0).
    #[arg(long)]
    no_dup: bool,
    /// No reordering (--reorder 0).
    #[arg(long)]
    no_reorder: bool,
    /// No faults of any kind (a perfect network apart from delay).
    #[arg(long)]
    no_faults: bool,
    /// Mean messages per node per virtual second.
    #[arg(long)]
    msg_rate: Option<f64>,
    /// Fraction of SAFE messages.
    #[arg(long)]
    safe: Option<f64>,
    /// Fraction of 1–20 KiB messages.
    #[arg(long)]
    medium: Option<f64>,
    /// Fraction of 100 KiB–2 MiB messages.
    #[arg(long)]
    large: Option<f64>,
    /// Stop a run after this many simulation steps (a runaway guard).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Threads (default: the number of CPUs); each seed runs on one.
    #[arg(long)]
    jobs: Option<usize>,
    /// Print every event.
    #[arg(long)]
    trace: bool,
    /// With --trace, also print every datagram arrival, decoded.
    #[arg(long)]
    trace_net: bool,
    /// Print one line per seed.
    #[arg(long, short)]
    verbose: bool,
    /// No progress line on stderr.
    #[arg(long)]
    no_progress: bool,
}

/// A progress line on stderr while many seeds run: rewritten in place on a terminal,
/// one line every 10 s otherwise (CI logs), and a last one when done.
struct Progress {
    total: usize,
    started: std::time::Instant,
    tty: bool,
    /// When the last line was printed.
    last: Mutex<Option<std::time::Instant>>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total,
            started: std::time::Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    fn line(&self, done: usize, violations: usize) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = if done > 0 {
            elapsed / done as f64 * (self.total - done) as f64
        } else {
            0.0
        };
        format!(
            "seeds {done}/{} ({:.0}%), {violations} violations, {elapsed:.1} s elapsed, ~{left:.0} s left",
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64
        )
    }

    fn tick(&self, done: usize, violations: usize) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        let mut last = self.last.lock().expect("no poisoning");
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < every) {
            return;
        }
        *last = Some(now);
        if self.tty {
            eprint!("\r{}\x1b[K", self.line(done, violations));
        } else {
            eprintln!("{}", self.line(done, violations));
        }
    }

    fn finish(&self, violations: usize) {
        if self.tty {
            eprintln!("\r{}\x1b[K", self.line(self.total, violations));
        } else {
            eprintln!("{}", self.line(self.total, violations));
        }
    }
}

fn parse_nodes(s: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo, hi),
        None => (s, s),
    };
    let lo: usize = lo.trim().parse().map_err(|e| format!("{e}"))?;
    let hi: usize = hi.trim().parse().map_err(|e| format!("{e}"))?;
    if !(1..=16).contains(&lo) || !(lo..=16).contains(&hi) {
        return Err("node counts between 1 and 16, low-high".into());
    }
    Ok((lo, hi))
}

fn options(args: &Args) -> SimOptions {
    let mut o = SimOptions {
        nodes_min: args.nodes.map_or(2, |n| n.0),
        nodes_max: args.nodes.map_or(8, |n| n.1),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
        tail: Duration::from_secs_f64(args.tail),
        settle_limit: Duration::from_secs_f64(args.settle),
        token: Duration::from_millis(args.token_ms),
        join: Duration::from_millis(args.join_ms),
        merge: Duration::from_millis(args.merge_ms),
        datagram_bytes: args.datagram.clone(),
        window_bytes: args.window_bytes.clone(),
        trace: args.trace || args.trace_net,
        trace_net: args.trace_net,
        ..SimOptions::default()
    };
    let n = &mut o.network;
    let set = |target: &mut f64, value: Option<f64>| {
        if let Some(v) = value {
            *target = v;
        }
    };
    set(&mut n.drop, args.drop);
    set(&mut n.duplicate, args.dup);
    set(&mut n.reorder, args.reorder);
    set(&mut n.burst_drop, args.burst_drop);
    set(&mut n.token_drop, args.token_drop);
    if let Some(us) = args.reorder_delay_us {
        n.reorder_delay = Duration::from_micros(us);
    }
    if let Some(us) = args.delay_min_us {
        n.delay_min = Duration::from_micros(us);
    }
    if let Some(us) = args.delay_max_us {
        n.delay_max = Duration::from_micros(us);
    }
    let f = &mut o.faults;
    set(&mut f.rate, args.fault_rate);
    if let Some(s) = args.downtime_min {
        f.downtime_min = Duration::from_secs_f64(s);
    }
    if let Some(s) = args.downtime_max {
        f.downtime_max = Duration::from_secs_f64(s);
    }
    f.crash &= !args.no_crash;
    f.leave &= !args.no_leave;
    f.partition &= !args.no_partition;
    f.burst &= !args.no_burst;
    f.token_loss &= !args.no_token_loss;
    if args.no_loss {
        o.network.drop = 0.0;
        f.burst = false;
        f.token_loss = false;
    }
    o.network.loopback &= !args.no_loopback;
    if args.no_dup {
        o.network.duplicate = 0.0;
    }
    if args.no_reorder {
        o.network.reorder = 0.0;
    }
    if args.no_faults {
        o.network = o.network.lossless();
        o.faults.rate = 0.0;
    }
    let w = &mut o.workload;
    set(&mut w.rate, args.msg_rate);
    set(&mut w.safe_fraction, args.safe);
    set(&mut w.medium_fraction, args.medium);
    set(&mut w.large_fraction, args.large);
    if let Some(max) = args.max_steps {
        o.max_steps = max;
    }
    o
}

fn host_options(args: &Args) -> HostOptions {
    let d = HostOptions::default();
    HostOptions {
        nodes_min: args.nodes.map_or(d.nodes_min, |n| n.0),
        nodes_max: args.nodes.map_or(d.nodes_max, |n| n.1),
        duration: args.duration.map_or(d.duration, Duration::from_secs_f64),
        trace: args.trace,
    }
}

/// The seeds to run: one to replay, or a range.
fn seeds(args: &Args) -> Vec<u64> {
    match args.seed {
        Some(seed) => vec![seed],
        None => (args.start..args.start.saturating_add(args.seeds)).collect(),
    }
}

fn jobs(args: &Args, seeds: usize) -> usize {
    args.jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.max(1))
}

/// Runs `run` over `seeds` on `jobs` threads, with a progress line unless told not
/// to; `violations` counts what a report found.
fn run_parallel<R: Send>(
    args: &Args,
    seeds: &[u64],
    jobs: usize,
    run: impl Fn(u64) -> R + Sync,
    violations: impl Fn(&R) -> usize + Sync,
) -> Vec<R> {
    let next = AtomicU64::new(0);
    let reports: Mutex<Vec<R>> = Mutex::new(Vec::new());
    let progress = (args.seed.is_none() && !args.no_progress).then(|| Progress::new(seeds.len()));
    let done = AtomicU64::new(0);
    let violations_seen = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                    let report = run(seed);
                    let found = violations(&report) as u64;
                    reports.lock().expect("no poisoning").push(report);
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let bad = violations_seen.fetch_add(found, Ordering::Relaxed) + found;
                    if let Some(p) = &progress {
                        p.tick(finished as usize, bad as usize);
                    }
                }
            });
        }
    });
    if let Some(p) = &progress {
        p.finish(violations_seen.load(Ordering::Relaxed) as usize);
    }
    reports.into_inner().expect("no poisoning")
}

/// `--hosts`: whole hosts with clients.
fn main_hosts(args: &Args) {
    let options = host_options(args);
    let started = std::time::Instant::now();
    let seeds = seeds(args);
    let jobs = jobs(args, seeds.len());
    let single = args.seed.is_some();
    let run = |seed| {
        let report = hosts::run(seed, &options);
        if args.verbose || single {
            println!("{}", report.summary_line());
        }
        for v in &report.violations {
            println!("{v}");
        }
        report
    };
    let mut reports = run_parallel(args, &seeds, jobs, run, |r: &HostReport| r.violations.len());
    reports.sort_by_key(|r| r.seed);
    let sum = |f: fn(&HostReport) -> u64| reports.iter().map(f).sum::<u64>();
    let failing: Vec<u64> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| r.seed)
        .collect();
    println!("---");
    println!(
        "host seeds run: {} ({} threads), from {}   wall time: {:.1} s",
        reports.len(),
        jobs,
        seeds.first().copied().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    println!(
        "syncs: {}   sent: {}   delivered: {}   connections: {}   ring seqs persisted: {} \
         (lost to crashes: {})   incarnations: {}",
        sum(|r| r.syncs),
        sum(|r| r.sent),
        sum(|r| r.delivered),
        sum(|r| r.connections as u64),
        sum(|r| r.persisted),
        sum(|r| r.persists_lost),
        sum(|r| r.incarnations)
    );
    let shown: Vec<String> = failing.iter().take(20).map(|s| s.to_string()).collect();
    println!(
        "violations: {} in {} seeds{}{}",
        sum(|r| r.violations.len() as u64),
        failing.len(),
        if failing.is_empty() { "" } else { ": " },
        shown.join(" ")
    );
    if let Some(first) = failing.first() {
        println!("replay the first: {}", options.replay_command(*first));
        std::process::exit(1);
    }
}

fn main() {
    let args = Args::parse();
    if args.hosts {
        return main_hosts(&args);
    }
    let options = options(&args);
    let started = std::time::Instant::now();
    let seeds = seeds(&args);
    let single = args.seed.is_some();
    let jobs = jobs(&args, seeds.len());
    let run = |seed| {
        let report = sim::run(seed, &options);
        if args.verbose || single {
            println!("{}", report.summary_line());
        }
        for v in &report.violations {
            print!("{v}");
        }
        report
    };
    let mut reports = run_parallel(&args, &seeds, jobs, run, |r: &RunReport| r.violations.len());
    reports.sort_by_key(|r| r.seed);

    if single {
        let r = &reports[0];
        println!(
            "network: {:?}\nincarnations {} try-again {} converged after {:?} quiescent after \
             {:?} trace hash {:016x}",
            r.network,
            r.incarnations,
            r.try_again,
            r.converged_after,
            r.quiescent_after,
            r.trace_hash
        );
    }
    let violations: Vec<_> = reports.iter().flat_map(|r| &r.violations).collect();
    let sum = |f: fn(&RunReport) -> u64| reports.iter().map(f).sum::<u64>();
    let sim_time: Duration = reports.iter().map(|r| r.sim_time).sum();
    let max_converge = reports.iter().filter_map(|r| r.converged_after).max();
    println!("---");
    println!(
        "seeds run: {} ({} threads)   options: {}",
        reports.len(),
        jobs,
        options.to_args().join(" ")
    );
    println!(
        "messages submitted: {}   delivered (all incarnations): {}   regular configurations \
         installed: {}   faults: {}",
        sum(|r| r.submitted),
        sum(|r| r.delivered),
        sum(|r| r.configurations),
        sum(|r| r.faults)
    );
    println!(
        "simulated time: {:.1} s   wall time: {:.1} s   slowest convergence after heal: {:?}",
        sim_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        max_converge
    );
    let failing: std::collections::BTreeSet<u64> = violations.iter().map(|v| v.seed).collect();
    println!(
        "violations: {} in {} seeds",
        violations.len(),
        failing.len()
    );
    let mut by_checker: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for v in &violations {
        let seeds = by_checker.entry(v.checker).or_default();
        if seeds.last() != Some(&v.seed) {
            seeds.push(v.seed);
        }
    }
    for (checker, seeds) in &by_checker {
        let shown: Vec<String> = seeds.iter().take(20).map(|s| s.to_string()).collect();
        println!(
            "  {checker}: {} seeds: {}{}",
            seeds.len(),
            shown.join(" "),
            if seeds.len() > 20 { " …" } else { "" }
        );
    }
    if let Some(first) = failing.first() {
        println!("replay the first: {}", options.replay_command(*first));
        std::process::exit(1);
    }
}
