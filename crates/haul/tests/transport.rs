//! The transport settings of the config file: `proxies` (credentials never shown; which hosts
//! go through the proxy is in tests/proxy.rs) and `download-stall-timeout` (a silent connection fails the
//! attempt quickly and the retry finishes the pull).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness_with;
use haul::config::{Config, Proxies};
use haul::registry::Anonymous;
use test_registry::{FakeAuth, FakeRegistry, FakeRegistryOptions, Fault, Image};

const PROXY_PASSWORD: &str = "pr0xy-s3cret";

fn image(seed: u64) -> Image {
    common::two_layer_image(seed, 200_000, 400_000)
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
async fn an_unreachable_proxy_fails_without_showing_its_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy_url = format!("http://alice:{PROXY_PASSWORD}@127.0.0.1:{port}");
    let mut config = proxied(&proxy_url, None);
    config.max_download_attempts = 1;
    assert!(!format!("{config:?}").contains(PROXY_PASSWORD));
    let h = harness_with(config, Arc::new(Anonymous), None);
    // Not loopback, so the proxy is used (loopback never is: see tests/proxy.rs).
    let err = h.pull("registry.example:9/team/app:1").await.unwrap_err();
    let mut chain = format!("{err} | {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" | {s}"));
        source = s.source();
    }
    assert!(!chain.contains(PROXY_PASSWORD), "{chain}");
    assert!(
        chain.contains(&format!("127.0.0.1:{port}")) && chain.contains("registry.example:9"),
        "the error names the proxy, and the registry it was for: {chain}"
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
