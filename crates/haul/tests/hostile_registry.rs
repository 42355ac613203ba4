//! A registry that wants to hurt the puller: endless tag lists, numbers that overflow, waits that
//! never end, URLs into the local network, digests in another algorithm, token realms in clear
//! text. One attack per test, each named after it.

mod common;

use common::{chain, registry_error};

use std::sync::Arc;
use std::time::Duration;

use common::{harness, harness_with};
use haul::config::Config;
use haul::progress::Recorder;
use haul::pull::{PullError, PullOptions, Puller};
use haul::registry::{
    Anonymous, ClientOptions, Credential, ForeignUrlRefusal, RegistryClient, RegistryError,
    StaticCredentials, TagListProblem,
};
use haul::store::Store;
use test_registry::{
    FakeAuth, Fault, Image, RealRegistry, RegistryOptions, SlowHeaders, TokenIssuer,
    TokenIssuerOptions, media_types, random_layer,
};

fn image(seed: u64) -> Image {
    common::two_layer_image(seed, 200_000, 400_000)
}

/// A bound on tests that would otherwise hang on the unfixed code: not a measurement, only a
/// way for a hang to become a failure.
const HANG: Duration = Duration::from_secs(60);

async fn pull_with_token_expiring_in(raw: &str) -> (Result<(), PullError>, usize) {
    let registry = common::fake_registry(FakeAuth::Bearer {
        users: vec![],
        anonymous: true,
    })
    .await;
    registry.add_image("team/app", "1", &image(1));
    registry.fault("/token", Fault::TokenExpiresIn(raw.to_owned()));
    let h = harness();
    let reference = format!("{}/team/app:1", registry.host());
    let first = h.pull(&reference).await.map(|_| ());
    if first.is_ok() {
        // The token is kept (its lifetime clamped, not wrapped into the past) and reused.
        h.pull(&reference).await.expect("second pull");
    }
    (first, registry.count("GET", "/token"))
}

#[tokio::test]
async fn a_token_expiring_in_2_pow_64_seconds_does_not_panic() {
    let (result, tokens) = pull_with_token_expiring_in("18446744073709551615").await;
    result.expect("the pull succeeds");
    assert_eq!(tokens, 1, "one token, reused by the second pull");
}

#[tokio::test]
async fn a_token_expiring_in_1e300_seconds_does_not_panic() {
    let (result, tokens) = pull_with_token_expiring_in("1e300").await;
    result.expect("the pull succeeds");
    assert_eq!(tokens, 1, "one token, reused by the second pull");
}

#[tokio::test]
async fn hostile_token_lifetimes_never_panic() {
    // raw expires_in, whether the pull succeeds
    let cases = [
        ("-1", true),
        ("-1e300", true),
        ("0", true),
        ("0.5", true),
        ("1.7976931348623157e308", true),
        ("99999999999999999999999999", true),
        ("\"300\"", true),
        ("\"never\"", false),
        ("[]", false),
    ];
    for (raw, ok) in cases {
        let (result, _) = pull_with_token_expiring_in(raw).await;
        match result {
            Ok(()) => assert!(ok, "expires_in {raw}: accepted"),
            Err(e) => {
                assert!(!ok, "expires_in {raw}: {}", chain(&e));
                assert!(chain(&e).contains("expires_in"), "{raw}: {}", chain(&e));
            }
        }
    }
}

#[tokio::test]
async fn a_huge_retry_after_fails_the_blob_at_once() {
    let img = image(2);
    let layer = &img.layers[1].blob.digest;
    for (fault, asked) in [
        (Fault::RetryAfter429(999_999), "999999 s"),
        (
            Fault::RetryAfter {
                status: 503,
                value: "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
            },
            "more than haul waits",
        ),
    ] {
        let registry = common::fake_registry(FakeAuth::None).await;
        registry.add_image("team/app", "1", &img);
        registry.fault(layer, fault);
        let h = harness();
        let err = tokio::time::timeout(HANG, h.pull(&format!("{}/team/app:1", registry.host())))
            .await
            .expect("the pull gives up instead of waiting")
            .unwrap_err();
        let text = chain(&err);
        assert!(
            matches!(
                registry_error(&err),
                Some(RegistryError::RetryAfterTooLong { limit, .. }) if limit.as_secs() == 60
            ),
            "{text}"
        );
        assert!(text.contains(asked), "{text}");
        assert!(text.contains("more than haul waits (60 s)"), "{text}");
        assert_eq!(registry.count("GET", layer), 1, "not asked again");
        assert!(!h.has(layer));
    }
}

#[tokio::test]
async fn a_retry_after_in_the_past_is_retried_at_once() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(3);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob.digest;
    registry.fault_times(
        layer,
        Fault::RetryAfter {
            status: 503,
            value: "Thu, 01 Jan 1970 00:00:00 GMT".to_owned(),
        },
        1,
    );
    let h = harness();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .expect("the retry succeeds");
    assert_eq!(registry.count("GET", layer), 2);
}

#[tokio::test]
async fn the_time_waited_on_one_blob_is_bounded() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(4);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob.digest;
    // Always "come back in a second", to a client configured to try a thousand times and to
    // wait at most a second per answer: five seconds of waiting in all, then it gives up.
    registry.fault(layer, Fault::RetryAfter429(1));
    let config: Config = Config::from_json(
        std::path::Path::new("test.json"),
        br#"{"max-download-attempts": 1000, "max-retry-after": 1}"#,
    )
    .expect("config");
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = tokio::time::timeout(HANG, h.pull(&format!("{}/team/app:1", registry.host())))
        .await
        .expect("the pull gives up")
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::WaitedTooLong { waited, .. }) if waited.as_secs() == 5
        ),
        "{text}"
    );
    assert!(text.contains("waited 5 s in all"), "{text}");
    let gets = registry.count("GET", layer);
    assert!((5..=7).contains(&gets), "{gets} GETs");
}

#[tokio::test]
async fn a_server_sending_a_byte_every_ten_seconds_is_given_up() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(5);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob.digest;
    // Scaled down: a byte every 100 ms against a one-second window, where the defaults are a
    // byte every ten seconds against a sixty-second window. The idle timeout never trips.
    registry.fault(
        layer,
        Fault::Slow {
            chunk: 1,
            delay: Duration::from_millis(100),
        },
    );
    let config = Config {
        download_stall_timeout: Duration::from_secs(1),
        max_download_attempts: 2,
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = tokio::time::timeout(HANG, h.pull(&format!("{}/team/app:1", registry.host())))
        .await
        .expect("the slow transfer is given up")
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(registry_error(&err), Some(RegistryError::TooSlow { received, .. }) if *received < 16 * 1024),
        "{text}"
    );
    assert!(text.contains("too slow"), "{text}");
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(layer.as_str()))
        .collect();
    assert_eq!(gets.len(), 2, "retried once: {gets:?}");
    assert!(
        gets[1].range().is_some_and(|r| r != "bytes=0-"),
        "the retry resumes what the slow attempt got: {gets:?}"
    );
    assert!(!h.has(layer));
}

#[tokio::test]
async fn a_server_that_never_sends_headers_times_out() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(6);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob.digest;
    // Its bytes come every 100 ms, well inside the idle timeout, but the head never ends.
    let slow = SlowHeaders::start(Duration::from_millis(100))
        .await
        .unwrap();
    registry.fault(layer, Fault::RedirectTo(slow.url()));
    let config = Config {
        download_stall_timeout: Duration::from_secs(1),
        max_download_attempts: 2,
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = tokio::time::timeout(HANG, h.pull(&format!("{}/team/app:1", registry.host())))
        .await
        .expect("the pull gives up on the headers")
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::NoResponseHeaders { after, .. }) if after.as_secs() == 1
        ),
        "{text}"
    );
    assert!(text.contains("no response headers"), "{text}");
    assert_eq!(slow.connections(), 2, "retried once");
}

/// A manifest whose first layer has `urls` and whose blob the registry does not have.
fn with_urls(img: &Image, media_type: &str, urls: &[String]) -> Vec<u8> {
    let mut doc = img.manifest_json();
    doc["layers"][0]["mediaType"] = media_type.into();
    doc["layers"][0]["urls"] = serde_json::json!(urls);
    serde_json::to_vec(&doc).unwrap()
}

#[tokio::test]
async fn a_registry_cannot_make_haul_fetch_a_loopback_url() {
    let storage = test_registry::BlobHost::start().await.unwrap();
    let img = image(7);
    let foreign = &img.layers[0].blob;
    storage.add_blob(foreign);
    let port = storage.url().rsplit(':').next().unwrap().to_owned();
    let on_storage = storage.url_for(&foreign.digest);
    let by_name = format!("http://localhost:{port}/blobs/{}", foreign.digest);
    let cases = [
        // A foreign layer pointing at loopback, by address and by a name resolving to it.
        (
            haul::manifest::media_type::OCI_LAYER_NONDIST_GZIP,
            vec![on_storage.clone()],
        ),
        (
            haul::manifest::media_type::DOCKER_LAYER_FOREIGN,
            vec![by_name.clone()],
        ),
        // Not a foreign layer at all: its urls are never used, wherever they point.
        (media_types::OCI_LAYER_GZIP, vec![on_storage.clone()]),
    ];
    for (media_type, urls) in cases {
        let registry = common::fake_registry(FakeAuth::None).await;
        registry.add_blob("team/win", &img.config);
        registry.add_blob("team/win", &img.layers[1].blob);
        registry.add_manifest_raw(
            "team/win",
            "1",
            media_types::OCI_MANIFEST,
            with_urls(&img, media_type, &urls),
        );
        let h = harness();
        let err = h
            .pull(&format!("{}/team/win:1", registry.host()))
            .await
            .unwrap_err();
        let foreign_layer = haul::manifest::media_type::is_non_distributable(media_type);
        let reason = match registry_error(&err) {
            Some(RegistryError::ForeignUrlRefused { url, reason }) => {
                assert_eq!(url, &urls[0]);
                Some(reason.clone())
            }
            _ => None,
        };
        assert!(
            matches!(reason, Some(ForeignUrlRefusal::Address(ip)) if ip.is_loopback())
                == foreign_layer,
            "{media_type} {urls:?}: {}",
            chain(&err)
        );
        if !foreign_layer {
            assert!(
                matches!(
                    registry_error(&err),
                    Some(RegistryError::BlobUnknown { .. })
                ),
                "the registry's own error: {}",
                chain(&err)
            );
        }
        assert!(
            storage.requests().is_empty(),
            "{media_type} {urls:?}: the local listener was reached: {}",
            chain(&err)
        );
        assert!(!h.has(&foreign.digest));
    }
}

#[tokio::test]
async fn a_repeated_tag_list_link_is_refused_naming_the_repository_and_the_url() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(8);
    for i in 0..150 {
        registry.add_image("team/loop", &format!("t{i:03}"), &img);
    }
    let link = "/v2/team/loop/tags/list?last=t099&n=100";
    registry.fault(
        "/tags/list",
        Fault::Header("link".to_owned(), format!("<{link}>; rel=\"next\"")),
    );
    let h = harness();
    let repo = format!("{}/team/loop", registry.host()).parse().unwrap();
    let err = h
        .puller
        .pull_all_tags(&repo, Arc::new(Recorder::default()))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::TagList { problem: TagListProblem::Loop, repository, .. })
                if repository == "team/loop"
        ),
        "{text}"
    );
    assert!(text.contains(link), "{text}");
    assert_eq!(
        registry.count("GET", "/tags/list"),
        2,
        "the loop is seen at once"
    );
    assert!(h.store.refs().unwrap().is_empty(), "nothing pulled");
}

#[tokio::test]
async fn a_tag_list_link_to_another_host_is_refused() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(9);
    for i in 0..150 {
        registry.add_image("team/away", &format!("t{i:03}"), &img);
    }
    let elsewhere = "http://127.0.0.2:1/v2/team/away/tags/list?last=t099&n=100";
    registry.fault(
        "/tags/list",
        Fault::Header("link".to_owned(), format!("<{elsewhere}>; rel=\"next\"")),
    );
    let h = harness();
    let repo = format!("{}/team/away", registry.host()).parse().unwrap();
    let err = h
        .puller
        .pull_all_tags(&repo, Arc::new(Recorder::default()))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::TagList { problem: TagListProblem::LinkElsewhere, url, .. })
                if url == elsewhere
        ),
        "{text}"
    );
    assert_eq!(registry.count("GET", "/tags/list"), 1);
}

#[tokio::test]
async fn an_endless_tag_list_stops_at_the_limit() {
    let registry = common::fake_registry(FakeAuth::None).await;
    registry.fault(
        "/tags/list",
        Fault::EndlessTagPages {
            tags_per_page: 1000,
            tag_len: 20,
        },
    );
    let h = harness();
    let repo = format!("{}/team/endless", registry.host()).parse().unwrap();
    let err = tokio::time::timeout(
        HANG,
        h.puller.pull_all_tags(&repo, Arc::new(Recorder::default())),
    )
    .await
    .expect("the listing ends")
    .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::TagList {
                problem: TagListProblem::TooManyTags { limit: 100_000 },
                ..
            })
        ),
        "{text}"
    );
    assert!(text.contains("team/endless"), "{text}");
    assert_eq!(registry.count("GET", "/tags/list"), 101);
}

/// A layer whose blob is named by its sha512 digest (its diff_id stays sha256, as the config's
/// `rootfs` has it).
fn sha512_layer(seed: u64) -> test_registry::Layer {
    let layer = random_layer(seed, 300_000);
    let blob = test_registry::Blob {
        digest: test_registry::sha512_digest(&layer.blob.data),
        ..layer.blob
    };
    test_registry::Layer {
        blob,
        diff_id: layer.diff_id,
    }
}

#[tokio::test]
async fn a_sha512_layer_is_pulled_verified_and_extracted() {
    // The real registry takes sha512 uploads: the digest is checked by the registry too.
    let img = common::image_of(vec![sha512_layer(12)]);
    let digest = img.layers[0].blob.digest.clone();
    assert!(digest.starts_with("sha512:"));
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .expect("registry");
    registry
        .pusher()
        .push_image("team/sha512", "1", &img)
        .await
        .expect("the registry accepts a sha512 layer");
    let h = common::unpacking_harness();
    h.pull(&format!("{}/team/sha512:1", registry.host()))
        .await
        .expect("the pull succeeds");
    assert!(h.has(&digest));
    let stored = h
        .store
        .root()
        .join("blobs/sha512")
        .join(digest.trim_start_matches("sha512:"));
    let bytes = std::fs::read(&stored).expect("stored under blobs/sha512");
    assert_eq!(test_registry::sha512_digest(&bytes), digest);
}

#[tokio::test]
async fn a_corrupt_sha512_layer_is_refused_as_corrupt() {
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = common::image_of(vec![sha512_layer(13)]);
    let digest = img.layers[0].blob.digest.clone();
    registry.add_image("team/sha512", "1", &img);
    registry.fault(&digest, Fault::CorruptByte(1000));
    let h = harness();
    let err = h
        .pull(&format!("{}/team/sha512:1", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::LayerVerification { digest: d, .. } if d.to_string() == digest),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("digest mismatch"), "{}", chain(&err));
    assert!(!h.has(&digest));
}

/// A puller whose client reaches `registry.test` at the registry's loopback port, trusts the
/// registry's throwaway CA and holds `alice`'s password for `registry.test:PORT`.
fn puller_for_named_registry(registry: &RealRegistry, config: Config) -> (common::Harness, String) {
    let host = format!("registry.test:{}", registry.port());
    let pem = std::fs::read(registry.ca_pem_path().expect("a TLS registry")).unwrap();
    let ca = pem::parse(pem).unwrap().into_contents();
    let mut users = std::collections::HashMap::new();
    users.insert(
        host.clone(),
        Credential::Basic {
            username: "alice".into(),
            password: "alice-secret".into(),
        },
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = RegistryClient::new(
        config.registry_settings(),
        Arc::new(StaticCredentials(users)),
        ClientOptions {
            retry_base_delay: Duration::from_millis(10),
            resolve: vec![(
                "registry.test".into(),
                ([127, 0, 0, 1], registry.port()).into(),
            )],
            root_certificates: vec![ca],
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let puller = Puller::new(
        client,
        store.clone(),
        PullOptions {
            unpack: None,
            ..PullOptions::default()
        },
    );
    (common::Harness { dir, store, puller }, host)
}

#[tokio::test]
async fn an_http_realm_never_receives_credentials() {
    // An HTTPS registry (verified, under a name that is not loopback) whose challenge names a
    // token service over plain HTTP.
    let issuer = TokenIssuer::start(TokenIssuerOptions {
        users: vec![("alice".into(), "alice-secret".into())],
        anonymous_pull: false,
        ..TokenIssuerOptions::default()
    })
    .await
    .unwrap();
    assert!(issuer.realm().starts_with("http://"));
    let registry = RealRegistry::start(RegistryOptions {
        tls: true,
        token: Some(issuer.registry_config()),
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    let img = image(14);
    registry
        .pusher()
        .bearer(&issuer.token_for("alice", "repository:team/app:push,pull"))
        .push_image("team/app", "1", &img)
        .await
        .unwrap();

    let (h, host) = puller_for_named_registry(&registry, Config::default());
    let err = h.pull(&format!("{host}/team/app:1")).await.unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::InsecureRealm { .. })
                | PullError::AccessDenied {
                    source: RegistryError::InsecureRealm { .. },
                    ..
                }
        ),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains(&issuer.realm()), "{}", chain(&err));
    assert_eq!(
        issuer.requests(),
        vec![],
        "the token service over HTTP was never asked"
    );
    assert_eq!(h.blob_count(), 0);

    // The same registry listed as insecure: clear text to it was accepted, and its token service
    // is on loopback, so the realm may be used.
    let insecure = Config {
        insecure_registries: vec![host.clone()],
        ..Config::default()
    };
    let (h, host) = puller_for_named_registry(&registry, insecure);
    h.pull(&format!("{host}/team/app:1"))
        .await
        .expect("an insecure registry's loopback realm is used");
    assert!(
        issuer
            .requests()
            .iter()
            .all(|r| r.user.as_deref() == Some("alice"))
    );
}

#[tokio::test]
async fn a_foreign_url_cannot_redirect_into_a_network_not_allowed() {
    let storage = test_registry::BlobHost::start().await.unwrap();
    if !storage.url().contains("127.0.0.2") {
        println!("SKIPPED: 127.0.0.2 cannot be bound here");
        return;
    }
    let registry = common::fake_registry(FakeAuth::None).await;
    let img = image(15);
    let foreign = &img.layers[0].blob;
    registry.add_blob("team/win", &img.config);
    registry.add_blob("team/win", &img.layers[1].blob);
    // The registry's 127.0.0.1 is the target the allowed host tries to bounce haul to.
    registry.add_blob("team/other", foreign);
    let inside = format!("{}/v2/team/other/blobs/{}", registry.url(), foreign.digest);
    storage.fault(&foreign.digest, Fault::RedirectTo(inside));
    registry.add_manifest_raw(
        "team/win",
        "1",
        media_types::OCI_MANIFEST,
        with_urls(
            &img,
            haul::manifest::media_type::OCI_LAYER_NONDIST_GZIP,
            &[storage.url_for(&foreign.digest)],
        ),
    );
    let config = Config {
        foreign_layer_allowed_networks: vec!["127.0.0.2".to_owned()],
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = h
        .pull(&format!("{}/team/win:1", registry.host()))
        .await
        .unwrap_err();
    assert_eq!(storage.requests().len(), 1, "the allowed host was asked");
    assert_eq!(
        registry.count("GET", "/team/other/"),
        0,
        "the redirect into 127.0.0.1 was not followed"
    );
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::ForeignUrlRefused {
                reason: ForeignUrlRefusal::Address(ip),
                ..
            }) if ip.to_string() == "127.0.0.1"
        ),
        "{}",
        chain(&err)
    );
    assert!(!h.has(&foreign.digest));
}
