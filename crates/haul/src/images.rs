//! Listing what the store holds, in the shape of `docker images`.
//!
//! One row per image and name (see [`list`]). The image ID is the config digest (as in docker); the digest is what the name
//! resolved to at the registry (docker's "repo digest"); the size is the content the image needs in
//! the store: config plus compressed layers. Rows come newest first by the config's `created`.

use std::collections::HashSet;

use serde::Serialize;

use crate::digest::Digest;
use crate::manifest::{self, ImageConfig, Manifest};
use crate::reference::Reference;
use crate::store::{Store, StoreError};

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
    /// Bytes the image needs in the store: its config plus its compressed layers.
    pub size: u64,
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
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        rows.push(ImageSummary {
            repository: reference.familiar_name(),
            tag: reference.tag().map(str::to_owned),
            digest: entry.resolved.clone(),
            image_id: manifest.config.digest.clone(),
            created: config.created_at(),
            size,
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
