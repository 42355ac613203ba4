//! Image references such as `alpine`, `user/app:1.0` or `ghcr.io/org/tool@sha256:…`.
//!
//! A [`Reference`] exists only for text that passes docker/distribution's reference grammar, and it
//! is held in normalised form: `alpine`, `library/alpine`, `docker.io/library/alpine` and
//! `index.docker.io/library/alpine` are one and the same value. It is the identity the user asked
//! for, used for display and for naming what is stored; the host actually contacted is
//! [`Reference::api_host`] unless a mirror is chosen elsewhere. Errors begin with docker's
//! "invalid reference format" so that users can search for them, followed by the precise reason.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

const DOCKER_HUB: &str = "docker.io";
/// The name Docker Hub had before `docker.io`; old scripts and configs still use it.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// `docker.io` is a website; Docker Hub's registry API lives on this host.
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed, normalised image reference: registry, repository, and an optional tag and digest.
///
/// When both a tag and a digest are given, the digest decides what is pulled and the tag is kept
/// only as a label, as docker does.
///
/// ```
/// use haul::reference::Reference;
///
/// let alpine: Reference = "alpine".parse()?;
/// assert_eq!(alpine.to_string(), "docker.io/library/alpine:latest");
/// assert_eq!(alpine.familiar_name(), "alpine");
/// assert_eq!(alpine.api_host(), "registry-1.docker.io");
///
/// let app: Reference = "registry.example.com:5000/team/app:1.2".parse()?;
/// assert_eq!(app.registry(), "registry.example.com:5000");
/// assert_eq!(app.repository(), "team/app");
/// assert_eq!(app.tag(), Some("1.2"));
///
/// // docker's grammar, docker's first words.
/// let err = "Team/App".parse::<Reference>().unwrap_err();
/// assert_eq!(err.to_string(), "invalid reference format: repository name must be lowercase");
/// # Ok::<(), haul::reference::ReferenceError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The text is empty.
    #[error("invalid reference format: the reference is empty")]
    Empty,
    /// Nothing before the tag or digest (`:latest`, `@sha256:…`).
    #[error("invalid reference format: repository name must have at least one component")]
    MissingName,
    /// 64 hexadecimal digits: an image ID, which docker refuses as a name.
    #[error(
        "invalid reference format: a 64-character hexadecimal string is an image ID, not a repository name"
    )]
    ImageId,
    /// The registry part is not a host name or address with an optional port.
    #[error("invalid reference format: invalid registry host {0:?}")]
    InvalidRegistry(
        /// The registry part as written.
        String,
    ),
    /// The repository name has uppercase letters.
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    /// The repository name has an empty component.
    #[error(
        "invalid reference format: repository name has an empty component (a leading, trailing or doubled '/')"
    )]
    EmptyComponent,
    /// A component of the repository name breaks the grammar.
    #[error(
        "invalid reference format: repository name component {0:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
    )]
    InvalidComponent(
        /// The component.
        String,
    ),
    /// The normalised name (registry and repository: `alpine` counts as
    /// `docker.io/library/alpine`) is longer than 255 characters.
    #[error(
        "invalid reference format: repository name must not be more than {NAME_MAX} characters"
    )]
    NameTooLong {
        /// The normalised name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A `:` with no tag after it.
    #[error("invalid reference format: tag is empty")]
    EmptyTag,
    /// The tag is longer than 128 characters.
    #[error("invalid reference format: tag is longer than {TAG_MAX} characters")]
    TagTooLong {
        /// Its length.
        len: usize,
    },
    /// The tag breaks the grammar.
    #[error(
        "invalid reference format: invalid tag {0:?}: a tag is letters, digits, '_', '.' and '-', and does not begin with '.' or '-'"
    )]
    InvalidTag(
        /// The tag.
        String,
    ),
    /// The digest is not one.
    // The digest error is part of the message rather than a `source`, so a printed error chain
    // does not say it twice.
    #[error("invalid reference format: {0}")]
    InvalidDigest(
        /// Why.
        DigestError,
    ),
    /// A tag or digest where only a repository is accepted ([`Reference::parse_repository`]).
    #[error(
        "invalid reference format: {input:?} has a tag or digest, but only a repository name is accepted here"
    )]
    NotARepository {
        /// The text given.
        input: String,
    },
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Docker refuses these because `docker pull <image id>` is a common mistake that would
        // otherwise ask Docker Hub for a repository named after the ID.
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::ImageId);
        }

        // No part of a name or tag may contain '@', so the first one starts the digest.
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((before, after)) => (before, Some(after)),
            None => (s, None),
        };
        // A ':' before the last '/' belongs to a registry port, not to a tag.
        let last_component = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_component..].find(':') {
            Some(i) => {
                let at = last_component + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::MissingName);
        }

        let (registry, repository) = split_name(name)?;
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        let digest = digest
            .map(|d| d.parse::<Digest>().map_err(ReferenceError::InvalidDigest))
            .transpose()?;
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl Reference {
    /// Parses a repository name alone, as `pull --all-tags` and `images REPO` take it: like
    /// [`FromStr`], but a tag or digest is an error.
    ///
    /// # Errors
    ///
    /// As parsing a reference, and [`ReferenceError::NotARepository`] for a tag or digest.
    pub fn parse_repository(s: &str) -> Result<Reference, ReferenceError> {
        let reference: Reference = s.parse()?;
        if reference.tag.is_some() || reference.digest.is_some() {
            return Err(ReferenceError::NotARepository {
                input: s.to_owned(),
            });
        }
        Ok(reference)
    }

    /// The registry as named, e.g. `docker.io`, `ghcr.io`, `localhost`, `127.0.0.1:5000`.
    #[must_use]
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `library/alpine` or `team/app`.
    #[must_use]
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, or `None` when none was written.
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written, or `None` when none was written.
    #[must_use]
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag as written, or `latest`.
    #[must_use]
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The host that serves the registry API for this reference (before any mirror is applied).
    #[must_use]
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Registry and repository, e.g. `docker.io/library/alpine`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name docker shows: `alpine`, `user/app`, `127.0.0.1:5000/team/app`.
    #[must_use]
    pub fn familiar_name(&self) -> String {
        if !self.is_docker_hub() {
            return self.name();
        }
        // Only a single component after `library/` is shortened; docker keeps a nested
        // `library/a/b` as it is, since `a/b` would name a different repository.
        let short = match self.repository.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest,
            _ => &self.repository,
        };
        // `docker.io/a.b/c` shortened to `a.b/c` would name the registry `a.b`: keep the host.
        match short.split_once('/') {
            Some((first, _)) if first == "localhost" || first.contains(['.', ':']) => self.name(),
            _ => short.to_owned(),
        }
    }

    /// The short form docker prints in status lines: `alpine:latest`, `alpine@sha256:…`,
    /// `alpine:3.20@sha256:…`.
    #[must_use]
    pub fn familiar_string(&self) -> String {
        format!("{}{}", self.familiar_name(), Suffix(self))
    }

    /// The same repository with `tag` instead of any tag or digest.
    ///
    /// # Errors
    ///
    /// `tag` is not a valid tag ([`ReferenceError::EmptyTag`], [`ReferenceError::TagTooLong`],
    /// [`ReferenceError::InvalidTag`]).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        check_tag(tag)?;
        Ok(Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// The same reference pinned to `digest`; a tag stays as a label.
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Whether the registry is Docker Hub (written `docker.io`, `index.docker.io` or not at
    /// all).
    #[must_use]
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }
}

/// The full normalised form, with the default tag applied when neither tag nor digest was given:
/// `docker.io/library/alpine:latest`, `ghcr.io/org/tool@sha256:…`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.registry, self.repository, Suffix(self))
    }
}

/// `:tag`, `@digest` or both; `:latest` only when there is neither, because a digest alone
/// says exactly what is meant and docker does not invent a tag for it.
struct Suffix<'a>(&'a Reference);

impl fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.tag, &self.0.digest) {
            (Some(tag), _) => write!(f, ":{tag}")?,
            (None, None) => write!(f, ":{DEFAULT_TAG}")?,
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.0.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits a name (no tag, no digest) into a normalised registry and repository and checks both.
fn split_name(name: &str) -> Result<(String, String), ReferenceError> {
    let (registry, path) = match name.split_once('/') {
        Some((first, rest)) if first == "localhost" || first.contains(['.', ':']) => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    let registry = if registry == LEGACY_DOCKER_HUB {
        DOCKER_HUB
    } else {
        registry
    };
    if !is_registry(registry) {
        return Err(ReferenceError::InvalidRegistry(registry.to_owned()));
    }
    // Checked before the components so that `Alpine` gets docker's well-known message rather
    // than a grammar lecture.
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase);
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ReferenceError::EmptyComponent);
        }
        if !is_path_component(component) {
            return Err(ReferenceError::InvalidComponent(component.to_owned()));
        }
    }
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path.to_owned()
    };
    // Measured on the normalised name, as docker does, so `alpine` counts `docker.io/library/`.
    let len = registry.len() + 1 + repository.len();
    if len > NAME_MAX {
        return Err(ReferenceError::NameTooLong {
            name: format!("{registry}/{repository}"),
            len,
        });
    }
    Ok((registry.to_owned(), repository))
}

/// `host[:port]` where host is a DNS name (any case) or a bracketed IPv6 literal.
fn is_registry(s: &str) -> bool {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => s.split_at(end + 1),
            None => return false,
        }
    } else {
        match s.find(':') {
            Some(i) => s.split_at(i),
            None => (s, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && (is_ipv6_literal(host) || is_domain_name(host))
}

fn is_ipv6_literal(host: &str) -> bool {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'))
}

fn is_domain_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        let Some(&separator) = bytes.get(i) else {
            return true;
        };
        i += 1;
        match separator {
            b'.' => {}
            b'_' => {
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    if tag.is_empty() {
        return Err(ReferenceError::EmptyTag);
    }
    if tag.len() > TAG_MAX {
        return Err(ReferenceError::TagTooLong { len: tag.len() });
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(word);
    if !first_ok || !bytes.all(|b| word(b) || b == b'.' || b == b'-') {
        return Err(ReferenceError::InvalidTag(tag.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn sha(hex: &str) -> String {
        format!("sha256:{hex}")
    }

    /// Found by `parsers_prop`: a Docker Hub repository whose first component looks like a host
    /// had a familiar form naming that host (`haul save` writes familiar names into archives).
    #[test]
    fn a_familiar_name_never_names_another_registry() {
        for (full, familiar) in [
            ("docker.io/a.0/a", "docker.io/a.0/a:latest"),
            ("docker.io/localhost/app:1", "docker.io/localhost/app:1"),
            ("docker.io/library/a.b", "a.b:latest"),
            ("docker.io/a.b", "a.b:latest"),
            ("docker.io/user/a.b", "user/a.b:latest"),
        ] {
            let r: Reference = full.parse().unwrap();
            assert_eq!(r.familiar_string(), familiar, "{full}");
            let back: Reference = familiar.parse().unwrap();
            assert_eq!(back.name(), r.name(), "{full}");
        }
    }

    #[test]
    fn good_references_normalise() {
        let digest = sha(HEX);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        let long_path = "a".repeat(NAME_MAX - "example.com/".len());
        let long_tag = "t".repeat(TAG_MAX);
        let owned = [
            (
                format!("ghcr.io/org/tool@{digest}"),
                format!("ghcr.io/org/tool@{digest}"),
                format!("ghcr.io/org/tool@{digest}"),
            ),
            (
                format!("alpine:3.20@{digest}"),
                format!("docker.io/library/alpine:3.20@{digest}"),
                format!("alpine:3.20@{digest}"),
            ),
            (
                format!("alpine@{digest}"),
                format!("docker.io/library/alpine@{digest}"),
                format!("alpine@{digest}"),
            ),
            (
                format!("localhost:5000/foo:1@{sha512}"),
                format!("localhost:5000/foo:1@{sha512}"),
                format!("localhost:5000/foo:1@{sha512}"),
            ),
            (
                format!("example.com/{long_path}"),
                format!("example.com/{long_path}:latest"),
                format!("example.com/{long_path}:latest"),
            ),
            (
                format!("alpine:{long_tag}"),
                format!("docker.io/library/alpine:{long_tag}"),
                format!("alpine:{long_tag}"),
            ),
        ];
        let literal = [
            ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
            (
                "alpine:3.20",
                "docker.io/library/alpine:3.20",
                "alpine:3.20",
            ),
            (
                "library/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "docker.io/library/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "docker.io/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "index.docker.io/library/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "index.docker.io/alpine:edge",
                "docker.io/library/alpine:edge",
                "alpine:edge",
            ),
            ("user/app", "docker.io/user/app:latest", "user/app:latest"),
            (
                "docker.io/user/app:v1",
                "docker.io/user/app:v1",
                "user/app:v1",
            ),
            (
                "library/team/app",
                "docker.io/library/team/app:latest",
                "library/team/app:latest",
            ),
            (
                "localhost/foo",
                "localhost/foo:latest",
                "localhost/foo:latest",
            ),
            (
                "localhost:5000/foo:1",
                "localhost:5000/foo:1",
                "localhost:5000/foo:1",
            ),
            (
                "127.0.0.1:5000/team/app:1.2",
                "127.0.0.1:5000/team/app:1.2",
                "127.0.0.1:5000/team/app:1.2",
            ),
            (
                "FOO.example.com/bar",
                "FOO.example.com/bar:latest",
                "FOO.example.com/bar:latest",
            ),
            (
                "[::1]:5000/foo:bar",
                "[::1]:5000/foo:bar",
                "[::1]:5000/foo:bar",
            ),
            (
                "[fe80::1]/img",
                "[fe80::1]/img:latest",
                "[fe80::1]/img:latest",
            ),
            (
                "example.com:443/a/b/c:tag",
                "example.com:443/a/b/c:tag",
                "example.com:443/a/b/c:tag",
            ),
            (
                "foo/a.b_c__d---e:x",
                "docker.io/foo/a.b_c__d---e:x",
                "foo/a.b_c__d---e:x",
            ),
            (
                "alpine:_under",
                "docker.io/library/alpine:_under",
                "alpine:_under",
            ),
            (
                "alpine:Latest-RC.1",
                "docker.io/library/alpine:Latest-RC.1",
                "alpine:Latest-RC.1",
            ),
            // One component, so these are Docker Hub names even though they look like hosts;
            // a ':' there is a tag.
            (
                "localhost",
                "docker.io/library/localhost:latest",
                "localhost:latest",
            ),
            (
                "localhost:5000",
                "docker.io/library/localhost:5000",
                "localhost:5000",
            ),
            (
                "example.com",
                "docker.io/library/example.com:latest",
                "example.com:latest",
            ),
            // Only index.docker.io folds; the API host is a registry of its own as far as names go.
            (
                "registry-1.docker.io/library/alpine",
                "registry-1.docker.io/library/alpine:latest",
                "registry-1.docker.io/library/alpine:latest",
            ),
            ("0123/4-5", "docker.io/0123/4-5:latest", "0123/4-5:latest"),
            (
                "gcr.io/distroless/static-debian12:nonroot",
                "gcr.io/distroless/static-debian12:nonroot",
                "gcr.io/distroless/static-debian12:nonroot",
            ),
            (
                "quay.io/prometheus/node-exporter:v1.8.2",
                "quay.io/prometheus/node-exporter:v1.8.2",
                "quay.io/prometheus/node-exporter:v1.8.2",
            ),
            (
                "my-registry.local:5000/ns/sub/app:1",
                "my-registry.local:5000/ns/sub/app:1",
                "my-registry.local:5000/ns/sub/app:1",
            ),
            (
                "registry:5000/app",
                "registry:5000/app:latest",
                "registry:5000/app:latest",
            ),
        ];
        let cases = owned
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .chain(literal);
        let mut count = 0;
        for (input, display, familiar) in cases {
            let reference: Reference = input
                .parse()
                .unwrap_or_else(|e| panic!("{input:?} was refused: {e}"));
            assert_eq!(reference.to_string(), display, "Display of {input:?}");
            assert_eq!(
                reference.familiar_string(),
                familiar,
                "familiar form of {input:?}"
            );
            // Both printed forms parse back to the same value.
            assert_eq!(display.parse::<Reference>().unwrap().to_string(), display);
            assert_eq!(familiar.parse::<Reference>().unwrap().to_string(), display);
            count += 1;
        }
        assert!(count >= 30, "only {count} good cases");
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        let owned = [
            // 256 characters, on another registry and on Docker Hub (counting `docker.io/library/`).
            (
                format!("example.com/{}", "a".repeat(244)),
                "must not be more than 255 characters",
            ),
            ("a".repeat(238), "must not be more than 255 characters"),
            (
                format!("alpine:{}", "t".repeat(129)),
                "tag is longer than 128 characters",
            ),
            (HEX.to_owned(), "image ID"),
            (
                format!("alpine@sha256:{}", HEX.to_uppercase()),
                "not lowercase hex",
            ),
            (
                format!("alpine@md5:{}", &HEX[..32]),
                "unsupported digest algorithm",
            ),
            (format!("alpine@{}", &sha512[..100]), "wrong length"),
            (
                format!("alpine@sha256:{HEX}@sha256:{HEX}"),
                "invalid digest",
            ),
            (format!("@sha256:{HEX}"), "at least one component"),
        ];
        let literal = [
            ("", "the reference is empty"),
            (":tag", "at least one component"),
            ("alpine/", "empty component"),
            ("a//b", "empty component"),
            ("/alpine", "empty component"),
            ("example.com/", "empty component"),
            ("-leading", "component \"-leading\""),
            ("trailing-", "component \"trailing-\""),
            ("alp ine", "component \"alp ine\""),
            (" alpine", "component \" alpine\""),
            ("alpine\n", "component"),
            ("a___b", "component \"a___b\""),
            ("a..b", "component \"a..b\""),
            ("a-_b", "component \"a-_b\""),
            ("foo_/bar", "component \"foo_\""),
            ("alpine@", "invalid digest \"\""),
            ("alpine@sha256:abc", "wrong length"),
            ("Alpine", "repository name must be lowercase"),
            (
                "docker.io/Library/alpine",
                "repository name must be lowercase",
            ),
            (
                "example.com/Team/app:1",
                "repository name must be lowercase",
            ),
            ("localhost/FOO", "repository name must be lowercase"),
            ("alpine:", "tag is empty"),
            ("alpine:.dot", "invalid tag \".dot\""),
            ("alpine:-dash", "invalid tag \"-dash\""),
            ("alpine:ta g", "invalid tag \"ta g\""),
            ("alpine:3:1", "invalid tag \"3:1\""),
            (
                "example.com:port/foo",
                "invalid registry host \"example.com:port\"",
            ),
            ("example.com:/foo", "invalid registry host"),
            ("-example.com/foo", "invalid registry host"),
            ("exa_mple.com/foo", "invalid registry host"),
            ("example..com/foo", "invalid registry host"),
            ("[::1/foo", "invalid registry host"),
            ("[]:5000/foo", "invalid registry host"),
            ("[::1]x/foo", "invalid registry host"),
            ("[::g]/foo", "invalid registry host"),
        ];
        let cases = owned.iter().map(|(a, b)| (a.as_str(), *b)).chain(literal);
        let mut count = 0;
        for (input, fragment) in cases {
            let err = match input.parse::<Reference>() {
                Ok(r) => panic!("{input:?} was accepted as {r}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.starts_with("invalid reference format"),
                "{input:?}: {err}"
            );
            assert!(
                err.contains(fragment),
                "{input:?}: {err:?} lacks {fragment:?}"
            );
            count += 1;
        }
        assert!(count >= 25, "only {count} bad cases");
    }

    #[test]
    fn docker_hub_spellings_are_one_reference() {
        let want: Reference = "alpine".parse().unwrap();
        for spelling in [
            "library/alpine",
            "docker.io/alpine",
            "docker.io/library/alpine",
            "index.docker.io/alpine",
            "index.docker.io/library/alpine",
        ] {
            assert_eq!(spelling.parse::<Reference>().unwrap(), want, "{spelling}");
        }
        assert_eq!(want.registry(), "docker.io");
        assert_eq!(want.repository(), "library/alpine");
        assert_eq!(want.api_host(), "registry-1.docker.io");
        assert_eq!(want.name(), "docker.io/library/alpine");
        assert_eq!(want.familiar_name(), "alpine");
        assert!(want.is_docker_hub());
        // An explicit `latest` is remembered as written, so callers can tell it was given.
        assert_ne!("alpine:latest".parse::<Reference>().unwrap(), want);
    }

    #[test]
    fn accessors_report_what_was_written() {
        let r: Reference = "127.0.0.1:5000/team/app:1.2".parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("1.2"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.familiar_name(), "127.0.0.1:5000/team/app");
        assert!(!r.is_docker_hub());

        let plain: Reference = "user/app".parse().unwrap();
        assert_eq!(plain.tag(), None);
        assert_eq!(plain.tag_or_default(), "latest");
        assert_eq!(plain.familiar_name(), "user/app");

        let pinned: Reference = format!("ghcr.io/org/tool@{}", sha(HEX)).parse().unwrap();
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.tag_or_default(), "latest");
        assert_eq!(pinned.digest().map(ToString::to_string), Some(sha(HEX)));
        assert_eq!(pinned.api_host(), "ghcr.io");

        let both: Reference = format!("alpine:3.20@{}", sha(HEX)).parse().unwrap();
        assert_eq!(both.tag(), Some("3.20"));
        assert!(both.digest().is_some());
    }

    #[test]
    fn with_tag_and_with_digest() {
        let digest: Digest = sha(HEX).parse().unwrap();
        let r: Reference = format!("alpine:3.20@{digest}").parse().unwrap();

        let retagged = r.with_tag("edge").unwrap();
        assert_eq!(retagged.to_string(), "docker.io/library/alpine:edge");
        assert_eq!(retagged.digest(), None);
        assert!(matches!(
            r.with_tag(".bad"),
            Err(ReferenceError::InvalidTag(_))
        ));
        assert!(matches!(
            r.with_tag(&"t".repeat(129)),
            Err(ReferenceError::TagTooLong { len: 129 })
        ));

        let plain: Reference = "alpine".parse().unwrap();
        let pinned = plain.with_digest(digest.clone());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/alpine@{digest}")
        );
        assert_eq!(pinned.familiar_string(), format!("alpine@{digest}"));
        let labelled = retagged.with_digest(digest.clone());
        assert_eq!(
            labelled.to_string(),
            format!("docker.io/library/alpine:edge@{digest}")
        );
        assert_eq!(labelled.tag(), Some("edge"));
    }

    #[test]
    fn parse_repository_refuses_tags_and_digests() {
        let r = Reference::parse_repository("localhost:5000/team/app").unwrap();
        assert_eq!(r.name(), "localhost:5000/team/app");
        assert_eq!(
            Reference::parse_repository("alpine").unwrap(),
            "docker.io/library/alpine".parse().unwrap()
        );
        for input in [
            "alpine:latest".to_owned(),
            format!("alpine@{}", sha(HEX)),
            "localhost:5000".to_owned(),
        ] {
            let err = Reference::parse_repository(&input).unwrap_err();
            assert!(
                matches!(err, ReferenceError::NotARepository { .. }),
                "{input}: {err}"
            );
            assert!(err.to_string().starts_with("invalid reference format"));
        }
        assert_eq!(
            Reference::parse_repository("Alpine"),
            Err(ReferenceError::Uppercase)
        );
    }

    #[test]
    fn invalid_digest_keeps_the_digest_error() {
        let err = "alpine@sha256:abc".parse::<Reference>().unwrap_err();
        assert!(matches!(
            err,
            ReferenceError::InvalidDigest(DigestError::BadHex(_))
        ));
    }
}
