//! Snapshots of a directory tree compared entry by entry: what "haul's root filesystem equals the
//! oracle's" means in the tests. An entry is its name, type, permission bits (setuid, setgid and
//! sticky included), numeric owner, size and sha256 for a file, target for a symlink, device
//! numbers, which other names share its inode (hardlinks), extended attributes and mtime.
//!
//! ```no_run
//! use test_registry::{Compare, Tree};
//! # fn demo(ours: &std::path::Path, oracle: &std::path::Path) -> std::io::Result<()> {
//! let ours = Tree::of(ours)?;
//! let theirs = Tree::of(oracle)?;
//! assert_eq!(ours.differences(&theirs, &Compare::default()), Vec::<String>::new());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file: its size and a digest of its content.
    File {
        /// Bytes.
        size: u64,
        /// `sha256:<hex>` over the content with runs of zeros as their length (holes and written
        /// zeros alike).
        sha256: String,
    },
    /// A symbolic link and its target, byte for byte.
    Symlink(PathBuf),
    /// A named pipe.
    Fifo,
    /// A character device (`rdev`).
    CharDevice(u64),
    /// A block device (`rdev`).
    BlockDevice(u64),
    /// A Unix socket.
    Socket,
}

/// One entry of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Type, and content where it has one.
    pub kind: NodeKind,
    /// `st_mode & 0o7777` (not compared for symlinks, whose mode means nothing on Linux).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Extended attributes (name, value).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a file with other names in the tree: the first of them in byte order (the same for
    /// every member of the group).
    pub hardlink_group: Option<PathBuf>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            NodeKind::Dir => write!(f, "dir {:o}", self.mode)?,
            NodeKind::File { size, sha256 } => {
                write!(f, "file {:o} {size} bytes {}", self.mode, &sha256[..19])?
            }
            NodeKind::Symlink(t) => write!(f, "symlink -> {}", t.display())?,
            NodeKind::Fifo => write!(f, "fifo {:o}", self.mode)?,
            NodeKind::CharDevice(r) => write!(f, "char device {r:#x} {:o}", self.mode)?,
            NodeKind::BlockDevice(r) => write!(f, "block device {r:#x} {:o}", self.mode)?,
            NodeKind::Socket => write!(f, "socket {:o}", self.mode)?,
        }
        write!(f, " {}:{} mtime {}", self.uid, self.gid, self.mtime)?;
        if let Some(g) = &self.hardlink_group {
            write!(f, " linked with {}", g.display())?;
        }
        for (k, v) in &self.xattrs {
            write!(
                f,
                " xattr {}={:?}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )?;
        }
        Ok(())
    }
}

/// What [`Tree::differences`] looks at besides names, types, modes, sizes, contents and link
/// targets, which it always compares.
#[derive(Clone, Debug)]
pub struct Compare {
    /// Numeric owners.
    pub owners: bool,
    /// Modification times (seconds) of everything but symlinks and the root.
    pub mtimes: bool,
    /// Extended attributes.
    pub xattrs: bool,
    /// Hardlink groups.
    pub hardlinks: bool,
    /// Extended attributes left out of the comparison, by name.
    pub ignored_xattrs: &'static [&'static str],
    /// Mtimes at or after this (seconds) are not compared: an extractor gives "now" to parent
    /// directories the tar does not list, and two extractors' "now" differ.
    pub made_now_since: Option<i64>,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            owners: true,
            mtimes: false,
            xattrs: true,
            hardlinks: true,
            ignored_xattrs: &[],
            made_now_since: None,
        }
    }
}

/// Every entry under a root (the root itself excluded), by path relative to it.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// The entries, by relative path.
    pub nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    /// Walks `root` without following symlinks.
    pub fn of(root: &Path) -> io::Result<Tree> {
        let mut nodes = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        walk(root, Path::new(""), &mut nodes, &mut inodes)?;
        for mut names in inodes.into_values() {
            if names.len() > 1 {
                names.sort();
                let first = names[0].clone();
                for n in names {
                    if let Some(node) = nodes.get_mut(&n) {
                        node.hardlink_group = Some(first.clone());
                    }
                }
            }
        }
        Ok(Tree { nodes })
    }

    /// One line per difference between `self` ("ours") and `oracle`; empty when they agree.
    pub fn differences(&self, oracle: &Tree, how: &Compare) -> Vec<String> {
        let mut out = Vec::new();
        let mut paths: Vec<&PathBuf> = self.nodes.keys().chain(oracle.nodes.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let (ours, theirs) = (self.nodes.get(path), oracle.nodes.get(path));
            match (ours, theirs) {
                (Some(o), None) => out.push(format!("{}: only ours ({o})", path.display())),
                (None, Some(t)) => out.push(format!("{}: only the oracle's ({t})", path.display())),
                (Some(o), Some(t)) => {
                    let (o, t) = (masked(o, how), masked(t, how));
                    if o != t {
                        out.push(format!("{}: ours {o}, the oracle's {t}", path.display()));
                    }
                }
                (None, None) => {}
            }
        }
        out
    }

    /// The entry at `path` (relative).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(Path::new(path))
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, node) in &self.nodes {
            writeln!(f, "{} {node}", path.display())?;
        }
        Ok(())
    }
}

/// Panics with the differences (and both trees) unless `ours` and `oracle` agree.
pub fn assert_same_tree(ours: &Path, oracle: &Path, how: &Compare, what: &str) {
    let (o, t) = match (Tree::of(ours), Tree::of(oracle)) {
        (Ok(o), Ok(t)) => (o, t),
        (o, t) => panic!("{what}: cannot read the trees: {o:?} / {t:?}"),
    };
    let diff = o.differences(&t, how);
    assert!(
        diff.is_empty(),
        "{what}: haul's tree differs from the oracle's:\n  {}\n--- ours\n{o}--- the oracle's\n{t}",
        diff.join("\n  ")
    );
}

fn masked(node: &Node, how: &Compare) -> Node {
    let mut n = node.clone();
    if matches!(n.kind, NodeKind::Symlink(_)) {
        n.mode = 0;
        n.mtime = 0;
    }
    if !how.owners {
        (n.uid, n.gid) = (0, 0);
    }
    if !how.mtimes || how.made_now_since.is_some_and(|t| n.mtime >= t) {
        n.mtime = 0;
    }
    if !how.xattrs {
        n.xattrs.clear();
    }
    n.xattrs.retain(|k, _| {
        !how.ignored_xattrs
            .iter()
            .any(|i| i.as_bytes() == k.as_slice())
    });
    if !how.hardlinks {
        n.hardlink_group = None;
    }
    n
}

fn walk(
    root: &Path,
    rel: &Path,
    nodes: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>,
) -> io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            NodeKind::Symlink(std::fs::read_link(&path)?)
        } else if ft.is_file() {
            NodeKind::File {
                size: meta.len(),
                sha256: content_digest(&path, meta.len())?,
            }
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_char_device() {
            NodeKind::CharDevice(meta.rdev())
        } else if ft.is_block_device() {
            NodeKind::BlockDevice(meta.rdev())
        } else {
            NodeKind::Socket
        };
        if ft.is_file() && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
        let is_dir = ft.is_dir();
        nodes.insert(
            rel.clone(),
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                xattrs: xattrs(&path)?,
                hardlink_group: None,
            },
        );
        if is_dir {
            walk(root, &rel, nodes, inodes)?;
        }
    }
    Ok(())
}

/// A digest of the file's bytes that reads only its data regions (a 60 GB sparse file costs what
/// its data does) and is the same whether zeros are written or left as holes: runs of zero bytes
/// are hashed as their length (a 0 byte, then the length), everything else as it is.
fn content_digest(path: &Path, size: u64) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut hasher = ZeroRuns::default();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while pos < size {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        hasher.zeros(data - pos);
        pos = data;
        if pos >= size {
            break;
        }
        let hole = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(pos)) {
            Ok(h) => h.min(size),
            Err(e) => return Err(e.into()),
        };
        while pos < hole {
            let want = buf.len().min((hole - pos) as usize);
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf[..want], pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being read", path.display()),
                ));
            }
            hasher.bytes(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(hasher.finish())
}

/// sha256 over a byte stream with runs of zeros replaced by their length.
#[derive(Default)]
struct ZeroRuns {
    hasher: Sha256,
    run: u64,
}

impl ZeroRuns {
    fn zeros(&mut self, n: u64) {
        self.run += n;
    }

    fn bytes(&mut self, mut bytes: &[u8]) {
        const BLOCK: usize = 4096;
        static ZEROS: [u8; BLOCK] = [0; BLOCK];
        while !bytes.is_empty() {
            // Whole zero blocks by comparison (fast in unoptimised test builds too).
            if bytes.len() >= BLOCK && bytes[..BLOCK] == ZEROS {
                self.run += BLOCK as u64;
                bytes = &bytes[BLOCK..];
                continue;
            }
            let (mut piece, rest) = bytes.split_at(bytes.len().min(BLOCK));
            bytes = rest;
            while !piece.is_empty() {
                let zeros = piece.iter().take_while(|b| **b == 0).count();
                self.run += zeros as u64;
                piece = &piece[zeros..];
                let data = piece.iter().take_while(|b| **b != 0).count();
                if data > 0 {
                    self.flush_run();
                    self.hasher.update(&piece[..data]);
                    piece = &piece[data..];
                }
            }
        }
    }

    fn flush_run(&mut self) {
        if self.run > 0 {
            self.hasher.update([0u8]);
            self.hasher.update(self.run.to_le_bytes());
            self.run = 0;
        }
    }

    fn finish(mut self) -> String {
        self.flush_run();
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

/// The extended attributes of `path` itself (not followed).
fn xattrs(path: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        // Symlinks on some file systems, or no xattr support at all.
        Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 * 1024];
        let name_os = std::ffi::OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr(path, name_os, &mut value)?;
        value.truncate(len);
        out.insert(OsString::from(name_os).into_vec(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_and_written_zeros_hash_alike_and_content_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("written");
        let mut f = std::fs::File::create(&written).unwrap();
        f.write_all(&vec![0u8; 3 << 20]).unwrap();
        f.write_all(b"tail").unwrap();
        let holey = dir.path().join("holey");
        let mut f = std::fs::File::create(&holey).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        let other = dir.path().join("other");
        let mut f = std::fs::File::create(&other).unwrap();
        f.seek(SeekFrom::Start((3 << 20) + 1)).unwrap();
        f.write_all(b"ail").unwrap();
        let size = (3 << 20) + 4;
        let a = content_digest(&written, size).unwrap();
        assert_eq!(a, content_digest(&holey, size).unwrap());
        assert_ne!(a, content_digest(&other, size).unwrap());
    }

    #[test]
    fn differences_name_each_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("d")).unwrap();
            std::fs::write(root.join("d/same"), "x").unwrap();
        }
        std::fs::write(a.join("d/f"), "one").unwrap();
        std::fs::write(b.join("d/f"), "two").unwrap();
        std::fs::write(a.join("only-a"), "").unwrap();
        let diff = Tree::of(&a)
            .unwrap()
            .differences(&Tree::of(&b).unwrap(), &Compare::default());
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("d/f: ours file"), "{diff:?}");
        assert!(diff[1].starts_with("only-a: only ours"), "{diff:?}");
    }
}
