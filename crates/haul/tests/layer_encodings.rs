//! Layer encodings and manifest shapes real registries serve, pulled from the real registry and
//! unpacked, compared with GNU tar or `umoci unpack`: uncompressed layers of both media types, gzip
//! made of several members, zstd with skippable frames, layers without the tar's end-of-archive
//! blocks (umoci 0.4.7), compressed streams with trailing garbage (refused, as containerd and
//! docker refuse them: both read the decompressor to its end after applying), manifests with
//! annotations, `urls`, `artifactType` and fields haul does not know, indexes carrying
//! attestation manifests, and a layer GNU tar and gzip made that is big enough for haul's
//! two-thread decompression.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use common::{harness, unpacking_harness};
use haul::progress::Silent;
use haul::unpack::{ApplyError, ApplyOptions, UnpackError, UnpackOptions, apply_layer, unpack};
use serde_json::{Value, json};
use test_registry::{
    Blob, Compare, Format, Image, ImageBuilder, Layer, LayerBuilder, Pusher, RealRegistry,
    RegistryOptions, assert_same_tree, gnu_tar_extract, gzip, media_types, raw_index, skopeo,
    umoci_unpack,
};

/// A layer's tar: a directory, a symlink and files of awkward sizes, the last `last` bytes long.
fn tar_ending_with(last: usize) -> Vec<u8> {
    LayerBuilder::new()
        .add_dir("srv", 0o755)
        .add_file("srv/a", b"first file\n", 0o644)
        .add_symlink("srv/latest", "a")
        .add_file("srv/b", &vec![b'b'; 700], 0o600)
        .add_file("srv/last", &vec![b'z'; last], 0o640)
        .finish_tar()
}

/// Where the content of the tar's last entry ends (its header is the last non-zero block).
fn end_of_last_data(tar: &[u8], last_size: usize) -> usize {
    // The end-of-archive marker is 1024 zero bytes, after the last entry's padded content.
    let padded = last_size.div_ceil(512) * 512;
    tar.len() - 1024 - padded + last_size
}

fn layer(blob: Vec<u8>, media_type: &str, tar: &[u8]) -> Layer {
    Layer {
        blob: Blob::new(media_type, blob),
        diff_id: test_registry::sha256_digest(tar),
    }
}

fn image_of(format: Format, layers: Vec<Layer>) -> Image {
    ImageBuilder::new(format)
        .platform("linux", "amd64", None)
        .layers(layers)
        .build()
}

async fn registry() -> RealRegistry {
    RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap()
}

/// Pulls `reference` with haul, extracting layers as the pull goes (as the CLI does), and unpacks
/// it into `target`.
async fn pull_and_unpack(reference: &str, target: &Path) {
    let h = unpacking_harness();
    h.pull(reference)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    let entry = h.store.find_ref(reference).unwrap().unwrap();
    unpack(
        &h.store,
        &entry,
        target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .unwrap_or_else(|e| panic!("unpack {reference}: {e}"));
}

/// Pulls `reference` without extracting, then unpacks it: the layer's refusal comes from unpack.
async fn pull_then_unpack(reference: &str, target: &Path) -> Result<(), UnpackError> {
    let h = harness();
    h.pull(reference)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    let entry = h.store.find_ref(reference).unwrap().unwrap();
    unpack(
        &h.store,
        &entry,
        target,
        &UnpackOptions::for_current_user(),
        &Silent,
    )
    .map(drop)
}

/// GNU tar applying uncompressed `tars` in order (they hold no whiteouts).
fn gnu_tar_tree(tars: &[&[u8]], work: &Path) -> PathBuf {
    let root = work.join("gnu-tar");
    for (i, tar) in tars.iter().enumerate() {
        let file = work.join(format!("layer-{i}.tar"));
        std::fs::write(&file, tar).unwrap();
        gnu_tar_extract(&file, &root).unwrap();
    }
    root
}

fn umoci_tree(reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("layout");
    skopeo([
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:t", layout.display()),
    ])
    .unwrap();
    umoci_unpack(&layout, "t", &work.join("bundle")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_without_padding_or_end_of_archive_blocks_unpack_like_umoci() {
    // umoci 0.4.7 ends a layer right after its last file's content; a tar whose last file fills
    // whole blocks ends at a header boundary. The diff_id is of the stream as it is.
    let unpadded_tar = tar_ending_with(10);
    let unpadded = unpadded_tar[..end_of_last_data(&unpadded_tar, 10)].to_vec();
    let aligned_tar = LayerBuilder::new()
        .add_file("srv/aligned", &[b'q'; 1024], 0o644)
        .finish_tar();
    let aligned = aligned_tar[..aligned_tar.len() - 1024].to_vec();
    let image = image_of(
        Format::Oci,
        vec![
            layer(gzip(&unpadded), media_types::OCI_LAYER_GZIP, &unpadded),
            layer(aligned.clone(), media_types::OCI_LAYER_TAR, &aligned),
        ],
    );
    let registry = registry().await;
    Pusher::new(&registry.url())
        .push_image("enc/no-eof", "1", &image)
        .await
        .unwrap();
    let reference = format!("{}/enc/no-eof:1", registry.host());
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    pull_and_unpack(&reference, &ours).await;
    let oracle = umoci_tree(&reference, work.path());
    assert_same_tree(&ours, &oracle, &Compare::default(), "no end-of-archive");
    assert_eq!(
        std::fs::read(ours.join("srv/last")).unwrap(),
        vec![b'z'; 10]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_cut_at_an_entry_boundary_is_refused_by_its_diff_id() {
    let tar = tar_ending_with(10);
    // Cut before the last entry's header: a tar that ends cleanly, but not the layer.
    let cut = &tar[..end_of_last_data(&tar, 10) - 10 - 512];
    let image = image_of(
        Format::Oci,
        vec![layer(gzip(cut), media_types::OCI_LAYER_GZIP, &tar)],
    );
    let registry = registry().await;
    Pusher::new(&registry.url())
        .push_image("enc/cut", "1", &image)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("rootfs");
    let err = pull_then_unpack(&format!("{}/enc/cut:1", registry.host()), &target)
        .await
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::Stream { index: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("diff_id"), "{err}");
    assert!(!target.exists());
}

#[test]
fn a_file_cut_inside_its_last_block_is_still_a_truncated_entry() {
    // Not a missing padding: the content itself is short, by 40 bytes.
    let tar = tar_ending_with(600);
    let cut = &tar[..end_of_last_data(&tar, 600) - 40];
    let root = tempfile::tempdir().unwrap();
    let err = apply_layer(
        root.path(),
        Cursor::new(cut),
        &ApplyOptions::for_current_user(),
    )
    .unwrap_err();
    match err {
        ApplyError::TruncatedEntry {
            path,
            expected,
            actual,
        } => assert_eq!(
            (path, expected, actual),
            (PathBuf::from("srv/last"), 600, 560)
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_members_zstd_frames_and_uncompressed_layers_unpack_like_gnu_tar() {
    let tars: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            LayerBuilder::new()
                .add_dir(&format!("l{i}"), 0o755)
                .add_file(
                    &format!("l{i}/data"),
                    &test_registry::pseudo_text(i, 20_000),
                    0o644,
                )
                .add_symlink(&format!("l{i}/link"), "data")
                .finish_tar()
        })
        .collect();
    // `cat a.gz b.gz c.gz`, as pigz and stargz write: one stream to every gzip reader.
    let thirds = tars[0].len() / 3;
    let mut members = gzip(&tars[0][..thirds]);
    members.extend(gzip(&tars[0][thirds..2 * thirds]));
    members.extend(gzip(&tars[0][2 * thirds..]));
    // A skippable frame first (as zstd:chunked and seekable zstd write metadata) and between two
    // frames.
    let skippable = |magic: u8, body: &[u8]| {
        let mut f = vec![magic, 0x2a, 0x4d, 0x18];
        f.extend((body.len() as u32).to_le_bytes());
        f.extend(body);
        f
    };
    let half = tars[1].len() / 2;
    let mut frames = skippable(0x50, b"metadata a reader skips");
    frames.extend(zstd::encode_all(&tars[1][..half], 3).unwrap());
    frames.extend(skippable(0x5e, &[0u8; 64]));
    frames.extend(zstd::encode_all(&tars[1][half..], 3).unwrap());
    let layers = vec![
        layer(members, media_types::OCI_LAYER_GZIP, &tars[0]),
        layer(frames, media_types::OCI_LAYER_ZSTD, &tars[1]),
        layer(tars[2].clone(), media_types::OCI_LAYER_TAR, &tars[2]),
    ];
    let docker_layers = vec![
        layer(gzip(&tars[3]), media_types::DOCKER_LAYER_GZIP, &tars[3]),
        // Docker's uncompressed type, which containerd and docker pull like any other.
        layer(tars[4].clone(), media_types::DOCKER_LAYER_TAR, &tars[4]),
    ];
    let registry = registry().await;
    let pusher = Pusher::new(&registry.url());
    pusher
        .push_image("enc/oci", "1", &image_of(Format::Oci, layers))
        .await
        .unwrap();
    pusher
        .push_image("enc/docker", "1", &image_of(Format::Docker, docker_layers))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    for (repo, range) in [("enc/oci", 0..3), ("enc/docker", 3..5)] {
        let ours = work.path().join(repo.replace('/', "-"));
        pull_and_unpack(&format!("{}/{repo}:1", registry.host()), &ours).await;
        let oracle_dir = work
            .path()
            .join(format!("{}-oracle", repo.replace('/', "-")));
        std::fs::create_dir_all(&oracle_dir).unwrap();
        let refs: Vec<&[u8]> = tars[range].iter().map(Vec::as_slice).collect();
        let oracle = gnu_tar_tree(&refs, &oracle_dir);
        assert_same_tree(&ours, &oracle, &Compare::default(), repo);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trailing_garbage_after_the_compressed_stream_is_refused_as_containerd_does() {
    let tar = tar_ending_with(100);
    let mut gz = gzip(&tar);
    gz.extend(b"garbage after the gzip stream");
    let mut gz_zeros = gzip(&tar);
    gz_zeros.extend([0u8; 512]);
    let mut zst = zstd::encode_all(&tar[..], 3).unwrap();
    zst.extend(b"garbage after the zstd frame");
    let registry = registry().await;
    let pusher = Pusher::new(&registry.url());
    let cases = [
        ("gzip", gz, media_types::OCI_LAYER_GZIP),
        ("gzip-zeros", gz_zeros, media_types::OCI_LAYER_GZIP),
        ("zstd", zst, media_types::OCI_LAYER_ZSTD),
    ];
    let work = tempfile::tempdir().unwrap();
    for (tag, blob, media_type) in cases {
        let image = image_of(Format::Oci, vec![layer(blob, media_type, &tar)]);
        pusher
            .push_image("enc/trailing", tag, &image)
            .await
            .unwrap();
        let target = work.path().join(tag);
        let err = pull_then_unpack(&format!("{}/enc/trailing:{tag}", registry.host()), &target)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&image.layers[0].blob.digest),
            "{tag}: the error names the layer: {text}"
        );
        assert!(!target.exists(), "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_with_annotations_urls_artifact_type_and_unknown_fields() {
    let tar = tar_ending_with(33);
    let image = image_of(
        Format::Oci,
        vec![layer(gzip(&tar), media_types::OCI_LAYER_GZIP, &tar)],
    );
    let mut doc = image.manifest_json();
    doc["annotations"] = json!({"org.opencontainers.image.source": "https://example.com/src",
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z"});
    doc["artifactType"] = json!("application/vnd.example.thing");
    doc["org.example.extension"] = json!({"anything": [1, 2, 3]});
    doc["config"]["annotations"] = json!({"org.example.config": "yes"});
    doc["layers"][0]["annotations"] = json!({"org.opencontainers.image.title": "layer.tar.gz"});
    // A URL the registry's copy stands in for (nothing listens on port 9 of loopback).
    doc["layers"][0]["urls"] = json!(["http://127.0.0.1:9/never"]);
    doc["layers"][0]["org.example.unknown"] = json!(true);
    let manifest = Blob::new(media_types::OCI_MANIFEST, serde_json::to_vec(&doc).unwrap());
    let registry = RealRegistry::start(RegistryOptions {
        allow_layer_urls: vec!["^http://127\\.0\\.0\\.1:9/".to_owned()],
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    let pusher = Pusher::new(&registry.url());
    for blob in image.blobs() {
        pusher.push_blob("enc/extras", blob).await.unwrap();
    }
    pusher
        .push_manifest("enc/extras", "1", &manifest)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    pull_and_unpack(&format!("{}/enc/extras:1", registry.host()), &ours).await;
    let oracle = gnu_tar_tree(&[&tar], work.path());
    assert_same_tree(&ours, &oracle, &Compare::default(), "extras");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_with_attestation_manifests_gives_the_image() {
    let tar = tar_ending_with(44);
    let image = image_of(
        Format::Oci,
        vec![layer(gzip(&tar), media_types::OCI_LAYER_GZIP, &tar)],
    );
    // What BuildKit pushes beside an image: an in-toto attestation as an `unknown/unknown` image.
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document"}"#;
    let statement = Blob::new("application/vnd.in-toto+json", statement.to_vec());
    let att_config = Blob::new(media_types::OCI_CONFIG, br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec());
    let mut layer_desc = statement.descriptor();
    layer_desc["annotations"] = json!({"in-toto.io/predicate-type": "https://spdx.dev/Document"});
    let attestation = Blob::new(
        media_types::OCI_MANIFEST,
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": att_config.descriptor(),
            "layers": [layer_desc],
        }))
        .unwrap(),
    );
    let mut att_desc = attestation.descriptor();
    att_desc["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    att_desc["annotations"] = json!({
        "vnd.docker.reference.digest": image.digest(),
        "vnd.docker.reference.type": "attestation-manifest",
    });
    // The attestation first: a reader taking the first entry would get no image at all.
    let index = raw_index(Format::Oci, vec![att_desc, image.descriptor()]);
    let registry = registry().await;
    let pusher = Pusher::new(&registry.url());
    pusher
        .push_image("enc/attested", image.digest(), &image)
        .await
        .unwrap();
    for blob in [&statement, &att_config] {
        pusher.push_blob("enc/attested", blob).await.unwrap();
    }
    pusher
        .push_manifest("enc/attested", &attestation.digest, &attestation)
        .await
        .unwrap();
    pusher
        .push_manifest("enc/attested", "1", &index)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    let reference = format!("{}/enc/attested:1", registry.host());
    pull_and_unpack(&reference, &ours).await;
    let oracle = gnu_tar_tree(&[&tar], work.path());
    assert_same_tree(&ours, &oracle, &Compare::default(), "attested");
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
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
}

/// A layer GNU tar and GNU gzip made, big enough (16 MiB compressed and up) for haul to inflate it
/// on a thread of its own while another extracts, pulled with extraction as it arrives and
/// unpacked, compared with GNU tar extracting the same tar. Smaller layers take the one-thread
/// path, which the other tests here and `producers.rs` cover.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_gnu_tar_and_gzip_layer_unpacks_like_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("data/deep")).unwrap();
    // Incompressible bytes keep the gzip stream as big as the files.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    std::fs::write(src.join("data/big"), noise(12 << 20)).unwrap();
    std::fs::write(src.join("data/deep/bigger"), noise(9 << 20)).unwrap();
    std::fs::write(src.join("data/notes.txt"), b"small text\n".repeat(300)).unwrap();
    std::os::unix::fs::symlink("big", src.join("data/link")).unwrap();
    std::fs::hard_link(
        src.join("data/notes.txt"),
        src.join("data/deep/notes-again"),
    )
    .unwrap();
    let tar_path = work.path().join("layer.tar");
    let status = std::process::Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&src)
        .arg("-cf")
        .arg(&tar_path)
        .arg("data")
        .status()
        .unwrap();
    assert!(status.success(), "GNU tar failed");
    // GNU gzip of a named file keeps the name and time in the header (FNAME), a field the
    // inflater must skip itself: ISA-L's own header parser failed on such fields.
    let out = std::process::Command::new("gzip")
        .args(["-1", "-c"])
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "gzip failed");
    let tar = std::fs::read(&tar_path).unwrap();
    let blob = out.stdout;
    assert_ne!(blob[3] & 0x08, 0, "GNU gzip stored the file name");
    assert!(
        blob.len() >= 16 << 20,
        "the layer must be big enough for the two-thread pipeline: {} bytes",
        blob.len()
    );

    let registry = registry().await;
    let pusher = Pusher::new(&registry.url());
    let image = image_of(
        Format::Oci,
        vec![layer(blob, media_types::OCI_LAYER_GZIP, &tar)],
    );
    pusher.push_image("enc/big", "1", &image).await.unwrap();
    let ours = work.path().join("ours");
    pull_and_unpack(&format!("{}/enc/big:1", registry.host()), &ours).await;
    let oracle_dir = work.path().join("oracle");
    std::fs::create_dir_all(&oracle_dir).unwrap();
    let oracle = gnu_tar_tree(&[&tar], &oracle_dir);
    assert_same_tree(&ours, &oracle, &Compare::default(), "enc/big");
}
