//! Shared setup for the integration tests: a store in a temp dir and a puller with fast retries.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use haul::config::Config;
use haul::progress::{Event, LayerStatus, Recorder};
use haul::pull::{PullError, PullOptions, PullOutcome, Puller};
use haul::registry::{Anonymous, ClientOptions, CredentialStore, RegistryClient};
use haul::store::Store;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub puller: Puller,
}

pub fn fast_client(config: Config, credentials: Arc<dyn CredentialStore>) -> RegistryClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    RegistryClient::new(
        Arc::new(config),
        credentials,
        ClientOptions {
            retry_base_delay: Duration::from_millis(10),
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

pub fn harness() -> Harness {
    harness_with(Config::default(), Arc::new(Anonymous), None)
}

pub fn harness_with(
    config: Config,
    credentials: Arc<dyn CredentialStore>,
    platform: Option<&str>,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    let puller = puller_for(&store, config, credentials, platform);
    Harness { dir, store, puller }
}

pub fn puller_for(
    store: &Store,
    config: Config,
    credentials: Arc<dyn CredentialStore>,
    platform: Option<&str>,
) -> Puller {
    let concurrency = config.max_concurrent_downloads;
    Puller::new(
        fast_client(config, credentials),
        store.clone(),
        PullOptions {
            platform: platform.map(|p| p.parse().expect("platform")),
            max_concurrent_downloads: concurrency,
            unpack: None,
        },
    )
}

impl Harness {
    pub async fn pull(&self, reference: &str) -> Result<(PullOutcome, Vec<Event>), PullError> {
        let recorder = Arc::new(Recorder::default());
        let outcome = self
            .puller
            .pull(&reference.parse().expect("reference"), recorder.clone())
            .await?;
        Ok((outcome, recorder.events()))
    }

    /// Every file under blobs/ must hash to its name.
    pub fn assert_blobs_verified(&self) {
        let dir = self.store.root().join("blobs/sha256");
        for entry in std::fs::read_dir(&dir).expect("blobs dir") {
            let entry = entry.expect("entry");
            let bytes = std::fs::read(entry.path()).expect("blob");
            let name = entry.file_name().into_string().expect("name");
            assert_eq!(
                test_registry::sha256_digest(&bytes),
                format!("sha256:{name}"),
                "blob {name} does not hash to its name"
            );
        }
    }

    pub fn blob_count(&self) -> usize {
        std::fs::read_dir(self.store.root().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn has(&self, digest: &str) -> bool {
        self.store.has_blob(&digest.parse().expect("digest"))
    }
}

pub fn layer_statuses(events: &[Event], digest: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Layer { digest: d, status } if d.to_string() == digest => Some(match status {
                LayerStatus::Downloading { .. } => "Downloading".to_owned(),
                other => other.label(),
            }),
            _ => None,
        })
        .collect()
}
