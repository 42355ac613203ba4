//! The extraction's copy of a download: every chunk the store's ingest takes is also sent, as the
//! same [`Bytes`] (no copy), to an extraction reading on a blocking thread. A download over
//! several connections hands the ingest its bytes in order as the contiguous prefix grows
//! ([`BlobSink::absorb`]), and the extraction gets them the same way.
//!
//! Promises:
//! - The extraction sees the blob's bytes in order, from byte 0, or an error: a download that
//!   resumed a partial or started over ends the copy with an error (the extraction has missed or
//!   seen bytes that do not count), and the layer is extracted from the stored blob instead.
//! - The copy ends cleanly only for a blob verified and committed ([`Tee::finish`] after
//!   `complete` is set); anything else ends it with an error, so an extraction never publishes a
//!   layer from bytes that were not the blob.
//! - Bounded: at most [`TEE_DEPTH`] chunks in flight; a slower extraction slows the download
//!   instead of buffering the layer. An extraction that stopped (failed) no longer receives
//!   chunks and the download goes on without it.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::digest::VerifyError;
use crate::registry::BlobSink;

/// Chunks of a download in flight to its extraction. hyper hands out chunks of up to a few hundred
/// KiB, so this bounds the buffer to a few MiB per layer: enough to ride out bursts on either side;
/// when extraction is slower, the download waits instead of buffering the layer.
pub(super) const TEE_DEPTH: usize = 16;

/// Smaller chunks are gathered up to this many bytes before they are sent. A capped or slow
/// connection hands out chunks of a few KiB; sent one by one, waking the extraction for each, they
/// held the download up 38% of the time at 10 MB/s (50 MB of incompressible bytes).
const TEE_BATCH: usize = 64 << 10;

/// The sending side of the extraction's copy.
pub(super) struct Tee {
    tx: Option<mpsc::Sender<Result<Bytes, String>>>,
    /// Small chunks gathered, not yet sent.
    pending: BytesMut,
    /// Set once the blob these chunks make up is verified and committed.
    pub(super) complete: bool,
}

/// A copy of a download and the reader the extraction takes it from.
pub(super) fn tee() -> (Tee, ChannelReader) {
    let (tx, rx) = mpsc::channel(TEE_DEPTH);
    (
        Tee {
            tx: Some(tx),
            pending: BytesMut::new(),
            complete: false,
        },
        ChannelReader {
            rx,
            current: Bytes::new(),
        },
    )
}

impl Tee {
    /// Sends `chunk` as it is when it is big and nothing is gathered, else gathers it and sends
    /// the gathered bytes once there are [`TEE_BATCH`] of them.
    async fn send(&mut self, chunk: Bytes) {
        if self.tx.is_none() {
            return;
        }
        if self.pending.is_empty() && chunk.len() >= TEE_BATCH {
            self.deliver(chunk).await;
            return;
        }
        if self.pending.is_empty() {
            // `split` left no capacity behind: one allocation per batch, not a doubling series.
            self.pending.reserve(TEE_BATCH);
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= TEE_BATCH {
            self.flush().await;
        }
    }

    /// Sends what is gathered.
    async fn flush(&mut self) {
        if !self.pending.is_empty() {
            let gathered = self.pending.split().freeze();
            self.deliver(gathered).await;
        }
    }

    async fn deliver(&mut self, chunk: Bytes) {
        if let Some(tx) = &self.tx
            && tx.send(Ok(chunk)).await.is_err()
        {
            // The extraction stopped (it failed); the download goes on without it.
            self.tx = None;
        }
    }

    /// Ends the stream with an error: what the extraction saw is not the blob.
    pub(super) async fn abort(&mut self) {
        self.pending.clear();
        if let Some(tx) = self.tx.take() {
            let _ = tx
                .send(Err(
                    "the download restarted; extracting from the stored blob".to_owned(),
                ))
                .await;
        }
    }

    /// Ends the stream: cleanly when the blob was committed, with an error otherwise.
    pub(super) async fn finish(&mut self) {
        if self.complete {
            self.flush().await;
            self.tx = None;
        } else {
            self.abort().await;
        }
    }
}

/// Ends the extraction's copy of a download that cannot be followed from byte 0.
pub(super) async fn abort(tee: &mut Option<Tee>) {
    if let Some(mut t) = tee.take() {
        t.abort().await;
    }
}

/// A sink that hands every chunk to `inner` and then to the extraction, if there is one.
pub(super) struct Teed<S> {
    pub(super) inner: S,
    pub(super) tee: Option<Tee>,
}

impl<S: BlobSink> BlobSink for Teed<S> {
    type Error = S::Error;

    fn position(&self) -> u64 {
        self.inner.position()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), S::Error> {
        match self.tee.as_mut() {
            // A second handle on the same bytes: a reference count, not a copy.
            Some(t) => {
                self.inner.write(chunk.clone()).await?;
                t.send(chunk).await;
            }
            None => self.inner.write(chunk).await?,
        }
        Ok(())
    }

    async fn ranged(
        &mut self,
    ) -> Result<Option<crate::registry::SharedTarget<S::Error>>, S::Error> {
        self.inner.ranged().await
    }

    /// Bytes of a ranged download reach the extraction in order too: from the contiguous
    /// prefix, as it grows.
    async fn absorb(&mut self, chunk: Bytes) -> Result<(), S::Error> {
        match self.tee.as_mut() {
            Some(t) => {
                self.inner.absorb(chunk.clone()).await?;
                t.send(chunk).await;
            }
            None => self.inner.absorb(chunk).await?,
        }
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), S::Error> {
        self.inner.restart().await?;
        // The extraction has seen bytes that no longer count: it cannot follow a restart.
        abort(&mut self.tee).await;
        Ok(())
    }

    fn verify(&mut self) -> Result<(), VerifyError> {
        self.inner.verify()
    }

    fn retrying(&mut self, notice: &crate::registry::RetryNotice) {
        self.inner.retrying(notice);
    }
}

/// The receiving end of a [`Tee`], read by the extraction on a blocking thread.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = std::io::BufRead::fill_buf(self)?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// The decoder reads the chunks where they are: no copy into a buffer of its own (0.85% of a
/// pull's CPU, app's 334 MB).
impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(reason)) => return Err(std::io::Error::other(reason)),
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.current.len());
        bytes::Buf::advance(&mut self.current, n);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_chunks_are_gathered_and_every_byte_arrives_in_order() {
        let (mut tee, mut reader) = tee();
        let reading = tokio::task::spawn_blocking(move || {
            let (mut out, mut reads) = (Vec::new(), 0);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    return (out, reads);
                }
                reads += 1;
                out.extend_from_slice(&buf[..n]);
            }
        });
        let mut sent = Vec::new();
        // 4 KiB pieces (a capped connection's), then one big chunk, then a short tail.
        for i in 0..64u32 {
            let piece = Bytes::from(vec![i as u8; 4096]);
            sent.extend_from_slice(&piece);
            tee.send(piece).await;
        }
        let big = Bytes::from(vec![0xAB; TEE_BATCH * 2]);
        sent.extend_from_slice(&big);
        tee.send(big).await;
        let tail = Bytes::from_static(b"tail");
        sent.extend_from_slice(&tail);
        tee.send(tail).await;
        tee.complete = true;
        tee.finish().await;
        drop(tee);
        let (received, reads) = reading.await.unwrap();
        assert_eq!(received, sent);
        // 256 KiB of small pieces in 64 KiB batches (4), the big chunk (1), the tail (1).
        assert_eq!(reads, 6, "the small pieces were not gathered");
    }
}
