//! `ringcast-tune` against fixture /proc and /sys trees (tests/fixtures/{untuned,tuned}:
//! a 4-cpu host with SMT pairs 0,2 and 1,3, the engine pinned to cpu 1 by
//! tests/fixtures/engine.toml), and `check` for real on this machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TUNE: &str = env!("CARGO_BIN_EXE_ringcast-tune");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tune(root: &Path, args: &[&str]) -> Output {
    Command::new(TUNE)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn config() -> String {
    fixtures().join("engine.toml").display().to_string()
}

/// check --json: status of every check by id, and the exit code.
fn statuses(root: &Path) -> (BTreeMap<String, String>, Option<i32>) {
    let out = tune(root, &["check", "--json", "-c", &config()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let map = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (map, out.status.code())
}

const ALL_CHECKS: [&str; 15] = [
    "hugepages",
    "cpu",
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "smt_sibling",
    "irq_affinity",
    "governor",
    "cstates",
    "rmem_max",
    "wmem_max",
    "memlock",
    "thp",
    "numa",
    "io_uring",
];

#[test]
fn an_untuned_host_fails_with_a_fix_for_each_item() {
    let root = fixtures().join("untuned");
    let (map, code) = statuses(&root);
    assert_eq!(code, Some(1), "a failing check exits 1");
    let expected = [
        ("hugepages", "warn"),
        ("cpu", "ok"),
        // idle = spin on a core that is not isolated.
        ("isolcpus", "fail"),
        ("nohz_full", "fail"),
        ("rcu_nocbs", "fail"),
        ("smt_sibling", "warn"),
        ("irq_affinity", "warn"),
        ("governor", "warn"),
        ("cstates", "warn"),
        ("rmem_max", "warn"),
        ("wmem_max", "warn"),
        // 8 MiB: less than the receive buffers pinned with udp_offload on (256 of 64
        // KiB; docs/performance.md).
        ("memlock", "warn"),
        ("thp", "warn"),
        ("numa", "fail"),
        ("io_uring", "warn"),
    ];
    for (id, status) in expected {
        assert_eq!(
            map.get(id).map(String::as_str),
            Some(status),
            "{id}: {map:?}"
        );
    }
    assert_eq!(map.len(), ALL_CHECKS.len());

    // The human report: one line per check, a fix under each that is not ok.
    let out = tune(&root, &["check", "-c", &config()]);
    let text = String::from_utf8(out.stdout).unwrap();
    for id in ALL_CHECKS {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(id)),
            "{id} missing:\n{text}"
        );
    }
    let not_ok = text
        .lines()
        .filter(|l| l.starts_with("warn") || l.starts_with("FAIL"))
        .count();
    assert_eq!(text.matches(" fix: ").count(), not_ok, "{text}");
    assert!(text.contains("vm.nr_hugepages=189"), "{text}");
    assert!(
        text.contains("isolcpus=1 nohz_full=1 rcu_nocbs=1"),
        "{text}"
    );
    assert!(
        text.contains("4 IRQs may run on cpu 1 (0 24 25 40)"),
        "{text}"
    );
    assert!(
        text.contains("eth0 is on node 1, cpu 1 on node 0"),
        "{text}"
    );
    assert!(text.ends_with("summary: 1 ok, 10 warn, 4 fail\n"), "{text}");
}

#[test]
fn a_tuned_host_passes() {
    let (map, code) = statuses(&fixtures().join("tuned"));
    assert_eq!(code, Some(0));
    assert!(map.values().all(|s| s == "ok"), "{map:?}");
    assert_eq!(map.len(), ALL_CHECKS.len());
}

/// Every file below `dir`, with its contents.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    files
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, text) in tree(from) {
        let path = to.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

#[test]
fn apply_changes_the_runtime_items_and_revert_restores_them() {
    let root = std::env::temp_dir().join(format!("ringcast-tune-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    copy_tree(&fixtures().join("untuned"), &root);
    let before = tree(&root);
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel))
            .unwrap()
            .trim()
            .to_owned()
    };

    // --dry-run changes nothing.
    let out = tune(&root, &["apply", "--dry-run", "-c", &config()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("would set /proc/sys/vm/nr_hugepages: 0 -> 189"),
        "{text}"
    );
    assert_eq!(tree(&root), before);

    let out = tune(&root, &["apply", "-c", &config()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("boot-time changes"), "{text}");
    assert!(
        text.contains("isolcpus=1 nohz_full=1 rcu_nocbs=1"),
        "{text}"
    );
    assert_eq!(read("proc/sys/vm/nr_hugepages"), "189");
    assert_eq!(read("proc/sys/net/core/rmem_max"), "8388608");
    assert_eq!(read("proc/sys/net/core/wmem_max"), "8388608");
    assert_eq!(read("proc/sys/kernel/io_uring_disabled"), "0");
    assert_eq!(read("proc/irq/24/smp_affinity_list"), "0,2-3");
    assert_eq!(read("proc/irq/default_smp_affinity"), "d");
    assert_eq!(
        read("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"),
        "performance"
    );
    // Only the engine's cpu is changed.
    assert_eq!(
        read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "powersave"
    );
    assert_eq!(
        read("sys/devices/system/cpu/cpu1/cpuidle/state2/disable"),
        "1"
    );
    assert_eq!(
        read("sys/devices/system/cpu/cpu1/cpuidle/state1/disable"),
        "0"
    );
    assert_eq!(
        read("sys/kernel/mm/transparent_hugepage/enabled"),
        "madvise"
    );
    assert!(root.join("var/lib/ringcast/tune-saved.json").exists());

    // What apply changed now checks ok; what needs a reboot still does not.
    let (map, code) = statuses(&root);
    for id in [
        "hugepages",
        "irq_affinity",
        "governor",
        "cstates",
        "rmem_max",
        "wmem_max",
        "thp",
        "io_uring",
    ] {
        assert_eq!(map[id], "ok", "{id}: {map:?}");
    }
    assert_eq!(map["isolcpus"], "fail");
    assert_eq!(code, Some(1));

    // A second apply changes nothing more and keeps the first old values.
    let out = tune(&root, &["apply", "-c", &config()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("runtime: nothing to change"));

    let out = tune(&root, &["revert"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // As sysfs and procfs read back what was written: the same value, and a choice
    // file shows the chosen one.
    let normal = |files: BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
        files
            .into_iter()
            .map(|(path, text)| {
                let text = text.trim();
                let chosen = match (text.find('['), text.find(']')) {
                    (Some(a), Some(b)) => &text[a + 1..b],
                    _ => text,
                };
                (path, chosen.to_owned())
            })
            .collect()
    };
    assert_eq!(
        normal(tree(&root)),
        normal(before),
        "revert restores every file"
    );
    let out = tune(&root, &["revert"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to revert"));
    std::fs::remove_dir_all(&root).unwrap();
}

/// `check` on this machine, for real: a report of every item, exit status 1 exactly when
/// something fails, and figures that match what the kernel says.
#[test]
fn check_runs_on_this_host() {
    let out = Command::new(TUNE)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let checks = report["checks"].as_array().unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ALL_CHECKS);
    let fails = checks.iter().filter(|c| c["status"] == "fail").count();
    assert_eq!(report["fail"].as_u64(), Some(fails as u64));
    assert_eq!(out.status.code(), Some(if fails > 0 { 1 } else { 0 }));
    let detail = |id: &str| {
        checks.iter().find(|c| c["id"] == id).unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    if let Ok(reserved) = std::fs::read_to_string("/proc/sys/vm/nr_hugepages") {
        let hugepages = detail("hugepages");
        assert!(
            hugepages.starts_with(&format!("{} reserved", reserved.trim()))
                || hugepages.contains("maps no huge pages"),
            "{hugepages}"
        );
    }
    if let Ok(rmem) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") {
        assert!(
            detail("rmem_max").starts_with(&format!("net.core.rmem_max = {}", rmem.trim())),
            "{}",
            detail("rmem_max")
        );
    }
    // The engine's built-in defaults run on loopback.
    assert_eq!(detail("numa"), "127.0.0.1 is loopback: no NIC involved");
}
