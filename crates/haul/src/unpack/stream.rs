//! The uncompressed stream of a layer: decompression by media type, the diff_id hash over every
//! uncompressed byte, a bound on how many bytes a layer may expand to, and, for a big layer, a
//! pipeline of three threads so decompression (with the size limit), the diff_id hash and
//! extraction overlap.
//!
//! The diff_id covers the whole uncompressed stream, including what follows the tar's end-of-archive
//! blocks, so callers drain the reader to its end: [`Uncompressed::finish`] does.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::media_type;
use crate::store::{Store, StoreError};

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
            Compression::Gzip => gzip_decoder(compressed)?,
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(compressed)?),
        })
    }
}

/// ISA-L's decoder where the library is there, zlib-rs's (through flate2) otherwise.
fn gzip_decoder<'a, R: BufRead + Send + 'a>(
    compressed: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    #[cfg(feature = "isal")]
    if haul_isal::available() {
        return Ok(Box::new(haul_isal::MultiGzDecoder::new(compressed)?));
    }
    Ok(Box::new(flate2::bufread::MultiGzDecoder::new(compressed)))
}

/// What inflates gzip layers in this process, as `haul info` shows it: `isa-l (libisal.so.2)`
/// where haul was built with ISA-L's headers and the library is installed, `zlib-rs` otherwise
/// (with the reason).
#[must_use]
pub fn gzip_inflater() -> String {
    #[cfg(feature = "isal")]
    {
        haul_isal::describe()
    }
    #[cfg(not(feature = "isal"))]
    {
        "zlib-rs (haul built without its isal feature)".to_owned()
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
    /// The stream failed after the tar's end-of-archive, which the diff_id covers too: a
    /// corrupt or truncated compressed stream, bytes after it that are not another gzip member or
    /// zstd frame, or the blob unreadable.
    #[error("cannot read the layer to its end (after its end-of-archive): {source}")]
    Unreadable {
        /// What reading reported.
        source: io::Error,
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

/// Chunks handed from the decompressing thread on.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between two threads: enough to ride out a burst of small files on the
/// extracting side.
const DEPTH: usize = 8;
/// Layers from this size (compressed) up are inflated and hashed on threads of their own; smaller
/// ones on the extracting thread. A big layer's inflating is its longest stage, and overlapping
/// it with the extraction is what makes it stream; a small layer's threads mostly wait for each
/// other: the 40 small layers of `bench/run`'s layers40 spent 2.2 s of their inflating threads
/// blocked on a full channel and 1.0 s of their extracting threads waiting for a chunk, and beside
/// a busy process the pull got 1.2 of the 2 cores. Several small layers extract at once anyway.
pub const OWN_THREAD_FROM: u64 = 16 << 20;

/// The threads a layer of `compressed_size` bytes takes while it is decompressed and extracted.
pub fn threads_for(compressed_size: u64) -> u32 {
    if compressed_size >= OWN_THREAD_FROM {
        3
    } else {
        1
    }
}

/// What goes down a big layer's pipeline: chunks of the stream, then how it ended.
enum Message {
    Chunk(Vec<u8>),
    Failed(io::Error),
    /// The whole stream was read: its length and, once past the hashing thread, its diff_id.
    Done(u64, Option<Digest>),
}

/// A stored blob, buffered, as [`decompress`] reads it (in place: the decoder takes from the
/// buffer).
pub(crate) fn stored_blob(
    store: &Store,
    digest: &Digest,
) -> Result<Box<dyn BufRead + Send>, StoreError> {
    Ok(Box::new(BufReader::with_capacity(
        CHUNK,
        store.open_blob(digest)?,
    )))
}

/// Decompresses `compressed` (a layer of `compressed_size` bytes), counting the uncompressed
/// bytes and stopping at `limit`, and hashes every uncompressed byte (the diff_id). From
/// [`OWN_THREAD_FROM`] up the inflating and the hashing each run on a thread of their own, the
/// reader only extracts: inflating is the longest stage of a big layer (hashing there too made
/// its thread 1.57 s of CPU for a 794 MB layer, 1.12 s inflating and 0.45 s hashing, while the
/// extracting thread needed 0.6 s); with the hash on a third thread the reader's 1.0 s became
/// 0.6 s and `bench/run`'s app image pulled 2% faster, quiet and beside a busy process (means of
/// 6 and 32 paired runs). The counter tells how many compressed bytes have been consumed, for
/// progress.
pub fn decompress(
    compressed: Box<dyn BufRead + Send>,
    compression: Compression,
    algorithm: Algorithm,
    limit: u64,
    compressed_size: u64,
) -> io::Result<(Uncompressed, Arc<AtomicU64>)> {
    let consumed = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: compressed,
        count: consumed.clone(),
    };
    // The source buffers (a file in a `BufReader`, the download's chunks as they come): read in
    // place, with no copy into a buffer of our own.
    let decoder = compression.decoder(counted)?;
    let stream = if compressed_size >= OWN_THREAD_FROM {
        spawn_decompression(decoder, algorithm, limit)?
    } else {
        decompress_inline(decoder, algorithm, limit)
    };
    Ok((stream, consumed))
}

/// Runs `decompressed` on a thread of its own and the diff_id's hash on another, and returns a
/// reader of what they produce. Buffers go back to the inflating thread once read, so a layer's
/// pipeline allocates `2 * DEPTH + 3` chunks whatever its size.
fn spawn_decompression(
    decompressed: Box<dyn Read + Send>,
    algorithm: Algorithm,
    limit: u64,
) -> io::Result<Uncompressed> {
    let (inflated_tx, inflated_rx) = mpsc::sync_channel::<Message>(DEPTH);
    let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Message>(DEPTH);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let inflating = thread::Builder::new()
        .name("haul-decompress".to_owned())
        .spawn(move || inflate(Limited::new(decompressed, limit), &inflated_tx, &free_rx))?;
    let hasher = Hasher::new(algorithm);
    let hashing = thread::Builder::new()
        .name("haul-hash".to_owned())
        .spawn(move || hash(&inflated_rx, &hashed_tx, hasher))?;
    Ok(Uncompressed {
        source: Source::Thread(Pipe {
            rx: hashed_rx,
            free_tx,
            current: Vec::new(),
            pos: 0,
            _threads: [inflating, hashing],
        }),
        end: None,
        too_large: None,
    })
}

/// The inflating thread: chunks of the stream, reusing the buffers the reader gives back.
fn inflate(
    mut reader: Limited<Box<dyn Read + Send>>,
    tx: &mpsc::SyncSender<Message>,
    free: &mpsc::Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = free.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let message = match read_full(&mut reader, &mut buf) {
            Ok(0) => Message::Done(reader.count, None),
            Ok(n) => {
                buf.truncate(n);
                Message::Chunk(buf)
            }
            Err(e) => Message::Failed(e),
        };
        let last = !matches!(message, Message::Chunk(_));
        // A send fails when the next thread is gone (extraction failed): stop.
        if tx.send(message).is_err() || last {
            return;
        }
    }
}

/// The hashing thread: passes every message on, hashing the chunks, and puts the digest on the
/// end of the stream.
fn hash(rx: &mpsc::Receiver<Message>, tx: &mpsc::SyncSender<Message>, mut hasher: Hasher) {
    loop {
        let message = match rx.recv() {
            Ok(Message::Chunk(chunk)) => {
                hasher.update(&chunk);
                Message::Chunk(chunk)
            }
            Ok(Message::Done(count, _)) => {
                let _ = tx.send(Message::Done(count, Some(hasher.finish())));
                return;
            }
            Ok(failed @ Message::Failed(_)) => failed,
            // The inflating thread ended without a word (it panicked): the reader sees this one
            // gone too.
            Err(_) => return,
        };
        let last = matches!(message, Message::Failed(_));
        if tx.send(message).is_err() || last {
            return;
        }
    }
}

/// A reader that inflates `decompressed` on the reading thread itself.
fn decompress_inline(
    decompressed: Box<dyn Read + Send>,
    algorithm: Algorithm,
    limit: u64,
) -> Uncompressed {
    Uncompressed {
        source: Source::Inline(Inline {
            reader: BufReader::with_capacity(CHUNK, Limited::new(decompressed, limit)),
            hasher: Some(Hasher::new(algorithm)),
        }),
        end: None,
        too_large: None,
    }
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

/// A layer's uncompressed stream, from [`decompress`].
pub struct Uncompressed {
    source: Source,
    /// The digest and length, once the stream has ended.
    end: Option<(Digest, u64)>,
    /// Set when the stream stopped at its size limit.
    too_large: Option<u64>,
}

/// Where the uncompressed bytes come from.
enum Source {
    /// The inflating and hashing threads.
    Thread(Pipe),
    /// The decoder itself, run by whoever reads.
    Inline(Inline),
}

/// A stream inflated and hashed by its reader.
struct Inline {
    reader: BufReader<Limited<Box<dyn Read + Send>>>,
    /// The diff_id's hash of every byte read, until the stream ends.
    hasher: Option<Hasher>,
}

/// The reading end of the inflating and hashing threads.
struct Pipe {
    rx: mpsc::Receiver<Message>,
    free_tx: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    _threads: [thread::JoinHandle<()>; 2],
}

/// What one read of the source gave.
enum Step {
    /// Bytes, copied into the caller's buffer.
    Data(usize),
    /// The end of the stream: how many bytes it had and its digest.
    End(u64, Digest),
}

impl Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Step> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Message::Chunk(chunk)) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    if used.capacity() > 0 {
                        // The thread may be gone already; the buffer is then just freed.
                        let _ = self.free_tx.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Message::Failed(e)) => return Err(e),
                Ok(Message::Done(count, Some(digest))) => return Ok(Step::End(count, digest)),
                Ok(Message::Done(_, None)) => {
                    return Err(io::Error::other("the stream ended without its digest"));
                }
                // The threads ended without a word: one panicked.
                Err(_) => return Err(io::Error::other("the decompression thread failed")),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(Step::Data(n))
    }
}

impl Inline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Step> {
        if buf.is_empty() {
            return Ok(Step::Data(0));
        }
        let n = self.reader.read(buf)?;
        if n > 0 {
            if let Some(hasher) = self.hasher.as_mut() {
                hasher.update(&buf[..n]);
            }
            return Ok(Step::Data(n));
        }
        let hasher = self
            .hasher
            .take()
            .ok_or_else(|| io::Error::other("the stream ended twice"))?;
        Ok(Step::End(self.reader.get_ref().count, hasher.finish()))
    }
}

impl Uncompressed {
    /// Whether the stream is inflated on a thread of its own.
    #[cfg(test)]
    fn is_threaded(&self) -> bool {
        matches!(self.source, Source::Thread(_))
    }

    /// The limit the stream was stopped at, if it expanded past it (the reader's caller sees an
    /// I/O error; this tells it what the error was).
    pub fn too_large(&self) -> Option<u64> {
        self.too_large
    }

    /// Reads what is left (the tar parser stops at end-of-archive) and checks the diff_id.
    /// Returns the uncompressed length.
    pub fn finish(mut self, expected: &Digest) -> Result<u64, StreamError> {
        if let Err(source) = io::copy(&mut self, &mut io::sink()) {
            return Err(match self.too_large {
                // Past the end-of-archive blocks, but still part of the diff_id.
                Some(limit) => StreamError::TooLarge { limit },
                None => StreamError::Unreadable { source },
            });
        }
        let Some((actual, count)) = self.end.take() else {
            return Err(StreamError::Unreadable {
                source: io::Error::other("the decompression stopped before the end"),
            });
        };
        if &actual != expected {
            return Err(StreamError::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(count)
    }
}

impl Read for Uncompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.is_some() {
            return Ok(0);
        }
        let step = match &mut self.source {
            Source::Thread(pipe) => pipe.read(buf),
            Source::Inline(inline) => inline.read(buf),
        };
        match step {
            Ok(Step::Data(n)) => Ok(n),
            Ok(Step::End(count, digest)) => {
                self.end = Some((digest, count));
                Ok(0)
            }
            Err(e) => {
                if let Some(StreamError::TooLarge { limit }) =
                    e.get_ref().and_then(|e| e.downcast_ref::<StreamError>())
                {
                    self.too_large = Some(*limit);
                }
                Err(e)
            }
        }
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

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
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

    /// Both ways a stream is decompressed: on a thread of its own and on the reading thread.
    fn both_ways(
        compressed: &[u8],
        compression: Compression,
        limit: u64,
    ) -> [(&'static str, Uncompressed); 2] {
        let ways = [
            ("threaded", OWN_THREAD_FROM),
            ("inline", OWN_THREAD_FROM - 1),
        ];
        ways.map(|(way, size)| {
            let (stream, _) = decompress(
                Box::new(io::Cursor::new(compressed.to_vec())),
                compression,
                Algorithm::Sha256,
                limit,
                size,
            )
            .unwrap();
            assert_eq!(stream.is_threaded(), way == "threaded");
            (way, stream)
        })
    }

    #[test]
    fn a_big_layer_is_inflated_and_hashed_on_threads_of_its_own_and_a_small_one_inline() {
        assert_eq!(threads_for(OWN_THREAD_FROM), 3);
        assert_eq!(threads_for(OWN_THREAD_FROM - 1), 1);
        // both_ways checks which way each stream went
        both_ways(&gzip(b"x"), Compression::Gzip, 1 << 20);
    }

    #[test]
    fn the_stream_arrives_in_order_with_its_diff_id() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for (way, mut stream) in both_ways(&gzip(&data), Compression::Gzip, 1 << 30) {
            let mut out = Vec::new();
            // Reads of every size, as the tar parser makes them (512-byte headers, file bodies).
            let mut buf = vec![0u8; 300_000];
            let mut size = 1;
            loop {
                let n = stream.read(&mut buf[..size]).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                size = size * 7 % 299_999 + 1;
            }
            assert!(out == data, "{way}: the bytes differ");
            assert_eq!(
                stream.finish(&Digest::sha256_of(&data)).unwrap(),
                3_000_000,
                "{way}"
            );
        }
    }

    #[test]
    fn a_reader_that_stops_early_ends_the_inflating_and_hashing_threads() {
        // A stream without end: the threads stop only because the reader went away.
        let (mut stream, _) = decompress(
            Box::new(BufReader::new(io::repeat(7))),
            Compression::None,
            Algorithm::Sha256,
            u64::MAX,
            OWN_THREAD_FROM,
        )
        .unwrap();
        let mut buf = vec![0u8; 1000];
        stream.read_exact(&mut buf).unwrap();
        let Source::Thread(pipe) = stream.source else {
            panic!("the big layer's stream is not threaded");
        };
        let Pipe {
            rx,
            _threads: threads,
            ..
        } = pipe;
        drop(rx);
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            for t in threads {
                t.join().unwrap();
            }
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a thread of the pipeline still runs after its reader went away");
    }

    #[test]
    fn a_read_into_an_empty_buffer_does_not_end_the_stream() {
        for (way, mut stream) in both_ways(&gzip(b"layer"), Compression::Gzip, 1 << 20) {
            assert_eq!(stream.read(&mut []).unwrap(), 0, "{way}");
            assert_eq!(
                stream.finish(&Digest::sha256_of(b"layer")).unwrap(),
                5,
                "{way}"
            );
        }
    }

    #[test]
    fn a_bomb_is_stopped_and_said_so_even_past_the_end_of_archive() {
        let bomb = gzip(&vec![0u8; 5_000_000]);
        for (way, mut stream) in both_ways(&bomb, Compression::Gzip, 1_000_000) {
            let err = stream.read_to_end(&mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains("expands past"), "{way}: {err}");
            assert_eq!(stream.too_large(), Some(1_000_000), "{way}");
        }
        // The tar parser stopped early; draining for the diff_id meets the limit.
        for (way, mut stream) in both_ways(&bomb, Compression::Gzip, 1_000_000) {
            stream.read_exact(&mut [0u8; 1024]).unwrap();
            assert!(
                matches!(
                    stream.finish(&Digest::sha256_of(b"")),
                    Err(StreamError::TooLarge { limit: 1_000_000 })
                ),
                "{way}"
            );
        }
    }

    #[test]
    fn a_wrong_diff_id_is_reported_with_both_digests() {
        let data = b"layer".repeat(100_000);
        for (way, stream) in both_ways(&data, Compression::None, 1 << 30) {
            let wrong = Digest::sha256_of(b"other");
            match stream.finish(&wrong) {
                Err(StreamError::DiffIdMismatch { expected, actual }) => {
                    assert_eq!(expected, wrong, "{way}");
                    assert_eq!(actual, Digest::sha256_of(&data), "{way}");
                }
                other => panic!("{way}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_after_the_compressed_stream_fails_the_finish_as_unreadable() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 13) as u8).collect();
        let mut blob = gzip(&data);
        blob.extend(b"garbage after the gzip stream");
        for (way, mut stream) in both_ways(&blob, Compression::Gzip, 1 << 30) {
            // The tar parser stops at its end-of-archive, before the garbage.
            stream.read_exact(&mut [0u8; 4096]).unwrap();
            match stream.finish(&Digest::sha256_of(&data)) {
                Err(e @ StreamError::Unreadable { .. }) => {
                    assert!(e.to_string().contains("invalid gzip header"), "{way}: {e}");
                }
                other => panic!("{way}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_corrupt_stream_fails_the_read() {
        let mut bad = gzip(&vec![7u8; 1_000_000]);
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad.truncate(bad.len() - 3);
        for (way, mut stream) in both_ways(&bad, Compression::Gzip, 1 << 30) {
            assert!(stream.read_to_end(&mut Vec::new()).is_err(), "{way}");
            assert_eq!(stream.too_large(), None, "{way}");
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
