//! Unpacking a stored image into a root filesystem directory.
//!
//! Each layer comes from the layer cache (extracted there first if needed, its uncompressed stream
//! hashed against the config's diff_id, and what it writes bounded per layer, per image and by the
//! free space; see [`budget`](super::budget)) and is merged in order into a staging directory
//! (beside a new target, inside an existing one: see [`staging`](super::staging)). Only a
//! complete tree is published: a failure removes the staging directory and leaves the target as
//! it was. A store that cannot be written has a layer cache that cannot grow: a layer not in it
//! is applied straight from its blob, verified and bounded the same way.

use std::io;
use std::path::{Path, PathBuf};

use super::apply::{ApplyError, ApplyOptions, ApplyStats, apply_layer};
use super::budget::ImageBudget;
use super::cache::{LayerJob, Session, cache_keys};
use super::staging::Staging;
use super::stream::{Compression, StreamError, decompress, stored_blob};
use crate::digest::Digest;
use crate::manifest::{self, ImageConfig, Manifest, ManifestError};
use crate::progress::{Event, LayerStatus, Reporter};
use crate::store::{RefEntry, Store, StoreError};

/// A layer may expand to this many times its compressed size, and an image's layers together to
/// this many times theirs…
pub const DEFAULT_EXPANSION_RATIO: u64 = 64;
/// …but never less than this many bytes (16 GiB), so small layers of very compressible files are
/// not refused. The free space of the filesystem extraction writes to bounds both too.
pub const DEFAULT_MIN_LAYER_LIMIT: u64 = 16 << 30;

/// How to unpack an image: what the applier may do, how far layers may expand, and whether an
/// existing tree is replaced. [`UnpackOptions::for_current_user`] gives the defaults.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// What applying each layer may do (ownership, devices, xattrs).
    pub apply: ApplyOptions,
    /// How many times its compressed size a layer, and an image's layers together, may expand
    /// to (see [`UnpackOptions::limit_for`]); [`DEFAULT_EXPANSION_RATIO`] by default.
    pub expansion_ratio: u64,
    /// The expansion limit is never below this many bytes; [`DEFAULT_MIN_LAYER_LIMIT`] by
    /// default.
    pub min_layer_limit: u64,
    /// Replace a target directory that is not empty (by default [`unpack`] refuses it with
    /// [`UnpackError::TargetNotEmpty`]). The old tree is moved aside and removed only once the
    /// new one is in place.
    pub force: bool,
}

impl UnpackOptions {
    /// The defaults for this process: [`ApplyOptions::for_current_user`] (ownership and devices
    /// only as root), the default expansion limits, and no `force`.
    #[must_use]
    pub fn for_current_user() -> Self {
        UnpackOptions {
            apply: ApplyOptions::for_current_user(),
            expansion_ratio: DEFAULT_EXPANSION_RATIO,
            min_layer_limit: DEFAULT_MIN_LAYER_LIMIT,
            force: false,
        }
    }

    /// What layers of `compressed` bytes may expand to, in bytes: `compressed` times
    /// [`expansion_ratio`](Self::expansion_ratio) (saturating), at least
    /// [`min_layer_limit`](Self::min_layer_limit).
    #[must_use]
    pub fn limit_for(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.expansion_ratio)
            .max(self.min_layer_limit)
    }
}

/// Why an image could not be unpacked. The target is then as it was: nothing of a failed unpack
/// is published.
///
/// `index` fields count layers from 0, the base layer, in manifest order; `digest` fields are the
/// layer blob's digest.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The target directory is not empty and [`UnpackOptions::force`] was not set.
    #[error("{path} is not empty; pass --force to replace its contents")]
    TargetNotEmpty {
        /// The target, as given.
        path: PathBuf,
    },
    /// A file-system operation on the target, its staging directory or the layer cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The store could not be read or locked (a blob missing or damaged included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored manifest or config is not an image haul can unpack (an index, a config whose
    /// diff_ids do not match the layers…).
    #[error("image {reference}: {source}")]
    Manifest {
        /// The ref being unpacked.
        reference: String,
        /// What is wrong with the document.
        #[source]
        source: ManifestError,
    },
    /// A layer's media type names a compression haul does not read.
    #[error("layer {index} ({digest}) has media type {media_type:?}, which haul cannot decompress")]
    UnsupportedCompression {
        /// The layer's position.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// Its media type, as the manifest gives it.
        media_type: String,
    },
    /// A layer's tar could not be applied: hostile, malformed, or more than the limits allow.
    #[error("layer {index} ({digest}): {source}")]
    Apply {
        /// The layer's position.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// Why, naming the tar entry.
        #[source]
        source: ApplyError,
    },
    /// A layer's uncompressed stream was refused: too large, or not the config's diff_id.
    #[error("layer {index} ({digest}): {source}")]
    Stream {
        /// The layer's position.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// Why.
        #[source]
        source: StreamError,
    },
    /// The pull this extraction belonged to failed elsewhere; nothing was published.
    #[error("stopped: the pull failed")]
    Stopped,
}

/// What [`unpack`] did.
#[derive(Debug, Default, Clone)]
pub struct UnpackStats {
    /// Layers merged into the tree (the image's layer count).
    pub layers: usize,
    /// Layers that were already in the layer cache (not decompressed again).
    pub layers_from_cache: usize,
    /// Uncompressed bytes of the image's layers (the tar streams, as their diff_ids hash them).
    pub uncompressed_bytes: u64,
    /// Tar entries merged into the tree over all layers, whiteouts included (as replayed from
    /// the layer cache).
    pub entries: u64,
    /// Things skipped or half-applied (a device without root, an xattr the filesystem refused…),
    /// one sentence each naming the entry. Not errors: the tree is complete without them.
    pub warnings: Vec<String>,
}

/// Unpacks the image `entry` names (a ref of `store`) into `target`, created if missing.
///
/// Each layer comes from the layer cache, extracted there first when missing (its blob
/// decompressed, hashed against the config's diff_id, and what it writes bounded by `options`'
/// limits and the free space), and is merged in order into a staging directory: beside a
/// `target` that does not exist, which is then renamed into place whole; inside one that does
/// (an empty directory, an empty mount point, or any directory with [`UnpackOptions::force`]),
/// whose entries are then moved up. The store records each staging directory, so one a killed
/// unpack left is removed by the next unpack or prune. Blocks the calling thread while it
/// works (call it from a blocking thread in async code); events for each layer reach
/// `reporter`. Holds the store's writer lock (shared) throughout, so a prune waits rather than
/// sweeping a layer being merged. A read-only store ([`Store::is_read_only`]) works too: layers
/// missing from its layer cache are applied straight from their blobs.
///
/// # Errors
///
/// [`UnpackError::TargetNotEmpty`] for a non-empty `target` without [`UnpackOptions::force`];
/// otherwise whatever stopped the store, a layer or the file system, as [`UnpackError`] says.
/// The staging directory is then removed and `target` left as it was.
pub fn unpack(
    store: &Store,
    entry: &RefEntry,
    target: &Path,
    options: &UnpackOptions,
    reporter: &dyn Reporter,
) -> Result<UnpackStats, UnpackError> {
    // Held like a pull holds it: a prune waits, rather than sweeping a layer-cache entry this
    // unpack is about to merge. Nothing else is written in a read-only store.
    let _writer = store.reader_lock()?;
    // What killed unpacks left (see `staging`): this is the next command they promise it to.
    if !store.is_read_only()
        && let Err(e) = super::staging::sweep(store, false)
    {
        tracing::warn!("cannot remove what an interrupted unpack left: {e}");
    }
    let manifest_bytes =
        store.read_blob(&entry.manifest.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
    let bad = |source| UnpackError::Manifest {
        reference: entry.name.clone(),
        source,
    };
    let image = match manifest::parse(Some(&entry.manifest.media_type), &manifest_bytes) {
        Ok(Manifest::Image(m)) => m,
        Ok(Manifest::Index(_)) => {
            return Err(bad(ManifestError::UnsupportedMediaType(
                "an index where an image manifest was expected".to_owned(),
            )));
        }
        Err(e) => return Err(bad(e)),
    };
    image.check_is_image().map_err(bad)?;
    let config_bytes = store.read_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
    let config = ImageConfig::parse(&config_bytes).map_err(bad)?;
    config.check_layers(&image).map_err(bad)?;

    let staging = Staging::prepare(store, target, options.force)?;
    let keys = cache_keys(&config.rootfs.diff_ids);
    let mut distinct = std::collections::HashSet::new();
    let compressed: u64 = image
        .layers
        .iter()
        .zip(&keys)
        .filter(|(_, key)| distinct.insert(*key))
        .map(|(layer, _)| layer.size)
        .sum();
    let session = Session::new(ImageBudget::new(options, compressed, store.root(), 0));
    let result = (|| -> Result<UnpackStats, UnpackError> {
        let mut stats = UnpackStats::default();
        for (index, ((layer, diff_id), chain_id)) in image
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&keys)
            .enumerate()
        {
            let job = LayerJob {
                index,
                layer,
                diff_id,
                chain_id,
            };
            let (uncompressed_bytes, merged, hit) =
                merge_from_cache(store, &job, staging.path(), options, reporter, &session)?;
            if hit {
                stats.layers_from_cache += 1;
            }
            reporter.report(Event::Layer {
                digest: layer.digest.clone(),
                status: LayerStatus::PullComplete,
            });
            stats.layers += 1;
            stats.uncompressed_bytes += uncompressed_bytes;
            stats.entries += merged.entries;
            stats.warnings.extend(merged.warnings);
        }
        Ok(stats)
    })();
    // A failure drops the staging directory, which removes it.
    let stats = result?;
    staging.publish(options.apply.preserve_ownership)?;
    Ok(stats)
}

/// Merges one layer from the cache onto `staging`, extracting it there first when missing (in a
/// read-only store, applying it from its blob instead). Returns the layer's uncompressed size,
/// what merging it did, and whether it was in the cache already.
fn merge_from_cache(
    store: &Store,
    job: &LayerJob<'_>,
    staging: &Path,
    options: &UnpackOptions,
    reporter: &dyn Reporter,
    session: &Session,
) -> Result<(u64, ApplyStats, bool), UnpackError> {
    let mut hit = true;
    // A failed pull may take back an entry between its extraction and our read lock: extract
    // again, a few times at most.
    let layers = store.layers();
    for _ in 0..3 {
        let lock = layers.read_lock(job.chain_id)?;
        if let Some(cached) = layers.cached(job.chain_id, &options.apply) {
            let merged = layers.merge(&cached, staging, &options.apply, job.index)?;
            drop(lock);
            return Ok((cached.meta.uncompressed_bytes, merged, hit));
        }
        drop(lock);
        if store.is_read_only() {
            let (bytes, merged) = apply_from_blob(store, job, staging, options)?;
            return Ok((bytes, merged, false));
        }
        hit = false;
        layers.extract(job, options, reporter, session)?;
    }
    Err(UnpackError::Io {
        path: store.root().join("layers"),
        source: io::Error::other(format!(
            "the layer-cache entry {} keeps being removed while this unpack extracts it",
            job.chain_id
        )),
    })
}

/// Applies a layer straight from its blob onto `staging`: decompressed, hashed against its
/// diff_id and bounded like an extraction into the cache (the stream's expansion limit; the
/// free space is the target filesystem's to refuse). For a store whose layer cache cannot be
/// written. Returns the uncompressed size and what applying did.
fn apply_from_blob(
    store: &Store,
    job: &LayerJob<'_>,
    staging: &Path,
    options: &UnpackOptions,
) -> Result<(u64, ApplyStats), UnpackError> {
    let (index, layer) = (job.index, job.layer);
    let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
        UnpackError::UnsupportedCompression {
            index,
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        }
    })?;
    let blob = store.blob_path(&layer.digest);
    let io_err = |source| UnpackError::Io {
        path: blob.clone(),
        source,
    };
    let (mut stream, _) = decompress(
        stored_blob(store, &layer.digest)?,
        compression,
        job.diff_id.algorithm(),
        options.limit_for(layer.size),
        layer.size,
    )
    .map_err(io_err)?;
    let applied = apply_layer(staging, &mut stream, &options.apply);
    let stream_error = |source| UnpackError::Stream {
        index,
        digest: layer.digest.clone(),
        source,
    };
    if let Some(limit) = stream.too_large() {
        return Err(stream_error(StreamError::TooLarge { limit }));
    }
    let applied = applied.map_err(|source| UnpackError::Apply {
        index,
        digest: layer.digest.clone(),
        source,
    })?;
    let bytes = stream.finish(job.diff_id).map_err(stream_error)?;
    Ok((bytes, applied))
}

/// Removes a tree even where a layer left directories without write permission.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        make_dirs_writable(&entry?.path())?;
    }
    Ok(())
}
