//! Changeset semantics when applying for real: `DIR/.wh.NAME` removes what lower layers left at
//! `DIR/NAME`, `DIR/.wh..wh..opq` what they left in `DIR`; neither removes anything this layer
//! created, wherever the marker sits in the tar. A whiteout in a directory that does not exist
//! has nothing to hide.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::FileType;
use rustix::io::Errno;

use super::error::{ApplyError, io_err};
use super::{Applier, fsops};

impl Applier<'_> {
    /// `DIR/.wh.NAME` (`entry_path`): removes `DIR/NAME` as lower layers left it.
    pub(super) fn whiteout(&mut self, entry_path: &Path, name: &OsStr) -> Result<(), ApplyError> {
        let dir = entry_path.parent().unwrap_or(Path::new(""));
        let Some(dir_fd) = self.existing_dir(dir, entry_path)? else {
            return Ok(());
        };
        self.remove_lower(dir_fd.as_fd(), name, &dir.join(name), entry_path)
    }

    /// `DIR/.wh..wh..opq` (`entry_path`): removes what lower layers left in `DIR`.
    pub(super) fn opaque(&mut self, entry_path: &Path) -> Result<(), ApplyError> {
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

    /// The directory `dir` if it exists; whiteouts in a missing directory have nothing to hide.
    pub(super) fn existing_dir(
        &self,
        dir: &Path,
        entry_path: &Path,
    ) -> Result<Option<OwnedFd>, ApplyError> {
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
        if !self.in_layer.contains(path.as_os_str()) {
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
}
