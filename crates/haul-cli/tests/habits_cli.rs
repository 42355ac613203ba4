//! Issue 15: what docker users type without reading haul's README. `--format` templates, docker's
//! management commands (`haul image ls`), `images -a` and `--filter`, `haul version`, shell
//! completions and man pages, `save` to a pipe, global options on either side of the command,
//! and `unpack`'s own words.

mod common;

use common::{Env, ok, registry_with, run};
use serde_json::{Value, json};
use test_registry::{Format, Image, ImageBuilder, Pusher, random_layer};

fn image(seed: u64, created: &str, labels: Value) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .created(created)
        .layer(random_layer(seed, 20_000))
        .config_field(
            "config",
            json!({"Labels": labels, "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
        )
        .config_field(
            "history",
            json!([{"created": created, "created_by": "ADD\tlayer.tar / # made by a test"}]),
        )
        .build()
}

/// Every control character in `text` except the newlines that end lines of output.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn format_templates_read_like_docker() {
    let hostile = "\r\x1b[2KStatus: Image is up to date\n\u{9b}31m";
    let img = image(
        1,
        "2024-03-01T10:00:00Z",
        json!({"team": "core", "note": hostile}),
    );
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1.0", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let repo = format!("{}/team/app", registry.host());
    let id = &img.config.hex()[..12];

    // images: a template per row, and docker's `table` with headers.
    let out = ok(env.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(out.stdout, format!("{name}\n"));
    let out = ok(env.run(&[
        "images",
        "--format",
        r"table {{.ID}}\t{{.Repository}}\t{{.Tag}}",
    ]));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("IMAGE ID       REPOSITORY") && lines[0].ends_with("TAG"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], format!("{id}   {repo}   1.0"));
    let out = ok(env.run(&["images", "--format", "{{json .}}"]));
    let row: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(row["ID"], id);
    assert_eq!(row["Tag"], "1.0");
    assert_eq!(row["CreatedAt"], "2024-03-01 10:00:00 +0000 UTC");
    let out = ok(env.run(&["images", "--no-trunc", "--format", "{{.ID}} {{lower .Tag}}"]));
    assert_eq!(out.stdout, format!("{} 1.0\n", img.config.digest));
    // `table` and `json` as before.
    let out = ok(env.run(&["images", "--format", "table"]));
    assert!(out.stdout.starts_with("REPOSITORY"), "{}", out.stdout);
    let out = ok(env.run(&["images", "--format", "json"]));
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["repository"], repo.as_str());

    // inspect -f: fields, nested fields, json, and docker's functions.
    let out = ok(env.run(&["inspect", "-f", "{{.Id}}", &name]));
    assert_eq!(out.stdout, format!("{}\n", img.config.digest));
    let out = ok(env.run(&["inspect", "--format", "{{json .Config}}", &name]));
    let config: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        config["Labels"]["note"], hostile,
        "json keeps the exact string"
    );
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    let out = ok(env.run(&[
        "inspect",
        "-f",
        r#"{{.Config.Labels.team}} {{index .Config.Labels "team"}} {{join .Config.Env ","}} {{.Config.Labels.absent}} {{len .RootFS.Layers}}"#,
        &name,
    ]));
    assert_eq!(out.stdout, "core core PATH=/bin <no value> 1\n");
    // A docker field this image's config does not set is empty, as in docker.
    let out = ok(env.run(&["inspect", "-f", "[{{.Config.WorkingDir}}]", &name]));
    assert_eq!(out.stdout, "[]\n");
    let out = ok(env.run(&[
        "inspect",
        "-f",
        "{{range .RepoTags}}{{println .}}{{end}}",
        &name,
    ]));
    assert_eq!(out.stdout, format!("{name}\n\n"));

    // What an image says reaches the terminal escaped; the template's own newline does not.
    let out = ok(env.run(&["inspect", "-f", "{{.Config.Labels.note}}", &name]));
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 1, "{:?}", out.stdout);
    assert_eq!(
        out.stdout,
        "\\r\\x1b[2KStatus: Image is up to date\\n\\u009b31m\n"
    );

    // history: docker's fields.
    let out = ok(env.run(&[
        "history",
        "--format",
        "{{.ID}}|{{.CreatedBy}}|{{.Size}}",
        &name,
    ]));
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        out.stdout
            .starts_with(&format!("{id}|ADD layer.tar / # made by a test|")),
        "{}",
        out.stdout
    );
    let out = ok(env.run(&[
        "history",
        "--format",
        r"table {{.CreatedAt}}\t{{.Size}}",
        &name,
    ]));
    assert!(
        out.stdout
            .starts_with("CREATED AT             SIZE\n2024-03-01T10:00:00Z   "),
        "{}",
        out.stdout
    );

    // info
    let out = ok(env.run(&["info", "--format", "{{.Store.Images}} {{.DockerRootDir}}"]));
    assert_eq!(out.stdout, format!("1 {}\n", env.root()));

    // An unknown field is a clear error at once (exit 2, like a bad command line), naming the
    // fields there are; nothing is printed.
    for args in [
        &["images", "--format", "{{.Repo}}"][..],
        &["inspect", "-f", "{{.Config.Nope}}", &name][..],
        &["history", "--format", "{{.Nope}}", &name][..],
        &["info", "--format", "{{.Nope}}"][..],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.starts_with("Error: --format: unknown field ."),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = env.run(&["images", "--format", "{{.Repo}}"]);
    assert!(out.stderr.contains(".Repository"), "{}", out.stderr);
    let out = env.run(&["images", "--format", "{{.Repository"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("Error: --format: "),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn management_commands_and_image_filters() {
    let old = image(2, "2024-01-01T00:00:00Z", json!({"tier": "base"}));
    let mid = image(3, "2024-02-01T00:00:00Z", json!({"tier": "app"}));
    let new = image(4, "2024-03-01T00:00:00Z", json!({}));
    let registry = registry_with("team/old", "1", &old).await;
    let pusher = Pusher::new(&registry.url());
    pusher.push_image("team/mid", "1", &mid).await.unwrap();
    pusher.push_image("team/new", "1", &new).await.unwrap();
    let host = registry.host();
    let env = Env::new();
    let name = |repo: &str| format!("{host}/team/{repo}:1");

    // `image pull|ls|tag|inspect|history|rm|save|load|prune` beside the short forms.
    ok(env.run(&["image", "pull", "-q", &name("old")]));
    ok(env.run(&["pull", "-q", &name("mid")]));
    // `new` only by digest: no tag names it, so docker calls it dangling.
    let by_digest = format!("{host}/team/new@{}", new.digest());
    ok(env.run(&["pull", "-q", &by_digest]));
    let out = ok(env.run(&["image", "ls", "--format", "{{.Repository}}"]));
    assert_eq!(
        out.stdout,
        format!("{host}/team/mid\n{host}/team/old\n"),
        "untagged images are hidden without -a"
    );
    let out = ok(env.run(&[
        "image",
        "list",
        "-a",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]));
    assert_eq!(
        out.stdout,
        format!("{host}/team/new:<none>\n{host}/team/mid:1\n{host}/team/old:1\n")
    );
    let out = ok(env.run(&["images", "--filter", "dangling=true", "-q"]));
    assert_eq!(out.stdout, format!("{}\n", &new.config.hex()[..12]));
    let out = ok(env.run(&[
        "images",
        "-a",
        "-f",
        "dangling=false",
        "--format",
        "{{.Tag}}",
    ]));
    assert_eq!(out.stdout, "1\n1\n");
    let out = env.run(&["images", "--filter", "dangling=maybe"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid filter 'dangling=maybe'"),
        "{}",
        out.stderr
    );
    let out = env.run(&["images", "--filter", "colour=red"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid filter 'colour'"),
        "{}",
        out.stderr
    );

    // reference: Go's path.Match on the familiar name with its tag, or on the name alone.
    let repos = |filters: &[&str]| {
        let mut args = vec!["images", "-a", "--format", "{{.Repository}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        ok(env.run(&args)).stdout
    };
    assert_eq!(
        repos(&[&format!("reference={host}/team/m*")]),
        format!("{host}/team/mid\n")
    );
    assert_eq!(
        repos(&[&format!("reference={host}/*/o?d:1")]),
        format!("{host}/team/old\n")
    );
    assert_eq!(repos(&["reference=*/team/old:2"]), "");
    assert_eq!(repos(&["reference=team/*"]), "", "a star stops at a slash");
    assert_eq!(
        repos(&[
            &format!("reference={host}/team/old"),
            &format!("reference={host}/team/mid")
        ]),
        format!("{host}/team/mid\n{host}/team/old\n"),
        "several references match any"
    );
    // before / since: created strictly before or after the named image (name or ID).
    assert_eq!(
        repos(&[&format!("before={}", name("mid"))]),
        format!("{host}/team/old\n")
    );
    assert_eq!(
        repos(&[&format!("since={}", &old.config.hex()[..12])]),
        format!("{host}/team/new\n{host}/team/mid\n")
    );
    assert_eq!(
        repos(&[
            &format!("since={}", name("old")),
            &format!("before={}", by_digest)
        ]),
        format!("{host}/team/mid\n")
    );
    let out = env.run(&["images", "--filter", "before=nope"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("No such image: nope"), "{}", out.stderr);
    // label, as docker has it.
    assert_eq!(
        repos(&["label=tier"]),
        format!("{host}/team/mid\n{host}/team/old\n")
    );
    assert_eq!(repos(&["label=tier=base"]), format!("{host}/team/old\n"));

    ok(env.run(&["image", "tag", &name("old"), "example.org/copy:2"]));
    let out = ok(env.run(&["image", "inspect", "-f", "{{.Id}}", "example.org/copy:2"]));
    assert_eq!(out.stdout, format!("{}\n", old.config.digest));
    let out = ok(env.run(&["image", "history", "-q", "example.org/copy:2"]));
    assert_eq!(out.stdout, format!("{}\n", &old.config.hex()[..12]));
    let out = ok(env.run(&["image", "rm", "example.org/copy:2"]));
    assert_eq!(out.stdout, "Untagged: example.org/copy:2\n");
    let out = ok(env.run(&["image", "remove", &by_digest]));
    assert!(out.stdout.starts_with("Untagged: "), "{}", out.stdout);

    let archive = env.dir.path().join("old.tar").display().to_string();
    ok(env.run(&["image", "save", "-o", &archive, &name("old")]));
    let other = Env::new();
    let out = ok(other.run(&["image", "load", "-i", &archive]));
    assert_eq!(out.stdout, format!("Loaded image: {}\n", name("old")));
    let out = ok(env.run(&["image", "prune", "-f"]));
    assert!(
        out.stdout.contains("Total reclaimed space"),
        "{}",
        out.stdout
    );
}

#[test]
fn version_prints_like_docker() {
    let env = Env::new();
    let out = ok(env.run(&["version"]));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "Client: haul");
    let field = |label: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!(" {label:<19}")))
            .unwrap_or_else(|| panic!("no {label} in:\n{}", out.stdout))
            .to_owned()
    };
    assert_eq!(field("Version:"), env!("CARGO_PKG_VERSION"));
    let commit = field("Git commit:");
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    assert!(!field("Built:").is_empty());
    assert!(field("Rust version:").starts_with("1."), "{}", out.stdout);
    let os_arch = field("OS/Arch:");
    assert!(os_arch.starts_with(std::env::consts::OS), "{os_arch}");

    let out = ok(env.run(&["version", "--format", "json"]));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["Client"]["Version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["Client"]["GitCommit"], commit.as_str());
    assert_eq!(
        format!(
            "{}/{}",
            v["Client"]["Os"].as_str().unwrap(),
            v["Client"]["Arch"].as_str().unwrap()
        ),
        os_arch
    );
    let out = ok(env.run(&["version", "-f", "{{.Client.Version}}"]));
    assert_eq!(out.stdout, format!("{}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let env = Env::new();
    let bash = ok(env.run(&["completion", "bash"])).stdout;
    assert!(bash.contains("complete -F _haul"), "{bash}");
    for word in [
        "pull",
        "unpack",
        "images",
        "--filter",
        "--format",
        "completion",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let zsh = ok(env.run(&["completion", "zsh"])).stdout;
    assert!(zsh.starts_with("#compdef haul"), "{zsh}");
    let fish = ok(env.run(&["completion", "fish"])).stdout;
    assert!(fish.contains("complete -c haul"), "{fish}");
    assert!(fish.contains("prune"), "{fish}");
    let out = env.run(&["completion", "tcsh"]);
    assert_eq!(out.code, 2);

    let dir = env.dir.path().join("man/man1");
    ok(env.run(&["man", dir.to_str().unwrap()]));
    for page in [
        "haul.1",
        "haul-pull.1",
        "haul-image-ls.1",
        "haul-trust-key-add.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{page}: not roff");
    }
    let images = std::fs::read_to_string(dir.join("haul-images.1")).unwrap();
    assert!(images.contains("dangling"), "{images}");
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let env = Env::new();
    let store = env.dir.path().join("elsewhere");
    let store_arg = store.display().to_string();
    // Before the command (docker's place for them) and after it.
    let root_of = |out: common::Output| -> String {
        assert_eq!(out.code, 0, "{}", out.stderr);
        let info: Value = serde_json::from_str(&out.stdout).unwrap();
        info["store"]["root"].as_str().unwrap().to_owned()
    };
    let before = run(env
        .haul_bare()
        .args(["--root", &store_arg, "info", "--format", "json"]));
    assert_eq!(root_of(before), store_arg);
    let after = run(env
        .haul_bare()
        .args(["info", "--root", &store_arg, "--format", "json"]));
    assert_eq!(root_of(after), store_arg);
    // After the command wins over before it.
    let both = run(env.haul_bare().args([
        "--root",
        "/nonexistent/ignored",
        "images",
        "--root",
        &store_arg,
        "-q",
    ]));
    assert_eq!(both.code, 0, "{}", both.stderr);

    // `--progress` before `pull` (it fails to connect, after showing plain progress lines).
    let out = run(env
        .haul()
        .args(["--progress", "json", "pull", "127.0.0.1:9/x:1"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with('{')),
        "JSON events on stdout:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // Commands that never open the store neither list nor take its option after their name;
    // before it (an alias's prefix) it is accepted and ignored.
    for command in [
        &["login"][..],
        &["logout"],
        &["manifest", "inspect"],
        &["trust", "inspect"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(run(env.haul_bare().args(&args))).stdout;
        assert!(!help.contains("--root"), "{command:?}:\n{help}");
    }
    let help = ok(run(env.haul_bare().args(["logout", "--help"]))).stdout;
    assert!(!help.contains("--config"), "{help}");
    let help = ok(run(env.haul_bare().args(["images", "--help"]))).stdout;
    assert!(
        help.contains("--root") && help.contains("--config"),
        "{help}"
    );
    let unused = env.dir.path().join("unused");
    let unused_arg = unused.display().to_string();
    let out = run(env
        .haul_bare()
        .args(["logout", "--root", &unused_arg, "example.org"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(env
        .haul_bare()
        .args(["--root", &unused_arg, "logout", "example.org"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "Not logged in to example.org\n");
    assert!(!unused.exists(), "logout made a store");
}

#[tokio::test(flavor = "multi_thread")]
async fn save_writes_to_a_pipe_without_o() {
    let img = image(5, "2024-03-01T10:00:00Z", json!({}));
    let registry = registry_with("team/save", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/save:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    // stdout is a pipe here: the archive goes there, as `docker save IMAGE | …` does.
    let saved = env.haul().args(["save", &name]).output().unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert!(!saved.stdout.is_empty());
    let other = Env::new();
    let out = ok(run(other.haul().arg("load").write_stdin(saved.stdout)));
    assert_eq!(out.stdout, format!("Loaded image: {name}\n"));
}

/// With stdout on a terminal and no `-o`, save refuses in docker's words and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn save_refuses_to_write_an_archive_to_a_terminal() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let img = image(7, "2024-03-01T10:00:00Z", json!({}));
    let registry = registry_with("team/tty", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/tty:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let path = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path.to_str().unwrap())
        .unwrap();
    for args in [&["save", &name][..], &["save", "-o", "-", &name][..]] {
        let out = env
            .haul_process()
            .args(args)
            .stdout(terminal.try_clone().unwrap())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "Error: cowardly refusing to save to a terminal. Use the -o flag or redirect\n"
        );
    }
    // Nothing reached the terminal.
    drop(terminal);
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut screen = Vec::new();
    let _ = std::fs::File::from(master).read_to_end(&mut screen);
    assert!(screen.is_empty(), "{:?}", String::from_utf8_lossy(&screen));
}

#[tokio::test(flavor = "multi_thread")]
async fn unpack_speaks_of_unpacking() {
    let img = image(6, "2024-03-01T10:00:00Z", json!({}));
    let registry = registry_with("team/unpack", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/unpack:1", registry.host());
    let layer = img.layers[0].blob.digest.trim_start_matches("sha256:")[..12].to_owned();

    // Pulled first: the pull's lines, then each layer unpacked.
    let dir = env.dir.path().join("rootfs");
    let out = ok(env.run(&[
        "unpack",
        "--progress",
        "plain",
        &name,
        dir.to_str().unwrap(),
    ]));
    let lines: Vec<&str> = out.stderr.lines().collect();
    let pull_complete = lines
        .iter()
        .filter(|l| **l == format!("{layer}: Pull complete"))
        .count();
    assert_eq!(
        pull_complete, 1,
        "one Pull complete, from the pull:\n{}",
        out.stderr
    );
    let status = lines
        .iter()
        .position(|l| l.starts_with("Status: "))
        .unwrap();
    assert!(
        lines[status..].contains(&format!("{layer}: Unpack complete").as_str()),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Unpacked 1 layer ("),
        "singular for one layer:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("1 layers"), "{}", out.stderr);

    // Present already: no pull, only unpacking; JSON events say so too.
    let dir = env.dir.path().join("again");
    let out = ok(env.run(&["--progress", "json", "unpack", &name, dir.to_str().unwrap()]));
    let statuses: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["status"].as_str().map(str::to_owned))
        .collect();
    assert!(
        statuses.contains(&"unpack_complete".to_owned()),
        "{}",
        out.stdout
    );
    assert!(
        !statuses.contains(&"pull_complete".to_owned()),
        "{}",
        out.stdout
    );
}
