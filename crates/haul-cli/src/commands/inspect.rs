//! `haul inspect`: docker's `image inspect` for images in the store.

use std::process::ExitCode;

use std::io::Write;

use crate::cli::{GlobalArgs, InspectArgs};
use crate::context;
use crate::template::{Formats, IMAGE_INSPECT, OutputFormat};
use crate::terminal;

pub fn run(global: &GlobalArgs, args: &InspectArgs) -> anyhow::Result<ExitCode> {
    // docker's inspect reads its template as written: `\n` stays two characters.
    let format = OutputFormat::parse(
        args.format.as_deref(),
        &Formats {
            shape: &IMAGE_INSPECT,
            headers: None,
            escapes: false,
        },
    )?;
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &args.images {
        match haul::inspect::find(&store, name) {
            Ok(image) => found.push(haul::inspect::inspect(&image)),
            Err(e) => errors.push(anyhow::Error::new(e)),
        }
    }
    // Like docker: what was found is printed even when some names were not.
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Template(template) => {
            // One image's output, then a newline, as docker prints each.
            for image in &found {
                match template.render(&serde_json::to_value(image)?) {
                    Ok(text) => writeln!(out, "{text}")?,
                    Err(e) => errors.push(e),
                }
            }
        }
        OutputFormat::Default | OutputFormat::Json => terminal::write_json(&mut out, &found)?,
    }
    last_error(errors)
}

/// Prints every error but the last, which is returned for `main` to report with its hint; one
/// command line can name several images, and each failure is worth a line.
pub(super) fn last_error(mut errors: Vec<anyhow::Error>) -> anyhow::Result<ExitCode> {
    let Some(last) = errors.pop() else {
        return Ok(ExitCode::SUCCESS);
    };
    for e in errors {
        eprintln!("Error: {}", terminal::escape(&format!("{e:#}")));
    }
    Err(last)
}
