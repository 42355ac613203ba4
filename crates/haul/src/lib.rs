//! haul: pull OCI and Docker images from any registry into a verified OCI image layout, without a
//! daemon.
//!
//! The front door is [`Haul`]: set up once from the config file, the store and docker's
//! credentials (each can be given in code instead, see [`HaulBuilder`]), it pulls images, checks
//! content trust when the configuration or the caller turns it on, and unpacks root filesystems
//! and runtime bundles.
//!
//! ```no_run
//! use std::sync::Arc;
//! # async fn demo() -> Result<(), haul::Error> {
//! let haul = haul::Haul::builder().root("/tmp/haul-store").build()?;
//! let done = haul
//!     .unpack("alpine:3.20", "/tmp/alpine".as_ref(), Arc::new(haul::progress::Silent))
//!     .await?;
//! println!("{} is {}", done.image.name, done.image.resolved);
//! # Ok(()) }
//! ```
//!
//! Errors say their [`ErrorKind`] (not found, unauthorized, denied by policy, integrity, no
//! space, network…), with the module's typed error as the source. Progress reaches a
//! [`progress::Reporter`] of the caller's. `examples/` has a pull-and-unpack program and a custom
//! progress reporter.
//!
//! The pieces behind the front door, in the order a pull uses them: [`reference`](mod@reference)
//! parses and normalises a name, [`config`] reads the configuration file, [`registry`] talks to
//! the registry (challenges, tokens, credentials, retries, resumable verified blob downloads),
//! [`manifest`] and [`platform`] read manifests and pick the image for a platform, [`digest`]
//! verifies content, [`store`] keeps it in an OCI layout, [`trust`] checks signatures, [`pull`]
//! orchestrates it all and [`unpack`] makes root filesystems of it. The store's other commands
//! have a module each: [`images`], [`inspect`], [`tag`], [`gc`], [`verify`], [`archive`]
//! (`docker save`/`load`), [`bundle`], [`info`] and [`login`].
//!
//! # Cargo features
//!
//! - `trust` (on by default): signature verification and signing (cosign, Notation), about a
//!   third of the dependencies. Without it a puller asked to check content trust refuses to pull
//!   ([`pull::PullError::TrustUnavailable`]) rather than pull unchecked.
//! - `isal` (on by default): gzip layers inflate with ISA-L, the library `igzip` runs on, with
//!   about 15% less CPU than zlib-rs, where its headers were there at build time (Debian:
//!   libisal-dev) and `libisal.so.2` is at run time; zlib-rs otherwise. The FFI lives in the
//!   `haul-isal` crate so this one stays free of unsafe code. [`unpack::gzip_inflater`] says
//!   which one a process uses.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::missing_errors_doc,
    clippy::missing_panics_doc,
    clippy::must_use_candidate
)]

pub mod archive;
pub mod bundle;
pub mod config;
pub mod digest;
mod error;
mod front;
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
mod space;
pub mod store;
pub mod tag;
pub mod trust;
pub mod unpack;
pub mod verify;

pub use error::{Error, ErrorKind};
pub use front::{Haul, HaulBuilder, Unpacked};
