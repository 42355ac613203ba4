//! Turning layer blobs into a root filesystem: each layer decompressed and hashed against its
//! diff_id while its tar is applied with whiteouts, every path confined to the root; each layer
//! extracted once into the layer cache and merged from there.

pub mod apply;
pub mod budget;
pub mod cache;
pub mod compare;
pub mod dirtar;
pub mod image;
pub mod stream;
