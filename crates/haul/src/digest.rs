//! Content digests (`sha256:<64 hex>`) and hashing.
//!
//! A [`Digest`] is only ever constructed from a well-formed string or from a hash computed here, so
//! holding one means the algorithm is supported and the hex part has the right length and alphabet.
//! [`Verifier`] hashes and counts bytes as they stream past and refuses anything that differs from a
//! descriptor: more bytes than declared as soon as they arrive, fewer bytes or a different hash at
//! the end.
//!
//! ```
//! use haul::digest::{Digest, Verifier, VerifyError};
//!
//! let digest = Digest::sha256_of(b"hello");
//! let parsed: Digest = digest.to_string().parse()?;
//! assert_eq!(parsed, digest);
//!
//! // Five bytes declared: a sixth is refused as it arrives, before anything is hashed.
//! let mut verifier = Verifier::new(digest.clone(), 5);
//! verifier.update(b"hel")?;
//! assert_eq!(verifier.clone().update(b"lo!"), Err(VerifyError::TooLong { expected: 5 }));
//! verifier.update(b"lo")?;
//! assert_eq!(verifier.finish()?, digest);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest as lc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The hash algorithms haul can verify. Registries in the wild serve sha256 only; sha512 is allowed
/// by the OCI spec and costs nothing to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256 (`sha256:`, 64 hex digits).
    Sha256,
    /// SHA-512 (`sha512:`, 128 hex digits).
    Sha512,
}

impl Algorithm {
    /// The name as digests write it: `sha256`, `sha512`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn lc(self) -> &'static lc::Algorithm {
        match self {
            Algorithm::Sha256 => &lc::SHA256,
            Algorithm::Sha512 => &lc::SHA512,
        }
    }
}

/// A content digest such as `sha256:2c26b46b…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `ALGORITHM:` before the hex part.
    #[error("invalid digest {0:?}: expected ALGORITHM:HEX")]
    Malformed(
        /// The text given.
        String,
    ),
    /// An algorithm other than sha256 and sha512.
    #[error("unsupported digest algorithm {0:?} (haul verifies sha256 and sha512)")]
    UnsupportedAlgorithm(
        /// The algorithm named.
        String,
    ),
    /// The hex part has the wrong length for its algorithm, or is not lowercase hex.
    #[error("invalid digest {0:?}: wrong length or not lowercase hex")]
    BadHex(
        /// The text given.
        String,
    ),
}

impl Digest {
    /// The hash algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm.
    #[must_use]
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters: docker's short id for layers and images.
    #[must_use]
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// sha256 of a byte slice.
    #[must_use]
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` in this digest's algorithm, to compare against it.
    #[must_use]
    pub fn same_algorithm_of(&self, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(self.algorithm);
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(DigestError::Malformed(s.to_owned())),
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::BadHex(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing in one algorithm.
#[derive(Clone)]
pub struct Hasher {
    algorithm: Algorithm,
    ctx: lc::Context,
}

impl Hasher {
    /// A hasher with nothing hashed yet.
    #[must_use]
    pub fn new(algorithm: Algorithm) -> Self {
        Hasher {
            algorithm,
            ctx: lc::Context::new(algorithm.lc()),
        }
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
    }

    /// The digest of every byte hashed.
    #[must_use]
    pub fn finish(self) -> Digest {
        let out = self.ctx.finish();
        Digest {
            algorithm: self.algorithm,
            hex: hex::encode(out.as_ref()),
        }
    }
}

/// Why streamed content does not match its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// More bytes than declared (reported as soon as they arrive).
    #[error("content is larger than the {expected} bytes its descriptor declares")]
    TooLong {
        /// The declared size, in bytes.
        expected: u64,
    },
    /// The content ended before the declared size.
    #[error("content ended after {actual} of {expected} bytes")]
    TooShort {
        /// The declared size, in bytes.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// The right size, the wrong content.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The declared digest.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
}

/// Hashes and counts streamed bytes against an expected digest and size.
#[derive(Clone)]
pub struct Verifier {
    expected: Digest,
    size: u64,
    seen: u64,
    hasher: Hasher,
}

impl Verifier {
    /// A verifier for content of `size` bytes whose digest must be `expected`.
    #[must_use]
    pub fn new(expected: Digest, size: u64) -> Self {
        Verifier {
            hasher: Hasher::new(expected.algorithm),
            expected,
            size,
            seen: 0,
        }
    }

    /// Feeds the next bytes; fails as soon as they run past the declared size.
    ///
    /// # Errors
    ///
    /// [`VerifyError::TooLong`] when the bytes seen would pass the declared size; they are not
    /// hashed.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        let n = bytes.len() as u64;
        if self.seen.saturating_add(n) > self.size {
            return Err(VerifyError::TooLong {
                expected: self.size,
            });
        }
        self.seen += n;
        self.hasher.update(bytes);
        Ok(())
    }

    /// The bytes accepted so far.
    #[must_use]
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Checks the size and the digest once the stream has ended, and returns the digest.
    ///
    /// # Errors
    ///
    /// [`VerifyError::TooShort`] for fewer bytes than declared, [`VerifyError::Mismatch`] for
    /// other content.
    pub fn finish(self) -> Result<Digest, VerifyError> {
        if self.seen != self.size {
            return Err(VerifyError::TooShort {
                expected: self.size,
                actual: self.seen,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(VerifyError::Mismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(actual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_good_and_refuses_bad_digests() {
        assert!(EMPTY.parse::<Digest>().is_ok());
        let good512 = format!("sha512:{}", "a".repeat(128));
        assert!(good512.parse::<Digest>().is_ok());
        let bad = [
            ("", "malformed"),
            ("sha256", "malformed"),
            (":abc", "malformed"),
            ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported"),
            ("sha256:abc", "hex"),
            (&EMPTY.to_uppercase().replace("SHA256", "sha256"), "hex"),
            (&format!("sha256:{}", "g".repeat(64)), "hex"),
            (&format!("{EMPTY}0"), "hex"),
        ];
        for (input, kind) in bad {
            let err = input.parse::<Digest>().unwrap_err();
            let matches = match kind {
                "malformed" => matches!(err, DigestError::Malformed(_)),
                "unsupported" => matches!(err, DigestError::UnsupportedAlgorithm(_)),
                _ => matches!(err, DigestError::BadHex(_)),
            };
            assert!(matches, "{input:?} gave {err:?}, wanted {kind}");
        }
    }

    #[test]
    fn hashes_match_known_values() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY);
        assert_eq!(
            Digest::sha256_of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verifier_accepts_exact_content_only() {
        let d = Digest::sha256_of(b"hello world");
        let mut v = Verifier::new(d.clone(), 11);
        v.update(b"hello ").unwrap();
        v.update(b"world").unwrap();
        assert_eq!(v.finish().unwrap(), d);

        let mut long = Verifier::new(d.clone(), 11);
        long.update(b"hello world").unwrap();
        assert_eq!(
            long.update(b"!"),
            Err(VerifyError::TooLong { expected: 11 })
        );

        let mut short = Verifier::new(d.clone(), 11);
        short.update(b"hello").unwrap();
        assert!(matches!(
            short.finish(),
            Err(VerifyError::TooShort {
                expected: 11,
                actual: 5
            })
        ));

        let mut wrong = Verifier::new(d, 11);
        wrong.update(b"hello worlD").unwrap();
        assert!(matches!(wrong.finish(), Err(VerifyError::Mismatch { .. })));
    }
}
