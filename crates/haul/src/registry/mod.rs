//! Talking to registries: the distribution API client, authentication and credentials.

pub mod auth;
pub mod challenge;
pub mod client;
pub mod credentials;
pub mod error;
pub mod foreign;
pub mod push;
pub mod retry;
pub mod throughput;

pub use auth::{Anonymous, CredentialStore, StaticCredentials};
pub use client::{ClientOptions, FetchedManifest, ManifestHead, RegistryClient, Repository};
pub use credentials::{Credential, DockerConfig};
pub use error::RegistryError;
pub use push::Pusher;
