//! Unpacking from the layer cache shares extents with it where the file system can (XFS with
//! reflink, btrfs): the rootfs's regular files are clones of the cache's, and the tree is the one
//! a copy makes. Each file system is a loop-mounted image made for the test (root only; skipped
//! otherwise, or when its mkfs is missing). Whether an extent is shared is read with `filefrag`
//! (FIEMAP's shared flag), outside haul.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::fast_client;
use haul::config::Config;
use haul::progress::Silent;
use haul::pull::{PullOptions, Puller};
use haul::registry::Anonymous;
use haul::store::Store;
use haul::unpack::{UnpackOptions, unpack};
use test_registry::{
    Format, Image, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions, pseudo_text,
};

/// A file system image mounted on a temp dir, unmounted and removed when dropped.
struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    /// `None` (with a `SKIPPED` line) when not root, or `mkfs` is missing or fails, or the
    /// kernel refuses the mount.
    fn new(fs: &str, mkfs: &str, mkfs_args: &[&str]) -> Option<LoopMount> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a {fs} image needs root");
            return None;
        }
        if Command::new(mkfs).arg("-V").output().is_err() {
            eprintln!("SKIPPED: {mkfs} is not installed (scripts/test installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let made = Command::new(mkfs)
            .args(mkfs_args)
            .arg(&image)
            .output()
            .unwrap();
        assert!(made.status.success(), "{mkfs}: {made:?}");
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .output()
            .unwrap();
        if !mount.status.success() {
            eprintln!(
                "SKIPPED: the kernel refused a loop mount of {fs}: {}",
                String::from_utf8_lossy(&mount.stderr)
            );
            return None;
        }
        Some(LoopMount { dir, mounted: true })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.path()).status();
        }
    }
}

/// Whether every extent of `file` is shared with another file, per FIEMAP (`filefrag -v`).
fn extents_shared(file: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .expect("filefrag (e2fsprogs)");
    assert!(out.status.success(), "filefrag {}: {out:?}", file.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
        })
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

/// Big files worth cloning, small ones that are copied, a hardlink pair, a symlink, special
/// modes, an empty file, and a second layer that replaces one file and removes another.
fn image() -> Image {
    let base = LayerBuilder::new()
        .add_dir("opt", 0o755)
        .add_dir("opt/app", 0o750)
        .add_file("opt/app/big.bin", &pseudo_text(1, 3 << 20), 0o644)
        .add_file("opt/app/tool", &pseudo_text(2, 200 << 10), 0o755)
        .add_file("opt/app/suid", &pseudo_text(7, 32 << 10), 0o4755)
        .add_hardlink("opt/app/tool-link", "opt/app/tool")
        .add_file("opt/app/small.txt", b"a few bytes\n", 0o600)
        .add_file("opt/app/empty", b"", 0o644)
        .add_file("opt/app/replaced", &pseudo_text(3, 64 << 10), 0o644)
        .add_file("opt/app/removed", &pseudo_text(4, 64 << 10), 0o644)
        .add_symlink("opt/current", "app/big.bin")
        .finish_gzip();
    let top = LayerBuilder::new()
        .add_dir("opt/app", 0o750)
        .add_file("opt/app/replaced", &pseudo_text(5, 100 << 10), 0o640)
        .add_whiteout("opt/app/removed")
        .add_file("opt/app/added", &pseudo_text(6, 40 << 10), 0o755)
        .finish_gzip();
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers([base, top])
        .build()
}

/// What a tree holds, by path: type, mode, owner, size, mtime, content or link target, and
/// which paths share an inode (as the index of the first path seen with it).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let what = if m.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("symlink {:?}", std::fs::read_link(&path).unwrap())
            } else {
                let data = std::fs::read(&path).unwrap();
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                format!(
                    "file {} bytes, sha {}, inode of {first:?}",
                    data.len(),
                    haul::digest::Digest::sha256_of(&data)
                )
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} mtime {}.{}",
                    m.permissions().mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    out
}

/// Pulls the image into a store on the mounted file system, unpacks it there and onto the host's
/// temp dir (another file system: copied), and checks the clones and the trees.
async fn unpack_shares_extents_with_the_cache(fs: &str, mount: &LoopMount) {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let img = image();
    Pusher::new(&registry.url())
        .push_image("team/app", "1", &img)
        .await
        .unwrap();
    let store = Store::open(mount.path().join("store")).unwrap();
    let options = UnpackOptions::for_current_user();
    let puller = Puller::new(
        fast_client(Config::default(), Arc::new(Anonymous)),
        store.clone(),
        PullOptions {
            platform: None,
            max_concurrent_downloads: 3,
            unpack: Some(options.clone()),
            content_trust: None,
            trust: Default::default(),
        },
    );
    let reference = format!("{}/team/app:1", registry.host());
    puller
        .pull(&reference.parse().unwrap(), Arc::new(Silent))
        .await
        .unwrap();
    let entry = store.find_ref(&reference).unwrap().unwrap();

    let cloned = mount.path().join("rootfs");
    unpack(&store, &entry, &cloned, &options, &Silent).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let copied = elsewhere.path().join("rootfs");
    unpack(&store, &entry, &copied, &options, &Silent).unwrap();

    for big in [
        "opt/app/big.bin",
        "opt/app/tool",
        "opt/app/suid",
        "opt/app/replaced",
        "opt/app/added",
    ] {
        assert!(
            extents_shared(&cloned.join(big)),
            "{fs}: {big} shares its extents with the cache"
        );
        assert!(
            !extents_shared(&copied.join(big)),
            "{big} on another file system is a copy"
        );
    }
    assert_eq!(
        snapshot(&cloned),
        snapshot(&copied),
        "{fs}: the cloned tree is the copied one"
    );
    assert!(!cloned.join("opt/app/removed").exists());
    assert_eq!(
        std::fs::metadata(cloned.join("opt/app/suid"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4755,
        "setuid survives on a clone"
    );

    // A clone is a file of its own: writing to it leaves the cache and other rootfs alone.
    std::fs::write(cloned.join("opt/app/big.bin"), b"changed").unwrap();
    let again = mount.path().join("again");
    unpack(&store, &entry, &again, &options, &Silent).unwrap();
    assert_eq!(snapshot(&again), snapshot(&copied));
}

#[tokio::test]
async fn unpack_on_xfs_with_reflink_clones_files_from_the_layer_cache() {
    let Some(mount) = LoopMount::new("XFS", "mkfs.xfs", &["-q", "-m", "reflink=1"]) else {
        return;
    };
    unpack_shares_extents_with_the_cache("XFS", &mount).await;
}

#[tokio::test]
async fn unpack_on_btrfs_clones_files_from_the_layer_cache() {
    let Some(mount) = LoopMount::new("btrfs", "mkfs.btrfs", &["-q"]) else {
        return;
    };
    unpack_shares_extents_with_the_cache("btrfs", &mount).await;
}

/// A merge's stream names big files by a PAX record and leaves their data in the cache; a layer
/// from a registry carrying that record must not make the applier read anything from anywhere:
/// the entry is the empty file its header says.
#[test]
fn a_layer_claiming_its_data_is_in_the_layer_cache_gets_an_empty_file() {
    let mut tar = tar::Builder::new(Vec::new());
    let mut pax = Vec::new();
    for (key, value) in [("HAUL.cache.size", "1048576"), ("path", "etc/shadow")] {
        let record = format!(" {key}={value}\n");
        let len = record.len() + 2; // two digits of length
        pax.extend_from_slice(format!("{len}{record}").as_bytes());
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_path("././@PaxHeader").unwrap();
    header.set_size(pax.len() as u64);
    header.set_cksum();
    tar.append(&header, pax.as_slice()).unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_path("placeholder").unwrap();
    file.set_mode(0o644);
    file.set_size(0);
    file.set_cksum();
    tar.append(&file, std::io::empty()).unwrap();
    let bytes = tar.into_inner().unwrap();

    let root = tempfile::tempdir().unwrap();
    haul::unpack::apply_layer(
        root.path(),
        bytes.as_slice(),
        &haul::unpack::ApplyOptions::for_current_user(),
    )
    .unwrap();
    assert_eq!(std::fs::read(root.path().join("etc/shadow")).unwrap(), b"");
}
