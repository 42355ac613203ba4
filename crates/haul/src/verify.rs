//! Checking stored images: `haul verify` re-hashes every blob an image reaches, and `--repair`
//! fetches the bad ones again.
//!
//! Blobs are verified on the way into the store, so a blob that no longer hashes to its name was
//! damaged on disk (or by hand). For each image: its manifest, the registry's own manifest when the
//! ref points at an OCI rewrite, what the name resolved to (an index), the config and every layer.
//! Each blob is hashed once however many images share it. Verification holds the store's writer
//! lock (shared), so a prune does not sweep blobs from under it; a repair holds it for its whole
//! run, removes the damaged file, downloads the blob from the image's repository through a normal
//! ingest (verified before it becomes visible) and verifies again. An OCI rewrite of a Docker
//! manifest, which no registry has, is made again from the registry's manifest.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;

use futures_util::StreamExt;

use crate::digest::{Digest, Hasher};
use crate::inspect::{self, InspectError};
use crate::manifest::{self, Manifest, ManifestError};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{RegistryClient, RegistryError, Repository};
use crate::store::{IngestStart, RefEntry, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name} is not a reference haul can fetch from: {source}")]
    Reference {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("fetching {digest}: {source}")]
    Registry {
        digest: Digest,
        #[source]
        source: RegistryError,
    },
    #[error("remaking {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("the OCI rewrite of {source_manifest} is {actual}, not {expected}")]
    Rewrite {
        source_manifest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("the verify task failed: {0}")]
    Task(String),
}

/// What a blob is to the image that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The image manifest the ref points at, as the registry serves it.
    Manifest,
    /// The ref's manifest when it is haul's OCI rewrite of the registry's Docker manifest `source`.
    Rewrite {
        source: Digest,
    },
    /// The registry's own manifest, of which the ref's manifest is a rewrite.
    SourceManifest,
    /// What the name resolved to: an index.
    Resolved,
    Config {
        size: u64,
    },
    Layer {
        size: u64,
    },
}

impl Role {
    pub fn label(&self) -> &'static str {
        match self {
            Role::Manifest | Role::Rewrite { .. } => "manifest",
            Role::SourceManifest => "registry manifest",
            Role::Resolved => "index",
            Role::Config { .. } => "config",
            Role::Layer { .. } => "layer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Missing,
    Corrupt { actual: Digest },
}

/// One bad blob.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The name, and what the file should hash to.
    pub digest: Digest,
    pub fault: Fault,
    pub role: Role,
    /// The first image (full reference) found reaching it.
    pub image: String,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Full references of the images checked.
    pub images: Vec<String>,
    pub blobs_checked: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct RepairReport {
    /// Every problem found, over all rounds (a repaired manifest can reveal blobs it reaches).
    pub found: Vec<Problem>,
    pub repaired: Vec<Digest>,
    pub failed: Vec<(Digest, VerifyError)>,
    /// The verification after the repair.
    pub after: VerifyReport,
}

/// Verifies `images` (names or image IDs; every ref when empty).
pub fn verify(store: &Store, images: &[String]) -> Result<VerifyReport, VerifyError> {
    let _lock = store.writer_lock()?;
    verify_locked(store, images)
}

fn verify_locked(store: &Store, images: &[String]) -> Result<VerifyReport, VerifyError> {
    let refs = select(store, images)?;
    let mut checker = Checker {
        store,
        seen: HashMap::new(),
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
        self.check(
            &image.config.digest,
            Role::Config {
                size: image.config.size,
            },
            name,
        )?;
        for layer in &image.layers {
            self.check(&layer.digest, Role::Layer { size: layer.size }, name)?;
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
/// again, until nothing more can be mended.
pub async fn repair(
    store: &Store,
    client: &RegistryClient,
    images: &[String],
) -> Result<RepairReport, VerifyError> {
    const MAX_ROUNDS: usize = 4;
    let s = store.clone();
    let _lock = tokio::task::spawn_blocking(move || s.writer_lock())
        .await
        .map_err(|e| VerifyError::Task(e.to_string()))??;
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
        .map_err(|e| VerifyError::Task(e.to_string()))?
}

/// Replaces one bad blob with the registry's copy.
async fn mend(
    store: &Store,
    client: &RegistryClient,
    problem: &Problem,
) -> Result<(), VerifyError> {
    let digest = &problem.digest;
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
    }
    Ok(())
}

async fn fetch_blob(
    store: &Store,
    repo: &Repository,
    digest: &Digest,
    size: u64,
) -> Result<(), VerifyError> {
    let mut ingest = match store.begin_ingest(digest, size).await? {
        IngestStart::Present => return Ok(()),
        IngestStart::Writer(w) => w,
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
        ingest.write(&chunk).await?;
    }
    ingest.commit().await?;
    Ok(())
}
