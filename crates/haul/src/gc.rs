//! Garbage collection: `haul image prune` removes what no ref reaches.
//!
//! Mark and sweep, under the store's collector lock (exclusive; every pull holds it shared for its
//! whole duration), so a running pull finishes first and nothing it committed but has not yet
//! published a ref for is swept. Roots are every manifest in `index.json` (entries of other tools
//! included), with the `source` and `resolved` digests haul records beside them. From each root the
//! manifest, its config, its layers and the layer-cache entries of its chain IDs are marked.
//! Swept: unmarked files under `blobs/<algo>/`, unmarked entries under `layers/<algo>/`, staging
//! directories no extraction is building, partial downloads and temp files older than a day, and
//! the staging directories killed unpacks left beside or inside their targets (found through
//! the store's record of them, `staging/`).
//! Lock files are never removed. A layer-cache entry is renamed into `trash/` before it is deleted,
//! so the cache never shows a half-deleted entry. A ref whose manifest or config cannot be read
//! stops the prune before anything is deleted: what it reaches is unknown.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, Manifest, ManifestError};
use crate::reference::Reference;
use crate::store::{Entry, Store, StoreError, TRASH_DIR};
use crate::store::{REF_NAME_ANNOTATION, RESOLVED_ANNOTATION, SOURCE_ANNOTATION};
use crate::unpack::cache::chain_ids;

/// Partial downloads and temp files younger than this may belong to a running operation.
pub const DEFAULT_PARTIAL_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Nested indexes deeper than this are not followed (nothing real nests more than once).
const MAX_DEPTH: usize = 4;

/// Why a prune stopped. Whatever was deleted before the error stays deleted (each deletion is
/// whole: a file, or a layer-cache entry moved aside first); nothing reachable ever is.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The store could not be locked, listed or changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Removing a layer-cache entry moved into `trash/` failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory being removed.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Nothing is deleted when a root cannot be followed: what it reaches is unknown.
    #[error("cannot tell what {root} reaches, so nothing was pruned: {source}")]
    Unreadable {
        /// The root that could not be followed: a ref's full reference, an unnamed entry's
        /// manifest digest, or an `index.json` entry that does not parse.
        root: String,
        /// Why.
        #[source]
        source: Box<UnreadableCause>,
    },
    /// The blocking task that did the work stopped (panicked or was cancelled).
    #[error("the prune task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Why a root of the store could not be followed ([`GcError::Unreadable`]).
#[derive(Debug, thiserror::Error)]
pub enum UnreadableCause {
    /// A manifest, index or config it reaches is missing or could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document it reaches does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What [`prune`] removes; [`Default`] is `haul image prune` without flags.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Also remove refs that name an image only by digest (docker's `-a`).
    pub all: bool,
    /// Report what would go; change nothing.
    pub dry_run: bool,
    /// Partial downloads and temp files older than this are removed.
    pub partial_age: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            all: false,
            dry_run: false,
            partial_age: DEFAULT_PARTIAL_AGE,
        }
    }
}

/// What a swept path was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swept {
    /// A blob under `blobs/`.
    Blob(Digest),
    /// A layer-cache entry, by chain ID.
    Layer(Digest),
    /// A layer-cache staging directory left by an extraction that did not finish.
    Staging,
    /// A partial download or temp file under `ingest/`.
    Partial,
    /// The staging directory of an unpack that was killed, wherever it was (the store records
    /// where each unpack builds its tree; see [`crate::unpack::unpack`]).
    UnpackStaging,
}

/// One path [`prune`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone)]
pub struct Deleted {
    /// What it was.
    pub what: Swept,
    /// Where it was: the store's root joined with its path in the store, or, for
    /// [`Swept::UnpackStaging`], the directory beside or inside the unpack's target.
    pub path: PathBuf,
    /// Bytes of the file, or of every file in the directory.
    pub bytes: u64,
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Refs removed by `all` (full references), in index order.
    pub untagged: Vec<String>,
    /// Blobs first, then layer-cache entries, then leftovers.
    pub deleted: Vec<Deleted>,
    /// Bytes freed: the sum of [`Deleted::bytes`].
    pub reclaimed: u64,
    /// Whether this was a dry run: then nothing was removed, refs included.
    pub dry_run: bool,
}

/// Removes what no ref reaches (see the module documentation for what counts as reached and
/// what is swept). Waits for running pulls to finish first, and holds pulls off while it runs. The store's
/// work runs on a blocking thread.
///
/// # Errors
///
/// [`GcError::Unreadable`], before anything is deleted, when a ref's manifest or config cannot be
/// read; [`GcError::Store`] or [`GcError::Io`] when the store cannot be locked, read or changed;
/// [`GcError::Task`] if the sweeping task stops.
pub async fn prune(store: &Store, options: &PruneOptions) -> Result<PruneReport, GcError> {
    let store = store.clone();
    let options = options.clone();
    tokio::task::spawn_blocking(move || prune_blocking(&store, &options))
        .await
        .map_err(GcError::Task)?
}

fn prune_blocking(store: &Store, options: &PruneOptions) -> Result<PruneReport, GcError> {
    let _lock = store.collector_lock()?;
    let roots = read_roots(store)?;
    let doomed: Vec<String> = if options.all {
        roots
            .iter()
            .filter_map(|r| r.name.clone())
            .filter(|n| is_digest_only(n))
            .collect()
    } else {
        Vec::new()
    };
    let mut untagged = Vec::new();
    if !options.dry_run {
        // Names first: a crash after this leaves unreachable content for the next prune.
        for name in &doomed {
            if store.remove_ref(name)? {
                untagged.push(name.clone());
            }
        }
    } else {
        untagged = doomed.clone();
    }
    let roots: Vec<Root> = roots
        .into_iter()
        .filter(|r| r.name.as_ref().is_none_or(|n| !doomed.contains(n)))
        .collect();
    let marks = mark(store, &roots)?;
    let mut report = sweep(store, &marks, options)?;
    // Running unpacks hold the writer lock shared, so none is running now; each one's record is
    // locked too, which is what the sweep goes by.
    for stale in crate::unpack::staging::sweep(store, options.dry_run)? {
        report.reclaimed += stale.bytes;
        report.deleted.push(Deleted {
            what: Swept::UnpackStaging,
            path: stale.path,
            bytes: stale.bytes,
        });
    }
    report.untagged = untagged;
    Ok(report)
}

/// `repo@sha256:…` without a tag: what docker calls an untagged image.
fn is_digest_only(name: &str) -> bool {
    name.parse::<Reference>()
        .is_ok_and(|r| r.digest().is_some() && r.tag().is_none())
}

/// One manifest in `index.json` and the digests haul recorded beside it.
#[derive(Debug)]
struct Root {
    name: Option<String>,
    manifest: Descriptor,
    extra: Vec<Digest>,
}

fn read_roots(store: &Store) -> Result<Vec<Root>, GcError> {
    let path = store.root().join("index.json");
    let index: Value = store.read_index()?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut roots = Vec::new();
    for entry in entries {
        let descriptor: Descriptor =
            serde_json::from_value(entry.clone()).map_err(|e| GcError::Unreadable {
                root: format!("an entry of {}", path.display()),
                source: Box::new(UnreadableCause::Manifest(ManifestError::Invalid {
                    kind: "an index.json entry",
                    source: e,
                })),
            })?;
        let annotation = |key: &str| descriptor.annotations.get(key).cloned();
        let extra = [RESOLVED_ANNOTATION, SOURCE_ANNOTATION]
            .iter()
            .filter_map(|k| annotation(k))
            .filter_map(|s| s.parse().ok())
            .collect();
        roots.push(Root {
            name: annotation(REF_NAME_ANNOTATION),
            manifest: descriptor,
            extra,
        });
    }
    Ok(roots)
}

#[derive(Debug, Default)]
struct Marks {
    blobs: HashSet<Digest>,
    /// Chain IDs of layer-cache entries in use.
    layers: HashSet<Digest>,
    /// Manifests and indexes already followed.
    followed: HashSet<Digest>,
}

fn mark(store: &Store, roots: &[Root]) -> Result<Marks, GcError> {
    let mut marks = Marks::default();
    for root in roots {
        let label = root
            .name
            .clone()
            .unwrap_or_else(|| root.manifest.digest.to_string());
        let unreadable = |cause: UnreadableCause| GcError::Unreadable {
            root: label.clone(),
            source: Box::new(cause),
        };
        marks.blobs.extend(root.extra.iter().cloned());
        mark_document(store, &root.manifest, &mut marks, 0).map_err(unreadable)?;
    }
    Ok(marks)
}

fn mark_document(
    store: &Store,
    descriptor: &Descriptor,
    marks: &mut Marks,
    depth: usize,
) -> Result<(), UnreadableCause> {
    marks.blobs.insert(descriptor.digest.clone());
    if !marks.followed.insert(descriptor.digest.clone()) || depth > MAX_DEPTH {
        return Ok(());
    }
    let bytes = store.read_blob(&descriptor.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
    match manifest::parse(Some(&descriptor.media_type), &bytes)? {
        Manifest::Index(index) => {
            // Children another tool stored; haul stores only the platform it pulled, and that
            // one is a root of its own.
            for child in &index.manifests {
                if store.has_blob(&child.digest) {
                    mark_document(store, child, marks, depth + 1)?;
                }
            }
        }
        Manifest::Image(image) => {
            marks.blobs.insert(image.config.digest.clone());
            marks
                .blobs
                .extend(image.layers.iter().map(|l| l.digest.clone()));
            let config = store.read_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
            let config = ImageConfig::parse(&config)?;
            marks.layers.extend(chain_ids(&config.rootfs.diff_ids));
        }
    }
    Ok(())
}

fn sweep(store: &Store, marks: &Marks, options: &PruneOptions) -> Result<PruneReport, GcError> {
    let dir = store.dir();
    let trash = Path::new(TRASH_DIR);
    if !options.dry_run {
        // What an interrupted prune had already moved aside.
        remove_tree_quietly(&store.root().join(trash));
    }
    let mut deleted = Vec::new();

    for (algo_dir, entry) in entries_two_deep(store, Path::new("blobs"))? {
        let rel = algo_dir.join(&entry.name);
        let (Some(algo), Some(name)) = (file_name(&algo_dir), entry.name.to_str()) else {
            continue;
        };
        // A file that is not named like a digest is not haul's to judge.
        let Ok(digest) = format!("{algo}:{name}").parse::<Digest>() else {
            continue;
        };
        if marks.blobs.contains(&digest) {
            continue;
        }
        if !options.dry_run {
            dir.remove_file(&rel)?;
        }
        deleted.push(Deleted {
            what: Swept::Blob(digest),
            path: store.root().join(&rel),
            bytes: entry.len(),
        });
    }

    let now = SystemTime::now();
    let old = |entry: &Entry| {
        now.duration_since(entry.modified())
            .is_ok_and(|age| age >= options.partial_age)
    };

    for (algo_dir, entry) in entries_two_deep(store, Path::new("layers"))? {
        let rel = algo_dir.join(&entry.name);
        let (Some(algo), Some(name)) = (file_name(&algo_dir), entry.name.to_str()) else {
            continue;
        };
        let what = if let Some(rest) = name.strip_prefix(".tmp-") {
            // `.tmp-<chain hex>-<pid>-<random>`: leftover unless an extraction of that chain ID
            // holds its lock right now.
            let chain_hex = rest.split('-').next().unwrap_or("");
            let idle = is_idle(store, &format!("layer-{algo}-{chain_hex}.lock"));
            if !(idle || old(&entry)) {
                continue;
            }
            Swept::Staging
        } else {
            let Ok(chain_id) = format!("{algo}:{name}").parse::<Digest>() else {
                continue;
            };
            if marks.layers.contains(&chain_id) {
                continue;
            }
            Swept::Layer(chain_id)
        };
        let path = store.root().join(&rel);
        let bytes = size_of(&path);
        if !options.dry_run {
            discard_tree(store, &rel, trash)?;
        }
        deleted.push(Deleted { what, path, bytes });
    }

    let ingest = Path::new("ingest");
    for entry in dir.list(ingest)? {
        if !old(&entry) {
            continue;
        }
        let Some(name) = entry.name.to_str() else {
            continue;
        };
        // `<algo>-<hex>.partial` and its record of ranges (`.ranges`, `.ranges.tmp` while it is
        // rewritten) belong to an ingest holding `locks/<algo>-<hex>.lock`.
        let stem = [".partial", ".ranges", ".ranges.tmp"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        if let Some(stem) = stem
            && !is_idle(store, &format!("{stem}.lock"))
        {
            continue;
        }
        let rel = ingest.join(&entry.name);
        if !options.dry_run {
            dir.remove_file(&rel)?;
        }
        deleted.push(Deleted {
            what: Swept::Partial,
            path: store.root().join(&rel),
            bytes: entry.len(),
        });
    }

    let reclaimed = deleted.iter().map(|d| d.bytes).sum();
    Ok(PruneReport {
        untagged: Vec::new(),
        deleted,
        reclaimed,
        dry_run: options.dry_run,
    })
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// Whether nobody holds the lock `locks/<name>` (an absent lock file is idle too). Never creates
/// one; one that is not a plain file (planted) counts as held, so nothing is swept on its word.
fn is_idle(store: &Store, name: &str) -> bool {
    match store.dir().open_file(&Path::new("locks").join(name)) {
        Ok(Some(f)) => f.try_lock().is_ok(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// `(dir/<a>, entry <b>)` for every `dir/<a>/<b>` where `<a>` is a real directory, sorted.
fn entries_two_deep(store: &Store, dir: &Path) -> Result<Vec<(PathBuf, Entry)>, GcError> {
    let mut out = Vec::new();
    for a in store.dir().list(dir)? {
        if !a.is_dir() {
            continue;
        }
        let sub = dir.join(&a.name);
        for b in store.dir().list(&sub)? {
            out.push((sub.clone(), b));
        }
    }
    Ok(out)
}

/// Bytes in the files of a tree (or of one file); symlinks count as themselves, and what cannot
/// be read counts 0.
// Public only for tests/bombs.rs, which measures the layer cache with the measure prune uses.
#[doc(hidden)]
#[must_use]
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| size_of(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Moves the tree `rel` out of sight into `trash/` in one rename, then deletes it.
fn discard_tree(store: &Store, rel: &Path, trash: &Path) -> Result<(), GcError> {
    store.create_private_dir(&store.root().join(trash))?;
    let aside = trash.join(format!("{}-{:016x}", std::process::id(), fastrand::u64(..)));
    match store.dir().rename(rel, &aside) {
        Ok(()) => {}
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let aside = store.root().join(aside);
    crate::unpack::image::remove_tree(&aside).map_err(|source| GcError::Io {
        path: aside.clone(),
        source,
    })
}

fn remove_tree_quietly(path: &Path) {
    if let Err(e) = crate::unpack::image::remove_tree(path) {
        tracing::warn!(path = %path.display(), "cannot empty the trash: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_only_names_are_the_untagged_ones() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(is_digest_only(&format!("docker.io/library/alpine@{d}")));
        assert!(!is_digest_only("docker.io/library/alpine:3"));
        assert!(!is_digest_only(&format!("docker.io/library/alpine:3@{d}")));
        assert!(!is_digest_only("not a reference"));
    }
}
