//! How a regular file's content reaches the disk: byte for byte, an old-GNU sparse file with
//! its zeros left as holes, a PAX sparse file as its data runs at their offsets. Each checks
//! that the entry held exactly the bytes its header promised.
//!
//! A layer merged from the layer cache takes its big files from the cache instead
//! ([`CloneSource`]): clones that share their extents where the file system can (XFS with
//! reflink, btrfs, bcachefs, ZFS 2.2+), in-kernel copies elsewhere.

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
    /// A merge's entry of this many bytes whose data stays in the cache ([`CloneSource`]).
    Cached(u64),
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

/// Regular files smaller than this are carried in a merge's stream and copied: opening the
/// cache's file and cloning it cost more system calls than writing a few pages, and small files
/// hold little of an image's bytes.
pub(crate) const MIN_CLONE_BYTES: u64 = 16 * 1024;

/// The PAX record of an entry of a merge's stream whose data stays in the cache: the file's size.
pub(crate) const CACHED_SIZE_RECORD: &[u8] = b"HAUL.cache.size";

/// The size a merge's entry names in its [`CACHED_SIZE_RECORD`], if it has one.
pub(super) fn cached_size<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<u64>, ApplyError> {
    let Some(records) = entry
        .pax_extensions()
        .map_err(|source| ApplyError::Tar { source })?
    else {
        return Ok(None);
    };
    let mut size = None;
    for record in records {
        let record = record.map_err(|source| ApplyError::Tar { source })?;
        if record.key_bytes() == CACHED_SIZE_RECORD {
            let value = std::str::from_utf8(record.value_bytes())
                .ok()
                .and_then(|v| v.parse().ok());
            size = Some(value.ok_or_else(|| ApplyError::Tar {
                source: io::Error::new(io::ErrorKind::InvalidData, "a bad HAUL.cache.size"),
            })?);
        }
    }
    Ok(size)
}

/// Where the regular files of a layer being merged from the layer cache are: the cache's
/// directory of that layer, whose stream ([`tar_cached_by_reference`]) refers to its big files
/// by path and size instead of carrying them. Each is cloned (`FICLONE`) into the new file when
/// the file system can share extents, and copied from the cache otherwise.
///
/// Only the data comes from here: the applier creates each file (confined, never through a
/// symlink), charges its budget and sets its mode, owner, xattrs and times from the stream as
/// for any layer. The cache's file is opened beneath the directory without following a symlink
/// and must be a regular file of the size the entry names.
///
/// [`tar_cached_by_reference`]: crate::unpack::dirtar::tar_cached_by_reference
pub(crate) struct CloneSource {
    dir: OwnedFd,
    /// False once the file system said it cannot clone (between these two directories, or at
    /// all): the rest is copied without asking again.
    cloning: bool,
}

impl CloneSource {
    /// The directory `dir`, whose files are the ones the stream refers to.
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

    /// Fills the empty, new `file` with the `size` bytes of `path`'s file here: a clone where
    /// the file system can, a copy otherwise. Returns the bytes written.
    pub(super) fn clone_or_copy(
        &mut self,
        file: &File,
        path: &Path,
        size: u64,
    ) -> Result<u64, ApplyError> {
        let io_err = |op, source| ApplyError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        // NONBLOCK: a FIFO where a file was expected must not hang the open.
        let source = openat2(
            &self.dir,
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
        .map_err(|e| io_err("open the file in the layer cache", e.into()))?;
        let st =
            fstat(&source).map_err(|e| io_err("inspect the file in the layer cache", e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || u64::try_from(st.st_size).ok() != Some(size)
        {
            return Err(io_err(
                "read the file in the layer cache",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not the file the layer cache listed",
                ),
            ));
        }
        if self.cloning {
            match ioctl_ficlone(file.as_fd(), &source) {
                Ok(()) => return Ok(size),
                // Not on this file system, or not across these two (another mount): copy from
                // now on. Anything else is this file's: the copy reports it if it is real.
                Err(
                    Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS,
                ) => {
                    tracing::debug!("the file system cannot clone; copying files");
                    self.cloning = false;
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "clone failed; copying");
                }
            }
        }
        // `io::copy` between files is `copy_file_range`: in the kernel, no buffer here.
        let copied = io::copy(&mut File::from(source), &mut &*file)
            .map_err(|e| io_err("copy from the layer cache", e))?;
        if copied != size {
            return Err(ApplyError::TruncatedEntry {
                path: path.to_owned(),
                expected: size,
                actual: copied,
            });
        }
        Ok(copied)
    }
}
