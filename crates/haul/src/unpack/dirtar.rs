//! A cached layer directory (made by
//! [`apply_layer_for_cache`](super::apply::apply_layer_for_cache)) as a tar stream again, so that
//! [`apply_layer`](super::apply::apply_layer) replays the layer onto lower ones with its usual
//! semantics and confinement.
//!
//! Promises:
//! - **Deterministic order.** Parents before children. Within a directory its whiteouts come
//!   first, then the other names in byte order, and its opaque marker after everything below it,
//!   so that it hides exactly what lower layers left there whatever this layer put in it.
//!   [`DeferredLink`]s come last, in the order given.
//! - **What the applier reads back.** Type, mode with setuid/setgid/sticky, numeric owner, mtime
//!   with nanoseconds (PAX `mtime`), xattrs as PAX `SCHILY.xattr.*` (except `security.selinux`,
//!   the host's label rather than the layer's), device numbers, and a second path to an inode
//!   already in the stream as a hardlink entry. Long names go into PAX `path` and `linkpath`.
//!   Sockets, which no layer can create, are left out.
//! - **Directories the layer did not list** (marked by the applier) have no entry of their own:
//!   replaying their children leaves the lower layers' directory as it was, as the layer did.
//! - **Nothing is followed, nothing is changed.** Every name is opened relative to its directory
//!   with `O_NOFOLLOW`; symlinks are entries. The cache is only read, so any number of these may
//!   run over one directory at once: a cache built without root keeps its files and directories
//!   readable by their owner, and [`tar_cached`] is given the modes they really have.
//! - **Holes stay holes.** A file with holes in the cache is written as a PAX sparse entry
//!   (GNU format 1.0): its data runs and its real size, never the zeros.
//! - **Errors reach the reader.** The stream is produced on its own thread; a failure there ends
//!   the stream without the end-of-archive blocks and the reader's next read returns it.
//! - **By reference, for a merge** ([`tar_cached_by_reference`]): regular files of at least
//!   [`MIN_CLONE_BYTES`] without holes are entries of no content with a `HAUL.cache.size` PAX
//!   record, their data left in the cache for the applier to clone or copy from it
//!   ([`CloneSource`](super::apply::CloneSource)). Only the applier given that source reads the
//!   record; to any other reader they are empty files.
//!
//! Inside: this file walks the tree in stream order; `reading` reads the cache without
//! changing it, `headers` writes each entry's headers, `channel` carries the stream to the reader.

mod channel;
mod headers;
mod reading;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, fstat, readlinkat, statat};
use rustix::io::Errno;
use tar::EntryType;

use super::apply::{DeferredLink, MIN_CLONE_BYTES, names};
use channel::{ChunkWriter, spawn};
use headers::Meta;
use reading::{
    Exact, Node, Xattrs, data_runs, list, open_dir, open_file, real_modes, xattrs_at, xattrs_fd,
};

/// A tar stream of `dir` (a cached layer), produced on its own thread: entries in a deterministic
/// order (parents before children, names sorted), regular files, directories, symlinks, FIFOs and
/// devices, with mode (incl. setuid/sticky), numeric uid/gid, mtime with nanoseconds (PAX
/// `mtime`), xattrs as PAX `SCHILY.xattr.*`, and a second path to an already-emitted inode as a
/// hardlink entry. `extra_links` (the layer's deferred hardlinks) are appended at the end as
/// hardlink entries. See the module documentation for the details.
///
/// A complete stream ends with the end-of-archive blocks, which is all
/// [`apply_layer`](super::apply::apply_layer) reads.
///
/// # Errors
///
/// When `dir` cannot be opened as a directory, or the producing thread cannot start. Errors met
/// while walking the tree reach the reader instead: its next read returns them.
pub fn tar_dir(dir: &Path, extra_links: Vec<DeferredLink>) -> io::Result<impl Read + Send + use<>> {
    tar_cached(dir, extra_links, Vec::new())
}

/// [`tar_dir`] of a cached layer built without root: `modes` are the real modes of the files and
/// directories the cache keeps readable (one path, relative to `dir`, per inode), as returned by
/// the applier in [`ApplyStats::modes`](super::apply::ApplyStats::modes).
///
/// # Errors
///
/// As [`tar_dir`].
pub fn tar_cached(
    dir: &Path,
    extra_links: Vec<DeferredLink>,
    modes: Vec<(PathBuf, u32)>,
) -> io::Result<impl Read + Send + use<>> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| named(dir.as_os_str().as_bytes(), e.into()))?;
    stream(root, extra_links, modes, false)
}

/// [`tar_cached`] for a merge from the cache: regular files of [`MIN_CLONE_BYTES`] or more
/// (without holes) are referred to, not carried (see the module documentation).
///
/// # Errors
///
/// As [`tar_dir`].
pub(crate) fn tar_cached_by_reference(
    dir: &Path,
    extra_links: Vec<DeferredLink>,
    modes: Vec<(PathBuf, u32)>,
) -> io::Result<impl Read + Send + use<>> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| named(dir.as_os_str().as_bytes(), e.into()))?;
    stream(root, extra_links, modes, true)
}

fn stream(
    root: OwnedFd,
    extra_links: Vec<DeferredLink>,
    modes: Vec<(PathBuf, u32)>,
    by_reference: bool,
) -> io::Result<impl Read + Send + use<>> {
    spawn(move |tar| {
        let mut walker = Walker::new(tar);
        walker.by_reference = by_reference;
        walker.modes = real_modes(root.as_fd(), &modes)?;
        walker.tree(root)?;
        for link in &extra_links {
            walker.deferred(link)?;
        }
        Ok(())
    })
}

/// A directory being listed: its fd, its name in the tar (`""` or `"a/b/"`), the names still to
/// go and whether its opaque marker waits for the end.
struct Frame {
    dir: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
    opaque: bool,
}

struct Walker<'t> {
    tar: &'t mut tar::Builder<ChunkWriter>,
    /// Inodes with more than one link already in the stream, and their names there.
    linked: HashMap<(u64, u64), Vec<u8>>,
    /// Real modes of the inodes the cache keeps readable.
    modes: HashMap<(u64, u64), u32>,
    /// Header scratch for PAX records.
    pax: Vec<u8>,
    /// Refer to big regular files instead of carrying their data.
    by_reference: bool,
}

impl<'t> Walker<'t> {
    fn new(tar: &'t mut tar::Builder<ChunkWriter>) -> Self {
        Walker {
            tar,
            linked: HashMap::new(),
            modes: HashMap::new(),
            pax: Vec::new(),
            by_reference: false,
        }
    }

    /// The header metadata of `node`, with the mode the layer gives it.
    fn meta(&self, node: &Node, xattrs: Xattrs) -> Meta {
        let mut meta = node.meta(xattrs);
        if let Some(&mode) = self.modes.get(&node.inode) {
            meta.mode = mode;
        }
        meta
    }

    fn tree(&mut self, root: OwnedFd) -> io::Result<()> {
        let st = fstat(&root).map_err(|e| named(b".", e.into()))?;
        let node = Node::of(&st);
        let listing = list(root.as_fd()).map_err(|e| named(b".", e.into()))?;
        if !listing.implicit {
            let xattrs = xattrs_fd(root.as_fd()).map_err(|e| named(b".", e.into()))?;
            let meta = self.meta(&node, xattrs);
            self.append(EntryType::Directory, b"./", None, &meta, None)?;
        }
        let mut stack = vec![Frame {
            dir: root,
            prefix: Vec::new(),
            names: listing.names.into_iter(),
            opaque: listing.opaque,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let Some(frame) = stack.pop() else { break };
                if frame.opaque {
                    let mut path = frame.prefix.clone();
                    path.extend_from_slice(names::OPAQUE_MARKER);
                    let meta = Meta {
                        mode: 0o600,
                        uid: 0,
                        gid: 0,
                        mtime: (0, 0),
                        xattrs: Vec::new(),
                    };
                    self.append(EntryType::Regular, &path, None, &meta, None)?;
                }
                continue;
            };
            let mut path = frame.prefix.clone();
            path.extend_from_slice(name.as_bytes());
            let dir = frame.dir.as_fd();
            if let Some(child) = self
                .entry(dir, &name, path)
                .map_err(|(p, e)| named(&p, e))?
            {
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Appends `dir/name` (tar name `path`); for a directory, returns its frame to descend into.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsString,
        mut path: Vec<u8>,
    ) -> Result<Option<Frame>, (Vec<u8>, io::Error)> {
        let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => return Err((path, e.into())),
        };
        let node = Node::of(&st);
        let kind = match node.file_type {
            FileType::Directory => {
                let result = (|| {
                    let fd = open_dir(dir, name)?;
                    let listing = list(fd.as_fd())?;
                    let xattrs = if listing.implicit {
                        Vec::new()
                    } else {
                        xattrs_fd(fd.as_fd())?
                    };
                    Ok::<_, Errno>((fd, listing, xattrs))
                })();
                let (fd, listing, xattrs) = match result {
                    Ok(r) => r,
                    Err(e) => return Err((path, e.into())),
                };
                path.push(b'/');
                if !listing.implicit {
                    let meta = self.meta(&node, xattrs);
                    if let Err(e) = self.append(EntryType::Directory, &path, None, &meta, None) {
                        return Err((path, e));
                    }
                }
                return Ok(Some(Frame {
                    dir: fd,
                    prefix: path,
                    names: listing.names.into_iter(),
                    opaque: listing.opaque,
                }));
            }
            FileType::RegularFile => EntryType::Regular,
            FileType::Symlink => EntryType::Symlink,
            FileType::Fifo => EntryType::Fifo,
            FileType::CharacterDevice => EntryType::Char,
            FileType::BlockDevice => EntryType::Block,
            // Sockets and whatever else no layer can hold.
            _ => return Ok(None),
        };
        let result = self.leaf(dir, name, &path, kind, &node);
        result.map(|()| None).map_err(|e| (path, e))
    }

    fn leaf(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsString,
        path: &[u8],
        kind: EntryType,
        node: &Node,
    ) -> io::Result<()> {
        if node.nlink > 1 {
            if let Some(first) = self.linked.get(&node.inode) {
                let first = first.clone();
                // The applier sets a link's metadata on the shared inode (and chown drops
                // security.capability): the same values, xattrs included.
                let xattrs = xattrs_at(dir, name)?;
                let meta = self.meta(node, xattrs);
                return self.append(EntryType::Link, path, Some(&first), &meta, None);
            }
            self.linked.insert(node.inode, path.to_vec());
        }
        match kind {
            EntryType::Regular => {
                let file = open_file(dir, name)?;
                let st = Node::of(&fstat(&file)?);
                if st.inode != node.inode {
                    return Err(io::Error::other("replaced while being read"));
                }
                let xattrs = xattrs_fd(file.as_fd())?;
                let meta = self.meta(&st, xattrs);
                let runs = if st.blocks.saturating_mul(512) < st.size {
                    data_runs(file.as_fd(), st.size)?
                } else {
                    None
                };
                let file = File::from(file);
                match runs {
                    Some(runs) => self.append_sparse(path, &meta, st.size, file, runs),
                    None if self.by_reference && st.size >= MIN_CLONE_BYTES => {
                        self.append_reference(path, &meta, st.size)
                    }
                    None => {
                        let content = Exact {
                            inner: file.take(st.size),
                            left: st.size,
                        };
                        self.append_with(
                            EntryType::Regular,
                            path,
                            None,
                            &meta,
                            None,
                            st.size,
                            content,
                        )
                    }
                }
            }
            EntryType::Symlink => {
                let target = readlinkat(dir, name, Vec::new())?.into_bytes();
                let meta = self.meta(node, xattrs_at(dir, name)?);
                self.append(EntryType::Symlink, path, Some(&target), &meta, None)
            }
            _ => {
                let dev = (rustix::fs::major(node.rdev), rustix::fs::minor(node.rdev));
                let meta = self.meta(node, xattrs_at(dir, name)?);
                self.append(kind, path, None, &meta, Some(dev))
            }
        }
    }

    fn deferred(&mut self, link: &DeferredLink) -> io::Result<()> {
        let (uid, gid) = link.owner.unwrap_or((0, 0));
        let meta = Meta {
            mode: link.mode,
            uid: u64::from(uid),
            gid: u64::from(gid),
            mtime: link.mtime,
            xattrs: link.xattrs.clone(),
        };
        let path = link.path.as_os_str().as_bytes();
        let target = link.target.as_os_str().as_bytes();
        self.append(EntryType::Link, path, Some(target), &meta, None)
            .map_err(|e| named(path, e))
    }
}

/// An error naming the entry it is about.
fn named(path: &[u8], e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", String::from_utf8_lossy(path)))
}
