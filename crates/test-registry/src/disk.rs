//! A small filesystem to fill: the disk-space tests need a disk they can run out of.

use std::path::{Path, PathBuf};

/// A tmpfs of a given size mounted on a fresh directory, unmounted on drop.
pub struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size_mib` MiB; `None` (with a `SKIPPED` line naming `test`) when this
    /// process may not mount (not root).
    pub fn mount(size_mib: u64, test: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: mounting a tmpfs needs root; {test} did not run");
            return None;
        }
        Some(SmallDisk { path, _dir: dir })
    }

    /// Where the tmpfs is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the disk `size_mib` MiB, keeping what it holds.
    pub fn grow(&self, size_mib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}m")])
            .arg(&self.path)
            .status();
        assert!(status.is_ok_and(|s| s.success()), "remounting the tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
