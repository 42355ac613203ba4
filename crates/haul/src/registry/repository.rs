//! One repository on a registry: resolving and fetching its manifests.
//!
//! Promises:
//! - Every request goes to the repository's endpoints in order ([`super::endpoints`]): mirrors
//!   once each, then the registry with `max-download-attempts` tries.
//! - A manifest body is capped at [`MAX_MANIFEST_BYTES`]; fetched by digest, its bytes must hash
//!   to that digest (a mirror serving other bytes is passed over).
//!
//! Blobs are in [`super::blob`], the tag list in [`super::tags`].

use std::sync::Arc;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::client::RegistryClient;
use super::endpoints::{Endpoint, EndpointState};
use super::error::RegistryError;
use crate::digest::Digest;
use crate::manifest::{MAX_MANIFEST_BYTES, media_type};
use crate::reference::Reference;

/// What a HEAD of a manifest told us.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManifestHead {
    /// The manifest's digest (`Docker-Content-Digest`).
    pub digest: Digest,
    /// Its media type, without parameters, when the registry sent a `Content-Type`.
    pub media_type: Option<String>,
    /// Its size in bytes, when the registry sent a `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest as served: the exact bytes, the served media type and the digest of those bytes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchedManifest {
    /// The manifest exactly as served (at most [`MAX_MANIFEST_BYTES`]).
    pub bytes: Vec<u8>,
    /// The `Content-Type` as served, parameters included.
    pub content_type: Option<String>,
    /// The digest of `bytes`: the one asked for when the manifest was fetched by digest,
    /// else their SHA-256.
    pub digest: Digest,
}

/// One repository, reached through its mirrors (in order) and then its registry.
#[derive(Clone)]
pub struct Repository {
    pub(super) client: RegistryClient,
    pub(super) mirrors: Arc<[Endpoint]>,
    pub(super) upstream: Endpoint,
    pub(super) name: String,
    pub(super) state: Arc<EndpointState>,
    /// The extra connections ranged blob downloads share ([`super::ranged`]).
    pub(super) range_connections: Arc<tokio::sync::Semaphore>,
}

impl RegistryClient {
    /// A handle for one repository: the mirrors configured for the reference's registry, in
    /// order, then the registry's own endpoint.
    pub fn repository(&self, reference: &Reference) -> Repository {
        let mirrors: Vec<Endpoint> = self
            .settings()
            .mirrors_for(reference.registry())
            .iter()
            .filter_map(Endpoint::mirror)
            .collect();
        Repository {
            client: self.clone(),
            state: Arc::new(EndpointState::new(mirrors.len())),
            range_connections: Arc::new(tokio::sync::Semaphore::new(
                self.settings().max_connections_per_blob.saturating_sub(1),
            )),
            mirrors: mirrors.into(),
            upstream: Endpoint {
                host: reference.api_host().to_owned(),
                credentials: reference.registry().to_owned(),
                mirror: None,
            },
            name: reference.repository().to_owned(),
        }
    }
}

impl Repository {
    /// The registry's own endpoint host (`registry-1.docker.io` for Docker Hub), whatever mirror
    /// serves the requests.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.upstream.host
    }

    pub(super) fn scope(&self) -> String {
        format!("repository:{}:pull", self.name)
    }

    pub(super) fn attempts(&self) -> u32 {
        self.client.settings().max_download_attempts
    }

    fn manifest_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(media_type::ACCEPT));
        h
    }

    /// Resolves a tag (or digest) with HEAD, which Docker Hub does not count against pull quotas.
    /// `None` when the registry's answer carries no usable digest; the caller then GETs.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ManifestUnknown`] when the registry has no such tag or digest, else why
    /// no endpoint answered (after the retries the settings allow).
    pub async fn head_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.first_success("manifest", |endpoint, attempts| {
            self.head_manifest_at(endpoint, reference, attempts)
        })
        .await
    }

    async fn head_manifest_at(
        &self,
        endpoint: &Endpoint,
        reference: &str,
        attempts: u32,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let path = format!("v2/{}/manifests/{reference}", self.name);
        let resp = match self
            .client
            .execute_at(
                endpoint,
                &self.scope(),
                Method::HEAD,
                &path,
                Self::manifest_headers(),
                attempts,
            )
            .await
        {
            Ok(r) => r,
            // A HEAD has no body to carry the error code, so a 404 is the manifest's absence.
            Err(RegistryError::Status { status: 404, .. }) => {
                return Err(RegistryError::ManifestUnknown {
                    message: "manifest unknown".to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let headers = resp.headers();
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| media_type::essence(s).to_owned());
        Ok(digest.map(|digest| ManifestHead {
            digest,
            media_type,
            // Not `content_length()`: for a HEAD, hyper reports the (empty) body's length.
            size: headers
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse().ok()),
        }))
    }

    /// GETs a manifest by tag or digest, capped at [`MAX_MANIFEST_BYTES`]. When `reference` is a
    /// digest the bytes must hash to it (a mirror serving other bytes is passed over).
    ///
    /// # Errors
    ///
    /// What the registry answered ([`RegistryError::ManifestUnknown`] for no such tag or
    /// digest), [`RegistryError::TooLarge`] past the cap, [`RegistryError::DigestMismatch`] for
    /// bytes that are not the digest asked for, or why no endpoint answered.
    pub async fn get_manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        self.first_success("manifest", |endpoint, attempts| {
            self.get_manifest_at(endpoint, reference, attempts)
        })
        .await
    }

    async fn get_manifest_at(
        &self,
        endpoint: &Endpoint,
        reference: &str,
        attempts: u32,
    ) -> Result<FetchedManifest, RegistryError> {
        let path = format!("v2/{}/manifests/{reference}", self.name);
        let resp = self
            .client
            .execute_at(
                endpoint,
                &self.scope(),
                Method::GET,
                &path,
                Self::manifest_headers(),
                attempts,
            )
            .await?;
        let url = resp.url().to_string();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self
            .client
            .read_capped(resp, MAX_MANIFEST_BYTES, &url)
            .await?;
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                let actual = expected.same_algorithm_of(&bytes);
                if actual != expected {
                    return Err(RegistryError::DigestMismatch { expected, actual });
                }
                actual
            }
            Err(_) => Digest::sha256_of(&bytes),
        };
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Anonymous, ClientOptions, RegistrySettings};

    #[test]
    fn repository_requests_can_run_on_spawned_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = RegistryClient::new(
            RegistrySettings::default(),
            Arc::new(Anonymous),
            ClientOptions::default(),
        )
        .unwrap();
        let repo = client.repository(&"127.0.0.1:1/a/b:1".parse().unwrap());
        let digest = Digest::sha256_of(b"");
        assert_send(&repo.head_manifest("1"));
        assert_send(&repo.get_manifest("1"));
        assert_send(&repo.blob(&digest, 0));
        assert_send(&repo.tags());
        // The blob download too, with a sink whose futures are Send.
        struct Memory(Vec<u8>);
        impl crate::registry::BlobSink for Memory {
            type Error = std::io::Error;
            fn position(&self) -> u64 {
                self.0.len() as u64
            }
            async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), std::io::Error> {
                self.0.extend_from_slice(&chunk);
                Ok(())
            }
            async fn restart(&mut self) -> Result<(), std::io::Error> {
                self.0.clear();
                Ok(())
            }
            fn verify(&mut self) -> Result<(), crate::digest::VerifyError> {
                Ok(())
            }
        }
        let desc = crate::manifest::Descriptor::new("application/octet-stream", digest, 0);
        let mut sink = Memory(Vec::new());
        assert_send(&repo.fetch_blob(&desc, &mut sink));
    }
}
