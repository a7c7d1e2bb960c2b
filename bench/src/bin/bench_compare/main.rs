//! `bench-compare`: Corosync and ringcast side by side through `corosync/cpg.h`
//! (docs/bench-compare.md).
//!
//! One C program, `bench/compare/cpgbench.c`, is built once against the system's
//! headers and Debian's `libcpg`; the same binary then runs against Corosync
//! (`corosync -f`, started here with a generated config) and against ringcast (its
//! `libcpg.so.4` through `LD_LIBRARY_PATH`, `ringcastd` started here), on one node and
//! on three nodes in network namespaces joined by veth at MTU 1500. Every round starts
//! both systems in turn (the first system alternates between rounds), runs every figure
//! and stops them; the JSON (every run) and SVG plots go to `--out`.
//!
//! ```text
//! bench-compare --ringcastd target/release/ringcastd --ringcast-lib STAGE/usr/lib
//! bench-compare --quick ...        # tiny inputs (what `make test` runs)
//! ```

mod cluster;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cluster::{Cluster, RingcastPaths, System};
use serde_json::{Value, json};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench-compare",
    about = "Corosync and ringcast side by side through cpg.h"
)]
pub(crate) struct Args {
    /// ringcastd to start.
    #[arg(long)]
    ringcastd: PathBuf,
    /// Directory with ringcast's libcpg.so.4 (`make install-c`).
    #[arg(long)]
    ringcast_lib: PathBuf,
    /// The C source (default: bench/compare/cpgbench.c of this checkout).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Topologies: node counts.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    nodes: Vec<u32>,
    /// Figures to measure: tput, lat, groups, members.
    #[arg(long, value_delimiter = ',', default_value = "tput,lat,groups,members")]
    figures: Vec<String>,
    /// Message sizes for throughput.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,65536,1048576")]
    sizes: Vec<usize>,
    /// Group counts for the scale figure (one node only).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    groups: Vec<u32>,
    /// Members of the growing group (one node only).
    #[arg(long, default_value_t = 1024)]
    members: u32,
    /// Rounds: each runs both systems (A/B, the first alternating).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of flooding per throughput run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Latency samples per run.
    #[arg(long, default_value_t = 20_000)]
    samples: u32,
    /// Latency message size.
    #[arg(long, default_value_t = 64)]
    lat_size: usize,
    /// Output directory (JSON and SVG).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Extra `--set key=value` for every ringcastd.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Keep the work directory (configs, daemon logs) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Tiny inputs on one node, one round: what `make test` runs (seconds).
    #[arg(long)]
    quick: bool,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            self.nodes = vec![1];
            self.sizes = vec![64, 65536];
            self.groups = vec![1, 10];
            self.members = 16;
            self.rounds = 1;
            self.seconds = 0.3;
            self.samples = 300;
        }
    }
}

/// Bound on one client run beyond its own duration.
const CLIENT_SLACK: Duration = Duration::from_secs(90);

/// Why the harness cannot run here at all (the test skips on these).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and corosync need root)".into());
    }
    for (tool, what) in [("corosync", "-v"), ("ip", "-V"), ("cc", "--version")] {
        if Command::new(tool)
            .arg(what)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("{tool} not installed"));
        }
    }
    if !Path::new("/usr/include/corosync/cpg.h").exists() {
        return Some("corosync/cpg.h not installed (Debian package libcpg-dev)".into());
    }
    None
}

fn main() {
    let mut args = Args::parse();
    args.apply_quick();
    if let Some(why) = unavailable() {
        println!("bench-compare: skipped: {why}");
        return;
    }
    match run(&args) {
        Ok(path) => println!("bench-compare: results in {}", path.display()),
        Err(e) => {
            eprintln!("bench-compare: {e}");
            std::process::exit(1);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds cpgbench once against the system's corosync/cpg.h and libcpg.
fn build_cpgbench(args: &Args, work: &Path) -> Result<PathBuf, String> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| repo_root().join("bench/compare/cpgbench.c"));
    let out = work.join("cpgbench");
    let status = Command::new("cc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .arg("-lcpg")
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc {} failed", source.display()));
    }
    Ok(out)
}

/// One measurement to make in every round.
#[derive(Clone, Debug)]
struct Job {
    figure: &'static str,
    nodes: u32,
    cpgbench_args: Vec<String>,
}

fn jobs(args: &Args, nodes: u32) -> Vec<Job> {
    let mut jobs = Vec::new();
    let wants = |f: &str| args.figures.iter().any(|x| x == f);
    let common = |mut v: Vec<String>| {
        v.extend(["--nodes".into(), nodes.to_string()]);
        v
    };
    let secs = args.seconds.to_string();
    if wants("tput") {
        for size in &args.sizes {
            jobs.push(Job {
                figure: "tput",
                nodes,
                cpgbench_args: common(vec![
                    "tput".into(),
                    "--size".into(),
                    size.to_string(),
                    "--seconds".into(),
                    secs.clone(),
                ]),
            });
        }
    }
    if wants("lat") {
        jobs.push(Job {
            figure: "lat",
            nodes,
            cpgbench_args: common(vec![
                "lat".into(),
                "--size".into(),
                args.lat_size.to_string(),
                "--samples".into(),
                args.samples.to_string(),
            ]),
        });
    }
    if nodes == 1 && wants("groups") {
        for g in &args.groups {
            jobs.push(Job {
                figure: "groups",
                nodes,
                cpgbench_args: vec![
                    "groups".into(),
                    "--groups".into(),
                    g.to_string(),
                    "--size".into(),
                    "64".into(),
                    "--seconds".into(),
                    secs.clone(),
                ],
            });
        }
    }
    if nodes == 1 && wants("members") {
        jobs.push(Job {
            figure: "members",
            nodes,
            cpgbench_args: vec![
                "members".into(),
                "--members".into(),
                args.members.to_string(),
            ],
        });
    }
    jobs
}

fn run(args: &Args) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{:?}: {e}", args.out))?;
    let work = tempdir()?;
    let cpgbench = build_cpgbench(args, &work)?;
    let mut settings = vec![
        // Room for the scale figures (1,000 groups, a 1,024-member group): one
        // connection per handle. The defaults otherwise.
        "ipc.max_clients=2048".to_string(),
    ];
    settings.extend(args.settings.iter().cloned());
    let ringcast = RingcastPaths {
        daemon: args
            .ringcastd
            .canonicalize()
            .map_err(|e| format!("ringcastd: {e}"))?,
        libdir: args
            .ringcast_lib
            .canonicalize()
            .map_err(|e| format!("ringcast lib: {e}"))?,
        settings,
    };
    let started = chrono_now();
    // The checkout as it was built (read before the runs, which take minutes).
    let commit = commit();
    let load_before = loadavg();
    let mut runs = Vec::new();
    for &nodes in &args.nodes {
        let jobs = jobs(args, nodes);
        for round in 0..args.rounds {
            let order = if round % 2 == 0 {
                [System::Corosync, System::Ringcast]
            } else {
                [System::Ringcast, System::Corosync]
            };
            for system in order {
                let dir = work.join(format!("{}-{nodes}-{round}", system.name()));
                let _ = std::fs::remove_dir_all(&dir);
                let mut cluster = Cluster::start(system, nodes, &dir, &ringcast)?;
                for job in &jobs {
                    // A failed run is recorded (and fails the command at the end); the
                    // other figures are still measured.
                    let run = run_job(&mut cluster, &cpgbench, job, round, args)
                        .unwrap_or_else(|e| failed_run(system, job, round, e));
                    eprintln!("{}", report::one_line(&run));
                    runs.push(run);
                    if !cluster.alive() {
                        drop(cluster);
                        cluster = Cluster::start(system, nodes, &dir, &ringcast)?;
                    }
                }
            }
        }
    }
    let doc = json!({
        "started_utc": started,
        "finished_utc": chrono_now(),
        "machine": machine(load_before),
        "commit": commit,
        "command": std::env::args().collect::<Vec<_>>(),
        "corosync_version": corosync_version(),
        "ringcast_settings": ringcast.settings,
        "runs": runs,
    });
    let summary = report::summary(&doc["runs"]);
    let mut doc = doc;
    doc["summary"] = summary;
    let stem = if args.quick {
        "compare-quick".to_string()
    } else {
        format!("compare-{}", started.replace([':', '-'], ""))
    };
    let path = args.out.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{path:?}: {e}"))?;
    report::plots(&doc, &args.out, &stem)?;
    println!("{}", report::table(&doc));
    if args.keep {
        println!(
            "bench-compare: configs and daemon logs kept in {}",
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    let failed = doc["runs"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|x| x.get("error").is_some()).count());
    if failed > 0 {
        return Err(format!(
            "{failed} run(s) failed (see \"error\" in {})",
            path.display()
        ));
    }
    Ok(path)
}

fn failed_run(system: System, job: &Job, round: u32, error: String) -> Value {
    json!({
        "system": system.name(),
        "nodes": job.nodes,
        "round": round,
        "figure": job.figure,
        "args": job.cpgbench_args,
        "error": error,
    })
}

/// Runs cpgbench once; its JSON plus who, where, when and the daemons' CPU time.
fn run_job(
    cluster: &mut Cluster,
    cpgbench: &Path,
    job: &Job,
    round: u32,
    args: &Args,
) -> Result<Value, String> {
    let cpu_before = cluster.daemon_cpu_seconds();
    let rotations_before = cluster.token_rotations();
    let started = Instant::now();
    let mut cmd = cluster.client(cpgbench);
    cmd.args(&job.cpgbench_args);
    // Every handle is a few descriptors: a thousand of them need more than 1024.
    raise_nofile();
    let timeout = CLIENT_SLACK + Duration::from_secs_f64(args.seconds);
    let (status, stdout, stderr) = run_bounded(cmd, timeout)?;
    let cpu = cluster.daemon_cpu_seconds() - cpu_before;
    // Over the client's whole run (connect, warm-up and teardown included), so a rate
    // a little below the one during the measured window.
    let rotations_per_s = match (rotations_before, cluster.token_rotations()) {
        (Some(before), Some(after)) => {
            json!(after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64())
        }
        _ => Value::Null,
    };
    let line = stdout.lines().last().unwrap_or("");
    if !status || !cluster.alive() {
        return Err(format!(
            "{} {} on {} node(s) failed: {stderr}\n{stdout}\ndaemon log (node 1):\n{}",
            cluster.system.name(),
            job.cpgbench_args.join(" "),
            job.nodes,
            tail(&cluster.log(1), 30)
        ));
    }
    let result: Value =
        serde_json::from_str(line).map_err(|e| format!("cpgbench output {line:?}: {e}"))?;
    let delivered = result["delivered"].as_f64().unwrap_or(0.0);
    let per_million = if delivered > 0.0 {
        json!(cpu / delivered * 1e6)
    } else {
        Value::Null
    };
    Ok(json!({
        "system": cluster.system.name(),
        "nodes": job.nodes,
        "round": round,
        "figure": job.figure,
        "args": job.cpgbench_args,
        "result": result,
        "daemon_cpu_s": cpu,
        "daemon_cpu_s_per_million_msgs": per_million,
        "token_rotations_per_s": rotations_per_s,
    }))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` with a deadline; kills it (by its pid) when the deadline passes.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<(bool, String, String), String> {
    let dir = tempdir()?;
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| e.to_string());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("cpgbench: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let result = (status, read(&out), read(&err));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

/// The soft limit on descriptors up to the hard one (inherited by the clients).
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one valid rlimit struct; a failure
    // leaves the limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn tempdir() -> Result<PathBuf, String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bench-compare-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    Ok(dir)
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn chrono_now() -> String {
    output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn machine(load_before: String) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    json!({
        "cpu": model,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": output("uname", &["-r"]),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "note": "shared machine: other agents may be compiling; figures are medians of A/B-alternated rounds",
    })
}

fn commit() -> Value {
    let root = repo_root();
    let root = root.to_string_lossy();
    let head = output("git", &["-C", &root, "rev-parse", "HEAD"]);
    let dirty = !output("git", &["-C", &root, "status", "--porcelain"]).is_empty();
    json!({ "head": head, "dirty": dirty })
}

fn corosync_version() -> String {
    output("corosync", &["-v"])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}
