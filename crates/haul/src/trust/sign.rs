//! Signing images the way `cosign sign --key` does (without a transparency log): a simple-signing
//! payload for the image's digest, signed with the user's key, pushed as one layer of the
//! manifest tagged `sha256-<hex>.sig`. Signatures already under that tag are kept, so several
//! parties can sign one image; signing twice with the same key replaces its earlier signature.

use bytes::Bytes;

use super::cosign::{self, SIGNATURE_ANNOTATION, SIMPLESIGNING};
use super::discovery::{self, ArtifactManifest};
use super::keys::{self, KeyError, PrivateKey};
use crate::digest::Digest;
use crate::manifest::{Descriptor, media_type};
use crate::reference::Reference;
use crate::registry::{Pusher, RegistryClient, RegistryError};

/// Why [`sign_image`] failed. `image` fields are the familiar name (`team/app:1.2`).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The tag could not be resolved to a digest.
    #[error("resolving {image}: {source}")]
    Resolve {
        /// The image.
        image: String,
        /// What the registry answered.
        #[source]
        source: RegistryError,
    },
    /// The signatures already under the `.sig` tag could not be read (they would be lost).
    #[error("reading the signatures of {image}@{digest}: {source}")]
    Existing {
        /// The image.
        image: String,
        /// The digest being signed.
        digest: Digest,
        /// What the registry answered, or why its manifest is not a signature manifest.
        #[source]
        source: RegistryError,
    },
    /// The signature could not be pushed (no push access, say).
    #[error("pushing the signature of {image}@{digest}: {source}")]
    Push {
        /// The image.
        image: String,
        /// The digest being signed.
        digest: Digest,
        /// What the registry answered.
        #[source]
        source: RegistryError,
    },
    /// The key failed to sign.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What a signing did.
#[derive(Debug, Clone)]
pub struct SignOutcome {
    /// The digest that was signed (what the tag resolved to).
    pub digest: Digest,
    /// `sha256-<hex>.sig`.
    pub tag: String,
    /// The signature manifest now under that tag.
    pub signature_manifest: Digest,
    /// Signatures under the tag, this one included.
    pub signatures: usize,
}

/// Signs `reference` (its digest, or what its tag resolves to now) with `key` and pushes the
/// signature next to it.
///
/// `pusher` needs credentials with push access to the repository; `client` only reads.
///
/// # Errors
///
/// The tag cannot be resolved, the signatures already there cannot be read, the key fails to
/// sign, or the registry refuses the push.
pub async fn sign_image(
    client: &RegistryClient,
    pusher: &Pusher,
    reference: &Reference,
    key: &PrivateKey,
) -> Result<SignOutcome, SignError> {
    let image = reference.familiar_string();
    let repo = client.repository(reference);
    let digest = match reference.digest() {
        Some(d) => d.clone(),
        None => {
            let tag = reference.tag_or_default();
            let resolve = |source| SignError::Resolve {
                image: image.clone(),
                source,
            };
            match repo.head_manifest(tag).await.map_err(resolve)? {
                Some(h) => h.digest,
                None => repo.get_manifest(tag).await.map_err(resolve)?.digest,
            }
        }
    };
    let push_err = |source| SignError::Push {
        image: image.clone(),
        digest: digest.clone(),
        source,
    };

    let payload = cosign::payload(reference, &digest);
    let signature = key.sign_cosign(&payload)?;
    let payload_digest = Digest::sha256_of(&payload);
    let mut layer = Descriptor::new(SIMPLESIGNING, payload_digest.clone(), payload.len() as u64);
    layer.annotations.insert(
        SIGNATURE_ANNOTATION.to_owned(),
        keys::b64_encode(&signature),
    );

    let tag = format!("{}.sig", discovery::digest_tag(&digest));
    let mut layers = match repo.get_manifest(&tag).await {
        Ok(m) => {
            let existing: ArtifactManifest =
                serde_json::from_slice(&m.bytes).map_err(|e| SignError::Existing {
                    image: image.clone(),
                    digest: digest.clone(),
                    source: RegistryError::Status {
                        url: tag.clone(),
                        status: 200,
                        code: None,
                        message: Some(format!("not a signature manifest: {e}")),
                    },
                })?;
            existing.layers
        }
        Err(
            RegistryError::ManifestUnknown { .. }
            | RegistryError::NameUnknown { .. }
            | RegistryError::Status { status: 404, .. },
        ) => Vec::new(),
        Err(source) => {
            return Err(SignError::Existing {
                image: image.clone(),
                digest: digest.clone(),
                source,
            });
        }
    };
    // Our key's earlier signature of the same payload is replaced, not piled up.
    layers.retain(|l| {
        let same_payload = l.digest == layer.digest;
        let ours = l
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .and_then(|s| keys::b64_decode(s))
            .is_some_and(|sig| same_payload && key.public_key().verify_cosign(&payload, &sig));
        !ours
    });
    layers.push(layer);

    // cosign's config: an empty image whose rootfs lists the payloads.
    let config = serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        },
    });
    let config_bytes = Bytes::from(serde_json::to_vec(&config).unwrap_or_default());
    let config_digest = Digest::sha256_of(&config_bytes);

    pusher
        .push_blob(reference, &payload_digest, Bytes::from(payload))
        .await
        .map_err(push_err)?;
    pusher
        .push_blob(reference, &config_digest, config_bytes.clone())
        .await
        .map_err(push_err)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": Descriptor::new(media_type::OCI_CONFIG, config_digest, config_bytes.len() as u64),
        "layers": layers,
    });
    let manifest_bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
    let signatures = layers.len();
    let signature_manifest = pusher
        .push_manifest(reference, &tag, media_type::OCI_MANIFEST, manifest_bytes)
        .await
        .map_err(push_err)?;
    Ok(SignOutcome {
        digest,
        tag,
        signature_manifest,
        signatures,
    })
}
