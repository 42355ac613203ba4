//! Where `haul` puts its store and what it refuses to use, as users see it (issue 12, items 2
//! and 3). Tests that act as another user need root and print `SKIPPED` without it.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

mod common;

use common::{Env, ok, registry_with, run};
use test_registry::{Format, ImageBuilder, LayerBuilder, random_layer};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn haul_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("haul")
}

#[test]
fn no_home_no_xdg_does_not_fall_back_to_a_shared_tmp_dir() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run haul as uid {NOBODY}");
        return;
    }
    // A shared temp dir like /tmp, where any user could have pre-created `haul/` with a forged
    // layer-cache entry (chain IDs are public).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared_tmp = dir.path().join("tmp");
    std::fs::create_dir(&shared_tmp).unwrap();
    std::fs::set_permissions(&shared_tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();

    let out = run(assert_cmd::Command::from_std({
        let mut cmd = Command::new(haul_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", &shared_tmp)
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/")
            .arg("images");
        cmd
    })
    .timeout(std::time::Duration::from_secs(60)));

    assert!(
        !shared_tmp.join("haul").exists(),
        "haul made its store in the shared temp dir {}",
        shared_tmp.display()
    );
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains("HOME") && out.stderr.contains("XDG_DATA_HOME"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint:")
            && out.stderr.contains("--root")
            && out.stderr.contains("HAUL_ROOT"),
        "{}",
        out.stderr
    );
}

/// Every directory haul made and every file it wrote, outside the extracted layers' own trees.
fn store_entries(root: &Path, out: &mut Vec<(String, std::fs::Metadata)>) {
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let path = entry.path();
        out.push((path.display().to_string(), meta.clone()));
        // A layer's `diff/` keeps the image's own modes (setuid, 1777 tmp…): its protection is
        // that nobody else can reach it.
        if meta.is_dir() && entry.file_name() != "diff" {
            store_entries(&path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_under_umask_000_leaves_a_private_store() {
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(31, 40_000))
        .layer(
            LayerBuilder::new()
                .add_dir("tmp", 0o1777)
                .add_file("bin/tool", b"#!/bin/sh\n", 0o4755)
                .finish_gzip(),
        )
        .build();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // umask is per process: the shell sets it, then becomes haul.
    let mut sh = Command::new("sh");
    sh.env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(haul_bin())
        .args(["--root", &env.root(), "pull", "-q", &name]);
    ok(run(&mut assert_cmd::Command::from_std(sh)));

    let root = Path::new(&env.root()).to_owned();
    assert_eq!(
        std::fs::metadata(&root).unwrap().mode() & 0o7777,
        0o700,
        "store root"
    );
    let mut entries = Vec::new();
    store_entries(&root, &mut entries);
    assert!(
        entries.iter().any(|(p, _)| p.contains("/layers/sha256/")),
        "the pull extracted into the layer cache: {entries:?}"
    );
    for (path, meta) in &entries {
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() && !path.ends_with("/diff") {
            assert_eq!(mode, 0o700, "{path}");
        } else if meta.is_file() {
            assert_eq!(mode & 0o077, 0, "{path} is mode {mode:o}");
        }
    }
}

#[test]
fn a_store_owned_by_another_user_is_refused_with_what_to_do() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to give the store to uid {NOBODY}");
        return;
    }
    let env = Env::new();
    ok(env.run(&["images"]));
    std::os::unix::fs::chown(env.root(), Some(NOBODY), Some(NOBODY)).unwrap();

    let out = env.run(&["images"]);

    assert_eq!(out.code, 1, "{}", out.stderr);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Error: ")
            && first.contains(&env.root())
            && first.contains("65534")
            && first.contains("0700"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("hint: ")),
        "{}",
        out.stderr
    );
}

#[test]
fn a_loose_store_from_an_older_haul_is_tightened_with_a_notice() {
    let env = Env::new();
    ok(env.run(&["images"]));
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = ok(env.run(&["images"]));
    let notices: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("WARNING: "))
        .collect();
    assert_eq!(notices.len(), 1, "{}", out.stderr);
    assert!(
        notices[0].contains(&env.root()) && notices[0].contains("0755"),
        "{}",
        notices[0]
    );
    assert_eq!(
        std::fs::metadata(env.root()).unwrap().mode() & 0o7777,
        0o700
    );

    let again = ok(env.run(&["images"]));
    assert!(!again.stderr.contains("WARNING"), "{}", again.stderr);
}
