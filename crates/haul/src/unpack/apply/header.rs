//! What a member's header says, read as docker (Go's archive/tar) reads it: numeric owners that
//! chown cannot misread, PAX times with nanoseconds and `SCHILY.xattr.*` records, names cut at
//! their first NUL, empty numeric fields as 0, and PAX records Go refuses refused.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Timespec, Timestamps, Uid};

use super::ApplyOptions;
use super::error::{ApplyError, bad_header, out_of_range};
use super::names;

/// Metadata every created node gets.
pub(super) struct Meta {
    pub(super) mode: u32,
    /// The owner to give, when ownership is applied: `None` for an id of -1, which leaves the
    /// node's as it is.
    pub(super) owner: Option<(Option<Uid>, Option<Gid>)>,
    pub(super) times: Timestamps,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// The metadata of `entry` (`path`: its cleaned name, for errors), owner and xattrs only
    /// when `opts` asks for them.
    pub(super) fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        opts: &ApplyOptions,
    ) -> Result<Meta, ApplyError> {
        let header = entry.header();
        let mode = header.mode().map_err(bad_header(path, "mode"))? & 0o7777;
        let owner = if opts.preserve_ownership {
            // The tar crate has already put PAX uid/gid into the header.
            let old = header.as_old();
            let uid = id(or_empty(header.uid(), &old.uid).map_err(bad_header(path, "uid"))?)
                .ok_or_else(|| out_of_range(path, "uid"))?;
            let gid = id(or_empty(header.gid(), &old.gid).map_err(bad_header(path, "gid"))?)
                .ok_or_else(|| out_of_range(path, "gid"))?;
            Some((uid.map(Uid::from_raw), gid.map(Gid::from_raw)))
        } else {
            None
        };
        let mtime = header.mtime().map_err(bad_header(path, "mtime"))?;
        let mut time = Timespec {
            tv_sec: i64::try_from(mtime).map_err(|_| out_of_range(path, "mtime"))?,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(records) = entry
            .pax_extensions()
            .map_err(|source| ApplyError::Tar { source })?
        {
            for record in records {
                let record = record.map_err(|source| ApplyError::Tar { source })?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    let (secs, nanos) = names::parse_pax_time(record.value_bytes())
                        .ok_or_else(|| out_of_range(path, "PAX mtime"))?;
                    time = Timespec {
                        tv_sec: secs,
                        tv_nsec: nanos,
                    };
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                    && opts.xattrs
                {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            owner,
            times: Timestamps {
                last_access: time,
                last_modification: time,
            },
            xattrs,
        })
    }
}

/// A tar's numeric id as chown takes it: `Some(None)` for 4294967295, which is -1 to chown and
/// leaves the owner as it is (docker and GNU tar pass it to chown so); `None` past 32 bits, where
/// chown would read another id.
fn id(raw: u64) -> Option<Option<u32>> {
    u32::try_from(raw)
        .ok()
        .map(|id| (id != LEAVE_UNCHANGED).then_some(id))
}

/// The id chown reads as "leave unchanged" (-1).
pub(super) const LEAVE_UNCHANGED: u32 = u32::MAX;

/// A GNU long name or link ends at its first NUL, as GNU tar and Go's archive/tar read it.
pub(super) fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|b| *b == 0).next().unwrap_or_default()
}

/// A numeric field left empty (all NULs or spaces) is 0, as for GNU tar and Go's archive/tar.
fn or_empty(value: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    match value {
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// Refuses PAX records Go's archive/tar (docker, containerd) refuses: a key holding a NUL, or a
/// NUL inside a name (GNU tar would cut the name there).
pub(super) fn check_pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
    let path = PathBuf::from(OsStr::from_bytes(until_nul(&entry.path_bytes())));
    let Some(records) = entry
        .pax_extensions()
        .map_err(|source| ApplyError::Tar { source })?
    else {
        return Ok(());
    };
    for record in records {
        let record = record.map_err(|source| ApplyError::Tar { source })?;
        let (key, value) = (record.key_bytes(), record.value_bytes());
        let is_name = matches!(key, b"path" | b"linkpath" | b"uname" | b"gname");
        if key.contains(&0) || (is_name && value.contains(&0)) {
            return Err(bad_header(&path, "PAX record")(io::Error::new(
                io::ErrorKind::InvalidData,
                "a NUL byte in a PAX record's key or name",
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_chown_would_misread_are_refused_and_minus_one_leaves_the_owner() {
        assert_eq!(id(0), Some(Some(0)));
        assert_eq!(id(65_534), Some(Some(65_534)));
        assert_eq!(id(u64::from(u32::MAX) - 1), Some(Some(u32::MAX - 1)));
        // -1 to chown: the owner stays, as docker and GNU tar leave it.
        assert_eq!(id(u64::from(u32::MAX)), Some(None));
        assert_eq!(id(u64::from(u32::MAX) + 1), None);
        assert_eq!(id(1 << 40), None);
    }
}
