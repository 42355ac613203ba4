//! The uncompressed stream of a layer: decompression by media type, the diff_id hash over every
//! uncompressed byte, a bound on how many bytes a layer may expand to, and a two-thread pipeline so
//! decompression and extraction overlap.
//!
//! The diff_id covers the whole uncompressed stream, including what follows the tar's end-of-archive
//! blocks, so callers drain the reader to its end before [`DiffReader::finish`].

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::media_type;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            media_type::OCI_LAYER | media_type::OCI_LAYER_NONDIST => Some(Compression::None),
            media_type::OCI_LAYER_GZIP
            | media_type::OCI_LAYER_NONDIST_GZIP
            | media_type::DOCKER_LAYER_GZIP
            | media_type::DOCKER_LAYER_FOREIGN => Some(Compression::Gzip),
            media_type::OCI_LAYER_ZSTD | media_type::OCI_LAYER_NONDIST_ZSTD => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// Wraps `compressed` in the matching decoder. Gzip reads every member (layers made by
    /// concatenating gzip streams exist); zstd reads every frame.
    pub fn decoder<'a, R: BufRead + Send + 'a>(
        self,
        compressed: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(compressed),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(compressed)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(compressed)?),
        })
    }
}

/// Why a layer's stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "layer expands past {limit} bytes uncompressed; refusing it (raise the limit if the image is legitimate)"
    )]
    TooLarge { limit: u64 },
    #[error(
        "layer diff_id mismatch: the config says {expected}, the uncompressed layer is {actual}"
    )]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// Hashes and counts the uncompressed bytes read through it, and fails the read that would pass
/// `limit` (a decompression bomb stops there instead of filling the disk).
pub struct DiffReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: u64,
}

impl<R: Read> DiffReader<R> {
    pub fn new(inner: R, algorithm: Algorithm, limit: u64) -> Self {
        DiffReader {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
            limit,
        }
    }

    pub fn uncompressed_len(&self) -> u64 {
        self.count
    }

    /// Reads what is left (the tar parser stops at end-of-archive) and checks the diff_id.
    pub fn finish(mut self, expected: &Digest) -> io::Result<Result<u64, StreamError>> {
        io::copy(&mut self, &mut io::sink())?;
        let actual = self.hasher.finish();
        if &actual != expected {
            return Ok(Err(StreamError::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            }));
        }
        Ok(Ok(self.count))
    }
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(StreamError::TooLarge {
                limit: self.limit,
            }));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Chunks handed from the decompressing thread to the extracting one.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight: enough to ride out a burst of small files on the extracting side.
const DEPTH: usize = 16;

/// Runs `decompress` on its own thread and returns a reader of what it produces, so the caller's
/// thread (tar parsing and file creation) overlaps with decompression on two cores.
pub fn spawn_decompression(mut decompressed: Box<dyn Read + Send>) -> io::Result<PipeReader> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let handle = thread::Builder::new()
        .name("haul-decompress".to_owned())
        .spawn(move || {
            loop {
                let mut buf = vec![0u8; CHUNK];
                match read_full(&mut decompressed, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            // The reader was dropped (extraction failed): stop decompressing.
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        })?;
    Ok(PipeReader {
        rx,
        current: Vec::new(),
        pos: 0,
        _handle: handle,
    })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The receiving end of [`spawn_decompression`].
pub struct PipeReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    _handle: thread::JoinHandle<()>,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender finished: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses `compressed` on a separate thread. The counter tells how many compressed bytes have
/// been consumed so far, for progress.
pub fn decompress(
    compressed: Box<dyn Read + Send>,
    compression: Compression,
) -> io::Result<(PipeReader, Arc<AtomicU64>)> {
    let consumed = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: compressed,
        count: consumed.clone(),
    };
    let decoder = compression.decoder(BufReader::with_capacity(CHUNK, counted))?;
    Ok((spawn_decompression(decoder)?, consumed))
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_every_gzip_member_and_zstd_frame() {
        let mut two = gzip(b"first ");
        two.extend(gzip(b"second"));
        let mut out = String::new();
        Compression::Gzip
            .decoder(&two[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "first second");

        let mut frames = zstd::encode_all(&b"one "[..], 1).unwrap();
        frames.extend(zstd::encode_all(&b"two"[..], 1).unwrap());
        let mut out = String::new();
        Compression::Zstd
            .decoder(&frames[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "one two");
    }

    #[test]
    fn diff_reader_hashes_everything_and_stops_bombs() {
        let data = b"x".repeat(10_000);
        let expected = Digest::sha256_of(&data);
        let mut r = DiffReader::new(&data[..], Algorithm::Sha256, 1 << 20);
        let mut first = [0u8; 100];
        r.read_exact(&mut first).unwrap();
        assert_eq!(r.finish(&expected).unwrap().unwrap(), 10_000);

        let r = DiffReader::new(&data[..], Algorithm::Sha256, 1 << 20);
        let wrong = Digest::sha256_of(b"y");
        assert!(matches!(
            r.finish(&wrong).unwrap(),
            Err(StreamError::DiffIdMismatch { .. })
        ));

        let bomb = gzip(&vec![0u8; 5_000_000]);
        let decoder = Compression::Gzip.decoder(&bomb[..]).unwrap();
        let mut r = DiffReader::new(decoder, Algorithm::Sha256, 1_000_000);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("expands past 1000000 bytes"),
            "{err}"
        );
        assert!(r.uncompressed_len() <= 1_000_000 + 64 * 1024);
    }

    #[test]
    fn the_pipeline_delivers_the_stream_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = gzip(&data);
        let decoder = Compression::Gzip
            .decoder(io::Cursor::new(compressed))
            .unwrap();
        let mut pipe = spawn_decompression(decoder).unwrap();
        let mut out = Vec::new();
        pipe.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(
            Compression::from_media_type(media_type::DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(media_type::OCI_LAYER_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type(media_type::OCI_LAYER),
            Some(Compression::None)
        );
        assert_eq!(Compression::from_media_type("application/x-odd"), None);
    }
}
