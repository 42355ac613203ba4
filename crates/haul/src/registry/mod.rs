//! Talking to registries: the distribution API client, authentication and credentials.
//!
//! - [`RegistryClient`] (`client`): one per process; base URLs, the `/v2/` ping, authenticated
//!   requests with retries, built from [`RegistrySettings`] and [`ClientOptions`].
//! - [`Repository`] (`repository`, `tags`, `blob`): one repository's manifests, tag list and
//!   blobs; [`Repository::fetch_blob`] is the one way a blob is downloaded: resumed, retried,
//!   moved between mirrors and verified into a [`BlobSink`]; a big blob over several
//!   connections when the registry serves ranges (`ranged`, into a [`RangedTarget`]).
//! - Credentials come from a [`CredentialStore`]: docker's `config.json` and its credential
//!   helpers ([`DockerConfig`]), fixed ones ([`StaticCredentials`]), none ([`Anonymous`]) or the
//!   caller's own.
//! - Every failure is a [`RegistryError`]: what the registry answered, or why it could not be
//!   reached.
//!
//! Inside (private): `endpoints` (mirrors, then the registry), `http` (how the HTTP clients are
//! built), `proxy` (which proxy a request goes through), `resolve` (names, with the resolver's
//! error code), `certs` (docker's `certs.d`), `foreign` (where foreign layer URLs may lead),
//! `retry` and `throughput` (how long to wait, and how slow is too slow).

pub(crate) mod auth;
mod blob;
mod certs;
pub(crate) mod challenge;
pub(crate) mod client;
pub(crate) mod credentials;
mod endpoints;
pub(crate) mod error;
mod foreign;
mod http;
mod proxy;
// Only signing pushes (`crate::trust::sign_image`): without the `trust` feature nothing would.
#[cfg(feature = "trust")]
mod push;
mod ranged;
mod repository;
mod resolve;
mod retry;
pub(crate) mod settings;
mod split;
mod tags;
mod throughput;

pub use auth::{Anonymous, CredentialStore, StaticCredentials};
pub use blob::{BlobError, BlobSink, RetryNotice};
pub use certs::CertsDirError;
pub use challenge::ChallengeError;
pub use client::{ClientOptions, RegistryClient};
pub use credentials::{Credential, CredentialError, DockerConfig};
pub use error::{ForeignUrlRefusal, RegistryError, TagListProblem};
#[cfg(feature = "trust")]
pub use push::Pusher;
pub use ranged::{RangedTarget, SharedTarget};
pub use repository::{FetchedManifest, ManifestHead, Repository};
pub use settings::{Proxies, RegistrySettings};

// The challenge and token-response parsers are internals of the client, reachable only so the
// property tests in `tests/parsers_prop.rs` can feed them arbitrary input from outside the crate.
#[doc(hidden)]
pub use challenge::{Challenge, TokenResponse, parse_token_response, parse_www_authenticate};
