//! The image builder is deterministic and writes what it is told, hostile names included.

use std::io::Read;
use std::time::Instant;

use test_registry::{
    FIXED_MTIME, Format, ImageBuilder, LayerBuilder, RawEntry, index, layer_from_dir,
    layer_from_dir_at, media_types, random_layer, schema1_manifest, sha256_digest,
};

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// (path bytes, link bytes, type, mode, uid, mtime, contents)
type Entry = (
    Vec<u8>,
    Option<Vec<u8>>,
    tar::EntryType,
    u32,
    u64,
    u64,
    Vec<u8>,
);

fn entries(tar_bytes: &[u8]) -> Vec<Entry> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path_bytes().into_owned();
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (
                path,
                link,
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
                data,
            )
        })
        .collect()
}

fn sample(format: Format) -> test_registry::Image {
    ImageBuilder::new(format)
        .platform("linux", "arm64", Some("v8"))
        .layer(
            LayerBuilder::new()
                .add_dir("bin", 0o755)
                .add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
                .add_symlink("bin/link", "tool")
                .add_hardlink("bin/hard", "bin/tool")
                .add_whiteout("etc/old")
                .finish_gzip(),
        )
        .layer(random_layer(42, 200_000))
        .env(&["A=1"])
        .cmd(&["/bin/tool"])
        .build()
}

#[test]
fn same_inputs_give_the_same_digests() {
    for format in [Format::Oci, Format::Docker] {
        let a = sample(format);
        let b = sample(format);
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.config.digest, b.config.digest);
    }
    assert_ne!(
        sample(Format::Oci).digest(),
        sample(Format::Docker).digest()
    );
    assert_eq!(random_layer(7, 10_000), random_layer(7, 10_000));
    assert_ne!(
        random_layer(7, 10_000).blob.digest,
        random_layer(8, 10_000).blob.digest
    );
    let i1 = index(Format::Oci, vec![sample(Format::Oci)]);
    let i2 = index(Format::Oci, vec![sample(Format::Oci)]);
    assert_eq!(i1.digest(), i2.digest());
}

#[test]
fn documents_are_well_formed_and_digests_match_bytes() {
    let image = sample(Format::Oci);
    assert_eq!(image.manifest.digest, sha256_digest(&image.manifest.data));
    let manifest = image.manifest_json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], media_types::OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
    assert_eq!(manifest["layers"][1]["size"], image.layers[1].blob.size);
    let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2024-01-01T00:00:00Z");
    assert_eq!(config["config"]["Cmd"][0], "/bin/tool");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["history"].as_array().unwrap().len(), 2);
    for (i, layer) in image.layers.iter().enumerate() {
        assert_eq!(layer.blob.digest, sha256_digest(&layer.blob.data));
        let tar = gunzip(&layer.blob.data);
        assert_eq!(layer.diff_id, sha256_digest(&tar));
        assert_eq!(config["rootfs"]["diff_ids"][i], layer.diff_id.as_str());
        // Deterministic gzip header: no name flag, mtime 0, OS 255.
        assert_eq!(&layer.blob.data[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&layer.blob.data[4..8], &[0, 0, 0, 0]);
        assert_eq!(layer.blob.data[9], 255);
    }
    let random = gunzip(&image.layers[1].blob.data);
    let total: usize = entries(&random).iter().map(|e| e.6.len()).sum();
    assert_eq!(total, 200_000);

    let docker = sample(Format::Docker);
    assert_eq!(docker.manifest.media_type, media_types::DOCKER_MANIFEST);
    assert_eq!(docker.config.media_type, media_types::DOCKER_CONFIG);
    assert_eq!(
        docker.layers[0].blob.media_type,
        media_types::DOCKER_LAYER_GZIP
    );
    let list = index(Format::Docker, vec![docker]);
    let doc: serde_json::Value = serde_json::from_slice(&list.manifest.data).unwrap();
    assert_eq!(doc["mediaType"], media_types::DOCKER_MANIFEST_LIST);
    assert_eq!(doc["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(doc["manifests"][0]["platform"]["variant"], "v8");

    let s1 = schema1_manifest("library/old", "latest", &image.layers);
    assert_eq!(s1.media_type, media_types::DOCKER_SCHEMA1_SIGNED);
    let s1: serde_json::Value = serde_json::from_slice(&s1.data).unwrap();
    assert_eq!(s1["schemaVersion"], 1);
    assert_eq!(s1["fsLayers"].as_array().unwrap().len(), 2);

    let big = image.padded_manifest(4 * 1024 * 1024 + 1);
    assert!(big.size > 4 * 1024 * 1024);
    let doc: serde_json::Value = serde_json::from_slice(&big.data).unwrap();
    assert_eq!(doc["layers"], manifest["layers"]);
}

#[test]
fn layer_entries_have_fixed_metadata() {
    let tar = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/conf", b"x=1\n", 0o600)
        .add_symlink("etc/link", "../../outside")
        .add_hardlink("etc/hard", "etc/conf")
        .add_file(
            format!("deep/{}", "d/".repeat(80)).trim_end_matches('/'),
            b"long",
            0o644,
        )
        .finish_tar();
    let e = entries(&tar);
    assert_eq!(e[0].0, b"etc/");
    assert_eq!(e[0].2, tar::EntryType::Directory);
    assert_eq!((e[1].3, e[1].4, e[1].5), (0o600, 0, FIXED_MTIME));
    assert_eq!(e[1].6, b"x=1\n");
    assert_eq!(e[2].1.as_deref(), Some(&b"../../outside"[..]));
    assert_eq!(e[2].2, tar::EntryType::Symlink);
    assert_eq!(e[3].2, tar::EntryType::Link);
    assert!(e[4].0.len() > 100);
}

#[test]
fn raw_entries_keep_hostile_names() {
    let long_evil = format!("{}../../etc/shadow", "a/".repeat(60));
    let tar = LayerBuilder::new()
        .raw_entry(RawEntry::file("../escape", b"evil"))
        .raw_entry(RawEntry::file("/etc/passwd", b"root::0:0"))
        .raw_entry(RawEntry::symlink("up", "/"))
        .raw_entry(RawEntry::hardlink("hl", "../../etc/passwd"))
        .raw_entry(RawEntry::file(&long_evil, b"x"))
        .raw_entry(RawEntry {
            pax: vec![("SCHILY.xattr.user.test".into(), b"v".to_vec())],
            ..RawEntry::file("xattr", b"")
        })
        .finish_tar();
    let e = entries(&tar);
    assert_eq!(e[0].0, b"../escape");
    assert_eq!(e[0].6, b"evil");
    assert_eq!(e[1].0, b"/etc/passwd");
    assert_eq!(e[2].1.as_deref(), Some(&b"/"[..]));
    assert_eq!(e[3].1.as_deref(), Some(&b"../../etc/passwd"[..]));
    assert_eq!(e[4].0, long_evil.as_bytes());
    assert_eq!(e[5].0, b"xattr");
    let mut ar = tar::Archive::new(tar.as_slice());
    let mut with_xattr = ar.entries().unwrap().nth(5).unwrap().unwrap();
    let ext: Vec<_> = with_xattr
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|x| x.unwrap().key().unwrap().to_string())
        .collect();
    assert_eq!(ext, ["SCHILY.xattr.user.test"]);
}

#[test]
fn layer_from_dir_is_sorted_and_ignores_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("b")).unwrap();
    std::fs::write(root.join("b/z"), b"zz").unwrap();
    std::fs::write(root.join("a"), b"aa").unwrap();
    std::fs::hard_link(root.join("a"), root.join("c")).unwrap();
    std::os::unix::fs::symlink("a", root.join("d")).unwrap();
    let first = layer_from_dir(root).unwrap();
    // Touch everything: a different mtime must not change the digest.
    let later = std::fs::FileTimes::new()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    std::fs::File::options()
        .write(true)
        .open(root.join("a"))
        .unwrap()
        .set_times(later)
        .unwrap();
    let second = layer_from_dir(root).unwrap();
    assert_eq!(first, second);
    let tar = gunzip(&first.blob.data);
    assert_eq!(first.diff_id, sha256_digest(&tar));
    let e = entries(&tar);
    let names: Vec<String> = e
        .iter()
        .map(|e| String::from_utf8(e.0.clone()).unwrap())
        .collect();
    assert_eq!(names, ["a", "b/", "b/z", "c", "d"]);
    assert_eq!(e[3].2, tar::EntryType::Link);
    assert_eq!(e[3].1.as_deref(), Some(&b"a"[..]));
    assert_eq!(e[4].2, tar::EntryType::Symlink);
    assert!(e.iter().all(|e| e.4 == 0 && e.5 == FIXED_MTIME));

    let at = layer_from_dir_at(root, "/usr/share/").unwrap();
    let names: Vec<String> = entries(&gunzip(&at.blob.data))
        .iter()
        .map(|e| String::from_utf8(e.0.clone()).unwrap())
        .collect();
    assert_eq!(names[..3], ["usr/", "usr/share/", "usr/share/a"]);
}

/// Builds the realistic ~500 MB image used for measurements (not run by default:
/// `cargo test -p test-registry --test builder -- --ignored --nocapture`).
#[test]
#[ignore = "slow: compresses several hundred MB of /usr"]
fn realistic_image_from_usr() {
    let started = Instant::now();
    let mut builder = ImageBuilder::new(Format::Oci);
    for (dir, prefix) in [
        ("/usr/lib/python3", "usr/lib/python3"),
        ("/usr/lib/git-core", "usr/lib/git-core"),
        ("/usr/share", "usr/share"),
    ] {
        if std::path::Path::new(dir).is_dir() {
            let layer = layer_from_dir_at(std::path::Path::new(dir), prefix).unwrap();
            println!("{dir}: {} bytes compressed", layer.blob.size);
            builder = builder.layer(layer);
        }
    }
    let image = builder.build();
    let total: u64 = image.layers.iter().map(|l| l.blob.size).sum();
    println!(
        "{} layers, {total} bytes, {:?}",
        image.layers.len(),
        started.elapsed()
    );
}
