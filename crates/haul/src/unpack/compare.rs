//! Whether a cached layer is still what its blob extracts to.
//!
//! The cached directory and a fresh extraction of the verified blob are both read back as the
//! tar streams [`tar_cached`](super::dirtar::tar_cached) makes of them (what merging replays),
//! and compared entry by entry: type, mode, owner (when the cache was built with ownership),
//! mtime, content, link target, device numbers, xattrs, and the sparse map. Whiteout markers are
//! compared by name only: their own metadata is whenever they were extracted, and merging reads
//! nothing but their name. Reusing the extraction and the stream, instead of a second reading of
//! the layer's tar, means what is compared is exactly what an unpack would get.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::apply::names::{self, Role};
use crate::digest::{Algorithm, Digest, Hasher};

/// How a layer-cache entry differs from what its verified blob extracts to, at the first path
/// (in byte order) that does. Found by [`verify`](crate::verify::verify),
/// in [`Fault::Altered`](crate::verify::Fault::Altered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alteration {
    /// Relative to the layer's root; empty for the entry as a whole.
    pub path: PathBuf,
    /// What differs there.
    pub change: Change,
}

impl fmt::Display for Alteration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.as_os_str().is_empty() {
            write!(f, "{}", self.change)
        } else {
            write!(f, "{}: {}", self.path.display(), self.change)
        }
    }
}

/// What differs at an [`Alteration`]'s path, between the cached entry and a fresh extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// In the cache, not in the layer.
    Added,
    /// In the layer, not in the cache.
    Removed,
    /// The file type (regular file, directory, symlink, device…).
    Type,
    /// The permission bits, setuid, setgid and sticky included.
    Mode,
    /// The numeric owner (compared only when the cache was built with ownership).
    Owner,
    /// The modification time, to the nanosecond.
    ModificationTime,
    /// A regular file's bytes, or a sparse file's map and real size.
    Content,
    /// A symlink's or hardlink's target.
    LinkTarget,
    /// A device's major and minor numbers.
    DeviceNumbers,
    /// Extended attributes (`user.*` only, unless the cache and the check ran with the same
    /// privileges).
    Xattrs,
    /// What the entry records beside the tree (hardlinks into lower layers, diff_id).
    Metadata,
    /// The cache could not be read back; the text says why.
    Unreadable(String),
    /// The layer could not be extracted again to compare with; the text says why.
    Unverifiable(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added => f.write_str("added (not in the layer)"),
            Change::Removed => f.write_str("removed (the layer has it)"),
            Change::Type => f.write_str("type changed"),
            Change::Mode => f.write_str("mode changed"),
            Change::Owner => f.write_str("owner changed"),
            Change::ModificationTime => f.write_str("modification time changed"),
            Change::Content => f.write_str("content changed"),
            Change::LinkTarget => f.write_str("link target changed"),
            Change::DeviceNumbers => f.write_str("device numbers changed"),
            Change::Xattrs => f.write_str("xattrs changed"),
            Change::Metadata => f.write_str("the entry's metadata differs from the layer's"),
            Change::Unreadable(why) => write!(f, "cannot be read back: {why}"),
            Change::Unverifiable(why) => write!(f, "cannot be compared with its layer: {why}"),
        }
    }
}

/// What is compared besides names, types, modes, times and content.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compare {
    /// Numeric owners (only meaningful when both trees were built with ownership).
    pub owners: bool,
    /// Xattrs outside `user.*` (only meaningful when both trees were built with the same
    /// privileges: an unprivileged extraction cannot set `trusted.*` or `security.*`).
    pub all_xattrs: bool,
}

/// One entry of a stream, as compared.
#[derive(Debug, PartialEq, Eq)]
struct Info {
    kind: u8,
    mode: u32,
    owner: (u64, u64),
    mtime: (u64, Option<Vec<u8>>),
    content: Option<Digest>,
    link: Option<Vec<u8>>,
    device: (Option<u32>, Option<u32>),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    whiteout: bool,
}

/// The first difference between `layer` (a fresh extraction's stream) and `cache` (the cached
/// entry's). An error reading `cache` is a difference; one reading `layer` is an error.
pub(crate) fn first_difference(
    layer: impl Read,
    cache: impl Read,
    how: Compare,
) -> io::Result<Option<Alteration>> {
    let expected = index(layer, how)?;
    let found = match index(cache, how) {
        Ok(found) => found,
        Err(e) => {
            return Ok(Some(Alteration {
                path: PathBuf::new(),
                change: Change::Unreadable(e.to_string()),
            }));
        }
    };
    let mut paths: Vec<&Vec<u8>> = expected.keys().chain(found.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let change = match (expected.get(path), found.get(path)) {
            (Some(_), None) => Some(Change::Removed),
            (None, Some(_)) => Some(Change::Added),
            (Some(e), Some(f)) => difference(e, f),
            (None, None) => None,
        };
        if let Some(change) = change {
            return Ok(Some(Alteration {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
                change,
            }));
        }
    }
    Ok(None)
}

fn difference(e: &Info, f: &Info) -> Option<Change> {
    if e.kind != f.kind {
        return Some(Change::Type);
    }
    if e.whiteout {
        return None;
    }
    // The most telling change first: an edited file usually has a new mtime too.
    let checks = [
        (e.content != f.content, Change::Content),
        (e.link != f.link, Change::LinkTarget),
        (e.mode != f.mode, Change::Mode),
        (e.owner != f.owner, Change::Owner),
        (e.device != f.device, Change::DeviceNumbers),
        (e.xattrs != f.xattrs, Change::Xattrs),
        (e.mtime != f.mtime, Change::ModificationTime),
    ];
    checks
        .into_iter()
        .find_map(|(differs, change)| differs.then_some(change))
}

fn index(stream: impl Read, how: Compare) -> io::Result<BTreeMap<Vec<u8>, Info>> {
    let mut archive = tar::Archive::new(stream);
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type().as_byte();
        let mode = header.mode()?;
        let owner = if how.owners {
            (header.uid()?, header.gid()?)
        } else {
            (0, 0)
        };
        let header_mtime = header.mtime()?;
        let device = if matches!(kind, b'3' | b'4') {
            (header.device_major()?, header.device_minor()?)
        } else {
            (None, None)
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut pax_mtime = None;
        let mut xattrs = Vec::new();
        let mut sparse = Vec::new();
        if let Some(records) = entry.pax_extensions()? {
            for record in records {
                let record = record?;
                let (key, value) = (record.key_bytes(), record.value_bytes());
                if key == b"mtime" {
                    pax_mtime = Some(value.to_vec());
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if how.all_xattrs || name.starts_with(b"user.") {
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                } else if key.starts_with(b"GNU.sparse.") {
                    sparse.push((key.to_vec(), value.to_vec()));
                }
            }
        }
        let whiteout = matches!(
            names::role(Path::new(std::ffi::OsStr::from_bytes(&path))),
            Role::Whiteout(_)
        );
        // Content and, for a sparse file, its map and real size: what the file is.
        let mut hasher = Hasher::new(Algorithm::Sha256);
        for (key, value) in &sparse {
            hasher.update(key);
            hasher.update(b"=");
            hasher.update(value);
            hasher.update(b"\n");
        }
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let content = (kind == b'0' || size > 0).then(|| hasher.finish());
        let info = Info {
            kind,
            mode,
            owner,
            // The header's field only counts when no PAX record overrides it.
            mtime: match pax_mtime {
                Some(pax) => (0, Some(pax)),
                None => (header_mtime, None),
            },
            content,
            link,
            device,
            xattrs,
            whiteout,
        };
        out.insert(path, info);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, u32, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mtime(1);
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const HOW: Compare = Compare {
        owners: true,
        all_xattrs: true,
    };

    #[test]
    fn finds_the_first_change_and_names_it() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let layer = tar_of(&[
            ("a/", Directory, 0o755, b""),
            ("a/f", Regular, 0o644, b"hello"),
            ("a/g", Regular, 0o644, b"x"),
        ]);
        let same = first_difference(&layer[..], &layer[..], HOW).unwrap();
        assert_eq!(same, None);
        let cases: [(Vec<u8>, &str, Change); 5] = [
            (
                tar_of(&[
                    ("a/", Directory, 0o755, b""),
                    ("a/f", Regular, 0o644, b"HELLO"),
                    ("a/g", Regular, 0o644, b"x"),
                ]),
                "a/f",
                Change::Content,
            ),
            (
                tar_of(&[
                    ("a/", Directory, 0o755, b""),
                    ("a/f", Regular, 0o4755, b"hello"),
                    ("a/g", Regular, 0o644, b"x"),
                ]),
                "a/f",
                Change::Mode,
            ),
            (
                tar_of(&[
                    ("a/", Directory, 0o755, b""),
                    ("a/e", Regular, 0o644, b""),
                    ("a/f", Regular, 0o644, b"hello"),
                    ("a/g", Regular, 0o644, b"x"),
                ]),
                "a/e",
                Change::Added,
            ),
            (
                tar_of(&[
                    ("a/", Directory, 0o755, b""),
                    ("a/f", Regular, 0o644, b"hello"),
                ]),
                "a/g",
                Change::Removed,
            ),
            (
                tar_of(&[
                    ("a/", Directory, 0o755, b""),
                    ("a/f", Symlink, 0o777, b""),
                    ("a/g", Regular, 0o644, b"x"),
                ]),
                "a/f",
                Change::Type,
            ),
        ];
        for (cache, path, change) in cases {
            let found = first_difference(&layer[..], &cache[..], HOW).unwrap();
            assert_eq!(
                found,
                Some(Alteration {
                    path: path.into(),
                    change
                })
            );
        }
    }

    #[test]
    fn a_cache_that_cannot_be_read_is_a_difference() {
        let layer = tar_of(&[("f", tar::EntryType::Regular, 0o644, b"data")]);
        let mut broken = layer.clone();
        broken[0] ^= 0x40;
        let found = first_difference(&layer[..], &broken[..], HOW).unwrap();
        assert!(matches!(
            found,
            Some(Alteration {
                change: Change::Unreadable(_),
                ..
            })
        ));
        assert!(first_difference(&broken[..], &layer[..], HOW).is_err());
    }
}
