//! The HTTP layer under the registry client: how its reqwest clients are built (user agent,
//! timeouts, extra roots, proxies, the guarded resolver for foreign URLs) and the few things every
//! request does with a response (the header deadline, capped body reads, `Retry-After`).
//!
//! Promises:
//! - A response whose headers have not arrived within `download-stall-timeout` fails as
//!   [`RegistryError::NoResponseHeaders`]; a body read here is refused as soon as it passes its cap
//!   or arrives slower than [`MinRate`] allows.
//! - Proxies are [`ProxyRules`]' (loopback never proxied); a connection that failed at the proxy
//!   is [`RegistryError::Proxy`], naming the proxy without its credentials.
//! - Registries and token realms are resolved by [`SystemResolver`], so a name that does not
//!   exist arrives typed ([`RegistryError::NoSuchHost`]).
//! - Nothing here retries or picks an endpoint: [`super::client`] and [`super::blob`] do.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::certs::HostTls;
use super::client::ClientOptions;
use super::error::{self, RegistryError};
use super::foreign;
use super::proxy::ProxyRules;
use super::resolve::SystemResolver;
use super::settings::{self, DEFAULT_DOWNLOAD_STALL_TIMEOUT, RegistrySettings};
use super::throughput::MinRate;

const USER_AGENT: &str = concat!("haul/", env!("CARGO_PKG_VERSION"));
/// Error bodies are only read to find the registry's error code.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Whether a `/v2/` answer comes from a registry: it is open to us, or asks us to log in.
pub(super) fn looks_like_registry(resp: &reqwest::Response) -> bool {
    resp.status().is_success()
        || resp.status() == StatusCode::UNAUTHORIZED
        || resp
            .headers()
            .contains_key("docker-distribution-api-version")
}

/// A client for registries and token realms; `accept_invalid` for hosts allowed plain HTTP;
/// `host_tls` what one host's certs directory adds (its CAs and client certificate).
pub(super) fn build_http(
    proxies: &Arc<ProxyRules>,
    options: &ClientOptions,
    read_timeout: Duration,
    accept_invalid: bool,
    host_tls: Option<HostTls>,
) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .read_timeout(read_timeout)
        .http2_adaptive_window(true)
        .dns_resolver(Arc::new(SystemResolver))
        .tls_danger_accept_invalid_certs(accept_invalid);
    for (name, addr) in &options.resolve {
        b = b.resolve(name, *addr);
    }
    b = trust_extra_roots(b, options)?;
    if let Some(tls) = host_tls {
        b = b.tls_certs_merge(tls.roots);
        if let Some(identity) = tls.identity {
            b = b.identity(identity);
        }
    }
    b = apply_proxies(b, proxies);
    b.build().map_err(|e| RegistryError::Transport {
        host: "(client setup)".to_owned(),
        detail: e.to_string(),
    })
}

/// The client for foreign layer URLs: verified TLS, no `resolve` overrides, names resolved by
/// [`foreign::GuardedResolver`] and redirects checked by [`foreign::redirect_policy`].
pub(super) fn build_foreign_http(
    settings: &Arc<RegistrySettings>,
    proxies: &Arc<ProxyRules>,
    options: &ClientOptions,
    read_timeout: Duration,
) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .read_timeout(read_timeout)
        .dns_resolver(Arc::new(foreign::GuardedResolver {
            settings: settings.clone(),
        }))
        .redirect(foreign::redirect_policy(settings.clone()));
    b = trust_extra_roots(b, options)?;
    b = apply_proxies(b, proxies);
    b.build().map_err(|e| RegistryError::Transport {
        host: "(client setup)".to_owned(),
        detail: e.to_string(),
    })
}

/// `options.root_certificates` trusted besides the system's roots.
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

/// Checks the config file's proxy URLs as reqwest will read them, so a bad one fails when the
/// client is built rather than at the first request.
pub(super) fn check_proxy_urls(settings: &RegistrySettings) -> Result<(), RegistryError> {
    let p = &settings.proxies;
    for url in [&p.http, &p.https].into_iter().flatten() {
        reqwest::Proxy::all(url.as_str()).map_err(|e| RegistryError::BadUrl {
            url: "(proxy from the config file)".to_owned(),
            detail: settings::redact_userinfo(&e.to_string()),
        })?;
    }
    Ok(())
}

/// Hands reqwest the one proxy decision ([`ProxyRules::proxy_for`]); reqwest's own reading of
/// the environment is turned off, as the rules have read it. A proxy's `user:password@` is sent
/// as `Proxy-Authorization` by reqwest and masked in every error.
fn apply_proxies(b: reqwest::ClientBuilder, proxies: &Arc<ProxyRules>) -> reqwest::ClientBuilder {
    let b = b.no_proxy();
    if proxies.is_empty() {
        return b;
    }
    let rules = proxies.clone();
    b.proxy(reqwest::Proxy::custom(move |url| {
        rules.proxy_for(url).map(str::to_owned)
    }))
}

/// `Retry-After` as seconds or an HTTP date. Any number of seconds parses (saturating at the
/// largest `u64`), so an absurd ask is refused by [`super::retry::RetryWaits`] as what it is rather than
/// ignored; a date in the past means now.
pub(super) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
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
    proxies: &ProxyRules,
) -> Result<reqwest::Response, RegistryError> {
    let no_headers = || RegistryError::NoResponseHeaders {
        host: host.to_owned(),
        after: within,
    };
    match tokio::time::timeout(within, req.send()).await {
        Ok(Ok(resp)) => {
            tracing::debug!(endpoint = %resp.url().origin().ascii_serialization(), path = resp.url().path(), status = resp.status().as_u16(), "response");
            Ok(resp)
        }
        Ok(Err(e)) if e.is_timeout() && !e.is_connect() && !e.is_body() => Err(no_headers()),
        Ok(Err(e)) => Err(from_send_error(host, &e, proxies)),
        Err(_) => Err(no_headers()),
    }
}

/// A failed send as a [`RegistryError`]: a connection that failed on the way to (or at) the
/// proxy the request went through is the proxy's failure, not the registry's. A TLS failure
/// through a proxy's tunnel is the registry's: the handshake is with the registry.
fn from_send_error(host: &str, e: &reqwest::Error, proxies: &ProxyRules) -> RegistryError {
    let err = error::from_reqwest(host, e);
    let proxy = e
        .url()
        .filter(|_| e.is_connect())
        .and_then(|url| proxies.proxy_for(url));
    match (proxy, &err) {
        (_, RegistryError::Tls { .. }) | (None, _) => err,
        (Some(proxy), _) => {
            let redacted = settings::redact_userinfo(&super::proxy::with_scheme(proxy));
            let proxy_host = url::Url::parse(&redacted)
                .ok()
                .and_then(|u| {
                    Some(match u.port() {
                        Some(p) => format!("{}:{p}", u.host_str()?),
                        None => u.host_str()?.to_owned(),
                    })
                })
                .unwrap_or_else(|| redacted.clone());
            // The same classification, about the proxy: a loopback proxy refusing connections
            // or a proxy name that does not exist is not retried.
            let at_proxy = error::from_reqwest(&proxy_host, e);
            RegistryError::Proxy {
                proxy: redacted,
                host: host.to_owned(),
                retryable: at_proxy.is_retryable(),
                detail: at_proxy.to_string(),
            }
        }
    }
}

/// Reads a whole body, failing as soon as it passes `limit` bytes, or when it arrives slower than
/// [`MinRate`] allows over the default `download-stall-timeout`.
pub(crate) async fn read_capped(
    resp: reqwest::Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    read_capped_within(resp, limit, url, DEFAULT_DOWNLOAD_STALL_TIMEOUT).await
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

/// The address [`foreign`] refused somewhere in a transport error's chain, if that is why it failed.
pub(crate) fn refused_address(err: &reqwest::Error) -> Option<std::net::IpAddr> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(foreign::RefusedAddress(ip)) = s.downcast_ref::<foreign::RefusedAddress>() {
            return Some(*ip);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
