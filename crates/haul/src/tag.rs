//! Naming and unnaming images: docker's `tag` and `rmi`.
//!
//! Both only change refs in `index.json` (under its lock, atomically). A new tag is a copy of the
//! source ref (same manifest descriptor, registry digest and annotations) under another name.
//! Removing a name never deletes content: blobs stay until a prune finds nothing reaches them, so
//! an `rmi` can be undone by `tag` or a pull that makes no request.

use crate::inspect::{self, InspectError};
use crate::reference::Reference;
use crate::store::{RefEntry, Store, StoreError};

/// Why [`tag`] or [`untag`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// The image named is not in the store, or an ID prefix is ambiguous
    /// ([`InspectError::NoSuchImage`], [`InspectError::AmbiguousId`]), or its manifest cannot
    /// be read.
    #[error(transparent)]
    NotFound(#[from] InspectError),
    /// The new name has a digest: a tag names an image by tag only (docker's text).
    #[error("refusing to create a tag with a digest reference")]
    DigestTarget {
        /// The name refused, in full.
        target: String,
    },
    /// An image ID was given without `force` and the image has names in several repositories,
    /// which would all go at once (docker's text).
    #[error(
        "conflict: unable to delete {short_id} (must be forced) - image is referenced in multiple \
         repositories"
    )]
    MultipleRepositories {
        /// The image ID's first 12 hex characters, as docker shows it.
        short_id: String,
        /// Every name of the image (full references), in index order.
        names: Vec<String>,
    },
    /// `index.json` could not be read, locked or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Names `source`'s image (a name or an image ID) `target` as well, replacing any image `target`
/// named before. Returns the new ref. Content is not touched: the new ref shares the source's
/// manifest. The store's work runs on a blocking thread.
///
/// # Errors
///
/// [`TagError::DigestTarget`] for a `target` with a digest, [`TagError::NotFound`] when `source`
/// names no image (or several), [`TagError::Store`] when `index.json` cannot be updated.
pub async fn tag(store: &Store, source: &str, target: &Reference) -> Result<RefEntry, TagError> {
    if target.digest().is_some() {
        return Err(TagError::DigestTarget {
            target: target.to_string(),
        });
    }
    let (s, source, target) = (store.clone(), source.to_owned(), target.to_string());
    blocking(store, move || tag_blocking(&s, &source, target)).await
}

fn tag_blocking(store: &Store, source: &str, target: String) -> Result<RefEntry, TagError> {
    let image = inspect::find(store, source)?;
    // The first ref found: for an ID every ref names the same config, and any of them will do.
    let Some(from) = image.matched.into_iter().next() else {
        return Err(InspectError::NoSuchImage(source.to_owned()).into());
    };
    let entry = RefEntry {
        name: target,
        ..from
    };
    store.set_ref(&entry)?;
    Ok(entry)
}

/// Removes the names `image` stands for: the one ref a name matches, or every ref of the image
/// for an image ID (refused without `force` when they span several repositories, as docker
/// does). Returns the removed names (full references) in index order; a ref another process
/// removed meanwhile is not among them. Content stays. The store's work runs
/// on a blocking thread.
///
/// # Errors
///
/// [`TagError::NotFound`] when `image` names no image (or several),
/// [`TagError::MultipleRepositories`] as above, [`TagError::Store`] when `index.json` cannot be
/// updated (refs removed before the failure stay removed).
pub async fn untag(store: &Store, image: &str, force: bool) -> Result<Vec<String>, TagError> {
    let (s, image) = (store.clone(), image.to_owned());
    blocking(store, move || untag_blocking(&s, &image, force)).await
}

fn untag_blocking(store: &Store, image: &str, force: bool) -> Result<Vec<String>, TagError> {
    let found = inspect::find(store, image)?;
    let targets: Vec<RefEntry> = if !found.by_id {
        found.matched
    } else {
        let repositories: std::collections::BTreeSet<String> = found
            .names
            .iter()
            .filter_map(|e| e.name.parse::<Reference>().ok())
            .map(|r| r.name())
            .collect();
        if repositories.len() > 1 && !force {
            return Err(TagError::MultipleRepositories {
                short_id: found.id.short().to_owned(),
                names: found.names.into_iter().map(|e| e.name).collect(),
            });
        }
        found.names
    };
    let mut removed = Vec::new();
    for entry in targets {
        // Another process may have removed it meanwhile: that is the outcome asked for.
        if store.remove_ref(&entry.name)? {
            removed.push(entry.name);
        }
    }
    Ok(removed)
}

/// Runs `f`, the store's work, on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce() -> Result<T, TagError> + Send + 'static,
) -> Result<T, TagError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::task(store.root(), e))?
}
