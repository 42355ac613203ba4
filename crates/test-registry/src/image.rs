//! Deterministic images: layers, configs, manifests and indexes built byte-for-byte the same on
//! every run (fixed mtimes, uid/gid 0, insertion-ordered entries, gzip without name or timestamp),
//! so digests are stable across runs and machines.
//!
//! Digests are computed here with `sha2` directly, never through `haul`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub use tar::EntryType;

use crate::util::sha256_digest;

/// Modification time of every entry: 2024-01-01T00:00:00Z.
pub const FIXED_MTIME: u64 = 1_704_067_200;
/// `created` of every config and history entry.
pub const FIXED_CREATED: &str = "2024-01-01T00:00:00Z";

/// Media types used by the builder (and by tests that assert on them).
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (rare, but seen in the wild).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker schema 1 signed manifest (to be refused).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker schema 1 unsigned manifest (to be refused).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
}
use media_types::*;

/// Content-addressed bytes with their media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Media type used in descriptors and as `Content-Type` for manifests.
    pub media_type: String,
    /// `"sha256:<hex>"` of `data`.
    pub digest: String,
    /// Length of `data`.
    pub size: u64,
    /// The bytes.
    pub data: Bytes,
}

impl Blob {
    /// Hashes `data` and wraps it.
    pub fn new(media_type: impl Into<String>, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            size: data.len() as u64,
            data,
        }
    }

    /// The OCI descriptor `{mediaType, digest, size}` of this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// A layer blob plus the digest of its uncompressed tar (the config's `diff_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The (usually compressed) blob as pushed.
    pub blob: Blob,
    /// `"sha256:<hex>"` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// Same bytes under another media type (e.g. a `nondistributable` or `foreign` one).
    /// [`ImageBuilder`] keeps media types it does not know as they are.
    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.blob.media_type = media_type.to_string();
        self
    }
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// OCI image spec media types.
    Oci,
    /// Docker image manifest v2 schema 2 media types.
    Docker,
}

impl Format {
    /// Media type of a single-platform manifest.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    /// Media type of an index / manifest list.
    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }
    /// Media type of the image config.
    pub fn config_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    fn convert_layer_media_type(self, media_type: &str) -> String {
        let converted = match (self, media_type) {
            (Format::Docker, OCI_LAYER_GZIP) => DOCKER_LAYER_GZIP,
            (Format::Docker, OCI_LAYER_TAR) => DOCKER_LAYER_TAR,
            (Format::Oci, DOCKER_LAYER_GZIP) => OCI_LAYER_GZIP,
            (Format::Oci, DOCKER_LAYER_TAR) => OCI_LAYER_TAR,
            (_, other) => other,
        };
        converted.to_string()
    }
}

/// A single-platform image: manifest, config and layers, all with their bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The manifest document.
    pub manifest: Blob,
    /// The config document.
    pub config: Blob,
    /// Layers in manifest order.
    pub layers: Vec<Layer>,
    /// (os, architecture, variant).
    pub platform: (String, String, Option<String>),
}

impl Image {
    /// Digest of the manifest (what a pull by digest names).
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Config then layer blobs, in push order.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config)
            .chain(self.layers.iter().map(|l| &l.blob))
            .collect()
    }

    /// The descriptor of this image's manifest as an index entry, with its platform.
    pub fn descriptor(&self) -> Value {
        let mut d = self.manifest.descriptor();
        let (os, arch, variant) = &self.platform;
        let mut platform = json!({"architecture": arch, "os": os});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        d["platform"] = platform;
        d
    }

    /// This image's manifest with an annotation padding it to at least `min_size` bytes
    /// (still a valid manifest naming the same blobs): for oversized-manifest tests.
    pub fn padded_manifest(&self, min_size: usize) -> Blob {
        let mut doc = self.manifest_json();
        let len = self.manifest.data.len();
        doc["annotations"]["org.example.padding"] = json!("x".repeat(min_size.saturating_sub(len)));
        Blob::new(
            self.manifest.media_type.clone(),
            serde_json::to_vec(&doc).expect("manifest JSON"),
        )
    }

    /// The parsed manifest JSON.
    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest.data).unwrap_or(Value::Null)
    }
}

/// A multi-platform index (OCI) or manifest list (Docker) and the images it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The index document.
    pub manifest: Blob,
    /// The images, in index order.
    pub images: Vec<Image>,
}

impl Index {
    /// Digest of the index document.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }
}

/// Deterministic gzip: no file name, mtime 0, OS byte 255, default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = deterministic_gzip(Vec::with_capacity(data.len() / 2));
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn deterministic_gzip<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, Compression::default())
}

/// One tar entry written exactly as given: no path normalisation, so `../x`, `/etc/passwd` or a
/// symlink escaping the root can be produced for hostile-layer tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// Entry name, byte for byte (a PAX `path` record is added when longer than 100 bytes).
    pub path: Vec<u8>,
    /// Entry type.
    pub kind: EntryType,
    /// Link target for symlinks and hardlinks (PAX `linkpath` when longer than 100 bytes).
    pub link_name: Option<Vec<u8>>,
    /// Permission bits (and setuid etc.).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Contents (regular files).
    pub data: Vec<u8>,
    /// Extra PAX records written before the entry (e.g. `SCHILY.xattr.…`).
    pub pax: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    /// A regular file, mode 0644.
    pub fn file(path: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            path: path.as_bytes().to_vec(),
            kind: EntryType::Regular,
            link_name: None,
            mode: 0o644,
            uid: 0,
            gid: 0,
            data: data.to_vec(),
            pax: Vec::new(),
        }
    }
    /// A directory, mode 0755.
    pub fn dir(path: &str) -> RawEntry {
        RawEntry {
            kind: EntryType::Directory,
            mode: 0o755,
            ..RawEntry::file(path, b"")
        }
    }
    /// A symlink to `target` (not normalised).
    pub fn symlink(path: &str, target: &str) -> RawEntry {
        RawEntry {
            kind: EntryType::Symlink,
            link_name: Some(target.as_bytes().to_vec()),
            mode: 0o777,
            ..RawEntry::file(path, b"")
        }
    }
    /// A hardlink to `target` (not normalised).
    pub fn hardlink(path: &str, target: &str) -> RawEntry {
        RawEntry {
            kind: EntryType::Link,
            link_name: Some(target.as_bytes().to_vec()),
            ..RawEntry::file(path, b"")
        }
    }
}

fn fixed_header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(FIXED_MTIME);
    h.set_size(size);
    h
}

fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        // "LEN key=value\n" where LEN counts itself.
        let body_len = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn append_raw<W: Write>(tar: &mut tar::Builder<W>, entry: &RawEntry) -> io::Result<()> {
    let mut pax = entry.pax.clone();
    if entry.path.len() > 100 {
        pax.push(("path".into(), entry.path.clone()));
    }
    if let Some(link) = &entry.link_name
        && link.len() > 100
    {
        pax.push(("linkpath".into(), link.clone()));
    }
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut h = fixed_header(EntryType::XHeader, 0o644, records.len() as u64);
        h.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
        h.set_cksum();
        tar.append(&h, records.as_slice())?;
    }
    let mut h = fixed_header(entry.kind, entry.mode, entry.data.len() as u64);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    let n = entry.path.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&entry.path[..n]);
    if let Some(link) = &entry.link_name {
        let n = link.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_cksum();
    tar.append(&h, entry.data.as_slice())
}

/// Builds one layer, entries in the order added, every header deterministic.
///
/// Paths given to `add_*` must be relative and free of `..` (use [`LayerBuilder::raw_entry`] for
/// hostile names); an invalid one panics in `finish_*`.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    error: Option<io::Error>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        LayerBuilder { tar, error: None }
    }

    fn record(mut self, r: io::Result<()>) -> Self {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
        self
    }

    /// A regular file with `contents` and permission bits `mode`.
    pub fn add_file(mut self, path: &str, contents: &[u8], mode: u32) -> Self {
        let mut h = fixed_header(EntryType::Regular, mode, contents.len() as u64);
        let r = self.tar.append_data(&mut h, path, contents);
        self.record(r)
    }

    /// A directory.
    pub fn add_dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = fixed_header(EntryType::Directory, mode, 0);
        let name = format!("{}/", path.trim_end_matches('/'));
        let r = self.tar.append_data(&mut h, name, io::empty());
        self.record(r)
    }

    /// A symlink to `target` (which may point anywhere, including `..`).
    pub fn add_symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = fixed_header(EntryType::Symlink, 0o777, 0);
        let r = self.tar.append_link(&mut h, path, target);
        self.record(r)
    }

    /// A hardlink to `target`, a path inside the layer tree.
    pub fn add_hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = fixed_header(EntryType::Link, 0o644, 0);
        let r = self.tar.append_link(&mut h, path, target);
        self.record(r)
    }

    /// A whiteout deleting `path` from lower layers (`dir/.wh.name`).
    pub fn add_whiteout(self, path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.add_file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An opaque whiteout: hides everything lower layers had under `dir`.
    pub fn add_opaque_whiteout(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        self.add_file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// An entry written exactly as given (hostile names, odd types, PAX records).
    pub fn raw_entry(mut self, entry: RawEntry) -> Self {
        let r = append_raw(&mut self.tar, &entry);
        self.record(r)
    }

    /// The uncompressed tar bytes.
    ///
    /// # Panics
    /// If an entry had an invalid path.
    pub fn finish_tar(self) -> Vec<u8> {
        if let Some(e) = self.error {
            panic!("LayerBuilder: invalid entry: {e}");
        }
        self.tar.into_inner().expect("tar into memory")
    }

    /// A gzip layer (`…tar+gzip`, converted to the Docker type by [`ImageBuilder`] when needed).
    pub fn finish_gzip(self) -> Layer {
        let tar = self.finish_tar();
        Layer {
            diff_id: sha256_digest(&tar),
            blob: Blob::new(OCI_LAYER_GZIP, gzip(&tar)),
        }
    }

    /// An uncompressed layer (`…layer.v1.tar`); its digest equals its diff_id.
    pub fn finish_uncompressed(self) -> Layer {
        let tar = self.finish_tar();
        Layer {
            diff_id: sha256_digest(&tar),
            blob: Blob::new(OCI_LAYER_TAR, tar),
        }
    }
}

/// SplitMix64: tiny, deterministic forever (unlike a library PRNG whose stream may change).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Deterministic, compressible-ish content (words from a seeded vocabulary, numbers, newlines).
pub fn pseudo_text(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let vocab: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let len = 2 + (rng.next() % 9) as usize;
            (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(size + 16);
    while out.len() < size {
        let r = rng.next();
        match r % 16 {
            0 => out.extend_from_slice(format!("{} ", r >> 40).as_bytes()),
            1 => out.push(b'\n'),
            _ => {
                out.extend_from_slice(&vocab[((r >> 8) % 512) as usize]);
                out.push(b' ');
            }
        }
    }
    out.truncate(size);
    out
}

/// A deterministic gzip layer of about `size` uncompressed bytes, in files of at most 64 KiB
/// under `random/<seed>/`. Different seeds give different digests.
pub fn random_layer(seed: u64, size: usize) -> Layer {
    let content = pseudo_text(seed, size);
    let mut b = LayerBuilder::new()
        .add_dir("random", 0o755)
        .add_dir(&format!("random/{seed}"), 0o755);
    for (i, chunk) in content.chunks(64 * 1024).enumerate() {
        b = b.add_file(&format!("random/{seed}/f{i:05}"), chunk, 0o644);
    }
    b.finish_gzip()
}

/// Hashes everything written through it (the uncompressed tar, for the diff_id).
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
}
impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A deterministic gzip layer of a real directory, its contents at the layer root.
/// See [`layer_from_dir_at`].
pub fn layer_from_dir(dir: &Path) -> io::Result<Layer> {
    layer_from_dir_at(dir, "")
}

/// A deterministic gzip layer of a real directory placed under `prefix` (e.g. `"usr/share"`,
/// whose parents get directory entries). Entries are sorted by name; owners 0, mtimes fixed,
/// permission bits kept; files with several links become hardlinks to the first path seen;
/// sockets, fifos and devices are skipped. Streams (only the compressed bytes are held), but is
/// CPU-heavy: call it from `spawn_blocking` in async tests.
pub fn layer_from_dir_at(dir: &Path, prefix: &str) -> io::Result<Layer> {
    let sink = HashWriter {
        inner: deterministic_gzip(Vec::new()),
        hasher: Sha256::new(),
    };
    let mut tar = tar::Builder::new(sink);
    tar.mode(tar::HeaderMode::Deterministic);
    let prefix = prefix.trim_matches('/');
    let mut parent = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        parent.push_str(part);
        parent.push('/');
        let mut h = fixed_header(EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, &parent, io::empty())?;
    }
    let mut links = HashMap::new();
    walk(&mut tar, dir, &parent, &mut links)?;
    let sink = tar.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(sink.hasher.finalize()));
    let gz = sink.inner.finish()?;
    Ok(Layer {
        diff_id,
        blob: Blob::new(OCI_LAYER_GZIP, gz),
    })
}

fn walk<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    tar_dir: &str,
    links: &mut HashMap<(u64, u64), String>,
) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| with_path(e, dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| with_path(e, dir))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else { continue };
        let tar_path = format!("{tar_dir}{name}");
        let meta = std::fs::symlink_metadata(&path).map_err(|e| with_path(e, &path))?;
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = fixed_header(EntryType::Directory, mode, 0);
            tar.append_data(&mut h, format!("{tar_path}/"), io::empty())?;
            walk(tar, &path, &format!("{tar_path}/"), links)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| with_path(e, &path))?;
            let mut h = fixed_header(EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &tar_path, target)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    let mut h = fixed_header(EntryType::Link, mode, 0);
                    tar.append_link(&mut h, &tar_path, first)?;
                    continue;
                }
                links.insert(key, tar_path.clone());
            }
            let file = std::fs::File::open(&path).map_err(|e| with_path(e, &path))?;
            let mut h = fixed_header(EntryType::Regular, mode, meta.len());
            tar.append_data(&mut h, &tar_path, io::Read::take(file, meta.len()))
                .map_err(|e| with_path(e, &path))?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// Builds a single-platform [`Image`] from layers; everything not set has a fixed default
/// (linux/amd64, `Env` with the usual `PATH`, `Cmd ["/bin/sh"]`, created 2024-01-01).
pub struct ImageBuilder {
    format: Format,
    platform: (String, String, Option<String>),
    layers: Vec<Layer>,
    env: Vec<String>,
    cmd: Vec<String>,
    created: String,
    fields: BTreeMap<String, Value>,
    annotations: BTreeMap<String, String>,
}

impl ImageBuilder {
    /// An image with no layers yet.
    pub fn new(format: Format) -> ImageBuilder {
        ImageBuilder {
            format,
            platform: ("linux".into(), "amd64".into(), None),
            layers: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            created: FIXED_CREATED.into(),
            fields: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
    /// Sets (os, architecture, variant).
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.platform = (os.into(), arch.into(), variant.map(Into::into));
        self
    }
    /// Appends a layer (its media type is converted to this format's family).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    /// Appends several layers.
    pub fn layers(mut self, layers: impl IntoIterator<Item = Layer>) -> Self {
        self.layers.extend(layers);
        self
    }
    /// Replaces `config.Env`.
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Replaces `config.Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Sets `created` (RFC 3339).
    pub fn created(mut self, created: &str) -> Self {
        self.created = created.into();
        self
    }
    /// Sets or overrides a top-level config field (e.g. `"config"`, `"author"`, `"rootfs"`).
    pub fn config_field(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.into(), value);
        self
    }
    /// Adds a manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Serialises config and manifest.
    pub fn build(self) -> Image {
        let format = self.format;
        let layers: Vec<Layer> = self
            .layers
            .into_iter()
            .map(|mut l| {
                l.blob.media_type = format.convert_layer_media_type(&l.blob.media_type);
                l
            })
            .collect();
        let (os, arch, variant) = &self.platform;
        let mut config = json!({
            "architecture": arch,
            "os": os,
            "created": self.created,
            "config": {"Env": self.env, "Cmd": self.cmd},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>()},
            "history": (0..layers.len()).map(|i| json!({"created": self.created, "created_by": format!("haul-test layer {i}")})).collect::<Vec<_>>(),
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        for (k, v) in self.fields {
            config[k] = v;
        }
        let config = Blob::new(
            format.config_media_type(),
            serde_json::to_vec(&config).expect("config JSON"),
        );
        let doc = ManifestDoc {
            schema_version: 2,
            media_type: format.manifest_media_type(),
            config: Descriptor {
                media_type: &config.media_type,
                digest: &config.digest,
                size: config.size,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: &l.blob.media_type,
                    digest: &l.blob.digest,
                    size: l.blob.size,
                })
                .collect(),
            annotations: &self.annotations,
        };
        let manifest = Blob::new(
            format.manifest_media_type(),
            serde_json::to_vec(&doc).expect("manifest JSON"),
        );
        Image {
            manifest,
            config,
            layers,
            platform: self.platform,
        }
    }
}

/// An OCI image index or Docker manifest list naming each image with its platform.
pub fn index(format: Format, images: Vec<Image>) -> Index {
    let manifest = raw_index(format, images.iter().map(Image::descriptor).collect());
    Index { manifest, images }
}

/// An index / manifest list with hand-written entries (attestations, unknown platforms,
/// nested indexes…).
pub fn raw_index(format: Format, manifests: Vec<Value>) -> Blob {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": format.index_media_type(),
        "manifests": manifests,
    });
    Blob::new(
        format.index_media_type(),
        serde_json::to_vec(&doc).expect("index JSON"),
    )
}

/// A Docker schema 1 signed manifest naming `layers` (signature is a syntactically plausible
/// placeholder): for refusal tests. The real registry 2.8 refuses schema 1 pushes by default.
pub fn schema1_manifest(name: &str, tag: &str, layers: &[Layer]) -> Blob {
    let fs_layers: Vec<Value> = layers
        .iter()
        .rev()
        .map(|l| json!({"blobSum": l.blob.digest}))
        .collect();
    let history: Vec<Value> = layers
        .iter()
        .rev()
        .enumerate()
        .map(|(i, l)| {
            let v1 = json!({"id": format!("{:0>64}", i), "created": FIXED_CREATED, "container_config": {"Cmd": [l.diff_id]}});
            json!({"v1Compatibility": v1.to_string()})
        })
        .collect();
    let doc = json!({
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": fs_layers,
        "history": history,
        "signatures": [{
            "header": {"jwk": {"crv": "P-256", "kid": "HAUL:TEST", "kty": "EC", "x": "AAAA", "y": "AAAA"}, "alg": "ES256"},
            "signature": "AAAA",
            "protected": "eyJmb3JtYXRMZW5ndGgiOjAsImZvcm1hdFRhaWwiOiJDbjAiLCJ0aW1lIjoiMjAyNC0wMS0wMVQwMDowMDowMFoifQ"
        }]
    });
    Blob::new(
        DOCKER_SCHEMA1_SIGNED,
        serde_json::to_vec_pretty(&doc).expect("schema1 JSON"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let r = pax_records(&[("path".into(), b"x".to_vec())]);
        assert_eq!(r, b"9 path=x\n");
        let long = vec![b'a'; 95];
        let r = pax_records(&[("path".into(), long)]);
        assert_eq!(r.len(), 105);
        assert!(r.starts_with(b"105 path="));
    }

    #[test]
    fn whiteout_names() {
        let tar = LayerBuilder::new()
            .add_whiteout("etc/passwd")
            .add_whiteout("top")
            .add_opaque_whiteout("var/lib/")
            .finish_tar();
        let mut ar = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["etc/.wh.passwd", ".wh.top", "var/lib/.wh..wh..opq"]);
    }
}
