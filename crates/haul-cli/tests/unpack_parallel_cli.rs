//! `haul unpack` run many times at once on one store by an unprivileged user, whose layer cache
//! holds files and directories their owner may not read (a layer's 0000 `/etc/shadow`, 0000
//! directories, a 0300 drop box): every run succeeds and every rootfs has the image's modes.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use test_registry::{Format, ImageBuilder, LayerBuilder, RawEntry};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `haul` as uid/gid 65534 with its own home.
fn haul_as_nobody(home: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("haul"));
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null());
    cmd
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_parallel_unprivileged_unpacks_of_one_image_all_succeed() {
    if !is_root() {
        eprintln!("SKIPPED: running haul as another user needs root");
        return;
    }
    let mut layer = LayerBuilder::new().add_dir("etc", 0o755);
    layer = layer.add_file("etc/shadow", b"root:*:19000::::::\n", 0o000);
    for d in 0..20 {
        layer = layer.add_dir(&format!("locked{d}"), 0o000);
        for f in 0..20 {
            layer = layer.add_file(&format!("locked{d}/secret{f}"), b"s", 0o000);
        }
        layer = layer
            .add_file(&format!("locked{d}/drop/box"), b"b", 0o200)
            .add_dir(&format!("locked{d}/drop"), 0o300)
            // Sorts before its target: the mode is the inode's, whichever name comes first.
            .add_hardlink(&format!("locked{d}/alias"), &format!("locked{d}/secret0"))
            .raw_entry(RawEntry {
                mode: 0o000,
                ..RawEntry::hardlink(&format!("locked{d}/a0"), &format!("locked{d}/secret1"))
            });
    }
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(layer.finish_gzip())
        .build();
    let registry = common::registry_with("team/locked", "1", &image).await;
    let reference = format!("{}/team/locked:1", registry.host());

    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    for dir in [&home, &work] {
        std::fs::create_dir(dir).unwrap();
        chown_nobody(dir);
    }
    let store = work.join("store");
    let pull = haul_as_nobody(&home)
        .args(["--root", store.to_str().unwrap(), "pull", "-q", &reference])
        .output()
        .unwrap();
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );

    let children: Vec<_> = (0..10)
        .map(|i| {
            let target = work.join(format!("rootfs{i}"));
            let child = haul_as_nobody(&home)
                .args([
                    "--root",
                    store.to_str().unwrap(),
                    "unpack",
                    "-q",
                    &reference,
                ])
                .arg(&target)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (target, child)
        })
        .collect();
    let mut failures = Vec::new();
    let mut targets = Vec::new();
    for (target, child) in children {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        targets.push(target);
    }
    assert!(
        failures.is_empty(),
        "{} of 10 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for target in &targets {
        let mode = |p: &str| std::fs::symlink_metadata(target.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("etc/shadow"), 0o000);
        assert_eq!(mode("locked7"), 0o000);
        assert_eq!(mode("locked7/secret3"), 0o000);
        assert_eq!(mode("locked7/drop"), 0o300);
        assert_eq!(mode("locked7/drop/box"), 0o200);
        assert_eq!(
            mode("locked7/alias"),
            0o644,
            "the link's header gave the inode 0644"
        );
        assert_eq!(mode("locked7/secret0"), 0o644);
        assert_eq!(mode("locked7/a0"), 0o000);
        assert_eq!(mode("locked7/secret1"), 0o000);
        assert_eq!(
            std::fs::symlink_metadata(target.join("locked7/alias"))
                .unwrap()
                .ino(),
            std::fs::symlink_metadata(target.join("locked7/secret0"))
                .unwrap()
                .ino()
        );
        assert_eq!(
            std::fs::symlink_metadata(target.join("etc/shadow"))
                .unwrap()
                .uid(),
            NOBODY
        );
    }
    // The cache itself was left as it was built: nothing in it changed mode under the readers.
    let again = haul_as_nobody(&home)
        .args([
            "--root",
            store.to_str().unwrap(),
            "unpack",
            "-q",
            &reference,
        ])
        .arg(work.join("again"))
        .output()
        .unwrap();
    assert!(again.status.success());
    let verify = haul_as_nobody(&home)
        .args(["--root", store.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}");
    assert!(stdout.contains("1 cached layer"), "{stdout}");
}
