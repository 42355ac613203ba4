//! `haul completion SHELL` and `haul man DIR`: shell completions and man pages generated from
//! the command-line definition, so they list exactly the commands and options haul takes.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::{CompletionArgs, ManArgs};

pub fn completion(args: &CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut command = crate::cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "haul", &mut out);
    Ok(ExitCode::SUCCESS)
}

/// One page per command: `haul.1`, `haul-pull.1`, `haul-image-ls.1`…
pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    clap_mangen::generate_to(crate::cli::command(), &args.dir)
        .with_context(|| format!("writing man pages into {}", args.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
