//! What can go wrong with a store: its disk, its content, or who else can change it.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, VerifyError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file of the store failed (a full disk is one: its
    /// [`crate::Error`] kind is [`crate::ErrorKind::NoSpace`]).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory, under the store's root.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Content being added is not what its digest or size says.
    #[error("content for {digest} failed verification: {source}")]
    Verify {
        /// The digest the content was added under.
        digest: Digest,
        /// What was wrong with it.
        #[source]
        source: VerifyError,
    },
    /// The directory is not an OCI image layout haul can use (`oci-layout` or `index.json` of
    /// another version, or not JSON).
    #[error("{path} is not a usable OCI image layout: {reason}")]
    BadLayout {
        /// The file that is wrong.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob read whole ([`Store::read_blob`](super::Store::read_blob)) is larger than the
    /// caller's limit.
    #[error("blob {digest} is larger than the {limit} bytes haul reads into memory")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The limit it exceeds, in bytes.
        limit: u64,
    },
    /// The blob is not in the store.
    #[error("blob {0} is not in the store")]
    Missing(Digest),
    /// Someone else owns the store (or a directory in it): whatever they put there, haul would
    /// trust.
    #[error(
        "{path} belongs to uid {owner} (mode {mode:04o}), not to you (uid {you}), and whoever \
         owns the store decides what haul would trust; use a store of your own, or, if you trust \
         its content, take it over with `chown -R {you} {store}`"
    )]
    ForeignOwner {
        /// The store's root.
        store: PathBuf,
        /// The directory owned by someone else.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
        /// The user haul runs as.
        you: u32,
    },
    /// Group or others may write in the store: its content cannot be trusted.
    #[error(
        "{path} is mode {mode:04o} (owner uid {owner}): other users can write in the store, so \
         its content cannot be trusted; if nobody else did, run `chmod -R go-w {store}` (haul \
         then makes it private), else remove the store"
    )]
    WritableByOthers {
        /// The store's root.
        store: PathBuf,
        /// The directory others may write in.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
    },
    /// A directory on the way to the store lets another user swap the store for their own.
    #[error(
        "{dir} (owner uid {owner}, mode {mode:04o}) lets another user replace the store at \
         {store} with their own; put the store under directories only you or root can write"
    )]
    ReplaceableParent {
        /// The store's root.
        store: PathBuf,
        /// The directory on the way to it.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
    },
    /// Something that is not haul's own file or directory where haul keeps one: never followed,
    /// written through or removed.
    #[error(
        "{path} is a {found} where haul keeps its own file or directory; haul neither follows nor \
         removes it. Something other than haul changed the store: look at it, remove it, and run \
         `haul verify`"
    )]
    Planted {
        /// Where it is.
        path: PathBuf,
        /// What it is ("symbolic link", "FIFO", …).
        found: &'static str,
    },
    /// The store cannot be written (a read-only mount, an immutable root, a root its owner
    /// made 0500) and what was asked needs to write: pulling, tagging, removing, pruning.
    /// Reading works: listing, inspecting, saving and unpacking stored images.
    #[error("the store at {store} is read-only: {path}: {source}")]
    ReadOnly {
        /// The store's root.
        store: PathBuf,
        /// What could not be written.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The directory named as the store holds other files and is no OCI image layout (it has
    /// no `oci-layout`): haul does not turn a directory of other files into a store.
    #[error(
        "{path} is not a store: it is not empty and has no oci-layout file (it holds {})",
        listed(found, *count)
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// The first few of its entries, by name.
        found: Vec<String>,
        /// How many entries it has.
        count: usize,
    },
    /// No store was named and there is no private place to put one (see
    /// [`default_root`](super::default_root)).
    #[error(
        "no store location: neither HOME nor XDG_DATA_HOME is set, and haul does not fall back \
         to a shared temporary directory, where another user could have prepared the store"
    )]
    NoDefaultRoot,
}

/// `a, b and 3 more`.
fn listed(found: &[String], count: usize) -> String {
    let mut text = found.join(", ");
    if count > found.len() {
        text.push_str(&format!(" and {} more", count - found.len()));
    }
    text
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// A background task doing the store's work did not finish (it panicked or was cancelled).
    pub(crate) fn task(path: &Path, e: tokio::task::JoinError) -> Self {
        StoreError::io(path, io::Error::other(e))
    }
}
