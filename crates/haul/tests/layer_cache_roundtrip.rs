//! The layer cache's round trip: a stack of layers applied directly onto an empty root (path A)
//! must give exactly the tree obtained by extracting each layer into its own cache directory
//! with `apply_layer_for_cache` and replaying `tar_dir` of those directories in order (path B).
//!
//! Snapshots compare type, mode, owner, size, content hash, link target, link count, device
//! number, user xattrs and mtime with nanoseconds; an mtime from the test run itself (a directory
//! the layers changed without listing) compares as "recent" on both sides. Each stack also
//! checks a few facts directly, so a mistake shared by both paths cannot pass.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haul::unpack::{
    ApplyError, ApplyOptions, ApplyStats, DeferredLink, HardlinkProblem, apply_layer,
    apply_layer_for_cache, tar_cached, tar_dir,
};
use test_registry::{EntryType, FIXED_MTIME, LayerBuilder, RawEntry, pseudo_text, sha256_digest};

// ---------------------------------------------------------------------------------------------
// Harness

fn opts() -> ApplyOptions {
    // Ownership and devices as root, where the stacks below set and check them.
    ApplyOptions::for_current_user()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn with_pax(mut entry: RawEntry, key: &str, value: &[u8]) -> RawEntry {
    entry.pax.push((key.into(), value.to_vec()));
    entry
}

fn at(entry: RawEntry, mtime: &str) -> RawEntry {
    with_pax(entry, "mtime", mtime.as_bytes())
}

fn mode(mode: u32, entry: RawEntry) -> RawEntry {
    RawEntry { mode, ..entry }
}

fn raw(path: &str, kind: EntryType) -> RawEntry {
    RawEntry {
        kind,
        ..RawEntry::file(path, b"")
    }
}

/// A one-entry layer holding the character device 1:3 (RawEntry has no device numbers).
fn device_layer(path: &str) -> Vec<u8> {
    let mut tar = LayerBuilder::new()
        .raw_entry(mode(0o666, raw(path, EntryType::Char)))
        .finish_tar();
    let mut header = tar::Header::from_byte_slice(&tar[..512]).clone();
    header.set_device_major(1).unwrap();
    header.set_device_minor(3).unwrap();
    header.set_cksum();
    tar[..512].copy_from_slice(header.as_bytes());
    tar
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Time {
    At(i64, i64),
    /// Set while the test ran: "now" when a layer changed the directory without listing it.
    Recent,
}

/// One path of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    /// Files: size and content hash; symlinks: the target; devices: the device number.
    detail: String,
    mtime: Time,
    xattrs: Vec<(String, Vec<u8>)>,
}

type Snapshot = BTreeMap<String, Node>;

fn snapshot(root: &Path, since: SystemTime) -> Snapshot {
    let since = since
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .cast_signed();
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), since, &mut out);
    out
}

fn walk(root: &Path, rel: &Path, since: i64, out: &mut Snapshot) {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).unwrap();
    let ft = meta.file_type();
    let mode = meta.permissions().mode() & 0o7777;
    // Unprivileged, the owner of a 0000 file or directory reads it only after a chmod.
    let grant = |bits: u32| {
        let grant = !is_root() && mode & bits != bits;
        if grant {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode | bits)).unwrap();
        }
        grant
    };
    let (kind, detail) = if ft.is_dir() {
        let granted = grant(0o500);
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), since, out);
        }
        if granted {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        ('d', String::new())
    } else if ft.is_file() {
        let granted = grant(0o400);
        let data = fs::read(&path).unwrap();
        if granted {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        ('f', format!("{} {}", data.len(), sha256_digest(&data)))
    } else if ft.is_symlink() {
        ('l', fs::read_link(&path).unwrap().display().to_string())
    } else if ft.is_fifo() {
        ('p', String::new())
    } else if ft.is_char_device() {
        ('c', format!("{:x}", meta.rdev()))
    } else if ft.is_block_device() {
        ('b', format!("{:x}", meta.rdev()))
    } else {
        ('s', String::new())
    };
    let mtime = if meta.mtime() >= since {
        Time::Recent
    } else {
        Time::At(meta.mtime(), meta.mtime_nsec())
    };
    let node = Node {
        kind,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        nlink: meta.nlink(),
        detail,
        mtime,
        xattrs: user_xattrs(&path),
    };
    out.insert(rel.display().to_string(), node);
}

fn user_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
        value.truncate(len);
        out.push((name, value));
    }
    out.sort();
    out
}

/// Path A: every layer's tar straight onto one root.
fn direct(dir: &Path, layers: &[Vec<u8>]) -> PathBuf {
    let root = dir.join("direct");
    fs::create_dir(&root).unwrap();
    for (i, layer) in layers.iter().enumerate() {
        if let Err(e) = apply_layer(&root, Cursor::new(layer), &opts()) {
            panic!("direct apply of layer {i}: {e} ({e:?})");
        }
    }
    root
}

/// Extracts every layer into its own cache directory.
fn cache(dir: &Path, layers: &[Vec<u8>]) -> Vec<(PathBuf, ApplyStats)> {
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let cache = dir.join(format!("cache-{i}"));
            fs::create_dir(&cache).unwrap();
            match apply_layer_for_cache(&cache, Cursor::new(layer), &opts()) {
                Ok(stats) => (cache, stats),
                Err(e) => panic!("cache apply of layer {i}: {e} ({e:?})"),
            }
        })
        .collect()
}

/// Path B's second half: the cached layers replayed in order onto one root.
fn merge(dir: &Path, cached: &[(PathBuf, ApplyStats)]) -> PathBuf {
    let root = dir.join("merged");
    fs::create_dir(&root).unwrap();
    for (i, (cache, stats)) in cached.iter().enumerate() {
        let mut stream =
            tar_cached(cache, stats.deferred_links.clone(), stats.modes.clone()).unwrap();
        if let Err(e) = apply_layer(&root, &mut stream, &opts()) {
            panic!("merge of cached layer {i}: {e} ({e:?})");
        }
        // What follows the end-of-archive blocks: nothing, and no late error.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(
            rest.iter().all(|&b| b == 0),
            "layer {i}: data after the end"
        );
    }
    root
}

/// Both paths; asserts they agree and returns the snapshot.
fn round_trip(name: &str, layers: &[Vec<u8>]) -> Snapshot {
    let start = SystemTime::now() - Duration::from_secs(2);
    let tmp = tempfile::tempdir().unwrap();
    let a = snapshot(&direct(tmp.path(), layers), start);
    let cached = cache(tmp.path(), layers);
    let b = snapshot(&merge(tmp.path(), &cached), start);
    if a != b {
        let mut report = String::new();
        for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
            if a.get(key) != b.get(key) {
                report += &format!(
                    "  {key:?}\n    direct: {:?}\n    cached: {:?}\n",
                    a.get(key),
                    b.get(key)
                );
            }
        }
        panic!("{name}: the cached round trip differs from direct application:\n{report}");
    }
    a
}

fn get<'s>(snap: &'s Snapshot, path: &str) -> &'s Node {
    snap.get(path)
        .unwrap_or_else(|| panic!("{path} missing from {:#?}", snap.keys()))
}

fn assert_absent(snap: &Snapshot, path: &str) {
    assert!(!snap.contains_key(path), "{path} should be gone");
}

fn file_detail(data: &[u8]) -> String {
    format!("{} {}", data.len(), sha256_digest(data))
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn a_stack_with_every_kind_of_entry_round_trips() {
    let deep = format!("{}/{}", "d".repeat(60), "e".repeat(60));
    let long_file = format!("{deep}/pax-{}", "f".repeat(80));
    let long_target = format!("/{}/{}", "t".repeat(90), "u".repeat(90));
    let owned = |entry: RawEntry| RawEntry {
        uid: 1234,
        gid: 5678,
        ..entry
    };
    let l1 = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/passwd", b"root:x:0:0\n", 0o644)
        .add_file("etc/shadow", b"secret", 0o600)
        .add_symlink("etc/mtab", "/proc/self/mounts")
        .add_dir("tmp", 0o1777)
        .add_dir("shared", 0o2775)
        .add_dir("locked", 0o500)
        .add_file("locked/inside", b"in", 0o444)
        // Unreadable to an unprivileged owner too: tar_dir must still read them.
        .add_file("etc/gshadow", b"gs", 0o000)
        .add_dir("vault", 0o000)
        .add_file("vault/key", b"k", 0o400)
        .add_dir("drop", 0o300)
        .add_file("drop/box", b"b", 0o200)
        .add_file("usr/bin/su", b"su", 0o4755) // parents not listed
        .add_file("usr/bin/wall", b"wall", 0o2711)
        .add_file("usr/bin/tool", b"#!tool", 0o755)
        .add_hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .add_symlink("bin", "usr/bin")
        .raw_entry(mode(0o640, raw("run/fifo", EntryType::Fifo)))
        .raw_entry(at(RawEntry::dir("var/"), "1500000000.25"))
        .raw_entry(at(
            RawEntry::file("var/log", b"log"),
            "1400000000.123456789",
        ))
        .raw_entry(at(RawEntry::symlink("var/link", "log"), "1300000000.5"))
        .raw_entry(RawEntry::file(&long_file, b"long"))
        .raw_entry(RawEntry::symlink("long-link", &long_target))
        .raw_entry(RawEntry::hardlink(&format!("{deep}/hard"), &long_file))
        .raw_entry(with_pax(
            RawEntry::file("etc/xattr", b"x"),
            "SCHILY.xattr.user.origin",
            b"haul",
        ))
        .raw_entry(with_pax(
            RawEntry::dir("xdir"),
            "SCHILY.xattr.user.dir",
            b"yes",
        ))
        .raw_entry(owned(RawEntry::dir("home/user")))
        .raw_entry(owned(mode(0o600, RawEntry::file("home/user/notes", b"n"))))
        .raw_entry(owned(RawEntry::symlink("home/user/link", "notes")))
        .add_file("p", b"p is a file", 0o644)
        .add_dir("q", 0o755)
        .add_file("q/child", b"qc", 0o644)
        .add_dir("gone", 0o755)
        .add_file("gone/deep/file", b"g", 0o644)
        .add_dir("d", 0o755)
        .add_file("d/old", b"old", 0o644)
        .raw_entry(at(mode(0o700, RawEntry::dir("d/sub")), "1200000000.5"))
        .add_file("d/sub/old2", b"old2", 0o644)
        .add_file("d/replaced", b"lower", 0o644)
        .finish_tar();
    let l2 = LayerBuilder::new()
        .add_dir("p", 0o750) // file -> directory
        .add_file("p/child", b"pc", 0o644)
        .add_file("q", b"q is a file", 0o640) // directory -> file
        // A link to a lower layer's file, with its own mode and time for the shared inode.
        .raw_entry(at(
            mode(0o700, RawEntry::hardlink("usr/bin/tool2", "usr/bin/tool")),
            "1234567890.5",
        ))
        .add_whiteout("etc/shadow")
        .add_whiteout("gone")
        .add_whiteout("never-existed")
        // Opaque directory: same-layer siblings before and after the marker.
        .add_dir("d", 0o755)
        .add_file("d/new", b"new", 0o644)
        .add_opaque_whiteout("d")
        .add_file("d/replaced", b"upper", 0o600)
        .add_file("d/sub/new2", b"new2", 0o644) // `d/sub` made anew after the marker
        // Unlisted parents that lower layers have: their modes must survive.
        .add_file("tmp/x", b"x", 0o644)
        .add_file("locked/new", b"new", 0o644)
        // A whiteout cannot hide this layer's own file.
        .add_file("c", b"c", 0o644)
        .add_whiteout("c")
        .finish_tar();
    let mut layers = vec![l1, l2];
    if is_root() {
        layers.push(device_layer("dev/null"));
    }
    let snap = round_trip("every kind", &layers);

    // Facts, checked directly.
    assert_eq!(get(&snap, "tmp").mode, 0o1777);
    assert_eq!(get(&snap, "shared").mode, 0o2775);
    assert_eq!(get(&snap, "locked").mode, 0o500);
    assert_eq!(get(&snap, "etc/gshadow").mode, 0o000);
    assert_eq!(get(&snap, "vault").mode, 0o000);
    assert_eq!(get(&snap, "vault/key").detail, file_detail(b"k"));
    assert_eq!(get(&snap, "drop").mode, 0o300);
    assert_eq!(get(&snap, "drop/box").detail, file_detail(b"b"));
    assert_eq!(get(&snap, "locked/new").detail, file_detail(b"new"));
    assert_eq!(get(&snap, "usr/bin/su").mode, 0o4755);
    assert_eq!(get(&snap, "usr/bin/wall").mode, 0o2711);
    assert_eq!(get(&snap, "usr").mode, 0o755);
    // The lower file and both links share one inode, with the upper link's metadata.
    for path in ["usr/bin/tool", "usr/bin/tool-alias", "usr/bin/tool2"] {
        let node = get(&snap, path);
        assert_eq!(node.nlink, 3, "{path}");
        assert_eq!(node.mode, 0o700, "{path}");
        assert_eq!(node.mtime, Time::At(1_234_567_890, 500_000_000), "{path}");
        assert_eq!(node.detail, file_detail(b"#!tool"), "{path}");
    }
    assert_eq!(get(&snap, "run/fifo").kind, 'p');
    assert_eq!(get(&snap, "run/fifo").mode, 0o640);
    assert_eq!(
        get(&snap, "var").mtime,
        Time::At(1_500_000_000, 250_000_000)
    );
    assert_eq!(
        get(&snap, "var/log").mtime,
        Time::At(1_400_000_000, 123_456_789)
    );
    assert_eq!(
        get(&snap, "var/link").mtime,
        Time::At(1_300_000_000, 500_000_000)
    );
    assert_eq!(get(&snap, &long_file).nlink, 2);
    assert_eq!(get(&snap, "long-link").detail, long_target);
    assert_eq!(
        get(&snap, "etc/xattr").xattrs,
        vec![("user.origin".to_owned(), b"haul".to_vec())]
    );
    assert_eq!(
        get(&snap, "xdir").xattrs,
        vec![("user.dir".to_owned(), b"yes".to_vec())]
    );
    assert_eq!(get(&snap, "p").kind, 'd');
    assert_eq!(get(&snap, "p").mode, 0o750);
    assert_eq!(get(&snap, "q").kind, 'f');
    assert_absent(&snap, "q/child");
    assert_absent(&snap, "etc/shadow");
    assert_absent(&snap, "gone");
    assert_absent(&snap, "gone/deep/file");
    assert_absent(&snap, "never-existed");
    assert_eq!(get(&snap, "c").detail, file_detail(b"c"));
    assert_absent(&snap, "d/old");
    assert_absent(&snap, "d/sub/old2");
    assert_eq!(get(&snap, "d/new").detail, file_detail(b"new"));
    assert_eq!(get(&snap, "d/replaced").detail, file_detail(b"upper"));
    // The marker had emptied `d` before `d/sub/new2` came: `d/sub` is new, not the lower 0700.
    assert_eq!(get(&snap, "d/sub").mode, 0o755);
    assert_eq!(get(&snap, "d/sub/new2").detail, file_detail(b"new2"));
    // Nothing a whiteout or marker in the cache could leave behind.
    assert!(
        snap.keys().all(|k| !k.contains(".wh.")),
        "{:#?}",
        snap.keys()
    );
    if is_root() {
        let user = get(&snap, "home/user/notes");
        assert_eq!((user.uid, user.gid, user.mode), (1234, 5678, 0o600));
        assert_eq!(get(&snap, "home/user/link").uid, 1234);
        assert_eq!(get(&snap, "dev/null").kind, 'c');
        assert_eq!(get(&snap, "dev/null").detail, "103");
    }
}

#[test]
fn an_opaque_marker_after_its_siblings_keeps_the_lower_directories_they_reuse() {
    let lower = LayerBuilder::new()
        .add_dir("d", 0o755)
        .add_file("d/old", b"old", 0o644)
        .raw_entry(at(mode(0o700, RawEntry::dir("d/sub")), "1200000000.5"))
        .add_file("d/sub/old2", b"old2", 0o644)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_dir("d", 0o755)
        .add_file("d/new", b"new", 0o644)
        .add_file("d/sub/new2", b"new2", 0o644) // `d/sub` still the lower one here
        .add_opaque_whiteout("d")
        .finish_tar();
    let snap = round_trip("marker last", &[lower, upper]);
    assert_eq!(get(&snap, "d/sub").mode, 0o700);
    assert_absent(&snap, "d/old");
    assert_absent(&snap, "d/sub/old2");
    assert_eq!(get(&snap, "d/sub/new2").detail, file_detail(b"new2"));
}

#[test]
fn whiteouts_next_to_this_layers_own_entries_round_trip() {
    let lower = LayerBuilder::new()
        .add_dir("k", 0o700)
        .add_file("k/lower", b"l", 0o644)
        .add_file("e", b"lower e", 0o644)
        .add_dir(".cache", 0o700)
        .add_file(".cache/old", b"o", 0o644)
        .add_file("-x", b"lower -x", 0o644)
        .finish_tar();
    let upper = LayerBuilder::new()
        // This layer's own directory, then a whiteout of it: only the lower contents go.
        .add_file("k/mine", b"m", 0o644)
        .add_whiteout("k")
        // A whiteout, then the name again: the new one stays.
        .add_whiteout("e")
        .add_file("e", b"upper e", 0o644)
        // `.cache` sorts before `.wh..cache`, `-x` before `.wh.-x`.
        .add_whiteout(".cache")
        .add_file(".cache/new", b"n", 0o644)
        .add_whiteout("-x")
        .add_file("-x", b"upper -x", 0o644)
        .finish_tar();
    let snap = round_trip("own entries", &[lower, upper]);
    assert_eq!(get(&snap, "k").mode, 0o700);
    assert_absent(&snap, "k/lower");
    assert_eq!(get(&snap, "k/mine").detail, file_detail(b"m"));
    assert_eq!(get(&snap, "e").detail, file_detail(b"upper e"));
    // Whited out first, then made anew as the parent of `new`.
    assert_eq!(get(&snap, ".cache").mode, 0o755);
    assert_absent(&snap, ".cache/old");
    assert_eq!(get(&snap, "-x").detail, file_detail(b"upper -x"));
}

#[test]
fn the_root_entry_and_links_to_links_in_lower_layers_round_trip() {
    let l1 = LayerBuilder::new()
        .raw_entry(at(
            mode(0o750, raw("./", EntryType::Directory)),
            "1600000000.5",
        ))
        .add_file("t", b"target", 0o644)
        .finish_tar();
    let l2 = LayerBuilder::new()
        .raw_entry(RawEntry::hardlink("h1", "t"))
        .raw_entry(RawEntry::hardlink("sub/h2", "h1"))
        .finish_tar();
    let only_root = LayerBuilder::new()
        .raw_entry(at(
            mode(0o711, raw("./", EntryType::Directory)),
            "1600000000.5",
        ))
        .finish_tar();
    let snap = round_trip("root and links", &[l1, l2]);
    assert_eq!(get(&snap, "").mode, 0o750);
    for path in ["t", "h1", "sub/h2"] {
        assert_eq!(get(&snap, path).nlink, 3, "{path}");
    }
    let snap = round_trip("only the root", &[only_root]);
    assert_eq!(get(&snap, "").mode, 0o711);
    assert_eq!(get(&snap, "").mtime, Time::At(1_600_000_000, 500_000_000));
}

// ---------------------------------------------------------------------------------------------
// Cache mode itself

/// 4294967295 is -1 to chown, which leaves the owner as it is: docker and GNU tar pass it on so,
/// for a file of the layer and for a hardlink's shared inode in a lower layer alike.
#[test]
fn an_owner_of_minus_one_leaves_the_owner_as_it_is_direct_and_cached() {
    if !is_root() {
        println!("SKIPPED: ownership is applied only as root");
        return;
    }
    let minus_one = u64::from(u32::MAX);
    let lower = LayerBuilder::new()
        .raw_entry(RawEntry {
            uid: 5,
            gid: 6,
            ..RawEntry::file("t", b"t")
        })
        .raw_entry(RawEntry {
            uid: minus_one,
            gid: minus_one,
            ..RawEntry::file("unowned", b"u")
        })
        .finish_tar();
    let upper = LayerBuilder::new()
        .raw_entry(RawEntry {
            uid: minus_one,
            gid: 7,
            ..RawEntry::hardlink("h", "t")
        })
        .finish_tar();
    let snap = round_trip("owner -1", &[lower, upper]);
    // The applier's own uid and gid (root's) for a file made here, the lower owner for the link.
    let unowned = get(&snap, "unowned");
    assert_eq!((unowned.uid, unowned.gid), (0, 0));
    for path in ["t", "h"] {
        let node = get(&snap, path);
        assert_eq!((node.uid, node.gid, node.nlink), (5, 7, 2), "{path}");
    }
}

#[test]
fn cache_mode_keeps_whiteouts_as_files() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::new()
        .add_whiteout("gone")
        .add_whiteout("a/b/gone")
        .add_dir("d", 0o755)
        .add_opaque_whiteout("d")
        .add_file("c", b"c", 0o644)
        .add_whiteout("c") // its own file: nothing to record
        .add_whiteout("e")
        .add_file("e", b"e", 0o644) // hidden name, later in the same layer: created
        .finish_tar();
    let stats = apply_layer_for_cache(tmp.path(), Cursor::new(layer), &opts()).unwrap();
    assert!(stats.deferred_links.is_empty());
    let kept = |p: &str| fs::symlink_metadata(tmp.path().join(p)).ok();
    for path in [".wh.gone", "a/b/.wh.gone", "d/.wh..wh..opq", ".wh.e"] {
        let meta = kept(path).unwrap_or_else(|| panic!("{path} not kept"));
        assert!(meta.is_file(), "{path}");
        assert_eq!((meta.len(), meta.mode() & 0o7777), (0, 0o600), "{path}");
    }
    assert!(kept(".wh.c").is_none());
    assert_eq!(fs::read(tmp.path().join("c")).unwrap(), b"c");
    assert_eq!(fs::read(tmp.path().join("e")).unwrap(), b"e");
    // `a`, `a/b` and the root itself were not listed; `d` was.
    for dir in ["", "a", "a/b"] {
        let marker = Path::new(dir).join(".wh..wh.haul.implicit");
        assert!(kept(marker.to_str().unwrap()).is_some(), "{dir:?}");
    }
    assert!(kept("d/.wh..wh.haul.implicit").is_none());

    // A directory named like a whiteout can only come through a symlink, and would read as
    // one when replayed: refused.
    for name in [".wh..wh..opq", ".wh.x", ".wh..wh.haul.implicit"] {
        let tmp = tempfile::tempdir().unwrap();
        let layer = LayerBuilder::new()
            .add_symlink("s", name)
            .add_file("s/f", b"f", 0o644)
            .finish_tar();
        let err = apply_layer_for_cache(tmp.path(), Cursor::new(layer), &opts()).unwrap_err();
        assert!(matches!(err, ApplyError::Io { .. }), "{name}: {err:?}");
    }

    // Refused on a directory that is not empty.
    let err = apply_layer_for_cache(
        tmp.path(),
        Cursor::new(LayerBuilder::new().finish_tar()),
        &opts(),
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::RootNotEmpty { .. }), "{err:?}");
}

#[test]
fn cache_mode_defers_hardlinks_into_lower_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::new()
        .add_file("own", b"own", 0o644)
        .add_hardlink("own-alias", "own")
        .raw_entry(at(
            mode(
                0o750,
                RawEntry::hardlink("./bin/../lower-alias", "/usr/lib/lower"),
            ),
            "1500000000.5",
        ))
        .raw_entry(RawEntry::hardlink("alias-of-alias", "lower-alias"))
        .add_file("replaced-later", b"x", 0o644)
        .raw_entry(RawEntry::hardlink("replaced-later", "usr/lib/other"))
        .add_file("replaced-later", b"file again", 0o644)
        .finish_tar();
    let stats = apply_layer_for_cache(tmp.path(), Cursor::new(layer), &opts()).unwrap();
    let owner = opts().preserve_ownership.then_some((0, 0));
    assert_eq!(
        stats.deferred_links,
        vec![
            DeferredLink {
                path: "lower-alias".into(),
                target: "usr/lib/lower".into(),
                mode: 0o750,
                owner,
                mtime: (1_500_000_000, 500_000_000),
                xattrs: Vec::new(),
            },
            DeferredLink {
                path: "alias-of-alias".into(),
                target: "lower-alias".into(),
                mode: 0o644,
                owner,
                mtime: (FIXED_MTIME as i64, 0),
                xattrs: Vec::new(),
            },
        ]
    );
    // Nothing made for them; the same-layer link is real.
    assert!(!tmp.path().join("lower-alias").exists());
    assert!(!tmp.path().join("usr").exists());
    assert_eq!(fs::metadata(tmp.path().join("own")).unwrap().nlink(), 2);
    assert_eq!(
        fs::read(tmp.path().join("replaced-later")).unwrap(),
        b"file again"
    );

    // Still refused: escapes, and what applying the tar would refuse or do differently.
    let refused = [
        (
            LayerBuilder::new().raw_entry(RawEntry::hardlink("h", "../outside")),
            HardlinkProblem::EscapesRoot,
        ),
        (
            // Whited out earlier in the layer: applying it would find nothing.
            LayerBuilder::new()
                .add_whiteout("usr/lib")
                .raw_entry(RawEntry::hardlink("h", "usr/lib/t")),
            HardlinkProblem::Missing,
        ),
        (
            LayerBuilder::new()
                .add_opaque_whiteout("usr")
                .raw_entry(RawEntry::hardlink("h", "usr/lib/t")),
            HardlinkProblem::Missing,
        ),
        (
            // The lower target replaced after the link: the cache cannot hold both.
            LayerBuilder::new()
                .raw_entry(RawEntry::hardlink("h", "usr/lib/t"))
                .add_file("usr/lib/t", b"new", 0o644),
            HardlinkProblem::ChangedLater,
        ),
        (
            LayerBuilder::new()
                .raw_entry(RawEntry::hardlink("h", "usr/lib/t"))
                .add_whiteout("usr"),
            HardlinkProblem::ChangedLater,
        ),
        (
            LayerBuilder::new()
                .raw_entry(RawEntry::hardlink("h", "usr/lib/t"))
                .add_opaque_whiteout("usr/lib"),
            HardlinkProblem::ChangedLater,
        ),
    ];
    for (layer, problem) in refused {
        let tmp = tempfile::tempdir().unwrap();
        match apply_layer_for_cache(tmp.path(), Cursor::new(layer.finish_tar()), &opts()) {
            Err(ApplyError::BadHardlink { problem: got, .. }) => assert_eq!(got, problem),
            other => panic!("{problem:?}: {other:?}"),
        }
    }
}

#[test]
fn the_merged_root_holds_copies_not_links_into_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::new()
        .add_file("etc/config", b"original", 0o644)
        .add_hardlink("etc/config-alias", "etc/config")
        .finish_tar();
    let cached = cache(tmp.path(), &[layer]);
    let since = SystemTime::now() - Duration::from_secs(2);
    let before = snapshot(&cached[0].0, since);
    let root = merge(tmp.path(), &cached);
    fs::write(root.join("etc/config"), b"changed in the rootfs").unwrap();
    fs::set_permissions(root.join("etc/config"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(root.join("etc/config-alias")).unwrap();
    assert_eq!(snapshot(&cached[0].0, since), before);
    assert_eq!(get(&before, "etc/config").nlink, 2);
}

#[test]
fn tar_dir_is_deterministic_and_reports_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::new()
        .add_file("b", b"b", 0o644)
        .add_file("a/z", b"z", 0o644)
        .add_file("a/y", b"y", 0o644)
        .add_whiteout("a/x")
        .add_opaque_whiteout("a")
        .finish_tar();
    let cached = cache(tmp.path(), &[layer]);
    let read = || {
        let mut out = Vec::new();
        tar_dir(&cached[0].0, Vec::new())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let first = read();
    assert_eq!(first, read());
    let mut archive = tar::Archive::new(Cursor::new(first));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    // Whiteouts first, then names in order, the opaque marker after its directory's contents;
    // `a` and the root were not listed, so they have no entries.
    assert_eq!(names, ["a/.wh.x", "a/y", "a/z", "a/.wh..wh..opq", "b"]);

    let err = tar_dir(&tmp.path().join("missing"), Vec::new())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("missing"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Timing

/// `cargo test --release --test layer_cache_roundtrip -- --ignored --nocapture`
#[test]
#[ignore = "timing, not a check"]
fn timing_of_a_50_mb_5k_file_layer() {
    let content = pseudo_text(7, 50 << 20);
    let mut builder = LayerBuilder::new();
    for (i, chunk) in content.chunks((50 << 20) / 5000).enumerate() {
        builder = builder.add_file(&format!("d{:02}/f{i:05}", i % 50), chunk, 0o644);
    }
    let layer = builder.finish_tar();
    let tmp = tempfile::tempdir().unwrap();
    let time = |what: &str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        eprintln!("{what}: {:?}", start.elapsed());
    };
    let direct_root = tmp.path().join("direct");
    fs::create_dir(&direct_root).unwrap();
    time("direct apply", &mut || {
        apply_layer(&direct_root, Cursor::new(&layer), &opts()).unwrap();
    });
    let cache_dir = tmp.path().join("cache");
    fs::create_dir(&cache_dir).unwrap();
    let mut stats = None;
    time("apply for the cache", &mut || {
        stats = Some(apply_layer_for_cache(&cache_dir, Cursor::new(&layer), &opts()).unwrap());
    });
    let links = stats.map(|s| s.deferred_links).unwrap_or_default();
    time("tar_dir alone", &mut || {
        io::copy(
            &mut tar_dir(&cache_dir, links.clone()).unwrap(),
            &mut io::sink(),
        )
        .unwrap();
    });
    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    time("tar_dir + apply", &mut || {
        apply_layer(
            &merged,
            tar_dir(&cache_dir, links.clone()).unwrap(),
            &opts(),
        )
        .unwrap();
    });
}
