//! The layer cache: every layer extracted once, then merged into any number of root filesystems
//! without being decompressed again.
//!
//! ```text
//! ROOT/layers/sha256/<chain-id hex>/diff/       the layer's own changes, whiteout markers kept
//! ROOT/layers/sha256/<chain-id hex>/meta.json   diff_id, blob, deferred hardlinks, sizes
//! ```
//!
//! Entries are keyed by chain ID (the diff_ids of the layer and of every layer below it), so a
//! layer whose hardlinks point into a lower layer is never reused on a different stack. Within
//! one image, a diff_id listed again higher up is cached once, under the chain ID of its lowest
//! position ([`cache_keys`]): an entry depends only on the layer's own tar (it is extracted onto an
//! empty directory; what lower layers matter for is resolved when it is merged), and any image
//! reaching the higher position reaches the lower one too, so garbage collection keeps it as long
//! as it is needed. A manifest listing one blob thousands of times makes one entry.
//!
//! An entry is built in a staging directory, verified against its diff_id and renamed into place
//! with `meta.json` already inside, so a directory under `layers/` is always complete. Like
//! docker's and containerd's extracted layers, entries are not fsynced (flushing a whole extracted
//! tree costs more than the extraction): they are derived from verified blobs and can be rebuilt
//! from them. Extraction writes within the image's expansion budget.
//!
//! Locks: building or removing an entry holds its chain ID's lock exclusively, so concurrent haul
//! processes extract a layer once; merging one holds it shared, so nobody removes an entry being
//! read. Order: a layer's lock before its blob's ingest lock, never the other way round. A pull
//! extracting a download as it arrives claims the layer first (`LayerCache::try_claim`); when
//! someone else holds it, the pull downloads alone and waits for the layer only after the blob
//! is committed (two pulls sharing a layer deadlocked when each held one lock and wanted the
//! other's). Merging reads the cached tree back as a tar stream through the same confined applier,
//! which clones each regular file's data from the cache (`FICLONE`) where the file system shares
//! extents (XFS with reflink, btrfs) and copies it elsewhere: either way nothing in an unpacked
//! rootfs shares an inode with the cache (a clone is a new file; writing to it copies the block
//! written, never changing the cache), and nothing reading the cache changes it. A pull that fails takes back the entries it published that no ref
//! reaches and nobody is using ([`Session`], [`LayerCache::take_back`]).
//!
//! The cache is reached from its store, [`Store::layers`], as a [`LayerCache`]: blocking, like
//! the rest of the store. [`LayerCache::cached`] finds an entry, [`LayerCache::extract`] builds
//! one from a stored blob and [`LayerCache::extract_from`] from a stream (a download as it
//! arrives), [`LayerCache::merge`] applies one onto a root filesystem, [`LayerCache::take_back`]
//! undoes a failed pull's.
//!
//! Inside: this file reads and removes entries and merges them; `keys` computes what they are
//! keyed by, `extract` builds one, `session` publishes it, `take_back` undoes a failed pull's,
//! `check` compares one with its blob.

mod check;
mod extract;
mod keys;
mod session;
mod take_back;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::apply::{ApplyOptions, ApplyStats, CloneSource, DeferredLink, apply_layer_cloning};
use super::dirtar::{tar_cached, tar_cached_by_reference};
use super::image::{UnpackError, UnpackOptions, remove_tree};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::progress::Reporter;
use crate::store::{FileLock, Store};

pub use extract::Extracted;
pub(crate) use extract::LayerClaim;
pub use keys::{cache_keys, chain_ids};
pub use session::{PendingLayer, Session};

const META_FILE: &str = "meta.json";
/// Entries of format 1 built without root may hold files their owner cannot read, which readers
/// used to unlock in place; format 2 keeps them readable and records their modes.
const FORMAT: u32 = 2;
/// How often extraction progress is reported, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const DIFF_DIR: &str = "diff";
/// `meta.json` is a few hundred bytes plus one line per deferred hardlink.
const MAX_META_BYTES: u64 = 64 << 20;

/// What is known about a cached layer (its `meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// What the entry is keyed by ([`cache_keys`]).
    pub chain_id: Digest,
    /// The digest of the layer's uncompressed tar.
    pub diff_id: Digest,
    /// The layer blob it was extracted from.
    pub blob: Digest,
    /// The size of the layer's uncompressed tar.
    pub uncompressed_bytes: u64,
    /// Tar entries applied.
    pub entries: u64,
    /// Hardlinks whose target lives in a lower layer, made when the layer is merged.
    #[serde(default)]
    pub deferred_links: Vec<DeferredLink>,
    /// Whether ownership and devices were applied (a cache built without root lacks them).
    pub privileged: bool,
    /// The layout of the entry; absent (0) before format 2.
    #[serde(default)]
    pub format: u32,
    /// Built without root: files and directories kept readable by their owner in the cache,
    /// with the modes the layer gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<(PathBuf, u32)>,
}

/// A complete cache entry.
#[derive(Debug, Clone)]
pub struct CachedLayer {
    /// The entry's directory, `layers/<algorithm>/<chain ID hex>`.
    pub dir: PathBuf,
    /// What is known about it.
    pub meta: LayerMeta,
}

impl CachedLayer {
    /// The layer's own changes, whiteout markers kept.
    #[must_use]
    pub fn diff_dir(&self) -> PathBuf {
        self.dir.join(DIFF_DIR)
    }

    /// The entry as the layer tar it replays.
    ///
    /// # Errors
    ///
    /// When the entry's tree cannot be read.
    pub fn tar(&self) -> std::io::Result<impl Read + Send + use<>> {
        tar_cached(
            &self.diff_dir(),
            self.meta.deferred_links.clone(),
            self.meta.modes.clone(),
        )
    }
}

/// One layer of an image, with what the cache keys it by.
#[derive(Debug, Clone, Copy)]
pub struct LayerJob<'a> {
    /// The layer's position in the image, bottom first.
    pub index: usize,
    /// The layer blob.
    pub layer: &'a Descriptor,
    /// What its uncompressed tar hashes to (the config's `rootfs.diff_ids`).
    pub diff_id: &'a Digest,
    /// What the cache keys it by ([`cache_keys`]).
    pub chain_id: &'a Digest,
}

/// The layer cache of a store ([`Store::layers`]).
///
/// Blocking, like the store: every method works on the disk (extracting works through a whole
/// layer), so async callers run them on blocking threads.
#[derive(Debug, Clone, Copy)]
pub struct LayerCache<'s> {
    store: &'s Store,
}

impl<'s> LayerCache<'s> {
    /// The layer cache of `store`; see [`Store::layers`].
    pub(crate) fn new(store: &'s Store) -> Self {
        LayerCache { store }
    }
}

impl LayerCache<'_> {
    fn layers_dir(&self) -> PathBuf {
        self.store.root().join("layers")
    }

    fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layer_parent(chain_id).join(chain_id.hex())
    }

    /// The directory holding `chain_id`'s entry and its staging directories.
    fn layer_parent(&self, chain_id: &Digest) -> PathBuf {
        self.layers_dir().join(chain_id.algorithm().name())
    }

    /// The cached layer for `chain_id`, if it is complete and was built with at least the
    /// privileges `options` needs (a cache built rootless lacks ownership a root unpack wants).
    #[must_use]
    pub fn cached(&self, chain_id: &Digest, options: &ApplyOptions) -> Option<CachedLayer> {
        let cached = self.entry(chain_id)?;
        let wants_privilege = options.preserve_ownership || options.allow_devices;
        if wants_privilege && !cached.meta.privileged {
            return None;
        }
        // Built without root by an older haul: may hold files their owner cannot read.
        if !cached.meta.privileged && cached.meta.format < FORMAT {
            return None;
        }
        Some(cached)
    }

    /// The entry under `chain_id` whatever it was built with, if complete.
    pub(crate) fn entry(&self, chain_id: &Digest) -> Option<CachedLayer> {
        let dir = self.layer_dir(chain_id);
        let bytes = self
            .store
            .read_private_file(&dir.join(META_FILE), MAX_META_BYTES)
            .ok()??;
        let meta: LayerMeta = serde_json::from_slice(&bytes).ok()?;
        if &meta.chain_id != chain_id {
            return None;
        }
        Some(CachedLayer { dir, meta })
    }

    /// Extracts one stored layer blob into the cache (once, even across processes) and returns
    /// the published entry.
    ///
    /// # Errors
    ///
    /// [`UnpackError`] when the blob is missing, the layer cannot be extracted (it is not what its
    /// diff_id says, it is hostile, the disk is full), or the session was stopped.
    pub fn extract(
        &self,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: &dyn Reporter,
        session: &Session,
    ) -> Result<CachedLayer, UnpackError> {
        match self.extract_from(
            job,
            options,
            Some(reporter),
            session,
            super::stream::stored_blob(self.store, &job.layer.digest)?,
        )? {
            Extracted::Cached(hit) => Ok(hit),
            Extracted::Pending(pending) => session.publish(pending),
        }
    }

    /// Holds `chain_id`'s entry for reading (merging, verifying): nobody removes or rebuilds it
    /// meanwhile.
    pub(crate) fn read_lock(&self, chain_id: &Digest) -> Result<FileLock, UnpackError> {
        Ok(self.store.lock_shared(&layer_lock_name(chain_id))?)
    }

    /// Removes `chain_id`'s entry, waiting for its readers. Returns whether there was one.
    pub(crate) fn remove(&self, chain_id: &Digest) -> Result<bool, UnpackError> {
        let _lock = self.store.lock_exclusive(&layer_lock_name(chain_id))?;
        self.remove_locked(chain_id)
    }

    /// Moves an entry out of sight in one rename and deletes it. The caller holds its lock.
    fn remove_locked(&self, chain_id: &Digest) -> Result<bool, UnpackError> {
        let dir = self.layer_dir(chain_id);
        let aside = dir.with_file_name(format!(
            ".tmp-{}-{}-{:08x}",
            chain_id.hex(),
            std::process::id(),
            fastrand::u32(..)
        ));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(UnpackError::Io { path: dir, source }),
        }
        remove_tree(&aside).map_err(|source| UnpackError::Io {
            path: aside.clone(),
            source,
        })?;
        Ok(true)
    }

    /// Applies a cached layer onto `root` with the normal layer semantics. The caller holds the
    /// entry's read lock.
    ///
    /// # Errors
    ///
    /// [`UnpackError::Apply`] when the layer cannot be applied onto `root` (index `index` of the
    /// image); [`UnpackError::Io`] when the entry cannot be read.
    pub fn merge(
        &self,
        cached: &CachedLayer,
        root: &Path,
        options: &ApplyOptions,
        index: usize,
    ) -> Result<ApplyStats, UnpackError> {
        let diff = cached.diff_dir();
        let io = |source| UnpackError::Io {
            path: diff.clone(),
            source,
        };
        let files = CloneSource::open(&diff).map_err(io)?;
        let stream = tar_cached_by_reference(
            &diff,
            cached.meta.deferred_links.clone(),
            cached.meta.modes.clone(),
        )
        .map_err(io)?;
        apply_layer_cloning(root, stream, options, files).map_err(|source| UnpackError::Apply {
            index,
            digest: cached.meta.blob.clone(),
            source,
        })
    }
}

/// The name of `chain_id`'s lock under `locks/`: held exclusively while the entry is built or
/// removed, shared while it is read.
fn layer_lock_name(chain_id: &Digest) -> String {
    format!(
        "layer-{}-{}.lock",
        chain_id.algorithm().name(),
        chain_id.hex()
    )
}
