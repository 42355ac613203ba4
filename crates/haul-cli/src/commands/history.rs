//! `haul history`: the steps that built an image, from its config, like `docker history`.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{GlobalArgs, HistoryArgs};
use crate::context;
use crate::render::{ESTIMATE_NOTE, Table, human_size, shown_size, time_ago};
use crate::template::{Formats, HISTORY_HEADERS, HISTORY_ROW, OutputFormat};
use crate::terminal;

/// docker's width for CREATED BY unless `--no-trunc`.
const CREATED_BY_WIDTH: usize = 45;

pub fn run(global: &GlobalArgs, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let format = OutputFormat::parse(
        args.format.as_deref(),
        &Formats {
            shape: &HISTORY_ROW,
            headers: Some(HISTORY_HEADERS),
            escapes: true,
        },
    )?;
    context::load_config(global)?;
    let store = context::open_store(global)?;
    let image = haul::inspect::find(&store, &args.image)?;
    let rows = haul::inspect::history(&image);
    let mut out = std::io::stdout().lock();
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
    let now = jiff::Timestamp::now();
    let template = match format {
        OutputFormat::Json => {
            terminal::write_json(&mut out, &rows)?;
            return Ok(ExitCode::SUCCESS);
        }
        OutputFormat::Template(template) => template,
        OutputFormat::Default => {
            table(&mut out, &rows, args, now, id)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    // docker's history fields: CREATED BY with tabs as spaces, cut at 45 unless --no-trunc.
    let data = rows.iter().map(|row| {
        let created_by = row.created_by.replace('\t', " ");
        json!({
            "ID": id(row),
            "CreatedSince": row.created.map_or_else(|| "N/A".to_owned(), |c| time_ago(c, now)),
            "CreatedAt": row.created.map_or_else(String::new, |c| c.to_string()),
            "CreatedBy": if args.no_trunc { created_by } else { ellipsis(&created_by, CREATED_BY_WIDTH) },
            "Size": shown_size(row.size, row.size_estimated),
            "CompressedSize": human_size(row.compressed_size),
            "Comment": row.comment,
        })
    });
    template.write(&mut out, data)?;
    Ok(ExitCode::SUCCESS)
}

fn table(
    out: &mut impl Write,
    rows: &[haul::inspect::HistoryEntry],
    args: &HistoryArgs,
    now: jiff::Timestamp,
    id: impl Fn(&haul::inspect::HistoryEntry) -> String,
) -> anyhow::Result<()> {
    let mut table = Table::new(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    for row in rows {
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
            shown_size(row.size, row.size_estimated),
            row.comment.clone(),
        ]);
    }
    table.write(out)?;
    if rows.iter().any(|r| r.size_estimated) {
        eprintln!("{ESTIMATE_NOTE}");
    }
    Ok(())
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
