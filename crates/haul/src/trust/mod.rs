//! Content trust: verifying, offline, that an image was signed by someone the user trusts.
//!
//! Signatures live in the registry next to the image ([`Source`]): cosign's simple-signing
//! manifests under the `sha256-<hex>.sig` tag or as OCI 1.1 referrers, and Notation envelopes
//! (JWS or COSE) as referrers. They are checked against the keys and X.509 roots in the user's
//! [`Keyring`], and the config file's policy ([`TrustConfig`], one [`Rule`] per registry or
//! repository prefix) says whose signatures an image needs and what to do with unsigned ones.
//! Nothing here talks to a transparency log or a timestamp authority: trust comes only from the
//! keyring.
//!
//! [`TrustVerifier::verify`] resolves a tag to a digest once and judges that digest. Pulls never
//! call it themselves: a [`crate::pull::Puller`] whose configuration turns trust on checks every
//! image it fetches here first and then pulls exactly the checked digest, so a tag moved after the
//! check does not change what is pulled. [`sign_image`] makes cosign-compatible signatures.
//!
//! Verification is the `trust` cargo feature (on by default). Built without it, only the policy
//! is here: a puller that is asked to check content trust refuses to pull
//! ([`crate::pull::PullError::TrustUnavailable`]) rather than pull unchecked.

// The module's documentation names the verifier's items, which only the `trust` feature builds.
#![cfg_attr(not(feature = "trust"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "trust")]
mod certs;
#[cfg(feature = "trust")]
mod cosign;
#[cfg(feature = "trust")]
mod discovery;
#[cfg(feature = "trust")]
mod keys;
#[cfg(feature = "trust")]
mod notation;
mod policy;
#[cfg(feature = "trust")]
mod sign;
#[cfg(feature = "trust")]
mod verify;

#[cfg(feature = "trust")]
pub use discovery::Source;
#[cfg(feature = "trust")]
pub use keys::{KeyError, KeyKind, Keyring, NamedKey, NamedRoot, PrivateKey, PublicKey};
pub use policy::{Require, Rule, TrustConfig, Unsigned, enabled};
#[cfg(feature = "trust")]
pub use sign::{SignError, SignOutcome, sign_image};
#[cfg(feature = "trust")]
pub use verify::{
    Inspection, Refusal, SignatureFailure, SignatureKind, SignatureReport, Signer, TrustError,
    TrustVerifier, Verdict,
};
