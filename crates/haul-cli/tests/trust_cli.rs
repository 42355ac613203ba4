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

/// Makes alice's key pair and trusts her public key; returns her private key's path.
fn trust_alice(env: &Env) -> String {
    let (key, public) = key_pair(env, "alice");
    ok(haul_run(env, &["trust", "key", "add", "alice", &public]));
    key
}

fn haul_run(env: &Env, args: &[&str]) -> common::Output {
    run(haul(env).args(args))
}

fn blob_files(env: &Env) -> usize {
    std::fs::read_dir(std::path::Path::new(&env.root()).join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The names in the store's index.json (none when there is no store).
fn stored_names(env: &Env) -> Vec<String> {
    let Ok(bytes) = std::fs::read(std::path::Path::new(&env.root()).join("index.json")) else {
        return Vec::new();
    };
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
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
    trust_alice(&env);
    let name = format!("{}/team/app:1.0", registry.host());

    let out = haul_run(&env, &["pull", "--disable-content-trust=false", &name]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no signature found"), "{}", out.stderr);
    assert!(out.stderr.contains(img.digest()), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert_eq!(blob_files(&env), 0);
    assert_eq!(stored_names(&env), Vec::<String>::new());

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
    let key = trust_alice(&env);
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

/// Issue 12: `unpack` and `bundle` pulled unsigned images with content trust on (only `pull`
/// checked).
#[tokio::test]
async fn unpack_and_bundle_cannot_bypass_content_trust() {
    let img = image("bypass");
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    trust_alice(&env);
    let name = format!("{}/team/app:1.0", registry.host());

    for command in ["unpack", "bundle"] {
        let dir = env.dir.path().join(command);
        let out = run(haul(&env).env("DOCKER_CONTENT_TRUST", "1").args([
            command,
            "--progress",
            "plain",
            &name,
            &dir.display().to_string(),
        ]));
        assert_eq!(out.code, 1, "{command}: {}", out.stderr);
        assert!(out.stderr.contains("no signature found"), "{}", out.stderr);
        assert!(!dir.exists(), "{command} made {}", dir.display());
        assert_eq!(stored_names(&env), Vec::<String>::new(), "{command}");
        assert_eq!(blob_files(&env), 0, "{command}");
    }
    assert_eq!(registry.count("GET", &img.layers[0].blob.digest), 0);
}

/// Issue 12: a name already in the store (pulled without trust, or loaded from an archive) was
/// unpacked with content trust on without any check. Like `docker run`, the name is checked
/// against the registry, and the stored image is used only when it is the signed digest.
#[tokio::test]
async fn a_stored_unsigned_image_is_not_unpacked_with_content_trust() {
    let img = image("stored");
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let key = trust_alice(&env);
    let name = format!("{}/team/app:1.0", registry.host());
    ok(haul_run(&env, &["pull", "-q", &name]));
    let layer_gets = registry.count("GET", &img.layers[0].blob.digest);

    let dir = env.dir.path().join("rootfs");
    let dir_arg = dir.display().to_string();
    let out = run(haul(&env)
        .env("DOCKER_CONTENT_TRUST", "1")
        .args(["unpack", "-q", &name, &dir_arg]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no signature found"), "{}", out.stderr);
    assert!(!dir.exists());

    // Once signed by a trusted key, the stored image is the checked digest: used as it is.
    ok(haul_run(&env, &["trust", "sign", "--key", &key, &name]));
    let out = ok(run(haul(&env)
        .env("DOCKER_CONTENT_TRUST", "1")
        .args(["unpack", &name, &dir_arg])));
    assert!(
        out.stderr.contains("is signed by key alice"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"stored");
    assert_eq!(
        registry.count("GET", &img.layers[0].blob.digest),
        layer_gets
    );
}

/// Issue 12: without HOME or XDG_CONFIG_HOME, a user's keyring was `/tmp/haul/trust`, where any
/// local user can plant a key that the next trusted pull accepts.
#[tokio::test]
async fn a_key_planted_in_a_shared_tmp_dir_is_never_trusted() {
    if !running_as_root() {
        println!("SKIPPED: needs root to run haul as another user");
        return;
    }
    let env = Env::new();
    let (_, public) = key_pair(&env, "mallory");
    let planted = std::env::temp_dir().join("haul/trust/keys");
    std::fs::create_dir_all(&planted).unwrap();
    let planted_key = planted.join("mallory-planted.pub");
    std::fs::copy(&public, &planted_key).unwrap();

    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("haul"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["trust", "key", "list"])
        .uid(65534)
        .gid(65534);
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_file(&planted_key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("mallory-planted"),
        "a planted key is listed as trusted:\n{stdout}"
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Issue 13: `--all-tags` failed on a repository holding the `sha256-….sig` tag that `haul trust
/// sign` pushes, blaming another tag, and one bad tag sank the others. Signature and artifact tags
/// are skipped with a note; each failure is reported under its own tag; what could be pulled is.
#[tokio::test]
async fn all_tags_skips_signature_and_artifact_tags_and_one_bad_tag_sinks_nothing() {
    let one = image("one");
    let registry = registry_with("team/app", "1", &one).await;
    let pusher = Pusher::new(&registry.url());
    let two = image("two");
    pusher.push_image("team/app", "2", &two).await.unwrap();
    let arm = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", None)
        .layer(
            LayerBuilder::new()
                .add_file("arm.txt", b"arm", 0o644)
                .finish_gzip(),
        )
        .build();
    pusher.push_image("team/app", "arm", &arm).await.unwrap();
    // A helm chart: an OCI artifact, not an image.
    let chart_config = test_registry::Blob::new("application/vnd.cncf.helm.config.v1+json", "{}");
    let chart_layer = test_registry::Blob::new(
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        test_registry::gzip(b"chart"),
    );
    pusher.push_blob("team/app", &chart_config).await.unwrap();
    pusher.push_blob("team/app", &chart_layer).await.unwrap();
    let chart = test_registry::Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": chart_config.descriptor(),
            "layers": [chart_layer.descriptor()],
        }))
        .unwrap(),
    );
    pusher
        .push_manifest("team/app", "chart", &chart)
        .await
        .unwrap();

    let env = Env::new();
    let (key, _) = key_pair(&env, "alice");
    let repo = format!("{}/team/app", registry.host());
    ok(haul_run(
        &env,
        &["trust", "sign", "--key", &key, &format!("{repo}:1")],
    ));
    let sig_tag = format!("sha256-{}.sig", &one.digest()["sha256:".len()..]);
    assert!(
        pusher.tags("team/app").await.unwrap().contains(&sig_tag),
        "the signature tag is in the repository"
    );

    let out = haul_run(
        &env,
        &[
            "pull",
            "--all-tags",
            "--platform",
            "linux/amd64",
            "--progress",
            "plain",
            &repo,
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "Skipping {repo}:{sig_tag}: a cosign signature tag"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("Skipping {repo}:chart: "))
            && out.stderr.contains("not a container image config"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "Error: pulling {repo}:arm: image with reference {repo}:arm was found but does not \
             match the specified platform: wanted linux/amd64, actual: linux/arm64"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("1 of 3 tags could not be pulled"),
        "{}",
        out.stderr
    );
    let mut names = stored_names(&env);
    names.sort();
    assert_eq!(names, [format!("{repo}:1"), format!("{repo}:2")]);
}
