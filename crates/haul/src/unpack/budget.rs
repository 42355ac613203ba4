//! How many bytes extracting an image may write, so that a layer is stopped by what it would
//! write and not by the disk filling up.
//!
//! Promises:
//! - **Charged before written.** The applier charges every entry before creating it: one 512-byte
//!   block for its header, plus, for a regular file, the size it will have. A sparse file is
//!   charged its real size, holes included (a hole costs nothing today but anyone writing to the
//!   file later fills it). An entry that would pass a limit is refused before its first byte.
//! - **Three limits.** Per layer: [`UnpackOptions::limit_for`] its compressed size (64× by
//!   default, at least 16 GiB). Per image: the same rule applied to the compressed size of all its
//!   layers, shared by layers extracted at the same time. And the free space of the filesystem
//!   the layers are extracted to, as measured when the image's extraction started, less what the
//!   pull still has to download there.
//! - **A failed layer gives back what it charged**, so a layer extracted again (after a
//!   download restarted) is not counted twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::image::UnpackOptions;
use crate::space::{self, Size};

/// What the applier charges for every entry besides file content: its header block.
pub const ENTRY_OVERHEAD: u64 = 512;

/// The limit an entry would have passed, as the `reason` of [`ApplyError::TooLarge`].
///
/// Limits are in bytes of what extraction writes: per entry its 512-byte header plus, for a
/// regular file, its size (a sparse file's real size, holes included).
///
/// [`ApplyError::TooLarge`]: super::ApplyError::TooLarge
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// One layer would write more than [`UnpackOptions::limit_for`] its compressed size.
    #[error(
        "the layer expands past {} ({limit} bytes), the most one layer may expand to",
        Size(*limit)
    )]
    Layer {
        /// The layer's limit, in bytes.
        limit: u64,
    },
    /// The image's layers together would write more than [`UnpackOptions::limit_for`] the
    /// compressed size of all its distinct layers.
    #[error(
        "the image's layers together expand past {} ({limit} bytes), the most an image may \
         expand to",
        Size(*limit)
    )]
    Image {
        /// The image's limit, in bytes.
        limit: u64,
    },
    /// The filesystem the layers are extracted to would fill: a full disk, of kind
    /// [`crate::ErrorKind::NoSpace`].
    #[error(
        "the pull needs more than {} and {} was free under {} when it started",
        Size(*need),
        Size(*free),
        root.display()
    )]
    Space {
        /// Bytes the extraction (and the downloads still to come) would have needed there.
        need: u64,
        /// Bytes free on that filesystem when the extraction started.
        free: u64,
        /// The directory whose filesystem was measured (the store's root).
        root: PathBuf,
    },
}

/// Free space on the filesystem extraction writes to.
#[derive(Debug, Clone)]
struct Space {
    free: u64,
    /// Bytes already spoken for there (downloads still to come).
    reserved: u64,
    root: PathBuf,
}

/// The budget of one image's extraction, shared by its layers.
#[derive(Debug)]
pub struct ImageBudget {
    limit: u64,
    space: Option<Space>,
    charged: AtomicU64,
}

impl ImageBudget {
    /// The budget for an image whose distinct layers have `compressed` bytes in all, extracted
    /// to the filesystem holding `root`, where `reserved` bytes are still to be downloaded.
    /// A filesystem that cannot tell its free space does not limit.
    pub fn new(options: &UnpackOptions, compressed: u64, root: &Path, reserved: u64) -> Self {
        let free = match space::free_bytes(root) {
            Ok(free) => Some(free),
            Err(e) => {
                tracing::debug!(root = %root.display(), error = %e, "free space unknown");
                None
            }
        };
        ImageBudget::with_free(options, compressed, free, reserved, root)
    }

    /// [`ImageBudget::new`] with the free space already measured (`None`: unknown).
    pub fn with_free(
        options: &UnpackOptions,
        compressed: u64,
        free: Option<u64>,
        reserved: u64,
        root: &Path,
    ) -> Self {
        ImageBudget {
            limit: options.limit_for(compressed),
            space: free.map(|free| Space {
                free,
                reserved,
                root: root.to_owned(),
            }),
            charged: AtomicU64::new(0),
        }
    }

    /// A budget without limits, for callers that bound extraction otherwise.
    pub fn unlimited() -> Self {
        ImageBudget {
            limit: u64::MAX,
            space: None,
            charged: AtomicU64::new(0),
        }
    }

    /// Bytes charged so far by layers that are extracted or being extracted.
    #[cfg(test)]
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// The most any one layer's uncompressed stream may hold.
    fn cap(&self) -> u64 {
        let space = self
            .space
            .as_ref()
            .map_or(u64::MAX, |s| s.free.saturating_sub(s.reserved));
        self.limit.min(space)
    }

    fn charge(&self, bytes: u64) -> Result<(), Exceeded> {
        let mut refused = None;
        let result = self
            .charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                let next = current.saturating_add(bytes);
                if next > self.limit {
                    refused = Some(Exceeded::Image { limit: self.limit });
                    return None;
                }
                if let Some(space) = &self.space {
                    let need = space.reserved.saturating_add(next);
                    if need > space.free {
                        refused = Some(Exceeded::Space {
                            need,
                            free: space.free,
                            root: space.root.clone(),
                        });
                        return None;
                    }
                }
                Some(next)
            });
        match (result, refused) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(why)) => Err(why),
            (Err(_), None) => Err(Exceeded::Image { limit: self.limit }),
        }
    }

    fn refund(&self, bytes: u64) {
        let _ = self
            .charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(bytes))
            });
    }
}

/// One layer's share: its own limit, and the image's budget behind it. Dropped without
/// [`LayerBudget::keep`], it gives back what it charged.
#[derive(Debug)]
pub struct LayerBudget {
    image: Arc<ImageBudget>,
    limit: u64,
    charged: u64,
    kept: bool,
}

impl LayerBudget {
    /// The share of a layer of `compressed` bytes.
    pub fn new(image: Arc<ImageBudget>, options: &UnpackOptions, compressed: u64) -> Self {
        LayerBudget {
            image,
            limit: options.limit_for(compressed),
            charged: 0,
            kept: false,
        }
    }

    /// The most the layer's uncompressed stream may hold: a stream longer than that cannot be
    /// extracted within the limits (every byte of it is an entry's header or content), so the
    /// decompression stops there too.
    pub fn stream_limit(&self) -> u64 {
        self.limit.min(self.image.cap())
    }

    /// Charges `bytes` about to be written; refused when a limit would be passed.
    pub fn charge(&mut self, bytes: u64) -> Result<(), Exceeded> {
        let next = self.charged.saturating_add(bytes);
        if next > self.limit {
            return Err(Exceeded::Layer { limit: self.limit });
        }
        self.image.charge(bytes)?;
        self.charged = next;
        Ok(())
    }

    /// The layer was extracted: its charges stay.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for LayerBudget {
    fn drop(&mut self) {
        if !self.kept {
            self.image.refund(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ratio: u64, min: u64) -> UnpackOptions {
        UnpackOptions {
            expansion_ratio: ratio,
            min_layer_limit: min,
            ..UnpackOptions::for_current_user()
        }
    }

    fn image(limit: u64, space: Option<(u64, u64)>) -> Arc<ImageBudget> {
        Arc::new(ImageBudget {
            limit,
            space: space.map(|(free, reserved)| Space {
                free,
                reserved,
                root: PathBuf::from("/store"),
            }),
            charged: AtomicU64::new(0),
        })
    }

    #[test]
    fn a_layer_stops_at_its_own_limit() {
        let opts = options(10, 100);
        let mut layer = LayerBudget::new(image(u64::MAX, None), &opts, 50);
        assert_eq!(layer.limit, 500);
        layer.charge(400).unwrap();
        assert_eq!(layer.charge(101), Err(Exceeded::Layer { limit: 500 }));
        layer.charge(100).unwrap();
        // Small layers get the minimum.
        assert_eq!(LayerBudget::new(image(u64::MAX, None), &opts, 1).limit, 100);
    }

    #[test]
    fn layers_share_the_image_budget_and_give_back_what_failed() {
        let opts = options(1000, 1000);
        let img = image(1000, None);
        let mut a = LayerBudget::new(img.clone(), &opts, 1);
        let mut b = LayerBudget::new(img.clone(), &opts, 1);
        a.charge(600).unwrap();
        assert_eq!(b.charge(500), Err(Exceeded::Image { limit: 1000 }));
        b.charge(400).unwrap();
        a.keep();
        drop(b);
        assert_eq!(img.charged(), 600, "the failed layer's 400 came back");
    }

    #[test]
    fn free_space_counts_what_is_still_to_download() {
        let opts = options(1000, 1 << 40);
        let img = image(u64::MAX, Some((1000, 300)));
        let mut layer = LayerBudget::new(img, &opts, 1);
        assert_eq!(layer.stream_limit(), 700);
        layer.charge(700).unwrap();
        assert_eq!(
            layer.charge(1),
            Err(Exceeded::Space {
                need: 1001,
                free: 1000,
                root: PathBuf::from("/store")
            })
        );
    }

    #[test]
    fn limits_do_not_overflow() {
        let opts = options(u64::MAX, u64::MAX);
        let mut layer = LayerBudget::new(image(u64::MAX, Some((1 << 62, 10))), &opts, u64::MAX);
        assert!(layer.charge(u64::MAX).is_err());
        layer.charge(1 << 60).unwrap();
    }
}
