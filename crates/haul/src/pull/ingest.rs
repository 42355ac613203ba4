//! One blob into the store: the store's ingest as the sink of the registry's blob download.
//!
//! Promises:
//! - Content enters the store only through [`crate::store::Ingest`]: hashed as it is written,
//!   verified, fsynced and renamed into `blobs/` at commit. The registry's download
//!   ([`crate::registry::Repository::fetch_blob`]) resumes, retries, moves between mirrors and
//!   refuses bytes past the size; the ingest's digest is the one it asks at the end.
//! - A partial that a killed or failed pull left in `ROOT/ingest` is resumed from its end (the
//!   ingest re-hashes it first); one that is not a prefix of the blob is dropped and the blob
//!   fetched whole.
//! - What a failed download leaves: the partial stays after a registry failure or an interrupted
//!   pull, for the next pull to resume; it goes when its bytes are wrong (verification) or the disk
//!   is full (the space is wanted back).
//! - Progress comes from wrapping the sink ([`super::reporting`]), the extraction's copy likewise
//!   ([`super::tee`]).

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::PullError;
use super::layer::BlobContext;
use super::reporting::Reporting;
use super::tee::{self, Tee, Teed};
use crate::digest::{Digest, VerifyError};
use crate::manifest::Descriptor;
use crate::progress::LayerStatus;
use crate::registry::{BlobError, BlobSink};
use crate::space;
use crate::store::{Ingest, IngestStart, StoreError};

/// The store's ingest of one blob, as a download's sink.
struct IngestSink(Ingest);

impl BlobSink for IngestSink {
    type Error = StoreError;

    fn position(&self) -> u64 {
        self.0.written()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.0.write(&chunk).await
    }

    async fn restart(&mut self) -> Result<(), StoreError> {
        self.0.restart().await
    }

    fn verify(&mut self) -> Result<(), VerifyError> {
        match self.0.check() {
            Ok(()) => Ok(()),
            Err(StoreError::Verify { source, .. }) => Err(source),
            // `check` fails only with `Verify`; anything else is no proof of the content either.
            Err(_) => Err(VerifyError::TooShort {
                expected: self.0.size(),
                actual: self.0.written(),
            }),
        }
    }
}

impl BlobContext {
    /// Downloads one blob into the store. Returns the bytes fetched, or `None` when another
    /// process committed it while we waited. `tee`, when given, gets every chunk for an
    /// extraction, and is marked `complete` once the blob is committed.
    pub(super) async fn fetch(
        &self,
        desc: Descriptor,
        is_layer: bool,
        slot: Option<OwnedSemaphorePermit>,
        tee: &mut Option<Tee>,
    ) -> Result<Option<u64>, PullError> {
        if self.store.has_blob(&desc.digest) {
            return Ok(None);
        }
        // The config is small and needed first; like docker, only layers wait for a slot.
        let _slot = match slot {
            Some(held) => Some(held),
            None if is_layer => Some(self.download_slot(&desc.digest).await?),
            None => None,
        };
        let ingest = match self.store.begin_ingest(&desc.digest, desc.size).await? {
            IngestStart::Present => return Ok(None),
            IngestStart::Writer(w) => w,
        };
        if ingest.resumed() > 0 {
            tracing::debug!(digest = %desc.digest, bytes = ingest.resumed(), "resuming a partial download");
            // The extraction would miss the bytes an earlier attempt fetched: it reads the
            // stored blob instead, once committed.
            tee::abort(tee).await;
        }
        let mut sink = Reporting::new(
            Teed {
                inner: IngestSink(ingest),
                tee: tee.take(),
            },
            is_layer.then(|| self.reporter.clone()),
            desc.digest.clone(),
            desc.size,
        );
        let fetched = self.repo.fetch_blob(&desc, &mut sink).await;
        let Teed {
            inner: IngestSink(ingest),
            tee: teed,
        } = sink.inner;
        *tee = teed;
        if let Err(e) = fetched {
            return Err(failed(ingest, e).await);
        }
        self.layer_event(is_layer, &desc.digest, LayerStatus::VerifyingChecksum);
        // Only content that fails verification is "verification failed"; a commit that cannot
        // write (a full disk, a missing directory) says so.
        ingest
            .commit()
            .await
            .map_err(|source| store_error(&desc.digest, source))?;
        if let Some(t) = tee.as_mut() {
            t.complete = true;
        }
        self.layer_event(is_layer, &desc.digest, LayerStatus::DownloadComplete);
        Ok(Some(desc.size))
    }
}

/// The pull's error for a failed download, after deciding what becomes of its partial.
async fn failed(ingest: Ingest, error: BlobError<StoreError>) -> PullError {
    let blob = ingest.digest().clone();
    match error {
        // The registry may serve the rest later: the partial stays for the next pull.
        BlobError::Registry(e) => PullError::Registry(e),
        BlobError::Verify { digest, source } => {
            ingest.discard().await;
            PullError::LayerVerification {
                source: Box::new(StoreError::Verify {
                    digest: digest.clone(),
                    source,
                }),
                digest,
            }
        }
        BlobError::Sink(source) => {
            if matches!(source, StoreError::Verify { .. }) || space::is_no_space(&source) {
                // Wrong bytes, or a full disk that wants its space back: either way the partial
                // is of no use to the next pull.
                ingest.discard().await;
            }
            store_error(&blob, source)
        }
    }
}

/// Content that fails verification is the layer's failure; anything else is the store's.
fn store_error(digest: &Digest, source: StoreError) -> PullError {
    match source {
        StoreError::Verify { .. } => PullError::LayerVerification {
            digest: digest.clone(),
            source: Box::new(source),
        },
        other => PullError::Store(other),
    }
}
