//! OCI runtime bundles: `rootfs/` plus a `config.json` that runc or crun can start.
//!
//! The process comes from the image config (Entrypoint + Cmd, Env, WorkingDir, User); everything
//! else (mounts, namespaces, capabilities, masked paths) follows `runc spec`'s defaults. A user
//! given by name is resolved from the image's own `/etc/passwd` and `/etc/group`, looked up inside
//! the rootfs (symlinks resolve as if it were `/`, as runc resolves them) so that the image can
//! never make haul read the host's files. Only a regular file of at most 16 MiB is read, and it is
//! opened for reading only once it is known to be one: a FIFO, device, directory or oversized
//! file there reads as a missing one, with a warning, instead of hanging the bundle or touching a
//! device.

use std::io::Read;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::progress::Reporter;
use crate::store::{RefEntry, Store};
use crate::unpack::image::{UnpackError, UnpackOptions, UnpackStats, unpack};

/// What `runc spec` puts in PATH when an image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// /etc/passwd and /etc/group beyond this are not believed to be real account files.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Unpacking the root filesystem failed (a bundle directory with a `config.json` already,
    /// without `force`, is [`UnpackError::TargetNotEmpty`]).
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The image config is not valid JSON.
    #[error("image config is not valid JSON: {0}")]
    Config(#[source] serde_json::Error),
    /// The image's `User` names a user its `/etc/passwd` does not have (runc's text).
    #[error("unable to find user {user}: no matching entries in the image's passwd file")]
    UnknownUser {
        /// The user name.
        user: String,
    },
    /// The image's `User` names a group its `/etc/group` does not have (runc's text).
    #[error("unable to find group {group}: no matching entries in the image's group file")]
    UnknownGroup {
        /// The group name.
        group: String,
    },
    /// The bundle directory or `config.json` could not be written, or an account file of the
    /// image could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// The image config fields a runtime needs (docker's capitalised names).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfigDoc {
    #[serde(default)]
    config: Option<ProcessConfig>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    created: Option<String>,
}

/// Numeric identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessUser {
    uid: u32,
    gid: u32,
    /// Supplementary groups the user is a member of in the image's `/etc/group`.
    additional_gids: Vec<u32>,
}

/// Unpacks `entry` (a ref of `store`) into `bundle/rootfs` with [`unpack`] and writes
/// `bundle/config.json`, an OCI runtime spec that runc or crun can start (see
/// [`runtime_spec`]), last and whole (written beside, then renamed). `bundle` and
/// `bundle/rootfs` may be mount points: the root filesystem is built on the filesystem it ends
/// up on (see [`unpack`]). Returns what the unpack did, with the bundle's warnings added (an account
/// file that is no regular file, for instance). Blocks the calling thread.
///
/// # Errors
///
/// [`UnpackError::TargetNotEmpty`] (as [`BundleError::Unpack`]) when `bundle/config.json`
/// exists and [`UnpackOptions::force`] is not set; then what [`unpack`] or [`runtime_spec`]
/// returns, or [`BundleError::Io`] when the directory or `config.json` cannot be written.
pub fn write_bundle(
    store: &Store,
    entry: &RefEntry,
    bundle: &Path,
    options: &UnpackOptions,
    reporter: &dyn Reporter,
) -> Result<UnpackStats, BundleError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    if !options.force && bundle.join("config.json").exists() {
        return Err(UnpackError::TargetNotEmpty {
            path: bundle.to_owned(),
        }
        .into());
    }
    std::fs::create_dir_all(bundle).map_err(io_err(bundle))?;
    let rootfs = bundle.join("rootfs");
    let stats = unpack(store, entry, &rootfs, options, reporter)?;
    let manifest = crate::manifest::parse(
        Some(&entry.manifest.media_type),
        &store
            .read_blob(
                &entry.manifest.digest,
                crate::manifest::MAX_MANIFEST_BYTES as u64,
            )
            .map_err(UnpackError::from)?,
    )
    .map_err(|source| UnpackError::Manifest {
        reference: entry.name.clone(),
        source,
    })?;
    let crate::manifest::Manifest::Image(image) = manifest else {
        return Err(UnpackError::Manifest {
            reference: entry.name.clone(),
            source: crate::manifest::ManifestError::UnsupportedMediaType(
                "an index where an image manifest was expected".to_owned(),
            ),
        }
        .into());
    };
    let config = store
        .read_blob(&image.config.digest, crate::manifest::MAX_CONFIG_BYTES)
        .map_err(UnpackError::from)?;
    let mut stats = stats;
    let spec = spec_noting(&config, &rootfs, &mut stats.warnings)?;
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(&spec).map_err(BundleError::Config)?;
    // Written beside and renamed: a runtime never finds half a config.json.
    let tmp = bundle.join(format!(
        ".config.json.haul-unpack-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    Ok(stats)
}

/// The OCI runtime spec (`config.json`) for the image config `config_bytes`, with the user
/// resolved against `rootfs`, the image's root filesystem already unpacked: the process from the
/// config (Entrypoint + Cmd, Env, WorkingDir, User), everything else as `runc spec` makes it.
/// Warnings (an account file that is no regular file) go to `tracing`.
///
/// # Errors
///
/// [`BundleError::Config`] for a config that is not JSON, [`BundleError::UnknownUser`] or
/// [`BundleError::UnknownGroup`] for a `User` naming accounts the image lacks.
pub fn runtime_spec(config_bytes: &[u8], rootfs: &Path) -> Result<Value, BundleError> {
    let mut warnings = Vec::new();
    let spec = spec_noting(config_bytes, rootfs, &mut warnings);
    for w in warnings {
        tracing::warn!("{w}");
    }
    spec
}

fn spec_noting(
    config_bytes: &[u8],
    rootfs: &Path,
    warnings: &mut Vec<String>,
) -> Result<Value, BundleError> {
    let doc: ImageConfigDoc = serde_json::from_slice(config_bytes).map_err(BundleError::Config)?;
    let process = doc.config.unwrap_or_default();
    let user = user_noting(rootfs, process.user.as_deref().unwrap_or(""), warnings)?;
    let mut args: Vec<String> = process.entrypoint.unwrap_or_default();
    args.extend(process.cmd.unwrap_or_default());
    if args.is_empty() {
        // runc refuses an empty args list; a shell is what `runc spec` would run.
        args.push("sh".to_owned());
    }
    let mut env = process.env.unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let cwd = process
        .working_dir
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());

    let mut annotations = serde_json::Map::new();
    for (k, v) in process.labels.unwrap_or_default() {
        annotations.insert(k, Value::String(v));
    }
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            annotations.insert(k.to_owned(), Value::String(v));
        }
    };
    put("org.opencontainers.image.stopSignal", process.stop_signal);
    put("org.opencontainers.image.architecture", doc.architecture);
    put("org.opencontainers.image.os", doc.os);
    put("org.opencontainers.image.author", doc.author);
    put("org.opencontainers.image.created", doc.created);

    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut user_json = json!({"uid": user.uid, "gid": user.gid});
    if !user.additional_gids.is_empty() {
        user_json["additionalGids"] = json!(user.additional_gids);
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": user_json,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "haul",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "annotations": annotations,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    }))
}

/// Resolves docker's `User` (`name`, `uid`, `name:group`, `uid:gid`, empty = root) with the
/// image's account files, as runc does: a numeric uid needs no passwd entry, a name does.
#[cfg(test)]
fn resolve_user(rootfs: &Path, spec: &str) -> Result<ProcessUser, BundleError> {
    let mut warnings = Vec::new();
    let user = user_noting(rootfs, spec, &mut warnings);
    for w in warnings {
        tracing::warn!("{w}");
    }
    user
}

fn user_noting(
    rootfs: &Path,
    spec: &str,
    warnings: &mut Vec<String>,
) -> Result<ProcessUser, BundleError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd", warnings)?;
    let groups = read_in_root(rootfs, "etc/group", warnings)?;
    let passwd_entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = groups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();

    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd_entries
        .iter()
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, name, mut gid) = match (user.parse::<u32>(), entry) {
        (Ok(uid), e) => (
            uid,
            e.map(|f| f[0].to_owned()),
            e.and_then(|f| f[3].parse().ok()).unwrap_or(0),
        ),
        (Err(_), Some(f)) => (
            f[2].parse().map_err(|_| BundleError::UnknownUser {
                user: user.to_owned(),
            })?,
            Some(f[0].to_owned()),
            f[3].parse().unwrap_or(0),
        ),
        (Err(_), None) => {
            return Err(BundleError::UnknownUser {
                user: user.to_owned(),
            });
        }
    };
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| BundleError::UnknownGroup {
                    group: g.to_owned(),
                })?,
        };
    }
    let mut additional_gids: Vec<u32> = match (&name, group) {
        // An explicit group replaces the supplementary ones, as in docker.
        (Some(name), None) => group_entries
            .iter()
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Reads one of the image's account files, resolving every symlink inside `rootfs`. A missing
/// file is empty (scratch images have no /etc/passwd); so is one that cannot be an account file
/// (not a regular file, over [`MAX_ACCOUNT_FILE`], unreadable), with a warning.
fn read_in_root(
    rootfs: &Path,
    relative: &str,
    warnings: &mut Vec<String>,
) -> Result<String, BundleError> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BundleError::Io {
        path: rootfs.to_owned(),
        source: e.into(),
    })?;
    let mut ignore = |why: String| {
        warnings.push(format!(
            "the image's /{relative} {why}; resolving the user as if it had none"
        ));
        Ok(String::new())
    };
    // O_PATH opens nothing: no FIFO to block on, no device driver to wake.
    let fd = match rustix::fs::openat2(
        &root,
        relative,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(e) => return ignore(format!("cannot be opened: {}", std::io::Error::from(e))),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return ignore(format!("cannot be inspected: {}", std::io::Error::from(e))),
    };
    let file_type = FileType::from_raw_mode(st.st_mode);
    if file_type != FileType::RegularFile {
        return ignore(format!("is not a regular file ({file_type:?})"));
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > MAX_ACCOUNT_FILE {
        return ignore(format!(
            "is {size} bytes, more than the {MAX_ACCOUNT_FILE} an account file may be"
        ));
    }
    // The very inode inspected, now opened for reading; non-blocking all the same.
    let file = match rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(file) => file,
        Err(e) => return ignore(format!("cannot be read: {}", std::io::Error::from(e))),
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::fs::File::from(file)
        .take(MAX_ACCOUNT_FILE + 1)
        .read_to_end(&mut bytes)
    {
        return ignore(format!("cannot be read: {e}"));
    }
    if bytes.len() as u64 > MAX_ACCOUNT_FILE {
        return ignore(format!(
            "grew past the {MAX_ACCOUNT_FILE} bytes an account file may be"
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn resolves_users_from_the_image_files() {
        let root = rootfs_with(
            "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101::/nonexistent:/bin/false\n",
            "root:x:0:\nnginx:x:101:\nwww:x:33:nginx\nadm:x:4:nginx,other\n",
        );
        let r = |s: &str| resolve_user(root.path(), s);
        assert_eq!(
            r("").unwrap(),
            ProcessUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("nginx").unwrap(),
            ProcessUser {
                uid: 101,
                gid: 101,
                additional_gids: vec![4, 33]
            }
        );
        assert_eq!(
            r("101").unwrap().gid,
            101,
            "a numeric uid still finds its group"
        );
        assert_eq!(
            r("nginx:www").unwrap(),
            ProcessUser {
                uid: 101,
                gid: 33,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("1234:5678").unwrap(),
            ProcessUser {
                uid: 1234,
                gid: 5678,
                additional_gids: vec![]
            }
        );
        assert_eq!(r("1234").unwrap().gid, 0);
        assert!(matches!(r("ghost"), Err(BundleError::UnknownUser { .. })));
        assert!(matches!(
            r("nginx:ghosts"),
            Err(BundleError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn account_files_are_read_inside_the_rootfs() {
        // An image whose /etc/passwd is a symlink to a host file must not resolve against it.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "hostonly:x:4242:4242::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&host_passwd, root.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            resolve_user(root.path(), "hostonly"),
            Err(BundleError::UnknownUser { .. })
        ));
        assert_eq!(resolve_user(root.path(), "0").unwrap().uid, 0);
    }

    /// Runs `resolve_user` on its own thread and gives up on it after a minute: a hang is a
    /// failure of the test, not of the test run.
    fn resolve_within_a_minute(root: &Path, spec: &str) -> Result<ProcessUser, BundleError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (root, spec) = (root.to_owned(), spec.to_owned());
        std::thread::spawn(move || {
            let _ = tx.send(resolve_user(&root, &spec));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("resolve_user hung")
    }

    #[test]
    fn bundle_with_a_fifo_as_etc_passwd_does_not_hang() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        for name in ["etc/passwd", "etc/group"] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.path().join(name),
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
        }
        // As for a missing file: numeric users resolve, names do not.
        assert_eq!(resolve_within_a_minute(root.path(), "0").unwrap().uid, 0);
        assert_eq!(
            resolve_within_a_minute(root.path(), "1000:1000").unwrap(),
            ProcessUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![]
            }
        );
        assert!(matches!(
            resolve_within_a_minute(root.path(), "nginx"),
            Err(BundleError::UnknownUser { .. })
        ));
    }

    #[test]
    fn account_files_that_are_not_small_regular_files_read_as_missing_with_a_warning() {
        let is_root = rustix::process::geteuid().is_root();
        type Make = fn(&Path);
        let cases: Vec<(&str, Make)> = vec![
            ("a directory", |p| std::fs::create_dir(p).unwrap()),
            ("a file past 16 MiB", |p| {
                std::fs::File::create(p)
                    .unwrap()
                    .set_len(MAX_ACCOUNT_FILE + 1)
                    .unwrap()
            }),
            // Resolved inside the rootfs it names itself: a loop, never the host's file.
            ("a symlink climbing out", |p| {
                std::os::unix::fs::symlink("../../../../../etc/passwd", p).unwrap()
            }),
        ];
        let devices: Vec<(&str, Make)> = vec![("an endless device", |p| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o644),
                rustix::fs::makedev(1, 5),
            )
            .unwrap()
        })];
        let cases = cases
            .into_iter()
            .chain(devices.into_iter().filter(|_| is_root));
        for (what, make) in cases {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("etc")).unwrap();
            make(&root.path().join("etc/passwd"));
            std::fs::write(root.path().join("etc/group"), "app:x:33:\n").unwrap();
            let mut warnings = Vec::new();
            let user = user_noting(root.path(), "1000:app", &mut warnings).unwrap();
            assert_eq!((user.uid, user.gid), (1000, 33), "{what}");
            assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
            assert!(warnings[0].contains("/etc/passwd"), "{what}: {warnings:?}");
            assert!(matches!(
                user_noting(root.path(), "app", &mut Vec::new()),
                Err(BundleError::UnknownUser { .. })
            ));
        }
    }

    #[test]
    fn account_files_may_be_symlinks_inside_the_rootfs() {
        let root = rootfs_with("", "");
        std::fs::create_dir_all(root.path().join("etc/static")).unwrap();
        std::fs::write(
            root.path().join("etc/static/passwd"),
            "app:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/static/passwd", root.path().join("etc/passwd")).unwrap();
        let mut warnings = Vec::new();
        assert_eq!(
            user_noting(root.path(), "app", &mut warnings).unwrap().uid,
            1000
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn spec_comes_from_the_image_config() {
        let root = rootfs_with("app:x:1000:1000::/home/app:/bin/sh\n", "app:x:1000:\n");
        let config = br#"{"architecture":"amd64","os":"linux","config":{
            "User":"app","Env":["FOO=bar"],"Entrypoint":["/bin/tini","--"],"Cmd":["serve","-v"],
            "WorkingDir":"/srv","Labels":{"org.example":"yes"},"StopSignal":"SIGQUIT"}}"#;
        let spec = runtime_spec(config, root.path()).unwrap();
        assert_eq!(
            spec["process"]["args"],
            json!(["/bin/tini", "--", "serve", "-v"])
        );
        assert_eq!(spec["process"]["env"][0], DEFAULT_PATH);
        assert_eq!(spec["process"]["env"][1], "FOO=bar");
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(spec["annotations"]["org.example"], "yes");
        assert_eq!(
            spec["annotations"]["org.opencontainers.image.stopSignal"],
            "SIGQUIT"
        );
        assert_eq!(spec["root"]["path"], "rootfs");
    }
}
