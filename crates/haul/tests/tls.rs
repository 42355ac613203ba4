//! TLS against the real registry: verification is on by default for every registry that is not
//! loopback, `insecure-registries` is the only way around it, and plain HTTP is never a silent
//! fallback.
//!
//! The registry listens on 127.0.0.1 only; the non-loopback cases reach it as `registry.test`
//! through [`ClientOptions::resolve`], so haul treats it as any remote registry. Its certificate
//! (valid for `registry.test`) is signed by a CA generated for the test that nothing trusts.

mod common;

use common::{chain, registry_error};

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, image_of};
use haul::config::Config;
use haul::registry::{Anonymous, ClientOptions, RegistryClient, RegistryError};
use test_registry::{Image, RealRegistry, RegistryOptions, random_layer};

const NAME: &str = "registry.test";

async fn registry(tls: bool) -> RealRegistry {
    RealRegistry::start(RegistryOptions {
        tls,
        ..RegistryOptions::default()
    })
    .await
    .expect("start the real registry")
}

/// A registry with one small image pushed as `tls/app:1`.
async fn seeded(tls: bool) -> (RealRegistry, Image) {
    let registry = registry(tls).await;
    let image = image_of(vec![random_layer(7, 20_000)]);
    registry
        .pusher()
        .push_image("tls/app", "1", &image)
        .await
        .expect("push");
    (registry, image)
}

/// A harness like `common::harness_with`, but whose client resolves `registry.test` to the
/// registry's loopback address.
fn harness_resolving(registry: &RealRegistry, config: Config) -> Harness {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let addr = ([127, 0, 0, 1], registry.port()).into();
    let client = RegistryClient::new(
        config.registry_settings(),
        Arc::new(Anonymous),
        ClientOptions {
            retry_base_delay: Duration::from_millis(10),
            resolve: vec![(NAME.into(), addr)],
            ..ClientOptions::default()
        },
    )
    .expect("client");
    common::harness_on(client)
}

fn insecure(host: &str) -> Config {
    Config {
        insecure_registries: vec![host.to_owned()],
        ..Config::default()
    }
}

/// `registry.test:PORT`.
fn named_host(registry: &RealRegistry) -> String {
    format!("{NAME}:{}", registry.port())
}

fn assert_nothing_stored(h: &Harness, reference: &str) {
    assert_eq!(h.blob_count(), 0, "no blob may be stored");
    let tags = std::fs::read_to_string(h.store.root().join("index.json")).unwrap_or_default();
    assert!(
        !tags.contains("tls/app"),
        "no ref may be published for {reference}: {tags}"
    );
}

/// Loopback may use TLS without verification: the first ping over plain HTTP gets the TLS
/// server's "400 HTTP request to an HTTPS server", and haul moves on to HTTPS.
#[tokio::test]
async fn loopback_tls_registry_is_pulled_over_https() {
    let (registry, image) = seeded(true).await;
    let h = common::harness();
    let reference = format!("{}/tls/app:1", registry.host());
    let mark = registry.mark();

    let (outcome, _) = h.pull(&reference).await.expect("pull over https");

    assert_eq!(outcome.manifest.to_string(), image.digest());
    for blob in image.blobs() {
        assert!(h.has(&blob.digest), "{} stored", blob.digest);
    }
    h.assert_blobs_verified();
    // Only TLS requests reach the access log: the layer was fetched over HTTPS.
    assert_eq!(
        registry
            .requests_since(mark)
            .iter()
            .filter(|r| r.path.ends_with(&image.layers[0].blob.digest))
            .count(),
        1
    );
}

/// A registry that is not loopback gets its certificate verified against the system roots; a
/// certificate from an unknown CA is refused before any HTTP request is made.
#[tokio::test]
async fn self_signed_certificate_is_refused_for_a_remote_name() {
    let (registry, _) = seeded(true).await;
    let mark = registry.mark();
    let h = harness_resolving(&registry, Config::default());
    let reference = format!("{}/tls/app:1", named_host(&registry));

    let err = h
        .pull(&reference)
        .await
        .expect_err("an untrusted certificate");

    let text = chain(&err);
    assert!(
        matches!(registry_error(&err), Some(RegistryError::Tls { .. })),
        "a TLS error: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error names the certificate: {text}"
    );
    assert_nothing_stored(&h, &reference);
    assert_eq!(
        registry.requests_since(mark),
        vec![],
        "no request got past the handshake"
    );
}

/// `insecure-registries` turns verification off for the host listed (and only that one).
#[tokio::test]
async fn insecure_registries_accepts_the_self_signed_certificate() {
    let (registry, image) = seeded(true).await;
    let host = named_host(&registry);
    let reference = format!("{host}/tls/app:1");

    // Listing another port of the same name changes nothing.
    let other = insecure(&format!("{NAME}:{}", registry.port().wrapping_add(1)));
    let refused = harness_resolving(&registry, other);
    let err = refused.pull(&reference).await.expect_err("not listed");
    assert!(
        matches!(registry_error(&err), Some(RegistryError::Tls { .. })),
        "{}",
        chain(&err)
    );

    let h = harness_resolving(&registry, insecure(&host));
    let (outcome, _) = h
        .pull(&reference)
        .await
        .expect("pull from an insecure registry");
    assert_eq!(outcome.manifest.to_string(), image.digest());
    assert_eq!(outcome.reference.registry(), host);
    for blob in image.blobs() {
        assert!(h.has(&blob.digest), "{} stored", blob.digest);
    }
    h.assert_blobs_verified();
}

/// A plain-HTTP registry under a remote name: HTTPS fails and haul does not fall back to HTTP on
/// its own; listed in `insecure-registries`, HTTP is allowed after HTTPS failed.
#[tokio::test]
async fn plain_http_remote_registry_needs_insecure_registries() {
    let (registry, image) = seeded(false).await;
    let host = named_host(&registry);
    let reference = format!("{host}/tls/app:1");
    let mark = registry.mark();

    let h = harness_resolving(&registry, Config::default());
    let err = h
        .pull(&reference)
        .await
        .expect_err("no downgrade to plain HTTP");
    assert!(
        matches!(registry_error(&err), Some(RegistryError::Tls { .. })),
        "a TLS error (not retried, with the insecure-registries hint): {}",
        chain(&err)
    );
    assert_nothing_stored(&h, &reference);
    assert_eq!(
        registry.requests_since(mark),
        vec![],
        "no HTTP request reached the registry: {}",
        chain(&err)
    );

    let h = harness_resolving(&registry, insecure(&host));
    let (outcome, _) = h.pull(&reference).await.expect("pull over plain HTTP");
    assert_eq!(outcome.manifest.to_string(), image.digest());
    assert!(
        registry.count("GET", &image.layers[0].blob.digest) == 1,
        "the layer came over plain HTTP: {:?}",
        registry.requests_since(mark)
    );
    for blob in image.blobs() {
        assert!(h.has(&blob.digest), "{} stored", blob.digest);
    }
}

/// A certs root (docker's `certs.d` layout) with `files` in the directory named `host_dir`.
fn certs_root(host_dir: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join(host_dir);
    std::fs::create_dir(&dir).expect("host dir");
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).expect("write");
    }
    root
}

fn with_certs_dir(root: &tempfile::TempDir) -> Config {
    Config {
        certs_dir: Some(root.path().to_path_buf()),
        ..Config::default()
    }
}

/// A registry whose certificate a private CA signed: refused without that CA, pulled with its
/// `ca.crt` in the registry's certs directory, which must be named `host:port` exactly.
#[tokio::test]
async fn a_private_ca_in_the_certs_dir_is_trusted_for_that_host_and_port() {
    let (registry, image) = seeded(true).await;
    let host = named_host(&registry);
    let reference = format!("{host}/tls/app:1");
    let ca = registry.ca_pem().expect("a TLS registry");

    // The CA under the name without the port is not the registry's directory (docker's rule).
    let wrong = certs_root(NAME, &[("ca.crt", ca)]);
    let h = harness_resolving(&registry, with_certs_dir(&wrong));
    let err = h.pull(&reference).await.expect_err("not this host:port");
    assert!(
        matches!(registry_error(&err), Some(RegistryError::Tls { .. })),
        "{}",
        chain(&err)
    );
    assert_nothing_stored(&h, &reference);

    // Any `*.crt` is a CA, as in docker.
    let root = certs_root(&host, &[("private-ca.crt", ca)]);
    let h = harness_resolving(&registry, with_certs_dir(&root));
    let (outcome, _) = h.pull(&reference).await.expect("pull with the private CA");
    assert_eq!(outcome.manifest.to_string(), image.digest());
    for blob in image.blobs() {
        assert!(h.has(&blob.digest), "{} stored", blob.digest);
    }
    h.assert_blobs_verified();
}

/// Mutual TLS: a registry requiring client certificates refuses a client without one, and
/// serves the one whose `client.cert`/`client.key` are in its certs directory.
#[tokio::test]
async fn mutual_tls_needs_client_cert_and_key_from_the_certs_dir() {
    let registry = RealRegistry::start(RegistryOptions {
        tls: true,
        client_certs: true,
        ..RegistryOptions::default()
    })
    .await
    .expect("start the real registry");
    let image = image_of(vec![random_layer(11, 20_000)]);
    registry
        .pusher()
        .push_image("tls/app", "1", &image)
        .await
        .expect("push with the client certificate");
    let host = named_host(&registry);
    let reference = format!("{host}/tls/app:1");
    let ca = registry.ca_pem().expect("TLS");
    let cert = registry.client_cert_pem().expect("mutual TLS");
    let key = registry.client_key_pem().expect("mutual TLS");

    let no_client_cert = certs_root(&host, &[("ca.crt", ca)]);
    let h = harness_resolving(&registry, with_certs_dir(&no_client_cert));
    let err = h.pull(&reference).await.expect_err("no client certificate");
    assert_nothing_stored(&h, &reference);
    assert!(
        !matches!(
            registry_error(&err),
            Some(RegistryError::Certificates { .. })
        ),
        "the registry refused, not the directory: {}",
        chain(&err)
    );

    let root = certs_root(
        &host,
        &[("ca.crt", ca), ("client.cert", cert), ("client.key", key)],
    );
    let h = harness_resolving(&registry, with_certs_dir(&root));
    let (outcome, _) = h.pull(&reference).await.expect("pull with mutual TLS");
    assert_eq!(outcome.manifest.to_string(), image.digest());
    h.assert_blobs_verified();
}

/// A `.cert` without its `.key` is an error in docker's words, before anything is sent.
#[tokio::test]
async fn a_client_cert_without_its_key_fails_with_dockers_message() {
    let (registry, _) = seeded(true).await;
    let host = named_host(&registry);
    let mark = registry.mark();
    let root = certs_root(
        &host,
        &[
            ("ca.crt", registry.ca_pem().expect("TLS")),
            ("client.cert", registry.ca_pem().expect("TLS")),
        ],
    );
    let h = harness_resolving(&registry, with_certs_dir(&root));

    let err = h
        .pull(&format!("{host}/tls/app:1"))
        .await
        .expect_err("a certificate without its key");

    let text = chain(&err);
    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::Certificates {
                source: haul::registry::CertsDirError::MissingKey { .. },
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.contains("client.key for client certificate")
            && text.contains("CA certificates must use the extension .crt"),
        "{text}"
    );
    assert_eq!(registry.requests_since(mark), vec![]);
}
