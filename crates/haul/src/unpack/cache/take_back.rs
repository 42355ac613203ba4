//! Taking back what a failed pull published: each entry no ref reaches and nobody holds is
//! removed; the others stay (another pull or an unpack may be using them, and a prune collects
//! them once unused). Nothing is removed when the refs cannot be read.

use std::collections::HashSet;

use super::super::image::UnpackError;
use super::keys::{cache_keys, chain_ids};
use super::{LayerCache, layer_lock_name};
use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, Manifest};
use crate::store::{FileLock, StoreError};

impl LayerCache<'_> {
    /// Takes back entries a failed pull published (`chain_ids`): each one no ref reaches and
    /// nobody holds is removed; the others stay (another pull or an unpack may be using them, and
    /// a prune collects them once unused). Nothing is removed when the refs cannot be read.
    /// Returns the chain IDs removed.
    pub fn take_back(&self, chain_ids: &[Digest]) -> Vec<Digest> {
        // Locked first, so no reader starts on them while the refs are read.
        let mut held: Vec<(&Digest, FileLock)> = Vec::new();
        for chain_id in chain_ids {
            if let Ok(Some(lock)) = self.store.try_lock_exclusive(&layer_lock_name(chain_id)) {
                held.push((chain_id, lock));
            }
        }
        if held.is_empty() {
            return Vec::new();
        }
        let reachable = match self.reachable_layers() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot tell which layer-cache entries refs reach, keeping them: {e}"
                );
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for (chain_id, _lock) in held {
            if reachable.contains(chain_id) {
                continue;
            }
            match self.remove_locked(chain_id) {
                Ok(true) => removed.push(chain_id.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(%chain_id, "cannot remove a layer-cache entry: {e}"),
            }
        }
        removed
    }

    /// Every layer-cache key the refs' images use (chain IDs and [`cache_keys`]).
    fn reachable_layers(&self) -> Result<HashSet<Digest>, UnpackError> {
        let mut out = HashSet::new();
        let mut seen = HashSet::new();
        let mut todo: Vec<(Descriptor, usize)> = self
            .store
            .refs()?
            .into_iter()
            .map(|r| (r.manifest, 0))
            .collect();
        while let Some((descriptor, depth)) = todo.pop() {
            if depth > 4 || !seen.insert(descriptor.digest.clone()) {
                continue;
            }
            let bytes = match self
                .store
                .read_blob(&descriptor.digest, manifest::MAX_MANIFEST_BYTES as u64)
            {
                Ok(b) => b,
                // An index child another tool did not store.
                Err(StoreError::Missing(_)) if depth > 0 => continue,
                Err(e) => return Err(e.into()),
            };
            let bad = |source| UnpackError::Manifest {
                reference: descriptor.digest.to_string(),
                source,
            };
            match manifest::parse(Some(&descriptor.media_type), &bytes).map_err(bad)? {
                Manifest::Index(index) => {
                    todo.extend(index.manifests.into_iter().map(|m| (m, depth + 1)));
                }
                Manifest::Image(image) => {
                    let config = self
                        .store
                        .read_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
                    let config = ImageConfig::parse(&config).map_err(bad)?;
                    out.extend(chain_ids(&config.rootfs.diff_ids));
                    out.extend(cache_keys(&config.rootfs.diff_ids));
                }
            }
        }
        Ok(out)
    }
}
