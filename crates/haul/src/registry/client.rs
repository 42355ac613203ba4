//! The registry HTTP client: endpoints' base URLs, the `/v2/` ping, authenticated requests with
//! retries.
//!
//! One [`RegistryClient`] is shared by every request of a process so connections, challenges and
//! tokens are reused. It is built from [`RegistrySettings`] (the transport part of the config
//! file) and [`ClientOptions`] (what a config file does not say: test resolvers, extra roots).
//!
//! Promises:
//! - HTTPS with the system's roots is the default; plain HTTP (and unverified TLS) only for
//!   loopback registries and those listed in `insecure-registries`, trying HTTPS first like
//!   docker (loopback tries plain HTTP first: nothing off the machine can intercept it).
//! - Requests that fail for transient reasons (connect errors, 5xx, 408, 429) are retried with
//!   exponential backoff and jitter, honouring `Retry-After` within `max-retry-after` and the
//!   per-request wait budget ([`super::retry`]); a 401 refreshes the token once.
//! - A registry with a certs directory (docker's `certs.d`, [`super::certs`]) gets its own
//!   connection pool trusting that directory's CAs (besides the system's) and presenting its
//!   client certificate; verification stays on. Its token realm is reached the same way.
//! - Errors that trying again cannot fix fail at once: a name that does not exist, a refused
//!   connection on loopback, a TLS failure ([`RegistryError::is_retryable`]).
//! - Credentials go to a token realm only over HTTPS, unless the registry is itself insecure and
//!   the realm is on its host (`RegistryClient::realm_client`).
//!
//! What a repository does with the client is in `registry/repository.rs` (manifests),
//! `tags.rs` and `blob.rs`; where its requests go in `endpoints.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};

use super::auth::{Authenticator, CredentialStore};
use super::certs;
use super::endpoints::Endpoint;
use super::error::{self, RegistryError};
use super::http::{self, MAX_ERROR_BODY};
use super::proxy::ProxyRules;
use super::retry::RetryWaits;
use super::settings::{self, RegistrySettings};

pub(crate) use super::http::{read_capped, send_within};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Knobs that are not part of the user's config file.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// First retry delay; doubled per attempt, with jitter (default 500 ms).
    pub retry_base_delay: Duration,
    /// How long establishing a connection (TCP and TLS) may take (default 30 s).
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

/// The registry client: one per process, shared by cloning (the clones share connections,
/// challenges and tokens).
///
/// ```no_run
/// use std::sync::Arc;
///
/// use haul::registry::{ClientOptions, DockerConfig, RegistryClient, RegistrySettings};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // docker's defaults and docker's credentials; `Config::registry_settings` gives the settings
/// // of a config file instead.
/// let client = RegistryClient::new(
///     RegistrySettings::default(),
///     Arc::new(DockerConfig::load_default()?),
///     ClientOptions::default(),
/// )?;
/// let alpine = client.repository(&"alpine".parse()?);
/// let tags = alpine.tags().await?;
/// println!("{} tags", tags.len());
/// # Ok(()) }
/// ```
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
    settings: Arc<RegistrySettings>,
    options: ClientOptions,
    proxies: Arc<ProxyRules>,
    /// Where certs directories are looked for ([`certs::search_roots`]).
    certs_roots: Vec<std::path::PathBuf>,
    /// Per host: the client built from its certs directory, or `None` when it has none.
    host_clients: Mutex<HashMap<String, Option<reqwest::Client>>>,
    /// Base URLs whose `/v2/` has been pinged: registries by host (scheme learnt), mirrors by
    /// their configured URL.
    bases: Mutex<HashMap<String, url::Url>>,
}

impl RegistryClient {
    /// A client for the hosts `settings` describe, taking credentials from `credentials`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::BadUrl`] for a proxy URL reqwest refuses, [`RegistryError::Tls`] for an
    /// extra root certificate that does not parse. (A registry's certs directory is read at its
    /// first request, and a bad one fails that request with [`RegistryError::Certificates`].)
    pub fn new(
        settings: RegistrySettings,
        credentials: Arc<dyn CredentialStore>,
        options: ClientOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let read_timeout = options
            .read_timeout
            .unwrap_or(settings.download_stall_timeout);
        http::check_proxy_urls(&settings)?;
        let proxies = Arc::new(ProxyRules::new(&settings));
        let certs_roots = certs::search_roots(settings.certs_dir.as_deref());
        let settings = Arc::new(settings);
        // Unverified TLS installs no certificate verifier, so this one is cheap to build now.
        let insecure = http::build_http(&proxies, &options, read_timeout, true, None)?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                secure: OnceLock::new(),
                insecure,
                foreign: OnceLock::new(),
                read_timeout,
                auth: Authenticator::new(credentials),
                settings,
                options,
                proxies,
                certs_roots,
                host_clients: Mutex::new(HashMap::new()),
                bases: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The transport settings this client was built with.
    #[must_use]
    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    /// The client for foreign layer URLs: never carries credentials, connects only where
    /// [`super::foreign`] allows.
    pub(super) fn foreign_http(&self) -> Result<&reqwest::Client, RegistryError> {
        let inner = &self.inner;
        inner
            .foreign
            .get_or_init(|| {
                http::build_foreign_http(
                    &inner.settings,
                    &inner.proxies,
                    &inner.options,
                    inner.read_timeout,
                )
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
                http::build_http(
                    &inner.proxies,
                    &inner.options,
                    inner.read_timeout,
                    false,
                    None,
                )
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
    ) -> Result<reqwest::Client, RegistryError> {
        let realm_host = match (realm.host_str(), realm.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let same_name = realm.host_str().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(settings::host_name(registry_host))
        });
        let insecure_ok = self.allows_plain_http(registry_host)
            && (same_name || self.allows_plain_http(&realm_host));
        // The registry's certs directory holds the CA that private realms are signed by too
        // (docker gives the token request the registry's transport).
        if let Some(c) = self.host_client(registry_host)?
            && realm.scheme() == "https"
        {
            return Ok(c);
        }
        match realm.scheme() {
            "https" if insecure_ok => Ok(self.inner.insecure.clone()),
            "https" => self.secure().cloned(),
            "http" if insecure_ok => Ok(self.inner.insecure.clone()),
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

    /// [`http::read_capped_within`] over this client's `download-stall-timeout`.
    pub(crate) async fn read_capped(
        &self,
        resp: reqwest::Response,
        limit: usize,
        url: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        http::read_capped_within(resp, limit, url, self.stall_timeout()).await
    }

    /// The HTTP client for requests to `host`: unverified TLS only where plain HTTP is allowed.
    pub(crate) fn http_client(&self, host: &str) -> Result<reqwest::Client, RegistryError> {
        self.http_for(host)
    }

    /// Sends `req` to `host` with this client's header deadline and proxy attribution
    /// ([`http::send_within`]).
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        host: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        send_within(req, host, self.stall_timeout(), &self.inner.proxies).await
    }

    /// The delay before retry number `attempt` (1-based): exponential with ±25% jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.inner.options.retry_base_delay;
        let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(MAX_BACKOFF);
        capped.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    fn allows_plain_http(&self, host: &str) -> bool {
        self.inner.settings.allows_plain_http(host)
    }

    fn http_for(&self, host: &str) -> Result<reqwest::Client, RegistryError> {
        if let Some(c) = self.host_client(host)? {
            Ok(c)
        } else if self.allows_plain_http(host) {
            Ok(self.inner.insecure.clone())
        } else {
            self.secure().cloned()
        }
    }

    /// The client built from `host`'s certs directory, if it has one: built at the first
    /// request (and kept); a directory that cannot be used fails the request, and is read again
    /// by the next one.
    fn host_client(&self, host: &str) -> Result<Option<reqwest::Client>, RegistryError> {
        let inner = &self.inner;
        if let Some(known) = inner
            .host_clients
            .lock()
            .ok()
            .and_then(|m| m.get(host).cloned())
        {
            return Ok(known);
        }
        let built = match certs::host_dir(&inner.certs_roots, host) {
            None => None,
            Some(dir) => {
                let tls = certs::read_dir(&dir).map_err(|source| RegistryError::Certificates {
                    host: host.to_owned(),
                    source,
                })?;
                tracing::debug!(%host, dir = %dir.display(), "using the registry's certs directory");
                Some(http::build_http(
                    &inner.proxies,
                    &inner.options,
                    inner.read_timeout,
                    self.allows_plain_http(host),
                    Some(tls),
                )?)
            }
        };
        if let Ok(mut m) = inner.host_clients.lock() {
            m.insert(host.to_owned(), built.clone());
        }
        Ok(built)
    }

    /// The endpoint's base URL, pinging `/v2/` the first time to learn its challenge (and, for a
    /// registry, its scheme).
    pub(super) async fn base_url(&self, endpoint: &Endpoint) -> Result<url::Url, RegistryError> {
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
        let schemes: &[&str] = if settings::is_loopback(host) {
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
                Ok(resp) if !is_last && !http::looks_like_registry(&resp) => {
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
            self.inner.settings.max_download_attempts
        } else {
            1
        };
        let mut attempt = 1;
        let mut waits = RetryWaits::new(&self.inner.settings);
        loop {
            let mut req = self.http_for(host)?.request(method.clone(), url.clone());
            if let Some(h) = headers {
                req = req.headers(h.clone());
            }
            match self.send(req, host).await {
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
    // Content trust's discovery and signing are its callers.
    #[cfg_attr(not(feature = "trust"), allow(dead_code))]
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
    pub(super) async fn execute_at(
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
        let mut waits = RetryWaits::new(&self.inner.settings);
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
            let err = match self.send(req, host).await {
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
                    let retry_after = http::parse_retry_after(resp.headers());
                    let body = self
                        .read_capped(resp, MAX_ERROR_BODY, url.as_str())
                        .await
                        .unwrap_or_default();
                    let mut err =
                        error::from_response(url.as_str(), host, status, &body, retry_after);
                    if let RegistryError::Unauthorized { anonymous, .. } = &mut err {
                        *anonymous = !self
                            .inner
                            .auth
                            .has_credential(&endpoint.credentials)
                            .await?;
                    }
                    err
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
#[cfg_attr(not(feature = "trust"), allow(dead_code))]
pub(crate) struct Target<'a> {
    pub host: &'a str,
    pub registry: &'a str,
    pub scope: String,
}
