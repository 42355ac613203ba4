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
    /// `anonymous`: no credentials were sent (there were none for this registry), so logging
    /// in may help; with credentials sent, they were refused.
    #[error("unauthorized: {message}")]
    Unauthorized {
        host: String,
        message: String,
        anonymous: bool,
    },
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
    /// A 503 (or other server error) that said when to come back.
    #[error("{url} answered {status}, asking to retry after {} s", .retry_after.as_secs())]
    Unavailable {
        url: String,
        status: u16,
        retry_after: Duration,
    },
    #[error(
        "{host} asked to retry after {} s, more than haul waits ({})",
        .requested.as_secs(),
        Seconds(*.limit)
    )]
    RetryAfterTooLong {
        host: String,
        requested: Duration,
        limit: Duration,
    },
    #[error("waited {} in all for retries, the most haul waits for one download: {source}", Seconds(*.waited))]
    WaitedTooLong {
        waited: Duration,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(
        "transfer from {host} too slow: {received} bytes in {}, less than the {minimum} bytes \
         haul requires per download-stall-timeout",
        Seconds(*.window)
    )]
    TooSlow {
        host: String,
        received: u64,
        minimum: u64,
        window: Duration,
    },
    #[error("{host} sent no response headers within {} (download-stall-timeout)", Seconds(*.after))]
    NoResponseHeaders { host: String, after: Duration },
    #[error("the tag list of {repository} {problem} (at {url})")]
    TagList {
        repository: String,
        url: String,
        problem: TagListProblem,
    },
    #[error(
        "{registry} asks for credentials to be sent to {realm} over plain HTTP; haul sends them \
         only over HTTPS, or to a host in insecure-registries when the registry is insecure too"
    )]
    InsecureRealm { registry: String, realm: String },
    #[error("not fetching the foreign layer URL {url}: {reason}")]
    ForeignUrlRefused {
        url: String,
        reason: ForeignUrlRefusal,
    },
}

/// What was wrong with a registry's tag list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagListProblem {
    /// A `Link` to a page already fetched (or a `last=` already seen).
    Loop,
    /// A `Link` to another host or outside the registry's API.
    LinkElsewhere,
    TooManyTags {
        limit: usize,
    },
    TooManyBytes {
        limit: usize,
    },
    TooManyPages {
        limit: usize,
    },
}

impl std::fmt::Display for TagListProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagListProblem::Loop => f.write_str("links back to a page already listed"),
            TagListProblem::LinkElsewhere => {
                f.write_str("links to a page on another host or outside the registry API")
            }
            TagListProblem::TooManyTags { limit } => write!(f, "has more than {limit} tags"),
            TagListProblem::TooManyBytes { limit } => {
                write!(f, "is larger than {} MiB", limit >> 20)
            }
            TagListProblem::TooManyPages { limit } => write!(f, "has more than {limit} pages"),
        }
    }
}

/// Why a foreign layer URL was not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignUrlRefusal {
    /// Only `http` and `https`.
    Scheme,
    /// The address (literal or resolved) is not on the public internet.
    Address(std::net::IpAddr),
}

impl std::fmt::Display for ForeignUrlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForeignUrlRefusal::Scheme => f.write_str("only http and https URLs are fetched"),
            ForeignUrlRefusal::Address(ip) => write!(
                f,
                "{ip} is a loopback, private, link-local or otherwise non-public address \
                 (foreign-layer-allowed-networks can allow it)"
            ),
        }
    }
}

/// A duration as people read it: `60 s`, `0.5 s`.
pub(crate) struct Seconds(pub Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{} s", d.as_secs())
        } else {
            write!(f, "{} s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
        }
    }
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
            | RegistryError::TooManyRequests { .. }
            | RegistryError::Unavailable { .. }
            | RegistryError::TooSlow { .. }
            | RegistryError::NoResponseHeaders { .. } => true,
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
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RegistryError::Connect { .. }
                | RegistryError::Tls { .. }
                | RegistryError::NoResponseHeaders { .. }
        )
    }

    /// How long the registry asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::TooManyRequests { retry_after, .. } => *retry_after,
            RegistryError::Unavailable { retry_after, .. } => Some(*retry_after),
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
    // A service that says when it will be back is believed, within the limits of `RetryWaits`.
    if status == 503
        && let Some(retry_after) = retry_after
    {
        return RegistryError::Unavailable {
            url: url.to_owned(),
            status,
            retry_after,
        };
    }
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
        // Whether credentials were sent is the caller's to say (see `RegistryClient`).
        (Some("UNAUTHORIZED"), _) | (None, 401) => RegistryError::Unauthorized {
            host: host.to_owned(),
            message: msg("authentication required"),
            anonymous: false,
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

/// Whether `e` is rustls's error, itself or wrapped in `io::Error`s (hyper wraps it twice).
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        current = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
    }
    false
}

/// Classifies a transport failure by walking its source chain, so the user learns whether it was
/// DNS/connect, TLS or the transfer itself.
pub(crate) fn from_reqwest(host: &str, err: &reqwest::Error) -> RegistryError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    let mut tls = false;
    while let Some(s) = source {
        let text = s.to_string();
        // A plain-HTTP server answering our TLS hello (rustls: "received corrupt message of type
        // InvalidContentType") or a certificate refused is a TLS failure, not worth retrying and
        // with a hint of its own, not an unreachable host. hyper hands rustls's error over inside
        // an io::Error, whose `source()` skips it: look inside.
        if is_tls_error(s) {
            tls = true;
        }
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        source = s.source();
    }
    // A proxy's URL (with its credentials) can appear in connect errors.
    let detail = super::settings::redact_userinfo(&strip_url(&detail));
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
