//! Manifests, indexes and image configs: media types, parsing and platform selection.
//!
//! Raw bytes are the source of truth: a manifest is stored and hashed exactly as the registry sent it,
//! and these types are parsed views used to find descriptors, diff_ids and platforms. Nothing here
//! serialises a manifest back, so no field can be lost or reordered on the way to the store.
//! [`parse`] accepts OCI and Docker schema 2 manifests and indexes, refuses schema 1 and anything
//! unknown with an error that says which, and never reads more than [`MAX_MANIFEST_BYTES`].
//!
//! ```
//! use haul::manifest::{self, Manifest, media_type};
//!
//! let body = br#"{"schemaVersion": 2,
//!   "mediaType": "application/vnd.oci.image.index.v1+json",
//!   "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 7,
//!     "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
//!     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}"#;
//! let Manifest::Index(index) = manifest::parse(Some(media_type::OCI_INDEX), body)? else {
//!     panic!("an index");
//! };
//! let entry = index.select(&"linux/aarch64".parse()?)?;
//! assert_eq!(entry.size, 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::{self, Platform};

/// Registries serve manifests of a few KiB; containerd and skopeo cap them near 4 MiB, and so do we,
/// so a hostile registry cannot make us buffer an unbounded document.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Image configs are larger than manifests (history, labels) but still small; a cap keeps a hostile
/// config from being read into memory whole.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The media types haul knows, and what kind of document each names. Comparisons are exact:
/// strip a `Content-Type`'s parameters with [`essence`](media_type::essence) first.
pub mod media_type {
    /// An OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip-compressed OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A zstd-compressed OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// An uncompressed OCI layer that registries may decline to serve (fetched from `urls`).
    pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// A gzip-compressed non-distributable OCI layer.
    pub const OCI_LAYER_NONDIST_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// A zstd-compressed non-distributable OCI layer.
    pub const OCI_LAYER_NONDIST_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// A Docker manifest list (schema 2): Docker's index.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker image manifest (schema 2).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker's uncompressed layer, which docker and containerd pull like the gzip one.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker's gzip-compressed layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker's foreign layer (Windows base layers), fetched from its `urls`.
    pub const DOCKER_LAYER_FOREIGN: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// Docker schema 1, unsigned: refused.
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker schema 1, signed: refused.
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// What haul asks registries for, most preferred first.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";

    /// Whether `mt` is an index (OCI's or Docker's manifest list).
    #[must_use]
    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_LIST
    }

    /// Whether `mt` is an image manifest (OCI's or Docker schema 2's).
    #[must_use]
    pub fn is_image_manifest(mt: &str) -> bool {
        mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
    }

    /// Whether `mt` is Docker schema 1, signed or not.
    #[must_use]
    pub fn is_schema1(mt: &str) -> bool {
        mt == DOCKER_SCHEMA1 || mt == DOCKER_SCHEMA1_SIGNED
    }

    /// Whether `mt` is an image config (OCI's or Docker's).
    #[must_use]
    pub fn is_config(mt: &str) -> bool {
        mt == OCI_CONFIG || mt == DOCKER_CONFIG
    }

    /// Whether `mt` is a layer haul can unpack: uncompressed, gzip or zstd, distributable or not.
    #[must_use]
    pub fn is_layer(mt: &str) -> bool {
        matches!(
            mt,
            OCI_LAYER
                | OCI_LAYER_GZIP
                | OCI_LAYER_ZSTD
                | OCI_LAYER_NONDIST
                | OCI_LAYER_NONDIST_GZIP
                | OCI_LAYER_NONDIST_ZSTD
                | DOCKER_LAYER
                | DOCKER_LAYER_GZIP
                | DOCKER_LAYER_FOREIGN
        )
    }

    /// Layers that registries may decline to serve and that point at their `urls` instead:
    /// Docker's foreign layers and OCI's non-distributable ones. Only these are fetched from
    /// `urls`.
    #[must_use]
    pub fn is_non_distributable(mt: &str) -> bool {
        matches!(
            mt,
            OCI_LAYER_NONDIST
                | OCI_LAYER_NONDIST_GZIP
                | OCI_LAYER_NONDIST_ZSTD
                | DOCKER_LAYER_FOREIGN
        )
    }

    /// `Content-Type` without parameters such as `; charset=utf-8`.
    #[must_use]
    pub fn essence(content_type: &str) -> &str {
        content_type.split(';').next().unwrap_or("").trim()
    }
}

/// Where an index entry comes from Docker's build attestations rather than an image.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

/// An OCI content descriptor (also the shape of Docker schema 2's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is (see [`media_type`]).
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// At most `i64::MAX`, as the OCI spec (an int64) and every other client have it.
    #[serde(deserialize_with = "spec_size")]
    pub size: u64,
    /// Where else the content may be fetched from: only used for non-distributable layers
    /// ([`media_type::is_non_distributable`]), and only where the configuration allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations, as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type of an index entry (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// A descriptor's `size`: a non-negative int64. Larger values can only be a registry probing for
/// overflows in whatever adds sizes up.
fn spec_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let size = u64::deserialize(d)?;
    if size > i64::MAX as u64 {
        return Err(serde::de::Error::custom(format!(
            "size {size} is larger than the largest the OCI spec allows ({})",
            i64::MAX
        )));
    }
    Ok(size)
}

impl Descriptor {
    /// A descriptor of `size` bytes of `media_type` content, without URLs, annotations or
    /// platform.
    #[must_use]
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }
}

/// An image manifest (OCI, or Docker schema 2 which has the same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2 for what [`parse`] accepts.
    pub schema_version: u32,
    /// The media type the document declares, if it does.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations, as written.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI, or Docker's manifest list): one manifest per platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2 for what [`parse`] accepts.
    pub schema_version: u32,
    /// The media type the document declares, if it does.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Every entry, attestations included ([`ImageIndex::image_entries`] leaves them out).
    pub manifests: Vec<Descriptor>,
    /// Annotations, as written.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest: either one image or an index of them.
// One value per pull step: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Manifest {
    /// One image.
    Image(ImageManifest),
    /// An index of images.
    Index(ImageIndex),
}

/// Why a manifest, an index or an image config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Docker schema 1, which haul does not pull (nor do current docker versions).
    #[error(
        "this image uses the Docker schema 1 manifest format ({media_type}), which haul does not \
         support; ask the publisher to push it again with a current Docker or buildkit \
         (schema 2 or OCI)"
    )]
    Schema1 {
        /// The media type served or declared.
        media_type: String,
    },
    /// A media type that is neither a manifest nor an index (empty when neither the server nor
    /// the document says, and the shape does not tell).
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(
        /// The media type.
        String,
    ),
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Not valid JSON for what it claims to be.
    #[error("manifest is not valid JSON for {kind}: {source}")]
    Invalid {
        /// What it was read as: `a manifest`, `an image index`, `an image manifest`.
        kind: &'static str,
        /// Where and why parsing stopped.
        #[source]
        source: serde_json::Error,
    },
    /// The served `Content-Type` and the document's `mediaType` disagree.
    #[error("manifest declares media type {body:?} but was served as {header:?}")]
    ConflictingMediaType {
        /// The `Content-Type`.
        header: String,
        /// The document's `mediaType`.
        body: String,
    },
    /// A manifest whose config is not an image config: an artifact (a helm chart, a signature…).
    #[error(
        "{media_type:?} is not a container image config (the artifact may be a helm chart, a \
         signature or an attestation, which `haul pull` does not unpack)"
    )]
    NotAnImage {
        /// The config's media type.
        media_type: String,
    },
    /// A layer of a type haul cannot unpack.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayer(
        /// The layer's media type.
        String,
    ),
    /// The config is larger than [`MAX_CONFIG_BYTES`].
    #[error("the image config declares {size} bytes, more than the {limit} haul accepts")]
    ConfigTooLarge {
        /// The size declared, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The image config is not valid JSON for a config.
    #[error("image config is not valid: {0}")]
    InvalidConfig(
        /// Where and why parsing stopped.
        #[source]
        serde_json::Error,
    ),
    /// The config's diff_ids and the manifest's layers do not pair up.
    #[error("image config lists {diff_ids} layer diff_ids but the manifest has {layers} layers")]
    LayerCountMismatch {
        /// diff_ids in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// The index has no image for the platform asked for.
    #[error(
        "no matching manifest for {wanted} in the manifest list entries (the image has: {available})"
    )]
    NoMatchingPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms the index has, comma-separated.
        available: String,
    },
}

/// The fields every manifest kind shares, read before deciding what the document is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Parses a manifest or index, dispatching on the served `Content-Type` and the body's `mediaType`.
///
/// Registries and proxies sometimes serve manifests as `application/json` or
/// `application/octet-stream`; those are treated as "unknown" and the body decides.
///
/// # Errors
///
/// Schema 1, an unknown media type, a media type that disagrees with the body, more than
/// [`MAX_MANIFEST_BYTES`], or JSON that is not the document it claims to be.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let header = content_type.map(media_type::essence).filter(|mt| {
        !matches!(
            *mt,
            "" | "application/json" | "application/octet-stream" | "text/plain"
        )
    });
    if let Some(mt) = header
        && media_type::is_schema1(mt)
    {
        return Err(ManifestError::Schema1 {
            media_type: mt.to_owned(),
        });
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Invalid {
        kind: "a manifest",
        source,
    })?;
    if probe.schema_version == Some(1) {
        return Err(ManifestError::Schema1 {
            media_type: header
                .map(str::to_owned)
                .or(probe.media_type)
                .unwrap_or_else(|| media_type::DOCKER_SCHEMA1_SIGNED.to_owned()),
        });
    }
    if let (Some(h), Some(b)) = (header, probe.media_type.as_deref())
        && h != b
    {
        return Err(ManifestError::ConflictingMediaType {
            header: h.to_owned(),
            body: b.to_owned(),
        });
    }
    let declared = header.or(probe.media_type.as_deref());
    let is_index = match declared {
        Some(mt) if media_type::is_index(mt) => true,
        Some(mt) if media_type::is_image_manifest(mt) => false,
        Some(mt) if media_type::is_schema1(mt) => {
            return Err(ManifestError::Schema1 {
                media_type: mt.to_owned(),
            });
        }
        Some(mt) => return Err(ManifestError::UnsupportedMediaType(mt.to_owned())),
        // OCI allows omitting mediaType; the shape decides.
        None if probe.manifests.is_some() => true,
        None if probe.config.is_some() => false,
        None => return Err(ManifestError::UnsupportedMediaType(String::new())),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Manifest::Index)
            .map_err(|source| ManifestError::Invalid {
                kind: "an image index",
                source,
            })
    } else {
        serde_json::from_slice(bytes)
            .map(Manifest::Image)
            .map_err(|source| ManifestError::Invalid {
                kind: "an image manifest",
                source,
            })
    }
}

impl ImageManifest {
    /// Refuses manifests haul cannot turn into an image: non-image configs, unknown layer types.
    ///
    /// # Errors
    ///
    /// [`ManifestError::NotAnImage`], [`ManifestError::UnsupportedLayer`] or
    /// [`ManifestError::ConfigTooLarge`].
    pub fn check_is_image(&self) -> Result<(), ManifestError> {
        if !media_type::is_config(&self.config.media_type) {
            return Err(ManifestError::NotAnImage {
                media_type: self.config.media_type.clone(),
            });
        }
        if let Some(bad) = self
            .layers
            .iter()
            .find(|l| !media_type::is_layer(&l.media_type))
        {
            return Err(ManifestError::UnsupportedLayer(bad.media_type.clone()));
        }
        if self.config.size > MAX_CONFIG_BYTES {
            return Err(ManifestError::ConfigTooLarge {
                size: self.config.size,
                limit: MAX_CONFIG_BYTES,
            });
        }
        Ok(())
    }
}

impl ImageIndex {
    /// Entries that are images: attestations and nested artifacts are left out.
    pub fn image_entries(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests.iter().filter(|d| {
            media_type::is_image_manifest(&d.media_type)
                && !d.annotations.contains_key(REFERENCE_TYPE_ANNOTATION)
        })
    }

    /// The entry for `wanted` by containerd's ordered rules, or an error listing what the index has.
    ///
    /// # Errors
    ///
    /// [`ManifestError::NoMatchingPlatform`] when no image entry fits `wanted`.
    pub fn select(&self, wanted: &Platform) -> Result<&Descriptor, ManifestError> {
        let entries: Vec<&Descriptor> = self
            .image_entries()
            .filter(|d| d.platform.is_some())
            .collect();
        let best = platform::best_match(wanted, entries.iter().filter_map(|d| d.platform.as_ref()));
        if let Some(i) = best {
            return Ok(entries[i]);
        }
        let mut available: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect();
        available.dedup();
        Err(ManifestError::NoMatchingPlatform {
            wanted: wanted.to_string(),
            available: if available.is_empty() {
                "no platforms".to_owned()
            } else {
                available.join(", ")
            },
        })
    }
}

/// Rewrites a Docker schema 2 manifest with OCI media types (config and layers are the same bytes
/// under OCI's names), so OCI tools such as skopeo and umoci can read the store. Returns `None` for
/// a manifest that is already OCI. The original document is kept as well: its digest is the
/// image's identity at the registry.
///
/// # Errors
///
/// `bytes` are not JSON.
pub fn docker_to_oci(bytes: &[u8]) -> Result<Option<Vec<u8>>, ManifestError> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Invalid {
            kind: "an image manifest",
            source,
        })?;
    if doc.get("mediaType").and_then(|m| m.as_str()) != Some(media_type::DOCKER_MANIFEST) {
        return Ok(None);
    }
    doc["mediaType"] = media_type::OCI_MANIFEST.into();
    // Indexing a non-object `Value` mutably panics; a document whose config is not an object is
    // left for `parse` to refuse.
    if let Some(config) = doc.get_mut("config").and_then(|c| c.as_object_mut()) {
        config.insert("mediaType".to_owned(), media_type::OCI_CONFIG.into());
    }
    if let Some(layers) = doc.get_mut("layers").and_then(|l| l.as_array_mut()) {
        for layer in layers {
            let oci = match layer.get("mediaType").and_then(|m| m.as_str()) {
                Some(media_type::DOCKER_LAYER_FOREIGN) => media_type::OCI_LAYER_NONDIST_GZIP,
                Some(media_type::DOCKER_LAYER_GZIP) => media_type::OCI_LAYER_GZIP,
                Some(media_type::DOCKER_LAYER) => media_type::OCI_LAYER,
                _ => continue,
            };
            layer["mediaType"] = oci.into();
        }
    }
    serde_json::to_vec(&doc)
        .map(Some)
        .map_err(|source| ManifestError::Invalid {
            kind: "an image manifest",
            source,
        })
}

/// The parts of an image config haul reads. The config blob itself is kept verbatim.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// The CPU architecture the image was built for (empty when the config does not say).
    #[serde(default)]
    pub architecture: String,
    /// The operating system (empty when the config does not say).
    #[serde(default)]
    pub os: String,
    /// The CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// When the image was built, as written (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// The layers' uncompressed digests.
    #[serde(default)]
    pub rootfs: RootFs,
    /// How the image was built, step by step.
    #[serde(default)]
    pub history: Vec<History>,
}

/// An image config's `rootfs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Always `layers` in practice.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The digest of each layer uncompressed, base first: what unpacking verifies.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// One step of an image's build history.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct History {
    /// When, as written (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// The instruction (`/bin/sh -c #(nop) CMD ["sh"]`).
    #[serde(default)]
    pub created_by: Option<String>,
    /// The step made no layer.
    #[serde(default)]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Parses an image config blob.
    ///
    /// # Errors
    ///
    /// [`ManifestError::InvalidConfig`] for JSON that is not an image config.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        serde_json::from_slice(bytes).map_err(ManifestError::InvalidConfig)
    }

    /// The diff_ids must pair one-to-one with the manifest's layers, or unpacking cannot verify them.
    ///
    /// # Errors
    ///
    /// [`ManifestError::LayerCountMismatch`].
    pub fn check_layers(&self, manifest: &ImageManifest) -> Result<(), ManifestError> {
        if self.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ManifestError::LayerCountMismatch {
                diff_ids: self.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        Ok(())
    }

    /// `created` as a time, when it parses.
    // Returns a `jiff` type, which is not part of haul's API (jiff is not 1.0 yet): callers read
    // `created`. Reachable from outside only for the property tests in `tests/parsers_prop.rs`.
    #[doc(hidden)]
    #[must_use]
    pub fn created_at(&self) -> Option<jiff::Timestamp> {
        self.created.as_deref().and_then(|s| s.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `parsers_prop`: `config["mediaType"] = …` on a non-object config panicked.
    #[test]
    fn docker_to_oci_of_a_manifest_whose_config_is_not_an_object_does_not_panic() {
        for config in ["false", "[]", "\"x\"", "7"] {
            let body = format!(
                r#"{{"mediaType":"{}","config":{config}}}"#,
                media_type::DOCKER_MANIFEST
            );
            let oci = docker_to_oci(body.as_bytes()).unwrap().unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&oci).unwrap();
            assert_eq!(doc["mediaType"], media_type::OCI_MANIFEST, "{body}");
            assert!(parse(None, body.as_bytes()).is_err(), "{body}");
        }
    }

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn image_json(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":20}}]}}"#,
            media_type::OCI_CONFIG,
            d(1),
            media_type::OCI_LAYER_GZIP,
            d(2)
        )
    }

    fn index_json(entries: &[(&str, &str, Option<&str>)]) -> String {
        let manifests: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let v = variant
                    .map(|v| format!(r#","variant":"{v}""#))
                    .unwrap_or_default();
                format!(
                    r#"{{"mediaType":"{}","digest":"{}","size":5,"platform":{{"os":"{os}","architecture":"{arch}"{v}}}}}"#,
                    media_type::OCI_MANIFEST,
                    d(i as u8 + 10)
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            media_type::OCI_INDEX,
            manifests.join(",")
        )
    }

    #[test]
    fn dispatches_on_header_then_body_then_shape() {
        let body = image_json(Some(media_type::OCI_MANIFEST));
        for ct in [
            Some(media_type::OCI_MANIFEST),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            Some("application/json"),
            None,
        ] {
            assert!(
                matches!(parse(ct, body.as_bytes()), Ok(Manifest::Image(_))),
                "{ct:?}"
            );
        }
        let bare = image_json(None);
        assert!(matches!(
            parse(None, bare.as_bytes()),
            Ok(Manifest::Image(_))
        ));
        let idx = index_json(&[("linux", "amd64", None)]);
        assert!(matches!(
            parse(None, idx.as_bytes()),
            Ok(Manifest::Index(_))
        ));
        assert!(matches!(
            parse(Some(media_type::DOCKER_MANIFEST), body.as_bytes()),
            Err(ManifestError::ConflictingMediaType { .. })
        ));
    }

    #[test]
    fn refuses_schema1_unknown_and_oversized() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = parse(Some(media_type::DOCKER_SCHEMA1_SIGNED), s1.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(matches!(
            parse(None, s1.as_bytes()),
            Err(ManifestError::Schema1 { .. })
        ));
        assert!(matches!(
            parse(Some("application/vnd.example+json"), b"{}"),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            parse(None, &big),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(None, b"not json"),
            Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn refuses_artifacts_and_unknown_layers() {
        let helm = image_json(None).replace(
            media_type::OCI_CONFIG,
            "application/vnd.cncf.helm.config.v1+json",
        );
        let Manifest::Image(m) = parse(None, helm.as_bytes()).unwrap() else {
            panic!("not an image")
        };
        assert!(matches!(
            m.check_is_image(),
            Err(ManifestError::NotAnImage { .. })
        ));
        let odd = image_json(None).replace(media_type::OCI_LAYER_GZIP, "application/x-odd");
        let Manifest::Image(m) = parse(None, odd.as_bytes()).unwrap() else {
            panic!("not an image")
        };
        assert!(matches!(
            m.check_is_image(),
            Err(ManifestError::UnsupportedLayer(_))
        ));
        let huge = image_json(None).replace(r#""size":10"#, r#""size":999999999"#);
        let Manifest::Image(m) = parse(None, huge.as_bytes()).unwrap() else {
            panic!("not an image")
        };
        assert!(matches!(
            m.check_is_image(),
            Err(ManifestError::ConfigTooLarge { .. })
        ));
    }

    #[test]
    fn selects_platform_and_lists_the_alternatives() {
        let idx = index_json(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
        ]);
        let Manifest::Index(index) = parse(None, idx.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(index.select(&arm64).unwrap().digest.to_string(), d(12));
        let armv7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(index.select(&armv7).unwrap().digest.to_string(), d(11));
        let s390x: Platform = "linux/s390x".parse().unwrap();
        let err = index.select(&s390x).unwrap_err().to_string();
        assert!(
            err.contains("no matching manifest for linux/s390x"),
            "{err}"
        );
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn descriptor_sizes_beyond_int64_are_refused() {
        let manifest = |size: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":1}},
                "layers":[{{"mediaType":"{}","digest":"{}","size":{size}}}]}}"#,
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                d(1),
                media_type::OCI_LAYER_GZIP,
                d(2),
            )
        };
        assert!(parse(None, manifest("9223372036854775807").as_bytes()).is_ok());
        for bad in [
            "9223372036854775808",
            "18446744073709551615",
            "-1",
            "1e300",
            "1.5",
        ] {
            let err = match parse(None, manifest(bad).as_bytes()) {
                Ok(_) => panic!("size {bad} accepted"),
                Err(e) => e,
            };
            assert!(matches!(err, ManifestError::Invalid { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn skips_attestation_entries() {
        let mut idx: serde_json::Value = serde_json::from_str(&index_json(&[
            ("linux", "amd64", None),
            ("linux", "amd64", None),
        ]))
        .unwrap();
        idx["manifests"][0]["annotations"] =
            serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
        let Manifest::Index(index) = parse(None, idx.to_string().as_bytes()).unwrap() else {
            panic!("not an index")
        };
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(index.select(&amd64).unwrap().digest.to_string(), d(11));
    }

    #[test]
    fn docker_manifests_convert_to_oci_names() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":1}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":2}},{{"mediaType":"{}","digest":"{}","size":3,"urls":["https://x/y"]}},{{"mediaType":"{}","digest":"{}","size":4}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            d(1),
            media_type::DOCKER_LAYER_GZIP,
            d(2),
            media_type::DOCKER_LAYER_FOREIGN,
            d(3),
            media_type::DOCKER_LAYER,
            d(4)
        );
        let oci = docker_to_oci(docker.as_bytes()).unwrap().unwrap();
        let Manifest::Image(m) = parse(None, &oci).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(m.media_type.as_deref(), Some(media_type::OCI_MANIFEST));
        assert_eq!(m.config.media_type, media_type::OCI_CONFIG);
        assert_eq!(m.config.digest.to_string(), d(1));
        assert_eq!(m.layers[0].media_type, media_type::OCI_LAYER_GZIP);
        assert_eq!(m.layers[1].media_type, media_type::OCI_LAYER_NONDIST_GZIP);
        assert_eq!(m.layers[1].urls, vec!["https://x/y".to_owned()]);
        assert_eq!(m.layers[2].media_type, media_type::OCI_LAYER);
        m.check_is_image().unwrap();
        assert!(
            docker_to_oci(image_json(Some(media_type::OCI_MANIFEST)).as_bytes())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn config_diff_ids_must_pair_with_layers() {
        let Manifest::Image(m) = parse(None, image_json(None).as_bytes()).unwrap() else {
            panic!("not an image")
        };
        let ok = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d(3)
        );
        let config = ImageConfig::parse(ok.as_bytes()).unwrap();
        config.check_layers(&m).unwrap();
        assert_eq!(
            config.created_at().unwrap().to_string(),
            "2024-01-01T00:00:00Z"
        );
        let none = ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert!(matches!(
            none.check_layers(&m),
            Err(ManifestError::LayerCountMismatch {
                diff_ids: 0,
                layers: 1
            })
        ));
    }
}
