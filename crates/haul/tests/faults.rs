//! What a real registry won't do, from the in-process fake: corrupt bytes, dropped connections,
//! 5xx and 429, schema 1, oversized manifests, redirects to another host, foreign layers, expired
//! tokens, paginated tag lists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{harness, harness_with};
use haul::config::Config;
use haul::manifest::ManifestError;
use haul::progress::{Event, LayerStatus, Recorder};
use haul::pull::PullError;
use haul::registry::{Anonymous, RegistryError};
use test_registry::{
    BlobHost, FakeAuth, Fault, Format, Image, ImageBuilder, media_types, schema1_manifest,
};

fn image(seed: u64) -> Image {
    common::two_layer_image(seed, 200_000, 400_000)
}

fn retries(events: &[Event]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Layer {
                status:
                    LayerStatus::Retrying {
                        attempt,
                        delay_secs,
                        ..
                    },
                ..
            } => Some((*attempt, *delay_secs)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_corrupt_layer_fails_the_pull_and_keeps_only_verified_blobs() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(1);
    registry.add_image("team/app", "1", &img);
    let base = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(img.layers[0].clone())
        .build();
    registry.add_image("team/base", "1", &base);
    let bad = &img.layers[1].blob.digest;
    registry.fault(bad, Fault::CorruptByte(1000));
    let h = harness();
    h.pull(&format!("{}/team/base:1", registry.host()))
        .await
        .unwrap();
    let err = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::LayerVerification { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "filesystem layer verification failed for digest {bad}"
        )),
        "{err}"
    );
    assert!(!h.has(bad));
    assert!(
        h.has(&img.layers[0].blob.digest),
        "a failed pull removes nothing"
    );
    let names: Vec<String> = h
        .store
        .refs()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        vec![format!("{}/team/base:1", registry.host())],
        "no ref for a failed pull"
    );
    h.assert_blobs_verified();
    let leftovers: Vec<_> = std::fs::read_dir(h.store.root().join("ingest"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "partials removed: {leftovers:?}");

    // The next pull reuses what was verified and fetches only what is missing.
    let kept: Vec<bool> = img.blobs().iter().map(|b| h.has(&b.digest)).collect();
    registry.clear_faults();
    registry.clear_requests();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    for (blob, was_kept) in img.blobs().iter().zip(kept) {
        let expected = usize::from(!was_kept);
        assert_eq!(
            registry.count("GET", &blob.digest),
            expected,
            "{}",
            blob.digest
        );
    }
}

#[tokio::test]
async fn schema1_manifests_are_refused_with_a_pointer_to_upgrade() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(10);
    let old = schema1_manifest("team/old", "1", &img.layers);
    registry.add_manifest_raw("team/old", "1", &old.media_type, old.data.clone());
    let h = harness();
    let err = h
        .pull(&format!("{}/team/old:1", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Manifest {
                source: ManifestError::Schema1 { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema 1"), "{err}");
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test]
async fn oversized_manifests_are_refused_while_reading() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(20);
    let big = img.padded_manifest(5 * 1024 * 1024);
    registry.add_manifest_raw("team/big", "1", &big.media_type, big.data.clone());
    let h = harness();
    let err = h
        .pull(&format!("{}/team/big:1", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::TooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(30);
    let other = image(33);
    registry.add_image("team/app", "1", &img);
    registry.fault(
        &format!("/manifests/{}", img.digest()),
        Fault::ManifestBody(other.manifest.clone()),
    );
    let h = harness();
    let err = h
        .pull(&format!("{}/team/app@{}", registry.host(), img.digest()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::DigestMismatch { .. })
        ),
        "{err:?}"
    );
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test]
async fn redirected_blobs_never_carry_the_registry_credentials() {
    let registry = common::fake_registry(FakeAuth::Bearer {
        users: vec![],
        anonymous: true,
    })
    .await;
    let storage = BlobHost::start().await.unwrap();
    let img = image(40);
    registry.add_image("team/app", "1", &img);
    let layers: Vec<_> = img.layers.iter().map(|l| &l.blob).collect();
    registry.redirect_blobs_to(&storage, &layers);
    let h = harness();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    for l in &img.layers {
        assert!(h.has(&l.blob.digest));
    }
    assert_eq!(storage.requests().len(), 2, "both layers came from storage");
    assert!(
        !storage.saw_authorization(),
        "Authorization leaked to another host"
    );
    let registry_blob_gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert!(!registry_blob_gets.is_empty());
    assert!(
        registry_blob_gets
            .iter()
            .all(|r| r.authorization().is_some_and(|a| a.starts_with("Bearer "))),
        "the registry itself gets the token"
    );
}

#[tokio::test]
async fn foreign_layers_fall_back_to_their_urls_without_credentials() {
    let registry = common::fake_registry(FakeAuth::Bearer {
        users: vec![],
        anonymous: true,
    })
    .await;
    let storage = BlobHost::start().await.unwrap();
    let img = image(50);
    let foreign = &img.layers[0].blob;
    storage.add_blob(foreign);
    let mut doc = img.manifest_json();
    doc["layers"][0]["mediaType"] = haul::manifest::media_type::OCI_LAYER_NONDIST_GZIP.into();
    doc["layers"][0]["urls"] = serde_json::json!([storage.url_for(&foreign.digest)]);
    registry.add_blob("team/win", &img.config);
    registry.add_blob("team/win", &img.layers[1].blob);
    registry.add_manifest_raw(
        "team/win",
        "1",
        media_types::OCI_MANIFEST,
        serde_json::to_vec(&doc).unwrap(),
    );
    // The storage host is on loopback, which foreign layer URLs reach only when allowed.
    let config = Config {
        foreign_layer_allowed_networks: vec!["127.0.0.0/8".to_owned()],
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    h.pull(&format!("{}/team/win:1", registry.host()))
        .await
        .unwrap();
    assert!(h.has(&foreign.digest));
    assert_eq!(
        registry.count("GET", &foreign.digest),
        1,
        "the registry is asked first"
    );
    assert_eq!(storage.requests().len(), 1);
    assert!(!storage.saw_authorization());
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(60);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[0].blob.digest;
    registry.fault_times(layer, Fault::Status(503, String::new()), 2);
    let h = harness();
    let (_, events) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(registry.count("GET", layer), 3);
    assert!(h.has(layer));
    let attempts: Vec<u32> = retries(&events).into_iter().map(|(a, _)| a).collect();
    assert_eq!(attempts, vec![1, 2], "each retry is reported");
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(70);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob.digest;
    registry.fault_times(layer, Fault::RetryAfter429(1), 1);
    let h = harness();
    let (_, events) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(registry.count("GET", layer), 2);
    assert_eq!(
        retries(&events),
        vec![(1, 1)],
        "waited the 1 s the registry asked for"
    );

    // A registry that keeps refusing ends the pull with its own words, after the configured tries.
    let registry = common::fake_registry(FakeAuth::None).await;
    registry.add_image("team/app", "1", &img);
    registry.fault(layer, Fault::Status(429, String::new()));
    let config = Config {
        max_download_attempts: 3,
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("toomanyrequests"), "{err}");
    assert_eq!(registry.count("GET", layer), 3);
    assert!(!h.has(layer));
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_range() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(80);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob;
    registry.fault_times(&layer.digest, Fault::DropConnection(layer.size / 2), 1);
    let h = harness();
    let recorder = Arc::new(Recorder::default());
    h.puller
        .pull(
            &format!("{}/team/app:1", registry.host()).parse().unwrap(),
            recorder.clone(),
        )
        .await
        .unwrap();
    assert!(h.has(&layer.digest));
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range(), None);
    let range = gets[1].range().expect("the retry sends Range");
    let start: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .expect("bytes=N-");
    assert!(start > 0 && start <= layer.size / 2, "{range}");
    assert_eq!(
        retries(&recorder.events()),
        vec![(1, 0)],
        "a break after progress is resumed at once, without backoff"
    );
    h.assert_blobs_verified();
}

#[tokio::test]
async fn a_partial_left_by_a_crash_that_is_not_a_prefix_is_fetched_again_in_the_same_pull() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(85);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob;
    let h = harness();
    // What a power cut can leave: the right length of the wrong bytes.
    let partial = h
        .store
        .root()
        .join("ingest")
        .join(format!("{}.partial", layer.digest.replacen(':', "-", 1)));
    std::fs::write(&partial, vec![0u8; (layer.size / 2) as usize]).unwrap();
    h.puller
        .pull(
            &format!("{}/team/app:1", registry.host()).parse().unwrap(),
            Arc::new(Recorder::default()),
        )
        .await
        .unwrap();
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[0].range(),
        Some(format!("bytes={}-", layer.size / 2).as_str()),
        "the partial is resumed first"
    );
    assert_eq!(
        gets[1].range(),
        None,
        "then, as it proved wrong, fetched whole"
    );
    h.assert_blobs_verified();
    assert!(!partial.exists());
}

#[tokio::test]
async fn a_registry_ignoring_range_makes_the_retry_start_over() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(90);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob;
    registry.fault(&layer.digest, Fault::IgnoreRange);
    registry.fault_times(&layer.digest, Fault::DropConnection(layer.size / 2), 1);
    let h = harness();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert!(h.has(&layer.digest));
    assert_eq!(registry.count("GET", &layer.digest), 2);
    h.assert_blobs_verified();
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once() {
    let registry = common::fake_registry(FakeAuth::Bearer {
        users: vec![],
        anonymous: true,
    })
    .await;
    let a = image(100);
    let b = image(110);
    registry.add_image("team/app", "a", &a);
    registry.add_image("team/app", "b", &b);
    let h = harness();
    h.pull(&format!("{}/team/app:a", registry.host()))
        .await
        .unwrap();
    let tokens_before = registry.count("GET", "/token");
    registry.revoke_tokens();
    h.pull(&format!("{}/team/app:b", registry.host()))
        .await
        .unwrap();
    assert_eq!(registry.count("GET", "/token"), tokens_before + 1);
}

#[tokio::test]
async fn all_tags_follows_link_pagination() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(120);
    for i in 0..230 {
        registry.add_image("team/many", &format!("t{i:03}"), &img);
    }
    let h = harness();
    let repo = format!("{}/team/many", registry.host()).parse().unwrap();
    let outcomes = h
        .puller
        .pull_all_tags(&repo, Arc::new(Recorder::default()))
        .await
        .unwrap()
        .pulled;
    assert_eq!(outcomes.len(), 230);
    assert_eq!(registry.count("GET", "/tags/list"), 3, "pages of 100");
    assert_eq!(registry.count("GET", &img.layers[0].blob.digest), 1);
    assert_eq!(h.store.refs().unwrap().len(), 230);
}

#[tokio::test]
async fn all_tags_pulls_tags_at_once_and_reports_them_in_order() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let images: Vec<Image> = (0..3).map(|i| image(300 + 10 * i)).collect();
    for (i, img) in images.iter().enumerate() {
        registry.add_image("team/tags", &format!("t{i}"), img);
    }
    // t0's own layer is answered only once t2's manifest has been asked for: one tag after
    // another, the pull would wait for it in vain.
    registry.fault(
        &images[0].layers[1].blob.digest,
        Fault::AwaitRequest {
            matcher: "/manifests/t2".to_owned(),
            timeout: Duration::from_secs(10),
        },
    );
    let h = harness();
    let repo = format!("{}/team/tags", registry.host()).parse().unwrap();
    let recorder = Arc::new(Recorder::default());
    let outcomes = h
        .puller
        .pull_all_tags(&repo, recorder.clone())
        .await
        .unwrap()
        .pulled;
    let tags: Vec<_> = outcomes.iter().map(|o| o.reference.to_string()).collect();
    assert_eq!(
        tags,
        ["t0", "t1", "t2"].map(|t| format!("{}/team/tags:{t}", registry.host()))
    );
    // Each tag's lines come whole, in tag order, as docker prints them one pull after another.
    let mut seen = Vec::new();
    for event in recorder.events() {
        match event {
            Event::PullingFrom { label, .. } => seen.push(format!("start {label}")),
            Event::Finished { reference, .. } => seen.push(format!("end {reference}")),
            Event::Layer { digest, .. } => {
                let owner = images
                    .iter()
                    .position(|img| img.layers[1].blob.digest == digest.to_string());
                if let Some(i) = owner {
                    assert_eq!(seen.last(), Some(&format!("start t{i}")), "{seen:?}");
                }
            }
            _ => {}
        }
    }
    let want: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("start t{i}"),
                format!("end {}/team/tags:t{i}", registry.host()),
            ]
        })
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn artifacts_that_are_not_images_are_refused() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(130);
    let mut doc = img.manifest_json();
    doc["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json".into();
    registry.add_blob("charts/app", &img.config);
    registry.add_manifest_raw(
        "charts/app",
        "1",
        media_types::OCI_MANIFEST,
        serde_json::to_vec(&doc).unwrap(),
    );
    let h = harness();
    let err = h
        .pull(&format!("{}/charts/app:1", registry.host()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("helm"), "{err}");
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test]
async fn a_head_without_a_digest_falls_back_to_get_by_tag() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(140);
    registry.add_image("team/app", "1", &img);
    registry.fault(
        "/manifests/1",
        Fault::Header("Docker-Content-Digest".into(), String::new()),
    );
    let h = harness();
    let (outcome, _) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.resolved.to_string(), img.digest());
    assert_eq!(registry.count("HEAD", "/manifests/1"), 1);
    assert_eq!(registry.count("GET", "/manifests/1"), 1);
    assert_eq!(
        registry.count("GET", &format!("/manifests/{}", img.digest())),
        0,
        "the bytes from the GET by tag are used, not fetched again"
    );
}

#[tokio::test]
async fn a_pull_by_digest_of_stored_content_needs_no_registry() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(150);
    registry.add_image("team/app", "1", &img);
    let h = harness();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    registry.clear_requests();
    let (outcome, _) = h
        .pull(&format!("{}/team/app@{}", registry.host(), img.digest()))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
    assert_eq!(outcome.blobs_downloaded, 0);
    assert!(registry.requests().is_empty(), "{:?}", registry.requests());
}
