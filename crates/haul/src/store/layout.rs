//! Where a store is, what every store holds, and making an older, looser store private.

use std::path::{Path, PathBuf};

use super::fs::StoreDir;
use super::{Store, StoreError};

pub(super) const OCI_LAYOUT_FILE: &str = "oci-layout";
pub(super) const INDEX_FILE: &str = "index.json";
pub(super) const INGEST_DIR: &str = "ingest";
pub(super) const LOCKS_DIR: &str = "locks";
/// Where a prune moves what it is deleting.
pub(crate) const TRASH_DIR: &str = "trash";
pub(super) const GC_LOCK: &str = "gc.lock";
/// Where unpacks record the staging directories they make outside the store.
pub(crate) const STAGING_DIR: &str = "staging";
const OCI_LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// Directories every store has (`ingest/` first: see [`open_root`]).
pub(super) const STORE_DIRS: [&str; 4] = ["ingest", "blobs", "blobs/sha256", "locks"];

/// Where the store is when the caller names none: `$HAUL_ROOT`, then `/var/lib/haul` for root,
/// then `$XDG_DATA_HOME/haul` (`~/.local/share/haul`) for others. Without HOME or XDG_DATA_HOME
/// there is no private default: a store in a shared temp dir could be pre-created by anyone, with
/// forged content (layer-cache keys are public), so that is [`StoreError::NoDefaultRoot`] rather
/// than a fallback.
///
/// # Errors
///
/// [`StoreError::NoDefaultRoot`] when none of those variables names a place.
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
    /// The directory or file.
    pub path: PathBuf,
    /// Its mode before.
    pub from: u32,
    /// Its mode now.
    pub to: u32,
}

/// One line telling the owner that an existing store was made private; `None` when nothing was.
#[must_use]
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

/// Opens the root at `root` for a store: refuses one someone else could change, and a directory
/// of other files that is no OCI layout (before anything is written into it); then makes the
/// root private and makes sure `ingest/`, through which `oci-layout` is written, is there.
/// What was made private is added to `tightened`.
pub(super) fn open_root(
    root: &Path,
    tightened: &mut Vec<Tightened>,
) -> Result<StoreDir, StoreError> {
    let dir = StoreDir::open(root)?;
    check_is_store(&dir)?;
    dir.tighten_root(tightened)?;
    ensure_dir(&dir, Path::new(INGEST_DIR), tightened)?;
    Ok(dir)
}

/// A store is an OCI image layout: it has `oci-layout`. A directory without one becomes a store
/// only when it holds nothing, or nothing but what haul writes first when making one (`ingest/`,
/// so that a store whose creation was interrupted opens again) and the empty `lost+found` of a
/// freshly made filesystem. Anything else is someone's files, which haul refuses to mix its
/// own into.
fn check_is_store(dir: &StoreDir) -> Result<(), StoreError> {
    if dir.stat(Path::new(OCI_LAYOUT_FILE))?.is_some() {
        return Ok(());
    }
    let foreign: Vec<String> = dir
        .list(Path::new(""))?
        .into_iter()
        .filter(|e| {
            let ours = e.name == INGEST_DIR && e.is_dir();
            let lost_found = e.name == "lost+found"
                && e.is_dir()
                && dir
                    .list(Path::new("lost+found"))
                    .is_ok_and(|inside| inside.is_empty());
            !(ours || lost_found)
        })
        .map(|e| {
            let name = e.name.to_string_lossy().into_owned();
            if e.is_dir() { format!("{name}/") } else { name }
        })
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(StoreError::NotAStore {
        path: dir.path().to_owned(),
        count: foreign.len(),
        found: foreign.into_iter().take(5).collect(),
    })
}

/// Makes sure every directory a store has is there and private (only checks, in a store that
/// cannot be written: a layout another tool wrote may lack haul's own `ingest/` and `locks/`);
/// what was made private is added to `tightened`.
pub(super) fn ensure_dirs(
    dir: &StoreDir,
    tightened: &mut Vec<Tightened>,
) -> Result<(), StoreError> {
    for rel in STORE_DIRS {
        ensure_dir(dir, Path::new(rel), tightened)?;
    }
    // What haul (or another digest algorithm) added since.
    for top in ["blobs", "layers"] {
        dir.check_existing_dir(Path::new(top), tightened)?;
        for entry in dir.list(Path::new(top))? {
            if entry.is_dir() {
                dir.check_existing_dir(&Path::new(top).join(&entry.name), tightened)?;
            }
        }
    }
    dir.check_existing_dir(Path::new(TRASH_DIR), tightened)?;
    dir.check_existing_dir(Path::new(STAGING_DIR), tightened)?;
    if !tightened.is_empty() {
        tighten_files(dir, tightened)?;
    }
    Ok(())
}

fn ensure_dir(
    dir: &StoreDir,
    rel: &Path,
    tightened: &mut Vec<Tightened>,
) -> Result<(), StoreError> {
    if dir.read_only() {
        dir.check_existing_dir(rel, tightened)
    } else {
        dir.ensure_dir(rel, tightened)
    }
}

/// Writes `oci-layout` into a new store, or checks an existing one is of a version haul reads.
pub(super) fn ensure_layout_file(store: &Store) -> Result<(), StoreError> {
    let path = store.root().join(OCI_LAYOUT_FILE);
    // A layout file is a few dozen bytes; more is not one.
    let Some(bytes) = store.read_private_file(&path, 64 << 10)? else {
        return store.write_atomically(Path::new(OCI_LAYOUT_FILE), OCI_LAYOUT_CONTENT.as_bytes());
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
