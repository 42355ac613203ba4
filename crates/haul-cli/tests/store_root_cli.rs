//! What `--root` may name (issue 15, item 13): a store is an OCI image layout; an empty or
//! missing directory becomes one, a directory of other files is refused and left alone, a layout
//! skopeo wrote opens; a read-only store serves what only reads (verify included) and says so for
//! what writes.
//! The read-only cases bind-mount the store read-only in a private mount namespace (`unshare`),
//! which needs root: without it they print `SKIPPED`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{Env, Output, ok, registry_with, run};
use test_registry::{Format, Image, ImageBuilder, LayerBuilder};

fn haul_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("haul")
}

fn image() -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("etc/base.txt", b"base layer", 0o644)
                .finish_gzip(),
        )
        .layer(
            LayerBuilder::new()
                .add_file("app/hello.txt", b"hello from the top layer", 0o644)
                .finish_gzip(),
        )
        .build()
}

/// Names and modes under `dir`, recursively, to show nothing was added or changed.
fn snapshot(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        out.push((
            d.display().to_string(),
            std::fs::metadata(&d).unwrap().mode(),
        ));
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                out.push((entry.path().display().to_string(), meta.mode()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_directory_of_other_files_is_not_turned_into_a_store() {
    let env = Env::new();
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("notes.txt"), "my notes").unwrap();
    std::fs::write(project.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&project);

    let out = run(env
        .haul_bare()
        .args(["--root", &project.display().to_string(), "images"]));

    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Error: ")
            && first.contains(&project.display().to_string())
            && first.contains("oci-layout")
            && first.contains("notes.txt")
            && first.contains("src/"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("hint: ") && l.contains("--root")),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&project), before, "the directory was changed");
}

#[test]
fn an_empty_or_missing_directory_becomes_a_store() {
    let env = Env::new();
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = env.dir.path().join("a/b/missing");
    // A fresh filesystem's root holds an empty lost+found.
    let fresh = env.dir.path().join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    for root in [&empty, &missing, &fresh] {
        ok(run(env.haul_bare().args([
            "--root",
            &root.display().to_string(),
            "images",
        ])));
        let layout = std::fs::read_to_string(root.join("oci-layout")).unwrap();
        assert!(layout.contains("imageLayoutVersion"), "{}", root.display());
        assert!(root.join("index.json").is_file(), "{}", root.display());
        assert!(root.join("blobs/sha256").is_dir(), "{}", root.display());
        // And it opens again as the store it now is.
        ok(run(env.haul_bare().args([
            "--root",
            &root.display().to_string(),
            "images",
        ])));
    }
}

/// skopeo copies `IMAGE` from `registry` into the OCI layout `dir` as `tag`.
fn skopeo_copy(registry: &str, dir: &Path, tag: &str) {
    let copied = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{registry}/team/app:1"),
            &format!("oci:{}:{tag}", dir.display()),
        ])
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layout_skopeo_wrote_opens_as_a_store() {
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    skopeo_copy(&registry.host(), &layout, "v1");
    let root = layout.display().to_string();

    let images = ok(run(env.haul_bare().args(["--root", &root, "images"])));
    assert!(images.stdout.contains("v1"), "{}", images.stdout);
    let dest = env.dir.path().join("rootfs");
    ok(run(env.haul_bare().args([
        "--root",
        &root,
        "unpack",
        "v1",
        &dest.display().to_string(),
    ])));
    assert_eq!(
        std::fs::read(dest.join("app/hello.txt")).unwrap(),
        b"hello from the top layer"
    );
}

/// Whether this process may make a private mount namespace with a read-only bind mount.
fn can_mount() -> bool {
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    is_root
        && Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

/// `haul --root VIEW ARGS` where VIEW is `store` bind-mounted read-only, in a mount namespace of
/// its own (the mount goes away with the process).
fn haul_read_only(env: &Env, store: &Path, args: &[&str]) -> Output {
    let view = env.dir.path().join("ro-view");
    std::fs::create_dir_all(&view).unwrap();
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" || exit 99
            view=$2; shift 2; exec "$@""#,
        )
        .arg("sh")
        .arg(store)
        .arg(&view)
        .arg(haul_bin())
        .arg("--root")
        .arg(&view)
        .args(args);
    let out = run(&mut assert_cmd::Command::from_std(cmd));
    assert_ne!(
        out.code, 99,
        "the read-only bind mount failed: {}",
        out.stderr
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_store_serves_images_inspect_save_and_unpack() {
    if !can_mount() {
        eprintln!("SKIPPED: needs root and mount namespaces for a read-only bind mount");
        return;
    }
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let store = PathBuf::from(env.root());
    let before = snapshot(&store);

    let images = ok(haul_read_only(&env, &store, &["images"]));
    assert!(images.stdout.contains("team/app"), "{}", images.stdout);
    let inspect = ok(haul_read_only(&env, &store, &["inspect", &name]));
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(json[0]["Architecture"], "amd64", "{}", inspect.stdout);
    ok(haul_read_only(&env, &store, &["history", &name]));
    // The store check only reads: it re-hashes every blob and compares the layer cache.
    let verified = ok(haul_read_only(&env, &store, &["verify"]));
    assert!(
        verified.stdout.contains("all intact") && verified.stderr.contains("not compared"),
        "verify: {}{}",
        verified.stdout,
        verified.stderr
    );
    let archive = env.dir.path().join("app.tar");
    ok(haul_read_only(
        &env,
        &store,
        &["save", "-o", &archive.display().to_string(), &name],
    ));
    assert!(std::fs::metadata(&archive).unwrap().len() > 0);

    // From the layer cache as the pull left it…
    let cached = env.dir.path().join("from-cache");
    ok(haul_read_only(
        &env,
        &store,
        &["unpack", &name, &cached.display().to_string()],
    ));
    assert_eq!(
        std::fs::read(cached.join("app/hello.txt")).unwrap(),
        b"hello from the top layer"
    );
    // …and from the blobs alone, where the cache cannot be filled.
    std::fs::remove_dir_all(store.join("layers")).unwrap();
    let before = before
        .into_iter()
        .filter(|(p, _)| !p.contains("/layers"))
        .collect::<Vec<_>>();
    let bare = env.dir.path().join("from-blobs");
    ok(haul_read_only(
        &env,
        &store,
        &["unpack", &name, &bare.display().to_string()],
    ));
    assert_eq!(
        std::fs::read(bare.join("etc/base.txt")).unwrap(),
        b"base layer"
    );
    assert_eq!(
        std::fs::read(bare.join("app/hello.txt")).unwrap(),
        b"hello from the top layer"
    );
    assert_eq!(snapshot(&store), before, "the store changed");

    // Damage is still found in a read-only store (changed underneath the read-only view).
    let layer = &img.layers[0].blob;
    let blob = store.join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let damaged = haul_read_only(&env, &store, &["verify"]);
    assert_eq!(damaged.code, 1, "verify: {}", damaged.stderr);
    assert!(
        damaged
            .stdout
            .contains(&format!("corrupt: {} (layer of {name})", layer.digest)),
        "verify: {}",
        damaged.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_to_a_read_only_store_fail_saying_it_is_read_only() {
    if !can_mount() {
        eprintln!("SKIPPED: needs root and mount namespaces for a read-only bind mount");
        return;
    }
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let store = PathBuf::from(env.root());
    let requests = registry.requests().len();

    let other = format!("{}/team/app:2", registry.host());
    let cases: [&[&str]; 5] = [
        &["pull", "-q", &name],
        &["tag", &name, &other],
        &["rmi", &name],
        &["image", "prune", "-f"],
        &["verify", "--repair"],
    ];
    for args in cases {
        let out = haul_read_only(&env, &store, args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("Error: ") && first.contains("is read-only"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.lines().any(|l| l.starts_with("hint: ")),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        registry.requests().len(),
        requests,
        "a pull into a read-only store asked the registry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_layout_skopeo_wrote_serves_images_and_unpack() {
    if !can_mount() {
        eprintln!("SKIPPED: needs root and mount namespaces for a read-only bind mount");
        return;
    }
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    // skopeo's layout: no ingest/, locks/ or layer cache, directories 0755.
    skopeo_copy(&registry.host(), &layout, "v1");
    let before = snapshot(&layout);

    let images = ok(haul_read_only(&env, &layout, &["images"]));
    assert!(images.stdout.contains("v1"), "{}", images.stdout);
    let dest = env.dir.path().join("rootfs");
    ok(haul_read_only(
        &env,
        &layout,
        &["unpack", "v1", &dest.display().to_string()],
    ));
    assert_eq!(
        std::fs::read(dest.join("app/hello.txt")).unwrap(),
        b"hello from the top layer"
    );
    // Every blob skopeo wrote hashes to its name by sha256sum's count; verify says the same.
    let blobs = layout.join("blobs/sha256");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let summed = Command::new("sha256sum")
        .args(&names)
        .current_dir(&blobs)
        .output()
        .unwrap();
    assert!(summed.status.success());
    let intact = String::from_utf8(summed.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().next() == l.split_whitespace().nth(1))
        .count();
    assert_eq!(
        intact,
        names.len(),
        "sha256sum disagrees with skopeo's names"
    );
    let verified = ok(haul_read_only(&env, &layout, &["verify"]));
    assert!(
        verified
            .stdout
            .contains(&format!("Verified {intact} blobs of 1 image: all intact")),
        "{}",
        verified.stdout
    );
    assert_eq!(snapshot(&layout), before, "the layout changed");
}
