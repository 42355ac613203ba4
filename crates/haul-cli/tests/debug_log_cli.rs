//! Issue 15 item 12: `-D` says what a successful pull did (the endpoint, each layer with its bytes
//! and time, the totals), its log carries no colour codes when stderr is not a terminal, and
//! without `-D` a failing command prints docker's error and no log lines.

mod common;

use common::{Env, ok, registry_with, run};
use test_registry::{Format, Image, ImageBuilder, random_layer};

fn image() -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(121, 150_000))
        .layer(random_layer(122, 40_000))
        .build()
}

/// Lines that look like a tracing event of the given level (`… LEVEL message`), whatever the
/// timestamp looks like.
fn log_lines<'a>(stderr: &'a str, level: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.split_whitespace().take(3).any(|w| w == level))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_pull_logs_the_endpoint_and_every_layer_with_bytes_and_time() {
    let img = image();
    let registry = registry_with("team/logs", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/logs:1", registry.host());
    let out = ok(env.run(&["-D", "pull", &name]));
    let debug = log_lines(&out.stderr, "DEBUG");
    let endpoint = registry.url();
    assert!(
        debug.iter().any(|l| l.contains(&endpoint)),
        "no DEBUG line names the endpoint {endpoint}:\n{}",
        out.stderr
    );
    // The manifest request, with its status.
    assert!(
        debug
            .iter()
            .any(|l| l.contains("/v2/team/logs/manifests/1") && l.contains("status=200")),
        "no DEBUG line for the manifest request and its status:\n{}",
        out.stderr
    );
    for layer in &img.layers {
        let line = debug
            .iter()
            .find(|l| l.contains(&layer.blob.digest) && l.contains("downloaded"))
            .unwrap_or_else(|| {
                panic!(
                    "no DEBUG line for layer {}:\n{}",
                    layer.blob.digest, out.stderr
                )
            });
        let bytes = format!("bytes={}", layer.blob.data.len());
        assert!(line.contains(&bytes), "{bytes} missing in: {line}");
        assert!(line.contains("elapsed="), "no duration in: {line}");
    }
    let total: u64 = img.config.size + img.layers.iter().map(|l| l.blob.size).sum::<u64>();
    assert!(
        debug
            .iter()
            .any(|l| l.contains("pull finished") && l.contains(&format!("bytes={total}"))),
        "no DEBUG line with the pull's totals ({total} bytes):\n{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_log_into_a_pipe_has_no_colour_codes() {
    let img = image();
    let registry = registry_with("team/logs", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/logs:1", registry.host());
    // assert_cmd captures stderr through a pipe: not a terminal.
    let out = ok(env.run(&["-D", "pull", &name]));
    assert!(
        !log_lines(&out.stderr, "DEBUG").is_empty(),
        "no DEBUG line at all:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "an escape code in a log written to a pipe:\n{:?}",
        out.stderr
    );
    // A failing pull logs too; still no colour.
    let out = run(env.haul().args(["-D", "pull", &format!("{name}x")]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_debug_a_failing_pull_prints_the_error_and_no_log_lines() {
    let img = image();
    let registry = registry_with("team/logs", "1", &img).await;
    let env = Env::new();
    let missing = format!("{}/team/logs:nope", registry.host());
    // A mirror that refuses connections: haul falls back to the registry itself, which has no
    // such tag.
    let config = env.dir.path().join("config.json");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    std::fs::write(
        &config,
        serde_json::json!({"registry-mirrors": {registry.host(): [dead]}}).to_string(),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = run(env.haul().args(["--config", &config, "pull", &missing]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("nope: Pulling from team/logs\nError: ")
            && out.stderr.contains(&format!(
                "manifest for {missing} not found: manifest unknown"
            )),
        "{}",
        out.stderr
    );
    for level in ["ERROR", "WARN", "INFO", "DEBUG"] {
        let lines = log_lines(&out.stderr, level);
        assert!(lines.is_empty(), "{level} log lines without -D: {lines:?}");
    }
    // With -D the same pull says which mirror was tried and that it fell back.
    let out = run(env
        .haul()
        .args(["-D", "--config", &config, "pull", &missing]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let logged = [
        log_lines(&out.stderr, "DEBUG"),
        log_lines(&out.stderr, "WARN"),
    ]
    .concat();
    let logged = logged.join("\n");
    assert!(
        logged.contains("mirror") && logged.contains(&dead),
        "no log line names the mirror tried ({dead}):\n{}",
        out.stderr
    );
}

/// A registry that answers 503 once for a layer: the only case the real one will not produce.
#[tokio::test(flavor = "multi_thread")]
async fn debug_pull_logs_a_retry_with_its_reason_and_wait() {
    use test_registry::{FakeRegistry, FakeRegistryOptions, Fault};
    let img = image();
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("team/logs", "1", &img);
    let layer = &img.layers[0].blob.digest;
    fake.fault_times(layer, Fault::Status(503, String::new()), 1);
    let env = Env::new();
    let out = ok(env.run(&["-D", "pull", &format!("{}/team/logs:1", fake.host())]));
    let debug = log_lines(&out.stderr, "DEBUG");
    let retry = debug
        .iter()
        .find(|l| l.contains("retrying") && l.contains(layer.as_str()))
        .unwrap_or_else(|| panic!("no DEBUG line for the retry of {layer}:\n{}", out.stderr));
    assert!(retry.contains("attempt=1"), "{retry}");
    assert!(retry.contains("wait="), "{retry}");
    assert!(retry.contains("503"), "no reason in: {retry}");
}
