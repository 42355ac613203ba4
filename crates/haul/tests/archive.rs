//! `save` and `load` against images pulled from the real registry, with skopeo as the independent
//! reader of what `save` writes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::harness;
use haul::archive::{self, ArchiveError, ArchiveFormat};
use haul::digest::Digest;
use haul::store::{Store, StoreError};
use serde_json::Value;
use test_registry::{
    Format, Image, ImageBuilder, Pusher, RealRegistry, RegistryOptions, random_layer,
};

fn image(seeds: &[u64], format: Format) -> Image {
    let mut b = ImageBuilder::new(format).platform("linux", "amd64", None);
    for &s in seeds {
        b = b.layer(random_layer(s, 80_000));
    }
    b.build()
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

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Member paths and contents of a tar file.
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        out.push((name, bytes));
    }
    out
}

fn json_member(path: &Path, name: &str) -> Value {
    let (_, bytes) = members(path)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} in the archive"));
    serde_json::from_slice(&bytes).unwrap()
}

fn oci_dir_blobs(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

#[tokio::test]
async fn docker_archive_is_read_by_skopeo_with_tags_and_layers() {
    let img = image(&[1, 2, 3], Format::Docker);
    let registry = registry_with(&[("team/app", "1.0", &img)]).await;
    let h = harness();
    let name = format!("{}/team/app:1.0", registry.host());
    h.pull(&name).await.unwrap();

    let file = h.dir.path().join("app.tar");
    archive::save_to_file(
        &h.store,
        std::slice::from_ref(&name),
        ArchiveFormat::DockerArchive,
        &file,
    )
    .unwrap();

    let manifest = json_member(&file, "manifest.json");
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!([name]));
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", img.config.hex())
    );
    let layers: Vec<String> = img
        .layers
        .iter()
        .map(|l| format!("blobs/sha256/{}", l.blob.hex()))
        .collect();
    assert_eq!(manifest[0]["Layers"], serde_json::json!(layers));
    let repositories = json_member(&file, "repositories");
    assert_eq!(
        repositories[format!("{}/team/app", registry.host())]["1.0"],
        img.config.hex()
    );
    let index = json_member(&file, "index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        name
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1.0"
    );
    let leftovers: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let source = format!("docker-archive:{}", file.display());
    // skopeo picks an image of a docker-archive by one of its RepoTags.
    let by_tag = format!("{source}:{name}");
    let inspect: Value = serde_json::from_str(&skopeo(&["inspect", &by_tag])).unwrap();
    assert_eq!(
        inspect["Name"],
        format!("{}/team/app", registry.host()),
        "{inspect}"
    );
    // skopeo reads docker-archive layers uncompressed: it names them by diff_id.
    let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(diff_ids));
    let raw_config: Value =
        serde_json::from_str(&skopeo(&["inspect", "--config", &source])).unwrap();
    assert_eq!(
        raw_config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids)
    );

    let out = h.dir.path().join("oci-out");
    skopeo(&["copy", &source, &format!("oci:{}", out.display())]);
    // skopeo re-reads docker-archive layers uncompressed and may recompress them: the config's
    // diff_ids are what stays the same, and the copy has as many layers as the image.
    let copied: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let manifest_digest = copied["manifests"][0]["digest"].as_str().unwrap();
    let copied_manifest: Value = serde_json::from_slice(
        &std::fs::read(
            out.join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        copied_manifest["layers"].as_array().unwrap().len(),
        img.layers.len()
    );
    let config_digest = copied_manifest["config"]["digest"].as_str().unwrap();
    let copied_config: Value = serde_json::from_slice(
        &std::fs::read(
            out.join("blobs/sha256")
                .join(config_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        copied_config["rootfs"]["diff_ids"],
        serde_json::json!(diff_ids)
    );
}

#[tokio::test]
async fn oci_archive_is_read_by_skopeo_by_tag_with_the_same_layers() {
    let img = image(&[11, 12], Format::Oci);
    let registry = registry_with(&[("team/oci", "v2", &img)]).await;
    let h = harness();
    let name = format!("{}/team/oci:v2", registry.host());
    h.pull(&name).await.unwrap();
    let file = h.dir.path().join("oci.tar");
    archive::save_to_file(&h.store, &[name], ArchiveFormat::OciArchive, &file).unwrap();
    assert!(
        members(&file).iter().all(|(n, _)| n != "manifest.json"),
        "an oci-archive has no docker manifest.json"
    );

    let out = h.dir.path().join("oci-out");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:v2", file.display()),
        &format!("oci:{}:v2", out.display()),
    ]);
    let blobs = oci_dir_blobs(&out);
    for b in img.blobs() {
        assert!(blobs.contains(&b.digest), "{} copied as is", b.digest);
    }
    assert!(blobs.contains(&img.manifest.digest));
}

#[tokio::test]
async fn load_into_an_empty_store_gives_the_same_refs_and_blobs() {
    let img = image(&[21, 22, 23], Format::Docker);
    let registry = registry_with(&[("team/app", "1.0", &img)]).await;
    let h = harness();
    let name = format!("{}/team/app:1.0", registry.host());
    h.pull(&name).await.unwrap();

    for format in [ArchiveFormat::DockerArchive, ArchiveFormat::OciArchive] {
        let file = h.dir.path().join(format!("{format:?}.tar"));
        archive::save_to_file(&h.store, std::slice::from_ref(&name), format, &file).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let other = Store::open(dir.path()).unwrap();
        let loaded = archive::load(&other, std::fs::File::open(&file).unwrap())
            .await
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id.to_string(), img.config.digest);
        assert_eq!(
            loaded[0]
                .names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            vec![name.clone()]
        );
        let original = h.store.find_ref(&name).unwrap().unwrap();
        let copy = other.find_ref(&name).unwrap().unwrap();
        assert_eq!(copy.manifest, original.manifest, "{format:?}");
        for b in img.blobs() {
            assert!(other.has_blob(&b.digest.parse::<Digest>().unwrap()));
        }
        let found = haul::inspect::find(&other, &name).unwrap();
        assert_eq!(found.id.to_string(), img.config.digest);
        assert_eq!(
            std::fs::read_dir(other.root().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}

#[tokio::test]
async fn a_tampered_layer_is_refused_and_nothing_is_published() {
    let img = image(&[31, 32], Format::Oci);
    let registry = registry_with(&[("team/app", "1", &img)]).await;
    let h = harness();
    let name = format!("{}/team/app:1", registry.host());
    h.pull(&name).await.unwrap();
    let file = h.dir.path().join("app.tar");
    archive::save_to_file(
        &h.store,
        std::slice::from_ref(&name),
        ArchiveFormat::DockerArchive,
        &file,
    )
    .unwrap();

    // Flip one byte inside the second layer's member data.
    let victim = &img.layers[1].blob;
    let bytes = std::fs::read(&file).unwrap();
    let member = format!("blobs/sha256/{}", victim.hex());
    let header_at = bytes
        .windows(member.len())
        .position(|w| w == member.as_bytes())
        .expect("member header");
    let mut tampered = bytes.clone();
    tampered[header_at + 512 + 100] ^= 0xff;
    let bad = h.dir.path().join("bad.tar");
    std::fs::write(&bad, &tampered).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let other = Store::open(dir.path()).unwrap();
    let err = archive::load(&other, std::fs::File::open(&bad).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::Store(StoreError::Verify { ref digest, .. }) if digest.to_string() == victim.digest),
        "{err:?}"
    );
    assert!(err.to_string().contains(&victim.digest), "{err}");
    assert!(other.refs().unwrap().is_empty(), "no ref is published");
    assert!(!other.has_blob(&victim.digest.parse().unwrap()));
    assert_eq!(
        std::fs::read_dir(other.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_layer_shared_by_two_images_is_saved_once() {
    let shared = random_layer(41, 80_000);
    let a = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(shared.clone())
        .layer(random_layer(42, 50_000))
        .build();
    let b = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(shared.clone())
        .layer(random_layer(43, 50_000))
        .build();
    let registry = registry_with(&[("team/a", "1", &a), ("team/b", "1", &b)]).await;
    let h = harness();
    let na = format!("{}/team/a:1", registry.host());
    let nb = format!("{}/team/b:1", registry.host());
    h.pull(&na).await.unwrap();
    h.pull(&nb).await.unwrap();
    let file = h.dir.path().join("two.tar");
    let outcome = archive::save_to_file(
        &h.store,
        &[na.clone(), nb.clone()],
        ArchiveFormat::DockerArchive,
        &file,
    )
    .unwrap();
    assert_eq!(
        outcome.blobs,
        2 * 2 + 3,
        "two manifests, two configs, three layers"
    );
    let shared_member = format!("blobs/sha256/{}", shared.blob.hex());
    let count = members(&file)
        .iter()
        .filter(|(n, _)| *n == shared_member)
        .count();
    assert_eq!(count, 1);
    let manifest = json_member(&file, "manifest.json");
    assert_eq!(manifest.as_array().unwrap().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let other = Store::open(dir.path()).unwrap();
    let loaded = archive::load(&other, std::fs::File::open(&file).unwrap())
        .await
        .unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(other.find_ref(&na).unwrap().is_some());
    assert!(other.find_ref(&nb).unwrap().is_some());
}

#[tokio::test]
async fn refuses_members_that_escape_and_loads_archives_without_an_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();

    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // `append_data` refuses `..`, so the name is written into the header directly.
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    evil.append(&h, &b"x"[..]).unwrap();
    let bytes = evil.into_inner().unwrap();
    let err = archive::load(&store, std::io::Cursor::new(bytes))
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::UnsafePath { .. }), "{err:?}");

    // docker before 25: manifest.json and blobs, no index.json and no manifest blob.
    let img = image(&[51, 52], Format::Docker);
    let mut legacy = tar::Builder::new(Vec::new());
    for blob in img.blobs() {
        let mut h = tar::Header::new_ustar();
        h.set_size(blob.size);
        h.set_mode(0o644);
        legacy
            .append_data(
                &mut h,
                format!("blobs/sha256/{}", blob.hex()),
                &blob.data[..],
            )
            .unwrap();
    }
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", img.config.hex()),
        "RepoTags": ["legacy/app:old"],
        "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", l.blob.hex())).collect::<Vec<_>>(),
    }]);
    let text = manifest.to_string();
    let mut h = tar::Header::new_ustar();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    legacy
        .append_data(&mut h, "manifest.json", text.as_bytes())
        .unwrap();
    let bytes = legacy.into_inner().unwrap();
    let loaded = archive::load(&store, std::io::Cursor::new(bytes))
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    let found = haul::inspect::find(&store, "legacy/app:old").unwrap();
    assert_eq!(found.id.to_string(), img.config.digest);
    assert_eq!(found.manifest.layers.len(), 2);
    assert_eq!(
        found.manifest.layers[0].media_type,
        haul::manifest::media_type::OCI_LAYER_GZIP
    );
}
