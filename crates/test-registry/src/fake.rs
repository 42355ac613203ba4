//! An in-process registry serving images from memory, for what the real one won't do: faults
//! injected per path or digest (statuses, 429 with `Retry-After`, redirects to a [`BlobHost`],
//! corrupt/short/dropped bodies, ignored `Range`, slow bodies, wrong headers), optional Basic or
//! Bearer auth with its own opaque tokens, and a log of every request with its headers.
//!
//! Faults match by substring of the request path, so a digest matches its blob (and a
//! manifest fetched by that digest), `/manifests/` matches every manifest and `""` everything.
//! Several matching faults apply together (e.g. `Slow` and `DropConnection`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use bytes::Bytes;
use serde_json::json;

use crate::error::Result;
use crate::image::{Blob, Image, Index};
use crate::server::{Server, json_response, registry_error};
use crate::util::{form_pairs, lock, parse_basic, random_hex, rfc3339, sha256_digest, unix_now};

/// Something to do wrong when a request matches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status and body (a registry-shaped error JSON when the body is empty).
    Status(u16, String),
    /// 429 `TOOMANYREQUESTS` with `Retry-After: secs`.
    RetryAfter429(u64),
    /// 307 with `Location` set to this URL (e.g. [`BlobHost::url_for`]).
    RedirectTo(String),
    /// Flip (xor 0xff) the byte at this offset of the stored content before serving it.
    CorruptByte(u64),
    /// Serve only the first N bytes of the response body, with a matching `Content-Length`
    /// (a clean, short response).
    Truncate(u64),
    /// Send this `Content-Type` instead of the stored one.
    WrongContentType(String),
    /// Serve these bytes instead of the stored ones, keeping the stored `Docker-Content-Digest`.
    ManifestBody(Blob),
    /// Announce the full `Content-Length`, send N bytes, then abort the connection.
    DropConnection(u64),
    /// Answer 200 with the whole body even when `Range` was sent.
    IgnoreRange,
    /// Send the body in `chunk`-byte pieces, waiting `delay` before each.
    Slow {
        /// Bytes per piece.
        chunk: usize,
        /// Pause before each piece.
        delay: Duration,
    },
    /// Wait this long before answering at all.
    Delay(Duration),
    /// Set (or override) a response header, e.g. a wrong `Docker-Content-Digest`.
    Header(String, String),
    /// Announce the full `Content-Length`, send this many bytes of the body, then send nothing
    /// more and keep the connection open forever: a stalled transfer that only the client's
    /// own idle timeout can end. With [`Fault::Slow`] too, those bytes come in its pieces.
    Stall {
        /// Bytes sent before going silent (0: only the headers).
        after_bytes: u64,
    },
    /// Hold the answer until a request whose path contains `matcher` has arrived, then answer
    /// normally; 503 when `timeout` passes first. Proves two requests were in flight at once.
    AwaitRequest {
        /// What the awaited request's path contains.
        matcher: String,
        /// How long to wait for it.
        timeout: Duration,
    },
    /// Answer this status with `Retry-After` set to this exact value (seconds, an HTTP date, or
    /// anything else a hostile registry may send).
    RetryAfter {
        /// The status (429, 503, …).
        status: u16,
        /// The header's value, sent as given.
        value: String,
    },
    /// A tag list that never ends: every `tags/list` request gets `tags_per_page` new tags of
    /// `tag_len` characters and a `Link` to the page after it, each page at a new URL.
    EndlessTagPages {
        /// Tags on each page.
        tags_per_page: usize,
        /// Length of each tag (at least 17, at most 128).
        tag_len: usize,
    },
    /// The fake token server answers with this raw JSON as `expires_in` (`18446744073709551615`,
    /// `1e300`, `-1`, `"300"`, …).
    TokenExpiresIn(String),
}

/// One request as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Status answered (0 if the response was never produced).
    pub status: u16,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The `Authorization` header.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }
    /// The `Range` header.
    pub fn range(&self) -> Option<&str> {
        self.header("range")
    }
}

/// Authentication the fake registry demands on `/v2/…`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FakeAuth {
    /// Everything is public.
    #[default]
    None,
    /// `Basic realm="fake-registry"`; these (user, password) pairs are accepted.
    Basic(Vec<(String, String)>),
    /// `Bearer realm="<url>/token",service="fake-registry",scope=…`; `GET /token` hands out
    /// opaque tokens to these users (wrong password → 401) and, if `anonymous`, to anyone.
    /// A token is good for the repositories named in the scopes it was asked for.
    /// `POST /token` answers 404 (clients fall back to GET).
    Bearer {
        /// Accepted (user, password) pairs.
        users: Vec<(String, String)>,
        /// Whether requests without credentials get a token.
        anonymous: bool,
    },
}

/// Options of [`FakeRegistry::start`].
#[derive(Clone, Debug, Default)]
pub struct FakeRegistryOptions {
    /// Authentication on `/v2/…`.
    pub auth: FakeAuth,
}

#[derive(Debug)]
struct FaultRule {
    matcher: String,
    fault: Fault,
    remaining: Option<usize>,
    /// Only for requests that ask a `Range`.
    ranged_only: bool,
}

/// Request log and fault table, shared by [`FakeRegistry`] and [`BlobHost`].
#[derive(Debug, Default)]
struct Core {
    requests: Mutex<Vec<RecordedRequest>>,
    faults: Mutex<Vec<FaultRule>>,
    /// Woken at every request, for [`Fault::AwaitRequest`].
    arrived: tokio::sync::Notify,
}

impl Core {
    fn record(&self, parts: &Parts) -> usize {
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut requests = lock(&self.requests);
        requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(String::from),
            headers,
            status: 0,
        });
        let index = requests.len() - 1;
        drop(requests);
        self.arrived.notify_waiters();
        index
    }

    /// Whether a request whose path contains `matcher` arrives (or had) within `timeout`.
    async fn await_request(&self, matcher: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            // Registered before looking, so a request arriving in between still wakes us.
            notified.as_mut().enable();
            if lock(&self.requests)
                .iter()
                .any(|r| r.path.contains(matcher))
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(r) = lock(&self.requests).get_mut(index) {
            r.status = status;
        }
    }

    /// The faults matching `parts`, consuming one use of each counted rule.
    fn take_faults(&self, parts: &Parts) -> Vec<Fault> {
        let path = parts.uri.path();
        let ranged = parts.headers.contains_key("range");
        let mut rules = lock(&self.faults);
        let mut out = Vec::new();
        for rule in rules.iter_mut() {
            if path.contains(&rule.matcher)
                && rule.remaining != Some(0)
                && (ranged || !rule.ranged_only)
            {
                out.push(rule.fault.clone());
                if let Some(n) = &mut rule.remaining {
                    *n -= 1;
                }
            }
        }
        rules.retain(|r| r.remaining != Some(0));
        out
    }

    fn add_fault(&self, matcher: &str, fault: Fault, remaining: Option<usize>) {
        self.add_rule(matcher, fault, remaining, false);
    }

    fn add_rule(&self, matcher: &str, fault: Fault, remaining: Option<usize>, ranged_only: bool) {
        lock(&self.faults).push(FaultRule {
            matcher: matcher.to_string(),
            fault,
            remaining,
            ranged_only,
        });
    }

    fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.requests)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains))
            .count()
    }
}

fn set_header(resp: &mut Response<Body>, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().insert(n, v);
    }
}

/// A response for faults that replace the whole answer, if any.
fn immediate_fault(faults: &[Fault]) -> Option<Response<Body>> {
    faults.iter().find_map(|f| match f {
        Fault::Status(code, body) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = if body.is_empty() {
                registry_error(status, "UNKNOWN", "injected fault", json!({"status": code}))
            } else {
                let mut r = Response::new(Body::from(body.clone()));
                *r.status_mut() = status;
                set_header(&mut r, "content-type", "application/json; charset=utf-8");
                r
            };
            set_header(&mut resp, "docker-distribution-api-version", "registry/2.0");
            Some(resp)
        }
        Fault::RetryAfter429(secs) => {
            let mut resp = registry_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit.",
                json!(null),
            );
            set_header(&mut resp, "retry-after", &secs.to_string());
            Some(resp)
        }
        Fault::RetryAfter { status, value } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = registry_error(status, "UNAVAILABLE", "come back later", json!(null));
            set_header(&mut resp, "retry-after", value);
            Some(resp)
        }
        Fault::RedirectTo(url) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            set_header(&mut resp, "location", url);
            Some(resp)
        }
        _ => None,
    })
}

/// Parses `bytes=N-` or `bytes=N-M` (a single range).
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some((start, end))
}

/// Serves stored bytes (a manifest or blob) honouring `Range` and applying body faults.
fn serve_content(
    method: &Method,
    headers: &HeaderMap,
    stored: Bytes,
    content_type: &str,
    digest: &str,
    faults: &[Fault],
) -> Response<Body> {
    let mut data = stored;
    for f in faults {
        match f {
            Fault::ManifestBody(blob) => data = blob.data.clone(),
            Fault::CorruptByte(offset) => {
                if let Ok(i) = usize::try_from(*offset)
                    && i < data.len()
                {
                    let mut v = data.to_vec();
                    v[i] ^= 0xff;
                    data = v.into();
                }
            }
            _ => {}
        }
    }
    let total = data.len() as u64;
    let ignore_range = faults.iter().any(|f| matches!(f, Fault::IgnoreRange));
    let mut status = StatusCode::OK;
    let mut content_range = None;
    if !ignore_range && let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        match parse_range(range) {
            Some((start, end)) if start < total => {
                let end = end.map_or(total - 1, |e| e.min(total - 1));
                if end >= start {
                    // Bounds checked above; the casts cannot truncate because both are < len.
                    data = data.slice(start as usize..=end as usize);
                    status = StatusCode::PARTIAL_CONTENT;
                    content_range = Some(format!("bytes {start}-{end}/{total}"));
                }
            }
            _ => {
                let mut resp = registry_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_INVALID",
                    "invalid content range",
                    json!({"range": range}),
                );
                set_header(&mut resp, "content-range", &format!("bytes */{total}"));
                return resp;
            }
        }
    }
    for f in faults {
        if let Fault::Truncate(n) = f {
            let n = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
            data = data.slice(..n);
        }
    }
    let length = data.len();
    let drop_after = faults.iter().find_map(|f| match f {
        Fault::DropConnection(n) => Some(usize::try_from(*n).unwrap_or(usize::MAX)),
        _ => None,
    });
    let slow = faults.iter().find_map(|f| match f {
        Fault::Slow { chunk, delay } => Some(((*chunk).max(1), *delay)),
        _ => None,
    });
    let stall_after = faults.iter().find_map(|f| match f {
        Fault::Stall { after_bytes } => Some(usize::try_from(*after_bytes).unwrap_or(usize::MAX)),
        _ => None,
    });
    let body = if method == Method::HEAD {
        Body::empty()
    } else if let Some(n) = stall_after {
        stalled_body(data, n, slow)
    } else if drop_after.is_some() || slow.is_some() {
        streamed_body(data, drop_after, slow)
    } else {
        Body::from(data)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    set_header(&mut resp, "content-type", content_type);
    set_header(&mut resp, "content-length", &length.to_string());
    set_header(&mut resp, "docker-content-digest", digest);
    set_header(&mut resp, "accept-ranges", "bytes");
    set_header(&mut resp, "etag", &format!("\"{digest}\""));
    if let Some(cr) = content_range {
        set_header(&mut resp, "content-range", &cr);
    }
    apply_header_faults(&mut resp, faults);
    resp
}

fn apply_header_faults(resp: &mut Response<Body>, faults: &[Fault]) {
    for f in faults {
        match f {
            Fault::WrongContentType(ct) => set_header(resp, "content-type", ct),
            Fault::Header(name, value) => set_header(resp, name, value),
            _ => {}
        }
    }
}

/// A body sent in pieces (optionally slowly) that aborts the connection after `drop_after` bytes.
fn streamed_body(data: Bytes, drop_after: Option<usize>, slow: Option<(usize, Duration)>) -> Body {
    let (chunk, delay) = slow.unwrap_or((64 * 1024, Duration::ZERO));
    let limit = drop_after.unwrap_or(usize::MAX).min(data.len());
    let dropping = drop_after.is_some_and(|n| n < data.len()) || drop_after == Some(0);
    let stream = futures_util::stream::unfold(0usize, move |sent| {
        let data = data.clone();
        async move {
            if sent >= limit {
                if dropping && sent != usize::MAX {
                    // hyper drops what it has buffered but not written when the body fails:
                    // pause (returning Pending) so the bytes already yielded reach the socket.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Some((
                        Err(std::io::Error::other("injected fault: connection dropped")),
                        usize::MAX,
                    ));
                }
                return None;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let end = (sent + chunk).min(limit);
            Some((Ok(data.slice(sent..end)), end))
        }
    });
    Body::from_stream(stream)
}

/// A body that yields the first `after` bytes (in slow pieces with [`Fault::Slow`], at once
/// otherwise), then never yields again (and never ends).
fn stalled_body(data: Bytes, after: usize, slow: Option<(usize, Duration)>) -> Body {
    let head = data.slice(..after.min(data.len()));
    let (chunk, delay) = slow.unwrap_or((head.len().max(1), Duration::ZERO));
    let first = futures_util::stream::unfold(0usize, move |sent| {
        let head = head.clone();
        async move {
            if sent >= head.len() {
                return None;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let end = (sent + chunk).min(head.len());
            Some((Ok::<_, std::io::Error>(head.slice(sent..end)), end))
        }
    });
    // Pending forever: hyper flushes what was yielded, then waits on this until the client
    // gives up and the connection is dropped.
    let silence =
        futures_util::stream::once(std::future::pending::<Result<Bytes, std::io::Error>>());
    Body::from_stream(futures_util::StreamExt::chain(first, silence))
}

#[derive(Debug, Default)]
struct Repo {
    tags: BTreeMap<String, String>,
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
}

#[derive(Debug)]
struct Inner {
    core: Core,
    auth: FakeAuth,
    url: String,
    repos: Mutex<HashMap<String, Repo>>,
    tokens: Mutex<HashMap<String, Vec<String>>>,
}

/// The in-memory registry; stops when dropped.
pub struct FakeRegistry {
    inner: Arc<Inner>,
    _server: Server,
}

enum Route<'a> {
    Base,
    Token,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if path == "/token" {
        return Route::Token;
    }
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Unknown;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags(name);
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Route::Manifest(&rest[..i], &rest[i + "/manifests/".len()..]);
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Route::Blob(&rest[..i], &rest[i + "/blobs/".len()..]);
    }
    Route::Unknown
}

fn scope_allows_pull(scope: &str, repo: &str) -> bool {
    scope.split(' ').any(|s| {
        let Some(rest) = s.strip_prefix("repository:") else {
            return false;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            return false;
        };
        name == repo && actions.split(',').any(|a| a == "pull" || a == "*")
    })
}

impl Inner {
    fn challenge(&self, repo: Option<&str>) -> Response<Body> {
        let mut resp = registry_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
            match repo {
                Some(r) => json!([{"Type": "repository", "Name": r, "Action": "pull"}]),
                None => json!(null),
            },
        );
        let value = match &self.auth {
            FakeAuth::Basic(_) => "Basic realm=\"fake-registry\"".to_string(),
            _ => {
                let mut v = format!(
                    "Bearer realm=\"{}/token\",service=\"fake-registry\"",
                    self.url
                );
                if let Some(r) = repo {
                    v.push_str(&format!(",scope=\"repository:{r}:pull\""));
                }
                v
            }
        };
        set_header(&mut resp, "www-authenticate", &value);
        set_header(&mut resp, "docker-distribution-api-version", "registry/2.0");
        resp
    }

    /// `None` when allowed, else the 401 to send.
    fn check_auth(&self, headers: &HeaderMap, repo: Option<&str>) -> Option<Response<Body>> {
        let authz = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let ok = match &self.auth {
            FakeAuth::None => true,
            FakeAuth::Basic(users) => authz
                .and_then(parse_basic)
                .is_some_and(|(u, p)| users.iter().any(|(uu, pp)| *uu == u && *pp == p)),
            FakeAuth::Bearer { .. } => {
                let token = authz.and_then(|a| a.strip_prefix("Bearer "));
                let tokens = lock(&self.tokens);
                match token.and_then(|t| tokens.get(t.trim())) {
                    None => false,
                    Some(scopes) => match repo {
                        None => true,
                        Some(r) => scopes.iter().any(|s| scope_allows_pull(s, r)),
                    },
                }
            }
        };
        (!ok).then(|| self.challenge(repo))
    }

    fn token(&self, parts: &Parts, faults: &[Fault]) -> Response<Body> {
        let FakeAuth::Bearer { users, anonymous } = &self.auth else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"details": "no token service"}),
            );
        };
        if parts.method != Method::GET {
            return json_response(StatusCode::NOT_FOUND, &json!({"details": "use GET"}));
        }
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic);
        let allowed = match basic {
            Some((u, p)) => users.iter().any(|(uu, pp)| *uu == u && *pp == p),
            None => *anonymous,
        };
        if !allowed {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"details": "incorrect username or password"}),
            );
        }
        let scopes: Vec<String> = form_pairs(parts.uri.query().unwrap_or(""))
            .into_iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect();
        let token = format!("fake-{}", random_hex(16));
        lock(&self.tokens).insert(token.clone(), scopes);
        let expires_in = faults
            .iter()
            .find_map(|f| match f {
                Fault::TokenExpiresIn(raw) => Some(raw.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "300".to_owned());
        // Written by hand: a hostile `expires_in` (2^64-1, 1e300) must reach the client exactly
        // as given, which a JSON value would round or refuse.
        let body = format!(
            r#"{{"token":{t},"access_token":{t},"expires_in":{expires_in},"issued_at":{at}}}"#,
            t = json!(token),
            at = json!(rfc3339(unix_now())),
        );
        let mut resp = Response::new(Body::from(body));
        set_header(&mut resp, "content-type", "application/json");
        resp
    }

    fn manifest(
        &self,
        parts: &Parts,
        repo: &str,
        reference: &str,
        faults: &[Fault],
    ) -> Response<Body> {
        let repos = lock(&self.repos);
        let Some(r) = repos.get(repo) else {
            return registry_error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                json!({"name": repo}),
            );
        };
        let digest = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            r.tags.get(reference).cloned()
        };
        let found = digest.and_then(|d| r.manifests.get(&d).map(|m| (d, m.clone())));
        drop(repos);
        match found {
            Some((digest, (ct, data))) => {
                serve_content(&parts.method, &parts.headers, data, &ct, &digest, faults)
            }
            None => registry_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
                if reference.contains(':') {
                    json!({"Digest": reference})
                } else {
                    json!({"Tag": reference})
                },
            ),
        }
    }

    fn blob(&self, parts: &Parts, repo: &str, digest: &str, faults: &[Fault]) -> Response<Body> {
        let data = lock(&self.repos)
            .get(repo)
            .and_then(|r| r.blobs.get(digest).cloned());
        match data {
            Some(data) => serve_content(
                &parts.method,
                &parts.headers,
                data,
                "application/octet-stream",
                digest,
                faults,
            ),
            None => registry_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
                json!(digest),
            ),
        }
    }

    fn tags(&self, parts: &Parts, repo: &str) -> Response<Body> {
        let query = form_pairs(parts.uri.query().unwrap_or(""));
        let get = |k: &str| query.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        let n: Option<usize> = get("n").and_then(|n| n.parse().ok());
        let last = get("last");
        let repos = lock(&self.repos);
        let Some(r) = repos.get(repo) else {
            return registry_error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                json!({"name": repo}),
            );
        };
        let mut tags: Vec<&String> = r
            .tags
            .keys()
            .filter(|t| last.as_ref().is_none_or(|l| *t > l))
            .collect();
        let mut more = false;
        if let Some(n) = n
            && tags.len() > n
        {
            tags.truncate(n);
            more = true;
        }
        let mut resp = json_response(StatusCode::OK, &json!({"name": repo, "tags": tags}));
        if more && let (Some(n), Some(last)) = (n, tags.last()) {
            let link = format!("</v2/{repo}/tags/list?last={last}&n={n}>; rel=\"next\"");
            set_header(&mut resp, "link", &link);
        }
        resp
    }
}

fn endless_tags(faults: &[Fault]) -> Option<(usize, usize)> {
    faults.iter().find_map(|f| match f {
        Fault::EndlessTagPages {
            tags_per_page,
            tag_len,
        } => Some((*tags_per_page, (*tag_len).clamp(17, 128))),
        _ => None,
    })
}

/// One page of [`Fault::EndlessTagPages`]: the page number rides in `last`, so every page has
/// its own URL and its tags sort after the previous page's, as a real registry's would.
fn endless_tag_page(parts: &Parts, repo: &str, per_page: usize, len: usize) -> Response<Body> {
    let query = form_pairs(parts.uri.query().unwrap_or(""));
    let page: u64 = query
        .iter()
        .find(|(k, _)| k == "last")
        .and_then(|(_, v)| v.get(1..9))
        .and_then(|n| n.parse().ok())
        .map_or(0, |n: u64| n + 1);
    let tags: Vec<String> = (0..per_page)
        .map(|i| format!("p{page:08}-{i:06}-{}", "x".repeat(len - 17)))
        .collect();
    let mut resp = json_response(StatusCode::OK, &json!({"name": repo, "tags": tags}));
    if let Some(last) = tags.last() {
        let link = format!("</v2/{repo}/tags/list?last={last}&n={per_page}>; rel=\"next\"");
        set_header(&mut resp, "link", &link);
    }
    resp
}

async fn handle_registry(State(inner): State<Arc<Inner>>, req: Request) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let index = inner.core.record(&parts);
    let faults = inner.core.take_faults(&parts);
    for f in &faults {
        if let Fault::Delay(d) = f {
            tokio::time::sleep(*d).await;
        }
        if let Fault::AwaitRequest { matcher, timeout } = f
            && !inner.core.await_request(matcher, *timeout).await
        {
            inner.core.set_status(index, 503);
            return registry_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the awaited request never came",
                json!(matcher),
            );
        }
    }
    let path = parts.uri.path().to_string();
    let mut resp = match route(&path) {
        Route::Token => immediate_fault(&faults).unwrap_or_else(|| inner.token(&parts, &faults)),
        Route::Unknown => registry_error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "The operation is unsupported.",
            json!(path),
        ),
        r => {
            let repo = match r {
                Route::Tags(n) | Route::Manifest(n, _) | Route::Blob(n, _) => Some(n),
                _ => None,
            };
            if let Some(challenge) = inner.check_auth(&parts.headers, repo) {
                challenge
            } else if let Some(resp) = immediate_fault(&faults) {
                resp
            } else if parts.method != Method::GET && parts.method != Method::HEAD {
                registry_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "The operation is unsupported.",
                    json!(null),
                )
            } else {
                match r {
                    Route::Base => json_response(StatusCode::OK, &json!({})),
                    Route::Tags(name) => match endless_tags(&faults) {
                        Some((per_page, len)) => endless_tag_page(&parts, name, per_page, len),
                        None => inner.tags(&parts, name),
                    },
                    Route::Manifest(name, reference) => {
                        inner.manifest(&parts, name, reference, &faults)
                    }
                    Route::Blob(name, digest) => inner.blob(&parts, name, digest, &faults),
                    Route::Token | Route::Unknown => Response::new(Body::empty()),
                }
            }
        }
    };
    if path.starts_with("/v2") {
        set_header(&mut resp, "docker-distribution-api-version", "registry/2.0");
    }
    // Header faults also apply to responses without stored content (errors, /v2/).
    if !matches!(route(&path), Route::Manifest(..) | Route::Blob(..)) {
        apply_header_faults(&mut resp, &faults);
    }
    inner.core.set_status(index, resp.status().as_u16());
    resp
}

impl FakeRegistry {
    /// Serves an empty registry on a free port of 127.0.0.1.
    pub async fn start(opts: FakeRegistryOptions) -> Result<FakeRegistry> {
        crate::util::install_crypto_provider();
        // Bind first: the challenge's realm needs the URL before the router exists.
        let listener = Server::bind("127.0.0.1").await?;
        let addr = listener
            .local_addr()
            .map_err(|e| crate::TestError::io("reading the local address", e))?;
        let inner = Arc::new(Inner {
            core: Core::default(),
            auth: opts.auth,
            url: format!("http://{addr}"),
            repos: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .fallback(handle_registry)
            .with_state(inner.clone());
        let server = Server::serve(listener, router)?;
        Ok(FakeRegistry {
            inner,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.inner.url.trim_start_matches("http://").to_string()
    }

    /// Stores a blob in `repo`.
    pub fn add_blob(&self, repo: &str, blob: &Blob) {
        lock(&self.inner.repos)
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(blob.digest.clone(), blob.data.clone());
    }

    /// Stores manifest bytes under `reference`: a digest (`sha256:…`, stored as given even if it
    /// is not the bytes' digest) or a tag (stored under the bytes' digest and tagged).
    /// Any size is served, e.g. 4 MiB+ for oversized-manifest tests. Returns the digest key.
    pub fn add_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let mut repos = lock(&self.inner.repos);
        let r = repos.entry(repo.to_string()).or_default();
        let digest = if reference.contains(':') {
            reference.to_string()
        } else {
            let d = sha256_digest(&bytes);
            r.tags.insert(reference.to_string(), d.clone());
            d
        };
        r.manifests
            .insert(digest.clone(), (content_type.to_string(), bytes));
        digest
    }

    /// Stores an image's blobs and manifest, tagged `tag`.
    pub fn add_image(&self, repo: &str, tag: &str, image: &Image) {
        for blob in image.blobs() {
            self.add_blob(repo, blob);
        }
        self.add_manifest_raw(
            repo,
            tag,
            &image.manifest.media_type,
            image.manifest.data.clone(),
        );
    }

    /// Stores every image (by digest) and the index, tagged `tag`.
    pub fn add_index(&self, repo: &str, tag: &str, index: &Index) {
        for image in &index.images {
            let digest = image.digest().to_string();
            self.add_image(repo, &digest, image);
        }
        self.add_manifest_raw(
            repo,
            tag,
            &index.manifest.media_type,
            index.manifest.data.clone(),
        );
    }

    /// Applies `fault` to every request whose path contains `matcher`, until cleared.
    pub fn fault(&self, matcher: &str, fault: Fault) {
        self.inner.core.add_fault(matcher, fault, None);
    }

    /// Applies `fault` to the next `times` matching requests only.
    pub fn fault_times(&self, matcher: &str, fault: Fault, times: usize) {
        self.inner.core.add_fault(matcher, fault, Some(times));
    }

    /// Applies `fault` to matching requests that ask a `Range` (all of them with `times`
    /// `None`, else the next `times`): a range of a blob fetched over several connections, not
    /// the stream that started it.
    pub fn fault_ranges(&self, matcher: &str, fault: Fault, times: Option<usize>) {
        self.inner.core.add_rule(matcher, fault, times, true);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.inner.core.faults).clear();
    }

    /// Redirects GETs of these blobs to `host` (which gets a copy of each), like a registry
    /// handing out pre-signed storage URLs.
    pub fn redirect_blobs_to(&self, host: &BlobHost, blobs: &[&Blob]) {
        for blob in blobs {
            host.add_blob(blob);
            self.fault(&blob.digest, Fault::RedirectTo(host.url_for(&blob.digest)));
        }
    }

    /// Invalidates every token handed out so far: the next request with one gets 401 and a
    /// fresh challenge (a token expiring mid-pull).
    pub fn revoke_tokens(&self) {
        lock(&self.inner.tokens).clear();
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.core.requests).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.core.requests).clear();
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.inner.core.count(method, path_contains)
    }
}

#[derive(Debug)]
struct HostInner {
    core: Core,
    blobs: Mutex<HashMap<String, Bytes>>,
}

/// A plain blob server on another loopback address (127.0.0.2 when bindable, else another port
/// of 127.0.0.1), the target of [`FakeRegistry`] redirects. Records every request, so a test can
/// check that no `Authorization` leaked to it. Serves `/blobs/<digest>` with `Range`; faults
/// work as on the registry.
pub struct BlobHost {
    inner: Arc<HostInner>,
    server: Server,
}

async fn handle_host(State(inner): State<Arc<HostInner>>, req: Request) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let index = inner.core.record(&parts);
    let faults = inner.core.take_faults(&parts);
    for f in &faults {
        if let Fault::Delay(d) = f {
            tokio::time::sleep(*d).await;
        }
    }
    let digest = parts
        .uri
        .path()
        .strip_prefix("/blobs/")
        .unwrap_or_default()
        .to_string();
    let data = lock(&inner.blobs).get(&digest).cloned();
    let resp = if let Some(resp) = immediate_fault(&faults) {
        resp
    } else if let Some(data) = data {
        serve_content(
            &parts.method,
            &parts.headers,
            data,
            "application/octet-stream",
            &digest,
            &faults,
        )
    } else {
        let mut r = Response::new(Body::from("<Error><Code>NoSuchKey</Code></Error>"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    inner.core.set_status(index, resp.status().as_u16());
    resp
}

impl BlobHost {
    /// Starts on 127.0.0.2 if the system lets us bind it, else on 127.0.0.1.
    pub async fn start() -> Result<BlobHost> {
        let listener = match Server::bind("127.0.0.2").await {
            Ok(l) => l,
            Err(_) => Server::bind("127.0.0.1").await?,
        };
        let inner = Arc::new(HostInner {
            core: Core::default(),
            blobs: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .fallback(handle_host)
            .with_state(inner.clone());
        let server = Server::serve(listener, router)?;
        Ok(BlobHost { inner, server })
    }

    /// `http://127.0.0.2:PORT` (or 127.0.0.1).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stores a blob.
    pub fn add_blob(&self, blob: &Blob) {
        lock(&self.inner.blobs).insert(blob.digest.clone(), blob.data.clone());
    }

    /// Where a blob is served, with a query like a pre-signed URL.
    pub fn url_for(&self, digest: &str) -> String {
        format!("{}/blobs/{digest}?X-Amz-Signature=haul-test", self.url())
    }

    /// Applies `fault` to every request whose path contains `matcher`.
    pub fn fault(&self, matcher: &str, fault: Fault) {
        self.inner.core.add_fault(matcher, fault, None);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.core.requests).clone()
    }

    /// Whether any request arrived with an `Authorization` header.
    pub fn saw_authorization(&self) -> bool {
        self.requests().iter().any(|r| r.authorization().is_some())
    }
}

/// A raw TCP server that answers every request by sending the bytes of a response's head one at
/// a time, `delay` apart, and never finishes it: the slowloris that no per-read idle timeout
/// catches. Counts the connections it accepted.
pub struct SlowHeaders {
    addr: std::net::SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowHeaders {
    /// Listens on a free port of 127.0.0.1, sending one byte every `delay`.
    pub async fn start(delay: Duration) -> Result<SlowHeaders> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = Server::bind("127.0.0.1").await?;
        let addr = listener
            .local_addr()
            .map_err(|e| crate::TestError::io("reading the local address", e))?;
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    // Whatever the client sent; the answer is the same.
                    let _ = socket.read(&mut request).await;
                    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";
                    for byte in head.iter().chain(std::iter::repeat(&b'x')) {
                        tokio::time::sleep(delay).await;
                        if socket.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(SlowHeaders {
            addr,
            connections,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/blob`.
    pub fn url(&self) -> String {
        format!("http://{}/blob", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SlowHeaders {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-"), Some((10, None)));
        assert_eq!(parse_range("bytes=0-99"), Some((0, Some(99))));
        assert_eq!(parse_range("bytes=a-"), None);
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/v2/"), Route::Base));
        assert!(matches!(route("/v2/a/b/tags/list"), Route::Tags("a/b")));
        assert!(matches!(
            route("/v2/a/manifests/latest"),
            Route::Manifest("a", "latest")
        ));
        assert!(matches!(
            route("/v2/x/blobs/sha256:00"),
            Route::Blob("x", "sha256:00")
        ));
        assert!(matches!(route("/other"), Route::Unknown));
    }

    #[test]
    fn pull_scope() {
        assert!(scope_allows_pull("repository:a/b:pull", "a/b"));
        assert!(scope_allows_pull("repository:a/b:push,pull", "a/b"));
        assert!(!scope_allows_pull("repository:a/b:push", "a/b"));
        assert!(!scope_allows_pull("repository:a/c:pull", "a/b"));
    }
}
