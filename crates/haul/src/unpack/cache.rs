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
//! from them. Extraction writes within an [`ImageBudget`](super::budget::ImageBudget).
//!
//! Locks: building or removing an entry holds its chain ID's lock exclusively, so concurrent haul
//! processes extract a layer once; merging one holds it shared, so nobody removes an entry being
//! read. Merging reads the cached tree back as a tar stream through the same confined applier,
//! copying every file: nothing in an unpacked rootfs shares an inode with the cache, and nothing
//! reading the cache changes it. A pull that fails takes back the entries it published that no ref
//! reaches and nobody is using ([`Session`], [`Store::take_back`]).
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

use super::apply::{ApplyOptions, ApplyStats, DeferredLink, apply_layer};
use super::dirtar::tar_cached;
use super::image::{UnpackError, UnpackOptions, remove_tree};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::progress::Reporter;
use crate::store::{FileLock, Store};

pub use extract::Extracted;
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

/// What is known about a cached layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub blob: Digest,
    pub uncompressed_bytes: u64,
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
    pub dir: PathBuf,
    pub meta: LayerMeta,
}

impl CachedLayer {
    pub fn diff_dir(&self) -> PathBuf {
        self.dir.join(DIFF_DIR)
    }

    /// The entry as the layer tar it replays.
    pub fn tar(&self) -> std::io::Result<impl Read + Send + use<>> {
        tar_cached(
            &self.diff_dir(),
            self.meta.deferred_links.clone(),
            self.meta.modes.clone(),
        )
    }
}

/// One layer of an image, with what the cache keys it by.
pub struct LayerJob<'a> {
    pub index: usize,
    pub layer: &'a Descriptor,
    pub diff_id: &'a Digest,
    pub chain_id: &'a Digest,
}

impl Store {
    fn layers_dir(&self) -> PathBuf {
        self.root().join("layers")
    }

    fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layers_dir()
            .join(chain_id.algorithm().name())
            .join(chain_id.hex())
    }

    /// The cached layer for `chain_id`, if it is complete and was built with at least the
    /// privileges `options` needs (a cache built rootless lacks ownership a root unpack wants).
    pub fn cached_layer(&self, chain_id: &Digest, options: &ApplyOptions) -> Option<CachedLayer> {
        let cached = self.cached_entry(chain_id)?;
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
    pub(crate) fn cached_entry(&self, chain_id: &Digest) -> Option<CachedLayer> {
        let dir = self.layer_dir(chain_id);
        let bytes = self
            .read_private_file(&dir.join(META_FILE), MAX_META_BYTES)
            .ok()??;
        let meta: LayerMeta = serde_json::from_slice(&bytes).ok()?;
        if &meta.chain_id != chain_id {
            return None;
        }
        Some(CachedLayer { dir, meta })
    }

    /// Extracts one layer blob into the cache (once, even across processes) and returns it.
    pub fn cache_layer(
        &self,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: &dyn Reporter,
        session: &Session,
    ) -> Result<CachedLayer, UnpackError> {
        let file = self.open_blob(&job.layer.digest)?;
        match self.extract_layer(job, options, Some(reporter), session, Box::new(file))? {
            Extracted::Cached(hit) => Ok(hit),
            Extracted::Pending(pending) => session.publish(pending),
        }
    }

    /// Holds `chain_id`'s entry for reading (merging, verifying): nobody removes or rebuilds it
    /// meanwhile.
    pub(crate) fn read_lock(&self, chain_id: &Digest) -> Result<FileLock, UnpackError> {
        Ok(FileLock::shared(self, &layer_lock_name(chain_id))?)
    }

    /// Removes `chain_id`'s entry, waiting for its readers. Returns whether there was one.
    pub(crate) fn drop_cached_layer(&self, chain_id: &Digest) -> Result<bool, UnpackError> {
        let _lock = self.lock_exclusive(&layer_lock_name(chain_id))?;
        self.remove_entry(chain_id)
    }

    /// Moves an entry out of sight in one rename and deletes it. The caller holds its lock.
    fn remove_entry(&self, chain_id: &Digest) -> Result<bool, UnpackError> {
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
    pub fn merge_layer(
        &self,
        cached: &CachedLayer,
        root: &Path,
        options: &ApplyOptions,
        index: usize,
    ) -> Result<ApplyStats, UnpackError> {
        let diff = cached.diff_dir();
        let stream = cached.tar().map_err(|source| UnpackError::Io {
            path: diff.clone(),
            source,
        })?;
        apply_layer(root, stream, options).map_err(|source| UnpackError::Apply {
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
