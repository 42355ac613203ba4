//! `haul verify`: re-hashes the blobs of images in the store and compares their cached layers
//! with the blobs; `--repair` fetches bad blobs again and extracts bad cached layers again.

use std::io::Write;
use std::process::ExitCode;

use haul::verify::{Fault, Problem, VerifyReport};

use crate::cli::{GlobalArgs, VerifyArgs};
use crate::context;

pub async fn run(global: &GlobalArgs, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let after = if args.repair {
        let ctx = context::load(global)?;
        let report = haul::verify::repair(&ctx.store, &ctx.client, &args.images).await?;
        for problem in &report.found {
            writeln!(out, "{}", describe(problem))?;
        }
        for digest in &report.repaired {
            writeln!(out, "Repaired: {digest}")?;
        }
        for (digest, error) in &report.failed {
            eprintln!(
                "Error: cannot repair {digest}: {}",
                crate::terminal::escape(&error.to_string())
            );
        }
        report.after
    } else {
        context::load_config(global)?;
        let store = context::open_store(global)?;
        let images = args.images.clone();
        let report = tokio::task::spawn_blocking(move || {
            haul::verify::verify(&store, &images).map_err(anyhow::Error::from)
        })
        .await??;
        for problem in &report.problems {
            writeln!(out, "{}", describe(problem))?;
        }
        report
    };
    summarise(&mut out, &after, args.repair)
}

fn summarise(
    out: &mut impl Write,
    report: &VerifyReport,
    repaired: bool,
) -> anyhow::Result<ExitCode> {
    let images = report.images.len();
    let plural = if images == 1 { "" } else { "s" };
    match report.layers_not_compared {
        0 => {}
        1 => eprintln!(
            "note: 1 cached layer not compared with its blob: the store is read-only (the blob \
             itself was verified)"
        ),
        n => eprintln!(
            "note: {n} cached layers not compared with their blobs: the store is read-only (the \
             blobs themselves were verified)"
        ),
    }
    let checked = match report.layers_checked {
        0 => format!("{} blobs", report.blobs_checked),
        1 => format!("{} blobs and 1 cached layer", report.blobs_checked),
        n => format!("{} blobs and {n} cached layers", report.blobs_checked),
    };
    if report.is_clean() {
        writeln!(
            out,
            "Verified {checked} of {images} image{plural}: all intact"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if repaired {
        for problem in &report.problems {
            writeln!(out, "{}", describe(problem))?;
        }
    }
    writeln!(
        out,
        "Verified {checked} of {images} image{plural}: {} missing or damaged",
        report.problems.len()
    )?;
    if !repaired {
        eprintln!(
            "hint: `haul verify --repair` fetches bad blobs again from the registry and \
             extracts bad cached layers again"
        );
    }
    Ok(ExitCode::FAILURE)
}

fn describe(problem: &Problem) -> String {
    let role = problem.role.label();
    match &problem.fault {
        Fault::Missing => format!("missing: {} ({role} of {})", problem.digest, problem.image),
        Fault::Corrupt { actual } => format!(
            "corrupt: {} ({role} of {}): expected {}, actual {actual}",
            problem.digest, problem.image, problem.digest
        ),
        Fault::Altered(alteration) => format!(
            "corrupt: {role} {} (layer of {}): {alteration}",
            problem.digest, problem.image
        ),
    }
}
