//! Finding the signatures stored next to an image in its repository:
//!
//! - cosign's tag scheme: the manifest tagged `sha256-<hex>.sig`, one signature per layer;
//! - the OCI 1.1 referrers API (`GET /v2/NAME/referrers/DIGEST`), and when the registry has none
//!   (a 404), the distribution spec's fallback: the index tagged `sha256-<hex>`.
//!
//! Only artifacts whose type says they are signatures are fetched (Notation's
//! `application/vnd.cncf.notary.signature`, cosign's `application/vnd.dev.cosign.artifact.sig.v1+json`),
//! every manifest by digest (so the bytes are checked), and at most [`MAX_REFERRERS`] of them.
//! Nothing found is not an error here: the caller decides what an unsigned image means. A
//! registry that fails (other than "not found") is an error: trust fails closed.

use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{Descriptor, media_type};
use crate::reference::Reference;
use crate::registry::client::{Target, read_capped};
use crate::registry::{RegistryClient, RegistryError};

/// Signature artifacts looked at per image, at most; more is a registry trying to exhaust us.
pub const MAX_REFERRERS: usize = 32;
/// A signature payload or envelope larger than this is refused (real ones are a few KiB).
pub const MAX_SIGNATURE_BLOB: usize = 1 << 20;

pub const NOTARY_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
pub const COSIGN_SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// Where a signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// cosign's `sha256-<hex>.sig` tag.
    CosignTag,
    /// The registry's referrers API.
    Referrers,
    /// The referrers tag schema (`sha256-<hex>` index), for registries without the API.
    ReferrersTag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::CosignTag => "cosign tag",
            Source::Referrers => "referrers API",
            Source::ReferrersTag => "referrers tag",
        })
    }
}

/// A signature manifest: an OCI image manifest, possibly with `artifactType` and `subject`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    // Never read, but parsed: a signature manifest whose `mediaType` is not a string is refused.
    #[allow(dead_code)]
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
}

impl ArtifactManifest {
    /// The artifact type: the field when set, else the config's media type (the OCI 1.1 rule).
    pub fn kind(&self) -> &str {
        self.artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type)
    }
}

/// A signature artifact found for an image.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: Source,
    pub digest: Digest,
    pub manifest: ArtifactManifest,
}

#[derive(Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// `sha256-<hex>`: the referrers tag schema's tag; cosign appends `.sig`.
pub fn digest_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().name(), digest.hex())
}

fn is_not_found(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::ManifestUnknown { .. }
            | RegistryError::NameUnknown { .. }
            | RegistryError::Status { status: 404, .. }
    )
}

fn target(reference: &Reference) -> Target<'_> {
    Target {
        host: reference.api_host(),
        registry: reference.registry(),
        scope: format!("repository:{}:pull", reference.repository()),
    }
}

fn parse_manifest(bytes: &[u8], digest: &Digest) -> Result<ArtifactManifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Status {
        url: format!("signature manifest {digest}"),
        status: 200,
        code: None,
        message: Some(format!("not a signature manifest: {e}")),
    })
}

/// Every signature artifact for `digest` in `reference`'s repository.
pub async fn discover(
    client: &RegistryClient,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<Found>, RegistryError> {
    let repo = client.repository(reference);
    let mut found = Vec::new();

    let cosign_tag = format!("{}.sig", digest_tag(digest));
    match repo.get_manifest(&cosign_tag).await {
        Ok(m) => found.push(Found {
            source: Source::CosignTag,
            manifest: parse_manifest(&m.bytes, &m.digest)?,
            digest: m.digest,
        }),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }

    let (source, descriptors) = match referrers(client, reference, digest).await? {
        Some(list) => (Source::Referrers, list),
        None => match repo.get_manifest(&digest_tag(digest)).await {
            Ok(m) => {
                let index: IndexDoc =
                    serde_json::from_slice(&m.bytes).map_err(|e| RegistryError::Status {
                        url: format!("referrers tag {}", digest_tag(digest)),
                        status: 200,
                        code: None,
                        message: Some(format!("not an image index: {e}")),
                    })?;
                (Source::ReferrersTag, index.manifests)
            }
            Err(e) if is_not_found(&e) => (Source::ReferrersTag, Vec::new()),
            Err(e) => return Err(e),
        },
    };
    for desc in descriptors {
        if found.len() >= MAX_REFERRERS {
            tracing::warn!(%digest, "more than {MAX_REFERRERS} signature artifacts; ignoring the rest");
            break;
        }
        // A listed artifact type that is not a signature is skipped unread (SBOMs, attestations).
        if let Some(t) = desc.artifact_type.as_deref()
            && t != NOTARY_SIGNATURE
            && t != COSIGN_SIGNATURE_ARTIFACT
        {
            continue;
        }
        if found.iter().any(|f| f.digest == desc.digest) {
            continue;
        }
        let m = repo.get_manifest(&desc.digest.to_string()).await?;
        let manifest = parse_manifest(&m.bytes, &m.digest)?;
        if manifest.kind() != NOTARY_SIGNATURE && manifest.kind() != COSIGN_SIGNATURE_ARTIFACT {
            continue;
        }
        // A referrer must name the image as its subject; the registry listing it is not enough.
        if manifest.subject.as_ref().map(|s| &s.digest) != Some(digest) {
            tracing::debug!(artifact = %m.digest, "skipping a referrer whose subject is another manifest");
            continue;
        }
        found.push(Found {
            source,
            digest: m.digest,
            manifest,
        });
    }
    Ok(found)
}

/// The referrers API's list, or `None` when the registry does not have the API (404).
async fn referrers(
    client: &RegistryClient,
    reference: &Reference,
    digest: &Digest,
) -> Result<Option<Vec<Descriptor>>, RegistryError> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(media_type::OCI_INDEX));
    let mut out = Vec::new();
    let mut path = Some(format!("v2/{}/referrers/{digest}", reference.repository()));
    let mut pages = 0;
    while let Some(p) = path.take() {
        pages += 1;
        let resp = match client
            .execute(
                &target(reference),
                Method::GET,
                &p,
                headers.clone(),
                client.settings().max_download_attempts,
            )
            .await
        {
            Ok(r) => r,
            Err(e) if pages == 1 && is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        path = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let url = resp.url().to_string();
        let body = read_capped(resp, crate::manifest::MAX_MANIFEST_BYTES, &url).await?;
        let index: IndexDoc = serde_json::from_slice(&body).map_err(|e| RegistryError::Status {
            url: url.clone(),
            status: 200,
            code: None,
            message: Some(format!("invalid referrers list: {e}")),
        })?;
        out.extend(index.manifests);
        if out.len() > MAX_REFERRERS * 4 || pages >= 8 {
            break;
        }
    }
    Ok(Some(out))
}

/// The path of `Link: </v2/…?…>; rel="next"`, relative to the registry's base URL.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.replace(' ', "").contains("rel=\"next\"") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let path = match url::Url::parse(target) {
            Ok(abs) => match abs.query() {
                Some(q) => format!("{}?{q}", abs.path()),
                None => abs.path().to_owned(),
            },
            Err(_) => target.to_owned(),
        };
        Some(path.trim_start_matches('/').to_owned())
    })
}

/// Downloads a small blob of a signature artifact, checking its size and digest.
pub async fn fetch_blob(
    client: &RegistryClient,
    reference: &Reference,
    desc: &Descriptor,
) -> Result<Vec<u8>, RegistryError> {
    if desc.size > MAX_SIGNATURE_BLOB as u64 {
        return Err(RegistryError::TooLarge {
            url: format!("blob {}", desc.digest),
            limit: MAX_SIGNATURE_BLOB,
        });
    }
    let repo = client.repository(reference);
    let resp = repo.blob(&desc.digest, 0).await?;
    let url = resp.url().to_string();
    let bytes = read_capped(resp, MAX_SIGNATURE_BLOB, &url).await?;
    let actual = desc.digest.same_algorithm_of(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(RegistryError::DigestMismatch {
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_for_a_digest() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(digest_tag(&d), format!("sha256-{}", "ab".repeat(32)));
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/a/referrers/sha256:00?n=1&last=x>; rel="next""#).as_deref(),
            Some("v2/a/referrers/sha256:00?n=1&last=x")
        );
        assert_eq!(next_link(r#"</v2/a>; rel="prev""#), None);
    }
}
