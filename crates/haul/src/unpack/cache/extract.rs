//! Building a cache entry: a layer blob decompressed, hashed against its diff_id and extracted
//! in cache mode into a staging directory, within the session's budget, with `Extracting`
//! progress; once under the chain ID's lock, a finished entry another process built meanwhile
//! is taken as it is, and staging directories a killed process left are removed.

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::super::apply::{ApplyStats, apply_layer_for_cache_within};
use super::super::budget::LayerBudget;
use super::super::image::{UnpackError, UnpackOptions, remove_tree};
use super::super::stream::{Compression, StreamError, decompress};
use super::session::{PendingLayer, Session};
use super::{
    CachedLayer, DIFF_DIR, FORMAT, LayerCache, LayerJob, LayerMeta, META_FILE, PROGRESS_INTERVAL,
    layer_lock_name,
};
use crate::digest::Digest;
use crate::progress::{Event, LayerStatus, Reporter};
use crate::store::FileLock;

/// A layer-cache entry's lock, taken before its blob's download ([`LayerCache::try_claim`]).
pub(crate) struct LayerClaim {
    chain_id: Digest,
    lock: FileLock,
}

/// What [`LayerCache::extract_from`] produced.
pub enum Extracted {
    /// Already in the cache (perhaps built by another process meanwhile).
    Cached(CachedLayer),
    /// Extracted and verified, not yet visible.
    Pending(PendingLayer),
}

impl LayerCache<'_> {
    /// Extracts a layer from its compressed bytes (`compressed`: the stored blob, or the download
    /// as it arrives) into a staging directory, verified against its diff_id. The entry becomes
    /// visible only through [`Session::publish`], which the caller calls once the blob itself
    /// is verified; dropping it removes the staging directory. `reporter` gets `Extracting`
    /// progress when given.
    ///
    /// # Errors
    ///
    /// [`UnpackError`] when the layer cannot be extracted: its compression is not one haul
    /// reads, its content is not its diff_id or is hostile, it does not fit its budget, the disk
    /// fails, or the session was stopped.
    ///
    /// Waits for the chain ID's lock: a caller holding a blob's ingest lock must not call this
    /// (another process may hold the layer's lock and wait for that blob); it takes a
    /// claim on the layer before the download instead.
    pub fn extract_from(
        &self,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn BufRead + Send>,
    ) -> Result<Extracted, UnpackError> {
        let chain_id = job.chain_id;
        if let Some(hit) = self.cached(chain_id, &options.apply) {
            return Ok(Extracted::Cached(hit));
        }
        self.create_parent(chain_id)?;
        let lock = self.store.lock_exclusive(&layer_lock_name(chain_id))?;
        self.extract_locked(lock, job, options, reporter, session, compressed)
    }

    /// The chain ID's lock if nobody holds it now: whoever holds it may build the entry from a
    /// download without ever waiting on a layer lock while holding the blob's. `None` when
    /// another process (or job) holds it.
    pub(crate) fn try_claim(&self, chain_id: &Digest) -> Result<Option<LayerClaim>, UnpackError> {
        self.create_parent(chain_id)?;
        Ok(self
            .store
            .try_lock_exclusive(&layer_lock_name(chain_id))?
            .map(|lock| LayerClaim {
                chain_id: chain_id.clone(),
                lock,
            }))
    }

    /// [`LayerCache::extract_from`] under a claim taken before (`job`'s chain ID's).
    pub(crate) fn extract_claimed(
        &self,
        claim: LayerClaim,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn BufRead + Send>,
    ) -> Result<Extracted, UnpackError> {
        debug_assert_eq!(&claim.chain_id, job.chain_id);
        self.extract_locked(claim.lock, job, options, reporter, session, compressed)
    }

    fn create_parent(&self, chain_id: &Digest) -> Result<(), UnpackError> {
        Ok(self
            .store
            .create_private_dir(&self.layer_parent(chain_id))?)
    }

    fn extract_locked(
        &self,
        lock: FileLock,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn BufRead + Send>,
    ) -> Result<Extracted, UnpackError> {
        let chain_id = job.chain_id;
        let final_dir = self.layer_dir(chain_id);
        let parent = self.layer_parent(chain_id);
        if let Some(hit) = self.cached(chain_id, &options.apply) {
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
            store: self.store.clone(),
            staging,
            final_dir,
            meta: None,
            published: false,
            _lock: lock,
            _active: session.enter(),
        };
        // 0700 until the layer's own `.` entry, if any, gives it a mode.
        self.store
            .create_private_dir(&pending.staging.join(DIFF_DIR))?;
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

    /// Extracts the layer into `staging` and writes its `meta.json` there.
    pub(super) fn build_entry(
        &self,
        staging: &Path,
        job: &LayerJob<'_>,
        options: &UnpackOptions,
        reporter: Option<&dyn Reporter>,
        session: &Session,
        compressed: Box<dyn BufRead + Send>,
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
        let blob = self.store.blob_path(digest);
        let mut budget = LayerBudget::new(session.budget().clone(), options, layer.size);
        let limit = budget.stream_limit();
        let (stream, consumed) = decompress(
            compressed,
            compression,
            diff_id.algorithm(),
            limit,
            layer.size,
        )
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
        let uncompressed_bytes = reader.inner.finish(diff_id).map_err(stream_error)?;
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
        self.store.write_private_file(&meta_path, &bytes)?;
        report(layer.size);
        for w in applied.warnings {
            tracing::warn!(layer = %digest, "{w}");
        }
        budget.keep();
        Ok(meta)
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
