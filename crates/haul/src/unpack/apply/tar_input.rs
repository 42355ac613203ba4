//! The bytes the tar crate is given: the layer's uncompressed stream, read as Go's
//! archive/tar (docker, containerd) reads it where the tar crate alone would not.

use std::io::{self, Read};

/// Ends the last entry's content with the padding to a whole block when the stream stops right
/// after that content (umoci 0.4.7 writes no padding there), as Go's archive/tar accepts. A stream
/// that stops anywhere else is passed on as it is, for the tar parser to refuse.
pub(super) struct Unpadded<R> {
    inner: R,
    /// Bytes read so far.
    pos: u64,
    /// Where the current entry's content ends, as the applier last set it.
    data_end: std::rc::Rc<std::cell::Cell<u64>>,
    /// Zeros still to give.
    padding: u64,
}

impl<R> Unpadded<R> {
    /// Reads `inner`; `data_end` is where the applier says the current entry's content ends.
    pub(super) fn new(inner: R, data_end: std::rc::Rc<std::cell::Cell<u64>>) -> Self {
        Unpadded {
            inner,
            pos: 0,
            data_end,
            padding: 0,
        }
    }
}

impl<R: Read> Read for Unpadded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.padding == 0 {
            let n = self.inner.read(buf)?;
            self.pos += n as u64;
            if n > 0
                || buf.is_empty()
                || self.pos != self.data_end.get()
                || self.pos.is_multiple_of(512)
            {
                return Ok(n);
            }
            self.padding = 512 - self.pos % 512;
        }
        let n = buf.len().min(self.padding as usize);
        buf[..n].fill(0);
        self.padding -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}
