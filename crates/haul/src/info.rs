//! What a store holds and how much disk it takes, and the configuration in effect: `haul info`.
//!
//! Counts are read from the layout as it is on disk (files under `blobs/`, partial downloads
//! under `ingest/`, refs in `index.json`), so they agree with `du` and with what other OCI tools
//! see. Nothing is locked or changed: a pull running meanwhile may make the numbers a moment old.
//! [`effective_config`] shows what pulls will use, proxy credentials masked.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, Config};
use crate::store::{Store, StoreDir, StoreError};

/// The settings a pull uses, ready to print: from the config file, else built-in defaults (and
/// the environment for proxies). Proxy URLs have their user and password shown as `xxxxx`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EffectiveConfig {
    /// Blobs a pull downloads at once (`max-concurrent-downloads`).
    pub max_concurrent_downloads: usize,
    /// Attempts a request or blob download gets before it fails (`max-download-attempts`).
    pub max_download_attempts: u32,
    /// Seconds without a byte after which a transfer attempt fails.
    pub download_stall_timeout: f64,
    /// The longest `Retry-After` obeyed, in seconds.
    pub max_retry_after: f64,
    /// Connections one big blob may be fetched over, in ranges (`max-connections-per-blob`).
    pub max_connections_per_blob: usize,
    /// The smallest blob fetched in ranges, in bytes (`ranged-download-min-size`).
    pub ranged_download_min_size: u64,
    /// Networks outside the public internet that foreign layer `urls` may reach.
    pub foreign_layer_allowed_networks: Vec<String>,
    /// Registries (hosts, `host:port` or CIDRs) that may be reached over plain HTTP or TLS
    /// without verification, HTTPS being tried first.
    pub insecure_registries: Vec<String>,
    /// Mirrors per registry, in the order they are tried (the registry itself comes last).
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// The HTTP proxies requests go through.
    pub proxies: ProxySettings,
}

/// Proxies in effect and where they come from.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySettings {
    /// `config file`, `environment` or `none`.
    pub source: &'static str,
    /// Proxy for `http://` URLs, credentials masked; `None`: none.
    #[serde(rename = "http-proxy")]
    pub http: Option<String>,
    /// Proxy for `https://` URLs, credentials masked; `None`: none.
    #[serde(rename = "https-proxy")]
    pub https: Option<String>,
    /// Hosts and domains reached without a proxy (comma-separated, as `NO_PROXY`).
    #[serde(rename = "no-proxy")]
    pub no_proxy: Option<String>,
}

/// What pulls made with `config` will use. Proxies from the config file replace the
/// environment's, as the HTTP client applies them.
#[must_use]
pub fn effective_config(config: &Config) -> EffectiveConfig {
    let (source, proxies) = if config.proxies.is_set() {
        ("config file", config.proxies.redacted())
    } else {
        let env = config::env_proxies();
        let source = if env.is_set() { "environment" } else { "none" };
        (source, env.redacted())
    };
    EffectiveConfig {
        max_concurrent_downloads: config.max_concurrent_downloads,
        max_download_attempts: config.max_download_attempts,
        download_stall_timeout: config.download_stall_timeout.as_secs_f64(),
        max_retry_after: config.max_retry_after.as_secs_f64(),
        max_connections_per_blob: config.max_connections_per_blob,
        ranged_download_min_size: config.ranged_download_min_size,
        foreign_layer_allowed_networks: config.foreign_layer_allowed_networks.clone(),
        insecure_registries: config.insecure_registries.clone(),
        registry_mirrors: config
            .registry_mirrors
            .iter()
            .map(|(registry, urls)| {
                (
                    registry.clone(),
                    urls.iter().map(|u| u.to_string()).collect(),
                )
            })
            .collect(),
        proxies: ProxySettings {
            source,
            http: proxies.http,
            https: proxies.https,
            no_proxy: proxies.no_proxy,
        },
    }
}

/// What a store holds and the disk it takes, from [`usage`]. Sizes are bytes of the files' lengths
/// (not the blocks they take, so a sparse file counts whole).
#[derive(Debug, Clone, Serialize)]
pub struct StoreUsage {
    /// The store's root directory.
    pub root: PathBuf,
    /// Named images (refs in `index.json`).
    pub images: usize,
    /// Committed blobs: manifests, configs and layers.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub blob_bytes: u64,
    /// Downloads in progress or interrupted, kept for resuming.
    pub partial_files: u64,
    /// Bytes of those partial downloads.
    pub partial_bytes: u64,
    /// Layers extracted into the layer cache (staging directories of extractions in progress
    /// left out).
    pub extracted_layers: u64,
    /// Bytes of the regular files of those extracted layers.
    pub extracted_bytes: u64,
}

/// Counts what `store` holds. Nothing is followed: a symlink in the store counts as itself.
///
/// # Errors
///
/// [`StoreError`] when a directory of the store or `index.json` cannot be read.
pub fn usage(store: &Store) -> Result<StoreUsage, StoreError> {
    let dir = store.dir();
    let mut blobs = 0;
    let mut blob_bytes = 0;
    // One directory per digest algorithm (`blobs/sha256`, `blobs/sha512`).
    for algorithm in dir.list(Path::new("blobs"))? {
        if algorithm.is_dir() {
            let (n, bytes) = files_in(dir, &Path::new("blobs").join(&algorithm.name))?;
            blobs += n;
            blob_bytes += bytes;
        }
    }
    let (partial_files, partial_bytes) = files_in(dir, Path::new("ingest"))?;
    let (mut extracted_layers, mut extracted_bytes) = (0, 0);
    for algorithm in dir.list(Path::new("layers"))? {
        if !algorithm.is_dir() {
            continue;
        }
        let algorithm_dir = Path::new("layers").join(&algorithm.name);
        for layer in dir.list(&algorithm_dir)? {
            // Staging directories of extractions in progress start with a dot.
            let staging = layer.name.as_bytes().starts_with(b".");
            if layer.is_dir() && !staging {
                extracted_layers += 1;
                extracted_bytes +=
                    tree_bytes(&store.root().join(&algorithm_dir).join(&layer.name))?;
            }
        }
    }
    Ok(StoreUsage {
        root: store.root().to_owned(),
        images: store.refs()?.len(),
        blobs,
        blob_bytes,
        partial_files,
        partial_bytes,
        extracted_layers,
        extracted_bytes,
    })
}

/// The bytes of every regular file below `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> Result<u64, StoreError> {
    let iter = match std::fs::read_dir(dir) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut total = 0;
    for entry in iter {
        let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if meta.is_dir() {
            total += tree_bytes(&path)?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Number and total size of the regular files directly in `rel`.
fn files_in(dir: &StoreDir, rel: &Path) -> Result<(u64, u64), StoreError> {
    Ok(dir
        .list(rel)?
        .iter()
        .filter(|e| e.is_file())
        .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.len())))
}
