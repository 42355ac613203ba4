//! The uncompressed size of each layer, recorded on the ref the pull publishes
//! ([`images::LAYER_SIZES_ANNOTATION`]) so that `images`, `history` and `inspect` show docker's unpacked
//! size by reading `index.json` alone.
//!
//! The sizes come from what the pull already measured: an extraction hashes every uncompressed
//! byte against the diff_id and keeps the count in its layer-cache entry. A pull with
//! `--no-unpack` decompresses nothing, so it records only what it knows without doing so (an
//! uncompressed layer, a layer extracted before); the others stay unknown until an unpack or a
//! later pull extracts them.

use crate::digest::Digest;
use crate::images;
use crate::store::Store;

/// The annotation value for layers given as (media type, size, diff_id, chain ID); `None` when no
/// size is known. Reads the layer cache: blocks.
pub(super) fn record(store: &Store, layers: &[(String, u64, Digest, Digest)]) -> Option<String> {
    let sizes: Vec<Option<u64>> = layers
        .iter()
        .map(|(media_type, size, diff_id, chain_id)| {
            images::known_uncompressed(store, media_type, *size, diff_id, chain_id)
        })
        .collect();
    images::encode_recorded(&sizes)
}
