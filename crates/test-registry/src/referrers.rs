//! An in-memory registry with the OCI 1.1 referrers API (`GET /v2/NAME/referrers/DIGEST`, with
//! `artifactType` filtering), which the real registry 2.8 lacks, and the push side (monolithic
//! blob uploads, manifest `PUT`s recording their `subject`), so signatures can be pushed into it
//! and found again. The API can be switched off (404) to exercise the tag-schema fallback, and a
//! tag can be set to move right after its first resolution, to check that a client pulls what it
//! verified rather than what the tag points at later.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, Response, StatusCode, header};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::Result;
use crate::image::{Blob, Image, Index};
use crate::server::{Server, json_response, registry_error};
use crate::util::{form_pairs, lock, random_hex, sha256_digest};

#[derive(Debug, Default)]
struct Repo {
    tags: BTreeMap<String, String>,
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    uploads: HashMap<String, ()>,
    /// Tag → the digest it moves to once it has been resolved once.
    moves: HashMap<String, String>,
}

#[derive(Debug)]
struct Inner {
    repos: Mutex<HashMap<String, Repo>>,
    requests: Mutex<Vec<(String, String)>>,
    referrers_api: Mutex<bool>,
}

/// The referrers-capable registry; stops when dropped.
pub struct ReferrersRegistry {
    inner: Arc<Inner>,
    server: Server,
}

fn not_found(code: &str, message: &str) -> Response<Body> {
    registry_error(StatusCode::NOT_FOUND, code, message, Value::Null)
}

fn content(method: &Method, data: Bytes, content_type: &str, digest: &str) -> Response<Body> {
    let len = data.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(data)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = len.to_string().parse() {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = digest.parse() {
        h.insert("docker-content-digest", v);
    }
    resp
}

fn status(code: StatusCode, headers: &[(&str, String)]) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = code;
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

impl Inner {
    fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        ct: &str,
        body: Bytes,
    ) -> Response<Body> {
        if path == "/v2/" || path == "/v2" {
            return json_response(StatusCode::OK, &json!({}));
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return not_found("UNSUPPORTED", "not a registry path");
        };
        if let Some(i) = rest.rfind("/referrers/") {
            return self.referrers(&rest[..i], &rest[i + "/referrers/".len()..], query);
        }
        if let Some(i) = rest.rfind("/manifests/") {
            let (name, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
            return match *method {
                Method::PUT => self.put_manifest(name, reference, ct, body),
                _ => self.get_manifest(method, name, reference),
            };
        }
        if let Some(i) = rest.rfind("/blobs/uploads/") {
            let (name, id) = (&rest[..i], &rest[i + "/blobs/uploads/".len()..]);
            return self.upload(method, name, id, query, body);
        }
        if let Some(i) = rest.rfind("/blobs/") {
            let (name, digest) = (&rest[..i], &rest[i + "/blobs/".len()..]);
            let data = lock(&self.repos)
                .get(name)
                .and_then(|r| r.blobs.get(digest).cloned());
            return match data {
                Some(d) => content(method, d, "application/octet-stream", digest),
                None => not_found("BLOB_UNKNOWN", "blob unknown to registry"),
            };
        }
        not_found("UNSUPPORTED", "unknown route")
    }

    fn get_manifest(&self, method: &Method, name: &str, reference: &str) -> Response<Body> {
        let mut repos = lock(&self.repos);
        let Some(repo) = repos.get_mut(name) else {
            return not_found("NAME_UNKNOWN", "repository name not known to registry");
        };
        let digest = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            let current = repo.tags.get(reference).cloned();
            if let Some(next) = repo.moves.remove(reference) {
                repo.tags.insert(reference.to_string(), next);
            }
            current
        };
        match digest.and_then(|d| repo.manifests.get(&d).map(|m| (d, m.clone()))) {
            Some((d, (ct, data))) => content(method, data, &ct, &d),
            None => not_found("MANIFEST_UNKNOWN", "manifest unknown"),
        }
    }

    fn put_manifest(&self, name: &str, reference: &str, ct: &str, body: Bytes) -> Response<Body> {
        let digest = sha256_digest(&body);
        if reference.contains(':') && reference != digest {
            return registry_error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                Value::Null,
            );
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut repos = lock(&self.repos);
        let repo = repos.entry(name.to_string()).or_default();
        let referenced = std::iter::once(&parsed["config"])
            .chain(parsed["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str());
        for d in referenced {
            if !repo.blobs.contains_key(d) {
                return registry_error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    "blob unknown to registry",
                    json!(d),
                );
            }
        }
        repo.manifests
            .insert(digest.clone(), (ct.to_string(), body));
        if !reference.contains(':') {
            repo.tags.insert(reference.to_string(), digest.clone());
        }
        let mut headers = vec![
            ("docker-content-digest", digest.clone()),
            ("location", format!("/v2/{name}/manifests/{digest}")),
        ];
        if let Some(subject) = parsed["subject"]["digest"].as_str() {
            headers.push(("oci-subject", subject.to_string()));
        }
        status(StatusCode::CREATED, &headers)
    }

    fn upload(
        &self,
        method: &Method,
        name: &str,
        id: &str,
        query: &str,
        body: Bytes,
    ) -> Response<Body> {
        let mut repos = lock(&self.repos);
        let repo = repos.entry(name.to_string()).or_default();
        if *method == Method::POST && id.is_empty() {
            let id = random_hex(8);
            repo.uploads.insert(id.clone(), ());
            return status(
                StatusCode::ACCEPTED,
                &[("location", format!("/v2/{name}/blobs/uploads/{id}"))],
            );
        }
        if *method != Method::PUT || repo.uploads.remove(id).is_none() {
            return not_found("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry");
        }
        let digest = form_pairs(query)
            .into_iter()
            .find(|(k, _)| k == "digest")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if sha256_digest(&body) != digest {
            return registry_error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                Value::Null,
            );
        }
        repo.blobs.insert(digest.clone(), body);
        status(
            StatusCode::CREATED,
            &[
                ("docker-content-digest", digest.clone()),
                ("location", format!("/v2/{name}/blobs/{digest}")),
            ],
        )
    }

    fn referrers(&self, name: &str, digest: &str, query: &str) -> Response<Body> {
        if !*lock(&self.referrers_api) {
            return not_found("UNSUPPORTED", "404 page not found");
        }
        let filter = form_pairs(query)
            .into_iter()
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v);
        let repos = lock(&self.repos);
        let mut manifests = Vec::new();
        if let Some(repo) = repos.get(name) {
            let mut entries: Vec<_> = repo.manifests.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (d, (ct, data)) in entries {
                let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
                if v["subject"]["digest"].as_str() != Some(digest) {
                    continue;
                }
                let artifact_type = v["artifactType"]
                    .as_str()
                    .or_else(|| v["config"]["mediaType"].as_str())
                    .unwrap_or_default()
                    .to_string();
                if filter.as_ref().is_some_and(|f| *f != artifact_type) {
                    continue;
                }
                let mut desc = json!({
                    "mediaType": ct,
                    "digest": d,
                    "size": data.len(),
                    "artifactType": artifact_type,
                });
                if let Some(a) = v.get("annotations") {
                    desc["annotations"] = a.clone();
                }
                manifests.push(desc);
            }
        }
        let mut resp = json_response(
            StatusCode::OK,
            &json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }),
        );
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        );
        if filter.is_some() {
            resp.headers_mut().insert(
                "oci-filters-applied",
                axum::http::HeaderValue::from_static("artifactType"),
            );
        }
        resp
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    lock(&inner.requests).push((parts.method.to_string(), path.clone()));
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    inner.handle(&parts.method, &path, &query, &ct, body)
}

impl ReferrersRegistry {
    /// Starts on a free loopback port, with the referrers API on.
    pub async fn start() -> Result<ReferrersRegistry> {
        let inner = Arc::new(Inner {
            repos: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            referrers_api: Mutex::new(true),
        });
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let server = Server::start("127.0.0.1", router).await?;
        Ok(ReferrersRegistry { inner, server })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.addr.to_string()
    }

    /// Turns the referrers API on or off (off: 404, as registries without it answer).
    pub fn set_referrers_api(&self, on: bool) {
        *lock(&self.inner.referrers_api) = on;
    }

    /// Stores a blob in `repo`.
    pub fn add_blob(&self, repo: &str, blob: &Blob) {
        lock(&self.inner.repos)
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(blob.digest.clone(), blob.data.clone());
    }

    /// Stores manifest bytes under their digest, and tags them when `tag` is given. Returns the
    /// digest.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, blob: &Blob) -> String {
        let mut repos = lock(&self.inner.repos);
        let r = repos.entry(repo.to_string()).or_default();
        r.manifests.insert(
            blob.digest.clone(),
            (blob.media_type.clone(), blob.data.clone()),
        );
        if let Some(t) = tag {
            r.tags.insert(t.to_string(), blob.digest.clone());
        }
        blob.digest.clone()
    }

    /// Stores an image's blobs and manifest, tagged `tag`; returns the manifest digest.
    pub fn add_image(&self, repo: &str, tag: &str, image: &Image) -> String {
        for blob in image.blobs() {
            self.add_blob(repo, blob);
        }
        self.add_manifest(repo, Some(tag), &image.manifest)
    }

    /// Stores an index, its images by digest, and tags the index `tag`.
    pub fn add_index(&self, repo: &str, tag: &str, index: &Index) -> String {
        for image in &index.images {
            for blob in image.blobs() {
                self.add_blob(repo, blob);
            }
            self.add_manifest(repo, None, &image.manifest);
        }
        self.add_manifest(repo, Some(tag), &index.manifest)
    }

    /// After `tag` is next resolved (HEAD or GET by tag), it points at `digest` (a manifest
    /// already stored): the tag moves between a client's check and its pull.
    pub fn move_tag_after_next_resolve(&self, repo: &str, tag: &str, digest: &str) {
        lock(&self.inner.repos)
            .entry(repo.to_string())
            .or_default()
            .moves
            .insert(tag.to_string(), digest.to_string());
    }

    /// Requests so far as (method, path).
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.inner.requests).clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|(m, p)| m.eq_ignore_ascii_case(method) && p.contains(path_contains))
            .count()
    }
}
