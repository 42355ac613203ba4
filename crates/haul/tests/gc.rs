//! `prune` and `verify` against images pulled from the real registry: prune removes exactly what no
//! ref reaches and waits for running pulls; verify finds damaged and missing blobs and repair
//! fetches them again.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{chains, fast_client, file_layer, image_of, unpacking_harness};
use haul::config::Config;
use haul::digest::Digest;
use haul::gc::{self, PruneOptions, Swept};
use haul::progress::Silent;
use haul::registry::Anonymous;
use haul::store::Store;
use haul::unpack::{UnpackOptions, unpack};
use haul::verify::{self, Fault};
use test_registry::{Format, ImageBuilder, Pusher, RealRegistry, RegistryOptions};

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

/// Bytes of the files under `path` (or of the file itself).
fn du(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| du(&e.unwrap().path()))
        .sum()
}

fn layer_dir(store: &Store, chain: &Digest) -> std::path::PathBuf {
    store.root().join("layers/sha256").join(chain.hex())
}

fn swept(report: &gc::PruneReport) -> BTreeSet<String> {
    report
        .deleted
        .iter()
        .map(|d| match &d.what {
            Swept::Blob(x) => format!("blob {x}"),
            Swept::Layer(x) => format!("layer {x}"),
            other => format!("{other:?} {}", d.path.display()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_exactly_what_no_ref_reaches() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let shared = file_layer("shared", &b"shared layer\n".repeat(500));
    let a = image_of(vec![shared.clone(), file_layer("a", b"only in a\n")]);
    let b = image_of(vec![shared, file_layer("b", b"only in b\n")]);
    let pusher = Pusher::new(&registry.url());
    pusher.push_image("team/a", "1", &a).await.unwrap();
    pusher.push_image("team/b", "1", &b).await.unwrap();
    let h = unpacking_harness();
    let name_a = format!("{}/team/a:1", registry.host());
    let name_b = format!("{}/team/b:1", registry.host());
    h.pull(&name_a).await.unwrap();
    h.pull(&name_b).await.unwrap();
    haul::tag::untag(&h.store, &name_a, false).await.unwrap();

    let (chains_a, chains_b) = (chains(&a), chains(&b));
    assert_eq!(
        chains_a[0], chains_b[0],
        "the shared layer has one cache entry"
    );
    let unique_blobs = [a.digest(), &a.config.digest, &a.layers[1].blob.digest];
    let mut expected: BTreeSet<String> = unique_blobs.iter().map(|x| format!("blob {x}")).collect();
    expected.insert(format!("layer {}", chains_a[1]));
    let expected_bytes: u64 = unique_blobs
        .iter()
        .map(|x| du(&h.store.blob_path(&d(x))))
        .sum::<u64>()
        + du(&layer_dir(&h.store, &chains_a[1]));

    // A dry run reports the same and changes nothing.
    let dry = gc::prune(
        &h.store,
        &PruneOptions {
            dry_run: true,
            ..PruneOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(swept(&dry), expected);
    assert_eq!(dry.reclaimed, expected_bytes);
    assert!(h.has(a.digest()) && layer_dir(&h.store, &chains_a[1]).exists());

    let report = gc::prune(&h.store, &PruneOptions::default()).await.unwrap();
    assert_eq!(swept(&report), expected);
    assert_eq!(report.reclaimed, expected_bytes);
    for x in unique_blobs {
        assert!(!h.has(x), "{x} swept");
    }
    assert!(!layer_dir(&h.store, &chains_a[1]).exists());
    assert!(!h.store.root().join("trash").exists() || du(&h.store.root().join("trash")) == 0);

    // All of B is kept: blobs, cache entries, and it still unpacks and reads as OCI.
    for blob in b.blobs() {
        assert!(h.has(&blob.digest), "{} kept", blob.digest);
    }
    let options = UnpackOptions::for_current_user();
    for chain in &chains_b {
        assert!(h.store.layers().cached(chain, &options.apply).is_some());
    }
    let entry = h.store.find_ref(&name_b).unwrap().unwrap();
    let rootfs = h.dir.path().join("rootfs");
    let stats = unpack(&h.store, &entry, &rootfs, &options, &Silent).unwrap();
    assert_eq!(stats.layers_from_cache, 2);
    assert_eq!(
        std::fs::read(rootfs.join("data/b")).unwrap(),
        b"only in b\n"
    );
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            &format!("oci:{}:{name_b}", h.store.root().display()),
        ])
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let again = gc::prune(&h.store, &PruneOptions::default()).await.unwrap();
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    assert_eq!(again.reclaimed, 0);
    h.assert_blobs_verified();
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_all_removes_images_named_only_by_digest() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let img = image_of(vec![file_layer("x", b"x\n")]);
    Pusher::new(&registry.url())
        .push_image("team/x", "1", &img)
        .await
        .unwrap();
    let h = unpacking_harness();
    let by_digest = format!("{}/team/x@{}", registry.host(), img.digest());
    h.pull(&by_digest).await.unwrap();

    let plain = gc::prune(&h.store, &PruneOptions::default()).await.unwrap();
    assert!(plain.deleted.is_empty(), "without -a a digest ref is kept");
    let all = gc::prune(
        &h.store,
        &PruneOptions {
            all: true,
            ..PruneOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.untagged, vec![by_digest]);
    assert!(h.store.refs().unwrap().is_empty());
    assert_eq!(h.blob_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_waits_for_a_running_pull() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // Committed by a "pull" that has not published its ref yet.
    let blob = Digest::sha256_of(b"committed, not yet published");
    store
        .put_blob(&blob, b"committed, not yet published")
        .unwrap();

    let pull = store.writer_lock().unwrap();
    let s = store.clone();
    let mut prune =
        tokio::spawn(async move { gc::prune(&s, &PruneOptions::default()).await.unwrap() });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut prune).await;
    assert!(early.is_err(), "prune finished while a pull held the store");
    assert!(store.has_blob(&blob));

    drop(pull);
    let report = tokio::time::timeout(Duration::from_secs(30), prune)
        .await
        .expect("prune completes once the pull is done")
        .unwrap();
    assert_eq!(report.deleted.len(), 1);
    assert!(!store.has_blob(&blob));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_damaged_and_missing_blobs_and_repair_fetches_them() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let img = image_of(vec![
        file_layer("one", &b"first\n".repeat(1000)),
        file_layer("two", b"second\n"),
    ]);
    Pusher::new(&registry.url())
        .push_image("team/v", "1", &img)
        .await
        .unwrap();
    let h = unpacking_harness();
    let name = format!("{}/team/v:1", registry.host());
    h.pull(&name).await.unwrap();
    let clean = verify::verify(&h.store, &[]).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!(clean.blobs_checked, 4);

    let corrupt = d(&img.layers[0].blob.digest);
    let path = h.store.blob_path(&corrupt);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let missing = d(&img.layers[1].blob.digest);
    std::fs::remove_file(h.store.blob_path(&missing)).unwrap();

    let report = verify::verify(&h.store, std::slice::from_ref(&name)).unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let damaged = report
        .problems
        .iter()
        .find(|p| p.digest == corrupt)
        .unwrap();
    assert_eq!(
        damaged.fault,
        Fault::Corrupt {
            actual: Digest::sha256_of(&bytes)
        }
    );
    let gone = report
        .problems
        .iter()
        .find(|p| p.digest == missing)
        .unwrap();
    assert_eq!(gone.fault, Fault::Missing);

    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let repaired = verify::repair(&h.store, &client, &[]).await.unwrap();
    assert!(repaired.failed.is_empty(), "{:?}", repaired.failed);
    assert_eq!(
        repaired.repaired.iter().collect::<BTreeSet<_>>(),
        [&corrupt, &missing].into_iter().collect()
    );
    assert!(repaired.after.is_clean(), "{:?}", repaired.after.problems);
    assert!(verify::verify(&h.store, &[]).unwrap().is_clean());
    h.assert_blobs_verified();
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_remakes_a_damaged_manifest_and_what_it_hid() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let img = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(file_layer("d", b"docker\n"))
        .build();
    Pusher::new(&registry.url())
        .push_image("team/d", "1", &img)
        .await
        .unwrap();
    let h = unpacking_harness();
    let name = format!("{}/team/d:1", registry.host());
    h.pull(&name).await.unwrap();
    let entry = h.store.find_ref(&name).unwrap().unwrap();
    assert!(
        entry.source.is_some(),
        "a Docker manifest is stored with an OCI rewrite"
    );
    // Both manifests and the config gone: only the registry can say what the image was.
    for x in [
        &entry.manifest.digest,
        &d(img.digest()),
        &d(&img.config.digest),
    ] {
        std::fs::remove_file(h.store.blob_path(x)).unwrap();
    }
    let report = verify::verify(&h.store, &[]).unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);

    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let repaired = verify::repair(&h.store, &client, &[]).await.unwrap();
    assert!(repaired.failed.is_empty(), "{:?}", repaired.failed);
    assert_eq!(
        repaired.repaired.len(),
        3,
        "the config is found once a manifest is back"
    );
    assert!(repaired.after.is_clean(), "{:?}", repaired.after.problems);
    h.assert_blobs_verified();
}
