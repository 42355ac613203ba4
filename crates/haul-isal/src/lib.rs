//! Gzip inflated by ISA-L (the library `igzip` runs on) for haul's layers, when it is there:
//! it inflates with about 15% less CPU than zlib-rs, and inflating is the longest stage of
//! pulling a big gzip layer.
//!
//! The layout of ISA-L's state comes from its C header through a small shim
//! (`csrc/isal_inflate.c`, compiled when the headers are installed: Debian's libisal-dev), and
//! the library is loaded at run time, so a haul binary on a machine without libisal2 runs and
//! falls back to zlib-rs ([`available`] says which). This crate holds haul's only unsafe code,
//! so the library crate keeps `forbid(unsafe_code)`.
//!
//! The decoder reads every member of a multi-member stream, as `flate2`'s `MultiGzDecoder` does
//! (the tests compare the two on good and bad streams), and checks each member's CRC-32 and
//! length.

#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(haul_isal)]
mod ffi {
    use std::ffi::{c_char, c_int};

    /// ISA-L's `struct inflate_state`, only ever behind a pointer the shim allocated.
    #[repr(C)]
    pub struct State {
        _opaque: [u8; 0],
    }

    unsafe extern "C" {
        pub fn haul_isal_soname() -> *const c_char;
        pub fn haul_isal_load() -> c_int;
        pub fn haul_isal_new() -> *mut State;
        pub fn haul_isal_next_member(s: *mut State);
        pub fn haul_isal_inflate(
            s: *mut State,
            input: *const u8,
            in_len: u32,
            out: *mut u8,
            out_len: u32,
            in_used: *mut u32,
            out_made: *mut u32,
            finished: *mut c_int,
        ) -> c_int;
        pub fn haul_isal_free(s: *mut State);
    }
}

/// Whether ISA-L was found (loaded on the first call; later calls read a flag).
#[cfg(haul_isal)]
pub fn available() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: the shim's loader only sets its function pointers; OnceLock runs it once, before
    // any decoder exists.
    *LOADED.get_or_init(|| unsafe { ffi::haul_isal_load() } == 1)
}

/// Whether ISA-L was found: never, in a build without its headers.
#[cfg(not(haul_isal))]
pub fn available() -> bool {
    false
}

/// The shared library looked up.
#[cfg(haul_isal)]
fn soname() -> &'static str {
    // SAFETY: the shim returns a pointer to a static NUL-terminated string literal.
    unsafe { std::ffi::CStr::from_ptr(ffi::haul_isal_soname()) }
        .to_str()
        .unwrap_or("libisal")
}

/// What inflates gzip in this process, for `haul info`: `isa-l (libisal.so.2)`, or `zlib-rs`
/// and why not ISA-L.
pub fn describe() -> String {
    #[cfg(haul_isal)]
    {
        if available() {
            format!("isa-l ({})", soname())
        } else {
            format!("zlib-rs ({} not found)", soname())
        }
    }
    #[cfg(not(haul_isal))]
    {
        "zlib-rs (built without ISA-L's headers)".to_owned()
    }
}

pub use decoder::MultiGzDecoder;

#[cfg(haul_isal)]
mod decoder {
    use super::{available, ffi, soname};
    use std::ffi::c_int;
    use std::io::{self, BufRead, Read};
    use std::ptr::NonNull;

    /// Inflates every gzip member of `inner`. Build it only when [`available`] is true.
    pub struct MultiGzDecoder<R> {
        inner: R,
        state: NonNull<ffi::State>,
        /// The current member's trailer has been read: what follows is another member or the end.
        member_done: bool,
        /// No byte has been read yet.
        fresh: bool,
    }

    // SAFETY: the state is owned by the decoder alone and ISA-L keeps no thread-local data in it.
    unsafe impl<R: Send> Send for MultiGzDecoder<R> {}

    impl<R: BufRead> MultiGzDecoder<R> {
        /// A decoder of `inner`, or an error when ISA-L is missing or its state cannot be allocated.
        pub fn new(inner: R) -> io::Result<Self> {
            if !available() {
                return Err(io::Error::other(format!("{} is not loaded", soname())));
            }
            // SAFETY: the library is loaded (above); the shim initialises the state it allocates.
            let state = NonNull::new(unsafe { ffi::haul_isal_new() })
                .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
            Ok(MultiGzDecoder {
                inner,
                state,
                member_done: false,
                fresh: true,
            })
        }
    }

    impl<R> Drop for MultiGzDecoder<R> {
        fn drop(&mut self) {
            // SAFETY: allocated by haul_isal_new, freed once.
            unsafe { ffi::haul_isal_free(self.state.as_ptr()) }
        }
    }

    impl<R: BufRead> Read for MultiGzDecoder<R> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if out.is_empty() {
                return Ok(0);
            }
            let out_len = u32::try_from(out.len()).unwrap_or(u32::MAX);
            loop {
                if self.member_done || self.fresh {
                    // The stream ends after a member; an empty blob is a truncated one (as flate2
                    // has it).
                    if !self.fresh && self.inner.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    skip_header(&mut self.inner)?;
                    if self.member_done {
                        // SAFETY: a live state; the previous member is complete.
                        unsafe { ffi::haul_isal_next_member(self.state.as_ptr()) };
                        self.member_done = false;
                    }
                    self.fresh = false;
                }
                let input = self.inner.fill_buf()?;
                let at_end = input.is_empty();
                let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
                let (mut in_used, mut out_made, mut finished) = (0u32, 0u32, 0 as c_int);
                // SAFETY: the pointers and lengths describe live buffers (lengths clamped to what
                // u32 holds); ISA-L reads at most in_len bytes and writes at most out_len.
                let code = unsafe {
                    ffi::haul_isal_inflate(
                        self.state.as_ptr(),
                        input.as_ptr(),
                        in_len,
                        out.as_mut_ptr(),
                        out_len,
                        &mut in_used,
                        &mut out_made,
                        &mut finished,
                    )
                };
                self.inner.consume(in_used as usize);
                if code < 0 {
                    return Err(error(code));
                }
                if finished != 0 {
                    self.member_done = true;
                }
                if out_made > 0 {
                    return Ok(out_made as usize);
                }
                if finished != 0 {
                    continue;
                }
                if at_end {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "gzip stream ends in the middle of a member",
                    ));
                }
                if in_used == 0 {
                    // Input and room for output, and no progress: never seen, but not a loop.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt gzip stream: the inflater made no progress",
                    ));
                }
            }
        }
    }

    /// Reads a gzip member's header (RFC 1952) up to its deflate data, keeping none of it. The
    /// optional fields are skipped without being held, whatever their length; the header's own CRC
    /// (FHCRC, which no common tool writes) is skipped unchecked: the blob's digest covers every byte
    /// of it already.
    fn skip_header<R: BufRead>(r: &mut R) -> io::Result<()> {
        let mut fixed = [0u8; 10];
        r.read_exact(&mut fixed)?;
        if fixed[..2] != [0x1f, 0x8b] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid gzip header",
            ));
        }
        if fixed[2] != 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid gzip header: the compression method is not deflate",
            ));
        }
        let flags = fixed[3];
        if flags & 0xe0 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid gzip header: reserved flags set",
            ));
        }
        if flags & 0x04 != 0 {
            let mut len = [0u8; 2];
            r.read_exact(&mut len)?;
            skip(r, u64::from(u16::from_le_bytes(len)))?;
        }
        // The file name, then the comment: each ends with a NUL.
        for field in [0x08, 0x10] {
            if flags & field != 0 {
                skip_to_nul(r)?;
            }
        }
        if flags & 0x02 != 0 {
            skip(r, 2)?;
        }
        Ok(())
    }

    fn skip<R: BufRead>(r: &mut R, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let available = r.fill_buf()?.len();
            if available == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let step = available.min(usize::try_from(n).unwrap_or(usize::MAX));
            r.consume(step);
            n -= step as u64;
        }
        Ok(())
    }

    fn skip_to_nul<R: BufRead>(r: &mut R) -> io::Result<()> {
        loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match buf.iter().position(|&b| b == 0) {
                Some(i) => {
                    r.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    r.consume(n);
                }
            }
        }
    }

    /// ISA-L's error codes (igzip_lib.h), as flate2 words the same failures where it has them.
    fn error(code: c_int) -> io::Error {
        let what = match code {
            -1 => "corrupt deflate stream: invalid block",
            -2 => "corrupt deflate stream: invalid symbol",
            -3 => "corrupt deflate stream: invalid distance",
            -4 => "invalid gzip header",
            -5 => "invalid gzip header: unsupported compression method",
            -6 => "corrupt gzip stream: checksum or length does not match",
            _ => "corrupt gzip stream",
        };
        // flate2's kinds: the header's faults are invalid input, the stream's invalid data.
        let kind = if matches!(code, -4 | -5) {
            io::ErrorKind::InvalidInput
        } else {
            io::ErrorKind::InvalidData
        };
        io::Error::new(kind, format!("{what} (ISA-L code {code})"))
    }
}

#[cfg(not(haul_isal))]
mod decoder {
    use std::io::{self, BufRead, Read};

    /// Never built: haul was compiled without ISA-L's headers ([`available`] is false).
    ///
    /// [`available`]: super::available
    pub struct MultiGzDecoder<R> {
        _inner: R,
    }

    impl<R: BufRead> MultiGzDecoder<R> {
        /// Always an error: there is no ISA-L in this build.
        pub fn new(_inner: R) -> io::Result<Self> {
            Err(io::Error::other("haul was built without ISA-L"))
        }
    }

    impl<R: BufRead> Read for MultiGzDecoder<R> {
        fn read(&mut self, _out: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("haul was built without ISA-L"))
        }
    }
}

#[cfg(all(test, haul_isal))]
mod tests {
    use super::*;
    use std::io::{self, Read, Write};

    /// What reading all of `blob` gives: the bytes, or the error's kind.
    fn read_all(mut r: impl Read) -> Result<Vec<u8>, io::ErrorKind> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out).map_err(|e| e.kind())
    }

    fn isal(blob: &[u8], chunk: usize) -> Result<Vec<u8>, io::ErrorKind> {
        read_all(MultiGzDecoder::new(io::BufReader::with_capacity(chunk, blob)).unwrap())
    }

    fn flate2(blob: &[u8]) -> Result<Vec<u8>, io::ErrorKind> {
        read_all(flate2::bufread::MultiGzDecoder::new(blob))
    }

    /// Errors of one family: bad data (whatever flate2 calls it) or a stream cut short.
    fn family(r: &Result<Vec<u8>, io::ErrorKind>) -> Result<(usize, u64), &'static str> {
        match r {
            // Length and a checksum: a failing assertion prints two numbers, not megabytes.
            Ok(v) => Ok((
                v.len(),
                v.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b)),
            )),
            Err(io::ErrorKind::UnexpectedEof) => Err("truncated"),
            Err(io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => Err("bad data"),
            Err(_) => Err("other"),
        }
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivially: a tar-like mix of text and noise.
        let mut rng = fastrand::Rng::with_seed(len as u64);
        (0..len)
            .map(|i| {
                if i % 4096 < 3000 {
                    b"usr/lib/x86_64-linux-gnu/"[i % 25]
                } else {
                    rng.u8(..)
                }
            })
            .collect()
    }

    #[test]
    fn inflates_like_flate2_on_good_and_bad_streams() {
        // Built with the headers, so the library (which the headers' package depends on) is
        // there: a missing one is a failure, not a skip.
        assert!(available(), "{} did not load", soname());
        let big = sample(3 << 20);
        let one = gzip(&big, 6);
        let mut members = gzip(&big[..1 << 20], 1);
        members.extend(gzip(b"", 6));
        members.extend(gzip(&big[1 << 20..], 9));
        let named = {
            let mut e = flate2::GzBuilder::new()
                .filename("layer.tar")
                .comment("made by a test")
                .extra(vec![1, 2, 3, 4])
                .write(Vec::new(), flate2::Compression::fast());
            e.write_all(&big[..100_000]).unwrap();
            e.finish().unwrap()
        };
        let mut bad_crc = one.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        let mut bad_len = one.clone();
        bad_len[n - 2] ^= 0x01;
        let mut corrupt = one.clone();
        corrupt[n / 2] ^= 0x55;
        corrupt[n / 2 + 1] ^= 0xaa;
        let mut garbage_after = one.clone();
        garbage_after.extend(b"garbage");
        let mut zeros_after = one.clone();
        zeros_after.extend([0u8; 1024]);
        let with_header_crc = {
            // FHCRC: the low 16 bits of the CRC-32 of the header before it.
            let mut header = one[..10].to_vec();
            header[3] |= 0x02;
            let mut crc = flate2::Crc::new();
            crc.update(&header);
            header.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
            header.extend_from_slice(&one[10..]);
            header
        };
        let mut bad_method = one.clone();
        bad_method[2] = 7;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("one member", one.clone()),
            ("three members, one empty", members.clone()),
            ("small", gzip(&big[..150_000], 6)),
            ("name, comment and extra field", named),
            ("header crc", with_header_crc),
            ("empty blob", Vec::new()),
            ("empty member", gzip(b"", 6)),
            ("cut in the header", one[..5].to_vec()),
            ("cut in the data", one[..n / 2].to_vec()),
            ("cut in the trailer", one[..n - 3].to_vec()),
            (
                "cut in the second member",
                members[..members.len() - 100].to_vec(),
            ),
            ("wrong crc", bad_crc),
            ("wrong length", bad_len),
            ("corrupt data", corrupt),
            ("garbage after", garbage_after),
            ("zeros after", zeros_after),
            ("not deflate", bad_method),
            ("not gzip", b"plain text, no gzip at all".repeat(100)),
        ];
        for (name, blob) in &cases {
            let expected = flate2(blob);
            // Buffers of every shape: input split inside headers and trailers too.
            for chunk in [1, 7, 4096, 256 * 1024] {
                if chunk == 1 && blob.len() > 200_000 {
                    continue;
                }
                let got = isal(blob, chunk);
                assert_eq!(
                    family(&got),
                    family(&expected),
                    "{name}, {chunk}-byte input reads"
                );
            }
        }
    }

    /// Damaged streams (bytes changed, cut, or both) inflate to what flate2 gives or fail as
    /// flate2 fails: what a hostile blob would feed ISA-L (its digest is checked only at the end).
    #[test]
    fn damaged_streams_fail_as_flate2_fails() {
        assert!(available(), "{} did not load", soname());
        let data = sample(200_000);
        let good = gzip(&data, 6);
        let mut rng = fastrand::Rng::with_seed(0x1a2b);
        for round in 0..400 {
            let mut blob = good.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..blob.len());
                blob[at] = rng.u8(..);
            }
            if round % 3 == 0 {
                blob.truncate(rng.usize(..blob.len()));
            }
            let expected = flate2(&blob);
            let got = isal(&blob, [7, 4096, 65_536][round % 3]);
            assert_eq!(family(&got), family(&expected), "round {round}");
        }
    }

    #[test]
    fn output_buffers_of_any_size_get_every_byte() {
        // Built with the headers, so the library (which the headers' package depends on) is
        // there: a missing one is a failure, not a skip.
        assert!(available(), "{} did not load", soname());
        let data = sample(1 << 20);
        let mut blob = gzip(&data, 6);
        blob.extend(gzip(&data[..1000], 6));
        for out_size in [1usize, 3, 512, 65_536, 1 << 21] {
            let mut d = MultiGzDecoder::new(&blob[..]).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; out_size];
            loop {
                let n = d.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got.len(), data.len() + 1000, "{out_size}-byte reads");
            assert!(got[..data.len()] == data[..] && got[data.len()..] == data[..1000]);
        }
    }
}
