//! The library's front door, used as a program embedding haul would: `Haul::builder()`, pull,
//! content trust, unpack, and errors matched by kind. The examples in `crates/haul/examples` run
//! here too, against the real registry.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{file_layer, image_of};
use haul::config::Config;
use haul::progress::{Recorder, Silent};
use haul::registry::{Anonymous, ClientOptions};
use haul::{ErrorKind, Haul};
use test_registry::{Pusher, RealRegistry, RegistryOptions};

fn fast() -> ClientOptions {
    ClientOptions {
        retry_base_delay: std::time::Duration::from_millis(10),
        ..ClientOptions::default()
    }
}

async fn registry_with_app() -> (RealRegistry, test_registry::Image) {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let image = image_of(vec![file_layer("hello.txt", b"from the front door\n")]);
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &image)
        .await
        .unwrap();
    (registry, image)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_front_door_pulls_and_unpacks_in_a_few_lines() {
    let (registry, image) = registry_with_app().await;
    let dir = tempfile::tempdir().unwrap();
    let haul = Haul::builder()
        .root(dir.path().join("store"))
        .config(Config::default())
        .credentials(Arc::new(Anonymous))
        .client_options(fast())
        .build()
        .unwrap();
    let name = format!("{}/team/app:1", registry.host());

    let rootfs = dir.path().join("rootfs");
    let done = haul
        .unpack(&name, &rootfs, Arc::new(Recorder::default()))
        .await
        .unwrap();
    assert_eq!(done.image.name, name);
    assert_eq!(done.image.resolved.to_string(), image.digest());
    assert_eq!(done.stats.layers, 1);
    assert_eq!(
        std::fs::read(rootfs.join("data/hello.txt")).unwrap(),
        b"from the front door\n"
    );

    // The stored image is used again: no blob is fetched twice.
    let gets = registry.count("GET", "/blobs/");
    let again = haul
        .bundle(
            &name,
            &dir.path().join("bundle"),
            &haul::unpack::UnpackOptions::for_current_user(),
            Arc::new(Silent),
        )
        .await
        .unwrap();
    assert_eq!(again.image.manifest.digest, done.image.manifest.digest);
    assert!(dir.path().join("bundle/config.json").is_file());
    assert_eq!(registry.count("GET", "/blobs/"), gets);
    assert!(haul.pull(&name, Arc::new(Silent)).await.unwrap().up_to_date);
}

#[tokio::test(flavor = "multi_thread")]
async fn front_door_errors_say_their_kind() {
    let (registry, _) = registry_with_app().await;
    let dir = tempfile::tempdir().unwrap();
    let haul = Haul::builder()
        .root(dir.path().join("store"))
        .config(Config::default())
        .credentials(Arc::new(Anonymous))
        .client_options(fast())
        .build()
        .unwrap();

    let missing = haul
        .pull(
            &format!("{}/team/app:nope", registry.host()),
            Arc::new(Silent),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    assert!(
        std::error::Error::source(&missing)
            .is_some_and(|s| s.downcast_ref::<haul::pull::PullError>().is_some()),
        "the module's error is the source"
    );

    let bad = haul
        .pull("Not A Reference", Arc::new(Silent))
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");

    let refused = Haul::builder()
        .root(dir.path().join("store"))
        .config(
            Config::from_json(
                std::path::Path::new("config.json"),
                format!(
                    r#"{{"trust": {{"enabled": true, "dir": "{}"}}}}"#,
                    dir.path().join("empty-keyring").display()
                )
                .as_bytes(),
            )
            .unwrap(),
        )
        .credentials(Arc::new(Anonymous))
        .client_options(fast())
        .build()
        .unwrap();
    assert!(refused.verifies_trust());
    let err = refused
        .unpack(
            &format!("{}/team/app:1", registry.host()),
            &dir.path().join("refused"),
            Arc::new(Silent),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeniedByPolicy, "{err}");
    assert!(!dir.path().join("refused").exists());

    let unreachable = haul
        .pull("127.0.0.1:1/team/app:1", Arc::new(Silent))
        .await
        .unwrap_err();
    assert_eq!(unreachable.kind(), ErrorKind::Network, "{unreachable}");
}

/// The built example programs, beside this test's binary (`cargo test` builds them).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

/// Runs an example as a program would run, with a home of its own (no config file, no docker
/// credentials).
fn run_example(name: &str, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let program = example(name);
    assert!(
        program.is_file(),
        "{} is missing: `cargo test -p haul` builds the examples (a lone `--test front_door` \
         does not; run `cargo build -p haul --examples` first)",
        program.display()
    );
    std::process::Command::new(program)
        .env_clear()
        .env("HOME", home)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_examples_run() {
    let (registry, _) = registry_with_app().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let name = format!("{}/team/app:1", registry.host());

    let out = run_example("progress", dir.path(), &[&name, &store]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Pull complete"), "{stdout}");
    assert!(stdout.contains("1 layers pulled"), "{stdout}");

    let rootfs = dir.path().join("rootfs").display().to_string();
    let out = run_example("pull_and_unpack", dir.path(), &[&name, &rootfs, &store]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 layers"), "{stdout}");
    assert!(dir.path().join("rootfs/data/hello.txt").is_file());

    let out = run_example(
        "pull_and_unpack",
        dir.path(),
        &[
            &format!("{}/team/app:nope", registry.host()),
            &rootfs,
            &store,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}
