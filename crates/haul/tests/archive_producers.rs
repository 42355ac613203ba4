//! `load` of the archives other tools write — `podman save` (docker-archive, oci-archive, several
//! images), `skopeo copy … docker-archive:`, docker's layout before 25 (built here as moby's
//! `image/tarexport/save.go` writes it, docker itself not being runnable), each plain, gzip- or
//! zstd-compressed — compared with the tools: the image ID (config digest) and diff_ids stay what
//! the producer says, `unpack` equals `umoci unpack` of the same image, and what `save` writes
//! back is read by `podman load` and skopeo with the same digests.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use haul::archive::{self, ArchiveError, ArchiveFormat, LoadedImage};
use haul::progress::Silent;
use haul::store::Store;
use haul::unpack::{UnpackOptions, unpack};
use serde_json::{Value, json};
use test_registry::{
    Compare, Containers, Format, Image, ImageBuilder, Layer, LayerBuilder, Pusher, RawEntry,
    RealRegistry, RegistryOptions, assert_same_tree, run_tool, skopeo, umoci_unpack,
};

/// Shared by both images: a base with a setuid binary, a symlink and a hardlink.
fn base_layer() -> Layer {
    LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/os-release", b"ID=haul-test\n", 0o644)
        .add_dir("usr/bin", 0o755)
        .add_file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        // A real tar gives a hardlink the mode of the inode it shares.
        .raw_entry(RawEntry {
            mode: 0o4755,
            ..RawEntry::hardlink("usr/bin/tool-again", "usr/bin/tool")
        })
        .add_symlink("bin", "usr/bin")
        .add_dir("var/cache", 0o755)
        .add_file("var/cache/stale", b"stale", 0o600)
        .finish_gzip()
}

fn base_image() -> Image {
    ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(base_layer())
        .layer(
            LayerBuilder::new()
                .add_whiteout("var/cache/stale")
                .add_file("etc/motd", b"hello from base\n", 0o644)
                .finish_gzip(),
        )
        .build()
}

fn app_image() -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(base_layer())
        .layer(
            LayerBuilder::new()
                .add_dir("app", 0o750)
                .add_file("app/run.sh", b"#!/bin/sh\nexec tool\n", 0o755)
                .add_opaque_whiteout("var/cache")
                .add_file("var/cache/fresh", b"fresh", 0o644)
                .finish_gzip(),
        )
        .build()
}

/// The real registry holding `team/base:1` and `team/app:1`.
async fn registry() -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    pusher
        .push_image("team/base", "1", &base_image())
        .await
        .unwrap();
    pusher
        .push_image("team/app", "1", &app_image())
        .await
        .unwrap();
    registry
}

fn podman_pull(containers: &Containers, registry: &RealRegistry, repo: &str) -> String {
    let name = format!("{}/{repo}", registry.host());
    run_tool(containers.podman().args([
        "pull",
        "-q",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]))
    .unwrap();
    name
}

fn diff_ids(image: &Image) -> Vec<String> {
    image.layers.iter().map(|l| l.diff_id.clone()).collect()
}

/// The config digest and diff_ids of `name` as `inspect` finds it in `store`.
fn stored(store: &Store, name: &str) -> (String, Vec<String>) {
    let found = haul::inspect::find(store, name).unwrap();
    let ids = found
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.to_string())
        .collect();
    (found.id.to_string(), ids)
}

fn names(loaded: &LoadedImage) -> Vec<String> {
    loaded.names.iter().map(|n| n.to_string()).collect()
}

async fn load_file(store: &Store, file: &Path) -> Result<Vec<LoadedImage>, ArchiveError> {
    archive::load(store, std::fs::File::open(file).unwrap()).await
}

fn empty_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// `haul unpack` of `name` from `store` equals `umoci unpack` of the image the registry serves.
fn assert_unpacks_like_umoci(store: &Store, name: &str, reference: &str, work: &Path) {
    let entry = store.find_ref(name).unwrap().expect("loaded ref");
    let ours = work.join("ours");
    unpack(
        store,
        &entry,
        &ours,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();
    let layout = work.join("layout");
    skopeo([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:t", layout.display()),
    ])
    .unwrap();
    let rootfs = umoci_unpack(&layout, "t", &work.join("bundle")).unwrap();
    assert_same_tree(&ours, &rootfs, &Compare::default(), name);
    assert_eq!(
        std::fs::read(ours.join("etc/os-release")).unwrap(),
        b"ID=haul-test\n"
    );
}

/// `haul save` of `name` as a docker-archive, read back by skopeo and by `podman load`: same image
/// ID and diff_ids.
fn assert_saved_archive_is_read_by_skopeo_and_podman(
    store: &Store,
    name: &str,
    image: &Image,
    work: &Path,
) {
    let file = work.join("resaved.tar");
    archive::save_to_file(
        store,
        &[name.to_owned()],
        ArchiveFormat::DockerArchive,
        &file,
    )
    .unwrap();
    let source = format!("docker-archive:{}", file.display());
    let raw: Value = serde_json::from_str(&skopeo(["inspect", "--raw", &source]).unwrap()).unwrap();
    assert_eq!(raw["config"]["digest"], image.config.digest, "{raw}");
    let inspect: Value = serde_json::from_str(&skopeo(["inspect", &source]).unwrap()).unwrap();
    assert_eq!(inspect["Layers"], json!(diff_ids(image)), "{inspect}");
    let copy = work.join("copy");
    skopeo(["copy", &source, &format!("oci:{}:t", copy.display())]).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    let manifest = blob_json(&copy, index["manifests"][0]["digest"].as_str().unwrap());
    // skopeo rewrites a Docker config as an OCI one (its own field order): the diff_ids stay.
    let config = blob_json(&copy, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["rootfs"]["diff_ids"], json!(diff_ids(image)));

    let podman = Containers::new().unwrap();
    run_tool(podman.podman().args(["load", "-q", "-i"]).arg(&file)).unwrap();
    let id = run_tool(
        podman
            .podman()
            .args(["image", "inspect", "--format", "{{.Id}}", name]),
    )
    .unwrap();
    assert_eq!(
        format!("sha256:{}", id.trim()),
        image.config.digest,
        "podman load"
    );
    let layers = run_tool(podman.podman().args([
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        name,
    ]))
    .unwrap();
    let layers: Value = serde_json::from_str(layers.trim()).unwrap();
    assert_eq!(layers, json!(diff_ids(image)), "podman load");
}

fn blob_json(layout: &Path, digest: &str) -> Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// Tar member names of an archive, in order.
fn member_names(file: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tf").arg(file).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_docker_archive_loads_with_its_ids_and_round_trips() {
    let registry = registry().await;
    let containers = Containers::new().unwrap();
    let name = podman_pull(&containers, &registry, "team/base:1");
    let work = containers.scratch("work").unwrap();
    let file = work.join("base.tar");
    run_tool(
        containers
            .podman()
            .args(["save", "--format", "docker-archive", "-o"])
            .arg(&file)
            .arg(&name),
    )
    .unwrap();
    // podman's layout: `<diff_id hex>.tar` layers, `<config hex>.json`, and docker's legacy
    // `<v1 id>/layer.tar` symlinks to them.
    let members = member_names(&file);
    let image = base_image();
    assert!(
        members.contains(&format!("{}.json", image.config.hex())),
        "{members:?}"
    );
    assert!(
        members.iter().any(|m| m.ends_with("/layer.tar")),
        "{members:?}"
    );

    let (_dir, store) = empty_store();
    let loaded = load_file(&store, &file).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id.to_string(), image.config.digest);
    assert_eq!(names(&loaded[0]), vec![name.clone()]);
    assert_eq!(
        stored(&store, &name),
        (image.config.digest.clone(), diff_ids(&image))
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("ingest"))
            .unwrap()
            .count(),
        0,
        "nothing left in ingest/"
    );

    assert_unpacks_like_umoci(&store, &name, &name, &work.join("unpack"));
    assert_saved_archive_is_read_by_skopeo_and_podman(&store, &name, &image, &work);
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_multi_image_archive_loads_every_image() {
    let registry = registry().await;
    let containers = Containers::new().unwrap();
    let base = podman_pull(&containers, &registry, "team/base:1");
    let app = podman_pull(&containers, &registry, "team/app:1");
    let work = containers.scratch("work").unwrap();
    // podman writes several images only as a docker-archive.
    let file = work.join("both.tar");
    run_tool(
        containers
            .podman()
            .args([
                "save",
                "--multi-image-archive",
                "--format",
                "docker-archive",
                "-o",
            ])
            .arg(&file)
            .args([&base, &app]),
    )
    .unwrap();
    let (_dir, store) = empty_store();
    let loaded = load_file(&store, &file).await.unwrap();
    let mut got: Vec<(String, Vec<String>)> = loaded
        .iter()
        .map(|l| (l.id.to_string(), names(l)))
        .collect();
    got.sort();
    let mut want = vec![
        (base_image().config.digest, vec![base.clone()]),
        (app_image().config.digest, vec![app.clone()]),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        stored(&store, &app),
        (app_image().config.digest, diff_ids(&app_image()))
    );
    assert_unpacks_like_umoci(&store, &app, &app, &work.join("unpack"));
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_oci_archive_loads_under_its_name() {
    let registry = registry().await;
    let containers = Containers::new().unwrap();
    let app = podman_pull(&containers, &registry, "team/app:1");
    let work = containers.scratch("work").unwrap();
    let file = work.join("app.tar");
    run_tool(
        containers
            .podman()
            .args(["save", "--format", "oci-archive", "-o"])
            .arg(&file)
            .arg(&app),
    )
    .unwrap();
    let (_dir, store) = empty_store();
    let loaded = load_file(&store, &file).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(names(&loaded[0]), vec![app.clone()]);
    assert_eq!(
        stored(&store, &app),
        (app_image().config.digest, diff_ids(&app_image()))
    );
    assert_unpacks_like_umoci(&store, &app, &app, &work.join("unpack"));
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_docker_archive_loads_under_the_name_it_was_given() {
    let registry = registry().await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("app.tar");
    skopeo([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/team/app:1", registry.host()),
        &format!("docker-archive:{}:example.com/skopeo/app:7", file.display()),
    ])
    .unwrap();
    let (_dir, store) = empty_store();
    let loaded = load_file(&store, &file).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(names(&loaded[0]), vec!["example.com/skopeo/app:7"]);
    let image = app_image();
    assert_eq!(
        stored(&store, "example.com/skopeo/app:7"),
        (image.config.digest.clone(), diff_ids(&image))
    );
    assert_unpacks_like_umoci(
        &store,
        "example.com/skopeo/app:7",
        &format!("{}/team/app:1", registry.host()),
        work.path(),
    );
    assert_saved_archive_is_read_by_skopeo_and_podman(
        &store,
        "example.com/skopeo/app:7",
        &image,
        work.path(),
    );
}

/// Runs `program ARGS` with `input` on stdin, returning stdout.
fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_archives_are_recognised_by_their_first_bytes() {
    let registry = registry().await;
    let containers = Containers::new().unwrap();
    let base = podman_pull(&containers, &registry, "team/base:1");
    let app = podman_pull(&containers, &registry, "team/app:1");
    let work = containers.scratch("work").unwrap();
    let file = work.join("both.tar");
    run_tool(
        containers
            .podman()
            .args([
                "save",
                "--multi-image-archive",
                "--format",
                "docker-archive",
                "-o",
            ])
            .arg(&file)
            .args([&base, &app]),
    )
    .unwrap();
    let tar = std::fs::read(&file).unwrap();
    let half = tar.len() / 2;
    // `cat a.gz b.gz` is one gzip stream to gzip -d and to docker load.
    let mut members = filter("gzip", &["-c"], &tar[..half]);
    members.extend(filter("gzip", &["-c"], &tar[half..]));
    for (what, bytes) in [
        ("gzip", filter("gzip", &["-c"], &tar)),
        ("gzip of two members", members),
        ("zstd", filter("zstd", &["-c", "-q"], &tar)),
    ] {
        // Named .tar on purpose: the content decides, not the name.
        let path = work.join(format!("{}.tar", what.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let (_dir, store) = empty_store();
        let loaded = load_file(&store, &path)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(loaded.len(), 2, "{what}");
        assert_eq!(
            stored(&store, &app),
            (app_image().config.digest, diff_ids(&app_image())),
            "{what}"
        );
    }
    for (what, program) in [("xz", "xz"), ("bzip2", "bzip2")] {
        let path = work.join(format!("both.tar.{what}"));
        std::fs::write(&path, filter(program, &["-c"], &tar)).unwrap();
        let (_dir, store) = empty_store();
        let err = load_file(&store, &path).await.unwrap_err();
        assert!(
            matches!(err, ArchiveError::UnsupportedCompression { ref format } if format == what),
            "{what}: {err:?}"
        );
        assert!(store.refs().unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// docker before 25, built as moby's image/tarexport/save.go writes it

/// One image of a classic `docker save`: its layers (uncompressed tars) and config.
struct Classic {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    tags: Vec<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    test_registry::sha256_digest(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

fn classic_config(layers: &[Vec<u8>], cmd: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| test_registry::sha256_digest(l))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-05-01T10:00:00Z",
        "config": {"Cmd": [cmd], "Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created": "2023-05-01T10:00:00Z"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The archive docker 1.10 to 24 writes for `images`: a directory per v1 layer ID with
/// `VERSION`, `json` and `layer.tar` (a symlink `../<id>/layer.tar` to the first copy when a
/// diff_id was already saved), `<config hex>.json`, `manifest.json` and `repositories`, all in the
/// byte order of their names, as `archive.Tar` walks the export directory.
fn classic_archive(images: &[Classic]) -> Vec<u8> {
    enum Member {
        Dir,
        File(Vec<u8>),
        Symlink(String),
    }
    let mut members: std::collections::BTreeMap<String, Member> = Default::default();
    let mut saved: std::collections::BTreeMap<String, String> = Default::default();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    for image in images {
        let mut parent = String::new();
        let mut layer_paths = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let diff_id = sha256_hex(layer);
            // v1 IDs are derived from the chain and the parent; any stable, distinct hex does.
            let v1 = sha256_hex(format!("{parent} {diff_id} {i}").as_bytes());
            let path = format!("{v1}/layer.tar");
            layer_paths.push(path.clone());
            if members.contains_key(&path) {
                // Saved with an earlier image (savedLayers): nothing more to write.
                parent = v1;
                continue;
            }
            members.insert(format!("{v1}/"), Member::Dir);
            members.insert(format!("{v1}/VERSION"), Member::File(b"1.0".to_vec()));
            let mut v1_json = json!({"id": v1, "created": "1970-01-01T00:00:00Z",
                "container_config": {"Cmd": null}, "os": "linux"});
            if !parent.is_empty() {
                v1_json["parent"] = json!(parent);
            }
            members.insert(
                format!("{v1}/json"),
                Member::File(serde_json::to_vec(&v1_json).unwrap()),
            );
            match saved.get(&diff_id) {
                Some(first) => {
                    members.insert(path.clone(), Member::Symlink(format!("../{first}")));
                }
                None => {
                    saved.insert(diff_id, path.clone());
                    members.insert(path.clone(), Member::File(layer.clone()));
                }
            }
            parent = v1;
        }
        let config_hex = sha256_hex(&image.config);
        members.insert(
            format!("{config_hex}.json"),
            Member::File(image.config.clone()),
        );
        for tag in &image.tags {
            let (repo, t) = tag.rsplit_once(':').unwrap();
            repositories
                .entry(repo.to_owned())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap()
                .insert(t.to_owned(), json!(parent));
        }
        manifest.push(json!({
            "Config": format!("{config_hex}.json"),
            "RepoTags": image.tags,
            "Layers": layer_paths,
        }));
    }
    // json.Encoder ends each document with a newline.
    let mut manifest = serde_json::to_vec(&manifest).unwrap();
    manifest.push(b'\n');
    members.insert("manifest.json".to_owned(), Member::File(manifest));
    let mut repositories = serde_json::to_vec(&repositories).unwrap();
    repositories.push(b'\n');
    members.insert("repositories".to_owned(), Member::File(repositories));

    let mut tar = tar::Builder::new(Vec::new());
    for (path, member) in members {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_682_935_200);
        h.set_uid(0);
        h.set_gid(0);
        match member {
            Member::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, &path, std::io::empty()).unwrap();
            }
            Member::File(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, &path, bytes.as_slice()).unwrap();
            }
            Member::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, &path, &target).unwrap();
            }
        }
    }
    tar.into_inner().unwrap()
}

fn classic_images() -> Vec<Classic> {
    let base = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/os-release", b"ID=classic\n", 0o644)
        .add_file("etc/shadow", b"root:*:1::::::\n", 0o640)
        .finish_tar();
    // What docker's legacy builder commits for WORKDIR and friends: the same empty layer, saved
    // once and linked to from its second place.
    let empty = LayerBuilder::new().finish_tar();
    let top = LayerBuilder::new()
        .add_whiteout("etc/shadow")
        .add_dir("srv", 0o755)
        .add_file("srv/index.html", b"<h1>classic</h1>\n", 0o644)
        .finish_tar();
    let other = LayerBuilder::new()
        .add_file("etc/hostname", b"second\n", 0o644)
        .finish_tar();
    // The second image shares the first's two bottom layers (saved once, with the first) and
    // has the empty layer again higher up (a symlink).
    let first = vec![base.clone(), empty.clone(), top, empty.clone()];
    let second = vec![base, empty.clone(), other, empty];
    vec![
        Classic {
            config: classic_config(&first, "/srv/run"),
            layers: first,
            tags: vec![
                "classic/web:1.0".to_owned(),
                "classic/web:latest".to_owned(),
            ],
        },
        Classic {
            config: classic_config(&second, "/bin/sh"),
            layers: second,
            tags: vec!["example.com/classic/base:2".to_owned()],
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_before_25_layout_with_linked_duplicate_layers_loads() {
    let images = classic_images();
    let bytes = classic_archive(&images);
    let members = tar::Archive::new(bytes.as_slice())
        .entries()
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.header().entry_type() == tar::EntryType::Symlink)
        })
        .count();
    assert_eq!(members, 2, "the later empty layers are symlinks");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("classic.tar");
    std::fs::write(&file, &bytes).unwrap();

    // skopeo, which reads this layout, is the oracle for what the archive holds.
    let raw: Value = serde_json::from_str(
        &skopeo([
            "inspect",
            "--raw",
            &format!("docker-archive:{}:classic/web:1.0", file.display()),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(raw["layers"].as_array().unwrap().len(), 4);

    let (_dir, store) = empty_store();
    let loaded = load_file(&store, &file).await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(
        names(&loaded[0]),
        vec![
            "docker.io/classic/web:1.0".to_owned(),
            "docker.io/classic/web:latest".to_owned()
        ]
    );
    assert_eq!(names(&loaded[1]), vec!["example.com/classic/base:2"]);
    for (image, loaded) in images.iter().zip(&loaded) {
        let id = test_registry::sha256_digest(&image.config);
        assert_eq!(loaded.id.to_string(), id, "image ID = config digest");
        let (stored_id, stored_diff_ids) = stored(&store, &names(loaded)[0]);
        assert_eq!(stored_id, id);
        let want: Vec<String> = image
            .layers
            .iter()
            .map(|l| test_registry::sha256_digest(l))
            .collect();
        assert_eq!(stored_diff_ids, want);
    }

    // The rootfs equals GNU tar applying the layers, whiteouts done by hand.
    let entry = store
        .find_ref("docker.io/classic/web:1.0")
        .unwrap()
        .unwrap();
    let ours = work.path().join("ours");
    unpack(
        &store,
        &entry,
        &ours,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap();
    let oracle = work.path().join("oracle");
    for (i, layer) in images[0].layers.iter().enumerate() {
        let path = work.path().join(format!("layer{i}.tar"));
        std::fs::write(&path, layer).unwrap();
        test_registry::gnu_tar_extract(&path, &oracle).unwrap();
    }
    std::fs::remove_file(oracle.join("etc/shadow")).unwrap();
    std::fs::remove_file(oracle.join("etc/.wh.shadow")).unwrap();
    assert_same_tree(&ours, &oracle, &Compare::default(), "classic/web:1.0");

    // Saved again, skopeo reads the same image.
    let resaved = work.path().join("resaved.tar");
    archive::save_to_file(
        &store,
        &["classic/web:1.0".to_owned()],
        ArchiveFormat::DockerArchive,
        &resaved,
    )
    .unwrap();
    let again: Value = serde_json::from_str(
        &skopeo([
            "inspect",
            "--raw",
            &format!("docker-archive:{}", resaved.display()),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(again["config"]["digest"], raw["config"]["digest"]);
}

/// Rewrites the archive's member `name` with `f` applied to its content (sizes kept).
fn tamper(archive: &[u8], name: &str, f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(archive);
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        let mut header = e.header().clone();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path == name {
            f(&mut data);
        }
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.append(&header, data.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

fn first_layer_path(archive: &[u8]) -> String {
    let mut input = tar::Archive::new(archive);
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().as_os_str() == "manifest.json" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            let m: Value = serde_json::from_slice(&data).unwrap();
            return m[0]["Layers"][0].as_str().unwrap().to_owned();
        }
    }
    panic!("no manifest.json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_that_is_not_its_diff_id_is_refused_and_nothing_is_loaded() {
    let bytes = classic_archive(&classic_images());
    let victim = first_layer_path(&bytes);
    let tampered = tamper(&bytes, &victim, |data| {
        // Inside the first file's content: still a valid tar, another layer.
        data[512] ^= 0x20;
    });
    let (_dir, store) = empty_store();
    let err = archive::load(&store, std::io::Cursor::new(tampered))
        .await
        .unwrap_err();
    match &err {
        ArchiveError::DiffIdMismatch {
            index,
            expected,
            actual,
            ..
        } => {
            assert_eq!(*index, 0);
            assert_ne!(expected, actual);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("diff_id"), "{err}");
    assert!(store.refs().unwrap().is_empty(), "no image is published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_path_that_leaves_the_archive_is_refused() {
    let images = classic_images();
    let bytes = classic_archive(&images[1..]);
    let victim = first_layer_path(&bytes);
    // The manifest's layer becomes a symlink to a file outside the archive.
    let mut out = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(bytes.as_slice());
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        if path == victim {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            out.append_link(&mut h, &path, "../../../etc/passwd")
                .unwrap();
            continue;
        }
        let header = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.append(&header, data.as_slice()).unwrap();
    }
    let (_dir, store) = empty_store();
    let err = archive::load(&store, std::io::Cursor::new(out.into_inner().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::UnsafePath { .. }), "{err:?}");
    assert!(store.refs().unwrap().is_empty());
}
