//! Checking stored images: `haul verify` re-hashes every blob an image reaches and compares its
//! cached layers with their blobs, and `--repair` fetches the bad blobs again and extracts the bad
//! cached layers again.
//!
//! Blobs are verified on the way into the store, so a blob that no longer hashes to its name was
//! damaged on disk (or by hand). For each image: its manifest, the registry's own manifest when the
//! ref points at an OCI rewrite, what the name resolved to (an index), the config and every layer.
//! Each blob is hashed once however many images share it. Verification holds the store's writer
//! lock (shared; in a read-only store the lock file as it is, or none, and cached layers are not
//! compared), so a prune does not sweep blobs from under it; a repair holds it for its whole
//! run, removes the damaged file, downloads the blob from the image's repository through a normal
//! ingest (verified before it becomes visible) and verifies again. An OCI rewrite of a Docker
//! manifest, which no registry has, is made again from the registry's manifest.
//!
//! The layer cache is what unpacks copy from, so a file changed, added or removed there would
//! reach every rootfs while the blobs still verify. Each cached layer whose blob verified is
//! extracted again beside it and the two compared as what an unpack replays (a difference is an
//! [`Alteration`]); it costs an extraction per cached layer and nothing on the pull or unpack
//! path. A damaged entry is reported by chain ID; repair removes it (waiting for readers) and
//! extracts it again from its verified blob. Entries that must be rebuilt anyway (an older
//! format), and entries built as root when verify runs without, are skipped.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;

use futures_util::StreamExt;

use crate::digest::{Digest, Hasher};
use crate::inspect::{self, InspectError};
use crate::manifest::{self, Descriptor, ImageConfig, ImageManifest, Manifest, ManifestError};
use crate::progress::Silent;
use crate::pull::IngestSink;
use crate::reference::{Reference, ReferenceError};
use crate::registry::{RegistryClient, RegistryError, Repository};
use crate::store::{RefEntry, Store, StoreError};
use crate::unpack::budget::ImageBudget;
use crate::unpack::cache::{LayerJob, Session, cache_keys};
use crate::unpack::compare::Alteration;
use crate::unpack::image::{UnpackError, UnpackOptions};

/// Why a verification or repair could not be carried out. Damage it finds is not an error: it is
/// a [`Problem`] in the report.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be locked or read, or a repaired blob could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An image named is not in the store.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// A blob could not be read while hashing it.
    #[error("{path}: {source}")]
    Io {
        /// The blob's file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Repair: the image's name is not a reference to fetch the blob from (a name another tool
    /// stored).
    #[error("{name} is not a reference haul can fetch from: {source}")]
    Reference {
        /// The ref's name.
        name: String,
        /// Why it does not parse.
        #[source]
        source: ReferenceError,
    },
    /// Repair: the registry could not give the blob again.
    #[error("fetching {digest}: {source}")]
    Registry {
        /// The blob.
        digest: Digest,
        /// What the registry or the connection said.
        #[source]
        source: RegistryError,
    },
    /// Repair: the registry's manifest, from which haul's OCI rewrite is made again, does not
    /// parse.
    #[error("remaking {digest}: {source}")]
    Manifest {
        /// The rewrite being made again.
        digest: Digest,
        /// What is wrong with the registry's manifest.
        #[source]
        source: ManifestError,
    },
    /// Repair: rewriting the registry's manifest again gives other bytes than the ref names.
    #[error("the OCI rewrite of {source_manifest} is {actual}, not {expected}")]
    Rewrite {
        /// The registry's manifest.
        source_manifest: Digest,
        /// The rewrite the ref names.
        expected: Digest,
        /// What rewriting gave.
        actual: Digest,
    },
    /// A layer-cache entry could not be locked, compared or extracted again.
    #[error("layer-cache entry {chain_id}: {source}")]
    Cache {
        /// The entry's chain ID.
        chain_id: Digest,
        /// Why.
        #[source]
        source: Box<UnpackError>,
    },
    /// The blocking task that did the work stopped (panicked or was cancelled).
    #[error("the verify task stopped before it finished: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What a blob (or layer-cache entry) is to the image that reaches it: also how repair gets it
/// again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The image manifest the ref points at, as the registry serves it.
    Manifest,
    /// The ref's manifest when it is haul's OCI rewrite of the registry's Docker manifest `source`.
    Rewrite {
        /// The registry's manifest, which the rewrite is made from.
        source: Digest,
    },
    /// The registry's own manifest, of which the ref's manifest is a rewrite.
    SourceManifest,
    /// What the name resolved to: an index.
    Resolved,
    /// The image config.
    Config {
        /// Its size, from the manifest.
        size: u64,
    },
    /// A layer blob.
    Layer {
        /// Its size, from the manifest.
        size: u64,
    },
    /// A layer-cache entry (the problem's digest is its chain ID) of the layer `index`.
    LayerCache {
        /// The layer's position in the manifest, from 0 (the base layer).
        index: usize,
        /// The layer's descriptor, from the manifest.
        layer: Box<Descriptor>,
        /// The layer's diff_id, from the config.
        diff_id: Digest,
    },
}

impl Role {
    /// A short name for reports: `manifest`, `registry manifest`, `index`, `config`, `layer` or
    /// `layer-cache`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Role::Manifest | Role::Rewrite { .. } => "manifest",
            Role::SourceManifest => "registry manifest",
            Role::Resolved => "index",
            Role::Config { .. } => "config",
            Role::Layer { .. } => "layer",
            Role::LayerCache { .. } => "layer-cache",
        }
    }
}

/// What is wrong with a blob or layer-cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The blob's file is not in the store.
    Missing,
    /// The blob's file does not hash to its name.
    Corrupt {
        /// What it hashes to (with the name's algorithm).
        actual: Digest,
    },
    /// A cached layer differs from what its blob extracts to.
    Altered(Alteration),
}

/// One bad blob or cached layer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The blob's name (what the file should hash to), or the cached layer's chain ID.
    pub digest: Digest,
    /// What is wrong with it.
    pub fault: Fault,
    /// What it is to the image.
    pub role: Role,
    /// The first image (full reference) found reaching it.
    pub image: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Full references of the images checked.
    pub images: Vec<String>,
    /// Distinct blobs hashed (a blob several images share counts once).
    pub blobs_checked: usize,
    /// Layer-cache entries compared with their blobs.
    pub layers_checked: usize,
    /// Layer-cache entries not compared because the store is read-only: the comparison extracts
    /// the layer again beside its entry. Their blobs were still hashed.
    pub layers_not_compared: usize,
    /// Every missing or damaged blob and altered cache entry, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing was wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`repair`] did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Every problem found, over all rounds (a repaired manifest can reveal blobs it reaches).
    pub found: Vec<Problem>,
    /// Blobs fetched again and cached layers extracted again (by chain ID).
    pub repaired: Vec<Digest>,
    /// Blobs and cache entries that could not be mended, with why.
    pub failed: Vec<(Digest, VerifyError)>,
    /// The verification after the repair.
    pub after: VerifyReport,
}

/// Verifies `images` (names or image IDs; every ref when empty): every blob they reach is hashed
/// and every cached layer whose blob verified is compared with a fresh extraction (not in a
/// read-only store: see [`VerifyReport::layers_not_compared`]). Changes nothing. Blocks the
/// calling thread (it reads every blob); holds the store's writer lock (shared), so a prune waits;
/// in a read-only store, which nothing here can change, the lock file as it is or none.
///
/// # Errors
///
/// [`VerifyError::Inspect`] when an image named is not in the store; otherwise when the store or
/// a blob cannot be read or a cache entry cannot be compared. Missing and damaged content is
/// reported in [`VerifyReport::problems`], not as an error.
pub fn verify(store: &Store, images: &[String]) -> Result<VerifyReport, VerifyError> {
    let _lock = store.reader_lock()?;
    verify_locked(store, images)
}

fn verify_locked(store: &Store, images: &[String]) -> Result<VerifyReport, VerifyError> {
    let refs = select(store, images)?;
    let mut checker = Checker {
        store,
        seen: HashMap::new(),
        layers_seen: HashSet::new(),
        root: rustix::process::geteuid().is_root(),
        report: VerifyReport {
            images: refs.iter().map(|r| r.name.clone()).collect(),
            ..VerifyReport::default()
        },
    };
    for entry in &refs {
        checker.image(entry)?;
    }
    Ok(checker.report)
}

/// The refs `images` name, each once, in the order named.
fn select(store: &Store, images: &[String]) -> Result<Vec<RefEntry>, VerifyError> {
    if images.is_empty() {
        return Ok(store.refs()?);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for image in images {
        for entry in inspect::find(store, image)?.matched {
            if seen.insert(entry.name.clone()) {
                out.push(entry);
            }
        }
    }
    Ok(out)
}

struct Checker<'a> {
    store: &'a Store,
    /// Digest → whether it verified.
    seen: HashMap<Digest, bool>,
    /// Cache keys already compared.
    layers_seen: HashSet<Digest>,
    /// Whether entries built as root can be extracted again here.
    root: bool,
    report: VerifyReport,
}

impl Checker<'_> {
    fn image(&mut self, entry: &RefEntry) -> Result<(), VerifyError> {
        let name = &entry.name;
        let manifest_role = match &entry.source {
            Some(source) => Role::Rewrite {
                source: source.clone(),
            },
            None => Role::Manifest,
        };
        let manifest_ok = self.check(&entry.manifest.digest, manifest_role, name)?;
        let source_ok = match &entry.source {
            Some(source) => self.check(source, Role::SourceManifest, name)?,
            None => false,
        };
        if entry.resolved != entry.manifest.digest && Some(&entry.resolved) != entry.source.as_ref()
        {
            self.check(&entry.resolved, Role::Resolved, name)?;
        }
        // Config and layers from whichever manifest is intact: the rewrite keeps both.
        let document = if manifest_ok {
            Some((
                &entry.manifest.digest,
                Some(entry.manifest.media_type.as_str()),
            ))
        } else if source_ok {
            entry.source.as_ref().map(|s| (s, None))
        } else {
            None
        };
        let Some((digest, media_type)) = document else {
            return Ok(());
        };
        let bytes = self
            .store
            .read_blob(digest, manifest::MAX_MANIFEST_BYTES as u64)?;
        let image = match manifest::parse(media_type, &bytes) {
            Ok(Manifest::Image(m)) => m,
            // Intact bytes that are not an image manifest: nothing more to check from here.
            Ok(Manifest::Index(_)) | Err(_) => {
                tracing::warn!(image = %name, %digest, "the manifest does not describe an image");
                return Ok(());
            }
        };
        let config_ok = self.check(
            &image.config.digest,
            Role::Config {
                size: image.config.size,
            },
            name,
        )?;
        for layer in &image.layers {
            self.check(&layer.digest, Role::Layer { size: layer.size }, name)?;
        }
        if config_ok {
            self.cached_layers(&image, name)?;
        }
        Ok(())
    }

    /// Compares each cached layer of `image` whose blob verified with a fresh extraction of it.
    fn cached_layers(&mut self, image: &ImageManifest, name: &str) -> Result<(), VerifyError> {
        let bytes = self
            .store
            .read_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let Ok(config) = ImageConfig::parse(&bytes) else {
            return Ok(());
        };
        if config.check_layers(image).is_err() {
            return Ok(());
        }
        let diff_ids = &config.rootfs.diff_ids;
        let keys = cache_keys(diff_ids);
        for (index, ((layer, diff_id), key)) in
            image.layers.iter().zip(diff_ids).zip(&keys).enumerate()
        {
            if self.seen.get(&layer.digest) != Some(&true) || !self.layers_seen.insert(key.clone())
            {
                continue;
            }
            let cache_error = |e: UnpackError| VerifyError::Cache {
                chain_id: key.clone(),
                source: Box::new(e),
            };
            let layers = self.store.layers();
            let _reading = layers.read_lock(key).map_err(cache_error)?;
            let Some(cached) = layers.entry(key) else {
                continue;
            };
            if !cached.meta.privileged && cached.meta.format < 2 {
                tracing::debug!(%key, "an older cache entry, rebuilt when next used: not compared");
                continue;
            }
            if cached.meta.privileged && !self.root {
                tracing::debug!(%key, "a cache entry built as root: not compared without root");
                continue;
            }
            if self.store.is_read_only() {
                self.report.layers_not_compared += 1;
                continue;
            }
            self.report.layers_checked += 1;
            let job = LayerJob {
                index,
                layer,
                diff_id,
                chain_id: key,
            };
            let found = layers.check(&job, &cached).map_err(cache_error)?;
            if let Some(alteration) = found {
                self.report.problems.push(Problem {
                    digest: key.clone(),
                    fault: Fault::Altered(alteration),
                    role: Role::LayerCache {
                        index,
                        layer: Box::new(layer.clone()),
                        diff_id: diff_id.clone(),
                    },
                    image: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Hashes one blob (once per run) and records a problem when it is missing or damaged.
    fn check(&mut self, digest: &Digest, role: Role, image: &str) -> Result<bool, VerifyError> {
        if let Some(&ok) = self.seen.get(digest) {
            return Ok(ok);
        }
        self.report.blobs_checked += 1;
        let fault = match hash_file(self.store, digest)? {
            None => Some(Fault::Missing),
            Some(actual) if &actual != digest => Some(Fault::Corrupt { actual }),
            Some(_) => None,
        };
        let ok = fault.is_none();
        if let Some(fault) = fault {
            self.report.problems.push(Problem {
                digest: digest.clone(),
                fault,
                role,
                image: image.to_owned(),
            });
        }
        self.seen.insert(digest.clone(), ok);
        Ok(ok)
    }
}

/// What the stored file for `digest` hashes to, with the same algorithm; `None` when absent.
fn hash_file(store: &Store, digest: &Digest) -> Result<Option<Digest>, VerifyError> {
    let path = store.blob_path(digest);
    let io_err = |source| VerifyError::Io {
        path: path.clone(),
        source,
    };
    let mut file = match store.open_blob(digest) {
        Ok(f) => f,
        Err(StoreError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hasher.finish()))
}

/// Verifies `images`, fetches every bad blob again from the image's repository, and verifies
/// again, until nothing more can be mended. Damaged files are removed first; fetched blobs enter
/// the store through an ingest that verifies them; altered cache entries are extracted again
/// from their verified blobs. Holds the store's writer lock throughout.
///
/// # Errors
///
/// As [`verify`] for the verification rounds. A blob that cannot be mended is not an error: it is
/// in [`RepairReport::failed`] with why, and still in [`RepairReport::after`].
pub async fn repair(
    store: &Store,
    client: &RegistryClient,
    images: &[String],
) -> Result<RepairReport, VerifyError> {
    const MAX_ROUNDS: usize = 4;
    let s = store.clone();
    let _lock = tokio::task::spawn_blocking(move || s.writer_lock())
        .await
        .map_err(VerifyError::Task)??;
    let mut out = RepairReport::default();
    let mut attempted = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let report = verify_in_background(store, images).await?;
        let fresh: Vec<Problem> = report
            .problems
            .into_iter()
            .filter(|p| attempted.insert(p.digest.clone()))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for problem in fresh {
            match mend(store, client, &problem).await {
                Ok(()) => out.repaired.push(problem.digest.clone()),
                Err(e) => out.failed.push((problem.digest.clone(), e)),
            }
            out.found.push(problem);
        }
    }
    out.after = verify_in_background(store, images).await?;
    Ok(out)
}

async fn verify_in_background(
    store: &Store,
    images: &[String],
) -> Result<VerifyReport, VerifyError> {
    let store = store.clone();
    let images = images.to_vec();
    tokio::task::spawn_blocking(move || verify_locked(&store, &images))
        .await
        .map_err(VerifyError::Task)?
}

/// Replaces one bad blob with the registry's copy.
async fn mend(
    store: &Store,
    client: &RegistryClient,
    problem: &Problem,
) -> Result<(), VerifyError> {
    let digest = &problem.digest;
    if let Role::LayerCache {
        index,
        layer,
        diff_id,
    } = &problem.role
    {
        return extract_again(store, digest, *index, layer, diff_id).await;
    }
    if matches!(problem.fault, Fault::Corrupt { .. }) {
        store.remove_blob(digest)?;
    }
    let reference: Reference = problem
        .image
        .parse()
        .map_err(|source| VerifyError::Reference {
            name: problem.image.clone(),
            source,
        })?;
    let repo = client.repository(&reference);
    let registry_error = |source| VerifyError::Registry {
        digest: digest.clone(),
        source,
    };
    match &problem.role {
        Role::Manifest | Role::SourceManifest | Role::Resolved => {
            let fetched = repo
                .get_manifest(&digest.to_string())
                .await
                .map_err(registry_error)?;
            store.put_blob(digest, &fetched.bytes)?;
        }
        Role::Rewrite { source } => {
            let bytes = match store.read_blob(source, manifest::MAX_MANIFEST_BYTES as u64) {
                Ok(b) if &source.same_algorithm_of(&b) == source => b,
                _ => {
                    repo.get_manifest(&source.to_string())
                        .await
                        .map_err(registry_error)?
                        .bytes
                }
            };
            let rewrite = manifest::docker_to_oci(&bytes)
                .map_err(|e| VerifyError::Manifest {
                    digest: digest.clone(),
                    source: e,
                })?
                .unwrap_or(bytes);
            let actual = digest.same_algorithm_of(&rewrite);
            if &actual != digest {
                return Err(VerifyError::Rewrite {
                    source_manifest: source.clone(),
                    expected: digest.clone(),
                    actual,
                });
            }
            store.put_blob(digest, &rewrite)?;
        }
        Role::Config { size } | Role::Layer { size } => {
            fetch_blob(store, &repo, digest, *size).await?;
        }
        // Mended above, from the store alone.
        Role::LayerCache { .. } => {}
    }
    Ok(())
}

/// Replaces a damaged layer-cache entry with a fresh extraction of its (verified) blob.
async fn extract_again(
    store: &Store,
    chain_id: &Digest,
    index: usize,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<(), VerifyError> {
    let (store, chain_id, layer, diff_id) = (
        store.clone(),
        chain_id.clone(),
        layer.clone(),
        diff_id.clone(),
    );
    let key = chain_id.clone();
    tokio::task::spawn_blocking(move || {
        store.layers().remove(&chain_id)?;
        let options = UnpackOptions::for_current_user();
        let session = Session::new(ImageBudget::new(&options, layer.size, store.root(), 0));
        let job = LayerJob {
            index,
            layer: &layer,
            diff_id: &diff_id,
            chain_id: &chain_id,
        };
        store.layers().extract(&job, &options, &Silent, &session)?;
        Ok::<(), UnpackError>(())
    })
    .await
    .map_err(VerifyError::Task)?
    .map_err(|e| VerifyError::Cache {
        chain_id: key,
        source: Box::new(e),
    })
}

async fn fetch_blob(
    store: &Store,
    repo: &Repository,
    digest: &Digest,
    size: u64,
) -> Result<(), VerifyError> {
    let Some(mut ingest) = IngestSink::begin(store, digest, size).await? else {
        return Ok(());
    };
    let registry_error = |source| VerifyError::Registry {
        digest: digest.clone(),
        source,
    };
    let response = repo.blob(digest, 0).await.map_err(registry_error)?;
    let host = response.url().host_str().unwrap_or_default().to_owned();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| registry_error(crate::registry::error::from_reqwest(&host, &e)))?;
        ingest.write(chunk).await?;
    }
    ingest.commit().await?;
    Ok(())
}
