//! The slowest transfer haul accepts.
//!
//! An idle timeout alone cannot end a transfer that a server dribbles out a byte every few
//! seconds: each byte resets it. So every response body is read against a minimum rate: over each
//! window of `download-stall-timeout` (60 s by default) at least [`MIN_BYTES_PER_WINDOW`] must
//! arrive, or the attempt fails as [`RegistryError::TooSlow`] — retryable, and a blob download
//! resumes from what it got. 16 KiB a minute is about 270 bytes a second: a rate at which even a
//! 3 MB layer takes three hours, far below any working link (a 64 kbit/s line moves 480 KiB a
//! minute), so only a server that is stalling on purpose or broken falls under it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::error::{self, RegistryError};

/// Bytes each window must deliver.
pub const MIN_BYTES_PER_WINDOW: u64 = 16 * 1024;

/// Reads a body's chunks, failing once a whole window passes with too few bytes.
pub(crate) struct MinRate {
    window: Duration,
    started: Instant,
    received: u64,
}

impl MinRate {
    pub(crate) fn new(window: Duration) -> Self {
        MinRate {
            window,
            started: Instant::now(),
            received: 0,
        }
    }

    /// The next chunk of `stream` (`None` at its end).
    pub(crate) async fn next<S>(
        &mut self,
        stream: &mut S,
        host: &str,
    ) -> Result<Option<Bytes>, RegistryError>
    where
        S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        loop {
            let deadline = self.deadline();
            // `next()` is cancel-safe: a chunk not yet taken stays in the stream.
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.received = self.received.saturating_add(chunk.len() as u64);
                    if Instant::now() >= deadline {
                        self.end_window(host)?;
                    }
                    return Ok(Some(chunk));
                }
                Ok(Some(Err(e))) => return Err(error::from_reqwest(host, &e)),
                Ok(None) => return Ok(None),
                Err(_) => self.end_window(host)?,
            }
        }
    }

    fn deadline(&self) -> Instant {
        self.started
            .checked_add(self.window)
            .unwrap_or_else(|| self.started + Duration::from_secs(86_400))
    }

    fn end_window(&mut self, host: &str) -> Result<(), RegistryError> {
        if self.received < MIN_BYTES_PER_WINDOW {
            return Err(RegistryError::TooSlow {
                host: host.to_owned(),
                received: self.received,
                minimum: MIN_BYTES_PER_WINDOW,
                window: self.window,
            });
        }
        self.started = Instant::now();
        self.received = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> Vec<reqwest::Result<Bytes>> {
        (0..n).map(|_| Ok(Bytes::from(vec![0u8; size]))).collect()
    }

    /// `n` chunks of `size` bytes, each sent `every` after the one before: the pace under test.
    fn paced(
        n: usize,
        size: usize,
        every: Duration,
    ) -> impl Stream<Item = reqwest::Result<Bytes>> + Unpin {
        Box::pin(
            futures_util::stream::iter(chunks(n, size)).then(move |c| async move {
                tokio::time::sleep(every).await;
                c
            }),
        )
    }

    #[tokio::test]
    async fn a_dribble_fails_after_one_window() {
        // The defaults' byte every 10 s against 60 s, scaled down a hundredfold.
        let mut stream = paced(100, 1, Duration::from_millis(100));
        let mut rate = MinRate::new(Duration::from_millis(600));
        let mut got = 0u64;
        let err = loop {
            match rate.next(&mut stream, "r").await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the dribble was accepted"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, RegistryError::TooSlow { received, .. } if received == got && got < 10),
            "{err} after {got} bytes"
        );
    }

    #[tokio::test]
    async fn a_steady_transfer_passes_window_after_window() {
        // 8 KiB every 50 ms: some 100 KiB per window, for eight windows.
        let mut stream = paced(40, 8 * 1024, Duration::from_millis(50));
        let mut rate = MinRate::new(Duration::from_millis(250));
        let mut got = 0;
        while let Some(_chunk) = rate.next(&mut stream, "r").await.expect("fast enough") {
            got += 1;
        }
        assert_eq!(got, 40);
    }
}
