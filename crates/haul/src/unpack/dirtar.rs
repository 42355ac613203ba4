//! A cached layer directory (made by
//! [`apply_layer_for_cache`](super::apply::apply_layer_for_cache)) as a tar stream again, so that
//! [`apply_layer`](super::apply::apply_layer) replays the layer onto lower ones with its usual
//! semantics and confinement.
//!
//! Promises:
//! - **Deterministic order.** Parents before children. Within a directory its whiteouts come
//!   first, then the other names in byte order, and its opaque marker after everything below it,
//!   so that it hides exactly what lower layers left there whatever this layer put in it.
//!   [`DeferredLink`]s come last, in the order given.
//! - **What the applier reads back.** Type, mode with setuid/setgid/sticky, numeric owner, mtime
//!   with nanoseconds (PAX `mtime`), xattrs as PAX `SCHILY.xattr.*` (except `security.selinux`,
//!   the host's label rather than the layer's), device numbers, and a second path to an inode
//!   already in the stream as a hardlink entry. Long names go into PAX `path` and `linkpath`.
//!   Sockets, which no layer can create, are left out.
//! - **Directories the layer did not list** (marked by the applier) have no entry of their own:
//!   replaying their children leaves the lower layers' directory as it was, as the layer did.
//! - **Nothing is followed, nothing is changed.** Every name is opened relative to its directory
//!   with `O_NOFOLLOW`; symlinks are entries. The cache is only read, so any number of these may
//!   run over one directory at once: a cache built without root keeps its files and directories
//!   readable by their owner, and [`tar_cached`] is given the modes they really have.
//! - **Holes stay holes.** A file with holes in the cache is written as a PAX sparse entry
//!   (GNU format 1.0): its data runs and its real size, never the zeros.
//! - **Errors reach the reader.** The stream is produced on its own thread; a failure there ends
//!   the stream without the end-of-archive blocks and the reader's next read returns it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, SeekFrom, Stat, fstat, openat, openat2,
    readlinkat, seek, statat,
};
use rustix::io::Errno;
use tar::{EntryType, Header};

use super::apply::{DeferredLink, names};

/// Bytes handed from the producing thread to the reader at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight.
const DEPTH: usize = 8;

/// The largest number an 11-digit octal header field holds (sizes, mtimes).
const OCTAL_11: u64 = 0o77_777_777_777;
/// The largest number a 7-digit octal header field holds (uid, gid).
const OCTAL_7: u64 = 0o7_777_777;

/// A tar stream of `dir` (a cached layer), produced on its own thread: entries in a deterministic
/// order (parents before children, names sorted), regular files, directories, symlinks, FIFOs and
/// devices, with mode (incl. setuid/sticky), numeric uid/gid, mtime with nanoseconds (PAX
/// `mtime`), xattrs as PAX `SCHILY.xattr.*`, and a second path to an already-emitted inode as a
/// hardlink entry. `extra_links` (the layer's deferred hardlinks) are appended at the end as
/// hardlink entries. See the module documentation for the details.
///
/// A complete stream ends with the end-of-archive blocks, which is all
/// [`apply_layer`](super::apply::apply_layer) reads.
pub fn tar_dir(dir: &Path, extra_links: Vec<DeferredLink>) -> io::Result<impl Read + Send + use<>> {
    tar_cached(dir, extra_links, Vec::new())
}

/// [`tar_dir`] of a cached layer built without root: `modes` are the real modes of the files and
/// directories the cache keeps readable (one path, relative to `dir`, per inode), as returned by
/// the applier in [`ApplyStats::modes`](super::apply::ApplyStats::modes).
pub fn tar_cached(
    dir: &Path,
    extra_links: Vec<DeferredLink>,
    modes: Vec<(PathBuf, u32)>,
) -> io::Result<impl Read + Send + use<>> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| named(dir.as_os_str().as_bytes(), e.into()))?;
    spawn(move |tar| {
        let mut walker = Walker::new(tar);
        walker.modes = real_modes(root.as_fd(), &modes)?;
        walker.tree(root)?;
        for link in &extra_links {
            walker.deferred(link)?;
        }
        Ok(())
    })
}

/// Runs `produce` on its own thread, writing into a channel of chunks whose reading end is
/// returned: the applier reading it costs no system call, and the threads meet once a chunk.
fn spawn(
    produce: impl FnOnce(&mut tar::Builder<ChunkWriter>) -> io::Result<()> + Send + 'static,
) -> io::Result<DirTar> {
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    let producer = thread::Builder::new()
        .name("haul-dirtar".to_owned())
        .spawn(move || {
            let mut tar = tar::Builder::new(ChunkWriter {
                tx: Some(tx),
                buf: Vec::with_capacity(CHUNK),
            });
            let result = produce(&mut tar)
                .and_then(|()| tar.finish())
                .and_then(|()| tar.get_mut().flush());
            if let Err(e) = result {
                tar.get_mut().fail(e);
            }
        })?;
    Ok(DirTar {
        rx,
        current: Vec::new(),
        pos: 0,
        producer: Some(producer),
    })
}

/// The reading end of [`tar_dir`].
struct DirTar {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    producer: Option<thread::JoinHandle<()>>,
}

impl Read for DirTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                // The producer is done: a panic there is an error, not the end of the stream.
                Err(mpsc::RecvError) => {
                    if let Some(producer) = self.producer.take()
                        && producer.join().is_err()
                    {
                        return Err(io::Error::other(
                            "the thread writing the layer tar panicked",
                        ));
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The producing end: chunks of [`CHUNK`] bytes into the channel.
struct ChunkWriter {
    /// `None` once failed: nothing more may follow the error, least of all the end-of-archive
    /// blocks the builder writes when dropped, which would make a cut stream look whole.
    tx: Option<mpsc::SyncSender<io::Result<Vec<u8>>>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match &self.tx {
            Some(tx) => tx
                .send(Ok(chunk))
                // The reader was dropped (the applier failed): stop producing.
                .map_err(|_| io::ErrorKind::BrokenPipe.into()),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Hands over what was written so far, then the error, and closes the channel.
    fn fail(&mut self, e: io::Error) {
        if !self.buf.is_empty() {
            let _ = self.send();
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(e));
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// Xattrs as (full name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Metadata of one entry, as it goes into its header.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: Xattrs,
}

/// The fields of `struct stat` used here, in one width on every target.
#[derive(Clone, Copy)]
struct Node {
    file_type: FileType,
    mode: u32,
    uid: u32,
    gid: u32,
    inode: (u64, u64),
    nlink: u64,
    size: u64,
    /// 512-byte blocks allocated: fewer than the size needs means holes.
    blocks: u64,
    mtime: (i64, u32),
    rdev: u64,
}

impl Node {
    // Field widths differ between targets.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &Stat) -> Node {
        Node {
            file_type: FileType::from_raw_mode(st.st_mode),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            inode: (st.st_dev as u64, st.st_ino as u64),
            nlink: st.st_nlink as u64,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            rdev: st.st_rdev as u64,
        }
    }

    fn meta(&self, xattrs: Xattrs) -> Meta {
        Meta {
            mode: self.mode,
            uid: u64::from(self.uid),
            gid: u64::from(self.gid),
            mtime: self.mtime,
            xattrs,
        }
    }
}

/// A directory being listed: its fd, its name in the tar (`""` or `"a/b/"`), the names still to
/// go and whether its opaque marker waits for the end.
struct Frame {
    dir: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
    opaque: bool,
}

/// The names of one directory in stream order.
struct Listing {
    names: Vec<OsString>,
    opaque: bool,
    implicit: bool,
}

struct Walker<'t> {
    tar: &'t mut tar::Builder<ChunkWriter>,
    /// Inodes with more than one link already in the stream, and their names there.
    linked: HashMap<(u64, u64), Vec<u8>>,
    /// Real modes of the inodes the cache keeps readable.
    modes: HashMap<(u64, u64), u32>,
    /// Header scratch for PAX records.
    pax: Vec<u8>,
}

impl<'t> Walker<'t> {
    fn new(tar: &'t mut tar::Builder<ChunkWriter>) -> Self {
        Walker {
            tar,
            linked: HashMap::new(),
            modes: HashMap::new(),
            pax: Vec::new(),
        }
    }

    /// The header metadata of `node`, with the mode the layer gives it.
    fn meta(&self, node: &Node, xattrs: Xattrs) -> Meta {
        let mut meta = node.meta(xattrs);
        if let Some(&mode) = self.modes.get(&node.inode) {
            meta.mode = mode;
        }
        meta
    }

    fn tree(&mut self, root: OwnedFd) -> io::Result<()> {
        let st = fstat(&root).map_err(|e| named(b".", e.into()))?;
        let node = Node::of(&st);
        let listing = list(root.as_fd()).map_err(|e| named(b".", e.into()))?;
        if !listing.implicit {
            let xattrs = xattrs_fd(root.as_fd()).map_err(|e| named(b".", e.into()))?;
            let meta = self.meta(&node, xattrs);
            self.append(EntryType::Directory, b"./", None, &meta, None)?;
        }
        let mut stack = vec![Frame {
            dir: root,
            prefix: Vec::new(),
            names: listing.names.into_iter(),
            opaque: listing.opaque,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let Some(frame) = stack.pop() else { break };
                if frame.opaque {
                    let mut path = frame.prefix.clone();
                    path.extend_from_slice(names::OPAQUE_MARKER);
                    let meta = Meta {
                        mode: 0o600,
                        uid: 0,
                        gid: 0,
                        mtime: (0, 0),
                        xattrs: Vec::new(),
                    };
                    self.append(EntryType::Regular, &path, None, &meta, None)?;
                }
                continue;
            };
            let mut path = frame.prefix.clone();
            path.extend_from_slice(name.as_bytes());
            let dir = frame.dir.as_fd();
            if let Some(child) = self
                .entry(dir, &name, path)
                .map_err(|(p, e)| named(&p, e))?
            {
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Appends `dir/name` (tar name `path`); for a directory, returns its frame to descend into.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsString,
        mut path: Vec<u8>,
    ) -> Result<Option<Frame>, (Vec<u8>, io::Error)> {
        let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => return Err((path, e.into())),
        };
        let node = Node::of(&st);
        let kind = match node.file_type {
            FileType::Directory => {
                let result = (|| {
                    let fd = open_dir(dir, name)?;
                    let listing = list(fd.as_fd())?;
                    let xattrs = if listing.implicit {
                        Vec::new()
                    } else {
                        xattrs_fd(fd.as_fd())?
                    };
                    Ok::<_, Errno>((fd, listing, xattrs))
                })();
                let (fd, listing, xattrs) = match result {
                    Ok(r) => r,
                    Err(e) => return Err((path, e.into())),
                };
                path.push(b'/');
                if !listing.implicit {
                    let meta = self.meta(&node, xattrs);
                    if let Err(e) = self.append(EntryType::Directory, &path, None, &meta, None) {
                        return Err((path, e));
                    }
                }
                return Ok(Some(Frame {
                    dir: fd,
                    prefix: path,
                    names: listing.names.into_iter(),
                    opaque: listing.opaque,
                }));
            }
            FileType::RegularFile => EntryType::Regular,
            FileType::Symlink => EntryType::Symlink,
            FileType::Fifo => EntryType::Fifo,
            FileType::CharacterDevice => EntryType::Char,
            FileType::BlockDevice => EntryType::Block,
            // Sockets and whatever else no layer can hold.
            _ => return Ok(None),
        };
        let result = self.leaf(dir, name, &path, kind, &node);
        result.map(|()| None).map_err(|e| (path, e))
    }

    fn leaf(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsString,
        path: &[u8],
        kind: EntryType,
        node: &Node,
    ) -> io::Result<()> {
        if node.nlink > 1 {
            if let Some(first) = self.linked.get(&node.inode) {
                let first = first.clone();
                // The applier sets a link's metadata on the shared inode (and chown drops
                // security.capability): the same values, xattrs included.
                let xattrs = xattrs_at(dir, name)?;
                let meta = self.meta(node, xattrs);
                return self.append(EntryType::Link, path, Some(&first), &meta, None);
            }
            self.linked.insert(node.inode, path.to_vec());
        }
        match kind {
            EntryType::Regular => {
                let file = open_file(dir, name)?;
                let st = Node::of(&fstat(&file)?);
                if st.inode != node.inode {
                    return Err(io::Error::other("replaced while being read"));
                }
                let xattrs = xattrs_fd(file.as_fd())?;
                let meta = self.meta(&st, xattrs);
                let runs = if st.blocks.saturating_mul(512) < st.size {
                    data_runs(file.as_fd(), st.size)?
                } else {
                    None
                };
                let file = File::from(file);
                match runs {
                    Some(runs) => self.append_sparse(path, &meta, st.size, file, runs),
                    None => {
                        let content = Exact {
                            inner: file.take(st.size),
                            left: st.size,
                        };
                        self.append_with(
                            EntryType::Regular,
                            path,
                            None,
                            &meta,
                            None,
                            st.size,
                            content,
                        )
                    }
                }
            }
            EntryType::Symlink => {
                let target = readlinkat(dir, name, Vec::new())?.into_bytes();
                let meta = self.meta(node, xattrs_at(dir, name)?);
                self.append(EntryType::Symlink, path, Some(&target), &meta, None)
            }
            _ => {
                let dev = (rustix::fs::major(node.rdev), rustix::fs::minor(node.rdev));
                let meta = self.meta(node, xattrs_at(dir, name)?);
                self.append(kind, path, None, &meta, Some(dev))
            }
        }
    }

    /// Appends a file with holes as a PAX sparse entry, GNU format 1.0: the records name the file
    /// and its real size, the data holds the map (count, then offset and length of each run, one
    /// decimal number a line, padded to a block) followed by the runs themselves.
    fn append_sparse(
        &mut self,
        path: &[u8],
        meta: &Meta,
        real_size: u64,
        file: File,
        runs: Vec<(u64, u64)>,
    ) -> io::Result<()> {
        let mut map = format!("{}\n", runs.len()).into_bytes();
        for (offset, len) in &runs {
            map.extend_from_slice(format!("{offset}\n{len}\n").as_bytes());
        }
        map.resize(map.len().div_ceil(512) * 512, 0);
        let data: u64 = runs.iter().map(|(_, len)| len).sum();
        let size = map.len() as u64 + data;
        // The sparse records go first, ahead of the xattrs `append_full` adds.
        let records: [(&[u8], Vec<u8>); 4] = [
            (b"GNU.sparse.major", b"1".to_vec()),
            (b"GNU.sparse.minor", b"0".to_vec()),
            (b"GNU.sparse.name", path.to_vec()),
            (b"GNU.sparse.realsize", real_size.to_string().into_bytes()),
        ];
        let mut extra = Vec::new();
        for (key, value) in &records {
            pax_record(&mut extra, key, value);
        }
        let content = io::Cursor::new(map).chain(Exact {
            inner: RunReader {
                file,
                runs: runs.into_iter(),
                current: None,
            },
            left: data,
        });
        self.append_full(
            EntryType::Regular,
            path,
            None,
            meta,
            None,
            size,
            content,
            extra,
        )
    }

    fn deferred(&mut self, link: &DeferredLink) -> io::Result<()> {
        let (uid, gid) = link.owner.unwrap_or((0, 0));
        let meta = Meta {
            mode: link.mode,
            uid: u64::from(uid),
            gid: u64::from(gid),
            mtime: link.mtime,
            xattrs: link.xattrs.clone(),
        };
        let path = link.path.as_os_str().as_bytes();
        let target = link.target.as_os_str().as_bytes();
        self.append(EntryType::Link, path, Some(target), &meta, None)
            .map_err(|e| named(path, e))
    }

    /// Appends an entry without content.
    fn append(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
    ) -> io::Result<()> {
        self.append_with(kind, path, link, meta, dev, 0, io::empty())
    }

    /// Appends one entry with `size` bytes of `data`: a PAX header first when the ustar header
    /// cannot say it all.
    #[allow(clippy::too_many_arguments)]
    fn append_with(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
        size: u64,
        data: impl Read,
    ) -> io::Result<()> {
        self.append_full(kind, path, link, meta, dev, size, data, Vec::new())
    }

    /// [`Walker::append_with`] with `extra` PAX records (already encoded) first.
    #[allow(clippy::too_many_arguments)]
    fn append_full(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
        size: u64,
        data: impl Read,
        extra: Vec<u8>,
    ) -> io::Result<()> {
        self.pax.clear();
        self.pax.extend_from_slice(&extra);
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        set_field(&mut header.as_old_mut().name, path, "path", &mut self.pax);
        if let Some(link) = link {
            set_field(
                &mut header.as_old_mut().linkname,
                link,
                "linkpath",
                &mut self.pax,
            );
        }
        header.set_mode(meta.mode & 0o7777);
        if meta.uid <= OCTAL_7 {
            header.set_uid(meta.uid);
        } else {
            pax_record(&mut self.pax, b"uid", meta.uid.to_string().as_bytes());
        }
        if meta.gid <= OCTAL_7 {
            header.set_gid(meta.gid);
        } else {
            pax_record(&mut self.pax, b"gid", meta.gid.to_string().as_bytes());
        }
        let (secs, nanos) = meta.mtime;
        match u64::try_from(secs) {
            Ok(s) if s <= OCTAL_11 && nanos == 0 => header.set_mtime(s),
            _ => pax_record(&mut self.pax, b"mtime", pax_time(secs, nanos).as_bytes()),
        }
        if size > OCTAL_11 {
            pax_record(&mut self.pax, b"size", size.to_string().as_bytes());
        } else {
            header.set_size(size);
        }
        if let Some((major, minor)) = dev {
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
        }
        for (name, value) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut self.pax, &key, value);
        }
        if !self.pax.is_empty() {
            let mut pax = Header::new_ustar();
            pax.set_entry_type(EntryType::XHeader);
            pax.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
            pax.set_mode(0o644);
            pax.set_size(self.pax.len() as u64);
            pax.set_cksum();
            self.tar.append(&pax, self.pax.as_slice())?;
        }
        if size > OCTAL_11 {
            // The field holds what fits; readers take the PAX record.
            header.set_size(OCTAL_11);
        }
        header.set_cksum();
        self.tar.append(&header, data)
    }
}

/// Content of exactly `left` bytes: a file that shrank while being read is an error, not a
/// shorter entry (the header already promised its size).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a directory of the cache for listing and `*at` calls.
fn open_dir(dir: BorrowedFd<'_>, name: &OsString) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn open_file(dir: BorrowedFd<'_>, name: &OsString) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Reading must not touch the cache; O_NOATIME is for the owner (or root) only.
    match openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => Ok(openat(dir, name, flags, Mode::empty())?),
        other => Ok(other?),
    }
}

/// The inodes of `modes`' paths (relative to `root`, never following a symlink) with their
/// modes. A path that no longer names a file or directory is skipped.
fn real_modes(
    root: BorrowedFd<'_>,
    modes: &[(PathBuf, u32)],
) -> io::Result<HashMap<(u64, u64), u32>> {
    let mut out = HashMap::new();
    for (path, mode) in modes {
        let st = match path.parent().zip(path.file_name()) {
            Some((parent, name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let dir = match openat2(
                    root,
                    parent,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                ) {
                    Ok(dir) => dir,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => continue,
                    Err(e) => return Err(named(path.as_os_str().as_bytes(), e.into())),
                };
                statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            }
            // The root itself.
            None => fstat(root),
        };
        match st {
            Ok(st) => {
                out.insert(Node::of(&st).inode, *mode);
            }
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(e) => return Err(named(path.as_os_str().as_bytes(), e.into())),
        }
    }
    Ok(out)
}

/// The data runs `(offset, length)` of a file of `size` bytes as the filesystem reports them,
/// or `None` when it has no hole (or cannot tell).
fn data_runs(fd: BorrowedFd<'_>, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(fd, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data from here to the end.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let end = seek(fd, SeekFrom::Hole(start))?.min(size);
        if end > start {
            runs.push((start, end - start));
        }
        pos = end.max(start + 1);
    }
    // A file ending in a hole says so with an empty run at its end, as GNU tar writes it.
    if runs.last().is_none_or(|&(offset, len)| offset + len < size) {
        runs.push((size, 0));
    }
    if runs.len() == 1 && runs[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(runs))
}

/// The data runs of a sparse file, one after the other.
struct RunReader {
    file: File,
    runs: std::vec::IntoIter<(u64, u64)>,
    /// The run being read: next offset and bytes left.
    current: Option<(u64, u64)>,
}

impl Read for RunReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.current {
                Some((offset, left)) if left > 0 => {
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = self.file.read_at(&mut buf[..want], offset)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    self.current = Some((offset + n as u64, left - n as u64));
                    return Ok(n);
                }
                _ => match self.runs.next() {
                    Some(run) => self.current = Some(run),
                    None => return Ok(0),
                },
            }
        }
    }
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The names of a directory in stream order, the markers taken out.
fn list(dir: BorrowedFd<'_>) -> Result<Listing, Errno> {
    let mut whiteouts = Vec::new();
    let mut others = Vec::new();
    let mut opaque = false;
    let mut implicit = false;
    let mut entries = Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // Markers are empty files; anything else of that name is an entry like any other.
        let is_file = || {
            statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        };
        if name == names::OPAQUE_MARKER && is_file() {
            opaque = true;
        } else if name == names::IMPLICIT_MARKER && is_file() {
            implicit = true;
        } else if name.starts_with(names::WHITEOUT_PREFIX) && !name.starts_with(b".wh..wh.") {
            whiteouts.push(OsString::from_vec(name.to_vec()));
        } else {
            others.push(OsString::from_vec(name.to_vec()));
        }
    }
    whiteouts.sort_unstable();
    others.sort_unstable();
    whiteouts.append(&mut others);
    Ok(Listing {
        names: whiteouts,
        opaque,
        implicit,
    })
}

/// Xattrs of an open file or directory, sorted by name.
fn xattrs_fd(fd: BorrowedFd<'_>) -> Result<Xattrs, Errno> {
    read_xattrs(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
        |name| rustix::fs::fgetxattr_query(fd, name),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

/// Xattrs of `dir/name` itself (a symlink, FIFO or device: never opened, never followed).
fn xattrs_at(dir: BorrowedFd<'_>, name: &OsString) -> Result<Xattrs, Errno> {
    // The magic link resolves to `dir` itself; `name` is then looked up there, not followed.
    let mut path = proc_fd_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    let path = OsString::from_vec(path);
    read_xattrs(
        || rustix::fs::llistxattr_query(&path),
        |buf| rustix::fs::llistxattr(&path, buf),
        |key| rustix::fs::lgetxattr_query(&path, key),
        |key, buf| rustix::fs::lgetxattr(&path, key, buf),
    )
}

/// Lists and reads xattrs with the size-query-then-fill calls, skipping those that cannot or
/// must not be replayed.
fn read_xattrs(
    list_len: impl Fn() -> Result<usize, Errno>,
    list: impl Fn(&mut [u8]) -> Result<usize, Errno>,
    value_len: impl Fn(&CStr) -> Result<usize, Errno>,
    value: impl Fn(&CStr, &mut [u8]) -> Result<usize, Errno>,
) -> Result<Xattrs, Errno> {
    let names = match sized(list_len, list) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        // The host's label, not the layer's; `=` cannot be written in a PAX key.
        if name == b"security.selinux" || name.contains(&b'=') {
            continue;
        }
        let Ok(key) = CString::new(name) else {
            continue;
        };
        match sized(|| value_len(&key), |buf| value(&key, buf)) {
            Ok(v) => out.push((name.to_vec(), v)),
            // Removed in between.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Queries a length, then fills a buffer of it; again if it grew in between.
fn sized(
    len: impl Fn() -> Result<usize, Errno>,
    fill: impl Fn(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    loop {
        let n = len()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; n];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Puts `value` into a header field, or into a PAX record when it does not fit.
fn set_field(field: &mut [u8], value: &[u8], key: &str, pax: &mut Vec<u8>) {
    if value.len() <= field.len() {
        field[..value.len()].copy_from_slice(value);
    } else {
        // Readers that know PAX take the record; the field keeps what fits.
        let n = field.len();
        field.copy_from_slice(&value[..n]);
        pax_record(pax, key.as_bytes(), value);
    }
}

/// Appends `"LEN key=value\n"`, where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time from seconds and nanoseconds (`0..1e9`): (-2, 750000000) is `-1.250000000`.
fn pax_time(secs: i64, nanos: u32) -> String {
    if secs < 0 && nanos > 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nanos)
    } else {
        format!("{secs}.{nanos:09}")
    }
}

/// An error naming the entry it is about.
fn named(path: &[u8], e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", String::from_utf8_lossy(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        out.clear();
        // 1 + 4 + 1 + 94 + 1 = 101 bytes of body: with "104 " it is 105... then 104 + 1.
        let value = vec![b'x'; 94];
        pax_record(&mut out, b"path", &value);
        let text = String::from_utf8(out.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), out.len());
    }

    #[test]
    fn pax_times_round_trip_through_the_applier_parser() {
        let cases = [
            ((0, 0), "0.000000000"),
            ((1_400_000_000, 123_456_789), "1400000000.123456789"),
            ((-1, 0), "-1.000000000"),
            ((-2, 750_000_000), "-1.250000000"),
        ];
        for ((secs, nanos), want) in cases {
            assert_eq!(pax_time(secs, nanos), want);
        }
    }

    #[test]
    fn a_failed_producer_is_an_error_on_the_reading_side_not_a_short_archive() {
        let mut reader = spawn(|tar| {
            let mut header = Header::new_ustar();
            header.set_size(3);
            header.set_cksum();
            tar.append_data(&mut header, "partial", &b"abc"[..])?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap();
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        // The entry made it, the end-of-archive blocks did not.
        assert_eq!(out.len(), 1024);
    }

    #[test]
    fn a_complete_stream_ends_cleanly() {
        let mut reader = spawn(|_| Ok(())).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![0; 1024]);
    }
}
