//! cosign's "simple signing" signatures: each layer of a signature manifest is a JSON payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) whose signature, over the payload's exact
//! bytes, is in the layer annotation `dev.cosignproject.cosign/signature` (base64). A
//! certificate-based signature carries its leaf in `dev.sigstore.cosign/certificate` and the rest
//! of the chain in `dev.sigstore.cosign/chain` (PEM).
//!
//! The signature is checked first (by a trusted key, or by a certificate chaining to a trusted
//! root), then the payload's claims: `critical.image.docker-manifest-digest` must be the image's
//! digest and `critical.identity.docker-reference` its repository.

use serde::Deserialize;

use super::certs;
use super::keys::{self, NamedKey, NamedRoot};
use super::{SignatureFailure, Signer};
use crate::digest::Digest;
use crate::reference::Reference;

pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The payload cosign signs for `digest` of `reference`'s repository.
pub fn payload(reference: &Reference, digest: &Digest) -> Vec<u8> {
    let value = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference.name()},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    // Serialising a `Value` of strings cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Verifies one simple-signing layer: `payload` is its blob, `annotations` its descriptor's.
pub fn verify(
    payload: &[u8],
    annotations: &std::collections::BTreeMap<String, String>,
    reference: &Reference,
    digest: &Digest,
    keys: &[NamedKey],
    roots: &[NamedRoot],
    now: u64,
) -> Result<Signer, SignatureFailure> {
    let signature = annotations
        .get(SIGNATURE_ANNOTATION)
        .and_then(|s| keys::b64_decode(s))
        .ok_or_else(|| SignatureFailure::Malformed {
            detail: format!("no base64 `{SIGNATURE_ANNOTATION}` annotation"),
        })?;

    let signer = if let Some(k) = keys
        .iter()
        .find(|k| k.key.verify_cosign(payload, &signature))
    {
        Signer::Key {
            name: k.name.clone(),
            kind: k.key.kind().to_string(),
            fingerprint: k.key.fingerprint(),
        }
    } else if let Some(cert) = annotations.get(CERTIFICATE_ANNOTATION) {
        let mut chain = keys::certificates_from_pem(cert.as_bytes(), "the signing certificate")
            .map_err(|e| SignatureFailure::MalformedCertificate {
                detail: e.to_string(),
            })?;
        chain.truncate(1);
        if let Some(rest) = annotations.get(CHAIN_ANNOTATION) {
            chain.extend(
                keys::certificates_from_pem(rest.as_bytes(), "the certificate chain").map_err(
                    |e| SignatureFailure::MalformedCertificate {
                        detail: e.to_string(),
                    },
                )?,
            );
        }
        let certified = certs::verify_chain(&chain, roots, now)?;
        if !certified.key.verify_cosign(payload, &signature) {
            return Err(SignatureFailure::BadSignature);
        }
        Signer::Certificate {
            subject: certified.subject,
            identities: certified.identities,
            root: certified.root,
        }
    } else {
        return Err(SignatureFailure::UntrustedKey);
    };

    let parsed: Payload =
        serde_json::from_slice(payload).map_err(|e| SignatureFailure::Malformed {
            detail: format!("payload: {e}"),
        })?;
    if parsed.critical.kind != PAYLOAD_TYPE {
        return Err(SignatureFailure::Malformed {
            detail: format!("payload type {:?}", parsed.critical.kind),
        });
    }
    if parsed.critical.image.docker_manifest_digest != digest.to_string() {
        return Err(SignatureFailure::DigestMismatch {
            signed: parsed.critical.image.docker_manifest_digest,
        });
    }
    if !same_repository(&parsed.critical.identity.docker_reference, reference) {
        return Err(SignatureFailure::WrongIdentity {
            signed: parsed.critical.identity.docker_reference,
        });
    }
    Ok(signer)
}

/// Whether cosign's `docker-reference` (`index.docker.io/library/alpine`, `ghcr.io/o/r`, maybe
/// with a tag) names `reference`'s repository.
fn same_repository(signed: &str, reference: &Reference) -> bool {
    let Ok(parsed) = signed.parse::<Reference>() else {
        return false;
    };
    parsed.registry() == reference.registry() && parsed.repository() == reference.repository()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_identity() {
        let r: Reference = "alpine:3".parse().unwrap();
        assert!(same_repository("index.docker.io/library/alpine", &r));
        assert!(same_repository("docker.io/library/alpine:latest", &r));
        assert!(!same_repository("docker.io/library/busybox", &r));
        assert!(!same_repository("not a reference", &r));
        let r: Reference = "127.0.0.1:5000/team/app:1".parse().unwrap();
        assert!(same_repository("127.0.0.1:5000/team/app", &r));
        assert!(!same_repository("127.0.0.1:5001/team/app", &r));
    }

    #[test]
    fn payload_names_digest_and_repository() {
        let r: Reference = "127.0.0.1:5000/team/app:1".parse().unwrap();
        let d = Digest::sha256_of(b"x");
        let p: serde_json::Value = serde_json::from_slice(&payload(&r, &d)).unwrap();
        assert_eq!(
            p["critical"]["image"]["docker-manifest-digest"],
            d.to_string()
        );
        assert_eq!(
            p["critical"]["identity"]["docker-reference"],
            "127.0.0.1:5000/team/app"
        );
        assert_eq!(p["critical"]["type"], PAYLOAD_TYPE);
    }
}
