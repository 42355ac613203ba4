//! `haul images`: what the store holds, like `docker images`.

use std::io::Write;
use std::process::ExitCode;

use haul::reference::Reference;

use crate::cli::{GlobalArgs, ImagesArgs, ListFormat};
use crate::context;
use crate::render::{Table, human_size, time_ago};
use crate::terminal;

pub fn run(global: &GlobalArgs, args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    let filter = args
        .repository
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    context::load_config(global)?;
    let store = context::open_store(global)?;
    // A filter without a tag matches every tag, so drop the implied `latest`.
    let filter = match (&filter, args.repository.as_deref()) {
        (Some(f), Some(raw)) if f.tag().is_none() => {
            Some(Reference::parse_repository(raw).unwrap_or_else(|_| f.clone()))
        }
        _ => filter,
    };
    let rows = haul::images::list(&store, filter.as_ref())?;
    let mut out = std::io::stdout().lock();
    if args.format == ListFormat::Json {
        terminal::write_json(&mut out, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.image_id.clone()) {
                writeln!(out, "{}", r.image_id.short())?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["REPOSITORY", "TAG"];
    if args.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    let mut table = Table::new(&header);
    let now = jiff::Timestamp::now();
    for r in rows {
        let mut row = vec![
            r.repository.clone(),
            r.tag.clone().unwrap_or_else(|| "<none>".to_owned()),
        ];
        if args.digests {
            row.push(r.digest.to_string());
        }
        row.push(r.image_id.short().to_owned());
        row.push(
            r.created
                .map(|c| time_ago(c, now))
                .unwrap_or_else(|| "N/A".to_owned()),
        );
        row.push(human_size(r.size));
        table.push(row);
    }
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
