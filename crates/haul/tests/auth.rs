//! Authentication against the real registry: htpasswd (Basic) and token auth (Docker Hub's flow,
//! with JWTs the registry verifies), credentials from docker's config.json.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use common::harness_with;
use haul::config::Config;
use haul::pull::PullError;
use haul::registry::{Anonymous, Credential, DockerConfig, RegistryError, StaticCredentials};
use test_registry::{Pusher, RealRegistry, RegistryOptions, TokenIssuer, TokenIssuerOptions};

fn image(seed: u64) -> test_registry::Image {
    common::two_layer_image(seed, 100_000, 50_000)
}

fn basic(registry: &str, user: &str, password: &str) -> Arc<StaticCredentials> {
    let mut map = HashMap::new();
    map.insert(
        registry.to_owned(),
        Credential::Basic {
            username: user.to_owned(),
            password: password.to_owned(),
        },
    );
    Arc::new(StaticCredentials(map))
}

#[tokio::test]
async fn basic_auth_needs_the_right_password() {
    let registry = RealRegistry::start(RegistryOptions {
        htpasswd: vec![("alice".into(), "s3cret".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let img = image(1);
    Pusher::new(&registry.url())
        .basic("alice", "s3cret")
        .push_image("private/app", "1", &img)
        .await
        .unwrap();
    let reference = format!("{}/private/app:1", registry.host());

    let h = harness_with(Config::default(), Arc::new(Anonymous), None);
    let err = h.pull(&reference).await.unwrap_err();
    assert!(matches!(err, PullError::AccessDenied { .. }), "{err:?}");
    assert!(
        err.to_string().contains("may require 'haul login'"),
        "{err}"
    );

    let h = harness_with(
        Config::default(),
        basic(&registry.host(), "alice", "wrong"),
        None,
    );
    let err = h.pull(&reference).await.unwrap_err();
    // Credentials were sent and refused: not "may require login", but refused credentials.
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::Unauthorized {
                anonymous: false,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(h.store.refs().unwrap().len(), 0);

    let h = harness_with(
        Config::default(),
        basic(&registry.host(), "alice", "s3cret"),
        None,
    );
    let (outcome, _) = h.pull(&reference).await.unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
    // The registry answers 401 to any request without valid credentials, so a 200 proves them.
    let blob_gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 3, "{blob_gets:?}");
    assert!(blob_gets.iter().all(|r| r.status == 200), "{blob_gets:?}");
}

async fn token_registry(opts: TokenIssuerOptions) -> (TokenIssuer, RealRegistry) {
    let issuer = TokenIssuer::start(opts).await.unwrap();
    let registry = RealRegistry::start(RegistryOptions {
        token: Some(issuer.registry_config()),
        ..Default::default()
    })
    .await
    .unwrap();
    (issuer, registry)
}

#[tokio::test]
async fn token_flow_anonymous_pull_scopes_and_reuses_one_token() {
    let (issuer, registry) = token_registry(TokenIssuerOptions::default()).await;
    let img = image(10);
    let push_token = issuer.token_for("pusher", "repository:team/app:pull,push");
    Pusher::new(&registry.url())
        .bearer(&push_token)
        .push_image("team/app", "1", &img)
        .await
        .unwrap();
    let before = issuer.requests().len();

    let h = harness_with(Config::default(), Arc::new(Anonymous), None);
    let (outcome, _) = h
        .pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
    let token_requests: Vec<_> = issuer.requests().into_iter().skip(before).collect();
    assert_eq!(
        token_requests.len(),
        1,
        "one token serves the whole pull: {token_requests:?}"
    );
    assert_eq!(
        token_requests[0].scopes,
        vec!["repository:team/app:pull".to_owned()]
    );
    assert_eq!(token_requests[0].service.as_deref(), Some(issuer.service()));
    assert!(token_requests[0].user.is_none());
}

#[tokio::test]
async fn token_flow_with_credentials_from_docker_config() {
    let (issuer, registry) = token_registry(TokenIssuerOptions {
        users: vec![("bob".into(), "pa:ss".into())],
        anonymous_pull: false,
        only_access_token_field: true,
        ..Default::default()
    })
    .await;
    let img = image(20);
    let push_token = issuer.token_for("bob", "repository:secret/app:pull,push");
    Pusher::new(&registry.url())
        .bearer(&push_token)
        .push_image("secret/app", "1", &img)
        .await
        .unwrap();
    let reference = format!("{}/secret/app:1", registry.host());

    let anonymous = harness_with(Config::default(), Arc::new(Anonymous), None);
    let err = anonymous.pull(&reference).await.unwrap_err();
    assert!(
        matches!(
            err,
            PullError::AccessDenied { .. }
                | PullError::Registry(RegistryError::Unauthorized { .. })
        ),
        "{err:?}"
    );

    let docker_dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pa:ss");
    std::fs::write(
        docker_dir.path().join("config.json"),
        serde_json::json!({"auths": {format!("http://{}", registry.host()): {"auth": auth}}})
            .to_string(),
    )
    .unwrap();
    let creds = DockerConfig::load(docker_dir.path()).unwrap();
    let h = harness_with(Config::default(), Arc::new(creds), None);
    let (outcome, _) = h.pull(&reference).await.unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("bob") && r.status == 200),
        "the token was requested as bob"
    );
}

#[tokio::test]
async fn identity_tokens_use_the_oauth2_refresh_grant() {
    let (issuer, registry) = token_registry(TokenIssuerOptions {
        users: vec![("carol".into(), "pw".into())],
        anonymous_pull: false,
        ..Default::default()
    })
    .await;
    let img = image(30);
    let push_token = issuer.token_for("carol", "repository:id/app:pull,push");
    Pusher::new(&registry.url())
        .bearer(&push_token)
        .push_image("id/app", "1", &img)
        .await
        .unwrap();
    // A refresh token the issuer hands out to carol through the password grant.
    let refresh = {
        let client = test_registry::http_client().unwrap();
        let body = client
            .post(issuer.realm())
            .form(&[
                ("grant_type", "password"),
                ("username", "carol"),
                ("password", "pw"),
                ("service", issuer.service()),
                ("client_id", "test"),
                ("access_type", "offline"),
                ("scope", "repository:id/app:pull"),
            ])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let resp: serde_json::Value = serde_json::from_slice(&body).unwrap();
        resp["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned()
    };
    let mut map = HashMap::new();
    map.insert(registry.host(), Credential::IdentityToken(refresh));
    let h = harness_with(Config::default(), Arc::new(StaticCredentials(map)), None);
    let (outcome, _) = h
        .pull(&format!("{}/id/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.used_refresh_token && r.status == 200),
        "pulled with the refresh grant: {:?}",
        issuer.requests()
    );
}
