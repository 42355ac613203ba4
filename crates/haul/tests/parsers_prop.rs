//! Property-based tests of the parsers that read bytes haul did not write: image references,
//! manifests, indexes and configs, platforms, `WWW-Authenticate` challenges and token responses,
//! docker's `config.json`, layer tars (through the applier, into a sandbox) and an archive's
//! `manifest.json` (through `load`, into a temporary store).
//!
//! Inputs come in two kinds: arbitrary bytes and strings, where the only promise is a clean result
//! (no panic, a typed error that prints), and documents built from the format's own grammar with
//! fields swapped for arbitrary values, which reach the code behind the first `serde_json` error.
//! Well-formed inputs must also read back as what was written.
//!
//! Every property runs a fixed number of cases from proptest's random generator (see `cases`), so
//! the file runs in seconds on two cores and keeps trying new inputs run after run
//! (`PROPTEST_CASES=50000` for a long soak). An input that fails is shrunk and kept in
//! `proptest-regressions/parsers_prop.txt`, which every run replays first, and is pinned as a
//! named test beside the parser it broke.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine as _;
use haul::archive;
use haul::manifest::{self, ImageConfig, Manifest, media_type};
use haul::platform::{self, Platform};
use haul::reference::Reference;
use haul::registry::{
    Challenge, Credential, DockerConfig, parse_token_response, parse_www_authenticate,
};
use haul::store::Store;
use haul::unpack::{ApplyOptions, apply_layer, apply_layer_for_cache};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde_json::{Value, json};
use test_registry::{EntryType, LayerBuilder, RawEntry};

/// `n` cases of a property (`PROPTEST_CASES` overrides it, for a long soak); shrinking is
/// bounded too, so even a failure ends quickly.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        max_shrink_iters: 2048,
        // Relative to the package root, where cargo runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/parsers_prop.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// Text that stresses a parser: its grammar's characters, separators and quotes, controls,
/// non-ASCII, and anything at all.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._:/@ -]{0,40}",
        1 => "[\\x00-\\x1f\\x7f\"\\\\ ,=;\u{80}-\u{9f}é✓\u{202e}]{0,12}",
        1 => any::<String>(),
    ]
    .boxed()
}

const KEYS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "digest",
    "size",
    "urls",
    "annotations",
    "platform",
    "architecture",
    "os",
    "variant",
    "os.version",
    "os.features",
    "artifactType",
    "rootfs",
    "type",
    "diff_ids",
    "history",
    "created",
    "created_by",
    "Config",
    "RepoTags",
    "Layers",
    "auths",
    "auth",
    "identitytoken",
    "credsStore",
    "credHelpers",
    "token",
    "access_token",
    "expires_in",
    "issued_at",
];

const MEDIA_TYPES: &[&str] = &[
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::OCI_CONFIG,
    media_type::OCI_LAYER_GZIP,
    media_type::DOCKER_LIST,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_CONFIG,
    media_type::DOCKER_LAYER_GZIP,
    media_type::DOCKER_LAYER_FOREIGN,
    media_type::DOCKER_SCHEMA1_SIGNED,
    media_type::DOCKER_SCHEMA1,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.empty.v1+json",
    "application/json",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    "",
];

fn media_type_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(MEDIA_TYPES).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// Valid digests mostly, then near misses.
fn digest_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "sha256:[0-9a-f]{64}",
        1 => "sha512:[0-9a-f]{128}",
        1 => "(sha256|sha512|md5|)?:?[0-9a-fA-F]{0,70}",
    ]
    .boxed()
}

/// Any JSON value, with keys and strings the formats use more often than chance would.
fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        media_type_text().prop_map(Value::from),
        digest_text().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    let key = prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => text(),
    ];
    leaf.prop_recursive(3, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// `valid` most of the time, arbitrary JSON (the wrong type, null, garbage) otherwise.
fn or_junk(valid: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![4 => valid, 1 => json()].boxed()
}

/// An object of the given fields, each left out now and then.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (
        values,
        prop::collection::vec(prop::bool::weighted(0.9), names.len()),
    )
        .prop_map(move |(values, keep)| {
            let mut map = serde_json::Map::new();
            for ((name, value), keep) in names.iter().zip(values).zip(keep) {
                if keep {
                    map.insert((*name).to_owned(), value);
                }
            }
            Value::Object(map)
        })
        .boxed()
}

fn string_value(s: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    s.prop_map(Value::from).boxed()
}

fn platform_value() -> BoxedStrategy<Value> {
    let part = || {
        string_value(
            prop_oneof![
                3 => prop::sample::select(&["linux", "windows", "amd64", "arm64", "arm", "v7", "v8", "aarch64", "x86_64", "unknown", ""][..]).prop_map(str::to_owned),
                1 => text(),
            ]
            .boxed(),
        )
    };
    object(vec![
        ("architecture", or_junk(part())),
        ("os", or_junk(part())),
        ("variant", or_junk(part())),
        ("os.version", or_junk(part())),
        (
            "os.features",
            or_junk(
                prop::collection::vec(part(), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ])
}

fn annotations_value() -> BoxedStrategy<Value> {
    prop::collection::btree_map(
        prop_oneof![
            Just("vnd.docker.reference.type".to_owned()),
            Just("org.opencontainers.image.ref.name".to_owned()),
            Just("io.containerd.image.name".to_owned()),
            text(),
        ],
        string_value(text()),
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
    .boxed()
}

fn descriptor_value() -> BoxedStrategy<Value> {
    object(vec![
        ("mediaType", or_junk(string_value(media_type_text()))),
        ("digest", or_junk(string_value(digest_text()))),
        ("size", or_junk(any::<u64>().prop_map(Value::from).boxed())),
        (
            "urls",
            or_junk(
                prop::collection::vec(string_value(text()), 0..2)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
        ("annotations", or_junk(annotations_value())),
        ("platform", or_junk(platform_value())),
    ])
}

fn descriptors_value() -> BoxedStrategy<Value> {
    prop::collection::vec(or_junk(descriptor_value()), 0..4)
        .prop_map(Value::Array)
        .boxed()
}

/// An image manifest, an index or a config, as a registry might send one.
fn manifest_doc() -> BoxedStrategy<Value> {
    let schema = || or_junk(prop_oneof![4 => Just(json!(2)), 1 => Just(json!(1))].boxed());
    let image = object(vec![
        ("schemaVersion", schema()),
        ("mediaType", or_junk(string_value(media_type_text()))),
        ("config", or_junk(descriptor_value())),
        ("layers", or_junk(descriptors_value())),
        ("annotations", or_junk(annotations_value())),
    ]);
    let index = object(vec![
        ("schemaVersion", schema()),
        ("mediaType", or_junk(string_value(media_type_text()))),
        ("manifests", or_junk(descriptors_value())),
        ("annotations", or_junk(annotations_value())),
    ]);
    let history = object(vec![
        (
            "created",
            or_junk(string_value(
                prop_oneof![Just("2024-03-01T09:00:00Z".to_owned()), text()].boxed(),
            )),
        ),
        ("created_by", or_junk(string_value(text()))),
        (
            "empty_layer",
            or_junk(any::<bool>().prop_map(Value::from).boxed()),
        ),
    ]);
    let config = object(vec![
        ("architecture", or_junk(string_value(text()))),
        ("os", or_junk(string_value(text()))),
        (
            "created",
            or_junk(string_value(
                prop_oneof![Just("2024-03-01T09:00:00.5+01:00".to_owned()), text()].boxed(),
            )),
        ),
        (
            "rootfs",
            or_junk(object(vec![
                ("type", or_junk(Just(json!("layers")).boxed())),
                (
                    "diff_ids",
                    or_junk(
                        prop::collection::vec(string_value(digest_text()), 0..3)
                            .prop_map(Value::Array)
                            .boxed(),
                    ),
                ),
            ])),
        ),
        (
            "history",
            or_junk(
                prop::collection::vec(or_junk(history), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ]);
    prop_oneof![3 => image, 3 => index, 2 => config, 1 => json()].boxed()
}

fn content_type() -> BoxedStrategy<Option<String>> {
    prop::option::of(media_type_text()).boxed()
}

/// Serialised `doc`, then sometimes cut short or with bytes flipped.
fn damaged(doc: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    (
        doc,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
    )
        .prop_map(|(doc, flips, cut)| {
            let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
            if !bytes.is_empty() {
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
            }
            bytes
        })
        .boxed()
}

fn to_case_error<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> TestCaseError + '_ {
    move |e| TestCaseError::fail(format!("{what}: {e:?}"))
}

// ---------------------------------------------------------------------------------------------
// Image references

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, short.
fn path_component() -> BoxedStrategy<String> {
    "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,2}".boxed()
}

fn registry_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just("localhost".to_owned()),
        Just("docker.io".to_owned()),
        Just("index.docker.io".to_owned()),
        "localhost:[0-9]{1,5}",
        "[a-z0-9]{1,8}(\\.[a-zA-Z0-9]{1,8}){1,2}(:[0-9]{1,5})?",
        "[a-z0-9]{1,8}:[0-9]{1,5}",
        "\\[[0-9a-f]{0,4}:[0-9a-f:]{1,10}\\](:[0-9]{1,5})?",
    ]
    .boxed()
}

/// A reference written the way people write them: optional registry, one to four path
/// components, optional tag, optional digest.
fn reference_text() -> BoxedStrategy<String> {
    (
        prop::option::of(registry_text()),
        prop::collection::vec(path_component(), 1..4),
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        prop::option::of("sha256:[0-9a-f]{64}"),
    )
        .prop_map(|(registry, mut path, tag, digest)| {
            if registry.is_none() && path.len() > 1 {
                // Without a registry, a first component with a '.' would be read as one.
                path[0] = path[0].replace('.', "-");
            }
            let mut s = registry.map(|r| format!("{r}/")).unwrap_or_default();
            s.push_str(&path.join("/"));
            if let Some(tag) = tag {
                s.push(':');
                s.push_str(&tag);
            }
            if let Some(digest) = digest {
                s.push('@');
                s.push_str(&digest);
            }
            s
        })
        .boxed()
}

/// `r` as its printed form means it: with `latest` when it had neither tag nor digest.
fn with_default_tag(r: &Reference) -> Reference {
    if r.tag().is_none() && r.digest().is_none() {
        r.with_tag("latest").expect("latest is a tag")
    } else {
        r.clone()
    }
}

/// What every parsed reference promises, whatever text it came from.
fn check_reference(r: &Reference) -> Result<(), TestCaseError> {
    let full = r.to_string();
    // The grammar is what makes a name safe to print: nothing a terminal acts on.
    prop_assert!(
        !full.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{full:?}"
    );
    let again: Reference = full.parse().map_err(to_case_error("reparsing"))?;
    prop_assert_eq!(
        &again,
        &with_default_tag(r),
        "parse(to_string(r)) for {}",
        full
    );
    prop_assert_eq!(again.to_string(), full.clone());
    let familiar = r.familiar_string();
    let from_familiar: Reference = familiar
        .parse()
        .map_err(to_case_error("reparsing familiar"))?;
    prop_assert_eq!(
        &from_familiar,
        &again,
        "the familiar form {} names another image than {}",
        familiar,
        full
    );
    let repository = Reference::parse_repository(&r.name()).map_err(to_case_error("name"))?;
    prop_assert_eq!(repository.name(), r.name());
    prop_assert!(r.name().len() <= 255);
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn any_text_parses_to_a_reference_that_round_trips_or_to_an_error(s in text()) {
        match s.parse::<Reference>() {
            Ok(r) => check_reference(&r)?,
            Err(e) => prop_assert!(e.to_string().starts_with("invalid reference format")),
        }
        let _ = Reference::parse_repository(&s);
        if let Ok(r) = "example.com/app".parse::<Reference>() {
            // Tags from a registry's tag list go through here.
            if let Ok(tagged) = r.with_tag(&s) {
                check_reference(&tagged)?;
            }
        }
    }

    #[test]
    fn references_written_by_the_grammar_parse_and_round_trip(s in reference_text()) {
        match s.parse::<Reference>() {
            Ok(r) => check_reference(&r)?,
            Err(haul::reference::ReferenceError::NameTooLong { .. }) => {}
            Err(e) => prop_assert!(false, "{s:?} is in the grammar but was refused: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests, indexes, configs, platforms

const PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v6",
    "windows/amd64",
];

/// Everything a pull does with a manifest's bytes before trusting them, none of which may panic.
fn check_manifest_bytes(content_type: Option<&str>, bytes: &[u8]) -> Result<(), TestCaseError> {
    match manifest::parse(content_type, bytes) {
        Ok(Manifest::Image(m)) => {
            let _ = m.check_is_image().map_err(|e| e.to_string());
        }
        Ok(Manifest::Index(index)) => {
            let _ = index.image_entries().count();
            for p in PLATFORMS {
                let wanted: Platform = p.parse().map_err(to_case_error("platform"))?;
                if let Err(e) = index.select(&wanted) {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match manifest::docker_to_oci(bytes) {
        Ok(Some(oci)) => {
            let doc: Value = serde_json::from_slice(&oci).map_err(to_case_error("OCI form"))?;
            prop_assert_eq!(&doc["mediaType"], &json!(media_type::OCI_MANIFEST));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ImageConfig::parse(bytes) {
        Ok(config) => {
            let _ = config.created_at();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn manifest_like_documents_decode_or_fail_cleanly(ct in content_type(), doc in manifest_doc()) {
        let bytes = serde_json::to_vec(&doc).map_err(to_case_error("serialising"))?;
        check_manifest_bytes(ct.as_deref(), &bytes)?;
    }

    #[test]
    fn damaged_and_arbitrary_manifest_bytes_decode_or_fail_cleanly(
        ct in content_type(),
        bytes in prop_oneof![damaged(manifest_doc()), prop::collection::vec(any::<u8>(), 0..256)],
    ) {
        check_manifest_bytes(ct.as_deref(), &bytes)?;
    }

    #[test]
    fn platforms_parse_and_match_without_panicking(
        s in text(),
        doc in platform_value(),
        others in prop::collection::vec(platform_value(), 0..4),
    ) {
        if let Ok(p) = s.parse::<Platform>() {
            let shown = p.to_string();
            let again: Platform = shown.parse().map_err(to_case_error("reparsing"))?;
            prop_assert_eq!(again.normalized(), p.normalized(), "{}", shown);
            let _ = p.compatible();
        }
        let Ok(p) = serde_json::from_value::<Platform>(doc) else { return Ok(()) };
        let others: Vec<Platform> =
            others.into_iter().filter_map(|o| serde_json::from_value(o).ok()).collect();
        let _ = p.to_string();
        let _ = p.compatible();
        for wanted in PLATFORMS {
            let wanted: Platform = wanted.parse().map_err(to_case_error("platform"))?;
            let _ = platform::matches(&wanted, &p);
            if let Some(i) = platform::best_match(&wanted, others.iter()) {
                prop_assert!(i < others.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate challenges and token responses

/// A quoted-string holding `value` exactly.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Optional whitespace as servers write it.
fn ows() -> BoxedStrategy<&'static str> {
    prop::sample::select(&["", " ", "  ", "\t"][..]).boxed()
}

/// A parameter value and how it is written: a token bare or quoted, anything else quoted.
fn param_value() -> BoxedStrategy<(String, String)> {
    prop_oneof![
        ("[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}", any::<bool>()).prop_map(|(v, quote)| {
            let written = if quote { quoted(&v) } else { v.clone() };
            (v, written)
        }),
        "[ -~]{1,30}|[a-z:/.]{1,10}[,=\" \\\\][a-z:/.]{0,10}|.{1,10}"
            .prop_map(|v| (v.clone(), quoted(&v))),
    ]
    .boxed()
}

fn case_of(word: &str, mask: u32) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A `Bearer` challenge with realm, service and scope in any order and spelling, maybe among
/// other challenges; with the values it must parse back to.
fn bearer_header() -> BoxedStrategy<(String, String, String, String, bool)> {
    (
        param_value(),
        param_value(),
        param_value(),
        any::<u32>(),
        Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        (ows(), ows(), ows()),
        any::<bool>(),
        prop::sample::select(&["", ", Foo abc==", ",Negotiate", ", Basic realm=x"][..]),
    )
        .prop_map(
            |(
                realm,
                service,
                scope,
                mask,
                order,
                (before_eq, after_eq, after_comma),
                basic_first,
                tail,
            )| {
                let params = [
                    ("realm", &realm.1),
                    ("service", &service.1),
                    ("scope", &scope.1),
                    ("error", &"\"insufficient_scope\"".to_owned()),
                ];
                let written: Vec<String> = order
                    .iter()
                    .map(|&i| {
                        let (name, value) = params[i];
                        format!(
                            "{}{before_eq}={after_eq}{value}",
                            case_of(name, mask.rotate_left(i as u32))
                        )
                    })
                    .collect();
                let mut header = String::new();
                if basic_first {
                    header.push_str("Basic realm=\"basic\", ");
                }
                header.push_str(&case_of("bearer", mask));
                header.push(' ');
                header.push_str(&written.join(&format!(",{after_comma}")));
                header.push_str(tail);
                (header, realm.0, service.0, scope.0, basic_first)
            },
        )
        .boxed()
}

fn token_response_doc() -> BoxedStrategy<Value> {
    let number = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(1e300)),
        Just(json!(u64::MAX)),
        Just(json!(300)),
    ]
    .boxed();
    object(vec![
        ("token", or_junk(string_value(text()))),
        ("access_token", or_junk(string_value(text()))),
        ("refresh_token", or_junk(string_value(text()))),
        ("expires_in", or_junk(number)),
        (
            "issued_at",
            or_junk(string_value(
                prop_oneof![Just("2026-01-01T00:00:00Z".to_owned()), text()].boxed(),
            )),
        ),
    ])
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn any_www_authenticate_parses_to_usable_challenges(values in prop::collection::vec(text(), 0..3)) {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        for c in parse_www_authenticate(&values) {
            if let Challenge::Bearer { realm, service, scope } = c {
                prop_assert!(!realm.is_empty());
                prop_assert!(service.is_none_or(|s| !s.is_empty()));
                prop_assert!(scope.is_none_or(|s| !s.is_empty()));
            }
        }
    }

    #[test]
    fn well_formed_bearer_challenges_parse_back((header, realm, service, scope, basic_first) in bearer_header()) {
        let parsed = parse_www_authenticate(&[&header]);
        let bearer = Challenge::Bearer { realm, service: Some(service), scope: Some(scope) };
        let bearer_at = usize::from(basic_first);
        prop_assert_eq!(parsed.get(bearer_at), Some(&bearer), "{} parsed as {:?}", header, parsed);
        if basic_first {
            prop_assert_eq!(&parsed[0], &Challenge::Basic { realm: Some("basic".to_owned()) });
        }
    }

    #[test]
    fn token_responses_parse_to_a_lifetime_the_clock_can_hold(
        body in prop_oneof![
            3 => token_response_doc().prop_map(|d| serde_json::to_vec(&d).unwrap_or_default()),
            1 => damaged(token_response_doc()),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
    ) {
        match parse_token_response(&body) {
            Ok(token) => {
                prop_assert!(!token.token.is_empty());
                let lifetime = token.lifetime();
                prop_assert!(lifetime.as_secs() >= 60);
                // What the token cache does with it.
                prop_assert!(Instant::now().checked_add(lifetime).is_some(), "{:?}", lifetime);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker's config.json

/// Passwords start with this, so a test can tell whether an error quoted one.
const SECRET: &str = "SECRET-";

fn auth_entry() -> BoxedStrategy<Value> {
    let auth = prop_oneof![
        3 => ("[a-z:]{0,6}", "[a-z]{4,10}", any::<bool>()).prop_map(|(user, password, pad)| {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{SECRET}{password}"));
            Value::from(if pad { encoded } else { encoded.trim_end_matches('=').to_owned() })
        }),
        1 => "[A-Za-z0-9+/=\\s]{0,24}".prop_map(Value::from),
        1 => any::<Vec<u8>>().prop_map(|b| Value::from(base64::engine::general_purpose::STANDARD.encode(b))),
    ]
    .boxed();
    object(vec![
        ("auth", or_junk(auth)),
        ("username", or_junk(string_value(text()))),
        (
            "password",
            or_junk(string_value(
                "[a-z]{4,10}".prop_map(|p| format!("{SECRET}{p}")).boxed(),
            )),
        ),
        ("identitytoken", or_junk(string_value(text()))),
    ])
}

fn registry_key() -> BoxedStrategy<String> {
    prop_oneof![
        Just("https://index.docker.io/v1/".to_owned()),
        Just("docker.io".to_owned()),
        Just("registry.example:5000".to_owned()),
        Just("http://registry.example:5000/v2/".to_owned()),
        Just("HTTPS://Registry.Example:5000".to_owned()),
        text(),
    ]
    .boxed()
}

fn docker_config_doc() -> BoxedStrategy<Value> {
    let helper = || {
        or_junk(string_value(
            prop_oneof![Just("desktop".to_owned()), Just("../x".to_owned()), text()].boxed(),
        ))
    };
    object(vec![
        (
            "auths",
            or_junk(
                prop::collection::vec((registry_key(), or_junk(auth_entry())), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect()))
                    .boxed(),
            ),
        ),
        ("credsStore", helper()),
        (
            "credHelpers",
            or_junk(
                prop::collection::vec((registry_key(), helper()), 0..2)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect()))
                    .boxed(),
            ),
        ),
    ])
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn any_config_json_loads_and_looks_up_without_quoting_secrets(
        bytes in prop_oneof![
            4 => docker_config_doc().prop_map(|d| serde_json::to_vec(&d).unwrap_or_default()),
            1 => damaged(docker_config_doc()),
        ],
    ) {
        let dir = tempfile::tempdir().map_err(to_case_error("tempdir"))?;
        // Helpers are looked for in an empty directory: no program runs, whatever the file names.
        let helpers = dir.path().join("helpers");
        fs::create_dir(&helpers).map_err(to_case_error("mkdir"))?;
        fs::write(dir.path().join("config.json"), &bytes).map_err(to_case_error("write"))?;
        let config = match DockerConfig::load(dir.path()) {
            Ok(c) => c.with_helper_dir(&helpers),
            Err(e) => {
                prop_assert!(!e.to_string().contains(SECRET), "{}", e);
                return Ok(());
            }
        };
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut registries = vec!["docker.io".to_owned(), "registry.example:5000".to_owned()];
        if let Some(auths) = doc.get("auths").and_then(Value::as_object) {
            registries.extend(auths.keys().cloned());
        }
        for registry in &registries {
            match config.lookup(registry) {
                Ok(Some(Credential::Basic { username, .. })) => {
                    prop_assert!(!username.contains(SECRET), "a password read as the username");
                }
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().contains(SECRET), "{}", e),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer tars through the applier

/// Path pieces a hostile layer plays with: a few names (so entries meet each other), climbing,
/// empties, whiteouts and aufs names. Mostly names: a `..` too many fails the layer at once.
fn path_piece() -> BoxedStrategy<&'static str> {
    prop_oneof![
        16 => prop::sample::select(&["a", "b", "d", "l"][..]),
        1 => prop::sample::select(&["..", ".", ""][..]),
        3 => prop::sample::select(&[".wh.a", ".wh.b", ".wh..wh..opq", ".wh..wh.plnk"][..]),
        1 => prop::sample::select(&[".wh.", ".wh.."][..]),
    ]
    .boxed()
}

fn tar_path() -> BoxedStrategy<Vec<u8>> {
    (
        prop_oneof![12 => Just(""), 2 => Just("/"), 2 => Just("./"), 1 => Just("../")],
        prop::collection::vec(path_piece(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(prefix, parts, slash)| {
            let mut p = prefix.to_owned();
            p.push_str(&parts.join("/"));
            if slash {
                p.push('/');
            }
            p.into_bytes()
        })
        .boxed()
}

/// Link targets, `@OUT` and `@TMP` standing for the sandbox's absolute paths outside the root.
fn link_target() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => tar_path(),
        1 => prop::sample::select(&["@OUT", "@OUT/sentinel", "@OUT/dir", "@TMP", "../../outside", "../outside/sentinel", "../../../outside/dir", "/a", "a/../../..", "/", ".."][..])
            .prop_map(|t| t.as_bytes().to_vec()),
    ]
    .boxed()
}

fn raw_entry() -> BoxedStrategy<RawEntry> {
    let kind = prop_oneof![
        6 => prop::sample::select(vec![EntryType::Regular, EntryType::Directory, EntryType::Symlink, EntryType::Link]),
        1 => prop::sample::select(vec![EntryType::Fifo, EntryType::Char, EntryType::Continuous, EntryType::GNULongName, EntryType::new(b'Z')]),
    ];
    let pax = prop::option::weighted(
        0.15,
        (
            prop::sample::select(
                &[
                    "path",
                    "linkpath",
                    "mtime",
                    "size",
                    "SCHILY.xattr.user.x",
                    "SCHILY.xattr.security.capability",
                    "uid",
                ][..],
            ),
            prop_oneof![
                tar_path(),
                "[0-9.-]{0,12}".prop_map(String::into_bytes),
                any::<Vec<u8>>()
            ],
        ),
    );
    (
        tar_path(),
        kind,
        link_target(),
        prop::bool::weighted(0.1),
        0u32..0o10000,
        prop::collection::vec(any::<u8>(), 0..48),
        pax,
    )
        .prop_map(
            |(path, kind, target, stray_link, mode, data, pax)| RawEntry {
                path,
                kind,
                link_name: (matches!(kind, EntryType::Symlink | EntryType::Link) || stray_link)
                    .then_some(target),
                mode,
                uid: 0,
                gid: 0,
                data,
                pax: pax.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            },
        )
        .boxed()
}

/// A layer of hostile entries, then maybe a few bytes flipped or the tail cut off.
fn hostile_tar() -> BoxedStrategy<Vec<RawEntry>> {
    prop::collection::vec(raw_entry(), 1..8).boxed()
}

fn tar_bytes(entries: &[RawEntry], out: &Path, tmp: &Path) -> Vec<u8> {
    let fill = |bytes: &[u8]| -> Vec<u8> {
        let text = String::from_utf8_lossy(bytes)
            .replace("@OUT", &out.display().to_string())
            .replace("@TMP", &tmp.display().to_string());
        text.into_bytes()
    };
    let mut layer = LayerBuilder::new();
    for e in entries {
        let mut e = e.clone();
        e.path = fill(&e.path);
        e.link_name = e.link_name.as_deref().map(fill);
        layer = layer.raw_entry(e);
    }
    layer.finish_tar()
}

/// Rewrites the checksum of the 512-byte block at `start` as if it were a header (in a data block
/// that is just more damage).
fn refresh_checksum(tar: &mut [u8], start: usize) {
    let Some(block) = tar.get_mut(start..start + 512) else {
        return;
    };
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Everything in `dir` but `skip`: path, kind, mode, content or link target, mtime.
fn snapshot(base: &Path, dir: &Path, skip: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        out.push(format!("{}: unreadable", dir.display()));
        return;
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(name);
        if path == skip {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .display()
            .to_string();
        let detail = if meta.is_file() {
            format!("{:?}", fs::read(&path).ok())
        } else if meta.file_type().is_symlink() {
            format!("{:?}", fs::read_link(&path).ok())
        } else {
            String::new()
        };
        out.push(format!(
            "{rel} {:o} {} {}.{} {detail}",
            meta.permissions().mode(),
            meta.nlink(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        if meta.is_dir() {
            snapshot(base, &path, skip, out);
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn hostile_tars_never_reach_outside_the_root(
        layers in prop::collection::vec(hostile_tar(), 1..3),
        flips in prop::option::weighted(0.25, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3)),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
        for_cache in prop::bool::weighted(0.3),
    ) {
        let tmp = tempfile::tempdir().map_err(to_case_error("tempdir"))?;
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("dir")).map_err(to_case_error("mkdir"))?;
        fs::write(outside.join("sentinel"), b"do not touch").map_err(to_case_error("write"))?;
        fs::write(outside.join("dir/inner"), b"inner").map_err(to_case_error("write"))?;
        // The root sits two levels down, so climbing out lands inside the sandbox first.
        let root = tmp.path().join("nest/deeper/root");
        fs::create_dir_all(&root).map_err(to_case_error("mkdir"))?;
        let mut before = Vec::new();
        snapshot(tmp.path(), tmp.path(), &root, &mut before);

        let opts = ApplyOptions { preserve_ownership: false, allow_devices: false, xattrs: true };
        for (i, entries) in layers.iter().enumerate() {
            let mut tar = tar_bytes(entries, &outside, tmp.path());
            if i == 0 {
                for (at, byte) in flips.iter().flatten() {
                    let at = at.index(tar.len());
                    tar[at] ^= byte;
                    // Else nearly every flip only trips the checksum; this way header fields
                    // (sizes, types, names, octal numbers) get the damage.
                    refresh_checksum(&mut tar, at / 512 * 512);
                }
                if let Some(cut) = &cut {
                    tar.truncate(cut.index(tar.len()));
                }
            }
            let result = if for_cache && i == 0 {
                apply_layer_for_cache(&root, Cursor::new(tar), &opts)
            } else {
                apply_layer(&root, Cursor::new(tar), &opts)
            };
            match result {
                Ok(stats) => {
                    for w in &stats.warnings {
                        let _ = w.len();
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                    break;
                }
            }
        }

        let mut after = Vec::new();
        snapshot(tmp.path(), tmp.path(), &root, &mut after);
        prop_assert_eq!(after, before, "something outside the root changed");
        prop_assert!(fs::symlink_metadata(&root).map(|m| m.is_dir()).unwrap_or(false), "the root is still a directory");
    }
}

// ---------------------------------------------------------------------------------------------
// Archive manifest.json (and index.json) through `load`

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Small blobs for an archive, stored under their digests: an image config first, then layers
/// (any bytes) or manifests.
fn archive_blobs() -> BoxedStrategy<Vec<Vec<u8>>> {
    (
        prop_oneof![
            3 => Just(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()),
            1 => manifest_doc().prop_map(|d| serde_json::to_vec(&d).unwrap_or_default()),
        ],
        prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(any::<u8>(), 0..32),
                1 => manifest_doc().prop_map(|d| serde_json::to_vec(&d).unwrap_or_default()),
            ],
            0..3,
        ),
    )
        .prop_map(|(config, mut rest)| {
            rest.insert(0, config);
            rest
        })
        .boxed()
}

fn blob_path(data: &[u8]) -> String {
    format!(
        "blobs/sha256/{}",
        haul::digest::Digest::sha256_of(data).hex()
    )
}

/// `manifest.json` entries naming the archive's blobs (or not), with tags of every kind.
fn manifest_json(blobs: Vec<Vec<u8>>) -> BoxedStrategy<(Vec<Vec<u8>>, Value)> {
    let paths: Vec<String> = blobs.iter().map(|b| blob_path(b)).collect();
    let config_path = paths[0].clone();
    let path = {
        let paths = paths.clone();
        prop_oneof![
            10 => prop::sample::Index::arbitrary().prop_map(move |i| paths[i.index(paths.len())].clone()),
            1 => prop::sample::select(&["../../etc/passwd", "/abs/blobs/sha256/00", "blobs/sha256/../../x", "blobs/md5/00", "", "layer.tar"][..]).prop_map(str::to_owned),
            1 => text(),
        ]
        .boxed()
    };
    let tag = prop_oneof![
        4 => reference_text(),
        1 => text(),
        1 => Just("alpine:latest".to_owned()),
    ]
    .boxed();
    let well_formed = (
        prop::collection::vec(tag.clone(), 0..3),
        prop::collection::vec(path.clone(), 0..3),
    )
        .prop_map(move |(tags, layers)| json!({"Config": config_path, "RepoTags": tags, "Layers": layers}))
        .boxed();
    let junky = object(vec![
        ("Config", or_junk(string_value(path.clone()))),
        (
            "RepoTags",
            or_junk(
                prop::collection::vec(string_value(tag), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
        (
            "Layers",
            or_junk(
                prop::collection::vec(string_value(path), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ]);
    let entry = prop_oneof![3 => well_formed, 1 => junky].boxed();
    (
        Just(blobs),
        or_junk(
            prop::collection::vec(or_junk(entry), 1..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
    )
        .boxed()
}

fn archive_tar(blobs: &[Vec<u8>], manifest: Option<&[u8]>, index: Option<&[u8]>) -> Vec<u8> {
    let mut layer = LayerBuilder::new();
    for blob in blobs {
        layer = layer.raw_entry(RawEntry::file(&blob_path(blob), blob));
    }
    if let Some(m) = manifest {
        layer = layer.raw_entry(RawEntry::file("manifest.json", m));
    }
    if let Some(i) = index {
        layer = layer.raw_entry(RawEntry::file("index.json", i));
    }
    layer.finish_tar()
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn any_archive_manifest_json_loads_or_fails_cleanly(
        (blobs, manifest) in archive_blobs().prop_flat_map(manifest_json),
        index in prop::option::weighted(0.3, manifest_doc()),
        raw in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..64)),
    ) {
        let tmp = tempfile::tempdir().map_err(to_case_error("tempdir"))?;
        let store = Store::open(tmp.path().join("store")).map_err(to_case_error("store"))?;
        let manifest_bytes = raw.unwrap_or_else(|| serde_json::to_vec(&manifest).unwrap_or_default());
        let index_bytes = index.map(|i| serde_json::to_vec(&i).unwrap_or_default());
        let tar = archive_tar(&blobs, Some(&manifest_bytes), index_bytes.as_deref());
        let result = runtime().block_on(archive::load(&store, Cursor::new(tar)));
        match result {
            Ok(images) => {
                for image in images {
                    for name in &image.names {
                        check_reference(name)?;
                        prop_assert!(name.digest().is_none());
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let mut outside = Vec::new();
        snapshot(tmp.path(), tmp.path(), &tmp.path().join("store"), &mut outside);
        prop_assert!(outside.is_empty(), "load wrote outside the store: {:?}", outside);
    }
}

#[test]
fn the_generators_make_what_they_claim() {
    // The properties above are only as good as their inputs: a well-formed challenge parses, a
    // grammar reference parses, a tar of plain entries applies.
    let header = "Bearer realm=\"https://auth.example/token\",service=registry.example,scope=\"repository:a/b:pull\"";
    assert_eq!(
        parse_www_authenticate(&[header]),
        vec![Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: Some("registry.example".into()),
            scope: Some("repository:a/b:pull".into()),
        }]
    );
    let tmp = tempfile::tempdir().unwrap();
    let tar = tar_bytes(&[RawEntry::file("a", b"x")], tmp.path(), tmp.path());
    let opts = ApplyOptions {
        preserve_ownership: false,
        allow_devices: false,
        xattrs: true,
    };
    apply_layer(tmp.path(), Cursor::new(tar), &opts).unwrap();
    assert_eq!(fs::read(tmp.path().join("a")).unwrap(), b"x");
}
