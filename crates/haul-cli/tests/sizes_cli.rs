//! Issue 15 item 6: SIZE says what it measures, the same in `images`, `history` and `inspect`:
//! docker's unpacked size (the layers' uncompressed tars), with the compressed size beside it.
//! The expected numbers come from other tools, never from haul: GNU gzip and `wc -c` for the
//! uncompressed bytes of each stored layer blob, skopeo for the compressed sizes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, ok, registry_with};
use serde_json::Value;
use test_registry::{Format, Image, ImageBuilder, LayerBuilder, pseudo_text, random_layer};

fn image() -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(151, 300_000))
        .layer(
            LayerBuilder::new()
                .add_file("plain.txt", &pseudo_text(152, 30_000), 0o644)
                .finish_uncompressed(),
        )
        .layer(random_layer(153, 80_000))
        .build()
}

/// The uncompressed bytes of a stored layer blob, as GNU gzip and coreutils count them (a plain
/// tar is counted as it is).
fn uncompressed_bytes(root: &str, digest: &str, gzipped: bool) -> u64 {
    let blob = Path::new(root)
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..]);
    let script = if gzipped {
        "gzip -dc \"$0\" | wc -c"
    } else {
        "wc -c < \"$0\""
    };
    let out = Command::new("sh")
        .args(["-c", script, &blob.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// skopeo's view of a ref in the store: (config size, each layer's compressed size), from the
/// manifest it reads there.
fn skopeo_sizes(root: &str, name: &str) -> (u64, Vec<u64>) {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{root}:{name}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = manifest["config"]["size"].as_u64().unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    (config, layers)
}

/// A size as docker prints it (`301kB`), in bytes; `None` for anything else.
fn parse_human(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let scale = ["B", "kB", "MB", "GB"].iter().position(|u| *u == unit)?;
    Some(number.parse::<f64>().ok()? * 1000f64.powi(scale as i32))
}

/// Three significant digits, as docker rounds: within half a percent.
fn assert_close(shown: &str, bytes: u64) {
    let value = parse_human(shown).unwrap_or_else(|| panic!("not a size: {shown:?}"));
    let error = (value - bytes as f64).abs() / bytes as f64;
    assert!(error <= 0.005, "{shown} is not {bytes} bytes");
}

fn field(env: &Env, args: &[&str]) -> String {
    ok(env.run(args)).stdout.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_are_the_unpacked_layers_in_images_history_and_inspect() {
    let img = image();
    let registry = registry_with("team/sizes", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/sizes:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let root = env.root();

    let per_layer: Vec<u64> = img
        .layers
        .iter()
        .map(|l| uncompressed_bytes(&root, &l.blob.digest, l.blob.media_type.ends_with("gzip")))
        .collect();
    let unpacked: u64 = per_layer.iter().sum();
    let (config, compressed_layers) = skopeo_sizes(&root, &name);
    let compressed = config + compressed_layers.iter().sum::<u64>();
    assert!(unpacked > compressed, "the test image should compress");

    let check = |env: &Env| {
        assert_eq!(
            field(env, &["inspect", "-f", "{{.Size}}", &name]),
            unpacked.to_string()
        );
        assert_eq!(
            field(env, &["inspect", "-f", "{{.CompressedSize}}", &name]),
            compressed.to_string()
        );
        assert_eq!(
            field(env, &["inspect", "-f", "{{.SizeEstimated}}", &name]),
            "false"
        );

        let rows: Value =
            serde_json::from_str(&ok(env.run(&["images", "--format", "json"])).stdout).unwrap();
        assert_eq!(rows[0]["size"], unpacked, "{rows}");
        assert_eq!(rows[0]["compressed_size"], compressed, "{rows}");
        assert_eq!(rows[0]["size_estimated"], false, "{rows}");
        let shown = field(env, &["images", "--format", "{{.Size}}"]);
        assert_close(&shown, unpacked);
        assert_close(
            &field(env, &["images", "--format", "{{.CompressedSize}}"]),
            compressed,
        );
        let table = ok(env.run(&["images"]));
        assert!(
            table.stdout.lines().nth(1).unwrap().ends_with(&shown),
            "{}",
            table.stdout
        );
        assert!(
            !table.stdout.contains('*') && table.stderr.is_empty(),
            "{table:?}",
            table = (table.stdout, table.stderr)
        );

        // history: newest first, one row per layer, each its own uncompressed size.
        let history: Value =
            serde_json::from_str(&ok(env.run(&["history", "--format", "json", &name])).stdout)
                .unwrap();
        let sizes: Vec<u64> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["size"].as_u64().unwrap())
            .collect();
        let mut expected = per_layer.clone();
        expected.reverse();
        assert_eq!(sizes, expected, "{history}");
        let shown = field(env, &["history", "--format", "{{.Size}}", &name]);
        for (line, bytes) in shown.lines().zip(&expected) {
            assert_close(line, *bytes);
        }
    };
    check(&env);
    // Recorded at pull time: still known without the layer cache the pull filled.
    std::fs::remove_dir_all(Path::new(&root).join("layers")).unwrap();
    check(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_never_unpacked_counts_compressed_and_says_so() {
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(161, 200_000))
        .build();
    let registry = registry_with("team/lazy", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/lazy:1", registry.host());
    ok(env.run(&["pull", "-q", "--no-unpack", &name]));
    let root = env.root();
    let (config, layers) = skopeo_sizes(&root, &name);

    // Nothing was decompressed: the compressed size stands in, marked.
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.Size}}", &name]),
        layers[0].to_string()
    );
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.SizeEstimated}}", &name]),
        "true"
    );
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.CompressedSize}}", &name]),
        (config + layers[0]).to_string()
    );
    let table = ok(env.run(&["images"]));
    assert!(
        table.stdout.lines().nth(1).unwrap().ends_with('*'),
        "{}",
        table.stdout
    );
    assert!(table.stderr.starts_with("* estimated:"), "{}", table.stderr);
    let history = ok(env.run(&["history", &name]));
    assert!(history.stdout.contains("B*"), "{}", history.stdout);
    assert!(
        history.stderr.starts_with("* estimated:"),
        "{}",
        history.stderr
    );

    // Unpacking measures it.
    let dir = env.dir.path().join("rootfs").display().to_string();
    ok(env.run(&["unpack", "-q", &name, &dir]));
    let unpacked = uncompressed_bytes(&root, &img.layers[0].blob.digest, true);
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.Size}}", &name]),
        unpacked.to_string()
    );
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.SizeEstimated}}", &name]),
        "false"
    );
    let table = ok(env.run(&["images"]));
    assert!(
        !table.stdout.contains('*') && table.stderr.is_empty(),
        "{}",
        table.stdout
    );
}

/// An image skopeo wrote into the store has no sizes recorded: it shows its compressed size,
/// marked, until it is unpacked.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_skopeo_wrote_shows_its_compressed_size_marked() {
    let img = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(random_layer(171, 100_000))
        .build();
    let registry = registry_with("team/other", "1", &img).await;
    let env = Env::new();
    ok(env.run(&["images"]));
    let copied = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/team/other:1", registry.host()),
            &format!("oci:{}:mytag", env.root()),
        ])
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let (_, layers) = skopeo_sizes(&env.root(), "mytag");
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.Size}}", "mytag"]),
        layers[0].to_string()
    );
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.SizeEstimated}}", "mytag"]),
        "true"
    );
}

/// A store an older haul filled has no sizes recorded on its refs: the layer cache still knows
/// them, and once that is gone the size is marked an estimate until the next pull records it.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_an_older_haul_pulled_gets_its_sizes_on_the_next_pull() {
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(181, 120_000))
        .build();
    let registry = registry_with("team/old", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/old:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));
    let root = env.root();
    let unpacked = uncompressed_bytes(&root, &img.layers[0].blob.digest, true).to_string();

    // What an older haul wrote: the same index.json without haul's sizes.
    let index_path = Path::new(&root).join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        m["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("dev.haul.layer-sizes");
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.Size}}", &name]),
        unpacked
    );

    std::fs::remove_dir_all(Path::new(&root).join("layers")).unwrap();
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.SizeEstimated}}", &name]),
        "true"
    );

    ok(env.run(&["pull", "-q", &name]));
    std::fs::remove_dir_all(Path::new(&root).join("layers")).unwrap();
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.Size}}", &name]),
        unpacked
    );
    assert_eq!(
        field(&env, &["inspect", "-f", "{{.SizeEstimated}}", &name]),
        "false"
    );
}
