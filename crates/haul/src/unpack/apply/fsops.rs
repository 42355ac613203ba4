//! File-system primitives that stay inside the root by construction.
//!
//! Multi-component paths are only ever resolved by the kernel with `RESOLVE_IN_ROOT` (symlinks and
//! `..` are clamped at the root fd, as if chrooted), or walked here one plain component at a time
//! with `O_NOFOLLOW`. Everything else operates on a single name relative to a directory fd, without
//! following it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Uid, mkdirat, openat, openat2,
    readlinkat, statat, unlinkat,
};
use rustix::io::Errno;

/// Symlinks followed while creating parents before giving up, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

/// Mode of parent directories the tar does not list, as docker and containerd create them.
const IMPLICIT_DIR_MODE: u32 = 0o755;

fn as_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// Opens the existing directory `path` (root-relative) as an `O_PATH` fd, resolving symlinks and
/// `..` as if `root` were `/`.
pub(super) fn open_dir_in_root(root: BorrowedFd<'_>, path: &Path) -> rustix::io::Result<OwnedFd> {
    open_in_root(root, path, ResolveFlags::empty())
}

/// Opens the existing directory `path` (root-relative) as an `O_PATH` fd, resolving it with
/// `extra` resolve flags on top of `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`.
pub(super) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    extra: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let path = as_dot(path);
    let mut attempts = 0;
    loop {
        match openat2(
            root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | extra,
        ) {
            // The kernel returns EAGAIN when a rename elsewhere on the system raced a `..` walk
            // under RESOLVE_IN_ROOT; a retry is the documented answer.
            Err(Errno::AGAIN | Errno::INTR) if attempts < 16 => attempts += 1,
            other => return other,
        }
    }
}

/// Like [`open_dir_in_root`], creating missing directories (mode 0755) on the way, including
/// the missing target of a dangling symlink, as `mkdir -p` in a chroot would.
///
/// `unlock` is called with a directory (and its physical root-relative path) where `mkdir` was
/// refused with EACCES; when it returns true the `mkdir` is tried once more. `created` is called
/// with each directory made here (its physical root-relative path and an `O_PATH` fd).
pub(super) fn create_dirs_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    unlock: &mut dyn FnMut(BorrowedFd<'_>, &Path) -> rustix::io::Result<bool>,
    created: &mut dyn FnMut(&Path, BorrowedFd<'_>) -> rustix::io::Result<()>,
) -> rustix::io::Result<OwnedFd> {
    match open_dir_in_root(root, path) {
        Err(Errno::NOENT) => {}
        other => return other,
    }
    let mut todo: VecDeque<OsString> = path.iter().map(OsStr::to_owned).collect();
    // The physical path of `cur` from the root: plain names of real directories only, so `..`
    // is a pop and re-opening it needs no symlink at all.
    let mut resolved = PathBuf::new();
    let mut cur = open_dir_in_root(root, Path::new(""))?;
    let mut links = 0;
    while let Some(comp) = todo.pop_front() {
        match comp.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                cur = open_in_root(root, &resolved, ResolveFlags::NO_SYMLINKS)?;
                continue;
            }
            _ => {}
        }
        let mut made = false;
        match statat(&cur, &comp, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {
                made = true;
                let mode = Mode::from_raw_mode(IMPLICIT_DIR_MODE);
                match mkdirat(&cur, &comp, mode) {
                    Err(Errno::ACCESS) if unlock(cur.as_fd(), &resolved)? => {
                        mkdirat(&cur, &comp, mode)?
                    }
                    other => other?,
                }
                // mkdir is subject to the umask; the mode must not depend on the caller's.
                // chmodat follows a final symlink, but the name was created as a directory just
                // above and nobody else writes into the root while a layer is applied.
                rustix::fs::chmodat(
                    &cur,
                    &comp,
                    Mode::from_raw_mode(IMPLICIT_DIR_MODE),
                    AtFlags::empty(),
                )?;
            }
            Err(e) => return Err(e),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {}
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::LOOP);
                    }
                    let target = readlinkat(&cur, &comp, Vec::new())?.into_bytes();
                    if target.starts_with(b"/") {
                        resolved = PathBuf::new();
                        cur = open_dir_in_root(root, Path::new(""))?;
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        todo.push_front(OsString::from_vec(part.to_vec()));
                    }
                    continue;
                }
                _ => return Err(Errno::NOTDIR),
            },
        }
        cur = openat(
            &cur,
            &comp,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        resolved.push(&comp);
        if made {
            created(&resolved, cur.as_fd())?;
        }
    }
    Ok(cur)
}

/// The type of `parent/name` itself (never followed), `None` when absent.
pub(super) fn type_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> rustix::io::Result<Option<FileType>> {
    match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the directory `parent/name` for `*at` calls; fails rather than follow a symlink.
pub(super) fn open_child_dir(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory, without `.` and `..`.
pub(super) fn list_dir(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    // `Dir::read_from` would reopen with the fd's own flags, and an O_PATH fd cannot be read.
    let readable = openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Dir::new(readable)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// Removes `parent/name` whatever it is; a directory with everything below it. Never follows a
/// symlink: one inside the tree is unlinked, not descended into.
pub(super) fn remove_any(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match type_at(parent, name)? {
        None => Ok(()),
        Some(FileType::Directory) => remove_tree(parent, name),
        Some(_) => unlinkat(parent, name, AtFlags::empty()),
    }
}

fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    let dir = open_child_dir(parent, name)?;
    let names = match list_dir(dir.as_fd()) {
        // An unprivileged applier may own a directory it cannot read (a layer's mode 0500 or
        // 0000 dir): it is being deleted, so its mode no longer matters.
        Err(Errno::ACCESS) => {
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
            list_dir(dir.as_fd())?
        }
        other => other?,
    };
    let mut made_writable = false;
    for child in names {
        let removed = match type_at(dir.as_fd(), &child)? {
            None => Ok(()),
            Some(FileType::Directory) => remove_tree(dir.as_fd(), &child),
            Some(_) => unlinkat(&dir, &child, AtFlags::empty()),
        };
        match removed {
            Err(Errno::ACCESS) if !made_writable => {
                made_writable = true;
                rustix::fs::chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
                remove_any(dir.as_fd(), &child)?;
            }
            other => other?,
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Whether chown to `uid`/`gid` (`None`: leave as is) would change the owner `st` shows. A new
/// file or directory already has the applier's ids (the group of a setgid parent), the tar's
/// own ids for nearly every entry of an image pulled as root: skipping that chown spares a
/// journal update per file (3.6% of a 27,000-file pull's CPU), and nothing else changes, since
/// what a chown clears besides (setuid, setgid, security.capability) is set after it.
pub(super) fn owner_differs(st: &Stat, uid: Option<Uid>, gid: Option<Gid>) -> bool {
    uid.is_some_and(|uid| uid.as_raw() != st.st_uid)
        || gid.is_some_and(|gid| gid.as_raw() != st.st_gid)
}

/// A path naming `parent/name` without resolving `name`, for the calls that have no `*at` form
/// (`lsetxattr`): the kernel follows the `/proc/self/fd` magic link to the very directory the fd
/// holds, then looks up the single plain `name` there.
pub(super) fn proc_path(parent: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = proc_fd_path(parent).into_os_string().into_vec();
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    PathBuf::from(OsString::from_vec(path))
}

/// `/proc/self/fd/N`: the kernel resolves it to the inode `fd` holds, even for an O_PATH fd.
pub(super) fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
