//! haul's configuration file: the keys of docker's `daemon.json` that matter to a puller.
//!
//! Looked up at an explicit path, then `$HAUL_CONFIG`, then `$XDG_CONFIG_HOME/haul/config.json`
//! (`~/.config/haul/config.json`), then `/etc/haul/config.json`; the first that exists wins and none
//! is fine (defaults). An explicit path that does not exist is an error. Unknown keys produce
//! warnings, never failures, so a real `daemon.json` can be pointed at directly; a known key with a
//! bad value is an error naming the key and the file.
//!
//! ```
//! use std::path::Path;
//!
//! use haul::config::Config;
//!
//! let config = Config::from_json(
//!     Path::new("/etc/docker/daemon.json"),
//!     br#"{"registry-mirrors": ["https://mirror.example.com"], "max-concurrent-downloads": 6,
//!          "log-driver": "journald", "shiny-new-key": true}"#,
//! )?;
//! assert_eq!(config.max_concurrent_downloads, 6);
//! // docker's keys that mean nothing to a puller are accepted quietly, unknown ones with a warning.
//! assert_eq!(config.warnings.len(), 1);
//! // What the registry client is given of it: the transport settings.
//! let settings = config.registry_settings();
//! assert_eq!(settings.registry_mirrors["docker.io"][0].as_str(), "https://mirror.example.com/");
//! # Ok::<(), haul::config::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use crate::registry::Proxies;
use crate::registry::RegistrySettings;
pub use crate::registry::settings::{
    DEFAULT_DOWNLOAD_STALL_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_BLOB,
    DEFAULT_MAX_DOWNLOAD_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER, DEFAULT_RANGED_DOWNLOAD_MIN_SIZE,
};
use crate::registry::settings::{network, parse_cidr};

/// docker's default for `max-concurrent-downloads`.
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// Longer than any sane stall limit; keeps a typo (`600000`) from meaning "hang for a week".
const MAX_DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// More connections to one host than any CDN wants from one client; keeps a typo from opening
/// thousands.
const MAX_CONNECTIONS_PER_BLOB: u64 = 64;

/// Docker Hub's name as mirrors are keyed.
const DOCKER_HUB: &str = "docker.io";

/// daemon.json keys docker has that make no sense for a puller: accepted without a warning.
const IGNORED_DAEMON_KEYS: &[&str] = &[
    "debug",
    "log-level",
    "storage-driver",
    "data-root",
    "features",
    "builder",
    "experimental",
    "live-restore",
    "log-driver",
    "log-opts",
    "default-address-pools",
    "dns",
    "hosts",
    "max-concurrent-uploads",
];

/// The proxies the environment gives, used when the config file sets none: `HTTP_PROXY` and
/// `HTTPS_PROXY`, `ALL_PROXY` for a scheme without its own, and `NO_PROXY` (each also lowercase,
/// as curl reads them). Inside a CGI request (`REQUEST_METHOD` set) none: there `HTTP_PROXY` may
/// come from a client's `Proxy:` header (httpoxy), so Go's net/http ignores it too. Pulls and
/// `haul info` both read this, so what info shows is what pulls use.
pub(crate) fn env_proxies() -> Proxies {
    if std::env::var_os("REQUEST_METHOD").is_some() {
        return Proxies::default();
    }
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let all = var(&["ALL_PROXY", "all_proxy"]);
    Proxies {
        http: var(&["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
        https: var(&["HTTPS_PROXY", "https_proxy"]).or(all),
        no_proxy: var(&["NO_PROXY", "no_proxy"]),
    }
}

/// The configuration: every key of the file, with docker's (or haul's) default for those it
/// does not set. [`Config::default`] is the configuration without a file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registries that may be spoken to over plain HTTP or unverified TLS, besides loopback
    /// (`insecure-registries`): `host:port`, a host name (any port) or a CIDR.
    pub insecure_registries: Vec<String>,
    /// Layers downloaded at once per pull (`max-concurrent-downloads`, default
    /// [`DEFAULT_MAX_CONCURRENT_DOWNLOADS`]).
    pub max_concurrent_downloads: usize,
    /// Tries per request, the first included (`max-download-attempts`, default
    /// [`DEFAULT_MAX_DOWNLOAD_ATTEMPTS`]).
    pub max_download_attempts: u32,
    /// A transfer that receives no byte for this long fails (and is retried), instead of hanging;
    /// also the deadline for a response's headers and the window over which a transfer must
    /// keep a minimum rate (`download-stall-timeout`, seconds in the file, default
    /// [`DEFAULT_DOWNLOAD_STALL_TIMEOUT`]).
    pub download_stall_timeout: Duration,
    /// The longest `Retry-After` haul obeys; longer asks fail the request at once
    /// (`max-retry-after`, seconds in the file, default [`DEFAULT_MAX_RETRY_AFTER`]).
    pub max_retry_after: Duration,
    /// Networks outside the public internet that foreign layer `urls` may reach (CIDRs or
    /// addresses). Empty: only public addresses.
    pub foreign_layer_allowed_networks: Vec<String>,
    /// Mirrors per upstream registry (`docker.io`, `ghcr.io`, `host:port`), tried in order.
    /// The file's `registry-mirrors` may be a list (Docker Hub's mirrors, as in docker) or an
    /// object of registry → list.
    pub registry_mirrors: BTreeMap<String, Vec<url::Url>>,
    /// Proxies that replace the environment's when set (`proxies`).
    pub proxies: Proxies,
    /// Where per-registry CA certificates and client certificates are found, in docker's
    /// `certs.d` layout (`DIR/HOST[:PORT]/ca.crt`, `client.cert`, `client.key`); replaces the
    /// default roots (`/etc/docker/certs.d`, and `~/.config/docker/certs.d` for other users than
    /// root) when set (`certs-dir`, an absolute path).
    pub certs_dir: Option<PathBuf>,
    /// Connections one blob download may use at once (`max-connections-per-blob`, default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_BLOB`]; 1 turns ranged downloads off). A blob of at least
    /// `ranged-download-min-size` whose registry honours `Range` is fetched in ranges over up to
    /// this many connections once its first stream proves to hold the download back. Shared with
    /// `max-concurrent-downloads`: each downloading layer holds one connection, and the extra
    /// connections of ranged downloads come from one pool of
    /// `max-connections-per-blob - 1` per pull, so a pull opens at most
    /// `max-concurrent-downloads + max-connections-per-blob - 1` blob connections at once.
    pub max_connections_per_blob: usize,
    /// The smallest blob fetched in ranges (`ranged-download-min-size`, bytes, default
    /// [`DEFAULT_RANGED_DOWNLOAD_MIN_SIZE`]).
    pub ranged_download_min_size: u64,
    /// Content trust: keyring, policy, and whether pulls verify signatures by default.
    pub trust: crate::trust::TrustConfig,
    /// The file the values came from, if any.
    pub source: Option<PathBuf>,
    /// Unknown keys and other things worth telling the user, without failing.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            insecure_registries: Vec::new(),
            max_concurrent_downloads: DEFAULT_MAX_CONCURRENT_DOWNLOADS,
            max_download_attempts: DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
            download_stall_timeout: DEFAULT_DOWNLOAD_STALL_TIMEOUT,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            foreign_layer_allowed_networks: Vec::new(),
            registry_mirrors: BTreeMap::new(),
            proxies: Proxies::default(),
            certs_dir: None,
            max_connections_per_blob: DEFAULT_MAX_CONNECTIONS_PER_BLOB,
            ranged_download_min_size: DEFAULT_RANGED_DOWNLOAD_MIN_SIZE,
            trust: crate::trust::TrustConfig::default(),
            source: None,
            warnings: Vec::new(),
        }
    }
}

/// Why the configuration file could not be used. Unknown keys are never errors (they are
/// [`Config::warnings`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (or, given explicitly, does not exist).
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("config file {path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why parsing stopped.
        #[source]
        source: serde_json::Error,
    },
    /// A known key has a value haul cannot use.
    #[error("config file {path}: invalid value for \"{key}\": {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key (`max-concurrent-downloads`…), or `(top level)` when the file is not an
        /// object.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
}

impl Config {
    /// The files looked at, in order, when no explicit path is given.
    pub fn search_paths() -> Vec<PathBuf> {
        let mut paths = Vec::new();
        if let Some(p) = std::env::var_os("HAUL_CONFIG").filter(|p| !p.is_empty()) {
            paths.push(PathBuf::from(p));
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(dir) = xdg {
            paths.push(dir.join("haul").join("config.json"));
        }
        paths.push(PathBuf::from("/etc/haul/config.json"));
        paths
    }

    /// Loads `explicit` (which must exist) or the first existing file of [`Config::search_paths`];
    /// the defaults when there is none.
    ///
    /// # Errors
    ///
    /// As [`Config::load_file`].
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Self::load_file(path);
        }
        for path in Self::search_paths() {
            if path.is_file() {
                return Self::load_file(&path);
            }
        }
        Ok(Config::default())
    }

    /// Loads the file at `path`.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, is not JSON, or has a known key with a bad value.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(path, &bytes)
    }

    /// Reads a configuration from `bytes`; `path` is where they came from, for
    /// [`Config::source`] and errors.
    ///
    /// # Errors
    ///
    /// `bytes` are not a JSON object, or a known key has a bad value.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let Value::Object(map) = value else {
            return Err(invalid("(top level)", "expected a JSON object".to_owned()));
        };
        let mut config = Config {
            source: Some(path.to_owned()),
            ..Config::default()
        };
        for (key, v) in &map {
            match key.as_str() {
                "insecure-registries" => {
                    config.insecure_registries = string_list(v).ok_or_else(|| {
                        invalid(key, "expected a list of registry names or CIDRs".to_owned())
                    })?;
                    for entry in &config.insecure_registries {
                        validate_insecure_entry(entry).map_err(|r| invalid(key, r))?;
                    }
                }
                "max-concurrent-downloads" => {
                    config.max_concurrent_downloads = positive(v).ok_or_else(|| {
                        invalid(key, format!("expected a positive integer, got {v}"))
                    })? as usize;
                }
                "max-download-attempts" => {
                    config.max_download_attempts = positive(v)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            invalid(key, format!("expected a positive integer, got {v}"))
                        })?;
                }
                // haul's own key (docker has no stall limit): seconds, fractions allowed.
                "download-stall-timeout" => {
                    config.download_stall_timeout = seconds(v, MAX_DOWNLOAD_STALL_TIMEOUT)
                        .ok_or_else(|| {
                            invalid(
                                key,
                                format!(
                                    "expected a number of seconds above 0 and up to 86400, got {v}"
                                ),
                            )
                        })?;
                }
                // haul's own keys, like download-stall-timeout.
                "max-retry-after" => {
                    config.max_retry_after =
                        seconds(v, MAX_DOWNLOAD_STALL_TIMEOUT).ok_or_else(|| {
                            invalid(
                                key,
                                format!(
                                    "expected a number of seconds above 0 and up to 86400, got {v}"
                                ),
                            )
                        })?;
                }
                "foreign-layer-allowed-networks" => {
                    config.foreign_layer_allowed_networks = string_list(v)
                        .filter(|l| l.iter().all(|n| network(n).is_some()))
                        .ok_or_else(|| {
                            invalid(key, "expected a list of CIDRs or IP addresses".to_owned())
                        })?;
                }
                "registry-mirrors" => {
                    config.registry_mirrors = parse_mirrors(v).map_err(|r| invalid(key, r))?;
                }
                "proxies" => {
                    config.proxies = parse_proxies(v).map_err(|r| invalid(key, r))?;
                }
                // haul's own key: docker has only its fixed certs.d roots.
                "certs-dir" => {
                    config.certs_dir = Some(
                        v.as_str()
                            .map(PathBuf::from)
                            .filter(|p| p.is_absolute())
                            .ok_or_else(|| {
                                invalid(
                                    key,
                                    format!("expected an absolute directory path, got {v}"),
                                )
                            })?,
                    );
                }
                // haul's own keys: docker fetches every blob over one connection.
                "max-connections-per-blob" => {
                    config.max_connections_per_blob = positive(v)
                        .filter(|n| *n <= MAX_CONNECTIONS_PER_BLOB)
                        .ok_or_else(|| {
                            invalid(
                                key,
                                format!(
                                    "expected an integer from 1 to {MAX_CONNECTIONS_PER_BLOB}, got {v}"
                                ),
                            )
                        })? as usize;
                }
                "ranged-download-min-size" => {
                    config.ranged_download_min_size = positive(v).ok_or_else(|| {
                        invalid(key, format!("expected a positive number of bytes, got {v}"))
                    })?;
                }
                "trust" => {
                    config.trust =
                        crate::trust::TrustConfig::parse(v).map_err(|r| invalid(key, r))?;
                }
                other if IGNORED_DAEMON_KEYS.contains(&other) => {}
                other => config.warnings.push(format!(
                    "config file {}: unknown key \"{other}\" ignored",
                    path.display()
                )),
            }
        }
        Ok(config)
    }

    /// Whether plain HTTP (and unverified TLS) is allowed for `host` (`name[:port]`).
    #[cfg(test)]
    fn is_insecure(&self, host: &str) -> bool {
        crate::registry::settings::insecure_match(&self.insecure_registries, host)
    }

    /// What the registry client needs of this file: the transport settings for every host.
    #[must_use]
    pub fn registry_settings(&self) -> RegistrySettings {
        // A literal, not `..Default::default()`: a setting added there must be mapped here.
        RegistrySettings {
            insecure_registries: self.insecure_registries.clone(),
            registry_mirrors: self.registry_mirrors.clone(),
            proxies: self.proxies.clone(),
            download_stall_timeout: self.download_stall_timeout,
            max_download_attempts: self.max_download_attempts,
            max_retry_after: self.max_retry_after,
            foreign_layer_allowed_networks: self.foreign_layer_allowed_networks.clone(),
            certs_dir: self.certs_dir.clone(),
            max_connections_per_blob: self.max_connections_per_blob,
            ranged_download_min_size: self.ranged_download_min_size,
        }
    }

    /// Mirrors configured for `registry`, in the order they are to be tried.
    #[cfg(test)]
    fn mirrors_for(&self, registry: &str) -> &[url::Url] {
        self.registry_mirrors
            .get(registry)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A positive number of seconds, fractions allowed, up to `max`.
fn seconds(v: &Value, max: Duration) -> Option<Duration> {
    v.as_f64()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= max)
}

fn positive(v: &Value) -> Option<u64> {
    v.as_u64().filter(|n| *n > 0)
}

fn validate_insecure_entry(entry: &str) -> Result<(), String> {
    if entry.is_empty() || entry.contains("://") || entry.contains(char::is_whitespace) {
        return Err(format!(
            "{entry:?} is not a registry host[:port] or CIDR (no scheme)"
        ));
    }
    if entry.contains('/') && parse_cidr(entry).is_none() {
        return Err(format!("{entry:?} is not a valid CIDR"));
    }
    Ok(())
}

fn parse_mirror_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "mirror URL for {} must not carry credentials; put them in docker's config.json",
            url.host_str().unwrap_or("?")
        ));
    }
    Ok(url)
}

fn parse_mirrors(v: &Value) -> Result<BTreeMap<String, Vec<url::Url>>, String> {
    let list = |v: &Value| -> Result<Vec<url::Url>, String> {
        let items = v
            .as_array()
            .ok_or_else(|| "expected a list of mirror URLs".to_owned())?;
        items
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| format!("expected a URL string, got {s}"))
                    .and_then(parse_mirror_url)
            })
            .collect()
    };
    let mut out = BTreeMap::new();
    match v {
        // docker's meaning: a plain list mirrors Docker Hub only.
        Value::Array(_) => {
            out.insert(DOCKER_HUB.to_owned(), list(v)?);
        }
        Value::Object(map) => {
            for (registry, mirrors) in map {
                let key = match registry.as_str() {
                    "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                    r => r,
                };
                out.insert(key.to_owned(), list(mirrors)?);
            }
        }
        _ => return Err("expected a list of URLs or an object of registry → URLs".to_owned()),
    }
    Ok(out)
}

fn parse_proxies(v: &Value) -> Result<Proxies, String> {
    let map = v
        .as_object()
        .ok_or_else(|| "expected an object with http-proxy, https-proxy, no-proxy".to_owned())?;
    let mut p = Proxies::default();
    for (k, val) in map {
        let s = val
            .as_str()
            .ok_or_else(|| format!("\"{k}\" must be a string"))?
            .to_owned();
        match k.as_str() {
            "http-proxy" => p.http = Some(s),
            "https-proxy" => p.https = Some(s),
            "no-proxy" => p.no_proxy = Some(s),
            other => return Err(format!("unknown proxies key \"{other}\"")),
        }
    }
    for s in [&p.http, &p.https].into_iter().flatten() {
        url::Url::parse(s).map_err(|_| "proxy is not a valid URL".to_owned())?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::settings::{is_loopback, redact_userinfo};

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(Path::new("/etc/haul/config.json"), json.as_bytes())
    }

    #[test]
    fn reads_daemon_json_keys_and_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.max_concurrent_downloads, 3);
        assert_eq!(c.max_download_attempts, 5);
        let c = parse(
            r#"{"max-concurrent-downloads": 8, "max-download-attempts": 2,
                "insecure-registries": ["reg.local:5000", "10.0.0.0/8", "plain.example"],
                "registry-mirrors": ["https://mirror.local"], "debug": true}"#,
        )
        .unwrap();
        assert_eq!(c.max_concurrent_downloads, 8);
        assert_eq!(c.max_download_attempts, 2);
        assert_eq!(
            c.mirrors_for("docker.io")[0].as_str(),
            "https://mirror.local/"
        );
        assert!(c.mirrors_for("ghcr.io").is_empty());
        assert!(c.warnings.is_empty());
        assert!(c.is_insecure("reg.local:5000"));
        assert!(!c.is_insecure("reg.local:5001"));
        assert!(c.is_insecure("10.1.2.3:5000"));
        assert!(!c.is_insecure("11.1.2.3"));
        assert!(c.is_insecure("plain.example:443"));
        assert!(!c.is_insecure("ghcr.io"));
    }

    #[test]
    fn ranged_download_keys_reach_the_registry_settings() {
        let c = parse(r#"{"max-connections-per-blob": 8, "ranged-download-min-size": 1048576}"#)
            .unwrap();
        assert!(c.warnings.is_empty());
        let s = c.registry_settings();
        assert_eq!(s.max_connections_per_blob, 8);
        assert_eq!(s.ranged_download_min_size, 1 << 20);
        let d = Config::default().registry_settings();
        assert_eq!(d.max_connections_per_blob, DEFAULT_MAX_CONNECTIONS_PER_BLOB);
        assert_eq!(d.ranged_download_min_size, 32 << 20);
        for bad in [
            r#"{"max-connections-per-blob": 0}"#,
            r#"{"max-connections-per-blob": 65}"#,
            r#"{"max-connections-per-blob": "4"}"#,
            r#"{"ranged-download-min-size": 0}"#,
            r#"{"ranged-download-min-size": -5}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ConfigError::Invalid { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn mirrors_for_any_registry() {
        let c = parse(
            r#"{"registry-mirrors": {"index.docker.io": ["https://m1"], "ghcr.io": ["http://127.0.0.1:5001", "https://m2"]}}"#,
        )
        .unwrap();
        assert_eq!(c.mirrors_for("docker.io").len(), 1);
        assert_eq!(c.mirrors_for("ghcr.io").len(), 2);
    }

    #[test]
    fn unknown_keys_warn_and_bad_values_name_key_and_file() {
        let c = parse(r#"{"max-concurent-downloads": 4}"#).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("max-concurent-downloads"));
        let bad = [
            (
                r#"{"max-concurrent-downloads": 0}"#,
                "max-concurrent-downloads",
            ),
            (
                r#"{"max-concurrent-downloads": "3"}"#,
                "max-concurrent-downloads",
            ),
            (r#"{"max-download-attempts": -1}"#, "max-download-attempts"),
            (r#"{"insecure-registries": "reg"}"#, "insecure-registries"),
            (
                r#"{"insecure-registries": ["http://reg"]}"#,
                "insecure-registries",
            ),
            (
                r#"{"insecure-registries": ["10.0.0.0/99"]}"#,
                "insecure-registries",
            ),
            (r#"{"registry-mirrors": ["ftp://x"]}"#, "registry-mirrors"),
            (
                r#"{"registry-mirrors": ["https://user:pw@m"]}"#,
                "registry-mirrors",
            ),
            (r#"{"registry-mirrors": 3}"#, "registry-mirrors"),
            (r#"{"proxies": {"http-proxy": 1}}"#, "proxies"),
            ("[]", "(top level)"),
        ];
        for (json, key) in bad {
            let err = parse(json).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("/etc/haul/config.json"),
                "{json}: {err}"
            );
        }
        assert!(matches!(parse("{"), Err(ConfigError::Json { .. })));
    }

    #[test]
    fn the_stall_timeout_is_configurable() {
        assert_eq!(
            parse("{}").unwrap().download_stall_timeout,
            DEFAULT_DOWNLOAD_STALL_TIMEOUT
        );
        let c = parse(r#"{"download-stall-timeout": 2.5}"#).unwrap();
        assert_eq!(c.download_stall_timeout, Duration::from_millis(2500));
        assert!(c.warnings.is_empty());
        for bad in ["0", "-1", "\"10\"", "100000"] {
            let err = parse(&format!(r#"{{"download-stall-timeout": {bad}}}"#)).unwrap_err();
            assert!(
                err.to_string().contains("download-stall-timeout"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn proxy_credentials_are_masked() {
        let table = [
            ("http://user:pw@proxy:3128", "http://xxxxx:xxxxx@proxy:3128"),
            ("http://token@proxy:3128/", "http://xxxxx@proxy:3128/"),
            ("http://proxy:3128", "http://proxy:3128"),
            (
                "error: proxy http://u:p@a.b:1 refused; retry https://x/y?z=a@b",
                "error: proxy http://xxxxx:xxxxx@a.b:1 refused; retry https://x/y?z=a@b",
            ),
            ("no url here", "no url here"),
        ];
        for (input, want) in table {
            assert_eq!(redact_userinfo(input), want, "{input}");
        }
        let c = parse(
            r#"{"proxies": {"http-proxy": "http://alice:hunter2@proxy:3128", "no-proxy": "*.lan"}}"#,
        )
        .unwrap();
        assert!(c.proxies.is_set());
        assert_eq!(
            c.proxies.redacted().http.as_deref(),
            Some("http://xxxxx:xxxxx@proxy:3128")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        // A bad proxy URL's error does not echo the URL (it may hold a password).
        let err = parse(r#"{"proxies": {"https-proxy": "http://alice:hunter2@[bad"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxies") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/haul.json"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/haul.json"));
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "example.com", "ghcr.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
