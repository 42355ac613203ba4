//! The management commands of the `haul` binary against the real registry: inspect, history, tag,
//! rmi, manifest inspect, info, login and logout, with docker's output and exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

use common::{Env, ok, registry_with, run};
use serde_json::{Value, json};
use test_registry::{
    Format, Image, ImageBuilder, Pusher, RealRegistry, RegistryOptions, TokenIssuer,
    TokenIssuerOptions, random_layer,
};

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .created("2024-03-01T10:00:00Z")
        .layer(random_layer(seed, 50_000))
        .layer(random_layer(seed + 1, 20_000))
        .config_field(
            "history",
            json!([
                {"created": "2024-03-01T09:00:00Z", "created_by": "ADD base.tar / # a long command line that docker cuts at 45 characters"},
                {"created": "2024-03-01T09:30:00Z", "created_by": "ENV A=1", "empty_layer": true},
                {"created": "2024-03-01T10:00:00Z", "created_by": "RUN build", "comment": "made by hand"},
            ]),
        )
        .build()
}

fn blob_names(root: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(root).join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_history_tag_and_rmi_like_docker() {
    let img = image(1);
    let registry = registry_with("team/app", "1.0", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1.0", registry.host());
    ok(env.run(&["pull", "-q", &name]));

    let id_prefix = &img.config.hex()[..8];
    let out = ok(env.run(&["inspect", &name, id_prefix]));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    for item in v.as_array().unwrap() {
        assert_eq!(item["Id"], img.config.digest);
        assert_eq!(item["RepoTags"], json!([name]));
        assert_eq!(item["Created"], "2024-03-01T10:00:00Z");
        assert_eq!(item["Architecture"], "amd64");
        assert_eq!(item["Os"], "linux");
        let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(item["RootFS"]["Layers"], json!(diff_ids));
    }

    let out = env.run(&["inspect", &name, "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("Error: No such image: nope\n"),
        "{}",
        out.stderr
    );
    let found: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        found.as_array().map(Vec::len),
        Some(1),
        "found ones still print"
    );

    // history: newest first, image ID on top, <missing> below, sizes of the layers.
    let out = ok(env.run(&["history", &name]));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    for col in ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    assert!(
        lines[1].starts_with(&img.config.hex()[..12]),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("RUN build") && lines[1].ends_with("made by hand"));
    assert!(lines[2].starts_with("<missing>") && lines[2].contains("ENV A=1"));
    assert!(lines[2].ends_with(" 0B"), "{}", lines[2]);
    assert!(!lines[3].contains("characters") && lines[3].contains('…'));
    let out = ok(env.run(&["history", "--no-trunc", &name]));
    assert!(out.stdout.contains("docker cuts at 45 characters"));
    assert!(out.stdout.contains(&img.config.digest));
    let out = ok(env.run(&["history", "--format", "json", &name]));
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    // `size` is the unpacked size (tests/sizes_cli.rs); the compressed one is kept beside it.
    assert_eq!(rows[0]["compressed_size"], img.layers[1].blob.size);
    assert_eq!(rows[1]["compressed_size"], 0);
    assert_eq!(rows[1]["size"], 0);
    assert_eq!(rows[2]["compressed_size"], img.layers[0].blob.size);
    assert_eq!(rows[2]["created"], "2024-03-01T09:00:00Z");

    // tag, then both names are listed; rmi of one leaves the other and every blob.
    let blobs = blob_names(&env.root());
    ok(env.run(&["tag", &name, "example.org/copy:2"]));
    let out = ok(env.run(&["images"]));
    assert!(out.stdout.contains("example.org/copy"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("{}/team/app", registry.host()))
    );
    let out = ok(env.run(&["rmi", &name]));
    assert_eq!(out.stdout, format!("Untagged: {name}\n"));
    let out = ok(env.run(&["images", "-q"]));
    assert_eq!(out.stdout, format!("{}\n", &img.config.hex()[..12]));
    assert_eq!(blob_names(&env.root()), blobs, "rmi keeps the content");

    let out = env.run(&[
        "tag",
        "example.org/copy:2",
        &format!("x/y@{}", img.digest()),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("refusing to create a tag with a digest reference")
    );

    // By ID with names in two repositories: refused without -f.
    ok(env.run(&["tag", "example.org/copy:2", "other/name"]));
    let out = env.run(&["rmi", id_prefix]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &img.config.hex()[..12]
        )),
        "{}",
        out.stderr
    );
    let out = ok(env.run(&["rmi", "-f", id_prefix]));
    let mut untagged: Vec<&str> = out.stdout.lines().collect();
    untagged.sort();
    assert_eq!(
        untagged,
        [
            "Untagged: example.org/copy:2",
            "Untagged: other/name:latest"
        ]
    );
    assert_eq!(ok(env.run(&["images", "-q"])).stdout, "");
    assert_eq!(blob_names(&env.root()), blobs);

    let out = env.run(&["rmi", "other/name"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("No such image: other/name"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: "), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_inspect_reads_the_registry_and_writes_nothing() {
    let single = image(10);
    let registry = registry_with("team/single", "1", &single).await;
    let amd = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(11, 10_000))
        .build();
    let arm = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", Some("v8"))
        .layer(random_layer(12, 10_000))
        .build();
    let index = test_registry::index(Format::Oci, vec![amd.clone(), arm.clone()]);
    Pusher::new(&registry.url())
        .push_index("team/multi", "1", &index)
        .await
        .unwrap();
    let env = Env::new();
    let mark = registry.mark();

    let single_name = format!("{}/team/single:1", registry.host());
    let out = ok(env.run(&["manifest", "inspect", &single_name]));
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc, single.manifest_json());
    assert!(
        out.stdout.contains("\n  \"config\""),
        "indented: {}",
        out.stdout
    );

    let out = ok(env.run(&["manifest", "inspect", "--verbose", &single_name]));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["Ref"], single_name);
    assert_eq!(v["Descriptor"]["digest"], single.digest());
    assert_eq!(v["OCIManifest"], single.manifest_json());

    let multi = format!("{}/team/multi:1", registry.host());
    let out = ok(env.run(&["manifest", "inspect", &multi]));
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["manifests"].as_array().map(Vec::len), Some(2));
    let out = ok(env.run(&["manifest", "inspect", "-v", &multi]));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let records = v.as_array().expect("an array for an index");
    assert_eq!(records.len(), 2);
    for (record, img) in records.iter().zip([&amd, &arm]) {
        let raw = base64_decode(record["Raw"].as_str().unwrap());
        assert_eq!(test_registry::sha256_digest(&raw), img.digest());
        assert_eq!(record["Descriptor"]["digest"], img.digest());
        assert_eq!(
            record["Descriptor"]["platform"]["architecture"],
            img.platform.1
        );
        assert_eq!(record["OCIManifest"], img.manifest_json());
    }
    // By digest too.
    let by_digest = format!("{}/team/multi@{}", registry.host(), arm.digest());
    let out = ok(env.run(&["manifest", "inspect", &by_digest]));
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc, arm.manifest_json());

    let out = env.run(&[
        "manifest",
        "inspect",
        &format!("{}/team/single:nope", registry.host()),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no such manifest"), "{}", out.stderr);

    assert!(
        !Path::new(&env.root()).exists(),
        "manifest inspect created no store"
    );
    let requests = registry.requests_since(mark);
    assert!(
        !requests.iter().any(|r| r.path.contains("/blobs/")),
        "no blob was fetched: {requests:?}"
    );
}

/// Standard base64 with padding: what docker's `Raw` holds.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn info_reports_the_store_and_the_config() {
    let img = image(20);
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    ok(env.run(&["pull", "-q", &format!("{}/team/app:1", registry.host())]));
    let config = env.dir.path().join("haul.json");
    std::fs::write(
        &config,
        r#"{"max-concurrent-downloads": 2, "insecure-registries": ["registry.lan:5000"]}"#,
    )
    .unwrap();

    let out = ok(env.run(&[
        "--config",
        config.to_str().unwrap(),
        "info",
        "--format",
        "json",
    ]));
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let blobs = [
        &img.manifest,
        &img.config,
        &img.layers[0].blob,
        &img.layers[1].blob,
    ];
    assert_eq!(v["store"]["root"], env.root());
    assert_eq!(v["store"]["images"], 1);
    assert_eq!(v["store"]["blobs"], blobs.len());
    assert_eq!(
        v["store"]["blob_bytes"],
        blobs.iter().map(|b| b.size).sum::<u64>()
    );
    assert_eq!(v["store"]["partial_bytes"], 0);
    // `pull` extracts by default: both layers are in the layer cache.
    assert_eq!(v["store"]["extracted_layers"], 2);
    assert!(v["store"]["extracted_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["config_file"], config.to_str().unwrap());
    assert_eq!(v["config"]["max-concurrent-downloads"], 2);
    assert_eq!(v["config"]["max-download-attempts"], 5);
    assert_eq!(
        v["config"]["insecure-registries"],
        json!(["registry.lan:5000"])
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let out = ok(env.run(&["info"]));
    assert!(out.stdout.contains(&format!("Store: {}\n", env.root())));
    assert!(out.stdout.contains(" Images: 1\n"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!(" Blobs: {} (", blobs.len())));
    assert!(
        out.stdout.contains("Config file: none (defaults)\n"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn login_checks_basic_auth_then_pull_uses_the_saved_login() {
    let registry = RealRegistry::start(RegistryOptions {
        htpasswd: vec![("alice".into(), "s3cret".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let img = image(30);
    Pusher::new(&registry.url())
        .basic("alice", "s3cret")
        .push_image("private/app", "1", &img)
        .await
        .unwrap();
    let env = Env::new();
    let host = registry.host();
    let private = format!("{host}/private/app:1");

    let out = run(env
        .haul()
        .args(["login", &host, "-u", "alice", "--password-stdin"])
        .write_stdin("wrong\n"));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("unauthorized: incorrect username or password"),
        "{}",
        out.stderr
    );
    assert!(!env.docker_config().exists(), "nothing saved");
    assert_eq!(env.run(&["pull", "-q", &private]).code, 1);

    let out = ok(run(env
        .haul()
        .args(["login", &host, "-u", "alice", "--password-stdin"])
        .write_stdin("s3cret\n")));
    assert_eq!(out.stdout, "Login Succeeded\n");
    let mode = std::fs::metadata(env.docker_config())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(env.docker_config()).unwrap()).unwrap();
    assert!(saved["auths"][&host]["auth"].is_string(), "{saved}");
    ok(env.run(&["pull", "-q", &private]));

    // Without -u on a non-terminal, the saved login is checked again.
    let out = ok(env.run(&["login", &host]));
    assert_eq!(out.stdout, "Login Succeeded\n");

    let out = ok(env.run(&["logout", &host]));
    assert_eq!(
        out.stdout,
        format!("Removing login credentials for {host}\n")
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(env.docker_config()).unwrap()).unwrap();
    assert!(saved["auths"].get(&host).is_none(), "{saved}");
    let out = ok(env.run(&["logout", &host]));
    assert_eq!(out.stdout, format!("Not logged in to {host}\n"));

    let out = env.run(&["login", &host]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("non TTY"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_checks_token_auth_and_warns_about_password_flags() {
    let issuer = TokenIssuer::start(TokenIssuerOptions {
        users: vec![("bob".into(), "hunter2".into())],
        anonymous_pull: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let registry = RealRegistry::start(RegistryOptions {
        token: Some(issuer.registry_config()),
        ..Default::default()
    })
    .await
    .unwrap();
    let img = image(40);
    Pusher::new(&registry.url())
        .bearer(&issuer.token_for("bob", "repository:secret/app:pull,push"))
        .push_image("secret/app", "1", &img)
        .await
        .unwrap();
    let env = Env::new();
    let host = registry.host();

    let out = env.run(&["login", &host, "-u", "bob", "-p", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("unauthorized: incorrect username or password"),
        "{}",
        out.stderr
    );
    assert!(!env.docker_config().exists());

    let out = ok(env.run(&["login", &host, "-u", "bob", "-p", "hunter2"]));
    assert!(
        out.stderr
            .contains("WARNING! Using --password via the CLI is insecure. Use --password-stdin."),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "Login Succeeded\n");
    ok(env.run(&["pull", "-q", &format!("{host}/secret/app:1")]));
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("bob") && r.scopes.is_empty() && r.status == 200),
        "the login asked for a token as bob with no scope"
    );

    let out = env.run(&["login", &host, "-p", "x", "--password-stdin"]);
    assert_eq!(out.code, 2, "conflicting flags are a usage error");
}
