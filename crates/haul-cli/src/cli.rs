//! Command-line syntax (clap derive). Global options work before or after the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    the command failed (the error and a hint are printed on stderr)
  2    invalid command line
  130  interrupted";

#[derive(Debug, Parser)]
#[command(
    name = "haul",
    version,
    about = "Pull container images from any OCI/Docker registry into a verified OCI layout, without a daemon",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The store (an OCI image layout). Default: $HAUL_ROOT, /var/lib/haul as root, else
    /// $XDG_DATA_HOME/haul (~/.local/share/haul)
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Config file (docker daemon.json keys). Default: $HAUL_CONFIG, ~/.config/haul/config.json,
    /// /etc/haul/config.json
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log details of what haul does to stderr (same as RUST_LOG=haul=debug)
    #[arg(long, short = 'D', global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download an image from a registry
    Pull(PullArgs),
    /// List images in the store
    Images(ImagesArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise
    Auto,
    /// Per-layer bars and a total line
    Tty,
    /// One line per status change
    Plain,
    /// One JSON object per event on stdout
    Json,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST], e.g. alpine, 127.0.0.1:5000/team/app:1.2, ghcr.io/org/tool@sha256:…
    pub image: String,
    /// Download all tagged images in the repository
    #[arg(long, short = 'a')]
    pub all_tags: bool,
    /// Pick this platform from a multi-platform image (os/arch[/variant]); default: this host's
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        env = "DOCKER_DEFAULT_PLATFORM"
    )]
    pub platform: Option<String>,
    /// Print only the image's full reference
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Skip image verification by signature (content trust is off unless DOCKER_CONTENT_TRUST=1)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub disable_content_trust: Option<bool>,
    /// How to show progress
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag)
    pub repository: Option<String>,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Only show image IDs
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}
