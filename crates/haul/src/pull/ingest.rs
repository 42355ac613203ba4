//! One blob into the store: the store's ingest as the sink of the registry's blob download.
//!
//! Promises:
//! - Content enters the store only through [`crate::store::Ingest`]: hashed as it is written,
//!   verified, fsynced and renamed into `blobs/` at commit. The registry's download
//!   ([`crate::registry::Repository::fetch_blob`]) resumes, retries, moves between mirrors and
//!   refuses bytes past the size; the ingest's digest is the one it asks at the end.
//! - The ingest blocks (it is the store's); the download does not wait on it chunk by chunk.
//!   Small chunks are copied into batches of [`BATCH_BYTES`], bigger ones go as they are, to a
//!   blocking thread that hashes and writes them while the next batch fills: one batch in flight
//!   per blob, so a slow disk slows the download rather than filling memory.
//! - A pull killed with `kill -9` loses to the next one at most the batch filling (under
//!   [`BATCH_BYTES`], 256 KiB) and, only in the instant a batch is being handed over, that one
//!   (a chunk that went as it is: one network read, a few hundred KiB):
//!   every batch before them has been `write()`n to the partial, and the page cache keeps it
//!   whatever becomes of the process (only a machine crash needs an fsync, which commit does).
//! - A partial that a killed or failed pull left in `ROOT/ingest` is resumed from its end (the
//!   ingest re-hashes it first); one that is not a prefix of the blob is dropped and the blob
//!   fetched whole.
//! - What a failed download leaves: the partial stays after a registry failure or an interrupted
//!   pull, for the next pull to resume; it goes when its bytes are wrong (verification) or the disk
//!   is full (the space is wanted back).
//! - Progress comes from wrapping the sink ([`super::reporting`]), the extraction's copy likewise
//!   ([`super::tee`]).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::PullError;
use super::layer::BlobContext;
use super::reporting::Reporting;
use super::tee::{self, Tee, Teed};
use crate::digest::{Digest, VerifyError};
use crate::manifest::Descriptor;
use crate::progress::LayerStatus;
use crate::registry::{BlobError, BlobSink, RangedTarget, SharedTarget};
use crate::space;
use crate::store::{Ingest, IngestStart, RangedPartial, Store, StoreError};

/// Bytes of a download handed to a blocking thread at once. As big as the ingest's own buffer,
/// which a batch this size bypasses: a batch costs one copy, one hand-over and one write. Small
/// enough that a killed pull refetches little (256 KiB: four times the hand-overs of 1 MiB
/// batches, within the run-to-run noise of a 330 MB pull on two cores).
const BATCH_BYTES: usize = Ingest::BUFFER;

/// What [`IngestSink::hand_over`] writes: a batch of small chunks, or a big chunk as it came.
enum Handed {
    Batch(Vec<u8>),
    Chunk(Bytes),
}

/// A batch written on a blocking thread: it gives back the ingest and the batch's buffer, to fill
/// again.
type InFlight = JoinHandle<(Ingest, Vec<u8>, Result<(), StoreError>)>;

/// The store's ingest of one blob, fed from async code: small chunks are copied into a batch, and
/// each batch (or a chunk of a batch's size or more, as it is) is hashed and written on a blocking
/// thread while the next one fills. Two buffers of [`BATCH_BYTES`] per blob and at most one
/// download chunk held until it is written: a copied chunk's buffer is the download's again at
/// once.
pub(crate) struct IngestSink {
    /// The ingest, while no batch is in flight.
    idle: Option<Ingest>,
    /// The batch being written, which holds the ingest until it is done.
    in_flight: Option<InFlight>,
    /// The batch filling.
    batch: Vec<u8>,
    /// The buffer the last batch written gave back, to fill next.
    spare: Vec<u8>,
    /// Bytes taken: written by the ingest, in flight and batched.
    position: u64,
    digest: Digest,
    size: u64,
    resumed: u64,
    /// The store's ingest directory, for errors of the blocking threads.
    ingest_dir: PathBuf,
}

impl IngestSink {
    /// Starts ingesting `digest` (waiting for another writer of it, resuming a partial) on a
    /// blocking thread. `None` when the store has the blob, or it arrived while waiting.
    pub(crate) async fn begin(
        store: &Store,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<IngestSink>, StoreError> {
        let ingest_dir = store.root().join("ingest");
        let (s, d) = (store.clone(), digest.clone());
        let start = tokio::task::spawn_blocking(move || s.begin_ingest(&d, size))
            .await
            .map_err(|e| StoreError::task(&ingest_dir, e))??;
        let ingest = match start {
            IngestStart::Present => return Ok(None),
            IngestStart::Writer(ingest) => ingest,
        };
        Ok(Some(IngestSink {
            position: ingest.written(),
            digest: digest.clone(),
            size,
            resumed: ingest.resumed(),
            idle: Some(ingest),
            in_flight: None,
            batch: Vec::new(),
            spare: Vec::new(),
            ingest_dir,
        }))
    }

    /// The blob being written.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes an earlier attempt left that this ingest continues from.
    pub(crate) fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Takes the next bytes of the blob. Bytes past its size are refused at once; the others are
    /// written in the background, and a failure to write them is returned by a later call.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let end = self.position.saturating_add(chunk.len() as u64);
        if end > self.size {
            return Err(StoreError::Verify {
                digest: self.digest.clone(),
                source: VerifyError::TooLong {
                    expected: self.size,
                },
            });
        }
        self.position = end;
        if self.batch.is_empty() && chunk.len() >= BATCH_BYTES {
            // A chunk as big as a batch goes as it is: a fast connection's chunks are, and
            // copying them cost 0.8% of a pull's CPU.
            self.hand_over(Handed::Chunk(chunk)).await?;
        } else {
            if self.batch.capacity() == 0 {
                // Never more than the blob: a small config gets a small buffer.
                let left = usize::try_from(self.size - self.position).unwrap_or(usize::MAX);
                self.batch
                    .reserve_exact(BATCH_BYTES.min(left.saturating_add(chunk.len())));
            }
            self.batch.extend_from_slice(&chunk);
            if self.batch.len() >= BATCH_BYTES || self.position == self.size {
                self.send_batch().await?;
            }
        }
        if self.position == self.size {
            // Every byte is here: the ingest has hashed them all before anyone asks.
            self.settle().await?;
        }
        Ok(())
    }

    /// The partial file for a download over several connections ([`Ingest::ranged`]).
    pub(crate) async fn ranged(&mut self) -> Result<SharedTarget<StoreError>, StoreError> {
        // A stream split midway may leave a batch filling: the ranges start after it.
        if !self.batch.is_empty() {
            self.send_batch().await?;
        }
        let mut ingest = self.take_idle().await?;
        let (ingest, result) = tokio::task::spawn_blocking(move || {
            let result = ingest.ranged();
            (ingest, result)
        })
        .await
        .map_err(|e| StoreError::task(&self.ingest_dir, e))?;
        self.idle = Some(ingest);
        Ok(Arc::new(result?))
    }

    /// Takes the next bytes of the blob, already written at their offset by a ranged
    /// download: hashed on a blocking thread like a batch, not written again.
    pub(crate) async fn absorb(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let end = self.position.saturating_add(chunk.len() as u64);
        if end > self.size {
            return Err(StoreError::Verify {
                digest: self.digest.clone(),
                source: VerifyError::TooLong {
                    expected: self.size,
                },
            });
        }
        let mut ingest = self.take_idle().await?;
        self.position = end;
        // Held in `in_flight` like a batch, so a download dropped meanwhile loses nothing.
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let result = ingest.absorb(&chunk);
            (ingest, Vec::new(), result)
        }));
        if self.position == self.size {
            self.settle().await?;
        }
        Ok(())
    }

    /// Drops every byte taken (the download starts over).
    pub(crate) async fn restart(&mut self) -> Result<(), StoreError> {
        self.batch.clear();
        let mut ingest = self.take_idle().await?;
        let (ingest, result) = tokio::task::spawn_blocking(move || {
            let result = ingest.restart();
            (ingest, result)
        })
        .await
        .map_err(|e| StoreError::task(&self.ingest_dir, e))?;
        self.position = ingest.written();
        self.resumed = 0;
        self.idle = Some(ingest);
        result
    }

    /// Whether the bytes taken are the blob. Exact once every byte is taken (the batches are
    /// written by then); before, the content is short whatever it holds.
    fn check(&self) -> Result<(), VerifyError> {
        let short = VerifyError::TooShort {
            expected: self.size,
            actual: self.position,
        };
        match &self.idle {
            Some(ingest) if self.in_flight.is_none() && self.batch.is_empty() => {
                match ingest.check() {
                    Ok(()) => Ok(()),
                    Err(StoreError::Verify { source, .. }) => Err(source),
                    // `check` fails only with `Verify`; anything else is no proof of the
                    // content either.
                    Err(_) => Err(short),
                }
            }
            _ => Err(short),
        }
    }

    /// Writes what is batched, then verifies and commits the blob (see [`Ingest::commit`]).
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        if !self.batch.is_empty() {
            self.send_batch().await?;
        }
        let ingest = self.take_idle().await?;
        tokio::task::spawn_blocking(move || ingest.commit())
            .await
            .map_err(|e| StoreError::task(&self.ingest_dir, e))?
    }

    /// Ends the ingest and removes its partial file (see [`Ingest::discard`]).
    pub(crate) async fn discard(mut self) {
        self.batch.clear();
        // A failed batch no longer matters: its bytes go with the partial.
        if let Ok(ingest) = self.take_idle().await {
            let _ = tokio::task::spawn_blocking(move || ingest.discard()).await;
        }
    }

    /// Hands the batch to a blocking thread, once the one before it is written.
    async fn send_batch(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::replace(&mut self.batch, std::mem::take(&mut self.spare));
        self.hand_over(Handed::Batch(batch)).await
    }

    /// Has `bytes` hashed and written on a blocking thread, once the write before is done; a
    /// batch's buffer comes back (empty) to be filled again.
    async fn hand_over(&mut self, bytes: Handed) -> Result<(), StoreError> {
        let mut ingest = self.take_idle().await?;
        self.in_flight = Some(tokio::task::spawn_blocking(move || match bytes {
            Handed::Batch(mut batch) => {
                let result = ingest.write(&batch);
                batch.clear();
                (ingest, batch, result)
            }
            Handed::Chunk(chunk) => {
                let result = ingest.write(&chunk);
                (ingest, Vec::new(), result)
            }
        }));
        Ok(())
    }

    /// Waits for the batch in flight, if any, and returns its error.
    async fn settle(&mut self) -> Result<(), StoreError> {
        if let Some(task) = self.in_flight.take() {
            let (ingest, buffer, result) = task
                .await
                .map_err(|e| StoreError::task(&self.ingest_dir, e))?;
            self.idle = Some(ingest);
            // A chunk sent as it is gives no buffer back: the spare stays.
            if buffer.capacity() > 0 {
                self.spare = buffer;
            }
            result?;
        }
        Ok(())
    }

    /// The ingest, once no batch is in flight.
    async fn take_idle(&mut self) -> Result<Ingest, StoreError> {
        self.settle().await?;
        self.idle.take().ok_or_else(|| {
            StoreError::io(
                &self.ingest_dir,
                std::io::Error::other("ingest used after a failure"),
            )
        })
    }
}

impl Drop for IngestSink {
    fn drop(&mut self) {
        // An ingest dropped writes out its buffer (its partial is resumed later): on a blocking
        // thread, not the runtime's. A batch in flight drops its ingest where it runs.
        if let Some(ingest) = self.idle.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(ingest))),
                Err(_) => drop(ingest),
            }
        }
    }
}

impl BlobSink for IngestSink {
    type Error = StoreError;

    fn position(&self) -> u64 {
        self.position
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        IngestSink::write(self, chunk).await
    }

    async fn restart(&mut self) -> Result<(), StoreError> {
        IngestSink::restart(self).await
    }

    fn verify(&mut self) -> Result<(), VerifyError> {
        self.check()
    }

    async fn ranged(&mut self) -> Result<Option<SharedTarget<StoreError>>, StoreError> {
        IngestSink::ranged(self).await.map(Some)
    }

    async fn absorb(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        IngestSink::absorb(self, chunk).await
    }
}

impl RangedTarget<StoreError> for RangedPartial {
    fn completed(&self) -> Vec<std::ops::Range<u64>> {
        RangedPartial::completed(self).to_vec()
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        RangedPartial::write_at(self, offset, bytes)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        RangedPartial::read_at(self, offset, buf)
    }

    fn record(&self, range: std::ops::Range<u64>) -> Result<(), StoreError> {
        RangedPartial::record(self, range)
    }

    fn abandon(&self, keep: u64) -> Result<(), StoreError> {
        RangedPartial::abandon(self, keep)
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
        let Some(ingest) = IngestSink::begin(&self.store, &desc.digest, desc.size).await? else {
            return Ok(None);
        };
        if ingest.resumed() > 0 {
            tracing::debug!(digest = %desc.digest, bytes = ingest.resumed(), "resuming a partial download");
            // The extraction would miss the bytes an earlier attempt fetched: it reads the
            // stored blob instead, once committed.
            tee::abort(tee).await;
        }
        let started = std::time::Instant::now();
        let resumed = ingest.resumed();
        let mut sink = Reporting::new(
            Teed {
                inner: ingest,
                tee: tee.take(),
            },
            is_layer.then(|| self.reporter.clone()),
            desc.digest.clone(),
            desc.size,
        );
        let fetched = self.repo.fetch_blob(&desc, &mut sink).await;
        let Teed {
            inner: ingest,
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
        tracing::debug!(
            digest = %desc.digest,
            bytes = desc.size,
            resumed_from = resumed,
            elapsed = ?started.elapsed(),
            "blob downloaded and verified"
        );
        self.layer_event(is_layer, &desc.digest, LayerStatus::DownloadComplete);
        Ok(Some(desc.size))
    }
}

/// The pull's error for a failed download, after deciding what becomes of its partial.
async fn failed(ingest: IngestSink, error: BlobError<StoreError>) -> PullError {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> (Vec<u8>, Digest) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256_of(&data);
        (data, digest)
    }

    async fn sink(store: &Store, digest: &Digest, size: usize) -> IngestSink {
        IngestSink::begin(store, digest, size as u64)
            .await
            .unwrap()
            .expect("blob should be missing")
    }

    #[tokio::test]
    async fn chunks_across_many_batches_commit_as_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(3 * BATCH_BYTES + 12_345);
        let mut s = sink(&store, &d, data.len()).await;
        for chunk in data.chunks(65_537) {
            s.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(s.position, data.len() as u64);
        s.check().unwrap();
        s.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
        assert!(IngestSink::begin(&store, &d, 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn verification_is_exact_once_every_byte_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(BATCH_BYTES + 10);
        let mut s = sink(&store, &d, data.len()).await;
        s.write(Bytes::copy_from_slice(&data[..data.len() - 1]))
            .await
            .unwrap();
        assert!(matches!(s.check(), Err(VerifyError::TooShort { .. })));
        s.write(Bytes::from_static(b"X")).await.unwrap();
        assert!(matches!(s.check(), Err(VerifyError::Mismatch { .. })));
        assert!(matches!(
            s.write(Bytes::from_static(b"Y")).await,
            Err(StoreError::Verify {
                source: VerifyError::TooLong { .. },
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_kill_would_lose_less_than_256_kib_of_what_was_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(8 << 20);
        let mut s = sink(&store, &d, data.len()).await;
        let taken = (5 << 20) + (900 << 10);
        for chunk in data[..taken].chunks(16 << 10) {
            s.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        // The batch handed over last is written by now; what is left is the one filling.
        s.settle().await.unwrap();
        let partial = dir
            .path()
            .join("ingest")
            .join(format!("sha256-{}.partial", d.hex()));
        let on_disk = std::fs::metadata(&partial).unwrap().len();
        assert!(on_disk <= taken as u64);
        assert!(
            taken as u64 - on_disk < 256 << 10,
            "{} KiB taken but not written",
            (taken as u64 - on_disk) >> 10
        );
    }

    #[tokio::test]
    async fn a_restart_drops_every_byte_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(2 * BATCH_BYTES);
        let mut s = sink(&store, &d, data.len()).await;
        s.write(Bytes::from(vec![7u8; BATCH_BYTES + BATCH_BYTES / 2]))
            .await
            .unwrap();
        s.restart().await.unwrap();
        assert_eq!(s.position, 0);
        for chunk in data.chunks(100_000) {
            s.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        s.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }

    #[tokio::test]
    async fn a_dropped_sink_leaves_its_batches_for_the_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(4 * BATCH_BYTES);
        let mut s = sink(&store, &d, data.len()).await;
        s.write(Bytes::copy_from_slice(&data[..3 * BATCH_BYTES]))
            .await
            .unwrap();
        drop(s);
        // Waits for the blob's lock, which the dropped ingest holds until its bytes are out.
        let mut again = sink(&store, &d, data.len()).await;
        assert_eq!(again.resumed(), 3 * BATCH_BYTES as u64);
        again
            .write(Bytes::copy_from_slice(&data[3 * BATCH_BYTES..]))
            .await
            .unwrap();
        again.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }

    #[tokio::test]
    async fn big_chunks_between_small_ones_commit_as_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (data, d) = blob(9 * BATCH_BYTES + 777);
        let mut s = sink(&store, &d, data.len()).await;
        // Big chunks arrive with a batch empty (sent as they are) and with one filling (copied
        // behind what it holds); small ones fill batches.
        let sizes = [
            BATCH_BYTES,
            1000,
            BATCH_BYTES + 1,
            2 * BATCH_BYTES,
            70_000,
            3,
        ];
        let (mut at, mut k) = (0, 0);
        while at < data.len() {
            let end = (at + sizes[k % sizes.len()]).min(data.len());
            s.write(Bytes::copy_from_slice(&data[at..end]))
                .await
                .unwrap();
            assert_eq!(s.position, end as u64);
            (at, k) = (end, k + 1);
        }
        s.check().unwrap();
        s.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }
}
