//! Keys: trusted public keys (PEM `PUBLIC KEY`: ECDSA P-256/P-384, Ed25519, RSA), the private keys
//! `haul trust sign` signs with (PKCS#8, SEC1 and PKCS#1 PEM, and cosign's encrypted
//! `ENCRYPTED SIGSTORE PRIVATE KEY`), and the keyring directory `haul trust key add` writes.
//!
//! A key is identified by the SHA-256 of its SubjectPublicKeyInfo DER, so the same key added under
//! two names, or embedded in a certificate, is recognised as the same key.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{self, KeyPair, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use x509_parser::prelude::FromDer;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// root's keyring, and the one users without a home directory share (only root can change it).
const SYSTEM_KEYRING: &str = "/etc/haul/trust";

/// Public keys and root certificates are small; anything bigger is not one.
const MAX_KEY_FILE: u64 = 1 << 20;

/// What went wrong with a key, a certificate or the keyring. `what` fields name the key's source
/// for the user: a keyring name, a file, or what the caller passed as `what`.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A keyring file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not PEM, or PEM without the block looked for.
    #[error("{what} is not a PEM file: {detail}")]
    NotPem {
        /// The source.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// PEM, but not a `PUBLIC KEY` (a private key or a certificate given as a key, say).
    #[error("{what}: expected a PEM `PUBLIC KEY`, found `{label}`")]
    WrongPemLabel {
        /// The source.
        what: String,
        /// The PEM label found.
        label: String,
    },
    /// A key type haul does not verify or sign with.
    #[error("{what}: unsupported key type ({detail}); ECDSA P-256/P-384, Ed25519 and RSA are")]
    Unsupported {
        /// The source.
        what: String,
        /// The type found.
        detail: String,
    },
    /// The key or certificate does not parse.
    #[error("{what}: malformed key: {detail}")]
    Malformed {
        /// The source.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A cosign key is encrypted and no password was given.
    #[error(
        "{what} is encrypted: set COSIGN_PASSWORD to its password (empty for a key made without one)"
    )]
    PasswordNeeded {
        /// The source.
        what: String,
    },
    /// A cosign key did not decrypt with the password given.
    #[error("{what}: wrong password, or the key file is damaged")]
    Decrypt {
        /// The source.
        what: String,
    },
    /// A keyring name that could not be a file name: letters, digits, `.`, `_` and `-`, at
    /// most 128 characters, not starting with `.`.
    #[error("invalid key name {name:?}: use letters, digits, `.`, `_` and `-`")]
    BadName {
        /// The name given.
        name: String,
    },
    /// Another key is already trusted under this name.
    #[error("a different key is already trusted as {name:?} ({path}); remove it first")]
    Exists {
        /// The name.
        name: String,
        /// The key file already there.
        path: PathBuf,
    },
    /// No key or root of that name in the keyring (or no such file, for a path).
    #[error("no trusted key or root named {name:?} in {dir}")]
    NotFound {
        /// The name or path asked for.
        name: String,
        /// The keyring directory.
        dir: PathBuf,
    },
    /// The private key failed to sign.
    #[error("signing failed: {detail}")]
    Sign {
        /// What the crypto library said.
        detail: String,
    },
    /// Key material another user could have put there is never trusted (like ssh's
    /// `authorized_keys` check): it must belong to this user or root and be writable by no one else.
    #[error(
        "{path} is not trusted as keyring material: {detail}; it must be owned by you or root \
         and not writable by group or others"
    )]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// Who owns it or may write it.
        detail: String,
    },
}

/// The kind of a key, as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on NIST P-256 (`ecdsa-p256`), cosign's default.
    EcdsaP256,
    /// ECDSA on NIST P-384 (`ecdsa-p384`).
    EcdsaP384,
    /// Ed25519 (`ed25519`).
    Ed25519,
    /// RSA, 2048 to 8192 bits (`rsa`).
    Rsa,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::EcdsaP256 => "ecdsa-p256",
            KeyKind::EcdsaP384 => "ecdsa-p384",
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        })
    }
}

/// How a signature's bytes are laid out and hashed; each envelope format says which it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// ECDSA with an ASN.1 DER signature (cosign), hash by curve: SHA-256 for P-256, SHA-384 for P-384.
    EcdsaAsn1,
    /// ECDSA with SHA-256 and a fixed-size `r || s` signature (JOSE `ES256`, COSE `-7`).
    EcdsaFixedSha256,
    EcdsaFixedSha384,
    EcdsaFixedSha512,
    Ed25519,
    RsaPkcs1Sha256,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
}

/// A public key, parsed from its SubjectPublicKeyInfo.
#[derive(Clone)]
pub struct PublicKey {
    kind: KeyKind,
    spki: Vec<u8>,
    /// What `aws-lc-rs` wants: the SEC1 point, the raw Ed25519 key or the PKCS#1 RSA key.
    raw: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.kind, self.fingerprint())
    }
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (the format `cosign generate-key-pair` and `openssl pkey -pubout`
    /// write). `what` names the source in errors.
    ///
    /// # Errors
    ///
    /// Not PEM, not a `PUBLIC KEY`, a key type other than [`KeyKind`]'s, or a key that does not
    /// parse.
    pub fn from_pem(pem_bytes: &[u8], what: &str) -> Result<PublicKey, KeyError> {
        let block = pem::parse(pem_bytes).map_err(|e| KeyError::NotPem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
        if block.tag() != "PUBLIC KEY" {
            return Err(KeyError::WrongPemLabel {
                what: what.to_owned(),
                label: block.tag().to_owned(),
            });
        }
        PublicKey::from_spki_der(block.contents(), what)
    }

    /// Parses a DER SubjectPublicKeyInfo (also what a certificate carries).
    pub(crate) fn from_spki_der(der: &[u8], what: &str) -> Result<PublicKey, KeyError> {
        let malformed = |detail: String| KeyError::Malformed {
            what: what.to_owned(),
            detail,
        };
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the key".to_owned()));
        }
        let alg = spki.algorithm.algorithm.to_id_string();
        let kind = match alg.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_P256 => KeyKind::EcdsaP256,
                    OID_P384 => KeyKind::EcdsaP384,
                    other => {
                        return Err(KeyError::Unsupported {
                            what: what.to_owned(),
                            detail: format!("elliptic curve {other}"),
                        });
                    }
                }
            }
            OID_ED25519 => KeyKind::Ed25519,
            OID_RSA => KeyKind::Rsa,
            other => {
                return Err(KeyError::Unsupported {
                    what: what.to_owned(),
                    detail: format!("algorithm {other}"),
                });
            }
        };
        let raw = spki.subject_public_key.data.to_vec();
        let key = PublicKey {
            kind,
            spki: der.to_vec(),
            raw,
        };
        // Reject keys aws-lc-rs cannot use now, rather than at every verification.
        let probe: &'static dyn VerificationAlgorithm = match kind {
            KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyKind::Ed25519 => &signature::ED25519,
            KeyKind::Rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        signature::ParsedPublicKey::new(probe, &key.raw)
            .map_err(|e| malformed(format!("{kind} key rejected: {e}")))?;
        Ok(key)
    }

    /// The key's type.
    #[must_use]
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The DER SubjectPublicKeyInfo.
    #[must_use]
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// `SHA256:` and the hex SHA-256 of the SubjectPublicKeyInfo.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex::encode(digest_sha256(&self.spki)))
    }

    /// A short form of the fingerprint for messages: `SHA256:` and 16 hex digits.
    #[must_use]
    pub fn short_fingerprint(&self) -> String {
        let fp = self.fingerprint();
        fp.chars().take("SHA256:".len() + 16).collect()
    }

    /// The PEM `PUBLIC KEY` text.
    #[must_use]
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// Whether `signature` over `message` verifies with this key under `scheme`. A scheme that
    /// does not fit the key's type never verifies.
    pub(crate) fn verify(&self, scheme: SignatureScheme, message: &[u8], signature: &[u8]) -> bool {
        use SignatureScheme as S;
        let alg: &'static dyn VerificationAlgorithm = match (self.kind, scheme) {
            (KeyKind::EcdsaP256, S::EcdsaAsn1) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::EcdsaP384, S::EcdsaAsn1) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyKind::EcdsaP256, S::EcdsaFixedSha256) => &signature::ECDSA_P256_SHA256_FIXED,
            (KeyKind::EcdsaP384, S::EcdsaFixedSha384) => &signature::ECDSA_P384_SHA384_FIXED,
            (KeyKind::Ed25519, S::Ed25519) => &signature::ED25519,
            (KeyKind::Rsa, S::RsaPkcs1Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, S::RsaPssSha256) => &signature::RSA_PSS_2048_8192_SHA256,
            (KeyKind::Rsa, S::RsaPssSha384) => &signature::RSA_PSS_2048_8192_SHA384,
            (KeyKind::Rsa, S::RsaPssSha512) => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return false,
        };
        UnparsedPublicKey::new(alg, &self.raw)
            .verify(message, signature)
            .is_ok()
    }

    /// cosign signs the payload with the key's natural scheme: ECDSA (ASN.1), Ed25519, or RSA
    /// PKCS#1 v1.5 with SHA-256; RSA-PSS is accepted too, as some cosign KMS back ends use it.
    pub(crate) fn verify_cosign(&self, message: &[u8], signature: &[u8]) -> bool {
        match self.kind {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {
                self.verify(SignatureScheme::EcdsaAsn1, message, signature)
            }
            KeyKind::Ed25519 => self.verify(SignatureScheme::Ed25519, message, signature),
            KeyKind::Rsa => {
                self.verify(SignatureScheme::RsaPkcs1Sha256, message, signature)
                    || self.verify(SignatureScheme::RsaPssSha256, message, signature)
            }
        }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

pub(crate) fn digest_sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

enum PrivateInner {
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

/// A private key to sign with.
pub struct PrivateKey {
    inner: PrivateInner,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?})", self.public)
    }
}

impl PrivateKey {
    /// Reads a private key PEM: cosign's encrypted format (decrypted with `password`), PKCS#8
    /// `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`. `what` names the
    /// source in errors.
    ///
    /// # Errors
    ///
    /// Not PEM, an encrypted key without `password` or with the wrong one, a key type other than
    /// [`KeyKind`]'s, or a key that does not parse.
    pub fn from_pem(
        pem_bytes: &[u8],
        password: Option<&[u8]>,
        what: &str,
    ) -> Result<PrivateKey, KeyError> {
        let block = pem::parse(pem_bytes).map_err(|e| KeyError::NotPem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
        match block.tag() {
            "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
                let password = password.ok_or_else(|| KeyError::PasswordNeeded {
                    what: what.to_owned(),
                })?;
                let der = decrypt_cosign_key(block.contents(), password, what)?;
                PrivateKey::from_pkcs8(&der, what)
            }
            "PRIVATE KEY" => PrivateKey::from_pkcs8(block.contents(), what),
            "EC PRIVATE KEY" => {
                let der = block.contents();
                let pair = signature::EcdsaKeyPair::from_private_key_der(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    der,
                )
                .or_else(|_| {
                    signature::EcdsaKeyPair::from_private_key_der(
                        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                        der,
                    )
                })
                .map_err(|e| KeyError::Malformed {
                    what: what.to_owned(),
                    detail: e.to_string(),
                })?;
                PrivateKey::from_ecdsa(pair, what)
            }
            "RSA PRIVATE KEY" => {
                let pair = signature::RsaKeyPair::from_der(block.contents()).map_err(|e| {
                    KeyError::Malformed {
                        what: what.to_owned(),
                        detail: e.to_string(),
                    }
                })?;
                PrivateKey::from_rsa(pair, what)
            }
            other => Err(KeyError::Unsupported {
                what: what.to_owned(),
                detail: format!("PEM block `{other}`"),
            }),
        }
    }

    /// A PKCS#8 DER private key of any supported type. `what` names the source in errors.
    ///
    /// # Errors
    ///
    /// Not PKCS#8, a key type other than [`KeyKind`]'s, or a key that does not parse.
    pub fn from_pkcs8(der: &[u8], what: &str) -> Result<PrivateKey, KeyError> {
        if let Ok(pair) =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
        {
            return PrivateKey::from_ecdsa(pair, what);
        }
        if let Ok(pair) =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, der)
        {
            return PrivateKey::from_ecdsa(pair, what);
        }
        if let Ok(pair) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
                pair.public_key(),
            )
            .map_err(|_| KeyError::Malformed {
                what: what.to_owned(),
                detail: "cannot encode the Ed25519 public key".to_owned(),
            })?;
            let public = PublicKey::from_spki_der(spki.as_ref(), what)?;
            return Ok(PrivateKey {
                inner: PrivateInner::Ed25519(pair),
                public,
            });
        }
        match signature::RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => PrivateKey::from_rsa(pair, what),
            Err(e) => Err(KeyError::Unsupported {
                what: what.to_owned(),
                detail: format!("not an ECDSA P-256/P-384, Ed25519 or RSA PKCS#8 key: {e}"),
            }),
        }
    }

    fn from_ecdsa(pair: signature::EcdsaKeyPair, what: &str) -> Result<PrivateKey, KeyError> {
        let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            pair.public_key(),
        )
        .map_err(|_| KeyError::Malformed {
            what: what.to_owned(),
            detail: "cannot encode the ECDSA public key".to_owned(),
        })?;
        let public = PublicKey::from_spki_der(spki.as_ref(), what)?;
        Ok(PrivateKey {
            inner: PrivateInner::Ecdsa(pair),
            public,
        })
    }

    fn from_rsa(pair: signature::RsaKeyPair, what: &str) -> Result<PrivateKey, KeyError> {
        let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            pair.public_key(),
        )
        .map_err(|_| KeyError::Malformed {
            what: what.to_owned(),
            detail: "cannot encode the RSA public key".to_owned(),
        })?;
        let public = PublicKey::from_spki_der(spki.as_ref(), what)?;
        Ok(PrivateKey {
            inner: PrivateInner::Rsa(pair),
            public,
        })
    }

    /// The key's public half: what others add to their keyring to trust its signatures.
    #[must_use]
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` the way cosign does for this key type (see [`PublicKey::verify_cosign`]).
    pub(crate) fn sign_cosign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let fail = |e: aws_lc_rs::error::Unspecified| KeyError::Sign {
            detail: e.to_string(),
        };
        match &self.inner {
            PrivateInner::Ecdsa(pair) => {
                Ok(pair.sign(&rng, message).map_err(fail)?.as_ref().to_vec())
            }
            PrivateInner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            PrivateInner::Rsa(pair) => {
                let mut out = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(fail)?;
                Ok(out)
            }
        }
    }
}

/// cosign's encrypted private key (go-securesystemslib's `encrypted` package): scrypt derives a
/// NaCl secretbox key from the password; the plaintext is the PKCS#8 DER key.
#[derive(serde::Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(serde::Deserialize)]
#[allow(non_snake_case)]
struct ScryptParams {
    N: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(serde::de::Error::custom)
    }
}

fn decrypt_cosign_key(contents: &[u8], password: &[u8], what: &str) -> Result<Vec<u8>, KeyError> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let malformed = |detail: String| KeyError::Malformed {
        what: what.to_owned(),
        detail,
    };
    let enc: EncryptedKey = serde_json::from_slice(contents)
        .map_err(|e| malformed(format!("encrypted key JSON: {e}")))?;
    if enc.kdf.name != "scrypt" || enc.cipher.name != "nacl/secretbox" {
        return Err(KeyError::Unsupported {
            what: what.to_owned(),
            detail: format!("encryption {} with {}", enc.cipher.name, enc.kdf.name),
        });
    }
    let n = enc.kdf.params.N;
    if !n.is_power_of_two() || n < 2 {
        return Err(malformed(format!("scrypt N = {n} is not a power of two")));
    }
    // log2 of a power of two below 2^64 always fits a u8.
    let log_n = n.trailing_zeros() as u8;
    let params = scrypt::Params::new(log_n, enc.kdf.params.r, enc.kdf.params.p, 32)
        .map_err(|e| malformed(format!("scrypt parameters: {e}")))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &enc.kdf.salt, &params, &mut key)
        .map_err(|e| malformed(format!("scrypt: {e}")))?;
    if enc.cipher.nonce.len() != 24 {
        return Err(malformed("secretbox nonce is not 24 bytes".to_owned()));
    }
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    let nonce = crypto_secretbox::Nonce::from_slice(&enc.cipher.nonce);
    cipher
        .decrypt(nonce, enc.ciphertext.as_slice())
        .map_err(|_| KeyError::Decrypt {
            what: what.to_owned(),
        })
}

/// The directory of trusted keys and roots: `keys/NAME.pub` and `roots/NAME.pem`.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

/// A trusted public key and the name it was added under.
#[derive(Debug, Clone)]
pub struct NamedKey {
    /// The keyring name, or the file's path for a key a policy rule names by path.
    pub name: String,
    /// The key.
    pub key: PublicKey,
}

/// Trusted root certificates (one PEM file may hold several) and the name they were added under.
#[derive(Debug, Clone)]
pub struct NamedRoot {
    /// The keyring name, or the file's path for a root a policy rule names by path.
    pub name: String,
    /// The certificates, DER-encoded.
    pub certs: Vec<Vec<u8>>,
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName {
            name: name.to_owned(),
        })
    }
}

pub(crate) fn read_small(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    file.take(MAX_KEY_FILE).read_to_end(&mut out).map_err(io)?;
    Ok(out)
}

/// Reads a trusted key or root, refusing a file (or a directory holding it) that another user
/// could have written.
fn read_trusted(path: &Path) -> Result<Vec<u8>, KeyError> {
    check_owned(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_owned(parent)?;
    }
    read_small(path)
}

fn check_owned(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    let unsafe_because = if meta.uid() != me && meta.uid() != 0 {
        Some(format!("owned by uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!("mode {:o}", meta.mode() & 0o7777))
    } else {
        None
    };
    match unsafe_because {
        Some(detail) => Err(KeyError::Unsafe {
            path: path.to_owned(),
            detail,
        }),
        None => Ok(()),
    }
}

/// Every certificate in a PEM file.
pub fn certificates_from_pem(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    let blocks = pem::parse_many(bytes).map_err(|e| KeyError::NotPem {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(KeyError::NotPem {
            what: what.to_owned(),
            detail: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

impl Keyring {
    /// The keyring in `dir` (which need not exist yet: it is created by the first
    /// [`add_key`](Self::add_key) or [`add_root`](Self::add_root)).
    pub fn new(dir: impl Into<PathBuf>) -> Keyring {
        Keyring { dir: dir.into() }
    }

    /// The keyring the configuration names (`trust.dir`), else [`Keyring::default_dir`] for the
    /// effective user.
    #[must_use]
    pub fn configured(config: &crate::config::Config) -> Keyring {
        Keyring::from_trust_config(&config.trust)
    }

    /// The keyring `trust` names (its `dir`), else [`Keyring::default_dir`] for the effective
    /// user.
    #[must_use]
    pub fn from_trust_config(trust: &super::TrustConfig) -> Keyring {
        match &trust.dir {
            Some(dir) => Keyring::new(dir),
            None => Keyring::new(Keyring::default_dir(rustix::process::geteuid().is_root())),
        }
    }

    /// `$HAUL_TRUST_DIR`, else `/etc/haul/trust` for root, else `$XDG_CONFIG_HOME/haul/trust`
    /// (`~/.config/haul/trust`): beside the config file, since trust is configuration. A user with
    /// neither HOME nor XDG_CONFIG_HOME gets the system keyring, which only root can change, never
    /// a directory under /tmp that another user could have filled with keys.
    pub fn default_dir(is_root: bool) -> PathBuf {
        if let Some(d) = std::env::var_os("HAUL_TRUST_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if is_root {
            return PathBuf::from(SYSTEM_KEYRING);
        }
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .map_or_else(
                || PathBuf::from(SYSTEM_KEYRING),
                |config| config.join("haul").join("trust"),
            )
    }

    /// The keyring's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{name}.pub"))
    }

    fn root_path(&self, name: &str) -> PathBuf {
        self.dir.join("roots").join(format!("{name}.pem"))
    }

    /// Trusts the public key in `pem_bytes` as `name`. Adding the same key again is fine; another
    /// key under an existing name is refused.
    ///
    /// # Errors
    ///
    /// An invalid name, a PEM that is not a supported public key, another key already trusted
    /// as `name` ([`KeyError::Exists`]), or a keyring that cannot be written.
    pub fn add_key(&self, name: &str, pem_bytes: &[u8]) -> Result<NamedKey, KeyError> {
        check_name(name)?;
        let key = PublicKey::from_pem(pem_bytes, name)?;
        let path = self.key_path(name);
        if path.exists() {
            let existing = PublicKey::from_pem(&read_small(&path)?, name)?;
            if existing != key {
                return Err(KeyError::Exists {
                    name: name.to_owned(),
                    path,
                });
            }
        }
        write_atomic(&path, key.to_pem().as_bytes())?;
        Ok(NamedKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Trusts the root certificate(s) in `pem_bytes` as `name` (for certificate-based signatures).
    ///
    /// # Errors
    ///
    /// An invalid name, a PEM without certificates or with one that does not parse, or a
    /// keyring that cannot be written.
    pub fn add_root(&self, name: &str, pem_bytes: &[u8]) -> Result<NamedRoot, KeyError> {
        check_name(name)?;
        let certs = certificates_from_pem(pem_bytes, name)?;
        for der in &certs {
            x509_parser::parse_x509_certificate(der).map_err(|e| KeyError::Malformed {
                what: name.to_owned(),
                detail: format!("certificate: {e}"),
            })?;
        }
        let text: String = certs
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone())))
            .collect();
        write_atomic(&self.root_path(name), text.as_bytes())?;
        Ok(NamedRoot {
            name: name.to_owned(),
            certs,
        })
    }

    /// Removes a trusted key or root; `false` when there was none.
    ///
    /// # Errors
    ///
    /// An invalid name, or a file that cannot be removed.
    pub fn remove(&self, name: &str) -> Result<bool, KeyError> {
        check_name(name)?;
        let mut removed = false;
        for path in [self.key_path(name), self.root_path(name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(KeyError::Io { path, source }),
            }
        }
        Ok(removed)
    }

    /// Every trusted key, sorted by name. A missing directory is an empty keyring.
    ///
    /// # Errors
    ///
    /// A key file (or the directory) another user could have written ([`KeyError::Unsafe`]),
    /// one that cannot be read, or one that is not a supported public key.
    pub fn keys(&self) -> Result<Vec<NamedKey>, KeyError> {
        let mut out = Vec::new();
        for (name, path) in list(&self.dir.join("keys"), "pub")? {
            let key = PublicKey::from_pem(&read_trusted(&path)?, &path.display().to_string())?;
            out.push(NamedKey { name, key });
        }
        Ok(out)
    }

    /// Every trusted root, sorted by name.
    ///
    /// # Errors
    ///
    /// As [`keys`](Self::keys), for root certificate files.
    pub fn roots(&self) -> Result<Vec<NamedRoot>, KeyError> {
        let mut out = Vec::new();
        for (name, path) in list(&self.dir.join("roots"), "pem")? {
            let certs = certificates_from_pem(&read_trusted(&path)?, &path.display().to_string())?;
            out.push(NamedRoot { name, certs });
        }
        Ok(out)
    }

    /// A key by keyring name, or from a file when `spec` is a path (contains `/`).
    ///
    /// # Errors
    ///
    /// [`KeyError::NotFound`] when the keyring has no such key, else as [`keys`](Self::keys).
    pub fn key(&self, spec: &str) -> Result<NamedKey, KeyError> {
        if spec.contains('/') {
            let key = PublicKey::from_pem(&read_trusted(Path::new(spec))?, spec)?;
            return Ok(NamedKey {
                name: spec.to_owned(),
                key,
            });
        }
        check_name(spec)?;
        let path = self.key_path(spec);
        if !path.exists() {
            return Err(KeyError::NotFound {
                name: spec.to_owned(),
                dir: self.dir.clone(),
            });
        }
        let key = PublicKey::from_pem(&read_trusted(&path)?, spec)?;
        Ok(NamedKey {
            name: spec.to_owned(),
            key,
        })
    }

    /// A root by keyring name, or from a file when `spec` is a path.
    ///
    /// # Errors
    ///
    /// [`KeyError::NotFound`] when there is no such root, else as [`roots`](Self::roots).
    pub fn root(&self, spec: &str) -> Result<NamedRoot, KeyError> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            check_name(spec)?;
            self.root_path(spec)
        };
        if !path.exists() {
            return Err(KeyError::NotFound {
                name: spec.to_owned(),
                dir: self.dir.clone(),
            });
        }
        let certs = certificates_from_pem(&read_trusted(&path)?, spec)?;
        Ok(NamedRoot {
            name: spec.to_owned(),
            certs,
        })
    }
}

fn list(dir: &Path, ext: &str) -> Result<Vec<(String, PathBuf)>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KeyError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KeyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            out.push((stem.to_owned(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Standard base64, as cosign writes signatures and Go's JSON writes bytes.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;

    fn p256_pkcs8() -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn signs_and_verifies_each_key_type() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ed = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let rsa = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
        for der in [
            p256_pkcs8(),
            ed.as_ref().to_vec(),
            rsa_der.as_ref().to_vec(),
        ] {
            let key = PrivateKey::from_pkcs8(&der, "test").unwrap();
            let sig = key.sign_cosign(b"payload").unwrap();
            let public = PublicKey::from_pem(key.public_key().to_pem().as_bytes(), "pub").unwrap();
            assert!(public.verify_cosign(b"payload", &sig), "{public:?}");
            assert!(!public.verify_cosign(b"payloaD", &sig), "{public:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        assert!(matches!(
            PublicKey::from_pem(b"hello", "x"),
            Err(KeyError::NotPem { .. })
        ));
        let private = pem::encode(&pem::Pem::new("PRIVATE KEY", p256_pkcs8()));
        assert!(matches!(
            PublicKey::from_pem(private.as_bytes(), "x"),
            Err(KeyError::WrongPemLabel { .. })
        ));
        let junk = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        assert!(matches!(
            PublicKey::from_pem(junk.as_bytes(), "x"),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn keyring_names() {
        for good in ["alice", "ci-key.2", "A_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
