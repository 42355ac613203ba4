//! Reading a cached layer without following or changing anything: names opened relative to
//! their directory with `O_NOFOLLOW` (and `O_NOATIME` where allowed), xattrs read through the
//! fd or `/proc/self/fd` without resolving a symlink, directories listed in stream order with
//! the applier's markers taken out, files read as exactly the size they had when stat'ed, and
//! holes found with `SEEK_DATA`/`SEEK_HOLE`.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, SeekFrom, Stat, fstat, openat, openat2,
    seek, statat,
};
use rustix::io::Errno;

use super::super::apply::names;
use super::headers::Meta;
use super::named;

/// Xattrs as (full name, value), sorted by name.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of `struct stat` used here, in one width on every target.
#[derive(Clone, Copy)]
pub(super) struct Node {
    pub(super) file_type: FileType,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) inode: (u64, u64),
    pub(super) nlink: u64,
    pub(super) size: u64,
    /// 512-byte blocks allocated: fewer than the size needs means holes.
    pub(super) blocks: u64,
    pub(super) mtime: (i64, u32),
    pub(super) rdev: u64,
}

impl Node {
    // Field widths differ between targets.
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn of(st: &Stat) -> Node {
        Node {
            file_type: FileType::from_raw_mode(st.st_mode),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            inode: (st.st_dev as u64, st.st_ino as u64),
            nlink: st.st_nlink as u64,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            rdev: st.st_rdev as u64,
        }
    }

    pub(super) fn meta(&self, xattrs: Xattrs) -> Meta {
        Meta {
            mode: self.mode,
            uid: u64::from(self.uid),
            gid: u64::from(self.gid),
            mtime: self.mtime,
            xattrs,
        }
    }
}

/// The names of one directory in stream order.
pub(super) struct Listing {
    pub(super) names: Vec<OsString>,
    pub(super) opaque: bool,
    pub(super) implicit: bool,
}

/// The names of a directory in stream order, the markers taken out.
pub(super) fn list(dir: BorrowedFd<'_>) -> Result<Listing, Errno> {
    let mut whiteouts = Vec::new();
    let mut others = Vec::new();
    let mut opaque = false;
    let mut implicit = false;
    let mut entries = Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // Markers are empty files; anything else of that name is an entry like any other.
        let is_file = || {
            statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        };
        if name == names::OPAQUE_MARKER && is_file() {
            opaque = true;
        } else if name == names::IMPLICIT_MARKER && is_file() {
            implicit = true;
        } else if name.starts_with(names::WHITEOUT_PREFIX) && !name.starts_with(b".wh..wh.") {
            whiteouts.push(OsString::from_vec(name.to_vec()));
        } else {
            others.push(OsString::from_vec(name.to_vec()));
        }
    }
    whiteouts.sort_unstable();
    others.sort_unstable();
    whiteouts.append(&mut others);
    Ok(Listing {
        names: whiteouts,
        opaque,
        implicit,
    })
}

/// Opens a directory of the cache for listing and `*at` calls.
pub(super) fn open_dir(dir: BorrowedFd<'_>, name: &OsString) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

pub(super) fn open_file(dir: BorrowedFd<'_>, name: &OsString) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Reading must not touch the cache; O_NOATIME is for the owner (or root) only.
    match openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => Ok(openat(dir, name, flags, Mode::empty())?),
        other => Ok(other?),
    }
}

/// The inodes of `modes`' paths (relative to `root`, never following a symlink) with their
/// modes. A path that no longer names a file or directory is skipped.
pub(super) fn real_modes(
    root: BorrowedFd<'_>,
    modes: &[(PathBuf, u32)],
) -> io::Result<HashMap<(u64, u64), u32>> {
    let mut out = HashMap::new();
    for (path, mode) in modes {
        let st = match path.parent().zip(path.file_name()) {
            Some((parent, name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let dir = match openat2(
                    root,
                    parent,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                ) {
                    Ok(dir) => dir,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => continue,
                    Err(e) => return Err(named(path.as_os_str().as_bytes(), e.into())),
                };
                statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            }
            // The root itself.
            None => fstat(root),
        };
        match st {
            Ok(st) => {
                out.insert(Node::of(&st).inode, *mode);
            }
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(e) => return Err(named(path.as_os_str().as_bytes(), e.into())),
        }
    }
    Ok(out)
}

/// The data runs `(offset, length)` of a file of `size` bytes as the filesystem reports them,
/// or `None` when it has no hole (or cannot tell).
pub(super) fn data_runs(fd: BorrowedFd<'_>, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(fd, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data from here to the end.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let end = seek(fd, SeekFrom::Hole(start))?.min(size);
        if end > start {
            runs.push((start, end - start));
        }
        pos = end.max(start + 1);
    }
    // A file ending in a hole says so with an empty run at its end, as GNU tar writes it.
    if runs.last().is_none_or(|&(offset, len)| offset + len < size) {
        runs.push((size, 0));
    }
    if runs.len() == 1 && runs[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(runs))
}

/// The data runs of a sparse file, one after the other.
pub(super) struct RunReader {
    pub(super) file: File,
    pub(super) runs: std::vec::IntoIter<(u64, u64)>,
    /// The run being read: next offset and bytes left.
    pub(super) current: Option<(u64, u64)>,
}

impl Read for RunReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.current {
                Some((offset, left)) if left > 0 => {
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = self.file.read_at(&mut buf[..want], offset)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    self.current = Some((offset + n as u64, left - n as u64));
                    return Ok(n);
                }
                _ => match self.runs.next() {
                    Some(run) => self.current = Some(run),
                    None => return Ok(0),
                },
            }
        }
    }
}

/// Content of exactly `left` bytes: a file that shrank while being read is an error, not a
/// shorter entry (the header already promised its size).
pub(super) struct Exact<R> {
    pub(super) inner: R,
    pub(super) left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Xattrs of an open file or directory, sorted by name.
pub(super) fn xattrs_fd(fd: BorrowedFd<'_>) -> Result<Xattrs, Errno> {
    read_xattrs(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
        |name| rustix::fs::fgetxattr_query(fd, name),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

/// Xattrs of `dir/name` itself (a symlink, FIFO or device: never opened, never followed).
pub(super) fn xattrs_at(dir: BorrowedFd<'_>, name: &OsString) -> Result<Xattrs, Errno> {
    // The magic link resolves to `dir` itself; `name` is then looked up there, not followed.
    let mut path = proc_fd_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    let path = OsString::from_vec(path);
    read_xattrs(
        || rustix::fs::llistxattr_query(&path),
        |buf| rustix::fs::llistxattr(&path, buf),
        |key| rustix::fs::lgetxattr_query(&path, key),
        |key, buf| rustix::fs::lgetxattr(&path, key, buf),
    )
}

/// Lists and reads xattrs with the size-query-then-fill calls, skipping those that cannot or
/// must not be replayed.
fn read_xattrs(
    list_len: impl Fn() -> Result<usize, Errno>,
    list: impl Fn(&mut [u8]) -> Result<usize, Errno>,
    value_len: impl Fn(&CStr) -> Result<usize, Errno>,
    value: impl Fn(&CStr, &mut [u8]) -> Result<usize, Errno>,
) -> Result<Xattrs, Errno> {
    let names = match sized(list_len, list) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        // The host's label, not the layer's; `=` cannot be written in a PAX key.
        if name == b"security.selinux" || name.contains(&b'=') {
            continue;
        }
        let Ok(key) = CString::new(name) else {
            continue;
        };
        match sized(|| value_len(&key), |buf| value(&key, buf)) {
            Ok(v) => out.push((name.to_vec(), v)),
            // Removed in between.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Queries a length, then fills a buffer of it; again if it grew in between.
fn sized(
    len: impl Fn() -> Result<usize, Errno>,
    fill: impl Fn(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    loop {
        let n = len()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; n];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
