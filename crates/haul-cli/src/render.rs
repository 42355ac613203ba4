//! Output: progress in docker's words (bars on a terminal, lines in logs, JSON for machines),
//! aligned tables, and docker's human-readable sizes and ages.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use haul::digest::Digest;
use haul::progress::{Event, LayerStatus, Reporter};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;
use crate::terminal;

enum Mode {
    Quiet,
    Plain,
    Json,
    Bars(Box<Bars>),
}

struct Bars {
    multi: MultiProgress,
    layers: HashMap<Digest, ProgressBar>,
    current: HashMap<Digest, u64>,
    phase: HashMap<Digest, &'static str>,
    total: Option<ProgressBar>,
    present: u64,
}

/// Renders pull progress. Progress goes to stderr; stdout is left for the result (or JSON events).
pub struct Progress {
    mode: Mutex<Mode>,
    json: bool,
    /// For `unpack` and `bundle`: layer events outside a pull are the layers being unpacked.
    unpack: bool,
    /// Between a pull's `Pulling from` and its `Status:`.
    pulling: AtomicBool,
}

impl Progress {
    pub fn new(mode: ProgressMode, quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else {
            match mode {
                ProgressMode::Json => Mode::Json,
                ProgressMode::Plain => Mode::Plain,
                ProgressMode::Tty => Mode::Bars(Box::new(Bars::new())),
                ProgressMode::Auto if std::io::stderr().is_terminal() => {
                    Mode::Bars(Box::new(Bars::new()))
                }
                ProgressMode::Auto => Mode::Plain,
            }
        };
        let json = matches!(mode, Mode::Json);
        Progress {
            mode: Mutex::new(mode),
            json,
            unpack: false,
            pulling: AtomicBool::new(false),
        }
    }

    /// Progress of `unpack` or `bundle`: a layer merged into the directory is `Unpack complete`,
    /// not a second `Pull complete`.
    pub fn for_unpack(mut self) -> Progress {
        self.unpack = true;
        self
    }

    /// Whether `event` is part of unpacking (rather than of the pull before it).
    fn unpacking(&self, event: &Event) -> bool {
        match event {
            Event::PullingFrom { .. } => {
                self.pulling.store(true, Ordering::Relaxed);
                false
            }
            Event::Finished { .. } => {
                self.pulling.store(false, Ordering::Relaxed);
                false
            }
            _ => self.unpack && !self.pulling.load(Ordering::Relaxed),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Stops drawing bars so what follows prints below them.
    pub fn finish(&self) {
        if let Ok(mut mode) = self.mode.lock()
            && let Mode::Bars(bars) = &mut *mode
        {
            bars.finish();
        }
    }
}

impl Reporter for Progress {
    fn report(&self, event: Event) {
        let Ok(mut mode) = self.mode.lock() else {
            return;
        };
        let unpacking = self.unpacking(&event);
        // Warnings are never silenced.
        if matches!(&*mode, Mode::Quiet | Mode::Json)
            && let Some(line) = warning_line(&event)
        {
            eprintln!("{line}");
        }
        match &mut *mode {
            Mode::Quiet => {}
            Mode::Json => {
                let mut value = serde_json::to_value(&event).unwrap_or_default();
                if unpacking && value["status"] == "pull_complete" {
                    value["status"] = "unpack_complete".into();
                }
                if let Ok(line) = terminal::json_line(&value) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                }
            }
            Mode::Plain => {
                if let Some(line) = plain_line(&event, unpacking) {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "{line}");
                }
            }
            Mode::Bars(bars) => bars.update(event, unpacking),
        }
    }
}

/// docker's words for a layer's status; a layer merged by `unpack` is `Unpack complete`.
fn status_label(status: &LayerStatus, unpacking: bool) -> String {
    match status {
        LayerStatus::PullComplete if unpacking => "Unpack complete".to_owned(),
        other => other.label(),
    }
}

/// docker's line for an event in non-terminal output; byte-level progress is left out of logs.
/// Tags, repositories and reasons may come from a registry, so the line is escaped.
fn plain_line(event: &Event, unpacking: bool) -> Option<String> {
    let line = match event {
        Event::UsingDefaultTag { tag } => format!("Using default tag: {tag}"),
        Event::PullingFrom { label, repository } => format!("{label}: Pulling from {repository}"),
        Event::Plan { .. } => return None,
        Event::Layer {
            status: LayerStatus::Downloading { .. },
            ..
        } => return None,
        // One line when extraction starts; byte counts stay out of logs.
        Event::Layer {
            status: LayerStatus::Extracting { current, .. },
            ..
        } if *current > 0 => return None,
        Event::Layer { digest, status } => {
            format!("{}: {}", digest.short(), status_label(status, unpacking))
        }
        Event::Trusted {
            image,
            repository,
            digest,
            signers,
            warning,
            scope,
        } => match warning {
            Some(warning) => trust_warning(warning, scope),
            None if signers.is_empty() => format!(
                "Content trust: {image} has no accepted signature; allowed by the trust policy \
                 for {scope}"
            ),
            // One line per signer, each escaped on its own.
            None => {
                return Some(
                    signers
                        .iter()
                        .map(|signer| {
                            terminal::escape(&format!(
                                "Content trust: {repository}@{digest} is signed by {signer}"
                            ))
                            .into_owned()
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
        },
        Event::TagSkipped { reference, reason } => format!("Skipping {reference}: {reason}"),
        Event::PlatformMismatch { .. } => return warning_line(event),
        Event::Resolved { digest } => format!("Digest: {digest}"),
        Event::Finished {
            up_to_date,
            familiar,
            ..
        } => status_line(*up_to_date, familiar),
    };
    Some(terminal::escape(&line).into_owned())
}

/// The lines of events that warn, which even `-q` shows (escaped: they quote registries).
fn warning_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::Trusted {
            warning: Some(warning),
            scope,
            ..
        } => Some(trust_warning(warning, scope)),
        Event::PlatformMismatch { wanted, actual } => Some(format!(
            "WARNING: The requested image's platform ({actual}) does not match the detected host \
             platform ({wanted}) and no specific platform was requested"
        )),
        _ => None,
    };
    line.map(|l| terminal::escape(&l).into_owned())
}

fn trust_warning(warning: &str, scope: &str) -> String {
    format!("WARNING: {warning}; pulling it anyway (trust policy for {scope}: unsigned = warn)")
}

fn status_line(up_to_date: bool, familiar: &str) -> String {
    if up_to_date {
        format!("Status: Image is up to date for {familiar}")
    } else {
        format!("Status: Downloaded newer image for {familiar}")
    }
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            layers: HashMap::new(),
            current: HashMap::new(),
            phase: HashMap::new(),
            total: None,
            present: 0,
        }
    }

    fn status_style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    /// Switches a layer's line to a progress bar for `verb`, once per phase.
    fn show_bar(&mut self, digest: &Digest, bar: &ProgressBar, verb: &'static str, total: u64) {
        if self.phase.get(digest) != Some(&verb) {
            self.phase.insert(digest.clone(), verb);
            bar.set_style(Self::bar_style(verb));
            bar.set_length(total);
        }
    }

    fn bar_style(verb: &str) -> ProgressStyle {
        ProgressStyle::with_template(&format!(
            "{{prefix}}: {verb} [{{bar:40}}] {{decimal_bytes}}/{{decimal_total_bytes}}"
        ))
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    fn total_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "Total: [{bar:40}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}, ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    fn layer(&mut self, digest: &Digest) -> ProgressBar {
        if let Some(bar) = self.layers.get(digest) {
            return bar.clone();
        }
        // Hidden until it joins the MultiProgress, or setting its prefix would draw it on its own.
        let bar = ProgressBar::hidden().with_style(Self::status_style());
        let bar = match &self.total {
            Some(total) => self.multi.insert_before(total, bar),
            None => self.multi.add(bar),
        };
        bar.set_prefix(digest.short().to_owned());
        self.layers.insert(digest.clone(), bar.clone());
        bar
    }

    fn update_total(&self) {
        if let Some(total) = &self.total {
            // Sizes come from manifests: summed without overflow, whatever they claim.
            let current = self
                .current
                .values()
                .fold(0u64, |sum, n| sum.saturating_add(*n));
            total.set_position(self.present.saturating_add(current));
        }
    }

    fn update(&mut self, event: Event, unpacking: bool) {
        match event {
            Event::Plan {
                bytes_total,
                bytes_present,
                ..
            } => {
                let total = self
                    .multi
                    .add(ProgressBar::new(bytes_total).with_style(Self::total_style()));
                total.enable_steady_tick(Duration::from_millis(200));
                self.present = bytes_present;
                self.total = Some(total);
                self.update_total();
            }
            Event::Layer { digest, status } => {
                let bar = self.layer(&digest);
                match &status {
                    LayerStatus::Downloading { current, total } => {
                        self.show_bar(&digest, &bar, "Downloading", *total);
                        bar.set_position(*current);
                        self.current.insert(digest.clone(), *current);
                        self.update_total();
                    }
                    LayerStatus::Extracting { current, total } => {
                        self.show_bar(&digest, &bar, "Extracting", *total);
                        bar.set_position(*current);
                    }
                    LayerStatus::PullComplete | LayerStatus::AlreadyExists => {
                        bar.set_style(Self::status_style());
                        bar.finish_with_message(status_label(&status, unpacking));
                    }
                    other => {
                        self.phase.remove(&digest);
                        bar.set_style(Self::status_style());
                        bar.set_message(other.label());
                    }
                }
            }
            Event::Resolved { .. } | Event::Finished { .. } => {
                // The layers are done: leave their last lines on screen and print the summary
                // below them, as docker does.
                self.finish();
                if let Some(line) = plain_line(&event, unpacking) {
                    eprintln!("{line}");
                }
            }
            other => {
                if let Some(line) = plain_line(&other, unpacking) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(t) = self.total.take() {
            t.finish();
        }
        for bar in self.layers.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Columns padded like docker's tabwriter output: three spaces between columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row; cells are escaped (tags, comments, `created_by` come from images), so one
    /// row stays one line and the widths count what is shown.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(
            row.into_iter()
                .map(|cell| terminal::escape(&cell).into_owned())
                .collect(),
        );
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// docker's `HumanSizeWithPrecision(size, 3)`: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", significant(value, 3), UNITS[unit])
}

/// A SIZE cell: [`human_size`], marked `*` when it counts a layer compressed because its
/// uncompressed size is unknown ([`ESTIMATE_NOTE`] says so under the table).
pub fn shown_size(bytes: u64, estimated: bool) -> String {
    let mut shown = human_size(bytes);
    if estimated {
        shown.push('*');
    }
    shown
}

/// What a `*` on a size means, printed on stderr under a table that has one.
pub const ESTIMATE_NOTE: &str = "* estimated: a layer never unpacked here (pulled with --no-unpack, by an older haul or by \
     another tool) counts with its compressed size; `haul unpack` or `haul pull` without \
     --no-unpack measures it";

/// Formats like Go's `%.Ng`: N significant digits, trailing zeros dropped.
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    let s = format!("{value:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// docker's `HumanDuration` followed by " ago".
pub fn time_ago(then: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second());
    if secs < 0 {
        return "Less than a second ago".to_owned();
    }
    let minutes = secs / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let text = match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".to_owned(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{days} days"),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", days / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    };
    format!("{text} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        let cases = [
            (0, "0B"),
            (999, "999B"),
            (7_795_000, "7.79MB"),
            (142_000_000, "142MB"),
            (1_120_000_000, "1.12GB"),
            (1_000, "1kB"),
            (1_500, "1.5kB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn ages_read_like_docker() {
        let now: jiff::Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let ago = |secs: i64| time_ago(now - jiff::SignedDuration::from_secs(secs), now);
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(30), "30 seconds ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(600), "10 minutes ago");
        assert_eq!(ago(3 * 3600), "3 hours ago");
        assert_eq!(ago(3 * 86400), "3 days ago");
        assert_eq!(ago(21 * 86400), "3 weeks ago");
        assert_eq!(ago(90 * 86400), "3 months ago");
        assert_eq!(ago(800 * 86400), "2 years ago");
    }

    #[test]
    fn plain_lines_use_docker_words() {
        let d = Digest::sha256_of(b"x");
        let line = plain_line(
            &Event::Layer {
                digest: d.clone(),
                status: LayerStatus::PullingFsLayer,
            },
            false,
        );
        assert_eq!(line.unwrap(), format!("{}: Pulling fs layer", d.short()));
        assert!(
            plain_line(
                &Event::Layer {
                    digest: d.clone(),
                    status: LayerStatus::Downloading {
                        current: 1,
                        total: 2
                    }
                },
                false
            )
            .is_none()
        );
        assert_eq!(
            plain_line(
                &Event::Finished {
                    up_to_date: true,
                    familiar: "alpine:latest".into(),
                    reference: "docker.io/library/alpine:latest".into()
                },
                false
            )
            .unwrap(),
            "Status: Image is up to date for alpine:latest"
        );
        let complete = Event::Layer {
            digest: d.clone(),
            status: LayerStatus::PullComplete,
        };
        assert_eq!(
            plain_line(&complete, false).unwrap(),
            format!("{}: Pull complete", d.short())
        );
        assert_eq!(
            plain_line(&complete, true).unwrap(),
            format!("{}: Unpack complete", d.short())
        );
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["REPOSITORY", "TAG"]);
        t.push(vec!["alpine".into(), "latest".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "REPOSITORY   TAG\nalpine       latest\n"
        );
    }
}
