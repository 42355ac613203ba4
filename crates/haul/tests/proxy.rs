//! Proxies the docker way: loopback registries never go through a proxy (`localhost`,
//! 127.0.0.0/8, `::1`), other hosts do unless `no-proxy` names them, and a proxy that fails is
//! named in the error (without its credentials), not blamed on the registry.
//!
//! The proxy is a recording forward proxy on loopback ([`HttpProxy`]); it resolves
//! `registry.test` to 127.0.0.1 itself, as a site proxy's DNS would, so a pull of
//! `registry.test:PORT/...` reaches the real registry only through it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{chain, registry_error};
use haul::config::{Config, Proxies};
use haul::registry::{Anonymous, ClientOptions, RegistryClient, RegistryError};
use test_registry::{HttpProxy, HttpProxyOptions, Image, Pusher, RealRegistry, RegistryOptions};

const PASSWORD: &str = "pr0xy-s3cret";
const NAME: &str = "registry.test";

async fn registry_with(image: &Image) -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .expect("start the real registry");
    Pusher::new(&registry.url())
        .push_image("team/app", "1", image)
        .await
        .expect("push");
    registry
}

async fn proxy() -> HttpProxy {
    HttpProxy::start(HttpProxyOptions {
        credentials: Some(("alice".into(), PASSWORD.into())),
        hosts: vec![(NAME.into(), [127, 0, 0, 1].into())],
    })
    .await
    .expect("proxy")
}

fn proxied(proxy_url: &str, no_proxy: Option<&str>, insecure: &[String]) -> Config {
    Config {
        proxies: Proxies {
            http: Some(proxy_url.to_owned()),
            https: Some(proxy_url.to_owned()),
            no_proxy: no_proxy.map(str::to_owned),
        },
        insecure_registries: insecure.to_vec(),
        ..Config::default()
    }
}

/// A puller whose client resolves `registry.test` to loopback when it connects directly.
fn harness(config: Config, registry_port: u16) -> common::Harness {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = RegistryClient::new(
        config.registry_settings(),
        Arc::new(Anonymous),
        ClientOptions {
            retry_base_delay: Duration::from_millis(10),
            resolve: vec![(NAME.into(), ([127, 0, 0, 1], registry_port).into())],
            ..ClientOptions::default()
        },
    )
    .expect("client");
    common::harness_on(client)
}

#[tokio::test]
async fn a_loopback_registry_bypasses_the_proxy() {
    let image = common::two_layer_image(1, 50_000, 60_000);
    let registry = registry_with(&image).await;
    let proxy = proxy().await;
    let h = harness(
        proxied(&proxy.url_with_credentials("alice", PASSWORD), None, &[]),
        registry.port(),
    );

    for host in [registry.host(), format!("localhost:{}", registry.port())] {
        let (outcome, _) = h
            .pull(&format!("{host}/team/app:1"))
            .await
            .expect("a direct pull");
        assert_eq!(outcome.manifest.to_string(), image.digest());
    }

    assert_eq!(proxy.requests(), vec![], "nothing went through the proxy");
    assert_eq!(registry.count("GET", &image.layers[0].blob.digest), 1);
}

#[tokio::test]
async fn a_remote_name_goes_through_the_proxy_with_its_credentials() {
    let image = common::two_layer_image(2, 50_000, 60_000);
    let registry = registry_with(&image).await;
    let proxy = proxy().await;
    let host = format!("{NAME}:{}", registry.port());
    let h = harness(
        proxied(
            &proxy.url_with_credentials("alice", PASSWORD),
            None,
            std::slice::from_ref(&host),
        ),
        registry.port(),
    );

    let (outcome, _) = h
        .pull(&format!("{host}/team/app:1"))
        .await
        .unwrap_or_else(|e| panic!("{}: {:?}", chain(&e), proxy.requests()));

    assert_eq!(outcome.manifest.to_string(), image.digest());
    let seen = proxy.requests();
    for blob in image.blobs() {
        assert!(
            seen.iter().any(
                |r| r.method == "GET" && r.target.ends_with(&format!("/blobs/{}", blob.digest))
            ),
            "{} did not go through the proxy: {seen:?}",
            blob.digest
        );
    }
    assert!(seen.iter().all(|r| r.authority() == host), "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.basic_credentials() == Some(("alice".into(), PASSWORD.into()))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn no_proxy_sends_a_named_host_direct() {
    let image = common::two_layer_image(3, 50_000, 60_000);
    let registry = registry_with(&image).await;
    let proxy = proxy().await;
    let host = format!("{NAME}:{}", registry.port());
    let h = harness(
        proxied(
            &proxy.url_with_credentials("alice", PASSWORD),
            Some("example.invalid, registry.test"),
            std::slice::from_ref(&host),
        ),
        registry.port(),
    );

    h.pull(&format!("{host}/team/app:1"))
        .await
        .expect("a direct pull");

    assert_eq!(proxy.requests(), vec![]);
    assert_eq!(registry.count("GET", &image.layers[0].blob.digest), 1);
}

/// docker: `proxyconnect tcp: dial tcp 127.0.0.1:3128: connect: connection refused`. The
/// error names the proxy (never its password), and a loopback proxy refusing is not retried.
#[tokio::test]
async fn a_refused_proxy_is_named_in_the_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let proxy_url = format!("http://alice:{PASSWORD}@127.0.0.1:{port}");
    let h = harness(proxied(&proxy_url, None, &[]), 9);

    let err = h
        .pull("registry.example:5000/team/app:1")
        .await
        .expect_err("the proxy is down");

    let text = chain(&err);
    match registry_error(&err) {
        Some(RegistryError::Proxy {
            proxy,
            host,
            retryable,
            ..
        }) => {
            assert_eq!(proxy, &format!("http://xxxxx:xxxxx@127.0.0.1:{port}"));
            assert_eq!(host, "registry.example:5000");
            assert!(!retryable, "{text}");
        }
        other => panic!("a proxy error, got {other:?}: {text}"),
    }
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
