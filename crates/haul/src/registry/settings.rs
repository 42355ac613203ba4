//! What the registry client is told about hosts: which may speak plain HTTP, which mirrors stand in
//! for which registry, the proxies, how long to wait and how often to try, and where foreign layer
//! URLs may lead.
//!
//! [`RegistrySettings`] is all the client reads from the user's configuration; the daemon.json-style
//! file itself belongs to [`crate::config`], which builds these settings
//! ([`crate::config::Config::registry_settings`]). An embedder without a config file starts from
//! [`RegistrySettings::default`], docker's defaults.
//!
//! Promises:
//! - Plain HTTP (and unverified TLS) only for loopback hosts and those `insecure_registries`
//!   names: an exact `host:port`, a host name without a port (any port), or a CIDR holding the
//!   host's literal address.
//! - Proxy URLs may carry credentials: `Debug` and [`Proxies::redacted`] never show them, and
//!   [`redact_userinfo`] masks them in any text.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// docker's default for `max-download-attempts`.
pub const DEFAULT_MAX_DOWNLOAD_ATTEMPTS: u32 = 5;
/// How long a transfer may go without receiving a byte before the attempt counts as failed.
pub const DEFAULT_DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `Retry-After` obeyed: a registry asking for more fails the request at once,
/// naming the wait, rather than holding the pull (docker would wait as long as it is told).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// What one request (a blob download with all its attempts) may spend waiting between attempts,
/// in multiples of `max-retry-after`: five full waits, as many as the default attempts allow.
const RETRY_WAIT_BUDGET_FACTOR: u32 = 5;
/// Connections one blob download may use at once (`max-connections-per-blob`).
pub const DEFAULT_MAX_CONNECTIONS_PER_BLOB: usize = 4;
/// The smallest blob fetched over several connections (`ranged-download-min-size`): below it a
/// second request's round trip costs more than a parallel connection saves.
pub const DEFAULT_RANGED_DOWNLOAD_MIN_SIZE: u64 = 32 << 20;

/// How the registry client treats hosts: the config file's transport keys.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// Hosts (`host[:port]`) and CIDRs that may be spoken to over plain HTTP or unverified TLS,
    /// besides loopback (`insecure-registries`).
    pub insecure_registries: Vec<String>,
    /// Mirrors per upstream registry (`docker.io`, `ghcr.io`, `host:port`), tried in order
    /// before it (`registry-mirrors`).
    pub registry_mirrors: BTreeMap<String, Vec<url::Url>>,
    /// Proxies that replace the environment's when set (`proxies`).
    pub proxies: Proxies,
    /// The longest wait for a response's headers, and the window over which a body must keep
    /// a minimum rate (`download-stall-timeout`).
    pub download_stall_timeout: Duration,
    /// Tries per request, the first included (`max-download-attempts`).
    pub max_download_attempts: u32,
    /// The longest `Retry-After` obeyed (`max-retry-after`).
    pub max_retry_after: Duration,
    /// Networks outside the public internet that foreign layer `urls` may reach, as CIDRs or
    /// addresses (`foreign-layer-allowed-networks`).
    pub foreign_layer_allowed_networks: Vec<String>,
    /// The root of per-registry certificate directories (`certs-dir`), replacing docker's
    /// default roots; see [`RegistryClient`](super::RegistryClient) for the layout.
    pub certs_dir: Option<std::path::PathBuf>,
    /// Connections one blob download may use at once, fetching ranges of it in parallel
    /// (`max-connections-per-blob`; 1 fetches every blob over one connection).
    pub max_connections_per_blob: usize,
    /// Blobs at least this big are fetched in ranges over several connections when the registry
    /// honours `Range` (`ranged-download-min-size`, bytes).
    pub ranged_download_min_size: u64,
}

impl Default for RegistrySettings {
    /// docker's defaults: no insecure registries, no mirrors, proxies from the environment.
    fn default() -> Self {
        RegistrySettings {
            insecure_registries: Vec::new(),
            registry_mirrors: BTreeMap::new(),
            proxies: Proxies::default(),
            download_stall_timeout: DEFAULT_DOWNLOAD_STALL_TIMEOUT,
            max_download_attempts: DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            foreign_layer_allowed_networks: Vec::new(),
            certs_dir: None,
            max_connections_per_blob: DEFAULT_MAX_CONNECTIONS_PER_BLOB,
            ranged_download_min_size: DEFAULT_RANGED_DOWNLOAD_MIN_SIZE,
        }
    }
}

impl RegistrySettings {
    /// Whether plain HTTP (and unverified TLS) is allowed for `host` (`name[:port]`) by
    /// `insecure_registries` (loopback is allowed regardless: see [`is_loopback`]).
    pub(crate) fn is_insecure(&self, host: &str) -> bool {
        insecure_match(&self.insecure_registries, host)
    }

    /// Whether `foreign_layer_allowed_networks` lets foreign layer URLs reach `ip`.
    pub(crate) fn allows_foreign_network(&self, ip: IpAddr) -> bool {
        self.foreign_layer_allowed_networks
            .iter()
            .filter_map(|n| network(n))
            .any(|(net, bits)| cidr_contains(net, bits, ip))
    }

    /// The most one request may wait between its attempts, in all.
    pub(crate) fn retry_wait_budget(&self) -> Duration {
        self.max_retry_after
            .saturating_mul(RETRY_WAIT_BUDGET_FACTOR)
    }

    /// Mirrors configured for `registry`, in the order they are to be tried.
    pub(crate) fn mirrors_for(&self, registry: &str) -> &[url::Url] {
        self.registry_mirrors
            .get(registry)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether requests to `host` may use plain HTTP: loopback, or listed as insecure.
    pub(crate) fn allows_plain_http(&self, host: &str) -> bool {
        is_loopback(host) || self.is_insecure(host)
    }
}

/// Whether an `insecure-registries` list covers `host`.
pub(crate) fn insecure_match(entries: &[String], host: &str) -> bool {
    entries.iter().any(|entry| {
        if entry == host {
            return true;
        }
        if let Some((net, bits)) = parse_cidr(entry) {
            return host_ip(host).is_some_and(|ip| cidr_contains(net, bits, ip));
        }
        // An entry without a port covers every port of that host, as in docker.
        !entry.contains(':') && host_without_port(host) == entry
    })
}

/// The `proxies` key. When any proxy is set here, it replaces `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/
/// `NO_PROXY` from the environment (as docker's daemon.json does). Proxy URLs may carry
/// credentials, so `Debug` and [`Proxies::redacted`] hide them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Proxies {
    /// The proxy for `http://` URLs.
    pub http: Option<String>,
    /// The proxy for `https://` URLs.
    pub https: Option<String>,
    /// Hosts reached without a proxy, comma-separated as in `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl Proxies {
    /// Whether the config file sets a proxy (and so overrides the environment's).
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.http.is_some() || self.https.is_some()
    }

    /// The same settings with any user name and password in the URLs shown as `xxxxx`, as
    /// `docker info` prints them: safe for logs, errors and `haul info`.
    #[must_use]
    pub fn redacted(&self) -> Proxies {
        Proxies {
            http: self.http.as_deref().map(redact_userinfo),
            https: self.https.as_deref().map(redact_userinfo),
            no_proxy: self.no_proxy.clone(),
        }
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.redacted();
        f.debug_struct("Proxies")
            .field("http", &r.http)
            .field("https", &r.https)
            .field("no_proxy", &r.no_proxy)
            .finish()
    }
}

/// Replaces the user name and password of every `scheme://user:password@host` in `text` with
/// `xxxxx`. Works on free text (error messages), not only on whole URLs, because transport
/// errors may quote a proxy URL anywhere in their chain.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace; userinfo is before its
        // last '@'.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                out.push_str(if userinfo.contains(':') {
                    "xxxxx:xxxxx"
                } else {
                    "xxxxx"
                });
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The name or address of `host[:port]`, without the port (and without an IPv6 address's
/// brackets).
pub fn host_name(host: &str) -> &str {
    host_without_port(host)
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

fn host_ip(host: &str) -> Option<IpAddr> {
    let h = host_without_port(host);
    if h == "localhost" {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    h.parse().ok()
}

/// Whether `host` is on the loopback interface: such registries may speak plain HTTP, as in docker.
pub fn is_loopback(host: &str) -> bool {
    host_ip(host).is_some_and(|ip| ip.is_loopback())
}

/// A CIDR (`10.0.0.0/8`) as its network and prefix length.
pub(crate) fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (net, bits) = s.split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((net, bits))
}

/// A CIDR, or a single address as the network of just that address.
pub(crate) fn network(s: &str) -> Option<(IpAddr, u8)> {
    if let Some(cidr) = parse_cidr(s) {
        return Some(cidr);
    }
    let ip: IpAddr = s.parse().ok()?;
    Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}
