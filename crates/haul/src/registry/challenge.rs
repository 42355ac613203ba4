//! Parsing what a registry says about authentication: `WWW-Authenticate` challenges and the JSON a
//! token endpoint answers with.
//!
//! [`parse_www_authenticate`] follows RFC 7235: several challenges may share one header value or come
//! in several headers; scheme and parameter names are case-insensitive; values are tokens or quoted
//! strings with backslash escapes; commas inside quotes belong to the value. It never fails: schemes
//! haul cannot use, a `Bearer` without a realm and malformed challenges are left out, so the caller
//! sees only challenges it can answer. [`parse_token_response`] accepts the shapes docker
//! distribution and OAuth2 servers send (`token` or `access_token`) and applies distribution's
//! 60-second minimum lifetime. Tokens never appear in `Debug` output or errors.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// An authentication scheme a registry offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Exchange credentials (or nothing) for a token at `realm`.
    Bearer {
        /// The token endpoint's URL.
        realm: String,
        /// The `service` to ask the token endpoint for.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
    /// Send `Authorization: Basic` directly to the registry.
    Basic {
        /// The realm, as a name for people.
        realm: Option<String>,
    },
}

/// The challenge to answer among a 401's `WWW-Authenticate` headers: Bearer when offered (it scopes
/// access and keeps passwords away from the registry itself), else the first one.
pub(crate) fn preferred(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
    let values: Vec<&str> = headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut challenges = parse_www_authenticate(&values);
    let bearer = challenges
        .iter()
        .position(|c| matches!(c, Challenge::Bearer { .. }))
        .unwrap_or(0);
    (bearer < challenges.len()).then(|| challenges.swap_remove(bearer))
}

/// Parses every `WWW-Authenticate` value of one response into the challenges haul understands, in
/// the order the server listed them.
#[must_use]
pub fn parse_www_authenticate(header_values: &[&str]) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    for value in header_values {
        for raw in parse_header_value(value) {
            if let Some(challenge) = raw.into_challenge() {
                challenges.push(challenge);
            }
        }
    }
    challenges
}

/// One challenge as written, before haul decides whether it can use it.
struct RawChallenge {
    scheme: String,
    /// Lowercased names; the first occurrence of a name wins, since RFC 7235 forbids repeats and a
    /// later duplicate is more likely injected than meant.
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn non_empty_param(&self, name: &str) -> Option<String> {
        self.param(name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn into_challenge(self) -> Option<Challenge> {
        if self.scheme.eq_ignore_ascii_case("bearer") {
            // Without a realm there is nowhere to ask for a token.
            let realm = self.non_empty_param("realm")?;
            Some(Challenge::Bearer {
                realm,
                service: self.non_empty_param("service"),
                scope: self.non_empty_param("scope"),
            })
        } else if self.scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic {
                realm: self.non_empty_param("realm"),
            })
        } else {
            tracing::debug!(scheme = %self.scheme, "ignoring unsupported authentication scheme");
            None
        }
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 7235 `token68` characters, excluding the trailing `=` padding.
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, pos: usize) -> Option<u8> {
        self.bytes.get(pos).copied()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
    }

    /// Skips the empty list elements RFC 7230 §7 tells recipients to tolerate (`, ,`).
    fn skip_ows_and_commas(&mut self) {
        while self.peek().is_some_and(|b| is_ows(b) || b == b',') {
            self.pos += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // tchar is ASCII, so the slice is valid UTF-8.
        std::str::from_utf8(&self.bytes[start..self.pos])
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// Reads a quoted-string starting at the opening quote; `None` if it is never closed.
    fn quoted_string(&mut self) -> Option<String> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    // Only non-ASCII bytes copied verbatim from a &str can be here, so this holds.
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    let escaped = self.peek_at(self.pos + 1)?;
                    out.push(escaped);
                    self.pos += 2;
                }
                b => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// Whether a token68 starts here: its characters, optional `=` padding, then the end of the
    /// challenge. This is what tells `Basic abc=` (token68) from `Basic realm=x` (a parameter).
    fn token68_ahead(&self) -> Option<usize> {
        let mut p = self.pos;
        while self.peek_at(p).is_some_and(is_token68_char) {
            p += 1;
        }
        if p == self.pos {
            return None;
        }
        while self.peek_at(p) == Some(b'=') {
            p += 1;
        }
        let end = p;
        while self.peek_at(p).is_some_and(is_ows) {
            p += 1;
        }
        match self.peek_at(p) {
            None | Some(b',') => Some(end),
            Some(_) => None,
        }
    }

    /// Whether an `auth-param` (`token BWS "="`) starts here, as opposed to the next challenge's
    /// scheme; needed because commas separate both parameters and challenges.
    fn param_ahead(&self) -> bool {
        let mut p = self.pos;
        while self.peek_at(p).is_some_and(is_tchar) {
            p += 1;
        }
        if p == self.pos {
            return false;
        }
        while self.peek_at(p).is_some_and(is_ows) {
            p += 1;
        }
        self.peek_at(p) == Some(b'=')
    }
}

/// Parses one header value. Stops at the first malformed challenge and drops it: with commas doing
/// double duty there is no reliable place to resume, and a half-read challenge must not be used.
fn parse_header_value(value: &str) -> Vec<RawChallenge> {
    let mut cur = Cursor {
        bytes: value.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        cur.skip_ows_and_commas();
        if cur.at_end() {
            return out;
        }
        let Some(scheme) = cur.token() else {
            return out;
        };
        let mut challenge = RawChallenge {
            scheme: scheme.to_owned(),
            params: Vec::new(),
        };
        let had_space = cur.peek().is_some_and(is_ows);
        cur.skip_ows();
        match cur.peek() {
            None | Some(b',') => {
                out.push(challenge);
                continue;
            }
            Some(_) if !had_space => return out,
            Some(_) => {}
        }
        if let Some(end) = cur.token68_ahead() {
            // haul has no use for token68 credentials in challenges; skip it.
            cur.pos = end;
            out.push(challenge);
            continue;
        }
        if parse_params(&mut cur, &mut challenge).is_none() {
            return out;
        }
        out.push(challenge);
    }
}

/// Reads `#auth-param` up to the next challenge or the end. `None` on malformed input.
fn parse_params(cur: &mut Cursor<'_>, challenge: &mut RawChallenge) -> Option<()> {
    loop {
        let name = cur.token()?.to_ascii_lowercase();
        cur.skip_ows();
        if cur.peek() != Some(b'=') {
            return None;
        }
        cur.pos += 1;
        cur.skip_ows();
        let value = match cur.peek()? {
            b'"' => cur.quoted_string()?,
            _ => cur.token()?.to_owned(),
        };
        if challenge.param(&name).is_none() {
            challenge.params.push((name, value));
        }
        cur.skip_ows();
        match cur.peek() {
            None => return Some(()),
            Some(b',') => {}
            Some(_) => return None,
        }
        let comma = cur.pos;
        cur.skip_ows_and_commas();
        if cur.at_end() {
            return Some(());
        }
        if !cur.param_ahead() {
            // The next element is another challenge; leave it for the caller.
            cur.pos = comma;
            return Some(());
        }
    }
}

/// What a token endpoint granted.
#[derive(Clone)]
pub struct TokenResponse {
    /// The token (`token`, else `access_token`).
    pub token: String,
    /// Its lifetime in seconds, as the server said.
    pub expires_in: Option<u64>,
    /// When it was issued, as the server said.
    pub issued_at: Option<jiff::Timestamp>,
    /// An OAuth2 refresh token, if the server gave one.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// docker distribution treats anything shorter, including a missing `expires_in`, as 60 seconds.
const MINIMUM_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A day: longer claims are honoured for a day, then a new token is asked for. Without a cap a
/// server's `"expires_in": 1e300` overflowed `Instant + lifetime` in the token cache (a panic).
const MAXIMUM_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

impl TokenResponse {
    /// How long the token may be used from `issued_at` (or from when it was received).
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.expires_in
            .map(Duration::from_secs)
            .unwrap_or(MINIMUM_TOKEN_LIFETIME)
            .clamp(MINIMUM_TOKEN_LIFETIME, MAXIMUM_TOKEN_LIFETIME)
    }
}

/// Why a token endpoint's body was refused. No variant carries any part of the body, which holds
/// secrets.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// The body is not JSON.
    #[error("token response is not valid JSON (line {line}, column {column})")]
    InvalidJson {
        /// Where parsing stopped: the line, from 1.
        line: usize,
        /// Where parsing stopped: the column, from 1.
        column: usize,
    },
    /// The body is JSON, but not an object.
    #[error("token response is not a JSON object")]
    NotAnObject,
    /// A field has the wrong type.
    #[error("token response field `{field}` is not {expected}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// The body holds no token.
    #[error("token response has neither `token` nor `access_token`")]
    MissingToken,
}

/// Parses a token endpoint's JSON body.
///
/// # Errors
///
/// A body that is not a JSON object with a non-empty `token` or `access_token`, or whose
/// `expires_in`, `issued_at` or `refresh_token` has the wrong type.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, ChallengeError> {
    // Parsed by hand from a `Value` rather than derived: serde's type errors quote the offending
    // value, which here may be a token.
    let value: Value = serde_json::from_slice(body).map_err(|e| ChallengeError::InvalidJson {
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(obj) = value else {
        return Err(ChallengeError::NotAnObject);
    };
    let token = optional_string(&obj, "token")?.filter(|t| !t.is_empty());
    let access_token = optional_string(&obj, "access_token")?.filter(|t| !t.is_empty());
    let token = token.or(access_token).ok_or(ChallengeError::MissingToken)?;
    let refresh_token = optional_string(&obj, "refresh_token")?.filter(|t| !t.is_empty());
    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => expires_in_seconds(n),
        // Some OAuth2 servers (Azure AD's v1 endpoint among them) send the number as a string.
        Some(Value::String(s)) => match s.trim().parse::<serde_json::Number>() {
            Ok(n) => expires_in_seconds(&n),
            Err(_) => {
                return Err(ChallengeError::InvalidField {
                    field: "expires_in",
                    expected: "a number",
                });
            }
        },
        Some(_) => {
            return Err(ChallengeError::InvalidField {
                field: "expires_in",
                expected: "a number",
            });
        }
    };
    let issued_at = match optional_string(&obj, "issued_at")? {
        None => None,
        Some(s) if s.is_empty() => None,
        // Only shifts the expiry: a server with an odd clock format should not make every pull
        // fail, so the caller falls back to the time the response arrived.
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(_) => {
                tracing::debug!(issued_at = %s, "ignoring unparsable issued_at in token response");
                None
            }
        },
    };
    Ok(TokenResponse {
        token,
        expires_in,
        issued_at,
        refresh_token,
    })
}

fn optional_string(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ChallengeError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ChallengeError::InvalidField {
            field,
            expected: "a string",
        }),
    }
}

/// Negative or zero lifetimes mean "unspecified" to distribution; fractions are rounded down; any
/// size is accepted here (the cache holds a token a day at most, see `auth::MAX_TOKEN_LIFETIME`).
fn expires_in_seconds(n: &serde_json::Number) -> Option<u64> {
    if let Some(secs) = n.as_u64() {
        return Some(secs).filter(|&s| s > 0);
    }
    let secs = n.as_f64()?;
    if secs.is_finite() && secs >= 1.0 {
        // Saturating float-to-int conversion; lifetimes beyond u64 seconds are moot.
        Some(secs as u64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_is_preferred_wherever_it_is_offered_else_the_first() {
        use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
        let headers = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
            h
        };
        let both = headers(&[r#"Basic realm="r""#, r#"Bearer realm="https://auth/token""#]);
        assert!(
            matches!(preferred(&both), Some(Challenge::Bearer { realm, .. }) if realm == "https://auth/token")
        );
        let basic = headers(&[r#"Basic realm="r""#]);
        assert!(matches!(preferred(&basic), Some(Challenge::Basic { .. })));
        assert_eq!(preferred(&headers(&[])), None);
    }

    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.to_owned(),
            service: service.map(str::to_owned),
            scope: scope.map(str::to_owned),
        }
    }

    fn basic(realm: Option<&str>) -> Challenge {
        Challenge::Basic {
            realm: realm.map(str::to_owned),
        }
    }

    #[test]
    fn parses_good_headers() {
        let cases: Vec<(Vec<&str>, Vec<Challenge>)> = vec![
            (
                vec![
                    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
                ],
                vec![bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/nginx:pull"),
                )],
            ),
            (
                vec![
                    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
                ],
                vec![bearer(
                    "https://ghcr.io/token",
                    Some("ghcr.io"),
                    Some("repository:user/image:pull"),
                )],
            ),
            (
                vec![r#"Bearer realm="https://r/token",scope="repository:a:pull,push""#],
                vec![bearer(
                    "https://r/token",
                    None,
                    Some("repository:a:pull,push"),
                )],
            ),
            (
                vec![r#"Basic realm="x", Bearer realm="y""#],
                vec![basic(Some("x")), bearer("y", None, None)],
            ),
            (
                vec![r#"Bearer realm="y",service="s", Basic realm="x""#],
                vec![bearer("y", Some("s"), None), basic(Some("x"))],
            ),
            (
                vec![r#"bearer REALM="https://r/token", SERVICE="svc""#],
                vec![bearer("https://r/token", Some("svc"), None)],
            ),
            (
                vec![r#"BEARER   realm = "y" ,	service	=	s  ,  scope="a b""#],
                vec![bearer("y", Some("s"), Some("a b"))],
            ),
            (
                vec![r#"Bearer realm="https://r/t\"x\\y", service="a\bc""#],
                vec![bearer(r#"https://r/t"x\y"#, Some("abc"), None)],
            ),
            (vec!["Bearer realm=https://r/token"], vec![]),
            (vec!["Bearer realm=tok"], vec![bearer("tok", None, None)]),
            (vec!["Basic"], vec![basic(None)]),
            (vec![r#"Basic realm="""#], vec![basic(None)]),
            (
                vec!["Basic dXNlcjpwYXNz==, Bearer realm=y"],
                vec![basic(None), bearer("y", None, None)],
            ),
            (
                vec![
                    r#"Negotiate, Basic realm="x""#,
                    r#"Digest realm="d", nonce="n", Bearer realm="y""#,
                ],
                vec![basic(Some("x")), bearer("y", None, None)],
            ),
            (
                vec![r#", , Bearer realm="y",, service="s",,"#],
                vec![bearer("y", Some("s"), None)],
            ),
            (
                vec![r#"Bearer realm="y", realm="evil""#],
                vec![bearer("y", None, None)],
            ),
            (
                vec![r#"Bearer realm="y",error="insufficient_scope",scope="repository:a:push""#],
                vec![bearer("y", None, Some("repository:a:push"))],
            ),
            (
                vec![r#"Bearer realm="https://r/ünï", service="ø""#],
                vec![bearer("https://r/ünï", Some("ø"), None)],
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(
                parse_www_authenticate(&headers),
                want,
                "headers: {headers:?}"
            );
        }
    }

    #[test]
    fn skips_bad_or_unusable_headers() {
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            (r#"Bearer service="s""#, vec![]),
            (r#"Bearer realm="""#, vec![]),
            ("Bearer", vec![]),
            (r#"Digest realm="x""#, vec![]),
            (r#"Bearer realm="unterminated"#, vec![]),
            (r#"Bearer realm="x" junk"#, vec![]),
            (r#"Bearer realm"#, vec![]),
            (r#"Bearer realm=, service=s"#, vec![]),
            (r#"Bearer realm="a\"#, vec![]),
            (r#""Bearer" realm="x""#, vec![]),
            (r#"Bearer="x""#, vec![]),
            // A good challenge before a broken one survives.
            (
                r#"Basic realm="x", Bearer realm="y" junk"#,
                vec![basic(Some("x"))],
            ),
        ];
        for (header, want) in cases {
            assert_eq!(
                parse_www_authenticate(&[header]),
                want,
                "header: {header:?}"
            );
        }
    }

    #[test]
    fn parses_good_token_responses() {
        // body, token, expires_in, issued_at, refresh_token, lifetime in seconds
        type Case = (
            &'static str,
            &'static str,
            Option<u64>,
            Option<&'static str>,
            Option<&'static str>,
            u64,
        );
        let cases: Vec<Case> = vec![
            (r#"{"token":"t"}"#, "t", None, None, None, 60),
            (r#"{"access_token":"a"}"#, "a", None, None, None, 60),
            (
                r#"{"token":"t","access_token":"a"}"#,
                "t",
                None,
                None,
                None,
                60,
            ),
            (
                r#"{"token":"","access_token":"a"}"#,
                "a",
                None,
                None,
                None,
                60,
            ),
            (
                r#"{"token":null,"access_token":"a"}"#,
                "a",
                None,
                None,
                None,
                60,
            ),
            (
                r#"{"token":"t","expires_in":300}"#,
                "t",
                Some(300),
                None,
                None,
                300,
            ),
            (
                r#"{"token":"t","expires_in":10}"#,
                "t",
                Some(10),
                None,
                None,
                60,
            ),
            (r#"{"token":"t","expires_in":0}"#, "t", None, None, None, 60),
            (
                r#"{"token":"t","expires_in":-5}"#,
                "t",
                None,
                None,
                None,
                60,
            ),
            (
                r#"{"token":"t","expires_in":"300"}"#,
                "t",
                Some(300),
                None,
                None,
                300,
            ),
            (
                r#"{"token":"t","expires_in":18446744073709551615}"#,
                "t",
                Some(u64::MAX),
                None,
                None,
                24 * 60 * 60,
            ),
            (
                r#"{"token":"t","expires_in":1e300}"#,
                "t",
                Some(u64::MAX),
                None,
                None,
                24 * 60 * 60,
            ),
            (
                r#"{"token":"t","expires_in":-1e300}"#,
                "t",
                None,
                None,
                None,
                60,
            ),
            (
                r#"{"token":"t","expires_in":120.7}"#,
                "t",
                Some(120),
                None,
                None,
                120,
            ),
            (
                r#"{"token":"t","issued_at":"2024-05-01T12:00:00Z","expires_in":3600}"#,
                "t",
                Some(3600),
                Some("2024-05-01T12:00:00Z"),
                None,
                3600,
            ),
            (
                r#"{"token":"t","issued_at":"2024-05-01T12:00:00.123456789+02:00"}"#,
                "t",
                None,
                Some("2024-05-01T10:00:00.123456789Z"),
                None,
                60,
            ),
            (
                r#"{"token":"t","issued_at":"yesterday"}"#,
                "t",
                None,
                None,
                None,
                60,
            ),
            (r#"{"token":"t","issued_at":""}"#, "t", None, None, None, 60),
            (
                r#"{"token":"t","refresh_token":"r","extra":{"x":1}}"#,
                "t",
                None,
                None,
                Some("r"),
                60,
            ),
        ];
        for (body, token, expires_in, issued_at, refresh, lifetime) in cases {
            let got =
                parse_token_response(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(got.token, token, "{body}");
            assert_eq!(got.expires_in, expires_in, "{body}");
            assert_eq!(
                got.issued_at,
                issued_at.map(|s| s.parse::<jiff::Timestamp>().unwrap()),
                "{body}"
            );
            assert_eq!(got.refresh_token.as_deref(), refresh, "{body}");
            assert_eq!(got.lifetime(), Duration::from_secs(lifetime), "{body}");
        }
    }

    #[test]
    fn refuses_bad_token_responses() {
        let cases: Vec<&str> = vec![
            "",
            "not json",
            r#"{"token":"t""#,
            r#"["t"]"#,
            r#""t""#,
            "{}",
            r#"{"token":""}"#,
            r#"{"token":"","access_token":""}"#,
            r#"{"token":5}"#,
            r#"{"access_token":["secret-value"]}"#,
            r#"{"token":"t","expires_in":"secret-value"}"#,
            r#"{"token":"t","refresh_token":1}"#,
            r#"{"token":"t","issued_at":7}"#,
        ];
        for body in cases {
            let err = match parse_token_response(body.as_bytes()) {
                Ok(r) => panic!("{body}: accepted as {r:?}"),
                Err(e) => e,
            };
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("secret-value"), "{body}: {shown}");
        }
    }

    /// Found by `parsers_prop`: the token cache computes `Instant::now() + lifetime`.
    #[test]
    fn a_token_lifetime_beyond_the_clock_is_capped() {
        for body in [
            r#"{"access_token":"a","expires_in":1e+300}"#,
            r#"{"token":"a","expires_in":18446744073709551615}"#,
        ] {
            let lifetime = parse_token_response(body.as_bytes()).unwrap().lifetime();
            assert_eq!(lifetime, MAXIMUM_TOKEN_LIFETIME, "{body}");
            assert!(std::time::Instant::now().checked_add(lifetime).is_some());
        }
    }

    #[test]
    fn debug_redacts_tokens() {
        let r = parse_token_response(br#"{"token":"tok-secret","refresh_token":"ref-secret"}"#)
            .unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(!shown.contains("ref-secret"), "{shown}");
    }
}
