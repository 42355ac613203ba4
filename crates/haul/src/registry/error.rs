//! Registry errors: what the registry said (its error code, mapped to a variant a caller can branch
//! on) or why we could not talk to it. URLs in these errors never carry credentials: transport
//! messages have request URLs removed and any `user:password@` (a proxy's) masked.

use std::time::Duration;

use serde::Deserialize;

use super::challenge::ChallengeError;
use super::credentials::CredentialError;
use crate::digest::{Digest, VerifyError};
use crate::manifest::ManifestError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest unknown: {message}")]
    ManifestUnknown { message: String },
    #[error("name unknown: {message}")]
    NameUnknown { message: String },
    #[error("blob unknown: {digest}")]
    BlobUnknown { digest: String },
    #[error("unauthorized: {message}")]
    Unauthorized { host: String, message: String },
    #[error("denied: {message}")]
    Denied { host: String, message: String },
    #[error("toomanyrequests: {message}")]
    TooManyRequests {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{url} answered {status}{}", code_suffix(.code, .message))]
    Status {
        url: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("cannot connect to {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("TLS failure talking to {host}: {detail}")]
    Tls { host: String, detail: String },
    #[error("request to {host} failed: {detail}")]
    Transport { host: String, detail: String },
    #[error("the response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: {source}")]
    Manifest {
        url: String,
        #[source]
        source: ManifestError,
    },
    #[error("content from {url} failed verification: {source}")]
    Verify {
        url: String,
        #[source]
        source: VerifyError,
    },
    #[error("the registry answered for {expected} with content whose digest is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("token endpoint {realm}: {detail}")]
    Token { realm: String, detail: String },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error("invalid URL {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
}

fn code_suffix(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(": {}: {m}", c.to_lowercase()),
        (Some(c), None) => format!(": {}", c.to_lowercase()),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

impl RegistryError {
    /// Whether trying the same request again may succeed (network trouble, 5xx, rate limits).
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Connect { .. }
            | RegistryError::Transport { .. }
            | RegistryError::TooManyRequests { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 408,
            RegistryError::Verify { source, .. } => {
                matches!(source, VerifyError::TooShort { .. })
            }
            _ => false,
        }
    }

    /// Whether the endpoint could not be reached at all (refused, unresolvable, timed out before
    /// answering, TLS failure): a mirror failing this way is not asked again by the same
    /// repository handle, while one that answered (even with an error) still may be.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RegistryError::Connect { .. } | RegistryError::Tls { .. }
        )
    }

    /// How long the registry asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::TooManyRequests { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The registry's error body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Debug, Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Maps an error status and body to the variant a caller can act on.
pub(crate) fn from_response(
    url: &str,
    host: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> RegistryError {
    let entry = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    let (code, message) = match entry {
        Some(e) => (Some(e.code), Some(e.message)),
        None => (None, None),
    };
    let msg = |default: &str| {
        message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    match (code.as_deref(), status) {
        (Some("MANIFEST_UNKNOWN"), _) => RegistryError::ManifestUnknown {
            message: msg("manifest unknown"),
        },
        (Some("NAME_UNKNOWN"), _) => RegistryError::NameUnknown {
            message: msg("repository name not known to registry"),
        },
        (Some("BLOB_UNKNOWN"), _) => RegistryError::BlobUnknown {
            digest: msg("blob unknown"),
        },
        (Some("DENIED"), _) | (None, 403) => RegistryError::Denied {
            host: host.to_owned(),
            message: msg("requested access to the resource is denied"),
        },
        (Some("UNAUTHORIZED"), _) | (None, 401) => RegistryError::Unauthorized {
            host: host.to_owned(),
            message: msg("authentication required"),
        },
        (Some("TOOMANYREQUESTS"), _) | (_, 429) => RegistryError::TooManyRequests {
            message: msg("too many requests"),
            retry_after,
        },
        _ => RegistryError::Status {
            url: url.to_owned(),
            status,
            code,
            message,
        },
    }
}

/// Classifies a transport failure by walking its source chain, so the user learns whether it was
/// DNS/connect, TLS or the transfer itself.
pub(crate) fn from_reqwest(host: &str, err: &reqwest::Error) -> RegistryError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    let mut tls = false;
    while let Some(s) = source {
        let text = s.to_string();
        // A plain-HTTP server answering our TLS hello reaches us as a connect error whose text
        // is rustls's "received corrupt message of type InvalidContentType": a TLS failure (not
        // worth retrying, and the hint says what to do), not an unreachable host.
        if s.downcast_ref::<rustls::Error>().is_some()
            || text.contains("received corrupt message")
            || text.contains("certificate")
            || text.contains("tls")
        {
            tls = true;
        }
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        source = s.source();
    }
    // A proxy's URL (with its credentials) can appear in connect errors.
    let detail = crate::config::redact_userinfo(&strip_url(&detail));
    if tls {
        RegistryError::Tls {
            host: host.to_owned(),
            detail,
        }
    } else if err.is_connect() || err.is_timeout() && !err.is_body() {
        RegistryError::Connect {
            host: host.to_owned(),
            detail,
        }
    } else {
        RegistryError::Transport {
            host: host.to_owned(),
            detail,
        }
    }
}

/// reqwest puts the URL into its messages; the host is already named, and a URL could carry a
/// signed query string from a blob-storage redirect.
fn strip_url(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(start) = rest.find(" for url (") {
        out.push_str(&rest[..start]);
        match rest[start..].find(')') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_registry_codes() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        let e = from_response("u", "h", 404, body, None);
        assert_eq!(e.to_string(), "manifest unknown: manifest unknown");
        let e = from_response("u", "h", 404, br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#, None);
        assert!(matches!(e, RegistryError::NameUnknown { .. }));
        let e = from_response("u", "h", 401, b"", None);
        assert_eq!(e.to_string(), "unauthorized: authentication required");
        let e = from_response("u", "h", 403, b"", None);
        assert!(matches!(e, RegistryError::Denied { .. }));
        let e = from_response("u", "h", 429, b"", Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_retryable());
        let e = from_response("http://r/v2/", "h", 503, b"busy", None);
        assert_eq!(e.to_string(), "http://r/v2/ answered 503");
        assert!(e.is_retryable());
        let e = from_response(
            "u",
            "h",
            400,
            br#"{"errors":[{"code":"MANIFEST_INVALID","message":"bad"}]}"#,
            None,
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().ends_with(": manifest_invalid: bad"), "{e}");
    }

    #[test]
    fn unreachable_is_connect_or_tls_only() {
        let connect = RegistryError::Connect {
            host: "h".into(),
            detail: "refused".into(),
        };
        assert!(connect.is_unreachable());
        let tls = RegistryError::Tls {
            host: "h".into(),
            detail: "bad cert".into(),
        };
        assert!(tls.is_unreachable());
        assert!(!from_response("u", "h", 503, b"", None).is_unreachable());
        assert!(!from_response("u", "h", 404, b"", None).is_unreachable());
    }

    #[test]
    fn strips_urls_from_transport_messages() {
        assert_eq!(
            strip_url("error sending request for url (https://s3/x?X-Amz-Signature=abc): boom"),
            "error sending request: boom"
        );
    }
}
