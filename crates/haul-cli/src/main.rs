//! The `haul` binary: argument parsing, progress rendering, error reporting and exit codes. All the
//! work happens in the `haul` library.

mod cli;
mod commands;
mod context;
mod render;
mod template;
mod terminal;

use std::io::{IsTerminal as _, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    // One TLS provider for the whole process, before any client is built; a second one pulled in
    // by a dependency would otherwise make rustls refuse to pick.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = cli::parse();
    init_tracing(cli.global.debug);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let downloads = matches!(
        cli.command,
        cli::Command::Pull(_)
            | cli::Command::Image(cli::ImageCommand::Pull(_))
            | cli::Command::Unpack(_)
            | cli::Command::Bundle(_)
    );
    let outcome = runtime.block_on(async {
        tokio::select! {
            // The signal handlers are installed before the command runs, so Ctrl-C at a prompt
            // comes here (and gives the terminal back) instead of killing the process.
            biased;
            signal = interrupted() => Err(signal),
            result = commands::run(cli) => Ok(result),
        }
    });
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(err)) => {
            report(&err);
            if err.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(exit_code) => {
            terminal::restore();
            // Nothing to wait for: every blob and ref write is atomic, partial downloads are
            // resumed by the next pull, and leftover staging directories are swept by the next
            // extraction. Exiting now (not dropping the runtime, which would wait for extraction
            // threads) is what makes Ctrl-C prompt.
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr);
            let _ = writeln!(stderr, "haul: interrupted");
            if downloads {
                let _ = writeln!(
                    stderr,
                    "hint: finished layers and partial downloads are kept; pull again to resume"
                );
            }
            let _ = stderr.flush();
            std::process::exit(exit_code)
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM and returns the shell's exit code for it (128 + signal).
async fn interrupted() -> i32 {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        () = term => 143,
    }
}

/// The log: haul's debug events with `-D` (and other crates' warnings), what `RUST_LOG` asks for
/// when set, else nothing. Like docker's client, haul without `-D` speaks only through its own
/// lines: what a user must know (a warning, the error) is printed by the command as `WARNING:`
/// or `Error:`, never as a raw log line.
fn init_tracing(debug: bool) {
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("warn,haul=debug,haul_cli=debug")
    } else {
        match tracing_subscriber::EnvFilter::try_from_default_env() {
            Ok(filter) => filter,
            Err(_) => return,
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour codes only for a terminal: a log file gets none, so any ESC in it is an attack.
        .with_ansi(colour_log())
        .fmt_fields(terminal::log_fields())
        .init();
}

/// Colours for a terminal only, and not even there when `NO_COLOR` is set (no-color.org).
fn colour_log() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints the whole error chain, then a hint where the user can act. Registries' messages are in
/// the chain, so it is escaped: one error, one line, no control character.
fn report(err: &anyhow::Error) {
    // A closed stdout (`haul images | head`) is not worth a message.
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return;
    }
    let mut stderr = std::io::stderr().lock();
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    let _ = writeln!(stderr, "Error: {}", terminal::escape(&text));
    if let Some(hint) = commands::hint_for(err) {
        let _ = writeln!(stderr, "hint: {}", terminal::escape(&hint));
    }
}
