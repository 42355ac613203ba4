//! Pull extracts every layer once into the layer cache; unpack builds root filesystems from it
//! without decompressing again and without sharing inodes with it.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use common::{chains, file_layer, image_of, unpacking_harness};
use haul::progress::{Recorder, Silent};
use haul::pull::PullError;
use haul::unpack::{UnpackOptions, unpack};
use test_registry::{Format, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions};

#[tokio::test]
async fn pull_extracts_once_and_unpack_reuses_the_cache() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let base = file_layer("base", b"base layer\n");
    let top = LayerBuilder::new()
        .add_file("data/top", b"top layer\n", 0o644)
        .add_whiteout("data/base")
        .finish_gzip();
    let image = image_of(vec![base, top]);
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    let h = unpacking_harness();
    let reference = format!("{}/team/app:1", registry.host());
    let recorder = Arc::new(Recorder::default());
    h.puller
        .pull(&reference.parse().unwrap(), recorder.clone())
        .await
        .unwrap();

    // Each layer: downloaded, then extracted, then complete.
    for layer in &image.layers {
        let statuses = common::layer_statuses(&recorder.events(), &layer.blob.digest);
        let pos = |s: &str| {
            statuses
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s} missing: {statuses:?}"))
        };
        assert!(pos("Download complete") < pos("Extracting"));
        assert_eq!(statuses.last().map(String::as_str), Some("Pull complete"));
    }
    let options = UnpackOptions::for_current_user();
    for chain in chains(&image) {
        assert!(
            h.store.layers().cached(&chain, &options.apply).is_some(),
            "{chain} cached"
        );
    }

    // With the layer blobs gone, unpack can only be working from the cache.
    for layer in &image.layers {
        std::fs::remove_file(h.store.blob_path(&layer.blob.digest.parse().unwrap())).unwrap();
    }
    let entry = h.store.find_ref(&reference).unwrap().unwrap();
    let rootfs = h.dir.path().join("rootfs");
    let stats = unpack(&h.store, &entry, &rootfs, &options, &Silent).unwrap();
    assert_eq!(stats.layers_from_cache, 2);
    assert_eq!(
        std::fs::read(rootfs.join("data/top")).unwrap(),
        b"top layer\n"
    );
    assert!(
        !rootfs.join("data/base").exists(),
        "the whiteout was applied"
    );

    // The rootfs owns its files: changing one leaves the cache as it was.
    let file = rootfs.join("data/top");
    assert_eq!(std::fs::metadata(&file).unwrap().nlink(), 1);
    std::fs::write(&file, b"changed").unwrap();
    let again = h.dir.path().join("again");
    unpack(&h.store, &entry, &again, &options, &Silent).unwrap();
    assert_eq!(
        std::fs::read(again.join("data/top")).unwrap(),
        b"top layer\n"
    );

    // The store keeps blobs for OCI readers: a pull fetches the removed ones again, but the
    // layers are already extracted and are not extracted twice.
    let (second, events) = h.pull(&reference).await.unwrap();
    assert!(!second.up_to_date);
    assert_eq!(second.blobs_downloaded, 2);
    for layer in &image.layers {
        let statuses = common::layer_statuses(&events, &layer.blob.digest);
        assert!(!statuses.contains(&"Extracting".to_owned()), "{statuses:?}");
    }
    let (third, _) = h.pull(&reference).await.unwrap();
    assert!(third.up_to_date);
}

#[tokio::test]
async fn the_same_layer_on_another_parent_is_cached_separately() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let shared = file_layer("shared", b"shared\n");
    let a = image_of(vec![file_layer("a", b"a\n"), shared.clone()]);
    let b = image_of(vec![file_layer("b", b"b\n"), shared.clone()]);
    let pusher = Pusher::new(&registry.url());
    pusher.push_image("team/a", "1", &a).await.unwrap();
    pusher.push_image("team/b", "1", &b).await.unwrap();
    let h = unpacking_harness();
    h.pull(&format!("{}/team/a:1", registry.host()))
        .await
        .unwrap();
    h.pull(&format!("{}/team/b:1", registry.host()))
        .await
        .unwrap();
    let (ca, cb) = (chains(&a), chains(&b));
    assert_ne!(ca[1], cb[1]);
    let options = UnpackOptions::for_current_user();
    let la = h.store.layers().cached(&ca[1], &options.apply).unwrap();
    let lb = h.store.layers().cached(&cb[1], &options.apply).unwrap();
    assert_ne!(la.dir, lb.dir);
    assert_eq!(la.meta.diff_id, lb.meta.diff_id);
    assert_eq!(
        registry.count("GET", &format!("/blobs/{}", shared.blob.digest)),
        1,
        "downloaded once"
    );
}

#[tokio::test]
async fn a_layer_that_fails_its_diff_id_fails_the_pull() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let layer = file_layer("x", b"x\n");
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(layer.clone())
        .config_field(
            "rootfs",
            serde_json::json!({"type": "layers", "diff_ids": [test_registry::sha256_digest(b"not it")]}),
        )
        .build();
    Pusher::new(&registry.url())
        .push_image("team/liar", "1", &image)
        .await
        .unwrap();
    let h = unpacking_harness();
    let err = h
        .pull(&format!("{}/team/liar:1", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Extract { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("diff_id") && text.contains(&layer.blob.digest),
        "{text}"
    );
    assert!(h.store.refs().unwrap().is_empty());
    let layers_dir = h.store.root().join("layers/sha256");
    let entries: Vec<_> = std::fs::read_dir(&layers_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        entries.is_empty(),
        "no cache entry, no staging left: {entries:?}"
    );
}

/// Extraction runs on the download as it arrives; a resumed download keeps feeding it, a restarted
/// one falls back to the stored blob. Either way the cached tree is the layer's.
#[tokio::test]
async fn extraction_follows_resumed_and_restarted_downloads() {
    use test_registry::{FakeRegistry, FakeRegistryOptions, Fault, random_layer};
    for restart in [false, true] {
        let registry = FakeRegistry::start(FakeRegistryOptions::default())
            .await
            .unwrap();
        let big = random_layer(7, 3_000_000);
        let image = image_of(vec![file_layer("small", b"small\n"), big.clone()]);
        registry.add_image("team/app", "1", &image);
        if restart {
            registry.fault(&big.blob.digest, Fault::IgnoreRange);
        }
        registry.fault_times(
            &big.blob.digest,
            Fault::DropConnection(big.blob.size / 2),
            1,
        );
        let h = unpacking_harness();
        let reference = format!("{}/team/app:1", registry.host());
        h.pull(&reference).await.unwrap();
        assert_eq!(
            registry.count("GET", &big.blob.digest),
            2,
            "restart={restart}"
        );
        let entry = h.store.find_ref(&reference).unwrap().unwrap();
        let rootfs = h.dir.path().join("rootfs");
        let stats = unpack(
            &h.store,
            &entry,
            &rootfs,
            &UnpackOptions::for_current_user(),
            &Silent,
        )
        .unwrap();
        assert_eq!(stats.layers_from_cache, 2, "restart={restart}");
        let files = std::fs::read_dir(rootfs.join("random/7")).unwrap().count();
        assert!(files > 0, "restart={restart}");
        assert_eq!(
            std::fs::read(rootfs.join("data/small")).unwrap(),
            b"small\n"
        );
    }
}

/// Another process extracting a layer holds its cache lock for as long as its download takes.
/// A pull wanting the same layer must not take the blob's ingest lock and then wait for the
/// layer's: the other process, holding the layer, may be waiting for that blob (two pulls of
/// images sharing layers deadlocked this way). The test holds the layer's lock itself and looks
/// at the moment the pull starts waiting for it: by then the pull must have committed the blob
/// and let go of its lock, so whoever holds the layer can get the blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_never_holds_a_blob_while_waiting_for_a_layer_another_process_extracts() {
    use std::os::unix::fs::OpenOptionsExt as _;

    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    // Incompressible and bigger than what the download can buffer ahead of a stalled
    // extraction, so a download feeding an extraction that waits cannot finish.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..24 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let layer = LayerBuilder::new()
        .add_file("noise", &noise, 0o644)
        .finish_gzip();
    let image = image_of(vec![layer.clone()]);
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    let common::Harness {
        dir: _dir,
        store,
        puller,
    } = unpacking_harness();
    let chain = &chains(&image)[0];
    let blob_hex = layer.blob.hex().to_owned();
    let open_lock = |name: String| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(store.root().join("locks").join(name))
            .unwrap()
    };
    let layer_lock = open_lock(format!("layer-sha256-{}.lock", chain.hex()));
    layer_lock.lock().unwrap();
    let layer_inode = layer_lock.metadata().unwrap().ino();

    let reference = format!("{}/team/app:1", registry.host());
    let pull = tokio::spawn(async move {
        puller
            .pull(&reference.parse().unwrap(), Arc::new(Silent))
            .await
    });
    // The wait is for an event (a waiter on the layer's lock in /proc/locks), bounded only so
    // that a broken pull fails the test rather than hanging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !lock_has_a_waiter(layer_inode) {
        assert!(
            !pull.is_finished(),
            "the pull ended without waiting for the layer"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never waited for the layer's lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        store.has_blob(&layer.blob.digest.parse().unwrap()),
        "the pull waits for the layer's lock before its blob is committed"
    );
    let blob_lock = open_lock(format!("sha256-{blob_hex}.lock"));
    assert!(
        blob_lock.try_lock().is_ok(),
        "the pull holds the blob's ingest lock while it waits for the layer's"
    );
    drop(blob_lock);
    drop(layer_lock);
    pull.await.unwrap().unwrap();
    assert!(
        store
            .layers()
            .cached(chain, &UnpackOptions::for_current_user().apply)
            .is_some()
    );
}

/// Whether someone waits for the flock on the file with inode `inode` (a `->` line of
/// /proc/locks names a waiter; its device field ends with `:<inode>`).
fn lock_has_a_waiter(inode: u64) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    let suffix = format!(":{inode}");
    locks.lines().any(|line| {
        line.contains("->")
            && line
                .split_whitespace()
                .any(|field| field.matches(':').count() == 2 && field.ends_with(&suffix))
    })
}

/// The biggest layer starts first whatever its place in the manifest: its extraction is the
/// pull's critical path, and it streams from the download only if it gets an extraction slot as
/// the download starts (in manifest order a big layer behind small ones was downloaded without
/// one and extracted only afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn the_biggest_layer_is_downloaded_first() {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let big = test_registry::random_layer(3, 2 << 20);
    let image = image_of(vec![
        file_layer("a", b"small\n"),
        file_layer("b", b"small too\n"),
        big.clone(),
    ]);
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    // One download at a time: the order the layers start in is the order they download in.
    let common::Harness {
        dir: _dir,
        store,
        puller,
    } = common::unpacking_harness_with(haul::config::Config::default(), 1);
    let recorder = Arc::new(Recorder::default());
    let reference = format!("{}/team/app:1", registry.host());
    puller
        .pull(&reference.parse().unwrap(), recorder.clone())
        .await
        .unwrap();

    let layers: Vec<String> = image.layers.iter().map(|l| l.blob.digest.clone()).collect();
    let first_download = recorder.events().into_iter().find_map(|e| match e {
        haul::progress::Event::Layer {
            digest,
            status: haul::progress::LayerStatus::Downloading { .. },
        } if layers.contains(&digest.to_string()) => Some(digest.to_string()),
        _ => None,
    });
    assert_eq!(first_download.as_deref(), Some(big.blob.digest.as_str()));
    for chain in chains(&image) {
        assert!(
            store
                .layers()
                .cached(&chain, &UnpackOptions::for_current_user().apply)
                .is_some()
        );
    }
}
