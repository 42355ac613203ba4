//! What a killed `haul unpack` leaves, and who removes it (issue 15, item 14): the staging
//! directory stays where it was being built (beside a new target, inside an existing one), and
//! the next unpack, or `haul image prune`, removes it.
//!
//! The kill is deterministic: the test holds the layer-cache lock of the image's second layer, so
//! the unpack merges the first layer, says so (`Unpack complete`), and then waits on that lock
//! with its staging directory half built; it is killed there.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{Env, ok, registry_with};
use haul::digest::Digest;
use test_registry::{Format, Image, ImageBuilder, LayerBuilder};

fn image() -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(
            LayerBuilder::new()
                .add_file("etc/base.txt", b"base layer", 0o644)
                .finish_gzip(),
        )
        .layer(
            LayerBuilder::new()
                .add_file("app/hello.txt", b"top layer", 0o644)
                .finish_gzip(),
        )
        .build()
}

/// Every `.haul-unpack-` entry in `dirs`.
fn leftovers(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .contains(".haul-unpack-")
            {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Runs `haul unpack IMAGE TARGET`, lets it merge the first layer, and SIGKILLs it while it waits
/// for the second.
fn kill_an_unpack_midway(env: &Env, img: &Image, name: &str, target: &Path) {
    let diff_ids: Vec<Digest> = img
        .layers
        .iter()
        .map(|l| l.diff_id.parse().unwrap())
        .collect();
    let chain = haul::unpack::cache::chain_ids(&diff_ids);
    let lock_path =
        Path::new(&env.root()).join(format!("locks/layer-sha256-{}.lock", chain[1].hex()));
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();

    let mut child = env
        .haul_process()
        .args(["--progress", "plain", "unpack", name])
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let short = img.layers[0].blob.hex()[..12].to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains(&short) && line.contains("Unpack complete");
            seen.push(line);
            if done {
                let _ = tx.send(Ok(()));
                return;
            }
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    // The wait is for an event, with a bound only so that a broken unpack fails the test
    // rather than hanging it.
    let merged = rx.recv_timeout(Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lock);
    match merged {
        Ok(Ok(())) => {}
        Ok(Err(stderr)) => panic!("the unpack ended before merging its first layer:\n{stderr}"),
        Err(_) => panic!("the unpack did not merge its first layer within two minutes"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_unpack_removes_what_a_killed_unpack_left_beside_its_target() {
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let parent = env.dir.path().join("out");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("rootfs");

    kill_an_unpack_midway(&env, &img, &name, &target);

    let left = leftovers(&[&parent, &target]);
    assert!(
        !left.is_empty(),
        "the killed unpack left nothing to clean up"
    );
    assert!(!target.exists(), "a half-built tree was published");

    let other = env.dir.path().join("other");
    ok(env.run(&["unpack", &name, &other.display().to_string()]));
    assert_eq!(leftovers(&[&parent, &target]), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read(other.join("app/hello.txt")).unwrap(),
        b"top layer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_reports_and_removes_what_a_killed_unpack_left_in_its_target() {
    let img = image();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let parent = env.dir.path().join("out");
    let target = parent.join("rootfs");
    std::fs::create_dir_all(&target).unwrap();

    kill_an_unpack_midway(&env, &img, &name, &target);

    let left = leftovers(&[&parent, &target]);
    assert!(
        !left.is_empty(),
        "the killed unpack left nothing to clean up"
    );

    let dry = ok(env.run(&["image", "prune", "--dry-run"]));
    for path in &left {
        assert!(
            dry.stdout
                .lines()
                .any(|l| l.starts_with("Would delete: ") && l.contains(&path.display().to_string())),
            "{}:\n{}",
            path.display(),
            dry.stdout
        );
    }
    assert_eq!(
        leftovers(&[&parent, &target]),
        left,
        "a dry run removed something"
    );

    let pruned = ok(env.run(&["image", "prune", "-f"]));
    for path in &left {
        assert!(
            pruned
                .stdout
                .lines()
                .any(|l| l.starts_with("Deleted: ") && l.contains(&path.display().to_string())),
            "{}:\n{}",
            path.display(),
            pruned.stdout
        );
    }
    assert_eq!(leftovers(&[&parent, &target]), Vec::<PathBuf>::new());
    assert!(
        std::fs::read_dir(&target).unwrap().next().is_none(),
        "the target is empty again"
    );
    ok(env.run(&["unpack", &name, &target.display().to_string()]));
    assert_eq!(
        std::fs::read(target.join("etc/base.txt")).unwrap(),
        b"base layer"
    );
}
