//! The `haul` binary and the network settings: `haul info` shows the configuration in effect
//! (proxy passwords masked), proxies from the environment carry pulls, `NO_PROXY` is honoured,
//! and a proxy's password never reaches the terminal, not even with `--debug`.

mod common;

use common::{Env, ok, registry_with, run};
use serde_json::{Value, json};
use test_registry::{Format, HttpProxy, HttpProxyOptions, Image, ImageBuilder, random_layer};

const PROXY_PASSWORD: &str = "pr0xy-s3cret";

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, 150_000))
        .build()
}

#[test]
fn info_prints_the_effective_configuration_with_proxy_passwords_masked() {
    let env = Env::new();
    let config = env.dir.path().join("daemon.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "max-concurrent-downloads": 4,
  "max-download-attempts": 2,
  "download-stall-timeout": 15,
  "max-retry-after": 30,
  "max-connections-per-blob": 6,
  "ranged-download-min-size": 67108864,
  "foreign-layer-allowed-networks": ["10.20.0.0/16"],
  "insecure-registries": ["registry.lan:5000"],
  "registry-mirrors": {{"docker.io": ["https://mirror.local"], "ghcr.io": ["http://127.0.0.1:5001", "https://m2.lan"]}},
  "proxies": {{"http-proxy": "http://alice:{PROXY_PASSWORD}@proxy.lan:3128", "https-proxy": "http://proxy.lan:3129", "no-proxy": "*.lan"}}
}}"#
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let out = ok(env.run(&["--config", config, "info"]));
    let text = out.stdout;
    for line in [
        &format!("Config file: {config}\n"),
        " max-concurrent-downloads: 4\n",
        " max-download-attempts: 2\n",
        " download-stall-timeout: 15s\n",
        " max-retry-after: 30s\n",
        " max-connections-per-blob: 6\n",
        " ranged-download-min-size: 67.1MB\n",
        " foreign-layer-allowed-networks: 10.20.0.0/16\n",
        " insecure-registries: registry.lan:5000\n",
        " registry-mirrors:\n  docker.io: https://mirror.local/\n  ghcr.io: http://127.0.0.1:5001/, https://m2.lan/\n",
        " proxies: config file\n  http-proxy: http://xxxxx:xxxxx@proxy.lan:3128\n  https-proxy: http://proxy.lan:3129\n  no-proxy: *.lan\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains(PROXY_PASSWORD), "{text}");

    let out = ok(env.run(&["--config", config, "info", "--format", "json"]));
    assert!(!out.stdout.contains(PROXY_PASSWORD), "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["config_file"], config);
    let c = &v["config"];
    assert_eq!(c["max-concurrent-downloads"], 4);
    assert_eq!(c["max-download-attempts"], 2);
    assert_eq!(c["download-stall-timeout"], 15.0);
    assert_eq!(c["max-retry-after"], 30.0);
    assert_eq!(c["max-connections-per-blob"], 6);
    assert_eq!(c["ranged-download-min-size"], 67_108_864);
    assert_eq!(c["foreign-layer-allowed-networks"], json!(["10.20.0.0/16"]));
    assert_eq!(c["insecure-registries"], json!(["registry.lan:5000"]));
    assert_eq!(
        c["registry-mirrors"],
        json!({"docker.io": ["https://mirror.local/"], "ghcr.io": ["http://127.0.0.1:5001/", "https://m2.lan/"]})
    );
    assert_eq!(
        c["proxies"],
        json!({"source": "config file", "http-proxy": "http://xxxxx:xxxxx@proxy.lan:3128",
               "https-proxy": "http://proxy.lan:3129", "no-proxy": "*.lan"})
    );
}

#[test]
fn info_without_a_config_file_shows_defaults_and_the_environment_proxies() {
    let env = Env::new();
    let out = ok(env.run(&["info"]));
    for line in [
        "Config file: none (defaults)\n",
        " max-concurrent-downloads: 3\n",
        " max-download-attempts: 5\n",
        " download-stall-timeout: 60s\n",
        " registry-mirrors: none\n",
        " proxies: none\n",
        // What inflates gzip layers: ISA-L where the machine has it (the library says the same).
        &format!("Gzip inflater: {}\n", haul::unpack::gzip_inflater()),
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?} in:\n{}",
            out.stdout
        );
    }
    let json: Value =
        serde_json::from_str(&ok(env.run(&["info", "--format", "json"])).stdout).unwrap();
    assert_eq!(json["gzip_inflater"], haul::unpack::gzip_inflater());

    let info_with = |vars: &[(&str, &str)]| {
        let mut cmd = env.haul();
        cmd.envs(vars.iter().copied());
        ok(run(cmd.arg("info")))
    };
    let proxy = format!("http://bob:{PROXY_PASSWORD}@proxy.corp:8080");
    let out = info_with(&[("HTTPS_PROXY", &proxy), ("NO_PROXY", "localhost")]);
    assert!(
        out.stdout.contains(
            " proxies: environment\n  https-proxy: http://xxxxx:xxxxx@proxy.corp:8080\n  no-proxy: localhost\n"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(PROXY_PASSWORD), "{}", out.stdout);

    // What info shows is what pulls use: ALL_PROXY for a scheme without its own proxy, and no
    // proxy at all inside a CGI request (httpoxy: REQUEST_METHOD set).
    let out = info_with(&[
        ("ALL_PROXY", "http://all.corp:1080"),
        ("HTTPS_PROXY", "http://tls.corp:8443"),
    ]);
    assert!(
        out.stdout.contains(
            " proxies: environment\n  http-proxy: http://all.corp:1080\n  https-proxy: http://tls.corp:8443\n"
        ),
        "{}",
        out.stdout
    );
    let out = info_with(&[("REQUEST_METHOD", "GET"), ("HTTPS_PROXY", &proxy)]);
    assert!(out.stdout.contains(" proxies: none\n"), "{}", out.stdout);
}

/// docker's rule: a remote name goes through the environment's proxy, a loopback registry never
/// does. The proxy resolves `registry.test` to loopback itself, as a site proxy's DNS would.
#[tokio::test(flavor = "multi_thread")]
async fn pulls_go_through_the_environment_proxy_except_to_loopback() {
    let img = image(1);
    let registry = registry_with("team/app", "1", &img).await;
    let proxy = HttpProxy::start(HttpProxyOptions {
        credentials: Some(("alice".into(), PROXY_PASSWORD.into())),
        hosts: vec![("registry.test".into(), [127, 0, 0, 1].into())],
    })
    .await
    .unwrap();
    let proxy_url = proxy.url_with_credentials("alice", PROXY_PASSWORD);
    let remote = format!("registry.test:{}", registry.port());
    let name = format!("{remote}/team/app:1");

    let env = Env::new();
    let config = env.dir.path().join("haul.json");
    std::fs::write(
        &config,
        json!({"insecure-registries": [remote]}).to_string(),
    )
    .unwrap();
    let out = ok(run(env
        .haul()
        .env("HTTP_PROXY", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .args(["--config", config.to_str().unwrap(), "pull", "-q", &name])));
    assert_eq!(out.stdout, format!("{name}\n"));
    let seen = proxy.requests();
    for blob in img.blobs() {
        assert!(
            seen.iter().any(
                |r| r.method == "GET" && r.target.ends_with(&format!("/blobs/{}", blob.digest))
            ),
            "{} did not go through the proxy: {seen:?}",
            blob.digest
        );
    }
    assert!(
        seen.iter()
            .all(|r| r.basic_credentials() == Some(("alice".into(), PROXY_PASSWORD.into())))
    );

    proxy.clear_requests();
    let direct = Env::new();
    ok(run(direct
        .haul()
        .env("HTTP_PROXY", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .args([
            "pull",
            "-q",
            &format!("{}/team/app:1", registry.host()),
        ])));
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[test]
fn a_proxy_password_never_reaches_the_terminal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy = format!("http://alice:{PROXY_PASSWORD}@127.0.0.1:{port}");
    let env = Env::new();
    let one_try = env.dir.path().join("one-try.json");
    std::fs::write(&one_try, r#"{"max-download-attempts": 1}"#).unwrap();

    // From the environment, with debug logging on.
    let out = run(env
        .haul()
        .env("HTTP_PROXY", &proxy)
        .env("HTTPS_PROXY", &proxy)
        .args([
            "--debug",
            "--config",
            one_try.to_str().unwrap(),
            "pull",
            "registry.example:9/team/app:1",
        ]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    // A remote name goes through the proxy (loopback would not), and the error names it.
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}"))
            && out.stderr.contains("registry.example:9"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(PROXY_PASSWORD) && !out.stdout.contains(PROXY_PASSWORD),
        "{}",
        out.stderr
    );

    // From the config file, with debug logging on.
    let config = env.dir.path().join("haul.json");
    std::fs::write(
        &config,
        json!({"max-download-attempts": 1, "proxies": {"http-proxy": proxy, "https-proxy": proxy}})
            .to_string(),
    )
    .unwrap();
    let out = run(env.haul().args([
        "--debug",
        "--config",
        config.to_str().unwrap(),
        "pull",
        "registry.example:9/team/app:1",
    ]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        !out.stderr.contains(PROXY_PASSWORD) && !out.stdout.contains(PROXY_PASSWORD),
        "{}",
        out.stderr
    );
}
