//! Images and names made by other tools, used through haul's commands: refs skopeo wrote into the
//! store, and docker's naming habits (`name:tag@digest`).

mod common;

use common::{Env, ok, registry_with};
use test_registry::{Format, ImageBuilder, LayerBuilder};

/// Issue 13: a ref skopeo wrote into the store (`oci:STORE:mytag`) was listed by `images`, but
/// using it by that name sent haul to Docker Hub (`docker.io/library/mytag:latest`).
#[tokio::test(flavor = "multi_thread")]
async fn a_name_skopeo_wrote_into_the_store_is_used_as_it_is() {
    let img = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("from-skopeo.txt", b"skopeo", 0o644)
                .finish_gzip(),
        )
        .build();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    // haul makes the store; skopeo adds a ref to it the way OCI tools name things.
    ok(env.run(&["images"]));
    let copied = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/team/app:1", registry.host()),
            &format!("oci:{}:mytag", env.root()),
        ])
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let requests = registry.requests().len();

    let images = ok(env.run(&["images"]));
    assert!(images.stdout.contains("mytag"), "{}", images.stdout);
    let inspect = ok(env.run(&["inspect", "mytag"]));
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(json[0]["Architecture"], "amd64", "{}", inspect.stdout);
    ok(env.run(&["history", "mytag"]));

    let dir = env.dir.path().join("rootfs");
    let out = ok(env.run(&["unpack", "mytag", &dir.display().to_string()]));
    assert!(out.stderr.contains("of mytag"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(dir.join("from-skopeo.txt")).unwrap(),
        b"skopeo"
    );
    assert_eq!(registry.requests().len(), requests, "nothing was fetched");
}

/// Issue 13: `name:tag@digest` (pulled by digest, the tag kept as a label) showed as a second row
/// next to `name:tag` of the same image; docker shows one.
#[tokio::test(flavor = "multi_thread")]
async fn name_tag_at_digest_and_the_tag_show_as_one_image() {
    let img = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("a.txt", b"a", 0o644)
                .finish_gzip(),
        )
        .build();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app", registry.host());
    ok(env.run(&["pull", "-q", &format!("{name}:1")]));
    ok(env.run(&["pull", "-q", &format!("{name}:1@{}", img.digest())]));
    ok(env.run(&["pull", "-q", &format!("{name}@{}", img.digest())]));
    let images = ok(env.run(&["images", "--digests"]));
    let rows: Vec<&str> = images.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", images.stdout);
    assert!(rows[0].contains(img.digest()), "{}", images.stdout);
}
