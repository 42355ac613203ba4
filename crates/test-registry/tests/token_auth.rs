//! The token issuer's JWTs are accepted by the real registry (x5c + rootcertbundle), and the
//! issuer speaks both the GET and the OAuth2 POST flows.

use reqwest::StatusCode;
use test_registry::{
    Format, ImageBuilder, Pusher, RealRegistry, RegistryOptions, TokenIssuer, TokenIssuerOptions,
    http_client, media_types, random_layer,
};

async fn json(resp: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

fn users() -> Vec<(String, String)> {
    vec![("admin".into(), "secret".into())]
}

async fn setup(opts: TokenIssuerOptions) -> (TokenIssuer, RealRegistry) {
    let issuer = TokenIssuer::start(opts).await.unwrap();
    let registry = RealRegistry::start(RegistryOptions {
        token: Some(issuer.registry_config()),
        ..Default::default()
    })
    .await
    .unwrap();
    (issuer, registry)
}

async fn fetch_token(
    issuer: &TokenIssuer,
    scope: &str,
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let url = url::Url::parse_with_params(
        &issuer.realm(),
        &[("service", issuer.service()), ("scope", scope)],
    )
    .unwrap();
    let mut rb = http_client().unwrap().get(url);
    if let Some((u, p)) = basic {
        rb = rb.basic_auth(u, Some(p));
    }
    rb.send().await.unwrap()
}

async fn get_manifest(
    registry: &RealRegistry,
    repo: &str,
    reference: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut rb = http_client()
        .unwrap()
        .get(format!(
            "{}/v2/{repo}/manifests/{reference}",
            registry.url()
        ))
        .header("accept", media_types::OCI_MANIFEST);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn real_registry_accepts_issued_tokens_end_to_end() {
    let (issuer, registry) = setup(TokenIssuerOptions {
        users: users(),
        anonymous_pull: false,
        ..Default::default()
    })
    .await;

    // Anonymous: challenged towards our realm.
    let resp = http_client()
        .unwrap()
        .get(format!("{}/v2/", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"{}\"", issuer.realm())),
        "{challenge}"
    );
    assert!(
        challenge.contains("service=\"haul-test-registry\""),
        "{challenge}"
    );

    // Push with a minted push token.
    let image = ImageBuilder::new(Format::Oci)
        .layer(random_layer(11, 20_000))
        .build();
    let push_token = issuer.token_for("admin", "repository:secure/app:pull,push");
    Pusher::new(&registry.url())
        .bearer(&push_token)
        .push_image("secure/app", "v1", &image)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", registry.log_text()));

    // A manifest GET without a token names the scope it needs.
    let resp = get_manifest(&registry, "secure/app", "v1", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("scope=\"repository:secure/app:pull\""),
        "{challenge}"
    );

    // The Docker Hub flow: GET /token with Basic credentials, then the manifest.
    let resp = fetch_token(
        &issuer,
        "repository:secure/app:pull",
        Some(("admin", "secret")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = json(resp).await;
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = body["token"].as_str().unwrap();
    let resp = get_manifest(&registry, "secure/app", "v1", Some(token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], image.digest());

    // A pull token does not allow pushing; an expired token is refused.
    let upload = http_client()
        .unwrap()
        .post(format!("{}/v2/secure/app/blobs/uploads/", registry.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::UNAUTHORIZED);
    let expired = issuer.token_expiring_in("admin", "repository:secure/app:pull", -120);
    let resp = get_manifest(&registry, "secure/app", "v1", Some(&expired)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Bad or missing credentials at the issuer.
    let resp = fetch_token(
        &issuer,
        "repository:secure/app:pull",
        Some(("admin", "wrong")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = fetch_token(&issuer, "repository:secure/app:pull", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let requests = issuer.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].scopes, ["repository:secure/app:pull"]);
    assert_eq!(requests[0].service.as_deref(), Some("haul-test-registry"));
    assert_eq!(requests[0].user.as_deref(), Some("admin"));
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 401, 401]
    );
}

#[tokio::test]
async fn oauth_post_refresh_and_anonymous_pull() {
    let (issuer, registry) = setup(TokenIssuerOptions {
        users: users(),
        anonymous_pull: true,
        only_access_token_field: true,
        private_repos: vec!["secret/app".into()],
        ..Default::default()
    })
    .await;
    let image = ImageBuilder::new(Format::Oci)
        .layer(random_layer(12, 10_000))
        .build();
    for repo in ["public/app", "secret/app"] {
        Pusher::new(&registry.url())
            .bearer(&issuer.token_for("admin", &format!("repository:{repo}:pull,push")))
            .push_image(repo, "v1", &image)
            .await
            .unwrap();
    }

    // Anonymous: a pull-only token, and nothing on private repositories.
    let resp = fetch_token(&issuer, "repository:public/app:pull,push", None).await;
    let body: serde_json::Value = json(resp).await;
    assert!(body.get("token").is_none(), "{body}");
    let anon = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        get_manifest(&registry, "public/app", "v1", Some(&anon))
            .await
            .status(),
        StatusCode::OK
    );
    let resp = fetch_token(&issuer, "repository:secret/app:pull", None).await;
    let body: serde_json::Value = json(resp).await;
    let anon_secret = body["access_token"].as_str().unwrap();
    assert_eq!(
        get_manifest(&registry, "secret/app", "v1", Some(anon_secret))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // OAuth2 password grant with a refresh token, then the refresh grant.
    let client = http_client().unwrap();
    let form = |pairs: &[(&str, &str)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let resp = client
        .post(issuer.realm())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "secret"),
            ("service", issuer.service()),
            ("scope", "repository:secret/app:pull"),
            ("client_id", "haul"),
            ("access_type", "offline"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = json(resp).await;
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        get_manifest(&registry, "secret/app", "v1", Some(access))
            .await
            .status(),
        StatusCode::OK
    );

    let resp = client
        .post(issuer.realm())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", issuer.service()),
            ("scope", "repository:secret/app:pull"),
            ("client_id", "haul"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = json(resp).await;
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        get_manifest(&registry, "secret/app", "v1", Some(access))
            .await
            .status(),
        StatusCode::OK
    );

    let resp = client
        .post(issuer.realm())
        .body(form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "bogus"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let requests = issuer.requests();
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 3);
    assert_eq!(posts[0].grant_type.as_deref(), Some("password"));
    assert!(!posts[0].used_refresh_token);
    assert!(posts[1].used_refresh_token);
    assert_eq!(posts[1].user.as_deref(), Some("admin"));
}
