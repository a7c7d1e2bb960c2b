//! The persistent ring sequence (CPG_SPEC.md §9.1): `<state_dir>/ringid_<nodeid>`, eight
//! little-endian bytes, replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory) so that a crash leaves either the old or the new value, never a torn
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::totem::RingSeqStore;

/// A [`RingSeqStore`] backed by one small file.
#[derive(Debug)]
pub struct FileRingSeqStore {
    path: PathBuf,
    /// The last value written (or loaded): a store of the same value is skipped.
    last: Option<u64>,
}

impl FileRingSeqStore {
    /// Uses `path`; creates its directory if needed and checks that it is readable and
    /// writable now, so that a bad state dir is reported at start rather than on the
    /// first new ring.
    pub fn open(path: PathBuf) -> std::io::Result<FileRingSeqStore> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut store = FileRingSeqStore { path, last: None };
        let current = store.read()?;
        store.write(current)?;
        store.last = Some(current);
        Ok(store)
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
            Err(e) => {
                tracing::error!(path = %self.path.display(), seq, error = %e, "cannot persist the ring sequence")
            }
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
}
