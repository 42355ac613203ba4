//! Images built by the tools people use — buildah (OCI and Docker formats, layered and squashed),
//! podman build, umoci (new, repack, insert) and skopeo copies between formats and compressions —
//! pushed into the real registry, pulled and unpacked by haul, and compared with the producer's own
//! view of the image: `buildah mount`, `podman image mount` or `umoci unpack`.
//!
//! The images are built from scratch with Debian's static busybox (`RUN` steps run in a chroot),
//! and change what layers usually change: files deleted, directories emptied and refilled, a
//! directory replaced by a file and files and symlinks by directories, hardlinks, a setuid binary,
//! a FIFO, a sticky directory and a file owned by another user.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::unpacking_harness as harness;
use haul::progress::Silent;
use haul::unpack::{UnpackOptions, unpack};
use serde_json::Value;
use test_registry::{
    Compare, Containers, RealRegistry, RegistryOptions, Tree, assert_same_tree, run_tool, skopeo,
    umoci_unpack,
};

const BUSYBOX: &str = "/bin/busybox";

/// Everything [`Tree`] records, modification times included.
const WITH_MTIMES: Compare = Compare {
    owners: true,
    mtimes: true,
    xattrs: true,
    hardlinks: true,
    ignored_xattrs: &[],
    made_now_since: None,
};

/// The build every `RUN`-capable producer runs: busybox, then a layer that makes things, then one
/// that deletes and replaces them.
const CONTAINERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "set -e; /bin/busybox --install -s /bin; mkdir -p /etc /var/cache/app /opt/thing /data /usr/sbin; echo a > /etc/a; echo keep > /etc/keep; ln /etc/keep /etc/keep-hard; echo c1 > /var/cache/app/one; echo c2 > /var/cache/app/two; echo inside > /opt/thing/inside; echo f > /data/file; ln -s /etc/keep /data/link; cp /bin/busybox /usr/sbin/su-tool; chmod 4755 /usr/sbin/su-tool; chown 1000:1000 /data/file; mkfifo /data/fifo; chmod 1777 /data"]
RUN set -e; rm /etc/a; rm -rf /var/cache/app; mkdir /var/cache/app; echo new > /var/cache/app/new; rm -rf /opt/thing; echo now-a-file > /opt/thing; rm /data/file; mkdir /data/file; rm /data/link; mkdir /data/link; echo x > /data/link/x; chmod 640 /etc/keep
"#;

fn have_busybox() -> bool {
    if Path::new(BUSYBOX).is_file() {
        return true;
    }
    println!("SKIPPED: {BUSYBOX} is missing (scripts/test installs busybox-static)");
    false
}

/// A build context with the Containerfile and busybox.
fn context(containers: &Containers) -> PathBuf {
    let dir = containers.scratch("context").unwrap();
    std::fs::write(dir.join("Containerfile"), CONTAINERFILE).unwrap();
    std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
    dir
}

/// Pulls `reference` with haul and unpacks it; returns the rootfs.
async fn haul_unpack(reference: &str, work: &Path) -> PathBuf {
    let h = harness();
    h.pull(reference)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    let entry = h.store.find_ref(reference).unwrap().unwrap();
    let target = work.join(format!("haul-{}", fastrand_name(reference)));
    unpack(
        &h.store,
        &entry,
        &target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap_or_else(|e| panic!("unpack {reference}: {e}"));
    target
}

fn fastrand_name(reference: &str) -> String {
    reference.replace(['/', ':', '@'], "_")
}

/// The layers' media types of `reference`, as the registry serves its manifest.
fn layer_media_types(reference: &str) -> Vec<String> {
    let raw: Value = serde_json::from_str(
        &skopeo([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .unwrap(),
    )
    .unwrap();
    raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_owned())
        .collect()
}

/// The cases the build makes, checked on the oracle's tree too, so that a mistake both share cannot
/// pass.
fn assert_build_cases(tree: &Path) {
    let t = Tree::of(tree).unwrap();
    let text = t.to_string();
    assert!(t.get("etc/a").is_none(), "deleted file:\n{text}");
    assert!(t.get("var/cache/app/one").is_none(), "emptied dir:\n{text}");
    assert!(t.get("var/cache/app/new").is_some(), "{text}");
    assert!(
        matches!(
            t.get("opt/thing").map(|n| &n.kind),
            Some(test_registry::NodeKind::File { .. })
        ),
        "directory replaced by a file:\n{text}"
    );
    assert!(
        matches!(
            t.get("data/link").map(|n| &n.kind),
            Some(test_registry::NodeKind::Dir)
        ),
        "symlink replaced by a directory:\n{text}"
    );
    assert_eq!(t.get("usr/sbin/su-tool").map(|n| n.mode), Some(0o4755));
    assert_eq!(t.get("data").map(|n| n.mode), Some(0o1777));
    assert_eq!(
        t.get("etc/keep-hard")
            .and_then(|n| n.hardlink_group.clone()),
        Some(PathBuf::from("etc/keep"))
    );
    assert_eq!(t.get("etc/keep").map(|n| n.mode), Some(0o640));
    assert!(matches!(
        t.get("data/fifo").map(|n| &n.kind),
        Some(test_registry::NodeKind::Fifo)
    ));
}

fn buildah_mount(containers: &Containers, image: &str) -> PathBuf {
    let container = run_tool(
        containers
            .buildah()
            .args(["from", "--pull-never", "-q", image]),
    )
    .unwrap();
    let path = run_tool(containers.buildah().args(["mount", container.trim()])).unwrap();
    PathBuf::from(path.trim())
}

#[tokio::test(flavor = "multi_thread")]
async fn buildah_images_in_both_formats_layered_and_squashed() {
    if !have_busybox() {
        return;
    }
    let containers = Containers::new().unwrap();
    let ctx = context(&containers);
    let work = containers.scratch("work").unwrap();
    // (tag, build flags, push flags, the layer media types the registry must then serve)
    let cases: [(&str, &[&str], &[&str], &str); 4] = [
        (
            "oci-layers",
            &["--layers", "--format", "oci"],
            &[],
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "docker-layers",
            &["--layers", "--format", "docker"],
            &[],
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (
            "oci-squash",
            &["--squash", "--format", "oci"],
            &[],
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "oci-zstd",
            &["--layers", "--format", "oci"],
            &["--compression-format", "zstd"],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ];
    for (tag, build, push, media_type) in cases {
        let local = format!("localhost/buildah/img:{tag}");
        run_tool(
            containers
                .buildah()
                .args(["bud", "-q", "--isolation", "chroot", "-t", &local])
                .args(build)
                .arg(&ctx),
        )
        .unwrap();
        // A registry of its own: c/image would otherwise push the layers another case pushed
        // (reusing known blobs), whatever compression this case asks for.
        let registry = RealRegistry::start(RegistryOptions::default())
            .await
            .unwrap();
        let reference = format!("{}/buildah/img:{tag}", registry.host());
        run_tool(
            containers
                .buildah()
                .args(["push", "-q", "--tls-verify=false"])
                .args(push)
                .args([&local, &format!("docker://{reference}")]),
        )
        .unwrap();
        let types = layer_media_types(&reference);
        let want_layers = if tag == "oci-squash" { 1 } else { 3 };
        assert_eq!(types.len(), want_layers, "{tag}: {types:?}");
        assert!(types.iter().all(|t| t == media_type), "{tag}: {types:?}");

        let ours = haul_unpack(&reference, &work).await;
        let oracle = buildah_mount(&containers, &local);
        assert_build_cases(&oracle);
        assert_same_tree(&ours, &oracle, &WITH_MTIMES, tag);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_build_then_skopeo_copies_between_formats() {
    if !have_busybox() {
        return;
    }
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let containers = Containers::new().unwrap();
    let ctx = context(&containers);
    let work = containers.scratch("work").unwrap();
    let host = registry.host();
    let local = "localhost/podman/img:1";
    run_tool(
        containers
            .podman()
            .args(["build", "-q", "--isolation", "chroot", "-t", local])
            .arg(&ctx),
    )
    .unwrap();
    let oracle = PathBuf::from(
        run_tool(containers.podman().args(["image", "mount", local]))
            .unwrap()
            .trim(),
    );
    assert_build_cases(&oracle);
    let reference = format!("{host}/podman/img:1");
    run_tool(containers.podman().args([
        "push",
        "-q",
        "--tls-verify=false",
        local,
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    let ours = haul_unpack(&reference, &work).await;
    assert_same_tree(&ours, &oracle, &WITH_MTIMES, "podman build");

    // skopeo between registries' formats and compressions: the same tree each time.
    for (tag, flags) in [
        ("v2s2", &["--format", "v2s2"][..]),
        ("oci", &["--format", "oci"][..]),
        (
            "zstd",
            &["--format", "oci", "--dest-compress-format", "zstd"][..],
        ),
    ] {
        let copy = format!("{host}/podman/copy:{tag}");
        skopeo(
            [
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
            ]
            .iter()
            .copied()
            .chain(flags.iter().copied())
            .chain([
                format!("docker://{reference}").as_str(),
                format!("docker://{copy}").as_str(),
            ]),
        )
        .unwrap();
        let ours = haul_unpack(&copy, &work).await;
        assert_same_tree(&ours, &oracle, &WITH_MTIMES, tag);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn umoci_new_repack_and_insert() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let umoci = |args: &[&str]| run_tool(Command::new("umoci").args(args)).unwrap();
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image("base")]);
    umoci(&[
        "unpack",
        "--image",
        &image("base"),
        bundle.to_str().unwrap(),
    ]);
    let rootfs = bundle.join("rootfs");
    let w = |p: &str, body: &str| {
        let p = rootfs.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    // A layer whose last file is not a multiple of 512 bytes: umoci 0.4.7 ends the tar right
    // after it, without padding or end-of-archive blocks.
    w("etc/os-release", "ID=umoci\n");
    w("etc/gone", "to be deleted\n");
    w("srv/www/index.html", "<h1>umoci</h1>\n");
    w("srv/www/old.html", "old\n");
    w("opt/dir/inside", "inside\n");
    std::os::unix::fs::symlink("../etc/os-release", rootfs.join("srv/release")).unwrap();
    std::fs::hard_link(
        rootfs.join("etc/os-release"),
        rootfs.join("etc/os-release.bak"),
    )
    .unwrap();
    std::fs::set_permissions(
        rootfs.join("srv/www"),
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .unwrap();
    umoci(&["repack", "--image", &image("v1"), bundle.to_str().unwrap()]);
    std::fs::remove_file(rootfs.join("etc/gone")).unwrap();
    std::fs::remove_file(rootfs.join("srv/www/old.html")).unwrap();
    std::fs::remove_dir_all(rootfs.join("opt/dir")).unwrap();
    w("opt/dir", "a file now\n");
    std::fs::remove_file(rootfs.join("srv/release")).unwrap();
    w("srv/release/notes", "a directory now\n");
    umoci(&["repack", "--image", &image("v2"), bundle.to_str().unwrap()]);
    let extra = work.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("inserted"), "by umoci insert\n").unwrap();
    umoci(&[
        "insert",
        "--image",
        &image("v2"),
        extra.to_str().unwrap(),
        "/usr/local/share/extra",
    ]);

    let reference = format!("{}/umoci/img:2", registry.host());
    skopeo([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}", image("v2")),
        &format!("docker://{reference}"),
    ])
    .unwrap();
    let ours = haul_unpack(&reference, work.path()).await;
    let oracle = umoci_unpack(&layout, "v2", &work.path().join("oracle")).unwrap();
    let t = Tree::of(&oracle).unwrap();
    assert!(t.get("etc/gone").is_none() && t.get("srv/www/old.html").is_none());
    assert!(t.get("srv/release/notes").is_some());
    assert!(t.get("usr/local/share/extra/inserted").is_some());
    // `umoci insert`'s layer does not list the parents of what it inserts: each extractor stamps
    // them with its own "now", which may be a second apart. Everything else keeps its mtime.
    for tree in [&ours, &oracle] {
        for implicit in ["usr", "usr/local", "usr/local/share"] {
            std::fs::File::open(tree.join(implicit))
                .and_then(|d| d.set_modified(std::time::SystemTime::UNIX_EPOCH))
                .unwrap();
        }
    }
    assert_same_tree(&ours, &oracle, &WITH_MTIMES, "umoci");
}
