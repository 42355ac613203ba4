//! `haul login` and `haul logout`: docker's commands, writing docker's `config.json` (or its
//! credential helper), so docker and haul share logins.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use haul::login::Server;
use haul::registry::{Anonymous, Credential, DockerConfig, RegistryClient};

use crate::cli::{GlobalArgs, LoginArgs, LogoutArgs};
use crate::context;

pub async fn login(global: &GlobalArgs, args: &LoginArgs) -> anyhow::Result<ExitCode> {
    let server = server(args.server.as_deref())?;
    if args.password_stdin && args.username.is_none() {
        bail!("Must provide --username with --password-stdin");
    }
    let config = Arc::new(context::load_config(global)?);
    let client = RegistryClient::new(config, Arc::new(Anonymous), Default::default())
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
            Err(e) if interactive => {
                eprintln!("Login did not succeed, error: {:#}", anyhow::Error::new(e))
            }
            Err(e) => return Err(e.into()),
        }
    }

    let username = match &args.username {
        Some(u) => u.clone(),
        None if interactive => prompt("Username: ")?,
        None => bail!("Cannot perform an interactive login from a non TTY device"),
    };
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else if let Some(p) = &args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if interactive {
        // Echo is not turned off: prefer --password-stdin where others can see the terminal.
        prompt("Password: ")?
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

/// Asks on stderr (stdout carries results) and reads one line from stdin.
fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
