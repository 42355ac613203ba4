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

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::apply::{
    ApplyOptions, ApplyStats, DeferredLink, apply_layer, apply_layer_for_cache_within,
};
use super::budget::{ImageBudget, LayerBudget};
use super::compare::{Alteration, Change, Compare, first_difference};
use super::dirtar::tar_cached;
use super::image::{UnpackError, UnpackOptions, remove_tree};
use super::stream::{Compression, StreamError, decompress};
use crate::digest::{Digest, Hasher};
use crate::manifest::{self, Descriptor, ImageConfig, Manifest};
use crate::progress::{Event, LayerStatus, Reporter};
use crate::store::{FileLock, Store, StoreError};

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

/// What [`Store::extract_layer`] produced.
pub enum Extracted {
    /// Already in the cache (perhaps built by another process meanwhile).
    Cached(CachedLayer),
    /// Extracted and verified, not yet visible.
    Pending(PendingLayer),
}

/// An extracted, verified layer in its staging directory, holding the layer's lock.
pub struct PendingLayer {
    store: Store,
    staging: PathBuf,
    final_dir: PathBuf,
    meta: Option<LayerMeta>,
    published: bool,
    _lock: FileLock,
    /// Declared after the lock and dropped after `Drop::drop` removed the staging directory.
    _active: Active,
}

impl PendingLayer {
    /// Makes the entry visible under its chain ID.
    fn publish(mut self) -> Result<CachedLayer, UnpackError> {
        let meta = self.meta.take().ok_or_else(|| UnpackError::Io {
            path: self.staging.clone(),
            source: std::io::Error::other("layer entry published twice"),
        })?;
        self.store.rename_durably(&self.staging, &self.final_dir)?;
        self.published = true;
        Ok(CachedLayer {
            dir: self.final_dir.clone(),
            meta,
        })
    }
}

impl Drop for PendingLayer {
    fn drop(&mut self) {
        if !self.published {
            let _ = remove_tree(&self.staging);
        }
    }
}

/// What one image's extractions share: the budget they write within and, for a pull, the
/// entries they published, so that a pull that fails can take them back. Once stopped, its
/// extractions still running fail at their next read and publish nothing.
#[derive(Clone, Debug)]
pub struct Session {
    budget: Arc<ImageBudget>,
    state: Arc<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    stopped: AtomicBool,
    published: Mutex<Vec<Digest>>,
    /// Extractions under way (staging directories that exist), and a signal when one ends.
    active: Mutex<usize>,
    idle: Condvar,
}

/// One extraction of a session under way; its staging directory is gone when this drops.
#[derive(Debug)]
struct Active(Arc<SessionState>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut active = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = active.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

impl Session {
    pub fn new(budget: ImageBudget) -> Self {
        Session {
            budget: Arc::new(budget),
            state: Arc::default(),
        }
    }

    pub fn budget(&self) -> &Arc<ImageBudget> {
        &self.budget
    }

    pub fn is_stopped(&self) -> bool {
        self.state.stopped.load(Ordering::Relaxed)
    }

    /// Makes `pending` visible unless the session was stopped (then its staging directory goes).
    pub fn publish(&self, pending: PendingLayer) -> Result<CachedLayer, UnpackError> {
        let mut published = self
            .state
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_stopped() {
            return Err(UnpackError::Stopped);
        }
        let cached = pending.publish()?;
        published.push(cached.meta.chain_id.clone());
        Ok(cached)
    }

    /// Stops the session: nothing more is published. Returns the chain IDs it published.
    pub fn stop(&self) -> Vec<Digest> {
        let mut published = self
            .state
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.state.stopped.store(true, Ordering::Relaxed);
        std::mem::take(&mut *published)
    }

    /// Waits (blocking) until no extraction of the session is under way, at most `patience`:
    /// a stopped extraction ends at its next read and removes its staging directory.
    pub fn wait_idle(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        while *active > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    extractions = *active,
                    "extractions still running after the pull failed"
                );
                return;
            }
            active = match self.state.idle.wait_timeout(active, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn enter(&self) -> Active {
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        *active += 1;
        Active(self.state.clone())
    }
}

/// The key each layer of a stack is cached under, bottom first: its chain ID, or for a diff_id
/// listed lower in the same stack already, the key of its lowest position (see the module
/// documentation for why that is safe).
pub fn cache_keys(diff_ids: &[Digest]) -> Vec<Digest> {
    let chains = chain_ids(diff_ids);
    let mut first: HashMap<&Digest, usize> = HashMap::new();
    diff_ids
        .iter()
        .enumerate()
        .map(|(i, diff_id)| chains[*first.entry(diff_id).or_insert(i)].clone())
        .collect()
}

/// The chain IDs of a stack of diff_ids, bottom first (OCI image-spec's definition).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let mut h = Hasher::new(diff_id.algorithm());
                h.update(format!("{parent} {diff_id}").as_bytes());
                h.finish()
            }
        };
        out.push(next);
    }
    out
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

    /// Compares `cached` (the entry of `job.chain_id`, which the caller holds with
    /// [`read_lock`](Store::read_lock)) with a fresh extraction of the layer's blob, which the
    /// caller has verified. Returns the first difference. The extraction runs beside the entry
    /// with the privileges the entry was built with (the caller skips a privileged entry when it
    /// has none) and is removed after.
    pub(crate) fn check_cached_layer(
        &self,
        job: &LayerJob<'_>,
        cached: &CachedLayer,
    ) -> Result<Option<Alteration>, UnpackError> {
        let privileged = cached.meta.privileged;
        let options = UnpackOptions {
            apply: ApplyOptions {
                preserve_ownership: privileged,
                allow_devices: privileged,
                xattrs: true,
            },
            ..UnpackOptions::for_current_user()
        };
        let final_dir = self.layer_dir(job.chain_id);
        let staging = final_dir.with_file_name(format!(
            ".tmp-{}-{}-{:08x}",
            job.chain_id.hex(),
            std::process::id(),
            fastrand::u32(..)
        ));
        let _cleanup = RemoveOnDrop(staging.clone());
        // 0700 until the layer's own `.` entry, if any, gives it a mode (as in `extract_layer`).
        self.create_private_dir(&staging.join(DIFF_DIR))?;
        let file = self.open_blob(&job.layer.digest)?;
        let session = Session::new(ImageBudget::new(&options, job.layer.size, self.root(), 0));
        let meta = match self.build_entry(&staging, job, &options, None, &session, Box::new(file)) {
            Ok(meta) => meta,
            Err(e) => {
                return Ok(Some(Alteration {
                    path: PathBuf::new(),
                    change: Change::Unverifiable(e.to_string()),
                }));
            }
        };
        if meta.diff_id != cached.meta.diff_id || meta.deferred_links != cached.meta.deferred_links
        {
            return Ok(Some(Alteration {
                path: PathBuf::new(),
                change: Change::Metadata,
            }));
        }
        let fresh = CachedLayer {
            dir: staging.clone(),
            meta,
        };
        let layer = fresh.tar().map_err(|source| UnpackError::Io {
            path: staging.clone(),
            source,
        })?;
        let found = match cached.tar() {
            Ok(stream) => stream,
            Err(e) => {
                return Ok(Some(Alteration {
                    path: PathBuf::new(),
                    change: Change::Unreadable(e.to_string()),
                }));
            }
        };
        let how = Compare {
            owners: privileged,
            all_xattrs: privileged == rustix::process::geteuid().is_root(),
        };
        first_difference(layer, found, how).map_err(|source| UnpackError::Io {
            path: staging.clone(),
            source,
        })
    }

    /// Takes back entries a failed pull published (`chain_ids`): each one no ref reaches and
    /// nobody holds is removed; the others stay (another pull or an unpack may be using them, and
    /// a prune collects them once unused). Nothing is removed when the refs cannot be read.
    /// Returns the chain IDs removed.
    pub fn take_back(&self, chain_ids: &[Digest]) -> Vec<Digest> {
        // Locked first, so no reader starts on them while the refs are read.
        let mut held: Vec<(&Digest, FileLock)> = Vec::new();
        for chain_id in chain_ids {
            if let Ok(Some(lock)) = FileLock::try_exclusive(self, &layer_lock_name(chain_id)) {
                held.push((chain_id, lock));
            }
        }
        if held.is_empty() {
            return Vec::new();
        }
        let reachable = match self.reachable_layers() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot tell which layer-cache entries refs reach, keeping them: {e}"
                );
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for (chain_id, _lock) in held {
            if reachable.contains(chain_id) {
                continue;
            }
            match self.remove_entry(chain_id) {
                Ok(true) => removed.push(chain_id.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(%chain_id, "cannot remove a layer-cache entry: {e}"),
            }
        }
        removed
    }

    /// Every layer-cache key the refs' images use (chain IDs and [`cache_keys`]).
    fn reachable_layers(&self) -> Result<HashSet<Digest>, UnpackError> {
        let mut out = HashSet::new();
        let mut seen = HashSet::new();
        let mut todo: Vec<(Descriptor, usize)> =
            self.refs()?.into_iter().map(|r| (r.manifest, 0)).collect();
        while let Some((descriptor, depth)) = todo.pop() {
            if depth > 4 || !seen.insert(descriptor.digest.clone()) {
                continue;
            }
            let bytes =
                match self.read_blob(&descriptor.digest, manifest::MAX_MANIFEST_BYTES as u64) {
                    Ok(b) => b,
                    // An index child another tool did not store.
                    Err(StoreError::Missing(_)) if depth > 0 => continue,
                    Err(e) => return Err(e.into()),
                };
            let bad = |source| UnpackError::Manifest {
                reference: descriptor.digest.to_string(),
                source,
            };
            match manifest::parse(Some(&descriptor.media_type), &bytes).map_err(bad)? {
                Manifest::Index(index) => {
                    todo.extend(index.manifests.into_iter().map(|m| (m, depth + 1)));
                }
                Manifest::Image(image) => {
                    let config =
                        self.read_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
                    let config = ImageConfig::parse(&config).map_err(bad)?;
                    out.extend(chain_ids(&config.rootfs.diff_ids));
                    out.extend(cache_keys(&config.rootfs.diff_ids));
                }
            }
        }
        Ok(out)
    }

    /// Extracts a layer from its compressed bytes (`compressed`: the stored blob, or the download
    /// as it arrives) into a staging directory, verified against its diff_id. The entry becomes
    /// visible only through [`PendingLayer::publish`], which the caller calls once the blob itself
    /// is verified; dropping it removes the staging directory. `reporter` gets `Extracting`
    /// progress when given.
    pub fn extract_layer(
        &self,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn Read + Send>,
    ) -> Result<Extracted, UnpackError> {
        let chain_id = job.chain_id;
        if let Some(hit) = self.cached_layer(chain_id, &options.apply) {
            return Ok(Extracted::Cached(hit));
        }
        let final_dir = self.layer_dir(chain_id);
        let parent = final_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.layers_dir());
        self.create_private_dir(&parent)?;
        let lock = self.lock_exclusive(&layer_lock_name(chain_id))?;
        if let Some(hit) = self.cached_layer(chain_id, &options.apply) {
            return Ok(Extracted::Cached(hit));
        }
        // A stale entry (built with fewer privileges, or unreadable) is rebuilt.
        remove_tree(&final_dir).map_err(|source| UnpackError::Io {
            path: final_dir.clone(),
            source,
        })?;
        // Staging directories of this chain ID left by a killed or interrupted process: nobody
        // else can be building one while we hold its lock.
        let stale_prefix = format!(".tmp-{}-", chain_id.hex());
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&stale_prefix))
                {
                    let _ = remove_tree(&entry.path());
                }
            }
        }
        let staging = parent.join(format!(
            ".tmp-{}-{}-{:08x}",
            chain_id.hex(),
            std::process::id(),
            fastrand::u32(..)
        ));
        let mut pending = PendingLayer {
            store: self.clone(),
            staging,
            final_dir,
            meta: None,
            published: false,
            _lock: lock,
            _active: session.enter(),
        };
        // 0700 until the layer's own `.` entry, if any, gives it a mode.
        self.create_private_dir(&pending.staging.join(DIFF_DIR))?;
        let meta = self.build_entry(
            &pending.staging,
            job,
            options,
            reporter,
            session,
            compressed,
        )?;
        pending.meta = Some(meta);
        Ok(Extracted::Pending(pending))
    }

    fn build_entry(
        &self,
        staging: &Path,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn Read + Send>,
    ) -> Result<LayerMeta, UnpackError> {
        let (index, layer, diff_id) = (job.index, job.layer, job.diff_id);
        let diff = staging.join(DIFF_DIR);
        let digest = &layer.digest;
        let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
            UnpackError::UnsupportedCompression {
                index,
                digest: digest.clone(),
                media_type: layer.media_type.clone(),
            }
        })?;
        let report = |current: u64| {
            if let Some(r) = reporter {
                r.report(Event::Layer {
                    digest: digest.clone(),
                    status: LayerStatus::Extracting {
                        current,
                        total: layer.size,
                    },
                });
            }
        };
        report(0);
        let blob = self.blob_path(digest);
        let mut budget = LayerBudget::new(session.budget().clone(), options, layer.size);
        let limit = budget.stream_limit();
        let (stream, consumed) = decompress(compressed, compression, diff_id.algorithm(), limit)
            .map_err(|source| UnpackError::Io {
                path: blob.clone(),
                source,
            })?;
        let mut reader = Reporting {
            inner: stream,
            consumed,
            total: layer.size,
            digest,
            reporter,
            last: Instant::now(),
            session,
        };
        let applied = apply_layer_for_cache_within(&diff, &mut reader, &options.apply, &mut budget);
        if session.is_stopped() {
            return Err(UnpackError::Stopped);
        }
        let stream_error = |source| UnpackError::Stream {
            index,
            digest: digest.clone(),
            source,
        };
        if let Some(limit) = reader.inner.too_large() {
            return Err(stream_error(StreamError::TooLarge { limit }));
        }
        let applied: ApplyStats = applied.map_err(|source| UnpackError::Apply {
            index,
            digest: digest.clone(),
            source,
        })?;
        let uncompressed_bytes = reader
            .inner
            .finish(diff_id)
            .map_err(|source| UnpackError::Io {
                path: blob.clone(),
                source,
            })?
            .map_err(stream_error)?;
        let meta = LayerMeta {
            chain_id: job.chain_id.clone(),
            diff_id: diff_id.clone(),
            blob: digest.clone(),
            uncompressed_bytes,
            entries: applied.entries,
            deferred_links: applied.deferred_links,
            privileged: options.apply.preserve_ownership || options.apply.allow_devices,
            format: FORMAT,
            modes: applied.modes,
        };
        let meta_path = staging.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| UnpackError::Io {
            path: meta_path.clone(),
            source: std::io::Error::other(e),
        })?;
        self.write_private_file(&meta_path, &bytes)?;
        report(layer.size);
        for w in applied.warnings {
            tracing::warn!(layer = %digest, "{w}");
        }
        budget.keep();
        Ok(meta)
    }

    /// Applies a cached layer onto `root` with the normal layer semantics. The caller holds the
    /// entry's [`read_lock`](Store::read_lock).
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

/// Reports `Extracting` progress (compressed bytes consumed) while the applier reads, and stops
/// the extraction once its session is.
struct Reporting<'a, R> {
    inner: R,
    consumed: Arc<AtomicU64>,
    total: u64,
    digest: &'a Digest,
    reporter: Option<&'a dyn Reporter>,
    last: Instant,
    session: &'a Session,
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.session.is_stopped() {
            return Err(std::io::Error::other("the pull stopped"));
        }
        let n = self.inner.read(buf)?;
        if let Some(reporter) = self.reporter
            && self.last.elapsed() >= PROGRESS_INTERVAL
        {
            self.last = Instant::now();
            reporter.report(Event::Layer {
                digest: self.digest.clone(),
                status: LayerStatus::Extracting {
                    current: self.consumed.load(Ordering::Relaxed).min(self.total),
                    total: self.total,
                },
            });
        }
        Ok(n)
    }
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_id_listed_again_is_cached_under_its_lowest_position() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let stack = [a.clone(), b.clone(), a.clone(), a.clone(), b.clone()];
        let chains = chain_ids(&stack);
        let keys = cache_keys(&stack);
        assert_eq!(
            keys,
            vec![
                chains[0].clone(),
                chains[1].clone(),
                chains[0].clone(),
                chains[0].clone(),
                chains[1].clone()
            ]
        );
        // Without repeats the keys are the chain IDs.
        assert_eq!(cache_keys(&stack[..2]), chain_ids(&stack[..2]));
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let c = Digest::sha256_of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = Digest::sha256_of(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(ids[2], Digest::sha256_of(format!("{ab} {c}").as_bytes()));
        // The same layer on another parent gets another key.
        assert_ne!(chain_ids(&[c.clone(), b.clone()])[1], ids[1]);
    }
}
