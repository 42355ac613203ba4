//! What one image's extractions share, and how an extracted layer becomes visible.
//!
//! Promises:
//! - **Nothing half-made is visible.** An extracted layer waits in its staging directory, holding
//!   its chain ID's lock, until [`Session::publish`] renames it into place; dropped unpublished,
//!   its staging directory is removed.
//! - **A stopped session publishes nothing.** Once [`Session::stop`] is called, extractions still
//!   running fail at their next read, nothing more is published, and the caller gets back the
//!   chain IDs published so far to [take back](super::LayerCache::take_back).
//! - **Waiting for the end is bounded.** [`Session::wait_idle`] returns once no extraction's
//!   staging directory exists, or after the patience given.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::super::budget::ImageBudget;
use super::super::image::{UnpackError, remove_tree};
use super::{CachedLayer, LayerMeta};
use crate::digest::Digest;
use crate::store::{FileLock, Store};

/// An extracted, verified layer in its staging directory, holding the layer's lock.
pub struct PendingLayer {
    pub(super) store: Store,
    pub(super) staging: PathBuf,
    pub(super) final_dir: PathBuf,
    pub(super) meta: Option<LayerMeta>,
    pub(super) published: bool,
    pub(super) _lock: FileLock,
    /// Declared after the lock and dropped after `Drop::drop` removed the staging directory.
    pub(super) _active: Active,
}

impl PendingLayer {
    /// Makes the entry visible under its chain ID.
    fn publish(mut self) -> Result<CachedLayer, UnpackError> {
        let meta = self.meta.take().ok_or_else(|| UnpackError::Io {
            path: self.staging.clone(),
            source: std::io::Error::other("layer entry published twice"),
        })?;
        self.store
            .rename_into_place(&self.staging, &self.final_dir)?;
        self.published = true;
        Ok(CachedLayer {
            dir: self.final_dir.clone(),
            meta,
        })
    }
}

impl Drop for PendingLayer {
    fn drop(&mut self) {
        if !self.published {
            let _ = remove_tree(&self.staging);
        }
    }
}

/// What one image's extractions share: the budget they write within and, for a pull, the
/// entries they published, so that a pull that fails can take them back. Once stopped, its
/// extractions still running fail at their next read and publish nothing.
#[derive(Clone, Debug)]
pub struct Session {
    budget: Arc<ImageBudget>,
    state: Arc<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    stopped: AtomicBool,
    published: Mutex<Vec<Digest>>,
    /// Extractions under way (staging directories that exist), and a signal when one ends.
    active: Mutex<usize>,
    idle: Condvar,
}

/// One extraction of a session under way; its staging directory is gone when this drops.
#[derive(Debug)]
pub(super) struct Active(Arc<SessionState>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut active = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = active.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

impl Session {
    /// A session whose extractions write within `budget`.
    #[must_use]
    pub fn new(budget: ImageBudget) -> Self {
        Session {
            budget: Arc::new(budget),
            state: Arc::default(),
        }
    }

    /// What the session's extractions write within.
    #[must_use]
    pub fn budget(&self) -> &Arc<ImageBudget> {
        &self.budget
    }

    /// Whether [`Session::stop`] was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.state.stopped.load(Ordering::Relaxed)
    }

    /// Makes `pending` visible unless the session was stopped (then its staging directory goes).
    ///
    /// # Errors
    ///
    /// [`UnpackError::Stopped`] once the session is stopped; [`UnpackError::Store`] when the
    /// entry cannot be renamed into place.
    pub fn publish(&self, pending: PendingLayer) -> Result<CachedLayer, UnpackError> {
        let mut published = self
            .state
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_stopped() {
            return Err(UnpackError::Stopped);
        }
        let cached = pending.publish()?;
        published.push(cached.meta.chain_id.clone());
        Ok(cached)
    }

    /// Stops the session: nothing more is published. Returns the chain IDs it published.
    #[must_use = "the entries the session published, for the caller to take back or keep"]
    pub fn stop(&self) -> Vec<Digest> {
        let mut published = self
            .state
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.state.stopped.store(true, Ordering::Relaxed);
        std::mem::take(&mut *published)
    }

    /// Waits (blocking) until no extraction of the session is under way, at most `patience`:
    /// a stopped extraction ends at its next read and removes its staging directory.
    pub fn wait_idle(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        while *active > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    extractions = *active,
                    "extractions still running after the pull failed"
                );
                return;
            }
            active = match self.state.idle.wait_timeout(active, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
    }

    pub(super) fn enter(&self) -> Active {
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        *active += 1;
        Active(self.state.clone())
    }
}
