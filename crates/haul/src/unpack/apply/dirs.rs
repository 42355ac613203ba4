//! Directories' metadata over the course of a layer. A directory's mode is set when its entry
//! comes, except that the owner keeps rwx until the end of the layer so that its children can
//! still be added (also to lower layers' directories that lack it, like Fedora's 0555
//! `/usr/bin`); its mtime is set at the end, deepest first, since adding children changes it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, Timespec, Timestamps, fchmod, fchown, fstat, futimens, utimensat,
};
use rustix::io::Errno;

use super::cache_mode::Keep;
use super::error::{ApplyError, io_err};
use super::header::Meta;
use super::{Applier, ApplyStats, XattrTarget, fsops};

/// A directory whose mtime or mode waits for the end of the layer.
pub(super) struct PendingDir {
    /// From this layer's entry; `None` for a lower layer's directory only unlocked here.
    pub(super) time: Option<Timespec>,
    /// The mode to put back when the one in force lets the owner do more.
    pub(super) mode: Option<u32>,
}

impl Applier<'_> {
    /// Owner, mode and xattrs of a directory; its times wait for the end of the layer.
    pub(super) fn meta_dir(
        &mut self,
        dir: &OwnedFd,
        path: &Path,
        meta: &Meta,
    ) -> Result<PendingDir, ApplyError> {
        if let Some((uid, gid)) = meta.owner {
            let st = fstat(dir).map_err(io_err(path, "inspect directory"))?;
            if fsops::owner_differs(&st, uid, gid) {
                fchown(dir, uid, gid).map_err(io_err(path, "set owner"))?;
            }
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

    pub(super) fn root_metadata(&mut self, meta: &Meta) -> Result<(), ApplyError> {
        let root = self.root.try_clone().map_err(|e| ApplyError::Io {
            path: PathBuf::new(),
            op: "duplicate the root fd",
            source: e,
        })?;
        self.root_dir = Some(self.meta_dir(&root, Path::new(""), meta)?);
        if let Some(keep) = &mut self.keep {
            keep.root_listed();
        }
        Ok(())
    }

    /// Runs `op`, which creates or removes `path` in its `parent`. On EACCES (an unprivileged
    /// applier in a directory a lower layer left without owner write, like Fedora's 0555
    /// `/usr/bin`) grants the owner rwx until the end of the layer and tries once more.
    pub(super) fn in_dir<T>(
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

    /// Drops pending directory times at and below a removed `path`.
    pub(super) fn forget_dirs(&mut self, path: &Path) {
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

    /// Directory modes and times, deepest first: a parent's restrictive mode must not block
    /// reaching its children, and setting a child's times does not touch its parent's.
    pub(super) fn finish(mut self) -> Result<ApplyStats, ApplyError> {
        // Before directory modes are restored: the restricted files are found through the
        // directories of the layer, and the markers go into them.
        let readable_dirs = self.keep.as_ref().is_some_and(Keep::unprivileged);
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
}

/// Gives the owner rwx on `dir` (root-relative `path`) if it lacks any, remembering the mode to
/// put back at the end of the layer. Returns whether anything changed.
pub(super) fn unlock_dir(
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
