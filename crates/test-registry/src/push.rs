//! Pushes blobs and manifests through the distribution HTTP API (monolithic uploads), with
//! optional Basic or Bearer credentials. Used to seed the real registry.

use reqwest::{Method, StatusCode, Url, header};

use crate::error::{Result, TestError};
use crate::image::{Blob, Image, Index};
use crate::util::http_client;

#[derive(Clone, Debug)]
enum Credentials {
    None,
    Basic(String, String),
    Bearer(String),
}

/// Pushes to one registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct Pusher {
    base: String,
    credentials: Credentials,
    client: reqwest::Client,
}

async fn expect(
    resp: reqwest::Response,
    method: &str,
    ok: &[StatusCode],
) -> Result<reqwest::Response> {
    if ok.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let url = resp.url().to_string();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(2000);
    Err(TestError::UnexpectedStatus {
        method: method.into(),
        url,
        status,
        body,
    })
}

impl Pusher {
    /// A pusher for `registry_url` (`http://127.0.0.1:PORT`), anonymous.
    ///
    /// # Panics
    /// If no HTTP client can be built (no TLS provider at all).
    pub fn new(registry_url: &str) -> Pusher {
        Pusher {
            base: registry_url.trim_end_matches('/').to_string(),
            credentials: Credentials::None,
            client: http_client().expect("building an HTTP client"),
        }
    }

    /// Sends through `client` instead of the default one, e.g. one that trusts a test CA
    /// ([`crate::RealRegistry::client`]).
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Sends `Authorization: Basic` on every request.
    pub fn basic(mut self, user: &str, password: &str) -> Self {
        self.credentials = Credentials::Basic(user.into(), password.into());
        self
    }

    /// Sends `Authorization: Bearer <token>` on every request (e.g. from
    /// [`crate::TokenIssuer::token_for`] with `pull,push` actions).
    pub fn bearer(mut self, token: &str) -> Self {
        self.credentials = Credentials::Bearer(token.into());
        self
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, url);
        match &self.credentials {
            Credentials::None => rb,
            Credentials::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Credentials::Bearer(t) => rb.bearer_auth(t),
        }
    }

    /// Uploads a blob unless the registry already has it in `repo`.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let head_url = format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest);
        let head = self.request(Method::HEAD, &head_url).send().await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        let start_url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self.request(Method::POST, &start_url).send().await?;
        let resp = expect(resp, "POST", &[StatusCode::ACCEPTED]).await?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| TestError::Invalid(format!("POST {start_url}: no Location header")))?;
        let mut url = Url::parse(&self.base)
            .and_then(|b| b.join(location))
            .map_err(|e| TestError::Invalid(format!("Location {location:?}: {e}")))?;
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .request(Method::PUT, url.as_str())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, blob.size)
            .body(blob.data.clone())
            .send()
            .await?;
        expect(resp, "PUT", &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// PUTs a manifest (or index) under `reference` (tag or digest) with its media type as
    /// `Content-Type`; returns the `Docker-Content-Digest` the registry answered.
    pub async fn push_manifest(&self, repo: &str, reference: &str, blob: &Blob) -> Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .request(Method::PUT, &url)
            .header(header::CONTENT_TYPE, &blob.media_type)
            .body(blob.data.clone())
            .send()
            .await?;
        let resp = expect(resp, "PUT", &[StatusCode::CREATED]).await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&blob.digest)
            .to_string())
    }

    /// Pushes config and layers, then the manifest under `tag`; returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        for blob in image.blobs() {
            self.push_blob(repo, blob).await?;
        }
        self.push_manifest(repo, tag, &image.manifest).await
    }

    /// Pushes every image by digest, then the index under `tag`; returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Index) -> Result<String> {
        for image in &index.images {
            let digest = image.digest().to_string();
            self.push_image(repo, &digest, image).await?;
        }
        self.push_manifest(repo, tag, &index.manifest).await
    }

    /// Lists all tags of `repo`, following `Link: <…>; rel="next"` pages.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(format!("{}/v2/{repo}/tags/list?n=50", self.base));
        while let Some(url) = next.take() {
            let resp = self.request(Method::GET, &url).send().await?;
            let resp = expect(resp, "GET", &[StatusCode::OK]).await?;
            if let Some(link) = resp
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
            {
                next = parse_next_link(link)
                    .map(|target| Url::parse(&url).and_then(|u| u.join(&target)))
                    .transpose()
                    .map_err(|e| TestError::Invalid(format!("Link {link:?}: {e}")))?
                    .map(String::from);
            }
            let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await?)
                .map_err(|e| TestError::Invalid(format!("tags list JSON: {e}")))?;
            if let Some(tags) = body["tags"].as_array() {
                out.extend(tags.iter().filter_map(|t| t.as_str()).map(String::from));
            }
        }
        Ok(out)
    }
}

/// Extracts the target of `rel="next"` from a `Link` header.
pub(crate) fn parse_next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_next_link;

    #[test]
    fn next_link() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=b&n=50>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=50")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(parse_next_link("garbage"), None);
    }
}
