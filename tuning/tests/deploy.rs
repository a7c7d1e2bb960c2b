//! The deployment files in tuning/deploy: the example config parses with the engine's
//! parser and shows every setting with its default; the systemd unit passes
//! `systemd-analyze verify`; the tuned profile provides what `ringcast-tune check` wants.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringcast_engine::daemon::config::{ConfigFlags, Settings};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The fields of a table of the config, from the parser's own list (`deny_unknown_fields`
/// names every field it expects), so a new setting cannot be missed.
fn fields_of(section: &str) -> Vec<String> {
    let text = match section {
        "" => "zz_unknown = 1".to_owned(),
        "nodelist" => "[[nodelist]]\nzz_unknown = 1".to_owned(),
        table => format!("[{table}]\nzz_unknown = 1"),
    };
    let error = toml::from_str::<Settings>(&text)
        .expect_err("an unknown field is rejected")
        .to_string();
    let expected = &error[error.find("expected").expect("lists the fields")..];
    let expected = expected.lines().next().unwrap();
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `key =` and `# key =` lines of the example, per section (`""` before the first).
fn keys_in_example(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = name.to_owned();
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let setting = line.strip_prefix("# ").unwrap_or(line);
        if let Some((key, _)) = setting.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.push((section.clone(), key.to_owned()));
        }
    }
    keys
}

#[test]
fn the_example_config_parses_and_shows_every_setting() {
    let path = deploy().join("ringcast.toml");
    let flags = ConfigFlags {
        config: Some(path.clone()),
        ..ConfigFlags::default()
    };
    let settings = flags.settings().expect("the example parses");
    flags
        .resolve()
        .expect("the example is a valid configuration");

    let text = std::fs::read_to_string(&path).unwrap();
    let keys = keys_in_example(&text);
    let mut missing = Vec::new();
    for section in ["", "totem", "load", "ipc", "nodelist"] {
        for field in fields_of(section) {
            if ["nodelist", "totem", "load", "ipc"].contains(&field.as_str()) {
                continue; // tables, checked by their own fields
            }
            if !keys.contains(&(section.to_owned(), field.clone())) {
                missing.push(format!("{section}.{field}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the example: {missing:?}");
    assert!(fields_of("").len() > 20 && fields_of("ipc").len() > 10);

    // The values it shows are the defaults (apart from the cluster it describes and the
    // system paths, which are the defaults for root).
    let defaults = Settings {
        nodelist: settings.nodelist.clone(),
        ipc_socket: "/run/ringcast/ringcast.sock".into(),
        state_dir: "/var/lib/ringcast".into(),
        ..Settings::default()
    };
    assert_eq!(settings, defaults);
    assert_eq!(settings.nodelist.len(), 3);
}

/// systemd-analyze, or None when it is not installed outside CI (where `.ci/run`
/// installs it).
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI: .ci/run installs the systemd package"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
    }
    found
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // The binaries cargo built (ExecStart must name an executable for verify).
    let bindir = Path::new(env!("CARGO_BIN_EXE_ringcast-tune"))
        .parent()
        .unwrap()
        .to_path_buf();
    let template = std::fs::read_to_string(deploy().join("ringcastd.service.in")).unwrap();
    assert!(template.contains("@BINDIR@/ringcastd"));
    let unit = template
        .replace("@BINDIR@", bindir.to_str().unwrap())
        .replace("@SYSCONFDIR@", "/etc");
    assert!(!unit.contains('@'), "every placeholder is filled");
    let dir = std::env::temp_dir().join(format!("ringcast-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcastd.service");
    std::fs::write(&path, &unit).unwrap();
    // A dangling ExecStart is an error verify reports: this binary is what make install
    // puts next to the others.
    if !bindir.join("ringcastd").exists() {
        panic!(
            "{} missing: build it with `cargo build -p ringcast-engine --bin ringcastd`",
            bindir.join("ringcastd").display()
        );
    }
    // --man=no: the man pages are checked where `make install` puts them, not here.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings about this unit (unknown keys, bad values) do not fail verify: none.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ringcastd.service"))
        .collect();
    assert!(about_unit.is_empty(), "{about_unit:#?}");
    for needed in [
        "LimitMEMLOCK=infinity",
        "RuntimeDirectory=ringcast",
        "StateDirectory=ringcast",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_IPC_LOCK CAP_SYS_NICE",
    ] {
        assert!(unit.lines().any(|l| l == needed), "{needed}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tuned profile's sysctls cover what `ringcast-tune check` asks of a host for the
/// default configuration.
#[test]
fn the_tuned_profile_provides_what_check_wants() {
    let text = std::fs::read_to_string(deploy().join("tuned/ringcast/tuned.conf")).unwrap();
    let value = |section: &str, key: &str| -> Option<String> {
        let mut current = "";
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                current = line.trim_matches(|c| c == '[' || c == ']');
            } else if current == section
                && let Some((k, v)) = line.split_once('=')
                && k.trim() == key
            {
                return Some(v.trim().to_owned());
            }
        }
        None
    };
    let config = ConfigFlags::default()
        .resolve()
        .expect("built-in defaults resolve");
    let needs = ringcast_tune::Needs::from_config(&config, "defaults".into(), 4);
    let hugepages: u64 = value("sysctl", "vm.nr_hugepages").unwrap().parse().unwrap();
    assert!(hugepages >= needs.huge_pages_wanted(2 << 20), "{hugepages}");
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        let bytes: u64 = value("sysctl", key).unwrap().parse().unwrap();
        assert!(bytes >= needs.socket_buffer_bytes, "{key}");
    }
    assert_eq!(
        value("sysctl", "kernel.io_uring_disabled").as_deref(),
        Some("0")
    );
    assert_eq!(value("cpu", "governor").as_deref(), Some("performance"));
    assert_eq!(
        value("vm", "transparent_hugepages").as_deref(),
        Some("madvise")
    );
    let cmdline = value("bootloader", "cmdline_ringcast").unwrap();
    for param in ["isolcpus=", "nohz_full=", "rcu_nocbs="] {
        assert!(cmdline.contains(param), "{param}");
    }
    assert_eq!(value("main", "include").as_deref(), Some("network-latency"));
}
