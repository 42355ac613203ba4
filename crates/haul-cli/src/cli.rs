//! Command-line syntax (clap derive).
//!
//! Options that apply to every command (`--root`, `--config`, `-D`, `--progress`) are accepted
//! before the subcommand, as docker takes its global options, and also after it, but only on the
//! commands that use them: `haul login --help` does not list a store it never opens, and
//! `haul login --root DIR` is refused, while `haul --root DIR login` (an alias's prefix) is not.

use std::borrow::Cow;
use std::path::PathBuf;

use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};

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
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Config file (docker daemon.json keys). Default: $HAUL_CONFIG, ~/.config/haul/config.json,
    /// /etc/haul/config.json
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log details of what haul does to stderr (same as RUST_LOG=haul=debug)
    #[arg(long, short = 'D', global = true)]
    pub debug: bool,
    /// How pull, unpack and bundle show progress (they also take it after their name)
    #[arg(long, value_enum, value_name = "MODE")]
    pub progress: Option<ProgressMode>,
}

/// The options a command takes after its name, beside its own: the store and the config file
/// for those that use them. The rest take them only before the subcommand, where they are
/// ignored.
struct Uses {
    store: bool,
    config: bool,
}

/// What each command (by its path, `image ls`) uses; anything not named uses both.
fn uses(path: &str) -> Uses {
    let store = !matches!(
        path.split(' ').next(),
        Some("login" | "logout" | "manifest" | "trust" | "version" | "completion" | "man")
    );
    let config = !matches!(
        path.split(' ').next(),
        Some("logout" | "version" | "completion" | "man")
    );
    Uses { store, config }
}

/// The command line's full definition: clap's, with `--root` and `--config` added after the
/// name of each command that uses them. Parsing, shell completions and man pages all use it.
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let arg = |id: &str| cmd.get_arguments().find(|a| a.get_id() == id).cloned();
    let (root, config) = (arg("root"), arg("config"));
    fn add(
        cmd: clap::Command,
        path: &str,
        root: &Option<clap::Arg>,
        config: &Option<clap::Arg>,
    ) -> clap::Command {
        cmd.mut_subcommands(|sub| {
            let path = format!("{path} {}", sub.get_name()).trim_start().to_owned();
            if sub.has_subcommands() {
                return add(sub, &path, root, config);
            }
            let uses = uses(&path);
            let mut sub = sub;
            if let (true, Some(root)) = (uses.store, root) {
                sub = sub.arg(root.clone());
            }
            if let (true, Some(config)) = (uses.config, config) {
                sub = sub.arg(config.clone());
            }
            sub
        })
    }
    add(cmd, "", &root, &config)
}

/// Parses the process's arguments (exiting with clap's message and code 2 on a bad command
/// line). An option given after the subcommand wins over the same one given before it.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut level: Option<&ArgMatches> = matches.subcommand().map(|(_, m)| m);
    while let Some(m) = level {
        if let Ok(Some(root)) = m.try_get_one::<PathBuf>("root") {
            cli.global.root = Some(root.clone());
        }
        if let Ok(Some(config)) = m.try_get_one::<PathBuf>("config") {
            cli.global.config = Some(config.clone());
        }
        level = m.subcommand().map(|(_, m)| m);
    }
    cli
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Unpack an image into a root filesystem directory (pulls it first when missing)
    Unpack(UnpackArgs),
    /// Make an OCI runtime bundle (rootfs/ + config.json) for runc or crun
    Bundle(UnpackArgs),
    /// List images in the store
    Images(ImagesArgs),
    /// Show details of images in the store as JSON (like docker image inspect)
    Inspect(InspectArgs),
    /// Show the steps that built an image, from its config
    History(HistoryArgs),
    /// Give an image in the store another name
    Tag(TagArgs),
    /// Remove image names (untag); the content stays in the store until a prune
    Rmi(RmiArgs),
    /// Look at manifests in a registry, without pulling
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Manage images in the store
    #[command(subcommand)]
    Image(ImageCommand),
    /// Re-hash every blob and re-check every extracted layer of images in the store; --repair mends them
    Verify(VerifyArgs),
    /// Show the store, its disk usage and the configuration in effect
    Info(InfoArgs),
    /// Log in to a registry (checked first, then saved like docker login)
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Write images to a tar archive (docker-archive, which docker load reads, or oci-archive)
    Save(SaveArgs),
    /// Read images from a tar archive made by docker save, haul save or an OCI tool
    Load(LoadArgs),
    /// Content trust: inspect signatures, trust keys and roots, sign images
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Show haul's version, commit, build date, Rust version and platform
    Version(VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = COMPLETION_HELP)]
    Completion(CompletionArgs),
    /// Write a man page per command (haul.1, haul-pull.1, haul-image-ls.1, …) into a directory
    Man(ManArgs),
}

const COMPLETION_HELP: &str = "\
Install:
  haul completion bash > /usr/share/bash-completion/completions/haul
  haul completion zsh > \"${fpath[1]}/_haul\"
  haul completion fish > ~/.config/fish/completions/haul.fish";

/// A command line clap accepts but the command refuses (docker's own checks, in docker's words,
/// and `--format` templates that do not fit the command's data): exit code 2, like clap's own
/// errors.
#[derive(Debug)]
pub struct UsageError(pub Cow<'static, str>);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

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
    /// Only download: do not extract the layers into the layer cache
    #[arg(long)]
    pub no_unpack: bool,
    /// Skip image verification by signature (content trust is off unless DOCKER_CONTENT_TRUST=1)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub disable_content_trust: Option<bool>,
    /// How to show progress [default: auto]
    #[arg(long, value_enum)]
    pub progress: Option<ProgressMode>,
}

/// `--format`'s help, as docker words it.
const FORMAT_HELP: &str = "Format output: 'table' (default), 'table TEMPLATE' (a Go template, \
                           with column headers), 'json', or 'TEMPLATE' (a Go template, e.g. \
                           '{{.Repository}}:{{.Tag}}')";

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag)
    pub repository: Option<String>,
    /// Show all images (by default images without a tag, named only NAME@DIGEST, are hidden)
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Filter: dangling=true|false, reference=PATTERN, before=IMAGE, since=IMAGE (repeat to
    /// combine; several references match any)
    #[arg(long, short = 'f', value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Only show image IDs
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Don't truncate output (full image IDs)
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(long, value_name = "FORMAT", help = FORMAT_HELP)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Names (NAME[:TAG|@DIGEST]) or image IDs (the config digest, or a unique prefix of at
    /// least 4 hex characters)
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Format output: 'json' (default) or a Go template applied to each image, e.g. '{{.Id}}'
    /// or '{{json .Config}}'
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Name or image ID
    pub image: String,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Format output: 'table' (default), 'table TEMPLATE', 'json' (exact sizes and RFC 3339
    /// times) or 'TEMPLATE' (a Go template, e.g. '{{.CreatedBy}}')
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveFormat {
    /// docker save's format (docker >= 25): manifest.json, repositories and an OCI layout
    DockerArchive,
    /// An OCI image layout, each image named by its tag (skopeo's oci-archive:FILE:TAG)
    OciArchive,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The archive to write (appears only once complete); `-` or none for stdout, which must
    /// not be a terminal
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Archive format
    #[arg(long, value_enum, default_value_t = SaveFormat::DockerArchive)]
    pub format: SaveFormat,
    /// Names or image IDs
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive to read; default: stdin
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image to name: name or image ID
    pub source: String,
    /// The new name, NAME[:TAG] (a digest is refused)
    pub target: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Only names are removed: blobs stay in the store, so a later pull of the same \
                  image downloads nothing, until a prune reclaims what no name reaches."
)]
pub struct RmiArgs {
    /// Names or image IDs; an ID removes every name of that image
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Remove the names of an image ID even when they are in several repositories
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Then remove what no name reaches any more (as `haul image prune -f` would)
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Print a manifest or index as the registry serves it (no layers are fetched, nothing is
    /// stored)
    Inspect(ManifestInspectArgs),
}

#[derive(Debug, Args)]
pub struct ManifestInspectArgs {
    /// NAME[:TAG|@DIGEST]
    pub image: String,
    /// Show docker's verbose form: reference, descriptor, raw bytes (base64) and the parsed
    /// document; for an index, one such record per platform manifest
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Format output: 'table' (default), 'json' (exact bytes) or a Go template, e.g.
    /// '{{.Store.Root}}'
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Format output: 'json' or a Go template, e.g. '{{.Client.Version}}'
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages, e.g. /usr/local/share/man/man1 (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Credentials are checked against the registry, then saved in docker's config.json \
                  ($DOCKER_CONFIG or ~/.docker, mode 0600), or in the credsStore/credHelpers \
                  helper it names."
)]
pub struct LoginArgs {
    /// Registry host[:port]; default: Docker Hub
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
    /// Username
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Password (visible to other users of this machine: prefer --password-stdin)
    #[arg(long, short = 'p')]
    pub password: Option<String>,
    /// Take the password from stdin (one trailing newline is dropped); needs --username
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host[:port]; default: Docker Hub
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// NAME[:TAG|@DIGEST]; pulled first when not in the store
    pub image: String,
    /// The directory to create (must be empty unless --force)
    pub dir: std::path::PathBuf,
    /// Pick this platform from a multi-platform image (os/arch[/variant]); default: this host's
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        env = "DOCKER_DEFAULT_PLATFORM"
    )]
    pub platform: Option<String>,
    /// Replace the contents of a non-empty directory
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Print only the directory's path
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Skip image verification by signature (content trust is off unless DOCKER_CONTENT_TRUST=1)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub disable_content_trust: Option<bool>,
    /// How to show progress [default: auto]
    #[arg(long, value_enum)]
    pub progress: Option<ProgressMode>,
}

/// docker's management commands (`docker image ls`), beside the short forms.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the store (haul images)
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Remove image names (haul rmi)
    #[command(visible_alias = "remove")]
    Rm(RmiArgs),
    /// Show details of images in the store (haul inspect)
    Inspect(InspectArgs),
    /// Download an image from a registry (haul pull)
    Pull(PullArgs),
    /// Write images to a tar archive (haul save)
    Save(SaveArgs),
    /// Read images from a tar archive (haul load)
    Load(LoadArgs),
    /// Give an image in the store another name (haul tag)
    Tag(TagArgs),
    /// Show the steps that built an image (haul history)
    History(HistoryArgs),
    /// Remove what no name reaches: blobs, extracted layers, day-old partial downloads
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Waits for running pulls to finish, then removes every blob and extracted layer                   no image name reaches. Without -f it asks first, and refuses when stdin is not                   a terminal."
)]
pub struct PruneArgs {
    /// Also remove images named only by digest (NAME@DIGEST, no tag)
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Print what would be removed; remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status 1 when a blob or an extracted layer is missing or damaged (after --repair: still)."
)]
pub struct VerifyArgs {
    /// Names or image IDs; default: every image in the store
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Fetch missing and damaged blobs again from the registry, extract damaged layer-cache
    /// entries again from their blobs, then verify again
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Show the signatures of images in their registry: format, signer, digest, valid or not
    Inspect(TrustInspectArgs),
    /// Manage the keys and X.509 roots signatures are checked against
    #[command(subcommand)]
    Key(TrustKeyCommand),
    /// Sign an image in a registry you can push to (cosign-compatible; the password of an
    /// encrypted cosign key is read from COSIGN_PASSWORD)
    Sign(TrustSignArgs),
}

#[derive(Debug, Args)]
pub struct TrustInspectArgs {
    /// NAME[:TAG|@DIGEST]
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// A table for people instead of JSON
    #[arg(long)]
    pub pretty: bool,
}

#[derive(Debug, Subcommand)]
pub enum TrustKeyCommand {
    /// Trust a public key (PEM: ECDSA P-256/P-384, Ed25519 or RSA), e.g. cosign.pub
    Add {
        /// The name policies refer to it by
        name: String,
        /// The PEM public key file
        file: std::path::PathBuf,
    },
    /// Trust root certificates (PEM) for certificate-based signatures (Notation, cosign with
    /// certificates)
    Root {
        /// The name policies refer to it by
        name: String,
        /// The PEM certificate file
        file: std::path::PathBuf,
    },
    /// Stop trusting a key or root
    Remove {
        /// Its name
        name: String,
    },
    /// List the trusted keys and roots
    List,
}

#[derive(Debug, Args)]
pub struct TrustSignArgs {
    /// The private key: cosign.key (encrypted; COSIGN_PASSWORD) or a PKCS#8/SEC1/PKCS#1 PEM
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,
    /// NAME[:TAG|@DIGEST]; a tag is resolved to the digest that gets signed
    pub image: String,
}
