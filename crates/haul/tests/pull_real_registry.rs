//! Pulls from the real registry (Debian's docker-registry, distribution 2.8) on loopback.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{harness, harness_with, layer_statuses, puller_for};
use haul::config::Config;
use haul::progress::{Event, Recorder};
use haul::pull::PullError;
use haul::registry::Anonymous;
use test_registry::{
    Format, ImageBuilder, Pusher, RealRegistry, RegistryOptions, index, random_layer,
};

fn three_layer_image(seed: u64, format: Format) -> test_registry::Image {
    ImageBuilder::new(format)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, 300_000))
        .layer(random_layer(seed + 1, 200_000))
        .layer(random_layer(seed + 2, 100_000))
        .build()
}

async fn registry() -> RealRegistry {
    RealRegistry::start(RegistryOptions::default())
        .await
        .expect("start the real registry")
}

#[tokio::test]
async fn pulls_three_layers_once_and_a_second_pull_fetches_nothing() {
    let registry = registry().await;
    let image = three_layer_image(1, Format::Oci);
    Pusher::new(&registry.url())
        .push_image("team/app", "1.2", &image)
        .await
        .unwrap();
    let h = harness();
    let mark = registry.mark();
    let reference = format!("{}/team/app:1.2", registry.host());

    let (first, events) = h.pull(&reference).await.unwrap();
    assert!(!first.up_to_date);
    assert_eq!(first.manifest.to_string(), image.digest());
    assert_eq!(first.resolved.to_string(), image.digest());
    assert_eq!(first.blobs_downloaded, 4, "config + 3 layers");
    for blob in image.blobs() {
        assert_eq!(
            registry.count("GET", &format!("/blobs/{}", blob.digest)),
            1,
            "blob {} fetched once",
            blob.digest
        );
        assert!(h.has(&blob.digest));
    }
    let statuses = layer_statuses(&events, &image.layers[0].blob.digest);
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("Pulling fs layer")
    );
    assert!(statuses.contains(&"Verifying Checksum".to_owned()));
    assert_eq!(statuses.last().map(String::as_str), Some("Pull complete"));
    h.assert_blobs_verified();

    let after_first = registry.requests_since(mark).len();
    let (second, events) = h.pull(&reference).await.unwrap();
    assert!(second.up_to_date);
    assert_eq!(second.blobs_downloaded, 0);
    let new: Vec<_> = registry
        .requests_since(mark)
        .into_iter()
        .skip(after_first)
        .collect();
    assert!(
        new.iter().all(|r| r.method == "HEAD" || r.path == "/v2/"),
        "a warm pull only resolves the tag: {new:?}"
    );
    assert!(
        new.iter().any(|r| r.method == "HEAD"),
        "the tag is resolved with HEAD"
    );
    assert!(matches!(
        events.last(),
        Some(Event::Finished {
            up_to_date: true,
            ..
        })
    ));
    for blob in image.blobs() {
        assert_eq!(registry.count("GET", &format!("/blobs/{}", blob.digest)), 1);
    }
}

#[tokio::test]
async fn the_store_is_an_oci_layout_skopeo_reads() {
    let registry = registry().await;
    let h = harness();
    for (seed, format) in [(10, Format::Docker), (13, Format::Oci)] {
        let image = three_layer_image(seed, format);
        let tag = format!("v{seed}");
        Pusher::new(&registry.url())
            .push_image("library/tool", &tag, &image)
            .await
            .unwrap();
        let reference = format!("{}/library/tool:{tag}", registry.host());
        let (outcome, _) = h.pull(&reference).await.unwrap();
        let name = outcome.reference.to_string();
        assert_eq!(name, reference);
        assert_eq!(outcome.manifest.to_string(), image.digest());
        let (again, _) = h.pull(&reference).await.unwrap();
        assert!(again.up_to_date, "a second pull of {tag} is up to date");
        let entry = h.store.find_ref(&name).unwrap().unwrap();
        match format {
            // Docker manifests are kept as served and referenced through an OCI rewrite.
            Format::Docker => {
                assert_eq!(entry.source.as_ref().unwrap().to_string(), image.digest());
                assert!(h.has(image.digest()));
            }
            Format::Oci => assert_eq!(entry.manifest.digest.to_string(), image.digest()),
        }

        let out = Command::new("skopeo")
            .args([
                "inspect",
                &format!("oci:{}:{name}", h.store.root().display()),
            ])
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["Digest"], entry.manifest.digest.to_string());
        let layers: Vec<&str> = info["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = image
            .layers
            .iter()
            .map(|l| l.blob.digest.as_str())
            .collect();
        assert_eq!(layers, expected);
    }
    h.assert_blobs_verified();
}

#[tokio::test]
async fn picks_the_platform_from_an_index_and_lists_alternatives_when_none_matches() {
    let registry = registry().await;
    let amd64 = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(20, 50_000))
        .build();
    let arm64 = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", Some("v8"))
        .layer(random_layer(21, 50_000))
        .build();
    let armv6 = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm", Some("v6"))
        .layer(random_layer(22, 50_000))
        .build();
    let idx = index(
        Format::Oci,
        vec![amd64.clone(), arm64.clone(), armv6.clone()],
    );
    Pusher::new(&registry.url())
        .push_index("multi/app", "latest", &idx)
        .await
        .unwrap();
    let reference = format!("{}/multi/app", registry.host());

    for (platform, want) in [
        ("linux/arm64", &arm64),
        ("linux/amd64", &amd64),
        ("linux/arm/v7", &armv6),
    ] {
        let h = harness_with(Config::default(), Arc::new(Anonymous), Some(platform));
        let (outcome, _) = h.pull(&reference).await.unwrap();
        assert_eq!(outcome.manifest.to_string(), want.digest(), "{platform}");
        assert_eq!(outcome.resolved.to_string(), idx.digest(), "{platform}");
        assert!(h.has(&want.layers[0].blob.digest));
        let others = [&amd64, &arm64, &armv6];
        for other in others.iter().filter(|o| o.digest() != want.digest()) {
            assert!(
                !h.has(&other.layers[0].blob.digest),
                "{platform} fetched another platform"
            );
        }
        let r = h.store.refs().unwrap();
        assert_eq!(r[0].resolved.to_string(), idx.digest());
    }

    let h = harness_with(Config::default(), Arc::new(Anonymous), Some("linux/s390x"));
    let err = h.pull(&reference).await.unwrap_err().to_string();
    assert!(
        err.contains("no matching manifest for linux/s390x"),
        "{err}"
    );
    for p in ["linux/amd64", "linux/arm64", "linux/arm/v6"] {
        assert!(err.contains(p), "{err} should list {p}");
    }
    assert_eq!(h.blob_count(), 0, "nothing stored for a failed pull");
}

#[tokio::test]
async fn pulls_by_digest_and_by_tag_with_digest() {
    let registry = registry().await;
    let image = three_layer_image(30, Format::Oci);
    Pusher::new(&registry.url())
        .push_image("team/pinned", "v1", &image)
        .await
        .unwrap();
    let h = harness();
    let by_digest = format!("{}/team/pinned@{}", registry.host(), image.digest());
    let (outcome, events) = h.pull(&by_digest).await.unwrap();
    assert_eq!(outcome.reference.to_string(), by_digest);
    assert!(matches!(&events[0], Event::PullingFrom { label, .. } if label == image.digest()));
    assert_eq!(
        registry.count("HEAD", "/manifests/"),
        0,
        "a digest needs no resolving"
    );

    let both = format!("{}/team/pinned:v1@{}", registry.host(), image.digest());
    let (outcome, _) = h.pull(&both).await.unwrap();
    assert_eq!(outcome.manifest.to_string(), image.digest());
    let names: Vec<String> = h
        .store
        .refs()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(
        names.contains(&by_digest) && names.contains(&both),
        "{names:?}"
    );
}

#[tokio::test]
async fn all_tags_pulls_every_tag_and_shares_layers() {
    let registry = registry().await;
    let base = random_layer(40, 100_000);
    let pusher = Pusher::new(&registry.url());
    let tags: Vec<String> = (0..120).map(|i| format!("t{i:03}")).collect();
    for (i, tag) in tags.iter().enumerate() {
        let image = ImageBuilder::new(Format::Oci)
            .platform("linux", "amd64", None)
            .layer(base.clone())
            .layer(random_layer(1000 + i as u64 % 3, 1_000))
            .build();
        pusher.push_image("many/tags", tag, &image).await.unwrap();
    }
    let h = harness();
    let recorder = Arc::new(Recorder::default());
    let repo = format!("{}/many/tags", registry.host())
        .parse::<haul::reference::Reference>()
        .unwrap();
    let all = h.puller.pull_all_tags(&repo, recorder).await.unwrap();
    assert!(all.failed.is_empty() && all.skipped.is_empty(), "{all:?}");
    assert_eq!(all.pulled.len(), 120);
    // Registry 2.8 answers the whole list at once; `Link` pagination is covered against the fake
    // registry in faults.rs.
    assert_eq!(
        registry.count("GET", &format!("/blobs/{}", base.blob.digest)),
        1
    );
    assert_eq!(h.store.refs().unwrap().len(), 120);
}

#[tokio::test]
async fn unknown_tags_and_repositories_say_so() {
    let registry = registry().await;
    let image = three_layer_image(50, Format::Oci);
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let err = h
        .pull(&format!("{}/team/app:nope", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::ManifestUnknown { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "manifest for {}/team/app:nope not found: manifest unknown",
            registry.host()
        )),
        "{text}"
    );

    let err = h
        .pull(&format!("{}/team/nothing:1", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::NameUnknown { .. } | PullError::ManifestUnknown { .. }
        ),
        "{err:?}"
    );
    assert_eq!(h.store.refs().unwrap().len(), 0);
}

#[tokio::test]
async fn concurrent_pulls_sharing_layers_download_each_blob_once() {
    let registry = registry().await;
    let shared = random_layer(60, 400_000);
    let pusher = Pusher::new(&registry.url());
    let mut images = Vec::new();
    for i in 0..3u64 {
        let image = ImageBuilder::new(Format::Oci)
            .platform("linux", "amd64", None)
            .layer(shared.clone())
            .layer(random_layer(61 + i, 50_000))
            .build();
        pusher
            .push_image("team/svc", &format!("v{i}"), &image)
            .await
            .unwrap();
        images.push(image);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = haul::store::Store::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..3 {
        // Separate pullers and clients, as separate processes would have.
        let puller = puller_for(&store, Config::default(), Arc::new(Anonymous), None);
        let reference: haul::reference::Reference = format!("{}/team/svc:v{i}", registry.host())
            .parse()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            puller
                .pull(&reference, Arc::new(haul::progress::Silent))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        registry.count("GET", &format!("/blobs/{}", shared.blob.digest)),
        1
    );
    assert_eq!(store.refs().unwrap().len(), 3);
}

#[tokio::test]
async fn max_concurrent_downloads_bounds_parallel_layers() {
    let registry = registry().await;
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers((0..4).map(|i| random_layer(70 + i, 300_000)))
        .build();
    Pusher::new(&registry.url())
        .push_image("team/serial", "1", &image)
        .await
        .unwrap();
    let config = Config {
        max_concurrent_downloads: 1,
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let (_, events) = h
        .pull(&format!("{}/team/serial:1", registry.host()))
        .await
        .unwrap();
    // With one slot, a layer's transfer (first Downloading to Download complete) never overlaps
    // another's.
    let mut active: Option<String> = None;
    for e in &events {
        if let Event::Layer { digest, status } = e {
            let d = digest.to_string();
            match status {
                haul::progress::LayerStatus::Downloading { .. } => match &active {
                    None => active = Some(d),
                    Some(a) => assert_eq!(a, &d, "two layers downloading at once"),
                },
                haul::progress::LayerStatus::DownloadComplete => {
                    assert_eq!(active.take().as_deref(), Some(d.as_str()));
                }
                _ => {}
            }
        }
    }
    let waiting = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Layer {
                    status: haul::progress::LayerStatus::Waiting,
                    ..
                }
            )
        })
        .count();
    assert!(waiting >= 1, "layers beyond the one slot report Waiting");
}
