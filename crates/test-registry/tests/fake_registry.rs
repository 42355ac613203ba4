//! The fake registry serves images like a registry and applies every fault it offers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use test_registry::{
    BlobHost, FakeAuth, FakeRegistry, FakeRegistryOptions, Fault, Format, Image, ImageBuilder,
    LayerBuilder, http_client, index, media_types, random_layer, sha256_digest,
};

fn image() -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .add_file("hello", b"hello\n", 0o644)
                .finish_gzip(),
        )
        .layer(random_layer(3, 300_000))
        .build()
}

async fn fake_with_image() -> (FakeRegistry, Image) {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    let img = image();
    fake.add_image("lib/app", "latest", &img);
    (fake, img)
}

fn client() -> reqwest::Client {
    http_client().unwrap()
}

fn blob_url(fake: &FakeRegistry, digest: &str) -> String {
    format!("{}/v2/lib/app/blobs/{digest}", fake.url())
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn serves_manifests_blobs_and_tags_like_a_registry() {
    let (fake, img) = fake_with_image().await;
    let url = fake.url();
    let v2 = get(&format!("{url}/v2/")).await;
    assert_eq!(v2.status(), StatusCode::OK);
    assert_eq!(
        v2.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    for reference in ["latest", img.digest()] {
        let head = client()
            .head(format!("{url}/v2/lib/app/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-type"], media_types::OCI_MANIFEST);
        assert_eq!(head.headers()["docker-content-digest"], img.digest());
        assert_eq!(
            head.headers()["content-length"],
            img.manifest.size.to_string().as_str()
        );
        let resp = client()
            .get(format!("{url}/v2/lib/app/manifests/{reference}"))
            .header("accept", media_types::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.bytes().await.unwrap(), img.manifest.data);
    }
    for blob in img.blobs() {
        let body = get(&blob_url(&fake, &blob.digest))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256_digest(&body), blob.digest);
    }

    // Range support (what resume needs), and an unsatisfiable one.
    let layer = &img.layers[1].blob;
    let resp = client()
        .get(blob_url(&fake, &layer.digest))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-{}/{}", layer.size - 1, layer.size).as_str()
    );
    assert_eq!(resp.bytes().await.unwrap(), layer.data.slice(1000..));
    let resp = client()
        .get(blob_url(&fake, &layer.digest))
        .header("range", format!("bytes={}-", layer.size))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Errors in the registry's JSON shape.
    let resp = get(&format!("{url}/v2/lib/app/manifests/nope")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = get(&format!("{url}/v2/lib/missing/manifests/latest")).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
    let resp = get(&blob_url(&fake, &format!("sha256:{}", "0".repeat(64)))).await;
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");

    // Tags with pagination.
    for i in 0..5 {
        fake.add_manifest_raw(
            "lib/app",
            &format!("v{i}"),
            media_types::OCI_MANIFEST,
            img.manifest.data.clone(),
        );
    }
    let resp = get(&format!("{url}/v2/lib/app/tags/list?n=4")).await;
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/lib/app/tags/list?last=v2&n=4>; rel=\"next\"");
    let page: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        page["tags"],
        serde_json::json!(["latest", "v0", "v1", "v2"])
    );
    let resp = get(&format!("{url}/v2/lib/app/tags/list?last=v2&n=4")).await;
    assert!(resp.headers().get("link").is_none());
    let page: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(page["tags"], serde_json::json!(["v3", "v4"]));

    // The request log keeps headers.
    let ranged: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.range().is_some())
        .collect();
    assert_eq!(ranged.len(), 2);
    assert_eq!(ranged[0].range(), Some("bytes=1000-"));
    assert_eq!(ranged[0].status, 206);
    assert_eq!(fake.count("HEAD", "/manifests/"), 2);
    assert_eq!(fake.count("GET", &layer.digest), 3);
}

#[tokio::test]
async fn index_and_oversized_manifest() {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    let a = image();
    let b = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", None)
        .layer(random_layer(9, 1000))
        .build();
    let idx = index(Format::Oci, vec![a.clone(), b]);
    fake.add_index("multi", "latest", &idx);
    let resp = get(&format!("{}/v2/multi/manifests/latest", fake.url())).await;
    assert_eq!(resp.headers()["content-type"], media_types::OCI_INDEX);
    assert_eq!(resp.bytes().await.unwrap(), idx.manifest.data);
    let resp = get(&format!("{}/v2/multi/manifests/{}", fake.url(), a.digest())).await;
    assert_eq!(resp.bytes().await.unwrap(), a.manifest.data);

    let big = a.padded_manifest(5 * 1024 * 1024);
    fake.add_manifest_raw("multi", "big", &big.media_type, big.data.clone());
    let resp = get(&format!("{}/v2/multi/manifests/big", fake.url())).await;
    assert_eq!(
        resp.headers()["content-length"],
        big.size.to_string().as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().len() as u64, big.size);
}

#[tokio::test]
async fn status_and_429_faults_can_be_counted() {
    let (fake, img) = fake_with_image().await;
    let url = format!("{}/v2/lib/app/manifests/latest", fake.url());
    fake.fault_times("/manifests/latest", Fault::Status(503, String::new()), 1);
    fake.fault_times("/manifests/latest", Fault::RetryAfter429(7), 1);
    // Both match the first request; the first immediate fault wins, both are consumed.
    let resp = get(&url).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(resp).await, "UNKNOWN");
    assert_eq!(get(&url).await.status(), StatusCode::OK);

    fake.fault_times("latest", Fault::RetryAfter429(7), 2);
    for _ in 0..2 {
        let resp = get(&url).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    }
    assert_eq!(get(&url).await.status(), StatusCode::OK);

    fake.fault(
        &img.config.digest,
        Fault::Status(500, "{\"custom\":true}".into()),
    );
    let resp = get(&blob_url(&fake, &img.config.digest)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.text().await.unwrap(), "{\"custom\":true}");
    fake.clear_faults();
    assert_eq!(
        get(&blob_url(&fake, &img.config.digest)).await.status(),
        StatusCode::OK
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200, 429, 429, 200, 500, 200]);
}

#[tokio::test]
async fn body_faults_corrupt_truncate_replace_and_retype() {
    let (fake, img) = fake_with_image().await;
    let layer = img.layers[1].blob.clone();
    let url = blob_url(&fake, &layer.digest);

    fake.fault_times(&layer.digest, Fault::CorruptByte(10), 1);
    let body = get(&url).await.bytes().await.unwrap();
    assert_eq!(body.len() as u64, layer.size);
    assert_ne!(body[10], layer.data[10]);
    assert_eq!(body[..10], layer.data[..10]);
    assert_eq!(body[11..], layer.data[11..]);

    fake.fault_times(&layer.digest, Fault::Truncate(1234), 1);
    let resp = get(&url).await;
    assert_eq!(resp.headers()["content-length"], "1234");
    assert_eq!(resp.bytes().await.unwrap(), layer.data.slice(..1234));

    let other = image().config;
    let other = test_registry::Blob::new(
        media_types::OCI_MANIFEST,
        format!("{{\"not\":\"{}\"}}", other.digest),
    );
    fake.fault_times("/manifests/latest", Fault::ManifestBody(other.clone()), 1);
    fake.fault_times(
        "/manifests/latest",
        Fault::WrongContentType("text/html".into()),
        1,
    );
    let resp = get(&format!("{}/v2/lib/app/manifests/latest", fake.url())).await;
    assert_eq!(resp.headers()["docker-content-digest"], img.digest());
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert_eq!(resp.bytes().await.unwrap(), other.data);

    fake.fault_times(
        "/manifests/latest",
        Fault::Header("Docker-Content-Digest".into(), "sha256:bad".into()),
        1,
    );
    let resp = get(&format!("{}/v2/lib/app/manifests/latest", fake.url())).await;
    assert_eq!(resp.headers()["docker-content-digest"], "sha256:bad");
    assert_eq!(resp.bytes().await.unwrap(), img.manifest.data);
}

#[tokio::test]
async fn connection_faults_drop_ignore_range_slow_and_delay() {
    let (fake, img) = fake_with_image().await;
    let layer = img.layers[1].blob.clone();
    let url = blob_url(&fake, &layer.digest);

    fake.fault_times(&layer.digest, Fault::DropConnection(100_000), 1);
    let resp = get(&url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        layer.size.to_string().as_str()
    );
    let mut resp = resp;
    let mut received = 0;
    let error = loop {
        match resp.chunk().await {
            Ok(Some(c)) => received += c.len(),
            Ok(None) => panic!("the body must end in an error"),
            Err(e) => break e,
        }
    };
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    assert_eq!(received, 100_000);

    fake.fault_times(&layer.digest, Fault::IgnoreRange, 1);
    let resp = client()
        .get(&url)
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), layer.data);

    let config = img.config.clone();
    fake.fault_times(
        &config.digest,
        Fault::Slow {
            chunk: 100,
            delay: Duration::from_millis(20),
        },
        1,
    );
    let started = Instant::now();
    let body = get(&blob_url(&fake, &config.digest))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, config.data);
    let pieces = config.size.div_ceil(100) as u32;
    assert!(
        started.elapsed() >= Duration::from_millis(20) * pieces,
        "{:?}",
        started.elapsed()
    );

    fake.fault_times("/v2/", Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    assert_eq!(
        get(&format!("{}/v2/", fake.url())).await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let timed_out = client()
        .get(format!("{}/v2/", fake.url()))
        .timeout(Duration::from_millis(50))
        .send();
    fake.fault_times("/v2/", Fault::Delay(Duration::from_millis(500)), 1);
    assert!(timed_out.await.unwrap_err().is_timeout());
}

#[tokio::test]
async fn redirects_to_blob_host_without_leaking_authorization() {
    let fake = FakeRegistry::start(FakeRegistryOptions {
        auth: FakeAuth::Basic(vec![("u".into(), "p".into())]),
    })
    .await
    .unwrap();
    let img = image();
    fake.add_image("lib/app", "latest", &img);
    let host = BlobHost::start().await.unwrap();
    assert_ne!(host.url(), fake.url());
    let layer = img.layers[1].blob.clone();
    fake.redirect_blobs_to(&host, &[&layer]);

    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect
        .get(blob_url(&fake, &layer.digest))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        host.url_for(&layer.digest).as_str()
    );

    // reqwest follows the redirect and drops Authorization for the other host.
    let resp = client()
        .get(blob_url(&fake, &layer.digest))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), layer.data);
    assert!(!host.saw_authorization());
    let hits = host.requests();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].query.as_deref(), Some("X-Amz-Signature=haul-test"));

    // Range and faults work on the blob host too; and a leak would be seen.
    host.fault(&layer.digest, Fault::Truncate(10));
    let resp = client()
        .get(host.url_for(&layer.digest))
        .header("range", "bytes=5-")
        .bearer_auth("leak")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), layer.data.slice(5..15));
    assert!(host.saw_authorization());

    // The registry itself still wants credentials.
    assert_eq!(
        get(&blob_url(&fake, &layer.digest)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bearer_auth_challenges_issues_tokens_and_revokes_them() {
    let fake = FakeRegistry::start(FakeRegistryOptions {
        auth: FakeAuth::Bearer {
            users: vec![("u".into(), "p".into())],
            anonymous: false,
        },
    })
    .await
    .unwrap();
    let img = image();
    fake.add_image("lib/app", "latest", &img);
    let manifest_url = format!("{}/v2/lib/app/manifests/latest", fake.url());

    let resp = get(&manifest_url).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/token\",service=\"fake-registry\",scope=\"repository:lib/app:pull\"",
            fake.url()
        )
    );
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");

    let token_url = format!(
        "{}/token?service=fake-registry&scope=repository:lib/app:pull",
        fake.url()
    );
    assert_eq!(get(&token_url).await.status(), StatusCode::UNAUTHORIZED);
    let bad = client()
        .get(&token_url)
        .basic_auth("u", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let resp = client()
        .get(&token_url)
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let token = body["token"].as_str().unwrap().to_string();

    let ok = client()
        .get(&manifest_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // Scoped to the repository asked for.
    fake.add_image("lib/other", "latest", &img);
    let other = client()
        .get(format!("{}/v2/lib/other/manifests/latest", fake.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    fake.revoke_tokens();
    let expired = client()
        .get(&manifest_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let auths: Vec<_> = fake
        .requests()
        .iter()
        .filter_map(|r| r.authorization().map(String::from))
        .collect();
    assert!(auths.contains(&format!("Bearer {token}")));
}
