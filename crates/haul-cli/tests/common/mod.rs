//! Running the `haul` binary in isolation: a temp store, and a home without docker or haul config.
#![allow(dead_code)]

use std::path::PathBuf;

use assert_cmd::Command;
use test_registry::{Image, Pusher, RealRegistry, RegistryOptions};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("home/.docker/config.json")
    }

    /// `haul` with an isolated home: no docker config, no user config file, no store option.
    pub fn haul_bare(&self) -> Command {
        Command::from_std(self.bare_process())
    }

    fn bare_process(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("haul"));
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        cmd.env_clear()
            .env("HOME", &home)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("XDG_CONFIG_HOME", home.join(".config"));
        cmd
    }

    /// `haul --root STORE` with an isolated home.
    pub fn haul(&self) -> Command {
        let mut cmd = self.haul_bare();
        cmd.args(["--root", &self.root()]);
        cmd
    }

    /// The same isolated `haul --root STORE` as a std command, for tests that must signal or kill
    /// the process while it runs.
    pub fn haul_process(&self) -> std::process::Command {
        let mut cmd = self.bare_process();
        cmd.args(["--root", &self.root()]);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(self.haul().args(args))
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

pub fn ok(out: Output) -> Output {
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

/// The real registry on loopback with one image pushed as `repo:tag`.
pub async fn registry_with(repo: &str, tag: &str, img: &Image) -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    Pusher::new(&registry.url())
        .push_image(repo, tag, img)
        .await
        .unwrap();
    registry
}
