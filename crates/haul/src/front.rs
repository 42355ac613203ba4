//! The front door: one value, set up from a few choices, that pulls images, checks content trust
//! and unpacks them, the way the `haul` command does.
//!
//! ```no_run
//! # async fn demo() -> Result<(), haul::Error> {
//! use std::sync::Arc;
//!
//! // The config file, store and docker credentials haul itself would use; content trust as the
//! // config says (or `.content_trust(true)`).
//! let haul = haul::Haul::builder().root("/tmp/haul-store").build()?;
//! let reporter = Arc::new(haul::progress::Silent);
//! let done = haul.unpack("alpine:3.20", "/tmp/alpine-rootfs".as_ref(), reporter).await?;
//! println!("{} layers, {} entries", done.stats.layers, done.stats.entries);
//! # Ok(()) }
//! ```
//!
//! Promises: every way the front door fetches an image goes through the same [`Puller`], so the
//! configured content-trust policy, platform and limits hold for all of them; `unpack` and
//! `bundle` use a stored image only when it fits (and, with trust on, is the digest that was
//! checked); nothing here prints — warnings a program may want to show are in
//! [`Haul::warnings`], progress goes to the [`Reporter`] given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::write_bundle;
use crate::config::Config;
use crate::error::Error;
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::pull::{AllTags, PullOptions, PullOutcome, Puller};
use crate::reference::Reference;
use crate::registry::{Anonymous, ClientOptions, CredentialStore, DockerConfig, RegistryClient};
use crate::store::{RefEntry, Store, default_root, tightening_notice};
#[cfg(feature = "trust")]
use crate::trust::TrustVerifier;
use crate::unpack::image::{UnpackOptions, UnpackStats, unpack};

/// Pulls, checks and unpacks images into one store. Cheap to share behind an `Arc`; every method
/// may run concurrently with the others.
///
/// Built with [`Haul::builder`]. Every method takes the image as a user types it (`alpine`,
/// `registry:5000/team/app:1.2`, `name@sha256:…`) and a [`Reporter`] for progress; errors say
/// their [`ErrorKind`](crate::ErrorKind).
///
/// ```no_run
/// use std::sync::Arc;
///
/// use haul::progress::Silent;
/// use haul::{ErrorKind, Haul};
///
/// # async fn demo() -> Result<(), haul::Error> {
/// let haul = Haul::builder().build()?;
/// match haul.pull("registry.example.com/team/app:1.2", Arc::new(Silent)).await {
///     Ok(pulled) => println!("{} is {}", pulled.reference, pulled.manifest),
///     Err(e) if e.kind() == ErrorKind::Unauthorized => eprintln!("log in first: {e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub struct Haul {
    store: Store,
    puller: Puller,
    warnings: Vec<String>,
}

/// What [`Haul::unpack`] and [`Haul::bundle`] made, and from which stored image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Unpacked {
    /// The image, as the store names it.
    pub image: RefEntry,
    /// What was written: layers (and how many came from the layer cache), entries, bytes.
    pub stats: UnpackStats,
}

/// How to set up a [`Haul`]; every choice has haul's own default.
///
/// Without settings, [`build`](HaulBuilder::build) does what the `haul` command does: it reads
/// the config file, opens the default store and takes docker's credentials. An embedder that
/// wants none of the user's files says so:
///
/// ```
/// use std::sync::Arc;
///
/// use haul::config::Config;
/// use haul::registry::Anonymous;
///
/// let dir = tempfile::tempdir()?;
/// let haul = haul::Haul::builder()
///     .root(dir.path().join("store")) // created, private to this user
///     .config(Config::default()) // no config file: docker's defaults
///     .credentials(Arc::new(Anonymous)) // no docker config.json
///     .content_trust(false) // whatever DOCKER_CONTENT_TRUST says
///     .build()?;
/// assert!(!haul.verifies_trust());
/// assert!(haul.store().root().ends_with("store"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct HaulBuilder {
    root: Option<PathBuf>,
    config: Option<Config>,
    config_file: Option<PathBuf>,
    credentials: Option<Arc<dyn CredentialStore>>,
    platform: Option<Platform>,
    content_trust: Option<bool>,
    extract_layers: bool,
    #[cfg(feature = "trust")]
    trust_verifier: Option<TrustVerifier>,
    client_options: ClientOptions,
}

impl Default for HaulBuilder {
    fn default() -> Self {
        HaulBuilder {
            root: None,
            config: None,
            config_file: None,
            credentials: None,
            platform: None,
            content_trust: None,
            extract_layers: true,
            #[cfg(feature = "trust")]
            trust_verifier: None,
            client_options: ClientOptions::default(),
        }
    }
}

impl HaulBuilder {
    /// The store's directory; else [`default_root`] (`$HAUL_ROOT`, `/var/lib/haul` for root,
    /// `~/.local/share/haul` for others).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// A configuration already loaded (or built in code); else the config file is read.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The config file to read; else `$HAUL_CONFIG`, `~/.config/haul/config.json`,
    /// `/etc/haul/config.json`, or the defaults when there is none.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Where registry credentials come from; else docker's `config.json` (and its credential
    /// helpers), as `docker login` and `haul login` write it.
    pub fn credentials(mut self, credentials: Arc<dyn CredentialStore>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The platform to pick from multi-platform images; else this host's.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// Turns content trust on or off whatever the configuration and `DOCKER_CONTENT_TRUST` say.
    pub fn content_trust(mut self, on: bool) -> Self {
        self.content_trust = Some(on);
        self
    }

    /// Checks content trust with this verifier (its own keyring, policy or clock), always.
    #[cfg(feature = "trust")]
    pub fn trust_verifier(mut self, verifier: TrustVerifier) -> Self {
        self.trust_verifier = Some(verifier);
        self
    }

    /// Whether pulls extract layers into the layer cache as they download (docker's behaviour,
    /// the default); `false` only downloads, and unpacking extracts later.
    pub fn extract_layers(mut self, extract: bool) -> Self {
        self.extract_layers = extract;
        self
    }

    /// HTTP knobs that are not part of the config file (retry delays, extra trusted CAs).
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.client_options = options;
        self
    }

    /// Reads the configuration and the credentials, opens (or creates) the store and sets up the
    /// registry client. A broken docker `config.json` is a warning, as in docker: pulls go on
    /// anonymously.
    ///
    /// # Errors
    ///
    /// A config file that cannot be read or is invalid, a store that cannot be opened (or that
    /// another user could change), or an HTTP client that cannot be set up.
    pub fn build(self) -> Result<Haul, Error> {
        let mut warnings = Vec::new();
        let config = match self.config {
            Some(config) => config,
            None => Config::load(self.config_file.as_deref())?,
        };
        warnings.extend(config.warnings.iter().cloned());
        let root = match self.root {
            Some(root) => root,
            None => default_root()?,
        };
        let (store, tightened) = Store::open_reporting(root)?;
        warnings.extend(tightening_notice(store.root(), &tightened));
        let credentials = match self.credentials {
            Some(c) => c,
            None => match DockerConfig::load_default() {
                Ok(c) => Arc::new(c) as Arc<dyn CredentialStore>,
                Err(e) => {
                    warnings.push(format!("Error loading docker config file: {e}"));
                    Arc::new(Anonymous)
                }
            },
        };
        let client =
            RegistryClient::new(config.registry_settings(), credentials, self.client_options)?;
        #[allow(unused_mut)] // Only a build with the `trust` feature replaces the verifier.
        let mut puller = Puller::new(
            client,
            store.clone(),
            PullOptions {
                platform: self.platform,
                max_concurrent_downloads: config.max_concurrent_downloads,
                unpack: self.extract_layers.then(UnpackOptions::for_current_user),
                content_trust: self.content_trust,
                trust: config.trust,
            },
        );
        #[cfg(feature = "trust")]
        if let Some(verifier) = self.trust_verifier {
            puller = puller.with_trust(verifier);
        }
        Ok(Haul {
            store,
            puller,
            warnings,
        })
    }
}

impl Haul {
    /// A builder with haul's defaults.
    pub fn builder() -> HaulBuilder {
        HaulBuilder::default()
    }

    /// The store images go into.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The puller behind the front door, for what it does not wrap.
    #[must_use]
    pub fn puller(&self) -> &Puller {
        &self.puller
    }

    /// What setting up found worth telling a user: config file warnings, a store made private,
    /// a docker `config.json` that could not be read.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether pulls check content trust.
    #[must_use]
    pub fn verifies_trust(&self) -> bool {
        self.puller.verifies_trust()
    }

    /// Pulls `image` (`alpine`, `registry:5000/team/app:1.2`, `name@sha256:…`), docker's way.
    ///
    /// # Errors
    ///
    /// An invalid reference, or the pull's error ([`Error::kind`] says which kind).
    pub async fn pull(
        &self,
        image: &str,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PullOutcome, Error> {
        let reference: Reference = image.parse()?;
        Ok(self.puller.pull(&reference, reporter).await?)
    }

    /// Pulls every image tag of `repository` (a name without tag or digest); signature and
    /// artifact tags are skipped, and a tag that fails does not stop the others.
    ///
    /// # Errors
    ///
    /// An invalid repository name, or a tag list that cannot be read; each tag's own failure is in
    /// [`AllTags::failed`].
    pub async fn pull_all_tags(
        &self,
        repository: &str,
        reporter: Arc<dyn Reporter>,
    ) -> Result<AllTags, Error> {
        let repository = Reference::parse_repository(repository)?;
        Ok(self.puller.pull_all_tags(&repository, reporter).await?)
    }

    /// The stored image `image` names when it fits, else pulled first (see
    /// [`Puller::stored_or_pull`]).
    ///
    /// # Errors
    ///
    /// The pull's error, when one was needed.
    pub async fn image(&self, image: &str, reporter: Arc<dyn Reporter>) -> Result<RefEntry, Error> {
        Ok(self.puller.stored_or_pull(image, reporter).await?)
    }

    /// Makes `dir` a root filesystem of `image` (pulled first when needed), with the current
    /// user's unpacking options.
    ///
    /// # Errors
    ///
    /// The pull's error, a `dir` that is not empty, or the unpack's.
    pub async fn unpack(
        &self,
        image: &str,
        dir: &Path,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Unpacked, Error> {
        self.unpack_with(image, dir, &UnpackOptions::for_current_user(), reporter)
            .await
    }

    /// [`Haul::unpack`] with explicit options (`force` to replace a non-empty directory, ownership
    /// and devices as root…).
    ///
    /// # Errors
    ///
    /// As [`Haul::unpack`].
    pub async fn unpack_with(
        &self,
        image: &str,
        dir: &Path,
        options: &UnpackOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Unpacked, Error> {
        self.materialise(image, dir, options, reporter, "unpack", unpack)
            .await
    }

    /// Makes `dir` an OCI runtime bundle of `image` (`rootfs/` and `config.json`, as `runc spec`
    /// writes it, with the image's process), pulled first when needed.
    ///
    /// # Errors
    ///
    /// As [`Haul::unpack`], or a user or group the image's config names that its own account
    /// files lack.
    pub async fn bundle(
        &self,
        image: &str,
        dir: &Path,
        options: &UnpackOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Unpacked, Error> {
        self.materialise(image, dir, options, reporter, "bundle", write_bundle)
            .await
    }

    /// The stored (or pulled) `image` made into `dir` by `make` on a blocking thread.
    async fn materialise<E>(
        &self,
        image: &str,
        dir: &Path,
        options: &UnpackOptions,
        reporter: Arc<dyn Reporter>,
        what: &'static str,
        make: Materialiser<E>,
    ) -> Result<Unpacked, Error>
    where
        E: Send + 'static,
        Error: From<E>,
    {
        let image = self.image(image, reporter.clone()).await?;
        let (store, entry, dir, options) = (
            self.store.clone(),
            image.clone(),
            dir.to_owned(),
            options.clone(),
        );
        let stats = tokio::task::spawn_blocking(move || {
            make(&store, &entry, &dir, &options, reporter.as_ref())
        })
        .await
        .map_err(|source| Error::Task { what, source })??;
        Ok(Unpacked { image, stats })
    }
}

/// What [`Haul::unpack_with`] and [`Haul::bundle`] run on a stored image.
type Materialiser<E> =
    fn(&Store, &RefEntry, &Path, &UnpackOptions, &dyn Reporter) -> Result<UnpackStats, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Built without signature verification, a front door asked to check content trust refuses
    /// to pull rather than pull unchecked.
    #[cfg(not(feature = "trust"))]
    #[tokio::test]
    async fn without_the_trust_feature_trust_refuses_every_pull() {
        let dir = tempfile::tempdir().unwrap();
        let haul = Haul::builder()
            .root(dir.path().join("store"))
            .config(Config::default())
            .credentials(Arc::new(Anonymous))
            .content_trust(true)
            .build()
            .unwrap();
        assert!(haul.verifies_trust());
        let err = haul
            .pull("127.0.0.1:1/team/app:1", Arc::new(crate::progress::Silent))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Pull(crate::pull::PullError::TrustUnavailable)),
            "{err}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::DeniedByPolicy);
    }

    #[test]
    fn trust_is_off_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let haul = Haul::builder()
            .root(dir.path().join("store"))
            .config(Config::default())
            .credentials(Arc::new(Anonymous))
            .content_trust(false)
            .build()
            .unwrap();
        assert!(!haul.verifies_trust());
    }
}
