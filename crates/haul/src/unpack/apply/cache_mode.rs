//! The layer cache's own mode of the applier: one layer extracted onto an empty directory so that
//! [`tar_dir`](crate::unpack::dirtar::tar_dir) of it, applied with [`apply_layer`](super::apply_layer)
//! onto the lower layers, does what the layer's own tar would.
//!
//! Promises:
//! - **Whiteouts kept, not executed.** `.wh.NAME` and `.wh..wh..opq` become empty files (mode
//!   0600) of that name; one that can only concern this layer's own entries is recorded as what
//!   it means (nothing for a file or symlink, an opaque marker for a directory).
//! - **Implicit directories marked.** A directory created only as the parent of other entries,
//!   and the root unless the layer has an entry for `.`, holds a marker file, so that replaying
//!   it leaves the lower layers' directory as it was.
//! - **Deferred links.** A hardlink whose target is not in the directory (it lies in a lower
//!   layer) creates nothing and is returned as a [`DeferredLink`], made when the layer is merged.
//!   A layer that changes the lower target of one of its own hardlinks, which a cached directory
//!   cannot record, is refused ([`HardlinkProblem::ChangedLater`]).
//! - **Readable without root.** Files and directories their owner could not read keep owner
//!   read (and search) permission in the cache and their real modes are returned in
//!   [`ApplyStats::modes`](super::ApplyStats::modes), so that readers of a shared cache never
//!   change it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Uid, fchmod, fstat, openat,
};
use rustix::io::Errno;

use super::super::budget::LayerBudget;
use super::error::{ApplyError, HardlinkProblem, io_err};
use super::header::{LEAVE_UNCHANGED, Meta};
use super::names::{self, Role};
use super::{Applier, ApplyOptions, ApplyStats, fsops, run};

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
/// [`tar_dir`](crate::unpack::dirtar::tar_dir) of `root` with the deferred links, applied with
/// [`apply_layer`](super::apply_layer) onto the lower layers, gives what applying the layer's tar
/// itself would.
///
/// # Errors
///
/// As [`apply_layer`](super::apply_layer), and [`ApplyError::RootNotEmpty`] for a `root` that
/// is not empty, [`ApplyError::BadHardlink`] with [`HardlinkProblem::ChangedLater`] for a layer
/// a cached directory cannot record.
pub fn apply_layer_for_cache<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, Some(Keep::new()), None)
}

/// [`apply_layer_for_cache`] within `budget`: every entry is charged before it is created, and
/// one that would pass a limit fails the layer with [`ApplyError::TooLarge`].
///
/// # Errors
///
/// As [`apply_layer_for_cache`], and [`ApplyError::TooLarge`] as above.
pub fn apply_layer_for_cache_within<R: Read>(
    root: &Path,
    archive: R,
    opts: &ApplyOptions,
    budget: &mut LayerBudget,
) -> Result<ApplyStats, ApplyError> {
    run(root, archive, opts, Some(Keep::new()), Some(budget))
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
    /// Numeric owner from the header, when ownership was preserved; 4294967295 (-1 to chown)
    /// leaves the target's as it is.
    pub owner: Option<(u32, u32)>,
    /// Modification time from the header: seconds and nanoseconds (`0..1e9`).
    pub mtime: (i64, u32),
    /// `SCHILY.xattr.*` records of the header (name without the prefix, value), when xattrs
    /// were applied.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What cache mode keeps track of beyond the files it writes.
#[derive(Default)]
pub(super) struct Keep {
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
    pub(super) fn new() -> Self {
        Keep {
            unprivileged: !rustix::process::geteuid().is_root(),
            ..Keep::default()
        }
    }

    /// Whether the cache is built without root, and so keeps what it holds readable.
    pub(super) fn unprivileged(&self) -> bool {
        self.unprivileged
    }

    /// The mode a regular file of mode `mode` gets in the cache: readable by its owner.
    pub(super) fn file_mode(&self, mode: u32) -> u32 {
        if self.unprivileged && mode & 0o400 == 0 {
            mode | 0o400
        } else {
            mode
        }
    }

    /// Records that the layer lists the directory `ino`: it is no implicit one.
    pub(super) fn listed(&mut self, ino: (u64, u64)) {
        self.explicit.insert(ino);
    }

    /// Records that the layer has an entry for the root itself.
    pub(super) fn root_listed(&mut self) {
        self.root_explicit = true;
    }

    /// Forgets that the file `ino` is kept readable: a hardlink gave it a readable mode.
    pub(super) fn unrestrict(&mut self, ino: (u64, u64)) {
        self.restricted.remove(&ino);
    }

    /// Records that the regular file `ino`, reached by `paths`, has mode `mode` in the layer.
    pub(super) fn restrict(&mut self, ino: (u64, u64), mode: u32, paths: &[&Path]) {
        let entry = self.restricted.entry(ino).or_insert_with(|| Restricted {
            mode,
            paths: Vec::new(),
        });
        entry.mode = mode;
        entry.paths.extend(paths.iter().map(|p| p.to_path_buf()));
    }

    pub(super) fn created(&mut self, path: &Path, dir: BorrowedFd<'_>) -> rustix::io::Result<()> {
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
    pub(super) fn needed(&mut self, dir: &Path) {
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
    pub(super) fn before_entry(&mut self, path: &Path, is_dir: bool) -> Result<(), ApplyError> {
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

impl Applier<'_> {
    /// Cache mode: `DIR/.wh.NAME` kept as a file. When `DIR/NAME` is this layer's own, applying
    /// the tar would only remove what lower layers have below it: recorded as that.
    pub(super) fn keep_whiteout(
        &mut self,
        entry_path: &Path,
        name: &OsStr,
    ) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        let hidden = dir.join(name);
        if self.in_layer.contains(hidden.as_os_str()) {
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
    pub(super) fn keep_opaque(&mut self, entry_path: &Path) -> Result<(), ApplyError> {
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
    pub(super) fn defer_link(
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
            owner: meta.owner.map(|(uid, gid)| {
                (
                    uid.map_or(LEAVE_UNCHANGED, Uid::as_raw),
                    gid.map_or(LEAVE_UNCHANGED, Gid::as_raw),
                )
            }),
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

    /// Cache mode, at the end of the layer: marks the directories it did not list, and hands
    /// over the deferred links.
    pub(super) fn mark_implicit_dirs(&mut self) -> Result<(), ApplyError> {
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

    /// The mode to give a directory of the layer at the end: its own, or in a cache built
    /// without root, one its owner can list and search (the real one goes to the stats).
    pub(super) fn cache_dir_mode(&mut self, readable: bool, path: &Path, mode: u32) -> u32 {
        if !readable || mode & 0o500 == 0o500 {
            return mode;
        }
        self.stats.modes.push((path.to_owned(), mode));
        mode | 0o500
    }

    /// Cache mode without root: one surviving path for each file kept readable, with its mode.
    pub(super) fn name_restricted_files(&mut self) -> Result<(), ApplyError> {
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
}

fn changed_later(link: &DeferredLink) -> ApplyError {
    ApplyError::BadHardlink {
        path: link.path.clone(),
        target: link.target.clone(),
        problem: HardlinkProblem::ChangedLater,
    }
}

#[allow(clippy::unnecessary_cast)]
pub(super) fn inode(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[cfg(test)]
mod tests {
    // Moved from tests/apply_hostile.rs so that the budgets need not be public: the layer cache
    // is the only caller that applies within a budget.
    use std::io::Cursor;

    use test_registry::{LayerBuilder, RawEntry};

    use super::super::super::budget::{Exceeded, ImageBudget, LayerBudget};
    use super::super::super::image::UnpackOptions;
    use super::*;

    fn opts() -> ApplyOptions {
        ApplyOptions {
            preserve_ownership: false,
            allow_devices: false,
            xattrs: true,
        }
    }

    fn with_pax(mut entry: RawEntry, key: &str, value: &[u8]) -> RawEntry {
        entry.pax.push((key.into(), value.to_vec()));
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
    fn a_sparse_entry_is_charged_its_real_size_before_anything_is_written() {
        let options = UnpackOptions {
            expansion_ratio: 1,
            min_layer_limit: 1 << 20,
            ..UnpackOptions::for_current_user()
        };
        // 3 bytes of data, a real size of 1 TiB.
        let layer = LayerBuilder::new()
            .add_file("first", b"first", 0o644)
            .raw_entry(sparse_v01("huge", "1099511627776", "0,3", b"big"))
            .finish_tar();
        let tmp = tempfile::tempdir().unwrap();
        let mut budget =
            LayerBudget::new(std::sync::Arc::new(ImageBudget::unlimited()), &options, 1);
        let err =
            apply_layer_for_cache_within(tmp.path(), Cursor::new(layer), &opts(), &mut budget)
                .unwrap_err();
        match err {
            ApplyError::TooLarge { path, size, reason } => {
                assert_eq!(path, Path::new("huge"));
                assert_eq!(size, 1 << 40);
                assert_eq!(reason, Exceeded::Layer { limit: 1 << 20 });
            }
            other => panic!("{other:?}"),
        }
        assert!(tmp.path().join("first").exists());
        assert!(
            !tmp.path().join("huge").exists(),
            "nothing of it was created"
        );
    }
}
