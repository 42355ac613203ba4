//! Writing an entry's headers: a ustar header with what fits, and a PAX header before it for
//! what does not (long names and link targets, ids past 7 octal digits, sizes past 11,
//! nanosecond or negative mtimes, xattrs), a file with holes as a PAX sparse entry of GNU format
//! 1.0.

use std::fs::File;
use std::io::{self, Read};

use tar::{EntryType, Header};

use super::Walker;
use super::reading::{Exact, RunReader, Xattrs};
use crate::unpack::apply::CACHED_SIZE_RECORD;

/// The largest number an 11-digit octal header field holds (sizes, mtimes).
const OCTAL_11: u64 = 0o77_777_777_777;
/// The largest number a 7-digit octal header field holds (uid, gid).
const OCTAL_7: u64 = 0o7_777_777;

/// Metadata of one entry, as it goes into its header.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: (i64, u32),
    pub(super) xattrs: Xattrs,
}

impl Walker<'_> {
    /// Appends a file with holes as a PAX sparse entry, GNU format 1.0: the records name the file
    /// and its real size, the data holds the map (count, then offset and length of each run, one
    /// decimal number a line, padded to a block) followed by the runs themselves.
    pub(super) fn append_sparse(
        &mut self,
        path: &[u8],
        meta: &Meta,
        real_size: u64,
        file: File,
        runs: Vec<(u64, u64)>,
    ) -> io::Result<()> {
        let mut map = format!("{}\n", runs.len()).into_bytes();
        for (offset, len) in &runs {
            map.extend_from_slice(format!("{offset}\n{len}\n").as_bytes());
        }
        map.resize(map.len().div_ceil(512) * 512, 0);
        let data: u64 = runs.iter().map(|(_, len)| len).sum();
        let size = map.len() as u64 + data;
        // The sparse records go first, ahead of the xattrs `append_full` adds.
        let records: [(&[u8], Vec<u8>); 4] = [
            (b"GNU.sparse.major", b"1".to_vec()),
            (b"GNU.sparse.minor", b"0".to_vec()),
            (b"GNU.sparse.name", path.to_vec()),
            (b"GNU.sparse.realsize", real_size.to_string().into_bytes()),
        ];
        let mut extra = Vec::new();
        for (key, value) in &records {
            pax_record(&mut extra, key, value);
        }
        let content = io::Cursor::new(map).chain(Exact {
            inner: RunReader {
                file,
                runs: runs.into_iter(),
                current: None,
            },
            left: data,
        });
        self.append_full(
            EntryType::Regular,
            path,
            None,
            meta,
            None,
            size,
            content,
            extra,
        )
    }

    /// Appends a regular file of `size` bytes as an entry without content that names its size
    /// in a `HAUL.cache.size` record: its data stays in the cache, at the same path.
    pub(super) fn append_reference(
        &mut self,
        path: &[u8],
        meta: &Meta,
        size: u64,
    ) -> io::Result<()> {
        let mut extra = Vec::new();
        pax_record(&mut extra, CACHED_SIZE_RECORD, size.to_string().as_bytes());
        self.append_full(
            EntryType::Regular,
            path,
            None,
            meta,
            None,
            0,
            io::empty(),
            extra,
        )
    }

    /// Appends an entry without content.
    pub(super) fn append(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
    ) -> io::Result<()> {
        self.append_with(kind, path, link, meta, dev, 0, io::empty())
    }

    /// Appends one entry with `size` bytes of `data`: a PAX header first when the ustar header
    /// cannot say it all.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append_with(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
        size: u64,
        data: impl Read,
    ) -> io::Result<()> {
        self.append_full(kind, path, link, meta, dev, size, data, Vec::new())
    }

    /// [`Walker::append_with`] with `extra` PAX records (already encoded) first.
    #[allow(clippy::too_many_arguments)]
    fn append_full(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        meta: &Meta,
        dev: Option<(u32, u32)>,
        size: u64,
        data: impl Read,
        extra: Vec<u8>,
    ) -> io::Result<()> {
        self.pax.clear();
        self.pax.extend_from_slice(&extra);
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        set_field(&mut header.as_old_mut().name, path, "path", &mut self.pax);
        if let Some(link) = link {
            set_field(
                &mut header.as_old_mut().linkname,
                link,
                "linkpath",
                &mut self.pax,
            );
        }
        header.set_mode(meta.mode & 0o7777);
        if meta.uid <= OCTAL_7 {
            header.set_uid(meta.uid);
        } else {
            pax_record(&mut self.pax, b"uid", meta.uid.to_string().as_bytes());
        }
        if meta.gid <= OCTAL_7 {
            header.set_gid(meta.gid);
        } else {
            pax_record(&mut self.pax, b"gid", meta.gid.to_string().as_bytes());
        }
        let (secs, nanos) = meta.mtime;
        match u64::try_from(secs) {
            Ok(s) if s <= OCTAL_11 && nanos == 0 => header.set_mtime(s),
            _ => pax_record(&mut self.pax, b"mtime", pax_time(secs, nanos).as_bytes()),
        }
        if size > OCTAL_11 {
            pax_record(&mut self.pax, b"size", size.to_string().as_bytes());
        } else {
            header.set_size(size);
        }
        if let Some((major, minor)) = dev {
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
        }
        for (name, value) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut self.pax, &key, value);
        }
        if !self.pax.is_empty() {
            let mut pax = Header::new_ustar();
            pax.set_entry_type(EntryType::XHeader);
            pax.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
            pax.set_mode(0o644);
            pax.set_size(self.pax.len() as u64);
            pax.set_cksum();
            self.tar.append(&pax, self.pax.as_slice())?;
        }
        if size > OCTAL_11 {
            // The field holds what fits; readers take the PAX record.
            header.set_size(OCTAL_11);
        }
        header.set_cksum();
        self.tar.append(&header, data)
    }
}

/// Puts `value` into a header field, or into a PAX record when it does not fit.
fn set_field(field: &mut [u8], value: &[u8], key: &str, pax: &mut Vec<u8>) {
    if value.len() <= field.len() {
        field[..value.len()].copy_from_slice(value);
    } else {
        // Readers that know PAX take the record; the field keeps what fits.
        let n = field.len();
        field.copy_from_slice(&value[..n]);
        pax_record(pax, key.as_bytes(), value);
    }
}

/// Appends `"LEN key=value\n"`, where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time from seconds and nanoseconds (`0..1e9`): (-2, 750000000) is `-1.250000000`.
pub(super) fn pax_time(secs: i64, nanos: u32) -> String {
    if secs < 0 && nanos > 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nanos)
    } else {
        format!("{secs}.{nanos:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        out.clear();
        // 1 + 4 + 1 + 94 + 1 = 101 bytes of body: with "104 " it is 105... then 104 + 1.
        let value = vec![b'x'; 94];
        pax_record(&mut out, b"path", &value);
        let text = String::from_utf8(out.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), out.len());
    }

    #[test]
    fn pax_times_round_trip_through_the_applier_parser() {
        let cases = [
            ((0, 0), "0.000000000"),
            ((1_400_000_000, 123_456_789), "1400000000.123456789"),
            ((-1, 0), "-1.000000000"),
            ((-2, 750_000_000), "-1.250000000"),
        ];
        for ((secs, nanos), want) in cases {
            assert_eq!(pax_time(secs, nanos), want);
        }
    }
}
