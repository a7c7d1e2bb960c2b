//! The daemon's side of sealing: the key file (read, generated with mode 0600, checked
//! for exposure) and the first seal counter from the wall clock. The sealing itself is
//! pure and lives in `ringcast_proto::wire::seal` (see docs/wire-format.md).

use std::io::Write;
use std::path::Path;

use crate::wire::seal::{KEY_BYTES, Key};

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read, created or written.
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A key file holds exactly [`KEY_BYTES`] bytes.
    #[error("key file {path}: {len} bytes, expected {KEY_BYTES}")]
    Length { path: String, len: usize },
    /// The OS has no randomness to give.
    #[error("no random numbers from the OS: {0}")]
    Random(getrandom::Error),
}

/// Reads a key file.
pub fn read(path: &Path) -> Result<Key, KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
        path: path.display().to_string(),
        len: bytes.len(),
    })?;
    Ok(Key::from_bytes(key))
}

/// A fresh random key from the OS.
pub fn generate() -> Result<Key, KeyError> {
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(KeyError::Random)?;
    Ok(Key::from_bytes(key))
}

/// Writes a fresh random key to a new file with mode 0600; refuses to overwrite.
pub fn generate_file(path: &Path) -> Result<Key, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = generate()?;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(key.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// Whether the file can be read by others than its owner (worth a warning).
pub fn is_exposed(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// The first counter of a sealer created now: nanoseconds since the Unix epoch, so a
/// restarted node continues above the counters it used before (docs/wire-format.md).
pub fn counter_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::seal::{Opener, Sealer};

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("ringcast-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("authkey");
        let _ = std::fs::remove_file(&path);
        let generated = generate_file(&path).unwrap();
        assert!(!is_exposed(&path));
        assert_eq!(read(&path).unwrap().as_bytes(), generated.as_bytes());
        assert!(generate_file(&path).is_err(), "never overwrites");
        std::fs::write(&path, [0u8; 5]).unwrap();
        assert!(matches!(read(&path), Err(KeyError::Length { len: 5, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A restarted sender's clock-based counter is above what it used before, so its
    /// peers accept it without a handshake.
    #[test]
    fn clock_counter_continues_above_earlier_ones() {
        let key = Key::from_bytes([1; KEY_BYTES]);
        let mut opener = Opener::new(&key, 0xc1, 8);
        let mut first = Sealer::new(&key, 7, 0xc1, counter_from_clock());
        opener.open(&mut first.seal(b"before")).unwrap();
        let mut restarted = Sealer::new(&key, 7, 0xc1, counter_from_clock());
        assert!(opener.open(&mut restarted.seal(b"back")).is_ok());
    }
}
