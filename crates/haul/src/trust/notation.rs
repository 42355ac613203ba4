//! Notation (Notary Project) signatures: an artifact of type `application/vnd.cncf.notary.signature`
//! whose single layer is a JWS (`application/jose+json`) or COSE (`application/cose`) envelope.
//!
//! Both envelopes sign a payload `{"targetArtifact": {mediaType, digest, size}}` with the key of
//! an X.509 leaf certificate carried in the envelope (`x5c` / `x5chain`, leaf first). A signature
//! is valid when the chain leads to a trusted root, the envelope's signature verifies with the
//! leaf's key, its critical headers are all understood, it has not expired, and the target's
//! digest is the image's. Only the `notary.x509` signing scheme is accepted: the
//! `notary.x509.signingAuthority` scheme needs a timestamp authority we cannot check offline.

use base64::Engine;
use coset::{CborSerializable, Label, TaggedCborSerializable, iana};
use serde::Deserialize;

use super::certs;
use super::keys::{NamedRoot, SignatureScheme};
use super::{SignatureFailure, Signer};
use crate::digest::Digest;

pub const JWS: &str = "application/jose+json";
pub const COSE: &str = "application/cose";
pub const PAYLOAD_CONTENT_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SIGNING_SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const EXPIRY: &str = "io.cncf.notary.expiry";
const AUTHENTIC_SIGNING_TIME: &str = "io.cncf.notary.authenticSigningTime";
const VERIFICATION_PLUGIN: &str = "io.cncf.notary.verificationPlugin";
const VERIFICATION_PLUGIN_MIN: &str = "io.cncf.notary.verificationPluginMinVersion";
const SCHEME_X509: &str = "notary.x509";

/// Critical headers a verifier must understand or refuse; plugins are out of scope, so a signature
/// that asks for one is refused.
const UNDERSTOOD_CRITICAL: &[&str] = &[SIGNING_SCHEME, EXPIRY, AUTHENTIC_SIGNING_TIME];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    target_artifact: Target,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    digest: String,
    #[serde(default)]
    size: Option<u64>,
}

fn malformed(detail: impl Into<String>) -> SignatureFailure {
    SignatureFailure::Malformed {
        detail: detail.into(),
    }
}

/// Verifies a Notation envelope (`media_type` is the layer's) for `digest`.
pub fn verify(
    media_type: &str,
    envelope: &[u8],
    digest: &Digest,
    size: Option<u64>,
    roots: &[NamedRoot],
    now: u64,
) -> Result<Signer, SignatureFailure> {
    let checked = match media_type {
        JWS => open_jws(envelope)?,
        COSE => open_cose(envelope)?,
        other => {
            return Err(SignatureFailure::Unsupported {
                media_type: other.to_owned(),
            });
        }
    };
    if let Some(expiry) = checked.expiry
        && expiry < i64::try_from(now).unwrap_or(i64::MAX)
    {
        return Err(SignatureFailure::SignatureExpired {
            at: jiff::Timestamp::from_second(expiry)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| expiry.to_string()),
        });
    }
    let certified = certs::verify_chain(&checked.chain, roots, now)?;
    if !certified
        .key
        .verify(checked.scheme, &checked.signed, &checked.signature)
    {
        return Err(SignatureFailure::BadSignature);
    }
    let payload: Payload =
        serde_json::from_slice(&checked.payload).map_err(|e| malformed(format!("payload: {e}")))?;
    if payload.target_artifact.digest != digest.to_string() {
        return Err(SignatureFailure::DigestMismatch {
            signed: payload.target_artifact.digest,
        });
    }
    if let (Some(signed), Some(actual)) = (payload.target_artifact.size, size)
        && signed != actual
    {
        return Err(SignatureFailure::DigestMismatch {
            signed: format!("{} with size {signed}", payload.target_artifact.digest),
        });
    }
    Ok(Signer::Certificate {
        subject: certified.subject,
        identities: certified.identities,
        root: certified.root,
    })
}

/// What an envelope holds once its structure and headers are checked, before any crypto.
struct Opened {
    scheme: SignatureScheme,
    /// The exact bytes the signature is over.
    signed: Vec<u8>,
    signature: Vec<u8>,
    payload: Vec<u8>,
    chain: Vec<Vec<u8>>,
    expiry: Option<i64>,
}

fn check_critical<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), SignatureFailure> {
    let mut has_scheme = false;
    for name in names {
        if name == VERIFICATION_PLUGIN || name == VERIFICATION_PLUGIN_MIN {
            return Err(SignatureFailure::Unsupported {
                media_type: format!("signature requiring a verification plugin ({name})"),
            });
        }
        if !UNDERSTOOD_CRITICAL.contains(&name) {
            return Err(malformed(format!("unknown critical header {name:?}")));
        }
        has_scheme |= name == SIGNING_SCHEME;
    }
    if !has_scheme {
        return Err(malformed(format!(
            "{SIGNING_SCHEME} is not marked critical"
        )));
    }
    Ok(())
}

fn check_scheme(scheme: Option<&str>) -> Result<(), SignatureFailure> {
    match scheme {
        Some(SCHEME_X509) => Ok(()),
        Some(other) => Err(SignatureFailure::Unsupported {
            media_type: format!("signing scheme {other}"),
        }),
        None => Err(malformed(format!("no {SIGNING_SCHEME} header"))),
    }
}

#[derive(Deserialize)]
struct JwsEnvelope {
    payload: String,
    protected: String,
    #[serde(default)]
    header: JwsUnprotected,
    signature: String,
}

#[derive(Deserialize, Default)]
struct JwsUnprotected {
    #[serde(default)]
    x5c: Vec<String>,
}

#[derive(Deserialize)]
struct JwsProtected {
    alg: String,
    #[serde(default)]
    crit: Vec<String>,
    #[serde(default)]
    cty: Option<String>,
    #[serde(rename = "io.cncf.notary.signingScheme", default)]
    scheme: Option<String>,
    #[serde(rename = "io.cncf.notary.expiry", default)]
    expiry: Option<String>,
    #[serde(rename = "io.cncf.notary.signingTime", default)]
    signing_time: Option<String>,
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, SignatureFailure> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| malformed(format!("{what}: {e}")))
}

fn open_jws(envelope: &[u8]) -> Result<Opened, SignatureFailure> {
    let env: JwsEnvelope =
        serde_json::from_slice(envelope).map_err(|e| malformed(format!("JWS envelope: {e}")))?;
    let protected_bytes = b64url(&env.protected, "JWS protected header")?;
    let protected: JwsProtected = serde_json::from_slice(&protected_bytes)
        .map_err(|e| malformed(format!("JWS protected header: {e}")))?;
    let scheme = match protected.alg.as_str() {
        "ES256" => SignatureScheme::EcdsaFixedSha256,
        "ES384" => SignatureScheme::EcdsaFixedSha384,
        "ES512" => SignatureScheme::EcdsaFixedSha512,
        "PS256" => SignatureScheme::RsaPssSha256,
        "PS384" => SignatureScheme::RsaPssSha384,
        "PS512" => SignatureScheme::RsaPssSha512,
        other => {
            return Err(SignatureFailure::Unsupported {
                media_type: format!("JWS algorithm {other}"),
            });
        }
    };
    if protected.cty.as_deref() != Some(PAYLOAD_CONTENT_TYPE) {
        return Err(malformed(format!(
            "content type {:?} is not {PAYLOAD_CONTENT_TYPE}",
            protected.cty
        )));
    }
    check_critical(protected.crit.iter().map(String::as_str))?;
    check_scheme(protected.scheme.as_deref())?;
    if protected.signing_time.is_none() {
        return Err(malformed(format!("no {SIGNING_TIME} header")));
    }
    let expiry = match &protected.expiry {
        Some(s) => Some(
            s.parse::<jiff::Timestamp>()
                .map_err(|e| malformed(format!("{EXPIRY}: {e}")))?
                .as_second(),
        ),
        None => None,
    };
    let chain = env
        .header
        .x5c
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c)
                .map_err(|e| SignatureFailure::MalformedCertificate {
                    detail: format!("x5c: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Opened {
        scheme,
        signed: format!("{}.{}", env.protected, env.payload).into_bytes(),
        signature: b64url(&env.signature, "JWS signature")?,
        payload: b64url(&env.payload, "JWS payload")?,
        chain,
        expiry,
    })
}

fn text_label(label: &Label) -> Option<&str> {
    match label {
        Label::Text(t) => Some(t),
        Label::Int(_) => None,
    }
}

fn open_cose(envelope: &[u8]) -> Result<Opened, SignatureFailure> {
    let sign1 = coset::CoseSign1::from_tagged_slice(envelope)
        .or_else(|_| coset::CoseSign1::from_slice(envelope))
        .map_err(|e| malformed(format!("COSE_Sign1: {e:?}")))?;
    let header = &sign1.protected.header;
    let scheme = match &header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)) => {
            SignatureScheme::EcdsaFixedSha256
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384)) => {
            SignatureScheme::EcdsaFixedSha384
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES512)) => {
            SignatureScheme::EcdsaFixedSha512
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS256)) => {
            SignatureScheme::RsaPssSha256
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS384)) => {
            SignatureScheme::RsaPssSha384
        }
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS512)) => {
            SignatureScheme::RsaPssSha512
        }
        other => {
            return Err(SignatureFailure::Unsupported {
                media_type: format!("COSE algorithm {other:?}"),
            });
        }
    };
    match &header.content_type {
        Some(coset::ContentType::Text(t)) if t == PAYLOAD_CONTENT_TYPE => {}
        other => {
            return Err(malformed(format!(
                "content type {other:?} is not {PAYLOAD_CONTENT_TYPE}"
            )));
        }
    }
    let mut crit = Vec::new();
    for c in &header.crit {
        // Integer labels are registered COSE parameters (e.g. alg), which we do process.
        if let coset::RegisteredLabelWithPrivate::Text(t) = c {
            crit.push(t.as_str());
        }
    }
    check_critical(crit.into_iter())?;
    let value_of = |name: &str| {
        header
            .rest
            .iter()
            .find(|(l, _)| text_label(l) == Some(name))
            .map(|(_, v)| v)
    };
    check_scheme(value_of(SIGNING_SCHEME).and_then(|v| v.as_text()))?;
    if value_of(SIGNING_TIME).is_none() {
        return Err(malformed(format!("no {SIGNING_TIME} header")));
    }
    let expiry = match value_of(EXPIRY) {
        Some(v) => Some(cose_time(v).ok_or_else(|| malformed(format!("{EXPIRY} is not a time")))?),
        None => None,
    };
    let chain_value = sign1
        .unprotected
        .rest
        .iter()
        .find(|(l, _)| *l == Label::Int(iana::HeaderParameter::X5Chain as i64))
        .map(|(_, v)| v);
    let chain = match chain_value {
        Some(coset::cbor::Value::Bytes(b)) => vec![b.clone()],
        Some(coset::cbor::Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                coset::cbor::Value::Bytes(b) => Ok(b.clone()),
                _ => Err(SignatureFailure::MalformedCertificate {
                    detail: "x5chain entry is not a byte string".to_owned(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let payload = sign1
        .payload
        .clone()
        .ok_or_else(|| malformed("detached COSE payload"))?;
    Ok(Opened {
        scheme,
        signed: sign1.tbs_data(b""),
        signature: sign1.signature.clone(),
        payload,
        chain,
        expiry,
    })
}

/// A COSE time: an integer or a tag-1 epoch time.
fn cose_time(v: &coset::cbor::Value) -> Option<i64> {
    match v {
        coset::cbor::Value::Tag(1, inner) => cose_time(inner),
        coset::cbor::Value::Integer(i) => i64::try_from(*i).ok(),
        _ => None,
    }
}
