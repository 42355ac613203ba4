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
use crate::store::{RefEntry, Store};

/// The annotation value for layers given as (media type, size, diff_id, chain ID); `None` when no
/// size is known. What `previous` (the ref being replaced, when it names the same manifest)
/// recorded is kept where nothing is known now: a `--no-unpack` pull after a prune of the layer
/// cache forgets nothing. Reads the layer cache: blocks.
pub(super) fn record(
    store: &Store,
    layers: &[(String, u64, Digest, Digest)],
    previous: Option<&RefEntry>,
) -> Option<String> {
    let kept = previous
        .and_then(|p| images::parse_recorded(p, layers.len()))
        .unwrap_or_default();
    let sizes: Vec<Option<u64>> = layers
        .iter()
        .enumerate()
        .map(|(i, (media_type, size, diff_id, chain_id))| {
            images::known_uncompressed(store, media_type, *size, diff_id, chain_id)
                .or_else(|| kept.get(i).copied().flatten())
        })
        .collect();
    images::encode_recorded(&sizes)
}
