//! `haul info`: where the store is, what it holds, and the configuration in effect.

use std::io::Write;
use std::process::ExitCode;

use haul::registry::DockerConfig;
use serde_json::json;

use crate::cli::{GlobalArgs, InfoArgs};
use crate::context;
use crate::render::human_size;
use crate::template::{Formats, INFO, OutputFormat};
use crate::terminal;

pub fn run(global: &GlobalArgs, args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let format = OutputFormat::parse(
        args.format.as_deref(),
        &Formats {
            shape: &INFO,
            headers: None,
            escapes: true,
        },
    )?;
    let config = context::load_config(global)?;
    let store = context::open_store(global)?;
    let usage = haul::info::usage(&store)?;
    let credentials = DockerConfig::default_dir().map(|d| d.join("config.json"));
    let effective = haul::info::effective_config(&config);
    let inflater = haul::unpack::gzip_inflater();
    let mut out = std::io::stdout().lock();
    if let OutputFormat::Template(template) = &format {
        let proxies = &effective.proxies;
        let view = json!({
            "Version": env!("CARGO_PKG_VERSION"),
            "GzipInflater": inflater,
            "DockerRootDir": usage.root,
            "Images": usage.images,
            "Store": {
                "Root": usage.root,
                "Images": usage.images,
                "Blobs": usage.blobs,
                "BlobBytes": usage.blob_bytes,
                "PartialFiles": usage.partial_files,
                "PartialBytes": usage.partial_bytes,
                "ExtractedLayers": usage.extracted_layers,
                "ExtractedBytes": usage.extracted_bytes,
            },
            "ConfigFile": config.source,
            "Config": {
                "MaxConcurrentDownloads": effective.max_concurrent_downloads,
                "MaxDownloadAttempts": effective.max_download_attempts,
                "DownloadStallTimeout": effective.download_stall_timeout,
                "MaxRetryAfter": effective.max_retry_after,
                "MaxConnectionsPerBlob": effective.max_connections_per_blob,
                "RangedDownloadMinSize": effective.ranged_download_min_size,
                "ForeignLayerAllowedNetworks": effective.foreign_layer_allowed_networks,
                "InsecureRegistries": effective.insecure_registries,
                "RegistryMirrors": effective.registry_mirrors,
                "Proxies": {
                    "Source": proxies.source,
                    "HTTPProxy": proxies.http,
                    "HTTPSProxy": proxies.https,
                    "NoProxy": proxies.no_proxy,
                },
            },
            "CredentialsFile": credentials,
        });
        template.write(&mut out, [view])?;
        return Ok(ExitCode::SUCCESS);
    }
    if let OutputFormat::Json = format {
        let value = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gzip_inflater": inflater,
            "store": usage,
            "config_file": config.source,
            "config": effective,
            "credentials_file": credentials,
        });
        terminal::write_json(&mut out, &value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let none = || "none".to_owned();
    writeln!(out, "Version: {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "Gzip inflater: {inflater}")?;
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
            .unwrap_or_else(|| "none (defaults)".to_owned())
    )?;
    writeln!(
        out,
        " max-concurrent-downloads: {}",
        effective.max_concurrent_downloads
    )?;
    writeln!(
        out,
        " max-download-attempts: {}",
        effective.max_download_attempts
    )?;
    writeln!(
        out,
        " download-stall-timeout: {}s",
        effective.download_stall_timeout
    )?;
    writeln!(out, " max-retry-after: {}s", effective.max_retry_after)?;
    writeln!(
        out,
        " max-connections-per-blob: {}",
        effective.max_connections_per_blob
    )?;
    writeln!(
        out,
        " ranged-download-min-size: {}",
        crate::render::human_size(effective.ranged_download_min_size)
    )?;
    writeln!(
        out,
        " foreign-layer-allowed-networks: {}",
        if effective.foreign_layer_allowed_networks.is_empty() {
            none()
        } else {
            effective.foreign_layer_allowed_networks.join(", ")
        }
    )?;
    writeln!(
        out,
        " insecure-registries: {}",
        if effective.insecure_registries.is_empty() {
            none()
        } else {
            effective.insecure_registries.join(", ")
        }
    )?;
    if effective.registry_mirrors.is_empty() {
        writeln!(out, " registry-mirrors: none")?;
    } else {
        writeln!(out, " registry-mirrors:")?;
        for (registry, urls) in &effective.registry_mirrors {
            writeln!(out, "  {registry}: {}", urls.join(", "))?;
        }
    }
    let proxies = &effective.proxies;
    writeln!(out, " proxies: {}", proxies.source)?;
    for (key, value) in [
        ("http-proxy", &proxies.http),
        ("https-proxy", &proxies.https),
        ("no-proxy", &proxies.no_proxy),
    ] {
        if let Some(v) = value {
            writeln!(out, "  {key}: {v}")?;
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
