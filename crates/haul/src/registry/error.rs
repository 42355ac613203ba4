//! Registry errors: what the registry said (its error code, mapped to a variant a caller can branch
//! on) or why we could not talk to it. URLs in these errors never carry credentials: transport
//! messages have request URLs removed and any `user:password@` (a proxy's) masked.

use std::time::Duration;

use serde::Deserialize;

use super::challenge::ChallengeError;
use super::credentials::CredentialError;
use crate::digest::{Digest, VerifyError};
use crate::manifest::ManifestError;

/// What went wrong talking to a registry: what it answered (its error code, mapped to the variant
/// a caller can branch on) or why it could not be reached.
///
/// `message` fields are the registry's own words (its error body), `detail` fields haul's
/// description of a transport failure; both are for people, not for matching. `host` is the
/// `host[:port]` contacted, `url` a request URL without credentials.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such tag or digest in the repository (`MANIFEST_UNKNOWN`).
    #[error("manifest unknown: {message}")]
    ManifestUnknown {
        /// The registry's message.
        message: String,
    },
    /// The registry has no such repository (`NAME_UNKNOWN`).
    #[error("name unknown: {message}")]
    NameUnknown {
        /// The registry's message.
        message: String,
    },
    /// The registry has no such blob (`BLOB_UNKNOWN`).
    #[error("blob unknown: {digest}")]
    BlobUnknown {
        /// The registry's message, usually naming the digest.
        digest: String,
    },
    /// The registry wants credentials (`UNAUTHORIZED`, a 401 after the token dance).
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The registry that refused.
        host: String,
        /// The registry's message.
        message: String,
        /// No credentials were sent (there were none for this registry), so logging in may
        /// help; `false`: credentials were sent and refused.
        anonymous: bool,
    },
    /// The registry refused access with the credentials given (`DENIED`, or a 403).
    #[error("denied: {message}")]
    Denied {
        /// The registry that refused.
        host: String,
        /// The registry's message.
        message: String,
    },
    /// Rate limited (`TOOMANYREQUESTS`, or a 429); retried within the configured limits before
    /// it is returned.
    #[error("toomanyrequests: {message}")]
    TooManyRequests {
        /// The registry's message.
        message: String,
        /// The registry's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Any other status haul cannot use.
    #[error("{url} answered {status}{}", code_suffix(.code, .message))]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's error code (`MANIFEST_INVALID`…), when its body had one.
        code: Option<String>,
        /// The registry's message, when its body had one.
        message: Option<String>,
    },
    /// The host could not be reached: name resolution, connection or a timeout before any
    /// answer.
    #[error("cannot connect to {host}: {detail}")]
    Connect {
        /// The host contacted.
        host: String,
        /// What failed.
        detail: String,
    },
    /// The registry's name does not exist (the resolver answered so, not a temporary failure).
    /// Never retried: docker's `dial tcp: lookup HOST: no such host`.
    #[error("dial tcp: lookup {name}: no such host")]
    NoSuchHost {
        /// The host contacted (`name[:port]`).
        host: String,
        /// The name looked up.
        name: String,
    },
    /// Nothing listens at the registry's address. Retried, except on loopback: a local port
    /// nothing listens on does not start listening between two attempts.
    #[error("cannot connect to {host}: connection refused")]
    ConnectionRefused {
        /// The host contacted.
        host: String,
    },
    /// The proxy the request went through failed: it could not be reached, or refused to
    /// connect to the registry. `proxy` is its URL without credentials.
    #[error("proxyconnect: the proxy {proxy} failed for {host}: {detail}")]
    Proxy {
        /// The proxy's URL, credentials masked.
        proxy: String,
        /// The registry the request was for.
        host: String,
        /// What failed.
        detail: String,
        /// Whether trying again may help (not for a loopback proxy refusing connections, or a
        /// proxy name that does not exist).
        retryable: bool,
    },
    /// The registry's certs directory (docker's `certs.d`) could not be used.
    #[error("the certificates for {host}: {source}")]
    Certificates {
        /// The registry.
        host: String,
        /// What is wrong with its directory.
        #[source]
        source: super::certs::CertsDirError,
    },
    /// TLS failed: a certificate that does not verify, or a server that does not speak TLS.
    /// Never retried.
    #[error("TLS failure talking to {host}: {detail}")]
    Tls {
        /// The host contacted.
        host: String,
        /// What failed.
        detail: String,
    },
    /// The request or the response body failed in transfer.
    #[error("request to {host} failed: {detail}")]
    Transport {
        /// The host contacted.
        host: String,
        /// What failed.
        detail: String,
    },
    /// A response (a manifest, a token, a tag list page, an error body) was larger than haul
    /// reads.
    #[error("the response from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The request's URL.
        url: String,
        /// The most haul reads, in bytes.
        limit: usize,
    },
    /// A manifest the registry served is not one haul can use.
    #[error("{url}: {source}")]
    Manifest {
        /// Where the manifest came from.
        url: String,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// Content the registry served failed verification against its digest or size.
    #[error("content from {url} failed verification: {source}")]
    Verify {
        /// Where the content came from.
        url: String,
        /// What did not match.
        #[source]
        source: VerifyError,
    },
    /// The registry answered a request by digest with other content.
    #[error("the registry answered for {expected} with content whose digest is {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what was served.
        actual: Digest,
    },
    /// The token endpoint refused or failed.
    #[error("token endpoint {realm}: {detail}")]
    Token {
        /// The token endpoint's URL.
        realm: String,
        /// What it answered.
        detail: String,
    },
    /// The credentials could not be read (docker's `config.json`, a credential helper).
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The token endpoint's answer could not be read.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// A URL (a proxy, a mirror, a `Location`, a token realm) is not valid.
    #[error("invalid URL {url:?}: {detail}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it is not valid.
        detail: String,
    },
    /// A 503 (or other server error) that said when to come back.
    #[error("{url} answered {status}, asking to retry after {} s", .retry_after.as_secs())]
    Unavailable {
        /// The request's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's `Retry-After`.
        retry_after: Duration,
    },
    /// The registry asked to wait longer than `max-retry-after`: the request fails at once.
    #[error(
        "{host} asked to retry after {} s, more than haul waits ({})",
        .requested.as_secs(),
        Seconds(*.limit)
    )]
    RetryAfterTooLong {
        /// The registry that asked.
        host: String,
        /// The wait it asked for.
        requested: Duration,
        /// `max-retry-after`.
        limit: Duration,
    },
    /// The retries of one request would wait longer in all than haul allows (five times
    /// `max-retry-after`); `source` is the last failure.
    #[error("waited {} in all for retries, the most haul waits for one download: {source}", Seconds(*.waited))]
    WaitedTooLong {
        /// Time spent waiting between attempts so far.
        waited: Duration,
        /// The failure that would have been retried.
        #[source]
        source: Box<RegistryError>,
    },
    /// A transfer went below the minimum rate: fewer than `minimum` bytes in a
    /// `download-stall-timeout` window.
    #[error(
        "transfer from {host} too slow: {received} bytes in {}, less than the {minimum} bytes \
         haul requires per download-stall-timeout",
        Seconds(*.window)
    )]
    TooSlow {
        /// The host sending.
        host: String,
        /// Bytes received in the window.
        received: u64,
        /// Bytes required per window.
        minimum: u64,
        /// The window (`download-stall-timeout`).
        window: Duration,
    },
    /// The registry sent no response headers within `download-stall-timeout`.
    #[error("{host} sent no response headers within {} (download-stall-timeout)", Seconds(*.after))]
    NoResponseHeaders {
        /// The host contacted.
        host: String,
        /// How long haul waited.
        after: Duration,
    },
    /// The repository's tag list is hostile or too large to use.
    #[error("the tag list of {repository} {problem} (at {url})")]
    TagList {
        /// The repository.
        repository: String,
        /// The page where the problem showed.
        url: String,
        /// What is wrong.
        problem: TagListProblem,
    },
    /// The registry asked for credentials to go to a token endpoint over plain HTTP, which haul
    /// refuses (see [`RegistryClient`](super::RegistryClient)).
    #[error(
        "{registry} asks for credentials to be sent to {realm} over plain HTTP; haul sends them \
         only over HTTPS, or to a host in insecure-registries when the registry is insecure too"
    )]
    InsecureRealm {
        /// The registry that asked.
        registry: String,
        /// The token endpoint it named.
        realm: String,
    },
    /// A foreign layer's URL leads where haul does not fetch from.
    #[error("not fetching the foreign layer URL {url}: {reason}")]
    ForeignUrlRefused {
        /// The URL.
        url: String,
        /// Why it was refused.
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
    /// More tags than haul lists.
    TooManyTags {
        /// The most tags haul takes.
        limit: usize,
    },
    /// More bytes than haul reads for one tag list.
    TooManyBytes {
        /// The most bytes haul reads, over all pages.
        limit: usize,
    },
    /// More pages than haul follows.
    TooManyPages {
        /// The most pages haul follows.
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
    /// haul has already retried such errors as often as `max-download-attempts` allows before
    /// returning them.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::ConnectionRefused { host } => !super::settings::is_loopback(host),
            RegistryError::Proxy { retryable, .. } => *retryable,
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
                | RegistryError::NoSuchHost { .. }
                | RegistryError::ConnectionRefused { .. }
                | RegistryError::Proxy { .. }
                | RegistryError::Tls { .. }
                | RegistryError::NoResponseHeaders { .. }
        )
    }

    /// How long the registry asked us to wait, if it said.
    #[must_use]
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

/// What one error of a transport failure's chain says about whether trying again can help.
enum Cause {
    /// rustls refused: a certificate that does not verify, or a peer that does not speak TLS.
    Tls,
    /// The resolver said the name does not exist.
    NoSuchHost(String),
    /// The TCP connection was refused.
    Refused,
    Other,
}

/// The [`Cause`] of `e`, looking inside `io::Error`s: hyper hands rustls's error (and reqwest
/// the resolver's) over wrapped in an `io::Error`, whose `source()` skips the inner error. By
/// type and `io::ErrorKind` only, never by message.
fn cause_of(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Cause::Tls;
        }
        if let Some(super::resolve::LookupError::NoSuchHost { name }) =
            e.downcast_ref::<super::resolve::LookupError>()
        {
            return Cause::NoSuchHost(name.clone());
        }
        let io = e.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return Cause::Refused;
        }
        current = io
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
    }
    Cause::Other
}

/// Classifies a transport failure by walking its source chain, so the user learns whether it was
/// DNS/connect, TLS or the transfer itself.
pub(crate) fn from_reqwest(host: &str, err: &reqwest::Error) -> RegistryError {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    let mut tls = false;
    let mut no_such_host = None;
    let mut refused = false;
    while let Some(s) = source {
        match cause_of(s) {
            Cause::Tls => tls = true,
            Cause::NoSuchHost(name) => no_such_host = Some(name),
            Cause::Refused => refused = true,
            Cause::Other => {}
        }
        let text = s.to_string();
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
    } else if let Some(name) = no_such_host {
        RegistryError::NoSuchHost {
            host: host.to_owned(),
            name,
        }
    } else if refused && err.is_connect() {
        RegistryError::ConnectionRefused {
            host: host.to_owned(),
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
