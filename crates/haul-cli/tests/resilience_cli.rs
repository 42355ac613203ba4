//! Pulls that are killed, interrupted, run side by side, or hit a full disk: the `haul` binary as
//! users run it, with real processes and real signals.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

mod common;

use common::{Env, ok};
use test_registry::{
    Blob, FakeRegistry, FakeRegistryOptions, Fault, Format, Image, ImageBuilder, LayerBuilder,
    Pusher, RealRegistry, RegistryOptions, SmallDisk, random_layer,
};

/// A failure bound for conditions the test waits on, never a synchronisation delay.
const PATIENCE: Duration = Duration::from_secs(60);

fn one_layer_image(seed: u64, layer_size: usize) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, layer_size))
        .build()
}

fn partial_path(root: &str, blob: &Blob) -> PathBuf {
    Path::new(root)
        .join("ingest")
        .join(blob.digest.replacen(':', "-", 1) + ".partial")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Polls until `cond` holds, failing the test after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("haul did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn index_refs(root: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(root).join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_owned)
        .collect()
}

/// A fake registry serving `img` as `app:1`, its layer throttled so a pull is caught mid-way.
async fn slow_registry(img: &Image, bytes_per_second: usize) -> FakeRegistry {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("app", "1", img);
    let chunk = 64 * 1024;
    fake.fault(
        &img.layers[0].blob.digest,
        Fault::Slow {
            chunk,
            delay: Duration::from_secs_f64(chunk as f64 / bytes_per_second as f64),
        },
    );
    fake
}

/// The `Range` start of the one GET of `blob` since the log was cleared (0 without a Range).
fn range_start_of_only_get(fake: &FakeRegistry, blob: &Blob) -> u64 {
    let gets: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&blob.digest))
        .collect();
    assert_eq!(gets.len(), 1, "one request for the layer: {gets:?}");
    gets[0]
        .range()
        .map(|r| {
            r.strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected Range {r}"))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_killed_halfway_fetches_only_the_missing_bytes_next_time() {
    let size = 24 << 20;
    let img = one_layer_image(40, size);
    let layer = &img.layers[0].blob;
    let fake = slow_registry(&img, 4 << 20).await;
    let env = Env::new();
    let name = format!("{}/app:1", fake.host());
    let partial = partial_path(&env.root(), layer);

    let mut child = env
        .haul_process()
        .args(["pull", "-q", &name])
        .spawn()
        .unwrap();
    wait_until("half the layer on disk", || {
        file_len(&partial) >= layer.size / 2
    });
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind runs
    let status = wait_exit(&mut child);
    assert!(!status.success());
    let kept = file_len(&partial);
    assert!(kept >= layer.size / 2, "the partial survives the kill");
    assert!(
        index_refs(&env.root()).is_empty(),
        "no ref to an incomplete image"
    );

    fake.clear_faults();
    fake.clear_requests();
    ok(env.run(&["pull", "-q", &name]));
    let start = range_start_of_only_get(&fake, layer);
    assert_eq!(
        start, kept,
        "the second pull continues where the partial ends"
    );
    let refetched = layer.size - start;
    let image_bytes: u64 = img.blobs().iter().map(|b| b.size).sum();
    eprintln!(
        "killed at {:.0}% of the layer; the restarted pull fetched {refetched} of {} layer bytes \
         ({:.1}% of the {image_bytes}-byte image)",
        100.0 * kept as f64 / layer.size as f64,
        layer.size,
        100.0 * refetched as f64 / image_bytes as f64,
    );
    assert!(!partial.exists());
    assert_eq!(index_refs(&env.root()), vec![name.clone()]);
    // The resumed blob is the real one: unpacking verifies every diff_id.
    let rootfs = env.dir.path().join("rootfs");
    ok(env.run(&["unpack", &name, rootfs.to_str().unwrap()]));
}

/// Bytes a `kill -9` may cost a pull per layer: what haul holds in memory and has not yet
/// written to its partial file.
const MAX_LOST_ON_KILL: u64 = 256 << 10;

/// The registry sends exactly `sent` bytes of the layer and then nothing; haul's stall timeout
/// makes it ask again from what it took (`Range: bytes=sent-`, proof that every sent byte reached
/// it), and that request too goes silent. Killed then, haul must have written all but the last
/// [`MAX_LOST_ON_KILL`] of them where the next pull finds them.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_killed_mid_layer_refetches_at_most_256_kib_of_what_the_registry_sent() {
    let img = one_layer_image(42, 24 << 20);
    let layer = &img.layers[0].blob;
    // Not a multiple of any plausible buffer, so a buffer's tail is always at stake.
    let sent = (layer.size / 2) / (1 << 20) * (1 << 20) + (900 << 10);
    assert!(sent < layer.size, "the layer is {} bytes", layer.size);
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("app", "1", &img);
    // The first GET sends `sent` bytes in 64 KiB pieces, as a network delivers them, then
    // stalls; every later one stalls at once (the first matching `Stall` is the one applied).
    fake.fault_times(&layer.digest, Fault::Stall { after_bytes: sent }, 1);
    fake.fault(&layer.digest, Fault::Stall { after_bytes: 0 });
    fake.fault(
        &layer.digest,
        Fault::Slow {
            chunk: 64 << 10,
            delay: Duration::from_millis(2),
        },
    );
    let env = Env::new();
    let config = env.dir.path().join("stall.json");
    std::fs::write(&config, r#"{"download-stall-timeout": 1}"#).unwrap();
    let name = format!("{}/app:1", fake.host());
    let partial = partial_path(&env.root(), layer);

    let mut child = env
        .haul_process()
        .args(["--config", config.to_str().unwrap(), "pull", "-q", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let layer_gets = || {
        fake.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
            .collect::<Vec<_>>()
    };
    wait_until("haul to ask again after the stall", || {
        layer_gets().len() >= 2
    });
    let again = layer_gets()[1].range().map(str::to_owned);
    assert_eq!(
        again.as_deref(),
        Some(format!("bytes={sent}-").as_str()),
        "haul took every byte the registry sent before asking again"
    );
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind runs
    assert!(!wait_exit(&mut child).success());

    fake.clear_faults();
    fake.clear_requests();
    ok(env.run(&["pull", "-q", &name]));
    let start = range_start_of_only_get(&fake, layer);
    assert!(
        start <= sent,
        "resumed at {start}, past the {sent} bytes sent"
    );
    assert!(
        sent - start <= MAX_LOST_ON_KILL,
        "the registry had sent {sent} bytes and haul had taken them all, but the next pull \
         resumed at {start}: {} KiB fetched twice (at most {} KiB allowed)",
        (sent - start) >> 10,
        MAX_LOST_ON_KILL >> 10,
    );
    assert!(!partial.exists());
    assert_eq!(index_refs(&env.root()), vec![name.clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_a_pull_promptly_with_130_and_keeps_the_partial() {
    let size = 8 << 20;
    let img = one_layer_image(41, size);
    let layer = &img.layers[0].blob;
    // Slow enough that the whole layer would take about a minute.
    let fake = slow_registry(&img, 128 << 10).await;
    let env = Env::new();
    let name = format!("{}/app:1", fake.host());
    let partial = partial_path(&env.root(), layer);

    let mut child = env
        .haul_process()
        .args(["pull", "--progress", "plain", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the layer download to start", || {
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
    });
    wait_until("bytes in the partial file", || file_len(&partial) > 0);
    let signalled = Instant::now();
    signal(&child, "INT");
    let status = wait_exit(&mut child);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "Ctrl-C took {took:?}; the download had ~50 s to go"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        file_len(&partial) > 0,
        "the partial is kept for the next pull"
    );
    assert!(
        index_refs(&env.root()).is_empty(),
        "no ref to an incomplete image"
    );
    let images = ok(env.run(&["images"]));
    assert!(!images.stdout.contains("app"), "{}", images.stdout);

    let kept = file_len(&partial);
    fake.clear_faults();
    fake.clear_requests();
    ok(env.run(&["pull", "-q", &name]));
    assert_eq!(range_start_of_only_get(&fake, layer), kept);
}

/// A layer made of real-looking text, so images in the multi-process test share something that
/// compresses.
fn text_layer(seed: u64, files: usize) -> test_registry::Layer {
    let mut b = LayerBuilder::new();
    for i in 0..files {
        b = b.add_file(
            &format!("usr/share/doc/pkg{seed}-{i}/README"),
            &test_registry::pseudo_text(seed * 1000 + i as u64, 64 * 1024),
            0o644,
        );
    }
    b.finish_gzip()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_download_each_shared_blob_once_and_never_show_partial_content() {
    let base = [text_layer(1, 40), text_layer(2, 40)];
    let images: Vec<Image> = (0..3)
        .map(|i| {
            ImageBuilder::new(Format::Oci)
                .platform("linux", "amd64", None)
                .layers(base.iter().cloned())
                .layer(random_layer(100 + i, 1 << 20))
                .build()
        })
        .collect();
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let pusher = Pusher::new(&registry.url());
    for (i, img) in images.iter().enumerate() {
        pusher
            .push_image(&format!("app{i}"), "1", img)
            .await
            .unwrap();
    }
    let mark = registry.mark();
    let env = Env::new();
    ok(env.run(&["images"])); // creates the store, so the watcher below can start at once
    let names: Vec<String> = (0..3)
        .map(|i| format!("{}/app{i}:1", registry.host()))
        .collect();

    let mut children: Vec<Child> = names
        .iter()
        .map(|n| {
            env.haul_process()
                .args(["pull", "-q", n])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();

    // While they run, everything a reader can see must be whole: index.json parses, and every
    // file under blobs/ hashes to its name.
    let root = PathBuf::from(env.root());
    let mut looks = 0;
    loop {
        let done = children.iter_mut().all(|c| c.try_wait().unwrap().is_some());
        let text = std::fs::read_to_string(root.join("index.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("torn index.json ({e}): {text}"));
        for entry in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue; // swept between listing and reading: nothing was seen
            };
            let hex = entry.file_name().into_string().unwrap();
            assert_eq!(
                test_registry::sha256_digest(&bytes),
                format!("sha256:{hex}"),
                "a partial blob was visible"
            );
        }
        looks += 1;
        if done {
            break;
        }
    }
    for mut c in children {
        assert!(wait_exit(&mut c).success());
    }
    assert!(looks > 1);

    let mut refs = index_refs(&env.root());
    refs.sort();
    assert_eq!(refs, names);
    let log = registry.requests_since(mark);
    for layer in &base {
        let fetched = log
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&layer.blob.digest) && r.status < 300)
            .count();
        assert_eq!(
            fetched, 1,
            "shared layer {} fetched once",
            layer.blob.digest
        );
    }
}

/// The store on a small disk.
fn store_on(disk: &SmallDisk) -> String {
    disk.path().join("store").display().to_string()
}

fn leftovers(root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") || name.starts_with(".tmp-") {
                out.push(e.path().display().to_string());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) && name != "diff" {
                stack.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_that_cannot_fit_is_refused_before_any_layer_is_fetched() {
    let Some(disk) = SmallDisk::mount(16, "the full-disk test") else {
        return;
    };
    let img = one_layer_image(50, 24 << 20);
    let registry = common::registry_with("big", "1", &img).await;
    let env = Env::new();
    let mark = registry.mark();
    let out = common::run(env.haul_bare().args([
        "--root",
        &store_on(&disk),
        "pull",
        &format!("{}/big:1", registry.host()),
    ]));
    eprintln!("{}", out.stderr);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("no space left on device: need ")
            && out
                .stderr
                .contains(&format!("free under {}", store_on(&disk))),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    let layer_gets = registry
        .requests_since(mark)
        .iter()
        .filter(|r| r.path.ends_with(&img.layers[0].blob.digest))
        .count();
    assert_eq!(layer_gets, 0, "nothing was downloaded");
    assert!(index_refs(&store_on(&disk)).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_mid_pull_stops_cleanly_and_the_pull_resumes_after_freeing_space() {
    let Some(disk) = SmallDisk::mount(24, "the full-disk test") else {
        return;
    };
    // Small compressed, large extracted: the check before downloading lets it through, and the
    // disk fills while the second layer is extracted.
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(60, 2 << 20))
        .layer(
            LayerBuilder::new()
                .add_file("var/lib/zeros", &vec![0u8; 40 << 20], 0o644)
                .finish_gzip(),
        )
        .build();
    let registry = common::registry_with("fat", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/fat:1", registry.host());
    let pull = || {
        common::run(
            env.haul_bare()
                .args(["--root", &store_on(&disk), "pull", "-q", &name]),
        )
    };

    let out = pull();
    eprintln!("{}", out.stderr);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("no space left on device: need "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(
        index_refs(&store_on(&disk)).is_empty(),
        "no ref to an incomplete image"
    );
    assert_eq!(
        leftovers(&store_on(&disk)),
        Vec::<String>::new(),
        "temp files removed"
    );
    for blob in img.blobs() {
        let path = Path::new(&store_on(&disk))
            .join("blobs/sha256")
            .join(blob.digest.trim_start_matches("sha256:"));
        assert!(path.exists(), "verified blob {} kept", blob.digest);
    }

    disk.grow(200);
    let mark = registry.mark();
    ok(pull());
    let blob_gets = registry
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .count();
    assert_eq!(
        blob_gets, 0,
        "the blobs kept from the failed pull are reused"
    );
    assert_eq!(index_refs(&store_on(&disk)), vec![name]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_where_every_blob_drops_once_completes_by_resuming_each() {
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers((0..4).map(|i| random_layer(70 + i, 4 << 20)))
        .build();
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("app", "1", &img);
    let name = format!("{}/app:1", fake.host());

    let clean = Env::new();
    let started = Instant::now();
    ok(clean.run(&["pull", "-q", "--no-unpack", &name]));
    let clean_time = started.elapsed();

    for blob in img.blobs() {
        fake.fault_times(&blob.digest, Fault::DropConnection(blob.size / 2), 1);
    }
    fake.clear_requests();
    let flaky = Env::new();
    let started = Instant::now();
    ok(flaky.run(&["pull", "-q", "--no-unpack", &name]));
    let flaky_time = started.elapsed();

    for blob in img.blobs() {
        let gets: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&blob.digest))
            .collect();
        assert_eq!(gets.len(), 2, "{}: {gets:?}", blob.digest);
        assert!(
            gets[1].range().is_some(),
            "{} resumed with Range",
            blob.digest
        );
    }
    let total: u64 = img.blobs().iter().map(|b| b.size).sum();
    eprintln!(
        "flaky registry (every blob dropped once at half): {flaky_time:?} against {clean_time:?} \
         clean for {total} bytes, with default backoff"
    );
}
