//! The local store: an OCI image layout that skopeo, umoci and other OCI tools can read.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
//! ROOT/index.json            one descriptor per ref, named by org.opencontainers.image.ref.name
//! ROOT/blobs/sha256/<hex>    verified content, never modified once there
//! ROOT/ingest/               haul's partial downloads (invisible to OCI readers)
//! ROOT/locks/                flock files that serialise processes
//! ```
//!
//! Promises: a file under `blobs/` always hashes to its name, because content enters only through
//! [`ingest::Ingest`] or [`Store::put_blob`], which verify, fsync and rename into place; `index.json`
//! is replaced atomically under a lock, so readers never see it torn and concurrent writers never
//! lose each other's refs.

pub mod ingest;
pub mod lock;
pub mod refs;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, VerifyError};

pub use ingest::{Ingest, IngestStart};
pub use lock::FileLock;
pub use refs::RefEntry;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const GC_LOCK: &str = "gc.lock";
const OCI_LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content for {digest} failed verification: {source}")]
    Verify {
        digest: Digest,
        #[source]
        source: VerifyError,
    },
    #[error("{path} is not a usable OCI image layout: {reason}")]
    BadLayout { path: PathBuf, reason: String },
    #[error("blob {digest} is larger than the {limit} bytes haul reads into memory")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("blob {0} is not in the store")]
    Missing(Digest),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A handle on a store root. Cheap to clone; holds no open files.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the layout at `root`, creating it when absent.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in ["blobs/sha256", "ingest", "locks"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        let store = Store { root };
        store.ensure_layout_file()?;
        store.ensure_index()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Held (shared) by every operation that adds content, for its whole duration; garbage
    /// collection takes it exclusively, so it never sweeps blobs a pull has committed but not yet
    /// published a ref for.
    pub fn writer_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::shared(&self.lock_path(GC_LOCK))
    }

    /// Taken by garbage collection: waits for running pulls to finish and keeps new ones out.
    pub fn collector_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::exclusive(&self.lock_path(GC_LOCK))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(name)
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Whether a committed blob exists. Blobs are verified on the way in, so presence is enough.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a small blob (manifest, config) whole, refusing anything over `limit` bytes.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(digest.clone()));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if meta.len() > limit {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        std::fs::read(&path).map_err(|e| StoreError::io(&path, e))
    }

    /// Stores bytes already in memory (manifests, indexes) after checking they hash to `digest`.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = digest.same_algorithm_of(bytes);
        if &actual != digest {
            return Err(StoreError::Verify {
                digest: digest.clone(),
                source: VerifyError::Mismatch {
                    expected: digest.clone(),
                    actual,
                },
            });
        }
        if self.has_blob(digest) {
            return Ok(());
        }
        let dest = self.blob_path(digest);
        self.write_atomically(&dest, bytes)
    }

    /// Writes `bytes` to a temp file beside nothing visible, fsyncs it and renames it to `dest`.
    pub(crate) fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.ingest_dir().join(format!(
            "tmp-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
            f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
            std::fs::rename(&tmp, dest).map_err(|e| StoreError::io(dest, e))?;
            sync_parent(dest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn ensure_layout_file(&self) -> Result<(), StoreError> {
        let path = self.root.join(OCI_LAYOUT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadLayout {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
                    Some(ver) if ver.starts_with("1.") => Ok(()),
                    other => Err(StoreError::BadLayout {
                        path,
                        reason: format!("unsupported imageLayoutVersion {other:?}"),
                    }),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.write_atomically(&path, OCI_LAYOUT_CONTENT.as_bytes())
            }
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }
}

/// Makes a rename durable: the directory entry is only on disk once the directory is synced.
pub(crate) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(parent, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_layout_and_refuses_foreign_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout = std::fs::read_to_string(dir.path().join("oci-layout")).unwrap();
        assert!(layout.contains("\"imageLayoutVersion\":\"1.0.0\""));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.index_path()).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));

        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"9.0"}"#,
        )
        .unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::BadLayout { .. })
        ));
    }

    #[test]
    fn put_blob_verifies_before_anything_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        let wrong = Digest::sha256_of(b"other");
        assert!(matches!(
            store.put_blob(&wrong, b"hello"),
            Err(StoreError::Verify { .. })
        ));
        assert!(!store.has_blob(&wrong));
        store.put_blob(&d, b"hello").unwrap();
        assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
        assert!(matches!(
            store.read_blob(&d, 2),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            store.read_blob(&wrong, 100),
            Err(StoreError::Missing(_))
        ));
        let leftovers = std::fs::read_dir(store.ingest_dir()).unwrap().count();
        assert_eq!(leftovers, 0, "temp files must not be left behind");
    }
}
