//! Advisory file locks (flock) that serialise haul processes sharing one store.
//!
//! A lock is held for as long as its [`FileLock`] lives, and the kernel drops it if the process dies,
//! so a killed pull never leaves the store locked. Lock files live in `locks/`, are opened without
//! following symlinks (one planted there is refused, not followed) and are never deleted: removing a
//! lock file while another process waits on it would let two processes hold "the" lock at once.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{LOCKS_DIR, Store, StoreError};

#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock `locks/<name>` of `store` is held. Run it off the async
    /// runtime.
    pub(crate) fn exclusive(store: &Store, name: &str) -> Result<FileLock, StoreError> {
        FileLock::take(store, name, File::lock)
    }

    /// Blocks until a shared lock is held (any number of holders, no exclusive one).
    pub(crate) fn shared(store: &Store, name: &str) -> Result<FileLock, StoreError> {
        FileLock::take(store, name, File::lock_shared)
    }

    /// The exclusive lock if nobody holds it now, else `None`.
    pub(crate) fn try_exclusive(store: &Store, name: &str) -> Result<Option<FileLock>, StoreError> {
        let rel = Path::new(LOCKS_DIR).join(name);
        let path = store.root().join(&rel);
        let file = store.dir().open_writable(&rel)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { _file: file, path })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
        }
    }

    fn take(
        store: &Store,
        name: &str,
        lock: fn(&File) -> std::io::Result<()>,
    ) -> Result<FileLock, StoreError> {
        let rel = Path::new(LOCKS_DIR).join(name);
        let path = store.root().join(&rel);
        let file = store.dir().open_writable(&rel)?;
        lock(&file).map_err(|e| StoreError::io(&path, e))?;
        Ok(FileLock { _file: file, path })
    }

    /// Like [`FileLock::exclusive`], waiting on a blocking thread so the runtime keeps going.
    pub(crate) async fn exclusive_async(
        store: &Store,
        name: String,
    ) -> Result<FileLock, StoreError> {
        let for_error = store.lock_path(&name);
        let store = store.clone();
        tokio::task::spawn_blocking(move || FileLock::exclusive(&store, &name))
            .await
            .map_err(|e| StoreError::io(&for_error, std::io::Error::other(e)))?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
