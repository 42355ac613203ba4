//! The registry's blob download on its own, as an embedder without haul's store uses it: any
//! sink, here memory with its own digest check, gets a blob resumed, retried and verified.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use haul::config::Config;
use haul::digest::{Verifier, VerifyError};
use haul::manifest::Descriptor;
use haul::registry::{Anonymous, BlobError, BlobSink, RetryNotice};
use test_registry::{FakeAuth, Fault};

/// A blob in memory, hashed as it arrives.
struct Memory {
    descriptor: Descriptor,
    bytes: Vec<u8>,
    verifier: Verifier,
    restarts: usize,
    retries: Vec<RetryNotice>,
}

impl Memory {
    fn new(descriptor: &Descriptor) -> Memory {
        Memory {
            descriptor: descriptor.clone(),
            bytes: Vec::new(),
            verifier: Verifier::new(descriptor.digest.clone(), descriptor.size),
            restarts: 0,
            retries: Vec::new(),
        }
    }
}

impl BlobSink for Memory {
    type Error = std::io::Error;

    fn position(&self) -> u64 {
        self.bytes.len() as u64
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), std::io::Error> {
        self.verifier
            .update(&chunk)
            .map_err(std::io::Error::other)?;
        self.bytes.extend_from_slice(&chunk);
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), std::io::Error> {
        self.bytes.clear();
        self.verifier = Verifier::new(self.descriptor.digest.clone(), self.descriptor.size);
        self.restarts += 1;
        Ok(())
    }

    fn verify(&mut self) -> Result<(), VerifyError> {
        self.verifier.clone().finish().map(|_| ())
    }

    fn retrying(&mut self, notice: &RetryNotice) {
        self.retries.push(notice.clone());
    }
}

fn descriptor(blob: &test_registry::Blob) -> Descriptor {
    Descriptor::new(&blob.media_type, blob.digest.parse().unwrap(), blob.size)
}

#[tokio::test]
async fn a_blob_fetched_into_any_sink_resumes_a_dropped_connection_at_once() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let image = common::two_layer_image(90, 100_000, 300_000);
    registry.add_image("team/app", "1", &image);
    let layer = &image.layers[1].blob;
    registry.fault_times(&layer.digest, Fault::DropConnection(layer.size / 2), 1);
    let client = common::fast_client(Config::default(), Arc::new(Anonymous));
    let repo = client.repository(&format!("{}/team/app:1", registry.host()).parse().unwrap());
    let desc = descriptor(layer);
    let mut sink = Memory::new(&desc);
    repo.fetch_blob(&desc, &mut sink).await.unwrap();
    assert_eq!(sink.bytes, layer.data);
    assert_eq!(sink.restarts, 0, "the second request continued the first");
    assert_eq!(sink.retries.len(), 1);
    assert!(
        sink.retries[0].delay.is_zero(),
        "a break after progress is resumed without backoff"
    );
    let ranges: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .map(|r| r.range().map(str::to_owned))
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    assert!(ranges[1].is_some(), "the retry sends Range");
}

#[tokio::test]
async fn a_corrupt_blob_from_the_registry_itself_is_a_verification_error() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let image = common::two_layer_image(91, 100_000, 200_000);
    registry.add_image("team/app", "1", &image);
    let layer = &image.layers[0].blob;
    registry.fault(&layer.digest, Fault::CorruptByte(500));
    let client = common::fast_client(Config::default(), Arc::new(Anonymous));
    let repo = client.repository(&format!("{}/team/app:1", registry.host()).parse().unwrap());
    let desc = descriptor(layer);
    let mut sink = Memory::new(&desc);
    let err = repo.fetch_blob(&desc, &mut sink).await.unwrap_err();
    assert!(
        matches!(
            &err,
            BlobError::Verify { digest, source: VerifyError::Mismatch { .. } } if digest == &desc.digest
        ),
        "{err:?}"
    );
}
