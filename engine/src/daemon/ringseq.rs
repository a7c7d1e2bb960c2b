//! The persistent ring sequence (docs/cpg.md §9.1): `<state_dir>/ringid_<nodeid>`, eight
//! little-endian bytes, replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory) so that a crash leaves either the old or the new value, never a torn
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A ring sequence write that failed: the file, the value and the error.
#[derive(Debug)]
pub struct RingSeqWriteError {
    pub path: PathBuf,
    pub seq: u64,
    pub source: std::io::Error,
}

/// The file holding the ring sequence. The host asks for each new value
/// (`Host::poll_persist`); the engine writes it here and confirms it, or stops on a
/// failed write: a ring id that was used but not persisted could be used again after a
/// restart (docs/invariants.md, "Ring identifiers").
#[derive(Debug)]
pub struct FileRingSeqStore {
    path: PathBuf,
    /// The last value written (or loaded): a write of the same value is skipped.
    last: u64,
}

impl FileRingSeqStore {
    /// Uses `path` and returns the value stored there (0 when the file is missing);
    /// creates its directory if needed and rewrites the value now, so that a bad state
    /// dir or an unreadable file is reported at start rather than on the first new ring.
    pub fn open(path: PathBuf) -> std::io::Result<(FileRingSeqStore, u64)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut store = FileRingSeqStore { path, last: 0 };
        let current = store.read()?;
        store.write(current)?;
        store.last = current;
        Ok((store, current))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored value: 0 when the file is missing; an error when it is not 8 bytes.
    pub fn read(&self) -> std::io::Result<u64> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {} bytes, expected 8", self.path.display(), bytes.len()),
                    )
                })?;
                Ok(u64::from_le_bytes(raw))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Stores `seq` durably (skipped when it is the value last written); the error
    /// names the file and the value.
    pub fn persist(&mut self, seq: u64) -> Result<(), RingSeqWriteError> {
        if self.last == seq {
            return Ok(());
        }
        self.write(seq).map_err(|source| RingSeqWriteError {
            path: self.path.clone(),
            seq,
            source,
        })?;
        self.last = seq;
        Ok(())
    }

    /// Replaces the file atomically and durably.
    fn write(&self, seq: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&seq.to_le_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_rejects_torn_files() {
        let dir = std::env::temp_dir().join(format!("ringcast-ringseq-{}", std::process::id()));
        let path = dir.join("ringid_1");
        let _ = fs::remove_dir_all(&dir);
        let (mut store, start) = FileRingSeqStore::open(path.clone()).unwrap();
        assert_eq!(start, 0);
        store.persist(12).unwrap();
        assert_eq!(fs::read(&path).unwrap(), 12u64.to_le_bytes());
        let (again, seq) = FileRingSeqStore::open(path.clone()).unwrap();
        assert_eq!(seq, 12);
        fs::write(&path, [1, 2, 3]).unwrap();
        assert!(again.read().is_err());
        assert!(FileRingSeqStore::open(path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_the_value() {
        let dir = std::env::temp_dir().join(format!("ringcast-ringseq-bad-{}", std::process::id()));
        let path = dir.join("ringid_2");
        let _ = fs::remove_dir_all(&dir);
        let (mut store, _) = FileRingSeqStore::open(path.clone()).unwrap();
        store.persist(4).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir_all(path.join("occupied")).unwrap();
        let error = store.persist(8).expect_err("the file is a directory");
        assert_eq!((error.path.as_path(), error.seq), (path.as_path(), 8));
        assert!(
            store.persist(8).is_err(),
            "a failed value is not taken as written"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
