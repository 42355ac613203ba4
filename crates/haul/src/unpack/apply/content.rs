//! How a regular file's content reaches the disk: byte for byte, an old-GNU sparse file with
//! its zeros left as holes, a PAX sparse file as its data runs at their offsets. Each checks
//! that the entry held exactly the bytes its header promised.
//!
//! A layer merged from the layer cache may instead share its files' extents with the cache
//! ([`CloneSource`]): the copy without the writing, where the file system can (XFS with
//! reflink, btrfs, bcachefs, ZFS 2.2+).

use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, ioctl_ficlone, openat2};
use rustix::io::Errno;

use super::error::ApplyError;
use super::names;
use super::sparse::{self, PaxSparse, Refusal};

/// How a regular file's content is laid out in its entry.
pub(super) enum Content {
    /// Byte for byte.
    Plain,
    /// An old-GNU sparse entry, expanded by the tar crate: its holes come as zeros.
    Holes,
    /// A PAX sparse entry: data runs, the map in the records or at the head of the data.
    Runs(PaxSparse),
}

/// The `GNU.sparse.*` description of `entry`, if it has one.
pub(super) fn pax_sparse<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<PaxSparse>, ApplyError> {
    let records: Vec<(Vec<u8>, Vec<u8>)> = match entry
        .pax_extensions()
        .map_err(|source| ApplyError::Tar { source })?
    {
        None => return Ok(None),
        Some(records) => {
            let mut out = Vec::new();
            for record in records {
                let record = record.map_err(|source| ApplyError::Tar { source })?;
                if record.key_bytes().starts_with(b"GNU.sparse.") {
                    out.push((record.key_bytes().to_vec(), record.value_bytes().to_vec()));
                }
            }
            out
        }
    };
    if records.is_empty() {
        return Ok(None);
    }
    let path = || names::raw_path(&entry.path_bytes());
    match sparse::from_pax(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))) {
        Ok(sparse) => Ok(sparse),
        Err(Refusal::Unsupported) => Err(ApplyError::UnsupportedSparse { path: path() }),
        Err(Refusal::Bad(problem)) => Err(ApplyError::BadSparse {
            path: path(),
            problem,
        }),
    }
}

fn read_some(entry: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<usize, ApplyError> {
    loop {
        match entry.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(n) => return Ok(n),
            Err(source) => {
                return Err(ApplyError::Io {
                    path: path.to_owned(),
                    op: "read file content from the layer",
                    source,
                });
            }
        }
    }
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_owned(),
        op: "write file",
        source,
    }
}

/// Copies the entry's content as it is. Returns the bytes written.
pub(super) fn copy_plain<R: Read>(
    mut file: &File,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
    path: &Path,
) -> Result<u64, ApplyError> {
    let expected = entry.size();
    let mut written = 0u64;
    loop {
        let n = read_some(entry, buf, path)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(write_err(path))?;
        written += n as u64;
    }
    if written != expected {
        return Err(ApplyError::TruncatedEntry {
            path: path.to_owned(),
            expected,
            actual: written,
        });
    }
    Ok(written)
}

/// Copies an expanded old-GNU sparse entry, leaving holes where it reads zeros: a hole of the
/// map arrives as reads of nothing but zeros (the tar crate returns each run and each hole in
/// reads of its own). Returns the bytes written.
pub(super) fn copy_skipping_holes<R: Read>(
    file: &File,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
    path: &Path,
) -> Result<u64, ApplyError> {
    let expected = entry.size();
    let (mut pos, mut written) = (0u64, 0u64);
    loop {
        let n = read_some(entry, buf, path)?;
        if n == 0 {
            break;
        }
        if !all_zero(&buf[..n]) {
            file.write_all_at(&buf[..n], pos).map_err(write_err(path))?;
            written += n as u64;
        }
        pos += n as u64;
    }
    if pos != expected {
        return Err(ApplyError::TruncatedEntry {
            path: path.to_owned(),
            expected,
            actual: pos,
        });
    }
    // A hole at the end has no data to mark it.
    file.set_len(expected).map_err(write_err(path))?;
    Ok(written)
}

fn all_zero(data: &[u8]) -> bool {
    // OR-folding whole chunks vectorises; an early exit per byte would not.
    data.chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Writes a PAX sparse entry's data runs at their offsets and sizes the file to its real size;
/// the holes are never written. Returns the bytes written.
pub(super) fn copy_runs<R: Read>(
    file: &File,
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
    path: &Path,
    sparse: PaxSparse,
) -> Result<u64, ApplyError> {
    let bad = |problem| ApplyError::BadSparse {
        path: path.to_owned(),
        problem,
    };
    let size = entry.size();
    let (runs, data) = match sparse.runs {
        Some(runs) => (runs, size),
        None => sparse::read_map_v1(entry, size).map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<sparse::BadMap>()) {
                Some(sparse::BadMap(problem)) => bad(*problem),
                None => ApplyError::Io {
                    path: path.to_owned(),
                    op: "read the sparse map from the layer",
                    source: e,
                },
            }
        })?,
    };
    sparse::check_runs(&runs, sparse.real_size, data).map_err(bad)?;
    let mut copied = 0u64;
    for run in runs {
        let (mut pos, mut left) = (run.offset, run.len);
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = read_some(entry, &mut buf[..want], path)?;
            if n == 0 {
                return Err(ApplyError::TruncatedEntry {
                    path: path.to_owned(),
                    expected: data,
                    actual: copied,
                });
            }
            file.write_all_at(&buf[..n], pos).map_err(write_err(path))?;
            pos += n as u64;
            left -= n as u64;
            copied += n as u64;
        }
    }
    file.set_len(sparse.real_size).map_err(write_err(path))?;
    Ok(copied)
}

/// Files smaller than this are copied even when they could be cloned: opening the cache's file
/// and the clone cost more system calls than writing a few pages, and small files hold little
/// of an image's bytes.
const MIN_CLONE_BYTES: u64 = 16 * 1024;

/// Where the regular files of a layer being applied already are, byte for byte, at the same
/// paths: the layer cache's directory of that layer, whose tar stream
/// ([`tar_cached`](crate::unpack::dirtar::tar_cached)) is being applied. Its files are cloned
/// (`FICLONE`) into the new ones instead of copied, when the file system allows.
///
/// Only the data is taken from here: the applier creates each file (confined, never through a
/// symlink), charges its budget and sets its mode, owner, xattrs and times from the tar as for
/// any layer. A file here is used only when it is a regular file of exactly the entry's size,
/// reached beneath the directory without a symlink; otherwise, and whenever the clone fails, the
/// entry's bytes are copied as usual.
pub(crate) struct CloneSource {
    dir: OwnedFd,
    /// False once the file system said it cannot clone (between these two directories, or at
    /// all): the rest is copied without asking again.
    cloning: bool,
}

impl CloneSource {
    /// The directory `dir`, whose files are the ones the layer's entries carry.
    ///
    /// # Errors
    ///
    /// When `dir` cannot be opened as a directory.
    pub(crate) fn open(dir: &Path) -> io::Result<CloneSource> {
        let dir = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(CloneSource { dir, cloning: true })
    }

    /// Makes the empty, new `file` share the extents of `path`'s file here, when that is a
    /// regular file of `size` bytes and the file system can clone it. Returns false, with
    /// `file` untouched, when the content must be copied instead.
    pub(super) fn clone_into(&mut self, file: &File, path: &Path, size: u64) -> bool {
        if !self.cloning || size < MIN_CLONE_BYTES {
            return false;
        }
        // NONBLOCK: a FIFO put where a file was expected must not hang the open.
        let source = match openat2(
            &self.dir,
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no cached file to clone; copying");
                return false;
            }
        };
        match fstat(&source) {
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && u64::try_from(st.st_size).is_ok_and(|n| n == size) => {}
            _ => return false,
        }
        match ioctl_ficlone(file.as_fd(), &source) {
            Ok(()) => true,
            Err(e) => {
                // Not on this file system, or not across these two (another mount): say so
                // once and copy from now on. Anything else is this file's problem; the copy
                // reports it if it is real.
                if matches!(
                    e,
                    Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS
                ) {
                    tracing::debug!(error = %e, "the file system cannot clone; copying files");
                    self.cloning = false;
                }
                false
            }
        }
    }
}
