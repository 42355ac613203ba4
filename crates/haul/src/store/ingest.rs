//! Ingest: the only way streamed content (layers, configs) enters the store.
//!
//! An ingest holds the per-digest lock for its whole life, so one process downloads a blob while
//! others sharing the store wait and then find it committed. Bytes go to `ingest/<algo>-<hex>.partial`
//! while they are hashed and counted; [`Ingest::commit`] checks size and digest, fsyncs, renames into
//! `blobs/` and fsyncs the directory.
//!
//! A partial file outlives a failed or killed pull on purpose: the next ingest of the same digest
//! (in this process or another) re-hashes what is there and continues from its end, so a download
//! interrupted at 90% fetches only the last 10%. An ingest dropped without [`Ingest::commit`] or
//! [`Ingest::discard`] writes out what it buffered first. Content that turns out wrong is
//! removed: a partial longer than the blob, and any partial whose finished digest does not match.
//!
//! An [`Import`] is for content whose digest nobody declared (a layer an archive names by its path,
//! `<id>/layer.tar`): it is hashed while it is written to a fresh file of its own under `ingest/`,
//! and [`Import::commit`] renames that file to the digest it turned out to have. Nothing is resumed
//! (there is no name to resume under) and nothing is verified against an expectation: the caller
//! checks the digest it gets back against what the image says (the config's diff_ids).
//!
//! Both are plain blocking writers, buffered in memory so that small writes cost a copy, not a
//! system call; an async caller feeds them from a blocking thread (the pull batches a download's
//! chunks into one blocking call per buffer's worth).
//!
//! What a killed process loses: an ingest holds at most [`INGEST_BUFFER`] (256 KiB) that it has
//! taken but not yet handed to the kernel; everything before it has been `write()`n, and a
//! `write()` is in the page cache, which outlives the process (`kill -9`, a panic, an abort).
//! Only a machine that goes down before writeback may lose more; the partial is not fsynced
//! while it grows (only at commit), because a crash of the machine is rare and the next pull
//! re-hashes the partial and fetches whatever is missing or wrong anyway. An import buffers more
//! ([`IMPORT_BUFFER`]): it is never resumed, so what it holds unwritten matters to nobody.

use std::fs::File;
use std::io::{BufWriter, Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use super::layout::INGEST_DIR;
use super::{FileLock, Store, StoreError};
use crate::digest::{Algorithm, Digest, Hasher, Verifier};

/// Bytes an ingest buffers before writing them out ([`Ingest::BUFFER`]).
const INGEST_BUFFER: usize = 256 << 10;

/// Bytes an import buffers before writing them out.
const IMPORT_BUFFER: usize = 1 << 20;

/// Bytes read at once when re-hashing a partial file.
const REHASH_BUFFER: usize = 1 << 20;

/// The outcome of asking to ingest a blob ([`Store::begin_ingest`]).
// Made once per blob download and consumed at once: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum IngestStart {
    /// The blob is already committed (perhaps by another process while we waited for the lock).
    Present,
    /// The blob is missing: write it through this.
    Writer(Ingest),
}

/// A blob of known digest and size being written into the store ([`Store::begin_ingest`]).
///
/// Blocking. Holds the blob's lock until dropped.
pub struct Ingest {
    store: Store,
    digest: Digest,
    /// `ingest/<algo>-<hex>.partial`, relative to the store root.
    partial: PathBuf,
    /// Declared before the lock: written out (when dropped) while the lock is still held.
    file: Option<BufWriter<File>>,
    verifier: Verifier,
    size: u64,
    /// Bytes found in a partial file left by an earlier attempt.
    resumed: u64,
    _lock: FileLock,
}

/// The lock every writer of `digest` holds, across processes.
fn digest_lock_name(digest: &Digest) -> String {
    format!("{}-{}.lock", digest.algorithm().name(), digest.hex())
}

impl Ingest {
    /// See [`Store::begin_ingest`].
    pub(super) fn begin(
        store: &Store,
        digest: &Digest,
        size: u64,
    ) -> Result<IngestStart, StoreError> {
        if store.has_blob(digest) {
            return Ok(IngestStart::Present);
        }
        let lock = FileLock::exclusive(store, &digest_lock_name(digest))?;
        if store.has_blob(digest) {
            return Ok(IngestStart::Present);
        }
        let partial = Path::new(INGEST_DIR).join(format!(
            "{}-{}.partial",
            digest.algorithm().name(),
            digest.hex()
        ));
        // A partial written in ranges is hashed only as far as its record says it is whole.
        let len = store
            .dir()
            .stat(&partial)?
            .map_or(0, |st| u64::try_from(st.st_size).unwrap_or(0));
        let recorded =
            super::ranges::recorded(store, &super::ranges::record_rel(digest), size, len)?
                .map(|r| super::ranges::contiguous_prefix(&r));
        let (file, verifier, resumed) =
            open_partial(store, &partial, digest.clone(), size, recorded)?;
        Ok(IngestStart::Writer(Ingest {
            store: store.clone(),
            digest: digest.clone(),
            partial,
            file: Some(BufWriter::with_capacity(INGEST_BUFFER, file)),
            verifier,
            size,
            resumed,
            _lock: lock,
        }))
    }
}

/// Opens the partial file `rel` (created when absent, never through a symlink) and hashes what an
/// earlier attempt left in it, positioned after that prefix so the ingest can continue. A partial
/// longer than the blob cannot be a prefix of it and is emptied. With `recorded` (a ranged
/// download's record, [`super::ranges`]) only that prefix is hashed and nothing is cut: the
/// ranges past it are kept for the next ranged download.
fn open_partial(
    store: &Store,
    rel: &Path,
    digest: Digest,
    size: u64,
    recorded: Option<u64>,
) -> Result<(File, Verifier, u64), StoreError> {
    let path = store.root().join(rel);
    let io_err = |e| StoreError::io(&path, e);
    let mut file = store.dir().open_writable(rel)?;
    let mut verifier = Verifier::new(digest.clone(), size);
    let file_len = file.metadata().map_err(io_err)?.len();
    let len = recorded.map_or(file_len, |prefix| prefix.min(file_len));
    let mut seen = 0u64;
    if len <= size {
        let mut buf = vec![0u8; REHASH_BUFFER];
        while seen < len {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            let n = n.min((len - seen) as usize);
            // Cannot fail: `len <= size` was checked above.
            verifier
                .update(&buf[..n])
                .map_err(|source| StoreError::Verify {
                    digest: digest.clone(),
                    source,
                })?;
            seen += n as u64;
        }
    }
    // Positioned writes rather than O_APPEND: whatever lies past the hashed prefix goes, and a
    // late write from an abandoned attempt can only land where its (identical) bytes belong.
    if recorded.is_none() {
        file.set_len(seen).map_err(io_err)?;
    }
    file.seek(std::io::SeekFrom::Start(seen)).map_err(io_err)?;
    Ok((file, verifier, seen))
}

impl Ingest {
    /// Bytes an ingest buffers before writing them out: at most this is lost to the next pull
    /// when the process is killed. A write of this size or more goes straight to the file, so a
    /// caller that hands over whole buffers of it (the pull does) costs no copy here.
    pub(crate) const BUFFER: usize = INGEST_BUFFER;

    /// The blob being written.
    #[must_use]
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its declared size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes accepted so far, including those resumed from an earlier attempt's partial file.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.verifier.bytes_seen()
    }

    /// Bytes that were already on disk when this ingest began.
    #[must_use]
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Appends bytes, refusing them as soon as they run past the declared size.
    ///
    /// # Errors
    ///
    /// [`StoreError::Verify`] for bytes past the declared size (none of them is taken);
    /// [`StoreError::Io`] when writing fails.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.verifier
            .update(bytes)
            .map_err(|source| StoreError::Verify {
                digest: self.digest.clone(),
                source,
            })?;
        let Some(file) = self.file.as_mut() else {
            return Err(self.closed());
        };
        file.write_all(bytes)
            .map_err(|e| StoreError::io(&self.store.root().join(&self.partial), e))
    }

    /// Takes the next `bytes` of the blob that a ranged download already wrote at their offset
    /// in the partial ([`Ingest::ranged`]): hashed and counted as if written, not written again.
    ///
    /// # Errors
    ///
    /// As [`Ingest::write`].
    pub fn absorb(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.verifier
            .update(bytes)
            .map_err(|source| StoreError::Verify {
                digest: self.digest.clone(),
                source,
            })?;
        let path = self.path();
        let Some(file) = self.file.as_mut() else {
            return Err(self.closed());
        };
        // The next in-order write lands after them.
        file.seek(std::io::SeekFrom::Start(self.verifier.bytes_seen()))
            .map(|_| ())
            .map_err(|e| StoreError::io(&path, e))
    }

    /// A second handle on the partial file, for writes at offsets, after writing out what is
    /// buffered.
    pub(super) fn positional_file(&mut self) -> Result<File, StoreError> {
        let path = self.path();
        let Some(file) = self.file.as_mut() else {
            return Err(self.closed());
        };
        file.flush().map_err(|e| StoreError::io(&path, e))?;
        file.get_ref()
            .try_clone()
            .map_err(|e| StoreError::io(&path, e))
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn partial_rel(&self) -> &Path {
        &self.partial
    }

    /// Drops what was written so far (a retry that could not resume starts over).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the partial file cannot be emptied.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        // Buffered bytes go unwritten; the file is emptied in place (same inode, still ours),
        // so nothing is reopened by name.
        let Some(mut file) = self.take_file_unflushed() else {
            return Err(self.closed());
        };
        let path = self.path();
        file.set_len(0).map_err(|e| StoreError::io(&path, e))?;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| StoreError::io(&path, e))?;
        self.file = Some(BufWriter::with_capacity(INGEST_BUFFER, file));
        self.verifier = Verifier::new(self.digest.clone(), self.size);
        self.resumed = 0;
        self.store
            .dir()
            .remove_file(&super::ranges::record_rel(&self.digest))
    }

    /// Checks size and digest of what was written, without committing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Verify`] when the bytes written are not the blob (too few, or another
    /// digest).
    pub fn check(&self) -> Result<(), StoreError> {
        self.verifier
            .clone()
            .finish()
            .map(|_| ())
            .map_err(|source| StoreError::Verify {
                digest: self.digest.clone(),
                source,
            })
    }

    /// Ends the ingest and removes its partial file: its bytes are wrong, or the disk needs them
    /// back.
    pub fn discard(mut self) {
        drop(self.take_file_unflushed());
        let _ = self.store.dir().remove_file(&self.partial);
        let _ = self
            .store
            .dir()
            .remove_file(&super::ranges::record_rel(&self.digest));
    }

    /// Verifies size and digest, then makes the blob visible. On a mismatch the partial file is
    /// removed, so the next attempt starts from zero.
    ///
    /// # Errors
    ///
    /// [`StoreError::Verify`] when the bytes written are not the blob; [`StoreError::Io`] when
    /// writing, syncing or renaming fails (the partial then stays, for a later attempt).
    pub fn commit(mut self) -> Result<(), StoreError> {
        if let Err(e) = self.check() {
            self.discard();
            return Err(e);
        }
        let path = self.path();
        let writer = self.file.take().ok_or_else(|| self.closed())?;
        let file = writer
            .into_inner()
            .map_err(|e| StoreError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        drop(file);
        let to = Store::blob_rel(&self.digest);
        let dir = to.parent().unwrap_or(Path::new(""));
        // `blobs/sha256` exists from `Store::open`; another algorithm's directory (sha512) is
        // made, private like the rest, by the first blob that needs it.
        self.store.dir().create_dir(dir)?;
        self.store.dir().rename(&self.partial, &to)?;
        // The blob is in place: a record left behind would only describe a partial long gone.
        let _ = self
            .store
            .dir()
            .remove_file(&super::ranges::record_rel(&self.digest));
        // Durable before any ref names it (`Store::sync`): the data is, already.
        self.store.dir().defer_sync(dir);
        Ok(())
    }

    /// The file without writing out what is buffered.
    fn take_file_unflushed(&mut self) -> Option<File> {
        self.file.take().map(|w| w.into_parts().0)
    }

    /// The partial file's full path, for messages.
    fn path(&self) -> PathBuf {
        self.store.root().join(&self.partial)
    }

    fn closed(&self) -> StoreError {
        StoreError::io(
            &self.path(),
            std::io::Error::other("ingest used after it was closed"),
        )
    }
}

/// A blob being written whose digest is learnt from its content ([`Store::begin_import`]).
///
/// Blocking. Dropped without [`Import::commit`], its file is removed.
pub struct Import {
    store: Store,
    /// `ingest/import-<pid>-<random>`, relative to the store root; ours alone (created O_EXCL).
    partial: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Hasher,
    size: u64,
}

impl Import {
    /// See [`Store::begin_import`].
    pub(super) fn begin(store: &Store) -> Result<Import, StoreError> {
        let partial = Path::new(INGEST_DIR).join(format!(
            "import-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = store.dir().create_new(&partial)?;
        Ok(Import {
            store: store.clone(),
            partial,
            file: Some(BufWriter::with_capacity(IMPORT_BUFFER, file)),
            hasher: Hasher::new(Algorithm::Sha256),
            size: 0,
        })
    }

    /// Appends bytes (hashed on the way).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when writing fails.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = || self.store.root().join(&self.partial);
        let file = self.file.as_mut().ok_or_else(|| {
            StoreError::io(
                &path(),
                std::io::Error::other("import used after it was closed"),
            )
        })?;
        file.write_all(bytes)
            .map_err(|e| StoreError::io(&path(), e))?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the content visible as `blobs/sha256/<its digest>` (fsynced, renamed, directory
    /// fsynced) and returns the digest and size. A blob of that digest already in the store is
    /// kept and this copy dropped: the same digest is the same content.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when writing, syncing or renaming fails; nothing is left behind.
    pub fn commit(mut self) -> Result<(Digest, u64), StoreError> {
        let path = self.store.root().join(&self.partial);
        let writer = self.file.take().ok_or_else(|| {
            StoreError::io(
                &path,
                std::io::Error::other("import used after it was closed"),
            )
        })?;
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(Algorithm::Sha256));
        let result = (|| {
            let file = writer
                .into_inner()
                .map_err(|e| StoreError::io(&path, e.into_error()))?;
            file.sync_all().map_err(|e| StoreError::io(&path, e))?;
            drop(file);
            let digest = hasher.finish();
            // The per-digest lock of ingests: a pull committing the same blob meanwhile is not
            // renamed over.
            let _lock = FileLock::exclusive(&self.store, &digest_lock_name(&digest))?;
            if !self.store.has_blob(&digest) {
                let to = Store::blob_rel(&digest);
                self.store.dir().rename(&self.partial, &to)?;
                self.store
                    .dir()
                    .defer_sync(to.parent().unwrap_or(Path::new("")));
            }
            Ok((digest, self.size))
        })();
        // Already gone when it was renamed; removed when the blob was there or on failure.
        let _ = self.store.dir().remove_file(&self.partial);
        result
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        // Unwritten: the file is removed anyway.
        if let Some(writer) = self.file.take() {
            drop(writer.into_parts());
            let _ = self.store.dir().remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_verified_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"layer bytes".repeat(1000);
        let d = Digest::sha256_of(&data);

        let IngestStart::Writer(mut bad) = store.begin_ingest(&d, data.len() as u64).unwrap()
        else {
            panic!("blob should be missing")
        };
        bad.write(&data[..100]).unwrap();
        bad.write(b"X").unwrap();
        bad.write(&data[101..]).unwrap();
        assert!(matches!(bad.commit(), Err(StoreError::Verify { .. })));
        assert!(!store.has_blob(&d));

        let IngestStart::Writer(mut good) = store.begin_ingest(&d, data.len() as u64).unwrap()
        else {
            panic!("blob should be missing")
        };
        for chunk in data.chunks(777) {
            good.write(chunk).unwrap();
        }
        good.commit().unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
        assert!(matches!(
            store.begin_ingest(&d, data.len() as u64).unwrap(),
            IngestStart::Present
        ));
        let partials = std::fs::read_dir(store.ingest_dir()).unwrap().count();
        assert_eq!(partials, 0);
    }

    /// A commit fsyncs the blob and leaves its directory entry to the next ref written, which
    /// syncs the blob directory first, also for blobs another process (another store handle)
    /// committed: in a crash a ref never survives the blobs it names.
    #[test]
    fn blobs_are_durable_under_their_names_before_a_ref_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let other = Store::open(dir.path()).unwrap();
        let data = b"config".repeat(100);
        let d = Digest::sha256_of(&data);
        let IngestStart::Writer(mut w) = other.begin_ingest(&d, data.len() as u64).unwrap() else {
            panic!("blob should be missing")
        };
        w.write(&data).unwrap();
        w.commit().unwrap();
        assert!(other.has_blob(&d));
        assert_eq!(other.dir().owed(), vec![PathBuf::from("blobs/sha256")]);
        assert!(store.dir().owed().is_empty());

        store.dir().synced.lock().unwrap().clear();
        let entry = super::super::refs::RefEntry {
            name: "registry.test/app:1".to_owned(),
            manifest: crate::manifest::Descriptor::new(
                crate::manifest::media_type::OCI_MANIFEST,
                d.clone(),
                data.len() as u64,
            ),
            resolved: d.clone(),
            source: None,
        };
        store.set_ref(&entry).unwrap();
        let synced = store.dir().synced.lock().unwrap().clone();
        let blobs = synced.iter().position(|p| p == Path::new("blobs/sha256"));
        let index = synced.iter().rposition(|p| p == Path::new(""));
        assert!(
            matches!((blobs, index), (Some(b), Some(i)) if b < i),
            "the blob directory must be synced before the index is renamed into the root: {synced:?}"
        );

        // The committing handle still owes its sync, and pays it when dropped.
        other.dir().synced.lock().unwrap().clear();
        let dir_of_other = other.dir.clone();
        drop(other);
        assert_eq!(
            dir_of_other.owed().len(),
            1,
            "still shared: not dropped yet"
        );
        assert!(dir_of_other.sync_deferred([]).is_ok());
        assert!(dir_of_other.owed().is_empty());
        assert_eq!(
            *dir_of_other.synced.lock().unwrap(),
            vec![PathBuf::from("blobs/sha256")]
        );
    }

    #[test]
    fn refuses_bytes_past_the_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let IngestStart::Writer(mut w) = store.begin_ingest(&d, 3).unwrap() else {
            panic!("blob should be missing")
        };
        w.write(b"abc").unwrap();
        assert!(matches!(w.write(b"d"), Err(StoreError::Verify { .. })));
    }

    fn writer(store: &Store, d: &Digest, size: u64) -> Ingest {
        match store.begin_ingest(d, size).unwrap() {
            IngestStart::Writer(w) => w,
            IngestStart::Present => panic!("blob should be missing"),
        }
    }

    #[test]
    fn an_abandoned_ingest_is_resumed_from_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;

        let mut first = writer(&store, &d, size);
        first.write(&data[..1_000_000]).unwrap();
        // Flushed bytes survive the ingest being dropped, as they survive a killed process.
        first.file.as_mut().unwrap().flush().unwrap();
        drop(first);

        let mut second = writer(&store, &d, size);
        assert_eq!(second.resumed(), 1_000_000);
        assert_eq!(second.written(), 1_000_000);
        second.write(&data[1_000_000..]).unwrap();
        second.commit().unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }

    #[test]
    fn a_partial_that_is_not_a_prefix_is_dropped_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"the real blob content".repeat(100);
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let partial = store
            .ingest_dir()
            .join(format!("sha256-{}.partial", d.hex()));
        std::fs::write(&partial, b"garbage left by a crash").unwrap();

        let mut w = writer(&store, &d, size);
        assert_eq!(w.resumed(), 23);
        w.write(&data[23..]).unwrap();
        assert!(matches!(w.commit(), Err(StoreError::Verify { .. })));
        assert!(
            !partial.exists(),
            "a wrong partial must not be resumed again"
        );

        let w = writer(&store, &d, size);
        assert_eq!(w.resumed(), 0);
    }

    #[test]
    fn a_partial_longer_than_the_blob_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let partial = store
            .ingest_dir()
            .join(format!("sha256-{}.partial", d.hex()));
        std::fs::write(&partial, b"abcdef").unwrap();
        let mut w = writer(&store, &d, 3);
        assert_eq!(w.resumed(), 0);
        w.write(b"abc").unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"abc");
    }

    #[test]
    fn a_second_writer_waits_and_then_finds_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"shared");
        let IngestStart::Writer(mut first) = store.begin_ingest(&d, 6).unwrap() else {
            panic!("blob should be missing")
        };
        let other = store.clone();
        let d2 = d.clone();
        let waiter = std::thread::spawn(move || other.begin_ingest(&d2, 6));
        first.write(b"shared").unwrap();
        first.commit().unwrap();
        let second = waiter.join().unwrap().unwrap();
        assert!(matches!(second, IngestStart::Present));
    }

    #[test]
    fn an_import_is_named_by_what_it_hashes_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"a layer named by its path".repeat(5000);
        let mut import = store.begin_import().unwrap();
        for chunk in data.chunks(4096) {
            import.write(chunk).unwrap();
        }
        let (digest, size) = import.commit().unwrap();
        assert_eq!(digest, Digest::sha256_of(&data));
        assert_eq!(size, data.len() as u64);
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), data);

        // The same content again leaves the blob as it was; nothing is left in ingest/.
        let mut again = store.begin_import().unwrap();
        again.write(&data).unwrap();
        assert_eq!(again.commit().unwrap().0, digest);
        assert_eq!(std::fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
    }

    #[test]
    fn an_abandoned_import_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut import = store.begin_import().unwrap();
        import.write(b"half a layer").unwrap();
        assert_eq!(std::fs::read_dir(store.ingest_dir()).unwrap().count(), 1);
        drop(import);
        assert_eq!(std::fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
        assert!(!store.has_blob(&Digest::sha256_of(b"half a layer")));
    }
}
