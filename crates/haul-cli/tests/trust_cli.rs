//! `haul trust …` and `haul pull` with content trust, against the real registry: keys made here,
//! images signed with `haul trust sign`, checked with `haul trust inspect` and trusted pulls.

mod common;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use common::{Env, ok, registry_with, run};
use test_registry::{Format, Image, ImageBuilder, LayerBuilder, Pusher};

fn image(seed: &str) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("hello.txt", seed.as_bytes(), 0o644)
                .finish_gzip(),
        )
        .build()
}

/// Writes a fresh P-256 key pair as `NAME.key` (PKCS#8 PEM) and `NAME.pub` in the env's dir.
fn key_pair(env: &Env, name: &str) -> (String, String) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .unwrap();
    let spki: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        let s = base64::engine::general_purpose::STANDARD.encode(b);
        s.as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let private = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        b64(pkcs8.as_ref())
    );
    let public = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        b64(spki.as_ref())
    );
    let key_path = env.dir.path().join(format!("{name}.key"));
    let pub_path = env.dir.path().join(format!("{name}.pub"));
    std::fs::write(&key_path, private).unwrap();
    std::fs::write(&pub_path, public).unwrap();
    (
        key_path.display().to_string(),
        pub_path.display().to_string(),
    )
}

/// `haul --root STORE` with an isolated home and keyring (as root the default keyring would be
/// /etc/haul/trust).
fn haul(env: &Env) -> assert_cmd::Command {
    let mut cmd = env.haul();
    cmd.env("HAUL_TRUST_DIR", env.dir.path().join("trust"));
    cmd
}

fn haul_run(env: &Env, args: &[&str]) -> common::Output {
    run(haul(env).args(args))
}

fn blob_files(env: &Env) -> usize {
    std::fs::read_dir(std::path::Path::new(&env.root()).join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn signed_image_pulls_with_content_trust_and_says_who_signed() {
    let img = image("signed");
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let (key, public) = key_pair(&env, "alice");
    let name = format!("{}/team/app:1.0", registry.host());

    let signed = ok(haul_run(&env, &["trust", "sign", "--key", &key, &name]));
    assert_eq!(signed.stdout.trim(), img.digest());
    assert!(
        signed.stderr.contains("Pushed signature"),
        "{}",
        signed.stderr
    );
    let added = ok(haul_run(&env, &["trust", "key", "add", "alice", &public]));
    assert!(
        added.stderr.contains("Trusted key alice (ecdsa-p256"),
        "{}",
        added.stderr
    );

    let out = ok(run(haul(&env).env("DOCKER_CONTENT_TRUST", "1").args([
        "pull",
        "--progress",
        "plain",
        &name,
    ])));
    assert!(
        out.stderr.contains(&format!(
            "@{} is signed by key alice (ecdsa-p256",
            img.digest()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout.trim(), name);
    let images = ok(haul_run(&env, &["images", "--digests"]));
    assert!(images.stdout.contains(img.digest()), "{}", images.stdout);

    let inspect = ok(haul_run(&env, &["trust", "inspect", &name]));
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(json[0]["Digest"], img.digest());
    assert_eq!(json[0]["Signed"], true);
    assert_eq!(json[0]["Signatures"][0]["Format"], "cosign");
    assert_eq!(json[0]["Signatures"][0]["Signer"]["Name"], "alice");
    let pretty = ok(haul_run(&env, &["trust", "inspect", "--pretty", &name]));
    assert!(
        pretty.stdout.contains("valid: signed by key alice"),
        "{}",
        pretty.stdout
    );
}

#[tokio::test]
async fn content_trust_refuses_unsigned_and_untrusted_images_and_stores_nothing() {
    let img = image("unsigned");
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let (_, alice_pub) = key_pair(&env, "alice");
    ok(haul_run(
        &env,
        &["trust", "key", "add", "alice", &alice_pub],
    ));
    let name = format!("{}/team/app:1.0", registry.host());

    let out = haul_run(&env, &["pull", "--disable-content-trust=false", &name]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no signature found"), "{}", out.stderr);
    assert!(out.stderr.contains(img.digest()), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert_eq!(blob_files(&env), 0);
    assert!(
        !std::path::Path::new(&env.root())
            .join("index.json")
            .exists(),
        "a refused pull must not even create the store"
    );

    // Signed, but by a key nobody trusts.
    let (mallory, _) = key_pair(&env, "mallory");
    ok(haul_run(&env, &["trust", "sign", "--key", &mallory, &name]));
    let out = run(haul(&env)
        .env("DOCKER_CONTENT_TRUST", "1")
        .args(["pull", &name]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("signed by an untrusted key"),
        "{}",
        out.stderr
    );
    assert_eq!(blob_files(&env), 0);
    assert!(
        !registry
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(&img.layers[0].blob.digest))
    );

    // The flag turns trust off again, as docker's does.
    ok(run(haul(&env).env("DOCKER_CONTENT_TRUST", "1").args([
        "pull",
        "--disable-content-trust",
        "-q",
        &name,
    ])));
}

#[tokio::test]
async fn config_policy_enables_trust_and_can_warn_about_unsigned_images() {
    let img = image("policy");
    let registry = registry_with("team/app", "1.0", &img).await;
    Pusher::new(&registry.url())
        .push_image("other/app", "1.0", &image("other"))
        .await
        .unwrap();
    let env = Env::new();
    let (_, alice_pub) = key_pair(&env, "alice");
    let config = env.dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({"trust": {
            "enabled": true,
            "dir": env.dir.path().join("keyring"),
            "policy": {
                format!("{}/other", registry.host()): {"unsigned": "warn"},
                "*": {"keys": ["alice"]},
            },
        }}))
        .unwrap(),
    )
    .unwrap();
    let config = config.display().to_string();
    ok(haul_run(
        &env,
        &[
            "--config", &config, "trust", "key", "add", "alice", &alice_pub,
        ],
    ));
    assert!(env.dir.path().join("keyring/keys/alice.pub").exists());

    let refused = haul_run(
        &env,
        &[
            "--config",
            &config,
            "pull",
            &format!("{}/team/app:1.0", registry.host()),
        ],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("no signature found"),
        "{}",
        refused.stderr
    );

    let warned = ok(haul_run(
        &env,
        &[
            "--config",
            &config,
            "pull",
            &format!("{}/other/app:1.0", registry.host()),
        ],
    ));
    assert!(
        warned.stderr.contains("WARNING:") && warned.stderr.contains("no signature found"),
        "{}",
        warned.stderr
    );
}

#[tokio::test]
async fn bad_keys_are_refused_by_trust_key_add() {
    let env = Env::new();
    let junk = env.dir.path().join("junk.pub");
    std::fs::write(&junk, "not a key").unwrap();
    let out = haul_run(
        &env,
        &["trust", "key", "add", "alice", &junk.display().to_string()],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not a PEM file"), "{}", out.stderr);
    let (key, _) = key_pair(&env, "k");
    let out = haul_run(&env, &["trust", "key", "add", "alice", &key]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("expected a PEM `PUBLIC KEY`"),
        "{}",
        out.stderr
    );
    let out = haul_run(&env, &["trust", "key", "add", "../evil", &key]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid key name"), "{}", out.stderr);
}

// The in-process registry needs a runtime thread of its own while the test waits for `haul`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_pull_stores_the_checked_digest_when_the_tag_moves_after_the_check() {
    let v1 = image("v1");
    let v2 = image("v2");
    let registry = test_registry::ReferrersRegistry::start().await.unwrap();
    registry.add_image("team/app", "1.0", &v1);
    registry.add_image("team/app", "next", &v2);
    let env = Env::new();
    let (key, public) = key_pair(&env, "alice");
    ok(haul_run(&env, &["trust", "key", "add", "alice", &public]));
    let name = format!("{}/team/app:1.0", registry.host());
    // Signing goes through haul's push side (blob upload, manifest PUT) into this registry.
    ok(haul_run(&env, &["trust", "sign", "--key", &key, &name]));
    // Right after the check resolves the tag, it is moved to an unsigned image.
    registry.move_tag_after_next_resolve("team/app", "1.0", v2.digest());
    let out = ok(run(haul(&env).env("DOCKER_CONTENT_TRUST", "1").args([
        "pull",
        "--progress",
        "plain",
        &name,
    ])));
    assert!(out.stderr.contains(v1.digest()), "{}", out.stderr);
    let images = ok(haul_run(&env, &["images", "--digests"]));
    assert!(images.stdout.contains(v1.digest()), "{}", images.stdout);
    assert!(!images.stdout.contains(v2.digest()), "{}", images.stdout);
    assert_eq!(registry.count("GET", &v2.layers[0].blob.digest), 0);
}
