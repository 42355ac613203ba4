//! The local store: an OCI image layout that skopeo, umoci and other OCI tools can read.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
//! ROOT/index.json            one descriptor per ref, named by org.opencontainers.image.ref.name
//! ROOT/blobs/sha256/<hex>    verified content, never modified once there
//! ROOT/ingest/               haul's partial downloads (invisible to OCI readers)
//! ROOT/locks/                flock files that serialise processes
//! ROOT/layers/               the extracted layer cache (see [`crate::unpack::cache`])
//! ROOT/staging/              where unpacks record their staging directories (see [`crate::unpack`])
//! ```
//!
//! [`Store`] is the one handle on all of it. Its methods, by concern:
//! - **opening**: [`Store::open`], [`Store::open_reporting`], [`Store::root`]; [`default_root`]
//!   says where a store goes when the caller names none;
//! - **blobs**: [`Store::has_blob`], [`Store::open_blob`], [`Store::read_blob`],
//!   [`Store::put_blob`] (bytes in memory), [`Store::begin_ingest`] (a stream of known digest:
//!   [`Ingest`]), [`Store::begin_import`] (a stream whose digest its bytes decide: [`Import`]),
//!   [`Store::remove_blob`], [`Store::blob_path`];
//! - **refs** (`index.json`): [`Store::refs`], [`Store::find_ref`], [`Store::set_ref`],
//!   [`Store::remove_ref`], each a [`RefEntry`];
//! - **locks** between processes: [`Store::writer_lock`], [`Store::collector_lock`], each a
//!   [`FileLock`];
//! - **the layer cache**: [`Store::layers`].
//!
//! Every method works on the disk and blocks: async code calls them from a blocking thread
//! (`tokio::task::spawn_blocking`), a whole step at a time rather than a call at a time. The
//! pull feeds an [`Ingest`] that way, a buffer's worth of download per blocking call.
//!
//! Promises: a file under `blobs/` always hashes to its name, because content enters only through
//! [`Ingest`], [`Import`] or [`Store::put_blob`], which verify, fsync and rename into place; one
//! writer per digest at a time, across processes (the digest's lock); a partial download survives
//! a killed process and the next ingest of its digest resumes it; `index.json` is replaced
//! atomically under a lock, so readers never see it torn and concurrent writers never lose each
//! other's refs.
//!
//! The store is private to its owner, like docker's data-root: haul refuses a store another user
//! owns, can write or can replace (module `fs`), makes every directory it creates there 0700 and
//! every file 0600 whatever the umask, and reaches everything below the root through the root's
//! directory fd without following symlinks. An existing store of ours that others can read (an
//! older haul made it 0755) is made private on open and said so ([`Store::open_reporting`]). The
//! extracted layer cache keeps the images' own modes (setuid binaries, 1777 directories): what
//! protects them is that nobody else can enter the store.
//!
//! What a store is: a directory with `oci-layout` (haul's own, or one skopeo or umoci wrote). An
//! absent or empty directory becomes one; a directory of other files is refused
//! ([`StoreError::NotAStore`]) rather than filled with haul's. A store haul cannot write (a
//! read-only mount) opens for reading without writing anything ([`Store::is_read_only`]).

mod error;
mod fs;
mod ingest;
mod layout;
mod lock;
mod ranges;
mod refs;

use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{Digest, VerifyError};
use crate::unpack::cache::LayerCache;

pub use error::StoreError;
pub(crate) use fs::{Entry, StoreDir};
pub use ingest::{Import, Ingest, IngestStart};
use layout::{GC_LOCK, INGEST_DIR};
pub(crate) use layout::{STAGING_DIR, TRASH_DIR};
pub use layout::{Tightened, default_root, tightening_notice};
pub use lock::FileLock;
pub use ranges::RangedPartial;
pub use refs::{REF_NAME_ANNOTATION, RESOLVED_ANNOTATION, RefEntry, SOURCE_ANNOTATION};

/// A handle on a store root. Cheap to clone; holds the root directory open.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use haul::digest::Digest;
/// use haul::store::{IngestStart, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
///
/// // Bytes in memory, checked against their digest.
/// let config = br#"{"architecture":"amd64","os":"linux"}"#;
/// let digest = Digest::sha256_of(config);
/// store.put_blob(&digest, config)?;
/// assert_eq!(store.read_blob(&digest, 1 << 20)?, config);
///
/// // A stream of known digest and size, written as it arrives.
/// let layer = vec![7u8; 3 << 20];
/// let digest = Digest::sha256_of(&layer);
/// if let IngestStart::Writer(mut ingest) = store.begin_ingest(&digest, layer.len() as u64)? {
///     for chunk in layer.chunks(64 << 10) {
///         ingest.write(chunk)?;
///     }
///     ingest.commit()?;
/// }
/// assert!(store.has_blob(&digest));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    dir: Arc<StoreDir>,
}

/// Opening.
impl Store {
    /// Opens the layout at `root`, creating it (mode 0700) when absent or empty. A directory
    /// of other files that is no OCI layout is refused, and so is a store that someone else
    /// could change; one of ours that others could read is made private, with a warning
    /// through `tracing` (see [`Store::open_reporting`]). A store that cannot be written (a
    /// read-only mount) opens without any write, for reading ([`Store::is_read_only`]).
    ///
    /// # Errors
    ///
    /// As [`Store::open_reporting`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let (store, tightened) = Store::open_reporting(root)?;
        if let Some(notice) = tightening_notice(store.root(), &tightened) {
            tracing::warn!("{notice}");
        }
        Ok(store)
    }

    /// Like [`Store::open`], returning what was made private instead of logging it.
    ///
    /// # Errors
    ///
    /// [`StoreError::ForeignOwner`], [`StoreError::WritableByOthers`] or
    /// [`StoreError::ReplaceableParent`] for a store someone else could change;
    /// [`StoreError::Planted`] for something not haul's where the layout has its own files;
    /// [`StoreError::NotAStore`] for a directory that holds other files and no `oci-layout`;
    /// [`StoreError::BadLayout`] for a layout of another version or a corrupt `index.json`;
    /// [`StoreError::ReadOnly`] for a read-only directory that is not a store yet (or lacks
    /// its `index.json`); [`StoreError::Io`] when the disk fails.
    pub fn open_reporting(root: impl Into<PathBuf>) -> Result<(Store, Vec<Tightened>), StoreError> {
        let root = root.into();
        let mut tightened = Vec::new();
        let dir = layout::open_root(&root, &mut tightened)?;
        let store = Store {
            root: dir.path().to_owned(),
            dir: Arc::new(dir),
        };
        // The layout file first: from then on the directory is a store, whatever else the
        // opening adds.
        layout::ensure_layout_file(&store)?;
        layout::ensure_dirs(&store.dir, &mut tightened)?;
        refs::ensure_index(&store)?;
        Ok((store, tightened))
    }

    /// The store's root, as an absolute path.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the store could not be written when it was opened: a read-only mount, an
    /// immutable root, a root its owner made 0500. Reading works (refs, blobs, the layer cache
    /// as it is, so listing, inspecting, saving and unpacking stored images); what needs to
    /// write fails with [`StoreError::ReadOnly`].
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.dir.read_only()
    }
}

/// Blobs.
impl Store {
    /// Whether a committed blob exists. Blobs are verified on the way in, so presence is enough;
    /// anything but a plain file (a planted symlink) is no blob.
    #[must_use]
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.dir
            .stat(&Store::blob_rel(digest))
            .ok()
            .flatten()
            .is_some_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
    }

    /// Where the blob `digest` is (or would be): `ROOT/blobs/<algorithm>/<hex>`. For messages and
    /// for other tools; haul itself opens blobs with [`Store::open_blob`], which follows no
    /// symlink.
    #[must_use]
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(Store::blob_rel(digest))
    }

    /// Opens a committed blob for reading, never through a symlink.
    ///
    /// # Errors
    ///
    /// [`StoreError::Missing`] when it is not there; [`StoreError::Planted`] when something
    /// other than a file is.
    pub fn open_blob(&self, digest: &Digest) -> Result<std::fs::File, StoreError> {
        self.dir
            .open_file(&Store::blob_rel(digest))?
            .ok_or_else(|| StoreError::Missing(digest.clone()))
    }

    /// Reads a small blob (manifest, config) whole, refusing anything over `limit` bytes.
    ///
    /// # Errors
    ///
    /// As [`Store::open_blob`]; [`StoreError::TooLarge`] over `limit`.
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
    ///
    /// # Errors
    ///
    /// [`StoreError::Verify`] when they do not; [`StoreError::Io`] when writing fails.
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

    /// Starts ingesting the blob `digest` of `size` bytes: waits for any other writer of it
    /// first (in this process or another), then continues from a partial file an earlier attempt
    /// left. [`IngestStart::Present`] when the blob is there already, or arrived while waiting.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] or [`StoreError::Planted`] when the lock or the partial file cannot be
    /// opened or read.
    pub fn begin_ingest(&self, digest: &Digest, size: u64) -> Result<IngestStart, StoreError> {
        Ingest::begin(self, digest, size)
    }

    /// Starts writing a blob whose digest (sha256) is what its bytes hash to.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when its file cannot be created.
    pub fn begin_import(&self) -> Result<Import, StoreError> {
        Import::begin(self)
    }

    /// Removes a blob (one found corrupt); an absent one is fine.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when it cannot be removed.
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        self.dir.remove_file(&Store::blob_rel(digest))
    }

    /// `blobs/<algo>/<hex>`, relative to the root.
    fn blob_rel(digest: &Digest) -> PathBuf {
        Path::new("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
}

/// Refs.
impl Store {
    /// Every named image, in index order. Entries without a name (or not written by an OCI tool
    /// in a shape haul understands) are skipped.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadLayout`] when `index.json` is not a JSON object; [`StoreError::Io`]
    /// when it cannot be read.
    pub fn refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        refs::list(self)
    }

    /// The ref named `name` (a full normalised reference), if any.
    ///
    /// # Errors
    ///
    /// As [`Store::refs`].
    pub fn find_ref(&self, name: &str) -> Result<Option<RefEntry>, StoreError> {
        Ok(self.refs()?.into_iter().find(|r| r.name == name))
    }

    /// Adds or replaces the ref named `entry.name`. This is the publishing step of a pull: callers
    /// make sure every blob the manifest reaches is committed first.
    ///
    /// # Errors
    ///
    /// As [`Store::refs`]; nothing is changed then.
    pub fn set_ref(&self, entry: &RefEntry) -> Result<(), StoreError> {
        refs::set(self, entry)
    }

    /// Removes the ref `name`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// As [`Store::refs`]; nothing is changed then.
    pub fn remove_ref(&self, name: &str) -> Result<bool, StoreError> {
        refs::remove(self, name)
    }

    /// `index.json` whole, for those that read more of it than the refs (garbage collection
    /// keeps what other tools named).
    pub(crate) fn read_index(&self) -> Result<serde_json::Value, StoreError> {
        refs::read_index(self)
    }
}

/// Locks between processes.
impl Store {
    /// Held (shared) by every operation that adds content, for its whole duration; garbage
    /// collection takes it exclusively, so it never sweeps blobs a pull has committed but not yet
    /// published a ref for. Blocks while a collection runs.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] or [`StoreError::Planted`] when the lock file cannot be opened.
    pub fn writer_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::shared(self, GC_LOCK)
    }

    /// Taken by garbage collection: waits for running pulls to finish and keeps new ones out.
    ///
    /// # Errors
    ///
    /// As [`Store::writer_lock`].
    pub fn collector_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::exclusive(self, GC_LOCK)
    }

    /// Blocks until the exclusive lock `locks/<name>` is held.
    pub(crate) fn lock_exclusive(&self, name: &str) -> Result<FileLock, StoreError> {
        FileLock::exclusive(self, name)
    }

    /// Blocks until a shared lock `locks/<name>` is held, for reading what the lock guards. In
    /// a read-only store the lock may be held on nothing (see [`FileLock`]).
    pub(crate) fn lock_shared(&self, name: &str) -> Result<FileLock, StoreError> {
        FileLock::shared_for_reading(self, name)
    }

    /// [`Store::writer_lock`] for an operation that only reads the store when it is read-only
    /// (an unpack of a stored image): the same lock where the store can be written, and in a
    /// read-only store the lock file as it is, or none (see [`FileLock`]).
    pub(crate) fn reader_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::shared_for_reading(self, GC_LOCK)
    }

    /// The exclusive lock `locks/<name>` if nobody holds it now.
    pub(crate) fn try_lock_exclusive(&self, name: &str) -> Result<Option<FileLock>, StoreError> {
        FileLock::try_exclusive(self, name)
    }
}

/// The layer cache.
impl Store {
    /// The layer cache of this store: every layer extracted once, merged from there into root
    /// filesystems.
    #[must_use]
    pub fn layers(&self) -> LayerCache<'_> {
        LayerCache::new(self)
    }
}

/// Files of the store, for the modules that keep their own there (the layer cache, garbage
/// collection). Every path is one of this store's, reached through the root's fd without
/// following symlinks.
impl Store {
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

    /// Renames `from` to `to`, both in this store, without making the rename durable: for the
    /// layer cache, whose extracted files are not fsynced either (a crash may lose an entry or
    /// part of its contents; `haul verify` finds such an entry and extracts it again from its
    /// verified blob). A directory fsync per layer made 40 journal commits in a 40-layer pull and
    /// made none of that durable.
    pub(crate) fn rename_into_place(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        self.dir.rename(self.rel(from)?, self.rel(to)?)
    }

    /// Makes every blob this store committed durable under its name. Committing writes
    /// and fsyncs the content at once but leaves the directory entry to this call, which writing
    /// a ref (`index.json`) makes first, with the blob directory's entries that other processes
    /// committed: a ref never outlives, in a crash, a blob it names. Library callers that commit
    /// blobs without writing a ref call it when they need them to survive a crash; dropping the
    /// store does too.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when a directory cannot be synced (it stays owed).
    pub fn sync(&self) -> Result<(), StoreError> {
        let blobs = Path::new("blobs");
        let every_algorithm = self
            .dir
            .list(blobs)?
            .into_iter()
            .filter(Entry::is_dir)
            .map(|e| blobs.join(e.name));
        self.dir.sync_deferred(every_algorithm)
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

    #[cfg(test)]
    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join(INGEST_DIR)
    }

    #[cfg(test)]
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(layout::INDEX_FILE)
    }
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
