//! `--all-tags`: what pulling every tag of a repository did, and which tags are not images.
//!
//! Promises: a tag that names a signature, attestation or other artifact by the naming schemes
//! signing tools use is skipped with the reason, never pulled as an image.

use super::{PullError, PullOutcome};
use crate::reference::Reference;

/// How many tags `--all-tags` pulls at once.
pub(super) const TAGS_AT_ONCE: usize = 8;

/// What [`super::Puller::pull_all_tags`] did, tag by tag, in tag order.
#[derive(Debug, Default)]
pub struct AllTags {
    /// The tags pulled.
    pub pulled: Vec<PullOutcome>,
    /// Tags that are not images (signatures, attestations, other artifacts), with why.
    pub skipped: Vec<SkippedTag>,
    /// Tags whose pull failed; the others were pulled regardless.
    pub failed: Vec<(Reference, PullError)>,
}

/// A tag `--all-tags` left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTag {
    /// The tag.
    pub tag: String,
    /// Why it was skipped (`a cosign signature tag`…).
    pub reason: String,
}

/// Why a tag names an artifact rather than an image, by the naming schemes signing tools use:
/// cosign's `sha256-<hex>.sig`/`.att`/`.sbom` and the distribution spec's referrers fallback tag
/// `sha256-<hex>` (Notation, ORAS).
pub(super) fn artifact_tag(tag: &str) -> Option<&'static str> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = rest.split_at_checked(64)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match suffix {
        ".sig" => Some("a cosign signature tag"),
        ".att" => Some("a cosign attestation tag"),
        ".sbom" => Some("a cosign SBOM tag"),
        "" => Some("a referrers fallback tag (signatures and other artifacts)"),
        s if s.starts_with('.') => Some("an artifact tag of a signed digest"),
        _ => None,
    }
}
