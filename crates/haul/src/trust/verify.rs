//! The verifier: every signature of an image found and judged against the keyring and the
//! policy (see the module docs of [`crate::trust`]).

use std::fmt;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};

use super::discovery::{self, Source};
use super::keys::{KeyError, Keyring, NamedKey, NamedRoot};
use super::policy::{Require, Rule, TrustConfig, Unsigned};
use super::{cosign, notation};

/// Why one signature does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFailure {
    /// The signature is valid, but for another image.
    #[error("signature does not match this digest (it signs {signed})")]
    DigestMismatch {
        /// The digest it signs.
        signed: String,
    },
    /// The signature names another repository than the one pulled from (cosign's
    /// `docker-reference`), so it cannot vouch for this one.
    #[error("signature is for another repository ({signed})")]
    WrongIdentity {
        /// The repository it names.
        signed: String,
    },
    /// No trusted key verifies the signature.
    #[error("signed by an untrusted key (the signature verifies with no trusted key)")]
    UntrustedKey,
    /// A trusted signer, but not one the policy rule for this image names.
    #[error("signed by {signer}, which the trust policy for this image does not accept")]
    NotAccepted {
        /// The signer, as [`Signer`]'s `Display` shows it.
        signer: String,
    },
    /// The signature does not verify with the key of the certificate that came with it.
    #[error("the signature does not verify with its certificate's key (changed after signing)")]
    BadSignature,
    /// The signing certificate had expired at the time of the check.
    #[error("certificate {subject} expired on {not_after}")]
    CertificateExpired {
        /// The certificate's subject.
        subject: String,
        /// When it expired.
        not_after: String,
    },
    /// The signing certificate was not yet valid at the time of the check.
    #[error("certificate {subject} is not valid before {not_before}")]
    CertificateNotYetValid {
        /// The certificate's subject.
        subject: String,
        /// When it becomes valid.
        not_before: String,
    },
    /// A certificate that came with the signature cannot be parsed.
    #[error("malformed certificate: {detail}")]
    MalformedCertificate {
        /// What is wrong with it.
        detail: String,
    },
    /// The signing certificate does not chain to a trusted root.
    #[error("certificate {subject} is not trusted: {detail}")]
    UntrustedCertificate {
        /// The certificate's subject.
        subject: String,
        /// Why the chain was refused.
        detail: String,
    },
    /// The signature (a Notation envelope's expiry) had expired at the time of the check.
    #[error("the signature expired on {at}")]
    SignatureExpired {
        /// When it expired.
        at: String,
    },
    /// The signature or its envelope cannot be parsed.
    #[error("malformed signature: {detail}")]
    Malformed {
        /// What is wrong with it.
        detail: String,
    },
    /// A signature in a format haul does not verify.
    #[error("unsupported signature format: {media_type}")]
    Unsupported {
        /// The signature layer's media type.
        media_type: String,
    },
    /// The signature could not be fetched from the registry (and retrying will not help).
    #[error("cannot read the signature: {detail}")]
    Unreadable {
        /// What the registry answered.
        detail: String,
    },
}

/// Who made a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A key from the keyring (or a policy's key file).
    Key {
        /// The name the key was trusted under (`haul trust key add NAME`), or the key file a
        /// policy rule names.
        name: String,
        /// The key's type (`ecdsa-p256`, `ed25519`…).
        kind: String,
        /// `SHA256:` and the hex SHA-256 of the key's SubjectPublicKeyInfo.
        fingerprint: String,
    },
    /// A certificate that chains to a trusted root.
    Certificate {
        /// The signing certificate's subject.
        subject: String,
        /// The identities (e-mail addresses, URIs) its subject alternative names hold.
        identities: Vec<String>,
        /// The name of the trusted root it chains to.
        root: String,
    },
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Key {
                name,
                kind,
                fingerprint,
            } => write!(f, "key {name} ({kind}, {fingerprint})"),
            Signer::Certificate {
                subject,
                identities,
                root,
            } => {
                write!(f, "certificate {subject}")?;
                if !identities.is_empty() {
                    write!(f, " <{}>", identities.join(", "))?;
                }
                write!(f, " under root {root}")
            }
        }
    }
}

/// The format of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    /// cosign's simple signing.
    Cosign,
    /// A Notation envelope in JWS.
    NotationJws,
    /// A Notation envelope in COSE.
    NotationCose,
    /// A signature artifact in a format haul does not verify.
    Unknown,
}

impl fmt::Display for SignatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureKind::Cosign => "cosign",
            SignatureKind::NotationJws => "notation (JWS)",
            SignatureKind::NotationCose => "notation (COSE)",
            SignatureKind::Unknown => "unknown",
        })
    }
}

/// One signature found for an image, and whether it is valid.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    /// The signature's format.
    pub kind: SignatureKind,
    /// Where it was found.
    pub source: Source,
    /// The signature manifest it came from.
    pub manifest: Digest,
    /// Who made it, when it verifies with a trusted key or root; else why it does not count.
    pub result: Result<Signer, SignatureFailure>,
}

/// Every signature found for one digest.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The image as named.
    pub reference: Reference,
    /// The digest it resolved to, whose signatures these are.
    pub digest: Digest,
    /// Every signature found, valid or not.
    pub signatures: Vec<SignatureReport>,
}

impl Inspection {
    /// The signers of the signatures that verify with a trusted key or root (whatever the
    /// policy says of them).
    pub fn valid_signers(&self) -> impl Iterator<Item = &Signer> {
        self.signatures
            .iter()
            .filter_map(|s| s.result.as_ref().ok())
    }
}

/// A refused signature, for error messages.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The signature's format.
    pub kind: SignatureKind,
    /// The signature manifest it came from.
    pub manifest: Digest,
    /// Why it does not count.
    pub reason: SignatureFailure,
}

fn list_refusals(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("{} signature {}: {}", r.kind, r.manifest.short(), r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why content trust refused an image, or could not decide. `image` fields are the familiar
/// name (`alpine:3.20`), `digest` the digest judged.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The image has no signature at all.
    #[error(
        "{image}@{digest}: no signature found (looked for cosign's {}.sig tag and OCI referrers)",
        discovery::digest_tag(.digest)
    )]
    NoSignature {
        /// The image.
        image: String,
        /// The digest judged.
        digest: Digest,
    },
    /// Signatures were found, but none counts; [`TrustError::reasons`] says why for each.
    #[error("{image}@{digest}: no valid signature by a trusted key: {}", list_refusals(.refusals))]
    Untrusted {
        /// The image.
        image: String,
        /// The digest judged.
        digest: Digest,
        /// Each signature found and why it does not count.
        refusals: Vec<Refusal>,
    },
    /// The policy rule says `require: all`, and some of its signers have not signed.
    #[error("{image}@{digest}: the trust policy requires signatures by {missing}, missing")]
    MissingSigners {
        /// The image.
        image: String,
        /// The digest judged.
        digest: Digest,
        /// The signers missing, comma-separated.
        missing: String,
    },
    /// The tag could not be resolved to a digest.
    #[error("resolving {image}: {source}")]
    Resolve {
        /// The image.
        image: String,
        /// What the registry answered.
        #[source]
        source: Box<RegistryError>,
    },
    /// The registry failed while signatures were looked for: trust fails closed.
    #[error("looking for signatures of {image}@{digest}: {source}")]
    Discovery {
        /// The image.
        image: String,
        /// The digest whose signatures were looked for.
        digest: Digest,
        /// What the registry answered.
        #[source]
        source: Box<RegistryError>,
    },
    /// The keyring (or a key file a policy rule names) could not be read or is not trusted.
    #[error("the keyring: {0}")]
    Key(#[from] KeyError),
    /// The keyring is empty and the policy refuses unsigned images, so nothing could pass.
    #[error(
        "no trusted keys or roots: add one with `haul trust key add NAME FILE` (keyring {dir})"
    )]
    EmptyKeyring {
        /// The keyring directory.
        dir: String,
    },
}

impl TrustError {
    /// The signature failures behind a refusal, for callers that branch on the reason; empty
    /// for every error but [`TrustError::Untrusted`].
    #[must_use]
    pub fn reasons(&self) -> Vec<&SignatureFailure> {
        match self {
            TrustError::Untrusted { refusals, .. } => refusals.iter().map(|r| &r.reason).collect(),
            _ => Vec::new(),
        }
    }
}

/// What a successful check found: the digest to pull and who signed it. `warning` is set when the
/// policy let an image without an accepted signature through (`unsigned: warn`).
#[derive(Debug)]
pub struct Verdict {
    /// The digest checked: pull exactly this, not the tag again.
    pub digest: Digest,
    /// Who signed it, among the signers the rule accepts; empty when the policy let an image
    /// without an accepted signature through.
    pub signers: Vec<Signer>,
    /// Why the image would have been refused, when the rule says `unsigned: warn`.
    pub warning: Option<TrustError>,
    /// The policy rule applied.
    pub rule: Rule,
}

/// Checks images against the keyring and the policy.
///
/// A [`crate::pull::Puller`] (and so [`crate::Haul`]) with content trust on builds one from the
/// configuration and calls it before every pull; build one yourself to check an image without
/// pulling it, or to give a puller another keyring, policy or clock
/// ([`crate::HaulBuilder::trust_verifier`]).
///
/// ```no_run
/// use std::sync::Arc;
///
/// use haul::registry::{Anonymous, ClientOptions, RegistryClient, RegistrySettings};
/// use haul::trust::{Keyring, TrustConfig, TrustVerifier};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = RegistryClient::new(
///     RegistrySettings::default(),
///     Arc::new(Anonymous),
///     ClientOptions::default(),
/// )?;
/// let verifier = TrustVerifier::new(client, Keyring::new("/etc/haul/trust"), TrustConfig::default());
/// let verdict = verifier.verify(&"registry.example.com/team/app:1.2".parse()?).await?;
/// println!("{} signed by {:?}", verdict.digest, verdict.signers);
/// # Ok(()) }
/// ```
pub struct TrustVerifier {
    client: RegistryClient,
    keyring: Keyring,
    config: TrustConfig,
    now: Option<u64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TrustVerifier {
    /// A verifier reading signatures through `client`, trusting what `keyring` holds, applying
    /// `config`'s policy. Certificates are judged at the current time.
    #[must_use]
    pub fn new(client: RegistryClient, keyring: Keyring, config: TrustConfig) -> TrustVerifier {
        TrustVerifier {
            client,
            keyring,
            config,
            now: None,
        }
    }

    /// Judges certificates at this time (seconds since the epoch) instead of now.
    #[must_use]
    pub fn at_time(mut self, secs: u64) -> TrustVerifier {
        self.now = Some(secs);
        self
    }

    /// The keyring this verifier trusts.
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The digest `reference` names: its digest, or what its tag resolves to now.
    ///
    /// # Errors
    ///
    /// [`TrustError::Resolve`] when the registry cannot resolve the tag.
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest, TrustError> {
        if let Some(d) = reference.digest() {
            return Ok(d.clone());
        }
        let resolve_err = |source| TrustError::Resolve {
            image: reference.familiar_string(),
            source: Box::new(source),
        };
        let repo = self.client.repository(reference);
        let tag = reference.tag_or_default();
        match repo.head_manifest(tag).await.map_err(resolve_err)? {
            Some(head) => Ok(head.digest),
            None => Ok(repo.get_manifest(tag).await.map_err(resolve_err)?.digest),
        }
    }

    /// Every trusted key and root: the keyring's, plus files a policy rule names.
    fn anchors(&self, rule: Option<&Rule>) -> Result<(Vec<NamedKey>, Vec<NamedRoot>), TrustError> {
        let mut keys = self.keyring.keys()?;
        let mut roots = self.keyring.roots()?;
        if let Some(rule) = rule {
            for spec in rule.keys.iter().filter(|s| s.contains('/')) {
                keys.push(self.keyring.key(spec)?);
            }
            for spec in rule.roots.iter().filter(|s| s.contains('/')) {
                roots.push(self.keyring.root(spec)?);
            }
            // A rule naming a keyring entry that does not exist is a configuration mistake,
            // not an unsigned image.
            for spec in rule.keys.iter().filter(|s| !s.contains('/')) {
                self.keyring.key(spec)?;
            }
            for spec in rule.roots.iter().filter(|s| !s.contains('/')) {
                self.keyring.root(spec)?;
            }
        }
        Ok((keys, roots))
    }

    /// Finds and checks every signature of `reference` (resolved to a digest) against all
    /// trusted keys and roots, without applying the policy.
    ///
    /// # Errors
    ///
    /// An image without signatures is not an error (the inspection is empty). Errors are a tag
    /// that cannot be resolved, a keyring that cannot be read, or a registry failing while
    /// signatures are looked for.
    pub async fn inspect(&self, reference: &Reference) -> Result<Inspection, TrustError> {
        let digest = self.resolve(reference).await?;
        let (keys, roots) = self.anchors(None)?;
        self.inspect_digest(reference, &digest, &keys, &roots).await
    }

    async fn inspect_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
        keys: &[NamedKey],
        roots: &[NamedRoot],
    ) -> Result<Inspection, TrustError> {
        let discovery_err = |source| TrustError::Discovery {
            image: reference.familiar_string(),
            digest: digest.clone(),
            source: Box::new(source),
        };
        let found = discovery::discover(&self.client, reference, digest)
            .await
            .map_err(discovery_err)?;
        let now = self.now.unwrap_or_else(now_secs);
        // The target's size, for Notation payloads that state it.
        let size = self
            .client
            .repository(reference)
            .head_manifest(&digest.to_string())
            .await
            .ok()
            .flatten()
            .and_then(|h| h.size)
            // A HEAD response has no body, and reqwest may report its length as 0; no manifest
            // is empty, so 0 means "unknown" and the digest alone binds the signature.
            .filter(|n| *n > 0);
        let mut signatures = Vec::new();
        for artifact in found {
            for layer in &artifact.manifest.layers {
                let kind = match layer.media_type.as_str() {
                    cosign::SIMPLESIGNING => SignatureKind::Cosign,
                    notation::JWS => SignatureKind::NotationJws,
                    notation::COSE => SignatureKind::NotationCose,
                    _ => SignatureKind::Unknown,
                };
                let result = match kind {
                    SignatureKind::Unknown => Err(SignatureFailure::Unsupported {
                        media_type: layer.media_type.clone(),
                    }),
                    _ => match discovery::fetch_blob(&self.client, reference, layer).await {
                        Err(e) if e.is_retryable() => return Err(discovery_err(e)),
                        Err(e) => Err(SignatureFailure::Unreadable {
                            detail: e.to_string(),
                        }),
                        Ok(blob) => match kind {
                            SignatureKind::Cosign => cosign::verify(
                                &blob,
                                &layer.annotations,
                                reference,
                                digest,
                                keys,
                                roots,
                                now,
                            ),
                            _ => {
                                notation::verify(&layer.media_type, &blob, digest, size, roots, now)
                            }
                        },
                    },
                };
                signatures.push(SignatureReport {
                    kind,
                    source: artifact.source,
                    manifest: artifact.digest.clone(),
                    result,
                });
            }
        }
        Ok(Inspection {
            reference: reference.clone(),
            digest: digest.clone(),
            signatures,
        })
    }

    /// Resolves `reference`, checks its signatures and applies the policy. `Ok` means the
    /// returned digest may be pulled; an error says why not.
    ///
    /// # Errors
    ///
    /// The image is refused ([`TrustError::NoSignature`], [`TrustError::Untrusted`],
    /// [`TrustError::MissingSigners`], or [`TrustError::EmptyKeyring`] when nothing could pass),
    /// or could not be judged (the tag not resolved, the keyring or a policy's key file
    /// unreadable, the registry failing during discovery).
    pub async fn verify(&self, reference: &Reference) -> Result<Verdict, TrustError> {
        let rule = self.config.rule_for(reference);
        let (keys, roots) = self.anchors(Some(&rule))?;
        let digest = self.resolve(reference).await?;
        if keys.is_empty() && roots.is_empty() && rule.unsigned == Unsigned::Refuse {
            return Err(TrustError::EmptyKeyring {
                dir: self.keyring.dir().display().to_string(),
            });
        }
        let inspection = self
            .inspect_digest(reference, &digest, &keys, &roots)
            .await?;
        let outcome = judge(&inspection, &rule, &keys);
        match outcome {
            Ok(signers) => Ok(Verdict {
                digest,
                signers,
                warning: None,
                rule,
            }),
            Err(error) => match rule.unsigned {
                Unsigned::Refuse => Err(error),
                Unsigned::Warn => Ok(Verdict {
                    digest,
                    signers: Vec::new(),
                    warning: Some(error),
                    rule,
                }),
                Unsigned::Allow => {
                    tracing::debug!(%error, "allowed by the trust policy");
                    Ok(Verdict {
                        digest,
                        signers: Vec::new(),
                        warning: None,
                        rule,
                    })
                }
            },
        }
    }
}

/// Whether `signer` is one `rule` accepts. Keys are compared by fingerprint, so a key file named
/// in the policy matches the same key in the keyring.
fn accepted(signer: &Signer, rule: &Rule, keys: &[NamedKey]) -> Option<String> {
    if rule.keys.is_empty() && rule.roots.is_empty() {
        return Some(String::new());
    }
    match signer {
        Signer::Key { fingerprint, .. } => rule
            .keys
            .iter()
            .find(|spec| {
                keys.iter()
                    .any(|k| &k.name == *spec && &k.key.fingerprint() == fingerprint)
            })
            .cloned(),
        Signer::Certificate { root, .. } => rule.roots.iter().find(|r| *r == root).cloned(),
    }
}

/// The accepted signers of an inspection under `rule`, or why there are not enough.
fn judge(
    inspection: &Inspection,
    rule: &Rule,
    keys: &[NamedKey],
) -> Result<Vec<Signer>, TrustError> {
    let image = inspection.reference.familiar_string();
    let digest = inspection.digest.clone();
    if inspection.signatures.is_empty() {
        return Err(TrustError::NoSignature { image, digest });
    }
    let mut signers = Vec::new();
    let mut satisfied = Vec::new();
    let mut refusals = Vec::new();
    for s in &inspection.signatures {
        match &s.result {
            Ok(signer) => match accepted(signer, rule, keys) {
                Some(spec) => {
                    if !signers.contains(signer) {
                        signers.push(signer.clone());
                    }
                    satisfied.push(spec);
                }
                None => refusals.push(Refusal {
                    kind: s.kind,
                    manifest: s.manifest.clone(),
                    reason: SignatureFailure::NotAccepted {
                        signer: signer.to_string(),
                    },
                }),
            },
            Err(reason) => refusals.push(Refusal {
                kind: s.kind,
                manifest: s.manifest.clone(),
                reason: reason.clone(),
            }),
        }
    }
    if signers.is_empty() {
        return Err(TrustError::Untrusted {
            image,
            digest,
            refusals,
        });
    }
    if rule.require == Require::All {
        let missing: Vec<&String> = rule
            .keys
            .iter()
            .chain(&rule.roots)
            .filter(|spec| !satisfied.contains(spec))
            .collect();
        if !missing.is_empty() {
            return Err(TrustError::MissingSigners {
                image,
                digest,
                missing: missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(signers)
}
