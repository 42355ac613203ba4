//! Talking to registries: the distribution API client, authentication and credentials.
//!
//! - [`RegistryClient`] (`client`): one per process; base URLs, the `/v2/` ping, authenticated
//!   requests with retries, built from [`RegistrySettings`] and [`ClientOptions`].
//! - [`Repository`] (`repository`, `tags`, `blob`): one repository's manifests, tag list and
//!   blobs; [`Repository::fetch_blob`] is the one way a blob is downloaded: resumed, retried,
//!   moved between mirrors and verified into a [`BlobSink`].
//! - `endpoints`: mirrors, then the registry; `http`: how the HTTP clients are built;
//!   [`foreign`]: where foreign layer URLs may lead; [`retry`], [`throughput`]: how long to wait
//!   and how slow is too slow.

pub mod auth;
mod blob;
pub mod challenge;
pub mod client;
pub mod credentials;
mod endpoints;
pub mod error;
pub mod foreign;
mod http;
pub mod push;
mod repository;
pub mod retry;
pub mod settings;
mod tags;
pub mod throughput;

pub use auth::{Anonymous, CredentialStore, StaticCredentials};
pub use blob::{BlobError, BlobSink, RetryNotice};
pub use client::{ClientOptions, RegistryClient};
pub use credentials::{Credential, DockerConfig};
pub use error::RegistryError;
pub use push::Pusher;
pub use repository::{FetchedManifest, ManifestHead, Repository};
pub use settings::{Proxies, RegistrySettings};
