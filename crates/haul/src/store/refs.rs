//! Refs: the names in `index.json` that point at pulled images.
//!
//! Each ref is one descriptor of an image manifest in the layout's top-level index, named by the
//! standard `org.opencontainers.image.ref.name` annotation with the full normalised reference
//! (`docker.io/library/alpine:latest`), so `skopeo inspect oci:ROOT:docker.io/library/alpine:latest`
//! finds it. What the name resolved to at the registry (an index for multi-platform images) is
//! kept in [`RESOLVED_ANNOTATION`]. Updates read, modify and atomically replace `index.json` under
//! `locks/index.lock`; unknown entries and fields written by other tools are preserved.

use std::io;
use std::path::Path;

use serde_json::Value;

use super::layout::INDEX_FILE;
use super::{FileLock, Store, StoreError};
use crate::digest::Digest;
use crate::manifest::{Descriptor, media_type};

/// The standard annotation naming a ref in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The digest the name resolved to at the registry: the index for multi-platform images.
pub const RESOLVED_ANNOTATION: &str = "dev.haul.resolved-digest";
/// The manifest as the registry served it, when the ref points at an OCI rewrite of it.
pub const SOURCE_ANNOTATION: &str = "dev.haul.source-manifest";

const INDEX_LOCK: &str = "index.lock";

/// One named image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    /// Full normalised reference: `docker.io/library/alpine:latest` or `…/alpine@sha256:…`.
    pub name: String,
    /// The image manifest, with OCI media types.
    pub manifest: Descriptor,
    /// What the name resolved to at the registry (index or manifest digest).
    pub resolved: Digest,
    /// The registry's own manifest when `manifest` is an OCI rewrite of a Docker one.
    pub source: Option<Digest>,
}

impl RefEntry {
    fn to_descriptor(&self) -> Descriptor {
        let mut d = self.manifest.clone();
        d.annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), self.name.clone());
        d.annotations
            .insert(RESOLVED_ANNOTATION.to_owned(), self.resolved.to_string());
        if let Some(source) = &self.source {
            d.annotations
                .insert(SOURCE_ANNOTATION.to_owned(), source.to_string());
        }
        d
    }

    /// The manifest digest as the registry knows it.
    #[must_use]
    pub fn registry_manifest(&self) -> &Digest {
        self.source.as_ref().unwrap_or(&self.manifest.digest)
    }

    fn from_descriptor(mut d: Descriptor) -> Option<RefEntry> {
        let name = d.annotations.remove(REF_NAME_ANNOTATION)?;
        let resolved = d
            .annotations
            .remove(RESOLVED_ANNOTATION)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| d.digest.clone());
        let source = d
            .annotations
            .remove(SOURCE_ANNOTATION)
            .and_then(|s| s.parse().ok());
        Some(RefEntry {
            name,
            manifest: d,
            resolved,
            source,
        })
    }
}

/// Every named image, in index order. Entries without a name (or not written by an OCI tool in a
/// shape haul understands) are skipped.
pub(super) fn list(store: &Store) -> Result<Vec<RefEntry>, StoreError> {
    let index = read_index(store)?;
    Ok(manifest_entries(&index)
        .iter()
        .filter_map(|v| serde_json::from_value::<Descriptor>(v.clone()).ok())
        .filter_map(RefEntry::from_descriptor)
        .collect())
}

/// Adds or replaces the ref named `entry.name`.
pub(super) fn set(store: &Store, entry: &RefEntry) -> Result<(), StoreError> {
    let _lock = FileLock::exclusive(store, INDEX_LOCK)?;
    let mut index = read_index(store)?;
    let new = serde_json::to_value(entry.to_descriptor())
        .map_err(|e| StoreError::io(&store.root().join(INDEX_FILE), io::Error::other(e)))?;
    let entries = manifest_entries_mut(&mut index);
    entries.retain(|v| ref_name(v) != Some(entry.name.as_str()));
    entries.push(new);
    write_index(store, &index)
}

/// Removes the ref `name`; returns whether it existed.
pub(super) fn remove(store: &Store, name: &str) -> Result<bool, StoreError> {
    let _lock = FileLock::exclusive(store, INDEX_LOCK)?;
    let mut index = read_index(store)?;
    let entries = manifest_entries_mut(&mut index);
    let before = entries.len();
    entries.retain(|v| ref_name(v) != Some(name));
    let removed = entries.len() != before;
    if removed {
        write_index(store, &index)?;
    }
    Ok(removed)
}

/// Writes an empty `index.json` into a new store; parses an existing one, so that a corrupt
/// index is reported at open, not halfway through a pull.
pub(super) fn ensure_index(store: &Store) -> Result<(), StoreError> {
    let exists = || Ok::<_, StoreError>(store.dir().stat(Path::new(INDEX_FILE))?.is_some());
    if exists()? {
        read_index(store).map(drop)
    } else {
        let _lock = FileLock::exclusive(store, INDEX_LOCK)?;
        if exists()? {
            return Ok(());
        }
        write_index(store, &empty_index())
    }
}

/// `index.json` as JSON: an object, never read through a symlink.
pub(super) fn read_index(store: &Store) -> Result<Value, StoreError> {
    let path = store.root().join(INDEX_FILE);
    let bytes = store
        .read_private_file(&path, u64::MAX)?
        .ok_or_else(|| StoreError::io(&path, io::ErrorKind::NotFound.into()))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadLayout {
        path: path.clone(),
        reason: format!("index.json is not valid JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(StoreError::BadLayout {
            path,
            reason: "index.json is not a JSON object".to_owned(),
        });
    }
    Ok(v)
}

/// Replaces `index.json` atomically; the caller holds [`INDEX_LOCK`].
fn write_index(store: &Store, index: &Value) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(index)
        .map_err(|e| StoreError::io(&store.root().join(INDEX_FILE), io::Error::other(e)))?;
    // The blobs the index names are durable before it is.
    store.sync()?;
    store.write_atomically(Path::new(INDEX_FILE), &bytes)
}

fn empty_index() -> Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": []
    })
}

fn manifest_entries(index: &Value) -> Vec<Value> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn manifest_entries_mut(index: &mut Value) -> &mut Vec<Value> {
    // read_index only returns objects; anything else is replaced rather than trusted.
    if !index.is_object() {
        *index = empty_index();
    }
    let slot = &mut index["manifests"];
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

fn ref_name(v: &Value) -> Option<&str> {
    v.get("annotations")?.get(REF_NAME_ANNOTATION)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, n: u8) -> RefEntry {
        let d: Digest = format!("sha256:{}", hex::encode([n; 32])).parse().unwrap();
        RefEntry {
            name: name.to_owned(),
            manifest: Descriptor::new(media_type::OCI_MANIFEST, d.clone(), 100 + n as u64),
            resolved: d,
            source: None,
        }
    }

    #[test]
    fn set_replace_and_remove_refs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_ref(&entry("docker.io/library/a:1", 1)).unwrap();
        store.set_ref(&entry("docker.io/library/b:1", 2)).unwrap();
        store.set_ref(&entry("docker.io/library/a:1", 3)).unwrap();
        let refs = store.refs().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1], entry("docker.io/library/a:1", 3));
        assert!(store.remove_ref("docker.io/library/b:1").unwrap());
        assert!(!store.remove_ref("docker.io/library/b:1").unwrap());
        assert_eq!(
            store.refs().unwrap(),
            vec![entry("docker.io/library/a:1", 3)]
        );
    }

    #[test]
    fn keeps_what_other_tools_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let foreign = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media_type::OCI_MANIFEST, "size": 3,
                "digest": format!("sha256:{}", "0".repeat(64)),
                "annotations": {"org.opencontainers.image.ref.name": "v1", "x": "y"}}],
            "annotations": {"kept": "yes"}
        });
        std::fs::write(store.index_path(), foreign.to_string()).unwrap();
        store.set_ref(&entry("docker.io/library/a:1", 1)).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(store.index_path()).unwrap()).unwrap();
        assert_eq!(v["annotations"]["kept"], "yes");
        assert_eq!(v["manifests"][0]["annotations"]["x"], "y");
        assert_eq!(store.refs().unwrap().len(), 2);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let s = store.clone();
            tasks.push(std::thread::spawn(move || {
                s.set_ref(&entry(&format!("docker.io/library/img:{i}"), i))
            }));
        }
        for t in tasks {
            t.join().unwrap().unwrap();
        }
        assert_eq!(store.refs().unwrap().len(), 16);
    }
}
