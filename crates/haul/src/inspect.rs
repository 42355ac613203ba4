//! Looking at images: finding one in the store by name or image ID, docker's `inspect` and
//! `history` views of it, and a manifest fetched from a registry without pulling anything.
//!
//! An image is named as docker names it: a reference (`alpine` is `docker.io/library/alpine:latest`;
//! `name@digest` also finds the ref that digest was pulled as) or an image ID (the config digest,
//! whole or a unique prefix of at least [`MIN_ID_PREFIX`] hex characters, with or without
//! `sha256:`). A name is tried before an ID, as docker does. Nothing in this module writes: the
//! store is only read, and [`remote_manifest`] never touches it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::images::{ImageSize, LayerSize, image_size, layer_sizes};
use crate::manifest::{self, Descriptor, ImageConfig, ImageManifest, Manifest, ManifestError};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::store::{RefEntry, Store, StoreError};

/// Shorter ID prefixes are refused: they would match too much by accident.
pub const MIN_ID_PREFIX: usize = 4;

/// Why an image or manifest could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// No ref or image ID matches the name given (the payload); docker's text, so scripts
    /// matching on it keep working.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// The ID prefix given (the payload) matches several images.
    #[error("multiple IDs found with provided prefix: {0}")]
    AmbiguousId(String),
    /// The image's manifest or config does not parse, or is not an image's.
    #[error("image {reference}: {source}")]
    Manifest {
        /// The ref or reference concerned.
        reference: String,
        /// What is wrong with the document.
        #[source]
        source: ManifestError,
    },
    /// `index.json` or a blob could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry has no manifest by that tag or digest.
    #[error("no such manifest: {reference}")]
    NoSuchManifest {
        /// The reference asked for.
        reference: String,
        /// The registry's answer.
        #[source]
        source: RegistryError,
    },
    /// The registry could not be reached or refused the request.
    #[error("{reference}: {source}")]
    Registry {
        /// The reference asked for.
        reference: String,
        /// What the registry or the connection said.
        #[source]
        source: RegistryError,
    },
}

/// An image found in the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The config digest: docker's image ID.
    pub id: Digest,
    /// The refs the lookup matched: the one named, or every ref of the image for an ID.
    pub matched: Vec<RefEntry>,
    /// Whether the lookup matched an image ID rather than a name.
    pub by_id: bool,
    /// Every ref in the store naming this image (same config), in index order.
    pub names: Vec<RefEntry>,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// The image config, parsed.
    pub config: ImageConfig,
    /// The config document as stored, for the fields haul does not model.
    pub config_json: Value,
    /// The sizes of the manifest's layers, in its order ([`layer_sizes`]).
    pub layer_sizes: Vec<LayerSize>,
}

/// Finds `image` (a name or an image ID) in the store, as the module documentation describes.
/// Only reads the store.
///
/// # Errors
///
/// [`InspectError::NoSuchImage`] when nothing matches, [`InspectError::AmbiguousId`] for an ID
/// prefix of several images, [`InspectError::Manifest`] or [`InspectError::Store`] when the
/// matched image's manifest or config cannot be read.
pub fn find(store: &Store, image: &str) -> Result<StoredImage, InspectError> {
    // Manifests that cannot be read (refs of other tools, damaged content) are skipped when
    // scanning and reported only when the lookup names them.
    let catalogue: Vec<(RefEntry, Option<ImageManifest>)> = store
        .refs()?
        .into_iter()
        .map(|e| {
            let m = read_manifest(store, &e).ok();
            (e, m)
        })
        .collect();
    let mut matched = image
        .parse::<Reference>()
        .map(|r| name_matches(&catalogue, &r))
        .unwrap_or_default();
    if matched.is_empty() {
        // A name another OCI tool wrote as it is (skopeo's `oci:STORE:mytag` makes `mytag`),
        // found before docker's normalisation sends it elsewhere.
        matched = catalogue
            .iter()
            .position(|(e, _)| e.name == image)
            .into_iter()
            .collect();
    }
    let by_id = matched.is_empty();
    if by_id && let Some(prefix) = id_prefix(image) {
        matched = (0..catalogue.len())
            .filter(|&i| {
                catalogue[i]
                    .1
                    .as_ref()
                    .is_some_and(|m| m.config.digest.hex().starts_with(prefix.as_str()))
            })
            .collect();
        let mut ids: Vec<&Digest> = matched
            .iter()
            .filter_map(|&i| catalogue[i].1.as_ref().map(|m| &m.config.digest))
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() > 1 {
            return Err(InspectError::AmbiguousId(image.to_owned()));
        }
    }
    let Some(&first) = matched.first() else {
        return Err(InspectError::NoSuchImage(image.to_owned()));
    };
    let (entry, manifest) = &catalogue[first];
    let manifest = match manifest {
        Some(m) => m.clone(),
        None => read_manifest(store, entry)?,
    };
    let id = manifest.config.digest.clone();
    // `name@digest` can match refs of several platforms pulled from one index: the first one's
    // image is meant.
    let same_image = |i: &usize| {
        *i == first
            || catalogue[*i]
                .1
                .as_ref()
                .is_some_and(|m| m.config.digest == id)
    };
    let matched: Vec<RefEntry> = matched
        .iter()
        .filter(|i| same_image(i))
        .map(|&i| catalogue[i].0.clone())
        .collect();
    let names: Vec<RefEntry> = (0..catalogue.len())
        .filter(same_image)
        .map(|i| catalogue[i].0.clone())
        .collect();
    let config_bytes = store.read_blob(&id, manifest::MAX_CONFIG_BYTES)?;
    let bad_config = |source| InspectError::Manifest {
        reference: entry.name.clone(),
        source,
    };
    let config = ImageConfig::parse(&config_bytes).map_err(bad_config)?;
    let config_json = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad_config(ManifestError::InvalidConfig(e)))?;
    let layer_sizes = layer_sizes(store, &names, &manifest, &config);
    Ok(StoredImage {
        id,
        matched,
        by_id,
        names,
        manifest,
        config,
        config_json,
        layer_sizes,
    })
}

fn read_manifest(store: &Store, entry: &RefEntry) -> Result<ImageManifest, InspectError> {
    let bytes = store.read_blob(&entry.manifest.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
    let bad = |source| InspectError::Manifest {
        reference: entry.name.clone(),
        source,
    };
    match manifest::parse(Some(&entry.manifest.media_type), &bytes).map_err(bad)? {
        Manifest::Image(m) => Ok(m),
        Manifest::Index(_) => Err(bad(ManifestError::UnsupportedMediaType(
            entry.manifest.media_type.clone(),
        ))),
    }
}

/// Refs named exactly `reference`, else (for `name@digest`) the refs of that repository whose
/// registry digest is `digest`.
fn name_matches(
    catalogue: &[(RefEntry, Option<ImageManifest>)],
    reference: &Reference,
) -> Vec<usize> {
    let full = reference.to_string();
    let exact: Vec<usize> = catalogue
        .iter()
        .enumerate()
        .filter(|(_, (e, _))| e.name == full)
        .map(|(i, _)| i)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    let Some(digest) = reference.digest() else {
        return Vec::new();
    };
    let repository = reference.name();
    catalogue
        .iter()
        .enumerate()
        .filter(|(_, (e, _))| {
            e.name
                .parse::<Reference>()
                .is_ok_and(|r| r.name() == repository)
                && (&e.resolved == digest
                    || &e.manifest.digest == digest
                    || e.source.as_ref() == Some(digest))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The hex prefix of an image ID, if `s` can be one.
fn id_prefix(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    let ok = (MIN_ID_PREFIX..=64).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| hex.to_owned())
}

impl StoredImage {
    /// The image's sizes: unpacked (docker's SIZE, as `haul images` shows it) and compressed.
    #[must_use]
    pub fn size(&self) -> ImageSize {
        image_size(self.manifest.config.size, &self.layer_sizes)
    }

    /// docker's familiar `name:tag` for every tagged ref of the image.
    #[must_use]
    pub fn repo_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .names
            .iter()
            .filter_map(|e| e.name.parse::<Reference>().ok())
            .filter_map(|r| r.tag().map(|t| format!("{}:{t}", r.familiar_name())))
            .collect();
        dedup_keep_order(&mut tags);
        tags
    }

    /// docker's `name@digest`, the digest being what the name resolved to at the registry.
    #[must_use]
    pub fn repo_digests(&self) -> Vec<String> {
        let mut digests: Vec<String> = self
            .names
            .iter()
            .filter_map(|e| {
                let r = e.name.parse::<Reference>().ok()?;
                Some(format!("{}@{}", r.familiar_name(), e.resolved))
            })
            .collect();
        dedup_keep_order(&mut digests);
        digests
    }
}

fn dedup_keep_order(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

/// `docker image inspect`'s view of an image (the fields that exist without a daemon).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    /// The image ID (config digest).
    pub id: Digest,
    /// [`StoredImage::repo_tags`].
    pub repo_tags: Vec<String>,
    /// [`StoredImage::repo_digests`].
    pub repo_digests: Vec<String>,
    /// As the config has it (RFC 3339).
    pub created: String,
    /// The config's `config` object, verbatim.
    pub config: Value,
    /// The config's architecture (`amd64`, `arm64`…).
    pub architecture: String,
    /// The config's CPU variant (`v8`…), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The config's operating system.
    pub os: String,
    /// docker's `Size`: the layers unpacked ([`ImageSize::unpacked`]), in bytes.
    pub size: u64,
    /// The config plus the compressed layers ([`ImageSize::compressed`]), in bytes; haul's own.
    pub compressed_size: u64,
    /// Whether `size` counts some layer compressed, its uncompressed size being unknown; haul's
    /// own.
    pub size_estimated: bool,
    /// The config's `rootfs`.
    #[serde(rename = "RootFS")]
    pub root_fs: RootFsView,
    /// The config's `history`, verbatim.
    pub history: Value,
}

/// The config's `rootfs`, as `docker image inspect` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFsView {
    /// The config's `rootfs.type` (`layers` in every image config the OCI spec allows).
    #[serde(rename = "Type")]
    pub kind: String,
    /// The diff_ids, base layer first.
    pub layers: Vec<Digest>,
}

/// The `inspect` view of `image`.
#[must_use]
pub fn inspect(image: &StoredImage) -> ImageInspect {
    let field = |name: &str| image.config_json.get(name).cloned().unwrap_or(Value::Null);
    let size = image.size();
    ImageInspect {
        id: image.id.clone(),
        repo_tags: image.repo_tags(),
        repo_digests: image.repo_digests(),
        created: image.config.created.clone().unwrap_or_default(),
        config: field("config"),
        architecture: image.config.architecture.clone(),
        variant: image.config.variant.clone(),
        os: image.config.os.clone(),
        size: size.unpacked,
        compressed_size: size.compressed,
        size_estimated: size.estimated,
        root_fs: RootFsView {
            kind: image.config.rootfs.kind.clone(),
            layers: image.config.rootfs.diff_ids.clone(),
        },
        history: match field("history") {
            Value::Null => Value::Array(Vec::new()),
            v => v,
        },
    }
}

/// One row of `docker history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The image ID on the newest entry; `None` (docker's `<missing>`) on the others, which are
    /// not images of their own.
    pub id: Option<Digest>,
    /// When the step ran; `None` when the config does not say or the time does not parse.
    pub created: Option<jiff::Timestamp>,
    /// The command the step ran (empty when unknown).
    pub created_by: String,
    /// The uncompressed size of the layer this step made, as `docker history` shows it (its
    /// compressed size when that is unknown: see `size_estimated`); 0 for steps that made none.
    pub size: u64,
    /// The compressed size of the layer this step made; 0 for steps that made none.
    pub compressed_size: u64,
    /// Whether `size` is the compressed size, the uncompressed one being unknown.
    pub size_estimated: bool,
    /// The step's comment (empty when none).
    pub comment: String,
    /// Whether the step made no layer (docker's `empty_layer`).
    pub empty_layer: bool,
    /// The layer this step made, if any.
    pub layer: Option<Digest>,
}

/// The config's `history` fields haul shows (the typed [`ImageConfig`] leaves `comment` out).
#[derive(Deserialize, Default)]
struct RawHistory {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    empty_layer: bool,
}

/// The image's history, newest first like `docker history`. Steps that made a layer pair in order
/// with the manifest's layers; a config without history gets one row per layer.
#[must_use]
pub fn history(image: &StoredImage) -> Vec<HistoryEntry> {
    let raw: Vec<RawHistory> = image
        .config_json
        .get("history")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default();
    let raw = if raw.is_empty() {
        image
            .manifest
            .layers
            .iter()
            .map(|_| RawHistory {
                created: image.config.created.clone(),
                ..RawHistory::default()
            })
            .collect()
    } else {
        raw
    };
    let mut layers = image.manifest.layers.iter().zip(&image.layer_sizes);
    let mut rows: Vec<HistoryEntry> = raw
        .into_iter()
        .map(|h| {
            let (layer, size) = match h.empty_layer {
                true => (None, None),
                false => layers.next().unzip(),
            };
            HistoryEntry {
                id: None,
                created: h.created.as_deref().and_then(|c| c.parse().ok()),
                created_by: h.created_by.unwrap_or_default(),
                size: size.map_or(0, LayerSize::unpacked_or_compressed),
                compressed_size: size.map_or(0, |s| s.compressed),
                size_estimated: size.is_some_and(|s| s.uncompressed.is_none()),
                comment: h.comment.unwrap_or_default(),
                empty_layer: h.empty_layer,
                layer: layer.map(|l| l.digest.clone()),
            }
        })
        .collect();
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top.id = Some(image.id.clone());
    }
    rows
}

/// A manifest or index as a registry served it.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    /// What was asked for; pinned to the digest for the entries of an index.
    pub reference: Reference,
    /// Media type, digest and size of the bytes (and the platform, for an index entry).
    pub descriptor: Descriptor,
    /// The document exactly as served (what the digest covers).
    pub bytes: Vec<u8>,
    /// The document, parsed.
    pub manifest: Manifest,
}

/// docker's `manifest inspect --verbose` record for one manifest.
#[derive(Debug, Clone, Serialize)]
pub struct VerboseManifest {
    /// The reference, in full (pinned to the digest for an index entry).
    #[serde(rename = "Ref")]
    pub reference: String,
    /// Media type, digest, size (and platform, for an index entry).
    #[serde(rename = "Descriptor")]
    pub descriptor: Descriptor,
    /// The bytes, base64.
    #[serde(rename = "Raw")]
    pub raw: String,
    /// The document, for a Docker schema 2 manifest.
    #[serde(rename = "SchemaV2Manifest", skip_serializing_if = "Option::is_none")]
    pub schema_v2_manifest: Option<Value>,
    /// The document, for anything else (an OCI manifest or index, a Docker manifest list).
    #[serde(rename = "OCIManifest", skip_serializing_if = "Option::is_none")]
    pub oci_manifest: Option<Value>,
}

impl RemoteManifest {
    /// The document parsed as generic JSON (it parsed once already, so this cannot fail on data a
    /// registry sent; an error here would mean the bytes changed).
    ///
    /// # Errors
    ///
    /// The JSON error, should [`bytes`](Self::bytes) have been changed into something else.
    pub fn document(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }

    /// Whether this is an index (or Docker manifest list) rather than an image manifest.
    #[must_use]
    pub fn is_index(&self) -> bool {
        matches!(self.manifest, Manifest::Index(_))
    }

    /// The entries of an index that are image manifests, in index order (empty for a manifest).
    #[must_use]
    pub fn entries(&self) -> Vec<&Descriptor> {
        match &self.manifest {
            Manifest::Index(index) => index
                .manifests
                .iter()
                .filter(|d| manifest::media_type::is_image_manifest(&d.media_type))
                .collect(),
            Manifest::Image(_) => Vec::new(),
        }
    }

    /// docker's verbose record: reference, descriptor, base64 bytes and the parsed document.
    ///
    /// # Errors
    ///
    /// As [`document`](Self::document).
    pub fn verbose(&self) -> Result<VerboseManifest, serde_json::Error> {
        let doc = self.document()?;
        let mt = self.descriptor.media_type.as_str();
        let mut v = VerboseManifest {
            reference: self.reference.to_string(),
            descriptor: self.descriptor.clone(),
            raw: base64::engine::general_purpose::STANDARD.encode(&self.bytes),
            schema_v2_manifest: None,
            oci_manifest: None,
        };
        if mt == manifest::media_type::DOCKER_MANIFEST {
            v.schema_v2_manifest = Some(doc);
        } else {
            v.oci_manifest = Some(doc);
        }
        Ok(v)
    }
}

/// Fetches the manifest or index `reference` names from its registry: a GET by tag or digest
/// (capped, and checked against the digest when there is one). No blob is fetched and the store is
/// not touched, so this works for images that were never pulled.
///
/// # Errors
///
/// [`InspectError::NoSuchManifest`] when the registry has no such manifest,
/// [`InspectError::Registry`] when it cannot be reached or refuses, [`InspectError::Manifest`]
/// when what it serves is not a manifest or index haul reads.
pub async fn remote_manifest(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<RemoteManifest, InspectError> {
    let label = match reference.digest() {
        Some(d) => d.to_string(),
        None => reference.tag_or_default().to_owned(),
    };
    fetch(client, reference, &label, None).await
}

/// Fetches every image manifest an index lists, by digest, each described by its index entry
/// (platform and annotations kept), in index order. Fetches run concurrently.
///
/// # Errors
///
/// The first error of any fetch, as [`remote_manifest`]'s.
pub async fn remote_entries(
    client: &RegistryClient,
    index: &RemoteManifest,
) -> Result<Vec<RemoteManifest>, InspectError> {
    let fetches = index.entries().into_iter().map(|entry| {
        let pinned = index.reference.with_digest(entry.digest.clone());
        async move {
            fetch(
                client,
                &pinned,
                &entry.digest.to_string(),
                Some(entry.clone()),
            )
            .await
        }
    });
    futures_util::future::try_join_all(fetches).await
}

async fn fetch(
    client: &RegistryClient,
    reference: &Reference,
    label: &str,
    entry: Option<Descriptor>,
) -> Result<RemoteManifest, InspectError> {
    let repo = client.repository(reference);
    let fetched = repo
        .get_manifest(label)
        .await
        .map_err(|source| match source {
            RegistryError::ManifestUnknown { .. } => InspectError::NoSuchManifest {
                reference: reference.to_string(),
                source,
            },
            source => InspectError::Registry {
                reference: reference.to_string(),
                source,
            },
        })?;
    let manifest =
        manifest::parse(fetched.content_type.as_deref(), &fetched.bytes).map_err(|source| {
            InspectError::Manifest {
                reference: reference.to_string(),
                source,
            }
        })?;
    let media_type = fetched
        .content_type
        .as_deref()
        .map(manifest::media_type::essence)
        .filter(|mt| mt.starts_with("application/vnd."))
        .map(str::to_owned)
        .or_else(|| match &manifest {
            Manifest::Image(m) => m.media_type.clone(),
            Manifest::Index(i) => i.media_type.clone(),
        })
        .unwrap_or_else(|| match &manifest {
            Manifest::Image(_) => manifest::media_type::OCI_MANIFEST.to_owned(),
            Manifest::Index(_) => manifest::media_type::OCI_INDEX.to_owned(),
        });
    let mut descriptor = Descriptor::new(&media_type, fetched.digest, fetched.bytes.len() as u64);
    if let Some(entry) = entry {
        descriptor.platform = entry.platform;
        descriptor.annotations = entry.annotations;
    }
    Ok(RemoteManifest {
        reference: reference.clone(),
        descriptor,
        bytes: fetched.bytes,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_prefixes() {
        let full = "a".repeat(64);
        for (input, want) in [
            ("abcd", Some("abcd")),
            ("sha256:abcd", Some("abcd")),
            (full.as_str(), Some(full.as_str())),
            ("abc", None),
            ("ABCD", None),
            ("abcg", None),
            ("sha512:abcd", None),
            ("alpine", None),
        ] {
            assert_eq!(id_prefix(input).as_deref(), want, "{input}");
        }
        assert_eq!(id_prefix(&"a".repeat(65)), None);
    }
}
