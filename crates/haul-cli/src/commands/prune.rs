//! `haul image prune`: removes what no name reaches, like `docker image prune`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use haul::gc::{PruneOptions, Swept};
use haul::reference::Reference;
use haul::store::Store;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::context;
use crate::render::human_size;
use crate::terminal;

const WARNING: &str = "WARNING! This will remove all dangling images.";
const WARNING_ALL: &str =
    "WARNING! This will remove all dangling images and all images named only by digest.";

pub async fn run(global: &GlobalArgs, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    context::load_config(global)?;
    let store = context::open_store(global)?;
    if !args.force && !args.dry_run && !confirm(if args.all { WARNING_ALL } else { WARNING })? {
        anyhow::bail!("image prune has been cancelled; nothing was removed");
    }
    let options = PruneOptions {
        all: args.all,
        dry_run: args.dry_run,
        ..PruneOptions::default()
    };
    let report = haul::gc::prune(&store, &options).await?;
    print_report(&store, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// docker's prune output: what went, then the total.
pub fn print_report(store: &Store, report: &haul::gc::PruneReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let verb = if report.dry_run {
        "Would delete"
    } else {
        "Deleted"
    };
    let untag_verb = if report.dry_run {
        "Would untag"
    } else {
        "Untagged"
    };
    for name in &report.untagged {
        let shown = name
            .parse::<Reference>()
            .map(|r| r.familiar_string())
            .unwrap_or_else(|_| name.clone());
        // A ref that is not a valid name came from some other tool's index.json: shown escaped.
        writeln!(out, "{untag_verb}: {}", terminal::escape(&shown))?;
    }
    for deleted in &report.deleted {
        match &deleted.what {
            Swept::Blob(digest) | Swept::Layer(digest) => writeln!(out, "{verb}: {digest}")?,
            Swept::Staging | Swept::Partial | Swept::UnpackStaging => {
                let shown = deleted
                    .path
                    .strip_prefix(store.root())
                    .unwrap_or(&deleted.path);
                writeln!(
                    out,
                    "{verb}: {}",
                    terminal::escape(&shown.display().to_string())
                )?
            }
        }
    }
    if !report.untagged.is_empty() || !report.deleted.is_empty() {
        writeln!(out)?;
    }
    let total = if report.dry_run {
        "Total reclaimable space"
    } else {
        "Total reclaimed space"
    };
    writeln!(out, "{total}: {}", human_size(report.reclaimed))?;
    Ok(())
}

/// Asks docker's question on a terminal; without one there is nobody to answer, so no.
fn confirm(warning: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "refusing to prune without confirmation: stdin is not a terminal (pass -f to prune \
             without asking)"
        );
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{warning}\nAre you sure you want to continue? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}
