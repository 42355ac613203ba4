//! `haul history`: the steps that built an image, from its config, like `docker history`.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{GlobalArgs, HistoryArgs, ListFormat};
use crate::context;
use crate::render::{Table, human_size, time_ago};
use crate::terminal;

/// docker's width for CREATED BY unless `--no-trunc`.
const CREATED_BY_WIDTH: usize = 45;

pub fn run(global: &GlobalArgs, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let image = haul::inspect::find(&store, &args.image)?;
    let rows = haul::inspect::history(&image);
    let mut out = std::io::stdout().lock();
    if args.format == ListFormat::Json {
        terminal::write_json(&mut out, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let id = |row: &haul::inspect::HistoryEntry| match &row.id {
        Some(d) if args.no_trunc => d.to_string(),
        Some(d) => d.short().to_owned(),
        None => "<missing>".to_owned(),
    };
    if args.quiet {
        for row in &rows {
            writeln!(out, "{}", id(row))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    let now = jiff::Timestamp::now();
    for row in &rows {
        // docker shows tabs as spaces; haul shows newlines (heredoc RUNs) so too. What else is a
        // control character is escaped before cutting, so the width counts what is shown.
        let created_by = terminal::escape(&row.created_by.replace(['\t', '\n'], " ")).into_owned();
        table.push(vec![
            id(row),
            row.created
                .map(|c| time_ago(c, now))
                .unwrap_or_else(|| "N/A".to_owned()),
            if args.no_trunc {
                created_by
            } else {
                ellipsis(&created_by, CREATED_BY_WIDTH)
            },
            human_size(row.size),
            row.comment.clone(),
        ]);
    }
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// At most `width` characters, the last one `…` when something was cut (docker's `Ellipsis`).
fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    #[test]
    fn ellipsis_keeps_the_width() {
        assert_eq!(super::ellipsis("short", 45), "short");
        let long = "x".repeat(50);
        let cut = super::ellipsis(&long, 45);
        assert_eq!(cut.chars().count(), 45);
        assert!(cut.ends_with('…'));
    }
}
