//! `haul login` and `haul logout`: docker's commands, writing docker's `config.json` (or its
//! credential helper), so docker and haul share logins.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use haul::login::Server;
use haul::registry::{Anonymous, Credential, DockerConfig, RegistryClient};

use crate::cli::{GlobalArgs, LoginArgs, LogoutArgs, UsageError};
use crate::context;
use crate::terminal;

pub async fn login(global: &GlobalArgs, args: &LoginArgs) -> anyhow::Result<ExitCode> {
    // docker's checks, in docker's order and words.
    if args.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        if args.password_stdin {
            return Err(UsageError(
                "--password and --password-stdin are mutually exclusive".into(),
            )
            .into());
        }
    }
    if args.password_stdin && args.username.is_none() {
        return Err(UsageError("Must provide --username with --password-stdin".into()).into());
    }
    let server = server(args.server.as_deref())?;
    let config = context::load_config(global)?;
    let client = RegistryClient::new(
        config.registry_settings(),
        Arc::new(Anonymous),
        Default::default(),
    )
    .context("cannot set up the HTTP client")?;
    let docker_config = DockerConfig::load_default().context("reading docker's config.json")?;

    let interactive = std::io::stdin().is_terminal();
    let mut stored = None;
    if args.username.is_none() && args.password.is_none() && !args.password_stdin {
        // docker tries what is saved before asking.
        if let Ok(Some(c @ Credential::Basic { .. })) = docker_config.lookup(server.name()) {
            stored = Some(c);
        }
    }
    if let Some(credential) = stored {
        eprintln!("Authenticating with existing credentials...");
        match haul::login::check(&client, &server, &credential).await {
            Ok(()) => {
                writeln!(std::io::stdout(), "Login Succeeded")?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if interactive => eprintln!(
                "Login did not succeed, error: {}",
                terminal::escape(&format!("{:#}", anyhow::Error::new(e)))
            ),
            Err(e) => return Err(e.into()),
        }
    }

    let username = match &args.username {
        Some(u) => u.clone(),
        None if interactive => prompt(false, "Username: ").await?,
        None => bail!("Cannot perform an interactive login from a non TTY device"),
    };
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        password_from_stdin(text)
    } else if let Some(p) = &args.password {
        p.clone()
    } else if interactive {
        prompt(true, "Password: ").await?
    } else {
        bail!("Cannot perform an interactive login from a non TTY device");
    };
    if username.is_empty() {
        bail!("Username is required");
    }
    if password.is_empty() {
        bail!("Password is required");
    }
    let credential = Credential::Basic { username, password };
    haul::login::login(&client, docker_config, &server, credential).await?;
    writeln!(std::io::stdout(), "Login Succeeded")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(_global: &GlobalArgs, args: &LogoutArgs) -> anyhow::Result<ExitCode> {
    let server = server(args.server.as_deref())?;
    let mut docker_config = DockerConfig::load_default().context("reading docker's config.json")?;
    let name = server.name().to_owned();
    let removed = tokio::task::spawn_blocking(move || docker_config.erase(&name))
        .await
        .context("removing the credentials")??;
    let shown = server.display_name();
    let message = if removed {
        format!("Removing login credentials for {shown}")
    } else {
        format!("Not logged in to {shown}")
    };
    writeln!(std::io::stdout(), "{message}")?;
    Ok(ExitCode::SUCCESS)
}

fn server(arg: Option<&str>) -> anyhow::Result<Server> {
    Ok(match arg {
        Some(s) => Server::parse(s)?,
        None => Server::docker_hub(),
    })
}

/// Asks on the terminal and reads one line, with echo off when `hidden`. The read blocks, so it
/// runs off the runtime: Ctrl-C still reaches `main`, which gives the terminal its echo back.
async fn prompt(hidden: bool, label: &'static str) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        if hidden {
            terminal::read_hidden_line(label)
        } else {
            terminal::prompt_line(label)
        }
    })
    .await
    .context("reading from the terminal")?
    .context("reading from the terminal")
}

/// docker's reading of `--password-stdin`: everything, less one trailing `\n` and then one `\r`
/// (a password may itself end in spaces or hold more lines).
fn password_from_stdin(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
    }
    if text.ends_with('\r') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::password_from_stdin;

    #[test]
    fn password_stdin_drops_one_line_ending_like_docker() {
        let cases = [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret \n", "s3cret "),
            ("s3cret\n\n", "s3cret\n"),
            ("s3cret\r", "s3cret"),
            ("s3cret\n\r", "s3cret\n"),
            ("\n", ""),
        ];
        for (stdin, password) in cases {
            assert_eq!(password_from_stdin(stdin.to_owned()), password, "{stdin:?}");
        }
    }
}
