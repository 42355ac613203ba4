//! Where an unpack builds its tree, how the finished tree is published, and how staging
//! directories that a killed unpack left are found and removed.
//!
//! Where the tree is built:
//! - a target that does not exist is built **beside** it, in `.NAME.haul-unpack-<pid>-<random>`,
//!   and renamed into place in one `rename(2)`: the target appears whole or not at all;
//! - an existing directory (empty, or not with `force`) is built **inside** it, in
//!   `TARGET/.haul-unpack-<pid>-<random>`, on the target's own filesystem. This is what makes an
//!   empty mount point work (a mount point cannot be renamed over, `EBUSY`, and the directory
//!   beside it is another filesystem) and also a target whose parent is not writable. Publishing
//!   then moves the tree's top-level entries up, one `rename(2)` each (no data is copied), after
//!   moving what `force` replaces into `TARGET/.haul-unpack-<…>.old`, removed last; the root's
//!   own mode, owner and times are then copied from the staging directory. The promise is
//!   weaker than for a new target: until that handful of renames ends the target shows part of
//!   the tree's top level (each entry already complete), and an unpack killed among them leaves
//!   that part; the rest of the time the target holds only the hidden staging directory.
//!
//! Finding leftovers: the staging directory may be anywhere, so the store keeps a record of each
//! one, `ROOT/staging/<id>`, a file holding its absolute path, written (and fsynced) before the
//! directory is made and removed after it is gone. The unpack holds an exclusive flock on its
//! record while it lives; the kernel drops it when the process dies. A record whose lock can be
//! taken, and that still has a name (the owner unlinks it before letting go), belongs to a dead
//! unpack: [`sweep`] removes the directory it names (and its `.old` sibling), checking first
//! that it is a real directory (never a symlink) named like haul's, then the record. The next
//! unpack and `haul image prune` sweep. A read-only store can record nothing; its unpacks'
//! staging directories are still recognisable by name.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{RenameFlags, Timestamps};

use super::image::{UnpackError, remove_tree};
use crate::store::{STAGING_DIR, Store, StoreError};

/// What every staging directory's name holds.
pub(crate) const MARKER: &str = ".haul-unpack-";
/// A record is an absolute path; anything longer is not one of ours.
const MAX_RECORD: u64 = 64 << 10;

/// Where the tree goes relative to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// The target does not exist: built beside it, renamed into place.
    Beside,
    /// The target is an existing directory: built inside it, entries moved up.
    Inside,
}

/// An unpack's staging directory, recorded in the store while it exists. Dropping it without
/// [`Staging::publish`] removes the directory and the record.
#[derive(Debug)]
pub(crate) struct Staging {
    store: Store,
    target: PathBuf,
    path: PathBuf,
    placement: Placement,
    /// The record, locked; `None` in a read-only store.
    record: Option<(PathBuf, File)>,
    done: bool,
}

impl Staging {
    /// Checks `target` (refused when it is a non-empty directory and `force` is not set) and
    /// makes a recorded staging directory for it.
    pub(crate) fn prepare(
        store: &Store,
        target: &Path,
        force: bool,
    ) -> Result<Staging, UnpackError> {
        let target = std::path::absolute(target).map_err(io_err(target))?;
        let placement = match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                let mut entries = std::fs::read_dir(&target).map_err(io_err(&target))?;
                if entries.next().is_some() && !force {
                    return Err(UnpackError::TargetNotEmpty { path: target });
                }
                Placement::Inside
            }
            // A symlink to a directory is the user's way of naming one; anything else fails
            // below as it would have before (creating or renaming onto it).
            Ok(_) if std::fs::metadata(&target).is_ok_and(|m| m.is_dir()) => {
                return Staging::prepare(
                    store,
                    &std::fs::canonicalize(&target).map_err(io_err(&target))?,
                    force,
                );
            }
            Ok(_) => Placement::Beside,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Placement::Beside,
            Err(e) => return Err(io_err(&target)(e)),
        };
        let id = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        let path = match placement {
            Placement::Inside => target.join(format!("{MARKER}{id}")),
            Placement::Beside => {
                let parent = target.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "rootfs".to_owned());
                parent.join(format!(".{name}{MARKER}{id}"))
            }
        };
        let record = record(store, &id, &path)?;
        let staging = Staging {
            store: store.clone(),
            target,
            path,
            placement,
            record,
            done: false,
        };
        std::fs::create_dir(&staging.path).map_err(io_err(&staging.path))?;
        Ok(staging)
    }

    /// The directory the tree is built in.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished tree into place (see the module documentation), then removes what it
    /// replaced and the record.
    pub(crate) fn publish(mut self, preserve_ownership: bool) -> Result<(), UnpackError> {
        match self.placement {
            Placement::Beside => self.publish_beside()?,
            Placement::Inside => self.publish_inside(preserve_ownership)?,
        }
        self.done = true;
        self.forget();
        Ok(())
    }

    fn publish_beside(&self) -> Result<(), UnpackError> {
        // The target was absent when the unpack began; if something appeared since, this fails
        // rather than replace it.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.path,
            rustix::fs::CWD,
            &self.target,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| UnpackError::Io {
            path: self.target.clone(),
            source: e.into(),
        })
    }

    fn publish_inside(&self, preserve_ownership: bool) -> Result<(), UnpackError> {
        let staging_name = self.path.file_name().unwrap_or_default().to_owned();
        let old = self.old_path();
        let old_name = old.file_name().unwrap_or_default().to_owned();
        let mut moved_aside = false;
        for name in names(&self.target)? {
            if name == staging_name || name == old_name {
                continue;
            }
            if !moved_aside {
                std::fs::create_dir(&old).map_err(io_err(&old))?;
                moved_aside = true;
            }
            move_entry(&self.target.join(&name), &old.join(&name))?;
        }
        for name in names(&self.path)? {
            move_entry(&self.path.join(&name), &self.target.join(&name))?;
        }
        copy_root_metadata(&self.path, &self.target, preserve_ownership)?;
        std::fs::remove_dir(&self.path).map_err(io_err(&self.path))?;
        if moved_aside {
            remove_tree(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    fn old_path(&self) -> PathBuf {
        old_sibling(&self.path)
    }

    /// Removes the record (the directory is gone or published): unlinked before its lock is
    /// let go, so a sweeper that takes the lock after sees a record without a name.
    fn forget(&mut self) {
        if let Some((rel, _file)) = self.record.take() {
            let _ = self.store.dir().remove_file(&rel);
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            for path in [self.path.clone(), self.old_path()] {
                if let Err(e) = remove_tree(&path) {
                    tracing::warn!(path = %path.display(), "cannot remove the staging directory: {e}");
                    // Kept on record: the next unpack or prune tries again.
                    return;
                }
            }
        }
        self.forget();
    }
}

/// A staging directory [`sweep`] found that no live unpack owns.
#[derive(Debug, Clone)]
pub(crate) struct Stale {
    /// The directory, as recorded.
    pub path: PathBuf,
    /// Bytes of the files in it (and in its `.old` sibling).
    pub bytes: u64,
}

/// Finds the staging directories of unpacks that died (their record's lock is free) and, unless
/// `dry_run`, removes them and their records. A record naming something that is not a real
/// directory named like haul's staging directories has only the record removed.
pub(crate) fn sweep(store: &Store, dry_run: bool) -> Result<Vec<Stale>, StoreError> {
    let dir = store.dir();
    let mut stale = Vec::new();
    for entry in dir.list(Path::new(STAGING_DIR))? {
        if !entry.is_file() {
            continue;
        }
        let rel = Path::new(STAGING_DIR).join(&entry.name);
        if entry.name.as_bytes().starts_with(NEW_RECORD.as_bytes()) {
            // A record being written (see `record`): left alone unless an unpack died in the
            // moment between creating and naming it, long ago. No directory exists for it yet.
            let abandoned = entry
                .modified()
                .elapsed()
                .is_ok_and(|age| age > std::time::Duration::from_secs(3600));
            if abandoned && !dry_run {
                dir.remove_file(&rel)?;
            }
            continue;
        }
        let Some(mut file) = dir.open_file(&rel)? else {
            continue;
        };
        if file.try_lock().is_err() {
            // A live unpack's (or one a concurrent sweep is handling).
            continue;
        }
        let unlinked = file.metadata().is_ok_and(|m| m.nlink() == 0);
        if unlinked {
            // Its owner finished between our open and our lock.
            continue;
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_RECORD)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(&store.root().join(&rel), e))?;
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        let ours = path.is_absolute()
            && path.file_name().is_some_and(|n| {
                n.as_bytes()
                    .windows(MARKER.len())
                    .any(|w| w == MARKER.as_bytes())
            });
        let candidates: Vec<PathBuf> = [path.clone(), old_sibling(&path)]
            .into_iter()
            .filter(|p| ours && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .collect();
        if !candidates.is_empty() {
            stale.push(Stale {
                path: path.clone(),
                bytes: candidates.iter().map(|p| crate::gc::size_of(p)).sum(),
            });
        }
        if dry_run {
            continue;
        }
        for p in &candidates {
            remove_tree(p).map_err(|e| StoreError::io(p, e))?;
        }
        dir.remove_file(&rel)?;
    }
    Ok(stale)
}

/// The name prefix of a record not yet complete.
const NEW_RECORD: &str = ".new-";

/// Records `path` as staging directory `id` and returns the record, locked. `None` in a
/// read-only store.
fn record(store: &Store, id: &str, path: &Path) -> Result<Option<(PathBuf, File)>, UnpackError> {
    if store.is_read_only() {
        return Ok(None);
    }
    let dir = store.dir();
    dir.create_dir(Path::new(STAGING_DIR))?;
    let rel = Path::new(STAGING_DIR).join(id);
    // Written and locked under a name sweeps leave alone, then renamed (the lock goes with the
    // open file): a sweep never sees a live record it could lock before its owner does.
    let new_rel = Path::new(STAGING_DIR).join(format!("{NEW_RECORD}{id}"));
    let full = store.root().join(&new_rel);
    let mut file = dir.create_new(&new_rel)?;
    let written = (|| {
        file.try_lock().map_err(io::Error::other)?;
        file.write_all(path.as_os_str().as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = dir.remove_file(&new_rel);
        return Err(StoreError::io(&full, e).into());
    }
    if let Err(e) = dir.rename(&new_rel, &rel) {
        let _ = dir.remove_file(&new_rel);
        return Err(e.into());
    }
    dir.sync_dir(Path::new(STAGING_DIR))?;
    Ok(Some((rel, file)))
}

/// `.haul-unpack-<id>.old`: where an inside publication moves what it replaces.
fn old_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".old");
    path.with_file_name(name)
}

/// The names in `dir`.
fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>, UnpackError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        out.push(entry.map_err(io_err(dir))?.file_name());
    }
    Ok(out)
}

/// Renames `from` to `to`, never replacing what is there.
fn move_entry(from: &Path, to: &Path) -> Result<(), UnpackError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        RenameFlags::NOREPLACE,
    )
    .map_err(|e| UnpackError::Io {
        path: to.to_owned(),
        source: e.into(),
    })
}

/// Gives `to` (the target) the mode, times and, when ownership is preserved, owner the image
/// gave the root of its tree (`from`, the staging directory), as a rename would have.
fn copy_root_metadata(from: &Path, to: &Path, preserve_ownership: bool) -> Result<(), UnpackError> {
    let st = rustix::fs::stat(from).map_err(|e| UnpackError::Io {
        path: from.to_owned(),
        source: e.into(),
    })?;
    let fail = |e: rustix::io::Errno| UnpackError::Io {
        path: to.to_owned(),
        source: e.into(),
    };
    if preserve_ownership {
        rustix::fs::chown(
            to,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .map_err(fail)?;
    }
    rustix::fs::chmod(to, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(fail)?;
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, to, &times, rustix::fs::AtFlags::empty()).map_err(fail)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + use<> {
    let path = path.to_owned();
    move |source| UnpackError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race the parallel-unpack test met once: a sweep locked another unpack's record in
    /// the moment between its creation and its owner's lock, and that unpack failed. Records
    /// are now written under a name sweeps leave alone, locked, then renamed.
    #[test]
    fn a_sweep_never_takes_a_record_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.dir().create_dir(Path::new(STAGING_DIR)).unwrap();
        let being_written = store
            .root()
            .join(STAGING_DIR)
            .join(format!("{NEW_RECORD}123-abc"));
        std::fs::write(&being_written, b"/somewhere/.x.haul-unpack-123-abc").unwrap();
        assert!(sweep(&store, false).unwrap().is_empty());
        assert!(
            being_written.exists(),
            "a fresh record being written was swept"
        );

        // A live record, named and locked by its owner, is left alone too.
        let target = dir.path().join("rootfs");
        let (rel, _file) = record(&store, "456-def", &target).unwrap().unwrap();
        assert!(!store.root().join(STAGING_DIR).join(".new-456-def").exists());
        assert!(sweep(&store, false).unwrap().is_empty());
        assert!(store.root().join(&rel).exists());
    }
}
