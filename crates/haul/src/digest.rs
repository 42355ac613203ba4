//! Content digests (`sha256:<64 hex>`) and hashing.
//!
//! A [`Digest`] is only ever constructed from a well-formed string or from a hash computed here, so
//! holding one means the algorithm is supported and the hex part has the right length and alphabet.
//! [`Verifier`] hashes and counts bytes as they stream past and refuses anything that differs from a
//! descriptor: more bytes than declared as soon as they arrive, fewer bytes or a different hash at
//! the end.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest as lc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The hash algorithms haul can verify. Registries in the wild serve sha256 only; sha512 is allowed
/// by the OCI spec and costs nothing to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected ALGORITHM:HEX")]
    Malformed(String),
    #[error("unsupported digest algorithm {0:?} (haul verifies sha256 and sha512)")]
    UnsupportedAlgorithm(String),
    #[error("invalid digest {0:?}: wrong length or not lowercase hex")]
    BadHex(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters: docker's short id for layers and images.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// sha256 of a byte slice.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` in this digest's algorithm, to compare against it.
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
    pub fn new(algorithm: Algorithm) -> Self {
        Hasher {
            algorithm,
            ctx: lc::Context::new(algorithm.lc()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
    }

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
    #[error("content is larger than the {expected} bytes its descriptor declares")]
    TooLong { expected: u64 },
    #[error("content ended after {actual} of {expected} bytes")]
    TooShort { expected: u64, actual: u64 },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
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
    pub fn new(expected: Digest, size: u64) -> Self {
        Verifier {
            hasher: Hasher::new(expected.algorithm),
            expected,
            size,
            seen: 0,
        }
    }

    /// Feeds the next bytes; fails as soon as they run past the declared size.
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

    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Checks the size and the digest once the stream has ended.
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
