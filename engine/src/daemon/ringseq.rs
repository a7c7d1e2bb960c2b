//! The persistent ring sequence (docs/cpg.md §9.1): `<state_dir>/ringid_<nodeid>`, eight
//! little-endian bytes, replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory) so that a crash leaves either the old or the new value, never a torn
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::totem::RingSeqStore;

/// A ring sequence write that failed: the file, the value and the error.
#[derive(Debug)]
pub struct RingSeqWriteError {
    pub path: PathBuf,
    pub seq: u64,
    pub source: std::io::Error,
}

/// Where a [`FileRingSeqStore`] leaves its first failed write for the engine, which
/// must stop before anything that names the new ring leaves the node: a ring id that
/// was used but not persisted could be used again after a restart
/// (docs/invariants.md, "Ring identifiers").
#[derive(Clone, Debug, Default)]
pub struct RingSeqFailure(Arc<Mutex<Option<RingSeqWriteError>>>);

impl RingSeqFailure {
    /// The first failed write, if any.
    pub fn take(&self) -> Option<RingSeqWriteError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn set(&self, error: RingSeqWriteError) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(error);
    }
}

/// A [`RingSeqStore`] backed by one small file.
#[derive(Debug)]
pub struct FileRingSeqStore {
    path: PathBuf,
    /// The last value written (or loaded): a store of the same value is skipped.
    last: Option<u64>,
    failure: RingSeqFailure,
}

impl FileRingSeqStore {
    /// Uses `path`; creates its directory if needed and checks that it is readable and
    /// writable now, so that a bad state dir is reported at start rather than on the
    /// first new ring.
    pub fn open(path: PathBuf) -> std::io::Result<FileRingSeqStore> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut store = FileRingSeqStore {
            path,
            last: None,
            failure: RingSeqFailure::default(),
        };
        let current = store.read()?;
        store.write(current)?;
        store.last = Some(current);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a failed write is reported; the engine checks it after every call into
    /// Totem and stops.
    pub fn failure(&self) -> RingSeqFailure {
        self.failure.clone()
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

    /// Replaces the file atomically and durably.
    pub fn write(&self, seq: u64) -> std::io::Result<()> {
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

impl RingSeqStore for FileRingSeqStore {
    fn load(&mut self) -> u64 {
        match self.read() {
            Ok(seq) => {
                self.last = Some(seq);
                seq
            }
            Err(e) => {
                // Corosync starts from 0 too; the new ring then only needs to be above
                // what the other nodes report in their joins.
                tracing::error!(path = %self.path.display(), error = %e, "ring sequence unreadable, starting from 0");
                0
            }
        }
    }

    fn store(&mut self, seq: u64) {
        if self.last == Some(seq) {
            return;
        }
        match self.write(seq) {
            Ok(()) => self.last = Some(seq),
            Err(source) => self.failure.set(RingSeqWriteError {
                path: self.path.clone(),
                seq,
                source,
            }),
        }
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
        let mut store = FileRingSeqStore::open(path.clone()).unwrap();
        assert_eq!(store.load(), 0);
        store.store(12);
        assert_eq!(fs::read(&path).unwrap(), 12u64.to_le_bytes());
        let mut again = FileRingSeqStore::open(path.clone()).unwrap();
        assert_eq!(again.load(), 12);
        fs::write(&path, [1, 2, 3]).unwrap();
        assert!(again.read().is_err());
        assert!(FileRingSeqStore::open(path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_once_with_the_file_and_the_value() {
        let dir = std::env::temp_dir().join(format!("ringcast-ringseq-bad-{}", std::process::id()));
        let path = dir.join("ringid_2");
        let _ = fs::remove_dir_all(&dir);
        let mut store = FileRingSeqStore::open(path.clone()).unwrap();
        let failure = store.failure();
        store.store(4);
        assert!(failure.take().is_none());
        fs::remove_file(&path).unwrap();
        fs::create_dir_all(path.join("occupied")).unwrap();
        store.store(8);
        store.store(12);
        let error = failure.take().expect("the write of 8 failed");
        assert_eq!((error.path.as_path(), error.seq), (path.as_path(), 8));
        assert!(failure.take().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
