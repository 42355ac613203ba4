//! Disk space: what the store's filesystem has free, how a size reads to a person, and whether
//! an error somewhere down a chain was a full disk.
//!
//! A pull checks free space before it downloads anything, so a full disk is reported up front
//! with numbers instead of halfway through a layer; the check cannot be exact (the uncompressed
//! size of a layer is not known until it is extracted). Extraction then counts what it writes
//! against the free space it started with ([`Exceeded::Space`]) and stops an entry that would not
//! fit before writing it; a disk that fills anyway (other writers) is recognised wherever the
//! error surfaces and reported the same way.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::Path;

use crate::unpack::budget::Exceeded;

/// How much room extracting a layer is assumed to take, as a multiple of its compressed size.
/// Layers of real images expand 2–4× under gzip; the low end keeps the check from refusing pulls
/// that would fit, and a disk that fills anyway is still reported cleanly.
pub(crate) const EXTRACTION_ESTIMATE: u64 = 2;

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `err`, or any error it wraps (its [`source`](Error::source) chain, and errors inside
/// [`io::Error`]s), is the filesystem running out of space or quota, or an extraction refused
/// because it would have ([`Exceeded::Space`]).
#[must_use]
pub fn is_no_space(err: &(dyn Error + 'static)) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && is_no_space_io(io)
        {
            return true;
        }
        if let Some(Exceeded::Space { .. }) = e.downcast_ref::<Exceeded>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn is_no_space_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e.get_ref().is_some_and(|inner| is_no_space(inner))
}

/// A byte count in binary units, one decimal: `1.2 GiB`, `300 MiB`, `512 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else if value >= 100.0 {
            write!(f, "{value:.0} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(Size(512).to_string(), "512 B");
        assert_eq!(Size(300 << 20).to_string(), "300 MiB");
        assert_eq!(Size(1288490189).to_string(), "1.2 GiB");
        assert_eq!(Size(1536).to_string(), "1.5 KiB");
        assert_eq!(Size(1 << 60).to_string(), "1.0 EiB");
    }

    #[test]
    fn finds_a_full_disk_anywhere_in_a_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(is_no_space(&Outer(full)));
        let wrapped = io::Error::other(Outer(io::Error::from_raw_os_error(28)));
        assert!(is_no_space(&wrapped));
        assert!(!is_no_space(&Outer(io::Error::from(
            io::ErrorKind::PermissionDenied
        ))));
        let refused = Exceeded::Space {
            need: 2,
            free: 1,
            root: "/store".into(),
        };
        assert!(is_no_space(&io::Error::other(refused)));
        assert!(!is_no_space(&Exceeded::Layer { limit: 1 }));
    }

    #[test]
    fn reports_free_space_of_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
