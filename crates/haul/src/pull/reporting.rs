//! Download progress, read off the blob stream: a sink wrapper that reports what passes through
//! it, as the extraction side's reader wrapper does for extraction.
//!
//! Promises: a layer reports `Downloading` at most every [`PROGRESS_INTERVAL`] while bytes arrive
//! and once more when its body is complete, and `Retrying in N seconds` before each retry's wait.
//! A blob that is not a layer (the config) reports nothing, as in docker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::digest::{Digest, VerifyError};
use crate::progress::{Event, LayerStatus, Reporter};
use crate::registry::{BlobSink, RetryNotice};

/// How often a layer reports download progress, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// A sink that reports the progress of the download going into `inner`.
pub(super) struct Reporting<S> {
    pub(super) inner: S,
    reporter: Option<Arc<dyn Reporter>>,
    digest: Digest,
    total: u64,
    last_report: Instant,
}

impl<S: BlobSink> Reporting<S> {
    /// Reports to `reporter` for the layer `digest` of `total` bytes; `None` reports nothing.
    pub(super) fn new(
        inner: S,
        reporter: Option<Arc<dyn Reporter>>,
        digest: Digest,
        total: u64,
    ) -> Self {
        Reporting {
            inner,
            reporter,
            digest,
            total,
            last_report: Instant::now(),
        }
    }

    fn report(&self, status: LayerStatus) {
        if let Some(r) = &self.reporter {
            r.report(Event::Layer {
                digest: self.digest.clone(),
                status,
            });
        }
    }

    fn downloading(&self) {
        self.report(LayerStatus::Downloading {
            current: self.inner.position(),
            total: self.total,
        });
    }
}

impl<S: BlobSink> BlobSink for Reporting<S> {
    type Error = S::Error;

    fn position(&self) -> u64 {
        self.inner.position()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), S::Error> {
        self.inner.write(chunk).await?;
        if self.reporter.is_some() && self.last_report.elapsed() >= PROGRESS_INTERVAL {
            self.last_report = Instant::now();
            self.downloading();
        }
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), S::Error> {
        self.inner.restart().await
    }

    async fn ranged(
        &mut self,
    ) -> Result<Option<crate::registry::SharedTarget<S::Error>>, S::Error> {
        self.inner.ranged().await
    }

    async fn absorb(&mut self, chunk: Bytes) -> Result<(), S::Error> {
        self.inner.absorb(chunk).await?;
        if self.reporter.is_some() && self.last_report.elapsed() >= PROGRESS_INTERVAL {
            self.last_report = Instant::now();
            self.downloading();
        }
        Ok(())
    }

    fn verify(&mut self) -> Result<(), VerifyError> {
        // The body is complete: the bar shows all of it before `Verifying Checksum`.
        self.downloading();
        self.inner.verify()
    }

    fn retrying(&mut self, notice: &RetryNotice) {
        tracing::debug!(digest = %self.digest, attempt = notice.attempt, wait = ?notice.delay, position = self.inner.position(), reason = %notice.reason, "blob download failed; retrying");
        self.report(LayerStatus::Retrying {
            attempt: notice.attempt,
            delay_secs: notice.delay.as_secs_f64().ceil() as u64,
            reason: notice.reason.clone(),
        });
        self.inner.retrying(notice);
    }
}
