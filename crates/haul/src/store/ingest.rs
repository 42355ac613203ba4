//! Ingest: the only way streamed content (layers, configs) enters the store.
//!
//! An ingest holds the per-digest lock for its whole life, so one process downloads a blob while
//! others sharing the store wait and then find it committed. Bytes go to `ingest/<algo>-<hex>.partial`
//! while they are hashed and counted; [`Ingest::commit`] checks size and digest, fsyncs, renames into
//! `blobs/` and fsyncs the directory. An ingest dropped without a commit removes its partial file,
//! so a failed pull leaves only verified blobs behind.

use std::path::PathBuf;

use tokio::io::{AsyncWriteExt, BufWriter};

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
    _lock: FileLock,
}

impl Store {
    /// Starts ingesting the blob `digest` of `size` bytes, waiting for any other writer of it first.
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
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| StoreError::io(&partial, e))?;
        Ok(IngestStart::Writer(Ingest {
            digest: digest.clone(),
            dest: self.blob_path(digest),
            partial,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            verifier: Verifier::new(digest.clone(), size),
            size,
            _lock: lock,
        }))
    }
}

impl Ingest {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.verifier.bytes_seen()
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
        Ok(())
    }

    /// Verifies size and digest, then makes the blob visible. Nothing is published on failure.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let mut file = self.file.take().ok_or_else(|| self.closed())?;
        let verifier = std::mem::replace(
            &mut self.verifier,
            Verifier::new(self.digest.clone(), self.size),
        );
        verifier.finish().map_err(|source| StoreError::Verify {
            digest: self.digest.clone(),
            source,
        })?;
        file.flush()
            .await
            .map_err(|e| StoreError::io(&self.partial, e))?;
        let file = file.into_inner();
        file.sync_all()
            .await
            .map_err(|e| StoreError::io(&self.partial, e))?;
        drop(file);
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

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the partial no longer exists and this is a no-op.
        let _ = std::fs::remove_file(&self.partial);
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
