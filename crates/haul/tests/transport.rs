//! The transport settings of the config file: `proxies` (used, credentials sent to the proxy and
//! never shown, `no-proxy` honoured) and `download-stall-timeout` (a silent connection fails the
//! attempt quickly and the retry finishes the pull).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness_with;
use haul::config::{Config, Proxies};
use haul::registry::Anonymous;
use test_registry::{
    FakeAuth, FakeRegistry, FakeRegistryOptions, Fault, HttpProxy, HttpProxyOptions, Image, Pusher,
    RealRegistry, RegistryOptions,
};

const PROXY_PASSWORD: &str = "pr0xy-s3cret";

fn image(seed: u64) -> Image {
    common::two_layer_image(seed, 200_000, 400_000)
}

async fn real_registry_with(img: &Image) -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .expect("start the real registry");
    Pusher::new(&registry.url())
        .push_image("team/app", "1", img)
        .await
        .unwrap();
    registry
}

fn proxied(proxy_url: &str, no_proxy: Option<&str>) -> Config {
    Config {
        proxies: Proxies {
            http: Some(proxy_url.to_owned()),
            https: Some(proxy_url.to_owned()),
            no_proxy: no_proxy.map(str::to_owned),
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn a_config_file_proxy_carries_the_pull_with_its_credentials() {
    let img = image(1);
    let registry = real_registry_with(&img).await;
    let proxy = HttpProxy::start(HttpProxyOptions {
        credentials: Some(("alice".into(), PROXY_PASSWORD.into())),
    })
    .await
    .unwrap();
    let h = harness_with(
        proxied(&proxy.url_with_credentials("alice", PROXY_PASSWORD), None),
        Arc::new(Anonymous),
        None,
    );
    let (outcome, _) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.resolved.to_string(), img.digest());

    // Loopback is not exempt: every request went through the proxy, with its credentials.
    let seen = proxy.requests();
    for blob in img.blobs() {
        assert!(
            seen.iter().any(
                |r| r.method == "GET" && r.target.ends_with(&format!("/blobs/{}", blob.digest))
            ),
            "{} did not go through the proxy: {seen:?}",
            blob.digest
        );
    }
    assert!(seen.iter().all(|r| r.authority() == registry.host()));
    assert!(
        seen.iter()
            .all(|r| r.basic_credentials() == Some(("alice".into(), PROXY_PASSWORD.into()))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn no_proxy_sends_a_host_direct() {
    let img = image(10);
    let registry = real_registry_with(&img).await;
    let proxy = HttpProxy::start(HttpProxyOptions::default()).await.unwrap();
    let h = harness_with(
        proxied(&proxy.url(), Some("example.invalid,127.0.0.1")),
        Arc::new(Anonymous),
        None,
    );
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    assert_eq!(registry.count("GET", &img.layers[0].blob.digest), 1);
}

#[tokio::test]
async fn an_unreachable_proxy_fails_without_showing_its_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy_url = format!("http://alice:{PROXY_PASSWORD}@127.0.0.1:{port}");
    let mut config = proxied(&proxy_url, None);
    config.max_download_attempts = 1;
    assert!(!format!("{config:?}").contains(PROXY_PASSWORD));
    let h = harness_with(config, Arc::new(Anonymous), None);
    let err = h.pull("127.0.0.1:9/team/app:1").await.unwrap_err();
    let mut chain = format!("{err} | {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" | {s}"));
        source = s.source();
    }
    assert!(!chain.contains(PROXY_PASSWORD), "{chain}");
    assert!(
        chain.contains("127.0.0.1:9"),
        "the error names the registry: {chain}"
    );
}

#[tokio::test]
async fn a_stalled_transfer_fails_fast_and_the_retry_completes_the_pull() {
    let registry = FakeRegistry::start(FakeRegistryOptions {
        auth: FakeAuth::None,
    })
    .await
    .unwrap();
    let img = image(20);
    registry.add_image("team/app", "1", &img);
    let layer = &img.layers[1].blob;
    registry.fault_times(
        &layer.digest,
        Fault::Stall {
            after_bytes: layer.size / 2,
        },
        1,
    );
    let config = Config {
        download_stall_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let h = harness_with(config, Arc::new(Anonymous), None);
    let started = Instant::now();
    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    // The default limit is a minute; the configured second is what ended the stall.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(h.has(&layer.digest));
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].range().is_some_and(|r| r != "bytes=0-"),
        "the retry resumes: {gets:?}"
    );
    h.assert_blobs_verified();
}
