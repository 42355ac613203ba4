//! One big blob over several connections: ranges of it fetched in parallel, each written at its
//! offset through the sink's [`RangedTarget`], and handed to the sink in order as the
//! contiguous prefix grows ([`BlobSink::absorb`]), so hashing and extraction start as early as
//! with one stream.
//!
//! When: a blob of at least `ranged-download-min-size` bytes whose one stream held the download
//! back ([`super::split`]) or that an earlier attempt was fetching in ranges, a sink that offers
//! a target ([`BlobSink::ranged`]), and at least one extra connection free in the repository's
//! pool of `max-connections-per-blob - 1` (shared by every blob of the repository handle, so a pull
//! opens at most `max-concurrent-downloads + max-connections-per-blob - 1` blob connections).
//!
//! Promises:
//! - **Probe.** The first range is asked alone; the others follow only once it came back as a
//!   206 whose `Content-Range` is exactly the range asked. A 200, another range, a body longer
//!   than its range (from the registry, a mirror or a redirect target), or a failure before
//!   that first 206, and the download goes on over one stream from the prefix already taken
//!   ([`Ranged::Fallback`]), with the record of ranges dropped.
//! - **Retries.** Each range is retried like a whole download (`max-download-attempts`,
//!   backoff, `Retry-After` within the blob's one wait budget, the minimum rate), resuming
//!   within the range from the bytes it already wrote; each wait is announced to the sink
//!   ([`BlobSink::retrying`]).
//! - **Resume.** A range is recorded by the target once written; the next attempt (another
//!   process after a kill) fetches only the ranges not recorded.
//! - **Verification.** The sink hashes what it absorbs, in order, and the caller asks its
//!   verdict at the end: content that fails it is dropped and fetched whole, over one stream,
//!   once ([`super::blob`]).
//! - **Memory.** Per connection one write buffer of [`WRITE_BATCH`] bytes, plus one read-back
//!   buffer of [`READ_BACK`] bytes in flight to the sink: never the blob.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use reqwest::StatusCode;
use reqwest::header::CONTENT_RANGE;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::blob::{BlobSink, RetryNotice};
use super::error::RegistryError;
use super::repository::Repository;
use super::retry::RetryWaits;
use super::throughput::MinRate;
use crate::digest::VerifyError;
use crate::manifest::Descriptor;

/// Bytes a connection gathers before writing them at their offset.
pub(crate) const WRITE_BATCH: usize = 256 << 10;
/// Bytes of the finished prefix read back and handed to the sink at once.
pub(crate) const READ_BACK: usize = 256 << 10;
/// The smallest range asked: below it, a request's round trip costs more than it carries.
const MIN_RANGE: u64 = 1 << 20;
/// The biggest range asked: a range unfinished when the process dies is fetched again.
const MAX_RANGE: u64 = 32 << 20;
/// Ranges per connection, so a slow connection's last range does not hold up the end.
const RANGES_PER_CONNECTION: u64 = 4;

/// Where a ranged download writes a blob's bytes: the file behind a [`BlobSink`], written at
/// any offset, with a record of which ranges of it are complete. Blocking: called from blocking
/// threads, by several connections at once.
pub trait RangedTarget<E>: Send + Sync {
    /// Ranges past the sink's position that an earlier attempt completed: not fetched again.
    fn completed(&self) -> Vec<Range<u64>>;

    /// Writes `bytes` at `offset`.
    ///
    /// # Errors
    ///
    /// The target's failure (a full disk); the download stops with it.
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), E>;

    /// Fills `buf` with the bytes at `offset`, written before.
    ///
    /// # Errors
    ///
    /// The target's failure; the download stops with it.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), E>;

    /// Records that `range` is written, for a later attempt to skip.
    ///
    /// # Errors
    ///
    /// The target's failure; the download stops with it.
    fn record(&self, range: Range<u64>) -> Result<(), E>;

    /// The download goes on over one stream: only the first `keep` bytes (those the sink took)
    /// stay, and the record goes.
    ///
    /// # Errors
    ///
    /// The target's failure; the download stops with it.
    fn abandon(&self, keep: u64) -> Result<(), E>;
}

/// A target shared by the connections of one download.
pub type SharedTarget<E> = Arc<dyn RangedTarget<E>>;

/// How a ranged download ended.
pub(super) enum Ranged<E> {
    /// Every byte is in the sink: its verdict decides.
    Done,
    /// Ranges do not work here: go on over one stream from the sink's position.
    Fallback,
    /// A range failed for good (retries spent) or the sink failed.
    Failed(Failure<E>),
}

/// Why a ranged download stopped.
pub(super) enum Failure<E> {
    Remote(RegistryError),
    Sink(E),
}

/// Why a range stopped.
enum Stop<E> {
    /// The endpoint does not serve ranges as asked.
    Refused(&'static str),
    Remote(RegistryError),
    Sink(E),
}

/// What a connection tells the one handing bytes to the sink.
enum Note {
    /// A range is written and recorded.
    Done(Range<u64>),
    /// A range's attempt failed and the next follows after a wait: the sink is told, as for a
    /// whole download.
    Retrying(RetryNotice),
}

/// What the connections share.
struct Shared<'a, E> {
    repo: &'a Repository,
    desc: &'a Descriptor,
    target: SharedTarget<E>,
    queue: Mutex<VecDeque<Range<u64>>>,
    waits: Mutex<RetryWaits>,
    /// `None` while the first range is probing, then whether ranges are honoured.
    honoured: watch::Sender<Option<bool>>,
    /// Set once any connection stops: the others take no new range.
    stopped: AtomicBool,
}

impl Repository {
    /// Extra connections for a ranged download of `desc`, taken from the repository's pool;
    /// none when the blob is too small or ranged downloads are off.
    pub(super) fn range_connections(
        &self,
        desc: &Descriptor,
        position: u64,
    ) -> Vec<OwnedSemaphorePermit> {
        let settings = self.client.settings();
        let wanted = settings.max_connections_per_blob.saturating_sub(1);
        if desc.size < settings.ranged_download_min_size
            || desc.size.saturating_sub(position) < 2 * MIN_RANGE
        {
            return Vec::new();
        }
        std::iter::from_fn(|| self.range_connections.clone().try_acquire_owned().ok())
            .take(wanted)
            .collect()
    }

    /// Fetches the rest of `desc` in ranges over `1 + extra.len()` connections into `target`,
    /// handing the finished prefix to `sink` in order. See the module's promises.
    pub(super) async fn fetch_ranged<S: BlobSink>(
        &self,
        desc: &Descriptor,
        sink: &mut S,
        target: SharedTarget<S::Error>,
        extra: Vec<OwnedSemaphorePermit>,
    ) -> Ranged<S::Error> {
        let start = sink.position();
        let connections = 1 + extra.len() as u64;
        let completed = target.completed();
        let pending = split(start, desc.size, &completed, connections);
        let (honoured, _) = watch::channel(if pending.is_empty() { Some(true) } else { None });
        let shared = Shared {
            repo: self,
            desc,
            target: target.clone(),
            queue: Mutex::new(pending.into()),
            waits: Mutex::new(RetryWaits::new(self.client.settings())),
            honoured,
            stopped: AtomicBool::new(false),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let connections_done = async {
            let mut running: FuturesUnordered<_> = (0..connections)
                .map(|i| shared.connection(i == 0, done_tx.clone()))
                .collect();
            drop(done_tx);
            while let Some(result) = running.next().await {
                if let Err(stop) = result {
                    shared.stopped.store(true, Ordering::Relaxed);
                    shared.honoured.send_if_modified(|h| {
                        let probing = h.is_none();
                        *h = h.or(Some(false));
                        probing
                    });
                    // The other connections are dropped with `running`: their requests end.
                    return Err(stop);
                }
            }
            Ok(())
        };
        let absorbed = absorb_in_order(sink, &target, desc.size, start, &completed, done_rx);
        let result = futures_util::future::try_join(connections_done, absorbed).await;
        drop(extra);
        let went = *shared.honoured.borrow() == Some(true);
        match result {
            Ok(_) => Ranged::Done,
            Err(Stop::Sink(e)) => Ranged::Failed(Failure::Sink(e)),
            Err(Stop::Remote(e)) if went => Ranged::Failed(Failure::Remote(e)),
            Err(stop) => {
                match &stop {
                    Stop::Refused(why) => {
                        tracing::debug!(digest = %desc.digest, why, "ranges refused; one stream instead");
                    }
                    Stop::Remote(e) => {
                        tracing::debug!(digest = %desc.digest, error = %e, "first range failed; one stream instead");
                    }
                    Stop::Sink(_) => {}
                }
                let keep = sink.position();
                let t = target.clone();
                match tokio::task::spawn_blocking(move || t.abandon(keep)).await {
                    Ok(Ok(())) => Ranged::Fallback,
                    Ok(Err(e)) => Ranged::Failed(Failure::Sink(e)),
                    // The record stays; the next attempt's digest check catches any lie.
                    Err(_) => Ranged::Fallback,
                }
            }
        }
    }
}

impl<E: Send + 'static> Shared<'_, E> {
    /// One connection: ranges from the queue until it is empty. The first connection probes;
    /// the others wait until ranges proved to work.
    async fn connection(
        &self,
        probe: bool,
        done: mpsc::UnboundedSender<Note>,
    ) -> Result<(), Stop<E>> {
        if !probe {
            let mut rx = self.honoured.subscribe();
            match rx.wait_for(Option::is_some).await {
                Ok(h) if *h == Some(true) => {}
                _ => return Ok(()),
            }
        }
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(range) = self.queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                return Ok(());
            };
            self.range(range.clone(), &done).await?;
            let t = self.target.clone();
            let r = range.clone();
            tokio::task::spawn_blocking(move || t.record(r))
                .await
                .map_err(|e| Stop::Remote(task_failed(e)))?
                .map_err(Stop::Sink)?;
            // The receiver is gone only when the download already stopped.
            let _ = done.send(Note::Done(range));
        }
    }

    /// One range, with retries; resumes within the range from what it wrote.
    async fn range(
        &self,
        range: Range<u64>,
        notes: &mpsc::UnboundedSender<Note>,
    ) -> Result<(), Stop<E>> {
        let max_attempts = self.repo.client.settings().max_download_attempts;
        let mut attempt = 1;
        let mut position = range.start;
        loop {
            let before = position;
            let err = match self.attempt(&mut position, range.end).await {
                Ok(()) => return Ok(()),
                Err(Stop::Remote(e)) => e,
                Err(other) => return Err(other),
            };
            // Before ranges proved to work, the one stream's own retries take over.
            let probing = self.honoured.borrow().is_none();
            if probing || !err.is_retryable() || attempt >= max_attempts {
                return Err(Stop::Remote(err));
            }
            let backoff = if position > before {
                Duration::ZERO
            } else {
                self.repo.client.backoff(attempt)
            };
            let reason = err.to_string();
            let delay = match self.waits.lock() {
                Ok(mut waits) => waits.delay(self.repo.host(), err, backoff),
                Err(_) => Err(err),
            }
            .map_err(Stop::Remote)?;
            let _ = notes.send(Note::Retrying(RetryNotice {
                attempt,
                delay,
                reason,
            }));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request for `position..end`, its body written at its offsets; `position` follows
    /// what is written.
    async fn attempt(&self, position: &mut u64, end: u64) -> Result<(), Stop<E>> {
        let response = self
            .repo
            .blob_range(&self.desc.digest, *position, Some(end))
            .await
            .map_err(Stop::Remote)?;
        if !is_range(
            response.status(),
            response.headers().get(CONTENT_RANGE),
            *position..end,
            self.desc.size,
        ) {
            return Err(Stop::Refused("the answer is not the range asked"));
        }
        self.honoured.send_if_modified(|h| {
            let first = h.is_none();
            *h = Some(true);
            first
        });
        let host = response.url().host_str().unwrap_or_default().to_owned();
        let mut stream = response.bytes_stream();
        let mut rate = MinRate::new(self.repo.client.stall_timeout());
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut batch_at = *position;
        let outcome = loop {
            match rate.next(&mut stream, &host).await {
                Ok(Some(chunk)) => {
                    let taken = batch_at + batch.len() as u64;
                    if taken + chunk.len() as u64 > end {
                        break Err(Stop::Refused("a range's body runs past its end"));
                    }
                    batch.extend_from_slice(&chunk);
                    if batch.len() >= WRITE_BATCH {
                        batch = self.write(batch_at, batch).await?;
                        batch_at = batch_at.saturating_add(batch.len() as u64);
                        batch.clear();
                        *position = batch_at;
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Stop::Remote(e)),
            }
        };
        // What arrived before a failure is kept: the retry resumes after it.
        if !batch.is_empty() {
            let written = self.write(batch_at, batch).await?;
            *position = batch_at.saturating_add(written.len() as u64);
        }
        outcome?;
        if *position < end {
            return Err(Stop::Remote(RegistryError::Verify {
                url: host,
                source: VerifyError::TooShort {
                    expected: self.desc.size,
                    actual: *position,
                },
            }));
        }
        Ok(())
    }

    /// Writes `batch` at `offset` on a blocking thread; gives the buffer back.
    async fn write(&self, offset: u64, batch: Vec<u8>) -> Result<Vec<u8>, Stop<E>> {
        let t = self.target.clone();
        let (batch, result) = tokio::task::spawn_blocking(move || {
            let result = t.write_at(offset, &batch);
            (batch, result)
        })
        .await
        .map_err(|e| Stop::Remote(task_failed(e)))?;
        result.map_err(Stop::Sink)?;
        Ok(batch)
    }
}

/// Hands the sink the blob's bytes in order, read back from the target as the ranges after its
/// position complete (those `completed` before, and those arriving on `done`).
fn absorb_in_order<'a, S: BlobSink>(
    sink: &'a mut S,
    target: &'a SharedTarget<S::Error>,
    size: u64,
    start: u64,
    completed: &[Range<u64>],
    mut done: mpsc::UnboundedReceiver<Note>,
) -> impl Future<Output = Result<(), Stop<S::Error>>> + Send + 'a {
    let mut finished: BTreeMap<u64, u64> = completed
        .iter()
        .filter(|r| r.start >= start)
        .map(|r| (r.start, r.end))
        .collect();
    async move {
        let mut position = start;
        loop {
            while let Some(end) = finished.remove(&position) {
                while position < end {
                    let len = usize::try_from(end - position)
                        .unwrap_or(READ_BACK)
                        .min(READ_BACK);
                    let t = target.clone();
                    let at = position;
                    let chunk = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        t.read_at(at, &mut buf).map(|()| buf)
                    })
                    .await
                    .map_err(|e| Stop::Remote(task_failed(e)))?
                    .map_err(Stop::Sink)?;
                    sink.absorb(Bytes::from(chunk)).await.map_err(Stop::Sink)?;
                    position += len as u64;
                }
            }
            if position >= size {
                return Ok(());
            }
            match done.recv().await {
                Some(Note::Done(r)) => {
                    finished.insert(r.start, r.end);
                }
                Some(Note::Retrying(notice)) => sink.retrying(&notice),
                // Every connection ended without the range at `position`: the one that
                // failed says why.
                None => {
                    return Err(Stop::Refused("a range was never fetched"));
                }
            }
        }
    }
}

/// The ranges still to fetch of `start..size`: the gaps between `completed`, cut so that each
/// connection gets a few. Toward the end they shrink (to what is left over twice the
/// connections, never under [`MIN_RANGE`]): connections take ranges in order, so the last ones
/// finish close together instead of one big range finishing alone.
fn split(start: u64, size: u64, completed: &[Range<u64>], connections: u64) -> Vec<Range<u64>> {
    let missing: u64 = size.saturating_sub(start)
        - completed
            .iter()
            .map(|r| r.end.min(size).saturating_sub(r.start.max(start)))
            .sum::<u64>()
            .min(size.saturating_sub(start));
    let len = missing
        .div_ceil(connections.max(1) * RANGES_PER_CONNECTION)
        .clamp(MIN_RANGE, MAX_RANGE);
    let mut gaps = Vec::new();
    let mut at = start;
    let mut sorted: Vec<&Range<u64>> = completed.iter().collect();
    sorted.sort_by_key(|r| r.start);
    for r in sorted {
        if r.start > at {
            gaps.push(at..r.start.min(size));
        }
        at = at.max(r.end);
    }
    if at < size {
        gaps.push(at..size);
    }
    let mut left = gaps
        .iter()
        .map(|g| g.end.saturating_sub(g.start))
        .sum::<u64>();
    let tail = connections.max(1) * 2;
    let mut pieces = Vec::new();
    for gap in gaps {
        let mut from = gap.start;
        while from < gap.end {
            let piece = len.min((left / tail).max(MIN_RANGE));
            let to = from.saturating_add(piece).min(gap.end);
            pieces.push(from..to);
            left = left.saturating_sub(to - from);
            from = to;
        }
    }
    pieces
}

/// Whether an answer to `Range: bytes=START-(END-1)` is that range of the blob: a 206 whose
/// `Content-Range` is exactly it (of the blob's size, or of an unknown one).
fn is_range(
    status: StatusCode,
    content_range: Option<&reqwest::header::HeaderValue>,
    range: Range<u64>,
    size: u64,
) -> bool {
    if status != StatusCode::PARTIAL_CONTENT {
        return false;
    }
    let Some(value) = content_range
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
    else {
        return false;
    };
    let Some((span, total)) = value.split_once('/') else {
        return false;
    };
    let Some((first, last)) = span.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().ok() == Some(size);
    total_ok
        && first.parse::<u64>().ok() == Some(range.start)
        && last.parse::<u64>().ok() == range.end.checked_sub(1)
}

fn task_failed(e: tokio::task::JoinError) -> RegistryError {
    RegistryError::Transport {
        host: String::new(),
        detail: format!("a blocking task failed: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn ranges_tile_the_gaps_between_completed_ones() {
        const M: u64 = 1 << 20;
        // 100 MiB over 4 connections: ranges of 6.25 MiB, shrinking toward the end so that the
        // last ones finish together.
        let r = split(0, 100 * M, &[], 4);
        assert_eq!(r[0], 0..100 * M / 16);
        assert_eq!(r.last().unwrap().end, 100 * M);
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        assert!(
            r.windows(2)
                .all(|w| w[1].end - w[1].start <= w[0].end - w[0].start)
        );
        let last_round: u64 = r[r.len() - 4..].iter().map(|x| x.end - x.start).sum();
        assert!(last_round <= 4 * M + 4 * M / 2, "{r:?}");
        assert!(
            r.iter()
                .all(|x| x.end - x.start >= MIN_RANGE || x.end == 100 * M)
        );
        // Completed ranges are skipped; the rest is cut into pieces of at least MIN_RANGE.
        let r = split(2 * M, 10 * M, &[3 * M..5 * M, 8 * M..9 * M], 2);
        let total: u64 = r.iter().map(|x| x.end - x.start).sum();
        assert_eq!(total, 5 * M);
        assert!(r.iter().all(|x| x.end <= 3 * M || x.start >= 5 * M));
        assert!(r.iter().all(|x| x.end <= 8 * M || x.start >= 9 * M));
        assert_eq!(r.first().unwrap().start, 2 * M);
        assert_eq!(r.last().unwrap().end, 10 * M);
        // Nothing missing, nothing asked; a huge blob gets ranges of at most MAX_RANGE.
        assert!(split(0, 10 * M, &[0..10 * M], 4).is_empty());
        assert!(
            split(0, 10_000 * M, &[], 4)
                .iter()
                .all(|x| x.end - x.start <= MAX_RANGE)
        );
    }

    #[test]
    fn only_the_range_asked_counts() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        let ok = StatusCode::PARTIAL_CONTENT;
        let cases = [
            (ok, Some(v("bytes 100-199/1000")), true),
            (ok, Some(v("bytes 100-199/*")), true),
            (ok, Some(v("bytes 100-199/999")), false),
            (ok, Some(v("bytes 0-199/1000")), false),
            (ok, Some(v("bytes 100-999/1000")), false),
            (ok, Some(v("bytes 100-198/1000")), false),
            (ok, Some(v("items 100-199/1000")), false),
            (ok, None, false),
            (StatusCode::OK, Some(v("bytes 100-199/1000")), false),
        ];
        for (status, header, want) in cases {
            assert_eq!(
                is_range(status, header.as_ref(), 100..200, 1000),
                want,
                "{status} {header:?}"
            );
        }
    }
}
