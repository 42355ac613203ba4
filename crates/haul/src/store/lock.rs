//! Advisory file locks (flock) that serialise haul processes sharing one store.
//!
//! A lock is held for as long as its [`FileLock`] lives, and the kernel drops it if the process dies,
//! so a killed pull never leaves the store locked. Lock files live in `locks/`, are opened without
//! following symlinks (one planted there is refused, not followed) and are never deleted: removing a
//! lock file while another process waits on it would let two processes hold "the" lock at once.
//! Taking a lock blocks until it is free: async callers take it on a blocking thread.
//!
//! A store that cannot be written (a read-only mount) gets no lock file created. A reader there
//! locks the existing file, opened for reading (flock needs no write access), and goes without
//! when there is none. That is sound: nothing can write through a read-only view, so readers
//! need no protection from each other, and a writer reaching the same store through another,
//! writable mount locks the same inode whenever the file exists; when it does not, the worst
//! such a writer can do to a reader is remove what it reads (a prune), which fails the read,
//! never corrupts it: blobs and layer-cache entries are replaced whole, by rename.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::layout::LOCKS_DIR;
use super::{Store, StoreError};

/// A held lock of the store (`locks/<name>`), released when dropped. A reader's lock in a
/// read-only store without that lock file holds nothing (see the module documentation).
#[derive(Debug)]
pub struct FileLock {
    _file: Option<File>,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock `locks/<name>` of `store` is held.
    pub(super) fn exclusive(store: &Store, name: &str) -> Result<FileLock, StoreError> {
        FileLock::take(store, name, File::lock)
    }

    /// Blocks until a shared lock is held (any number of holders, no exclusive one).
    pub(super) fn shared(store: &Store, name: &str) -> Result<FileLock, StoreError> {
        FileLock::take(store, name, File::lock_shared)
    }

    /// A shared lock for a reader: as [`FileLock::shared`], but in a read-only store the
    /// existing lock file opened for reading, or none at all.
    pub(super) fn shared_for_reading(store: &Store, name: &str) -> Result<FileLock, StoreError> {
        let rel = Path::new(LOCKS_DIR).join(name);
        let path = store.root().join(&rel);
        let file = store.dir().open_lock_for_reading(&rel)?;
        if let Some(file) = &file {
            file.lock_shared().map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(FileLock { _file: file, path })
    }

    /// The exclusive lock if nobody holds it now, else `None`.
    pub(super) fn try_exclusive(store: &Store, name: &str) -> Result<Option<FileLock>, StoreError> {
        let (file, path) = FileLock::open(store, name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock {
                _file: Some(file),
                path,
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
        }
    }

    fn take(
        store: &Store,
        name: &str,
        lock: fn(&File) -> std::io::Result<()>,
    ) -> Result<FileLock, StoreError> {
        let (file, path) = FileLock::open(store, name)?;
        lock(&file).map_err(|e| StoreError::io(&path, e))?;
        Ok(FileLock {
            _file: Some(file),
            path,
        })
    }

    /// The lock file `locks/<name>`, created when absent, never through a symlink.
    fn open(store: &Store, name: &str) -> Result<(File, PathBuf), StoreError> {
        let rel = Path::new(LOCKS_DIR).join(name);
        let file = store.dir().open_writable(&rel)?;
        Ok((file, store.root().join(rel)))
    }

    /// The lock file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
