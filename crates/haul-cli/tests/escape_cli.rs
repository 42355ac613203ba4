//! Terminal escape injection: whatever a registry or an image says reaches the terminal with its
//! control characters shown (`\x1b`, `\r`, `\n`, `\u009b`), never raw, so it cannot move the
//! cursor, clear lines, retitle the window or forge a line of haul's own output. JSON outputs stay
//! valid JSON and carry the same strings.

mod common;

use common::{Env, ok, registry_with, run};
use serde_json::{Value, json};
use test_registry::{
    FakeRegistry, FakeRegistryOptions, Fault, Format, Image, ImageBuilder, random_layer,
};

/// What an attacker wants the user to read: the line a successful, harmless pull ends with,
/// drawn over the real error by returning to the start of the line and clearing it.
const FORGED: &str = "Status: Image is up to date for alpine:latest";

fn hostile(text: &str) -> String {
    format!("\r\x1b[2K{text}\n\x1b]0;owned\x07{text}")
}

fn image(seed: u64) -> Image {
    ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(seed, 10_000))
        .build()
}

/// Every control character in `text` except the newlines that end lines of output.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

fn assert_no_forged_line(text: &str) {
    assert!(
        raw_controls(text).is_empty(),
        "raw control characters {:?} in:\n{text:?}",
        raw_controls(text)
    );
    assert!(
        !text.lines().any(|l| l.starts_with(FORGED)),
        "a forged status line stands on its own in:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_error_cannot_forge_a_status_line() {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    let img = image(1);
    fake.add_image("app", "1", &img);
    let body = json!({"errors": [{
        "code": "DENIED",
        "message": hostile(FORGED),
        "detail": hostile(FORGED),
    }]});
    // A blob GET, so the body is read (a manifest is resolved with HEAD first, which has none).
    fake.fault(
        &img.layers[0].blob.digest,
        Fault::Status(403, body.to_string()),
    );
    let env = Env::new();
    let name = format!("{}/app:1", fake.host());

    let out = env.run(&["pull", "--progress", "plain", &name]);

    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_no_forged_line(&out.stderr);
    // The registry's words are still there for the user to read, made visible.
    assert!(
        out.stderr
            .contains(r"denied: \r\x1b[2KStatus: Image is up to date"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_escape_what_the_registry_sent() {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("app", "1", &image(2));
    let body = json!({"errors": [{"code": "UNAVAILABLE", "message": hostile(FORGED)}]});
    // Once, on a GET (a HEAD's answer has no body): the retry's log line carries the registry's
    // message, then the pull succeeds.
    fake.fault_times("/tags/list", Fault::Status(503, body.to_string()), 1);
    let env = Env::new();
    let repository = format!("{}/app", fake.host());

    let out = ok(env.run(&[
        "-D",
        "pull",
        "--all-tags",
        "--progress",
        "plain",
        &repository,
    ]));

    assert!(
        out.stderr.contains(r"\r\x1b[2KStatus: Image is up to date"),
        "the retry was logged with the registry's message: {}",
        out.stderr
    );
    assert_no_forged_line(&out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_name_in_a_warning_is_escaped() {
    let fake = FakeRegistry::start(FakeRegistryOptions::default())
        .await
        .unwrap();
    fake.add_image("app", "1", &image(3));
    let tags = json!({"name": "app", "tags": ["1", hostile(FORGED)]});
    fake.fault("/tags/list", Fault::Status(200, tags.to_string()));
    let env = Env::new();
    let repository = format!("{}/app", fake.host());

    let out = ok(env.run(&["pull", "--all-tags", "--progress", "plain", &repository]));

    assert!(
        out.stderr.contains(": not a valid tag name"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(r"\r\x1b[2KStatus: Image is up to date"),
        "{}",
        out.stderr
    );
    assert_no_forged_line(&out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_escapes_created_by() {
    let created_by = format!("RUN true \x1b]0;owned\x07\x1b[2J\r{FORGED}\u{9b}2J\x7f");
    let comment = "\x1b[31mred\x1b[0m \u{85}";
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(4, 10_000))
        .config_field(
            "history",
            json!([{"created": "2024-03-01T09:00:00Z", "created_by": created_by, "comment": comment}]),
        )
        .build();
    let registry = registry_with("team/app", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/app:1", registry.host());
    ok(env.run(&["pull", "-q", &name]));

    for args in [
        &["history", &name][..],
        &["history", "--no-trunc", &name][..],
    ] {
        let out = ok(env.run(args));
        assert!(
            raw_controls(&out.stdout).is_empty(),
            "{args:?}: raw control characters {:?} in:\n{:?}",
            raw_controls(&out.stdout),
            out.stdout
        );
        assert_eq!(out.stdout.lines().count(), 2, "{args:?}: {}", out.stdout);
        assert!(
            out.stdout.contains(r"RUN true \x1b]0;owned\x07"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(r"\x1b[31mred\x1b[0m \u0085"),
            "{}",
            out.stdout
        );
    }
    let out = ok(env.run(&["history", "--no-trunc", &name]));
    assert!(
        out.stdout.contains(
            r"\r{FORGED}\u009b2J\x7f"
                .replace("{FORGED}", FORGED)
                .as_str()
        ),
        "{}",
        out.stdout
    );

    // JSON keeps the exact strings, in valid JSON with no raw control character.
    let out = ok(env.run(&["history", "--format", "json", &name]));
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["created_by"], json!(created_by));
    assert_eq!(rows[0]["comment"], json!(comment));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_outputs_escape_c1_controls_and_stay_valid() {
    // serde_json escapes C0 controls but writes DEL and C1 (U+0080..U+009F, e.g. the one-byte
    // CSI U+009B) as they are; some terminals act on those.
    let annotation = "\u{9b}2J\u{9b}H\x7fowned";
    let label = "\u{90}q\u{9c}\x1b[2J";
    let img = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(random_layer(5, 10_000))
        .annotation("org.example.note", annotation)
        .config_field("config", json!({"Labels": {"note": label}}))
        .build();
    let registry = registry_with("team/json", "1", &img).await;
    let env = Env::new();
    let name = format!("{}/team/json:1", registry.host());

    let out = ok(env.run(&["manifest", "inspect", &name]));
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["annotations"]["org.example.note"], json!(annotation));

    let out = ok(env.run(&["pull", "--progress", "json", &name]));
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    let out = ok(env.run(&["inspect", &name]));
    assert!(raw_controls(&out.stdout).is_empty(), "{:?}", out.stdout);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc[0]["Config"]["Labels"]["note"], json!(label), "{doc}");
}

#[test]
fn an_error_about_a_hostile_name_is_escaped() {
    // Names typed by the user (or pasted from a hostile page) are echoed in errors too.
    let env = Env::new();
    let out = run(env.haul().args(["inspect", &format!("x\r\x1b[2K{FORGED}")]));
    assert_eq!(out.code, 1);
    assert_no_forged_line(&out.stderr);
}
