//! `ringcast-bench --test`: every part of the client benchmark on tiny inputs, so that it
//! cannot rot (STYLE.md, "Benchmarks cannot rot").

use std::process::Command;

#[test]
fn the_client_benchmark_runs_on_tiny_inputs() {
    let bench = env!("CARGO_BIN_EXE_ringcast-bench");
    let dir = std::path::Path::new(bench).parent().unwrap();
    if !dir.join("ringcastd").exists() {
        println!(
            "skipped: ringcastd not built next to ringcast-bench (cargo build -p \
             ringcast-engine, or cargo test --workspace)"
        );
        return;
    }
    let out = Command::new(bench).arg("--test").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two sizes × two receiver counts, then the latency line.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("| 64 |")).count(),
        2
    );
    assert!(stdout.contains("latency send -> own delivery"), "{stdout}");
    // Progress on stderr, one line per measurement, the table on stdout untouched.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runs: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!(
        runs.first()
            .is_some_and(|l| l.starts_with("[1/4] size 64 B")),
        "{stderr}"
    );
    assert!(runs.iter().any(|l| l.starts_with("[4/4] ")), "{stderr}");
    assert!(runs.iter().any(|l| l.starts_with("[latency]")), "{stderr}");
    assert!(!stdout.contains("[1/4]"));
}
