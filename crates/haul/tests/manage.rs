//! Managing what was pulled, against the real registry: finding images by name and ID, inspect
//! and history views, tag and untag, manifests fetched without pulling, store usage, and login
//! (htpasswd and token auth) before credentials are saved.

mod common;

use common::chain;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use base64::Engine;
use common::{fast_client, harness, harness_with};
use haul::config::Config;
use haul::inspect::{self, InspectError};
use haul::login::{self, LoginError, Server};
use haul::reference::Reference;
use haul::registry::{Anonymous, Credential, DockerConfig, RegistryError};
use haul::tag::{self, TagError};
use serde_json::json;
use test_registry::{
    Format, Image, ImageBuilder, Pusher, RealRegistry, RegistryOptions, TokenIssuer,
    TokenIssuerOptions, random_layer,
};

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", Some("v8"))
        .created("2024-05-06T07:08:09Z")
        .env(&["PATH=/bin", "GREETING=hello"])
        .cmd(&["/bin/app", "--serve"])
        .layer(random_layer(seed, 60_000))
        .layer(random_layer(seed + 1, 30_000))
        .build()
}

async fn registry_with(images: &[(&str, &str, &Image)]) -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    for (repo, tag, img) in images {
        pusher.push_image(repo, tag, img).await.unwrap();
    }
    registry
}

#[tokio::test]
async fn inspect_finds_images_by_name_and_by_id_prefix() {
    let img = image(1);
    let registry = registry_with(&[("team/app", "1.0", &img)]).await;
    let h = harness();
    let name = format!("{}/team/app:1.0", registry.host());
    h.pull(&name).await.unwrap();

    let config_hex = img.config.hex();
    for query in [
        name.clone(),
        format!("{}/team/app@{}", registry.host(), img.digest()),
        img.config.digest.clone(),
        config_hex.to_owned(),
        format!("sha256:{}", &config_hex[..8]),
        config_hex[..4].to_owned(),
    ] {
        let found = inspect::find(&h.store, &query).unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(found.id.to_string(), img.config.digest, "{query}");
    }

    let view = inspect::inspect(&inspect::find(&h.store, &name).unwrap());
    let v = serde_json::to_value(&view).unwrap();
    assert_eq!(v["Id"], img.config.digest);
    assert_eq!(
        v["RepoTags"],
        json!([format!("{}/team/app:1.0", registry.host())])
    );
    assert_eq!(
        v["RepoDigests"],
        json!([format!("{}/team/app@{}", registry.host(), img.digest())])
    );
    assert_eq!(v["Created"], "2024-05-06T07:08:09Z");
    assert_eq!(v["Architecture"], "arm64");
    assert_eq!(v["Variant"], "v8");
    assert_eq!(v["Os"], "linux");
    assert_eq!(
        v["Config"],
        json!({"Env": ["PATH=/bin", "GREETING=hello"], "Cmd": ["/bin/app", "--serve"]})
    );
    assert_eq!(v["RootFS"]["Type"], "layers");
    let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(v["RootFS"]["Layers"], json!(diff_ids));
    let size = img.config.size + img.layers.iter().map(|l| l.blob.size).sum::<u64>();
    // `Size` is the unpacked size (haul-cli's tests/sizes_cli.rs checks it against gzip).
    assert_eq!(v["CompressedSize"], size);
    assert_eq!(v["History"].as_array().map(Vec::len), Some(2));

    for missing in [
        format!("{}/team/app:2.0", registry.host()),
        "alpine".to_owned(),
        config_hex[..3].to_owned(),
        "0000".to_owned(),
        format!("{}/team/app@sha256:{}", registry.host(), "0".repeat(64)),
    ] {
        let err = inspect::find(&h.store, &missing).unwrap_err();
        assert!(
            matches!(err, InspectError::NoSuchImage(_)),
            "{missing}: {err:?}"
        );
        assert_eq!(err.to_string(), format!("No such image: {missing}"));
    }
}

#[tokio::test]
async fn an_id_prefix_shared_by_two_images_is_ambiguous() {
    // Two configs whose digests share 4 hex characters, found by a birthday search over a label
    // (deterministic: the same pair every run).
    let layer = random_layer(100, 10_000);
    let mut seen: HashMap<String, Image> = HashMap::new();
    let (a, b) = (0u64..)
        .find_map(|n| {
            let img = ImageBuilder::new(Format::Oci)
                .layer(layer.clone())
                .config_field("author", json!(format!("twin {n}")))
                .build();
            let prefix = img.config.hex()[..4].to_owned();
            match seen.remove(&prefix) {
                Some(other) => Some((other, img)),
                None => {
                    seen.insert(prefix, img);
                    None
                }
            }
        })
        .unwrap();
    let registry = registry_with(&[("twins/a", "1", &a), ("twins/b", "1", &b)]).await;
    let h = harness();
    h.pull(&format!("{}/twins/a:1", registry.host()))
        .await
        .unwrap();
    h.pull(&format!("{}/twins/b:1", registry.host()))
        .await
        .unwrap();

    let shared = &a.config.hex()[..4];
    let err = inspect::find(&h.store, shared).unwrap_err();
    assert!(matches!(err, InspectError::AmbiguousId(_)), "{err:?}");
    // One more character that differs tells them apart (or the whole digest does).
    let longer = a
        .config
        .hex()
        .char_indices()
        .find(|&(i, c)| b.config.hex().as_bytes()[i] != c as u8)
        .map(|(i, _)| &a.config.hex()[..=i])
        .unwrap();
    let found = inspect::find(&h.store, longer).unwrap();
    assert_eq!(found.id.to_string(), a.config.digest);
}

#[tokio::test]
async fn history_rows_follow_the_config_and_the_layers() {
    let img = ImageBuilder::new(Format::Docker)
        .layer(random_layer(20, 40_000))
        .layer(random_layer(21, 20_000))
        .config_field(
            "history",
            json!([
                {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /", "comment": "base"},
                {"created": "2024-01-02T00:00:00Z", "created_by": "ENV A=1", "empty_layer": true},
                {"created": "2024-01-03T00:00:00Z", "created_by": "RUN make install"},
                {"created": "2024-01-04T00:00:00Z", "created_by": "CMD [\"app\"]", "empty_layer": true},
            ]),
        )
        .build();
    let registry = registry_with(&[("team/hist", "1", &img)]).await;
    let h = harness();
    let name = format!("{}/team/hist:1", registry.host());
    h.pull(&name).await.unwrap();

    let rows = inspect::history(&inspect::find(&h.store, &name).unwrap());
    let got: Vec<(Option<String>, &str, u64, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.id.as_ref().map(|d| d.to_string()),
                r.created_by.as_str(),
                r.compressed_size,
                r.comment.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(img.config.digest.clone()), "CMD [\"app\"]", 0, ""),
            (None, "RUN make install", img.layers[1].blob.size, ""),
            (None, "ENV A=1", 0, ""),
            (None, "ADD rootfs.tar /", img.layers[0].blob.size, "base"),
        ]
    );
    assert_eq!(
        rows[1].layer.as_ref().map(|d| d.to_string()).as_deref(),
        Some(img.layers[1].blob.digest.as_str())
    );
    assert_eq!(
        rows[3].created.map(|t| t.to_string()).as_deref(),
        Some("2024-01-01T00:00:00Z")
    );
}

#[tokio::test]
async fn tag_adds_a_name_and_untag_removes_names_but_not_content() {
    let img = image(30);
    let registry = registry_with(&[("team/app", "1", &img)]).await;
    let h = harness();
    let name = format!("{}/team/app:1", registry.host());
    h.pull(&name).await.unwrap();
    let blobs = h.blob_count();

    let target: Reference = "example.org/other/name:v2".parse().unwrap();
    let entry = tag::tag(&h.store, &name, &target).await.unwrap();
    assert_eq!(entry.name, "example.org/other/name:v2");
    let original = h.store.find_ref(&name).unwrap().unwrap();
    assert_eq!(entry.manifest, original.manifest);
    assert_eq!(entry.resolved, original.resolved);
    let listed: Vec<String> = haul::images::list(&h.store, None)
        .unwrap()
        .into_iter()
        .map(|r| r.reference)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&name) && listed.contains(&target.to_string()));
    let found = inspect::find(&h.store, &img.config.digest).unwrap();
    assert_eq!(found.repo_tags().len(), 2);

    // By image ID: the tag also works from an ID, latest by default.
    let from_id: Reference = "example.org/third".parse().unwrap();
    tag::tag(&h.store, &img.config.hex()[..12], &from_id)
        .await
        .unwrap();
    assert!(
        h.store
            .find_ref("example.org/third:latest")
            .unwrap()
            .is_some()
    );
    let pinned: Reference = format!("example.org/x@{}", img.digest()).parse().unwrap();
    assert!(matches!(
        tag::tag(&h.store, &name, &pinned).await,
        Err(TagError::DigestTarget { .. })
    ));
    assert!(matches!(
        tag::tag(&h.store, "nope", &target).await,
        Err(TagError::NotFound(InspectError::NoSuchImage(_)))
    ));

    let removed = tag::untag(&h.store, &name, false).await.unwrap();
    assert_eq!(removed, vec![name.clone()]);
    assert!(h.store.find_ref(&name).unwrap().is_none());
    assert!(h.store.find_ref(&target.to_string()).unwrap().is_some());
    assert_eq!(h.blob_count(), blobs, "untag leaves the content");
    assert!(h.has(&img.layers[0].blob.digest));

    // An image ID naming refs in two repositories needs force.
    let err = tag::untag(&h.store, &img.config.digest, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TagError::MultipleRepositories { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("image is referenced in multiple repositories"),
        "{err}"
    );
    assert_eq!(h.store.refs().unwrap().len(), 2, "nothing removed");
    let mut removed = tag::untag(&h.store, &img.config.digest, true)
        .await
        .unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "example.org/other/name:v2".to_owned(),
            "example.org/third:latest".to_owned()
        ]
    );
    assert!(h.store.refs().unwrap().is_empty());
    assert_eq!(h.blob_count(), blobs);
    assert!(matches!(
        tag::untag(&h.store, &name, false).await,
        Err(TagError::NotFound(_))
    ));
}

#[tokio::test]
async fn untag_by_id_takes_every_tag_of_one_repository() {
    let img = image(35);
    let registry = registry_with(&[("team/app", "1", &img), ("team/app", "2", &img)]).await;
    let h = harness();
    for t in ["1", "2"] {
        h.pull(&format!("{}/team/app:{t}", registry.host()))
            .await
            .unwrap();
    }
    let removed = tag::untag(&h.store, &img.config.hex()[..6], false)
        .await
        .unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(h.store.refs().unwrap().is_empty());
}

#[tokio::test]
async fn remote_manifests_are_fetched_without_blobs_or_store() {
    let single = image(40);
    let amd = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(random_layer(41, 20_000))
        .build();
    let arm = ImageBuilder::new(Format::Docker)
        .platform("linux", "arm", Some("v7"))
        .layer(random_layer(42, 20_000))
        .build();
    let index = test_registry::index(Format::Docker, vec![amd.clone(), arm.clone()]);
    let registry = registry_with(&[("team/single", "1", &single)]).await;
    Pusher::new(&registry.url())
        .push_index("team/multi", "1", &index)
        .await
        .unwrap();
    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let mark = registry.mark();

    let reference: Reference = format!("{}/team/single:1", registry.host())
        .parse()
        .unwrap();
    let m = inspect::remote_manifest(&client, &reference).await.unwrap();
    assert_eq!(m.bytes, single.manifest.data.to_vec());
    assert_eq!(m.descriptor.digest.to_string(), single.digest());
    assert_eq!(m.descriptor.media_type, single.manifest.media_type);
    assert!(!m.is_index());
    let v = serde_json::to_value(m.verbose().unwrap()).unwrap();
    assert_eq!(v["Ref"], reference.to_string());
    assert_eq!(v["Descriptor"]["digest"], single.digest());
    assert_eq!(v["Descriptor"]["size"], single.manifest.size);
    assert!(v["OCIManifest"]["layers"].is_array(), "{v}");

    let reference: Reference = format!("{}/team/multi:1", registry.host()).parse().unwrap();
    let top = inspect::remote_manifest(&client, &reference).await.unwrap();
    assert!(top.is_index());
    assert_eq!(top.descriptor.digest.to_string(), index.digest());
    assert_eq!(
        top.document().unwrap()["manifests"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let entries = inspect::remote_entries(&client, &top).await.unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, img) in entries.iter().zip([&amd, &arm]) {
        let v = serde_json::to_value(entry.verbose().unwrap()).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["Raw"].as_str().unwrap())
            .unwrap();
        assert_eq!(test_registry::sha256_digest(&raw), img.digest());
        assert_eq!(v["Descriptor"]["digest"], img.digest());
        assert_eq!(v["Descriptor"]["platform"]["architecture"], img.platform.1);
        assert_eq!(v["Ref"], format!("{reference}@{}", img.digest()));
        assert!(v["SchemaV2Manifest"]["config"].is_object(), "{v}");
    }

    let unknown: Reference = format!("{}/team/single:nope", registry.host())
        .parse()
        .unwrap();
    let err = inspect::remote_manifest(&client, &unknown)
        .await
        .unwrap_err();
    assert!(
        matches!(err, InspectError::NoSuchManifest { .. }),
        "{err:?}"
    );

    let requests = registry.requests_since(mark);
    assert!(
        !requests.iter().any(|r| r.path.contains("/blobs/")),
        "no blob was fetched: {requests:?}"
    );
}

#[tokio::test]
async fn usage_counts_what_the_store_holds() {
    let img = image(50);
    let registry = registry_with(&[("team/app", "1", &img)]).await;
    let h = harness();
    let empty = haul::info::usage(&h.store).unwrap();
    assert_eq!((empty.images, empty.blobs, empty.blob_bytes), (0, 0, 0));

    h.pull(&format!("{}/team/app:1", registry.host()))
        .await
        .unwrap();
    std::fs::write(
        h.store.root().join("ingest/sha256-feed.partial"),
        vec![0u8; 1234],
    )
    .unwrap();
    let usage = haul::info::usage(&h.store).unwrap();
    let blobs: Vec<&test_registry::Blob> =
        std::iter::once(&img.manifest).chain(img.blobs()).collect();
    assert_eq!(usage.images, 1);
    assert_eq!(usage.blobs, blobs.len() as u64);
    assert_eq!(usage.blob_bytes, blobs.iter().map(|b| b.size).sum::<u64>());
    assert_eq!((usage.partial_files, usage.partial_bytes), (1, 1234));
}

fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.to_owned(),
        password: password.to_owned(),
    }
}

fn assert_refused(err: LoginError) {
    match &err {
        LoginError::Registry {
            source: RegistryError::Unauthorized { message, .. },
            ..
        } => assert_eq!(message, "incorrect username or password"),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(
        chain(&err).contains("unauthorized: incorrect username or password"),
        "{err}"
    );
}

#[tokio::test]
async fn login_checks_basic_auth_before_saving() {
    let registry = RealRegistry::start(RegistryOptions {
        htpasswd: vec![("alice".into(), "s3cret".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let img = image(60);
    Pusher::new(&registry.url())
        .basic("alice", "s3cret")
        .push_image("private/app", "1", &img)
        .await
        .unwrap();
    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let server = Server::parse(&registry.host()).unwrap();
    let docker_dir = tempfile::tempdir().unwrap();
    let config_file = docker_dir.path().join("config.json");

    let err = login::login(
        &client,
        DockerConfig::load(docker_dir.path()).unwrap(),
        &server,
        basic("alice", "wrong"),
    )
    .await
    .unwrap_err();
    assert_refused(err);
    assert!(!config_file.exists(), "nothing saved for a refused login");

    login::login(
        &client,
        DockerConfig::load(docker_dir.path()).unwrap(),
        &server,
        basic("alice", "s3cret"),
    )
    .await
    .unwrap();
    let mode = std::fs::metadata(&config_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved = DockerConfig::load(docker_dir.path()).unwrap();
    assert_eq!(
        saved.lookup(&registry.host()).unwrap(),
        Some(basic("alice", "s3cret"))
    );
    let h = harness_with(Config::default(), Arc::new(saved), None);
    let (outcome, _) = h
        .pull(&format!("{}/private/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
}

#[tokio::test]
async fn login_checks_token_auth_before_saving() {
    let issuer = TokenIssuer::start(TokenIssuerOptions {
        users: vec![("bob".into(), "pa:ss".into())],
        anonymous_pull: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let registry = RealRegistry::start(RegistryOptions {
        token: Some(issuer.registry_config()),
        ..Default::default()
    })
    .await
    .unwrap();
    let img = image(70);
    Pusher::new(&registry.url())
        .bearer(&issuer.token_for("bob", "repository:secret/app:pull,push"))
        .push_image("secret/app", "1", &img)
        .await
        .unwrap();
    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let server = Server::parse(&format!("http://{}", registry.host())).unwrap();
    let mark = registry.mark();

    assert_refused(
        login::check(&client, &server, &basic("bob", "nope"))
            .await
            .unwrap_err(),
    );
    login::check(&client, &server, &basic("bob", "pa:ss"))
        .await
        .unwrap();
    let token_requests = issuer.requests();
    let good = token_requests
        .iter()
        .find(|r| r.status == 200)
        .expect("a token was issued");
    assert_eq!(good.user.as_deref(), Some("bob"));
    assert!(good.scopes.is_empty(), "login asks for no scope: {good:?}");
    // The token was then used on /v2/.
    assert!(
        registry
            .requests_since(mark)
            .iter()
            .any(|r| r.path == "/v2/" && r.status == 200),
        "GET /v2/ with the token succeeded"
    );

    let docker_dir = tempfile::tempdir().unwrap();
    login::login(
        &client,
        DockerConfig::load(docker_dir.path()).unwrap(),
        &server,
        basic("bob", "pa:ss"),
    )
    .await
    .unwrap();
    let saved = DockerConfig::load(docker_dir.path()).unwrap();
    let h = harness_with(Config::default(), Arc::new(saved), None);
    let (outcome, _) = h
        .pull(&format!("{}/secret/app:1", registry.host()))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), img.digest());
}
