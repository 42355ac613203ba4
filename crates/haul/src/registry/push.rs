//! The push side of the distribution API: monolithic blob uploads (`POST` then `PUT ?digest=`)
//! and manifest `PUT`s, with a `repository:NAME:pull,push` token. `haul trust sign` uses it to
//! store signatures; a `haul push` can use it as it is.
//!
//! Requests with a body cannot go through [`RegistryClient`]'s authenticated `execute` (it sends
//! none), so a [`Pusher`] authenticates itself: it reads the registry's challenge from the `/v2/`
//! ping, fetches and caches a push-scoped token (or sends Basic credentials), and renews it once on
//! a 401. `Authorization` is only sent to the registry's own host: an upload `Location` on another
//! host (blob storage) gets none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};

use super::auth::{self, CredentialStore};
use super::challenge::{self, Challenge};
use super::client::{RegistryClient, read_capped};
use super::credentials::Credential;
use super::error::{self, RegistryError};
use crate::digest::Digest;
use crate::reference::Reference;

/// Error bodies are only read for the registry's error code.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The `/v2/` URL and `Authorization` (if the registry asked for one) per (host, scope).
type AuthCache = Mutex<HashMap<(String, String), (url::Url, Option<HeaderValue>)>>;

/// Pushes blobs and manifests; cheap to share, one per process is enough.
pub struct Pusher {
    client: RegistryClient,
    credentials: Arc<dyn CredentialStore>,
    headers: AuthCache,
}

impl Pusher {
    /// A pusher using `client`'s connections and settings, and `credentials` for the push
    /// token (which needs `push` access, unlike a pull's).
    #[must_use]
    pub fn new(client: RegistryClient, credentials: Arc<dyn CredentialStore>) -> Pusher {
        Pusher {
            client,
            credentials,
            headers: Mutex::new(HashMap::new()),
        }
    }

    fn scope(reference: &Reference) -> String {
        format!("repository:{}:pull,push", reference.repository())
    }

    /// The `Authorization` for pushing to `reference`'s repository, fetched when not cached (or
    /// when `fresh`, after the registry refused the cached one).
    async fn authorization(
        &self,
        reference: &Reference,
        fresh: bool,
    ) -> Result<(url::Url, Option<HeaderValue>), RegistryError> {
        let host = reference.api_host();
        let scope = Self::scope(reference);
        let key = (host.to_owned(), scope.clone());
        if !fresh && let Some(cached) = self.headers.lock().ok().and_then(|h| h.get(&key).cloned())
        {
            return Ok(cached);
        }
        // The challenge is read afresh: a 401 may mean the registry wants another realm now.
        let (v2, resp) = self.client.ping(host).await?;
        let header = if resp.status() == StatusCode::UNAUTHORIZED {
            let chosen = challenge::preferred(resp.headers());
            let credential = self.credential(reference.registry()).await?;
            match chosen {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    let (h, _lifetime) = auth::fetch_token(
                        &self.client,
                        host,
                        &realm,
                        service.as_deref(),
                        &scope,
                        credential.as_ref(),
                    )
                    .await?;
                    Some(h)
                }
                Some(Challenge::Basic { .. }) => match credential {
                    Some(Credential::Basic { username, password }) => {
                        Some(auth::basic_header(&username, &password))
                    }
                    _ => None,
                },
                None => None,
            }
        } else {
            None
        };
        if let Ok(mut h) = self.headers.lock() {
            h.insert(key, (v2.clone(), header.clone()));
        }
        Ok((v2, header))
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let store = self.credentials.clone();
        let name = registry.to_owned();
        Ok(tokio::task::spawn_blocking(move || store.get(&name))
            .await
            .map_err(|e| RegistryError::Transport {
                host: registry.to_owned(),
                detail: format!("credential lookup failed: {e}"),
            })??)
    }

    /// Sends one request to `url` with the push credentials (only when `url` is on the registry's
    /// host), retrying transient failures and renewing the credentials once on 401. Any 2xx is
    /// returned; anything else becomes an error.
    async fn send(
        &self,
        reference: &Reference,
        method: Method,
        url: &url::Url,
        content_type: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = reference.api_host();
        let attempts = self.client.settings().max_download_attempts.max(1);
        let mut attempt = 1;
        let mut fresh = false;
        loop {
            let (v2, authorization) = self.authorization(reference, fresh).await?;
            let same_host = url.host_str() == v2.host_str() && url.port() == v2.port();
            let mut req = self
                .client
                .http_client(host)?
                .request(method.clone(), url.clone());
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            if let Some(b) = &body {
                req = req.header(CONTENT_LENGTH, b.len()).body(b.clone());
            } else if method == Method::POST || method == Method::PUT {
                req = req.header(CONTENT_LENGTH, 0);
            }
            if same_host && let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let err = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !fresh => {
                    fresh = true;
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = read_capped(resp, MAX_ERROR_BODY, url.as_str())
                        .await
                        .unwrap_or_default();
                    error::from_response(url.as_str(), host, status, &body, None)
                }
                Err(e) => error::from_reqwest(host, &e),
            };
            if attempt >= attempts || !err.is_retryable() {
                return Err(err);
            }
            tokio::time::sleep(self.client.backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn endpoint(&self, reference: &Reference, path: &str) -> Result<url::Url, RegistryError> {
        let (v2, _) = self.authorization(reference, false).await?;
        v2.join(path).map_err(|e| RegistryError::BadUrl {
            url: format!("{v2}{path}"),
            detail: e.to_string(),
        })
    }

    /// Whether the repository already has the blob (a `HEAD`).
    pub(crate) async fn has_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let url = self
            .endpoint(
                reference,
                &format!("{}/blobs/{digest}", reference.repository()),
            )
            .await?;
        match self.send(reference, Method::HEAD, &url, None, None).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Status { status: 404, .. } | RegistryError::BlobUnknown { .. }) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Uploads `bytes` as blob `digest` unless the repository has it. The digest is checked
    /// here first, so a wrong one never reaches the registry.
    pub(crate) async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let actual = digest.same_algorithm_of(&bytes);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.has_blob(reference, digest).await? {
            return Ok(());
        }
        let start = self
            .endpoint(
                reference,
                &format!("{}/blobs/uploads/", reference.repository()),
            )
            .await?;
        let resp = self
            .send(reference, Method::POST, &start, None, None)
            .await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                url: start.to_string(),
                status: resp.status().as_u16(),
                code: None,
                message: Some("upload started without a Location header".to_owned()),
            })?;
        let mut upload = start.join(location).map_err(|e| RegistryError::BadUrl {
            url: location.to_owned(),
            detail: e.to_string(),
        })?;
        upload
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        self.send(
            reference,
            Method::PUT,
            &upload,
            Some("application/octet-stream"),
            Some(bytes),
        )
        .await?;
        Ok(())
    }

    /// PUTs a manifest under `tag_or_digest` with `media_type` as its `Content-Type` and returns
    /// the digest of the bytes sent (which the registry's `Docker-Content-Digest` must match).
    pub(crate) async fn push_manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(&bytes);
        let url = self
            .endpoint(
                reference,
                &format!("{}/manifests/{tag_or_digest}", reference.repository()),
            )
            .await?;
        let resp = self
            .send(reference, Method::PUT, &url, Some(media_type), Some(bytes))
            .await?;
        if let Some(answered) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
            && answered != digest
        {
            return Err(RegistryError::DigestMismatch {
                expected: digest,
                actual: answered,
            });
        }
        Ok(digest)
    }
}
