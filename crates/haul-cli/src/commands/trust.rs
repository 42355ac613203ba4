//! `haul trust`: inspect signatures, manage trusted keys and roots, sign images; and the check
//! `haul pull` runs when content trust is on.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use haul::config::Config;
use haul::reference::Reference;
use haul::registry::{Anonymous, CredentialStore, DockerConfig, Pusher, RegistryClient};
use haul::trust::{
    Inspection, Keyring, PrivateKey, SignatureFailure, Signer, TrustError, TrustVerifier,
};
use serde_json::json;

use crate::cli::{GlobalArgs, TrustCommand, TrustInspectArgs, TrustKeyCommand, TrustSignArgs};
use crate::context;

pub async fn run(global: &GlobalArgs, command: &TrustCommand) -> anyhow::Result<ExitCode> {
    match command {
        TrustCommand::Inspect(args) => inspect(global, args).await,
        TrustCommand::Key(TrustKeyCommand::Add { name, file }) => {
            let config = context::load_config(global)?;
            let keyring = keyring(&config);
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let added = keyring.add_key(name, &bytes)?;
            eprintln!(
                "Trusted key {} ({}, {}) in {}",
                added.name,
                added.key.kind(),
                added.key.fingerprint(),
                keyring.dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Key(TrustKeyCommand::Root { name, file }) => {
            let config = context::load_config(global)?;
            let keyring = keyring(&config);
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let added = keyring.add_root(name, &bytes)?;
            eprintln!(
                "Trusted root {} ({} certificate{}) in {}",
                added.name,
                added.certs.len(),
                if added.certs.len() == 1 { "" } else { "s" },
                keyring.dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Key(TrustKeyCommand::Remove { name }) => {
            let config = context::load_config(global)?;
            if !keyring(&config).remove(name)? {
                bail!("no trusted key or root named {name}");
            }
            eprintln!("Removed {name}");
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Key(TrustKeyCommand::List) => {
            let config = context::load_config(global)?;
            let keyring = keyring(&config);
            for k in keyring.keys()? {
                println!("key\t{}\t{}\t{}", k.name, k.key.kind(), k.key.fingerprint());
            }
            for r in keyring.roots()? {
                println!("root\t{}\t{} certificate(s)", r.name, r.certs.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Sign(args) => sign(global, args).await,
    }
}

/// The keyring the config file names, else the default one.
pub fn keyring(config: &Config) -> Keyring {
    Keyring::configured(config)
}

fn credentials() -> Arc<dyn CredentialStore> {
    match DockerConfig::load_default() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("WARNING: Error loading docker config file: {e}");
            Arc::new(Anonymous)
        }
    }
}

/// A registry client without a store: inspecting and signing never touch it.
fn client(
    config: Config,
) -> anyhow::Result<(Arc<Config>, RegistryClient, Arc<dyn CredentialStore>)> {
    let config = Arc::new(config);
    let creds = credentials();
    let client = RegistryClient::new(
        config.registry_settings(),
        creds.clone(),
        Default::default(),
    )
    .context("cannot set up the HTTP client")?;
    Ok((config, client, creds))
}

pub fn verifier(client: RegistryClient, config: &Config) -> TrustVerifier {
    TrustVerifier::new(client, keyring(config), config.trust.clone())
}

async fn inspect(global: &GlobalArgs, args: &TrustInspectArgs) -> anyhow::Result<ExitCode> {
    let (config, client, _) = client(context::load_config(global)?)?;
    let verifier = verifier(client, &config);
    let mut inspections = Vec::new();
    for image in &args.images {
        let reference: Reference = image.parse()?;
        let inspection = verifier.inspect(&reference).await.with_context(|| {
            format!(
                "inspecting the signatures of {}",
                reference.familiar_string()
            )
        })?;
        inspections.push(inspection);
    }
    if args.pretty {
        for (i, inspection) in inspections.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_pretty(inspection);
        }
    } else {
        let value: Vec<_> = inspections.iter().map(inspection_json).collect();
        crate::terminal::write_json(&mut std::io::stdout().lock(), &value)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn signer_json(signer: &Signer) -> serde_json::Value {
    match signer {
        Signer::Key {
            name,
            kind,
            fingerprint,
        } => json!({"Type": "key", "Name": name, "KeyType": kind, "Fingerprint": fingerprint}),
        Signer::Certificate {
            subject,
            identities,
            root,
        } => {
            json!({"Type": "certificate", "Subject": subject, "Identities": identities, "Root": root})
        }
    }
}

fn inspection_json(inspection: &Inspection) -> serde_json::Value {
    let signatures: Vec<_> = inspection
        .signatures
        .iter()
        .map(|s| {
            json!({
                "Format": s.kind.to_string(),
                "Source": s.source.to_string(),
                "Manifest": s.manifest.to_string(),
                "Valid": s.result.is_ok(),
                "Signer": s.result.as_ref().ok().map(signer_json),
                "Error": s.result.as_ref().err().map(SignatureFailure::to_string),
            })
        })
        .collect();
    json!({
        "Name": inspection.reference.familiar_string(),
        "Reference": inspection.reference.to_string(),
        "Digest": inspection.digest.to_string(),
        "Signed": inspection.valid_signers().next().is_some(),
        "Signatures": signatures,
    })
}

fn print_pretty(inspection: &Inspection) {
    println!(
        "Signatures for {} ({})",
        inspection.reference.familiar_string(),
        inspection.digest
    );
    if inspection.signatures.is_empty() {
        println!("\nNo signatures found.");
        return;
    }
    println!();
    let mut table = crate::render::Table::new(&["FORMAT", "FOUND IN", "SIGNATURE", "RESULT"]);
    for s in &inspection.signatures {
        let result = match &s.result {
            Ok(signer) => format!("valid: signed by {signer}"),
            Err(e) => format!("invalid: {e}"),
        };
        table.push(vec![
            s.kind.to_string(),
            s.source.to_string(),
            s.manifest.short().to_owned(),
            result,
        ]);
    }
    let _ = table.write(&mut std::io::stdout());
}

async fn sign(global: &GlobalArgs, args: &TrustSignArgs) -> anyhow::Result<ExitCode> {
    let reference: Reference = args.image.parse()?;
    let key_bytes = std::fs::read(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let password = std::env::var_os("COSIGN_PASSWORD").map(|p| p.into_encoded_bytes());
    let key = PrivateKey::from_pem(
        &key_bytes,
        password.as_deref(),
        &args.key.display().to_string(),
    )?;
    let (_, client, creds) = client(context::load_config(global)?)?;
    let pusher = Pusher::new(client.clone(), creds);
    let outcome = haul::trust::sign_image(&client, &pusher, &reference, &key)
        .await
        .with_context(|| format!("signing {}", reference.familiar_string()))?;
    eprintln!(
        "Signed {}@{} with {} key {}",
        reference.familiar_name(),
        outcome.digest,
        key.public_key().kind(),
        key.public_key().fingerprint()
    );
    eprintln!(
        "Pushed signature to {}:{} ({} signature{} there)",
        reference.familiar_name(),
        outcome.tag,
        outcome.signatures,
        if outcome.signatures == 1 { "" } else { "s" }
    );
    println!("{}", outcome.digest);
    Ok(ExitCode::SUCCESS)
}

/// A hint for a content-trust failure.
pub fn hint(err: &TrustError) -> Option<String> {
    Some(match err {
        TrustError::NoSignature { .. } => "the image is unsigned: ask its publisher to sign it \
             (`haul trust sign --key KEY IMAGE` or cosign/notation), or pull without content \
             trust (--disable-content-trust)"
            .to_owned(),
        TrustError::Untrusted { .. } | TrustError::MissingSigners { .. } => {
            "`haul trust inspect --pretty IMAGE` lists the signatures found; trust the signer's key \
             with `haul trust key add NAME FILE` (or its CA with `haul trust key root NAME FILE`)"
                .to_owned()
        }
        TrustError::EmptyKeyring { .. } => {
            "content trust checks signatures against your keyring, which is empty".to_owned()
        }
        _ => return None,
    })
}
