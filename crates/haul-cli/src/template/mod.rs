//! `--format`, as docker reads it: `table` (the command's own table), `json`, `table TEMPLATE`
//! (a Go template per row, aligned under column headers) or `TEMPLATE`.
//!
//! Templates are Go's `text/template` (the gotmpl crate) with docker's functions: `json`,
//! `join`, `split`, `upper`, `lower`, `title`, `pad`, `truncate`, beside Go's own (`printf`,
//! `index`, `len`, `slice`, `eq`, `range`, `if`, `with`…).
//!
//! Promises:
//! - **A field the data cannot have is an error before anything prints**, naming the fields
//!   there are ([`shape::check`]); a key of a map (a label) that an image lacks prints
//!   `<no value>`, as in docker.
//! - **The data's control characters reach the terminal escaped; the template's pass** (see
//!   [`shown`]). `json` encodes the data's exact strings, with no raw control character.

mod shape;
mod shown;

use std::io::Write;
use std::sync::Arc;

use gotmpl::parse::ListNode;
use gotmpl::{MissingKey, TemplateError, Value};

use crate::cli::UsageError;

pub use shape::{
    HISTORY_HEADERS, HISTORY_ROW, IMAGE_HEADERS, IMAGE_INSPECT, IMAGE_ROW, INFO, Shape, VERSION,
};

/// What `--format` asked for.
pub enum OutputFormat {
    /// The command's own output: no `--format`, an empty one, or `table`.
    Default,
    /// `json`: the command's JSON.
    Json,
    Template(Box<Template>),
}

/// How a command reads its `--format`.
pub struct Formats {
    /// What the data looks like.
    pub shape: &'static Shape,
    /// Column headers (field, header) for `table TEMPLATE`; `None` where a table makes no sense.
    pub headers: Option<&'static [(&'static str, &'static str)]>,
    /// docker's list commands read `\t` and `\n` in a format as a tab and a newline.
    pub escapes: bool,
}

impl OutputFormat {
    pub fn parse(arg: Option<&str>, formats: &Formats) -> Result<OutputFormat, UsageError> {
        let arg = arg.unwrap_or_default();
        match arg.trim_matches(' ') {
            "" | "table" => return Ok(OutputFormat::Default),
            "json" => return Ok(OutputFormat::Json),
            _ => {}
        }
        let (table, source) = match arg.strip_prefix("table") {
            Some(rest) => match formats.headers {
                Some(headers) => (Some(headers), rest),
                None => {
                    return Err(UsageError(
                        "--format: this command has no table; use json or a template".into(),
                    ));
                }
            },
            None => (None, arg),
        };
        let mut source = source.trim_matches(' ').to_owned();
        if formats.escapes {
            source = source.replace(r"\t", "\t").replace(r"\n", "\n");
        }
        Template::compile(&source, formats.shape, table)
            .map(|t| OutputFormat::Template(Box::new(t)))
    }
}

/// A compiled `--format` template.
pub struct Template {
    body: gotmpl::Template,
    /// For `table TEMPLATE`: the same template over the column headers, and the headers.
    header: Option<(gotmpl::Template, Value)>,
    shape: &'static Shape,
}

impl Template {
    fn compile(
        source: &str,
        shape: &'static Shape,
        table: Option<&'static [(&'static str, &'static str)]>,
    ) -> Result<Template, UsageError> {
        let usage = |e: &dyn std::fmt::Display| {
            UsageError(format!("--format: {}", crate::terminal::escape(&e.to_string())).into())
        };
        let body = with_functions(gotmpl::Template::new(""), &data_functions())
            .missing_key(MissingKey::Invalid)
            .parse(source)
            .map_err(|e| usage(&e))?;
        let parser = gotmpl::parse::Parser::new(source, "{{", "}}").map_err(|e| usage(&e))?;
        let (tree, defines) = parser.parse().map_err(|e| usage(&e))?;
        let defines: Vec<(String, ListNode)> = defines
            .into_iter()
            .map(|d| (d.name.to_string(), d.body))
            .collect();
        shape::check(&tree, &defines, shape).map_err(|e| usage(&e))?;
        let header = match table {
            Some(headers) => {
                let template = with_functions(gotmpl::Template::new(""), &header_functions())
                    .parse(source)
                    .map_err(|e| usage(&e))?;
                let names = headers
                    .iter()
                    .map(|(field, header)| (Arc::from(*field), Value::String(Arc::from(*header))))
                    .collect();
                Some((template, Value::Map(Arc::new(names))))
            }
            None => None,
        };
        Ok(Template {
            body,
            header,
            shape,
        })
    }

    /// The template applied to one item, as it may be shown.
    pub fn render(&self, item: &serde_json::Value) -> anyhow::Result<String> {
        let value = shape::to_value(item, self.shape);
        let text = self
            .body
            .execute_to_string(&value)
            .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
        Ok(shown::show(&text))
    }

    /// Each item's line (docker ends each with a newline); under aligned headers for a table.
    pub fn write(
        &self,
        out: &mut impl Write,
        items: impl IntoIterator<Item = serde_json::Value>,
    ) -> anyhow::Result<()> {
        let mut text = String::new();
        if let Some((template, names)) = &self.header {
            // docker ignores a header that does not render; so does haul.
            text.push_str(&template.execute_to_string(names).unwrap_or_default());
            text.push('\n');
        }
        for item in items {
            text.push_str(&self.render(&item)?);
            text.push('\n');
        }
        if self.header.is_some() {
            text = align(&text);
        }
        out.write_all(text.as_bytes())?;
        Ok(())
    }
}

fn with_functions(
    mut template: gotmpl::Template,
    functions: &[(&'static str, gotmpl::ValueFunc)],
) -> gotmpl::Template {
    for (name, function) in functions {
        let function = function.clone();
        template = template.func(name, move |args| function(args));
    }
    template
}

type Functions = Vec<(&'static str, gotmpl::ValueFunc)>;

fn function(
    name: &'static str,
    f: impl Fn(&[Value]) -> gotmpl::Result<Value> + Send + Sync + 'static,
) -> (&'static str, gotmpl::ValueFunc) {
    (name, Arc::new(f))
}

fn exec_error(message: String) -> TemplateError {
    TemplateError::Exec(message)
}

fn string_arg<'a>(args: &'a [Value], index: usize, function: &str) -> gotmpl::Result<&'a str> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(exec_error(format!(
            "{function}: argument {} is {}, not a string",
            index + 1,
            other.type_name()
        ))),
        None => Err(exec_error(format!(
            "{function}: needs {} arguments",
            index + 1
        ))),
    }
}

fn int_arg(args: &[Value], index: usize, function: &str) -> gotmpl::Result<usize> {
    args.get(index)
        .and_then(Value::as_int)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            exec_error(format!(
                "{function}: argument {} must be a number ≥ 0",
                index + 1
            ))
        })
}

fn text(s: impl Into<Arc<str>>) -> Value {
    Value::String(s.into())
}

/// docker's template functions (cli/templates): what users' `--format`s call.
fn data_functions() -> Functions {
    vec![
        function("json", |args: &[Value]| {
            let json = shape::to_json(args.first().unwrap_or(&Value::Nil));
            let encoded =
                crate::terminal::json_line(&json).map_err(|e| exec_error(format!("json: {e}")))?;
            // Marks again what the encoding left as it is (a MARK character in the data).
            Ok(text(shown::mark(&encoded).as_ref()))
        }),
        function("join", |args: &[Value]| {
            let separator = string_arg(args, 1, "join")?;
            let items: Vec<String> = match args.first() {
                Some(Value::Nil) | None => return Ok(text("")),
                Some(Value::List(items)) => items.iter().map(ToString::to_string).collect(),
                Some(Value::Map(map)) => {
                    let mut values: Vec<String> = map.values().map(ToString::to_string).collect();
                    values.sort();
                    values
                }
                Some(other) => {
                    return Err(exec_error(format!(
                        "join: expected a list, got {}",
                        other.type_name()
                    )));
                }
            };
            Ok(text(items.join(separator)))
        }),
        function("split", |args: &[Value]| {
            let (s, separator) = (string_arg(args, 0, "split")?, string_arg(args, 1, "split")?);
            let parts: Vec<Value> = if separator.is_empty() {
                s.chars().map(|c| text(c.to_string())).collect()
            } else {
                s.split(separator).map(text).collect()
            };
            Ok(Value::List(parts.into()))
        }),
        function("upper", |args: &[Value]| {
            Ok(text(string_arg(args, 0, "upper")?.to_uppercase()))
        }),
        function("lower", |args: &[Value]| {
            Ok(text(string_arg(args, 0, "lower")?.to_lowercase()))
        }),
        function("title", |args: &[Value]| {
            Ok(text(title(string_arg(args, 0, "title")?)))
        }),
        function("pad", |args: &[Value]| {
            let s = string_arg(args, 0, "pad")?;
            let (before, after) = (int_arg(args, 1, "pad")?, int_arg(args, 2, "pad")?);
            if s.is_empty() {
                return Ok(text(""));
            }
            Ok(text(format!(
                "{}{s}{}",
                " ".repeat(before.min(1000)),
                " ".repeat(after.min(1000))
            )))
        }),
        function("truncate", |args: &[Value]| {
            let s = string_arg(args, 0, "truncate")?;
            let length = int_arg(args, 1, "truncate")?;
            Ok(text(s.chars().take(length).collect::<String>()))
        }),
    ]
}

/// docker's header functions: in `table TEMPLATE`'s header row, each column shows its name as
/// it is, whatever the row's template does to the value.
fn header_functions() -> Functions {
    let same: gotmpl::ValueFunc =
        Arc::new(|args: &[Value]| Ok(args.first().cloned().unwrap_or(Value::Nil)));
    let mut functions = data_functions();
    for (name, function) in functions.iter_mut() {
        if *name != "pad" {
            *function = same.clone();
        }
    }
    functions
}

/// Go's `strings.Title`: the first letter of each word in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphanumeric() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

/// Aligns tab-separated cells as docker's tabwriter does (three spaces between columns); the
/// last cell of a line is not padded.
fn align(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split('\t').collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        for (i, cell) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::with_capacity(text.len() * 2);
    for cells in &lines {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list_formats() -> Formats {
        Formats {
            shape: &IMAGE_ROW,
            headers: Some(IMAGE_HEADERS),
            escapes: true,
        }
    }

    fn template(arg: &str) -> Template {
        match OutputFormat::parse(Some(arg), &list_formats()) {
            Ok(OutputFormat::Template(t)) => *t,
            Ok(_) => panic!("{arg}: not a template"),
            Err(e) => panic!("{arg}: {e}"),
        }
    }

    fn row(repository: &str, tag: &str) -> serde_json::Value {
        json!({"ID": "0123456789ab", "Repository": repository, "Tag": tag, "Size": "7.8MB"})
    }

    #[test]
    fn keywords_and_templates() {
        for (arg, default) in [
            ("", true),
            ("table", true),
            (" table ", true),
            ("json", false),
        ] {
            let parsed = OutputFormat::parse(Some(arg), &list_formats()).unwrap();
            assert_eq!(matches!(parsed, OutputFormat::Default), default, "{arg}");
        }
        let t = template("{{.Repository}}:{{.Tag}}");
        assert_eq!(t.render(&row("alpine", "3")).unwrap(), "alpine:3");
        let t = template("{{upper .Repository}} {{lower \"X\"}} {{title \"a b\"}}");
        assert_eq!(t.render(&row("alpine", "3")).unwrap(), "ALPINE x A B");
        let t = template(r#"{{printf "%-8s|" .Tag}}{{truncate .ID 4}}{{pad .Tag 1 1}}"#);
        assert_eq!(t.render(&row("a", "3")).unwrap(), "3       |0123 3 ");
        let t = template(r#"{{join (split .Repository "/") ","}}"#);
        assert_eq!(t.render(&row("a/b/c", "3")).unwrap(), "a,b,c");
    }

    #[test]
    fn tables_have_headers_and_aligned_columns() {
        let t = template(r"table {{.Repository}}\t{{.Tag}}\t{{upper .Size}}");
        let mut out = Vec::new();
        t.write(
            &mut out,
            [row("alpine", "3"), row("registry.lan/app", "latest")],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "REPOSITORY         TAG      SIZE\n\
             alpine             3        7.8MB\n\
             registry.lan/app   latest   7.8MB\n"
        );
    }

    #[test]
    fn an_unknown_field_is_a_usage_error_naming_the_fields() {
        let err = OutputFormat::parse(Some("{{.Repo}}"), &list_formats())
            .err()
            .unwrap();
        assert!(err.0.contains("unknown field .Repo"), "{}", err.0);
        assert!(err.0.contains(".Repository"), "{}", err.0);
        let err = OutputFormat::parse(Some("{{.Repository"), &list_formats())
            .err()
            .unwrap();
        assert!(err.0.starts_with("--format: "), "{}", err.0);
    }

    #[test]
    fn data_controls_are_escaped_and_json_is_exact() {
        let hostile = "\r\x1b[2KStatus: ok\n\u{9b}31m";
        let item = json!({"Repository": hostile, "Tag": "t\tx"});
        let t = template(r"{{.Repository}}\t{{.Tag}}");
        let shown = t.render(&item).unwrap();
        assert_eq!(shown, "\\r\\x1b[2KStatus: ok\\n\\u009b31m\tt\\tx");
        let t = template("{{json .Repository}}");
        let shown = t.render(&item).unwrap();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            serde_json::from_str::<String>(&shown).unwrap(),
            hostile,
            "{shown}"
        );
        // A tab in the data stays in its cell, shown as `\t`.
        let t = template(r#"{{join (split .Repository "[") ","}}"#);
        assert!(t.render(&item).unwrap().starts_with("\\r\\x1b,2K"));
    }
}
