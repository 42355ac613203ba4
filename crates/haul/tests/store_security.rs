//! Attacks on the store by other local users and by what is planted in it (issue 12, items 2
//! and 3): each test is named after the attack it stops.
//!
//! The store lives in a directory mode 0755 owned by root, as `/var/lib` is, so only the store's
//! own modes stand between its content and uid 65534. Tests that need root (to act as another
//! user, or to own files as root) print `SKIPPED` without it.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{chains, fast_client, image_of};
use haul::config::Config;
use haul::progress::Silent;
use haul::pull::{PullError, PullOptions, Puller};
use haul::registry::Anonymous;
use haul::store::{Store, StoreError};
use haul::unpack::{UnpackOptions, unpack};
use test_registry::{Image, LayerBuilder, Pusher, RealRegistry, RegistryOptions, random_layer};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root to act as uid {NOBODY}");
            return;
        }
    };
}

/// A directory like `/var/lib`: anyone may traverse it, only its owner may write.
fn shared_parent() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `program args…` as uid/gid 65534 (supplementary groups dropped).
fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.uid(NOBODY).gid(NOBODY).current_dir("/");
    cmd
}

fn puller(store: &Store, unpack: bool) -> Puller {
    Puller::new(
        fast_client(Config::default(), Arc::new(Anonymous)),
        store.clone(),
        PullOptions {
            unpack: unpack.then(UnpackOptions::for_current_user),
            ..PullOptions::default()
        },
    )
}

async fn registry_with(image: &Image) -> (RealRegistry, String) {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    Pusher::new(&registry.url())
        .push_image("team/app", "1", image)
        .await
        .unwrap();
    let reference = format!("{}/team/app:1", registry.host());
    (registry, reference)
}

async fn pull(store: &Store, reference: &str, unpack: bool) -> Result<(), PullError> {
    puller(store, unpack)
        .pull(&reference.parse().unwrap(), Arc::new(Silent))
        .await
        .map(drop)
}

/// The `StoreError` a pull failed with.
fn store_error(err: &PullError) -> Option<&StoreError> {
    match err {
        // `#[error(transparent)]`: the source chain skips the wrapped error itself.
        PullError::Store(e) => Some(e),
        PullError::LayerVerification { source, .. } => Some(source),
        _ => None,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[tokio::test]
async fn local_user_cannot_run_a_cached_setuid_binary() {
    require_root!();
    let id = std::fs::read("/usr/bin/id").unwrap();
    let layer = LayerBuilder::new()
        .add_dir("bin", 0o755)
        .add_file("bin/id", &id, 0o4755)
        .finish_gzip();
    let image = image_of(vec![layer]);
    let (_registry, reference) = registry_with(&image).await;
    let parent = shared_parent();
    let store = Store::open(parent.path().join("store")).unwrap();
    pull(&store, &reference, true).await.unwrap();

    let options = UnpackOptions::for_current_user();
    let cached = store
        .layers()
        .cached(&chains(&image)[0], &options.apply)
        .unwrap();
    let suid = cached.diff_dir().join("bin/id");
    // The cache keeps the image's modes: the protection is that nobody else can reach them.
    let meta = std::fs::metadata(&suid).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    assert_eq!(meta.uid(), 0);

    match as_nobody(&suid).arg("-u").output() {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        Ok(out) => panic!(
            "uid {NOBODY} ran the cached setuid binary {}: euid {}",
            suid.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    }
    let seen = as_nobody("test").arg("-e").arg(&suid).status().unwrap();
    assert!(!seen.success(), "uid {NOBODY} can see into the layer cache");
}

#[tokio::test]
async fn local_user_cannot_read_private_blobs() {
    require_root!();
    let image = image_of(vec![random_layer(71, 50_000)]);
    let (_registry, reference) = registry_with(&image).await;
    let parent = shared_parent();
    let store = Store::open(parent.path().join("store")).unwrap();
    pull(&store, &reference, false).await.unwrap();

    let layer = store.blob_path(&image.layers[0].blob.digest.parse().unwrap());
    let index = store.root().join("index.json");
    for private in [&layer, &index] {
        let out = as_nobody("cat").arg(private).output().unwrap();
        assert!(
            !out.status.success(),
            "uid {NOBODY} read {} ({} bytes)",
            private.display(),
            out.stdout.len()
        );
    }
    // Owner-only even where the store's directory is reachable.
    assert_eq!(mode(&layer) & 0o077, 0, "blob mode {:o}", mode(&layer));
    assert_eq!(
        mode(&index) & 0o077,
        0,
        "index.json mode {:o}",
        mode(&index)
    );
}

#[tokio::test]
async fn local_user_cannot_plant_files_in_the_layer_cache() {
    require_root!();
    let layer = LayerBuilder::new()
        .add_dir("tmp", 0o1777)
        .add_file("etc/motd", b"hello\n", 0o644)
        .finish_gzip();
    let image = image_of(vec![layer]);
    let (_registry, reference) = registry_with(&image).await;
    let parent = shared_parent();
    let store = Store::open(parent.path().join("store")).unwrap();
    pull(&store, &reference, true).await.unwrap();

    let options = UnpackOptions::for_current_user();
    let cached = store
        .layers()
        .cached(&chains(&image)[0], &options.apply)
        .unwrap();
    let world_writable = cached.diff_dir().join("tmp");
    assert_eq!(
        mode(&world_writable),
        0o1777,
        "the cache keeps the image's modes"
    );
    let planted = world_writable.join("planted");
    let out = as_nobody("sh")
        .arg("-c")
        .arg("echo '* * * * * root evil' > \"$0\"")
        .arg(&planted)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && !planted.exists(),
        "uid {NOBODY} planted {} in the layer cache",
        planted.display()
    );

    let entry = store.find_ref(&reference).unwrap().unwrap();
    let rootfs = parent.path().join("rootfs");
    unpack(&store, &entry, &rootfs, &options, &Silent).unwrap();
    assert!(!rootfs.join("tmp/planted").exists());
    assert_eq!(std::fs::read(rootfs.join("etc/motd")).unwrap(), b"hello\n");
}

/// A file outside the store, standing for `/etc/cron.d/job`.
fn cron_file(dir: &Path) -> (PathBuf, &'static [u8]) {
    let content: &[u8] = b"# m h dom mon dow user command\n";
    let path = dir.join("cron-job");
    std::fs::write(&path, content).unwrap();
    (path, content)
}

#[tokio::test]
async fn a_symlink_planted_as_an_ingest_partial_is_not_written_through() {
    let image = image_of(vec![random_layer(72, 200_000)]);
    let (_registry, reference) = registry_with(&image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let (cron, original) = cron_file(dir.path());
    let hex = image.layers[0].blob.hex();
    let partial = store.root().join(format!("ingest/sha256-{hex}.partial"));
    std::os::unix::fs::symlink(&cron, &partial).unwrap();

    let result = pull(&store, &reference, false).await;

    let after = std::fs::read(&cron).unwrap();
    assert!(
        after == original,
        "the pull wrote registry bytes through the planted symlink: {} bytes, starting {:02x?}",
        after.len(),
        &after[..after.len().min(4)]
    );
    let err = result.expect_err("a planted partial must stop the pull");
    assert!(
        matches!(store_error(&err), Some(StoreError::Planted { path, .. }) if *path == partial),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&partial)
            .unwrap()
            .file_type()
            .is_symlink(),
        "left for the owner to look at"
    );
}

#[tokio::test]
async fn a_hard_link_planted_as_an_ingest_partial_is_not_written_through() {
    // O_NOFOLLOW says nothing about a second name for the same inode.
    let image = image_of(vec![random_layer(74, 200_000)]);
    let (_registry, reference) = registry_with(&image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let (cron, original) = cron_file(dir.path());
    let hex = image.layers[0].blob.hex();
    let partial = store.root().join(format!("ingest/sha256-{hex}.partial"));
    std::fs::hard_link(&cron, &partial).unwrap();

    let result = pull(&store, &reference, false).await;

    let after = std::fs::read(&cron).unwrap();
    assert!(
        after == original,
        "the pull wrote registry bytes through the planted hard link: {} bytes",
        after.len()
    );
    let err = result.expect_err("a planted partial must stop the pull");
    assert!(
        matches!(store_error(&err), Some(StoreError::Planted { path, .. }) if *path == partial),
        "{err}"
    );
}

#[tokio::test]
async fn a_symlink_planted_as_a_lock_file_is_not_followed() {
    let image = image_of(vec![random_layer(73, 50_000)]);
    let (_registry, reference) = registry_with(&image).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let target = dir.path().join("cron-new-job");
    let hex = image.layers[0].blob.hex();
    let lock = store.root().join(format!("locks/sha256-{hex}.lock"));
    std::os::unix::fs::symlink(&target, &lock).unwrap();

    let result = pull(&store, &reference, false).await;

    assert!(
        !target.exists(),
        "the pull created {} through the planted lock symlink",
        target.display()
    );
    let err = result.expect_err("a planted lock must stop the pull");
    assert!(
        matches!(store_error(&err), Some(StoreError::Planted { path, .. }) if *path == lock),
        "{err}"
    );
}

#[test]
fn a_symlink_planted_as_index_json_is_not_read_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::open(&root).unwrap();
    let forged = dir.path().join("forged-index.json");
    std::fs::write(&forged, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    let index = root.join("index.json");
    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink(&forged, &index).unwrap();

    let err = Store::open(&root).expect_err("a symlinked index.json must be refused");
    assert!(
        matches!(&err, StoreError::Planted { path, .. } if *path == index),
        "{err}"
    );
}

#[test]
fn a_store_owned_by_another_user_is_refused() {
    require_root!();
    let parent = shared_parent();
    let root = parent.path().join("store");
    // Pre-created by uid 65534 with a forged layer-cache entry, say: whose content cannot matter.
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();

    let err = Store::open(&root).expect_err("a store owned by uid 65534 must be refused by root");
    match &err {
        StoreError::ForeignOwner { path, owner, .. } => {
            assert_eq!(path, &root);
            assert_eq!(*owner, NOBODY);
        }
        other => panic!("wrong error: {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&root.display().to_string()) && text.contains("65534"),
        "{text}"
    );
    assert!(
        !root.join("oci-layout").exists(),
        "nothing is written into a refused store"
    );
}

#[test]
fn a_group_writable_store_is_refused() {
    for loose in [0o770, 0o775, 0o707, 0o777] {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        Store::open(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(loose)).unwrap();

        let err = match Store::open(&root) {
            Err(e) => e,
            Ok(_) => panic!("a store of mode {loose:o} must be refused"),
        };
        match &err {
            StoreError::WritableByOthers { path, mode, .. } => {
                assert_eq!(path, &root);
                assert_eq!(*mode, loose);
            }
            other => panic!("wrong error: {other}"),
        }
        assert_eq!(mode(&root), loose, "a refused store is left as it was");
    }
}

#[test]
fn a_group_writable_directory_inside_the_store_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("store");
    Store::open(&root).unwrap();
    let blobs = root.join("blobs/sha256");
    std::fs::set_permissions(&blobs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Store::open(&root).expect_err("a world-writable blobs/sha256 must be refused");
    assert!(
        matches!(&err, StoreError::WritableByOthers { path, .. } if *path == blobs),
        "{err}"
    );
}

#[test]
fn a_store_another_user_can_replace_is_refused() {
    require_root!();
    // A parent others may write without the sticky bit: anyone can rename the store away and
    // put their own in its place.
    let open_parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = open_parent.path().join("store");
    let err = Store::open(&root).expect_err("a store in a 0777 directory must be refused");
    assert!(
        matches!(&err, StoreError::ReplaceableParent { dir, .. } if dir == open_parent.path()),
        "{err}"
    );

    // A parent owned by another user.
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let err = Store::open(theirs.path().join("store"))
        .expect_err("a store in another user's directory must be refused");
    assert!(
        matches!(&err, StoreError::ReplaceableParent { dir, owner, .. } if dir == theirs.path() && *owner == NOBODY),
        "{err}"
    );

    // A sticky world-writable parent (like /tmp) is fine: others cannot rename what we own.
    let sticky = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sticky.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    Store::open(sticky.path().join("store")).unwrap();
}

#[test]
fn a_loose_store_from_an_older_haul_is_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("store");
    let store = Store::open(&root).unwrap();
    let digest = haul::digest::Digest::sha256_of(b"a blob from an older haul");
    store
        .put_blob(&digest, b"a blob from an older haul")
        .unwrap();
    // What haul made before this fix, under umask 022.
    let loose = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    for d in ["", "blobs", "blobs/sha256", "ingest", "locks"] {
        loose(&root.join(d), 0o755);
    }
    loose(&store.blob_path(&digest), 0o644);
    loose(&root.join("index.json"), 0o644);
    loose(&root.join("oci-layout"), 0o644);

    let (reopened, tightened) = Store::open_reporting(&root).unwrap();

    for d in ["", "blobs", "blobs/sha256", "ingest", "locks"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}/");
    }
    for f in [
        store.blob_path(&digest),
        root.join("index.json"),
        root.join("oci-layout"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert!(
        tightened.iter().any(|t| t.path == root && t.from == 0o755),
        "the owner is told: {tightened:?}"
    );
    assert_eq!(
        reopened.read_blob(&digest, 100).unwrap(),
        b"a blob from an older haul"
    );
    // Once tight, nothing more to say.
    let (_, again) = Store::open_reporting(&root).unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_new_store_is_private_whatever_the_umask() {
    // umask is per process: the CLI test `a_pull_under_umask_000_leaves_a_private_store` runs
    // haul under umask 000; here the modes are checked under the test's own umask.
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("a/b/store");
    Store::open(&root).unwrap();
    for d in ["", "blobs", "blobs/sha256", "ingest", "locks"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}/");
    }
    for f in ["index.json", "oci-layout"] {
        assert_eq!(mode(&root.join(f)) & 0o077, 0, "{f}");
    }
}
