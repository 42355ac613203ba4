//! What every command needs: the config file, the store and a registry client, built from the
//! global options.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use haul::config::Config;
use haul::registry::{Anonymous, CredentialStore, DockerConfig, RegistryClient};
use haul::store::{Store, StoreError};
use haul::{Haul, HaulBuilder};

use crate::cli::GlobalArgs;
use crate::terminal;

pub struct Context {
    pub store: Store,
    pub client: RegistryClient,
}

/// `--root`, else the library's default ([`haul::store::default_root`]: `$HAUL_ROOT`,
/// `/var/lib/haul` for root, the XDG data dir for others, never a shared temp dir).
pub fn store_root(global: &GlobalArgs) -> Result<PathBuf, StoreError> {
    match &global.root {
        Some(root) => Ok(root.clone()),
        None => haul::store::default_root(),
    }
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

/// The store's error `cause` is or wraps: the library's module errors forward a store error
/// whole (`#[error(transparent)]`), so it is not a link of the chain of its own.
fn store_error<'e>(cause: &'e (dyn std::error::Error + 'static)) -> Option<&'e StoreError> {
    use haul::unpack::UnpackError;
    let unpack = |e: &'e UnpackError| match e {
        UnpackError::Store(e) => Some(e),
        _ => None,
    };
    let pull = |e: &'e haul::pull::PullError| match e {
        haul::pull::PullError::Store(e) => Some(e),
        haul::pull::PullError::Extract { source, .. } => unpack(source),
        _ => None,
    };
    let bundle = |e: &'e haul::bundle::BundleError| match e {
        haul::bundle::BundleError::Unpack(e) => unpack(e),
        _ => None,
    };
    if let Some(e) = cause.downcast_ref::<StoreError>() {
        return Some(e);
    }
    if let Some(e) = cause.downcast_ref::<haul::Error>() {
        return match e {
            haul::Error::Store(e) => Some(e),
            haul::Error::Pull(e) => pull(e),
            haul::Error::Unpack(e) => unpack(e),
            haul::Error::Bundle(e) => bundle(e),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<haul::pull::PullError>() {
        return pull(e);
    }
    if let Some(e) = cause.downcast_ref::<UnpackError>() {
        return unpack(e);
    }
    if let Some(e) = cause.downcast_ref::<haul::bundle::BundleError>() {
        return bundle(e);
    }
    match cause.downcast_ref::<haul::gc::GcError>() {
        Some(haul::gc::GcError::Store(e)) => return Some(e),
        Some(_) => return None,
        None => {}
    }
    match cause.downcast_ref::<haul::verify::VerifyError>() {
        Some(haul::verify::VerifyError::Store(e)) => return Some(e),
        Some(_) => return None,
        None => {}
    }
    match cause.downcast_ref::<haul::tag::TagError>() {
        Some(haul::tag::TagError::Store(e)) => return Some(e),
        Some(_) => return None,
        None => {}
    }
    match cause.downcast_ref::<haul::archive::ArchiveError>() {
        Some(haul::archive::ArchiveError::Store(e)) => Some(e),
        _ => None,
    }
}

/// What the user can do about a store that cannot be used.
pub fn store_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    match store_error(cause)? {
        StoreError::NoDefaultRoot => Some(
            "name a store with --root DIR or HAUL_ROOT=DIR (a directory of your own), or set \
             HOME or XDG_DATA_HOME"
                .to_owned(),
        ),
        StoreError::ForeignOwner { .. }
        | StoreError::WritableByOthers { .. }
        | StoreError::ReplaceableParent { .. } => Some(
            "pass --root DIR (or set HAUL_ROOT) to use a store of your own; haul makes it \
             private (mode 0700)"
                .to_owned(),
        ),
        StoreError::NotAStore { .. } => Some(
            "a store is an OCI image layout (oci-layout, index.json, blobs/); pass --root a new \
             or empty directory, or one holding a store, and haul makes it one; it does not add \
             its files to a directory of others"
                .to_owned(),
        ),
        StoreError::ReadOnly { .. } => Some(
            "a read-only store serves `images`, `inspect`, `save`, `unpack` and `verify` of \
             stored images; to pull, tag, remove, prune or repair, use a writable store \
             (remount it read-write, or pass --root DIR)"
                .to_owned(),
        ),
        _ => None,
    }
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
    Ok(Context { store, client })
}

/// The library's front door, set up from the global options (store, config file); `configure`
/// adds the command's own choices. Its warnings are printed, escaped, as docker prints its own.
pub fn front_door(
    global: &GlobalArgs,
    configure: impl FnOnce(HaulBuilder) -> HaulBuilder,
) -> anyhow::Result<Haul> {
    let root = store_root(global)?;
    let mut builder = Haul::builder().root(&root);
    if let Some(config) = &global.config {
        builder = builder.config_file(config);
    }
    let haul = configure(builder).build().map_err(|e| {
        let context = match &e {
            haul::Error::Config(_) => "cannot load the configuration".to_owned(),
            haul::Error::Store(_) => format!("cannot open the store at {}", root.display()),
            _ => "cannot set up the HTTP client".to_owned(),
        };
        anyhow::Error::new(e).context(context)
    })?;
    for warning in haul.warnings() {
        eprintln!("WARNING: {}", terminal::escape(warning));
    }
    Ok(haul)
}
