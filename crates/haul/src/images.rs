//! Listing what the store holds, in the shape of `docker images`.
//!
//! One row per image and name (see [`list`]). The image ID is the config digest (as in docker); the digest is what the name
//! resolved to at the registry (docker's "repo digest"). Rows come newest first by the config's
//! `created`.
//!
//! Sizes ([`ImageSize`], [`LayerSize`]) are docker's: an image's size is its layers unpacked, the
//! sum of their uncompressed tars (what podman shows too, and what docker's classic store shows up
//! to tar's headers and padding), and its compressed size (config plus compressed layers, what it
//! takes in `blobs/`) is kept beside it. A layer's uncompressed size comes, cheapest first, from
//! the ref's [`LAYER_SIZES_ANNOTATION`] (written by the pull from the extraction it made), from
//! the layer itself when it is an uncompressed tar, or from its layer-cache entry. A layer none of
//! them knows (an image pulled with `--no-unpack`, by an older haul, or written by another tool,
//! and never unpacked) counts with its compressed size, and the size says it is an estimate:
//! nothing here decompresses a layer.

use std::collections::HashSet;

use serde::Serialize;

use crate::digest::Digest;
use crate::manifest::{self, ImageConfig, ImageManifest, Manifest};
use crate::reference::Reference;
use crate::store::{RefEntry, Store, StoreError};
use crate::unpack::cache::cache_keys;
use crate::unpack::stream::Compression;

/// The annotation on a ref in `index.json` recording the uncompressed size of each of its image's
/// layers, in manifest order, comma-separated; a slot is empty where the size is not known. OCI
/// tools ignore it; a value that does not fit the manifest is ignored.
pub const LAYER_SIZES_ANNOTATION: &str = "dev.haul.layer-sizes";

/// One layer's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LayerSize {
    /// The blob's size, as the manifest declares it (and the store verified).
    pub compressed: u64,
    /// The size of the layer's uncompressed tar, when known without decompressing it.
    pub uncompressed: Option<u64>,
}

impl LayerSize {
    /// The uncompressed size, else the compressed one.
    #[must_use]
    pub fn unpacked_or_compressed(&self) -> u64 {
        self.uncompressed.unwrap_or(self.compressed)
    }
}

/// An image's sizes, as [`image_size`] adds them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[non_exhaustive]
pub struct ImageSize {
    /// docker's SIZE: the image's layers unpacked (the sum of their uncompressed tars); a layer
    /// whose uncompressed size is unknown counts with its compressed size (see `estimated`).
    pub unpacked: u64,
    /// The image's content in the store: its config plus its compressed layers.
    pub compressed: u64,
    /// Whether some layer's uncompressed size is unknown, so `unpacked` is an estimate.
    pub estimated: bool,
}

/// Adds up an image's sizes: its config's size and its layers' ([`layer_sizes`]).
#[must_use]
pub fn image_size(config_size: u64, layers: &[LayerSize]) -> ImageSize {
    let sum = |f: fn(&LayerSize) -> u64| layers.iter().map(f).fold(0u64, u64::saturating_add);
    ImageSize {
        unpacked: sum(LayerSize::unpacked_or_compressed),
        compressed: config_size.saturating_add(sum(|l| l.compressed)),
        estimated: layers.iter().any(|l| l.uncompressed.is_none()),
    }
}

/// The sizes of `manifest`'s layers, from what the store knows without decompressing anything
/// (see the module documentation); `refs` are the image's refs, whose annotations are read.
#[must_use]
pub fn layer_sizes(
    store: &Store,
    refs: &[RefEntry],
    manifest: &ImageManifest,
    config: &ImageConfig,
) -> Vec<LayerSize> {
    let recorded = refs
        .iter()
        .find_map(|r| parse_recorded(r, manifest.layers.len()))
        .unwrap_or_default();
    let keys = cache_keys(&config.rootfs.diff_ids);
    manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let known = recorded.get(i).copied().flatten().or_else(|| {
                let diff_id = config.rootfs.diff_ids.get(i)?;
                known_uncompressed(store, &layer.media_type, layer.size, diff_id, keys.get(i)?)
            });
            LayerSize {
                compressed: layer.size,
                uncompressed: known,
            }
        })
        .collect()
}

/// A layer's uncompressed size when it is an uncompressed tar (its own size) or its layer-cache
/// entry says (the entry's diff_id must be the layer's).
pub(crate) fn known_uncompressed(
    store: &Store,
    media_type: &str,
    size: u64,
    diff_id: &Digest,
    chain_id: &Digest,
) -> Option<u64> {
    if Compression::from_media_type(media_type) == Some(Compression::None) {
        return Some(size);
    }
    store
        .layers()
        .entry(chain_id)
        .filter(|cached| &cached.meta.diff_id == diff_id)
        .map(|cached| cached.meta.uncompressed_bytes)
}

/// The [`LAYER_SIZES_ANNOTATION`] value for `sizes`; `None` when no size is known.
pub(crate) fn encode_recorded(sizes: &[Option<u64>]) -> Option<String> {
    if sizes.iter().all(Option::is_none) {
        return None;
    }
    let slots: Vec<String> = sizes
        .iter()
        .map(|s| s.map(|n| n.to_string()).unwrap_or_default())
        .collect();
    Some(slots.join(","))
}

/// The sizes a ref records for its `layers` layers; `None` without the annotation or when it does
/// not fit (another count, something not a number).
pub(crate) fn parse_recorded(entry: &RefEntry, layers: usize) -> Option<Vec<Option<u64>>> {
    let value = entry.manifest.annotations.get(LAYER_SIZES_ANNOTATION)?;
    let slots: Vec<Option<u64>> = value
        .split(',')
        .map(|s| {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some)
            }
        })
        .collect::<Result<_, _>>()
        .ok()?;
    (slots.len() == layers).then_some(slots)
}

/// One row of `haul images`: an image under one of its names.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// The full reference the image is stored under.
    pub reference: String,
    /// docker's familiar repository name (`alpine`, `127.0.0.1:5000/team/app`).
    pub repository: String,
    /// `None` for images pulled by digest only.
    pub tag: Option<String>,
    /// What the name resolved to at the registry (docker's repo digest): the index for a
    /// multi-platform image, else the manifest.
    pub digest: Digest,
    /// The config digest: docker's image ID.
    pub image_id: Digest,
    /// The config's `created` time; `None` when it has none or it does not parse.
    pub created: Option<jiff::Timestamp>,
    /// docker's SIZE: the layers unpacked ([`ImageSize::unpacked`]).
    pub size: u64,
    /// The config plus the compressed layers ([`ImageSize::compressed`]).
    pub compressed_size: u64,
    /// Whether `size` counts some layer compressed, its uncompressed size being unknown.
    pub size_estimated: bool,
}

/// Why the store could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// `index.json` or a blob could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A ref's manifest or config is not a valid document.
    #[error("image {reference}: {source}")]
    Manifest {
        /// The ref, in full.
        reference: String,
        /// What is wrong with the document.
        #[source]
        source: manifest::ManifestError,
    },
}

/// Lists every ref, or those matching `filter` (a repository, optionally with a tag), newest
/// first. Refs other tools wrote under names that are not docker references, and refs to an
/// index, are left out.
///
/// # Errors
///
/// [`ImagesError`] when `index.json`, or a listed image's manifest or config, cannot be read or
/// parsed: one damaged image fails the listing rather than going missing from it.
pub fn list(store: &Store, filter: Option<&Reference>) -> Result<Vec<ImageSummary>, ImagesError> {
    let mut rows = Vec::new();
    for entry in store.refs()? {
        let Ok(reference) = entry.name.parse::<Reference>() else {
            // Written by another OCI tool with a name that is not a docker reference.
            continue;
        };
        if let Some(f) = filter {
            if f.name() != reference.name() {
                continue;
            }
            if f.tag().is_some() && f.tag() != reference.tag() {
                continue;
            }
        }
        let bytes = store.read_blob(&entry.manifest.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
        let manifest = match manifest::parse(Some(&entry.manifest.media_type), &bytes) {
            Ok(Manifest::Image(m)) => m,
            Ok(Manifest::Index(_)) => continue,
            Err(source) => {
                return Err(ImagesError::Manifest {
                    reference: entry.name.clone(),
                    source,
                });
            }
        };
        let config_bytes = store.read_blob(&manifest.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|source| ImagesError::Manifest {
            reference: entry.name.clone(),
            source,
        })?;
        let layers = layer_sizes(store, std::slice::from_ref(&entry), &manifest, &config);
        let size = image_size(manifest.config.size, &layers);
        rows.push(ImageSummary {
            repository: reference.familiar_name(),
            tag: reference.tag().map(str::to_owned),
            digest: entry.resolved.clone(),
            image_id: manifest.config.digest.clone(),
            created: config.created_at(),
            size: size.unpacked,
            compressed_size: size.compressed,
            size_estimated: size.estimated,
            reference: entry.name,
        });
    }
    // One row per image and name, as docker shows it: `name:tag@digest` (pulled by digest, the tag
    // kept as a label) adds nothing to `name:tag` of the same image, and `name@digest` shows as
    // `<none>` only while no tag of that repository names the image.
    rows.sort_by_key(|r| r.reference.contains('@'));
    let mut seen = HashSet::new();
    rows.retain(|r| seen.insert((r.repository.clone(), r.tag.clone(), r.image_id.clone())));
    let tagged: HashSet<(String, Digest)> = rows
        .iter()
        .filter(|r| r.tag.is_some())
        .map(|r| (r.repository.clone(), r.image_id.clone()))
        .collect();
    rows.retain(|r| {
        r.tag.is_some() || !tagged.contains(&(r.repository.clone(), r.image_id.clone()))
    });
    rows.sort_by_key(|r| std::cmp::Reverse(r.created));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Descriptor;

    fn entry(annotation: Option<&str>) -> RefEntry {
        let digest = Digest::sha256_of(b"manifest");
        let mut manifest = Descriptor::new(manifest::media_type::OCI_MANIFEST, digest.clone(), 8);
        if let Some(a) = annotation {
            manifest
                .annotations
                .insert(LAYER_SIZES_ANNOTATION.to_owned(), a.to_owned());
        }
        RefEntry {
            name: "example.com/app:1".to_owned(),
            manifest,
            resolved: digest,
            source: None,
        }
    }

    #[test]
    fn recorded_sizes_are_read_only_when_they_fit_the_manifest() {
        for (annotation, layers, want) in [
            (Some("10,20"), 2, Some(vec![Some(10), Some(20)])),
            (Some(",20"), 2, Some(vec![None, Some(20)])),
            (Some("10"), 1, Some(vec![Some(10)])),
            (Some("10,20"), 3, None),
            (Some("10,x"), 2, None),
            (Some("-1,2"), 2, None),
            (Some("10,20,"), 2, None),
            (Some("18446744073709551616"), 1, None),
            (None, 1, None),
        ] {
            assert_eq!(
                parse_recorded(&entry(annotation), layers),
                want,
                "{annotation:?}"
            );
        }
    }

    #[test]
    fn recorded_sizes_round_trip() {
        let sizes = [Some(1), None, Some(u64::MAX)];
        let value = encode_recorded(&sizes).unwrap();
        assert_eq!(
            parse_recorded(&entry(Some(&value)), 3),
            Some(sizes.to_vec())
        );
        assert_eq!(encode_recorded(&[None, None]), None);
    }

    #[test]
    fn an_unknown_layer_counts_compressed_and_marks_the_estimate() {
        let layers = [
            LayerSize {
                compressed: 5,
                uncompressed: Some(50),
            },
            LayerSize {
                compressed: 7,
                uncompressed: None,
            },
        ];
        let size = image_size(3, &layers);
        assert_eq!(
            (size.unpacked, size.compressed, size.estimated),
            (57, 15, true)
        );
        let size = image_size(3, &layers[..1]);
        assert_eq!(
            (size.unpacked, size.compressed, size.estimated),
            (50, 8, false)
        );
        let huge = [LayerSize {
            compressed: u64::MAX,
            uncompressed: Some(u64::MAX),
        }; 2];
        assert_eq!(image_size(1, &huge).unpacked, u64::MAX);
    }
}
