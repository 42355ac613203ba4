//! The pull orchestrator: reference → manifest → platform → blobs → ref.
//!
//! A tag is resolved with HEAD; manifests are fetched by digest only when the store lacks them.
//! Config and layers download concurrently (`max-concurrent-downloads` at a time), each streamed
//! through an ingest that hashes and counts while writing, retried on transient failures and resumed
//! with `Range` where the registry allows. The ref is published last, after every blob it reaches is
//! committed, so a failed or interrupted pull never leaves a name pointing at a partial image; the
//! blobs it did verify stay for the next pull to reuse.
//!
//! This file orchestrates; the parts are beside it: `manifests` (name → document → image),
//! `layer` (one layer's download slot and extraction), `ingest` (a blob into the store through
//! the registry's [`crate::registry::Repository::fetch_blob`], which owns resume, retries, mirrors
//! and verification), `tee` (the extraction's copy of a download), `reporting` (download progress
//! off the stream) and `all_tags`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::digest::Digest;
use crate::images::LAYER_SIZES_ANNOTATION;
use crate::manifest::{self, Descriptor, ImageConfig, ManifestError};
use crate::platform::Platform;
use crate::progress::{Event, InOrder, LayerStatus, Reporter};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::space::{self, Size};
use crate::store::{RefEntry, Store, StoreError};
use crate::trust::{self, TrustConfig};
#[cfg(feature = "trust")]
use crate::trust::{Keyring, TrustError, TrustVerifier};
use crate::unpack::budget::{Exceeded, ImageBudget};
use crate::unpack::cache::{Session, cache_keys};
use crate::unpack::image::{UnpackError, UnpackOptions};

mod all_tags;
mod ingest;
mod layer;
mod manifests;
mod reporting;
mod sizes;
mod tee;

pub use all_tags::{AllTags, SkippedTag};
use all_tags::{TAGS_AT_ONCE, artifact_tag};
pub(crate) use ingest::IngestSink;
use layer::{BlobContext, LayerJob};
use manifests::{manifest_media_type, map_name_error, parse_image};

/// Why a pull failed. The messages are docker's where docker has one. [`PullError::kind`]
/// classifies it as the front door does; a failed pull leaves the store as it was, plus the
/// verified blobs it may reuse.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such tag or digest.
    #[error("manifest for {reference} not found: {source}")]
    ManifestUnknown {
        /// The image as docker shows it.
        reference: String,
        /// What the registry answered.
        #[source]
        source: RegistryError,
    },
    /// The registry has no such repository.
    #[error("repository {repository} not found: {source}")]
    NameUnknown {
        /// The repository.
        repository: String,
        /// What the registry answered.
        #[source]
        source: RegistryError,
    },
    /// The registry refused access: the repository does not exist or needs (other) credentials.
    #[error(
        "pull access denied for {repository}, repository does not exist or may require \
         'haul login': {source}"
    )]
    AccessDenied {
        /// The repository.
        repository: String,
        /// What the registry answered.
        #[source]
        source: RegistryError,
    },
    /// A downloaded blob is not what its digest says; it was not stored.
    #[error("filesystem layer verification failed for digest {digest}: {source}")]
    LayerVerification {
        /// The blob's digest.
        digest: Digest,
        /// What the store found.
        #[source]
        source: Box<StoreError>,
    },
    /// A manifest, index or config cannot be used (unsupported, malformed, no entry for the
    /// platform).
    #[error("{context}: {source}")]
    Manifest {
        /// Which document.
        context: String,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// The registry failed otherwise.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer could not be extracted into the layer cache.
    #[error("extracting layer {digest}: {source}")]
    Extract {
        /// The layer's digest.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<UnpackError>,
    },
    /// A task of the pull stopped before it finished: it panicked, or the runtime is shutting
    /// down.
    #[error("a task of the pull stopped before it finished: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The puller's download or extraction slots were closed under the pull.
    #[error("the pull was stopped")]
    Stopped,
    /// Refused before downloading (`more_than` false), or the disk filled anyway during the pull:
    /// then all that is known is that the pull needed more than was free when it started.
    #[error(
        "no space left on device: need {}{}, {} free under {}",
        if *.more_than { "more than " } else { "" },
        Size(*.need),
        Size(*.free),
        .root.display()
    )]
    NoSpace {
        /// Bytes needed: the missing blobs' sizes plus an estimate for extracting the layers not
        /// yet extracted.
        need: u64,
        /// `need` is a lower bound: the disk filled during the pull.
        more_than: bool,
        /// Bytes free when the pull started.
        free: u64,
        /// The store's directory.
        root: PathBuf,
    },
    /// The image (not from an index) is for another platform than the one asked for.
    #[error(
        "image with reference {reference} was found but does not match the specified platform: \
         wanted {wanted}, actual: {actual}"
    )]
    PlatformMismatch {
        /// The image as docker shows it.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The image's.
        actual: String,
    },
    /// The image name is not a valid reference.
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    /// The image was pulled, and then removed by someone else before it could be used.
    #[error("{name} was removed from the store while it was being pulled")]
    RefVanished {
        /// The full reference.
        name: String,
    },
    /// Content trust refused the image; nothing was downloaded.
    #[cfg(feature = "trust")]
    #[error(transparent)]
    Trust(TrustError),
    /// Content trust is on, but this build has no signature verification (the `trust` cargo
    /// feature): nothing is pulled unchecked.
    #[error(
        "content trust is on, but this build of haul cannot verify signatures (built without the \
         `trust` feature); nothing was pulled"
    )]
    TrustUnavailable,
    /// [`Puller::pull_pinned`] was given a reference naming another digest than the pin.
    #[error("{reference} names digest {named}, but the pull was pinned to {pinned}")]
    PinMismatch {
        /// The reference.
        reference: String,
        /// The digest it names.
        named: Digest,
        /// The digest pinned.
        pinned: Digest,
    },
}

/// How a [`Puller`] pulls. [`PullOptions::default`] is docker's behaviour.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Layers downloaded at once, by all the pulls of one puller together (at least 1).
    pub max_concurrent_downloads: usize,
    /// Extract every layer into the layer cache as part of the pull (docker's behaviour);
    /// `None` only downloads.
    pub unpack: Option<UnpackOptions>,
    /// Content trust: `None` follows `trust` (the config file's `trust.enabled`, overridden by
    /// `DOCKER_CONTENT_TRUST`; see [`trust::enabled`]); `Some` is an explicit choice (docker's
    /// `--disable-content-trust`).
    pub content_trust: Option<bool>,
    /// The config file's `trust` settings: on by default or not, the keyring, the policy.
    pub trust: TrustConfig,
}

impl Default for PullOptions {
    /// docker's defaults: the host's platform, three downloads at once, layers extracted, content
    /// trust as configured.
    fn default() -> Self {
        PullOptions {
            platform: None,
            max_concurrent_downloads: crate::config::DEFAULT_MAX_CONCURRENT_DOWNLOADS,
            unpack: Some(UnpackOptions::for_current_user()),
            content_trust: None,
            trust: TrustConfig::default(),
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The full reference the image is stored under (`docker.io/library/alpine:latest`).
    pub reference: Reference,
    /// What the name resolved to: an index or a manifest.
    pub resolved: Digest,
    /// The image manifest that was pulled.
    pub manifest: Digest,
    /// Nothing had to be fetched: the store held the image already.
    pub up_to_date: bool,
    /// Blobs (the config and layers) this pull fetched.
    pub blobs_downloaded: usize,
    /// Their size in bytes, in all (a resumed blob counts whole).
    pub bytes_downloaded: u64,
}

/// How long a failed pull waits for its extractions to stop and remove their staging directories
/// (each stops at its next read).
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// Pulls images into a store: the engine behind [`crate::Haul`], for callers that wire the
/// registry client and the store themselves. Share it (behind an `Arc`) rather than make one
/// per pull: its download and extraction slots bound all its pulls together.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use haul::config::Config;
/// use haul::progress::Silent;
/// use haul::pull::{PullOptions, Puller};
/// use haul::registry::{Anonymous, ClientOptions, RegistryClient};
/// use haul::store::Store;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::default();
/// let client =
///     RegistryClient::new(config.registry_settings(), Arc::new(Anonymous), ClientOptions::default())?;
/// let puller = Puller::new(client, Store::open("/tmp/haul-store")?, PullOptions::default());
/// let outcome = puller.pull(&"alpine:3.20".parse()?, Arc::new(Silent)).await?;
/// println!("{} is {}", outcome.reference, outcome.manifest);
/// # Ok(()) }
/// ```
pub struct Puller {
    client: RegistryClient,
    store: Store,
    options: PullOptions,
    /// `max-concurrent-downloads`, shared by every pull this puller runs at once.
    download_slots: Arc<Semaphore>,
    /// Extraction threads, four per core, shared likewise: a big layer's pipeline takes two.
    extract_slots: Arc<Semaphore>,
    /// Set when content trust is on: every pull checks signatures here first.
    trust: Option<TrustCheck>,
}

/// What checks content trust: the verifier, or, in a build without the `trust` feature, the mere
/// fact that trust was asked for, which refuses every pull.
#[cfg(feature = "trust")]
type TrustCheck = Arc<TrustVerifier>;
#[cfg(not(feature = "trust"))]
#[derive(Clone, Copy)]
struct TrustCheck;

#[cfg(feature = "trust")]
fn trust_check(client: &RegistryClient, config: &TrustConfig) -> TrustCheck {
    Arc::new(TrustVerifier::new(
        client.clone(),
        Keyring::from_trust_config(config),
        config.clone(),
    ))
}

#[cfg(not(feature = "trust"))]
fn trust_check(_client: &RegistryClient, _config: &TrustConfig) -> TrustCheck {
    TrustCheck
}

impl Puller {
    /// A puller for `store`. Content trust comes from `options.trust` (the config file's) unless
    /// `options.content_trust` says otherwise: when it is on, every pull this puller makes (by tag,
    /// by digest, every tag, or [`Puller::stored_or_pull`]) checks the image's signatures against
    /// the configured keyring and policy before anything is downloaded.
    #[must_use]
    pub fn new(client: RegistryClient, store: Store, options: PullOptions) -> Puller {
        let download_slots = Arc::new(Semaphore::new(options.max_concurrent_downloads.max(1)));
        // Four extraction threads per core: two pipelines of a big layer (inflating and
        // extracting threads) or four small layers (one thread each). Each thread alternates
        // between the CPU and waits (the download, the page cache, the journal); beside other
        // busy processes, more runnable threads also get the pull a fairer share. 40 small
        // layers beside a CPU hog (bench/run --hog 1): 1.48x the unverified pipeline with one
        // two-thread pipeline per core, 1.13x with two, 0.98x with one thread per small layer
        // and four per core.
        let extract_slots = Arc::new(Semaphore::new(
            4 * std::thread::available_parallelism().map_or(2, |n| n.get()),
        ));
        let trust = trust::enabled(options.content_trust, options.trust.enabled)
            .then(|| trust_check(&client, &options.trust));
        Puller {
            client,
            store,
            options,
            download_slots,
            extract_slots,
            trust,
        }
    }

    /// Checks content trust with `verifier` (its own keyring, policy or clock) instead of the
    /// configured one, whatever the configuration says.
    #[cfg(feature = "trust")]
    #[must_use]
    pub fn with_trust(mut self, verifier: TrustVerifier) -> Puller {
        self.trust = Some(Arc::new(verifier));
        self
    }

    /// Whether pulls check content trust.
    #[must_use]
    pub fn verifies_trust(&self) -> bool {
        self.trust.is_some()
    }

    /// The store images are pulled into.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image `image` names (as a user types it), ready to unpack: the stored one when it
    /// fits the wanted platform, else pulled. With content trust on, the name is checked against
    /// the registry's signatures first, as `docker run` does, and a stored image is used only when
    /// it is the digest that was checked; otherwise that digest is pulled. With trust off, a name
    /// another OCI tool wrote into the store as it is (skopeo's `oci:STORE:mytag`) is used when
    /// docker's normalisation of it (`docker.io/library/mytag:latest`) is not stored.
    ///
    /// # Errors
    ///
    /// `image` is neither a valid reference nor a name in the store, content trust refuses it,
    /// or the pull fails.
    pub async fn stored_or_pull(
        &self,
        image: &str,
        reporter: Arc<dyn Reporter>,
    ) -> Result<RefEntry, PullError> {
        let parsed = image.parse::<Reference>();
        let reference = match parsed {
            Ok(r) => r,
            Err(e) => {
                return match self.foreign_name(image)? {
                    Some(entry) => Ok(entry),
                    None => Err(PullError::Reference(e)),
                };
            }
        };
        let name = reference.to_string();
        let wanted = self.options.platform.clone().unwrap_or_else(Platform::host);
        let usable = |entry: &RefEntry, checked: Option<&Digest>| {
            entry
                .manifest
                .platform
                .as_ref()
                .is_none_or(|p| crate::platform::matches(&wanted, p))
                && checked.is_none_or(|d| &entry.resolved == d)
        };
        let checked = self.check_trust(&reference, None, &reporter).await?;
        if let Some(entry) = self.store.find_ref(&name)?
            && usable(&entry, checked.as_ref())
        {
            return Ok(entry);
        }
        if checked.is_none()
            && let Some(entry) = self.foreign_name(image)?
            && usable(&entry, None)
        {
            return Ok(entry);
        }
        self.pull_checked(&reference, checked.as_ref(), reporter)
            .await?;
        self.store
            .find_ref(&name)?
            .ok_or(PullError::RefVanished { name })
    }

    /// A ref stored under exactly `image`, when that is not what haul itself would name it.
    fn foreign_name(&self, image: &str) -> Result<Option<RefEntry>, PullError> {
        if self.trust.is_some() {
            // A local name has no registry whose signatures could be checked.
            return Ok(None);
        }
        Ok(self.store.find_ref(image)?)
    }

    /// Pulls every image tag of `repository` (a reference without tag or digest), several at once
    /// with shared layers fetched once. Tags that name signatures, attestations or other artifacts
    /// (cosign's `sha256-….sig`, `.att`, `.sbom`, the referrers fallback tags, or any tag whose
    /// manifest is not an image) are skipped with the reason; a tag that fails does not stop the
    /// others. `Err` only when the tag list itself cannot be read.
    ///
    /// # Errors
    ///
    /// The repository does not exist, access is denied, or the registry's tag list cannot be
    /// read or is hostile ([`RegistryError::TagList`]).
    pub async fn pull_all_tags(
        &self,
        repository: &Reference,
        reporter: Arc<dyn Reporter>,
    ) -> Result<AllTags, PullError> {
        let repo = self.client.repository(repository);
        let tags = repo
            .tags()
            .await
            .map_err(|e| map_name_error(repository, e))?;
        let mut result = AllTags::default();
        let mut references = Vec::new();
        for tag in &tags {
            match repository.with_tag(tag) {
                Ok(reference) => references.push(reference),
                // The registry's list is not ours to trust: a name that is not a valid tag is
                // reported (escaped by whoever prints it), never used in a URL.
                Err(_) => {
                    let reason = "not a valid tag name".to_owned();
                    reporter.report(Event::TagSkipped {
                        reference: format!("{}:{tag}", repository.name()),
                        reason: reason.clone(),
                    });
                    result.skipped.push(SkippedTag {
                        tag: tag.clone(),
                        reason,
                    });
                }
            }
        }
        // Several tags at once: a tag whose layers are mostly shared is round trips and fsyncs, not
        // bandwidth, and the puller's download and extraction slots still bound the transfers.
        // Eight measured fastest on tags20 (0.85-0.91 s against 0.98-1.03 s with three, 0.94 s
        // with sixteen). Progress still reads one tag after another.
        let order = InOrder::new(reporter, references.len());
        let mut pulls = futures_util::stream::iter(references.iter().enumerate())
            .map(|(index, reference)| {
                let order = order.clone();
                async move {
                    let part = order.part(index);
                    let result = match artifact_tag(reference.tag_or_default()) {
                        Some(reason) => Err(reason.to_owned()),
                        None => Ok(self.pull(reference, part.clone()).await),
                    };
                    let result = match result {
                        Err(reason) => Err(reason),
                        Ok(Err(PullError::Manifest {
                            source: source @ ManifestError::NotAnImage { .. },
                            ..
                        })) => Err(source.to_string()),
                        Ok(other) => Ok(other),
                    };
                    if let Err(reason) = &result {
                        part.report(Event::TagSkipped {
                            reference: reference.to_string(),
                            reason: reason.clone(),
                        });
                    }
                    order.finish(index);
                    (index, result)
                }
            })
            .buffer_unordered(TAGS_AT_ONCE);
        let mut outcomes: Vec<Option<Result<Result<PullOutcome, PullError>, String>>> =
            references.iter().map(|_| None).collect();
        while let Some((index, result)) = pulls.next().await {
            outcomes[index] = Some(result);
        }
        drop(pulls);
        for (reference, outcome) in references.into_iter().zip(outcomes) {
            match outcome {
                Some(Ok(Ok(pulled))) => result.pulled.push(pulled),
                Some(Ok(Err(error))) => result.failed.push((reference, error)),
                Some(Err(reason)) => result.skipped.push(SkippedTag {
                    tag: reference.tag_or_default().to_owned(),
                    reason,
                }),
                None => {}
            }
        }
        Ok(result)
    }

    /// Pulls the image `reference` names. With content trust on, a tag is resolved and its
    /// digest checked first, and then exactly that digest is pulled, so the tag cannot move
    /// between the check and the pull.
    ///
    /// # Errors
    ///
    /// Any [`PullError`]; [`PullError::kind`] says which kind.
    pub async fn pull(
        &self,
        reference: &Reference,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PullOutcome, PullError> {
        let checked = self.check_trust(reference, None, &reporter).await?;
        self.pull_checked(reference, checked.as_ref(), reporter)
            .await
    }

    /// Pulls exactly `digest` (an index or an image manifest) and stores it under `reference`'s
    /// name. With content trust on, `digest` must carry an accepted signature.
    ///
    /// # Errors
    ///
    /// [`PullError::PinMismatch`] when `reference` names another digest, else as
    /// [`Puller::pull`].
    pub async fn pull_pinned(
        &self,
        reference: &Reference,
        digest: &Digest,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PullOutcome, PullError> {
        if let Some(named) = reference.digest()
            && named != digest
        {
            return Err(PullError::PinMismatch {
                reference: reference.to_string(),
                named: named.clone(),
                pinned: digest.clone(),
            });
        }
        self.check_trust(reference, Some(digest), &reporter).await?;
        self.pull_checked(reference, Some(digest), reporter).await
    }

    /// The one place content trust is decided: `None` when trust is off, else the digest whose
    /// signatures were accepted (what `pinned`, or else the reference, names), reported to the
    /// caller as [`Event::Trusted`].
    async fn check_trust(
        &self,
        reference: &Reference,
        pinned: Option<&Digest>,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<Option<Digest>, PullError> {
        let Some(check) = &self.trust else {
            return Ok(None);
        };
        self.verify_trust(check, reference, pinned, reporter)
            .await
            .map(Some)
    }

    /// Without signature verification compiled in, trust that is on refuses every pull.
    #[cfg(not(feature = "trust"))]
    async fn verify_trust(
        &self,
        _check: &TrustCheck,
        _reference: &Reference,
        _pinned: Option<&Digest>,
        _reporter: &Arc<dyn Reporter>,
    ) -> Result<Digest, PullError> {
        Err(PullError::TrustUnavailable)
    }

    /// Checks the signatures of what `pinned`, or else the reference, names; the accepted digest.
    #[cfg(feature = "trust")]
    async fn verify_trust(
        &self,
        verifier: &TrustCheck,
        reference: &Reference,
        pinned: Option<&Digest>,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<Digest, PullError> {
        let target = match pinned {
            Some(d) => reference.with_digest(d.clone()),
            None => reference.clone(),
        };
        let verdict = verifier.verify(&target).await.map_err(PullError::Trust)?;
        reporter.report(Event::Trusted {
            image: reference.familiar_string(),
            repository: reference.familiar_name(),
            digest: verdict.digest.clone(),
            signers: verdict.signers.iter().map(ToString::to_string).collect(),
            warning: verdict.warning.as_ref().map(ToString::to_string),
            scope: verdict.rule.scope.clone(),
        });
        Ok(verdict.digest)
    }

    /// Pulls `reference`, or exactly `pinned` under its name; trust, if on, has been checked.
    async fn pull_checked(
        &self,
        reference: &Reference,
        pinned: Option<&Digest>,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PullOutcome, PullError> {
        let free_at_start = AtomicU64::new(0);
        match self
            .pull_inner(reference, pinned, reporter, &free_at_start)
            .await
        {
            Err(e) if !matches!(e, PullError::NoSpace { .. }) && space::is_no_space(&e) => {
                // The check before downloading cannot know how big extraction gets; a disk that
                // filled anyway is reported the same way, with what is known.
                Err(PullError::NoSpace {
                    need: free_at_start.load(Ordering::Relaxed),
                    more_than: true,
                    free: space::free_bytes(self.store.root()).unwrap_or(0),
                    root: self.store.root().to_owned(),
                })
            }
            other => other,
        }
    }

    async fn pull_inner(
        &self,
        reference: &Reference,
        pinned: Option<&Digest>,
        reporter: Arc<dyn Reporter>,
        free_at_start: &AtomicU64,
    ) -> Result<PullOutcome, PullError> {
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let _writer = tokio::task::spawn_blocking(move || store.writer_lock())
            .await
            .map_err(PullError::Task)??;
        let repo = self.client.repository(reference);
        if reference.tag().is_none() && reference.digest().is_none() {
            reporter.report(Event::UsingDefaultTag {
                tag: reference.tag_or_default().to_owned(),
            });
        }
        let label = match reference.digest() {
            Some(d) => d.to_string(),
            None => reference.tag_or_default().to_owned(),
        };
        reporter.report(Event::PullingFrom {
            label,
            repository: reference.repository().to_owned(),
        });

        let top = match pinned {
            Some(d) => self.load_document(reference, &repo, d).await?,
            None => self.resolve(reference, &repo).await?,
        };
        let resolved = top.digest.clone();
        tracing::debug!(reference = %reference, %resolved, "resolved");
        let (manifest_doc, platform, index_doc) = self.select_image(reference, &repo, top).await?;
        let manifest = parse_image(reference, &manifest_doc)?;

        let name = reference.to_string();
        let existing = self.store.find_ref(&name)?;
        let ctx = Arc::new(BlobContext {
            repo: repo.clone(),
            store: self.store.clone(),
            reporter: reporter.clone(),
            slots: self.download_slots.clone(),
            unpack: self.options.unpack.clone(),
            extract_slots: self.extract_slots.clone(),
        });

        // The config first: it is small, and unpacking needs its diff_ids to key the layers.
        let mut downloaded = (0usize, 0u64);
        if let Some(n) = ctx
            .fetch(manifest.config.clone(), false, None, &mut None)
            .await?
        {
            downloaded = (1, n);
        }
        let config_bytes = self
            .store
            .read_blob(&manifest.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|source| PullError::Manifest {
            context: format!("image config {}", manifest.config.digest),
            source,
        })?;
        config
            .check_layers(&manifest)
            .map_err(|source| PullError::Manifest {
                context: format!("image {reference}"),
                source,
            })?;
        if platform.is_none() {
            self.check_platform(reference, &config, &reporter)?;
        }
        let layers: Vec<LayerJob> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(cache_keys(&config.rootfs.diff_ids))
            .enumerate()
            .map(|(index, ((desc, diff_id), chain_id))| LayerJob {
                index,
                desc: desc.clone(),
                diff_id: diff_id.clone(),
                chain_id,
            })
            .collect();

        let all_ready =
            layers.iter().all(|l| ctx.is_ready(l)) && self.store.has_blob(&manifest_doc.digest);
        let up_to_date = all_ready
            && existing.as_ref().is_some_and(|e| {
                e.registry_manifest() == &manifest_doc.digest
                    && e.resolved == resolved
                    && self.store.has_blob(&e.manifest.digest)
            });

        // Recorded before the layers are handed over, read after they are done: the extractions
        // this pull made measured every uncompressed byte.
        let size_keys: Vec<(String, u64, Digest, Digest)> = layers
            .iter()
            .map(|l| {
                let d = &l.desc;
                (
                    d.media_type.clone(),
                    d.size,
                    l.diff_id.clone(),
                    l.chain_id.clone(),
                )
            })
            .collect();
        if !up_to_date {
            let (count, bytes) = self.fetch_layers(&ctx, layers, free_at_start).await?;
            downloaded = (downloaded.0 + count, downloaded.1 + bytes);
        }
        let (blobs_downloaded, bytes_downloaded) = downloaded;

        let platform = platform.unwrap_or_else(|| Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config.variant.clone(),
            os_version: None,
            os_features: Vec::new(),
        });
        // OCI tools only read OCI manifests: a Docker one is stored as the registry sent it and
        // as an OCI rewrite, which the ref points at.
        let oci =
            manifest::docker_to_oci(&manifest_doc.bytes).map_err(|source| PullError::Manifest {
                context: format!("{reference}"),
                source,
            })?;
        let (mut descriptor, source, rewrite) = match oci {
            Some(bytes) => {
                let digest = Digest::sha256_of(&bytes);
                let d = Descriptor::new(
                    manifest::media_type::OCI_MANIFEST,
                    digest.clone(),
                    bytes.len() as u64,
                );
                (d, Some(manifest_doc.digest.clone()), Some((digest, bytes)))
            }
            None => (
                Descriptor::new(
                    &manifest_media_type(&manifest, &manifest_doc),
                    manifest_doc.digest.clone(),
                    manifest_doc.bytes.len() as u64,
                ),
                None,
                None,
            ),
        };
        descriptor.platform = Some(platform);
        let store = self.store.clone();
        let previous = existing
            .clone()
            .filter(|e| e.manifest.digest == descriptor.digest);
        let recorded = tokio::task::spawn_blocking(move || {
            sizes::record(&store, &size_keys, previous.as_ref())
        })
        .await
        .map_err(PullError::Task)?;
        if let Some(value) = &recorded {
            descriptor
                .annotations
                .insert(LAYER_SIZES_ANNOTATION.to_owned(), value.clone());
        }
        // An image an older haul pulled gets its sizes recorded by the next pull of it.
        let sizes_missing = existing.as_ref().is_some_and(|e| {
            recorded.is_some()
                && e.manifest.annotations.get(LAYER_SIZES_ANNOTATION) != recorded.as_ref()
        });
        let entry = (!up_to_date || sizes_missing).then(|| RefEntry {
            name,
            manifest: descriptor,
            resolved: resolved.clone(),
            source,
        });
        // Publish, in one step on a blocking thread: manifests after the blobs they reach, the
        // ref last.
        let manifests: Vec<(Digest, Vec<u8>)> = [Some((
            manifest_doc.digest.clone(),
            manifest_doc.bytes.clone(),
        ))]
        .into_iter()
        .chain([index_doc.map(|index| (index.digest, index.bytes)), rewrite])
        .flatten()
        .collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for (digest, bytes) in &manifests {
                store.put_blob(digest, bytes)?;
            }
            entry.map_or(Ok(()), |entry| store.set_ref(&entry))
        })
        .await
        .map_err(PullError::Task)??;

        tracing::debug!(
            reference = %reference,
            %resolved,
            blobs = blobs_downloaded,
            bytes = bytes_downloaded,
            up_to_date,
            elapsed = ?started.elapsed(),
            "pull finished"
        );
        reporter.report(Event::Resolved {
            digest: resolved.clone(),
        });
        reporter.report(Event::Finished {
            up_to_date,
            familiar: reference.familiar_string(),
            reference: reference.to_string(),
        });
        Ok(PullOutcome {
            reference: reference.clone(),
            resolved,
            manifest: manifest_doc.digest,
            up_to_date,
            blobs_downloaded,
            bytes_downloaded,
        })
    }

    /// Downloads the layers the store lacks and, when unpacking, extracts each into the layer
    /// cache as soon as it is committed, while the others are still downloading.
    async fn fetch_layers(
        &self,
        ctx: &Arc<BlobContext>,
        layers: Vec<LayerJob>,
        free_at_start: &AtomicU64,
    ) -> Result<(usize, u64), PullError> {
        let free = self.check_space(ctx, &layers)?;
        free_at_start.store(free, Ordering::Relaxed);
        let reporter = &ctx.reporter;
        let mut seen = HashSet::new();
        // One extraction per cache key: a diff_id listed again is the same extraction.
        let mut keys = HashSet::new();
        let mut jobs = Vec::new();
        let (mut total, mut present, mut missing, mut compressed) = (0u64, 0u64, 0u64, 0u64);
        for layer in layers {
            let first = seen.insert(layer.desc.digest.clone());
            let first_key = keys.insert(layer.chain_id.clone());
            if first {
                total = total.saturating_add(layer.desc.size);
            }
            if first_key {
                compressed = compressed.saturating_add(layer.desc.size);
            }
            if ctx.is_ready(&layer) {
                if first {
                    present = present.saturating_add(layer.desc.size);
                    reporter.report(Event::Layer {
                        digest: layer.desc.digest.clone(),
                        status: LayerStatus::AlreadyExists,
                    });
                }
                continue;
            }
            if self.store.has_blob(&layer.desc.digest) {
                if first {
                    present = present.saturating_add(layer.desc.size);
                }
            } else if first {
                missing = missing.saturating_add(layer.desc.size);
                reporter.report(Event::Layer {
                    digest: layer.desc.digest.clone(),
                    status: LayerStatus::PullingFsLayer,
                });
            }
            // Neither a blob nor an extraction of its own: another job does both.
            if first || first_key {
                jobs.push((layer, first_key));
            }
        }
        reporter.report(Event::Plan {
            layers: seen.len() as u64,
            bytes_total: total,
            bytes_present: present,
        });

        let budget = match &ctx.unpack {
            Some(options) => ImageBudget::with_free(
                options,
                compressed,
                (free != u64::MAX).then_some(free),
                missing,
                self.store.root(),
            ),
            None => ImageBudget::unlimited(),
        };
        let session = Session::new(budget);
        // Biggest first, with their slots handed out here in that order (tasks start in no
        // particular order): the longest extraction is the pull's critical path, and it streams
        // from its download only if it gets an extraction slot as the download starts. In
        // manifest order, a 270 MB layer behind two small ones downloaded without one and was
        // extracted after its download: 2.65 s instead of 1.9 s for the whole pull.
        jobs.sort_by_key(|(layer, _)| std::cmp::Reverse(layer.desc.size));
        let mut tasks = JoinSet::new();
        for (layer, extract) in jobs {
            let head_start = ctx.head_start(&layer, extract);
            let ctx = ctx.clone();
            let session = session.clone();
            tasks.spawn(async move { ctx.layer(layer, extract, session, head_start).await });
        }
        let (mut count, mut bytes) = (0usize, 0u64);
        while let Some(joined) = tasks.join_next().await {
            let failure = match joined {
                Ok(Ok(n)) => {
                    if let Some(n) = n {
                        count += 1;
                        bytes = bytes.saturating_add(n);
                    }
                    continue;
                }
                Ok(Err(e)) => no_space_for_expansion(e),
                Err(e) => PullError::Task(e),
            };
            // Extractions still running stop at their next read, and what this pull extracted
            // goes unless a ref reaches it or someone uses it.
            let published = session.stop();
            if matches!(failure, PullError::NoSpace { .. }) {
                // A layer would not fit, but the downloads under way had their space set aside:
                // they finish, so that once there is room the next pull downloads nothing again.
                while tasks.join_next().await.is_some() {}
            } else {
                // Stop the other downloads before the caller sees the error; their partial
                // files stay for the next pull to resume.
                tasks.shutdown().await;
            }
            let store = self.store.clone();
            let stopping = session.clone();
            let _ = tokio::task::spawn_blocking(move || {
                stopping.wait_idle(STOP_PATIENCE);
                store.layers().take_back(&published)
            })
            .await;
            return Err(failure);
        }
        Ok((count, bytes))
    }
}

impl Puller {
    /// A single image manifest says nothing of its platform; its config does. docker refuses an
    /// image for another platform when one was asked for, and warns when the host's was assumed.
    fn check_platform(
        &self,
        reference: &Reference,
        config: &ImageConfig,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<(), PullError> {
        if config.os.is_empty() || config.architecture.is_empty() {
            return Ok(());
        }
        let actual = Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config.variant.clone(),
            os_version: None,
            os_features: Vec::new(),
        };
        let wanted = self.options.platform.clone().unwrap_or_else(Platform::host);
        if crate::platform::matches(&wanted, &actual) {
            return Ok(());
        }
        if self.options.platform.is_some() {
            return Err(PullError::PlatformMismatch {
                reference: reference.familiar_string(),
                wanted: wanted.to_string(),
                actual: actual.to_string(),
            });
        }
        reporter.report(Event::PlatformMismatch {
            wanted: wanted.to_string(),
            actual: actual.to_string(),
        });
        Ok(())
    }

    /// Refuses a pull the store's filesystem has no room for, before any layer is downloaded:
    /// the missing blobs' sizes plus an estimate for extracting the layers not yet extracted.
    /// Returns the free space it saw.
    fn check_space(&self, ctx: &BlobContext, layers: &[LayerJob]) -> Result<u64, PullError> {
        let mut need = 0u64;
        let mut blobs = HashSet::new();
        let mut chains = HashSet::new();
        for layer in layers {
            if !self.store.has_blob(&layer.desc.digest) && blobs.insert(&layer.desc.digest) {
                need = need.saturating_add(layer.desc.size);
            }
            if let Some(o) = &ctx.unpack
                && chains.insert(&layer.chain_id)
                && self
                    .store
                    .layers()
                    .cached(&layer.chain_id, &o.apply)
                    .is_none()
            {
                need =
                    need.saturating_add(layer.desc.size.saturating_mul(space::EXTRACTION_ESTIMATE));
            }
        }
        let root = self.store.root();
        match space::free_bytes(root) {
            Ok(free) if need > free => Err(PullError::NoSpace {
                need,
                more_than: false,
                free,
                root: root.to_owned(),
            }),
            Ok(free) => Ok(free),
            Err(e) => {
                // A filesystem that cannot report its free space should not block pulls.
                tracing::debug!(root = %root.display(), error = %e, "free space unknown");
                Ok(u64::MAX)
            }
        }
    }
}

/// A layer refused because extracting it would not fit the free space is the pull not fitting:
/// reported as such, with what it was known to need.
fn no_space_for_expansion(e: PullError) -> PullError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(Exceeded::Space { need, free, root }) = err.downcast_ref::<Exceeded>() {
            return PullError::NoSpace {
                need: *need,
                more_than: true,
                free: *free,
                root: root.clone(),
            };
        }
        cur = err.source();
    }
    e
}
