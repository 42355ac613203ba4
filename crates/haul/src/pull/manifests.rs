//! The manifests of a pull: resolving a name to a document, following an index to the image for
//! the wanted platform, and the pull's errors for what the registry said about the name.
//!
//! Promises: a tag is resolved with HEAD (which Docker Hub does not count against pull quotas)
//! and a document is fetched by digest only when the store lacks it; a nested index or a
//! manifest that is not an image is refused with the manifest's digest named.

use super::{PullError, Puller};
use crate::digest::Digest;
use crate::manifest::{self, ImageManifest, Manifest, ManifestError};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::{RegistryError, Repository};

/// A manifest document: its exact bytes and how it was served.
pub(super) struct Document {
    pub(super) digest: Digest,
    pub(super) bytes: Vec<u8>,
    pub(super) content_type: Option<String>,
}

impl Puller {
    /// The document the reference names: by digest from the store when present, else from the
    /// registry; a tag is resolved with HEAD first.
    pub(super) async fn resolve(
        &self,
        reference: &Reference,
        repo: &Repository,
    ) -> Result<Document, PullError> {
        let digest = match reference.digest() {
            Some(d) => d.clone(),
            None => {
                let tag = reference.tag_or_default();
                let head = repo
                    .head_manifest(tag)
                    .await
                    .map_err(|e| map_manifest_error(reference, e))?;
                match head {
                    Some(h) => h.digest,
                    None => {
                        // No digest header: the GET by tag is the resolution.
                        let fetched = repo
                            .get_manifest(tag)
                            .await
                            .map_err(|e| map_manifest_error(reference, e))?;
                        return Ok(Document {
                            digest: fetched.digest,
                            bytes: fetched.bytes,
                            content_type: fetched.content_type,
                        });
                    }
                }
            }
        };
        self.load_document(reference, repo, &digest).await
    }

    pub(super) async fn load_document(
        &self,
        reference: &Reference,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Document, PullError> {
        if self.store.has_blob(digest) {
            let bytes = self
                .store
                .read_blob(digest, manifest::MAX_MANIFEST_BYTES as u64)?;
            return Ok(Document {
                digest: digest.clone(),
                bytes,
                content_type: None,
            });
        }
        let fetched = repo
            .get_manifest(&digest.to_string())
            .await
            .map_err(|e| map_manifest_error(reference, e))?;
        Ok(Document {
            digest: fetched.digest,
            bytes: fetched.bytes,
            content_type: fetched.content_type,
        })
    }

    /// Follows an index to the manifest for the wanted platform. Returns the image manifest, the
    /// platform it was picked for (if from an index) and the index itself.
    pub(super) async fn select_image(
        &self,
        reference: &Reference,
        repo: &Repository,
        top: Document,
    ) -> Result<(Document, Option<Platform>, Option<Document>), PullError> {
        let parsed =
            manifest::parse(top.content_type.as_deref(), &top.bytes).map_err(|source| {
                PullError::Manifest {
                    context: format!("{reference}"),
                    source,
                }
            })?;
        match parsed {
            Manifest::Image(_) => Ok((top, None, None)),
            Manifest::Index(index) => {
                let wanted = self.options.platform.clone().unwrap_or_else(Platform::host);
                let entry = index
                    .select(&wanted)
                    .map_err(|source| PullError::Manifest {
                        context: format!("{reference}"),
                        source,
                    })?;
                let platform = entry.platform.clone();
                let child = self.load_document(reference, repo, &entry.digest).await?;
                Ok((child, platform, Some(top)))
            }
        }
    }
}

pub(super) fn parse_image(
    reference: &Reference,
    doc: &Document,
) -> Result<ImageManifest, PullError> {
    let context = || format!("{reference} (manifest {})", doc.digest);
    match manifest::parse(doc.content_type.as_deref(), &doc.bytes) {
        Ok(Manifest::Image(m)) => {
            m.check_is_image().map_err(|source| PullError::Manifest {
                context: context(),
                source,
            })?;
            Ok(m)
        }
        Ok(Manifest::Index(_)) => Err(PullError::Manifest {
            context: context(),
            source: ManifestError::UnsupportedMediaType(
                "an index nested inside an index".to_owned(),
            ),
        }),
        Err(source) => Err(PullError::Manifest {
            context: context(),
            source,
        }),
    }
}

pub(super) fn manifest_media_type(m: &ImageManifest, doc: &Document) -> String {
    m.media_type
        .clone()
        .or_else(|| {
            doc.content_type
                .as_deref()
                .map(|c| manifest::media_type::essence(c).to_owned())
        })
        .filter(|mt| manifest::media_type::is_image_manifest(mt))
        .unwrap_or_else(|| manifest::media_type::OCI_MANIFEST.to_owned())
}

fn map_manifest_error(reference: &Reference, e: RegistryError) -> PullError {
    match e {
        RegistryError::ManifestUnknown { .. } => PullError::ManifestUnknown {
            reference: reference.familiar_string(),
            source: e,
        },
        other => map_name_error(reference, other),
    }
}

pub(super) fn map_name_error(reference: &Reference, e: RegistryError) -> PullError {
    match e {
        RegistryError::NameUnknown { .. } => PullError::NameUnknown {
            repository: reference.familiar_name(),
            source: e,
        },
        RegistryError::Denied { .. } => PullError::AccessDenied {
            repository: reference.familiar_name(),
            source: e,
        },
        // Refused without credentials: the repository may be private (docker's wording).
        RegistryError::Unauthorized {
            anonymous: true, ..
        } => PullError::AccessDenied {
            repository: reference.familiar_name(),
            source: e,
        },
        other => PullError::Registry(other),
    }
}
