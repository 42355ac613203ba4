//! `haul info`: where the store is, what it holds, and the configuration in effect.

use std::io::Write;
use std::process::ExitCode;

use haul::registry::DockerConfig;
use haul::store::Store;
use serde_json::json;

use crate::cli::{GlobalArgs, InfoArgs, ListFormat};
use crate::context;
use crate::render::human_size;

pub fn run(global: &GlobalArgs, args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let config = context::load_config(global)?;
    let store = Store::open(context::store_root(global))?;
    let usage = haul::info::usage(&store)?;
    let credentials = DockerConfig::default_dir().map(|d| d.join("config.json"));
    let mirrors: serde_json::Map<String, serde_json::Value> = config
        .registry_mirrors
        .iter()
        .map(|(registry, urls)| {
            let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
            (registry.clone(), json!(urls))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.format == ListFormat::Json {
        let value = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "store": usage,
            "config_file": config.source,
            "config": {
                "max-concurrent-downloads": config.max_concurrent_downloads,
                "max-download-attempts": config.max_download_attempts,
                "insecure-registries": config.insecure_registries,
                "registry-mirrors": mirrors,
            },
            "credentials_file": credentials,
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let none = || "none".to_owned();
    writeln!(out, "Version: {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "Store: {}", usage.root.display())?;
    writeln!(out, " Images: {}", usage.images)?;
    writeln!(
        out,
        " Blobs: {} ({})",
        usage.blobs,
        human_size(usage.blob_bytes)
    )?;
    writeln!(
        out,
        " Partial downloads: {} ({} files)",
        human_size(usage.partial_bytes),
        usage.partial_files
    )?;
    writeln!(
        out,
        " Extracted layers: {} ({})",
        usage.extracted_layers,
        human_size(usage.extracted_bytes)
    )?;
    writeln!(
        out,
        "Config file: {}",
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(none)
    )?;
    writeln!(
        out,
        " max-concurrent-downloads: {}",
        config.max_concurrent_downloads
    )?;
    writeln!(
        out,
        " max-download-attempts: {}",
        config.max_download_attempts
    )?;
    writeln!(
        out,
        " insecure-registries: {}",
        if config.insecure_registries.is_empty() {
            none()
        } else {
            config.insecure_registries.join(", ")
        }
    )?;
    if mirrors.is_empty() {
        writeln!(out, " registry-mirrors: none")?;
    } else {
        writeln!(out, " registry-mirrors:")?;
        for (registry, urls) in &config.registry_mirrors {
            let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
            writeln!(out, "  {registry}: {}", urls.join(", "))?;
        }
    }
    writeln!(
        out,
        "Credentials file: {}",
        credentials
            .map(|p| p.display().to_string())
            .unwrap_or_else(none)
    )?;
    Ok(ExitCode::SUCCESS)
}
