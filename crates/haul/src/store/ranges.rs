//! The ranges of a partial download written out of order: a blob fetched over several
//! connections lands at its offsets in the ingest's partial file, and which ranges of it are
//! complete is recorded beside it, in `ingest/<algo>-<hex>.ranges`, one `START-END` line each.
//!
//! Promises:
//! - A range is recorded only after its bytes were written to the partial, so a killed process
//!   leaves a record that claims no more than the file holds (the page cache outlives the
//!   process; after a power loss the record may lie, which the digest check at commit catches).
//! - The next ingest of the digest hashes the contiguous recorded prefix of the partial (not
//!   the holes past it) and hands the other recorded ranges to the next ranged download, which
//!   fetches only what is missing ([`Ingest::ranged`]).
//! - A record is only a hint: lines that do not parse or reach past the blob or the file are
//!   ignored, and bytes a record wrongly claims fail the blob's digest check, after which the
//!   download drops everything and fetches the blob whole, once.
//! - The record goes with its partial: at commit, discard and restart.
//!
//! Blocking, like the rest of the store; the writes and reads at offsets take `&self`, so the
//! connections of one download share one [`RangedPartial`].

use std::fs::File;
use std::io::Read as _;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::layout::INGEST_DIR;
use super::{Ingest, Store, StoreError};
use crate::digest::Digest;

/// The longest record read: 64 KiB is some 2,000 ranges, more than any download makes.
const MAX_RECORD: u64 = 64 << 10;

/// The record of `digest`'s ranges, relative to the store root.
pub(super) fn record_rel(digest: &Digest) -> PathBuf {
    Path::new(INGEST_DIR).join(format!(
        "{}-{}.ranges",
        digest.algorithm().name(),
        digest.hex()
    ))
}

/// The ranges recorded for a blob of `size` bytes whose partial holds `file_len` bytes, merged
/// and sorted; `None` when there is no record.
pub(super) fn recorded(
    store: &Store,
    rel: &Path,
    size: u64,
    file_len: u64,
) -> Result<Option<Vec<Range<u64>>>, StoreError> {
    let Some(file) = store.dir().open_file(rel)? else {
        return Ok(None);
    };
    let mut text = String::new();
    // A record that is not text is no record of ours: nothing in it counts.
    if file.take(MAX_RECORD).read_to_string(&mut text).is_err() {
        return Ok(Some(Vec::new()));
    }
    let limit = size.min(file_len);
    let ranges = text
        .lines()
        .filter_map(|line| {
            let (start, end) = line.split_once('-')?;
            let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
            (start < end && end <= limit).then_some(start..end)
        })
        .collect();
    Ok(Some(merge(ranges)))
}

/// Sorted, overlapping and touching ranges joined.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Where the recorded ranges stop being contiguous from byte 0.
pub(super) fn contiguous_prefix(ranges: &[Range<u64>]) -> u64 {
    match ranges.first() {
        Some(r) if r.start == 0 => r.end,
        _ => 0,
    }
}

/// The record's file, its length, and the ranges it holds (merged), for rewriting it short.
#[derive(Debug)]
struct Appender {
    file: File,
    len: u64,
    ranges: Vec<Range<u64>>,
}

/// A record longer than this is rewritten with its ranges merged: every write is recorded, so a
/// big blob would otherwise leave thousands of lines (and [`MAX_RECORD`] reads only the first).
const COMPACT_AT: u64 = MAX_RECORD / 2;

/// A partial file open for writes and reads at any offset, with its record of complete ranges
/// ([`Ingest::ranged`]).
#[derive(Debug)]
pub struct RangedPartial {
    store: Store,
    file: File,
    /// The partial, relative to the store root (for errors).
    partial: PathBuf,
    record: PathBuf,
    /// The record, opened on the first range.
    appender: Mutex<Option<Appender>>,
    /// Ranges an earlier attempt completed past the ingest's hashed prefix.
    completed: Vec<Range<u64>>,
}

impl Ingest {
    /// The partial file for a download that writes ranges at their offsets: the bytes so far
    /// are recorded as the first range, and the ranges an earlier attempt completed past them
    /// are in [`RangedPartial::completed`]. Bytes written through it are not hashed: they reach
    /// the ingest's digest through [`Ingest::absorb`], in order.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the partial or its record cannot be read or written.
    pub fn ranged(&mut self) -> Result<RangedPartial, StoreError> {
        let file = self.positional_file()?;
        let path = self.store().root().join(self.partial_rel());
        let file_len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let record = record_rel(self.digest());
        let prefix = self.written();
        let completed = recorded(self.store(), &record, self.size(), file_len)?
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.end > prefix)
            .map(|r| r.start.max(prefix)..r.end)
            .collect();
        let ranged = RangedPartial {
            store: self.store().clone(),
            file,
            partial: self.partial_rel().to_owned(),
            record,
            appender: Mutex::new(None),
            completed,
        };
        if prefix > 0 {
            ranged.record(0..prefix)?;
        }
        Ok(ranged)
    }
}

impl RangedPartial {
    /// Ranges past the ingest's hashed prefix that an earlier attempt completed.
    #[must_use]
    pub fn completed(&self) -> &[Range<u64>] {
        &self.completed
    }

    /// Writes `bytes` at `offset` of the partial, then records them: a process killed in the
    /// middle of a range loses only what it had not written yet, not the whole range.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when writing fails (a full disk).
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| StoreError::io(&self.store.root().join(&self.partial), e))?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.record(offset..offset.saturating_add(bytes.len() as u64))
    }

    /// Fills `buf` from `offset` of the partial.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when reading fails, or the file ends before `buf` is full.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| StoreError::io(&self.store.root().join(&self.partial), e))
    }

    /// Records that `range` of the blob is written in the partial.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the record cannot be written.
    pub fn record(&self, range: Range<u64>) -> Result<(), StoreError> {
        let path = self.store.root().join(&self.record);
        let mut appender = self
            .appender
            .lock()
            .map_err(|_| StoreError::io(&path, std::io::Error::other("record lock poisoned")))?;
        if appender.is_none() {
            let earlier = recorded(&self.store, &self.record, u64::MAX, u64::MAX)?;
            let file = self.store.dir().open_writable(&self.record)?;
            let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
            *appender = Some(Appender {
                file,
                len,
                ranges: earlier.unwrap_or_default(),
            });
        }
        let Some(a) = appender.as_mut() else {
            return Ok(());
        };
        let line = format!("{}-{}\n", range.start, range.end);
        a.file
            .write_all_at(line.as_bytes(), a.len)
            .map_err(|e| StoreError::io(&path, e))?;
        a.len += line.len() as u64;
        a.ranges.push(range);
        if a.len > COMPACT_AT {
            self.compact(a)?;
        }
        Ok(())
    }

    /// Rewrites the record with its ranges merged, beside it then renamed over it, so a kill
    /// leaves either record whole.
    fn compact(&self, a: &mut Appender) -> Result<(), StoreError> {
        a.ranges = merge(std::mem::take(&mut a.ranges));
        let text: String = a
            .ranges
            .iter()
            .map(|r| format!("{}-{}\n", r.start, r.end))
            .collect();
        let mut tmp = self.record.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = self.store.dir().open_writable(&tmp)?;
        let tmp_path = self.store.root().join(&tmp);
        file.set_len(0)
            .and_then(|()| file.write_all_at(text.as_bytes(), 0))
            .map_err(|e| StoreError::io(&tmp_path, e))?;
        self.store.dir().rename(&tmp, &self.record)?;
        // The renamed file is the record now: appends go on at its end.
        a.file = file;
        a.len = text.len() as u64;
        Ok(())
    }

    /// Gives up writing at offsets: the partial keeps its first `keep` bytes (the ingest's
    /// hashed prefix, which it continues in order) and the record goes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the partial cannot be truncated or the record removed.
    pub fn abandon(&self, keep: u64) -> Result<(), StoreError> {
        if let Ok(mut appender) = self.appender.lock() {
            *appender = None;
        }
        self.store.dir().remove_file(&self.record)?;
        self.file
            .set_len(keep)
            .map_err(|e| StoreError::io(&self.store.root().join(&self.partial), e))
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::store::IngestStart;

    fn writer(store: &Store, d: &Digest, size: u64) -> Ingest {
        match store.begin_ingest(d, size).unwrap() {
            IngestStart::Writer(w) => w,
            IngestStart::Present => panic!("blob should be missing"),
        }
    }

    #[test]
    fn every_write_is_recorded_and_a_long_record_is_rewritten_merged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"a big blob");
        let size = 64 << 20;
        let mut ingest = writer(&store, &d, size);
        let ranged = ingest.ranged().unwrap();
        // A range half written when the process dies: what reached the file is on record.
        let piece = vec![7u8; 4096];
        for k in 0..4000u64 {
            ranged.write_at(k * 4096, &piece).unwrap();
        }
        ranged.write_at(size - 4096, &piece).unwrap();
        let rel = record_rel(&d);
        let len = std::fs::metadata(store.root().join(&rel)).unwrap().len();
        assert!(len <= COMPACT_AT + 64, "{len} bytes of record");
        assert_eq!(
            recorded(&store, &rel, size, size).unwrap(),
            Some(vec![0..4000 * 4096, size - 4096..size])
        );
        assert!(
            !store
                .root()
                .join(&rel)
                .with_extension("ranges.tmp")
                .exists()
        );
    }

    #[test]
    fn records_merge_and_ignore_what_does_not_fit() {
        assert_eq!(merge(vec![5..9, 0..3, 3..5, 12..20]), vec![0..9, 12..20]);
        assert_eq!(contiguous_prefix(&[0..9, 12..20]), 9);
        assert_eq!(contiguous_prefix(&[1..9]), 0);
        assert_eq!(contiguous_prefix(&[]), 0);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let rel = record_rel(&d);
        std::fs::write(
            store.root().join(&rel),
            "0-10\n10-20\n30-40\n9-5\nnonsense\n50-999\n40-4",
        )
        .unwrap();
        // 50-999 reaches past the blob, 9-5 is backwards, the torn last line is cut short.
        assert_eq!(
            recorded(&store, &rel, 100, 100).unwrap(),
            Some(vec![0..20, 30..40])
        );
        // Nothing past the end of the file counts.
        assert_eq!(recorded(&store, &rel, 100, 15).unwrap(), Some(vec![0..10]));
    }

    #[test]
    fn completed_ranges_survive_the_ingest_and_only_the_prefix_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let size = data.len() as u64;

        let mut first = writer(&store, &d, size);
        let ranged = first.ranged().unwrap();
        assert!(ranged.completed().is_empty());
        for r in [0..30_000u64, 60_000..100_000] {
            ranged
                .write_at(r.start, &data[r.start as usize..r.end as usize])
                .unwrap();
            ranged.record(r).unwrap();
        }
        drop(ranged);
        drop(first);

        let mut second = writer(&store, &d, size);
        assert_eq!(second.resumed(), 30_000, "the contiguous recorded prefix");
        let ranged = second.ranged().unwrap();
        assert_eq!(ranged.completed(), &[60_000..100_000]);
        ranged.write_at(30_000, &data[30_000..60_000]).unwrap();
        let mut buf = vec![0u8; 70_000];
        ranged.read_at(30_000, &mut buf).unwrap();
        second.absorb(&buf).unwrap();
        second.commit().unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
        assert!(!store.root().join(record_rel(&d)).exists());
    }

    #[test]
    fn a_record_that_lies_fails_the_digest_and_goes_with_the_partial() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = vec![9u8; 50_000];
        let d = Digest::sha256_of(&data);
        let partial = store
            .ingest_dir()
            .join(format!("sha256-{}.partial", d.hex()));
        std::fs::write(&partial, vec![0u8; 50_000]).unwrap();
        std::fs::write(store.root().join(record_rel(&d)), "0-50000\n").unwrap();
        let w = writer(&store, &d, 50_000);
        assert_eq!(w.resumed(), 50_000);
        assert!(matches!(w.commit(), Err(StoreError::Verify { .. })));
        assert!(!partial.exists());
        assert!(!store.root().join(record_rel(&d)).exists());
    }

    #[test]
    fn abandoning_keeps_the_prefix_and_drops_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = vec![3u8; 40_000];
        let d = Digest::sha256_of(&data);
        let mut w = writer(&store, &d, 40_000);
        w.write(&data[..10_000]).unwrap();
        let ranged = w.ranged().unwrap();
        ranged.write_at(20_000, &data[20_000..]).unwrap();
        ranged.record(20_000..40_000).unwrap();
        ranged.abandon(10_000).unwrap();
        assert!(!store.root().join(record_rel(&d)).exists());
        w.write(&data[10_000..]).unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    }
}
