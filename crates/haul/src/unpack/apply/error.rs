//! Why a layer could not be applied: one error type naming the entry, with the problem as a
//! field a caller can match on, never as text.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::super::budget::Exceeded;

/// Why a hardlink entry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardlinkProblem {
    /// The target climbs above the root.
    EscapesRoot,
    /// Nothing exists at the target.
    Missing,
    /// The target is a directory (or the root).
    Directory,
    /// The entry names itself as its target.
    ItSelf,
    /// Cache mode only: the target lies in a lower layer and a later entry of the same layer
    /// replaces or removes it, which a cached layer cannot record.
    ChangedLater,
}

impl fmt::Display for HardlinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardlinkProblem::EscapesRoot => "escapes the root",
            HardlinkProblem::Missing => "does not exist",
            HardlinkProblem::Directory => "is a directory",
            HardlinkProblem::ItSelf => "is the entry itself",
            HardlinkProblem::ChangedLater => {
                "lies in a lower layer and is changed later in this layer (cannot be cached)"
            }
        })
    }
}

/// A layer that could not be applied. The root is then partly updated and must be discarded.
///
/// `path` fields are entry paths relative to the root, as cleaned from the tar.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The root directory itself could not be opened.
    #[error("cannot open the layer root {}", path.display())]
    OpenRoot {
        /// The root as given by the caller.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// [`apply_layer_for_cache`](super::apply_layer_for_cache) was given a root that is not empty.
    #[error("the layer cache directory {} is not empty", path.display())]
    RootNotEmpty {
        /// The root as given by the caller.
        path: PathBuf,
    },
    /// The tar stream is malformed or could not be read.
    #[error("cannot read the layer tar")]
    Tar {
        /// The tar crate's or the reader's error.
        #[source]
        source: io::Error,
    },
    /// A PAX header, PAX global header, GNU long name or GNU long link entry larger than Go's
    /// archive/tar (docker, containerd) reads: refused before it is held in memory.
    #[error("a tar {} entry of {size} bytes ({}): docker and containerd refuse those over {}",
        extension_name(*typeflag), crate::space::Size(*size), crate::space::Size(MAX_EXTENSION))]
    ExtensionTooLarge {
        /// The entry's typeflag: `x`, `g`, `L` or `K`.
        typeflag: u8,
        /// Its size.
        size: u64,
    },
    /// The stream ended inside a file's content.
    #[error("{}: the layer tar ends inside this file ({actual} of {expected} bytes)",
        path.display())]
    TruncatedEntry {
        /// The entry.
        path: PathBuf,
        /// Size from the header.
        expected: u64,
        /// Bytes the stream held.
        actual: u64,
    },
    /// The entry's name climbs above the root (`../x`).
    #[error("{}: path escapes the root", path.display())]
    Escape {
        /// The name as written in the tar.
        path: PathBuf,
    },
    /// A hardlink whose target is unusable.
    #[error("{}: hardlink target {} {problem}", path.display(), target.display())]
    BadHardlink {
        /// The entry.
        path: PathBuf,
        /// The target as written in the tar.
        target: PathBuf,
        /// What is wrong with it.
        problem: HardlinkProblem,
    },
    /// `.wh.`, `.wh..` or `.wh...`: a whiteout of the directory itself or its parent.
    #[error("{}: invalid whiteout name", path.display())]
    BadWhiteout {
        /// The entry.
        path: PathBuf,
    },
    /// A non-directory entry for `.` or `/`.
    #[error("{}: only a directory entry may stand for the root", path.display())]
    RootNotDirectory {
        /// The name as written in the tar.
        path: PathBuf,
    },
    /// An entry type the applier does not create (e.g. an unknown typeflag).
    #[error("{}: unsupported tar entry type {:?}", path.display(), char::from(*typeflag))]
    UnsupportedType {
        /// The entry.
        path: PathBuf,
        /// The header's typeflag byte.
        typeflag: u8,
    },
    /// `GNU.sparse.*` records of a version haul does not know.
    #[error("{}: unsupported GNU sparse format version", path.display())]
    UnsupportedSparse {
        /// The entry.
        path: PathBuf,
    },
    /// A sparse entry whose map cannot be right.
    #[error("{}: invalid sparse file: {problem}", path.display())]
    BadSparse {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        problem: SparseProblem,
    },
    /// Writing the entry would pass the extraction budget; nothing of it was written.
    #[error("{}: refused before writing it: with its {size} bytes ({}), {reason}",
        path.display(), crate::space::Size(*size))]
    TooLarge {
        /// The entry.
        path: PathBuf,
        /// The bytes it would have taken (the real size for a sparse file, plus its header).
        size: u64,
        /// Which limit.
        #[source]
        reason: Exceeded,
    },
    /// A header field that cannot be used (unparsable number, missing link name, a uid past 32
    /// bits…).
    #[error("{}: invalid tar header field `{field}`", path.display())]
    BadHeader {
        /// The entry.
        path: PathBuf,
        /// Which field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: io::Error,
    },
    /// A file-system operation failed.
    #[error("{}: cannot {op}", path.display())]
    Io {
        /// The entry.
        path: PathBuf,
        /// What was attempted, e.g. `"create file"`.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What is wrong with a sparse entry's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseProblem {
    /// A size, offset or length is not a decimal number that fits 64 bits.
    BadNumber,
    /// No `GNU.sparse.size` or `GNU.sparse.realsize`.
    MissingSize,
    /// The map is malformed: an odd count, offsets and lengths out of step, a count that does
    /// not match `GNU.sparse.numblocks` or that the data cannot hold.
    BadMap,
    /// Runs out of order, overlapping or past the real size.
    BadRuns,
    /// The runs do not add up to the data the entry carries.
    DataMismatch,
    /// A sparse map on an entry that is not a regular file.
    NotAFile,
}

impl fmt::Display for SparseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SparseProblem::BadNumber => "a number in the map is not a decimal number",
            SparseProblem::MissingSize => "the real size is missing",
            SparseProblem::BadMap => "the map is malformed",
            SparseProblem::BadRuns => "data runs overlap, are out of order or pass the real size",
            SparseProblem::DataMismatch => "the data runs do not add up to the entry's data",
            SparseProblem::NotAFile => "only regular files can be sparse",
        })
    }
}

/// The largest PAX header or GNU long name Go's archive/tar reads (its `maxSpecialFileSize`).
pub const MAX_EXTENSION: u64 = 1 << 20;

fn extension_name(typeflag: u8) -> &'static str {
    match typeflag {
        b'x' => "PAX header",
        b'g' => "PAX global header",
        b'L' => "GNU long name",
        b'K' => "GNU long link",
        _ => "extension",
    }
}

pub(super) fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> ApplyError + 'a {
    move |e| ApplyError::Io {
        path: path.to_owned(),
        op,
        source: e.into(),
    }
}

pub(super) fn bad_header<'a>(
    path: &'a Path,
    field: &'static str,
) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::BadHeader {
        path: path.to_owned(),
        field,
        source,
    }
}

pub(super) fn out_of_range(path: &Path, field: &'static str) -> ApplyError {
    bad_header(path, field)(io::Error::new(
        io::ErrorKind::InvalidData,
        "value out of range",
    ))
}

pub(super) fn missing_link(path: &Path) -> ApplyError {
    bad_header(path, "linkname")(io::Error::new(
        io::ErrorKind::InvalidData,
        "link entry without a target",
    ))
}

#[cfg(test)]
mod tests {
    use rustix::io::Errno;

    use super::*;

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            (
                ApplyError::Escape {
                    path: "../x".into(),
                },
                "../x: path escapes the root",
            ),
            (
                ApplyError::BadHardlink {
                    path: "h".into(),
                    target: "d".into(),
                    problem: HardlinkProblem::Directory,
                },
                "h: hardlink target d is a directory",
            ),
            (
                ApplyError::UnsupportedType {
                    path: "v".into(),
                    typeflag: b'V',
                },
                "v: unsupported tar entry type 'V'",
            ),
            (
                ApplyError::Io {
                    path: "a/b".into(),
                    op: "create file",
                    source: io::Error::from(Errno::ACCESS),
                },
                "a/b: cannot create file",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
