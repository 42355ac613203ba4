//! What every command needs: the config file, the store and a registry client, built from the
//! global options.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use haul::config::Config;
use haul::registry::{Anonymous, CredentialStore, DockerConfig, RegistryClient};
use haul::store::{Store, StoreError};

use crate::cli::GlobalArgs;
use crate::terminal;

pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub client: RegistryClient,
}

/// No store was named and there is no private place to put one.
#[derive(Debug)]
pub struct NoStoreRoot;

impl std::fmt::Display for NoStoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no store location: neither HOME nor XDG_DATA_HOME is set, and haul does not fall \
             back to a shared temporary directory, where another user could have prepared the \
             store",
        )
    }
}

impl std::error::Error for NoStoreRoot {}

/// `--root`, then `$HAUL_ROOT`, then `/var/lib/haul` for root and the XDG data dir for others.
/// Without HOME or XDG_DATA_HOME there is no private default: a store in a shared temp dir could
/// be pre-created by anyone, with forged content (layer-cache keys are public), so that is an
/// error rather than a fallback.
pub fn store_root(global: &GlobalArgs) -> Result<PathBuf, NoStoreRoot> {
    if let Some(root) = &global.root {
        return Ok(root.clone());
    }
    if let Some(root) = std::env::var_os("HAUL_ROOT").filter(|r| !r.is_empty()) {
        return Ok(PathBuf::from(root));
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/haul"));
    }
    // The XDG spec says to ignore relative paths in these variables.
    let absolute = |p: PathBuf| p.is_absolute().then_some(p);
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .and_then(absolute)
                .map(|h| h.join(".local/share"))
        })
        .map(|data| data.join("haul"))
        .ok_or(NoStoreRoot)
}

/// Opens the store the options name, telling the user when an older, looser store was made
/// private.
pub fn open_store(global: &GlobalArgs) -> anyhow::Result<Store> {
    let root = store_root(global)?;
    let (store, tightened) = Store::open_reporting(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    if let Some(notice) = haul::store::tightening_notice(store.root(), &tightened) {
        eprintln!("WARNING: {notice}");
    }
    Ok(store)
}

/// What the user can do about a store that cannot be used.
pub fn store_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if cause.downcast_ref::<NoStoreRoot>().is_some() {
        return Some(
            "name a store with --root DIR or HAUL_ROOT=DIR (a directory of your own), or set \
             HOME or XDG_DATA_HOME"
                .to_owned(),
        );
    }
    match cause.downcast_ref::<StoreError>()? {
        StoreError::ForeignOwner { .. }
        | StoreError::WritableByOthers { .. }
        | StoreError::ReplaceableParent { .. } => Some(
            "pass --root DIR (or set HAUL_ROOT) to use a store of your own; haul makes it \
             private (mode 0700)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Whether the effective uid is root: root gets the system-wide store and trust directories.
pub(crate) fn is_root() -> bool {
    // Reading the effective uid from /proc avoids a libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The config file, with its warnings printed.
pub fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    let config = Config::load(global.config.as_deref()).context("cannot load the configuration")?;
    for warning in &config.warnings {
        eprintln!("WARNING: {}", terminal::escape(warning));
    }
    Ok(config)
}

pub fn load(global: &GlobalArgs) -> anyhow::Result<Context> {
    let config = Arc::new(load_config(global)?);
    let store = open_store(global)?;
    let credentials: Arc<dyn CredentialStore> = match DockerConfig::load_default() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            // Like docker: a broken credentials file should not stop anonymous pulls.
            eprintln!(
                "WARNING: Error loading docker config file: {}",
                terminal::escape(&e.to_string())
            );
            Arc::new(Anonymous)
        }
    };
    let client = RegistryClient::new(config.registry_settings(), credentials, Default::default())
        .context("cannot set up the HTTP client")?;
    Ok(Context {
        config,
        store,
        client,
    })
}
