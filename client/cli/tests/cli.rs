//! The `ringcast` command line against stats pages and a real engine: a page whose engine
//! is gone is reported as stale (exit 1, no figures); clients wait for an engine that is
//! starting and report a missing one in one line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcast_shm::stats::{Counter, StatsWriter};

const CLI: &str = env!("CARGO_BIN_EXE_ringcast");

/// ringcastd, which cargo builds into the same directory for the workspace's tests.
fn daemon_bin() -> PathBuf {
    let path = Path::new(CLI).with_file_name("ringcastd");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p ringcast-engine --bin ringcastd`",
        path.display()
    );
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env_remove("RINGCAST_SOCKET")
        .env_remove("RINGCAST_STATE_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A UDP port nobody uses right now (the OS picks it).
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[test]
fn a_live_page_is_shown_and_a_dead_engines_page_is_stale() {
    let dir = temp_dir("pages");
    let page = dir.join("stats_1");
    let page_arg = page.to_str().unwrap();
    // This process writes the page: its pid exists and the heartbeat is fresh.
    let writer = StatsWriter::create(&page, 1, 5).unwrap();
    writer.add(Counter::PacketsIn, 7);
    let out = run(&["status", "--stats", page_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l == "running true"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "packets_in 7"), "{stdout}");

    let out = run(&["stats", "--prometheus", "--stats", page_arg]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ringcast_up{node_id=\"1\"} 1"), "{stdout}");
    assert!(
        stdout.contains("ringcast_packets_in_total{node_id=\"1\"} 7"),
        "{stdout}"
    );

    // --watch: two samples 0.2 s apart, the rate of a counter that moves in between.
    let watch = Command::new(CLI)
        .args(["stats", "--watch", "--interval", "0.3", "--count", "2"])
        .args(["--stats", page_arg])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    writer.add(Counter::PacketsIn, 3000);
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("per second").count(), 2, "{stdout}");
    let rates: Vec<f64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("packets_in "))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 2, "{stdout}");
    assert!(rates[0] > 1000.0 && rates[1] == 0.0, "{rates:?}");

    // The same page as a dead engine left it: its pid no longer exists.
    let mut bytes = std::fs::read(&page).unwrap();
    // The header's pid (offset 24, see ringcast_shm::stats): above any pid_max.
    bytes[24..28].copy_from_slice(&0x7fff_fff0_u32.to_le_bytes());
    let dead = dir.join("stats_2");
    std::fs::write(&dead, &bytes).unwrap();
    let out = run(&["status", "--stats", dead.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no figures: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("stale") && stderr.contains("is gone"),
        "{stderr}"
    );
    let out = run(&["stats", "--prometheus", "--stats", dead.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("ringcast_up{node_id=\"1\"} 0"));
    assert!(!text(&out.stdout).contains("packets_in"));

    // No page at all.
    let out = run(&[
        "status",
        "--state-dir",
        dir.to_str().unwrap(),
        "--node-id",
        "9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no engine running"), "{stderr}");
    drop(writer);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_engine_is_one_line_after_the_wait() {
    let dir = temp_dir("missing");
    let socket = dir.join("nobody.sock");
    for command in [&["groups"][..], &["listen", "g"], &["send", "g", "m"]] {
        let started = Instant::now();
        let out = Command::new(CLI)
            .args(command)
            .args(["--wait", "0.5", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("ringcast: no engine at ")
                && stderr.contains("is ringcastd running"),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ringcast listen` started before the engine waits for it; once the engine is killed,
/// `ringcast status` reports its page as stale.
#[test]
fn listen_waits_for_a_starting_engine_and_status_sees_it_die() {
    let dir = temp_dir("wait");
    let socket = dir.join("ringcast.sock");
    let mut listener = Killed(
        Command::new(CLI)
            .args([
                "listen", "early", "--count", "1", "--wait", "30", "--socket",
            ])
            .arg(&socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        listener.0.try_wait().unwrap().is_none(),
        "listen gave up before the engine started"
    );
    let port = free_port();
    let engine = Killed(
        Command::new(daemon_bin())
            .args(["--idle", "backoff", "--token-ms", "300", "--port"])
            .arg(port.to_string())
            .args(["--cluster-name", &format!("cli-wait-{port}")])
            .arg("--state-dir")
            .arg(&dir)
            .arg("--ipc-socket")
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = listener.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?}: {e}"),
            }
        }
    };
    wait_line("confchg group=early");
    let out = Command::new(CLI)
        .args(["send", "early", "hello early", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_line("hello early");
    let status = listener.0.wait().unwrap();
    assert!(status.success());

    let page = dir.join("stats_1");
    let out = run(&["status", "--stats", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(engine); // SIGKILL: the engine cannot mark its page
    let out = run(&["status", "--stats", page.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("stale"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
