//! Checking a cache entry against its blob: a fresh extraction beside the entry, with the
//! privileges the entry was built with, compared entry by entry as the tar streams both replay;
//! the first difference is returned, and the fresh extraction is removed whatever happens.

use std::path::PathBuf;

use super::super::apply::ApplyOptions;
use super::super::budget::ImageBudget;
use super::super::compare::{Alteration, Change, Compare, first_difference};
use super::super::image::{UnpackError, UnpackOptions, remove_tree};
use super::session::Session;
use super::{CachedLayer, DIFF_DIR, LayerCache, LayerJob};

impl LayerCache<'_> {
    /// Compares `cached` (the entry of `job.chain_id`, which the caller holds with
    /// [`read_lock`](LayerCache::read_lock)) with a fresh extraction of the layer's blob, which the
    /// caller has verified. Returns the first difference. The extraction runs beside the entry
    /// with the privileges the entry was built with (the caller skips a privileged entry when it
    /// has none) and is removed after.
    pub(crate) fn check(
        &self,
        job: &LayerJob<'_>,
        cached: &CachedLayer,
    ) -> Result<Option<Alteration>, UnpackError> {
        let privileged = cached.meta.privileged;
        let options = UnpackOptions {
            apply: ApplyOptions {
                preserve_ownership: privileged,
                allow_devices: privileged,
                xattrs: true,
            },
            ..UnpackOptions::for_current_user()
        };
        let final_dir = self.layer_dir(job.chain_id);
        let staging = final_dir.with_file_name(format!(
            ".tmp-{}-{}-{:08x}",
            job.chain_id.hex(),
            std::process::id(),
            fastrand::u32(..)
        ));
        let _cleanup = RemoveOnDrop(staging.clone());
        // 0700 until the layer's own `.` entry, if any, gives it a mode (as in `extract_from`).
        self.store.create_private_dir(&staging.join(DIFF_DIR))?;
        let blob = super::super::stream::stored_blob(self.store, &job.layer.digest)?;
        let session = Session::new(ImageBudget::new(
            &options,
            job.layer.size,
            self.store.root(),
            0,
        ));
        let meta = match self.build_entry(&staging, job, &options, None, &session, blob) {
            Ok(meta) => meta,
            Err(e) => {
                return Ok(Some(Alteration {
                    path: PathBuf::new(),
                    change: Change::Unverifiable(e.to_string()),
                }));
            }
        };
        if meta.diff_id != cached.meta.diff_id || meta.deferred_links != cached.meta.deferred_links
        {
            return Ok(Some(Alteration {
                path: PathBuf::new(),
                change: Change::Metadata,
            }));
        }
        let fresh = CachedLayer {
            dir: staging.clone(),
            meta,
        };
        let layer = fresh.tar().map_err(|source| UnpackError::Io {
            path: staging.clone(),
            source,
        })?;
        let found = match cached.tar() {
            Ok(stream) => stream,
            Err(e) => {
                return Ok(Some(Alteration {
                    path: PathBuf::new(),
                    change: Change::Unreadable(e.to_string()),
                }));
            }
        };
        let how = Compare {
            owners: privileged,
            all_xattrs: privileged == rustix::process::geteuid().is_root(),
        };
        first_difference(layer, found, how).map_err(|source| UnpackError::Io {
            path: staging.clone(),
            source,
        })
    }
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}
