//! Turning layer blobs into a root filesystem: each layer decompressed and hashed against its
//! diff_id while its tar is applied with whiteouts, every path confined to the root; each layer
//! extracted once into the layer cache and merged from there.
//!
//! Two ways in:
//! - [`unpack`] makes a stored image's root filesystem in a directory, through the layer cache,
//!   publishing the tree only once it is complete: a new directory appears whole, and an
//!   existing one (an empty mount point included) gets the tree moved in at the end (see
//!   `staging` for where it is built and what a killed unpack leaves). [`Haul::unpack`] pulls the
//!   image first when the store lacks it; this is the step on its own.
//! - [`apply_layer`] applies one layer's uncompressed tar onto a directory, as docker and
//!   containerd apply OCI changesets, for callers that manage their own layers (snapshotters,
//!   composefs-style stores). Decompressing the blob and checking its diff_id is then the
//!   caller's job.
//!
//! Both refuse anything that would reach outside the target: see [`apply_layer`] for the
//! promises. What a failure means is in [`UnpackError`] and [`ApplyError`]; a layer stopped for
//! what it would write says which limit in [`Exceeded`].
//!
//! [`Haul::unpack`]: crate::Haul::unpack

pub(crate) mod apply;
pub(crate) mod budget;
pub mod cache;
pub(crate) mod compare;
pub(crate) mod dirtar;
pub(crate) mod image;
pub(crate) mod staging;
pub(crate) mod stream;

pub use apply::{
    ApplyError, ApplyOptions, ApplyStats, HardlinkProblem, MAX_EXTENSION, SparseProblem,
    apply_layer,
};
pub use budget::Exceeded;
pub use compare::{Alteration, Change};
pub use image::{
    DEFAULT_EXPANSION_RATIO, DEFAULT_MIN_LAYER_LIMIT, UnpackError, UnpackOptions, UnpackStats,
    unpack,
};
pub use stream::{StreamError, gzip_inflater};

// The layer cache's own mode of the applier and its reading back, which only the cache uses. They
// stay reachable, hidden, because the round-trip tests drive them directly on tars made by GNU
// tar, test-registry's builder and proptest (tests/layer_cache_roundtrip.rs, sparse.rs and
// parsers_prop.rs's hostile-tar property): not an API, and free to change with the cache.
#[doc(hidden)]
pub use apply::{DeferredLink, apply_layer_for_cache};
#[doc(hidden)]
pub use dirtar::{tar_cached, tar_dir};
