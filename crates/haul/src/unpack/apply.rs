//! Applies one layer's uncompressed tar onto a root directory, the way docker and containerd
//! apply OCI layer changesets.
//!
//! Promises:
//! - **Confinement.** No entry creates, removes, links to or changes anything outside `root`.
//!   Parent directories are resolved by the kernel with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`, so symlinks from this or lower layers resolve as if `root` were `/`;
//!   the last component is handled with `*at` calls on that parent fd and never followed. Names
//!   that climb above the root (`../x`, `a/../../x`) and hardlinks to such targets fail the layer.
//! - **Changeset semantics.** `DIR/.wh.NAME` removes `DIR/NAME` as lower layers left it;
//!   `DIR/.wh..wh..opq` removes what lower layers put in `DIR` but keeps what this layer adds,
//!   wherever the marker sits in the tar. A directory over a directory merges; anything else
//!   replaces what was there.
//! - **Metadata.** Modes (setuid, setgid, sticky included, umask ignored), numeric ownership and
//!   `SCHILY.xattr.*` records when asked, and mtimes with PAX nanoseconds, for symlinks too.
//!   Directory mtimes are set once the whole layer is in, since adding children changes them.
//! - **Sparse files.** Old-GNU `S` entries and PAX sparse entries (GNU versions 0.0, 0.1 and
//!   1.0) become files of their real size whose holes are holes: only the data runs are
//!   written. A malformed map (runs out of order, overlapping, past the real size, or not adding
//!   up to the data) fails the layer.
//! - **Budget.** [`apply_layer_for_cache_within`] charges every entry to a [`LayerBudget`]
//!   before creating it (a sparse file its real size), so an entry that would pass a limit is
//!   refused before its first byte is written.
//! - **Cache mode.** [`apply_layer_for_cache`] extracts one layer onto an empty directory so that
//!   [`tar_dir`](super::dirtar::tar_dir) of it, applied with [`apply_layer`] onto the lower
//!   layers, does what the layer's own tar would. Whiteouts are kept as empty files instead of
//!   executed, hardlinks into lower layers are returned as [`DeferredLink`]s, and directories the
//!   layer did not list hold a marker file, so that replaying them leaves the lower layers'
//!   directories as they were. A layer that changes the lower target of one of its own hardlinks,
//!   which a cached directory cannot record, is refused there. Without root, files and
//!   directories their owner could not read keep owner read (and search) permission in the
//!   cache and their real modes are returned in [`ApplyStats::modes`], so that readers of a
//!   shared cache never change it.
//!
//! The tar crate only parses. Its `unpack` is no layer applier: no whiteouts, devices written as
//! empty files, one failed xattr fatal, and symlinks resolved against the host.

mod fsops;
pub(crate) mod names;
mod sparse;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, Uid,
    XattrFlags, chownat, fchmod, fchown, fsetxattr, fstat, futimens, linkat, lsetxattr, mkdirat,
    mknodat, openat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use tar::EntryType;

use super::budget::{ENTRY_OVERHEAD, Exceeded, LayerBudget};
use names::Role;
use sparse::{PaxSparse, Refusal};

/// Copy buffer for file contents: large enough that syscalls are not the cost.
const COPY_BUFFER: usize = 256 * 1024;

/// What the applier may do beyond creating files, directories and links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Chown every entry to the tar's numeric uid/gid (names in the tar are never looked up).
    pub preserve_ownership: bool,
    /// Create character and block devices; when false they are skipped with a warning.
    pub allow_devices: bool,
    /// Apply `SCHILY.xattr.*` PAX records; a failed set is a warning, never an error.
    pub xattrs: bool,
}

impl ApplyOptions {
    /// Ownership and devices only as root (anyone else would get EPERM); xattrs always, since
    /// those that need privilege just become warnings.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        ApplyOptions {
            preserve_ownership: root,
            allow_devices: root,
            xattrs: true,
        }
    }
}

/// What one layer did.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Tar entries processed (whiteouts and skipped entries included; PAX headers not).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Things skipped or half-applied, one sentence each, naming the entry.
    pub warnings: Vec<String>,
    /// [`apply_layer_for_cache`] only: hardlinks whose target lies in a lower layer, in tar order.
    /// Nothing was created for them; [`tar_dir`](super::dirtar::tar_dir) replays them.
    pub deferred_links: Vec<DeferredLink>,
    /// [`apply_layer_for_cache`] without root only: regular files and directories the cache
    /// keeps readable by their owner, with the mode the layer gives them (one path per inode),
    /// for [`tar_cached`](super::dirtar::tar_cached) to replay.
    pub modes: Vec<(PathBuf, u32)>,
}

/// A hardlink entry of a layer applied with [`apply_layer_for_cache`] whose target was not in
/// the layer: it names a file of a lower layer and can only be made once those are in place.
///
/// The header's metadata is kept because applying a hardlink sets it on the shared inode.
/// Serializable, to be stored beside the cached directory until it is merged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeferredLink {
    /// The link, relative to the root and cleaned (no `.`, `..` or leading `/`).
    pub path: PathBuf,
    /// Its target, relative to the root and cleaned.
    pub target: PathBuf,
    /// Permission bits from the link's header.
    pub mode: u32,
    /// Numeric owner from the header, when ownership was preserved.
    pub owner: Option<(u32, u32)>,
    /// Modification time from the header: seconds and nanoseconds (`0..1e9`).
    pub mtime: (i64, u32),
    /// `SCHILY.xattr.*` records of the header (name without the prefix, value), when xattrs
    /// were applied.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a hardlink entry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardlinkProblem {
    /// The target climbs above the root.
    EscapesRoot,
    /// Nothing exists at the target.
    Missing,
    /// The target is a directory (or the root).
    Directory,
    /// The entry names itself as its target.
    ItSelf,
    /// Cache mode only: the target lies in a lower layer and a later entry of the same layer
    /// replaces or removes it, which a cached layer cannot record.
    ChangedLater,
}

impl fmt::Display for HardlinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardlinkProblem::EscapesRoot => "escapes the root",
            HardlinkProblem::Missing => "does not exist",
            HardlinkProblem::Directory => "is a directory",
            HardlinkProblem::ItSelf => "is the entry itself",
            HardlinkProblem::ChangedLater => {
                "lies in a lower layer and is changed later in this layer (cannot be cached)"
            }
        })
    }
}

/// A layer that could not be applied. The root is then partly updated and must be discarded.
///
/// `path` fields are entry paths relative to the root, as cleaned from the tar.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The root directory itself could not be opened.
    #[error("cannot open the layer root {}", path.display())]
    OpenRoot {
        /// The root as given by the caller.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// [`apply_layer_for_cache`] was given a root that is not empty.
    #[error("the layer cache directory {} is not empty", path.display())]
    RootNotEmpty {
        /// The root as given by the caller.
        path: PathBuf,
    },
    /// The tar stream is malformed or could not be read.
    #[error("cannot read the layer tar")]
    Tar {
        /// The tar crate's or the reader's error.
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a file's content.
    #[error("{}: the layer tar ends inside this file ({actual} of {expected} bytes)",
        path.display())]
    TruncatedEntry {
        /// The entry.
        path: PathBuf,
        /// Size from the header.
        expected: u64,
        /// Bytes the stream held.
        actual: u64,
    },
    /// The entry's name climbs above the root (`../x`).
    #[error("{}: path escapes the root", path.display())]
    Escape {
        /// The name as written in the tar.
        path: PathBuf,
    },
    /// A hardlink whose target is unusable.
    #[error("{}: hardlink target {} {problem}", path.display(), target.display())]
    BadHardlink {
        /// The entry.
        path: PathBuf,
        /// The target as written in the tar.
        target: PathBuf,
        /// What is wrong with it.
        problem: HardlinkProblem,
    },
    /// `.wh.`, `.wh..` or `.wh...`: a whiteout of the directory itself or its parent.
    #[error("{}: invalid whiteout name", path.display())]
    BadWhiteout {
        /// The entry.
        path: PathBuf,
    },
    /// A non-directory entry for `.` or `/`.
    #[error("{}: only a directory entry may stand for the root", path.display())]
    RootNotDirectory {
        /// The name as written in the tar.
        path: PathBuf,
    },
    /// An entry type the applier does not create (e.g. an unknown typeflag).
    #[error("{}: unsupported tar entry type {:?}", path.display(), char::from(*typeflag))]
    UnsupportedType {
        /// The entry.
        path: PathBuf,
        /// The header's typeflag byte.
        typeflag: u8,
    },
    /// `GNU.sparse.*` records of a version haul does not know.
    #[error("{}: unsupported GNU sparse format version", path.display())]
    UnsupportedSparse {
        /// The entry.
        path: PathBuf,
    },
    /// A sparse entry whose map cannot be right.
    #[error("{}: invalid sparse file: {problem}", path.display())]
    BadSparse {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        problem: SparseProblem,
    },
    /// Writing the entry would pass the extraction budget; nothing of it was written.
    #[error("{}: refused before writing it: with its {size} bytes ({}), {reason}",
        path.display(), crate::space::Size(*size))]
    TooLarge {
        /// The entry.
        path: PathBuf,
        /// The bytes it would have taken (the real size for a sparse file, plus its header).
        size: u64,
        /// Which limit.
        #[source]
        reason: Exceeded,
    },
    /// A header field that cannot be used (unparsable number, missing link name, uid -1…).
    #[error("{}: invalid tar header field `{field}`", path.display())]
    BadHeader {
        /// The entry.
        path: PathBuf,
        /// Which field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: io::Error,
    },
    /// A file-system operation failed.
    #[error("{}: cannot {op}", path.display())]
    Io {
        /// The entry.
        path: PathBuf,
        /// What was attempted, e.g. `"create file"`.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a sparse entry's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseProblem {
    /// A size, offset or length is not a decimal number that fits 64 bits.
    BadNumber,
    /// No `GNU.sparse.size` or `GNU.sparse.realsize`.
    MissingSize,
    /// The map is malformed: an odd count, offsets and lengths out of step, a count that does
    /// not match `GNU.sparse.numblocks` or that the data cannot hold.
    BadMap,
    /// Runs out of order, overlapping or past the real size.
    BadRuns,
    /// The runs do not add up to the data the entry carries.
    DataMismatch,
    /// A sparse map on an entry that is not a regular file.
    NotAFile,
}

impl fmt::Display for SparseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SparseProblem::BadNumber => "a number in the map is not a decimal number",
            SparseProblem::MissingSize => "the real size is missing",
            SparseProblem::BadMap => "the map is malformed",
            SparseProblem::BadRuns => "data runs overlap, are out of order or pass the real size",
            SparseProblem::DataMismatch => "the data runs do not add up to the entry's data",
            SparseProblem::NotAFile => "only regular files can be sparse",
        })
    }
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> ApplyError + 'a {
    move |e| ApplyError::Io {
        path: path.to_owned(),
        op,
        source: e.into(),
    }
}

/// Applies one layer's uncompressed tar stream onto `root` (an existing directory holding the
/// lower layers already applied, or empty for the first).
///
/// Returns after the tar's end-of-archive blocks; the caller drains the rest of the stream (it
/// hashes every byte for the diff_id). On error the root is left partly updated.
pub fn apply_layer<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, None, None)
}

/// Extracts one layer onto the empty directory `root` for the layer cache, keeping what the layer
/// says rather than what it does to the layers below:
///
/// - whiteouts (`.wh.NAME`, `.wh..wh..opq`) become empty files of that name (mode 0600). One
///   that can only concern this layer's own entries is recorded as what it means: nothing for a
///   file or symlink, an opaque marker for a directory;
/// - a hardlink whose target is not in `root` (it lies in a lower layer) creates nothing and is
///   returned in [`ApplyStats::deferred_links`]; one whose target escapes is still refused;
/// - a directory created only as the parent of other entries gets an implicit-directory marker
///   file, and so does `root` unless the layer has an entry for `.`.
///
/// [`tar_dir`](super::dirtar::tar_dir) of `root` with the deferred links, applied with
/// [`apply_layer`] onto the lower layers, gives what applying the layer's tar itself would.
pub fn apply_layer_for_cache<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, Some(Keep::new()), None)
}

/// [`apply_layer_for_cache`] within `budget`: every entry is charged before it is created, and
/// one that would pass a limit fails the layer with [`ApplyError::TooLarge`].
pub fn apply_layer_for_cache_within<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
    budget: &mut LayerBudget,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, Some(Keep::new()), Some(budget))
}

fn run<'o, R: Read>(
    root: &Path,
    archive: R,
    opts: &'o ApplyOptions,
    keep: Option<Keep>,
    budget: Option<&'o mut LayerBudget>,
) -> Result<ApplyStats, ApplyError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::OpenRoot {
        path: root.to_owned(),
        source: e.into(),
    })?;
    if keep.is_some() {
        let names = fsops::list_dir(root_fd.as_fd()).map_err(|e| ApplyError::OpenRoot {
            path: root.to_owned(),
            source: e.into(),
        })?;
        if !names.is_empty() {
            return Err(ApplyError::RootNotEmpty {
                path: root.to_owned(),
            });
        }
    }
    let mut applier = Applier {
        root: root_fd,
        opts,
        budget,
        keep,
        stats: ApplyStats::default(),
        in_layer: HashSet::new(),
        dirs: BTreeMap::new(),
        root_dir: None,
        buf: vec![0; COPY_BUFFER],
        last_parent: None,
        dirs_removed: 0,
        umask: process_umask(),
    };
    let data_end = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut archive = tar::Archive::new(Unpadded {
        inner: archive,
        pos: 0,
        data_end: data_end.clone(),
        padding: 0,
    });
    archive.set_ignore_zeros(false);
    for entry in archive
        .entries()
        .map_err(|source| ApplyError::Tar { source })?
    {
        let mut entry = entry.map_err(|source| ApplyError::Tar { source })?;
        let size = entry.header().entry_size().unwrap_or(u64::MAX);
        data_end.set(entry.raw_file_position().saturating_add(size));
        applier.apply_entry(&mut entry)?;
    }
    // A stream that ends where a header would start is taken as the end of the archive, as Go's
    // archive/tar (containerd, podman, umoci) takes it: umoci 0.4.7 writes layers without the
    // end-of-archive blocks. That nothing is missing is the diff_id's to prove, over every byte.
    applier.finish()
}

/// Ends the last entry's content with the padding to a whole block when the stream stops right
/// after that content (umoci 0.4.7 writes no padding there), as Go's archive/tar accepts. A stream
/// that stops anywhere else is passed on as it is, for the tar parser to refuse.
struct Unpadded<R> {
    inner: R,
    /// Bytes read so far.
    pos: u64,
    /// Where the current entry's content ends, as the applier last set it.
    data_end: std::rc::Rc<std::cell::Cell<u64>>,
    /// Zeros still to give.
    padding: u64,
}

impl<R: Read> Read for Unpadded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.padding == 0 {
            let n = self.inner.read(buf)?;
            self.pos += n as u64;
            if n > 0
                || buf.is_empty()
                || self.pos != self.data_end.get()
                || self.pos.is_multiple_of(512)
            {
                return Ok(n);
            }
            self.padding = 512 - self.pos % 512;
        }
        let n = buf.len().min(self.padding as usize);
        buf[..n].fill(0);
        self.padding -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The kinds of node an entry can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Hardlink,
    Special(FileType),
}

/// Metadata every created node gets.
struct Meta {
    mode: u32,
    owner: Option<(Uid, Gid)>,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory whose mtime or mode waits for the end of the layer.
struct PendingDir {
    /// From this layer's entry; `None` for a lower layer's directory only unlocked here.
    time: Option<Timespec>,
    /// The mode to put back when the one in force lets the owner do more.
    mode: Option<u32>,
}

struct Applier<'o> {
    root: OwnedFd,
    opts: &'o ApplyOptions,
    budget: Option<&'o mut LayerBudget>,
    /// Cache mode's bookkeeping; `None` when applying for real.
    keep: Option<Keep>,
    stats: ApplyStats,
    /// Paths this layer created and all their ancestors: what opaque markers and whiteouts must
    /// keep, since they only hide lower layers.
    in_layer: HashSet<PathBuf>,
    dirs: BTreeMap<PathBuf, PendingDir>,
    root_dir: Option<PendingDir>,
    buf: Vec<u8>,
    /// The parent directory of the last regular file: tars list a directory's files together,
    /// so most files skip resolving their parent again. Dropped at every entry that is not a
    /// regular file and whenever a directory is removed, the only ways to replace it.
    last_parent: Option<(PathBuf, OwnedFd)>,
    /// Counts directories removed, so a cached parent is not kept past one.
    dirs_removed: u64,
    /// The process umask, when known: files whose mode it leaves alone get it at creation and
    /// skip a `fchmod`.
    umask: Option<u32>,
}

impl Applier<'_> {
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            // Global PAX defaults (usually just a comment); docker ignores them too.
            tracing::debug!("ignoring a PAX global header");
            return Ok(());
        }
        check_pax_records(entry)?;
        let pax_sparse = pax_sparse(entry)?;
        // A PAX sparse file's header names `…/GNUSparseFile.N/name`; its real name is a record,
        // cleaned and confined like any other.
        let raw = match pax_sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => until_nul(&entry.path_bytes()).to_vec(),
        };
        let path = names::clean(&raw).ok_or_else(|| ApplyError::Escape {
            path: names::raw_path(&raw),
        })?;
        self.stats.entries += 1;
        self.charge(&path, ENTRY_OVERHEAD)?;
        let role = names::role(&path);
        let plain_file = matches!(role, Role::Plain)
            && matches!(
                entry_type,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            )
            && !raw.ends_with(b"/");
        if !plain_file {
            self.last_parent = None;
        }
        match role {
            Role::Plain => {}
            Role::AufsMeta => {
                tracing::debug!(path = %path.display(), "skipping aufs metadata");
                return Ok(());
            }
            Role::BadWhiteout => return Err(ApplyError::BadWhiteout { path }),
            Role::Whiteout(name) if self.keep.is_some() => return self.keep_whiteout(&path, name),
            Role::Whiteout(name) => return self.whiteout(&path, name),
            Role::Opaque if self.keep.is_some() => return self.keep_opaque(&path),
            Role::Opaque => return self.opaque(&path),
        }

        let kind = match entry_type {
            EntryType::Directory => Kind::Dir,
            // A V7 header (typeflag NUL) marks directories only by the trailing slash.
            EntryType::Regular
                if entry.header().as_old().linkflag[0] == 0 && raw.ends_with(b"/") =>
            {
                Kind::Dir
            }
            // The tar crate expands old GNU sparse files into their full content.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            // A GNU incremental dump's directory: its content lists names, GNU tar makes a
            // directory of it.
            other if other.as_byte() == b'D' => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Fifo => Kind::Special(FileType::Fifo),
            EntryType::Char => Kind::Special(FileType::CharacterDevice),
            EntryType::Block => Kind::Special(FileType::BlockDevice),
            other => {
                return Err(ApplyError::UnsupportedType {
                    path,
                    typeflag: other.as_byte(),
                });
            }
        };
        if pax_sparse.is_some() && kind != Kind::File {
            return Err(ApplyError::BadSparse {
                path,
                problem: SparseProblem::NotAFile,
            });
        }
        if matches!(kind, Kind::Special(t) if t != FileType::Fifo) && !self.opts.allow_devices {
            self.warn(format!(
                "{}: device node skipped (devices not allowed)",
                path.display()
            ));
            return Ok(());
        }
        let meta = self.read_meta(entry, &path)?;

        let Some(name) = path.file_name() else {
            if kind != Kind::Dir {
                return Err(ApplyError::RootNotDirectory {
                    path: names::raw_path(&raw),
                });
            }
            return self.root_metadata(&meta);
        };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        if let Some(keep) = &mut self.keep {
            keep.before_entry(&path, kind == Kind::Dir)?;
        }
        if kind == Kind::File {
            let content = match pax_sparse {
                Some(sparse) => Content::Runs(sparse),
                // The tar crate expands these: holes come as runs of zeros.
                None if entry_type == EntryType::GNUSparse => Content::Holes,
                None => Content::Plain,
            };
            let size = match &content {
                Content::Runs(sparse) => sparse.real_size,
                Content::Holes | Content::Plain => entry.size(),
            };
            self.charge(&path, size)?;
            let parent = match self.last_parent.take() {
                Some((p, fd)) if p == parent_path => fd,
                _ => self.make_parents(parent_path, &path)?,
            };
            if let Some(keep) = &mut self.keep {
                keep.needed(parent_path);
            }
            let removed = self.dirs_removed;
            self.make_file(parent.as_fd(), name, &path, &meta, entry, content)?;
            // Unless the file replaced a directory (possibly the parent itself, reached through
            // a symlink), the parent fd is still what the path names.
            if self.dirs_removed == removed {
                self.last_parent = Some((parent_path.to_owned(), parent));
            }
            self.remember(path);
            return Ok(());
        }
        let parent = self.make_parents(parent_path, &path)?;
        if let Some(keep) = &mut self.keep {
            keep.needed(parent_path);
        }
        let parent = parent.as_fd();
        match kind {
            Kind::Dir => self.make_dir(parent, name, &path, &meta)?,
            // Handled above, with the parent cache.
            Kind::File => {}
            Kind::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| missing_link(&path))?;
                let target = until_nul(&target);
                self.clear(parent, name, &path, false)?;
                self.in_dir(parent, &path, || {
                    symlinkat(OsStr::from_bytes(target), parent, name)
                })
                .map_err(io_err(&path, "create symlink"))?;
                self.meta_at(parent, name, &path, &meta, false)?;
            }
            Kind::Hardlink => {
                let target = entry.link_name_bytes().ok_or_else(|| missing_link(&path))?;
                let target = until_nul(&target);
                self.make_hardlink(parent, name, &path, target, &meta)?;
            }
            Kind::Special(file_type) => {
                let dev = if file_type == FileType::Fifo {
                    0
                } else {
                    let header = entry.header();
                    let major = header
                        .device_major()
                        .map_err(bad_header(&path, "devmajor"))?;
                    let minor = header
                        .device_minor()
                        .map_err(bad_header(&path, "devminor"))?;
                    rustix::fs::makedev(major.unwrap_or(0), minor.unwrap_or(0))
                };
                self.clear(parent, name, &path, false)?;
                self.in_dir(parent, &path, || {
                    mknodat(parent, name, file_type, Mode::from_raw_mode(0o600), dev)
                })
                .map_err(io_err(&path, "create special file"))?;
                self.meta_at(parent, name, &path, &meta, true)?;
            }
        }
        self.remember(path);
        Ok(())
    }

    fn read_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
    ) -> Result<Meta, ApplyError> {
        let header = entry.header();
        let mode = header.mode().map_err(bad_header(path, "mode"))? & 0o7777;
        let owner = if self.opts.preserve_ownership {
            // The tar crate has already put PAX uid/gid into the header.
            let old = header.as_old();
            let uid = id(or_empty(header.uid(), &old.uid).map_err(bad_header(path, "uid"))?)
                .ok_or_else(|| out_of_range(path, "uid"))?;
            let gid = id(or_empty(header.gid(), &old.gid).map_err(bad_header(path, "gid"))?)
                .ok_or_else(|| out_of_range(path, "gid"))?;
            Some((Uid::from_raw(uid), Gid::from_raw(gid)))
        } else {
            None
        };
        let mtime = header.mtime().map_err(bad_header(path, "mtime"))?;
        let mut time = Timespec {
            tv_sec: i64::try_from(mtime).map_err(|_| out_of_range(path, "mtime"))?,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(records) = entry
            .pax_extensions()
            .map_err(|source| ApplyError::Tar { source })?
        {
            for record in records {
                let record = record.map_err(|source| ApplyError::Tar { source })?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    let (secs, nanos) = names::parse_pax_time(record.value_bytes())
                        .ok_or_else(|| out_of_range(path, "PAX mtime"))?;
                    time = Timespec {
                        tv_sec: secs,
                        tv_nsec: nanos,
                    };
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                    && self.opts.xattrs
                {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            owner,
            times: Timestamps {
                last_access: time,
                last_modification: time,
            },
            xattrs,
        })
    }

    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        if !self.clear(parent, name, path, true)? {
            self.in_dir(parent, path, || {
                mkdirat(parent, name, Mode::from_raw_mode(0o700))
            })
            .map_err(io_err(path, "create directory"))?;
        }
        let dir = openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(path, "open directory"))?;
        if let Some(keep) = &mut self.keep {
            let st = fstat(&dir).map_err(io_err(path, "inspect directory"))?;
            keep.explicit.insert(inode(&st));
        }
        let pending = self.meta_dir(&dir, path, meta)?;
        self.dirs.insert(path.to_owned(), pending);
        Ok(())
    }

    /// Owner, mode and xattrs of a directory; its times wait for the end of the layer.
    fn meta_dir(
        &mut self,
        dir: &OwnedFd,
        path: &Path,
        meta: &Meta,
    ) -> Result<PendingDir, ApplyError> {
        if let Some((uid, gid)) = meta.owner {
            fchown(dir, Some(uid), Some(gid)).map_err(io_err(path, "set owner"))?;
        }
        // Without owner rwx an unprivileged applier could not add the children that follow:
        // keep it until the end of the layer.
        let deferred = meta.mode & 0o700 != 0o700;
        let now = if deferred {
            meta.mode | 0o700
        } else {
            meta.mode
        };
        fchmod(dir, Mode::from_raw_mode(now)).map_err(io_err(path, "set mode"))?;
        self.set_xattrs(XattrTarget::Fd(dir.as_fd()), path, meta);
        Ok(PendingDir {
            time: Some(meta.times.last_modification),
            mode: deferred.then_some(meta.mode),
        })
    }

    fn root_metadata(&mut self, meta: &Meta) -> Result<(), ApplyError> {
        let root = self.root.try_clone().map_err(|e| ApplyError::Io {
            path: PathBuf::new(),
            op: "duplicate the root fd",
            source: e,
        })?;
        self.root_dir = Some(self.meta_dir(&root, Path::new(""), meta)?);
        if let Some(keep) = &mut self.keep {
            keep.root_explicit = true;
        }
        Ok(())
    }

    fn make_file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
        content: Content,
    ) -> Result<(), ApplyError> {
        // A shared cache must stay readable by its owner without anyone changing it.
        let mode = match &self.keep {
            Some(keep) if keep.unprivileged && meta.mode & 0o400 == 0 => meta.mode | 0o400,
            _ => meta.mode,
        };
        // Modes the umask leaves alone are given at creation; special bits only after chown,
        // which clears them.
        let exact_at_creation =
            mode & 0o7000 == 0 && self.umask.is_some_and(|umask| mode & umask == 0);
        let create_mode = if exact_at_creation { mode } else { 0o600 };
        let create = |this: &mut Self| {
            this.in_dir(parent, path, || {
                openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(create_mode),
                )
            })
        };
        // Most names are new: try first, make way only when something is there.
        let fd = match create(self) {
            Err(Errno::EXIST) => {
                self.clear(parent, name, path, false)?;
                create(self)
            }
            other => other,
        }
        .map_err(io_err(path, "create file"))?;
        let file = File::from(fd);
        let written = match content {
            Content::Plain => copy_plain(&file, entry, &mut self.buf, path)?,
            Content::Holes => copy_skipping_holes(&file, entry, &mut self.buf, path)?,
            Content::Runs(sparse) => copy_runs(&file, entry, &mut self.buf, path, sparse)?,
        };
        self.stats.bytes += written;
        if mode != meta.mode {
            let st = fstat(&file).map_err(io_err(path, "inspect file"))?;
            if let Some(keep) = &mut self.keep {
                keep.restrict(inode(&st), meta.mode, &[path]);
            }
        }
        // chown clears setuid/setgid, and security.capability with them: owner, mode, xattrs.
        if let Some((uid, gid)) = meta.owner {
            fchown(&file, Some(uid), Some(gid)).map_err(io_err(path, "set owner"))?;
        }
        if !exact_at_creation {
            fchmod(&file, Mode::from_raw_mode(mode)).map_err(io_err(path, "set mode"))?;
        }
        self.set_xattrs(XattrTarget::Fd(file.as_fd()), path, meta);
        futimens(&file, &meta.times).map_err(io_err(path, "set times"))?;
        Ok(())
    }

    fn make_hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        raw_target: &[u8],
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let refuse = |problem| ApplyError::BadHardlink {
            path: path.to_owned(),
            target: names::raw_path(raw_target),
            problem,
        };
        let target =
            names::clean(raw_target).ok_or_else(|| refuse(HardlinkProblem::EscapesRoot))?;
        let Some(target_name) = target.file_name() else {
            return Err(refuse(HardlinkProblem::Directory));
        };
        if target == path {
            return Err(refuse(HardlinkProblem::ItSelf));
        }
        // In a cache directory whiteouts are files, but never anything a link may name.
        if self.keep.is_some() && names::role(&target) != Role::Plain {
            return Err(refuse(HardlinkProblem::Missing));
        }
        let target_parent = match fsops::open_dir_in_root(
            self.root.as_fd(),
            target.parent().unwrap_or(Path::new("")),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if self.keep.is_some() => {
                return self.defer_link(parent, name, path, target, meta, refuse);
            }
            Err(Errno::NOENT | Errno::NOTDIR) => {
                return Err(refuse(HardlinkProblem::Missing));
            }
            Err(e) => return Err(io_err(path, "resolve the hardlink target")(e)),
        };
        let target_type = match fsops::type_at(target_parent.as_fd(), target_name) {
            Ok(Some(FileType::Directory)) => return Err(refuse(HardlinkProblem::Directory)),
            Ok(Some(t)) => t,
            Ok(None) if self.keep.is_some() => {
                return self.defer_link(parent, name, path, target, meta, refuse);
            }
            Ok(None) => return Err(refuse(HardlinkProblem::Missing)),
            Err(e) => return Err(io_err(path, "inspect the hardlink target")(e)),
        };
        self.clear(parent, name, path, false)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, as GNU tar does.
        self.in_dir(parent, path, || {
            linkat(&target_parent, target_name, parent, name, AtFlags::empty())
        })
        .map_err(io_err(path, "create hardlink"))?;
        // containerd applies the link header's metadata to the shared inode; so do we.
        if target_type == FileType::RegularFile
            && let Some(keep) = &mut self.keep
            && keep.unprivileged
        {
            let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(path, "inspect the hardlink"))?;
            if meta.mode & 0o400 == 0 {
                keep.restrict(inode(&st), meta.mode, &[path, &target]);
                let readable = Meta {
                    mode: meta.mode | 0o400,
                    owner: meta.owner,
                    times: meta.times.clone(),
                    xattrs: meta.xattrs.clone(),
                };
                return self.meta_at(parent, name, path, &readable, true);
            }
            keep.restricted.remove(&inode(&st));
        }
        self.meta_at(parent, name, path, meta, target_type != FileType::Symlink)
    }

    /// Owner, mode (when `chmod`), xattrs and times of `parent/name`, never following it.
    fn meta_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), ApplyError> {
        if let Some((uid, gid)) = meta.owner {
            chownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(path, "set owner"))?;
        }
        if chmod {
            // Linux has no chmod that refuses a symlink (rustix lacks fchmodat2); `chmod` is
            // only asked for nodes known not to be symlinks, created here a moment ago.
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io_err(path, "set mode"))?;
        }
        self.set_xattrs(XattrTarget::At(parent, name), path, meta);
        utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(path, "set times"))
    }

    fn set_xattrs(&mut self, target: XattrTarget<'_>, path: &Path, meta: &Meta) {
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            let set = match target {
                XattrTarget::Fd(fd) => fsetxattr(fd, key, value, XattrFlags::empty()),
                XattrTarget::At(parent, name) => lsetxattr(
                    fsops::proc_path(parent, name),
                    key,
                    value,
                    XattrFlags::empty(),
                ),
            };
            if let Err(e) = set {
                self.warn(format!(
                    "{}: xattr {} not set: {}",
                    path.display(),
                    key.to_string_lossy(),
                    io::Error::from(e)
                ));
            }
        }
    }

    /// Makes way for a new node at `parent/name`. Returns true when `keep_dir` and a directory is
    /// there already (the new directory merges into it).
    fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        keep_dir: bool,
    ) -> Result<bool, ApplyError> {
        match fsops::type_at(parent, name).map_err(io_err(path, "inspect the existing entry"))? {
            None => Ok(false),
            Some(FileType::Directory) if keep_dir => Ok(true),
            Some(FileType::Directory) => {
                self.in_dir(parent, path, || fsops::remove_any(parent, name))
                    .map_err(io_err(path, "remove the existing directory"))?;
                self.forget_dirs(path);
                Ok(false)
            }
            Some(_) => {
                self.in_dir(parent, path, || unlinkat(parent, name, AtFlags::empty()))
                    .map_err(io_err(path, "remove the existing entry"))?;
                Ok(false)
            }
        }
    }

    /// Runs `op`, which creates or removes `path` in its `parent`. On EACCES (an unprivileged
    /// applier in a directory a lower layer left without owner write, like Fedora's 0555
    /// `/usr/bin`) grants the owner rwx until the end of the layer and tries once more.
    fn in_dir<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        path: &Path,
        mut op: impl FnMut() -> rustix::io::Result<T>,
    ) -> rustix::io::Result<T> {
        match op() {
            Err(Errno::ACCESS) => {}
            other => return other,
        }
        let parent_path = path.parent().unwrap_or(Path::new(""));
        if unlock_dir(&mut self.dirs, parent, parent_path)? {
            op()
        } else {
            Err(Errno::ACCESS)
        }
    }

    fn whiteout(&mut self, entry_path: &Path, name: &OsStr) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        let Some(dir_fd) = self.existing_dir(dir, entry_path)? else {
            return Ok(());
        };
        self.remove_lower(dir_fd.as_fd(), name, &dir.join(name), entry_path)
    }

    fn opaque(&mut self, entry_path: &Path) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        let Some(dir_fd) = self.existing_dir(dir, entry_path)? else {
            return Ok(());
        };
        let children =
            fsops::list_dir(dir_fd.as_fd()).map_err(io_err(entry_path, "list the directory"))?;
        for child in children {
            self.remove_lower(dir_fd.as_fd(), &child, &dir.join(&child), entry_path)?;
        }
        Ok(())
    }

    /// Cache mode: `DIR/.wh.NAME` kept as a file. When `DIR/NAME` is this layer's own, applying
    /// the tar would only remove what lower layers have below it: recorded as that.
    fn keep_whiteout(&mut self, entry_path: &Path, name: &OsStr) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        let hidden = dir.join(name);
        if self.in_layer.contains(&hidden) {
            let is_dir = match self.existing_dir(dir, entry_path)? {
                Some(fd) => {
                    fsops::type_at(fd.as_fd(), name)
                        .map_err(io_err(entry_path, "inspect a whited-out entry"))?
                        == Some(FileType::Directory)
                }
                None => false,
            };
            if is_dir {
                return self.keep_opaque(&hidden.join(OsStr::from_bytes(names::OPAQUE_MARKER)));
            }
            return Ok(());
        }
        if let Some(keep) = &self.keep {
            keep.check_removal(&hidden, true)?;
        }
        self.keep_marker(entry_path)
    }

    /// Cache mode: `DIR/.wh..wh..opq` kept as a file.
    fn keep_opaque(&mut self, entry_path: &Path) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        if let Some(keep) = &mut self.keep {
            keep.check_removal(dir, false)?;
            keep.opaque.push(dir.to_owned());
        }
        self.keep_marker(entry_path)
    }

    /// Cache mode: an empty file, mode 0600, named as the whiteout entry.
    fn keep_marker(&mut self, entry_path: &Path) -> Result<(), ApplyError> {
        let (Some(dir), Some(name)) = (entry_path.parent(), entry_path.file_name()) else {
            return Err(ApplyError::BadWhiteout {
                path: entry_path.to_owned(),
            });
        };
        let parent = self.make_parents(dir, entry_path)?;
        let parent = parent.as_fd();
        let made = self.in_dir(parent, entry_path, || {
            openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        });
        match made {
            Ok(fd) => fchmod(&fd, Mode::from_raw_mode(0o600))
                .map_err(io_err(entry_path, "set mode of the kept whiteout")),
            // The same whiteout twice; a directory of that name (`.wh.x/f`) cannot also hold it.
            Err(Errno::EXIST)
                if fsops::type_at(parent, name).ok().flatten() == Some(FileType::RegularFile) =>
            {
                Ok(())
            }
            Err(e) => Err(io_err(entry_path, "keep the whiteout as a file")(e)),
        }
    }

    /// Cache mode: a hardlink to what is not in the cache directory, hence in a lower layer,
    /// unless this layer removed it before (then applying the tar fails: so does this).
    fn defer_link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        target: PathBuf,
        meta: &Meta,
        refuse: impl Fn(HardlinkProblem) -> ApplyError,
    ) -> Result<(), ApplyError> {
        let below_deferred = self.keep.as_ref().is_some_and(|keep| {
            keep.deferred
                .iter()
                .any(|l| target.starts_with(&l.path) && target != l.path)
        });
        // Below a deferred link there is a file, once the link is made.
        if below_deferred || self.removed_earlier(&target) {
            return Err(refuse(HardlinkProblem::Missing));
        }
        self.clear(parent, name, path, false)?;
        let time = meta.times.last_modification;
        let link = DeferredLink {
            path: path.to_owned(),
            target,
            mode: meta.mode,
            owner: meta.owner.map(|(uid, gid)| (uid.as_raw(), gid.as_raw())),
            // Always in 0..1e9: parsed by `names::parse_pax_time` or zero.
            mtime: (time.tv_sec, u32::try_from(time.tv_nsec).unwrap_or(0)),
            xattrs: meta.xattrs.clone(),
        };
        if let Some(keep) = &mut self.keep {
            keep.deferred.push(link);
        }
        Ok(())
    }

    /// Cache mode: whether this layer already whited out `target` or made a directory above it
    /// opaque. Its whiteouts are files in the cache directory.
    fn removed_earlier(&self, target: &Path) -> bool {
        let mut dir = PathBuf::new();
        for comp in target {
            let Ok(fd) = fsops::open_dir_in_root(self.root.as_fd(), &dir) else {
                return false;
            };
            let mut whiteout = OsString::from(OsStr::from_bytes(names::WHITEOUT_PREFIX));
            whiteout.push(comp);
            for marker in [OsStr::from_bytes(names::OPAQUE_MARKER), &whiteout] {
                if fsops::type_at(fd.as_fd(), marker).ok().flatten() == Some(FileType::RegularFile)
                {
                    return true;
                }
            }
            dir.push(comp);
        }
        false
    }

    /// Resolves `dir` (root-relative), creating what is missing, for the entry `entry`.
    fn make_parents(&mut self, dir: &Path, entry: &Path) -> Result<OwnedFd, ApplyError> {
        let dirs = &mut self.dirs;
        let keep = &mut self.keep;
        fsops::create_dirs_in_root(
            self.root.as_fd(),
            dir,
            &mut |fd, at| unlock_dir(dirs, fd, at),
            &mut |at, fd| match keep {
                Some(keep) => keep.created(at, fd),
                None => Ok(()),
            },
        )
        .map_err(io_err(entry, "resolve or create the parent directory"))
    }

    /// Cache mode, at the end of the layer: marks the directories it did not list, and hands
    /// over the deferred links.
    fn mark_implicit_dirs(&mut self) -> Result<(), ApplyError> {
        let Some(keep) = self.keep.take() else {
            return Ok(());
        };
        let marker = OsStr::from_bytes(names::IMPLICIT_MARKER);
        let mark = |dir: BorrowedFd<'_>, path: &Path| {
            let fd = openat(
                dir,
                marker,
                OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io_err(path, "mark a directory the layer does not list"))?;
            fchmod(&fd, Mode::from_raw_mode(0o600))
                .map_err(io_err(path, "mark a directory the layer does not list"))
        };
        for (path, implicit) in &keep.implicit {
            // Made anew after an opaque marker above emptied it: listed in the cache's tar, as
            // applying the layer would make it whatever lower layers had there.
            if implicit.fresh == Some(true) || keep.explicit.contains(&implicit.inode) {
                continue;
            }
            let dir = match fsops::open_in_root(self.root.as_fd(), path, ResolveFlags::NO_SYMLINKS)
            {
                Ok(fd) => fd,
                // Replaced later in the layer.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err(path, "reopen directory")(e)),
            };
            let st = fstat(&dir).map_err(io_err(path, "inspect directory"))?;
            if inode(&st) == implicit.inode {
                mark(dir.as_fd(), path)?;
            }
        }
        if !keep.root_explicit {
            mark(self.root.as_fd(), Path::new(""))?;
        }
        self.stats.deferred_links = keep.deferred;
        Ok(())
    }

    /// The directory `dir` if it exists; whiteouts in a missing directory have nothing to hide.
    fn existing_dir(&self, dir: &Path, entry_path: &Path) -> Result<Option<OwnedFd>, ApplyError> {
        match fsops::open_dir_in_root(self.root.as_fd(), dir) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io_err(entry_path, "resolve the whiteout's directory")(e)),
        }
    }

    /// Removes what lower layers left at `parent/name` (root-relative `path`), keeping whatever
    /// this layer created there or below.
    fn remove_lower(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        entry_path: &Path,
    ) -> Result<(), ApplyError> {
        if !self.in_layer.contains(path) {
            self.in_dir(parent, path, || fsops::remove_any(parent, name))
                .map_err(io_err(entry_path, "remove a whited-out entry"))?;
            self.forget_dirs(path);
            return Ok(());
        }
        let is_dir = fsops::type_at(parent, name)
            .map_err(io_err(entry_path, "inspect a whited-out entry"))?
            == Some(FileType::Directory);
        if !is_dir {
            return Ok(());
        }
        let dir = fsops::open_child_dir(parent, name)
            .map_err(io_err(entry_path, "open a whited-out directory"))?;
        let children =
            fsops::list_dir(dir.as_fd()).map_err(io_err(entry_path, "list the directory"))?;
        for child in children {
            self.remove_lower(dir.as_fd(), &child, &path.join(&child), entry_path)?;
        }
        Ok(())
    }

    /// Drops pending directory times at and below a removed `path`.
    fn forget_dirs(&mut self, path: &Path) {
        self.dirs_removed += 1;
        self.last_parent = None;
        let gone: Vec<PathBuf> = self
            .dirs
            .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.dirs.remove(&p);
        }
    }

    fn remember(&mut self, path: PathBuf) {
        let mut cur = Some(path.as_path());
        while let Some(p) = cur {
            if p.as_os_str().is_empty() || !self.in_layer.insert(p.to_owned()) {
                break;
            }
            cur = p.parent();
        }
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.stats.warnings.push(message);
    }

    /// Directory modes and times, deepest first: a parent's restrictive mode must not block
    /// reaching its children, and setting a child's times does not touch its parent's.
    fn finish(mut self) -> Result<ApplyStats, ApplyError> {
        // Before directory modes are restored: the restricted files are found through the
        // directories of the layer, and the markers go into them.
        let readable_dirs = self.keep.as_ref().is_some_and(|k| k.unprivileged);
        self.name_restricted_files()?;
        self.mark_implicit_dirs()?;
        let dirs = std::mem::take(&mut self.dirs);
        for (path, pending) in dirs.iter().rev() {
            let Some(name) = path.file_name() else {
                continue;
            };
            let parent = match fsops::open_dir_in_root(
                self.root.as_fd(),
                path.parent().unwrap_or(Path::new("")),
            ) {
                Ok(fd) => fd,
                // Replaced through a symlinked alias later in the layer: nothing left to date.
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(e) => return Err(io_err(path, "reopen the parent directory")(e)),
            };
            let still_dir = fsops::type_at(parent.as_fd(), name)
                .map_err(io_err(path, "inspect directory"))?
                == Some(FileType::Directory);
            if !still_dir {
                continue;
            }
            if let Some(mode) = pending.mode {
                let applied = self.cache_dir_mode(readable_dirs, path, mode);
                rustix::fs::chmodat(
                    &parent,
                    name,
                    Mode::from_raw_mode(applied),
                    AtFlags::empty(),
                )
                .map_err(io_err(path, "set directory mode"))?;
            }
            if let Some(time) = pending.time {
                let times = Timestamps {
                    last_access: time,
                    last_modification: time,
                };
                utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err(path, "set directory times"))?;
            }
        }
        if let Some(pending) = self.root_dir.take() {
            let root = Path::new("");
            if let Some(mode) = pending.mode {
                let applied = self.cache_dir_mode(readable_dirs, root, mode);
                fchmod(&self.root, Mode::from_raw_mode(applied))
                    .map_err(io_err(root, "set mode"))?;
            }
            if let Some(time) = pending.time {
                let times = Timestamps {
                    last_access: time,
                    last_modification: time,
                };
                futimens(&self.root, &times).map_err(io_err(root, "set times"))?;
            }
        }
        self.stats.modes.sort();
        Ok(self.stats)
    }

    /// The mode to give a directory of the layer at the end: its own, or in a cache built
    /// without root, one its owner can list and search (the real one goes to the stats).
    fn cache_dir_mode(&mut self, readable: bool, path: &Path, mode: u32) -> u32 {
        if !readable || mode & 0o500 == 0o500 {
            return mode;
        }
        self.stats.modes.push((path.to_owned(), mode));
        mode | 0o500
    }

    /// Cache mode without root: one surviving path for each file kept readable, with its mode.
    fn name_restricted_files(&mut self) -> Result<(), ApplyError> {
        let Some(keep) = &mut self.keep else {
            return Ok(());
        };
        for (ino, restricted) in std::mem::take(&mut keep.restricted) {
            for path in &restricted.paths {
                let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                    continue;
                };
                let Ok(dir) =
                    fsops::open_in_root(self.root.as_fd(), parent, ResolveFlags::NO_SYMLINKS)
                else {
                    continue;
                };
                match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if inode(&st) == ino
                            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile =>
                    {
                        self.stats.modes.push((path.clone(), restricted.mode));
                        break;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Charges `bytes` about to be written for `path` to the budget, if there is one.
    fn charge(&mut self, path: &Path, bytes: u64) -> Result<(), ApplyError> {
        match self.budget.as_deref_mut() {
            Some(budget) => budget.charge(bytes).map_err(|reason| ApplyError::TooLarge {
                path: path.to_owned(),
                size: bytes,
                reason,
            }),
            None => Ok(()),
        }
    }
}

/// Gives the owner rwx on `dir` (root-relative `path`) if it lacks any, remembering the mode to
/// put back at the end of the layer. Returns whether anything changed.
fn unlock_dir(
    dirs: &mut BTreeMap<PathBuf, PendingDir>,
    dir: BorrowedFd<'_>,
    path: &Path,
) -> rustix::io::Result<bool> {
    let mode = rustix::fs::fstat(dir)?.st_mode & 0o7777;
    if mode & 0o700 == 0o700 || path.as_os_str().is_empty() {
        return Ok(false);
    }
    // `dir` is an O_PATH fd, which fchmod refuses; chmod through its /proc magic link reaches
    // the same inode without a path lookup that anything in the root could redirect.
    rustix::fs::chmodat(
        rustix::fs::CWD,
        fsops::proc_fd_path(dir),
        Mode::from_raw_mode(mode | 0o700),
        AtFlags::empty(),
    )?;
    let pending = dirs.entry(path.to_owned()).or_insert(PendingDir {
        time: None,
        mode: None,
    });
    pending.mode.get_or_insert(mode);
    Ok(true)
}

/// What cache mode keeps track of beyond the files it writes.
#[derive(Default)]
struct Keep {
    /// Without root, the owner needs read permission to read the cache back: files and
    /// directories are kept readable and their real modes recorded.
    unprivileged: bool,
    /// Files kept readable, by inode: the mode the layer gives them and the paths that named
    /// the inode when it was set (one of them survives unless the layer removed the file).
    restricted: HashMap<(u64, u64), Restricted>,
    deferred: Vec<DeferredLink>,
    /// Directories made as parents of other entries, by physical root-relative path.
    implicit: BTreeMap<PathBuf, Implicit>,
    /// Directories the layer lists, by inode: never implicit, whatever created them first.
    explicit: HashSet<(u64, u64)>,
    /// Directories made opaque so far, by markers or by whiteouts of the layer's own directories.
    opaque: Vec<PathBuf>,
    /// Whether the layer has an entry for the root itself.
    root_explicit: bool,
}

struct Implicit {
    inode: (u64, u64),
    /// Decided when an entry of the layer itself first needs the directory (whiteouts do not):
    /// whether an opaque marker above it had emptied it by then.
    fresh: Option<bool>,
}

struct Restricted {
    mode: u32,
    paths: Vec<PathBuf>,
}

impl Keep {
    fn new() -> Self {
        Keep {
            unprivileged: !rustix::process::geteuid().is_root(),
            ..Keep::default()
        }
    }

    /// Records that the regular file `ino`, reached by `paths`, has mode `mode` in the layer.
    fn restrict(&mut self, ino: (u64, u64), mode: u32, paths: &[&Path]) {
        let entry = self.restricted.entry(ino).or_insert_with(|| Restricted {
            mode,
            paths: Vec::new(),
        });
        entry.mode = mode;
        entry.paths.extend(paths.iter().map(|p| p.to_path_buf()));
    }

    fn created(&mut self, path: &Path, dir: BorrowedFd<'_>) -> rustix::io::Result<()> {
        // Only a symlink's target can name a directory so (`s -> .wh..wh..opq`, then `s/f`); in
        // a tar of the cache it would read as a whiteout.
        if path
            .file_name()
            .is_some_and(|name| names::role(Path::new(name)) != Role::Plain)
        {
            return Err(Errno::INVAL);
        }
        let st = fstat(dir)?;
        self.implicit.insert(
            path.to_owned(),
            Implicit {
                inode: inode(&st),
                fresh: None,
            },
        );
        Ok(())
    }

    /// An entry of the layer needs the directories of `dir` (root-relative, as named).
    fn needed(&mut self, dir: &Path) {
        if self.implicit.is_empty() {
            return;
        }
        for d in dir.ancestors() {
            if d.as_os_str().is_empty() {
                break;
            }
            if let Some(implicit) = self.implicit.get_mut(d)
                && implicit.fresh.is_none()
            {
                implicit.fresh = Some(self.opaque.iter().any(|o| d.starts_with(o) && d != o));
            }
        }
    }

    /// Before the entry `path` is created: refuses it where applying the tar would find a
    /// deferred link's file in its way or replace a deferred link's lower target, and forgets
    /// the deferred links it replaces.
    fn before_entry(&mut self, path: &Path, is_dir: bool) -> Result<(), ApplyError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if self.deferred.iter().any(|l| parent.starts_with(&l.path)) {
            return Err(ApplyError::Io {
                path: path.to_owned(),
                op: "resolve or create the parent directory",
                source: Errno::NOTDIR.into(),
            });
        }
        // A directory merges into a directory and replaces anything else.
        let replaces = |p: &Path| {
            if is_dir {
                p == path
            } else {
                p.starts_with(path)
            }
        };
        if let Some(link) = self.deferred.iter().find(|l| replaces(&l.target)) {
            return Err(changed_later(link));
        }
        self.deferred.retain(|l| !replaces(&l.path));
        Ok(())
    }

    /// Refuses a whiteout of `path` (`itself`: the path and below; else only below) that would
    /// remove the lower target of a deferred link.
    fn check_removal(&self, path: &Path, itself: bool) -> Result<(), ApplyError> {
        match self
            .deferred
            .iter()
            .find(|l| l.target.starts_with(path) && (itself || l.target != path))
        {
            Some(link) => Err(changed_later(link)),
            None => Ok(()),
        }
    }
}

/// How a regular file's content is laid out in its entry.
enum Content {
    /// Byte for byte.
    Plain,
    /// An old-GNU sparse entry, expanded by the tar crate: its holes come as zeros.
    Holes,
    /// A PAX sparse entry: data runs, the map in the records or at the head of the data.
    Runs(PaxSparse),
}

/// The `GNU.sparse.*` description of `entry`, if it has one.
fn pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<PaxSparse>, ApplyError> {
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
fn copy_plain<R: Read>(
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
fn copy_skipping_holes<R: Read>(
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
fn copy_runs<R: Read>(
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

fn changed_later(link: &DeferredLink) -> ApplyError {
    ApplyError::BadHardlink {
        path: link.path.clone(),
        target: link.target.clone(),
        problem: HardlinkProblem::ChangedLater,
    }
}

// Field widths differ between targets.
/// The process umask from `/proc/self/status` (reading it with `umask(2)` would change it for
/// every thread for a moment). `None` when the kernel does not say.
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[allow(clippy::unnecessary_cast)]
fn inode(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

fn id(raw: u64) -> Option<u32> {
    // u32::MAX is -1, which chown reads as "leave unchanged".
    u32::try_from(raw).ok().filter(|&id| id != u32::MAX)
}

fn bad_header<'a>(
    path: &'a Path,
    field: &'static str,
) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::BadHeader {
        path: path.to_owned(),
        field,
        source,
    }
}

fn out_of_range(path: &Path, field: &'static str) -> ApplyError {
    bad_header(path, field)(io::Error::new(
        io::ErrorKind::InvalidData,
        "value out of range",
    ))
}

/// A GNU long name or link ends at its first NUL, as GNU tar and Go's archive/tar read it.
fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|b| *b == 0).next().unwrap_or_default()
}

/// A numeric field left empty (all NULs or spaces) is 0, as for GNU tar and Go's archive/tar.
fn or_empty(value: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    match value {
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// Refuses PAX records Go's archive/tar (docker, containerd) refuses: a key holding a NUL, or a
/// NUL inside a name (GNU tar would cut the name there).
fn check_pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
    let path = PathBuf::from(OsStr::from_bytes(until_nul(&entry.path_bytes())));
    let Some(records) = entry
        .pax_extensions()
        .map_err(|source| ApplyError::Tar { source })?
    else {
        return Ok(());
    };
    for record in records {
        let record = record.map_err(|source| ApplyError::Tar { source })?;
        let (key, value) = (record.key_bytes(), record.value_bytes());
        let is_name = matches!(key, b"path" | b"linkpath" | b"uname" | b"gname");
        if key.contains(&0) || (is_name && value.contains(&0)) {
            return Err(bad_header(&path, "PAX record")(io::Error::new(
                io::ErrorKind::InvalidData,
                "a NUL byte in a PAX record's key or name",
            )));
        }
    }
    Ok(())
}

fn missing_link(path: &Path) -> ApplyError {
    bad_header(path, "linkname")(io::Error::new(
        io::ErrorKind::InvalidData,
        "link entry without a target",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_chown_would_misread_are_refused() {
        assert_eq!(id(0), Some(0));
        assert_eq!(id(65_534), Some(65_534));
        assert_eq!(id(u64::from(u32::MAX) - 1), Some(u32::MAX - 1));
        assert_eq!(id(u64::from(u32::MAX)), None);
        assert_eq!(id(1 << 40), None);
    }

    #[test]
    fn privileged_options_follow_the_effective_uid() {
        let opts = ApplyOptions::for_current_user();
        let root = rustix::process::geteuid().is_root();
        assert_eq!((opts.preserve_ownership, opts.allow_devices), (root, root));
        assert!(opts.xattrs);
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            (
                ApplyError::Escape {
                    path: "../x".into(),
                },
                "../x: path escapes the root",
            ),
            (
                ApplyError::BadHardlink {
                    path: "h".into(),
                    target: "d".into(),
                    problem: HardlinkProblem::Directory,
                },
                "h: hardlink target d is a directory",
            ),
            (
                ApplyError::UnsupportedType {
                    path: "v".into(),
                    typeflag: b'V',
                },
                "v: unsupported tar entry type 'V'",
            ),
            (
                ApplyError::Io {
                    path: "a/b".into(),
                    op: "create file",
                    source: io::Error::from(Errno::ACCESS),
                },
                "a/b: cannot create file",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
