//! Image archives: docker's `save` and `load`.
//!
//! [`save`] writes the images named into one tar, streaming each blob from the store once (a layer
//! shared by several images is written once). Two formats:
//!
//! - [`ArchiveFormat::DockerArchive`], what `docker save` writes since docker 25: `manifest.json`
//!   (`Config`, `RepoTags`, `Layers` as paths in the archive), `repositories`, and an OCI image
//!   layout beside them (`oci-layout`, `index.json`, `blobs/sha256/…`), so `docker load`, skopeo's
//!   `docker-archive:` and OCI tools all read it. Layers are the compressed blobs as stored.
//! - [`ArchiveFormat::OciArchive`]: the OCI layout alone, each manifest named by its tag in
//!   `org.opencontainers.image.ref.name` (skopeo's `oci-archive:FILE:TAG`).
//!
//! [`load`] reads either. Every `blobs/<algo>/<hex>` member enters the store through an ingest
//! that checks it hashes to its name and has the size the manifests give it; refs are set only
//! after every image in the archive is complete, so a damaged archive publishes nothing. Member
//! paths that are absolute or contain `..` are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::inspect::{self, InspectError};
use crate::manifest::{self, Descriptor, Manifest, ManifestError, media_type};
use crate::reference::Reference;
use crate::store::{IngestStart, RefEntry, Store, StoreError};

/// The full image name, as containerd and docker ≥ 25 annotate index entries.
pub const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = crate::store::refs::REF_NAME_ANNOTATION;
/// The most haul reads whole from an archive's metadata files (`manifest.json`, `index.json`, …).
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
const COPY_BUFFER: usize = 1 << 20;
/// How many indexes within indexes `load` follows to reach an image. Real archives nest one or
/// two (an index naming a multi-platform index); a hostile one nesting 100 000 overflowed the
/// stack.
const MAX_INDEX_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    #[default]
    DockerArchive,
    OciArchive,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    NotFound(#[from] InspectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
    #[error("archive member {path:?} escapes the archive (absolute or `..`); refusing it")]
    UnsafePath { path: String },
    #[error("archive member {path} is {size} bytes, more than the {limit} haul reads")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("archive member {path} is not valid JSON: {source}")]
    InvalidJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the archive has neither manifest.json nor index.json: not an image archive")]
    NotAnArchive,
    #[error("the archive has no blob {digest} that {what} needs")]
    MissingBlob { digest: Digest, what: String },
    #[error("blob {digest} is {actual} bytes in the archive, but its manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: {source}")]
    Manifest {
        what: String,
        #[source]
        source: ManifestError,
    },
    #[error("manifest.json names {path}, which is not a blob of the archive's OCI layout")]
    UnsupportedLegacyLayout { path: String },
    #[error("image name {name:?} in the archive: {reason}")]
    BadName { name: String, reason: String },
    #[error("index {digest} in the archive nests indexes more than {limit} deep; refusing it")]
    NestedTooDeep { digest: Digest, limit: usize },
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

/// Writes `images` (names or image IDs) from `store` as a tar archive to `out`.
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
            entries.push(serde_json::to_value(&image.manifest).expect("descriptor"));
        }
        for name in &image.names {
            let mut d = image.manifest.clone();
            d.annotations
                .insert(IMAGE_NAME_ANNOTATION.to_owned(), name.to_string());
            d.annotations.insert(
                REF_NAME_ANNOTATION.to_owned(),
                name.tag().unwrap_or_default().to_owned(),
            );
            entries.push(serde_json::to_value(&d).expect("descriptor"));
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

fn append_json<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    value: &Value,
) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec(value).expect("JSON values serialise");
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
    pub manifest: Digest,
    /// Full references set as refs; empty for an image the archive does not name.
    pub names: Vec<Reference>,
}

/// What the archive holds besides blobs, read on the way through.
#[derive(Default)]
struct Metadata {
    manifest_json: Option<Vec<u8>>,
    index_json: Option<Vec<u8>>,
    /// Blob sizes as found in the archive (and committed, or already in the store).
    blobs: BTreeMap<Digest, u64>,
}

/// Reads an archive ([`ArchiveFormat`] either way, detected) from `reader` into `store`.
pub async fn load<R: Read + Send + 'static>(
    store: &Store,
    reader: R,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let _writer = store.writer_lock()?;
    let s = store.clone();
    let handle = tokio::runtime::Handle::current();
    let meta = tokio::task::spawn_blocking(move || read_members(&s, reader, &handle))
        .await
        .map_err(|e| ArchiveError::Read(io::Error::other(e)))??;
    let images = plan(store, &meta)?;
    let mut loaded = Vec::new();
    for (entry, image) in images {
        for name in &image.names {
            store
                .set_ref(RefEntry {
                    name: name.to_string(),
                    ..entry.clone()
                })
                .await?;
        }
        loaded.push(image);
    }
    Ok(loaded)
}

fn read_members(
    store: &Store,
    reader: impl Read,
    handle: &tokio::runtime::Handle,
) -> Result<Metadata, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut meta = Metadata::default();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = member_path(&raw)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry.size();
        match path.as_str() {
            "manifest.json" => meta.manifest_json = Some(read_small(&mut entry, &path, size)?),
            "index.json" => meta.index_json = Some(read_small(&mut entry, &path, size)?),
            _ => {
                let Some(digest) = blob_name(&path) else {
                    continue;
                };
                handle.block_on(ingest(store, &digest, size, &mut entry))?;
                meta.blobs.insert(digest, size);
            }
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

async fn ingest(
    store: &Store,
    digest: &Digest,
    size: u64,
    reader: &mut impl Read,
) -> Result<(), ArchiveError> {
    let IngestStart::Writer(mut writer) = store.begin_ingest(digest, size).await? else {
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
        writer.write(&buf[..n]).await?;
    }
    writer.commit().await?;
    Ok(())
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
        return Err(ArchiveError::NotAnArchive);
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
            let config_path = e.get("Config").and_then(Value::as_str).unwrap_or_default();
            let config = blob_name(&member_path(config_path)?).ok_or_else(|| {
                ArchiveError::UnsupportedLegacyLayout {
                    path: config_path.to_owned(),
                }
            })?;
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
                None => synthesise(store, meta, &e, &config)?,
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

/// A Docker schema 2 manifest for a `manifest.json` entry that has no manifest in the archive
/// (docker before 25 wrote none), its config and layers being blobs of the archive.
fn synthesise(
    store: &Store,
    meta: &Metadata,
    entry: &Value,
    config: &Digest,
) -> Result<(Descriptor, manifest::ImageManifest), ArchiveError> {
    let config_size = *meta
        .blobs
        .get(config)
        .ok_or_else(|| ArchiveError::MissingBlob {
            digest: config.clone(),
            what: "manifest.json".to_owned(),
        })?;
    let mut layers = Vec::new();
    for path in entry
        .get("Layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let digest = blob_name(&member_path(path)?).ok_or_else(|| {
            ArchiveError::UnsupportedLegacyLayout {
                path: path.to_owned(),
            }
        })?;
        let size = *meta
            .blobs
            .get(&digest)
            .ok_or_else(|| ArchiveError::MissingBlob {
                digest: digest.clone(),
                what: "manifest.json".to_owned(),
            })?;
        let gzip = {
            let mut magic = [0u8; 2];
            store
                .open_blob(&digest)
                .is_ok_and(|mut f| f.read_exact(&mut magic).is_ok())
                && magic == [0x1f, 0x8b]
        };
        let mt = if gzip {
            media_type::DOCKER_LAYER_GZIP
        } else {
            "application/vnd.docker.image.rootfs.diff.tar"
        };
        layers.push(json!({"mediaType": mt, "digest": digest.to_string(), "size": size}));
    }
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config.to_string(), "size": config_size},
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
        Descriptor::new(media_type::DOCKER_MANIFEST, digest, bytes.len() as u64),
        image,
    ))
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
}
