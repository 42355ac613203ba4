//! Progress events: what the library tells its caller while it works. The library never prints;
//! the CLI renders these as docker-style lines, terminal bars or JSON.
//!
//! Events for one layer arrive in the order docker users know (`Pulling fs layer`, `Waiting`,
//! `Downloading`, `Verifying Checksum`, `Download complete`, `Pull complete`, or `Already exists`),
//! and a reporter may be called from several threads at once.

use serde::Serialize;

use crate::digest::Digest;

/// What happened to one blob of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LayerStatus {
    AlreadyExists,
    PullingFsLayer,
    Waiting,
    Downloading {
        current: u64,
        total: u64,
    },
    Retrying {
        attempt: u32,
        delay_secs: u64,
        reason: String,
    },
    VerifyingChecksum,
    DownloadComplete,
    /// Applying the layer; `current` counts compressed bytes consumed.
    Extracting {
        current: u64,
        total: u64,
    },
    PullComplete,
}

impl LayerStatus {
    /// docker's wording for the status, without the progress bar.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// No tag or digest was given, so `latest` is used.
    UsingDefaultTag { tag: String },
    /// `latest: Pulling from library/alpine`: `label` is the tag or digest.
    PullingFrom { label: String, repository: String },
    /// The blobs this pull will fetch, once known: lets a renderer show a total and an ETA.
    Plan {
        layers: u64,
        bytes_total: u64,
        bytes_present: u64,
    },
    Layer {
        digest: Digest,
        #[serde(flatten)]
        status: LayerStatus,
    },
    /// What the reference resolved to (`Digest: sha256:…`).
    Resolved { digest: Digest },
    /// The pull is done; `up_to_date` when nothing had to be fetched.
    Finished {
        up_to_date: bool,
        familiar: String,
        reference: String,
    },
}

/// Receives progress events. Implementations must be cheap: events arrive from the download tasks.
pub trait Reporter: Send + Sync {
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
