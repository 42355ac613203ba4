//! The store's file-system primitives: how haul reaches anything under a store root.
//!
//! The root is opened once, after checking that nobody but its owner can change it or what leads
//! to it ([`StoreDir::open`]). Every name below it is then resolved by the kernel relative to that
//! directory fd, beneath it and through no symlink at all (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`, `O_NOFOLLOW` on the last component), so a symlink planted where haul keeps
//! a partial download, a lock or `index.json` is never followed.
//!
//! Promises:
//! - every directory haul creates in the store is mode 0700 and every file 0600, whatever the
//!   umask;
//! - a symlink, FIFO, device, directory or hard-linked file where haul expects its own file is
//!   reported as [`StoreError::Planted`], naming it, and is never opened for writing, written
//!   through, nor removed (its owner should see what it is);
//! - files are opened once and then used as plain `File`s: no cost per read or write;
//! - a store haul cannot write (a read-only mount, an immutable root, a root of mode 0500 for a
//!   user other than root) is opened without writing anything: nothing is created or made
//!   private, and what would write fails as [`StoreError::ReadOnly`].

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::{StoreError, Tightened};

/// Directories haul makes in a store: only their owner may enter them.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Files haul writes in a store.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Parents of the store that haul creates (`~/.local/share`): like any XDG tool's.
const PARENT_MODE: u32 = 0o755;
/// Group- or world-writable bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// An open store root. Names passed to its methods are relative to it (`blobs/sha256/<hex>`).
#[derive(Debug)]
pub(crate) struct StoreDir {
    fd: OwnedFd,
    path: PathBuf,
    euid: u32,
    /// The root could not be written when opened: nothing is created or tightened.
    read_only: bool,
    /// Directories renamed into whose entries are not yet durable ([`StoreDir::defer_sync`]).
    unsynced: std::sync::Mutex<BTreeSet<PathBuf>>,
    /// Every directory fsynced, in order: what the tests check durability by.
    #[cfg(test)]
    pub(crate) synced: std::sync::Mutex<Vec<PathBuf>>,
}

/// One entry of a store directory, as it is (never followed).
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: OsString,
    pub stat: Stat,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Directory
    }

    pub fn is_file(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::RegularFile
    }

    pub fn len(&self) -> u64 {
        u64::try_from(self.stat.st_size).unwrap_or(0)
    }

    pub fn modified(&self) -> std::time::SystemTime {
        let secs = u64::try_from(self.stat.st_mtime).unwrap_or(0);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        // A store dropped without a ref written (a library caller committing blobs, a pull that
        // failed after some) still makes its renames durable, as far as it can.
        if !self.unsynced_dirs().is_empty() {
            let _ = self.sync_deferred([]);
        }
    }
}

impl StoreDir {
    /// Opens (creating when absent, mode 0700) the store root at `path`, refusing one that
    /// someone else could change: owned by another user, writable by group or others, or inside
    /// a directory another user could rename it out of. Making a root of ours private is
    /// [`StoreDir::tighten_root`]'s.
    pub fn open(path: &Path) -> Result<StoreDir, StoreError> {
        let path = std::path::absolute(path).map_err(|e| StoreError::io(path, e))?;
        let euid = rustix::process::geteuid().as_raw();
        // Before creating anything: a refused store gets nothing written into it or beside it.
        check_ancestors(&path, &path, euid)?;
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(PARENT_MODE)
                .create(parent)
                .map_err(|e| StoreError::io(parent, e))?;
        }
        let made = match std::fs::DirBuilder::new().mode(DIR_MODE).create(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        // The root itself may be a symlink the user made (`/var/lib/haul -> /srv/haul`): what it
        // leads to must be as safe as the path that named it.
        let real = std::fs::canonicalize(&path).map_err(|e| StoreError::io(&path, e))?;
        if real != path {
            check_ancestors(&path, &real, euid)?;
        }
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io(&path, e.into()))?;
        // Asked of the kernel rather than guessed from modes: a read-only mount (EROFS), an
        // immutable root (EPERM) and a 0500 root for anyone but root (EACCES) all say no.
        let read_only = rustix::fs::accessat(&fd, ".", Access::WRITE_OK, AtFlags::EACCESS).is_err();
        let dir = StoreDir {
            fd,
            path,
            euid,
            read_only,
            unsynced: std::sync::Mutex::new(BTreeSet::new()),
            #[cfg(test)]
            synced: std::sync::Mutex::new(Vec::new()),
        };
        if made {
            // mkdir applied the umask: a new store is exactly 0700, with nothing to report.
            rustix::fs::fchmod(&dir.fd, Mode::from_raw_mode(DIR_MODE))
                .map_err(|e| dir.io(Path::new(""), e))?;
        }
        dir.verify_dir(Path::new(""), dir.fd.as_fd())?;
        Ok(dir)
    }

    /// Whether the root could not be written when it was opened.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Makes the root private when others may read or enter it (see [`StoreDir::open`], which
    /// leaves that to the caller so that a directory refused as a store is left as it was).
    pub fn tighten_root(&self, tightened: &mut Vec<Tightened>) -> Result<(), StoreError> {
        let mode = self.verify_dir(Path::new(""), self.fd.as_fd())?;
        self.tighten(Path::new(""), self.fd.as_fd(), mode, tightened)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `rel`, for messages.
    pub fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Checks a directory of the store (`rel`, open as `fd`) the way the root is checked: ours,
    /// not writable by others; made owner-only when others may read or enter it.
    fn check_dir(
        &self,
        rel: &Path,
        fd: BorrowedFd<'_>,
        tightened: &mut Vec<Tightened>,
    ) -> Result<(), StoreError> {
        let mode = self.verify_dir(rel, fd)?;
        self.tighten(rel, fd, mode, tightened)
    }

    /// Drops the group and other bits of a directory or file of ours (`mode`, as it is). The
    /// owner's bits are kept: a store its owner made 0500 to keep it read-only stays so. Where the
    /// store cannot be written at all, nothing is changed: nobody else can write in it either.
    fn tighten(
        &self,
        rel: &Path,
        fd: BorrowedFd<'_>,
        mode: u32,
        tightened: &mut Vec<Tightened>,
    ) -> Result<(), StoreError> {
        if mode & 0o077 == 0 {
            return Ok(());
        }
        let to = mode & 0o700;
        match rustix::fs::fchmod(fd, Mode::from_raw_mode(to)) {
            Ok(()) => tightened.push(Tightened {
                path: self.full(rel),
                from: mode,
                to,
            }),
            Err(e) if self.read_only && is_read_only_errno(e) => {}
            Err(e) => return Err(self.io(rel, e)),
        }
        Ok(())
    }

    /// Refuses a directory of the store someone else could change: owned by another user, or
    /// writable by group or others. Returns its mode.
    fn verify_dir(&self, rel: &Path, fd: BorrowedFd<'_>) -> Result<u32, StoreError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.io(rel, e))?;
        let mode = st.st_mode & 0o7777;
        if st.st_uid != self.euid {
            return Err(StoreError::ForeignOwner {
                store: self.path.clone(),
                path: self.full(rel),
                owner: st.st_uid,
                mode,
                you: self.euid,
            });
        }
        if mode & WRITABLE_BY_OTHERS != 0 {
            return Err(StoreError::WritableByOthers {
                store: self.path.clone(),
                path: self.full(rel),
                owner: st.st_uid,
                mode,
            });
        }
        Ok(mode)
    }

    /// Creates `rel` and its missing parents below the root, each mode 0700 whatever the umask;
    /// existing ones must be real directories. Returns it open.
    pub fn create_dir(&self, rel: &Path) -> Result<OwnedFd, StoreError> {
        let mut cur: Option<OwnedFd> = None;
        let mut done = PathBuf::new();
        for name in plain_names(rel).map_err(|e| self.io(rel, e))? {
            done.push(name);
            let parent = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return Err(self.io(&done, e)),
            };
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.error(&done, e))?;
            if made {
                // mkdir applied the umask (and a setgid parent's bit): set exactly 0700.
                let st = rustix::fs::fstat(&fd).map_err(|e| self.io(&done, e))?;
                if st.st_mode & 0o7777 != DIR_MODE {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIR_MODE))
                        .map_err(|e| self.io(&done, e))?;
                }
            }
            cur = Some(fd);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.open_dir(rel),
        }
    }

    /// [`StoreDir::create_dir`], then the checks of an existing store directory.
    pub fn ensure_dir(&self, rel: &Path, tightened: &mut Vec<Tightened>) -> Result<(), StoreError> {
        let fd = self.create_dir(rel)?;
        self.check_dir(rel, fd.as_fd(), tightened)
    }

    /// Checks `rel` like the root when it exists; a missing one is fine.
    pub fn check_existing_dir(
        &self,
        rel: &Path,
        tightened: &mut Vec<Tightened>,
    ) -> Result<(), StoreError> {
        match self.open_dir_if_exists(rel)? {
            Some(fd) => self.check_dir(rel, fd.as_fd(), tightened),
            None => Ok(()),
        }
    }

    /// Opens `rel` beneath the root, through no symlink.
    fn open_beneath(&self, rel: &Path, flags: OFlags, mode: u32) -> Result<OwnedFd, Errno> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(mode),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                // A rename elsewhere raced the lookup; the kernel asks for a retry.
                Err(Errno::AGAIN | Errno::INTR) if attempts < 16 => attempts += 1,
                other => return other,
            }
        }
    }

    /// The existing directory `rel`, open for reading and fsync.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, StoreError> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0)
            .map_err(|e| self.error(rel, e))
    }

    pub fn open_dir_if_exists(&self, rel: &Path) -> Result<Option<OwnedFd>, StoreError> {
        match self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Opens the file `rel` for reading; `None` when absent.
    pub fn open_file(&self, rel: &Path) -> Result<Option<File>, StoreError> {
        // O_NONBLOCK: a FIFO planted here must not hang the open (it changes nothing for files).
        match self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(fd) => {
                self.check_regular(rel, &fd)?;
                Ok(Some(File::from(fd)))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Opens (creating, mode 0600) the file `rel` for reading and writing. What is there must be
    /// a file of ours with no other name: haul writes into it.
    pub fn open_writable(&self, rel: &Path) -> Result<File, StoreError> {
        let fd = self
            .open_beneath(
                rel,
                OFlags::RDWR | OFlags::CREATE | OFlags::NONBLOCK,
                FILE_MODE,
            )
            .map_err(|e| self.error(rel, e))?;
        let st = self.check_regular(rel, &fd)?;
        if st.st_nlink != 1 {
            return Err(self.planted(rel, "file with another name (a hard link)"));
        }
        if st.st_uid != self.euid {
            return Err(self.planted(rel, "file owned by another user"));
        }
        Ok(File::from(fd))
    }

    /// The lock file `rel` for a reader: opened for writing (created when absent) where the
    /// store can be written; in a read-only store, the existing file opened for reading (flock
    /// needs no write access), or `None` when there is none and none can be made.
    pub fn open_lock_for_reading(&self, rel: &Path) -> Result<Option<File>, StoreError> {
        match self.open_writable(rel) {
            Ok(file) => Ok(Some(file)),
            Err(_) if self.read_only => self.open_file(rel),
            Err(e) => Err(e),
        }
    }

    /// Creates `rel`, which must not exist, mode 0600.
    pub fn create_new(&self, rel: &Path) -> Result<File, StoreError> {
        // O_EXCL also fails on a symlink, dangling or not.
        self.open_beneath(rel, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, FILE_MODE)
            .map(File::from)
            .map_err(|e| self.error(rel, e))
    }

    /// What is at `rel`, never followed; `None` when absent.
    pub fn stat(&self, rel: &Path) -> Result<Option<Stat>, StoreError> {
        // O_PATH with O_NOFOLLOW opens a final symlink itself rather than failing.
        match self.open_beneath(rel, OFlags::PATH, 0) {
            Ok(fd) => rustix::fs::fstat(&fd)
                .map(Some)
                .map_err(|e| self.io(rel, e)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Renames `from` to `to` (replacing what `to` names, never following it).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|e| self.io(to, e))
    }

    /// Removes the file (or symlink) `rel`; an absent one is fine.
    pub fn remove_file(&self, rel: &Path) -> Result<(), StoreError> {
        let (dir, name) = self.parent_of(rel)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(rel, e)),
        }
    }

    /// Makes renames into `rel` durable.
    pub fn sync_dir(&self, rel: &Path) -> Result<(), StoreError> {
        let fd = self.open_dir(rel)?;
        self.fsync_dir(rel, &fd)
    }

    fn fsync_dir(&self, rel: &Path, fd: &OwnedFd) -> Result<(), StoreError> {
        rustix::fs::fsync(fd).map_err(|e| self.io(rel, e))?;
        #[cfg(test)]
        self.synced.lock().unwrap().push(rel.to_owned());
        Ok(())
    }

    /// The directories whose renames are still to be made durable.
    #[cfg(test)]
    pub(crate) fn owed(&self) -> Vec<PathBuf> {
        self.unsynced_dirs().iter().cloned().collect()
    }

    /// Notes that a rename into `rel` is to be made durable by the next [`StoreDir::sync_deferred`]
    /// instead of now. For renames whose file was fsynced first (a committed blob): lost in a
    /// crash, the name is gone, never wrong, and the blob is fetched again. A directory fsync
    /// commits the filesystem's journal: one per blob and per layer held every layer of a
    /// 40-layer pull up for it (181 fsyncs, 0.64 s blocked).
    pub fn defer_sync(&self, rel: &Path) {
        self.unsynced_dirs().insert(rel.to_owned());
    }

    /// Makes the deferred renames durable, and those into `also` (renames another process may
    /// have deferred): called before anything that names what they renamed is written.
    pub fn sync_deferred(&self, also: impl IntoIterator<Item = PathBuf>) -> Result<(), StoreError> {
        let mut dirs = std::mem::take(&mut *self.unsynced_dirs());
        dirs.extend(also);
        for (i, rel) in dirs.iter().enumerate() {
            // A directory removed since (by a prune) has no entry left to make durable.
            let synced = match self.open_dir_if_exists(rel) {
                Ok(Some(fd)) => self.fsync_dir(rel, &fd),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                // Still owed: the next call tries again.
                let mut unsynced = self.unsynced_dirs();
                unsynced.extend(dirs.into_iter().skip(i));
                return Err(e);
            }
        }
        Ok(())
    }

    fn unsynced_dirs(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        // The set stays valid whatever a panicking holder did: take it back.
        self.unsynced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entries of the directory `rel`, sorted by name; none when it does not exist. Entries
    /// that vanish while being read are left out.
    pub fn list(&self, rel: &Path) -> Result<Vec<Entry>, StoreError> {
        let Some(fd) = self.open_dir_if_exists(rel)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(|e| self.io(rel, e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.io(rel, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => out.push(Entry { name, stat }),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io(&rel.join(&name), e)),
            }
        }
        Ok(out)
    }

    /// Drops group and other bits from the regular file `rel` (left by an older haul).
    pub fn tighten_file(
        &self,
        rel: &Path,
        tightened: &mut Vec<Tightened>,
    ) -> Result<(), StoreError> {
        let fd = match self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(fd) => fd,
            // Not a plain file of the store: not haul's to change.
            Err(_) => return Ok(()),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io(rel, e))?;
        let mode = st.st_mode & 0o7777;
        let is_file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        if is_file && st.st_uid == self.euid {
            self.tighten(rel, fd.as_fd(), mode, tightened)?;
        }
        Ok(())
    }

    /// The directory holding `rel` (open) and `rel`'s last name.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr), StoreError> {
        let name = rel.file_name().ok_or_else(|| self.io(rel, Errno::INVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = self
            .open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, 0)
            .map_err(|e| self.error(parent, e))?;
        Ok((dir, name))
    }

    fn check_regular(&self, rel: &Path, fd: &OwnedFd) -> Result<Stat, StoreError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.io(rel, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(st),
            other => Err(self.planted(rel, kind_name(other))),
        }
    }

    /// The error for `rel` failing with `e`; a write refused because the store cannot be
    /// written is [`StoreError::ReadOnly`].
    fn io(&self, rel: &Path, e: Errno) -> StoreError {
        if e == Errno::ROFS || (self.read_only && is_read_only_errno(e)) {
            return StoreError::ReadOnly {
                store: self.path.clone(),
                path: self.full(rel),
                source: e.into(),
            };
        }
        StoreError::io(&self.full(rel), e.into())
    }

    fn planted(&self, rel: &Path, found: &'static str) -> StoreError {
        StoreError::Planted {
            path: self.full(rel),
            found,
        }
    }

    /// The error for `rel` failing with `e`: when the lookup met something that is not what haul
    /// keeps there (a symlink on the way, a file where a directory belongs, a FIFO), that thing,
    /// by name.
    fn error(&self, rel: &Path, e: Errno) -> StoreError {
        if matches!(e, Errno::LOOP | Errno::NOTDIR | Errno::NXIO | Errno::ISDIR)
            && let Some(found) = self.find_planted(rel, e)
        {
            return found;
        }
        self.io(rel, e)
    }

    /// The first component of `rel` that is a symlink or not a directory where one belongs, or
    /// the last one when `e` says it is of the wrong kind.
    fn find_planted(&self, rel: &Path, e: Errno) -> Option<StoreError> {
        let names = plain_names(rel).ok()?;
        let mut prefix = PathBuf::new();
        for (i, name) in names.iter().enumerate() {
            prefix.push(name);
            // Every earlier component was found to be a real directory.
            let st = rustix::fs::statat(&self.fd, &prefix, AtFlags::SYMLINK_NOFOLLOW).ok()?;
            let kind = FileType::from_raw_mode(st.st_mode);
            let last = i + 1 == names.len();
            if kind == FileType::Symlink
                || (!last && kind != FileType::Directory)
                || (last && e != Errno::LOOP)
            {
                return Some(self.planted(&prefix, kind_name(kind)));
            }
        }
        None
    }
}

/// What a write into a store that cannot be written fails with: a read-only mount, an immutable
/// file or directory, or permissions that leave the owner without write access.
fn is_read_only_errno(e: Errno) -> bool {
    matches!(e, Errno::ROFS | Errno::PERM | Errno::ACCESS)
}

/// The components of a relative store path, all plain names.
fn plain_names(rel: &Path) -> Result<Vec<&OsStr>, Errno> {
    rel.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(Errno::INVAL),
        })
        .collect()
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "symbolic link",
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::RegularFile => "file",
        _ => "file of unknown type",
    }
}

/// Refuses a store at `store` when a directory on the way to `path` (lexically, and after
/// resolving symlinks) lets another user replace what follows it: owned by someone other than
/// root or us, or writable by group or others without the sticky bit (which, like /tmp's, stops
/// them renaming what is not theirs). Missing directories are haul's to create.
fn check_ancestors(store: &Path, path: &Path, euid: u32) -> Result<(), StoreError> {
    let mut seen = BTreeSet::new();
    for ancestor in path.ancestors().skip(1) {
        let real = match std::fs::canonicalize(ancestor) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(ancestor, e)),
        };
        for dir in real.ancestors() {
            if !seen.insert(dir.to_owned()) {
                continue;
            }
            let meta = std::fs::metadata(dir).map_err(|e| StoreError::io(dir, e))?;
            let mode = meta.mode() & 0o7777;
            let owner_ok = meta.uid() == 0 || meta.uid() == euid;
            let writers_ok = mode & WRITABLE_BY_OTHERS == 0 || mode & STICKY != 0;
            if !owner_ok || !writers_ok {
                return Err(StoreError::ReplaceableParent {
                    store: store.to_owned(),
                    dir: dir.to_owned(),
                    owner: meta.uid(),
                    mode,
                });
            }
        }
    }
    Ok(())
}
