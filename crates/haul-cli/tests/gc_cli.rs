//! `haul image prune` and `haul verify` as users run them, against the real registry.

use std::path::Path;

mod common;

use common::{Env, ok, registry_with};
use test_registry::{Format, Image, ImageBuilder, random_layer};

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, 40_000))
        .layer(random_layer(seed + 1, 10_000))
        .build()
}

fn blob_count(root: &str) -> usize {
    std::fs::read_dir(Path::new(root).join("blobs/sha256"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn image_prune_force_deletes_what_rmi_left_and_totals_it() {
    let img = image(1);
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1.0", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    ok(env.run(&["rmi", &name]));
    assert_eq!(blob_count(&env.root()), 4);

    let dry = ok(env.run(&["image", "prune", "--dry-run"]));
    assert!(
        dry.stdout
            .contains(&format!("Would delete: {}\n", img.digest())),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("Total reclaimable space: "));
    assert_eq!(blob_count(&env.root()), 4, "a dry run deletes nothing");

    let out = ok(env.run(&["image", "prune", "-f"]));
    for blob in img.blobs() {
        assert!(
            out.stdout.contains(&format!("Deleted: {}\n", blob.digest)),
            "{}",
            out.stdout
        );
    }
    let last = out.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("Total reclaimed space: "),
        "{}",
        out.stdout
    );
    assert!(last.ends_with("kB"), "{last}");
    assert_eq!(blob_count(&env.root()), 0);

    let again = ok(env.run(&["image", "prune", "-f"]));
    assert_eq!(again.stdout, "Total reclaimed space: 0B\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn image_prune_without_force_is_refused_when_nobody_can_answer() {
    let img = image(10);
    let registry = registry_with("team/app", "2", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:2", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    ok(env.run(&["rmi", &name]));

    for stdin in ["", "y\n"] {
        let out = common::run(env.haul().args(["image", "prune"]).write_stdin(stdin));
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("-f"), "{}", out.stderr);
        assert!(out.stderr.contains("not a terminal"), "{}", out.stderr);
        assert_eq!(out.stdout, "");
    }
    assert_eq!(blob_count(&env.root()), 4, "nothing was removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_1_on_a_damaged_blob_and_repair_mends_it() {
    let img = image(20);
    let registry = registry_with("team/app", "3", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:3", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    ok(env.run(&["verify"]));

    let layer = &img.layers[0].blob;
    let path = Path::new(&env.root())
        .join("blobs/sha256")
        .join(layer.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let out = env.run(&["verify", &name]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let actual = test_registry::sha256_digest(&bytes);
    assert!(
        out.stdout.contains(&format!(
            "corrupt: {} (layer of {name}): expected {}, actual {actual}",
            layer.digest, layer.digest
        )),
        "{}",
        out.stdout
    );

    let repaired = ok(env.run(&["verify", "--repair"]));
    assert!(
        repaired
            .stdout
            .contains(&format!("Repaired: {}\n", layer.digest)),
        "{}",
        repaired.stdout
    );
    assert_eq!(std::fs::read(&path).unwrap(), layer.data.as_ref());
    ok(env.run(&["verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn rmi_prune_removes_the_names_and_then_the_content() {
    let img = image(30);
    let registry = registry_with("team/gone", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/gone:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let out = ok(env.run(&["rmi", "--prune", &name]));
    assert!(
        out.stdout.starts_with(&format!("Untagged: {name}\n")),
        "{}",
        out.stdout
    );
    for blob in img.blobs() {
        assert!(
            out.stdout.contains(&format!("Deleted: {}\n", blob.digest)),
            "{}",
            out.stdout
        );
    }
    assert_eq!(blob_count(&env.root()), 0);
    let layers = Path::new(&env.root()).join("layers/sha256");
    let left = std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "extracted layers go too");
}
