//! The layer applier against ordinary and hostile layers. Every case applies a layer (or a stack
//! of them) onto a root that sits next to an `outside` directory of sentinels, then checks the
//! exact resulting tree (type, mode, size, content hash or link target of every path) and that
//! nothing next to the root changed.
//!
//! Options are spelled out (no ownership, no devices) so the cases mean the same as root and not;
//! the few that need root say so and skip otherwise.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use haul::unpack::{ApplyError, ApplyOptions, ApplyStats, HardlinkProblem, apply_layer};
use test_registry::{Blob, EntryType, FIXED_MTIME, LayerBuilder, RawEntry};

// ---------------------------------------------------------------------------------------------
// Harness

fn opts() -> ApplyOptions {
    ApplyOptions {
        preserve_ownership: false,
        allow_devices: false,
        xattrs: true,
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temp dir holding `root/` (empty) and `outside/` (sentinels a hostile layer must not touch).
struct Sandbox {
    tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("etc")).unwrap();
        fs::write(outside.join("sentinel"), b"do not touch").unwrap();
        fs::write(outside.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::create_dir(outside.join("dir")).unwrap();
        fs::write(outside.join("dir/inner"), b"inner").unwrap();
        Sandbox { tmp, root }
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Everything in the temp dir except below `root/`, with mtimes and link counts.
    fn surroundings(&self) -> Vec<(Node, i64, i64)> {
        let mut out = Vec::new();
        walk(self.tmp.path(), self.tmp.path(), &mut out, &|p| {
            p == self.root
        });
        out.into_iter()
            .map(|(node, meta)| (node, meta.mtime(), meta.mtime_nsec()))
            .collect()
    }

    /// Applies `layers` in order, stopping at the first error, and checks that neither the
    /// surroundings of the root nor the host's /etc changed, whatever happened.
    fn apply(
        &self,
        layers: &[Vec<u8>],
        opts: &ApplyOptions,
    ) -> Result<Vec<ApplyStats>, ApplyError> {
        let before = self.surroundings();
        let host_before = host_etc();
        let mut all = Vec::new();
        let mut result = Ok(());
        for layer in layers {
            match apply_layer(&self.root, Cursor::new(layer), opts) {
                Ok(stats) => all.push(stats),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        assert_eq!(
            self.surroundings(),
            before,
            "something outside the root changed"
        );
        assert_eq!(host_etc(), host_before, "the host's /etc changed");
        result.map(|()| all)
    }

    fn apply_ok(&self, layers: &[Vec<u8>]) -> Vec<ApplyStats> {
        match self.apply(layers, &opts()) {
            Ok(stats) => stats,
            Err(e) => panic!("apply failed: {e} ({e:?})"),
        }
    }

    fn tree(&self) -> Vec<Node> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out, &|_| false);
        out.into_iter().map(|(node, _)| node).collect()
    }

    fn meta(&self, path: &str) -> fs::Metadata {
        fs::symlink_metadata(self.root.join(path)).unwrap()
    }
}

/// What a hostile layer could have done to the host, if confinement failed.
fn host_etc() -> (Option<String>, bool) {
    let passwd = fs::read("/etc/passwd").ok().map(|b| sha(&b));
    let canary = fs::symlink_metadata("/etc/haul-apply-canary").is_ok();
    (passwd, canary)
}

fn sha(data: &[u8]) -> String {
    Blob::new("application/octet-stream", data.to_vec()).digest
}

/// One path of a snapshot: kind (`d f l p c b s`), permission bits, and for files size, link
/// count and content hash, for symlinks the target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    path: String,
    kind: char,
    mode: u32,
    detail: String,
}

fn walk(
    base: &Path,
    dir: &Path,
    out: &mut Vec<(Node, fs::Metadata)>,
    skip: &dyn Fn(&Path) -> bool,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if skip(&path) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let rel = path
            .strip_prefix(base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let (kind, detail) = if ft.is_dir() {
            ('d', String::new())
        } else if ft.is_file() {
            let data = fs::read(&path).unwrap();
            (
                'f',
                format!(
                    "{} bytes, {} links, {}",
                    data.len(),
                    meta.nlink(),
                    sha(&data)
                ),
            )
        } else if ft.is_symlink() {
            (
                'l',
                fs::read_link(&path).unwrap().to_string_lossy().into_owned(),
            )
        } else if ft.is_fifo() {
            ('p', String::new())
        } else if ft.is_char_device() {
            ('c', format!("{:x}", meta.rdev()))
        } else if ft.is_block_device() {
            ('b', format!("{:x}", meta.rdev()))
        } else {
            ('s', String::new())
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            meta.permissions().mode() & 0o7777
        };
        let node = Node {
            path: rel,
            kind,
            mode,
            detail,
        };
        out.push((node, meta.clone()));
        if ft.is_dir() {
            walk(base, &path, out, skip);
        }
    }
}

fn dir(path: &str, mode: u32) -> Node {
    Node {
        path: path.into(),
        kind: 'd',
        mode,
        detail: String::new(),
    }
}

fn file(path: &str, mode: u32, data: &[u8]) -> Node {
    linked(path, mode, data, 1)
}

fn linked(path: &str, mode: u32, data: &[u8], links: u64) -> Node {
    Node {
        path: path.into(),
        kind: 'f',
        mode,
        detail: format!("{} bytes, {links} links, {}", data.len(), sha(data)),
    }
}

fn symlink(path: &str, target: &str) -> Node {
    Node {
        path: path.into(),
        kind: 'l',
        mode: 0,
        detail: target.into(),
    }
}

fn fifo(path: &str, mode: u32) -> Node {
    Node {
        path: path.into(),
        kind: 'p',
        mode,
        detail: String::new(),
    }
}

/// Sorted as the snapshot walk produces them (by path, components compared in order).
fn expect(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
    nodes
}

fn raw(path: &str, kind: EntryType) -> RawEntry {
    RawEntry {
        kind,
        ..RawEntry::file(path, b"")
    }
}

fn with_pax(mut entry: RawEntry, key: &str, value: &[u8]) -> RawEntry {
    entry.pax.push((key.into(), value.to_vec()));
    entry
}

fn errno(e: &ApplyError) -> Option<i32> {
    match e {
        ApplyError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn the_harness_notices_a_change_outside_the_root() {
    let sb = Sandbox::new();
    let before = sb.surroundings();
    fs::write(sb.outside().join("sentinel"), b"do not touch!").unwrap();
    assert_ne!(sb.surroundings(), before);
    let before = sb.surroundings();
    fs::hard_link(sb.outside().join("dir/inner"), sb.root.join("inner")).unwrap();
    assert_ne!(
        sb.surroundings(),
        before,
        "a new link to an outside file changes its link count"
    );
}

// ---------------------------------------------------------------------------------------------
// Ordinary layers

#[test]
fn plain_files_dirs_symlinks_and_hardlinks() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/hostname", b"box\n", 0o644)
        .add_file("etc/shadow", b"secret", 0o600)
        .add_dir("usr/bin", 0o755) // parent `usr` not listed: created 0755
        .add_file("usr/bin/tool", b"#!/bin/sh\n", 0o755)
        .add_hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .add_symlink("bin", "usr/bin")
        .add_symlink("etc/mtab", "/proc/self/mounts")
        .add_file("empty", b"", 0o644)
        .finish_tar();
    let stats = sb.apply_ok(&[layer]);
    assert_eq!(stats[0].entries, 9);
    assert_eq!(stats[0].bytes, 4 + 6 + 10);
    assert!(stats[0].warnings.is_empty(), "{:?}", stats[0].warnings);
    assert_eq!(
        sb.tree(),
        expect(vec![
            symlink("bin", "usr/bin"),
            file("empty", 0o644, b""),
            dir("etc", 0o755),
            file("etc/hostname", 0o644, b"box\n"),
            symlink("etc/mtab", "/proc/self/mounts"),
            file("etc/shadow", 0o600, b"secret"),
            dir("usr", 0o755),
            dir("usr/bin", 0o755),
            // The alias header says 0644: like containerd, the link's header sets the inode's mode.
            linked("usr/bin/tool", 0o644, b"#!/bin/sh\n", 2),
            linked("usr/bin/tool-alias", 0o644, b"#!/bin/sh\n", 2),
        ])
    );
    assert_eq!(
        sb.meta("usr/bin/tool").ino(),
        sb.meta("usr/bin/tool-alias").ino()
    );
}

#[test]
fn directory_over_directory_merges_and_updates_mode() {
    let sb = Sandbox::new();
    let lower = LayerBuilder::new()
        .add_dir("d", 0o700)
        .add_file("d/lower", b"1", 0o644)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_dir("d", 0o755)
        .add_file("d/upper", b"2", 0o644)
        .finish_tar();
    sb.apply_ok(&[lower, upper]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("d", 0o755),
            file("d/lower", 0o644, b"1"),
            file("d/upper", 0o644, b"2"),
        ])
    );
}

#[test]
fn later_entry_replaces_earlier_and_file_dir_file_across_layers() {
    let sb = Sandbox::new();
    let l1 = LayerBuilder::new()
        .add_file("p", b"file one", 0o644)
        .add_dir("real", 0o755)
        .add_symlink("s", "real")
        .add_file("dup", b"first", 0o644)
        .add_file("dup", b"second", 0o600)
        .finish_tar();
    // A directory over a symlink to a directory replaces the symlink: nothing lands in `real`.
    let l2 = LayerBuilder::new()
        .add_dir("p", 0o750)
        .add_file("p/child", b"c", 0o644)
        .add_dir("s", 0o755)
        .add_file("s/f", b"in s", 0o644)
        .finish_tar();
    let l3 = LayerBuilder::new()
        .add_file("p", b"file three", 0o640)
        .add_symlink("real", "s")
        .finish_tar();
    sb.apply_ok(&[l1, l2]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            file("dup", 0o600, b"second"),
            dir("p", 0o750),
            file("p/child", 0o644, b"c"),
            dir("real", 0o755),
            dir("s", 0o755),
            file("s/f", 0o644, b"in s"),
        ])
    );
    sb.apply_ok(&[l3]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            file("dup", 0o600, b"second"),
            file("p", 0o640, b"file three"),
            symlink("real", "s"),
            dir("s", 0o755),
            file("s/f", 0o644, b"in s"),
        ])
    );
}

#[test]
fn a_file_that_removes_its_own_parent_path_ends_the_reuse_of_that_parent() {
    // Files of one directory reuse its fd. Through `a/l -> ..`, the file `a/l/a` lives in the
    // root and replaces the directory `a` that made `a/l` resolve: the next file under `a/l` must
    // be resolved again (and fail, `a` being a file now), not land in the root.
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_dir("a", 0o755)
        .add_symlink("a/l", "..")
        .add_file("a/l/f1", b"one", 0o644)
        .add_file("a/l/a", b"now a file", 0o644)
        .add_file("a/l/f2", b"two", 0o644)
        .finish_tar();
    let err = sb
        .apply(&[layer], &opts())
        .expect_err("a/l no longer resolves");
    assert_eq!(
        errno(&err),
        Some(rustix::io::Errno::NOTDIR.raw_os_error()),
        "{err}"
    );
    assert_eq!(
        sb.tree(),
        expect(vec![
            file("a", 0o644, b"now a file"),
            file("f1", 0o644, b"one")
        ])
    );
}

#[test]
fn special_modes_survive_umask_and_restrictive_dirs_still_get_children() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_file("suid", b"x", 0o4755)
        .add_file("sgid", b"x", 0o2711)
        .add_file("odd", b"x", 0o407)
        .add_file("group-writable", b"x", 0o666)
        .add_dir("tmp", 0o1777)
        .add_dir("shared", 0o2775)
        .add_dir("locked", 0o500)
        .add_file("locked/inside", b"y", 0o444)
        .add_dir("locked/sub", 0o500)
        .add_file("locked/sub/deep", b"z", 0o644)
        .finish_tar();
    sb.apply_ok(&[layer]);
    let tree = sb.tree();
    assert_eq!(
        tree,
        expect(vec![
            file("group-writable", 0o666, b"x"),
            dir("locked", 0o500),
            file("locked/inside", 0o444, b"y"),
            dir("locked/sub", 0o500),
            file("locked/sub/deep", 0o644, b"z"),
            file("odd", 0o407, b"x"),
            file("sgid", 0o2711, b"x"),
            dir("shared", 0o2775),
            file("suid", 0o4755, b"x"),
            dir("tmp", 0o1777),
        ])
    );
    // A later layer can still replace the locked tree, even unprivileged.
    sb.apply_ok(&[LayerBuilder::new()
        .add_file("locked", b"gone", 0o644)
        .finish_tar()]);
    assert!(sb.meta("locked").is_file());
}

#[test]
fn read_only_directories_from_lower_layers_still_take_changes() {
    // Fedora's /usr/bin is 0555: an unprivileged applier must still add to and remove from it.
    let sb = Sandbox::new();
    let lower = LayerBuilder::new()
        .add_dir("usr", 0o555)
        .add_dir("usr/bin", 0o555)
        .add_file("usr/bin/old", b"old", 0o755)
        .add_file("usr/bin/replaced", b"v1", 0o755)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_file("usr/bin/new", b"new", 0o755)
        .add_file("usr/bin/replaced", b"v2", 0o755)
        .add_file("usr/bin/sub/implicit", b"i", 0o644)
        .add_symlink("usr/bin/link", "new")
        .add_whiteout("usr/bin/old")
        .finish_tar();
    sb.apply_ok(&[lower, upper]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("usr", 0o555),
            dir("usr/bin", 0o555),
            symlink("usr/bin/link", "new"),
            file("usr/bin/new", 0o755, b"new"),
            file("usr/bin/replaced", 0o755, b"v2"),
            dir("usr/bin/sub", 0o755),
            file("usr/bin/sub/implicit", 0o644, b"i"),
        ])
    );
    // The lower layer's directory times are kept where this layer did not list the directory.
    assert_eq!(sb.meta("usr").mtime(), FIXED_MTIME as i64);
}

#[test]
fn mtimes_with_nanoseconds_for_files_symlinks_dirs_and_the_root() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(with_pax(
            RawEntry {
                mode: 0o750,
                ..raw("./", EntryType::Directory)
            },
            "mtime",
            b"1600000000.5",
        ))
        // The directory comes first; its children must not leave it with "now" as mtime.
        .raw_entry(with_pax(RawEntry::dir("d/"), "mtime", b"1500000000.25"))
        .raw_entry(with_pax(
            RawEntry::file("d/f", b"data"),
            "mtime",
            b"1400000000.123456789",
        ))
        .raw_entry(with_pax(
            RawEntry::symlink("d/l", "f"),
            "mtime",
            b"1300000000",
        ))
        .add_file("d/plain", b"p", 0o644)
        .add_file("e/implicit-parent", b"p", 0o644)
        .finish_tar();
    sb.apply_ok(&[layer]);
    let times = |p: &str| {
        let m = if p.is_empty() {
            fs::symlink_metadata(&sb.root).unwrap()
        } else {
            sb.meta(p)
        };
        (m.mtime(), m.mtime_nsec(), m.atime(), m.atime_nsec())
    };
    assert_eq!(
        times(""),
        (1_600_000_000, 500_000_000, 1_600_000_000, 500_000_000)
    );
    assert_eq!(times("d").0, 1_500_000_000);
    assert_eq!(times("d").1, 250_000_000);
    assert_eq!(
        times("d/f"),
        (1_400_000_000, 123_456_789, 1_400_000_000, 123_456_789)
    );
    assert_eq!(times("d/l").0, 1_300_000_000);
    assert_eq!(times("d/plain").0, FIXED_MTIME as i64);
    assert_eq!(
        fs::symlink_metadata(&sb.root).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    // A parent the tar never listed keeps the time it was created at.
    assert!(times("e").0 > 1_700_000_000);
}

#[test]
fn zero_mtime_stays_zero() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(with_pax(RawEntry::file("epoch", b""), "mtime", b"0"))
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(sb.meta("epoch").mtime(), 0);
}

#[test]
fn long_paths_and_link_targets_from_pax_and_gnu_headers() {
    let sb = Sandbox::new();
    let deep = format!("{}/{}", "d".repeat(60), "e".repeat(60)); // 121 bytes
    let pax_file = format!("{deep}/pax-{}", "f".repeat(80));
    let gnu_file = format!("{deep}/gnu-{}", "g".repeat(80));
    let target = format!("/{}/{}", "t".repeat(90), "u".repeat(90));
    let layer = LayerBuilder::new()
        .raw_entry(RawEntry::file(&pax_file, b"pax"))
        .add_file(&gnu_file, b"gnu", 0o644) // the tar crate's builder writes a GNU long name
        .raw_entry(RawEntry::symlink("pax-link", &target))
        .add_symlink("gnu-link", &target)
        .raw_entry(RawEntry::hardlink(&format!("{deep}/hard"), &pax_file))
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir(&"d".repeat(60), 0o755),
            dir(&deep, 0o755),
            file(&gnu_file, 0o644, b"gnu"),
            linked(&format!("{deep}/hard"), 0o644, b"pax", 2),
            linked(&pax_file, 0o644, b"pax", 2),
            symlink("gnu-link", &target),
            symlink("pax-link", &target),
        ])
    );
}

#[test]
fn fifo_is_created_and_devices_are_skipped_with_a_warning() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(RawEntry {
            mode: 0o640,
            ..raw("dev/fifo", EntryType::Fifo)
        })
        .raw_entry(raw("dev/null", EntryType::Char))
        .raw_entry(raw("dev/sda", EntryType::Block))
        .finish_tar();
    let stats = sb.apply_ok(&[layer]);
    assert_eq!(stats[0].entries, 3);
    assert_eq!(stats[0].warnings.len(), 2, "{:?}", stats[0].warnings);
    assert!(
        stats[0].warnings[0].contains("dev/null"),
        "{:?}",
        stats[0].warnings
    );
    assert_eq!(
        sb.tree(),
        expect(vec![dir("dev", 0o755), fifo("dev/fifo", 0o640)])
    );
}

#[test]
fn devices_are_created_when_allowed_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    let mut null = raw("dev/null", EntryType::Char);
    null.mode = 0o666;
    let mut tar = LayerBuilder::new().raw_entry(null).finish_tar();
    // RawEntry has no device numbers: patch major 1, minor 3 into the header, fix the checksum.
    let mut header = tar::Header::from_byte_slice(&tar[..512]).clone();
    header.set_device_major(1).unwrap();
    header.set_device_minor(3).unwrap();
    header.set_cksum();
    tar[..512].copy_from_slice(header.as_bytes());
    let opts = ApplyOptions {
        allow_devices: true,
        ..opts()
    };
    let stats = sb.apply(&[tar], &opts).unwrap();
    assert!(stats[0].warnings.is_empty());
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("dev", 0o755),
            Node {
                path: "dev/null".into(),
                kind: 'c',
                mode: 0o666,
                detail: "103".into()
            },
        ])
    );
}

#[test]
fn ownership_is_numeric_and_setuid_survives_chown_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    let owned = |entry: RawEntry| RawEntry {
        uid: 1234,
        gid: 5678,
        ..entry
    };
    let layer = LayerBuilder::new()
        .raw_entry(owned(RawEntry {
            mode: 0o4755,
            ..RawEntry::file("bin/su", b"su")
        }))
        .raw_entry(owned(RawEntry::dir("home/user")))
        .raw_entry(owned(RawEntry::symlink("home/link", "user")))
        // Beyond the 7-digit octal field: only a PAX record can carry it.
        .raw_entry(with_pax(
            with_pax(RawEntry::file("big-ids", b""), "uid", b"3000000"),
            "gid",
            b"3000001",
        ))
        .finish_tar();
    let opts = ApplyOptions {
        preserve_ownership: true,
        ..opts()
    };
    sb.apply(&[layer], &opts).unwrap();
    let su = sb.meta("bin/su");
    assert_eq!(
        (su.uid(), su.gid(), su.mode() & 0o7777),
        (1234, 5678, 0o4755)
    );
    assert_eq!(
        (sb.meta("home/user").uid(), sb.meta("home/user").gid()),
        (1234, 5678)
    );
    assert_eq!(
        (sb.meta("home/link").uid(), sb.meta("home/link").gid()),
        (1234, 5678)
    );
    assert_eq!(
        (sb.meta("big-ids").uid(), sb.meta("big-ids").gid()),
        (3_000_000, 3_000_001)
    );
    // Implicit parents belong to whoever applies.
    assert_eq!(sb.meta("bin").uid(), 0);
}

/// A chown is skipped when the new node already has the tar's ids; in a setgid directory a new
/// node takes the directory's group instead of the applier's, and must still get the tar's.
#[test]
fn entries_in_a_setgid_directory_get_the_tars_group_not_the_directorys() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sb = Sandbox::new();
    let ids = |uid: u64, gid: u64, entry: RawEntry| RawEntry { uid, gid, ..entry };
    let layer = LayerBuilder::new()
        .raw_entry(ids(
            0,
            50,
            RawEntry {
                mode: 0o2775,
                ..RawEntry::dir("shared")
            },
        ))
        .raw_entry(ids(0, 0, RawEntry::file("shared/root-group", b"r")))
        .raw_entry(ids(0, 50, RawEntry::file("shared/dir-group", b"d")))
        .raw_entry(ids(0, 0, RawEntry::dir("shared/sub")))
        .raw_entry(ids(0, 0, RawEntry::file("plain", b"p")))
        .finish_tar();
    let opts = ApplyOptions {
        preserve_ownership: true,
        ..opts()
    };
    sb.apply(&[layer], &opts).unwrap();
    let owner = |path: &str| {
        let m = sb.meta(path);
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("shared"), (0, 50, 0o2775));
    assert_eq!(owner("shared/root-group"), (0, 0, 0o644));
    assert_eq!(owner("shared/dir-group"), (0, 50, 0o644));
    // mkdir in a setgid directory gives the group and the setgid bit; the tar says neither.
    assert_eq!(owner("shared/sub"), (0, 0, 0o755));
    assert_eq!(owner("plain"), (0, 0, 0o644));
}

/// The same as a tree GNU tar archived and GNU tar extracts (the oracle): a setgid directory of
/// group 50 holding entries of group 0 and 50, a directory that mkdir would make setgid, and a
/// file another user owns.
#[test]
fn a_gnu_tar_of_a_setgid_directory_unpacks_as_gnu_tar_extracts_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    use std::os::unix::fs::chown;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let shared = src.join("shared");
    fs::create_dir_all(&shared).unwrap();
    chown(&shared, Some(0), Some(50)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2775)).unwrap();
    for (name, gid) in [("root-group", 0), ("dir-group", 50)] {
        fs::write(shared.join(name), name).unwrap();
        chown(shared.join(name), Some(0), Some(gid)).unwrap();
    }
    let sub = shared.join("sub");
    fs::create_dir(&sub).unwrap();
    chown(&sub, Some(0), Some(0)).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("theirs"), b"t").unwrap();
    chown(src.join("theirs"), Some(1234), Some(0)).unwrap();
    let archive = work.path().join("layer.tar");
    let status = std::process::Command::new("tar")
        .args(["-c", "--numeric-owner", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "GNU tar failed");

    let sb = Sandbox::new();
    let opts = ApplyOptions {
        preserve_ownership: true,
        ..opts()
    };
    sb.apply(&[fs::read(&archive).unwrap()], &opts).unwrap();
    let oracle = work.path().join("gnu");
    test_registry::gnu_tar_extract(&archive, &oracle).unwrap();
    let how = test_registry::Compare::default();
    let differences = test_registry::Tree::of(&sb.root)
        .unwrap()
        .differences(&test_registry::Tree::of(&oracle).unwrap(), &how);
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(
        sb.meta("shared/sub").gid(),
        0,
        "the oracle kept the tar's group"
    );
}

#[test]
fn xattrs_are_applied_and_a_failed_one_is_only_a_warning() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(with_pax(
            RawEntry::file("f", b"x"),
            "SCHILY.xattr.user.origin",
            b"haul",
        ))
        .raw_entry(with_pax(
            RawEntry::dir("d"),
            "SCHILY.xattr.user.dir",
            b"yes",
        ))
        // Not a valid capability blob: refused by the kernel (EINVAL, or EPERM rootless).
        .raw_entry(with_pax(
            RawEntry::file("cap", b"y"),
            "SCHILY.xattr.security.capability",
            b"junk",
        ))
        .finish_tar();
    let stats = sb.apply_ok(&[layer]);
    assert_eq!(stats[0].warnings.len(), 1, "{:?}", stats[0].warnings);
    assert!(
        stats[0].warnings[0].contains("cap"),
        "{:?}",
        stats[0].warnings
    );
    let get = |p: &str, name: &str| {
        let mut buf = vec![0u8; 64];
        let n = rustix::fs::lgetxattr(sb.root.join(p), name, &mut buf[..]).unwrap();
        buf.truncate(n);
        buf
    };
    assert_eq!(get("f", "user.origin"), b"haul");
    assert_eq!(get("d", "user.dir"), b"yes");
    assert_eq!(
        sb.tree(),
        expect(vec![
            file("cap", 0o644, b"y"),
            dir("d", 0o755),
            file("f", 0o644, b"x")
        ])
    );

    // Switched off, the records are ignored altogether.
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(with_pax(
            RawEntry::file("f", b"x"),
            "SCHILY.xattr.security.capability",
            b"junk",
        ))
        .finish_tar();
    let stats = sb
        .apply(
            &[layer],
            &ApplyOptions {
                xattrs: false,
                ..opts()
            },
        )
        .unwrap();
    assert!(stats[0].warnings.is_empty());
}

#[test]
fn reading_stops_at_the_end_of_archive_leaving_the_rest_to_the_caller() {
    let sb = Sandbox::new();
    let mut tar = LayerBuilder::new().add_file("f", b"x", 0o644).finish_tar();
    tar.extend_from_slice(b"trailing bytes the caller still has to hash");
    let mut cursor = Cursor::new(&tar);
    apply_layer(&sb.root, &mut cursor, &opts()).unwrap();
    assert!((cursor.position() as usize) < tar.len() - 40);
}

// ---------------------------------------------------------------------------------------------
// Whiteouts

#[test]
fn whiteouts_remove_files_trees_and_symlinks_but_not_their_targets() {
    let sb = Sandbox::new();
    let lower = LayerBuilder::new()
        .add_file("a/f", b"f", 0o644)
        .add_file("a/g", b"g", 0o644)
        .add_dir("tree/x/y", 0o755)
        .add_file("tree/x/y/z", b"z", 0o644)
        .add_symlink("tree/x/loop", "..")
        .add_dir("real", 0o755)
        .add_file("real/kept", b"k", 0o644)
        .add_symlink("ln", "real")
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_whiteout("a/f")
        .add_whiteout("tree")
        .add_whiteout("ln")
        .add_whiteout("never-existed")
        .add_whiteout("missing-dir/x")
        .finish_tar();
    let stats = sb.apply_ok(&[lower, upper]);
    assert_eq!(stats[1].entries, 5);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("a", 0o755),
            file("a/g", 0o644, b"g"),
            dir("real", 0o755),
            file("real/kept", 0o644, b"k"),
        ])
    );
}

#[test]
fn whiteout_through_a_symlink_from_a_lower_layer_stays_inside() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let outside = outside.to_str().unwrap();
    let lower = LayerBuilder::new()
        .add_symlink("abs", outside)
        .add_symlink("rel", "../../../../../../outside")
        .add_symlink("up", "../../..")
        .add_file("outside/sentinel", b"inside copy", 0o644)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_whiteout("abs/sentinel")
        .add_whiteout("abs/dir")
        .add_whiteout("rel/sentinel")
        .add_whiteout("up/outside")
        .finish_tar();
    sb.apply_ok(&[lower, upper]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            symlink("abs", outside),
            symlink("rel", "../../../../../../outside"),
            symlink("up", "../../.."),
        ])
    );
}

#[test]
fn opaque_directory_keeps_this_layers_entries_wherever_the_marker_is() {
    let lower = || {
        LayerBuilder::new()
            .add_file("d/old", b"old", 0o644)
            .add_file("d/sub/old2", b"old2", 0o644)
            .add_file("d/replaced", b"lower", 0o644)
            .add_file("other/kept", b"k", 0o644)
            .finish_tar()
    };
    let want = expect(vec![
        dir("d", 0o755),
        file("d/new", 0o644, b"new"),
        file("d/replaced", 0o600, b"upper"),
        dir("d/sub", 0o755),
        file("d/sub/new2", 0o644, b"new2"),
        dir("other", 0o755),
        file("other/kept", 0o644, b"k"),
    ]);

    let marker_first = LayerBuilder::new()
        .add_dir("d", 0o755)
        .add_opaque_whiteout("d")
        .add_file("d/new", b"new", 0o644)
        .add_file("d/replaced", b"upper", 0o600)
        .add_file("d/sub/new2", b"new2", 0o644)
        .finish_tar();
    let sb = Sandbox::new();
    sb.apply_ok(&[lower(), marker_first]);
    assert_eq!(sb.tree(), want, "marker before its siblings");

    // `d/sub` exists below and is only implied here: kept, but emptied of what lies below.
    let marker_last = LayerBuilder::new()
        .add_dir("d", 0o755)
        .add_file("d/new", b"new", 0o644)
        .add_file("d/replaced", b"upper", 0o600)
        .add_file("d/sub/new2", b"new2", 0o644)
        .add_opaque_whiteout("d")
        .finish_tar();
    let sb = Sandbox::new();
    sb.apply_ok(&[lower(), marker_last]);
    assert_eq!(sb.tree(), want, "marker after its siblings");
}

#[test]
fn opaque_root_and_same_layer_whiteout_only_hide_lower_layers() {
    let sb = Sandbox::new();
    let lower = LayerBuilder::new()
        .add_file("a", b"a", 0o644)
        .add_file("b", b"b", 0o644)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_file("c", b"c", 0o644)
        .add_whiteout("c") // same layer: the spec says it cannot hide c
        .raw_entry(RawEntry::file(".wh..wh..opq", b""))
        .finish_tar();
    sb.apply_ok(&[lower, upper]);
    assert_eq!(sb.tree(), expect(vec![file("c", 0o644, b"c")]));
}

#[test]
fn aufs_metadata_is_skipped() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_dir(".wh..wh.plnk", 0o700)
        .add_file(".wh..wh.plnk/1234.5678", b"x", 0o644)
        .add_file(".wh..wh.aufs", b"", 0o644)
        .add_file("a/.wh..wh.orph", b"", 0o644)
        .add_file("kept", b"k", 0o644)
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(sb.tree(), expect(vec![file("kept", 0o644, b"k")]));
}

#[test]
fn whiteouts_of_the_directory_itself_or_its_parent_are_refused() {
    for name in ["a/.wh.", "a/.wh..", "a/.wh...", ".wh.."] {
        let sb = Sandbox::new();
        let lower = LayerBuilder::new()
            .add_file("a/f", b"f", 0o644)
            .finish_tar();
        let layer = LayerBuilder::new()
            .raw_entry(RawEntry::file(name, b""))
            .finish_tar();
        let err = sb.apply(&[lower, layer], &opts()).unwrap_err();
        assert!(
            matches!(err, ApplyError::BadWhiteout { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(
            sb.tree(),
            expect(vec![dir("a", 0o755), file("a/f", 0o644, b"f")]),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Escapes

#[test]
fn names_climbing_above_the_root_are_refused() {
    for name in [
        "../escape",
        "a/../../escape",
        "/../escape",
        "./../outside/sentinel",
        "..",
    ] {
        let sb = Sandbox::new();
        let layer = LayerBuilder::new()
            .add_file("first", b"1", 0o644)
            .raw_entry(RawEntry::file(name, b"pwned"))
            .finish_tar();
        let err = sb.apply(&[layer], &opts()).unwrap_err();
        match &err {
            ApplyError::Escape { path } => assert_eq!(path, Path::new(name)),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!sb.tmp.path().join("escape").exists(), "{name}");
        assert_eq!(
            sb.tree(),
            expect(vec![file("first", 0o644, b"1")]),
            "{name}"
        );
    }
    // A directory entry climbing out, and a symlink or hardlink *named* with `..`.
    for entry in [
        RawEntry::dir("../escape/"),
        RawEntry::symlink("x/../../escape", "/"),
        RawEntry::hardlink("../escape", "first"),
    ] {
        let sb = Sandbox::new();
        let layer = LayerBuilder::new().raw_entry(entry.clone()).finish_tar();
        let err = sb.apply(&[layer], &opts()).unwrap_err();
        assert!(
            matches!(err, ApplyError::Escape { .. }),
            "{entry:?}: {err:?}"
        );
        assert_eq!(sb.tree(), vec![]);
    }
}

#[test]
fn dotdot_that_stays_inside_is_resolved_lexically() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(RawEntry::file("a/b/../c", b"c"))
        .raw_entry(RawEntry::file("./x/./y/..//z", b"z"))
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("a", 0o755),
            file("a/c", 0o644, b"c"),
            dir("x", 0o755),
            file("x/z", 0o644, b"z"),
        ])
    );
}

#[test]
fn absolute_names_land_inside_the_root() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let sentinel = outside.join("sentinel");
    let layer = LayerBuilder::new()
        .raw_entry(RawEntry::file("/abs/file", b"a"))
        .raw_entry(RawEntry::file("/etc/haul-apply-canary", b"c"))
        .raw_entry(RawEntry::file(sentinel.to_str().unwrap(), b"inside"))
        .raw_entry(RawEntry::dir("/"))
        .finish_tar();
    sb.apply_ok(&[layer]);
    let inner = sentinel.strip_prefix("/").unwrap();
    let mut want = vec![
        dir("abs", 0o755),
        file("abs/file", 0o644, b"a"),
        dir("etc", 0o755),
        file("etc/haul-apply-canary", 0o644, b"c"),
        file(inner.to_str().unwrap(), 0o644, b"inside"),
    ];
    for parent in inner.ancestors().skip(1) {
        if !parent.as_os_str().is_empty() {
            want.push(dir(parent.to_str().unwrap(), 0o755));
        }
    }
    assert_eq!(sb.tree(), expect(want));
}

#[test]
fn writing_through_a_symlink_to_a_host_directory_lands_inside() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let outside = outside.to_str().unwrap();
    let inner = outside.trim_start_matches('/');
    // Planted by a lower layer, or earlier in the same one.
    let lower = LayerBuilder::new()
        .add_symlink("hostetc", "/etc")
        .add_symlink("out", outside)
        .finish_tar();
    let upper = LayerBuilder::new()
        .add_file("hostetc/haul-apply-canary", b"canary", 0o644)
        .add_file("out/sentinel", b"pwned", 0o644)
        .add_dir("out/dir", 0o700)
        .add_symlink("same-layer", "/etc")
        .add_file("same-layer/passwd", b"root::0:0::/:/bin/sh\n", 0o644)
        .finish_tar();
    sb.apply_ok(&[lower, upper]);
    let mut want = vec![
        dir("etc", 0o755),
        file("etc/haul-apply-canary", 0o644, b"canary"),
        file("etc/passwd", 0o644, b"root::0:0::/:/bin/sh\n"),
        symlink("hostetc", "/etc"),
        symlink("out", outside),
        symlink("same-layer", "/etc"),
        file(&format!("{inner}/sentinel"), 0o644, b"pwned"),
        dir(&format!("{inner}/dir"), 0o700),
    ];
    for parent in Path::new(inner).ancestors() {
        if !parent.as_os_str().is_empty() {
            want.push(dir(parent.to_str().unwrap(), 0o755));
        }
    }
    assert_eq!(sb.tree(), expect(want));
}

#[test]
fn symlink_named_like_its_absolute_target_is_a_loop_not_an_escape() {
    // Inside the root `etc -> /etc` points at itself: the kernel says ELOOP, as in a chroot.
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_symlink("etc", "/etc")
        .add_file("etc/haul-apply-canary", b"pwned", 0o644)
        .finish_tar();
    let err = sb.apply(&[layer], &opts()).unwrap_err();
    assert_eq!(
        errno(&err),
        Some(rustix::io::Errno::LOOP.raw_os_error()),
        "{err:?}"
    );
    assert_eq!(sb.tree(), expect(vec![symlink("etc", "/etc")]));
}

#[test]
fn relative_symlink_climbing_out_is_clamped_at_the_root() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_symlink("x", "../../..")
        .add_file("x/y", b"y", 0o644)
        .add_symlink("a/b", "../../../outside")
        .add_file("a/b/sentinel", b"pwned", 0o644)
        .raw_entry(RawEntry::file("x/outside/dir/inner", b"pwned"))
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("a", 0o755),
            symlink("a/b", "../../../outside"),
            dir("outside", 0o755),
            dir("outside/dir", 0o755),
            file("outside/dir/inner", 0o644, b"pwned"),
            file("outside/sentinel", 0o644, b"pwned"),
            symlink("x", "../../.."),
            file("y", 0o644, b"y"),
        ])
    );
}

#[test]
fn entry_over_a_symlink_replaces_the_symlink_instead_of_following_it() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let sentinel = outside.join("sentinel");
    let layer = LayerBuilder::new()
        .add_symlink("f", sentinel.to_str().unwrap())
        .add_file("f", b"new", 0o644)
        .add_symlink("d", outside.to_str().unwrap())
        .add_dir("d", 0o700)
        .add_symlink("l", sentinel.to_str().unwrap())
        .add_symlink("l", "elsewhere")
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("d", 0o700),
            file("f", 0o644, b"new"),
            symlink("l", "elsewhere")
        ])
    );
}

#[test]
fn hardlinks_that_escape_are_refused_and_absolute_ones_confined() {
    let outside_of = |sb: &Sandbox| sb.outside().join("sentinel").to_str().unwrap().to_owned();
    // Targets that climb out.
    for target in ["../../outside/sentinel", "../outside/sentinel", "a/../../x"] {
        let sb = Sandbox::new();
        let layer = LayerBuilder::new()
            .raw_entry(RawEntry::hardlink("h", target))
            .finish_tar();
        let err = sb.apply(&[layer], &opts()).unwrap_err();
        match &err {
            ApplyError::BadHardlink {
                problem: HardlinkProblem::EscapesRoot,
                path,
                ..
            } => {
                assert_eq!(path, Path::new("h"))
            }
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(sb.tree(), vec![], "{target}");
    }
    // Absolute targets are inside the root: missing there, so refused.
    let sb = Sandbox::new();
    for target in ["/etc/passwd".to_owned(), outside_of(&sb)] {
        let layer = LayerBuilder::new()
            .raw_entry(RawEntry::hardlink("h", &target))
            .finish_tar();
        let err = sb.apply(&[layer], &opts()).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::BadHardlink {
                    problem: HardlinkProblem::Missing,
                    ..
                }
            ),
            "{target}: {err:?}"
        );
    }
    // ...and linked to the root's own file when it exists there.
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .add_file("etc/passwd", b"image passwd", 0o644)
        .raw_entry(RawEntry::hardlink("h", "/etc/passwd"))
        .finish_tar();
    sb.apply_ok(&[layer]);
    assert_eq!(
        sb.tree(),
        expect(vec![
            dir("etc", 0o755),
            linked("etc/passwd", 0o644, b"image passwd", 2),
            linked("h", 0o644, b"image passwd", 2),
        ])
    );
}

#[test]
fn hardlink_through_a_planted_symlink_stays_inside() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let lower = LayerBuilder::new()
        .add_symlink("abs", outside.to_str().unwrap())
        .add_symlink("rel", "../../outside")
        .add_file("outside/sentinel", b"inside copy", 0o644)
        .finish_tar();
    // Through `abs`: the target is looked up inside the root, where it does not exist.
    let through_abs = LayerBuilder::new()
        .raw_entry(RawEntry::hardlink("h", "abs/sentinel"))
        .finish_tar();
    let err = sb.apply(&[lower, through_abs], &opts()).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::BadHardlink {
                problem: HardlinkProblem::Missing,
                ..
            }
        ),
        "{err:?}"
    );
    // Through `rel` (clamped to the root's own `outside`), and a link *named* through `abs`.
    let through_rel = LayerBuilder::new()
        .raw_entry(RawEntry::hardlink("h", "rel/sentinel"))
        .raw_entry(RawEntry::hardlink("abs/linked", "h"))
        .finish_tar();
    sb.apply_ok(&[through_rel]);
    let inner = outside.strip_prefix("/").unwrap();
    let mut want = vec![
        symlink("abs", outside.to_str().unwrap()),
        linked("h", 0o644, b"inside copy", 3),
        dir("outside", 0o755),
        linked("outside/sentinel", 0o644, b"inside copy", 3),
        symlink("rel", "../../outside"),
        linked(
            inner.join("linked").to_str().unwrap(),
            0o644,
            b"inside copy",
            3,
        ),
    ];
    for parent in inner.ancestors() {
        if !parent.as_os_str().is_empty() && parent != Path::new("outside") {
            want.push(dir(parent.to_str().unwrap(), 0o755));
        }
    }
    assert_eq!(sb.tree(), expect(want));
}

#[test]
fn hardlinks_to_directories_missing_targets_and_themselves_are_refused() {
    let cases: &[(&str, &str, HardlinkProblem)] = &[
        ("h", "d", HardlinkProblem::Directory),
        ("h", "d/", HardlinkProblem::Directory),
        ("h", ".", HardlinkProblem::Directory),
        ("h", "/", HardlinkProblem::Directory),
        ("h", "nothing", HardlinkProblem::Missing),
        ("h", "d/nothing/deeper", HardlinkProblem::Missing),
        ("h", "./h", HardlinkProblem::ItSelf),
    ];
    for (path, target, problem) in cases {
        let sb = Sandbox::new();
        let layer = LayerBuilder::new()
            .add_dir("d", 0o755)
            .raw_entry(RawEntry::hardlink(path, target))
            .finish_tar();
        let err = sb.apply(&[layer], &opts()).unwrap_err();
        match &err {
            ApplyError::BadHardlink {
                problem: got,
                target: t,
                ..
            } => {
                assert_eq!((got, t.as_path()), (problem, Path::new(target)))
            }
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(sb.tree(), expect(vec![dir("d", 0o755)]), "{target}");
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed tars

#[test]
fn truncated_tars_are_errors() {
    let big = vec![7u8; 2000];
    let full = LayerBuilder::new()
        .add_file("a", b"a", 0o644)
        .add_file("big", &big, 0o644)
        .finish_tar();
    // Inside the content of `big` (its header is at 1024, its data from 1536).
    let sb = Sandbox::new();
    let err = sb.apply(&[full[..2000].to_vec()], &opts()).unwrap_err();
    match err {
        ApplyError::TruncatedEntry {
            path,
            expected,
            actual,
        } => {
            assert_eq!((path, expected, actual), (PathBuf::from("big"), 2000, 464))
        }
        other => panic!("{other:?}"),
    }
    // At an entry boundary, without the end-of-archive blocks: the end of the archive, as Go's
    // archive/tar takes it (umoci 0.4.7 writes such layers); the diff_id proves it complete.
    let sb = Sandbox::new();
    let cut = full[..full.len() - 1024].to_vec();
    assert_eq!(sb.apply_ok(&[cut])[0].entries, 2);
    // Inside a header.
    let sb = Sandbox::new();
    let err = sb
        .apply(&[full[..1024 + 100].to_vec()], &opts())
        .unwrap_err();
    assert!(matches!(err, ApplyError::Tar { .. }), "{err:?}");
    // Nothing at all: an empty layer, as for Go's archive/tar.
    let sb = Sandbox::new();
    assert_eq!(sb.apply_ok(&[Vec::new()])[0].entries, 0);
}

#[test]
fn empty_layer_with_only_end_of_archive_is_fine() {
    let sb = Sandbox::new();
    let stats = sb.apply_ok(&[LayerBuilder::new().finish_tar()]);
    assert_eq!(stats[0].entries, 0);
    assert_eq!(sb.tree(), vec![]);
}

#[test]
fn corrupt_header_checksum_is_a_tar_error() {
    let sb = Sandbox::new();
    let mut tar = LayerBuilder::new().add_file("a", b"a", 0o644).finish_tar();
    tar[0] ^= 0x20;
    let err = sb.apply(&[tar], &opts()).unwrap_err();
    assert!(matches!(err, ApplyError::Tar { .. }), "{err:?}");
}

#[test]
fn unsupported_entries_are_named_in_the_error() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(raw("vol", EntryType::new(b'V')))
        .finish_tar();
    let err = sb.apply(&[layer], &opts()).unwrap_err();
    match &err {
        ApplyError::UnsupportedType { path, typeflag } => {
            assert_eq!((path.as_path(), *typeflag), (Path::new("vol"), b'V'))
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("vol"), "{err}");

    let sb = Sandbox::new();
    let sparse = with_pax(
        RawEntry::file("sparse", b"map+data"),
        "GNU.sparse.major",
        b"1",
    );
    let layer = LayerBuilder::new().raw_entry(sparse).finish_tar();
    let err = sb.apply(&[layer], &opts()).unwrap_err();
    assert!(matches!(&err, ApplyError::UnsupportedSparse { path } if path == Path::new("sparse")));

    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(RawEntry::file("./", b""))
        .finish_tar();
    let err = sb.apply(&[layer], &opts()).unwrap_err();
    assert!(
        matches!(err, ApplyError::RootNotDirectory { .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sparse files

/// A PAX sparse entry (GNU 1.0): the map heads the data, padded to a block.
fn sparse_v1(path: &str, name: &str, real_size: &str, map: &str, data: &[u8]) -> RawEntry {
    let mut content = map.as_bytes().to_vec();
    content.resize(content.len().div_ceil(512) * 512, 0);
    content.extend_from_slice(data);
    let mut entry = RawEntry::file(path, &content);
    for (key, value) in [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", name),
        ("GNU.sparse.realsize", real_size),
    ] {
        entry = with_pax(entry, key, value.as_bytes());
    }
    entry
}

/// A PAX sparse entry (GNU 0.1): the map in a record.
fn sparse_v01(path: &str, real_size: &str, map: &str, data: &[u8]) -> RawEntry {
    let mut entry = RawEntry::file(path, data);
    for (key, value) in [
        ("GNU.sparse.major", "0"),
        ("GNU.sparse.minor", "1"),
        ("GNU.sparse.size", real_size),
        ("GNU.sparse.map", map),
    ] {
        entry = with_pax(entry, key, value.as_bytes());
    }
    entry
}

#[test]
fn a_sparse_file_is_written_as_its_runs_and_holes() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(sparse_v1(
            "GNUSparseFile.0/s",
            "s",
            "20",
            "2\n2\n3\n15\n2\n",
            b"abcxy",
        ))
        .finish_tar();
    sb.apply_ok(&[layer]);
    let mut want = vec![0u8; 20];
    want[2..5].copy_from_slice(b"abc");
    want[15..17].copy_from_slice(b"xy");
    assert_eq!(sb.tree(), vec![file("s", 0o644, &want)]);
}

#[test]
fn a_sparse_name_climbing_out_of_the_root_is_refused() {
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .raw_entry(sparse_v1(
            "GNUSparseFile.0/x",
            "../outside/sentinel",
            "3",
            "1\n0\n3\n",
            b"own",
        ))
        .finish_tar();
    let err = sb.apply(&[layer], &opts()).unwrap_err();
    assert!(matches!(err, ApplyError::Escape { .. }), "{err:?}");
    assert_eq!(
        fs::read(sb.outside().join("sentinel")).unwrap(),
        b"do not touch"
    );
}

#[test]
fn sparse_maps_that_lie_are_refused() {
    use haul::unpack::SparseProblem;
    let cases: Vec<(&str, RawEntry, SparseProblem)> = vec![
        (
            "overlapping runs",
            sparse_v01("s", "10", "0,4,2,4", b"abcdefgh"),
            SparseProblem::BadRuns,
        ),
        (
            "a run past the real size",
            sparse_v01("s", "10", "8,4", b"abcd"),
            SparseProblem::BadRuns,
        ),
        (
            "runs that are not the data",
            sparse_v01("s", "10", "0,4", b"abcdefgh"),
            SparseProblem::DataMismatch,
        ),
        (
            "a count the data cannot hold",
            sparse_v1("s", "s", "10", "1000000\n0\n1\n", b"a"),
            SparseProblem::BadMap,
        ),
        (
            "a number that is not one",
            sparse_v1("s", "s", "10", "1\n-1\n1\n", b"a"),
            SparseProblem::BadNumber,
        ),
        (
            "a sparse symlink",
            with_pax(
                with_pax(RawEntry::symlink("s", "t"), "GNU.sparse.size", b"1"),
                "GNU.sparse.map",
                b"0,0",
            ),
            SparseProblem::NotAFile,
        ),
    ];
    for (what, entry, want) in cases {
        let sb = Sandbox::new();
        let layer = LayerBuilder::new().raw_entry(entry).finish_tar();
        match sb.apply(&[layer], &opts()) {
            Err(ApplyError::BadSparse { problem, .. }) => assert_eq!(problem, want, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}
