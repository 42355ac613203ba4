//! One layer of a pull: its download (a slot of `max-concurrent-downloads`) and, when unpacking,
//! its extraction into the layer cache.
//!
//! Promises:
//! - A layer is extracted from the bytes as they arrive when an extraction slot is free as its
//!   download starts, from the stored blob otherwise; either way its cache entry is published
//!   only after the blob itself is verified and committed.
//! - A layer's cache lock is taken before its blob's ingest lock, never after (see
//!   [`crate::unpack::cache`]): pulls sharing layers never deadlock.
//! - At most two extractions per core run at once, and a layer waiting for a download slot
//!   reports `Waiting`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PullError;
use super::tee;
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::progress::{Event, LayerStatus, Reporter};
use crate::registry::Repository;
use crate::store::Store;
use crate::unpack::cache::{Extracted, LayerClaim, LayerJob as CacheJob, Session};
use crate::unpack::image::{UnpackError, UnpackOptions};
use crate::unpack::stream::threads_for;

/// One layer of the image being pulled, with what the cache keys it by.
pub(super) struct LayerJob {
    pub(super) index: usize,
    pub(super) desc: Descriptor,
    pub(super) diff_id: Digest,
    pub(super) chain_id: Digest,
}

impl LayerJob {
    fn as_cache_job(&self) -> CacheJob<'_> {
        CacheJob {
            index: self.index,
            layer: &self.desc,
            diff_id: &self.diff_id,
            chain_id: &self.chain_id,
        }
    }
}

/// What every blob of one pull needs: where it comes from, where it goes, who hears of it.
pub(super) struct BlobContext {
    pub(super) repo: Repository,
    pub(super) store: Store,
    pub(super) reporter: Arc<dyn Reporter>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) unpack: Option<UnpackOptions>,
    /// Extraction threads, four per core at most: a layer takes [`threads_for`] its size.
    pub(super) extract_slots: Arc<Semaphore>,
}

/// Slots a layer got before its task started ([`BlobContext::head_start`]).
#[derive(Default)]
pub(super) struct HeadStart {
    download: Option<OwnedSemaphorePermit>,
    extraction: Option<OwnedSemaphorePermit>,
}

impl BlobContext {
    /// The slots free now for `layer`: a download slot when its blob is missing and, when it
    /// is to be extracted, an extraction slot with it. Called for the layers in the order they
    /// should start (biggest first), so the order holds whatever order their tasks run in.
    pub(super) fn head_start(&self, layer: &LayerJob, extract: bool) -> HeadStart {
        if self.store.has_blob(&layer.desc.digest) {
            return HeadStart::default();
        }
        let Ok(download) = self.slots.clone().try_acquire_owned() else {
            return HeadStart::default();
        };
        let extraction = (extract && self.unpack.is_some())
            .then(|| self.try_extraction_slot(layer))
            .flatten();
        HeadStart {
            download: Some(download),
            extraction,
        }
    }

    /// The extraction threads `layer` takes, when they are free now.
    fn try_extraction_slot(&self, layer: &LayerJob) -> Option<OwnedSemaphorePermit> {
        self.extract_slots
            .clone()
            .try_acquire_many_owned(threads_for(layer.desc.size))
            .ok()
    }

    /// Whether a layer needs nothing: its blob is stored and, when unpacking, it is extracted.
    pub(super) fn is_ready(&self, layer: &LayerJob) -> bool {
        self.store.has_blob(&layer.desc.digest)
            && self.unpack.as_ref().is_none_or(|o| {
                self.store
                    .layers()
                    .cached(&layer.chain_id, &o.apply)
                    .is_some()
            })
    }

    /// Downloads a layer if needed and, when unpacking, extracts it into the layer cache: from the
    /// bytes as they arrive when an extraction slot is free as the download starts, from the
    /// stored blob otherwise. The cache entry is published only after the blob itself is verified
    /// and committed.
    ///
    /// `extract` is false for a layer whose extraction another job of the pull makes (the same
    /// diff_id listed again): only its blob is fetched.
    pub(super) async fn layer(
        self: Arc<Self>,
        layer: LayerJob,
        extract: bool,
        session: Session,
        head_start: HeadStart,
    ) -> Result<Option<u64>, PullError> {
        let digest = layer.desc.digest.clone();
        let extract_error = extract_error(&digest);
        let options = match self.unpack.clone() {
            Some(o)
                if extract
                    && self
                        .store
                        .layers()
                        .cached(&layer.chain_id, &o.apply)
                        .is_none() =>
            {
                o
            }
            // Not unpacking, extracted already or by another job: only the blob is missing.
            _ => {
                // Not extracting here: the slot goes back at once.
                drop(head_start.extraction);
                let downloaded = self
                    .fetch(layer.desc.clone(), true, head_start.download, &mut None)
                    .await?;
                self.layer_event(true, &digest, LayerStatus::PullComplete);
                return Ok(downloaded);
            }
        };
        let layer = Arc::new(layer);
        let mut downloaded = None;
        let mut extracted = false;
        let mut reserved = head_start.extraction;
        if !self.store.has_blob(&digest) {
            let slot = match head_start.download {
                Some(slot) => slot,
                None => self.download_slot(&digest).await?,
            };
            // Extract as the bytes arrive when an extraction slot is free now. Otherwise download
            // at full speed and extract from the stored blob once one frees up: a small layer
            // downloads long before its extraction ends, so a 40-layer image would otherwise run
            // 40 pipelines (threads and buffers) at once.
            //
            // Extracting as it arrives needs the layer's lock before the blob's: a pull holding
            // the blob's lock must never wait for a layer's (another pull may hold that one and
            // wait for this blob). When someone else holds the layer, download alone; the
            // extraction below waits for it with no blob lock held.
            let extracting = reserved.take().or_else(|| self.try_extraction_slot(&layer));
            let claim = match extracting {
                Some(extracting) => {
                    let store = self.store.clone();
                    let chain_id = layer.chain_id.clone();
                    tokio::task::spawn_blocking(move || store.layers().try_claim(&chain_id))
                        .await
                        .map_err(PullError::Task)?
                        .map_err(extract_error)?
                        .map(|claim| (extracting, claim))
                }
                None => None,
            };
            match claim {
                Some((_extracting, claim)) => {
                    (downloaded, extracted) = self
                        .clone()
                        .fetch_and_extract(&layer, slot, claim, &options, &session)
                        .await?;
                }
                None => {
                    downloaded = self
                        .fetch(layer.desc.clone(), true, Some(slot), &mut None)
                        .await?;
                }
            }
        }
        if !extracted {
            let _slot = match reserved.take() {
                Some(slot) => slot,
                None => self
                    .extract_slots
                    .clone()
                    .acquire_many_owned(threads_for(layer.desc.size))
                    .await
                    .map_err(|_| PullError::Stopped)?,
            };
            let ctx = self.clone();
            let job = layer.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || {
                ctx.store.layers().extract(
                    &job.as_cache_job(),
                    &options,
                    ctx.reporter.as_ref(),
                    &session,
                )
            })
            .await
            .map_err(PullError::Task)?
            .map_err(extract_error)
            .inspect(|cached| {
                tracing::debug!(%digest, uncompressed = cached.meta.uncompressed_bytes, elapsed = ?started.elapsed(), "layer extracted from the stored blob");
            })?;
        }
        self.layer_event(true, &digest, LayerStatus::PullComplete);
        Ok(downloaded)
    }

    /// Downloads a layer and extracts it from the bytes as they arrive. Returns the bytes
    /// downloaded and whether the extraction counts: only a stream that carried the whole
    /// committed blob does.
    async fn fetch_and_extract(
        self: Arc<Self>,
        layer: &Arc<LayerJob>,
        slot: OwnedSemaphorePermit,
        claim: LayerClaim,
        options: &UnpackOptions,
        session: &Session,
    ) -> Result<(Option<u64>, bool), PullError> {
        let digest = &layer.desc.digest;
        let extract_error = extract_error(digest);
        let started = std::time::Instant::now();
        let (copy, source) = tee::tee();
        let mut tee = Some(copy);
        let ctx = self.clone();
        let job = layer.clone();
        let opts = options.clone();
        let extracting = session.clone();
        let extraction = tokio::task::spawn_blocking(move || {
            let job = job.as_cache_job();
            ctx.store.layers().extract_claimed(
                claim,
                &job,
                &opts,
                None,
                &extracting,
                Box::new(source),
            )
        });
        let fetched = self
            .fetch(layer.desc.clone(), true, Some(slot), &mut tee)
            .await;
        let complete = tee.as_ref().is_some_and(|t| t.complete);
        if complete {
            // The extraction has had every byte but the few still in flight: docker's
            // `Extracting` line, with the wait for the end of it.
            self.layer_event(
                true,
                digest,
                LayerStatus::Extracting {
                    current: layer.desc.size,
                    total: layer.desc.size,
                },
            );
        }
        // Whatever happened, the extraction gets the end of its stream now.
        if let Some(mut t) = tee.take() {
            t.finish().await;
        }
        let result = extraction.await.map_err(PullError::Task)?;
        let downloaded = fetched?;
        // Only a stream that carried the whole committed blob counts; after a restart or a
        // blob committed by another process, extract from the stored blob instead.
        if !complete {
            return Ok((downloaded, false));
        }
        tracing::debug!(%digest, elapsed = ?started.elapsed(), "layer downloaded and extracted as it arrived");
        match result.map_err(extract_error)? {
            Extracted::Cached(_) => {}
            Extracted::Pending(pending) => {
                let session = session.clone();
                tokio::task::spawn_blocking(move || session.publish(pending))
                    .await
                    .map_err(PullError::Task)?
                    .map_err(extract_error)?;
            }
        }
        Ok((downloaded, true))
    }

    /// One of the `max-concurrent-downloads` slots; the layer shows `Waiting` until it has one.
    pub(super) async fn download_slot(
        &self,
        digest: &Digest,
    ) -> Result<OwnedSemaphorePermit, PullError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => {
                self.layer_event(true, digest, LayerStatus::Waiting);
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| PullError::Stopped)
            }
        }
    }

    pub(super) fn layer_event(&self, is_layer: bool, digest: &Digest, status: LayerStatus) {
        if is_layer {
            self.reporter.report(Event::Layer {
                digest: digest.clone(),
                status,
            });
        }
    }
}

/// Maps a failed extraction of the layer `digest` to the pull's error.
fn extract_error(digest: &Digest) -> impl Fn(UnpackError) -> PullError + Copy + '_ {
    move |source| PullError::Extract {
        digest: digest.clone(),
        source: Box::new(source),
    }
}
