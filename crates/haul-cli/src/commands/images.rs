//! `haul images` (and `haul image ls`): what the store holds, like `docker images`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use haul::digest::Digest;
use haul::images::ImageSummary;
use haul::reference::Reference;
use haul::store::Store;
use serde_json::json;

use crate::cli::{GlobalArgs, ImagesArgs, UsageError};
use crate::context;
use crate::render::{ESTIMATE_NOTE, Table, human_size, shown_size, time_ago};
use crate::template::{Formats, IMAGE_HEADERS, IMAGE_ROW, OutputFormat};
use crate::terminal;

pub fn run(global: &GlobalArgs, args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    let format = OutputFormat::parse(
        args.format.as_deref(),
        &Formats {
            shape: &IMAGE_ROW,
            headers: Some(IMAGE_HEADERS),
            escapes: true,
        },
    )?;
    let repository = args
        .repository
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    let filters = Filters::parse(&args.filter)?;
    context::load_config(global)?;
    let store = context::open_store(global)?;
    // A filter without a tag matches every tag, so drop the implied `latest`.
    let repository = match (&repository, args.repository.as_deref()) {
        (Some(f), Some(raw)) if f.tag().is_none() => {
            Some(Reference::parse_repository(raw).unwrap_or_else(|_| f.clone()))
        }
        _ => repository,
    };
    let rows = haul::images::list(&store, repository.as_ref())?;
    let rows = filters.apply(&store, rows, args.all)?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        let mut seen = HashSet::new();
        for r in &rows {
            if seen.insert(r.image_id.clone()) {
                writeln!(out, "{}", id(&r.image_id, args.no_trunc))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = jiff::Timestamp::now();
    match format {
        OutputFormat::Json => terminal::write_json(&mut out, &rows)?,
        OutputFormat::Template(template) => {
            template.write(&mut out, rows.iter().map(|r| row_data(r, args, now)))?;
        }
        OutputFormat::Default => table(&mut out, &rows, args, now)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn id(image_id: &Digest, no_trunc: bool) -> String {
    if no_trunc {
        image_id.to_string()
    } else {
        image_id.short().to_owned()
    }
}

fn table(
    out: &mut impl Write,
    rows: &[ImageSummary],
    args: &ImagesArgs,
    now: jiff::Timestamp,
) -> anyhow::Result<()> {
    let mut header = vec!["REPOSITORY", "TAG"];
    if args.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    let mut table = Table::new(&header);
    for r in rows {
        let mut row = vec![
            r.repository.clone(),
            r.tag.clone().unwrap_or_else(|| "<none>".to_owned()),
        ];
        if args.digests {
            row.push(r.digest.to_string());
        }
        row.push(id(&r.image_id, args.no_trunc));
        row.push(
            r.created
                .map(|c| time_ago(c, now))
                .unwrap_or_else(|| "N/A".to_owned()),
        );
        row.push(shown_size(r.size, r.size_estimated));
        table.push(row);
    }
    table.write(out)?;
    if rows.iter().any(|r| r.size_estimated) {
        eprintln!("{ESTIMATE_NOTE}");
    }
    Ok(())
}

/// One row as docker's `--format` templates see it (`.ID`, `.Repository`, `.Tag`…).
fn row_data(r: &ImageSummary, args: &ImagesArgs, now: jiff::Timestamp) -> serde_json::Value {
    json!({
        "ID": id(&r.image_id, args.no_trunc),
        "Repository": r.repository,
        "Tag": r.tag.as_deref().unwrap_or("<none>"),
        "Digest": r.digest.to_string(),
        "CreatedSince": r.created.map_or_else(|| "N/A".to_owned(), |c| time_ago(c, now)),
        // Go's time.String(), as docker prints it (in UTC here).
        "CreatedAt": r.created.map_or_else(String::new, |c| {
            c.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
        }),
        "Size": shown_size(r.size, r.size_estimated),
        "VirtualSize": shown_size(r.size, r.size_estimated),
        "CompressedSize": human_size(r.compressed_size),
        "Containers": "N/A",
        "SharedSize": "N/A",
        "UniqueSize": "N/A",
    })
}

/// `--filter`s, with docker's meaning: every key must match; several `reference`s (or labels)
/// match if any does.
#[derive(Default)]
struct Filters {
    dangling: Option<bool>,
    references: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    before: Option<String>,
    since: Option<String>,
}

impl Filters {
    fn parse(args: &[String]) -> Result<Filters, UsageError> {
        let mut filters = Filters::default();
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                return Err(UsageError(
                    format!(
                        "bad format of filter (expected name=value): {}",
                        terminal::escape(arg)
                    )
                    .into(),
                ));
            };
            match key.to_ascii_lowercase().as_str() {
                "dangling" => {
                    filters.dangling = Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(UsageError(
                                format!("invalid filter 'dangling={}'", terminal::escape(value))
                                    .into(),
                            ));
                        }
                    });
                }
                "reference" => filters.references.push(value.to_owned()),
                "label" => filters.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (value.to_owned(), None),
                }),
                "before" => filters.before = Some(value.to_owned()),
                "since" => filters.since = Some(value.to_owned()),
                _ => {
                    return Err(UsageError(
                        format!(
                            "invalid filter '{}' (haul images knows dangling, reference, label, \
                             before, since)",
                            terminal::escape(key)
                        )
                        .into(),
                    ));
                }
            }
        }
        Ok(filters)
    }

    /// The rows the filters keep. An image is dangling when it is stored only as NAME@DIGEST
    /// (no tag, and no name another OCI tool gave it): docker hides those without `-a` unless
    /// `dangling=true` asks for them.
    fn apply(
        &self,
        store: &Store,
        rows: Vec<ImageSummary>,
        all: bool,
    ) -> anyhow::Result<Vec<ImageSummary>> {
        let tagged: HashSet<Digest> = haul::images::list(store, None)?
            .into_iter()
            .filter(|r| r.tag.is_some() || !r.reference.contains('@'))
            .map(|r| r.image_id)
            .collect();
        let created = |name: &str| -> anyhow::Result<Option<jiff::Timestamp>> {
            Ok(haul::inspect::find(store, name)?.config.created_at())
        };
        let before = self.before.as_deref().map(created).transpose()?.flatten();
        let since = self.since.as_deref().map(created).transpose()?.flatten();
        let mut labels: HashMap<Digest, serde_json::Value> = HashMap::new();
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            let dangling = !tagged.contains(&row.image_id);
            let keep_dangling = match self.dangling {
                Some(wanted) => dangling == wanted,
                None => all || !dangling,
            };
            if !keep_dangling {
                continue;
            }
            if !self.references.is_empty() && !self.references.iter().any(|p| matches(p, &row)) {
                continue;
            }
            if let Some(before) = before
                && row.created.is_none_or(|c| c >= before)
            {
                continue;
            }
            if let Some(since) = since
                && row.created.is_none_or(|c| c <= since)
            {
                continue;
            }
            if !self.labels.is_empty() {
                if !labels.contains_key(&row.image_id) {
                    let image = haul::inspect::find(store, &row.image_id.to_string())?;
                    let found = image
                        .config_json
                        .pointer("/config/Labels")
                        .cloned()
                        .unwrap_or_default();
                    labels.insert(row.image_id.clone(), found);
                }
                let image_labels = &labels[&row.image_id];
                let has = |(key, value): &(String, Option<String>)| match (
                    image_labels.get(key),
                    value,
                ) {
                    (Some(_), None) => true,
                    (Some(found), Some(value)) => found.as_str() == Some(value.as_str()),
                    (None, _) => false,
                };
                if !self.labels.iter().all(has) {
                    continue;
                }
            }
            kept.push(row);
        }
        Ok(kept)
    }
}

/// docker's `reference` filter: the pattern (Go's `path.Match`) against the familiar name with
/// its tag or digest (`busybox:glibc`), or else the familiar name alone.
fn matches(pattern: &str, row: &ImageSummary) -> bool {
    let full = row
        .reference
        .parse::<Reference>()
        .map(|r| r.familiar_string())
        .unwrap_or_else(|_| row.reference.clone());
    let with_tag = match &row.tag {
        Some(tag) => format!("{}:{tag}", row.repository),
        None => full,
    };
    path_match(pattern, &with_tag) || path_match(pattern, &row.repository)
}

/// Go's `path.Match`: `*` any run of characters but `/`, `?` one such character, `[…]` a class
/// (`[^…]` negated, ranges `a-z`), `\` quotes the next character. A malformed pattern matches
/// nothing.
fn path_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name)
}

fn match_from(pattern: &[char], name: &[char]) -> bool {
    let Some((&first, rest)) = pattern.split_first() else {
        return name.is_empty();
    };
    match first {
        '*' => {
            // The star takes 0..n characters of the name, never past a '/'.
            for taken in 0..=name.len() {
                if match_from(rest, &name[taken..]) {
                    return true;
                }
                if name.get(taken) == Some(&'/') {
                    break;
                }
            }
            false
        }
        '?' => match name.split_first() {
            Some((&c, name_rest)) if c != '/' => match_from(rest, name_rest),
            _ => false,
        },
        '[' => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            match class(rest, c) {
                Some((true, after)) if c != '/' => match_from(after, name_rest),
                _ => false,
            }
        }
        '\\' => match (rest.split_first(), name.split_first()) {
            (Some((&quoted, rest)), Some((&c, name_rest))) if quoted == c => {
                match_from(rest, name_rest)
            }
            _ => false,
        },
        literal => match name.split_first() {
            Some((&c, name_rest)) if c == literal => match_from(rest, name_rest),
            _ => false,
        },
    }
}

/// Whether `c` is in the class that `pattern` (just past its `[`) opens, and the pattern after
/// its `]`; `None` for a class without an end.
fn class(pattern: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match pattern.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut found = false;
    let mut first = true;
    loop {
        let (&lo, after) = rest.split_first()?;
        if lo == ']' && !first {
            return Some((found != negated, after));
        }
        first = false;
        let (lo, after) = if lo == '\\' {
            let (&quoted, after) = after.split_first()?;
            (quoted, after)
        } else {
            (lo, after)
        };
        rest = after;
        let hi = match rest {
            ['-', hi, after @ ..] if *hi != ']' => {
                let (hi, after) = if *hi == '\\' {
                    let (&quoted, after) = after.split_first()?;
                    (quoted, after)
                } else {
                    (*hi, after)
                };
                rest = after;
                hi
            }
            _ => lo,
        };
        if lo <= c && c <= hi {
            found = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::path_match;

    #[test]
    fn reference_patterns_match_as_go_path_match() {
        let cases = [
            ("busy*:*libc", "busybox:glibc", true),
            ("busy*:*libc", "busybox:musl", false),
            ("busybox", "busybox", true),
            ("*", "busybox", true),
            ("*", "team/app", false),
            ("*/*", "team/app", true),
            ("team/*", "team/app", true),
            ("127.0.0.1:5000/*/app", "127.0.0.1:5000/team/app", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[", "[", false),
            ("ab", "abc", false),
            ("", "", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(path_match(pattern, name), want, "{pattern} ~ {name}");
        }
    }
}
