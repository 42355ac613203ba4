//! One blob, fetched whole: resumed, retried, moved between endpoints and verified here, so a
//! caller hands [`Repository::fetch_blob`] a descriptor and a [`BlobSink`] and gets back either
//! the whole blob in the sink or an error.
//!
//! Promises:
//! - **Resume.** The download continues from [`BlobSink::position`] with `Range: bytes=N-`, and
//!   accepts the answer only as a 206 whose `Content-Range` starts at N. Any other answer starts
//!   over: the sink is told to [`restart`](BlobSink::restart) and the whole body follows.
//! - **Retries.** Transient failures (connect, 5xx, 408, 429, no headers in time, a body that
//!   stalls, dribbles below the minimum rate or ends short) are tried again, up to
//!   `max-download-attempts` in all. An attempt that delivered bytes resumes at once, without
//!   backoff; one that did not backs off exponentially with jitter, or waits what `Retry-After`
//!   asked within `max-retry-after` and the per-download wait budget ([`super::retry`]). Each wait
//!   is announced to the sink first ([`BlobSink::retrying`]).
//! - **Endpoints.** Mirrors first ([`super::endpoints`]). Bytes from a mirror that fail
//!   verification drop that mirror for this blob, and the next endpoint serves it from byte 0;
//!   the registry's own bad bytes fail the download.
//! - **Foreign layers.** A non-distributable layer the registry cannot serve is fetched from its
//!   `urls`, only where [`super::foreign`] allows.
//! - **Verification.** Bytes past the declared size are refused before the sink sees them; a body
//!   that ends short is retried; at the end the sink's own digest check decides
//!   ([`BlobSink::verify`]). The digest is computed once, by the sink as it stores the bytes (the
//!   store's ingest hashes what it writes), not a second time here. A partial that an earlier
//!   process left and that turns out not to be a prefix of the blob is dropped and the blob
//!   fetched whole, once.
//! - **Big blobs.** A blob of at least `ranged-download-min-size` starts over one stream like any
//!   other; when that stream holds the download back (the sink seldom holds it up,
//!   [`super::split`]), its endpoint said `Accept-Ranges: bytes`, and the sink offers a
//!   [`RangedTarget`](super::RangedTarget) ([`BlobSink::ranged`]), the rest is fetched in ranges over several connections, if the
//!   endpoint answers `Range` with exactly the range asked ([`super::ranged`]); else the one
//!   stream goes on. A blob an earlier attempt was fetching in ranges goes on in ranges at once.
//!   Ranged content that fails verification is dropped and the blob fetched whole over one
//!   stream, once.
//! - **Cost.** The chunks hyper hands out reach the sink as they are ([`Bytes`], no copy); per
//!   chunk one size comparison and the minimum-rate clock, no system call of its own.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT_RANGES, CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::endpoints::Endpoint;
use super::error::RegistryError;
use super::ranged::{Failure, Ranged, SharedTarget};
use super::repository::Repository;
use super::retry::RetryWaits;
use super::split::SplitWatch;
use super::throughput::MinRate;
use crate::digest::{Digest, VerifyError};
use crate::manifest::Descriptor;

/// Where [`Repository::fetch_blob`] puts a blob's bytes: the store's ingest in a pull, with
/// whatever wraps it (progress, a copy for an extraction).
pub trait BlobSink: Send {
    /// Why the sink could not take bytes (a full disk): never retried.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Bytes the sink already holds, a partial download resumed: the download asks for the rest.
    fn position(&self) -> u64;

    /// Takes the next bytes of the blob, which follow those it holds.
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Drops every byte held: the download starts over from byte 0.
    fn restart(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether the bytes held, exactly the declared size of them, are the blob: its digest.
    ///
    /// # Errors
    ///
    /// What is wrong with the bytes held ([`VerifyError::Mismatch`] for another digest).
    fn verify(&mut self) -> Result<(), VerifyError>;

    /// A file to write the rest of the blob into at any offset, for a download over several
    /// connections. `None` (the default) keeps the download to one stream of [`write`]s.
    ///
    /// [`write`]: BlobSink::write
    ///
    /// # Errors
    ///
    /// The sink's failure to provide one: the download fails with it.
    fn ranged(
        &mut self,
    ) -> impl Future<Output = Result<Option<SharedTarget<Self::Error>>, Self::Error>> + Send {
        async { Ok(None) }
    }

    /// Takes the next bytes of the blob, which a ranged download already wrote at their offset
    /// through [`BlobSink::ranged`]'s target: the sink counts and hashes them without writing
    /// them again. The default writes them again, which is correct, only slower.
    fn absorb(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.write(chunk)
    }

    /// An attempt failed and the next starts after `notice.delay`.
    fn retrying(&mut self, notice: &RetryNotice) {
        let _ = notice;
    }
}

/// A failed attempt at a blob, about to be tried again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryNotice {
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// How long until the next one: zero after a transfer that made progress.
    pub delay: Duration,
    /// Why the attempt failed.
    pub reason: String,
}

/// Why [`Repository::fetch_blob`] failed. The sink keeps what it holds; whether that is worth
/// keeping for a later resume is the caller's to decide (not after `Verify`).
#[derive(Debug, thiserror::Error)]
pub enum BlobError<E> {
    /// The registry (or a foreign URL) did not serve the blob, within the attempts allowed.
    #[error(transparent)]
    Registry(RegistryError),
    /// What was served is not the blob: more bytes than its size, or another digest.
    #[error("blob {digest} failed verification: {source}")]
    Verify {
        /// The blob asked for.
        digest: Digest,
        /// What was wrong.
        #[source]
        source: VerifyError,
    },
    /// The sink failed.
    #[error(transparent)]
    Sink(E),
}

/// How one attempt ended, when not with the whole body.
enum Failed<E> {
    Remote(RegistryError),
    /// More bytes than the descriptor's size.
    TooLong,
    Sink(E),
    /// The stream held the download back: the rest goes in ranges over these connections and
    /// the stream's own (the sink holds every byte it delivered).
    Split(Vec<OwnedSemaphorePermit>),
}

impl Repository {
    /// Fetches the blob `desc` describes into `sink`, continuing from what the sink holds.
    /// Returns once every byte is in the sink and [`BlobSink::verify`] accepted them; see the
    /// module's promises for what happens on the way.
    ///
    /// # Errors
    ///
    /// [`BlobError::Registry`] when no endpoint served the blob within the attempts and waits
    /// allowed, [`BlobError::Verify`] when the registry itself served other content, and
    /// [`BlobError::Sink`] as soon as the sink fails.
    pub async fn fetch_blob<S: BlobSink>(
        &self,
        desc: &Descriptor,
        sink: &mut S,
    ) -> Result<(), BlobError<S::Error>> {
        let digest = &desc.digest;
        let max_attempts = self.client.settings().max_download_attempts;
        let mut waits = RetryWaits::new(self.client.settings());
        let mut attempt = 1;
        // What an earlier process left may not be a prefix of this blob (a crash can leave
        // anything): until a restart, a wrong digest may be the partial's fault.
        let mut partial_unproven = sink.position() > 0;
        // Ranges stay possible until they were refused, or failed verification, once.
        let mut may_split = self.may_split(desc);
        if may_split {
            let extra = self.range_connections(desc, sink.position());
            if !extra.is_empty()
                && let Some(target) = sink.ranged().await.map_err(BlobError::Sink)?
            {
                if target.completed().is_empty() {
                    // Nothing fetched in ranges before: one stream first (see `split`).
                    drop(extra);
                    let keep = sink.position();
                    if let Ok(result) =
                        tokio::task::spawn_blocking(move || target.abandon(keep)).await
                    {
                        result.map_err(BlobError::Sink)?;
                    }
                } else if self
                    .ranged_download(desc, sink, target, extra, &mut partial_unproven)
                    .await?
                {
                    return Ok(());
                } else {
                    may_split = false;
                }
            }
        }
        loop {
            let before = sink.position();
            let mut watch = may_split.then(SplitWatch::new);
            let source = match self
                .transfer(desc, sink, &mut partial_unproven, watch.as_mut())
                .await
            {
                Err(Failed::Split(extra)) => {
                    let target = sink.ranged().await.map_err(BlobError::Sink)?;
                    if let Some(target) = target
                        && self
                            .ranged_download(desc, sink, target, extra, &mut partial_unproven)
                            .await?
                    {
                        return Ok(());
                    }
                    may_split = false;
                    continue;
                }
                Ok(()) => match sink.verify() {
                    Ok(()) => return Ok(()),
                    Err(_) if partial_unproven => {
                        tracing::debug!(%digest, "resumed partial was wrong; starting over");
                        sink.restart().await.map_err(BlobError::Sink)?;
                        partial_unproven = false;
                        continue;
                    }
                    Err(source) => source,
                },
                Err(Failed::TooLong) => VerifyError::TooLong {
                    expected: desc.size,
                },
                Err(Failed::Sink(e)) => return Err(BlobError::Sink(e)),
                Err(Failed::Remote(e)) => {
                    if !e.is_retryable() || attempt >= max_attempts {
                        return Err(BlobError::Registry(e));
                    }
                    // A connection that broke after delivering bytes says nothing about the
                    // registry being overloaded: resume at once. Failures without progress back
                    // off, and the registry's own Retry-After wins.
                    let backoff = if sink.position() > before {
                        Duration::ZERO
                    } else {
                        self.client.backoff(attempt)
                    };
                    let reason = e.to_string();
                    let delay = waits
                        .delay(self.host(), e, backoff)
                        .map_err(BlobError::Registry)?;
                    sink.retrying(&RetryNotice {
                        attempt,
                        delay,
                        reason,
                    });
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
            };
            // Content that is not the blob: a mirror's is asked of the next endpoint, the
            // registry's fails the download.
            if !self.reject_blob_source(digest) {
                return Err(BlobError::Verify {
                    digest: digest.clone(),
                    source,
                });
            }
            tracing::warn!(%digest, error = %source, "a mirror served a corrupt blob; asking the next endpoint");
            sink.restart().await.map_err(BlobError::Sink)?;
            partial_unproven = false;
        }
    }

    /// Whether `desc` is big enough, and connections allowed, to be split into ranges.
    fn may_split(&self, desc: &Descriptor) -> bool {
        let settings = self.client.settings();
        settings.max_connections_per_blob > 1 && desc.size >= settings.ranged_download_min_size
    }

    /// The rest of the blob in ranges ([`super::ranged`]). `true` once the sink holds the
    /// verified blob; `false` when the download goes on over one stream: ranges were refused
    /// (from the sink's position) or their content failed verification (from byte 0).
    async fn ranged_download<S: BlobSink>(
        &self,
        desc: &Descriptor,
        sink: &mut S,
        target: SharedTarget<S::Error>,
        extra: Vec<OwnedSemaphorePermit>,
        partial_unproven: &mut bool,
    ) -> Result<bool, BlobError<S::Error>> {
        match self.fetch_ranged(desc, sink, target, extra).await {
            Ranged::Done => match sink.verify() {
                Ok(()) => Ok(true),
                Err(e) => {
                    // Ranges from several connections, perhaps several endpoints, and from an
                    // earlier process: whichever was wrong, the whole blob over one stream
                    // decides, once.
                    tracing::warn!(digest = %desc.digest, error = %e, "a ranged download failed verification; fetching it whole");
                    sink.restart().await.map_err(BlobError::Sink)?;
                    *partial_unproven = false;
                    Ok(false)
                }
            },
            Ranged::Fallback => Ok(false),
            Ranged::Failed(Failure::Remote(e)) => Err(BlobError::Registry(e)),
            Ranged::Failed(Failure::Sink(e)) => Err(BlobError::Sink(e)),
        }
    }

    /// One attempt: continues from what the sink holds when the endpoint honours `Range`,
    /// starts over otherwise, and streams the body into the sink. With a `watch`, a stream that
    /// turns out to hold the download back stops where it is, with the extra connections that
    /// go on in ranges ([`Failed::Split`]).
    async fn transfer<S: BlobSink>(
        &self,
        desc: &Descriptor,
        sink: &mut S,
        partial_unproven: &mut bool,
        mut watch: Option<&mut SplitWatch>,
    ) -> Result<(), Failed<S::Error>> {
        let offset = sink.position();
        let response = match self.blob(&desc.digest, offset).await {
            Ok(r) => r,
            Err(e) if Repository::may_use_urls(desc) && !e.is_retryable() => {
                // Ranges are asked of the registry's endpoints, which do not serve this blob.
                watch = None;
                self.foreign(desc, e).await.map_err(Failed::Remote)?
            }
            Err(e) => return Err(Failed::Remote(e)),
        };
        // Only an endpoint that says it serves ranges is asked for them midway: the stream is
        // dropped when it splits, and ranges refused then would cost its bytes.
        if !accepts_ranges(response.headers()) {
            watch = None;
        }
        let mut position = offset;
        if offset > 0 && !resumes_at(response.status(), response.headers(), offset) {
            sink.restart().await.map_err(Failed::Sink)?;
            *partial_unproven = false;
            position = 0;
        }
        let host = response.url().host_str().unwrap_or_default().to_owned();
        let mut stream = response.bytes_stream();
        // A server dribbling bytes never trips the idle timeout; a minimum rate ends it.
        let mut rate = MinRate::new(self.client.stall_timeout());
        while let Some(chunk) = rate
            .next(&mut stream, &host)
            .await
            .map_err(Failed::Remote)?
        {
            position = position.saturating_add(chunk.len() as u64);
            if position > desc.size {
                return Err(Failed::TooLong);
            }
            let len = chunk.len() as u64;
            let writing = watch.is_some().then(Instant::now);
            sink.write(chunk).await.map_err(Failed::Sink)?;
            if let (Some(w), Some(writing)) = (watch.as_deref_mut(), writing) {
                w.arrived(len, writing.elapsed());
                if w.verdict(desc.size - position) {
                    let extra = self.range_connections(desc, position);
                    if !extra.is_empty() {
                        tracing::debug!(digest = %desc.digest, position, connections = 1 + extra.len(), "one stream holds the download back; the rest in ranges");
                        return Err(Failed::Split(extra));
                    }
                }
            }
        }
        if position < desc.size {
            return Err(Failed::Remote(RegistryError::Verify {
                url: host,
                source: VerifyError::TooShort {
                    expected: desc.size,
                    actual: position,
                },
            }));
        }
        Ok(())
    }

    /// Starts a blob download at byte `offset` (a `Range` request when non-zero). The response is
    /// 200 (whole blob) or 206; the caller checks which and streams the body. Tried once per
    /// endpoint: the caller's retry loop covers the request and the body together, so failures
    /// are not retried twice over.
    ///
    /// Mirrors come first. A mirror that cannot be reached is skipped for good; one that answers
    /// with an error (404 included) is skipped for this blob only; one whose streams keep
    /// failing gets [`super::endpoints::MIRROR_TRIES_PER_BLOB`] attempts at a blob before the
    /// next endpoint takes over. A resumed attempt (`offset` > 0) may land on another endpoint
    /// than the bytes so far came from: the content is the same by digest, and the caller
    /// accepts only a matching 206.
    pub(crate) async fn blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response, RegistryError> {
        self.blob_range(digest, offset, None).await
    }

    /// As [`Repository::blob`], for bytes `offset..end` (to the end of the blob when `end` is
    /// `None`).
    pub(super) async fn blob_range(
        &self,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
    ) -> Result<reqwest::Response, RegistryError> {
        let path = format!("v2/{}/blobs/{digest}", self.name);
        let mut headers = HeaderMap::new();
        let range = match end {
            Some(end) => Some(format!("bytes={offset}-{}", end.saturating_sub(1))),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        if let Some(range) = range {
            let v = HeaderValue::from_str(&range).map_err(|e| RegistryError::BadUrl {
                url: path.clone(),
                detail: e.to_string(),
            })?;
            headers.insert(RANGE, v);
        }
        let upstream = self.mirrors.len();
        let (first, previous) = self.blob_start(digest);
        let scope = self.scope();
        for i in first..upstream {
            if !self.mirror_reachable(i) {
                continue;
            }
            match self
                .blob_at(&self.mirrors[i], &scope, &path, &headers, digest)
                .await
            {
                Ok(resp) => {
                    if end.is_none() {
                        self.note_blob_attempt(digest, i, previous);
                    }
                    return Ok(resp);
                }
                Err(e) => self.mirror_failed(i, "blob", &e),
            }
        }
        // The ranges of one download are one attempt at the blob, not one each: a mirror
        // keeps serving them (the whole download's attempts move between endpoints).
        if end.is_none() {
            self.note_blob_attempt(digest, upstream, previous);
        }
        self.blob_at(&self.upstream, &scope, &path, &headers, digest)
            .await
    }

    async fn blob_at(
        &self,
        endpoint: &Endpoint,
        scope: &str,
        path: &str,
        headers: &HeaderMap,
        digest: &Digest,
    ) -> Result<reqwest::Response, RegistryError> {
        match self
            .client
            .execute_at(endpoint, scope, Method::GET, path, headers.clone(), 1)
            .await
        {
            Err(RegistryError::Status { status: 404, .. }) => Err(RegistryError::BlobUnknown {
                digest: digest.to_string(),
            }),
            other => other,
        }
    }
}

/// Whether an answer says its endpoint serves byte ranges (`Accept-Ranges: bytes`).
fn accepts_ranges(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
}

/// A resumed request is usable only as a 206 whose `Content-Range` starts where we stopped.
fn resumes_at(status: StatusCode, headers: &HeaderMap, offset: u64) -> bool {
    if status != StatusCode::PARTIAL_CONTENT {
        return false;
    }
    headers
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|start| start.parse::<u64>().ok())
        == Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_is_only_a_206_starting_where_we_stopped() {
        let range = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_RANGE, HeaderValue::from_str(v).unwrap());
            h
        };
        let cases = [
            (
                StatusCode::PARTIAL_CONTENT,
                range("bytes 100-199/200"),
                true,
            ),
            (StatusCode::PARTIAL_CONTENT, range("bytes 0-199/200"), false),
            (
                StatusCode::PARTIAL_CONTENT,
                range("bytes 101-199/200"),
                false,
            ),
            (
                StatusCode::PARTIAL_CONTENT,
                range("items 100-199/200"),
                false,
            ),
            (StatusCode::PARTIAL_CONTENT, HeaderMap::new(), false),
            (StatusCode::OK, range("bytes 100-199/200"), false),
            (StatusCode::OK, HeaderMap::new(), false),
        ];
        for (status, headers, resumes) in cases {
            assert_eq!(
                resumes_at(status, &headers, 100),
                resumes,
                "{status} {headers:?}"
            );
        }
    }
}
