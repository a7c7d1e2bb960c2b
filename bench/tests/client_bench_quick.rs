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
}
