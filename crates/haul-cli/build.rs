//! What `haul version` reports about the build: the git commit, the build date and the Rust
//! version, found once at build time. Each is "unknown" where it cannot be found (a build from a
//! source archive has no git). The date is `$SOURCE_DATE_EPOCH` when set, else the commit's, so
//! two builds of one commit are the same binary.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=HAUL_GIT_COMMIT");
    let commit = std::env::var("HAUL_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=7", "HEAD"]));
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| git(&["log", "-1", "--format=%ct"]));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    // "rustc 1.95.0 (59807616e 2026-04-14)" → "1.95.0"
    let rust =
        run(&rustc, &["--version"]).and_then(|v| v.split_whitespace().nth(1).map(str::to_owned));
    println!(
        "cargo:rustc-env=HAUL_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=HAUL_BUILD_EPOCH={}",
        date.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=HAUL_BUILD_RUSTC={}",
        rust.as_deref().unwrap_or("unknown")
    );
    // Run again when HEAD moves: a commit, a checkout, a branch's ref updated or packed.
    for path in ["HEAD", "packed-refs"] {
        watch_git_path(path);
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch_git_path(&head);
    }
}

fn watch_git_path(path: &str) {
    if let Some(file) = git(&["rev-parse", "--git-path", path])
        && Path::new(&file).exists()
    {
        println!("cargo:rerun-if-changed={file}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    run("git", args)
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
