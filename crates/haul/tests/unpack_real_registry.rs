//! Unpacking images pulled from the real registry, compared with `skopeo copy` + `umoci unpack` of
//! the same image; diff_id verification, expansion bounds and the target-directory rules.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::harness;
use haul::progress::Silent;
use haul::unpack::{UnpackError, UnpackOptions, unpack};
use test_registry::{Format, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions};

/// (path, kind, mode, size or link target, sha256 of content) for every entry under `root`.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push(format!("{rel} link {owner} -> {}", target.display()));
            } else if meta.is_dir() {
                out.push(format!("{rel} dir {mode:o} {owner}"));
                walk(root, &path, out);
            } else {
                let data = std::fs::read(&path).unwrap();
                out.push(format!(
                    "{rel} file {mode:o} {owner} {} {} nlink={}",
                    data.len(),
                    test_registry::sha256_digest(&data),
                    meta.nlink()
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn tricky_image() -> test_registry::Image {
    let base = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/hostname", b"base\n", 0o644)
        .add_file("etc/shadow", b"root:*:1:0:::::\n", 0o640)
        .add_dir("usr/bin", 0o755)
        .add_file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        // Real tars give a hardlink the mode of the inode it shares; docker re-applies the
        // header's mode to the inode and umoci does not, so the two only agree on real input.
        .raw_entry(test_registry::RawEntry {
            mode: 0o4755,
            ..test_registry::RawEntry::hardlink("usr/bin/tool-link", "usr/bin/tool")
        })
        .add_symlink("bin", "usr/bin")
        .add_dir("tmp", 0o1777)
        .add_dir("var/cache", 0o755)
        .add_file("var/cache/a", b"stale a", 0o644)
        .add_file("var/cache/b", b"stale b", 0o644)
        .add_file("opt/thing", b"a file that becomes a directory", 0o644)
        .finish_gzip();
    let update = LayerBuilder::new()
        .add_whiteout("etc/shadow")
        .add_file("etc/hostname", b"updated\n", 0o644)
        .add_opaque_whiteout("var/cache")
        .add_file("var/cache/c", b"fresh c", 0o600)
        .add_dir("opt/thing", 0o700)
        .add_file("opt/thing/inside", b"now a directory", 0o644)
        .add_file("bin/added-through-symlink", b"lands in usr/bin", 0o755)
        .finish_gzip();
    ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(base)
        .layer(update)
        .build()
}

#[tokio::test]
async fn unpack_matches_umoci_on_the_same_image() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = tricky_image();
    Pusher::new(&registry.url())
        .push_image("team/tricky", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let reference = format!("{}/team/tricky:1", registry.host());
    h.pull(&reference).await.unwrap();
    let entry = h.store.find_ref(&reference).unwrap().unwrap();
    let ours = h.dir.path().join("ours");
    let stats = unpack(
        &h.store,
        &entry,
        &ours,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();
    assert_eq!(stats.layers, 2);

    let work = h.dir.path().join("umoci");
    let layout = work.join("layout");
    std::fs::create_dir_all(&work).unwrap();
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:t", layout.display()),
        ])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let bundle = work.join("bundle");
    let umoci = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:t", layout.display()),
            bundle.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        umoci.status.success(),
        "{}",
        String::from_utf8_lossy(&umoci.stderr)
    );

    let theirs = snapshot(&bundle.join("rootfs"));
    let mine = snapshot(&ours);
    assert_eq!(mine, theirs);
    // And the cases themselves, so a shared mistake cannot pass.
    let text = mine.join("\n");
    assert!(!text.contains("etc/shadow"), "whiteout applied:\n{text}");
    assert!(
        !text.contains("var/cache/a") && text.contains("var/cache/c"),
        "opaque dir:\n{text}"
    );
    assert!(
        text.contains("opt/thing dir 700"),
        "file became a directory:\n{text}"
    );
    assert!(
        text.contains("usr/bin/added-through-symlink file 755"),
        "{text}"
    );
    assert!(
        text.contains("usr/bin/tool file 4755"),
        "setuid kept:\n{text}"
    );
    assert!(text.contains("tmp dir 1777"), "sticky kept:\n{text}");
    assert_eq!(
        std::fs::read(ours.join("etc/hostname")).unwrap(),
        b"updated\n"
    );
}

#[tokio::test]
async fn a_wrong_diff_id_fails_and_leaves_no_tree() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let layer = LayerBuilder::new()
        .add_file("hello", b"hello", 0o644)
        .finish_gzip();
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(layer.clone())
        .config_field(
            "rootfs",
            serde_json::json!({"type": "layers", "diff_ids": [test_registry::sha256_digest(b"other")]}),
        )
        .build();
    Pusher::new(&registry.url())
        .push_image("team/liar", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let reference = format!("{}/team/liar:1", registry.host());
    h.pull(&reference).await.unwrap();
    let entry = h.store.find_ref(&reference).unwrap().unwrap();
    let target = h.dir.path().join("rootfs");
    let err = unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::Stream { index: 0, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&layer.blob.digest) && text.contains("diff_id"),
        "{text}"
    );
    assert!(!target.exists(), "nothing half-extracted is visible");
    let leftovers: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("haul-unpack"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn expansion_is_bounded_and_targets_are_protected() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let zeros = vec![0u8; 4_000_000];
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("zeros", &zeros, 0o644)
                .finish_gzip(),
        )
        .build();
    Pusher::new(&registry.url())
        .push_image("team/bomb", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let reference = format!("{}/team/bomb:1", registry.host());
    h.pull(&reference).await.unwrap();
    let entry = h.store.find_ref(&reference).unwrap().unwrap();

    let tight = UnpackOptions {
        expansion_ratio: 10,
        min_layer_limit: 1_000_000,
        ..UnpackOptions::for_current_user()
    };
    let target = h.dir.path().join("bomb");
    let err = unpack(&h.store, &entry, &target, &tight, &Silent).unwrap_err();
    assert!(err.to_string().contains("expands past"), "{err}");
    assert!(!target.exists());

    let occupied = h.dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"mine").unwrap();
    let options = UnpackOptions::for_current_user();
    let err = unpack(&h.store, &entry, &occupied, &options, &Silent).unwrap_err();
    assert!(matches!(err, UnpackError::TargetNotEmpty { .. }), "{err:?}");
    assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"mine");

    let forced = UnpackOptions {
        force: true,
        ..UnpackOptions::for_current_user()
    };
    unpack(&h.store, &entry, &occupied, &forced, &Silent).unwrap();
    assert!(!occupied.join("keep").exists());
    assert_eq!(
        std::fs::metadata(occupied.join("zeros")).unwrap().len(),
        4_000_000
    );
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_unpack() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let zstd_tar = LayerBuilder::new()
        .add_file("z/file", b"from a zstd layer\n", 0o644)
        .finish_tar();
    let mut frames = zstd::encode_all(&zstd_tar[..zstd_tar.len() / 2], 3).unwrap();
    // Two frames, as `zstd -T` writes: every frame must be read.
    frames.extend(zstd::encode_all(&zstd_tar[zstd_tar.len() / 2..], 3).unwrap());
    let zstd_layer = test_registry::Layer {
        blob: test_registry::Blob::new(haul::manifest::media_type::OCI_LAYER_ZSTD, frames),
        diff_id: test_registry::sha256_digest(&zstd_tar),
    };
    let plain = LayerBuilder::new()
        .add_file("p/file", b"from a plain tar layer\n", 0o600)
        .finish_uncompressed();
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(zstd_layer)
        .layer(plain)
        .build();
    assert_eq!(
        image.layers[0].blob.media_type,
        haul::manifest::media_type::OCI_LAYER_ZSTD
    );
    Pusher::new(&registry.url())
        .push_image("team/zstd", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let reference = format!("{}/team/zstd:1", registry.host());
    h.pull(&reference).await.unwrap();
    let entry = h.store.find_ref(&reference).unwrap().unwrap();
    let target = h.dir.path().join("rootfs");
    unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(target.join("z/file")).unwrap(),
        b"from a zstd layer\n"
    );
    assert_eq!(
        std::fs::read(target.join("p/file")).unwrap(),
        b"from a plain tar layer\n"
    );
}
