//! Sparse files as GNU tar writes them (old GNU `S` entries, PAX 0.0, 0.1 and 1.0) extract to
//! what `tar -x` makes of the same archive: same size, same bytes, and holes where it has them,
//! both applied directly and through the layer cache.

use std::fs;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;

use haul::unpack::{ApplyOptions, apply_layer, apply_layer_for_cache, tar_dir};

/// (name, [(offset, bytes)], size): data runs and the length the file is cut to.
type Sparse = (&'static str, Vec<(u64, Vec<u8>)>, u64);

fn files() -> Vec<Sparse> {
    vec![
        (
            "holes/middle",
            vec![(0, vec![b'a'; 4096]), (1 << 20, vec![b'b'; 8192])],
            3 << 20,
        ),
        ("holes/all", Vec::new(), 5 << 20),
        ("holes/tail", vec![(2 << 20, b"the end\n".repeat(13))], 0),
        (
            "holes/odd",
            vec![(1000, b"unaligned".to_vec()), (700_001, vec![7; 70_000])],
            2_000_003,
        ),
    ]
}

fn make_sources(dir: &Path) {
    fs::create_dir_all(dir.join("holes")).unwrap();
    for (name, runs, size) in files() {
        let mut f = fs::File::create(dir.join(name)).unwrap();
        let mut end = 0;
        for (offset, data) in runs {
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(&data).unwrap();
            end = offset + data.len() as u64;
        }
        f.set_len(size.max(end)).unwrap();
    }
}

fn tar_with(format: &[&str], src: &Path, out: &Path) -> Vec<u8> {
    let status = Command::new("tar")
        .arg("--sparse")
        .args(format)
        .args(["--owner=0", "--group=0", "--mtime=@1700000000", "-C"])
        .arg(src)
        .arg("-cf")
        .arg(out)
        .arg("holes")
        .status()
        .unwrap();
    assert!(status.success());
    fs::read(out).unwrap()
}

fn gnu_extract(tar: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
}

fn opts() -> ApplyOptions {
    ApplyOptions::for_current_user()
}

/// 512-byte blocks the file occupies.
fn blocks(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks()
}

fn compare(what: &str, oracle: &Path, ours: &Path) {
    for (name, _, _) in files() {
        let want = fs::read(oracle.join(name)).unwrap();
        let got = fs::read(ours.join(name)).unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
        assert_eq!(got.len(), want.len(), "{what}: {name}: size");
        assert!(got == want, "{what}: {name}: content differs");
        // Holes stay holes: no more blocks than GNU tar allocates, give or take a page or two.
        let (theirs, mine) = (blocks(&oracle.join(name)), blocks(&ours.join(name)));
        assert!(
            mine <= theirs + 16,
            "{what}: {name}: {mine} blocks allocated, GNU tar {theirs}"
        );
    }
}

#[test]
fn sparse_files_extract_like_gnu_tar_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_sources(&src);
    let formats: [(&str, &[&str]); 4] = [
        ("old GNU", &["--format=gnu"]),
        ("PAX 0.0", &["--format=posix", "--sparse-version=0.0"]),
        ("PAX 0.1", &["--format=posix", "--sparse-version=0.1"]),
        ("PAX 1.0", &["--format=posix", "--sparse-version=1.0"]),
    ];
    for (i, (label, args)) in formats.iter().enumerate() {
        let work = tmp.path().join(format!("f{i}"));
        fs::create_dir(&work).unwrap();
        let tar_path = work.join("layer.tar");
        let tar = tar_with(args, &src, &tar_path);
        let oracle = work.join("oracle");
        gnu_extract(&tar_path, &oracle);

        let direct = work.join("direct");
        fs::create_dir(&direct).unwrap();
        if let Err(e) = apply_layer(&direct, Cursor::new(&tar), &opts()) {
            panic!("{label}: direct: {e} ({e:?})");
        }
        compare(&format!("{label}, direct"), &oracle, &direct);

        let cache = work.join("cache");
        fs::create_dir(&cache).unwrap();
        let stats = match apply_layer_for_cache(&cache, Cursor::new(&tar), &opts()) {
            Ok(s) => s,
            Err(e) => panic!("{label}: cache: {e} ({e:?})"),
        };
        compare(&format!("{label}, cached"), &oracle, &cache);
        let merged = work.join("merged");
        fs::create_dir(&merged).unwrap();
        let mut stream = tar_dir(&cache, stats.deferred_links).unwrap();
        apply_layer(&merged, &mut stream, &opts()).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        compare(&format!("{label}, merged from the cache"), &oracle, &merged);
    }
}
