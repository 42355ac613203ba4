//! The front door's error: one type a caller matches on by [`ErrorKind`] (not found, unauthorized,
//! denied by policy, integrity, no space, network, cancelled…), with the module's own typed error
//! kept as its source for the detail.
//!
//! Promises: [`Error::kind`] is decided by the error's type and fields, never by its text; an
//! error's message is the module error's message, unchanged, so what a user reads does not depend
//! on which door a caller used.

use crate::bundle::BundleError;
use crate::config::ConfigError;
use crate::manifest::ManifestError;
use crate::platform::PlatformError;
use crate::pull::PullError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::unpack::apply::ApplyError;
use crate::unpack::budget::Exceeded;
use crate::unpack::image::UnpackError;
use crate::unpack::stream::StreamError;

/// What went wrong, in the terms a caller acts on.
///
/// Decided by the error's type and fields, never by its text. New kinds may be added, so a
/// `match` needs a catch-all arm.
///
/// ```
/// use std::sync::Arc;
///
/// use haul::ErrorKind;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let haul = haul::Haul::builder()
///     .root(dir.path())
///     .config(haul::config::Config::default())
///     .credentials(Arc::new(haul::registry::Anonymous))
///     .build()?;
/// // Refused before any request: a repository name is lowercase.
/// let err = haul.pull("Alpine", Arc::new(haul::progress::Silent)).await.unwrap_err();
/// let advice = match err.kind() {
///     ErrorKind::InvalidInput => "check the image name",
///     ErrorKind::NotFound => "check the tag and the platform",
///     ErrorKind::Unauthorized => "run `haul login`",
///     ErrorKind::Network | ErrorKind::Registry => "try again later",
///     _ => "see the error",
/// };
/// assert_eq!(advice, "check the image name");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The image, tag, repository or blob does not exist (or not for the wanted platform).
    NotFound,
    /// The registry wants credentials, or refused the ones given.
    Unauthorized,
    /// haul's own policy refused: content trust, an insecure token realm, a foreign URL into a
    /// private network.
    DeniedByPolicy,
    /// Content did not match its digest, size or diff_id: corrupt or forged.
    Integrity,
    /// The disk (or haul's expansion budget for it) has no room.
    NoSpace,
    /// The registry could not be reached, or stopped answering in time.
    Network,
    /// The registry answered something haul cannot use: a protocol violation, a hostile tag list,
    /// an endless wait.
    Registry,
    /// The image uses something haul does not support (schema 1, an unknown media type).
    Unsupported,
    /// The image cannot be used as it is: a layer that is malformed or tries to leave its root, a
    /// config naming a user the image does not have, a layer past the expansion limits.
    BadImage,
    /// What the caller passed is not valid: a reference, a platform, the configuration.
    InvalidInput,
    /// The work was stopped before it finished.
    Cancelled,
    /// The local filesystem or store failed, or is not one haul may use.
    Local,
}

/// An error from the front door ([`crate::Haul`]). Its message is the module error's; its
/// [`source`](std::error::Error::source) is that error, for callers that want every detail.
///
/// Branch on [`Error::kind`] rather than on the variant: the variant says which step failed, the
/// kind says what went wrong, whichever step it was.
///
/// ```
/// use haul::{Error, ErrorKind};
///
/// // Anything the front door is given is checked before the network is touched.
/// let err: Error = "Alpine:3.20".parse::<haul::reference::Reference>().unwrap_err().into();
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert!(err.to_string().starts_with("invalid reference format"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Pulling the image failed.
    #[error("{0}")]
    Pull(#[source] PullError),
    /// Unpacking a stored image into a directory failed.
    #[error("{0}")]
    Unpack(#[source] UnpackError),
    /// Writing a runtime bundle failed.
    #[error("{0}")]
    Bundle(#[source] BundleError),
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(#[source] StoreError),
    /// The configuration file could not be read or is invalid.
    #[error("{0}")]
    Config(#[source] ConfigError),
    /// An image name is not a valid reference.
    #[error("{0}")]
    Reference(#[source] ReferenceError),
    /// A platform is not valid.
    #[error("{0}")]
    Platform(#[source] PlatformError),
    /// Setting up the registry client failed (a proxy URL or an extra root certificate).
    #[error("{0}")]
    Registry(#[source] RegistryError),
    /// The blocking task that did the work stopped (panicked or was cancelled).
    #[error("the {what} task stopped before it finished: {source}")]
    Task {
        /// Which work: `"unpack"` or `"bundle"`.
        what: &'static str,
        /// Why the task stopped.
        #[source]
        source: tokio::task::JoinError,
    },
}

macro_rules! from_module_error {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(e)
            }
        })*
    };
}

from_module_error!(
    Pull(PullError),
    Unpack(UnpackError),
    Bundle(BundleError),
    Store(StoreError),
    Config(ConfigError),
    Reference(ReferenceError),
    Platform(PlatformError),
    Registry(RegistryError),
);

impl Error {
    /// What went wrong, for a caller to branch on.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Pull(e) => pull_kind(e),
            Error::Unpack(e) => unpack_kind(e),
            Error::Bundle(e) => match e {
                BundleError::Unpack(e) => unpack_kind(e),
                BundleError::Io { .. } => ErrorKind::Local,
                BundleError::Config(_)
                | BundleError::UnknownUser { .. }
                | BundleError::UnknownGroup { .. } => ErrorKind::BadImage,
            },
            Error::Store(e) => store_kind(e),
            Error::Config(_) | Error::Reference(_) | Error::Platform(_) => ErrorKind::InvalidInput,
            Error::Registry(e) => registry_kind(e),
            Error::Task { source, .. } if source.is_cancelled() => ErrorKind::Cancelled,
            Error::Task { .. } => ErrorKind::Local,
        }
    }
}

impl PullError {
    /// What went wrong, for a caller of [`crate::pull::Puller`] to branch on: the kind
    /// [`Error::kind`] gives this error at the front door.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        pull_kind(self)
    }
}

/// The kind of a pull's error.
fn pull_kind(e: &PullError) -> ErrorKind {
    match e {
        PullError::ManifestUnknown { .. }
        | PullError::NameUnknown { .. }
        | PullError::PlatformMismatch { .. }
        | PullError::RefVanished { .. } => ErrorKind::NotFound,
        PullError::AccessDenied { .. } => ErrorKind::Unauthorized,
        #[cfg(feature = "trust")]
        PullError::Trust(_) => ErrorKind::DeniedByPolicy,
        PullError::TrustUnavailable => ErrorKind::DeniedByPolicy,
        PullError::LayerVerification { source, .. } => match store_kind(source) {
            ErrorKind::Local if !crate::space::is_no_space(source.as_ref()) => ErrorKind::Integrity,
            other => other,
        },
        PullError::NoSpace { .. } => ErrorKind::NoSpace,
        PullError::Manifest { source, .. } => manifest_kind(source),
        PullError::Registry(e) => registry_kind(e),
        PullError::Store(e) => store_kind(e),
        PullError::Extract { source, .. } => unpack_kind(source),
        PullError::Reference(_) | PullError::PinMismatch { .. } => ErrorKind::InvalidInput,
        PullError::Task(e) if e.is_cancelled() => ErrorKind::Cancelled,
        PullError::Task(_) => ErrorKind::Local,
        PullError::Stopped => ErrorKind::Cancelled,
    }
}

/// The kind of an unpack's error.
fn unpack_kind(e: &UnpackError) -> ErrorKind {
    if crate::space::is_no_space(e) {
        return ErrorKind::NoSpace;
    }
    match e {
        UnpackError::TargetNotEmpty { .. } => ErrorKind::InvalidInput,
        UnpackError::Io { .. } => ErrorKind::Local,
        UnpackError::Store(e) => store_kind(e),
        UnpackError::Manifest { source, .. } => manifest_kind(source),
        UnpackError::UnsupportedCompression { .. } => ErrorKind::Unsupported,
        UnpackError::Apply { source, .. } => match source {
            ApplyError::Io { .. } | ApplyError::OpenRoot { .. } => ErrorKind::Local,
            ApplyError::RootNotEmpty { .. } | ApplyError::RootNotDirectory { .. } => {
                ErrorKind::InvalidInput
            }
            ApplyError::TooLarge { reason, .. } => match reason {
                Exceeded::Space { .. } => ErrorKind::NoSpace,
                Exceeded::Layer { .. } | Exceeded::Image { .. } => ErrorKind::BadImage,
            },
            ApplyError::UnsupportedType { .. } | ApplyError::UnsupportedSparse { .. } => {
                ErrorKind::Unsupported
            }
            // A layer that tries to escape, lies in its headers or ends early.
            _ => ErrorKind::BadImage,
        },
        UnpackError::Stream { source, .. } => match source {
            StreamError::TooLarge { .. } => ErrorKind::BadImage,
            StreamError::DiffIdMismatch { .. } => ErrorKind::Integrity,
            StreamError::Unreadable { source } => match source.kind() {
                std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::UnexpectedEof => ErrorKind::BadImage,
                _ => ErrorKind::Local,
            },
        },
        UnpackError::Stopped => ErrorKind::Cancelled,
    }
}

/// The kind of a store's error.
fn store_kind(e: &StoreError) -> ErrorKind {
    if crate::space::is_no_space(e) {
        return ErrorKind::NoSpace;
    }
    match e {
        StoreError::Verify { .. } => ErrorKind::Integrity,
        StoreError::Missing(_) => ErrorKind::NotFound,
        StoreError::NoDefaultRoot | StoreError::NotAStore { .. } => ErrorKind::InvalidInput,
        _ => ErrorKind::Local,
    }
}

/// The kind of a manifest's error.
fn manifest_kind(e: &ManifestError) -> ErrorKind {
    match e {
        ManifestError::NoMatchingPlatform { .. } => ErrorKind::NotFound,
        ManifestError::Schema1 { .. }
        | ManifestError::UnsupportedMediaType(_)
        | ManifestError::NotAnImage { .. }
        | ManifestError::UnsupportedLayer(_) => ErrorKind::Unsupported,
        _ => ErrorKind::Registry,
    }
}

/// The kind of a registry's error.
fn registry_kind(e: &RegistryError) -> ErrorKind {
    match e {
        RegistryError::ManifestUnknown { .. }
        | RegistryError::NameUnknown { .. }
        | RegistryError::BlobUnknown { .. } => ErrorKind::NotFound,
        RegistryError::Unauthorized { .. }
        | RegistryError::Denied { .. }
        | RegistryError::Credentials(_) => ErrorKind::Unauthorized,
        RegistryError::Verify { .. } | RegistryError::DigestMismatch { .. } => ErrorKind::Integrity,
        RegistryError::Connect { .. }
        | RegistryError::NoSuchHost { .. }
        | RegistryError::ConnectionRefused { .. }
        | RegistryError::Proxy { .. }
        | RegistryError::Tls { .. }
        | RegistryError::Transport { .. }
        | RegistryError::TooManyRequests { .. }
        | RegistryError::Unavailable { .. }
        | RegistryError::TooSlow { .. }
        | RegistryError::NoResponseHeaders { .. } => ErrorKind::Network,
        RegistryError::Certificates { .. } => ErrorKind::InvalidInput,
        RegistryError::InsecureRealm { .. } | RegistryError::ForeignUrlRefused { .. } => {
            ErrorKind::DeniedByPolicy
        }
        RegistryError::Manifest { source, .. } => manifest_kind(source),
        RegistryError::Status { status, .. } if *status >= 500 => ErrorKind::Network,
        _ => ErrorKind::Registry,
    }
}
