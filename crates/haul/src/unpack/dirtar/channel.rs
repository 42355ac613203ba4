//! The tar stream of a cached layer is produced on a thread of its own and handed over in chunks
//! through a bounded channel: the applier reading it costs no system call, the threads meet once
//! a chunk, and a failure of the producer reaches the reader as an error at its next read, never
//! as a stream that merely ends (no end-of-archive blocks follow an error).

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread;

/// Bytes handed from the producing thread to the reader at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight.
const DEPTH: usize = 8;

/// Runs `produce` on its own thread, writing into a channel of chunks whose reading end is
/// returned: the applier reading it costs no system call, and the threads meet once a chunk.
pub(super) fn spawn(
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
pub(super) struct DirTar {
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
pub(super) struct ChunkWriter {
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

#[cfg(test)]
mod tests {
    use tar::Header;

    use super::*;

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
