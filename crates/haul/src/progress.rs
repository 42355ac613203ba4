//! Progress events: what the library tells its caller while it works. The library never prints;
//! the CLI renders these as docker-style lines, terminal bars or JSON.
//!
//! Events for one layer arrive in the order docker users know (`Pulling fs layer`, `Waiting`,
//! `Downloading`, `Verifying Checksum`, `Download complete`, `Pull complete`, or `Already exists`),
//! and a reporter may be called from several threads at once.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use haul::progress::{Event, LayerStatus, Reporter};
//!
//! /// Counts the layers that finished; called from several tasks at once, so state is atomic.
//! #[derive(Default)]
//! struct Done(AtomicU64);
//!
//! impl Reporter for Done {
//!     fn report(&self, event: Event) {
//!         if let Event::Layer { status: LayerStatus::PullComplete, .. } = event {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let done = Done::default();
//! done.report(Event::Layer {
//!     digest: haul::digest::Digest::sha256_of(b"layer"),
//!     status: LayerStatus::PullComplete,
//! });
//! assert_eq!(done.0.load(Ordering::Relaxed), 1);
//! ```

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::digest::Digest;

/// What happened to one blob of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LayerStatus {
    /// The layer is in the store already (and extracted, when the pull extracts): nothing to do.
    AlreadyExists,
    /// The layer will be downloaded.
    PullingFsLayer,
    /// Waiting for a download slot (`max-concurrent-downloads`).
    Waiting,
    /// Bytes arriving; sent many times a second.
    Downloading {
        /// Bytes of the blob held so far (a resumed download starts above 0).
        current: u64,
        /// The blob's size in bytes.
        total: u64,
    },
    /// An attempt failed and the download is tried again after a pause.
    Retrying {
        /// The attempt that failed, from 1.
        attempt: u32,
        /// Seconds until the next attempt, rounded up (0 after a transfer that made progress).
        delay_secs: u64,
        /// Why the attempt failed.
        reason: String,
    },
    /// Every byte arrived; the digest is being checked.
    VerifyingChecksum,
    /// The blob is verified and in the store.
    DownloadComplete,
    /// Applying the layer; `current` counts compressed bytes consumed.
    Extracting {
        /// Compressed bytes consumed so far.
        current: u64,
        /// The blob's size in bytes.
        total: u64,
    },
    /// The layer is done: downloaded and, when the pull extracts, extracted.
    PullComplete,
}

impl LayerStatus {
    /// docker's wording for the status, without the progress bar.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            LayerStatus::AlreadyExists => "Already exists".to_owned(),
            LayerStatus::PullingFsLayer => "Pulling fs layer".to_owned(),
            LayerStatus::Waiting => "Waiting".to_owned(),
            LayerStatus::Downloading { .. } => "Downloading".to_owned(),
            LayerStatus::Retrying { delay_secs, .. } => {
                format!(
                    "Retrying in {delay_secs} second{}",
                    if *delay_secs == 1 { "" } else { "s" }
                )
            }
            LayerStatus::VerifyingChecksum => "Verifying Checksum".to_owned(),
            LayerStatus::DownloadComplete => "Download complete".to_owned(),
            LayerStatus::Extracting { .. } => "Extracting".to_owned(),
            LayerStatus::PullComplete => "Pull complete".to_owned(),
        }
    }
}

/// Something a pull did, in the order it did it. Serialises as one JSON object tagged by
/// `event` (`{"event":"resolved","digest":"sha256:…"}`), as `haul pull --progress json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// No tag or digest was given, so `latest` is used.
    UsingDefaultTag {
        /// The tag used.
        tag: String,
    },
    /// `latest: Pulling from library/alpine`: `label` is the tag or digest.
    PullingFrom {
        /// The tag, or the digest when pulling by digest.
        label: String,
        /// The repository as docker shows it (`library/alpine`, `team/app`).
        repository: String,
    },
    /// The blobs this pull will fetch, once known: lets a renderer show a total and an ETA.
    Plan {
        /// Distinct layers of the image.
        layers: u64,
        /// Their compressed size in all, in bytes.
        bytes_total: u64,
        /// How much of that the store already holds.
        bytes_present: u64,
    },
    /// A layer (by its compressed digest) moved on; see [`LayerStatus`].
    Layer {
        /// The layer's digest.
        digest: Digest,
        /// What happened to it.
        #[serde(flatten)]
        status: LayerStatus,
    },
    /// Content trust accepted `digest` for `image` before anything was downloaded: `signers` are
    /// the accepted signers; `warning` is set instead when the policy for `scope` lets an image
    /// without an accepted signature through (`unsigned: warn`). With `unsigned: allow` both are
    /// empty.
    Trusted {
        /// The image as docker shows it (`alpine:3.20`).
        image: String,
        /// Its repository as docker shows it (`alpine`).
        repository: String,
        /// The digest checked, which is what is pulled.
        digest: Digest,
        /// The accepted signers, as the trust module's `Signer` displays them.
        signers: Vec<String>,
        /// Why the image would have been refused, under `unsigned: warn`.
        warning: Option<String>,
        /// The policy rule applied (its prefix, or `*`).
        scope: String,
    },
    /// `--all-tags` left a tag alone: it names a signature, an attestation or another artifact.
    TagSkipped {
        /// The tag's full reference.
        reference: String,
        /// Why it was skipped.
        reason: String,
    },
    /// The image (not from an index) was built for another platform than the host's, and no
    /// platform was asked for; docker warns and pulls it.
    PlatformMismatch {
        /// The host's platform.
        wanted: String,
        /// The image's.
        actual: String,
    },
    /// What the reference resolved to (`Digest: sha256:…`).
    Resolved {
        /// The index or manifest digest.
        digest: Digest,
    },
    /// The pull is done; `up_to_date` when nothing had to be fetched.
    Finished {
        /// Nothing had to be fetched (`Image is up to date`).
        up_to_date: bool,
        /// The reference as docker shows it (`alpine:latest`).
        familiar: String,
        /// The full reference (`docker.io/library/alpine:latest`).
        reference: String,
    },
}

/// Receives progress events. Implementations must be cheap: events arrive from the download tasks.
pub trait Reporter: Send + Sync {
    /// Takes one event. Called from several tasks and threads at once, possibly from inside
    /// async code: must not block for long, and must not panic.
    fn report(&self, event: Event);
}

/// Discards every event.
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _event: Event) {}
}

/// Collects events in memory, for tests and for callers that render afterwards.
#[derive(Default)]
pub struct Recorder {
    events: std::sync::Mutex<Vec<Event>>,
}

impl Recorder {
    /// Every event so far, in the order they arrived.
    #[must_use]
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Reporter for Recorder {
    fn report(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

/// Shows the events of several concurrent pulls as if they ran one after another: the first
/// unfinished pull's events pass through as they come, later pulls' wait until every pull before
/// them has finished. `--all-tags` pulls tags concurrently and still reads like docker's.
pub(crate) struct InOrder {
    inner: Arc<dyn Reporter>,
    state: Mutex<OrderState>,
}

struct OrderState {
    head: usize,
    waiting: Vec<Vec<Event>>,
    finished: Vec<bool>,
}

impl InOrder {
    pub(crate) fn new(inner: Arc<dyn Reporter>, count: usize) -> Arc<InOrder> {
        Arc::new(InOrder {
            inner,
            state: Mutex::new(OrderState {
                head: 0,
                waiting: vec![Vec::new(); count],
                finished: vec![false; count],
            }),
        })
    }

    /// The reporter for pull number `index`.
    pub(crate) fn part(self: &Arc<Self>, index: usize) -> Arc<dyn Reporter> {
        Arc::new(Part {
            order: self.clone(),
            index,
        })
    }

    /// Pull number `index` is over (done or failed): the next one's events are shown.
    pub(crate) fn finish(&self, index: usize) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(done) = state.finished.get_mut(index) {
            *done = true;
        }
        while state.finished.get(state.head).copied().unwrap_or(false) {
            state.head += 1;
            let head = state.head;
            if let Some(waiting) = state.waiting.get_mut(head) {
                for event in std::mem::take(waiting) {
                    self.inner.report(event);
                }
            }
        }
    }

    fn report(&self, index: usize, event: Event) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        // Under the lock, so a flush in `finish` cannot overtake a live event.
        if index == state.head {
            self.inner.report(event);
            return;
        }
        let Some(waiting) = state.waiting.get_mut(index) else {
            return;
        };
        // Only the latest progress of a layer matters once it is replayed.
        if let (
            Event::Layer { digest, status },
            Some(Event::Layer {
                digest: last_digest,
                status: last_status,
            }),
        ) = (&event, waiting.last())
            && digest == last_digest
            && is_progress(status)
            && std::mem::discriminant(status) == std::mem::discriminant(last_status)
        {
            waiting.pop();
        }
        waiting.push(event);
    }
}

fn is_progress(status: &LayerStatus) -> bool {
    matches!(
        status,
        LayerStatus::Downloading { .. } | LayerStatus::Extracting { .. }
    )
}

struct Part {
    order: Arc<InOrder>,
    index: usize,
}

impl Reporter for Part {
    fn report(&self, event: Event) {
        self.order.report(self.index, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulling(label: &str) -> Event {
        Event::PullingFrom {
            label: label.to_owned(),
            repository: "r".to_owned(),
        }
    }

    fn downloading(current: u64) -> Event {
        Event::Layer {
            digest: Digest::sha256_of(b"layer"),
            status: LayerStatus::Downloading { current, total: 10 },
        }
    }

    #[test]
    fn concurrent_pulls_read_as_if_sequential() {
        let recorder = Arc::new(Recorder::default());
        let order = InOrder::new(recorder.clone(), 3);
        let (a, b, c) = (order.part(0), order.part(1), order.part(2));
        c.report(pulling("c"));
        b.report(pulling("b"));
        a.report(pulling("a"));
        b.report(downloading(1));
        b.report(downloading(5));
        c.report(downloading(9));
        // The last pull ends first: nothing of it shows before the others.
        order.finish(2);
        assert_eq!(recorder.events(), vec![pulling("a")]);
        a.report(downloading(2));
        order.finish(0);
        // b's waiting events come out (progress folded to its latest), then b is live.
        b.report(downloading(7));
        order.finish(1);
        assert_eq!(
            recorder.events(),
            vec![
                pulling("a"),
                downloading(2),
                pulling("b"),
                downloading(5),
                downloading(7),
                pulling("c"),
                downloading(9),
            ]
        );
    }
}
