//! `ringcast-sim --hosts`: whole hosts with clients from the command line; a seed
//! replays to the same run, and the summary counts what the runs did.

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_ringcast-sim");

fn run(args: &[&str]) -> String {
    let out = Command::new(SIM)
        .arg("--hosts")
        .args(args)
        .args(["--jobs", "2", "--no-progress"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    stdout
}

#[test]
fn host_seeds_run_and_a_seed_replays_alike() {
    let many = run(&["--seeds", "4", "--start", "10", "--duration", "2"]);
    assert!(
        many.contains("host seeds run: 4 (2 threads), from 10"),
        "{many}"
    );
    assert!(many.contains("violations: 0 in 0 seeds"), "{many}");
    let once = run(&["--seed", "11", "--duration", "2"]);
    let again = run(&["--seed", "11", "--duration", "2"]);
    let line = |s: &str| s.lines().next().unwrap_or_default().to_string();
    assert!(line(&once).starts_with("seed 11 nodes "), "{once}");
    assert_eq!(line(&once), line(&again));
}
