//! The configuration parser: a TOML file and `--set KEY=VALUE` flags, merged and resolved
//! as `ringcastd` does at start-up. A bad configuration is an error naming the setting,
//! never a panic. The input is the file's text, optionally followed by a 0xFF byte and
//! `--set` arguments one per line (so that the corpus can hold real configuration files).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_engine::daemon::config::ConfigFlags;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One file per fuzzing process, rewritten for each input.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("ringcast-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let (file, sets) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let path = config_path();
    std::fs::write(path, file).expect("temp file");
    let flags = ConfigFlags {
        config: Some(path.clone()),
        set: String::from_utf8_lossy(sets)
            .lines()
            .take(8)
            .map(str::to_owned)
            .collect(),
        ..ConfigFlags::default()
    };
    let _ = flags.resolve();
});
