//! Image archives: docker's `save` and `load`.
//!
//! [`save`] writes the images named into one tar, streaming each blob from the store once (a layer
//! shared by several images is written once). Two formats:
//!
//! - [`ArchiveFormat::DockerArchive`], what `docker save` writes since docker 25: `manifest.json`
//!   (`Config`, `RepoTags`, `Layers` as paths in the archive), `repositories`, and an OCI image
//!   layout beside them (`oci-layout`, `index.json`, `blobs/sha256/…`), so `docker load`, `podman
//!   load`, skopeo's `docker-archive:` and OCI tools all read it. Layers are the blobs as stored.
//! - [`ArchiveFormat::OciArchive`]: the OCI layout alone, each manifest named by its tag in
//!   `org.opencontainers.image.ref.name` (skopeo's `oci-archive:FILE:TAG`).
//!
//! [`load`] reads those and every docker-archive other tools write: docker before 25 (`<id>/
//! layer.tar`, `<config hex>.json`, a layer saved twice as a symlink to its first copy), podman's
//! and skopeo's (`<diff_id hex>.tar`), one image or many, uncompressed or gzip- or zstd-compressed
//! as a whole (known by the first bytes, not the name). Every `blobs/<algo>/<hex>` member enters
//! the store through an ingest that checks it hashes to its name; a member named by another path
//! is hashed while it streams into the store, and each layer of an image whose manifest the archive
//! lacks must be the diff_id its config gives (docker load's check). Refs are set only after every
//! image in the archive is complete, so a damaged archive publishes nothing. Member paths and link
//! targets that are absolute or climb out of the archive are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::{Digest, Hasher};
use crate::inspect::{self, InspectError};
use crate::manifest::{self, Descriptor, Manifest, ManifestError, media_type};
use crate::reference::Reference;
use crate::store::{IngestStart, RefEntry, Store, StoreError};
use crate::unpack::stream::Compression as LayerCompression;

/// The full image name, as containerd and docker ≥ 25 annotate index entries.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = crate::store::REF_NAME_ANNOTATION;
/// The most haul reads whole from an archive's metadata files (`manifest.json`, `index.json`, …).
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
const COPY_BUFFER: usize = 1 << 20;
/// How many indexes within indexes `load` follows to reach an image. Real archives nest one or
/// two (an index naming a multi-platform index); a hostile one nesting 100 000 overflowed the
/// stack.
const MAX_INDEX_DEPTH: usize = 8;

/// The layout [`save`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// What `docker save` writes since docker 25: `manifest.json` and `repositories` beside an
    /// OCI image layout, readable by docker, podman, skopeo and OCI tools. The default.
    #[default]
    DockerArchive,
    /// The OCI image layout alone, each manifest named by its tag (skopeo's `oci-archive:`).
    OciArchive,
}

/// Why an archive could not be saved or loaded. A failed [`load`] sets no ref (blobs it already
/// verified into the store stay, as after an interrupted pull); a failed [`save_to_file`] leaves
/// no file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Save: an image named is not in the store.
    #[error(transparent)]
    NotFound(#[from] InspectError),
    /// The store could not be read or written, or a member did not hash to its name.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written (a stored blob, the destination file).
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Load: the archive could not be read or is not a valid tar (or its compression is broken).
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    /// Save: the archive could not be written.
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
    /// Load: a member path or link target is absolute or climbs out of the archive.
    #[error("archive member {path:?} escapes the archive (absolute or `..`); refusing it")]
    UnsafePath {
        /// The path (`path -> target` for a link).
        path: String,
    },
    /// Load: a metadata member (`manifest.json`, `index.json`…) is larger than haul reads whole.
    #[error("archive member {path} is {size} bytes, more than the {limit} haul reads")]
    TooLarge {
        /// The member.
        path: String,
        /// Its size, in bytes.
        size: u64,
        /// The most haul reads, in bytes.
        limit: u64,
    },
    /// Load: a metadata member is not valid JSON.
    #[error("archive member {path} is not valid JSON: {source}")]
    InvalidJson {
        /// The member.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Load: neither `manifest.json` nor `index.json`.
    #[error("the archive has neither manifest.json nor index.json: not an image archive")]
    NotAnArchive,
    /// Load: a blob a manifest, index or config needs is not in the archive.
    #[error("the archive has no blob {digest} that {what} needs")]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// What needs it (`image …`, `the config of image …`, `index.json`).
        what: String,
    },
    /// A blob's size is not what its descriptor says (in the archive for load, in the store
    /// for save).
    #[error("blob {digest} is {actual} bytes in the archive, but its manifest says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size its descriptor gives.
        expected: u64,
        /// Its real size.
        actual: u64,
    },
    /// Load: a manifest, index or config is not one haul reads.
    #[error("{what}: {source}")]
    Manifest {
        /// Which document.
        what: String,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// Load: `manifest.json` names a member (config or layer) the archive does not hold.
    #[error("manifest.json names {path}, which the archive does not hold")]
    MissingMember {
        /// The path as `manifest.json` gives it.
        path: String,
    },
    /// Load: links between members go round in circles or too deep.
    #[error("{path}: too many links from one archive member to another (a loop?)")]
    LinkLoop {
        /// The path as `manifest.json` gives it.
        path: String,
    },
    /// Load: `manifest.json` is not what docker writes.
    #[error("manifest.json: {reason}")]
    BadManifestJson {
        /// What is wrong with it.
        reason: String,
    },
    /// Load: an archive of docker before 1.10 (`repositories` alone), a format haul does not
    /// read.
    #[error(
        "the archive has only `repositories`, no manifest.json: docker before 1.10 wrote it, and \
         haul does not read that format"
    )]
    LegacyV1Archive,
    /// Load: a layer is compressed with something other than gzip or zstd.
    #[error("layer {digest} is {format}-compressed; haul reads uncompressed, gzip and zstd layers")]
    UnsupportedLayerCompression {
        /// The layer blob.
        digest: Digest,
        /// The compression, known by its first bytes (`xz`, `bzip2`).
        format: String,
    },
    /// Load: an image name in the archive is not a reference haul can set as a ref.
    #[error("image name {name:?} in the archive: {reason}")]
    BadName {
        /// The name as the archive gives it.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Load: indexes nest deeper than haul follows.
    #[error("index {digest} in the archive nests indexes more than {limit} deep; refusing it")]
    NestedTooDeep {
        /// The outermost index.
        digest: Digest,
        /// How deep haul follows.
        limit: usize,
    },
    /// Load: the archive as a whole is compressed with something other than gzip or zstd.
    #[error(
        "the archive is {format}-compressed, which haul does not read; decompress it first \
         (`{format} -dc FILE | haul load`)"
    )]
    UnsupportedCompression {
        /// The compression, known by its first bytes (`xz`, `bzip2`).
        format: String,
    },
    /// Load: a layer of an image the archive has no manifest for is not the diff_id its config
    /// gives (docker load's check).
    #[error(
        "layer {index} of image {image} ({path}) is {actual} uncompressed, but the image config \
         says its diff_id is {expected}"
    )]
    DiffIdMismatch {
        /// The image, by the name the archive gives it.
        image: String,
        /// The layer's position, from 0 (the base layer).
        index: usize,
        /// The layer's member path.
        path: String,
        /// The diff_id the config gives.
        expected: Digest,
        /// What the uncompressed layer hashes to.
        actual: Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// save

/// One image to write, with the names it is saved under.
struct SavedImage {
    manifest: Descriptor,
    config: Descriptor,
    layers: Vec<Descriptor>,
    /// Full references with a tag.
    names: Vec<Reference>,
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Default)]
pub struct SaveOutcome {
    /// Blobs written (each once).
    pub blobs: usize,
    /// Bytes of those blobs (the archive is a little larger: headers and metadata).
    pub bytes: u64,
}

fn collect(store: &Store, images: &[String]) -> Result<Vec<SavedImage>, ArchiveError> {
    let mut out: Vec<SavedImage> = Vec::new();
    for query in images {
        let found = inspect::find(store, query)?;
        let refs = if found.by_id {
            found.names.clone()
        } else {
            found.matched.clone()
        };
        let Some(first) = refs.first() else {
            return Err(InspectError::NoSuchImage(query.clone()).into());
        };
        let names: Vec<Reference> = refs
            .iter()
            .filter_map(|e| e.name.parse::<Reference>().ok())
            .filter(|r| r.tag().is_some())
            .collect();
        let mut manifest = Descriptor::new(
            &first.manifest.media_type,
            first.manifest.digest.clone(),
            first.manifest.size,
        );
        manifest.platform = first.manifest.platform.clone();
        // The same image asked for twice (by name and by ID) is written once, under every name.
        if let Some(seen) = out
            .iter_mut()
            .find(|s| s.manifest.digest == manifest.digest)
        {
            for n in names {
                if !seen.names.contains(&n) {
                    seen.names.push(n);
                }
            }
            continue;
        }
        out.push(SavedImage {
            manifest,
            config: found.manifest.config.clone(),
            layers: found.manifest.layers.clone(),
            names,
        });
    }
    Ok(out)
}

/// Writes `images` (names or image IDs) from `store` as a tar archive to `out`, in `format`.
/// Each blob is streamed from the store once, however many images share it. Blocks the calling
/// thread. `out` gets a partial archive if this fails: write to a file with [`save_to_file`].
///
/// # Errors
///
/// [`ArchiveError::NotFound`] when an image named is not in the store, [`ArchiveError::Write`]
/// when `out` fails, [`ArchiveError::Store`], [`ArchiveError::Io`] or
/// [`ArchiveError::SizeMismatch`] when a stored blob cannot be read or is not its descriptor's
/// size.
pub fn save<W: Write>(
    store: &Store,
    images: &[String],
    format: ArchiveFormat,
    out: W,
) -> Result<SaveOutcome, ArchiveError> {
    let images = collect(store, images)?;
    let mut tar = tar::Builder::new(out);
    let mut outcome = SaveOutcome::default();

    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    let mut written = BTreeSet::new();
    for image in &images {
        let blobs = std::iter::once(&image.manifest)
            .chain(std::iter::once(&image.config))
            .chain(image.layers.iter());
        for d in blobs {
            if !written.insert(d.digest.clone()) {
                continue;
            }
            let path = store.blob_path(&d.digest);
            let file = store.open_blob(&d.digest)?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len != d.size {
                return Err(ArchiveError::SizeMismatch {
                    digest: d.digest.clone(),
                    expected: d.size,
                    actual: len,
                });
            }
            let mut header = file_header(len);
            tar.append_data(&mut header, blob_member(&d.digest), file)
                .map_err(ArchiveError::Write)?;
            outcome.blobs += 1;
            outcome.bytes += len;
        }
    }

    append_json(
        &mut tar,
        "oci-layout",
        &json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    let mut entries = Vec::new();
    for image in &images {
        if image.names.is_empty() {
            entries.push(descriptor_json(&image.manifest)?);
        }
        for name in &image.names {
            let mut d = image.manifest.clone();
            d.annotations
                .insert(IMAGE_NAME_ANNOTATION.to_owned(), name.to_string());
            d.annotations.insert(
                REF_NAME_ANNOTATION.to_owned(),
                name.tag().unwrap_or_default().to_owned(),
            );
            entries.push(descriptor_json(&d)?);
        }
    }
    append_json(
        &mut tar,
        "index.json",
        &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": entries}),
    )?;

    if format == ArchiveFormat::DockerArchive {
        let mut manifest_json = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for image in &images {
            let tags: Vec<String> = image
                .names
                .iter()
                .map(|r| format!("{}:{}", r.familiar_name(), r.tag().unwrap_or_default()))
                .collect();
            for r in &image.names {
                repositories.entry(r.familiar_name()).or_default().insert(
                    r.tag().unwrap_or_default().to_owned(),
                    image.config.digest.hex().to_owned(),
                );
            }
            let layers: Vec<String> = image
                .layers
                .iter()
                .map(|l| blob_member(&l.digest))
                .collect();
            manifest_json.push(json!({
                "Config": blob_member(&image.config.digest),
                "RepoTags": tags,
                "Layers": layers,
            }));
        }
        append_json(&mut tar, "manifest.json", &Value::Array(manifest_json))?;
        append_json(&mut tar, "repositories", &json!(repositories))?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ArchiveError::Write)?;
    Ok(outcome)
}

/// [`save`] to the file `dest`, which appears only once complete: the archive is written to a
/// temp file in the same directory, synced and renamed over `dest`.
///
/// # Errors
///
/// As [`save`], and [`ArchiveError::Io`] when the file cannot be created, synced or renamed;
/// the temp file is then removed and `dest` left as it was.
pub fn save_to_file(
    store: &Store,
    images: &[String],
    format: ArchiveFormat,
    dest: &Path,
) -> Result<SaveOutcome, ArchiveError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".to_owned());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut writer = io::BufWriter::with_capacity(COPY_BUFFER, file);
        let outcome = save(store, images, format, &mut writer)?;
        let file = writer
            .into_inner()
            .map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(outcome)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn blob_member(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

fn file_header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<(), ArchiveError> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    tar.append_data(&mut h, path, io::empty())
        .map_err(ArchiveError::Write)
}

/// `d` as `index.json` lists it. Serialising a descriptor cannot fail (string-keyed maps only);
/// were it to, the archive could not be written.
fn descriptor_json(d: &Descriptor) -> Result<Value, ArchiveError> {
    serde_json::to_value(d).map_err(|e| ArchiveError::Write(io::Error::other(e)))
}

fn append_json<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    value: &Value,
) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ArchiveError::Write(io::Error::other(e)))?;
    let mut h = file_header(bytes.len() as u64);
    tar.append_data(&mut h, path, bytes.as_slice())
        .map_err(ArchiveError::Write)
}

// ---------------------------------------------------------------------------------------------
// load

/// One image [`load`] made available.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The config digest (docker's image ID).
    pub id: Digest,
    /// The image manifest's digest, as stored (one haul made for an archive without manifests).
    pub manifest: Digest,
    /// Full references set as refs; empty for an image the archive does not name.
    pub names: Vec<Reference>,
}

/// How far [`load`] follows links from one member to another (`<id>/layer.tar -> ../<x>.tar`).
const MAX_LINK_HOPS: usize = 16;

/// A symlink or hardlink member: docker before 25 and podman write a layer saved once and linked
/// from every other place it appears.
enum Link {
    /// Relative to the member's directory, as a file system would resolve it.
    Symbolic(String),
    /// A member path of the archive.
    Hard(String),
}

/// What the archive holds, read on the way through.
#[derive(Default)]
struct Metadata {
    manifest_json: Option<Vec<u8>>,
    index_json: Option<Vec<u8>>,
    /// Docker's `repositories`, which alone marks an archive of docker before 1.10.
    repositories: bool,
    /// Everything the archive brought into the store (and found there), by digest, with its size:
    /// `blobs/<algo>/<hex>` members verified against their names, other files hashed.
    blobs: BTreeMap<Digest, u64>,
    /// Files outside `blobs/` (`<id>/layer.tar`, `<hex>.tar`, `<hex>.json`), by member path.
    files: BTreeMap<String, Digest>,
    links: BTreeMap<String, Link>,
}

impl Metadata {
    /// The content `raw` (a path `manifest.json` gives) names, following links within the archive.
    fn member(&self, raw: &str) -> Result<(Digest, u64), ArchiveError> {
        let mut path = member_path(raw)?;
        for _ in 0..MAX_LINK_HOPS {
            let digest = match self.files.get(&path) {
                Some(d) => Some(d.clone()),
                None => blob_name(&path).filter(|d| self.blobs.contains_key(d)),
            };
            if let Some(digest) = digest {
                let size = self.blobs.get(&digest).copied().unwrap_or_default();
                return Ok((digest, size));
            }
            path = match self.links.get(&path) {
                Some(Link::Symbolic(target)) => resolve_symlink(&path, target)?,
                Some(Link::Hard(target)) => member_path(target)?,
                None => {
                    return Err(ArchiveError::MissingMember {
                        path: raw.to_owned(),
                    });
                }
            };
        }
        Err(ArchiveError::LinkLoop {
            path: raw.to_owned(),
        })
    }
}

/// Where the symlink member `path` pointing at `target` leads, as a member path; a target that is
/// absolute or climbs out of the archive is refused.
fn resolve_symlink(path: &str, target: &str) -> Result<String, ArchiveError> {
    let unsafe_path = || ArchiveError::UnsafePath {
        path: format!("{path} -> {target}"),
    };
    let mut parts: Vec<String> = Path::new(path)
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(unsafe_path)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path()),
        }
    }
    Ok(parts.join("/"))
}

/// Reads an archive from `reader` into `store`: docker's (any version), podman's and skopeo's
/// docker-archive, or an OCI archive, uncompressed or compressed with gzip or zstd (told apart by
/// their first bytes, as `docker load` does).
///
/// Members under `blobs/` are checked to hash to their names; layers and configs other tools name
/// by path (`<id>/layer.tar`, `<hex>.tar`, `<hex>.json`) are hashed while they stream into the
/// store, and each layer of an image without a manifest in the archive must be the diff_id its
/// config gives. Refs are set only once every image of the archive is complete. The archive is
/// read on a blocking thread; call this within a tokio runtime.
///
/// # Errors
///
/// [`ArchiveError`] for an archive haul cannot read, one that is damaged or hostile (a member
/// that does not hash to its name, a path escaping the archive, a missing blob, a diff_id that
/// does not match), or a store that cannot be written. No ref is set then.
pub async fn load<R: Read + Send + 'static>(
    store: &Store,
    reader: R,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _writer = store.writer_lock()?;
        let meta = read_members(&store, decompressed(reader)?)?;
        let images = plan(&store, &meta)?;
        let mut loaded = Vec::new();
        for (entry, image) in images {
            for name in &image.names {
                store.set_ref(&RefEntry {
                    name: name.to_string(),
                    ..entry.clone()
                })?;
            }
            loaded.push(image);
        }
        Ok(loaded)
    })
    .await
    .map_err(|e| ArchiveError::Read(io::Error::other(e)))?
}

/// How a stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    /// Read by `docker load`, not by haul: named in the error.
    Other(&'static str),
}

/// The most bytes [`sniff`] looks at.
const MAGIC_LEN: usize = 10;

fn sniff(head: &[u8]) -> Compression {
    const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    match head {
        [0x1f, 0x8b, 0x08, ..] => Compression::Gzip,
        [a, b, c, d, ..] if [*a, *b, *c, *d] == ZSTD => Compression::Zstd,
        // A zstd skippable frame (0x184D2A50 to 0x184D2A5F, little-endian) may come first.
        [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50 => Compression::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Other("xz"),
        // "BZh", the block size, then the block magic: a tar member name cannot look like that.
        [
            b'B',
            b'Z',
            b'h',
            b'1'..=b'9',
            0x31,
            0x41,
            0x59,
            0x26,
            0x53,
            0x59,
            ..,
        ] => Compression::Other("bzip2"),
        _ => Compression::None,
    }
}

/// `reader`, decompressed when its first bytes say it is compressed.
fn decompressed<R: Read + Send + 'static>(
    mut reader: R,
) -> Result<Box<dyn Read + Send>, ArchiveError> {
    let mut head = Vec::with_capacity(MAGIC_LEN);
    (&mut reader)
        .take(MAGIC_LEN as u64)
        .read_to_end(&mut head)
        .map_err(ArchiveError::Read)?;
    let kind = sniff(&head);
    let whole = io::Cursor::new(head).chain(reader);
    // The layers' decoders: every gzip member (as gzip -d and Go's gzip reader, docker load, read
    // `cat a.gz b.gz`) with ISA-L where it is installed, every zstd frame.
    let decoder = match kind {
        Compression::None => return Ok(Box::new(whole)),
        Compression::Gzip => LayerCompression::Gzip,
        Compression::Zstd => LayerCompression::Zstd,
        Compression::Other(format) => {
            return Err(ArchiveError::UnsupportedCompression {
                format: format.to_owned(),
            });
        }
    };
    decoder
        .decoder(io::BufReader::new(whole))
        .map_err(ArchiveError::Read)
}

fn read_members(store: &Store, reader: impl Read) -> Result<Metadata, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut meta = Metadata::default();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = member_path(&raw)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let link = if kind == tar::EntryType::Symlink {
                Link::Symbolic(target)
            } else {
                Link::Hard(target)
            };
            meta.links.insert(path, link);
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry.size();
        match path.as_str() {
            "manifest.json" => meta.manifest_json = Some(read_small(&mut entry, &path, size)?),
            "index.json" => meta.index_json = Some(read_small(&mut entry, &path, size)?),
            "repositories" => meta.repositories = true,
            "oci-layout" => {}
            // Docker's legacy per-layer metadata, which manifest.json makes redundant.
            p if p.ends_with("/VERSION") || p.ends_with("/json") => {}
            _ => match blob_name(&path) {
                Some(digest) => {
                    ingest(store, &digest, size, &mut entry)?;
                    meta.blobs.insert(digest, size);
                }
                None => {
                    let (digest, size) = import(store, &mut entry)?;
                    meta.blobs.insert(digest.clone(), size);
                    meta.files.insert(path, digest);
                }
            },
        }
    }
    Ok(meta)
}

/// The member's path, normalised (`./` dropped), or an error for one that could escape.
fn member_path(raw: &str) -> Result<String, ArchiveError> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::UnsafePath {
                    path: raw.to_owned(),
                });
            }
        }
    }
    Ok(parts.join("/"))
}

/// `blobs/sha256/<hex>` → the digest it names.
fn blob_name(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (algo, hex) = rest.split_once('/')?;
    format!("{algo}:{hex}").parse().ok()
}

fn read_small(entry: &mut impl Read, path: &str, size: u64) -> Result<Vec<u8>, ArchiveError> {
    if size > MAX_METADATA_BYTES {
        return Err(ArchiveError::TooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_METADATA_BYTES,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(ArchiveError::Read)?;
    Ok(buf)
}

fn ingest(
    store: &Store,
    digest: &Digest,
    size: u64,
    reader: &mut impl Read,
) -> Result<(), ArchiveError> {
    let IngestStart::Writer(mut writer) = store.begin_ingest(digest, size)? else {
        // Already in the store, verified when it entered. The archive's copy is not read; the
        // tar reader skips it.
        return Ok(());
    };
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = reader.read(&mut buf).map_err(ArchiveError::Read)?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
    }
    writer.commit()?;
    Ok(())
}

/// Streams a member whose digest nobody declared into the store, returning what it hashed to.
fn import(store: &Store, reader: &mut impl Read) -> Result<(Digest, u64), ArchiveError> {
    let mut import = store.begin_import()?;
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = reader.read(&mut buf).map_err(ArchiveError::Read)?;
        if n == 0 {
            break;
        }
        import.write(&buf[..n])?;
    }
    Ok(import.commit()?)
}

/// Works out the images of the archive from its metadata, checking every blob they reach is there
/// with the size their manifests give; returns the ref (without its name) and names of each.
fn plan(store: &Store, meta: &Metadata) -> Result<Vec<(RefEntry, LoadedImage)>, ArchiveError> {
    let index_entries: Vec<Descriptor> = match &meta.index_json {
        Some(bytes) => {
            let index: Value = parse_json("index.json", bytes)?;
            index
                .get("manifests")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| serde_json::from_value(v.clone()).ok())
                        .collect()
                })
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let docker: Option<Vec<Value>> = match &meta.manifest_json {
        Some(bytes) => Some(parse_json("manifest.json", bytes)?),
        None => None,
    };
    if meta.index_json.is_none() && docker.is_none() {
        return Err(if meta.repositories {
            ArchiveError::LegacyV1Archive
        } else {
            ArchiveError::NotAnArchive
        });
    }

    // Every image manifest the OCI layout names, resolved through nested indexes.
    let mut manifests: Vec<(Descriptor, manifest::ImageManifest, Vec<Reference>)> = Vec::new();
    for d in &index_entries {
        let (desc, image) = resolve_image(store, meta, d, 0)?;
        let names = index_names(d)?;
        match manifests
            .iter_mut()
            .find(|(m, _, _)| m.digest == desc.digest)
        {
            Some((_, _, existing)) => existing.extend(names),
            None => manifests.push((desc, image, names)),
        }
    }

    let mut out = Vec::new();
    if let Some(entries) = docker {
        for e in entries {
            let config_path = e.get("Config").and_then(Value::as_str).ok_or_else(|| {
                ArchiveError::BadManifestJson {
                    reason: "an entry has no Config".to_owned(),
                }
            })?;
            let (config, config_size) = meta.member(config_path)?;
            let mut names = Vec::new();
            for tag in e
                .get("RepoTags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                names.push(parse_name(tag)?);
            }
            let found = manifests
                .iter()
                .position(|(_, m, _)| m.config.digest == config);
            let (desc, image) = match found {
                Some(i) => {
                    let (desc, image, _) = manifests.remove(i);
                    (desc, image)
                }
                None => synthesise(store, meta, &e, &config, config_size, &names)?,
            };
            out.push(finish(store, meta, desc, image, names)?);
        }
    }
    // Images only the OCI layout names (an oci-archive, or extra entries).
    for (desc, image, names) in manifests {
        if out
            .iter()
            .any(|(r, _): &(RefEntry, LoadedImage)| r.manifest.digest == desc.digest)
        {
            continue;
        }
        out.push(finish(store, meta, desc, image, names)?);
    }
    Ok(out)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|source| ArchiveError::InvalidJson {
        path: path.to_owned(),
        source,
    })
}

fn parse_name(name: &str) -> Result<Reference, ArchiveError> {
    let r: Reference =
        name.parse().map_err(
            |e: crate::reference::ReferenceError| ArchiveError::BadName {
                name: name.to_owned(),
                reason: e.to_string(),
            },
        )?;
    if r.digest().is_some() {
        return Err(ArchiveError::BadName {
            name: name.to_owned(),
            reason: "a name with a digest cannot be a tag".to_owned(),
        });
    }
    Ok(r)
}

/// The names an index entry gives its image: the full name containerd and docker write, else
/// `ref.name` when it is a whole reference rather than a bare tag.
fn index_names(d: &Descriptor) -> Result<Vec<Reference>, ArchiveError> {
    if let Some(full) = d.annotations.get(IMAGE_NAME_ANNOTATION) {
        return Ok(vec![parse_name(full)?]);
    }
    match d.annotations.get(REF_NAME_ANNOTATION) {
        Some(name) if name.contains('/') || name.contains(':') => Ok(vec![parse_name(name)?]),
        _ => Ok(Vec::new()),
    }
}

/// Reads the manifest `d` names (from the store, where the archive's blobs went), descending into
/// an index to the first image whose blobs the archive holds.
fn resolve_image(
    store: &Store,
    meta: &Metadata,
    d: &Descriptor,
    depth: usize,
) -> Result<(Descriptor, manifest::ImageManifest), ArchiveError> {
    let bytes = read_archived(store, meta, d, "index.json")?;
    let what = || format!("manifest {}", d.digest);
    match manifest::parse(Some(&d.media_type), &bytes).map_err(|source| ArchiveError::Manifest {
        what: what(),
        source,
    })? {
        Manifest::Image(m) => Ok((d.clone(), m)),
        Manifest::Index(_) if depth >= MAX_INDEX_DEPTH => Err(ArchiveError::NestedTooDeep {
            digest: d.digest.clone(),
            limit: MAX_INDEX_DEPTH,
        }),
        Manifest::Index(index) => {
            let child = index
                .manifests
                .iter()
                .find(|c| meta.blobs.contains_key(&c.digest))
                .ok_or_else(|| ArchiveError::MissingBlob {
                    digest: d.digest.clone(),
                    what: "an image of the index".to_owned(),
                })?;
            resolve_image(store, meta, child, depth + 1)
        }
    }
}

/// The bytes of a small blob the archive held, checked against its descriptor's size.
fn read_archived(
    store: &Store,
    meta: &Metadata,
    d: &Descriptor,
    what: &str,
) -> Result<Vec<u8>, ArchiveError> {
    check_blob(meta, &d.digest, d.size, what)?;
    Ok(store.read_blob(&d.digest, manifest::MAX_MANIFEST_BYTES as u64)?)
}

fn check_blob(meta: &Metadata, digest: &Digest, size: u64, what: &str) -> Result<(), ArchiveError> {
    match meta.blobs.get(digest) {
        None => Err(ArchiveError::MissingBlob {
            digest: digest.clone(),
            what: what.to_owned(),
        }),
        Some(&actual) if actual != size => Err(ArchiveError::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            actual,
        }),
        Some(_) => Ok(()),
    }
}

/// An OCI manifest for a `manifest.json` entry that has none in the archive (docker before 25,
/// podman, skopeo): its config and layers are members of the archive, each layer checked against
/// the diff_id the config gives it, as `docker load` checks them.
fn synthesise(
    store: &Store,
    meta: &Metadata,
    entry: &Value,
    config: &Digest,
    config_size: u64,
    names: &[Reference],
) -> Result<(Descriptor, manifest::ImageManifest), ArchiveError> {
    let image_name = names
        .first()
        .map(|n| n.to_string())
        .unwrap_or_else(|| config.to_string());
    let config_bytes = store.read_blob(config, manifest::MAX_CONFIG_BYTES)?;
    let parsed =
        manifest::ImageConfig::parse(&config_bytes).map_err(|source| ArchiveError::Manifest {
            what: format!("the config of image {image_name}"),
            source,
        })?;
    let paths: Vec<&str> = entry
        .get("Layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if paths.len() != parsed.rootfs.diff_ids.len() {
        return Err(ArchiveError::Manifest {
            what: format!("image {image_name}"),
            source: ManifestError::LayerCountMismatch {
                diff_ids: parsed.rootfs.diff_ids.len(),
                layers: paths.len(),
            },
        });
    }
    let mut layers = Vec::new();
    for (index, (path, expected)) in paths.iter().zip(&parsed.rootfs.diff_ids).enumerate() {
        let (digest, size) = meta.member(path)?;
        let (media_type, actual) = layer_identity(store, &digest, expected)?;
        if &actual != expected {
            return Err(ArchiveError::DiffIdMismatch {
                image: image_name.clone(),
                index,
                path: (*path).to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
        layers.push(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
    }
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config.to_string(), "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&doc).expect("JSON values serialise");
    let digest = Digest::sha256_of(&bytes);
    store.put_blob(&digest, &bytes)?;
    let image: manifest::ImageManifest =
        serde_json::from_value(doc).map_err(|source| ArchiveError::Manifest {
            what: "the manifest made from manifest.json".to_owned(),
            source: ManifestError::Invalid {
                kind: "an image manifest",
                source,
            },
        })?;
    Ok((
        Descriptor::new(media_type::OCI_MANIFEST, digest, bytes.len() as u64),
        image,
    ))
}

/// A layer blob's OCI media type (by its first bytes) and the digest of its uncompressed tar, in
/// the algorithm of the diff_id it should match.
fn layer_identity(
    store: &Store,
    digest: &Digest,
    diff_id: &Digest,
) -> Result<(&'static str, Digest), ArchiveError> {
    let path = store.blob_path(digest);
    let mut file = io::BufReader::with_capacity(COPY_BUFFER, store.open_blob(digest)?);
    let head = io::BufRead::fill_buf(&mut file).map_err(io_err(&path))?;
    let (media_type, compression) = match sniff(&head[..head.len().min(MAGIC_LEN)]) {
        Compression::None => (
            media_type::OCI_LAYER,
            crate::unpack::stream::Compression::None,
        ),
        Compression::Gzip => (
            media_type::OCI_LAYER_GZIP,
            crate::unpack::stream::Compression::Gzip,
        ),
        Compression::Zstd => (
            media_type::OCI_LAYER_ZSTD,
            crate::unpack::stream::Compression::Zstd,
        ),
        Compression::Other(format) => {
            return Err(ArchiveError::UnsupportedLayerCompression {
                digest: digest.clone(),
                format: format.to_owned(),
            });
        }
    };
    // An uncompressed layer stored under the diff_id's algorithm is its own diff_id.
    if compression == crate::unpack::stream::Compression::None
        && digest.algorithm() == diff_id.algorithm()
    {
        return Ok((media_type, digest.clone()));
    }
    let mut decoder = compression.decoder(file).map_err(io_err(&path))?;
    let mut hasher = Hasher::new(diff_id.algorithm());
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = decoder.read(&mut buf).map_err(io_err(&path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((media_type, hasher.finish()))
}

/// Checks an image is complete and makes the ref for it (OCI media types, as the store keeps).
fn finish(
    store: &Store,
    meta: &Metadata,
    desc: Descriptor,
    image: manifest::ImageManifest,
    names: Vec<Reference>,
) -> Result<(RefEntry, LoadedImage), ArchiveError> {
    let what = format!("image {}", desc.digest);
    // A synthesised manifest is not in the archive but in the store already.
    if meta.blobs.contains_key(&desc.digest) {
        check_blob(meta, &desc.digest, desc.size, &what)?;
    }
    check_blob(meta, &image.config.digest, image.config.size, &what)?;
    for layer in &image.layers {
        if layer.urls.is_empty() || meta.blobs.contains_key(&layer.digest) {
            check_blob(meta, &layer.digest, layer.size, &what)?;
        }
    }
    let bytes = store.read_blob(&desc.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
    let (mut manifest, source) =
        match manifest::docker_to_oci(&bytes).map_err(|source| ArchiveError::Manifest {
            what: what.clone(),
            source,
        })? {
            Some(oci) => {
                let digest = Digest::sha256_of(&oci);
                store.put_blob(&digest, &oci)?;
                (
                    Descriptor::new(media_type::OCI_MANIFEST, digest, oci.len() as u64),
                    Some(desc.digest.clone()),
                )
            }
            None => (
                Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size),
                None,
            ),
        };
    manifest.platform = desc.platform.clone();
    let mut names = names;
    names.dedup();
    let entry = RefEntry {
        name: String::new(),
        resolved: source.clone().unwrap_or_else(|| manifest.digest.clone()),
        manifest,
        source,
    };
    let loaded = LoadedImage {
        id: image.config.digest.clone(),
        manifest: desc.digest,
        names,
    };
    Ok((entry, loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_confined() {
        for (raw, want) in [
            ("manifest.json", Some("manifest.json")),
            ("./blobs/sha256/ab", Some("blobs/sha256/ab")),
            ("blobs//sha256/ab", Some("blobs/sha256/ab")),
            ("../etc/passwd", None),
            ("blobs/../../x", None),
            ("/etc/passwd", None),
        ] {
            assert_eq!(member_path(raw).ok().as_deref(), want, "{raw}");
        }
    }

    /// An archive whose `index.json` reaches its image through `depth` indexes, each the only
    /// entry of the one above.
    fn nested_archive(depth: usize) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, data).unwrap();
        };
        let mut blob = |data: Vec<u8>, media_type: &str| {
            let digest = Digest::sha256_of(&data);
            add(&format!("blobs/sha256/{}", digest.hex()), &data);
            json!({"mediaType": media_type, "digest": digest.to_string(), "size": data.len()})
        };
        let config = blob(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec(),
            media_type::OCI_CONFIG,
        );
        let image = json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST, "config": config, "layers": []});
        let mut child = blob(
            serde_json::to_vec(&image).unwrap(),
            media_type::OCI_MANIFEST,
        );
        for _ in 0..depth {
            let index = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [child]});
            child = blob(serde_json::to_vec(&index).unwrap(), media_type::OCI_INDEX);
        }
        let mut tar = {
            let index = json!({"schemaVersion": 2, "manifests": [child]});
            add("index.json", &serde_json::to_vec(&index).unwrap());
            tar
        };
        tar.finish().unwrap();
        tar.into_inner().unwrap()
    }

    /// A hostile archive nesting 100 000 indexes overflowed the stack of `haul load` (an abort,
    /// not an error): nesting is followed only so deep.
    #[tokio::test(flavor = "multi_thread")]
    async fn indexes_nested_deeper_than_the_limit_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let loaded = load(&store, io::Cursor::new(nested_archive(2)))
            .await
            .unwrap();
        assert_eq!(
            loaded.len(),
            1,
            "an index of an index is an ordinary archive"
        );

        let err = load(&store, io::Cursor::new(nested_archive(MAX_INDEX_DEPTH + 1)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::NestedTooDeep {
                    limit: MAX_INDEX_DEPTH,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn blob_names_are_digests() {
        let hex = "a".repeat(64);
        assert_eq!(
            blob_name(&format!("blobs/sha256/{hex}")).map(|d| d.to_string()),
            Some(format!("sha256:{hex}"))
        );
        assert!(blob_name("blobs/sha256/short").is_none());
        assert!(blob_name("manifest.json").is_none());
        assert!(blob_name(&format!("layers/sha256/{hex}")).is_none());
    }

    #[test]
    fn compression_is_known_by_its_first_bytes() {
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, b"tar").unwrap();
            e.finish().unwrap()
        };
        let zstd = zstd::encode_all(&b"tar"[..], 1).unwrap();
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4, 0xe6, 0xd6];
        let bzip2 = *b"BZh91AY&SY";
        let mut tar_named_bzh = [0u8; 512];
        tar_named_bzh[..8].copy_from_slice(b"BZh9.txt");
        for (bytes, want) in [
            (&gzip[..], Compression::Gzip),
            (&zstd[..], Compression::Zstd),
            (&skippable[..], Compression::Zstd),
            (&xz[..], Compression::Other("xz")),
            (&bzip2[..], Compression::Other("bzip2")),
            (&tar_named_bzh[..], Compression::None),
            (&b"manifest.json\0\0\0"[..], Compression::None),
            (&[][..], Compression::None),
        ] {
            assert_eq!(
                sniff(&bytes[..bytes.len().min(MAGIC_LEN)]),
                want,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn symlinks_resolve_within_the_archive() {
        let ok = |p: &str, t: &str| resolve_symlink(p, t).ok();
        assert_eq!(
            ok("abc/layer.tar", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(ok("abc/layer.tar", "../x.tar").as_deref(), Some("x.tar"));
        assert_eq!(ok("a.tar", "./b.tar").as_deref(), Some("b.tar"));
        assert_eq!(ok("abc/layer.tar", "../../etc/passwd"), None);
        assert_eq!(ok("a.tar", "/etc/passwd"), None);
        assert_eq!(ok("a.tar", "../a.tar"), None);
    }

    #[test]
    fn members_follow_links_and_stop_at_a_loop() {
        let d = Digest::sha256_of(b"layer");
        let mut meta = Metadata::default();
        meta.blobs.insert(d.clone(), 5);
        meta.files.insert("x.tar".to_owned(), d.clone());
        meta.links.insert(
            "a/layer.tar".to_owned(),
            Link::Symbolic("../x.tar".to_owned()),
        );
        meta.links.insert(
            "b/layer.tar".to_owned(),
            Link::Hard("a/layer.tar".to_owned()),
        );
        meta.links
            .insert("c".to_owned(), Link::Symbolic("d".to_owned()));
        meta.links
            .insert("d".to_owned(), Link::Symbolic("c".to_owned()));
        assert_eq!(meta.member("./b/layer.tar").unwrap(), (d.clone(), 5));
        assert!(matches!(
            meta.member("c"),
            Err(ArchiveError::LinkLoop { .. })
        ));
        assert!(matches!(
            meta.member("nope.tar"),
            Err(ArchiveError::MissingMember { .. })
        ));
    }
}
