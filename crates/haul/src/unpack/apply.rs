//! Applies one layer's uncompressed tar onto a root directory, the way docker and containerd
//! apply OCI layer changesets.
//!
//! Promises:
//! - **Confinement.** No entry creates, removes, links to or changes anything outside `root`.
//!   Parent directories are resolved by the kernel with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`, so symlinks from this or lower layers resolve as if `root` were `/`;
//!   the last component is handled with `*at` calls on that parent fd and never followed. Names
//!   that climb above the root (`../x`, `a/../../x`) and hardlinks to such targets fail the layer.
//! - **The tree docker sees.** The tar is read as Go's archive/tar (docker, containerd) reads
//!   it where the tar crate alone would read other members out of the same bytes: a header-only
//!   member (link, device, directory, FIFO) has no content whatever its size field or PAX `size`
//!   says; of PAX records repeating a key the last counts; a PAX header or GNU long name over
//!   [`MAX_EXTENSION`] fails the layer; a stream that ends right after the last content, without
//!   its padding or the end-of-archive blocks, is complete.
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
//!   layers, does what the layer's own tar would (see `cache_mode.rs` for how).
//!
//! The tar crate only parses. Its `unpack` is no layer applier: no whiteouts, devices written as
//! empty files, one failed xattr fatal, and symlinks resolved against the host.
//!
//! Inside: this file reads the entries and creates the nodes; `header` reads a member's
//! metadata, `content` writes a file's bytes, `dirs` defers directory modes and times,
//! `whiteouts` executes whiteouts, `cache_mode` keeps them instead, `tar_input` is what the tar
//! crate reads (the layer as Go reads it), `names` and `sparse` parse, `fsops` holds the confined file-system calls.

mod cache_mode;
mod content;
mod dirs;
mod error;
mod fsops;
mod header;
pub(crate) mod names;
mod sparse;
mod tar_input;
mod whiteouts;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, XattrFlags, chownat, fchmod, fchown, fsetxattr, fstat,
    futimens, linkat, lsetxattr, mkdirat, mknodat, openat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use tar::EntryType;

use super::budget::{ENTRY_OVERHEAD, LayerBudget};
use cache_mode::{Keep, inode};
use content::Content;
pub(crate) use content::{CACHED_SIZE_RECORD, CloneSource, MIN_CLONE_BYTES};
use dirs::{PendingDir, unlock_dir};
use error::{bad_header, io_err, missing_link};
use header::{Meta, check_pax_records, until_nul};
use names::Role;
use tar_input::{GoView, Oversized, Unpadded};

pub use cache_mode::{DeferredLink, apply_layer_for_cache, apply_layer_for_cache_within};
pub use error::{ApplyError, HardlinkProblem, MAX_EXTENSION, SparseProblem};

/// Copy buffer for file contents: large enough that syscalls are not the cost.
const COPY_BUFFER: usize = 256 * 1024;

/// What the applier may do beyond creating files, directories and links.
/// [`ApplyOptions::for_current_user`] gives what the process can do.
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
    #[must_use]
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        ApplyOptions {
            preserve_ownership: root,
            allow_devices: root,
            xattrs: true,
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Tar entries processed (whiteouts and skipped entries included; PAX headers not).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Things skipped or half-applied, one sentence each, naming the entry.
    pub warnings: Vec<String>,
    /// [`apply_layer_for_cache`] only: hardlinks whose target lies in a lower layer, in tar order.
    /// Nothing was created for them; [`tar_dir`](super::dirtar::tar_dir) replays them. Empty
    /// from [`apply_layer`]; hidden with the cache mode.
    #[doc(hidden)]
    pub deferred_links: Vec<DeferredLink>,
    /// [`apply_layer_for_cache`] without root only: regular files and directories the cache
    /// keeps readable by their owner, with the mode the layer gives them (one path per inode),
    /// for [`tar_cached`](super::dirtar::tar_cached) to replay. Empty from [`apply_layer`];
    /// hidden with the cache mode.
    #[doc(hidden)]
    pub modes: Vec<(PathBuf, u32)>,
}

/// Applies one layer's uncompressed tar stream onto `root` (an existing directory holding the
/// lower layers already applied, or empty for the first), as docker and containerd apply OCI
/// layer changesets.
///
/// - **Confined.** No entry creates, removes, links to or changes anything outside `root`:
///   symlinks from this or lower layers resolve as if `root` were `/` (`openat2` with
///   `RESOLVE_IN_ROOT`), the last component of a name is never followed, and names or hardlink
///   targets that climb above the root fail the layer.
/// - **The tree docker sees.** The tar is read as Go's archive/tar reads it (header-only members
///   carry no content whatever their size says; the last of repeated PAX records counts; PAX
///   headers and GNU long names over [`MAX_EXTENSION`] fail the layer).
/// - **Changeset semantics.** `DIR/.wh.NAME` removes `DIR/NAME` as lower layers left it;
///   `DIR/.wh..wh..opq` removes what lower layers put in `DIR` but keeps what this layer adds. A
///   directory over a directory merges; anything else replaces what was there.
/// - **Metadata.** Modes with setuid, setgid and sticky (the umask ignored), mtimes with PAX
///   nanoseconds, and, as `opts` allow, numeric ownership, devices and `SCHILY.xattr.*`
///   records. Directory mtimes are set once the whole layer is in.
/// - **Sparse files** (old GNU and PAX 0.0, 0.1, 1.0) are written as their data runs, holes
///   left as holes, after their maps are checked.
///
/// Reads `archive` up to the tar's end-of-archive blocks (or its end, if they are missing) and
/// returns: the caller drains the rest of the stream when it hashes every byte for the diff_id.
/// Decompressing the blob and checking the diff_id are the caller's, as are limits on what a
/// layer may write. Blocks the calling thread.
///
/// # Errors
///
/// [`ApplyError`], naming the entry, for a tar that is malformed or hostile (an escape, a bad
/// hardlink or whiteout, a bad sparse map, an unsupported entry type) and for a file-system
/// operation that failed. The root is then partly updated and must be discarded.
pub fn apply_layer<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, None, None)
}

/// [`apply_layer`] of a cached layer's stream by reference, its big regular files cloned or
/// copied from `source` (the cached directory the stream is made of): see [`CloneSource`].
pub(crate) fn apply_layer_cloning<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
    source: CloneSource,
) -> Result<ApplyStats, ApplyError> {
    run_with(root, archive, opts, None, None, Some(source))
}

fn run<'o, R: Read>(
    root: &Path,
    archive: R,
    opts: &'o ApplyOptions,
    keep: Option<Keep>,
    budget: Option<&'o mut LayerBudget>,
) -> Result<ApplyStats, ApplyError> {
    run_with(root, archive, opts, keep, budget, None)
}

fn run_with<'o, R: Read>(
    root: &Path,
    archive: R,
    opts: &'o ApplyOptions,
    keep: Option<Keep>,
    budget: Option<&'o mut LayerBudget>,
    clone: Option<CloneSource>,
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
        clone,
    };
    let data_end = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut archive = tar::Archive::new(Unpadded::new(GoView::new(archive), data_end.clone()));
    archive.set_ignore_zeros(false);
    for entry in archive.entries_with_seek().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let size = entry.header().entry_size().unwrap_or(u64::MAX);
        data_end.set(entry.raw_file_position().saturating_add(size));
        applier.apply_entry(&mut entry)?;
    }
    // A stream that ends where a header would start is taken as the end of the archive, as Go's
    // archive/tar (containerd, podman, umoci) takes it: umoci 0.4.7 writes layers without the
    // end-of-archive blocks. That nothing is missing is the diff_id's to prove, over every byte.
    applier.finish()
}

/// An error reading the tar: the tar crate's, or [`GoView`]'s refusal of what Go refuses.
fn tar_error(source: io::Error) -> ApplyError {
    match source.get_ref().and_then(|e| e.downcast_ref::<Oversized>()) {
        Some(&Oversized { typeflag, size }) => ApplyError::ExtensionTooLarge { typeflag, size },
        None => ApplyError::Tar { source },
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

struct Applier<'o> {
    root: OwnedFd,
    opts: &'o ApplyOptions,
    budget: Option<&'o mut LayerBudget>,
    /// Cache mode's bookkeeping; `None` when applying for real.
    keep: Option<Keep>,
    stats: ApplyStats,
    /// Paths this layer created and all their ancestors: what opaque markers and whiteouts must
    /// keep, since they only hide lower layers. Kept as their bytes: the paths are clean (one
    /// spelling each), and hashing a `Path` component by component cost 0.8% of the CPU of a
    /// pull of 27,000 files.
    in_layer: HashSet<OsString>,
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
    /// Where the files' content already is, to clone rather than copy (a merge from the cache).
    clone: Option<CloneSource>,
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
        let pax_sparse = content::pax_sparse(entry)?;
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
        let meta = Meta::read(entry, &path, self.opts)?;

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
                // Only a merge's own stream may refer to the cache; to anything else such an
                // entry is the empty file it is in the tar.
                None if self.clone.is_some() && entry.size() == 0 => {
                    content::cached_size(entry)?.map_or(Content::Plain, Content::Cached)
                }
                None => Content::Plain,
            };
            let size = match &content {
                Content::Runs(sparse) => sparse.real_size,
                Content::Cached(size) => *size,
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
            keep.listed(inode(&st));
        }
        let pending = self.meta_dir(&dir, path, meta)?;
        self.dirs.insert(path.to_owned(), pending);
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
        let mode = self
            .keep
            .as_ref()
            .map_or(meta.mode, |keep| keep.file_mode(meta.mode));
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
            Content::Cached(size) => match self.clone.as_mut() {
                Some(source) => source.clone_or_copy(&file, path, size)?,
                None => 0,
            },
            Content::Plain => content::copy_plain(&file, entry, &mut self.buf, path)?,
            Content::Holes => content::copy_skipping_holes(&file, entry, &mut self.buf, path)?,
            Content::Runs(sparse) => content::copy_runs(&file, entry, &mut self.buf, path, sparse)?,
        };
        self.stats.bytes += written;
        let st = if mode != meta.mode || meta.owner.is_some() {
            Some(fstat(&file).map_err(io_err(path, "inspect file"))?)
        } else {
            None
        };
        if let (Some(keep), Some(st)) = (&mut self.keep, &st)
            && mode != meta.mode
        {
            keep.restrict(inode(st), meta.mode, &[path]);
        }
        // chown clears setuid/setgid, and security.capability with them: owner, mode, xattrs.
        if let (Some((uid, gid)), Some(st)) = (meta.owner, &st)
            && fsops::owner_differs(st, uid, gid)
        {
            fchown(&file, uid, gid).map_err(io_err(path, "set owner"))?;
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
            && keep.unprivileged()
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
            keep.unrestrict(inode(&st));
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
            chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
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

    fn remember(&mut self, path: PathBuf) {
        let mut cur = Some(path.as_path());
        while let Some(p) = cur {
            if p.as_os_str().is_empty() || !self.in_layer.insert(p.as_os_str().to_owned()) {
                break;
            }
            cur = p.parent();
        }
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.stats.warnings.push(message);
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

/// The process umask from `/proc/self/status` (reading it with `umask(2)` would change it for
/// every thread for a moment). `None` when the kernel does not say.
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_options_follow_the_effective_uid() {
        let opts = ApplyOptions::for_current_user();
        let root = rustix::process::geteuid().is_root();
        assert_eq!((opts.preserve_ownership, opts.allow_devices), (root, root));
        assert!(opts.xattrs);
    }
}
