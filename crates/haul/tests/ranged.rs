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
    Blob, FakeAuth, FakeRegistry, Fault, Format, Image, ImageBuilder, RealRegistry,
    RecordedRequest, RegistryOptions, ThrottleOptions, ThrottleProxy, random_layer,
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

/// The fake registry's pace for a blob that should be split: 64 KiB every 20 ms (3.2 MB/s
/// per connection), so one stream keeps the download waiting.
fn slow() -> Fault {
    Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(20),
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
    throttled_at(image, ignore_range, RATE).await
}

async fn throttled_at(
    image: &Image,
    ignore_range: bool,
    bytes_per_sec: u64,
) -> (RealRegistry, ThrottleProxy) {
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
        bytes_per_sec,
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

/// The fake registry's GETs of `blob`, in the order they came.
fn layer_gets(fake: &FakeRegistry, blob: &Blob) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&blob.digest))
        .collect()
}

/// Where a GET's `Range: bytes=START-…` starts; `None` for a GET of the whole blob.
fn range_start(request: &RecordedRequest) -> Option<u64> {
    let spec = request.range()?.strip_prefix("bytes=")?;
    spec.split('-').next()?.parse().ok()
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
    // One stream first, which keeps the download waiting for bytes; dropped where the rest
    // starts in ranges.
    assert!(
        gets[0].range.is_none() && gets[0].status == 200 && !gets[0].complete,
        "the blob starts over one stream: {gets:?}"
    );
    assert!(
        gets.len() > CONNECTIONS && gets[1..].iter().all(|r| r.status == 206),
        "expected ranged GETs answered 206 after the stream, got {gets:?}"
    );
    let mut ranges: Vec<Range<u64>> = ranges_asked(&proxy, layer)[1..]
        .iter()
        .map(|r| {
            r.clone()
                .expect("every GET after the stream asks a closed range")
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    assert!(
        ranges[0].start > 0,
        "the stream's bytes are kept: {ranges:?}"
    );
    assert_eq!(ranges.last().unwrap().end, layer.data.len() as u64);
    assert!(
        ranges.windows(2).all(|w| w[0].end == w[1].start),
        "ranges tile the rest of the blob once: {ranges:?}"
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
    // Before the watch measured what the sink holds up, this pull waited for bytes only about
    // half of each window (its sink taking microseconds) and was never split.
    let (_registry, proxy) = throttled(&image, false).await;
    let h = common::unpacking_harness_with(ranged_config(), 3);
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
    let asked = ranges_asked(&proxy, &image.layers[0].blob);
    assert!(
        asked[0].is_none() && asked.len() > 2 && asked[1..].iter().all(Option::is_some),
        "one stream, then ranges: {asked:?}"
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
    // The stream, dropped to go on in ranges; the first range (answered 200, dropped); then
    // the rest over one stream, which the mirror answers with the whole blob again.
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(gets.iter().all(|r| r.status == 200), "{gets:?}");
    assert!(gets[0].range.is_none() && !gets[0].complete, "{gets:?}");
    assert!(
        gets[1].range.as_deref().is_some_and(|r| !r.ends_with('-')),
        "{gets:?}"
    );
    assert!(gets[2].complete, "{gets:?}");
}

/// A sink slower than the stream (a busy disk, an extraction behind) keeps the stream whole:
/// more connections would only add requests and out-of-order writes to a download that waits
/// for the sink, not for bytes. The sink offers ranges, so only the watch decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_faster_than_its_sink_is_not_split() {
    let image = one_layer_image(11, 12 << 20);
    let layer = &image.layers[0].blob;
    // Ranges are served, and nothing caps a connection (1 GiB/s).
    let (_registry, proxy) = throttled_at(&image, false, 1 << 30).await;
    let client = common::fast_client(ranged_config(), Arc::new(Anonymous));
    let repo = client.repository(&format!("{}/big/app:v1", proxy.host()).parse().unwrap());
    let desc = haul::manifest::Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        layer.digest.parse().unwrap(),
        layer.data.len() as u64,
    );
    let mut sink = SlowSink::default();
    let started = Instant::now();
    repo.fetch_blob(&desc, &mut sink).await.expect("fetch");
    let took = started.elapsed();

    assert_eq!(sink.held(), layer.data.to_vec());
    assert_eq!(
        ranges_asked(&proxy, layer),
        vec![None],
        "one stream, in {took:?}"
    );
    assert!(
        took > Duration::from_secs(1),
        "the sink was to be the bottleneck for several windows: {took:?}"
    );
}

/// A sink in memory that takes 100 ms per 256 KiB (2.6 MB/s) and offers ranges.
#[derive(Default)]
struct SlowSink {
    bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    position: u64,
}

impl SlowSink {
    fn held(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl haul::registry::BlobSink for SlowSink {
    type Error = std::io::Error;
    fn position(&self) -> u64 {
        self.position
    }
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), std::io::Error> {
        tokio::time::sleep(Duration::from_micros(
            chunk.len() as u64 * 100_000 / (256 << 10),
        ))
        .await;
        self.bytes.lock().unwrap().extend_from_slice(&chunk);
        self.position += chunk.len() as u64;
        Ok(())
    }
    async fn restart(&mut self) -> Result<(), std::io::Error> {
        self.bytes.lock().unwrap().clear();
        self.position = 0;
        Ok(())
    }
    fn verify(&mut self) -> Result<(), haul::digest::VerifyError> {
        Ok(())
    }
    async fn ranged(
        &mut self,
    ) -> Result<Option<haul::registry::SharedTarget<std::io::Error>>, std::io::Error> {
        Ok(Some(Arc::new(MemoryTarget(self.bytes.clone()))))
    }
    async fn absorb(&mut self, chunk: bytes::Bytes) -> Result<(), std::io::Error> {
        self.position += chunk.len() as u64;
        Ok(())
    }
}

struct MemoryTarget(Arc<std::sync::Mutex<Vec<u8>>>);

impl haul::registry::RangedTarget<std::io::Error> for MemoryTarget {
    fn completed(&self) -> Vec<Range<u64>> {
        Vec::new()
    }
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), std::io::Error> {
        let mut held = self.0.lock().unwrap();
        let end = offset as usize + bytes.len();
        if held.len() < end {
            held.resize(end, 0);
        }
        held[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), std::io::Error> {
        let held = self.0.lock().unwrap();
        buf.copy_from_slice(&held[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn record(&self, _: Range<u64>) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn abandon(&self, keep: u64) -> Result<(), std::io::Error> {
        self.0.lock().unwrap().truncate(keep as usize);
        Ok(())
    }
}

/// An endpoint that does not say `Accept-Ranges: bytes` keeps its one stream, however slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_from_an_endpoint_that_does_not_offer_ranges_is_not_split() {
    let fake = fake_registry(FakeAuth::None).await;
    let image = one_layer_image(10, 12 << 20);
    let layer = &image.layers[0].blob;
    fake.add_image("big/app", "v1", &image);
    fake.fault(&layer.digest, slow());
    fake.fault(
        &layer.digest,
        Fault::Header("accept-ranges".to_owned(), "none".to_owned()),
    );
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    h.pull(&format!("{}/big/app:v1", fake.host()))
        .await
        .expect("pull");

    h.assert_blobs_verified();
    let gets: Vec<_> = layer_gets(&fake, layer)
        .iter()
        .map(|r| r.range().map(str::to_owned))
        .collect();
    assert_eq!(gets, vec![None], "one stream, no ranges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_with_wrong_bytes_fails_verification_and_the_blob_is_refetched_whole() {
    let fake = fake_registry(FakeAuth::None).await;
    let image = one_layer_image(4, 12 << 20);
    let layer = &image.layers[0].blob;
    fake.add_image("big/app", "v1", &image);
    // A slow stream, split into ranges; the range holding the blob's last bytes has one of
    // them flipped (ranges only: the whole blob over one stream is right).
    fake.fault(&layer.digest, slow());
    let size = layer.data.len() as u64;
    fake.fault_ranges(&layer.digest, Fault::CorruptByte(size - 10), None);
    let h = harness_in(tempfile::tempdir().unwrap(), ranged_config());

    h.pull(&format!("{}/big/app:v1", fake.host()))
        .await
        .expect("pull");

    h.assert_blobs_verified();
    let gets = layer_gets(&fake, layer);
    assert!(
        gets.len() > 3 && gets[1..gets.len() - 1].iter().all(|r| r.range().is_some()),
        "a stream, ranges, then the whole blob: {:?}",
        gets.iter().map(|r| r.range()).collect::<Vec<_>>()
    );
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
    // A slow stream, split into ranges; the first range breaks after 300,000 bytes.
    fake.fault(&layer.digest, slow());
    fake.fault_ranges(&layer.digest, Fault::DropConnection(300_000), Some(1));
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
    let gets = layer_gets(&fake, layer);
    assert!(
        gets[0].range().is_none(),
        "one stream first: {:?}",
        gets.iter().map(|r| r.range()).collect::<Vec<_>>()
    );
    let starts: Vec<u64> = gets[1..]
        .iter()
        .map(|r| range_start(r).expect("ranges after the stream"))
        .collect();
    // Ranges are at least 1 MiB: a start inside the first one is the broken range resumed
    // from the bytes it had, not fetched again.
    let first = starts[0];
    assert!(
        starts.iter().any(|s| *s > first && *s < first + (1 << 20)),
        "no resumed range: {starts:?}"
    );
    assert_eq!(
        starts.iter().filter(|s| **s == first).count(),
        1,
        "{starts:?}"
    );
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
    let on_record = recorded_ranges(&record_path(&store_dir, layer));
    proxy.clear();

    let h = harness_in(dir, ranged_config());
    h.pull(&reference).await.expect("second pull");
    h.assert_blobs_verified();
    // What was asked: ranges, and perhaps one stream from the end of the recorded prefix
    // (dropped once it splits, so what it asks is not what it takes). Nothing on record is
    // asked again.
    let asked = ranges_asked(&proxy, layer);
    for range in asked.iter().flatten() {
        assert!(
            on_record
                .iter()
                .all(|r| r.end <= range.start || range.end <= r.start),
            "the second pull asked {range:?} again; on record: {on_record:?}"
        );
    }
    let ranged: u64 = proxy
        .requests_for(&layer.digest)
        .iter()
        .filter(|r| r.method == "GET" && r.range.as_deref().is_some_and(|r| !r.ends_with('-')))
        .map(|r| r.requested(size))
        .sum();
    eprintln!("killed with {recorded} of {size} bytes recorded; the second pull asked {asked:?}");
    assert!(
        ranged <= missing + (64 << 10),
        "the second pull asked {ranged} bytes in ranges; only {missing} of {size} were missing: \
         {asked:?}"
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
    // A slow stream, split into ranges; the first range sends 600,000 bytes and then nothing.
    let sent: u64 = 600_000;
    fake.fault(&layer.digest, slow());
    fake.fault_ranges(&layer.digest, Fault::Stall { after_bytes: sent }, Some(1));
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
    let first_range_start = || layer_gets(&fake, layer).iter().find_map(range_start);
    let stalled = loop {
        if let Some(start) = first_range_start()
            && covers(
                &recorded_ranges(&record),
                &(start..start + sent - lost_at_most),
            )
        {
            break start;
        }
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
    };
    child.kill().unwrap();
    child.wait().unwrap();
    fake.clear_requests();

    let h = harness_in(dir, ranged_config());
    h.pull(&reference).await.expect("second pull");
    h.assert_blobs_verified();
    let starts: Vec<u64> = layer_gets(&fake, layer)
        .iter()
        .filter_map(range_start)
        .collect();
    // The stalled range resumes from what it wrote, not from its start.
    let first = starts.iter().copied().min().expect("ranged requests");
    assert!(
        first >= stalled + sent - lost_at_most && first < size,
        "the second pull starts at {first}; {sent} bytes of the range from {stalled} had \
         arrived: {starts:?}"
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
