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

use super::{FileLock, INDEX_FILE, Store, StoreError};
use crate::digest::Digest;
use crate::manifest::{Descriptor, media_type};

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

impl Store {
    /// Every named image, in index order. Entries without a name (or not written by an OCI tool in a
    /// shape haul understands) are skipped.
    pub fn refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        let index = self.read_index()?;
        Ok(manifest_entries(&index)
            .iter()
            .filter_map(|v| serde_json::from_value::<Descriptor>(v.clone()).ok())
            .filter_map(RefEntry::from_descriptor)
            .collect())
    }

    pub fn find_ref(&self, name: &str) -> Result<Option<RefEntry>, StoreError> {
        Ok(self.refs()?.into_iter().find(|r| r.name == name))
    }

    /// Adds or replaces the ref named `entry.name`. This is the publishing step of a pull: callers
    /// make sure every blob the manifest reaches is committed first.
    pub async fn set_ref(&self, entry: RefEntry) -> Result<(), StoreError> {
        let store = self.clone();
        run_blocking(move || {
            let _lock = FileLock::exclusive(&store, INDEX_LOCK)?;
            let mut index = store.read_index()?;
            let new = serde_json::to_value(entry.to_descriptor())
                .map_err(|e| StoreError::io(&store.root().join(INDEX_FILE), io::Error::other(e)))?;
            let entries = manifest_entries_mut(&mut index);
            entries.retain(|v| ref_name(v) != Some(entry.name.as_str()));
            entries.push(new);
            store.write_index(&index)
        })
        .await
    }

    /// Removes the ref `name`; returns whether it existed.
    pub async fn remove_ref(&self, name: &str) -> Result<bool, StoreError> {
        let store = self.clone();
        let name = name.to_owned();
        run_blocking(move || {
            let _lock = FileLock::exclusive(&store, INDEX_LOCK)?;
            let mut index = store.read_index()?;
            let entries = manifest_entries_mut(&mut index);
            let before = entries.len();
            entries.retain(|v| ref_name(v) != Some(name.as_str()));
            let removed = entries.len() != before;
            if removed {
                store.write_index(&index)?;
            }
            Ok(removed)
        })
        .await
    }

    pub(super) fn ensure_index(&self) -> Result<(), StoreError> {
        let exists = || Ok::<_, StoreError>(self.dir().stat(Path::new(INDEX_FILE))?.is_some());
        if exists()? {
            // Parse once so a corrupt index is reported at open, not halfway through a pull.
            self.read_index().map(drop)
        } else {
            let _lock = FileLock::exclusive(self, INDEX_LOCK)?;
            if exists()? {
                return Ok(());
            }
            self.write_index(&empty_index())
        }
    }

    /// `index.json` as JSON: an object, never read through a symlink.
    pub(crate) fn read_index(&self) -> Result<Value, StoreError> {
        let path = self.root().join(INDEX_FILE);
        let bytes = self
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

    fn write_index(&self, index: &Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| StoreError::io(&self.root().join(INDEX_FILE), io::Error::other(e)))?;
        self.write_atomically(Path::new(INDEX_FILE), &bytes)
    }
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

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            path: std::path::PathBuf::from("index.json"),
            source: io::Error::other(e),
        })?
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

    #[tokio::test]
    async fn set_replace_and_remove_refs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .set_ref(entry("docker.io/library/a:1", 1))
            .await
            .unwrap();
        store
            .set_ref(entry("docker.io/library/b:1", 2))
            .await
            .unwrap();
        store
            .set_ref(entry("docker.io/library/a:1", 3))
            .await
            .unwrap();
        let refs = store.refs().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1], entry("docker.io/library/a:1", 3));
        assert!(store.remove_ref("docker.io/library/b:1").await.unwrap());
        assert!(!store.remove_ref("docker.io/library/b:1").await.unwrap());
        assert_eq!(
            store.refs().unwrap(),
            vec![entry("docker.io/library/a:1", 3)]
        );
    }

    #[tokio::test]
    async fn keeps_what_other_tools_wrote() {
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
        store
            .set_ref(entry("docker.io/library/a:1", 1))
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(store.index_path()).unwrap()).unwrap();
        assert_eq!(v["annotations"]["kept"], "yes");
        assert_eq!(v["manifests"][0]["annotations"]["x"], "y");
        assert_eq!(store.refs().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.set_ref(entry(&format!("docker.io/library/img:{i}"), i))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.refs().unwrap().len(), 16);
    }
}
