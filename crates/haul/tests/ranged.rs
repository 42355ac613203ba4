//! Big blobs over several connections: fetched in ranges when the registry serves them, over one
//! stream when it does not, verified either way, and resumed after a kill from every completed
//! range. The real registry sits behind a proxy that caps each connection's rate
//! ([`ThrottleProxy`]), as a CDN does; the fake registry only corrupts a range.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haul::config::Config;
use haul::registry::Anonymous;
use haul::store::Store;
use test_registry::{
    Blob, FakeAuth, Fault, Format, Image, ImageBuilder, RealRegistry, RegistryOptions,
    ThrottleOptions, ThrottleProxy, random_layer,
};

use common::{Harness, fake_registry, puller_for};

/// Per connection: a blob of a few MiB takes a second or two over one.
const RATE: u64 = 2 << 20;
const CONNECTIONS: usize = 4;
/// The child process's environment: the reference to pull and the store.
const CHILD_REF: &str = "HAUL_RANGED_TEST_CHILD_REF";
const CHILD_STORE: &str = "HAUL_RANGED_TEST_CHILD_STORE";

fn ranged_config() -> Config {
    Config {
        max_connections_per_blob: CONNECTIONS,
        ranged_download_min_size: 1 << 20,
        ..Config::default()
    }
}

fn harness_in(dir: tempfile::TempDir, config: Config) -> Harness {
    let store = Store::open(dir.path().join("store")).expect("store");
    let puller = puller_for(&store, config, Arc::new(Anonymous), None);
    Harness { dir, store, puller }
}

fn one_layer_image(seed: u64, size: usize) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, size))
        .build()
}

async fn throttled(image: &Image, ignore_range: bool) -> (RealRegistry, ThrottleProxy) {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .expect("registry");
    registry
        .pusher()
        .push_image("big/app", "v1", image)
        .await
        .expect("push");
    let proxy = ThrottleProxy::start(ThrottleOptions {
        upstream: registry.url(),
        bytes_per_sec: RATE,
        ignore_range,
    })
    .await
    .expect("proxy");
    (registry, proxy)
}

/// The ranges asked for `blob`, parsed from the proxy's log.
fn ranges_asked(proxy: &ThrottleProxy, blob: &Blob) -> Vec<Option<Range<u64>>> {
    proxy
        .requests_for(&blob.digest)
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| {
            let spec = r.range.as_deref()?.strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            let start = a.parse().ok()?;
            let end = b
                .parse::<u64>()
                .map_or(blob.data.len() as u64, |last| last + 1);
            Some(start..end)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_blob_comes_over_several_connections_in_ranges_and_verifies() {
    let image = one_layer_image(1, 24 << 20);
    let layer = &image.layers[0].blob;
    let (_registry, proxy) = throttled(&image, false).await;
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    h.pull(&format!("{}/big/app:v1", proxy.host()))
        .await
        .expect("pull");

    assert!(h.has(&layer.digest));
    h.assert_blobs_verified();
    let gets: Vec<_> = proxy
        .requests_for(&layer.digest)
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(
        gets.len() >= CONNECTIONS && gets.iter().all(|r| r.status == 206),
        "expected ranged GETs answered 206, got {gets:?}"
    );
    let mut ranges: Vec<Range<u64>> = ranges_asked(&proxy, layer)
        .into_iter()
        .map(|r| r.expect("every GET asks a closed range"))
        .collect();
    ranges.sort_by_key(|r| r.start);
    assert_eq!(ranges[0].start, 0);
    assert_eq!(ranges.last().unwrap().end, layer.data.len() as u64);
    assert!(
        ranges.windows(2).all(|w| w[0].end == w[1].start),
        "ranges tile the blob once: {ranges:?}"
    );
    // The manifest, the config and CONNECTIONS connections for the layer, at least.
    assert!(
        proxy.connections() >= CONNECTIONS,
        "only {} connections",
        proxy.connections()
    );
    assert!(
        std::fs::read_dir(h.store.root().join("ingest"))
            .unwrap()
            .count()
            == 0,
        "no partial or record is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_pull_that_unpacks_extracts_the_layer() {
    let image = one_layer_image(2, 12 << 20);
    let (_registry, proxy) = throttled(&image, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let puller = haul::pull::Puller::new(
        common::fast_client(ranged_config(), Arc::new(Anonymous)),
        store.clone(),
        haul::pull::PullOptions {
            platform: None,
            max_concurrent_downloads: 3,
            unpack: Some(haul::unpack::UnpackOptions::for_current_user()),
            content_trust: None,
            trust: Default::default(),
        },
    );
    let h = Harness { dir, store, puller };
    h.pull(&format!("{}/big/app:v1", proxy.host()))
        .await
        .expect("pull");
    h.assert_blobs_verified();
    let chain = common::chains(&image)[0].clone();
    assert!(
        h.store
            .root()
            .join("layers/sha256")
            .join(chain.hex())
            .is_dir(),
        "the layer is extracted"
    );
    assert!(
        ranges_asked(&proxy, &image.layers[0].blob)
            .iter()
            .all(Option::is_some)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_within_the_layer_limit_plus_the_shared_extra_pool() {
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(6, 12 << 20))
        .layer(random_layer(7, 12 << 20))
        .build();
    let (_registry, proxy) = throttled(&image, false).await;
    let config = Config {
        max_concurrent_downloads: 2,
        max_connections_per_blob: 3,
        ..ranged_config()
    };
    let h = harness_in(tempfile::tempdir().unwrap(), config);

    h.pull(&format!("{}/big/app:v1", proxy.host()))
        .await
        .expect("pull");

    h.assert_blobs_verified();
    let layer_gets: Vec<_> = image
        .layers
        .iter()
        .flat_map(|l| proxy.requests_for(&l.blob.digest))
        .filter(|r| r.method == "GET")
        .collect();
    // Two layers at once, each with its own connection, and two extra ones between them.
    let most = ThrottleProxy::most_at_once(&layer_gets);
    let bound = 2 + (3 - 1);
    assert!(most <= bound, "{most} layer requests at once");
    assert!(most > 2, "the extra connections were used: {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_ignores_range_gets_one_stream_and_the_blob_verifies() {
    let image = one_layer_image(3, 12 << 20);
    let layer = &image.layers[0].blob;
    let (_registry, proxy) = throttled(&image, true).await;
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    h.pull(&format!("{}/big/app:v1", proxy.host()))
        .await
        .expect("pull");

    h.assert_blobs_verified();
    let gets: Vec<_> = proxy
        .requests_for(&layer.digest)
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    // The probe (answered 200, dropped), then the whole blob over one stream.
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets.iter().all(|r| r.status == 200));
    assert!(gets[1].range.is_none() && gets[1].complete, "{gets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_with_wrong_bytes_fails_verification_and_the_blob_is_refetched_whole() {
    let fake = fake_registry(FakeAuth::None).await;
    let image = one_layer_image(4, 12 << 20);
    let layer = &image.layers[0].blob;
    fake.add_image("big/app", "v1", &image);
    // The first range asked (from byte 0) comes back with one byte flipped.
    fake.fault_times(&layer.digest, Fault::CorruptByte(10), 1);
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    h.pull(&format!("{}/big/app:v1", fake.host()))
        .await
        .expect("pull");

    h.assert_blobs_verified();
    let gets: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .collect();
    assert!(
        gets.len() > 2,
        "ranges first: {:?}",
        gets.iter().map(|r| r.range()).collect::<Vec<_>>()
    );
    assert!(gets[0].range().is_some_and(|r| r.starts_with("bytes=0-")));
    let last = gets.last().unwrap();
    assert_eq!(last.range(), None, "then the whole blob");
    assert_eq!(last.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_breaks_midway_is_resumed_within_the_range() {
    let fake = fake_registry(FakeAuth::None).await;
    let image = one_layer_image(8, 12 << 20);
    let layer = &image.layers[0].blob;
    fake.add_image("big/app", "v1", &image);
    // The first range (from byte 0) breaks after 300,000 bytes.
    fake.fault_times(&layer.digest, Fault::DropConnection(300_000), 1);
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    let (_, events) = h
        .pull(&format!("{}/big/app:v1", fake.host()))
        .await
        .expect("pull");
    let statuses = common::layer_statuses(&events, &layer.digest);
    assert!(
        statuses.iter().any(|s| s.starts_with("Retrying")),
        "the retry is reported: {statuses:?}"
    );

    h.assert_blobs_verified();
    let starts: Vec<u64> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .map(|r| {
            let Some(range) = r.range() else {
                panic!(
                    "a GET without a range: {:?}",
                    fake.requests()
                        .iter()
                        .filter(|r| r.path.contains(&layer.digest))
                        .map(|r| (r.range().map(str::to_owned), r.status))
                        .collect::<Vec<_>>()
                )
            };
            let spec = range.strip_prefix("bytes=").expect("bytes");
            spec.split('-').next().unwrap().parse().unwrap()
        })
        .collect();
    // Ranges are at least 1 MiB: a start inside the first one is the broken range resumed
    // from the bytes it had, not fetched again.
    assert!(
        starts.iter().any(|s| *s > 0 && *s < 1 << 20),
        "no resumed range: {starts:?}"
    );
    assert_eq!(starts.iter().filter(|s| **s == 0).count(), 1, "{starts:?}");
}

/// The record of complete ranges a ranged download keeps beside its partial.
fn record_path(store: &Path, blob: &Blob) -> PathBuf {
    store
        .join("ingest")
        .join(blob.digest.replacen(':', "-", 1) + ".ranges")
}

fn recorded_ranges(path: &Path) -> Vec<Range<u64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ranges: Vec<Range<u64>> = text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once('-')?;
            Some(a.parse().ok()?..b.parse().ok()?)
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    ranges
}

/// Whether the recorded ranges, joined, cover all of `want`.
fn covers(ranges: &[Range<u64>], want: &Range<u64>) -> bool {
    let mut at = want.start;
    for r in ranges {
        if r.start <= at && r.end > at {
            at = r.end;
        }
    }
    at >= want.end
}

fn recorded_bytes(path: &Path) -> u64 {
    let ranges = recorded_ranges(path);
    let mut covered = 0;
    let mut at = 0;
    for r in ranges {
        let start = r.start.max(at);
        if r.end > start {
            covered += r.end - start;
            at = r.end;
        }
    }
    covered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_pull_killed_midway_fetches_only_the_missing_ranges_next_time() {
    let image = one_layer_image(5, 24 << 20);
    let layer = &image.layers[0].blob;
    let size = layer.data.len() as u64;
    let (_registry, proxy) = throttled(&image, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let reference = format!("{}/big/app:v1", proxy.host());

    // A real process pulling, killed with SIGKILL once a few ranges are complete.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_pulls_when_asked", "--nocapture"])
        .env(CHILD_REF, &reference)
        .env(CHILD_STORE, &store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let complete = || {
        proxy
            .requests_for(&layer.digest)
            .iter()
            .filter(|r| r.status == 206 && r.complete)
            .count()
    };
    let started = Instant::now();
    while complete() < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no ranges completed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !Store::open(&store_dir)
            .unwrap()
            .has_blob(&layer.digest.parse().unwrap())
    );

    let recorded = recorded_bytes(&record_path(&store_dir, layer));
    assert!(
        recorded >= size / 8,
        "the record keeps the completed ranges ({recorded} of {size} bytes)"
    );
    let missing = size - recorded;
    proxy.clear();

    let h = harness_in(dir, ranged_config());
    h.pull(&reference).await.expect("second pull");
    h.assert_blobs_verified();
    let asked: u64 = proxy
        .requests_for(&layer.digest)
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.requested(size))
        .sum();
    eprintln!("killed with {recorded} of {size} bytes recorded; the second pull asked {asked}");
    assert!(
        asked <= missing + (64 << 10),
        "the second pull asked {asked} bytes; only {missing} of {size} were missing"
    );
}

/// A range still arriving when the process is killed keeps what was written of it: the next
/// pull resumes that range within 256 KiB (one write being gathered) of the bytes received.
#[tokio::test]
async fn a_range_cut_short_by_a_kill_keeps_what_it_wrote() {
    let fake = fake_registry(FakeAuth::None).await;
    let image = one_layer_image(9, 12 << 20);
    let layer = &image.layers[0].blob;
    let size = layer.data.len() as u64;
    fake.add_image("big/app", "v1", &image);
    // The first range (the probe, from byte 0) sends 600,000 bytes and then nothing.
    let sent: u64 = 600_000;
    fake.fault_times(&layer.digest, Fault::Stall { after_bytes: sent }, 1);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let reference = format!("{}/big/app:v1", fake.host());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_pulls_when_asked", "--nocapture"])
        .env(CHILD_REF, &reference)
        .env(CHILD_STORE, &store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    // Killed once the stalled range's writes so far are on record (its retry comes only after
    // the stall timeout, long after this).
    let lost_at_most: u64 = 256 << 10;
    let record = record_path(&store_dir, layer);
    let started = Instant::now();
    while !covers(&recorded_ranges(&record), &(0..sent - lost_at_most)) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stalled range's bytes never reached the record: {:?}",
            recorded_ranges(&record)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before the stalled range's bytes were recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    fake.clear_requests();

    let h = harness_in(dir, ranged_config());
    h.pull(&reference).await.expect("second pull");
    h.assert_blobs_verified();
    let starts: Vec<u64> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.digest))
        .filter_map(|r| {
            let spec = r.range()?.strip_prefix("bytes=")?.to_owned();
            spec.split('-').next()?.parse().ok()
        })
        .collect();
    // The stalled range resumes from what it wrote, not from its start.
    let first = starts.iter().copied().min().expect("ranged requests");
    assert!(
        first >= sent - lost_at_most && first < size,
        "the second pull starts at {first}; {sent} bytes of the first range had arrived: {starts:?}"
    );
}

/// Not a test of its own: the child process of the kill test, which pulls when its environment
/// says so and does nothing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_pulls_when_asked() {
    let (Ok(reference), Ok(store)) = (std::env::var(CHILD_REF), std::env::var(CHILD_STORE)) else {
        return;
    };
    let store = Store::open(store).expect("store");
    let puller = puller_for(&store, ranged_config(), Arc::new(Anonymous), None);
    let recorder = Arc::new(haul::progress::Recorder::default());
    let _ = puller
        .pull(&reference.parse().expect("reference"), recorder)
        .await;
}
