//! Every program's flags have help text; `make install` into a temporary DESTDIR
//! installs programs that run, their man pages, the unit, the tuned profile and the
//! example config.

use std::path::{Path, PathBuf};
use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn every_flag_of_every_program_has_help() {
    let out = Command::new(XTASK).arg("check-help").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("of 7 programs"), "{stdout}");
}

#[test]
fn make_install_into_a_destdir() {
    // What cargo built for this test run (the workspace's tests build every program).
    let target = Path::new(XTASK).parent().unwrap();
    let profile = target.file_name().unwrap().to_str().unwrap().to_owned();
    for bin in ["ringcastd", "ringcast", "ringcast-tune", "ringcast-sim"] {
        assert!(
            target.join(bin).exists(),
            "{bin} is not built in {}: `cargo build --workspace` first",
            target.display()
        );
    }
    let destdir = std::env::temp_dir().join(format!("ringcast-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&destdir);
    // The Makefile reads <target dir>/<profile>: point it at this run's.
    let out = Command::new("make")
        .arg("-C")
        .arg(repo())
        .args(["install", "PREFIX=/usr/local", "INSTALL_BUILD=0"])
        .arg(format!("INSTALL_PROFILE={profile}"))
        .arg(format!("TARGET_DIR={}", target.parent().unwrap().display()))
        .arg(format!("DESTDIR={}", destdir.display()))
        .output()
        .expect("make (installed by .ci/run)");
    assert!(
        out.status.success(),
        "make install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = destdir.join("usr/local");
    for bin in ["ringcastd", "ringcast", "ringcast-tune", "ringcast-sim"] {
        let path = root.join("bin").join(bin);
        for flag in ["--help", "--version"] {
            let out = Command::new(&path).arg(flag).output().unwrap();
            assert!(out.status.success(), "{bin} {flag}");
            let text = String::from_utf8_lossy(&out.stdout);
            if flag == "--version" {
                assert_eq!(text.trim(), format!("{bin} {}", env!("CARGO_PKG_VERSION")));
            } else {
                assert!(text.contains("Usage:"), "{bin}: {text}");
            }
        }
        let man = root.join(format!("share/man/man1/{bin}.1"));
        let page = std::fs::read_to_string(&man).unwrap_or_else(|e| panic!("{man:?}: {e}"));
        assert!(page.contains(&format!(".TH {bin} 1")), "{bin}");
    }
    assert!(root.join("share/man/man1/ringcast-status.1").exists());
    assert!(root.join("share/man/man1/ringcast-tune-check.1").exists());
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ringcastd.service")).unwrap();
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/ringcastd --config /etc/ringcast/ringcast.toml\n"
        )
    );
    assert!(destdir.join("etc/tuned/ringcast/tuned.conf").exists());
    let example = std::fs::read(repo().join("tuning/deploy/ringcast.toml")).unwrap();
    assert_eq!(
        std::fs::read(destdir.join("etc/ringcast/ringcast.toml")).unwrap(),
        example
    );
    assert_eq!(
        std::fs::read(root.join("share/doc/ringcast/ringcast.toml")).unwrap(),
        example
    );
    // The installed engine accepts the installed config.
    let out = Command::new(root.join("bin/ringcastd"))
        .args(["--check-config", "-c"])
        .arg(destdir.join("etc/ringcast/ringcast.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&destdir).unwrap();
}
