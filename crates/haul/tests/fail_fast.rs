//! Errors that trying again cannot fix fail at the first attempt: a name that does not exist, a
//! refused connection on loopback, a certificate that does not verify. A transient failure (a
//! 503) is still retried.
//!
//! Attempts are counted from the client's retry events (each `tracing` event carrying an
//! `attempt` field is one retry scheduled), never by timing. Each test runs on a current-thread
//! runtime, so every event of its pull reaches the subscriber it installs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{chain, registry_error};
use haul::config::Config;
use haul::registry::{Anonymous, ClientOptions, RegistryClient, RegistryError};
use test_registry::{
    FakeAuth, FakeRegistry, FakeRegistryOptions, Fault, RealRegistry, RegistryOptions, random_layer,
};
use tracing_subscriber::layer::SubscriberExt;

/// Counts the retries the client schedules: events with an `attempt` field.
#[derive(Clone, Default)]
struct Retries(Arc<AtomicUsize>);

impl Retries {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Retries {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.fields().any(|f| f.name() == "attempt") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Installs a retry counter for the current thread.
fn count_retries() -> (Retries, tracing::subscriber::DefaultGuard) {
    let retries = Retries::default();
    let subscriber = tracing_subscriber::registry().with(retries.clone());
    (retries, tracing::subscriber::set_default(subscriber))
}

/// A puller with 5 attempts per request (docker's default), fast backoff, and `registry.test`
/// resolved to `resolve_to` when given.
fn harness(resolve_to: Option<u16>) -> common::Harness {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = RegistryClient::new(
        Config::default().registry_settings(),
        Arc::new(Anonymous),
        ClientOptions {
            retry_base_delay: Duration::from_millis(10),
            resolve: resolve_to
                .map(|port| vec![("registry.test".to_owned(), ([127, 0, 0, 1], port).into())])
                .unwrap_or_default(),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    common::harness_on(client)
}

/// Whether this machine's resolver says outright that a `.invalid` name does not exist. Without
/// a reachable DNS server it can only say "try again" (EAI_AGAIN), which is rightly retried.
fn resolver_answers_no_such_host() -> bool {
    match dns_lookup::lookup_host("haul-probe.invalid") {
        Err(e) => matches!(
            e.kind(),
            dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData
        ),
        Ok(_) => false,
    }
}

#[tokio::test]
async fn an_unknown_host_fails_at_once_with_dockers_words() {
    if !resolver_answers_no_such_host() {
        println!("SKIPPED: the resolver here cannot say that a name does not exist");
        return;
    }
    let (retries, _guard) = count_retries();
    let h = harness(None);

    let err = h
        .pull("nosuchhost.invalid/team/app:1")
        .await
        .expect_err("no such host");

    assert!(
        matches!(registry_error(&err), Some(RegistryError::NoSuchHost { name, .. }) if name == "nosuchhost.invalid"),
        "{}",
        chain(&err)
    );
    assert!(
        chain(&err).contains("dial tcp: lookup nosuchhost.invalid: no such host"),
        "{}",
        chain(&err)
    );
    assert_eq!(retries.count(), 0, "no retry: {}", chain(&err));
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test]
async fn a_refused_loopback_port_fails_after_one_attempt() {
    let (retries, _guard) = count_retries();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let h = harness(None);

    let err = h
        .pull(&format!("127.0.0.1:{port}/team/app:1"))
        .await
        .expect_err("nothing listens");

    assert!(
        matches!(
            registry_error(&err),
            Some(RegistryError::ConnectionRefused { .. })
        ),
        "{}",
        chain(&err)
    );
    assert_eq!(retries.count(), 0, "no retry: {}", chain(&err));
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_after_one_attempt() {
    let registry = RealRegistry::start(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    })
    .await
    .expect("start the real registry");
    let (retries, _guard) = count_retries();
    let h = harness(Some(registry.port()));

    let err = h
        .pull(&format!("registry.test:{}/team/app:1", registry.port()))
        .await
        .expect_err("a CA nothing trusts");

    assert!(
        matches!(registry_error(&err), Some(RegistryError::Tls { .. })),
        "{}",
        chain(&err)
    );
    assert_eq!(retries.count(), 0, "no retry: {}", chain(&err));
}

#[tokio::test]
async fn a_transient_503_is_still_retried() {
    let registry = FakeRegistry::start(FakeRegistryOptions {
        auth: FakeAuth::None,
    })
    .await
    .expect("fake registry");
    let image = common::image_of(vec![random_layer(3, 10_000)]);
    registry.add_image("team/app", "1", &image);
    registry.fault_times("/manifests/1", Fault::Status(503, String::new()), 1);
    let (retries, _guard) = count_retries();
    let h = harness(None);

    let (outcome, _) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .expect("the retry succeeds");

    assert_eq!(outcome.manifest.to_string(), image.digest());
    assert!(retries.count() >= 1, "the 503 was retried");
    let manifest_requests = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/manifests/1"))
        .count();
    assert!(manifest_requests >= 2, "{manifest_requests}");
}
