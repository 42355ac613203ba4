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
//!
//! The store is private to its owner, like docker's data-root: haul refuses a store another user
//! owns, can write or can replace (module `fs`), makes every directory it creates there 0700 and
//! every file 0600 whatever the umask, and reaches everything below the root through the root's
//! directory fd without following symlinks. An existing store of ours that others can read (an
//! older haul made it 0755) is made private on open and said so ([`Store::open_reporting`]). The
//! extracted layer cache keeps the images' own modes (setuid binaries, 1777 directories): what
//! protects them is that nobody else can enter the store.

mod fs;
pub mod ingest;
pub mod lock;
pub mod refs;

use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{Digest, VerifyError};

pub(crate) use fs::{Entry, StoreDir};
pub use ingest::{Import, Ingest, IngestStart};
pub use lock::FileLock;
pub use refs::RefEntry;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const INGEST_DIR: &str = "ingest";
const LOCKS_DIR: &str = "locks";
/// Where a prune moves what it is deleting.
pub(crate) const TRASH_DIR: &str = "trash";
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
    /// Someone else owns the store (or a directory in it): whatever they put there, haul would
    /// trust.
    #[error(
        "{path} belongs to uid {owner} (mode {mode:04o}), not to you (uid {you}), and whoever \
         owns the store decides what haul would trust; use a store of your own, or, if you trust \
         its content, take it over with `chown -R {you} {store}`"
    )]
    ForeignOwner {
        store: PathBuf,
        path: PathBuf,
        owner: u32,
        mode: u32,
        you: u32,
    },
    /// Group or others may write in the store: its content cannot be trusted.
    #[error(
        "{path} is mode {mode:04o} (owner uid {owner}): other users can write in the store, so \
         its content cannot be trusted; if nobody else did, run `chmod -R go-w {store}` (haul \
         then makes it private), else remove the store"
    )]
    WritableByOthers {
        store: PathBuf,
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A directory on the way to the store lets another user swap the store for their own.
    #[error(
        "{dir} (owner uid {owner}, mode {mode:04o}) lets another user replace the store at \
         {store} with their own; put the store under directories only you or root can write"
    )]
    ReplaceableParent {
        store: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// Something that is not haul's own file or directory where haul keeps one: never followed,
    /// written through or removed.
    #[error(
        "{path} is a {found} where haul keeps its own file or directory; haul neither follows nor \
         removes it. Something other than haul changed the store: look at it, remove it, and run \
         `haul verify`"
    )]
    Planted { path: PathBuf, found: &'static str },
    /// No store was named and there is no private place to put one (see [`default_root`]).
    #[error(
        "no store location: neither HOME nor XDG_DATA_HOME is set, and haul does not fall back \
         to a shared temporary directory, where another user could have prepared the store"
    )]
    NoDefaultRoot,
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Where the store is when the caller names none: `$HAUL_ROOT`, then `/var/lib/haul` for root,
/// then `$XDG_DATA_HOME/haul` (`~/.local/share/haul`) for others. Without HOME or XDG_DATA_HOME
/// there is no private default: a store in a shared temp dir could be pre-created by anyone, with
/// forged content (layer-cache keys are public), so that is [`StoreError::NoDefaultRoot`] rather
/// than a fallback.
pub fn default_root() -> Result<PathBuf, StoreError> {
    if let Some(root) = std::env::var_os("HAUL_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/haul"));
    }
    // The XDG spec says to ignore relative paths in these variables.
    let absolute = |p: PathBuf| p.is_absolute().then_some(p);
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .and_then(absolute)
                .map(|h| h.join(".local/share"))
        })
        .map(|data| data.join("haul"))
        .ok_or(StoreError::NoDefaultRoot)
}

/// A mode haul changed to make an existing store private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

/// One line telling the owner that an existing store was made private; `None` when nothing was.
pub fn tightening_notice(root: &Path, tightened: &[Tightened]) -> Option<String> {
    let first = tightened.first()?;
    let what = if first.path == root {
        "it".to_owned()
    } else {
        first.path.display().to_string()
    };
    let n = tightened.len();
    Some(format!(
        "the store at {} could be read by other users ({what} was mode {:04o}); haul made it \
         private: {n} {} now owner-only",
        root.display(),
        first.from,
        if n == 1 {
            "directory or file is"
        } else {
            "directories and files are"
        },
    ))
}

/// Directories every store has.
const STORE_DIRS: [&str; 4] = ["blobs", "blobs/sha256", "ingest", "locks"];

/// A handle on a store root. Cheap to clone; holds the root directory open.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    dir: Arc<StoreDir>,
}

impl Store {
    /// Opens the layout at `root`, creating it (mode 0700) when absent. A store that someone
    /// else could change is refused; one of ours that others could read is made private, with a
    /// warning through `tracing` (see [`Store::open_reporting`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let (store, tightened) = Store::open_reporting(root)?;
        if let Some(notice) = tightening_notice(store.root(), &tightened) {
            tracing::warn!("{notice}");
        }
        Ok(store)
    }

    /// Like [`Store::open`], returning what was made private instead of logging it.
    pub fn open_reporting(root: impl Into<PathBuf>) -> Result<(Store, Vec<Tightened>), StoreError> {
        let root = root.into();
        let mut tightened = Vec::new();
        let dir = StoreDir::open(&root, &mut tightened)?;
        for rel in STORE_DIRS {
            dir.ensure_dir(Path::new(rel), &mut tightened)?;
        }
        // What haul (or another digest algorithm) added since.
        for top in ["blobs", "layers"] {
            dir.check_existing_dir(Path::new(top), &mut tightened)?;
            for entry in dir.list(Path::new(top))? {
                if entry.is_dir() {
                    dir.check_existing_dir(&Path::new(top).join(&entry.name), &mut tightened)?;
                }
            }
        }
        dir.check_existing_dir(Path::new(TRASH_DIR), &mut tightened)?;
        if !tightened.is_empty() {
            tighten_files(&dir, &mut tightened)?;
        }
        let store = Store {
            root: dir.path().to_owned(),
            dir: Arc::new(dir),
        };
        store.ensure_layout_file()?;
        store.ensure_index()?;
        Ok((store, tightened))
    }

    /// The store's root, as an absolute path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self) -> &StoreDir {
        &self.dir
    }

    /// `path` (one of this store's paths, as [`Store::blob_path`] gives) relative to the root.
    fn rel<'a>(&self, path: &'a Path) -> Result<&'a Path, StoreError> {
        path.strip_prefix(&self.root).map_err(|_| {
            StoreError::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not inside the store"),
            )
        })
    }

    /// Creates the directory `path` of this store and its missing parents, mode 0700.
    pub(crate) fn create_private_dir(&self, path: &Path) -> Result<(), StoreError> {
        self.dir.create_dir(self.rel(path)?).map(drop)
    }

    /// Writes the new file `path` of this store (mode 0600; nothing may be there yet).
    pub(crate) fn write_private_file(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let mut file = self.dir.create_new(self.rel(path)?)?;
        file.write_all(bytes).map_err(|e| StoreError::io(path, e))
    }

    /// Reads the small file `path` of this store whole; `None` when absent.
    pub(crate) fn read_private_file(
        &self,
        path: &Path,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = self.dir.open_file(self.rel(path)?)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(path, e))?;
        Ok(Some(bytes))
    }

    /// Renames `from` to `to`, both in this store, and makes it durable.
    pub(crate) fn rename_durably(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        let to_rel = self.rel(to)?;
        self.dir.rename(self.rel(from)?, to_rel)?;
        self.dir.sync_dir(to_rel.parent().unwrap_or(Path::new("")))
    }

    /// Held (shared) by every operation that adds content, for its whole duration; garbage
    /// collection takes it exclusively, so it never sweeps blobs a pull has committed but not yet
    /// published a ref for.
    pub fn writer_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::shared(self, GC_LOCK)
    }

    /// Taken by garbage collection: waits for running pulls to finish and keeps new ones out.
    pub fn collector_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::exclusive(self, GC_LOCK)
    }

    /// Blocks until the exclusive lock `locks/<name>` is held. Run it off the async runtime.
    pub(crate) fn lock_exclusive(&self, name: &str) -> Result<FileLock, StoreError> {
        FileLock::exclusive(self, name)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// `blobs/<algo>/<hex>`, relative to the root.
    fn blob_rel(digest: &Digest) -> PathBuf {
        Path::new("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    #[cfg(test)]
    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join(INGEST_DIR)
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join(LOCKS_DIR).join(name)
    }

    #[cfg(test)]
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// Whether a committed blob exists. Blobs are verified on the way in, so presence is enough;
    /// anything but a plain file (a planted symlink) is no blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.dir
            .stat(&Store::blob_rel(digest))
            .ok()
            .flatten()
            .is_some_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
    }

    /// Opens a committed blob for reading, never through a symlink.
    pub fn open_blob(&self, digest: &Digest) -> Result<std::fs::File, StoreError> {
        self.dir
            .open_file(&Store::blob_rel(digest))?
            .ok_or_else(|| StoreError::Missing(digest.clone()))
    }

    /// Removes a blob (one found corrupt); an absent one is fine.
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        self.dir.remove_file(&Store::blob_rel(digest))
    }

    /// Reads a small blob (manifest, config) whole, refusing anything over `limit` bytes.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let mut file = self.open_blob(digest)?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len > limit {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(bytes)
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
        let dest = Store::blob_rel(digest);
        // Another algorithm's directory (a sha512 manifest) is made by its first blob.
        self.dir
            .create_dir(dest.parent().unwrap_or(Path::new("")))?;
        self.write_atomically(&dest, bytes)
    }

    /// Writes `bytes` to a new temp file under `ingest/`, fsyncs it and renames it to `dest`
    /// (relative to the root), replacing whatever name was there without following it.
    pub(crate) fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = Path::new(INGEST_DIR).join(format!(
            "tmp-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let full_tmp = self.root.join(&tmp);
        let mut f = self.dir.create_new(&tmp)?;
        let result = (|| {
            f.write_all(bytes)
                .map_err(|e| StoreError::io(&full_tmp, e))?;
            f.sync_all().map_err(|e| StoreError::io(&full_tmp, e))?;
            self.dir.rename(&tmp, dest)?;
            self.dir.sync_dir(dest.parent().unwrap_or(Path::new("")))
        })();
        if result.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        result
    }

    fn ensure_layout_file(&self) -> Result<(), StoreError> {
        let path = self.root.join(OCI_LAYOUT_FILE);
        // A layout file is a few dozen bytes; more is not one.
        let Some(bytes) = self.read_private_file(&path, 64 << 10)? else {
            return self
                .write_atomically(Path::new(OCI_LAYOUT_FILE), OCI_LAYOUT_CONTENT.as_bytes());
        };
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
}

/// Makes files an older haul left readable by others owner-only: blobs, partial downloads, lock
/// files, the index and the layer cache's own metadata (not the layers' trees, which keep the
/// image's modes).
fn tighten_files(dir: &StoreDir, tightened: &mut Vec<Tightened>) -> Result<(), StoreError> {
    let mut flat = vec![PathBuf::from(INGEST_DIR), PathBuf::from(LOCKS_DIR)];
    for algo in dir.list(Path::new("blobs"))? {
        if algo.is_dir() {
            flat.push(Path::new("blobs").join(&algo.name));
        }
    }
    for rel in flat {
        for entry in dir.list(&rel)? {
            if entry.is_file() {
                dir.tighten_file(&rel.join(&entry.name), tightened)?;
            }
        }
    }
    for name in [INDEX_FILE, OCI_LAYOUT_FILE] {
        dir.tighten_file(Path::new(name), tightened)?;
    }
    for algo in dir.list(Path::new("layers"))? {
        if !algo.is_dir() {
            continue;
        }
        let algo_rel = Path::new("layers").join(&algo.name);
        for layer in dir.list(&algo_rel)? {
            if layer.is_dir() {
                let rel = algo_rel.join(&layer.name);
                dir.check_existing_dir(&rel, tightened)?;
                dir.tighten_file(&rel.join("meta.json"), tightened)?;
            }
        }
    }
    Ok(())
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
