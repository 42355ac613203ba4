//! The `haul` binary against the real registry: docker's output lines, exit codes, errors and
//! hints, configuration.

use std::path::Path;

mod common;

use common::{Env, registry_with, run};
use test_registry::{Format, Image, ImageBuilder, random_layer};

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .created("2024-03-01T10:00:00Z")
        .layer(random_layer(seed, 100_000))
        .layer(random_layer(seed + 1, 80_000))
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_prints_what_docker_prints() {
    let img = image(1);
    let registry = registry_with("team/app", "latest", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app", registry.host());

    let out = run(env.haul_bare().args(["pull", &name, "--root", &env.root()]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{name}:latest\n"));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines[0], "Using default tag: latest");
    assert_eq!(lines[1], "latest: Pulling from team/app");
    for layer in &img.layers {
        let id = &layer.blob.digest["sha256:".len()..][..12];
        for status in [
            "Pulling fs layer",
            "Verifying Checksum",
            "Download complete",
            "Pull complete",
        ] {
            assert!(
                lines.contains(&format!("{id}: {status}").as_str()),
                "missing `{id}: {status}` in:\n{}",
                out.stderr
            );
        }
    }
    assert_eq!(lines[lines.len() - 2], format!("Digest: {}", img.digest()));
    assert_eq!(
        lines[lines.len() - 1],
        format!("Status: Downloaded newer image for {name}:latest")
    );

    let again =
        run(env
            .haul_bare()
            .args(["--root", &env.root(), "pull", &format!("{name}:latest")]));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stderr,
        format!(
            "latest: Pulling from team/app\nDigest: {}\nStatus: Image is up to date for {name}:latest\n",
            img.digest()
        )
    );

    let quiet = run(env
        .haul_bare()
        .args(["--root", &env.root(), "pull", "-q", &name]));
    assert_eq!(quiet.code, 0);
    assert_eq!(quiet.stdout, format!("{name}:latest\n"));
    assert_eq!(quiet.stderr, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_progress_is_one_object_per_line() {
    let img = image(10);
    let registry = registry_with("team/json", "1", &img).await;
    let env = Env::new();
    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "pull",
        "--progress",
        "json",
        &format!("{}/team/json:1", registry.host()),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events[0]["event"], "pulling_from");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "layer" && e["status"] == "downloading")
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "finished");
    assert_eq!(last["up_to_date"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_lists_docker_columns_and_json() {
    let img = image(20);
    let registry = registry_with("team/list", "2.0", &img).await;
    let env = Env::new();
    let name = format!("{}/team/list:2.0", registry.host());
    assert_eq!(
        run(env
            .haul_bare()
            .args(["--root", &env.root(), "pull", "-q", &name]))
        .code,
        0
    );

    let out = run(env
        .haul_bare()
        .args(["--root", &env.root(), "images", "--digests"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    let config_id = &img.config.digest["sha256:".len()..][..12];
    assert_eq!(row[0], format!("{}/team/list", registry.host()));
    assert_eq!(row[1], "2.0");
    assert_eq!(row[2], img.digest());
    assert_eq!(row[3], config_id);
    assert!(lines[1].contains(" ago "), "{}", lines[1]);
    // Columns line up under their headers.
    assert_eq!(lines[0].find("IMAGE ID"), lines[1].find(config_id));

    let json = run(env
        .haul_bare()
        .args(["--root", &env.root(), "images", "--format", "json"]));
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let size: u64 = img.config.size + img.layers.iter().map(|l| l.blob.size).sum::<u64>();
    // `size` is the unpacked size (tests/sizes_cli.rs); the content in the store is this.
    assert_eq!(rows[0]["compressed_size"], size);
    assert_eq!(rows[0]["image_id"], img.config.digest);
    assert_eq!(rows[0]["created"], "2024-03-01T10:00:00Z");

    let quiet = run(env
        .haul_bare()
        .args(["--root", &env.root(), "images", "-q"]));
    assert_eq!(quiet.stdout, format!("{config_id}\n"));
    let filtered = run(env
        .haul_bare()
        .args(["--root", &env.root(), "images", "other/repo"]));
    assert_eq!(filtered.stdout.lines().count(), 1, "only the header");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_happened_and_what_to_do() {
    let img = image(30);
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();

    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "pull",
        &format!("{}/team/app:nope", registry.host()),
    ]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "manifest for {}/team/app:nope not found: manifest unknown",
            registry.host()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("\nhint: "), "{}", out.stderr);
    assert_eq!(out.stdout, "");

    let out = run(env
        .haul_bare()
        .args(["--root", &env.root(), "pull", "Team/App"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("invalid reference format: repository name must be lowercase"),
        "{}",
        out.stderr
    );

    let out = run(env
        .haul_bare()
        .args(["--root", &env.root(), "pull", "-a", "alpine:3"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("tag can't be used with --all-tags/-a"),
        "{}",
        out.stderr
    );

    let out = run(env.haul_bare().args(["pull"]));
    assert_eq!(out.code, 2, "usage errors exit 2");

    // Nothing answers on this port: the error names the host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = env.dir.path().join("one-try.json");
    std::fs::write(&config, r#"{"max-download-attempts": 1}"#).unwrap();
    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "--config",
        config.to_str().unwrap(),
        "pull",
        &format!("127.0.0.1:{port}/x/y:1"),
    ]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: "), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_trust_without_trusted_keys_refuses_and_the_flag_overrides_the_environment() {
    let img = image(40);
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let keyring = env.dir.path().join("empty-keyring");
    let name = format!("{}/team/app:1", registry.host());
    let haul = |trust_env: bool| {
        let mut cmd = env.haul_bare();
        cmd.env("HAUL_TRUST_DIR", &keyring);
        if trust_env {
            cmd.env("DOCKER_CONTENT_TRUST", "1");
        }
        cmd.args(["--root", &env.root(), "pull"]);
        cmd
    };
    let out = run(haul(true).arg(&name));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no trusted keys"), "{}", out.stderr);
    let blobs = std::fs::read_dir(Path::new(&env.root()).join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0, "nothing pulled");

    let out = run(haul(false).args(["--disable-content-trust=false", &name]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no trusted keys"), "{}", out.stderr);

    let out = run(haul(true).args(["--disable-content-trust", &name]));
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn config_files_are_checked() {
    let env = Env::new();
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"max-concurrent-downloads": 0}"#).unwrap();
    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "--config",
        bad.to_str().unwrap(),
        "pull",
        "127.0.0.1:1/x/y",
    ]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("max-concurrent-downloads"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(bad.to_str().unwrap()), "{}", out.stderr);

    // $HAUL_CONFIG is found without --config; unknown keys only warn.
    let odd = env.dir.path().join("odd.json");
    std::fs::write(&odd, r#"{"no-such-key": 1}"#).unwrap();
    let out = run(env
        .haul_bare()
        .env("HAUL_CONFIG", &odd)
        .args(["--root", &env.root(), "images"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("no-such-key"),
        "{}",
        out.stderr
    );
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn unpack_and_bundle_pull_what_is_missing() {
    let layer = test_registry::LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        )
        .add_file(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
            0o644,
        )
        .add_file("srv/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .finish_gzip();
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(layer)
        .cmd(&["/srv/run.sh", "--serve"])
        .env(&["MODE=prod"])
        .config_field("config", serde_json::json!({
            "User": "app", "Env": ["MODE=prod"], "Cmd": ["/srv/run.sh", "--serve"], "WorkingDir": "/srv"
        }))
        .build();
    let registry = registry_with("team/run", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/run:1", registry.host());

    let rootfs = env.dir.path().join("rootfs");
    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "unpack",
        &name,
        rootfs.to_str().unwrap(),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("1: Pulling from team/run"),
        "pulled first:\n{}",
        out.stderr
    );
    assert_eq!(out.stdout.trim(), rootfs.display().to_string());
    assert_eq!(
        std::fs::read(rootfs.join("srv/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );

    // A second unpack into the same directory needs --force; the image is not pulled again.
    let again = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "unpack",
        &name,
        rootfs.to_str().unwrap(),
    ]));
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let forced = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "unpack",
        "-f",
        &name,
        rootfs.to_str().unwrap(),
    ]));
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(!forced.stderr.contains("Pulling from"), "{}", forced.stderr);

    let bundle = env.dir.path().join("bundle");
    let out = run(env.haul_bare().args([
        "--root",
        &env.root(),
        "bundle",
        &name,
        bundle.to_str().unwrap(),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/srv/run.sh", "--serve"])
    );
    assert_eq!(spec["process"]["cwd"], "/srv");
    assert_eq!(
        spec["process"]["user"],
        serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [10]})
    );
    assert!(
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&"MODE=prod".into())
    );
    assert!(bundle.join("rootfs/srv/run.sh").exists());

    // The same shape as `runc spec`: every section and default runc writes is there.
    let runc_dir = env.dir.path().join("runc");
    std::fs::create_dir(&runc_dir).unwrap();
    let status = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&runc_dir)
        .status()
        .expect("runc is installed by scripts/test");
    assert!(status.success());
    let runc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runc_dir.join("config.json")).unwrap()).unwrap();
    for k in keys(&runc) {
        assert!(spec.get(&k).is_some(), "config.json lacks {k}");
    }
    for section in ["process", "root", "linux"] {
        for k in keys(&runc[section]) {
            assert!(spec[section].get(&k).is_some(), "{section} lacks {k}");
        }
    }
    let dests = |v: &serde_json::Value| -> Vec<String> {
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(dests(&spec), dests(&runc));
}

/// Issue 13: `pull --platform linux/arm64` of an image built only for amd64 (a single manifest, no
/// index) succeeded silently, and `unpack` then made an amd64 rootfs. The config's platform is
/// checked: refused when a platform was asked for, docker's warning when the host's was assumed.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_mismatch_is_refused_when_asked_for_and_warned_about_otherwise() {
    let host = if cfg!(target_arch = "aarch64") {
        "amd64"
    } else {
        "arm64"
    };
    let foreign = ImageBuilder::new(Format::Oci)
        .platform("linux", host, None)
        .layer(random_layer(70, 1_000))
        .build();
    let registry = registry_with("team/foreign", "1", &foreign).await;
    let env = Env::new();
    let name = format!("{}/team/foreign:1", registry.host());
    let other = if host == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };

    for command in [vec!["pull"], vec!["unpack"]] {
        let mut args = command.clone();
        args.extend(["--platform", other, &name]);
        let dir = env.dir.path().join("rootfs");
        let dir = dir.display().to_string();
        if command[0] == "unpack" {
            args.push(&dir);
        }
        let out = env.run(&args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "does not match the specified platform: wanted {other}, actual: linux/{host}"
            )),
            "{}",
            out.stderr
        );
        assert!(!Path::new(&dir).exists());
    }
    let images = env.run(&["images", "-q"]);
    assert_eq!(images.stdout.trim(), "", "nothing named");

    let out = env.run(&["pull", "-q", &name]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "WARNING: The requested image's platform (linux/{host}"
        )),
        "{}",
        out.stderr
    );
}
