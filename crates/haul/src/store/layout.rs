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
const OCI_LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// Directories every store has.
pub(super) const STORE_DIRS: [&str; 4] = ["blobs", "blobs/sha256", "ingest", "locks"];

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

/// Opens the root at `root` and makes sure every directory a store has is there and private;
/// what was made private is added to `tightened`.
pub(super) fn open_dir(
    root: &Path,
    tightened: &mut Vec<Tightened>,
) -> Result<StoreDir, StoreError> {
    let dir = StoreDir::open(root, tightened)?;
    for rel in STORE_DIRS {
        dir.ensure_dir(Path::new(rel), tightened)?;
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
    if !tightened.is_empty() {
        tighten_files(&dir, tightened)?;
    }
    Ok(dir)
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
