//! Shared setup for the integration tests: a store in a temp dir and a puller with fast retries.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use haul::config::Config;
use haul::digest::Digest;
use haul::progress::{Event, LayerStatus, Recorder};
use haul::pull::{PullError, PullOptions, PullOutcome, Puller};
use haul::registry::{Anonymous, ClientOptions, CredentialStore, RegistryClient};
use haul::store::Store;
use haul::unpack::UnpackOptions;
use haul::unpack::cache::chain_ids;
use test_registry::{
    FakeAuth, FakeRegistry, FakeRegistryOptions, Format, Image, ImageBuilder, Layer, LayerBuilder,
    random_layer,
};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub puller: Puller,
}

pub fn fast_client(config: Config, credentials: Arc<dyn CredentialStore>) -> RegistryClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    RegistryClient::new(
        config.registry_settings(),
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

/// A harness on a fresh store pulling through `client` (one the test built with its own
/// settings: resolved names, certificates, proxies), downloading three layers at a time.
pub fn harness_on(client: RegistryClient) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    let puller = Puller::new(
        client,
        store.clone(),
        PullOptions {
            platform: None,
            max_concurrent_downloads: 3,
            unpack: None,
            content_trust: None,
            trust: Default::default(),
        },
    );
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
            content_trust: None,
            trust: Default::default(),
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

/// A harness whose pulls extract every layer into the layer cache, as the CLI does.
pub fn unpacking_harness() -> Harness {
    unpacking_harness_with(Config::default(), 3)
}

/// [`unpacking_harness`] with the client settings of `config`, downloading
/// `max_concurrent_downloads` layers at a time.
pub fn unpacking_harness_with(config: Config, max_concurrent_downloads: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let puller = Puller::new(
        fast_client(config, Arc::new(Anonymous)),
        store.clone(),
        PullOptions {
            platform: None,
            max_concurrent_downloads,
            unpack: Some(UnpackOptions::for_current_user()),
            content_trust: None,
            trust: Default::default(),
        },
    );
    Harness { dir, store, puller }
}

pub fn file_layer(name: &str, body: &[u8]) -> Layer {
    LayerBuilder::new()
        .add_dir("data", 0o755)
        .add_file(&format!("data/{name}"), body, 0o644)
        .finish_gzip()
}

pub fn image_of(layers: Vec<Layer>) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers(layers)
        .build()
}

/// An amd64 image of two random layers of the given sizes (seeds `seed` and `seed + 1`).
pub fn two_layer_image(seed: u64, first: usize, second: usize) -> Image {
    image_of(vec![
        random_layer(seed, first),
        random_layer(seed + 1, second),
    ])
}

/// The in-process fake registry, for faults the real one won't produce.
pub async fn fake_registry(auth: FakeAuth) -> FakeRegistry {
    FakeRegistry::start(FakeRegistryOptions { auth })
        .await
        .expect("start the fake registry")
}

pub fn chains(image: &Image) -> Vec<Digest> {
    let diff_ids: Vec<Digest> = image
        .layers
        .iter()
        .map(|l| l.diff_id.parse().unwrap())
        .collect();
    chain_ids(&diff_ids)
}

/// The whole error chain, as the user reads it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The registry error behind a pull error, wherever it is in the chain.
pub fn registry_error(e: &PullError) -> Option<&haul::registry::RegistryError> {
    // `PullError::Registry` is transparent: its `source()` skips the registry error itself.
    if let PullError::Registry(r) = e {
        return Some(r);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<haul::registry::RegistryError>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}
