//! X.509 signing certificates: the chain from a signature's leaf certificate to one of the trusted
//! roots, checked with `rustls-webpki` (signatures, validity periods, basic constraints, name
//! constraints, and the code-signing extended key usage when the certificate lists any).
//!
//! The leaf's validity is checked first with our own clock reading so the failure can say
//! "expired on …" rather than a generic chain error. A self-signed leaf that is itself in the trust
//! store (what `notation cert generate-test` makes) is trusted as it is.

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use super::SignatureFailure;
use super::keys::{NamedRoot, PublicKey};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER-encoded without tag and length.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// What a verified leaf certificate tells about the signer.
#[derive(Debug, Clone)]
pub struct CertifiedSigner {
    /// The leaf's subject (`CN=…, O=…`).
    pub subject: String,
    /// Email addresses and URIs from the subject alternative names (keyless cosign identities).
    pub identities: Vec<String>,
    /// The name of the trusted root the chain ends at.
    pub root: String,
    pub key: PublicKey,
}

/// Checks that `chain` (leaf first, then intermediates) leads to one of `roots` at time `now`
/// (seconds since the epoch) and returns who it certifies.
pub fn verify_chain(
    chain: &[Vec<u8>],
    roots: &[NamedRoot],
    now: u64,
) -> Result<CertifiedSigner, SignatureFailure> {
    let Some(leaf_der) = chain.first() else {
        return Err(SignatureFailure::MalformedCertificate {
            detail: "no signing certificate".to_owned(),
        });
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).map_err(|e| {
        SignatureFailure::MalformedCertificate {
            detail: e.to_string(),
        }
    })?;
    for der in &chain[1..] {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            SignatureFailure::MalformedCertificate {
                detail: format!("intermediate certificate: {e}"),
            }
        })?;
    }
    let subject = leaf.subject().to_string();
    let validity = leaf.validity();
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if validity.not_after.timestamp() < now_i {
        return Err(SignatureFailure::CertificateExpired {
            subject,
            not_after: validity.not_after.to_string(),
        });
    }
    if validity.not_before.timestamp() > now_i {
        return Err(SignatureFailure::CertificateNotYetValid {
            subject,
            not_before: validity.not_before.to_string(),
        });
    }
    let key = PublicKey::from_spki_der(leaf.public_key().raw, "the signing certificate").map_err(
        |e| SignatureFailure::MalformedCertificate {
            detail: e.to_string(),
        },
    )?;
    let identities = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::RFC822Name(s) => Some(s.to_string()),
                    x509_parser::extensions::GeneralName::URI(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    // A root that is the leaf itself: nothing to chain, the trust store entry is the statement.
    if let Some(root) = roots.iter().find(|r| r.certs.iter().any(|c| c == leaf_der)) {
        return Ok(CertifiedSigner {
            subject,
            identities,
            root: root.name.clone(),
            key,
        });
    }

    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let end_entity = EndEntityCert::try_from(&leaf_cert).map_err(|e| {
        SignatureFailure::MalformedCertificate {
            detail: format!("{e:?}"),
        }
    })?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
    let mut last_error = None;
    for root in roots {
        let root_ders: Vec<CertificateDer<'_>> = root
            .certs
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let anchors: Vec<_> = root_ders
            .iter()
            .filter_map(|c| anchor_from_trusted_cert(c).ok())
            .collect();
        if anchors.is_empty() {
            continue;
        }
        match end_entity.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        ) {
            Ok(_) => {
                return Ok(CertifiedSigner {
                    subject,
                    identities,
                    root: root.name.clone(),
                    key,
                });
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(webpki::Error::CertExpired { .. }) => SignatureFailure::UntrustedCertificate {
            subject,
            detail: "a certificate of its chain has expired".to_owned(),
        },
        Some(e) => SignatureFailure::UntrustedCertificate {
            subject,
            detail: describe(&e),
        },
        None => SignatureFailure::UntrustedCertificate {
            subject,
            detail: "no trusted root is configured".to_owned(),
        },
    })
}

fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "it does not chain to a trusted root".to_owned(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "it is not valid for code signing".to_owned()
        }
        webpki::Error::CaUsedAsEndEntity => "the signing certificate is a CA".to_owned(),
        other => format!("{other:?}"),
    }
}
