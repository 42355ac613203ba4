//! Mirrors (`registry-mirrors`): tried in order before the registry, skipped when down, lacking
//! content or refusing us, never given the upstream's credentials; and the fleet setup, where
//! the real registry in pull-through-cache mode is the mirror and a second machine's pull never
//! reaches the upstream.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, harness_with, puller_for};
use haul::config::Config;
use haul::registry::{Anonymous, Credential, CredentialStore, StaticCredentials};
use haul::store::Store;
use test_registry::{FakeAuth, FakeRegistry, Fault, Image, Pusher, RealRegistry, RegistryOptions};

fn image(seed: u64) -> Image {
    common::two_layer_image(seed, 200_000, 300_000)
}

/// An upstream and one mirror, both serving `image(seed)` as `team/app:1`, and a harness whose
/// config lists the mirror for the upstream.
async fn upstream_and_mirror(seed: u64) -> (FakeRegistry, FakeRegistry, Image, Harness) {
    let upstream = common::fake_registry(FakeAuth::None).await;
    let mirror = common::fake_registry(FakeAuth::None).await;
    let img = image(seed);
    upstream.add_image("team/app", "1", &img);
    mirror.add_image("team/app", "1", &img);
    let h = harness_with(
        mirrored(&upstream.host(), &[mirror.url()]),
        Arc::new(Anonymous),
        None,
    );
    (upstream, mirror, img, h)
}

/// A config whose only setting is `mirrors` for `registry`.
fn mirrored(registry: &str, mirrors: &[String]) -> Config {
    let mut registry_mirrors = BTreeMap::new();
    registry_mirrors.insert(
        registry.to_owned(),
        mirrors
            .iter()
            .map(|m| m.parse().expect("mirror URL"))
            .collect(),
    );
    Config {
        registry_mirrors,
        ..Config::default()
    }
}

/// A loopback URL where nothing listens (the port was just released).
fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.to_owned(),
        password: password.to_owned(),
    }
}

fn decoded_basic(header: &str) -> String {
    use base64::Engine as _;
    let encoded = header.strip_prefix("Basic ").unwrap_or(header);
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

#[tokio::test]
async fn a_mirror_serving_the_image_takes_every_request_and_the_name_stays_upstream() {
    let (upstream, mirror, img, h) = upstream_and_mirror(1).await;
    let name = format!("{}/team/app:1", upstream.host());
    let (outcome, _) = h.pull(&name).await.unwrap();

    assert!(
        upstream.requests().is_empty(),
        "the upstream was contacted: {:?}",
        upstream.requests()
    );
    for blob in img.blobs() {
        assert_eq!(mirror.count("GET", &blob.digest), 1, "{}", blob.digest);
        assert!(h.has(&blob.digest));
    }
    assert!(mirror.count("HEAD", "/v2/team/app/manifests/1") >= 1);
    // Identity is the upstream's: the ref, the digests.
    assert_eq!(outcome.reference.to_string(), name);
    assert_eq!(outcome.resolved.to_string(), img.digest());
    let names: Vec<String> = h
        .store
        .refs()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec![name]);
    h.assert_blobs_verified();
}

#[tokio::test]
async fn mirrors_are_tried_in_order_and_a_down_or_failing_one_falls_through() {
    let upstream = common::fake_registry(FakeAuth::None).await;
    let failing = common::fake_registry(FakeAuth::None).await;
    let good = common::fake_registry(FakeAuth::None).await;
    let img = image(10);
    upstream.add_image("team/app", "1", &img);
    failing.add_image("team/app", "1", &img);
    good.add_image("team/app", "1", &img);
    // Every request to this one fails with 503: it answers, so it is asked again per request.
    failing.fault("/v2/team", Fault::Status(503, String::new()));
    let down = nothing_listening();
    let h = harness_with(
        mirrored(&upstream.host(), &[down, failing.url(), good.url()]),
        Arc::new(Anonymous),
        None,
    );
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    for blob in img.blobs() {
        assert_eq!(good.count("GET", &blob.digest), 1, "{}", blob.digest);
        assert_eq!(failing.count("GET", &blob.digest), 1, "{}", blob.digest);
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    h.assert_blobs_verified();
}

#[tokio::test]
async fn a_mirror_that_is_down_falls_back_to_the_registry() {
    let upstream = common::fake_registry(FakeAuth::None).await;
    let img = image(20);
    upstream.add_image("team/app", "1", &img);
    let h = harness_with(
        mirrored(&upstream.host(), &[nothing_listening()]),
        Arc::new(Anonymous),
        None,
    );
    let (outcome, _) = h
        .pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    assert_eq!(outcome.resolved.to_string(), img.digest());
    for blob in img.blobs() {
        assert_eq!(upstream.count("GET", &blob.digest), 1, "{}", blob.digest);
    }
}

#[tokio::test]
async fn a_mirror_that_times_out_is_not_asked_again_by_the_same_pull() {
    let upstream = common::fake_registry(FakeAuth::None).await;
    let mirror = common::fake_registry(FakeAuth::None).await;
    let img = image(30);
    upstream.add_image("team/app", "1", &img);
    mirror.add_image("team/app", "1", &img);
    // The mirror accepts connections but never answers its ping in time.
    mirror.fault("/v2/", Fault::Delay(Duration::from_secs(30)));
    let mut config = mirrored(&upstream.host(), &[mirror.url()]);
    config.download_stall_timeout = Duration::from_millis(500);
    let h = harness_with(config, Arc::new(Anonymous), None);
    let started = Instant::now();
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    assert_eq!(
        mirror.requests().len(),
        1,
        "one timed-out ping, then the mirror is left alone: {:?}",
        mirror.requests()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    for blob in img.blobs() {
        assert_eq!(upstream.count("GET", &blob.digest), 1, "{}", blob.digest);
    }
}

#[tokio::test]
async fn a_mirror_lacking_the_image_falls_back_and_one_lacking_a_blob_still_serves_the_others() {
    // Lacking the whole image: the manifest 404s at the mirror, the registry serves everything.
    let upstream = common::fake_registry(FakeAuth::None).await;
    let empty = common::fake_registry(FakeAuth::None).await;
    let img = image(40);
    upstream.add_image("team/app", "1", &img);
    let h = harness_with(
        mirrored(&upstream.host(), &[empty.url()]),
        Arc::new(Anonymous),
        None,
    );
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    assert!(
        empty.count("HEAD", "/manifests/1") >= 1,
        "the mirror is asked first"
    );
    for blob in img.blobs() {
        assert_eq!(upstream.count("GET", &blob.digest), 1, "{}", blob.digest);
    }

    // Lacking one blob (the config, fetched first): that blob comes from the registry, the
    // layers after it still from the mirror.
    let upstream = common::fake_registry(FakeAuth::None).await;
    let partial = common::fake_registry(FakeAuth::None).await;
    let img = image(45);
    upstream.add_image("team/app", "1", &img);
    partial.add_manifest_raw(
        "team/app",
        "1",
        &img.manifest.media_type,
        img.manifest.data.clone(),
    );
    for layer in &img.layers {
        partial.add_blob("team/app", &layer.blob);
    }
    let h = harness_with(
        mirrored(&upstream.host(), &[partial.url()]),
        Arc::new(Anonymous),
        None,
    );
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    assert_eq!(partial.count("GET", &img.config.digest), 1);
    assert_eq!(upstream.count("GET", &img.config.digest), 1);
    for layer in &img.layers {
        assert_eq!(partial.count("GET", &layer.blob.digest), 1);
        assert_eq!(
            upstream.count("GET", &layer.blob.digest),
            0,
            "a 404 for one blob does not demote the mirror"
        );
    }
    h.assert_blobs_verified();
}

#[tokio::test]
async fn a_mirror_that_keeps_dropping_a_blob_hands_it_to_the_registry_which_resumes_it() {
    let (upstream, mirror, img, h) = upstream_and_mirror(50).await;
    let layer = &img.layers[1].blob;
    mirror.fault(&layer.digest, Fault::DropConnection(layer.size / 3));
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .unwrap();
    assert!(h.has(&layer.digest));
    assert_eq!(
        mirror.count("GET", &layer.digest),
        2,
        "two tries on the mirror"
    );
    let at_upstream: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .collect();
    assert_eq!(at_upstream.len(), 1, "{at_upstream:?}");
    let range = at_upstream[0]
        .range()
        .expect("the registry continues from the mirror's bytes");
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "{range}"
    );
    assert_eq!(
        upstream.count("GET", &img.layers[0].blob.digest),
        0,
        "other blobs stay on the mirror"
    );
    h.assert_blobs_verified();
}

#[tokio::test]
async fn upstream_credentials_are_never_sent_to_a_mirror() {
    let upstream = common::fake_registry(FakeAuth::Basic(vec![(
        "alice".into(),
        "upstream-pw".into(),
    )]))
    .await;
    let img = image(60);
    upstream.add_image("team/app", "1", &img);
    let name = format!("{}/team/app:1", upstream.host());
    let creds = |extra: Option<(String, Credential)>| -> Arc<dyn CredentialStore> {
        let mut map = HashMap::new();
        map.insert(upstream.host(), basic("alice", "upstream-pw"));
        map.extend(extra);
        Arc::new(StaticCredentials(map))
    };

    // An open mirror serves everything and never sees an Authorization header.
    let open = common::fake_registry(FakeAuth::None).await;
    open.add_image("team/app", "1", &img);
    let h = harness_with(mirrored(&upstream.host(), &[open.url()]), creds(None), None);
    h.pull(&name).await.unwrap();
    assert!(!open.requests().is_empty());
    assert!(
        open.requests().iter().all(|r| r.authorization().is_none()),
        "{:?}",
        open.requests()
    );

    // A mirror that wants a login we have no credentials for: refused, the registry serves
    // the pull with its own credentials, and the mirror still never saw them.
    let guarded =
        common::fake_registry(FakeAuth::Basic(vec![("bob".into(), "mirror-pw".into())])).await;
    guarded.add_image("team/app", "1", &img);
    let h = harness_with(
        mirrored(&upstream.host(), &[guarded.url()]),
        creds(None),
        None,
    );
    h.pull(&name).await.unwrap();
    assert!(guarded.count("GET", "/v2/") >= 1, "the mirror was asked");
    assert!(
        guarded
            .requests()
            .iter()
            .all(|r| r.authorization().is_none()),
        "{:?}",
        guarded.requests()
    );
    let upstream_blob_gets: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert!(!upstream_blob_gets.is_empty());
    assert!(upstream_blob_gets.iter().all(|r| {
        r.authorization()
            .is_some_and(|a| decoded_basic(a) == "alice:upstream-pw")
    }));

    // With credentials filed under the mirror's host, the mirror gets those and serves it all.
    let guarded =
        common::fake_registry(FakeAuth::Basic(vec![("bob".into(), "mirror-pw".into())])).await;
    guarded.add_image("team/app", "1", &img);
    upstream.clear_requests();
    let h = harness_with(
        mirrored(&upstream.host(), &[guarded.url()]),
        creds(Some((guarded.host(), basic("bob", "mirror-pw")))),
        None,
    );
    h.pull(&name).await.unwrap();
    let sent: Vec<String> = guarded
        .requests()
        .iter()
        .filter_map(|r| r.authorization().map(decoded_basic))
        .collect();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|a| a == "bob:mirror-pw"), "{sent:?}");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

#[tokio::test]
async fn docker_hub_mirrors_are_asked_for_library_paths() {
    let mirror = common::fake_registry(FakeAuth::None).await;
    let img = image(70);
    mirror.add_image("library/alpine", "3.20", &img);
    // A plain list: docker's meaning, mirrors of Docker Hub.
    let config = Config::from_json(
        std::path::Path::new("/test/daemon.json"),
        format!(r#"{{"registry-mirrors": ["{}"]}}"#, mirror.url()).as_bytes(),
    )
    .unwrap();
    let h = harness_with(config, Arc::new(Anonymous), None);
    let (outcome, _) = h.pull("alpine:3.20").await.unwrap();
    assert_eq!(
        outcome.reference.to_string(),
        "docker.io/library/alpine:3.20"
    );
    assert!(mirror.count("HEAD", "/v2/library/alpine/manifests/3.20") >= 1);
    for layer in &img.layers {
        assert_eq!(mirror.count("GET", &layer.blob.digest), 1);
    }
    let names: Vec<String> = h
        .store
        .refs()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["docker.io/library/alpine:3.20".to_owned()]);
}

/// The fleet setup from the README: the real registry as a pull-through cache of the upstream,
/// configured as its mirror. The second machine (another store) is served by the cache alone.
#[tokio::test]
async fn a_pull_through_cache_serves_a_second_machine_without_the_upstream() {
    let upstream = RealRegistry::start(RegistryOptions::default())
        .await
        .expect("start the upstream registry");
    let img = image(80);
    Pusher::new(&upstream.url())
        .push_image("team/app", "1", &img)
        .await
        .unwrap();
    let cache = RealRegistry::start(RegistryOptions {
        proxy_remote: Some(upstream.url()),
        ..RegistryOptions::default()
    })
    .await
    .expect("start the pull-through cache");
    let config = mirrored(&upstream.host(), &[cache.url()]);
    let name = format!("{}/team/app:1", upstream.host());

    // Machine A: the cache fetches from the upstream as it serves.
    let a = harness_with(config.clone(), Arc::new(Anonymous), None);
    let (first, _) = a.pull(&name).await.unwrap();
    assert_eq!(first.resolved.to_string(), img.digest());
    for layer in &img.layers {
        assert_eq!(cache.count_settled("GET", &layer.blob.digest, 1), 1);
    }

    // Machine B: the upstream only sees the cache checking that the tag is current (a HEAD of
    // the manifest, no body): no blob, no manifest is fetched from it again.
    let mark = upstream.mark();
    let dir = tempfile::tempdir().unwrap();
    let store_b = Store::open(dir.path().join("store")).unwrap();
    let b = puller_for(&store_b, config.clone(), Arc::new(Anonymous), None);
    let second = b
        .pull(
            &name.parse().unwrap(),
            Arc::new(haul::progress::Recorder::default()),
        )
        .await
        .unwrap();
    let seen = upstream.requests_since(mark);
    assert!(
        seen.iter()
            .all(|r| r.method == "HEAD" || (r.method == "GET" && r.path == "/v2/")),
        "the upstream served the second machine's pull: {seen:?}"
    );
    assert_eq!(second.resolved.to_string(), img.digest());
    assert_eq!(second.manifest, first.manifest);
    for blob in img.blobs() {
        assert!(store_b.has_blob(&blob.digest.parse().unwrap()));
        assert_eq!(
            cache.count_settled("GET", &blob.digest, 2),
            2,
            "{}",
            blob.digest
        );
    }
    let names: Vec<String> = store_b
        .refs()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec![name]);

    // Machine C pulls by digest: nothing to check upstream, so not one request reaches it.
    let mark = upstream.mark();
    let dir = tempfile::tempdir().unwrap();
    let store_c = Store::open(dir.path().join("store")).unwrap();
    let c = puller_for(&store_c, config, Arc::new(Anonymous), None);
    let pinned = format!("{}/team/app@{}", upstream.host(), img.digest());
    c.pull(
        &pinned.parse().unwrap(),
        Arc::new(haul::progress::Recorder::default()),
    )
    .await
    .unwrap();
    let seen = upstream.requests_since(mark);
    assert!(seen.is_empty(), "{seen:?}");

    // And haul itself never talked to the upstream: every request there came from the cache.
    let from_haul: Vec<String> = upstream
        .log_text()
        .lines()
        .filter(|l| l.contains("\"haul/"))
        .map(str::to_owned)
        .collect();
    assert!(from_haul.is_empty(), "{from_haul:?}");
    assert!(
        cache.log_text().contains("\"haul/"),
        "the access log names haul's user agent"
    );
}

#[tokio::test]
async fn a_mirror_serving_a_corrupt_blob_is_passed_over_for_the_registry() {
    let (upstream, mirror, img, h) = upstream_and_mirror(30).await;
    let layer = &img.layers[1].blob;
    mirror.fault(&layer.digest, Fault::CorruptByte(layer.size / 3));
    h.pull(&format!("{}/team/app:1", upstream.host()))
        .await
        .expect("the registry's good copy completes the pull");

    assert_eq!(mirror.count("GET", &layer.digest), 1);
    let from_upstream: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .collect();
    assert_eq!(from_upstream.len(), 1, "{from_upstream:?}");
    assert_eq!(
        from_upstream[0].range(),
        None,
        "the corrupt bytes are not resumed from"
    );
    assert_eq!(upstream.count("GET", &img.layers[0].blob.digest), 0);
    h.assert_blobs_verified();
}
