//! What every command needs: the config file, the store and a registry client, built from the
//! global options.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use haul::config::Config;
use haul::registry::{Anonymous, CredentialStore, DockerConfig, RegistryClient};
use haul::store::Store;

use crate::cli::GlobalArgs;
use crate::terminal;

pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub client: RegistryClient,
}

/// `--root`, then `$HAUL_ROOT`, then `/var/lib/haul` for root and the XDG data dir for others.
pub fn store_root(global: &GlobalArgs) -> PathBuf {
    if let Some(root) = &global.root {
        return root.clone();
    }
    if let Some(root) = std::env::var_os("HAUL_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    if is_root() {
        return PathBuf::from("/var/lib/haul");
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("haul")
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
    let root = store_root(global);
    let store = Store::open(&root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
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
    let client = RegistryClient::new(config.clone(), credentials, Default::default())
        .context("cannot set up the HTTP client")?;
    Ok(Context {
        config,
        store,
        client,
    })
}
