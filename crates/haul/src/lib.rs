//! haul: pull OCI and Docker images from any registry into a verified OCI image layout, without a
//! daemon.
//!
//! The pieces, in the order a pull uses them: [`reference`] parses and normalises a name,
//! [`registry`] talks to the registry (challenges, tokens, credentials, retries), [`manifest`] and
//! [`platform`] read manifests and pick the image for a platform, [`store`] keeps verified content in
//! an OCI layout, and [`pull`] orchestrates it all, reporting [`progress`] events to the caller.
//!
//! ```no_run
//! use std::sync::Arc;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = haul::config::Config::load(None)?;
//! let client = haul::registry::RegistryClient::new(
//!     config.registry_settings(),
//!     Arc::new(haul::registry::DockerConfig::load_default()?),
//!     Default::default(),
//! )?;
//! let store = haul::store::Store::open("/tmp/haul-store")?;
//! // Content trust follows the config file (and DOCKER_CONTENT_TRUST): when it is on, every pull
//! // checks the image's signatures before downloading anything.
//! let puller = haul::pull::Puller::new(client, store, haul::pull::PullOptions {
//!     max_concurrent_downloads: config.max_concurrent_downloads,
//!     trust: config.trust.clone(),
//!     ..Default::default()
//! });
//! let outcome = puller.pull(&"alpine".parse()?, Arc::new(haul::progress::Silent)).await?;
//! println!("{} is {}", outcome.reference, outcome.resolved);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod archive;
pub mod bundle;
pub mod config;
pub mod digest;
pub mod gc;
pub mod images;
pub mod info;
pub mod inspect;
pub mod login;
pub mod manifest;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod space;
pub mod store;
pub mod tag;
pub mod trust;
pub mod unpack;
pub mod verify;
