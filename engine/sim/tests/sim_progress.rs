//! `ringcast-sim` over many seeds shows its progress on stderr (the report on stdout is
//! unchanged), and `--no-progress` turns it off.

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_ringcast-sim");

fn run(extra: &[&str]) -> (String, String) {
    let out = Command::new(SIM)
        .args([
            "--seeds",
            "6",
            "--nodes",
            "2-3",
            "--duration",
            "1",
            "--tail",
            "0.5",
        ])
        .args(["--jobs", "2"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn many_seeds_report_progress_on_stderr() {
    let (stdout, stderr) = run(&[]);
    // Not a terminal: a first line, then one every 10 s, and the last one.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("seeds ")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(lines[0].starts_with("seeds 1/6 "), "{stderr}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("seeds 6/6 (100%), 0 violations, "),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "no terminal codes in a log");
    assert!(stdout.contains("seeds run: 6"), "{stdout}");
    assert!(!stdout.contains("seeds 6/6"));

    let (_, quiet) = run(&["--no-progress"]);
    assert!(!quiet.contains("seeds "), "{quiet}");
}
