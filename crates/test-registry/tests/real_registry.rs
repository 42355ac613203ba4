//! The real registry starts, accepts pushes of every shape we need, enforces Basic auth, logs
//! requests we can count, and works as a pull-through cache.

use reqwest::StatusCode;
use test_registry::{
    Format, Image, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions, http_client,
    index, media_types, random_layer, sha256_digest,
};

fn small_image(format: Format, seed: u64) -> Image {
    ImageBuilder::new(format)
        .layer(
            LayerBuilder::new()
                .add_dir("etc", 0o755)
                .add_file("etc/hello", format!("hello {seed}\n").as_bytes(), 0o644)
                .finish_gzip(),
        )
        .layer(random_layer(seed, 50_000))
        .build()
}

async fn get_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    accept: &str,
) -> reqwest::Response {
    http_client()
        .unwrap()
        .get(format!("{registry}/v2/{repo}/manifests/{reference}"))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn oci_image_round_trips_and_access_log_counts_blob_gets() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = small_image(Format::Oci, 1);
    let digest = Pusher::new(&registry.url())
        .push_image("haul/oci", "v1", &image)
        .await
        .unwrap();
    assert_eq!(digest, image.digest());

    let resp = get_manifest(&registry.url(), "haul/oci", "v1", media_types::OCI_MANIFEST).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        media_types::OCI_MANIFEST,
        "{}",
        registry.log_text()
    );
    assert_eq!(resp.headers()["docker-content-digest"], image.digest());
    assert_eq!(resp.bytes().await.unwrap(), image.manifest.data);

    let layer = &image.layers[1].blob;
    let before = registry.count("GET", &layer.digest);
    let body = http_client()
        .unwrap()
        .get(format!(
            "{}/v2/haul/oci/blobs/{}",
            registry.url(),
            layer.digest
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&body), layer.digest);
    // The registry logs a request after its handler returns, which on a busy machine can come
    // after a later request's line: wait (bounded) for this one's.
    let started = std::time::Instant::now();
    while registry.count("GET", &layer.digest) == before
        && started.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(registry.count("GET", &layer.digest) - before, 1);
    let last = registry.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.status),
        ("GET", 200),
        "{last:?}"
    );
    assert_eq!(last.path, format!("/v2/haul/oci/blobs/{}", layer.digest));
    // The push itself went through HEAD, POST, PUT.
    assert!(registry.count("HEAD", "/blobs/") >= 3);
    assert!(registry.count("PUT", "/manifests/v1") == 1);
}

#[tokio::test]
async fn docker_schema2_image_round_trips() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = small_image(Format::Docker, 2);
    assert_eq!(image.config.media_type, media_types::DOCKER_CONFIG);
    assert_eq!(
        image.layers[0].blob.media_type,
        media_types::DOCKER_LAYER_GZIP
    );
    Pusher::new(&registry.url())
        .push_image("haul/docker", "latest", &image)
        .await
        .unwrap();
    let resp = get_manifest(
        &registry.url(),
        "haul/docker",
        "latest",
        media_types::DOCKER_MANIFEST,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], media_types::DOCKER_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest.data);
}

#[tokio::test]
async fn indexes_with_two_platforms_round_trip() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    for (format, tag) in [(Format::Oci, "oci"), (Format::Docker, "docker")] {
        let amd64 = small_image(format, 3);
        let arm64 = ImageBuilder::new(format)
            .platform("linux", "arm64", Some("v8"))
            .layer(random_layer(4, 30_000))
            .build();
        let idx = index(format, vec![amd64, arm64]);
        let digest = pusher.push_index("haul/multi", tag, &idx).await.unwrap();
        assert_eq!(digest, idx.digest());
        let accept = format!(
            "{}, {}",
            format.index_media_type(),
            format.manifest_media_type()
        );
        let resp = get_manifest(&registry.url(), "haul/multi", tag, &accept).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], format.index_media_type());
        let doc: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(doc["manifests"][1]["platform"]["variant"], "v8");
        for image in &idx.images {
            let resp = get_manifest(&registry.url(), "haul/multi", image.digest(), &accept).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.bytes().await.unwrap(), image.manifest.data);
        }
    }
}

#[tokio::test]
async fn lists_120_tags() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    let image = small_image(Format::Oci, 5);
    pusher
        .push_image("haul/tags", "t000", &image)
        .await
        .unwrap();
    for i in 1..120 {
        pusher
            .push_manifest("haul/tags", &format!("t{i:03}"), &image.manifest)
            .await
            .unwrap();
    }
    let mut tags = pusher.tags("haul/tags").await.unwrap();
    // Registry 2.8 ignores `n`/`last` on tags/list: one unsorted page. (The fake registry
    // paginates; see fake_registry.rs.)
    assert_eq!(registry.count("GET", "/tags/list"), 1);
    tags.sort();
    let expected: Vec<String> = (0..120).map(|i| format!("t{i:03}")).collect();
    assert_eq!(tags, expected);
}

#[tokio::test]
async fn basic_auth_accepts_the_user_and_refuses_a_bad_password() {
    let registry = RealRegistry::start(RegistryOptions {
        htpasswd: vec![("alice".into(), "wonderland".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let client = http_client().unwrap();
    let anon = client
        .get(format!("{}/v2/", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    assert!(
        anon.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    let bad = client
        .get(format!("{}/v2/", registry.url()))
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let refused = Pusher::new(&registry.url())
        .basic("alice", "nope")
        .push_image("haul/private", "v1", &small_image(Format::Oci, 6))
        .await;
    assert!(refused.is_err());

    let image = small_image(Format::Oci, 6);
    Pusher::new(&registry.url())
        .basic("alice", "wonderland")
        .push_image("haul/private", "v1", &image)
        .await
        .unwrap();
    let ok = client
        .get(format!(
            "{}/v2/haul/private/manifests/{}",
            registry.url(),
            image.digest()
        ))
        .header("accept", media_types::OCI_MANIFEST)
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let statuses: Vec<u16> = registry
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/")
        .map(|r| r.status)
        .collect();
    // The readiness probe, the anonymous request and the bad password.
    assert_eq!(statuses, [401, 401, 401]);
}

#[tokio::test]
async fn pull_through_cache_fetches_from_the_remote_once() {
    let upstream = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = small_image(Format::Docker, 7);
    Pusher::new(&upstream.url())
        .push_image("library/app", "1.0", &image)
        .await
        .unwrap();
    let mirror = RealRegistry::start(RegistryOptions {
        proxy_remote: Some(upstream.url()),
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = get_manifest(
        &mirror.url(),
        "library/app",
        image.digest(),
        media_types::DOCKER_MANIFEST,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", mirror.log_text());
    assert_eq!(resp.bytes().await.unwrap(), image.manifest.data);
    let layer = &image.layers[0].blob;
    let client = http_client().unwrap();
    for _ in 0..2 {
        // distribution's proxy answers 500 UNKNOWN to a blob it is still caching from an earlier
        // request on a busy machine: ask again, a bounded number of times.
        let mut body = None;
        for _ in 0..50 {
            let resp = client
                .get(format!(
                    "{}/v2/library/app/blobs/{}",
                    mirror.url(),
                    layer.digest
                ))
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::OK {
                body = Some(resp.bytes().await.unwrap());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(body.expect("the mirror serves the blob"), layer.data);
    }
    assert!(mirror.count("GET", &layer.digest) >= 2);
    assert!(upstream.count("GET", &layer.digest) >= 1);
}
