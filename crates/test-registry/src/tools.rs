//! The real producers and oracles the interoperability tests compare haul with: podman and
//! buildah on a private vfs storage, skopeo, umoci and GNU tar, run as child processes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, TestError};

/// Runs `cmd`, returning its stdout; a failure is an error carrying its stderr.
pub fn run_tool(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| TestError::io(format!("running {shown}"), e))?;
    if !out.status.success() {
        return Err(TestError::Tool {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `skopeo --insecure-policy ARGS` (no policy file needed), its stdout.
pub fn skopeo<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_tool(Command::new("skopeo").arg("--insecure-policy").args(args))
}

/// `umoci unpack` of `layout:tag` into `bundle`; returns the bundle's `rootfs`.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<PathBuf> {
    run_tool(Command::new("umoci").args([
        OsStr::new("unpack"),
        OsStr::new("--image"),
        format!("{}:{tag}", layout.display()).as_ref(),
        bundle.as_os_str(),
    ]))?;
    Ok(bundle.join("rootfs"))
}

/// GNU tar extracting `archive` into `dest` as docker's applier would as root: numeric owners,
/// exact modes, extended attributes. `Err` holds GNU tar's complaint when it refuses.
pub fn gnu_tar_extract(archive: &Path, dest: &Path) -> std::result::Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let out = Command::new("tar")
        .args(["-x", "--same-owner", "--numeric-owner", "-p", "--xattrs"])
        .arg("--xattrs-include=*")
        .arg("-f")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// podman and buildah with a storage of their own (vfs driver, private root and runroot in a
/// temp dir), so tests neither see nor change the machine's images and need no overlay mounts.
pub struct Containers {
    dir: tempfile::TempDir,
}

impl Containers {
    /// A fresh, empty storage.
    pub fn new() -> Result<Containers> {
        let dir = tempfile::Builder::new()
            .prefix("haul-containers-")
            .tempdir()
            .map_err(|e| TestError::io("creating the container storage dir", e))?;
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .map_err(|e| TestError::io("writing registries.conf", e))?;
        Ok(Containers { dir })
    }

    fn with_storage(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args(["--storage-driver", "vfs"])
            // No registries.conf search list: short names never go to the network.
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.path().join("registries.conf"),
            )
            .env("TMPDIR", self.dir.path());
        cmd
    }

    /// `podman` on this storage (events to a file: there may be no journal).
    pub fn podman(&self) -> Command {
        let mut cmd = self.with_storage("podman");
        cmd.args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// `buildah` on this storage.
    pub fn buildah(&self) -> Command {
        self.with_storage("buildah")
    }

    /// A scratch directory inside the storage's temp dir.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).map_err(|e| TestError::io(format!("creating {name}"), e))?;
        Ok(p)
    }
}
