//! `haul version`: what this binary is, as `docker version` prints its client.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::VersionArgs;
use crate::template::{Formats, OutputFormat, VERSION};
use crate::terminal;

pub fn run(args: &VersionArgs) -> anyhow::Result<ExitCode> {
    let format = OutputFormat::parse(
        args.format.as_deref(),
        &Formats {
            shape: &VERSION,
            headers: None,
            escapes: true,
        },
    )?;
    let platform = haul::platform::Platform::host().normalized();
    // Go's names, as docker prints them (`darwin`, not `macos`).
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let client = json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "GitCommit": env!("HAUL_BUILD_COMMIT"),
        "BuildTime": build_time(env!("HAUL_BUILD_EPOCH")),
        "RustVersion": env!("HAUL_BUILD_RUSTC"),
        "Os": os,
        "Arch": platform.architecture,
    });
    let data = json!({ "Client": client });
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => writeln!(out, "{}", terminal::json_line(&data)?)?,
        OutputFormat::Template(template) => template.write(&mut out, [data])?,
        OutputFormat::Default => {
            let field = |key: &str| client[key].as_str().unwrap_or_default().to_owned();
            writeln!(out, "Client: haul")?;
            for (label, value) in [
                ("Version:", field("Version")),
                ("Git commit:", field("GitCommit")),
                ("Built:", field("BuildTime")),
                ("Rust version:", field("RustVersion")),
                ("OS/Arch:", format!("{}/{}", field("Os"), field("Arch"))),
            ] {
                // docker's tabwriter column: 20 wide with the leading space.
                writeln!(out, " {label:<19}{value}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The build date as docker prints it (Go's ANSIC: `Fri Sep 20 11:41:00 2024`, UTC), from
/// seconds since the epoch; "unknown" when the build did not know.
fn build_time(epoch: &str) -> String {
    epoch
        .parse::<i64>()
        .ok()
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .map_or_else(
            || "unknown".to_owned(),
            |t| t.strftime("%a %b %e %H:%M:%S %Y").to_string(),
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_times_read_like_docker() {
        assert_eq!(super::build_time("1726832460"), "Fri Sep 20 11:41:00 2024");
        assert_eq!(super::build_time("1704067200"), "Mon Jan  1 00:00:00 2024");
        assert_eq!(super::build_time("unknown"), "unknown");
        assert_eq!(super::build_time("x"), "unknown");
    }
}
