//! Advisory file locks (flock) that serialise haul processes sharing one store.
//!
//! A lock is held for as long as its [`FileLock`] lives, and the kernel drops it if the process dies,
//! so a killed pull never leaves the store locked. Lock files are never deleted: removing a lock file
//! while another process waits on it would let two processes hold "the" lock at once.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::StoreError;

#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` is held. Run it off the async runtime.
    pub fn exclusive(path: &Path) -> Result<FileLock, StoreError> {
        FileLock::take(path, File::lock)
    }

    /// Blocks until a shared lock on `path` is held (any number of holders, no exclusive one).
    pub fn shared(path: &Path) -> Result<FileLock, StoreError> {
        FileLock::take(path, File::lock_shared)
    }

    fn take(path: &Path, lock: fn(&File) -> std::io::Result<()>) -> Result<FileLock, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        lock(&file).map_err(|e| StoreError::io(path, e))?;
        Ok(FileLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Like [`FileLock::exclusive`], waiting on a blocking thread so the runtime keeps going.
    pub async fn exclusive_async(path: PathBuf) -> Result<FileLock, StoreError> {
        let for_error = path.clone();
        tokio::task::spawn_blocking(move || FileLock::exclusive(&path))
            .await
            .map_err(|e| StoreError::io(&for_error, std::io::Error::other(e)))?
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
