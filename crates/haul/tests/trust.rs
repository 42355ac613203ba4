//! Content trust against real things: cosign signatures (tag scheme) pushed into the real registry
//! 2.8, Notation signatures found through its tag-schema fallback, and the referrers API on the
//! test crate's referrers-capable registry. Signatures here are made by the test itself with
//! aws-lc-rs, rcgen and coset (not by haul's signing code), so a mistake in haul cannot cancel out.
//! Each forgery below is refused; each test fails if the check that refuses it is removed.

mod common;

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use base64::Engine;
use common::{fast_client, file_layer, image_of};
use haul::config::Config;
use haul::digest::Digest;
use haul::progress::{Event, Recorder, Silent};
use haul::pull::{PullError, PullOptions, Puller};
use haul::reference::Reference;
use haul::registry::{Anonymous, Pusher as HaulPusher, StaticCredentials};
use haul::store::Store;
use haul::trust::{
    Keyring, PrivateKey, SignatureFailure, Signer, Source, TrustConfig, TrustError, TrustVerifier,
};
use serde_json::json;
use test_registry::{Blob, Image, Pusher, RealRegistry, ReferrersRegistry, RegistryOptions};

const NOTARY: &str = "application/vnd.cncf.notary.signature";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

// ---------------------------------------------------------------- keys and signatures (test-made)

struct TestKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl TestKey {
    fn new() -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                .unwrap();
        TestKey {
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }

    fn public_pem(&self) -> String {
        let der: aws_lc_rs::encoding::PublicKeyX509Der = self.pair.public_key().as_der().unwrap();
        pem::encode(&pem::Pem::new("PUBLIC KEY", der.as_ref().to_vec()))
    }

    fn sign_b64(&self, msg: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), msg).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

fn cosign_payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// A cosign signature manifest with one simple-signing layer per (payload, signature).
fn cosign_manifest(layers: &[(Vec<u8>, String)], subject: Option<&Blob>) -> (Vec<Blob>, Blob) {
    let blobs: Vec<Blob> = layers
        .iter()
        .map(|(p, _)| {
            Blob::new(
                "application/vnd.dev.cosign.simplesigning.v1+json",
                p.clone(),
            )
        })
        .collect();
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&json!({"architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": blobs.iter().map(|b| b.digest.clone()).collect::<Vec<_>>()}}))
        .unwrap(),
    );
    let layer_descs: Vec<_> = blobs
        .iter()
        .zip(layers)
        .map(|(b, (_, sig))| {
            let mut d = b.descriptor();
            d["annotations"] = json!({"dev.cosignproject.cosign/signature": sig});
            d
        })
        .collect();
    let mut doc = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": layer_descs,
    });
    if let Some(s) = subject {
        doc["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
        doc["subject"] = s.descriptor();
    }
    let manifest = Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&doc).unwrap(),
    );
    let mut all = blobs;
    all.push(config);
    (all, manifest)
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

async fn push_cosign(
    registry: &RealRegistry,
    repo: &str,
    target: &str,
    layers: &[(Vec<u8>, String)],
) {
    let pusher = Pusher::new(&registry.url());
    let (blobs, manifest) = cosign_manifest(layers, None);
    for b in &blobs {
        pusher.push_blob(repo, b).await.unwrap();
    }
    pusher
        .push_manifest(repo, &sig_tag(target), &manifest)
        .await
        .unwrap();
}

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A leaf certificate for a fresh P-256 key, signed by `ca`, with its key for fixed-size
/// (JOSE/COSE) ECDSA signatures.
fn leaf(ca: &Ca, name: &str, expired: bool) -> (Vec<u8>, EcdsaKeyPair) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .unwrap();
    (cert.der().to_vec(), pair)
}

fn notation_payload(digest: &str, size: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"targetArtifact": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": size,
    }}))
    .unwrap()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jws(cert: &[u8], key: &EcdsaKeyPair, payload: &[u8]) -> Vec<u8> {
    let protected = json!({
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": "2026-11-28T00:00:00Z",
    });
    let protected = b64url(&serde_json::to_vec(&protected).unwrap());
    let payload = b64url(payload);
    let sig = key
        .sign(
            &SystemRandom::new(),
            format!("{protected}.{payload}").as_bytes(),
        )
        .unwrap();
    serde_json::to_vec(&json!({
        "payload": payload,
        "protected": protected,
        "header": {
            "x5c": [base64::engine::general_purpose::STANDARD.encode(cert)],
            "io.cncf.notary.signingAgent": "haul-test",
        },
        "signature": b64url(sig.as_ref()),
    }))
    .unwrap()
}

fn cose(cert: &[u8], key: &EcdsaKeyPair, payload: &[u8]) -> Vec<u8> {
    use coset::{CborSerializable as _, TaggedCborSerializable as _, iana};
    let protected = coset::HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .add_critical_label(coset::RegisteredLabelWithPrivate::Text(
            "io.cncf.notary.signingScheme".to_owned(),
        ))
        .content_type("application/vnd.cncf.notary.payload.v1+json".to_owned())
        .text_value(
            "io.cncf.notary.signingScheme".to_owned(),
            coset::cbor::Value::Text("notary.x509".to_owned()),
        )
        .text_value(
            "io.cncf.notary.signingTime".to_owned(),
            coset::cbor::Value::Tag(
                1,
                Box::new(coset::cbor::Value::Integer(1_790_000_000.into())),
            ),
        )
        .build();
    let unprotected = coset::HeaderBuilder::new()
        .value(
            iana::HeaderParameter::X5Chain as i64,
            coset::cbor::Value::Array(vec![coset::cbor::Value::Bytes(cert.to_vec())]),
        )
        .build();
    let sign1 = coset::CoseSign1Builder::new()
        .protected(protected)
        .unprotected(unprotected)
        .payload(payload.to_vec())
        .create_signature(b"", |tbs| {
            key.sign(&SystemRandom::new(), tbs)
                .unwrap()
                .as_ref()
                .to_vec()
        })
        .build();
    let _ = sign1.clone().to_vec();
    sign1.to_tagged_vec().unwrap()
}

/// A Notation signature manifest whose subject is `target` and whose layer is `envelope`.
fn notation_manifest(target: &Blob, envelope: Blob) -> (Vec<Blob>, Blob) {
    let config = Blob::new(EMPTY_CONFIG, b"{}".to_vec());
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": NOTARY,
        "config": config.descriptor(),
        "layers": [envelope.descriptor()],
        "subject": target.descriptor(),
        "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
    });
    let manifest = Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&doc).unwrap(),
    );
    (vec![config, envelope], manifest)
}

// ---------------------------------------------------------------- haul side

struct Trust {
    _dir: tempfile::TempDir,
    keyring: Keyring,
}

impl Trust {
    fn new() -> Trust {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::new(dir.path().join("trust"));
        Trust { _dir: dir, keyring }
    }

    fn verifier(&self, config: TrustConfig) -> TrustVerifier {
        TrustVerifier::new(
            fast_client(Config::default(), Arc::new(Anonymous)),
            self.keyring.clone(),
            config,
        )
    }

    async fn verify(&self, image: &str) -> Result<haul::trust::Verdict, TrustError> {
        self.verifier(TrustConfig::default())
            .verify(&image.parse().unwrap())
            .await
    }
}

fn only_reason(err: &TrustError) -> SignatureFailure {
    let reasons = err.reasons();
    assert_eq!(reasons.len(), 1, "{err}");
    reasons[0].clone()
}

fn test_image(seed: &str) -> Image {
    image_of(vec![file_layer("f", seed.as_bytes())])
}

async fn real_with(repo: &str, tag: &str, image: &Image) -> RealRegistry {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    Pusher::new(&registry.url())
        .push_image(repo, tag, image)
        .await
        .unwrap();
    registry
}

// ---------------------------------------------------------------- cosign, tag scheme, real registry

#[tokio::test]
async fn cosign_signature_by_trusted_key_is_accepted_and_the_digest_is_pulled_under_the_tag() {
    let image = test_image("signed");
    let registry = real_with("team/app", "1.0", &image).await;
    let alice = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, image.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", image.digest(), &[(payload, sig)]).await;

    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let verdict = trust.verify(&format!("{name}:1.0")).await.unwrap();
    assert_eq!(verdict.digest.to_string(), image.digest());
    assert!(verdict.warning.is_none());
    assert!(
        matches!(&verdict.signers[..], [Signer::Key { name, .. }] if name == "alice"),
        "{:?}",
        verdict.signers
    );

    let harness = common::harness();
    let reference: Reference = format!("{name}:1.0").parse().unwrap();
    let outcome = harness
        .puller
        .pull_pinned(&reference, &verdict.digest, Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!(outcome.resolved.to_string(), image.digest());
    let stored = harness
        .store
        .find_ref(&reference.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(stored.resolved.to_string(), image.digest());

    let inspection = trust
        .verifier(TrustConfig::default())
        .inspect(&reference)
        .await
        .unwrap();
    assert_eq!(inspection.signatures.len(), 1);
    assert_eq!(inspection.signatures[0].source, Source::CosignTag);
}

#[tokio::test]
async fn unsigned_image_is_refused_naming_image_and_digest() {
    let image = test_image("unsigned");
    let registry = real_with("team/app", "1.0", &image).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", TestKey::new().public_pem().as_bytes())
        .unwrap();
    let err = trust
        .verify(&format!("{}/team/app:1.0", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::NoSignature { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("team/app:1.0") && text.contains(image.digest()),
        "{text}"
    );
    assert!(text.contains("no signature found"), "{text}");
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let image = test_image("tampered");
    let registry = real_with("team/app", "1.0", &image).await;
    let alice = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, image.digest());
    let sig = alice.sign_b64(&payload);
    // Same claims, different bytes: only the signature check can notice.
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace(r#""optional":null"#, r#""optional":{"note":"changed"}"#)
        .into_bytes();
    push_cosign(&registry, "team/app", image.digest(), &[(tampered, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let err = trust.verify(&format!("{name}:1.0")).await.unwrap_err();
    assert_eq!(only_reason(&err), SignatureFailure::UntrustedKey, "{err}");
}

#[tokio::test]
async fn signature_of_another_digest_is_refused() {
    // A genuine signature by the trusted key, for image A, stored as image B's signature.
    let a = test_image("a");
    let b = test_image("b");
    let registry = real_with("team/app", "a", &a).await;
    Pusher::new(&registry.url())
        .push_image("team/app", "b", &b)
        .await
        .unwrap();
    let alice = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, a.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", b.digest(), &[(payload, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let err = trust.verify(&format!("{name}:b")).await.unwrap_err();
    assert_eq!(
        only_reason(&err),
        SignatureFailure::DigestMismatch {
            signed: a.digest().to_owned()
        },
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("signature does not match this digest"),
        "{err}"
    );
}

#[tokio::test]
async fn signature_for_another_repository_is_refused() {
    let image = test_image("identity");
    let registry = real_with("team/app", "1.0", &image).await;
    let alice = TestKey::new();
    let other = format!("{}/team/other", registry.host());
    let payload = cosign_payload(&other, image.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", image.digest(), &[(payload, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let err = trust
        .verify(&format!("{}/team/app:1.0", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(only_reason(&err), SignatureFailure::WrongIdentity { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn signature_by_an_untrusted_key_is_refused() {
    let image = test_image("wrong key");
    let registry = real_with("team/app", "1.0", &image).await;
    let mallory = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, image.digest());
    let sig = mallory.sign_b64(&payload);
    push_cosign(&registry, "team/app", image.digest(), &[(payload, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", TestKey::new().public_pem().as_bytes())
        .unwrap();
    let err = trust.verify(&format!("{name}:1.0")).await.unwrap_err();
    assert_eq!(only_reason(&err), SignatureFailure::UntrustedKey, "{err}");
    assert!(
        err.to_string().contains("signed by an untrusted key"),
        "{err}"
    );
}

#[tokio::test]
async fn moved_tag_is_refused_when_the_new_digest_is_unsigned() {
    let v1 = test_image("v1");
    let v2 = test_image("v2");
    let registry = real_with("team/app", "stable", &v1).await;
    let alice = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, v1.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", v1.digest(), &[(payload, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    assert!(trust.verify(&format!("{name}:stable")).await.is_ok());
    // Someone moves the tag to an image nobody signed.
    Pusher::new(&registry.url())
        .push_image("team/app", "stable", &v2)
        .await
        .unwrap();
    let err = trust.verify(&format!("{name}:stable")).await.unwrap_err();
    assert!(
        matches!(err, TrustError::NoSignature { ref digest, .. } if digest.to_string() == v2.digest()),
        "{err}"
    );
}

#[tokio::test]
async fn policy_decides_unsigned_and_which_keys_count() {
    let image = test_image("policy");
    let registry = real_with("team/app", "1.0", &image).await;
    let alice = TestKey::new();
    let bob = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, image.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", image.digest(), &[(payload, sig)]).await;
    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    trust
        .keyring
        .add_key("bob", bob.public_pem().as_bytes())
        .unwrap();
    let reference: Reference = format!("{name}:1.0").parse().unwrap();
    let policy = |v: serde_json::Value| TrustConfig::parse(&json!({"policy": v})).unwrap();

    // Only bob's key counts for this repository: alice's valid signature is not enough.
    let err = trust
        .verifier(policy(json!({ name.clone(): {"keys": ["bob"]} })))
        .verify(&reference)
        .await
        .unwrap_err();
    assert!(
        matches!(only_reason(&err), SignatureFailure::NotAccepted { .. }),
        "{err}"
    );
    // Both must have signed.
    let err = trust
        .verifier(policy(
            json!({ registry.host(): {"keys": ["alice", "bob"], "require": "all"} }),
        ))
        .verify(&reference)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TrustError::MissingSigners { ref missing, .. } if missing == "bob"),
        "{err}"
    );
    // Alice is accepted.
    let ok = trust
        .verifier(policy(json!({ name.clone(): {"keys": ["alice"]} })))
        .verify(&reference)
        .await
        .unwrap();
    assert_eq!(ok.signers.len(), 1);
    // A policy naming a key the keyring lacks is a configuration error, not "unsigned".
    let err = trust
        .verifier(policy(json!({ "*": {"keys": ["carol"]} })))
        .verify(&reference)
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::Key(_)), "{err}");

    // Unsigned images: warn lets the pull go on with a warning, allow silently, refuse refuses.
    let unsigned = test_image("unsigned policy");
    Pusher::new(&registry.url())
        .push_image("other/app", "1", &unsigned)
        .await
        .unwrap();
    let unsigned_ref: Reference = format!("{}/other/app:1", registry.host()).parse().unwrap();
    let warned = trust
        .verifier(policy(json!({ "*": {"unsigned": "warn"} })))
        .verify(&unsigned_ref)
        .await
        .unwrap();
    assert!(matches!(
        warned.warning,
        Some(TrustError::NoSignature { .. })
    ));
    assert_eq!(warned.digest.to_string(), unsigned.digest());
    let allowed = trust
        .verifier(policy(
            json!({ format!("{}/other", registry.host()): {"unsigned": "allow"}, "*": {} }),
        ))
        .verify(&unsigned_ref)
        .await
        .unwrap();
    assert!(allowed.warning.is_none() && allowed.signers.is_empty());
    assert!(
        trust
            .verifier(policy(json!({ "*": {"unsigned": "refuse"} })))
            .verify(&unsigned_ref)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn haul_signs_images_cosign_compatibly_through_an_authenticated_registry() {
    let image = test_image("to sign");
    let registry = RealRegistry::start(RegistryOptions {
        htpasswd: vec![("ci".to_owned(), "s3cret".to_owned())],
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    Pusher::new(&registry.url())
        .basic("ci", "s3cret")
        .push_image("team/app", "1.0", &image)
        .await
        .unwrap();
    let mut creds = StaticCredentials::default();
    creds.0.insert(
        registry.host(),
        haul::registry::Credential::Basic {
            username: "ci".to_owned(),
            password: "s3cret".to_owned(),
        },
    );
    let creds: Arc<dyn haul::registry::CredentialStore> = Arc::new(creds);
    let client = fast_client(Config::default(), creds.clone());
    let pusher = HaulPusher::new(client.clone(), creds.clone());
    let reference: Reference = format!("{}/team/app:1.0", registry.host()).parse().unwrap();

    let alice = TestKey::new();
    let alice_key = PrivateKey::from_pkcs8(&alice.pkcs8, "alice").unwrap();
    let outcome = haul::trust::sign_image(&client, &pusher, &reference, &alice_key)
        .await
        .unwrap();
    assert_eq!(outcome.digest.to_string(), image.digest());
    assert_eq!(outcome.tag, sig_tag(image.digest()));

    // Checked independently of haul: the manifest under the .sig tag has a layer whose payload
    // names the digest and whose signature verifies with alice's public key.
    let http = test_registry::http_client().unwrap();
    let get = |path: String| {
        http.get(format!("{}/v2/team/app/{path}", registry.url()))
            .basic_auth("ci", Some("s3cret"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        &get(format!("manifests/{}", outcome.tag))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = get(format!("blobs/{}", layer["digest"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        image.digest()
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    let sig = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        alice.pair.public_key().as_ref(),
    )
    .verify(&payload, &sig)
    .unwrap();

    // A second signer is added next to the first; signing again with alice replaces hers.
    let bob = TestKey::new();
    let bob_key = PrivateKey::from_pkcs8(&bob.pkcs8, "bob").unwrap();
    let second = haul::trust::sign_image(&client, &pusher, &reference, &bob_key)
        .await
        .unwrap();
    assert_eq!(second.signatures, 2);
    let again = haul::trust::sign_image(&client, &pusher, &reference, &alice_key)
        .await
        .unwrap();
    assert_eq!(again.signatures, 2);

    let trust = Trust::new();
    trust
        .keyring
        .add_key("bob", bob.public_pem().as_bytes())
        .unwrap();
    let verdict = TrustVerifier::new(client, trust.keyring.clone(), TrustConfig::default())
        .verify(&reference)
        .await
        .unwrap();
    assert!(matches!(&verdict.signers[..], [Signer::Key { name, .. }] if name == "bob"));
}

#[tokio::test]
async fn encrypted_cosign_keys_are_read_with_their_password() {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let alice = TestKey::new();
    let salt = [7u8; 32];
    let nonce = [9u8; 24];
    let mut key = [0u8; 32];
    scrypt::scrypt(
        b"pw",
        &salt,
        &scrypt::Params::new(10, 8, 1, 32).unwrap(),
        &mut key,
    )
    .unwrap();
    let ciphertext = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
        .encrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            alice.pkcs8.as_slice(),
        )
        .unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let doc = json!({
        "kdf": {"name": "scrypt", "params": {"N": 1024, "r": 8, "p": 1}, "salt": b64(&salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
        "ciphertext": b64(&ciphertext),
    });
    let file = pem::encode(&pem::Pem::new(
        "ENCRYPTED SIGSTORE PRIVATE KEY",
        serde_json::to_vec(&doc).unwrap(),
    ));
    let key = PrivateKey::from_pem(file.as_bytes(), Some(b"pw"), "cosign.key").unwrap();
    assert_eq!(key.public_key().to_pem(), alice.public_pem());
    assert!(matches!(
        PrivateKey::from_pem(file.as_bytes(), Some(b"wrong"), "cosign.key"),
        Err(haul::trust::KeyError::Decrypt { .. })
    ));
    assert!(matches!(
        PrivateKey::from_pem(file.as_bytes(), None, "cosign.key"),
        Err(haul::trust::KeyError::PasswordNeeded { .. })
    ));
}

// ---------------------------------------------------------------- Notation

async fn referrers_with(image: &Image) -> ReferrersRegistry {
    let registry = ReferrersRegistry::start().await.unwrap();
    registry.add_image("team/app", "1.0", image);
    registry
}

fn push_notation(registry: &ReferrersRegistry, image: &Image, envelope: Blob) -> String {
    let (blobs, manifest) = notation_manifest(&image.manifest, envelope);
    for b in &blobs {
        registry.add_blob("team/app", b);
    }
    registry.add_manifest("team/app", None, &manifest)
}

#[tokio::test]
async fn notation_jws_and_cose_signatures_are_found_through_the_referrers_api() {
    let image = test_image("notation");
    let registry = referrers_with(&image).await;
    let root = ca("Test Root");
    let (cert, key) = leaf(&root, "signer.example", false);
    let payload = notation_payload(image.digest(), image.manifest.size);
    push_notation(
        &registry,
        &image,
        Blob::new("application/jose+json", jws(&cert, &key, &payload)),
    );
    push_notation(
        &registry,
        &image,
        Blob::new("application/cose", cose(&cert, &key, &payload)),
    );

    let trust = Trust::new();
    trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
    let reference: Reference = format!("{}/team/app:1.0", registry.host()).parse().unwrap();
    let inspection = trust
        .verifier(TrustConfig::default())
        .inspect(&reference)
        .await
        .unwrap();
    assert_eq!(inspection.signatures.len(), 2, "{inspection:?}");
    for s in &inspection.signatures {
        assert_eq!(s.source, Source::Referrers);
        assert!(
            matches!(&s.result, Ok(Signer::Certificate { subject, root, .. }) if subject.contains("signer.example") && root == "corp"),
            "{s:?}"
        );
    }
    assert!(registry.count("GET", "/referrers/") >= 1);
    let policy = TrustConfig::parse(&json!({"policy": {"*": {"roots": ["corp"]}}})).unwrap();
    let verdict = trust.verifier(policy).verify(&reference).await.unwrap();
    assert_eq!(verdict.digest.to_string(), image.digest());
}

#[tokio::test]
async fn notation_signature_for_another_digest_is_refused() {
    let image = test_image("notation forgeries");
    let other = test_image("another image");
    let registry = referrers_with(&image).await;
    let root = ca("Test Root");
    let (cert, key) = leaf(&root, "signer.example", false);
    let trust = Trust::new();
    trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
    let reference: Reference = format!("{}/team/app:1.0", registry.host()).parse().unwrap();
    let verify = || async { trust.verify(&reference.to_string()).await.unwrap_err() };

    // Signed for another digest.
    let wrong = notation_payload(other.digest(), other.manifest.size);
    push_notation(
        &registry,
        &image,
        Blob::new("application/jose+json", jws(&cert, &key, &wrong)),
    );
    let err = verify().await;
    assert!(
        matches!(only_reason(&err), SignatureFailure::DigestMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("signature does not match this digest"),
        "{err}"
    );
}

#[tokio::test]
async fn notation_tampered_payload_is_refused() {
    let image = test_image("notation tampered");
    let registry = referrers_with(&image).await;
    let root = ca("Test Root");
    let (cert, key) = leaf(&root, "signer.example", false);
    let good = notation_payload(image.digest(), image.manifest.size);
    // Sign one payload, then swap in another: the JWS signature no longer covers it.
    let signed = jws(
        &cert,
        &key,
        &notation_payload(&Digest::sha256_of(b"x").to_string(), 1),
    );
    let mut env: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    env["payload"] = json!(b64url(&good));
    push_notation(
        &registry,
        &image,
        Blob::new("application/jose+json", serde_json::to_vec(&env).unwrap()),
    );
    let trust = Trust::new();
    trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
    let err = trust
        .verify(&format!("{}/team/app:1.0", registry.host()))
        .await
        .unwrap_err();
    assert_eq!(only_reason(&err), SignatureFailure::BadSignature, "{err}");
}

#[tokio::test]
async fn notation_certificates_expired_untrusted_or_malformed_are_refused() {
    let root = ca("Test Root");
    let stranger = ca("Someone Else");
    type MakeEnvelope<'a> = Box<dyn Fn(&Image) -> Blob + 'a>;
    type Case<'a> = (&'a str, MakeEnvelope<'a>, fn(&SignatureFailure) -> bool);
    let cases: Vec<Case> = vec![
        (
            "expired",
            Box::new(|img: &Image| {
                let (cert, key) = leaf(&root, "old.example", true);
                Blob::new(
                    "application/jose+json",
                    jws(
                        &cert,
                        &key,
                        &notation_payload(img.digest(), img.manifest.size),
                    ),
                )
            }),
            |f| matches!(f, SignatureFailure::CertificateExpired { .. }),
        ),
        (
            "untrusted root",
            Box::new(|img: &Image| {
                let (cert, key) = leaf(&stranger, "stranger.example", false);
                Blob::new(
                    "application/cose",
                    cose(
                        &cert,
                        &key,
                        &notation_payload(img.digest(), img.manifest.size),
                    ),
                )
            }),
            |f| matches!(f, SignatureFailure::UntrustedCertificate { .. }),
        ),
        (
            "malformed",
            Box::new(|img: &Image| {
                let (_, key) = leaf(&root, "x.example", false);
                Blob::new(
                    "application/jose+json",
                    jws(
                        b"not a certificate",
                        &key,
                        &notation_payload(img.digest(), img.manifest.size),
                    ),
                )
            }),
            |f| matches!(f, SignatureFailure::MalformedCertificate { .. }),
        ),
    ];
    for (what, envelope, expected) in cases {
        let image = test_image(what);
        let registry = referrers_with(&image).await;
        push_notation(&registry, &image, envelope(&image));
        let trust = Trust::new();
        trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
        let err = trust
            .verify(&format!("{}/team/app:1.0", registry.host()))
            .await
            .unwrap_err();
        let reason = only_reason(&err);
        assert!(expected(&reason), "{what}: {err}");
        assert!(err.to_string().contains(image.digest()), "{err}");
    }
}

#[tokio::test]
async fn notation_signature_found_through_the_tag_schema_on_the_real_registry() {
    // Registry 2.8 has no referrers API: the signature is listed in the index tagged
    // sha256-<hex>, as the distribution spec's fallback says.
    let image = test_image("fallback");
    let registry = real_with("team/app", "1.0", &image).await;
    let root = ca("Test Root");
    let (cert, key) = leaf(&root, "signer.example", false);
    let envelope = Blob::new(
        "application/jose+json",
        jws(
            &cert,
            &key,
            &notation_payload(image.digest(), image.manifest.size),
        ),
    );
    let (blobs, manifest) = notation_manifest(&image.manifest, envelope);
    let pusher = Pusher::new(&registry.url());
    for b in &blobs {
        pusher.push_blob("team/app", b).await.unwrap();
    }
    pusher
        .push_manifest("team/app", &manifest.digest.clone(), &manifest)
        .await
        .unwrap();
    let mut entry = manifest.descriptor();
    entry["artifactType"] = json!(NOTARY);
    let index = Blob::new(
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        }))
        .unwrap(),
    );
    pusher
        .push_manifest("team/app", &image.digest().replace(':', "-"), &index)
        .await
        .unwrap();

    let trust = Trust::new();
    trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
    let verdict = trust
        .verify(&format!("{}/team/app:1.0", registry.host()))
        .await
        .unwrap();
    assert!(matches!(&verdict.signers[..], [Signer::Certificate { .. }]));
    let inspection = trust
        .verifier(TrustConfig::default())
        .inspect(&format!("{}/team/app:1.0", registry.host()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(inspection.signatures[0].source, Source::ReferrersTag);
}

#[tokio::test]
async fn cosign_referrer_artifacts_are_verified_and_the_pull_gets_the_checked_digest_when_the_tag_moves()
 {
    let v1 = test_image("race v1");
    let v2 = test_image("race v2");
    let registry = referrers_with(&v1).await;
    registry.add_image("team/app", "other", &v2);
    let alice = TestKey::new();
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, v1.digest());
    let sig = alice.sign_b64(&payload);
    let (blobs, manifest) = cosign_manifest(&[(payload, sig)], Some(&v1.manifest));
    for b in &blobs {
        registry.add_blob("team/app", b);
    }
    registry.add_manifest("team/app", None, &manifest);

    let trust = Trust::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let reference: Reference = format!("{name}:1.0").parse().unwrap();
    // The tag moves to v2 (unsigned) right after the check resolves it.
    registry.move_tag_after_next_resolve("team/app", "1.0", v2.digest());
    let verdict = trust.verify(&reference.to_string()).await.unwrap();
    assert_eq!(verdict.digest.to_string(), v1.digest());
    let harness = common::harness();
    let outcome = harness
        .puller
        .pull_pinned(&reference, &verdict.digest, Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!(outcome.manifest.to_string(), v1.digest());
    let stored = harness
        .store
        .find_ref(&reference.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(stored.resolved.to_string(), v1.digest());
    assert!(
        !harness.has(&v2.layers[0].blob.digest),
        "v2's layer must not be fetched"
    );
    // And now that the tag points at v2, trust refuses it.
    let err = trust.verify(&reference.to_string()).await.unwrap_err();
    assert!(matches!(err, TrustError::NoSignature { .. }), "{err}");
}

#[tokio::test]
async fn referrers_api_off_falls_back_to_the_tag_schema() {
    let image = test_image("api off");
    let registry = referrers_with(&image).await;
    registry.set_referrers_api(false);
    let root = ca("Test Root");
    let (cert, key) = leaf(&root, "signer.example", false);
    let envelope = Blob::new(
        "application/cose",
        cose(
            &cert,
            &key,
            &notation_payload(image.digest(), image.manifest.size),
        ),
    );
    let (blobs, manifest) = notation_manifest(&image.manifest, envelope);
    for b in &blobs {
        registry.add_blob("team/app", b);
    }
    registry.add_manifest("team/app", None, &manifest);
    let trust = Trust::new();
    trust.keyring.add_root("corp", root.pem.as_bytes()).unwrap();
    // Without the API and without a fallback index, the signature is not found.
    let err = trust
        .verify(&format!("{}/team/app:1.0", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::NoSignature { .. }), "{err}");
    let mut entry = manifest.descriptor();
    entry["artifactType"] = json!(NOTARY);
    let index = Blob::new(
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
    );
    registry.add_manifest("team/app", Some(&image.digest().replace(':', "-")), &index);
    assert!(
        trust
            .verify(&format!("{}/team/app:1.0", registry.host()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn signing_asks_the_token_service_for_a_push_scope_and_anonymous_pushes_are_refused() {
    let issuer = test_registry::TokenIssuer::start(test_registry::TokenIssuerOptions {
        users: vec![("ci".to_owned(), "s3cret".to_owned())],
        ..Default::default()
    })
    .await
    .unwrap();
    let registry = RealRegistry::start(RegistryOptions {
        token: Some(issuer.registry_config()),
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    let image = test_image("token");
    Pusher::new(&registry.url())
        .bearer(&issuer.token_for("seed", "repository:team/app:pull,push"))
        .push_image("team/app", "1.0", &image)
        .await
        .unwrap();
    let reference: Reference = format!("{}/team/app:1.0", registry.host()).parse().unwrap();
    let key = PrivateKey::from_pkcs8(&TestKey::new().pkcs8, "k").unwrap();

    // Anonymous: the issuer grants pull only, so the upload is refused and nothing is tagged.
    let anonymous: Arc<dyn haul::registry::CredentialStore> = Arc::new(Anonymous);
    let client = fast_client(Config::default(), anonymous.clone());
    let err = haul::trust::sign_image(
        &client,
        &HaulPusher::new(client.clone(), anonymous),
        &reference,
        &key,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, haul::trust::SignError::Push { .. }), "{err}");

    let mut creds = StaticCredentials::default();
    creds.0.insert(
        registry.host(),
        haul::registry::Credential::Basic {
            username: "ci".to_owned(),
            password: "s3cret".to_owned(),
        },
    );
    let creds: Arc<dyn haul::registry::CredentialStore> = Arc::new(creds);
    let client = fast_client(Config::default(), creds.clone());
    haul::trust::sign_image(
        &client,
        &HaulPusher::new(client.clone(), creds),
        &reference,
        &key,
    )
    .await
    .unwrap();
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("ci")
                && r.scopes
                    .iter()
                    .any(|s| s == "repository:team/app:pull,push")),
        "{:?}",
        issuer.requests()
    );
}

#[tokio::test]
async fn cosign_certificate_signatures_chain_to_a_trusted_root() {
    let image = test_image("cosign cert");
    let registry = real_with("team/app", "1.0", &image).await;
    let root = ca("Cosign Root");
    let intermediate_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Cosign Intermediate");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let intermediate_cert = params.signed_by(&intermediate_key, &root.issuer).unwrap();
    let intermediate = Ca {
        pem: intermediate_cert.pem(),
        issuer: rcgen::Issuer::new(params, intermediate_key),
    };
    // cosign signs with ASN.1 ECDSA; the leaf carries the same key.
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let leaf_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["builder@example.com".to_owned()]).unwrap();
    leaf_params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
        "builder@example.com".try_into().unwrap(),
    )];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &intermediate.issuer)
        .unwrap();
    let signer = TestKey {
        pair: EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .unwrap(),
        pkcs8: pkcs8.as_ref().to_vec(),
    };
    let name = format!("{}/team/app", registry.host());
    let payload = cosign_payload(&name, image.digest());
    let sig = signer.sign_b64(&payload);
    let (blobs, manifest) = cosign_manifest(&[(payload, sig)], None);
    let mut doc: serde_json::Value = serde_json::from_slice(&manifest.data).unwrap();
    doc["layers"][0]["annotations"]["dev.sigstore.cosign/certificate"] = json!(leaf_cert.pem());
    doc["layers"][0]["annotations"]["dev.sigstore.cosign/chain"] = json!(intermediate.pem);
    let manifest = Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&doc).unwrap(),
    );
    let pusher = Pusher::new(&registry.url());
    for b in &blobs {
        pusher.push_blob("team/app", b).await.unwrap();
    }
    pusher
        .push_manifest("team/app", &sig_tag(image.digest()), &manifest)
        .await
        .unwrap();

    let trust = Trust::new();
    trust
        .keyring
        .add_root("sigroot", root.pem.as_bytes())
        .unwrap();
    let verdict = trust.verify(&format!("{name}:1.0")).await.unwrap();
    assert!(
        matches!(&verdict.signers[..], [Signer::Certificate { identities, root, .. }]
            if identities == &["builder@example.com".to_owned()] && root == "sigroot"),
        "{:?}",
        verdict.signers
    );

    // Another root: the same signature is not trusted.
    let other = Trust::new();
    other
        .keyring
        .add_root("other", ca("Other Root").pem.as_bytes())
        .unwrap();
    let err = other.verify(&format!("{name}:1.0")).await.unwrap_err();
    assert!(
        matches!(
            only_reason(&err),
            SignatureFailure::UntrustedCertificate { .. }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------- one verification point

/// Issue 12: content trust was checked by the CLI's `pull` only, so a library caller (and the
/// CLI's own `unpack` and `bundle`) pulled unsigned images with trust enabled in the config.
/// Every way a `Puller` fetches an image now goes through its check.
#[tokio::test]
async fn every_pull_path_checks_trust_when_the_config_enables_it() {
    let image = test_image("library");
    let registry = real_with("team/app", "1.0", &image).await;
    let trust = Trust::new();
    let alice = TestKey::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    let config = Config::from_json(
        std::path::Path::new("config.json"),
        &serde_json::to_vec(&json!({"trust": {"enabled": true, "dir": trust.keyring.dir()}}))
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let puller = Puller::new(
        fast_client(config.clone(), Arc::new(Anonymous)),
        store.clone(),
        PullOptions {
            unpack: None,
            trust: config.trust.clone(),
            ..PullOptions::default()
        },
    );
    assert!(puller.verifies_trust());
    let repo = format!("{}/team/app", registry.host());
    let name: Reference = format!("{repo}:1.0").parse().unwrap();
    let digest: Digest = image.digest().parse().unwrap();
    fn refused<T>(result: Result<T, PullError>) -> bool {
        matches!(
            result,
            Err(PullError::Trust(TrustError::NoSignature { .. }))
        )
    }
    assert!(refused(puller.pull(&name, Arc::new(Silent)).await));
    assert!(refused(
        puller.pull_pinned(&name, &digest, Arc::new(Silent)).await
    ));
    assert!(refused(
        puller
            .stored_or_pull(&name.to_string(), Arc::new(Silent))
            .await
    ));
    let all = puller
        .pull_all_tags(
            &Reference::parse_repository(&repo).unwrap(),
            Arc::new(Silent),
        )
        .await
        .unwrap();
    assert!(all.pulled.is_empty(), "{all:?}");
    assert!(
        matches!(
            &all.failed[..],
            [(_, PullError::Trust(TrustError::NoSignature { .. }))]
        ),
        "{all:?}"
    );
    assert_eq!(registry.count("GET", &image.layers[0].blob.digest), 0);
    assert!(store.find_ref(&name.to_string()).unwrap().is_none());

    // Signed by the trusted key: each path pulls, and says who signed.
    let payload = cosign_payload(&repo, image.digest());
    let sig = alice.sign_b64(&payload);
    push_cosign(&registry, "team/app", image.digest(), &[(payload, sig)]).await;
    let events = Arc::new(Recorder::default());
    let entry = puller
        .stored_or_pull(&name.to_string(), events.clone())
        .await
        .unwrap();
    assert_eq!(entry.resolved, digest);
    assert!(
        events.events().iter().any(|e| matches!(
            e,
            Event::Trusted { digest: d, signers, warning: None, .. }
                if d == &digest && signers.len() == 1 && signers[0].contains("alice")
        )),
        "{:?}",
        events.events()
    );
    assert!(
        puller
            .pull(&name, Arc::new(Silent))
            .await
            .unwrap()
            .up_to_date
    );

    // An explicit choice overrides the config, as docker's flag does.
    let untrusting = Puller::new(
        fast_client(config.clone(), Arc::new(Anonymous)),
        store,
        PullOptions {
            content_trust: Some(false),
            trust: config.trust,
            ..PullOptions::default()
        },
    );
    assert!(!untrusting.verifies_trust());
}

/// Issue 12 (item 3's cousin for the keyring): a key file another user owns, or that group or
/// others may write, is never trusted.
#[test]
fn a_key_planted_by_another_user_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let trust = Trust::new();
    let alice = TestKey::new();
    trust
        .keyring
        .add_key("alice", alice.public_pem().as_bytes())
        .unwrap();
    assert_eq!(trust.keyring.keys().unwrap().len(), 1);
    let key_file = trust.keyring.dir().join("keys/alice.pub");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = trust.keyring.keys().unwrap_err();
    assert!(matches!(err, haul::trust::KeyError::Unsafe { .. }), "{err}");
    assert!(trust.keyring.key("alice").is_err());
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let keys_dir = trust.keyring.dir().join("keys");
    std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        trust.keyring.keys(),
        Err(haul::trust::KeyError::Unsafe { .. })
    ));
    std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&key_file, Some(65534), Some(65534)).unwrap();
        assert!(matches!(
            trust.keyring.keys(),
            Err(haul::trust::KeyError::Unsafe { .. })
        ));
    } else {
        println!("SKIPPED (ownership part): needs root to chown");
    }
}
