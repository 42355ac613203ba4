//! Ingest: the only way streamed content (layers, configs) enters the store.
//!
//! An ingest holds the per-digest lock for its whole life, so one process downloads a blob while
//! others sharing the store wait and then find it committed. Bytes go to `ingest/<algo>-<hex>.partial`
//! while they are hashed and counted; [`Ingest::commit`] checks size and digest, fsyncs, renames into
//! `blobs/` and fsyncs the directory.
//!
//! A partial file outlives a failed or killed pull on purpose: the next ingest of the same digest
//! (in this process or another) re-hashes what is there and continues from its end, so a download
//! interrupted at 90% fetches only the last 10%. Content that turns out wrong is removed: a partial
//! longer than the blob, and any partial whose finished digest does not match.

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{FileLock, Store, StoreError, sync_parent};
use crate::digest::{Digest, Verifier};

const WRITE_BUFFER: usize = 1 << 20;

/// The outcome of asking to ingest a blob.
// Made once per blob download and consumed at once: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum IngestStart {
    /// The blob is already committed (perhaps by another process while we waited for the lock).
    Present,
    Writer(Ingest),
}

pub struct Ingest {
    digest: Digest,
    partial: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    verifier: Verifier,
    size: u64,
    /// Bytes found in a partial file left by an earlier attempt.
    resumed: u64,
    _lock: FileLock,
}

impl Store {
    /// Starts ingesting the blob `digest` of `size` bytes, waiting for any other writer of it
    /// first, and continuing from a partial file an earlier attempt left.
    pub async fn begin_ingest(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<IngestStart, StoreError> {
        if self.has_blob(digest) {
            return Ok(IngestStart::Present);
        }
        let stem = format!("{}-{}", digest.algorithm().name(), digest.hex());
        let lock = FileLock::exclusive_async(self.lock_path(&format!("{stem}.lock"))).await?;
        if self.has_blob(digest) {
            return Ok(IngestStart::Present);
        }
        let partial = self.ingest_dir().join(format!("{stem}.partial"));
        let (verifier, resumed) = {
            let (path, digest) = (partial.clone(), digest.clone());
            tokio::task::spawn_blocking(move || rehash_partial(&path, digest, size))
                .await
                .map_err(|e| StoreError::io(&partial, std::io::Error::other(e)))??
        };
        // Positioned writes rather than O_APPEND: whatever lies past the hashed prefix goes, and a
        // late write from an abandoned attempt can only land where its (identical) bytes belong.
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&partial)
            .await
            .map_err(|e| StoreError::io(&partial, e))?;
        file.set_len(resumed)
            .await
            .map_err(|e| StoreError::io(&partial, e))?;
        file.seek(std::io::SeekFrom::Start(resumed))
            .await
            .map_err(|e| StoreError::io(&partial, e))?;
        Ok(IngestStart::Writer(Ingest {
            digest: digest.clone(),
            dest: self.blob_path(digest),
            partial,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            verifier,
            size,
            resumed,
            _lock: lock,
        }))
    }
}

/// Hashes what an earlier attempt left in `path`, so the ingest can continue after it. A partial
/// longer than the blob cannot be a prefix of it and is emptied.
fn rehash_partial(path: &Path, digest: Digest, size: u64) -> Result<(Verifier, u64), StoreError> {
    let mut verifier = Verifier::new(digest.clone(), size);
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((verifier, 0)),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    if len > size {
        drop(file);
        std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
        return Ok((verifier, 0));
    }
    let mut buf = vec![0u8; WRITE_BUFFER];
    let mut seen = 0u64;
    while seen < len {
        let n = file.read(&mut buf).map_err(|e| StoreError::io(path, e))?;
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
    Ok((verifier, seen))
}

impl Ingest {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes accepted so far, including those resumed from an earlier attempt's partial file.
    pub fn written(&self) -> u64 {
        self.verifier.bytes_seen()
    }

    /// Bytes that were already on disk when this ingest began.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Appends bytes, refusing them as soon as they run past the declared size.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
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
            .await
            .map_err(|e| StoreError::io(&self.partial, e))
    }

    /// Drops what was written so far (a retry that could not resume starts over).
    pub async fn restart(&mut self) -> Result<(), StoreError> {
        self.file = None;
        let file = tokio::fs::File::create(&self.partial)
            .await
            .map_err(|e| StoreError::io(&self.partial, e))?;
        self.file = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        self.verifier = Verifier::new(self.digest.clone(), self.size);
        self.resumed = 0;
        Ok(())
    }

    /// Checks size and digest of what was written, without committing.
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
    pub async fn discard(mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.partial).await;
    }

    /// Verifies size and digest, then makes the blob visible. On a mismatch the partial file is
    /// removed, so the next attempt starts from zero.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Err(e) = self.check() {
            self.discard().await;
            return Err(e);
        }
        let mut file = self.file.take().ok_or_else(|| self.closed())?;
        file.flush()
            .await
            .map_err(|e| StoreError::io(&self.partial, e))?;
        let file = file.into_inner();
        file.sync_all()
            .await
            .map_err(|e| StoreError::io(&self.partial, e))?;
        drop(file);
        // `blobs/sha256` exists from `Store::open`; another algorithm's directory (sha512) is
        // made by the first blob that needs it.
        if let Some(dir) = self.dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| StoreError::io(dir, e))?;
        }
        tokio::fs::rename(&self.partial, &self.dest)
            .await
            .map_err(|e| StoreError::io(&self.dest, e))?;
        let dest = self.dest.clone();
        tokio::task::spawn_blocking(move || sync_parent(&dest))
            .await
            .map_err(|e| StoreError::io(&self.dest, std::io::Error::other(e)))?
    }

    fn closed(&self) -> StoreError {
        StoreError::io(
            &self.partial,
            std::io::Error::other("ingest used after it was closed"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_only_verified_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"layer bytes".repeat(1000);
        let d = Digest::sha256_of(&data);

        let IngestStart::Writer(mut bad) = store.begin_ingest(&d, data.len() as u64).await.unwrap()
        else {
            panic!("blob should be missing")
        };
        bad.write(&data[..100]).await.unwrap();
        bad.write(b"X").await.unwrap();
        bad.write(&data[101..]).await.unwrap();
        assert!(matches!(bad.commit().await, Err(StoreError::Verify { .. })));
        assert!(!store.has_blob(&d));

        let IngestStart::Writer(mut good) =
            store.begin_ingest(&d, data.len() as u64).await.unwrap()
        else {
            panic!("blob should be missing")
        };
        for chunk in data.chunks(777) {
            good.write(chunk).await.unwrap();
        }
        good.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
        assert!(matches!(
            store.begin_ingest(&d, data.len() as u64).await.unwrap(),
            IngestStart::Present
        ));
        let partials = std::fs::read_dir(store.ingest_dir()).unwrap().count();
        assert_eq!(partials, 0);
    }

    #[tokio::test]
    async fn refuses_bytes_past_the_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let IngestStart::Writer(mut w) = store.begin_ingest(&d, 3).await.unwrap() else {
            panic!("blob should be missing")
        };
        w.write(b"abc").await.unwrap();
        assert!(matches!(
            w.write(b"d").await,
            Err(StoreError::Verify { .. })
        ));
    }

    async fn writer(store: &Store, d: &Digest, size: u64) -> Ingest {
        match store.begin_ingest(d, size).await.unwrap() {
            IngestStart::Writer(w) => w,
            IngestStart::Present => panic!("blob should be missing"),
        }
    }

    #[tokio::test]
    async fn an_abandoned_ingest_is_resumed_from_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;

        let mut first = writer(&store, &d, size).await;
        first.write(&data[..1_000_000]).await.unwrap();
        // Flushed bytes survive the ingest being dropped, as they survive a killed process.
        first.file.as_mut().unwrap().flush().await.unwrap();
        drop(first);

        let mut second = writer(&store, &d, size).await;
        assert_eq!(second.resumed(), 1_000_000);
        assert_eq!(second.written(), 1_000_000);
        second.write(&data[1_000_000..]).await.unwrap();
        second.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }

    #[tokio::test]
    async fn a_partial_that_is_not_a_prefix_is_dropped_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"the real blob content".repeat(100);
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let partial = store
            .ingest_dir()
            .join(format!("sha256-{}.partial", d.hex()));
        std::fs::write(&partial, b"garbage left by a crash").unwrap();

        let mut w = writer(&store, &d, size).await;
        assert_eq!(w.resumed(), 23);
        w.write(&data[23..]).await.unwrap();
        assert!(matches!(w.commit().await, Err(StoreError::Verify { .. })));
        assert!(
            !partial.exists(),
            "a wrong partial must not be resumed again"
        );

        let w = writer(&store, &d, size).await;
        assert_eq!(w.resumed(), 0);
    }

    #[tokio::test]
    async fn a_partial_longer_than_the_blob_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let partial = store
            .ingest_dir()
            .join(format!("sha256-{}.partial", d.hex()));
        std::fs::write(&partial, b"abcdef").unwrap();
        let mut w = writer(&store, &d, 3).await;
        assert_eq!(w.resumed(), 0);
        w.write(b"abc").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn a_second_writer_waits_and_then_finds_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"shared");
        let IngestStart::Writer(mut first) = store.begin_ingest(&d, 6).await.unwrap() else {
            panic!("blob should be missing")
        };
        let other = store.clone();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { other.begin_ingest(&d2, 6).await });
        first.write(b"shared").await.unwrap();
        first.commit().await.unwrap();
        let second = waiter.await.unwrap().unwrap();
        assert!(matches!(second, IngestStart::Present));
    }
}
