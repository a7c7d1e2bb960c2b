//! `bench-compare --quick`: the side-by-side harness (docs/bench-compare.md) on tiny
//! inputs against both systems, so that it cannot rot. It needs root (network
//! namespaces, Corosync) and Debian's corosync and libcpg-dev (`.ci/run` installs
//! them); without them it says why and skips.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if Command::new("corosync").arg("-v").output().is_err() {
        return Some("corosync not installed (Debian package corosync)".into());
    }
    if !Path::new("/usr/include/corosync/cpg.h").exists() {
        return Some("corosync/cpg.h not installed (Debian package libcpg-dev)".into());
    }
    None
}

/// ringcastd and ringcast's libcpg.so.4 (debug builds), installed into a temp DESTDIR.
fn ringcast_build(dir: &Path) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // With the features the engine's own tests build it with: both builds land on
    // target/debug/ringcastd, and the engine tests run after this one.
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "-q",
        "-p",
        "ringcast-engine",
        "--features",
        "test-hooks",
        "--bin",
        "ringcastd",
    ]));
    let dest = dir.join("dest");
    run(Command::new("make")
        .current_dir(&root)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .args(["-s", "install-c", "CAPI_PROFILE=debug", "PREFIX=/usr"])
        .arg(format!("CARGO={cargo}"))
        .arg(format!("DESTDIR={}", dest.display())));
    (target.join("debug/ringcastd"), dest.join("usr/lib"))
}

#[test]
fn quick_comparison_runs_both_systems_and_cleans_up() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-compare-quick");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (daemon, libdir) = ringcast_build(&dir);
    let out = dir.join("results");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench-compare"));
    cmd.arg("--quick")
        .arg("--ringcastd")
        .arg(&daemon)
        .arg("--ringcast-lib")
        .arg(&libdir)
        .arg("--out")
        // ringcastd's default idle strategy is backoff, as tests want it.
        .arg(&out);
    let child = cmd.spawn().unwrap();
    let harness_pid = child.id();
    let status = child.wait_with_output().unwrap();
    assert!(status.status.success(), "bench-compare failed");

    let text = std::fs::read_to_string(out.join("compare-quick.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    // Every figure of --quick, once per system: tput at 2 sizes, lat, groups 1 and 10,
    // members.
    for system in ["corosync", "ringcast"] {
        let mine: Vec<_> = runs.iter().filter(|r| r["system"] == system).collect();
        assert_eq!(mine.len(), 6, "{system}: {mine:?}");
        for r in &mine {
            let res = &r["result"];
            match r["figure"].as_str().unwrap() {
                "tput" | "groups" => {
                    assert!(res["delivered"].as_u64().unwrap() > 0, "{r}");
                    assert_eq!(res["delivered"], res["sent"], "{r}");
                    assert!(r["daemon_cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
                }
                "lat" => {
                    let (p50, p99) = (
                        res["p50_us"].as_f64().unwrap(),
                        res["p99_us"].as_f64().unwrap(),
                    );
                    assert!(p50 > 0.0 && p50 <= p99, "{r}");
                }
                "members" => {
                    assert_eq!(res["reached"], 16, "{r}");
                    assert!(res["grow_s"].as_f64().unwrap() > 0.0, "{r}");
                }
                other => panic!("unexpected figure {other}"),
            }
        }
    }
    assert!(!doc["machine"]["kernel"].as_str().unwrap().is_empty());
    assert!(doc["commit"]["head"].as_str().unwrap().len() >= 40);
    let summary = doc["summary"].as_array().unwrap();
    assert!(
        summary
            .iter()
            .any(|r| r["metric"] == "msg/s" && r["ringcast_advantage"].as_f64().is_some()),
        "{summary:?}"
    );
    for svg in ["compare-quick-throughput.svg", "compare-quick-latency.svg"] {
        let body = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(body.contains("corosync, 1 node(s)") && body.contains("ringcast, 1 node(s)"));
    }
    // Nothing left behind: no daemon started from the harness's directory, no namespace
    // of the harness (both named after its pid).
    let work = format!("bench-compare-{harness_pid}-");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&work),
            "left running: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    let prefix = format!("cbc{}", harness_pid % 100_000);
    assert!(
        !namespaces.lines().any(|l| l.starts_with(&prefix)),
        "{namespaces}"
    );
}
