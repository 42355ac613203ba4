//! Unpacking into a directory that already exists, a mount point above all (issue 15, item 14):
//! a mount point cannot be renamed over (`EBUSY`), and beside it is another filesystem, so the
//! tree must be built in it. The mount-point cases mount a tmpfs and need root: without it they
//! print `SKIPPED`.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::harness;
use haul::bundle::write_bundle;
use haul::progress::Silent;
use haul::store::RefEntry;
use haul::unpack::{UnpackError, UnpackOptions, unpack};
use test_registry::{Format, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions};

/// A tmpfs mounted on `path` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (and `SKIPPED` printed) when this process may not mount.
    fn mount(path: &Path) -> Option<Tmpfs> {
        let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let mounted = is_root
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: needs root to mount a tmpfs");
            return None;
        }
        Some(Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A store holding a two-layer image (the second layer whiting out a file of the first), and its
/// ref.
async fn stored_image() -> (common::Harness, RefEntry, RealRegistry) {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("etc/os-release", b"ID=test\n", 0o644)
                .add_file("etc/gone", b"removed above", 0o644)
                .finish_gzip(),
        )
        .layer(
            LayerBuilder::new()
                .add_file("app/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
                .add_whiteout("etc/gone")
                .finish_gzip(),
        )
        .build();
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    let h = harness();
    let reference = format!("{}/team/app:1", registry.host());
    h.pull(&reference).await.unwrap();
    let entry = h.store.find_ref(&reference).unwrap().unwrap();
    (h, entry, registry)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_is_the_image(root: &Path) {
    assert_eq!(names(root), ["app", "etc"], "{}", root.display());
    assert_eq!(
        std::fs::read(root.join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
    assert!(!root.join("etc/gone").exists(), "the whiteout was applied");
    let run = std::fs::metadata(root.join("app/run.sh")).unwrap();
    assert_eq!(run.permissions().mode() & 0o7777, 0o755);
}

#[tokio::test(flavor = "multi_thread")]
async fn unpack_into_an_empty_mount_point() {
    let (h, entry, _registry) = stored_image().await;
    let parent = h.dir.path().join("mnt");
    let target = parent.join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    let Some(_mount) = Tmpfs::mount(&target) else {
        return;
    };
    let device = std::fs::metadata(&target).unwrap().dev();

    let stats = unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();

    assert_eq!(stats.layers, 2);
    assert_is_the_image(&target);
    // Built on the mounted filesystem, and nothing left beside it.
    assert_eq!(
        std::fs::metadata(target.join("etc/os-release"))
            .unwrap()
            .dev(),
        device
    );
    assert_eq!(names(&parent), ["rootfs"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn force_replaces_what_a_mount_point_holds() {
    let (h, entry, _registry) = stored_image().await;
    let target = h.dir.path().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    let Some(_mount) = Tmpfs::mount(&target) else {
        return;
    };
    std::fs::write(target.join("old.txt"), "from before").unwrap();
    std::fs::create_dir(target.join("etc")).unwrap();
    std::fs::write(target.join("etc/stale"), "from before").unwrap();

    let refused = unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    );
    assert!(
        matches!(refused, Err(UnpackError::TargetNotEmpty { .. })),
        "{refused:?}"
    );
    assert_eq!(names(&target), ["etc", "old.txt"], "left as it was");

    unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions {
            force: true,
            ..UnpackOptions::for_current_user()
        },
        &Silent,
    )
    .unwrap();
    assert_is_the_image(&target);
    assert!(!target.join("etc/stale").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_into_an_empty_mount_point() {
    let (h, entry, _registry) = stored_image().await;
    let bundle = h.dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let Some(_mount) = Tmpfs::mount(&rootfs) else {
        return;
    };

    write_bundle(
        &h.store,
        &entry,
        &bundle,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();

    assert_is_the_image(&rootfs);
    assert_eq!(names(&bundle), ["config.json", "rootfs"]);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
}

#[tokio::test(flavor = "multi_thread")]
async fn unpack_into_an_existing_empty_directory_leaves_nothing_beside_or_inside() {
    let (h, entry, _registry) = stored_image().await;
    let parent = h.dir.path().join("out");
    let target = parent.join("rootfs");
    std::fs::create_dir_all(&target).unwrap();

    unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();

    assert_is_the_image(&target);
    assert_eq!(names(&parent), ["rootfs"]);
    let records = h.store.root().join("staging");
    assert!(
        !records.exists() || names(&records).is_empty(),
        "an unpack that finished leaves no record of its staging directory"
    );
}
