//! The uncompressed stream of a layer: decompression by media type, the diff_id hash over every
//! uncompressed byte, a bound on how many bytes a layer may expand to, and a two-thread pipeline so
//! decompression (with the size limit) and extraction (with the diff_id hash) overlap.
//!
//! The diff_id covers the whole uncompressed stream, including what follows the tar's end-of-archive
//! blocks, so callers drain the reader to its end: [`Uncompressed::finish`] does.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::media_type;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// Gzip, one member or several.
    Gzip,
    /// Zstandard, one frame or several.
    Zstd,
}

impl Compression {
    /// The compression of a layer of media type `mt` (OCI, Docker and non-distributable
    /// layers); `None` for a media type that is no layer haul can decompress.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            media_type::OCI_LAYER | media_type::OCI_LAYER_NONDIST | media_type::DOCKER_LAYER => {
                Some(Compression::None)
            }
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

/// Why a layer's uncompressed stream was refused: the source of [`UnpackError::Stream`].
///
/// [`UnpackError::Stream`]: super::UnpackError::Stream
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The layer decompresses to more bytes than extracting it may write (see [`Exceeded`]):
    /// decompression stopped there, so a decompression bomb never fills the disk.
    ///
    /// [`Exceeded`]: super::Exceeded
    #[error(
        "layer expands past {limit} bytes uncompressed; refusing it (raise the limit if the image is legitimate)"
    )]
    TooLarge {
        /// The most the stream could hold, in uncompressed bytes.
        limit: u64,
    },
    /// The uncompressed layer does not hash to the diff_id the image config gives it: the blob
    /// verified, but it is not the layer the image was built from.
    #[error(
        "layer diff_id mismatch: the config says {expected}, the uncompressed layer is {actual}"
    )]
    DiffIdMismatch {
        /// The diff_id in the image config.
        expected: Digest,
        /// The digest of the uncompressed stream, with the config's algorithm.
        actual: Digest,
    },
}

/// Counts the uncompressed bytes read through it, and fails the read that would pass `limit` (a
/// decompression bomb stops there instead of filling the disk).
struct Limited<R> {
    inner: R,
    count: u64,
    limit: u64,
}

impl<R: Read> Limited<R> {
    fn new(inner: R, limit: u64) -> Self {
        Limited {
            inner,
            count: 0,
            limit,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(StreamError::TooLarge {
                limit: self.limit,
            }));
        }
        Ok(n)
    }
}

/// Chunks handed from the decompressing thread to the extracting one.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight: enough to ride out a burst of small files on the extracting side.
const DEPTH: usize = 8;

/// What the decompressing thread sends: chunks of the stream, then how it ended.
enum Message {
    Chunk(Vec<u8>),
    Failed(io::Error),
    /// The whole stream was read: its length.
    Done(u64),
}

/// Decompresses `compressed` on a separate thread, which also counts the uncompressed bytes and
/// stops at `limit`; the reading side hashes each chunk as it takes it (the diff_id). Inflating
/// is the longest stage of a big layer: hashing there made its thread 1.57 s of CPU for a 794 MB
/// layer (1.12 s inflating, 0.45 s hashing) while the extracting thread needed 0.6 s; now each
/// takes about half. The counter tells how many compressed bytes have been consumed, for progress.
pub fn decompress(
    compressed: Box<dyn Read + Send>,
    compression: Compression,
    algorithm: Algorithm,
    limit: u64,
) -> io::Result<(Uncompressed, Arc<AtomicU64>)> {
    let consumed = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: compressed,
        count: consumed.clone(),
    };
    let decoder = compression.decoder(BufReader::with_capacity(CHUNK, counted))?;
    Ok((spawn_decompression(decoder, algorithm, limit)?, consumed))
}

/// Runs `decompressed` on its own thread and returns a reader of what it produces. Buffers go
/// back to the thread once read, so a layer's pipeline allocates `DEPTH + 2` chunks whatever its
/// size.
fn spawn_decompression(
    decompressed: Box<dyn Read + Send>,
    algorithm: Algorithm,
    limit: u64,
) -> io::Result<Uncompressed> {
    let hasher = Hasher::new(algorithm);
    let (tx, rx) = mpsc::sync_channel::<Message>(DEPTH);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let handle = thread::Builder::new()
        .name("haul-decompress".to_owned())
        .spawn(move || {
            let mut reader = Limited::new(decompressed, limit);
            loop {
                let mut buf = free_rx.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let message = match read_full(&mut reader, &mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Message::Done(reader.count));
                        break;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        Message::Chunk(buf)
                    }
                    Err(e) => Message::Failed(e),
                };
                let failed = matches!(message, Message::Failed(_));
                // A send fails when the reader was dropped (extraction failed): stop.
                if tx.send(message).is_err() || failed {
                    break;
                }
            }
        })?;
    Ok(Uncompressed {
        rx,
        free_tx,
        hasher: Some(hasher),
        current: Vec::new(),
        pos: 0,
        end: None,
        too_large: None,
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

/// A layer's uncompressed stream, produced by [`decompress`]'s thread.
pub struct Uncompressed {
    rx: mpsc::Receiver<Message>,
    free_tx: mpsc::Sender<Vec<u8>>,
    /// The diff_id's hash of every chunk taken, until the stream ends.
    hasher: Option<Hasher>,
    current: Vec<u8>,
    pos: usize,
    /// The digest and length, once the stream has ended.
    end: Option<(Digest, u64)>,
    /// Set when the stream stopped at its size limit.
    too_large: Option<u64>,
    _handle: thread::JoinHandle<()>,
}

impl Uncompressed {
    /// The limit the stream was stopped at, if it expanded past it (the reader's caller sees an
    /// I/O error; this tells it what the error was).
    pub fn too_large(&self) -> Option<u64> {
        self.too_large
    }

    /// Reads what is left (the tar parser stops at end-of-archive) and checks the diff_id.
    /// Returns the uncompressed length.
    pub fn finish(mut self, expected: &Digest) -> io::Result<Result<u64, StreamError>> {
        if let Err(e) = io::copy(&mut self, &mut io::sink()) {
            return match self.too_large {
                // Past the end-of-archive blocks, but still part of the diff_id.
                Some(limit) => Ok(Err(StreamError::TooLarge { limit })),
                None => Err(e),
            };
        }
        let Some((actual, count)) = self.end.take() else {
            return Err(io::Error::other("the decompression stopped before the end"));
        };
        if &actual != expected {
            return Ok(Err(StreamError::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            }));
        }
        Ok(Ok(count))
    }
}

impl Read for Uncompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Message::Chunk(chunk)) => {
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    let used = std::mem::replace(&mut self.current, chunk);
                    if used.capacity() > 0 {
                        // The thread may be gone already; the buffer is then just freed.
                        let _ = self.free_tx.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Message::Failed(e)) => {
                    if let Some(StreamError::TooLarge { limit }) =
                        e.get_ref().and_then(|e| e.downcast_ref::<StreamError>())
                    {
                        self.too_large = Some(*limit);
                    }
                    return Err(e);
                }
                Ok(Message::Done(count)) => {
                    let Some(hasher) = self.hasher.take() else {
                        return Err(io::Error::other("the stream ended twice"));
                    };
                    self.end = Some((hasher.finish(), count));
                    return Ok(0);
                }
                // The thread ended without a word: it panicked.
                Err(_) => return Err(io::Error::other("the decompression thread failed")),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
    fn the_limit_counts_everything_and_stops_bombs() {
        let data = b"x".repeat(10_000);
        let mut r = Limited::new(&data[..], 1 << 20);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.count, 10_000);

        let bomb = gzip(&vec![0u8; 5_000_000]);
        let decoder = Compression::Gzip.decoder(&bomb[..]).unwrap();
        let mut r = Limited::new(decoder, 1_000_000);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("expands past 1000000 bytes"),
            "{err}"
        );
        assert!(r.count <= 1_000_000 + 64 * 1024);
    }

    #[test]
    fn the_pipeline_delivers_the_stream_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = gzip(&data);
        let decoder = Compression::Gzip
            .decoder(io::Cursor::new(compressed))
            .unwrap();
        let mut pipe = spawn_decompression(decoder, Algorithm::Sha256, 1 << 30).unwrap();
        let mut out = Vec::new();
        pipe.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            pipe.finish(&Digest::sha256_of(&data)).unwrap().unwrap(),
            3_000_000
        );
    }

    #[test]
    fn the_pipeline_stops_a_bomb_and_says_so_even_past_the_end_of_archive() {
        let bomb = gzip(&vec![0u8; 5_000_000]);
        let decoder = Compression::Gzip
            .decoder(io::Cursor::new(bomb.clone()))
            .unwrap();
        let mut pipe = spawn_decompression(decoder, Algorithm::Sha256, 1_000_000).unwrap();
        let err = pipe.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("expands past"), "{err}");
        assert_eq!(pipe.too_large(), Some(1_000_000));

        // The tar parser stopped early; draining for the diff_id meets the limit.
        let decoder = Compression::Gzip.decoder(io::Cursor::new(bomb)).unwrap();
        let mut pipe = spawn_decompression(decoder, Algorithm::Sha256, 1_000_000).unwrap();
        pipe.read_exact(&mut [0u8; 1024]).unwrap();
        assert!(matches!(
            pipe.finish(&Digest::sha256_of(b"")).unwrap(),
            Err(StreamError::TooLarge { limit: 1_000_000 })
        ));
    }

    #[test]
    fn a_wrong_diff_id_is_reported_with_both_digests() {
        let data = b"layer".repeat(100_000);
        let decoder = Compression::None
            .decoder(io::Cursor::new(data.clone()))
            .unwrap();
        let pipe = spawn_decompression(decoder, Algorithm::Sha256, 1 << 30).unwrap();
        let wrong = Digest::sha256_of(b"other");
        match pipe.finish(&wrong).unwrap() {
            Err(StreamError::DiffIdMismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, Digest::sha256_of(&data));
            }
            other => panic!("{other:?}"),
        }
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
