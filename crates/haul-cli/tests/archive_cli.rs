//! `haul save` and `haul load` as users run them: docker's output lines, files and stdout.

mod common;

use common::{Env, ok, run};
use test_registry::{Format, ImageBuilder, Pusher, RealRegistry, RegistryOptions, random_layer};

#[tokio::test(flavor = "multi_thread")]
async fn save_then_load_into_another_store_like_docker() {
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(1, 50_000))
        .layer(random_layer(2, 20_000))
        .build();
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    Pusher::new(&registry.url())
        .push_image("team/app", "1.0", &img)
        .await
        .unwrap();
    let env = Env::new();
    let name = format!("{}/team/app:1.0", registry.host());
    ok(env.run(&["pull", "-q", &name]));

    let file = env.dir.path().join("f.tar");
    let file_arg = file.display().to_string();
    let saved = ok(env.run(&["save", "-o", &file_arg, &name]));
    assert_eq!(saved.stdout, "");
    assert!(file.is_file());

    let other = Env::new();
    let loaded = ok(other.run(&["load", "-i", &file_arg]));
    assert_eq!(loaded.stdout, format!("Loaded image: {name}\n"));
    let images = ok(other.run(&["images"]));
    assert!(
        images
            .stdout
            .contains(&format!("{}/team/app", registry.host())),
        "{}",
        images.stdout
    );

    // stdout and stdin: `haul save -o - | haul load`.
    let piped = env
        .haul()
        .args(["save", "-o", "-", &name])
        .output()
        .unwrap();
    assert!(piped.status.success());
    let third = Env::new();
    let out = ok(run(third.haul().arg("load").write_stdin(piped.stdout)));
    assert_eq!(out.stdout, format!("Loaded image: {name}\n"));

    // An archive of something else is refused with the reason.
    std::fs::write(env.dir.path().join("junk.tar"), b"not a tar").unwrap();
    let junk = env.dir.path().join("junk.tar").display().to_string();
    let refused = other.run(&["load", "-i", &junk]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);

    let missing = env.run(&["save", "-o", &file_arg, "nope:1"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("No such image"),
        "{}",
        missing.stderr
    );
}

/// Issue 13: `docker save | zstd` (or gzip) piped into `haul load` is recognised by its first
/// bytes; xz is refused with how to decompress it.
#[tokio::test(flavor = "multi_thread")]
async fn load_reads_a_compressed_archive_from_stdin() {
    let img = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(random_layer(7, 30_000))
        .build();
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    Pusher::new(&registry.url())
        .push_image("team/zipped", "1", &img)
        .await
        .unwrap();
    let env = Env::new();
    let name = format!("{}/team/zipped:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let saved = env
        .haul()
        .args(["save", "-o", "-", &name])
        .output()
        .unwrap();
    assert!(saved.status.success());
    let compress = |program: &str| {
        let mut child = std::process::Command::new(program)
            .args(["-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let tar = saved.stdout.clone();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &tar));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out.stdout
    };
    for program in ["zstd", "gzip"] {
        let other = Env::new();
        let out = ok(run(other.haul().arg("load").write_stdin(compress(program))));
        assert_eq!(out.stdout, format!("Loaded image: {name}\n"), "{program}");
    }
    let other = Env::new();
    let refused = run(other.haul().arg("load").write_stdin(compress("xz")));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("xz -dc"), "{}", refused.stderr);
}
