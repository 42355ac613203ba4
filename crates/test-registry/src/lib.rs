//! Test support for `haul`: everything a test needs to pull from a registry on loopback,
//! without the internet and without depending on `haul` itself (so a digest bug in haul can't
//! be mirrored here and cancel out: hashing is `sha2`, tars are `tar` + `flate2`, HTTP is
//! `reqwest` and `axum`).
//!
//! - [`RealRegistry`]: Debian's `docker-registry` (CNCF distribution 2.8) on a free port with a
//!   temporary root, optional htpasswd or token auth, pull-through-cache mode, and its access log
//!   parsed ([`RealRegistry::count`]).
//! - [`ImageBuilder`], [`LayerBuilder`], [`random_layer`], [`layer_from_dir`], [`index`]:
//!   deterministic images (same inputs, same digests), OCI or Docker schema 2.
//! - [`Pusher`]: pushes blobs, images and indexes through the HTTP API.
//! - [`TokenIssuer`]: Docker Hub's token flow with ES256 JWTs the real registry verifies.
//! - [`FakeRegistry`] and [`BlobHost`]: an in-process registry with injectable [`Fault`]s and a
//!   request log, for what a real registry won't do; [`SlowHeaders`], a server that never
//!   finishes a response's head.
//! - [`ReferrersRegistry`]: an in-memory registry with the OCI 1.1 referrers API and pushes.
//! - [`Tree`] and [`assert_same_tree`]: a directory tree compared entry by entry with an oracle's.
//! - [`Containers`] (podman, buildah on a private storage), [`skopeo`], [`umoci_unpack`],
//!   [`gnu_tar_extract`]: the real producers and oracles.
//! - [`HttpProxy`]: a forward HTTP proxy (absolute-form requests and `CONNECT`) that records
//!   each request and the `Proxy-Authorization` it carried.
//! - [`ThrottleProxy`]: a reverse proxy in front of a registry that caps each connection's rate
//!   (a CDN, a long-RTT link), may ignore `Range`, and counts connections and ranges.
//!
//! ```no_run
//! use test_registry::{Format, ImageBuilder, Pusher, RealRegistry, RegistryOptions, random_layer};
//!
//! # async fn demo() -> Result<(), test_registry::TestError> {
//! let registry = RealRegistry::start(RegistryOptions::default()).await?;
//! let image = ImageBuilder::new(Format::Oci)
//!     .platform("linux", "arm64", Some("v8"))
//!     .layer(random_layer(1, 100_000))
//!     .build();
//! Pusher::new(&registry.url()).push_image("demo/app", "latest", &image).await?;
//! // … pull `{registry.host()}/demo/app:latest` with haul, then:
//! assert_eq!(registry.count("GET", &image.layers[0].blob.digest), 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod disk;
mod error;
mod fake;
mod image;
mod proxy;
mod push;
mod referrers;
mod registry;
mod server;
mod throttle;
mod token;
mod tools;
mod tree;
mod util;

pub use disk::SmallDisk;
pub use error::{Result, TestError};
pub use fake::{
    BlobHost, FakeAuth, FakeRegistry, FakeRegistryOptions, Fault, RecordedRequest, SlowHeaders,
};
pub use image::{
    Blob, EntryType, FIXED_CREATED, FIXED_MTIME, Format, Image, ImageBuilder, Index, Layer,
    LayerBuilder, RawEntry, gzip, index, layer_from_dir, layer_from_dir_at, media_types,
    pseudo_text, random_layer, raw_index, schema1_manifest,
};
pub use proxy::{HttpProxy, HttpProxyOptions, ProxiedRequest};
pub use push::Pusher;
pub use referrers::ReferrersRegistry;
pub use registry::{
    AccessLogEntry, DEFAULT_REGISTRY_BIN, RealRegistry, RegistryOptions, TokenAuthConfig,
    parse_access_line,
};
pub use throttle::{ThrottleOptions, ThrottleProxy, ThrottledRequest};
pub use token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer, TokenIssuerOptions, TokenRequest};
pub use tools::{Containers, gnu_tar_extract, run_tool, skopeo, umoci_unpack};
pub use tree::{Compare, Node, NodeKind, Tree, assert_same_tree};
pub use util::{http_client, install_crypto_provider, sha256_digest, sha512_digest};
