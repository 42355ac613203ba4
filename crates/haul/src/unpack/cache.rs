//! The layer cache: every layer extracted once, then merged into any number of root filesystems
//! without being decompressed again.
//!
//! ```text
//! ROOT/layers/sha256/<chain-id hex>/diff/       the layer's own changes, whiteout markers kept
//! ROOT/layers/sha256/<chain-id hex>/meta.json   diff_id, blob, deferred hardlinks, sizes
//! ```
//!
//! Entries are keyed by chain ID (the diff_ids of the layer and of every layer below it), so a
//! layer whose hardlinks point into a lower layer is never reused on a different stack. An entry is
//! built in a staging directory, verified against its diff_id and renamed into place with
//! `meta.json` already inside, so a directory under `layers/` is always complete. Like docker's and
//! containerd's extracted layers, entries are not fsynced (flushing a whole extracted tree costs more
//! than the extraction): they are derived from verified blobs and can be rebuilt from them. Building
//! one holds a per-chain-ID lock, so concurrent haul processes extract a layer once. Merging reads
//! the cached tree back as a tar stream through the same confined applier, copying every file:
//! nothing in an unpacked rootfs shares an inode with the cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::apply::{ApplyOptions, ApplyStats, DeferredLink, apply_layer, apply_layer_for_cache};
use super::dirtar::tar_dir;
use super::image::{UnpackError, UnpackOptions, remove_tree};
use super::stream::{Compression, StreamError, decompress};
use crate::digest::{Digest, Hasher};
use crate::manifest::Descriptor;
use crate::progress::{Event, LayerStatus, Reporter};
use crate::store::{FileLock, Store};

const META_FILE: &str = "meta.json";
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
}

impl PendingLayer {
    /// Makes the entry visible under its chain ID.
    pub fn publish(mut self) -> Result<CachedLayer, UnpackError> {
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
        let dir = self.layer_dir(chain_id);
        let bytes = self
            .read_private_file(&dir.join(META_FILE), MAX_META_BYTES)
            .ok()??;
        let meta: LayerMeta = serde_json::from_slice(&bytes).ok()?;
        let wants_privilege = options.preserve_ownership || options.allow_devices;
        if &meta.chain_id != chain_id || (wants_privilege && !meta.privileged) {
            return None;
        }
        Some(CachedLayer { dir, meta })
    }

    /// Extracts one layer blob into the cache (once, even across processes) and returns it.
    pub fn cache_layer(
        &self,
        index: usize,
        layer: &Descriptor,
        diff_id: &Digest,
        chain_id: &Digest,
        options: &UnpackOptions,
        reporter: &dyn Reporter,
    ) -> Result<CachedLayer, UnpackError> {
        let file = self.open_blob(&layer.digest)?;
        let job = LayerJob {
            index,
            layer,
            diff_id,
            chain_id,
        };
        match self.extract_layer(&job, options, Some(reporter), Box::new(file))? {
            Extracted::Cached(hit) => Ok(hit),
            Extracted::Pending(pending) => pending.publish(),
        }
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
        let lock = self.lock_exclusive(&format!(
            "layer-{}-{}.lock",
            chain_id.algorithm().name(),
            chain_id.hex()
        ))?;
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
        };
        // 0700 until the layer's own `.` entry, if any, gives it a mode.
        self.create_private_dir(&pending.staging.join(DIFF_DIR))?;
        let meta = self.build_entry(&pending.staging, job, options, reporter, compressed)?;
        pending.meta = Some(meta);
        Ok(Extracted::Pending(pending))
    }

    fn build_entry(
        &self,
        staging: &Path,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
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
        let limit = options.limit_for(layer.size);
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
        };
        let applied = apply_layer_for_cache(&diff, &mut reader, &options.apply);
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
        Ok(meta)
    }

    /// Applies a cached layer onto `root` with the normal layer semantics.
    pub fn merge_layer(
        &self,
        cached: &CachedLayer,
        root: &Path,
        options: &ApplyOptions,
        index: usize,
    ) -> Result<ApplyStats, UnpackError> {
        let diff = cached.diff_dir();
        let stream = tar_dir(&diff, cached.meta.deferred_links.clone()).map_err(|source| {
            UnpackError::Io {
                path: diff.clone(),
                source,
            }
        })?;
        apply_layer(root, stream, options).map_err(|source| UnpackError::Apply {
            index,
            digest: cached.meta.blob.clone(),
            source,
        })
    }
}

/// Reports `Extracting` progress (compressed bytes consumed) while the applier reads.
struct Reporting<'a, R> {
    inner: R,
    consumed: Arc<AtomicU64>,
    total: u64,
    digest: &'a Digest,
    reporter: Option<&'a dyn Reporter>,
    last: Instant,
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
