//! The registry HTTP client: endpoints, the `/v2/` ping, authenticated requests with retries,
//! manifests (capped, verified) and blob responses for the caller to stream.
//!
//! One [`RegistryClient`] is shared by every request of a process so connections, challenges and
//! tokens are reused. HTTPS with the system's roots is the default; plain HTTP (and unverified TLS)
//! is used only for loopback registries and those listed in `insecure-registries`, trying HTTPS
//! first like docker. Requests that fail for transient reasons (connect errors, 5xx, 408, 429) are
//! retried with exponential backoff and jitter, honouring `Retry-After`; a 401 refreshes the token
//! once. Nothing here reads a blob body: the caller streams it.
//!
//! A [`Repository`] has an ordered list of endpoints: the mirrors configured for its registry in
//! `registry-mirrors`, then the registry itself. Each request tries them in that order; a mirror
//! that fails in any way (unreachable, timeout, 5xx, 404, refused credentials) hands the request
//! to the next endpoint instead of failing it, and only the registry's own error is returned.
//! The image's identity never changes: the repository path, tags and digests are the upstream's
//! (a Docker Hub mirror is asked for `library/alpine` like the hub), only the host contacted
//! differs. Each mirror is its own host for authentication: its challenge, tokens and
//! credentials (looked up under the mirror's `host[:port]`, never the upstream's name), so the
//! upstream's password never reaches a mirror. A mirror URL is used with the scheme it was given:
//! `http://` means plain HTTP, `https://` verifies TLS as for any registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};

use super::auth::{Authenticator, CredentialStore};
use super::error::{self, ForeignUrlRefusal, RegistryError, TagListProblem};
use super::foreign;
use super::retry::RetryWaits;
use super::throughput::MinRate;
use crate::config::{self, Config};
use crate::digest::Digest;
use crate::manifest::{MAX_MANIFEST_BYTES, media_type};
use crate::reference::Reference;

const USER_AGENT: &str = concat!("haul/", env!("CARGO_PKG_VERSION"));
/// Error bodies are only read to find the registry's error code.
const MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Knobs that are not part of the user's config file.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// First retry delay; doubled per attempt, with jitter.
    pub retry_base_delay: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for response bytes, so a stalled transfer fails (and is
    /// retried) instead of hanging. Not a limit on the whole request: layers can take minutes.
    /// `None` takes the config file's `download-stall-timeout`.
    pub read_timeout: Option<Duration>,
    /// Host names answered without DNS, as curl's `--resolve` does: lets tests reach a local
    /// registry under a name that is not loopback, to exercise TLS verification. Registries and
    /// token realms only: foreign layer URLs are always resolved (and checked) for real.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// CA certificates (DER) trusted besides the system's, for registries whose certificates a
    /// private CA signed (tests use a throwaway one).
    pub root_certificates: Vec<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry_base_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            read_timeout: None,
            resolve: Vec::new(),
            root_certificates: Vec::new(),
        }
    }
}

/// How many attempts in a row one mirror gets at one blob before the next endpoint is asked:
/// the first may be a blip worth resuming on the mirror, a second failure says it is the
/// mirror's problem (a cache that keeps dropping the stream) and the upstream should serve it.
const MIRROR_TRIES_PER_BLOB: u32 = 2;

#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built on first use: loading the system's CA certificates takes tens of milliseconds, which
    /// a pull from a loopback or insecure registry (or one already up to date) need not pay.
    secure: OnceLock<Result<reqwest::Client, String>>,
    insecure: reqwest::Client,
    /// For foreign layer URLs: verified TLS, no credentials, and only the addresses
    /// [`super::foreign`] allows.
    foreign: OnceLock<Result<reqwest::Client, String>>,
    read_timeout: Duration,
    auth: Authenticator,
    config: Arc<Config>,
    options: ClientOptions,
    /// Base URLs whose `/v2/` has been pinged: registries by host (scheme learnt), mirrors by
    /// their configured URL.
    bases: Mutex<HashMap<String, url::Url>>,
}

/// What a HEAD of a manifest told us.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// A manifest as served: the exact bytes, the served media type and the digest of those bytes.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

impl RegistryClient {
    pub fn new(
        config: Arc<Config>,
        credentials: Arc<dyn CredentialStore>,
        options: ClientOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let read_timeout = options
            .read_timeout
            .unwrap_or(config.download_stall_timeout);
        // Unverified TLS installs no certificate verifier, so this one is cheap to build now; it
        // also checks the proxy settings before any request.
        let insecure = build_http(&config, &options, read_timeout, true)?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                secure: OnceLock::new(),
                insecure,
                foreign: OnceLock::new(),
                read_timeout,
                auth: Authenticator::new(credentials),
                config,
                options,
                bases: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A handle for one repository: the mirrors configured for the reference's registry, in
    /// order, then the registry's own endpoint.
    pub fn repository(&self, reference: &Reference) -> Repository {
        let mirrors: Vec<Endpoint> = self
            .inner
            .config
            .mirrors_for(reference.registry())
            .iter()
            .filter_map(Endpoint::mirror)
            .collect();
        Repository {
            client: self.clone(),
            state: Arc::new(EndpointState {
                unreachable: Mutex::new(vec![false; mirrors.len()]),
                blob_cursor: Mutex::new(HashMap::new()),
            }),
            mirrors: mirrors.into(),
            upstream: Endpoint {
                host: reference.api_host().to_owned(),
                credentials: reference.registry().to_owned(),
                mirror: None,
            },
            name: reference.repository().to_owned(),
        }
    }

    /// The client for foreign layer URLs: never carries credentials, connects only where
    /// [`super::foreign`] allows.
    fn foreign_http(&self) -> Result<&reqwest::Client, RegistryError> {
        let inner = &self.inner;
        inner
            .foreign
            .get_or_init(|| {
                build_foreign_http(&inner.config, &inner.options, inner.read_timeout)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|detail| RegistryError::Transport {
                host: "(client setup)".to_owned(),
                detail: detail.clone(),
            })
    }

    fn secure(&self) -> Result<&reqwest::Client, RegistryError> {
        let inner = &self.inner;
        inner
            .secure
            .get_or_init(|| {
                build_http(&inner.config, &inner.options, inner.read_timeout, false)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|detail| RegistryError::Transport {
                host: "(TLS setup)".to_owned(),
                detail: detail.clone(),
            })
    }

    /// How long a response may take to send its headers, and the window over which a body must
    /// keep [`super::throughput::MIN_BYTES_PER_WINDOW`]: `download-stall-timeout`.
    pub(crate) fn stall_timeout(&self) -> Duration {
        self.inner.read_timeout
    }

    /// The client for a token request to `realm`, asked for by the registry at `registry_host`.
    ///
    /// Credentials go to a realm over HTTPS, verified as any registry is. Plain HTTP (or TLS
    /// without verification) only when the registry itself may be spoken to that way (loopback
    /// or `insecure-registries`) and the realm is on the registry's own host name or is itself
    /// such a host: marking a registry insecure accepts clear text to that host, not to any host
    /// it names. This is go-containerregistry's rule, narrowed to the host.
    pub(crate) fn realm_client(
        &self,
        registry_host: &str,
        realm: &url::Url,
    ) -> Result<&reqwest::Client, RegistryError> {
        let realm_host = match (realm.host_str(), realm.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let same_name = realm.host_str().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(config::host_name(registry_host))
        });
        let insecure_ok = self.allows_plain_http(registry_host)
            && (same_name || self.allows_plain_http(&realm_host));
        match realm.scheme() {
            "https" if insecure_ok => Ok(&self.inner.insecure),
            "https" => self.secure(),
            "http" if insecure_ok => Ok(&self.inner.insecure),
            "http" => Err(RegistryError::InsecureRealm {
                registry: registry_host.to_owned(),
                realm: realm.to_string(),
            }),
            _ => Err(RegistryError::Token {
                realm: realm.to_string(),
                detail: "the realm is not an http(s) URL".to_owned(),
            }),
        }
    }

    /// `GET /v2/` on `host` without credentials (the scheme learnt as for any request) and the
    /// response as it is, usually 200 or a 401 with the challenges: `login` answers those itself.
    /// Returns the `/v2/` URL with it.
    pub(crate) async fn ping(
        &self,
        host: &str,
    ) -> Result<(url::Url, reqwest::Response), RegistryError> {
        let base = self.registry_base(host).await?;
        let v2 = base.join("v2/").map_err(|e| RegistryError::BadUrl {
            url: base.to_string(),
            detail: e.to_string(),
        })?;
        let resp = self
            .send_with_retries(host, Method::GET, &v2, None, true)
            .await?;
        Ok((v2, resp))
    }

    /// [`read_capped_within`] over this client's `download-stall-timeout`.
    pub(crate) async fn read_capped(
        &self,
        resp: reqwest::Response,
        limit: usize,
        url: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        read_capped_within(resp, limit, url, self.stall_timeout()).await
    }

    /// The HTTP client for requests to `host`: unverified TLS only where plain HTTP is allowed.
    pub(crate) fn http_client(&self, host: &str) -> Result<&reqwest::Client, RegistryError> {
        self.http_for(host)
    }

    /// The delay before retry number `attempt` (1-based): exponential with ±25% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.inner.options.retry_base_delay;
        let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(MAX_BACKOFF);
        capped.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    fn allows_plain_http(&self, host: &str) -> bool {
        config::is_loopback(host) || self.inner.config.is_insecure(host)
    }

    fn http_for(&self, host: &str) -> Result<&reqwest::Client, RegistryError> {
        if self.allows_plain_http(host) {
            Ok(&self.inner.insecure)
        } else {
            self.secure()
        }
    }

    /// The endpoint's base URL, pinging `/v2/` the first time to learn its challenge (and, for a
    /// registry, its scheme).
    async fn base_url(&self, endpoint: &Endpoint) -> Result<url::Url, RegistryError> {
        match &endpoint.mirror {
            None => self.registry_base(&endpoint.host).await,
            Some(base) => self.mirror_base(&endpoint.host, base).await,
        }
    }

    /// A mirror's base is the configured URL; its `/v2/` is pinged once, without retries: a
    /// mirror that does not answer is skipped, not waited for.
    async fn mirror_base(&self, host: &str, base: &url::Url) -> Result<url::Url, RegistryError> {
        let key = base.as_str();
        if self
            .inner
            .bases
            .lock()
            .ok()
            .is_some_and(|b| b.contains_key(key))
        {
            return Ok(base.clone());
        }
        let ping = base.join("v2/").map_err(|e| RegistryError::BadUrl {
            url: base.to_string(),
            detail: e.to_string(),
        })?;
        let resp = self
            .send_with_retries(host, Method::GET, &ping, None, false)
            .await?;
        let needs_auth = resp.status() == StatusCode::UNAUTHORIZED;
        self.inner
            .auth
            .learn(host, if needs_auth { Some(&resp) } else { None });
        if let Ok(mut b) = self.inner.bases.lock() {
            b.insert(key.to_owned(), base.clone());
        }
        Ok(base.clone())
    }

    /// A registry's base URL, pinging `/v2/` the first time to learn its scheme and challenge.
    async fn registry_base(&self, host: &str) -> Result<url::Url, RegistryError> {
        if let Some(u) = self
            .inner
            .bases
            .lock()
            .ok()
            .and_then(|b| b.get(host).cloned())
        {
            return Ok(u);
        }
        // Loopback tries plain HTTP first: nothing off the machine can intercept it, and a
        // TLS hello sent to a plain-HTTP registry costs ~150 ms before the registry gives up
        // on it, on every run. Other insecure registries get docker's order, HTTPS first.
        let schemes: &[&str] = if config::is_loopback(host) {
            &["http", "https"]
        } else if self.allows_plain_http(host) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last_err = None;
        for (i, scheme) in schemes.iter().enumerate() {
            let base = url::Url::parse(&format!("{scheme}://{host}/")).map_err(|e| {
                RegistryError::BadUrl {
                    url: format!("{scheme}://{host}/"),
                    detail: e.to_string(),
                }
            })?;
            let ping = base.join("v2/").map_err(|e| RegistryError::BadUrl {
                url: base.to_string(),
                detail: e.to_string(),
            })?;
            let is_last = i + 1 == schemes.len();
            match self
                .send_with_retries(host, Method::GET, &ping, None, is_last)
                .await
            {
                // Something answered, but not a registry: a TLS server's "HTTP request to an
                // HTTPS server", or another web server. The next scheme may reach the registry.
                Ok(resp) if !is_last && !looks_like_registry(&resp) => {
                    last_err = Some(RegistryError::Status {
                        url: ping.to_string(),
                        status: resp.status().as_u16(),
                        code: None,
                        message: Some("not a registry endpoint".to_owned()),
                    });
                }
                Ok(resp) => {
                    let needs_auth = resp.status() == StatusCode::UNAUTHORIZED;
                    self.inner
                        .auth
                        .learn(host, if needs_auth { Some(&resp) } else { None });
                    if let Ok(mut b) = self.inner.bases.lock() {
                        b.insert(host.to_owned(), base.clone());
                    }
                    return Ok(base);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Connect {
            host: host.to_owned(),
            detail: "no scheme to try".to_owned(),
        }))
    }

    /// Sends one unauthenticated request, retrying transient transport failures when `retry`.
    /// Any HTTP status is returned as-is.
    async fn send_with_retries(
        &self,
        host: &str,
        method: Method,
        url: &url::Url,
        headers: Option<&HeaderMap>,
        retry: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let attempts = if retry {
            self.inner.config.max_download_attempts
        } else {
            1
        };
        let mut attempt = 1;
        let mut waits = RetryWaits::new(&self.inner.config);
        loop {
            let mut req = self.http_for(host)?.request(method.clone(), url.clone());
            if let Some(h) = headers {
                req = req.headers(h.clone());
            }
            match send_within(req, host, self.stall_timeout()).await {
                Ok(r) => return Ok(r),
                Err(err) => {
                    if attempt >= attempts || !err.is_retryable() {
                        return Err(err);
                    }
                    tracing::debug!(%host, attempt, error = %err, "retrying");
                    let delay = waits.delay(host, err, self.backoff(attempt))?;
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Sends an authenticated request to a registry's own endpoint (no mirrors), retrying
    /// transient failures (up to `attempts` tries) and refreshing the token once on 401.
    /// Returns successful (2xx) responses; everything else becomes an error.
    pub(crate) async fn execute(
        &self,
        target: &Target<'_>,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        attempts: u32,
    ) -> Result<reqwest::Response, RegistryError> {
        let endpoint = Endpoint {
            host: target.host.to_owned(),
            credentials: target.registry.to_owned(),
            mirror: None,
        };
        self.execute_at(
            &endpoint,
            &target.scope,
            method,
            path_and_query,
            headers,
            attempts,
        )
        .await
    }

    /// [`RegistryClient::execute`] against any endpoint, a mirror included.
    async fn execute_at(
        &self,
        endpoint: &Endpoint,
        scope: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        attempts: u32,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = endpoint.host.as_str();
        let base = self.base_url(endpoint).await?;
        let url = base
            .join(path_and_query.trim_start_matches('/'))
            .map_err(|e| RegistryError::BadUrl {
                url: format!("{base}{path_and_query}"),
                detail: e.to_string(),
            })?;
        let http = self.http_for(host)?;
        let mut attempt = 1;
        let mut refreshed = false;
        let mut waits = RetryWaits::new(&self.inner.config);
        loop {
            let mut req = http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(auth) = self
                .inner
                .auth
                .header(self, host, &endpoint.credentials, scope)
                .await?
            {
                req = req.header(AUTHORIZATION, auth);
            }
            let err = match send_within(req, host, self.stall_timeout()).await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !refreshed => {
                    // Expired token, or a challenge we had not seen (the registry added auth, or
                    // wants another scope): learn it and try once more.
                    refreshed = true;
                    self.inner.auth.learn(host, Some(&resp));
                    self.inner.auth.invalidate(host, scope);
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = parse_retry_after(resp.headers());
                    let body = self
                        .read_capped(resp, MAX_ERROR_BODY, url.as_str())
                        .await
                        .unwrap_or_default();
                    error::from_response(url.as_str(), host, status, &body, retry_after)
                }
                Err(e) => e,
            };
            if attempt >= attempts || !err.is_retryable() {
                return Err(err);
            }
            tracing::debug!(%host, attempt, error = %err, "retrying request");
            let delay = waits.delay(host, err, self.backoff(attempt))?;
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// Who a request is for: the registry's endpoint host, the registry name credentials are filed
/// under, and the token scope.
pub(crate) struct Target<'a> {
    pub host: &'a str,
    pub registry: &'a str,
    pub scope: String,
}

/// One place a repository's content is fetched from: a mirror or the registry itself.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host[:port]` contacted: the key for challenges, tokens and the plain-HTTP rule.
    host: String,
    /// The name credentials are looked up under: the registry's name (`docker.io`) for the
    /// registry, the mirror's own `host[:port]` for a mirror, so the upstream's credentials are
    /// never sent to a mirror.
    credentials: String,
    /// A mirror's base URL as configured (scheme included, path ending in `/`); `None` for the
    /// registry, whose scheme is learnt by pinging.
    mirror: Option<url::Url>,
}

impl Endpoint {
    fn mirror(url: &url::Url) -> Option<Endpoint> {
        let name = url.host_str()?;
        let host = match url.port() {
            Some(port) => format!("{name}:{port}"),
            None => name.to_owned(),
        };
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        // `join("v2/")` replaces the last path segment unless the path ends in a slash.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Some(Endpoint {
            credentials: host.clone(),
            host,
            mirror: Some(base),
        })
    }

    /// How the endpoint is named in logs: a mirror by its URL, the registry by its host.
    fn label(&self) -> &str {
        self.mirror.as_ref().map_or(&self.host, |u| u.as_str())
    }
}

/// What the endpoints of one [`Repository`] (and its clones) have shown so far.
struct EndpointState {
    /// Per mirror: found unreachable, so not asked again.
    unreachable: Mutex<Vec<bool>>,
    /// Per blob: the endpoint (index into mirrors, `mirrors.len()` = the registry) its last
    /// attempt used and how many attempts in a row it had there. The caller asks for a blob
    /// again only after an attempt failed, so a repeat is a failure of the one before.
    blob_cursor: Mutex<HashMap<Digest, (usize, u32)>>,
}

/// The config file's `proxies`, when it sets any, replace the environment's: reqwest reads
/// `HTTP(S)_PROXY`/`NO_PROXY` only when no proxy is given to the builder, which is docker's rule
/// for daemon.json too. Loopback destinations are not exempt unless `no-proxy` says so (curl's
/// rule), so a proxy configured for everything gets everything. A proxy's `user:password@` is
/// sent as `Proxy-Authorization` by reqwest and masked in every error.
/// Whether a `/v2/` answer comes from a registry: it is open to us, or asks us to log in.
fn looks_like_registry(resp: &reqwest::Response) -> bool {
    resp.status().is_success()
        || resp.status() == StatusCode::UNAUTHORIZED
        || resp
            .headers()
            .contains_key("docker-distribution-api-version")
}

fn build_http(
    config: &Config,
    options: &ClientOptions,
    read_timeout: Duration,
    accept_invalid: bool,
) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .read_timeout(read_timeout)
        .http2_adaptive_window(true)
        .tls_danger_accept_invalid_certs(accept_invalid);
    for (name, addr) in &options.resolve {
        b = b.resolve(name, *addr);
    }
    b = trust_extra_roots(b, options)?;
    b = apply_proxies(b, config)?;
    b.build().map_err(|e| RegistryError::Transport {
        host: "(client setup)".to_owned(),
        detail: e.to_string(),
    })
}

/// The client for foreign layer URLs: verified TLS, no `resolve` overrides, names resolved by
/// [`foreign::GuardedResolver`] and redirects checked by [`foreign::redirect_policy`].
fn build_foreign_http(
    config: &Arc<Config>,
    options: &ClientOptions,
    read_timeout: Duration,
) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .read_timeout(read_timeout)
        .dns_resolver(Arc::new(foreign::GuardedResolver {
            config: config.clone(),
        }))
        .redirect(foreign::redirect_policy(config.clone()));
    b = trust_extra_roots(b, options)?;
    b = apply_proxies(b, config)?;
    b.build().map_err(|e| RegistryError::Transport {
        host: "(client setup)".to_owned(),
        detail: e.to_string(),
    })
}

fn trust_extra_roots(
    mut b: reqwest::ClientBuilder,
    options: &ClientOptions,
) -> Result<reqwest::ClientBuilder, RegistryError> {
    for der in &options.root_certificates {
        let cert = reqwest::Certificate::from_der(der).map_err(|e| RegistryError::Tls {
            host: "(client setup)".to_owned(),
            detail: format!("an extra root certificate: {e}"),
        })?;
        b = b.tls_certs_merge([cert]);
    }
    Ok(b)
}

fn apply_proxies(
    mut b: reqwest::ClientBuilder,
    config: &Config,
) -> Result<reqwest::ClientBuilder, RegistryError> {
    let p = &config.proxies;
    let no_proxy = p
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    let bad = |e: reqwest::Error| RegistryError::BadUrl {
        url: "(proxy from the config file)".to_owned(),
        detail: config::redact_userinfo(&e.to_string()),
    };
    if let Some(http) = &p.http {
        b = b.proxy(
            reqwest::Proxy::http(http)
                .map_err(bad)?
                .no_proxy(no_proxy.clone()),
        );
    }
    if let Some(https) = &p.https {
        b = b.proxy(
            reqwest::Proxy::https(https)
                .map_err(bad)?
                .no_proxy(no_proxy),
        );
    }
    Ok(b)
}

/// `Retry-After` as seconds or an HTTP date. Any number of seconds parses (saturating at the
/// largest `u64`), so an absurd ask is refused by [`RetryWaits`] as what it is rather than
/// ignored; a date in the past means now.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sends `req`, failing with [`RegistryError::NoResponseHeaders`] when its response has not
/// begun (headers complete) within `within`. reqwest's own read timeout ends the same wait; this
/// one names it, and holds whatever reqwest does with its timeouts.
pub(crate) async fn send_within(
    req: reqwest::RequestBuilder,
    host: &str,
    within: Duration,
) -> Result<reqwest::Response, RegistryError> {
    let no_headers = || RegistryError::NoResponseHeaders {
        host: host.to_owned(),
        after: within,
    };
    match tokio::time::timeout(within, req.send()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if e.is_timeout() && !e.is_connect() && !e.is_body() => Err(no_headers()),
        Ok(Err(e)) => Err(error::from_reqwest(host, &e)),
        Err(_) => Err(no_headers()),
    }
}

/// Reads a whole body, failing as soon as it passes `limit` bytes, or when it arrives slower than
/// [`MinRate`] allows over the default `download-stall-timeout`.
pub(crate) async fn read_capped(
    resp: reqwest::Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    read_capped_within(resp, limit, url, config::DEFAULT_DOWNLOAD_STALL_TIMEOUT).await
}

/// [`read_capped`] with the minimum rate measured over `window`.
pub(crate) async fn read_capped_within(
    resp: reqwest::Response,
    limit: usize,
    url: &str,
    window: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let host = resp.url().host_str().unwrap_or_default().to_owned();
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(RegistryError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut rate = MinRate::new(window);
    while let Some(chunk) = rate.next(&mut stream, &host).await? {
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// One repository, reached through its mirrors (in order) and then its registry.
#[derive(Clone)]
pub struct Repository {
    client: RegistryClient,
    mirrors: Arc<[Endpoint]>,
    upstream: Endpoint,
    name: String,
    state: Arc<EndpointState>,
}

impl Repository {
    /// The registry's own endpoint host (`registry-1.docker.io` for Docker Hub), whatever mirror
    /// serves the requests.
    pub fn host(&self) -> &str {
        &self.upstream.host
    }

    /// The mirrors tried before the registry, in order.
    pub fn mirrors(&self) -> impl Iterator<Item = &url::Url> {
        self.mirrors.iter().filter_map(|m| m.mirror.as_ref())
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.name)
    }

    fn attempts(&self) -> u32 {
        self.client.inner.config.max_download_attempts
    }

    fn manifest_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(media_type::ACCEPT));
        h
    }

    fn mirror_reachable(&self, index: usize) -> bool {
        self.state
            .unreachable
            .lock()
            .ok()
            .and_then(|u| u.get(index).copied())
            .is_some_and(|dead| !dead)
    }

    /// Notes a mirror's failure: logged, and remembered when the mirror could not be reached.
    fn mirror_failed(&self, index: usize, what: &str, err: &RegistryError) {
        let Some(mirror) = self.mirrors.get(index) else {
            return;
        };
        if err.is_unreachable() {
            tracing::warn!(mirror = mirror.label(), error = %err, "mirror unreachable; not using it for {}", self.name);
            if let Ok(mut u) = self.state.unreachable.lock()
                && let Some(slot) = u.get_mut(index)
            {
                *slot = true;
            }
        } else {
            tracing::debug!(mirror = mirror.label(), error = %err, "{what} not served by the mirror; trying the next endpoint");
        }
    }

    /// Runs `op` against each reachable mirror once, then against the registry with the
    /// configured number of attempts; the first success wins. A mirror's error is never
    /// returned: the registry's is.
    ///
    /// `op` takes endpoints of one fixed lifetime (not an async closure over any borrow): a
    /// higher-ranked future would not be provably `Send`, and pulls run on spawned tasks.
    async fn first_success<'a, T, F, Fut>(
        &'a self,
        what: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(&'a Endpoint, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        for (i, mirror) in self.mirrors.iter().enumerate() {
            if !self.mirror_reachable(i) {
                continue;
            }
            match op(mirror, 1).await {
                Ok(v) => return Ok(v),
                Err(e) => self.mirror_failed(i, what, &e),
            }
        }
        op(&self.upstream, self.attempts()).await
    }

    /// Resolves a tag (or digest) with HEAD, which Docker Hub does not count against pull quotas.
    /// `None` when the registry's answer carries no usable digest; the caller then GETs.
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

    /// Starts a blob download at byte `offset` (a `Range` request when non-zero). The response is
    /// 200 (whole blob) or 206; the caller checks which and streams the body. Tried once per
    /// endpoint: the caller's retry loop covers the request and the body together, so failures
    /// are not retried twice over.
    ///
    /// Mirrors come first. A mirror that cannot be reached is skipped for good; one that answers
    /// with an error (404 included) is skipped for this blob only; one whose streams keep
    /// failing gets [`MIRROR_TRIES_PER_BLOB`] attempts at a blob before the next endpoint takes
    /// over. A resumed attempt (`offset` > 0) may land on another endpoint than the bytes so far
    /// came from: the content is the same by digest, and the caller accepts only a matching 206.
    pub async fn blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response, RegistryError> {
        let path = format!("v2/{}/blobs/{digest}", self.name);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let v = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| {
                RegistryError::BadUrl {
                    url: path.clone(),
                    detail: e.to_string(),
                }
            })?;
            headers.insert(RANGE, v);
        }
        let upstream = self.mirrors.len();
        let previous = self
            .state
            .blob_cursor
            .lock()
            .ok()
            .and_then(|c| c.get(digest).copied());
        let first = match previous {
            Some((i, tries)) if i < upstream && tries >= MIRROR_TRIES_PER_BLOB => i + 1,
            Some((i, _)) => i,
            None => 0,
        };
        let scope = self.scope();
        for i in first..upstream {
            if !self.mirror_reachable(i) {
                continue;
            }
            match self
                .blob_at(&self.mirrors[i], &scope, &path, &headers, digest)
                .await
            {
                Ok(resp) => {
                    self.note_blob_attempt(digest, i, previous);
                    return Ok(resp);
                }
                Err(e) => self.mirror_failed(i, "blob", &e),
            }
        }
        self.note_blob_attempt(digest, upstream, previous);
        self.blob_at(&self.upstream, &scope, &path, &headers, digest)
            .await
    }

    /// Tells the repository that the bytes the last attempt at `digest` received were wrong
    /// (they failed verification), so that endpoint is not asked for this blob again. Returns
    /// whether another endpoint is left to ask: true when the bad bytes came from a mirror, so
    /// the caller can discard them and retry instead of failing the pull; false when they came
    /// from the registry itself (nothing is behind it).
    pub fn reject_blob_source(&self, digest: &Digest) -> bool {
        let upstream = self.mirrors.len();
        let Ok(mut cursor) = self.state.blob_cursor.lock() else {
            return false;
        };
        match cursor.get(digest).copied() {
            Some((i, _)) if i < upstream => {
                cursor.insert(digest.clone(), (i + 1, 0));
                true
            }
            _ => false,
        }
    }

    fn note_blob_attempt(&self, digest: &Digest, endpoint: usize, previous: Option<(usize, u32)>) {
        let tries = match previous {
            Some((i, n)) if i == endpoint => n.saturating_add(1),
            _ => 1,
        };
        if let Ok(mut c) = self.state.blob_cursor.lock() {
            c.insert(digest.clone(), (endpoint, tries));
        }
    }

    async fn blob_at(
        &self,
        endpoint: &Endpoint,
        scope: &str,
        path: &str,
        headers: &HeaderMap,
        digest: &Digest,
    ) -> Result<reqwest::Response, RegistryError> {
        match self
            .client
            .execute_at(endpoint, scope, Method::GET, path, headers.clone(), 1)
            .await
        {
            Err(RegistryError::Status { status: 404, .. }) => Err(RegistryError::BlobUnknown {
                digest: digest.to_string(),
            }),
            other => other,
        }
    }

    /// Downloads a foreign layer from `url`: no credentials, no registry auth, and only from
    /// addresses [`foreign`] allows (checked on the literal address, on every address a name
    /// resolves to, and on every redirect).
    pub async fn foreign_blob(&self, url: &str) -> Result<reqwest::Response, RegistryError> {
        let parsed = url::Url::parse(url).map_err(|e| RegistryError::BadUrl {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        let refused = |reason| RegistryError::ForeignUrlRefused {
            url: url.to_owned(),
            reason,
        };
        foreign::check_literal(self.client.config(), &parsed).map_err(refused)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let within = self.client.stall_timeout();
        let req = self.client.foreign_http()?.get(parsed);
        let resp = match tokio::time::timeout(within, req.send()).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                if let Some(ip) = refused_address(&e) {
                    return Err(refused(ForeignUrlRefusal::Address(ip)));
                }
                return Err(if e.is_timeout() && !e.is_connect() && !e.is_body() {
                    RegistryError::NoResponseHeaders {
                        host,
                        after: within,
                    }
                } else {
                    error::from_reqwest(&host, &e)
                });
            }
            Err(_) => {
                return Err(RegistryError::NoResponseHeaders {
                    host,
                    after: within,
                });
            }
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(error::from_response(url, &host, status, b"", None));
        }
        Ok(resp)
    }

    /// Every tag of the repository, following `Link` pagination. The whole list comes from one
    /// endpoint: a mirror failing on any page hands the listing to the next from the start.
    pub async fn tags(&self) -> Result<Vec<String>, RegistryError> {
        self.first_success("tag list", |endpoint, attempts| {
            self.tags_at(endpoint, attempts)
        })
        .await
    }

    async fn tags_at(
        &self,
        endpoint: &Endpoint,
        attempts: u32,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let base = self.client.base_url(endpoint).await?;
        let mut pages = TagPages::new(&self.name, &base);
        let mut tags = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(format!("v2/{}/tags/list?n={TAG_PAGE_SIZE}", self.name));
        let scope = self.scope();
        while let Some(path) = next.take() {
            let resp = self
                .client
                .execute_at(
                    endpoint,
                    &scope,
                    Method::GET,
                    &path,
                    HeaderMap::new(),
                    attempts,
                )
                .await?;
            let url = resp.url().clone();
            pages.fetched(&url)?;
            let link = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link);
            let body = match self
                .client
                .read_capped(resp, MAX_TAG_LIST_BYTES - bytes, url.as_str())
                .await
            {
                Err(RegistryError::TooLarge { .. }) => {
                    return Err(pages.refuse(
                        &url,
                        TagListProblem::TooManyBytes {
                            limit: MAX_TAG_LIST_BYTES,
                        },
                    ));
                }
                other => other?,
            };
            bytes += body.len();
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Status {
                    url: url.to_string(),
                    status: 200,
                    code: None,
                    message: Some(format!("invalid tag list: {e}")),
                })?;
            let page = list.tags.unwrap_or_default();
            if tags.len().saturating_add(page.len()) > MAX_TAGS {
                return Err(pages.refuse(&url, TagListProblem::TooManyTags { limit: MAX_TAGS }));
            }
            tags.extend(page);
            next = match link {
                Some(target) => Some(pages.next(&url, &target)?),
                None => None,
            };
        }
        Ok(tags)
    }
}

/// Tags asked for per page (`n`).
const TAG_PAGE_SIZE: usize = 100;
/// The most tags one repository may list. Real repositories with tens of thousands exist; a list
/// longer than this is a registry trying to fill our memory.
const MAX_TAGS: usize = 100_000;
/// The whole list's JSON, every page together: 100,000 tags of up to 128 characters fit.
const MAX_TAG_LIST_BYTES: usize = 16 << 20;
/// Pages, whatever their size: a registry sending endless empty pages is stopped too.
const MAX_TAG_PAGES: usize = 10_000;

/// Where a tag listing has been, so a `Link` that loops, leaves the registry or never ends is
/// refused instead of followed.
struct TagPages<'a> {
    repository: &'a str,
    base: &'a url::Url,
    urls: std::collections::HashSet<String>,
    lasts: std::collections::HashSet<String>,
}

impl<'a> TagPages<'a> {
    fn new(repository: &'a str, base: &'a url::Url) -> Self {
        TagPages {
            repository,
            base,
            urls: Default::default(),
            lasts: Default::default(),
        }
    }

    fn refuse(&self, url: &url::Url, problem: TagListProblem) -> RegistryError {
        RegistryError::TagList {
            repository: self.repository.to_owned(),
            url: url.to_string(),
            problem,
        }
    }

    /// Notes a page as fetched (at the URL it was finally served from).
    fn fetched(&mut self, url: &url::Url) -> Result<(), RegistryError> {
        if self.urls.len() >= MAX_TAG_PAGES {
            return Err(self.refuse(
                url,
                TagListProblem::TooManyPages {
                    limit: MAX_TAG_PAGES,
                },
            ));
        }
        self.urls.insert(url.to_string());
        Ok(())
    }

    /// The path (relative to the endpoint's base) of the page `target` links to from `current`.
    /// A link is resolved against the page it came in, as RFC 8288 says; it must stay on the
    /// endpoint (same scheme, host, port, under its base path), lead somewhere not yet listed
    /// and name a `last` not yet seen.
    fn next(&mut self, current: &url::Url, target: &str) -> Result<String, RegistryError> {
        let Ok(mut url) = current.join(target) else {
            return Err(self.refuse(current, TagListProblem::LinkElsewhere));
        };
        let same_origin = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        if same_origin && !url.path().starts_with(self.base.path()) {
            // A mirror under a path (`https://cache.lan/hub/`) may write its links as the
            // registry would, from `/v2/`: they are meant under its base.
            if let Some(api) = url
                .path()
                .strip_prefix('/')
                .filter(|p| p.starts_with("v2/"))
            {
                let query = url.query().map(str::to_owned);
                if let Ok(mut under) = self.base.join(api) {
                    under.set_query(query.as_deref());
                    url = under;
                }
            }
        }
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(self.refuse(&url, TagListProblem::LinkElsewhere));
        }
        if self.urls.contains(url.as_str()) {
            return Err(self.refuse(&url, TagListProblem::Loop));
        }
        if let Some((_, last)) = url.query_pairs().find(|(k, _)| k == "last")
            && !self.lasts.insert(last.into_owned())
        {
            return Err(self.refuse(&url, TagListProblem::Loop));
        }
        let path = &url.path()[self.base.path().len()..];
        Ok(match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        })
    }
}

/// The address [`foreign`] refused somewhere in a transport error's chain, if that is why it failed.
fn refused_address(err: &reqwest::Error) -> Option<std::net::IpAddr> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(foreign::RefusedAddress(ip)) = s.downcast_ref::<foreign::RefusedAddress>() {
            return Some(*ip);
        }
        source = s.source();
    }
    None
}

/// The target of `Link: </v2/x/tags/list?last=a&n=100>; rel="next"`, as written.
fn parse_next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        Some(target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_headers() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=t99&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=t99&n=100")
        );
        assert_eq!(
            parse_next_link(r#"<https://r.example/v2/a/tags/list?last=x>; rel="next""#).as_deref(),
            Some("https://r.example/v2/a/tags/list?last=x")
        );
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=x>; rel="prev""#),
            None
        );
    }

    #[test]
    fn tag_list_links_stay_on_the_endpoint_and_never_loop() {
        let base: url::Url = "https://cache.lan/hub/".parse().unwrap();
        let first: url::Url = "https://cache.lan/hub/v2/a/tags/list?n=100"
            .parse()
            .unwrap();
        let mut pages = TagPages::new("a", &base);
        pages.fetched(&first).unwrap();
        // Relative to the page, and from /v2/ as a registry writes them: both under the base.
        assert_eq!(
            pages.next(&first, "list?last=t1&n=100").unwrap(),
            "v2/a/tags/list?last=t1&n=100"
        );
        assert_eq!(
            pages.next(&first, "/v2/a/tags/list?last=t2&n=100").unwrap(),
            "v2/a/tags/list?last=t2&n=100"
        );
        let problem = |r: Result<String, RegistryError>| match r {
            Err(RegistryError::TagList { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        // A `last` seen before, or the first page again.
        assert_eq!(
            problem(pages.next(&first, "/hub/v2/a/tags/list?last=t1&n=5")),
            TagListProblem::Loop
        );
        assert_eq!(
            problem(pages.next(&first, "/hub/v2/a/tags/list?n=100")),
            TagListProblem::Loop
        );
        for elsewhere in [
            "https://evil.example/hub/v2/a/tags/list?last=x",
            "http://cache.lan/hub/v2/a/tags/list?last=y",
            "https://cache.lan:8443/hub/v2/a/tags/list?last=z",
            "/admin?last=w",
        ] {
            assert_eq!(
                problem(pages.next(&first, elsewhere)),
                TagListProblem::LinkElsewhere,
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn mirror_endpoints_keep_scheme_and_path_and_use_their_own_credentials() {
        let cases = [
            (
                "https://mirror.local",
                "mirror.local",
                "https://mirror.local/",
            ),
            (
                "http://127.0.0.1:5001",
                "127.0.0.1:5001",
                "http://127.0.0.1:5001/",
            ),
            (
                "https://cache.lan:443/hub?x=1",
                "cache.lan",
                "https://cache.lan/hub/",
            ),
            ("http://[::1]:5000/", "[::1]:5000", "http://[::1]:5000/"),
        ];
        for (url, host, base) in cases {
            let e = Endpoint::mirror(&url.parse().unwrap()).unwrap();
            assert_eq!(e.host, host, "{url}");
            assert_eq!(
                e.credentials, host,
                "{url}: credentials are the mirror's own"
            );
            let b = e.mirror.unwrap();
            assert_eq!(b.as_str(), base, "{url}");
            assert_eq!(
                b.join("v2/").unwrap().path(),
                format!("{}v2/", b.path()),
                "{url}"
            );
        }
    }

    #[test]
    fn a_mirror_rejected_for_a_blob_is_skipped_for_it_and_the_registry_cannot_be() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut mirrors = std::collections::BTreeMap::new();
        mirrors.insert(
            "127.0.0.1:1".to_owned(),
            vec!["http://127.0.0.1:2".parse().unwrap()],
        );
        let config = Config {
            registry_mirrors: mirrors,
            max_download_attempts: 1,
            ..Config::default()
        };
        let client = RegistryClient::new(
            Arc::new(config),
            Arc::new(super::super::Anonymous),
            ClientOptions::default(),
        )
        .unwrap();
        let repo = client.repository(&"127.0.0.1:1/a/b:1".parse().unwrap());
        let digest = Digest::sha256_of(b"x");
        // Nothing fetched yet: nothing to reject.
        assert!(!repo.reject_blob_source(&digest));
        // The last attempt was on the mirror: reject it, the registry is left.
        repo.note_blob_attempt(&digest, 0, None);
        assert!(repo.reject_blob_source(&digest));
        assert_eq!(
            repo.state.blob_cursor.lock().unwrap().get(&digest).copied(),
            Some((1, 0))
        );
        // The registry served it: nothing behind it.
        assert!(!repo.reject_blob_source(&digest));
    }

    #[test]
    fn repository_requests_can_run_on_spawned_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = RegistryClient::new(
            Arc::new(Config::default()),
            Arc::new(super::super::Anonymous),
            ClientOptions::default(),
        )
        .unwrap();
        let repo = client.repository(&"127.0.0.1:1/a/b:1".parse().unwrap());
        let digest = Digest::sha256_of(b"");
        assert_send(&repo.head_manifest("1"));
        assert_send(&repo.get_manifest("1"));
        assert_send(&repo.blob(&digest, 0));
        assert_send(&repo.tags());
    }

    #[test]
    fn parses_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
    }
}
